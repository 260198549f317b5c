"""install.sh: the refusals (fast), and a real install into a staging root (slow, run by make test-pi):
a venv on this Debian's python3 with --system-site-packages that keeps the apt numpy 1.24,
cuecam and its dependencies from PyPI, source, models, OTA slot a and the units; twice (idempotent)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import MODELS_DIR, ROOT

INSTALL = ROOT / "install.sh"
SYSTEM_PYTHON = "/usr/bin/python3"


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(INSTALL), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("arch", ["armhf", "armv7l", "armel"])
def test_refuses_32_bit_pi_os(tmp_path: Path, arch: str) -> None:
    r = _run("--root", str(tmp_path / "r"), env={"CUECAM_ARCH": arch})
    assert r.returncode == 1
    assert "32-bit" in r.stderr and "64-bit Raspberry Pi OS" in r.stderr
    assert not (tmp_path / "r").exists()  # stopped before writing anything


def test_refuses_unknown_options_and_relative_prefix(tmp_path: Path) -> None:
    r = _run("--frobnicate")
    assert r.returncode == 1 and "unknown option --frobnicate" in r.stderr
    r = _run("--root", str(tmp_path), "--prefix", "opt/cuecam")
    assert r.returncode == 1 and "absolute" in r.stderr


def _system_numpy() -> str:
    r = subprocess.run([SYSTEM_PYTHON, "-c", "import numpy; print(numpy.__version__)"], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail("the system python3 has no numpy: apt-get install python3-numpy (as on Raspberry Pi OS; .ci/run does)")
    return r.stdout.strip()


@pytest.mark.slow
def test_install_into_a_staging_root_twice(tmp_path: Path) -> None:
    numpy_version = _system_numpy()
    root = tmp_path / "root"
    t0 = time.monotonic()
    r = _run("--root", str(root), "--models", str(MODELS_DIR), timeout=900)
    first_s = time.monotonic() - t0
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    opt, state = root / "opt/cuecam", root / "var/lib/cuecam"
    venv_py = opt / "venv/bin/python"
    assert "include-system-site-packages = true" in (opt / "venv/pyvenv.cfg").read_text()
    assert f"numpy=={numpy_version}" in (opt / "constraints.txt").read_text().splitlines()
    probe = ("import json, numpy, yaml, cv2, lap, ai_edge_litert, firmware; print(json.dumps({'numpy': numpy.__version__, "
             "'numpy_file': numpy.__file__, 'yaml_file': yaml.__file__, 'firmware': firmware.__file__}))")
    got = json.loads(subprocess.run([str(venv_py), "-c", probe], capture_output=True, text=True, check=True,
                                    cwd=tmp_path).stdout)
    assert got["numpy"] == numpy_version and got["numpy_file"].startswith("/usr/lib/python3/dist-packages/"), got
    assert got["yaml_file"].startswith("/usr/lib/python3/dist-packages/"), got  # the apt one, as on the board
    assert got["firmware"].startswith(str(opt / "venv")), got
    assert (opt / "models/manifest.yaml").is_file()
    assert subprocess.run([str(venv_py), "-m", "firmware.models", "--manifest", str(opt / "models/manifest.yaml"),
                           "verify", "--dir", str(opt / "models")], capture_output=True).returncode == 0
    for unit in ("cuecam.service", "cuecam-firstboot.service"):
        assert (root / "etc/systemd/system" / unit).read_bytes() == (ROOT / "ota/systemd" / unit).read_bytes()
    assert oct((root / "etc/cuecam").stat().st_mode & 0o777) == "0o750"
    ota_state = (state / "ota/state.json").read_bytes()
    assert json.loads(ota_state)["active"] == "a"
    # the unit's ExecStart, minus systemd: the launcher starts the slot's firmware from the venv
    r2 = subprocess.run([str(venv_py), "-m", "ota.launch", "--root", str(state / "ota"), "--", "--validate-config",
                         str(opt / "src/board_configs/rpi4.yaml")], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert r2.returncode == 0 and "ok (board rpi4-1, rpi4)" in r2.stdout, r2.stderr
    assert '"slot": "a"' in r2.stderr

    t1 = time.monotonic()
    r = _run("--root", str(root), "--models", str(MODELS_DIR), timeout=900)
    again_s = time.monotonic() - t1
    assert r.returncode == 0, r.stderr[-4000:]
    assert (state / "ota/state.json").read_bytes() == ota_state  # slot a is not initialised twice
    assert "OTA slot a" not in r.stdout
    print(f"install_sh_first_s: {first_s:.1f}")
    print(f"install_sh_again_s: {again_s:.1f}")


@pytest.mark.parametrize(("args", "group"), [
    (["--board", "rpi5-coral-usb"], "plugdev"),
    (["--board", "rpi4-coral-usb"], "plugdev"),
    (["--board", "rpi5", "--coral", "pcie"], "apex"),
    (["--board", "rpi4"], None),
    (["--board", "rpi-zero2w"], None),
    ([], None),
])
def test_only_a_coral_board_gets_the_accelerators_group(tmp_path: Path, args: list[str], group: str | None) -> None:
    """The service user reaches a Coral accelerator only on a Coral board: plugdev for the USB
    one's udev rule, apex for the PCIe one; every other board keeps video and gpio only."""
    root = tmp_path / "root"
    r = _run("--root", str(root), "--units-only", *args)
    assert r.returncode == 0, r.stderr
    units = root / "etc/systemd/system"
    assert (units / "cuecam.service").read_bytes() == (ROOT / "ota/systemd/cuecam.service").read_bytes()
    dropin = units / "cuecam.service.d" / "coral.conf"
    if group is None:
        assert not dropin.exists()
        return
    lines = [ln for ln in dropin.read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines == ["[Service]", f"SupplementaryGroups={group}"]
    # switching the board back removes it (install.sh is run again to repair or re-provision)
    assert _run("--root", str(root), "--units-only", "--board", "rpi5").returncode == 0
    assert not dropin.exists()


def test_the_board_kind_comes_from_the_provisioned_config(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc/cuecam").mkdir(parents=True)
    (root / "etc/cuecam/board.yaml").write_text("version: 1\nboard:\n  name: cam-1\n  kind: rpi5-coral-usb\n")
    assert _run("--root", str(root), "--units-only").returncode == 0
    assert "SupplementaryGroups=plugdev" in (root / "etc/systemd/system/cuecam.service.d/coral.conf").read_text()
    assert _run("--root", str(root), "--units-only", "--coral", "bogus").returncode != 0


@pytest.mark.parametrize(("board", "package"), [("rpi5-hailo", "hailo-all"), ("rpi-zero2w-aicam", "imx500-all"),
                                                ("rpi5-aicam", "imx500-all"), ("rpi5", None), ("rpi5-coral-usb", None)])
def test_an_accelerator_board_gets_its_packages(tmp_path: Path, board: str, package: str | None) -> None:
    r = _run("--board", board, "--print-apt")
    assert r.returncode == 0, r.stderr
    pkgs = r.stdout.split()
    assert "python3-picamera2" in pkgs
    assert [p for p in pkgs if p in ("hailo-all", "imx500-all")] == ([package] if package else [])


def test_a_hailo_board_gets_dev_hailo0_for_its_group_only(tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert _run("--root", str(root), "--units-only", "--board", "rpi5-hailo").returncode == 0
    dropin = root / "etc/systemd/system/cuecam.service.d/hailo.conf"
    lines = [ln for ln in dropin.read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines == ["[Service]", "SupplementaryGroups=hailo", "DeviceAllow=/dev/hailo0 rw"]
    rule = root / "etc/udev/rules.d/60-cuecam-hailo.rules"
    assert 'SUBSYSTEM=="hailo_chardev", KERNEL=="hailo*", GROUP="hailo", MODE="0660"' in rule.read_text()
    assert not (root / "etc/systemd/system/cuecam.service.d/coral.conf").exists()
    # an AI Camera board needs no drop-in: the sensor is a V4L2 subdevice, already allowed
    assert _run("--root", str(root), "--units-only", "--board", "rpi5-aicam").returncode == 0
    assert not dropin.exists() and not rule.exists() and not (root / "etc/systemd/system/cuecam.service.d").exists()
