"""MoveNet SinglePose (Lightning/Thunder) on one crop per person box.

MoveNet SinglePose is trained on one person near the centre of a square image, so each person box
is grown 1.2x around its centre, made square (the longer side wins; nothing is stretched) and
padded with black where that square leaves the frame. The square is resized into one preallocated
input buffer (area averaging when shrinking, bilinear when enlarging), the model runs once per
person, and its (y, x, score) keypoints are mapped back through exactly the rectangle that was
resized, to (x, y, score) normalized to the full frame.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..errors import ModelError
from .pose import NUM_KEYPOINTS, PoseEstimator
from .runner import ModelRunner

CROP_SCALE = 1.2


class MoveNetPose(PoseEstimator):
    """MoveNet single-pose estimator: ``estimate(image, boxes) -> (n, 17, 3)`` (x, y, score)."""

    def __init__(self, runner: ModelRunner, *, crop_scale: float = CROP_SCALE) -> None:
        if not crop_scale >= 1.0:
            raise ValueError(f"crop_scale must be >= 1.0, got {crop_scale}")
        self.crop_scale = float(crop_scale)
        super().__init__(runner)
        w, h = runner.input_size
        self._buf = np.zeros((h, w, 3), np.uint8)  # the model input, reused for every crop

    def _check_outputs(self) -> None:
        model = self.runner.model
        shapes = [[int(v) for v in d["shape"]] for d in self.runner.outputs]
        if shapes != [[1, 1, NUM_KEYPOINTS, 3]]:
            raise ModelError(
                f"{model.path}: the MoveNet decoder reads one output of shape [1, 1, 17, 3] (y, x, score per COCO "
                f"keypoint), but model {model.key!r} has outputs {shapes}; is it a MoveNet SinglePose model? "
                "(MultiPose models are not supported by this decoder)"
            )
        w, h = self.runner.input_size
        if w != h:
            raise ModelError(f"{model.path}: MoveNet SinglePose takes a square input, this model takes {w}x{h}")

    def _estimate(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        frame_h, frame_w = image.shape[:2]
        out = np.empty((len(boxes), NUM_KEYPOINTS, 3), np.float32)
        for i in range(len(boxes)):
            x0, y0, x1, y1 = (float(v) for v in boxes[i])
            self._one(image, x0 * frame_w, y0 * frame_h, x1 * frame_w, y1 * frame_h, out[i])
        return out

    def _one(self, image: np.ndarray, x0: float, y0: float, x1: float, y1: float, res: np.ndarray) -> None:
        """Write the keypoints for one box (given in frame pixels) into ``res`` (17, 3)."""
        frame_h, frame_w = image.shape[:2]
        size = self._buf.shape[0]
        side = max(round(self.crop_scale * max(x1 - x0, y1 - y0)), 2)
        # The square crop [sx, sx + side) x [sy, sy + side) in integer frame pixels ...
        sx = round((x0 + x1) * 0.5 - side * 0.5)
        sy = round((y0 + y1) * 0.5 - side * 0.5)
        # ... the part of it inside the frame ...
        ix0, iy0 = max(sx, 0), max(sy, 0)
        ix1, iy1 = min(sx + side, frame_w), min(sy + side, frame_h)
        # ... and where that part lands in the model input.
        scale = size / side
        ox0, oy0 = round((ix0 - sx) * scale), round((iy0 - sy) * scale)
        ox1, oy1 = round((ix1 - sx) * scale), round((iy1 - sy) * scale)
        if ix1 <= ix0 or iy1 <= iy0 or ox1 <= ox0 or oy1 <= oy0:
            res[:, 0] = min(max((x0 + x1) * 0.5 / frame_w, 0.0), 1.0)  # box outside the frame: nothing seen
            res[:, 1] = min(max((y0 + y1) * 0.5 / frame_h, 0.0), 1.0)
            res[:, 2] = 0.0
            return

        buf = self._buf
        if (ox0, oy0, ox1, oy1) != (0, 0, size, size):
            buf.fill(0)  # black where the square leaves the frame
        src = image[iy0:iy1, ix0:ix1]
        dst = buf[oy0:oy1, ox0:ox1]
        shrink = (ox1 - ox0) < (ix1 - ix0)
        res_img = cv2.resize(src, (ox1 - ox0, oy1 - oy0), dst=dst, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        if not np.shares_memory(res_img, buf):  # OpenCV chose to allocate: copy it into place
            dst[...] = res_img

        kp = self.runner.run(buf)[0][0, 0]  # (17, 3) y, x, score in 0..1 of the model input
        # model input pixel u -> frame pixel ix0 + (u - ox0) * (ix1 - ix0) / (ox1 - ox0)
        fx = (ix1 - ix0) / (ox1 - ox0)
        fy = (iy1 - iy0) / (oy1 - oy0)
        res[:, 0] = (ix0 + (kp[:, 1] * size - ox0) * fx) / frame_w
        res[:, 1] = (iy0 + (kp[:, 0] * size - oy0) * fy) / frame_h
        np.clip(res[:, :2], 0.0, 1.0, out=res[:, :2])
        res[:, 2] = kp[:, 2]
