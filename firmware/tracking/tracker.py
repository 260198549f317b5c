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
# ByteTrack's filter, with its noise re-tuned by measurement for what boards see: 8-12 fps and a
# detector whose box edges wobble by ~4 % of the box (k-frame-ahead prediction IoU on the
# benchmark's sequences, 15 % misses: mean 0.83 / 1.3 % below IoU 0.3 three frames ahead, against
# 0.80 / 3.5 % with ByteTrack's 30-fps weights). People change speed more than ByteTrack's weights
# allow at these frame rates (velocity noise x4), their position jitter is mostly measurement
# noise (position process noise x0.5), and their box height hardly changes (x0.1 on its velocity).
_STD_POS = 1.0 / 20.0  # measurement noise relative to box height (ByteTrack's weights)
_STD_VEL = 1.0 / 160.0 * 10.0  # ByteTrack's per-frame velocity noise, per second at 10 fps
_Q_POS, _Q_VEL, _Q_VH = 0.5 * _STD_POS, 4.0 * _STD_VEL, 0.4 * _STD_VEL


def _xyah(box: np.ndarray) -> np.ndarray:
    w, h = box[2] - box[0], box[3] - box[1]
    return np.array([box[0] + w / 2, box[1] + h / 2, w / max(h, 1e-6), h], dtype=np.float64)


def _box(mean: np.ndarray) -> np.ndarray:
    cx, cy, a, h = mean[:4]
    w = a * h
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dtype=np.float64)


_Q_UNIT = np.array([_Q_POS, _Q_POS, 0.0, _Q_POS, _Q_VEL, _Q_VEL, 0.0, _Q_VH]) ** 2  # times h^2, per 0.1 s
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


def update_all(kfs: list[KalmanBox], boxes: np.ndarray, noise: np.ndarray | None = None) -> None:
    """Correct every filter with its measured box (n, 4) in one batch (K = P H^T S^-1 with
    H = [I 0] and S = H P H^T + R). ``noise``: per box, a factor on R (a weak detection is a
    less certain measurement)."""
    if not kfs:
        return
    z = np.stack([_xyah(b) for b in boxes])
    m = np.stack([k.mean for k in kfs])
    p = np.stack([k.cov for k in kfs])
    h = m[:, 3]
    s = p[:, :4, :4].copy()
    r = (h * h)[:, None] * _R_UNIT + _R_ASPECT
    if noise is not None:
        r = r * noise[:, None]
    s.reshape(len(kfs), 16)[:, ::5] += r
    k = np.linalg.solve(s, p[:, :4, :]).transpose(0, 2, 1)  # (n, 8, 4); S and P symmetric
    m = m + np.einsum("nij,nj->ni", k, z - m[:, :4])
    p = p - k @ p[:, :4, :]
    for kf, mk, pk in zip(kfs, m, p, strict=True):
        kf.mean, kf.cov = mk, pk


def boxes_of(kfs: list[KalmanBox]) -> np.ndarray:
    """The filtered boxes (n, 4) of many filters at once."""
    if not kfs:
        return np.zeros((0, 4))
    m = np.stack([k.mean[:4] for k in kfs])
    w = m[:, 2] * m[:, 3]
    return np.stack([m[:, 0] - w / 2, m[:, 1] - m[:, 3] / 2, m[:, 0] + w / 2, m[:, 1] + m[:, 3] / 2], axis=1)


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
        update_all([self], np.asarray(box, dtype=np.float64)[None])

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


def _relink_similarity(pred: np.ndarray, last: np.ndarray, dets: np.ndarray, gaps: np.ndarray,
                       cfg: TrackerConfig) -> np.ndarray:
    """For tracks lost for a while: DIoU with each detection (it still ranks boxes that do not
    overlap), -inf where the gate forbids the pair. A lost track is compared with both its
    prediction (the person walked on while hidden) and where it was last seen (they stopped): the
    constant-velocity prediction alone drifts away from someone who stopped behind another shopper."""
    if len(pred) == 0 or len(dets) == 0:
        return np.zeros((len(pred), len(dets)))
    sim = np.maximum(diou_matrix(pred, dets), diou_matrix(last, dets))
    ok = gate(pred, dets, gaps, cfg.gate_bh, cfg.gate_speed_bh_s) | gate(last, dets, gaps, cfg.gate_bh, 0.0)
    return np.where(ok, sim, -np.inf)


def _assign(sim: np.ndarray, min_sim: float, col_min: np.ndarray | None = None, bias: np.ndarray | None = None,
            rank: np.ndarray | None = None) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Optimal pairs of rows (tracks) and columns (detections), ByteTrack's way: cost 1 - sim,
    and leaving a row and a column unmatched costs 1 - min_sim, so every pair the gate allows with
    sim >= min_sim can be matched (negative DIoU included: boxes that do not overlap after a gap).
    Gated pairs (sim -inf) are never matched. Maximises the sum of (sim - min_sim) over pairs.
    ``col_min``: a stricter minimum per column (pairs below it are not allowed). ``bias`` (one
    value <= 0 per row) handicaps a row where it competes for a column with others; a pair
    allowed by the minimums stays matchable whatever its row's bias. ``rank``: what to maximise
    among the allowed pairs instead of ``sim`` (sim then only decides which pairs are allowed)."""
    n, m = sim.shape
    if n == 0 or m == 0:
        return [], list(range(n)), list(range(m))
    ok = np.isfinite(sim) & (sim >= (min_sim if col_min is None else np.maximum(col_min, min_sim)[None, :]))
    if not ok.any():
        return [], list(range(n)), list(range(m))
    if rank is not None:
        sim, min_sim = rank, float(rank[ok].min())
    if bias is not None:
        sim = sim + bias[:, None]
        min_sim += float(bias.min())
    rows = np.flatnonzero(ok.any(axis=1))
    best = np.argmax(np.where(ok, sim, -np.inf)[rows], axis=1)
    if len(np.unique(best)) == len(best):  # every row's best pair is its own: that is the optimum
        pairs = [(int(r), int(c)) for r, c in zip(rows, best, strict=True)]
    else:
        pairs = _lap_pairs(sim, ok, min_sim)
    mr = {r for r, _ in pairs}
    mc = {c for _, c in pairs}
    return pairs, [r for r in range(n) if r not in mr], [c for c in range(m) if c not in mc]


def _lap_pairs(sim: np.ndarray, ok: np.ndarray, min_sim: float) -> list[tuple[int, int]]:
    m = sim.shape[1]
    limit = 1.0 - min_sim
    cost = np.where(ok, 1.0 - sim, limit + 1.0).astype(np.float64)
    _, x, _ = lapjv(np.ascontiguousarray(cost), extend_cost=True, cost_limit=limit)
    return [(r, int(c)) for r, c in enumerate(x) if 0 <= c < m and ok[r, c]]


def _at_rest(tr: Track) -> np.ndarray:
    """The track's last matched box, moved to where it came to rest: a stray box it was last
    matched to (a false detection beside a shopper who stands still) drew it off its place."""
    if True:
        return tr.det_box
    return tr.det_box + np.tile(tr.rest - (tr.det_box[:2] + tr.det_box[2:]) / 2, 2)


def _outside(box: np.ndarray, frame: tuple[float, float]) -> bool:
    """Less than half of ``box`` lies inside a frame of (width, height)."""
    w, h = frame
    inside = max(min(box[2], w) - max(box[0], 0.0), 0.0) * max(min(box[3], h) - max(box[1], 0.0), 0.0)
    return bool(inside < 0.5 * max((box[2] - box[0]) * (box[3] - box[1]), 1e-9))


class WeakBoxes:
    """How long each weak box has been where it is: geometry and times only, no pixels, nothing
    about anyone. A detector sees "people" in signs, railings and cones, at weak scores, in the
    same place frame after frame (about 17 such boxes a frame on vtest.avi's plaza at 0.25 and
    above). A box that was there before a track came to rest on it is the background, not that
    person: it must not keep the track alive (else a passer-by's track stays behind on the sign,
    a standing "shopper" that never leaves). A shopper who stops and scores weakly brings their
    box with them: it is no older than their stop.

    A weak box belongs to an entry while it overlaps the entry's first box (IoU >= ``iou``);
    entries unseen for ``forget_s`` are dropped, and at most ``cap`` are kept (the stalest go)."""

    def __init__(self, iou: float = 0.6, forget_s: float = 2.0, cap: int = 256) -> None:
        self.iou, self.forget_s, self.cap = iou, forget_s, cap
        self.reset()

    def reset(self) -> None:
        self._first = np.zeros((0, 4))
        self._since = np.zeros(0)
        self._last = np.zeros(0)

    def __len__(self) -> int:
        return len(self._since)

    def observe(self, boxes: np.ndarray, t: float) -> np.ndarray:
        """Record this frame's weak boxes (n, 4); returns since when each has been where it is."""
        keep = t - self._last <= self.forget_s
        self._first, self._since, self._last = self._first[keep], self._since[keep], self._last[keep]
        since = np.full(len(boxes), t)
        if len(boxes) and len(self._first):
            pairs, _, _ = _assign(iou_matrix(boxes, self._first), self.iou)
            for i, k in pairs:
                since[i] = self._since[k]
                self._last[k] = t
        new = since == t
        if new.any():
            self._first = np.concatenate([self._first, boxes[new]])
            self._since = np.concatenate([self._since, np.full(int(new.sum()), t)])
            self._last = np.concatenate([self._last, np.full(int(new.sum()), t)])
        if len(self._since) > self.cap:
            order = np.argsort(-self._last, kind="stable")[: self.cap]
            self._first, self._since, self._last = self._first[order], self._since[order], self._last[order]
        return since


@dataclass(eq=False)
class Track:
    """One anonymous person track. ``tid`` is random, opaque and never reused."""

    tid: str
    kf: KalmanBox
    first_seen: float
    last_seen: float
    score: float
    hits: int = 1
    high_hits: int = 1  # matches to a confident (>= high_score) box
    confirmed: bool = False
    det_box: np.ndarray = field(default_factory=lambda: np.zeros(4))  # last matched detection (pixels)
    det_index: int = -1  # index into this frame's detections, -1 when coasting
    first_box: np.ndarray = field(default_factory=lambda: np.zeros(4))  # the detection that started it
    pred: np.ndarray = field(default_factory=lambda: np.zeros(4))  # this frame's prediction (pixels)
    last_high: float = 0.0  # when it was last matched to a confident box, and that box
    high_box: np.ndarray = field(default_factory=lambda: np.zeros(4))
    rest: np.ndarray | None = None  # where the track came to rest (box centre), and since when
    rest_since: float = 0.0

    @property
    def box(self) -> np.ndarray:
        """The filtered box in pixels (x0, y0, x1, y1)."""
        return self.kf.box

    @property
    def age(self) -> float:
        return self.last_seen - self.first_seen


@dataclass(frozen=True)
class TrackerConfig:
    high_score: float = 0.5  # detections at or above match a track's prediction from min_iou on...
    low_score: float = 0.25  # ...weaker ones (a still or half-hidden person) from min_iou_low on
    new_track_score: float = 0.6  # an unmatched detection at or above starts a (tentative) track
    min_iou: float = 0.3
    min_iou_low: float = 0.4
    relink_after_s: float = 0.25  # a track lost longer than this may be re-linked...
    relink_min_diou: float = 0.2  # ...to a confident box this close to it (DIoU), within the gate:
    gate_bh: float = 0.3  # this many box heights from where it was last seen or is predicted...
    gate_speed_bh_s: float = 0.3  # ...plus this much per second lost, around the prediction
    min_hits: int = 3  # a tentative track is confirmed after this many matches...
    min_high_hits: int = 2  # ...this many of them confident (a static thing that scores 0.45 is not one)...
    min_age_s: float = 0.0  # ...spanning at least this long...
    confirm_within_s: float = 1.5  # ...within this long of its first detection (else it was a ghost)
    tentative_max_lost_s: float = 0.5  # a tentative track survives misses this long
    max_lost_s: float = 3.0  # a confirmed track coasts this long and can be re-linked in that time
    joint: bool = False
    rest_bh: float = 0.5  # a track moving less than this many box heights is at rest...
    background_grace_s: float = 1.0  # ...and a weak box there for this much longer is the background
    echo_iou: float = 0.3
    echo_own: bool = False
    reserve_iou: float = 1.0
    reserve_margin: float = 0.25
    occluded_iou: float = 0.3
    low_noise: float = 9.0
    rank_diou: bool = True
    birth_max_iou: float = 0.3  # no new track from a box overlapping a confirmed track's more than this
    stale_handicap: float = 0.1  # IoU a track lost longer than relink_after_s gives away to one seen just now
    merge_after_s: float = 0.15  # a track unmatched this long may be taken over by a fragment
    merge_heading_bh_s: float = 0.3  # re-linking fragments: both faster than this must head the same way


class Tracker:
    def __init__(self, cfg: TrackerConfig | None = None) -> None:
        self.cfg = cfg or TrackerConfig()
        self.tracks: list[Track] = []
        self._t: float | None = None
        self.created = 0
        self.ended: list[Track] = []  # tracks dropped by the last update (confirmed ones only)
        self._matched: list[tuple[Track, int]] = []  # this update's matches (track, detection index)
        self.weak = WeakBoxes()
        self._since = np.zeros(0)  # per detection of this update: since when a weak box has been there
        self._hidden: np.ndarray | None = None
        self._echo_of: np.ndarray | None = None
        self._low_index = np.zeros(0, dtype=np.int64)

    def reset(self) -> None:
        """Forget every track (opt-out, pause): the ids are gone for good."""
        self.tracks.clear()
        self.ended.clear()
        self.weak.reset()
        self._t = None

    def update(self, boxes: np.ndarray, scores: np.ndarray, t: float, frame: tuple[float, float] | None = None) -> list[Track]:
        """Advance to time ``t`` (seconds) with this frame's detections (pixels, x0, y0, x1, y1).
        ``frame``: the frame's (width, height) in pixels; a lost track whose prediction has left
        the frame then ends at once (the person walked out of view: nobody else entering there
        later takes over their track).

        Returns the confirmed tracks matched in this frame (``det_index`` says which detection)."""
        cfg = self.cfg
        dt = 0.0 if self._t is None else max(t - self._t, 0.0)
        self._t = t
        predict_all([tr.kf for tr in self.tracks], dt)
        for tr, box in zip(self.tracks, boxes_of([tr.kf for tr in self.tracks]), strict=True):
            tr.det_index = -1
            tr.pred = box
        self._matched = []
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        high = np.flatnonzero(scores >= cfg.high_score)
        low = np.flatnonzero((scores >= cfg.low_score) & (scores < cfg.high_score))
        self._since = np.full(len(boxes), t)
        self._since[low] = self.weak.observe(boxes[low], t)

        tentative = [tr for tr in self.tracks if not tr.confirmed]
        # 1. every track (confirmed or not) vs every candidate box, by overlap with its prediction:
        #    a confident box from min_iou on, a weak one (a shopper standing still, or half hidden,
        #    often scores 0.3-0.5 for as long as they stay) from min_iou_low on. One assignment,
        #    not ByteTrack's two stages: a stray confident box beside a still person must not win
        #    their track from the weak box that covers them. Tracks seen a moment ago go first,
        #    then those lost for a while (whose predictions are guesses)
        cand = np.concatenate([high, low])
        col_min = np.r_[np.full(len(high), cfg.min_iou), np.full(len(low), cfg.min_iou_low)]
        stale = np.array([t - tr.last_seen > cfg.relink_after_s for tr in self.tracks], dtype=bool)
        bias = np.where(stale, -cfg.stale_handicap, 0.0)
        if cfg.joint:
            # which confident boxes the tracks would take by themselves: weak boxes over those are
            # echoes, and tracks behind them are hidden (they coast rather than take weak boxes)
            nh = len(high)
            pred = np.array([tr.pred for tr in self.tracks]).reshape(-1, 4)
            io = iou_matrix(pred, boxes[high])
            pairs, _, _ = _assign(io, cfg.min_iou, bias=bias if len(self.tracks) else None,
                                  rank=diou_matrix(pred, boxes[high]) if len(io) and io.size else None)
            used = high[[c for _, c in pairs]]
            lows = cand[nh:]
            echo = (iou_matrix(boxes[lows], boxes[used]) > cfg.echo_iou).any(axis=1) if len(used) else np.zeros(len(lows), bool)
            taken = {r for r, _ in pairs}
            if cfg.echo_own and len(used):
                # an echo of a box a track takes is out of reach of that track only
                self._echo_of = np.full(len(lows), -1)
                ov = iou_matrix(boxes[lows], boxes[used])
                for li in np.flatnonzero(echo):
                    self._echo_of[li] = pairs[int(np.argmax(ov[li]))][0]
                echo = np.zeros(len(lows), bool)
            else:
                self._echo_of = None
            hidden = np.zeros(len(self.tracks), bool)
            if len(used):
                hidden = (iou_matrix(pred, boxes[used]) > cfg.occluded_iou).any(axis=1)
                hidden &= np.array([i not in taken for i in range(len(self.tracks))])
            keep = np.r_[np.ones(nh, bool), ~echo]
            self._hidden = hidden
            self._low_index = np.flatnonzero(~echo)
            un_tr, un_c = self._stage(self.tracks, list(range(len(self.tracks))), cand[keep], boxes, scores, t,
                                      col_min=col_min[keep], bias=bias, low_from=nh)
            un_cand = np.flatnonzero(keep)[un_c]
            self._hidden = None
        else:
            nh = len(high)
            rows = list(range(len(self.tracks)))
            if cfg.reserve_iou < 1.0 and len(low) and self.tracks:
                # a weak box that fits a track far better than any confident one is that person
                # (standing still, scoring low) and a confident box beside them a stray one
                pred = np.array([tr.pred for tr in self.tracks])
                io_low = iou_matrix(pred, boxes[low])
                io_high = iou_matrix(pred, boxes[high]).max(axis=1) if nh else np.zeros(len(pred))
                lone = ~(iou_matrix(boxes[low], boxes[high]) > cfg.echo_iou).any(axis=1) if nh else np.ones(len(low), bool)
                best = io_low.argmax(axis=1)
                fit = io_low[np.arange(len(pred)), best]
                keep_out = (fit >= cfg.reserve_iou) & (fit >= io_high + cfg.reserve_margin) & lone[best]
                rows = [i for i in rows if not keep_out[i]]
            un_tr, un_h = self._stage(self.tracks, rows, cand[:nh], boxes, scores, t, col_min=col_min[:nh], bias=bias)
            un_tr = sorted(un_tr + [i for i in range(len(self.tracks)) if i not in rows])
            # a weak box mostly over a confident one just matched is that person's echo (a part of
            # them, or of the person they hide), not someone else's: an occluded track coasts on
            # its prediction instead of being dragged onto the person in front
            lows = cand[nh:]
            used = np.setdiff1d(cand[:nh], cand[:nh][un_h])
            echo = (iou_matrix(boxes[lows], boxes[used]) > cfg.echo_iou).any(axis=1) if len(used) else np.zeros(len(lows), bool)
            hidden = []
            if len(used) and cfg.occluded_iou < 1.0:
                pred = np.array([self.tracks[i].pred for i in un_tr]).reshape(-1, 4)
                behind = (iou_matrix(pred, boxes[used]) > cfg.occluded_iou).any(axis=1)
                hidden = [i for i, b in zip(un_tr, behind, strict=True) if b]
            free = [i for i in un_tr if i not in hidden]
            un_free, un_l = self._stage(self.tracks, free, lows[~echo], boxes, scores, t, col_min=col_min[nh:][~echo],
                                        bias=bias)
            un_tr = un_free + hidden
            un_cand = np.concatenate([un_h, np.flatnonzero(~echo)[un_l] + nh])
        # 2. confirmed tracks lost for a while vs the confident boxes left, overlap or not, within
        #    the gate: someone reappearing after a second behind another shopper, a little off the
        #    prediction, or where they stopped
        lost = [i for i in un_tr if self.tracks[i].confirmed and t - self.tracks[i].last_seen > cfg.relink_after_s]
        left = cand[un_cand[un_cand < len(high)]]
        lost, un = self._stage(self.tracks, lost, left, boxes, scores, t, relink=True)
        rest = left[un]
        # 3. the lost tracks left vs the weak boxes left, on where each was last seen: someone who
        #    stopped (the prediction went on without them) and now scores low, standing still
        weak = cand[un_cand[un_cand >= len(high)]]
        self._stage(self.tracks, lost, weak, boxes, scores, t, on_last=True, col_min=np.full(len(weak), cfg.min_iou_low))
        # 4. new tracks from unmatched confident detections, unless the box overlaps a confirmed
        #    track's (a second box on a person, which the detector often adds beside the first)
        taken = np.array([tr.det_box if tr.det_index >= 0 else tr.pred for tr in self.tracks if tr.confirmed]).reshape(-1, 4)
        clear = (iou_matrix(boxes[rest], taken) <= cfg.birth_max_iou).all(axis=1) if len(taken) else np.ones(len(rest), bool)
        for j in rest[clear].tolist():
            if scores[j] >= cfg.new_track_score:
                self.created += 1
                self.tracks.append(Track(secrets.token_hex(16), KalmanBox(boxes[j]), t, t, float(scores[j]),
                                         det_box=boxes[j].copy(), det_index=j, first_box=boxes[j].copy(),
                                         last_high=t, high_box=boxes[j].copy()))
        js = [j for _, j in self._matched]
        update_all([tr.kf for tr, _ in self._matched], boxes[js], np.where(scores[js] >= cfg.high_score, 1.0, cfg.low_noise))
        # 5. a track confirmed just now may be someone lost a moment ago: the same token again
        self._merge([tr for tr in tentative if tr.confirmed], t)
        # 6. deletion
        keep: list[Track] = []
        self.ended = []
        for tr in self.tracks:
            if tr.confirmed:
                if t - tr.last_seen > cfg.max_lost_s or (frame is not None and tr.det_index < 0 and _outside(tr.pred, frame)):
                    self.ended.append(tr)
                    continue
            elif t - tr.last_seen > cfg.tentative_max_lost_s or t - tr.first_seen > cfg.confirm_within_s:
                continue  # never confirmed: a ghost, or someone only glimpsed
            keep.append(tr)
        self.tracks = keep
        return [tr for tr in self.tracks if tr.confirmed and tr.det_index >= 0]

    def _stage(self, tracks: list[Track], rows: list[int], cols: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
               t: float, *, relink: bool = False, on_last: bool = False, col_min: np.ndarray | None = None,
               bias: np.ndarray | None = None, low_from: int | None = None) -> tuple[list[int], np.ndarray]:
        """Match ``tracks[rows]`` with the detections ``cols``, by overlap (IoU from ``col_min``,
        per column) with the prediction, or with the last matched box (``on_last``), or as a
        re-link; returns the rows and the positions in ``cols`` left unmatched."""
        if not rows or not len(cols):
            return rows, np.arange(len(cols))
        sel = [tracks[i] for i in rows]
        pred = np.array([_at_rest(tr) if on_last else tr.pred for tr in sel]).reshape(-1, 4)
        if relink:
            last = np.array([tr.det_box for tr in sel]).reshape(-1, 4)
            gaps = np.array([t - tr.last_seen for tr in sel])
            pairs, un_r, un_c = _assign(_relink_similarity(pred, last, boxes[cols], gaps, self.cfg), self.cfg.relink_min_diou)
        else:
            # allowed by overlap (IoU), ranked by DIoU: where two predictions overlap one box (people
            # crossing), the nearer centre wins, not the bigger box
            dets = boxes[cols]
            sim = iou_matrix(pred, dets)
            # a weak box older than a track's rest is the background it came to rest on, not them
            rest = np.array([tr.rest_since for tr in sel])
            sim[self._since[cols][None, :] < rest[:, None] - self.cfg.background_grace_s] = -np.inf
            if low_from is not None and self._hidden is not None:
                sim[np.ix_(self._hidden[rows], np.arange(len(cols)) >= low_from)] = -np.inf
            if low_from is not None and self._echo_of is not None:
                for ci in range(low_from, len(cols)):
                    owner = self._echo_of[self._low_index[ci - low_from]]
                    if owner >= 0 and owner in rows:
                        sim[rows.index(owner), ci] = -np.inf
            pairs, un_r, un_c = _assign(sim, float(np.min(col_min)) if col_min is not None
                                        else self.cfg.min_iou, col_min=col_min, bias=None if bias is None else bias[rows],
                                        rank=diou_matrix(pred, dets) if self.cfg.rank_diou else None)
        for r, c in pairs:
            self._match(sel[r], int(cols[c]), boxes, scores, t)
        return [rows[r] for r in un_r], np.asarray(un_c, dtype=np.int64)

    def _merge(self, fresh: list[Track], t: float) -> None:
        """Re-link fragments: a track confirmed in this frame takes over a confirmed track that was
        lost before it began, when they agree in position (where the lost one was last seen, or
        where its velocity would have taken it), size and heading. Geometry only."""
        cfg = self.cfg
        lost = [tr for tr in self.tracks if tr.confirmed and tr.det_index < 0 and t - tr.last_seen > cfg.merge_after_s]
        if not fresh or not lost:
            return
        sim = np.full((len(fresh), len(lost)), -np.inf)
        for i, f in enumerate(fresh):
            cf = (f.first_box[:2] + f.first_box[2:]) / 2
            hf = f.first_box[3] - f.first_box[1]
            vf = f.kf.velocity
            for k, lo in enumerate(lost):
                # when and where the lost one was last seen for sure (a weak box since may be an echo)
                gap = f.first_seen - lo.last_high
                if gap <= 0 or gap > cfg.max_lost_s:
                    continue  # seen at the same time: two people
                hl = lo.high_box[3] - lo.high_box[1]
                if not 0.75 <= hf / max(hl, 1e-6) <= 1 / 0.75:
                    continue
                cl = (lo.high_box[:2] + lo.high_box[2:]) / 2
                vl = lo.kf.velocity
                d = min(np.hypot(*(cf - cl)) / hl, (np.hypot(*(cf - cl - vl * gap)) / hl))
                limit = cfg.gate_bh + cfg.gate_speed_bh_s * gap
                if d > limit:
                    continue
                sf, sl = np.hypot(*vf) / hl, np.hypot(*vl) / hl
                if min(sf, sl) > cfg.merge_heading_bh_s and float(vf @ vl) < 0:
                    continue  # walking the other way
                sim[i, k] = 1.0 - d / limit
        pairs, _, _ = _assign(sim, 0.0)
        gone = set()
        for i, k in pairs:
            f, lo = fresh[i], lost[k]
            lo.kf, lo.det_box, lo.det_index, lo.last_seen, lo.score = f.kf, f.det_box, f.det_index, f.last_seen, f.score
            lo.hits += f.hits
            lo.high_hits += f.high_hits
            gone.add(id(f))
        self.tracks = [tr for tr in self.tracks if id(tr) not in gone]

    def _match(self, tr: Track, j: int, boxes: np.ndarray, scores: np.ndarray, t: float) -> None:
        self._matched.append((tr, j))  # the filters are corrected together once every stage has run
        centre = (boxes[j, :2] + boxes[j, 2:]) / 2
        if tr.rest is None or np.hypot(*(centre - tr.rest)) > self.cfg.rest_bh * (boxes[j, 3] - boxes[j, 1]):
            tr.rest, tr.rest_since = centre, t
        tr.det_box = boxes[j].copy()
        tr.det_index = int(j)
        tr.last_seen = t
        tr.score = float(scores[j])
        tr.hits += 1
        if scores[j] >= self.cfg.high_score:
            tr.high_hits += 1
            tr.last_high, tr.high_box = t, boxes[j].copy()
        if (not tr.confirmed and tr.hits >= self.cfg.min_hits and tr.high_hits >= self.cfg.min_high_hits
                and tr.age >= self.cfg.min_age_s):
            tr.confirmed = True
