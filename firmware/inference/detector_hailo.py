"""Person detection on a Hailo-8L / Hailo-8 (Raspberry Pi AI Kit, AI HAT+) with a HEF whose NMS runs
on the device (manifest decoder ``hailo_nms``).

picamera2's ``picamera2.devices.Hailo`` (imported lazily: it exists only on Raspberry Pi OS, apt
``hailo-all``) wraps HailoRT: ``Hailo(hef)``, ``get_input_shape()`` (height, width, channels) and
``run(frame)`` on an RGB uint8 frame of that size (the base class resizes the lores frame to it).
A HEF with NMS built in returns one array per class of rows ``[y0, x0, y1, x1, score]``,
normalized; the person class's rows are the candidates, and the base class applies the score
floor, the plausibility filter and the cap as for every detector. The HEF's own NMS keeps rows
from its compiled score threshold (0.2 to 0.25 for the Raspberry Pi models) up.

HailoRT refuses to run when the kernel driver (``hailo_pci``) and the user-space library differ
even in the patch version ("Driver version (4.18.0) is different from library version (4.19.0)").
That is the commonest failure after an ``apt upgrade``, so it is checked before the device is
opened and recognised in HailoRT's own error: either way the detector fails to load with both
versions in the message, which /health shows, and the board runs ``inference.fallback_model`` on
the CPU (as when a Coral is missing), trying the Hailo again every ``inference.retry_primary_s``.

The Hailo module is a constructor argument (``with_module``), so the tests run this backend against
``inference.hailo_fake``, which returns HailoRT's layout from a real model run.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ..config import DetectorConfig, InferenceConfig
from ..errors import InferenceError, ModelError
from ..models import ResolvedModel
from .base import REAL_DEVICES, Detector, Devices

HAILO_PACKAGE = "hailo-all"
DRIVER_VERSION = Path("/sys/module/hailo_pci/version")
_MISMATCH = re.compile(r"Driver version \(([\d.]+)\) is different from library version \(([\d.]+)\)")


def _read_driver_version(path: Path = DRIVER_VERSION) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip() or None
    except OSError:
        return None


def _library_version() -> str | None:
    try:
        import hailo_platform  # type: ignore[import-not-found]
    except ImportError:
        return None
    v = getattr(hailo_platform, "__version__", None)
    return str(v) if v else None


def mismatch_error(driver: str, library: str, detail: str = "") -> InferenceError:
    return InferenceError(
        f"HailoRT version mismatch: driver {driver}, library {library}{detail}; HailoRT runs only when they are "
        f"the same version: `sudo apt install --reinstall {HAILO_PACKAGE}` (or the hailort and hailort-pcie-driver "
        "packages of one version) and reboot")


def check_versions(driver: str | None, library: str | None) -> None:
    """InferenceError when both versions are known and differ (HailoRT would refuse to run)."""
    if driver is not None and library is not None and driver != library:
        raise mismatch_error(driver, library)


class HailoRunner:
    """The ``Runner`` of a HEF on a Hailo device, through picamera2's ``Hailo`` wrapper."""

    runtime = "hailort"
    delegate = "hailo"

    def __init__(self, model: ResolvedModel, *, module: ModuleType | None = None,
                 driver_version: Callable[[], str | None] = _read_driver_version,
                 library_version: Callable[[], str | None] | None = None) -> None:
        self.model = model
        hailo_cls = self._import(module)
        lib = library_version or (getattr(module, "library_version", None) if module is not None else _library_version)
        self.driver_version = driver_version()
        self.library_version = lib() if lib is not None else None
        check_versions(self.driver_version, self.library_version)
        try:
            self._hailo = hailo_cls(str(model.path))
        except Exception as e:  # HailoRTException and friends: their text is all there is
            m = _MISMATCH.search(str(e))
            if m:
                raise mismatch_error(m.group(1), m.group(2), " (reported by HailoRT)") from e
            raise InferenceError(f"the Hailo device would not load {model.path.name} ({e}); check "
                                 "`hailortcli fw-control identify` and that /dev/hailo0 is readable by the service "
                                 "(group of the udev rule, install.sh)") from e
        shape = tuple(int(v) for v in self._hailo.get_input_shape())  # (height, width, channels)
        spec = model.entry.input.shape
        if len(shape) != 3 or (1, *shape) != tuple(spec):
            self.close()
            raise ModelError(f"{model.path}: the HEF's input is {list(shape)} but models/manifest.yaml says "
                             f"{spec[1:]} for {model.key!r}; the file does not match its manifest entry")
        self.info = {"hailort_driver": self.driver_version, "hailort_library": self.library_version}
        self.input_shape: tuple[int, ...] = (1, *shape)
        self.input_size = (shape[1], shape[0])
        self.last: Any = None

    @staticmethod
    def _import(module: ModuleType | None) -> Any:
        if module is not None:
            return module.Hailo
        try:
            from picamera2.devices import Hailo  # type: ignore[import-not-found]
        except ImportError as e:
            raise InferenceError(f"picamera2's Hailo support is not importable ({e}): on Raspberry Pi OS `sudo apt "
                                 f"install {HAILO_PACKAGE} python3-picamera2` and a venv with --system-site-packages "
                                 "(install.sh does both for a Hailo board config)") from e
        return Hailo

    def invoke(self, pixels: np.ndarray) -> None:
        if pixels.dtype != np.uint8 or pixels.shape != self.input_shape[1:]:
            raise ValueError(f"expected uint8 {self.input_shape[1:]}, got {pixels.dtype} {pixels.shape}")
        self.last = self._hailo.run(np.ascontiguousarray(pixels))

    def close(self) -> None:
        h, self._hailo = getattr(self, "_hailo", None), None
        if h is not None:
            h.close()


class HailoDetector(Detector):
    runner: HailoRunner

    @classmethod
    def build(cls, model: ResolvedModel, cfg: InferenceConfig, devices: Devices = REAL_DEVICES) -> Detector:
        if devices.hailo is not None:  # a stand-in: its versions, not this machine's
            return cls(HailoRunner(model, module=devices.hailo, driver_version=devices.hailo.driver_version),
                       cfg.detector)
        return cls(HailoRunner(model), cfg.detector)

    def __init__(self, runner: HailoRunner, cfg: DetectorConfig) -> None:
        super().__init__(runner, cfg)

    def _check_outputs(self) -> None:
        entry = self.runner.model.entry
        if entry.outputs != ["nms_by_class"] or entry.person_class is None:
            self.runner.close()
            raise ModelError(f"{self.runner.model.key}: the hailo_nms decoder reads HEFs with NMS on the device "
                             f"(outputs [nms_by_class] and a person_class; manifest: {entry.outputs})")
        self.person_class = entry.person_class

    def _decode(self) -> tuple[np.ndarray, np.ndarray]:
        out = self.runner.last
        if isinstance(out, dict):  # several output layers: the NMS layer is the only one we read
            out = next(iter(out.values()))
        if out is None or len(out) <= self.person_class:
            raise InferenceError(f"the HEF returned {0 if out is None else len(out)} classes; no person class "
                                 f"{self.person_class}")
        rows = np.asarray(out[self.person_class], np.float32).reshape(-1, 5)
        rows = rows[rows[:, 4] >= self.cfg.score_threshold]
        return rows[:, [1, 0, 3, 2]], rows[:, 4]

    def close(self) -> None:
        self.runner.close()
