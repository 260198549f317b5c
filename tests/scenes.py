"""Run the real service on a scripted scene (in process, as fast as the models go) and collect,
per frame, the scene's ground truth, the tracker's confirmed tracks and the vectors."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from firmware.app import build_service
from firmware.camera.scene import SCENES_DIR, SceneRenderer, load_scene
from firmware.signals.engine import EXIT_NAMES, Vector
from tests.conftest import sim_config


@dataclass
class SceneRun:
    name: str
    fps: float
    size: tuple[int, int]
    truth: list[np.ndarray] = field(default_factory=list)  # per frame (n, 5): actor, x0, y0, x1, y1 normalized
    visible: list[np.ndarray] = field(default_factory=list)  # per frame (n,): share of each truth box in the frame
    tracks: list[list[tuple[str, np.ndarray]]] = field(default_factory=list)  # per frame (tid, box pixels)
    detections: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # per frame (boxes px, scores)
    vectors: list[Vector] = field(default_factory=list)
    actor_names: list[str] = field(default_factory=list)
    zone_names: list[str] = field(default_factory=list)
    tokens: dict[str, list[str]] = field(default_factory=dict)  # track id -> the session tokens its vectors carried
    t0: float = 0.0  # the frame timeline at scene time 0 (windows are aligned on the timeline, not the scene)
    counts: list = field(default_factory=list)  # per frame: the counter's CountFrame (crossings, waits, occupancy)
    phase: float = 0.0  # where scene time 0 fell in the signal windows: t0 modulo window_s

    def track_of(self, actor: int) -> list[str]:
        """Track ids matched (IoU >= 0.5) to ``actor``'s truth box, by frame, most common first."""
        counts: dict[str, int] = {}
        w, h = self.size
        for truth, tracks in zip(self.truth, self.tracks, strict=True):
            for row in truth[truth[:, 0] == actor]:
                gt = row[1:] * [w, h, w, h]
                for tid, box in tracks:
                    if iou(gt, box) >= 0.5:
                        counts[tid] = counts.get(tid, 0) + 1
        return sorted(counts, key=lambda k: -counts[k])

    def vectors_of(self, tid: str) -> list[Vector]:
        toks = set(self.tokens.get(tid, ()))
        return sorted((v for v in self.vectors if v.token in toks), key=lambda v: v.t_start)

    def exits(self, tid: str) -> list[str]:
        return [EXIT_NAMES[v.exit] for v in self.vectors_of(tid) if v.exit]

    def scores_of(self, actor: int, t0: float, t1: float, min_iou: float = 0.5) -> list[float]:
        """The detector's best score on ``actor`` in every frame from t0 to t1 seconds of scene
        time (0 where it found nothing there): boxes with IoU >= ``min_iou`` with the actor's
        truth box that overlap no other actor more."""
        w, h = self.size
        out = []
        for i, (truth, (boxes, scores)) in enumerate(zip(self.truth, self.detections, strict=True)):
            if not t0 <= i / self.fps <= t1:
                continue
            gts = {int(r[0]): r[1:] * [w, h, w, h] for r in truth}
            if actor not in gts:
                continue
            best = 0.0
            for b, s in zip(boxes, scores, strict=True):
                ious = {a: iou(g, b) for a, g in gts.items()}
                if ious[actor] >= min_iou and max(ious, key=ious.__getitem__) == actor:
                    best = max(best, float(s))
            out.append(best)
        return out


class PhasedClock:
    """The monotonic clock, shifted so that its first reading (the scene's first frame) falls
    ``phase`` seconds after a boundary of the ``window_s`` grid the signal windows use."""

    def __init__(self, phase: float, window_s: float) -> None:
        self.phase, self.window_s = phase, window_s
        self.offset: float | None = None

    def __call__(self) -> float:
        now = time.monotonic()
        if self.offset is None:
            self.offset = math.ceil(now / self.window_s + 1.0) * self.window_s + self.phase - now
        return now + self.offset


def iou(a: np.ndarray, b: np.ndarray) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _xyxy(b: list[float]) -> np.ndarray:
    return np.array([b[0], b[1], b[0] + b[2], b[1] + b[3]])


def scene_path(name: str | Path) -> Path:
    """A scene of firmware/camera/scenes by name, or a scene file."""
    return name if isinstance(name, Path) else SCENES_DIR / f"{name}.yaml"


async def _run(name: str | Path, overrides: dict | None, phase: float) -> SceneRun:
    path = scene_path(name)
    scene = load_scene(path)
    loaded = sim_config({"camera": {"type": "synthetic", "scene": str(path), "pacing": "fast"}, **(overrides or {})})
    # Signal windows are aligned to the clock (floor(t / window_s)): the scene starts at ``phase``
    # into a window, so a test can run the same scene at every phase of the window grid.
    window = loaded.config.signals.window_s
    svc, _ = await build_service(loaded, token_env={"CUECAM_API_TOKEN": "x" * 24}, camera_clock=PhasedClock(phase, window))
    run = SceneRun(str(name), scene.fps, scene.size, actor_names=[a.name for a in scene.spec.actors],
                   zone_names=[z.name for z in loaded.config.zones])
    renderer = SceneRenderer(scene)  # cached sprites: cheap
    w, h = scene.size

    def visibility(t: float) -> np.ndarray:
        out = []
        for _, (x0, y0, x1, y1) in sorted(renderer.boxes_at(t)):
            inside = max(0, min(x1, w) - max(x0, 0)) * max(0, min(y1, h) - max(y0, 0))
            if inside > 0:
                out.append(inside / ((x1 - x0) * (y1 - y0)))
        return np.array(out)
    t0: list[float] = []

    def observe(frame_id: int, t_mono: float, res) -> None:
        if not t0:
            t0.append(t_mono)
            run.t0 = t_mono - (frame_id - 1) / scene.fps
            run.phase = run.t0 % window
        t = (frame_id - 1) / scene.fps
        run.truth.append(renderer.truth_at(t))
        run.visible.append(visibility(t))
        run.tracks.append([(tr.tid, np.array(tr.det_box, dtype=np.float64)) for tr in res.tracked])
        run.detections.append((res.detections.boxes.astype(np.float64) * [w, h, w, h], res.detections.scores.astype(np.float64)))
        engine = svc.analyzer.engine
        for tr in res.tracked:  # test-only bookkeeping: which session token each track was given
            st = engine.states.get(tr.tid) if engine is not None else None
            if st is not None and st.token not in run.tokens.setdefault(tr.tid, []):
                run.tokens[tr.tid].append(st.token)
        run.vectors.extend(res.vectors)
        run.counts.append(res.counts)

    svc.pipeline.observers.append(observe)
    await svc.start()
    assert svc.pipeline_task is not None
    await asyncio.wait_for(asyncio.shield(svc.pipeline_task), timeout=600)  # the source ends, the queue drains
    assert svc.pipeline.stats.state == "ended", svc.pipeline.stats.error
    await svc.stop()
    run.vectors.extend(svc.analyzer.engine.flush() if svc.analyzer.engine else [])
    assert len(run.truth) == scene.frames
    return run


def run_scene(name: str | Path, overrides: dict | None = None, phase: float = 0.0) -> SceneRun:
    """``name`` through the whole service, its first frame ``phase`` seconds into a signal window."""
    return asyncio.run(_run(name, overrides, phase))


def mot_summary(run: SceneRun, min_visible: float = 0.5) -> dict[str, float]:
    """CLEAR-MOT and identity metrics (motmetrics) of the tracker against the scene's truth.

    People less than ``min_visible`` inside the frame (walking in or out at an edge) are
    "don't care", as in the MOT benchmarks: they are not counted as misses, and a track box on
    one (IoU >= 0.5) is not counted as a false positive."""
    import motmetrics as mm

    acc = mm.MOTAccumulator(auto_id=True)
    w, h = run.size
    numbers: dict[str, int] = {}  # motmetrics wants numeric ids
    for truth_all, vis, tracks_all in zip(run.truth, run.visible, run.tracks, strict=True):
        truth = truth_all[vis >= min_visible]
        ignored = [row[1:] * [w, h, w, h] for row in truth_all[vis < min_visible]]
        tracks = [(tid, b) for tid, b in tracks_all if not any(iou(g, b) >= 0.5 for g in ignored)]
        gt_ids = [int(a) for a in truth[:, 0]]
        gt = [[x0 * w, y0 * h, (x1 - x0) * w, (y1 - y0) * h] for _, x0, y0, x1, y1 in truth]
        hyp_ids = [numbers.setdefault(tid, len(numbers)) for tid, _ in tracks]
        hyp = [[b[0], b[1], b[2] - b[0], b[3] - b[1]] for _, b in tracks]
        # 1 - IoU, NaN (no match possible) below IoU 0.5; motmetrics' own iou_matrix needs numpy < 2
        dist = np.array([[1.0 - iou(_xyxy(g), _xyxy(k)) for k in hyp] for g in gt]).reshape(len(gt), len(hyp))
        dist[dist > 0.5] = np.nan
        acc.update(gt_ids, hyp_ids, dist)
    mh = mm.metrics.create()
    s = mh.compute(acc, metrics=["mota", "idf1", "num_switches", "num_false_positives", "num_misses", "num_objects"],
                   name=run.name)
    return {k: float(s[k].iloc[0]) for k in s.columns}
