"""Counting lines, occupancy and queues: the real tracker on scripted box streams (noisy boxes,
missed detections), swept over frame rates, walking speeds and start phases. Every count exact."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from firmware.config import ZoneConfig
from firmware.tracking.counting import Counter, segments_intersect
from firmware.tracking.tracker import KalmanBox, Track, Tracker, TrackerConfig
from firmware.tracking.zones import ZoneMap

W, H = 640, 480
BH = 150.0  # box height, pixels: one person height
DOOR = [[100 / W, 300 / H], [540 / W, 300 / H]]  # a horizontal line; "in" is down (towards the camera)


def zone_map(*extra: dict) -> ZoneMap:
    zones = [ZoneConfig(name="door", kind="line", line=DOOR, in_side="right"), *(ZoneConfig(**z) for z in extra)]
    return ZoneMap(zones, None, W, H)


def box(x: float, y: float) -> np.ndarray:
    return np.array([x - 0.2 * BH, y - BH, x + 0.2 * BH, y])


def path(waypoints: list[tuple[float, float, float]]):
    """Feet position at time t from [(t, x, y), ...] (linear), None outside the span."""
    ts = [w[0] for w in waypoints]

    def at(t: float) -> tuple[float, float] | None:
        if t < ts[0] or t > ts[-1]:
            return None
        return (float(np.interp(t, ts, [w[1] for w in waypoints])), float(np.interp(t, ts, [w[2] for w in waypoints])))
    return at


def run(people, duration: float, *, fps: float = 10.0, phase: float = 0.0, seed: int = 0, miss: float = 0.1,
        jitter: float = 0.02, zones: ZoneMap | None = None, on_frame=None):
    """Feed the tracker noisy boxes of ``people`` (feet paths) and the counter its tracks."""
    rng = np.random.default_rng(seed)
    zmap = zones or zone_map()
    tracker, counter = Tracker(TrackerConfig()), Counter(zmap)
    crossings, waits = [], []
    for k in itertools.count():
        t = phase + k / fps
        if t > duration:
            break
        boxes = []
        for at in people:
            p = at(t)
            if p is None or rng.random() < miss:
                continue
            boxes.append(box(*p) + rng.normal(0.0, jitter * BH, 4))
        b = np.array(boxes).reshape(-1, 4)
        tracks = tracker.update(b, np.full(len(b), 0.8), t, (W, H))
        cf = counter.step(t, tracks, tracker.ended, tracker.tracks)
        crossings += cf.crossings
        waits += cf.waits
        if on_frame is not None:
            on_frame(t, cf)
    return crossings, waits


def tally(crossings) -> dict[str, int]:
    return {"in": sum(c.direction == "in" for c in crossings), "out": sum(c.direction == "out" for c in crossings)}


SWEEP = [(fps, speed, phase) for fps in (5.0, 10.0, 15.0) for speed in (0.4, 0.8, 1.6) for phase in (0.0, 0.037, 0.071)]


def walk(x: float, y0: float, y1: float, start: float, speed: float) -> list[tuple[float, float, float]]:
    """Walk straight from (x, y0) to (x, y1) at ``speed`` person heights per second."""
    return [(start, x, y0), (start + abs(y1 - y0) / (speed * BH), x, y1)]


@pytest.mark.parametrize(("fps", "speed", "phase"), SWEEP)
def test_five_in_two_out(fps, speed, phase):
    people = []
    gap = 2.5 / speed  # one after another, along the door
    for i in range(5):  # in: from above the line (far side) down past it
        people.append(path(walk(150 + 90 * i, 120, 470, 0.2 + gap * i, speed)))
    for i in range(2):  # out: from near the camera up over the line
        people.append(path(walk(200 + 200 * i, 470, 120, 0.2 + gap * (i + 0.5), speed)))
    end = 0.2 + gap * 5 + 350 / (speed * BH) + 1.0
    for seed in range(3):
        crossings, _ = run(people, end, fps=fps, phase=phase, seed=seed)
        assert tally(crossings) == {"in": 5, "out": 2}, (seed, crossings)


@pytest.mark.parametrize(("fps", "speed", "phase"), SWEEP)
def test_step_over_and_back_is_net_zero(fps, speed, phase):
    over = 0.6  # person heights past the line: more than the hysteresis, so it counts in and out
    for seed in range(3):
        person = path([(0.0, 320, 150), (0.1 + (150 + over * BH) / (speed * BH), 320, 300 + over * BH),
                       (1.0 + 2 * (150 + over * BH) / (speed * BH), 320, 150)])
        crossings, _ = run([person], 2.0 + 2 * (150 + over * BH) / (speed * BH), fps=fps, phase=phase, seed=seed)
        t = tally(crossings)
        assert t["in"] - t["out"] == 0 and t["in"] <= 1, (seed, crossings)
        assert [c.direction for c in crossings] in ([], ["in", "out"])


@pytest.mark.parametrize(("fps", "phase"), [(5.0, 0.0), (10.0, 0.05), (15.0, 0.02)])
def test_dithering_on_the_line_counts_once(fps, phase):
    # steps onto the line, sways across it (0.15 person heights either side) for 8 s, walks in
    sway = [(1.5 + 0.4 * i, 320, 300 + (0.15 if i % 2 else -0.15) * BH) for i in range(20)]
    for seed in range(5):
        person = path([(0.0, 320, 150), *sway, (11.0, 320, 470)])
        crossings, _ = run([person], 12.0, fps=fps, phase=phase, seed=seed, jitter=0.03)
        assert [c.direction for c in crossings] == ["in"], (seed, crossings)
        # swaying and walking back out: nothing at all
        person = path([(0.0, 320, 150), *sway, (11.0, 320, 150)])
        crossings, _ = run([person], 12.0, fps=fps, phase=phase, seed=seed, jitter=0.03)
        assert crossings == [], (seed, crossings)


@pytest.mark.parametrize("speed", [0.4, 0.8, 1.6])
def test_a_track_that_starts_past_the_line_is_no_crossing(speed):
    # someone appears from behind a shelf already inside, and someone stands up from a bench outside
    inside = path(walk(300, 360, 470, 0.0, speed))
    outside = path(walk(450, 230, 100, 0.0, speed))
    for seed in range(5):
        crossings, _ = run([inside, outside], 2.0 + 130 / (speed * BH), seed=seed)
        assert crossings == []


def test_walking_round_the_end_of_the_line_is_no_crossing():
    # from above the line to below it, past its right end (x = 540)
    person = path([(0.0, 500, 120), (2.0, 600, 300), (4.0, 500, 470)])
    for seed in range(5):
        crossings, _ = run([person], 5.0, seed=seed)
        assert crossings == []


def _track(tid: str, first: np.ndarray, t0: float) -> Track:
    return Track(tid, KalmanBox(first), t0, t0, 0.8, confirmed=True, det_box=first.copy(), det_index=0,
                 first_box=first.copy())


def test_a_fragment_starting_on_the_line_takes_over_the_track_that_ended_there():
    zmap = zone_map()
    counter = Counter(zmap)
    a = _track("a", box(320, 120), 0.0)
    counter.step(0.0, [a], [], [a])
    for i, y in enumerate((200, 260, 290)):  # walks down to just above the line, then is lost
        a.det_box, a.last_seen = box(320, y), 0.1 * (i + 1)
        counter.step(a.last_seen, [a], [], [a])
    assert counter.step(1.0, [], [a], []).crossings == ()
    b = _track("b", box(325, 312), 1.2)  # seen again just past the line: unknown side on its own
    cf = [counter.step(1.2, [b], [], [b])]
    for i, y in enumerate((360, 420)):
        b.det_box, b.last_seen = box(325, y), 1.3 + 0.1 * i
        cf.append(counter.step(b.last_seen, [b], [], [b]))
    assert [c.direction for f in cf for c in f.crossings] == ["in"]

    # someone else appearing past the line meanwhile, along the door, takes over nothing
    counter = Counter(zmap)
    a = _track("a", box(320, 120), 0.0)
    counter.step(0.0, [a], [], [a])
    a.det_box, a.last_seen = box(320, 295), 0.5
    counter.step(0.5, [a], [], [a])
    counter.step(1.0, [], [a], [])
    c = _track("c", box(520, 400), 1.1)
    out = [counter.step(1.1, [c], [], [c])]
    c.det_box, c.last_seen = box(520, 460), 1.3
    out.append(counter.step(1.3, [c], [], [c]))
    assert all(f.crossings == () for f in out)


def test_segment_intersection():
    a, b = np.array([0.0, 0.0]), np.array([10.0, 0.0])
    assert segments_intersect(np.array([5.0, -1.0]), np.array([5.0, 1.0]), a, b)
    assert not segments_intersect(np.array([11.0, -1.0]), np.array([11.0, 1.0]), a, b)
    assert not segments_intersect(np.array([5.0, -1.0]), np.array([5.0, -0.5]), a, b)
    # touching the line and going back: two crossings or none, never one
    p0, on, p2 = np.array([5.0, -1.0]), np.array([5.0, 0.0]), np.array([6.0, -1.0])
    assert segments_intersect(p0, on, a, b) == segments_intersect(on, p2, a, b)
    # through a polyline's bend: one segment of the two
    c = np.array([20.0, 10.0])
    hits = [segments_intersect(np.array([10.0, -5.0]), np.array([10.0, 5.0]), *s) for s in ((a, b), (b, c))]
    assert sum(hits) == 1


QUEUE = {"name": "till", "kind": "queue", "polygon": [[0.05, 0.55], [0.45, 0.55], [0.45, 0.95], [0.05, 0.95]]}


@pytest.mark.parametrize(("fps", "phase"), [(5.0, 0.0), (10.0, 0.043), (15.0, 0.01)])
def test_a_queue_forms_and_drains(fps, phase):
    # three people join a till queue 4 s apart and stand; each is served in turn, 6 s apart, and
    # walks off; someone walks straight through the queue area on the way (not queueing)
    spots = [(100, 440), (150, 400), (200, 360)]
    join = [2.0, 6.0, 10.0]
    leave = [16.0, 22.0, 28.0]
    people = [path([(join[i] - 2.0, 600, 250), (join[i], *spots[i]), (leave[i], *spots[i]), (leave[i] + 1.5, 600, 470)])
              for i in range(3)]
    people.append(path([(12.0, 20, 420), (13.2, 340, 420), (14.0, 620, 420)]))  # a passer-by
    zmap = ZoneMap([ZoneConfig(**QUEUE)], None, W, H)
    for seed in range(3):
        frames: list[tuple[float, int, int, int]] = []  # t, queue length, people in the queue zone, in view
        _, waits = run(people, 32.0, fps=fps, phase=phase, seed=seed, zones=zmap,
                       on_frame=lambda t, cf, out=frames: out.append((t, cf.queues[0], cf.occupancy[0], cf.people)))
        expected = [leave[i] - join[i] for i in range(3)]
        got = sorted(w.wait_s for w in waits)
        assert len(got) == 3, (seed, waits)
        for g, e in zip(got, sorted(expected), strict=True):
            assert abs(g - e) <= 1.5, (seed, got, expected)

        def at(t0: float, col: int, rows=frames) -> int:
            return next(r[col] for r in rows if r[0] >= t0)
        # the length, away from the moments people join and leave (2 s to count as queueing)
        times = (1.0, 5.0, 9.0, 14.0, 19.0, 25.0, 31.0)
        assert [at(t, 1) for t in times] == [0, 1, 2, 3, 2, 1, 0], seed
        assert max(r[1] for r in frames) == 3  # the passer-by never queued
        assert [at(t, 2) for t in times] == [0, 1, 2, 3, 2, 1, 0], seed  # occupancy of the zone
        assert [at(t, 3) for t in (3.0, 7.0, 11.0, 19.0, 25.0, 31.0)] == [1, 2, 3, 2, 1, 0], seed  # people in view


@pytest.mark.parametrize(("zone", "message"), [
    ({"kind": "line", "line": DOOR}, "in_side"),
    ({"kind": "line", "in_side": "left"}, "needs `line`"),
    ({"kind": "line", "line": [[0.5, 0.5], [0.502, 0.5]], "in_side": "left"}, r"almost\) a point"),
    ({"kind": "line", "line": DOOR, "in_side": "left", "polygon": QUEUE["polygon"]}, "polyline"),
    ({"kind": "queue", "polygon": QUEUE["polygon"], "in_side": "left"}, "only line zones"),
    ({"kind": "aisle", "polygon": QUEUE["polygon"], "min_wait_s": 3}, "only queue zones"),
    ({"kind": "queue"}, "needs a polygon"),
    ({"kind": "line", "line": DOOR, "in_side": "up"}, "in_side"),
])
def test_line_and_queue_zones_are_checked(zone, message):
    with pytest.raises(ValueError, match=message):
        ZoneConfig(name="z", **zone)


def test_a_line_in_a_board_config_validates_with_its_line(tmp_path):
    from firmware.config import load_config
    from firmware.errors import ConfigError
    from tests.conftest import SIM_CONFIG

    text = SIM_CONFIG.read_text().replace("zones:\n", "zones:\n  - {name: door, kind: line, line: [[0.1, 0.6], [0.9, 0.6]]}\n", 1)
    bad = tmp_path / "board.yaml"
    bad.write_text(text.replace("source: ../media", f"source: {SIM_CONFIG.parent}/../media"))
    with pytest.raises(ConfigError, match=r"board.yaml:\d+: .*in_side"):
        load_config(bad)
    bad.write_text(bad.read_text().replace("[[0.1, 0.6], [0.9, 0.6]]}", "[[0.1, 0.6], [0.9, 0.6]], in_side: right}"))
    assert next(z.kind for z in load_config(bad).config.zones) == "line"
