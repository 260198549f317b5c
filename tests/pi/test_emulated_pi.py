"""``make test-pi``: the real firmware in an emulated Raspberry Pi OS (Debian bookworm arm64) userland.

qemu-aarch64-static runs the root's own python3 with Debian's numpy 1.24 and the aarch64 wheels
of cuecam's dependencies (tests/pi/piroot.py), on board_configs/rpi4.yaml with the camera
replaced by a replay of vtest.avi. It must load the real SSD model through LiteRT, process at
least 20 frames, and answer /health and an authenticated API call on loopback. Marked ``slow``
and run by ``make test-pi`` only; there it fails, never skips, when it cannot run.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import MODELS_DIR, ROOT, VTEST

from . import piroot

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.environ.get("CUECAM_TEST_PI") != "1", reason="needs root and qemu: run `make test-pi`")]
MIN_FRAMES = 20
SERVE_TIMEOUT_S = 300.0  # emulated start-up: imports + model load (~25 s measured)
FRAMES_TIMEOUT_S = 300.0  # ~1 s per emulated SSD invoke


@pytest.fixture(scope="module")
def pi_env() -> dict[str, object]:
    if os.geteuid() != 0:
        pytest.fail("test-pi needs root (unshare -m and mount --bind over /proc/cpuinfo); .ci/run runs as root")
    for need in (VTEST, MODELS_DIR / "coco_ssd_mobilenet_v1_1.0_quant_2018_06_29.tflite"):
        if not need.exists():
            pytest.fail(f"{need} is missing: run `make setup`")
    try:
        info = piroot.build()
    except piroot.PiRootError as e:
        pytest.fail(str(e))
    for k in ("root_build_s", "wheels_download_s", "site_install_s", "build_total_s", "apt_numpy"):
        print(f"{k}: {info[k]}")
    return info


def _rpi4_replay_config(tmp: Path) -> Path:
    """board_configs/rpi4.yaml as shipped, but the camera is a replay of vtest.avi and every path
    points into tmp (token, audit log, OTA root) or at the installed models; the opt-out button
    uses gpiozero's mock pins (there is no GPIO under emulation)."""
    cfg = yaml.safe_load((ROOT / "board_configs" / "rpi4.yaml").read_text())
    assert cfg["board"]["kind"] == "rpi4" and cfg["camera"]["type"] == "picamera2"
    cfg["camera"] = {"type": "replay", "source": str(VTEST.resolve()), "pacing": "realtime", "loop": True}
    cfg["inference"]["models_dir"] = str(MODELS_DIR)
    cfg["api"] = {**cfg["api"], "host": "127.0.0.1", "port": 0, "token_file": str(tmp / "api-token")}
    cfg["privacy"] = {"optout": {"pins": "mock"}, "audit_log": str(tmp / "audit.jsonl")}
    cfg["ota"] = {"root": str(tmp / "ota")}
    path = tmp / "board.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _get(url: str, token: str | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read(1 << 20))
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read(1 << 20) or b"{}")


def test_numpy_in_the_emulated_python_is_debians(pi_env: dict[str, object]) -> None:
    root, site = Path(str(pi_env["root"])), Path(str(pi_env["site"]))
    probe = ("import json, platform, numpy, cv2, lap, ai_edge_litert; print(json.dumps({'machine': platform.machine(), "
             "'numpy': numpy.__version__, 'numpy_file': numpy.__file__, 'cv2': cv2.__version__, 'lap': lap.__version__}))")
    cmd = piroot.emulated_command(root, Path(str(pi_env["cpuinfo"])), ["/usr/bin/python3", "-c", probe])
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=piroot.emulated_env(site))
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    print("emulated:", got)
    assert got["machine"] == "aarch64"
    assert got["numpy"].startswith("1.24.") and got["numpy"] == pi_env["apt_numpy"]
    assert got["numpy_file"].startswith(str(root / "usr/lib/python3/dist-packages/numpy/")), got["numpy_file"]
    assert not (site / "numpy").exists()


def test_firmware_runs_on_rpi4_config_emulated(pi_env: dict[str, object], tmp_path: Path) -> None:
    root, site = Path(str(pi_env["root"])), Path(str(pi_env["site"]))
    config = _rpi4_replay_config(tmp_path)
    token = secrets.token_urlsafe(32)
    (tmp_path / "api-token").write_text(token + "\n")
    (tmp_path / "api-token").chmod(0o600)
    cmd = piroot.emulated_command(root, Path(str(pi_env["cpuinfo"])),
                                  ["/usr/bin/python3", "-m", "firmware", "--config", str(config)])
    log = (tmp_path / "firmware.log").open("w+")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=piroot.emulated_env(site))
    try:
        url = None
        while url is None and time.monotonic() - t0 < SERVE_TIMEOUT_S:
            if proc.poll() is not None:
                break
            time.sleep(1.0)
            log.seek(0)
            m = re.search(r"cuecam: serving on (http://127\.0\.0\.1:\d+)", log.read())
            url = m.group(1) if m else None
        log.seek(0)
        assert url, f"the emulated firmware did not serve (exit {proc.poll()}):\n{log.read()[-4000:]}"
        serve_s = time.monotonic() - t0

        # The firmware process itself maps Debian's numpy, not a wheel's (qemu maps the guest's
        # shared objects with the host's mmap, so they show in the host's /proc/PID/maps).
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        numpy_so = {line.split()[-1] for line in maps.splitlines() if "_multiarray_umath" in line}
        assert numpy_so and all(p.startswith(str(root / "usr/lib/python3/dist-packages/numpy/")) for p in numpy_so), numpy_so
        assert any("ai_edge_litert" in line for line in maps.splitlines()), "LiteRT is not loaded in the firmware process"

        status: dict = {}
        while time.monotonic() - t0 < SERVE_TIMEOUT_S + FRAMES_TIMEOUT_S:
            assert proc.poll() is None, f"the firmware exited ({proc.returncode})"
            code, status = _get(url + "/v1/status", token)
            assert code == 200, status
            if status["frames"]["processed"] >= MIN_FRAMES:
                break
            time.sleep(2.0)
        frames_s = time.monotonic() - t0
        assert status["frames"]["processed"] >= MIN_FRAMES, status["frames"]
        assert status["board"] == {"name": "rpi4-1", "kind": "rpi4"}
        assert status["model"]["name"] == "ssd_mobilenet_v1" and status["model"]["runtime"] == "litert", status["model"]
        assert status["frames"]["inference_errors"] == 0
        assert status["people"]["frames_with_people"] > 0  # the real model finds the people on the plaza

        code, health = _get(url + "/health")
        assert code == 200 and health["status"] == "ok", health
        assert _get(url + "/v1/status")[0] == 401
        assert _get(url + "/v1/status", "x" * 43)[0] == 401
        code, vec = _get(url + "/v1/vectors?since=0&limit=5", token)
        assert code == 200 and "cursor" in vec

        print(f"emulated_serve_s: {serve_s:.1f}")
        print(f"emulated_frames_processed: {status['frames']['processed']} (in {frames_s:.1f} s from spawn)")
        print(f"emulated_ssd_invoke_ms: p50 {status['inference_ms']['p50']} p99 {status['inference_ms']['p99']}")
        print(f"emulated_frames_with_people: {status['people']['frames_with_people']}")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        log.close()
