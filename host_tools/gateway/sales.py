"""Footfall, queues and sales at the gateway: numbers only, joined per hour and per zone.

- **Footfall** is the "in" count of every board's entrance lines (``GET /v1/counts``), in the
  boards' 1-minute buckets, kept per (device, boot, line, minute): a bucket is replaced by each
  newer copy of the same boot (so a board's purge lowers it here too), and two boots' copies of
  one minute add up (their counts are of different seconds). This is the store's traffic: a
  person walking in is one, however often the tracker lost them inside.
- **Queues**: the boards' queue figures per minute (people served, their waits, the longest queue).
- **Transactions** from the till (``transactions.py``): time, basket, items, till or zone, category
  totals; no identifier. Kept ``store.retention_s``; their hourly totals (and hourly totals sent
  as such) are kept ``store.history_days`` for the same-hour baselines.
- **Signals by hour**: engagement and dwell satisfaction sums per hour and zone, from the vectors
  as they come (a board's purge takes its vectors' share out again).

Minute buckets are kept max(``retention_s``, 2 h) in RAM and SQLite, hourly footfall and sales
``history_days``. KPIs: conversion = transactions / footfall, average basket, items per basket,
engagement and dwell satisfaction, per hour (local time) and per zone.
"""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from .store import Rec, Store, _hour_key
from .transactions import Batch, HourTotal, Txn

MINUTE = 60
MIN_MINUTES_S = 7200

_SCHEMA = """
CREATE TABLE IF NOT EXISTS footfall (device TEXT, boot TEXT, line TEXT, start INTEGER, entrance INTEGER,
                                     n_in INTEGER, n_out INTEGER, measured_s REAL, purged INTEGER,
                                     PRIMARY KEY (device, boot, line, start)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS queues (device TEXT, boot TEXT, zone TEXT, start INTEGER, served INTEGER,
                                   wait_s_sum REAL, wait_s_max REAL, length_max INTEGER,
                                   PRIMARY KEY (device, boot, zone, start)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS transactions (t REAL, place TEXT, basket REAL, items INTEGER, categories TEXT);
CREATE INDEX IF NOT EXISTS transactions_t ON transactions (t);
CREATE TABLE IF NOT EXISTS sales_hours (day TEXT, weekday INTEGER, hour INTEGER, place TEXT, transactions INTEGER,
                                        basket_total REAL, items INTEGER, PRIMARY KEY (day, hour, place));
CREATE TABLE IF NOT EXISTS signal_hours (day TEXT, weekday INTEGER, hour INTEGER, zone TEXT, eng_sum REAL,
                                         eng_n INTEGER, sat_sum REAL, sat_n INTEGER, PRIMARY KEY (day, hour, zone));
CREATE TABLE IF NOT EXISTS batches (name TEXT PRIMARY KEY, t REAL);
"""
HourKey = tuple[str, int, int]  # (day, weekday, hour), local time


@dataclass(slots=True)
class Minute:
    entrance: bool
    n_in: int
    n_out: int
    measured_s: float
    purged: bool


@dataclass(slots=True)
class QueueMinute:
    served: int
    wait_s_sum: float
    wait_s_max: float | None
    length_max: int | None


@dataclass(slots=True)
class Sales:
    transactions: int = 0
    basket_total: float = 0.0
    items: int = 0

    def add(self, n: int, basket: float, items: int, sign: int = 1) -> None:
        self.transactions += sign * n
        self.basket_total += sign * basket
        self.items += sign * items


@dataclass(slots=True)
class SignalSums:
    eng_sum: float = 0.0
    eng_n: int = 0
    sat_sum: float = 0.0
    sat_n: int = 0


def place_of(till: str | None, zone: str | None) -> str:
    return zone or till or "-"


@dataclass
class SalesStore:
    """Owned by the gateway, fed by the pollers (counts) and the API (transactions). Uses the
    vectors store's SQLite file and worker thread when it has one."""

    store: Store
    minutes: dict[tuple[str, str, str, int], Minute] = field(default_factory=dict)
    queue_minutes: dict[tuple[str, str, str, int], QueueMinute] = field(default_factory=dict)
    txns: deque[tuple[Txn, str]] = field(default_factory=deque)
    sales_hours: dict[tuple[str, int, int, str], Sales] = field(default_factory=lambda: defaultdict(Sales))
    signal_hours: dict[tuple[str, int, int, str], SignalSums] = field(default_factory=lambda: defaultdict(SignalSums))
    batches: dict[str, float] = field(default_factory=dict)
    has_lines: bool = False  # some board reported an entrance line
    _schema_done: bool = False

    @property
    def keep_minutes_s(self) -> float:
        return max(self.store.retention_s, MIN_MINUTES_S)

    # -- SQLite --------------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection | None:
        db = self.store.db
        if db is None:
            return None
        c = db._c()
        if not self._schema_done:  # once per connection (the store's, on its SQLite thread)
            c.executescript(_SCHEMA)
            self._schema_done = True
        return c

    async def _db(self, fn: Any, *args: Any) -> Any:
        if self.store.db is None:
            return None
        return await self.store.db.call(fn, *args)

    async def open(self) -> None:
        if self.store.db is None:
            return
        now = self.store.clock()
        rows = await self._db(self._load, now - self.keep_minutes_s, now - self.store.retention_s,
                              (datetime.fromtimestamp(now) - timedelta(days=self.store.history_days)).strftime("%Y-%m-%d"))
        minutes, queues, txns, sales, signals, batches = rows
        for dev, boot, line, start, ent, n_in, n_out, meas, purged in minutes:
            self.minutes[(dev, boot, line, start)] = Minute(bool(ent), n_in, n_out, meas, bool(purged))
            self.has_lines = self.has_lines or bool(ent)
        for dev, boot, zone, start, served, ws, wm, lm in queues:
            self.queue_minutes[(dev, boot, zone, start)] = QueueMinute(served, ws, wm, lm)
        for t, place, basket, items, cats in txns:
            self.txns.append((Txn(t, basket, items, None, None if place == "-" else place, json.loads(cats)), place))
        for day, wd, h, place, n, bt, it in sales:
            self.sales_hours[(day, wd, h, place)] = Sales(n, bt, it)
        for day, wd, h, zone, es, en, ss, sn in signals:
            self.signal_hours[(day, wd, h, zone)] = SignalSums(es, en, ss, sn)
        self.batches.update(dict(batches))

    def _load(self, minutes_since: float, txns_since: float, day_since: str) -> tuple[list[Any], ...]:
        c = self._conn()
        assert c is not None
        return (list(c.execute("SELECT * FROM footfall WHERE start >= ?", (minutes_since,))),
                list(c.execute("SELECT * FROM queues WHERE start >= ?", (minutes_since,))),
                list(c.execute("SELECT * FROM transactions WHERE t >= ? ORDER BY t", (txns_since,))),
                list(c.execute("SELECT * FROM sales_hours WHERE day >= ?", (day_since,))),
                list(c.execute("SELECT * FROM signal_hours WHERE day >= ?", (day_since,))),
                list(c.execute("SELECT name, t FROM batches WHERE t >= ?", (txns_since,))))

    # -- counts from the boards -----------------------------------------------------------------
    async def take_counts(self, device: str, boot: str, body: dict[str, Any], offset: float = 0.0) -> int:
        """One /v1/counts answer of a board; returns the buckets taken. Raises ValueError if malformed."""
        entrance = {str(ln["line"])[:64]: bool(ln["entrance"]) for ln in body["lines"]}
        rows, qrows = [], []
        hours: set[HourKey] = set()
        for b in body["buckets"]:
            start = int(b["start"] + offset) // MINUTE * MINUTE
            measured, purged = float(b["measured_s"]), bool(b["purged"])
            if measured <= 0 and not purged:
                continue  # the board was not watching then (not started, paused): no copy to replace ours
            for line, c in b["lines"].items():
                line = str(line)[:64]
                m = Minute(entrance.get(line, False), int(c["in"]), int(c["out"]), measured, purged)
                if m.n_in < 0 or m.n_out < 0:
                    raise ValueError("negative count")
                self.minutes[(device, boot, line, start)] = m
                rows.append((device, boot, line, start, int(m.entrance), m.n_in, m.n_out, measured, int(purged)))
                if m.entrance:
                    self.has_lines = True
                    hours.add(_hour_key(start))
            for zone, q in b["queues"].items():
                qm = QueueMinute(int(q["served"]), float(q["wait_s_sum"]),
                                 None if q["wait_s_max"] is None else float(q["wait_s_max"]),
                                 None if q["length_max"] is None else int(q["length_max"]))
                self.queue_minutes[(device, boot, str(zone)[:64], start)] = qm
                qrows.append((device, boot, str(zone)[:64], start, qm.served, qm.wait_s_sum, qm.wait_s_max, qm.length_max))
        await self._db(self._write_counts, rows, qrows)
        if hours:  # the store's traffic history is footfall now: the hours these minutes are in, recounted
            foot: dict[HourKey, int] = dict.fromkeys(hours, 0)
            for (_, _, _, start), m in self.minutes.items():
                key = _hour_key(start)
                if m.entrance and key in foot:
                    foot[key] += m.n_in
            self.store.traffic_from_sessions = False
            await self.store.seed_history([(*k, n) for k, n in foot.items()])
        return len(body["buckets"])

    def _write(self, *statements: tuple[str, list[tuple[Any, ...]]]) -> None:
        """(SQL, rows) pairs in one SQLite transaction, on the store's SQLite thread."""
        c = self._conn()
        assert c is not None
        with c:
            c.execute("BEGIN IMMEDIATE")
            for sql, rows in statements:
                c.executemany(sql, rows)

    def _write_counts(self, rows: list[tuple[Any, ...]], qrows: list[tuple[Any, ...]]) -> None:
        self._write(("INSERT OR REPLACE INTO footfall VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows),
                    ("INSERT OR REPLACE INTO queues VALUES (?, ?, ?, ?, ?, ?, ?, ?)", qrows))

    # -- transactions ---------------------------------------------------------------------------
    async def take_batch(self, batch: Batch) -> dict[str, Any]:
        """A checked batch (transactions.parse_batch): stored at once, in one transaction."""
        now = self.store.clock()
        if batch.batch is not None and batch.batch in self.batches:
            return {"accepted": 0, "hours": 0, "duplicate": True}
        cutoff = now - self.store.retention_s
        rows, hours = [], []
        for tx in batch.transactions:
            place = place_of(tx.till, tx.zone)
            key = (*_hour_key(tx.t), place)
            self.sales_hours[key].add(1, tx.basket, tx.items)
            hours.append((key, self.sales_hours[key]))
            if tx.t >= cutoff:
                self.txns.append((tx, place))
                rows.append((tx.t, place, tx.basket, tx.items, json.dumps(tx.categories)))
        for h in batch.hours:
            key = (*_hour_key(h.hour), place_of(h.till, h.zone))
            self.sales_hours[key] = Sales(h.transactions, h.basket_total, h.items)
            hours.append((key, self.sales_hours[key]))
        if rows:
            self.txns = deque(sorted(self.txns, key=lambda p: p[0].t))
        if batch.batch is not None:
            self.batches[batch.batch] = now
        await self._db(self._write_batch, rows, [(*k, s.transactions, s.basket_total, s.items) for k, s in hours],
                       batch.batch, now)
        return {"accepted": len(batch.transactions), "hours": len(batch.hours), "duplicate": False}

    def _write_batch(self, rows: list[tuple[Any, ...]], hours: list[tuple[Any, ...]], name: str | None, now: float) -> None:
        self._write(("INSERT INTO transactions VALUES (?, ?, ?, ?, ?)", rows),
                    ("INSERT OR REPLACE INTO sales_hours VALUES (?, ?, ?, ?, ?, ?, ?)", hours),
                    ("INSERT OR REPLACE INTO batches VALUES (?, ?)", [] if name is None else [(name, now)]))

    # -- signals by hour --------------------------------------------------------------------------
    def count_signals(self, recs: Iterable[Rec], sign: int = 1) -> list[tuple[Any, ...]]:
        """Add (sign -1: take out) the vectors' engagement and dwell satisfaction to their hours'
        sums, in RAM, at once; returns the rows for SQLite (``save_signals``)."""
        touched = set()
        for r in recs:
            key = (*_hour_key(r.t1), r.zone or "-")
            s = self.signal_hours[key]
            if r.engagement is not None:
                s.eng_sum += sign * r.engagement
                s.eng_n += sign
            if r.satisfaction is not None:
                s.sat_sum += sign * r.satisfaction
                s.sat_n += sign
            touched.add(key)
        return [(*k, self.signal_hours[k].eng_sum, self.signal_hours[k].eng_n, self.signal_hours[k].sat_sum,
                 self.signal_hours[k].sat_n) for k in touched]

    async def save_signals(self, rows: list[tuple[Any, ...]]) -> None:
        if rows:
            await self._db(self._write_signals, rows)

    async def add_signals(self, recs: Iterable[Rec], sign: int = 1) -> None:
        await self.save_signals(self.count_signals(recs, sign))

    def _write_signals(self, rows: list[tuple[Any, ...]]) -> None:
        self._write(("INSERT OR REPLACE INTO signal_hours VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows))

    # -- retention ----------------------------------------------------------------------------------
    async def purge(self) -> None:
        now = self.store.clock()
        m_cut, t_cut = now - self.keep_minutes_s, now - self.store.retention_s
        day_cut = (datetime.fromtimestamp(now) - timedelta(days=self.store.history_days)).strftime("%Y-%m-%d")
        for d in (self.minutes, self.queue_minutes):
            for k in [k for k in d if k[3] < m_cut]:
                del d[k]  # type: ignore[attr-defined]
        while self.txns and self.txns[0][0].t < t_cut:
            self.txns.popleft()
        for d2 in (self.sales_hours, self.signal_hours):
            for k2 in [k for k in d2 if k[0] < day_cut]:
                del d2[k2]  # type: ignore[attr-defined]
        for name in [n for n, t in self.batches.items() if t < t_cut]:
            del self.batches[name]
        await self._db(self._purge, m_cut, t_cut, day_cut)

    def _purge(self, m_cut: float, t_cut: float, day_cut: str) -> None:
        c = self._conn()
        assert c is not None
        with c:
            c.execute("BEGIN IMMEDIATE")
            c.execute("DELETE FROM footfall WHERE start < ?", (m_cut,))
            c.execute("DELETE FROM queues WHERE start < ?", (m_cut,))
            c.execute("DELETE FROM transactions WHERE t < ?", (t_cut,))
            c.execute("DELETE FROM batches WHERE t < ?", (t_cut,))
            for table in ("sales_hours", "signal_hours"):
                c.execute(f"DELETE FROM {table} WHERE day < ?", (day_cut,))

    # -- queries ---------------------------------------------------------------------------------
    def footfall(self, since: float) -> tuple[int, float]:
        """People in through the entrance lines in the minutes ending after ``since``, and the
        seconds those minutes span up to now (from the first one's start)."""
        sel = [(start, m.n_in) for (_, _, _, start), m in self.minutes.items() if m.entrance and start + MINUTE > since]
        if not sel:
            return 0, 0.0
        return sum(n for _, n in sel), max(self.store.clock() - min(s for s, _ in sel), 1.0)

    def footfall_hours(self) -> dict[HourKey, int]:
        """Footfall per local hour: the store's history (entrance lines, or an imported door counter)."""
        return self.store.history

    def transactions(self, since: float, place: str | None = None) -> list[Txn]:
        return [tx for tx, p in self.txns if tx.t >= since and (place is None or p == place)]

    def queue(self, zone: str, since: float) -> dict[str, Any]:
        served, wait_sum, wait_max, length_max = 0, 0.0, None, None
        for (_, _, z, start), q in self.queue_minutes.items():
            if z != zone or start + MINUTE <= since:
                continue
            served += q.served
            wait_sum += q.wait_s_sum
            if q.wait_s_max is not None:
                wait_max = q.wait_s_max if wait_max is None else max(wait_max, q.wait_s_max)
            if q.length_max is not None:
                length_max = q.length_max if length_max is None else max(length_max, q.length_max)
        return {"served": served, "wait_mean_s": round(wait_sum / served, 1) if served else None,
                "wait_max_s": wait_max, "length_max": length_max}

    def hourly(self, hours: int, zone: str | None = None) -> list[dict[str, Any]]:
        """KPIs for the last ``hours`` local hours (the current one included), oldest first."""
        now = datetime.fromtimestamp(self.store.clock()).replace(minute=0, second=0, microsecond=0)
        foot = self.footfall_hours()
        out = []
        for i in range(hours - 1, -1, -1):
            h = now - timedelta(hours=i)
            key = (h.strftime("%Y-%m-%d"), h.weekday(), h.hour)
            sales = Sales()
            for (d, wd, hh, place), s in self.sales_hours.items():
                if (d, wd, hh) == key and (zone is None or place == zone):
                    sales.add(s.transactions, s.basket_total, s.items)
            sig = SignalSums()
            for (d, wd, hh, z), ss in self.signal_hours.items():
                if (d, wd, hh) == key and (zone is None or z == zone):
                    sig.eng_sum, sig.eng_n = sig.eng_sum + ss.eng_sum, sig.eng_n + ss.eng_n
                    sig.sat_sum, sig.sat_n = sig.sat_sum + ss.sat_sum, sig.sat_n + ss.sat_n
            f = foot.get(key, 0 if self.has_lines else None)
            out.append({"hour": h.isoformat(timespec="minutes"), "zone": zone, "footfall": f,
                        **kpis(f, sales), "engagement_mean": round(sig.eng_sum / sig.eng_n, 3) if sig.eng_n > 0 else None,
                        "dwell_satisfaction_mean": round(sig.sat_sum / sig.sat_n, 3) if sig.sat_n > 0 else None})
        return out

    def conversion_baseline(self, weekday: int, hour: int, today: str) -> list[tuple[int, float]]:
        """(footfall, conversion) of the same weekday and hour on past days with both figures."""
        foot = self.footfall_hours()
        sales: dict[str, int] = defaultdict(int)
        for (d, wd, h, _), s in self.sales_hours.items():
            if wd == weekday and h == hour and d != today:
                sales[d] += s.transactions
        out = []
        for (d, wd, h), f in foot.items():
            if wd == weekday and h == hour and d != today and f > 0 and d in sales:
                out.append((f, sales[d] / f))
        return out



def kpis(footfall: int | None, s: Sales) -> dict[str, Any]:
    return {"transactions": s.transactions, "sales": round(s.basket_total, 2),
            "conversion": round(s.transactions / footfall, 4) if footfall else None,
            "basket_mean": round(s.basket_total / s.transactions, 2) if s.transactions else None,
            "items_per_basket": round(s.items / s.transactions, 2) if s.transactions else None}


__all__ = ["HourTotal", "SalesStore", "kpis"]
