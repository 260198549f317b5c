"""The gateway's parts on their own: strict config, store (exactly once, retention, SQLite),
decision rules with their explanations and cooldowns, output rate limits and webhook signatures."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from firmware.errors import ConfigError
from host_tools.gateway.config import Action, EngagedWhen, Rule, ShareWhen, SlowTrafficWhen, load_gateway_config
from host_tools.gateway.outputs import TokenBucket, sign, verify_signature
from host_tools.gateway.rules import DecisionEngine
from host_tools.gateway.store import Rec, Store

DEMO = Path(__file__).parents[2] / "host_tools" / "gateway" / "demo_rules.yaml"


class Clock:
    def __init__(self, t: float = 1_790_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def rec(seq: int, t1: float, *, device: str = "cam-a", boot: str = "b" * 16, token: str = "t1", zone: str | None = "display",
        engagement: float | None = None, satisfaction: float | None = None, approach: float | None = None,
        window: float = 2.0) -> Rec:
    return Rec(device, boot, seq, t1 - window, t1, token, zone, 5.0, engagement, satisfaction, approach, None, t1)


def write(tmp: Path, text: str) -> Path:
    (tmp / "tok").write_text("device-token-0123456789\n")
    p = tmp / "gateway.yaml"
    p.write_text(text)
    return p


BASE = """version: 1
devices:
  - name: cam-a
    url: http://127.0.0.1:8081
    token: {file: tok}
"""


# -- config ------------------------------------------------------------------------------------------
def test_config_minimal_and_demo_rules_load(tmp_path):
    loaded = load_gateway_config(write(tmp_path, BASE))
    assert loaded.config.devices[0].name == "cam-a"
    assert loaded.secret(loaded.config.devices[0].token, "t") == "device-token-0123456789"
    import yaml

    rules = yaml.safe_load(DEMO.read_text())["rules"]
    text = BASE + "outputs:\n  mqtt: {}\n  webhooks:\n" + "".join(
        f"    - {{name: {n}, url: 'http://127.0.0.1:1/x', secret: {{file: tok}}}}\n" for n in ("signage", "staff"))
    p = write(tmp_path, text + yaml.safe_dump({"rules": rules}))
    cfg = load_gateway_config(p).config
    assert [r.when.kind for r in cfg.rules] == ["engaged", "slow_traffic", "low_conversion", "low_satisfaction", "avoidance"]


@pytest.mark.parametrize("extra, message", [
    ("polling: {interval_s: 0}\n", "polling.interval_s"),
    ("colour: red\n", "colour"),
    ("rules:\n  - {name: r, when: {kind: engaged, zone: d}, then: [{output: pager}]}\n", "output 'pager' is not configured"),
    ("rules:\n  - {name: r, when: {kind: sparkle}, then: [{output: log}]}\n", "rules.0.when"),
    ("rules:\n  - {name: r, when: {kind: engaged, zone: d, for_s: -1}, then: [{output: log}]}\n", "for_s"),
    ("gateway: {host: 0.0.0.0}\n", "not loopback"),
    ("devices:\n  - {name: x, url: 'http://a:1', token: {file: tok}}\n", "duplicate key"),
])
def test_config_errors_name_file_line_and_key(tmp_path, extra, message):
    p = write(tmp_path, BASE + extra)
    with pytest.raises(ConfigError) as e:
        load_gateway_config(p)
    assert message in str(e.value)
    assert str(p) in str(e.value)


def test_config_secret_errors_are_clear(tmp_path):
    p = write(tmp_path, BASE.replace("token: {file: tok}", "token: {file: missing}"))
    loaded = load_gateway_config(p)
    with pytest.raises(ConfigError, match="cannot read"):
        loaded.secret(loaded.config.devices[0].token, "devices.cam-a.token")
    p = write(tmp_path, BASE.replace("token: {file: tok}", "token: {env: CAM_A_TOKEN}"))
    loaded = load_gateway_config(p)
    with pytest.raises(ConfigError, match="CAM_A_TOKEN is not set"):
        loaded.secret(loaded.config.devices[0].token, "devices.cam-a.token", env={})
    assert loaded.secret(loaded.config.devices[0].token, "x", env={"CAM_A_TOKEN": "abcdefgh12"}) == "abcdefgh12"


def test_config_refuses_huge_and_binary_files(tmp_path):
    p = tmp_path / "g.yaml"
    p.write_bytes(b"\xff\xfe" * 10)
    with pytest.raises(ConfigError, match="UTF-8"):
        load_gateway_config(p)
    p.write_bytes(b"#" * (1024 * 1024 + 10))
    with pytest.raises(ConfigError, match="larger than"):
        load_gateway_config(p)


# -- store ---------------------------------------------------------------------------------------------
async def test_store_takes_each_vector_once_and_restarts_with_the_board():
    clk = Clock()
    s = Store(retention_s=600, bucket_s=60, clock=clk)
    b1, b2 = "1" * 16, "2" * 16
    page = [rec(i, clk.t, boot=b1, token=f"t{i % 3}", engagement=0.5) for i in (1, 2, 3)]
    assert len(await s.ingest("cam-a", b1, page, cursor=3)) == 3
    again = await s.ingest("cam-a", b1, page + [rec(4, clk.t, boot=b1)], cursor=4)  # a repeated page + one new
    assert [r.seq for r in again] == [4]
    assert s.cursor("cam-a").seq == 4 and s.cursor("cam-a").taken == 4
    # the page's cursor can pass vectors the board purged (opt-out): the store follows it
    assert await s.ingest("cam-a", b1, [], cursor=9) == []
    assert s.cursor("cam-a").seq == 9
    # a new boot starts again from seq 1
    new = await s.ingest("cam-a", b2, [rec(1, clk.t, boot=b2)], cursor=1)
    assert len(new) == 1 and s.cursor("cam-a").boot == b2 and s.cursor("cam-a").boots == 2
    # sessions are per device: the same token on another board is another session
    await s.ingest("cam-b", b1, [rec(1, clk.t, device="cam-b", boot=b1, token="t1")], cursor=1)
    assert {"cam-a/t1", "cam-b/t1"} <= set(s.sessions)


async def test_store_sqlite_survives_restart_and_purge_really_purges(tmp_path):
    clk = Clock()
    db = tmp_path / "g.sqlite"
    s = Store(retention_s=120, bucket_s=60, sqlite=db, clock=clk)
    await s.open()
    boot = "a" * 16
    await s.ingest("cam-a", boot, [rec(i, clk.t, boot=boot, token=f"t{i}") for i in range(1, 6)], cursor=5)
    await s.close()
    s2 = Store(retention_s=120, bucket_s=60, sqlite=db, clock=clk)
    await s2.open()
    assert s2.cursor("cam-a").boot == boot and s2.cursor("cam-a").seq == 5
    assert len(s2.recs) == 5 and len(s2.sessions) == 5
    # the same page again (a gateway restarted before its next poll) adds nothing
    assert await s2.ingest("cam-a", boot, [rec(i, clk.t, boot=boot) for i in range(1, 6)], cursor=5) == []
    clk.t += 121
    await s2.ingest("cam-a", boot, [rec(6, clk.t, boot=boot, token="late")], cursor=6)
    await s2.purge()
    assert [r.seq for r in s2.recs] == [6]
    assert set(s2.sessions) == {"cam-a/late"}
    await s2.close()
    with sqlite3.connect(db) as c:
        rows = c.execute("SELECT seq, token FROM vectors").fetchall()
        tokens_anywhere = c.execute("SELECT count(*) FROM vectors WHERE token LIKE 't%'").fetchone()[0]
    assert rows == [(6, "late")] and tokens_anywhere == 0


async def test_forget_removes_exactly_the_purged_seq_range_whatever_the_wall_clock_said(tmp_path):
    clk = Clock()
    db = tmp_path / "f.sqlite"
    s = Store(retention_s=7200, bucket_s=60, sqlite=db, clock=clk)
    await s.open()
    boot, other = "d" * 16, "e" * 16
    # seqs 4-6 stamped an hour behind (the board's clock was set back): a time span would miss them
    recs = [rec(i, clk.t - (3600 if 4 <= i <= 6 else 0), boot=boot, token=f"p{i}") for i in range(1, 9)]
    await s.ingest("cam-a", boot, recs, cursor=8)
    await s.ingest("cam-b", other, [rec(i, clk.t, device="cam-b", boot=other, token=f"p{i}") for i in range(1, 9)],
                   cursor=8)
    assert await s.forget("cam-a", boot, 3, 6) == 4
    assert sorted(r.seq for r in s.recs if r.device == "cam-a") == [1, 2, 7, 8]
    assert len([r for r in s.recs if r.device == "cam-b"]) == 8  # another board's seqs 3-6 stay
    assert not {f"cam-a/p{i}" for i in range(3, 7)} & set(s.sessions)
    assert await s.forget("cam-a", "f" * 16, 1, 8) == 0  # a past boot's numbering is another
    await s.close()
    with sqlite3.connect(db) as c:
        held = c.execute("SELECT device, seq FROM vectors ORDER BY device, seq").fetchall()
    assert held == [("cam-a", 1), ("cam-a", 2), ("cam-a", 7), ("cam-a", 8)] + [("cam-b", i) for i in range(1, 9)]


async def test_history_counts_closed_hours_without_tokens(tmp_path):
    start = datetime(2026, 11, 18, 10, 30).timestamp()
    clk = Clock(start)
    s = Store(retention_s=3600, bucket_s=60, sqlite=tmp_path / "h.sqlite", clock=clk)
    await s.open()
    boot = "c" * 16
    await s.ingest("cam-a", boot, [rec(i, clk.t, boot=boot, token=f"p{i % 7}") for i in range(1, 30)], cursor=29)
    clk.t += 3600
    await s.purge()
    key = ("2026-11-18", 2, 10)
    assert s.history[key] == 7
    await s.close()
    with sqlite3.connect(tmp_path / "h.sqlite") as c:
        assert c.execute("SELECT day, weekday, hour, visitors FROM history").fetchall() == [(*key, 7)]


# -- rules ---------------------------------------------------------------------------------------------
def engine(rule: Rule, store: Store, clk: Clock, mono: Clock | None = None) -> DecisionEngine:
    return DecisionEngine([rule], store, clock=clk, monotonic=mono or clk)


def rule(when, cooldown_s: float = 60.0) -> Rule:
    return Rule(name="r", when=when, then=[Action(output="log")], cooldown_s=cooldown_s)


async def feed(s: Store, e: DecisionEngine, recs: list[Rec]) -> list:
    out = []
    for r in recs:
        new = await s.ingest(r.device, r.boot, [r], cursor=r.seq)
        out += e.on_vectors(new)
    return out


async def test_engaged_fires_once_per_session_after_for_s_and_explains():
    clk = Clock()
    s = Store(retention_s=600, bucket_s=60, clock=clk)
    e = engine(rule(EngagedWhen(kind="engaged", zone="display", min_engagement=0.7, for_s=20)), s, clk)
    t = clk.t
    recs = [rec(i + 1, t + 2 * (i + 1), engagement=0.9) for i in range(15)]  # 30 s engaged
    ds = await feed(s, e, recs)
    assert len(ds) == 1
    d = ds[0]
    assert d.inputs["engaged_s"] == 20.0 and d.inputs["device"] == "cam-a"
    assert "session" not in d.inputs and "t1" not in d.explanation  # no token in a decision
    assert "engaged 20 s" in d.explanation and ">= 0.7" in d.explanation and d.rule == "r"


async def test_engaged_run_breaks_on_low_engagement_or_gap_but_not_on_null():
    clk = Clock()
    s = Store(retention_s=600, bucket_s=60, clock=clk)
    e = engine(rule(EngagedWhen(kind="engaged", zone="display", for_s=10, max_gap_s=3)), s, clk)
    t = clk.t
    seq = iter(range(1, 1000))
    # 8 s engaged, one low window, 8 s engaged: never 10 s in a row
    vals = [0.9] * 4 + [0.2] + [0.9] * 4
    assert await feed(s, e, [rec(next(seq), t + 2 * (i + 1), engagement=v) for i, v in enumerate(vals)]) == []
    # a gap of 10 s breaks too
    t2 = t + 100
    recs = [rec(next(seq), t2 + 2 * i, token="g", engagement=0.9) for i in range(4)]
    recs += [rec(next(seq), t2 + 18 + 2 * i, token="g", engagement=0.9) for i in range(4)]
    assert await feed(s, e, recs) == []
    # null windows (pose missing) neither add nor break: 4 windows + null + 1 window = 10 s
    t3 = t + 200
    vals2 = [0.9] * 4 + [None] + [0.9] * 2
    ds = await feed(s, e, [rec(next(seq), t3 + 2 * (i + 1), token="n", engagement=v) for i, v in enumerate(vals2)])
    assert len(ds) == 1 and ds[0].inputs["engaged_s"] == 10.0 and ds[0].inputs["windows"] == 5


async def test_cooldown_keeps_a_screen_from_being_spammed():
    clk = Clock()
    mono = Clock(0.0)
    s = Store(retention_s=600, bucket_s=60, clock=clk)
    e = engine(rule(EngagedWhen(kind="engaged", zone="display", for_s=4), cooldown_s=60), s, clk, mono)
    fired = []
    for person in range(5):  # five engaged people, 10 s apart
        mono.t = person * 10.0
        fired += await feed(s, e, [rec(person * 10 + i, clk.t + i * 2, token=f"p{person}", engagement=0.9)
                                   for i in range(1, 4)])
    assert len(fired) == 1 and e.suppressed == 4
    mono.t = 61.0
    fired += await feed(s, e, [rec(100 + i, clk.t + i * 2, token="later", engagement=0.9) for i in range(1, 4)])
    assert len(fired) == 2


async def test_slow_traffic_against_the_weekday_hour_history():
    now = datetime(2026, 11, 25, 15, 10)
    clk = Clock(now.timestamp())
    mono = Clock(0.0)
    s = Store(retention_s=3600, bucket_s=60, clock=clk)
    when = SlowTrafficWhen(kind="slow_traffic", percentile=25, window_s=600, min_samples=3)
    e = engine(rule(when), s, clk, mono)
    # 12 sessions in the last 10 min = 72/h
    await feed(s, e, [rec(i, clk.t - 30 * i, token=f"v{i}") for i in range(1, 13)])
    past = [((now - timedelta(weeks=w)).strftime("%Y-%m-%d"), 2, 15, n) for w, n in ((1, 100), (2, 120), (3, 140))]
    mono.t = 599
    await s.seed_history(past)
    assert e.tick() == []  # not a whole window observed yet
    mono.t = 601
    ds = e.tick()
    assert len(ds) == 1
    d = ds[0]
    assert d.inputs["per_hour"] == 72.0 and d.inputs["baseline_per_hour"] == 110.0 and d.inputs["baseline_samples"] == 3
    assert "below p25 (110/h) of 3 past Wednesdays 15:00-16:00" in d.explanation
    # a store as busy as usual is not slow
    s2 = Store(retention_s=3600, bucket_s=60, clock=clk)
    e2 = engine(rule(when), s2, clk, mono)
    await s2.seed_history([(day, wd, h, 20) for day, wd, h, _ in past])
    await feed(s2, e2, [rec(i, clk.t - 30 * i, token=f"v{i}") for i in range(1, 13)])
    assert e2.tick() == []
    # too little history: no judgement
    s3 = Store(retention_s=3600, bucket_s=60, clock=clk)
    e3 = engine(rule(when), s3, clk, mono)
    await s3.seed_history(past[:2])
    assert e3.tick() == []


@pytest.mark.parametrize("kind, field", [("low_satisfaction", "satisfaction"), ("avoidance", "approach")])
async def test_share_rules_need_min_visitors_and_the_share(kind, field):
    clk = Clock()
    s = Store(retention_s=3600, bucket_s=60, clock=clk)
    when = ShareWhen(kind=kind, zone="walkway", below=-0.3, share=0.3, over_s=900, min_visitors=10)
    e = engine(rule(when), s, clk)
    recs = [rec(i + 1, clk.t - i, token=f"v{i}", zone="walkway", **{field: (-0.8 if i < 2 else 0.1)}) for i in range(9)]
    await feed(s, e, recs)
    assert e.tick() == []  # 9 visitors < min_visitors
    await feed(s, e, [rec(20, clk.t, token="v9", zone="walkway", **{field: 0.2})])
    assert e.tick() == []  # 2 of 10 = 20 % < 30 %
    await feed(s, e, [rec(21, clk.t, token="v10", zone="walkway", **{field: -0.5})])
    ds = e.tick()  # 3 of 11 = 27 %: still not
    assert ds == []
    await feed(s, e, [rec(22, clk.t, token="v2", zone="walkway", **{field: -1.0}),  # v2's mean: (0.1 - 1.0) / 2
                      rec(23, clk.t, token="v3", zone="walkway", **{field: -1.0})])
    ds = e.tick()  # 5 of 11 = 45 %
    assert len(ds) == 1 and ds[0].inputs["below"] == 5 and ds[0].inputs["visitors"] == 11
    assert ds[0].kind == kind


async def test_share_rule_fires_with_its_numbers():
    clk = Clock()
    s = Store(retention_s=3600, bucket_s=60, clock=clk)
    e = engine(rule(ShareWhen(kind="low_satisfaction", zone="walkway", below=-0.3, share=0.3, over_s=900,
                              min_visitors=4)), s, clk)
    await feed(s, e, [rec(i + 1, clk.t - i, token=f"v{i}", zone="walkway", satisfaction=(-0.9 if i < 2 else 0.5))
                      for i in range(5)])
    ds = e.tick()
    assert len(ds) == 1
    assert ds[0].inputs == {"zone": "walkway", "visitors": 5, "below": 2, "share": 0.4, "threshold": -0.3,
                            "min_share": 0.3, "over_s": 900, "signal": "dwell satisfaction"}
    assert "2 of 5 visitors (40%)" in ds[0].explanation
    # old visitors fall out of the window
    clk.t += 901
    e._last_fired.clear()
    assert e.tick() == []


# -- outputs -------------------------------------------------------------------------------------------
def test_token_bucket_rate_limits():
    from host_tools.gateway.config import RateLimit

    t = Clock(0.0)
    b = TokenBucket(RateLimit(per_minute=6, burst=2), clock=t)
    assert [b.take() for _ in range(3)] == [True, True, False]
    t.t = 9.9
    assert not b.take()
    t.t = 10.1
    assert b.take()


def test_webhook_signature_verifies_and_refuses_tampering_and_replays():
    body = b'{"rule": "r"}'
    h = sign("s3cret-key", body, timestamp=1_790_000_000)
    assert verify_signature("s3cret-key", body, h, now=1_790_000_010)
    assert not verify_signature("s3cret-key", body + b" ", h, now=1_790_000_010)
    assert not verify_signature("other-key", body, h, now=1_790_000_010)
    assert not verify_signature("s3cret-key", body, h, now=1_790_000_000 + 301)  # replayed later
    assert not verify_signature("s3cret-key", body, {}, now=1_790_000_000)


def test_the_shipped_example_config_is_valid():
    loaded = load_gateway_config(Path(__file__).parents[2] / "host_tools" / "gateway" / "example.yaml")
    assert [d.name for d in loaded.config.devices] == ["cam-entrance", "cam-display", "cam-aisle-3"]
    assert loaded.config.store.sqlite and loaded.config.outputs.mqtt is not None


def test_free_port_stays_out_of_the_ephemeral_range_and_is_never_handed_out_twice():
    # sim-store picks board ports before the boards bind them; a port-0 bind made meanwhile (the
    # webhook receiver, the gateway) once took a board's port and the board exited with 3
    import socket

    from host_tools.simstore import _ephemeral_range, free_port

    lo, hi = _ephemeral_range()
    ports = [free_port() for _ in range(60)]
    assert len(set(ports)) == 60
    assert all(not (lo <= p <= hi) for p in ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        assert lo <= s.getsockname()[1] <= hi  # what the kernel hands a port-0 bind


@pytest.mark.parametrize("text, error", [
    (b"day,hour,visitors\n2026-11-18,10,3\n", ":1: the first line must be the header"),
    (b"date,hour,visitors\n2026-11-18,10\n", ":2: 2 fields"),
    (b"date,hour,visitors\n18.11.2026,10,3\n", ":2: date '18.11.2026' is not YYYY-MM-DD"),
    (b"date,hour,visitors\n2026-11-18,-1,3\n", ":2: hour '-1'"),
    (b"date,hour,visitors\n2026-11-18,10,3.5\n", ":2: visitors '3.5'"),
    (b"date,hour,visitors\n2026-11-18,10,99999999\n", ":2: visitors '99999999'"),
    (b"date,hour,visitors\n2026-11-26,10,3\n", ":2: 2026-11-26 is in the future"),
    (b"date,hour,visitors\n2026-11-18,10,\xff\n", "not UTF-8"),
])
def test_history_csv_errors_name_file_and_line(tmp_path, text, error):
    from datetime import date

    from host_tools.gateway.history import parse_history_csv

    f = tmp_path / "h.csv"
    f.write_bytes(text)
    with pytest.raises(ConfigError) as e:
        parse_history_csv(f, history_days=56, today=date(2026, 11, 25))
    assert str(e.value).startswith(str(f)) and error in str(e.value)


def test_history_csv_reads_a_spreadsheet_export(tmp_path):
    from datetime import date

    from host_tools.gateway import history

    f = tmp_path / "h.csv"
    # a BOM, CRLF line ends, spaces and blank lines, as spreadsheets write them
    f.write_bytes(b"\xef\xbb\xbfDate, Hour, Visitors\r\n2026-11-18, 10, 412\r\n\r\n2026-11-25,0,0\r\n2025-01-01,9,5\r\n")
    got = history.parse_history_csv(f, history_days=56, today=date(2026, 11, 25))
    assert got.rows == [("2026-11-18", 2, 10, 412), ("2026-11-25", 2, 0, 0)] and got.too_old == 1
    f.write_bytes(b"date,hour,visitors\n" + b"2026-11-18,1,1\n" * (history.MAX_BYTES // 15))
    with pytest.raises(ConfigError, match="at most"):
        history.parse_history_csv(f, history_days=56, today=date(2026, 11, 25))


async def test_decisions_kept_in_sqlite_expire_after_decisions_days(tmp_path):
    clk = Clock()
    s = Store(retention_s=120, bucket_s=60, sqlite=tmp_path / "d.sqlite", clock=clk, decisions_days=1)
    await s.open()
    await s.save_decision({"id": 1, "t": clk.t - 2 * 86400, "rule": "old"})
    await s.save_decision({"id": 2, "t": clk.t - 60, "rule": "new"})
    await s.purge()
    assert [d["rule"] for d in await s.load_decisions(10)] == ["new"]
    await s.close()
    with sqlite3.connect(tmp_path / "d.sqlite") as c:
        assert c.execute("SELECT id FROM decisions").fetchall() == [(2,)]
