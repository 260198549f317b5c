"""The detector interface: the base class owns ``detect`` (checks, resize, timing, the plausibility
filter and the detection cap that every backend shares); a backend implements ``_decode`` for its
model's outputs. Detections carry boxes, never pixels.

Some networks run on the camera itself (the IMX500 of the Raspberry Pi AI Camera): their outputs
arrive with the frame (``SensorOutputs``), and there may be no pixels at all. ``detect`` takes
them in place of the image and a backend decodes them in ``_decode_outputs``; everything after
the decoding (score floor, plausibility, nesting, cap) is the same code for every backend.

A detector reports every person candidate down to ``score_threshold`` (low, ~0.25): which of
them become tracks is the tracker's decision (ByteTrack's two score stages), not the detector's.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Protocol

import cv2
import numpy as np

from ..config import DetectorConfig, InferenceConfig
from ..errors import InferenceError
from ..models import ResolvedModel
from .noise import DetectionNoise, NoiseSpec


class Runner(Protocol):
    """What a detector needs of the thing that runs its network: a TFLite interpreter
    (``runner.ModelRunner``) or an accelerator's own runtime (Hailo, the IMX500 sensor)."""

    model: ResolvedModel
    runtime: str
    delegate: str
    input_shape: tuple[int, ...]
    input_size: tuple[int, int]  # (width, height)

    def invoke(self, pixels: np.ndarray) -> None: ...


@dataclass(frozen=True)
class Devices:
    """Accelerator libraries to use instead of the real ones (the shipped stand-ins, in tests and on
    sim boards); None: the real library, imported when its backend is built."""

    hailo: Any = None  # a module like picamera2.devices with Hailo (inference/hailo_fake.py)


REAL_DEVICES = Devices()  # the real libraries


@dataclass(frozen=True, slots=True)
class SensorOutputs:
    """A network's output tensors for one frame, computed on the camera and delivered with it.

    ``to_frame`` maps the network's boxes, (n, 4) y0, x0, y1, x1 normalized to the network's input,
    onto the frame: (n, 4) x0, y0, x1, y1 normalized to the frame of ``size`` (width, height)."""

    tensors: tuple[np.ndarray, ...]
    size: tuple[int, int]
    to_frame: Any  # Callable[[np.ndarray], np.ndarray]
    kpi_ms: tuple[float, float] | None = None  # (network, DSP) milliseconds on the sensor, when reported
    intrinsics: Any = None  # the network's own description (box order, normalization), backend-specific


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
    """A person detector around one runner; used from a single worker thread."""

    #: The network runs on the camera: frames bring its outputs (``SensorOutputs``), not a job for us.
    on_camera: bool = False

    def __init__(self, runner: Runner, cfg: DetectorConfig) -> None:
        self.runner = runner
        self.cfg = cfg
        self._noise: DetectionNoise | None = None  # sim boards' inference.detector.noise, built on the first frame
        self._check_outputs()

    @classmethod
    def build(cls, model: ResolvedModel, cfg: InferenceConfig, devices: Devices = REAL_DEVICES) -> Detector:
        """The detector for a verified model: by default a TFLite interpreter (``ModelRunner``) on
        the bytes ``prepare`` returns; accelerators with their own runtime override this."""
        from .runner import ModelRunner

        content = cls.prepare(model.path.read_bytes(), str(model.path))
        runner = ModelRunner(model, runtime=cfg.runtime, num_threads=cfg.num_threads, delegate=cfg.delegate,
                             content=content)
        return cls(runner, cfg.detector)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the accelerator (a Hailo device); TFLite interpreters need nothing."""

    @classmethod
    def prepare(cls, data: bytes, where: str) -> bytes | None:
        """The model bytes this decoder needs loaded (e.g. with re-pointed graph outputs), or None
        to load the file as it is. ``where`` names the file for errors."""
        return None

    @property
    def name(self) -> str:
        return self.runner.model.key

    def detect(self, image: np.ndarray | None, outputs: SensorOutputs | None = None) -> Detections:
        """The people in one frame: run the model on an RGB uint8 frame of any size, or, for a
        network that ran on the camera, decode the ``outputs`` that came with the frame."""
        t0 = time.perf_counter()
        if outputs is not None:
            boxes, scores = self._decode_outputs(outputs)
            fw, fh = outputs.size
        elif image is None:
            raise ValueError("a frame with neither pixels nor sensor outputs")
        else:
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"expected an RGB uint8 image (h, w, 3), got {image.dtype} {image.shape}")
            w, h = self.runner.input_size
            x = image if image.shape[:2] == (h, w) else cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
            self.runner.invoke(x)
            boxes, scores = self._decode()
            fh, fw = image.shape[:2]
        boxes, scores = self._plausible(np.asarray(boxes, np.float32).reshape(-1, 4),
                                        np.asarray(scores, np.float32).reshape(-1), fw / fh)
        if self.cfg.noise is not None:
            boxes, scores = self._worsen(boxes, scores, fw / fh)
        order = np.argsort(-scores, kind="stable")
        if self.cfg.max_contained is not None:
            order = order[_not_contained(boxes[order], self.cfg.max_contained)]
        capped = len(order) > self.cfg.max_detections
        order = order[: self.cfg.max_detections]
        return Detections(boxes[order], scores[order], capped, (time.perf_counter() - t0) * 1000.0)

    def _worsen(self, boxes: np.ndarray, scores: np.ndarray, frame_aspect: float) -> tuple[np.ndarray, np.ndarray]:
        """The configured seeded noise on this frame's detections (then the same filters again)."""
        if self._noise is None:
            n = self.cfg.noise
            assert n is not None
            spec = NoiseSpec(seed=n.seed, miss=n.miss, burst=n.burst, jitter=n.jitter, low=n.low,
                             false_positives=n.false_positives)
            self._noise = DetectionNoise(spec, frame_aspect)
        b, s = self._noise.apply(boxes, scores)
        return self._plausible(b, s, frame_aspect)

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

    def _decode_outputs(self, outputs: SensorOutputs) -> tuple[np.ndarray, np.ndarray]:
        """The person candidates in a network's outputs that came with the frame (as ``_decode``)."""
        raise InferenceError(f"detector {self.name} runs on pixels, but the camera sent a network's outputs "
                             "instead: use a board config whose detector matches its camera")

    @abstractmethod
    def _decode(self) -> tuple[np.ndarray, np.ndarray]:
        """The person candidates of the last invoke: boxes (n, 4) x0, y0, x1, y1 normalized to the
        frame and their scores (n,), overlapping duplicates already suppressed. The base class
        applies score_threshold, the plausibility filter and max_detections."""
