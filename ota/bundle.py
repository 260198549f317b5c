"""Signed OTA bundles: build them on a host, verify them on a board while unpacking into staging.

Format 1 is a plain (uncompressed) POSIX tar, as ``tarfile`` and GNU tar write it, whose members
are, in this order:

``manifest.json``
    UTF-8 JSON: ``format`` (1), ``version`` (canonical PEP 440), ``boards`` (board kinds it runs
    on), ``min_version`` (the oldest installed version it may replace), ``created`` (ISO 8601 with
    a zone), ``files`` (``path``/``size``/``sha256`` of every payload file, sorted by path and
    unique) and ``key_id`` (first 16 hex digits of the sha256 of the signing public key).
``manifest.sig``
    The 64-byte raw ed25519 signature over the exact bytes of ``manifest.json``.
``payload/<path>``
    One regular file per manifest entry, in manifest order.

The design follows what TUF, RAUC and Mender learned the hard way:

* Nothing is trusted before the signature verifies: the signature is checked against every trusted
  key before the manifest is parsed, and nothing touches the disk until it has verified (the
  ``key_id`` of an unsigned manifest is only read to say "unknown key" rather than "bad signature").
* The signed manifest says exactly which files, of which size and hash, come in which order; the
  tar is read as a stream (``tarfile`` mode ``"r|"``: no seeking, nothing extracted by tarfile)
  and each member is checked against it before a byte of it is written. Each payload file is
  copied in chunks, hashed on the way, into the staging directory only, through directory file
  descriptors and ``O_NOFOLLOW | O_EXCL``, so neither a crafted name nor a symlink planted in the
  staging tree can write anywhere else.
* The archive itself must be canonical: headers with the checksum field exactly as tar writes it,
  zero padding after each member, the end-of-archive marker and nothing but zero padding up to a
  whole 10240-byte record. So every single-bit change anywhere in a bundle is rejected, not only
  the ones that land in signed bytes.
* Hard caps (:class:`Caps`) bound the bundle size, the number of files, path lengths and file
  sizes; the bundle's size is checked before anything is read, and extended tar headers are
  capped before ``tarfile`` reads them (a tar bomb cannot make it allocate or loop).
* Anti-rollback: a bundle must be newer than the installed version and than the floor version,
  and the installed version must be at least the bundle's ``min_version``.
* On any failure the staging directory is removed entirely; nothing outside it is ever written.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, NoReturn, get_args

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from packaging.version import InvalidVersion, Version

from firmware.config import BoardKind
from firmware.errors import CuecamError
from firmware.fsutil import atomic_write_bytes, atomic_writer

from .slots import OtaError, parse_version

FORMAT = 1
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
PAYLOAD_PREFIX = "payload/"
SIGNATURE_BYTES = 64
KEY_BYTES = 32
KEY_ID_CHARS = 16
BOARD_KINDS: tuple[str, ...] = get_args(BoardKind)

BLOCK = tarfile.BLOCKSIZE  # 512
RECORD = tarfile.RECORDSIZE  # 10240: tarfile and GNU tar pad archives to whole records
CHUNK = 1 << 20
MAX_EXTENDED_HEADER = 64 * 1024  # pax / GNU long-name headers: a few hundred bytes in practice
MAX_KEY_FILE = 1024

_MANIFEST_KEYS = frozenset({"format", "version", "boards", "min_version", "created", "files", "key_id"})
_FILE_KEYS = frozenset({"path", "size", "sha256"})
_COMPONENT = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._+@-]*")
_BOARD = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_KEY_ID = re.compile(r"[0-9a-f]{16}")
_COMPRESSED = {
    b"\x1f\x8b": "gzip",
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"\x04\x22\x4d\x18": "lz4",
    b"PK\x03\x04": "zip",
}

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


def _fail(reason: str, detail: str) -> NoReturn:
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


# --- keys -------------------------------------------------------------------------------------


def _check_key(key: bytes, what: str) -> bytes:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
        _fail("bad-key", f"{what} must be {KEY_BYTES} raw bytes")
    return bytes(key)


def generate_keypair() -> tuple[bytes, bytes]:
    """A new ed25519 key pair as (raw private 32 bytes, raw public 32 bytes)."""
    private = Ed25519PrivateKey.generate()
    return private.private_bytes_raw(), private.public_key().public_bytes_raw()


def public_key_from_private(private_key: bytes) -> bytes:
    private = Ed25519PrivateKey.from_private_bytes(_check_key(private_key, "the private key"))
    return private.public_key().public_bytes_raw()


def public_key_hex(public_key: bytes) -> str:
    return _check_key(public_key, "the public key").hex()


def key_id(public_key: bytes) -> str:
    """What a manifest's ``key_id`` says for bundles signed by this key."""
    return hashlib.sha256(_check_key(public_key, "the public key")).hexdigest()[:KEY_ID_CHARS]


def sign_manifest(manifest_bytes: bytes, private_key: bytes) -> bytes:
    """The raw 64-byte ed25519 signature that goes into ``manifest.sig``."""
    return Ed25519PrivateKey.from_private_bytes(_check_key(private_key, "the private key")).sign(manifest_bytes)


def save_private_key(path: Path, key: bytes) -> None:
    """Write the key as hex text, mode 0600, atomically."""
    atomic_write_bytes(Path(path), (_check_key(key, "the private key").hex() + "\n").encode("ascii"), mode=0o600)


def save_public_key(path: Path, key: bytes) -> None:
    atomic_write_bytes(Path(path), (public_key_hex(key) + "\n").encode("ascii"), mode=0o644)


def _read_key_file(path: Path, *, private: bool) -> bytes:
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise BundleError("bad-key", f"cannot open the key file: {e.strerror}", path=path) from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BundleError("bad-key", "is not a regular file", path=path)
        if private and st.st_mode & 0o077:
            raise BundleError("key-permissions", f"private key file has mode {stat.S_IMODE(st.st_mode):04o}", path=path)
        data = f.read(MAX_KEY_FILE + 1)
    try:
        key = bytes.fromhex(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise BundleError("bad-key", "does not hold a hex-encoded key", path=path) from None
    if len(key) != KEY_BYTES:
        raise BundleError("bad-key", f"holds {len(key)} bytes, an ed25519 key has {KEY_BYTES}", path=path)
    return key


def load_private_key(path: Path) -> bytes:
    """Read a key written by :func:`save_private_key`; refuses files others can read."""
    return _read_key_file(path, private=True)


def load_public_key(path: Path) -> bytes:
    return _read_key_file(path, private=False)


# --- manifest ---------------------------------------------------------------------------------


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
        _fail("bad-path", f"{what} {path!r} is not a non-empty string")
    shown = repr(path if len(path) <= 80 else path[:77] + "...")
    if path.startswith("/") or path.startswith("\\"):
        _fail("absolute-path", f"{what} {shown} is absolute")
    parts = path.split("/")
    if ".." in parts or ".." in path.split("\\"):
        _fail("path-traversal", f"{what} {shown} climbs out of its folder with '..'")
    if len(path.encode("utf-8", "surrogatepass")) > caps.max_path:
        _fail("path-too-long", f"{what} {shown} is longer than {caps.max_path} bytes")
    for part in parts:
        if part in ("", ".") or not _COMPONENT.fullmatch(part):
            _fail("bad-path", f"{what} {shown} has a bad part {part!r}")
    return path


def _canonical_version(value: object, what: str, reason: str) -> Version:
    """A version the slot store can hold too: dotted decimal, 1 to 4 parts (ota.slots.parse_version),
    compared as PEP 440 versions."""
    if not isinstance(value, str):
        _fail(reason, f"{what} {value!r} is not a string")
    try:
        parse_version(value)
    except OtaError:
        _fail(reason, f"{what} {value!r} is not dotted decimal like 1.2.3 (1 to 4 numbers)")
    try:
        parsed = Version(value)
    except InvalidVersion:
        _fail(reason, f"{what} {value!r} is not a PEP 440 version")
    if str(parsed) != value:
        _fail(reason, f"{what} {value!r} is not in canonical form (write {str(parsed)!r})")
    return parsed


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            _fail("bad-manifest", f"manifest repeats the key {k!r}")
        out[k] = v
    return out


def _no_constants(name: str) -> NoReturn:
    _fail("bad-manifest", f"manifest holds the non-JSON number {name}")


def _exact_keys(obj: object, keys: frozenset[str], what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        _fail("bad-manifest", f"{what} is not a JSON object")
    missing, extra = sorted(keys - obj.keys()), sorted(obj.keys() - keys)
    if missing or extra:
        _fail("bad-manifest", f"{what} is missing {missing} / has unknown {extra} keys")
    return obj


def parse_manifest(data: bytes, caps: Caps = DEFAULT_CAPS) -> BundleManifest:
    """Strictly validate manifest.json bytes (call only on bytes whose signature verified)."""
    if len(data) > caps.max_manifest_bytes:
        _fail("too-large", f"manifest.json is {len(data)} bytes, more than {caps.max_manifest_bytes}")
    try:
        raw = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        _fail("bad-manifest", f"manifest.json is not valid UTF-8 JSON ({type(e).__name__}: {str(e)[:120]})")
    obj = _exact_keys(raw, _MANIFEST_KEYS, "the manifest")
    if type(obj["format"]) is not int or obj["format"] != FORMAT:
        _fail("bad-manifest", f"manifest format {obj['format']!r} is not supported (this board reads format {FORMAT})")
    version = _canonical_version(obj["version"], "version", "bad-manifest")
    min_version = _canonical_version(obj["min_version"], "min_version", "bad-manifest")
    if min_version > version:
        _fail("bad-manifest", f"min_version {min_version} is above the bundle's own version {version}")
    boards = obj["boards"]
    if (not isinstance(boards, list) or not boards or len(boards) > 64
            or not all(isinstance(b, str) and _BOARD.fullmatch(b) for b in boards) or len(set(boards)) != len(boards)):
        _fail("bad-manifest", f"boards {str(boards)[:200]} is not a non-empty list of unique board kinds")
    created = obj["created"]
    try:
        if not isinstance(created, str) or len(created) > 64 or datetime.fromisoformat(created).tzinfo is None:
            raise ValueError
    except ValueError:
        _fail("bad-manifest", f"created {str(created)[:80]!r} is not an ISO 8601 time with a time zone")
    kid = obj["key_id"]
    if not isinstance(kid, str) or not _KEY_ID.fullmatch(kid):
        _fail("bad-manifest", f"key_id {str(kid)[:80]!r} is not {KEY_ID_CHARS} lowercase hex digits")

    entries = obj["files"]
    if not isinstance(entries, list) or not entries:
        _fail("bad-manifest", "files is not a non-empty list")
    if len(entries) > caps.max_files:
        _fail("too-many-files", f"the manifest lists {len(entries)} files, more than {caps.max_files}")
    files: list[BundleFile] = []
    folded: set[str] = set()
    for i, entry in enumerate(entries):
        fields = _exact_keys(entry, _FILE_KEYS, f"files[{i}]")
        path = check_relpath(fields["path"], caps, what=f"files[{i}].path")
        size, digest = fields["size"], fields["sha256"]
        if type(size) is not int or size < 0:
            _fail("bad-manifest", f"files[{i}].size {size!r} is not a non-negative integer")
        if size > caps.max_file_bytes:
            _fail("too-large", f"{path} declares {size} bytes, more than {caps.max_file_bytes}")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            _fail("bad-manifest", f"files[{i}].sha256 is not 64 lowercase hex digits")
        if files and path <= files[-1].path:
            if path == files[-1].path:
                _fail("duplicate", f"the manifest lists {path!r} twice")
            _fail("bad-manifest", f"files are not sorted by path ({files[-1].path!r} comes before {path!r})")
        if path.casefold() in folded:
            _fail("duplicate", f"the manifest lists {path!r} twice when case is ignored")
        folded.add(path.casefold())
        files.append(BundleFile(path, size, digest))
    paths = {f.path for f in files}
    for f in files:
        parts = f.path.split("/")
        for n in range(1, len(parts)):
            if "/".join(parts[:n]) in paths:
                _fail("path-conflict", f"{'/'.join(parts[:n])!r} is a file and also the folder of {f.path!r}")
    total = sum(f.size for f in files)
    if total > caps.max_bundle_bytes:
        _fail("too-large", f"the payload adds up to {total} bytes, more than {caps.max_bundle_bytes}")
    return BundleManifest(FORMAT, str(version), tuple(boards), str(min_version), created, tuple(files), kid)


# --- build ------------------------------------------------------------------------------------


class _HashingReader:
    """File-like wrapper handed to ``TarFile.addfile``: hashes what tarfile copies."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.sha256 = hashlib.sha256()
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.sha256.update(data)
        self.count += len(data)
        return data


def _hash_source(src: Path, arcname: str) -> tuple[int, str]:
    try:
        st = src.stat()
    except OSError as e:
        _fail("missing-file", f"source of {arcname!r} ({src}) cannot be read: {e.strerror}")
    if not stat.S_ISREG(st.st_mode):
        _fail("not-regular", f"source of {arcname!r} ({src}) is not a regular file")
    h = hashlib.sha256()
    size = 0
    with src.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def build_bundle(
    files: dict[str, Path],
    *,
    version: str,
    boards: list[str],
    min_version: str,
    private_key: bytes,
    out: Path,
    created: datetime | None = None,
    caps: Caps = DEFAULT_CAPS,
) -> Path:
    """Write a signed bundle of ``files`` ({install path: source file}) to ``out`` atomically.

    Arc names are validated exactly as :func:`verify_bundle` validates them, and the manifest is
    re-parsed with :func:`parse_manifest` before signing, so a built bundle always passes the
    structural checks of a board with the same caps. Versions are written in canonical form.
    """
    out = Path(out)
    public = public_key_from_private(private_key)
    for what, value in (("version", version), ("min_version", min_version)):
        try:
            Version(value)
        except (InvalidVersion, TypeError):
            _fail("bad-manifest", f"{what} {value!r} is not a PEP 440 version")
    unknown = [b for b in boards if b not in BOARD_KINDS]
    if not boards or unknown:
        _fail("bad-manifest", f"boards must be a non-empty list of {', '.join(BOARD_KINDS)}; unknown: {unknown}")
    if len(files) > caps.max_files:
        _fail("too-many-files", f"{len(files)} files, more than {caps.max_files}")
    entries: list[BundleFile] = []
    for arcname in sorted(files):
        check_relpath(arcname, caps, what="arc name")
        size, digest = _hash_source(Path(files[arcname]), arcname)
        entries.append(BundleFile(arcname, size, digest))
    when = (created or datetime.now(UTC)).replace(microsecond=0)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    manifest = BundleManifest(
        FORMAT, str(Version(version)), tuple(boards), str(Version(min_version)), when.isoformat(), tuple(entries), key_id(public)
    )
    manifest_bytes = manifest.to_json_bytes()
    parse_manifest(manifest_bytes, caps)  # the same strict checks a board applies
    signature = sign_manifest(manifest_bytes, private_key)

    mtime = int(when.timestamp())

    def info(name: str, size: int) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.size, ti.mtime, ti.mode, ti.type = size, mtime, 0o644, tarfile.REGTYPE
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = ""
        return ti

    with atomic_writer(out, mode=0o644) as f:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for name, data in ((MANIFEST_NAME, manifest_bytes), (SIGNATURE_NAME, signature)):
                tf.addfile(info(name, len(data)), _BytesReader(data))
            for entry in entries:
                with Path(files[entry.path]).open("rb") as src:
                    reader = _HashingReader(src)
                    try:
                        tf.addfile(info(PAYLOAD_PREFIX + entry.path, entry.size), reader)
                    except OSError as e:
                        _fail("source-changed", f"{files[entry.path]} shrank while being read ({e})")
                    if reader.count != entry.size or reader.sha256.hexdigest() != entry.sha256:
                        _fail("source-changed", f"{files[entry.path]} changed while being read")
        f.flush()
        size = f.tell()
        if size > caps.max_bundle_bytes:
            _fail("too-large", f"the bundle would be {size} bytes, more than {caps.max_bundle_bytes}")
    return out


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self._data, self._pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n < 0 else self._pos + n
        chunk = self._data[self._pos:end]
        self._pos += len(chunk)
        return chunk


# --- verify -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedBundle:
    manifest: BundleManifest
    root: Path  # the staging directory, holding manifest.files at their paths
    key_id: str


class _StrictTarInfo(tarfile.TarInfo):
    """TarInfo that refuses what a bundle never contains before tarfile acts on it.

    ``_proc_member`` is tarfile's documented hook for subclasses (see its source). Extended
    headers (pax, GNU long names) are size-capped before tarfile reads them, pax global headers
    and every flavour of sparse member are refused outright, and so are negative sizes.
    """

    def _proc_member(self, tarfile_: Any) -> Any:
        if self.size < 0:
            _fail("corrupt-archive", f"member {self.name[:80]!r} declares a negative size")
        if self.type == tarfile.GNUTYPE_SPARSE:
            _fail("sparse", f"member {self.name[:80]!r} is a sparse file")
        if self.type == tarfile.XGLTYPE:
            _fail("corrupt-archive", "the archive holds a pax global header")
        extended = (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
        if self.type in extended and self.size > MAX_EXTENDED_HEADER:
            _fail("too-large", f"an extended tar header of {self.size} bytes (more than {MAX_EXTENDED_HEADER})")
        member = super()._proc_member(tarfile_)  # type: ignore[misc]
        if member.sparse is not None:
            _fail("sparse", f"member {member.name[:80]!r} is a sparse file")
        return member


def _type_problem(m: tarfile.TarInfo) -> tuple[str, str] | None:
    name = repr(m.name[:120])
    if m.issym():
        return "symlink", f"member {name} is a symlink (to {m.linkname[:120]!r})"
    if m.islnk():
        return "hardlink", f"member {name} is a hard link (to {m.linkname[:120]!r})"
    if m.ischr() or m.isblk():
        return "device-file", f"member {name} is a device file"
    if m.isfifo():
        return "device-file", f"member {name} is a FIFO"
    if m.isdir():
        return "directory", f"member {name} is a directory entry"
    if m.sparse is not None or m.type == tarfile.GNUTYPE_SPARSE:
        return "sparse", f"member {name} is a sparse file"
    if m.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
        return "not-regular", f"member {name} has tar type {m.type!r}, not a regular file"
    return None


def _check_trusted(trusted_keys: Iterable[bytes]) -> list[bytes]:
    keys = [_check_key(k, "a trusted key") for k in trusted_keys]
    if not keys:
        _fail("unknown-key", "this board trusts no signing key")
    return keys


def _argument_version(value: str, what: str) -> Version:
    try:
        return Version(value)
    except (InvalidVersion, TypeError):
        _fail("bad-argument", f"{what} {value!r} is not a PEP 440 version")


def _claimed_key_id(manifest_bytes: bytes) -> str | None:
    """The key_id an unverified manifest claims, only to word the error (never trusted)."""
    try:
        raw = json.loads(manifest_bytes)
    except (ValueError, RecursionError):
        return None
    kid = raw.get("key_id") if isinstance(raw, dict) else None
    return kid if isinstance(kid, str) else None


def _verify_signature(manifest_bytes: bytes, signature: bytes, keys: list[bytes]) -> bytes:
    for pub in keys:
        try:
            Ed25519PublicKey.from_public_bytes(pub).verify(signature, manifest_bytes)
        except InvalidSignature:
            continue
        return pub
    claimed = _claimed_key_id(manifest_bytes)
    trusted = sorted(key_id(k) for k in keys)
    if claimed is not None and claimed not in trusted:
        _fail("unknown-key", f"the manifest claims signing key {claimed[:40]!r}, which is not trusted here (trusted: {trusted})")
    _fail("bad-signature", "manifest.sig does not verify manifest.json against any trusted key")


def _check_policy(manifest: BundleManifest, board_kind: str, installed: Version, floor: Version | None) -> None:
    if board_kind not in manifest.boards:
        _fail("wrong-board", f"the bundle is for {', '.join(manifest.boards)}, not for this {board_kind} board")
    version = Version(manifest.version)
    if floor is not None and version <= floor:
        _fail("below-floor", f"version {version} is not above the anti-rollback floor {floor}")
    if version < installed:
        _fail("downgrade", f"version {version} is older than the installed {installed}")
    if version == installed:
        _fail("not-newer", f"version {version} is already installed")
    if installed < Version(manifest.min_version):
        _fail("too-old-to-update", f"the bundle needs at least {manifest.min_version} installed; this board has {installed}")


class _Staging:
    """Creates files under one directory only, through directory fds with O_NOFOLLOW and O_EXCL."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self.dirs: set[str] = set()

    def close(self) -> None:
        os.close(self.fd)

    def _open_dir(self, parts: list[str]) -> int:
        fd = os.dup(self.fd)
        try:
            for i, part in enumerate(parts):
                rel = "/".join(parts[: i + 1])
                if rel not in self.dirs:
                    try:
                        os.mkdir(part, 0o755, dir_fd=fd)
                    except FileExistsError:
                        pass
                    self.dirs.add(rel)
                nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def create(self, relpath: str) -> int:
        *parents, name = relpath.split("/")
        dfd = self._open_dir(parents)
        try:
            return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dfd)
        finally:
            os.close(dfd)

    def sync_dirs(self) -> None:
        for rel in sorted(self.dirs, key=lambda d: -d.count("/")):
            dfd = os.open(rel, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        os.fsync(self.fd)


class _Reader:
    """One pass over one bundle: the stream, the raw fd for canonical-form checks, the staging."""

    def __init__(self, fd: int, size: int, caps: Caps) -> None:
        self.fd = fd
        self.size = size
        self.caps = caps
        self.file = os.fdopen(os.dup(fd), "rb")
        try:
            self.tar = tarfile.open(  # noqa: SIM115 - closed with the file in close()
                fileobj=self.file, mode="r|", tarinfo=_StrictTarInfo, encoding="utf-8", errors="strict"
            )
        except BundleError:
            self.file.close()
            raise
        except Exception as e:
            self.file.close()
            _fail("not-a-bundle", f"is not a tar archive ({e})")

    def close(self) -> None:
        self.file.close()

    def next(self) -> tarfile.TarInfo | None:
        try:
            member = self.tar.next()
        except BundleError:
            raise
        except tarfile.ReadError as e:
            if "unexpected end of data" in str(e):
                _fail("truncated", "the archive ends in the middle of a member")
            _fail("corrupt-archive", f"a tar header is damaged ({e})")
        except Exception as e:
            _fail("corrupt-archive", f"a tar header is damaged ({type(e).__name__}: {e})")
        if member is not None:
            self._check_header(member)
        return member

    def _pread(self, n: int, offset: int) -> bytes:
        data = os.pread(self.fd, n, offset)
        if len(data) != n:
            _fail("truncated", f"the archive ends at byte {self.size}, inside data expected up to byte {offset + n}")
        return data

    def _check_header(self, m: tarfile.TarInfo) -> None:
        """Every header's checksum field must read exactly as tar writes it ("%06o\\0 ")."""
        for offset in sorted({m.offset, m.offset_data - BLOCK}):
            block = self._pread(BLOCK, offset)
            unsigned_sum = sum(block[:148]) + 8 * 0x20 + sum(block[156:])  # POSIX: the field counts as spaces
            if block[148:156] != b"%06o\x00 " % unsigned_sum:
                _fail("corrupt-archive", f"the tar header at byte {offset} is not in canonical form")

    def check_padding(self, m: tarfile.TarInfo) -> None:
        pad = -m.size % BLOCK
        if pad and self._pread(pad, m.offset_data + m.size).count(0) != pad:
            _fail("corrupt-archive", f"the padding after member {m.name[:120]!r} is not zero")

    def read_small(self, m: tarfile.TarInfo) -> bytes:
        src = self.tar.extractfile(m)
        assert src is not None  # a regular member, checked by the caller
        try:
            data = src.read(m.size)
        except tarfile.ReadError:
            _fail("truncated", f"the archive ends inside member {m.name!r}")
        if len(data) != m.size:
            _fail("truncated", f"the archive ends inside member {m.name!r}")
        self.check_padding(m)
        return data

    def copy(self, m: tarfile.TarInfo, staging: _Staging, relpath: str) -> str:
        src = self.tar.extractfile(m)
        assert src is not None
        h = hashlib.sha256()
        try:
            out = staging.create(relpath)
        except OSError as e:
            _fail("staging-io", f"cannot create {relpath!r} in the staging directory: {e.strerror}")
        try:
            remaining = m.size
            while remaining:
                try:
                    chunk = src.read(min(CHUNK, remaining))
                except tarfile.ReadError:
                    chunk = b""
                if not chunk:
                    _fail("truncated", f"the archive ends inside member {m.name!r}")
                h.update(chunk)
                remaining -= len(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view):]
            os.fsync(out)
        except OSError as e:
            _fail("staging-io", f"cannot write {relpath!r} in the staging directory: {e.strerror}")
        finally:
            os.close(out)
        return h.hexdigest()

    def check_end(self) -> None:
        """After the last member: the end-of-archive marker, then zero padding to a whole record."""
        offset = self.tar.offset
        tail = self.size - offset
        if tail < 2 * BLOCK:
            _fail("truncated", "the archive ends without its end-of-archive marker")
        limit = min(tail, 2 * BLOCK + RECORD)
        pos = 0
        while pos < limit:
            data = self._pread(min(CHUNK, limit - pos), offset + pos)
            if data.count(0) != len(data):
                at = offset + pos + next(i for i, b in enumerate(data) if b)
                _fail("corrupt-archive", f"unexpected data at byte {at}, where the archive should have ended")
            pos += len(data)
        if self.size % RECORD:
            _fail("truncated", f"the archive is {self.size} bytes, not a whole number of {RECORD}-byte records")
        if tail - 2 * BLOCK >= RECORD:
            _fail("trailing-data", f"{tail - 2 * BLOCK} bytes follow the end-of-archive marker")


def _check_staging(staging_dir: Path) -> bool:
    """True when the staging dir already exists (and is an empty real directory)."""
    try:
        st = os.lstat(staging_dir)
    except FileNotFoundError:
        if not staging_dir.parent.is_dir():
            raise BundleError("bad-staging", "the parent of the staging directory does not exist", path=staging_dir) from None
        return False
    if not stat.S_ISDIR(st.st_mode):
        raise BundleError("bad-staging", "the staging path exists and is not a directory", path=staging_dir)
    if os.listdir(staging_dir):
        raise BundleError("staging-not-empty", "the staging directory is not empty", path=staging_dir)
    return True


def _remove_staging(staging_dir: Path) -> None:
    try:
        if staging_dir.is_symlink() or not staging_dir.is_dir():
            staging_dir.unlink(missing_ok=True)
        else:
            shutil.rmtree(staging_dir)
    except FileNotFoundError:
        pass


def _expected_member(
    m: tarfile.TarInfo, expected: str | None, seen: set[str], listed: set[str], caps: Caps
) -> None:
    """Raise unless ``m`` is the regular file ``payload/<expected>``."""
    problem = _type_problem(m)
    if problem is not None:
        _fail(*problem)
    name = m.name
    if expected is not None and name == PAYLOAD_PREFIX + expected:
        return
    shown = repr(name[:120])
    if name.startswith("/"):
        _fail("absolute-path", f"member {shown} has an absolute path")
    if ".." in name.split("/"):
        _fail("path-traversal", f"member {shown} climbs out of the payload with '..'")
    want = f"payload/{expected}" if expected is not None else "the end of the archive"
    if name in (MANIFEST_NAME, SIGNATURE_NAME):
        _fail("duplicate", f"member {shown} appears twice (expected {want})")
    if not name.startswith(PAYLOAD_PREFIX):
        _fail("unexpected-file", f"member {shown} is not in the signed manifest (expected {want})")
    rel = check_relpath(name[len(PAYLOAD_PREFIX):], caps, what="member")
    if rel in seen:
        _fail("duplicate", f"member {shown} appears twice")
    if rel in listed:
        _fail("order", f"member {shown} is out of manifest order (expected {want})")
    _fail("unexpected-file", f"member {shown} is not in the signed manifest (expected {want})")


def verify_bundle(
    path: Path,
    trusted_keys: list[bytes],
    *,
    board_kind: str,
    installed_version: str,
    floor_version: str | None,
    staging_dir: Path,
    caps: Caps = DEFAULT_CAPS,
) -> VerifiedBundle:
    """Verify ``path`` and unpack its payload into ``staging_dir``; raise :class:`BundleError`.

    ``staging_dir`` must not exist (its parent must) or be an empty directory. It is created only
    once the signature and the manifest have been verified; on any failure it is removed entirely
    (unless the failure is that it was unusable to begin with). Nothing outside it is written.
    The version policy: the bundle's version must be above ``floor_version`` ("below-floor"),
    not below ``installed_version`` ("downgrade"), not equal to it ("not-newer"), and
    ``installed_version`` must be at least the bundle's ``min_version`` ("too-old-to-update").
    """
    path, staging_dir = Path(path), Path(staging_dir)
    _check_staging(staging_dir)
    try:
        return _verify(path, trusted_keys, board_kind, installed_version, floor_version, staging_dir, caps)
    except BundleError as e:
        _remove_staging(staging_dir)
        if e.path is None:
            raise BundleError(e.reason, e.detail, path=path) from None
        raise
    except BaseException:
        _remove_staging(staging_dir)
        raise


def _verify(
    path: Path,
    trusted_keys: list[bytes],
    board_kind: str,
    installed_version: str,
    floor_version: str | None,
    staging_dir: Path,
    caps: Caps,
) -> VerifiedBundle:
    keys = _check_trusted(trusted_keys)
    if board_kind not in BOARD_KINDS:
        _fail("bad-argument", f"board kind {board_kind!r} is unknown")
    installed = _argument_version(installed_version, "installed version")
    floor = _argument_version(floor_version, "floor version") if floor_version is not None else None

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        _fail("not-a-bundle", f"cannot be opened: {e.strerror}")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            _fail("not-a-bundle", "is not a regular file")
        size = st.st_size
        if size > caps.max_bundle_bytes:
            _fail("too-large", f"is {size} bytes, more than {caps.max_bundle_bytes}")
        if size == 0:
            _fail("not-a-bundle", "the file is empty (0 bytes)")
        head = os.pread(fd, 8, 0)
        for magic, kind in _COMPRESSED.items():
            if head.startswith(magic):
                _fail("not-a-bundle", f"is {kind}-compressed; bundles are plain tar files")
        os.set_blocking(fd, True)
        reader = _Reader(fd, size, caps)
        try:
            return _verify_stream(reader, keys, board_kind, installed, floor, staging_dir, caps)
        finally:
            reader.close()
    finally:
        os.close(fd)


def _regular(m: tarfile.TarInfo) -> None:
    problem = _type_problem(m)
    if problem is not None:
        _fail(*problem)


def _verify_stream(
    reader: _Reader,
    keys: list[bytes],
    board_kind: str,
    installed: Version,
    floor: Version | None,
    staging_dir: Path,
    caps: Caps,
) -> VerifiedBundle:
    first = reader.next()
    if first is None:
        _fail("not-a-bundle", "is an empty tar archive")
    if first.name != MANIFEST_NAME:
        if first.name == SIGNATURE_NAME or first.name.startswith(PAYLOAD_PREFIX):
            _fail("order", f"the first member is {first.name[:120]!r}, not {MANIFEST_NAME}")
        _fail("not-a-bundle", f"the first member is {first.name[:120]!r}, not {MANIFEST_NAME}")
    _regular(first)
    if first.size > caps.max_manifest_bytes:
        _fail("too-large", f"manifest.json is {first.size} bytes, more than {caps.max_manifest_bytes}")
    manifest_bytes = reader.read_small(first)

    second = reader.next()
    if second is None:
        reader.check_end()
        _fail("missing-file", f"{SIGNATURE_NAME} is missing")
    if second.name != SIGNATURE_NAME:
        if second.name == MANIFEST_NAME:
            _fail("duplicate", f"{MANIFEST_NAME} appears twice")
        _fail("missing-file", f"the second member is {second.name[:120]!r}: {SIGNATURE_NAME} is missing")
    _regular(second)
    if second.size != SIGNATURE_BYTES:
        _fail("bad-signature", f"{SIGNATURE_NAME} is {second.size} bytes, an ed25519 signature is {SIGNATURE_BYTES}")
    signature = reader.read_small(second)

    signer = _verify_signature(manifest_bytes, signature, keys)
    manifest = parse_manifest(manifest_bytes, caps)
    if manifest.key_id != key_id(signer):
        _fail("bad-manifest", f"key_id {manifest.key_id} does not name the key that signed it ({key_id(signer)})")
    _check_policy(manifest, board_kind, installed, floor)

    if not staging_dir.exists():
        os.mkdir(staging_dir, 0o755)
    staging = _Staging(staging_dir)
    try:
        listed = {f.path for f in manifest.files}
        seen: set[str] = set()
        for entry in manifest.files:
            m = reader.next()
            if m is None:
                reader.check_end()
                _fail("missing-file", f"payload/{entry.path} is missing")
            _expected_member(m, entry.path, seen, listed, caps)
            if m.size != entry.size:
                _fail("size-mismatch", f"payload/{entry.path} is {m.size} bytes; the signed manifest says {entry.size}")
            digest = reader.copy(m, staging, entry.path)
            if digest != entry.sha256:
                _fail("hash-mismatch",
                      f"payload/{entry.path} has sha256 {digest[:16]}…; the signed manifest says {entry.sha256[:16]}…")
            reader.check_padding(m)
            seen.add(entry.path)
        extra = reader.next()
        if extra is not None:
            _expected_member(extra, None, seen, listed, caps)
        reader.check_end()
        staging.sync_dirs()
    finally:
        staging.close()
    return VerifiedBundle(manifest=manifest, root=staging_dir, key_id=manifest.key_id)
