"""On-board tests: run on a Raspberry Pi with a camera (and a Coral for the Edge TPU test) with
`pytest -m hw tests/hw`. They are deselected by default and skip where the hardware is absent."""

from __future__ import annotations

import time

import numpy as np
import pytest

from firmware.camera.picam import PicameraCamera
from firmware.config import PicameraConfig
from firmware.inference.runner import ModelRunner
from firmware.models import load_manifest, resolve_model

pytestmark = pytest.mark.hw


def _is_pi5() -> bool:
    from pathlib import Path

    model = Path("/proc/device-tree/model")
    return model.exists() and "Raspberry Pi 5" in model.read_text(errors="replace")


@pytest.mark.parametrize("lores_format", ["YUV420", "BGR888", "RGB888"])
async def test_picamera2_gives_rgb_lores_frames_at_the_frame_rate(lores_format):
    pytest.importorskip("picamera2", reason="picamera2 only exists on Raspberry Pi OS")
    if lores_format != "YUV420" and not _is_pi5():
        pytest.skip("the VC4 ISP (Pi 4, Zero 2 W) gives lores only as YUV420")
    cfg = PicameraConfig(type="picamera2", lores=[320, 240], lores_format=lores_format, framerate=10.0)
    cam = PicameraCamera(cfg)
    await cam.open()
    try:
        t0 = time.monotonic()
        frames = [await cam.read() for _ in range(20)]
        elapsed = time.monotonic() - t0
    finally:
        await cam.close()
    assert all(f.image.shape == (240, 320, 3) and f.image.dtype == np.uint8 for f in frames)
    assert [f.frame_id for f in frames] == list(range(1, 21))
    assert np.all(np.diff([f.t_mono for f in frames]) > 0)
    assert 1.0 <= elapsed <= 4.0  # ~2 s at 10 fps
    assert np.std(frames[-1].image) > 1.0  # a picture, not a blank buffer
    # frame times from SensorTimestamp: before the read returned, spaced by the frame interval
    gaps = np.diff([f.t_mono for f in frames])
    assert 0.05 < float(np.median(gaps)) < 0.15
    assert cam.untimed_frames == 0
    assert cam.sensor_mode is not None  # the widest field of view at 10 fps


async def test_picamera2_allocates_no_full_size_main_stream():
    pytest.importorskip("picamera2", reason="picamera2 only exists on Raspberry Pi OS")
    cam = PicameraCamera(PicameraConfig(type="picamera2", lores=[320, 240], framerate=10.0))
    await cam.open()
    try:
        config = cam._cam.camera_configuration()
    finally:
        await cam.close()
    assert tuple(config["main"]["size"]) == (320, 240) and config["main"]["format"] == "YUV420"


async def test_a_picamera2_capture_is_bounded():
    """capture_request(wait=...) on a stopped camera: the read raises within the bound, no thread stays blocked."""
    import threading

    pytest.importorskip("picamera2", reason="picamera2 only exists on Raspberry Pi OS")
    cam = PicameraCamera(PicameraConfig(type="picamera2", lores=[320, 240], framerate=10.0, capture_timeout_s=0.5))
    await cam.open()
    before = threading.active_count()
    try:
        cam._cam.stop()  # no more frames: as a wedged sensor
        t0 = time.monotonic()
        with pytest.raises(Exception):  # noqa: B017 - CameraError (timeout) or picamera2's own
            await cam.read(10.0)
        assert time.monotonic() - t0 < 3.0
    finally:
        await cam.close()
    assert threading.active_count() <= before


def test_edgetpu_runs_the_compiled_pose_model(models_dir):
    from firmware.inference.runner import EDGETPU_LIB

    ctypes = pytest.importorskip("ctypes")
    try:
        ctypes.CDLL(EDGETPU_LIB)
    except OSError:
        pytest.skip("no libedgetpu.so.1 on this board")
    manifest = load_manifest(models_dir / "manifest.yaml")
    runner = ModelRunner(resolve_model("movenet_lightning_edgetpu", models_dir, manifest), delegate="edgetpu")
    (kp,) = runner.run(np.zeros((192, 192, 3), np.uint8))
    assert kp.shape == (1, 1, 17, 3)


def test_the_pi_reports_its_soc_temperature_and_throttle_flags():
    from pathlib import Path

    from firmware.config import ThermalConfig
    from firmware.thermal import create_sensor

    cfg = ThermalConfig(sensor="auto")
    if not Path(cfg.temp_path).exists():
        pytest.skip(f"{cfg.temp_path} does not exist: not a Raspberry Pi")
    reading = create_sensor(ThermalConfig(sensor="sysfs")).read()
    assert reading is not None and reading.temp_c is not None and 10.0 < reading.temp_c < 100.0
    if Path(cfg.throttled_path).exists():
        assert reading.throttled is not None and reading.throttled >= 0


async def test_a_picamera2_read_recovers_after_close_and_reopen():
    pytest.importorskip("picamera2", reason="picamera2 only exists on Raspberry Pi OS")
    cam = PicameraCamera(PicameraConfig(type="picamera2", lores=[320, 240], framerate=10.0))
    for _ in range(3):  # what the pipeline does after a camera fault
        await cam.open()
        try:
            frame = await cam.read(2.0)
        finally:
            await cam.close()
        assert frame is not None and frame.image.shape == (240, 320, 3)
