"""Camera backends behind a registry keyed by the config's ``camera.type``.

Backends are imported only when chosen, so picamera2 is never imported off a Pi.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from ..config import LoadedConfig, ReplayCameraConfig, SyntheticCameraConfig
from .base import Camera, Frame

CAMERAS = {
    "replay": "firmware.camera.replay:ReplayCamera",
    "synthetic": "firmware.camera.synthetic:SyntheticCamera",
    "picamera2": "firmware.camera.picam:PicameraCamera",
}

__all__ = ["CAMERAS", "Camera", "Frame", "create_camera"]


def create_camera(loaded: LoadedConfig, *, source: Path | None = None, **kwargs: Callable[[], float]) -> Camera:
    """Build the configured camera; ``source`` overrides a replay camera's input."""
    cfg = loaded.config.camera
    module, cls = CAMERAS[cfg.type].split(":")
    backend = getattr(importlib.import_module(module), cls)
    if isinstance(cfg, ReplayCameraConfig):
        camera: Camera = backend(cfg, source or loaded.resolve(cfg.source), **kwargs)
    elif isinstance(cfg, SyntheticCameraConfig) and cfg.scene is not None:
        camera = backend(cfg, scene_file=loaded.resolve(cfg.scene), **kwargs)
    else:
        camera = backend(cfg, **kwargs)
    return camera
