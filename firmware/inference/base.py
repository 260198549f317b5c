"""The detector interface: the base class owns ``detect`` (checks, resize, timing, the plausibility
filter and the detection cap that every backend shares); a backend implements ``_decode`` for its
model's outputs. Detections carry boxes, never pixels.

A detector reports every person candidate down to ``score_threshold`` (low, ~0.25): which of
them become tracks is the tracker's decision (ByteTrack's two score stages), not the detector's.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

import cv2
import numpy as np

from ..config import DetectorConfig
from .runner import ModelRunner


@dataclass(frozen=True, slots=True)
class Detections:
    """People found in one frame. Boxes are (x0, y0, x1, y1), normalized 0..1 to the frame."""

    boxes: np.ndarray  # float32 (n, 4)
    scores: np.ndarray  # float32 (n,)
    capped: bool  # more candidates than max_detections: there may be more people than boxes
    infer_ms: float  # preprocessing + model invoke + decoding, milliseconds

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def above(self, score: float) -> int:
        """How many boxes score at least ``score`` (e.g. the people a confident detector sees)."""
        return int(np.count_nonzero(self.scores >= score))

    def subset(self, keep: np.ndarray) -> Detections:
        return Detections(self.boxes[keep], self.scores[keep], self.capped, self.infer_ms)


def _not_contained(boxes: np.ndarray, limit: float) -> np.ndarray:
    """Indices of boxes (sorted best first) that neither lie inside a better kept box nor hold
    one, for ``limit`` or more of the smaller box's area: SSD often adds a box on a person's
    torso or legs, or a loose box around them, beside the box on the whole person, and
    overlap-based NMS keeps such pairs (their IoU is only the ratio of the areas)."""
    n = len(boxes)
    if n < 2:
        return np.arange(n)
    x0 = np.maximum(boxes[:, None, 0], boxes[None, :, 0])
    y0 = np.maximum(boxes[:, None, 1], boxes[None, :, 1])
    x1 = np.minimum(boxes[:, None, 2], boxes[None, :, 2])
    y1 = np.minimum(boxes[:, None, 3], boxes[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    nested = inter / np.maximum(np.minimum(area[:, None], area[None, :]), 1e-12) >= limit
    keep = np.ones(n, dtype=bool)
    for j in range(1, n):
        keep[j] = not (nested[:j, j] & keep[:j]).any()
    return np.flatnonzero(keep)


class Detector(ABC):
    """A person detector around one ModelRunner; used from a single worker thread."""

    def __init__(self, runner: ModelRunner, cfg: DetectorConfig) -> None:
        self.runner = runner
        self.cfg = cfg
        self._check_outputs()

    @classmethod
    def prepare(cls, data: bytes, where: str) -> bytes | None:
        """The model bytes this decoder needs loaded (e.g. with re-pointed graph outputs), or None
        to load the file as it is. ``where`` names the file for errors."""
        return None

    @property
    def name(self) -> str:
        return self.runner.model.key

    def detect(self, image: np.ndarray) -> Detections:
        """Run the model on an RGB uint8 frame of any size."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an RGB uint8 image (h, w, 3), got {image.dtype} {image.shape}")
        t0 = time.perf_counter()
        w, h = self.runner.input_size
        x = image if image.shape[:2] == (h, w) else cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        self.runner.invoke(x)
        boxes, scores = self._decode()
        boxes, scores = self._plausible(boxes, scores, image.shape[1] / image.shape[0])
        order = np.argsort(-scores, kind="stable")
        if self.cfg.max_contained is not None:
            order = order[_not_contained(boxes[order], self.cfg.max_contained)]
        capped = len(order) > self.cfg.max_detections
        order = order[: self.cfg.max_detections]
        return Detections(boxes[order], scores[order], capped, (time.perf_counter() - t0) * 1000.0)

    def _plausible(self, boxes: np.ndarray, scores: np.ndarray, frame_aspect: float) -> tuple[np.ndarray, np.ndarray]:
        """Clip to the frame and drop empty boxes and boxes too wide to be a person: SSD fires its
        largest anchors on whole groups of people (on vtest.avi, 'person' boxes 0.9 of the frame
        wide at scores up to 0.5)."""
        b = np.clip(boxes, 0.0, 1.0).astype(np.float32)
        bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        ok = (bw > 0) & (bh > 0) & (scores >= self.cfg.score_threshold)
        ok &= bw * frame_aspect <= self.cfg.max_aspect * bh  # width/height in pixels
        return b[ok], scores[ok].astype(np.float32)

    @abstractmethod
    def _check_outputs(self) -> None:
        """Raise ModelError when the model's outputs are not what this decoder reads."""

    @abstractmethod
    def _decode(self) -> tuple[np.ndarray, np.ndarray]:
        """The person candidates of the last invoke: boxes (n, 4) x0, y0, x1, y1 normalized to the
        frame and their scores (n,), overlapping duplicates already suppressed. The base class
        applies score_threshold, the plausibility filter and max_detections."""
