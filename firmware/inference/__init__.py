"""Inference backends behind a registry keyed by the manifest's ``decoder`` string.

Adding a new model family (or accelerator) is one new file plus one line here.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from ..config import InferenceConfig
from ..errors import ModelError
from ..models import Manifest, resolve_model
from .base import REAL_DEVICES, Detections, Detector, Devices
from .runner import ModelRunner

DETECTORS = {
    "ssd_postprocess": "firmware.inference.detector_ssd:SsdDetector",
    "imx500_ssd": "firmware.camera.imx500:Imx500Detector",  # the network runs on the AI Camera's sensor
    "hailo_nms": "firmware.inference.detector_hailo:HailoDetector",
}
ACCELERATORS = ("imx500", "hailo")  # delegates that are their own runtime (no TFLite interpreter)

__all__ = ["ACCELERATORS", "DETECTORS", "Detections", "Detector", "Devices", "ModelRunner", "create_detector"]


def create_detector(cfg: InferenceConfig, models_dir: Path, manifest: Manifest,
                    devices: Devices = REAL_DEVICES) -> Detector:
    """Build the configured person detector: verify the model file, load it, check its contract."""
    key = cfg.detector.model
    entry = manifest.models.get(key)
    acc = None if entry is None else entry.accelerator
    if acc in ACCELERATORS and cfg.delegate != acc:
        raise ModelError(f"model {key!r} runs on the {acc}; set inference.delegate: {acc} or choose a CPU model")
    if acc is not None and cfg.delegate in ACCELERATORS and acc != cfg.delegate:
        raise ModelError(f"inference.delegate is {cfg.delegate} but model {key!r} is built for {acc}; choose "
                         f"a {cfg.delegate} model from models/manifest.yaml")
    # the IMX500's network is loaded onto the sensor by the camera (the detector only decodes); a
    # stand-in Hailo needs no HEF
    model = resolve_model(key, models_dir, manifest,
                          verify=not (acc == "imx500" or (acc == "hailo" and devices.hailo is not None)))
    if model.entry.task != "person_detection":
        raise ModelError(
            f"inference.detector.model is {model.key!r}, a {model.entry.task} model; the detector needs a "
            f"person_detection model such as ssd_mobilenet_v1"
        )
    target = DETECTORS.get(model.entry.decoder)
    if target is None:
        raise ModelError(f"model {model.key!r} uses decoder {model.entry.decoder!r}; known: {', '.join(DETECTORS)}")
    module, name = target.split(":")
    cls: type[Detector] = getattr(importlib.import_module(module), name)
    return cls.build(model, cfg, devices)
