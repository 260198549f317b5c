"""http/guard.py subclasses aiohttp's connection handler and server and reads a few private
attributes (there is no public hook for a per-connection first-request timer, a connection cap
or JSON parser errors). pyproject.toml pins aiohttp to the versions this was tested with; this
test fails loudly, naming what moved, if an aiohttp release changes any of it. The behaviour
itself is proved by tests/integration/test_hardened_api.py."""

from __future__ import annotations

import asyncio
import inspect
import re
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from firmware.http.guard import DeviceRunner, _DeviceServer, _JsonErrorHandler

ROOT = Path(__file__).resolve().parents[2]
MOVED = "aiohttp internals that firmware/http/guard.py relies on changed"


def _pin() -> SpecifierSet:
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(r'"aiohttp([<>=!~][^"]*)"', text)
    assert m, "pyproject.toml does not pin aiohttp"
    return SpecifierSet(m.group(1))


def test_the_installed_aiohttp_is_within_the_pinned_range() -> None:
    pin = _pin()
    assert pin.filter([aiohttp.__version__]) or Version(aiohttp.__version__) in pin, (
        f"aiohttp {aiohttp.__version__} is outside {pin}: run tests/integration/test_hardened_api.py against it "
        "and this test, then widen the pin")
    assert any(s.operator in ("<", "<=", "==", "~=") for s in pin), "the pin needs an upper bound"


def test_the_private_methods_the_guard_overrides_or_calls_are_there() -> None:
    for cls, name, params in (
        (RequestHandler, "connection_made", ["self", "transport"]),
        (RequestHandler, "connection_lost", ["self", "exc"]),
        (RequestHandler, "handle_error", ["self", "request", "status", "exc", "message"]),
        (RequestHandler, "force_close", ["self"]),
        (RequestHandler, "log_exception", None),
        (Server, "__call__", ["self"]),
        (web.AppRunner, "_make_server", ["self"]),
    ):
        fn = getattr(cls, name, None)
        assert fn is not None, f"{MOVED}: {cls.__name__}.{name} is gone"
        if params is not None:
            got = list(inspect.signature(fn).parameters)
            assert got[: len(params)] == params, f"{MOVED}: {cls.__name__}.{name}{inspect.signature(fn)}"
    assert inspect.iscoroutinefunction(web.AppRunner._make_server), f"{MOVED}: AppRunner._make_server is not async"


async def test_the_private_attributes_the_guard_reads_are_there() -> None:
    app = web.Application()
    runner = DeviceRunner(app, _api())
    await runner.setup()
    try:
        server = runner.server
        assert isinstance(server, _DeviceServer), f"{MOVED}: AppRunner.server is not the server _make_server made"
        for attr in ("_kwargs", "_loop", "connections"):
            assert hasattr(server, attr), f"{MOVED}: Server.{attr} is gone"
        assert isinstance(server._kwargs, dict) and server._kwargs.get("keepalive_timeout") == 7.5
        handler = server()
        assert isinstance(handler, _JsonErrorHandler)
        for attr in ("_manager", "_loop", "_request_count", "keepalive_timeout"):
            assert hasattr(handler, attr), f"{MOVED}: RequestHandler.{attr} is gone"
        assert handler._manager is server and handler._request_count == 0 and handler.keepalive_timeout == 7.5
        assert handler._loop is asyncio.get_running_loop()
        writer_attrs = [n for n, _ in inspect.getmembers(aiohttp.http_writer.StreamWriter)]
        assert "output_size" in writer_attrs, f"{MOVED}: StreamWriter.output_size is gone"
        assert "writer" in dir(BaseRequest), f"{MOVED}: BaseRequest.writer is gone"
    finally:
        await runner.cleanup()


def _api():
    from firmware.config import ApiConfig

    return ApiConfig(idle_timeout_s=7.5)


@pytest.mark.parametrize("name", ["connection_made", "connection_lost", "handle_error"])
def test_the_guard_still_overrides_what_it_means_to(name: str) -> None:
    """A rename in aiohttp would leave our override dead code: it must still shadow a base method."""
    assert name in _JsonErrorHandler.__dict__ and hasattr(RequestHandler, name)
