"""The frame pipeline: camera -> bounded queue -> detector thread -> analysis thread -> ring buffer.

Decoding or capture runs on the camera's thread; each frame's detector runs on the detector thread
and its tracking, pose and signals on the analysis thread, so one frame's analysis overlaps the
next frame's detector, and the next frame waiting in the queue is handed over before this one's
result is awaited (the threads never wait for the event loop, which only moves small objects
between them and wakes once per frame). The queue between camera and
inference is bounded: for a live source the oldest frame is dropped when inference is behind
(and counted), for a source that waits (replay as fast as possible) the camera waits instead.
A frame's pixels are released as soon as the analyzer (detector, tracker, pose, signals) has run
on the worker thread; only boxes and sentiment vectors come back to the event loop, and only
the vectors are kept (detections stay internal: counted, handed to in-process observers such
as tests, never stored or served).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import numpy as np

from .camera import Camera, Frame
from .errors import CameraError, CuecamError
from .histogram import Histogram
from .ringbuffer import RingBuffer
from .signals.analyzer import FrameAnalyzer, FrameResult
from .signals.schema import record_fields

log = logging.getLogger(__name__)
T = TypeVar("T")


# Called on the event loop for every processed frame: (frame id, capture time, analysis result).
Observer = Callable[[int, float, FrameResult], None]
# Called on the event loop when the model failed this many invokes in a row; True when it was
# replaced (a CPU fallback) and analysis goes on, False to stop analysing (degraded).
ModelFailureHandler = Callable[[Exception, int], Awaitable[bool]]


class _Superseded(Exception):
    """A frame detected before a pause or closing time: its stage two never runs."""


# A frame handed to the detector thread: (frame id, capture time, generation, its stages' result).
_Job = tuple[int, float, int, "concurrent.futures.Future[FrameResult]"]


class ModelFailed(CuecamError):
    """The detector failed too many invokes in a row and nothing could replace it."""

    exit_code = 3


@dataclass(frozen=True)
class RestartPolicy:
    """How a failing camera is restarted: exponential backoff from ``backoff_s``, capped."""

    read_timeout_s: float | None = 5.0
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0


Halt = Literal["camera", "model", "crash"]
# seconds per detector invoke (preprocessing and decoding included): an Edge TPU's few ms to a Zero 2 W's ~0.3 s
INFER_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0)


@dataclass
class PipelineStats:
    started: float
    frames_captured: int = 0
    frames_processed: int = 0
    frames_dropped: int = 0
    inference_errors: int = 0
    camera_restarts: int = 0  # successful reopenings after a failure
    camera_recoveries: int = 0  # frames came back after a failure
    camera_failures: int = 0  # reads or reopenings that failed
    camera_faults: dict[str, int] = field(default_factory=dict)  # failures by kind (raise, hang, frame)
    consecutive_errors: int = 0  # failed invokes in a row
    model_switches: int = 0
    frames_thermal_skipped: int = 0  # not analysed to cool down (thermal.soft_limit_c)
    last_activity: float | None = None  # a frame processed, or dropped on purpose (closed hours)
    next_restart_s: float | None = None  # while restarting: the current backoff
    last_capture: float | None = None
    last_processed: float | None = None
    first_detection: float | None = None
    frames_with_people: int = 0
    frames_discarded: int = 0  # dropped unanalysed, or their results thrown away, by an opt-out
    frames_closed: int = 0  # dropped before detection during closed hours (staff only)
    people_last_frame: int = 0  # confident detections (tracking.high_score and above)
    tracked_last_frame: int = 0  # confirmed tracks matched
    state: str = "starting"  # starting | running | restarting | ended | error | stopped
    error: str | None = None
    # In state error, what stopped the pipeline: the camera (no restart policy), the model (it kept
    # failing and nothing replaced it) or a crash of the pipeline itself.
    halted_by: Halt | None = None
    vectors: int = 0
    tracks: int = 0  # confirmed tracks matched in the last frame
    pose_invokes: int = 0
    infer_ms: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=1000))
    model_ms: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=1000))
    total_ms: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=1000))
    processed_at: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=2000))
    infer_seconds: Histogram = field(default_factory=lambda: Histogram(INFER_BUCKETS))  # since start, for /metrics

    def fps(self, now: float, window: float = 10.0) -> float:
        ts = [t for t in self.processed_at if t >= now - window]
        if len(ts) < 2:
            return 0.0
        return (len(ts) - 1) / max(ts[-1] - ts[0], 1e-9)

    def infer_percentiles(self) -> tuple[float | None, float | None]:
        return self.percentiles(self.infer_ms)

    @staticmethod
    def percentiles(values: collections.deque[float]) -> tuple[float | None, float | None]:
        if not values:
            return None, None
        p50, p99 = np.percentile(np.fromiter(values, dtype=np.float64), [50, 99])
        return float(p50), float(p99)


class Pipeline:
    def __init__(
        self,
        *,
        camera: Camera,
        analyzer: FrameAnalyzer,
        vectors: RingBuffer,
        queue_size: int = 2,
        restart: RestartPolicy | None = RestartPolicy(),
        max_consecutive_errors: int = 3,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.camera = camera
        self.analyzer = analyzer
        self.vectors = vectors
        self.observers: list[Observer] = []
        self.restart = restart  # None: a camera failure stops the pipeline (state error)
        self.max_consecutive_errors = max_consecutive_errors
        self.on_model_failure: ModelFailureHandler | None = None
        # The camera could not be opened at start (a live sensor): run() keeps reopening it.
        self.open_error: CameraError | None = None
        # Thermal: at least this many seconds between analysed frames (0: as they come).
        self.min_interval_s = 0.0
        self._last_accepted: float | None = None
        self._clock = clock
        self._wall = wall_clock
        self._queue: asyncio.Queue[Frame | None] = asyncio.Queue(maxsize=queue_size)
        # Two stages per frame, each on its own thread, so that one frame's tracking, pose and signals
        # run beside the next frame's detector: the detector thread runs stage one and queues stage
        # two on the analysis thread (which also runs resets and model loads, in order).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cuecam-inference")
        self._detect_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cuecam-detect")
        # Held to bump the generation and queue a reset (pause, closing time) and, on the detector
        # thread, to compare it and queue stage two: so no stage two of an earlier generation can
        # be queued behind the reset that forgets its tracks.
        self._stage_lock = threading.Lock()
        self.stats = PipelineStats(started=clock())
        # Opt-out: while cleared, nothing is read from the camera and nothing is analysed.
        self._measuring = asyncio.Event()
        self._measuring.set()
        self._generation = 0  # bumped by pause(): results of frames analysed before it are dropped
        # Closed hours: called with the wall clock; True drops the frame before detection.
        self.closed: Callable[[float], bool] = lambda _t: False
        self._was_closed = False
        # Set when the consumer has something to do: a frame was queued, or a frame's stages ended
        # (set from the thread that ended them, through the loop). One wake-up each, no polling.
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self) -> None:
        """Run until the source ends or the task is cancelled. The camera must already be open,
        unless ``open_error`` says why it is not (it is then reopened with backoff first)."""
        self.stats.state = "running" if self.open_error is None else "restarting"
        self._loop = asyncio.get_running_loop()
        producer = asyncio.create_task(self._produce(), name="cuecam-capture")
        consumer = asyncio.create_task(self._consume(), name="cuecam-inference")
        try:
            await asyncio.wait({producer, consumer}, return_when=asyncio.FIRST_COMPLETED)
            if consumer.done():  # the consumer only ends early by crashing
                e = consumer.exception()
                if isinstance(e, ModelFailed):
                    log.error("analysis stopped: %s", e)
                    self.stats.state, self.stats.error, self.stats.halted_by = "error", f"model: {e}", "model"
                    return
                log.error("pipeline stopped: %r", e, exc_info=e)
                self.stats.state, self.stats.error, self.stats.halted_by = "error", f"pipeline: {e!r}", "crash"
                return
            await producer  # the source ended or failed for good: let inference drain the queue
            await self._queue.put(None)
            await consumer
        finally:
            for t in (producer, consumer):
                t.cancel()
            await asyncio.gather(producer, consumer, return_exceptions=True)

    async def _produce(self) -> None:
        pol = self.restart
        backoff = pol.backoff_s if pol else 0.0
        failed = self.open_error  # the camera is closed after this failure: reopen it first
        while True:
            if failed is not None and pol is not None:
                failed = await self._reopen(failed, backoff)
                backoff = min(backoff * 2, pol.backoff_max_s)
                if failed is not None:
                    continue
            await self._measuring.wait()
            try:
                frame = await self.camera.read(pol.read_timeout_s if pol else None)
            except CameraError as e:
                st = self.stats
                st.error = str(e)
                st.camera_failures += 1
                st.camera_faults[e.kind] = st.camera_faults.get(e.kind, 0) + 1
                if pol is None:
                    log.error("camera stopped: %s", e)
                    st.state, st.halted_by = "error", "camera"
                    return
                failed = e
                continue
            if frame is None:
                self.stats.state = "ended"
                log.info("camera source ended after %d frames", self.stats.frames_captured)
                return
            if self.stats.state == "restarting":  # frames are back
                self.stats.camera_recoveries += 1
                log.info("camera recovered (%d restarts so far)", self.stats.camera_restarts)
                self.stats.state, self.stats.error, self.stats.next_restart_s = "running", None, None
            if pol:
                backoff = pol.backoff_s
            if not self._measuring.is_set():  # paused while the frame was being captured
                self.stats.frames_discarded += 1
                del frame
                continue
            if self.min_interval_s > 0 and not await self._thermal_gate():
                del frame
                continue
            self.stats.frames_captured += 1
            self.stats.last_capture = self._clock()
            if self.camera.live:
                if self._queue.full():
                    self._queue.get_nowait()  # drop the oldest: fresh frames matter more
                    self.stats.frames_dropped += 1
                self._queue.put_nowait(frame)
            else:
                await self._queue.put(frame)
            self._wake.set()

    async def _reopen(self, e: CameraError, delay: float) -> CameraError | None:
        """Close the failed camera, wait ``delay``, open it again. Returns the open's error, if
        it failed (counted as a failure; the camera is left closed)."""
        st = self.stats
        st.state, st.next_restart_s = "restarting", delay
        if st.camera_failures <= 10 or delay >= (self.restart.backoff_max_s if self.restart else 0):
            log.error("camera failed: %s; reopening in %.2f s", e, delay)
        await self.camera.close()
        await asyncio.sleep(delay)
        try:
            await self.camera.open()
        except CameraError as e2:
            st.error = str(e2)
            st.camera_failures += 1
            st.camera_faults["open"] = st.camera_faults.get("open", 0) + 1
            await self.camera.close()
            return e2
        st.camera_restarts += 1
        return None

    async def _thermal_gate(self) -> bool:
        """Too hot: keep at most one frame per min_interval_s. A live source's extra frames are
        dropped (counted); a source that waits is simply read later."""
        now = self._clock()
        if self._last_accepted is not None and now - self._last_accepted < self.min_interval_s:
            if self.camera.live:
                self.stats.frames_thermal_skipped += 1
                return False
            await asyncio.sleep(self.min_interval_s - (now - self._last_accepted))
            now = self._clock()
        self._last_accepted = now
        return True

    async def _submit(self, frame: Frame) -> _Job | None:
        """Hand a frame to the analysis thread: (frame id, time, generation, result), or None when it
        is not analysed (opted out, closed hours). The pixels go with the job and no further."""
        if not self._measuring.is_set():  # opted out: a frame that slipped in after the purge
            self.stats.frames_discarded += 1
            return None
        if self.closed(self._wall()):
            self.stats.frames_closed += 1
            self.stats.last_activity = self._clock()
            if not self._was_closed:  # closing time: forget every track and pending window
                self._was_closed = True
                await self._reset_analysis()
            return None  # never reaches the detector
        self._was_closed = False
        generation = self._generation
        out: concurrent.futures.Future[FrameResult] = concurrent.futures.Future()
        out.add_done_callback(self._stages_ended)
        self._detect_executor.submit(self._stage_one, frame, generation, out)
        return frame.frame_id, frame.t_mono, generation, out

    def _stages_ended(self, _out: concurrent.futures.Future[FrameResult]) -> None:
        """On the thread that ended a frame's stages: wake the consumer (one loop wake-up)."""
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._wake.set)
        except RuntimeError:  # the loop is closed: nobody waits for this frame any more
            pass

    async def _until(self, ready: Callable[[], bool]) -> None:
        """Sleep until ``ready()``, woken by each queued frame and each frame whose stages ended."""
        while not ready():
            self._wake.clear()
            if ready():
                return
            await self._wake.wait()

    def _stage_one(self, frame: Frame, generation: int, out: concurrent.futures.Future[FrameResult]) -> None:
        """On the detector thread: detect (or decode the detector outputs that came with the frame),
        then queue the rest of the frame on the analysis thread."""
        try:
            dets = self.analyzer.detect(frame.image, frame.outputs)
        except BaseException as e:
            out.set_exception(e)
            return
        with self._stage_lock:
            if generation != self._generation:  # paused (or closed) meanwhile: its tracks must not come back
                out.set_exception(_Superseded())
                return
            self._executor.submit(self._stage_two, frame.image, frame.t_mono, frame.size, dets, out)

    def _stage_two(self, image: np.ndarray | None, t: float, size: tuple[int, int], dets: Any,
                   out: concurrent.futures.Future[FrameResult]) -> None:
        try:
            out.set_result(self.analyzer.process(image, t, dets, size=size))
        except BaseException as e:
            out.set_exception(e)

    async def _reset_analysis(self) -> int:
        """A new generation and the analyzer reset on the analysis thread, queued under the stage
        lock: frames in flight are dropped, and none of them reaches the tracker after the reset."""
        with self._stage_lock:
            self._generation += 1
            fut = self._executor.submit(self.analyzer.reset)
        return await asyncio.wrap_future(fut)

    async def _consume(self) -> None:
        """Analyse frames in order, one frame of look-ahead: while a frame is in its stages, the
        next one is handed to the detector thread as soon as the camera delivers it, so the
        detector goes from frame to frame without waiting for the event loop to store a result;
        a pause still purges after both (they are dropped by their generation). The consumer
        sleeps on one event (a frame queued, a frame's stages ended): no task or timer per frame."""
        ahead: _Job | None = None
        ended = False
        while True:
            job: _Job | None
            if ahead is not None:
                job, ahead = ahead, None
            else:
                if ended:
                    return
                frame = await self._queue.get()
                if frame is None:
                    return
                job = await self._submit(frame)
                del frame
                if job is None:
                    continue
            frame_id, t_mono, generation, out = job
            while not out.done():
                if ahead is None and not ended and not self._queue.empty():
                    # the next frame goes to the detector thread as soon as it is there, while this
                    # one is still in its second stage (or, already waiting, at once)
                    nxt = self._queue.get_nowait()
                    if nxt is None:
                        ended = True
                    else:
                        ahead = await self._submit(nxt)
                        del nxt
                    continue
                self._wake.clear()
                if not out.done() and (ahead is not None or ended or self._queue.empty()):
                    await self._wake.wait()
            try:
                res = out.result()
            except _Superseded:  # an opt-out or closing time came while it was detected
                self.stats.frames_discarded += 1
                continue
            except Exception as e:  # one bad frame must not stop the device
                if ahead is not None:
                    # the look-ahead frame ran on the same failing model, before any replacement:
                    # it is dropped, so the failures are judged (and a fallback made) once
                    await self._until(ahead[3].done)
                    ahead = None
                    self.stats.frames_dropped += 1
                await self._model_failed(e)
                continue
            self._store(frame_id, t_mono, generation, res)

    def _store(self, frame_id: int, t_mono: float, generation: int, res: FrameResult) -> None:
        """One analysed frame's vectors into the ring buffer, its counts into the stats, observers told."""
        self.stats.consecutive_errors = 0
        if generation != self._generation:  # an opt-out came while this frame was analysed
            self.stats.frames_discarded += 1
            return
        dets = res.detections
        n = res.confident  # people the detector is sure of (its boxes are candidates down to a low score)
        wall = self._wall()
        now = self._clock()
        for v in res.vectors:
            # the window ended (t_mono - v.t_end) seconds of footage before this frame
            ago = max(t_mono - v.t_end, 0.0)
            self.vectors.append(**record_fields(v, wall - ago, now - ago))
        st = self.stats
        st.vectors += len(res.vectors)
        st.tracks = res.tracks
        st.pose_invokes += res.pose_invokes
        st.model_ms.append(res.model_ms)
        st.total_ms.append(res.total_ms)
        st.frames_processed += 1
        st.last_processed = st.last_activity = now
        st.infer_ms.append(dets.infer_ms)
        st.infer_seconds.observe(dets.infer_ms / 1000.0)
        st.processed_at.append(now)
        st.people_last_frame = n
        st.tracked_last_frame = res.tracks
        if n:
            st.frames_with_people += 1
            if st.first_detection is None:
                st.first_detection = now
        for observe in self.observers:
            try:
                observe(frame_id, t_mono, res)
            except Exception:  # an in-process observer must not stop the device
                log.exception("pipeline observer failed on frame %d", frame_id)

    async def _model_failed(self, e: Exception) -> None:
        st = self.stats
        st.inference_errors += 1
        st.consecutive_errors += 1
        st.error = f"inference failed: {e}"
        if st.consecutive_errors in (1, self.max_consecutive_errors):
            log.error("inference failed (%d in a row): %r", st.consecutive_errors, e)
        if st.consecutive_errors < self.max_consecutive_errors:
            return
        replaced = self.on_model_failure is not None and await self.on_model_failure(e, st.consecutive_errors)
        if not replaced:
            raise ModelFailed(f"the detector failed {st.consecutive_errors} invokes in a row ({e})") from e
        st.consecutive_errors = 0
        st.model_switches += 1
        st.error = None

    def run_on_worker(self, fn: Callable[[], T]) -> Awaitable[T]:
        """Run ``fn`` on the analysis thread (after the frame being analysed, never beside it)."""
        return asyncio.get_running_loop().run_in_executor(self._executor, fn)

    @property
    def measuring(self) -> bool:
        return self._measuring.is_set()

    async def pause(self) -> tuple[int, int]:
        """Stop measuring now: no more camera reads, frames in flight dropped, every track and
        pending window forgotten. Returns (frames dropped, tracks forgotten)."""
        self._measuring.clear()
        dropped = 0
        sentinel = False
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is None:
                sentinel = True
            else:
                dropped += 1
            del item
        if sentinel:
            self._queue.put_nowait(None)
        self.stats.frames_discarded += dropped
        # On the analysis thread, after the frame being analysed (if any): never concurrently.
        tracks = await self._reset_analysis()
        return dropped, tracks

    def resume(self) -> None:
        self._measuring.set()

    async def close(self) -> None:
        """Close the camera and join the inference thread. Never raises."""
        await self.camera.close()
        try:
            await asyncio.get_running_loop().run_in_executor(None, self._detect_executor.shutdown, True)
            await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)
        except Exception as e:
            log.warning("inference thread did not stop cleanly: %s", e)
        if self.stats.state in ("running", "starting"):
            self.stats.state = "stopped"
