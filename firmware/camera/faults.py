"""A fault-injecting camera: wraps any backend and makes chosen reads fail the way boards do.

Fault kinds (what a camera really does on a bad day):

- ``raise``: the read raises (libcamera error, cable pulled: ``RuntimeError``);
- ``hang``: the read blocks and never returns by itself (a wedged driver) until the camera is
  closed, which interrupts it (the pipeline's read timeout notices);
- ``garbage``: the read returns something that is not an RGB uint8 frame (wrong dtype and shape);
- ``short``: the read returns a truncated frame (fewer rows than the stream's frames).

``plan`` maps a read number (1-based, counted across reopenings) to a fault kind, or a callable
decides per read; ``open_failures`` makes the next opens fail. Reads that are not faulted come
from the wrapped backend, on the same camera thread, so everything else (pacing, timestamps,
end of source) is the real backend's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

import numpy as np

from .base import Camera, Capture

FaultKind = Literal["raise", "hang", "garbage", "short"]
FAULT_KINDS: tuple[FaultKind, ...] = ("raise", "hang", "garbage", "short")


class InjectedFault(RuntimeError):
    """What a ``raise`` fault raises (a backend library error, as the base class sees it)."""


class FaultyCamera(Camera):
    def __init__(
        self,
        inner: Camera,
        plan: Mapping[int, FaultKind] | Callable[[int], FaultKind | None],
        *,
        hang_max_s: float = 60.0,
        open_failures: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(clock=clock)
        self.inner = inner
        self.live = inner.live
        self.description = f"faulty {inner.description}"
        self._plan = plan
        self.hang_max_s = hang_max_s  # a hang ends by itself after this long at the latest
        self.reads = 0
        self.injected: dict[str, int] = {k: 0 for k in FAULT_KINDS}
        self.opens = 0
        self.open_failures = open_failures  # the next this many opens fail (no camera on the bus)
        self._release = threading.Event()

    def _fault_for(self, n: int) -> FaultKind | None:
        if callable(self._plan):
            return self._plan(n)
        return self._plan.get(n)

    def _open(self) -> None:
        self._release.clear()
        if self.open_failures > 0:
            self.open_failures -= 1
            raise InjectedFault("injected open failure: no camera found")
        self.inner._open()
        self.fixed_size = self.inner.fixed_size
        self.opens += 1

    def _read(self) -> tuple[np.ndarray, float | None, Any] | Capture | None:
        self.reads += 1
        kind = self._fault_for(self.reads)
        if kind is None:
            return self.inner._read()
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
        self.injected[kind] += 1
        if kind == "raise":
            raise InjectedFault(f"injected fault at read {self.reads}")
        if kind == "hang":
            self._release.wait(self.hang_max_s)
            raise InjectedFault(f"injected hang at read {self.reads} released")
        got = self.inner._read()
        if got is None:
            return None
        image, t, truth, outputs = Capture(*got)
        if image is None:  # a camera that sends no pixels: its frame comes back as noise
            return np.zeros(500, dtype=np.int16), t, truth
        if kind == "garbage":
            return np.frombuffer(image.tobytes()[:1000], dtype=np.int16), t, truth
        return Capture(image[: max(image.shape[0] // 2, 1)], t, truth, outputs)  # short

    def _interrupt(self) -> None:
        self._release.set()

    def _close(self) -> None:
        self._release.set()
        self.inner._close()
