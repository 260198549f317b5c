"""Footfall and transactions at the gateway, end to end on loopback: a real board (the whole
service, real SSD) watching a door where 5 people walk in and 2 walk out, the gateway polling its
counts, a till posting transactions, and the conversion rule deciding with its numbers."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import aiohttp
import yaml
from aiohttp import web

from firmware.app import build_service
from firmware.http.app import build_app
from host_tools.gateway.config import load_gateway_config
from host_tools.gateway.service import Gateway, serve
from tests.conftest import sim_config, until
from tests.integration.test_counting_scenes import DOOR, door_scene

BOARD_TOKEN = "board-token-0123456789abcdef"
API_TOKEN = "gateway-api-token-0123456789abcdef"
TILL_TOKEN = "till-token-0123456789abcdef"


async def test_footfall_transactions_and_the_conversion_rule(tmp_path, models_dir, shared_media):
    loaded = sim_config({"camera": {"type": "synthetic", "scene": str(door_scene(tmp_path, 1.0, 0.0)), "pacing": "fast"},
                         "zones": [DOOR], "signals": {"pose": "off"}})
    svc, token = await build_service(loaded, token_env={"CUECAM_API_TOKEN": BOARD_TOKEN})
    runner = web.AppRunner(build_app(svc, token), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    board_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    for name, value in (("board-token", BOARD_TOKEN), ("gw-token", API_TOKEN), ("till-token", TILL_TOKEN)):
        (tmp_path / name).write_text(value + "\n")
        (tmp_path / name).chmod(0o600)
    cfg = {"version": 1,
           "gateway": {"name": "test-store", "host": "127.0.0.1", "port": 0, "token": {"file": "gw-token"},
                       "till_token": {"file": "till-token"}},
           "devices": [{"name": "cam-door", "url": board_url, "token": {"file": "board-token"}}],
           "polling": {"interval_s": 0.2, "counts_s": 0.5},
           "store": {"retention_s": 3600, "sqlite": "gw.sqlite"},
           "outputs": {"log": {"enabled": True}},
           "rules": [{"name": "conversion-drop", "then": [{"output": "log"}], "cooldown_s": 3600,
                      "when": {"kind": "low_conversion", "window_s": 3600, "percentile": 25, "footfall_percentile": 10,
                               "min_footfall": 5, "min_samples": 3}}]}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    gw = Gateway(load_gateway_config(path))
    urls: list[str] = []
    gw_task = asyncio.create_task(serve(gw, ready=urls.append))
    api = {"Authorization": f"Bearer {API_TOKEN}"}
    till = {"Authorization": f"Bearer {TILL_TOKEN}"}
    try:
        await until(lambda: bool(urls), 30)
        # past weeks at this hour: 100-250 people in, 30 % of them bought (a door counter's and the till's history)
        now = datetime.now()
        past = [now - timedelta(weeks=w) for w in (1, 2, 3, 4)]
        await gw.store.seed_history([(d.strftime("%Y-%m-%d"), d.weekday(), d.hour, 100 + 50 * i) for i, d in enumerate(past)])
        hours = [{"hour": d.replace(minute=0).isoformat(timespec="minutes"), "transactions": int(0.3 * (100 + 50 * i)),
                  "basket_total": 20.0 * int(0.3 * (100 + 50 * i))} for i, d in enumerate(past)]
        async with aiohttp.ClientSession(base_url=urls[0]) as s:
            async with s.post("/v1/transactions", json={"hours": hours}) as r:
                assert r.status == 401  # the till's token is needed
            async with s.post("/v1/transactions", json={"hours": hours}, headers=till) as r:
                assert r.status == 200 and (await r.json())["hours"] == 4
            # the till: an identifying field is refused with its name, and nothing is taken
            bad = {"transactions": [{"t": now.isoformat(), "basket": 9.5, "items": 2},
                                    {"t": now.isoformat(), "basket": 3.0, "items": 1, "loyalty_id": "LY-1"}]}
            async with s.post("/v1/transactions", json=bad, headers=till) as r:
                body = await r.json()
            assert r.status == 422 and body["error"]["field"] == "transactions[1].loyalty_id"
            assert "identifies a person" in body["error"]["message"] and gw.sales.transactions(0) == []  # nothing taken
            sale = {"batch": "till-1-test", "transactions": [{"t": now.isoformat(timespec="seconds"), "basket": 9.5,
                                                              "items": 2, "till": "till-1"}]}
            async with s.post("/v1/transactions", json=sale, headers=till) as r:
                assert r.status == 200 and (await r.json()) == {"accepted": 1, "hours": 0, "duplicate": False}
            async with s.post("/v1/transactions", json=sale, headers=api) as r:  # sent again: taken once
                assert (await r.json())["duplicate"] is True
            await svc.start()
            assert svc.pipeline_task is not None
            await asyncio.wait_for(asyncio.shield(svc.pipeline_task), 300)  # the scene ends
            await until(lambda: gw.sales.footfall(0)[0] == 5, 30)
            async with s.get("/v1/state?window=3600", headers=api) as r:
                st = await r.json()
            assert st["traffic"]["source"] == "footfall" and st["traffic"]["people"] == 5 and st["visitors"] == 5
            assert st["sessions"] >= 1  # what the boards' tokens say, kept for what it is
            await until(lambda: any(d.rule == "conversion-drop" for d in gw.engine.decisions), 10)
            (d,) = [d for d in gw.engine.decisions if d.rule == "conversion-drop"]
            assert d.inputs["footfall"] == 5 and d.inputs["transactions"] == 1 and d.inputs["conversion"] == 0.2
            assert "1 transactions for 5 people in = 20.0%" in d.explanation and "below p25 (30.0%)" in d.explanation
            async with s.get("/v1/kpis?hours=2", headers=api) as r:
                k = (await r.json())["hours"]
            assert k[-1]["footfall"] == 5 and k[-1]["transactions"] == 1 and k[-1]["conversion"] == 0.2
            assert k[-1]["basket_mean"] == 9.5
            async with s.get("/metrics", headers=api) as r:
                text = await r.text()
            assert 'cuecam_gateway_people_in_last_hour{source="footfall"} 5.0' in text
            assert 'cuecam_gateway_conversion_last_hour{source="footfall"} 0.2' in text
            # an opt-out on the board purges its counts; the gateway's copy goes with them
            async with aiohttp.ClientSession() as b, b.post(f"{board_url}/v1/optout",
                                                             headers={"Authorization": f"Bearer {BOARD_TOKEN}"}) as r:
                assert r.status == 200
            await until(lambda: gw.sales.footfall(0)[0] == 0, 30)
    finally:
        gw.stop_event.set()
        await gw_task
        await runner.cleanup()
        await svc.stop()
