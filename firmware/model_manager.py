"""The models the board runs: loaded at start, replaced by the CPU fallback when the configured
detector keeps failing, and tried again from there until it works.

The state is typed (``ModelState``); ``problem`` is the text people read (/health, /v1/status),
never parsed back.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from .config import LoadedConfig
from .errors import CuecamError, InferenceError, ModelError
from .inference import Detector, Devices, create_detector
from .inference.base import REAL_DEVICES
from .inference.pose import PoseEstimator, create_pose_estimator
from .models import load_manifest
from .signals.analyzer import FrameAnalyzer

log = logging.getLogger("cuecam")
T = TypeVar("T")


class ModelState(enum.Enum):
    PRIMARY = "primary"  # the configured detector runs (pose may be off: see problem)
    FALLBACK = "fallback"  # inference.fallback_model runs on the CPU
    NONE = "none"  # no detector could be loaded at start: API only
    FAILED = "failed"  # the detector failed invokes in a row and nothing replaced it: analysis stopped


@dataclass
class LoadedModels:
    """What ``load_models`` found: a detector or none, a pose estimator or none, and why not."""

    detector: Detector | None
    pose: PoseEstimator | None = None
    problem: str | None = None
    on_fallback: bool = False  # the configured detector would not load; the fallback did
    devices: Devices = REAL_DEVICES  # accelerator stand-ins they were loaded with (also for retries)


def _load_detector(loaded: LoadedConfig, model: str | None = None, devices: Devices = REAL_DEVICES) -> Detector:
    """The configured detector, or ``model`` on the CPU (the fallback). ModelError/InferenceError."""
    cfg = loaded.config.inference
    if model is not None:
        cfg = cfg.model_copy(update={"delegate": "cpu", "detector": cfg.detector.model_copy(update={"model": model})})
    manifest_dir = loaded.resolve(cfg.models_dir)
    return create_detector(cfg, manifest_dir, load_manifest(manifest_dir / "manifest.yaml"), devices)


def _load_pose(loaded: LoadedConfig) -> PoseEstimator:
    cfg = loaded.config
    inf = cfg.inference
    manifest_dir = loaded.resolve(inf.models_dir)
    # pose runs on the Edge TPU with a Coral; beside a Hailo or an AI Camera it runs on the CPU
    delegate = inf.delegate if inf.delegate == "edgetpu" else "cpu"
    return create_pose_estimator(cfg.signals.pose_model, manifest_dir, load_manifest(manifest_dir / "manifest.yaml"),
                                 runtime=inf.runtime, threads=inf.num_threads, delegate=delegate)


def _probe_primary(loaded: LoadedConfig, devices: Devices = REAL_DEVICES) -> tuple[Detector, PoseEstimator | None]:
    """The configured detector (and pose, when it runs on the same accelerator), loaded and run on
    one blank frame: raises if either will not load or invoke."""
    det = _load_detector(loaded, devices=devices)
    if not det.on_camera:  # a network on the camera runs on the camera's frames, not on a probe
        w, h = det.runner.input_size
        det.detect(np.zeros((h, w, 3), np.uint8))
    pose = None
    if loaded.config.signals.pose != "off" and loaded.config.inference.delegate == "edgetpu":
        pose = _load_pose(loaded)
    return det, pose


def load_models(loaded: LoadedConfig, *, devices: Devices = REAL_DEVICES) -> LoadedModels:
    """Detector and pose estimator, or why not. A model that is missing, corrupt, of the wrong
    signature, or whose delegate will not load does not stop the board: the API comes up degraded
    with the reason, on ``inference.fallback_model`` (CPU) when the config names one."""
    cfg = loaded.config
    problems: list[str] = []
    detector: Detector | None = None
    on_fallback = False
    try:
        detector = _load_detector(loaded, devices=devices)
    except (ModelError, InferenceError) as e:
        problems.append(f"detector {cfg.inference.detector.model}: {e}")
        fb = cfg.inference.fallback_model
        if fb is not None:
            try:
                detector = _load_detector(loaded, fb)
                on_fallback = True
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
    return LoadedModels(detector, pose, problem, on_fallback, devices)


Worker = Callable[[Callable[[], Any]], Awaitable[Any]]


class ModelManager:
    """Owns the detector and pose estimator the analyzer runs: the fallback on repeated failures
    (``on_failure``, the pipeline's hook) and the periodic retry of the configured detector from
    the fallback (``tick``, driven by the supervisor). Model loads run on the analysis thread
    (``worker``), between frames, never beside one."""

    def __init__(self, loaded: LoadedConfig, models: LoadedModels, *, analyzer: FrameAnalyzer, worker: Worker,
                 clock: Callable[[], float], on_switch: Callable[[], None] = lambda: None) -> None:
        self.loaded = loaded
        self.analyzer = analyzer
        self._worker = worker
        self._clock = clock
        self._on_switch = on_switch
        self.detector = models.detector
        self.pose = models.pose
        self._devices = models.devices
        # Why the board does not run the configured models (None: it does), for people to read.
        self.problem = models.problem
        if models.detector is None:
            self.state = ModelState.NONE
        else:
            self.state = ModelState.FALLBACK if models.on_fallback else ModelState.PRIMARY
        self.primary_tries = 0
        self.primary_error: str | None = None  # why the last try of the configured detector failed
        self._next_primary_try = clock() + (loaded.config.inference.retry_primary_s or 0.0)
        self._retry: asyncio.Task[None] | None = None

    @property
    def detector_name(self) -> str | None:
        return None if self.detector is None else self.detector.name

    @property
    def on_fallback(self) -> bool:
        return self.state is ModelState.FALLBACK

    @property
    def usable(self) -> bool:
        """A detector runs (the configured one or the fallback)."""
        return self.state in (ModelState.PRIMARY, ModelState.FALLBACK)

    def _use_detector(self, det: Detector) -> None:
        old = self.detector
        self.detector = self.analyzer.detector = det
        if old is not None and old is not det:
            old.close()  # a Hailo device is released (the switch runs on the analysis thread, between frames)

    def _use_pose(self, pose: PoseEstimator | None) -> None:
        self.pose = self.analyzer.pose = pose

    async def on_failure(self, e: Exception, n: int) -> bool:
        """The detector failed ``n`` invokes in a row (Edge TPU unplugged...): switch to the CPU
        fallback model when the config names one; otherwise stop analysing (degraded)."""
        fb = self.loaded.config.inference.fallback_model
        old = self.detector_name
        if fb is None or self.on_fallback:
            self.problem = f"detector {old} failed {n} invokes in a row ({e}); " + (
                "the fallback model failed too" if fb else "no inference.fallback_model configured")
            self.state = ModelState.FAILED
            return False
        try:
            det = await self._worker(lambda: _load_detector(self.loaded, fb))
        except CuecamError as e2:
            self.problem = f"detector {old} failed {n} invokes in a row ({e}); fallback {fb} failed: {e2}"
            self.state = ModelState.FAILED
            return False
        self._use_detector(det)
        note = ""
        if self.pose is not None and self.pose.runner.delegate != "cpu":
            self._use_pose(None)  # it ran on the same accelerator
            note = "; pose off"
        self.state = ModelState.FALLBACK
        self._next_primary_try = self._clock() + (self.loaded.config.inference.retry_primary_s or 0.0)
        self.problem = f"detector {old} failed {n} invokes in a row ({e}); running the CPU fallback {fb}{note}"
        log.error("model: %s", self.problem)
        return True

    def tick(self, now: float) -> None:
        """On the fallback: start a try of the configured detector every inference.retry_primary_s."""
        retry = self.loaded.config.inference.retry_primary_s
        if (not self.on_fallback or retry is None or now < self._next_primary_try
                or (self._retry is not None and not self._retry.done())):
            return
        self._next_primary_try = now + retry
        self._retry = asyncio.create_task(self.try_primary(), name="cuecam-model-retry")

    async def try_primary(self) -> None:
        """Load the configured detector (and pose) again and run a probe frame through it; when
        both work, go back to them. Runs on the analysis thread, between frames."""
        self.primary_tries += 1
        try:
            det, pose = await self._worker(lambda: _probe_primary(self.loaded, self._devices))
        except Exception as e:  # anything: the accelerator is still gone; stay on the fallback
            self.primary_error = f"{type(e).__name__}: {e}"[:300]
            log.info("model: the configured detector is still unavailable (%s); staying on the fallback",
                     self.primary_error)
            return
        if not self.on_fallback:
            return
        self._use_detector(det)
        if pose is not None:
            self._use_pose(pose)
        self.state = ModelState.PRIMARY
        self.problem = self.primary_error = None
        self._on_switch()
        log.warning("model: back on the configured detector %s (try %d)", det.name, self.primary_tries)

    async def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._retry

    def status(self, threads: Any, switches: int, consecutive_errors: int) -> dict[str, Any]:
        runner = None if self.detector is None else self.detector.runner
        return {"name": self.detector_name, "file": None if runner is None else runner.model.path.name,
                "runtime": None if runner is None else runner.runtime,
                "delegate": None if runner is None else runner.delegate, "threads": threads,
                "input": None if runner is None else list(runner.input_shape), "problem": self.problem,
                "accelerator": getattr(runner, "info", None),  # e.g. the HailoRT versions
                "fallback": self.loaded.config.inference.fallback_model, "on_fallback": self.on_fallback,
                "state": self.state.value,
                "switches": switches, "consecutive_errors": consecutive_errors,
                "primary_tries": self.primary_tries, "primary_error": self.primary_error}
