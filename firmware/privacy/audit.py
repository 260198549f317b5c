"""The opt-out audit log: what the board did about privacy, for the privacy officer.

One JSON object per line::

    {"t": 1732550400.123, "iso": "2024-11-25T16:00:00.123Z", "event": "optout", "source": "button", "vectors": 12}

An entry holds no personal data, by construction: ``event`` and ``source`` come from the small
allow-lists below and everything else is a named number (a count or a duration), except two
labels of a companion's request (the opt-out button away from the board, firmware/privacy/companion.py):
``companion``, the companion's configured name (a device name such as ``door-1``), and ``reason``,
why a request was refused, from :data:`REASONS`. Anything else is refused with ``ValueError``,
and lines of an existing file that do not pass the same checks are skipped, so nothing but
allow-listed fields is ever served by ``GET /v1/audit``.

Each entry is appended to the file and fsynced (an SD card sees one small write per event, never
the whole log again). The log is capped at ``privacy.audit_max_bytes`` in two segments of half
that each: when the current one (``audit.jsonl``) would grow past its half, it is renamed over
the previous one (``audit.jsonl.1``) with ``os.replace`` (atomic: a power cut leaves one or the
other) and a new segment begins, so the oldest half goes first. A power cut mid-append leaves a
torn last line: it is skipped on read, and the next append starts on a new line. A disk error
never propagates: it is logged, counted in ``write_errors``, and the entries stay in memory (the
log is held in RAM anyway, bounded by the same byte cap) until a later append writes them.

Readers (``GET /v1/audit``) take only the lock that guards the in-memory entries, which no writer
holds across a write or an fsync: the disk has a lock of its own.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from ..fsutil import fsync_dir

log = logging.getLogger(__name__)

EVENTS = ("optout", "resume", "purge", "retention", "start", "stop", "refused", "paired", "unpaired")
SOURCES = ("button", "api", "schedule", "system", "companion")
# why the board refused a companion's request (event "refused", source "companion")
REASONS = ("unknown_companion", "bad_signature", "malformed", "wrong_board", "replay", "stale", "expired",
           "resume_not_allowed")
LABELS = ("companion", "reason")
RESERVED = ("t", "iso", "event", "source")
MAX_COUNTS = 16
_COUNT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
COMPANION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$")  # as privacy.optout.companions[].name

ENTRY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["t", "iso", "event", "source"],
    "properties": {
        "t": {"type": "number", "description": "epoch seconds"},
        "iso": {"type": "string", "description": "the same time, UTC ISO-8601"},
        "event": {"type": "string", "enum": list(EVENTS)},
        "source": {"type": "string", "enum": list(SOURCES)},
        "companion": {"type": "string", "pattern": COMPANION_NAME.pattern,
                      "description": "the companion (opt-out button away from the board) that sent the request"},
        "reason": {"type": "string", "enum": list(REASONS), "description": "why a companion's request was refused"},
    },
    "additionalProperties": {"type": "number", "description": "a count, e.g. vectors or tracks"},
}
AUDIT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["entries", "write_errors"],
    "properties": {
        "entries": {"type": "array", "items": ENTRY_SCHEMA, "description": "oldest first"},
        "write_errors": {"type": "integer", "minimum": 0,
                         "description": "appends that could not be written to disk since start (kept in RAM)"},
    },
}


def _check_counts(counts: dict[str, Any]) -> None:
    if len(counts) > MAX_COUNTS:
        raise ValueError(f"an audit entry takes at most {MAX_COUNTS} counts, got {len(counts)}")
    for name, value in counts.items():
        if name == "companion" and isinstance(value, str):
            if not COMPANION_NAME.match(value):
                raise ValueError(f"audit label companion={value[:80]!r} is not a device name")
            continue
        if name == "reason" and isinstance(value, str):
            if value not in REASONS:
                raise ValueError(f"audit label reason={value[:80]!r} is not one of {REASONS}")
            continue
        if name in RESERVED or not _COUNT_NAME.match(name):
            raise ValueError(f"audit count name {name!r} is not allowed (lower_snake_case, not one of {RESERVED})")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"audit count {name!r} must be a finite int or float, not {type(value).__name__}")


def _check(event: Any, source: Any, counts: dict[str, Any]) -> None:
    if event not in EVENTS:
        raise ValueError(f"audit event {event!r} is not one of {EVENTS}")
    if source not in SOURCES:
        raise ValueError(f"audit source {source!r} is not one of {SOURCES}")
    _check_counts(counts)


def _parse(line: bytes) -> dict[str, Any] | None:
    """An entry of an existing file, or None when the line is torn, corrupt or not allow-listed."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("iso"), str):
        return None
    t = obj.get("t")
    if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
        return None
    counts = {k: v for k, v in obj.items() if k not in RESERVED}
    try:
        _check(obj.get("event"), obj.get("source"), counts)
    except ValueError:
        return None
    return obj


def _append_bytes(path: Path, data: bytes) -> int:
    """Append ``data`` to ``path`` (created 0600) and fsync it; returns the file's new size."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def _read_tail(path: Path, max_bytes: int) -> tuple[bytes, bool]:
    """The last ``max_bytes`` of a file (b"" when missing) and whether it was cut at the start."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            start = max(0, size - max_bytes)
            f.seek(start)
            return f.read(), start > 0
    except FileNotFoundError:
        return b"", False


class AuditLog:
    """A capped JSON-lines log, appended and fsynced per entry, rotated by size; held in RAM as well."""

    def __init__(self, path: Path, max_bytes: int, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.previous = path.with_name(path.name + ".1")  # the older segment, after a rotation
        self.max_bytes = max_bytes
        self.segment_bytes = max(max_bytes // 2, 1)
        self.clock = clock
        self.write_errors = 0
        self.skipped_lines = 0  # lines of the existing files that were torn, corrupt or not allow-listed
        self.rotations = 0
        self._lines: deque[bytes] = deque()  # encoded entries, "\n" included, oldest first
        self._entries: deque[dict[str, Any]] = deque()  # the same, decoded, for read()
        self._size = 0
        self._pending: deque[bytes] = deque()  # appended in RAM, not yet on disk (oldest first)
        self._pending_size = 0
        self._loaded = False
        self._segment_size = 0  # bytes in the current segment on disk
        self._torn = False  # the current segment ends inside a line: the next write starts a new one
        self._lock = threading.Lock()  # the in-memory entries: held briefly, never across I/O
        self._disk = threading.Lock()  # the files: one writer at a time (gpiozero calls back from its thread)
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            log.error("audit log: cannot create %s: %s; entries are kept in memory", path.parent, e)
        with self._disk:
            self._load()

    @property
    def unsaved(self) -> int:
        """Entries appended that are not on disk yet."""
        return len(self._pending)

    # -- loading ------------------------------------------------------------------------------
    def _load(self) -> None:
        """Read the existing segments (their newest max_bytes), tolerating a torn or corrupt tail."""
        try:
            current, cut = _read_tail(self.path, self.max_bytes)
            older, older_cut = (b"", False) if cut else _read_tail(self.previous, self.max_bytes - len(current))
            self._segment_size = self.path.stat().st_size if current or self.path.exists() else 0
        except OSError as e:
            # Not loaded: appends will not write over files that could not be read.
            log.error("audit log: cannot read %s: %s; new entries are kept in memory", self.path, e)
            return
        kept: list[tuple[bytes, dict[str, Any]]] = []
        skipped = 0
        for data, was_cut in ((older, older_cut), (current, cut)):
            lines = data.split(b"\n")
            if was_cut:
                lines = lines[1:]  # the first line was cut by the seek: dropped as old, not corrupt
            for raw in lines:
                if not raw.strip():
                    continue
                entry = _parse(raw)
                if entry is None:
                    skipped += 1
                    continue
                kept.append((orjson.dumps(entry) + b"\n", entry))
        self.skipped_lines = skipped
        if skipped:
            log.warning("audit log %s: skipped %d unreadable line(s)", self.path, skipped)
        self._torn = bool(current) and not current.endswith(b"\n")
        with self._lock:
            # Entries appended while the files could not be read go after the ones on disk.
            pending = list(zip(self._lines, self._entries, strict=True))
            self._lines.clear()
            self._entries.clear()
            self._size = 0
            for line, entry in kept + pending:
                self._push(line, entry)
            self._loaded = True

    def _push(self, line: bytes, entry: dict[str, Any]) -> None:
        self._lines.append(line)
        self._entries.append(entry)
        self._size += len(line)
        while self._size > self.max_bytes and self._lines:
            self._size -= len(self._lines.popleft())
            self._entries.popleft()

    # -- the API ------------------------------------------------------------------------------
    def append(self, event: str, source: str, **counts: int | float | str) -> dict[str, Any]:
        """Record an event; returns the entry. Raises ValueError only for fields off the
        allow-list, never for a disk error."""
        _check(event, source, counts)
        t = round(self.clock(), 3)
        iso = datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        entry: dict[str, Any] = {"t": t, "iso": iso, "event": event, "source": source, **counts}
        line = orjson.dumps(entry) + b"\n"
        with self._lock:
            self._push(line, entry)
            self._pending.append(line)
            self._pending_size += len(line)
            while self._pending_size > self.max_bytes:  # bounded like the RAM log
                self._pending_size -= len(self._pending.popleft())
        with self._disk:
            if not self._loaded:
                self._load()
            self._flush()
        return entry

    def _flush(self) -> None:
        """Write the pending lines (called with the disk lock held, never the entries' lock)."""
        with self._lock:
            lines = list(self._pending)
        if not lines:
            return
        if not self._loaded:
            self.write_errors += 1
            return
        data = b"".join(lines)
        try:
            if self._segment_size and self._segment_size + len(data) > self.segment_bytes:
                os.replace(self.path, self.previous)  # the oldest half goes; atomic
                fsync_dir(self.path.parent)
                self._segment_size, self._torn = 0, False
                self.rotations += 1
            self._segment_size = _append_bytes(self.path, (b"\n" if self._torn else b"") + data)
            self._torn = False
        except OSError as e:
            self.write_errors += 1
            if self.write_errors == 1 or len(lines) == 1:
                log.error("audit log: cannot write %s: %s; %d entr%s kept in memory only", self.path, e,
                          len(lines), "y" if len(lines) == 1 else "ies")
            return
        if len(lines) > 1:
            log.info("audit log: %s writable again; %d entries saved", self.path, len(lines))
        with self._lock:
            for _ in lines:
                if self._pending:
                    self._pending_size -= len(self._pending.popleft())

    def read(self, limit: int, since_t: float | None = None) -> list[dict[str, Any]]:
        """The newest ``limit`` entries after ``since_t`` (epoch seconds), oldest first. Takes
        only the in-memory entries' lock, which no writer holds across disk I/O."""
        if limit <= 0:
            return []
        with self._lock:
            entries = [e for e in self._entries if since_t is None or e["t"] > since_t]
        return [dict(e) for e in entries[-limit:]]

    def __len__(self) -> int:
        return len(self._entries)
