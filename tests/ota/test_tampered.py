"""Hundreds of tampered, malformed and hostile bundles: none is accepted, none writes outside staging.

A good bundle is built from real repository files, ``ota.corpus.generate_tampered`` derives the
corpus from it, and every bad bundle is verified into its own staging directory. Three checks
watch the file system: a snapshot of the whole tmp tree (minus the staging directories) before and
after; a spy on ``os.open``/``os.mkdir``/renames that resolves every write-mode call (through
``/proc/self/fd`` for ``dir_fd`` calls) and requires it to be inside the current staging
directory; and each staging directory must be gone afterwards. No audit hook is installed: they
cannot be removed from the pytest process.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import time
from collections import Counter
from pathlib import Path

import pytest

from ota.bundle import REASONS, BundleError, build_bundle, generate_keypair, verify_bundle
from ota.corpus import ANY, generate_tampered, reason_matches
from tests.conftest import ROOT

REPO_FILES = ("firmware/__init__.py", "board_configs/sim.yaml", "models/manifest.yaml")
INSTALLED, FLOOR, BOARD = "1.1.0", "1.0.0", "sim"
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def snapshot(root: Path, skip: Path) -> dict[str, tuple[int, int, int]]:
    out: dict[str, tuple[int, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here == skip:
            dirnames[:] = []  # the staging directories themselves are not "outside"
        for name in dirnames + filenames:
            st = os.lstat(here / name)
            is_dir = stat.S_ISDIR(st.st_mode)
            out[str((here / name).relative_to(root))] = (
                stat.S_IFMT(st.st_mode), 0 if is_dir else st.st_size, 0 if is_dir else st.st_mtime_ns)
    return out


def fingerprint(path: Path) -> tuple[int, str]:
    size = path.stat().st_size
    with path.open("rb") as f:
        return size, hashlib.sha256(f.read(16 << 20)).hexdigest()


class WriteSpy:
    """Records every write-mode ``os.open``, ``os.mkdir`` and rename, resolved to an absolute path."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.allowed: Path | None = None
        self.outside: list[str] = []
        self.inside = 0
        real_open, real_mkdir = os.open, os.mkdir
        real_rename, real_replace = os.rename, os.replace

        def where(path: object, dir_fd: int | None) -> str:
            base = os.readlink(f"/proc/self/fd/{dir_fd}") if dir_fd is not None else os.getcwd()
            return os.path.normpath(os.path.join(base, os.fsdecode(path)))  # type: ignore[arg-type]

        def record(path: str) -> None:
            if self.allowed is not None and os.path.commonpath([path, str(self.allowed)]) == str(self.allowed):
                self.inside += 1
            else:
                self.outside.append(path)

        def spy_open(path: object, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
            if flags & WRITE_FLAGS:
                record(where(path, dir_fd))
            return real_open(path, flags, mode, dir_fd=dir_fd)  # type: ignore[arg-type]

        def spy_mkdir(path: object, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
            record(where(path, dir_fd))
            real_mkdir(path, mode, dir_fd=dir_fd)  # type: ignore[arg-type]

        def spy_rename(src: object, dst: object, **kw: object) -> None:
            record(where(dst, None))
            real_rename(src, dst, **kw)  # type: ignore[arg-type]

        def spy_replace(src: object, dst: object, **kw: object) -> None:
            record(where(dst, None))
            real_replace(src, dst, **kw)  # type: ignore[arg-type]

        monkeypatch.setattr(os, "open", spy_open)
        monkeypatch.setattr(os, "mkdir", spy_mkdir)
        monkeypatch.setattr(os, "rename", spy_rename)
        monkeypatch.setattr(os, "replace", spy_replace)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to resolve dir_fd writes")
def test_no_tampered_bundle_is_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started = time.monotonic()
    priv, pub = generate_keypair()
    other_priv, _ = generate_keypair()
    good = build_bundle({rel: ROOT / rel for rel in REPO_FILES}, version="1.2.3", boards=["sim", "rpi5"],
                        min_version="1.0.0", private_key=priv, out=tmp_path / "good.bundle")

    # The good bundle itself is accepted and unpacks byte for byte.
    vb = verify_bundle(good, [pub], board_kind=BOARD, installed_version=INSTALLED, floor_version=FLOOR,
                       staging_dir=tmp_path / "good-staging")
    for rel in REPO_FILES:
        assert (vb.root / rel).read_bytes() == (ROOT / rel).read_bytes()
    shutil.rmtree(vb.root)

    items = generate_tampered(good, priv, other_priv, tmp_path / "corpus",
                              installed_version=INSTALLED, floor_version=FLOOR, board_kind=BOARD)
    assert len(items) >= 200
    assert len({fingerprint(p) for p, _ in items}) == len(items), "corpus bundles must be distinct"
    assert fingerprint(good) not in {fingerprint(p) for p, _ in items}
    for _, expected in items:
        assert expected == ANY or set(expected.split("|")) <= REASONS, expected

    staging_root = tmp_path / "staging"
    staging_root.mkdir()
    before = snapshot(tmp_path, skip=staging_root)
    spy = WriteSpy(monkeypatch)
    accepted: list[str] = []
    wrong: list[str] = []
    unclear: list[str] = []
    left_behind: list[str] = []
    reasons: Counter[str] = Counter()
    for i, (path, expected) in enumerate(items):
        staging = staging_root / f"{i:03d}"
        spy.allowed = staging
        try:
            verify_bundle(path, [pub], board_kind=BOARD, installed_version=INSTALLED, floor_version=FLOOR,
                          staging_dir=staging)
        except BundleError as e:
            reasons[e.reason] += 1
            if not reason_matches(expected, e.reason):
                wrong.append(f"{path.name}: expected {expected}, got {e}")
            text = str(e)
            if not (text.startswith(f"{path}: ") and f"[{e.reason}]; " in text and e.reason in REASONS
                    and len(e.detail) >= 10):
                unclear.append(text)
        else:
            accepted.append(path.name)
        finally:
            spy.allowed = None
        if os.path.lexists(staging):
            left_behind.append(path.name)
    monkeypatch.undo()
    after = snapshot(tmp_path, skip=staging_root)

    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    bytes_outside = sum(max(before.get(k, (0, 0, 0))[1], after.get(k, (0, 0, 0))[1]) or 1 for k in changed)
    elapsed = time.monotonic() - started
    print(f"tampered_bundles: {len(items)}")
    print(f"accepted: {len(accepted)}")
    print(f"bytes_outside_staging: {bytes_outside}")
    print(f"write_calls_outside_staging: {len(spy.outside)} (inside: {spy.inside})")
    print(f"reasons: {len(reasons)} distinct, seconds: {elapsed:.1f}")

    assert accepted == []
    assert wrong == []
    assert unclear == []
    assert left_behind == []
    assert sorted(changed) == [] and bytes_outside == 0
    assert spy.outside == []
    assert spy.inside > 0  # the spy did see the payload being staged for the bundles that got that far
    assert os.listdir(staging_root) == []
    assert elapsed < 60
