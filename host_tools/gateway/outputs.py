"""Where decisions go: a log line, an MQTT publish (aiomqtt, to the store's broker), or an
HMAC-signed webhook (a signage player, a staff pager). Each output has its own rate limit (a token
bucket) so one screen is not spammed even when several rules fire; every attempt is recorded on the
decision (``actions``: output, status, detail).

Webhook signature: headers ``X-Cuecam-Timestamp: <unix seconds>`` and
``X-Cuecam-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>``; receivers check it
with :func:`verify_signature` (constant time, and a timestamp within 5 minutes against replays).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from typing import Any

import aiohttp
import orjson

from .config import Action, LogOutput, MqttOutput, RateLimit, WebhookOutput
from .rules import Decision

log = logging.getLogger("cuecam.gateway.decisions")
MAX_SKEW_S = 300


class TokenBucket:
    def __init__(self, limit: RateLimit, clock: Any = time.monotonic) -> None:
        self.rate = limit.per_minute / 60.0
        self.burst = float(limit.burst)
        self.tokens = float(limit.burst)
        self.clock = clock
        self.t = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def sign(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    mac = hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"X-Cuecam-Timestamp": ts, "X-Cuecam-Signature": f"sha256={mac}"}


def verify_signature(secret: str, body: bytes, headers: Any, now: float | None = None) -> bool:
    ts = headers.get("X-Cuecam-Timestamp", "")
    sig = headers.get("X-Cuecam-Signature", "")
    if not ts.isdigit() or not sig.startswith("sha256="):
        return False
    if abs((time.time() if now is None else now) - int(ts)) > MAX_SKEW_S:
        return False
    want = hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(want, sig.removeprefix("sha256="))


def message(d: Decision, action: Action, store_name: str) -> dict[str, Any]:
    return {"store": store_name, "decision": d.id, "t": round(d.t, 3), "rule": d.rule, "kind": d.kind,
            "subject": d.subject, "explanation": d.explanation, "inputs": d.inputs, "payload": action.payload}


class Output:
    name: str

    def __init__(self, name: str, limit: RateLimit) -> None:
        self.name = name
        self.bucket = TokenBucket(limit)
        self.sent = 0
        self.failed = 0
        self.limited = 0

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def deliver(self, d: Decision, action: Action, store_name: str) -> dict[str, Any]:
        if not self.bucket.take():
            self.limited += 1
            return {"output": self.name, "status": "rate_limited"}
        try:
            detail = await self._send(d, action, store_name)
        except Exception as e:  # one output failing must not stop the others
            self.failed += 1
            return {"output": self.name, "status": "failed", "detail": f"{type(e).__name__}: {e}"[:300]}
        self.sent += 1
        return {"output": self.name, "status": "sent", **detail}

    async def _send(self, d: Decision, action: Action, store_name: str) -> dict[str, Any]:
        raise NotImplementedError


class LogSink(Output):
    def __init__(self, cfg: LogOutput) -> None:
        super().__init__("log", cfg.rate_limit)

    async def _send(self, d: Decision, action: Action, store_name: str) -> dict[str, Any]:
        log.info("decision %d %s", d.id, orjson.dumps(message(d, action, store_name)).decode())
        return {}


class MqttSink(Output):
    """Publishes through one long-lived connection, reconnecting with backoff; a publish waits at
    most ``timeout`` for a connection and then fails (the decision records it)."""

    def __init__(self, cfg: MqttOutput, password: str | None, timeout: float = 5.0) -> None:
        super().__init__("mqtt", cfg.rate_limit)
        self.cfg = cfg
        self.password = password
        self.timeout = timeout
        self.client: Any = None
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._broken = asyncio.Event()
        self.reconnects = 0

    def topic(self, suffix: str) -> str:
        return f"{self.cfg.topic_prefix.rstrip('/')}/{suffix.lstrip('/')}"

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="gateway-mqtt")

    async def _run(self) -> None:
        import aiomqtt

        backoff = 0.5
        while not self._stop.is_set():
            try:
                async with aiomqtt.Client(self.cfg.host, self.cfg.port, username=self.cfg.username,
                                          password=self.password, identifier=None, timeout=self.timeout) as client:
                    self.client = client
                    self._broken.clear()
                    self.connected.set()
                    backoff = 0.5
                    waits = [asyncio.ensure_future(self._stop.wait()), asyncio.ensure_future(self._broken.wait())]
                    try:
                        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        for w in waits:
                            w.cancel()
            except aiomqtt.MqttError as e:
                log.warning("mqtt %s:%d: %s (retrying in %.1f s)", self.cfg.host, self.cfg.port, e, backoff)
            finally:
                self.client = None
                self.connected.clear()
            if self._stop.is_set():
                break
            self.reconnects += 1
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), backoff)
            backoff = min(backoff * 2, 30.0)

    async def publish(self, topic: str, payload: dict[str, Any], *, retain: bool = False) -> None:
        await asyncio.wait_for(self.connected.wait(), self.timeout)
        client = self.client
        if client is None:
            raise ConnectionError("not connected to the MQTT broker")
        import aiomqtt

        try:
            await client.publish(topic, orjson.dumps(payload), qos=self.cfg.qos, retain=retain, timeout=self.timeout)
        except aiomqtt.MqttError:
            self._broken.set()  # reconnect; this publish is reported as failed
            raise

    async def _send(self, d: Decision, action: Action, store_name: str) -> dict[str, Any]:
        topic = self.topic(action.topic or f"{store_name}/decisions/{d.rule}")
        await self.publish(topic, message(d, action, store_name))
        return {"topic": topic}

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, 5.0)


class WebhookSink(Output):
    def __init__(self, cfg: WebhookOutput, secret: str) -> None:
        super().__init__(cfg.name, cfg.rate_limit)
        self.cfg = cfg
        self.secret = secret
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s))

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def _send(self, d: Decision, action: Action, store_name: str) -> dict[str, Any]:
        assert self.session is not None, "start() first"
        body = orjson.dumps(message(d, action, store_name))
        err: Exception | None = None
        for attempt in range(self.cfg.retries + 1):
            if attempt:
                await asyncio.sleep(min(0.25 * 2 ** attempt, 5.0))
            headers = {"Content-Type": "application/json", **sign(self.secret, body)}
            try:
                async with self.session.post(self.cfg.url, data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status < 300:
                        return {"http_status": resp.status, "attempts": attempt + 1}
                    err = RuntimeError(f"HTTP {resp.status}")
                    if resp.status < 500 and resp.status != 429:
                        break  # the receiver refused it; repeating will not help
            except (TimeoutError, aiohttp.ClientError) as e:
                err = e
        assert err is not None
        raise err
