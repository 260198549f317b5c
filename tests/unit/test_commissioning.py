"""The commissioning view's model: the traffic map's counts, the purge, the zone editor's validation,
its rewrite of the config file (every other line kept) and its one-step undo."""

from __future__ import annotations

import random
from collections import deque

import cv2
import numpy as np
import pytest

from firmware.commissioning import LiveView, ZoneFile, ZoneProblems, replace_zones, validate_zones
from firmware.config import CommissioningConfig, ConfigError, load_config, parse_config
from firmware.inference.base import Detections
from firmware.signals.analyzer import FrameResult
from firmware.tracking.tracker import Tracker
from tests.conftest import ROOT, SIM_CONFIG

W, H = 640, 480
PRODUCTION = sorted(p for p in (ROOT / "board_configs").glob("*.yaml") if p.name != "sim.yaml")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _walk(seed: int, frames: int, people: int):
    """Boxes (pixels) of people walking straight lines at random speeds and directions, per frame."""
    rng = random.Random(seed)
    walkers = []
    for _ in range(people):
        x, y = rng.uniform(60, W - 60), rng.uniform(150, H - 20)
        vx, vy = rng.uniform(-6, 6), rng.uniform(-3, 3)
        walkers.append((x, y, vx, vy, rng.uniform(90, 140)))
    for f in range(frames):
        boxes = []
        for x, y, vx, vy, h in walkers:
            fx, fy = x + vx * f, y + vy * f
            if 30 < fx < W - 30 and h < fy < H:
                boxes.append([fx - h / 5, fy - h, fx + h / 5, fy])
        yield np.array(boxes, dtype=np.float64).reshape(-1, 4)


def _feed(view: LiveView, clock: Clock, seed: int, frames: int = 120, people: int = 3) -> dict[tuple[int, int], set[str]]:
    """Run the real tracker over a scripted walk, hand each frame to the view like the pipeline does, and
    count independently which tracks stepped into which traffic-map cell (by their filtered feet)."""
    tracker = Tracker()
    cols, rows = view.cols, view.rows
    entered: dict[tuple[int, int], set[str]] = {}
    last: dict[str, tuple[int, int]] = {}
    visits = 0
    for i, boxes in enumerate(_walk(seed, frames, people)):
        t = i / 10.0
        clock.t += 0.1
        tracks = tracker.update(boxes, np.full(len(boxes), 0.9), t, (W, H))
        dets = Detections(np.asarray(boxes / [W, H, W, H], np.float32), np.full(len(boxes), 0.9, np.float32), False, 1.0)
        view.observe(i, t, FrameResult(dets, [], len(tracks), 1.0, 1.0, 0, tuple(tracks), len(boxes), size=(W, H)))
        for tr in tracks:
            x0, _, x1, y1 = tr.box
            fx, fy = min(max((x0 + x1) / 2 / W, 0), 1), min(max(y1 / H, 0), 1)
            cell = (min(int(fx * cols), cols - 1), min(int(fy * rows), rows - 1))
            if last.get(tr.tid) != cell:
                last[tr.tid] = cell
                entered.setdefault(cell, set()).add(tr.tid)
                visits += 1
        assert len(view.people) == len(tracks)
    return {"cells": entered, "visits": visits}  # type: ignore[return-value]


@pytest.mark.parametrize("seed", range(6))
def test_the_traffic_map_counts_people_stepping_into_cells_not_frames(seed):
    clock = Clock()
    view = LiveView(CommissioningConfig(enabled=True, heatmap_grid=[32, 24]), [], clock=clock)
    got = _feed(view, clock, seed)
    heat = view.heatmap()
    cells = {(c, r): n for c, r, n in heat["cells"]}
    assert got["visits"] > 0
    # every count is a distinct track's entry into that cell (a person standing still counts once)
    assert sum(cells.values()) == got["visits"]
    assert set(cells) == set(got["cells"])
    assert heat["max"] == max(cells.values()) and heat["grid"] == [32, 24]
    for p in view.people:  # the live people: boxes normalized, a few seconds of path at most
        assert all(0.0 <= v <= 1.0 for v in p["tail"][-1]) and len(p["tail"]) <= 24
        assert p["kp"] is None  # no pose ran


@pytest.mark.parametrize(("minutes", "retention_s"), [(2, 600.0), (10, 120.0), (1, 45.0)])
def test_the_traffic_map_forgets_after_its_span_and_never_outlives_the_retention(minutes, retention_s):
    clock = Clock()
    view = LiveView(CommissioningConfig(enabled=True, heatmap_minutes=minutes), [], clock=clock, retention_s=retention_s)
    span = min(minutes * 60.0, retention_s)
    assert view.heatmap()["span_s"] == round(span)
    _feed(view, clock, 1, frames=30)
    fed_until = clock.t
    assert view.heatmap()["cells"]
    clock.t = fed_until + span / 2
    assert view.heatmap()["cells"]  # still within the span
    # no count is older than the span: once the last sighting is a span old, all are gone
    clock.t = fed_until + span + 0.01
    view.expire()
    assert view.heatmap()["cells"] == [] and view._slices == deque()


def test_an_optout_purge_forgets_people_paths_and_counts():
    clock = Clock()
    view = LiveView(CommissioningConfig(enabled=True), [], clock=clock)
    _feed(view, clock, 2)
    assert view.people and view.heatmap()["cells"]
    assert view.purge() > 0
    assert view.people == [] and view.heatmap()["cells"] == [] and view._persons == {}


def test_people_in_zones_are_counted_by_their_feet():
    sim = load_config(SIM_CONFIG).config
    clock = Clock()
    view = LiveView(CommissioningConfig(enabled=True), sim.zones, clock=clock)
    _feed(view, clock, 3, frames=60, people=4)
    assert view.people
    by_feet = [0] * len(sim.zones)
    for p in view.people:  # the feet: the last point of each path (cv2's polygon test, as the firmware's zones)
        fx, fy = p["tail"][-1][0] * W, p["tail"][-1][1] * H
        for i, z in enumerate(sim.zones):
            poly = (np.array(z.polygon, np.float32) * [W, H]).astype(np.float32)
            by_feet[i] += cv2.pointPolygonTest(poly, (fx, fy), False) >= 0
    assert view.zone_counts == by_feet


# -- the zone editor ------------------------------------------------------------------------------
def _zones(cfg):
    return [z.model_dump(exclude_none=True) for z in cfg.zones]


@pytest.mark.parametrize(("edit", "expect"), [
    (lambda zs: zs[1].update(polygon=[[0, 0], [1, 1]]), "zone 2 (walkway): polygon"),
    (lambda zs: zs[0].pop("focus"), "zone 1 (plaza-sign): an attraction zone needs a focus point"),
    (lambda zs: zs[2].update(name="walkway"), "zone names must be unique: walkway"),
    (lambda zs: zs[1].update(colour="red"), "zone 2 (walkway): colour: unknown key"),
    (lambda zs: zs[0]["polygon"].__setitem__(0, [1.5, 0.2]), "zone 1 (plaza-sign): polygon: 0"),
    (lambda zs: zs[1].update(kind="shelf"), "zone 2 (walkway): kind"),
    (lambda zs: zs[1].update(name="bad name!"), "zone 2 (bad name!): name: use letters, digits"),
])
def test_bad_zones_are_refused_with_the_zone_and_key_named(edit, expect):
    cfg = load_config(SIM_CONFIG).config
    zones = _zones(cfg)
    edit(zones)
    with pytest.raises(ZoneProblems) as e:
        validate_zones(cfg, zones)
    assert any(expect in p for p in e.value.problems), e.value.problems


def test_the_zones_block_is_rewritten_and_every_other_line_kept():
    text = SIM_CONFIG.read_text()
    cfg = parse_config(text)
    zones = validate_zones(cfg, [*_zones(cfg)[1:], {"name": "door", "kind": "entrance",
                                                     "polygon": [[0.1, 0.8], [0.3, 0.8], [0.3, 0.99], [0.1, 0.99]]}])
    new = replace_zones(text, zones)
    again = parse_config(new)
    assert _zones(again) == [z.model_dump(exclude_none=True) for z in zones]
    assert again.model_dump(exclude={"zones"}) == cfg.model_dump(exclude={"zones"})
    old_lines, new_lines = text.splitlines(), new.splitlines()
    start = next(i for i, line in enumerate(old_lines) if line.startswith("zones:"))
    end = next(i for i in range(start + 1, len(old_lines)) if old_lines[i][:1].isalpha())
    assert new_lines[:start] == old_lines[:start]
    assert new_lines[-(len(old_lines) - end):] == old_lines[end:]  # comments after the block kept too
    # block style, and another file's shapes: no zones key, an empty list, a flow list, sequence at column 0
    for before in ("version: 1\n", "version: 1\nzones: []\nboard: {}\n", "zones:\n- name: a\n  kind: aisle\nboard: {}\n",
                   "zones: [{name: a}]  # inline\nboard: {}\n"):
        out = replace_zones(before, zones)
        assert out.count("zones:") == 1 and "name: \"door\"" in out
        assert ("board: {}" in out) == ("board: {}" in before)


def test_save_is_atomic_keeps_one_undo_step_and_refuses_what_would_not_read_back(tmp_path):
    path = tmp_path / "board.yaml"
    original = SIM_CONFIG.read_text()
    path.write_text(original)
    path.chmod(0o640)
    f = ZoneFile(path)
    cfg = parse_config(original)
    assert not f.can_undo
    with pytest.raises(ConfigError, match="nothing to undo"):
        f.undo()
    first = validate_zones(cfg, _zones(cfg)[:2])
    saved = f.save(first)
    assert [z.name for z in saved.zones] == ["plaza-sign", "walkway"] and f.can_undo
    assert f.prev.read_text() == original and (path.stat().st_mode & 0o777) == 0o640
    second = validate_zones(cfg, _zones(cfg)[:1])
    f.save(second)
    assert [z.name for z in load_config(path).config.zones] == ["plaza-sign"]
    back = f.undo()  # one step: to the file before the last save
    assert [z.name for z in back.zones] == ["plaza-sign", "walkway"] and not f.can_undo
    with pytest.raises(ConfigError, match="nothing to undo"):
        f.undo()
    # a file whose other keys no longer validate: nothing is written, the undo step is left alone
    broken = path.read_text().replace("version: 1", "version: 2")
    path.write_text(broken)
    with pytest.raises(ConfigError):
        f.save(second)
    assert path.read_text() == broken and not f.can_undo
    assert sorted(p.name for p in tmp_path.iterdir()) == ["board.yaml"]  # no temp file left behind


def test_commissioning_is_off_in_every_production_config_and_on_in_sim():
    assert PRODUCTION
    for p in PRODUCTION:
        assert load_config(p).config.commissioning.enabled is False, p
    assert load_config(SIM_CONFIG).config.commissioning.enabled is True
    assert CommissioningConfig().enabled is False


def test_an_update_slot_carries_the_page():
    """The files an OTA bundle is built from (host_tools.ota_cli.tree_files) hold the page and its scripts:
    a board updated over the air still serves /ui."""
    import subprocess

    from host_tools.ota_cli import tree_files

    shipped = subprocess.run(["git", "ls-files", "firmware/ui"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    assert {"firmware/ui/commissioning.html", "firmware/ui/commissioning.js", "firmware/ui/sse.js"} <= set(shipped)
    assert set(shipped) <= set(tree_files(ROOT))
