"""On-board tests for the accelerators: run on a Raspberry Pi with the AI Camera (IMX500) or a
Hailo AI Kit / HAT+ with `pytest -m hw tests/hw/test_accelerators.py`. Deselected by default;
each skips where its device or its packages are absent (docs/board.md says how to set a board up)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from firmware.camera.imx500 import Imx500Camera, Imx500Detector
from firmware.config import Imx500CameraConfig, InferenceConfig
from firmware.inference import create_detector
from firmware.models import DEFAULT_MANIFEST, load_manifest

pytestmark = pytest.mark.hw
MODELS = Path(__file__).resolve().parents[2] / "models"


def _imx500_network() -> Path:
    pytest.importorskip("picamera2.devices", reason="picamera2 only exists on Raspberry Pi OS")
    entry = load_manifest(DEFAULT_MANIFEST).models["imx500_ssd_mobilenetv2_fpnlite"]
    path = Path(str(entry.system_file))
    if not path.is_file():
        pytest.skip(f"{path} missing: sudo apt install imx500-all")
    if not any("imx500" in p.read_text(errors="replace") for p in Path("/sys/class/video4linux").glob("*/name")):
        pytest.skip("no AI Camera (IMX500) connected")
    return path


@pytest.mark.parametrize("mode", ["metadata", "lores"])
async def test_the_ai_camera_delivers_network_outputs_with_every_frame(mode):
    network = _imx500_network()
    cam = Imx500Camera(Imx500CameraConfig(type="imx500", mode=mode, size=[640, 480], capture_timeout_s=5.0),
                       network=network)
    det = create_detector(InferenceConfig(delegate="imx500", detector={"model": "imx500_ssd_mobilenetv2_fpnlite"}),
                          MODELS, load_manifest(DEFAULT_MANIFEST))
    assert isinstance(det, Imx500Detector)
    await cam.open()  # the first time the network firmware is uploaded: minutes
    try:
        t0 = time.monotonic()
        frames = [await cam.read(30.0) for _ in range(60)]
        elapsed = time.monotonic() - t0
    finally:
        await cam.close()
    assert all(f.outputs is not None for f in frames)
    assert all((f.image is None) == (mode == "metadata") for f in frames)
    assert np.all(np.diff([f.t_mono for f in frames]) > 0)
    rate = cam.inference_rate or 30.0
    assert elapsed < 60 / rate * 2 + 2  # near the network's inference rate
    for f in frames:
        d = det.detect(f.image, f.outputs)
        assert ((d.boxes >= 0) & (d.boxes <= 1)).all() and (d.scores >= 0.25).all()
    st = cam.status()["imx500"]
    assert st["kpi_ms"]["dnn"]["p50"] is not None and st["kpi_ms"]["dnn"]["p50"] > 0  # the sensor's own timings


def test_the_hailo_runs_the_hef_with_matching_hailort_versions(shared_media):
    import cv2

    from firmware.inference.detector_hailo import HailoDetector, _library_version, _read_driver_version

    pytest.importorskip("picamera2.devices", reason="picamera2 only exists on Raspberry Pi OS")
    if not Path("/dev/hailo0").exists():
        pytest.skip("no Hailo device (/dev/hailo0): AI Kit / AI HAT+ on a Pi 5")
    manifest = load_manifest(DEFAULT_MANIFEST)
    key = "hailo_yolov8s_h8" if "HAILO8L" not in _identify() else "hailo_yolov8s_h8l"
    if not Path(str(manifest.models[key].system_file)).is_file():
        pytest.skip("sudo apt install hailo-all")
    assert _read_driver_version() == _library_version(), "HailoRT driver and library differ: the board would fall back"
    det = create_detector(InferenceConfig(delegate="hailo", detector={"model": key}), MODELS, manifest)
    assert isinstance(det, HailoDetector)
    try:
        img = cv2.cvtColor(cv2.imread(str(shared_media / "test_couple.jpg")), cv2.COLOR_BGR2RGB)
        t0 = time.perf_counter()
        dets = [det.detect(img) for _ in range(20)]
        per_frame_ms = (time.perf_counter() - t0) * 1000 / 20
    finally:
        det.close()
    assert all(d.above(0.5) >= 2 for d in dets)  # the couple
    assert per_frame_ms < 100


def _identify() -> str:
    import subprocess

    try:
        return subprocess.run(["hailortcli", "fw-control", "identify"], capture_output=True, text=True,
                              timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
