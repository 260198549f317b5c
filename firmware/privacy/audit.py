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

The file is small (capped at ``privacy.audit_max_bytes``; the oldest lines go first) and is
rewritten whole on every append through ``fsutil.atomic_write_bytes``, so a power cut leaves the
old log or the new one. A disk error never propagates: it is logged, counted in
``write_errors``, and the entry stays in memory (the log is held in RAM anyway, bounded by the
same byte cap) until a later append manages to write the file.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from ..fsutil import atomic_write_bytes

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


class AuditLog:
    """A capped JSON-lines log, rewritten atomically on each append; held in RAM as well."""

    def __init__(self, path: Path, max_bytes: int, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.clock = clock
        self.write_errors = 0
        self.skipped_lines = 0  # lines of the existing file that were torn, corrupt or not allow-listed
        self.unsaved = 0  # entries appended since the last successful write
        self._lines: deque[bytes] = deque()  # encoded entries, "\n" included, oldest first
        self._entries: deque[dict[str, Any]] = deque()  # the same, decoded, for read()
        self._size = 0
        self._loaded = False
        self._lock = threading.Lock()  # gpiozero calls back from its own thread
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            log.error("audit log: cannot create %s: %s; entries are kept in memory", path.parent, e)
        self._load()

    # -- loading ------------------------------------------------------------------------------
    def _load(self) -> None:
        """Read the existing file (its last max_bytes), tolerating a torn or corrupt tail."""
        try:
            with open(self.path, "rb") as f:
                size = f.seek(0, 2)
                start = max(0, size - self.max_bytes)
                f.seek(start)
                data = f.read()
        except FileNotFoundError:
            data, start = b"", 0
        except OSError as e:
            # Not loaded: appends will not overwrite a file that could not be read.
            log.error("audit log: cannot read %s: %s; new entries are kept in memory", self.path, e)
            return
        lines = data.split(b"\n")
        if start > 0:
            lines = lines[1:]  # the first line was cut by the seek: dropped as old, not corrupt
        kept: list[tuple[bytes, dict[str, Any]]] = []
        for raw in lines:
            if not raw.strip():
                continue
            entry = _parse(raw)
            if entry is None:
                self.skipped_lines += 1
                continue
            kept.append((orjson.dumps(entry) + b"\n", entry))
        if self.skipped_lines:
            log.warning("audit log %s: skipped %d unreadable line(s)", self.path, self.skipped_lines)
        # Entries appended while the file could not be read go after the ones on disk.
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
        with self._lock:
            if not self._loaded:
                self._load()
            self._push(orjson.dumps(entry) + b"\n", entry)
            self.unsaved += 1
            self._flush()
        return entry

    def _flush(self) -> None:
        if not self._loaded:
            self.write_errors += 1
            return
        try:
            atomic_write_bytes(self.path, b"".join(self._lines), mode=0o600)
        except OSError as e:
            self.write_errors += 1
            if self.write_errors == 1 or self.unsaved == 1:
                log.error("audit log: cannot write %s: %s; %d entr%s kept in memory only", self.path, e,
                          self.unsaved, "y" if self.unsaved == 1 else "ies")
            return
        if self.unsaved > 1:
            log.info("audit log: %s writable again; %d entries saved", self.path, self.unsaved)
        self.unsaved = 0

    def read(self, limit: int, since_t: float | None = None) -> list[dict[str, Any]]:
        """The newest ``limit`` entries after ``since_t`` (epoch seconds), oldest first."""
        if limit <= 0:
            return []
        with self._lock:
            entries = [e for e in self._entries if since_t is None or e["t"] > since_t]
        return [dict(e) for e in entries[-limit:]]

    def __len__(self) -> int:
        return len(self._entries)
