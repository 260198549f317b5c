"""Seeded pedestrian sequences with known truth, for scoring trackers (tests, `make bench-tracking`).

A sequence is a shop floor seen from a ceiling camera at an angle (768x576, people taller near
the bottom): people walk through, stop at one of three displays for 4-20 s and walk on, walk in
pairs side by side, and cross each other. Time is in seconds and frames come at ``fps`` (boards
run 8-12 fps). For every frame it gives the true boxes with each person's visibility (the share
of the box not hidden by someone nearer the camera, nor outside the frame).

``detector_input`` turns the truth into what a person detector would report:
- people less than half visible are not detected (a real detector misses them);
- the others get a score from ``base_score``, lower when partly hidden, and some people get a
  weak score for as long as they stand still (``still_low``: a shopper facing a shelf often
  scores 0.35-0.5 throughout the stop);
- then ``firmware.inference.noise.DetectionNoise`` adds bursts of misses, random misses, jitter,
  weak scores and false positives, seeded.

``write_mot`` writes the truth and a tracker's output as MOT Challenge text files (frame, id,
x, y, w, h in pixels, conf, class, visibility): people under 30 % visible, or less than half in
the frame, are written as distractors (class 8), which TrackEval neither asks a tracker to find
nor counts against it when it does.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from firmware.inference.noise import DetectionNoise, NoiseSpec

W, H = 768, 576
DISPLAYS = ((0.25, 0.62), (0.55, 0.5), (0.8, 0.75))  # in front of three displays...
SPOTS = (-1.3, 0.0, 1.3)  # ...three places to stand, this many box widths apart
MIN_VISIBLE = 0.3  # less visible than this (or less than half in the frame): a distractor in the truth
DETECT_VISIBLE = 0.5  # less visible than this: the detector does not see them


def box_height(y: float) -> float:
    """Normalized box height of a person whose feet are at normalized y (fake perspective)."""
    return 0.12 + 0.26 * y


def box_at(x: float, y: float, width_ratio: float = 0.4, height: tuple[float, float] | None = None) -> np.ndarray:
    """A person's box with feet at (x, y); ``height``: (at y = 0, at y = 1) normalized instead of
    box_height's perspective."""
    h = box_height(y) if height is None else height[0] + (height[1] - height[0]) * y
    w = h * H * width_ratio / W
    return np.array([x - w / 2, y - h, x + w / 2, y])


@dataclass
class Person:
    pid: int
    path: np.ndarray  # (k, 3): t, feet x, feet y (normalized); piecewise linear
    width_ratio: float = 0.4
    still_low: bool = False  # scores weak while standing still
    height: tuple[float, float] | None = None  # normalized box height at y = 0 and y = 1 (None: box_height)

    def feet(self, t: float) -> tuple[float, float] | None:
        p = self.path
        if t < p[0, 0] or t > p[-1, 0]:
            return None
        return float(np.interp(t, p[:, 0], p[:, 1])), float(np.interp(t, p[:, 0], p[:, 2]))

    def standing(self, t: float, dt: float = 0.5) -> bool:
        a, b = self.feet(max(t - dt, self.path[0, 0])), self.feet(min(t + dt, self.path[-1, 0]))
        return a is not None and b is not None and math.hypot(b[0] - a[0], b[1] - a[1]) < 0.01


@dataclass
class Frame:
    t: float
    ids: np.ndarray  # (n,) person ids
    boxes: np.ndarray  # (n, 4) normalized x0, y0, x1, y1 (unclipped)
    visible: np.ndarray  # (n,) share of the box visible (not occluded, inside the frame)
    standing: np.ndarray  # (n,) bool


@dataclass
class Sequence:
    name: str
    fps: float
    people: list[Person]
    frames: list[Frame] = field(default_factory=list)


def _walk(points: list[tuple[float, float]], t0: float, speed_bh_s: float,
          stops: dict[int, float] | None = None) -> np.ndarray:
    """Timed waypoints along ``points`` at ``speed_bh_s`` box heights per second, standing
    ``stops[i]`` seconds at point i."""
    rows = [(t0, *points[0])]
    t = t0
    for i, (a, b) in enumerate(itertools.pairwise(points)):
        if stops and i in stops:
            t += stops[i]
            rows.append((t, *a))
        bh = box_height((a[1] + b[1]) / 2)
        dist = math.hypot((b[0] - a[0]) * W / H, b[1] - a[1]) / bh
        t += dist / speed_bh_s
        rows.append((t, *b))
    return np.array(rows)


def _edge_point(rng: np.random.Generator) -> tuple[float, float]:
    side = rng.integers(0, 3)
    if side == 0:
        return -0.06, float(rng.uniform(0.45, 0.97))
    if side == 1:
        return 1.06, float(rng.uniform(0.45, 0.97))
    return float(rng.uniform(0.1, 0.9)), 0.3  # far end of the floor


def generate(name: str, seed: int, *, duration: float = 60.0, fps: float = 10.0, rate_per_min: float = 20.0,
             stop_share: float = 0.4, pair_share: float = 0.2, still_low_share: float = 0.5) -> Sequence:
    """People arriving at ``rate_per_min`` over ``duration`` seconds; a ``stop_share`` of them
    stop at a display, a ``pair_share`` arrive as pairs walking side by side."""
    rng = np.random.default_rng(seed)
    people: list[Person] = []
    taken: dict[tuple[int, int], float] = {}  # (display, spot) -> until when someone stands there
    t = float(rng.exponential(60.0 / rate_per_min))
    while t < duration - 3.0:
        start, end = _edge_point(rng), _edge_point(rng)
        while abs(start[0] - end[0]) < 0.3 and abs(start[1] - end[1]) < 0.3:
            end = _edge_point(rng)
        speed = float(rng.uniform(0.5, 1.0))
        mid = (float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.45, 0.9)))
        stops = None
        ratio = float(rng.uniform(0.33, 0.45))
        if rng.random() < stop_share:  # to a free place in front of a display (nobody stands inside anyone)
            d = int(rng.integers(0, len(DISPLAYS)))
            free = [k for k in range(len(SPOTS)) if taken.get((d, k), -1.0) < t]
            if free:
                k = free[int(rng.integers(0, len(free)))]
                x, y = DISPLAYS[d]
                mid = (x + SPOTS[k] * 0.4 * box_height(y) * H / W, y + float(rng.normal(0, 0.01)))
                stops = {1: float(rng.uniform(4.0, 20.0))}
                taken[(d, k)] = t + 60.0  # until long after they have left (arrival times vary)
        path = _walk([start, mid, end], t, speed, stops)
        if stops:
            taken[(d, k)] = float(path[-1, 0])
        people.append(Person(len(people), path, ratio, still_low=stops is not None and rng.random() < still_low_share))
        if rng.random() < pair_share:  # a companion half a box width beside them
            off = np.array([0.0, ratio * box_height(mid[1]) * H / W * 1.1, 0.0])
            people.append(Person(len(people), path + off, float(rng.uniform(0.33, 0.45))))
        t += float(rng.exponential(60.0 / rate_per_min))
    seq = Sequence(name, fps, people)
    for k in range(int(duration * fps)):
        seq.frames.append(_frame(people, k / fps))
    return seq


def from_scene(path: Path, still_low: tuple[int, ...] = ()) -> Sequence:
    """The truth of a scripted scene (firmware/camera/scenes): its actors' paths and heights, no
    pixels; ``still_low``: the actors the detector scores weakly while they stand."""
    from firmware.camera.scene import load_scene

    scene = load_scene(path)
    h = scene.size[1]
    people = [Person(i, np.asarray(a.waypoints, dtype=np.float64), still_low=i in still_low,
                     height=(a.height.at_top / h, a.height.at_bottom / h))
              for i, a in enumerate(scene.spec.actors)]
    seq = Sequence(f"scene-{path.stem}", scene.fps, people)
    for k in range(scene.frames):
        seq.frames.append(_frame(people, k / scene.fps))
    return seq


def _visibility(boxes: np.ndarray) -> np.ndarray:
    """Share of each box neither outside the frame nor behind a nearer box (feet lower = nearer),
    sampled on a 16x16 grid per box."""
    n = len(boxes)
    out = np.zeros(n)
    g = (np.arange(16) + 0.5) / 16
    for i in range(n):
        x = boxes[i, 0] + g * (boxes[i, 2] - boxes[i, 0])
        y = boxes[i, 1] + g * (boxes[i, 3] - boxes[i, 1])
        xx, yy = np.meshgrid(x, y)
        seen = (xx >= 0) & (xx <= 1) & (yy >= 0) & (yy <= 1)
        for j in range(n):
            if j != i and boxes[j, 3] > boxes[i, 3]:
                seen &= ~((xx >= boxes[j, 0]) & (xx <= boxes[j, 2]) & (yy >= boxes[j, 1]) & (yy <= boxes[j, 3]))
        out[i] = seen.mean()
    return out


def _frame(people: list[Person], t: float) -> Frame:
    ids, boxes, standing = [], [], []
    for p in people:
        f = p.feet(t)
        if f is None:
            continue
        b = box_at(*f, p.width_ratio, p.height)
        if b[2] <= 0 or b[0] >= 1 or b[3] <= 0 or b[1] >= 1:
            continue
        ids.append(p.pid)
        boxes.append(b)
        standing.append(p.standing(t))
    arr = np.array(boxes).reshape(-1, 4)
    return Frame(t, np.array(ids, dtype=np.int64), arr, _visibility(arr), np.array(standing, dtype=bool))


def detector_input(seq: Sequence, spec: NoiseSpec) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per frame (boxes (n, 4) normalized, scores (n,)): the truth as a detector would report it."""
    rng = np.random.default_rng(spec.seed + 7919)
    noise = DetectionNoise(spec, aspect=W / H)
    low = {p.pid for p in seq.people if p.still_low}
    base = {p.pid: float(rng.uniform(0.6, 0.95)) for p in seq.people}
    out = []
    for fr in seq.frames:
        keep = fr.visible >= DETECT_VISIBLE
        scores = []
        for pid, vis, still in zip(fr.ids[keep], fr.visible[keep], fr.standing[keep], strict=True):
            s = base[int(pid)] * (0.6 + 0.4 * min(1.0, (vis - DETECT_VISIBLE) / 0.4)) + float(rng.normal(0, 0.04))
            if still and int(pid) in low:
                s = float(rng.uniform(0.35, 0.5))
            scores.append(min(max(s, 0.01), 0.99))
        out.append(noise.apply(np.clip(fr.boxes[keep], 0, 1), np.array(scores)))
    return out


def _mot_rows(frame_no: int, ids: Iterable[int], boxes: np.ndarray, conf: Iterable[float], cls: Iterable[int],
              vis: Iterable[float]) -> list[str]:
    rows = []
    for i, b, c, k, v in zip(ids, boxes, conf, cls, vis, strict=True):
        x0, y0, x1, y1 = b[0] * W, b[1] * H, b[2] * W, b[3] * H
        rows.append(f"{frame_no},{i},{x0:.2f},{y0:.2f},{x1 - x0:.2f},{y1 - y0:.2f},{c:g},{k},{v:.3f}")
    return rows


def write_truth(seq: Sequence, path: Path) -> None:
    """MOT ground truth: pedestrians (class 1) and the people no tracker can be asked to find
    (distractors, class 8)."""
    rows = []
    for n, fr in enumerate(seq.frames, start=1):
        clipped = np.clip(fr.boxes, 0, 1)
        area = (fr.boxes[:, 2] - fr.boxes[:, 0]) * (fr.boxes[:, 3] - fr.boxes[:, 1])
        inside = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1]) / np.maximum(area, 1e-9)
        cls = np.where((fr.visible >= MIN_VISIBLE) & (inside >= 0.5), 1, 8)
        rows += _mot_rows(n, fr.ids + 1, clipped, [1] * len(fr.ids), cls, fr.visible)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")


def write_tracks(frames: list[tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    """MOT tracker output: per frame (ids (n,), boxes (n, 4) normalized)."""
    rows = []
    for n, (ids, boxes) in enumerate(frames, start=1):
        rows += _mot_rows(n, ids, np.asarray(boxes).reshape(-1, 4), [1] * len(ids), [-1] * len(ids), [-1] * len(ids))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + ("\n" if rows else ""))
