"""``POST /v1/optout`` from a companion (the opt-out button away from the board, companion/).

The bearer-token middleware lets a request with ``Authorization: Cuecam-Companion ...`` through
on this one route and nowhere else; here it is checked (privacy/companion.py), refused (401, with
the board's clock so the companion can correct its own) or acted on, and both outcomes go to the
audit log. The answer is signed with the companion's key over its counter (``Cuecam-Confirm``),
so a companion lights its "paused" LED only for an answer this board gave to that request.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
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
        labels: dict[str, Any] = {"reason": e.reason}
        if e.companion is not None and COMPANION_NAME.match(e.companion):
            labels["companion"] = e.companion
        await asyncio.to_thread(svc.audit.append, "refused", "companion", **labels)
        log.warning("companion request refused (%s%s): %s", e.reason,
                    f", {e.companion}" if e.companion else "", e)
        out: dict[str, Any] = {"error": {"status": 401, "message": f"companion request refused ({e.reason}): {e}"},
                               "refused": e.reason, "time": round(svc.wall(), 3)}
        if e.reason == "replay" and e.companion in v.companions:
            out["counter"] = v.counter(e.companion)
        return web.Response(body=orjson.dumps(out), status=401, content_type="application/json",
                            headers={"WWW-Authenticate": 'Cuecam-Companion realm="cuecam"'})
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


def _spawn(app: web.Application, coro: Any) -> None:
    task = asyncio.ensure_future(coro)
    app[SAVES].add(task)
    task.add_done_callback(app[SAVES].discard)


def setup(app: web.Application, verifier: CompanionVerifier, registry: CollectorRegistry) -> None:
    """The board's companions on the API app: the verifier, its metrics, its pending saves."""
    app[COMPANIONS] = verifier
    app[SAVES] = set()
    registry.register(CompanionCollector(app[COMPANIONS]))  # type: ignore[arg-type]


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
