"""--validate-config's look beyond the schema: the models a board names, their kind and format for
where they run, and the files and packages the board must have."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from firmware.board_check import check_board
from firmware.config import LoadedConfig, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]
BOARDS = sorted((ROOT / "board_configs").glob("*.yaml"))


@pytest.mark.parametrize("board", BOARDS, ids=[b.stem for b in BOARDS])
def test_every_shipped_board_names_models_it_can_run(board: Path) -> None:
    assert check_board(load_config(board)).problems == []


@pytest.mark.parametrize(("board", "wants"), [
    ("rpi-zero2w-aicam", ["imx500_network_ssd_mobilenetv2_fpnlite_320x320_pp.rpk (rpk, apt imx500-models",
                          "apt imx500-all", "metadata, no pixels"]),
    ("rpi5-aicam", ["(rpk, apt imx500-models", "apt imx500-all", "lores", "movenet_single_pose_lightning_ptq.tflite"]),
    ("rpi5-hailo", ["yolov8s_h8l.hef (hef, apt hailo-models", "apt hailo-all",
                    "fallback_model ssd_mobilenet_v1"]),
    ("rpi5-coral-usb", ["apt libedgetpu1-std", "movenet_single_pose_lightning_ptq_edgetpu.tflite"]),
])
def test_a_board_says_what_it_needs(board: str, wants: list[str]) -> None:
    needs = "\n".join(check_board(load_config(ROOT / "board_configs" / f"{board}.yaml")).needs)
    for w in wants:
        assert w in needs, (w, needs)


def _with_manifest(tmp_path: Path, board: str, edit) -> LoadedConfig:
    m = yaml.safe_load((ROOT / "models" / "manifest.yaml").read_text())
    edit(m["models"])
    (tmp_path / "manifest.yaml").write_text(yaml.safe_dump(m))
    text = (ROOT / "board_configs" / f"{board}.yaml").read_text().replace("/opt/cuecam/models", str(tmp_path))
    return LoadedConfig(parse_config(text), tmp_path / f"{board}.yaml")


def test_a_model_in_the_wrong_format_for_its_accelerator_is_a_problem(tmp_path: Path) -> None:
    def hef_on_the_sensor(models):
        models["imx500_ssd_mobilenetv2_fpnlite"]["system_file"] = "/usr/share/hailo-models/yolov8s_h8l.hef"

    problems = check_board(_with_manifest(tmp_path, "rpi-zero2w-aicam", hef_on_the_sensor)).problems
    assert problems == ["inference.detector.model: 'imx500_ssd_mobilenetv2_fpnlite' is yolov8s_h8l.hef; "
                        "imx500 models are .rpk files"]


def test_validate_config_fails_on_models_the_board_cannot_run(tmp_path: Path) -> None:
    text = (ROOT / "board_configs" / "rpi5-hailo.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("fallback_model: ssd_mobilenet_v1", "fallback_model: hailo_yolov8s_h8")
                   .replace("model: hailo_yolov8s_h8l", "model: hailo_yolov9"))
    p = subprocess.run([sys.executable, "-m", "firmware", "--validate-config", str(bad)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert "inference.detector.model: unknown model 'hailo_yolov9'" in p.stderr
    assert "inference.fallback_model: 'hailo_yolov8s_h8' runs on the hailo, but this board runs it on the cpu" in p.stderr


def test_an_update_built_by_default_installs_on_every_shipped_board() -> None:
    from host_tools.ota_cli import BOARDS as BUNDLE_BOARDS

    for board in BOARDS:
        assert load_config(board).config.board.kind in BUNDLE_BOARDS, board.name
