"""Scripted scenes with known answers (firmware/camera/scenes/*.yaml): real person cut-outs on
scripted paths over the plaza, through the whole service (real SSD and MoveNet, tracker,
signals) with the sim board's zones. The tracker is scored with motmetrics against the scene's
ground truth; the signals must come out in the scripted order."""

from __future__ import annotations

import pytest

from firmware.signals.engine import Vector
from tests.scenes import SceneRun, iou, mot_summary, run_scene

SCENES = ("stop_and_face", "walk_past", "approach_veer", "linger_pace", "crossing", "weak_stop", "occluded_stop",
          "side_by_side")
# Where the scene's first frame falls in the 2 s signal windows: every test passes at every phase.
# The default suite runs two of them; `make test-scenes` (in CI) runs all five.
PHASES = (0.0, 1.0)
MORE_PHASES = (0.5, 1.5, 1.95)
# approach_veer with patchy detections: per phase, the share of the real detector's boxes missed
PATCHY_MISS = {0.0: 0.2, 0.5: 0.25, 1.0: 0.3, 1.5: 0.35, 1.95: 0.4}


class Runs:
    """Scene runs through the whole service, one per (scene, phase), made when first asked for."""

    def __init__(self) -> None:
        self._done: dict[tuple[str, float], SceneRun] = {}

    def __call__(self, name: str, phase: float, noise: dict | None = None) -> SceneRun:
        key = (name, phase, tuple(sorted((noise or {}).items())))
        if key not in self._done:
            overrides = {"inference": {"detector": {"noise": noise}}} if noise else None
            run = run_scene(name, overrides, phase=phase)
            assert run.phase == pytest.approx(phase, abs=1e-6)
            self._done[key] = run
        return self._done[key]


@pytest.fixture(scope="module")
def scenes(models_dir, shared_media) -> Runs:
    return Runs()


@pytest.fixture(params=[*PHASES, *(pytest.param(p, marks=pytest.mark.scene_phases) for p in MORE_PHASES)],
                ids=lambda p: f"phase{p:g}")
def phase(request) -> float:
    return float(request.param)


@pytest.fixture
def runs(scenes, phase):
    """The scenes' runs at this test's phase, by name."""

    class AtPhase:
        def __getitem__(self, name: str) -> SceneRun:
            return scenes(name, phase)

    return AtPhase()


def _main_track(run: SceneRun, actor: int) -> tuple[str, list[Vector]]:
    tids = run.track_of(actor)
    assert tids, f"{run.name}: actor {run.actor_names[actor]} was never tracked"
    return tids[0], run.vectors_of(tids[0])


def _during(run: SceneRun, vs: list[Vector], t0: float, t1: float) -> list[Vector]:
    """Vectors whose window lies inside [t0, t1] seconds of scene time."""
    return [v for v in vs if t0 <= v.t_start - run.t0 and v.t_end - run.t0 <= t1]


# Scenes where the detector itself merges two people for a frame or two as one passes in front of
# the other (a box between them): the MOT metrics count that as one switch, however the tracker
# recovers. What the product needs there (one token per shopper) is tested per scene below.
SWITCHES_ALLOWED = {"occluded_stop": 1}
# IDF1 counts every truth box without a track box as a miss, and tracks are reported only where the
# detector saw the person: in `crossing` the real SSD loses both walkers for about a second where
# they overlap (16 % of the truth boxes), which holds IDF1 at 0.906 here however well identities
# are kept (0 switches); the floor leaves room for another CPU's arithmetic in the detector.
IDF1_FLOOR = {"crossing": 0.85}


@pytest.mark.parametrize("name", SCENES)
def test_tracker_keeps_identities(runs, name):
    m = mot_summary(runs[name])
    print(f"\n{name}: MOTA {m['mota']:.3f} IDF1 {m['idf1']:.3f} switches {m['num_switches']:.0f} "
          f"FP {m['num_false_positives']:.0f} misses {m['num_misses']:.0f} of {m['num_objects']:.0f}")
    assert m["idf1"] >= IDF1_FLOOR.get(name, 0.9)
    assert m["num_switches"] <= SWITCHES_ALLOWED.get(name, 0)
    assert m["num_false_positives"] <= 0.02 * m["num_objects"]


def test_crossing_people_keep_their_own_tracks(runs):
    run = runs["crossing"]
    a, b = run.track_of(0)[0], run.track_of(1)[0]
    assert a != b
    assert len({tid for frame in run.tracks for tid, _ in frame}) == 2  # no third, fragment track


def test_stop_and_face_engages_and_leaves_calmly(runs):
    run = runs["stop_and_face"]
    tid, vs = _main_track(run, 0)
    # walks in (0-5 s), stands facing the sign (5-13 s), walks off (13-19 s)
    assert max(v.approach for v in _during(run, vs, 0, 5) if v.approach is not None) > 0.3
    stop = _during(run, vs, 6, 13)
    assert len(stop) >= 2 and all(v.engagement is not None and v.engagement > 0.6 for v in stop), [v.engagement for v in stop]
    assert all(v.zone == runs["stop_and_face"].zone_names.index("plaza-sign") for v in stop)
    assert [v.engagement for v in stop] == sorted(v.engagement for v in stop)  # oriented time builds up
    walk_in = [v.engagement for v in _during(run, vs, 0, 5) if v.engagement is not None]
    assert max(walk_in) < min(v.engagement for v in stop)
    assert runs["stop_and_face"].exits(tid)[:1] == ["calm"]
    q = [v.satisfaction for v in vs if v.satisfaction is not None]
    assert q and q[0] > 0.3


def test_walk_past_does_not_engage(runs):
    _, vs = _main_track(runs["walk_past"], 0)
    assert len(vs) >= 4
    assert all(v.engagement is None or v.engagement < 0.2 for v in vs)


def test_approach_then_veer_turns_negative(runs):
    run = runs["approach_veer"]
    _, vs = _main_track(run, 0)
    # heads for the sign (0-3.8 s), turns short of it and walks away (3.8-9 s)
    assert max(v.approach for v in _during(run, vs, 0, 4) if v.approach is not None) > 0.3
    after = [v.approach for v in _during(run, vs, 4.2, 9) if v.approach is not None]
    assert after and max(after) < -0.3
    assert all(v.engagement is None or v.engagement < 0.2 for v in vs)


def test_lingering_ends_more_satisfied_than_pacing(runs):
    run = runs["linger_pace"]
    pacer, lingerer = run.track_of(0)[0], run.track_of(1)[0]
    assert run.exits(pacer) == ["wander"] and run.exits(lingerer) == ["calm"]
    q = {tid: next(v.satisfaction for v in run.vectors_of(tid) if v.satisfaction is not None) for tid in (pacer, lingerer)}
    assert q[lingerer] > 0.3 > 0.0 > q[pacer]


@pytest.mark.parametrize("name", SCENES)
def test_signals_stay_in_range(runs, name):
    for v in runs[name].vectors:
        assert v.engagement is None or 0.0 <= v.engagement <= 1.0
        assert v.approach is None or -1.0 <= v.approach <= 1.0
        assert v.satisfaction is None or -1.0 <= v.satisfaction <= 1.0
        for c in (v.engagement_conf, v.approach_conf, v.satisfaction_conf):
            assert 0.0 <= c <= 1.0
        assert len(v.token) == 32 and v.t_end - v.t_start == pytest.approx(2.0)


def test_without_pose_orientation_falls_back_and_confidence_drops(runs):
    """signals.pose: off (weak boards): no pose model runs; a person standing still has no
    heading, so engagement during the stop is computed with an unknown orientation and a lower
    confidence than with pose."""
    run = run_scene("stop_and_face", {"signals": {"pose": "off"}}, phase=runs["stop_and_face"].phase)
    _, vs = _main_track(run, 0)
    stop = _during(run, vs, 6, 13)
    with_pose = _during(runs["stop_and_face"], _main_track(runs["stop_and_face"], 0)[1], 6, 13)
    assert stop and all(v.engagement is not None and 0.2 < v.engagement < 0.8 for v in stop)
    assert max(v.engagement_conf for v in stop) < min(v.engagement_conf for v in with_pose)
    assert max(v.approach for v in _during(run, vs, 0, 5) if v.approach is not None) > 0.3  # motion still works


def _track_at(run: SceneRun, actor: int, t: float) -> str:
    """The confirmed track on ``actor`` (IoU >= 0.5) in the frame at t seconds of scene time."""
    i = round(t * run.fps)
    w, h = run.size
    (row,) = run.truth[i][run.truth[i][:, 0] == actor]
    gt = row[1:] * [w, h, w, h]
    (tid,) = [tid for tid, box in run.tracks[i] if iou(gt, box) >= 0.5]
    return tid


def test_weak_stop_is_engaged_for_the_whole_stop_with_one_token(runs):
    """The detector scores the standing shopper 0.35-0.5 for the whole stop (the scene's premise,
    checked on the real detector's output): the weak boxes keep the track, so the stop is one
    token with engagement > 0.6 from a second after stopping to the end, and leaving afterwards
    is no avoidance."""
    run = runs["weak_stop"]
    stop_scores = run.scores_of(0, 5.0, 15.0)
    assert len(stop_scores) == 101 and all(0.35 <= s < 0.5 for s in stop_scores), sorted(set(stop_scores))
    tid = _track_at(run, 0, 3.0)  # while walking in
    assert all(_track_at(run, 0, t) == tid for t in (5.0, 8.0, 12.0, 15.0, 17.0))
    assert len(run.tokens[tid]) == 1
    vs = run.vectors_of(tid)
    stop = _during(run, vs, 6, 15)
    assert len(stop) >= 3 and all(v.engagement is not None and v.engagement > 0.6 for v in stop), [v.engagement for v in stop]
    leaving = [v.approach for v in _during(run, vs, 14, 22) if v.approach is not None]
    assert leaving and min(leaving) >= -0.2, leaving
    assert run.exits(tid)[:1] == ["calm"]


def test_patchy_veer_still_turns_negative(scenes, phase):
    """approach_veer with 20-40 % of the real detector's boxes missed (plus its bursts, jitter and
    false positives): the approach and the veer are still read, with one track."""
    run = scenes("approach_veer", phase, {"seed": round(phase * 100), "miss": PATCHY_MISS[phase]})
    tids = run.track_of(0)
    tid = tids[0]
    vs = run.vectors_of(tid)
    assert len(run.tokens[tid]) == 1
    assert max(v.approach for v in _during(run, vs, 0, 4.1) if v.approach is not None) > 0.3
    after = [v.approach for v in _during(run, vs, 4.2, 9) if v.approach is not None]
    assert after and max(after) < -0.3
    assert len(tids) == 1  # (MOTA and IDF1 count every missed frame as a miss: not what is asked here)
    assert mot_summary(run)["num_switches"] == 0


def test_occluded_walker_keeps_their_track_and_stops_engaged(runs):
    """Hidden for 0.8 s behind a nearer person who overtakes them, the shopper comes back as the
    same track and token, then stands engaged at the sign; the other person is another track."""
    run = runs["occluded_stop"]
    assert all(s == 0.0 for s in run.scores_of(0, 1.7, 2.4)), "the scene's premise: the detector loses them"
    tid = _track_at(run, 0, 1.2)
    assert all(_track_at(run, 0, t) == tid for t in (3.5, 6.0, 9.0, 12.0))
    assert len(run.tokens[tid]) == 1
    assert _track_at(run, 1, 2.0) != tid and _track_at(run, 1, 4.0) != tid
    stop = _during(run, run.vectors_of(tid), 6, 13)
    assert len(stop) >= 2 and all(v.engagement is not None and v.engagement > 0.6 for v in stop), [v.engagement for v in stop]


def test_side_by_side_keep_their_own_tracks_while_someone_passes_in_front(runs):
    run = runs["side_by_side"]
    left, right = _track_at(run, 0, 5.0), _track_at(run, 1, 5.0)
    assert left != right
    for t in (8.0, 10.0, 13.0):
        assert (_track_at(run, 0, t), _track_at(run, 1, t)) == (left, right)
    assert _track_at(run, 2, 9.0) not in (left, right)
    for tid in (left, right):
        assert len(run.tokens[tid]) == 1
        stop = _during(run, run.vectors_of(tid), 5, 14)
        assert len(stop) >= 3 and all(v.engagement is not None and v.engagement > 0.2 for v in stop)
    passer = [v.engagement for v in run.vectors_of(_track_at(run, 2, 9.0)) if v.engagement is not None]
    assert passer and max(passer) < 0.2


# Measured limit, kept as a strict xfail so that a fix shows: with 12 % misses, bursts and 4 %
# jitter on the real detector's output, the two walkers of `crossing` swap twice where they
# overlap (IDF1 0.44). Geometry alone cannot tell two people apart when the boxes around a
# crossing are missing or off.
NOISY_LIMITS = {"crossing": "two crossing walkers swap under noise"}


@pytest.mark.scene_phases
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=NOISY_LIMITS[n]))
                                  if n in NOISY_LIMITS else n for n in SCENES])
def test_scenes_hold_under_detector_noise(scenes, name):
    """Every scene with the real detector's output made worse (seeded: 12 % misses plus bursts,
    4 % jitter, 12 % weak scores, 0.3 false positives a frame): at most one identity switch more
    than without noise (a track that drifts onto a stray box as its person leaves the frame, and
    a fragment after it), and IDF1 (which also counts every missed frame) at 0.7 or more."""
    m = mot_summary(scenes(name, 0.0, {"seed": 7}))
    print(f"\n{name} with noise: MOTA {m['mota']:.3f} IDF1 {m['idf1']:.3f} switches {m['num_switches']:.0f}")
    assert m["num_switches"] <= SWITCHES_ALLOWED.get(name, 0) + 1 and m["idf1"] >= 0.7
