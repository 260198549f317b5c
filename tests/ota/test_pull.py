"""Pull delivery: the board downloads a signed bundle from the gateway, resumes an interrupted
download with an HTTP Range request, then verifies and installs it (real servers on loopback)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from firmware.app import build_service
from firmware.http.app import build_app
from host_tools.ota_cli import tree_files
from ota.bundle import build_bundle, generate_keypair, public_key_hex
from ota.slots import SlotStore
from tests.conftest import ROOT, sim_config

TOKEN = "ota-pull-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _files(dst: Path, version: str) -> Path:
    for rel, src in tree_files(ROOT).items():
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        text = src.read_bytes()
        if rel == "firmware/__init__.py":
            text = b"\n".join(f'__version__ = "{version}"'.encode() if ln.startswith(b"__version__") else ln
                              for ln in text.splitlines()) + b"\n"
        (dst / rel).write_bytes(text)
    return dst


@pytest.fixture
async def setup(tmp_path, models_dir, vtest):
    priv, pub = generate_keypair()
    v2 = _files(tmp_path / "v2", "0.2.0")
    bundle = build_bundle({p.relative_to(v2).as_posix(): p for p in sorted(v2.rglob("*")) if p.is_file()},
                          version="0.2.0", boards=["sim"], min_version="0.0.0", private_key=priv, out=tmp_path / "b.bundle")
    data = bundle.read_bytes()
    ota_root = tmp_path / "ota"
    SlotStore(ota_root).init("0.1.0", _files(tmp_path / "v1", "0.1.0"))
    requests: list[str | None] = []

    async def serve_bundle(request: web.Request) -> web.StreamResponse:
        rng = request.headers.get("Range")
        requests.append(rng)
        if rng is None and len(requests) == 1:  # the first download breaks half way
            resp = web.StreamResponse()
            resp.content_length = len(data)
            await resp.prepare(request)
            await resp.write(data[: len(data) // 2])
            await asyncio.sleep(0.3)  # the board reads what came, then the link drops
            assert request.transport is not None
            request.transport.close()
            return resp
        start = int(rng.removeprefix("bytes=").split("-")[0]) if rng else 0
        status = 206 if rng else 200
        headers = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"} if rng else {}
        return web.Response(body=data[start:], status=status, headers=headers)

    gateway = web.Application()
    gateway.router.add_get("/cuecam.bundle", serve_bundle)
    gw = TestClient(TestServer(gateway, host="127.0.0.1"))
    await gw.start_server()
    loaded = sim_config({"camera": {"pacing": "fast"}, "privacy": {"audit_log": str(tmp_path / "audit.jsonl")},
                         "ota": {"root": str(ota_root), "trusted_keys": [public_key_hex(pub)]}})
    svc, token = await build_service(loaded, token_env={"CUECAM_API_TOKEN": TOKEN})
    board = TestClient(TestServer(build_app(svc, token), host="127.0.0.1"))
    await board.start_server()
    yield {"board": board, "svc": svc, "url": str(gw.make_url("/cuecam.bundle")), "requests": requests, "size": len(data),
           "root": ota_root}
    await board.close()
    await gw.close()


async def test_an_interrupted_pull_resumes_with_range_and_installs(setup):
    board, svc = setup["board"], setup["svc"]
    r = await board.post("/v1/ota/pull", json={"url": setup["url"]}, headers=AUTH)
    assert r.status == 502, await r.text()
    st = (await (await board.get("/v1/status", headers=AUTH)).json())["ota"]
    assert st["state"] == "failed" and 0 < st["received_bytes"] < setup["size"]
    half = st["received_bytes"]
    r = await board.post("/v1/ota/pull", json={"url": setup["url"]}, headers=AUTH)
    body = await r.json()
    assert r.status == 202, body
    assert body["installed"]["version"] == "0.2.0"
    assert setup["requests"] == [None, f"bytes={half}-"]  # resumed where it broke off
    state = SlotStore(setup["root"]).status()["state"]
    assert state["trial"] == "b" and state["versions"]["b"] == "0.2.0"
    await asyncio.wait_for(svc.stop_event.wait(), timeout=5)
    assert svc.exit_code == 75  # restarting into the trial slot
    assert not (setup["root"] / "staging").exists() and not (setup["root"] / "download" / "incoming.partial").exists()


async def test_pull_refuses_bad_requests(setup):
    board = setup["board"]
    for body in ({"url": "ftp://x/y"}, {"nope": 1}, {"url": "http://" + "x" * 3000}):
        r = await board.post("/v1/ota/pull", json=body, headers=AUTH)
        assert r.status == 400, await r.text()
    r = await board.post("/v1/ota/pull", data=b"not json", headers=AUTH)
    assert r.status == 400
    assert (await board.post("/v1/ota/pull", json={"url": setup["url"]})).status == 401
