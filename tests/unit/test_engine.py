"""SignalEngine on scripted tracks: boxes on timed paths at 10 fps, no pixels and no models.

The scene is a 768x576 frame seen from above head height (y down the image is toward the
camera). A display stands at the bottom centre: an attraction zone along the bottom edge with its
focus point near the edge, people 100 px tall (1 PH = 100 px, no ground plane). An aisle runs
across the top and a staff counter on the left is excluded.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest

from firmware.config import SignalsConfig, ZoneConfig
from firmware.signals import definitions as d
from firmware.signals.engine import DEFAULT_TYPICAL_STAY_S, ENTER_S, EXIT_NAMES, ORIENTATION_NAMES, SignalEngine, Vector
from firmware.tracking.tracker import KalmanBox, Track
from firmware.tracking.zones import ZoneMap

W, H = 768, 576
BH = 100.0  # person height in pixels: 1 PH
FOCUS = (0.5 * W, 0.98 * H)  # (384, 564.48): the display
EDGE_Y = 0.8 * H  # 460.8: the attraction zone is y >= this (x 230..538)
DISPLAY, AISLE, STAFF = 0, 1, 2
TOWARD = (0.0, 1.0)  # facing the display (and the camera): down the image
AWAY = (0.0, -1.0)

Facing = Callable[[float], tuple[float, float] | None]


def rect(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def zone_configs(aisle: list[list[float]] | None = None, staff: list[list[float]] | None = None) -> list[ZoneConfig]:
    """The scene's zones; ``aisle`` and ``staff`` move those two (same indices, same kinds)."""
    return [
        ZoneConfig(name="display", kind="attraction", polygon=rect(0.3, 0.8, 0.7, 1.0), focus=[0.5, 0.98]),
        ZoneConfig(name="aisle", kind="aisle", polygon=aisle or rect(0.0, 0.1, 1.0, 0.4)),
        ZoneConfig(name="staff", kind="excluded", polygon=staff or rect(0.0, 0.5, 0.2, 1.0)),
    ]


def zone_map(scale: float = 1.0, **moved: list[list[float]]) -> ZoneMap:
    return ZoneMap(zone_configs(**moved), None, round(W * scale), round(H * scale))


def make_track(tid: str, x: float, y: float, bh: float = BH, first_seen: float = math.inf) -> Track:
    """A confirmed track whose last detection has its bottom-centre (the anchor) at (x, y), first
    detected at ``first_seen`` (by default: as it is first given to the engine)."""
    box = np.array([x - 0.2 * bh, y - bh, x + 0.2 * bh, y], dtype=np.float64)
    return Track(tid, KalmanBox(box), first_seen=first_seen, last_seen=0.0, score=0.9, confirmed=True, det_box=box)


@dataclass
class Person:
    """A scripted person: piecewise-linear path through (t, x, y) waypoints (seconds, pixels),
    visible from the first waypoint to the last; optional pose-derived facing per frame."""

    path: list[tuple[float, float, float]]
    facing: Facing | None = None
    facing_conf: float = 0.9
    ended_at: float | None = None  # the tracker reports the track as ended at this time
    visible: Callable[[int], bool] = lambda i: True  # by frame index: dropped detections
    jitter_px: float = 0.0
    tid: str = field(default_factory=lambda: secrets.token_hex(16))
    tokens: list[str] = field(default_factory=list)  # the session tokens the engine gave this person, in order

    def at(self, t: float) -> tuple[float, float] | None:
        if not self.path[0][0] - 1e-9 <= t <= self.path[-1][0] + 1e-9:
            return None
        for (t0, x0, y0), (t1, x1, y1) in itertools.pairwise(self.path):
            if t <= t1 + 1e-9:
                a = 0.0 if t1 == t0 else min(max((t - t0) / (t1 - t0), 0.0), 1.0)
                return x0 + a * (x1 - x0), y0 + a * (y1 - y0)
        return self.path[-1][1], self.path[-1][2]


def run(
    people: list[Person],
    t_end: float,
    *,
    fps: float = 10.0,
    t0: float = 0.0,
    window_s: float = 2.0,
    scale: float = 1.0,
    capped: bool = False,
    engine: SignalEngine | None = None,
    flush: bool = True,
) -> list[Vector]:
    """Feed frames at ``fps`` from scene time 0 to ``t_end`` (clock ``t0 + scene time``); every
    vector returned, the last window flushed."""
    eng = engine or SignalEngine(SignalsConfig(window_s=window_s), zone_map(scale))
    rng = np.random.default_rng(7)
    out: list[Vector] = []
    for i in range(round(t_end * fps) + 1):
        s = i / fps
        t = t0 + s
        tracks, ended = [], []
        for p in people:
            xy = p.at(s)
            if xy is not None and p.visible(i):
                x, y = xy
                bh = BH
                if p.jitter_px:
                    x, y = x + rng.uniform(-1, 1) * p.jitter_px, y + rng.uniform(-1, 1) * p.jitter_px
                    bh = BH + rng.uniform(-1, 1) * p.jitter_px
                tracks.append(make_track(p.tid, x * scale, y * scale, bh * scale))
                if p.facing is not None and (f := p.facing(s)) is not None:
                    eng.set_facing(p.tid, t, np.array(f, dtype=np.float64), p.facing_conf)  # pose runs before step
            if p.ended_at is not None and abs(s - p.ended_at) < 0.5 / fps:
                ended.append(make_track(p.tid, 0.0, 0.0))
        out += eng.step(t, tracks, ended, capped)
        for p in people:
            st = eng.states.get(p.tid)
            if st is not None and st.token not in p.tokens:
                p.tokens.append(st.token)
    if flush:
        out += eng.flush()
    for v in out:
        check_vector(v, eng.window_s)
    return out


def check_vector(v: Vector, window_s: float) -> None:
    """What every vector must satisfy, whatever the scene."""
    assert v.t_end - v.t_start == pytest.approx(window_s, abs=1e-6)
    assert v.engagement is None or 0.0 <= v.engagement <= 1.0
    assert v.approach is None or -1.0 <= v.approach <= 1.0
    assert v.satisfaction is None or -1.0 <= v.satisfaction <= 1.0
    for c in (v.engagement_conf, v.satisfaction_conf, v.approach_conf):
        assert 0.0 <= c <= 1.0
    for x in (v.engagement, v.approach, v.satisfaction, v.dwell_s, v.speed):
        assert x is None or math.isfinite(x)
    assert v.dwell_s >= 0.0 and v.speed >= 0.0 and v.frames >= 0
    assert 0 <= v.orientation < len(ORIENTATION_NAMES) and 0 <= v.exit < len(EXIT_NAMES)
    assert -1 <= v.zone < len(zone_configs()) and v.zone != STAFF  # never an excluded zone
    assert (v.satisfaction is None) == (v.exit == 0)


def mine(vs: list[Vector], p: Person) -> list[Vector]:
    return [v for v in vs if v.token in p.tokens]


def window(vs: list[Vector], p: Person, t_start: float) -> Vector:
    (v,) = [v for v in vs if v.token in p.tokens and v.t_start == pytest.approx(t_start)]
    return v


def ended_stay(vs: list[Vector], p: Person) -> Vector:
    (v,) = [v for v in mine(vs, p) if v.satisfaction is not None]
    return v


def walk_in_and_stop(facing: Facing | None = None, stop_y: float = 510.0, until: float = 11.0) -> Person:
    """Walk straight down at 1.2 PH/s from the aisle to the display (3 s), then stand facing it."""
    return Person([(0.0, 384.0, 150.0), (3.0, 384.0, stop_y), (until, 384.0, stop_y)], facing)


def const(vec: tuple[float, float] | None) -> Facing:
    return lambda t: vec


def rotated(angle_deg: float) -> tuple[float, float]:
    """TOWARD turned by ``angle_deg``."""
    a = math.radians(angle_deg)
    return (math.sin(a), math.cos(a))


STOP_WINDOWS = (4.0, 6.0, 8.0)  # windows entirely in the stop, >= 1 s after the person stopped


# -- (a) walking past ------------------------------------------------------------------------------


@pytest.mark.parametrize("fps", [5.0, 10.0])
def test_walking_past_far_from_the_display_is_neutral(fps):
    p = Person([(0.0, 20.0, 150.0), (6.0, 740.0, 150.0)])  # along the aisle, > 4 PH from the focus
    vs = mine(run([p], 6.0, fps=fps), p)
    assert len(vs) == 4
    for v in vs:
        assert v.engagement == 0.0
        assert v.approach == pytest.approx(0.0, abs=0.05)
        assert v.satisfaction is None
        assert v.zone == AISLE
        assert v.speed == pytest.approx(1.2, rel=0.01)


# -- (b) stopping at the display -------------------------------------------------------------------


def test_stop_facing_the_display_is_engaged_and_beats_facing_away():
    toward, away, unknown = walk_in_and_stop(const(TOWARD)), walk_in_and_stop(const(AWAY)), walk_in_and_stop()
    vs = run([toward, away, unknown], 11.0)
    for ws in STOP_WINDOWS:
        t, a, u = window(vs, toward, ws), window(vs, away, ws), window(vs, unknown, ws)
        assert t.zone == a.zone == u.zone == DISPLAY
        assert t.speed == pytest.approx(0.0, abs=1e-9)
        assert t.engagement is not None and t.engagement > 0.6
        assert a.engagement is not None and a.engagement < t.engagement
        assert a.engagement == pytest.approx(0.0)
        # no usable pose: orientation unknown, not "looking away": between the two, and less sure
        assert u.engagement is not None and a.engagement < u.engagement < t.engagement
        assert u.engagement_conf < t.engagement_conf
        assert (ORIENTATION_NAMES[t.orientation], ORIENTATION_NAMES[a.orientation], ORIENTATION_NAMES[u.orientation]) == (
            "facing",
            "away",
            "unknown",
        )
        assert t.approach == pytest.approx(0.0, abs=1e-6)  # standing still: neither approach nor retreat
    # oriented time accumulates: engagement does not drop while the person keeps standing there
    e = [window(vs, toward, ws).engagement for ws in (4.0, 6.0, 8.0, 10.0)]
    assert e == sorted(e)
    assert e[-1] > e[0]


def test_stop_engagement_matches_the_definition():
    """Standing 0.54 PH from the focus, facing it: E = Ō (0.4 S + 0.3 P + 0.3 T) with S = P = 1
    and T from the time spent inside the zone oriented toward the focus (walking straight at it
    counts): at most the time inside, at least that less the 0.5 s it takes a stay to start."""
    p = walk_in_and_stop(const(TOWARD))
    v = window(run([p], 11.0), p, 4.0)
    r = (FOCUS[1] - 510.0) / BH
    assert d.proximity(r) == 1.0
    inside = 5.9 - (EDGE_Y - 150.0) / 120.0  # at the window's last frame
    assert d.engagement(1.0, 0.0, r, inside - ENTER_S - 0.1, True) <= v.engagement <= d.engagement(1.0, 0.0, r, inside, True)


def test_engagement_non_increasing_in_distance_from_the_focus():
    ys = [550.0, 520.0, 490.0, 475.0]  # 0.15 .. 0.9 PH from the focus, all inside the zone
    people = [Person([(0.0, 384.0, y), (8.0, 384.0, y)], const(TOWARD)) for y in ys]
    vs = run(people, 8.0)
    for ws in (2.0, 4.0, 6.0):
        e = [window(vs, p, ws).engagement for p in people]
        assert e == sorted(e, reverse=True), e
    e = [window(vs, p, 6.0).engagement for p in people]
    assert e[0] > e[-1]


def test_engagement_non_increasing_in_angle_to_the_focus():
    """Standing 0.54 PH from the focus, turned ``a`` from it: Ō = 1 up to 30 degrees, then
    falling linearly to 0 at side-on (90 degrees), and oriented time accrues at Ō per second
    from when the stay started (0.5 s)."""
    angles = [0.0, 15.0, 30.0, 45.0, 60.0, 90.0, 180.0]
    people = [Person([(0.0, 384.0, 510.0), (8.0, 384.0, 510.0)], const(rotated(a))) for a in angles]
    vs = run(people, 8.0)
    r = (FOCUS[1] - 510.0) / BH
    for ws in (2.0, 4.0, 6.0):
        e = [window(vs, p, ws).engagement for p in people]
        assert e == sorted(e, reverse=True), e
        assert e[0] > e[4] > 0.25 and e[5] == pytest.approx(0.0, abs=1e-9)  # nothing from side-on (90 degrees) on
        oriented_s = ws + 2.0 - 0.1 - ENTER_S  # to the window's last frame
        for a, got in zip(angles, e, strict=True):
            o = 1.0 if a <= 30.0 else max(1.0 - (a - 30.0) / 60.0, 0.0)
            assert got == pytest.approx(d.engagement(o, 0.0, r, o * oriented_s, True), abs=1e-6), a


def test_engagement_non_increasing_in_speed():
    """Walking straight at the display (so oriented toward it) at 0 .. 0.6 PH/s, all reaching
    the same spot 0.24 PH from the focus at t = 3 s: the slower, the more engaged."""
    speeds = [0.0, 0.1, 0.2, 0.35, 0.6]
    people = [Person([(0.0, 384.0, 540.0 - 300.0 * s), (3.0, 384.0, 540.0)], const(TOWARD)) for s in speeds]
    vs = run(people, 3.0, window_s=3.0)
    e = [window(vs, p, 0.0).engagement for p in people]
    assert e == sorted(e, reverse=True), e
    assert e[0] > e[-1]


def test_stale_pose_decays_to_unknown():
    """One pose reading, then nothing: after a few seconds the orientation is unknown, not facing."""
    p = walk_in_and_stop(lambda t: TOWARD if t < 3.5 else None)
    vs = run([p], 11.0)
    assert ORIENTATION_NAMES[window(vs, p, 2.0).orientation] == "facing"
    late = window(vs, p, 8.0)
    assert ORIENTATION_NAMES[late.orientation] == "unknown"
    assert late.engagement_conf < window(vs, p, 2.0).engagement_conf


def test_jitter_while_standing_reads_as_standing():
    """±3 % of box height of detection wobble every frame keeps stillness S >= 0.8."""
    p = walk_in_and_stop(const(TOWARD))
    p.jitter_px = 3.0
    vs = run([p], 11.0)
    for ws in STOP_WINDOWS:
        v = window(vs, p, ws)
        assert d.stillness(v.speed) >= 0.8
        assert v.engagement is not None and v.engagement > 0.6


# -- (c) approach and retreat ----------------------------------------------------------------------


def test_approach_then_turn_away_before_reaching_the_display():
    # 2.6 PH from the focus to 1.4 PH (never inside the zone) at 0.3 PH/s, then back
    p = Person([(0.0, 384.0, 300.0), (4.0, 384.0, 420.0), (8.0, 384.0, 300.0)])
    vs = run([p], 8.0)
    for ws in (0.0, 2.0):
        v = window(vs, p, ws)
        assert v.approach is not None and v.approach > 0.3
        assert v.engagement == 0.0  # not in the zone
    for ws in (4.0, 6.0):
        v = window(vs, p, ws)
        assert v.approach is not None and v.approach < -0.3
        assert ORIENTATION_NAMES[v.orientation] == "away"


@pytest.mark.parametrize("fps", [5.0, 10.0])
def test_approach_increases_with_radial_speed(fps):
    """Straight toward (+) or away from (-) the focus, within its influence (3 PH) and never
    near enough to count as heading for it before leaving: A = tanh(v_r / 0.3 PH/s)."""
    speeds = [-0.5, -0.3, -0.1, 0.0, 0.1, 0.3, 0.5]  # PH/s
    people = []
    for v in speeds:
        r0 = 2.9 if v > 0 else 1.85  # PH from the focus at t = 0
        y0 = FOCUS[1] - 100.0 * r0
        people.append(Person([(0.0, 384.0, y0), (2.0, 384.0, y0 + 100.0 * v * 2.0)]))
    vs = run(people, 2.0, fps=fps, flush=False)
    a = [window(vs, p, 0.0).approach for p in people]
    assert a == sorted(a)
    for v, got in zip(speeds, a, strict=True):
        assert got == pytest.approx(math.tanh(v / d.RADIAL_SCALE_PH_S), abs=1e-6)


@pytest.mark.parametrize("fps", [5.0, 10.0])
@pytest.mark.parametrize("leftward", [False, True])
@pytest.mark.parametrize("r_ph", [2.3, 2.6, 2.9])
def test_passing_the_display_tangentially_is_neither_approach_nor_avoid(r_ph, leftward, fps):
    """Across the scene at 0.9 PH/s (right of the staff area) on a straight line passing ``r_ph``
    from the focus, through its influence (3 PH): the distance to the display shrinks, then grows,
    but the line of motion misses it by more than 1.8 PH, so A = tanh(v_r / 0.3) · P(miss) is 0
    both ways (the old A = tanh(v_r / 0.3) read the two halves as approach, then avoid)."""
    y = FOCUS[1] - BH * r_ph
    xs = (710.0, 170.0) if leftward else (170.0, 710.0)
    p = Person([(0.0, xs[0], y), (6.0, xs[1], y)])
    vs = mine(run([p], 6.0, fps=fps, flush=False), p)
    assert [v.t_start for v in vs] == [0.0, 2.0, 4.0]
    for v in vs:
        assert v.approach is not None and abs(v.approach) < 0.1, (v.t_start, v.approach)
        assert v.engagement == 0.0


@pytest.mark.parametrize("fps", [5.0, 10.0])
def test_walking_straight_at_the_display_is_a_full_approach(fps):
    """Head-on from 2.9 PH to 1.1 PH at 0.6 PH/s (never inside the zone): the line of motion
    runs through the focus, P(miss) = 1, A = tanh(0.6 / 0.3)."""
    p = Person([(0.0, 384.0, FOCUS[1] - 290.0), (3.0, 384.0, FOCUS[1] - 110.0)])
    vs = mine(run([p], 3.0, fps=fps), p)
    assert [v.t_start for v in vs] == [0.0, 2.0]
    for v in vs:
        assert v.approach is not None and v.approach > 0.5
        assert v.approach == pytest.approx(math.tanh(0.6 / d.RADIAL_SCALE_PH_S), abs=1e-6)


def test_tracks_too_young_or_too_patchy_give_null_signals():
    young = Person([(1.5, 384.0, 510.0), (6.0, 384.0, 510.0)], const(TOWARD))  # 0.5 s old at the window's end
    patchy = Person([(0.0, 300.0, 510.0), (6.0, 300.0, 510.0)], const(TOWARD), visible=lambda i: i % 4 == 0)
    half = Person([(0.0, 450.0, 510.0), (6.0, 450.0, 510.0)], const(TOWARD), visible=lambda i: i % 2 == 0)
    vs = run([young, patchy, half], 6.0)
    v = window(vs, young, 0.0)
    assert v.engagement is None and v.approach is None and v.engagement_conf == v.approach_conf == 0.0
    assert window(vs, young, 2.0).engagement is not None
    for ws in (0.0, 2.0, 4.0):
        v = window(vs, patchy, ws)
        assert v.engagement is None and v.approach is None  # seen in a quarter of the frames
        assert window(vs, half, ws).engagement is not None  # seen in half: enough


def test_a_track_is_as_old_as_its_first_detection_not_its_confirmation():
    """Confirmed at 1.2 s, first detected at 0.8 s: 1.2 s old at the window's end at 2.0 s, so
    measured; one confirmed at the same time but first detected then is not."""
    eng = SignalEngine(SignalsConfig(), zone_map())
    seen_early, seen_now = secrets.token_hex(16), secrets.token_hex(16)
    out: list[Vector] = []
    for i in range(12, 21):
        t = i / 10
        out += eng.step(t, [make_track(seen_early, 300.0, 300.0 + 3.0 * i, first_seen=0.8),
                            make_track(seen_now, 500.0, 300.0 + 3.0 * i, first_seen=1.2)], [], False)
    by = {v.token: v for v in out if v.t_start == 0.0}
    assert by[eng.states[seen_early].token].approach is not None
    assert by[eng.states[seen_now].token].approach is None


@pytest.mark.parametrize("start", [0.0, 0.3, 0.9])
@pytest.mark.parametrize("end", [4.05, 4.5, 5.0])
def test_a_track_starting_or_ending_inside_a_window_is_measured_there(start, end):
    """A walk toward the display that starts 0 .. 0.9 s into a window and ends 0.05 .. 1 s into
    another: the part of each window the person was there for is measured once the track is
    1 s old, with a confidence of the share of the window they were seen in."""
    p = Person([(start, 384.0, 300.0), (end, 384.0, 450.0)], const(TOWARD))  # 0.3 .. 0.37 PH/s, in range
    vs = run([p], 6.0)
    first, last = window(vs, p, 0.0), window(vs, p, 4.0)
    for v, seen in ((first, 2.0 - start), (last, end - 4.0)):
        assert v.approach is not None and v.approach > 0.3, (v.t_start, v.approach)
        assert v.approach_conf == pytest.approx(min(1.0, (round(seen * 10) + 1) / 20), abs=0.06)


def test_capped_frames_lower_confidence_not_the_signals():
    a, b = walk_in_and_stop(const(TOWARD)), walk_in_and_stop(const(TOWARD))
    a.tid = b.tid = secrets.token_hex(16)
    free, capped = run([a], 11.0), run([b], 11.0, capped=True)
    assert len(free) == len(capped)
    for u, v in zip(free, capped, strict=True):
        assert (u.engagement, u.approach) == (v.engagement, v.approach)
        assert v.engagement_conf == pytest.approx(0.5 * u.engagement_conf)
        assert v.approach_conf == pytest.approx(0.5 * u.approach_conf)


# -- (d) how a stay ends ---------------------------------------------------------------------------


def stand_then_leave(speed_ph_s: float, start_s: float) -> Person:
    """Stand just inside the zone's edge (0.09 PH) from t = 0, then walk up the image at
    ``speed_ph_s`` from ``start_s``, out of the zone."""
    y0 = 470.0
    t1 = start_s + (y0 - 100.0) / (100.0 * speed_ph_s)
    return Person([(0.0, 384.0, y0), (start_s, 384.0, y0), (t1, 384.0, 100.0), (max(t1, 30.0), 384.0, 100.0)], const(TOWARD))


def test_calm_exit_scores_above_abrupt_exit():
    # both cross the edge at t = 6.1: the stroller sets off 0.2 s earlier
    calm, abrupt = stand_then_leave(0.4, 5.8), stand_then_leave(2.0, 6.0)
    vs = run([calm, abrupt], 12.0)
    c, a = ended_stay(vs, calm), ended_stay(vs, abrupt)
    assert (EXIT_NAMES[c.exit], EXIT_NAMES[a.exit]) == ("calm", "abrupt")
    assert c.satisfaction > a.satisfaction
    assert c.satisfaction - a.satisfaction == pytest.approx(1.0)  # equal dwell: only the exit differs
    assert c.satisfaction == pytest.approx(d.dwell_satisfaction(6.1, DEFAULT_TYPICAL_STAY_S, "calm"))
    assert c.satisfaction_conf == a.satisfaction_conf == pytest.approx(0.9)


def test_exit_patterns_are_ordered_calm_truncated_abrupt():
    calm, abrupt = stand_then_leave(0.4, 5.8), stand_then_leave(2.0, 6.0)
    lost = Person([(0.0, 450.0, 510.0), (6.1, 450.0, 510.0)], const(TOWARD), ended_at=7.0)  # the track ends inside
    vs = run([calm, abrupt, lost], 12.0)
    q = [ended_stay(vs, p) for p in (calm, lost, abrupt)]
    assert [EXIT_NAMES[v.exit] for v in q] == ["calm", "truncated", "abrupt"]
    assert q[0].satisfaction > q[1].satisfaction > q[2].satisfaction
    assert q[1].satisfaction_conf == pytest.approx(0.5)  # a truncated stay is a weaker statement


def test_pacing_inside_the_zone_then_leaving_is_a_wander_exit():
    """Back and forth along the display (1.7 PH legs) for 8 s, then a calm walk out."""
    path = [(0.0, 300.0, 500.0)]
    for k in range(1, 5):
        path.append((2.0 * k, 470.0 if k % 2 else 300.0, 500.0))
    path += [(13.0, 300.0, 200.0), (14.0, 300.0, 200.0)]
    p = Person(path, const(TOWARD))
    q = ended_stay(run([p], 14.0), p)
    assert EXIT_NAMES[q.exit] == "wander"
    assert q.satisfaction == pytest.approx(d.dwell_satisfaction(q.dwell_s, DEFAULT_TYPICAL_STAY_S, "wander"), abs=0.05)


@pytest.mark.parametrize("end_s", [8.3, 9.0, 9.7])
def test_pacing_until_the_track_ends_inside_the_zone_is_still_a_wander(end_s):
    """Back and forth along the display for 8 s, and the track ends there: how they left is
    unknown, but the pacing was seen, so the stay is a wander, not a truncated one."""
    path = [(0.0, 300.0, 500.0)]
    for k in range(1, 5):
        path.append((2.0 * k, 470.0 if k % 2 else 300.0, 500.0))
    p = Person(path + [(end_s, 300.0 + 85.0 * (end_s - 8.0), 500.0)], const(TOWARD), ended_at=end_s + 0.5)
    q = ended_stay(run([p], 12.0), p)
    assert EXIT_NAMES[q.exit] == "wander"
    assert q.satisfaction == pytest.approx(d.dwell_satisfaction(q.dwell_s, DEFAULT_TYPICAL_STAY_S, "wander"))
    assert q.satisfaction < 0.0


@pytest.mark.parametrize("fps", [5.0, 10.0])
@pytest.mark.parametrize("speed_ph_s", [0.6, 0.9, 1.2])
def test_walking_through_the_display_zone_is_a_pass_not_a_stay(speed_ph_s, fps):
    """Five people cross the display zone (3.1 PH wide) one after another without slowing: no
    stay to judge (Q = 0), and the zone's typical stay does not learn from them."""
    x0, x1 = 150.0, 700.0
    t1 = (x1 - x0) / (100.0 * speed_ph_s)
    people = [
        Person([(0.0, x0, y), (1.5 * k, x0, y), (1.5 * k + t1, x1, y), (8.0 + t1, x1, y)], const(TOWARD))
        for k, y in enumerate((480.0, 500.0, 520.0, 540.0, 560.0))
    ]
    eng = SignalEngine(SignalsConfig(), zone_map())
    vs = run(people, 10.0 + t1, engine=eng, fps=fps)
    for p in people:
        (q,) = [v for v in mine(vs, p) if v.satisfaction is not None]  # >= 2.5 s in the zone
        assert (EXIT_NAMES[q.exit], q.zone, q.satisfaction) == ("pass", DISPLAY, 0.0)
        assert q.satisfaction_conf < 0.5
    assert eng.typical.typical(eng.zones.zones[DISPLAY]) == DEFAULT_TYPICAL_STAY_S


@pytest.mark.parametrize("gap", [(40, 45), (40, 52), (55, 70)])
def test_a_stay_through_a_short_loss_of_the_same_track_is_one_stay(gap):
    """Standing at the display for 9 s while the detector misses 0.5 .. 1.5 s (the tracker keeps
    the track): one stay from arrival to departure, calm, its dwell the whole stay."""
    p = stand_then_leave(0.4, 9.0)
    p.visible = lambda i: not gap[0] <= i < gap[1]
    (q,) = [v for v in mine(run([p], 16.0), p) if v.satisfaction is not None]
    assert EXIT_NAMES[q.exit] == "calm" and q.zone == DISPLAY
    assert q.dwell_s == pytest.approx(9.0 + (470.0 - EDGE_Y) / 40.0, abs=0.15)


def test_leaving_after_a_long_stay_is_scored_by_dwell_not_approach():
    """6 s at the display, then a stroll away: the window the stay ends in carries the stay's
    outcome (calm), and approach/avoid there is clamped at -0.2 rather than read as avoidance."""
    p = stand_then_leave(0.4, 5.8)
    v = ended_stay(run([p], 12.0), p)
    assert v.t_start == 6.0 and EXIT_NAMES[v.exit] == "calm" and v.zone == DISPLAY
    assert v.dwell_s == pytest.approx(6.1)
    assert v.approach is not None and v.approach >= -0.2


def test_dwell_satisfaction_non_decreasing_in_dwell():
    people = [stand_then_leave(0.4, s) for s in (3.0, 5.0, 8.0, 12.0)]
    vs = run(people, 20.0)
    q = [ended_stay(vs, p) for p in people]
    assert all(EXIT_NAMES[v.exit] == "calm" for v in q)
    assert [v.satisfaction for v in q] == sorted(v.satisfaction for v in q)
    assert [v.dwell_s for v in q] == sorted(v.dwell_s for v in q)


def test_stays_shorter_than_two_seconds_get_no_satisfaction():
    p = stand_then_leave(0.4, 1.0)  # about 1.3 s in the zone
    assert all(v.satisfaction is None for v in mine(run([p], 12.0), p))


@pytest.mark.parametrize("fps", [5.0, 10.0])
@pytest.mark.parametrize("y0", [462.0, 470.0, 490.0, 510.0, 540.0, 560.0])
def test_sprint_out_after_standing_is_abrupt_however_deep_inside(y0, fps):
    """Walk in from the aisle (3 s), stand 0.01 .. 1 PH inside the zone's edge for 6 s, then sprint
    out at 2 PH/s: abrupt, at 5 fps as at 10, the dwell running from entering to leaving."""
    t_go = 9.0
    p = Person(
        [
            (0.0, 384.0, 150.0),
            (3.0, 384.0, y0),
            (t_go, 384.0, y0),
            (t_go + (y0 - 100.0) / 200.0, 384.0, 100.0),
            (14.0, 384.0, 100.0),
        ],
        const(TOWARD),
    )
    q = ended_stay(run([p], 14.0, fps=fps), p)
    assert EXIT_NAMES[q.exit] == "abrupt"
    assert q.zone == DISPLAY and q.t_start == 10.0
    t_in, t_out = 3.0 * (EDGE_Y - 150.0) / (y0 - 150.0), t_go + (y0 - EDGE_Y) / 200.0
    assert q.dwell_s == pytest.approx(t_out - t_in, abs=1.0 / fps + 1e-6)
    assert q.satisfaction == pytest.approx(d.dwell_satisfaction(q.dwell_s, DEFAULT_TYPICAL_STAY_S, "abrupt"))


def test_the_satisfaction_vector_names_the_stay_that_ended():
    """A sprint out of the display (6.1 s there) reaches the aisle and starts a stay there before
    the window closes: the window's vector still reports the display and the display's dwell."""
    p = stand_then_leave(2.0, 6.0)
    vs = run([p], 12.0)
    q = ended_stay(vs, p)
    assert (q.t_start, q.zone, EXIT_NAMES[q.exit]) == (6.0, DISPLAY, "abrupt")
    assert q.dwell_s == pytest.approx(6.1)
    nxt = window(vs, p, 8.0)
    assert nxt.zone == AISLE and nxt.dwell_s < 3.0  # the aisle stay started at 7.7


def test_stays_ending_together_are_reported_one_per_window():
    """The aisle overlaps the display (bottom quarter of the frame). Standing in both, then
    sprinting out ends both stays within 0.1 s: the window carries the display's (the more
    specific), the next window the aisle's, also for someone no longer in view then."""
    eng = SignalEngine(SignalsConfig(), zone_map(aisle=rect(0.0, 0.75, 1.0, 1.0)))
    stays = Person([(0.0, 384.0, 510.0), (6.0, 384.0, 510.0), (8.05, 384.0, 100.0), (12.0, 384.0, 100.0)], const(TOWARD))
    gone = Person([(0.0, 450.0, 510.0), (6.0, 450.0, 510.0), (7.5, 450.0, 210.0)], const(TOWARD))  # last seen 7.5
    vs = run([stays, gone], 12.0, engine=eng)
    for p in (stays, gone):
        got = [(v.t_start, v.zone, round(v.dwell_s, 6), EXIT_NAMES[v.exit]) for v in mine(vs, p) if v.satisfaction is not None]
        assert got == [(6.0, DISPLAY, 6.3, "abrupt"), (8.0, AISLE, 6.4, "abrupt")]
    assert [v.t_start for v in mine(vs, gone)] == [0.0, 2.0, 4.0, 6.0, 8.0]


@pytest.mark.parametrize("start_s", [3.0, 5.8, 8.0, 12.0])
def test_strolling_away_after_a_long_stay_is_not_a_veer(start_s):
    """3 .. 12 s at the display, then a calm 0.4 PH/s walk away from it: exit calm, and at no
    point is approach/avoid pushed below plain retreat, tanh(-0.4 / 0.3), as a veer would be."""
    p = stand_then_leave(0.4, start_s)
    eng = SignalEngine(SignalsConfig(), zone_map())
    vs = mine(run([p], start_s + 10.0, engine=eng), p)
    q = ended_stay(vs, p)
    assert EXIT_NAMES[q.exit] == "calm" and q.dwell_s >= 3.0
    floor = math.tanh(-0.4 / d.RADIAL_SCALE_PH_S)
    for v in vs:
        assert v.approach is not None and v.approach >= floor - 1e-6, (v.t_start, v.approach)
    assert eng.states[p.tid].veer_t == -math.inf


@pytest.mark.parametrize("speed", [0.25, 0.3, 0.4])
@pytest.mark.parametrize("stay_s", [4.0, 8.0, 12.0])
def test_walking_away_after_a_long_stay_is_never_avoidance_while_in_range(stay_s, speed):
    """After a stay of 4 .. 12 s, a slow walk away stays a departure (A >= -0.2) for as long as
    the person is within the display's influence, not only in the first seconds."""
    p = stand_then_leave(speed, stay_s)
    eng = SignalEngine(SignalsConfig(), zone_map())
    vs = mine(run([p], stay_s + 12.0, engine=eng), p)
    after = [v for v in vs if v.t_end > stay_s + 3.5 and v.approach is not None]  # past the first 3 s
    focus_r = [math.hypot(384.0 - FOCUS[0], p.at(v.t_end)[1] - FOCUS[1]) / BH for v in after]
    in_range = [v for v, r in zip(after, focus_r, strict=True) if r <= 2.9]  # the influence is 3 PH
    assert in_range, "the scene must keep the person in range past the first 3 s"
    assert all(v.approach >= -0.2 - 1e-9 for v in in_range), [(v.t_start, v.approach) for v in in_range]


@pytest.mark.parametrize(("speed", "pattern"), [(0.4, "calm"), (2.0, "abrupt")])
def test_a_track_lost_just_after_leaving_is_judged_at_the_exit(speed, pattern):
    """6 s just inside the edge, out at ``speed`` for 0.5-0.8 s, then the tracker loses the
    person 0.4 s later: the exit is judged from what was seen when they left, not truncated."""
    y0, t_go = 470.0, 6.0
    t_last = t_go + (0.8 if speed < 1.0 else 0.5)
    p = Person(
        [(0.0, 384.0, y0), (t_go, 384.0, y0), (t_last, 384.0, y0 - 100.0 * speed * (t_last - t_go))],
        const(TOWARD),
        ended_at=t_last + 0.4,
    )
    q = ended_stay(run([p], 10.0), p)
    assert (EXIT_NAMES[q.exit], q.zone) == (pattern, DISPLAY)
    t_out = t_go + (y0 - EDGE_Y) / (100.0 * speed)
    assert q.dwell_s == pytest.approx(math.ceil(t_out * 10.0) / 10.0)  # to the first frame outside
    assert q.satisfaction_conf == pytest.approx(0.9)
    assert q.satisfaction == pytest.approx(d.dwell_satisfaction(q.dwell_s, DEFAULT_TYPICAL_STAY_S, pattern))


# -- (e) excluded zones ----------------------------------------------------------------------------


def test_nothing_is_measured_in_an_excluded_zone():
    staff = Person([(0.0, 70.0, 500.0), (3.0, 120.0, 520.0), (10.0, 70.0, 500.0)])
    visitor = walk_in_and_stop(const(TOWARD), until=10.0)
    eng = SignalEngine(SignalsConfig(), zone_map())
    vs = run([staff, visitor], 10.0, engine=eng)
    assert mine(vs, staff) == []
    assert staff.tid not in eng.states
    assert len(mine(vs, visitor)) == 6
    alone = mine(run([visitor], 10.0), visitor)  # the staff member changes nothing for others
    assert [dataclasses.replace(v, token="") for v in mine(vs, visitor)] == [dataclasses.replace(v, token="") for v in alone]


def test_stepping_from_the_display_into_an_adjacent_excluded_zone_ends_the_stay():
    """The staff area borders the display on its left (x 0.1 .. 0.3). 4 s at the display, a step
    left into the staff area at t = 4.35, 15 s there, then out of the top: the display stay ends
    when they stepped in (dwell 4.4 s at the first frame outside), and nothing is kept or sent
    while they are in the staff area."""
    eng = SignalEngine(SignalsConfig(), zone_map(staff=rect(0.1, 0.8, 0.3, 1.0)))
    p = Person(
        [
            (0.0, 300.0, 520.0),
            (4.0, 300.0, 520.0),
            (4.5, 200.0, 520.0),
            (20.0, 200.0, 520.0),
            (23.0, 200.0, 150.0),
            (26.0, 200.0, 150.0),
        ],
        const(TOWARD),
    )
    vs = mine(run([p], 26.0, engine=eng), p)
    q = ended_stay(vs, p)
    assert (q.t_start, q.zone) == (4.0, DISPLAY)
    assert q.dwell_s == pytest.approx(4.4)
    assert [v.t_start for v in vs] == [0.0, 2.0, 4.0, 20.0, 22.0, 24.0, 26.0]
    assert sum(v.frames for v in vs if v.t_start >= 20.0) == 56  # from x 20.5, out of the staff area
    st = eng.states[p.tid]
    assert not any(4.35 < s.t < 20.4 for s in st.samples)
    assert not st.stays or all(s.zone.kind != "attraction" for s in st.stays.values())


# -- (f) windows and tokens ------------------------------------------------------------------------


@pytest.mark.parametrize("window_s", [0.5, 2.0, 3.0, 7.0])
@pytest.mark.parametrize("t0", [0.0, 12.3, 1_700_000_000.05])
def test_windows_are_aligned_and_tokens_are_random(window_s, t0):
    p = walk_in_and_stop(const(TOWARD), until=11.0)
    q = Person([(0.0, 20.0, 150.0), (6.0, 740.0, 150.0)])
    vs = run([p, q], 11.0, t0=t0, window_s=window_s)
    assert len(p.tokens) == len(q.tokens) == 1  # no rotation within 10 min
    assert {v.token for v in vs} == {p.tokens[0], q.tokens[0]}
    assert not {p.tid, q.tid} & {v.token for v in vs}  # the tracker's ids never leave the engine
    for v in vs:
        assert re.fullmatch(r"[0-9a-f]{32}", v.token)
        assert v.t_end - v.t_start == pytest.approx(window_s, abs=1e-6)
        k = v.t_start / window_s
        assert k == pytest.approx(round(k), abs=1e-6)
    for who, seen in ((p, 111), (q, 61)):
        ws = mine(vs, who)
        assert ws[0].t_start <= t0 < ws[0].t_end
        for u, v in itertools.pairwise(ws):
            assert v.t_start == pytest.approx(u.t_end)  # contiguous while the person is in view
        assert sum(v.frames for v in ws) == seen


def test_windows_skip_a_gap_without_vectors():
    """No frames at all from t = 3 to t = 9 (camera stall): the empty windows produce nothing."""
    p = Person([(0.0, 384.0, 510.0), (3.0, 384.0, 510.0)])
    q = Person([(0.0, 384.0, 510.0), (3.0, 384.0, 510.0)])
    eng = SignalEngine(SignalsConfig(), zone_map())
    vs = run([p], 3.0, engine=eng, flush=False)
    vs += run([q], 3.0, engine=eng, t0=9.0)
    assert [v.t_start for v in mine(vs, p)] == [0.0, 2.0]
    assert [v.t_start for v in mine(vs, q)] == [8.0, 10.0, 12.0]
    assert [v.frames for v in mine(vs, p)] == [20, 11]


# -- invariances -----------------------------------------------------------------------------------


def scene() -> list[Person]:
    return [
        walk_in_and_stop(const(TOWARD)),
        Person([(0.0, 384.0, 300.0), (4.0, 384.0, 420.0), (8.0, 384.0, 300.0)]),
        stand_then_leave(0.4, 5.8),
        stand_then_leave(2.0, 6.0),
    ]


def who(vs: list[Vector]) -> list[int]:
    """Tokens are random per run: compare runs by order of first appearance instead."""
    first: dict[str, int] = {}
    return [first.setdefault(v.token, len(first)) for v in vs]


def signals(vs: list[Vector]) -> list[tuple]:
    return [(v.t_start, k, v.zone, v.engagement, v.approach, v.satisfaction, v.exit, v.orientation)
            for v, k in zip(vs, who(vs), strict=True)]


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_signals_do_not_depend_on_frame_size(scale):
    people = scene()
    base, scaled = signals(run(people, 12.0)), signals(run(people, 12.0, scale=scale))
    assert len(base) == len(scaled)
    for u, v in zip(base, scaled, strict=True):
        assert u[:3] == v[:3] and u[6:] == v[6:]
        assert v[3:6] == pytest.approx(u[3:6], abs=1e-6)


def test_signals_do_not_depend_on_the_clock_origin():
    people = scene()
    base, later = run(people, 12.0), run(people, 12.0, t0=10_000.0)
    assert [v.t_start + 10_000.0 for v in base] == [v.t_start for v in later]
    for u, v in zip(signals(base), signals(later), strict=True):
        assert u[1:3] == v[1:3] and u[6:] == v[6:]
        assert v[3:6] == pytest.approx(u[3:6], abs=1e-9)


def test_signals_are_stable_from_10_to_5_fps():
    people = scene()  # the sprinter too: abrupt at 5 fps as at 10
    ten, five = run(people, 12.0), run(people, 12.0, fps=5.0)
    assert [(v.t_start, k, v.zone, v.exit) for v, k in zip(ten, who(ten), strict=True)] == [
        (v.t_start, k, v.zone, v.exit) for v, k in zip(five, who(five), strict=True)]
    for u, v in zip(ten, five, strict=True):
        for a, b in ((u.engagement, v.engagement), (u.approach, v.approach), (u.satisfaction, v.satisfaction)):
            assert (a is None) == (b is None)
            if a is not None:
                assert b == pytest.approx(a, abs=0.05)


# -- housekeeping ----------------------------------------------------------------------------------


def test_reset_forgets_everything():
    eng = SignalEngine(SignalsConfig(), zone_map())
    display = eng.zones.zones[DISPLAY]
    # five people stand 4 s at the display and stroll off: enough stays to learn a typical one
    people = []
    for k in range(5):
        p = stand_then_leave(0.4, 4.0)
        p.path = [(t, 260.0 + 60.0 * k, y) for t, _, y in p.path]
        people.append(p)
    vs = run(people, 12.0, engine=eng, flush=False)
    assert sum(v.satisfaction is not None for v in vs) == 5
    assert eng.typical.typical(display) == pytest.approx(4.3, abs=0.2)  # learned from the five stays
    straggler = walk_in_and_stop(const(TOWARD), until=12.0)
    run([straggler], 11.0, engine=eng, t0=12.1, flush=False)  # a window is open with this person in it

    assert eng.reset() == 6
    assert eng.states == {}
    assert eng.typical.typical(display) == DEFAULT_TYPICAL_STAY_S
    assert eng.flush() == []  # the open window went with the tracks

    # the same id seen again is a stranger: young (null first window), no stay carried over
    back = Person([(1.5, 384.0, 510.0), (4.0, 384.0, 510.0)], const(TOWARD), tid=straggler.tid)
    vs = run([back], 4.0, engine=eng, t0=30.0)
    first = window(vs, back, 30.0)
    assert first.engagement is None
    assert first.dwell_s < 2.0


def test_flush_twice_returns_nothing_new():
    eng = SignalEngine(SignalsConfig(), zone_map())
    p = walk_in_and_stop(const(TOWARD))
    run([p], 5.0, engine=eng)
    assert eng.flush() == []
    assert SignalEngine(SignalsConfig(), zone_map()).flush() == []


def test_pose_candidates_prefer_people_near_the_display_and_skip_small_boxes():
    eng = SignalEngine(SignalsConfig(pose_min_box_px=80.0), zone_map())
    near, far = Person([(0.0, 384.0, 510.0), (2.0, 384.0, 510.0)]), Person([(0.0, 600.0, 150.0), (2.0, 600.0, 150.0)])
    run([near, far], 2.0, engine=eng, flush=False)
    tracks = [make_track(far.tid, 600.0, 150.0), make_track(near.tid, 384.0, 510.0)]
    assert [tr.tid for tr in eng.pose_candidates(tracks, 2.1, 1)] == [near.tid]
    assert [tr.tid for tr in eng.pose_candidates(tracks, 2.1, 5)] == [near.tid, far.tid]
    assert eng.pose_candidates(tracks, 2.1, 0) == []
    small = make_track(secrets.token_hex(16), 300.0, 300.0, bh=60.0)
    assert small not in eng.pose_candidates([*tracks, small], 2.1, 5)


# -- session tokens --------------------------------------------------------------------------------


def test_tokens_rotate_at_window_boundaries_and_never_come_back():
    p = walk_in_and_stop(const(TOWARD), until=65.0)
    eng = SignalEngine(SignalsConfig(), zone_map(), token_rotation_s=20.0)
    vs = run([p], 65.0, engine=eng)
    assert len(p.tokens) == 4  # born at 0 s, rotated at 20, 40 and 60 s
    spans = [[v for v in vs if v.token == tok] for tok in p.tokens]
    for tok, span in zip(p.tokens, spans, strict=True):
        assert re.fullmatch(r"[0-9a-f]{32}", tok) and tok != p.tid
        assert span[-1].t_end - span[0].t_start <= 20.0 + eng.window_s
    # each token's windows come before the next token's: no token survives its rotation
    assert [v.token for v in vs] == [tok for tok, span in zip(p.tokens, spans, strict=True) for _ in span]
    assert p.tokens[-1] == eng.states[p.tid].token and not set(p.tokens[:-1]) & {st.token for st in eng.states.values()}


def test_ten_thousand_tokens_are_unique_and_random():
    from firmware.signals.engine import new_token

    toks = [new_token() for _ in range(10_000)]
    assert len(set(toks)) == 10_000
    assert all(re.fullmatch(r"[0-9a-f]{32}", t) for t in toks)
    # the bits look uniform: each hex digit position has roughly 1/16 of each value
    counts = np.array([[sum(t[i] == c for t in toks) for c in "0123456789abcdef"] for i in (0, 15, 31)])
    assert counts.min() > 10_000 / 16 * 0.75 and counts.max() < 10_000 / 16 * 1.25
