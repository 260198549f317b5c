"""Server-sent events as a page reads them, for the stream tests: the ``data:`` messages of a response."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from aiohttp import ClientResponse


async def read_events(r: ClientResponse, seconds: float, n: int | None = None, raw: list[bytes] | None = None,
                      stamp: bool = False) -> list[dict[str, Any]]:
    """The messages of the event stream ``r`` for ``seconds`` (or until ``n`` came); every chunk kept in
    ``raw``; with ``stamp`` each message gets ``at`` (time.monotonic() when it arrived)."""
    out: list[dict[str, Any]] = []
    buf = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and (n is None or len(out) < n):  # bounded
        try:
            chunk = await asyncio.wait_for(r.content.readany(), max(0.05, deadline - time.monotonic()))
        except TimeoutError:
            break
        if not chunk:
            break
        if raw is not None:
            raw.append(chunk)
        buf += chunk
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                if line.startswith(b"data: "):
                    msg = orjson.loads(line[6:])
                    out.append({"at": time.monotonic(), **msg} if stamp else msg)
    return out
