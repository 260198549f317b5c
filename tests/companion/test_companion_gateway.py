"""The gateway shows the companions paired with each board and their last press, read from the
boards' /v1/status while it polls their vectors: a press under MicroPython shows up there."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from host_tools.gateway.config import load_gateway_config
from host_tools.gateway.service import Gateway, _Collector
from tests.companion.boards import SimBoard
from tests.companion.conftest import KEY, PAUSE_S
from tests.companion.pico import Pico, companion_config
from tests.conftest import until
from tests.integration.test_promtool import _promtool


async def test_the_gateway_shows_each_boards_companions_and_their_last_press(
        lib: Path, boards: list[SimBoard], flash: Path, tmp_path: Path) -> None:
    devices = []
    for b in boards:
        b.measuring()
        tf = tmp_path / f"{b.name}.token"
        tf.write_text(b.token + "\n")
        tf.chmod(0o600)
        devices.append({"name": b.name, "url": b.url, "token": {"file": str(tf)}})
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(json.dumps({"version": 1, "gateway": {"port": 0}, "devices": devices,
                               "polling": {"interval_s": 0.2, "status_s": 0.5}, "outputs": {"log": {"enabled": False}}}))
    gw = Gateway(load_gateway_config(cfg))
    await gw.start()
    pico = Pico(lib, companion_config(tmp_path / "companion.json", "door-1", KEY,
                                      [(b.name, b.url, PAUSE_S) for b in boards]), flash)
    try:
        await until(lambda: all(d["companions"] for d in gw.devices()), 15, 0.1)
        before = {d["name"]: d["companions"][0]["presses"] for d in gw.devices()}
        t_press = time.time()
        pico.cmd("press", hold_ms=80)
        await until(lambda: all(d["companions"][0]["presses"] == before[d["name"]] + 1 for d in gw.devices()), 15, 0.1)
        for d in gw.devices():
            c = d["companions"][0]
            assert c["name"] == "door-1" and c["last_action"] == "optout" and c["last_press_t"] >= t_press - 1
        reg = CollectorRegistry()
        reg.register(_Collector(gw))  # type: ignore[arg-type]  (what GET /metrics serves)
        text = generate_latest(reg).decode()
        n = before["cam-a"] + 1
        assert f'cuecam_gateway_companion_presses_total{{companion="door-1",device="cam-a"}} {float(n)}' in text
        assert 'cuecam_gateway_companion_last_press_timestamp_seconds{companion="door-1",device="cam-b"}' in text
        if shutil.which("promtool"):
            assert _promtool(text) == ""
    finally:
        pico.close()
        await gw.stop()
