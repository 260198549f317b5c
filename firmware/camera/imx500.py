"""The Raspberry Pi AI Camera (Sony IMX500): the detector's network runs on the sensor itself.

picamera2's ``picamera2.devices.IMX500`` (imported lazily: it exists only on Raspberry Pi OS, apt
``imx500-all``) loads an .rpk network onto the sensor; every frame's metadata then carries the
network's output tensors. This file holds both halves of the backend:

* ``Imx500Camera`` (camera type ``imx500``): creates ``IMX500(rpk)`` before
  ``Picamera2(imx500.camera_num)``, as picamera2 requires; reads the network's intrinsics (task,
  inference rate, box order and normalization) and runs the sensor at the inference rate
  (``controls={"FrameRate": ...}``). Per frame it takes the metadata, ``get_outputs(metadata,
  add_batch=True)`` and the on-sensor timings (``get_kpi_info``), and hands them over with the
  frame as ``SensorOutputs``; boxes are mapped onto the stream with ``convert_inference_coords``.
  Frames the network produced no outputs for (while its firmware loads, or when it runs slower
  than the sensor) are skipped and counted.

  **Metadata only** (``camera.mode: metadata``, the default whenever pose is off): frames come
  from ``capture_metadata()``; cuecam never maps, copies or reads an image buffer, and no pixel
  is ever in the process's hands. picamera2 still needs one configured stream, so main is the
  smallest that makes sense (``camera.size``, YUV420): libcamera fills its buffers, nobody reads
  them. **lores** (``camera.mode: lores``, with pose on): the request's lores stream is copied as
  well, for MoveNet's crops on the CPU, from the same request as the network's outputs.

* ``Imx500Detector`` (manifest decoder ``imx500_ssd``): no invoke at all; it reads the person rows
  of the SSD's post-processed outputs (boxes, scores, classes, count) that came with the frame.
  The base class then applies the score floor, the plausibility filter and the cap, as for every
  other detector.

The picamera2 module and the IMX500 class are constructor arguments (``devices_module``), so the
tests and the sim board run this backend against ``camera.imx500_fake``, which models them and
plays recorded outputs in the sensor's exact metadata layout.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ..config import DetectorConfig, Imx500CameraConfig, InferenceConfig
from ..errors import CameraError, InferenceError, ModelError
from ..inference.base import REAL_DEVICES, Detector, Devices, SensorOutputs
from ..models import ResolvedModel
from .base import Camera, Capture
from .picam import PicameraCamera, lores_to_rgb, start_video

log = logging.getLogger(__name__)
DEFAULT_INFERENCE_RATE = 30.0  # picamera2's NetworkIntrinsics default
IMX500_PACKAGE = "imx500-all"


def _percentiles(values: collections.deque[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None}
    p50, p99 = np.percentile(np.fromiter(values, dtype=np.float64), [50, 99])
    return {"p50": round(float(p50), 2), "p99": round(float(p99), 2)}


class Imx500Camera(PicameraCamera):
    def __init__(self, cfg: Imx500CameraConfig, *, network: Path, pose: bool = False,
                 clock: Callable[[], float] = time.monotonic, devices_module: ModuleType | None = None,
                 monotonic_ns: Callable[[], int] = time.monotonic_ns) -> None:
        """``network``: the .rpk to load onto the sensor; ``pose``: signals.pose is on (mode auto
        then reads the lores stream); ``devices_module``: a module with ``Picamera2``,
        ``Transform`` and ``IMX500`` (default: picamera2's own, imported at open)."""
        Camera.__init__(self, clock=clock)  # PicameraCamera's reading helpers, not its picamera2 config
        self._module = devices_module
        self._monotonic_ns = monotonic_ns
        self._cam: Any = None
        self.sensor_mode = None
        self.untimed_frames = 0
        self.cfg_imx = cfg
        # a sensor keeps sending frames; only the sim's unpaced recording waits to be read
        self.live = cfg.fake_footage is None or cfg.fake_pacing == "realtime"
        self.network = network
        self.mode = cfg.resolved_mode(pose)
        self.description = f"IMX500 AI Camera ({self.mode}, {network.name})"
        self._imx: Any = None
        self._intrinsics: Any = None
        self.inference_rate: float | None = None
        self.input_size: tuple[int, int] | None = None
        self.frames_without_outputs = 0
        self.network_ready = False  # the network has sent outputs since the camera was opened
        self.dnn_ms: collections.deque[float] = collections.deque(maxlen=1000)
        self.dsp_ms: collections.deque[float] = collections.deque(maxlen=1000)

    def _import_devices(self) -> tuple[Any, Any]:
        if self._module is not None:
            return self._module.Picamera2, self._module.IMX500
        try:
            picamera2, _ = self._import()
            from picamera2.devices import IMX500  # type: ignore[import-not-found]
        except (ImportError, CameraError) as e:
            raise CameraError(f"picamera2's IMX500 support is not importable: on Raspberry Pi OS `sudo apt install "
                              f"{IMX500_PACKAGE} python3-picamera2` and a venv with --system-site-packages "
                              "(install.sh does both for an AI Camera board config)", kind="open") from e
        return picamera2, IMX500

    def _open(self) -> None:
        picamera2, imx500_cls = self._import_devices()
        if self._module is None and not self.network.is_file():
            raise CameraError(f"{self.network}: the IMX500 network is missing; `sudo apt install {IMX500_PACKAGE}` "
                              "installs the model zoo in /usr/share/imx500-models/", kind="open")
        try:
            imx = imx500_cls(str(self.network))  # before Picamera2: it loads the network onto the sensor
        except PermissionError as e:
            raise CameraError(f"picamera2 could not open {e.filename}: it reads the network upload's progress from "
                              "debugfs, which the service user may not; update python3-picamera2 (newer releases "
                              "carry on without it)", kind="open") from e
        except (RuntimeError, OSError) as e:
            raise CameraError(f"no AI Camera found or its network would not load ({e}); check the ribbon cable and "
                              "`rpicam-hello --list-cameras` (model imx500)", kind="open") from e
        intr = imx.network_intrinsics
        task = getattr(intr, "task", None) if intr is not None else None
        if task is not None and task != "object detection":
            raise CameraError(f"{self.network.name} is a {task} network; the person detector needs an object "
                              "detection network such as imx500_network_ssd_mobilenetv2_fpnlite_320x320_pp.rpk",
                              kind="open")
        rate = getattr(intr, "inference_rate", None) if intr is not None else None
        fps = float(self.cfg_imx.framerate or rate or DEFAULT_INFERENCE_RATE)
        try:
            cam = picamera2(imx.camera_num)
        except (IndexError, RuntimeError) as e:
            raise CameraError(f"IMX500 camera {imx.camera_num} cannot be opened ({e})", kind="open") from e
        size = (int(self.cfg_imx.size[0]), int(self.cfg_imx.size[1]))
        start_video(cam, "try another camera.size or framerate",
                    main={"size": size, "format": "YUV420"},  # needed by libcamera; never read
                    lores=None if self.mode == "metadata" else {"size": size, "format": self.cfg_imx.lores_format},
                    controls={"FrameRate": fps}, buffer_count=self.cfg_imx.buffer_count)
        self._imx, self._intrinsics, self._cam = imx, intr, cam
        self.network_ready = False
        self.inference_rate = fps
        self.input_size = tuple(imx.get_input_size())  # type: ignore[assignment]
        log.info("IMX500: %s at %.3g fps, %s mode, stream %dx%d, network input %s", self.network.name, fps,
                 self.mode, *size, self.input_size)

    def _to_frame(self, metadata: dict[str, Any]) -> Callable[[np.ndarray], np.ndarray]:
        """The network's boxes as it outputs them (its order and normalization) -> x0, y0, x1, y1
        normalized to the stream, through the sensor's crop (``convert_inference_coords``)."""
        imx, cam, intr = self._imx, self._cam, self._intrinsics
        w, h = self.cfg_imx.size
        normalize = bool(getattr(intr, "bbox_normalization", False))
        order = getattr(intr, "bbox_order", None) or "yx"
        input_h = float(self.input_size[1]) if self.input_size else 1.0

        def convert(boxes: np.ndarray) -> np.ndarray:
            b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
            if normalize:
                b = b / input_h
            if order == "xy":
                b = b[:, [1, 0, 3, 2]]
            out = np.zeros((len(b), 4), np.float32)
            for i, coords in enumerate(b):
                x, y, bw, bh = imx.convert_inference_coords(tuple(float(c) for c in coords), metadata, cam)
                out[i] = (x / w, y / h, (x + bw) / w, (y + bh) / h)
            return out

        return convert

    def read_limit_floor_s(self) -> float:
        # until the network's first outputs since open: it is loading, not hung
        return 0.0 if self.network_ready else self.cfg_imx.network_timeout_s + self.cfg_imx.capture_timeout_s

    def _read(self) -> tuple[np.ndarray, float | None, Any] | Capture | None:
        wait = self.cfg_imx.capture_timeout_s if self.network_ready else self.cfg_imx.network_timeout_s
        deadline = time.monotonic() + wait
        skipped = 0
        while True:
            left = max(deadline - time.monotonic(), 0.01)
            image = None
            try:
                if self.mode == "metadata":
                    metadata = self._cam.capture_metadata(wait=left)
                else:
                    request = self._cam.capture_request(wait=left)
                    try:
                        lores = request.make_array("lores")  # a copy: the request goes back at once
                        metadata = request.get_metadata()
                    finally:
                        request.release()
                    image = lores_to_rgb(lores, self.cfg_imx.size, self.cfg_imx.lores_format)
            except TimeoutError as e:
                if skipped:  # frames came, without outputs, until the deadline
                    raise self._no_outputs(wait) from e
                raise CameraError(f"{self.description}: no frame within {self.cfg_imx.capture_timeout_s:g} s "
                                  "(sensor wedged?)", kind="hang") from e
            outputs = self._imx.get_outputs(metadata, add_batch=True)
            if outputs is not None:
                self.network_ready = True
                break
            self.frames_without_outputs += 1  # the network firmware still loading, or slower than the sensor
            skipped += 1
            if time.monotonic() >= deadline:
                raise self._no_outputs(wait)
        kpi = self._imx.get_kpi_info(metadata)
        if kpi is not None:
            self.dnn_ms.append(float(kpi[0]))
            self.dsp_ms.append(float(kpi[1]))
        t = self._frame_time(metadata)
        out = SensorOutputs(tuple(np.asarray(o) for o in outputs), (int(self.cfg_imx.size[0]), int(self.cfg_imx.size[1])),
                            self._to_frame(metadata), None if kpi is None else (float(kpi[0]), float(kpi[1])))
        return Capture(image, t, None, out)

    def _no_outputs(self, wait: float) -> CameraError:
        what = "stopped delivering" if self.network_ready else "did not load: `dmesg | grep imx500`"
        return CameraError(f"{self.description}: frames but no network outputs for {wait:g} s (the network "
                           f"{what})", kind="read")

    def _close(self) -> None:
        super()._close()
        self._imx = None

    def status(self) -> dict[str, Any]:
        return {"imx500": {
            "mode": self.mode, "network": self.network.name, "inference_rate": self.inference_rate,
            "network_input": None if self.input_size is None else list(self.input_size),
            "frames_without_outputs": self.frames_without_outputs,
            "network_ready": self.network_ready,  # False while the sensor loads the network firmware
            # the sensor's own timings (get_kpi_info): the network and the DSP, per frame
            "kpi_ms": {"dnn": _percentiles(self.dnn_ms), "dsp": _percentiles(self.dsp_ms)},
            "pixels": self.mode != "metadata",
        }}


class SensorRunner:
    """The ``Runner`` of a network that runs on the camera: nothing to invoke."""

    runtime = "imx500"
    delegate = "imx500"

    def __init__(self, model: ResolvedModel) -> None:
        self.model = model
        self.input_shape = tuple(model.entry.input.shape)
        self.input_size = (self.input_shape[2], self.input_shape[1])

    def invoke(self, pixels: np.ndarray) -> None:
        raise InferenceError(f"{self.model.key} runs on the AI Camera's sensor; it cannot be run on pixels")


class Imx500Detector(Detector):
    """The person rows of an SSD with on-sensor post-processing: tensors boxes (1, N, 4),
    scores (1, N), classes (1, N) and count (1, 1)."""

    on_camera = True

    @classmethod
    def build(cls, model: ResolvedModel, cfg: InferenceConfig, devices: Devices = REAL_DEVICES) -> Detector:
        return cls(SensorRunner(model), cfg.detector)

    def __init__(self, runner: SensorRunner, cfg: DetectorConfig) -> None:
        super().__init__(runner, cfg)

    def _check_outputs(self) -> None:
        entry = self.runner.model.entry
        if entry.outputs != ["boxes", "scores", "classes", "count"]:
            raise ModelError(f"{self.runner.model.key}: the imx500_ssd decoder reads networks with outputs "
                             f"[boxes, scores, classes, count] (manifest: {entry.outputs})")
        if entry.person_class is None:
            raise ModelError(f"{self.runner.model.key}: manifest entry needs person_class for person detection")
        self.person_class = entry.person_class

    def _decode(self) -> tuple[np.ndarray, np.ndarray]:
        raise InferenceError("the IMX500 detector reads the network outputs that come with the frame; this frame "
                             "brought none (is the camera type imx500?)")

    def _decode_outputs(self, outputs: SensorOutputs) -> tuple[np.ndarray, np.ndarray]:
        t = outputs.tensors
        if len(t) < 3:
            raise InferenceError(f"the IMX500 network gave {len(t)} output tensors; an SSD with post-processing "
                                 "gives boxes, scores, classes and count")
        boxes = np.asarray(t[0], np.float32).reshape(-1, 4)
        scores = np.asarray(t[1], np.float32).reshape(-1)
        classes = np.asarray(t[2], np.float32).reshape(-1)
        if not len(boxes) == len(scores) == len(classes):
            raise InferenceError(f"IMX500 output tensors disagree: {len(boxes)} boxes, {len(scores)} scores, "
                                 f"{len(classes)} classes")
        n = len(scores)
        if len(t) > 3 and np.asarray(t[3]).size:
            n = min(n, max(int(np.asarray(t[3]).reshape(-1)[0]), 0))
        keep = np.flatnonzero((np.rint(classes[:n]) == self.person_class) & (scores[:n] >= self.cfg.score_threshold))
        if not len(keep):
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
        return np.asarray(outputs.to_frame(boxes[keep]), np.float32), scores[keep]
