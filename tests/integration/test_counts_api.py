"""Counting lines, occupancy and queues through the device API on vtest.avi: /v1/counts,
/v1/aggregates, /metrics and the OpenAPI document agree with what the board holds, and an
opt-out purges the counts of its look-back like the vectors."""

from __future__ import annotations

import asyncio

import jsonschema
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from firmware.app import build_service
from firmware.counts import COUNTS_SCHEMA, KIND_IN, KIND_OUT, KIND_WAIT
from firmware.http.app import build_app
from firmware.signals.schema import AGGREGATES_SCHEMA
from tests.conftest import sim_config

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# a line down the middle of the plaza (people walking right to left cross it "in") and a queue
# zone on the walkway's left end
PLAZA = {"name": "plaza-line", "kind": "line", "line": [[0.5, 0.2], [0.5, 0.98]], "in_side": "right"}
WAIT = {"name": "left-end", "kind": "queue", "polygon": [[0.0, 0.3], [0.3, 0.3], [0.3, 0.7], [0.0, 0.7]]}


async def _client(overrides: dict) -> TestClient:
    base = sim_config().config.model_dump()["zones"]
    loaded = sim_config({"zones": [*base, PLAZA, WAIT], "signals": {"pose": "off"}, **overrides})
    svc, token = await build_service(loaded, token_env={"CUECAM_API_TOKEN": TOKEN})
    c = TestClient(TestServer(build_app(svc, token), host="127.0.0.1"))
    await c.start_server()
    c.svc = svc  # type: ignore[attr-defined]
    return c


async def _until(cond, seconds: float = 120.0) -> None:
    for _ in range(int(seconds / 0.1)):
        if cond():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met")


def _held(svc) -> tuple[int, int]:
    ev = svc.counts.events.since(0, svc.counts.events.capacity).records
    return int((ev["kind"] == KIND_IN).sum()), int((ev["kind"] == KIND_OUT).sum())


async def test_counts_aggregates_metrics_and_the_purge(models_dir, vtest):
    c = await _client({"camera": {"pacing": "fast", "loop": True}})
    svc = c.svc  # type: ignore[attr-defined]
    try:
        await _until(lambda: sum(_held(svc)) >= 4 and svc.pipeline.stats.frames_processed >= 200)
        body = await (await c.get("/v1/counts", headers=AUTH)).json()
        jsonschema.validate(body, COUNTS_SCHEMA)
        assert body["lines"] == [{"line": "plaza-line", "entrance": True}] and body["queues"] == ["left-end"]
        assert body["bucket_s"] == 60 and body["buckets"][-1]["complete"] is False
        assert all(b["end"] - b["start"] == 60 and b["start"] % 60 == 0 for b in body["buckets"])
        got_in = sum(b["lines"]["plaza-line"]["in"] for b in body["buckets"])
        got_out = sum(b["lines"]["plaza-line"]["out"] for b in body["buckets"])
        held = _held(svc)
        assert got_in <= held[0] and got_out <= held[1] and got_in + got_out >= 4  # more may come meanwhile
        assert body["buckets"][-1]["measured_s"] > 0 and not any(b["purged"] for b in body["buckets"])
        # since: only the buckets ending after it
        last = body["buckets"][-1]["start"]
        later = await (await c.get(f"/v1/counts?since={last}", headers=AUTH)).json()
        assert [b["start"] for b in later["buckets"]] == [last]
        for q in ("since=-1", "since=x", "since=1&since=2", "until=3"):
            assert (await c.get(f"/v1/counts?{q}", headers=AUTH)).status == 400

        agg = await (await c.get("/v1/aggregates?window=600", headers=AUTH)).json()
        jsonschema.validate(agg, AGGREGATES_SCHEMA)
        assert "plaza-line" not in {z["zone"] for z in agg["zones"]}  # a line has no stays
        (line,) = agg["lines"]
        assert line["line"] == "plaza-line" and line["in"] + line["out"] >= 4
        assert agg["people"]["max"] >= 1 and agg["people"]["now"] is not None
        occ = {z["zone"]: z for z in agg["occupancy"]}
        assert set(occ) == {"plaza-sign", "walkway", "left-end"} and occ["walkway"]["max"] >= 1
        (queue,) = agg["queues"]
        assert queue["zone"] == "left-end" and queue["served"] >= 0
        assert queue["suppressed"] == (queue["served"] < 5)
        if queue["suppressed"]:
            assert queue["wait_mean_s"] is None and queue["wait_max_s"] is None

        fams = {f.name: f for f in text_string_to_metric_families(await (await c.get("/metrics", headers=AUTH)).text())}
        crossings = {(s.labels["line"], s.labels["direction"]): s.value for s in fams["cuecam_line_crossings"].samples}
        assert set(crossings) == {("plaza-line", "in"), ("plaza-line", "out")} and sum(crossings.values()) >= 4
        assert {s.labels["zone"] for s in fams["cuecam_zone_occupancy"].samples} == {"plaza-sign", "walkway", "left-end"}
        assert [s.labels["zone"] for s in fams["cuecam_queue_length"].samples] == ["left-end"]
        assert fams["cuecam_people"].samples[0].value >= 0

        doc = await (await c.get("/openapi.json", headers=AUTH)).json()
        assert "/v1/counts" in doc["paths"]

        # an opt-out (look-back: everything held) purges the counts with the vectors
        before = sum(_held(svc))
        r = await (await c.post("/v1/optout", headers=AUTH)).json()
        assert r["purged"]["counts"] >= before and sum(_held(svc)) == 0
        after = await (await c.get("/v1/counts", headers=AUTH)).json()
        assert all(b["lines"]["plaza-line"] == {"in": 0, "out": 0} for b in after["buckets"])
        assert all(b["purged"] for b in after["buckets"])
        agg = await (await c.get("/v1/aggregates?window=600", headers=AUTH)).json()
        assert agg["lines"][0]["in"] == agg["lines"][0]["out"] == 0 and agg["people"]["now"] is None
    finally:
        await c.close()
        await svc.stop()


async def test_an_optout_look_back_keeps_the_counts_before_it(models_dir, vtest):
    c = await _client({"camera": {"pacing": "fast", "loop": True}, "privacy": {"optout": {"lookback_s": 5}}})
    svc = c.svc  # type: ignore[attr-defined]
    try:
        await _until(lambda: sum(_held(svc)) >= 3)
        await asyncio.sleep(6.0)  # those are now older than the look-back
        ev = svc.counts.events.since(0, svc.counts.events.capacity).records
        ev = ev[ev["kind"] != KIND_WAIT]
        t0 = svc.now()
        await (await c.post("/v1/optout", headers=AUTH)).json()
        t1 = svc.now()
        after = sum(_held(svc))
        # what was counted before the look-back survives, what came within it is gone
        assert int((ev["t_mono"] < t0 - 5).sum()) <= after <= int((ev["t_mono"] < t1 - 5).sum())
        assert int((ev["t_mono"] < t0 - 5).sum()) >= 1
        body = await (await c.get("/v1/counts", headers=AUTH)).json()
        assert body["buckets"][-1]["purged"] is True
    finally:
        await c.close()
        await svc.stop()
