"""Soak: the real firmware (sim board, replay of vtest.avi as fast as inference goes, looping) with
its API under load on loopback: a warm-up of SOAK_WARMUP_S (60) seconds, then SOAK_S seconds
measured.

    SOAK_S=1800 .venv/bin/python tests/soak/soak.py     # `make soak` (CI: SOAK_S=60)

Load: WORKERS clients cycle through every GET route (following the /v1/vectors cursor), the
common errors (404, 400, 401, 413, 405) and fresh connections, as fast as answers come. Every
SAMPLE_S seconds the load pauses, the clients close their connections, and the firmware process
is sampled from /proc (VmRSS, open fds, threads) and /metrics (cuecam_asyncio_tasks, the fewest of
five readings 0.1 s apart, so a short-lived periodic task is not counted as growth). Growth is
the median of the last three samples minus the median of the first three after the warm-up
(the first minute allocates caches: models, decoder, executor threads, allocator arenas).
Prints ``key: value`` lines; exits 1 when a target is missed: soak_rss_growth_mib < 1,
soak_fd_growth == 0, soak_task_growth == 0, soak_thread_growth == 0, soak_5xx == 0.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests import device  # noqa: E402

TOKEN = "soak-token-" + "c0ffee5eed1234567890abcdef012345"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WORKERS = 4
OVERRIDES = {
    "camera": {"pacing": "fast", "loop": True},
    "api": {"rate_limit": {"per_s": 100000.0, "burst": 1000000}},
}


def proc_sample(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {"rss_kib": float(fields["VmRSS"].split()[0]), "threads": float(fields["Threads"].strip()),
            "fds": float(len(os.listdir(f"/proc/{pid}/fd")))}


async def metric(url: str, name: str) -> float:
    async with aiohttp.ClientSession(headers=AUTH) as http, http.get(url + "/metrics") as r:
        text = await r.text()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise RuntimeError(f"{name} not in /metrics")


async def wait_healthy(url: str, seconds: float = 60.0) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(int(seconds * 5)):
            async with http.get(url + "/health") as r:
                if r.status == 200:
                    return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url}/health never turned ok")


class Load:
    def __init__(self, url: str) -> None:
        self.url = url
        self.statuses: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.cursor = 0
        self.vectors = 0

    async def worker(self, wid: int, until: float, http: aiohttp.ClientSession) -> None:
        u = self.url
        i = wid
        while time.monotonic() < until:
            i += 1
            k = i % 16
            try:
                if k == 0:
                    async with http.get(f"{u}/v1/vectors?since={self.cursor}&limit=500", headers=AUTH) as r:
                        body = await r.json()
                        if r.status == 200:
                            self.cursor = max(self.cursor, body["cursor"])
                            self.vectors += len(body["vectors"])
                elif k == 1:
                    req = http.get(f"{u}/v1/aggregates?window=60", headers=AUTH)
                elif k == 2:
                    req = http.get(f"{u}/metrics", headers=AUTH)
                elif k == 3:
                    req = http.get(f"{u}/nope")  # 404
                elif k == 4:
                    req = http.get(f"{u}/v1/vectors?limit=abc", headers=AUTH)  # 400
                elif k == 5:
                    req = http.get(f"{u}/v1/status", headers={"Authorization": "Bearer wrong-token-wrong-token"})  # 401
                elif k == 6:
                    req = http.post(f"{u}/v1/optout?x=1", headers=AUTH, data=b"x" * (70 * 1024))  # 413
                elif k == 7:
                    req = http.delete(f"{u}/v1/status", headers=AUTH)  # 405
                elif k == 8:
                    req = http.get(f"{u}/v1/audit?limit=10", headers=AUTH)
                elif k == 9:
                    req = http.get(f"{u}/openapi.json", headers=AUTH)
                elif k == 10:
                    req = http.get(f"{u}/v1/privacy")
                elif k == 11:  # a connection of its own, closed after the answer
                    req = http.get(f"{u}/health", headers={"Connection": "close"})
                elif k in (12, 13):
                    req = http.get(f"{u}/health")
                else:
                    req = http.get(f"{u}/v1/status", headers=AUTH)
                if k != 0:
                    async with req as r:
                        await r.read()
                self.statuses[r.status] += 1
            except (TimeoutError, aiohttp.ClientError) as e:
                self.errors[type(e).__name__] += 1
                await asyncio.sleep(0.05)

    async def run(self, seconds: float) -> None:
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=WORKERS)) as http:
            until = time.monotonic() + seconds
            await asyncio.gather(*(self.worker(w, until, http) for w in range(WORKERS)))


async def soak(total_s: float, sample_s: float, warmup_s: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="cuecam-soak-") as tmp:
        config = device.write_config(Path(tmp), OVERRIDES)
        proc = device.start(config, TOKEN)
        try:
            url = device.wait_url(proc)
            await wait_healthy(url)  # a board still starting answers 503 on /health, as documented
            load = Load(url)
            t0 = time.monotonic()
            samples: list[tuple[float, dict[str, float]]] = []
            while (elapsed := time.monotonic() - t0) < total_s:
                await load.run(min(sample_s, total_s - elapsed))
                await asyncio.sleep(1.0)  # connections closed, in-flight work done
                s = proc_sample(proc.pid)
                # the fewest of five readings: the long-lived tasks, without a short-lived one that
                # happens to be running (a periodic to_thread or a watchdog ping: 8 or 9 when idle)
                readings = []
                for _ in range(5):
                    readings.append(await metric(url, "cuecam_asyncio_tasks"))
                    await asyncio.sleep(0.1)
                s["tasks"] = min(readings)
                s["frames"] = await metric(url, "cuecam_frames_processed_total")
                samples.append((time.monotonic() - t0, s))
                if proc.poll() is not None:
                    raise RuntimeError(f"the firmware exited ({proc.returncode}) during the soak")
        finally:
            code = device.stop(proc)
    measured = [s for t, s in samples if t >= warmup_s] or samples[-1:]
    first, last = measured[:3], measured[-3:]

    def growth(key: str) -> float:
        return statistics.median(s[key] for s in last) - statistics.median(s[key] for s in first)

    requests = sum(load.statuses.values())
    after = [(t, s) for t, s in samples if t >= warmup_s]
    slope = (statistics.linear_regression([t for t, _ in after], [s["rss_kib"] / 1024 for _, s in after]).slope * 3600
             if len(after) >= 3 else float("nan"))
    return {
        "soak_s": round(time.monotonic() - t0, 1),
        "soak_warmup_s": warmup_s,
        "soak_samples": len(measured),
        "soak_requests": requests,
        "soak_rps": round(requests / max(total_s, 1e-9), 1),
        "soak_statuses": dict(sorted(load.statuses.items())),  # type: ignore[dict-item]
        "soak_client_errors": dict(load.errors),  # type: ignore[dict-item]
        "soak_frames": samples[-1][1]["frames"],
        "soak_fps": round(samples[-1][1]["frames"] / max(samples[-1][0], 1e-9), 1),
        "soak_vectors_read": load.vectors,
        "soak_rss_mib_start": round(statistics.median(s["rss_kib"] for s in first) / 1024, 1),
        "soak_rss_mib_max": round(max(s["rss_kib"] for _, s in samples) / 1024, 1),
        "soak_rss_growth_mib": round(growth("rss_kib") / 1024, 2),
        "soak_rss_trend_mib_per_h": round(slope, 2),  # least-squares slope over the samples after the warm-up
        "soak_rss_mib_series": " ".join(f"{t:.0f}s={s['rss_kib'] / 1024:.1f}" for t, s in samples),
        "soak_fd_growth": int(growth("fds")),
        "soak_task_growth": int(growth("tasks")),
        "soak_thread_growth": int(growth("threads")),
        "soak_5xx": sum(n for st, n in load.statuses.items() if st >= 500),
        "soak_firmware_exit": code,
    }


def main() -> int:
    measured = float(os.environ.get("SOAK_S", "1800"))
    warmup = float(os.environ.get("SOAK_WARMUP_S", "60"))
    if measured < 30 or warmup < 0:
        print("SOAK_S must be at least 30 and SOAK_WARMUP_S not negative", file=sys.stderr)
        return 2
    sample = 5.0 if measured <= 300 else 30.0
    r = asyncio.run(soak(warmup + measured, sample, warmup))
    for k, v in r.items():
        print(f"{k}: {v}", flush=True)
    ok = (r["soak_rss_growth_mib"] < 1.0 and r["soak_fd_growth"] == 0 and r["soak_task_growth"] == 0
          and r["soak_thread_growth"] == 0 and r["soak_5xx"] == 0 and r["soak_firmware_exit"] == 0)
    print(f"soak_ok: {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
