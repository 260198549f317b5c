"""Fixtures of the companion tests: two real sim boards with the companion door-1 paired, the
companion built with mpy-cross, and a companion under MicroPython per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.companion.boards import SimBoard
from tests.companion.pico import Pico, build_mpy, companion_config, need_micropython, new_key

PAUSE_S = 60.0
KEY = new_key()


@pytest.fixture(scope="package")
def lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_micropython()
    return build_mpy(tmp_path_factory.mktemp("mpy"))


@pytest.fixture(scope="package")
def boards(tmp_path_factory: pytest.TempPathFactory, models_dir: Path, vtest: Path) -> Iterator[list[SimBoard]]:
    need_micropython()
    work = tmp_path_factory.mktemp("boards")
    bs = [SimBoard(work, name, [("door-1", KEY)], pause_s=PAUSE_S) for name in ("cam-a", "cam-b")]
    try:
        for b in bs:
            b.start()
        yield bs
    finally:
        for b in bs:
            b.stop()


@pytest.fixture(scope="package")
def flash(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One companion's flash for the module: its counter goes on from test to test, as on a Pico."""
    return tmp_path_factory.mktemp("flash")


@pytest.fixture
def pico(lib: Path, boards: list[SimBoard], tmp_path: Path, flash: Path) -> Iterator[Pico]:
    for b in boards:
        b.measuring()
    cfg = companion_config(tmp_path / "companion.json", "door-1", KEY, [(b.name, b.url, PAUSE_S) for b in boards])
    p = Pico(lib, cfg, flash)
    p.wait_state(lambda s: s["online"] and all(b["synced"] for b in s["boards"]), 10)
    try:
        yield p
    finally:
        p.close()
