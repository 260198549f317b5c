"""The model manifest, the verified install from ../shared/models, and run-time verification."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from firmware.errors import ModelError
from firmware.models import (
    DEFAULT_MANIFEST,
    Manifest,
    install,
    load_manifest,
    resolve_model,
    sha256_file,
    verify_file,
)
from tests.conftest import MODELS_DIR, ROOT, SHARED

MANIFEST_PATH = ROOT / "models" / "manifest.yaml"
SSD = "coco_ssd_mobilenet_v1_1.0_quant_2018_06_29.tflite"
LABELS = "coco_labels.txt"


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return load_manifest(MANIFEST_PATH)


@pytest.fixture(scope="module")
def shared_models(manifest: Manifest) -> Path:
    src = SHARED / "models"
    missing = [name for name in manifest.files if not (src / name).is_file()]
    if missing:
        pytest.skip(
            f"{src} lacks {', '.join(missing)}: the shared assets must sit beside this checkout "
            "(see ../shared/ASSETS.md, or set CUECAM_SHARED)"
        )
    return src


def tmp_leftovers(d: Path) -> list[str]:
    return sorted(n for n in os.listdir(d) if n.endswith(".tmp"))


def source_copy(shared_models: Path, dst: Path, *, skip: str | None = None) -> Path:
    """A source folder of symlinks to the shared files (cheap), optionally lacking one."""
    dst.mkdir()
    for f in shared_models.iterdir():
        if f.name != skip:
            (dst / f.name).symlink_to(f)
    return dst


def replace_with_copy(src: Path, name: str) -> Path:
    """Turn src/name into a real file (not a link to ../shared) so the test can change it."""
    p = src / name
    data = p.read_bytes()
    p.unlink()
    p.write_bytes(data)
    return p


# -- the manifest ----------------------------------------------------------------------------------


def test_manifest_loads_and_is_consistent(manifest: Manifest) -> None:
    assert DEFAULT_MANIFEST == MANIFEST_PATH
    assert load_manifest() == manifest
    assert manifest.version == 1
    assert manifest.models, "the manifest lists no models"
    for key, m in manifest.models.items():
        if m.system_file is None:
            assert m.file in manifest.files, f"model {key} refers to unlisted {m.file}"
        else:  # from a Debian package: an absolute path and the package that installs it
            assert m.file is None and m.system_file.startswith("/usr/share/") and m.package, key
        if m.labels is not None:
            assert m.labels in manifest.files, f"model {key} refers to unlisted {m.labels}"
        assert len(m.input.shape) == 4
        assert m.outputs
    assert "ssd_mobilenet_v1" in manifest.models
    ssd = manifest.models["ssd_mobilenet_v1"]
    assert (ssd.file, ssd.labels, ssd.person_class, ssd.task) == (SSD, LABELS, 0, "person_detection")
    # Every listed file is used by some model (no stale entries to install for nothing).
    used = {m.file for m in manifest.models.values() if m.file} | {m.labels for m in manifest.models.values() if m.labels}
    assert used == set(manifest.files)


def test_manifest_checksums_match_the_shared_sha256sums(manifest: Manifest, shared_models: Path) -> None:
    sums = {}
    for line in (shared_models / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        sums[name] = digest
    for name, entry in manifest.files.items():
        assert sums.get(name) == entry.sha256, name


def test_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="manifest not found"):
        load_manifest(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nfiles: [\n")
    with pytest.raises(ModelError, match="invalid model manifest"):
        load_manifest(bad)
    text = MANIFEST_PATH.read_text()
    dangling = tmp_path / "dangling.yaml"
    dangling.write_text(text.replace("    labels: coco_labels.txt", "    labels: other_labels.txt"))
    with pytest.raises(ModelError, match=re.escape("'other_labels.txt', which is not listed")):
        load_manifest(dangling)
    extra = tmp_path / "extra.yaml"
    extra.write_text(text.replace("version: 1\n", "version: 1\nextra: true\n"))
    with pytest.raises(ModelError, match="invalid model manifest"):
        load_manifest(extra)


def test_installed_models_verify(manifest: Manifest, models_dir: Path) -> None:
    for name, entry in manifest.files.items():
        verify_file(models_dir / name, entry)
        assert sha256_file(models_dir / name) == (entry.sha256, entry.size)


# -- install() -------------------------------------------------------------------------------------


def test_install_copies_everything_then_nothing(manifest: Manifest, shared_models: Path, tmp_path: Path) -> None:
    dst = tmp_path / "models"
    copied = install(manifest, shared_models, dst)
    assert sorted(copied) == sorted(manifest.files)
    for name, entry in manifest.files.items():
        f = dst / name
        assert f.is_file() and not f.is_symlink()
        assert f.read_bytes() == (shared_models / name).read_bytes()
        verify_file(f, entry)
    assert tmp_leftovers(dst) == []
    inodes = {name: (dst / name).stat().st_ino for name in manifest.files}

    assert install(manifest, shared_models, dst) == []  # idempotent
    assert {name: (dst / name).stat().st_ino for name in manifest.files} == inodes  # nothing rewritten
    assert sorted(os.listdir(dst)) == sorted(manifest.files)


def test_install_repairs_only_the_damaged_file(manifest: Manifest, shared_models: Path, tmp_path: Path) -> None:
    dst = tmp_path / "models"
    install(manifest, shared_models, dst)
    entry = manifest.files[SSD]
    with open(dst / SSD, "r+b") as f:
        f.truncate(entry.size // 2)
    (dst / LABELS).unlink()
    assert sorted(install(manifest, shared_models, dst)) == sorted([SSD, LABELS])
    verify_file(dst / SSD, entry)
    verify_file(dst / LABELS, manifest.files[LABELS])


@pytest.mark.parametrize("how", ["byte-flipped", "appended", "truncated"])
def test_install_refuses_an_altered_source(manifest: Manifest, shared_models: Path, tmp_path: Path, how: str) -> None:
    src = source_copy(shared_models, tmp_path / "src")
    p = replace_with_copy(src, SSD)
    data = bytearray(p.read_bytes())
    if how == "byte-flipped":
        data[len(data) // 2] ^= 0x01
    elif how == "appended":
        data += b"\0"
    else:
        del data[-1]
    p.write_bytes(bytes(data))
    dst = tmp_path / "dst"
    with pytest.raises(ModelError) as ei:
        install(manifest, src, dst)
    msg = str(ei.value)
    assert SSD in msg
    assert "does not match models/manifest.yaml" in msg
    assert "altered" in msg
    # Nothing half-written: no temp files and no file under the final name.
    assert tmp_leftovers(dst) == []
    assert not (dst / SSD).exists()
    # The shared copy was only read.
    assert sha256_file(shared_models / SSD)[0] == manifest.files[SSD].sha256


def test_install_refuses_an_altered_source_without_touching_an_installed_copy(
    manifest: Manifest, shared_models: Path, tmp_path: Path
) -> None:
    dst = tmp_path / "dst"
    install(manifest, shared_models, dst)
    (dst / LABELS).write_text("person\n")  # damaged install: will be replaced
    src = source_copy(shared_models, tmp_path / "src")
    p = replace_with_copy(src, LABELS)
    p.write_bytes(p.read_bytes().replace(b"person", b"persoN"))
    with pytest.raises(ModelError, match=re.escape(LABELS)):
        install(manifest, src, dst)
    assert (dst / LABELS).read_text() == "person\n"  # the old file stays until a good copy replaces it
    assert tmp_leftovers(dst) == []


def test_install_names_a_missing_source_file(manifest: Manifest, shared_models: Path, tmp_path: Path) -> None:
    src = source_copy(shared_models, tmp_path / "src", skip=LABELS)
    dst = tmp_path / "dst"
    with pytest.raises(ModelError) as ei:
        install(manifest, src, dst)
    msg = str(ei.value)
    assert LABELS in msg
    assert SSD not in msg  # only what is actually missing is named
    assert "ASSETS.md" in msg
    assert str(src) in msg
    assert not dst.exists()  # checked before anything is created


def test_install_from_an_absent_folder_names_every_file(manifest: Manifest, tmp_path: Path) -> None:
    with pytest.raises(ModelError) as ei:
        install(manifest, tmp_path / "nowhere", tmp_path / "dst")
    for name in manifest.files:
        assert name in str(ei.value)
    assert "ASSETS.md" in str(ei.value)


# -- resolve_model() -------------------------------------------------------------------------------


@pytest.fixture()
def tmp_models(manifest: Manifest, models_dir: Path, tmp_path: Path) -> Path:
    """A models folder holding real copies of the SSD model and its labels."""
    d = tmp_path / "models"
    d.mkdir()
    for name in (SSD, LABELS):
        shutil.copyfile(models_dir / name, d / name)
    return d


def test_resolve_model_verifies_and_reads_labels(manifest: Manifest, tmp_models: Path) -> None:
    r = resolve_model("ssd_mobilenet_v1", tmp_models, manifest)
    assert r.key == "ssd_mobilenet_v1"
    assert r.path == tmp_models / SSD
    assert r.entry == manifest.models["ssd_mobilenet_v1"]
    assert r.labels is not None
    assert r.labels[0] == "person"
    assert len(r.labels) >= 80


def test_resolve_model_refuses_a_truncated_file(manifest: Manifest, tmp_models: Path) -> None:
    p = tmp_models / SSD
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelError) as ei:
        resolve_model("ssd_mobilenet_v1", tmp_models, manifest)
    msg = str(ei.value)
    assert str(p) in msg
    assert "altered or truncated" in msg
    assert f"size {len(data) // 3} vs {len(data)}" in msg
    # verify=False is the escape hatch and does not read the file.
    assert resolve_model("ssd_mobilenet_v1", tmp_models, manifest, verify=False).path == p


def test_resolve_model_refuses_a_same_size_altered_file(manifest: Manifest, tmp_models: Path) -> None:
    p = tmp_models / SSD
    data = bytearray(p.read_bytes())
    data[100] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="altered or truncated"):
        resolve_model("ssd_mobilenet_v1", tmp_models, manifest)


def test_resolve_model_refuses_altered_labels(manifest: Manifest, tmp_models: Path) -> None:
    (tmp_models / LABELS).write_text("cat\n")
    with pytest.raises(ModelError, match=re.escape(LABELS)):
        resolve_model("ssd_mobilenet_v1", tmp_models, manifest)


def test_resolve_model_missing_file(manifest: Manifest, tmp_models: Path) -> None:
    with pytest.raises(ModelError) as ei:
        resolve_model("movenet_lightning", tmp_models, manifest)
    assert "movenet_single_pose_lightning_ptq.tflite: missing" in str(ei.value)
    assert "ASSETS.md" in str(ei.value)


def test_resolve_model_unknown_key_lists_the_known_ones(manifest: Manifest, tmp_path: Path) -> None:
    with pytest.raises(ModelError) as ei:
        resolve_model("yolo_v99", tmp_path, manifest)
    msg = str(ei.value)
    assert "unknown model 'yolo_v99'" in msg
    for key in manifest.models:
        assert key in msg


# -- the CLI: python -m firmware.models ------------------------------------------------------------


def run_models(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "firmware.models", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_install_and_verify(manifest: Manifest, shared_models: Path, tmp_path: Path) -> None:
    dst = tmp_path / "models"
    n = len(manifest.files)
    r = run_models("install", "--from", shared_models, "--to", dst)
    assert r.returncode == 0, r.stderr
    assert f"{n} files verified in {dst} ({n} copied)" in r.stdout
    r = run_models("install", "--from", shared_models, "--to", dst)
    assert r.returncode == 0, r.stderr
    assert "(0 copied)" in r.stdout
    r = run_models("verify", "--dir", dst)
    assert r.returncode == 0, r.stderr
    assert f"{n} files verified in {dst}" in r.stdout

    (dst / LABELS).unlink()
    r = run_models("verify", "--dir", dst)
    assert r.returncode != 0
    err_lines = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert err_lines, r.stderr
    assert LABELS in err_lines[0]
    assert "Traceback" not in r.stderr


def test_cli_install_from_a_folder_missing_a_file(shared_models: Path, tmp_path: Path) -> None:
    src = source_copy(shared_models, tmp_path / "src", skip=SSD)
    r = run_models("install", "--from", src, "--to", tmp_path / "dst")
    assert r.returncode != 0
    err_lines = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert err_lines, r.stderr
    assert SSD in err_lines[0]
    assert "ASSETS.md" in err_lines[0]
    assert "Traceback" not in r.stderr


def test_cli_verify_the_repository_models(models_dir: Path) -> None:
    r = run_models("verify")
    assert r.returncode == 0, r.stderr
    assert str(MODELS_DIR) in r.stdout


# -- no face, demographic or re-identification models ---------------------------------------------


@pytest.mark.parametrize("task", ["face_detection", "face_recognition", "face_embedding", "age", "gender", "emotion",
                                  "ethnicity", "demographics", "person_reid", "reid", "gait_recognition",
                                  "Face-Landmarks", "face_attributes"])
def test_face_demographic_and_reid_tasks_are_refused_by_name(tmp_path: Path, task: str) -> None:
    m = tmp_path / "manifest.yaml"
    m.write_text(MANIFEST_PATH.read_text().replace("task: pose_multi", f"task: {task}"))
    with pytest.raises(ModelError) as ei:
        load_manifest(m)
    assert str(ei.value) == (f"{m}: cuecam never runs face, demographic or re-identification models: "
                             f"posenet_mobilenet_v1 declares task {task}")


def test_other_unknown_tasks_get_the_generic_error(tmp_path: Path) -> None:
    m = tmp_path / "manifest.yaml"
    m.write_text(MANIFEST_PATH.read_text().replace("task: pose_multi", "task: segmentation"))
    with pytest.raises(ModelError, match="invalid model manifest") as ei:
        load_manifest(m)
    assert "never runs" not in str(ei.value)
