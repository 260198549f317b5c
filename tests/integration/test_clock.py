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
            svc.privacy.expire()  # a retention pass right after the jump, as the 0.25 s tick does
            marks.append(len(seen))
            # /v1/aggregates' window is on the monotonic clock: every vector is still in the last 60 s
            now = svc.now()
            assert len(svc.vectors.between(now - 60, now + 1, 10_000, field="t_mono").records) == st.vectors
            agg = await (await c.get("/v1/aggregates?window=60", headers=AUTH)).json()
            assert abs(agg["until"] - (time.time() + jump)) < 5
        assert svc.privacy.expired == 0
        seqs = [v["seq"] for v in seen]
        assert seqs == list(range(1, len(seen) + 1))  # no gap, no repeat
        assert len(seen) == st.vectors == len(svc.vectors)
        assert len({(v["token"], v["window_start"]) for v in seen}) == len(seen)
        # the vectors' timestamps follow the wall clock as it is (for people reading them)...
        t_real = time.time()
        assert seen[marks[0]]["window_end"] > t_real + 3000  # a window closed during the +1 h spell
        assert seen[-1]["window_end"] < t_real - 3000  # and one during the -1 h spell
        # ...and the opt-out pause runs on the monotonic clock
        await svc.privacy.optout("api")
        before = svc.privacy.paused_remaining()
        offset[0] = 7200.0
        await asyncio.sleep(0.3)  # retention ticks meanwhile
        after = svc.privacy.paused_remaining()
        assert before is not None and after is not None and 0 < before - after < 1.0
        assert svc.privacy.expired == 0


async def test_an_optout_look_back_after_a_wall_clock_jump_names_exactly_the_purged_vectors(models_dir, vtest,
                                                                                             tmp_path):
    # the gateway forgets what the board purged by the seq range in /v1/vectors' purges, so a wall
    # clock set back an hour between the vectors and the press shifts nothing
    offset = [0.0]
    loaded = sim_config({"camera": {"pacing": "fast"}, "signals": {"pose": "off"}, "thermal": {"sensor": "none"},
                         "privacy": {"audit_log": str(tmp_path / "audit.jsonl"),
                                     "optout": {"pins": "none", "pause_s": 600, "lookback_s": 2.0}}})
    svc, token = await build_service(loaded, token_env={"CUECAM_API_TOKEN": TOKEN},
                                     wall_clock=lambda: time.time() + offset[0])
    async with TestClient(TestServer(build_app(svc, token), host="127.0.0.1")) as c:
        first_mono: list[float] = []

        def old_and_new() -> bool:
            held = svc.vectors.between(0, svc.now() + 1, 10_000, field="t_mono").records
            if len(held) and not first_mono:
                first_mono.append(float(held["t_mono"][0]))
            return bool(first_mono) and svc.now() - first_mono[0] > 4.0 and \
                int(((held["t_mono"] >= svc.now() - 1.0)).sum()) >= 3
        await _until(old_and_new)
        offset[0] = -3600.0  # NTP sets the clock back just before the press
        before = {int(s) for s in svc.vectors.between(0, svc.now() + 1, 10_000, field="t_mono").records["seq"]}
        await svc.privacy.optout("api")
        body = await (await c.get("/v1/vectors?since=0&limit=1000", headers=AUTH)).json()
    after = {v["seq"] for v in body["vectors"]}
    (purge,) = body["purges"]
    lo, hi = purge["seq_from"], purge["seq_to"]
    purged = before - after
    assert purged and after, "some vectors purged by the look-back, older ones kept"
    assert purged == {s for s in before if lo <= s <= hi}, "the seq range names exactly what was purged"
    assert not [s for s in after if lo <= s <= hi] and max(after) < lo <= min(purged)
    assert svc.privacy.last_optout["purged"]["vectors"] == hi - lo + 1  # a window closing during the pause counts too
    # the wall-clock span for people still reads the clock as it was set
    assert purge["t"] < time.time() - 3000
