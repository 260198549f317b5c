"""What stands between the network and the handlers: per-client rate limits, body caps, deadlines,
a connection cap, and JSON for the errors aiohttp's HTTP parser answers by itself.

* ``limits`` (middleware): a token bucket per client address (429 with ``Retry-After``), then the
  64 KiB body cap (413) for every route but the streaming OTA upload, read before the handler runs.
* ``deadline`` (middleware): body read, handler and response write of one request within
  ``api.request_timeout_s`` (408 if nothing was sent yet, else the connection is closed). The OTA
  routes install an update, which takes longer: the upload streams with a per-chunk idle timeout
  (``idle_chunks``), the pull's small body must arrive within the timeout and its download has
  the OTA agent's own connect and read timeouts.
* ``DeviceRunner``: an AppRunner whose connections are closed when they deliver no complete request
  within ``api.idle_timeout_s`` (aiohttp's keep-alive timer, which runs from the moment a connection
  opens: slow headers and half-open peers), whose parser errors (bad request line, bad headers,
  oversized header) are JSON too, and which refuses connections beyond ``api.max_connections``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from ..config import ApiConfig

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
MAX_CLIENTS = 4096  # rate-limit buckets kept; idle (full) buckets go first
API_CONFIG = web.AppKey("api_config", ApiConfig)
RATE_LIMITER: web.AppKey[RateLimiter] = web.AppKey("rate_limiter")
STREAMING = web.AppKey("streaming_paths", frozenset)  # POST routes that stream their body (no MAX_BODY)
UNTIMED = web.AppKey("untimed_paths", frozenset)  # routes that may run long (install, a stream): no request deadline
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_body(status: int, message: str) -> bytes:
    return orjson.dumps({"error": {"status": status, "message": message}})


class RateLimiter:
    """Token buckets per client address, bounded in number (least recently seen dropped first)."""

    def __init__(self, per_s: float, burst: int, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = MAX_CLIENTS) -> None:
        self.per_s, self.burst, self.clock, self.max_clients = per_s, float(burst), clock, max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, at)
        self.limited = 0

    def take(self, client: str) -> float:
        """0.0 when the request may go ahead, else the seconds until it could."""
        now = self.clock()
        tokens, at = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.per_s)
        if tokens >= 1.0:
            self._buckets[client] = (tokens - 1.0, now)
            wait = 0.0
        else:
            self._buckets[client] = (tokens, now)
            self.limited += 1
            wait = (1.0 - tokens) / self.per_s
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait

    def __len__(self) -> int:
        return len(self._buckets)


def _post_in(request: web.Request, key: web.AppKey[frozenset[Any]]) -> bool:
    resource = request.match_info.route.resource
    return resource is not None and request.method == "POST" and resource.canonical in request.app[key]


def _streaming(request: web.Request) -> bool:
    return _post_in(request, STREAMING)


@web.middleware
async def limits(request: web.Request, handler: Handler) -> web.StreamResponse:
    wait = request.app[RATE_LIMITER].take(request.remote or "?")
    if wait > 0.0:
        retry = max(1, math.ceil(wait))
        raise web.HTTPTooManyRequests(reason=f"rate limit: too many requests from this client; retry in {retry} s",
                                      headers={"Retry-After": str(retry)})
    if not _streaming(request):
        length = request.content_length
        if length is not None and length > MAX_BODY:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=length)
        if request.body_exists:
            seconds = request.app[API_CONFIG].request_timeout_s
            try:
                async with asyncio.timeout(seconds):
                    await request.read()  # client_max_size (MAX_BODY) applies to chunked bodies too: 413
            except TimeoutError:
                raise web.HTTPRequestTimeout(reason=f"request body not received within {seconds:g} s") from None
    return await handler(request)


@web.middleware
async def deadline(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The whole exchange of an ordinary request within api.request_timeout_s, the response write
    included (a client that stops reading cannot hold the connection)."""
    resource = request.match_info.route.resource
    if resource is not None and resource.canonical in request.app[UNTIMED]:  # an install, a live stream
        return await handler(request)
    seconds = request.app[API_CONFIG].request_timeout_s
    resp: web.StreamResponse | None = None
    try:
        async with asyncio.timeout(seconds):
            resp = await handler(request)
            await resp.prepare(request)
            await resp.write_eof()
        return resp
    except TimeoutError:
        if resp is None or not resp.prepared:
            out = web.Response(body=error_body(408, f"request not completed within {seconds:g} s"), status=408,
                               content_type="application/json")
            out.force_close()
            await out.prepare(request)
            await out.write_eof()
            request.protocol.force_close()  # no lingering read of the rest of a stalled body
            return out
        if request.transport is not None:
            request.transport.close()  # the client stopped reading half way: drop it
        raise ConnectionResetError("response write timed out") from None


async def idle_chunks(chunks: AsyncIterator[bytes], idle_s: float) -> AsyncIterator[bytes]:
    """The chunks of a streamed body, each within ``idle_s`` of the previous one (408 otherwise)."""
    it = aiter(chunks)
    while True:
        try:
            async with asyncio.timeout(idle_s):
                chunk = await anext(it)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise web.HTTPRequestTimeout(reason=f"no body data for {idle_s:g} s") from None
        yield chunk


class _JsonErrorHandler(RequestHandler):
    """aiohttp's connection handler; the errors its parser answers itself are JSON as well."""

    _first_request: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        manager = self._manager
        limit = getattr(manager, "max_connections", None)
        if manager is not None and limit is not None and len(manager.connections) > limit:
            log.warning("refusing a connection: %d open (api.max_connections)", len(manager.connections) - 1)
            self.force_close()
            return
        # the first request's headers must be complete within the idle timeout, whatever aiohttp's
        # keep-alive timer does before a first request (it runs from the connection's start in 3.14)
        if self.keepalive_timeout > 0:
            self._first_request = self._loop.call_later(self.keepalive_timeout, self._no_request_yet)

    def _no_request_yet(self) -> None:
        self._first_request = None
        if self._request_count == 0 and self.transport is not None:
            self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._first_request is not None:
            self._first_request.cancel()
            self._first_request = None
        super().connection_lost(exc)

    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500:
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
        else:
            log.debug("bad request from %s: %s", request.remote, message or exc)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send the error")
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
        text = f"{phrase}: {message}"[:300] if message and status < 500 else phrase
        resp = web.Response(status=status, body=error_body(status, text), content_type="application/json")
        resp.force_close()
        return resp


class _DeviceServer(Server):
    max_connections: int | None = None

    def __call__(self) -> RequestHandler:
        return _JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class DeviceRunner(web.AppRunner):
    """AppRunner with the idle timeout, connection cap and JSON parser errors of ``api``."""

    def __init__(self, app: web.Application, api: ApiConfig, **kwargs: Any) -> None:
        kwargs.setdefault("keepalive_timeout", api.idle_timeout_s)
        kwargs.setdefault("lingering_time", 2.0)  # unread body of a refused request: drained at most 2 s
        super().__init__(app, **kwargs)
        self.max_connections = api.max_connections

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        server.__class__ = _DeviceServer  # same state; only the per-connection handler class differs
        assert isinstance(server, _DeviceServer)
        server.max_connections = self.max_connections
        return server
