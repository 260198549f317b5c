"""The board side: verify a bundle and unpack its payload into a staging directory.

Nothing is trusted before the signature verifies: it is checked against every trusted key before
the manifest is parsed, and nothing touches the disk until it has verified (the ``key_id`` of an
unsigned manifest is only read to say "unknown key" rather than "bad signature"). Then the signed
manifest says exactly which files, of which size and hash, come in which order; each member of
the container is checked against it before a byte of it is written, copied in chunks, hashed on
the way, into the staging directory only, through directory file descriptors and
``O_NOFOLLOW | O_EXCL``, so neither a crafted name nor a symlink planted in the staging tree can
write anywhere else. On any failure the staging directory is removed entirely.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from packaging.version import InvalidVersion, Version

from .container import Member, TarReader
from .errors import BOARD_KINDS, DEFAULT_CAPS, BundleError, Caps, fail
from .keys import check_key, key_id
from .manifest import (
    MANIFEST_NAME,
    PAYLOAD_PREFIX,
    SIGNATURE_BYTES,
    SIGNATURE_NAME,
    BundleManifest,
    check_relpath,
    parse_manifest,
)

_COMPRESSED = {
    b"\x1f\x8b": "gzip",
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"\x04\x22\x4d\x18": "lz4",
    b"PK\x03\x04": "zip",
}


@dataclass(frozen=True)
class VerifiedBundle:
    manifest: BundleManifest
    root: Path  # the staging directory, holding manifest.files at their paths
    key_id: str


def _check_trusted(trusted_keys: Iterable[bytes]) -> list[bytes]:
    keys = [check_key(k, "a trusted key") for k in trusted_keys]
    if not keys:
        fail("unknown-key", "this board trusts no signing key")
    return keys


def _argument_version(value: str, what: str) -> Version:
    try:
        return Version(value)
    except (InvalidVersion, TypeError):
        fail("bad-argument", f"{what} {value!r} is not a PEP 440 version")


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
        fail("unknown-key", f"the manifest claims signing key {claimed[:40]!r}, which is not trusted here (trusted: {trusted})")
    fail("bad-signature", "manifest.sig does not verify manifest.json against any trusted key")


def _check_policy(manifest: BundleManifest, board_kind: str, installed: Version, floor: Version | None) -> None:
    if board_kind not in manifest.boards:
        fail("wrong-board", f"the bundle is for {', '.join(manifest.boards)}, not for this {board_kind} board")
    version = Version(manifest.version)
    if floor is not None and version <= floor:
        fail("below-floor", f"version {version} is not above the anti-rollback floor {floor}")
    if version < installed:
        fail("downgrade", f"version {version} is older than the installed {installed}")
    if version == installed:
        fail("not-newer", f"version {version} is already installed")
    if installed < Version(manifest.min_version):
        fail("too-old-to-update", f"the bundle needs at least {manifest.min_version} installed; this board has {installed}")


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


def _copy(reader: TarReader, m: Member, staging: _Staging, relpath: str) -> str:
    """Copy a payload member into the staging directory, hashing it on the way; fsynced."""
    try:
        out = staging.create(relpath)
    except OSError as e:
        fail("staging-io", f"cannot create {relpath!r} in the staging directory: {e.strerror}")

    def write(view: memoryview) -> None:
        while view:
            view = view[os.write(out, view):]

    try:
        digest = reader.copy(m, write)
        os.fsync(out)
    except OSError as e:
        fail("staging-io", f"cannot write {relpath!r} in the staging directory: {e.strerror}")
    finally:
        os.close(out)
    return digest


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
    m: Member, expected: str | None, seen: set[str], listed: set[str], caps: Caps
) -> None:
    """Raise unless ``m`` is the regular file ``payload/<expected>``."""
    problem = m.type_problem()
    if problem is not None:
        fail(*problem)
    name = m.name
    if expected is not None and name == PAYLOAD_PREFIX + expected:
        return
    shown = repr(name[:120])
    if name.startswith("/"):
        fail("absolute-path", f"member {shown} has an absolute path")
    if ".." in name.split("/"):
        fail("path-traversal", f"member {shown} climbs out of the payload with '..'")
    want = f"payload/{expected}" if expected is not None else "the end of the archive"
    if name in (MANIFEST_NAME, SIGNATURE_NAME):
        fail("duplicate", f"member {shown} appears twice (expected {want})")
    if not name.startswith(PAYLOAD_PREFIX):
        fail("unexpected-file", f"member {shown} is not in the signed manifest (expected {want})")
    rel = check_relpath(name[len(PAYLOAD_PREFIX):], caps, what="member")
    if rel in seen:
        fail("duplicate", f"member {shown} appears twice")
    if rel in listed:
        fail("order", f"member {shown} is out of manifest order (expected {want})")
    fail("unexpected-file", f"member {shown} is not in the signed manifest (expected {want})")


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
        fail("bad-argument", f"board kind {board_kind!r} is unknown")
    installed = _argument_version(installed_version, "installed version")
    floor = _argument_version(floor_version, "floor version") if floor_version is not None else None

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        fail("not-a-bundle", f"cannot be opened: {e.strerror}")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            fail("not-a-bundle", "is not a regular file")
        size = st.st_size
        if size > caps.max_bundle_bytes:
            fail("too-large", f"is {size} bytes, more than {caps.max_bundle_bytes}")
        if size == 0:
            fail("not-a-bundle", "the file is empty (0 bytes)")
        head = os.pread(fd, 8, 0)
        for magic, kind in _COMPRESSED.items():
            if head.startswith(magic):
                fail("not-a-bundle", f"is {kind}-compressed; bundles are plain tar files")
        os.set_blocking(fd, True)
        return _verify_stream(TarReader(fd, size), keys, board_kind, installed, floor, staging_dir, caps)
    finally:
        os.close(fd)


def _regular(m: Member) -> None:
    problem = m.type_problem()
    if problem is not None:
        fail(*problem)


def _verify_stream(
    reader: TarReader,
    keys: list[bytes],
    board_kind: str,
    installed: Version,
    floor: Version | None,
    staging_dir: Path,
    caps: Caps,
) -> VerifiedBundle:
    first = reader.next()
    if first is None:
        fail("not-a-bundle", "is an empty tar archive")
    if first.name != MANIFEST_NAME:
        if first.name == SIGNATURE_NAME or first.name.startswith(PAYLOAD_PREFIX):
            fail("order", f"the first member is {first.name[:120]!r}, not {MANIFEST_NAME}")
        fail("not-a-bundle", f"the first member is {first.name[:120]!r}, not {MANIFEST_NAME}")
    _regular(first)
    if first.size > caps.max_manifest_bytes:
        fail("too-large", f"manifest.json is {first.size} bytes, more than {caps.max_manifest_bytes}")
    manifest_bytes = reader.read_small(first)

    second = reader.next()
    if second is None:
        reader.check_end()
        fail("missing-file", f"{SIGNATURE_NAME} is missing")
    if second.name != SIGNATURE_NAME:
        if second.name == MANIFEST_NAME:
            fail("duplicate", f"{MANIFEST_NAME} appears twice")
        fail("missing-file", f"the second member is {second.name[:120]!r}: {SIGNATURE_NAME} is missing")
    _regular(second)
    if second.size != SIGNATURE_BYTES:
        fail("bad-signature", f"{SIGNATURE_NAME} is {second.size} bytes, an ed25519 signature is {SIGNATURE_BYTES}")
    signature = reader.read_small(second)

    signer = _verify_signature(manifest_bytes, signature, keys)
    manifest = parse_manifest(manifest_bytes, caps)
    if manifest.key_id != key_id(signer):
        fail("bad-manifest", f"key_id {manifest.key_id} does not name the key that signed it ({key_id(signer)})")
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
                fail("missing-file", f"payload/{entry.path} is missing")
            _expected_member(m, entry.path, seen, listed, caps)
            if m.size != entry.size:
                fail("size-mismatch", f"payload/{entry.path} is {m.size} bytes; the signed manifest says {entry.size}")
            digest = _copy(reader, m, staging, entry.path)
            if digest != entry.sha256:
                fail("hash-mismatch",
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
