"""Programmable synthetic scenes: figures moving along scripted paths over a plain floor.

Ships in the package so tests and the sim board can run the whole pipeline with no footage and
no hardware. Each frame carries ``truth``: the boxes it drew, normalized (x0, y0, x1, y1).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import SyntheticCameraConfig
from .base import Camera, Pacer


@dataclass(frozen=True)
class Actor:
    """A figure following waypoints (t seconds, x, y normalized centre of its feet), box w x h."""

    waypoints: Sequence[tuple[float, float, float]]
    w: float = 0.06
    h: float = 0.18
    color: tuple[int, int, int] = (200, 60, 40)

    def box_at(self, t: float) -> tuple[float, float, float, float] | None:
        ts = [p[0] for p in self.waypoints]
        if t < ts[0] or t > ts[-1]:
            return None
        x = float(np.interp(t, ts, [p[1] for p in self.waypoints]))
        y = float(np.interp(t, ts, [p[2] for p in self.waypoints]))
        return (x - self.w / 2, y - self.h, x + self.w / 2, y)


def random_scene(people: int, seed: int, duration: float = 60.0) -> list[Actor]:
    """People crossing the frame on straight lines at walking pace, some pausing midway."""
    rng = np.random.default_rng(seed)
    actors = []
    for _ in range(people):
        start = float(rng.uniform(0, duration / 2))
        y0, y1 = rng.uniform(0.3, 0.95, size=2)
        x0, x1 = (0.05, 0.95) if rng.random() < 0.5 else (0.95, 0.05)
        cross = float(rng.uniform(6, 15))
        pause = float(rng.uniform(0, 5)) if rng.random() < 0.5 else 0.0
        mid = ((x0 + x1) / 2, (y0 + y1) / 2)
        waypoints = [
            (start, x0, float(y0)),
            (start + cross / 2, mid[0], mid[1]),
            (start + cross / 2 + pause, mid[0], mid[1]),
            (start + cross + pause, x1, float(y1)),
        ]
        color = tuple(int(c) for c in rng.integers(30, 230, size=3))
        actors.append(Actor(waypoints, color=color))  # type: ignore[arg-type]
    return actors


class SyntheticCamera(Camera):
    def __init__(
        self,
        cfg: SyntheticCameraConfig,
        *,
        scene: Sequence[Actor] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(clock=clock)
        self.cfg = cfg
        self.live = cfg.pacing == "realtime"
        self.description = f"synthetic {cfg.size[0]}x{cfg.size[1]} scene"
        self.scene = list(scene) if scene is not None else random_scene(cfg.people, cfg.seed)
        self._n = 0
        self._pacer: Pacer | None = None
        self._floor = np.full((cfg.size[1], cfg.size[0], 3), 128, dtype=np.uint8)

    def _open(self) -> None:
        self._pacer = Pacer(self.cfg.fps, self.cfg.pacing == "realtime", self._clock)
        self._n = 0

    def _read(self) -> tuple[np.ndarray, float | None, Any] | None:
        assert self._pacer is not None
        if self.cfg.frames is not None and self._n >= self.cfg.frames:
            return None
        t_scene = self._n / self.cfg.fps
        self._n += 1
        w, h = self.cfg.size
        img = self._floor.copy()
        truth = []
        for a in self.scene:
            box = a.box_at(t_scene)
            if box is None:
                continue
            x0, y0, x1, y1 = (min(max(v, 0.0), 1.0) for v in box)
            if x1 <= x0 or y1 <= y0:
                continue
            img[int(y0 * h) : int(y1 * h), int(x0 * w) : int(x1 * w)] = a.color
            truth.append((x0, y0, x1, y1))
        return img, self._pacer.next(), np.asarray(truth, dtype=np.float32).reshape(-1, 4)

    def _close(self) -> None:
        pass
