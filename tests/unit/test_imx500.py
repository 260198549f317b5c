"""The AI Camera (IMX500) backend against the shipped stand-in (firmware/camera/imx500_fake.py):
the sensor's metadata layout, metadata-only capture, frames without outputs, timings, failures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from firmware.camera.imx500 import Imx500Camera, Imx500Detector
from firmware.camera.imx500_fake import (
    FULL_SENSOR,
    IMX500,
    Imx500Rig,
    Recording,
    make_module,
    metadata_for,
    parse_tensor_info,
)
from firmware.config import ConfigError, Imx500CameraConfig, InferenceConfig, parse_config
from firmware.errors import CameraError, InferenceError
from firmware.inference import create_detector
from firmware.inference.base import SensorOutputs
from firmware.models import load_manifest

ROOT = Path(__file__).resolve().parents[2]
NETWORK = Path("/usr/share/imx500-models/imx500_network_ssd_mobilenetv2_fpnlite_320x320_pp.rpk")


@pytest.fixture(scope="module")
def recording() -> Recording:
    return Recording.load()


def _camera(rig: Imx500Rig, **cfg) -> Imx500Camera:
    # unpaced, the fake sensor's timestamps are on the recording's own timeline: the board's clock is its clock
    clocks = {} if rig.paced else {"clock": rig.clock, "monotonic_ns": rig.monotonic_ns}
    return Imx500Camera(Imx500CameraConfig(type="imx500", size=[768, 576], **cfg), network=NETWORK,
                        pose=False, devices_module=make_module(rig), **clocks)


def _detector(**det) -> Imx500Detector:
    manifest = load_manifest(ROOT / "models" / "manifest.yaml")
    d = create_detector(InferenceConfig(delegate="imx500", detector={"model": "imx500_ssd_mobilenetv2_fpnlite", **det}),
                        ROOT / "models", manifest)
    assert isinstance(d, Imx500Detector)
    return d


def test_the_recording_covers_vtest_in_the_ssd_layout(recording: Recording) -> None:
    assert recording.frames == 795 and recording.fps == 10.0 and recording.size == (768, 576)
    n = np.diff(recording.offsets)
    assert (n >= 0).all() and (n <= 100).all()
    b = recording.boxes
    assert ((b >= 0) & (b <= 1)).all() and (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all()
    assert (recording.scores >= 0.25 - 1e-4).all()
    assert (recording.classes == 0).mean() > 0.3  # mostly people on a plaza, other classes too
    assert len(set(recording.classes.tolist())) > 5


@pytest.mark.parametrize("frame", [0, 1, 397, 794])
def test_metadata_round_trips_through_the_sensors_tensor_layout(recording: Recording, frame: int) -> None:
    tensors = recording.tensors(frame)
    md = metadata_for(tensors)
    # libcamera's struct: 64-byte name, count, 16 x (data num, dims, 16 uint16 sizes)
    assert len(md["CnnOutputTensorInfo"]) == 64 + 4 + 16 * (4 + 4 + 32)
    assert parse_tensor_info(md["CnnOutputTensorInfo"]) == [[100, 4], [100], [100], [1]]
    assert len(md["CnnOutputTensor"]) == 400 + 100 + 100 + 1
    # column-major: the first 100 floats are every box's y0
    assert np.allclose(md["CnnOutputTensor"][:100], tensors[0][:, 0])
    imx = make_module(Imx500Rig(recording=recording)).IMX500(str(NETWORK))
    outs = imx.get_outputs(md, add_batch=True)
    assert [o.shape for o in outs] == [(1, 100, 4), (1, 100), (1, 100), (1, 1)]
    for got, want in zip(outs, tensors, strict=True):
        assert np.array_equal(got[0], want)
    assert imx.get_outputs({}, add_batch=True) is None


def test_inference_coords_map_through_the_scaler_crop() -> None:
    imx = make_module(Imx500Rig()).IMX500(str(NETWORK))

    class Cam:
        def camera_configuration(self):
            return {"main": {"size": (640, 480)}, "raw": {"size": FULL_SENSOR}}

    full = {"ScalerCrop": (0, 0, *FULL_SENSOR)}
    assert imx.convert_inference_coords((0.25, 0.5, 0.75, 1.0), full, Cam()) == (320, 120, 320, 240)
    # a centre crop of half the sensor: a box in its middle fills the stream's middle
    half = {"ScalerCrop": (1014, 760, 2028, 1520)}
    x, y, w, h = imx.convert_inference_coords((0.375, 0.375, 0.625, 0.625), half, Cam())
    assert abs(x - 160) <= 1 and abs(y - 120) <= 1 and abs(w - 320) <= 1 and abs(h - 240) <= 1
    assert isinstance(IMX500.get_kpi_info({"CnnKpiInfo": [5500, 1250]}), tuple)
    assert IMX500.get_kpi_info({"CnnKpiInfo": [5500, 1250]}) == (5.5, 1.25)


async def test_metadata_mode_never_reads_a_pixel_and_boxes_arrive_with_each_frame(recording: Recording) -> None:
    rig = Imx500Rig(recording=recording, paced=False, kpi_us=(5800, 1300))
    cam = _camera(rig, mode="metadata")
    det = _detector()
    await cam.open()
    try:
        frames = [await cam.read(2.0) for _ in range(30)]
    finally:
        await cam.close()
    assert rig.pixel_reads == 0 and rig.metadata_reads == 30  # capture_metadata only
    assert rig.configs[-1]["lores"] is None and rig.configs[-1]["main"]["format"] == "YUV420"
    assert rig.configs[-1]["controls"]["FrameRate"] == recording.fps  # the network's inference rate
    for i, f in enumerate(frames):
        assert f.image is None and f.outputs is not None and f.size == (768, 576)
        dets = det.detect(f.image, f.outputs)
        want = recording.tensors(i)
        person = (want[2] == 0) & (want[1] >= 0.25)
        # every person row the sensor sent, mapped onto the frame (y0 x0 y1 x1 -> x0 y0 x1 y1)
        assert len(dets) <= int(person.sum())
        sent = want[0][person][:, [1, 0, 3, 2]]
        for box in dets.boxes:  # to 3 px: convert_inference_coords truncates position and size, twice
            assert (np.abs(sent - box).max(axis=1) <= 3 / 576).any()
        # what the shared filters (plausible shape, nested boxes) keep is what they keep of a CPU detector's
        assert 0 < dets.above(0.5) <= int(((want[1] >= 0.5) & person).sum())
    times = [f.t_mono for f in frames]
    assert np.allclose(np.diff(times), 1 / recording.fps, atol=1e-6)  # the sensor's timestamps
    st = cam.status()["imx500"]
    assert st["kpi_ms"]["dnn"]["p50"] == 5.8 and st["kpi_ms"]["dsp"]["p99"] == 1.3 and st["pixels"] is False


async def test_lores_mode_hands_over_pixels_from_the_same_request(recording: Recording, vtest: Path) -> None:
    rig = Imx500Rig(recording=recording, paced=False, footage=vtest)
    cam = _camera(rig, mode="lores", lores_format="BGR888")
    await cam.open()
    try:
        frames = [await cam.read(2.0) for _ in range(3)]
    finally:
        await cam.close()
    assert rig.pixel_reads == 3 and rig.unreleased == 0
    for f in frames:
        assert f.image is not None and f.image.shape == (576, 768, 3) and f.outputs is not None
        assert float(np.std(f.image)) > 10  # the plaza, not a blank buffer


async def test_frames_without_network_outputs_are_skipped_and_counted(recording: Recording) -> None:
    rig = Imx500Rig(recording=recording, paced=False, no_outputs_every=3)
    cam = _camera(rig)
    await cam.open()
    try:
        frames = [await cam.read(2.0) for _ in range(10)]
    finally:
        await cam.close()
    assert all(f.outputs is not None for f in frames)
    assert cam.frames_without_outputs == 4 and rig.frames == 14  # frames 2, 5, 8, 11 brought none
    assert cam.status()["imx500"]["frames_without_outputs"] == 4


async def test_a_loading_network_is_waited_for_and_an_outage_after_it_is_a_read_failure() -> None:
    import time

    # loading: frames without outputs for longer than the pipeline's read deadline are not a hang
    rig = Imx500Rig(paced=True, loading_frames=12)  # 12 frames at the recording's 10 fps: 1.2 s
    cam = _camera(rig, capture_timeout_s=0.3, network_timeout_s=5.0)
    await cam.open()
    try:
        assert cam.status()["imx500"]["network_ready"] is False
        t0 = time.monotonic()
        f = await cam.read(0.5)  # the pipeline's deadline is stretched while the network loads
        assert f is not None and f.outputs is not None and time.monotonic() - t0 >= 1.0
        assert cam.frames_without_outputs == 12 and cam.status()["imx500"]["network_ready"] is True
        # loaded: a network that stops delivering is a read failure within capture_timeout_s
        rig.no_outputs_every = 1
        t0 = time.monotonic()
        with pytest.raises(CameraError, match=r"no network outputs for 0\.3 s"):
            await cam.read(5.0)
        assert time.monotonic() - t0 < 1.5
    finally:
        await cam.close()
    # a network that never loads: a read failure after network_timeout_s, not a wait forever
    cam = _camera(Imx500Rig(paced=False, no_outputs_every=1), network_timeout_s=0.4)
    await cam.open()
    try:
        with pytest.raises(CameraError, match="did not load"):
            await cam.read(0.1)
    finally:
        await cam.close()


async def test_no_ai_camera_and_no_picamera2_say_what_to_do() -> None:
    cam = _camera(Imx500Rig(absent=True))
    with pytest.raises(CameraError, match="ribbon cable") as e:
        await cam.open()
    assert e.value.kind == "open"
    await cam.close()
    # picamera2 before its debugfs change, run as the service user
    class NoDebugfs(IMX500):
        def __init__(self, network_file: str, camera_id: str = "") -> None:
            raise PermissionError(13, "Permission denied", "/sys/kernel/debug/imx500-fw:10-001a/fw_progress")

    mod = make_module(Imx500Rig())
    mod.IMX500 = type("IMX500", (NoDebugfs,), {"rig": mod.rig})
    cam = Imx500Camera(Imx500CameraConfig(type="imx500"), network=NETWORK, devices_module=mod)
    with pytest.raises(CameraError, match="update python3-picamera2") as e:
        await cam.open()
    assert "/sys/kernel/debug/imx500-fw" in str(e.value)
    await cam.close()
    real = Imx500Camera(Imx500CameraConfig(type="imx500"), network=NETWORK)
    with pytest.raises(CameraError, match="imx500-all"):
        await real.open()
    await real.close()


def test_the_detector_keeps_people_down_to_the_score_floor_only() -> None:
    boxes = np.array([[0.1, 0.1, 0.9, 0.3], [0.1, 0.5, 0.9, 0.7], [0.2, 0.2, 0.4, 0.3], [0.5, 0.5, 0.6, 0.6]],
                     np.float32)
    scores = np.array([0.9, 0.3, 0.8, 0.2], np.float32)
    classes = np.array([0, 0, 2, 0], np.float32)
    t = (boxes[None], scores[None], classes[None], np.array([[4.0]], np.float32))
    for floor in (0.25, 0.5):
        dets = _detector(score_threshold=floor).detect(None, SensorOutputs(t, (640, 480), lambda b: b[:, [1, 0, 3, 2]]))
        assert sorted(dets.scores.tolist()) == sorted(s for s, c in zip(scores.tolist(), classes, strict=True)
                                                      if c == 0 and s >= floor)
    # count says how many slots are filled: the rest are ignored even if they look like people
    t2 = (boxes[None], scores[None], classes[None], np.array([[1.0]], np.float32))
    assert len(_detector().detect(None, SensorOutputs(t2, (640, 480), lambda b: b[:, [1, 0, 3, 2]]))) == 1
    with pytest.raises(InferenceError, match="cannot be run on pixels"):
        _detector().detect(np.zeros((240, 320, 3), np.uint8))


def test_board_configs_say_what_an_imx500_needs() -> None:
    base = (ROOT / "board_configs" / "rpi-zero2w-aicam.yaml").read_text()
    assert parse_config(base).camera.type == "imx500"
    with pytest.raises(ConfigError, match=r"inference\.delegate"):
        parse_config(base.replace("delegate: imx500", "delegate: cpu"))
    with pytest.raises(ConfigError, match=r"camera\.mode: pose reads pixels"):
        parse_config(base.replace("pose: off  ", "pose: movenet  "))
    with pytest.raises(ConfigError, match="YUV420"):
        parse_config(base.replace("buffer_count: 4", "buffer_count: 4\n  lores_format: BGR888"))
    cpu = (ROOT / "board_configs" / "rpi5.yaml").read_text()
    with pytest.raises(ConfigError, match=r"camera\.type: imx500"):
        parse_config(cpu.replace("delegate: cpu", "delegate: imx500"))
