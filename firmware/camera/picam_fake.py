"""A stand-in for the picamera2 module, for the tests and for boards without a camera: the part of
its API ``camera.picam`` uses, with the behaviour that matters to it.

* ``Picamera2(n)`` with ``sensor_modes`` (an IMX219, Camera Module 2, by default);
  ``create_video_configuration`` checks what the real one checks for our use: the lores stream no
  larger than main, and on the VC4 ISP (Pi 4, Zero 2 W) a lores stream only in YUV420.
* ``capture_request(wait=...)``: the next frame at the configured frame rate; ``wait`` a number
  of seconds bounds the wait (TimeoutError, as picamera2's job does), ``None``/``True`` waits until
  a frame comes or the camera is stopped. A rig can be ``wedged`` (no frame ever comes).
* Requests: ``make_array("lores")`` in the format's memory layout (``BGR888`` is R, G, B per pixel,
  ``RGB888`` is B, G, R, ``YUV420`` is I420 planes), ``get_metadata()`` with a ``SensorTimestamp``
  on CLOCK_MONOTONIC, ``release()``.

``make_module(rig)`` returns a module object to pass as ``PicameraCamera(picamera2_module=...)``;
the rig records what was asked (configurations, open cameras, requests not yet released).
"""

from __future__ import annotations

import threading
import time
import types
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

IMX219_MODES: list[dict[str, Any]] = [
    {"format": "SRGGB10_CSI2P", "size": (640, 480), "crop_limits": (1000, 752, 1280, 960), "fps": 103.33,
     "bit_depth": 10},
    {"format": "SRGGB10_CSI2P", "size": (1640, 1232), "crop_limits": (0, 0, 3280, 2464), "fps": 41.85,
     "bit_depth": 10},
    {"format": "SRGGB10_CSI2P", "size": (1920, 1080), "crop_limits": (680, 692, 1920, 1080), "fps": 47.57,
     "bit_depth": 10},
    {"format": "SRGGB10_CSI2P", "size": (3280, 2464), "crop_limits": (0, 0, 3280, 2464), "fps": 21.19,
     "bit_depth": 10},
]


@dataclass
class Rig:
    """What the fake cameras share with a test."""

    platform: str = "vc4"  # "vc4" (Pi 4, Zero 2 W) or "pisp" (Pi 5)
    modes: list[dict[str, Any]] = field(default_factory=lambda: [dict(m) for m in IMX219_MODES])
    wedged: bool = False  # no frame ever comes
    readout_s: float = 0.02  # SensorTimestamp this long before the request completes
    timestamps: bool = True  # requests carry a SensorTimestamp
    configs: list[dict[str, Any]] = field(default_factory=list)
    open_cameras: int = 0
    unreleased: int = 0
    frames: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def pattern(self, w: int, h: int, n: int) -> np.ndarray:
        """The scene as RGB: a red-green ramp and a blue band that moves with the frame number."""
        x = np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, 0)
        y = np.linspace(0, 255, h, dtype=np.float32)[:, None].repeat(w, 1)
        rgb = np.stack([x, y, np.zeros_like(x)], axis=2)
        band = (n * 8) % max(w - 16, 1)
        rgb[:, band:band + 16, 2] = 220
        return rgb.astype(np.uint8)


class Transform:
    def __init__(self, hflip: int = 0, vflip: int = 0) -> None:
        self.hflip, self.vflip = hflip, vflip


class _Request:
    def __init__(self, rig: Rig, arrays: dict[str, np.ndarray], metadata: dict[str, Any]) -> None:
        self._rig, self._arrays, self._metadata, self._released = rig, arrays, metadata, False

    def make_array(self, name: str) -> np.ndarray:
        if self._released:
            raise RuntimeError("request used after release")
        return self._arrays[name].copy()

    def get_metadata(self) -> dict[str, Any]:
        return dict(self._metadata)

    def release(self) -> None:
        if not self._released:
            self._released = True
            with self._rig.lock:
                self._rig.unreleased -= 1


def _layout(rgb: np.ndarray, fmt: str) -> np.ndarray:
    if fmt == "BGR888":
        return rgb.copy()  # stored R, G, B
    if fmt == "RGB888":
        return np.ascontiguousarray(rgb[:, :, ::-1])  # stored B, G, R
    if fmt == "XBGR8888":
        return np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    if fmt == "YUV420":
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)
    raise RuntimeError(f"format {fmt} is not supported by the fake")


class Picamera2:
    rig: Rig  # set by make_module

    def __init__(self, camera_num: int = 0) -> None:
        if camera_num != 0:
            raise IndexError("list index out of range")
        self.sensor_modes = [dict(m) for m in self.rig.modes]
        self._config: dict[str, Any] | None = None
        self._started = False
        self._stopped = threading.Event()
        self._next_t = 0.0
        with self.rig.lock:
            self.rig.open_cameras += 1
        self._closed = False

    def create_video_configuration(self, main: dict[str, Any] | None = None, lores: dict[str, Any] | None = None,
                                   raw: dict[str, Any] | None = None, transform: Transform | None = None,
                                   colour_space: Any = None, buffer_count: int = 6,
                                   controls: dict[str, Any] | None = None, display: str | None = "main",
                                   encode: str | None = "main", queue: bool = True,
                                   sensor: dict[str, Any] | None = None, use_case: str = "video") -> dict[str, Any]:
        main = {"format": "XBGR8888", "size": (1280, 720), **(main or {})}
        if lores is not None:
            lores = {"format": "YUV420", "size": main["size"], **lores}
            if lores["size"][0] > main["size"][0] or lores["size"][1] > main["size"][1]:
                raise RuntimeError("lores stream dimensions may not exceed main stream")
            if self.rig.platform == "vc4" and lores["format"] != "YUV420":
                raise RuntimeError("lores stream must be YUV")
        if sensor and "output_size" in sensor and tuple(sensor["output_size"]) not in {tuple(m["size"]) for m in
                                                                                          self.sensor_modes}:
            raise RuntimeError(f"no sensor mode of size {sensor['output_size']}")
        return {"use_case": use_case, "main": main, "lores": lores, "raw": raw, "transform": transform,
                "buffer_count": buffer_count, "controls": dict(controls or {}), "display": display,
                "encode": encode, "queue": queue, "sensor": dict(sensor or {})}

    def configure(self, config: dict[str, Any]) -> None:
        self._config = config
        with self.rig.lock:
            self.rig.configs.append(config)

    def start(self) -> None:
        if self._config is None:
            raise RuntimeError("Camera has not been configured")
        self._started = True
        self._stopped.clear()
        self._next_t = time.monotonic()

    def stop(self) -> None:
        self._started = False
        self._stopped.set()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.stop()
            with self.rig.lock:
                self.rig.open_cameras -= 1

    def _wait_frame(self, wait: Any, paced: bool = True) -> float:
        """Block until the next frame is due (``wait`` as picamera2's); returns the frame rate."""
        if not self._started or self._config is None:
            raise RuntimeError("Camera is not started")
        timeout = None if wait is None or wait is True else float(wait)
        fps = float(self._config["controls"].get("FrameRate", 30.0))
        if self.rig.wedged:
            if self._stopped.wait(timeout):
                raise RuntimeError("camera stopped while waiting for a frame")
            raise TimeoutError("timed out")
        if not paced:
            return fps
        delay = self._next_t - time.monotonic()
        if delay > 0 and self._stopped.wait(delay if timeout is None else min(delay, timeout)):
            raise RuntimeError("camera stopped while waiting for a frame")
        if timeout is not None and delay > timeout:
            raise TimeoutError("timed out")
        self._next_t = max(self._next_t + 1.0 / fps, time.monotonic())
        return fps

    def capture_request(self, wait: Any = None, signal_function: Any = None, flush: Any = None) -> _Request:
        fps = self._wait_frame(wait)
        assert self._config is not None
        arrays = {}
        for name in ("main", "lores"):
            stream = self._config[name]
            if stream is not None:
                w, h = stream["size"]
                arrays[name] = _layout(self.rig.pattern(w, h, self.rig.frames), stream["format"])
        metadata: dict[str, Any] = {"ExposureTime": 10000, "FrameDuration": int(1e6 / fps)}
        if self.rig.timestamps:
            metadata["SensorTimestamp"] = time.monotonic_ns() - int(self.rig.readout_s * 1e9)
        with self.rig.lock:
            self.rig.frames += 1
            self.rig.unreleased += 1
        return _Request(self.rig, arrays, metadata)


def make_module(rig: Rig | None = None) -> types.ModuleType:
    """A module with ``Picamera2`` and ``Transform`` bound to ``rig``."""
    rig = rig or Rig()
    mod = types.ModuleType("picamera2_fake")
    cls = type("Picamera2", (Picamera2,), {"rig": rig})
    mod.Picamera2 = cls  # type: ignore[attr-defined]
    mod.Transform = Transform  # type: ignore[attr-defined]
    mod.rig = rig  # type: ignore[attr-defined]
    return mod
