"""How the board is doing, read from its parts: /health, the watchdog's verdict, systemd's
STATUS= line and /v1/status. Nothing here changes state; every answer is built from typed fields
(the model manager's state, the pipeline's ``halted_by``), never from message text."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from . import __version__
from .config import Config
from .model_manager import ModelManager
from .ota_agent import OtaAgent
from .pipeline import Pipeline
from .privacy.controller import PrivacyController
from .privacy.schedule import ClosedSchedule
from .ringbuffer import RingBuffer
from .supervisor import Supervisor


class Health(NamedTuple):
    ok: bool
    reason: str | None


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


class StatusView:
    def __init__(self, cfg: Config, *, pipeline: Pipeline, models: ModelManager, privacy: PrivacyController,
                 supervisor: Supervisor, ota: OtaAgent, vectors: RingBuffer, schedule: ClosedSchedule, boot_id: str,
                 started: float, clock: Callable[[], float], wall_clock: Callable[[], float]) -> None:
        self.cfg = cfg
        self.pipeline = pipeline
        self.models = models
        self.privacy = privacy
        self.supervisor = supervisor
        self.ota = ota
        self.vectors = vectors
        self.schedule = schedule
        self.boot_id = boot_id
        self.started = started
        self.now = clock
        self.wall = wall_clock

    def uptime(self) -> float:
        return self.now() - self.started

    def _model_halted(self) -> bool:
        return not self.models.usable or self.pipeline.stats.halted_by == "model"

    def health(self) -> Health:
        st = self.pipeline.stats
        hc = self.cfg.health
        if self._model_halted():
            return Health(False, f"model: {self.models.problem}")
        if self.privacy.paused and st.state in ("running", "starting"):
            return Health(True, None)  # paused on purpose (opt-out): healthy
        if st.state == "restarting":
            return Health(False, f"camera: {st.error}; restarting (restart {st.camera_restarts + 1}, "
                                 f"backoff {st.next_restart_s or 0:.2g} s)")
        if st.state == "error":
            return Health(False, st.error if st.halted_by == "crash" else f"camera: {st.error}")
        if st.state == "ended":
            return Health(False, f"camera source ended after {st.frames_captured} frames")
        if st.state == "stopped":
            return Health(False, "stopping")
        if st.consecutive_errors:
            return Health(False, f"model: {st.consecutive_errors} failed invokes in a row: {st.error}")
        if st.last_activity is None:
            if self.uptime() < hc.startup_grace_s:
                return Health(False, "starting: no frame processed yet")
            return Health(False, f"no frame processed in {self.uptime():.0f} s since start")
        idle = self.now() - st.last_activity
        if idle > hc.stall_s:
            return Health(False, f"no frame processed for {idle:.1f} s")
        if self.models.problem is not None:
            return Health(False, f"model: {self.models.problem}")
        return Health(True, None)

    def alive(self) -> tuple[bool, str]:
        """Whether the watchdog may be fed: the event loop runs this, so a blocked loop feeds
        nothing; a pipeline that should run but has produced no frame for health.stall_s is dead.
        A board degraded on purpose (no usable model, opt-out pause) is alive: restarting it
        would not bring a model back, only start a crash loop."""
        st = self.pipeline.stats
        if self._model_halted():
            return True, "no usable model: API only"
        if self.privacy.paused:
            return True, "paused"
        if st.state == "ended":
            return False, "camera source ended"
        if st.state in ("error", "stopped"):
            return False, f"pipeline {st.state}: {st.error}"
        if st.last_activity is None:
            limit = self.cfg.health.startup_grace_s + self.cfg.health.stall_s
            idle = self.uptime()
        else:
            limit = self.cfg.health.stall_s
            idle = self.now() - st.last_activity
        if idle > limit:
            return False, f"no frame for {idle:.1f} s"
        return True, "running"

    def status_line(self) -> str:
        ok, reason = self.health()
        st = self.pipeline.stats
        thermal = self.supervisor.thermal
        t = thermal.reading
        temp = "" if t is None or t.temp_c is None else f", {t.temp_c:.0f} C{' (hot)' if thermal.hot else ''}"
        state = "ok" if ok else f"degraded: {reason}"
        return f"{state}; {st.fps(self.now()):.1f} fps, {st.frames_processed} frames{temp}"

    def status(self) -> dict[str, Any]:
        st = self.pipeline.stats
        now = self.now()
        p50, p99 = st.infer_percentiles()
        m50, m99 = st.percentiles(st.total_ms)
        k50, k99 = st.percentiles(st.model_ms)
        cfg = self.cfg
        ok, reason = self.health()
        alive, why = self.alive()
        signage = self.privacy.signage
        vectors = self.vectors
        return {
            "version": __version__,
            "board": {"name": cfg.board.name, "kind": cfg.board.kind},
            "boot_id": self.boot_id,
            "health": {"ok": ok, "reason": reason},
            "camera": {"type": cfg.camera.type, "source": self.pipeline.camera.description, "state": st.state,
                       "error": st.error, "restarts": st.camera_restarts, "recoveries": st.camera_recoveries,
                       "failures": st.camera_failures,
                       "faults": dict(st.camera_faults), "backoff_s": st.next_restart_s,
                       **self.pipeline.camera.status()},
            "model": self.models.status(cfg.inference.num_threads, st.model_switches, st.consecutive_errors),
            "thermal": self.supervisor.thermal_status(st.frames_thermal_skipped),
            "systemd": self.supervisor.status(alive, why),
            "fps": round(st.fps(now), 2),
            "inference_ms": {"p50": _r(p50), "p99": _r(p99)},
            "frames": {"captured": st.frames_captured, "processed": st.frames_processed,
                       "dropped": st.frames_dropped, "inference_errors": st.inference_errors},
            "uptime_s": round(now - self.started, 3),
            "first_detection_s": None if st.first_detection is None else round(st.first_detection - self.started, 3),
            "people": {"last_frame": st.people_last_frame, "tracked": st.tracked_last_frame,
                       "frames_with_people": st.frames_with_people},
            "buffer": {"capacity": vectors.capacity, "records": len(vectors),
                       "fill": round(len(vectors) / vectors.capacity, 4), "bytes": vectors.nbytes,
                       "newest_seq": vectors.newest_seq},
            "signals": {
                "window_s": cfg.signals.window_s,
                "pose": None if self.models.pose is None else self.models.pose.name,
                "pose_invokes": st.pose_invokes,
                "tracks": st.tracks,
                "vectors": st.vectors,
                "analysis_ms": {"p50": _r(m50), "p99": _r(m99)},
                "models_ms": {"p50": _r(k50), "p99": _r(k99)},
                "zones": [{"name": z.name, "kind": z.kind} for z in cfg.zones],
            },
            "ota": self.ota.status(),
            "privacy": {
                **self.privacy.status(),
                "token_rotation_s": cfg.privacy.token_rotation_s,
                "k_anonymity": cfg.privacy.k_anonymity,
                "closed_now": self.schedule.closed(self.wall()),
                "frames_closed": st.frames_closed,
                "frames_discarded": st.frames_discarded,
                "button": None if signage is None or signage.button is None else cfg.privacy.optout.pins,
                "led": None if signage is None else signage.led_state,
            },
        }
