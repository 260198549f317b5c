"""Pose estimators behind their own small registry, keyed by the manifest's ``decoder`` string.

The base class owns the public ``estimate`` (input checks, timing); a backend implements
``_estimate``. Every backend answers the same question: for each person box in a frame, where are
that person's 17 COCO keypoints? The result is an ``(n, 17, 3)`` float32 array of
``(x, y, score)`` with x and y normalized 0..1 to the full frame, in COCO-17 order:

    0 nose, 1/2 left/right eye, 3/4 left/right ear, 5/6 left/right shoulder, 7/8 elbows,
    9/10 wrists, 11/12 hips, 13/14 knees, 15/16 ankles (the person's own left/right).

Scores are the model's confidence, not a visibility flag: MoveNet places every keypoint even when
it is occluded; 0.3 is the usual cut-off. Keypoints carry no pixels, so they may leave inference.
"""

from __future__ import annotations

import importlib
import time
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from ..errors import ModelError
from ..models import Manifest, resolve_model
from .runner import ModelRunner

NUM_KEYPOINTS = 17
KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip

POSE_ESTIMATORS = {
    "movenet": "firmware.inference.pose_movenet:MoveNetPose",
    "posenet": "firmware.inference.pose_posenet:PoseNetMulti",
}


def check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise ValueError(f"expected an RGB uint8 image (h, w, 3), got {getattr(image, 'dtype', type(image))} {shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"empty image {image.shape}")


def check_boxes(boxes: np.ndarray) -> np.ndarray:
    """Boxes as float32 (n, 4) x0, y0, x1, y1 normalized; finite, else ValueError."""
    b = np.asarray(boxes, dtype=np.float32)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"expected boxes of shape (n, 4) (x0, y0, x1, y1 normalized), got {b.shape}")
    if not np.isfinite(b).all():
        raise ValueError("boxes contain NaN or infinity")
    return b


class PoseEstimator(ABC):
    """Keypoints for the people in a frame, around one ModelRunner; used from a single worker thread."""

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner
        self.last_ms = 0.0  # the last estimate(): preprocessing + invokes + decoding, milliseconds
        self._check_outputs()

    @property
    def name(self) -> str:
        return self.runner.model.key

    def estimate(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Keypoints (n, 17, 3) float32 (x, y, score), frame-normalized, one row per box in ``boxes``.

        ``image`` is the full RGB uint8 frame; ``boxes`` are (n, 4) x0, y0, x1, y1 normalized 0..1.
        """
        check_image(image)
        b = check_boxes(boxes)
        t0 = time.perf_counter()
        out = self._estimate(image, b) if len(b) else np.zeros((0, NUM_KEYPOINTS, 3), np.float32)
        self.last_ms = (time.perf_counter() - t0) * 1000.0
        return out

    @abstractmethod
    def _check_outputs(self) -> None:
        """Raise ModelError when the model's outputs are not what this decoder reads."""

    @abstractmethod
    def _estimate(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """(n, 17, 3) float32 keypoints for n >= 1 validated boxes."""


def create_pose_estimator(
    model_key: str,
    models_dir: Path,
    manifest: Manifest,
    *,
    runtime: str = "auto",
    threads: int = 2,
    delegate: str = "cpu",
) -> PoseEstimator:
    """Build a pose estimator for a manifest model: verify the file, load it, check its contract."""
    model = resolve_model(model_key, models_dir, manifest)
    if model.entry.task not in ("pose_single", "pose_multi"):
        raise ModelError(
            f"{model_key!r} is a {model.entry.task} model; pose estimation needs a pose_single or pose_multi model "
            "such as movenet_lightning"
        )
    target = POSE_ESTIMATORS.get(model.entry.decoder)
    if target is None:
        raise ModelError(f"model {model_key!r} uses decoder {model.entry.decoder!r}; known: {', '.join(POSE_ESTIMATORS)}")
    module, cls = target.split(":")
    runner = ModelRunner(model, runtime=runtime, num_threads=threads, delegate=delegate)
    estimator: PoseEstimator = getattr(importlib.import_module(module), cls)(runner)
    return estimator
