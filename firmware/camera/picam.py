"""Raspberry Pi cameras through picamera2 (imported lazily: it exists only on Raspberry Pi OS).

The camera runs a main stream at the configured resolution and a small lores stream; inference
uses only the lores stream. Each request is released as soon as its lores array is copied out,
so libcamera never runs short of buffers. Capture blocks, so it runs on the camera thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from ..config import PicameraConfig
from ..errors import CameraError
from .base import Camera


class PicameraCamera(Camera):
    def __init__(self, cfg: PicameraConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock=clock)
        self.cfg = cfg
        self.live = True
        self.description = f"picamera2 camera {cfg.camera_num}"
        self._cam: Any = None

    def _open(self) -> None:
        try:
            from libcamera import Transform  # type: ignore[import-not-found]
            from picamera2 import Picamera2  # type: ignore[import-not-found]
        except ImportError as e:
            raise CameraError(
                "picamera2 is not importable: on Raspberry Pi OS run `sudo apt install python3-picamera2` and "
                "create the venv with --system-site-packages (see install.sh); elsewhere use a replay board config"
            ) from e
        try:
            cam = Picamera2(self.cfg.camera_num)
        except (IndexError, RuntimeError) as e:
            raise CameraError(
                f"no camera {self.cfg.camera_num} found ({e}); check the ribbon cable and `rpicam-hello --list-cameras`"
            ) from e
        try:
            config = cam.create_video_configuration(
                main={"size": tuple(self.cfg.resolution), "format": "YUV420"},
                lores={"size": tuple(self.cfg.lores), "format": self.cfg.lores_format},
                controls={"FrameRate": float(self.cfg.framerate)},
                transform=Transform(hflip=int(self.cfg.hflip), vflip=int(self.cfg.vflip)),
                buffer_count=self.cfg.buffer_count,
                encode=None,
            )
            cam.configure(config)
            cam.start()
        except Exception as e:
            cam.close()
            raise CameraError(f"picamera2 rejected the configuration ({e}); try a smaller resolution or lores size") from e
        self._cam = cam

    def _read(self) -> tuple[np.ndarray, float | None, Any] | None:
        request = self._cam.capture_request()
        try:
            lores = request.make_array("lores")  # a copy: the request can go back at once
        finally:
            request.release()
        t = self._clock()
        w, h = self.cfg.lores
        if self.cfg.lores_format == "YUV420":
            # I420 planes: (h * 3/2, w). The width is a multiple of 64, so there is no stride padding.
            rgb = cv2.cvtColor(np.ascontiguousarray(lores[: h * 3 // 2, :w]), cv2.COLOR_YUV2RGB_I420)
        else:
            # picamera2's "RGB888" is stored B, G, R in memory.
            rgb = cv2.cvtColor(np.ascontiguousarray(lores[:h, :w, :3]), cv2.COLOR_BGR2RGB)
        return rgb, t, None

    def _close(self) -> None:
        if self._cam is not None:
            try:
                self._cam.stop()
            finally:
                self._cam.close()
                self._cam = None
