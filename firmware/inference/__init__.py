"""Inference backends behind a registry keyed by the manifest's ``decoder`` string.

Adding a new model family (or accelerator) is one new file plus one line here.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from ..config import InferenceConfig
from ..errors import ModelError
from ..models import Manifest, resolve_model
from .base import Detections, Detector
from .runner import ModelRunner

DETECTORS = {"ssd_postprocess": "firmware.inference.detector_ssd:SsdDetector"}

__all__ = ["DETECTORS", "Detections", "Detector", "ModelRunner", "create_detector"]


def create_detector(cfg: InferenceConfig, models_dir: Path, manifest: Manifest) -> Detector:
    """Build the configured person detector: verify the model file, load it, check its contract."""
    model = resolve_model(cfg.detector.model, models_dir, manifest)
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
    content = cls.prepare(model.path.read_bytes(), str(model.path))
    runner = ModelRunner(model, runtime=cfg.runtime, num_threads=cfg.num_threads, delegate=cfg.delegate, content=content)
    return cls(runner, cfg.detector)
