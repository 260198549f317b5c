"""Anonymous multi-person tracking: ByteTrack-style two-stage association over a constant-velocity
Kalman filter, with time measured in seconds (not frames) so dropped frames and other frame
rates change nothing.

Tracks carry only geometry (boxes in pixels, velocities) and an ephemeral random id; no pixels,
no appearance features, nothing that could recognise a person again. Ids come from ``secrets``
and are never reused. A track is *confirmed* after it has been matched for ``min_age_s``; only
confirmed tracks are reported, which suppresses one-frame ghosts. A lost track coasts on its
prediction for ``max_lost_s`` and can be re-linked in that time, bridging short occlusions and
missed detections.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import numpy as np
from lap import lapjv  # Jonker-Volgenant; scipy.optimize would cost ~47 MiB of RSS on the board

# -- Kalman filter on (cx, cy, aspect w/h, h) and their velocities per second -----------------
_STD_POS = 1.0 / 20.0  # position noise relative to box height (ByteTrack's weights)
_STD_VEL = 1.0 / 160.0 * 10.0  # ByteTrack's per-frame velocity noise at 10 fps, per second


def _xyah(box: np.ndarray) -> np.ndarray:
    w, h = box[2] - box[0], box[3] - box[1]
    return np.array([box[0] + w / 2, box[1] + h / 2, w / max(h, 1e-6), h], dtype=np.float64)


def _box(mean: np.ndarray) -> np.ndarray:
    cx, cy, a, h = mean[:4]
    w = a * h
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dtype=np.float64)


_Q_UNIT = np.array([_STD_POS, _STD_POS, 0.0, _STD_POS, _STD_VEL, _STD_VEL, 0.0, _STD_VEL]) ** 2  # times h^2
_Q_CONST = np.array([0.0, 0.0, 1e-4, 0.0, 0.0, 0.0, 1e-10, 0.0])  # aspect ratio and its rate
_R_UNIT = np.array([_STD_POS, _STD_POS, 0.0, _STD_POS]) ** 2  # times h^2
_R_ASPECT = np.array([0.0, 0.0, 1e-2, 0.0])  # (1e-1)^2 for the aspect ratio


def predict_all(kfs: list[KalmanBox], dt: float) -> None:
    """Advance every filter by ``dt`` seconds in one batch (x' = F x, P' = F P F^T + Q with
    F = [[I, dt I], [0, I]], written out in 4x4 blocks)."""
    if dt <= 0 or not kfs:
        return
    m = np.stack([k.mean for k in kfs])  # (n, 8)
    p = np.stack([k.cov for k in kfs])  # (n, 8, 8)
    h = m[:, 3]
    q = (h * h)[:, None] * (_Q_UNIT * (dt * 10.0)) + _Q_CONST * (dt * 10.0)
    m[:, :4] += dt * m[:, 4:]
    p_ab = p[:, :4, 4:] + dt * p[:, 4:, 4:]
    p[:, :4, :4] += dt * (p[:, 4:, :4] + p[:, :4, 4:]) + (dt * dt) * p[:, 4:, 4:]
    p[:, :4, 4:] = p_ab
    p[:, 4:, :4] = p_ab.transpose(0, 2, 1)
    p.reshape(len(kfs), 64)[:, ::9] += q
    np.maximum(m[:, 3], 1.0, out=m[:, 3])
    for k, mk, pk in zip(kfs, m, p, strict=True):
        k.mean, k.cov = mk, pk


class KalmanBox:
    """Constant-velocity Kalman filter for one box; state (cx, cy, a, h, vcx, vcy, va, vh)."""

    _H = np.eye(4, 8)

    def __init__(self, box: np.ndarray) -> None:
        m = _xyah(box)
        self.mean = np.r_[m, np.zeros(4)]
        h = m[3]
        std = np.array([2 * _STD_POS * h, 2 * _STD_POS * h, 1e-2, 2 * _STD_POS * h,
                        10 * _STD_VEL * h, 10 * _STD_VEL * h, 1e-5, 10 * _STD_VEL * h])
        self.cov = np.diag(std**2)

    def predict(self, dt: float) -> None:
        predict_all([self], dt)

    def update(self, box: np.ndarray) -> None:
        z = _xyah(box)
        h = self.mean[3]
        p = self.cov
        s = p[:4, :4].copy()  # H P H^T + R, with H = [I 0]
        s[np.diag_indices(4)] += _R_UNIT * (h * h) + _R_ASPECT
        k = np.linalg.solve(s, p[:4, :]).T  # P H^T S^-1 (S and P symmetric)
        self.mean = self.mean + k @ (z - self.mean[:4])
        self.cov = p - k @ p[:4, :]

    @property
    def box(self) -> np.ndarray:
        return _box(self.mean)

    @property
    def velocity(self) -> np.ndarray:
        """Velocity of the box centre in pixels per second."""
        return self.mean[4:6].copy()


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU between every box of a (n,4) and b (m,4), boxes as x0, y0, x1, y1."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def diou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance-IoU: IoU minus the squared centre distance over the enclosing box's diagonal.

    Unlike IoU it still ranks boxes that do not overlap (small, fast people at 10 fps)."""
    iou = iou_matrix(a, b)
    if iou.size == 0:
        return iou
    ca = (a[:, :2] + a[:, 2:]) / 2
    cb = (b[:, :2] + b[:, 2:]) / 2
    d2 = ((ca[:, None, :] - cb[None, :, :]) ** 2).sum(-1)
    ex0 = np.minimum(a[:, None, 0], b[None, :, 0])
    ey0 = np.minimum(a[:, None, 1], b[None, :, 1])
    ex1 = np.maximum(a[:, None, 2], b[None, :, 2])
    ey1 = np.maximum(a[:, None, 3], b[None, :, 3])
    c2 = (ex1 - ex0) ** 2 + (ey1 - ey0) ** 2
    return iou - d2 / np.maximum(c2, 1e-9)


def gate(tracks: np.ndarray, dets: np.ndarray, gaps: np.ndarray, base_bh: float, speed_bh_s: float) -> np.ndarray:
    """True where a detection is a plausible next position for a track: centre within
    ``base_bh + speed_bh_s * gap`` box heights of the prediction, and height within a factor 1.5."""
    if len(tracks) == 0 or len(dets) == 0:
        return np.zeros((len(tracks), len(dets)), dtype=bool)
    ht = tracks[:, 3] - tracks[:, 1]
    hd = dets[:, 3] - dets[:, 1]
    ct = (tracks[:, :2] + tracks[:, 2:]) / 2
    cd = (dets[:, :2] + dets[:, 2:]) / 2
    d = np.sqrt(((ct[:, None, :] - cd[None, :, :]) ** 2).sum(-1)) / np.maximum(ht[:, None], 1e-6)
    ratio = hd[None, :] / np.maximum(ht[:, None], 1e-6)
    return (d <= base_bh + speed_bh_s * gaps[:, None]) & (ratio <= 1.5) & (ratio >= 1 / 1.5)


def _similarity(tracks: np.ndarray, dets: np.ndarray, gaps: np.ndarray, cfg: TrackerConfig) -> np.ndarray:
    if len(tracks) == 0 or len(dets) == 0:
        return np.zeros((len(tracks), len(dets)))
    sim = diou_matrix(tracks, dets)
    return np.where(gate(tracks, dets, gaps, cfg.gate_bh, cfg.gate_speed_bh_s), sim, -np.inf)


def _assign(score: np.ndarray, min_score: float) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Maximise the total similarity of the pairs at or above min_score (the others, and gated
    pairs at -inf, are never matches; a track or detection may stay unmatched)."""
    n, m = score.shape
    if n == 0 or m == 0:
        return [], list(range(n)), list(range(m))
    ok = np.isfinite(score) & (score >= min_score)
    if not ok.any():
        return [], list(range(n)), list(range(m))
    # Jonker-Volgenant with cost_limit: leaving a row and a column unmatched costs 0, so every
    # allowed pair (cost -score < 0) beats it and a forbidden one (cost 1) never does
    cost = np.where(ok, -score, 1.0).astype(np.float64)
    _, x, _ = lapjv(np.ascontiguousarray(cost), extend_cost=True, cost_limit=1e-9)
    pairs = [(r, int(c)) for r, c in enumerate(x) if 0 <= c < m and ok[r, c]]
    mr = {r for r, _ in pairs}
    mc = {c for _, c in pairs}
    return pairs, [r for r in range(n) if r not in mr], [c for c in range(m) if c not in mc]


@dataclass(eq=False)
class Track:
    """One anonymous person track. ``tid`` is random, opaque and never reused."""

    tid: str
    kf: KalmanBox
    first_seen: float
    last_seen: float
    score: float
    hits: int = 1
    confirmed: bool = False
    det_box: np.ndarray = field(default_factory=lambda: np.zeros(4))  # last matched detection (pixels)
    det_index: int = -1  # index into this frame's detections, -1 when coasting

    @property
    def box(self) -> np.ndarray:
        """The filtered box in pixels (x0, y0, x1, y1)."""
        return self.kf.box

    @property
    def age(self) -> float:
        return self.last_seen - self.first_seen


@dataclass(frozen=True)
class TrackerConfig:
    high_score: float = 0.5  # detections at or above: first association and new tracks
    low_score: float = 0.3  # between low and high: second association only (ByteTrack)
    new_track_score: float = 0.55
    min_match: float = -1.0  # minimum DIoU for a first-stage match (the gate below decides)
    min_match_low: float = 0.2  # minimum DIoU for the low-score stage (stricter)
    gate_bh: float = 0.5  # a match may be this many box heights from the prediction...
    gate_speed_bh_s: float = 1.0  # ...plus this much per second the track has been lost
    min_age_s: float = 0.3  # matched this long before a track is reported
    max_lost_s: float = 2.0  # coast this long before a lost track is dropped (re-link gaps up to 2 s)
    tentative_grace_s: float = 0.0  # an unconfirmed track survives this long without a match


class Tracker:
    def __init__(self, cfg: TrackerConfig | None = None) -> None:
        self.cfg = cfg or TrackerConfig()
        self.tracks: list[Track] = []
        self._t: float | None = None
        self.created = 0
        self.ended: list[Track] = []  # tracks dropped by the last update (confirmed ones only)

    def reset(self) -> None:
        """Forget every track (opt-out, pause): the ids are gone for good."""
        self.tracks.clear()
        self.ended.clear()
        self._t = None

    def update(self, boxes: np.ndarray, scores: np.ndarray, t: float) -> list[Track]:
        """Advance to time ``t`` (seconds) with this frame's detections (pixels, x0, y0, x1, y1).

        Returns the confirmed tracks matched in this frame (``det_index`` says which detection)."""
        cfg = self.cfg
        dt = 0.0 if self._t is None else max(t - self._t, 0.0)
        self._t = t
        predict_all([tr.kf for tr in self.tracks], dt)
        for tr in self.tracks:
            tr.det_index = -1
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        high = np.flatnonzero(scores >= cfg.high_score)
        low = np.flatnonzero((scores >= cfg.low_score) & (scores < cfg.high_score))

        confirmed = [tr for tr in self.tracks if tr.confirmed]
        tentative = [tr for tr in self.tracks if not tr.confirmed]
        pred = np.array([tr.box for tr in confirmed]).reshape(-1, 4)
        gaps = np.array([t - tr.last_seen for tr in confirmed])

        # 1. confirmed tracks (live and lost) vs high-score detections
        pairs, un_tr, un_high = _assign(_similarity(pred, boxes[high], gaps, cfg), cfg.min_match)
        for r, c in pairs:
            self._match(confirmed[r], high[c], boxes, scores, t)
        # 2. remaining tracks seen in the previous update vs low-score detections
        recent = [i for i in un_tr if t - confirmed[i].last_seen <= dt + 1e-6]
        pairs2, _, _ = _assign(_similarity(pred[recent], boxes[low], gaps[recent], cfg), cfg.min_match_low)
        for r, c in pairs2:
            self._match(confirmed[recent[r]], low[c], boxes, scores, t)
        # 3. tentative tracks vs the high-score detections left
        rest = [high[i] for i in un_high]
        tent_pred = np.array([tr.box for tr in tentative]).reshape(-1, 4)
        tent_gaps = np.array([t - tr.last_seen for tr in tentative])
        pairs3, un_tent, un_rest = _assign(_similarity(tent_pred, boxes[rest], tent_gaps, cfg), cfg.min_match_low)
        for r, c in pairs3:
            self._match(tentative[r], rest[c], boxes, scores, t)
        # a tentative track missing for longer than a short grace is dropped: it was never confirmed
        dead = {id(tentative[i]) for i in un_tent if t - tentative[i].last_seen > cfg.tentative_grace_s}
        # 4. new tracks from unmatched confident detections
        for c in un_rest:
            j = rest[c]
            if scores[j] >= cfg.new_track_score:
                self.created += 1
                self.tracks.append(Track(secrets.token_hex(16), KalmanBox(boxes[j]), t, t, float(scores[j]),
                                         det_box=boxes[j].copy(), det_index=int(j)))
        self.ended = [tr for tr in self.tracks if tr.confirmed and t - tr.last_seen > cfg.max_lost_s]
        self.tracks = [tr for tr in self.tracks
                       if id(tr) not in dead and not (tr.confirmed and t - tr.last_seen > cfg.max_lost_s)]
        return [tr for tr in self.tracks if tr.confirmed and tr.det_index >= 0]

    def _match(self, tr: Track, j: int, boxes: np.ndarray, scores: np.ndarray, t: float) -> None:
        tr.kf.update(boxes[j])
        tr.det_box = boxes[j].copy()
        tr.det_index = int(j)
        tr.last_seen = t
        tr.score = float(scores[j])
        tr.hits += 1
        if not tr.confirmed and tr.age >= self.cfg.min_age_s:
            tr.confirmed = True
