"""Opt-out against resume, interleaved on purpose: a press, a timer and a long press can land while
another transition waits for the analysis thread. Whatever the order, the board ends where the
commands, applied one after the other in the order they came, would leave it, and the pause, the
pipeline, the LED and /health always agree.

The interleaving is driven, not hoped for: the analysis thread is held busy (a job queued on it
that waits for an event), so an opt-out stops exactly at its purge of the tracker until the test
lets it go, and the racing command runs in that gap."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from firmware.app import build_service
from tests.conftest import sim_config, until

TOKEN = "race-test-token-0123456789abcdef"


async def _service(tmp_path, pause_s: float):
    over = {"privacy": {"audit_log": str(tmp_path / "audit.jsonl"),
                        "optout": {"pause_s": pause_s, "button": {"resume": "long_press"}}},
            "camera": {"pacing": "fast"}}
    svc, _token = await build_service(sim_config(over), token_env={"CUECAM_API_TOKEN": TOKEN})
    await svc.start()
    await until(lambda: svc.pipeline.stats.frames_processed >= 2, 60)
    return svc


def _paused(svc) -> bool:
    return svc.privacy.paused


def _consistent(svc) -> None:
    paused = _paused(svc)
    assert svc.pipeline.measuring is (not paused), f"paused={paused} but measuring={svc.pipeline.measuring}"
    assert svc.privacy.signage.led_state == ("blinking" if paused else "on")
    ok, _reason = svc.health()
    assert ok
    assert (svc.privacy.paused_remaining() is not None) is paused


class _HeldWorker:
    """Keeps the analysis thread busy until released: a transition that needs it waits there."""

    def __init__(self, svc) -> None:
        self.release = threading.Event()
        self.job = svc.pipeline.run_on_worker(lambda: self.release.wait(30))

    async def let_go(self) -> None:
        self.release.set()
        await self.job


async def _settle(task: asyncio.Task | None = None, rounds: int = 50) -> None:
    """Let every ready callback run (the racing command goes as far as it can)."""
    for _ in range(rounds):
        if task is not None and task.done():
            return
        await asyncio.sleep(0)
    await asyncio.sleep(0.05)


@pytest.mark.parametrize("racer", ["api", "button"])
@pytest.mark.parametrize("already_paused", [False, True])
async def test_resume_while_an_optout_waits_for_the_worker(models_dir, vtest, tmp_path, already_paused, racer):
    """optout (in flight) then resume: applied in order, the board measures again."""
    svc = await _service(tmp_path, pause_s=600)
    try:
        if already_paused:
            await svc.privacy.optout("api")
            _consistent(svc)
        held = _HeldWorker(svc)
        press = asyncio.create_task(svc.privacy.optout("button"))
        await until(lambda: not svc.pipeline.measuring, 2, 0.001)  # the purge began
        await _settle()
        assert not press.done()  # it waits for the analysis thread
        resume = asyncio.create_task(svc.privacy.resume(racer))
        await _settle(resume)
        await held.let_go()
        await asyncio.wait_for(asyncio.gather(press, resume), 10)
        _consistent(svc)
        assert not _paused(svc) and svc.pipeline.measuring
        n = svc.pipeline.stats.frames_processed
        await until(lambda: svc.pipeline.stats.frames_processed > n, 10)
        entries = [e["event"] for e in svc.audit.read(10)]
        assert entries[-2:] == ["optout", "resume"]
    finally:
        await svc.stop()


@pytest.mark.parametrize("gap_s", [0.05, 0.3])
async def test_the_timer_of_a_pause_replaced_by_a_new_press_resumes_nothing(models_dir, vtest, tmp_path, gap_s):
    """A press while paused restarts the pause; the old pause's timer, running out while that
    press waits for the worker, must not end the new pause (nor leave it measuring)."""
    pause_s = 1.0  # the config's least
    svc = await _service(tmp_path, pause_s=pause_s)
    try:
        await svc.privacy.optout("api")
        held = _HeldWorker(svc)
        press = asyncio.create_task(svc.privacy.optout("button"))
        await until(lambda: press.done() or not svc.pipeline.measuring, 2, 0.001)
        await asyncio.sleep(pause_s + gap_s)  # the first pause's timer runs out in the gap
        await held.let_go()
        await asyncio.wait_for(press, 10)
        t_done = time.monotonic()
        _consistent(svc)
        assert _paused(svc), "the old timer ended the new pause"
        remaining = svc.privacy.paused_remaining()
        assert remaining is not None and remaining > pause_s / 2
        # the new pause runs its own course, then the board measures again
        await until(lambda: not _paused(svc), 5, 0.005)
        assert time.monotonic() - t_done >= pause_s * 0.9
        await asyncio.sleep(0.02)
        _consistent(svc)
    finally:
        await svc.stop()


async def test_many_random_interleavings_stay_consistent(models_dir, vtest, tmp_path):
    """Presses, API opt-outs and resumes fired in bursts of random order and spacing, with the
    worker held at random moments: after every burst the board is paused or measuring, never half."""
    import random

    svc = await _service(tmp_path, pause_s=600)
    rng = random.Random(1234)
    try:
        for burst in range(25):
            held = _HeldWorker(svc) if rng.random() < 0.6 else None
            tasks = []
            model_paused = _paused(svc)
            for _ in range(rng.randint(1, 5)):
                if rng.random() < 0.5:
                    tasks.append(asyncio.create_task(svc.privacy.optout(rng.choice(["api", "button"]))))
                    model_paused = True
                else:
                    tasks.append(asyncio.create_task(svc.privacy.resume(rng.choice(["api", "button"]))))
                    model_paused = False
                for _ in range(rng.randint(0, 6)):
                    await asyncio.sleep(0)
            if held is not None:
                await held.let_go()
            await asyncio.wait_for(asyncio.gather(*tasks), 10)
            _consistent(svc)
            assert _paused(svc) is model_paused, f"burst {burst}"
    finally:
        await svc.stop()


async def test_no_frame_detected_before_a_pause_reaches_the_tracker_after_it(models_dir, vtest, tmp_path):
    """Frames run in two stages (detector thread, then tracking on the analysis thread): a pause
    landing at any phase of a frame leaves the tracker and the signal engine empty once it has
    returned, and they stay empty until the resume. Swept over 60 pauses at random phases."""
    import random

    svc = await _service(tmp_path, pause_s=600)
    rng = random.Random(7)
    try:
        for i in range(60):
            n = svc.pipeline.stats.frames_processed
            await until(lambda n=n: svc.pipeline.stats.frames_processed > n, 10, 0.001)
            await asyncio.sleep(rng.random() * 0.03)  # somewhere in the next frame's detection or analysis
            await svc.privacy.optout("api")
            assert not svc.analyzer.tracker.tracks, f"pause {i}: tracks survived the purge"
            assert svc.analyzer.engine is None or not svc.analyzer.engine.states, f"pause {i}"
            await asyncio.sleep(0.02)
            assert not svc.analyzer.tracker.tracks and not svc.pipeline.measuring
            await svc.privacy.resume("api")
        assert svc.pipeline.stats.frames_discarded > 0
    finally:
        await svc.stop()


async def test_the_pipeline_stops_at_any_phase_of_a_frame(models_dir, vtest, tmp_path):
    """Stopping cancels the consumer wherever it waits (for a frame, for a frame's stages, for the
    next frame while one is analysed): every stop ends, swept over random phases of a live source."""
    import random

    rng = random.Random(11)
    over = {"privacy": {"audit_log": str(tmp_path / "audit.jsonl")}, "camera": {"pacing": "realtime"}}
    for i in range(20):
        svc, _token = await build_service(sim_config(over), token_env={"CUECAM_API_TOKEN": TOKEN})
        await svc.start()
        await until(lambda s=svc: s.pipeline.stats.frames_processed >= 1, 30, 0.005)
        await asyncio.sleep(rng.random() * 0.2)  # anywhere within the next two frames
        t0 = time.monotonic()
        await asyncio.wait_for(svc.stop(), 15)
        assert time.monotonic() - t0 < 15, f"stop {i}"
        assert svc.pipeline_task is not None and svc.pipeline_task.done()
