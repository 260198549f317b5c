"""Accelerator backends on real footage: the contract every detector keeps on the same frames of
vtest.avi (the CPU SSD on pixels, the AI Camera's network outputs through the IMX500 stand-in,
the Hailo stand-in), and the sim board running on the AI Camera stand-in end to end."""

from __future__ import annotations

import asyncio
from pathlib import Path

import cv2
import numpy as np
import pytest

from firmware.app import build_service
from firmware.camera.imx500 import Imx500Camera
from firmware.camera.imx500_fake import Imx500Rig, Recording, make_module
from firmware.config import Config, Imx500CameraConfig, InferenceConfig, LoadedConfig, load_config
from firmware.inference import Detections, Detector, Devices, create_detector
from firmware.inference.hailo_fake import HailoRig
from firmware.inference.hailo_fake import make_module as hailo_module
from firmware.models import load_manifest
from firmware.tracking.tracker import iou_matrix
from tests.conftest import ROOT, _merge
from tests.integration.test_process import _get, _start, _stop, _wait_url, _wait_vectors

N_FRAMES = 60
AICAM_CONFIG = ROOT / "board_configs" / "sim-aicam.yaml"


def _frames(vtest: Path, n: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(vtest))
    out = []
    for _ in range(n):
        ok, bgr = cap.read()
        assert ok
        out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    return out


def _cpu(models_dir: Path) -> Detector:
    return create_detector(InferenceConfig(), models_dir, load_manifest(models_dir / "manifest.yaml"))


async def _imx500_detections(models_dir: Path, vtest: Path, n: int) -> list[Detections]:
    """The AI Camera stand-in in lores mode (outputs and pixels of the same request), decoded by
    the IMX500 detector: what a board's detector thread sees."""
    det = create_detector(InferenceConfig(delegate="imx500", detector={"model": "imx500_ssd_mobilenetv2_fpnlite"}),
                          models_dir, load_manifest(models_dir / "manifest.yaml"))
    rig = Imx500Rig(paced=False, footage=vtest)
    cam = Imx500Camera(Imx500CameraConfig(type="imx500", mode="lores", size=[768, 576], lores_format="BGR888"),
                       network=Path("/usr/share/imx500-models/x.rpk"), devices_module=make_module(rig),
                       clock=rig.clock, monotonic_ns=rig.monotonic_ns)
    await cam.open()
    try:
        out = []
        for _ in range(n):
            f = await cam.read(5.0)
            assert f is not None and f.image is not None
            out.append(det.detect(f.image, f.outputs))  # the outputs win: no invoke on the pixels
    finally:
        await cam.close()
    return out


def _backends(models_dir: Path, vtest: Path) -> dict[str, list[Detections]]:
    frames = _frames(vtest, N_FRAMES)
    cpu = _cpu(models_dir)
    hailo = create_detector(InferenceConfig(delegate="hailo", detector={"model": "hailo_yolov8s_h8l"}), models_dir,
                            load_manifest(models_dir / "manifest.yaml"),
                            Devices(hailo=hailo_module(HailoRig(models_dir=models_dir))))
    try:
        return {"cpu-ssd": [cpu.detect(f) for f in frames],
                "imx500": asyncio.run(_imx500_detections(models_dir, vtest, N_FRAMES)),
                "hailo": [hailo.detect(f) for f in frames]}
    finally:
        hailo.close()


@pytest.fixture(scope="module")
def backends(models_dir, vtest) -> dict[str, list[Detections]]:
    return _backends(models_dir, vtest)


@pytest.mark.parametrize("name", ["cpu-ssd", "imx500", "hailo"])
def test_every_detector_keeps_the_detection_contract(backends, name):
    cfg = InferenceConfig().detector
    dets = backends[name]
    assert len(dets) == N_FRAMES
    for d in dets:
        b, s = d.boxes, d.scores
        assert b.dtype == np.float32 and s.dtype == np.float32 and b.shape == (len(s), 4)
        assert ((b >= 0) & (b <= 1)).all() and (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        assert (s >= cfg.score_threshold).all() and (np.diff(s) <= 0).all()  # down to the floor, best first
        assert len(s) <= cfg.max_detections
        # the shared plausibility filter: nobody wider than max_aspect times their height (in pixels)
        assert ((b[:, 2] - b[:, 0]) * 768 <= cfg.max_aspect * (b[:, 3] - b[:, 1]) * 576 + 1e-3).all()
        assert d.infer_ms >= 0
    # people on the plaza in every backend, and weak candidates below the tracker's high score too
    assert np.mean([d.above(0.5) for d in dets]) >= 3
    assert sum(len(d) - d.above(0.5) for d in dets) > 0


@pytest.mark.parametrize("name", ["imx500", "hailo"])
def test_accelerators_see_the_people_the_cpu_detector_sees(backends, name):
    """Same frames, same people: most confident CPU boxes have a box on the accelerator (scores near 0.5
    move a little with another resize on the way: the Hailo's 640 x 640 input, then the stand-in's 300 x 300)."""
    found = total = 0
    for a, b in zip(backends["cpu-ssd"], backends[name], strict=True):
        ca, cb = a.boxes[a.scores >= 0.5], b.boxes[b.scores >= 0.4]
        total += len(ca)
        if len(ca) and len(cb):
            found += int((iou_matrix(ca.astype(np.float64), cb.astype(np.float64)).max(axis=1) >= 0.5).sum())
    assert total > 100 and found / total >= 0.9


def _aicam(overrides: dict | None = None) -> LoadedConfig:
    loaded = load_config(AICAM_CONFIG)
    return LoadedConfig(Config.model_validate(_merge(loaded.config.model_dump(), overrides or {})), loaded.path)


async def _run_aicam():
    loaded = _aicam({"camera": {"fake_pacing": "fast"}})
    svc, _ = await build_service(loaded, token_env={"CUECAM_API_TOKEN": "x" * 20})
    rig = svc.pipeline.camera._module.rig
    rig.kpi_us = (5900, 1400)
    await svc.start()
    for _ in range(1200):  # bounded: 120 s
        if svc.pipeline.stats.frames_processed >= Recording.load().frames:
            break
        await asyncio.sleep(0.1)
    status = svc.status()
    await svc.stop()
    return svc, rig, status, svc.vectors.since(0, svc.vectors.capacity).records


@pytest.fixture(scope="module")
def aicam(models_dir, vtest):
    return asyncio.run(_run_aicam())


def test_the_sim_board_on_the_ai_camera_gives_the_same_kind_of_vectors(aicam):
    svc, _, _, recs = aicam
    assert svc.pipeline.stats.frames_processed >= 795 and svc.pipeline.stats.inference_errors == 0
    tokens = {t.decode() for t in recs["token"]}
    assert len(recs) >= 200 and len(tokens) >= 30  # as the CPU sim board on the same footage
    for key, lo in (("engagement", 0.0), ("approach", -1.0), ("satisfaction", -1.0)):
        v = recs[key][~np.isnan(recs[key])]
        assert len(v) and (v >= lo).all() and (v <= 1.0).all(), key
    assert np.allclose(recs["t_end"] - recs["t_start"], 2.0)  # the sensor's timeline: 2 s windows of footage
    zones = {svc.zone_names[z] for z in recs["zone"] if z >= 0}
    assert "walkway" in zones and "staff-path" not in zones


def test_metadata_mode_keeps_every_pixel_out_and_reports_the_sensors_timings(aicam):
    svc, rig, status, _ = aicam
    assert rig.pixel_reads == 0 and rig.metadata_reads >= 795  # no image was ever requested
    assert svc.analyzer.pose is None
    cam = status["camera"]
    assert cam["type"] == "imx500" and cam["imx500"]["pixels"] is False and cam["imx500"]["mode"] == "metadata"
    assert cam["imx500"]["kpi_ms"]["dnn"]["p50"] == 5.9 and cam["imx500"]["kpi_ms"]["dsp"]["p50"] == 1.4
    assert status["model"]["delegate"] == "imx500" and status["model"]["runtime"] == "imx500"
    assert status["health"]["ok"]


def test_the_ai_camera_sim_board_serves_as_a_process(models_dir, vtest):
    proc = _start("--config", str(AICAM_CONFIG), "--port", "0")
    try:
        _wait_vectors(url := _wait_url(proc))
        code, status = _get(url + "/v1/status")
        assert code == 200 and status["camera"]["imx500"]["frames_without_outputs"] == 0
        assert status["camera"]["imx500"]["inference_rate"] == 10.0
    finally:
        rc, err = _stop(proc)
    assert rc == 0, err


async def _hailo_board(tmp_path: Path, rig: HailoRig, **inference):
    """A Pi 5 + Hailo board (rpi5-hailo.yaml's inference section) on vtest.avi, its Hailo the stand-in."""
    from aiohttp.test_utils import TestClient, TestServer

    from firmware.http.app import build_app
    from tests.conftest import sim_config

    board = load_config(ROOT / "board_configs" / "rpi5-hailo.yaml").config.inference
    loaded = sim_config({
        "camera": {"pacing": "fast"}, "signals": {"pose": "off"},
        "inference": {"delegate": board.delegate, "detector": board.detector.model_dump(),
                      "fallback_model": board.fallback_model, **inference},
        "privacy": {"audit_log": str(tmp_path / "audit.jsonl"), "optout": {"pins": "none"}},
    })
    svc, token = await build_service(loaded, token_env={"CUECAM_API_TOKEN": "t" * 24},
                                     devices=Devices(hailo=hailo_module(rig)))
    c = TestClient(TestServer(build_app(svc, token), host="127.0.0.1"))
    await c.start_server()
    await svc.start()
    return svc, c


async def _until(cond, seconds: float = 60.0) -> None:
    from tests.conftest import until

    await until(cond, seconds, 0.02)


async def test_a_hailort_version_mismatch_is_on_health_with_both_versions_and_the_cpu_runs(models_dir, vtest,
                                                                                           tmp_path):
    rig = HailoRig(models_dir=models_dir, driver="4.18.0", library="4.19.0")
    svc, c = await _hailo_board(tmp_path, rig)
    try:
        await _until(lambda: svc.pipeline.stats.frames_processed >= 5)
        r = await c.get("/health")
        body = await r.json()
        assert r.status == 503 and body["status"] == "degraded"
        assert "driver 4.18.0, library 4.19.0" in body["reason"] and "running the CPU fallback ssd_mobilenet_v1" in body["reason"]
        status = await (await c.get("/v1/status", headers={"Authorization": "Bearer " + "t" * 24})).json()
        assert status["model"]["name"] == "ssd_mobilenet_v1" and status["model"]["on_fallback"] is True
        assert rig.opened == 0  # refused before the device was opened
        # the versions are put right (apt): the next retry of the Hailo takes the board back to it
        rig.library = "4.18.0"
        await svc.models.try_primary()
        await _until(lambda: svc.models.detector_name == "hailo_yolov8s_h8l")
        n = rig.runs
        await _until(lambda: rig.runs >= n + 5)
        assert (await c.get("/health")).status == 200
        status = await (await c.get("/v1/status", headers={"Authorization": "Bearer " + "t" * 24})).json()
        assert status["model"]["accelerator"] == {"hailort_driver": "4.18.0", "hailort_library": "4.18.0"}
    finally:
        await c.close()
        await svc.stop()
    assert rig.opened == rig.closed == 1  # the device let go at shutdown


async def test_a_hailo_failing_mid_run_switches_to_the_cpu_fallback(models_dir, vtest, tmp_path):
    rig = HailoRig(models_dir=models_dir)
    svc, c = await _hailo_board(tmp_path, rig)
    try:
        st = svc.pipeline.stats
        await _until(lambda: st.frames_processed >= 5)
        assert svc.models.detector_name == "hailo_yolov8s_h8l" and svc.health() == (True, None)
        rig.fail_runs = True  # the PCIe link goes down
        await _until(lambda: st.model_switches == 1)
        n = st.frames_processed
        await _until(lambda: st.frames_processed >= n + 5)  # on the CPU now
        body = await (await c.get("/health")).json()
        assert "HAILO_TIMEOUT" in body["reason"] and "running the CPU fallback" in body["reason"]
        assert rig.closed == 1  # the failed device was released
    finally:
        await c.close()
        await svc.stop()
