"""The device API on a real aiohttp server on loopback, with the real detector on real footage."""

from __future__ import annotations

import asyncio

import jsonschema
import pytest
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families

from firmware.app import build_service
from firmware.http.app import ROUTES, UI_ROUTES, build_app
from firmware.signals.schema import AGGREGATES_SCHEMA, VECTORS_SCHEMA
from tests.conftest import sim_config

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def client(models_dir, vtest):
    loaded = sim_config({"camera": {"pacing": "realtime"}})
    svc, token = await build_service(loaded, token_env={"CUECAM_API_TOKEN": TOKEN})
    server = TestServer(build_app(svc, token), host="127.0.0.1")
    async with TestClient(server) as c:
        c.svc = svc  # type: ignore[attr-defined]
        yield c


async def _wait_for_frames(client, n: int = 3, tries: int = 150) -> None:
    for _ in range(tries):  # 0.1 s apart
        if client.svc.pipeline.stats.frames_processed >= n:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the pipeline processed no frames")


async def test_health_needs_no_token_and_turns_ok(client):
    r = await client.get("/health")
    assert r.status in (200, 503)
    await _wait_for_frames(client)
    r = await client.get("/health")
    body = await r.json()
    assert r.status == 200 and body["status"] == "ok" and body["reason"] is None


@pytest.mark.parametrize("route", [r for r in ROUTES if r.auth], ids=lambda r: r.path)
async def test_every_other_route_requires_the_token(client, route):
    r = await client.request(route.method, route.path)
    assert r.status == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await r.json())["error"]["status"] == 401
    r = await client.request(route.method, route.path, headers={"Authorization": "Bearer wrong-token-xxxxxxxx"})
    assert r.status == 401
    r = await client.request(route.method, route.path, headers={"Authorization": f"Basic {TOKEN}"})
    assert r.status == 401
    r = await client.request(route.method, route.path, headers=AUTH)
    if route.path.startswith("/v1/ota"):  # authorised, then refused: no trusted keys on the sim board
        assert r.status == 403 and "trusted keys" in (await r.json())["error"]["message"]
    else:
        assert r.status == 200


async def test_status_reports_the_board(client):
    await _wait_for_frames(client, 5)
    s = await (await client.get("/v1/status", headers=AUTH)).json()
    assert s["board"] == {"name": "sim-1", "kind": "sim"}
    assert s["model"]["name"] == "ssd_mobilenet_v1" and s["model"]["runtime"] in ("litert", "tflite-runtime")
    assert s["frames"]["processed"] >= 5 and s["frames"]["dropped"] >= 0
    assert 0 < s["inference_ms"]["p50"] <= s["inference_ms"]["p99"]
    assert s["buffer"]["capacity"] == 6000 and s["buffer"]["records"] >= 0
    assert s["people"]["frames_with_people"] >= 1 and s["signals"]["pose"] == "movenet_lightning"
    assert s["uptime_s"] > 0 and s["fps"] > 0


async def _wait_for_vectors(client, n: int, tries: int = 300) -> None:
    for _ in range(tries):  # 0.1 s apart: vectors come when 2 s windows close
        if len(client.svc.vectors) >= n:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"fewer than {n} vectors after {tries / 10:.0f} s")


async def test_vectors_page_with_the_cursor_and_match_the_schema(client):
    await _wait_for_vectors(client, 6)
    body = await (await client.get("/v1/vectors?limit=3", headers=AUTH)).json()
    jsonschema.validate(body, VECTORS_SCHEMA)
    assert body["schema"] == 1 and len(body["vectors"]) == 3 and body["more"] is True and body["lost"] == 0
    seqs = [v["seq"] for v in body["vectors"]]
    assert seqs == sorted(seqs) and body["cursor"] == seqs[-1]
    nxt = await (await client.get(f"/v1/vectors?since={body['cursor']}&limit=3", headers=AUTH)).json()
    jsonschema.validate(nxt, VECTORS_SCHEMA)
    assert nxt["vectors"][0]["seq"] == seqs[-1] + 1
    for v in body["vectors"] + nxt["vectors"]:
        assert v["window_end"] - v["window_start"] == pytest.approx(2.0, abs=1e-3)
        assert v["zone"] in (None, "plaza-sign", "walkway")  # never the excluded staff-path


async def test_vectors_filter_by_zone_and_reject_unknown_zones(client):
    await _wait_for_vectors(client, 10)
    body = await (await client.get("/v1/vectors?zone=walkway&limit=1000", headers=AUTH)).json()
    assert body["vectors"] and {v["zone"] for v in body["vectors"]} == {"walkway"}
    assert body["cursor"] >= body["vectors"][-1]["seq"]
    for zone in ("staff-path", "nowhere"):
        r = await client.get(f"/v1/vectors?zone={zone}", headers=AUTH)
        if zone == "staff-path":  # a configured zone, but excluded: nothing is ever measured there
            assert r.status == 200 and (await r.json())["vectors"] == []
        else:
            assert r.status == 400 and "unknown zone" in (await r.json())["error"]["message"]


async def test_aggregates_summarise_the_last_window(client):
    await _wait_for_vectors(client, 10)
    r = await client.get("/v1/aggregates?window=60", headers=AUTH)
    body = await r.json()
    jsonschema.validate(body, AGGREGATES_SCHEMA)
    cells = {c["zone"]: c for c in body["zones"]}
    assert set(cells) == {"plaza-sign", "walkway", None}  # the excluded zone has no cell
    shown = [c for c in cells.values() if not c["suppressed"]]
    hidden = [c for c in cells.values() if c["suppressed"]]
    assert all(c["tracks"] >= 5 for c in shown)  # k-anonymity: k = 5 on the sim board
    assert all(all(c[k] is None for k in c if k not in ("zone", "kind", "suppressed")) for c in hidden)
    recs = client.svc.vectors.since(0, 10_000).records
    for c in shown:
        zi = -1 if c["zone"] is None else client.svc.zone_names.index(c["zone"])
        assert c["vectors"] == int((recs["zone"] == zi).sum())
    for q in ("window=0", "window=3601", "window=x"):
        assert (await client.get(f"/v1/aggregates?{q}", headers=AUTH)).status == 400


async def test_detections_are_not_served(client):
    r = await client.get("/v1/detections", headers=AUTH)
    assert r.status == 404


@pytest.mark.parametrize(
    "query",
    ["since=-1", "since=abc", "since=1.5", "limit=0", "limit=100000", "limit=", "colour=red", "since=1&since=2",
     "since=99999999999999999999999", "since=9223372036854775808", "zone=", "zone=a&zone=b"],
)
async def test_bad_query_parameters_get_400_json(client, query):
    r = await client.get(f"/v1/vectors?{query}", headers=AUTH)
    assert r.status == 400
    err = (await r.json())["error"]
    assert err["status"] == 400 and err["message"]


async def test_unknown_route_and_method_get_json_errors(client):
    r = await client.get("/v2/nothing", headers=AUTH)
    assert r.status == 404 and (await r.json())["error"]["status"] == 404
    r = await client.get("/nothing")
    assert r.status == 404
    r = await client.post("/v1/status", headers=AUTH, data=b"{}")
    assert r.status == 405 and (await r.json())["error"]["status"] == 405


async def test_openapi_lists_exactly_the_served_routes(client):
    doc = await (await client.get("/openapi.json", headers=AUTH)).json()
    validate(doc)  # a valid OpenAPI 3.1 document
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    served = {
        (r.method, r.resource.canonical)
        for r in client.server.app.router.routes()
        if r.method != "HEAD" and r.resource is not None
    }
    assert documented == served
    assert doc["paths"]["/health"]["get"]["security"] == []
    public = {r.path for r in ROUTES if not r.auth}
    assert public == {"/health", "/v1/privacy"}
    # and the commissioning page's static shell (sim.yaml has commissioning on; its data needs the token)
    public |= {r.path for r in UI_ROUTES if not r.auth}
    assert public - {"/health", "/v1/privacy"} == {"/ui", "/ui/commissioning.js", "/ui/commissioning.css", "/ui/sse.js"}
    assert all(op["security"] for p, ops in doc["paths"].items() if p not in public for op in ops.values())


async def test_metrics_are_prometheus_text(client):
    await _wait_for_frames(client, 3)
    r = await client.get("/metrics", headers=AUTH)
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
    fams = {f.name: f for f in text_string_to_metric_families(await r.text())}
    assert fams["cuecam_frames_processed"].samples[0].value >= 3
    assert {"cuecam_frames_dropped", "cuecam_inference_seconds", "cuecam_fps", "cuecam_buffer_capacity"} <= set(fams)
