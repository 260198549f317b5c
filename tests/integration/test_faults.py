"""Faults a board really has: the camera raising, hanging or returning garbage or short frames;
models missing, corrupt, of the wrong signature or on an accelerator that is gone. The real
pipeline, the real SSD model and the real aiohttp server on loopback; the camera faults come
from firmware.camera.faults.FaultyCamera wrapped around the real synthetic camera."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import threading
from pathlib import Path

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from firmware.app import Service, build_service
from firmware.camera import create_camera
from firmware.camera.faults import FAULT_KINDS, FaultyCamera
from firmware.http.app import build_app
from firmware.model_manager import load_models
from tests.conftest import MODELS_DIR, sim_config, until

TOKEN = "faults-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FAULTS = 100


def _config(tmp_path: Path, **over):
    base = {
        "camera": {"type": "synthetic", "size": [320, 240], "people": 2, "pacing": "fast"},
        "signals": {"pose": "off"},
        "privacy": {"audit_log": str(tmp_path / "audit.jsonl"), "optout": {"pins": "none"}},
        "health": {"camera_timeout_s": 0.15, "backoff_s": 0.001, "backoff_max_s": 0.004, "stall_s": 5.0},
        "thermal": {"sensor": "none"},
    }
    for k, v in over.items():
        replace = k == "camera" and v.get("type", base[k]["type"]) != base[k]["type"]
        base[k] = v if replace else {**base.get(k, {}), **v}
    return sim_config(base)


def _service(loaded, plan) -> tuple[Service, FaultyCamera]:
    models = load_models(loaded)
    assert models.problem is None
    cam = FaultyCamera(create_camera(loaded), plan, hang_max_s=30.0)
    return Service(loaded, camera=cam, models=models), cam



async def _until(cond, seconds: float = 60.0, step: float = 0.01) -> None:
    await until(cond, seconds, step)


def _resources() -> tuple[int, int, int]:
    return threading.active_count(), len(os.listdir("/proc/self/fd")), len(asyncio.all_tasks())


@pytest.mark.parametrize("kind", FAULT_KINDS)
async def test_each_camera_fault_kind_100_times_recovers_every_time_and_leaks_nothing(models_dir, tmp_path, kind):
    armed = {"on": False, "left": FAULTS}

    def plan(n: int):
        if armed["on"] and armed["left"] > 0 and n % 2 == 0:  # every other read, so a frame follows each fault
            armed["left"] -= 1
            return kind
        return None

    svc, cam = _service(_config(tmp_path), plan)
    await cam.open()
    await svc.start()
    try:
        st = svc.pipeline.stats
        await _until(lambda: st.frames_processed >= 5)
        before = _resources()
        armed["on"] = True
        await _until(lambda: armed["left"] == 0 and st.state == "running" and st.camera_recoveries >= FAULTS)
        processed = st.frames_processed
        await _until(lambda: st.frames_processed >= processed + 5)
        assert cam.injected[kind] == FAULTS
        expected_kind = {"raise": "read", "hang": "hang", "garbage": "frame", "short": "frame"}[kind]
        assert st.camera_faults.get(expected_kind, 0) >= FAULTS
        assert st.camera_recoveries == st.camera_failures >= FAULTS
        assert st.camera_restarts == st.camera_failures
        assert svc.health() == (True, None)
        # a short-lived task (a retention tick, an audit write) may be running at any one reading, and
        # an earlier test's leftovers may be closed meanwhile; a leak stays: no count may end above
        # where it was, within 5 s
        def settled() -> bool:
            return all(a <= b for a, b in zip(_resources(), before, strict=True))

        with contextlib.suppress(AssertionError):
            await _until(settled, 5.0, 0.05)
        after = _resources()
        print(f"\ncamera fault {kind}: injected {cam.injected[kind]}, recoveries {st.camera_recoveries}, "
              f"threads/fds/tasks before {before} after {after}")
        assert all(a <= b for a, b in zip(after, before, strict=True)), (before, after)
    finally:
        t = asyncio.create_task(svc.stop())
        done, _ = await asyncio.wait({t}, timeout=15)
        if not done:
            for task in asyncio.all_tasks():
                task.print_stack()
            raise AssertionError("stop hung")


async def test_health_is_degraded_with_the_reason_while_the_camera_restarts_then_ok(models_dir, tmp_path):
    failing = {"on": False}
    loaded = _config(tmp_path, health={"backoff_s": 0.01, "backoff_max_s": 0.08})
    svc, cam = _service(loaded, lambda n: "raise" if failing["on"] else None)
    await cam.open()
    server = TestServer(build_app(svc, _token()), host="127.0.0.1")
    async with TestClient(server) as c:
        st = svc.pipeline.stats
        await _until(lambda: st.frames_processed >= 3)
        assert (await c.get("/health")).status == 200
        failing["on"] = True
        await _until(lambda: st.camera_failures >= 8)
        r = await c.get("/health")
        body = await r.json()
        assert r.status == 503 and body["status"] == "degraded"
        assert body["reason"].startswith("camera: ") and "injected fault" in body["reason"] and "restarting" in body["reason"]
        assert st.next_restart_s == pytest.approx(0.08)  # doubled from 0.01 and capped
        status = await (await c.get("/v1/status", headers=AUTH)).json()
        assert status["camera"]["state"] == "restarting" and status["camera"]["failures"] >= 8
        failing["on"] = False
        await _until(lambda: st.state == "running" and svc.health()[0])
        body = await (await c.get("/health")).json()
        assert body["status"] == "ok" and body["reason"] is None
        metrics = await (await c.get("/metrics", headers=AUTH)).text()
        assert "cuecam_camera_failures_total" in metrics and "cuecam_camera_restarts_total" in metrics


def _token():
    from firmware.http.auth import Token

    return Token(TOKEN, "test")


# -- models -------------------------------------------------------------------------------------
def _models_copy(tmp_path: Path) -> Path:
    d = tmp_path / "models"
    shutil.copytree(MODELS_DIR, d)
    return d


async def _degraded_client(tmp_path: Path, models: Path, **over) -> TestClient:
    loaded = _config(tmp_path, inference={"models_dir": str(models), **over.pop("inference", {})}, **over)
    svc, token = await build_service(loaded, token_env={"CUECAM_API_TOKEN": TOKEN})
    c = TestClient(TestServer(build_app(svc, token), host="127.0.0.1"))
    await c.start_server()
    c.svc = svc  # type: ignore[attr-defined]
    return c


def _break_missing(models: Path) -> str:
    (models / "coco_ssd_mobilenet_v1_1.0_quant_2018_06_29.tflite").unlink()
    return ": missing; get it from the shared assets"


def _break_corrupt(models: Path) -> str:
    f = models / "coco_ssd_mobilenet_v1_1.0_quant_2018_06_29.tflite"
    data = bytearray(f.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = os.urandom(64)
    f.write_bytes(bytes(data))
    return "sha256"


def _break_signature(models: Path) -> str:
    # the detector's manifest entry points at the MoveNet file (with its real checksum): the
    # file verifies, but its input and outputs are not the SSD's
    m = yaml.safe_load((models / "manifest.yaml").read_text())
    m["models"]["ssd_mobilenet_v1"]["file"] = "movenet_single_pose_lightning_ptq.tflite"
    (models / "manifest.yaml").write_text(yaml.safe_dump(m))
    return "input is [1, 192, 192, 3]"


@pytest.mark.parametrize("breaker", [_break_missing, _break_corrupt, _break_signature], ids=["missing", "corrupt", "signature"])
async def test_a_bad_model_leaves_the_api_up_and_degraded_with_the_reason(models_dir, tmp_path, breaker):
    models = _models_copy(tmp_path)
    expect = breaker(models)
    c = await _degraded_client(tmp_path, models)
    try:
        svc = c.svc
        r = await c.get("/health")
        body = await r.json()
        assert r.status == 503 and body["status"] == "degraded"
        assert body["reason"].startswith("model: detector ssd_mobilenet_v1") and expect in body["reason"]
        assert "no inference.fallback_model configured" in body["reason"]
        status = await (await c.get("/v1/status", headers=AUTH)).json()
        assert status["model"]["name"] is None and expect in status["model"]["problem"]
        assert status["systemd"]["alive"] is True  # degraded on purpose: no watchdog restart loop
        assert (await c.get("/v1/vectors", headers=AUTH)).status == 200
        assert (await c.get("/metrics", headers=AUTH)).status == 200
        assert svc.pipeline.stats.frames_processed == 0
    finally:
        await c.close()


async def test_edge_tpu_that_will_not_load_switches_to_the_cpu_fallback(models_dir, tmp_path):
    c = await _degraded_client(tmp_path, MODELS_DIR, inference={"delegate": "edgetpu", "fallback_model": "ssd_mobilenet_v1"})
    try:
        svc = c.svc
        await _until(lambda: svc.pipeline.stats.frames_processed >= 3)
        body = await (await c.get("/health")).json()
        assert body["status"] == "degraded" and "libedgetpu.so.1" in body["reason"]
        assert "running the CPU fallback ssd_mobilenet_v1" in body["reason"]
        status = await (await c.get("/v1/status", headers=AUTH)).json()
        assert status["model"]["delegate"] == "cpu" and status["model"]["name"] == "ssd_mobilenet_v1"
    finally:
        await c.close()


class _Unplugged:
    """The interpreter of an Edge TPU that was pulled out: every invoke raises, as libedgetpu does."""

    def __init__(self, interp) -> None:
        self._interp = interp

    def invoke(self) -> None:
        raise RuntimeError("Failed to invoke: USB transfer error 2 [LibUsbDataOutCallback]")

    def __getattr__(self, name):
        return getattr(self._interp, name)


@pytest.mark.parametrize("fallback", [True, False], ids=["fallback", "no-fallback"])
async def test_an_accelerator_dying_mid_run_switches_to_the_fallback_or_degrades(models_dir, tmp_path, fallback):
    inf = {"fallback_model": "ssd_mobilenet_v1"} if fallback else {}
    c = await _degraded_client(tmp_path, MODELS_DIR, inference=inf)
    try:
        svc = c.svc
        st = svc.pipeline.stats
        await _until(lambda: st.frames_processed >= 3)
        assert svc.health() == (True, None)
        dead = svc.models.detector
        dead.runner._interp = _Unplugged(dead.runner._interp)  # unplugged mid-run
        if fallback:
            await _until(lambda: st.model_switches == 1)
            n = st.frames_processed
            await _until(lambda: st.frames_processed >= n + 3)
            assert svc.models.detector is not dead and st.inference_errors == 3
            reason = (await (await c.get("/health")).json())["reason"]
            assert "failed 3 invokes in a row" in reason and "USB transfer error" in reason
            assert "running the CPU fallback ssd_mobilenet_v1" in reason
        else:
            await _until(lambda: st.state == "error")
            r = await c.get("/health")
            reason = (await r.json())["reason"]
            assert r.status == 503 and reason.startswith("model: detector ssd_mobilenet_v1 failed 3 invokes in a row")
            assert "no inference.fallback_model configured" in reason
            assert svc.view.alive()[0]  # no crash loop: the API stays up, the watchdog stays fed
            assert (await c.get("/v1/status", headers=AUTH)).status == 200
    finally:
        await c.close()


async def test_after_a_fallback_the_board_goes_back_to_the_configured_detector_once_it_works(models_dir, tmp_path):
    # the Edge TPU's USB glitch is over (here: the "unplugged" interpreter is gone once the
    # configured model is loaded afresh): no restart needed to leave the CPU fallback
    c = await _degraded_client(tmp_path, MODELS_DIR, inference={"fallback_model": "ssd_mobilenet_v1",
                                                                "retry_primary_s": 1.5})
    try:
        svc = c.svc
        st = svc.pipeline.stats
        await _until(lambda: st.frames_processed >= 3)
        dead = svc.models.detector
        dead.runner._interp = _Unplugged(dead.runner._interp)
        await _until(lambda: st.model_switches == 1)
        fallback = svc.models.detector
        assert svc.models.on_fallback and "running the CPU fallback" in (await (await c.get("/health")).json())["reason"]
        await _until(lambda: st.model_switches == 2, seconds=30)
        assert not svc.models.on_fallback and svc.models.detector not in (dead, fallback) and svc.models.problem is None
        n = st.frames_processed
        await _until(lambda: st.frames_processed >= n + 3)
        assert (await (await c.get("/health")).json())["status"] == "ok"
        model = (await (await c.get("/v1/status", headers=AUTH)).json())["model"]
        assert model["on_fallback"] is False and model["primary_tries"] >= 1 and model["problem"] is None
        assert model["switches"] == 2
    finally:
        await c.close()


async def test_an_edge_tpu_still_missing_keeps_the_fallback_and_says_why(models_dir, tmp_path):
    c = await _degraded_client(tmp_path, MODELS_DIR, inference={"delegate": "edgetpu", "fallback_model": "ssd_mobilenet_v1",
                                                                "retry_primary_s": 0.2})
    try:
        svc = c.svc
        st = svc.pipeline.stats
        await _until(lambda: svc.models.primary_tries >= 3, seconds=30)
        n = st.frames_processed
        await _until(lambda: st.frames_processed >= n + 3)  # analysis goes on between the tries
        model = (await (await c.get("/v1/status", headers=AUTH)).json())["model"]
        assert model["on_fallback"] is True and model["delegate"] == "cpu" and model["switches"] == 0
        assert "libedgetpu.so.1" in model["primary_error"]
        assert "running the CPU fallback" in (await (await c.get("/health")).json())["reason"]
    finally:
        await c.close()


async def test_a_board_camera_missing_at_start_serves_degraded_and_is_retried_with_backoff(models_dir, tmp_path):
    # picamera2 does not exist here: exactly what a board with a broken install or no camera sees
    loaded = _config(tmp_path, camera={"type": "picamera2"}, health={"backoff_s": 0.01, "backoff_max_s": 0.04})
    svc, token = await build_service(loaded, token_env={"CUECAM_API_TOKEN": TOKEN})
    async with TestClient(TestServer(build_app(svc, token), host="127.0.0.1")) as c:
        st = svc.pipeline.stats
        await _until(lambda: st.camera_failures >= 5)
        r = await c.get("/health")
        reason = (await r.json())["reason"]
        assert r.status == 503 and reason.startswith("camera: ") and "picamera2 is not importable" in reason
        assert st.state == "restarting" and st.camera_faults["open"] == st.camera_failures
        assert st.next_restart_s == pytest.approx(0.04)
        status = await (await c.get("/v1/status", headers=AUTH)).json()
        assert status["camera"]["state"] == "restarting" and status["camera"]["faults"]["open"] >= 5


async def test_a_camera_that_comes_back_after_failed_opens_recovers(models_dir, tmp_path):
    from firmware.errors import CameraError

    loaded = _config(tmp_path)
    models = load_models(loaded)
    cam = FaultyCamera(create_camera(loaded), {}, open_failures=4)
    svc = Service(loaded, camera=cam, models=models)
    svc.pipeline.open_error = CameraError("no camera 0 found", kind="open")  # as build_service hands it over
    await svc.start()
    try:
        st = svc.pipeline.stats
        await _until(lambda: st.frames_processed >= 3)
        assert st.camera_faults == {"open": 4} and st.camera_restarts == 1 and st.camera_recoveries == 1
        assert svc.health() == (True, None)
    finally:
        await svc.stop()
