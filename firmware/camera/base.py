"""The camera interface.

The base class owns the public async methods: it runs the backend's blocking hooks on the
camera's own worker thread (never on the event loop), stamps frame ids, checks what a backend
returns and turns backend failures into CameraError. A backend implements ``_open``, ``_read``
and ``_close``.

A camera that runs the detector's network itself (the IMX500) hands over the network's outputs
with the frame (``Capture.outputs``); in its metadata-only mode there are no pixels at all
(``image`` None) and the frame's size is the one its boxes are mapped onto.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import numpy as np

from ..errors import CameraError, CuecamError
from ..inference.base import SensorOutputs

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(slots=True)
class Frame:
    """One captured frame. Pixels stay inside the process and only as long as inference needs them."""

    frame_id: int
    t_mono: float  # seconds on the monotonic clock (for replay: the footage's own timeline)
    image: np.ndarray | None  # RGB uint8 (h, w, 3): the stream inference runs on; None: no pixels (IMX500)
    truth: Any = field(default=None)  # synthetic scenes only: the boxes they drew
    outputs: SensorOutputs | None = None  # the detector's outputs, computed on the camera for this frame

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the frame (of the stream its boxes are mapped onto, without pixels)."""
        if self.image is not None:
            return int(self.image.shape[1]), int(self.image.shape[0])
        assert self.outputs is not None
        return self.outputs.size


class Capture(NamedTuple):
    """What a backend's ``_read`` returns (a plain (image, t, truth) tuple is one too)."""

    image: np.ndarray | None  # None only with outputs: a camera that sends no pixels
    t: float | None  # timestamp, or None for "now"
    truth: Any = None
    outputs: SensorOutputs | None = None


class Camera(ABC):
    """A source of RGB frames with monotonic timestamps."""

    #: True when frames keep coming whether or not they are read (a sensor, real-time replay):
    #: the pipeline then drops the oldest frame when inference falls behind. False for sources
    #: that wait to be read (replay as fast as possible).
    live: bool = True

    #: Every frame has the same size (a sensor, a video): a frame of another size is short or
    #: torn and counts as a read failure. False for sources of mixed sizes (an image folder).
    fixed_size: bool = True

    #: How long close() waits for a hung backend thread to let go after _interrupt().
    hung_join_s: float = 2.0

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._next_id = 1
        self._executor: ThreadPoolExecutor | None = None
        self._hung: asyncio.Future[Any] | None = None  # a read that timed out and still runs
        self._shape: tuple[int, ...] | None = None  # the first frame's shape since open
        self.description = type(self).__name__

    def _start(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """``fn`` on the camera's thread; its future, awaited directly (no task per call)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cuecam-camera")
        return asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        return await self._start(fn)

    async def open(self) -> None:
        try:
            await self._in_thread(self._open)
        except CuecamError:
            raise
        except Exception as e:  # a backend library failing in its own way
            raise CameraError(f"{self.description}: cannot open: {e}", kind="open") from e

    async def read(self, limit_s: float | None = None) -> Frame | None:
        """The next frame, or None at the end of a finite source. A read that takes longer than
        ``limit_s`` seconds is a hung camera: CameraError (close() then unblocks the backend)."""
        if self._hung is not None:
            raise CameraError(f"{self.description}: a previous read is still hung; close and reopen the camera")
        if limit_s is not None:
            limit_s = max(limit_s, self.read_limit_floor_s())
        fut = self._start(self._read)
        try:
            # asyncio.wait, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
            # arrives as the read completes, and the pipeline would then never stop
            done, _ = await asyncio.wait({fut}, timeout=limit_s)
        except asyncio.CancelledError:
            fut.add_done_callback(_swallow)
            raise
        if not done:
            self._hung = fut
            fut.add_done_callback(_swallow)
            raise CameraError(f"{self.description}: no frame within {limit_s:g} s (camera hung)", kind="hang")
        try:
            got = fut.result()
        except CuecamError:
            raise
        except Exception as e:
            raise CameraError(f"{self.description}: read failed: {e}") from e
        if got is None:
            return None
        image, t, truth, outputs = Capture(*got)
        if outputs is not None and not isinstance(outputs, SensorOutputs):
            raise CameraError(f"{self.description}: backend returned {type(outputs).__name__} as sensor outputs",
                              kind="frame")
        if image is None and outputs is not None:  # detections without pixels (metadata only)
            if t is not None and not np.isfinite(t):
                raise CameraError(f"{self.description}: backend returned timestamp {t}", kind="frame")
            frame = Frame(self._next_id, self._clock() if t is None else t, None, truth, outputs)
            self._next_id += 1
            return frame
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise CameraError(f"{self.description}: backend returned {getattr(image, 'dtype', type(image).__name__)} "
                              f"{getattr(image, 'shape', '')}, not RGB uint8", kind="frame")
        if image.shape[0] < 16 or image.shape[1] < 16:
            raise CameraError(f"{self.description}: frame {image.shape[1]}x{image.shape[0]} is too small", kind="frame")
        if self._shape is None or not self.fixed_size:
            self._shape = image.shape  # kept across reopenings: the stream's size does not change
        elif image.shape != self._shape:  # a short or torn frame: the stream is out of step
            raise CameraError(f"{self.description}: frame {image.shape[1]}x{image.shape[0]} after "
                              f"{self._shape[1]}x{self._shape[0]} frames (short or torn frame)", kind="frame")
        if t is not None and not np.isfinite(t):
            raise CameraError(f"{self.description}: backend returned timestamp {t}", kind="frame")
        frame = Frame(self._next_id, self._clock() if t is None else t, image, truth, outputs)
        self._next_id += 1
        return frame

    def status(self) -> dict[str, Any]:
        """Backend-specific figures for /v1/status (e.g. the IMX500's on-sensor timings); none by default."""
        return {}

    def read_limit_floor_s(self) -> float:
        """A read may take at least this long before it counts as hung (an AI Camera loading its
        network firmware sends frames without outputs for minutes); 0 by default."""
        return 0.0

    async def close(self) -> None:
        """Release the device and join the camera thread. Never raises.

        After a hung read the backend's ``_interrupt`` is called (from the event loop) to unblock
        it; once the read has let go, ``_close`` runs on the camera thread as usual. A read that
        does not let go within ``hung_join_s`` is abandoned: its thread ends when the read does,
        and ``_close`` runs on a daemon thread so that it cannot hold up the process's exit."""
        ex = self._executor
        if ex is None:
            return
        hung, self._hung = self._hung, None
        try:
            if hung is not None:
                try:
                    self._interrupt()
                except Exception as e:
                    log.warning("%s: interrupting a hung read failed: %s", self.description, e)
                done, _ = await asyncio.wait({hung}, timeout=self.hung_join_s)
                if not done:
                    log.warning("%s: the camera thread is still blocked %.1f s after close; abandoned",
                                self.description, self.hung_join_s)
                    self._executor = None
                    ex.shutdown(wait=False, cancel_futures=True)
                    threading.Thread(target=self._close_quietly, name="cuecam-camera-close", daemon=True).start()
                    return
            await self._in_thread(self._close)
        except Exception as e:  # shutdown must not raise
            log.warning("%s: error while closing: %s", self.description, e)
        finally:
            if self._executor is ex:
                self._executor = None
                ex.shutdown(wait=True)

    def _close_quietly(self) -> None:
        try:
            self._close()
        except Exception as e:
            log.warning("%s: error while closing: %s", self.description, e)

    def _interrupt(self) -> None:  # noqa: B027 - optional hook
        """Called from another thread when a read hangs: make the blocked ``_read`` return or raise
        (e.g. stop the device). Default: nothing; the hung thread then ends when the read does."""

    @abstractmethod
    def _open(self) -> None:
        """Open the device or file; raise CameraError with a clear message when it cannot."""

    @abstractmethod
    def _read(self) -> tuple[np.ndarray, float | None, Any] | Capture | None:
        """Block until a frame is ready: (RGB image, timestamp or None for 'now', truth), or a
        Capture that also carries the network's outputs computed on the camera."""

    @abstractmethod
    def _close(self) -> None:
        """Release everything _open acquired."""


def _swallow(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()  # retrieved: a hung read that finally failed is not "never retrieved"


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
