"""``cuecam ota``: keys, bundles and delivery for signed over-the-air updates (docs/ota.md).

    cuecam ota keygen --out DIR                     # DIR/cuecam-ota.key (0600) + cuecam-ota.pub
    cuecam ota build  --key K --out B [--version V] [--boards ...] [--min-version M] [--tree DIR]
    cuecam ota sign   --key K --bundle B --out B2   # re-sign a bundle's payload with another key
    cuecam ota verify --pub P --bundle B [--board-kind K --installed V]
    cuecam ota push   --url URL --bundle B [--token-file F]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, BinaryIO, get_args

from firmware.config import BoardKind

ROOT = Path(__file__).resolve().parents[1]
BOARDS = list(get_args(BoardKind))  # a bundle built without --boards installs on every kind of board
TREE_GLOBS = ("firmware/**/*.py", "firmware/camera/scenes/*.yaml", "firmware/ui/*", "ota/**/*.py", "ota/systemd/*.service",
              "board_configs/*.yaml", "models/manifest.yaml")


def tree_files(tree: Path) -> dict[str, Path]:
    """The files of a cuecam working tree that make up a slot: the firmware and ota packages, the
    board configs and the model manifest (model files themselves are installed separately)."""
    out: dict[str, Path] = {}
    for pattern in TREE_GLOBS:
        for p in sorted(tree.glob(pattern)):
            if p.is_file() and "__pycache__" not in p.parts:
                out[p.relative_to(tree).as_posix()] = p
    if "firmware/__init__.py" not in out:
        raise SystemExit(f"error: {tree} is not a cuecam working tree (no firmware/__init__.py)")
    return out


def tree_version(tree: Path) -> str:
    for line in (tree / "firmware" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    raise SystemExit(f"error: no __version__ in {tree}/firmware/__init__.py")


class _Progress:
    """A file wrapper that draws an upload progress bar on stderr."""

    def __init__(self, f: BinaryIO, total: int, quiet: bool) -> None:
        self.f, self.total, self.done, self.quiet = f, total, 0, quiet

    def read(self, n: int = -1) -> bytes:
        chunk = self.f.read(n if n and n > 0 else 256 * 1024)
        self.done += len(chunk)
        if not self.quiet and self.total:
            width = 30
            filled = int(width * self.done / self.total)
            print(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done * 100 // self.total:3d}% "
                  f"{self.done / 1e6:.1f}/{self.total / 1e6:.1f} MB", end="", file=sys.stderr, flush=True)
            if self.done >= self.total:
                print(file=sys.stderr)
        return chunk


def _out(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2)
    print()


def run(args: argparse.Namespace) -> int:
    from ota.bundle import (
        BundleError,
        build_bundle,
        generate_keypair,
        key_id,
        load_private_key,
        load_public_key,
        public_key_from_private,
        public_key_hex,
        save_private_key,
        save_public_key,
        verify_bundle,
    )

    try:
        if args.cmd == "keygen":
            args.out.mkdir(parents=True, exist_ok=True)
            priv, pub = generate_keypair()
            save_private_key(args.out / "cuecam-ota.key", priv)
            save_public_key(args.out / "cuecam-ota.pub", pub)
            _out({"private_key": str(args.out / "cuecam-ota.key"), "public_key": public_key_hex(pub), "key_id": key_id(pub),
                  "next": "put public_key into ota.trusted_keys of every board config; keep the private key offline"})
            return 0
        if args.cmd == "build":
            tree = args.tree.resolve()
            files = tree_files(tree)
            version = args.version or tree_version(tree)
            out = build_bundle(files, version=version, boards=args.boards, min_version=args.min_version,
                               private_key=load_private_key(args.key), out=args.out)
            _out({"bundle": str(out), "version": version, "files": len(files), "bytes": out.stat().st_size,
                  "key_id": key_id(public_key_from_private(load_private_key(args.key)))})
            return 0
        if args.cmd == "sign":  # re-sign: unpack with the old signature checked, build again with the new key
            with tempfile.TemporaryDirectory() as tmp:
                v = _verify_any(args.bundle, Path(tmp) / "payload", args.old_pub)
                files = {f.path: v.root / f.path for f in v.manifest.files}
                build_bundle(files, version=v.manifest.version, boards=list(v.manifest.boards),
                             min_version=v.manifest.min_version, private_key=load_private_key(args.key), out=args.out)
            _out({"bundle": str(args.out), "version": v.manifest.version,
                  "key_id": key_id(public_key_from_private(load_private_key(args.key)))})
            return 0
        if args.cmd == "verify":
            with tempfile.TemporaryDirectory() as tmp:
                v = verify_bundle(args.bundle, [load_public_key(p) for p in args.pub], board_kind=args.board_kind,
                                  installed_version=args.installed, floor_version=None, staging_dir=Path(tmp) / "payload")
                _out({"ok": True, "version": v.manifest.version, "boards": list(v.manifest.boards),
                      "min_version": v.manifest.min_version, "files": len(v.manifest.files),
                      "bytes": v.manifest.total_size, "key_id": v.key_id})
            return 0
        if args.cmd == "push":
            return _push(args)
    except BundleError as e:
        _out({"ok": False, "reason": e.reason, "error": str(e)})
        return 2
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 2


def _verify_any(bundle: Path, staging: Path, pubs: list[Path]) -> Any:
    from ota.bundle import load_public_key, verify_bundle

    return verify_bundle(bundle, [load_public_key(p) for p in pubs], board_kind="sim", installed_version="0",
                         floor_version=None, staging_dir=staging)


def _push(args: argparse.Namespace) -> int:
    token = Path(args.token_file).read_text().strip() if args.token_file else os.environ.get("CUECAM_API_TOKEN")
    size = args.bundle.stat().st_size
    with open(args.bundle, "rb") as f:
        req = urllib.request.Request(args.url.rstrip("/") + "/v1/ota", data=_Progress(f, size, args.quiet),  # type: ignore[arg-type]
                                     method="POST", headers={"Content-Length": str(size),
                                                             "Content-Type": "application/octet-stream",
                                                             **({"Authorization": f"Bearer {token}"} if token else {})})
        try:
            with urllib.request.urlopen(req, timeout=args.timeout) as r:
                _out(json.loads(r.read(1 << 20)))
                return 0
        except urllib.error.HTTPError as e:
            body = e.read(1 << 20)
            try:
                _out(json.loads(body))
            except ValueError:
                _out({"error": {"status": e.code, "message": body.decode("utf-8", "replace")[:500]}})
            return 1


def add_parser(sub: Any) -> None:
    ota = sub.add_parser("ota", help="signed over-the-air updates: keygen, build, sign, verify, push")
    osub = ota.add_subparsers(dest="cmd", required=True)
    p = osub.add_parser("keygen", help="make an ed25519 signing key pair")
    p.add_argument("--out", type=Path, required=True, help="directory for cuecam-ota.key (0600) and cuecam-ota.pub")
    p = osub.add_parser("build", help="build a signed bundle from a working tree")
    p.add_argument("--key", type=Path, required=True, help="private key file (from keygen)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tree", type=Path, default=ROOT, help="the cuecam working tree (default: this one)")
    p.add_argument("--version", help="default: firmware/__init__.py __version__")
    p.add_argument("--boards", nargs="+", default=BOARDS)
    p.add_argument("--min-version", default="0.0.0", help="oldest installed version this bundle may replace")
    p = osub.add_parser("sign", help="re-sign a bundle with another key (e.g. after a key rotation)")
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--old-pub", type=Path, nargs="+", required=True, help="public key(s) the bundle is signed with now")
    p.add_argument("--key", type=Path, required=True, help="the new private key")
    p.add_argument("--out", type=Path, required=True)
    p = osub.add_parser("verify", help="verify a bundle as a board would (signature, hashes, caps)")
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--pub", type=Path, nargs="+", required=True, help="trusted public key file(s)")
    p.add_argument("--board-kind", default="sim")
    p.add_argument("--installed", default="0.0.0", help="the version installed on the board")
    p = osub.add_parser("push", help="upload a bundle to a board (POST /v1/ota) with a progress bar")
    p.add_argument("--url", default=os.environ.get("CUECAM_URL", "http://127.0.0.1:8080"))
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--token-file", help="file holding the board's API token (default: $CUECAM_API_TOKEN)")
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
