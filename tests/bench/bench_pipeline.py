#!/usr/bin/env python3
"""cuecam benchmark: start-up, throughput, analysis overhead, vector latency, opt-out latency and memory of the
sim board on real footage (media/vtest.avi, 768x576 at 10 fps, looped).

Run with ``make bench`` (or ``.venv/bin/python tests/bench/bench_pipeline.py``). Prints one
``key: value`` line per figure on stdout; progress goes to stderr. Everything is measured in one
run, one phase at a time so that no phase competes with another for the CPU (other work on the
machine does: loadavg_1m_start / _end are printed so that runs can be compared). Exit code 1 when
a phase failed (its figures are then missing and ``<phase>_error`` says why) or the firmware
process did not exit 0 on SIGTERM or printed a traceback.

6. The Zero 2 W (512 MB) as a real process (``rss_zero2w_*``, ``zero2w_*``, ``watchdog_*``):
   board_configs/rpi-zero2w.yaml (pose off) with the replay camera on vtest.avi instead of
   picamera2 (``--source``), for ZERO2W_S seconds, with NOTIFY_SOCKET (an abstract socket this
   script reads) and WATCHDOG_USEC set as systemd would. rss_zero2w_mib / _peak_mib: VmRSS and
   VmHWM from /proc/PID/status at the end (target < 150 MiB); zero2w_ready_s: spawn -> READY=1;
   watchdog_gap_*: between WATCHDOG=1 pings (expected every WATCHDOG_USEC / 2).

1. Start-up of the real process: ``python -m firmware --config board_configs/sim.yaml --port 0``
   with CUECAM_API_TOKEN set to a random token (other CUECAM_* variables removed), realtime
   pacing as configured. Its URL is read from the ``cuecam: serving on`` line on its stdout.

   - serving_s: spawn -> that line.
   - first_detection_s: spawn -> the first GET /v1/status (bearer token, polled every 50 ms)
     whose ``first_detection_s`` is not null. first_detection_service_s is the firmware's own
     figure from that response (service start, i.e. after the models loaded -> first person).
   - first_vector_s: spawn -> the first GET /v1/vectors?limit=1 (same process, polling goes on
     every 50 ms after the detection was seen) that returns a vector.
   - process_exit_code: exit code after SIGTERM (must be 0).

2. Throughput, in this process (``pipeline_*``): the full service (firmware.app.build_service:
   camera thread, inference thread running detector + tracker + MoveNet pose + signal engine,
   vector ring buffer) on board_configs/sim.yaml with the replay camera at pacing ``fast``, the
   real aiohttp app on 127.0.0.1:0, and a client following GET /v1/vectors?since=<cursor> every
   API_INTERVAL_S (at most API_MAX_REQUESTS requests; it re-polls at once while ``more``). An
   observer (``svc.pipeline.observers``) records every processed frame; PIPELINE_WARMUP frames
   are skipped, then PIPELINE_FRAMES frames are timed (or fewer if PIPELINE_TIME_LIMIT_S runs out).

   - pipeline_fps: timed frames / wall time from the end of the last warm-up frame to the end of
     the last timed frame (decode + analysis + ring buffer, API serving alongside).
   - model_ms_per_frame: mean of the analyzer's per-frame ``model_ms`` (detector + pose
     estimates, their preprocessing and decoding included) over the timed frames.
   - analysis_ms_per_frame: mean of the per-frame ``total_ms`` (all of FrameAnalyzer.process).
   - nonmodel_ms_per_frame: analysis_ms_per_frame - model_ms_per_frame (tracking, pose selection,
     orientation, signals); the overhead ratio is measured in phase 4, without the API client.
   - pose_invokes_per_frame: MoveNet invokes / timed frames.
   - pipeline_vectors: vectors closed by the timed frames; buffer_records: vectors held at the
     end; pipeline_api_*: the client's requests, their p50/max round trip, vectors it read and
     vectors it lost to the ring buffer wrapping.
   - rss_mib / rss_peak_mib: VmRSS and ru_maxrss of this process at the end of this phase, with
     the service still up (before the later phases allocate anything).

3. Vector latency, in this process (``vector_latency_*``, ``realtime_*``): the same service with
   the replay camera at pacing ``realtime`` (frames arrive at the footage's 10 fps like a live
   camera; the pipeline drops frames if it falls behind), API and client as in phase 2, for
   REALTIME_S seconds. In realtime pacing the frame timeline *is* the monotonic clock:
   firmware/camera/base.py Pacer stamps frame n with t0 + n/fps where t0 = time.monotonic() at
   camera open, and sleeps until that instant before handing the frame over (it re-anchors to
   time.monotonic() if it falls more than 1 s behind). So a window closes at the instant
   ``t_end`` on the monotonic clock, and for each vector
   ``latency = time.monotonic() at the observer call for the frame that closed it - v.t_end``.
   The pipeline calls observers and appends that frame's vectors to the ring buffer in the same
   event-loop step (no await between them), so this is when the vector becomes readable through
   the API. It includes waiting for the first frame at or after the window end (up to one frame
   interval, 100 ms; its phase depends on when the camera opened, so p50/p99 shift from run to
   run within that interval), queueing and the analysis of that frame. All vectors of the run
   count, the first (partial) window included. The fast-paced run cannot measure this: its
   frame timeline runs ahead of the clocks. Nor can the records' ``t_wall`` (wall clock at append
   minus (frame t_mono - t_end)): it estimates when the window ended, not when the vector was
   stored.

   - vector_latency_ms_p50 / _p99 / _max over vector_latency_vectors vectors; target <= one
     window + 100 ms (vector_latency_target_ms).
   - realtime_frame_age_ms_p50 / _p99: time.monotonic() at the observer call - frame t_mono
     (capture to analysed). Also a check that t_mono is on the monotonic clock: a negative age
     fails the phase.
   - realtime_model_ms_per_frame / realtime_analysis_ms_per_frame /
     realtime_nonmodel_overhead_ratio: as in phase 2, over every frame of this run (models run
     slower when the CPU idles between frames, so the ratio differs from the fast run's).

4. Throughput, in this process (tests/bench/throughput.py, whose docstring says exactly what each
   side runs): the pipeline and the bare models measured interleaved, in alternating blocks of
   the same run, on frames decoded into RAM beforehand (picamera2's lores stream: no decode) and
   on the file, with the naive single-thread loop (decode -> resize -> invoke) as a baseline.

   - ram_pipeline_vs_model_ratio (pose off; goal >= 0.95), ram_pipeline_pose_vs_models_ratio
     (goal >= 0.90), file_pipeline_vs_naive_ratio (goal >= 1.0), nonmodel_overhead_ratio (the
     pipeline's (analysis - models) / models per frame, pose on; goal <= 0.05),
     realtime_cpu_per_frame_vs_model (process CPU per frame at 10 fps / the bare detector's;
     goal <= 1.15), pipeline_vs_model_ratio (sim.yaml on the file / its models on RAM frames);
     each with _goal and _ok, and the fps and ms per frame of every side.

5. Opt-out, in this process (``optout_*``): the same service as in phase 3 (pacing ``realtime``,
   API and polling client alongside) with the sim board's mock opt-out button (gpiozero
   MockFactory) and ``privacy.audit_log`` pointed into a temporary folder (the presses write
   2 * OPTOUT_PRESSES audit lines; the log is size-capped). Once frames flow, OPTOUT_PRESSES
   presses of ``svc.privacy.signage.press(0.0)``, each run in an executor thread (as ``POST
   /v1/sim/button`` does), then a wait in 1 ms steps (at most OPTOUT_WAIT_S) until
   ``svc.privacy.optouts`` increments: the opt-out ran to its end (pipeline paused, frames in flight
   dropped, tracks and windows forgotten, vectors purged). After each press the buffer must hold
   no vector and the pipeline must not be measuring (else the phase fails); then
   ``await svc.privacy.resume("api")`` and OPTOUT_GAP_S of measuring. Realtime pacing gives a frame only
   every 100 ms, so after OPTOUT_GAP_S alone almost every press would find the pipeline idle and
   almost no frame would be analysed (2 frames in 100 presses); so before the next press the
   phase also waits (1 ms steps, at most OPTOUT_WAIT_S) for a frame: for an "idle" press (even
   presses) until a frame has been analysed since the resume, for an "inflight" press (odd
   presses) until a frame has been captured, so that press lands while that frame is queued or
   being analysed (the slow path: the pause waits for the analysis under way to finish before it
   forgets the tracks).

   - optout_p50_ms / optout_p99_ms / optout_max_ms: press (before the executor call) -> paused
     and purged, over all optout_presses presses; target optout_target_ms (p99), optout_ok.
   - optout_idle_p50_ms / _p99, optout_inflight_p50_ms / _p99: the same over each half.
   - optout_firmware_ms_p50 / _p99: the firmware's own figure (``last_optout.latency_ms``: from
     the opt-out handler's start to paused and purged, i.e. without the button thread and the
     event-loop hand-over).
   - optout_frames_processed: frames analysed during the presses (measuring between them);
     optout_frames_discarded: frames dropped unanalysed or thrown away by the presses;
     optout_vectors_purged: vectors the presses purged; optout_audit_entries /
     optout_audit_write_errors: the audit log at the end; optout_s: the phase's wall time.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import platform
import queue
import re
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import orjson  # noqa: E402
from aiohttp import ClientSession, ClientTimeout, web  # noqa: E402

from firmware.app import Service, build_service  # noqa: E402
from firmware.config import LoadedConfig, load_config  # noqa: E402
from firmware.http.app import build_app  # noqa: E402
from firmware.http.auth import ENV_VAR  # noqa: E402
from firmware.signals.analyzer import FrameResult  # noqa: E402
from tests.bench.throughput import measure_throughput  # noqa: E402

SIM_CONFIG = ROOT / "board_configs" / "sim.yaml"
VTEST = ROOT / "media" / "vtest.avi"

FIRST_DETECTION_TIMEOUT_S = 30.0  # spawn -> first vector, at most
FIRST_DETECTION_POLL_S = 0.05
PIPELINE_WARMUP = 20  # frames processed before the pipeline clock starts
PIPELINE_FRAMES = 2000  # frames timed (the replay loops over the 795-frame footage); ~35 s at 60 fps
PIPELINE_TIME_LIMIT_S = 90.0  # give up (and report what was measured) after this long
REALTIME_S = 30.0  # length of the realtime-paced run
API_INTERVAL_S = 0.5
API_MAX_REQUESTS = 200
API_LIMIT = 100
MODEL_FRAMES = 200  # frames decoded and resized before the model phase
CROP_FRAMES = 50  # of those, frames the detector looks for people in, for the pose crops
POSE_CROPS = 100
POSE_CROP_SCALE = 1.2  # as firmware/inference/pose_movenet.py
MODEL_WARMUP = 20
MODEL_INVOKES = 400  # frames: one detector invoke each, plus pose invokes
OPTOUT_PRESSES = 1000
OPTOUT_TARGET_MS = 250.0  # press -> paused and purged, p99
OPTOUT_WAIT_S = 2.0  # per press, at most
OPTOUT_GAP_S = 0.02  # measuring between presses
ZERO2W_CONFIG = ROOT / "board_configs" / "rpi-zero2w.yaml"
ZERO2W_S = 20.0  # the Zero 2 W process runs this long before its memory is read
ZERO2W_WATCHDOG_USEC = 2_000_000  # WatchdogSec=2 s: pings expected every 1 s


def _terminate(proc: subprocess.Popen) -> int | str:
    """SIGTERM, then the exit code; killed (and said so) if it does not stop within 15 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        return f"killed after SIGTERM timeout (code {proc.wait()})"


def progress(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else None


def mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def rss_mib() -> float:
    """Current resident set size of this process (VmRSS), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS in /proc/self/status")


def rss_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


# -- 1. start-up of the real process ---------------------------------------------------------------
def _get_json(url: str, token: str, timeout: float = 2.0) -> Any:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return orjson.loads(r.read())


def _poll_until(check: Callable[[], Any], t0: float, deadline: float, what: str) -> tuple[Any, int]:
    """Call ``check`` every FIRST_DETECTION_POLL_S until it returns something truthy."""
    polls = 0
    while True:
        now = time.monotonic()
        if now > deadline:
            raise TimeoutError(f"no {what} within {FIRST_DETECTION_TIMEOUT_S:.0f} s of spawn")
        polls += 1
        got = check()
        if got:
            return got, polls
        time.sleep(max(0.0, FIRST_DETECTION_POLL_S - (time.monotonic() - now)))


def measure_startup(token: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUECAM_")}
    env[ENV_VAR] = token
    cmd = [sys.executable, "-m", "firmware", "--config", str(SIM_CONFIG), "--port", "0"]
    out: dict[str, Any] = {}
    with tempfile.TemporaryFile() as errlog:
        t0 = time.monotonic()
        deadline = t0 + FIRST_DETECTION_TIMEOUT_S
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=errlog, text=True)
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True, name="bench-stdout").start()
        try:
            url = None
            while url is None:
                try:
                    line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    raise TimeoutError(f"no 'cuecam: serving on' line within {FIRST_DETECTION_TIMEOUT_S:.0f} s") from None
                if line is None:
                    raise RuntimeError(f"the firmware exited (code {proc.wait()}) before serving")
                m = re.search(r"cuecam: serving on (http://\S+)", line)
                if m:
                    url = m.group(1)
            out["serving_s"] = time.monotonic() - t0

            def detected() -> Any:
                status = _get_json(f"{url}/v1/status", token)
                return status if status["first_detection_s"] is not None else None

            status, polls = _poll_until(detected, t0, deadline, "first_detection_s in /v1/status")
            out["first_detection_s"] = time.monotonic() - t0
            out["first_detection_service_s"] = status["first_detection_s"]
            out["first_detection_polls"] = polls

            def vector() -> Any:
                return _get_json(f"{url}/v1/vectors?limit=1", token)["vectors"]

            _, polls = _poll_until(vector, t0, deadline, "vector in /v1/vectors")
            out["first_vector_s"] = time.monotonic() - t0
            out["first_vector_polls"] = polls
        except Exception:
            errlog.seek(0)
            tail = errlog.read().decode("utf-8", "replace").strip().splitlines()[-10:]
            progress("firmware stderr (last lines):\n#   " + "\n#   ".join(tail))
            raise
        finally:
            out["process_exit_code"] = _terminate(proc)
            errlog.seek(0)
            if b"Traceback" in errlog.read():
                out["process_traceback"] = "yes"  # a traceback on stderr, even with exit code 0
    return out


# -- 6. the Zero 2 W config as a real process: memory, READY, watchdog cadence -----------------------
def measure_zero2w(token: str) -> dict[str, Any]:
    """board_configs/rpi-zero2w.yaml (pose off, 3000-vector buffer) as ``python -m firmware`` with
    the replay camera on vtest.avi (``--source``) instead of picamera2, the models from models/,
    the API on 127.0.0.1:0 and no GPIO; NOTIFY_SOCKET is an abstract socket read here, with
    WATCHDOG_USEC set. After ZERO2W_S seconds: VmRSS and VmHWM of the process from /proc."""
    import itertools
    import socket
    import statistics

    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        cfg = yaml.safe_load(ZERO2W_CONFIG.read_text())
        cfg["inference"]["models_dir"] = str(ROOT / "models")
        cfg["api"].update(host="127.0.0.1", token_file=f"{tmp}/token")
        cfg["privacy"] = {"optout": {"pins": "none"}, "audit_log": f"{tmp}/audit.jsonl"}
        cfg["ota"] = {"root": f"{tmp}/ota"}
        path = Path(tmp) / "zero2w.yaml"
        path.write_text(yaml.safe_dump(cfg))
        name = f"cuecam-bench-{secrets.token_hex(6)}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind("\0" + name)
        sock.settimeout(0.2)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CUECAM_", "NOTIFY_", "WATCHDOG_"))}
        env.update({ENV_VAR: token, "NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": str(ZERO2W_WATCHDOG_USEC)})
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "firmware", "--config", str(path), "--port", "0",
                                 "--source", str(VTEST)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        out: dict[str, Any] = {}
        pings: list[float] = []
        try:
            while time.monotonic() - t0 < ZERO2W_S and proc.poll() is None:
                try:
                    msg = sock.recv(4096).decode()
                except TimeoutError:
                    continue
                now = time.monotonic()
                if "READY=1" in msg and "zero2w_ready_s" not in out:
                    out["zero2w_ready_s"] = now - t0
                    out["zero2w_ready_status"] = msg.split("STATUS=", 1)[-1]
                if "WATCHDOG=1" in msg:
                    pings.append(now)
            if proc.poll() is not None:
                raise RuntimeError(f"the firmware exited (code {proc.returncode}) during the Zero 2 W run")
            fields = {ln.split(":")[0]: int(ln.split()[1]) for ln in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                      if ln.startswith(("VmRSS:", "VmHWM:"))}
            out["rss_zero2w_mib"] = fields["VmRSS"] / 1024.0
            out["rss_zero2w_peak_mib"] = fields["VmHWM"] / 1024.0
            gaps = [b - a for a, b in itertools.pairwise(pings)]
            if gaps:
                out["watchdog_pings"] = len(pings)
                out["watchdog_interval_s"] = ZERO2W_WATCHDOG_USEC / 2e6
                out["watchdog_gap_median_s"] = statistics.median(gaps)
                out["watchdog_gap_max_s"] = max(gaps)
        finally:
            sock.close()
            out["zero2w_exit_code"] = _terminate(proc)
    return out


# -- 2 and 3. the full service in this process, API serving ---------------------------------------
def sim_config(pacing: str) -> LoadedConfig:
    loaded = load_config(SIM_CONFIG)
    cfg = loaded.config
    camera = cfg.camera.model_copy(update={"pacing": pacing})
    return LoadedConfig(cfg.model_copy(update={"camera": camera}), loaded.path)


async def _api_client(url: str, token: str, stop: asyncio.Event, stats: dict[str, Any]) -> None:
    """Follow /v1/vectors with the cursor like a consumer would."""
    headers = {"Authorization": f"Bearer {token}"}
    latencies: list[float] = []
    cursor = read = lost = 0
    async with ClientSession(timeout=ClientTimeout(total=5)) as session:
        while not stop.is_set() and len(latencies) < API_MAX_REQUESTS:
            t = time.perf_counter()
            async with session.get(f"{url}/v1/vectors", params={"since": cursor, "limit": API_LIMIT},
                                   headers=headers) as r:
                raw = await r.read()
            if r.status != 200:
                raise RuntimeError(f"GET /v1/vectors returned {r.status}: {raw[:300]!r}")
            body = orjson.loads(raw)
            latencies.append((time.perf_counter() - t) * 1000.0)
            cursor = body["cursor"]
            read += len(body["vectors"])
            lost += body["lost"]
            if body["more"]:
                continue
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), API_INTERVAL_S)
    stats.update(requests=len(latencies), latencies=latencies, read=read, lost=lost)


async def _run_service(pacing: str, token: str, observer: Callable[[int, float, FrameResult], None],
                       body: Callable[[Service, asyncio.Task[None]], Any],
                       loaded: LoadedConfig | None = None) -> tuple[Any, dict[str, Any]]:
    """Build the service (from ``loaded``, else sim.yaml at ``pacing``), serve the API on loopback
    with a polling client, await ``body``."""
    loaded = loaded or sim_config(pacing)
    svc, tok = await build_service(loaded, token_env={ENV_VAR: token})
    svc.pipeline.observers.append(observer)
    runner = web.AppRunner(build_app(svc, tok), handle_signals=False, access_log=None)
    api: dict[str, Any] = {}
    stop = asyncio.Event()
    client: asyncio.Task[None] | None = None
    try:
        await runner.setup()  # starts the pipeline (the app's cleanup context)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        client = asyncio.create_task(_api_client(f"http://{host}:{port}", token, stop, api))
        result = await body(svc, client)
    finally:
        stop.set()
        if client is not None:
            with contextlib.suppress(Exception):
                await client
        await runner.cleanup()  # stops the pipeline, closes the camera, joins the workers
    if client is not None and client.done() and not client.cancelled() and client.exception() is not None:
        raise RuntimeError(f"API client failed: {client.exception()!r}")
    out: dict[str, Any] = {}
    if api:
        lat = api["latencies"]
        out.update(api_requests=api["requests"], api_ms_p50=pct(lat, 50), api_ms_max=max(lat) if lat else None,
                   api_vectors_read=api["read"], api_vectors_lost=api["lost"])
    return result, out


def _check_running(svc: Service, client: asyncio.Task[None]) -> None:
    st = svc.pipeline.stats
    if st.state in ("error", "ended"):
        raise RuntimeError(f"pipeline {st.state}: {st.error}")
    if client.done():
        client.result()  # re-raise an API failure
        raise RuntimeError("the API client stopped early")


async def measure_pipeline(token: str) -> dict[str, Any]:
    # per processed frame: (observer time, model_ms, total_ms, pose invokes, vectors)
    frames: list[tuple[float, float, float, int, int]] = []

    def observe(_frame_id: int, _t_mono: float, res: FrameResult) -> None:
        frames.append((time.monotonic(), res.model_ms, res.total_ms, res.pose_invokes, len(res.vectors)))

    async def body(svc: Service, client: asyncio.Task[None]) -> dict[str, Any]:
        need = PIPELINE_WARMUP + PIPELINE_FRAMES
        t_end = time.monotonic() + PIPELINE_TIME_LIMIT_S
        while len(frames) < need and time.monotonic() < t_end:
            _check_running(svc, client)
            await asyncio.sleep(0.05)
        if len(frames) < need:
            progress(f"pipeline: time limit reached after {max(len(frames) - PIPELINE_WARMUP, 0)} timed frames")
        st = svc.pipeline.stats
        out: dict[str, Any] = {
            "rss_mib": rss_mib(),
            "rss_peak_mib": rss_peak_mib(),
            "pipeline_frames_dropped": st.frames_dropped,
            "pipeline_inference_errors": st.inference_errors,
            "buffer_records": len(svc.vectors),
            "runtime": svc.models.detector.runner.runtime,
            "threads": svc.config.inference.num_threads,
            "pose_model": None if svc.models.pose is None else svc.models.pose.name,
            "pose_budget": svc.config.signals.pose_budget,
            "process_threads": threading.active_count(),
        }
        return out

    out, api = await _run_service("fast", token, observe, body)
    timed = frames[PIPELINE_WARMUP:PIPELINE_WARMUP + PIPELINE_FRAMES]
    if len(timed) < 2:
        raise RuntimeError(f"pipeline: only {len(timed)} frames processed after warm-up")
    t_start = frames[PIPELINE_WARMUP - 1][0]
    t_stop = timed[-1][0]
    model_ms = [f[1] for f in timed]
    total_ms = [f[2] for f in timed]
    nonmodel_ms = [f[2] - f[1] for f in timed]
    m, a = float(np.mean(model_ms)), float(np.mean(total_ms))
    n = len(timed)
    out.update(
        pipeline_fps=n / (t_stop - t_start),
        pipeline_frames=n,
        pipeline_s=t_stop - t_start,
        model_ms_per_frame=m,
        analysis_ms_per_frame=a,
        nonmodel_ms_per_frame=a - m,
        nonmodel_ms_p99=pct(nonmodel_ms, 99),
        analysis_ms_p99=pct(total_ms, 99),
        pose_invokes_per_frame=sum(f[3] for f in timed) / n,
        pipeline_vectors=sum(f[4] for f in timed),
    )
    out.update({f"pipeline_{k}": v for k, v in api.items()})
    return out


async def measure_vector_latency(token: str) -> dict[str, Any]:
    latencies: list[float] = []  # seconds, one per vector
    ages: list[float] = []  # seconds, one per frame: observer time - t_mono
    window_ends: set[float] = set()
    model_ms: list[float] = []
    total_ms: list[float] = []

    def observe(_frame_id: int, t_mono: float, res: FrameResult) -> None:
        now = time.monotonic()
        ages.append(now - t_mono)
        model_ms.append(res.model_ms)
        total_ms.append(res.total_ms)
        for v in res.vectors:
            latencies.append(now - v.t_end)
            window_ends.add(v.t_end)

    async def body(svc: Service, client: asyncio.Task[None]) -> dict[str, Any]:
        t_end = time.monotonic() + REALTIME_S
        while time.monotonic() < t_end:
            _check_running(svc, client)
            await asyncio.sleep(0.05)
        st = svc.pipeline.stats
        return {
            "realtime_frames": st.frames_processed,
            "realtime_fps": st.fps(svc.now()),
            "realtime_frames_dropped": st.frames_dropped,
            "window_s": svc.config.signals.window_s,
        }

    out, api = await _run_service("realtime", token, observe, body)
    if ages and min(ages) < -0.001:
        raise RuntimeError(f"frame t_mono is {-min(ages) * 1000:.0f} ms ahead of time.monotonic(): "
                           "the realtime frame timeline is not the monotonic clock")
    lat_ms = [x * 1000.0 for x in latencies]
    m, a = mean(model_ms), mean(total_ms)
    if m is not None and a is not None:
        out.update(realtime_model_ms_per_frame=m, realtime_analysis_ms_per_frame=a,
                   realtime_nonmodel_overhead_ratio=(a - m) / m)
    target = out["window_s"] * 1000.0 + 100.0
    p99 = pct(lat_ms, 99)
    out.update(
        vector_latency_ms_p50=pct(lat_ms, 50),
        vector_latency_ms_p99=p99,
        vector_latency_ms_max=max(lat_ms) if lat_ms else None,
        vector_latency_vectors=len(lat_ms),
        vector_latency_windows=len(window_ends),
        vector_latency_target_ms=target,
        vector_latency_ok=None if p99 is None else ("yes" if p99 <= target else "no"),
        realtime_frame_age_ms_p50=pct([x * 1000.0 for x in ages], 50),
        realtime_frame_age_ms_p99=pct([x * 1000.0 for x in ages], 99),
    )
    out.update({f"realtime_{k}": v for k, v in api.items()})
    return out


# -- 5. opt-out latency on the mock button ---------------------------------------------------------
async def measure_optout(token: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="cuecam-bench-audit-") as audit_dir:
        base = sim_config("realtime")
        privacy = base.config.privacy.model_copy(update={"audit_log": str(Path(audit_dir) / "audit.jsonl")})
        loaded = LoadedConfig(base.config.model_copy(update={"privacy": privacy}), base.path)

        async def wait_for(cond: Callable[[], bool], what: str) -> None:
            for _ in range(int(OPTOUT_WAIT_S / 0.001)):  # bounded, 1 ms steps
                if cond():
                    return
                await asyncio.sleep(0.001)
            raise RuntimeError(f"{what} within {OPTOUT_WAIT_S:.0f} s")

        async def body(svc: Service, client: asyncio.Task[None]) -> dict[str, Any]:
            if svc.privacy.signage is None or svc.privacy.signage.kind != "mock" or svc.privacy.signage.button is None:
                raise RuntimeError("no mock opt-out button (privacy.optout.pins is not mock)")
            loop = asyncio.get_running_loop()
            st = svc.pipeline.stats
            t_end = time.monotonic() + FIRST_DETECTION_TIMEOUT_S
            while st.frames_processed < 5:
                _check_running(svc, client)
                if time.monotonic() > t_end:
                    raise TimeoutError("no frames processed before the presses")
                await asyncio.sleep(0.05)
            frames0, discarded0 = st.frames_processed, st.frames_discarded
            lat_ms: dict[str, list[float]] = {"idle": [], "inflight": []}
            firmware_ms: list[float] = []
            purged = 0
            t_phase = time.monotonic()
            for i in range(OPTOUT_PRESSES):
                if st.state in ("error", "ended"):  # (the polling client may end before the presses do)
                    raise RuntimeError(f"pipeline {st.state}: {st.error}")
                kind = "inflight" if i % 2 else "idle"
                n = svc.privacy.optouts
                t0 = time.perf_counter()
                await loop.run_in_executor(None, svc.privacy.signage.press, 0.0)
                await wait_for(lambda n=n: svc.privacy.optouts > n, f"press {i + 1}: no opt-out")
                lat_ms[kind].append((time.perf_counter() - t0) * 1000.0)
                if len(svc.vectors) != 0 or svc.pipeline.measuring:
                    raise RuntimeError(f"press {i + 1}: not paused and purged ({len(svc.vectors)} vectors held, "
                                       f"measuring={svc.pipeline.measuring})")
                last = svc.privacy.last_optout or {}
                firmware_ms.append(float(last.get("latency_ms", math.nan)))
                purged += int(last.get("purged", {}).get("vectors", 0))
                processed, captured = st.frames_processed, st.frames_captured
                if not await svc.privacy.resume("api"):
                    raise RuntimeError(f"press {i + 1}: resume found the pipeline not paused")
                await asyncio.sleep(OPTOUT_GAP_S)  # measuring again between presses
                # Realtime pacing gives a frame every 100 ms: wait for one so that frames do flow
                # between presses; the next press then finds the pipeline idle (that frame analysed)
                # or, every other time, that frame queued or under analysis (the slow path).
                if kind == "inflight":  # the next press is an idle one
                    await wait_for(lambda p=processed: st.frames_processed > p, f"after press {i + 1}: no frame analysed")
                else:
                    await wait_for(lambda c=captured: st.frames_captured > c, f"after press {i + 1}: no frame captured")
            every = lat_ms["idle"] + lat_ms["inflight"]
            p99 = pct(every, 99)
            return {
                "optout_p50_ms": pct(every, 50),
                "optout_p99_ms": p99,
                "optout_max_ms": max(every),
                "optout_presses": len(every),
                "optout_target_ms": OPTOUT_TARGET_MS,
                "optout_ok": "yes" if p99 is not None and p99 <= OPTOUT_TARGET_MS else "no",
                "optout_idle_p50_ms": pct(lat_ms["idle"], 50),
                "optout_idle_p99_ms": pct(lat_ms["idle"], 99),
                "optout_inflight_p50_ms": pct(lat_ms["inflight"], 50),
                "optout_inflight_p99_ms": pct(lat_ms["inflight"], 99),
                "optout_firmware_ms_p50": pct(firmware_ms, 50),
                "optout_firmware_ms_p99": pct(firmware_ms, 99),
                "optout_frames_processed": st.frames_processed - frames0,
                "optout_frames_discarded": st.frames_discarded - discarded0,
                "optout_vectors_purged": purged,
                "optout_audit_entries": len(svc.audit),
                "optout_audit_write_errors": svc.audit.write_errors,
                "optout_s": time.monotonic() - t_phase,
            }

        out, _api = await _run_service("realtime", token, lambda *_: None, body, loaded=loaded)
    return out


def fmt(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


ORDER = [
    # headline figures
    "first_detection_s", "first_vector_s",
    "ram_pipeline_vs_model_ratio", "ram_pipeline_vs_model_ratio_goal", "ram_pipeline_vs_model_ratio_ok",
    "ram_pipeline_pose_vs_models_ratio", "ram_pipeline_pose_vs_models_ratio_goal", "ram_pipeline_pose_vs_models_ratio_ok",
    "file_pipeline_vs_naive_ratio", "file_pipeline_vs_naive_ratio_goal", "file_pipeline_vs_naive_ratio_ok",
    "nonmodel_overhead_ratio", "nonmodel_overhead_ratio_goal", "nonmodel_overhead_ratio_ok",
    "realtime_cpu_per_frame_vs_model", "realtime_cpu_per_frame_vs_model_goal", "realtime_cpu_per_frame_vs_model_ok",
    "pipeline_vs_model_ratio",
    "pipeline_fps", "model_ms_per_frame", "analysis_ms_per_frame", "pose_invokes_per_frame",
    "vector_latency_ms_p50", "vector_latency_ms_p99", "vector_latency_target_ms", "vector_latency_ok",
    "optout_p50_ms", "optout_p99_ms", "optout_target_ms", "optout_ok",
    "rss_mib", "rss_peak_mib",
    # 1. start-up
    "serving_s", "first_detection_service_s", "first_detection_polls", "first_vector_polls", "process_exit_code",
    "process_traceback", "startup_error",
    # 2. pipeline, fast pacing
    "pipeline_frames", "pipeline_s", "nonmodel_ms_per_frame", "nonmodel_ms_p99", "analysis_ms_p99",
    "pipeline_vectors", "buffer_records", "pipeline_frames_dropped", "pipeline_inference_errors",
    "pipeline_api_requests", "pipeline_api_ms_p50", "pipeline_api_ms_max", "pipeline_api_vectors_read",
    "pipeline_api_vectors_lost", "pipeline_error",
    # 3. vector latency, realtime pacing
    "vector_latency_ms_max", "vector_latency_vectors", "vector_latency_windows", "window_s",
    "realtime_frame_age_ms_p50", "realtime_frame_age_ms_p99", "realtime_frames", "realtime_fps",
    "realtime_frames_dropped", "realtime_model_ms_per_frame", "realtime_analysis_ms_per_frame",
    "realtime_nonmodel_overhead_ratio",
    "realtime_api_requests", "realtime_api_ms_p50", "realtime_api_ms_max", "realtime_api_vectors_read",
    "realtime_api_vectors_lost", "realtime_error",
    # 4. throughput, interleaved
    "ram_pipeline_fps", "bare_model_fps", "ram_pipeline_pose_fps", "bare_models_pose_fps", "file_pipeline_fps",
    "naive_fps", "file_pipeline_pose_fps", "ram_models_ms_per_frame", "ram_analysis_ms_per_frame",
    "bare_model_ms_per_frame", "ram_pose_models_ms_per_frame", "ram_pose_analysis_ms_per_frame",
    "bare_models_pose_ms_per_frame", "nonmodel_overhead_ratio_pose_off", "ram_pose_invokes_per_frame",
    "bare_pose_invokes_per_frame", "realtime_cpu_ms_per_frame", "bare_cpu_ms_per_frame", "realtime_block_fps",
    "throughput_rounds", "throughput_block_frames", "throughput_threads", "throughput_error",
    # 5. opt-out
    "optout_max_ms", "optout_presses", "optout_idle_p50_ms", "optout_idle_p99_ms", "optout_inflight_p50_ms",
    "optout_inflight_p99_ms", "optout_firmware_ms_p50", "optout_firmware_ms_p99", "optout_frames_processed",
    "optout_frames_discarded", "optout_vectors_purged", "optout_audit_entries", "optout_audit_write_errors",
    "optout_s", "optout_error",
    # 6. Zero 2 W process
    "rss_zero2w_mib", "rss_zero2w_peak_mib", "zero2w_ready_s", "zero2w_ready_status", "watchdog_interval_s",
    "watchdog_gap_median_s", "watchdog_gap_max_s", "watchdog_pings", "zero2w_exit_code", "zero2w_error",
    # environment
    "runtime", "model_runtime", "pose_model", "pose_budget", "threads", "process_threads", "cv2_threads", "cpus",
    "python", "opencv", "loadavg_1m_start", "loadavg_1m_end", "bench_s",
]


def main() -> int:
    for need, how in ((VTEST, "make media"), (ROOT / "models" / "manifest.yaml", "make models")):
        if not need.exists():
            print(f"error: {need} is missing; run `{how}` (or `make setup`)", file=sys.stderr)
            return 2
    token = secrets.token_urlsafe(24)
    results: dict[str, Any] = {}
    failed = False
    t_total = time.monotonic()
    results["loadavg_1m_start"] = os.getloadavg()[0]  # other work on the machine skews every figure

    def phase(name: str, fn: Callable[[], dict[str, Any]]) -> None:
        nonlocal failed
        try:
            results.update(fn())
        except Exception as e:
            failed = True
            results[f"{name}_error"] = f"{type(e).__name__}: {e}"
            progress(f"{name} failed: {type(e).__name__}: {e}")

    progress("1/6 start-up: spawning python -m firmware --config board_configs/sim.yaml --port 0")
    phase("startup", lambda: measure_startup(token))
    if results.get("process_exit_code") != 0 or "process_traceback" in results:
        failed = True

    progress(f"2/6 pipeline: {PIPELINE_WARMUP} + {PIPELINE_FRAMES} frames, pacing fast, API on loopback")
    phase("pipeline", lambda: asyncio.run(measure_pipeline(token)))

    progress(f"3/6 vector latency: {REALTIME_S:.0f} s, pacing realtime, API on loopback")
    phase("realtime", lambda: asyncio.run(measure_vector_latency(token)))

    progress("4/6 throughput: pipeline and bare models in alternating blocks (RAM frames, the file, the naive loop)")
    phase("throughput", lambda: asyncio.run(measure_throughput(load_config(SIM_CONFIG), VTEST, progress=progress)))

    progress(f"5/6 opt-out: {OPTOUT_PRESSES} presses of the mock button, pacing realtime, API on loopback")
    phase("optout", lambda: asyncio.run(measure_optout(token)))

    progress(f"6/6 Zero 2 W: board_configs/rpi-zero2w.yaml as a process on the replay camera for {ZERO2W_S:.0f} s")
    phase("zero2w", lambda: measure_zero2w(token))
    if results.get("zero2w_exit_code") not in (0, None):
        failed = True

    results["cv2_threads"] = cv2.getNumThreads()
    results["cpus"] = len(os.sched_getaffinity(0))
    results["python"] = platform.python_version()
    results["opencv"] = cv2.__version__
    results["loadavg_1m_end"] = os.getloadavg()[0]  # includes this benchmark's own load
    results["bench_s"] = time.monotonic() - t_total

    for key in ORDER + sorted(set(results) - set(ORDER)):
        if key in results:
            print(f"{key}: {fmt(results[key])}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
