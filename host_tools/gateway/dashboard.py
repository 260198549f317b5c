"""The store dashboard (``GET /`` on the gateway API): store now, trends, decisions, live updates.

* ``GET /`` and its script, style and the vendored uPlot: static files from the package (no data in
  them, nothing fetched from the internet).
* ``GET /v1/dashboard``: everything the page draws at once: visitors now and today, the zones with
  their signals, the boards' health, opt-outs (a count only), traffic per hour against the slow-hour
  baseline, the signals per zone over the retained history, and the recent decisions.
* ``GET /v1/dashboard/live?since=ID``: server-sent events every ``LIVE_S`` seconds: the "now" part and
  the decisions after ``since`` (the page's cursor), at most ``MAX_STREAMS`` streams in all.

Same auth model as the rest of the gateway API (the bearer token when ``gateway.token`` is set), and
the dashboard holds no session token, ever: every number is store-, zone- or board-level (the
``/v1/sessions`` route, which lists sessions by their random token, is not used).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from datetime import datetime
from importlib import resources
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from aiohttp import web

if TYPE_CHECKING:
    from .service import Gateway

UPLOT_VERSION = "1.6.32"
NOW_WINDOW_S = 300  # "visitors now": distinct sessions in the last 5 min
LIVE_S = 2.0  # a live message every 2 s
MAX_STREAMS = 16
MAX_DECISIONS = 100
ASSETS = {
    "/sse.js": ("firmware:ui/sse.js", "text/javascript"),  # the board's stream reader, one file for both pages
    "/dashboard.js": ("dashboard.js", "text/javascript"),
    "/dashboard.css": ("dashboard.css", "text/css"),
    "/vendor/uplot/uPlot.iife.min.js": ("vendor/uplot/uPlot.iife.min.js", "text/javascript"),
    "/vendor/uplot/uPlot.min.css": ("vendor/uplot/uPlot.min.css", "text/css"),
}
PUBLIC = frozenset({"/", *ASSETS})  # the page and its files: static, no data
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
STREAMS: web.AppKey[list[int]] = web.AppKey("dashboard_streams")  # [open streams]


def _static(name: str) -> bytes:
    if name.startswith("firmware:"):
        return resources.files("firmware").joinpath(*name.removeprefix("firmware:").split("/")).read_bytes()
    return resources.files("host_tools").joinpath("gateway", "static", name).read_bytes()


def _json(data: Any) -> web.Response:
    return web.Response(body=orjson.dumps(data), content_type="application/json", headers={"Cache-Control": "no-store"})


def _round(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(float(x), nd)


def now_part(gw: Gateway) -> dict[str, Any]:
    """Visitors now and today (``Gateway.traffic``), zones, boards, opt-outs: store-level numbers only."""
    t = gw.clock()
    midnight = datetime.fromtimestamp(t).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    today_since = max(midnight, t - gw.cfg.store.retention_s)  # the store holds sessions for the retention only
    devices = gw.devices()
    zones = [{"zone": z, **cell} for z, cell in gw.store.zones_state(NOW_WINDOW_S).items()]
    # the store's traffic: people in through the entrance lines where a board counts them, else sessions
    now_traffic = gw.traffic(NOW_WINDOW_S)
    today = gw.traffic(max(1, round(t - today_since)))
    return {
        "store": gw.cfg.gateway.name, "t": round(t, 3),
        "visitors_now": now_traffic["people"], "now_window_s": NOW_WINDOW_S, "visitors_source": now_traffic["source"],
        "visitors_today": today["people"], "today_since": round(today_since, 3),
        "conversion_today": today.get("conversion"),
        "zones": zones,
        "boards": [{"name": d["name"], "state": d["state"], "error": d["error"], "last_ok_s_ago": d["last_ok_s_ago"],
                    "vectors": d["vectors"], "lost": d["lost"], "restarts_seen": d["restarts_seen"]} for d in devices],
        "boards_healthy": sum(1 for d in devices if d["state"] == "ok"),
        "optouts": sum(int(d["optouts_seen"]) for d in devices),  # a count only: when, where and who stay out
        "decisions_total": sum(gw.engine.fired_total.values()),
    }


def _baseline_percentile(gw: Gateway) -> float:
    """The slow-hour rules' percentile (the first such rule's), else the quartile."""
    for r in gw.cfg.rules:
        if r.when.kind == "slow_traffic":
            return float(getattr(r.when, "percentile", 25.0))
    return 25.0


def trends(gw: Gateway) -> dict[str, Any]:
    """Traffic per hour (footfall through the entrance lines, else distinct sessions seen in that hour)
    against the baseline of past same weekdays and hours, and the signals per zone per bucket, over the retained history."""
    t = gw.clock()
    since = t - gw.cfg.store.retention_s
    per_hour: dict[float, set[str]] = defaultdict(set)
    for r in gw.store.window(since):
        hour = datetime.fromtimestamp(r.t1).replace(minute=0, second=0, microsecond=0)
        per_hour[hour.timestamp()].add(r.session)
    lines = gw.sales.has_lines  # footfall through the entrance lines is the store's traffic where there is one
    pct = _baseline_percentile(gw)
    start = datetime.fromtimestamp(since).replace(minute=0, second=0, microsecond=0)
    hours = []
    h = start.timestamp()
    while h <= t:
        d = datetime.fromtimestamp(h)
        base = gw.store.baseline(d.weekday(), d.hour, d.strftime("%Y-%m-%d"))
        arr = np.asarray(base, dtype=float)
        n = gw.sales.footfall(h)[0] - gw.sales.footfall(h + 3600)[0] if lines else len(per_hour.get(h, ()))
        seen_s = min(t, h + 3600) - max(h, since)  # how much of the hour the store holds
        hours.append({"t": h, "label": d.strftime("%a %H:00"), "visitors": n,
                      # as a rate (what the slow-hour rules compare): the part of the hour held, scaled up
                      "per_hour": round(n * 3600 / max(seen_s, 60.0), 1), "partial": seen_s < 3599,
                      "baseline_samples": len(base),
                      "baseline_median": _round(float(np.median(arr)), 1) if len(base) else None,
                      "baseline_slow": _round(float(np.percentile(arr, pct)), 1) if len(base) else None})
        h += 3600
        if len(hours) > 48:
            break
    signals: dict[str, list[list[float | None]]] = defaultdict(list)
    for row in gw.store.trend():
        if row["zone"] in (None, "-"):
            continue  # people in no zone: counted in the traffic, no zone signals to plot
        signals[row["zone"]].append([row["t"], row["sessions"], row["engagement_mean"],
                                            row["dwell_satisfaction_mean"], row["approach_avoid_mean"]])
    return {"baseline_percentile": pct, "hours": hours, "bucket_s": gw.store.bucket_s,
            "source": "footfall" if lines else "sessions",
            "signals": {z: rows[-720:] for z, rows in sorted(signals.items())}}


def decisions(gw: Gateway, since: int = 0, limit: int = MAX_DECISIONS) -> list[dict[str, Any]]:
    ds = gw.engine.recent(since, 10**9)[-limit:]
    return [{"id": d.id, "t": round(d.t, 3), "iso": j["iso"], "rule": d.rule, "kind": d.kind, "subject": d.subject,
             "explanation": d.explanation, "inputs": d.inputs,
             "actions": [{k: a.get(k) for k in ("output", "status", "detail") if k in a} for a in d.actions]}
            for d, j in ((d, d.to_json()) for d in ds)]


async def page(request: web.Request) -> web.Response:
    return web.Response(body=_static("dashboard.html"), content_type="text/html", charset="utf-8", headers=HEADERS)


async def asset(request: web.Request) -> web.Response:
    name, ctype = ASSETS[request.path]
    return web.Response(body=_static(name), content_type=ctype, charset="utf-8", headers=HEADERS)


def _gw(request: web.Request) -> Gateway:
    from .service import GATEWAY

    return request.app[GATEWAY]


async def snapshot(request: web.Request) -> web.Response:
    gw = _gw(request)
    ds = decisions(gw)
    return _json({"now": now_part(gw), "trends": trends(gw), "decisions": ds,
                  "cursor": ds[-1]["id"] if ds else 0, "epoch": gw.store.epoch})


def _since(request: web.Request) -> int:
    raw = request.query.get("since", "0")
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise web.HTTPBadRequest(reason="since must be a non-negative integer (a decision id)")
    return int(raw)


async def live(request: web.Request) -> web.StreamResponse:
    """Server-sent events: {"now": ..., "decisions": [after the cursor], "cursor": id} every LIVE_S seconds."""
    gw = _gw(request)
    since = _since(request)
    open_ = request.app[STREAMS]
    if open_[0] >= MAX_STREAMS:
        raise web.HTTPServiceUnavailable(reason=f"{MAX_STREAMS} dashboards are open already", headers={"Retry-After": "5"})
    open_[0] += 1
    try:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
        await resp.prepare(request)
        await resp.write(b"retry: 3000\n\n")
        deadline = time.monotonic() + 3600.0  # the page reconnects
        while not gw.stop_event.is_set() and time.monotonic() < deadline:
            ds = decisions(gw, since)
            if ds:
                since = ds[-1]["id"]
            body = {"now": now_part(gw), "decisions": ds, "cursor": since}
            async with asyncio.timeout(10.0):  # a page that stops reading is dropped
                await resp.write(b"data: " + orjson.dumps(body) + b"\n\n")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LIVE_S):
                    await gw.stop_event.wait()
    except (TimeoutError, ConnectionError):
        pass
    finally:
        open_[0] -= 1
    return resp


def setup(app: web.Application) -> None:
    app[STREAMS] = [0]
    app.router.add_get("/", page)
    for path in ASSETS:
        app.router.add_get(path, asset)
    app.router.add_get("/v1/dashboard", snapshot)
    app.router.add_get("/v1/dashboard/live", live)
