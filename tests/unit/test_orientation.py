"""Orientation from keypoints: hand-made poses with a known yaw, and properties of every function."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.signals.orientation import (
    FRONTAL_RATIO,
    body_facing,
    circular_mean,
    facing_alignment,
    orientation_score,
)

TORSO_PX = 100.0
BOX_PX = 300.0


def person(yaw_deg: float, *, score: float = 0.9, nose: float | None = 0.9, ears: tuple[float, float] = (0.1, 0.1)) -> np.ndarray:
    """Keypoints (pixels) of an upright person facing (sin yaw, cos yaw) in image coordinates:
    yaw 0 faces the camera (down the image), 90 the image's right, 180 away, -90 the image's left."""
    yaw = math.radians(yaw_deg)
    k = np.zeros((17, 3))
    cx, sy, hy = 200.0, 100.0, 100.0 + TORSO_PX
    half = 0.5 * FRONTAL_RATIO * TORSO_PX * math.cos(yaw)  # the person's left is on the image's right when frontal
    k[5] = (cx + half, sy, score)
    k[6] = (cx - half, sy, score)
    k[11] = (cx + 0.7 * half, hy, score)
    k[12] = (cx - 0.7 * half, hy, score)
    k[0] = (cx + 15.0 * math.sin(yaw), sy - 30.0, nose if nose is not None else 0.0)  # the nose points where they face
    k[3] = (cx + 8.0 * math.cos(yaw), sy - 35.0, ears[0])
    k[4] = (cx - 8.0 * math.cos(yaw), sy - 35.0, ears[1])
    return k


def angle_between(a, b) -> float:
    return math.degrees(math.acos(min(max(float(np.dot(a, b)), -1.0), 1.0)))


@pytest.mark.parametrize(
    ("yaw", "want"),
    [(0, (0, 1)), (180, (0, -1)), (90, (1, 0)), (-90, (-1, 0)), (45, (0.7071, 0.7071)), (-135, (-0.7071, -0.7071))],
    ids=["front", "back", "side-right", "side-left", "front-right", "back-left"],
)
def test_known_poses(yaw, want):
    facing, conf = body_facing(person(yaw), BOX_PX)
    assert facing is not None
    assert np.allclose(facing, want, atol=1e-3)
    assert 0.0 < conf <= 1.0


def test_confidence_is_highest_square_on_and_lowest_side_on():
    confs = [body_facing(person(y), BOX_PX)[1] for y in (0, 30, 60, 90, 120, 150, 180)]
    assert confs[0] == pytest.approx(0.9) and confs[-1] == pytest.approx(0.9)
    assert confs[3] == pytest.approx(0.45)
    assert confs[0] > confs[1] > confs[2] > confs[3] < confs[4] < confs[5] < confs[6]
    # a weaker shoulder lowers it
    assert body_facing(person(0, score=0.5), BOX_PX)[1] == pytest.approx(0.5)


def test_not_trustworthy_gives_none():
    low = person(0)
    low[6, 2] = 0.29
    assert body_facing(low, BOX_PX) == (None, 0.0)
    assert body_facing(person(0, score=0.2), BOX_PX) == (None, 0.0)
    assert body_facing(person(0), 79.9) == (None, 0.0)  # box too small
    assert body_facing(person(0), 60.0, min_box_px=50.0)[0] is not None  # per-site gate
    assert body_facing(person(0), float("nan")) == (None, 0.0)
    nan = person(0)
    nan[5, 0] = np.nan
    assert body_facing(nan, BOX_PX) == (None, 0.0)
    with pytest.raises(ValueError, match=r"\(17, 3\)"):
        body_facing(np.zeros((16, 3)), BOX_PX)


def test_side_from_the_ears_without_a_nose():
    # turned to the image's right: the right ear (4) faces the camera and is the one that scores
    right, _ = body_facing(person(70, nose=None, ears=(0.1, 0.8)), BOX_PX)
    left, _ = body_facing(person(-70, nose=None, ears=(0.8, 0.1)), BOX_PX)
    assert right is not None and left is not None
    assert angle_between(right, (math.sin(math.radians(70)), math.cos(math.radians(70)))) < 1e-3
    assert angle_between(left, (-math.sin(math.radians(70)), math.cos(math.radians(70)))) < 1e-3


def test_unknown_side_falls_back_to_front_or_back_with_less_confidence():
    for yaw, y in ((60, 1.0), (120, -1.0)):
        facing, conf = body_facing(person(yaw, nose=None, ears=(0.8, 0.8)), BOX_PX)
        assert facing is not None and np.allclose(facing, (0.0, y))
        assert conf == pytest.approx(0.9 * 0.5, abs=1e-6)  # |cos yaw| = 0.5 and no side bonus
    _, side_on = body_facing(person(90, nose=None), BOX_PX)
    assert side_on == pytest.approx(0.0, abs=1e-6)


def test_missing_hips_use_the_box_height():
    k = person(0)
    k[[11, 12], 2] = 0.1
    facing, conf = body_facing(k, TORSO_PX / 0.29)
    assert facing is not None and np.allclose(facing, (0, 1))
    assert conf == pytest.approx(0.9 * 0.7)


def test_normalized_keypoints_need_the_frame_scale():
    k = person(45)
    w, h = 640.0, 480.0
    norm = k.copy()
    norm[:, 0] /= w
    norm[:, 1] /= h
    a, _ = body_facing(k, BOX_PX)
    b, _ = body_facing(norm, BOX_PX, scale=(w, h))
    assert a is not None and b is not None and np.allclose(a, b)


@settings(max_examples=200, deadline=None)
@given(yaw=st.floats(-179.0, 179.0).filter(lambda y: abs(y) > 0.5))
def test_yaw_is_recovered(yaw):
    facing, conf = body_facing(person(yaw), BOX_PX)
    assert facing is not None
    assert angle_between(facing, (math.sin(math.radians(yaw)), math.cos(math.radians(yaw)))) < 0.01
    assert 0.45 - 1e-9 <= conf <= 0.9 + 1e-9


finite = st.floats(-1e4, 1e4, allow_nan=False)
anything = st.floats(allow_nan=True, allow_infinity=True)


@settings(max_examples=300, deadline=None)
@given(
    xy=st.lists(st.tuples(finite, finite), min_size=17, max_size=17),
    scores=st.lists(st.floats(0.0, 1.0), min_size=17, max_size=17),
    box=st.floats(0.0, 2000.0),
)
def test_body_facing_is_a_unit_vector_or_none(xy, scores, box):
    k = np.column_stack([np.array(xy), np.array(scores)])
    facing, conf = body_facing(k, box)
    assert 0.0 <= conf <= 1.0 and not math.isnan(conf)
    if facing is None:
        assert conf == 0.0
    else:
        assert facing.shape == (2,) and np.isfinite(facing).all()
        assert abs(float(np.hypot(*facing)) - 1.0) < 1e-9


@settings(max_examples=300, deadline=None)
@given(f=st.tuples(anything, anything), a=st.tuples(anything, anything), b=st.tuples(anything, anything))
def test_facing_alignment_is_a_cosine(f, a, b):
    c = facing_alignment(np.array(f), np.array(a), np.array(b))
    assert -1.0 <= c <= 1.0


def test_facing_alignment_examples():
    assert facing_alignment(np.array([0.0, 1.0]), np.array([5.0, 5.0]), np.array([5.0, 9.0])) == pytest.approx(1.0)
    assert facing_alignment(np.array([0.0, 1.0]), np.array([5.0, 5.0]), np.array([5.0, 1.0])) == pytest.approx(-1.0)
    assert facing_alignment(np.array([1.0, 0.0]), np.array([0.0, 0.0]), np.array([3.0, 3.0])) == pytest.approx(math.sqrt(0.5))
    assert facing_alignment(np.array([1.0, 0.0]), np.array([2.0, 2.0]), np.array([2.0, 2.0])) == 0.0  # on the focus point


def test_orientation_score_examples():
    assert orientation_score(1.0) == 1.0
    assert orientation_score(math.cos(math.radians(20))) == 1.0  # within 30 degrees: facing
    assert orientation_score(math.cos(math.radians(30))) == pytest.approx(1.0)
    assert orientation_score(0.5) == pytest.approx(0.5)  # 60 degrees: half way to side-on
    assert orientation_score(math.cos(math.radians(30)), cone_deg=60.0, full_deg=0.0) == pytest.approx(0.5)
    assert orientation_score(0.0) == 0.0 and orientation_score(-1.0) == 0.0
    assert orientation_score(math.cos(math.radians(45)), cone_deg=90.0, full_deg=0.0) == pytest.approx(0.5)
    assert orientation_score(float("nan")) == 0.0
    assert orientation_score(1.5) == 1.0  # rounding past 1 still means straight on


@settings(max_examples=300, deadline=None)
@given(a=st.floats(0.0, 180.0), b=st.floats(0.0, 180.0), cone=st.floats(1.0, 180.0))
def test_orientation_score_is_bounded_and_non_increasing_in_angle(a, b, cone):
    lo, hi = min(a, b), max(a, b)
    s_lo = orientation_score(math.cos(math.radians(lo)), cone)
    s_hi = orientation_score(math.cos(math.radians(hi)), cone)
    assert 0.0 <= s_hi <= s_lo <= 1.0
    if hi >= cone + 1e-6:
        assert s_hi == 0.0


def test_circular_mean_examples():
    assert np.allclose(circular_mean(np.array([[0.0, 2.0]])), [0.0, 1.0])
    assert np.allclose(circular_mean(np.array([[1.0, 0.0], [0.0, 1.0]])), [math.sqrt(0.5)] * 2)
    assert np.allclose(circular_mean(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([3.0, 0.0])), [1.0, 0.0])
    # length does not count, only direction and weight
    assert np.allclose(circular_mean(np.array([[10.0, 0.0], [0.0, 1.0]])), [math.sqrt(0.5)] * 2)
    assert circular_mean(np.array([[0.0, 1.0], [0.0, -1.0]])) is None  # front/back flip-flop cancels out
    assert circular_mean(np.zeros((0, 2))) is None
    assert circular_mean(np.array([[0.0, 0.0], [np.nan, 1.0]])) is None
    # a loose majority is still a direction unless the caller asks for agreement
    mostly = np.array([[0.0, 1.0], [0.0, 1.0], [0.0, -1.0]])
    assert np.allclose(circular_mean(mostly), [0.0, 1.0])
    assert circular_mean(mostly, min_resultant=0.5) is None
    with pytest.raises(ValueError, match="weights"):
        circular_mean(np.ones((3, 2)), np.ones(2))


polar = st.tuples(st.floats(-math.pi, math.pi), st.floats(1e-3, 1e3))


@settings(max_examples=300, deadline=None)
@given(
    vs=st.lists(polar, min_size=1, max_size=20),
    ws=st.lists(st.floats(0.0, 10.0), min_size=20, max_size=20),
    turn=st.floats(-math.pi, math.pi),
)
def test_circular_mean_is_unit_and_turns_with_its_input(vs, ws, turn):
    v = np.array([(r * math.cos(a), r * math.sin(a)) for a, r in vs])
    u = np.array([(math.cos(a), math.sin(a)) for a, _ in vs])
    w = np.array(ws[: len(vs)])
    m = circular_mean(v, w)
    resultant = float(np.hypot(*(u * w[:, None]).sum(axis=0)))
    if resultant < 1e-6 * max(float(w.sum()), 1e-12):
        return  # directions cancel out (or no weight): None is allowed, a direction would be noise
    assert m is not None and np.isfinite(m).all() and abs(float(np.hypot(*m)) - 1.0) < 1e-9
    assert np.allclose(m, (u * w[:, None]).sum(axis=0) / resultant, atol=1e-9)
    c, s = math.cos(turn), math.sin(turn)
    rot = np.array([[c, -s], [s, c]])
    mr = circular_mean(v @ rot.T, w)
    assert mr is not None and np.allclose(mr, rot @ m, atol=1e-6)
