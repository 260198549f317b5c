"""The store dashboard on a real gateway on loopback (two scripted boards, SimBoard): the page and its
files are static and public, the data needs the gateway's token, the snapshot and the live stream hold
store now, trends and decisions, and nothing the dashboard receives holds a session token."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import aiohttp
import orjson

from host_tools.gateway import dashboard
from tests.integration.test_gateway_api import API_TOKEN, running  # noqa: F401  (the gateway fixture)
from tests.sse import read_events

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
HEX_TOKEN = re.compile(rb"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])")
VENDOR = Path(dashboard.__file__).with_name("static") / "vendor" / "uplot"


async def _events(s: aiohttp.ClientSession, path: str, n: int, seconds: float, raw: list[bytes]) -> list[dict]:
    async with s.get(path, headers=AUTH) as r:
        assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream"
        return await read_events(r, seconds, n, raw)


async def test_the_page_is_public_and_its_data_needs_the_token(running):  # noqa: F811
    _, url, _ = running
    async with aiohttp.ClientSession(base_url=url) as s:
        for path in dashboard.PUBLIC:
            async with s.get(path) as r:
                body = await r.read()
                assert r.status == 200 and len(body) > 100, path
                assert "img-src 'none'" in r.headers["Content-Security-Policy"]
        async with s.get("/") as r:
            page = await r.text()
        assert "<script src=\"/vendor/uplot/uPlot.iife.min.js\"" in page and "http" not in page.replace("http-equiv", "")
        for path in ("/v1/dashboard", "/v1/dashboard/live"):
            async with s.get(path) as r:
                assert r.status == 401, path
        async with s.get("/v1/dashboard/live?since=x", headers=AUTH) as r:
            assert r.status == 400


def test_uplot_is_vendored_unchanged_with_its_licence():
    import hashlib

    notes = (VENDOR / "VENDORED.md").read_text()
    assert f"uPlot {dashboard.UPLOT_VERSION}" in notes
    for name in ("uPlot.iife.min.js", "uPlot.min.css"):
        digest = hashlib.sha256((VENDOR / name).read_bytes()).hexdigest()
        assert re.search(rf"{re.escape(name)}\s+sha256 {digest}", notes), name
    banner = f"/*! https://github.com/leeoniya/uPlot (v{dashboard.UPLOT_VERSION})"
    assert (VENDOR / "uPlot.iife.min.js").read_text().startswith(banner)
    assert "Permission is hereby granted" in (VENDOR / "LICENSE").read_text()  # MIT


async def test_store_now_trends_and_decisions_arrive_live_without_a_session_token(running):  # noqa: F811
    gw, url, boards = running
    raw: list[bytes] = []
    async with aiohttp.ClientSession(base_url=url) as s:
        for _ in range(200):  # bounded: the scripted boards' people engage the display within seconds
            if gw.engine.decisions and all(gw.store.cursor(b.name).taken >= 20 for b in boards):
                break
            await asyncio.sleep(0.1)
        async with s.get("/v1/dashboard", headers=AUTH) as r:
            assert r.status == 200
            raw.append(body := await r.read())
        snap = orjson.loads(body)
        now = snap["now"]
        assert now["visitors_now"] > 0 and now["visitors_today"] >= now["visitors_now"]
        assert now["boards_healthy"] == 2 and {b["name"] for b in now["boards"]} == {b.name for b in boards}
        assert {"plaza-sign", "walkway"} <= {z["zone"] for z in now["zones"]} and now["optouts"] == 0
        assert snap["decisions"] and snap["decisions"][0]["explanation"].startswith("engaged-display: ")
        assert snap["decisions"][0]["actions"] == [{"output": "log", "status": "sent"}]
        tr = snap["trends"]
        assert tr["hours"] and tr["hours"][-1]["visitors"] > 0 and tr["hours"][-1]["partial"]
        assert "plaza-sign" in tr["signals"] and all(len(row) == 5 for row in tr["signals"]["plaza-sign"])
        # the live stream: "now" every 2 s, decisions after the cursor only
        cursor = snap["cursor"]
        gw.engine._last_fired.clear()  # let the rule fire again for the next engaged visitor
        msgs = await _events(s, f"/v1/dashboard/live?since={cursor}", 3, 15.0, raw)
        assert len(msgs) == 3 and all(m["now"]["store"] == now["store"] for m in msgs)
        new = [d for m in msgs for d in m["decisions"]]
        assert all(d["id"] > cursor for d in new) and msgs[-1]["cursor"] >= cursor
        old = await _events(s, "/v1/dashboard/live?since=0", 1, 5.0, raw)
        assert [d["id"] for d in old[0]["decisions"]][: len(snap["decisions"])] == [d["id"] for d in snap["decisions"]]
    everything = b"".join(raw)
    tokens = {r.token.encode() for r in gw.store.recs}
    assert tokens and not [t for t in tokens if t in everything]  # no session token of any shopper
    assert HEX_TOKEN.findall(everything) == []
    assert b"token" not in everything


async def test_an_optout_is_a_count_only(running):  # noqa: F811
    gw, url, boards = running
    async with aiohttp.ClientSession(base_url=url) as s:
        for _ in range(100):
            if all(gw.store.cursor(b.name).taken >= 5 for b in boards):
                break
            await asyncio.sleep(0.1)
        # what a board's /v1/vectors says after its button was pressed (the board's own purge list)
        b = boards[0]
        b.purges.append({"n": 1, "seq_from": 1, "seq_to": b.vectors.newest_seq, "since": 0.0, "t": round(time.time(), 3)})
        for _ in range(100):
            async with s.get("/v1/dashboard", headers=AUTH) as r:
                snap = await r.json()
            if snap["now"]["optouts"] == 1:
                break
            await asyncio.sleep(0.1)
    assert snap["now"]["optouts"] == 1
    assert "optout" not in orjson.dumps(snap["decisions"]).decode()  # no event: when and where stay out
