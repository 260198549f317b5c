"""Throughput, measured fairly: the pipeline and the bare models in alternating blocks of one run.

Every side runs in the same process, on the same footage, one block at a time, and the blocks
alternate (A B A B ..., the order reversed every other round so that drift on a shared machine
cancels out); a figure is the frames of all of a side's blocks over the time of all its blocks.
Nothing is computed across phases minutes apart.

The sides (all on media/vtest.avi, 768x576):

* ``ram`` / ``ram_pose``: the service (camera thread, analysis thread, tracker, signals, ring
  buffer, event loop) fed by ``RamCamera``, frames decoded into RAM beforehand (RGB): what a
  picamera2 lores stream is, a frame that costs no decode. Pose off / on (sim.yaml's MoveNet).
* ``bare`` / ``bare_pose``: the models alone, one thread calling them back to back on the same RAM
  frames: ``Detector.detect`` (resize to the input, invoke, SSD decoding) and, for ``bare_pose``,
  ``PoseEstimator.estimate`` on the tallest detected people, as many invokes per frame as the
  ``ram_pose`` blocks made (their running figure). That is exactly the model work the analyzer
  does for a frame; what the pipeline adds is everything else.
* ``file`` / ``file_pose``: the service on the replay camera (OpenCV decodes the file, as fast as
  the analysis goes). Pose off / on.
* ``naive``: the loop a user writes from the TFLite examples, one thread: ``VideoCapture.read``,
  BGR to RGB, ``detect`` (resize, invoke, decoding).
* ``realtime``: the service on RamCamera paced at the footage's 10 fps (a live camera), pose
  off: process CPU seconds per frame, against the CPU seconds per frame of the ``bare`` blocks.
  ``realtime_cpu_ms_per_frame_<role>`` splits it by thread (/proc/self/task, 10 ms ticks):
  detector (resize, invoke, decoding), native (the runtime's worker threads), analysis (tracker,
  signals, counts), loop (the event loop: camera hand-over, ring buffer, observers, and the idle
  timers of the other sides' services, which stay up between their blocks), camera.

Each ratio is the median over the rounds of one side's block against the other's in the same round
(``paired``), so that a load spike from other work spoils one pair and not the figure; the ratio
of the totals is printed beside it. Figures: ram_pipeline_vs_model_ratio = ram / bare; ram_pipeline_pose_vs_models_ratio =
ram_pose / bare_pose; file_pipeline_vs_naive_ratio = file / naive; pipeline_vs_model_ratio =
file_pose / bare_pose (sim.yaml as it runs, decode included, against its models);
nonmodel_overhead_ratio = the ram_pose blocks' (analysis - models) / models per frame;
realtime_cpu_per_frame_vs_model = realtime CPU per frame / bare CPU per frame.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from firmware.app import Service
from firmware.camera import Camera, create_camera
from firmware.camera.base import Pacer
from firmware.config import LoadedConfig, ReplayCameraConfig
from firmware.inference import Detector, create_detector
from firmware.inference.pose import PoseEstimator, create_pose_estimator
from firmware.model_manager import load_models
from firmware.models import load_manifest
from firmware.signals.analyzer import FrameResult

RAM_FRAMES = 300  # decoded once; the RAM source loops over them
BLOCK = 40  # frames per block (pipeline and bare alike)
SKIP = 4  # the first frames of a block are not timed: every side starts its block cold
ROUNDS = 9
REALTIME_FRAMES = 30  # 3 s at 10 fps per round
GOALS = {"ram_pipeline_vs_model_ratio": (">=", 0.95), "ram_pipeline_pose_vs_models_ratio": (">=", 0.90),
         "file_pipeline_vs_naive_ratio": (">=", 1.0), "nonmodel_overhead_ratio": ("<=", 0.05),
         "realtime_cpu_per_frame_vs_model": ("<=", 1.15)}


class _Allowance:
    """How many more frames a gated source may hand out; the reader blocks at zero."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._left = 0
        self._closed = False

    def allow(self, n: int) -> None:
        with self._cond:
            self._left += n
            self._cond.notify_all()

    def take(self) -> None:
        with self._cond:
            while self._left <= 0 and not self._closed:
                self._cond.wait(0.5)
            self._left -= 1

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._left = 10**9
            self._cond.notify_all()


class RamCamera(Camera):
    """Frames decoded into RAM beforehand (RGB uint8): a picamera2 lores stream without the sensor."""

    def __init__(self, frames: list[np.ndarray], *, fps: float = 10.0, realtime: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock=clock)
        self.frames = frames
        self.live = realtime
        self.description = f"{len(frames)} frames in RAM"
        self.gate = _Allowance()
        self._fps, self._realtime = fps, realtime
        self._pacer: Pacer | None = None
        self._i = 0

    def _open(self) -> None:
        self._pacer = Pacer(self._fps, self._realtime, self._clock)

    def _read(self) -> tuple[np.ndarray, float | None, Any]:
        self.gate.take()
        assert self._pacer is not None
        img = self.frames[self._i % len(self.frames)]
        self._i += 1
        return img, self._pacer.next(), None

    def _close(self) -> None:
        self.gate.close()


class GatedCamera(Camera):
    """Another backend (the replay camera) behind the same allowance."""

    def __init__(self, inner: Camera) -> None:
        super().__init__(clock=inner._clock)
        self.inner = inner
        self.live = inner.live
        self.description = inner.description
        self.gate = _Allowance()

    def _open(self) -> None:
        self.inner._open()

    def _read(self) -> tuple[np.ndarray, float | None, Any] | None:
        self.gate.take()
        return self.inner._read()

    def _close(self) -> None:
        self.gate.close()
        self.inner._close()


@dataclass
class Side:
    name: str
    frames: int = 0
    seconds: float = 0.0
    cpu_s: float = 0.0
    blocks: list[tuple[int, float, float]] = field(default_factory=list)  # per block: frames, seconds, CPU s
    model_ms: list[float] = field(default_factory=list)
    total_ms: list[float] = field(default_factory=list)
    pose_invokes: int = 0
    thread_cpu_s: dict[str, float] = field(default_factory=dict)  # realtime blocks: CPU by thread role
    dropped: int = 0  # frames a live source dropped (inference behind)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else math.nan

    @property
    def cpu_per_frame(self) -> float:
        return self.cpu_s / self.frames if self.frames else math.nan

    def add(self, frames: int, seconds: float, cpu_s: float = 0.0) -> None:
        self.frames += frames
        self.seconds += seconds
        self.cpu_s += cpu_s
        self.blocks.append((frames, seconds, cpu_s))


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# thread name prefix -> what it is (the rest: threads Python did not start, i.e. the runtime's pool)
THREAD_ROLES = {"cuecam-detect": "detector", "cuecam-inference": "analysis", "cuecam-camera": "camera",
                "MainThread": "loop"}


def thread_cpu() -> dict[str, float]:
    """CPU seconds of this process's threads so far, by role (THREAD_ROLES; ``native``: the TFLite
    runtime's worker threads; ``other``: any other Python thread). Empty without /proc."""
    roles = {t.native_id: next((r for p, r in THREAD_ROLES.items() if t.name.startswith(p)), "other")
             for t in threading.enumerate()}
    out: dict[str, float] = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        role = roles.get(int(tid), "native")
        out[role] = out.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime
    return out


def paired(a: Side, b: Side, *, cpu: bool = False) -> float:
    """The median over rounds of a's block against b's block of the same round (fps, or CPU per
    frame): a load spike on the shared machine spoils one pair, not the figure."""
    ratios = []
    for (fa, sa, ca), (fb, sb, cb) in zip(a.blocks, b.blocks, strict=False):
        if cpu:
            ratios.append((ca / fa) / (cb / fb))
        else:
            ratios.append((fa / sa) / (fb / sb))
    return float(np.median(ratios)) if ratios else math.nan


def _with(loaded: LoadedConfig, *, pose: bool, camera: Any = None, **inference: Any) -> LoadedConfig:
    cfg = loaded.config
    upd: dict[str, Any] = {"signals": cfg.signals.model_copy(update={"pose": cfg.signals.pose if pose else "off"}),
                           # a gated source waits between its blocks: not a hung camera
                           "health": cfg.health.model_copy(update={"camera_timeout_s": 600.0, "stall_s": 600.0})}
    if camera is not None:
        upd["camera"] = camera
    if inference:
        upd["inference"] = cfg.inference.model_copy(update=inference)
    return LoadedConfig(cfg.model_copy(update=upd), loaded.path)


class _Pipeline:
    """A service on a gated camera, started once; run(n) lets n frames through and times them."""

    def __init__(self, name: str, loaded: LoadedConfig, camera: RamCamera | GatedCamera) -> None:
        self.side = Side(name)
        self.camera = camera
        self.svc = Service(loaded, camera=camera, models=load_models(loaded))
        self._stamps: list[tuple[float, FrameResult]] = []
        self._want = 0
        self._dropped0 = 0
        self._done: asyncio.Event | None = None
        self.svc.pipeline.observers.append(self._observe)

    def _observe(self, _fid: int, _t: float, res: FrameResult) -> None:
        self._stamps.append((time.perf_counter(), res))
        if self._done is not None and len(self._stamps) + self._dropped() >= self._want:
            self._done.set()

    def _dropped(self) -> int:
        """Frames of this block a live source dropped (inference behind: the oldest goes, the newest
        is still analysed, so the block's last frame is always observed)."""
        st = self.svc.pipeline.stats
        return st.frames_dropped + st.frames_discarded - self._dropped0

    async def start(self) -> None:
        await self.camera.open()
        await self.svc.start()

    async def run(self, n: int, *, cpu: bool = False) -> None:
        self._stamps.clear()
        st = self.svc.pipeline.stats
        self._dropped0 = st.frames_dropped + st.frames_discarded
        self._want, self._done = n, asyncio.Event()
        th0 = thread_cpu() if cpu else {}
        t0, c0 = time.perf_counter(), time.process_time()
        self.camera.gate.allow(n)
        await asyncio.wait_for(self._done.wait(), 600)
        t1, c1 = time.perf_counter(), time.process_time()
        for role, sec in (thread_cpu() if cpu else {}).items():
            self.side.thread_cpu_s[role] = self.side.thread_cpu_s.get(role, 0.0) + sec - th0.get(role, 0.0)
        timed = self._stamps[SKIP:n]
        s = self.side
        if cpu:  # every analysed frame of the block, CPU time of the whole process
            s.add(len(self._stamps), t1 - t0, c1 - c0)
            s.dropped += self._dropped()
        else:
            s.add(len(timed) - 1, timed[-1][0] - timed[0][0])
        for _, res in timed:
            s.model_ms.append(res.model_ms)
            s.total_ms.append(res.total_ms)
            s.pose_invokes += res.pose_invokes

    async def stop(self) -> None:
        self.camera.gate.close()  # a read waiting for its allowance returns, so close() can run on that thread
        await self.svc.stop()


def _timed_loop(side: Side, n: int, step: Callable[[int], None]) -> None:
    """``step(i)`` n times in this thread; frames SKIP..n timed, CPU over the timed part."""
    for i in range(SKIP):
        step(i)
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(SKIP, n):
        step(i)
    side.add(n - SKIP, time.perf_counter() - t0, time.process_time() - c0)


def _tallest(boxes: np.ndarray, k: int) -> np.ndarray:
    return boxes[np.argsort(boxes[:, 1] - boxes[:, 3], kind="stable")][:k]


async def measure_throughput(loaded: LoadedConfig, video: Path, *, rounds: int = ROUNDS,
                             progress: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Every side of the module docstring, ``rounds`` times in alternating blocks (``video``: absolute)."""
    cfg = loaded.config
    inf = cfg.inference
    models_dir = loaded.resolve(inf.models_dir)
    manifest = load_manifest(models_dir / "manifest.yaml")
    cap = cv2.VideoCapture(str(video))
    frames: list[np.ndarray] = []
    while len(frames) < RAM_FRAMES:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    if not frames:
        raise RuntimeError(f"{video}: no frames decoded")
    fps = 10.0
    replay = ReplayCameraConfig(type="replay", source=str(video), pacing="fast", loop=True)
    pipes = {
        "ram": _Pipeline("ram", _with(loaded, pose=False), RamCamera(frames)),
        "ram_pose": _Pipeline("ram_pose", _with(loaded, pose=True), RamCamera(frames)),
        "file": _Pipeline("file", l_file := _with(loaded, pose=False, camera=replay),
                          GatedCamera(create_camera(l_file))),
        "file_pose": _Pipeline("file_pose", l_fp := _with(loaded, pose=True, camera=replay),
                               GatedCamera(create_camera(l_fp))),
        "realtime": _Pipeline("realtime", _with(loaded, pose=False), RamCamera(frames, fps=fps, realtime=True)),
    }
    detector: Detector = create_detector(inf, models_dir, manifest)
    pose: PoseEstimator = create_pose_estimator(cfg.signals.pose_model, models_dir, manifest, runtime=inf.runtime,
                                                threads=inf.num_threads, delegate=inf.delegate)
    bare, bare_pose, naive = Side("bare"), Side("bare_pose"), Side("naive")
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-bare")
    loop = asyncio.get_running_loop()
    pos = {"ram": 0, "naive": 0}
    video_cap = cv2.VideoCapture(str(video))

    def bare_block() -> None:
        def step(_i: int) -> None:
            detector.detect(frames[pos["ram"] % len(frames)])
            pos["ram"] += 1
        _timed_loop(bare, BLOCK, step)

    def bare_pose_block(per_frame: float) -> None:
        def step(i: int) -> None:
            img = frames[pos["ram"] % len(frames)]
            pos["ram"] += 1
            dets = detector.detect(img)
            k = math.floor((i + 1) * per_frame) - math.floor(i * per_frame)  # as many as the pipeline made
            if k and len(dets):
                boxes = _tallest(dets.boxes, k)
                boxes = np.concatenate([boxes] * math.ceil(k / len(boxes)))[:k]
                pose.estimate(img, boxes)
                if i >= SKIP:
                    bare_pose.pose_invokes += k
        _timed_loop(bare_pose, BLOCK, step)

    def naive_block() -> None:
        def step(_i: int) -> None:
            ok, bgr = video_cap.read()
            if not ok:
                video_cap.open(str(video))
                ok, bgr = video_cap.read()
            detector.detect(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        _timed_loop(naive, BLOCK, step)

    try:
        for p in pipes.values():
            await p.start()
        # warm-up: every side once, untimed (models, caches, the pose rate for bare_pose)
        for p in pipes.values():
            await p.run(SKIP + 8, cpu=p.side.name == "realtime")
            p.side = Side(p.side.name)
        await loop.run_in_executor(worker, lambda: detector.detect(frames[0]))
        for r in range(rounds):
            progress(f"throughput round {r + 1}/{rounds}")
            rp = pipes["ram_pose"].side
            per_frame = rp.pose_invokes / max(len(rp.model_ms), 1) if rp.model_ms else cfg.signals.pose_budget / 2
            pairs: list[tuple[Callable[[], Any], Callable[[], Any]]] = [
                (lambda: pipes["ram"].run(BLOCK), lambda: loop.run_in_executor(worker, bare_block)),
                (lambda: pipes["ram_pose"].run(BLOCK),
                 lambda pf=per_frame: loop.run_in_executor(worker, bare_pose_block, pf)),
                (lambda: pipes["file"].run(BLOCK), lambda: loop.run_in_executor(worker, naive_block)),
            ]
            for a, b in pairs:
                first, second = (a, b) if r % 2 == 0 else (b, a)
                await first()
                await second()
            await pipes["file_pose"].run(BLOCK)
            await pipes["realtime"].run(REALTIME_FRAMES, cpu=True)
    finally:
        video_cap.release()
        for p in pipes.values():
            await p.stop()
        worker.shutdown(wait=True)

    ram, ram_pose, file_, file_pose, rt = (pipes[k].side for k in ("ram", "ram_pose", "file", "file_pose", "realtime"))
    m, a = float(np.mean(ram_pose.model_ms)), float(np.mean(ram_pose.total_ms))
    m0, a0 = float(np.mean(ram.model_ms)), float(np.mean(ram.total_ms))
    out: dict[str, Any] = {
        "ram_pipeline_vs_model_ratio": paired(ram, bare),
        "ram_pipeline_pose_vs_models_ratio": paired(ram_pose, bare_pose),
        "file_pipeline_vs_naive_ratio": paired(file_, naive),
        "pipeline_vs_model_ratio": paired(file_pose, bare_pose),
        "nonmodel_overhead_ratio": (a - m) / m,
        "realtime_cpu_per_frame_vs_model": paired(rt, bare, cpu=True),
        # the same from the totals of every block (less robust to a load spike, shown to compare)
        "ram_pipeline_vs_model_ratio_totals": ram.fps / bare.fps,
        "file_pipeline_vs_naive_ratio_totals": file_.fps / naive.fps,
        "ram_pipeline_fps": ram.fps, "bare_model_fps": bare.fps,
        "ram_pipeline_pose_fps": ram_pose.fps, "bare_models_pose_fps": bare_pose.fps,
        "file_pipeline_fps": file_.fps, "naive_fps": naive.fps,
        "file_pipeline_pose_fps": file_pose.fps,
        "ram_models_ms_per_frame": m0, "ram_analysis_ms_per_frame": a0,
        "ram_pose_models_ms_per_frame": m, "ram_pose_analysis_ms_per_frame": a,
        "bare_model_ms_per_frame": 1000.0 / bare.fps, "bare_models_pose_ms_per_frame": 1000.0 / bare_pose.fps,
        "nonmodel_overhead_ratio_pose_off": (a0 - m0) / m0,
        "ram_pose_invokes_per_frame": ram_pose.pose_invokes / max(len(ram_pose.model_ms), 1),
        "bare_pose_invokes_per_frame": bare_pose.pose_invokes / max(bare_pose.frames, 1),
        "realtime_cpu_ms_per_frame": rt.cpu_per_frame * 1000.0, "bare_cpu_ms_per_frame": bare.cpu_per_frame * 1000.0,
        **{f"realtime_cpu_ms_per_frame_{role}": sec / rt.frames * 1000.0
           for role, sec in sorted(rt.thread_cpu_s.items()) if rt.frames},
        "realtime_block_fps": rt.fps, "realtime_frames_dropped": rt.dropped,
        "throughput_rounds": rounds, "throughput_block_frames": BLOCK,
        "throughput_threads": inf.num_threads,
    }
    for key, (op, goal) in GOALS.items():
        v = out[key]
        out[f"{key}_goal"] = f"{op} {goal:g}"
        out[f"{key}_ok"] = "yes" if (v >= goal if op == ">=" else v <= goal) else "no"
    return out
