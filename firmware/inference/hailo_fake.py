"""A stand-in for ``picamera2.devices.Hailo`` (HailoRT through picamera2), for the tests: the part of
the API ``inference.detector_hailo`` uses, in HailoRT's layout, from a real model run.

* ``Hailo(hef)`` as a context manager with ``get_input_shape()`` (height, width, channels: the
  manifest's 640 x 640 x 3 of YOLOv8s), ``run(frame)`` and ``close()``.
* ``run`` returns what a HEF with NMS on the device returns through picamera2: a list with one
  float32 array per COCO class (80), each of rows ``[y0, x0, y1, x1, score]`` normalized. The rows
  come from the shared SSD MobileNet v1 run on the frame on the CPU (each anchor's best class,
  class-aware NMS, down to the HEF's score threshold), the 90 label ids folded onto COCO's 80.
* The rig decides the driver and library versions; when they differ, opening raises HailoRT's own
  message ("Driver version (A) is different from library version (B)"), as the real one does.
"""

from __future__ import annotations

import threading
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

HEF_SCORE_THRESHOLD = 0.2  # the Raspberry Pi YOLOv8s HEFs' NMS score threshold
INPUT_SHAPE = (640, 640, 3)


class HailoRTException(Exception):
    """What hailo_platform raises."""


@dataclass
class HailoRig:
    """What the fake Hailo shares with a test."""

    models_dir: Path = Path(__file__).resolve().parents[2] / "models"
    driver: str = "4.20.0"
    library: str = "4.20.0"
    fail_runs: bool = False  # the device fails every run (PCIe link down)
    recorded: list[list[np.ndarray]] | None = None  # play these outputs in turn instead of running the SSD
    opened: int = 0
    closed: int = 0
    runs: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    _ssd: Any = None

    def ssd(self) -> Any:
        if self._ssd is None:
            from ..config import InferenceConfig
            from ..models import load_manifest
            from . import create_detector

            self._ssd = create_detector(InferenceConfig(), self.models_dir, load_manifest(self.models_dir / "manifest.yaml"))
            labels = self._ssd.runner.model.labels or []
            self.coco80 = {i: k for k, i in enumerate(i for i, name in enumerate(labels) if name != "n/a")}
        return self._ssd


class Hailo:
    rig: HailoRig

    def __init__(self, hef_path: str, batch_size: int | None = None, output_type: str = "FLOAT32") -> None:
        rig = self.rig
        if rig.driver != rig.library:
            raise HailoRTException(f"CHECK failed - Driver version ({rig.driver}) is different from library version "
                                   f"({rig.library}); HAILO_INVALID_DRIVER_VERSION(76)")
        self.hef_path = hef_path
        self._ssd = rig.ssd()
        with rig.lock:
            rig.opened += 1

    def __enter__(self) -> Hailo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get_input_shape(self) -> tuple[int, int, int]:
        return INPUT_SHAPE

    def run(self, frame: np.ndarray) -> list[np.ndarray]:
        rig = self.rig
        if rig.fail_runs:
            raise HailoRTException("Failed to run inference: HAILO_TIMEOUT(4)")
        if frame.shape != INPUT_SHAPE or frame.dtype != np.uint8:
            raise HailoRTException(f"input of shape {frame.shape} {frame.dtype}, expected {INPUT_SHAPE} uint8")
        if rig.recorded is not None:
            with rig.lock:
                rig.runs += 1
                return rig.recorded[(rig.runs - 1) % len(rig.recorded)]
        w, h = self._ssd.runner.input_size
        self._ssd.runner.invoke(cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA))
        yx, scores, labels = self._ssd.all_classes(HEF_SCORE_THRESHOLD, 100)
        out = [np.zeros((0, 5), np.float32) for _ in range(80)]
        for c in np.unique(labels):
            k = rig.coco80.get(int(c))
            if k is not None:
                sel = labels == c
                out[k] = np.concatenate([yx[sel], scores[sel, None]], axis=1).astype(np.float32)
        with rig.lock:
            rig.runs += 1
        return out

    def describe(self) -> tuple[list[tuple[str, tuple[int, ...], str]], list[tuple[str, tuple[int, ...], str]]]:
        return [("yolov8s/input_layer1", INPUT_SHAPE, "UINT8")], [("yolov8s/yolov8_nms_postprocess", (80, 5, 100),
                                                                   "FLOAT32")]

    def close(self) -> None:
        with self.rig.lock:
            self.rig.closed += 1


def make_module(rig: HailoRig | None = None) -> types.ModuleType:
    """A module with ``Hailo`` bound to ``rig``, and the versions a board would report."""
    rig = rig or HailoRig()
    mod = types.ModuleType("hailo_fake")
    mod.Hailo = type("Hailo", (Hailo,), {"rig": rig})  # type: ignore[attr-defined]
    mod.library_version = lambda: rig.library  # type: ignore[attr-defined]
    mod.driver_version = lambda: rig.driver  # type: ignore[attr-defined]
    mod.rig = rig  # type: ignore[attr-defined]
    return mod
