"""The gateway API served for real on loopback: state, devices, decisions, sessions, trend,
Prometheus metrics, the bearer token, JSON errors; and `cuecam gateway check|run` as processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from host_tools.gateway.bench import start_gateway_process, write_config
from host_tools.gateway.config import load_gateway_config
from host_tools.gateway.service import Gateway, serve
from host_tools.gateway.simdevice import SimBoard
from tests.conftest import until

API_TOKEN = "gateway-api-token-0123456789abcdef"


@contextlib.asynccontextmanager
async def serving(path):
    """The gateway of config ``path`` served on loopback until the block ends: (gateway, url)."""
    gw = Gateway(load_gateway_config(path))
    urls: list[str] = []
    task = asyncio.create_task(serve(gw, ready=urls.append))
    try:
        await until(lambda: bool(urls) or task.done(), 30)
        if task.done():
            task.result()  # it failed to start: say why
        yield gw, urls[0]
    finally:
        gw.stop_event.set()
        await task


@pytest.fixture
async def running(tmp_path):
    boards = [SimBoard(f"sim-{i}", rate=10.0, seed=i) for i in range(2)]
    for b in boards:
        await b.start()
    path = write_config(tmp_path, boards, interval_s=0.2)
    cfg = yaml.safe_load(path.read_text())
    (tmp_path / "gw-token").write_text(API_TOKEN)
    cfg["gateway"]["token"] = {"file": "gw-token"}
    cfg["outputs"] = {"log": {"enabled": True}}
    cfg["rules"] = [{"name": "engaged-display", "when": {"kind": "engaged", "zone": "plaza-sign", "min_engagement": 0.0,
                                                         "for_s": 1}, "then": [{"output": "log"}], "cooldown_s": 3600}]
    path.write_text(yaml.safe_dump(cfg))
    async with serving(path) as (gw, url):
        for b in boards:
            b.start_producing()
        yield gw, url, boards
    for b in boards:
        await b.stop()


async def test_gateway_routes_with_token(running):
    gw, url, boards = running
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    async with aiohttp.ClientSession(base_url=url) as s:
        async with s.get("/health") as r:  # no token needed
            assert r.status in (200, 503)
        for _ in range(100):
            if all(gw.store.cursor(b.name).taken >= 15 for b in boards):
                break
            await asyncio.sleep(0.1)
        async with s.get("/v1/state") as r:
            assert r.status == 401 and (await r.json())["error"]["status"] == 401
        async with s.get("/v1/state", headers={"Authorization": "Bearer wrong"}) as r:
            assert r.status == 401
        async with s.get("/v1/state?window=60", headers=auth) as r:
            st = await r.json()
        assert st["devices"]["ok"] == 2 and st["visitors"] > 0 and set(st["zones"]) == {"plaza-sign", "walkway"}
        assert st["zones"]["plaza-sign"]["sessions"] > 0
        async with s.get("/v1/devices", headers=auth) as r:
            devs = (await r.json())["devices"]
        assert {d["name"] for d in devs} == {"sim-0", "sim-1"} and all(d["vectors"] > 0 for d in devs)
        async with s.get("/v1/decisions?since=0&limit=10", headers=auth) as r:
            ds = await r.json()
        assert ds["decisions"] and ds["decisions"][0]["rule"] == "engaged-display"
        assert ds["decisions"][0]["explanation"].startswith("engaged-display: ")
        assert ds["decisions"][0]["actions"] == [{"output": "log", "status": "sent"}]
        async with s.get(f"/v1/decisions?since={ds['cursor']}", headers=auth) as r:
            assert all(d["id"] > ds["cursor"] for d in (await r.json())["decisions"])
        async with s.get("/v1/sessions?limit=5", headers=auth) as r:
            ss = await r.json()
        assert len(ss["sessions"]) == 5 and ss["held"] >= 5 and all(x["device"] in ("sim-0", "sim-1") for x in ss["sessions"])
        async with s.get("/v1/trend", headers=auth) as r:
            assert (await r.json())["buckets"]
        for bad in ("/v1/state?window=0", "/v1/state?window=x", "/v1/decisions?limit=100000"):
            async with s.get(bad, headers=auth) as r:
                assert r.status == 400 and "error" in await r.json()
        async with s.get("/nope", headers=auth) as r:
            assert r.status == 404 and (await r.json())["error"]["status"] == 404
        async with s.get("/metrics", headers=auth) as r:
            text = await r.text()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    up = {s.labels["device"]: s.value for s in fams["cuecam_gateway_device_up"].samples}
    assert up == {"sim-0": 1.0, "sim-1": 1.0}
    taken = {s.labels["device"]: s.value for s in fams["cuecam_gateway_vectors"].samples if s.name.endswith("_total")}
    assert all(v >= 15 for v in taken.values())
    assert any(s.value > 0 for s in fams["cuecam_gateway_poll_seconds"].samples if s.name.endswith("_count"))
    assert [s.value for s in fams["cuecam_gateway_decisions"].samples if s.name.endswith("_total")] == [1.0]


async def test_a_stale_board_makes_the_gateway_degraded(tmp_path):
    board = SimBoard("gone", rate=5.0)
    await board.start()
    path = write_config(tmp_path, [board], interval_s=0.1)
    cfg = yaml.safe_load(path.read_text())
    cfg["polling"]["stale_after_s"] = 0.5
    path.write_text(yaml.safe_dump(cfg))
    async with serving(path) as (gw, url), aiohttp.ClientSession() as s:
        await until(lambda: bool(gw.store.cursor("gone").boot), 5)
        await board.stop()
        for _ in range(100):
            async with s.get(url + "/health") as r:
                body = await r.json()
            if r.status == 503:
                break
            await asyncio.sleep(0.1)
        assert r.status == 503 and body["status"] == "degraded" and "gone" in body["reason"]


def test_gateway_check_and_run_as_commands(tmp_path):
    boards = [SimBoard("a", 1.0)]
    for b in boards:
        b.port = 9  # not started: check does not poll
    path = write_config(tmp_path, boards)
    ok = subprocess.run([sys.executable, "-m", "host_tools.cli", "gateway", "check", "--config", str(path), "--json"],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and json.loads(ok.stdout)["devices"] == ["a"]
    bad = path.read_text().replace("interval_s: 1.0", "interval_s: 1.0\n  jitter: 3")
    path.write_text(bad)
    res = subprocess.run([sys.executable, "-m", "host_tools.cli", "gateway", "check", "--config", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and f"{path}:" in res.stderr and "polling.jitter" in res.stderr
    res = subprocess.run([sys.executable, "-m", "host_tools.cli", "gateway", "run", "--config", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "polling.jitter" in res.stderr


async def test_gateway_run_process_serves_and_stops_on_sigterm(tmp_path):
    board = SimBoard("a", 5.0)
    await board.start()
    board.start_producing()
    try:
        proc, url = await start_gateway_process(write_config(tmp_path, [board], interval_s=0.2))
        try:
            async with aiohttp.ClientSession() as s:
                for _ in range(100):
                    async with s.get(url + "/v1/devices") as r:
                        d = (await r.json())["devices"][0]
                    if d["vectors"] >= 5:
                        break
                    await asyncio.sleep(0.1)
            assert d["state"] == "ok" and d["vectors"] >= 5
        finally:
            proc.terminate()
            assert proc.wait(15) == 0
    finally:
        await board.stop()


def test_import_history_gives_the_slow_hour_rule_baselines_and_a_bad_file_changes_nothing(tmp_path):
    from datetime import datetime, timedelta

    from host_tools.gateway.config import load_gateway_config
    from host_tools.gateway.service import Gateway

    board = SimBoard("a", 1.0)
    board.port = 9  # not started: nothing polls
    path = write_config(tmp_path, [board])
    cli = [sys.executable, "-m", "host_tools.cli", "gateway", "import-history", "--config", str(path)]
    now = datetime.now()
    weeks = [(now - timedelta(weeks=w)).date() for w in (1, 2, 3, 4)]
    csv = tmp_path / "visitors.csv"
    rows = [f"{d.isoformat()},{now.hour},{400 + 10 * i}" for i, d in enumerate(weeks)]
    rows.append(f"{(now - timedelta(days=400)).date().isoformat()},9,7")  # older than history_days
    csv.write_text("date,hour,visitors\n" + "\n".join(rows) + "\n")
    no_db = subprocess.run([*cli, str(csv)], capture_output=True, text=True, timeout=60)
    assert no_db.returncode == 2 and "store.sqlite" in no_db.stderr  # it would be gone at exit
    path = write_config(tmp_path, [board], sqlite=True)
    ok = subprocess.run([*cli, str(csv), "--json"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) | {"sqlite": ""} == {"imported": 4, "too_old": 1, "history_hours": 4, "sqlite": ""}
    # a bad file: a clear file:line error, and what was imported stays as it was
    bad = tmp_path / "bad.csv"
    bad.write_text(f"date,hour,visitors\n{weeks[0].isoformat()},{now.hour},5\n{weeks[1].isoformat()},24,5\n")
    res = subprocess.run([*cli, str(bad)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and f"{bad}:3: hour '24'" in res.stderr
    dup = tmp_path / "dup.csv"
    dup.write_text(f"date,hour,visitors\n{weeks[0].isoformat()},3,5\n{weeks[0].isoformat()},3,6\n")
    res = subprocess.run([*cli, str(dup)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and f"{dup}:3:" in res.stderr and "line 2" in res.stderr

    async def baseline() -> list[int]:
        gw = Gateway(load_gateway_config(path))
        await gw.store.open()
        try:
            return gw.store.baseline(now.weekday(), now.hour, now.strftime("%Y-%m-%d"))
        finally:
            await gw.store.close()

    assert asyncio.run(baseline()) == [400, 410, 420, 430]


async def test_decisions_and_their_cooldowns_survive_a_gateway_restart_with_sqlite(tmp_path):
    board = SimBoard("sim-0", rate=10.0, seed=3)
    await board.start()
    board.start_producing()
    path = write_config(tmp_path, [board], interval_s=0.2, sqlite=True)
    cfg = yaml.safe_load(path.read_text())
    cfg["rules"] = [{"name": name, "when": {"kind": "engaged", "zone": "plaza-sign", "min_engagement": 0.0, "for_s": 1},
                     "then": [{"output": "log"}], "cooldown_s": cooldown}
                    for name, cooldown in (("once-an-hour", 3600), ("every-2s", 2))]
    cfg["outputs"] = {"log": {"enabled": True}}
    path.write_text(yaml.safe_dump(cfg))

    async def run_until(cond) -> dict:
        async with serving(path) as (_gw, url), aiohttp.ClientSession() as s:
            for _ in range(300):
                async with s.get(url + "/v1/decisions?since=0&limit=1000") as r:
                    body = await r.json()
                if cond(body):
                    return body
                await asyncio.sleep(0.1)
        raise AssertionError(f"not reached: {body}")

    def fired(body: dict, rule: str) -> list[int]:
        return [d["id"] for d in body["decisions"] if d["rule"] == rule]

    try:
        first = await run_until(lambda b: fired(b, "once-an-hour") and len(fired(b, "every-2s")) >= 2)
        last_id = first["cursor"]
        # a restart: the decisions are still there, ids go on, the hour-long cooldown still holds
        second = await run_until(lambda b: max(fired(b, "every-2s")) > last_id and b["suppressed_by_cooldown"] > 0)
    finally:
        await board.stop()
    assert second["epoch"] == first["epoch"]
    def what(ds: list[dict]) -> list[dict]:  # (the first read may catch an output still "pending")
        return [{k: v for k, v in d.items() if k != "actions"} for d in ds]

    kept = [d for d in second["decisions"] if d["id"] <= last_id]
    assert what(kept) == what(first["decisions"])
    assert all(a["status"] == "sent" for d in kept for a in d["actions"])
    assert fired(second, "once-an-hour") == fired(first, "once-an-hour")  # not fired again after the restart
    import sqlite3

    with sqlite3.connect(tmp_path / "gateway.sqlite") as c:
        tokens = {t for (t,) in c.execute("SELECT DISTINCT token FROM vectors")}
        kept_bodies = " ".join(b for (b,) in c.execute("SELECT body FROM decisions"))
    assert len(tokens) > 5 and kept_bodies.count('"rule"') >= len(second["decisions"])
    assert not [t for t in tokens if t in kept_bodies], "a session token in a kept decision"
