"""The opt-out audit log: capped JSON lines appended and fsynced, rotated by size atomically, an allow-list,
no raising on disk errors, and readers never behind a writer's fsync."""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import stat
from pathlib import Path

import jsonschema
import pytest

import firmware.privacy.audit as audit_mod
from firmware.privacy.audit import AUDIT_SCHEMA, EVENTS, SOURCES, AuditLog


class Clock:
    def __init__(self, t: float = 1_732_550_400.0) -> None:
        self.t = t

    def __call__(self) -> float:
        self.t += 1.2345
        return self.t


def lines(path: Path) -> list[dict]:
    """The entries on disk, both segments (the older one, audit.jsonl.1, first)."""
    out = []
    for p in (path.with_name(path.name + ".1"), path):
        if p.exists():
            out += [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines()]
    return out


def on_disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path.with_name(path.name + ".1"), path) if p.exists())


def leftovers(d: Path) -> list[str]:
    return sorted(n for n in os.listdir(d) if n.endswith(".tmp"))


def test_append_then_read_newest_last(tmp_path: Path) -> None:
    path = tmp_path / "state" / "audit.jsonl"
    log = AuditLog(path, 64 * 1024, clock=Clock())
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700  # created, private
    e1 = log.append("optout", "button", vectors=12, tracks=3)
    log.append("purge", "api", vectors=0)
    log.append("retention", "schedule", vectors=4, oldest_s=600.5)
    assert e1["t"] == round(e1["t"], 3) and e1["iso"].endswith("Z")
    assert e1["iso"].startswith("2024-11-25T16:00:01.23")
    assert list(e1) == ["t", "iso", "event", "source", "vectors", "tracks"]
    on_disk = lines(path)
    assert [e["event"] for e in on_disk] == ["optout", "purge", "retention"]
    assert on_disk[0] == e1 and on_disk[2]["oldest_s"] == 600.5
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert log.read(100) == on_disk
    assert log.read(2) == on_disk[1:]  # the newest two, oldest first
    assert log.read(100, since_t=e1["t"]) == on_disk[1:]
    assert log.read(0) == [] and log.write_errors == 0
    jsonschema.validate({"entries": log.read(100), "write_errors": 0}, AUDIT_SCHEMA)
    # A restart reads the file back.
    again = AuditLog(path, 64 * 1024)
    assert again.read(100) == on_disk and again.skipped_lines == 0


def test_cap_drops_the_oldest_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, 1000, clock=Clock())
    for i in range(50):
        log.append("optout", "button", vectors=i)
        assert on_disk_bytes(path) <= 1000 and path.stat().st_size <= 500  # two segments of half the cap
    assert log.rotations > 0
    kept = lines(path)
    assert 5 < len(kept) < 50
    assert [e["vectors"] for e in kept] == list(range(50 - len(kept), 50))  # a contiguous newest tail
    assert log.read(1000)[-len(kept):] == kept  # RAM holds up to the cap, the disk at least half of it
    assert AuditLog(path, 1000).read(1000) == kept
    # A file larger than the cap (e.g. the cap was lowered) is read from its tail only.
    smaller = AuditLog(path, 300)
    assert smaller.read(1000)
    assert smaller.read(1000) == kept[-len(smaller.read(1000)):] and smaller.skipped_lines == 0
    smaller.append("resume", "button")
    assert path.stat().st_size <= 150 and lines(path)[-1]["event"] == "resume"


def test_writes_are_atomic_and_a_torn_file_is_tolerated(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "audit.jsonl"
    good = [
        {"t": 1.0, "iso": "1970-01-01T00:00:01.000Z", "event": "optout", "source": "button", "vectors": 2},
        {"t": 2.0, "iso": "1970-01-01T00:00:02.000Z", "event": "resume", "source": "button"},
    ]
    bad = [
        "not json at all",
        json.dumps({"t": 3.0, "iso": "x", "event": "optout", "source": "button", "name": "Alice"}),  # a string count
        json.dumps({"t": 4.0, "iso": "x", "event": "face_seen", "source": "button"}),  # not an allowed event
        json.dumps([1, 2, 3]),
    ]
    text = "\n".join([json.dumps(good[0]), *bad, json.dumps(good[1])]) + '\n{"t": 5.0, "iso": "1970-01-01T00:0'
    path.write_text(text, encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        log = AuditLog(path, 64 * 1024, clock=Clock(10.0))
    assert log.read(100) == good
    assert log.skipped_lines == len(bad) + 1 and "skipped 5" in caplog.text
    for _ in range(3):
        log.append("purge", "api", vectors=1)
    assert leftovers(tmp_path) == []
    # appended after what was there: the torn line stays torn (and skipped), the new entries start on
    # a line of their own, so none of them is lost to it
    raw = path.read_text(encoding="utf-8")
    assert raw.startswith(text) and raw.endswith("\n")
    again = AuditLog(path, 64 * 1024)
    assert again.read(100)[:2] == good and [e["event"] for e in again.read(100)[2:]] == ["purge"] * 3
    assert again.skipped_lines == len(bad) + 1
    assert sorted(os.listdir(tmp_path)) == ["audit.jsonl"]


@pytest.mark.parametrize(
    ("event", "source", "counts", "match"),
    [
        ("optout", "button", {"note": "Alice"}, "finite int or float"),
        ("optout", "button", {"vectors": "12"}, "finite int or float"),
        ("optout", "button", {"paused": True}, "finite int or float"),
        ("optout", "button", {"vectors": math.nan}, "finite int or float"),
        ("optout", "button", {"vectors": [1]}, "finite int or float"),
        ("optout", "button", {"t": 1}, "not allowed"),
        ("optout", "button", {"Name": 1}, "not allowed"),
        ("face_seen", "button", {}, "audit event"),
        ("Optout", "button", {}, "audit event"),
        ("optout", "alice@example.com", {}, "audit source"),
        ("optout", "button", {f"c{i}": i for i in range(17)}, "at most 16"),
    ],
)
def test_allow_list_rejects_anything_else(tmp_path: Path, event, source, counts, match) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, 64 * 1024)
    with pytest.raises(ValueError, match=match):
        log.append(event, source, **counts)
    assert not path.exists() and log.read(10) == []


def test_every_allowed_event_and_source_is_accepted(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", 64 * 1024)
    for ev in EVENTS:
        for src in SOURCES:
            log.append(ev, src, n=1, ratio=0.5)
    assert len(log) == len(EVENTS) * len(SOURCES) == len(lines(tmp_path / "audit.jsonl"))


def test_an_unwritable_place_never_raises_and_keeps_entries_in_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the log's folder should be")
    with caplog.at_level(logging.ERROR):
        log = AuditLog(blocker / "audit.jsonl", 4096)
        first = log.append("optout", "button", vectors=3)
        log.append("resume", "button")
    assert log.write_errors == 2 and log.unsaved == 2
    assert log.read(10) == [first, log.read(10)[1]] and log.read(10)[1]["event"] == "resume"
    assert "cannot" in caplog.text and str(blocker) in caplog.text
    assert blocker.read_text().startswith("a file")  # untouched
    # Bounded: the in-memory log keeps to the byte cap as well.
    for i in range(200):
        log.append("purge", "api", vectors=i)
    assert sum(len(json.dumps(e, separators=(",", ":"))) + 1 for e in log.read(1000)) <= 4096
    assert log.read(1)[0]["vectors"] == 199


def test_a_failed_write_is_retried_with_the_next_append(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, 64 * 1024, clock=Clock())
    log.append("optout", "button", vectors=1)
    real = audit_mod._append_bytes

    def disk_full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(audit_mod, "_append_bytes", disk_full)
    log.append("resume", "button")
    assert log.write_errors == 1 and log.unsaved == 1 and [e["event"] for e in lines(path)] == ["optout"]
    monkeypatch.setattr(audit_mod, "_append_bytes", real)
    log.append("purge", "api", vectors=0)
    assert [e["event"] for e in lines(path)] == ["optout", "resume", "purge"]
    assert log.write_errors == 1 and log.unsaved == 0


def test_an_unreadable_existing_log_is_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.mkdir()  # something that cannot be read as the log
    log = AuditLog(path, 4096)
    log.append("optout", "button")
    assert log.write_errors == 1 and path.is_dir() and log.read(5)[0]["event"] == "optout"


def test_an_append_writes_one_line_and_no_rewrite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One event is one small write and one fsync on the SD card: the file is appended to in place
    (same inode, grown by exactly the new line), never copied or replaced until it rotates."""
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, 256 * 1024, clock=Clock())
    for i in range(200):
        log.append("optout", "button", vectors=i, tracks=3, frames=1, pause_s=600)
    ino, size = path.stat().st_ino, path.stat().st_size
    writes: list[int] = []
    replaced: list[object] = []
    real_write = os.write
    monkeypatch.setattr(audit_mod.os, "write", lambda fd, data: writes.append(len(data)) or real_write(fd, data))
    monkeypatch.setattr(audit_mod.os, "replace", lambda *a: replaced.append(a))
    entry = log.append("resume", "button")
    line = len(json.dumps(entry, separators=(",", ":"))) + 1
    assert path.stat().st_ino == ino and path.stat().st_size == size + line
    assert writes == [line] and replaced == []


def test_rotation_keeps_a_contiguous_newest_tail_across_restarts(tmp_path: Path) -> None:
    for cap in (400, 1000, 4096):
        path = tmp_path / f"cap{cap}" / "audit.jsonl"
        log = AuditLog(path, cap, clock=Clock())
        for i in range(300):
            log.append("purge", "api", vectors=i)
            if i % 37 == 0:  # a restart now and then
                log = AuditLog(path, cap, clock=Clock(log.read(1)[0]["t"]))
            assert on_disk_bytes(path) <= cap
        kept = lines(path)
        assert [e["vectors"] for e in kept] == list(range(300 - len(kept), 300))
        assert len(kept) * 60 > cap // 3  # most of the cap is used
        assert AuditLog(path, cap).read(10_000) == kept[-len(AuditLog(path, cap).read(10_000)):]
        assert sorted(os.listdir(path.parent)) == ["audit.jsonl", "audit.jsonl.1"]


def test_reading_never_waits_for_a_writers_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GET /v1/audit runs on the event loop: while an append waits on a slow fsync (an SD card),
    read() must still answer at once, with the new entry already in it."""
    import threading
    import time

    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, 64 * 1024, clock=Clock())
    log.append("optout", "button", vectors=1)
    in_fsync, release = threading.Event(), threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        in_fsync.set()
        release.wait(10)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    writer = threading.Thread(target=log.append, args=("resume", "button"))
    writer.start()
    try:
        assert in_fsync.wait(5)
        t0 = time.monotonic()
        got = log.read(10)
        assert time.monotonic() - t0 < 0.1
        assert [e["event"] for e in got] == ["optout", "resume"]
    finally:
        release.set()
        writer.join(10)
    assert [e["event"] for e in lines(path)] == ["optout", "resume"]
