"""``cuecam provision --companion NAME``: an opt-out companion's key and its one config file.

    cuecam provision --companion door-1 --out devices/ \\
        --board cam-plaza=http://10.0.0.31:8080 --board cam-display=http://10.0.0.32:8080 \\
        --wifi-ssid ShopNet --wifi-password-file wifi-password.txt [--wifi-country DE] \\
        [--button-pin 15] [--led-pin 14] [--position "the round button below this sign"] [--json]

The boards must have been provisioned into the same ``--out`` directory (``DIR/BOARD/board.yaml``).
It makes a 256-bit key and writes, next to the board tokens:

- ``DIR/NAME/companion.json`` (0600): the companion's whole configuration (name, key, Wi-Fi, the
  boards with their URLs and pause periods, button and LED pins, the board's debounce and long
  press), copied onto the Pico as /companion.json (docs/companion.md);
- ``DIR/NAME/companion-key`` (0600): the key alone, in the board's format;
- for each board: ``DIR/BOARD/companions/NAME.key`` (0600, installed as
  /etc/cuecam/companions/NAME.key) and the companion in ``DIR/BOARD/board.yaml`` under
  ``privacy.optout.companions``.

An existing companion of that name is replaced only with ``--force`` (a new key: the old
companion.json stops working). The printed JSON names the files, never the key.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import re
import secrets
from pathlib import Path
from typing import Any

import yaml

from firmware.firstboot import BundleError, validate_board_yaml
from firmware.fsutil import atomic_write_bytes

from .provision import ProvisionError

ETC_KEYS = "/etc/cuecam/companions"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$")
URL_RE = re.compile(r"^https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?/?$")


def _board_arg(value: str) -> tuple[str, str]:
    name, sep, url = value.partition("=")
    if not sep or not NAME_RE.match(name) or not URL_RE.match(url):
        raise ProvisionError(f"--board {value!r}: expected NAME=http://IP:PORT (the board's name and API URL)")
    return name, url.rstrip("/")


def _read_board(dest: Path, name: str) -> tuple[str, dict[str, Any]]:
    path = dest / name / "board.yaml"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProvisionError(f"{path} is missing: provision the board into the same directory first "
                                      f"(cuecam provision --template board_configs/rpi5.yaml --name {name} "
                                      f"--out {dest})") from None
    except OSError as e:
        raise ProvisionError(f"cannot read {path}: {e.strerror or e}") from e
    data = yaml.safe_load(text)
    if not isinstance(data, dict) or not isinstance(data.get("board"), dict) or data["board"].get("name") != name:
        raise ProvisionError(f"{path} is not the board config of {name}")
    return text, data


def _with_companion(text: str, data: dict[str, Any], companion: dict[str, Any], force: bool, where: Path) -> str:
    privacy = data.setdefault("privacy", {}) or {}
    data["privacy"] = privacy
    optout = privacy.setdefault("optout", {}) or {}
    privacy["optout"] = optout
    listed = [c for c in (optout.get("companions") or []) if isinstance(c, dict)]
    if any(c.get("name") == companion["name"] for c in listed) and not force:
        raise ProvisionError(f"{where} already pairs companion {companion['name']}: use --force to replace "
                                      "its key (the old companion.json stops working)")
    optout["companions"] = [c for c in listed if c.get("name") != companion["name"]] + [companion]
    header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
    out = header + yaml.safe_dump(data, sort_keys=False)
    try:
        validate_board_yaml(out, str(where))
    except BundleError as e:
        raise ProvisionError(f"the board config with the companion is invalid: {e}") from e
    return out


def make(args: argparse.Namespace) -> dict[str, Any]:
    name = args.companion
    if not NAME_RE.match(name):
        raise ProvisionError(f"--companion {name!r}: 1-63 letters, digits and '-', starting with a letter or digit")
    if args.out is None:
        raise ProvisionError("--companion needs --out DIR: the directory the boards were provisioned into")
    boards = [_board_arg(b) for b in args.board]
    if not boards:
        raise ProvisionError("--companion needs at least one --board NAME=URL (every camera the sign covers)")
    if len({b for b, _ in boards}) != len(boards):
        raise ProvisionError("--board: each board once")
    if len(boards) > 16:
        raise ProvisionError("at most 16 boards per companion")
    if not args.wifi_ssid or not 1 <= len(args.wifi_ssid) <= 32:
        raise ProvisionError("--wifi-ssid: the shop's Wi-Fi network name (1-32 characters)")
    password = ""
    if args.wifi_password_file is not None:
        try:
            password = args.wifi_password_file.read_text(encoding="utf-8").strip("\r\n")
        except OSError as e:
            raise ProvisionError(f"--wifi-password-file: {e.strerror or e}") from e
        if len(password) > 64:
            raise ProvisionError("--wifi-password-file: a WPA password has at most 64 characters")
    if args.led_pin != "LED" and not (args.led_pin.isdigit() and 0 <= int(args.led_pin) <= 28):
        raise ProvisionError(f"--led-pin {args.led_pin!r}: a GPIO number 0-28, or LED for the Pico W's own")
    if args.position is not None and not 1 <= len(args.position) <= 120:
        raise ProvisionError("--position: 1-120 characters saying where the button is")
    dest: Path = args.out
    comp_dir = dest / name
    if (comp_dir / "companion.json").exists() and not args.force:
        raise ProvisionError(f"{comp_dir} already holds companion.json: use --force to make a new key")
    read = {b: _read_board(dest, b) for b, _ in boards}
    # the companion behaves like the first board's own button (debounce, long press)
    first = read[boards[0][0]][1]
    button = ((first.get("privacy") or {}).get("optout") or {}).get("button") or {}
    key = secrets.token_bytes(32)
    entry: dict[str, Any] = {"name": name, "key_file": f"{ETC_KEYS}/{name}.key"}
    if args.position:
        entry["position"] = args.position
    board_files = {b: _with_companion(text, data, entry, args.force, dest / b / "board.yaml")
                   for b, (text, data) in read.items()}
    cfg: dict[str, Any] = {
        "schema": 1, "name": name, "key": key.hex(),
        "wifi": {"ssid": args.wifi_ssid, "password": password, **({"country": args.wifi_country} if args.wifi_country else {})},
        "boards": [{"name": b, "url": url,
                    "pause_s": ((read[b][1].get("privacy") or {}).get("optout") or {}).get("pause_s", 600)}
                   for b, url in boards],
        "button": {"pin": args.button_pin, "pull_up": True,
                   "bounce_ms": round(float(button.get("bounce_s", 0.05)) * 1000),
                   "long_press_ms": round(float(button.get("long_press_s", 3.0)) * 1000)},
        "led": {"pin": args.led_pin if args.led_pin == "LED" else int(args.led_pin)},
    }
    for b, _ in boards:
        atomic_write_bytes(dest / b / "companions" / f"{name}.key", key.hex().encode() + b"\n", mode=0o600)
        atomic_write_bytes(dest / b / "board.yaml", board_files[b].encode(), mode=0o640)
    atomic_write_bytes(comp_dir / "companion-key", key.hex().encode() + b"\n", mode=0o600)
    atomic_write_bytes(comp_dir / "companion.json", json.dumps(cfg, indent=2).encode() + b"\n", mode=0o600)
    device = {"schema": 1, "name": name, "kind": "companion", "boards": [b for b, _ in boards],
              "position": args.position, "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    atomic_write_bytes(comp_dir / "device.json", json.dumps(device, indent=2).encode() + b"\n", mode=0o644)
    return {"companion": name, "dir": str(comp_dir), "config": str(comp_dir / "companion.json"),
            "key_file": str(comp_dir / "companion-key"), "key_sha256": hashlib.sha256(key).hexdigest()[:16],
            "boards": {b: {"config": str(dest / b / "board.yaml"), "key_file": str(dest / b / "companions" / f"{name}.key"),
                           "installs_to": f"{ETC_KEYS}/{name}.key"} for b, _ in boards}}


def paired(directory: Path) -> tuple[dict[str, Any], bytes]:
    """A companion made by ``--companion`` (its directory) for a board's bundle (``--pair DIR``):
    its board.yaml entry and its key file."""
    try:
        device = json.loads((directory / "device.json").read_text(encoding="utf-8"))
        key = (directory / "companion-key").read_bytes()
    except (OSError, ValueError) as e:
        raise ProvisionError(f"--pair {directory}: not a companion made by `cuecam provision --companion` ({e})") from e
    if not isinstance(device, dict) or device.get("kind") != "companion" or not NAME_RE.match(str(device.get("name"))):
        raise ProvisionError(f"--pair {directory}: device.json is not a companion's")
    if not re.fullmatch(rb"[0-9a-f]{64}\n?", key):
        raise ProvisionError(f"--pair {directory}: companion-key is not 64 hex characters")
    entry: dict[str, Any] = {"name": device["name"], "key_file": f"{ETC_KEYS}/{device['name']}.key"}
    if isinstance(device.get("position"), str) and device["position"]:
        entry["position"] = device["position"][:120]
    return entry, key


def summary(info: dict[str, Any]) -> str:
    return (f"cuecam: companion {info['companion']} provisioned: {info['config']} (copy onto the Pico as "
            f"/companion.json); boards: {', '.join(info['boards'])}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("an opt-out companion (a Pico W with the sign's button): --companion NAME --out DIR --board ...")
    g.add_argument("--companion", metavar="NAME", help="provision an opt-out companion instead of a board")
    g.add_argument("--board", action="append", default=[], metavar="NAME=URL",
                   help="a board the companion pauses, with its API URL (repeatable); provisioned into --out before")
    g.add_argument("--wifi-ssid", help="the Wi-Fi network the companion joins")
    g.add_argument("--wifi-password-file", type=Path, help="a file holding the Wi-Fi password")
    g.add_argument("--wifi-country", help="the Wi-Fi regulatory country (e.g. DE, GB, US)")
    g.add_argument("--button-pin", type=int, default=15, choices=range(29), metavar="GP",
                   help="the button's GPIO (default 15, physical pin 20), wired to ground")
    g.add_argument("--led-pin", default="14",
                   help='the LED\'s GPIO (default 14, physical pin 19), or "LED" for the Pico W\'s own')
    g.add_argument("--position", help="where the button is, for the sign (`cuecam sign --companion NAME`)")
