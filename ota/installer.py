"""The slot store as a command, one operation per process (the power-cut tests kill it mid-way).

    python -m ota.installer --root R init --source DIR --version V
    python -m ota.installer --root R install --staged DIR --version V
    python -m ota.installer --root R boot
    python -m ota.installer --root R health-window --seconds S [--fail]
    python -m ota.installer --root R commit
    python -m ota.installer --root R rollback
    python -m ota.installer --root R status

Every command prints one JSON object on stdout. ``install`` takes a staging directory that has already
been verified (``ota.bundle`` produces it); it never reads a bundle itself. ``health-window`` stands in for
the new version's first start: it boots (counting the attempt), waits ``S`` seconds for the health check
and commits if it passed. With ``CUECAM_OTA_FAULT_MODEL=health`` the process kills itself
``CUECAM_OTA_KILL_AT`` milliseconds into that window; the other fault models act on filesystem steps
(see :mod:`ota.faults`). Errors print ``{"ok": false, "error": ...}`` and exit with the error's code.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import faults
from .slots import OtaError, SlotStore


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ota.installer", description="A/B firmware slots: install, boot, commit.")
    p.add_argument("--root", type=Path, required=True, help="the slot store folder (state.json, slots/a, slots/b)")
    p.add_argument("--max-boot-attempts", type=int, default=3, help="trial boots before an automatic rollback (default 3)")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("init", help="fresh device: slot a = SOURCE as VERSION, committed")
    s.add_argument("--source", type=Path, required=True)
    s.add_argument("--version", required=True)
    s = sub.add_parser("install", help="copy a verified staging folder into the inactive slot and make it the trial")
    s.add_argument("--staged", type=Path, required=True)
    s.add_argument("--version", required=True)
    sub.add_parser("boot", help="choose (and count) the slot to start")
    s = sub.add_parser("health-window", help="boot, wait SECONDS for the health check, then commit")
    s.add_argument("--seconds", type=float, required=True)
    s.add_argument("--fail", action="store_true", help="the health check fails: exit 1 without committing")
    sub.add_parser("commit", help="the trial slot passed its health check: make it active")
    sub.add_parser("rollback", help="abandon the trial slot")
    sub.add_parser("status", help="state.json and what each slot holds")
    return p


def _health_window(store: SlotStore, fs: faults.FsOps, seconds: float, fail: bool) -> tuple[dict[str, Any], int]:
    choice = store.boot()
    out: dict[str, Any] = {"boot": asdict(choice)}
    if not choice.trial:
        return {**out, "committed": False, "health": "not a trial boot: nothing to check"}, 0
    start = time.monotonic()
    window = max(0.0, seconds)
    kill_ms = fs.health_kill_ms()
    if kill_ms is not None and kill_ms < window * 1000:
        time.sleep(max(0.0, start + kill_ms / 1000 - time.monotonic()))
        fs.kill_now()
    time.sleep(max(0.0, start + window - time.monotonic()))
    if fail:
        return {**out, "committed": False, "health": "failed"}, 1
    return {**out, "committed": True, "health": "passed", "state": store.commit()}, 0


def run(argv: list[str] | None = None) -> tuple[dict[str, Any], int]:
    args = _parser().parse_args(argv)
    fs = faults.get()
    store = SlotStore(args.root, args.max_boot_attempts, fs=fs)
    try:
        if args.cmd == "init":
            return {"state": store.init(args.version, args.source)}, 0
        if args.cmd == "install":
            return {"state": store.install(args.staged, args.version)}, 0
        if args.cmd == "boot":
            return {"boot": asdict(store.boot())}, 0
        if args.cmd == "health-window":
            return _health_window(store, fs, args.seconds, args.fail)
        if args.cmd == "commit":
            return {"state": store.commit()}, 0
        if args.cmd == "rollback":
            return {"state": store.rollback()}, 0
        return store.status(), 0
    finally:
        fs.close()


def main(argv: list[str] | None = None) -> int:
    try:
        out, code = run(argv)
    except OtaError as e:
        print(json.dumps({"ok": False, "error": str(e)}))
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except ValueError as e:  # a malformed CUECAM_OTA_* setting
        print(json.dumps({"ok": False, "error": str(e)}))
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"ok": code == 0, **out}, sort_keys=True))
    return code


if __name__ == "__main__":
    sys.exit(main())
