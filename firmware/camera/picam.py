"""Raspberry Pi cameras through picamera2 (imported lazily: it exists only on Raspberry Pi OS).

What is asked of libcamera is what inference reads, and no more:

* **One stream read, at the size inference wants.** Frames come from the lores stream at
  ``camera.lores``. picamera2 always configures a main stream and the lores stream may not be
  larger than it, so main is made the same size, in YUV420 (its smallest format), and never read:
  no full-size buffers nobody looks at.
* **The field of view from the sensor mode.** The ISP scales the sensor's output down to the
  stream, so the mode decides how much of the scene the board sees: ``camera.sensor_size`` names
  one, and without it the mode with the widest field of view (the largest crop of the pixel array;
  at the same field of view, the smallest output that still runs at the frame rate) is chosen.
* **Colour as it lies in memory.** picamera2 names pixel formats after the DRM fourcc, whose byte
  order is the reverse of the name: ``BGR888`` is stored R, G, B per pixel, which is the RGB array
  inference wants, handed over without a conversion. ``RGB888`` (stored B, G, R) is flipped, and
  ``YUV420`` (the only lores format of the VC4 ISP of the Pi 4 and Zero 2 W, checked by the config)
  is converted from I420.
* **Bounded capture.** ``capture_request(wait=capture_timeout_s)``: a wedged sensor makes the read
  raise (a camera fault the pipeline restarts from) instead of leaving a thread blocked forever.
* **Sensor timestamps.** A frame's time is the request's ``SensorTimestamp`` (the start of the
  frame's readout, on CLOCK_MONOTONIC, in ns), mapped onto the board's monotonic clock; a frame
  without one is stamped when it arrived.

The picamera2 module is a constructor argument (``picamera2_module``), so the tests and the sim
run this backend against ``camera.picam_fake``, which models the API it relies on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import cv2
import numpy as np

from ..config import PicameraConfig
from ..errors import CameraError
from .base import Camera, Capture

log = logging.getLogger(__name__)
MAX_TIMESTAMP_AGE_S = 5.0  # a SensorTimestamp older than this (or in the future) is not trusted


def choose_sensor_mode(modes: list[dict[str, Any]], lores: tuple[int, int], fps: float) -> dict[str, Any] | None:
    """The sensor mode with the widest field of view (largest crop of the pixel array) that
    runs at ``fps`` and is not smaller than ``lores``; at equal field of view the smallest output
    (binned: less to read and scale). None when the sensor lists no usable mode."""

    def fov(m: dict[str, Any]) -> int:
        crop = m.get("crop_limits") or (0, 0, *m["size"])
        return int(crop[2]) * int(crop[3])

    usable = [m for m in modes if m.get("fps", fps) >= fps - 1e-6 and m["size"][0] >= lores[0]
              and m["size"][1] >= lores[1]]
    if not usable:
        return None
    return min(usable, key=lambda m: (-fov(m), m["size"][0] * m["size"][1], -m.get("bit_depth", 0)))


def lores_to_rgb(lores: np.ndarray, size: list[int] | tuple[int, int], fmt: str) -> np.ndarray:
    """A lores stream array as picamera2 gives it (``fmt`` in picamera2's names) -> RGB (h, w, 3)."""
    w, h = int(size[0]), int(size[1])
    if fmt == "BGR888":  # R, G, B in memory: already what inference wants
        return lores[:h, :w, :3]
    if fmt == "RGB888":  # B, G, R in memory
        return np.ascontiguousarray(lores[:h, :w, 2::-1])
    # I420 planes: (h * 3/2, w). The width is a multiple of 64, so there is no stride padding.
    return cv2.cvtColor(np.ascontiguousarray(lores[: h * 3 // 2, :w]), cv2.COLOR_YUV2RGB_I420)


def start_video(cam: Any, hint: str, **streams: Any) -> None:
    """Configure a video configuration with no display or encoder and start it; on any failure the
    camera is closed and the error says what to try (``hint``)."""
    try:
        cam.configure(cam.create_video_configuration(**streams, display=None, encode=None))
        cam.start()
    except Exception as e:
        cam.close()
        raise CameraError(f"picamera2 rejected the configuration ({e}); {hint}", kind="open") from e


class PicameraCamera(Camera):
    def __init__(self, cfg: PicameraConfig, *, clock: Callable[[], float] = time.monotonic,
                 picamera2_module: ModuleType | None = None,
                 monotonic_ns: Callable[[], int] = time.monotonic_ns) -> None:
        super().__init__(clock=clock)
        self.cfg = cfg
        self.live = True
        self.description = f"picamera2 camera {cfg.camera_num}"
        self._module = picamera2_module
        self._monotonic_ns = monotonic_ns
        self._cam: Any = None
        self.sensor_mode: dict[str, Any] | None = None  # the mode asked for (reported in the log)
        self.untimed_frames = 0  # frames whose SensorTimestamp was missing or implausible

    def _import(self) -> tuple[Any, Any]:
        if self._module is not None:
            return self._module.Picamera2, self._module.Transform
        try:
            from libcamera import Transform  # type: ignore[import-not-found]
            from picamera2 import Picamera2  # type: ignore[import-not-found]
        except ImportError as e:
            raise CameraError(
                "picamera2 is not importable: on Raspberry Pi OS run `sudo apt install python3-picamera2` and "
                "create the venv with --system-site-packages (see install.sh); elsewhere use a replay board config"
            ) from e
        return Picamera2, Transform

    def _open(self) -> None:
        picamera2, transform = self._import()
        cfg = self.cfg
        try:
            cam = picamera2(cfg.camera_num)
        except (IndexError, RuntimeError) as e:
            raise CameraError(
                f"no camera {cfg.camera_num} found ({e}); check the ribbon cable and `rpicam-hello --list-cameras`"
            ) from e
        lores = (int(cfg.lores[0]), int(cfg.lores[1]))
        try:
            if cfg.sensor_size is not None:
                mode: dict[str, Any] | None = {"size": tuple(cfg.sensor_size)}
            else:
                mode = choose_sensor_mode(list(cam.sensor_modes), lores, cfg.framerate)
            sensor = {} if mode is None else {"output_size": tuple(mode["size"]),
                                               **({"bit_depth": mode["bit_depth"]} if "bit_depth" in mode else {})}
        except Exception as e:
            cam.close()
            raise CameraError(f"picamera2 cannot list the sensor's modes ({e})") from e
        start_video(cam, "try another lores size, sensor_size or framerate",
                    main={"size": lores, "format": "YUV420"},  # the smallest main allowed: never read
                    lores={"size": lores, "format": cfg.lores_format},
                    sensor=sensor,
                    controls={"FrameRate": float(cfg.framerate)},
                    transform=transform(hflip=int(cfg.hflip), vflip=int(cfg.vflip)),
                    buffer_count=cfg.buffer_count)
        self.sensor_mode = mode
        log.info("picamera2: lores %dx%d %s from sensor mode %s", *lores, cfg.lores_format,
                 None if mode is None else "x".join(map(str, mode["size"])))
        self._cam = cam

    def _read(self) -> tuple[np.ndarray, float | None, Any] | Capture | None:
        try:
            request = self._cam.capture_request(wait=self.cfg.capture_timeout_s)
        except TimeoutError as e:
            raise CameraError(f"{self.description}: no frame within {self.cfg.capture_timeout_s:g} s "
                              "(capture_request timed out: sensor wedged?)", kind="hang") from e
        try:
            lores = request.make_array("lores")  # a copy: the request can go back at once
            metadata = request.get_metadata()
        finally:
            request.release()
        return lores_to_rgb(lores, self.cfg.lores, self.cfg.lores_format), self._frame_time(metadata), None

    def _frame_time(self, metadata: dict[str, Any]) -> float:
        """SensorTimestamp (CLOCK_MONOTONIC ns) mapped onto the board's monotonic clock: the
        board's now minus how long ago the sensor read the frame out."""
        now = self._clock()
        ts = metadata.get("SensorTimestamp") if isinstance(metadata, dict) else None
        if isinstance(ts, int) and not isinstance(ts, bool):
            age = (self._monotonic_ns() - ts) / 1e9
            if 0.0 <= age <= MAX_TIMESTAMP_AGE_S:
                return now - age
        self.untimed_frames += 1
        if self.untimed_frames == 1:
            log.warning("picamera2: a frame without a plausible SensorTimestamp (%r); stamped on arrival", ts)
        return now

    def _interrupt(self) -> None:
        cam = self._cam
        if cam is not None:
            cam.stop()  # a capture blocked in picamera2 returns

    def _close(self) -> None:
        if self._cam is not None:
            try:
                self._cam.stop()
            finally:
                self._cam.close()
                self._cam = None
