"""The camera interface.

The base class owns the public async methods: it runs the backend's blocking hooks on the
camera's own worker thread (never on the event loop), stamps frame ids, checks what a backend
returns and turns backend failures into CameraError. A backend implements ``_open``, ``_read``
and ``_close``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from ..errors import CameraError, CuecamError

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(slots=True)
class Frame:
    """One captured frame. Pixels stay inside the process and only as long as inference needs them."""

    frame_id: int
    t_mono: float  # seconds on the monotonic clock (for replay: the footage's own timeline)
    image: np.ndarray  # RGB uint8 (h, w, 3): the stream inference runs on
    truth: Any = field(default=None)  # synthetic scenes only: the boxes they drew


class Camera(ABC):
    """A source of RGB frames with monotonic timestamps."""

    #: True when frames keep coming whether or not they are read (a sensor, real-time replay):
    #: the pipeline then drops the oldest frame when inference falls behind. False for sources
    #: that wait to be read (replay as fast as possible).
    live: bool = True

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._next_id = 1
        self._executor: ThreadPoolExecutor | None = None
        self.description = type(self).__name__

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cuecam-camera")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def open(self) -> None:
        try:
            await self._in_thread(self._open)
        except CuecamError:
            raise
        except Exception as e:  # a backend library failing in its own way
            raise CameraError(f"{self.description}: cannot open: {e}") from e

    async def read(self) -> Frame | None:
        """The next frame, or None at the end of a finite source."""
        try:
            got = await self._in_thread(self._read)
        except CuecamError:
            raise
        except Exception as e:
            raise CameraError(f"{self.description}: read failed: {e}") from e
        if got is None:
            return None
        image, t, truth = got
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise CameraError(f"{self.description}: backend returned {image.dtype} {image.shape}, not RGB uint8")
        frame = Frame(self._next_id, self._clock() if t is None else t, image, truth)
        self._next_id += 1
        return frame

    async def close(self) -> None:
        """Release the device and join the camera thread. Never raises."""
        if self._executor is None:
            return
        try:
            await self._in_thread(self._close)
        except Exception as e:  # shutdown must not raise
            log.warning("%s: error while closing: %s", self.description, e)
        finally:
            self._executor.shutdown(wait=True)
            self._executor = None

    @abstractmethod
    def _open(self) -> None:
        """Open the device or file; raise CameraError with a clear message when it cannot."""

    @abstractmethod
    def _read(self) -> tuple[np.ndarray, float | None, Any] | None:
        """Block until a frame is ready: (RGB image, timestamp or None for 'now', truth)."""

    @abstractmethod
    def _close(self) -> None:
        """Release everything _open acquired."""


class Pacer:
    """Timestamps for a source with a nominal frame rate; sleeps to keep real time if asked."""

    def __init__(self, fps: float, realtime: bool, clock: Callable[[], float]) -> None:
        self.fps = fps
        self.realtime = realtime
        self._clock = clock
        self._t0 = clock()
        self._n = 0

    def next(self) -> float:
        t = self._t0 + self._n / self.fps
        self._n += 1
        if self.realtime:
            delay = t - self._clock()
            if delay > 0:
                time.sleep(delay)
            elif delay < -1.0:  # fell far behind (debugger, overload): re-anchor, do not burst
                self._t0, self._n = self._clock(), 1
                return self._t0
        return t
