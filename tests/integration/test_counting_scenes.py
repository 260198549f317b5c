"""Counting lines and queues on scripted scenes with known answers: real person cut-outs walking
over the plaza, through the whole service (real SSD detector, tracker, counter), swept over
walking speeds and the scene's phase against the frame clock. Counts must be exact; queue
lengths and waits within a second or two (people take a moment to be seen as queueing)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from firmware.camera.scene import SCENES_DIR
from tests.scenes import SceneRun, run_scene

MEDIA = (SCENES_DIR / "../../../media").resolve()
DOOR = {"name": "door", "kind": "line", "line": [[0.05, 0.62], [0.95, 0.62]], "in_side": "right"}  # in: towards the camera
QUEUE = {"name": "till", "kind": "queue", "polygon": [[0.02, 0.60], [0.52, 0.60], [0.52, 0.99], [0.02, 0.99]]}
COUPLE = str(MEDIA / "test_couple.jpg")


def scene(tmp: Path, name: str, duration: float, actors: list[tuple[int, list[list[float]]]]) -> Path:
    """A scene file over the plaza; ``actors``: (sprite, waypoints [t, x, y]), people alternating."""
    spec = {"background": f"median:{MEDIA / 'vtest.avi'}", "size": [768, 576], "fps": 10, "duration": duration,
            "actors": [{"name": f"p{i}", "sprite": {"image": COUPLE, "person": sprite},
                        "height": {"at_top": 90, "at_bottom": 240}, "waypoints": wps}
                       for i, (sprite, wps) in enumerate(actors)]}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def counted(run: SceneRun) -> dict[str, int]:
    out = {"in": 0, "out": 0}
    for cf in run.counts:
        for c in cf.crossings:
            out[c.direction] += 1
    return out


def board(zones: list[dict]) -> dict:
    return {"zones": zones, "signals": {"pose": "off"}}


SPEEDS = [pytest.param(1.0, 0.0, id="walk"),  # each run is a few seconds of the real detector
          pytest.param(0.6, 0.05, id="stroll-late"),
          pytest.param(1.6, 0.03, id="hurry-late")]


def door_scene(tmp: Path, speed: float, phase: float) -> Path:
    walk = 3.5 / speed  # seconds from the far side (y 0.35) to the near one (y 0.95)
    gap = 1.6 / speed
    actors = []
    for i, x in enumerate((0.15, 0.33, 0.5, 0.67, 0.85)):  # five walk in, one after another
        t = phase + 0.5 + gap * i
        actors.append((i % 2, [[t, x, 0.35], [t + walk, x + 0.03, 0.95]]))
    for i, x in enumerate((0.25, 0.75)):  # two walk out between them
        t = phase + 0.5 + gap * (2 * i + 1.5)
        actors.append(((i + 1) % 2, [[t, x, 0.95], [t + walk, x - 0.03, 0.35]]))
    return scene(tmp, "door", phase + 0.5 + gap * 5 + walk + 2.0, actors)


@pytest.mark.parametrize(("speed", "phase"), SPEEDS)
def test_five_walk_in_and_two_walk_out(tmp_path, models_dir, shared_media, speed, phase):
    run = run_scene(door_scene(tmp_path, speed, phase), board([DOOR]))
    assert counted(run) == {"in": 5, "out": 2}


@pytest.mark.parametrize(("speed", "phase"), SPEEDS)
def test_stepping_over_the_line_and_back_is_net_zero(tmp_path, models_dir, shared_media, speed, phase):
    go = 2.0 / speed
    actors = [(0, [[phase + 0.5, 0.3, 0.38], [phase + 0.5 + go, 0.3, 0.78], [phase + 1.5 + go, 0.3, 0.78],
                   [phase + 1.5 + 2 * go, 0.3, 0.38]]),  # well over it (0.5 person heights) and back
              (1, [[phase + 0.5, 0.7, 0.40], [phase + 0.5 + go, 0.7, 0.64], [phase + 2.5 + go, 0.7, 0.64],
                   [phase + 2.5 + 2 * go, 0.7, 0.40]])]  # onto it (within the hysteresis), stands, goes back
    run = run_scene(scene(tmp_path, "step", phase + 4.0 + 2 * go, actors), board([DOOR]))
    c = counted(run)
    assert c["in"] - c["out"] == 0 and c["in"] <= 1, c
    assert len(run.track_of(1)) >= 1  # the one on the line was tracked, and counted nothing


@pytest.mark.parametrize("shift", [0.0, 0.05], ids=["on-frame", "between-frames"])
def test_a_queue_of_three_forms_and_drains(tmp_path, models_dir, shared_media, shift):
    # three people join a till queue 4 s apart, stand, are served 6 s apart and walk off to the left
    spots = [(0.12, 0.92), (0.26, 0.84), (0.40, 0.76)]
    join, leave = [3.0 + shift, 7.0 + shift, 11.0 + shift], [17.0 + shift, 23.0 + shift, 29.0 + shift]
    actors = [(i % 2, [[join[i] - 2.5, 0.85, 0.70], [join[i], *spots[i]], [leave[i], *spots[i]],
                       [leave[i] + 2.5, -0.08, spots[i][1] + 0.04]]) for i in range(3)]
    run = run_scene(scene(tmp_path, "queue", 34.0, actors), board([QUEUE]))
    # the truth: when each person's feet are inside the queue zone, from the scene's own boxes
    poly = np.array(QUEUE["polygon"], dtype=np.float32)
    inside = np.zeros((len(run.truth), 3), dtype=bool)
    for f, truth in enumerate(run.truth):
        for a, x0, _, x1, y1 in truth:
            inside[f, int(a)] = cv2.pointPolygonTest(poly, ((x0 + x1) / 2, y1), False) >= 0
    t = np.arange(len(run.truth)) / run.fps
    truth_waits = sorted(float(t[inside[:, a]][-1] - t[inside[:, a]][0]) for a in range(3))
    waits = sorted(w.wait_s for cf in run.counts for w in cf.waits)
    print(f"\nqueue waits {[round(w, 1) for w in waits]} (truth {[round(w, 1) for w in truth_waits]})")
    assert len(waits) == 3
    assert all(abs(w - e) <= 1.5 for w, e in zip(waits, truth_waits, strict=True)), (waits, truth_waits)
    # the length: people inside for 2 s (min_wait_s) or more, frame by frame
    since = np.zeros(3)
    truth_len = []
    for f in range(len(run.truth)):
        since = np.where(inside[f], np.where(since > 0, since, t[f] + 1e-9), 0.0)
        truth_len.append(int(((since > 0) & (t[f] - since >= 2.0)).sum()))
    lengths = [cf.queues[0] for cf in run.counts]
    agree = np.mean(np.array(lengths) == np.array(truth_len))
    print(f"queue length agrees with the truth on {agree:.1%} of frames, max {max(lengths)}")
    assert max(lengths) == 3 and agree >= 0.9
    assert all(abs(a - b) <= 1 for a, b in zip(lengths, truth_len, strict=True))
