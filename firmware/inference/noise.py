"""Seeded detector noise: what a real person detector does to the people in front of it.

Used two ways, with the same code and the same seed giving the same noise:
- on ground truth (the tracking benchmark, tests): true boxes in, detector-like boxes out;
- on the real detector's output (scene tests, the sim board with ``inference.detector.noise``):
  real detections made worse in the ways real deployments are (dimmer light, a cheaper camera).

What it does per frame, in this order:
- **bursts**: a box may start a run of 2-5 missed frames (a person behind a shelf, a turn the
  model does not know). Bursts follow the box that started them by overlap, so they need no
  identity and work on real detector output too;
- **misses**: each remaining box is dropped with probability ``miss``;
- **jitter**: each edge moves by a normal error of ``jitter`` times the box's width or height;
- **weak scores**: a share ``low`` of the boxes gets a score drawn from ``low_range`` (a person
  standing still, half hidden or far away);
- **false positives**: a Poisson number (mean ``false_positives``) of person-sized boxes at random
  places with scores from ``fp_range``;
- **echoes** (off by default): a weak second box beside a person, as SSD adds on a part of them or
  loosely around them (measured on the scripted scenes: 0.21 per person and frame, centre off by
  0.29 +- 0.42 box widths and -0.07 +- 0.17 heights, 1.35 +- 0.47 times as wide, 0.93 +- 0.28 as
  tall, scores 0.27-0.48);
- **static background** (off by default): ``static`` fixed places where a weak box comes and goes
  (scores 0.25-0.45, present 80 % of frames), as SSD sees people in signs, cones and railings
  (about 17 such boxes a frame on the plaza's background).

It never sees pixels and keeps no state beyond the active bursts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..tracking.tracker import iou_matrix


@dataclass(frozen=True)
class NoiseSpec:
    seed: int = 0
    miss: float = 0.12
    burst: float = 0.02  # per box and frame: chance that a burst of misses starts on it
    burst_frames: tuple[int, int] = (2, 5)
    jitter: float = 0.04
    low: float = 0.12
    low_range: tuple[float, float] = (0.3, 0.5)
    false_positives: float = 0.3  # mean per frame
    fp_range: tuple[float, float] = (0.3, 0.65)
    fp_height: tuple[float, float] = (0.12, 0.35)  # false positives' height, share of the frame height
    echo: float = 0.0  # per kept box and frame: chance of a weak echo box beside it
    static: int = 0  # fixed places of weak background boxes


class DetectionNoise:
    """Apply a NoiseSpec frame by frame. Boxes are normalized (x0, y0, x1, y1); ``aspect`` is the
    frame's width / height (for person-shaped false positives)."""

    def __init__(self, spec: NoiseSpec, aspect: float = 4 / 3) -> None:
        self.spec = spec
        self.aspect = aspect
        self.rng = np.random.default_rng(spec.seed)
        self._bursts: list[tuple[np.ndarray, int]] = []  # (box being missed, frames still to miss)
        h = self.rng.uniform(0.04, 0.2, size=spec.static)
        w = h * self.rng.uniform(0.3, 0.8, size=spec.static) / aspect
        x0, y0 = self.rng.uniform(0, 1 - w), self.rng.uniform(0, 1 - h)
        self._static = np.stack([x0, y0, x0 + w, y0 + h], axis=1).reshape(-1, 4)

    def reset(self) -> None:
        self._bursts.clear()

    def apply(self, boxes: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sp, rng = self.spec, self.rng
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        n = len(boxes)
        keep = np.ones(n, dtype=bool)
        bursts = []
        for box, left in self._bursts:  # an active burst swallows the box it follows
            if n:
                ov = iou_matrix(box[None], boxes)[0]
                j = int(np.argmax(ov))
                if ov[j] >= 0.3 and keep[j]:
                    keep[j] = False
                    box = boxes[j]
            if left > 1:
                bursts.append((box, left - 1))
        starts = keep & (rng.random(n) < sp.burst)
        lo, hi = sp.burst_frames
        for j in np.flatnonzero(starts).tolist():
            keep[j] = False
            length = int(rng.integers(lo, hi + 1))
            if length > 1:
                bursts.append((boxes[j], length - 1))
        self._bursts = bursts
        keep &= rng.random(n) >= sp.miss
        b, s = boxes[keep], scores[keep].copy()
        m = len(b)
        if m:
            wh = np.tile(b[:, 2:] - b[:, :2], 2)  # w, h, w, h
            b = b + rng.normal(0.0, sp.jitter, size=(m, 4)) * wh
            b[:, 2:] = np.maximum(b[:, 2:], b[:, :2] + 1e-4)
            weak = rng.random(m) < sp.low
            s[weak] = np.minimum(s[weak], rng.uniform(*sp.low_range, size=int(weak.sum())))
        if m and sp.echo > 0:
            src = b[rng.random(m) < sp.echo]
            if len(src):
                wh = src[:, 2:] - src[:, :2]
                c = (src[:, :2] + src[:, 2:]) / 2 + rng.normal([0.29, -0.07], [0.42, 0.17], size=(len(src), 2)) * wh
                size = wh * np.clip(rng.normal([1.35, 0.93], [0.47, 0.28], size=(len(src), 2)), 0.3, 3.0)
                b = np.concatenate([b, np.concatenate([c - size / 2, c + size / 2], axis=1)])
                s = np.concatenate([s, rng.uniform(0.25, 0.48, size=len(src))])
        if len(self._static):
            here = rng.random(len(self._static)) < 0.8
            b = np.concatenate([b, self._static[here]])
            s = np.concatenate([s, rng.uniform(0.25, 0.45, size=int(here.sum()))])
        k = int(rng.poisson(sp.false_positives))
        if k:
            h = rng.uniform(*sp.fp_height, size=k)
            w = h * rng.uniform(0.3, 0.5, size=k) / self.aspect
            x0 = rng.uniform(0.0, 1.0 - w)
            y0 = rng.uniform(0.0, 1.0 - h)
            b = np.concatenate([b, np.stack([x0, y0, x0 + w, y0 + h], axis=1)])
            s = np.concatenate([s, rng.uniform(*sp.fp_range, size=k)])
        return np.clip(b, 0.0, 1.0), s
