"""Inference runner contract, run against every TFLite runtime installed on this machine."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from firmware.config import DetectorConfig, InferenceConfig
from firmware.errors import InferenceError, ModelError
from firmware.inference import create_detector
from firmware.inference.detector_ssd import SsdDetector
from firmware.inference.runner import ModelRunner, _input_lut, available_runtimes
from firmware.models import load_manifest, resolve_model
from firmware.tracking.tracker import iou_matrix

RUNTIMES = available_runtimes()


@pytest.fixture(params=RUNTIMES or ["none"])
def runtime(request):
    if request.param == "none":
        pytest.fail("no TFLite runtime importable: `pip install ai-edge-litert`")
    return request.param


@pytest.fixture(scope="module")
def manifest(models_dir):
    return load_manifest(models_dir / "manifest.yaml")


def _rgb(path):
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def test_litert_is_installed_and_preferred():
    assert RUNTIMES and RUNTIMES[0] == "litert"


def _ssd(runtime, manifest, models_dir, **detector):
    cfg = InferenceConfig(runtime=runtime, threads=2, detector=DetectorConfig(**detector))
    return create_detector(cfg, models_dir, manifest)


def test_ssd_finds_the_couple(runtime, manifest, models_dir, shared_media):
    det = _ssd(runtime, manifest, models_dir, score_threshold=0.5)
    out = det.detect(_rgb(shared_media / "test_couple.jpg"))
    assert det.runner.runtime == runtime
    assert len(out) == 2  # two people standing, full body
    assert out.boxes.dtype == np.float32 and out.boxes.shape == (2, 4)
    assert (out.boxes[:, 2] > out.boxes[:, 0]).all() and (out.scores >= 0.5).all()
    assert not out.capped and out.infer_ms > 0


def test_max_detections_caps_and_reports_it(runtime, manifest, models_dir, shared_media):
    img = _rgb(shared_media / "basketball1.png")
    full = _ssd(runtime, manifest, models_dir, score_threshold=0.3).detect(img)
    assert len(full) >= 2 and not full.capped
    one = _ssd(runtime, manifest, models_dir, score_threshold=0.3, max_detections=1).detect(img)
    assert len(one) == 1 and one.capped and one.scores[0] == full.scores.max()


def test_configured_noise_worsens_the_real_detections_the_same_way_for_a_seed(runtime, manifest, models_dir, shared_media):
    """inference.detector.noise (sim boards): seeded misses, jitter, weak scores and false
    positives on the real detector's output; the same seed gives the same frames."""
    from firmware.config import DetectorNoiseConfig

    img = _rgb(shared_media / "test_couple.jpg")
    clean = _ssd(runtime, manifest, models_dir, score_threshold=0.5).detect(img)

    def frames(seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
        noise = DetectorNoiseConfig(seed=seed, miss=0.3, false_positives=1.0)
        det = _ssd(runtime, manifest, models_dir, score_threshold=0.25, noise=noise)
        return [(d.boxes, d.scores) for d in (det.detect(img) for _ in range(40))]

    a, b, c = frames(1), frames(1), frames(2)
    assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(a, b, strict=True))
    assert any(not np.array_equal(x[0], y[0]) for x, y in zip(a, c, strict=True))
    people = [int((iou_matrix(boxes, clean.boxes).max(axis=1, initial=0.0) >= 0.5).sum()) for boxes, _ in a]
    assert 0.5 * 2 * 40 < sum(people) < 0.85 * 2 * 40  # about 30 % of the two people missed (bursts too)
    assert sum(len(boxes) - n for (boxes, _), n in zip(a, people, strict=True)) >= 20  # false positives, ~1 a frame
    for boxes, scores in a:
        assert (scores >= 0.25).all() and ((boxes >= 0) & (boxes <= 1)).all()


def _builtin_people(runner: ModelRunner, image: np.ndarray, person_class: int, score: float) -> tuple[np.ndarray, np.ndarray]:
    """The person boxes of the model's own TFLite_Detection_PostProcess (at most 10 boxes of any class)."""
    boxes, classes, scores, count = (o[0] for o in runner.run(cv2.resize(image, runner.input_size)))
    n = int(count if np.ndim(count) == 0 else count[0])
    keep = (np.rint(classes[:n]) == person_class) & (scores[:n] >= score)
    return np.clip(boxes[:n][keep][:, [1, 0, 3, 2]], 0.0, 1.0), scores[:n][keep]


def test_raw_decoding_finds_what_the_models_own_postprocessing_finds(runtime, manifest, models_dir, shared_media):
    """Our decoding of the box encodings and person scores (anchors, scales and NMS threshold read
    from the model) agrees with the model's own post-processing op: every person box it returns
    at 0.5 and above is one of ours, at the same score, on 80 frames of vtest.avi (the width and
    nesting filters off: they drop some of the op's boxes on purpose)."""
    from firmware.tracking.tracker import iou_matrix

    model = resolve_model("ssd_mobilenet_v1", models_dir, manifest)
    plain = ModelRunner(model, runtime=runtime, num_threads=2)
    det = _ssd(runtime, manifest, models_dir, score_threshold=0.25, max_aspect=10.0, max_contained=None)
    cap = cv2.VideoCapture(str(shared_media / "vtest.avi"))
    compared = 0
    try:
        for i in range(800):
            ok, bgr = cap.read()
            if not ok:
                break
            if i % 10:
                continue
            img = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            theirs, their_scores = _builtin_people(plain, img, model.entry.person_class, 0.5)
            ours = det.detect(img)
            if not len(theirs):
                continue
            m = iou_matrix(theirs.astype(np.float64), ours.boxes.astype(np.float64))
            best = m.argmax(axis=1)
            assert (m.max(axis=1) >= 0.99).all(), (i, m.max(axis=1))
            assert np.abs(ours.scores[best] - their_scores).max() <= 0.01
            compared += len(theirs)
    finally:
        cap.release()
    assert compared >= 300


def test_crowded_frames_are_not_cut_at_the_models_ten_boxes(runtime, manifest, models_dir, shared_media):
    """The model's own op returns 10 boxes over all 90 classes; our decoding returns every person
    candidate: on vtest.avi often more than 10 per frame."""
    det = _ssd(runtime, manifest, models_dir, score_threshold=0.3)
    cap = cv2.VideoCapture(str(shared_media / "vtest.avi"))
    counts = []
    try:
        for _ in range(60):
            ok, bgr = cap.read()
            if not ok:
                break
            out = det.detect(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            assert not out.capped
            counts.append(len(out))
    finally:
        cap.release()
    assert max(counts) > 10 and np.mean(counts) > 10


def test_boxes_wider_than_a_person_are_dropped(runtime, manifest, models_dir, shared_media):
    """SSD's largest anchors fire 'person' on whole groups: boxes far wider than tall are not one
    person (max_aspect), whatever their score (frame 200 of vtest.avi has several)."""
    cap = cv2.VideoCapture(str(shared_media / "vtest.avi"))
    try:
        for _ in range(200):
            ok, bgr = cap.read()
            assert ok
    finally:
        cap.release()
    img = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    h, w = img.shape[:2]
    loose = _ssd(runtime, manifest, models_dir, score_threshold=0.25, max_aspect=10.0).detect(img)
    strict = _ssd(runtime, manifest, models_dir, score_threshold=0.25).detect(img)
    aspect = (loose.boxes[:, 2] - loose.boxes[:, 0]) * w / ((loose.boxes[:, 3] - loose.boxes[:, 1]) * h)
    assert (aspect > 1.2).any()
    assert len(strict) == int((aspect <= 1.2).sum())
    sa = (strict.boxes[:, 2] - strict.boxes[:, 0]) * w / ((strict.boxes[:, 3] - strict.boxes[:, 1]) * h)
    assert (sa <= 1.2 + 1e-6).all()


def test_pose_models_load_with_their_contract(runtime, manifest, models_dir, shared_media):
    movenet = ModelRunner(resolve_model("movenet_lightning", models_dir, manifest), runtime=runtime)
    x = cv2.resize(_rgb(shared_media / "test_couple.jpg"), movenet.input_size)
    (kp,) = movenet.run(x)
    assert kp.shape == (1, 1, 17, 3) and kp.dtype == np.float32
    assert ((kp[..., :2] >= 0) & (kp[..., :2] <= 1)).all()
    posenet = ModelRunner(resolve_model("posenet_mobilenet_v1", models_dir, manifest), runtime=runtime)
    outs = posenet.run(np.zeros((353, 481, 3), np.uint8))
    assert [o.shape for o in outs] == [(1, 23, 31, 17), (1, 23, 31, 34), (1, 23, 31, 64)]
    assert all(o.dtype == np.float32 for o in outs)  # dequantized


def test_edgetpu_model_is_refused_on_the_cpu(runtime, manifest, models_dir):
    with pytest.raises(ModelError, match="compiled for the Edge TPU"):
        ModelRunner(resolve_model("movenet_lightning_edgetpu", models_dir, manifest), runtime=runtime)


def test_edgetpu_delegate_missing_is_a_clear_error(runtime, manifest, models_dir):
    with pytest.raises(InferenceError, match="libedgetpu1-std"):
        ModelRunner(resolve_model("ssd_mobilenet_v1", models_dir, manifest), runtime=runtime, delegate="edgetpu")


def test_an_ssd_runner_without_its_raw_outputs_is_refused(runtime, manifest, models_dir):
    runner = ModelRunner(resolve_model("ssd_mobilenet_v1", models_dir, manifest), runtime=runtime)
    with pytest.raises(ModelError, match="without the raw SSD outputs"):
        SsdDetector(runner, DetectorConfig())


def test_a_pose_model_is_refused_as_the_detector(manifest, models_dir):
    cfg = InferenceConfig(detector=DetectorConfig(model="movenet_lightning"))
    with pytest.raises(ModelError, match="pose_single model"):
        create_detector(cfg, models_dir, manifest)


def test_model_whose_outputs_do_not_match_the_decoder_is_refused(models_dir, tmp_path):
    """A file that passes its manifest entry but is not an SSD: refused before it runs."""
    shutil.copy(models_dir / "movenet_single_pose_lightning_ptq.tflite", tmp_path)
    shutil.copy(models_dir / "coco_labels.txt", tmp_path)
    text = (models_dir / "manifest.yaml").read_text()
    text = text.replace(
        "file: coco_ssd_mobilenet_v1_1.0_quant_2018_06_29.tflite\n    task: person_detection\n    decoder: ssd_postprocess"
        "\n    accelerator: cpu\n    input: {shape: [1, 300, 300, 3], dtype: uint8, range: [-1.0, 1.0]}",
        "file: movenet_single_pose_lightning_ptq.tflite\n    task: person_detection\n    decoder: ssd_postprocess"
        "\n    accelerator: cpu\n    input: {shape: [1, 192, 192, 3], dtype: uint8, range: [-1.0, 1.0]}",
    )
    (tmp_path / "manifest.yaml").write_text(text)
    m = load_manifest(tmp_path / "manifest.yaml")
    with pytest.raises(ModelError, match=r"no TFLite_Detection_PostProcess operator"):
        create_detector(InferenceConfig(), tmp_path, m)


def test_input_spec_mismatch_is_refused(models_dir, tmp_path):
    shutil.copy(models_dir / "coco_ssd_mobilenet_v1_1.0_quant_2018_06_29.tflite", tmp_path)
    shutil.copy(models_dir / "coco_labels.txt", tmp_path)
    text = (models_dir / "manifest.yaml").read_text().replace("shape: [1, 300, 300, 3]", "shape: [1, 320, 320, 3]")
    (tmp_path / "manifest.yaml").write_text(text)
    with pytest.raises(ModelError, match=r"input is \[1, 300, 300, 3\] uint8 but models/manifest.yaml says"):
        create_detector(InferenceConfig(), tmp_path, load_manifest(tmp_path / "manifest.yaml"))


def test_wrong_image_is_a_value_error(runtime, manifest, models_dir):
    det = _ssd(runtime, manifest, models_dir)
    for bad in (np.zeros((10, 10), np.uint8), np.zeros((10, 10, 3), np.float32), np.zeros((10, 10, 4), np.uint8)):
        with pytest.raises(ValueError, match="RGB uint8"):
            det.detect(bad)


def test_input_quantization_lookup():
    # uint8 model trained on [-1, 1] with scale 1/128, zero point 128: pixels are the input
    assert _input_lut(np.dtype(np.uint8), 1 / 128, 128, -1.0, 1.0) is None
    # int8 model with the same real range: pixel p -> p - 128
    lut = _input_lut(np.dtype(np.int8), 1 / 128, 0, -1.0, 1.0)
    assert lut is not None and lut.dtype == np.int8
    assert np.abs(lut.astype(int) - (np.arange(256) - 128)).max() <= 1
    # float model on [0, 1]
    f = _input_lut(np.dtype(np.float32), 0.0, 0, 0.0, 1.0)
    assert f is not None and f[0] == 0.0 and np.isclose(f[255], 1.0)
    # uint8 model on [0, 1] with scale 1/255: identity again
    assert _input_lut(np.dtype(np.uint8), 1 / 255, 0, 0.0, 1.0) is None
