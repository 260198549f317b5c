"""Body orientation from COCO-17 keypoints, without faces: pure numpy, no pixels.

Image coordinates throughout: x to the right, y down. For a camera mounted above head height and
looking down at an angle, "down the image" is toward the camera, so a person facing the camera
faces (0, +1) and a person walking away from it faces (0, -1).

The rule (docs: SIGNALS-BACKGROUND §3):

- front or back: a person facing the camera shows their left shoulder (5) on the image's right
  of their right shoulder (6);
- how far they are turned: |cos yaw| ~ horizontal shoulder width / (torso length x frontal
  ratio), where the frontal ratio is the shoulder-width / torso ratio of someone squarely facing
  the camera (0.76 = 90th percentile on vtest.avi; calibrate per camera);
- which side they turn to (sign of sin yaw): the nose's horizontal offset from the shoulder
  midpoint (the nose sits in front of the head). Without a confident nose, the ears: a person
  turned to the image's right shows the camera their right side, so their right ear (4) is the
  one that scores; only one confident ear decides, two or none leave the side unknown.

Facing = (sin yaw, cos yaw), cos yaw > 0 toward the camera. Pose from small or top-down crops
is weak: gate it (both shoulders, box height), smooth it over >= 1 s (``circular_mean``), and
fuse it with motion heading; "unknown" is an answer, never "not oriented".
"""

from __future__ import annotations

import math

import numpy as np

NOSE, L_EAR, R_EAR, L_SHOULDER, R_SHOULDER, L_HIP, R_HIP = 0, 3, 4, 5, 6, 11, 12

MIN_SCORE = 0.3  # MoveNet's suggested keypoint cut-off (scores are confidence, not visibility)
MIN_BOX_PX = 80.0  # below this box height the shoulders are a few pixels apart
FRONTAL_RATIO = 0.76  # shoulder width / torso length when squarely facing the camera (vtest 90th pct)
# Ō is 1 within FULL_DEG of the focus and falls linearly to 0 at side-on (CONE_DEG). Yaw from
# 2-D shoulder width is coarse: the same square-on cut-out reads 16-39 degrees depending on the
# crop's resampling (OpenCV 4.10 vs 5.0), so differences inside +-30 degrees are noise, not signal.
FULL_DEG = 30.0
CONE_DEG = 90.0
TORSO_PER_BOX = 0.29  # shoulder-to-hip length / standing height, when the hips are not usable


def body_facing(
    kps: np.ndarray,
    box_h_px: float,
    *,
    min_score: float = MIN_SCORE,
    min_box_px: float = MIN_BOX_PX,
    frontal_ratio: float = FRONTAL_RATIO,
    scale: tuple[float, float] = (1.0, 1.0),
) -> tuple[np.ndarray | None, float]:
    """Facing direction of one person from their keypoints, and a confidence in [0, 1].

    ``kps`` is (17, 3) (x, y, score) in COCO-17 order. x and y must be in one isotropic unit
    (pixels); for frame-normalized keypoints pass ``scale=(frame_width, frame_height)``.
    ``box_h_px`` is the person box's height in pixels.

    Returns (unit 2-vector (sin yaw, cos yaw) in image coordinates, confidence), or (None, 0.0)
    when the pose is not trustworthy: a shoulder below ``min_score``, the box shorter than
    ``min_box_px``, or non-finite input. The confidence is the weaker shoulder's score, lowered
    when the torso length had to be guessed from the box, times a geometry term that is 1 when
    squarely facing toward or away from the camera and 0.5 side-on (where front/back is most
    ambiguous); when the side the person turns to is unknown, the geometry term is |cos yaw|.
    """
    k = np.asarray(kps, dtype=np.float64)
    if k.shape != (17, 3):
        raise ValueError(f"expected keypoints of shape (17, 3) (x, y, score), got {k.shape}")
    if not box_h_px >= min_box_px or not math.isfinite(box_h_px):
        return None, 0.0
    with np.errstate(all="ignore"):  # non-finite input is rejected below, quietly
        return _body_facing(k, float(box_h_px), min_score, frontal_ratio, scale)


def _body_facing(
    k: np.ndarray, box_h_px: float, min_score: float, frontal_ratio: float, scale: tuple[float, float]
) -> tuple[np.ndarray | None, float]:
    s = np.where(np.isfinite(k[:, 2]), k[:, 2], 0.0)
    xy = k[:, :2] * np.asarray(scale, dtype=np.float64)
    ok = (s >= min_score) & np.isfinite(xy).all(axis=1)
    if not (ok[L_SHOULDER] and ok[R_SHOULDER]):
        return None, 0.0

    mid = 0.5 * (xy[L_SHOULDER] + xy[R_SHOULDER])
    hips = [i for i in (L_HIP, R_HIP) if ok[i]]
    guess = TORSO_PER_BOX * box_h_px
    if hips:
        torso = float(np.hypot(*(xy[hips].mean(axis=0) - mid)))
        torso_q = 1.0 if len(hips) == 2 else 0.85
        torso = max(torso, 0.3 * guess)  # hips collapsed onto the shoulders: do not divide by ~0
    else:
        torso, torso_q = guess, 0.7

    dx = float(xy[L_SHOULDER, 0] - xy[R_SHOULDER, 0])  # > 0: left shoulder on the image's right: frontal
    cos_abs = min(abs(dx) / (torso * frontal_ratio), 1.0)
    cos_yaw = math.copysign(cos_abs, dx) if dx != 0.0 else 0.0
    sin_abs = math.sqrt(max(0.0, 1.0 - cos_abs * cos_abs))

    side = 0.0
    if ok[NOSE]:
        side = float(np.sign(xy[NOSE, 0] - mid[0]))
    elif ok[L_EAR] != ok[R_EAR]:
        side = 1.0 if ok[R_EAR] else -1.0

    if side == 0.0:
        facing = np.array([0.0, 1.0 if cos_yaw >= 0 else -1.0])
        geom = cos_abs
    else:
        facing = np.array([side * sin_abs, cos_yaw])
        facing /= float(np.hypot(*facing))
        geom = 0.5 + 0.5 * cos_abs
    conf = min(float(s[L_SHOULDER]), float(s[R_SHOULDER]), 1.0) * torso_q * geom
    return facing, float(min(max(conf, 0.0), 1.0))


def facing_alignment(facing: np.ndarray, anchor: np.ndarray, focus: np.ndarray) -> float:
    """Cosine in [-1, 1] between ``facing`` and the bearing from ``anchor`` to ``focus``.

    All three are 2-vectors in the same coordinates (image pixels, or floor metres after a
    homography). 0.0 when either direction is undefined (zero-length facing, anchor on the focus
    point, non-finite input): no bearing means no evidence of facing the focus point.
    """
    fx, fy = (float(v) for v in np.asarray(facing, dtype=np.float64).reshape(2))
    ax, ay = (float(v) for v in np.asarray(anchor, dtype=np.float64).reshape(2))
    px, py = (float(v) for v in np.asarray(focus, dtype=np.float64).reshape(2))
    bx, by = px - ax, py - ay
    nf, nb = math.hypot(fx, fy), math.hypot(bx, by)
    if not (1e-12 < nf < math.inf and 1e-12 < nb < math.inf):
        return 0.0
    c = (fx / nf) * (bx / nb) + (fy / nf) * (by / nb)
    return min(max(c, -1.0), 1.0) if math.isfinite(c) else 0.0


def orientation_score(cos_angle: float, cone_deg: float = CONE_DEG, full_deg: float = FULL_DEG) -> float:
    """Ō in [0, 1]: 1 within ``full_deg`` of facing the focus point, falling linearly with the
    angle to 0 at ``cone_deg``.

    Non-finite input scores 0 (unknown is not evidence of facing)."""
    c = float(cos_angle)
    if not math.isfinite(c) or not cone_deg > 0:
        return 0.0
    angle = math.degrees(math.acos(min(max(c, -1.0), 1.0)))
    full = min(max(full_deg, 0.0), cone_deg)
    if angle <= full:
        return 1.0
    if cone_deg - full < 1e-9:
        return 0.0
    return float(min(max(1.0 - (angle - full) / (cone_deg - full), 0.0), 1.0))


def circular_mean(vectors: np.ndarray, weights: np.ndarray | None = None, *, min_resultant: float = 1e-6) -> np.ndarray | None:
    """Weighted mean direction of 2-vectors (n, 2) as a unit vector, or None.

    Each vector counts by its direction only (normalized first) times its weight (>= 0; e.g. the
    facing confidence). Rows with zero length, non-finite values or non-positive weight are
    ignored. None when nothing is left or the directions cancel out: the mean resultant length
    (|sum of w u| / sum of w, 1 when all agree, 0 when opposite views balance) is below
    ``min_resultant``; pass e.g. 0.5 to get None unless the directions mostly agree.
    """
    v = np.asarray(vectors, dtype=np.float64).reshape(-1, 2)
    w = np.ones(len(v)) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(w) != len(v):
        raise ValueError(f"{len(v)} vectors but {len(w)} weights")
    with np.errstate(all="ignore"):  # rows with non-finite values are dropped below, quietly
        return _circular_mean(v, w, min_resultant)


def _circular_mean(v: np.ndarray, w: np.ndarray, min_resultant: float) -> np.ndarray | None:
    norm = np.hypot(v[:, 0], v[:, 1])
    use = np.isfinite(norm) & (norm > 1e-12) & np.isfinite(w) & (w > 0)
    if not use.any():
        return None
    u = v[use] / norm[use, None]
    wu = w[use]
    total = float(wu.sum())
    r = (u * wu[:, None]).sum(axis=0)
    length = float(np.hypot(*r))
    if not (0 < total < math.inf and math.isfinite(length)) or length / total < max(min_resultant, 1e-12):
        return None
    return r / length
