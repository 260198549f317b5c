"""From tracks to sentiment vectors: per-track features, zone stays, and one vector per track
per window (default 2 s) carrying the three behavioural indices with their confidences.

Everything here is geometry and time. The engine never sees pixels: it gets boxes, optional
body-facing directions derived from pose keypoints, and timestamps.
"""

from __future__ import annotations

import collections
import math
import secrets
from dataclasses import dataclass, field

import numpy as np

from ..config import SignalsConfig
from ..tracking.tracker import Track
from ..tracking.zones import KIND_PRIORITY, Zone, ZoneMap
from . import definitions as d

ENTER_S = 0.5  # inside this long before a stay starts
LEAVE_S = 1.0  # outside this long before it ends (the stay ends when the person left)
MIN_AGE_S = 1.0  # younger tracks get null signals
# observed in at least 35 % of the window's frames it was there for (a detector missing 40 %, in
# bursts, leaves 40-60 %)
MIN_COVERAGE = 0.35
VEER_MEMORY_S = 3.0  # "was heading for / near the focus" counts this long
TURN_COS = math.cos(math.radians(45))  # a veer turns by more than 45 degrees from the approach
LONG_STAY_S = 3.0  # after a stay this long, leaving is judged by dwell satisfaction, not A
FACING_MAX_AGE_S = 1.0  # a pose-derived facing is used this long
HISTORY_S = 20.0
DEFAULT_TYPICAL_STAY_S = 10.0
ORIENTATION_NAMES = ("unknown", "facing", "side", "away")


@dataclass
class Sample:
    t: float
    anchor: np.ndarray  # pixels, bottom-centre of the box
    bh: float  # box height, pixels
    zones: tuple[int, ...]  # measured zones containing the anchor


@dataclass
class Stay:
    zone: Zone
    start: float
    outside_since: float | None = None
    oriented_s: float = 0.0


@dataclass
class TrackState:
    token: str  # random 128 bits (secrets), not the tracker's id; replaced every token_rotation_s
    first_t: float  # when the track's first detection was made
    token_born: float = 0.0
    samples: collections.deque[Sample] = field(default_factory=lambda: collections.deque(maxlen=400))
    facing: np.ndarray | None = None  # unit vector, image coordinates (y down = toward the camera)
    facing_conf: float = 0.0
    facing_t: float = -math.inf
    last_pose_t: float = -math.inf
    stays: dict[int, Stay] = field(default_factory=dict)  # zone index -> current stay
    candidates: dict[int, float] = field(default_factory=dict)  # zone index -> inside since (no stay yet)
    heading_for: dict[int, float] = field(default_factory=dict)  # attraction -> last time walking toward it
    heading_dir: dict[int, np.ndarray] = field(default_factory=dict)  # attraction -> unit direction then
    last_stay_end: float = -math.inf
    last_stay_len: float = 0.0
    leaving: int = -1  # the attraction left after a long stay, until out of its influence range
    window_frames: int = 0
    window_capped: int = 0
    window_first: int = 0  # the window's frame (1-based) this track was first seen in, in this window
    window_last: int = 0  # and last seen in
    ended_stays: list[tuple[Zone, float, str]] = field(default_factory=list)  # (zone, dwell, exit) this window
    veer_t: float = -math.inf  # last time a veer away from an attraction was seen
    motion_key: tuple[float, int, float | None] | None = None  # cache of SignalEngine._motion
    motion: tuple[np.ndarray, float] | None = None
    bh: float = 0.0  # cached median box height (see SignalEngine._bh)
    bh_n: int = -1
    bh_t: float = -math.inf

    def best_stay(self) -> Stay | None:
        """The current stay in the most specific zone (attraction, then aisle, then entrance)."""
        return min(self.stays.values(), key=lambda s: KIND_PRIORITY[s.zone.kind], default=None)

    def attraction_stay(self) -> Stay | None:
        return next((s for s in self.stays.values() if s.zone.kind == "attraction"), None)


@dataclass(frozen=True)
class Vector:
    """One track in one window. Signals are None when the window is not trustworthy."""

    t_start: float
    t_end: float
    token: str
    zone: int  # index into the config's zones, -1 none
    dwell_s: float
    engagement: float | None
    engagement_conf: float
    satisfaction: float | None
    satisfaction_conf: float
    approach: float | None
    approach_conf: float
    speed: float  # person heights per second (or floor m/s / 1.7 with a ground plane)
    frames: int
    orientation: int  # index into ORIENTATION_NAMES
    exit: int  # index into EXIT_NAMES, 0 when no stay ended in this window


EXIT_NAMES = ("none", "calm", "truncated", "veer", "abrupt", "wander", "pass")


class TypicalStays:
    """Per-zone running median of stay durations, in RAM only (bounded)."""

    def __init__(self, zones: list[Zone]) -> None:
        self._fixed = {z.index: z.expected_dwell_s for z in zones}
        self._seen: dict[int, collections.deque[float]] = {z.index: collections.deque(maxlen=200) for z in zones}

    def typical(self, zone: Zone) -> float:
        fixed = self._fixed.get(zone.index)
        if fixed:
            return fixed
        seen = self._seen[zone.index]
        return float(np.median(seen)) if len(seen) >= 5 else DEFAULT_TYPICAL_STAY_S

    def add(self, zone: Zone, seconds: float) -> None:
        self._seen[zone.index].append(seconds)

    def clear(self) -> None:
        for q in self._seen.values():
            q.clear()


def new_token() -> str:
    """A session token: 128 random bits from the OS (secrets), hex. Never derived from anything
    about the person, their position or the time."""
    return secrets.token_hex(16)


class SignalEngine:
    def __init__(self, cfg: SignalsConfig, zones: ZoneMap, token_rotation_s: float = 600.0) -> None:
        self.token_rotation_s = token_rotation_s
        self.cfg = cfg
        self.zones = zones
        self.window_s = cfg.window_s
        self.states: dict[str, TrackState] = {}
        self.typical = TypicalStays(zones.zones)
        self._window_start: float | None = None
        self._window_frames = 0
        self._last_t: float | None = None

    # -- housekeeping ---------------------------------------------------------------------------
    def reset(self) -> int:
        """Forget every track and every learned stay (opt-out): returns tracks dropped."""
        n = len(self.states)
        self.states.clear()
        self.typical.clear()
        self._window_start = None
        self._window_frames = 0
        self._last_t = None
        return n

    def pose_candidates(self, tracks: list[Track], t: float, budget: int) -> list[Track]:
        """Up to ``budget`` tracks to run pose on this frame: big enough to trust, people in or
        near an attraction first, then whoever has waited longest since their last pose."""
        if budget <= 0:
            return []
        ok = [tr for tr in tracks if tr.det_box[3] - tr.det_box[1] >= self.cfg.pose_min_box_px]

        def key(tr: Track) -> tuple[int, float]:
            st = self.states.get(tr.tid)
            near = st is not None and bool(st.heading_for or st.attraction_stay())
            return (0 if near else 1, st.last_pose_t if st else -math.inf)

        return sorted(ok, key=key)[:budget]

    def set_facing(self, tid: str, t: float, facing: np.ndarray | None, conf: float) -> None:
        st = self.states.get(tid)
        if st is None:
            return
        st.last_pose_t = t
        if facing is None:
            return
        if st.facing is not None and t - st.facing_t <= FACING_MAX_AGE_S:
            # smooth over ~1 s: confidence-weighted circular mean of the old and new direction
            v = st.facing * st.facing_conf * 0.6 + facing * conf
            n = float(np.hypot(*v))
            if n > 1e-6:
                st.facing, st.facing_conf, st.facing_t = v / n, min(1.0, 0.5 * st.facing_conf + conf), t
                return
        st.facing, st.facing_conf, st.facing_t = facing, conf, t

    # -- per frame ------------------------------------------------------------------------------
    def step(self, t: float, tracks: list[Track], ended: list[Track], capped: bool) -> list[Vector]:
        """Feed one processed frame; returns the vectors of any window this frame closed."""
        out: list[Vector] = []
        if self._window_start is None:
            self._window_start = math.floor(t / self.window_s) * self.window_s
        while t >= self._window_start + self.window_s:
            out.extend(self._close_window(self._window_start, self._window_start + self.window_s))
            self._window_start += self.window_s
        self._window_frames += 1
        dt = 0.0 if self._last_t is None else min(max(t - self._last_t, 0.0), 1.0)
        self._last_t = t
        for tr in tracks:
            box = tr.det_box
            anchor = np.array([(box[0] + box[2]) / 2, box[3]])
            st = self.states.get(tr.tid)
            if self.zones.in_excluded(anchor):
                # nothing is measured in an excluded zone; a stay elsewhere ends as if they left
                if st is not None:
                    self._update_stay(st, t, (), dt)
                continue
            if st is None:
                # a track's age counts from its first detection, before the tracker confirmed it
                born = tr.first_seen if math.isfinite(tr.first_seen) else t
                st = self.states[tr.tid] = TrackState(new_token(), min(t, born), token_born=t)
            zs = tuple(z.index for z in self.zones.zones_at(anchor))
            st.samples.append(Sample(t, anchor, float(box[3] - box[1]), zs))
            while st.samples and t - st.samples[0].t > HISTORY_S:
                st.samples.popleft()
            if st.window_frames == 0:
                st.window_first = self._window_frames
            st.window_last = self._window_frames
            st.window_frames += 1
            st.window_capped += int(capped)
            self._update_stay(st, t, zs, dt)
            self._update_heading_for(st, t)
        for tr in ended:
            st = self.states.get(tr.tid)
            if st is not None:
                for stay in list(st.stays.values()):
                    if stay.outside_since is not None:  # they had left; the track ended afterwards
                        self._end_stay(st, stay, stay.outside_since, self._exit_pattern(st, stay, stay.outside_since))
                    else:  # the track ended inside: how they left is unknown, but not what they did
                        t_end = st.samples[-1].t if st.samples else t
                        self._end_stay(st, stay, t_end, self._inside_pattern(st, stay, t_end) or "truncated")
        return out

    def flush(self) -> list[Vector]:
        """Close the current window (at shutdown or in tests)."""
        if self._window_start is None:
            return []
        out = self._close_window(self._window_start, self._window_start + self.window_s)
        self._window_start += self.window_s
        return out

    # -- stays ----------------------------------------------------------------------------------
    def _update_stay(self, st: TrackState, t: float, zs: tuple[int, ...], dt: float) -> None:
        """Zone stays with hysteresis: a stay starts after ENTER_S inside and ends LEAVE_S after
        the person left (the exit time is when they left)."""
        for zi, stay in list(st.stays.items()):
            if zi in zs:
                stay.outside_since = None
                if stay.zone.kind == "attraction":
                    o = self._orientation(st, t, stay.zone)
                    if o is not None:
                        stay.oriented_s += dt * o[0]
            elif stay.outside_since is None:
                stay.outside_since = t
            elif t - stay.outside_since >= LEAVE_S:
                self._end_stay(st, stay, stay.outside_since, self._exit_pattern(st, stay, stay.outside_since))
        for zi in list(st.candidates):
            if zi not in zs:
                del st.candidates[zi]
        for zi in zs:
            if zi in st.stays:
                continue
            since = st.candidates.setdefault(zi, t)
            if t - since >= ENTER_S:
                st.stays[zi] = Stay(self.zones.zones[zi], since)
                del st.candidates[zi]

    def _end_stay(self, st: TrackState, stay: Stay, t_exit: float, pattern: str) -> None:
        dwell = max(t_exit - stay.start, 0.0)
        del st.stays[stay.zone.index]
        if stay.zone.kind == "attraction":
            st.last_stay_end, st.last_stay_len = t_exit, dwell
            if dwell >= LONG_STAY_S:
                st.leaving = stay.zone.index
        if dwell >= d.MIN_STAY_S:
            st.ended_stays.append((stay.zone, dwell, pattern))
            if pattern not in ("truncated", "pass"):  # a typical stay is a stay, not a walk through
                self.typical.add(stay.zone, dwell)

    def _inside_pattern(self, st: TrackState, stay: Stay, t_exit: float) -> str | None:
        """What the path inside the zone alone says, however the stay ended: "wander" (aimless
        back and forth), "pass" (walked through without standing), else None."""
        inside = [s for s in st.samples if stay.start <= s.t <= t_exit]
        if len(inside) < 3:
            return None
        bh = self._bh(st)
        p = self.zones.to_units(np.array([s.anchor for s in inside]), bh)
        ratio, path = d.straightness(p)
        if ratio < 0.3 and path >= 2.0 and d.reversals(p) >= 2:
            return "wander"
        if d.walked_through(np.array([s.t for s in inside]), p):
            return "pass"
        return None

    def _exit_pattern(self, st: TrackState, stay: Stay, t_exit: float) -> str:
        after = [s for s in st.samples if s.t > t_exit]
        bh = self._bh(st)
        seen = self._inside_pattern(st, stay, t_exit)
        if seen == "wander":
            return seen
        if t_exit - st.veer_t <= VEER_MEMORY_S:
            return "veer"
        if seen == "pass":
            return seen
        if len(after) < 3:
            return "truncated"  # lost (or stepped into an excluded zone) right after leaving: unknown
        if len(after) >= 3:
            va = self._velocity(after, bh)
            sa = float(np.hypot(*va))
            # the slowest 1 s of the last 3 s before the exit (a sprint out of the zone takes only
            # part of a second, so the 1 s right before the exit would already include it)
            slowest: tuple[float, np.ndarray] | None = None
            for end in np.arange(t_exit, t_exit - 2.0 - 1e-9, -0.25):
                part = [s for s in st.samples if end - 1.0 <= s.t <= end]
                if len(part) >= 3 and part[-1].t - part[0].t >= 0.5:
                    vb = self._velocity(part, bh)
                    sb = float(np.hypot(*vb))
                    if slowest is None or sb < slowest[0]:
                        slowest = (sb, vb)
            if slowest is not None:
                sb, vb = slowest
                if sb < d.STILL_PH_S and sa > d.WALK_PH_S:
                    return "abrupt"
                if min(sb, sa) > d.WALK_PH_S and float(vb @ va) / (sb * sa) < 0.0:
                    return "abrupt"  # turned by more than 90 degrees at walking speed
        return "calm"

    # -- kinematics -----------------------------------------------------------------------------
    def _bh(self, st: TrackState) -> float:
        """The person's box height in pixels: the median of the last 20 samples (cached per sample)."""
        n = len(st.samples)
        if st.bh_n != n or not st.samples or st.samples[-1].t != st.bh_t:
            recent = sorted(st.samples[i].bh for i in range(max(0, n - 20), n))
            m = len(recent)
            st.bh = 0.0 if not m else (recent[m // 2] if m % 2 else 0.5 * (recent[m // 2 - 1] + recent[m // 2]))
            st.bh_n, st.bh_t = n, st.samples[-1].t if n else -math.inf
        return st.bh

    def _velocity(self, samples: list[Sample], bh: float) -> np.ndarray:
        t = np.array([s.t for s in samples])
        p = self.zones.to_units(np.array([s.anchor for s in samples]), bh)
        return d.lsq_velocity(t, p)

    def _recent(self, st: TrackState, t: float, span: float) -> list[Sample]:
        """Samples newer than t - span, oldest first (walks back from the newest only)."""
        out = []
        for s in reversed(st.samples):
            if s.t <= t - span:
                break
            out.append(s)
        out.reverse()
        return out

    def _motion(self, st: TrackState, t: float) -> tuple[np.ndarray, float]:
        """Velocity (units/s, image-aligned axes) over the last max(1 s, window) and its speed
        (computed once per track per frame: stays, headings and vectors all ask for it)."""
        key = (t, len(st.samples), st.samples[-1].t if st.samples else None)
        if st.motion_key == key and st.motion is not None:
            return st.motion
        recent = self._recent(st, t, max(1.0, self.window_s))
        if len(recent) < 3 or recent[-1].t - recent[0].t < 0.5:
            out = (np.zeros(2), 0.0)
        else:
            v = self._velocity(recent, self._bh(st))
            out = (v, float(np.hypot(*v)))
        st.motion_key, st.motion = key, out
        return out

    def _orientation(self, st: TrackState, t: float, zone: Zone) -> tuple[float, float, int] | None:
        """(Ō, confidence, orientation class) toward the zone's focus, or None when unknown.

        Moving people are oriented along their motion; standing people by their pose."""
        if zone.focus is None or not st.samples:
            return None
        anchor = st.samples[-1].anchor
        bearing = zone.focus - anchor
        nb = float(np.hypot(*bearing))
        if nb < 1e-6:
            return 1.0, 1.0, 1
        _, speed = self._motion(st, t)
        vec: np.ndarray | None = None
        conf = 0.0
        if speed > d.STILL_PH_S:
            recent = self._recent(st, t, 1.0)
            if len(recent) >= 2:
                pv = d.lsq_velocity(np.array([s.t for s in recent]), np.array([s.anchor for s in recent]))
                npv = float(np.hypot(*pv))
                if npv > 1e-6:
                    vec, conf = pv / npv, d.clip01(speed / d.SLOW_PH_S)
        if vec is None and st.facing is not None and t - st.facing_t <= FACING_MAX_AGE_S * 2:
            vec, conf = st.facing, st.facing_conf
        if vec is None:
            return None
        cos = float(vec @ bearing) / nb
        cls = 1 if cos >= 0.5 else (2 if cos > -0.5 else 3)
        return d.orientation_score(cos), conf, cls

    def _nearest_attraction(self, st: TrackState) -> tuple[Zone, float, np.ndarray] | None:
        """The nearest attraction within its influence radius: (zone, distance, person − focus)."""
        if not st.samples:
            return None
        bh = self._bh(st)
        p = self.zones.to_units(st.samples[-1].anchor[None], bh)[0]
        best = None
        for z in self.zones.attractions:
            assert z.focus is not None
            rel = p - self.zones.to_units(z.focus[None], bh)[0]
            r = float(np.hypot(*rel))
            if r <= z.influence and (best is None or r < best[1]):
                best = (z, r, rel)
        return best

    @staticmethod
    def _just_stayed(st: TrackState, zone: Zone, t: float) -> bool:
        """Leaving ``zone`` after a long stay there: from the stay's end until out of the zone's
        influence range, walking away is a departure (scored by dwell satisfaction), not avoidance."""
        return st.leaving == zone.index or (st.last_stay_len >= LONG_STAY_S and t - st.last_stay_end <= VEER_MEMORY_S)

    def _update_heading_for(self, st: TrackState, t: float) -> None:
        """Remember when the person was walking toward an attraction: closing in while near it,
        or on course for it (t* < 3 s and a miss distance inside the far radius). This is the
        precondition of a veer; standing near a display and then leaving is not one."""
        near = self._nearest_attraction(st)
        if near is None or near[0].index != st.leaving:
            st.leaving = -1  # out of range of the attraction they stayed at
        if near is None:
            return
        zone, r, rel = near
        if zone.index in st.stays or self._just_stayed(st, zone, t):
            st.heading_for.pop(zone.index, None)  # staying, or just stayed: leaving is not veering
            return
        v, speed = self._motion(st, t)
        t_star, miss = d.closest_approach(rel, v)
        if speed > d.STILL_PH_S and t_star > 0 and (r <= d.FAR_PH or (t_star < 3.0 and miss < d.FAR_PH)):
            st.heading_for[zone.index] = t
            st.heading_dir[zone.index] = v / speed

    # -- windows --------------------------------------------------------------------------------
    def _close_window(self, ws: float, we: float) -> list[Vector]:
        frames = max(self._window_frames, 1)
        self._window_frames = 0
        out = []
        for tid, st in list(self.states.items()):
            if st.window_frames == 0 and not st.ended_stays:
                if st.samples and we - st.samples[-1].t > HISTORY_S:
                    del self.states[tid]
                continue
            out.append(self._vector(st, ws, we, frames))
            if we - st.token_born >= self.token_rotation_s:
                # rotate at a window boundary; the old token is not kept anywhere on the device
                st.token, st.token_born = new_token(), we
            st.window_frames = st.window_capped = 0
        return out

    def _vector(self, st: TrackState, ws: float, we: float, frames: int) -> Vector:
        t = st.samples[-1].t if st.samples else we
        coverage = min(st.window_frames / frames, 1.0)
        capped_frac = st.window_capped / max(st.window_frames, 1)
        # Judged over the part of the window the track was there for (from its first to its last
        # sighting in it): a track that starts or ends inside a window is measured if it was
        # seen in at least MIN_COVERAGE of that part, with a confidence of the share of the whole window.
        present = st.window_last - st.window_first + 1 if st.window_frames else 0
        valid = (we - st.first_t) >= MIN_AGE_S and 0 < st.window_frames >= MIN_COVERAGE * present
        # A frame whose detector output was full may have missed people (SSD returns at most 10
        # objects of any class; on vtest.avi 59 % of frames are full, mostly of cones and cars), so
        # such frames lower the confidence rather than voiding the window.
        base_conf = coverage * (1.0 - 0.5 * capped_frac)
        v, speed = self._motion(st, t)
        zone_idx = -1
        dwell = 0.0
        best = st.best_stay()
        # one ended stay per vector (the most specific); any other waits for the next window
        ended = min(st.ended_stays, key=lambda e: KIND_PRIORITY[e[0].kind], default=None)
        if ended is not None:
            st.ended_stays.remove(ended)
            zone_idx, dwell = ended[0].index, ended[1]
        elif best is not None:
            zone_idx, dwell = best.zone.index, t - best.start
        elif st.samples and st.samples[-1].zones:
            zone_idx = st.samples[-1].zones[0]

        # engagement: inside an attraction zone, oriented toward its focus
        eng: float | None = 0.0
        eng_conf = base_conf
        orient_cls = 0
        stay = st.attraction_stay()
        if stay is not None:
            o = self._orientation(st, t, stay.zone)
            assert stay.zone.focus is not None
            bh = self._bh(st)
            r = float(np.hypot(*(self.zones.to_units(st.samples[-1].anchor[None], bh)[0]
                                 - self.zones.to_units(stay.zone.focus[None], bh)[0])))
            if o is None:
                # a still person with no usable pose: orientation unknown, not "looking away"
                eng = d.engagement(0.5, speed, r, stay.oriented_s, True)
                eng_conf = base_conf * 0.3
            else:
                orient, oconf, orient_cls = o
                eng = d.engagement(orient, speed, r, stay.oriented_s, True)
                eng_conf = base_conf * (0.5 + 0.5 * oconf)
        else:
            near = self._nearest_attraction(st)
            if near is not None:
                o = self._orientation(st, t, near[0])
                orient_cls = 0 if o is None else o[2]

        # approach/avoid: radial speed toward the nearest attraction in range
        app: float | None = 0.0
        app_conf = base_conf * 0.5  # "0 because nothing to approach" is a weak statement
        near = self._nearest_attraction(st)
        if near is not None:
            zone, r, rel = near
            recent = self._recent(st, t, max(1.0, self.window_s))
            if len(recent) >= 3:
                bh = self._bh(st)
                focus_u = self.zones.to_units(zone.focus[None], bh)[0]  # type: ignore[index]
                pts = self.zones.to_units(np.array([s.anchor for s in recent]), bh)
                radial = -d.lsq_velocity(np.array([s.t for s in recent]), np.hypot(*(pts - focus_u).T)[:, None])[0]
                _, miss = d.closest_approach(rel, v)
                app = d.approach(float(radial), miss)
                app_conf = base_conf
                cos_beta = float(v @ -rel) / (speed * max(r, 1e-6)) if speed > 1e-6 else 0.0
                was_heading = t - st.heading_for.get(zone.index, -math.inf) <= VEER_MEMORY_S
                before = st.heading_dir.get(zone.index)
                # a veer is a turn: walking on in a straight line past the display is not one
                turned = before is not None and speed > 1e-6 and float(before @ v) / speed < TURN_COS
                just_stayed = self._just_stayed(st, zone, t) or (
                    stay is not None and stay.zone.index == zone.index and t - stay.start >= LONG_STAY_S)
                if speed > d.STILL_PH_S and cos_beta < 0 and was_heading and turned and not just_stayed and stay is None:
                    turn = d.clip01(-cos_beta)
                    app = min(app, -0.5 - 0.5 * turn)
                    st.veer_t = t
                if just_stayed:
                    app = max(app, -0.2)  # leaving (or about to leave) a real stay: scored by dwell satisfaction

        sat: float | None = None
        sat_conf = 0.0
        exit_code = 0
        if ended is not None:
            zone, dwell_s, pattern = ended
            sat = d.dwell_satisfaction(dwell_s, self.typical.typical(zone), pattern)
            sat_conf = {"truncated": 0.5, "pass": 0.3}.get(pattern, 0.9)
            exit_code = EXIT_NAMES.index(pattern)

        if not valid:
            eng = app = None
            eng_conf = app_conf = 0.0
        return Vector(ws, we, st.token, zone_idx, float(dwell), eng, float(eng_conf), sat, float(sat_conf), app,
                      float(app_conf), speed, st.window_frames, orient_cls, exit_code)
