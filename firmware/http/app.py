"""The device's HTTP API (aiohttp + orjson).

Every route is declared once in ``ROUTES``; the router and the OpenAPI document are both built
from that table, so /openapi.json lists exactly what is served. Every route but /health and
/v1/privacy (the public notice) needs the device's bearer token. Responses are built field by
field from named record fields (an allow-list): nothing that is not listed here can reach the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from .. import __version__
from ..counts import BUCKET_S, COUNTS_SCHEMA
from ..privacy.audit import AUDIT_SCHEMA
from ..privacy.notice import PRIVACY_SCHEMA, privacy_notice
from ..signals.schema import AGGREGATES_SCHEMA, SCHEMA, VECTORS_SCHEMA, aggregates, to_json
from . import companion, ui
from .auth import Token
from .device import SERVICE, Device
from .guard import API_CONFIG, MAX_BODY, RATE_LIMITER, STREAMING, UNTIMED, RateLimiter, deadline, idle_chunks, limits

log = logging.getLogger(__name__)

TOKEN = web.AppKey("token", Token)
PRESSING: web.AppKey[dict[str, Any]] = web.AppKey("pressing")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def json_error(status: int, message: str) -> web.Response:
    return json_response({"error": {"status": status, "message": message}}, status=status)


def safe(text: str, limit: int = 500) -> str:
    """Text that may quote the client (names, values, URLs) made fit for an HTTP reason phrase:
    control and non-ASCII characters escaped (\\r, \\xcc...), at most ``limit`` characters."""
    return text.encode("unicode_escape").decode("ascii")[:limit]


def bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(reason=safe(message))


# -- query parameters -------------------------------------------------------------------------
@dataclass(frozen=True)
class IntParam:
    name: str
    description: str
    default: int
    minimum: int
    maximum: int | None = None  # None: taken from the config at request time (api.max_limit)

    def schema(self, zones: list[str] | None = None, max_limit: int | None = None) -> dict[str, Any]:
        s: dict[str, Any] = {"type": "integer", "minimum": self.minimum, "default": self.default}
        hi = self.maximum if self.maximum is not None else max_limit
        if hi is not None:
            s["maximum"] = hi
        return s

    def parse(self, raw: str, svc: Device) -> int:
        if not raw.isascii() or not raw.isdigit() or len(raw) > 19:
            raise bad_request(f"query parameter {self.name!r} must be a non-negative integer, got {raw[:40]!r}")
        v = int(raw)
        hi = self.maximum if self.maximum is not None else svc.config.api.max_limit
        if v < self.minimum or v > hi:
            raise bad_request(f"query parameter {self.name!r} must be between {self.minimum} and {hi}, got {v}")
        return v


@dataclass(frozen=True)
class ZoneParam:
    name: str
    description: str
    default: None = None

    def schema(self, zones: list[str] | None = None, max_limit: int | None = None) -> dict[str, Any]:
        return {"type": "string", "enum": list(zones)} if zones else {"type": "string", "maxLength": 64}

    def parse(self, raw: str, svc: Device) -> int:
        if raw not in svc.zone_names:
            known = ", ".join(svc.zone_names) or "none configured"
            raise bad_request(f"unknown zone {raw[:64]!r}; zones: {known}")
        return svc.zone_names.index(raw)


Param = IntParam | ZoneParam


def parse_query(request: web.Request, params: tuple[Param, ...]) -> dict[str, Any]:
    known = {p.name for p in params}
    unknown = sorted(set(request.query) - known)
    if unknown:
        raise bad_request(f"unknown query parameter(s): {', '.join(map(repr, unknown[:8]))[:300]}; allowed: {sorted(known)}")
    out: dict[str, Any] = {}
    for p in params:
        values = request.query.getall(p.name, [])
        if len(values) > 1:
            raise bad_request(f"query parameter {p.name!r} given more than once")
        out[p.name] = p.parse(values[0], request.app[SERVICE]) if values else p.default
    return out


# -- handlers ---------------------------------------------------------------------------------
async def health(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    ok, reason = svc.health()
    remaining = svc.privacy.paused_remaining()
    body = {"status": ("paused" if remaining is not None else "ok") if ok else "degraded", "reason": reason,
            "uptime_s": round(svc.uptime(), 3),
            "paused": None if remaining is None else {"remaining_s": round(remaining, 3)},
            "ota": {"version": svc.ota.version, "state": svc.ota.state, "trial": svc.ota.trial}}
    return json_response(body, status=200 if ok else 503)


async def status(request: web.Request) -> web.Response:
    body = request.app[SERVICE].status()
    body["privacy"]["companions"] = request.app[companion.COMPANIONS].status()
    return json_response(body)


VECTOR_PARAMS = (
    IntParam("since", "Return vectors with seq greater than this cursor (0: the oldest held).", 0, 0, 2**63 - 1),
    IntParam("limit", "At most this many vectors (up to api.max_limit).", 100, 1),
    ZoneParam("zone", "Only vectors whose zone has this name."),
)
AGGREGATE_PARAMS = (IntParam("window", "Aggregate the vectors of the last this many seconds.", 60, 1, 3600),)
COUNT_PARAMS = (IntParam("since", "Buckets ending after this wall-clock time (epoch seconds; 0: all held).",
                         0, 0, 2**40),)


async def vectors(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    q = parse_query(request, VECTOR_PARAMS)
    zone = q["zone"]
    sl = svc.vectors.since(q["since"], q["limit"], None if zone is None else (lambda r: r["zone"] == zone))
    return json_response({
        "schema": SCHEMA,
        "boot_id": svc.boot_id,
        "purges": list(svc.privacy.purges),
        "cursor": sl.cursor,
        "lost": sl.lost,
        "more": sl.more,
        "vectors": list(to_json(sl.records, svc.zone_names, svc.speed_unit)),
    })


async def aggregates_handler(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    q = parse_query(request, AGGREGATE_PARAMS)
    now, mono = svc.wall(), svc.now()  # the window on the monotonic clock: a wall-clock jump moves nothing
    recs = svc.vectors.between(mono - q["window"], mono + 1.0, svc.vectors.capacity, field="t_mono").records
    # vectors name zones by their index in zone_names (which edited zones only extend); a zone no longer
    # configured is left out, as excluded zones are
    kinds = {z.name: z.kind for z in svc.config.zones}
    zones = [(n, kinds.get(n, "excluded")) for n in svc.zone_names]
    k = svc.config.privacy.k_anonymity
    counting = svc.counts.window(q["window"], mono, k)
    return json_response({"schema": SCHEMA, "window_s": q["window"], "until": round(now, 3),
                          "k_anonymity": k, "zones": aggregates(recs, zones, k),
                          "people": counting["people"], "occupancy": counting["zones"], "lines": counting["lines"],
                          "queues": counting["queues"]})


async def counts_handler(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    q = parse_query(request, COUNT_PARAMS)
    c = svc.counts
    return json_response({"boot_id": svc.boot_id, "bucket_s": BUCKET_S, "until": round(svc.wall(), 3),
                          "retention_s": c.retention_s,
                          "lines": [{"line": ln.name, "entrance": ln.entrance} for ln in c.lines],
                          "queues": [qz.name for qz in c.queues],
                          "buckets": c.buckets(float(q["since"]), svc.wall())})


@contextlib.contextmanager
def _ota_refusals() -> Iterator[None]:
    """An update the board refuses (OtaRefused) becomes the JSON error with its status."""
    from ..ota_agent import OtaRefused

    try:
        yield
    except OtaRefused as e:
        raise _http_error(e.status, str(e)) from e


async def ota_upload(request: web.Request) -> web.Response:
    """Receive a signed bundle (the request body), verify, install as the trial slot, restart."""
    from ..ota_agent import CHUNK

    svc = request.app[SERVICE]
    parse_query(request, ())
    with _ota_refusals():
        chunks = idle_chunks(request.content.iter_chunked(CHUNK), request.app[API_CONFIG].request_timeout_s)
        result = await svc.ota.receive(request.content_length, chunks)
    return json_response(result, status=202)


async def ota_pull(request: web.Request) -> web.Response:
    """Download a signed bundle from a URL (the gateway), resuming with Range, then install it."""
    parse_query(request, ())
    with _ota_refusals():
        request.app[SERVICE].ota.precheck()  # no keys, or busy: refuse before reading the body
    try:
        body = await request.json(loads=orjson.loads)
    except ValueError:
        body = None
    url = body.get("url") if isinstance(body, dict) and set(body) == {"url"} else None
    if not isinstance(url, str):
        raise bad_request('body must be JSON: {"url": "http://gateway/cuecam-0.2.0.bundle"}')
    with _ota_refusals():
        result = await request.app[SERVICE].ota.pull(url)
    return json_response(result, status=202)


def _http_error(status: int, message: str) -> web.HTTPException:
    cls = {400: web.HTTPBadRequest, 403: web.HTTPForbidden, 408: web.HTTPRequestTimeout, 409: web.HTTPConflict,
           411: web.HTTPLengthRequired,
           413: web.HTTPRequestEntityTooLarge, 422: web.HTTPUnprocessableEntity, 502: web.HTTPBadGateway}.get(
               status, web.HTTPInternalServerError)
    if cls is web.HTTPRequestEntityTooLarge:
        return web.HTTPRequestEntityTooLarge(max_size=0, actual_size=0, reason=safe(message))
    return cls(reason=safe(message.replace("\n", " ")))


async def optout(request: web.Request) -> web.Response:
    """Network-connected signage: the same as pressing the opt-out button. With the bearer token,
    or signed by a paired companion (http/companion.py)."""
    parse_query(request, ())
    if companion.is_companion_auth(request.headers.get("Authorization", "")):
        return await companion.handle(request, request.app[SERVICE])
    return json_response(await request.app[SERVICE].privacy.optout("api"))


SIM_BUTTON_PARAMS = (IntParam("hold_ms", "How long the button is held down (ms).", 100, 0, 10_000),)


async def sim_button(request: web.Request) -> web.Response:
    """Press the mock opt-out button (sim board: privacy.optout.pins = mock) as a shopper would.
    One press at a time (409 while the button is still held); the answer comes once the press has
    had its effect (pause, purge or resume) or after at most 1 s, while a long hold goes on."""
    privacy = request.app[SERVICE].privacy
    q = parse_query(request, SIM_BUTTON_PARAMS)
    signage = privacy.signage
    if signage is None or signage.kind != "mock" or signage.button is None:
        raise web.HTTPNotFound(reason="no mock button on this board (privacy.optout.pins is not mock)")
    pressing = request.app[PRESSING]
    held = pressing.get("press")
    if held is not None and not held.done():
        raise web.HTTPConflict(reason="the mock button is still held by an earlier press")
    before = (privacy.optouts, privacy.paused)
    press = asyncio.get_running_loop().run_in_executor(None, signage.press, q["hold_ms"] / 1000.0)
    press.add_done_callback(_press_done)
    pressing["press"] = press
    for _ in range(100):  # the press is handled on the event loop: let it run (bounded, 1 s)
        if (privacy.optouts, privacy.paused) != before or press.done():
            break
        await asyncio.sleep(0.01)
    if press.done() and press.exception() is None:
        for _ in range(100):  # released: give the release (long press) its turn too
            if (privacy.optouts, privacy.paused) != before:
                break
            await asyncio.sleep(0.01)
    return json_response({"pressed_ms": q["hold_ms"], "paused": privacy.paused,
                          "remaining_s": _round(privacy.paused_remaining())})


def _press_done(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled() and fut.exception() is not None:  # e.g. the board stopped mid-press
        log.warning("mock button press: %s", fut.exception())


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


async def privacy(request: web.Request) -> web.Response:
    return json_response(privacy_notice(request.app[SERVICE].config))


AUDIT_PARAMS = (
    IntParam("since", "Only entries after this time (epoch seconds; 0: all held).", 0, 0, 2**63 - 1),
    IntParam("limit", "At most this many entries, the newest (up to api.max_limit).", 100, 1),
)


async def audit(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    q = parse_query(request, AUDIT_PARAMS)
    entries = svc.audit.read(q["limit"], float(q["since"]) if q["since"] else None)
    return json_response({"entries": entries, "write_errors": svc.audit.write_errors})


class _ServiceCollector:
    """Reads the live pipeline counters at scrape time; no second copy of the numbers."""

    def __init__(self, svc: Device) -> None:
        self.svc = svc

    def collect(self) -> Iterator[Metric]:
        svc, st = self.svc, self.svc.stats
        for name, doc, value in (
            ("cuecam_frames_captured", "Frames read from the camera.", st.frames_captured),
            ("cuecam_frames_processed", "Frames run through the detector.", st.frames_processed),
            ("cuecam_frames_dropped", "Frames dropped because inference was behind.", st.frames_dropped),
            ("cuecam_inference_errors", "Frames whose inference failed.", st.inference_errors),
            ("cuecam_vectors", "Sentiment vectors produced.", st.vectors),
            ("cuecam_pose_invokes", "Pose model invocations.", st.pose_invokes),
            ("cuecam_camera_failures", "Camera reads or reopenings that failed (raised, hung, bad frame).",
             st.camera_failures),
            ("cuecam_camera_restarts", "Camera reopenings after a failure.", st.camera_restarts),
            ("cuecam_model_switches", "Switches to the CPU fallback model after the model failed.", st.model_switches),
            ("cuecam_frames_thermal_skipped", "Frames not analysed to cool the SoC down.", st.frames_thermal_skipped),
            ("cuecam_watchdog_pings", "systemd watchdog pings sent.", svc.watchdog_pings),
        ):
            c = CounterMetricFamily(name, doc)
            c.add_metric([], value)
            yield c
        h = st.infer_seconds
        hist = HistogramMetricFamily("cuecam_inference_seconds", "Detector time per analysed frame (resize, invoke, "
                                     "decoding).")
        hist.add_metric([], h.cumulative(), h.sum)
        yield hist
        gauges: tuple[tuple[str, str, float], ...] = (
            ("cuecam_fps", "Frames processed per second over the last 10 s.", st.fps(svc.now())),
            ("cuecam_buffer_records", "Sentiment vectors held in the ring buffer.", len(svc.vectors)),
            ("cuecam_buffer_capacity", "Ring buffer capacity in vectors.", svc.vectors.capacity),
            ("cuecam_uptime_seconds", "Seconds since the service started.", svc.uptime()),
            ("cuecam_healthy", "1 when /health says ok.", 1.0 if svc.health()[0] else 0.0),
            ("cuecam_thermal_hot", "1 while the frame rate is lowered for heat.", 1.0 if svc.thermal.hot else 0.0),
            ("cuecam_asyncio_tasks", "asyncio tasks alive in the service's event loop.", _tasks()),
            ("cuecam_threads", "Python threads alive in the process.", threading.active_count()),
        )
        reading = svc.thermal.reading
        if reading is not None and reading.temp_c is not None:
            gauges += (("cuecam_soc_temperature_celsius", "SoC temperature.", reading.temp_c),)
        if reading is not None and reading.throttled is not None:
            gauges += (("cuecam_throttled_flags", "The firmware's get_throttled bits.", float(reading.throttled)),)
        for gname, gdoc, gvalue in gauges:
            gg = GaugeMetricFamily(gname, gdoc)
            gg.add_metric([], gvalue)
            yield gg
        yield from _counting_metrics(svc)
        info = GaugeMetricFamily("cuecam_info", "Build and board.", labels=["version", "board", "kind", "model"])
        info.add_metric([__version__, svc.config.board.name, svc.config.board.kind, svc.detector_name or ""], 1.0)
        yield info


def _counting_metrics(svc: Device) -> Iterator[Metric]:
    """People now, per zone and per queue, and the line crossings held (gauges: an opt-out purges them)."""
    c, cur = svc.counts, svc.counts.current(svc.now())
    people = GaugeMetricFamily("cuecam_people", "People in view now (NaN when no frame was analysed for 2 s).")
    people.add_metric([], float("nan") if cur is None else float(cur.people))
    yield people
    occ = GaugeMetricFamily("cuecam_zone_occupancy", "People now per area zone.", labels=["zone"])
    for z in c.areas:
        occ.add_metric([z.name], float("nan") if cur is None else float(cur.occupancy[z.index]))
    yield occ
    que = GaugeMetricFamily("cuecam_queue_length", "People queueing now (inside a queue zone for min_wait_s).",
                            labels=["zone"])
    for qz in c.queues:
        que.add_metric([qz.name], float("nan") if cur is None else float(cur.queues[qz.index]))
    yield que
    cross = GaugeMetricFamily("cuecam_line_crossings", "Line crossings held in RAM (privacy.retention_s, opt-out "
                              "purges applied), by line and direction.", labels=["line", "direction"])
    for (line, direction), n in c.totals().items():
        cross.add_metric([line, direction], float(n))
    yield cross


def _tasks() -> float:
    try:
        return float(len(asyncio.all_tasks()))
    except RuntimeError:  # scraped from outside the event loop
        return float("nan")


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS])
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def openapi(request: web.Request) -> web.Response:
    return json_response(request.app[OPENAPI])


# -- the route table --------------------------------------------------------------------------
@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    auth: bool = True
    params: tuple[Param, ...] = ()
    content_type: str = "application/json"
    response: dict[str, Any] = field(default_factory=lambda: {"type": "object"})
    body: dict[str, Any] | None = None  # the requestBody object of the OpenAPI operation
    errors: tuple[tuple[int, str], ...] = ()  # statuses the handler itself answers, besides the common ones
    stream: bool = False  # the body is streamed by the handler with its own cap (not MAX_BODY)
    untimed: bool = False  # may run longer than api.request_timeout_s (an update install)


_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["status", "message"],
            "properties": {"status": {"type": "integer"}, "message": {"type": "string"}},
        }
    },
}
_HEALTH_SCHEMA = {
    "type": "object",
    "required": ["status", "reason", "uptime_s"],
    "properties": {
        "status": {"type": "string", "enum": ["ok", "paused", "degraded"]},
        "reason": {"type": ["string", "null"]},
        "uptime_s": {"type": "number"},
        "paused": {"type": ["object", "null"], "description": "Set while an opt-out pause runs.",
                   "properties": {"remaining_s": {"type": "number"}}},
        "ota": {"type": "object", "description": "Running version and update state (idle, receiving, verifying, "
                "installing, installed, trial, committed, failed)."},
    },
}
_OTA_SCHEMA = {
    "type": "object",
    "required": ["state", "installed", "restart"],
    "properties": {"state": {"type": "string"}, "installed": {"type": ["object", "null"]}, "restart": {"type": "boolean"}},
}
_BUTTON_SCHEMA = {
    "type": "object",
    "required": ["pressed_ms", "paused", "remaining_s"],
    "properties": {"pressed_ms": {"type": "integer"}, "paused": {"type": "boolean"},
                   "remaining_s": {"type": ["number", "null"]}},
}
_OTA_ERRORS = ((403, "No trusted keys: this board accepts no updates"), (409, "An update is in progress, or no slots"),
               (413, "Bundle larger than ota.max_bundle_bytes"), (422, "Bundle refused by verification"),
               (502, "The download failed"))
_OPTOUT_SCHEMA = {
    "type": "object",
    "required": ["paused", "remaining_s", "source", "latency_ms", "purged"],
    "properties": {
        "paused": {"type": "boolean"},
        "remaining_s": {"type": "number"},
        "source": {"type": "string"},
        "latency_ms": {"type": "number", "description": "Request to paused-and-purged."},
        "purged": {"type": "object", "properties": {"vectors": {"type": "integer"}, "tracks": {"type": "integer"},
                                                     "counts": {"type": "integer", "description": "Line crossings "
                                                                "and queue waits of the look-back."},
                                                     "frames": {"type": "integer"}}},
    },
}
ROUTES: tuple[Route, ...] = (
    Route("GET", "/health", health, "Liveness and readiness: ok, or degraded with a reason.", auth=False,
          response=_HEALTH_SCHEMA),
    Route("GET", "/v1/status", status, "Board, model, frame rate, inference latency, drops, uptime, buffer fill."),
    Route("GET", "/v1/vectors", vectors, "Sentiment vectors (schema 1), one per track per window, after a cursor.",
          params=VECTOR_PARAMS, response=VECTORS_SCHEMA),
    Route("GET", "/v1/aggregates", aggregates_handler, "Per-zone counts and signal means over the last window seconds, "
          "with people in view, occupancy per zone, line crossings and queues.",
          params=AGGREGATE_PARAMS, response=AGGREGATES_SCHEMA),
    Route("GET", "/v1/counts", counts_handler, "Counting lines (in/out), queue waits and occupancy in fixed 1-min "
          "buckets ending after `since`: numbers only, RAM, the vectors' retention and opt-out purges.",
          params=COUNT_PARAMS, response=COUNTS_SCHEMA),
    Route("GET", "/v1/privacy", privacy, "The public privacy notice (what the store's sign says).", auth=False,
          response=PRIVACY_SCHEMA),
    Route("GET", "/v1/audit", audit, "The opt-out audit log: privacy events with counts, oldest first.",
          params=AUDIT_PARAMS, response=AUDIT_SCHEMA),
    Route("POST", "/v1/ota", ota_upload, "Upload a signed update bundle (body, Content-Length required); "
          "verified before anything is unpacked, installed into the inactive slot, then the board restarts into it.",
          response=_OTA_SCHEMA, stream=True, untimed=True,
          body={"required": True, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
          errors=((400, "Upload shorter than announced"), (408, "No body data for api.request_timeout_s"),
                  (411, "Content-Length missing"), *_OTA_ERRORS)),
    Route("POST", "/v1/ota/pull", ota_pull, "Download a signed update bundle from {\"url\": ...} (resuming with Range), "
          "verify, install into the inactive slot, restart into it. Only loopback and ota.pull_hosts are fetched.",
          response=_OTA_SCHEMA, untimed=True,
          body={"required": True, "content": {"application/json": {"schema": {
              "type": "object", "required": ["url"], "additionalProperties": False,
              "properties": {"url": {"type": "string", "maxLength": 2048}}}}}},
          errors=((400, "Body is not {\"url\": ...}, or the URL is not allowed"), *_OTA_ERRORS)),
    Route("POST", "/v1/optout", optout, "Opt out: pause and purge, as the button does. Bearer token, or a paired "
          "companion's signed body (Authorization: Cuecam-Companion NAME:HMAC; docs/companion.md).",
          response=_OPTOUT_SCHEMA),
    Route("POST", "/v1/sim/button", sim_button, "Sim board only: press the mock opt-out button.",
          params=SIM_BUTTON_PARAMS, response=_BUTTON_SCHEMA,
          errors=((404, "No mock button on this board"), (409, "The button is still held by an earlier press"))),
    Route("GET", "/metrics", metrics, "Prometheus metrics.", content_type="text/plain",
          response={"type": "string"}),
    Route("GET", "/openapi.json", openapi, "This document."),
)
_NUM = {"type": ["number", "null"]}
_POINT = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
_UI_ZONE = {"type": "object", "required": ["name", "kind", "now"], "properties": {
    "name": {"type": "string"}, "kind": {"type": "string"}, "now": {"type": "integer", "description": "People in it now."},
    "tracks": {"type": "integer"}, "engagement": _NUM, "dwell_satisfaction": _NUM, "approach_avoid": _NUM}}
_ZONES_SCHEMA = {
    "type": "object", "required": ["zones", "size", "file", "can_undo"],
    "properties": {"zones": {"type": "array", "maxItems": 1024, "items": {"type": "object"}},
                   "size": {"type": ["array", "null"], "items": {"type": "integer"}},
                   "file": {"type": "string"}, "can_undo": {"type": "boolean"}, "saved": {"type": "boolean"}},
}
_ZONE_ERRORS = ((409, "Not saved: the file could not be written or read back"),
                (422, "The zones are not valid (error.problems lists each); nothing was saved"))
# The commissioning view (http/ui.py): these routes exist only while commissioning.enabled.
UI_ROUTES: tuple[Route, ...] = (
    Route("GET", "/ui", ui.page, "The commissioning page (static; its data comes from /v1/ui/* with the token).",
          auth=False, content_type="text/html", response={"type": "string"}),
    Route("GET", "/ui/commissioning.js", ui.script, "The commissioning page's script.", auth=False,
          content_type="text/javascript", response={"type": "string"}),
    Route("GET", "/ui/commissioning.css", ui.style, "The commissioning page's style.", auth=False,
          content_type="text/css", response={"type": "string"}),
    Route("GET", "/ui/sse.js", ui.sse_script, "The commissioning page's stream reader.", auth=False,
          content_type="text/javascript", response={"type": "string"}),
    Route("GET", "/v1/ui/live", ui.live, "The live view as server-sent events, at most commissioning.rate_hz a "
          "second: people as normalized boxes, keypoints and paths; zones with people now and signals.",
          content_type="text/event-stream",
          response={"type": "string"}, untimed=True,
          errors=((503, "commissioning.max_streams pages are open already"),)),
    Route("GET", "/v1/ui/heatmap", ui.heatmap, "The traffic map: per grid cell, the people who stepped into it over "
          "the last commissioning.heatmap_minutes, at most privacy.retention_s (span_s; sparse [column, row, count]).",
          response={
              "type": "object", "required": ["span_s", "grid", "max", "cells"],
              "properties": {"span_s": {"type": "integer"}, "grid": {"type": "array", "items": {"type": "integer"}},
                             "max": {"type": "integer"},
                             "cells": {"type": "array", "maxItems": 96 * 96,
                                       "items": {"type": "array", "items": {"type": "integer"}}}}}),
    Route("GET", "/v1/ui/zones", ui.zones_get, "The zones in effect, the frame size, and whether a save can be undone.",
          response=_ZONES_SCHEMA),
    Route("POST", "/v1/ui/zones", ui.zones_post, "Replace the zones: validated like the config file, saved into it "
          "atomically (the old file kept for one undo), in effect from the next frame.", response=_ZONES_SCHEMA,
          body={"required": True, "content": {"application/json": {"schema": {
              "type": "object", "required": ["zones"], "additionalProperties": False,
              "properties": {"zones": {"type": "array", "maxItems": 64, "items": {"type": "object"}}}}}}},
          errors=_ZONE_ERRORS),
    Route("POST", "/v1/ui/zones/undo", ui.zones_undo, "Put back the config file from before the last zone save.",
          response=_ZONES_SCHEMA, errors=((409, "Nothing to undo, or the previous file cannot be used"),)),
)
_ALL_ROUTES = ROUTES + UI_ROUTES
PUBLIC_PATHS = frozenset(r.path for r in _ALL_ROUTES if not r.auth)
STREAMING_PATHS = frozenset(r.path for r in _ALL_ROUTES if r.stream)
UNTIMED_PATHS = frozenset(r.path for r in _ALL_ROUTES if r.untimed)


def routes_for(commissioning: bool) -> tuple[Route, ...]:
    """The routes a board serves: the commissioning view's only while it is on."""
    return _ALL_ROUTES if commissioning else ROUTES


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": _ERROR_SCHEMA}}}
    if headers:
        out["headers"] = headers
    return out


def openapi_document(zones: list[str] | None = None, max_limit: int | None = None,
                     pull_hosts: list[str] | None = None, routes: tuple[Route, ...] = ROUTES) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ROUTES; ``zones`` (the board's zone names) become the enum of the
    ``zone`` parameter, ``max_limit`` (api.max_limit) the maximum of ``limit``. Every status the
    server can answer is listed, the common ones included. The pull URL's ``pattern`` is the one
    the OTA agent checks (loopback and ``pull_hosts``, ota.pull_hosts)."""
    from ..ota_agent import pull_url_pattern

    paths: dict[str, Any] = {}
    for r in routes:
        responses: dict[str, Any] = {
            "200": {"description": "OK", "content": {r.content_type: {"schema": r.response}}},
        }
        if r.stream or r.path.startswith("/v1/ota"):
            responses["202"] = {"description": "Installed; the board restarts into the update",
                                "content": {"application/json": {"schema": r.response}}}
            del responses["200"]
        if r.path == "/health":
            responses["503"] = {"description": "Degraded", "content": {"application/json": {"schema": _HEALTH_SCHEMA}}}
        if r.auth:
            responses["401"] = _error("Missing or wrong bearer token",
                                      {"WWW-Authenticate": {"schema": {"type": "string"}, "required": True}})
        if r.params or r.body is not None or r.method == "POST":
            responses["400"] = _error("Bad query parameter or body")
        responses["408"] = _error("Request not completed within api.request_timeout_s")
        responses["413"] = _error("Request body larger than 64 KiB (POST /v1/ota: ota.max_bundle_bytes)")
        responses["429"] = _error("Rate limit (api.rate_limit) exceeded for this client",
                                  {"Retry-After": {"schema": {"type": "integer", "minimum": 1}, "required": True}})
        for status, description in r.errors:
            responses[str(status)] = _error(description)
        zone_names = list(zones or [])
        op: dict[str, Any] = {
            "summary": r.summary,
            "operationId": r.handler.__name__,
            "parameters": [
                {"name": p.name, "in": "query", "required": False, "description": p.description,
                 "schema": p.schema(zone_names, max_limit)}
                for p in r.params if not (isinstance(p, ZoneParam) and not zone_names)
            ],
            "responses": responses,
        }
        if r.body is not None:
            op["requestBody"] = r.body
            if r.handler is ota_pull:
                op["requestBody"] = body = copy.deepcopy(r.body)
                url = body["content"]["application/json"]["schema"]["properties"]["url"]
                url["pattern"] = pull_url_pattern(list(pull_hosts or []))
        op["security"] = [{"bearer": []}] if r.auth else []
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "cuecam device API", "version": __version__},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": paths,
    }


OPENAPI = web.AppKey("openapi", dict)
METRICS = web.AppKey("metrics", CollectorRegistry)


# -- middlewares ------------------------------------------------------------------------------
@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        message = e.reason
        if e.status == 404:
            message = f"no route {request.method} {request.path[:200]}; see /openapi.json"
        elif e.status == 413 and e.reason == "Request Entity Too Large":
            message = e.text or message  # aiohttp's client_max_size: "Maximum request body size ... exceeded"
        resp = json_error(e.status, message)
        for h in ("Allow", "WWW-Authenticate", "Retry-After"):
            if h in e.headers:
                resp.headers[h] = e.headers[h]
        return resp
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return json_error(500, "internal error; the device log has details")


@web.middleware
async def bearer_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    route = request.match_info.route
    resource = route.resource
    if resource is None or resource.canonical in PUBLIC_PATHS or request.match_info.http_exception is not None:
        return await handler(request)
    header = request.headers.get("Authorization", "")
    if resource.canonical == "/v1/optout" and request.method == "POST" and companion.is_companion_auth(header):
        return await handler(request)  # a companion: its HMAC is checked by the handler; no other route takes it
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented or not request.app[TOKEN].matches(presented.strip()):
        raise web.HTTPUnauthorized(
            reason="missing or wrong bearer token (Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": 'Bearer realm="cuecam"'},
        )
    return await handler(request)


def build_app(svc: Device, token: Token, *, manage_service: bool = True) -> web.Application:
    """The aiohttp application. With ``manage_service`` the pipeline starts and stops with it.
    Middlewares, outermost first: the request deadline, errors as JSON, rate limit and body cap,
    the bearer token. Serve it with ``guard.DeviceRunner`` for the connection-level limits."""
    api = svc.config.api
    app = web.Application(middlewares=[deadline, errors_as_json, limits, bearer_auth], client_max_size=MAX_BODY)
    app[SERVICE] = svc
    app[TOKEN] = token
    app[API_CONFIG] = api
    app[RATE_LIMITER] = RateLimiter(api.rate_limit.per_s, api.rate_limit.burst)
    app[STREAMING] = STREAMING_PATHS
    app[UNTIMED] = UNTIMED_PATHS
    app[PRESSING] = {}
    routes = routes_for(svc.config.commissioning.enabled)
    app[OPENAPI] = openapi_document(svc.zone_names, api.max_limit, list(svc.config.ota.pull_hosts), routes)
    if svc.config.commissioning.enabled:
        ui.setup(app, svc)
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_ServiceCollector(svc))  # type: ignore[arg-type]
    companion.setup(app, svc.companions, svc.audit, registry)
    app[METRICS] = registry
    for r in routes:
        app.router.add_route(r.method, r.path, r.handler)
    if manage_service:

        async def service_ctx(_app: web.Application) -> Any:
            await svc.start()
            yield
            await svc.stop()

        app.cleanup_ctx.append(service_ctx)
    return app
