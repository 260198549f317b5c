"""Boards boot without an RTC: the wall clock jumps when NTP syncs. Retention, aggregate windows,
the opt-out pause and cursors run on the monotonic clock, so a jump of +-1 h mid-run loses,
duplicates or expires nothing. The real pipeline on vtest.avi, the real API on loopback."""

from __future__ import annotations

import asyncio
import time

from aiohttp.test_utils import TestClient, TestServer

from firmware.app import build_service
from firmware.http.app import build_app
from tests.conftest import sim_config, until

TOKEN = "clock-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}



async def _until(cond, seconds: float = 30.0, step: float = 0.02) -> None:
    await until(cond, seconds, step)


async def test_a_wall_clock_jump_of_plus_and_minus_one_hour_loses_duplicates_and_expires_nothing(models_dir, vtest,
                                                                                                tmp_path):
    offset = [0.0]
    loaded = sim_config({"camera": {"pacing": "fast"}, "signals": {"pose": "off"}, "thermal": {"sensor": "none"},
                         "privacy": {"retention_s": 30, "audit_log": str(tmp_path / "audit.jsonl"),
                                     "optout": {"pins": "none", "pause_s": 600}}})
    svc, token = await build_service(loaded, token_env={"CUECAM_API_TOKEN": TOKEN},
                                     wall_clock=lambda: time.time() + offset[0])
    async with TestClient(TestServer(build_app(svc, token), host="127.0.0.1")) as c:
        seen: list[dict] = []
        cursor = 0

        async def drain() -> None:
            nonlocal cursor
            while True:
                body = await (await c.get(f"/v1/vectors?since={cursor}&limit=1000", headers=AUTH)).json()
                assert body["lost"] == 0
                seen.extend(body["vectors"])
                cursor = body["cursor"]
                if not body["more"]:
                    return

        st = svc.pipeline.stats
        marks = []
        for jump in (0.0, +3600.0, -3600.0):  # now, 1 h ahead, 1 h behind real time
            offset[0] = jump
            n0 = st.vectors
            await _until(lambda n0=n0: st.vectors >= n0 + 15)
            await drain()
            svc.expire()  # a retention pass right after the jump, as the 0.25 s tick does
            marks.append(len(seen))
            # /v1/aggregates' window is on the monotonic clock: every vector is still in the last 60 s
            now = svc.now()
            assert len(svc.vectors.between(now - 60, now + 1, 10_000, field="t_mono").records) == st.vectors
            agg = await (await c.get("/v1/aggregates?window=60", headers=AUTH)).json()
            assert abs(agg["until"] - (time.time() + jump)) < 5
        assert svc.expired == 0
        seqs = [v["seq"] for v in seen]
        assert seqs == list(range(1, len(seen) + 1))  # no gap, no repeat
        assert len(seen) == st.vectors == len(svc.vectors)
        assert len({(v["token"], v["window_start"]) for v in seen}) == len(seen)
        # the vectors' timestamps follow the wall clock as it is (for people reading them)...
        t_real = time.time()
        assert seen[marks[0]]["window_end"] > t_real + 3000  # a window closed during the +1 h spell
        assert seen[-1]["window_end"] < t_real - 3000  # and one during the -1 h spell
        # ...and the opt-out pause runs on the monotonic clock
        await svc.optout("api")
        before = svc.paused_remaining()
        offset[0] = 7200.0
        await asyncio.sleep(0.3)  # retention ticks meanwhile
        after = svc.paused_remaining()
        assert before is not None and after is not None and 0 < before - after < 1.0
        assert svc.expired == 0
