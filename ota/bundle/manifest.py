"""The manifest: its schema, its canonical bytes and its strict parser.

``manifest.json`` is UTF-8 JSON: ``format`` (1), ``version`` (canonical PEP 440), ``boards`` (board
kinds it runs on), ``min_version`` (the oldest installed version it may replace), ``created`` (ISO
8601 with a zone), ``files`` (``path``/``size``/``sha256`` of every payload file, sorted by path and
unique) and ``key_id`` (first 16 hex digits of the sha256 of the signing public key).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn

from packaging.version import InvalidVersion, Version

from ..slots import OtaError, parse_version
from .errors import DEFAULT_CAPS, Caps, fail
from .keys import KEY_ID_CHARS

FORMAT = 1
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
PAYLOAD_PREFIX = "payload/"
SIGNATURE_BYTES = 64

_MANIFEST_KEYS = frozenset({"format", "version", "boards", "min_version", "created", "files", "key_id"})
_FILE_KEYS = frozenset({"path", "size", "sha256"})
_COMPONENT = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._+@-]*")
_BOARD = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_KEY_ID = re.compile(r"[0-9a-f]{16}")


@dataclass(frozen=True)
class BundleFile:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class BundleManifest:
    format: int
    version: str
    boards: tuple[str, ...]
    min_version: str
    created: str
    files: tuple[BundleFile, ...]
    key_id: str

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "version": self.version,
            "boards": list(self.boards),
            "min_version": self.min_version,
            "created": self.created,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files],
            "key_id": self.key_id,
        }

    def to_json_bytes(self) -> bytes:
        return manifest_json_bytes(self.to_dict())


def manifest_json_bytes(manifest: dict[str, Any]) -> bytes:
    """How the builder serialises a manifest (the verifier checks the signed bytes as they are)."""
    return (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=True) + "\n").encode("ascii")


def check_relpath(path: object, caps: Caps = DEFAULT_CAPS, *, what: str = "path") -> str:
    """Validate a payload path (relative to the install root); raises :class:`BundleError`."""
    if not isinstance(path, str) or not path:
        fail("bad-path", f"{what} {path!r} is not a non-empty string")
    shown = repr(path if len(path) <= 80 else path[:77] + "...")
    if path.startswith("/") or path.startswith("\\"):
        fail("absolute-path", f"{what} {shown} is absolute")
    parts = path.split("/")
    if ".." in parts or ".." in path.split("\\"):
        fail("path-traversal", f"{what} {shown} climbs out of its folder with '..'")
    if len(path.encode("utf-8", "surrogatepass")) > caps.max_path:
        fail("path-too-long", f"{what} {shown} is longer than {caps.max_path} bytes")
    for part in parts:
        if part in ("", ".") or not _COMPONENT.fullmatch(part):
            fail("bad-path", f"{what} {shown} has a bad part {part!r}")
    return path


def _canonical_version(value: object, what: str, reason: str) -> Version:
    """A version the slot store can hold too: dotted decimal, 1 to 4 parts (ota.slots.parse_version),
    compared as PEP 440 versions."""
    if not isinstance(value, str):
        fail(reason, f"{what} {value!r} is not a string")
    try:
        parse_version(value)
    except OtaError:
        fail(reason, f"{what} {value!r} is not dotted decimal like 1.2.3 (1 to 4 numbers)")
    try:
        parsed = Version(value)
    except InvalidVersion:
        fail(reason, f"{what} {value!r} is not a PEP 440 version")
    if str(parsed) != value:
        fail(reason, f"{what} {value!r} is not in canonical form (write {str(parsed)!r})")
    return parsed


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            fail("bad-manifest", f"manifest repeats the key {k!r}")
        out[k] = v
    return out


def _no_constants(name: str) -> NoReturn:
    fail("bad-manifest", f"manifest holds the non-JSON number {name}")


def _exact_keys(obj: object, keys: frozenset[str], what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        fail("bad-manifest", f"{what} is not a JSON object")
    missing, extra = sorted(keys - obj.keys()), sorted(obj.keys() - keys)
    if missing or extra:
        fail("bad-manifest", f"{what} is missing {missing} / has unknown {extra} keys")
    return obj


def parse_manifest(data: bytes, caps: Caps = DEFAULT_CAPS) -> BundleManifest:
    """Strictly validate manifest.json bytes (call only on bytes whose signature verified)."""
    if len(data) > caps.max_manifest_bytes:
        fail("too-large", f"manifest.json is {len(data)} bytes, more than {caps.max_manifest_bytes}")
    try:
        raw = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        fail("bad-manifest", f"manifest.json is not valid UTF-8 JSON ({type(e).__name__}: {str(e)[:120]})")
    obj = _exact_keys(raw, _MANIFEST_KEYS, "the manifest")
    if type(obj["format"]) is not int or obj["format"] != FORMAT:
        fail("bad-manifest", f"manifest format {obj['format']!r} is not supported (this board reads format {FORMAT})")
    version = _canonical_version(obj["version"], "version", "bad-manifest")
    min_version = _canonical_version(obj["min_version"], "min_version", "bad-manifest")
    if min_version > version:
        fail("bad-manifest", f"min_version {min_version} is above the bundle's own version {version}")
    boards = obj["boards"]
    if (not isinstance(boards, list) or not boards or len(boards) > 64
            or not all(isinstance(b, str) and _BOARD.fullmatch(b) for b in boards) or len(set(boards)) != len(boards)):
        fail("bad-manifest", f"boards {str(boards)[:200]} is not a non-empty list of unique board kinds")
    created = obj["created"]
    try:
        if not isinstance(created, str) or len(created) > 64 or datetime.fromisoformat(created).tzinfo is None:
            raise ValueError
    except ValueError:
        fail("bad-manifest", f"created {str(created)[:80]!r} is not an ISO 8601 time with a time zone")
    kid = obj["key_id"]
    if not isinstance(kid, str) or not _KEY_ID.fullmatch(kid):
        fail("bad-manifest", f"key_id {str(kid)[:80]!r} is not {KEY_ID_CHARS} lowercase hex digits")

    entries = obj["files"]
    if not isinstance(entries, list) or not entries:
        fail("bad-manifest", "files is not a non-empty list")
    if len(entries) > caps.max_files:
        fail("too-many-files", f"the manifest lists {len(entries)} files, more than {caps.max_files}")
    files: list[BundleFile] = []
    folded: set[str] = set()
    for i, entry in enumerate(entries):
        fields = _exact_keys(entry, _FILE_KEYS, f"files[{i}]")
        path = check_relpath(fields["path"], caps, what=f"files[{i}].path")
        size, digest = fields["size"], fields["sha256"]
        if type(size) is not int or size < 0:
            fail("bad-manifest", f"files[{i}].size {size!r} is not a non-negative integer")
        if size > caps.max_file_bytes:
            fail("too-large", f"{path} declares {size} bytes, more than {caps.max_file_bytes}")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            fail("bad-manifest", f"files[{i}].sha256 is not 64 lowercase hex digits")
        if files and path <= files[-1].path:
            if path == files[-1].path:
                fail("duplicate", f"the manifest lists {path!r} twice")
            fail("bad-manifest", f"files are not sorted by path ({files[-1].path!r} comes before {path!r})")
        if path.casefold() in folded:
            fail("duplicate", f"the manifest lists {path!r} twice when case is ignored")
        folded.add(path.casefold())
        files.append(BundleFile(path, size, digest))
    paths = {f.path for f in files}
    for f in files:
        parts = f.path.split("/")
        for n in range(1, len(parts)):
            if "/".join(parts[:n]) in paths:
                fail("path-conflict", f"{'/'.join(parts[:n])!r} is a file and also the folder of {f.path!r}")
    total = sum(f.size for f in files)
    if total > caps.max_bundle_bytes:
        fail("too-large", f"the payload adds up to {total} bytes, more than {caps.max_bundle_bytes}")
    return BundleManifest(FORMAT, str(version), tuple(boards), str(min_version), created, tuple(files), kid)
