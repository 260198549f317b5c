"""What a board config needs beyond its own schema, for ``--validate-config``: the models it names
exist in the manifest, are of the right kind and format for where they run (a TFLite file on the
CPU or a Coral, an .rpk on the AI Camera's sensor, a .hef on a Hailo), and which files and Debian
packages the board must have. Problems are errors; needs are what an installer must provide.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .config import Imx500CameraConfig, LoadedConfig
from .errors import ModelError
from .models import DEFAULT_MANIFEST, Manifest, ModelEntry, load_manifest

FORMATS = {"cpu": ".tflite", "edgetpu": ".tflite", "imx500": ".rpk", "hailo": ".hef"}
PACKAGES = {"imx500": "imx500-all", "hailo": "hailo-all", "edgetpu": "libedgetpu1-std"}


@dataclass
class BoardNeeds:
    problems: list[str] = field(default_factory=list)  # the config cannot work: fix it
    needs: list[str] = field(default_factory=list)  # what the board must have (files, packages)


def _manifest(loaded: LoadedConfig) -> tuple[Manifest, Path]:
    d = loaded.resolve(loaded.config.inference.models_dir)
    try:
        return load_manifest(d / "manifest.yaml"), d
    except ModelError:  # a board's /opt/cuecam/models checked on another machine: the shipped manifest
        return load_manifest(DEFAULT_MANIFEST), d


def _file(entry: ModelEntry, models_dir: Path) -> tuple[Path, str]:
    if entry.system_file is not None:
        return Path(entry.system_file), f"apt {entry.package}"
    assert entry.file is not None
    return models_dir / entry.file, "make models / install.sh --models"


def check_board(loaded: LoadedConfig) -> BoardNeeds:
    cfg = loaded.config
    inf = cfg.inference
    out = BoardNeeds()
    manifest, models_dir = _manifest(loaded)

    cam = cfg.camera
    stand_in = isinstance(cam, Imx500CameraConfig) and cam.fake_footage is not None

    def model(key: str, where: str, task: tuple[str, ...], runs_on: str) -> None:
        entry = manifest.models.get(key)
        if entry is None:
            out.problems.append(f"{where}: unknown model {key!r}; models/manifest.yaml lists: "
                                f"{', '.join(sorted(manifest.models))}")
            return
        if entry.task not in task:
            out.problems.append(f"{where}: {key!r} is a {entry.task} model, not {' or '.join(task)}")
        ok_on = {"cpu": ("cpu",), "edgetpu": ("cpu", "edgetpu")}.get(runs_on, (runs_on,))
        if entry.accelerator not in ok_on:
            out.problems.append(f"{where}: {key!r} runs on the {entry.accelerator}, but this board runs it on the "
                                f"{runs_on}")
        path, source = _file(entry, models_dir)
        fmt = FORMATS[entry.accelerator]
        if path.suffix != fmt:
            out.problems.append(f"{where}: {key!r} is {path.name}; {entry.accelerator} models are {fmt} files")
        if stand_in and entry.accelerator == "imx500":
            return  # the stand-in plays a recording of the network's outputs: no .rpk
        here = "present" if path.is_file() else "absent here"
        out.needs.append(f"{where} {key}: {path} ({fmt[1:]}, {source}; {here})")

    model(inf.detector.model, "inference.detector.model", ("person_detection",), inf.delegate)
    if inf.fallback_model is not None:
        model(inf.fallback_model, "inference.fallback_model", ("person_detection",), "cpu")
    if cfg.signals.pose != "off":
        model(cfg.signals.pose_model, "signals.pose_model", ("pose_single", "pose_multi"),
              "edgetpu" if inf.delegate == "edgetpu" else "cpu")
    if inf.delegate in PACKAGES and not stand_in:
        out.needs.append(f"inference.delegate {inf.delegate}: apt {PACKAGES[inf.delegate]}")
    if isinstance(cam, Imx500CameraConfig):
        mode = cam.resolved_mode(cfg.signals.pose != "off")
        pixels = "no pixels: only the network's outputs" if mode == "metadata" else "the lores stream too (pose)"
        where = f"the stand-in (a recording of the network's outputs) on {cam.fake_footage}" if stand_in else "the AI Camera"
        out.needs.append(f"camera imx500 ({mode}, {pixels}): {where}")
    return out
