"""Camera backends behind a registry keyed by the config's ``camera.type``.

Backends are imported only when chosen, so picamera2 is never imported off a Pi.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import Imx500CameraConfig, LoadedConfig, ReplayCameraConfig, SyntheticCameraConfig
from .base import Camera, Frame

CAMERAS = {
    "replay": "firmware.camera.replay:ReplayCamera",
    "synthetic": "firmware.camera.synthetic:SyntheticCamera",
    "picamera2": "firmware.camera.picam:PicameraCamera",
    "imx500": "firmware.camera.imx500:Imx500Camera",  # the AI Camera: the detector runs on the sensor
}

__all__ = ["CAMERAS", "Camera", "Frame", "create_camera"]


def create_camera(loaded: LoadedConfig, *, source: Path | None = None, **kwargs: Callable[[], Any]) -> Camera:
    """Build the configured camera; ``source`` overrides a replay camera's input."""
    cfg = loaded.config.camera
    module, cls = CAMERAS[cfg.type].split(":")
    backend = getattr(importlib.import_module(module), cls)
    if isinstance(cfg, ReplayCameraConfig):
        camera: Camera = backend(cfg, source or loaded.resolve(cfg.source), **kwargs)
    elif isinstance(cfg, Imx500CameraConfig):
        fake = _imx500_fake(loaded, cfg)
        if fake is not None and not fake.rig.paced:  # the recording's own timeline, as a fast replay
            kwargs = {"clock": fake.rig.clock, "monotonic_ns": fake.rig.monotonic_ns, **kwargs}  # type: ignore[dict-item]
        camera = backend(cfg, network=_imx500_network(loaded), pose=loaded.config.signals.pose != "off",
                         devices_module=fake, **kwargs)
    elif isinstance(cfg, SyntheticCameraConfig) and cfg.scene is not None:
        camera = backend(cfg, scene_file=loaded.resolve(cfg.scene), **kwargs)
    else:
        camera = backend(cfg, **kwargs)
    return camera


def _imx500_network(loaded: LoadedConfig) -> Path:
    """The .rpk the AI Camera loads: the file of the configured detector model (models/manifest.yaml)."""
    from ..errors import ConfigError, ModelError
    from ..models import load_manifest, resolve_model

    inf = loaded.config.inference
    manifest_dir = loaded.resolve(inf.models_dir)
    try:
        manifest = load_manifest(manifest_dir / "manifest.yaml")
    except ModelError:
        from ..models import DEFAULT_MANIFEST

        manifest = load_manifest(DEFAULT_MANIFEST)
    model = resolve_model(inf.detector.model, manifest_dir, manifest, verify=False)
    if model.entry.accelerator != "imx500":
        raise ConfigError(f"camera.type imx500 runs the detector on the sensor, but inference.detector.model "
                          f"{model.key!r} is a {model.entry.accelerator} model; choose an imx500 model")
    return model.path


def _imx500_fake(loaded: LoadedConfig, cfg: Imx500CameraConfig) -> Any:
    """The shipped stand-in (camera/imx500_fake.py) when the config asks for it (sim boards)."""
    if cfg.fake_footage is None:
        return None
    from .imx500_fake import Imx500Rig, make_module

    return make_module(Imx500Rig(footage=loaded.resolve(cfg.fake_footage), paced=cfg.fake_pacing == "realtime"))
