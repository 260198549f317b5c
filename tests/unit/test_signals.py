"""The signal definitions as pure functions: ranges, no NaN, monotonicity, and the kinematics
helpers (least-squares velocity, straightness, reversals) on paths with a known answer."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from firmware.signals import definitions as d
from firmware.signals.orientation import orientation_score

PROPS = settings(max_examples=200, deadline=None)

# Any finite float, including zeros, subnormals and values near the largest double.
finite = st.floats(allow_nan=False, allow_infinity=False)
# Physically meaningful magnitudes (PH, PH/s, s) with room for absurd ones.
speed = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
distance = st.floats(min_value=0.0, max_value=1e6, allow_nan=False)
seconds = st.floats(min_value=0.0, max_value=1e7, allow_nan=False)
unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
patterns = st.sampled_from(sorted(d.EXIT_SCORES))
ORDER = ["calm", "truncated", "veer", "abrupt"]


def in01(x: float) -> bool:
    return isinstance(x, float) and 0.0 <= x <= 1.0


def in11(x: float) -> bool:
    return isinstance(x, float) and -1.0 <= x <= 1.0


# -- anchors from the definitions (docs: SIGNALS-BACKGROUND §7) -------------------------------------


def test_component_anchor_values():
    assert d.stillness(0.0) == 1.0 and d.stillness(d.STILL_PH_S) == 1.0
    assert d.stillness(d.SLOW_PH_S) == 0.0 and d.stillness(2.0) == 0.0
    assert d.stillness((d.STILL_PH_S + d.SLOW_PH_S) / 2) == pytest.approx(0.5)
    assert d.proximity(0.0) == 1.0 and d.proximity(d.NEAR_PH) == 1.0
    assert d.proximity(d.FAR_PH) == 0.0 and d.proximity(10.0) == 0.0
    assert d.proximity((d.NEAR_PH + d.FAR_PH) / 2) == pytest.approx(0.5)
    assert d.oriented_time(0.0) == 0.0
    assert d.oriented_time(d.ORIENT_TAU_S) == pytest.approx(1 - math.exp(-1))
    assert d.oriented_time(-5.0) == 0.0


def test_engagement_anchor_values():
    # standing still, within 1 m, facing squarely, no oriented time yet: 0.4 + 0.3
    assert d.engagement(1.0, 0.0, 0.0, 0.0, True) == pytest.approx(0.7)
    assert d.engagement(1.0, 0.0, 0.0, 1e6, True) == pytest.approx(1.0)
    assert d.engagement(0.5, 0.0, 0.0, 1e6, True) == pytest.approx(0.5)
    assert d.engagement(1.0, 0.0, 0.0, 1e6, False) == 0.0
    assert d.engagement(0.0, 0.0, 0.0, 1e6, True) == 0.0  # facing away: nothing, however still and close
    assert d.engagement(1.0, 5.0, 10.0, 0.0, True) == 0.0  # walking, far, no oriented time


def test_approach_and_dwell_anchor_values():
    assert d.approach(0.0) == 0.0
    assert d.approach(d.RADIAL_SCALE_PH_S) == pytest.approx(math.tanh(1.0))
    assert d.dwell_satisfaction(10.0, 10.0, "calm") == pytest.approx(0.5)
    assert d.dwell_satisfaction(10.0, 10.0, "abrupt") == pytest.approx(-0.5)
    assert d.dwell_satisfaction(10.0, 10.0, "truncated") == pytest.approx(0.0)
    assert d.dwell_satisfaction(20.0, 10.0, "truncated") == pytest.approx(0.5 * math.tanh(1.0))
    assert d.dwell_satisfaction(5.0, 10.0, "veer") == pytest.approx(0.5 * math.tanh(-1.0) - 0.25)


# -- ranges and no NaN ----------------------------------------------------------------------------


@PROPS
@given(x=finite)
def test_components_are_in_unit_interval_for_any_finite_input(x):
    for f in (d.stillness, d.proximity, d.oriented_time, d.clip01):
        y = f(x)
        assert in01(y), (f.__name__, x, y)


@PROPS
@given(orient=finite, v=finite, r=finite, t=finite, inside=st.booleans())
def test_engagement_in_unit_interval_for_any_finite_input(orient, v, r, t, inside):
    e = d.engagement(orient, v, r, t, inside)
    assert in01(e)
    if not inside:
        assert e == 0.0


@PROPS
@given(v=finite)
def test_approach_in_range_for_any_finite_input(v):
    a = d.approach(v)
    assert in11(a)
    assert (a > 0) == (v > 0) or abs(v) < 1e-300  # sign follows the radial speed (bar underflow)


@PROPS
@given(dwell=finite, typical=finite, pattern=patterns)
def test_dwell_satisfaction_in_range_for_any_finite_input(dwell, typical, pattern):
    assert in11(d.dwell_satisfaction(dwell, typical, pattern))


@PROPS
@given(c=st.floats(min_value=-1.0, max_value=1.0), v=speed, r=distance, t=seconds)
def test_engagement_from_an_alignment_cosine(c, v, r, t):
    """Ō as the engine computes it (from a cosine) composes into an E in range."""
    assert in01(d.engagement(orientation_score(c), v, r, t, True))


# -- monotonicity ---------------------------------------------------------------------------------


def ordered(a: float, b: float) -> tuple[float, float]:
    return (a, b) if a <= b else (b, a)


@PROPS
@given(o=st.tuples(unit, unit), v=speed, r=distance, t=seconds)
def test_engagement_non_decreasing_in_orientation(o, v, r, t):
    lo, hi = ordered(*o)
    assert d.engagement(lo, v, r, t, True) <= d.engagement(hi, v, r, t, True)


@PROPS
@given(o=unit, v=speed, r=distance, t=st.tuples(seconds, seconds))
def test_engagement_non_decreasing_in_oriented_time(o, v, r, t):
    lo, hi = ordered(*t)
    assert d.engagement(o, v, r, lo, True) <= d.engagement(o, v, r, hi, True)


@PROPS
@given(o=unit, v=st.tuples(speed, speed), r=distance, t=seconds)
def test_engagement_non_increasing_in_speed(o, v, r, t):
    lo, hi = ordered(*v)
    assert d.engagement(o, lo, r, t, True) >= d.engagement(o, hi, r, t, True)


@PROPS
@given(o=unit, v=speed, r=st.tuples(distance, distance), t=seconds)
def test_engagement_non_increasing_in_distance(o, v, r, t):
    lo, hi = ordered(*r)
    assert d.engagement(o, v, lo, t, True) >= d.engagement(o, v, hi, t, True)


@PROPS
@given(c=st.tuples(st.floats(-1.0, 1.0), st.floats(-1.0, 1.0)), v=speed, r=distance, t=seconds)
def test_engagement_non_increasing_in_angle_to_focus(c, v, r, t):
    lo, hi = ordered(*c)  # a larger cosine is a smaller angle
    assert d.engagement(orientation_score(lo), v, r, t, True) <= d.engagement(orientation_score(hi), v, r, t, True)


@PROPS
@given(o=finite, v=finite, r=finite, t=finite)
def test_engagement_is_zero_outside_the_zone(o, v, r, t):
    assert d.engagement(o, v, r, t, False) == 0.0


@PROPS
@given(v=st.tuples(finite, finite))
def test_approach_non_decreasing_in_radial_speed(v):
    lo, hi = ordered(*v)
    assert d.approach(lo) <= d.approach(hi)


@PROPS
@given(v=finite)
def test_approach_is_odd(v):
    assert d.approach(-v) == -d.approach(v)


@PROPS
@given(dwell=st.tuples(seconds, seconds), typical=st.floats(min_value=0.0, max_value=1e5), pattern=patterns)
def test_dwell_satisfaction_non_decreasing_in_dwell(dwell, typical, pattern):
    lo, hi = ordered(*dwell)
    assert d.dwell_satisfaction(lo, typical, pattern) <= d.dwell_satisfaction(hi, typical, pattern)


@PROPS
@given(dwell=seconds, typical=st.tuples(st.floats(min_value=0.0, max_value=1e5), st.floats(min_value=0.0, max_value=1e5)),
       pattern=patterns)
def test_dwell_satisfaction_non_increasing_in_typical_stay(dwell, typical, pattern):
    lo, hi = ordered(*typical)
    assert d.dwell_satisfaction(dwell, lo, pattern) >= d.dwell_satisfaction(dwell, hi, pattern)


@PROPS
@given(dwell=finite, typical=finite)
def test_dwell_satisfaction_ordered_by_exit_pattern(dwell, typical):
    q = [d.dwell_satisfaction(dwell, typical, p) for p in ORDER]
    assert q == sorted(q, reverse=True), dict(zip(ORDER, q, strict=True))
    unknown, truncated = (d.dwell_satisfaction(dwell, typical, p) for p in ("unknown", "truncated"))
    # a stay cut short by losing the track lasted at least this long: it is never judged short
    assert truncated >= unknown and truncated >= 0.0
    if dwell >= typical:
        assert truncated == unknown
    assert d.dwell_satisfaction(dwell, typical, "pass") == 0.0  # a walk through is no stay to judge
    assert d.dwell_satisfaction(dwell, typical, "wander") == d.dwell_satisfaction(dwell, typical, "abrupt")


@PROPS
@given(dwell=st.floats(min_value=0.01, max_value=1e4), typical=st.floats(min_value=0.01, max_value=1e4))
def test_dwell_satisfaction_calm_beats_abrupt_by_the_full_exit_weight(dwell, typical):
    gap = d.dwell_satisfaction(dwell, typical, "calm") - d.dwell_satisfaction(dwell, typical, "abrupt")
    assert gap == pytest.approx(1.0)


def test_dwell_satisfaction_rejects_an_unknown_exit_pattern():
    with pytest.raises(KeyError):
        d.dwell_satisfaction(10.0, 10.0, "sprint")


# -- closest approach ------------------------------------------------------------------------------

coord = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False)
vec2 = st.tuples(coord, coord).map(lambda p: np.array(p, dtype=np.float64))


@PROPS
@given(dv=vec2, v=vec2)
def test_closest_approach_is_the_perpendicular_miss(dv, v):
    t_star, miss = d.closest_approach(dv, v)
    assert not math.isnan(t_star) and math.isfinite(miss)
    r = float(np.hypot(*dv))
    assert 0.0 <= miss <= r * (1 + 1e-9) + 1e-9  # never farther than now (t = 0 is a candidate)
    vv = float(v @ v)
    if vv < 1e-12:
        assert t_star == math.inf and miss == pytest.approx(r)
        return
    assume(vv > 1e-6)
    cross = abs(float(dv[0] * v[1] - dv[1] * v[0])) / math.sqrt(vv)
    assert miss == pytest.approx(cross, rel=1e-6, abs=1e-6 * (1 + r))
    # heading for the focus point: t* > 0; moving away: t* < 0
    if float(dv @ v) < -1e-9:
        assert t_star > 0
    elif float(dv @ v) > 1e-9:
        assert t_star < 0


def test_closest_approach_head_on_and_standing():
    t_star, miss = d.closest_approach(np.array([3.0, 0.0]), np.array([-1.5, 0.0]))
    assert t_star == pytest.approx(2.0) and miss == pytest.approx(0.0)
    t_star, miss = d.closest_approach(np.array([3.0, 4.0]), np.zeros(2))
    assert t_star == math.inf and miss == pytest.approx(5.0)


# -- least-squares velocity ------------------------------------------------------------------------


@PROPS
@given(
    n=st.integers(min_value=2, max_value=60),
    t0=st.floats(min_value=-1e6, max_value=2e9),  # monotonic clocks and epoch seconds alike
    dt=st.floats(min_value=0.02, max_value=1.0),
    p0=st.tuples(coord, coord),
    v=st.tuples(st.floats(-50, 50), st.floats(-50, 50)),
    jitter=st.lists(st.floats(0.0, 0.5), min_size=60, max_size=60),
)
def test_lsq_velocity_recovers_the_slope_of_linear_motion(n, t0, dt, p0, v, jitter):
    # uneven frame times (dropped or late frames) must not matter for exact linear motion
    rel = np.cumsum([0.0] + [dt * (1.0 + j) for j in jitter[: n - 1]])
    t = t0 + rel
    vel = np.array(v)
    p = np.array(p0) + np.outer(t - t0, vel)
    got = d.lsq_velocity(t, p)
    assert got.shape == (2,)
    assert np.all(np.isfinite(got))
    # the clock's own rounding (|t0| up to 2e9) limits the precision of the recovered slope
    eps = 1e-7 + 4 * np.finfo(float).eps * max(abs(t0), 1.0) * float(np.abs(vel).max()) / (rel[-1] - rel[0])
    assert np.allclose(got, vel, rtol=1e-6, atol=eps)


@PROPS
@given(n=st.integers(min_value=1, max_value=20), t=st.floats(-1e6, 1e6), p=st.tuples(coord, coord))
def test_lsq_velocity_is_zero_without_a_time_span(n, t, p):
    got = d.lsq_velocity(np.full(n, t), np.tile(np.array(p), (n, 1)) + np.arange(n)[:, None])
    assert np.array_equal(got, np.zeros(2))


def test_lsq_velocity_of_a_single_sample_is_zero():
    assert np.array_equal(d.lsq_velocity(np.array([3.0]), np.array([[1.0, 2.0, 3.0]])), np.zeros(3))


@PROPS
@given(rows=st.lists(st.tuples(st.floats(0.0, 100.0), coord, coord), min_size=0, max_size=30))
def test_lsq_velocity_is_finite_for_any_samples(rows):
    a = np.array(rows, dtype=np.float64).reshape(-1, 3)
    got = d.lsq_velocity(a[:, 0], a[:, 1:])
    assert got.shape == (2,) and np.all(np.isfinite(got))


# -- straightness ---------------------------------------------------------------------------------


@PROPS
@given(
    p0=st.tuples(coord, coord),
    angle=st.floats(0.0, 2 * math.pi),
    steps=st.lists(st.floats(0.0, 5.0), min_size=1, max_size=50),
)
def test_straightness_is_one_on_a_straight_line(p0, angle, steps):
    s = np.cumsum([0.0, *steps])  # forward only; repeated points (standing) allowed
    p = np.array(p0) + np.outer(s, [math.cos(angle), math.sin(angle)])
    ratio, path = d.straightness(p)
    assert ratio == pytest.approx(1.0, rel=1e-9, abs=1e-9)
    assert path == pytest.approx(s[-1], rel=1e-9, abs=1e-9)


def pacing(p0, angle: float, leg: float, legs: int, step: float, wobble: float = 0.0, seed: int = 0) -> np.ndarray:
    """Back-and-forth along a line: ``legs`` legs of length ``leg``, sampled every ``step``, with
    a random sideways wobble of up to ``wobble``."""
    k = max(math.ceil(leg / step), 1)
    s = [0.0]
    for i in range(legs):
        a, b = (0.0, leg) if i % 2 == 0 else (leg, 0.0)
        s += list(np.linspace(a, b, k + 1)[1:])
    u = np.array([math.cos(angle), math.sin(angle)])
    p = np.array(p0) + np.outer(s, u)
    if wobble > 0:
        p = p + np.outer(np.random.default_rng(seed).uniform(-wobble, wobble, len(p)), [-u[1], u[0]])
    return p


@PROPS
@given(
    p0=st.tuples(coord, coord),
    angle=st.floats(0.0, 2 * math.pi),
    leg=st.floats(0.5, 5.0),
    legs=st.integers(4, 12),
    step=st.floats(0.02, 0.2),
)
def test_straightness_of_back_and_forth_is_low(p0, angle, leg, legs, step):
    ratio, path = d.straightness(pacing(p0, angle, leg, legs, step))
    assert ratio < 0.3
    assert path == pytest.approx(leg * legs, rel=1e-6)


huge = st.floats(min_value=-1e150, max_value=1e150, allow_nan=False)


@PROPS
@given(ps=st.lists(st.tuples(huge, huge), min_size=0, max_size=30))
def test_straightness_never_nan_for_huge_coordinates(ps):
    ratio, path = d.straightness(np.array(ps, dtype=np.float64).reshape(-1, 2))
    assert 0.0 <= ratio <= 1.0 + 1e-9 and math.isfinite(path) and path >= 0.0


@PROPS
@given(ps=st.lists(st.tuples(coord, coord), min_size=0, max_size=30))
def test_straightness_in_unit_interval(ps):
    ratio, path = d.straightness(np.array(ps, dtype=np.float64).reshape(-1, 2))
    assert 0.0 <= ratio <= 1.0 + 1e-9 and math.isfinite(path) and path >= 0.0


# -- reversals ------------------------------------------------------------------------------------


@PROPS
@given(
    p0=st.tuples(coord, coord),
    angle=st.floats(0.0, 2 * math.pi),
    leg=st.floats(1.0, 5.0),
    legs=st.integers(1, 12),
    step=st.floats(0.02, 0.1),
    wobble=st.floats(0.0, 0.02),
    seed=st.integers(0, 2**32 - 1),
)
def test_reversals_count_the_turns_of_pacing(p0, angle, leg, legs, step, wobble, seed):
    """Each turn of back-and-forth pacing is one reversal, with or without a sideways wobble."""
    assert d.reversals(pacing(p0, angle, leg, legs, step, wobble, seed)) == legs - 1


@PROPS
@given(
    c=st.tuples(coord, coord),
    radius=st.floats(0.0, 0.12),
    pts=st.lists(st.tuples(st.floats(0.0, 1.0), st.floats(0.0, 2 * math.pi)), min_size=0, max_size=200),
)
def test_reversals_ignore_jitter_below_min_step(c, radius, pts):
    """Any wobble within a disc of diameter < min_step (0.25) is standing, not pacing."""
    p = np.array([[c[0] + radius * r * math.cos(a), c[1] + radius * r * math.sin(a)] for r, a in pts]).reshape(-1, 2)
    assert d.reversals(p, min_step=0.25) == 0


def test_reversals_ignore_pacing_shorter_than_min_step():
    p = pacing((0.0, 0.0), 0.3, 0.2, 10, 0.02)
    assert d.reversals(p, min_step=0.25) == 0
    assert d.reversals(p, min_step=0.05) == 9


@PROPS
@given(
    angle=st.floats(0.0, 2 * math.pi),
    turn=st.floats(0.0, 110.0),
    sign=st.sampled_from([-1.0, 1.0]),
)
def test_reversals_ignore_turns_gentler_than_min_turn(angle, turn, sign):
    a2 = angle + sign * math.radians(turn)
    leg1 = np.outer(np.linspace(0, 2, 21), [math.cos(angle), math.sin(angle)])
    leg2 = leg1[-1] + np.outer(np.linspace(0, 2, 21)[1:], [math.cos(a2), math.sin(a2)])
    assert d.reversals(np.vstack([leg1, leg2])) == 0


def test_reversals_of_short_paths():
    assert d.reversals(np.zeros((0, 2))) == 0
    assert d.reversals(np.array([[0.0, 0.0], [1.0, 0.0]])) == 0
    assert d.reversals(np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])) == 1
