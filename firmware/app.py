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
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from . import __version__
from .camera import Camera, create_camera
from .config import LoadedConfig, ReplayCameraConfig
from .errors import CuecamError
from .http.app import build_app
from .http.auth import Token, load_token
from .inference import Detector, create_detector
from .inference.pose import PoseEstimator, create_pose_estimator
from .models import load_manifest
from .ota_agent import RESTART_EXIT_CODE, OtaAgent
from .pipeline import Pipeline
from .privacy.audit import AuditLog
from .privacy.schedule import ClosedSchedule
from .privacy.signage import Signage
from .ringbuffer import RingBuffer
from .signals.analyzer import FrameAnalyzer
from .signals.schema import VECTOR_DTYPE

log = logging.getLogger("cuecam")
STARTUP_GRACE_S = 15.0
RETENTION_TICK_S = 0.25


class Service:
    """The running device: pipeline, buffer and the numbers the API reports."""

    def __init__(
        self,
        loaded: LoadedConfig,
        *,
        camera: Camera,
        detector: Detector,
        pose: PoseEstimator | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        cfg = loaded.config
        self.loaded = loaded
        self.config = cfg
        self.detector = detector
        self.detector_name = detector.name
        self.now = clock
        self.wall = wall_clock
        self.speed_unit = "m/s" if cfg.ground_plane is not None else "person_heights/s"
        self.pose = pose
        self.zone_names = [z.name for z in cfg.zones]
        self.vectors = RingBuffer(VECTOR_DTYPE, cfg.buffer.capacity)
        # Random per process start: vector seq numbers restart with the RAM buffer, and readers
        # (the gateway) tell a restart from a cursor by this. It says nothing about anyone.
        self.boot_id = secrets.token_hex(8)
        self.audit = AuditLog(loaded.resolve(cfg.privacy.audit_log), cfg.privacy.audit_max_bytes)
        self.analyzer = FrameAnalyzer(cfg, detector, pose)
        self.pipeline = Pipeline(
            camera=camera,
            analyzer=self.analyzer,
            vectors=self.vectors,
            queue_size=cfg.inference.queue_size,
            retry_camera=cfg.camera.type == "picamera2",
            clock=clock,
            wall_clock=wall_clock,
        )
        self.schedule = ClosedSchedule(cfg.privacy.closed_hours, cfg.privacy.timezone)
        self.pipeline.closed = self.schedule.closed
        self.started = clock()
        self._task: asyncio.Task[None] | None = None
        # opt-out state
        self.signage: Signage | None = None
        self.paused_until: float | None = None  # monotonic
        self.optouts = 0
        self.last_optout: dict[str, Any] | None = None
        # The last purges as readers of /v1/vectors see them (n, purged from, pressed at; wall
        # clock), so a gateway that already took those vectors forgets them too.
        self.purges: deque[dict[str, Any]] = deque(maxlen=8)
        self.expired = 0  # vectors purged by retention
        self._resume_task: asyncio.Task[None] | None = None
        self._retention_task: asyncio.Task[None] | None = None
        self._optout_lock = asyncio.Lock()
        self._background: set[asyncio.Task[Any]] = set()
        # lifecycle: serve() stops when stop_event is set and exits with exit_code
        self.stop_event = asyncio.Event()
        self.exit_code = 0
        self.api_url: str | None = None
        self.ota = OtaAgent(loaded, board_kind=cfg.board.kind, request_restart=self.request_restart)
        self._trial_task: asyncio.Task[None] | None = None

    def uptime(self) -> float:
        return self.now() - self.started

    def attach_signage(self) -> None:
        """Set up the opt-out button and LED (on the running event loop); GpioError if the pins
        cannot be used."""
        loop = asyncio.get_running_loop()
        self.signage = Signage(self.config.privacy.optout, loop, self._button_pressed, self._button_held)

    def request_restart(self) -> None:
        """Stop serving and exit with RESTART_EXIT_CODE so the supervisor starts us again (into a
        freshly installed trial slot, or back to the committed one)."""
        self.exit_code = RESTART_EXIT_CODE
        self.stop_event.set()

    async def start(self) -> None:
        self._trial_task = asyncio.create_task(
            self.ota.watch_trial(lambda: self.health()[0] and self.pipeline.stats.frames_processed > 0,
                                 lambda: self.api_url), name="cuecam-ota-trial")
        self._task = asyncio.create_task(self.pipeline.run(), name="cuecam-pipeline")
        self._retention_task = asyncio.create_task(self._retention(), name="cuecam-retention")

    async def stop(self) -> None:
        """Stop the pipeline, close the camera, join the worker threads. Never raises."""
        for t in (self._task, self._retention_task, self._resume_task, self._trial_task, *self._background):
            if t is not None:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
        if self.signage is not None:
            self.signage.close()
        await self.pipeline.close()

    # -- privacy: retention, opt-out ---------------------------------------------------------------
    async def _retention(self) -> None:
        """Vectors older than privacy.retention_s are zeroed within RETENTION_TICK_S."""
        while True:
            self.expire()
            await asyncio.sleep(RETENTION_TICK_S)

    def expire(self) -> int:
        n = self.vectors.expire(self.wall() - self.config.privacy.retention_s)
        self.expired += n
        return n

    def paused_remaining(self) -> float | None:
        if self.paused_until is None:
            return None
        return max(self.paused_until - self.now(), 0.0)

    async def optout(self, source: str) -> dict[str, Any]:
        """Pause measuring and purge, at once: frames in flight dropped, every track and pending
        window forgotten, the vectors of the look-back (default: all) zeroed; the pause lasts
        privacy.optout.pause_s. A press while paused purges again and restarts the pause."""
        async with self._optout_lock:
            t0 = self.now()
            frames, tracks = await self.pipeline.pause()
            lookback = self.config.privacy.optout.lookback_s
            t_wall = self.wall()
            vectors = self.vectors.clear() if lookback is None else self.vectors.purge_since(t_wall - lookback)
            pause_s = self.config.privacy.optout.pause_s
            self.paused_until = self.now() + pause_s
            if self._resume_task is not None:
                self._resume_task.cancel()
            self._resume_task = asyncio.create_task(self._resume_after(pause_s), name="cuecam-resume")
            if self.signage is not None:
                self.signage.show(paused=True)
            latency_ms = (self.now() - t0) * 1000.0
            self.optouts += 1
            self.purges.append({"n": self.optouts, "since": 0.0 if lookback is None else round(t_wall - lookback, 3),
                                "t": round(t_wall, 3)})
            self.last_optout = {"source": source, "latency_ms": round(latency_ms, 2),
                                "purged": {"vectors": vectors, "tracks": tracks, "frames": frames}}
        # the log is rewritten and fsynced atomically: off the event loop (its writer takes a lock)
        await asyncio.to_thread(self.audit.append, "optout", source, vectors=vectors, tracks=tracks, frames=frames,
                                pause_s=pause_s)
        log.info("opt-out (%s): paused %.0f s; purged %d vectors, %d tracks, %d frames in %.1f ms",
                 source, pause_s, vectors, tracks, frames, latency_ms)
        return {"paused": True, "remaining_s": round(pause_s, 3), **self.last_optout}

    async def resume(self, source: str) -> bool:
        """End a pause early (or when it runs out). False when not paused."""
        if self.paused_until is None:
            return False
        self.paused_until = None
        if self._resume_task is not None and self._resume_task is not asyncio.current_task():
            self._resume_task.cancel()
        self._resume_task = None
        self.pipeline.resume()
        if self.signage is not None:
            self.signage.show(paused=False)
        await asyncio.to_thread(self.audit.append, "resume", source)
        log.info("measuring again (%s)", source)
        return True

    async def _resume_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await self.resume("schedule")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _button_pressed(self) -> None:
        if self.paused_until is not None and self.config.privacy.optout.button.resume == "second_press":
            self._spawn(self.resume("button"))
        else:
            self._spawn(self.optout("button"))

    def _button_held(self) -> None:
        if self.paused_until is not None and self.config.privacy.optout.button.resume == "long_press":
            self._spawn(self.resume("button"))

    def health(self) -> tuple[bool, str | None]:
        st = self.pipeline.stats
        if self.paused_until is not None and st.state in ("running", "starting"):
            return True, None  # paused on purpose (opt-out): healthy
        if st.state == "error":
            return False, f"camera: {st.error}"
        if st.state == "ended":
            return False, f"camera source ended after {st.frames_captured} frames"
        if st.state == "stopped":
            return False, "stopping"
        if st.last_processed is None:
            if self.uptime() < STARTUP_GRACE_S:
                return False, "starting: no frame processed yet"
            return False, f"no frame processed in {self.uptime():.0f} s since start"
        idle = self.now() - st.last_processed
        if idle > 5.0:
            return False, f"no frame processed for {idle:.1f} s"
        return True, None

    def status(self) -> dict[str, Any]:
        st = self.pipeline.stats
        now = self.now()
        p50, p99 = st.infer_percentiles()
        m50, m99 = st.percentiles(st.total_ms)
        k50, k99 = st.percentiles(st.model_ms)
        cam = self.config.camera
        runner = self.detector.runner
        return {
            "version": __version__,
            "board": {"name": self.config.board.name, "kind": self.config.board.kind},
            "boot_id": self.boot_id,
            "camera": {"type": cam.type, "source": self.pipeline.camera.description, "state": st.state,
                       "error": st.error, "restarts": st.camera_restarts},
            "model": {"name": self.detector_name, "file": runner.model.path.name, "runtime": runner.runtime,
                      "delegate": self.config.inference.delegate, "threads": self.config.inference.threads,
                      "input": list(runner.input_shape)},
            "fps": round(st.fps(now), 2),
            "inference_ms": {"p50": _r(p50), "p99": _r(p99)},
            "frames": {"captured": st.frames_captured, "processed": st.frames_processed,
                       "dropped": st.frames_dropped, "inference_errors": st.inference_errors},
            "uptime_s": round(now - self.started, 3),
            "first_detection_s": None if st.first_detection is None else round(st.first_detection - self.started, 3),
            "people": {"last_frame": st.people_last_frame, "frames_with_people": st.frames_with_people},
            "buffer": {"capacity": self.vectors.capacity, "records": len(self.vectors),
                       "fill": round(len(self.vectors) / self.vectors.capacity, 4), "bytes": self.vectors.nbytes,
                       "newest_seq": self.vectors.newest_seq},
            "signals": {
                "window_s": self.config.signals.window_s,
                "pose": None if self.pose is None else self.pose.name,
                "pose_invokes": st.pose_invokes,
                "tracks": st.tracks,
                "vectors": st.vectors,
                "analysis_ms": {"p50": _r(m50), "p99": _r(m99)},
                "models_ms": {"p50": _r(k50), "p99": _r(k99)},
                "zones": [{"name": z.name, "kind": z.kind} for z in self.config.zones],
            },
            "ota": self.ota.status(),
            "privacy": {
                "paused": self.paused_until is not None,
                "paused_remaining_s": _r(self.paused_remaining()),
                "optouts": self.optouts,
                "last_optout": self.last_optout,
                "retention_s": self.config.privacy.retention_s,
                "expired_vectors": self.expired,
                "token_rotation_s": self.config.privacy.token_rotation_s,
                "k_anonymity": self.config.privacy.k_anonymity,
                "closed_now": self.schedule.closed(self.wall()),
                "frames_closed": st.frames_closed,
                "frames_discarded": st.frames_discarded,
                "button": None if self.signage is None or self.signage.button is None else self.config.privacy.optout.pins,
                "led": None if self.signage is None else self.signage.led_state,
            },
        }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def with_source(loaded: LoadedConfig, source: Path) -> LoadedConfig:
    """The same config with its camera replaced by (or redirected to) a replay of ``source``."""
    cam = loaded.config.camera
    if isinstance(cam, ReplayCameraConfig):
        new_cam = cam.model_copy(update={"source": str(source.resolve())})
    else:
        new_cam = ReplayCameraConfig(type="replay", source=str(source.resolve()))
    return LoadedConfig(loaded.config.model_copy(update={"camera": new_cam}), loaded.path)


async def build_service(
    loaded: LoadedConfig, *, token_env: dict[str, str] | None = None, wall_clock: Callable[[], float] = time.time
) -> tuple[Service, Token]:
    """Load the model, open the camera, find the token: every start-up check, before serving."""
    cfg = loaded.config
    manifest_dir = loaded.resolve(cfg.inference.models_dir)
    manifest = load_manifest(manifest_dir / "manifest.yaml")
    detector = create_detector(cfg.inference, manifest_dir, manifest)
    pose = None
    if cfg.signals.pose != "off":
        pose = create_pose_estimator(cfg.signals.pose_model, manifest_dir, manifest, runtime=cfg.inference.runtime,
                                     threads=cfg.inference.threads, delegate=cfg.inference.delegate)
    token = load_token(
        loaded.resolve(cfg.api.token_file),
        generate=cfg.api.generate_token,
        **({"env": token_env} if token_env is not None else {}),
    )
    camera = create_camera(loaded)
    await camera.open()
    svc = Service(loaded, camera=camera, detector=detector, pose=pose, wall_clock=wall_clock)
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
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    try:
        await runner.setup()
        site = web.TCPSite(runner, cfg.api.host, cfg.api.port if port is None else port, reuse_address=True)
        await site.start()
        addrs = runner.addresses
        host, bound_port = addrs[0][0], addrs[0][1]
        url = f"http://{'[' + host + ']' if ':' in host else host}:{bound_port}"
        loopback = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else url.split("//")[1].rsplit(":", 1)[0])
        svc.api_url = f"http://{loopback}:{bound_port}"
        log.info("cuecam %s on board %s (%s), model %s via %s", __version__, cfg.board.name, cfg.board.kind,
                 svc.detector_name, svc.detector.runner.runtime)
        hint = "generated at first run" if token.generated else "from"
        print(f"cuecam: serving on {url} (API token {hint} {token.source})", flush=True)
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
