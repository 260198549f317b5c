"""Replay a video file or a folder of images as a camera (OpenCV decoding)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..config import ReplayCameraConfig
from ..errors import CameraError
from .base import Camera, Pacer

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
MAX_IMAGES = 100_000
DEFAULT_FPS = 10.0


class ReplayCamera(Camera):
    def __init__(self, cfg: ReplayCameraConfig, source: Path, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock=clock)
        self.cfg = cfg
        self.source = source
        self.live = cfg.pacing == "realtime"
        self.description = f"replay {source}"
        self._cap: Any = None
        self._images: list[Path] = []
        self._pos = 0
        self._pass_frames = 0
        self._pacer: Pacer | None = None
        self.decode_errors = 0

    def _open(self) -> None:
        src = self.source
        if not src.exists():
            raise CameraError(f"replay source {src} does not exist; give a video file or a folder of images (--source)")
        if src.is_dir():
            imgs = sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not imgs:
                raise CameraError(f"replay folder {src} has no .jpg/.jpeg/.png/.bmp images")
            if len(imgs) > MAX_IMAGES:
                raise CameraError(f"replay folder {src} has {len(imgs)} images; the cap is {MAX_IMAGES}")
            self._images = imgs
            self.fixed_size = False  # a folder may hold images of any size
            fps = self.cfg.fps or DEFAULT_FPS
        else:
            cap = cv2.VideoCapture(str(src))
            if not cap.isOpened():
                raise CameraError(f"cannot open {src} as a video (unknown format or corrupt file)")
            ok, first = cap.read()
            if not ok or first is None:
                cap.release()
                raise CameraError(f"{src} contains no decodable video frames (corrupt or not a video)")
            self._check_size(first, src)
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            native = cap.get(cv2.CAP_PROP_FPS)
            fps = self.cfg.fps or (native if native and math.isfinite(native) and 0 < native <= 240 else DEFAULT_FPS)
            self._cap = cap
        self._pacer = Pacer(fps, self.cfg.pacing == "realtime", self._clock)

    def _check_size(self, img: np.ndarray, where: Path) -> None:
        h, w = img.shape[:2]
        if h * w > self.cfg.max_frame_pixels:
            raise CameraError(f"{where}: frame {w}x{h} exceeds camera.max_frame_pixels ({self.cfg.max_frame_pixels})")

    def _next_bgr(self) -> np.ndarray | None:
        if self._cap is not None:
            ok, img = self._cap.read()
            return img if ok else None
        while self._pos < len(self._images):
            p = self._images[self._pos]
            self._pos += 1
            img = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if img is not None:
                self._check_size(img, p)
                return img
            self.decode_errors += 1
            log.warning("replay: skipping %s: not a decodable image", p)
        return None

    def _rewind(self) -> None:
        if self._cap is not None:
            # Reopen rather than seek: seeking is unreliable for some codecs and containers.
            self._cap.release()
            self._cap = cv2.VideoCapture(str(self.source))
        self._pos = 0

    def _read(self) -> tuple[np.ndarray, float | None, Any] | None:
        assert self._pacer is not None
        img = self._next_bgr()
        if img is None and self.cfg.loop:
            if self._pass_frames == 0:
                raise CameraError(f"{self.source}: no decodable frames in a whole pass; stopping replay")
            self._pass_frames = 0
            self._rewind()
            img = self._next_bgr()
        if img is None:
            return None
        self._pass_frames += 1
        t = self._pacer.next()
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB), t, None

    def _close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
