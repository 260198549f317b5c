"""``POST /v1/optout`` from a companion (the opt-out button away from the board, companion/).

The bearer-token middleware lets a request with ``Authorization: Cuecam-Companion ...`` through
on this one route and nowhere else; here it is checked (privacy/companion.py), refused (401, with
the board's clock so the companion can correct its own) or acted on, and both outcomes go to the
audit log. The answer is signed with the companion's key over its counter (``Cuecam-Confirm``),
so a companion lights its "paused" LED only for an answer this board gave to that request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..privacy.audit import COMPANION_NAME
from ..privacy.companion import CompanionVerifier, Refused, is_companion_auth

if TYPE_CHECKING:
    from .device import Device

log = logging.getLogger(__name__)

CONFIRM_PREFIX = b"cuecam-board-v1\n"
__all__ = ["COMPANIONS", "CompanionCollector", "confirm", "handle", "is_companion_auth", "setup"]
COMPANIONS = web.AppKey("companions", CompanionVerifier)
def confirm(key: bytes, ctr: int, body: bytes) -> str:
    return hmac.new(key, CONFIRM_PREFIX + str(ctr).encode() + b"\n" + body, hashlib.sha256).hexdigest()


async def handle(request: web.Request, svc: Device) -> web.Response:
    v = request.app[COMPANIONS]
    body = await request.read()
    try:
        req = v.verify(request.headers.get("Authorization", ""), body)
    except Refused as e:
        await request.app[REFUSALS].add(e.reason, e.companion if e.companion and COMPANION_NAME.match(e.companion)
                                         else None)
        log.warning("companion request refused (%s%s): %s", e.reason,
                    f", {e.companion}" if e.companion else "", e)
        out: dict[str, Any] = {"error": {"status": 401, "message": f"companion request refused ({e.reason}): {e}"},
                               "refused": e.reason, "time": round(svc.wall(), 3)}
        if e.reason == "replay" and e.companion in v.companions:
            out["counter"] = v.counter(e.companion)
        data = orjson.dumps(out)
        headers = {"WWW-Authenticate": 'Cuecam-Companion realm="cuecam"'}
        if e.ctr is not None and e.companion in v.companions:
            # the request was authentic: its refusal is signed back, so the companion may trust the
            # time and counter in it (an unsigned one, from anyone on the network, it ignores)
            headers["Cuecam-Confirm"] = confirm(v.companions[e.companion].key, e.ctr, data)
        return web.Response(body=data, status=401, content_type="application/json", headers=headers)
    labels = {"companion": req.companion, "press": req.press, "ctr": req.ctr, "age_ms": round(req.age_s * 1000)}
    if req.action == "optout":
        result = await svc.privacy.optout("companion", pause_s=svc.config.privacy.optout.pause_s - req.age_s,
                                          labels=labels)
    else:
        t0 = svc.now()
        resumed = await svc.privacy.resume("companion", labels=labels)
        remaining = svc.privacy.paused_remaining()
        result = {"paused": remaining is not None, "remaining_s": round(remaining or 0.0, 3), "source": "companion",
                  "latency_ms": round((svc.now() - t0) * 1000, 2), "purged": {}, "resumed": resumed}
    v.accepted(req)
    # The counter is used up in memory already; the file follows off the answer's path (saves
    # run one at a time, each writing the newest state).
    _spawn(request.app, asyncio.to_thread(v.save))
    result = {**result, "companion": req.companion, "action": req.action, "press": req.press,
              "time": round(svc.wall(), 3)}
    data = orjson.dumps(result)
    return web.Response(body=data, content_type="application/json",
                        headers={"Cuecam-Confirm": confirm(v.companions[req.companion].key, req.ctr, data)})


SAVES: web.AppKey[set[asyncio.Task[None]]] = web.AppKey("companion_saves")


class RefusalLog:
    """Refusals into the audit log, every one of them, without letting a flood of forged requests
    write and fsync the log (on the SD card) many times a second: the first refusal after a quiet
    ``window_s`` is written at once; the ones that follow within the window are counted per
    reason and companion and written as one entry each (``count``) when the window ends."""

    def __init__(self, audit: Any, window_s: float = 1.0) -> None:
        self.audit = audit
        self.window_s = window_s
        self.pending: dict[tuple[str, str | None], int] = {}
        self._last = -1e18
        self._flusher: asyncio.Task[None] | None = None

    async def add(self, reason: str, companion: str | None) -> None:
        now = time.monotonic()
        if self._flusher is None and now - self._last >= self.window_s:
            self._last = now
            await self._write(reason, companion, 1)
            return
        self.pending[(reason, companion)] = self.pending.get((reason, companion), 0) + 1
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_later(self._last + self.window_s - now))

    async def _write(self, reason: str, companion: str | None, count: int) -> None:
        labels: dict[str, Any] = {"reason": reason, **({"companion": companion} if companion else {})}
        if count > 1:
            labels["count"] = count
        await asyncio.to_thread(self.audit.append, "refused", "companion", **labels)

    async def _flush_later(self, delay: float) -> None:
        try:
            await asyncio.sleep(max(0.0, delay))
        finally:
            await self.flush()

    async def flush(self) -> None:
        pending, self.pending = self.pending, {}
        self._last = time.monotonic()
        self._flusher = None
        for (reason, companion), n in pending.items():
            await self._write(reason, companion, n)

    async def close(self) -> None:
        """At shutdown: what is pending goes to the log."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self.flush()


REFUSALS: web.AppKey[RefusalLog] = web.AppKey("companion_refusals", RefusalLog)


def _spawn(app: web.Application, coro: Any) -> None:
    task = asyncio.ensure_future(coro)
    app[SAVES].add(task)
    task.add_done_callback(app[SAVES].discard)


def setup(app: web.Application, verifier: CompanionVerifier, audit: Any, registry: CollectorRegistry) -> None:
    """The board's companions on the API app: the verifier, its metrics, its refusal log, its
    pending saves (finished at shutdown)."""
    app[COMPANIONS] = verifier
    app[SAVES] = set()
    app[REFUSALS] = RefusalLog(audit)
    registry.register(CompanionCollector(app[COMPANIONS]))  # type: ignore[arg-type]

    async def finish(app: web.Application) -> None:
        await app[REFUSALS].close()
        if app[SAVES]:
            await asyncio.gather(*app[SAVES], return_exceptions=True)

    app.on_shutdown.append(finish)


class CompanionCollector:
    """Presses, refusals and the last press per companion, read at scrape time."""

    def __init__(self, verifier: CompanionVerifier) -> None:
        self.v = verifier

    def collect(self) -> Iterator[Metric]:
        seen = self.v.status()
        presses = CounterMetricFamily("cuecam_companion_presses", "Companion requests accepted (opt-outs and resumes).",
                                      labels=["companion"])
        last = GaugeMetricFamily("cuecam_companion_last_press_timestamp_seconds",
                                 "When each companion's last accepted press reached the board (epoch s; 0: never).",
                                 labels=["companion"])
        for s in seen:
            presses.add_metric([s["name"]], s["presses"])
            last.add_metric([s["name"]], s["last_press_t"] or 0.0)
        refused = CounterMetricFamily("cuecam_companion_refusals", "Companion requests refused, by reason.",
                                      labels=["reason"])
        for reason, n in self.v.refusals.items():
            refused.add_metric([reason], n)
        paired = GaugeMetricFamily("cuecam_companions_paired", "Companions listed in privacy.optout.companions.")
        paired.add_metric([], len(seen))
        yield from (presses, last, refused, paired)
