"""The detector interface: the base class owns ``detect`` (checks, resize, timing); a backend
implements ``_decode`` for its model's output format. Detections carry boxes, never pixels."""

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
    capped: bool  # the model's output limit was reached: there may be more people than boxes
    infer_ms: float  # preprocessing + model invoke + decoding, milliseconds

    def __len__(self) -> int:
        return int(self.scores.shape[0])


class Detector(ABC):
    """A person detector around one ModelRunner; used from a single worker thread."""

    def __init__(self, runner: ModelRunner, cfg: DetectorConfig) -> None:
        self.runner = runner
        self.cfg = cfg
        self._check_outputs()

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
        boxes, scores, capped = self._decode(self.runner.run(x))
        return Detections(boxes, scores, capped, (time.perf_counter() - t0) * 1000.0)

    @abstractmethod
    def _check_outputs(self) -> None:
        """Raise ModelError when the model's outputs are not what this decoder reads."""

    @abstractmethod
    def _decode(self, outputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, bool]:
        """Turn raw outputs into (boxes (n,4) x0,y0,x1,y1 normalized, scores (n,), capped)."""
