"""SSD detectors with the TFLite_Detection_PostProcess op built in, decoded from their raw outputs.

The op's own output is capped (10 boxes over all 90 COCO classes in the shared SSD MobileNet v1:
on vtest.avi 59 % of frames hit that cap, mostly on cones and cars) and gives each anchor only its
top class. A tracker needs every person candidate down to a low score, so we read the op's inputs
instead: ``prepare`` re-points the graph's first two outputs at the box encodings and the class
scores (tflite_graph), and ``_decode`` does what the op does, for the person class only: box
decoding against the model's anchors with the op's own scales, then non-maximum suppression at the
op's own IoU threshold (OpenCV's ``cv2.dnn.NMSBoxes``). The op still runs; its results are unused.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from ..errors import ModelError
from .base import Detector
from .runner import ModelRunner, dequantize
from .tflite_graph import TfliteGraph

POSTPROCESS_OP = "TFLite_Detection_PostProcess"
MAX_CANDIDATES = 400  # best-scoring anchors that go into NMS (bounds its cost in crowded frames)


def _postprocess(graph: TfliteGraph) -> Any:
    op = graph.custom_op(POSTPROCESS_OP)
    if op is None or len(op.inputs) != 3:
        raise ModelError(f"{graph.where}: no {POSTPROCESS_OP} operator with (boxes, scores, anchors) inputs: "
                         "the ssd_postprocess decoder reads SSD models exported with TFLite's post-processing op")
    return op


class SsdDetector(Detector):
    runner: ModelRunner

    @classmethod
    def prepare(cls, data: bytes, where: str) -> bytes | None:
        graph = TfliteGraph(data, where)
        op = graph.custom_op(POSTPROCESS_OP)
        if op is None or len(op.inputs) != 3:
            return None  # loaded as it is: the runner's input check, then _check_outputs, say what is wrong
        return graph.with_outputs((op.inputs[0], op.inputs[1], *graph.outputs[2:]))

    def _check_outputs(self) -> None:
        model = self.runner.model
        names = model.entry.outputs
        if names != ["boxes", "classes", "scores", "count"]:
            raise ModelError(f"{model.path}: the SSD decoder reads models with outputs [boxes, classes, scores, count] "
                             f"(manifest: {names}); is it a detection model?")
        if model.entry.person_class is None:
            raise ModelError(f"{model.path}: manifest entry {model.key!r} needs person_class for person detection")
        data = self.runner.content if self.runner.content is not None else model.path.read_bytes()
        op = _postprocess(TfliteGraph(data, str(model.path)))
        enc, cls, anchors = op.inputs
        outs = self.runner.outputs
        if len(outs) < 2 or (outs[0]["index"], outs[1]["index"]) != (enc, cls):
            raise ModelError(f"{model.path}: loaded without the raw SSD outputs; build it with create_detector")
        enc_shape = tuple(int(v) for v in outs[0]["shape"])
        cls_shape = tuple(int(v) for v in outs[1]["shape"])
        anchors_q, anchors_quant = self.runner.tensor(anchors)
        n = enc_shape[1] if len(enc_shape) == 3 else -1
        if enc_shape != (1, n, 4) or len(cls_shape) != 3 or cls_shape[:2] != (1, n) or anchors_q.shape != (n, 4):
            raise ModelError(f"{model.path}: SSD tensors have shapes {enc_shape}, {cls_shape}, {anchors_q.shape}; "
                             "expected [1,N,4] box encodings, [1,N,C] scores and [N,4] anchors")
        o = op.options
        try:
            self._scales = np.array([o["y_scale"], o["x_scale"], o["h_scale"], o["w_scale"]], dtype=np.float32)
            num_classes = int(o["num_classes"])
            model_iou = float(o["nms_iou_threshold"])
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"{model.path}: {POSTPROCESS_OP} options lack {e}") from e
        offset = cls_shape[2] - num_classes  # 1: column 0 is the background class
        self.person_column = model.entry.person_class + offset
        if offset not in (0, 1) or not 0 <= self.person_column < cls_shape[2]:
            raise ModelError(f"{model.path}: {cls_shape[2]} score columns for {num_classes} classes: cannot place "
                             f"person_class {model.entry.person_class}")
        self.anchors = dequantize(anchors_q, anchors_quant).astype(np.float32)  # (ycenter, xcenter, h, w)
        self.nms_iou = self.cfg.nms_iou if self.cfg.nms_iou is not None else model_iou
        self._enc_quant = outs[0]["quantization"]
        self._score_quant = outs[1]["quantization"]

    def _decode(self) -> tuple[np.ndarray, np.ndarray]:
        s = dequantize(self.runner.raw_output(1)[0, :, self.person_column], self._score_quant).astype(np.float32)
        keep = np.flatnonzero(s >= self.cfg.score_threshold)
        if len(keep) > MAX_CANDIDATES:
            keep = keep[np.argsort(-s[keep], kind="stable")[:MAX_CANDIDATES]]
        if not len(keep):
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
        e = dequantize(self.runner.raw_output(0)[0, keep], self._enc_quant).astype(np.float32) / self._scales
        a = self.anchors[keep]
        yc = e[:, 0] * a[:, 2] + a[:, 0]
        xc = e[:, 1] * a[:, 3] + a[:, 1]
        h = np.exp(e[:, 2]) * a[:, 2]
        w = np.exp(e[:, 3]) * a[:, 3]
        boxes = np.stack([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2], axis=1)
        scores = s[keep].astype(np.float32)
        xywh = np.stack([boxes[:, 0], boxes[:, 1], w, h], axis=1)
        # OpenCV takes arrays where its stubs say sequences
        nms: Any = cv2.dnn.NMSBoxes
        picked = np.asarray(nms(xywh, scores, self.cfg.score_threshold, self.nms_iou), dtype=np.int64).reshape(-1)
        return boxes[picked], scores[picked]

    def all_classes(self, floor: float, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The last invoke's detections over every class, as an SSD's post-processing op gives
        them: each anchor's best class, decoded, class-aware NMS at the model's IoU, the best
        ``limit`` down to ``floor``. Boxes (n, 4) y0, x0, y1, x1 clipped to 0..1, scores (n,),
        label indices (n,) (person_class numbering). For stand-ins of accelerators that run such a
        network (camera/imx500_fake.py, inference/hailo_fake.py)."""
        s = dequantize(self.runner.raw_output(1)[0], self._score_quant).astype(np.float32)
        first = self.person_column - int(self.runner.model.entry.person_class or 0)  # label 0's column
        cls = s[:, first:]
        best = np.argmax(cls, axis=1)
        best_s = cls[np.arange(len(best)), best]
        keep = np.flatnonzero(best_s >= floor)
        if not len(keep):
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
        e = dequantize(self.runner.raw_output(0)[0, keep], self._enc_quant).astype(np.float32) / self._scales
        a = self.anchors[keep]
        yc, xc = e[:, 0] * a[:, 2] + a[:, 0], e[:, 1] * a[:, 3] + a[:, 1]
        h, w = np.exp(e[:, 2]) * a[:, 2], np.exp(e[:, 3]) * a[:, 3]
        yx = np.clip(np.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], axis=1), 0.0, 1.0).astype(np.float32)
        xywh = np.stack([yx[:, 1], yx[:, 0], yx[:, 3] - yx[:, 1], yx[:, 2] - yx[:, 0]], axis=1)
        nms: Any = cv2.dnn.NMSBoxesBatched
        picked = np.asarray(nms(xywh, best_s[keep], best[keep].astype(np.int32), floor, self.nms_iou),
                            dtype=np.int64).reshape(-1)
        picked = picked[np.argsort(-best_s[keep][picked], kind="stable")][:limit]
        return yx[picked], best_s[keep][picked], best[keep][picked].astype(np.int64)
