#!/usr/bin/env python3
"""cuecam benchmark: throughput, start-up and memory of the sim board on real footage.

Run with ``make bench`` (or ``.venv/bin/python tests/bench/bench_pipeline.py``). Prints one
``key: value`` line per figure on stdout; progress goes to stderr. Measured in one run, one phase
at a time so that no phase competes with another for the CPU:

1. first_detection_s: the real process (``python -m firmware --config board_configs/sim.yaml
   --port 0``) from spawn until GET /v1/detections shows a frame with a person (polled every
   50 ms with the bearer token, following the cursor), then SIGTERM.
2. pipeline_fps: the full service in this process with the API up (board_configs/sim.yaml with the
   replay camera at pacing ``fast``, real aiohttp app on 127.0.0.1:0): frames processed per second
   over PIPELINE_FRAMES frames after PIPELINE_WARMUP warm-up frames, decode + preprocess +
   inference + ring buffer included, while a client polls /v1/detections every API_INTERVAL_S.
   rss_mib / rss_peak_mib are read right after this run, before the model phase allocates frames.
3. model_fps: bare ModelRunner.run invokes per second on frames decoded, converted to RGB and
   resized to the model input beforehand (the same ModelRunner, runtime and threads as the board).

pipeline_vs_model_ratio = pipeline_fps / model_fps; the target is >= 0.9.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import orjson  # noqa: E402
from aiohttp import ClientSession, ClientTimeout, web  # noqa: E402

from firmware.app import build_service  # noqa: E402
from firmware.config import LoadedConfig, load_config  # noqa: E402
from firmware.http.app import build_app  # noqa: E402
from firmware.http.auth import ENV_VAR  # noqa: E402
from firmware.inference.runner import ModelRunner  # noqa: E402
from firmware.models import load_manifest, resolve_model  # noqa: E402

SIM_CONFIG = ROOT / "board_configs" / "sim.yaml"
VTEST = ROOT / "media" / "vtest.avi"

MODEL_FRAMES = 200  # frames decoded and resized before the model phase
MODEL_WARMUP = 20
MODEL_INVOKES = 400
PIPELINE_WARMUP = 20  # frames processed before the pipeline clock starts
PIPELINE_FRAMES = 2000  # frames timed (the replay loops over the 795-frame footage)
PIPELINE_TIME_LIMIT_S = 90.0  # give up (and report what was measured) after this long
API_INTERVAL_S = 0.5
API_MAX_REQUESTS = 200
FIRST_DETECTION_TIMEOUT_S = 30.0
FIRST_DETECTION_POLL_S = 0.05
RATIO_TARGET = 0.9


def progress(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def rss_mib() -> float:
    """Current resident set size of this process (VmRSS), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS in /proc/self/status")


def rss_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


# -- 1. start to first detection of the real process ---------------------------------------------
def _get_json(url: str, token: str, timeout: float = 2.0) -> Any:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return orjson.loads(r.read())


def measure_first_detection(token: str) -> dict[str, Any]:
    env = dict(os.environ, **{ENV_VAR: token})
    env.pop("CUECAM_CONFIG", None)
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
            cursor, polls = 0, 0
            while True:
                now = time.monotonic()
                if now > deadline:
                    raise TimeoutError(f"no person detected within {FIRST_DETECTION_TIMEOUT_S:.0f} s of spawn")
                body = _get_json(f"{url}/v1/detections?since={cursor}&limit=100", token)
                polls += 1
                cursor = body["cursor"]
                hit = next((f for f in body["frames"] if f["people"]), None)
                if hit is not None:
                    out["first_detection_s"] = time.monotonic() - t0
                    out["first_detection_frame_id"] = hit["frame_id"]
                    out["first_detection_polls"] = polls
                    status = _get_json(f"{url}/v1/status", token)
                    # the firmware's own figure: service start (after model load) to first person
                    out["first_detection_service_s"] = status["first_detection_s"]
                    break
                time.sleep(max(0.0, FIRST_DETECTION_POLL_S - (time.monotonic() - now)))
        except Exception:
            errlog.seek(0)
            tail = errlog.read().decode("utf-8", "replace").strip().splitlines()[-10:]
            progress("firmware stderr (last lines):\n#   " + "\n#   ".join(tail))
            raise
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                out["first_detection_exit_code"] = proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                out["first_detection_exit_code"] = f"killed (code {proc.wait()})"
    return out


# -- 2. the full service in this process, API serving ---------------------------------------------
def fast_sim_config() -> LoadedConfig:
    loaded = load_config(SIM_CONFIG)
    cfg = loaded.config
    camera = cfg.camera.model_copy(update={"pacing": "fast"})
    return LoadedConfig(cfg.model_copy(update={"camera": camera}), loaded.path)


async def _api_client(url: str, token: str, stop: asyncio.Event, stats: dict[str, Any]) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    latencies: list[float] = []
    cursor = frames = people = 0
    async with ClientSession(timeout=ClientTimeout(total=5)) as session:
        while not stop.is_set() and len(latencies) < API_MAX_REQUESTS:
            t = time.perf_counter()
            async with session.get(f"{url}/v1/detections", params={"since": cursor, "limit": 100},
                                   headers=headers) as r:
                if r.status != 200:
                    raise RuntimeError(f"GET /v1/detections returned {r.status}: {await r.text()}")
                body = orjson.loads(await r.read())
            latencies.append((time.perf_counter() - t) * 1000.0)
            cursor = body["cursor"]
            frames += len(body["frames"])
            people += sum(len(f["people"]) for f in body["frames"])
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), API_INTERVAL_S)
    stats.update(requests=len(latencies), latencies=latencies, frames=frames, people=people)


async def measure_pipeline(token: str) -> dict[str, Any]:
    loaded = fast_sim_config()
    svc, tok = await build_service(loaded, token_env={ENV_VAR: token})
    runner = web.AppRunner(build_app(svc, tok), handle_signals=False, access_log=None)
    await runner.setup()  # starts the pipeline (the app's cleanup context)
    out: dict[str, Any] = {}
    api: dict[str, Any] = {}
    stop = asyncio.Event()
    client: asyncio.Task[None] | None = None
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        client = asyncio.create_task(_api_client(f"http://{host}:{port}", token, stop, api))
        st = svc.pipeline.stats
        t_end = time.monotonic() + PIPELINE_TIME_LIMIT_S

        async def wait_for(n: int) -> None:
            while st.frames_processed < n:
                if st.state in ("error", "ended"):
                    raise RuntimeError(f"pipeline {st.state}: {st.error}")
                if client.done():
                    client.result()  # re-raise an API failure
                if time.monotonic() > t_end:
                    return
                await asyncio.sleep(0.05)

        await wait_for(PIPELINE_WARMUP)
        n_a, t_a = st.frames_processed, st.processed_at[-1]
        dropped_a = st.frames_dropped
        await wait_for(n_a + PIPELINE_FRAMES)
        n_b, t_b = st.frames_processed, st.processed_at[-1]
        if n_b - n_a < PIPELINE_FRAMES:
            progress(f"pipeline: time limit reached after {n_b - n_a} frames")
        out["pipeline_fps"] = (n_b - n_a) / (t_b - t_a)
        out["pipeline_frames"] = n_b - n_a
        out["pipeline_s"] = t_b - t_a
        out["frames_dropped"] = st.frames_dropped - dropped_a
        out["frames_dropped_total"] = st.frames_dropped
        out["inference_errors"] = st.inference_errors
        p50, p99 = st.infer_percentiles()  # detect(): resize + invoke + decode, last 1000 frames
        out["pipeline_detect_ms_p50"], out["pipeline_detect_ms_p99"] = p50, p99
        out["rss_mib"] = rss_mib()
        out["rss_peak_mib"] = rss_peak_mib()
        out["buffer_records"] = len(svc.buffer)
        out["runtime"] = svc.detector.runner.runtime
        out["threads"] = loaded.config.inference.threads
        out["process_threads"] = threading.active_count()
    finally:
        stop.set()
        if client is not None:
            with contextlib.suppress(Exception):
                await client
        await runner.cleanup()  # stops the pipeline, closes the camera, joins the workers
    if api:
        lat = api["latencies"]
        out["api_requests"] = api["requests"]
        out["api_ms_p50"] = pct(lat, 50) if lat else None
        out["api_ms_max"] = max(lat) if lat else None
        out["api_frames_read"] = api["frames"]
        out["api_people_read"] = api["people"]
    return out


# -- 3. the bare model on pre-decoded, pre-resized frames ---------------------------------------
def measure_model() -> dict[str, Any]:
    loaded = load_config(SIM_CONFIG)
    inf = loaded.config.inference
    models_dir = loaded.resolve(inf.models_dir)
    model = resolve_model(inf.detector.model, models_dir, load_manifest(models_dir / "manifest.yaml"))
    runner = ModelRunner(model, runtime=inf.runtime, num_threads=inf.threads, delegate=inf.delegate)
    w, h = runner.input_size
    cap = cv2.VideoCapture(str(VTEST))
    frames, decode_ms, resize_ms = [], [], []
    try:
        for _ in range(MODEL_FRAMES):
            t0 = time.perf_counter()
            ok, bgr = cap.read()
            if not ok:
                break
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)  # what the replay camera does per frame
            t1 = time.perf_counter()
            frames.append(cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR))  # what detect() does
            t2 = time.perf_counter()
            decode_ms.append((t1 - t0) * 1000.0)
            resize_ms.append((t2 - t1) * 1000.0)
    finally:
        cap.release()
    if not frames:
        raise RuntimeError(f"{VTEST}: no frames decoded")
    for i in range(MODEL_WARMUP):
        runner.run(frames[i % len(frames)])
    times = []
    t_start = time.perf_counter()
    for i in range(MODEL_INVOKES):
        t = time.perf_counter()
        runner.run(frames[i % len(frames)])
        times.append((time.perf_counter() - t) * 1000.0)
    elapsed = time.perf_counter() - t_start
    return {
        "model_fps": MODEL_INVOKES / elapsed,
        "model_invokes": MODEL_INVOKES,
        "model_ms_p50": pct(times, 50),
        "model_ms_p90": pct(times, 90),
        "model_ms_p99": pct(times, 99),
        "model_runtime": runner.runtime,
        "model_input": "x".join(str(v) for v in runner.input_shape[1:]),
        "decode_frames": len(frames),
        "decode_ms": pct(decode_ms, 50),  # read + BGR->RGB of one 768x576 frame, p50
        "resize_ms": pct(resize_ms, 50),  # 768x576 -> model input, p50
    }


def fmt(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def main() -> int:
    for need, how in ((VTEST, "make media"), (ROOT / "models" / "manifest.yaml", "make models")):
        if not need.exists():
            print(f"error: {need} is missing; run `{how}` (or `make setup`)", file=sys.stderr)
            return 2
    token = secrets.token_urlsafe(24)
    results: dict[str, Any] = {}
    failed = False
    t_total = time.monotonic()

    progress("1/3 first detection: spawning python -m firmware --config board_configs/sim.yaml --port 0")
    try:
        results.update(measure_first_detection(token))
    except Exception as e:
        failed = True
        results["first_detection_s"] = None
        results["first_detection_error"] = f"{type(e).__name__}: {e}"

    progress(f"2/3 pipeline: {PIPELINE_FRAMES} frames, pacing fast, API on loopback")
    results.update(asyncio.run(measure_pipeline(token)))

    progress(f"3/3 model: {MODEL_INVOKES} bare invokes on {MODEL_FRAMES} pre-decoded frames")
    results.update(measure_model())

    results["pipeline_vs_model_ratio"] = results["pipeline_fps"] / results["model_fps"]
    results["ratio_target"] = RATIO_TARGET
    results["ratio_ok"] = "yes" if results["pipeline_vs_model_ratio"] >= RATIO_TARGET else "no"
    results["cv2_threads"] = cv2.getNumThreads()
    results["cpus"] = len(os.sched_getaffinity(0))
    results["python"] = platform.python_version()
    results["opencv"] = cv2.__version__
    results["bench_s"] = time.monotonic() - t_total

    order = [
        "model_fps", "pipeline_fps", "pipeline_vs_model_ratio", "ratio_target", "ratio_ok",
        "first_detection_s", "rss_mib", "rss_peak_mib",
        "model_ms_p50", "model_ms_p90", "model_ms_p99", "model_invokes", "model_input",
        "pipeline_frames", "pipeline_s", "frames_dropped", "frames_dropped_total", "inference_errors",
        "pipeline_detect_ms_p50", "pipeline_detect_ms_p99", "buffer_records",
        "decode_ms", "resize_ms", "decode_frames",
        "api_requests", "api_ms_p50", "api_ms_max", "api_frames_read", "api_people_read",
        "serving_s", "first_detection_service_s", "first_detection_frame_id", "first_detection_polls",
        "first_detection_exit_code", "first_detection_error",
        "runtime", "model_runtime", "threads", "process_threads", "cv2_threads", "cpus", "python", "opencv",
        "bench_s",
    ]
    for key in order + sorted(set(results) - set(order)):
        if key in results:
            print(f"{key}: {fmt(results[key])}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
