"""The companion's socket transport (companion/cuecam_companion/http.py: what speaks HTTP on the
Pico) on CPython's asyncio, against a real sim board on loopback: MicroPython and CPython share
the asyncio streams API it uses (open_connection, readline, readexactly, drain)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from tests.companion.boards import SimBoard, wait
from tests.companion.conftest import KEY, PAUSE_S
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "companion"))
from cuecam_companion import core, fakes
from cuecam_companion.http import SocketTransport


def _press_through_sockets(board: SimBoard, tmp_path: Path) -> tuple[list[tuple[str, int]], dict]:
    confirmed: list[tuple[str, int]] = []

    async def run() -> dict:
        cfg = core.check_config({"schema": 1, "name": "door-1", "key": KEY.hex(), "wifi": {"ssid": "ShopNet"},
                                 "boards": [{"name": board.name, "url": board.url, "pause_s": PAUSE_S}],
                                 "button": {"bounce_ms": 50}})
        hw = fakes.FakeHardware(SocketTransport(), join_ms=20)
        comp = core.Companion(cfg, button_pin=hw.button(15, True), led=hw.led(14), radio=hw.radio(cfg["wifi"]),
                              transport=hw.transport(), state_dir=str(tmp_path), log=lambda m: None)
        comp.on_confirm = lambda b, a, ms, board_ms: confirmed.append((b.name, ms))
        comp.start()
        try:
            for _ in range(200):
                if comp.boards[0].sync is not None:
                    break
                await asyncio.sleep(0.02)
            hw.pin.down()
            for _ in range(250):
                if confirmed:
                    break
                await asyncio.sleep(0.02)
            hw.pin.up()
            return comp.state()
        finally:
            comp.stop()

    return confirmed, asyncio.run(run())


def test_a_press_through_real_sockets_pauses_the_board(boards: list[SimBoard], tmp_path: Path) -> None:
    board = boards[0]
    board.measuring()
    confirmed, state = _press_through_sockets(board, tmp_path)
    assert confirmed and confirmed[0][0] == board.name, state
    wait(board.paused, 2, "paused")
    assert board.companion("door-1")["last_action"] == "optout"
    assert state["led"] == "on"


def test_a_board_serving_https_pauses_too(models_dir: Path, vtest: Path, tmp_path: Path) -> None:
    """api.tls: the companion encrypts and authenticates the answer by its HMAC, not the certificate."""
    board = SimBoard(tmp_path, "cam-tls", [("door-1", KEY)], pause_s=PAUSE_S, tls=True)
    board.start()
    try:
        confirmed, state = _press_through_sockets(board, tmp_path)
        assert confirmed and confirmed[0][0] == "cam-tls", state
        assert state["boards"][0]["confirmed"] == 1
        assert board.paused() and board.companion("door-1")["presses"] == 1
    finally:
        board.stop()
