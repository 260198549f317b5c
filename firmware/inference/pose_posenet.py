"""PoseNet (MobileNet v1, PersonLab-style heads) multi-person decoding in numpy.

The model sees the whole frame once and outputs, on a grid of ``output stride`` pixel cells:

- heatmaps ``[1, H, W, 17]``: per-keypoint logits (the quantized range of this model's
  ``float_heatmaps`` is -10..+10, so they are log-odds, not probabilities: a sigmoid is applied);
- short offsets ``[1, H, W, 34]``: (dy for 17 keypoints, then dx for 17), in input pixels, from a
  cell to the exact keypoint position;
- mid offsets ``[1, H, W, 64]``: displacements along the 16 edges of the pose tree, laid out as
  [forward dy x16][forward dx x16][backward dy x16][backward dx x16], in input pixels.

Decoding follows the Coral Edge TPU PoseNet decoder op (google-coral/edgetpu,
``src/cpp/posenet/posenet_decoder.cc``) and tfjs-models ``decodeMultiplePoses``: every local
maximum of a heatmap (3x3) above ``part_threshold`` is a root candidate, strongest first; a root
within ``nms_radius`` of the same keypoint of an already decoded pose is skipped; otherwise the
whole skeleton is grown from it along the tree (mid-range displacement, then short-offset
refinement, bilinear sampling), highest-scoring keypoint first. Pose scores are the mean keypoint
score, recomputed (soft keypoint NMS) without keypoints that overlap a higher-scoring pose.
One difference from the Coral op: its backward-edge channel lookup is off by one for the first
backward edge (``edge_id > kNumEdges`` instead of ``>=``); here every edge reads its own channels.

The frame is letterboxed into the model input (aspect kept, black padding right/bottom).
"""

from __future__ import annotations

import heapq
import math
import time

import cv2
import numpy as np

from ..errors import ModelError
from .pose import NUM_KEYPOINTS, PoseEstimator, check_image
from .runner import ModelRunner

# The pose tree: 16 (parent, child) edges, forward direction, COCO-17 indices.
POSE_EDGES = (
    (0, 1), (1, 3), (0, 2), (2, 4), (0, 5), (5, 7), (7, 9), (5, 11),
    (11, 13), (13, 15), (0, 6), (6, 8), (8, 10), (6, 12), (12, 14), (14, 16),
)  # fmt: skip
NUM_EDGES = len(POSE_EDGES)


def _children() -> list[list[tuple[int, int, int]]]:
    """For each keypoint: (child, dy channel, dx channel) in the mid-offset tensor, both directions."""
    adj: list[list[tuple[int, int, int]]] = [[] for _ in range(NUM_KEYPOINTS)]
    for e, (parent, child) in enumerate(POSE_EDGES):
        adj[parent].append((child, e, NUM_EDGES + e))  # forward: parent -> child
        adj[child].append((parent, 2 * NUM_EDGES + e, 3 * NUM_EDGES + e))  # backward: child -> parent
    return adj


_ADJ = _children()


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


class PoseNetMulti(PoseEstimator):
    """Whole-frame multi-person PoseNet: ``detect_poses(image)`` for every pose in one invoke;
    ``estimate(image, boxes)`` assigns those poses to person boxes (the common pose interface)."""

    def __init__(
        self,
        runner: ModelRunner,
        *,
        max_poses: int = 10,
        part_threshold: float = 0.5,
        pose_threshold: float = 0.25,
        nms_radius_px: float = 20.0,
        refine_steps: int = 2,
    ) -> None:
        if max_poses < 1 or not 0.0 < part_threshold < 1.0 or not 0.0 <= pose_threshold < 1.0 or nms_radius_px < 0:
            raise ValueError("need max_poses >= 1, 0 < part_threshold < 1, 0 <= pose_threshold < 1, nms_radius_px >= 0")
        self.max_poses = int(max_poses)
        self.part_threshold = float(part_threshold)
        self.pose_threshold = float(pose_threshold)
        self.nms_radius_px = float(nms_radius_px)
        self.refine_steps = int(refine_steps)
        super().__init__(runner)
        w, h = runner.input_size
        self._canvas = np.zeros((h, w, 3), np.uint8)  # letterboxed model input, reused
        self._fit: tuple[int, int] | None = None  # (width, height) of the frame inside the canvas

    def _check_outputs(self) -> None:
        model = self.runner.model
        shapes = [tuple(int(v) for v in d["shape"]) for d in self.runner.outputs]
        by_channels = {s[-1]: i for i, s in enumerate(shapes) if len(s) == 4}
        want = (NUM_KEYPOINTS, 2 * NUM_KEYPOINTS, 4 * NUM_EDGES)
        if len(shapes) != 3 or sorted(by_channels) != sorted(want):
            raise ModelError(
                f"{model.path}: the PoseNet decoder reads three outputs [1,H,W,17] heatmaps, [1,H,W,34] short offsets "
                f"and [1,H,W,64] mid offsets, but model {model.key!r} has {shapes}; is it a PoseNet model without "
                "the decoder op?"
            )
        self._idx = tuple(by_channels[c] for c in want)
        grid = {shapes[i][:3] for i in self._idx}
        w, h = self.runner.input_size
        _, gh, gw = next(iter(grid))
        if len(grid) != 1 or gh < 2 or gw < 2 or (h - 1) % (gh - 1) or (w - 1) % (gw - 1):
            raise ModelError(f"{model.path}: PoseNet outputs {shapes} do not share one grid matching the {w}x{h} input")
        sy, sx = (h - 1) // (gh - 1), (w - 1) // (gw - 1)
        if sy != sx:
            raise ModelError(f"{model.path}: PoseNet output strides differ ({sx} across, {sy} down)")
        self.stride = sx
        # Heatmaps are logits when the real-valued output range reaches below 0 (a sigmoid output
        # cannot); a float (unquantized) PoseNet model outputs logits as well.
        scale, zp = self.runner.outputs[self._idx[0]]["quantization"]
        self.heatmaps_are_logits = not scale or (0 - zp) * scale < 0

    # -- whole frame -------------------------------------------------------------------------

    def detect_poses(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every pose in the frame: keypoints (m, 17, 3) float32 (x, y, score) frame-normalized and
        pose scores (m,) float32 in 0..1, strongest first; m <= max_poses."""
        check_image(image)
        t0 = time.perf_counter()
        outs = self.runner.run(self._letterbox(image))
        heat, short, mid = (outs[i][0] for i in self._idx)
        poses = self._decode(heat, short, mid)
        self.last_ms = (time.perf_counter() - t0) * 1000.0
        return poses

    def _letterbox(self, image: np.ndarray) -> np.ndarray:
        ih, iw = image.shape[:2]
        canvas = self._canvas
        ch, cw = canvas.shape[:2]
        s = min(cw / iw, ch / ih)
        fw, fh = max(1, min(cw, round(iw * s))), max(1, min(ch, round(ih * s)))
        if self._fit != (fw, fh):
            canvas.fill(0)
            self._fit = (fw, fh)
        dst = canvas[:fh, :fw]
        interp = cv2.INTER_AREA if fw < iw else cv2.INTER_LINEAR
        res = image if (fw, fh) == (iw, ih) else cv2.resize(image, (fw, fh), dst=dst, interpolation=interp)
        if not np.shares_memory(res, canvas):
            dst[...] = res
        return canvas

    def _decode(self, heat: np.ndarray, short: np.ndarray, mid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        gh, gw, _ = heat.shape
        stride = float(self.stride)
        logits = heat.astype(np.float32, copy=False)
        if not self.heatmaps_are_logits:  # probabilities: turn them into log-odds once
            p = np.clip(logits, 1e-6, 1 - 1e-6)
            logits = np.log(p / (1 - p))
        short_b = short * np.float32(1.0 / stride)  # offsets in grid cells
        mid_b = mid * np.float32(1.0 / stride)
        min_logit = math.log(self.part_threshold / (1.0 - self.part_threshold))

        # Root candidates: 3x3 local maxima above the part threshold.
        padded = np.pad(logits, ((1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
        local_max = logits.copy()
        for dy in range(3):
            for dx in range(3):
                np.maximum(local_max, padded[dy : dy + gh, dx : dx + gw], out=local_max)
        ys, xs, ks = np.nonzero((logits >= min_logit) & (logits >= local_max))
        order = np.argsort(-logits[ys, xs, ks], kind="stable")
        ys, xs, ks = ys[order], xs[order], ks[order]
        ry = np.clip(ys + short_b[ys, xs, ks], 0.0, gh - 1.0)
        rx = np.clip(xs + short_b[ys, xs, NUM_KEYPOINTS + ks], 0.0, gw - 1.0)

        nms2 = (self.nms_radius_px / stride) ** 2
        poses: list[np.ndarray] = []  # each (17, 3): y, x in grid cells, score (probability)
        for k, y, x in zip(ks.tolist(), ry.tolist(), rx.tolist(), strict=True):
            if len(poses) >= self.max_poses:
                break
            if any((p[k, 0] - y) ** 2 + (p[k, 1] - x) ** 2 <= nms2 for p in poses):
                continue
            pose = self._grow(logits, short_b, mid_b, k, y, x)
            if pose[:, 2].mean() >= self.pose_threshold:
                poses.append(pose)
        if not poses:
            return np.zeros((0, NUM_KEYPOINTS, 3), np.float32), np.zeros((0,), np.float32)

        # Soft keypoint NMS: a keypoint overlapping the same keypoint of a stronger pose does not count.
        kp = np.stack(poses)
        first = kp[:, :, 2].mean(axis=1)
        rank = np.argsort(-first, kind="stable")
        scores = np.empty(len(kp), np.float32)
        for i, a in enumerate(rank):
            keep = np.ones(NUM_KEYPOINTS, bool)
            for b in rank[:i]:
                keep &= ((kp[a, :, :2] - kp[b, :, :2]) ** 2).sum(axis=1) > nms2
            scores[a] = kp[a, keep, 2].sum() / NUM_KEYPOINTS
        rank = np.argsort(-scores, kind="stable")
        rank = rank[scores[rank] >= self.pose_threshold]

        fw, fh = self._fit or (1, 1)
        out = np.empty((len(rank), NUM_KEYPOINTS, 3), np.float32)
        out[:, :, 0] = kp[rank, :, 1] * stride / fw  # input pixels -> frame-normalized
        out[:, :, 1] = kp[rank, :, 0] * stride / fh
        np.clip(out[:, :, :2], 0.0, 1.0, out=out[:, :, :2])
        out[:, :, 2] = kp[rank, :, 2]
        return out, scores[rank]

    def _grow(self, logits: np.ndarray, short_b: np.ndarray, mid_b: np.ndarray, root: int, y: float, x: float) -> np.ndarray:
        """Decode one skeleton from a root keypoint, strongest keypoint first (a priority queue)."""
        gh, gw, _ = logits.shape
        pose = np.zeros((NUM_KEYPOINTS, 3), np.float32)
        done = [False] * NUM_KEYPOINTS
        queue = [(-_bilinear(logits, y, x, root), root, y, x)]
        while queue:
            neg, k, y, x = heapq.heappop(queue)
            if done[k]:
                continue
            done[k] = True
            pose[k] = (y, x, _sigmoid(-neg))
            for child, cy, cx in _ADJ[k]:
                if done[child]:
                    continue
                ty = min(max(y + _bilinear(mid_b, y, x, cy), 0.0), gh - 1.0)
                tx = min(max(x + _bilinear(mid_b, y, x, cx), 0.0), gw - 1.0)
                for _ in range(self.refine_steps):
                    dy = _bilinear(short_b, ty, tx, child)
                    dx = _bilinear(short_b, ty, tx, NUM_KEYPOINTS + child)
                    ty = min(max(ty + dy, 0.0), gh - 1.0)
                    tx = min(max(tx + dx, 0.0), gw - 1.0)
                heapq.heappush(queue, (-_bilinear(logits, ty, tx, child), child, ty, tx))
        return pose

    # -- per box -----------------------------------------------------------------------------

    def _estimate(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        poses, _ = self.detect_poses(image)
        return assign_poses(poses, boxes)


def _bilinear(t: np.ndarray, y: float, x: float, c: int) -> float:
    """t[y, x, c] bilinearly interpolated; (y, x) already inside the grid."""
    y0, x0 = int(y), int(x)
    y1, x1 = min(y0 + 1, t.shape[0] - 1), min(x0 + 1, t.shape[1] - 1)
    fy, fx = y - y0, x - x0
    top = (1.0 - fx) * float(t[y0, x0, c]) + fx * float(t[y0, x1, c])
    bottom = (1.0 - fx) * float(t[y1, x0, c]) + fx * float(t[y1, x1, c])
    return (1.0 - fy) * top + fy * bottom


def assign_poses(poses: np.ndarray, boxes: np.ndarray, *, min_share: float = 0.5, margin: float = 0.1) -> np.ndarray:
    """Give each box the pose whose keypoint scores lie most inside it (greedy, one pose per box).

    ``poses`` (m, 17, 3) and ``boxes`` (n, 4) are frame-normalized. A pose matches a box when at
    least ``min_share`` of its total keypoint score falls inside the box grown by ``margin`` of its
    size on each side. Boxes without a pose get all-zero scores at the box centre.
    """
    n = len(boxes)
    out = np.zeros((n, NUM_KEYPOINTS, 3), np.float32)
    out[:, :, 0] = ((boxes[:, 0] + boxes[:, 2]) * 0.5)[:, None]
    out[:, :, 1] = ((boxes[:, 1] + boxes[:, 3]) * 0.5)[:, None]
    if len(poses) == 0 or n == 0:
        return out
    bw = (boxes[:, 2] - boxes[:, 0]) * margin
    bh = (boxes[:, 3] - boxes[:, 1]) * margin
    x, y, s = poses[None, :, :, 0], poses[None, :, :, 1], poses[None, :, :, 2]  # (1, m, 17)
    inside = (
        (x >= (boxes[:, 0] - bw)[:, None, None]) & (x <= (boxes[:, 2] + bw)[:, None, None])
        & (y >= (boxes[:, 1] - bh)[:, None, None]) & (y <= (boxes[:, 3] + bh)[:, None, None])
    )  # fmt: skip
    share = (s * inside).sum(axis=2) / np.maximum(s.sum(axis=2), 1e-6)  # (n, m)
    used_b: set[int] = set()
    used_p: set[int] = set()
    for flat in np.argsort(-share, axis=None, kind="stable"):
        b, p = divmod(int(flat), share.shape[1])
        if share[b, p] < min_share:
            break
        if b in used_b or p in used_p:
            continue
        used_b.add(b)
        used_p.add(p)
        out[b] = poses[p]
    return out
