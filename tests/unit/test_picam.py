"""The picamera2 backend against the shipped stand-in (firmware/camera/picam_fake.py): no colour
conversion for BGR888, no full-size main stream, the sensor mode chosen for field of view, a
bounded capture that leaves no thread behind, frame times from SensorTimestamp. The same checks
against a real camera are in tests/hw/test_board.py."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from firmware.camera import picam as picam_mod
from firmware.camera.picam import PicameraCamera, choose_sensor_mode
from firmware.camera.picam_fake import IMX219_MODES, Rig, make_module
from firmware.config import PicameraConfig
from firmware.errors import CameraError


def _cfg(**kw) -> PicameraConfig:
    return PicameraConfig(type="picamera2", **{"lores": [320, 240], "framerate": 30.0, **kw})


@pytest.mark.parametrize(("platform", "fmt"), [("pisp", "BGR888"), ("pisp", "RGB888"), ("pisp", "YUV420"),
                                              ("vc4", "YUV420")])
async def test_frames_are_the_scene_in_rgb_for_every_lores_format(platform, fmt):
    rig = Rig(platform=platform)
    cam = PicameraCamera(_cfg(lores_format=fmt), picamera2_module=make_module(rig))
    await cam.open()
    try:
        frame = await cam.read()
    finally:
        await cam.close()
    assert frame is not None and frame.image.shape == (240, 320, 3) and frame.image.dtype == np.uint8
    want = rig.pattern(320, 240, 0)
    tol = 0 if fmt != "YUV420" else 12  # I420 subsamples chroma
    assert np.abs(frame.image.astype(int) - want.astype(int)).mean() <= max(tol / 4, 0.01)
    assert np.abs(frame.image.astype(int) - want.astype(int)).max() <= (0 if fmt != "YUV420" else 80)
    assert rig.unreleased == 0 and rig.open_cameras == 0


async def test_bgr888_is_handed_over_without_any_conversion(monkeypatch):
    """BGR888 is R, G, B in memory: no cvtColor, no copy beyond the request's own."""
    import types

    calls = []
    real = picam_mod.cv2
    spy = types.SimpleNamespace(**{k: getattr(real, k) for k in dir(real) if not k.startswith("__")})
    spy.cvtColor = lambda *a, **k: calls.append(a[1]) or real.cvtColor(*a, **k)
    monkeypatch.setattr(picam_mod, "cv2", spy)  # the backend's own conversions only (the fake makes YUV with cv2)
    cam = PicameraCamera(_cfg(lores_format="BGR888"), picamera2_module=make_module(Rig(platform="pisp")))
    await cam.open()
    try:
        frames = [await cam.read() for _ in range(5)]
    finally:
        await cam.close()
    assert calls == [] and all(f is not None for f in frames)


async def test_no_full_size_main_stream_and_the_widest_sensor_mode():
    rig = Rig(platform="vc4")
    cam = PicameraCamera(_cfg(lores=[640, 480], framerate=30.0), picamera2_module=make_module(rig))
    await cam.open()
    await cam.close()
    (config,) = rig.configs
    assert config["main"] == {"size": (640, 480), "format": "YUV420"}  # as small as lores may be: never read
    assert config["lores"] == {"size": (640, 480), "format": "YUV420"}
    assert config["display"] is None and config["encode"] is None
    # IMX219: 1640x1232 is the full pixel array binned 2x2 (640x480 is a crop, 3280x2464 too slow for 30 fps)
    assert config["sensor"] == {"output_size": (1640, 1232), "bit_depth": 10}


def test_sensor_mode_choice_sweeps_frame_rates_and_sizes():
    for fps in (5.0, 10.0, 15.0, 21.0, 30.0, 40.0, 47.0, 60.0, 103.0):
        for lores in ((320, 240), (640, 480), (1280, 960)):
            mode = choose_sensor_mode(IMX219_MODES, lores, fps)
            usable = [m for m in IMX219_MODES if m["fps"] >= fps and m["size"][0] >= lores[0] and m["size"][1] >= lores[1]]
            if not usable:
                assert mode is None
                continue
            assert mode is not None and mode["fps"] >= fps
            widest = max(m["crop_limits"][2] * m["crop_limits"][3] for m in usable)
            assert mode["crop_limits"][2] * mode["crop_limits"][3] == widest  # no narrower view than needed
    assert choose_sensor_mode(IMX219_MODES, (320, 240), 10.0)["size"] == (1640, 1232)  # binned, not 3280x2464


async def test_a_named_sensor_size_is_asked_for():
    rig = Rig(platform="pisp")
    cam = PicameraCamera(_cfg(sensor_size=[1920, 1080], lores_format="BGR888"), picamera2_module=make_module(rig))
    await cam.open()
    await cam.close()
    assert rig.configs[0]["sensor"] == {"output_size": (1920, 1080)}


async def test_vc4_refuses_an_rgb_lores_stream_as_a_camera_error():
    """What the config check prevents: the VC4 ISP has no RGB lores (the fake says so as picamera2 does)."""
    cam = PicameraCamera(_cfg(lores_format="BGR888"), picamera2_module=make_module(Rig(platform="vc4")))
    with pytest.raises(CameraError, match="lores stream must be YUV"):
        await cam.open()


async def test_a_wedged_sensor_times_out_within_the_bound_and_leaks_no_thread():
    rig = Rig(platform="pisp")
    mod = make_module(rig)
    cam = PicameraCamera(_cfg(lores_format="BGR888", capture_timeout_s=0.1), picamera2_module=mod)
    await cam.open()
    before = threading.active_count()
    try:
        assert await cam.read(5.0) is not None
        rig.wedged = True
        for _ in range(20):  # as the pipeline does: a fault, close, reopen, again
            t0 = time.monotonic()
            with pytest.raises(CameraError) as err:
                await cam.read(5.0)  # the pipeline's own limit is far longer: the capture bound fires first
            assert err.value.kind == "hang" and time.monotonic() - t0 < 1.0
            await cam.close()
            await cam.open()
        assert threading.active_count() <= before + 1
        rig.wedged = False
        assert await cam.read(5.0) is not None
    finally:
        await cam.close()
    assert rig.open_cameras == 0 and rig.unreleased == 0


@pytest.mark.parametrize("readout_s", [0.0, 0.005, 0.03, 0.2, 1.5])
async def test_frame_time_is_the_sensor_timestamp_on_the_boards_clock(readout_s):
    offset = 12345.0  # the board's monotonic clock need not be time.monotonic()
    rig = Rig(platform="pisp", readout_s=readout_s)
    cam = PicameraCamera(_cfg(lores_format="BGR888"), picamera2_module=make_module(rig),
                         clock=lambda: time.monotonic() + offset)
    await cam.open()
    try:
        t_before = time.monotonic() + offset
        frame = await cam.read()
        t_after = time.monotonic() + offset
    finally:
        await cam.close()
    assert frame is not None
    # the frame was read out readout_s before picamera2 handed the request over
    assert t_before - readout_s - 0.05 <= frame.t_mono <= t_after - readout_s + 0.001
    assert cam.untimed_frames == 0


async def test_a_frame_without_a_timestamp_is_stamped_on_arrival():
    rig = Rig(platform="pisp", timestamps=False)
    cam = PicameraCamera(_cfg(lores_format="BGR888"), picamera2_module=make_module(rig))
    await cam.open()
    try:
        t0 = time.monotonic()
        frame = await cam.read()
    finally:
        await cam.close()
    assert frame is not None and t0 <= frame.t_mono <= time.monotonic() and cam.untimed_frames == 1


async def test_frames_keep_coming_at_the_frame_rate():
    cam = PicameraCamera(_cfg(lores_format="BGR888", framerate=20.0), picamera2_module=make_module(Rig("pisp")))
    await cam.open()
    try:
        t0 = time.monotonic()
        frames = [await cam.read() for _ in range(10)]
        elapsed = time.monotonic() - t0
    finally:
        await cam.close()
    assert [f.frame_id for f in frames] == list(range(1, 11))
    assert np.all(np.diff([f.t_mono for f in frames]) > 0)
    assert 0.35 <= elapsed <= 2.0
    await asyncio.sleep(0)
