"""Counting lines, occupancy and queues, from the tracker's confirmed tracks (geometry only).

**Lines.** A ``line`` zone is a polyline with an "in" side. Each person's foot anchor (the
bottom centre of their matched box) is followed across it:

- a person's *side* of a line is committed once their feet are ``hysteresis`` past it (person
  heights, or metres with a ground plane); between -hysteresis and +hysteresis (the band) nothing
  is decided;
- a crossing counts when the side commits to the other side *and* the feet really went through
  the polyline since the last commitment (an odd number of steps from one sighting to the next
  intersected it). Someone dithering on the line commits nothing, someone stepping over and back
  crosses twice (even) and counts nothing, someone walking round the end of the line never
  crosses it;
- a track starts from where the tracker first saw that person (its first box), not from where it
  was confirmed a few frames later: a fragment that starts already past the line has its side
  committed there and counts nothing, and one that starts on it (within the band) starts on the
  side it is on: it counts only by going through to the other side. A new track that
  starts close to where a track was lost or ended near the line a moment before (the same person
  seen again after a miss, or after turning round faster than the tracker's filter follows) takes
  over that track's state instead, and the lost one keeps none of it. The tracker's own fragment
  merging keeps most people on one track anyway.

**Occupancy.** People now per area zone and in the whole view: confirmed tracks seen within
``OCCUPANCY_HOLD_S`` (a person the detector misses for a frame or two is still there).

**Queues.** For ``queue`` zones, with the stay hysteresis of the signals (inside ``ENTER_S``
before a stay starts, outside ``LEAVE_S`` before it ends): the queue's length is the people who
have been inside for at least the zone's ``min_wait_s`` (passers-by take less), and a person
leaving after at least ``min_wait_s`` reports how long they waited.

Nothing here holds an identity: states are keyed by the tracker's random ids and forgotten when
the track ends (or at an opt-out, with the tracks). What leaves is numbers: a crossing (line,
direction, time), a wait (zone, seconds, time), counts of people.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import numpy as np

from .tracker import Track
from .zones import Zone, ZoneMap

ENTER_S = 0.5  # as the signal engine's stays
LEAVE_S = 1.0
OCCUPANCY_HOLD_S = 0.5  # a confirmed track missed this long still counts as present
HANDOFF_S = 2.0  # a track ending on a line hands its state to a fragment starting there within this...
HANDOFF_GATE = 0.5  # ...and this close (person heights, plus HANDOFF_SPEED per second of gap)
HANDOFF_SPEED = 1.0
HANDOFF_BAND = 2.0  # only tracks ending within this many hysteresis widths of the line hand over


def foot(box: np.ndarray) -> np.ndarray:
    """The foot anchor of a box (x0, y0, x1, y1): bottom centre, pixels."""
    return np.array([(box[0] + box[2]) / 2.0, box[3]], dtype=np.float64)


def _cross(o: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    return float((a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]))


def segments_intersect(p0: np.ndarray, p1: np.ndarray, a: np.ndarray, b: np.ndarray) -> bool:
    """Whether the step p0 -> p1 crosses segment a-b."""
    d1, d2 = _cross(a, b, p0), _cross(a, b, p1)
    d3, d4 = _cross(p0, p1, a), _cross(p0, p1, b)
    # half-open on both: a point on the segment's line counts as on its positive side (touching it
    # and turning back is two crossings or none), a vertex on the step's line belongs to one of the
    # two segments that share it (a step through a polyline's bend crosses it once)
    return ((d1 >= 0) != (d2 >= 0)) and ((d3 > 0) != (d4 > 0))


@dataclass(frozen=True, slots=True)
class Crossing:
    line: int  # zone index
    direction: str  # "in" | "out"
    t: float  # monotonic, the frame where it counted


@dataclass(frozen=True, slots=True)
class Wait:
    zone: int  # zone index (a queue)
    t: float  # monotonic, when they left
    wait_s: float


@dataclass(frozen=True, slots=True)
class CountFrame:
    """What the counter has to say about one frame: numbers only."""

    crossings: tuple[Crossing, ...] = ()
    waits: tuple[Wait, ...] = ()
    people: int = 0  # in the whole view
    occupancy: tuple[int, ...] = ()  # per zone index (0 for lines and excluded zones)
    queues: tuple[int, ...] = ()  # per zone index: queue length (0 for other kinds)


@dataclass(slots=True)
class _LineState:
    side: int  # committed side: +1, -1, 0 (not yet known)
    parity: int  # steps through the line since the side was last committed
    last: np.ndarray  # last foot anchor, pixels
    bh: float


@dataclass(slots=True)
class _QueueStay:
    start: float  # inside since
    started: bool = False  # inside ENTER_S: a stay, no longer a candidate
    outside_since: float | None = None


@dataclass(slots=True)
class _Handoff:
    t: float
    state: _LineState


@dataclass
class _TrackCount:
    lines: dict[int, _LineState] = field(default_factory=dict)
    queues: dict[int, _QueueStay] = field(default_factory=dict)
    last_seen: float = 0.0


class Counter:
    """Lines, occupancy and queues for one zone map (see the module docstring). One thread."""

    def __init__(self, zones: ZoneMap) -> None:
        self.zones = zones
        self.lines = zones.lines
        self.queues = zones.queues
        self.areas = [z for z in zones.zones if z.kind not in ("line", "excluded")]
        self._segs = {z.index: [(z.polygon[i].astype(np.float64), z.polygon[i + 1].astype(np.float64))
                                for i in range(len(z.polygon) - 1)] for z in self.lines}
        self.states: dict[str, _TrackCount] = {}
        self._handoffs: dict[int, collections.deque[_Handoff]] = {z.index: collections.deque(maxlen=16)
                                                                 for z in self.lines}

    def reset(self) -> None:
        """Forget every track's state (opt-out, pause)."""
        self.states.clear()
        for q in self._handoffs.values():
            q.clear()

    # -- geometry -------------------------------------------------------------------------------
    def signed_distance(self, line: Zone, p: np.ndarray, bh: float) -> float:
        """Distance of p (pixels) from the polyline in measuring units, positive on the "in" side."""
        best: tuple[float, np.ndarray, float] | None = None
        for a, b in self._segs[line.index]:
            ab = b - a
            u = float(np.clip(((p - a) @ ab) / max(float(ab @ ab), 1e-12), 0.0, 1.0))
            q = a + u * ab
            d2 = float((p - q) @ (p - q))
            if best is None or d2 < best[0]:
                best = (d2, q, _cross(a, b, p))
        assert best is not None
        _, q, cross = best
        pu = self.zones.to_units(np.stack([p, q]), bh)
        dist = float(np.hypot(*(pu[0] - pu[1])))
        sign = 1.0 if cross >= 0 else -1.0
        return dist * sign * line.in_sign

    def crosses(self, line: Zone, p0: np.ndarray, p1: np.ndarray) -> bool:
        return any(segments_intersect(p0, p1, a, b) for a, b in self._segs[line.index])

    # -- per frame ------------------------------------------------------------------------------
    def step(self, t: float, tracks: list[Track], ended: list[Track], alive: list[Track]) -> CountFrame:
        """``tracks``: the confirmed tracks matched in this frame; ``ended``: the confirmed tracks
        the tracker dropped in this update; ``alive``: every track it holds now."""
        crossings: list[Crossing] = []
        waits: list[Wait] = []
        for tr in tracks:
            st = self.states.get(tr.tid)
            p = foot(tr.det_box)
            bh = float(tr.det_box[3] - tr.det_box[1])
            if st is None:
                lost = [self.states[o.tid] for o in alive if o.confirmed and o.det_index < 0 and o.tid in self.states]
                st = self.states[tr.tid] = _TrackCount()
                first = foot(tr.first_box)
                fbh = float(tr.first_box[3] - tr.first_box[1])
                for line in self.lines:
                    st.lines[line.index] = self._birth(line, tr.first_seen, first, fbh, lost)
            st.last_seen = t
            for line in self.lines:
                c = self._advance(line, st.lines[line.index], p, bh, t)
                if c is not None:
                    crossings.append(c)
            for q in self.queues:
                w = self._queue(q, st, q.contains(p), t)
                if w is not None:
                    waits.append(w)
        for tr in ended:
            st = self.states.pop(tr.tid, None)
            if st is None:
                continue
            for q in self.queues:
                stay = st.queues.get(q.index)
                if stay is not None and stay.started:
                    end = stay.outside_since if stay.outside_since is not None else tr.last_seen
                    if end - stay.start >= q.min_wait_s:
                        waits.append(Wait(q.index, end, end - stay.start))
            for line in self.lines:
                ls = st.lines[line.index]
                if abs(self.signed_distance(line, ls.last, ls.bh)) < HANDOFF_BAND * line.hysteresis:
                    self._handoffs[line.index].append(_Handoff(tr.last_seen, ls))
        if len(self.states) > len(alive):  # tracks gone without ending (a reset, a merged fragment)
            ids = {tr.tid for tr in alive}
            for tid in [k for k in self.states if k not in ids]:
                del self.states[tid]
        return CountFrame(tuple(crossings), tuple(waits), *self._occupancy(t, alive))

    def _birth(self, line: Zone, t0: float, p: np.ndarray, bh: float, lost: list[_TrackCount]) -> _LineState:
        """A new track's state on a line, from where it was first seen. If a track ended or got
        lost near the line just before, close by (the same person, seen again as a new track after a
        miss or a sudden turn), it takes over that track's state, and the step from where that one
        was last seen to here counts as the person's."""
        best: tuple[float, _LineState, _Handoff | _TrackCount] | None = None
        candidates: list[tuple[float, _LineState, _Handoff | _TrackCount]] = [
            (h.t, h.state, h) for h in self._handoffs[line.index]]
        candidates += [(st.last_seen, st.lines[line.index], st) for st in lost]
        for when, ls, owner in candidates:
            gap = t0 - when
            if not -0.25 <= gap <= HANDOFF_S:
                continue
            if abs(self.signed_distance(line, ls.last, ls.bh)) >= HANDOFF_BAND * line.hysteresis:
                continue  # far from the line, its side is plain: nothing to hand over
            dist = float(np.hypot(*(p - ls.last))) / max(bh, ls.bh, 1.0)
            if dist <= HANDOFF_GATE + HANDOFF_SPEED * max(gap, 0.0) and (best is None or dist < best[0]):
                best = (dist, ls, owner)
        if best is None:  # the side it is on, even within the band: leaving by the other side is crossing
            d = self.signed_distance(line, p, bh)
            return _LineState(0 if d == 0 else (1 if d > 0 else -1), 0, p, bh)
        _, ls, owner = best
        if isinstance(owner, _Handoff):
            self._handoffs[line.index].remove(owner)
        else:  # the lost track keeps nothing of it: seen again, it starts afresh (side unknown)
            owner.lines[line.index] = _LineState(0, 0, ls.last, ls.bh)
        return _LineState(ls.side, ls.parity, ls.last, ls.bh)

    def _advance(self, line: Zone, ls: _LineState, p: np.ndarray, bh: float, t: float) -> Crossing | None:
        if self.crosses(line, ls.last, p):
            ls.parity += 1
        ls.last, ls.bh = p, bh
        d = self.signed_distance(line, p, bh)
        if abs(d) < line.hysteresis:
            return None
        side = 1 if d > 0 else -1
        out = None
        if ls.side == -side and ls.parity % 2 == 1:
            out = Crossing(line.index, "in" if side > 0 else "out", t)
        ls.side, ls.parity = side, 0
        return out

    def _queue(self, q: Zone, st: _TrackCount, inside: bool, t: float) -> Wait | None:
        stay = st.queues.get(q.index)
        if stay is None:
            if inside:
                st.queues[q.index] = _QueueStay(start=t)
            return None
        if not stay.started:
            if not inside:
                del st.queues[q.index]
            elif t - stay.start >= ENTER_S:
                stay.started = True
            return None
        if inside:
            stay.outside_since = None
            return None
        if stay.outside_since is None:
            stay.outside_since = t
            return None
        if t - stay.outside_since < LEAVE_S:
            return None
        del st.queues[q.index]
        wait = stay.outside_since - stay.start
        return Wait(q.index, stay.outside_since, wait) if wait >= q.min_wait_s else None

    def _occupancy(self, t: float, alive: list[Track]) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
        occ = [0] * len(self.zones.zones)
        people = 0
        for tr in alive:
            if not tr.confirmed or t - tr.last_seen > OCCUPANCY_HOLD_S:
                continue
            people += 1
            p = foot(tr.det_box)
            for z in self.areas:
                if z.contains(p):
                    occ[z.index] += 1
        queues = [0] * len(self.zones.zones)
        for st in self.states.values():
            if t - st.last_seen > OCCUPANCY_HOLD_S + LEAVE_S:
                continue
            for q in self.queues:
                stay = st.queues.get(q.index)
                if stay is not None and stay.started and stay.outside_since is None and t - stay.start >= q.min_wait_s:
                    queues[q.index] += 1
        return people, tuple(occ), tuple(queues)
