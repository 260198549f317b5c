"""/metrics of the board and of the gateway, checked by Prometheus's own linter (Debian's
``promtool``, package prometheus; .ci/run installs it): base units, counters ending in _total,
histograms instead of gauges with quantile labels. Run on live servers, after real traffic."""

from __future__ import annotations

import shutil
import subprocess

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from firmware.app import build_service
from firmware.http.app import build_app
from host_tools.gateway.bench import write_config
from host_tools.gateway.simdevice import SimBoard
from tests.conftest import sim_config, until
from tests.integration.test_gateway_api import serving

TOKEN = "promtool-test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _promtool(text: str) -> str:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip("promtool is missing: apt-get install prometheus (.ci/run does)")
    r = subprocess.run([exe, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    return (r.stdout + r.stderr).strip() + ("" if r.returncode == 0 else f"\n(exit {r.returncode})")


async def test_the_boards_metrics_pass_promtool(models_dir, vtest, tmp_path):
    # with a counting line, a queue and a paired companion, so that their families carry samples too
    (tmp_path / "door-1.key").write_text(bytes(range(32)).hex() + "\n")
    zones = [z.model_dump(mode="json", exclude_none=True) for z in sim_config({}).config.zones] + [
        {"name": "plaza-line", "kind": "line", "line": [[0.5, 0.2], [0.5, 0.98]], "in_side": "right"},
        {"name": "till", "kind": "queue", "polygon": [[0.02, 0.60], [0.52, 0.60], [0.52, 0.99], [0.02, 0.99]]}]
    loaded = sim_config({"camera": {"pacing": "fast"}, "zones": zones,
                         "privacy": {"audit_log": str(tmp_path / "audit.jsonl"), "optout": {"companions": [
                             {"name": "door-1", "key_file": str(tmp_path / "door-1.key")}]}}})
    svc, token = await build_service(loaded, token_env={"CUECAM_API_TOKEN": TOKEN})
    async with TestClient(TestServer(build_app(svc, token), host="127.0.0.1")) as c:
        await until(lambda: svc.pipeline.stats.frames_processed >= 20, 60)
        text = await (await c.get("/metrics", headers=AUTH)).text()
    assert _promtool(text) == ""
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("cuecam_line_crossings", "cuecam_queue_length", "cuecam_zone_occupancy", "cuecam_companions_paired"):
        assert fams[name].samples, name
    h = fams["cuecam_inference_seconds"]
    assert h.type == "histogram"
    count = next(s.value for s in h.samples if s.name.endswith("_count"))
    total = next(s.value for s in h.samples if s.name.endswith("_sum"))
    assert count >= 20 and 0.001 < total / count < 2.0  # seconds per invoke, not milliseconds
    inf = next(s.value for s in h.samples if s.name.endswith("_bucket") and s.labels["le"] == "+Inf")
    assert inf == count
    assert not [f.name for f in fams.values() if any("quantile" in s.labels for s in f.samples) and f.type == "gauge"]
    assert not [f.name for f in fams.values() if f.name.endswith(("_ms", "_milliseconds"))]


async def test_the_gateways_metrics_pass_promtool(tmp_path):
    boards = [SimBoard(f"sim-{i}", rate=20.0, seed=i) for i in range(2)]
    for b in boards:
        await b.start()
        b.produce(50)
    try:
        path = write_config(tmp_path, boards, interval_s=0.1)
        async with serving(path) as (gw, url), aiohttp.ClientSession() as s:
            await until(lambda: all(getattr(gw.store.cursors.get(b.name), "seq", 0) >= 50 for b in boards), 30)
            async with s.get(url + "/metrics") as r:
                text = await r.text()
    finally:
        for b in boards:
            await b.stop()
    assert _promtool(text) == ""
    assert "cuecam_gateway" in text
