"""SSD detectors with the TFLite_Detection_PostProcess op built in (boxes, classes, scores, count)."""

from __future__ import annotations

import numpy as np

from ..errors import ModelError
from .base import Detector


class SsdDetector(Detector):
    def _check_outputs(self) -> None:
        model = self.runner.model
        outs = self.runner.outputs
        names = model.entry.outputs
        shapes = [tuple(int(v) for v in d["shape"]) for d in outs]
        if names != ["boxes", "classes", "scores", "count"] or len(shapes) != 4:
            raise ModelError(
                f"{model.path}: the SSD decoder reads outputs [boxes, classes, scores, count], but this model has "
                f"{len(shapes)} outputs {shapes} (manifest: {names}); is it a detection model?"
            )
        (b, n, four), cls, sc, cnt = shapes[0], shapes[1], shapes[2], shapes[3]
        if (b, four) != (1, 4) or cls != (1, n) or sc != (1, n) or cnt != (1,):
            raise ModelError(f"{model.path}: SSD outputs have shapes {shapes}, expected [1,N,4], [1,N], [1,N], [1]")
        if model.entry.person_class is None:
            raise ModelError(f"{model.path}: manifest entry {model.key!r} needs person_class for person detection")
        self.model_max = n
        self.person_class = model.entry.person_class

    def _decode(self, outputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, bool]:
        boxes, classes, scores, count = (o[0] if o.ndim > 1 else o for o in outputs)
        n = int(min(max(count[0], 0), self.model_max))
        boxes, classes, scores = boxes[:n], classes[:n], scores[:n]
        above = scores >= self.cfg.score_threshold
        keep = above & (np.rint(classes).astype(np.int64) == self.person_class)
        # (ymin, xmin, ymax, xmax) -> (x0, y0, x1, y1), clipped to the frame
        b = np.clip(boxes[keep][:, [1, 0, 3, 2]], 0.0, 1.0).astype(np.float32)
        s = scores[keep].astype(np.float32)
        ok = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        b, s = b[ok], s[ok]
        order = np.argsort(-s, kind="stable")[: self.cfg.max_detections]
        capped = bool(n >= self.model_max and above[:n].all()) or len(s) > self.cfg.max_detections
        return b[order], s[order], capped
