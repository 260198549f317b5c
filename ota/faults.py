"""Every filesystem step the OTA slot store takes, numbered, with an optional power cut at one of them.

The slot store never calls ``open(..., "w")``, ``os.replace`` and friends itself: it goes through an
:class:`FsOps`, whose methods each count as one *step*. That gives two things:

* ``CUECAM_OTA_TRACE=path`` appends ``"<n> <op> <path>"`` for every step to ``path``, so a test can count
  the steps an install takes and choose where to cut the power;
* ``CUECAM_OTA_KILL_AT=N`` makes the process ``SIGKILL`` itself at step ``N``. How the cut looks is set by
  ``CUECAM_OTA_FAULT_MODEL``:

  ``before_fsync`` (the default)
      kill just before step ``N`` runs, after first undoing everything a real power cut could lose:
      every file written since its last fsync is truncated to 0 bytes, and every directory entry change
      (create, rename, unlink, mkdir, rmdir) whose directory was not fsynced since is undone, newest
      first (a created file or directory disappears, a rename is renamed back and the file it replaced
      comes back, an unlinked file or removed directory comes back). ``N`` = number of steps + 1 cuts
      the power as the process finishes (in :meth:`FsOps.close`), which catches a missing final fsync;
  ``after``
      kill right after step ``N`` completed; nothing is lost (the page cache survived);
  ``health``
      no kill during the filesystem steps; ``N`` is a time in milliseconds into the new version's
      health-check window (see ``ota.installer health-window``), read with :meth:`FsOps.health_kill_ms`.

Without ``CUECAM_OTA_KILL_AT`` nothing is tracked and the wrappers are thin: ``os`` calls and a counter.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

KILL_AT_ENV = "CUECAM_OTA_KILL_AT"
MODEL_ENV = "CUECAM_OTA_FAULT_MODEL"
TRACE_ENV = "CUECAM_OTA_TRACE"
MODELS = ("before_fsync", "after", "health")
_CHUNK = 1 << 20


def _sigkill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class _EntryOp:
    """A directory entry change that is lost by a power cut until every directory in ``dirs`` is fsynced."""

    seq: int
    kind: str  # create | mkdir | unlink | rmdir | rename
    path: str  # for rename: the destination
    dirs: set[str]
    src: str = ""  # rename only
    backup: str | None = None  # unlink / rename over a file: a copy of the durable content it had
    had_content: bool = False  # unlink / rename over a file: it existed (backup None then means 0 bytes)


@dataclass
class _Journal:
    """What a power cut right now would undo (only kept for the ``before_fsync`` model)."""

    dirty: set[str] = field(default_factory=set)  # files written since their last fsync
    pending: list[_EntryOp] = field(default_factory=list)
    backup_dir: str | None = None
    seq: int = 0


class FsOps:
    """Numbered filesystem steps with fault injection; one instance per process is the norm (see :func:`get`)."""

    def __init__(
        self,
        *,
        kill_at: int | None = None,
        model: str = "before_fsync",
        trace: Path | None = None,
        kill: Callable[[], None] = _sigkill,
    ) -> None:
        if model not in MODELS:
            raise ValueError(f"{MODEL_ENV} must be one of {', '.join(MODELS)}, not {model!r}")
        if kill_at is not None and kill_at < 0:
            raise ValueError(f"{KILL_AT_ENV} must be >= 0, not {kill_at}")
        self.kill_at = kill_at
        self.model = model
        self.trace = trace
        self.steps = 0
        self._kill = kill
        self._journal = _Journal() if kill_at is not None and model == "before_fsync" else None

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> FsOps:
        env = os.environ if environ is None else environ
        raw = env.get(KILL_AT_ENV, "").strip()
        try:
            kill_at = int(raw) if raw else None
        except ValueError:
            raise ValueError(f"{KILL_AT_ENV} must be an integer, not {raw!r}") from None
        trace = env.get(TRACE_ENV, "").strip()
        return cls(kill_at=kill_at, model=env.get(MODEL_ENV, "before_fsync").strip() or "before_fsync",
                   trace=Path(trace) if trace else None)

    # -- the steps -----------------------------------------------------------------------------

    def write_file(self, path: Path, data: bytes, *, mode: int = 0o644) -> None:
        """Create or truncate ``path`` and write ``data`` (no fsync: that is its own step)."""
        self._step("write_file", path)
        created = not os.path.lexists(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        self._wrote(path, created)
        self._after()

    def copy_file(self, src: Path, dst: Path, *, mode: int = 0o644) -> tuple[str, int]:
        """Copy ``src`` to ``dst`` (created or truncated, no fsync); returns (sha256 hex, size) of what was written."""
        self._step("copy_file", dst)
        created = not os.path.lexists(dst)
        digest = hashlib.sha256()
        size = 0
        with open(src, "rb") as fin:
            fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            try:
                while chunk := fin.read(_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view):]
            finally:
                os.close(fd)
        self._wrote(dst, created)
        self._after()
        return digest.hexdigest(), size

    def fsync(self, target: Path | int) -> None:
        """fsync a file by path or by an open descriptor (a descriptor cannot be journalled by path)."""
        self._step("fsync", target)
        if isinstance(target, int):
            os.fsync(target)
        else:
            fd = os.open(target, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            if self._journal is not None:
                self._journal.dirty.discard(os.path.abspath(target))
        self._after()

    def replace(self, src: Path, dst: Path) -> None:
        self._step("replace", dst)
        j = self._journal
        op = None
        if j is not None:
            s, d = os.path.abspath(src), os.path.abspath(dst)
            op = self._entry_op("rename", d, {os.path.dirname(s), os.path.dirname(d)}, src=s)
            if os.path.isfile(d):
                op.had_content = True
                op.backup = self._backup(d)
        os.replace(src, dst)
        if j is not None and op is not None:
            j.pending.append(op)
            if op.src in j.dirty:
                j.dirty.discard(op.src)
                j.dirty.add(op.path)
            else:
                j.dirty.discard(op.path)
        self._after()

    def mkdir(self, path: Path) -> None:
        self._step("mkdir", path)
        os.mkdir(path)
        if self._journal is not None:
            p = os.path.abspath(path)
            self._journal.pending.append(self._entry_op("mkdir", p, {os.path.dirname(p)}))
        self._after()

    def fsync_dir(self, path: Path) -> None:
        self._step("fsync_dir", path)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if self._journal is not None:
            d = os.path.abspath(path)
            keep = []
            for op in self._journal.pending:
                op.dirs.discard(d)
                if op.dirs:
                    keep.append(op)
            self._journal.pending = keep
        self._after()

    def unlink(self, path: Path) -> None:
        self._step("unlink", path)
        j = self._journal
        op = None
        if j is not None:
            p = os.path.abspath(path)
            op = self._entry_op("unlink", p, {os.path.dirname(p)})
            op.had_content = True
            op.backup = self._backup(p)
        os.unlink(path)
        if j is not None and op is not None:
            j.pending.append(op)
            j.dirty.discard(op.path)
        self._after()

    def rmdir(self, path: Path) -> None:
        self._step("rmdir", path)
        os.rmdir(path)
        if self._journal is not None:
            p = os.path.abspath(path)
            self._journal.pending.append(self._entry_op("rmdir", p, {os.path.dirname(p)}))
        self._after()

    def clear_tree(self, path: Path) -> None:
        """Remove everything inside ``path`` (not ``path`` itself), one unlink/rmdir step per entry, deepest first."""
        for dirpath, dirnames, filenames in os.walk(path, topdown=False):
            for name in sorted(filenames):
                self.unlink(Path(dirpath) / name)
            for name in sorted(dirnames):
                sub = Path(dirpath) / name
                if sub.is_symlink():
                    self.unlink(sub)
                else:
                    self.rmdir(sub)

    # -- the health-check window --------------------------------------------------------------------

    def health_kill_ms(self) -> int | None:
        """Milliseconds into the health-check window at which to die, when the fault model is ``health``."""
        return self.kill_at if self.model == "health" else None

    def kill_now(self) -> None:
        self._kill()

    # -- the machinery ------------------------------------------------------------------------------

    def _step(self, op: str, target: Path | int) -> None:
        self.steps += 1
        n = self.steps
        if self.trace is not None:
            with open(self.trace, "a", encoding="utf-8") as f:
                f.write(f"{n} {op} {target}\n")
        if n == self.kill_at and self.model == "before_fsync":
            self._lose_unsynced()
            self._kill()

    def _after(self) -> None:
        if self.steps == self.kill_at and self.model == "after":
            self._kill()

    def _wrote(self, path: Path, created: bool) -> None:
        j = self._journal
        if j is None:
            return
        p = os.path.abspath(path)
        j.dirty.add(p)
        if created:
            j.pending.append(self._entry_op("create", p, {os.path.dirname(p)}))

    def _entry_op(self, kind: str, path: str, dirs: set[str], *, src: str = "") -> _EntryOp:
        assert self._journal is not None
        self._journal.seq += 1
        return _EntryOp(self._journal.seq, kind, path, dirs, src=src)

    def _backup(self, path: str) -> str | None:
        """A copy of ``path``'s durable content (None: it has none, it was written and never fsynced)."""
        j = self._journal
        assert j is not None
        if path in j.dirty:
            return None
        if j.backup_dir is None:
            j.backup_dir = tempfile.mkdtemp(prefix="cuecam-ota-faults-")
        j.seq += 1
        dst = os.path.join(j.backup_dir, str(j.seq))
        shutil.copyfile(path, dst)
        return dst

    def _lose_unsynced(self) -> None:
        """What the power cut takes with it: un-fsynced directory entry changes, then un-fsynced file data."""
        j = self._journal
        if j is None:
            return
        for op in sorted(j.pending, key=lambda o: o.seq, reverse=True):
            parent_there = os.path.isdir(os.path.dirname(op.path))
            if op.kind == "create":
                if os.path.lexists(op.path):
                    os.unlink(op.path)
                j.dirty.discard(op.path)
            elif op.kind == "mkdir":
                shutil.rmtree(op.path, ignore_errors=True)
            elif op.kind == "rmdir":
                if parent_there and not os.path.lexists(op.path):
                    os.mkdir(op.path)
            elif op.kind == "unlink":
                if parent_there:
                    self._restore(op.path, op.backup)
            elif op.kind == "rename":
                if os.path.lexists(op.path) and os.path.isdir(os.path.dirname(op.src)):
                    os.replace(op.path, op.src)
                    if op.path in j.dirty:
                        j.dirty.discard(op.path)
                        j.dirty.add(op.src)
                if op.had_content and parent_there:
                    self._restore(op.path, op.backup)
        for path in j.dirty:
            if os.path.isfile(path):
                os.truncate(path, 0)
        j.pending.clear()
        j.dirty.clear()
        if j.backup_dir is not None:
            shutil.rmtree(j.backup_dir, ignore_errors=True)

    @staticmethod
    def _restore(path: str, backup: str | None) -> None:
        if backup is None:
            with open(path, "wb"):
                pass
        else:
            shutil.copyfile(backup, path)

    def close(self) -> None:
        """The process is done. Under ``before_fsync`` with ``N`` = steps + 1 the cut comes now (whatever the
        process left unsynced is lost); otherwise drop the backups kept for a cut that never came."""
        if self._journal is not None and self.kill_at == self.steps + 1:
            self._lose_unsynced()
            self._kill()
        if self._journal is not None and self._journal.backup_dir is not None:
            shutil.rmtree(self._journal.backup_dir, ignore_errors=True)
            self._journal.backup_dir = None


_current: FsOps | None = None


def get() -> FsOps:
    """The process's :class:`FsOps`, configured from the environment on first use."""
    global _current
    if _current is None:
        _current = FsOps.from_env()
    return _current
