"""Programmable synthetic scenes: figures moving along scripted paths.

Ships in the package so tests and the sim board can run the whole pipeline with no hardware.
Two kinds of scene:

- flat-coloured boxes over a plain floor (``random_scene`` or a list of ``Actor``), needing
  no footage at all;
- a scene file (``camera.scene``, see ``scene.py``): real people cut out of photos walking over
  a real background, which the real person detector sees.

Each frame carries ``truth``: float32 (n, 5) rows [actor index, x0, y0, x1, y1] (normalized,
clipped to the frame) for the actors in view; the index is the actor's position in the scene.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import SyntheticCameraConfig
from .base import Camera, Pacer
from .scene import DetectorFactory, SceneRenderer, load_scene


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
    """Plays ``scene`` (a list of Actor boxes), else the scene file ``scene_file``, else a random
    scene from ``cfg.people`` and ``cfg.seed``.

    A scene file is validated here (ConfigError naming file, line and key); its background and
    cut-outs are built on open, on the camera thread (seconds the first time in a process, then
    cached in memory). ``detector_factory`` finds the people in the sprite photos; by default the
    SSD person detector from the package's models folder."""

    def __init__(
        self,
        cfg: SyntheticCameraConfig,
        *,
        scene: Sequence[Actor] | None = None,
        scene_file: Path | None = None,
        detector_factory: DetectorFactory | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(clock=clock)
        self.cfg = cfg
        self.live = cfg.pacing == "realtime"
        self.size = (cfg.size[0], cfg.size[1])
        self.fps = cfg.fps
        self.scene_file = None if scene is not None else scene_file
        self._detector_factory = detector_factory
        self._renderer: SceneRenderer | None = None
        if self.scene_file is not None:
            self.script = load_scene(self.scene_file)
            self.size, self.fps = self.script.size, self.script.fps
            self.scene: list[Actor] = []
            self.description = f"synthetic scene {self.scene_file.name} {self.size[0]}x{self.size[1]}"
        else:
            self.scene = list(scene) if scene is not None else random_scene(cfg.people, cfg.seed)
            self.description = f"synthetic {self.size[0]}x{self.size[1]} scene"
        self._n = 0
        self._pacer: Pacer | None = None
        self._floor = np.full((self.size[1], self.size[0], 3), 128, dtype=np.uint8)

    def _open(self) -> None:
        if self.scene_file is not None and self._renderer is None:
            self._renderer = SceneRenderer(self.script, detector_factory=self._detector_factory)
        self._pacer = Pacer(self.fps, self.cfg.pacing == "realtime", self._clock)
        self._n = 0

    def _read(self) -> tuple[np.ndarray, float | None, Any] | None:
        assert self._pacer is not None
        if self.cfg.frames is not None and self._n >= self.cfg.frames:
            return None
        if self._renderer is not None:
            per_pass = self.script.frames
            if self._n >= per_pass and not self.script.spec.loop:
                return None
            img, truth = self._renderer.render((self._n % per_pass) / self.fps)
        else:
            img, truth = self._draw_boxes(self._n / self.fps)
        self._n += 1
        return img, self._pacer.next(), truth

    def _draw_boxes(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        w, h = self.size
        img = self._floor.copy()
        rows = []
        for i, a in enumerate(self.scene):
            box = a.box_at(t)
            if box is None:
                continue
            x0, y0, x1, y1 = (min(max(v, 0.0), 1.0) for v in box)
            if x1 <= x0 or y1 <= y0:
                continue
            img[int(y0 * h) : int(y1 * h), int(x0 * w) : int(x1 * w)] = a.color
            rows.append((i, x0, y0, x1, y1))
        return img, np.asarray(rows, dtype=np.float32).reshape(-1, 5)

    def _close(self) -> None:
        pass
