"""Privacy guardrails on the real service: the opt-out button (gpiozero's MockFactory pins)
and API, retention, closed hours and excluded zones, with the real models on real footage."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from firmware.app import build_service
from firmware.http.app import build_app
from tests.conftest import sim_config, until
from tests.scenes import run_scene

TOKEN = "privacy-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def _client(overrides: dict, tmp_path, wall_clock=time.time, clock=time.monotonic) -> TestClient:
    over = {"privacy": {"audit_log": str(tmp_path / "audit.jsonl")}}
    for k, v in overrides.items():
        over[k] = {**over.get(k, {}), **v} if isinstance(v, dict) else v
    svc, token = await build_service(sim_config(over), token_env={"CUECAM_API_TOKEN": TOKEN}, wall_clock=wall_clock,
                                     clock=clock)
    c = TestClient(TestServer(build_app(svc, token), host="127.0.0.1"))
    await c.start_server()
    c.svc = svc  # type: ignore[attr-defined]
    return c



async def _until(cond, seconds: float = 30.0, step: float = 0.02) -> None:
    await until(cond, seconds, step)


async def _get(c: TestClient, path: str) -> dict:
    r = await c.get(path, headers=AUTH)
    assert r.status == 200, await r.text()
    return await r.json()


@pytest.fixture
async def board(models_dir, vtest, tmp_path):
    c = await _client({"privacy": {"optout": {"pause_s": 30, "button": {"resume": "long_press", "long_press_s": 0.3}}},
                       "camera": {"pacing": "fast"}}, tmp_path)
    yield c
    await c.close()


async def test_button_press_pauses_and_purges_everything(board):
    svc = board.svc
    await _until(lambda: len(svc.vectors) >= 20)
    assert (await _get(board, "/v1/status"))["privacy"]["led"] == "on"
    r = await board.post("/v1/sim/button?hold_ms=50", headers=AUTH)
    assert r.status == 200 and (await r.json())["paused"] is True
    # paused and purged: nothing held, nothing served, nothing analysed
    health = await (await board.get("/health")).json()
    assert health["status"] == "paused" and 25 < health["paused"]["remaining_s"] <= 30
    assert (await _get(board, "/v1/vectors?limit=1000"))["vectors"] == []
    agg = await _get(board, "/v1/aggregates?window=3600")
    assert all(c["suppressed"] for c in agg["zones"])
    assert len(svc.vectors) == 0 and not svc.analyzer.tracker.tracks and not svc.analyzer.engine.states
    processed = svc.pipeline.stats.frames_processed
    await asyncio.sleep(0.5)
    assert svc.pipeline.stats.frames_processed == processed  # capture and inference paused
    st = (await _get(board, "/v1/status"))["privacy"]
    assert st["paused"] and st["led"] == "blinking" and st["optouts"] == 1
    assert st["last_optout"]["source"] == "button" and st["last_optout"]["purged"]["vectors"] >= 20
    audit = (await _get(board, "/v1/audit"))["entries"]
    assert audit[-1]["event"] == "optout" and audit[-1]["source"] == "button" and audit[-1]["vectors"] >= 20
    # a long press resumes early (configured); measuring starts again from nothing
    r = await board.post("/v1/sim/button?hold_ms=600", headers=AUTH)
    await _until(lambda: not svc.privacy.paused)
    assert (await (await board.get("/health")).json())["paused"] is None
    await _until(lambda: svc.pipeline.stats.frames_processed > processed + 5)
    assert (await _get(board, "/v1/status"))["privacy"]["led"] == "on"
    assert [e["event"] for e in (await _get(board, "/v1/audit"))["entries"]][-3:] == ["optout", "optout", "resume"]


async def test_api_optout_then_the_pause_runs_out(models_dir, vtest, tmp_path):
    c = await _client({"privacy": {"optout": {"pause_s": 1.0}}, "camera": {"pacing": "fast"}}, tmp_path)
    try:
        svc = c.svc
        await _until(lambda: len(svc.vectors) >= 5)
        r = await c.post("/v1/optout", headers=AUTH)
        body = await r.json()
        assert r.status == 200 and body["paused"] and body["source"] == "api" and body["purged"]["vectors"] >= 5
        assert (await c.post("/v1/optout")).status == 401  # signage holds a token
        assert len(svc.vectors) == 0
        await _until(lambda: not svc.privacy.paused, seconds=5)
        await _until(lambda: len(svc.vectors) >= 1)  # measuring again, fresh tokens only
        audit = (await _get(c, "/v1/audit"))["entries"]
        assert [(e["event"], e["source"]) for e in audit[-2:]] == [("optout", "api"), ("resume", "schedule")]
    finally:
        await c.close()


async def test_optout_latency_over_many_presses(models_dir, vtest, tmp_path):
    """100 presses of the mock button on a running pipeline (make bench does 1000): each one
    paused and purged within 250 ms, nothing served until the resume, the audit log one line
    per press."""
    c = await _client({"privacy": {"optout": {"pause_s": 600}}, "camera": {"pacing": "realtime"}}, tmp_path)
    svc = c.svc
    lat = []
    try:
        await _until(lambda: svc.pipeline.stats.frames_processed >= 5)
        for i in range(100):
            n = svc.privacy.optouts
            t0 = time.perf_counter()
            await asyncio.get_running_loop().run_in_executor(None, svc.privacy.signage.press, 0.0)
            await _until(lambda n=n: svc.privacy.optouts > n, seconds=2, step=0.001)
            lat.append((time.perf_counter() - t0) * 1000)
            assert len(svc.vectors) == 0 and not svc.pipeline.measuring
            if i % 10 == 0:
                assert (await _get(c, "/v1/vectors"))["vectors"] == []
            await svc.privacy.resume("api")
            await asyncio.sleep(0.03)  # a frame or so of measuring between presses
        p50, p99 = np.percentile(lat, [50, 99])
        print(f"\nopt-out press -> paused and purged: p50 {p50:.1f} ms, p99 {p99:.1f} ms over {len(lat)} presses")
        assert p99 < 250
        assert svc.pipeline.stats.state == "running"
    finally:
        await c.close()


async def test_nothing_older_than_the_retention_is_ever_served(models_dir, vtest, tmp_path):
    # retention runs on the monotonic clock (a wall-clock jump must not expire anything early):
    # both fake clocks advance 1 s per step while frames flow
    now = [1_800_000_000.0]
    mono = [time.monotonic()]
    c = await _client({"privacy": {"retention_s": 10}, "camera": {"pacing": "fast"}}, tmp_path, wall_clock=lambda: now[0],
                      clock=lambda: mono[0])
    try:
        svc = c.svc
        for step in range(40):
            await asyncio.sleep(0.05)
            now[0] += 1.0
            mono[0] += 1.0
            await asyncio.sleep(0.3)  # > one retention tick (0.25 s)
            got = (await _get(c, "/v1/vectors?limit=1000"))["vectors"]
            assert all(v["window_end"] >= now[0] - 10 - 1 for v in got), step
        assert svc.privacy.expired > 0
        held = svc.vectors.since(0, 10_000).records
        assert all(held["t_wall"] >= now[0] - 11) and all(held["t_mono"] >= mono[0] - 11)
    finally:
        await c.close()


async def test_closed_hours_drop_frames_before_detection(models_dir, vtest, tmp_path):
    c = await _client({"privacy": {"closed_hours": [{"start": "00:00", "end": "23:59"}, {"start": "23:59", "end": "00:00"}],
                                   "timezone": "UTC"}, "camera": {"pacing": "fast"}}, tmp_path)
    try:
        svc = c.svc
        await _until(lambda: svc.pipeline.stats.frames_closed >= 50)
        st = await _get(c, "/v1/status")
        assert st["privacy"]["closed_now"] is True
        assert st["frames"]["processed"] == 0 and st["people"]["frames_with_people"] == 0
        assert (await _get(c, "/v1/vectors"))["vectors"] == []
    finally:
        await c.close()


def test_people_in_an_excluded_zone_are_never_tracked(models_dir, shared_media):
    run = run_scene("staff_area")
    staff_frames = [t[t[:, 0] == 0] for t in run.truth]
    assert sum(len(s) for s in staff_frames) >= 90  # the staff member is in view (and the detector sees them)
    assert run.track_of(0) == []  # ...but never becomes a track
    shopper = run.track_of(1)
    assert shopper and run.vectors_of(shopper[0])
    assert {v.token for v in run.vectors} <= {v.token for tid in shopper for v in run.vectors_of(tid)} | {
        v.token for v in run.vectors if v.zone != -1}
    staff_zone = run.zone_names.index("staff-path")
    assert all(v.zone != staff_zone for v in run.vectors)
