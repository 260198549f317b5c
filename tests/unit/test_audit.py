"""The opt-out audit log: capped JSON lines, atomic rewrites, an allow-list, and no raising on disk errors."""

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
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


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
        assert path.stat().st_size <= 1000
    kept = lines(path)
    assert 5 < len(kept) < 50
    assert [e["vectors"] for e in kept] == list(range(50 - len(kept), 50))  # a contiguous newest tail
    assert log.read(1000) == kept
    # A file larger than the cap (e.g. the cap was lowered) is read from its tail only.
    smaller = AuditLog(path, 300)
    assert smaller.read(1000)
    assert smaller.read(1000) == kept[-len(smaller.read(1000)):] and smaller.skipped_lines == 0
    smaller.append("resume", "button")
    assert path.stat().st_size <= 300 and lines(path)[-1]["event"] == "resume"


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
    on_disk = lines(path)  # every line parses: the torn and corrupt lines are gone
    assert on_disk[:2] == good and [e["event"] for e in on_disk[2:]] == ["purge"] * 3
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
    real = audit_mod.atomic_write_bytes

    def disk_full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(audit_mod, "atomic_write_bytes", disk_full)
    log.append("resume", "button")
    assert log.write_errors == 1 and [e["event"] for e in lines(path)] == ["optout"]
    monkeypatch.setattr(audit_mod, "atomic_write_bytes", real)
    log.append("purge", "api", vectors=0)
    assert [e["event"] for e in lines(path)] == ["optout", "resume", "purge"]
    assert log.write_errors == 1 and log.unsaved == 0


def test_an_unreadable_existing_log_is_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.mkdir()  # something that cannot be read as the log
    log = AuditLog(path, 4096)
    log.append("optout", "button")
    assert log.write_errors == 1 and path.is_dir() and log.read(5)[0]["event"] == "optout"
