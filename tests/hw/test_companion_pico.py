"""On a real Raspberry Pi Pico W attached over USB (`pytest -m hw tests/hw/test_companion_pico.py`,
CUECAM_PICO=auto or the serial port): the .mpy build copied with mpremote as an integrator
would, then the real hardware seam (machine.Pin, network.WLAN; the watchdog is left off) and the
socket transport against a board given by CUECAM_PICO_BOARD_URL on the Pico's Wi-Fi
(CUECAM_PICO_SSID / CUECAM_PICO_PASSWORD). Skipped where no Pico is attached."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.companion.pico import build_mpy

pytestmark = pytest.mark.hw


def mpremote(*args: str, timeout: float = 60) -> str:
    exe = shutil.which("mpremote") or pytest.skip("mpremote is missing: make setup")
    port = os.environ.get("CUECAM_PICO", "auto")
    r = subprocess.run([exe, "connect", port, *args], capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        pytest.skip(f"no Pico W answers on {port}: {r.stderr.strip()[:200]}")
    return r.stdout


def test_the_build_runs_on_a_pico_w_with_its_real_pins_and_radio(tmp_path: Path) -> None:
    if "CUECAM_PICO" not in os.environ:
        pytest.skip("set CUECAM_PICO=auto (or the serial port) with a Pico W attached")
    lib = build_mpy(tmp_path / "build")
    subprocess.run([shutil.which("mpremote") or "mpremote", "connect", os.environ["CUECAM_PICO"], "fs", "mkdir",
                    ":cuecam_companion"], capture_output=True, timeout=30)  # exists already: fine
    for f in sorted((lib / "cuecam_companion").glob("*.mpy")):
        mpremote("fs", "cp", str(f), f":cuecam_companion/{f.name}")
    probe = tmp_path / "probe.py"
    url = os.environ.get("CUECAM_PICO_BOARD_URL", "")
    probe.write_text(f"""
import asyncio, sys
from cuecam_companion import hw, core
p = hw.Pico()
pin = p.button(15, True)
led = p.led("LED")
led.value(1)
print("button", pin.value())
print("mpy", sys.implementation._mpy & 0xFF, sys.implementation.version)
ssid = {os.environ.get("CUECAM_PICO_SSID", "")!r}
url = {url!r}
async def main():
    if not ssid or not url:
        print("radio skipped")
        return
    r = p.radio({{"ssid": ssid, "password": {os.environ.get("CUECAM_PICO_PASSWORD", "")!r}}})
    r.connect()
    for _ in range(300):
        if r.isconnected():
            break
        await asyncio.sleep(0.1)
    print("wifi", r.isconnected())
    b = core.Board({{"name": "probe", "url": url, "pause_s": 600}})
    status, headers, body = await p.transport().request(b, "GET", "/health", {{}}, b"", 5000)
    print("health", status, core.http_date(headers.get("date", "")) is not None)
asyncio.run(main())
led.value(0)
""")
    out = mpremote("run", str(probe), timeout=90)
    assert "button 1" in out, out  # pulled up, not pressed
    if url:
        assert "wifi True" in out and "health " in out and " True" in out.split("health", 1)[1], out
