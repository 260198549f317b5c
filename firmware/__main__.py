"""``python -m firmware``: run the device, or check a board config.

    python -m firmware [run] [--config FILE] [--source PATH] [--port N]
    python -m firmware --validate-config FILE [FILE ...]

Exit codes: 0 ok, 2 bad config or arguments, 3 the board cannot start (camera, token, port,
GPIO), 130 interrupted. A bad model does not stop it: the API comes up degraded with the reason.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .config import load_config
from .errors import ConfigError

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "board_configs" / "sim.yaml"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m firmware", description="cuecam camera board firmware.")
    ap.add_argument("command", nargs="?", choices=["run"], default="run", help="run the device (default)")
    ap.add_argument("--config", type=Path, default=Path(os.environ.get("CUECAM_CONFIG", DEFAULT_CONFIG)),
                    help="board config (default: $CUECAM_CONFIG or board_configs/sim.yaml)")
    ap.add_argument("--validate-config", type=Path, nargs="+", metavar="FILE",
                    help="check board config files and exit (0 valid, 2 invalid)")
    ap.add_argument("--source", type=Path, help="replay this video file or image folder instead of the camera")
    ap.add_argument("--port", type=int, help="API port (0 picks a free one); overrides api.port")
    ap.add_argument("--log-level", default=os.environ.get("CUECAM_LOG_LEVEL", "INFO"),
                    choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    if args.validate_config:
        from .board_check import check_board

        bad = 0
        for f in args.validate_config:
            try:
                loaded = load_config(f)
            except ConfigError as e:
                bad += 1
                print(e, file=sys.stderr)
                continue
            board = check_board(loaded)
            if board.problems:
                bad += 1
                for problem in board.problems:
                    print(f"{f}: {problem}", file=sys.stderr)
                continue
            print(f"{f}: ok (board {loaded.config.board.name}, {loaded.config.board.kind})")
            for need in board.needs:
                print(f"  needs {need}")
        return 2 if bad else 0

    if args.port is not None and not 0 <= args.port <= 65535:
        print(f"error: --port must be 0-65535, not {args.port}", file=sys.stderr)
        return 2
    try:
        loaded = load_config(args.config)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return e.exit_code
    from .app import run, with_source  # imports numpy, OpenCV and aiohttp: only when running

    if args.source is not None:
        loaded = with_source(loaded, args.source)
    try:
        return run(loaded, port=args.port)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
