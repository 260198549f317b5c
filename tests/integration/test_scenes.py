"""Scripted scenes with known answers (firmware/camera/scenes/*.yaml): real person cut-outs on
scripted paths over the plaza, through the whole service (real SSD and MoveNet, tracker,
signals) with the sim board's zones. The tracker is scored with motmetrics against the scene's
ground truth; the signals must come out in the scripted order."""

from __future__ import annotations

import pytest

from firmware.signals.engine import Vector
from tests.scenes import SceneRun, mot_summary, run_scene

SCENES = ("stop_and_face", "walk_past", "approach_veer", "linger_pace", "crossing")


@pytest.fixture(scope="module")
def runs(models_dir, shared_media) -> dict[str, SceneRun]:
    return {name: run_scene(name) for name in SCENES}


def _main_track(run: SceneRun, actor: int) -> tuple[str, list[Vector]]:
    tids = run.track_of(actor)
    assert tids, f"{run.name}: actor {run.actor_names[actor]} was never tracked"
    return tids[0], run.vectors_of(tids[0])


def _during(run: SceneRun, vs: list[Vector], t0: float, t1: float) -> list[Vector]:
    """Vectors whose window lies inside [t0, t1] seconds of scene time."""
    return [v for v in vs if t0 <= v.t_start - run.t0 and v.t_end - run.t0 <= t1]


@pytest.mark.parametrize("name", SCENES)
def test_tracker_keeps_identities(runs, name):
    m = mot_summary(runs[name])
    print(f"\n{name}: MOTA {m['mota']:.3f} IDF1 {m['idf1']:.3f} switches {m['num_switches']:.0f} "
          f"FP {m['num_false_positives']:.0f} misses {m['num_misses']:.0f} of {m['num_objects']:.0f}")
    assert m["idf1"] >= 0.9
    assert m["num_switches"] == 0
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
    run = run_scene("stop_and_face", {"signals": {"pose": "off"}})
    _, vs = _main_track(run, 0)
    stop = _during(run, vs, 6, 13)
    with_pose = _during(runs["stop_and_face"], _main_track(runs["stop_and_face"], 0)[1], 6, 13)
    assert stop and all(v.engagement is not None and 0.2 < v.engagement < 0.8 for v in stop)
    assert max(v.engagement_conf for v in stop) < min(v.engagement_conf for v in with_pose)
    assert max(v.approach for v in _during(run, vs, 0, 5) if v.approach is not None) > 0.3  # motion still works
