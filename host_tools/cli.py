"""``cuecam``: the integrator's command line for talking to camera boards.

    cuecam device health     --url http://127.0.0.1:8080
    cuecam device status     --url URL [--token-file FILE]
    cuecam device vectors    --url URL [--since N] [--limit N] [--zone NAME]
    cuecam device aggregates --url URL [--window S]
    cuecam device optout     --url URL              # what the signage button does
    cuecam device press      --url URL [--hold-ms N] # sim board: press the mock button
    cuecam device audit      --url URL
    cuecam device tail       --url URL [--since N]  # follow vectors as they come (JSON lines)
    cuecam sign --config board_configs/sim.yaml --out sign.html [--format html|svg]
    cuecam gateway run|check|bench, cuecam sim-store, cuecam bench   (see host_tools/gateway_cli.py)
    cuecam provision --template board_configs/rpi5.yaml --name shelf-3 (--out DIR | --boot DIR) [--tls] [--json]

The token comes from --token-file, else $CUECAM_API_TOKEN. Output is JSON. ``sign`` writes the
store's printable A5 privacy sign from a board config (what GET /v1/privacy serves).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

MAX_RESPONSE = 16 * 1024 * 1024


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file:
        return Path(args.token_file).read_text(encoding="utf-8").strip()
    return os.environ.get("CUECAM_API_TOKEN")


def _get(url: str, token: str | None, timeout: float, method: str = "GET") -> tuple[int, Any]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {}, method=method,
                                 data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read(MAX_RESPONSE))
    except urllib.error.HTTPError as e:
        body = e.read(MAX_RESPONSE)
        try:
            return e.code, json.loads(body)
        except ValueError:
            return e.code, {"error": {"status": e.code, "message": body.decode("utf-8", "replace")[:500]}}


def _sign(args: argparse.Namespace) -> int:
    from firmware.config import load_config
    from firmware.errors import ConfigError
    from firmware.privacy.notice import privacy_notice

    from .sign import render_html, render_svg

    fmt = args.format or ("svg" if args.out.suffix.lower() == ".svg" else "html")
    try:
        cfg = load_config(args.config).config
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    if not cfg.privacy.notice.language.startswith("en"):
        print(f"warning: privacy.notice.language is {cfg.privacy.notice.language!r}, but the sign's text exists "
              "only in English; it is written in English", file=sys.stderr)
    try:
        notice = privacy_notice(cfg, args.companion)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = render_svg(notice) if fmt == "svg" else render_html(notice)
    try:
        args.out.write_text(text, encoding="utf-8")
    except OSError as e:
        print(f"error: cannot write {args.out}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"cuecam: A5 privacy sign ({fmt}) written to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cuecam", description="Talk to cuecam camera boards.")
    sub = ap.add_subparsers(dest="group", required=True)
    dev = sub.add_parser("device", help="query one camera board's API")
    dsub = dev.add_subparsers(dest="cmd", required=True)
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", default=os.environ.get("CUECAM_URL", "http://127.0.0.1:8080"))
        p.add_argument("--token-file", help="file holding the device's API token (default: $CUECAM_API_TOKEN)")
        p.add_argument("--timeout", type=float, default=5.0)

    for name, help_ in (("health", "liveness (no token needed)"), ("status", "board, model, fps, latency, drops"),
                        ("vectors", "sentiment vectors after a cursor"),
                        ("aggregates", "per-zone counts and signal means over the last window"),
                        ("optout", "opt out as the signage button does: pause measuring and purge (POST /v1/optout)"),
                        ("press", "sim board: press the mock opt-out button (POST /v1/sim/button)"),
                        ("audit", "the opt-out audit log")):
        p = dsub.add_parser(name, help=help_)
        common(p)
        if name == "vectors":
            p.add_argument("--since", type=int, default=0)
            p.add_argument("--limit", type=int, default=100)
            p.add_argument("--zone", help="only vectors of this zone")
        if name == "aggregates":
            p.add_argument("--window", type=int, default=60, help="seconds (1-3600)")
        if name == "press":
            p.add_argument("--hold-ms", type=int, default=100, help="hold the button this long (a long press resumes)")
    sign = sub.add_parser("sign", help="write the store's printable A5 privacy sign from a board config")
    sign.add_argument("--config", type=Path, required=True, help="the board config (e.g. board_configs/rpi5.yaml)")
    sign.add_argument("--out", type=Path, required=True, help="output file (.html or .svg)")
    sign.add_argument("--format", choices=("html", "svg"), help="default: svg for a .svg --out, else html")
    sign.add_argument("--companion", metavar="NAME", help="the sign hangs by this companion's button "
                      "(privacy.optout.companions): say where the button is")
    from . import gateway_cli, ota_cli, provision

    ota_cli.add_parser(sub)
    gateway_cli.add_parsers(sub, dsub, common)
    provision.add_parser(sub)
    args = ap.parse_args(argv)
    if args.group == "provision":
        return provision.run(args)
    if args.group == "sign":
        return _sign(args)
    if args.group == "ota":
        return ota_cli.run(args)
    if args.group in ("gateway", "sim-store", "bench") or args.cmd == "tail":
        try:
            token = _token(args) if hasattr(args, "token_file") else None
        except OSError as e:
            print(f"error: cannot read the token file: {e}", file=sys.stderr)
            return 2
        return gateway_cli.run(args, token)
    path = {"health": "/health", "status": "/v1/status", "vectors": "/v1/vectors", "aggregates": "/v1/aggregates",
            "optout": "/v1/optout", "press": "/v1/sim/button", "audit": "/v1/audit"}[args.cmd]
    query: dict[str, Any] = {}
    if args.cmd == "vectors":
        query = {"since": args.since, "limit": args.limit} | ({"zone": args.zone} if args.zone else {})
    elif args.cmd == "aggregates":
        query = {"window": args.window}
    elif args.cmd == "press":
        query = {"hold_ms": args.hold_ms}
    if query:
        path += "?" + urllib.parse.urlencode(query)
    try:
        code, body = _get(args.url.rstrip("/") + path, _token(args), args.timeout,
                          "POST" if args.cmd in ("optout", "press") else "GET")
    except (OSError, ValueError) as e:
        print(f"error: cannot reach {args.url}: {e}", file=sys.stderr)
        return 1
    json.dump(body, sys.stdout, indent=2)
    print()
    return 0 if code == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
