"""The gateway's footfall, queues, sales and their rules, fed as the pollers and the till feed
them: footfall replaces sessions as the traffic, a board's purge lowers it, conversion and queue
rules fire with their numbers and only when they should."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta

import pytest

from host_tools.gateway.config import Action, LowConversionWhen, QueueWhen, Rule, SlowTrafficWhen
from host_tools.gateway.rules import DecisionEngine
from host_tools.gateway.sales import SalesStore
from host_tools.gateway.store import Store
from host_tools.gateway.transactions import Batch, Txn, parse_batch
from tests.unit.test_gateway import Clock, rec

NOW = datetime(2026, 11, 25, 15, 40)  # a Wednesday
BOOT = "a" * 16


def counts(minutes: list[tuple[int, int, int]], *, purged: bool = False, queue: dict | None = None) -> dict:
    """A /v1/counts answer: (minutes ago, in, out) per bucket of the line "door"."""
    start = int(NOW.timestamp()) // 60 * 60
    return {"boot_id": BOOT, "bucket_s": 60, "until": NOW.timestamp(), "retention_s": 600,
            "lines": [{"line": "door", "entrance": True}, {"line": "aisle-3", "entrance": False}], "queues": ["till"],
            "buckets": [{"start": start - 60 * ago, "end": start - 60 * ago + 60, "complete": ago > 0,
                         "measured_s": 60.0, "purged": purged,
                         "lines": {"door": {"in": i, "out": o}, "aisle-3": {"in": 50, "out": 50}},
                         "queues": {"till": queue or {"served": 0, "wait_s_sum": 0.0, "wait_s_max": None,
                                                      "length_max": 0}},
                         "people_max": 3, "people_mean": 1.0} for ago, i, o in minutes]}


def rule(when) -> Rule:
    return Rule(name="r", when=when, then=[Action(output="log")], cooldown_s=600)


def setup(tmp_path=None) -> tuple[Store, SalesStore, Clock]:
    clk = Clock(NOW.timestamp())
    store = Store(retention_s=3600, bucket_s=60, clock=clk, sqlite=None if tmp_path is None else tmp_path / "g.sqlite")
    return store, SalesStore(store), clk


async def test_footfall_is_the_entrance_lines_in_count_and_a_purge_lowers_it(tmp_path):
    store, sales, _ = setup(tmp_path)
    await sales.take_counts("cam-door", BOOT, counts([(3, 4, 1), (2, 6, 0), (1, 0, 2), (0, 2, 0)]))
    assert sales.footfall(0)[0] == 12 and sales.has_lines  # the aisle line is not an entrance
    # a newer copy of the same boot replaces (the board purged the last two minutes)
    await sales.take_counts("cam-door", BOOT, counts([(1, 0, 0), (0, 0, 0)], purged=True))
    assert sales.footfall(0)[0] == 10
    # another boot of the board adds its own seconds; a minute it did not watch replaces nothing
    other = counts([(0, 3, 0)])
    other["boot_id"] = "b" * 16
    unwatched = counts([(3, 0, 0)])
    unwatched["buckets"][0]["measured_s"] = 0.0
    await sales.take_counts("cam-door", "b" * 16, other)
    await sales.take_counts("cam-door", "b" * 16, unwatched)
    assert sales.footfall(0)[0] == 13
    # the hour's footfall is the store's traffic history now (slow-hour baseline), in SQLite too
    key = (NOW.strftime("%Y-%m-%d"), NOW.weekday(), NOW.hour)
    assert store.history[key] == 13 and not store.traffic_from_sessions
    await store.close()
    with sqlite3.connect(tmp_path / "g.sqlite") as c:
        assert c.execute("SELECT visitors FROM history").fetchall() == [(13,)]
        assert c.execute("SELECT sum(n_in) FROM footfall WHERE line = 'door'").fetchone() == (13,)
    # and a restarted gateway has it back
    store2, sales2, _ = setup(tmp_path)
    await store2.open()
    await sales2.open()
    assert sales2.footfall(0)[0] == 13 and sales2.has_lines
    await store2.close()


async def test_slow_traffic_counts_people_in_not_sessions():
    store, sales, clk = setup()
    mono = Clock(1000.0)
    e = DecisionEngine([rule(SlowTrafficWhen(kind="slow_traffic", window_s=600, min_samples=3))], store, clock=clk,
                       monotonic=mono, sales=sales)
    mono.t += 601
    past = [((NOW - timedelta(weeks=w)).strftime("%Y-%m-%d"), 2, 15, n) for w, n in ((1, 100), (2, 120), (3, 140))]
    await store.seed_history(past)
    # 40 sessions (track fragments) in 10 min would be 240/h: not slow. But 10 people came in: 60/h is.
    for i in range(40):
        await store.ingest("cam-a", BOOT, [rec(i + 1, clk.t - 10 * i, token=f"t{i}")], cursor=i + 1)
    await sales.take_counts("cam-door", BOOT, counts([(9, 1, 0), (6, 3, 0), (3, 4, 0), (0, 2, 0)]))
    (d,) = e.tick()
    assert d.inputs["traffic"] == "footfall" and d.inputs["visitors"] == 10 and d.inputs["per_hour"] == 60.0
    assert "10 people in through the entrances in the last 600 s = 60/h, below p25 (110/h)" in d.explanation


async def _conversion(people: list[tuple[int, int, int]], sold: int, base_foot=(100, 120, 140, 160), rate=0.3):
    store, sales, clk = setup()
    e = DecisionEngine([rule(LowConversionWhen(kind="low_conversion", window_s=600, min_footfall=5))], store,
                       clock=clk, sales=sales)
    past = [NOW - timedelta(weeks=w) for w in (1, 2, 3, 4)]
    await store.seed_history([(d.strftime("%Y-%m-%d"), d.weekday(), d.hour, f) for d, f in zip(past, base_foot, strict=True)])
    await sales.take_batch(parse_batch({"hours": [{"hour": d.replace(minute=0).isoformat(), "transactions": int(rate * f),
                                                   "basket_total": 15.0 * int(rate * f)}
                                                  for d, f in zip(past, base_foot, strict=True)]}))
    await sales.take_counts("cam-door", BOOT, counts(people))
    await sales.take_batch(Batch([Txn(clk.t - 30 * i, 12.0, 2) for i in range(sold)], []))
    return e.tick()


async def test_low_conversion_fires_when_footfall_is_normal_and_few_buy():
    # 20 people in over 10 min (120/h, normal for the hour), 2 bought: 10 % against 30 %
    ds = await _conversion([(9, 5, 0), (6, 5, 0), (3, 5, 0), (0, 5, 0)], sold=2)
    (d,) = ds
    assert d.inputs["footfall"] == 20 and d.inputs["transactions"] == 2 and d.inputs["conversion"] == 0.1
    assert d.inputs["baseline_conversion"] == 0.3 and d.subject == "store"
    assert "2 transactions for 20 people in = 10.0%" in d.explanation and "footfall normal" in d.explanation
    # as many buying as usual: nothing
    assert await _conversion([(9, 5, 0), (6, 5, 0), (3, 5, 0), (0, 5, 0)], sold=7) == []
    # a slow hour (20 people where 400-700 come): slow_traffic's business, not conversion's
    assert await _conversion([(9, 5, 0), (6, 5, 0), (3, 5, 0), (0, 5, 0)], sold=0, base_foot=(400, 500, 600, 700)) == []
    # too few people to judge
    assert await _conversion([(0, 4, 0)], sold=0) == []


async def test_queue_alert_on_length_or_wait():
    store, sales, clk = setup()
    long = DecisionEngine([rule(QueueWhen(kind="queue_alert", zone="till", max_length=4, over_s=120))], store,
                          clock=clk, sales=sales)
    slow = DecisionEngine([rule(QueueWhen(kind="queue_alert", zone="till", max_wait_s=90, over_s=120))], store,
                          clock=clk, sales=sales)
    await sales.take_counts("cam-till", BOOT, counts([(1, 0, 0)], queue={"served": 3, "wait_s_sum": 150.0,
                                                                         "wait_s_max": 70.0, "length_max": 4}))
    assert long.tick() == [] and slow.tick() == []  # 4 is not above 4; 50 s is not above 90 s
    await sales.take_counts("cam-till", BOOT, counts([(0, 0, 0)], queue={"served": 2, "wait_s_sum": 400.0,
                                                                         "wait_s_max": 260.0, "length_max": 6}))
    (d,) = long.tick()
    assert d.inputs["length_max"] == 6 and "up to 6 people queueing > 4" in d.explanation
    (d,) = slow.tick()
    assert d.inputs["wait_mean_s"] == 110.0 and "the 5 who left waited 110 s on average > 90 s" in d.explanation


def test_queue_alert_needs_a_limit():
    with pytest.raises(ValueError, match="max_length or max_wait_s"):
        QueueWhen(kind="queue_alert", zone="till")


async def test_kpis_by_hour_join_footfall_sales_and_signals(tmp_path):
    store, sales, clk = setup(tmp_path)
    await sales.take_counts("cam-door", BOOT, counts([(2, 10, 0), (1, 10, 0)]))
    await sales.take_batch(Batch([Txn(clk.t - 60, 20.0, 2, zone="till-area"), Txn(clk.t - 50, 10.0, 4, till="t1")], []))
    recs = [rec(1, clk.t - 30, engagement=0.8, zone="display"), rec(2, clk.t - 20, engagement=0.4, zone="display")]
    await sales.add_signals(recs)
    (h,) = sales.hourly(1)
    assert h["footfall"] == 20 and h["transactions"] == 2 and h["conversion"] == 0.1 and h["basket_mean"] == 15.0
    assert h["items_per_basket"] == 3.0 and h["engagement_mean"] == 0.6
    (z,) = sales.hourly(1, "till-area")
    assert z["transactions"] == 1 and z["basket_mean"] == 20.0
    # a board's purge takes its vectors' share out of the hour's signals
    await sales.add_signals(recs[:1], -1)
    assert sales.hourly(1)[0]["engagement_mean"] == 0.4
    # past the retention the transactions go, their hour stays (history_days)
    clk.t += 3 * 3600
    await sales.purge()
    assert sales.transactions(0) == [] and sales.hourly(4)[0]["transactions"] == 2
    await store.close()


def test_import_transactions_cli(tmp_path):
    import json
    import subprocess
    import sys

    from host_tools.gateway.bench import write_config
    from host_tools.gateway.simdevice import SimBoard

    board = SimBoard("a", 1.0)
    board.port = 9  # not started: nothing polls
    path = write_config(tmp_path, [board], sqlite=True)
    cli = [sys.executable, "-m", "host_tools.cli", "gateway", "import-transactions", "--config", str(path)]
    day = (datetime.now() - timedelta(weeks=1)).replace(minute=5, second=0, microsecond=0)
    good = tmp_path / "till.csv"
    good.write_text("t,basket,items,till,cat:grocery\n" + "".join(
        f"{(day + timedelta(minutes=i)).isoformat()},{10 + i}.50,{1 + i % 3},till-{i % 2},{5 + i}\n" for i in range(12)))
    ok = subprocess.run([*cli, str(good), "--json"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["imported"] == 12
    bad = tmp_path / "bad.csv"
    bad.write_text("t,basket,items,customer_email\n" + f"{day.isoformat()},3.0,1,a@b.c\n")
    res = subprocess.run([*cli, str(bad)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "customer_email" in res.stderr and "identifies a person" in res.stderr
    sqlite_path = next(tmp_path.rglob("*.sqlite"))
    with sqlite3.connect(sqlite_path) as c:  # a week old: past the retention, kept as its hour's totals only
        assert c.execute("SELECT count(*) FROM transactions").fetchone() == (0,)
        assert c.execute("SELECT sum(transactions), sum(items) FROM sales_hours").fetchone() == (12, 24)
