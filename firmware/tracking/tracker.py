"""Anonymous multi-person tracking: ByteTrack's two score stages over a constant-velocity Kalman
filter, with time in seconds (not frames), so dropped frames and other frame rates change nothing.

Tracks carry only geometry (boxes in pixels, velocities) and an ephemeral random id; no pixels, no
appearance, nothing that could recognise a person again. Ids come from ``secrets`` and are never
reused. The detector hands over every candidate down to a low score; what becomes a person is
decided here:

- a track starts from a confident box (``new_track_score``) and is *confirmed*, and reported,
  after ``min_hits`` matches within ``confirm_within_s``, misses allowed (hits in a time span, not
  consecutive frames); weak boxes keep young tracks alive as they do old ones;
- each frame, tracks take confident boxes that overlap their predictions, then weak ones (a
  shopper standing still often scores 0.35-0.5 for the whole stop). What real detectors add is
  kept off: a weak box over a matched confident one is its echo; a track hidden behind a matched
  person coasts instead of being dragged onto them; a weak box that was there before a track came
  to rest is the background (``WeakBoxes``); a confident stray box beside someone standing does
  not win their track from the weak box that fits them;
- a track lost for a while is re-linked to a box near its prediction or its last position (they
  walked on, or stopped, while hidden), overlapping or not, within a gate that widens with the
  gap; a fragment confirmed later takes over a lost track when position, size and heading agree
  (the same token again). A lost track coasts for ``max_lost_s``, and ends at once when its
  prediction leaves the frame.

How this compares with ByteTrack, OC-SORT and SORT on the same detections: ``make bench-tracking``.
"""

from __future__ import annotations

import collections
import copy
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
# Times are compared with this slack: frame times are sums like t0 + n / fps, whose rounding depends
# on t0, so a gap of exactly 3 frames must not be "over 0.3 s" at one start time and not at another.
TIME_TOL_S = 1e-6
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


def _xyah_all(boxes: np.ndarray) -> np.ndarray:
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return np.stack([boxes[:, 0] + w / 2, boxes[:, 1] + h / 2, w / np.maximum(h, 1e-6), h], axis=1)


class KalmanBank:
    """Many constant-velocity Kalman filters on (cx, cy, a, h) and their rates, in one array, so
    that predicting and correcting all of them is a dozen numpy operations per frame, not a dozen
    per person. With F = [[I, dt I], [0, I]], H = [I 0] and diagonal Q, R and initial P, each
    filter's 8x8 covariance stays block-diagonal by dimension: four independent (value, rate)
    filters whose 2x2 covariances are stored as three numbers each. This is exactly the 8x8
    filter (ByteTrack's), without the zeros. A row is [mean (8), pp (4), pv (4), vv (4)]: the
    variance of each value, its covariance with its rate, the variance of the rate. Rows are
    reused."""

    def __init__(self, capacity: int = 16) -> None:
        self.state = np.zeros((capacity, 20))
        self._free = list(range(capacity - 1, -1, -1))

    @property
    def mean(self) -> np.ndarray:
        return self.state[:, :8]

    def add(self, box: np.ndarray) -> int:
        if not self._free:
            n = len(self.state)
            self.state = np.concatenate([self.state, np.zeros((n, 20))])
            self._free = list(range(2 * n - 1, n - 1, -1))
        slot = self._free.pop()
        m = _xyah(box)
        h = m[3]
        self.state[slot] = np.r_[m, np.zeros(4),
                                 np.array([2 * _STD_POS * h, 2 * _STD_POS * h, 1e-2, 2 * _STD_POS * h]) ** 2, np.zeros(4),
                                 np.array([10 * _STD_VEL * h, 10 * _STD_VEL * h, 1e-5, 10 * _STD_VEL * h]) ** 2]
        return slot

    def release(self, slot: int) -> None:
        self._free.append(slot)

    def predict(self, slots: np.ndarray, dt: float) -> None:
        """Advance the filters in ``slots`` by ``dt`` seconds (Q scaled by the box height)."""
        if dt <= 0 or not len(slots):
            return
        x = self.state[slots]
        h2 = (x[:, 3] * x[:, 3])[:, None]
        q = h2 * (_Q_UNIT * (dt * 10.0)) + _Q_CONST * (dt * 10.0)
        x[:, :4] += dt * x[:, 4:8]
        np.maximum(x[:, 3], 1.0, out=x[:, 3])
        x[:, 8:12] += 2 * dt * x[:, 12:16] + dt * dt * x[:, 16:20] + q[:, :4]
        x[:, 12:16] += dt * x[:, 16:20]
        x[:, 16:20] += q[:, 4:]
        self.state[slots] = x

    def update(self, slots: np.ndarray, boxes: np.ndarray, noise: np.ndarray | None = None) -> None:
        """Correct the filters in ``slots`` with their measured boxes (n, 4). ``noise``: per box, a
        factor on R (a weak detection is a less certain measurement)."""
        if not len(slots):
            return
        z = _xyah_all(np.asarray(boxes, dtype=np.float64).reshape(-1, 4))
        x = self.state[slots]
        h = x[:, 3:4]
        r = h * h * _R_UNIT + _R_ASPECT
        if noise is not None:
            r = r * noise[:, None]
        pp, pv = x[:, 8:12], x[:, 12:16]
        s = pp + r
        k0, k1 = pp / s, pv / s  # the gains of each value and of its rate
        y = z - x[:, :4]
        x[:, :4] += k0 * y
        x[:, 4:8] += k1 * y
        x[:, 16:20] -= k1 * pv
        x[:, 12:16] -= k0 * pv
        x[:, 8:12] -= k0 * pp
        self.state[slots] = x

    def cov(self, slot: int) -> np.ndarray:
        """The full 8x8 covariance of one filter."""
        c = np.zeros((8, 8))
        i = np.arange(4)
        row = self.state[slot]
        c[i, i], c[i + 4, i + 4] = row[8:12], row[16:20]
        c[i, i + 4] = c[i + 4, i] = row[12:16]
        return c

    def boxes(self, slots: np.ndarray) -> np.ndarray:
        """The filtered boxes (n, 4) of the filters in ``slots``."""
        m = self.state[slots, :4]
        half = np.empty((len(m), 2))
        half[:, 0] = m[:, 2] * m[:, 3] / 2
        half[:, 1] = m[:, 3] / 2
        return np.concatenate([m[:, :2] - half, m[:, :2] + half], axis=1)


class KalmanBox:
    """Constant-velocity Kalman filter for one box; state (cx, cy, a, h, vcx, vcy, va, vh) in a
    slot of a KalmanBank (its own, unless a tracker's is given)."""

    def __init__(self, box: np.ndarray, bank: KalmanBank | None = None) -> None:
        self.bank = bank if bank is not None else KalmanBank(1)
        self.slot = self.bank.add(np.asarray(box, dtype=np.float64))

    @property
    def mean(self) -> np.ndarray:
        return self.bank.mean[self.slot]

    @property
    def cov(self) -> np.ndarray:
        return self.bank.cov(self.slot)

    def predict(self, dt: float) -> None:
        self.bank.predict(np.array([self.slot]), dt)

    def update(self, box: np.ndarray) -> None:
        self.bank.update(np.array([self.slot]), np.asarray(box, dtype=np.float64)[None])

    @property
    def box(self) -> np.ndarray:
        return _box(self.mean)

    @property
    def velocity(self) -> np.ndarray:
        """Velocity of the box centre in pixels per second."""
        return self.mean[4:6].copy()


class FrozenBox(KalmanBox):
    """A filter's state at one moment, read-only: what the observers of one frame see while the
    tracker goes on with the next."""

    def __init__(self, mean: np.ndarray) -> None:  # no bank slot of its own
        self._mean = mean
        self.slot = -1

    @property
    def mean(self) -> np.ndarray:
        return self._mean

    def predict(self, dt: float) -> None:
        raise TypeError("a frozen filter state does not move")

    def update(self, box: np.ndarray) -> None:
        raise TypeError("a frozen filter state does not move")


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU between every box of a (n,4) and b (m,4), boxes as x0, y0, x1, y1."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.maximum(x1 - x0, 0.0) * np.maximum(y1 - y0, 0.0)
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


def _assign(sim: np.ndarray, min_sim: float,
            bias: np.ndarray | None = None) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Optimal pairs of rows (tracks) and columns (detections), ByteTrack's way: cost 1 - sim,
    and leaving a row and a column unmatched costs 1 - min_sim, so every pair the gate allows with
    sim >= min_sim can be matched (negative DIoU included: boxes that do not overlap after a gap).
    Gated pairs (sim -inf) are never matched. Maximises the sum of (sim - min_sim) over pairs.
    ``bias`` (one value <= 0 per row) handicaps a row where it competes for a column with others;
    a pair allowed by ``min_sim`` stays matchable whatever its row's bias."""
    n, m = sim.shape
    if n == 0 or m == 0:
        return [], list(range(n)), list(range(m))
    ok = sim >= min_sim  # gated pairs are -inf
    if bias is not None:
        sim = sim + bias[:, None]
        min_sim += float(bias.min())
    masked = np.where(ok, sim, -np.inf)
    best = masked.argmax(axis=1)
    rows = np.flatnonzero(ok[np.arange(n), best]).tolist()
    if not rows:
        return [], list(range(n)), list(range(m))
    cols = best[rows].tolist()
    # every row's best pair is its own: that is the optimum; else Jonker-Volgenant
    pairs = list(zip(rows, cols, strict=True)) if len(set(cols)) == len(cols) else _lap_pairs(sim, ok, min_sim)
    mr = {r for r, _ in pairs}
    mc = {c for _, c in pairs}
    return pairs, [r for r in range(n) if r not in mr], [c for c in range(m) if c not in mc]


def _lap_pairs(sim: np.ndarray, ok: np.ndarray, min_sim: float) -> list[tuple[int, int]]:
    m = sim.shape[1]
    limit = 1.0 - min_sim
    cost = np.where(ok, 1.0 - sim, limit + 1.0).astype(np.float64)
    _, x, _ = lapjv(np.ascontiguousarray(cost), extend_cost=True, cost_limit=limit)
    return [(r, int(c)) for r, c in enumerate(x) if 0 <= c < m and ok[r, c]]


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
        keep = t - self._last <= self.forget_s + TIME_TOL_S
        if not keep.all():
            self._first, self._since, self._last = self._first[keep], self._since[keep], self._last[keep]
        since = np.full(len(boxes), t)
        new = np.ones(len(boxes), bool)
        if len(boxes) and len(self._first):
            io = iou_matrix(boxes, self._first)
            k = io.argmax(axis=1)
            hit = np.flatnonzero(io[np.arange(len(boxes)), k] >= self.iou)
            since[hit] = self._since[k[hit]]  # (two boxes on one entry are both "there since")
            new[hit] = False
            self._last[k[hit]] = t
        if new.any():
            self._first = np.concatenate([self._first, boxes[new]])
            self._since = np.concatenate([self._since, since[new]])
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
    last_high: float = 0.0  # when it was last matched to a confident box, and that box
    high_box: np.ndarray = field(default_factory=lambda: np.zeros(4))
    path: collections.deque[tuple[float, float, float]] = field(default_factory=lambda: collections.deque(maxlen=256))
    rest_since: float = 0.0  # since when it has stayed where it is now (its matched box centres)
    rest_span: tuple[float, float, float, float] | None = None  # the centres' bounding box since rest_since

    @property
    def box(self) -> np.ndarray:
        """The filtered box in pixels (x0, y0, x1, y1)."""
        return self.kf.box

    def snapshot(self) -> Track:
        """This track as it is now, for readers of this frame: the tracker changes the track itself
        (its boxes, filter, counts) when the next frame comes, maybe while they still read it. Its
        ``path`` stays the tracker's own (not for readers)."""
        snap = copy.copy(self)
        snap.kf = FrozenBox(self.kf.mean.copy())
        return snap

    @property
    def age(self) -> float:
        return self.last_seen - self.first_seen


@dataclass(frozen=True)
class TrackerConfig:
    """Scores are the detector's, spans in seconds, distances in box heights (bh)."""

    high_score: float = 0.5  # a confident box: matched first, by overlap with a prediction from min_iou on
    low_score: float = 0.25  # a weak one (someone standing still, half hidden): from min_iou_low on
    new_track_score: float = 0.6  # an unmatched box at or above this starts a (tentative) track
    min_iou: float = 0.3
    min_iou_low: float = 0.4
    min_hits: int = 3  # a tentative track is confirmed after this many matches...
    min_high_hits: int = 2  # ...this many of them confident (a static thing that scores 0.45 is not a person)...
    min_age_s: float = 0.0  # ...spanning at least this long...
    confirm_within_s: float = 1.5  # ...within this long of its first box (else it was a ghost)
    tentative_max_lost_s: float = 0.5  # a tentative track survives misses this long
    max_lost_s: float = 3.0  # a confirmed track coasts this long and can be picked up again meanwhile
    stale_handicap: float = 0.1  # IoU a track lost longer than relink_after_s gives away to one seen just now
    reserve_iou: float = 0.75  # a weak box fitting a track this well...
    reserve_margin: float = 0.3  # ...and this much better than any confident box is kept for it
    echo_iou: float = 0.3  # a weak box overlapping a matched confident box this much is its echo
    occluded_iou: float = 0.3  # a track whose prediction overlaps a matched confident box this much is hidden
    low_noise: float = 9.0  # a weak box is a measurement this much less certain (Kalman R)
    relink_after_s: float = 0.25  # a track lost longer than this may be re-linked...
    relink_min_diou: float = 0.2  # ...to a confident box this close (DIoU) within the gate:
    gate_bh: float = 0.3  # this far from where it was last seen or is predicted...
    gate_speed_bh_s: float = 0.3  # ...plus this much per second lost
    merge_after_s: float = 0.15  # a track unmatched this long may be taken over by a fragment of it
    merge_heading_bh_s: float = 0.3  # a fragment and the lost track, both this fast, head the same way
    birth_max_iou: float = 0.3  # no new track from a box overlapping a confirmed track's more than this
    rest_bh: float = 0.5  # a track moving less than this is at rest...
    background_grace_s: float = 1.0  # ...and a weak box that was there this much before is the background


class Tracker:
    """Anonymous multi-person tracking (see the module docstring). Not thread-safe: one thread."""

    def __init__(self, cfg: TrackerConfig | None = None) -> None:
        self.cfg = cfg or TrackerConfig()
        self.tracks: list[Track] = []
        self._t: float | None = None
        self.created = 0
        self.ended: list[Track] = []  # tracks dropped by the last update (confirmed ones only)
        self._matched: list[tuple[Track, int]] = []  # this update's matches (track, detection index)
        self.weak = WeakBoxes()
        self.bank = KalmanBank()
        self._released: list[int] = []  # filter slots of the tracks dropped by the last update
        self._since = np.zeros(0)  # per detection of this update: since when a weak box has been there
        self._iou = np.zeros((0, 0))  # this update's IoU of every track's prediction with every box
        self._pred = np.zeros((0, 4))

    def reset(self) -> None:
        """Forget every track and every remembered box (opt-out, pause): the ids are gone for good."""
        self.bank = KalmanBank()
        self._released = []
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
        for slot in self._released:  # the tracks that ended last time are no longer anyone's to read
            self.bank.release(slot)
        self._released = []
        slots = np.array([tr.kf.slot for tr in self.tracks], dtype=np.int64)
        self.bank.predict(slots, dt)
        self._pred = self.bank.boxes(slots)  # this frame's predictions, one row per track (pixels)
        for tr in self.tracks:
            tr.det_index = -1
        self._matched = []
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        high = np.flatnonzero(scores >= cfg.high_score)
        low = np.flatnonzero((scores >= cfg.low_score) & (scores < cfg.high_score))
        self._since = np.full(len(boxes), t)
        self._since[low] = self.weak.observe(boxes[low], t)
        self._iou = iou_matrix(self._pred, boxes)  # every prediction vs every box
        tentative = [tr for tr in self.tracks if not tr.confirmed]
        everyone = list(range(len(self.tracks)))
        stale = np.array([t - tr.last_seen > cfg.relink_after_s + TIME_TOL_S for tr in self.tracks], dtype=bool)
        bias = np.where(stale, -cfg.stale_handicap, 0.0)

        # 1. every track vs the confident boxes, by overlap with its prediction (ByteTrack's first
        #    stage). Not a track whose weak box fits it far better than any confident one: that is
        #    them, standing still and scoring low, and the confident box beside them a stray one
        reserved = self._reserved(high, low, boxes)
        rows = [i for i in everyone if i not in reserved]
        un_tr, un_high = self._stage(rows, high, boxes, scores, t, cfg.min_iou, bias=bias)
        # 2. the tracks left vs the weak boxes. A weak box mostly over a confident box just matched
        #    is that person's echo (a part of them, or of someone they hide), and a track whose
        #    prediction lies under a matched confident box is hidden: it coasts on its prediction
        #    rather than being dragged onto the person in front
        taken_high = np.ones(len(high), bool)
        taken_high[un_high] = False
        used = high[taken_high]
        un_tr = sorted(set(un_tr) | reserved)
        lows, hidden = low, []
        if len(used):
            lows = low[~(iou_matrix(boxes[low], boxes[used]) > cfg.echo_iou).any(axis=1)]
            behind = np.asarray((self._iou[un_tr][:, used] > cfg.occluded_iou).any(axis=1)).tolist()
            hidden = [i for i, b in zip(un_tr, behind, strict=True) if b]
        un_tr, un_low = self._stage([i for i in un_tr if i not in hidden], lows, boxes, scores, t, cfg.min_iou_low,
                                    bias=bias)
        un_tr = sorted(un_tr + hidden)
        # 3. confirmed tracks lost for a while vs the confident boxes left, overlap or not, within
        #    the gate: someone reappearing after a second behind another shopper, a little off the
        #    prediction, or where they stopped
        lost = [i for i in un_tr if self.tracks[i].confirmed and stale[i]]
        left = high[un_high]
        lost, un = self._stage(lost, left, boxes, scores, t, cfg.relink_min_diou, relink=True)
        rest = left[un]
        # 4. the lost tracks left vs the weak boxes left, on where each was last seen: someone who
        #    stopped (the prediction went on without them) and now scores low, standing still
        self._stage(lost, lows[un_low], boxes, scores, t, cfg.min_iou_low, on_last=True)
        # 5. new tracks from the confident boxes left, unless a box overlaps a confirmed track's
        #    (a second box on one person, which the detector often adds beside the first)
        taken = np.array([tr.det_box if tr.det_index >= 0 else self._pred[i]
                          for i, tr in enumerate(self.tracks[: len(self._pred)]) if tr.confirmed]).reshape(-1, 4)
        clear = (iou_matrix(boxes[rest], taken) <= cfg.birth_max_iou).all(axis=1) if len(taken) else np.ones(len(rest), bool)
        for j in rest[clear].tolist():
            if scores[j] >= cfg.new_track_score:
                self.created += 1
                self.tracks.append(Track(secrets.token_hex(16), KalmanBox(boxes[j], self.bank), t, t, float(scores[j]),
                                         det_box=boxes[j].copy(), det_index=j, first_box=boxes[j].copy(),
                                         last_high=t, high_box=boxes[j].copy()))
        # the filters are corrected together, a weak box as a less certain measurement
        js = [j for _, j in self._matched]
        self.bank.update(np.array([tr.kf.slot for tr, _ in self._matched], dtype=np.int64), boxes[js],
                         np.where(scores[js] >= cfg.high_score, 1.0, cfg.low_noise))
        # which unmatched tracks' predictions have left the frame (rows of _pred, before the merge)
        left_view = set()
        if frame is not None:
            left_view = {id(tr) for i, tr in enumerate(self.tracks[: len(self._pred)])
                         if tr.det_index < 0 and _outside(self._pred[i], frame)}
        # 6. a track confirmed just now may be someone lost a moment ago: the same token again
        self._merge([tr for tr in tentative if tr.confirmed], t)
        # 7. deletion
        keep: list[Track] = []
        self.ended = []
        for tr in self.tracks:
            if tr.confirmed:
                if t - tr.last_seen > cfg.max_lost_s + TIME_TOL_S or (id(tr) in left_view and tr.det_index < 0):
                    self.ended.append(tr)
                    self._released.append(tr.kf.slot)
                    continue
            elif (t - tr.last_seen > cfg.tentative_max_lost_s + TIME_TOL_S
                  or t - tr.first_seen > cfg.confirm_within_s + TIME_TOL_S):
                self._released.append(tr.kf.slot)
                continue  # never confirmed: a ghost, or someone only glimpsed
            keep.append(tr)
        self.tracks = keep
        return [tr for tr in self.tracks if tr.confirmed and tr.det_index >= 0]

    def _reserved(self, high: np.ndarray, low: np.ndarray, boxes: np.ndarray) -> set[int]:
        """Tracks whose best weak box fits them (IoU) by reserve_iou and reserve_margin better than
        any confident box does."""
        if not self.tracks or not len(low):
            return set()
        fit = self._iou[:, low].max(axis=1)
        best_high = self._iou[:, high].max(axis=1) if len(high) else np.zeros(len(self.tracks))
        return set(np.flatnonzero((fit >= self.cfg.reserve_iou) & (fit >= best_high + self.cfg.reserve_margin)).tolist())

    def _stage(self, rows: list[int], cols: np.ndarray, boxes: np.ndarray, scores: np.ndarray, t: float, min_sim: float,
               *, relink: bool = False, on_last: bool = False, bias: np.ndarray | None = None) -> tuple[list[int], np.ndarray]:
        """Match ``self.tracks[rows]`` with the detections ``cols``: by overlap (IoU >= min_sim) with
        the prediction, or with the last matched box (``on_last``), or as a re-link (DIoU >= min_sim
        within the gate). Returns the rows and the positions in ``cols`` left unmatched."""
        if not rows or not len(cols):
            return rows, np.arange(len(cols))
        sel = [self.tracks[i] for i in rows]
        dets = boxes[cols]
        if relink:
            pred = self._pred[rows]
            last = np.array([tr.det_box for tr in sel])
            gaps = np.array([t - tr.last_seen for tr in sel])
            sim = _relink_similarity(pred, last, dets, gaps, self.cfg)
        else:
            sim = iou_matrix(np.array([tr.det_box for tr in sel]), dets) if on_last else self._iou[rows][:, cols]
            # a weak box that was there before a track came to rest is the background it came to
            # rest on (a sign, a railing), not the person (confident boxes are always "new")
            since = self._since[cols]
            if (since < t - self.cfg.background_grace_s - TIME_TOL_S).any():
                rest = np.array([tr.rest_since for tr in sel])
                sim[since[None, :] < rest[:, None] - self.cfg.background_grace_s - TIME_TOL_S] = -np.inf
        pairs, un_r, un_c = _assign(sim, min_sim, bias=None if bias is None else bias[rows])
        for r, c in pairs:
            self._match(sel[r], int(cols[c]), boxes, scores, t)
        return [rows[r] for r in un_r], np.asarray(un_c, dtype=np.int64)

    def _merge(self, fresh: list[Track], t: float) -> None:
        """Re-link fragments: a track confirmed in this frame takes over a confirmed track that was
        lost before it began, when they agree in position (where the lost one was last seen, or
        where its velocity would have taken it), size and heading. Geometry only."""
        cfg = self.cfg
        lost = [tr for tr in self.tracks
                if tr.confirmed and tr.det_index < 0 and t - tr.last_seen > cfg.merge_after_s + TIME_TOL_S]
        if not fresh or not lost:
            return
        sim = np.full((len(fresh), len(lost)), -np.inf)
        for i, f in enumerate(fresh):
            cf = (f.first_box[:2] + f.first_box[2:]) / 2
            hf = f.first_box[3] - f.first_box[1]
            vf = f.kf.velocity
            for k, lo in enumerate(lost):
                if lo.last_high >= f.first_seen:
                    continue  # both seen for sure at the same time: two people
                # where the lost one was last seen, and where it was last seen for sure (the weak
                # boxes after that may have been echoes of someone else)
                best = np.inf
                for when, seen in ((lo.last_seen, lo.det_box), (lo.last_high, lo.high_box)):
                    gap = max(f.first_seen - when, 0.0)
                    hl = seen[3] - seen[1]
                    if gap > cfg.max_lost_s + TIME_TOL_S or not 0.75 <= hf / max(hl, 1e-6) <= 1 / 0.75:
                        continue
                    cl = (seen[:2] + seen[2:]) / 2
                    d = min(np.hypot(*(cf - cl)), np.hypot(*(cf - cl - lo.kf.velocity * gap))) / hl
                    best = min(best, d / (cfg.gate_bh + cfg.gate_speed_bh_s * gap))
                if best > 1.0:
                    continue
                hl = lo.det_box[3] - lo.det_box[1]
                vl = lo.kf.velocity
                sf, sl = np.hypot(*vf) / hl, np.hypot(*vl) / hl
                if min(sf, sl) > cfg.merge_heading_bh_s and float(vf @ vl) < 0:
                    continue  # walking the other way
                sim[i, k] = 1.0 - best
        pairs, _, _ = _assign(sim, 0.0)
        gone = set()
        for i, k in pairs:
            f, lo = fresh[i], lost[k]
            self.bank.release(lo.kf.slot)
            lo.kf, lo.det_box, lo.det_index, lo.last_seen, lo.score = f.kf, f.det_box, f.det_index, f.last_seen, f.score
            lo.hits += f.hits
            lo.high_hits += f.high_hits
            gone.add(id(f))
        self.tracks = [tr for tr in self.tracks if id(tr) not in gone]

    def _match(self, tr: Track, j: int, boxes: np.ndarray, scores: np.ndarray, t: float) -> None:
        self._matched.append((tr, j))  # the filters are corrected together once every stage has run
        b = boxes[j].tolist()
        cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
        tr.path.append((t, cx, cy))
        r2 = (self.cfg.rest_bh * (b[3] - b[1])) ** 2
        span = tr.rest_span
        if span is not None:
            span = (min(span[0], cx), min(span[1], cy), max(span[2], cx), max(span[3], cy))
        if span is None or max(cx - span[0], span[2] - cx) ** 2 + max(cy - span[1], span[3] - cy) ** 2 > r2:
            # back to the last time it was farther than the rest radius from here (while the
            # bounding box of the centres since the rest began is within reach, it still is at rest)
            tr.rest_since, x0, y0, x1, y1 = t, cx, cy, cx, cy
            for when, x, y in reversed(tr.path):
                if (x - cx) ** 2 + (y - cy) ** 2 > r2:
                    break
                tr.rest_since, x0, y0, x1, y1 = when, min(x0, x), min(y0, y), max(x1, x), max(y1, y)
            span = (x0, y0, x1, y1)
        tr.rest_span = span
        tr.det_box = boxes[j].copy()  # (never changed in place: shared with high_box below)
        tr.det_index = int(j)
        tr.last_seen = t
        tr.score = score = float(scores[j])
        tr.hits += 1
        if score >= self.cfg.high_score:
            tr.high_hits += 1
            tr.last_high, tr.high_box = t, tr.det_box
        if (not tr.confirmed and tr.hits >= self.cfg.min_hits and tr.high_hits >= self.cfg.min_high_hits
                and tr.age >= self.cfg.min_age_s - TIME_TOL_S):
            tr.confirmed = True
