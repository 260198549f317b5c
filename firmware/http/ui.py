"""The commissioning view's routes (docs/commissioning.md), served only while commissioning.enabled.

* ``GET /ui`` and its script and style: a static page (package data in ``firmware/ui/``), no data in it.
  It asks for the API token once and sends it as a bearer token to every route below.
* ``GET /v1/ui/live``: the live view as server-sent events, at most ``rate_hz`` messages a second: the
  people of the last frame (normalized boxes, keypoints, foot paths), the zones with their people now
  and the signals of the last windows, the pause state. One stream per client address (a new one ends
  the older one), at most ``max_streams`` in all, each ending after ``max_stream_s`` (the page reconnects).
* ``GET /v1/ui/heatmap``: the traffic map (sparse counts per grid cell).
* ``GET /v1/ui/zones``, ``POST /v1/ui/zones`` (validate, save atomically, apply), ``POST /v1/ui/zones/undo``.

Geometry and counts only: nothing here can reach a pixel (the view is fed the analyzer's results).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from importlib import resources
from typing import Any

import orjson
from aiohttp import web

from ..commissioning import ZoneProblems, validate_zones
from ..errors import ConfigError
from ..signals.schema import aggregates
from .device import SERVICE, Device

log = logging.getLogger(__name__)

MAX_ZONE_NAMES = 1024  # zone names one run may know (edits only add: a held vector keeps naming its zone)
SIGNALS_WINDOW_S = 10.0  # the zones' live signals: the vectors of the last 10 s
ASSETS = {"commissioning.js": "text/javascript", "commissioning.css": "text/css", "sse.js": "text/javascript"}
# The page may load its own script and style and talk to its own origin; nothing else, no image of any kind.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'none'; media-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class Streams:
    """The live streams open now, one per client address."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.by_client: dict[str, asyncio.Event] = {}  # set: that stream is to end
        self.opened = 0
        self.replaced = 0
        self.refused = 0

    def open(self, client: str) -> asyncio.Event:
        old = self.by_client.pop(client, None)
        if old is not None:
            old.set()
            self.replaced += 1
        elif len(self.by_client) >= self.limit:
            self.refused += 1
            raise web.HTTPServiceUnavailable(
                reason=f"{self.limit} commissioning pages are open already (commissioning.max_streams); close one",
                headers={"Retry-After": "5"})
        ev = asyncio.Event()
        self.by_client[client] = ev
        self.opened += 1
        return ev

    def close(self, client: str, ev: asyncio.Event) -> None:
        if self.by_client.get(client) is ev:
            del self.by_client[client]


STREAMS: web.AppKey[Streams] = web.AppKey("ui_streams")


def _svc(request: web.Request) -> Device:
    return request.app[SERVICE]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json",
                        headers={"Cache-Control": "no-store"})


def _no_query(request: web.Request) -> None:
    if request.query:
        raise web.HTTPBadRequest(reason=f"no query parameters taken here; got {sorted(request.query)[:8]}"[:300])


def _read_asset(name: str) -> bytes:
    return resources.files("firmware").joinpath("ui", name).read_bytes()


async def page(request: web.Request) -> web.Response:
    """The commissioning page: static HTML; the data comes from the routes below, with the token."""
    _no_query(request)
    return web.Response(body=_read_asset("commissioning.html"), content_type="text/html", charset="utf-8",
                        headers=PAGE_HEADERS)


def _asset(name: str) -> Any:
    async def handler(request: web.Request) -> web.Response:
        _no_query(request)
        ctype = ASSETS[name]
        return web.Response(body=_read_asset(name), content_type=ctype, charset="utf-8", headers=PAGE_HEADERS)

    handler.__name__ = "ui_" + name.replace(".", "_")
    return handler


script = _asset("commissioning.js")
style = _asset("commissioning.css")
sse_script = _asset("sse.js")  # the stream reader (the gateway's dashboard serves the same file)


def zone_signals(svc: Device) -> list[dict[str, Any]]:
    """Per zone configured now: the people in the vectors of the last SIGNALS_WINDOW_S and their mean
    signals (no k-anonymity here: the same token holder can read every vector at /v1/vectors)."""
    mono = svc.now()
    recs = svc.vectors.between(mono - SIGNALS_WINDOW_S, mono + 1.0, svc.vectors.capacity, field="t_mono").records
    kinds = {z.name: z.kind for z in svc.config.zones}
    cells = aggregates(recs, [(n, kinds.get(n, "excluded")) for n in svc.zone_names], 1)
    return [{"zone": c["zone"], "tracks": c["tracks"], "engagement": c["engagement_mean"],
             "dwell_satisfaction": c["dwell_satisfaction_mean"], "approach_avoid": c["approach_avoid_mean"]}
            for c in cells if c["zone"] is not None]


def live_message(svc: Device) -> dict[str, Any]:
    view = svc.commissioning
    assert view is not None
    paused = svc.privacy.paused
    signals = {s["zone"]: s for s in zone_signals(svc)}
    zones = []
    for i, z in enumerate(svc.config.zones):
        s = signals.get(z.name, {})
        zones.append({"name": z.name, "kind": z.kind,
                      "now": view.zone_counts[i] if i < len(view.zone_counts) and not paused else 0,
                      "tracks": s.get("tracks", 0), "engagement": s.get("engagement"),
                      "dwell_satisfaction": s.get("dwell_satisfaction"), "approach_avoid": s.get("approach_avoid")})
    st = svc.stats
    # the opt-out companions paired with this board: device names, presses and refusals, no person
    companions = [{k: c[k] for k in ("name", "position", "presses", "last_press_t", "last_action", "refusals",
                                     "last_refusal", "last_refusal_t")} for c in svc.companions.status()]
    return {"t": round(svc.wall(), 3), "frames": view.frames, "size": list(view.size) if view.size else None,
            "paused": paused, "state": st.state, "fps": round(st.fps(svc.now()), 2),
            "people": [] if paused else view.people, "zones": zones, "companions": companions}


async def live(request: web.Request) -> web.StreamResponse:
    """Server-sent events: one ``data:`` JSON line per message, at most commissioning.rate_hz a second."""
    _no_query(request)
    svc = _svc(request)
    cfg = svc.config.commissioning
    client = request.remote or "?"
    streams = request.app[STREAMS]
    end = streams.open(client)
    timeout = svc.config.api.request_timeout_s
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                       "X-Accel-Buffering": "no"})
    try:
        await resp.prepare(request)
        period = 1.0 / cfg.rate_hz
        deadline = time.monotonic() + cfg.max_stream_s
        last_frames, last_sent = -1, 0.0
        await resp.write(b"retry: 2000\n\n")
        while not end.is_set() and time.monotonic() < deadline:
            view = svc.commissioning
            now = time.monotonic()
            # a message when a new frame was analysed, else one a second (the pause, a stalled camera)
            if view is not None and (view.frames != last_frames or now - last_sent >= 1.0):
                last_frames, last_sent = view.frames, now
                body = b"data: " + orjson.dumps(live_message(svc)) + b"\n\n"
                async with asyncio.timeout(timeout):  # a page that stops reading is dropped
                    await resp.write(body)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(period):
                    await end.wait()
    except (TimeoutError, ConnectionError):
        log.info("commissioning stream to %s ended: the page stopped reading", client)
    finally:
        streams.close(client, end)
    return resp


async def heatmap(request: web.Request) -> web.Response:
    _no_query(request)
    view = _svc(request).commissioning
    assert view is not None
    return _json(view.heatmap())


def _zones_body(svc: Device) -> dict[str, Any]:
    view = svc.commissioning
    return {"zones": [z.model_dump(exclude_none=True) for z in svc.config.zones],
            "size": list(view.size) if view is not None and view.size else None,
            "file": svc.zone_file.path.name, "can_undo": svc.zone_file.can_undo}


async def zones_get(request: web.Request) -> web.Response:
    _no_query(request)
    return _json(_zones_body(_svc(request)))


_SAVE_LOCK: web.AppKey[asyncio.Lock] = web.AppKey("ui_save_lock")


def _problems(status: int, message: str, problems: list[str]) -> web.Response:
    return _json({"error": {"status": status, "message": message[:2000], "problems": [p[:500] for p in problems[:64]]}},
                 status=status)


async def zones_post(request: web.Request) -> web.Response:
    """{"zones": [...]}: validated with the board's config model, saved atomically, applied from the next frame."""
    _no_query(request)
    svc = _svc(request)
    try:
        body = await request.json(loads=orjson.loads)
    except ValueError:
        body = None
    if not isinstance(body, dict) or set(body) != {"zones"}:
        return _problems(400, 'body must be JSON: {"zones": [{"name": ..., "kind": ..., "polygon": [[x, y], ...]}]}',
                         ["body: must be an object with the one key zones"])
    try:
        zones = validate_zones(svc.config, body["zones"])
    except ZoneProblems as e:
        return _problems(422, "the zones are not valid; nothing was saved", e.problems)
    if len(set(svc.zone_names) | {z.name for z in zones}) > MAX_ZONE_NAMES:
        return _problems(409, f"more than {MAX_ZONE_NAMES} zone names since the board started (vectors held keep "
                         "naming theirs); restart the board, then save again; nothing was saved", [])
    async with request.app[_SAVE_LOCK]:
        try:
            cfg = await asyncio.to_thread(svc.zone_file.save, zones)
        except ConfigError as e:
            return _problems(409, f"not saved: {e}", e.problems)
        except OSError as e:
            return _problems(409, f"cannot write {svc.zone_file.path}: {e.strerror}; nothing was saved", [])
        await svc.apply_zones(cfg)
    return _json({**_zones_body(svc), "saved": True})


async def zones_undo(request: web.Request) -> web.Response:
    """Put the config file from before the last save back, and apply its zones."""
    _no_query(request)
    svc = _svc(request)
    async with request.app[_SAVE_LOCK]:
        try:
            cfg = await asyncio.to_thread(svc.zone_file.undo)
        except ConfigError as e:
            return _problems(409, str(e), e.problems)
        except OSError as e:
            return _problems(409, f"cannot write {svc.zone_file.path}: {e.strerror}; nothing changed", [])
        await svc.apply_zones(cfg)
    return _json({**_zones_body(svc), "saved": True})


def setup(app: web.Application, svc: Device) -> None:
    app[STREAMS] = Streams(svc.config.commissioning.max_streams)
    app[_SAVE_LOCK] = asyncio.Lock()

    async def end_streams(app: web.Application) -> None:  # a stopping board does not wait for open pages
        for ev in app[STREAMS].by_client.values():
            ev.set()

    app.on_shutdown.append(end_streams)
