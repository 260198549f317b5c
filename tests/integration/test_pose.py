"""Pose estimation on real models and real images: MoveNet per person crop, PoseNet whole-frame,
and the orientation rule on what they return. Measurements on vtest.avi are printed (run with -s)."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from firmware.config import DetectorConfig, InferenceConfig
from firmware.errors import ModelError
from firmware.inference import create_detector
from firmware.inference.pose import create_pose_estimator
from firmware.inference.pose_movenet import MoveNetPose
from firmware.inference.pose_posenet import PoseNetMulti, assign_poses
from firmware.inference.runner import ModelRunner
from firmware.models import load_manifest, resolve_model
from firmware.signals.orientation import body_facing

L_SH, R_SH, L_HIP, R_HIP, NOSE = 5, 6, 11, 12, 0
TORSO = [L_SH, R_SH, L_HIP, R_HIP]
VTEST_FRAMES = 300


@pytest.fixture(scope="module")
def manifest(models_dir):
    return load_manifest(models_dir / "manifest.yaml")


@pytest.fixture(scope="module")
def detector(manifest, models_dir):
    """The SSD person detector reporting people (0.5 and up), not every candidate the tracker gets."""
    return create_detector(InferenceConfig(detector=DetectorConfig(score_threshold=0.5)), models_dir, manifest)


@pytest.fixture(scope="module")
def movenet(manifest, models_dir):
    est = create_pose_estimator("movenet_lightning", models_dir, manifest)
    assert isinstance(est, MoveNetPose)
    return est


@pytest.fixture(scope="module")
def posenet(manifest, models_dir):
    est = create_pose_estimator("posenet_mobilenet_v1", models_dir, manifest)
    assert isinstance(est, PoseNetMulti)
    return est


@pytest.fixture(scope="module")
def couple(shared_media, detector):
    """test_couple.jpg (RGB) and its two person boxes from the real SSD detector, left to right."""
    img = cv2.cvtColor(cv2.imread(str(shared_media / "test_couple.jpg")), cv2.COLOR_BGR2RGB)
    boxes = detector.detect(img).boxes
    assert len(boxes) == 2
    return img, boxes[np.argsort(boxes[:, 0])]


def _flip(img, boxes):
    fb = boxes.copy()
    fb[:, [0, 2]] = 1.0 - boxes[:, [2, 0]]
    return np.ascontiguousarray(img[:, ::-1]), fb


def _facing(kps, box, shape):
    h, w = shape[:2]
    return body_facing(kps, float(box[3] - box[1]) * h, scale=(w, h))


def test_movenet_finds_both_people_frontal(couple, movenet):
    img, boxes = couple
    kps = movenet.estimate(img, boxes)
    assert kps.shape == (2, 17, 3) and kps.dtype == np.float32
    assert movenet.last_ms > 0
    for k, (x0, y0, x1, y1) in zip(kps, boxes, strict=True):
        assert (k[TORSO, 2] > 0.3).all()
        conf = k[k[:, 2] > 0.3]
        mx, my = 0.05 * (x1 - x0), 0.05 * (y1 - y0)
        assert ((conf[:, 0] >= x0 - mx) & (conf[:, 0] <= x1 + mx)).all()
        assert ((conf[:, 1] >= y0 - my) & (conf[:, 1] <= y1 + my)).all()
        assert k[L_SH, 0] > k[R_SH, 0]  # left shoulder on the image's right: facing the camera
        assert k[L_HIP, 0] > k[R_HIP, 0]
        assert k[NOSE, 1] < k[L_SH, 1] < k[L_HIP, 1]  # upright
        facing, conf_ = _facing(k, (x0, y0, x1, y1), img.shape)
        assert facing is not None and facing[1] > 0.5 and 0.3 < conf_ <= 1.0
        assert np.isclose(np.hypot(*facing), 1.0)
    # They walk toward the camera looking at each other: the man (left) turns his head to the image's
    # right, the woman to its left; the nose rule gives the side.
    left, right = (_facing(k, b, img.shape)[0] for k, b in zip(kps, boxes, strict=True))
    assert left is not None and right is not None
    assert left[0] > 0 > right[0]


def test_a_mirrored_frame_is_still_frontal(couple, movenet):
    """Found: mirroring a frontal person gives a frontal-looking person, and MoveNet labels by
    appearance, so its left/right labels swap with the mirror: the keypoint it calls left shoulder is
    the mirror image of the one it called right shoulder. x5 > x6 still holds: the rule says frontal.
    The side each person turns to flips with the mirror, as it should."""
    img, boxes = couple
    kps = movenet.estimate(img, boxes)
    fimg, fboxes = _flip(img, boxes)
    fkps = movenet.estimate(fimg, fboxes)
    for k, fk, b, fb in zip(kps, fkps, boxes, fboxes, strict=True):
        assert (fk[TORSO, 2] > 0.3).all()
        assert fk[L_SH, 0] > fk[R_SH, 0]
        assert abs(fk[L_SH, 0] - (1.0 - k[R_SH, 0])) < 0.02  # labels swapped with the mirror
        assert abs(fk[R_SH, 0] - (1.0 - k[L_SH, 0])) < 0.02
        f, _ = _facing(k, b, img.shape)
        ff, _ = _facing(fk, fb, fimg.shape)
        assert f is not None and ff is not None
        assert ff[1] > 0.5
        assert ff[0] * f[0] < 0


def test_movenet_pads_crops_that_leave_the_frame(couple, movenet):
    """A crop cut by the frame edge is padded with black and its keypoints map back through the
    padding: the same picture placed inside a larger black canvas (no padding needed) gives the same
    keypoints, to the model's own jitter."""
    img, boxes = couple
    h, w = img.shape[:2]
    # cut the frame just outside the woman's box: her 1.2x square now leaves it on three sides
    x0, y0, x1, y1 = (boxes[1] * [w, h, w, h]).astype(int)
    cut = np.ascontiguousarray(img[y0 - 10 : y1 + 10, x0 - 10 : x1 + 10])
    ch, cw = cut.shape[:2]
    box = np.array([[10 / cw, 10 / ch, (cw - 10) / cw, (ch - 10) / ch]], np.float32)
    pad = 600
    canvas = np.zeros((ch + 2 * pad, cw + 2 * pad, 3), np.uint8)
    canvas[pad : pad + ch, pad : pad + cw] = cut
    cbox = (box * [cw, ch, cw, ch] + pad) / np.array([canvas.shape[1], canvas.shape[0]] * 2, np.float32)
    k_cut = movenet.estimate(cut, box)[0]
    k_canvas = movenet.estimate(canvas, cbox)[0]
    back = k_canvas[:, :2] * [canvas.shape[1], canvas.shape[0]] - pad  # canvas-normalized -> cut pixels
    conf = (k_cut[:, 2] > 0.3) & (k_canvas[:, 2] > 0.3)
    assert conf.sum() >= 12
    # in model-input pixels (the square side is 1.2 x the box height, resized to 192): the int8 model
    # moves keypoints in steps of ~0.8 input pixel when the input changes by a few grey levels
    err = np.abs(back[conf] - k_cut[conf, :2] * [cw, ch]) / (1.2 * (ch - 20) / 192)
    assert np.median(err) < 1.5 and err.max() < 4.0
    assert ((k_cut[:, :2] >= 0) & (k_cut[:, :2] <= 1)).all()
    # and it agrees with the full-frame run on the torso
    full = movenet.estimate(img, boxes[1:2])[0]
    in_frame = (k_cut[TORSO, :2] * [cw, ch] + [x0 - 10, y0 - 10]) / [w, h]
    assert np.abs(in_frame - full[TORSO, :2]).max() < 0.02


def test_movenet_edge_cases(movenet):
    img = np.zeros((120, 160, 3), np.uint8)
    assert movenet.estimate(img, np.zeros((0, 4), np.float32)).shape == (0, 17, 3)
    out = movenet.estimate(img, np.array([[0.9, 0.9, 1.0, 1.0], [1.5, 1.5, 2.0, 2.0], [0.2, 0.2, 0.2, 0.2]], np.float32))
    assert out.shape == (3, 17, 3) and np.isfinite(out).all()
    assert ((out[:, :, :2] >= 0) & (out[:, :, :2] <= 1)).all()
    assert (out[1, :, 2] == 0).all()  # a box entirely outside the frame sees nothing
    with pytest.raises(ValueError, match="RGB uint8"):
        movenet.estimate(img.astype(np.float32), np.zeros((0, 4)))
    with pytest.raises(ValueError, match=r"\(n, 4\)"):
        movenet.estimate(img, np.zeros((2, 5)))
    with pytest.raises(ValueError, match="NaN"):
        movenet.estimate(img, np.array([[0.1, np.nan, 0.5, 0.5]]))


def test_decoders_refuse_the_wrong_model(manifest, models_dir):
    ssd = ModelRunner(resolve_model("ssd_mobilenet_v1", models_dir, manifest))
    pn = ModelRunner(resolve_model("posenet_mobilenet_v1", models_dir, manifest))
    mn = ModelRunner(resolve_model("movenet_lightning", models_dir, manifest))
    with pytest.raises(ModelError, match=r"one output of shape \[1, 1, 17, 3\]"):
        MoveNetPose(pn)
    with pytest.raises(ModelError, match=r"one output of shape \[1, 1, 17, 3\]"):
        MoveNetPose(ssd)
    with pytest.raises(ModelError, match="PoseNet decoder reads three outputs"):
        PoseNetMulti(mn)
    with pytest.raises(ModelError, match="pose_single or pose_multi"):
        create_pose_estimator("ssd_mobilenet_v1", models_dir, manifest)
    with pytest.raises(ModelError, match="Edge TPU"):
        create_pose_estimator("movenet_lightning_edgetpu", models_dir, manifest)


def test_posenet_finds_the_couple_where_movenet_does(couple, movenet, posenet):
    img, boxes = couple
    h, w = img.shape[:2]
    poses, scores = posenet.detect_poses(img)
    assert poses.shape == (2, 17, 3) and scores.shape == (2,)
    assert (scores > 0.5).all() and scores[0] >= scores[1]
    assert posenet.stride == 16 and posenet.heatmaps_are_logits
    mn = movenet.estimate(img, boxes)
    for k in mn:
        # the PoseNet pose nearest this person's shoulders
        d = np.hypot(*((poses[:, [L_SH, R_SH], :2].mean(axis=1) - k[[L_SH, R_SH], :2].mean(axis=0)) * [w, h]).T)
        p = poses[int(np.argmin(d))]
        assert (p[TORSO, 2] > 0.5).all()
        dist = np.hypot(*((p[TORSO, :2] - k[TORSO, :2]) * [w, h]).T)
        assert dist.max() < 0.05 * w  # shoulders and hips within 5 % of the frame width
        assert p[L_SH, 0] > p[R_SH, 0]
    # estimate() hands each box its own pose
    per_box = posenet.estimate(img, boxes)
    assert per_box.shape == (2, 17, 3)
    for k, b in zip(per_box, boxes, strict=True):
        assert (k[TORSO, 2] > 0.5).all()
        assert b[0] < k[[L_SH, R_SH], 0].mean() < b[2]


def test_assign_poses_leaves_boxes_without_a_pose_empty():
    pose = np.zeros((1, 17, 3), np.float32)
    pose[0, :, 0], pose[0, :, 1], pose[0, :, 2] = 0.25, np.linspace(0.2, 0.8, 17), 0.9
    boxes = np.array([[0.6, 0.1, 0.9, 0.9], [0.1, 0.1, 0.4, 0.9]], np.float32)
    out = assign_poses(pose, boxes)
    assert (out[0, :, 2] == 0).all() and np.allclose(out[0, :, :2], [0.75, 0.5])
    assert np.array_equal(out[1], pose[0])


@pytest.fixture(scope="module")
def vtest_poses(vtest, detector, movenet, posenet):
    """SSD (score 0.5) + MoveNet on every detection of the first 300 frames; PoseNet on every 10th."""
    cap = cv2.VideoCapture(str(vtest))
    kps, heights, move_ms, crops, pn_ms, pn_counts, ssd_counts = [], [], 0.0, 0, [], [], []
    try:
        for i in range(VTEST_FRAMES):
            ok, bgr = cap.read()
            assert ok, f"vtest.avi ended before frame {i}"
            img = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            det = detector.detect(img)
            k = movenet.estimate(img, det.boxes)
            move_ms += movenet.last_ms
            crops += len(det)
            kps.append(k)
            heights.append((det.boxes[:, 3] - det.boxes[:, 1]) * img.shape[0])
            if i % 10 == 0:
                t0 = time.perf_counter()
                poses, _ = posenet.detect_poses(img)
                pn_ms.append((time.perf_counter() - t0) * 1000.0)
                pn_counts.append(len(poses))
                ssd_counts.append(len(det))
    finally:
        cap.release()
    return {
        "kps": np.concatenate(kps),
        "heights": np.concatenate(heights),
        "movenet_ms_per_crop": move_ms / max(crops, 1),
        "posenet_ms_per_frame": float(np.median(pn_ms)),
        "posenet_poses_per_frame": float(np.mean(pn_counts)),
        "ssd_people_per_frame": float(np.mean(ssd_counts)),
        "shape": img.shape,
    }


def test_vtest_pose_usability(vtest_poses):
    """Printed figures for the background note (timings are reported, never asserted)."""
    k, hgt = vtest_poses["kps"], vtest_poses["heights"]
    h, w = vtest_poses["shape"][:2]
    both = (k[:, L_SH, 2] >= 0.3) & (k[:, R_SH, 2] >= 0.3)
    tall = hgt >= 80.0
    usable = [body_facing(kp, float(bh), scale=(w, h))[0] is not None for kp, bh in zip(k, hgt, strict=True)]
    torso_ok = both & (k[:, L_HIP, 2] >= 0.3) & (k[:, R_HIP, 2] >= 0.3)
    sw = np.abs(k[:, L_SH, 0] - k[:, R_SH, 0]) * w
    tl = np.hypot(*(((k[:, [L_SH, R_SH], :2].mean(axis=1) - k[:, [L_HIP, R_HIP], :2].mean(axis=1)) * [w, h]).T))
    ratio = sw[torso_ok] / np.maximum(tl[torso_ok], 1e-6)
    p10, p50, p90 = np.percentile(hgt, [10, 50, 90])
    print(
        f"\nvtest.avi first {VTEST_FRAMES} frames: {len(k)} SSD detections (score >= 0.5)\n"
        f"  both shoulders >= 0.3: {both.mean():.1%}\n"
        f"  box >= 80 px tall: {tall.mean():.1%} (heights p10/p50/p90 {p10:.0f}/{p50:.0f}/{p90:.0f} px)\n"
        f"  body_facing usable (both gates): {np.mean(usable):.1%}\n"
        f"  shoulder width / torso: median {np.median(ratio):.2f}, p90 {np.percentile(ratio, 90):.2f}\n"
        f"  MoveNet: {vtest_poses['movenet_ms_per_crop']:.1f} ms per crop\n"
        f"  PoseNet: {vtest_poses['posenet_ms_per_frame']:.1f} ms per frame (invoke + decode, median), "
        f"{vtest_poses['posenet_poses_per_frame']:.1f} poses vs {vtest_poses['ssd_people_per_frame']:.1f} SSD people"
    )
    assert both.mean() >= 0.5
    assert 0.05 < tall.mean() < 0.95
    assert np.isfinite(k).all() and ((k[:, :, :2] >= 0) & (k[:, :, :2] <= 1)).all()
    assert 0.3 < np.median(ratio) < 1.0
