"""Zones in pixel space, and the unit every distance and speed is measured in.

Without a ground-plane calibration, distances are in *person heights* (the track's own box
height, so a person far from the camera and one close to it are measured alike). With one, they
are metres on the floor divided by ``PERSON_HEIGHT_M``, so the same thresholds apply.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..config import GroundPlaneConfig, ZoneConfig

PERSON_HEIGHT_M = 1.7
KIND_PRIORITY = {"attraction": 0, "queue": 1, "aisle": 2, "entrance": 3}  # the most specific first
LINE_HYSTERESIS = 0.3  # person heights past a counting line (0.5 m with a ground plane)
QUEUE_MIN_WAIT_S = 2.0


@dataclass(frozen=True)
class Zone:
    index: int
    name: str
    kind: str
    polygon: np.ndarray  # (k, 2) float32 pixels (a line's polyline)
    focus: np.ndarray | None  # (2,) pixels
    influence: float  # person heights
    expected_dwell_s: float | None
    # a counting line (kind "line"): polygon holds its polyline; "in" is the side where the cross
    # product of a segment's direction and (point - its start) has this sign (image coordinates)
    in_sign: float = 0.0
    hysteresis: float = LINE_HYSTERESIS  # measuring units (see the module docstring)
    entrance: bool = False
    min_wait_s: float = QUEUE_MIN_WAIT_S  # a queue: shorter stays are passers-by

    def contains(self, p: np.ndarray) -> bool:
        return cv2.pointPolygonTest(self.polygon, (float(p[0]), float(p[1])), False) >= 0


class ZoneMap:
    """The configured zones for one frame size, plus the ground-plane mapping if any."""

    def __init__(self, zones: list[ZoneConfig], ground: GroundPlaneConfig | None, width: int, height: int) -> None:
        scale = np.array([width, height], dtype=np.float32)
        self.size = (width, height)
        self._h: np.ndarray | None = None
        if ground is not None:
            src = (np.array(ground.image, dtype=np.float32) * scale).astype(np.float32)
            dst = np.array(ground.world, dtype=np.float32)
            self._h = cv2.getPerspectiveTransform(src, dst)
        self.zones = [
            Zone(
                index=i,
                name=z.name,
                kind=z.kind,
                polygon=(np.array(z.points, dtype=np.float32) * scale).astype(np.float32),
                focus=None if z.focus is None else np.array(z.focus, dtype=np.float64) * scale,
                influence=(z.influence if z.influence is not None else (5.0 if ground else 3.0))
                / (PERSON_HEIGHT_M if ground else 1.0),
                expected_dwell_s=z.expected_dwell_s,
                # walking the line in the image (y down), "left" is where the cross product is negative
                in_sign={"left": -1.0, "right": 1.0}.get(z.in_side or "", 0.0),
                hysteresis=(z.hysteresis if z.hysteresis is not None else (0.5 if ground else LINE_HYSTERESIS))
                / (PERSON_HEIGHT_M if ground else 1.0),
                entrance=bool(z.entrance if z.entrance is not None else z.kind == "line"),
                min_wait_s=z.min_wait_s if z.min_wait_s is not None else QUEUE_MIN_WAIT_S,
            )
            for i, z in enumerate(zones)
        ]
        self.attractions = [z for z in self.zones if z.kind == "attraction"]
        self.excluded = [z for z in self.zones if z.kind == "excluded"]
        self.measured = sorted((z for z in self.zones if z.kind in KIND_PRIORITY), key=lambda z: KIND_PRIORITY[z.kind])
        self.lines = [z for z in self.zones if z.kind == "line"]  # counting lines, not areas
        self.queues = [z for z in self.zones if z.kind == "queue"]

    @property
    def calibrated(self) -> bool:
        return self._h is not None

    def in_excluded(self, p: np.ndarray) -> bool:
        return any(z.contains(p) for z in self.excluded)

    def zones_at(self, p: np.ndarray) -> list[Zone]:
        """Measured zones containing p, attraction first."""
        return [z for z in self.measured if z.contains(p)]

    def to_units(self, pts: np.ndarray, bh_px: float) -> np.ndarray:
        """Pixel points (n, 2) to the measuring unit: floor metres / 1.7 with a ground plane,
        else pixels / the person's box height."""
        pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        if self._h is None:
            return pts / max(bh_px, 1.0)
        world = cv2.perspectiveTransform(pts.reshape(-1, 1, 2), self._h).reshape(-1, 2)
        return world / PERSON_HEIGHT_M
