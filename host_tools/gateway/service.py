"""The gateway process: pollers for every board, the store, the decision engine and its outputs,
and the gateway API (aiohttp) with Prometheus metrics.

    cuecam gateway run --config gateway.yaml

Routes (bearer token when ``gateway.token`` is set; required off loopback):
    GET /health                      ok / degraded (some device stale) and device counts; no token
    GET /v1/state?window=S           store state: per-zone sessions and signal means over the last S s,
                                     traffic, devices, rules fired
    GET /v1/trend?zone=Z             per-bucket history still held (retention)
    GET /v1/devices                  each board: state, last poll, boot, cursor, vectors, lost, poll latency, companions
    GET /v1/decisions?since=&limit=  recent decisions with their explanations and what each output did
    GET /v1/sessions?limit=          session summaries (a board's random token; never an identity)
    GET /v1/kpis?hours=&zone=        per hour: footfall, transactions, conversion, basket, engagement, dwell satisfaction
    POST /v1/transactions            till data without identifiers (transactions.py); 422 naming a refused field
    GET /metrics                     Prometheus text
    GET /                            the store dashboard (static page; its data from /v1/dashboard*, dashboard.py)
    GET /v1/dashboard                store now, trends and decisions for the dashboard (no session token)
    GET /v1/dashboard/live?since=    the same "now" and new decisions as server-sent events
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from . import dashboard
from .client import DevicePoller
from .config import LoadedGatewayConfig
from .outputs import LogSink, MqttSink, Output, WebhookSink
from .rules import Decision, DecisionEngine
from .sales import SalesStore
from .store import Rec, Store
from .transactions import MAX_BATCH, TransactionError, parse_batch

log = logging.getLogger("cuecam.gateway")
TICK_S = 1.0
STOP_DELIVERY_S = 30.0  # a stop waits this long at most for decisions still being delivered


class Gateway:
    def __init__(self, loaded: LoadedGatewayConfig, *, env: dict[str, str] | None = None,
                 on_decision: Callable[[Decision], Awaitable[None] | None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        cfg = loaded.config
        self.loaded = loaded
        self.cfg = cfg
        self.clock = clock
        self.started = time.monotonic()
        self.store = Store.from_config(loaded, clock)
        self.sales = SalesStore(self.store)  # footfall, queues, transactions, signals by hour
        self.store.forget_hooks.append(lambda recs: self.sales.add_signals(recs, -1))
        self.engine = DecisionEngine(cfg.rules, self.store, kept=cfg.gateway.decisions_kept, clock=clock,
                                     sales=self.sales)
        self.tokens = {d.name: loaded.secret(d.token, f"devices.{d.name}.token", env) for d in cfg.devices}
        self.api_token = loaded.secret(cfg.gateway.token, "gateway.token", env) if cfg.gateway.token else None
        self.till_token = loaded.secret(cfg.gateway.till_token, "gateway.till_token", env) if cfg.gateway.till_token else None
        self.outputs: dict[str, Output] = {}
        if cfg.outputs.log.enabled:
            self.outputs["log"] = LogSink(cfg.outputs.log)
        if cfg.outputs.mqtt is not None:
            m = cfg.outputs.mqtt
            self.outputs["mqtt"] = MqttSink(m, loaded.secret(m.password, "outputs.mqtt.password", env) if m.password else None)
        for w in cfg.outputs.webhooks:
            self.outputs[w.name] = WebhookSink(w, loaded.secret(w.secret, f"outputs.webhooks.{w.name}.secret", env))
        self.rules = {r.name: r for r in cfg.rules}
        self.on_decision = on_decision
        self.pollers: list[DevicePoller] = []
        self.stop_event = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._session: aiohttp.ClientSession | None = None
        self.ingest_lag: deque[float] = deque(maxlen=2000)  # window end -> taken by the gateway, seconds (recent)
        self.actions_total: dict[tuple[str, str], int] = {}
        self._acting: set[asyncio.Future[None]] = set()  # decisions being delivered

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        await self.store.open()
        await self.sales.open()
        self.engine.restore(await self.store.load_decisions(self.cfg.gateway.decisions_kept))
        for o in self.outputs.values():
            await o.start()
        conn = aiohttp.TCPConnector(limit=0, limit_per_host=2, keepalive_timeout=30)
        self._session = aiohttp.ClientSession(connector=conn)
        for d in self.cfg.devices:
            p = DevicePoller(d.name, d.url, self.tokens[d.name], self.cfg.polling, self.store, self._on_vectors,
                             self._session, clock_offset_s=d.clock_offset_s, wall=self.clock, sales=self.sales)
            self.pollers.append(p)
            self._tasks.append(asyncio.create_task(p.run(self.stop_event), name=f"poll-{d.name}"))
        self._tasks.append(asyncio.create_task(self._ticker(), name="gateway-tick"))
        mqtt = self.outputs.get("mqtt")
        if isinstance(mqtt, MqttSink) and mqtt.cfg.publish_state_s > 0:
            self._tasks.append(asyncio.create_task(self._publish_state(mqtt), name="gateway-mqtt-state"))

    async def stop(self) -> None:
        self.stop_event.set()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        if self._acting:
            await asyncio.wait(set(self._acting), timeout=STOP_DELIVERY_S)
        for o in self.outputs.values():
            await o.stop()
        if self._session is not None:
            await self._session.close()
        await self.store.close()

    # -- the flow ------------------------------------------------------------------------------
    async def _on_vectors(self, recs: list[Rec]) -> None:
        now = self.clock()
        self.ingest_lag.extend(now - r.t1 for r in recs)
        # the rules and the hourly signal sums see the vectors before anything here can be cancelled
        # (a stop between the store taking them and the rules would leave them taken but never judged)
        decisions = self.engine.on_vectors(recs)
        rows = self.sales.count_signals(recs)
        await asyncio.shield(self.sales.save_signals(rows))
        for d in decisions:
            await self._act_through(d)

    async def _ticker(self) -> None:
        last_purge = 0.0
        while not self.stop_event.is_set():
            for d in self.engine.tick():
                await self._act_through(d)
            if time.monotonic() - last_purge >= self.cfg.store.purge_interval_s:
                last_purge = time.monotonic()
                await self.store.purge()
                await self.sales.purge()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), TICK_S)

    async def _act_through(self, d: Decision) -> None:
        """A decision's delivery runs to its end even if the gateway is stopped meanwhile (stop()
        waits for it, bounded by the outputs' own timeouts): no decision is left half-delivered."""
        t = asyncio.ensure_future(self._act(d))
        self._acting.add(t)

        def done(f: asyncio.Future[None]) -> None:
            self._acting.discard(f)
            if not f.cancelled() and f.exception() is not None:
                log.error("decision %d (%s): %r", d.id, d.rule, f.exception())
        t.add_done_callback(done)
        await asyncio.shield(t)

    async def _act(self, d: Decision) -> None:
        rule = self.rules[d.rule]
        # kept before anything is delivered (a crash meanwhile still leaves it, and its id, on
        # record), and again with what each output did
        d.actions = [{"output": a.output, "status": "pending"} for a in rule.then]
        await self.store.save_decision(d.to_json())
        results = await asyncio.gather(*(self.outputs[a.output].deliver(d, a, self.cfg.gateway.name) for a in rule.then))
        d.actions = list(results)
        for r in results:
            key = (r["output"], r["status"])
            self.actions_total[key] = self.actions_total.get(key, 0) + 1
        await self.store.save_decision(d.to_json())
        if self.on_decision is not None:
            res = self.on_decision(d)
            if asyncio.iscoroutine(res):
                await res

    async def _publish_state(self, mqtt: MqttSink) -> None:
        while not self.stop_event.is_set():
            with contextlib.suppress(Exception):
                await mqtt.publish(mqtt.topic(f"{self.cfg.gateway.name}/state"), self.state(300), retain=True)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), mqtt.cfg.publish_state_s)

    # -- views ---------------------------------------------------------------------------------
    def devices(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [p.state.to_json(now, self.store.cursor(p.name)) for p in self.pollers]

    def traffic(self, window_s: float) -> dict[str, Any]:
        """The store's traffic over the window: footfall through the entrance lines when a board has
        one (sessions are track fragments: a person seen twice is two), else sessions, said so."""
        now = self.clock()
        sessions = self.store.visitors(now - window_s)
        if not self.sales.has_lines:
            return {"source": "sessions", "people": sessions, "per_hour": round(sessions * 3600 / window_s, 1),
                    "sessions": sessions}
        people, span = self.sales.footfall(now - window_s)
        span = max(span, float(window_s))
        sold = len(self.sales.transactions(now - span))
        return {"source": "footfall", "people": people, "per_hour": round(people * 3600 / span, 1),
                "sessions": sessions, "transactions": sold,
                "conversion": round(sold / people, 4) if people else None}

    def state(self, window_s: float) -> dict[str, Any]:
        devs = self.devices()
        traffic = self.traffic(window_s)
        return {"store": self.cfg.gateway.name, "t": round(self.clock(), 3), "window_s": window_s,
                "traffic": traffic, "visitors": traffic["people"], "sessions": traffic["sessions"],
                "zones": self.store.zones_state(window_s),
                "sessions_held": len(self.store.sessions), "vectors_held": len(self.store.recs),
                "devices": {s: sum(1 for d in devs if d["state"] == s) for s in ("ok", "stale", "starting", "unauthorized")},
                "rules_fired": dict(self.engine.fired_total), "decisions": len(self.engine.decisions)}

    def health(self) -> tuple[bool, dict[str, Any]]:
        devs = self.devices()
        bad = [d["name"] for d in devs if d["state"] in ("stale", "unauthorized")]
        body = {"status": "degraded" if bad else "ok", "reason": f"devices not answering: {', '.join(bad)}" if bad else None,
                "uptime_s": round(time.monotonic() - self.started, 1), "devices": len(devs)}
        return not bad, body


# -- HTTP ----------------------------------------------------------------------------------------
GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway", Gateway)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _int_arg(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        v = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(reason=f"{name} must be an integer") from None
    if not lo <= v <= hi:
        raise web.HTTPBadRequest(reason=f"{name} must be in {lo}..{hi}")
    return v


async def _health(request: web.Request) -> web.Response:
    ok, body = request.app[GATEWAY].health()
    return _json(body, 200 if ok else 503)


async def _state(request: web.Request) -> web.Response:
    return _json(request.app[GATEWAY].state(_int_arg(request, "window", 300, 1, 86400)))


async def _trend(request: web.Request) -> web.Response:
    zone = request.query.get("zone")
    return _json({"bucket_s": request.app[GATEWAY].store.bucket_s, "buckets": request.app[GATEWAY].store.trend(zone)})


async def _devices(request: web.Request) -> web.Response:
    return _json({"devices": request.app[GATEWAY].devices()})


async def _decisions(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    since = _int_arg(request, "since", 0, 0, 2**62)
    limit = _int_arg(request, "limit", 100, 1, 1000)
    ds = gw.engine.recent(since, limit)
    return _json({"epoch": gw.store.epoch, "decisions": [d.to_json() for d in ds],
                  "cursor": ds[-1].id if ds else since, "suppressed_by_cooldown": gw.engine.suppressed})


async def _kpis(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    hours = _int_arg(request, "hours", 24, 1, 24 * 31)
    zone = request.query.get("zone")
    if zone is not None and not (1 <= len(zone) <= 64):
        raise web.HTTPBadRequest(reason="zone must be 1-64 characters")
    return _json({"hours": gw.sales.hourly(hours, zone), "traffic": "footfall" if gw.sales.has_lines else None,
                  "queues": {z: gw.sales.queue(z, gw.clock() - 3600) for z in sorted({k[2] for k in gw.sales.queue_minutes})}})


async def _transactions(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    tokens = [t for t in (gw.till_token, gw.api_token) if t is not None]
    if not tokens:
        return _json({"error": {"status": 403, "message": "no till token: set gateway.till_token (or gateway.token) "
                                                          "to take transactions"}}, 403)
    got = request.headers.get("Authorization", "").encode()
    if not any(hmac.compare_digest(got, f"Bearer {t}".encode()) for t in tokens):
        return _json({"error": {"status": 401, "message": "missing or wrong bearer token (gateway.till_token)"}}, 401)
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as e:
        return _json({"error": {"status": 400, "message": f"not JSON: {e}"}}, 400)
    try:
        batch = parse_batch(body)
    except TransactionError as e:
        return _json({"error": {"status": 422, "field": e.field, "message": f"{e.field}: {e.message}"}}, 422)
    return _json(await gw.sales.take_batch(batch))


async def _sessions(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    limit = _int_arg(request, "limit", 100, 1, 10000)
    ss = sorted(gw.store.sessions.values(), key=lambda s: s.last, reverse=True)[:limit]
    return _json({"sessions": [s.summary() for s in ss], "held": len(gw.store.sessions)})


class _Collector:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    def collect(self) -> Any:
        gw = self.gw
        up = GaugeMetricFamily("cuecam_gateway_device_up", "1 if the board answered its last poll", labels=["device"])
        vec = CounterMetricFamily("cuecam_gateway_vectors", "Vectors taken from the board", labels=["device"])
        lost = CounterMetricFamily("cuecam_gateway_vectors_lost", "Vectors the board overwrote before they were polled",
                                   labels=["device"])
        errs = CounterMetricFamily("cuecam_gateway_poll_errors", "Failed polls", labels=["device"])
        forgot = CounterMetricFamily("cuecam_gateway_vectors_forgotten", "Vectors forgotten because the board's opt-out "
                                     "purged them", labels=["device"])
        restarts = CounterMetricFamily("cuecam_gateway_device_restarts", "Board restarts seen (boot_id changes)",
                                       labels=["device"])
        hist = HistogramMetricFamily("cuecam_gateway_poll_seconds", "Poll round trip", labels=["device"])
        for p in gw.pollers:
            c = gw.store.cursor(p.name)
            up.add_metric([p.name], 1.0 if p.state.state == "ok" else 0.0)
            vec.add_metric([p.name], c.taken)
            lost.add_metric([p.name], c.lost)
            errs.add_metric([p.name], p.state.errors)
            restarts.add_metric([p.name], max(0, c.boots - 1))
            forgot.add_metric([p.name], c.forgotten)
            hist.add_metric([p.name], p.latency.cumulative(), p.latency.sum)
        yield from (up, vec, lost, errs, restarts, forgot, hist)
        presses = CounterMetricFamily("cuecam_gateway_companion_presses", "Presses each board accepted from each "
                                      "opt-out companion (read from its /v1/status)", labels=["device", "companion"])
        last = GaugeMetricFamily("cuecam_gateway_companion_last_press_timestamp_seconds", "When the board accepted "
                                 "the companion's last press (epoch s; 0: never)", labels=["device", "companion"])
        for p in gw.pollers:
            for comp in p.state.companions or []:
                presses.add_metric([p.name, comp["name"]], comp["presses"])
                last.add_metric([p.name, comp["name"]], comp["last_press_t"] or 0.0)
        yield from (presses, last)
        sess = GaugeMetricFamily("cuecam_gateway_sessions", "Sessions held (within retention)")
        sess.add_metric([], len(gw.store.sessions))
        yield sess
        hour = gw.traffic(3600)
        for name, help_, key in (("people_in", "Store traffic over the last hour: footfall through the entrance lines "
                                  "(sessions while no board has one)", "people"),
                                 ("transactions", "Till transactions over the last hour", "transactions"),
                                 ("conversion", "Transactions / footfall over the last hour", "conversion")):
            g = GaugeMetricFamily(f"cuecam_gateway_{name}_last_hour", help_, labels=["source"])
            if hour.get(key) is not None:
                g.add_metric([hour["source"]], float(hour[key]))
            yield g
        fired = CounterMetricFamily("cuecam_gateway_decisions", "Decisions made", labels=["rule"])
        for name, n in gw.engine.fired_total.items():
            fired.add_metric([name], n)
        yield fired
        acts = CounterMetricFamily("cuecam_gateway_actions", "Actions by output and result", labels=["output", "status"])
        for (o, s), n in sorted(gw.actions_total.items()):
            acts.add_metric([o, s], n)
        yield acts
        zones = gw.store.zones_state(300)
        for key, help_ in (("sessions", "Sessions per zone, last 5 min"), ("engagement_mean", "Mean engagement, last 5 min"),
                           ("dwell_satisfaction_mean", "Mean dwell satisfaction, last 5 min"),
                           ("approaching_share", "Share of approach windows, last 5 min"),
                           ("avoiding_share", "Share of avoid windows, last 5 min")):
            g = GaugeMetricFamily(f"cuecam_gateway_zone_{key}", help_, labels=["zone"])
            for z, cell in zones.items():
                if cell[key] is not None:
                    g.add_metric([z], float(cell[key]))
            yield g
        lag = sorted(gw.ingest_lag)
        g = GaugeMetricFamily("cuecam_gateway_ingest_lag_seconds", "Window end to taken by the gateway, recent p99")
        if lag:
            g.add_metric([], lag[min(len(lag) - 1, int(len(lag) * 0.99))])
        yield g


async def _metrics(request: web.Request) -> web.Response:
    reg = CollectorRegistry()
    reg.register(_Collector(request.app[GATEWAY]))  # type: ignore[arg-type]
    return web.Response(body=generate_latest(reg), content_type="text/plain", charset="utf-8")


@web.middleware
async def _errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return _json({"error": {"status": e.status, "message": e.reason}}, e.status)


def build_gateway_app(gw: Gateway) -> web.Application:
    @web.middleware
    async def auth(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        # /health is public; /v1/transactions checks its own tokens (the till's, or the gateway's); the
        # dashboard's page and files are static (its data routes need the token like every other)
        if gw.api_token is not None and request.path not in ("/health", "/v1/transactions") \
                and request.path not in dashboard.PUBLIC:
            got = request.headers.get("Authorization", "")
            if not hmac.compare_digest(got.encode(), f"Bearer {gw.api_token}".encode()):
                return _json({"error": {"status": 401, "message": "missing or wrong bearer token"}}, 401)
        return await handler(request)

    # a transactions batch (MAX_BATCH of them, ~200 bytes each) is the largest body the gateway takes
    app = web.Application(middlewares=[_errors, auth], client_max_size=MAX_BATCH * 256)
    app[GATEWAY] = gw
    app.router.add_get("/health", _health)
    app.router.add_get("/v1/state", _state)
    app.router.add_get("/v1/trend", _trend)
    app.router.add_get("/v1/devices", _devices)
    app.router.add_get("/v1/decisions", _decisions)
    app.router.add_get("/v1/sessions", _sessions)
    app.router.add_get("/v1/kpis", _kpis)
    app.router.add_post("/v1/transactions", _transactions)
    app.router.add_get("/metrics", _metrics)
    dashboard.setup(app)
    return app


async def serve(gw: Gateway, *, ready: Callable[[str], None] | None = None) -> None:
    """Run until SIGINT/SIGTERM or gw.stop_event."""
    await gw.start()
    runner = web.AppRunner(build_gateway_app(gw), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, gw.cfg.gateway.host, gw.cfg.gateway.port)
    try:
        await site.start()
        port = runner.addresses[0][1] if runner.addresses else gw.cfg.gateway.port
        url = f"http://{gw.cfg.gateway.host}:{port}"
        log.info("gateway %s: API on %s, polling %d devices", gw.cfg.gateway.name, url, len(gw.cfg.devices))
        if ready is not None:
            ready(url)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, gw.stop_event.set)
        await gw.stop_event.wait()
    finally:
        await runner.cleanup()
        await gw.stop()
