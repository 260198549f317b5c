"""Thermal: SoC temperature and throttle flags read through the file sensor (the sysfs reader
pointed at files the test writes), shown in /v1/status and /metrics; above the soft limit the
analysed frame rate drops before the firmware would throttle, and comes back below the
hysteresis band. The real pipeline and model, the real API on loopback."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from firmware.app import build_service
from firmware.config import ThermalConfig
from firmware.http.app import build_app
from firmware.thermal import FileSensor, ThermalMonitor, decode_flags, parse_temp, parse_throttled
from tests.conftest import sim_config

TOKEN = "thermal-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_readings_parse_sysfs_and_vcgencmd_forms(tmp_path):
    assert parse_temp("48312\n") == pytest.approx(48.312)
    assert parse_temp("temp=48.3'C\n") == pytest.approx(48.3)
    assert parse_throttled("throttled=0x50005\n") == 0x50005 == parse_throttled("50005")
    assert decode_flags(0x50005) == ["under_voltage", "throttled", "under_voltage_occurred", "throttled_occurred"]
    temp, thr = tmp_path / "temp", tmp_path / "throttled"
    sensor = FileSensor(temp, thr)
    assert sensor.read() is None  # neither file: no reading, no exception
    temp.write_text("not a number")
    assert sensor.read() is None and sensor.errors == 1
    temp.write_text("61500\n")
    thr.write_text("0x0\n")
    r = sensor.read()
    assert r is not None and r.temp_c == 61.5 and r.throttled == 0 and r.flags == []
    mon = ThermalMonitor(sensor, ThermalConfig(sensor="file", soft_limit_c=70, hysteresis_c=5))
    for text, hot in (("69000", False), ("70000", True), ("66000", True), ("64900", False)):
        temp.write_text(text)
        mon.poll()
        assert mon.hot is hot, text
    thr.write_text("0x80008")  # the firmware's soft temperature limit is active: slow down too
    mon.poll()
    assert mon.hot and "soft_temp_limit" in mon.reading.flags


async def _rate(svc, seconds: float) -> float:
    n0 = svc.pipeline.stats.frames_processed
    await asyncio.sleep(seconds)
    return (svc.pipeline.stats.frames_processed - n0) / seconds


async def test_above_the_soft_limit_the_frame_rate_drops_and_comes_back(models_dir, tmp_path):
    temp, thr = tmp_path / "temp", tmp_path / "throttled"
    temp.write_text("55000\n")
    thr.write_text("0x0\n")
    loaded = sim_config({
        "camera": {"type": "synthetic", "size": [320, 240], "people": 2, "pacing": "realtime", "fps": 20},
        "signals": {"pose": "off"},
        "privacy": {"audit_log": str(tmp_path / "audit.jsonl"), "optout": {"pins": "none"}},
        "thermal": {"sensor": "file", "temp_path": str(temp), "throttled_path": str(thr), "soft_limit_c": 75,
                    "hysteresis_c": 5, "hot_fps": 4, "poll_s": 0.05},
    })
    svc, token = await build_service(loaded, token_env={"CUECAM_API_TOKEN": TOKEN})
    async with TestClient(TestServer(build_app(svc, token), host="127.0.0.1")) as c:
        for _ in range(300):  # bounded
            if svc.pipeline.stats.frames_processed >= 3:
                break
            await asyncio.sleep(0.02)
        cool = await _rate(svc, 1.0)
        status = await (await c.get("/v1/status", headers=AUTH)).json()
        assert status["thermal"]["temp_c"] == 55.0 and status["thermal"]["hot"] is False
        temp.write_text("80000\n")  # above the soft limit
        await asyncio.sleep(0.2)
        hot = await _rate(svc, 1.5)
        status = await (await c.get("/v1/status", headers=AUTH)).json()
        th = status["thermal"]
        assert th["hot"] is True and th["temp_c"] == 80.0 and th["fps_cap"] == 4 and th["frames_skipped"] > 0
        metrics = {m.name: m for m in text_string_to_metric_families(await (await c.get("/metrics", headers=AUTH)).text())}
        assert metrics["cuecam_soc_temperature_celsius"].samples[0].value == 80.0
        assert metrics["cuecam_thermal_hot"].samples[0].value == 1.0
        assert metrics["cuecam_throttled_flags"].samples[0].value == 0.0
        temp.write_text("72000\n")  # inside the hysteresis band: still slow
        await asyncio.sleep(0.3)
        assert svc.thermal.hot
        temp.write_text("65000\n")
        await asyncio.sleep(0.3)
        back = await _rate(svc, 1.0)
        print(f"\nthermal: {cool:.1f} fps cool, {hot:.1f} fps above the soft limit (cap 4), {back:.1f} fps cooled down")
        assert cool >= 12 and hot <= 4.8 and back >= 12
        assert (await (await c.get("/health")).json())["status"] == "ok"
