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

import numpy as np
from aiohttp import web

from . import __version__
from .camera import Camera, create_camera
from .config import LoadedConfig, ReplayCameraConfig
from .errors import CameraError, CuecamError, InferenceError, ModelError
from .http.app import build_app
from .http.auth import Token, check_bind, load_token
from .http.guard import DeviceRunner
from .http.tls import server_context
from .inference import Detector, create_detector
from .inference.pose import PoseEstimator, create_pose_estimator
from .models import load_manifest
from .ota_agent import RESTART_EXIT_CODE, OtaAgent
from .pipeline import Pipeline, RestartPolicy
from .privacy.audit import AuditLog
from .privacy.schedule import ClosedSchedule
from .privacy.signage import Signage
from .ringbuffer import RingBuffer
from .sdnotify import Notifier
from .signals.analyzer import FrameAnalyzer
from .signals.schema import VECTOR_DTYPE
from .thermal import ThermalMonitor, create_sensor

log = logging.getLogger("cuecam")
RETENTION_TICK_S = 0.25
SUPERVISE_TICK_S = 0.25  # the supervisor's loop: READY, watchdog pings, STATUS, thermal
STATUS_EVERY_S = 10.0  # STATUS= is re-sent at least this often, and whenever the state changes


class Service:
    """The running device: pipeline, buffer and the numbers the API reports."""

    def __init__(
        self,
        loaded: LoadedConfig,
        *,
        camera: Camera,
        detector: Detector | None,
        pose: PoseEstimator | None = None,
        model_problem: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        notifier: Notifier | None = None,
        thermal: ThermalMonitor | None = None,
    ) -> None:
        cfg = loaded.config
        self.loaded = loaded
        self.config = cfg
        self.detector = detector
        self.detector_name = detector.name if detector is not None else None
        # Why the board does not run the configured models (None: it does): a missing, corrupt or
        # refused model, an accelerator that would not load or died mid-run.
        self.model_problem = model_problem
        # started on the fallback already (see load_models): nothing left to switch to
        self.on_fallback = detector is not None and "running the CPU fallback" in (model_problem or "")
        self._next_primary_try = clock() + (cfg.inference.retry_primary_s or 0.0)
        self._primary_trying = False
        self.primary_tries = 0
        self.primary_error: str | None = None  # why the last try of the configured detector failed
        self.notifier = notifier if notifier is not None else Notifier()
        self.thermal = thermal if thermal is not None else ThermalMonitor(create_sensor(cfg.thermal, loaded), cfg.thermal)
        self.ready_after_s: float | None = None  # when READY=1 was due (uptime)
        self.watchdog_pings = 0
        self._last_status = ""
        self._last_status_t = -1e18
        self._last_ping = -1e18
        self._supervise_task: asyncio.Task[None] | None = None
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
            restart=RestartPolicy(cfg.health.camera_timeout_s, cfg.health.backoff_s, cfg.health.backoff_max_s),
            max_consecutive_errors=cfg.inference.max_consecutive_errors,
            clock=clock,
            wall_clock=wall_clock,
        )
        self.pipeline.on_model_failure = self._model_failed
        if detector is None:
            self.pipeline.stats.state, self.pipeline.stats.error = "error", f"model: {model_problem}"
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
        if self.detector is not None:  # without a model there is nothing to analyse: API only
            self._task = asyncio.create_task(self.pipeline.run(), name="cuecam-pipeline")
        self._retention_task = asyncio.create_task(self._retention(), name="cuecam-retention")
        self._supervise_task = asyncio.create_task(self._supervise(), name="cuecam-supervise")

    async def stop(self) -> None:
        """Stop the pipeline, close the camera, join the worker threads. Never raises."""
        self.notifier.stopping()
        for t in (self._task, self._retention_task, self._resume_task, self._trial_task, self._supervise_task,
                  *self._background):
            if t is not None:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
        if self.signage is not None:
            self.signage.close()
        await self.pipeline.close()
        self.notifier.close()

    # -- supervision: systemd notify, watchdog, thermal -------------------------------------------
    def alive(self) -> tuple[bool, str]:
        """Whether the watchdog may be fed: the event loop runs this, so a blocked loop feeds
        nothing; a pipeline that should run but has produced no frame for health.stall_s is dead.
        A board degraded on purpose (no usable model, opt-out pause) is alive: restarting it
        would not bring a model back, only start a crash loop."""
        st = self.pipeline.stats
        if self.detector is None or (st.state == "error" and (st.error or "").startswith("model:")):
            return True, "no usable model: API only"
        if self.paused_until is not None:
            return True, "paused"
        if st.state == "ended":
            return False, "camera source ended"
        if st.state in ("error", "stopped"):
            return False, f"pipeline {st.state}: {st.error}"
        if st.last_activity is None:
            limit = self.config.health.startup_grace_s + self.config.health.stall_s
            idle = self.uptime()
        else:
            limit = self.config.health.stall_s
            idle = self.now() - st.last_activity
        if idle > limit:
            return False, f"no frame for {idle:.1f} s"
        return True, "running"

    def _ready_due(self) -> bool:
        if self.api_url is None:
            return False  # READY=1 only once the API listens
        st = self.pipeline.stats
        return (st.frames_processed > 0 or self.detector is None or st.state in ("error", "ended")
                or self.uptime() > self.config.health.startup_grace_s)

    def status_line(self) -> str:
        ok, reason = self.health()
        st = self.pipeline.stats
        t = self.thermal.reading
        temp = "" if t is None or t.temp_c is None else f", {t.temp_c:.0f} C{' (hot)' if self.thermal.hot else ''}"
        state = "ok" if ok else f"degraded: {reason}"
        return f"{state}; {st.fps(self.now()):.1f} fps, {st.frames_processed} frames{temp}"

    async def _supervise(self) -> None:
        n = self.notifier
        interval = n.watchdog_interval_s
        tick = SUPERVISE_TICK_S if interval is None else min(SUPERVISE_TICK_S, interval / 4)
        next_thermal = self.now()
        while True:
            now = self.now()
            if self.ready_after_s is None and self._ready_due():
                self.ready_after_s = self.uptime()
                n.ready(self.status_line())
                log.info("ready after %.2f s: %s", self.ready_after_s, self.status_line())
            if interval is not None and now - self._last_ping >= interval:
                alive, why = self.alive()
                if alive:
                    if n.watchdog():
                        self.watchdog_pings += 1
                    self._last_ping = now
                elif now - self._last_ping >= interval:  # once per interval: say why the pings stop
                    log.error("watchdog: not pinging (%s)", why)
                    self._last_ping = now - interval + 1.0
            if now >= next_thermal:
                next_thermal = now + self.config.thermal.poll_s
                self._apply_thermal()
            retry = self.config.inference.retry_primary_s
            if self.on_fallback and retry is not None and now >= self._next_primary_try and not self._primary_trying:
                self._next_primary_try = now + retry
                self._primary_trying = True
                self._spawn(self._try_primary())
            if self.ready_after_s is not None:
                line = self.status_line()
                head = line.split(";")[0]
                if head != self._last_status.split(";")[0] or now - self._last_status_t >= STATUS_EVERY_S:
                    n.status(line)
                    self._last_status, self._last_status_t = line, now
            await asyncio.sleep(tick)

    def _apply_thermal(self) -> None:
        was = self.thermal.hot
        self.thermal.poll()
        hot = self.thermal.hot
        self.pipeline.min_interval_s = 1.0 / self.config.thermal.hot_fps if hot else 0.0
        if hot != was:
            r = self.thermal.reading
            log.warning("thermal: %s (%s); analysing %s", "hot" if hot else "cooled down", r,
                        f"at most {self.config.thermal.hot_fps:g} fps" if hot else "every frame")

    # -- model faults -----------------------------------------------------------------------------
    async def _model_failed(self, e: Exception, n: int) -> bool:
        """The detector failed ``n`` invokes in a row (Edge TPU unplugged...): switch to the CPU
        fallback model when the config names one; otherwise stop analysing (degraded)."""
        fb = self.config.inference.fallback_model
        old = self.detector_name
        if fb is None or self.on_fallback:
            self.model_problem = f"detector {old} failed {n} invokes in a row ({e}); " + (
                "the fallback model failed too" if fb else "no inference.fallback_model configured")
            return False
        try:
            det = await self.pipeline.run_on_worker(lambda: _load_detector(self.loaded, fb))
        except CuecamError as e2:
            self.model_problem = f"detector {old} failed {n} invokes in a row ({e}); fallback {fb} failed: {e2}"
            return False
        self.detector, self.detector_name, self.analyzer.detector = det, det.name, det
        self.on_fallback = True
        self._next_primary_try = self.now() + (self.config.inference.retry_primary_s or 0.0)  # a whole interval
        note = ""
        if self.pose is not None and self.pose.runner.delegate != "cpu":
            self.pose = self.analyzer.pose = None  # it ran on the same accelerator
            note = "; pose off"
        self.model_problem = f"detector {old} failed {n} invokes in a row ({e}); running the CPU fallback {fb}{note}"
        log.error("model: %s", self.model_problem)
        return True

    async def _try_primary(self) -> None:
        """On the fallback: load the configured detector (and pose) again and run a probe frame
        through it; when both work, go back to them. Runs on the analysis thread, between frames."""
        self.primary_tries += 1
        try:
            det, pose = await self.pipeline.run_on_worker(lambda: _probe_primary(self.loaded))
        except Exception as e:  # anything: the accelerator is still gone; stay on the fallback
            self.primary_error = f"{type(e).__name__}: {e}"[:300]
            log.info("model: the configured detector is still unavailable (%s); staying on the fallback",
                     self.primary_error)
            return
        finally:
            self._primary_trying = False
        if not self.on_fallback:
            return
        self.detector, self.detector_name, self.analyzer.detector = det, det.name, det
        if pose is not None:
            self.pose = self.analyzer.pose = pose
        self.on_fallback = False
        self.model_problem = self.primary_error = None
        self.pipeline.stats.model_switches += 1
        log.warning("model: back on the configured detector %s (try %d)", det.name, self.primary_tries)

    # -- privacy: retention, opt-out ---------------------------------------------------------------
    async def _retention(self) -> None:
        """Vectors older than privacy.retention_s are zeroed within RETENTION_TICK_S."""
        while True:
            self.expire()
            await asyncio.sleep(RETENTION_TICK_S)

    def expire(self) -> int:
        # on the monotonic clock: a wall-clock jump (NTP after a boot without RTC) expires nothing early
        n = self.vectors.expire(self.now() - self.config.privacy.retention_s, field="t_mono")
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
            t_wall = self.wall()  # for people reading it; the purge itself runs on the monotonic clock
            # readers (the gateway) forget by sequence numbers, which no clock jump can shift: every
            # vector of this boot from seq_from to seq_to (the newest; windows still open are dropped)
            seq_to = self.vectors.newest_seq
            if lookback is None:
                seq_from, vectors = 1, self.vectors.clear()
            else:
                cutoff = self.now() - lookback
                seq_from = self.vectors.first_seq_from(cutoff, field="t_mono")
                vectors = self.vectors.purge_since(cutoff, field="t_mono")
            pause_s = self.config.privacy.optout.pause_s
            self.paused_until = self.now() + pause_s
            if self._resume_task is not None:
                self._resume_task.cancel()
            self._resume_task = asyncio.create_task(self._resume_after(pause_s), name="cuecam-resume")
            if self.signage is not None:
                self.signage.show(paused=True)
            latency_ms = (self.now() - t0) * 1000.0
            self.optouts += 1
            self.purges.append({"n": self.optouts, "seq_from": seq_from, "seq_to": seq_to,
                                "since": 0.0 if lookback is None else round(t_wall - lookback, 3),
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
        hc = self.config.health
        if self.detector is None or (st.state == "error" and (st.error or "").startswith("model:")):
            return False, f"model: {self.model_problem}"
        if self.paused_until is not None and st.state in ("running", "starting"):
            return True, None  # paused on purpose (opt-out): healthy
        if st.state == "restarting":
            return False, (f"camera: {st.error}; restarting (restart {st.camera_restarts + 1}, "
                           f"backoff {st.next_restart_s or 0:.2g} s)")
        if st.state == "error":
            return False, f"camera: {st.error}" if not (st.error or "").startswith("pipeline:") else st.error
        if st.state == "ended":
            return False, f"camera source ended after {st.frames_captured} frames"
        if st.state == "stopped":
            return False, "stopping"
        if st.consecutive_errors:
            return False, f"model: {st.consecutive_errors} failed invokes in a row: {st.error}"
        if st.last_activity is None:
            if self.uptime() < hc.startup_grace_s:
                return False, "starting: no frame processed yet"
            return False, f"no frame processed in {self.uptime():.0f} s since start"
        idle = self.now() - st.last_activity
        if idle > hc.stall_s:
            return False, f"no frame processed for {idle:.1f} s"
        if self.model_problem is not None:
            return False, f"model: {self.model_problem}"
        return True, None

    def status(self) -> dict[str, Any]:
        st = self.pipeline.stats
        now = self.now()
        p50, p99 = st.infer_percentiles()
        m50, m99 = st.percentiles(st.total_ms)
        k50, k99 = st.percentiles(st.model_ms)
        cam = self.config.camera
        runner = None if self.detector is None else self.detector.runner
        ok, reason = self.health()
        alive, why = self.alive()
        reading = self.thermal.reading
        return {
            "version": __version__,
            "board": {"name": self.config.board.name, "kind": self.config.board.kind},
            "boot_id": self.boot_id,
            "health": {"ok": ok, "reason": reason},
            "camera": {"type": cam.type, "source": self.pipeline.camera.description, "state": st.state,
                       "error": st.error, "restarts": st.camera_restarts, "recoveries": st.camera_recoveries,
                       "failures": st.camera_failures,
                       "faults": dict(st.camera_faults), "backoff_s": st.next_restart_s},
            "model": {"name": self.detector_name, "file": None if runner is None else runner.model.path.name,
                      "runtime": None if runner is None else runner.runtime,
                      "delegate": None if runner is None else runner.delegate, "threads": self.config.inference.threads,
                      "input": None if runner is None else list(runner.input_shape), "problem": self.model_problem,
                      "fallback": self.config.inference.fallback_model, "on_fallback": self.on_fallback,
                      "switches": st.model_switches, "consecutive_errors": st.consecutive_errors,
                      "primary_tries": self.primary_tries, "primary_error": self.primary_error},
            "thermal": {"sensor": self.thermal.sensor_name, "temp_c": None if reading is None else reading.temp_c,
                        "throttled": None if reading is None else reading.throttled_hex,
                        "flags": [] if reading is None else reading.flags, "hot": self.thermal.hot,
                        "soft_limit_c": self.config.thermal.soft_limit_c,
                        "fps_cap": self.config.thermal.hot_fps if self.thermal.hot else None,
                        "frames_skipped": st.frames_thermal_skipped},
            "systemd": {"notify": self.notifier.enabled, "watchdog_interval_s": self.notifier.watchdog_interval_s,
                        "watchdog_pings": self.watchdog_pings, "alive": alive, "why": why,
                        "ready_after_s": _r(self.ready_after_s)},
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


def _load_detector(loaded: LoadedConfig, model: str | None = None) -> Detector:
    """The configured detector, or ``model`` on the CPU (the fallback). ModelError/InferenceError."""
    cfg = loaded.config.inference
    if model is not None:
        cfg = cfg.model_copy(update={"delegate": "cpu", "detector": cfg.detector.model_copy(update={"model": model})})
    manifest_dir = loaded.resolve(cfg.models_dir)
    return create_detector(cfg, manifest_dir, load_manifest(manifest_dir / "manifest.yaml"))


def _load_pose(loaded: LoadedConfig) -> PoseEstimator:
    cfg = loaded.config
    inf = cfg.inference
    manifest_dir = loaded.resolve(inf.models_dir)
    return create_pose_estimator(cfg.signals.pose_model, manifest_dir, load_manifest(manifest_dir / "manifest.yaml"),
                                 runtime=inf.runtime, threads=inf.threads, delegate=inf.delegate)


def _probe_primary(loaded: LoadedConfig) -> tuple[Detector, PoseEstimator | None]:
    """The configured detector (and pose, when it runs on the same accelerator), loaded and run on
    one blank frame: raises if either will not load or invoke."""
    det = _load_detector(loaded)
    w, h = det.runner.input_size
    det.detect(np.zeros((h, w, 3), np.uint8))
    pose = None
    if loaded.config.signals.pose != "off" and loaded.config.inference.delegate != "cpu":
        pose = _load_pose(loaded)
    return det, pose


def load_models(loaded: LoadedConfig) -> tuple[Detector | None, PoseEstimator | None, str | None]:
    """Detector and pose estimator, or why not. A model that is missing, corrupt, of the wrong
    signature, or whose delegate will not load does not stop the board: the API comes up degraded
    with the reason, on ``inference.fallback_model`` (CPU) when the config names one."""
    cfg = loaded.config
    problems: list[str] = []
    detector: Detector | None = None
    try:
        detector = _load_detector(loaded)
    except (ModelError, InferenceError) as e:
        problems.append(f"detector {cfg.inference.detector.model}: {e}")
        fb = cfg.inference.fallback_model
        if fb is not None:
            try:
                detector = _load_detector(loaded, fb)
                problems.append(f"running the CPU fallback {fb}")
            except (ModelError, InferenceError) as e2:
                problems.append(f"fallback {fb}: {e2}")
        else:
            problems.append("no inference.fallback_model configured")
    pose = None
    if cfg.signals.pose != "off" and detector is not None:
        try:
            pose = _load_pose(loaded)
        except (ModelError, InferenceError) as e:
            problems.append(f"pose {cfg.signals.pose_model}: {e}; pose off (orientation follows motion)")
    problem = "; ".join(problems) or None
    if problem:
        log.error("model: %s", problem)
    return detector, pose, problem


async def build_service(
    loaded: LoadedConfig,
    *,
    token_env: dict[str, str] | None = None,
    wall_clock: Callable[[], float] = time.time,
    clock: Callable[[], float] = time.monotonic,
    notifier: Notifier | None = None,
) -> tuple[Service, Token]:
    """Load the models, open the camera, find the token: every start-up check, before serving.
    Model problems degrade the board (see load_models); a missing token or camera stops it."""
    cfg = loaded.config
    detector, pose, problem = load_models(loaded)
    token = load_token(
        loaded.resolve(cfg.api.token_file),
        generate=cfg.api.generate_token,
        **({"env": token_env} if token_env is not None else {}),
    )
    camera = create_camera(loaded)
    open_error: CameraError | None = None
    try:
        await camera.open()
    except CameraError as e:
        if not camera.live or cfg.camera.type != "picamera2":
            raise  # a replay source or scene that is not there: a setup mistake, said at once
        # a board's sensor (ribbon cable loose, picamera2 missing): serve degraded, keep trying
        log.error("camera: %s; the API comes up degraded and the camera is retried", e)
        open_error = e
    svc = Service(loaded, camera=camera, detector=detector, pose=pose, model_problem=problem, wall_clock=wall_clock,
                  clock=clock, notifier=notifier)
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
                 svc.detector_name, None if svc.detector is None else svc.detector.runner.runtime)
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
