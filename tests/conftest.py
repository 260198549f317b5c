"""Shared fixtures: where the real models and footage are, and how to get them when absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("CUECAM_SHARED", ROOT.parent / "shared"))
MODELS_DIR = ROOT / "models"
MEDIA_DIR = ROOT / "media"
SIM_CONFIG = ROOT / "board_configs" / "sim.yaml"
VTEST = MEDIA_DIR / "vtest.avi"


def _need(path: Path, how: str) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is missing: {how}")
    return path


@pytest.fixture(scope="session")
def models_dir() -> Path:
    _need(MODELS_DIR / "coco_ssd_mobilenet_v1_1.0_quant_2018_06_29.tflite",
          "run `make models` (copies from ../shared/models, see ../shared/ASSETS.md)")
    return MODELS_DIR


@pytest.fixture(scope="session")
def vtest() -> Path:
    return _need(VTEST, "run `make media` (links ../shared/media/vtest.avi, see ../shared/ASSETS.md)")


@pytest.fixture(scope="session")
def shared_media() -> Path:
    return _need(MEDIA_DIR, "run `make media`")


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and v.get("type", out[k].get("type")) == out[k].get("type"):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def sim_config(overrides: dict | None = None):
    """board_configs/sim.yaml with overrides merged in and validated again (paths still resolve
    relative to board_configs/). A camera override with another ``type`` replaces the section."""
    from firmware.config import Config, LoadedConfig, load_config

    loaded = load_config(SIM_CONFIG)
    data = _merge(loaded.config.model_dump(), overrides or {})
    return LoadedConfig(Config.model_validate(data), loaded.path)


async def until(cond, seconds: float = 30.0, step: float = 0.02) -> None:
    """Wait for ``cond()`` to hold, polling every ``step`` seconds, at most ``seconds`` (bounded)."""
    import asyncio

    for _ in range(max(1, int(seconds / step))):
        if cond():
            return
        await asyncio.sleep(step)
    raise AssertionError(f"condition not met within {seconds} s")
