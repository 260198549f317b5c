"""The model manifest: which model files exist, their checksums, licences and contracts.

``python -m firmware.models install --from ../shared/models`` copies every file the manifest names
into the models directory, verifying size and sha256 (atomically: temp file, fsync, rename), and
is idempotent. At run time the firmware verifies a model against the manifest before loading it,
so an altered or truncated file is refused with a clear message instead of producing nonsense.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ModelError
from .fsutil import fsync_dir

MAX_MODEL_BYTES = 256 * 1024 * 1024
MAX_MANIFEST_BYTES = 256 * 1024
DEFAULT_MANIFEST = Path(__file__).resolve().parent.parent / "models" / "manifest.yaml"
ASSETS_HINT = "get it from the shared assets (../shared/models, see ../shared/ASSETS.md) and run `make models`"
# Tasks cuecam refuses outright (docs/signals.md: no faces, no personal characteristics, no
# recognition). Any other face_* task is refused as well.
FORBIDDEN_TASKS = frozenset({
    "face_detection", "face_landmarks", "face_recognition", "face_embedding", "age", "gender", "emotion",
    "ethnicity", "demographics", "person_reid", "reid", "gait_recognition",
})


class ForbiddenTaskError(ValueError):
    """A manifest entry declares a face, demographic or re-identification task."""


def _forbidden(task: Any) -> bool:
    t = str(task).strip().lower().replace("-", "_").replace(" ", "_")
    return t in FORBIDDEN_TASKS or t == "face" or t.startswith(("face_", "faces_"))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class FileEntry(_Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=1, le=MAX_MODEL_BYTES)
    license: str
    source: str


class InputSpec(_Strict):
    shape: Annotated[list[int], Field(min_length=4, max_length=4)]
    dtype: Literal["uint8", "int8", "float32"]
    # The real-valued range the model was trained on; pixels 0..255 are mapped onto it.
    range: Annotated[list[float], Field(min_length=2, max_length=2)]


class ModelEntry(_Strict):
    file: str | None = None  # one of the files above (installed by `make models`)...
    # ...or a file a Debian package installs (the IMX500's .rpk networks, Hailo's .hef models):
    # verified by apt, not by us; ``package`` says which one to install when it is missing.
    system_file: str | None = Field(default=None, pattern=r"^/")
    package: str | None = None
    task: Literal["person_detection", "pose_single", "pose_multi"]
    decoder: str
    accelerator: Literal["cpu", "edgetpu", "imx500", "hailo"]
    input: InputSpec
    outputs: list[str]
    labels: str | None = None
    person_class: int | None = None

    @model_validator(mode="after")
    def _one_file(self) -> ModelEntry:
        if (self.file is None) == (self.system_file is None):
            raise ValueError("a model names exactly one of file (shipped) and system_file (from a package)")
        if self.system_file is not None and self.package is None:
            raise ValueError("a system_file model names the package that installs it")
        return self


class Manifest(_Strict):
    version: Literal[1]
    files: dict[str, FileEntry]
    models: dict[str, ModelEntry]

    @model_validator(mode="before")
    @classmethod
    def _no_forbidden_tasks(cls, data: Any) -> Any:
        """Refuse face/demographic/re-identification models by name, before the generic task check."""
        models = data.get("models") if isinstance(data, dict) else None
        if isinstance(models, dict):
            for name, entry in models.items():
                task = entry.get("task") if isinstance(entry, dict) else None
                if task is not None and _forbidden(task):
                    raise ForbiddenTaskError(
                        f"cuecam never runs face, demographic or re-identification models: {name} declares task {task}")
        return data


@dataclass(frozen=True)
class ResolvedModel:
    key: str
    entry: ModelEntry
    path: Path
    labels: list[str] | None


def load_manifest(path: str | Path = DEFAULT_MANIFEST) -> Manifest:
    p = Path(path)
    try:
        if p.stat().st_size > MAX_MANIFEST_BYTES:
            raise ModelError(f"{p}: manifest larger than {MAX_MANIFEST_BYTES} bytes")
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
        manifest = Manifest.model_validate(data)
    except FileNotFoundError as e:
        raise ModelError(f"{p}: model manifest not found (it ships in the repository's models/)") from e
    except ValidationError as e:
        for err in e.errors():
            if isinstance(err.get("ctx", {}).get("error"), ForbiddenTaskError):
                raise ModelError(f"{p}: {err['ctx']['error']}") from e
        raise ModelError(f"{p}: invalid model manifest: {e}") from e
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ModelError(f"{p}: invalid model manifest: {e}") from e
    for key, m in manifest.models.items():
        for f in (m.file, m.labels):
            if f is not None and f not in manifest.files:
                raise ModelError(f"{p}: model {key!r} refers to {f!r}, which is not listed under files:")
    return manifest


def sha256_file(path: Path, limit: int = MAX_MODEL_BYTES) -> tuple[str, int]:
    """Stream a file through sha256; refuse files over ``limit`` bytes."""
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            n += len(chunk)
            if n > limit:
                raise ModelError(f"{path}: larger than the {limit}-byte cap")
            h.update(chunk)
    return h.hexdigest(), n


def verify_file(path: Path, entry: FileEntry) -> None:
    if not path.is_file():
        raise ModelError(f"{path}: missing; {ASSETS_HINT}")
    digest, size = sha256_file(path, limit=max(entry.size, 1))
    if size != entry.size or digest != entry.sha256:
        raise ModelError(
            f"{path}: does not match models/manifest.yaml (size {size} vs {entry.size}, sha256 {digest[:12]}… vs "
            f"{entry.sha256[:12]}…); the file is altered or truncated: {ASSETS_HINT}"
        )


def resolve_model(key: str, models_dir: Path, manifest: Manifest, *, verify: bool = True) -> ResolvedModel:
    """Find a model by manifest key, verify its file (and labels), and return where it is."""
    if key not in manifest.models:
        raise ModelError(f"unknown model {key!r}; models/manifest.yaml lists: {', '.join(sorted(manifest.models))}")
    entry = manifest.models[key]
    if entry.system_file is not None:
        path = Path(entry.system_file)
        if verify and not path.is_file():
            raise ModelError(f"{path}: missing; it comes with the Debian package {entry.package} "
                             f"(`sudo apt install {entry.package}`, or install.sh with this board config)")
    else:
        assert entry.file is not None
        path = models_dir / entry.file
        if verify:
            verify_file(path, manifest.files[entry.file])
    labels = None
    if entry.labels:
        lp = models_dir / entry.labels
        if verify:
            verify_file(lp, manifest.files[entry.labels])
        labels = lp.read_text(encoding="utf-8").splitlines()
    return ResolvedModel(key, entry, path, labels)


def _atomic_copy(src: Path, dst: Path, entry: FileEntry) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    try:
        h = hashlib.sha256()
        n = 0
        with os.fdopen(fd, "wb") as out, open(src, "rb") as f:
            while chunk := f.read(1 << 20):
                n += len(chunk)
                if n > entry.size:
                    break
                h.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if n != entry.size or h.hexdigest() != entry.sha256:
            raise ModelError(
                f"{src}: does not match models/manifest.yaml (size {n} vs {entry.size}); the shared copy is altered: "
                "restore it from ../shared/ASSETS.md's upstream"
            )
        os.replace(tmp, dst)
        fsync_dir(dst.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def install(manifest: Manifest, src_dir: Path, dst_dir: Path) -> list[str]:
    """Copy every manifest file from src_dir into dst_dir, verified; return what was copied."""
    missing = [name for name in manifest.files if not (src_dir / name).is_file()]
    if missing:
        raise ModelError(
            f"missing from {src_dir}: {', '.join(missing)}; these come from the shared assets "
            "(see ../shared/ASSETS.md for each file's upstream) and are never committed"
        )
    dst_dir.mkdir(parents=True, exist_ok=True)
    copied = []
    for name, entry in manifest.files.items():
        dst = dst_dir / name
        try:
            verify_file(dst, entry)
            continue  # already installed and intact
        except ModelError:
            pass
        _atomic_copy(src_dir / name, dst, entry)
        copied.append(name)
    return copied


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m firmware.models", description="Install and verify cuecam model files.")
    ap.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    sub = ap.add_subparsers(dest="cmd", required=True)
    ins = sub.add_parser("install", help="copy model files from a source folder and verify them")
    ins.add_argument("--from", dest="src", type=Path, required=True)
    ins.add_argument("--to", dest="dst", type=Path, default=None, help="default: the manifest's folder")
    ver = sub.add_parser("verify", help="verify installed model files against the manifest")
    ver.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args(argv)
    try:
        manifest = load_manifest(args.manifest)
        if args.cmd == "install":
            dst = args.dst or args.manifest.parent
            copied = install(manifest, args.src, dst)
            print(f"models: {len(manifest.files)} files verified in {dst} ({len(copied)} copied)")
        else:
            d = args.dir or args.manifest.parent
            for name, entry in manifest.files.items():
                verify_file(d / name, entry)
            print(f"models: {len(manifest.files)} files verified in {d}")
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
