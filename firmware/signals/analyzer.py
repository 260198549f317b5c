"""Per-frame analysis on the inference thread: detect, track, pose (within a budget), signals.

``FrameAnalyzer.process`` is the only place a frame's pixels meet the models; what it returns
(boxes, vectors, timings) holds no pixels. It runs on the pipeline's single inference thread.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from ..config import Config, TrackingConfig, ZoneConfig
from ..inference import Detections, Detector
from ..inference.base import SensorOutputs
from ..inference.pose import PoseEstimator
from ..tracking.counting import Counter, CountFrame
from ..tracking.tracker import Track, Tracker, TrackerConfig
from ..tracking.zones import ZoneMap
from .engine import SignalEngine, Vector
from .orientation import body_facing


@dataclass(frozen=True, slots=True)
class FrameResult:
    detections: Detections
    vectors: list[Vector]
    tracks: int  # confirmed tracks matched in this frame
    model_ms: float  # detector + pose invokes (preprocessing included)
    total_ms: float  # everything in process()
    pose_invokes: int
    # the confirmed tracks of this frame (boxes and random ids only), as they were in this frame: the
    # tracker goes on with the next frame while observers of this one run
    tracked: tuple[Track, ...] = ()
    confident: int = 0  # detections at or above tracking.high_score (people the detector is sure of)
    counts: CountFrame = field(default_factory=CountFrame)  # line crossings, queue waits, occupancy (numbers only)
    size: tuple[int, int] = (0, 0)  # the frame's width and height in pixels (the boxes' scale)
    # the keypoints pose gave this frame, per track id: (17, 3) x, y normalized to the frame and the score
    # (COCO-17 order, inference/pose.py); only the tracks in this frame's pose budget
    poses: tuple[tuple[str, np.ndarray], ...] = ()


def tracker_config(t: TrackingConfig) -> TrackerConfig:
    """The tracker's settings from the board config's tracking section."""
    return TrackerConfig(high_score=t.high_score, low_score=t.low_score, new_track_score=t.new_track_score,
                         min_hits=t.min_hits, min_age_s=t.min_age_s, confirm_within_s=t.confirm_within_s,
                         max_lost_s=t.max_lost_s)


class FrameAnalyzer:
    def __init__(self, cfg: Config, detector: Detector | None, pose: PoseEstimator | None) -> None:
        self.cfg = cfg
        self.detector = detector
        self.pose = pose if cfg.signals.pose != "off" else None
        self.tracker = Tracker(tracker_config(cfg.tracking))
        self.engine: SignalEngine | None = None  # built at the first frame, when its size is known
        self.counter: Counter | None = None  # lines, occupancy, queues (with the engine)
        self._size: tuple[int, int] | None = None
        # the zone each vector names, as an index into the board's zone names of this run (Service.zone_names),
        # which only grow when zones are edited: vectors already held keep naming the zone they were made in
        self.zone_ids: list[int] | None = None  # None: the config's own order

    def set_zones(self, zones: Sequence[ZoneConfig], ids: Sequence[int]) -> None:
        """New zones from the next frame on (on the analysis thread, between frames): the signal engine
        starts again with them, so every stay and pending window is dropped and new tokens begin."""
        self.cfg = self.cfg.model_copy(update={"zones": list(zones)})
        self.zone_ids = list(ids)
        self.engine = None

    def reset(self) -> int:
        """Forget every track, pose and pending window (opt-out): nothing carries over.
        Returns how many tracks were forgotten."""
        n = len(self.tracker.tracks)
        self.tracker.reset()
        if self.engine is not None:
            n = max(n, self.engine.reset())
        if self.counter is not None:
            self.counter.reset()
        return n

    def detect(self, image: np.ndarray | None, outputs: SensorOutputs | None = None) -> Detections:
        """Stage one of a frame: the detector alone (the pipeline runs it on its own thread), on the
        frame's pixels or on the detector outputs the camera computed for it."""
        if self.detector is None:
            raise RuntimeError("no detector loaded")
        return self.detector.detect(image, outputs)

    def process(self, image: np.ndarray | None, t: float, dets: Detections | None = None, *,
                size: tuple[int, int] | None = None) -> FrameResult:
        """Everything for one frame; ``dets``: its detections when stage one already ran. Without
        pixels (a camera that sent only its detections) ``size`` is the frame's (width, height)
        and pose is skipped."""
        t0 = time.perf_counter()
        before = 0.0 if dets is None else dets.infer_ms  # stage one's time, counted in total_ms
        if image is not None:
            h, w = image.shape[:2]
        elif size is not None and dets is not None:
            w, h = size
        else:
            raise ValueError("a frame without pixels needs its size and its detections")
        if self.engine is None or self._size != (w, h):
            self._size = (w, h)
            zones = ZoneMap(self.cfg.zones, self.cfg.ground_plane, w, h)
            self.engine = SignalEngine(self.cfg.signals, zones, self.cfg.privacy.token_rotation_s)
            self.counter = Counter(zones)
        if dets is None:
            dets = self.detect(image)
        model_ms = dets.infer_ms
        scale = np.array([w, h, w, h], dtype=np.float64)
        if self.engine.zones.excluded and len(dets):
            # people standing in an excluded zone (staff areas) are dropped before the tracker:
            # no track, no signal, no count
            feet = np.stack([(dets.boxes[:, 0] + dets.boxes[:, 2]) / 2 * w, dets.boxes[:, 3] * h], axis=1)
            keep = np.array([not self.engine.zones.in_excluded(p) for p in feet], dtype=bool)
            if not keep.all():
                dets = dets.subset(keep)
        tracks = self.tracker.update(dets.boxes * scale, dets.scores, t, (w, h))
        invokes = 0
        poses: tuple[tuple[str, np.ndarray], ...] = ()
        if self.pose is not None and tracks and image is not None:
            chosen = self.engine.pose_candidates(tracks, t, self.cfg.signals.pose_budget)
            if chosen:
                kps = self.pose.estimate(image, np.array([tr.det_box for tr in chosen]) / scale)
                model_ms += self.pose.last_ms
                invokes = len(chosen)
                poses = tuple((tr.tid, np.array(kp, dtype=np.float32)) for tr, kp in zip(chosen, kps, strict=True))
                for tr, kp in zip(chosen, kps, strict=True):
                    facing, conf = body_facing(kp, float(tr.det_box[3] - tr.det_box[1]), scale=(w, h),
                                               min_box_px=self.cfg.signals.pose_min_box_px)
                    self.engine.set_facing(tr.tid, t, facing, conf)
        vectors = self.engine.step(t, tracks, self.tracker.ended, dets.capped)
        assert self.counter is not None
        counts = self.counter.step(t, tracks, self.tracker.ended, self.tracker.tracks)
        if self.zone_ids is not None:
            ids = self.zone_ids
            vectors = [v if v.zone < 0 else replace(v, zone=ids[v.zone]) for v in vectors]
        return FrameResult(dets, vectors, len(tracks), model_ms, before + (time.perf_counter() - t0) * 1000.0, invokes,
                           tuple(tr.snapshot() for tr in tracks), dets.above(self.tracker.cfg.high_score), counts, (w, h),
                           poses)
