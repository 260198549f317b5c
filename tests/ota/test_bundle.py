"""Signed OTA bundles: build/verify round trip, every rejection reason, keys, staging hygiene."""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import ota.bundle as bundle_mod
import ota.bundle.builder as bundle_builder
from firmware.errors import CuecamError
from ota.bundle import (
    REASONS,
    BundleError,
    Caps,
    VerifiedBundle,
    build_bundle,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    manifest_json_bytes,
    parse_manifest,
    public_key_from_private,
    public_key_hex,
    save_private_key,
    save_public_key,
    sign_manifest,
    verify_bundle,
)

INSTALLED, FLOOR, BOARD = "1.1.0", "1.0.0", "sim"
CREATED = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
SOURCES = {
    "firmware/__init__.py": b'"""cuecam firmware."""\n__version__ = "1.2.3"\n',
    "firmware/app.py": b"def main():\n    return 0\n" * 50,
    "board_configs/sim.yaml": b"board:\n  name: sim-1\n  kind: sim\n",
    "models/empty.txt": b"",
}


@pytest.fixture(scope="module")
def keys() -> tuple[bytes, bytes, bytes, bytes]:
    priv, pub = generate_keypair()
    other_priv, other_pub = generate_keypair()
    return priv, pub, other_priv, other_pub


@pytest.fixture
def src(tmp_path: Path) -> dict[str, Path]:
    files = {}
    for rel, data in SOURCES.items():
        p = tmp_path / "src" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        files[rel] = p
    return files


def build(src: dict[str, Path], priv: bytes, out: Path, **kw: Any) -> Path:
    args: dict[str, Any] = {"version": "1.2.3", "boards": ["sim", "rpi5"], "min_version": "1.0.0", "created": CREATED}
    args.update(kw)
    return build_bundle(src, private_key=priv, out=out, **args)


def verify(path: Path, pub: bytes | list[bytes], staging: Path, **kw: Any) -> VerifiedBundle:
    args: dict[str, Any] = {"board_kind": BOARD, "installed_version": INSTALLED, "floor_version": FLOOR}
    args.update(kw)
    return verify_bundle(path, pub if isinstance(pub, list) else [pub], staging_dir=staging, **args)


def snapshot(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, tuple[int, int, int]]:
    """Every entry under ``root`` (type, size, mtime; directories by name only), minus ``skip``."""
    out: dict[str, tuple[int, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in skip]
        for name in dirnames + filenames:
            st = os.lstat(here / name)
            is_dir = stat.S_ISDIR(st.st_mode)
            out[str((here / name).relative_to(root))] = (
                stat.S_IFMT(st.st_mode), 0 if is_dir else st.st_size, 0 if is_dir else st.st_mtime_ns)
    return out


# --- crafting bad bundles ---------------------------------------------------------------------


def info(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.type, ti.linkname, ti.mode = size, kind, link, 0o644
    return ti


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if data else None)
    return buf.getvalue()


def reg(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return info(name, len(data)), data


@dataclass
class Good:
    raw: bytes
    manifest: dict[str, Any]
    manifest_bytes: bytes
    sig: bytes
    payload: list[tuple[str, bytes]]
    priv: bytes
    other_priv: bytes

    def head(self, mb: bytes | None = None, sig: bytes | None = None) -> list[tuple[tarfile.TarInfo, bytes]]:
        return [reg("manifest.json", self.manifest_bytes if mb is None else mb),
                reg("manifest.sig", self.sig if sig is None else sig)]

    def body(self) -> list[tuple[tarfile.TarInfo, bytes]]:
        return [reg("payload/" + p, d) for p, d in self.payload]

    def tar(self, mb: bytes | None = None, sig: bytes | None = None, body: list[Any] | None = None) -> bytes:
        return tar_bytes(self.head(mb, sig) + (self.body() if body is None else body))

    def resigned(self, body: list[Any] | None = None, key: bytes | None = None, **changes: Any) -> bytes:
        m = json.loads(self.manifest_bytes)
        m.update(changes)
        mb = manifest_json_bytes(m)
        return self.tar(mb, sign_manifest(mb, key or self.priv), body)

    def files(self, edit: Callable[[list[dict[str, Any]]], list[dict[str, Any]]], **kw: Any) -> bytes:
        return self.resigned(files=edit([dict(f) for f in self.manifest["files"]]), **kw)


@pytest.fixture
def good(keys: tuple[bytes, bytes, bytes, bytes], src: dict[str, Path], tmp_path: Path) -> Good:
    priv, _pub, other_priv, _ = keys
    path = build(src, priv, tmp_path / "good.bundle")
    with tarfile.open(path) as tf:
        data = {m.name: tf.extractfile(m).read() for m in tf.getmembers()}  # type: ignore[union-attr]
    manifest = json.loads(data["manifest.json"])
    payload = [(f["path"], data["payload/" + f["path"]]) for f in manifest["files"]]
    return Good(path.read_bytes(), manifest, data["manifest.json"], data["manifest.sig"], payload, priv, other_priv)


def _with_pax_sparse(g: Good) -> bytes:
    ti = info("payload/" + g.payload[0][0], 512)
    ti.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.realsize": str(1 << 40),
                      "GNU.sparse.name": "payload/" + g.payload[0][0]}
    return tar_bytes([*g.head(), (ti, b"1\n0\n0\n".ljust(512, b"\0")), *g.body()[1:]])


def _dirty_padding(g: Good) -> bytes:
    raw = bytearray(g.raw)
    raw[512 + len(g.manifest_bytes)] = 1  # first byte of the padding after manifest.json
    return bytes(raw)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# Each case: how to turn the good bundle into a bad one, the reason it must be rejected for and,
# optionally, verify_bundle overrides (caps, versions, board).
CASES: dict[str, tuple[Callable[[Good], bytes], str, dict[str, Any]]] = {
    "bit-flip-in-signed-manifest": (lambda g: g.tar(g.manifest_bytes.replace(b"1.2.3", b"1.2.4")), "bad-signature", {}),
    "signature-zeroed": (lambda g: g.tar(sig=bytes(64)), "bad-signature", {}),
    "signature-wrong-length": (lambda g: g.tar(sig=g.sig[:32]), "bad-signature", {}),
    "signed-by-unknown-key": (lambda g: g.resigned(key=g.other_priv, key_id=key_id(public_key_from_private(g.other_priv))),
                              "unknown-key", {}),
    "manifest-not-json": (lambda g: g.tar(b"{", sign_manifest(b"{", g.priv)), "bad-manifest", {}),
    "manifest-extra-key": (lambda g: g.resigned(comment="x"), "bad-manifest", {}),
    "manifest-key-id-lies": (lambda g: g.resigned(key_id="0" * 16), "bad-manifest", {}),
    "payload-changed": (lambda g: g.tar(body=[reg("payload/" + p, d.upper() if d else d) for p, d in g.payload]),
                        "hash-mismatch", {}),
    "manifest-lies-about-size": (lambda g: g.files(lambda fs: [{**fs[0], "size": fs[0]["size"] + 1}, *fs[1:]]),
                                 "size-mismatch", {}),
    "manifest-lies-about-hash": (lambda g: g.files(lambda fs: [{**fs[0], "sha256": _sha(b"x")}, *fs[1:]]), "hash-mismatch", {}),
    "member-dotdot": (lambda g: g.tar(body=[reg("payload/../evil", g.payload[0][1]), *g.body()[1:]]), "path-traversal", {}),
    "member-deep-dotdot": (lambda g: g.tar(body=[reg("payload/a/../../x", b"x"), *g.body()[1:]]), "path-traversal", {}),
    "member-absolute": (lambda g: g.tar(body=[reg("/etc/x", g.payload[0][1]), *g.body()[1:]]), "absolute-path", {}),
    "manifest-dotdot": (lambda g: g.files(lambda fs: [{**fs[0], "path": "../x"}]), "path-traversal", {}),
    "manifest-absolute": (lambda g: g.files(lambda fs: [{**fs[0], "path": "/etc/cron.d/x"}]), "absolute-path", {}),
    "manifest-bad-chars": (lambda g: g.files(lambda fs: [{**fs[0], "path": "a b"}]), "bad-path", {}),
    "manifest-file-and-folder": (lambda g: g.files(lambda fs: [{**fs[0], "path": "a"}, {**fs[0], "path": "a/b"}]),
                                 "path-conflict", {}),
    "member-symlink": (lambda g: g.tar(body=[(info("payload/" + g.payload[0][0], 0, tarfile.SYMTYPE, "/etc/passwd"), b""),
                                             *g.body()[1:]]), "symlink", {}),
    "member-hardlink": (lambda g: g.tar(body=[(info("payload/" + g.payload[0][0], 0, tarfile.LNKTYPE, "/etc/shadow"), b""),
                                              *g.body()[1:]]), "hardlink", {}),
    "member-char-device": (lambda g: g.tar(body=[(info("payload/" + g.payload[0][0], 0, tarfile.CHRTYPE), b""),
                                                 *g.body()[1:]]), "device-file", {}),
    "member-fifo": (lambda g: g.tar(body=[*g.body(), (info("payload/zz", 0, tarfile.FIFOTYPE), b"")]), "device-file", {}),
    "member-directory": (lambda g: g.tar(body=[(info("payload/board_configs", 0, tarfile.DIRTYPE), b""), *g.body()]),
                         "directory", {}),
    "member-sparse": (_with_pax_sparse, "sparse", {}),
    "member-contiguous": (lambda g: g.tar(body=[(info("payload/" + g.payload[0][0], len(g.payload[0][1]), tarfile.CONTTYPE),
                                                 g.payload[0][1]), *g.body()[1:]]), "not-regular", {}),
    "member-twice": (lambda g: g.tar(body=[g.body()[0], *g.body()]), "duplicate", {}),
    "manifest-lists-twice": (lambda g: g.files(lambda fs: [fs[0], *fs]), "duplicate", {}),
    "extra-member": (lambda g: g.tar(body=[*g.body(), reg("payload/extra.py", b"x")]), "unexpected-file", {}),
    "missing-member": (lambda g: g.tar(body=g.body()[:-1]), "missing-file", {}),
    "members-swapped": (lambda g: g.tar(body=[g.body()[1], g.body()[0], *g.body()[2:]]), "order", {}),
    "signature-first": (lambda g: tar_bytes([g.head()[1], g.head()[0], *g.body()]), "order", {}),
    "manifest-declares-huge-file": (lambda g: g.files(lambda fs: [{**fs[0], "size": 10 << 30}]), "too-large", {}),
    "bundle-over-cap": (lambda g: g.raw, "too-large", {"caps": Caps(max_bundle_bytes=4096)}),
    "manifest-over-cap": (lambda g: g.raw, "too-large", {"caps": Caps(max_manifest_bytes=100)}),
    "file-over-cap": (lambda g: g.raw, "too-large", {"caps": Caps(max_file_bytes=100)}),
    "too-many-files": (lambda g: g.raw, "too-many-files", {"caps": Caps(max_files=2)}),
    "path-too-long": (lambda g: g.raw, "path-too-long", {"caps": Caps(max_path=12)}),
    "downgrade": (lambda g: g.raw, "downgrade", {"installed_version": "2.0", "floor_version": None}),
    "not-newer": (lambda g: g.raw, "not-newer", {"installed_version": "1.2.3"}),
    "below-floor": (lambda g: g.raw, "below-floor", {"floor_version": "1.2.3", "installed_version": "1.0"}),
    "too-old-to-update": (lambda g: g.raw, "too-old-to-update", {"installed_version": "0.9", "floor_version": None}),
    "wrong-board": (lambda g: g.raw, "wrong-board", {"board_kind": "rpi4"}),
    "not-a-tar": (lambda g: b"hello, world\n" * 100, "not-a-bundle", {}),
    "empty-file": (lambda g: b"", "not-a-bundle", {}),
    "gzip-compressed": (lambda g: gzip.compress(g.raw), "not-a-bundle", {}),
    "truncated": (lambda g: g.raw[: len(g.raw) // 2], "truncated", {}),
    "dirty-padding": (_dirty_padding, "corrupt-archive", {}),
    "trailing-zeros": (lambda g: g.raw + bytes(10240), "trailing-data", {}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_rejection_has_its_reason(case: str, good: Good, keys: tuple[bytes, ...], tmp_path: Path) -> None:
    make, reason, overrides = CASES[case]
    bad = tmp_path / f"{case}.bundle"
    bad.write_bytes(make(good))
    staging = tmp_path / "staging"
    before = snapshot(tmp_path)
    with pytest.raises(BundleError) as err:
        verify(bad, keys[1], staging, **overrides)
    assert err.value.reason == reason, str(err.value)
    assert str(err.value).startswith(f"{bad}: ") and f"[{reason}]" in str(err.value)
    assert not staging.exists()
    assert snapshot(tmp_path) == before


SPECIAL_REASONS = {"bad-staging", "staging-not-empty", "staging-io", "bad-argument", "bad-key", "key-permissions",
                   "source-changed"}


def test_every_reason_is_exercised() -> None:
    assert {reason for _, reason, _ in CASES.values()} | SPECIAL_REASONS == REASONS


# --- the good path ----------------------------------------------------------------------------


def test_round_trip(keys: tuple[bytes, ...], src: dict[str, Path], tmp_path: Path) -> None:
    priv, pub = keys[0], keys[1]
    out = build(src, priv, tmp_path / "out" / "cuecam-1.2.3.bundle")
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert sorted(p.name for p in out.parent.iterdir()) == ["cuecam-1.2.3.bundle"]  # no temp file left behind
    with tarfile.open(out) as tf:
        names = tf.getnames()
    assert names == ["manifest.json", "manifest.sig", *("payload/" + p for p in sorted(SOURCES))]

    staging = tmp_path / "staging"
    vb = verify(out, pub, staging)
    assert vb.root == staging and vb.key_id == key_id(pub)
    m = vb.manifest
    assert (m.format, m.version, m.boards, m.min_version) == (1, "1.2.3", ("sim", "rpi5"), "1.0.0")
    assert m.created == CREATED.isoformat() and m.key_id == key_id(pub)
    assert [(f.path, f.size, f.sha256) for f in m.files] == [(p, len(d), _sha(d)) for p, d in sorted(SOURCES.items())]
    got = {str(p.relative_to(staging)): p.read_bytes() for p in staging.rglob("*") if p.is_file()}
    assert got == SOURCES
    assert {str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_dir()} == {"firmware", "board_configs", "models"}


def test_build_is_deterministic_and_canonical(keys: tuple[bytes, ...], src: dict[str, Path], tmp_path: Path) -> None:
    a = build(src, keys[0], tmp_path / "a.bundle", version="1.02.3", min_version="1.0")
    b = build(src, keys[0], tmp_path / "b.bundle", version="1.02.3", min_version="1.0")
    assert a.read_bytes() == b.read_bytes()
    assert len(a.read_bytes()) % 10240 == 0
    with tarfile.open(a) as tf:
        manifest = parse_manifest(tf.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert (manifest.version, manifest.min_version) == ("1.2.3", "1.0")


def test_floor_none_and_second_trusted_key(keys: tuple[bytes, ...], src: dict[str, Path], tmp_path: Path) -> None:
    _priv, pub, other_priv, other_pub = keys
    out = build(src, other_priv, tmp_path / "b.bundle")
    vb = verify(out, [pub, other_pub], tmp_path / "staging", floor_version=None, installed_version="1.0")
    assert vb.key_id == key_id(other_pub)


def test_existing_empty_staging_dir_is_used(keys: tuple[bytes, ...], src: dict[str, Path], tmp_path: Path) -> None:
    out = build(src, keys[0], tmp_path / "b.bundle")
    (tmp_path / "staging").mkdir()
    assert verify(out, keys[1], tmp_path / "staging").root == tmp_path / "staging"


def test_tarfile_never_extracts(keys: tuple[bytes, ...], src: dict[str, Path], tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    out = build(src, keys[0], tmp_path / "b.bundle")

    def refuse(*a: object, **k: object) -> None:
        raise AssertionError("tarfile must not extract anything")

    for name in ("extract", "extractall", "_extract_member", "makefile", "makelink"):
        monkeypatch.setattr(tarfile.TarFile, name, refuse)
    verify(out, keys[1], tmp_path / "staging")


# --- staging hygiene --------------------------------------------------------------------------


def test_nothing_written_outside_staging(keys: tuple[bytes, ...], src: dict[str, Path], tmp_path: Path) -> None:
    out = build(src, keys[0], tmp_path / "b.bundle")
    staging = tmp_path / "staging"
    before = snapshot(tmp_path)
    verify(out, keys[1], staging)
    assert staging.is_dir()
    assert snapshot(tmp_path, skip=(staging,)) == before


def test_staging_removed_after_partial_unpack(good: Good, keys: tuple[bytes, ...], tmp_path: Path) -> None:
    body = good.body()
    last = max(i for i, (_, data) in enumerate(good.payload) if data)
    name, data = good.payload[last]
    body[last] = reg("payload/" + name, data[:-1] + b"!")  # altered: the files before it were already written
    assert last >= 2
    bad = tmp_path / "bad.bundle"
    bad.write_bytes(good.tar(body=body))
    before = snapshot(tmp_path)
    with pytest.raises(BundleError, match="hash-mismatch"):
        verify(bad, keys[1], tmp_path / "staging")
    assert not (tmp_path / "staging").exists()
    assert snapshot(tmp_path) == before


def test_pre_existing_empty_staging_removed_on_failure(good: Good, keys: tuple[bytes, ...], tmp_path: Path) -> None:
    bad = tmp_path / "bad.bundle"
    bad.write_bytes(good.tar(sig=bytes(64)))
    (tmp_path / "staging").mkdir()
    with pytest.raises(BundleError, match="bad-signature"):
        verify(bad, keys[1], tmp_path / "staging")
    assert not (tmp_path / "staging").exists()


@pytest.mark.parametrize("reason", ["bad-signature", "unknown-key", "bad-manifest", "wrong-board", "too-large"])
def test_nothing_unpacked_before_signature_and_manifest_verify(reason: str, good: Good, keys: tuple[bytes, ...],
                                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    created: list[Path] = []
    real_init = bundle_mod._Staging.__init__

    def spy(self: Any, root: Path) -> None:
        created.append(root)
        real_init(self, root)

    monkeypatch.setattr(bundle_mod._Staging, "__init__", spy)
    data = {
        "bad-signature": good.tar(sig=bytes(64)),
        "unknown-key": good.resigned(key=good.other_priv, key_id=key_id(public_key_from_private(good.other_priv))),
        "bad-manifest": good.resigned(format=2),
        "wrong-board": good.resigned(boards=["rpi4"]),
        "too-large": good.files(lambda fs: [{**fs[0], "size": 1 << 40}]),
    }[reason]
    bad = tmp_path / "bad.bundle"
    bad.write_bytes(data)
    with pytest.raises(BundleError) as err:
        verify(bad, keys[1], tmp_path / "staging")
    assert err.value.reason == reason
    assert created == [] and not (tmp_path / "staging").exists()


def test_staging_must_be_new_or_empty(keys: tuple[bytes, ...], src: dict[str, Path], tmp_path: Path) -> None:
    out = build(src, keys[0], tmp_path / "b.bundle")
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    with pytest.raises(BundleError) as err:
        verify(out, keys[1], full)
    assert err.value.reason == "staging-not-empty"
    assert (full / "keep.txt").read_text() == "mine"  # not ours: left alone
    for bad_staging in (tmp_path / "no" / "such" / "parent", out):
        with pytest.raises(BundleError) as err:
            verify(out, keys[1], bad_staging)
        assert err.value.reason == "bad-staging"
    assert out.is_file()


def test_staging_io_error_cleans_up(keys: tuple[bytes, ...], src: dict[str, Path], tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    out = build(src, keys[0], tmp_path / "b.bundle")
    real_create = bundle_mod._Staging.create
    calls = []

    def full_disk(self: Any, rel: str) -> int:
        calls.append(rel)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_create(self, rel)

    monkeypatch.setattr(bundle_mod._Staging, "create", full_disk)
    with pytest.raises(BundleError) as err:
        verify(out, keys[1], tmp_path / "staging")
    assert err.value.reason == "staging-io" and "No space left" in str(err.value)
    assert not (tmp_path / "staging").exists()


def test_staging_writes_cannot_follow_symlinks(tmp_path: Path) -> None:
    root, outside = tmp_path / "staging", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "firmware").symlink_to(outside)
    (root / "app.py").symlink_to(outside / "app.py")
    staging = bundle_mod._Staging(root)
    try:
        with pytest.raises(OSError):
            staging.create("firmware/app.py")
        with pytest.raises(OSError):
            staging.create("app.py")
    finally:
        staging.close()
    assert list(outside.iterdir()) == []


@pytest.mark.timeout(20)
def test_bundle_path_that_is_not_a_file(keys: tuple[bytes, ...], tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it for reading must not block
    for path in (fifo, tmp_path, tmp_path / "missing.bundle"):
        with pytest.raises(BundleError) as err:
            verify(path, keys[1], tmp_path / "staging")
        assert err.value.reason == "not-a-bundle"


def test_bad_arguments(keys: tuple[bytes, ...], src: dict[str, Path], tmp_path: Path) -> None:
    out = build(src, keys[0], tmp_path / "b.bundle")
    for kw in ({"installed_version": "banana"}, {"floor_version": "x.y"}, {"board_kind": "toaster"}):
        with pytest.raises(BundleError) as err:
            verify(out, keys[1], tmp_path / "staging", **kw)
        assert err.value.reason == "bad-argument"
    with pytest.raises(BundleError) as err:
        verify(out, [], tmp_path / "staging")
    assert err.value.reason == "unknown-key"
    with pytest.raises(BundleError) as err:
        verify(out, [b"short"], tmp_path / "staging")
    assert err.value.reason == "bad-key"


# --- building ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("arcname", "reason"), [
    ("/etc/passwd", "absolute-path"),
    ("../x", "path-traversal"),
    ("a/../../x", "path-traversal"),
    ("a//b", "bad-path"),
    ("a/./b", "bad-path"),
    ("with space", "bad-path"),
    ("x" * 256, "path-too-long"),
])
def test_build_validates_arcnames_like_verify(arcname: str, reason: str, keys: tuple[bytes, ...], src: dict[str, Path],
                                              tmp_path: Path) -> None:
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(BundleError) as err:
        build({arcname: src["firmware/app.py"]}, keys[0], tmp_path / "b.bundle")
    assert err.value.reason == reason
    assert sorted(os.listdir(tmp_path)) == before


def test_build_rejects_bad_inputs(keys: tuple[bytes, ...], src: dict[str, Path], tmp_path: Path) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"boards": ["toaster"]}, "bad-manifest"),
        ({"boards": []}, "bad-manifest"),
        ({"version": "banana"}, "bad-manifest"),
        ({"min_version": "2.0"}, "bad-manifest"),
        ({"private_key": b"short"}, "bad-key"),
    ]
    for kw, reason in cases:
        with pytest.raises(BundleError) as err:
            build_bundle(src, **{"version": "1.2.3", "boards": ["sim"], "min_version": "1.0", "private_key": keys[0],
                                 "out": tmp_path / "b.bundle", **kw})
        assert err.value.reason == reason, kw
    with pytest.raises(BundleError) as err:
        build({"a.py": tmp_path / "missing.py"}, keys[0], tmp_path / "b.bundle")
    assert err.value.reason == "missing-file"
    with pytest.raises(BundleError) as err:
        build({"a.py": tmp_path}, keys[0], tmp_path / "b.bundle")
    assert err.value.reason == "not-regular"
    with pytest.raises(BundleError) as err:
        build({"A.py": src["firmware/app.py"], "a.py": src["firmware/app.py"]}, keys[0], tmp_path / "b.bundle")
    assert err.value.reason == "duplicate"
    assert not (tmp_path / "b.bundle").exists()


def test_build_notices_a_source_changing(keys: tuple[bytes, ...], src: dict[str, Path], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    real = bundle_builder._hash_source

    def stale(path: Path, arcname: str) -> tuple[int, str]:
        size, _ = real(path, arcname)
        return size, "0" * 64  # as if the file had changed after it was hashed

    monkeypatch.setattr(bundle_builder, "_hash_source", stale)
    with pytest.raises(BundleError) as err:
        build(src, keys[0], tmp_path / "b.bundle")
    assert err.value.reason == "source-changed"
    assert list(tmp_path.glob("*.bundle*")) == [] and list(tmp_path.glob(".b.bundle*")) == []


# --- keys and errors --------------------------------------------------------------------------


def test_keys_save_and_load(tmp_path: Path) -> None:
    priv, pub = generate_keypair()
    assert len(priv) == 32 and len(pub) == 32 and public_key_from_private(priv) == pub
    assert public_key_hex(pub) == pub.hex() and key_id(pub) == hashlib.sha256(pub).hexdigest()[:16]
    save_private_key(tmp_path / "keys" / "signing.key", priv)
    assert stat.S_IMODE((tmp_path / "keys" / "signing.key").stat().st_mode) == 0o600
    assert (tmp_path / "keys" / "signing.key").read_text() == priv.hex() + "\n"
    assert load_private_key(tmp_path / "keys" / "signing.key") == priv
    assert sorted(os.listdir(tmp_path / "keys")) == ["signing.key"]
    save_public_key(tmp_path / "keys" / "signing.pub", pub)
    assert load_public_key(tmp_path / "keys" / "signing.pub") == pub

    os.chmod(tmp_path / "keys" / "signing.key", 0o644)
    with pytest.raises(BundleError) as err:
        load_private_key(tmp_path / "keys" / "signing.key")
    assert err.value.reason == "key-permissions" and "chmod 600" in str(err.value)
    for text in ("not hex", "abcd", ""):
        (tmp_path / "bad.key").write_text(text)
        os.chmod(tmp_path / "bad.key", 0o600)
        with pytest.raises(BundleError) as err:
            load_private_key(tmp_path / "bad.key")
        assert err.value.reason == "bad-key"
    with pytest.raises(BundleError) as err:
        load_public_key(tmp_path / "missing.pub")
    assert err.value.reason == "bad-key"
    with pytest.raises(BundleError):
        save_private_key(tmp_path / "x.key", b"short")


def test_bundle_error_contract(good: Good, keys: tuple[bytes, ...], tmp_path: Path) -> None:
    assert issubclass(BundleError, CuecamError) and BundleError.exit_code == 2
    bad = tmp_path / "bad.bundle"
    bad.write_bytes(good.tar(sig=bytes(64)))
    with pytest.raises(BundleError) as err:
        verify(bad, keys[1], tmp_path / "staging")
    e = err.value
    assert e.reason == "bad-signature" and e.path == bad and e.detail
    assert str(e) == f"{bad}: {e.detail} [bad-signature]; " + bundle_mod._HINTS["bad-signature"]


# --- the container: our own reader, any tar writer ------------------------------------------


@pytest.mark.parametrize("fmt", ["ustar", "gnu", "pax"])
def test_a_bundle_repacked_by_gnu_tar_verifies(good: Good, keys: tuple[bytes, ...], tmp_path: Path, fmt: str) -> None:
    """The container is plain tar: GNU tar (an independent writer) packing the same members in
    the same order makes a bundle the board's reader accepts, long payload names included."""
    import shutil
    import subprocess

    if shutil.which("tar") is None:
        pytest.skip("GNU tar is not installed")
    tree = tmp_path / "tree"
    names = ["manifest.json", "manifest.sig", *("payload/" + p for p, _ in good.payload)]
    blobs = [good.manifest_bytes, good.sig, *(d for _, d in good.payload)]
    for name, data in zip(names, blobs, strict=True):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(data)
    out = tmp_path / f"repacked-{fmt}.bundle"
    subprocess.run(["tar", f"--format={fmt}", "--owner=0", "--group=0", "--numeric-owner", "--no-recursion",
                    "-C", str(tree), "-cf", str(out), *names], check=True)
    result = verify(out, keys[1], tmp_path / f"staging-{fmt}")
    for p, data in good.payload:
        assert (result.root / p).read_bytes() == data


def test_the_board_side_reads_bundles_without_tarfile() -> None:
    """The reader and verifier import no tarfile (whose private hooks they would depend on):
    a static check of their imports, so it fails loudly the day someone brings it back."""
    import ast

    import ota.bundle.container as container
    import ota.bundle.verifier as verifier

    for mod in (container, verifier):
        tree = ast.parse(Path(mod.__file__).read_text())  # type: ignore[arg-type]
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert "tarfile" not in imported, mod.__name__
        assert "_proc_member" not in Path(mod.__file__).read_text()  # type: ignore[arg-type]
