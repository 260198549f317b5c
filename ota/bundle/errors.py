"""Bundle errors: one exception with a machine reason and a hint of what to do, and the caps."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, get_args

from firmware.config import BoardKind
from firmware.errors import CuecamError

BOARD_KINDS: tuple[str, ...] = get_args(BoardKind)

_REBUILD = "rebuild the bundle with ota.bundle.build_bundle"
_REFETCH = "the bundle is damaged or was tampered with: fetch or copy it again, or rebuild it"
_LAYOUT = "a bundle carries only the regular files its signed manifest lists, in manifest order: " + _REBUILD
_HINTS = {
    "not-a-bundle": "a bundle is the plain (uncompressed) tar that ota.bundle.build_bundle writes",
    "truncated": "the file is incomplete: fetch or copy it again",
    "corrupt-archive": _REFETCH,
    "trailing-data": _REFETCH,
    "bad-signature": "the manifest was changed after signing or signed by another key: rebuild and sign it with a trusted key",
    "unknown-key": "sign the bundle with a key this board trusts, or add that key's public half to the board's trusted keys",
    "bad-manifest": _REBUILD,
    "hash-mismatch": _REFETCH,
    "size-mismatch": _REFETCH,
    "path-traversal": _LAYOUT,
    "absolute-path": _LAYOUT,
    "bad-path": "paths are relative, '/'-separated, made of A-Z a-z 0-9 . _ + @ - and free of '.' and '..' parts",
    "path-conflict": "one path cannot be both a file and a folder: rename one of them",
    "symlink": _LAYOUT,
    "hardlink": _LAYOUT,
    "device-file": _LAYOUT,
    "directory": _LAYOUT,
    "sparse": _LAYOUT,
    "not-regular": _LAYOUT,
    "duplicate": _LAYOUT,
    "unexpected-file": _LAYOUT,
    "missing-file": _LAYOUT,
    "order": _LAYOUT,
    "too-large": "split the update or, if this is intended, raise the limits in ota.bundle.Caps on both ends",
    "too-many-files": "split the update or, if this is intended, raise Caps.max_files on both ends",
    "path-too-long": "shorten the path (Caps.max_path)",
    "downgrade": "install a bundle with a newer version than the installed one",
    "not-newer": "this version is already installed: build a bundle with a higher version",
    "below-floor": "the board refuses versions at or below its anti-rollback floor: build a bundle with a higher version",
    "too-old-to-update": "install an intermediate release first: this bundle needs at least its min_version installed",
    "wrong-board": "use the bundle built for this board kind, or add the kind to the bundle's boards",
    "bad-key": "key files hold the raw 32-byte ed25519 key as 64 hex digits: make one with ota.bundle.generate_keypair",
    "key-permissions": "a private key file must be readable by its owner only: chmod 600 it",
    "source-changed": "a source file changed while the bundle was being built: build it again",
    "staging-not-empty": "pass a staging directory that does not exist yet (or is empty)",
    "bad-staging": "pass a staging path whose parent directory exists",
    "staging-io": "check the free space and permissions of the staging file system",
    "bad-argument": "installed and floor versions are PEP 440 versions; board kinds are " + ", ".join(BOARD_KINDS),
}
REASONS = frozenset(_HINTS)


class BundleError(CuecamError):
    """A bundle (or a key, or an argument to build or verify one) is unusable.

    ``reason`` is a short machine code (see ``REASONS``); ``detail`` is what exactly is wrong and
    ``str(error)`` adds the bundle path and what to do about it.
    """

    exit_code = 2

    def __init__(self, reason: str, detail: str, *, path: Path | str | None = None) -> None:
        self.reason = reason
        self.detail = detail
        self.path = Path(path) if path is not None else None
        where = f"{path}: " if path is not None else ""
        hint = _HINTS.get(reason)
        super().__init__(f"{where}{detail} [{reason}]" + (f"; {hint}" if hint else ""))


def fail(reason: str, detail: str) -> NoReturn:
    raise BundleError(reason, detail)


@dataclass(frozen=True)
class Caps:
    """Hard limits checked before the corresponding bytes are read or written."""

    max_bundle_bytes: int = 256 * 1024 * 1024
    max_files: int = 5000
    max_path: int = 255
    max_manifest_bytes: int = 1024 * 1024
    max_file_bytes: int = 128 * 1024 * 1024


DEFAULT_CAPS = Caps()
