"""``cuecam gateway bench``: one real gateway process (``cuecam gateway run``) polling N simulated
boards (host_tools/gateway/simdevice.py) that produce vectors at a set rate; reports the gateway's
CPU and memory, poll round trips and window-end-to-gateway latency, and holds it to exactly once
(vectors taken per board == vectors produced)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from .simdevice import SimBoard

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_config(workdir: Path, boards: list[SimBoard], *, interval_s: float = 1.0, sqlite: bool = False) -> Path:
    devices = []
    for b in boards:
        tf = workdir / f"{b.name}.token"
        tf.write_text(b.token + "\n")
        tf.chmod(0o600)
        devices.append({"name": b.name, "url": b.url, "token": {"file": str(tf)}})
    cfg = {"version": 1, "gateway": {"name": "bench", "host": "127.0.0.1", "port": 0}, "devices": devices,
           "polling": {"interval_s": interval_s, "stale_after_s": 10},
           "store": {"retention_s": 3600} | ({"sqlite": str(workdir / "gateway.sqlite")} if sqlite else {}),
           "outputs": {"log": {"enabled": False}}}
    path = workdir / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _popen_gateway(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "host_tools.cli", "gateway", "run", "--config", str(config),
                             "--log-level", "WARNING"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


async def start_gateway_process(config: Path, wait_s: float = 30.0) -> tuple[subprocess.Popen[str], str]:
    """``cuecam gateway run`` as a child process; returns it and the URL it serves on."""
    proc = _popen_gateway(config)
    assert proc.stdout is not None
    loop = asyncio.get_running_loop()
    t_end = time.monotonic() + wait_s
    while time.monotonic() < t_end:
        line = await loop.run_in_executor(None, proc.stdout.readline)
        if not line:
            raise RuntimeError(f"the gateway exited with {proc.wait()}")
        m = re.search(r"serving on (http://\S+)", line)
        if m:
            return proc, m.group(1)
    proc.kill()
    raise RuntimeError("the gateway did not start")


async def run_bench(n_devices: int, rate: float, duration: float) -> dict[str, Any]:
    boards = [SimBoard(f"sim-{i:03d}", rate, seed=i) for i in range(n_devices)]
    for b in boards:
        await b.start()
    with tempfile.TemporaryDirectory(prefix="cuecam-gw-bench-") as td:
        proc, url = await start_gateway_process(write_config(Path(td), boards))
        try:
            async with aiohttp.ClientSession(base_url=url) as s:
                await asyncio.sleep(1.0)
                cpu0, t0 = _cpu_s(proc.pid), time.monotonic()
                for b in boards:
                    b.start_producing()
                await asyncio.sleep(duration)
                for b in boards:
                    await b.stop_producing()
                cpu1, t1 = _cpu_s(proc.pid), time.monotonic()
                rss = _rss_mib(proc.pid)
                produced = {b.name: b.produced for b in boards}
                taken: dict[str, int] = {}
                t_end = time.monotonic() + 15
                while time.monotonic() < t_end:  # drain: the last poll interval's vectors
                    async with s.get("/v1/devices") as r:
                        devs = (await r.json())["devices"]
                    taken = {d["name"]: d["vectors"] for d in devs}
                    if all(taken.get(k, 0) >= v for k, v in produced.items()):
                        break
                    await asyncio.sleep(0.5)
                async with s.get("/metrics") as r:
                    metrics = await r.text()
        finally:
            proc.terminate()
            proc.wait(15)
            for b in boards:
                await b.stop()
    lag = [float(x) for x in re.findall(r"^cuecam_gateway_ingest_lag_seconds (\S+)$", metrics, re.M)]
    p50s = sorted(d["poll_ms_p50"] for d in devs if d["poll_ms_p50"] is not None)
    p99s = sorted(d["poll_ms_p99"] for d in devs if d["poll_ms_p99"] is not None)
    total = sum(produced.values())
    missing = sum(max(0, produced[k] - taken.get(k, 0)) for k in produced)
    dups = sum(max(0, taken.get(k, 0) - produced[k]) for k in produced)
    return {"gateway_devices": n_devices, "gateway_rate_per_device": rate, "gateway_vectors_produced": total,
            "gateway_vectors_taken": sum(taken.values()), "missing": missing, "duplicates": dups,
            "gateway_cpu_percent": round(100 * (cpu1 - cpu0) / (t1 - t0), 1), "gateway_rss_mib": round(rss, 1),
            "gateway_poll_ms_p50_median": p50s[len(p50s) // 2] if p50s else None,
            "gateway_poll_ms_p99_max": p99s[-1] if p99s else None,
            "gateway_ingest_lag_s_p99": round(lag[0], 3) if lag else None,
            "gateway_stale_devices": sum(1 for d in devs if d["state"] != "ok")}
