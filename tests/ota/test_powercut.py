"""Power cuts at every filesystem step of an update, and during the new version's health check.

The device starts committed on 1.1.0 (slot b; slot a still holds 1.0.0) and installs 1.2.0 into slot a.
For every step of that install, and of the boot + commit that follow it (``health-window``), the
installer subprocess is SIGKILLed under two fault models (``before_fsync``: everything not yet fsynced is
lost first; ``after``: nothing is lost), and ~10 times inside the health-check window (``health``). After
each cut a fresh ``boot`` process must start a complete, verified slot holding exactly 1.1.0 or exactly
1.2.0; booting on without a commit must end on a committed verified slot within ``max_boot_attempts``
boots; and installing 1.2.0 again must then work. The first tests check the fault model itself.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ota.faults import FsOps
from ota.slots import SlotStore
from tests.ota.test_slots import make_payload, tree

ROOT = Path(__file__).resolve().parents[2]
OLD, NEW = "1.1.0", "1.2.0"
MAX_BOOTS = 3
HEALTH_WINDOW_S = 0.4
HEALTH_KILLS_MS = [0, 40, 80, 120, 160, 200, 240, 280, 320, 360]  # inside the window: killed
HEALTH_AFTER_MS = 600  # after the window: the commit happens, no kill


class Killed(Exception):
    pass


def _raise_killed() -> None:
    raise Killed


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUECAM_OTA_")}
    env.update(extra)
    return env


def _installer(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ota.installer", "--root", str(root),
                           "--max-boot-attempts", str(MAX_BOOTS), *args],
                          cwd=ROOT, env=env if env is not None else _env(), capture_output=True, text=True, timeout=60)


# -- the fault model itself --------------------------------------------------------------------------


def _cut(model: str, kill_at: int, body: Any, tmp_path: Path) -> FsOps:
    fs = FsOps(kill_at=kill_at, model=model, trace=tmp_path / "trace", kill=_raise_killed)
    with pytest.raises(Killed):
        body(fs)
    return fs


def test_before_fsync_loses_unsynced_data_and_entries(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    f = d / "f"

    def body(fs: FsOps) -> None:
        fs.write_file(f, b"new")  # 1
        fs.fsync(f)  # 2: cut here: the data never reached the disk, nor the name
    _cut("before_fsync", 2, body, tmp_path)
    assert not f.exists()

    def body2(fs: FsOps) -> None:
        fs.write_file(f, b"new")
        fs.fsync(f)
        fs.fsync_dir(d)  # 3: cut here: data synced, name not: the file is gone
    _cut("before_fsync", 3, body2, tmp_path)
    assert not f.exists()

    f.write_bytes(b"durable")

    def body3(fs: FsOps) -> None:
        fs.write_file(f, b"overwritten, never synced")
        fs.fsync_dir(d)  # 2
    _cut("before_fsync", 2, body3, tmp_path)
    assert f.read_bytes() == b""  # an existing file rewritten without fsync: 0 bytes

    f.write_bytes(b"durable")

    def body4(fs: FsOps) -> None:
        fs.unlink(f)
        fs.mkdir(d / "sub")
        fs.write_file(d / "sub" / "x", b"x")
        fs.fsync(d / "sub" / "x")
        fs.fsync_dir(d / "sub")
        fs.fsync_dir(d)  # 6: cut here: the unlink and the mkdir are undone
    _cut("before_fsync", 6, body4, tmp_path)
    assert f.read_bytes() == b"durable" and not (d / "sub").exists()
    assert (tmp_path / "trace").read_text().splitlines()[-1].startswith("6 fsync_dir ")


def test_before_fsync_undoes_an_unsynced_atomic_replace(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_bytes(b"old")

    def body(fs: FsOps) -> None:
        tmp = tmp_path / "state.json.tmp"
        fs.write_file(tmp, b"new")
        fs.fsync(tmp)
        fs.replace(tmp, state)
        fs.fsync_dir(tmp_path)  # 4: cut before it: the old file is back, the temp file gone
    _cut("before_fsync", 4, body, tmp_path)
    assert state.read_bytes() == b"old" and not (tmp_path / "state.json.tmp").exists()

    state.write_bytes(b"old")
    fs = FsOps(kill_at=5, model="before_fsync", kill=_raise_killed)  # steps + 1: the cut comes at close()
    body(fs)
    with pytest.raises(Killed):
        fs.close()
    assert state.read_bytes() == b"new"  # everything was durable

    def unsynced(fs: FsOps) -> None:
        fs.write_file(state, b"newer, never synced")
    fs = FsOps(kill_at=2, model="before_fsync", kill=_raise_killed)
    unsynced(fs)
    with pytest.raises(Killed):
        fs.close()
    assert state.read_bytes() == b""


def test_after_keeps_the_step_and_health_never_kills_a_step(tmp_path: Path) -> None:
    f = tmp_path / "f"

    def body(fs: FsOps) -> None:
        fs.write_file(f, b"kept")  # 1: killed right after it
        fs.fsync(f)
    _cut("after", 1, body, tmp_path)
    assert f.read_bytes() == b"kept"
    fs = FsOps(kill_at=1, model="health", kill=_raise_killed)
    body(fs)
    assert fs.health_kill_ms() == 1 and fs.steps == 2
    with pytest.raises(ValueError, match="CUECAM_OTA_FAULT_MODEL"):
        FsOps.from_env({"CUECAM_OTA_KILL_AT": "3", "CUECAM_OTA_FAULT_MODEL": "sometimes"})


# -- the power-cut matrix ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    model: str
    phase: str  # install | health-window
    at: int  # step number, or milliseconds for the health model
    expect_kill: bool
    expect_boot: tuple[str, bool, int]  # first boot after the cut: version, trial, boot_attempts


def _state_replaces(trace: list[str]) -> list[int]:
    """Step numbers of the ``os.replace`` onto state.json (each followed by an fsync of the root folder)."""
    steps = [int(line.split()[0]) for line in trace if line.split()[1] == "replace" and line.endswith("/state.json")]
    for n in steps:
        assert trace[n].split()[1] == "fsync_dir", trace[n]  # trace[n] is step n + 1
    return steps


def _durable(model: str, cut: int, replace_step: int) -> bool:
    """Does the state write whose rename is ``replace_step`` survive a cut at step ``cut``?"""
    if model == "after":
        return cut >= replace_step
    return cut - 1 >= replace_step + 1  # before_fsync: its directory fsync must have run


@dataclass
class Outcome:
    point: Point
    killed_ok: bool = False
    first_boot: str = ""
    problems: tuple[str, ...] = ()
    unbootable: bool = False  # no verified slot started, a mix, or still not on a committed slot after the boots
    unexpected: bool = False  # booted safely, but not what the write protocol should have left (a safety net caught it)


def _verify_choice(root: Path, slot: str, version: str, payloads: dict[str, dict[str, bytes]]) -> list[str]:
    """Independently of the store: the slot's VERSION, files.json hashes and exact file set."""
    d = root / "slots" / slot
    problems = []
    if version not in (OLD, NEW):
        problems.append(f"booted version {version} is neither {OLD} nor {NEW}")
        return problems
    if (d / "VERSION").read_text().strip() != version:
        problems.append(f"slot {slot} VERSION is not {version}")
    listing = json.loads((d / "files.json").read_bytes())
    for rel, meta in listing["files"].items():
        data = (d / rel).read_bytes()
        if hashlib.sha256(data).hexdigest() != meta["sha256"]:
            problems.append(f"{slot}/{rel} does not match files.json")
    if tree(d) != payloads[version]:
        problems.append(f"slot {slot} is not exactly {version} (a mix or a damaged copy)")
    return problems


def _run_point(p: Point, work: Path, templates: dict[str, Path], staged: dict[str, Path],
               payloads: dict[str, dict[str, bytes]]) -> Outcome:
    out = Outcome(p)
    root = work / f"{p.model}-{p.phase}-{p.at}"
    env = _env(CUECAM_OTA_KILL_AT=str(p.at), CUECAM_OTA_FAULT_MODEL=p.model)
    problems: list[str] = []
    # A fresh device committed on OLD; for cuts in the health-window phase, NEW already installed.
    installed_first = p.phase == "health-window" and p.model != "health"
    shutil.copytree(templates["installed" if installed_first else "committed"], root, symlinks=True)
    if p.phase == "install":
        r = _installer(root, "install", "--staged", str(staged[NEW]), "--version", NEW, env=env)
    else:
        if p.model == "health":  # the health model never kills an install step
            r = _installer(root, "install", "--staged", str(staged[NEW]), "--version", NEW, env=env)
            if r.returncode != 0:
                problems.append(f"install under the health model exited {r.returncode}: {r.stderr.strip()}")
        r = _installer(root, "health-window", "--seconds", str(HEALTH_WINDOW_S), env=env)
    out.killed_ok = r.returncode == (-9 if p.expect_kill else 0)
    if not out.killed_ok:
        problems.append(f"installer exited {r.returncode}, expected {-9 if p.expect_kill else 0}: {r.stderr.strip()[-300:]}")

    # The first start after the cut: a fresh process.
    try:
        b = _installer(root, "boot")
        if b.returncode != 0:
            raise RuntimeError(f"boot exited {b.returncode}: {b.stderr.strip()}")
        choice = json.loads(b.stdout)["boot"]
        out.first_boot = f"{choice['version']}{' (trial)' if choice['trial'] else ''}"
        boot_problems = _verify_choice(root, choice["slot"], choice["version"], payloads)
        got = (choice["version"], choice["trial"], choice["boot_attempts"])
        if got != p.expect_boot or choice["reason"] not in ("active", "trial"):
            # Booting something safe through a safety net (rollback of an incomplete trial, recovery of
            # the state) is not unbootable, but it is a failure of the write protocol all the same.
            out.unexpected = True
            problems.append(f"first boot {got} ({choice['reason']}), expected {p.expect_boot}")
        # Keep booting without a commit: a trial gets at most MAX_BOOTS starts, the next boot is committed.
        store = SlotStore(root, MAX_BOOTS, fs=FsOps())
        boots = 0
        while choice["trial"] and boots < MAX_BOOTS:
            c = store.boot()
            boots += 1
            choice = {"slot": c.slot, "version": c.version, "trial": c.trial}
            boot_problems += _verify_choice(root, c.slot, c.version, payloads)
        state = json.loads((root / "state.json").read_text())
        if choice["trial"] or state["trial"] is not None or state["active"] != choice["slot"]:
            boot_problems.append(f"not on a committed slot after {boots + 1} boots without commit: {state}")
        if not store.check_slot(choice["slot"], choice["version"]).ok:
            boot_problems.append("the committed slot does not verify")
    except Exception as e:
        boot_problems = [f"{type(e).__name__}: {e}"]
    if boot_problems:
        out.unbootable = True
        problems += boot_problems
    else:
        # And the update can simply be tried again.
        try:
            store = SlotStore(root, MAX_BOOTS, fs=FsOps())
            if store.boot().version != NEW:
                store.install(staged[NEW], NEW)
                assert store.boot().trial
                store.commit()
            c = store.boot()
            if (c.version, c.trial) != (NEW, False) or _verify_choice(root, c.slot, c.version, payloads):
                problems.append(f"retrying the update did not end on {NEW}: {c}")
        except Exception as e:
            problems.append(f"retrying the update failed: {type(e).__name__}: {e}")
    out.problems = tuple(problems)
    shutil.rmtree(root, ignore_errors=True)
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("powercut")
    staged, payloads = {}, {}
    for v in ("1.0.0", OLD, NEW):
        staged[v] = base / f"staged-{v}"
        payloads[v] = make_payload(staged[v], v)
    committed = base / "template-committed"
    s = SlotStore(committed, MAX_BOOTS, fs=FsOps())
    s.init("1.0.0", staged["1.0.0"])
    s.install(staged[OLD], OLD)
    s.boot()
    s.commit()
    installed = base / "template-installed"
    shutil.copytree(committed, installed, symlinks=True)
    SlotStore(installed, MAX_BOOTS, fs=FsOps()).install(staged[NEW], NEW)
    return {"base": base, "staged": staged, "payloads": payloads,
            "templates": {"committed": committed, "installed": installed}}


def _trace(world: dict[str, Any], template: str, *args: str) -> list[str]:
    root = world["base"] / f"trace-{template}"
    trace = world["base"] / f"trace-{template}.txt"
    shutil.copytree(world["templates"][template], root, symlinks=True)
    r = _installer(root, *args, env=_env(CUECAM_OTA_TRACE=str(trace)))
    assert r.returncode == 0, r.stderr
    return trace.read_text().splitlines()


def test_power_cut_matrix(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    t0 = time.monotonic()
    install_steps = _trace(world, "committed", "install", "--staged", str(world["staged"][NEW]), "--version", NEW)
    hw_steps = _trace(world, "installed", "health-window", "--seconds", "0")
    assert [int(line.split()[0]) for line in install_steps] == list(range(1, len(install_steps) + 1))
    assert len(install_steps) >= 50, install_steps
    ops = collections.Counter(line.split()[1] for line in install_steps)
    assert set(ops) == {"write_file", "copy_file", "fsync", "replace", "mkdir", "fsync_dir", "unlink", "rmdir"}
    assert len(hw_steps) >= 8  # boot's state write, the COMMITTED marker, commit's state write

    switch = _state_replaces(install_steps)[-1]  # install's last state write sets the trial slot
    boot_write, commit_write = _state_replaces(hw_steps)[0], _state_replaces(hw_steps)[-1]
    assert boot_write < commit_write
    points: list[Point] = []
    for model in ("before_fsync", "after"):
        # before_fsync also cuts at steps + 1: as the process exits, losing whatever it left unsynced.
        last = len(install_steps) + (model == "before_fsync")
        points += [Point(model, "install", n, True, (NEW, True, 1) if _durable(model, n, switch) else (OLD, False, 0))
                   for n in range(1, last + 1)]
        last = len(hw_steps) + (model == "before_fsync")
        points += [Point(model, "health-window", n, True,
                         (NEW, False, 0) if _durable(model, n, commit_write) else (NEW, True, 1 + _durable(model, n, boot_write)))
                   for n in range(1, last + 1)]
    points += [Point("health", "health-window", ms, True, (NEW, True, 2)) for ms in HEALTH_KILLS_MS]
    points.append(Point("health", "health-window", HEALTH_AFTER_MS, False, (NEW, False, 0)))

    work = world["base"] / "points"
    work.mkdir()
    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(lambda p: _run_point(p, work, world["templates"], world["staged"], world["payloads"]),
                                 points))

    unbootable = sum(o.unbootable for o in outcomes)
    unexpected = sum(o.unexpected for o in outcomes)
    failed = [o for o in outcomes if o.problems]
    by_model = collections.Counter(o.point.model for o in outcomes)
    first_boots = collections.Counter(f"{o.point.model}: {o.first_boot}" for o in outcomes)
    with capsys.disabled():
        print()
        print(f"install_steps: {len(install_steps)} ({', '.join(f'{k} {v}' for k, v in sorted(ops.items()))})")
        print(f"health_window_steps: {len(hw_steps)}")
        print(f"power_cut_points: {len(points)} ({', '.join(f'{k} {v}' for k, v in sorted(by_model.items()))})")
        print("fault_models: 3")
        print("first_boot_after_cut: " + json.dumps(dict(sorted(first_boots.items()))))
        print(f"killed_as_expected: {sum(o.killed_ok for o in outcomes)}/{len(outcomes)}")
        print(f"unexpected_first_boot: {unexpected}")
        print(f"unbootable: {unbootable}")
        print(f"matrix_seconds: {time.monotonic() - t0:.1f}")
    assert not failed, "\n".join(f"{o.point}: {'; '.join(o.problems)}" for o in failed[:20])
    assert unbootable == 0 and unexpected == 0
    # Both outcomes really happen: cuts before the switch keep 1.1.0, cuts after it start 1.2.0 as a trial.
    assert any(o.first_boot == OLD for o in outcomes) and any(o.first_boot == f"{NEW} (trial)" for o in outcomes)
    assert any(o.first_boot == NEW for o in outcomes)  # a cut after commit's state write: 1.2.0 committed
