"""The host side: build a signed bundle from files (a plain POSIX tar written with ``tarfile``)."""

from __future__ import annotations

import hashlib
import stat
import tarfile
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from packaging.version import InvalidVersion, Version

from firmware.fsutil import atomic_writer

from .errors import BOARD_KINDS, DEFAULT_CAPS, Caps, fail
from .keys import key_id, public_key_from_private, sign_manifest
from .manifest import (
    FORMAT,
    MANIFEST_NAME,
    PAYLOAD_PREFIX,
    SIGNATURE_NAME,
    BundleFile,
    BundleManifest,
    check_relpath,
    parse_manifest,
)

CHUNK = 1 << 20


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
        fail("missing-file", f"source of {arcname!r} ({src}) cannot be read: {e.strerror}")
    if not stat.S_ISREG(st.st_mode):
        fail("not-regular", f"source of {arcname!r} ({src}) is not a regular file")
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
            fail("bad-manifest", f"{what} {value!r} is not a PEP 440 version")
    unknown = [b for b in boards if b not in BOARD_KINDS]
    if not boards or unknown:
        fail("bad-manifest", f"boards must be a non-empty list of {', '.join(BOARD_KINDS)}; unknown: {unknown}")
    if len(files) > caps.max_files:
        fail("too-many-files", f"{len(files)} files, more than {caps.max_files}")
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
                        fail("source-changed", f"{files[entry.path]} shrank while being read ({e})")
                    if reader.count != entry.size or reader.sha256.hexdigest() != entry.sha256:
                        fail("source-changed", f"{files[entry.path]} changed while being read")
        f.flush()
        size = f.tell()
        if size > caps.max_bundle_bytes:
            fail("too-large", f"the bundle would be {size} bytes, more than {caps.max_bundle_bytes}")
    return out


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self._data, self._pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n < 0 else self._pos + n
        chunk = self._data[self._pos:end]
        self._pos += len(chunk)
        return chunk
