"""A stand-in for the AI Camera (``picamera2.devices.IMX500`` with its ``Picamera2``), for the tests
and the sim board (``board_configs/sim-aicam.yaml``): the part of the API ``camera.imx500`` uses,
playing a recording of a real network run in the sensor's exact metadata layout.

* The metadata of every frame carries ``CnnOutputTensor`` (all output tensors as one flat float32
  sequence, each tensor in column-major order) and ``CnnOutputTensorInfo`` (libcamera's
  ``CnnOutputTensorInfoExported`` struct: network name, tensor count, each tensor's dimensions),
  as the IMX500's libcamera pipeline delivers them; ``get_outputs`` parses them back the way
  picamera2's does. The tensors are those of an SSD with post-processing on the sensor: boxes
  (100, 4) y0, x0, y1, x1 normalized, scores (100,), classes (100,) and count (1,).
* ``ScalerCrop`` is the whole sensor (4056 x 3040) and ``convert_inference_coords`` maps boxes
  through it as picamera2 does, to (x, y, w, h) pixels of the stream.
* ``CnnKpiInfo`` (network and DSP microseconds) only when the rig is given figures.

The recording (``recordings/imx500_ssd_vtest.npz``) holds the post-processed outputs of the shared
SSD MobileNet v1 on every frame of media/vtest.avi (the AI Camera's SSD MobileNetV2 FPNLite runs
only on the sensor): per anchor its best class, decoded against the model's anchors,
class-aware NMS at the model's IoU, the best 100 down to score 0.25. Make it again with
``python -m firmware.camera.imx500_fake record --footage media/vtest.avi``.
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import threading
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .picam_fake import Picamera2 as _FakePicamera2
from .picam_fake import Rig, Transform, _layout, _Request

RECORDING = Path(__file__).resolve().parent / "recordings" / "imx500_ssd_vtest.npz"
NETWORK_NAME = "ssd_mobilenet_v1_pp"  # what recorded it (see the module docstring)
FULL_SENSOR = (4056, 3040)
MAX_DETECTIONS = 100  # the SSD post-processing's output slots
RECORD_FLOOR = 0.25  # the detectors' score floor (inference.detector.score_threshold)
NETWORK_NAME_LEN = 64
MAX_NUM_TENSORS = 16
MAX_NUM_DIMENSIONS = 16


class OutputTensorInfo(ctypes.LittleEndianStructure):  # libcamera's struct OutputTensorInfo
    _fields_ = [("tensor_data_num", ctypes.c_uint32), ("num_dimensions", ctypes.c_uint32),
                ("size", ctypes.c_uint16 * MAX_NUM_DIMENSIONS)]


class CnnOutputTensorInfoExported(ctypes.LittleEndianStructure):  # libcamera's CnnOutputTensorInfoExported
    _fields_ = [("network_name", ctypes.c_char * NETWORK_NAME_LEN), ("num_tensors", ctypes.c_uint32),
                ("info", OutputTensorInfo * MAX_NUM_TENSORS)]


def tensor_info_bytes(name: str, shapes: list[tuple[int, ...]]) -> bytes:
    info = CnnOutputTensorInfoExported()
    info.network_name = name.encode()[: NETWORK_NAME_LEN - 1]
    info.num_tensors = len(shapes)
    for i, shape in enumerate(shapes):
        info.info[i].tensor_data_num = i
        info.info[i].num_dimensions = len(shape)
        for j, d in enumerate(shape):
            info.info[i].size[j] = d
    return bytes(info)


def parse_tensor_info(raw: bytes) -> list[list[int]]:
    size = ctypes.sizeof(CnnOutputTensorInfoExported)
    if len(raw) != size:
        raise ValueError(f"tensor info length {len(raw)} does not match expected size {size}")
    parsed = CnnOutputTensorInfoExported()
    ctypes.memmove(ctypes.addressof(parsed), raw, size)
    return [list(t.size)[: t.num_dimensions] for t in parsed.info[: parsed.num_tensors]]


@dataclass(frozen=True)
class Recording:
    """Per frame, the SSD's post-processed detections (rows ``offsets[i]:offsets[i+1]``)."""

    offsets: np.ndarray  # int64 (frames + 1,)
    boxes: np.ndarray  # float32 (n, 4) y0, x0, y1, x1 normalized to the frame
    scores: np.ndarray  # float32 (n,)
    classes: np.ndarray  # uint8 (n,) COCO label index (0: person)
    fps: float
    size: tuple[int, int]  # the footage's (width, height)

    @property
    def frames(self) -> int:
        return len(self.offsets) - 1

    def tensors(self, i: int) -> list[np.ndarray]:
        """Frame ``i``'s output tensors as the sensor fills them: MAX_DETECTIONS slots, zeros after count."""
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        n = b - a
        boxes = np.zeros((MAX_DETECTIONS, 4), np.float32)
        scores = np.zeros(MAX_DETECTIONS, np.float32)
        classes = np.zeros(MAX_DETECTIONS, np.float32)
        boxes[:n], scores[:n], classes[:n] = self.boxes[a:b], self.scores[a:b], self.classes[a:b]
        return [boxes, scores, classes, np.array([n], np.float32)]

    @classmethod
    def load(cls, path: Path = RECORDING) -> Recording:
        with np.load(path) as z:
            q = z["boxes_q"].astype(np.float32) / 65535.0
            return cls(z["offsets"].astype(np.int64), q, z["scores_q"].astype(np.float32) / 65535.0,
                       z["classes"].astype(np.uint8), float(z["fps"]), (int(z["size"][0]), int(z["size"][1])))


def metadata_for(tensors: list[np.ndarray], name: str = NETWORK_NAME) -> dict[str, Any]:
    """``CnnOutputTensor`` and ``CnnOutputTensorInfo`` for these tensors, laid out as the sensor does."""
    flat = np.concatenate([np.asarray(t, np.float32).reshape(-1, order="F") for t in tensors])
    return {"CnnOutputTensor": flat.tolist(), "CnnOutputTensorInfo": tensor_info_bytes(name, [t.shape for t in tensors])}


class NetworkIntrinsics:
    """The fields of picamera2's NetworkIntrinsics the backend reads."""

    def __init__(self, inference_rate: float) -> None:
        self.task = "object detection"
        self.inference_rate = inference_rate
        self.bbox_normalization: bool | None = None  # the SSD's boxes are already 0..1
        self.bbox_order: str | None = None  # yx
        self.labels: list[str] | None = None


class IMX500:
    """``picamera2.devices.IMX500`` as the backend uses it; bound to a rig by ``make_module``."""

    rig: Imx500Rig

    def __init__(self, network_file: str, camera_id: str = "") -> None:
        if self.rig.absent:
            raise RuntimeError("IMX500: Requested camera dev-node not found")
        self.network_file = network_file
        self.camera_num = 0
        self.network_intrinsics = NetworkIntrinsics(self.rig.recording.fps)

    def get_input_size(self) -> tuple[int, int]:
        return (320, 320)

    @staticmethod
    def get_kpi_info(metadata: dict[str, Any]) -> tuple[float, float] | None:
        kpi = metadata.get("CnnKpiInfo")
        if kpi is None:
            return None
        return kpi[0] / 1000, kpi[1] / 1000

    def get_outputs(self, metadata: dict[str, Any], add_batch: bool = False) -> list[np.ndarray] | None:
        raw = metadata.get("CnnOutputTensor")
        if not raw:
            return None
        flat = np.fromiter(raw, dtype=np.float32)
        outputs, offset = [], 0
        for shape in parse_tensor_info(metadata["CnnOutputTensorInfo"]):
            size = int(np.prod(shape))
            t = flat[offset:offset + size].reshape(shape, order="F")
            outputs.append(np.expand_dims(t, 0) if add_batch else t)
            offset += size
        return outputs

    def convert_inference_coords(self, coords: tuple[float, ...], metadata: dict[str, Any], picam2: Any,
                                 stream: str = "main") -> tuple[int, int, int, int]:
        """As picamera2: inference coords (normalized to the full sensor) -> the stream's pixels,
        through the sensor output's crop (ScalerCrop)."""
        conf = picam2.camera_configuration()
        iw, ih = conf[stream]["size"]
        sw, sh = conf["raw"]["size"]
        cx, cy, cw, ch = metadata["ScalerCrop"]
        fw, fh = FULL_SENSOR
        y0, x0, y1, x1 = coords
        obj = np.maximum(np.array([x0 * fw, y0 * fh, (x1 - x0) * fw, (y1 - y0) * fh]), 0).astype(np.int32)
        # the crop in sensor-output pixels, the object in sensor-output pixels, bounded, translated, scaled
        crop = np.array([cx * sw / fw, cy * sh / fh, cw * sw / fw, ch * sh / fh])
        ox, oy = obj[0] * sw / fw, obj[1] * sh / fh
        ow, oh = obj[2] * sw / fw, obj[3] * sh / fh
        bx0, by0 = max(ox, crop[0]), max(oy, crop[1])
        bx1, by1 = min(ox + ow, crop[0] + crop[2]), min(oy + oh, crop[1] + crop[3])
        bx1, by1 = max(bx1, bx0), max(by1, by0)
        sx, sy = iw / crop[2], ih / crop[3]
        return (int((bx0 - crop[0]) * sx), int((by0 - crop[1]) * sy), int((bx1 - bx0) * sx), int((by1 - by0) * sy))


@dataclass
class Imx500Rig(Rig):
    """What the fake AI Camera shares with a test or the sim board."""

    platform: str = "pisp"
    recording: Recording = field(default_factory=Recording.load)
    footage: Path | None = None  # lores pixels from this video, frame by frame with the recording
    paced: bool = True  # frames at the configured frame rate; False: as fast as they are read
    kpi_us: tuple[int, int] | None = None  # CnnKpiInfo (network, DSP) microseconds; None: not reported
    no_outputs_every: int = 0  # every n-th frame brings no tensors (a network slower than the sensor)
    loading_frames: int = 0  # the first n frames bring none (the network firmware still loading)
    absent: bool = False  # no AI Camera connected
    metadata_reads: int = 0
    pixel_reads: int = 0
    virtual_s: float = 1000.0  # unpaced: the sensor's clock, one frame interval per frame

    def clock(self) -> float:
        """The board's monotonic clock as the fake sensor sees it: real time when paced, else the
        recording's own timeline (as a replay as fast as possible keeps the footage's)."""
        return time.monotonic() if self.paced else self.virtual_s

    def monotonic_ns(self) -> int:
        return time.monotonic_ns() if self.paced else int(self.virtual_s * 1e9)


class Picamera2(_FakePicamera2):
    rig: Imx500Rig

    def __init__(self, camera_num: int = 0) -> None:
        super().__init__(camera_num)
        self._video: Any = None
        self._lock = threading.Lock()

    def camera_configuration(self) -> dict[str, Any]:
        assert self._config is not None
        return {**self._config, "raw": {"size": FULL_SENSOR}}

    def _next(self, wait: Any, pixels: bool) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        fps = self._wait_frame(wait, paced=self.rig.paced)
        assert self._config is not None
        if not self.rig.paced:
            with self.rig.lock:
                self.rig.virtual_s += 1.0 / fps
        rig = self.rig
        with rig.lock:
            n = rig.frames
            rig.frames += 1
        i = n % rig.recording.frames
        metadata: dict[str, Any] = {"ScalerCrop": (0, 0, *FULL_SENSOR),
                                    "SensorTimestamp": rig.monotonic_ns() - int(rig.readout_s * 1e9)}
        skipped = rig.no_outputs_every and n % rig.no_outputs_every == rig.no_outputs_every - 1
        if not skipped and n >= rig.loading_frames:
            metadata.update(metadata_for(rig.recording.tensors(i)))
            if rig.kpi_us is not None:
                metadata["CnnKpiInfo"] = list(rig.kpi_us)
        arrays = {}
        if pixels:
            lores = self._config["lores"]
            if lores is None:
                raise RuntimeError("no lores stream configured")
            w, h = lores["size"]
            arrays["lores"] = _layout(cv2.resize(self._footage_frame(i), (w, h), interpolation=cv2.INTER_AREA),
                                      lores["format"])
        return metadata, arrays

    def _footage_frame(self, i: int) -> np.ndarray:
        if self.rig.footage is None:
            raise RuntimeError("the fake AI Camera has no footage for pixels (Imx500Rig.footage)")
        with self._lock:
            if self._video is None or int(self._video.get(cv2.CAP_PROP_POS_FRAMES)) != i:
                if self._video is None:
                    self._video = cv2.VideoCapture(str(self.rig.footage))
                self._video.set(cv2.CAP_PROP_POS_FRAMES, i)
            ok, bgr = self._video.read()
        if not ok:
            raise RuntimeError(f"{self.rig.footage}: no frame {i}")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def capture_metadata(self, wait: Any = None, signal_function: Any = None) -> dict[str, Any]:
        metadata, _ = self._next(wait, pixels=False)
        with self.rig.lock:
            self.rig.metadata_reads += 1
        return metadata

    def capture_request(self, wait: Any = None, signal_function: Any = None, flush: Any = None) -> _Request:
        metadata, arrays = self._next(wait, pixels=True)
        with self.rig.lock:
            self.rig.unreleased += 1
            self.rig.pixel_reads += 1
        return _Request(self.rig, arrays, metadata)

    def close(self) -> None:
        super().close()
        with self._lock:
            if self._video is not None:
                self._video.release()
                self._video = None


def make_module(rig: Imx500Rig | None = None) -> types.ModuleType:
    """A module with ``Picamera2``, ``Transform`` and ``IMX500`` bound to ``rig``."""
    rig = rig or Imx500Rig()
    mod = types.ModuleType("imx500_fake")
    mod.Picamera2 = type("Picamera2", (Picamera2,), {"rig": rig})  # type: ignore[attr-defined]
    mod.IMX500 = type("IMX500", (IMX500,), {"rig": rig})  # type: ignore[attr-defined]
    mod.Transform = Transform  # type: ignore[attr-defined]
    mod.rig = rig  # type: ignore[attr-defined]
    return mod


# -- making the recording ------------------------------------------------------------------------


def record(footage: Path, models_dir: Path, out: Path = RECORDING) -> Recording:
    """Run the shared SSD on every frame of ``footage`` and keep its post-processed outputs (the
    sensor's layout: best class per anchor, class-aware NMS, best 100 down to RECORD_FLOOR)."""
    from ..config import InferenceConfig
    from ..inference import create_detector
    from ..inference.detector_ssd import SsdDetector
    from ..models import load_manifest

    det = create_detector(InferenceConfig(), models_dir, load_manifest(models_dir / "manifest.yaml"))
    assert isinstance(det, SsdDetector)
    runner = det.runner
    cap = cv2.VideoCapture(str(footage))
    fps = cap.get(cv2.CAP_PROP_FPS) or 10.0
    offsets, boxes, scores, classes = [0], [], [], []
    size = None
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        size = (bgr.shape[1], bgr.shape[0])
        w, h = runner.input_size
        runner.invoke(cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (w, h), interpolation=cv2.INTER_LINEAR))
        yx, sc, cl = det.all_classes(RECORD_FLOOR, MAX_DETECTIONS)
        boxes.append(yx)
        scores.append(sc)
        classes.append(cl)
        offsets.append(offsets[-1] + len(sc))
    cap.release()
    if size is None:
        raise SystemExit(f"{footage}: no frames")
    b = np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32)
    sc = np.concatenate(scores) if scores else np.zeros(0, np.float32)
    cl = np.concatenate(classes) if classes else np.zeros(0, np.int64)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, offsets=np.array(offsets, np.int32), boxes_q=np.rint(b * 65535).astype(np.uint16),
                        scores_q=np.rint(sc * 65535).astype(np.uint16), classes=cl.astype(np.uint8),
                        fps=np.float32(fps), size=np.array(size, np.int32))
    tmp.replace(out)
    return Recording.load(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m firmware.camera.imx500_fake",
                                 description="Record the SSD's outputs on footage for the fake AI Camera.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("--footage", type=Path, required=True)
    rec.add_argument("--models", type=Path, default=Path(__file__).resolve().parents[2] / "models")
    rec.add_argument("--out", type=Path, default=RECORDING)
    args = ap.parse_args(argv)
    r = record(args.footage, args.models, args.out)
    print(f"{args.out}: {r.frames} frames, {len(r.scores)} detections "
          f"({int(np.count_nonzero(r.classes == 0))} person), {r.fps:g} fps, {r.size[0]}x{r.size[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
