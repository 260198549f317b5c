"""End to end: keys and a bundle from the host tool, pushed to a running board on loopback that
runs from an A/B slot under the launcher; the board verifies, installs, restarts into the trial,
commits it once healthy, and reports the new version. A crash-looping update is rolled back."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from host_tools.ota_cli import tree_files
from host_tools.simstore import free_port
from ota.slots import SlotStore
from tests.conftest import MEDIA_DIR, MODELS_DIR, ROOT, SIM_CONFIG

TOKEN = "ota-e2e-token-0123456789abcdef"


def _cli(*args: str) -> dict:
    p = subprocess.run([sys.executable, "-m", "host_tools.cli", "ota", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env={**os.environ, "CUECAM_API_TOKEN": TOKEN})
    assert p.returncode == 0, p.stdout + p.stderr
    return json.loads(p.stdout)


def _tree(dst: Path, version: str, patch: dict[str, str] | None = None) -> Path:
    for rel, src in tree_files(ROOT).items():
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst / rel)
    init = dst / "firmware" / "__init__.py"
    init.write_text("\n".join(f'__version__ = "{version}"' if ln.startswith("__version__") else ln
                              for ln in init.read_text().splitlines()) + "\n")
    for rel, text in (patch or {}).items():
        (dst / rel).write_text(text)
    return dst


def _status(url: str) -> dict | None:
    req = urllib.request.Request(url + "/v1/status", headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            return json.loads(r.read())
    except OSError:
        return None


def _wait(cond, seconds: float, what: str):
    for _ in range(int(seconds / 0.25)):  # bounded
        got = cond()
        if got:
            return got
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def board(tmp_path, models_dir, vtest):
    keys = _cli("keygen", "--out", str(tmp_path / "keys"))
    ota_root = tmp_path / "ota"
    SlotStore(ota_root).init("0.1.0", _tree(tmp_path / "v1", "0.1.0"))
    cfg = yaml.safe_load(SIM_CONFIG.read_text())
    cfg["camera"]["source"] = str(MEDIA_DIR / "vtest.avi")
    cfg["inference"]["models_dir"] = str(MODELS_DIR)
    cfg["api"]["token_file"] = str(tmp_path / "token")
    cfg["privacy"]["audit_log"] = str(tmp_path / "audit.jsonl")
    cfg["ota"] = {"root": str(ota_root), "trusted_keys": [keys["public_key"]], "health_timeout_s": 20, "max_boot_attempts": 2}
    board_yaml = tmp_path / "board.yaml"
    board_yaml.write_text(yaml.safe_dump(cfg))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ota.launch", "--root", str(ota_root), "--max-boot-attempts", "2", "--supervise",
         "--", "--config", str(board_yaml), "--port", str(port)],
        cwd=ROOT, env={**os.environ, "CUECAM_API_TOKEN": TOKEN, "PYTHONDONTWRITEBYTECODE": "1"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        yield {"url": url, "tmp": tmp_path, "key": tmp_path / "keys" / "cuecam-ota.key", "root": ota_root, "proc": proc}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_push_install_restart_commit_then_a_crashing_update_rolls_back(board):
    url, tmp = board["url"], board["tmp"]
    first = _wait(lambda: _status(url), 60, "the board to serve")
    assert first["ota"]["version"] == "0.1.0" and first["ota"]["slot"] == "a" and first["ota"]["trial"] is False
    # a healthy update
    bundle = tmp / "v2.bundle"
    built = _cli("build", "--tree", str(_tree(tmp / "v2", "0.2.0")), "--key", str(board["key"]), "--out", str(bundle))
    assert built["version"] == "0.2.0" and built["files"] > 40
    pushed = _cli("push", "--url", url, "--bundle", str(bundle), "--quiet")
    assert pushed["state"] == "installed" and pushed["installed"]["version"] == "0.2.0"
    st = _wait(lambda: (s := _status(url)) and s["ota"]["version"] == "0.2.0" and s["ota"]["state"] == "committed" and s,
               90, "the board to run and commit 0.2.0")
    assert st["ota"]["slot"] == "b"
    state = SlotStore(board["root"]).status()["state"]
    assert state["active"] == "b" and state["trial"] is None and state["floor"] == "0.2.0"
    # the same bundle again is refused (not newer), the board keeps running
    again = subprocess.run([sys.executable, "-m", "host_tools.cli", "ota", "push", "--url", url, "--bundle", str(bundle),
                            "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                           env={**os.environ, "CUECAM_API_TOKEN": TOKEN})
    assert again.returncode == 1 and json.loads(again.stdout)["error"]["status"] == 422
    # an update whose firmware crashes at start: tried max_boot_attempts times, then rolled back
    crash = _tree(tmp / "v3", "0.3.0", {"firmware/__main__.py": "raise SystemExit('0.3.0 is broken')\n"})
    bundle3 = tmp / "v3.bundle"
    _cli("build", "--tree", str(crash), "--key", str(board["key"]), "--out", str(bundle3))
    assert _cli("push", "--url", url, "--bundle", str(bundle3), "--quiet")["installed"]["version"] == "0.3.0"
    time.sleep(1.0)  # the board restarts into the trial 0.2 s after answering

    def rolled_back() -> dict | None:
        state = SlotStore(board["root"]).status()["state"]
        s = _status(url)
        return state if state and state["trial"] is None and s and s["ota"]["version"] == "0.2.0" else None

    state = _wait(rolled_back, 120, "the rollback to 0.2.0")
    assert state["active"] == "b" and state["trial"] is None and state["floor"] == "0.2.0"
