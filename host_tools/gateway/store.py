"""What the gateway knows: the vectors of every board for ``store.retention_s``, one summary per
session (a board's random token: never an identity), per-zone time buckets, and hourly visitor
counts (numbers only) as the baseline of "slow hour" rules.

Exactly once: a vector is identified by (device, boot_id, seq). Each board's seq numbers only grow
within one boot, so the store keeps, per device, the boot and the highest seq it has taken, and
takes a page only past it; with SQLite the vectors and that cursor are committed in one
transaction, so a gateway restart resumes where it stopped, neither losing nor repeating a vector.
"""

from __future__ import annotations

import asyncio
import json
import math
import secrets
import sqlite3
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import LoadedGatewayConfig

SIGNALS = ("engagement", "satisfaction", "approach")
# A vector's approach/avoid value beyond these counts as approaching / avoiding.
APPROACH_LINE = 0.3


@dataclass(slots=True)
class Rec:
    device: str
    boot: str
    seq: int
    t0: float  # window start, epoch seconds (device clock + offset)
    t1: float  # window end
    token: str
    zone: str | None
    dwell_s: float
    engagement: float | None
    satisfaction: float | None
    approach: float | None
    exit: str | None
    received: float  # gateway wall clock

    @property
    def session(self) -> str:
        return f"{self.device}/{self.token}"


def rec_from_json(device: str, boot: str, v: dict[str, Any], received: float, offset: float = 0.0) -> Rec:
    """A board's vector (schema 1) as a Rec; raises KeyError/TypeError/ValueError if malformed."""
    def val(key: str) -> float | None:
        x = v[key]["value"]
        if x is None:
            return None
        f = float(x)
        if not math.isfinite(f):
            raise ValueError(f"{key} is not finite")
        return f

    if v.get("schema") != 1:
        raise ValueError(f"unknown vector schema {v.get('schema')!r}")
    token = str(v["token"])
    if not (1 <= len(token) <= 64 and token.isalnum()):
        raise ValueError("bad token")
    zone = v["zone"]
    return Rec(device, boot, int(v["seq"]), float(v["window_start"]) + offset, float(v["window_end"]) + offset,
               token, None if zone is None else str(zone)[:64], float(v["dwell_s"]), val("engagement"),
               val("dwell_satisfaction"), val("approach_avoid"), None if v.get("exit") is None else str(v["exit"])[:32],
               received)


def _add_signals(sums: dict[str, float], counts: dict[str, int], r: Rec) -> None:
    for k in SIGNALS:
        x = getattr(r, k)
        if x is not None:
            sums[k] += x
            counts[k] += 1


@dataclass(slots=True)
class Session:
    device: str
    token: str
    first: float
    last: float
    zones: set[str] = field(default_factory=set)
    windows: int = 0
    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(SIGNALS, 0.0))
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SIGNALS, 0))
    ended: bool = False

    def summary(self) -> dict[str, Any]:
        return {"device": self.device, "token": self.token, "first": round(self.first, 3), "last": round(self.last, 3),
                "seconds": round(self.last - self.first, 2), "zones": sorted(self.zones), "windows": self.windows,
                "ended": self.ended,
                **{f"{k}_mean": (round(self.sums[k] / self.counts[k], 3) if self.counts[k] else None) for k in SIGNALS}}


@dataclass(slots=True)
class Bucket:
    sessions: set[str] = field(default_factory=set)
    vectors: int = 0
    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(SIGNALS, 0.0))
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SIGNALS, 0))
    approaching: int = 0
    avoiding: int = 0

    def add(self, r: Rec) -> None:
        self.vectors += 1
        self.sessions.add(r.session)
        _add_signals(self.sums, self.counts, r)
        if r.approach is not None:
            self.approaching += r.approach > APPROACH_LINE
            self.avoiding += r.approach < -APPROACH_LINE


@dataclass(slots=True)
class DeviceCursor:
    boot: str | None = None
    seq: int = 0  # highest seq taken in this boot
    taken: int = 0  # vectors taken, all boots, since the gateway started
    lost: int = 0  # vectors the board reported as overwritten/expired before they were polled
    boots: int = 0  # boot changes seen
    purges_seen: int = 0  # the board's opt-out purges (n) already applied here, this boot
    forgotten: int = 0  # vectors forgotten because the board purged them (opt-out)


def _hour_key(t: float) -> tuple[str, int, int]:
    d = datetime.fromtimestamp(t)
    return d.strftime("%Y-%m-%d"), d.weekday(), d.hour


class Store:
    def __init__(self, *, retention_s: float, bucket_s: int, history_days: int = 56, sqlite: Path | None = None,
                 clock: Callable[[], float] = time.time, decisions_days: int = 30) -> None:
        self.retention_s = retention_s
        self.decisions_days = decisions_days
        # the decision numbering /v1/decisions' cursors belong to: kept in SQLite, else one per start
        self.epoch = secrets.token_hex(8)
        self.bucket_s = bucket_s
        self.history_days = history_days
        self.clock = clock
        self.recs: deque[Rec] = deque()
        self.sessions: dict[str, Session] = {}
        self.buckets: dict[tuple[str, int], Bucket] = defaultdict(Bucket)
        self.cursors: dict[str, DeviceCursor] = defaultdict(DeviceCursor)
        # (day, weekday, hour) -> sessions seen; completed hours are kept as counts in self.history
        self.hour_sessions: dict[tuple[str, int, int], set[str]] = defaultdict(set)
        self.history: dict[tuple[str, int, int], int] = {}
        self.purged = 0
        # The traffic history (hourly people counts, the slow-hour baseline) comes from the sessions
        # seen only until a board reports entrance lines: from then on it is their footfall (sales.py)
        self.traffic_from_sessions = True
        self.forget_hooks: list[Callable[[list[Rec]], Awaitable[None]]] = []  # told of vectors a purge forgets
        self.db: _Db | None = _Db(sqlite) if sqlite is not None else None

    @classmethod
    def from_config(cls, loaded: LoadedGatewayConfig, clock: Callable[[], float] = time.time) -> Store:
        """The store a gateway config describes (its ``store`` section; sqlite relative to the file)."""
        st = loaded.config.store
        return cls(retention_s=st.retention_s, bucket_s=st.bucket_s, history_days=st.history_days,
                   sqlite=loaded.resolve(st.sqlite) if st.sqlite else None, clock=clock,
                   decisions_days=st.decisions_days)

    # -- start-up ------------------------------------------------------------------------------
    async def open(self) -> None:
        """Load what SQLite holds (cursors, vectors within retention, history) into memory."""
        if self.db is None:
            return
        cursors, recs, history = await self.db.call(self.db.load, self.clock() - self.retention_s,
                                                    self.clock() - self.history_days * 86400)
        for dev, boot, seq in cursors:
            self.cursors[dev] = DeviceCursor(boot=boot, seq=seq, boots=1)
        self.history.update(history)
        self._index(recs)
        self.epoch = await self.db.call(self.db.epoch)

    async def load_decisions(self, limit: int) -> list[dict[str, Any]]:
        """The newest decisions kept in SQLite (within decisions_days), oldest first."""
        if self.db is None:
            return []
        bodies = await self.db.call(self.db.load_decisions, self.clock() - self.decisions_days * 86400, limit)
        return [json.loads(b) for b in bodies]

    async def save_decision(self, d: dict[str, Any]) -> None:
        if self.db is not None:
            await self.db.call(self.db.add_decision, int(d["id"]), float(d["t"]), json.dumps(d))

    async def close(self) -> None:
        if self.db is not None:
            await self.db.call(self.db.close)
            self.db.pool.shutdown(wait=True)

    # -- ingest --------------------------------------------------------------------------------
    def cursor(self, device: str) -> DeviceCursor:
        return self.cursors[device]

    async def ingest(self, device: str, boot: str, recs: list[Rec], *, cursor: int, lost: int = 0) -> list[Rec]:
        """Take one page of a device's vectors (``cursor``: the page's, which may pass vectors the
        board purged); returns the ones that were new, in seq order."""
        cur = self.switch_boot(device, boot)
        new: list[Rec] = []
        for r in sorted(recs, key=lambda r: r.seq):
            if r.seq > cur.seq and (not new or r.seq != new[-1].seq):
                new.append(r)
        to = max(cur.seq, cursor, new[-1].seq if new else 0)
        if to != cur.seq and self.db is not None:
            await self.db.call(self.db.insert, device, boot, new, to)
        cur.seq = to
        cur.taken += len(new)
        cur.lost += lost
        self._index(new)
        return new

    def switch_boot(self, device: str, boot: str) -> DeviceCursor:
        """The board's current run: a new boot_id restarts its seq numbers and its purge count."""
        cur = self.cursors[device]
        if cur.boot != boot:
            cur.boot, cur.seq, cur.purges_seen = boot, 0, 0
            cur.boots += 1
        return cur

    async def forget(self, device: str, boot: str, seq_from: int, seq_to: int) -> int:
        """An opt-out on the board purged its vectors seq_from..seq_to of this boot: forget our
        copies too, in RAM and SQLite, and rebuild the sessions and buckets without them."""
        def purged(r: Rec) -> bool:
            return r.device == device and r.boot == boot and seq_from <= r.seq <= seq_to

        gone = [r for r in self.recs if purged(r)]
        n = len(gone)
        if self.db is not None:
            await self.db.call(self.db.forget, device, boot, seq_from, seq_to)
        for hook in self.forget_hooks:
            await hook(gone)
        if n:
            keep = [r for r in self.recs if not purged(r)]
            self.recs.clear()
            self.sessions.clear()
            self.buckets.clear()
            self.hour_sessions.clear()
            self._index(keep)
        self.cursors[device].forgotten += n
        return n

    def _index(self, recs: Iterable[Rec]) -> None:
        for r in recs:
            self.recs.append(r)
            s = self.sessions.get(r.session)
            if s is None:
                s = self.sessions[r.session] = Session(r.device, r.token, r.t0, r.t1)
            s.first, s.last = min(s.first, r.t0), max(s.last, r.t1)
            s.windows += 1
            s.ended = s.ended or r.exit is not None
            if r.zone is not None:
                s.zones.add(r.zone)
            _add_signals(s.sums, s.counts, r)
            self.buckets[(r.zone or "-", int(r.t1 // self.bucket_s) * self.bucket_s)].add(r)
            self.hour_sessions[_hour_key(r.t1)].add(r.session)

    # -- retention -----------------------------------------------------------------------------
    async def purge(self) -> int:
        """Forget everything older than retention_s (RAM and SQLite); close finished hours into history."""
        now = self.clock()
        cutoff = now - self.retention_s
        n = 0
        while self.recs and self.recs[0].received < cutoff:
            self.recs.popleft()
            n += 1
        for key in [k for k, s in self.sessions.items() if s.last < cutoff]:
            del self.sessions[key]
        for bk in [k for k in self.buckets if k[1] + self.bucket_s < cutoff]:
            del self.buckets[bk]
        this_hour = _hour_key(now)
        closed = {k: len(v) for k, v in self.hour_sessions.items() if k != this_hour}
        for k in closed:
            del self.hour_sessions[k]
        if not self.traffic_from_sessions:
            closed = {}  # the history is footfall (entrance lines), kept by sales.py
        self.history.update({k: max(v, self.history.get(k, 0)) for k, v in closed.items()})
        oldest_day = datetime.fromtimestamp(now - self.history_days * 86400).strftime("%Y-%m-%d")
        for k in [k for k in self.history if k[0] < oldest_day]:
            del self.history[k]
        if self.db is not None:
            await self.db.call(self.db.purge, cutoff, oldest_day, closed, now - self.decisions_days * 86400)
        self.purged += n
        return n

    # -- queries -------------------------------------------------------------------------------
    def window(self, since: float, zone: str | None = None) -> Iterator[Rec]:
        """Vectors whose window ended after ``since`` (optionally in one zone)."""
        for r in reversed(self.recs):
            if r.t1 < since - 120 and r.received < since - 120:
                break  # received order is close to time order; 2 min of slack for slow pollers
            if r.t1 >= since and (zone is None or r.zone == zone):
                yield r

    def per_session(self, since: float, zone: str | None, signal: str) -> dict[str, list[float]]:
        out: dict[str, list[float]] = defaultdict(list)
        for r in self.window(since, zone):
            x = getattr(r, signal)
            if x is not None:
                out[r.session].append(x)
        return out

    def visitors(self, since: float, zone: str | None = None) -> int:
        return len({r.session for r in self.window(since, zone)})

    def baseline(self, weekday: int, hour: int, today: str) -> list[int]:
        return sorted(v for (day, wd, h), v in self.history.items() if wd == weekday and h == hour and day != today)

    async def seed_history(self, rows: Iterable[tuple[str, int, int, int]]) -> None:
        """(day 'YYYY-MM-DD', weekday 0-6, hour 0-23, visitors): past counts, e.g. imported from a till system."""
        new = {(day, wd, h): n for day, wd, h, n in rows}
        self.history.update(new)
        if self.db is not None:  # the rows given; what SQLite already holds stays
            await self.db.call(self.db.write_history, new)

    def zones_state(self, window_s: float) -> dict[str, dict[str, Any]]:
        """Per zone over the last window_s: sessions, vectors and signal means (store-level, no tokens)."""
        since = self.clock() - window_s
        acc: dict[str, Bucket] = defaultdict(Bucket)
        for r in self.window(since):
            acc[r.zone or "-"].add(r)
        return {z: _bucket_json(b) for z, b in sorted(acc.items())}

    def trend(self, zone: str | None = None) -> list[dict[str, Any]]:
        """The time buckets still held, oldest first: per bucket sessions and signal means."""
        rows = []
        for (z, t), b in sorted(self.buckets.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            if zone is None or z == zone:
                rows.append({"zone": z, "t": t, **_bucket_json(b)})
        return rows


def _bucket_json(b: Bucket) -> dict[str, Any]:
    def mean(k: str) -> float | None:
        return round(b.sums[k] / b.counts[k], 3) if b.counts[k] else None

    n_app = b.counts["approach"]
    return {"sessions": len(b.sessions), "vectors": b.vectors, "engagement_mean": mean("engagement"),
            "dwell_satisfaction_mean": mean("satisfaction"), "approach_avoid_mean": mean("approach"),
            "approaching_share": round(b.approaching / n_app, 3) if n_app else None,
            "avoiding_share": round(b.avoiding / n_app, 3) if n_app else None}


_COLS = ("device", "boot", "seq", "t0", "t1", "token", "zone", "dwell_s", "engagement", "satisfaction", "approach",
         "exit", "received")
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS vectors ({", ".join(_COLS)}, PRIMARY KEY (device, boot, seq)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS vectors_received ON vectors (received);
CREATE TABLE IF NOT EXISTS cursors (device TEXT PRIMARY KEY, boot TEXT NOT NULL, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS history (day TEXT, weekday INTEGER, hour INTEGER, visitors INTEGER,
                                    PRIMARY KEY (day, hour));
CREATE TABLE IF NOT EXISTS decisions (id INTEGER PRIMARY KEY, t REAL NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class _Db:
    """SQLite on one worker thread (the event loop never waits on the disk)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-sqlite")
        self.conn: sqlite3.Connection | None = None

    def _c(self) -> sqlite3.Connection:
        if self.conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.executescript(_SCHEMA)
        return self.conn

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def load(self, since: float, history_since: float) -> tuple[list[tuple[str, str, int]], list[Rec], dict[Any, int]]:
        c = self._c()
        cursors = [(d, b, s) for d, b, s in c.execute("SELECT device, boot, seq FROM cursors")]
        recs = [Rec(*row) for row in c.execute(f"SELECT {', '.join(_COLS)} FROM vectors WHERE received >= ? "
                                               "ORDER BY received, device, boot, seq", (since,))]
        day = datetime.fromtimestamp(history_since).strftime("%Y-%m-%d")
        history = {(d, wd, h): n for d, wd, h, n in
                   c.execute("SELECT day, weekday, hour, visitors FROM history WHERE day >= ?", (day,))}
        return cursors, recs, history

    def insert(self, device: str, boot: str, recs: list[Rec], cursor: int) -> None:
        c = self._c()
        with c:  # one transaction: the vectors and the cursor that says they were taken
            c.execute("BEGIN IMMEDIATE")
            c.executemany(f"INSERT OR IGNORE INTO vectors VALUES ({', '.join('?' * len(_COLS))})",
                          [tuple(getattr(r, k) for k in _COLS) for r in recs])
            c.execute("INSERT INTO cursors VALUES (?, ?, ?) ON CONFLICT(device) DO UPDATE SET boot=excluded.boot, "
                      "seq=excluded.seq", (device, boot, cursor))

    def purge(self, cutoff: float, oldest_day: str, closed: dict[tuple[str, int, int], int],
              decisions_before: float) -> None:
        c = self._c()
        with c:
            c.execute("BEGIN IMMEDIATE")
            c.execute("DELETE FROM vectors WHERE received < ?", (cutoff,))
            c.execute("DELETE FROM decisions WHERE t < ?", (decisions_before,))
            c.execute("DELETE FROM history WHERE day < ?", (oldest_day,))
            c.executemany("INSERT INTO history VALUES (?, ?, ?, ?) ON CONFLICT(day, hour) DO UPDATE SET "
                          "visitors=max(visitors, excluded.visitors)", [(*k, v) for k, v in closed.items()])

    def epoch(self) -> str:
        """This store's decision numbering (random, made once): ids continue across restarts."""
        c = self._c()
        with c:
            c.execute("BEGIN IMMEDIATE")
            c.execute("INSERT OR IGNORE INTO meta VALUES ('epoch', ?)", (secrets.token_hex(8),))
            return str(c.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0])

    def add_decision(self, id_: int, t: float, body: str) -> None:
        c = self._c()
        with c:
            c.execute("BEGIN IMMEDIATE")
            c.execute("INSERT OR REPLACE INTO decisions VALUES (?, ?, ?)", (id_, t, body))

    def load_decisions(self, since: float, limit: int) -> list[str]:
        rows = self._c().execute("SELECT body FROM decisions WHERE t >= ? ORDER BY id DESC LIMIT ?", (since, limit))
        return [r[0] for r in rows][::-1]

    def forget(self, device: str, boot: str, seq_from: int, seq_to: int) -> None:
        c = self._c()
        with c:
            c.execute("BEGIN IMMEDIATE")
            c.execute("DELETE FROM vectors WHERE device = ? AND boot = ? AND seq BETWEEN ? AND ?",
                      (device, boot, seq_from, seq_to))

    def write_history(self, history: dict[tuple[str, int, int], int]) -> None:
        c = self._c()
        with c:
            c.execute("BEGIN IMMEDIATE")
            c.executemany("INSERT OR REPLACE INTO history VALUES (?, ?, ?, ?)", [(*k, v) for k, v in history.items()])

    def count(self, table: str) -> int:
        assert table in ("vectors", "cursors", "history")
        return int(self._c().execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
