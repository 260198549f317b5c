"""The A/B slot store: install, trial boots, commit, rollback, and recovery from a broken state or slot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ota.faults import FsOps
from ota.slots import BootChoice, OtaError, SlotStore, parse_version

ROOT = Path(__file__).resolve().parents[2]
DIRS = ("bin", "lib/cuecam", "lib/cuecam/http", "lib/cuecam/signals", "lib/cuecam/signals/defs",
        "models", "etc/cuecam", "share/cuecam/scenes")


def make_payload(dest: Path, version: str, n: int = 20) -> dict[str, bytes]:
    """``n`` small files in nested folders; the file set and every byte depend on ``version``."""
    files: dict[str, bytes] = {}
    for i in range(n - 1):
        files[f"{DIRS[i % len(DIRS)]}/f{i:02d}.dat"] = f"{version}|{i}|".encode() * (3 + i % 7)
    files[f"releases/{version.replace('.', '_')}/notes.txt"] = f"release notes {version}\n".encode()
    for rel, data in files.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_bytes(data)
    return files


def tree(slot_dir: Path) -> dict[str, bytes]:
    """What a slot holds besides its own bookkeeping files."""
    out = {}
    for p in slot_dir.rglob("*"):
        rel = p.relative_to(slot_dir).as_posix()
        if p.is_file() and rel not in ("VERSION", "files.json", "COMMITTED"):
            out[rel] = p.read_bytes()
    return out


@pytest.fixture
def payloads(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for v in ("1.0.0", "1.1.0", "1.2.0"):
        d = tmp_path / f"staged-{v}"
        make_payload(d, v)
        out[v] = d
    return out


@pytest.fixture
def store(tmp_path: Path, payloads: dict[str, Path]) -> SlotStore:
    s = SlotStore(tmp_path / "dev", max_boot_attempts=3, fs=FsOps())
    s.init("1.0.0", payloads["1.0.0"])
    return s


def test_init_gives_a_committed_slot_a(store: SlotStore, payloads: dict[str, Path]) -> None:
    state = json.loads(store.state_path.read_text())
    assert state == {"format": 1, "active": "a", "trial": None, "versions": {"a": "1.0.0", "b": None},
                     "floor": "1.0.0", "boot_attempts": 0}
    assert store.boot() == BootChoice("a", "1.0.0", False, "active", 0)
    assert tree(store.slot_dir("a")) == tree(payloads["1.0.0"])
    assert (store.slot_dir("a") / "VERSION").read_text() == "1.0.0\n"
    st = store.status()
    assert st["slots"]["a"]["complete"] and not st["slots"]["b"]["complete"]
    with pytest.raises(OtaError, match="already initialised"):
        store.init("1.0.0", payloads["1.0.0"])


def test_install_boot_commit_switches_and_raises_the_floor(store: SlotStore, payloads: dict[str, Path]) -> None:
    state = store.install(payloads["1.1.0"], "1.1.0")
    assert state["trial"] == "b" and state["active"] == "a" and state["versions"] == {"a": "1.0.0", "b": "1.1.0"}
    assert tree(store.slot_dir("b")) == tree(payloads["1.1.0"])
    choice = store.boot()
    assert choice == BootChoice("b", "1.1.0", True, "trial", 1)
    assert json.loads(store.state_path.read_text())["boot_attempts"] == 1  # persisted before the start
    state = store.commit()
    assert state == {"format": 1, "active": "b", "trial": None, "versions": {"a": "1.0.0", "b": "1.1.0"},
                     "floor": "1.1.0", "boot_attempts": 0}
    assert store.boot() == BootChoice("b", "1.1.0", False, "active", 0)
    # The next update goes into a: the old 1.0.0 files are gone, not mixed in.
    store.install(payloads["1.2.0"], "1.2.0")
    assert tree(store.slot_dir("a")) == tree(payloads["1.2.0"])
    assert store.boot().slot == "a"
    assert store.commit()["floor"] == "1.2.0"
    assert store.boot() == BootChoice("a", "1.2.0", False, "active", 0)


def test_crash_looping_trial_is_rolled_back(store: SlotStore, payloads: dict[str, Path]) -> None:
    store.install(payloads["1.1.0"], "1.1.0")
    for attempt in (1, 2, 3):
        assert store.boot() == BootChoice("b", "1.1.0", True, "trial", attempt)  # started, never committed
    assert store.boot() == BootChoice("a", "1.0.0", False, "rolled_back", 0)
    state = json.loads(store.state_path.read_text())
    assert state == {"format": 1, "active": "a", "trial": None, "versions": {"a": "1.0.0", "b": None},
                     "floor": "1.0.0", "boot_attempts": 0}
    assert store.boot() == BootChoice("a", "1.0.0", False, "active", 0)
    with pytest.raises(OtaError, match="no trial slot to commit"):
        store.commit()


def test_manual_rollback_and_refusals(store: SlotStore, payloads: dict[str, Path]) -> None:
    with pytest.raises(OtaError, match="no trial slot to roll back"):
        store.rollback()
    store.install(payloads["1.1.0"], "1.1.0")
    with pytest.raises(OtaError, match="has not been booted"):
        store.commit()
    assert store.rollback()["trial"] is None
    assert store.boot() == BootChoice("a", "1.0.0", False, "active", 0)
    store.install(payloads["1.2.0"], "1.2.0")
    store.boot()
    store.commit()
    with pytest.raises(OtaError, match=r"older than the installed floor 1\.2\.0"):
        store.install(payloads["1.1.0"], "1.1.0")
    with pytest.raises(OtaError, match="dotted decimal"):
        store.install(payloads["1.2.0"], "1.3.0-rc1")


def test_versions_compare_numerically() -> None:
    assert parse_version("1.10.0") > parse_version("1.9.9")
    assert parse_version("2") == parse_version("2.0.0")
    for bad in ("", "v1.0", "1..0", "1.0.0.0.0"):
        with pytest.raises(OtaError):
            parse_version(bad)


@pytest.mark.parametrize("damage", ["garbage", "empty", "missing", "wrong_schema", "truncated"])
def test_corrupt_state_is_recovered_to_the_highest_committed_slot(store: SlotStore, payloads: dict[str, Path],
                                                                   damage: str) -> None:
    store.install(payloads["1.1.0"], "1.1.0")
    store.boot()
    store.commit()
    good = store.state_path.read_bytes()
    if damage == "garbage":
        store.state_path.write_bytes(os.urandom(64))
    elif damage == "empty":
        store.state_path.write_bytes(b"")
    elif damage == "missing":
        store.state_path.unlink()
    elif damage == "wrong_schema":
        store.state_path.write_text(json.dumps({"format": 1, "active": "c", "trial": None}))
    else:
        store.state_path.write_bytes(good[: len(good) // 2])
    assert store.status()["state_ok"] is False
    assert store.boot() == BootChoice("b", "1.1.0", False, "recovered", 0)
    state = json.loads(store.state_path.read_text())
    assert state["active"] == "b" and state["trial"] is None and state["floor"] == "1.1.0"
    assert state["versions"] == {"a": "1.0.0", "b": "1.1.0"}
    # And the device keeps updating from there.
    store.install(payloads["1.2.0"], "1.2.0")
    assert store.boot() == BootChoice("a", "1.2.0", True, "trial", 1)


def test_corrupt_state_during_a_trial_starts_the_committed_slot_not_the_untested_one(
        store: SlotStore, payloads: dict[str, Path]) -> None:
    store.install(payloads["1.1.0"], "1.1.0")  # b is complete and higher, but never passed a health check
    store.state_path.write_text("{")
    assert store.boot() == BootChoice("a", "1.0.0", False, "recovered", 0)
    assert json.loads(store.state_path.read_text())["versions"] == {"a": "1.0.0", "b": None}


@pytest.mark.parametrize("damage", ["no_version", "missing_file", "truncated_file", "flipped_byte", "extra_file",
                                    "no_files_json", "version_mismatch"])
def test_incomplete_trial_slot_is_not_chosen(store: SlotStore, payloads: dict[str, Path], damage: str) -> None:
    store.install(payloads["1.1.0"], "1.1.0")
    b = store.slot_dir("b")
    victim = b / "lib/cuecam/http/f02.dat"
    if damage == "no_version":
        (b / "VERSION").unlink()
    elif damage == "missing_file":
        victim.unlink()
    elif damage == "truncated_file":
        victim.write_bytes(victim.read_bytes()[:-1])
    elif damage == "flipped_byte":
        data = bytearray(victim.read_bytes())
        data[0] ^= 1
        victim.write_bytes(bytes(data))
    elif damage == "extra_file":
        (b / "lib/cuecam/stale.py").write_text("left over")
    elif damage == "no_files_json":
        (b / "files.json").unlink()
    else:
        (b / "VERSION").write_text("1.0.9\n")
    assert not store.check_slot("b", "1.1.0").ok
    choice = store.boot()
    assert choice == BootChoice("a", "1.0.0", False, "trial_incomplete", 0)
    assert json.loads(store.state_path.read_text())["versions"]["b"] is None
    # With state.json gone as well, recovery does not pick it either.
    store.state_path.unlink()
    assert store.boot() == BootChoice("a", "1.0.0", False, "recovered", 0)


def test_broken_active_slot_falls_back_to_the_other_committed_slot(store: SlotStore, payloads: dict[str, Path]) -> None:
    store.install(payloads["1.1.0"], "1.1.0")
    store.boot()
    store.commit()
    (store.slot_dir("b") / "bin/f00.dat").write_bytes(b"bit rot")
    assert store.boot() == BootChoice("a", "1.0.0", False, "fallback", 0)
    state = json.loads(store.state_path.read_text())
    assert state["active"] == "a" and state["versions"]["b"] is None
    # Nothing verifies at all: a clear error instead of starting a broken slot.
    (store.slot_dir("a") / "bin/f00.dat").unlink()
    with pytest.raises(OtaError, match="reflash"):
        store.boot()


def test_staging_tree_rules(store: SlotStore, tmp_path: Path, payloads: dict[str, Path]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(OtaError, match="holds no files"):
        store.install(empty, "1.1.0")
    with pytest.raises(OtaError, match="does not exist"):
        store.install(tmp_path / "nope", "1.1.0")
    reserved = tmp_path / "reserved"
    make_payload(reserved, "1.1.0")
    (reserved / "VERSION").write_text("9.9.9")
    with pytest.raises(OtaError, match="reserved name VERSION"):
        store.install(reserved, "1.1.0")
    linked = tmp_path / "linked"
    make_payload(linked, "1.1.0")
    (linked / "bin/evil").symlink_to("/etc/passwd")
    with pytest.raises(OtaError, match="symlink"):
        store.install(linked, "1.1.0")
    # None of the refusals touched the device.
    assert store.boot() == BootChoice("a", "1.0.0", False, "active", 0)
    with pytest.raises(OtaError, match="does not exist"):
        SlotStore(tmp_path / "no-device", fs=FsOps()).boot()


def _cli(root: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict]:
    p = subprocess.run([sys.executable, "-m", "ota.installer", "--root", str(root), *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=30, env=env)
    return p.returncode, json.loads(p.stdout) if p.stdout.strip() else {}


def test_cli_round_trip(tmp_path: Path, payloads: dict[str, Path]) -> None:
    root = tmp_path / "dev"
    assert _cli(root, "init", "--source", str(payloads["1.0.0"]), "--version", "1.0.0")[0] == 0
    rc, out = _cli(root, "install", "--staged", str(payloads["1.1.0"]), "--version", "1.1.0")
    assert rc == 0 and out["state"]["trial"] == "b"
    rc, out = _cli(root, "health-window", "--seconds", "0", "--fail")
    assert rc == 1 and out["committed"] is False and out["boot"]["trial"] is True
    rc, out = _cli(root, "health-window", "--seconds", "0.05")
    assert rc == 0 and out["committed"] is True and out["state"]["active"] == "b" and out["state"]["floor"] == "1.1.0"
    rc, out = _cli(root, "boot")
    assert rc == 0 and out["boot"] == {"slot": "b", "version": "1.1.0", "trial": False, "reason": "active",
                                       "boot_attempts": 0}
    rc, out = _cli(root, "status")
    assert rc == 0 and out["state"]["active"] == "b" and out["slots"]["b"]["complete"] and out["slots"]["a"]["complete"]
    rc, out = _cli(root, "commit")
    assert rc == 4 and out["ok"] is False and "no trial slot" in out["error"]
    rc, out = _cli(root, "boot", env={**os.environ, "CUECAM_OTA_KILL_AT": "x"})
    assert rc == 2 and "CUECAM_OTA_KILL_AT" in out["error"]
