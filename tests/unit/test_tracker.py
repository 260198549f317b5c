"""The tracker on scripted detections: the failures it exists to avoid, swept over frame rates,
speeds, gaps and seeds (every case must hold, not one lucky one).

People are boxes 0.4 box heights wide whose feet follow straight segments (pixels, a 768x576
frame); a detector's behaviour is scripted per frame: misses, weak scores, jitter."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from firmware.inference.noise import DetectionNoise, NoiseSpec
from firmware.tracking.tracker import Tracker, TrackerConfig

W, H = 768, 576
FRAME = (W, H)
FPS = (8.0, 10.0, 12.0)


def box(x: float, y: float, h: float = 160.0) -> np.ndarray:
    """A person whose feet are at (x, y) pixels, h pixels tall."""
    return np.array([x - 0.2 * h, y - h, x + 0.2 * h, y])


def walk(points: list[tuple[float, float, float]], t: float) -> tuple[float, float] | None:
    """Feet at time t along timed waypoints (t, x, y); None outside them."""
    p = np.array(points)
    if t < p[0, 0] or t > p[-1, 0]:
        return None
    return float(np.interp(t, p[:, 0], p[:, 1])), float(np.interp(t, p[:, 0], p[:, 2]))


Script = Callable[[float, int], list[tuple[int, np.ndarray, float]]]  # (t, frame) -> [(person, box, score)]


def run(script: Script, duration: float, fps: float, cfg: TrackerConfig | None = None,
        jitter: float = 0.0, seed: int = 0) -> list[dict[int, str]]:
    """Per frame: person -> the tid reported on their box (confirmed tracks matched this frame)."""
    rng = np.random.default_rng(seed)
    tracker = Tracker(cfg)
    out = []
    for k in range(int(duration * fps)):
        t = k / fps
        dets = script(t, k)
        boxes = np.array([b + rng.normal(0, jitter, 4) * (b[3] - b[1]) for _, b, _ in dets]).reshape(-1, 4)
        scores = np.array([s for _, _, s in dets])
        tracks = tracker.update(boxes, scores, t, FRAME)
        out.append({dets[tr.det_index][0]: tr.tid for tr in tracks})
    return out


def tids(frames: list[dict[int, str]], person: int, start: int = 0, stop: int | None = None) -> list[str]:
    return [f[person] for f in frames[start:stop] if person in f]


@pytest.mark.parametrize("fps", FPS)
@pytest.mark.parametrize("seed", range(4))
def test_a_shopper_standing_at_a_weak_score_keeps_one_track(fps, seed):
    """Walks in at 0.6-0.9, stands 10 s scoring 0.35-0.5 (as SSD scores someone facing a shelf),
    with 12 % of frames missed and bursts of up to 4 misses, then walks off: one track all along,
    reported in most frames of the stop."""
    rng = np.random.default_rng(100 + seed)
    path = [(0.0, -40.0, 420.0), (3.0, 380.0, 420.0), (13.0, 380.0, 420.0), (16.0, 800.0, 400.0)]
    miss = rng.random(int(16 * fps) + 1) < 0.12
    for start in rng.integers(0, len(miss) - 5, size=3):
        miss[start : start + int(rng.integers(2, 5))] = True
    scores = rng.uniform(0.6, 0.9, size=len(miss))

    def script(t: float, k: int) -> list[tuple[int, np.ndarray, float]]:
        feet = walk(path, t)
        if feet is None or miss[k] or not -20 < feet[0] < W + 20:
            return []
        return [(0, box(*feet), float(rng.uniform(0.35, 0.5)) if 3.0 <= t < 13.0 else float(scores[k]))]

    frames = run(script, 16.0, fps, jitter=0.02, seed=seed)
    assert len(set(tids(frames, 0))) == 1
    stand = range(int(3.5 * fps), int(13 * fps))
    reported = sum(0 in frames[k] for k in stand)
    detected = sum(not miss[k] for k in stand)
    assert reported >= 0.95 * detected


@pytest.mark.parametrize("fps", FPS)
@pytest.mark.parametrize("missed", [(1,), (2,), (1, 3), (2, 3), (1, 2)])
def test_a_young_track_survives_misses(fps, missed):
    """A new person missed in some of their first frames is confirmed all the same (hits within a
    time span, not consecutive frames), in time to see them veer away."""
    path = [(0.0, 100.0, 500.0), (2.0, 330.0, 430.0), (4.0, 160.0, 250.0)]

    def script(t: float, k: int) -> list[tuple[int, np.ndarray, float]]:
        feet = walk(path, t)
        return [] if feet is None or k in missed else [(0, box(*feet), 0.8)]

    frames = run(script, 4.0, fps)
    first = next(k for k, f in enumerate(frames) if 0 in f)
    assert first <= 3 + len(missed)  # reported by its fourth detection at the latest
    assert len(set(tids(frames, 0))) == 1


@pytest.mark.parametrize("fps", FPS)
@pytest.mark.parametrize("seed", range(5))
def test_a_veer_with_patchy_detections_is_one_track(fps, seed):
    """Misses of 20-40 % of the frames, scores 0.5-0.9: the track holds from the approach to the
    veer away."""
    rng = np.random.default_rng(seed)
    rate = 0.2 + 0.05 * seed
    path = [(0.0, 740.0, 500.0), (3.0, 520.0, 420.0), (3.8, 500.0, 390.0), (8.0, 650.0, 220.0)]
    miss = rng.random(int(8 * fps) + 1) < rate
    miss[:2] = False  # seen as they enter

    def script(t: float, k: int) -> list[tuple[int, np.ndarray, float]]:
        feet = walk(path, t)
        return [] if feet is None or miss[k] else [(0, box(*feet, 150.0), float(rng.uniform(0.5, 0.9)))]

    frames = run(script, 8.0, fps, jitter=0.02, seed=seed)
    got = tids(frames, 0)
    assert len(set(got)) == 1
    assert 0 in frames[int(3.0 * fps)] or 0 in frames[int(3.0 * fps) + 1] or miss[int(3.0 * fps)]


# (speed in box heights per second, gap in seconds): they walk on for half the gap, then stop
HIDDEN = [(0.5, 0.5), (0.5, 1.0), (0.8, 0.8), (1.0, 0.5), (1.0, 1.0), (0.8, 1.2), (1.2, 0.8)]
APART = {(1.0, 1.0), (0.8, 1.2), (1.2, 0.8)}  # where they reappear overlaps neither prediction nor last box


@pytest.mark.parametrize("fps", FPS)
@pytest.mark.parametrize(("speed_bh_s", "gap_s"), HIDDEN)
def test_a_walker_hidden_then_stopping_keeps_their_track(fps, speed_bh_s, gap_s):
    """Walks at `speed`, is hidden for `gap` seconds (behind another shopper), during which they
    walk on for half the gap and stop: they reappear standing, off the prediction (it went on)
    and off the last box (they moved). For the APART cases the box they reappear in overlaps
    neither: a non-overlapping re-link. Every case: the same track (and so the same token)."""
    h = 160.0
    v = speed_bh_s * h
    hide = 2.0
    x_stop = 450.0
    x_hide = x_stop - v * gap_s / 2
    path = [(0.0, x_hide - v * hide, 450.0), (hide, x_hide, 450.0), (hide + gap_s / 2, x_stop, 450.0), (10.0, x_stop, 450.0)]
    after = box(x_stop, 450.0, h)
    overlaps = [min(after[2], b[2]) > max(after[0], b[0]) for b in (box(x_hide, 450.0, h), box(x_hide + v * gap_s, 450.0, h))]
    assert not any(overlaps) if (speed_bh_s, gap_s) in APART else any(overlaps)

    def script(t: float, k: int) -> list[tuple[int, np.ndarray, float]]:
        feet = walk(path, t)
        if feet is None or hide < t < hide + gap_s:
            return []
        return [(0, box(*feet, h), 0.8)]

    frames = run(script, 10.0, fps)
    old = tids(frames, 0, 0, int(hide * fps))
    new = tids(frames, 0, int((hide + gap_s) * fps) + 1)
    assert len(set(old)) == 1 and new
    assert set(new) == set(old)


@pytest.mark.parametrize("case", ["elsewhere", "other_way", "other_size", "same_time"])
def test_what_does_not_agree_is_not_relinked(case):
    """A new person is not given a lost person's track when position, heading or size disagree,
    or when both were seen at once. (Someone appearing right on a lost track's prediction is
    linked at once, whatever they do next: from one box nobody can tell; these cases differ from
    the first box on, or from the heading of the first few.)"""
    h = 160.0
    first = [(0.0, 100.0, 450.0), (3.0, 340.0, 450.0)]
    second = {
        "elsewhere": [(3.6, 700.0, 300.0), (8.0, 700.0, 300.0)],  # 2.5 box heights away
        "other_way": [(3.6, 460.0, 450.0), (8.0, 20.0, 450.0)],  # near where they would be, walking back
        "other_size": [(3.6, 370.0, 450.0), (8.0, 500.0, 450.0)],  # twice as tall
        "same_time": [(2.0, 420.0, 450.0), (8.0, 600.0, 450.0)],  # in view while the first still was
    }[case]

    def script(t: float, k: int) -> list[tuple[int, np.ndarray, float]]:
        out = []
        if (f := walk(first, t)) is not None:
            out.append((0, box(*f, h), 0.8))
        if (f := walk(second, t)) is not None:
            out.append((1, box(*f, h * (2.0 if case == "other_size" else 1.0)), 0.8))
        return out

    frames = run(script, 8.0, 10.0)
    assert tids(frames, 1) and not set(tids(frames, 1)) & set(tids(frames, 0))


@pytest.mark.parametrize("fps", FPS)
@pytest.mark.parametrize("speed", [80.0, 150.0])
def test_crossing_people_keep_their_tracks(fps, speed):
    """Two people cross; the nearer one hides the farther (no box for it while it is more than
    half covered). Each keeps their own track."""
    near = [(0.0, 100.0, 520.0), (8.0, 100.0 + 8 * speed, 520.0)]
    far = [(0.0, 700.0, 470.0), (8.0, 700.0 - 8 * speed, 470.0)]

    def script(t: float, k: int) -> list[tuple[int, np.ndarray, float]]:
        a, b = walk(near, t), walk(far, t)
        out = []
        ba = box(*a, 180.0) if a is not None else None
        bb = box(*b, 160.0) if b is not None else None
        if ba is not None and -20 < a[0] < W + 20:
            out.append((0, ba, 0.8))
        if bb is not None and -20 < b[0] < W + 20:
            covered = 0.0 if ba is None else max(0.0, min(ba[2], bb[2]) - max(ba[0], bb[0])) / (bb[2] - bb[0])
            if covered < 0.5:
                out.append((1, bb, 0.7))
        return out

    frames = run(script, 8.0, fps, jitter=0.02)
    a, b = tids(frames, 0), tids(frames, 1)
    assert len(set(a)) == 1 and len(set(b)) == 1 and set(a) != set(b)


@pytest.mark.parametrize("fps", FPS)
def test_someone_entering_where_another_left_gets_a_new_track(fps):
    """A walks out of the frame on the right; B walks in there a second later: B is not A (a lost
    track that has left the frame ends)."""
    a = [(0.0, 400.0, 450.0), (3.0, 820.0, 450.0)]
    b = [(4.0, 820.0, 450.0), (8.0, 450.0, 450.0)]

    def script(t: float, k: int) -> list[tuple[int, np.ndarray, float]]:
        out = []
        for i, p in enumerate((a, b)):
            f = walk(p, t)
            if f is not None and f[0] < W + 20:
                bx = box(*f)
                if bx[2] - min(bx[2], W) < 0.5 * (bx[2] - bx[0]):  # at least half in view
                    out.append((i, bx, 0.8))
        return out

    frames = run(script, 8.0, fps)
    assert tids(frames, 0) and tids(frames, 1) and not set(tids(frames, 0)) & set(tids(frames, 1))


@pytest.mark.parametrize("seed", range(5))
def test_background_false_positives_do_not_become_people(seed):
    """An empty scene seen by a noisy detector (0.3 false positives a frame at 0.3-0.65, anywhere)
    plus a static background object at 0.45: nobody is reported."""
    noise = DetectionNoise(NoiseSpec(seed=seed), aspect=W / H)
    static = np.array([[0.3, 0.3, 0.35, 0.45]])
    tracker = Tracker()
    reported = 0
    for k in range(600):
        boxes, scores = noise.apply(static, np.array([0.45]))
        reported += len(tracker.update(boxes * [W, H, W, H], scores, k / 10.0, FRAME))
    assert reported == 0


def test_time_is_in_seconds():
    """The same walk at 8 and at 12 fps: confirmed after as many detections, kept through the same
    gap in seconds."""
    for fps in FPS:
        cfg = TrackerConfig(max_lost_s=1.0)
        path = [(0.0, 100.0, 450.0), (10.0, 600.0, 450.0)]

        def script(t: float, k: int, path=path) -> list[tuple[int, np.ndarray, float]]:
            f = walk(path, t)
            return [] if f is None or 4.0 < t < 4.9 else [(0, box(*f), 0.8)]

        frames = run(script, 10.0, fps, cfg)
        assert len(set(tids(frames, 0))) == 1  # a 0.9 s gap is shorter than max_lost_s = 1 s
        assert next(k for k, f in enumerate(frames) if 0 in f) == 2  # the third detection


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("fps", [10.0, 20.0])
def test_the_clock_origin_does_not_change_the_tracks(fps, seed):
    """The same noisy detections (two walkers crossing, misses in bursts) timed from clock origins
    a board may have (seconds since boot, days of uptime): the same tracks on the same boxes. Gaps
    of a whole number of frames sit exactly on the time limits, and t0 + n / fps rounds differently
    for every t0."""
    noise = DetectionNoise(NoiseSpec(seed=seed, miss=0.3, burst=0.1), aspect=W / H)
    paths = [[(0.0, 60.0, 400.0), (8.0, 700.0, 400.0)], [(0.0, 700.0, 380.0), (8.0, 60.0, 380.0)],
             [(1.0, 300.0, 500.0), (3.0, 400.0, 500.0), (8.0, 400.0, 500.0)]]
    frames = []
    for k in range(int(8.0 * fps)):
        people = [f for f in (walk(p, k / fps) for p in paths) if f is not None]
        frames.append(noise.apply(np.array([box(*f) for f in people]).reshape(-1, 4) / [W, H, W, H], np.full(len(people), 0.8)))
    seen = []
    # limits on whole frames at these rates (0.5 s = 4, 5 or 6 frames...)
    cfg = TrackerConfig(max_lost_s=0.3, confirm_within_s=0.3, relink_after_s=0.2, min_hits=3, merge_after_s=0.2)
    for t0 in (0.0, 37.3, 16000.0, 86400.0 * 9 + 0.05):
        tracker, ids, out = Tracker(cfg), {}, []
        for k, (b, s) in enumerate(frames):
            tracks = tracker.update(b * [W, H, W, H], s, t0 + k / fps, FRAME)
            out.append(sorted((ids.setdefault(tr.tid, len(ids)), tuple(np.round(tr.det_box, 3))) for tr in tracks))
        seen.append(out)
    assert all(o == seen[0] for o in seen[1:])


def test_the_results_of_a_frame_do_not_change_with_the_next_frame():
    """What a frame's observers are handed (FrameAnalyzer's ``tracked``) stays as it was in that
    frame, boxes and filtered boxes alike, while the tracker goes on (the pipeline runs the next
    frame's tracking while observers of this one may still read it)."""
    from firmware.inference import Detections
    from firmware.signals.analyzer import FrameAnalyzer
    from tests.conftest import sim_config

    analyzer = FrameAnalyzer(sim_config({}).config, None, None)
    results = []
    for k in range(12):
        b = box(100.0 + 20.0 * k, 450.0) / [W, H, W, H]
        dets = Detections(np.asarray([b], np.float32), np.array([0.9], np.float32), False, 1.0)
        res = analyzer.process(None, k / 10.0, dets, size=(W, H))
        results.append((res, [(tr.det_box.copy(), tr.box.copy(), tr.last_seen) for tr in res.tracked]))
    assert results[-1][1], "the walker is tracked"
    for res, then in results:
        for tr, (det, filt, seen) in zip(res.tracked, then, strict=True):
            assert np.array_equal(tr.det_box, det) and np.array_equal(tr.box, filt) and tr.last_seen == seen
