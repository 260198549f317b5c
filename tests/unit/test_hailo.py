"""The Hailo backend against the shipped stand-in (firmware/inference/hailo_fake.py): HailoRT's
per-class layout, the input contract, and the driver/library version check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from firmware.config import ConfigError, InferenceConfig, parse_config
from firmware.errors import InferenceError, ModelError
from firmware.inference import Devices, create_detector
from firmware.inference.detector_hailo import HailoDetector, HailoRunner, _read_driver_version, check_versions
from firmware.inference.hailo_fake import HailoRig, make_module
from firmware.models import load_manifest, resolve_model

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = load_manifest(ROOT / "models" / "manifest.yaml")


def _hailo(rig: HailoRig, **det) -> HailoDetector:
    d = create_detector(InferenceConfig(delegate="hailo", detector={"model": "hailo_yolov8s_h8l", **det}),
                        ROOT / "models", MANIFEST, Devices(hailo=make_module(rig)))
    assert isinstance(d, HailoDetector)
    return d


def test_the_stand_in_returns_hailorts_per_class_rows(models_dir, shared_media):
    import cv2

    rig = HailoRig(models_dir=models_dir)
    h = make_module(rig).Hailo("/usr/share/hailo-models/yolov8s_h8l.hef")
    assert h.get_input_shape() == (640, 640, 3)
    img = cv2.resize(cv2.cvtColor(cv2.imread(str(shared_media / "test_couple.jpg")), cv2.COLOR_BGR2RGB), (640, 640))
    out = h.run(img)
    assert isinstance(out, list) and len(out) == 80
    assert all(a.dtype == np.float32 and a.ndim == 2 and a.shape[1] == 5 for a in out)
    people = out[0]
    assert (people[:, 4] >= 0.5).sum() >= 2  # the couple
    assert ((people[:, :4] >= 0) & (people[:, :4] <= 1)).all()
    assert (people[:, 2] > people[:, 0]).all() and (people[:, 3] > people[:, 1]).all()  # y0 x0 y1 x1
    h.close()
    assert rig.closed == 1


def test_the_detector_reads_the_person_rows_down_to_the_floor(models_dir, shared_media):
    import cv2

    img = cv2.cvtColor(cv2.imread(str(shared_media / "test_couple.jpg")), cv2.COLOR_BGR2RGB)
    rig = HailoRig(models_dir=models_dir)
    for floor in (0.25, 0.5):
        det = _hailo(rig, score_threshold=floor)
        d = det.detect(img)  # any size: resized to the HEF's 640 x 640 by the base class
        assert d.above(0.5) >= 2 and (d.scores >= floor).all()
        raw = rig.ssd().all_classes(0.2, 100)
        assert len(d) <= int(((raw[2] == 0) & (raw[1] >= floor)).sum())
        det.close()
    assert det.runner.runtime == "hailort" and det.runner.delegate == "hailo"
    assert rig.opened == rig.closed == 2


@pytest.mark.parametrize(("driver", "library"), [("4.18.0", "4.19.0"), ("4.20.0", "4.20.1"), ("4.23.0", "4.22.0")])
def test_a_version_mismatch_names_both_versions(models_dir, driver, library):
    # checked before the device is opened...
    with pytest.raises(InferenceError, match=rf"driver {driver}, library {library}"):
        _hailo(HailoRig(models_dir=models_dir, driver=driver, library=library))
    # ...and recognised in HailoRT's own message when only the device knows (versions unreadable)
    rig = HailoRig(models_dir=models_dir, driver=driver, library=library)
    model = resolve_model("hailo_yolov8s_h8l", ROOT / "models", MANIFEST, verify=False)
    with pytest.raises(InferenceError, match=rf"driver {driver}, library {library} \(reported by HailoRT\)"):
        HailoRunner(model, module=make_module(rig), driver_version=lambda: None, library_version=lambda: None)
    check_versions(driver, None)  # unknown: nothing to compare
    check_versions(None, library)


def test_the_driver_version_comes_from_sysfs(tmp_path):
    v = tmp_path / "version"
    assert _read_driver_version(v) is None
    v.write_text("4.20.0\n")
    assert _read_driver_version(v) == "4.20.0"


def test_a_hef_that_does_not_match_its_manifest_entry_is_refused(models_dir):
    entry = MANIFEST.models["hailo_yolov8s_h8l"].model_copy(update={"input": MANIFEST.models["ssd_mobilenet_v1"].input})
    model = resolve_model("hailo_yolov8s_h8l", ROOT / "models", MANIFEST, verify=False)
    model = type(model)(model.key, entry, model.path, None)
    rig = HailoRig(models_dir=models_dir)
    with pytest.raises(ModelError, match="does not match its manifest entry"):
        HailoRunner(model, module=make_module(rig))
    assert rig.opened == rig.closed == 1  # released


def test_without_picamera2_the_hailo_says_what_to_install():
    model = resolve_model("hailo_yolov8s_h8l", ROOT / "models", MANIFEST, verify=False)
    with pytest.raises(InferenceError, match="hailo-all"):
        HailoRunner(model)


def test_board_configs_say_what_a_hailo_needs():
    base = (ROOT / "board_configs" / "rpi5-hailo.yaml").read_text()
    assert parse_config(base).inference.delegate == "hailo"
    with pytest.raises(ConfigError, match="Raspberry Pi 5"):
        parse_config(base.replace("kind: rpi5-hailo", "kind: rpi4"))
    with pytest.raises(ModelError, match="runs on the hailo"):
        create_detector(InferenceConfig(detector={"model": "hailo_yolov8s_h8l"}), ROOT / "models", MANIFEST)
    with pytest.raises(ModelError, match="choose a hailo model"):
        create_detector(InferenceConfig(delegate="hailo"), ROOT / "models", MANIFEST)
