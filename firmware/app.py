"""Lifecycle: build everything from a config, serve, and shut down cleanly (never raising).

Everything that can fail because of the board or its files (model, camera, token) is checked in
``build_service`` before the API opens, so a bad setup stops with one clear message and an exit
code instead of a half-working device.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from . import __version__
from .camera import Camera, create_camera
from .commissioning import LiveView, ZoneFile
from .config import Config, LoadedConfig, ReplayCameraConfig
from .counts import CountStore
from .errors import CameraError, CuecamError
from .http.app import build_app
from .http.auth import Token, check_bind, load_token
from .http.guard import DeviceRunner
from .http.tls import server_context
from .inference import Devices
from .inference.base import REAL_DEVICES
from .model_manager import LoadedModels, ModelManager, load_models
from .ota_agent import RESTART_EXIT_CODE, OtaAgent
from .pipeline import Pipeline, PipelineStats, RestartPolicy
from .privacy.audit import AuditLog
from .privacy.companion import CompanionVerifier
from .privacy.controller import PrivacyController
from .privacy.schedule import ClosedSchedule
from .privacy.signage import Signage
from .ringbuffer import RingBuffer
from .sdnotify import Notifier
from .signals.analyzer import FrameAnalyzer
from .signals.schema import VECTOR_DTYPE
from .status_view import Health, StatusView
from .supervisor import Supervisor
from .thermal import ThermalMonitor, create_sensor

log = logging.getLogger("cuecam")


class Service:
    """The running device, put together from parts with one job each: the pipeline (frames to
    vectors), the model manager (load, fallback, retry), the privacy controller (opt-out pause,
    purge, retention), the supervisor (READY, watchdog, thermal) and the status view (/health,
    /v1/status). It starts and stops them; the HTTP API sees it through ``http.device.Device``."""

    def __init__(
        self,
        loaded: LoadedConfig,
        *,
        camera: Camera,
        models: LoadedModels,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        notifier: Notifier | None = None,
        thermal: ThermalMonitor | None = None,
    ) -> None:
        cfg = loaded.config
        self.loaded = loaded
        self.config = cfg
        self.now = clock
        self.wall = wall_clock
        self.started = clock()
        self.speed_unit = "m/s" if cfg.ground_plane is not None else "person_heights/s"
        self.zone_names = [z.name for z in cfg.zones]
        self.vectors = RingBuffer(VECTOR_DTYPE, cfg.buffer.capacity)
        # Random per process start: vector seq numbers restart with the RAM buffer, and readers
        # (the gateway) tell a restart from a cursor by this. It says nothing about anyone.
        self.boot_id = secrets.token_hex(8)
        self.audit = AuditLog(loaded.resolve(cfg.privacy.audit_log), cfg.privacy.audit_max_bytes)
        self.analyzer = FrameAnalyzer(cfg, models.detector, models.pose)
        self.pipeline = Pipeline(
            camera=camera,
            analyzer=self.analyzer,
            vectors=self.vectors,
            queue_size=cfg.inference.queue_size,
            restart=RestartPolicy(cfg.health.camera_timeout_s, cfg.health.backoff_s, cfg.health.backoff_max_s),
            max_consecutive_errors=cfg.inference.max_consecutive_errors,
            clock=clock,
            wall_clock=wall_clock,
        )
        stats = self.pipeline.stats
        # line crossings, queue waits and occupancy: numbers only, in RAM, retention and purges as the vectors
        self.counts = CountStore(cfg.zones, cfg.privacy.retention_s)
        self.pipeline.observers.append(
            lambda _fid, t_mono, res: self.counts.observe(t_mono, wall_clock(), clock(), res.counts))

        def switched() -> None:
            stats.model_switches += 1

        self.models = ModelManager(loaded, models, analyzer=self.analyzer, worker=self.pipeline.run_on_worker,
                                   clock=clock, on_switch=switched)
        self.pipeline.on_model_failure = self.models.on_failure
        if models.detector is None:
            stats.state, stats.error, stats.halted_by = "error", f"model: {models.problem}", "model"
        self.schedule = ClosedSchedule(cfg.privacy.closed_hours, cfg.privacy.timezone)
        self.pipeline.closed = self.schedule.closed
        self.privacy = PrivacyController(cfg.privacy, pipeline=self.pipeline, vectors=self.vectors, audit=self.audit,
                                         clock=clock, wall_clock=wall_clock, counts=self.counts)
        self.companions = CompanionVerifier.from_config(loaded, clock=wall_clock, audit=self.audit)  # AuthError: a key
        # lifecycle: serve() stops when stop_event is set and exits with exit_code
        self.stop_event = asyncio.Event()
        self.exit_code = 0
        self.api_url: str | None = None
        self.ota = OtaAgent(loaded, board_kind=cfg.board.kind, request_restart=self.request_restart)
        self.thermal = thermal if thermal is not None else ThermalMonitor(create_sensor(cfg.thermal, loaded), cfg.thermal)
        self.supervisor = Supervisor(cfg, notifier=notifier if notifier is not None else Notifier(),
                                     thermal=self.thermal, pipeline=self.pipeline,
                                     alive=lambda: self.view.alive(), status_line=lambda: self.view.status_line(),
                                     ready_due=self._ready_due, uptime=self.uptime, clock=clock,
                                     ticks=(self.models.tick,))
        self.view = StatusView(cfg, pipeline=self.pipeline, models=self.models, privacy=self.privacy,
                               supervisor=self.supervisor, ota=self.ota, vectors=self.vectors, schedule=self.schedule,
                               boot_id=self.boot_id, started=self.started, clock=clock, wall_clock=wall_clock)
        self.pipeline_task: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # The commissioning view (GET /ui): only built, fed and served while commissioning.enabled.
        self.commissioning: LiveView | None = None
        self.zone_file = ZoneFile(loaded.path)
        if cfg.commissioning.enabled:
            self.commissioning = LiveView(cfg.commissioning, cfg.zones, clock=clock, retention_s=cfg.privacy.retention_s)
            self.pipeline.observers.append(self.commissioning.observe)
            self.privacy.purgers.append(self.commissioning.purge)
            self.privacy.expirers.append(self.commissioning.expire)

    # -- what the HTTP API reads (http.device.Device) --------------------------------------------
    def uptime(self) -> float:
        return self.now() - self.started

    def health(self) -> Health:
        return self.view.health()

    def status(self) -> dict[str, Any]:
        return self.view.status()

    @property
    def stats(self) -> PipelineStats:
        return self.pipeline.stats

    @property
    def detector_name(self) -> str | None:
        return self.models.detector_name

    @property
    def watchdog_pings(self) -> int:
        return self.supervisor.watchdog_pings

    async def apply_zones(self, cfg: Config) -> None:
        """The zones of ``cfg`` (a validated config) in effect from the next frame on, without a restart.
        Zone names of this run only grow: a vector held in the buffer keeps naming the zone it was made
        in, and /v1/aggregates reports the zones configured now. The counting figures (lines, queues,
        occupancy) are laid out by zone, so they start again."""
        zones = list(cfg.zones)
        names = self.zone_names
        names.extend(z.name for z in zones if z.name not in names)
        ids = [names.index(z.name) for z in zones]
        await self.pipeline.run_on_worker(lambda: self.analyzer.set_zones(zones, ids))
        # the counting figures (lines, queues, occupancy) are laid out by zone: they start again with the zones
        self.counts = CountStore(zones, self.config.privacy.retention_s)
        self.privacy.counts = self.counts
        self.config = self.config.model_copy(update={"zones": zones})
        self.loaded = LoadedConfig(self.config, self.loaded.path)
        self.view.cfg = self.config
        if self.commissioning is not None:
            self.commissioning.set_zones(zones)
        log.info("zones applied: %s", ", ".join(z.name for z in zones) or "none")

    # -- lifecycle -------------------------------------------------------------------------------
    def attach_signage(self) -> None:
        """Set up the opt-out button and LED (on the running event loop); GpioError if the pins
        cannot be used."""
        loop = asyncio.get_running_loop()
        p = self.privacy
        p.attach(Signage(self.config.privacy.optout, loop, p.button_pressed, p.button_held))

    def request_restart(self) -> None:
        """Stop serving and exit with RESTART_EXIT_CODE so the supervisor starts us again (into a
        freshly installed trial slot, or back to the committed one)."""
        self.exit_code = RESTART_EXIT_CODE
        self.stop_event.set()

    def _ready_due(self) -> bool:
        if self.api_url is None:
            return False  # READY=1 only once the API listens
        st = self.pipeline.stats
        return (st.frames_processed > 0 or self.models.detector is None or st.state in ("error", "ended")
                or self.uptime() > self.config.health.startup_grace_s)

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(
            self.ota.watch_trial(lambda: self.health()[0] and self.pipeline.stats.frames_processed > 0,
                                 lambda: self.api_url), name="cuecam-ota-trial"))
        if self.models.detector is not None:  # without a model there is nothing to analyse: API only
            self.pipeline_task = asyncio.create_task(self.pipeline.run(), name="cuecam-pipeline")
        self._tasks.append(asyncio.create_task(self.privacy.run_retention(), name="cuecam-retention"))
        self._tasks.append(asyncio.create_task(self.supervisor.run(), name="cuecam-supervise"))

    async def stop(self) -> None:
        """Stop the pipeline, close the camera, join the worker threads. Never raises."""
        self.supervisor.notifier.stopping()
        for t in (self.pipeline_task, *self._tasks):
            if t is not None:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
        await self.models.close()
        await self.privacy.close()
        await self.pipeline.close()
        if self.models.detector is not None:  # after the detector thread is joined: a Hailo device let go
            with contextlib.suppress(Exception):
                self.models.detector.close()
        self.supervisor.notifier.close()


def with_source(loaded: LoadedConfig, source: Path) -> LoadedConfig:
    """The same config with its camera replaced by (or redirected to) a replay of ``source``."""
    cam = loaded.config.camera
    if isinstance(cam, ReplayCameraConfig):
        new_cam = cam.model_copy(update={"source": str(source.resolve())})
    else:
        new_cam = ReplayCameraConfig(type="replay", source=str(source.resolve()))
    return LoadedConfig(loaded.config.model_copy(update={"camera": new_cam}), loaded.path)


async def build_service(
    loaded: LoadedConfig,
    *,
    token_env: dict[str, str] | None = None,
    wall_clock: Callable[[], float] = time.time,
    clock: Callable[[], float] = time.monotonic,
    notifier: Notifier | None = None,
    devices: Devices = REAL_DEVICES,
    camera_clock: Callable[[], float] | None = None,
) -> tuple[Service, Token]:
    """Load the models, open the camera, find the token: every start-up check, before serving.
    Model problems degrade the board (see load_models); a missing token or camera stops it.
    ``camera_clock`` (default: the monotonic clock) stamps the frames of sources without their
    own timestamps, e.g. to start a scripted scene at a chosen phase of the signal windows."""
    cfg = loaded.config
    models = load_models(loaded, devices=devices)
    token = load_token(
        loaded.resolve(cfg.api.token_file),
        generate=cfg.api.generate_token,
        **({"env": token_env} if token_env is not None else {}),
    )
    camera = create_camera(loaded) if camera_clock is None else create_camera(loaded, clock=camera_clock)
    open_error: CameraError | None = None
    try:
        await camera.open()
    except CameraError as e:
        if not camera.live or cfg.camera.type not in ("picamera2", "imx500"):
            raise  # a replay source or scene that is not there: a setup mistake, said at once
        # a board's sensor (ribbon cable loose, picamera2 missing): serve degraded, keep trying
        log.error("camera: %s; the API comes up degraded and the camera is retried", e)
        open_error = e
    svc = Service(loaded, camera=camera, models=models, wall_clock=wall_clock, clock=clock, notifier=notifier)
    if open_error is not None:
        svc.pipeline.open_error = open_error
        st = svc.pipeline.stats
        st.state, st.error, st.camera_failures, st.camera_faults["open"] = "restarting", str(open_error), 1, 1
    try:
        svc.attach_signage()
    except CuecamError:
        await camera.close()
        raise
    return svc, token


async def serve(loaded: LoadedConfig, *, port: int | None = None, ready: Callable[[str], None] | None = None) -> int:
    """Run the device until SIGINT/SIGTERM. Returns the process exit code."""
    cfg = loaded.config
    svc, token = await build_service(loaded)
    stop = svc.stop_event
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    app = build_app(svc, token)
    runner = DeviceRunner(app, cfg.api, handle_signals=False, access_log=None)
    try:
        check_bind(cfg.api.host, token)  # no default or weak credentials on the network
        tls = cfg.api.tls
        ssl_ctx = None if tls is None else server_context(loaded.resolve(tls.cert), loaded.resolve(tls.key))
        scheme = "http" if ssl_ctx is None else "https"
        await runner.setup()
        site = web.TCPSite(runner, cfg.api.host, cfg.api.port if port is None else port, reuse_address=True,
                           ssl_context=ssl_ctx)
        await site.start()
        addrs = runner.addresses
        host, bound_port = addrs[0][0], addrs[0][1]
        url = f"{scheme}://{'[' + host + ']' if ':' in host else host}:{bound_port}"
        loopback = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else url.split("//")[1].rsplit(":", 1)[0])
        svc.api_url = f"{scheme}://{loopback}:{bound_port}"
        log.info("cuecam %s on board %s (%s), model %s via %s", __version__, cfg.board.name, cfg.board.kind,
                 svc.models.detector_name, None if svc.models.detector is None else svc.models.detector.runner.runtime)
        hint = "generated at first run" if token.generated else "from"
        print(f"cuecam: serving on {url} (API token {hint} {token.source})", flush=True)
        if cfg.commissioning.enabled:
            print(f"cuecam: commissioning view on {svc.api_url}/ui (commissioning.enabled; paste the API token)", flush=True)
        if ready:
            ready(url)
        await stop.wait()
        log.info("stopping")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        with contextlib.suppress(Exception):
            await runner.cleanup()
        await svc.stop()  # idempotent; covers a failure before the app started the pipeline
    return svc.exit_code


def run(loaded: LoadedConfig, *, port: int | None = None) -> int:
    try:
        return asyncio.run(serve(loaded, port=port))
    except CuecamError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # e.g. the API port is taken
        print(f"error: cannot start the API: {e}", file=sys.stderr)
        return 3
