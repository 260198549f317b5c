"""Start cuecam from the slot the A/B store chooses: ``python -m ota.launch --root R -- ARGS``.

Each start asks the slot store which slot to run (``SlotStore.boot``: a trial boot is counted
before it starts, and a trial that has been started ``max_boot_attempts`` times without a commit
is rolled back), then runs ``python -m firmware ARGS`` from that slot with
``CUECAM_OTA_SLOT`` / ``CUECAM_OTA_TRIAL`` set, so the firmware knows to commit itself once
healthy. Under systemd (``Restart=on-failure``, ``RestartForceExitStatus=75``) the unit restarts
the launcher after every failed exit; with ``--supervise`` the launcher does that itself (tests,
boards without systemd). Exit code 75 from the firmware means "restart me" (a new trial slot was
installed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .slots import OtaError, SlotStore, choice_dict

RESTART = 75


def start(store: SlotStore, args: list[str]) -> int:
    choice = store.boot()
    slot_dir = store.slot_dir(choice.slot)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(slot_dir), *filter(None, [env.get("PYTHONPATH")])])
    env["CUECAM_OTA_ROOT"] = str(store.root)
    env["CUECAM_OTA_SLOT"] = choice.slot
    env["CUECAM_OTA_TRIAL"] = "1" if choice.trial else "0"
    # The working directory is outside the slots: a slot holds exactly the files its files.json
    # lists, and libraries write into their working directory (lgpio, which gpiozero 2.0 uses on a
    # Pi, creates its notification FIFO ".lgd-nfy*" there, or in $LG_WD, when it is imported).
    run_dir = store.run_dir()
    env["LG_WD"] = str(run_dir)
    print(json.dumps({"launch": choice_dict(choice)}), file=sys.stderr, flush=True)
    # PYTHONPATH puts the slot first, so `-m firmware` finds the slot's package
    return subprocess.call([sys.executable, "-m", "firmware", *args], cwd=run_dir, env=env)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ota.launch", description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True, type=Path, help="the OTA root (slots, state.json)")
    ap.add_argument("--max-boot-attempts", type=int, default=3)
    ap.add_argument("--supervise", action="store_true", help="restart the firmware after it exits (no systemd)")
    ap.add_argument("--max-restarts", type=int, default=20)
    ap.add_argument("firmware_args", nargs=argparse.REMAINDER, help="-- then the firmware's arguments")
    a = ap.parse_args(argv)
    args = a.firmware_args[1:] if a.firmware_args[:1] == ["--"] else a.firmware_args
    store = SlotStore(a.root, a.max_boot_attempts)
    restarts = 0
    while True:
        try:
            code = start(store, args)
        except OtaError as e:
            print(f"ota.launch: {e}", file=sys.stderr)
            return 4
        if not a.supervise or code == 0 or restarts >= a.max_restarts:
            return code
        restarts += 1
        time.sleep(0.2 if code == RESTART else 1.0)


if __name__ == "__main__":
    sys.exit(main())
