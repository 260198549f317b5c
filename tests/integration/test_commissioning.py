"""The commissioning view on a running sim board (real models, vtest.avi, real server on loopback): the
live stream (people, rate cap, one stream per client, the stream cap), the token, the zone editor
(bad zones change nothing; good ones are saved and name the next vectors; one undo), the opt-out purge,
and the no-pixel proof over every byte the board sends the page."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import ClientSession, TCPConnector
from aiohttp.test_utils import TestClient, TestServer

from firmware.app import build_service
from firmware.config import load_config
from firmware.http.app import UI_ROUTES, build_app
from tests.conftest import until
from tests.device import write_config
from tests.sse import read_events

TOKEN = "commissioning-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FLOOR = [[0.02, 0.30], [0.98, 0.25], [0.98, 0.80], [0.02, 0.80]]  # where vtest.avi's people walk


async def _board(tmp_path, overrides: dict | None = None) -> TestClient:
    path = write_config(tmp_path, overrides)
    svc, token = await build_service(load_config(path), token_env={"CUECAM_API_TOKEN": TOKEN})
    c = TestClient(TestServer(build_app(svc, token), host="127.0.0.1"))
    await c.start_server()
    c.svc = svc  # type: ignore[attr-defined]
    c.config_path = path  # type: ignore[attr-defined]
    return c


@pytest.fixture
async def board(models_dir, vtest, tmp_path):
    c = await _board(tmp_path)
    yield c
    await c.close()


async def _messages(c: TestClient, seconds: float, raw: list[bytes] | None = None, n: int | None = None,
                    source: str = "127.0.0.1") -> list[dict]:
    """The live stream's messages for ``seconds`` (or until ``n`` came), bytes kept in ``raw``; the
    connection made from the loopback address ``source`` (another address: another client)."""
    async with ClientSession(connector=TCPConnector(local_addr=(source, 0))) as http, \
            http.get(c.make_url("/v1/ui/live"), headers=AUTH) as r:
        assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream", (r.status, await r.text())
        return await read_events(r, seconds, n, raw, stamp=True)


async def test_people_arrive_as_boxes_at_a_capped_rate(board):
    msgs = await _messages(board, 6.0)
    with_people = [m for m in msgs if m["people"]]
    assert with_people, "no people in 6 s of vtest.avi"
    m = with_people[-1]
    assert m["size"] == [768, 576] and not m["paused"]
    for p in m["people"]:
        x0, y0, x1, y1 = p["box"]
        assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
        assert p["kp"] is None or (len(p["kp"]) == 17 and all(len(k) == 3 for k in p["kp"]))
        assert 1 <= len(p["tail"]) <= 24
    assert [z["name"] for z in m["zones"]] == ["plaza-sign", "walkway", "staff-path"]
    assert all(z["now"] <= len(m["people"]) for z in m["zones"])  # zones overlap: a person may be in two
    assert any(p["kp"] for mm in with_people for p in mm["people"])  # skeletons from the pose model
    rate = board.svc.config.commissioning.rate_hz
    span = msgs[-1]["at"] - msgs[1]["at"]
    assert (len(msgs) - 2) / span <= rate * 1.15, (len(msgs), span)  # capped
    assert len(msgs) >= 0.5 * rate * 5  # and flowing (the sim board analyses ~10 fps)


async def test_one_stream_per_client_and_at_most_max_streams(models_dir, vtest, tmp_path):
    c = await _board(tmp_path, {"commissioning": {"max_streams": 2}})
    try:
        streams = c.app[ui_streams()]
        first = asyncio.create_task(_messages(c, 20.0))
        await until(lambda: streams.opened == 1, 10)
        second = await _messages(c, 1.5)  # the same client again: the first stream ends
        assert second
        assert await asyncio.wait_for(first, 5) and streams.replaced == 1
        await until(lambda: not streams.by_client, 5)  # the server saw both go
        held = [asyncio.create_task(_messages(c, 3.0, source=ip)) for ip in ("127.0.0.2", "127.0.0.3")]
        await until(lambda: len(streams.by_client) == 2, 10)
        async with ClientSession(connector=TCPConnector(local_addr=("127.0.0.4", 0))) as http, \
                http.get(c.make_url("/v1/ui/live"), headers=AUTH) as r:
            assert r.status == 503 and "max_streams" in (await r.json())["error"]["message"]
            assert r.headers["Retry-After"]
        assert all(await asyncio.gather(*held)) and streams.refused == 1
    finally:
        await c.close()


def ui_streams():
    from firmware.http.ui import STREAMS

    return STREAMS


async def test_the_token_is_needed_and_the_page_holds_no_data(board):
    for r in UI_ROUTES:
        resp = await board.request(r.method, r.path)
        if r.auth:
            assert resp.status == 401, r.path
        else:
            assert resp.status == 200 and r.path.startswith("/ui")
            assert "img-src 'none'" in resp.headers["Content-Security-Policy"]
    page = await (await board.get("/ui")).text()
    assert "<img" not in page and TOKEN not in page and "plaza-sign" not in page  # a shell: data only with the token


async def test_off_by_default_the_routes_do_not_exist(models_dir, vtest, tmp_path):
    c = await _board(tmp_path, {"commissioning": {"enabled": False}})
    try:
        for r in UI_ROUTES:
            assert (await c.request(r.method, r.path, headers=AUTH)).status == 404, r.path
        doc = await (await c.get("/openapi.json", headers=AUTH)).json()
        assert not [p for p in doc["paths"] if "/ui" in p]
        assert c.svc.commissioning is None and not any(
            getattr(o, "__self__", None) is not None for o in c.svc.pipeline.observers)
    finally:
        await c.close()


async def _zones(c: TestClient) -> list[dict]:
    return (await (await c.get("/v1/ui/zones", headers=AUTH)).json())["zones"]


async def test_a_bad_zone_changes_nothing_and_a_good_one_names_the_next_vectors(board):
    svc, path = board.svc, board.config_path
    before_text = path.read_text()
    zones = await _zones(board)
    assert [z["name"] for z in zones] == ["plaza-sign", "walkway", "staff-path"]
    bad = [*zones, {"name": "floor", "kind": "aisle", "polygon": [[0.1, 0.1], [0.2, 0.2]]}]
    r = await board.post("/v1/ui/zones", json={"zones": bad}, headers=AUTH)
    body = await r.json()
    assert r.status == 422 and any("zone 4 (floor): polygon" in p for p in body["error"]["problems"]), body
    assert path.read_text() == before_text and [z.name for z in svc.config.zones] == ["plaza-sign", "walkway", "staff-path"]
    r = await board.post("/v1/ui/zones", data=b"{not json", headers={**AUTH, "Content-Type": "application/json"})
    assert r.status == 400 and path.read_text() == before_text

    await until(lambda: svc.pipeline.stats.vectors > 0, 60)
    door = {"name": "door", "kind": "line", "line": [[0.5, 0.3], [0.5, 0.8]], "in_side": "left"}  # a counting line
    good = [zones[0], {"name": "floor", "kind": "aisle", "polygon": FLOOR}, zones[2], door]  # walkway replaced
    r = await board.post("/v1/ui/zones", json={"zones": good}, headers=AUTH)
    body = await r.json()
    assert r.status == 200 and body["saved"] and body["can_undo"], body
    assert [z.name for z in load_config(path).config.zones] == ["plaza-sign", "floor", "staff-path", "door"]
    counts = await (await board.get("/v1/counts", headers=AUTH)).json()
    assert [ln["line"] for ln in counts["lines"]] == ["door"]  # the counting figures follow the new zones
    assert path.with_name(path.name + ".prev").read_text() == before_text
    seq = svc.vectors.newest_seq
    # the next vectors name the new zone, without a restart (windows of people on the plaza's floor)
    await until(lambda: any(v["zone"] == "floor" for v in _newer(svc, seq)), 60)
    assert not any(v["zone"] == "walkway" for v in _newer(svc, seq))
    names = [z["zone"] for z in (await (await board.get("/v1/aggregates?window=3600", headers=AUTH)).json())["zones"]]
    assert "floor" in names and "walkway" not in names
    assert (await board.get("/v1/vectors?zone=floor", headers=AUTH)).status == 200

    r = await board.post("/v1/ui/zones/undo", headers=AUTH)
    assert r.status == 200 and not (await r.json())["can_undo"]
    assert path.read_text() == before_text and [z.name for z in svc.config.zones] == ["plaza-sign", "walkway", "staff-path"]
    assert (await (await board.get("/v1/counts", headers=AUTH)).json())["lines"] == []
    r = await board.post("/v1/ui/zones/undo", headers=AUTH)
    assert r.status == 409 and "nothing to undo" in (await r.json())["error"]["message"]


def _newer(svc, seq: int) -> list[dict]:
    from firmware.signals.schema import to_json

    return list(to_json(svc.vectors.since(seq, 1000).records, svc.zone_names, svc.speed_unit))


async def test_an_optout_purges_the_view(board):
    svc = board.svc
    await until(lambda: svc.commissioning.people and svc.commissioning.heatmap()["cells"], 60)
    r = await board.post("/v1/optout", headers=AUTH)
    assert r.status == 200
    heat = await (await board.get("/v1/ui/heatmap", headers=AUTH)).json()
    assert heat["cells"] == [] and svc.commissioning._persons == {}
    msgs = await _messages(board, 1.5, n=1)
    assert msgs and msgs[0]["paused"] and msgs[0]["people"] == [] and all(z["now"] == 0 for z in msgs[0]["zones"])


async def test_the_paired_companions_and_their_last_press_are_shown(models_dir, vtest, tmp_path):
    """A board paired with a sign's companion: the live view lists it (where its button is, never
    pressed), then, after a signed press on POST /v1/optout, its press and a refused replay."""
    import json

    from firmware.privacy.companion import authorization

    key = bytes(range(32))
    (tmp_path / "door-1.key").write_text(key.hex() + "\n")
    c = await _board(tmp_path, {"privacy": {"optout": {"companions": [
        {"name": "door-1", "key_file": str(tmp_path / "door-1.key"), "position": "below the sign's text"}]}}})
    try:
        (before,) = (await _messages(c, 2.0, n=1))[0]["companions"]
        assert (before["name"], before["position"], before["presses"], before["last_press_t"]) == (
            "door-1", "below the sign's text", 0, None)
        body = json.dumps({"v": 1, "companion": "door-1", "board": c.svc.config.board.name, "action": "optout",
                           "ts": round(time.time()), "ctr": 7, "press": 7, "age_ms": 30}).encode()
        headers = {"Authorization": authorization("door-1", key, body), "Content-Type": "application/json"}
        assert (await c.post("/v1/optout", data=body, headers=headers)).status == 200
        assert (await c.post("/v1/optout", data=body, headers=headers)).status in (401, 403, 409)  # the replay
        msg = (await _messages(c, 2.0, n=1))[0]
        (after,) = msg["companions"]
        assert msg["paused"] and after["presses"] == 1 and after["last_action"] == "optout"
        assert abs(after["last_press_t"] - time.time()) < 30 and after["refusals"] == 1 and after["last_refusal"] == "replay"
    finally:
        await c.close()


# -- the no-pixel proof -------------------------------------------------------------------------------
IMAGE_MIME = re.compile(rb"image/|video/|data:[^ ]|blob:|base64|createImageBitmap|putImageData|toDataURL", re.I)
BASE64_RUN = re.compile(rb"[A-Za-z0-9+/=]{64,}")
MAX_NUMBERS = 256  # numbers in any one array (nested arrays counted in full); a 16x16 grey thumbnail is 256


def _numbers(v: Any) -> int:
    if isinstance(v, list):
        return sum(_numbers(x) for x in v)
    return 1 if isinstance(v, int | float) and not isinstance(v, bool) else 0


def _frame_like(v: Any, where: str, out: list[str]) -> None:
    if isinstance(v, dict):
        for k, x in v.items():
            _frame_like(x, f"{where}.{k}", out)
    elif isinstance(v, list):
        if _numbers(v) > MAX_NUMBERS and not where.endswith(".people") and not where.endswith(".zones"):
            out.append(f"{where}: {_numbers(v)} numbers")
        for i, x in enumerate(v):
            _frame_like(x, f"{where}[{i}]", out)


async def test_nothing_the_page_receives_is_image_data(board):
    """Every byte of every response the page loads or calls, and of its stream, recorded and searched."""
    svc = board.svc
    await until(lambda: svc.commissioning.people, 60)
    received: dict[str, bytes] = {}
    for path in [r.path for r in UI_ROUTES if not r.auth]:  # the page and every file it loads
        r = await board.get(path)
        assert r.status == 200 and not r.content_type.startswith(("image/", "video/"))
        received[path] = await r.read()
    for method, path in (("GET", "/v1/ui/zones"), ("GET", "/v1/ui/heatmap")):
        r = await board.request(method, path, headers=AUTH)
        assert r.content_type == "application/json"
        received[path] = await r.read()
    chunks: list[bytes] = []
    msgs = await _messages(board, 4.0, chunks)
    received["/v1/ui/live"] = b"".join(chunks)
    assert sum(len(m["people"]) for m in msgs) > 0
    problems: list[str] = []
    for path, body in received.items():
        for m in IMAGE_MIME.finditer(body):
            problems.append(f"{path}: {m.group()!r} at {m.start()}")
        for m in BASE64_RUN.finditer(body):
            problems.append(f"{path}: base64-like run {m.group()[:40]!r}")
    for path in ("/v1/ui/zones", "/v1/ui/heatmap"):
        data = orjson.loads(received[path])
        if path == "/v1/ui/heatmap":  # counts per cell: sparse, integer, one per walked cell
            cells = data.pop("cells")
            assert len({(c, r) for c, r, _ in cells}) == len(cells)
            assert all(isinstance(n, int) and n > 0 for _, _, n in cells)
            assert len(cells) < data["grid"][0] * data["grid"][1]  # the floor people never walk is not sent
        _frame_like(data, path, problems)
    for m in msgs:
        m.pop("at")
        _frame_like(m, "live", problems)
        for i, p in enumerate(m["people"]):
            assert set(p) == {"box", "kp", "tail"}
            for k, v in p.items():
                if _numbers(v) > 17 * 3:
                    problems.append(f"live.people[{i}].{k}: {_numbers(v)} numbers")
    assert problems == []


async def test_a_stopping_board_ends_the_open_streams_at_once(models_dir, vtest, tmp_path):
    """An open page does not hold a stopping board (SIGTERM): its stream ends and the process exits."""
    from tests import device

    proc = device.start(device.write_config(tmp_path), TOKEN)
    try:
        url = device.wait_url(proc)
        async with ClientSession() as http, http.get(url + "/v1/ui/live", headers=AUTH) as r:
            assert r.status == 200
            await asyncio.wait_for(r.content.readany(), 30)
            t0 = time.monotonic()
            proc.terminate()
            while not r.content.at_eof() and time.monotonic() - t0 < 15:  # bounded
                with contextlib.suppress(TimeoutError, aiohttp.ClientError):
                    await asyncio.wait_for(r.content.readany(), 1.0)
            await asyncio.to_thread(proc.wait, 15)
            assert time.monotonic() - t0 < 10 and proc.returncode == 0, device.log_text(proc)[-2000:]
    finally:
        device.stop(proc)


async def test_zone_names_of_one_run_are_capped(board):
    """Edits only add zone names (a held vector keeps naming its zone): beyond MAX_ZONE_NAMES a save is refused."""
    from firmware.http.ui import MAX_ZONE_NAMES

    svc, path = board.svc, board.config_path
    square = [[0.1, 0.1], [0.2, 0.1], [0.2, 0.2], [0.1, 0.2]]
    saves = 0
    for batch in range(MAX_ZONE_NAMES // 64 + 2):  # bounded
        zones = [{"name": f"z{batch}-{i}", "kind": "aisle", "polygon": square} for i in range(64)]
        before = path.read_text()
        r = await board.post("/v1/ui/zones", json={"zones": zones}, headers=AUTH)
        if r.status == 409:
            assert "zone names" in (await r.json())["error"]["message"] and path.read_text() == before
            break
        assert r.status == 200, await r.text()
        saves += 1
    assert len(svc.zone_names) <= MAX_ZONE_NAMES < len(svc.zone_names) + 64
    assert saves == (MAX_ZONE_NAMES - 3) // 64
