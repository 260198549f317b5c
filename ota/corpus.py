"""A corpus of tampered, malformed and hostile bundles, each with the reason a board must give.

:func:`generate_tampered` starts from one good bundle and writes a few hundred bad ones: bit flips
spread over every region of the file, truncations at every kind of boundary, wrong keys, edited
manifests under the old signature, re-signed manifests that lie, reordered / missing / extra /
duplicate members, path traversal, links, device files and directories, sparse members and tar
bombs, caps, version policy, board kinds, and files that are not bundles at all.

Each entry comes with the reason :func:`ota.bundle.verify_bundle` must reject it for: one reason,
alternatives separated by ``|`` when the exact outcome depends on where a flipped bit lands, or
:data:`ANY` for "rejected, for whatever reason". Use :func:`reason_matches` to compare.
The tar bombs declare huge sizes without writing them: no corpus file takes more than a few MB
of disk (the one larger than the bundle cap is a sparse file).
"""

from __future__ import annotations

import bz2
import copy
import gzip
import hashlib
import io
import json
import lzma
import random
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.version import Version

from .bundle import (
    BLOCK,
    BOARD_KINDS,
    DEFAULT_CAPS,
    MANIFEST_NAME,
    PAYLOAD_PREFIX,
    RECORD,
    SIGNATURE_NAME,
    Caps,
    key_id,
    manifest_json_bytes,
    public_key_from_private,
    sign_manifest,
)

ANY = "*"
BIT_FLIPS = 80
TRUNCATIONS = 40
MTIME = 1_700_000_000

Member = tuple[tarfile.TarInfo, bytes]


def reason_matches(expected: str, reason: str) -> bool:
    """Whether ``reason`` is what the corpus ``expected`` (``ANY``, one reason or ``a|b``)."""
    return expected == ANY or reason in expected.split("|")


def _blocks(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


def _info(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.type, ti.linkname, ti.mtime, ti.mode = size, kind, linkname, MTIME, 0o644
    ti.uname = ti.gname = ""
    return ti


def _reg(name: str, data: bytes) -> Member:
    return _info(name, len(data)), data


def _special(name: str, kind: bytes, linkname: str = "") -> Member:
    return _info(name, 0, kind, linkname), b""


def _tar(members: list[Member]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if data else None)
    return buf.getvalue()


def _raw_member(ti: tarfile.TarInfo, data: bytes = b"", fmt: Any = tarfile.PAX_FORMAT) -> bytes:
    """A member's header(s) and data as bytes, for archives tarfile's writer would not produce."""
    return ti.tobuf(fmt, "utf-8", "surrogateescape") + data + b"\0" * (_blocks(len(data)) - len(data))


def _finish(body: bytes) -> bytes:
    """End-of-archive marker and zero padding to a whole record, as tarfile writes them."""
    end = body + b"\0" * (2 * BLOCK)
    return end + b"\0" * (-len(end) % RECORD)


def _with_checksum(header: bytearray) -> bytes:
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


@dataclass(frozen=True)
class _Part:
    name: str
    offset: int
    offset_data: int
    size: int


class _Corpus:
    def __init__(self, out_dir: Path, *, never: bytes) -> None:
        self.out_dir = out_dir
        self.items: list[tuple[Path, str]] = []
        self._digests = {hashlib.sha256(never).hexdigest()}  # the good bundle is never part of the corpus

    def add(self, slug: str, data: bytes, reason: str) -> None:
        digest = hashlib.sha256(data).hexdigest()
        if digest in self._digests:
            return
        self._digests.add(digest)
        path = self.out_dir / f"{len(self.items):03d}-{slug}.bundle"
        path.write_bytes(data)
        self.items.append((path, reason))


def _policy_reason(
    version: str, min_version: str, boards: list[str], *, board_kind: str, installed: str, floor: str | None
) -> str | None:
    """What a board with this installed/floor version says to an otherwise valid bundle (None: accepts)."""
    if not re.fullmatch(r"[0-9]{1,9}(\.[0-9]{1,9}){0,3}", version):
        return "bad-manifest"  # pre-releases and the like: the slot store holds dotted decimal versions only
    v = Version(version)
    if board_kind not in boards:
        return "wrong-board"
    if floor is not None and v <= Version(floor):
        return "below-floor"
    if v < Version(installed):
        return "downgrade"
    if v == Version(installed):
        return "not-newer"
    if Version(installed) < Version(min_version):
        return "too-old-to-update"
    return None


def _lower(version: Version) -> str:
    """A version just below ``version`` (1.2.3 -> 1.2.2, 1.0.0 -> 0.0.0)."""
    release = list(version.release)
    for i in range(len(release) - 1, -1, -1):
        if release[i] > 0:
            release[i] -= 1
            return ".".join(map(str, release))
    return "0"


def generate_tampered(
    good_bundle: Path,
    private_key: bytes,
    other_private_key: bytes,
    out_dir: Path,
    *,
    installed_version: str,
    floor_version: str | None,
    board_kind: str,
    caps: Caps = DEFAULT_CAPS,
) -> list[tuple[Path, str]]:
    """Write bad variants of ``good_bundle`` into ``out_dir``; return (path, expected reason) pairs.

    ``good_bundle`` must be accepted by a board of ``board_kind`` with ``installed_version`` and
    ``floor_version`` that trusts the public half of ``private_key`` (and not that of
    ``other_private_key``). Every file written is distinct.
    """
    good_bundle, out_dir = Path(good_bundle), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = good_bundle.read_bytes()
    with tarfile.open(good_bundle, "r:") as tf:
        members = tf.getmembers()
        parts = [_Part(m.name, m.offset, m.offset_data, m.size) for m in members]
        contents: dict[str, bytes] = {}
        for m in members:
            f = tf.extractfile(m)
            contents[m.name] = f.read() if f is not None else b""
    manifest_bytes, signature = contents[MANIFEST_NAME], contents[SIGNATURE_NAME]
    manifest: dict[str, Any] = json.loads(manifest_bytes)
    payload = [(e["path"], contents[PAYLOAD_PREFIX + e["path"]]) for e in manifest["files"]]
    end = parts[-1].offset_data + _blocks(parts[-1].size)
    def policy_reason(version: str, min_version: str, boards: list[str]) -> str | None:
        return _policy_reason(version, min_version, boards, board_kind=board_kind, installed=installed_version,
                              floor=floor_version)

    if policy_reason(manifest["version"], manifest["min_version"], manifest["boards"]) is not None:
        raise ValueError(f"{good_bundle} would be rejected by this board to begin with")
    corpus = _Corpus(out_dir, never=raw)
    add = corpus.add

    def std(mb: bytes = manifest_bytes, sig: bytes = signature, files: list[tuple[str, bytes]] | None = None) -> bytes:
        return _tar([_reg(MANIFEST_NAME, mb), _reg(SIGNATURE_NAME, sig)]
                    + [_reg(PAYLOAD_PREFIX + p, d) for p, d in (payload if files is None else files)])

    def resigned(edit: dict[str, Any] | bytes, key: bytes = private_key) -> tuple[bytes, bytes]:
        mb = edit if isinstance(edit, bytes) else manifest_json_bytes(edit)
        return mb, sign_manifest(mb, key)

    def edited(**changes: Any) -> dict[str, Any]:
        m = json.loads(manifest_bytes)
        m.update(changes)
        return m

    def with_files(transform: Any) -> dict[str, Any]:
        m = edited()
        m["files"] = transform([dict(e) for e in m["files"]])
        return m

    def resigned_bundle(edit: dict[str, Any] | bytes, files: list[tuple[str, bytes]] | None = None) -> bytes:
        mb, sig = resigned(edit)
        return std(mb, sig, files)

    head = [_reg(MANIFEST_NAME, manifest_bytes), _reg(SIGNATURE_NAME, signature)]
    body = [_reg(PAYLOAD_PREFIX + p, d) for p, d in payload]
    first_path, first_data = payload[0]

    # --- bit flips, spread over every region of the file -------------------------------------
    def flip_reason(offset: int) -> str:
        for i, p in enumerate(parts):
            if p.offset <= offset < p.offset_data:
                return "not-a-bundle|corrupt-archive" if i == 0 else "corrupt-archive"
            if p.offset_data <= offset < p.offset_data + p.size:
                if p.name == MANIFEST_NAME:
                    return "bad-signature|unknown-key"
                return "bad-signature" if p.name == SIGNATURE_NAME else "hash-mismatch"
            if offset < p.offset_data + _blocks(p.size):
                return "corrupt-archive"  # member padding
        return "corrupt-archive"  # end-of-archive marker and record padding

    targets: list[int] = []
    for p in parts:
        # name, size field, checksum digits, the checksum field's NUL and trailing space, type, magic
        targets += [p.offset_data - BLOCK + k for k in (0, 124, 148, 153, 154, 155, 156, 257)]
        targets += [p.offset_data, p.offset_data + p.size // 2, p.offset_data + p.size - 1]
        if p.size % BLOCK:
            targets += [p.offset_data + p.size, p.offset_data + _blocks(p.size) - 1]
    kid_at = manifest_bytes.find(manifest["key_id"].encode())
    targets += [parts[0].offset_data + kid_at, end, end + BLOCK, end + 2 * BLOCK - 1, len(raw) - 1]
    targets = list(dict.fromkeys(t for t in targets if 0 <= t < len(raw)))[:BIT_FLIPS]
    rng = random.Random(0xC0FFEE)
    spread = [round(i * (len(raw) - 1) / (BIT_FLIPS - 1)) for i in range(BIT_FLIPS)]
    for offset in spread + [rng.randrange(len(raw)) for _ in range(BIT_FLIPS)]:
        if len(targets) >= BIT_FLIPS:
            break
        if offset not in targets:
            targets.append(offset)
    for n, offset in enumerate(sorted(targets)):
        bit = (n * 3 + offset) % 8
        flipped = bytearray(raw)
        flipped[offset] ^= 1 << bit
        add(f"bitflip-{offset}-{bit}", bytes(flipped), flip_reason(offset))

    # --- truncations at every kind of boundary -----------------------------------------------
    lengths: list[int] = [1, BLOCK - 1]
    for p in parts:
        lengths += [p.offset, p.offset + 1, p.offset_data - 1, p.offset_data, p.offset_data + 1,
                    p.offset_data + p.size - 1, p.offset_data + p.size, p.offset_data + _blocks(p.size) - 1]
    lengths += [end + 1, end + BLOCK, end + 2 * BLOCK - 1, end + 2 * BLOCK, len(raw) - BLOCK, len(raw) - 1]
    lengths = list(dict.fromkeys(n for n in lengths if 0 < n < len(raw)))[:TRUNCATIONS]
    for i in range(1, TRUNCATIONS * 4):
        if len(lengths) >= TRUNCATIONS:
            break
        n = i * len(raw) // (TRUNCATIONS * 4)
        if 0 < n < len(raw) and n not in lengths:
            lengths.append(n)
    for n in sorted(lengths):
        add(f"truncated-{n}", raw[:n], "not-a-bundle" if n < BLOCK else "truncated")

    # --- keys and signatures -----------------------------------------------------------------
    other_public = public_key_from_private(other_private_key)
    add("signed-by-other-key", std(*resigned(edited(key_id=key_id(other_public)), other_private_key)), "unknown-key")
    add("other-key-claims-trusted-id", std(*resigned(edited(), other_private_key)), "bad-signature")
    add("signature-zeroed", std(sig=bytes(64)), "bad-signature")
    add("signature-of-other-manifest", std(sig=sign_manifest(manifest_bytes + b" ", private_key)), "bad-signature")
    add("signature-short", std(sig=signature[:63]), "bad-signature")
    add("signature-long", std(sig=signature + b"\0"), "bad-signature")
    add("signature-empty", std(sig=b""), "bad-signature")
    add("signature-hex-text", std(sig=signature.hex().encode()), "bad-signature")
    newer = str(Version(manifest["version"]).major + 1) + ".0.0"
    changes: list[tuple[str, dict[str, Any]]] = [
        ("version", {"version": newer}),
        ("boards", {"boards": [*manifest["boards"], *[b for b in BOARD_KINDS if b not in manifest["boards"]][:1]]}),
        ("min-version", {"min_version": "0.0.1"}),
        ("created", {"created": "2000-01-01T00:00:00+00:00"}),
    ]
    for slug, change in changes:
        add(f"old-signature-{slug}", std(manifest_json_bytes(edited(**change))), "bad-signature")
    add("old-signature-key-id", std(manifest_json_bytes(edited(key_id=key_id(other_public)))), "unknown-key")
    add("old-signature-whitespace", std(manifest_bytes.rstrip(b"\n") + b" \n"), "bad-signature")
    add("old-signature-hash", std(manifest_json_bytes(with_files(
        lambda fs: [{**f, "sha256": hashlib.sha256(b"evil").hexdigest()} if i == 0 else f for i, f in enumerate(fs)]))),
        "bad-signature")
    add("old-signature-hash-and-payload", std(
        manifest_json_bytes(with_files(
            lambda fs: [{**f, "sha256": hashlib.sha256(b"evil").hexdigest(), "size": 4} if i == 0 else f
                        for i, f in enumerate(fs)])),
        files=[(first_path, b"evil"), *payload[1:]]), "bad-signature")

    # --- re-signed manifests that lie about the payload ---------------------------------------
    for i, (_path, data) in enumerate(payload):
        def set_field(field: str, value: Any, i: int = i) -> dict[str, Any]:
            return with_files(lambda fs: [{**f, field: value} if j == i else f for j, f in enumerate(fs)])
        add(f"lie-size-plus-{i}", resigned_bundle(set_field("size", len(data) + 1)), "size-mismatch")
        add(f"lie-size-minus-{i}", resigned_bundle(set_field("size", max(len(data) - 1, 0))),
            "size-mismatch" if data else "hash-mismatch")
        add(f"lie-hash-{i}", resigned_bundle(set_field("sha256", hashlib.sha256(data + b"x").hexdigest())), "hash-mismatch")
        evil = data[:-1] + bytes([data[-1] ^ 1]) if data else b"x"
        add(f"payload-swapped-{i}", std(files=[(p, evil if j == i else d) for j, (p, d) in enumerate(payload)]),
            "hash-mismatch" if data else "size-mismatch")
    add("lie-extra-listed-file", resigned_bundle(with_files(
        lambda fs: [*fs, {"path": "zzzz/extra.bin", "size": 1, "sha256": hashlib.sha256(b"x").hexdigest()}])), "missing-file")
    add("lie-omits-last-file", resigned_bundle(with_files(lambda fs: fs[:-1])), "unexpected-file")
    if len(payload) > 1:
        add("lie-omits-first-file", resigned_bundle(with_files(lambda fs: fs[1:])), "unexpected-file")
    evil_entry = {"path": "0000/evil.py", "size": 4, "sha256": hashlib.sha256(b"evil").hexdigest()}
    add("lie-extra-first-file", resigned_bundle(with_files(lambda fs: [evil_entry, *fs])), "order")

    # --- strict manifest validation (all re-signed with the trusted key) ---------------------
    bad_manifests: list[tuple[str, dict[str, Any] | bytes]] = [
        ("not-json", b"{not json"),
        ("json-list", b"[]\n"),
        ("json-string", b'"manifest"\n'),
        ("not-utf8", manifest_bytes.replace(b'"format"', b'"f\xffrmat"')),
        ("duplicate-json-key", manifest_bytes.replace(b"{", b'{"format": 1,', 1)),
        ("nan", manifest_bytes.replace(b'"format": 1', b'"format": NaN')),
        ("deep-nesting", b"[" * 100_000 + b"]" * 100_000),
        ("extra-key", edited(comment="hi")),
        ("format-2", edited(format=2)),
        ("format-string", edited(format="1")),
        ("format-true", edited(format=True)),
        ("version-banana", edited(version="banana")),
        ("version-not-canonical", edited(version="0" + manifest["version"])),
        ("version-number", edited(version=1.5)),
        ("min-above-version", edited(min_version=newer)),
        ("boards-empty", edited(boards=[])),
        ("boards-string", edited(boards=board_kind)),
        ("boards-bad-name", edited(boards=["Sim!"])),
        ("boards-repeated", edited(boards=[board_kind, board_kind])),
        ("created-garbage", edited(created="yesterday")),
        ("created-no-zone", edited(created="2024-01-01T00:00:00")),
        ("key-id-upper", edited(key_id=manifest["key_id"].upper())),
        ("key-id-names-other-key", edited(key_id=key_id(other_public))),
        ("files-empty", edited(files=[])),
        ("files-object", edited(files={})),
        ("files-unsorted", with_files(lambda fs: [*fs, {**fs[0], "path": "0000-sorts-first"}])),
        ("size-negative", with_files(lambda fs: [{**fs[0], "size": -1}, *fs[1:]])),
        ("size-bool", with_files(lambda fs: [{**fs[0], "size": True}, *fs[1:]])),
        ("size-float", with_files(lambda fs: [{**fs[0], "size": float(fs[0]["size"])}, *fs[1:]])),
        ("size-string", with_files(lambda fs: [{**fs[0], "size": str(fs[0]["size"])}, *fs[1:]])),
        ("sha-upper", with_files(lambda fs: [{**fs[0], "sha256": fs[0]["sha256"].upper()}, *fs[1:]])),
        ("sha-short", with_files(lambda fs: [{**fs[0], "sha256": fs[0]["sha256"][:63]}, *fs[1:]])),
        ("file-extra-key", with_files(lambda fs: [{**fs[0], "mode": 0o4755}, *fs[1:]])),
        ("file-missing-key", with_files(lambda fs: [{"path": fs[0]["path"], "size": fs[0]["size"]}, *fs[1:]])),
        ("file-not-object", with_files(lambda fs: [fs[0]["path"], *fs[1:]])),
    ]
    for key in sorted(manifest):
        bad_manifests.append((f"missing-{key}", {k: v for k, v in manifest.items() if k != key}))
    for slug, edit in bad_manifests:
        add(f"manifest-{slug}", resigned_bundle(edit), "bad-manifest")

    def one_file(path: str, size: int = 1) -> dict[str, Any]:
        return edited(files=[{"path": path, "size": size, "sha256": "0" * 64}])  # rejected before any hash matters

    for slug, path, reason in [
        ("dotdot", "../x", "path-traversal"),
        ("inner-dotdot", "a/../../x", "path-traversal"),
        ("trailing-dotdot", "firmware/..", "path-traversal"),
        ("absolute", "/etc/x", "absolute-path"),
        ("backslash-absolute", "\\etc\\x", "absolute-path"),
        ("backslash-dotdot", "..\\x", "path-traversal"),
        ("dot", "a/./x", "bad-path"),
        ("double-slash", "a//x", "bad-path"),
        ("trailing-slash", "a/", "bad-path"),
        ("empty", "", "bad-path"),
        ("nul", "a\0b", "bad-path"),
        ("newline", "a\nb", "bad-path"),
        ("drive", "C:/x", "bad-path"),
        ("space", "a b", "bad-path"),
        ("dash-first", "-rf", "bad-path"),
        ("unicode", "caf\u00e9.py", "bad-path"),
        ("too-long", "a" * (caps.max_path + 1), "path-too-long"),
        ("too-long-nested", "/".join(["d" * 50] * 6), "path-too-long"),
    ]:
        add(f"manifest-path-{slug}", resigned_bundle(one_file(path)), reason)
    add("manifest-path-not-string", resigned_bundle(edited(files=[{"path": 7, "size": 1, "sha256": "0" * 64}])), "bad-path")
    add("manifest-duplicate-path", resigned_bundle(with_files(lambda fs: [fs[0], *fs])), "duplicate")
    add("manifest-case-duplicate", resigned_bundle(with_files(
        lambda fs: sorted([{**fs[0], "path": fs[0]["path"].upper()}, *fs], key=lambda f: f["path"]))), "duplicate")
    add("manifest-file-and-folder", resigned_bundle(edited(files=[{"path": "a", "size": 1, "sha256": "0" * 64},
                                                                  {"path": "a/b", "size": 1, "sha256": "0" * 64}])),
        "path-conflict")

    # --- caps and tar bombs -------------------------------------------------------------------
    add("cap-file-too-large", resigned_bundle(one_file("big.bin", caps.max_file_bytes + 1)), "too-large")
    add("cap-file-10-gib", resigned_bundle(one_file("big.bin", 10 << 30)), "too-large")
    share = caps.max_bundle_bytes // 3 + 1
    add("cap-total-too-large", resigned_bundle(edited(files=[
        {"path": f"part{i}.bin", "size": min(share, caps.max_file_bytes), "sha256": "0" * 64} for i in range(4)])),
        "too-large")
    many = [{"path": f"f/{i:05d}", "size": 0, "sha256": hashlib.sha256(b"").hexdigest()} for i in range(caps.max_files + 1)]
    add("cap-too-many-files", resigned_bundle(edited(files=many)), "too-many-files")
    add("cap-manifest-too-large", resigned_bundle(manifest_bytes + b" " * caps.max_manifest_bytes), "too-large")
    bomb = _info(PAYLOAD_PREFIX + first_path, 100 << 30)  # declares 100 GiB, carries nothing
    add("bomb-member-100-gib", _finish(b"".join(_raw_member(ti, d) for ti, d in head) + _raw_member(bomb)), "size-mismatch")
    sparse = bytearray(_info(PAYLOAD_PREFIX + first_path, 0, tarfile.GNUTYPE_SPARSE).tobuf(tarfile.GNU_FORMAT))
    sparse[483:495] = b"%011o\0" % (4 << 30)  # realsize: 4 GiB of holes
    add("bomb-gnu-sparse", _finish(b"".join(_raw_member(ti, d) for ti, d in head) + _with_checksum(sparse)), "sparse")
    pax_sparse = _info(PAYLOAD_PREFIX + first_path, BLOCK)
    pax_sparse.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.realsize": str(1 << 40),
                              "GNU.sparse.name": PAYLOAD_PREFIX + first_path}
    add("bomb-pax-sparse", _finish(b"".join(_raw_member(ti, d) for ti, d in head)
                                   + _raw_member(pax_sparse, b"1\n0\n0\n".ljust(BLOCK, b"\0"))), "sparse")
    big_pax = _info(PAYLOAD_PREFIX + first_path, len(first_data))
    big_pax.pax_headers = {"comment": "x" * 70_000}
    add("bomb-huge-pax-header", _tar([*head, (big_pax, first_data), *body[1:]]), "too-large")
    longname = _info("payload/" + "a" * 70_000, 1)
    add("bomb-huge-gnu-longname", _finish(b"".join(_raw_member(ti, d) for ti, d in head)
                                          + _raw_member(longname, b"x", tarfile.GNU_FORMAT)), "too-large")
    add("bomb-many-members", _tar([*head, *body, *[_reg(f"payload/zz/{i:05d}", b"") for i in range(caps.max_files + 1000)]]),
        "unexpected-file")
    negative = bytearray(_info(PAYLOAD_PREFIX + first_path, 0).tobuf(tarfile.USTAR_FORMAT))
    negative[124:136] = b"\xff" * 12  # base-256 size: -1
    add("bomb-negative-size", _finish(b"".join(_raw_member(ti, d) for ti, d in head) + _with_checksum(negative)),
        "corrupt-archive")
    big = out_dir / f"{len(corpus.items):03d}-bomb-sparse-file-over-cap.bundle"
    with big.open("wb") as f:
        f.write(raw)
        f.truncate(caps.max_bundle_bytes + RECORD)  # a hole: no disk blocks are written
    corpus.items.append((big, "too-large"))

    # --- member order, duplicates, extras, missing members ------------------------------------
    add("order-signature-first", _tar([head[1], head[0], *body]), "order")
    add("order-payload-first", _tar([body[0], *head, *body[1:]]), "order")
    add("order-signature-last", _tar([head[0], *body, head[1]]), "missing-file")
    if len(body) > 1:
        add("order-payload-swapped", _tar([*head, body[1], body[0], *body[2:]]), "order")
        add("order-payload-reversed", _tar([*head, *reversed(body)]), "order")
        add("missing-first-member", _tar([*head, *body[1:]]), "order")
        add("duplicate-member-inline", _tar([*head, body[0], *body]), "duplicate")
    add("duplicate-manifest", _tar([head[0], *head, *body]), "duplicate")
    add("duplicate-signature", _tar([*head, head[1], *body]), "duplicate")
    add("duplicate-last-member", _tar([*head, *body, body[-1]]), "duplicate")
    add("duplicate-manifest-at-end", _tar([*head, *body, head[0]]), "duplicate")
    add("missing-last-member", _tar([*head, *body[:-1]]), "missing-file")
    add("missing-all-payload", _tar(head), "missing-file")
    add("missing-signature", _tar([head[0]]), "missing-file")
    add("missing-manifest", _tar([head[1], *body]), "order")
    add("extra-payload-file", _tar([*head, *body, _reg("payload/extra.py", b"print('hi')\n")]), "unexpected-file")
    add("extra-payload-first", _tar([*head, _reg("payload/0000.py", b"evil"), *body]), "unexpected-file")
    add("extra-outside-payload", _tar([*head, *body, _reg("evil.sh", b"#!/bin/sh\nrm -rf /\n")]), "unexpected-file")
    add("extra-empty-member", _tar([*head, *body, _reg("payload/zz-empty", b"")]), "unexpected-file")
    add("extra-first-member", _tar([_reg("README", b"hello"), *head, *body]), "not-a-bundle")
    add("extra-after-manifest", _tar([head[0], _reg("notes.txt", b"x"), head[1], *body]), "missing-file")

    # --- hostile member names and types in place of the first payload file --------------------
    rest = body[1:]
    for slug, name, reason in [
        ("dotdot", "payload/../x", "path-traversal"),
        ("dotdot-deep", "payload/a/../../x", "path-traversal"),
        ("dotdot-escape", f"payload/../../../../tmp/{first_path}", "path-traversal"),
        ("dotdot-lead", f"../payload/{first_path}", "path-traversal"),
        ("absolute-etc", "/etc/x", "absolute-path"),
        ("absolute-payload", f"/payload/{first_path}", "absolute-path"),
        ("dot", f"payload/./{first_path}", "bad-path"),
        ("double-slash", f"payload//{first_path}", "absolute-path"),
        ("backslash", "payload\\..\\x", "unexpected-file"),
        ("no-prefix", first_path, "unexpected-file"),
        ("other-prefix", f"payloads/{first_path}", "unexpected-file"),
        ("case", f"PAYLOAD/{first_path}", "unexpected-file"),
    ]:
        add(f"name-{slug}", _tar([*head, _reg(name, first_data), *rest]), reason)
    pax_path = _info("payload/innocent", len(first_data))
    pax_path.pax_headers = {"path": "payload/../../etc/cron.d/x"}
    add("name-pax-path-traversal", _tar([*head, (pax_path, first_data), *rest]), "path-traversal")
    long_member = "payload/" + "d/" * 130 + "x"
    add("name-too-long", _tar([*head, _reg(long_member, first_data), *rest]), "path-too-long")
    target = PAYLOAD_PREFIX + first_path
    for slug, member, reason in [
        ("symlink-etc", _special(target, tarfile.SYMTYPE, "/etc/passwd"), "symlink"),
        ("symlink-up", _special(target, tarfile.SYMTYPE, "../../../x"), "symlink"),
        ("hardlink-etc", _special(target, tarfile.LNKTYPE, "/etc/shadow"), "hardlink"),
        ("hardlink-sibling", _special(target, tarfile.LNKTYPE, PAYLOAD_PREFIX + payload[-1][0]), "hardlink"),
        ("char-device", _special(target, tarfile.CHRTYPE), "device-file"),
        ("block-device", _special(target, tarfile.BLKTYPE), "device-file"),
        ("fifo", _special(target, tarfile.FIFOTYPE), "device-file"),
        ("directory", _special(target, tarfile.DIRTYPE), "directory"),
        ("contiguous", (_info(target, len(first_data), tarfile.CONTTYPE), first_data), "not-regular"),
        ("unknown-type", (_info(target, len(first_data), b"Z"), first_data), "not-regular"),
    ]:
        add(f"type-{slug}", _tar([*head, member, *rest]), reason)
        extra = copy.copy(member[0])
        extra.name = "payload/zz-extra"
        add(f"type-extra-{slug}", _tar([*head, *body, (extra, member[1])]), reason)
    add("type-directory-before", _tar([*head, _special("payload/" + first_path.split("/")[0], tarfile.DIRTYPE), *body]),
        "directory")
    add("type-symlink-manifest", _tar([_special(MANIFEST_NAME, tarfile.SYMTYPE, "/etc/passwd"), head[1], *body]), "symlink")
    add("type-manifest-fifo", _tar([_special(MANIFEST_NAME, tarfile.FIFOTYPE), head[1], *body]), "device-file")
    add("type-signature-hardlink", _tar([head[0], _special(SIGNATURE_NAME, tarfile.LNKTYPE, MANIFEST_NAME), *body]),
        "hardlink")
    pax_global = tarfile.TarInfo.create_pax_global_header({"comment": "hi"})
    add("pax-global-header", _finish(pax_global + raw[:end]), "corrupt-archive")

    # --- canonical form of the archive itself -------------------------------------------------
    sloppy = bytearray(raw)
    sloppy[148:156] = b"%07o\0" % int(raw[148:154], 8)  # "0012345\0" instead of "012345\0 ": tarfile accepts it
    add("header-checksum-7-digits", bytes(sloppy), "corrupt-archive")
    sloppy2 = bytearray(raw)
    payload_header = parts[2].offset_data - BLOCK
    sloppy2[payload_header + 148:payload_header + 156] = b" " + raw[payload_header + 149:payload_header + 154] + b"\0 "
    add("header-checksum-leading-space", bytes(sloppy2), "corrupt-archive")
    for slug, at in [("manifest", parts[0]), ("signature", parts[1]), ("payload", parts[-1])]:
        if at.size % BLOCK:
            dirty = bytearray(raw)
            dirty[at.offset_data + at.size] = 0x20
            add(f"padding-dirty-{slug}", bytes(dirty), "corrupt-archive")
    add("trailing-garbage", raw + b"junk", "corrupt-archive")
    add("trailing-record", raw + b"\0" * RECORD, "trailing-data")
    add("trailing-block", raw + b"\0" * BLOCK, "truncated|trailing-data")
    add("trailing-second-bundle", raw + raw, "corrupt-archive")
    add("end-marker-missing", raw[:end], "truncated")
    add("end-marker-half", raw[:end] + bytes(BLOCK), "truncated")
    add("end-marker-garbage", raw[:end] + b"\xff" * 2 * BLOCK + raw[end + 2 * BLOCK:], "corrupt-archive")

    # --- version policy and board kind (validly signed, structurally perfect) -----------------
    def policy_bundle(version: str, min_version: str, boards: list[str]) -> tuple[bytes, str | None]:
        v, mv = str(Version(version)), str(Version(min_version))
        if Version(mv) > Version(v):
            mv = v
        return resigned_bundle(edited(version=v, min_version=mv, boards=boards)), policy_reason(v, mv, boards)

    installed = Version(installed_version)
    top = max(installed, Version(floor_version)) if floor_version is not None else installed
    above = f"{top.major + 1}.0.0"
    others = [b for b in BOARD_KINDS if b != board_kind]
    base = installed.base_version
    cases: dict[str, tuple[str, str, list[str]]] = {
        "downgrade": (_lower(installed), "0", manifest["boards"]),
        "downgrade-rc": (f"{base}rc1", "0", manifest["boards"]),
        "downgrade-dev": (f"{base}.dev0", "0", manifest["boards"]),
        "downgrade-far": ("0.0.1", "0", manifest["boards"]),
        "not-newer": (str(installed), "0", manifest["boards"]),
        "below-floor": (floor_version or _lower(installed), "0", manifest["boards"]),
        "too-old-to-update": (above, above, manifest["boards"]),
        "wrong-board": (above, "0", others[:2]),
        "wrong-board-all-others": (above, "0", others),
    }
    for slug, (version, min_version, boards) in cases.items():
        data, verdict = policy_bundle(version, min_version, boards)
        if verdict is not None:
            add(f"policy-{slug}", data, verdict)

    # --- not bundles at all -------------------------------------------------------------------
    add("empty-file", b"", "not-a-bundle")
    add("random-bytes", random.Random(7).randbytes(4 * RECORD), "not-a-bundle")
    add("text-file", b"this is not an update\n", "not-a-bundle")
    add("bare-manifest", manifest_bytes, "not-a-bundle")
    add("zeros-only", bytes(RECORD), "not-a-bundle")
    add("elf", b"\x7fELF\x02\x01\x01" + bytes(2 * RECORD), "not-a-bundle")
    add("zip", b"PK\x03\x04" + bytes(RECORD), "not-a-bundle")
    add("gzip-compressed", gzip.compress(raw, mtime=0), "not-a-bundle")
    add("bzip2-compressed", bz2.compress(raw), "not-a-bundle")
    add("xz-compressed", lzma.compress(raw), "not-a-bundle")
    add("unrelated-tar", _tar([_reg("README", b"hello\n"), _reg("src/main.c", b"int main(){}\n")]), "not-a-bundle")
    return corpus.items
