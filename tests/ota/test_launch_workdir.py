"""The launcher runs the firmware outside its slot: libraries that write into their working
directory (lgpio, which gpiozero 2.0 uses on a Pi, creates a ``.lgd-nfy*`` FIFO there when it is
imported) must not make the slot fail its check, or a trial never commits and a power cut rolls
the board back. The firmware here is a stand-in that imports an lgpio-like module doing just
that, as the real one does on a Pi."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ota.slots import SlotStore

ROOT = Path(__file__).resolve().parents[2]

FAKE_LGPIO = '''"""Stands in for lgpio: on import, lguInit() makes its notification FIFO in $LG_WD or the cwd."""
import os

_dir = os.environ.get("LG_WD") or os.getcwd()
_fifo = os.path.join(_dir, ".lgd-nfy%d" % os.getpid())
os.mkfifo(_fifo, 0o600)
'''
FAKE_MAIN = '''import os
import sys

import lgpio  # noqa: F401  (gpiozero's pin factory imports it on a Pi)

print("cwd", os.getcwd(), flush=True)
sys.exit(0)
'''


def _payload(dest: Path, version: str) -> Path:
    (dest / "firmware").mkdir(parents=True)
    (dest / "firmware" / "__init__.py").write_text(f'__version__ = "{version}"\n')
    (dest / "firmware" / "__main__.py").write_text(FAKE_MAIN)
    (dest / "lgpio.py").write_text(FAKE_LGPIO)
    return dest


def _launch(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("LG_WD", None)
    return subprocess.run([sys.executable, "-m", "ota.launch", "--root", str(root), "--"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_a_fifo_made_by_an_lgpio_import_lands_outside_the_slot_and_the_trial_commits(tmp_path: Path) -> None:
    root = tmp_path / "dev"
    store = SlotStore(root)
    store.init("1.0.0", _payload(tmp_path / "v1", "1.0.0"))
    done = _launch(root)
    assert done.returncode == 0, done.stderr
    assert store.check_slot("a", "1.0.0").ok, store.check_slot("a", "1.0.0").problem
    cwd = Path(done.stdout.split("cwd ", 1)[1].split()[0])
    assert cwd == store.run_dir() and not cwd.is_relative_to(root / "slots")
    assert any(p.name.startswith(".lgd-nfy") for p in cwd.iterdir())  # the FIFO went where it may

    store.install(_payload(tmp_path / "v2", "1.1.0"), "1.1.0")
    done = _launch(root)  # the trial boot
    assert done.returncode == 0, done.stderr
    state = store.commit()  # the trial slot still verifies: the board keeps the update
    assert state["versions"][state["active"]] == "1.1.0" and state["trial"] is None


def test_the_slot_check_names_what_a_stray_entry_is(tmp_path: Path) -> None:
    root = tmp_path / "dev"
    store = SlotStore(root)
    store.init("1.0.0", _payload(tmp_path / "v1", "1.0.0"))
    os.mkfifo(store.slot_dir("a") / ".lgd-nfy0")
    check = store.check_slot("a", "1.0.0")
    assert not check.ok and ".lgd-nfy0 (a FIFO; lgpio's notification pipe" in check.problem
    os.unlink(store.slot_dir("a") / ".lgd-nfy0")
    (store.slot_dir("a") / "firmware" / "__pycache__").mkdir()
    (store.slot_dir("a") / "firmware" / "__pycache__" / "x.pyc").write_bytes(b"")
    check = store.check_slot("a", "1.0.0")
    assert not check.ok and "PYTHONDONTWRITEBYTECODE" in check.problem
