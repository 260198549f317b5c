"""One contract, every camera backend that runs on this machine (picamera2: tests/hw)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from firmware.camera import create_camera
from firmware.camera.synthetic import Actor, SyntheticCamera
from firmware.config import SyntheticCameraConfig
from firmware.errors import CameraError
from tests.conftest import sim_config


def _image_dir(shared_media: Path, tmp: Path) -> Path:
    d = tmp / "imgs"
    d.mkdir()
    for i, name in enumerate(["basketball1.png", "test_couple.jpg", "basketball1.png"]):
        shutil.copy(shared_media / name, d / f"{i:03d}{Path(name).suffix}")
    return d


@pytest.fixture(params=["replay-video", "replay-images", "synthetic"])
def finite_camera(request, tmp_path):
    """A finite (non-looping) source of known length, paced as fast as it is read."""
    kind = request.param
    if kind == "replay-video":
        vtest = request.getfixturevalue("vtest")
        loaded = sim_config({"camera": {"source": str(vtest), "pacing": "fast", "loop": False}})
        return create_camera(loaded), 795, 10.0
    if kind == "replay-images":
        d = _image_dir(request.getfixturevalue("shared_media"), tmp_path)
        loaded = sim_config({"camera": {"source": str(d), "pacing": "fast", "loop": False, "fps": 5.0}})
        return create_camera(loaded), 3, 5.0
    loaded = sim_config({"camera": {"type": "synthetic", "frames": 40, "pacing": "fast", "fps": 8.0}})
    return create_camera(loaded), 40, 8.0


async def test_contract_frames_ids_timestamps_end(finite_camera):
    cam, n, fps = finite_camera
    await cam.open()
    try:
        frames = []
        while (f := await cam.read()) is not None:
            frames.append((f.frame_id, f.t_mono, f.image.shape, f.image.dtype))
            assert len(frames) <= n
        assert len(frames) == n
        assert [f[0] for f in frames] == list(range(1, n + 1))
        ts = np.array([f[1] for f in frames])
        assert np.allclose(np.diff(ts), 1.0 / fps)  # the source's timeline, not the reading speed
        for _, _, shape, dtype in frames:
            assert dtype == np.uint8 and len(shape) == 3 and shape[2] == 3
        assert await cam.read() is None  # stays ended
    finally:
        await cam.close()
        await cam.close()  # idempotent


async def test_replay_loops_and_keeps_counting(vtest, tmp_path, shared_media):
    d = _image_dir(shared_media, tmp_path)
    cam = create_camera(sim_config({"camera": {"source": str(d), "pacing": "fast", "loop": True}}))
    await cam.open()
    try:
        ids = [(await cam.read()).frame_id for _ in range(7)]
    finally:
        await cam.close()
    assert ids == list(range(1, 8))


async def test_realtime_pacing_keeps_the_frame_rate(vtest):
    import time

    cam = create_camera(sim_config({"camera": {"source": str(vtest), "pacing": "realtime", "fps": 20.0}}))
    assert cam.live
    await cam.open()
    try:
        t0 = time.monotonic()
        for _ in range(10):
            await cam.read()
        elapsed = time.monotonic() - t0
    finally:
        await cam.close()
    assert 0.4 <= elapsed <= 1.5  # 10 frames at 20 fps = 0.45-0.5 s, never a burst


async def test_replay_colour_order_is_rgb(tmp_path):
    import cv2

    img = np.zeros((32, 32, 3), np.uint8)
    img[..., 2] = 255  # pure red in OpenCV's BGR
    d = tmp_path / "red"
    d.mkdir()
    cv2.imwrite(str(d / "a.png"), img)
    cam = create_camera(sim_config({"camera": {"source": str(d), "pacing": "fast", "loop": False}}))
    await cam.open()
    f = await cam.read()
    await cam.close()
    assert tuple(f.image[0, 0]) == (255, 0, 0)


async def test_image_folder_skips_undecodable_files_and_fails_when_none_decode(tmp_path, shared_media):
    d = _image_dir(shared_media, tmp_path)
    (d / "001a.jpg").write_bytes(b"not a jpeg")
    cam = create_camera(sim_config({"camera": {"source": str(d), "pacing": "fast", "loop": False}}))
    await cam.open()
    got = 0
    while await cam.read() is not None:
        got += 1
    await cam.close()
    assert got == 3 and cam.decode_errors == 1

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"\x89PNG broken")
    cam = create_camera(sim_config({"camera": {"source": str(bad), "pacing": "fast", "loop": True}}))
    await cam.open()
    with pytest.raises(CameraError, match="no decodable frames"):
        await cam.read()
    await cam.close()


async def test_empty_folder_and_oversized_frames_are_refused(tmp_path, vtest):
    (tmp_path / "empty").mkdir()
    cam = create_camera(sim_config({"camera": {"source": str(tmp_path / "empty")}}))
    with pytest.raises(CameraError, match=r"no \.jpg"):
        await cam.open()
    await cam.close()
    cam = create_camera(sim_config({"camera": {"source": str(vtest), "max_frame_pixels": 640 * 480}}))
    with pytest.raises(CameraError, match=r"exceeds camera\.max_frame_pixels"):
        await cam.open()
    await cam.close()


async def test_synthetic_scene_draws_its_scripted_people():
    cfg = SyntheticCameraConfig(type="synthetic", size=[320, 240], fps=10.0, frames=30, pacing="fast")
    walker = Actor([(0.0, 0.1, 0.8), (2.0, 0.9, 0.8)], w=0.1, h=0.3, color=(250, 10, 10))
    cam = SyntheticCamera(cfg, scene=[walker])
    await cam.open()
    f0 = await cam.read()
    for _ in range(9):
        f10 = await cam.read()
    await cam.close()
    assert f0.truth.shape == (1, 5) and f10.truth.shape == (1, 5)
    actor, x0, _y0, x1, y1 = f10.truth[0]
    assert actor == 0  # t = 0.9 s: centre at x = 0.1 + 0.8 * 0.45
    assert np.isclose((x0 + x1) / 2, 0.46, atol=1e-6) and np.isclose(y1, 0.8)
    px = f10.image[int(0.7 * 240), int(0.46 * 320)]
    assert tuple(px) == (250, 10, 10)
    assert tuple(f10.image[5, 5]) == (128, 128, 128)


@pytest.mark.parametrize("mode", ["metadata", "lores"])
async def test_the_ai_camera_stand_in_keeps_the_live_camera_contract(vtest, mode):
    """board_configs/sim-aicam.yaml's camera (the IMX500 stand-in) through create_camera: frame ids,
    the sensor's timeline, pixels only in lores mode, the network's outputs with every frame, and
    a reopening that goes on counting."""
    from firmware.config import Config, LoadedConfig, load_config
    from tests.conftest import ROOT, _merge

    base = load_config(ROOT / "board_configs" / "sim-aicam.yaml")
    over = {"camera": {"fake_pacing": "fast", "mode": mode, "lores_format": "BGR888"}}
    loaded = LoadedConfig(Config.model_validate(_merge(base.config.model_dump(), over)), base.path)
    cam = create_camera(loaded)
    assert not cam.live  # the unpaced stand-in waits to be read, as a fast replay
    frames = []
    for _ in range(2):  # open, read, close; again
        await cam.open()
        try:
            frames += [await cam.read(5.0) for _ in range(20)]
        finally:
            await cam.close()
    assert [f.frame_id for f in frames] == list(range(1, 41))
    assert np.allclose(np.diff([f.t_mono for f in frames[:20]]), 0.1)  # the recording's 10 fps
    for f in frames:
        assert f.outputs is not None and f.size == (768, 576)
        if mode == "metadata":
            assert f.image is None
        else:
            assert f.image is not None and f.image.shape == (576, 768, 3) and f.image.dtype == np.uint8
