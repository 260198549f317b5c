"""The systemd units install.sh puts on a board: systemd's own checker, and the properties the
board relies on (notify + watchdog, restart on exit 75, sandboxing, device allow-list)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

UNITS = ROOT / "ota" / "systemd"
VENV_PYTHON = "/opt/cuecam/venv/bin/python"


def _props(unit: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    section = ""
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        k, _, v = line.partition("=")
        out.setdefault(f"{section}.{k.strip()}", []).append(v.strip())
    return out


def _analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is missing (apt-get install systemd; .ci/run does)")
    return exe


def _with_local_python(tmp_path: Path, name: str) -> Path:
    """The unit with its ExecStart interpreter pointed at one that exists here (verify checks that
    the binary exists); everything else byte for byte."""
    text = (UNITS / name).read_text()
    assert VENV_PYTHON in text
    out = tmp_path / name
    out.write_text(text.replace(VENV_PYTHON, shutil.which("python3") or "/usr/bin/python3"))
    return out


def test_systemd_analyze_verify_passes(tmp_path: Path) -> None:
    exe = _analyze()
    units = [_with_local_python(tmp_path, n) for n in ("cuecam.service", "cuecam-firstboot.service")]
    r = subprocess.run([exe, "verify", "--man=no", *map(str, units)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr


def test_systemd_analyze_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    exe = _analyze()
    unit = _with_local_python(tmp_path, "cuecam.service")
    unit.write_text(unit.read_text().replace("Type=notify", "Type=notifi"))
    r = subprocess.run([exe, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 or "notifi" in r.stderr


def test_security_exposure_is_low(tmp_path: Path) -> None:
    exe = _analyze()
    unit = _with_local_python(tmp_path, "cuecam.service")
    r = subprocess.run([exe, "security", "--offline=true", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout)
    assert m, r.stdout[-2000:] + r.stderr
    print(f"systemd_exposure: {m.group(1)}")
    assert float(m.group(1)) <= 4.0


def test_cuecam_service_properties() -> None:
    p = _props(UNITS / "cuecam.service")
    one = {k: v[-1] for k, v in p.items()}
    assert one["Service.Type"] == "notify" and one["Service.NotifyAccess"] == "all"
    assert int(one["Service.WatchdogSec"]) > 0
    assert one["Service.Restart"] == "on-failure"
    assert "75" in one["Service.RestartForceExitStatus"].split()
    assert "75" not in " ".join(p.get("Service.SuccessExitStatus", []))
    assert int(one["Unit.StartLimitIntervalSec"]) > 0 and int(one["Unit.StartLimitBurst"]) > 1
    assert one["Service.ProtectSystem"] == "strict" and one["Service.ReadWritePaths"] == "/var/lib/cuecam"
    assert one["Service.PrivateTmp"] == "true" and one["Service.NoNewPrivileges"] == "true"
    assert one["Service.User"] == "cuecam" and set(one["Service.SupplementaryGroups"].split()) == {"video", "gpio"}
    assert one["Service.DevicePolicy"] == "closed"
    allowed = {v.split()[0] for v in p["Service.DeviceAllow"]}
    assert allowed == {"char-video4linux", "char-media", "char-dma_heap", "char-gpiochip", "char-apex", "char-usb_device"}
    assert "cuecam-firstboot.service" in one["Unit.After"].split()
    exec_start = one["Service.ExecStart"].split()
    assert exec_start[:3] == [VENV_PYTHON, "-m", "ota.launch"]
    assert exec_start[exec_start.index("--root") + 1] == "/var/lib/cuecam/ota"
    assert exec_start[exec_start.index("--config") + 1] == "/etc/cuecam/board.yaml"
    assert "PYTHONDONTWRITEBYTECODE=1" in one["Service.Environment"].split()  # a slot holds only its listed files


def test_firstboot_runs_before_cuecam() -> None:
    one = {k: v[-1] for k, v in _props(UNITS / "cuecam-firstboot.service").items()}
    assert one["Service.Type"] == "oneshot" and "cuecam.service" in one["Unit.Before"].split()
    assert one["Service.ExecStart"].split()[:3] == [VENV_PYTHON, "-m", "firmware.firstboot"]


@pytest.mark.hw
def test_device_classes_exist_on_the_board() -> None:
    """On a Pi: the camera and GPIO device classes the unit allows are the kernel's names for them
    (/proc/devices); apex and usb_device only with a Coral attached."""
    lines = Path("/proc/devices").read_text().split("Block devices:")[0].splitlines()
    devices = {line.split()[1] for line in lines if line.strip()[:1].isdigit()}
    for cls in ("video4linux", "media", "dma_heap", "gpiochip"):
        assert cls in devices, f"{cls} not in /proc/devices: the unit's DeviceAllow=char-{cls} would not match"


@pytest.mark.parametrize(("board", "extra"), [("rpi5-coral-usb", {"plugdev"}), ("rpi4-coral-usb", {"plugdev"}),
                                              ("rpi5", set()), ("rpi4", set()), ("rpi-zero2w", set())])
def test_service_groups_per_board(tmp_path: Path, board: str, extra: set[str]) -> None:
    """The groups cuecam.service runs with, its drop-ins merged as systemd merges a list setting:
    video and gpio everywhere, the Coral accelerator's group only on a Coral board."""
    r = subprocess.run(["bash", str(ROOT / "install.sh"), "--root", str(tmp_path), "--units-only", "--board", board],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    units = tmp_path / "etc/systemd/system"
    groups: set[str] = set()
    for f in [units / "cuecam.service", *sorted((units / "cuecam.service.d").glob("*.conf"))]:
        for value in _props(f).get("Service.SupplementaryGroups", []):
            groups = set() if not value else groups | set(value.split())
    assert groups == {"video", "gpio"} | extra
    allowed = {v.split()[0] for v in _props(units / "cuecam.service")["Service.DeviceAllow"]}
    assert {"char-apex", "char-usb_device"} <= allowed  # the devices are allowed; the group decides who opens them
