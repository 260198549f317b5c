"""`python -m firmware` as a real process: start-up, serving, clean shutdown, clear failures."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, SIM_CONFIG
from tests.device import serving_url

TOKEN = "process-test-token-0123456789"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUECAM_")}
    env.update(CUECAM_API_TOKEN=TOKEN, **extra)
    return env


def _start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "firmware", *args],
        cwd=ROOT, env=env or _env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace",
    )


def _wait_url(proc: subprocess.Popen[str], timeout: float = 30.0) -> str:
    url = serving_url(proc, timeout)
    if url is not None:
        return url
    proc.kill()
    raise AssertionError(f"no 'serving on' line; stderr: {proc.stderr.read() if proc.stderr else ''}")


def _get(url: str, token: str | None = TOKEN) -> tuple[int, dict]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _wait_vectors(url: str) -> dict:
    """/health ok, then the first vectors (each bounded: 10 s; the first 2 s window closes ~2-4 s after start)."""
    for _ in range(100):
        code, health = _get(url + "/health", token=None)
        if code == 200:
            break
        time.sleep(0.1)
    assert health["status"] == "ok"
    for _ in range(100):
        code, body = _get(url + "/v1/vectors?limit=20")
        if body["vectors"]:
            break
        time.sleep(0.1)
    assert code == 200 and body["vectors"]
    return body


def _stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> tuple[int, str]:
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serves_vectors_and_stops_cleanly(models_dir, vtest, sig):
    proc = _start("--config", str(SIM_CONFIG), "--port", "0")
    try:
        url = _wait_url(proc)
        assert url.startswith("http://127.0.0.1:")
        body = _wait_vectors(url)
        assert body["schema"] == 1
        assert all(len(v["token"]) == 32 for v in body["vectors"])
        assert _get(url + "/v1/status", token="not-the-token-at-all")[0] == 401
    finally:
        rc, err = _stop(proc, sig)
    assert rc == 0, err
    assert "Traceback" not in err


def test_source_overrides_the_replay_input_with_an_image_folder(models_dir, shared_media, tmp_path):
    for name in ("basketball1.png", "test_couple.jpg"):
        shutil.copy(shared_media / name, tmp_path / name)
    (tmp_path / "notes.txt").write_text("ignored: not an image")
    proc = _start("--config", str(SIM_CONFIG), "--port", "0", "--source", str(tmp_path))
    try:
        url = _wait_url(proc)
        for _ in range(100):
            _, status = _get(url + "/v1/status")
            if status["frames"]["processed"] >= 2:
                break
            time.sleep(0.1)
        # test_couple.jpg: two people standing; basketball1.png: players on a court
        assert status["people"]["frames_with_people"] >= 2
        assert str(tmp_path) in status["camera"]["source"]
    finally:
        rc, err = _stop(proc)
    assert rc == 0 and "Traceback" not in err


def _fails(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    p = subprocess.run([sys.executable, "-m", "firmware", *args], cwd=ROOT, env=env or _env(),
                       capture_output=True, text=True, errors="replace", timeout=60)
    assert "Traceback" not in p.stderr, p.stderr
    return p.returncode, p.stderr


def test_missing_video_is_a_clear_error(models_dir, tmp_path):
    rc, err = _fails(["--config", str(SIM_CONFIG), "--port", "0", "--source", str(tmp_path / "nope.avi")])
    assert rc == 3 and "does not exist" in err


@pytest.mark.parametrize("content", [b"", b"RIFF\x00\x00\x00\x00AVI LIST" + os.urandom(4000)], ids=["empty", "garbage"])
def test_corrupt_video_is_a_clear_error(models_dir, tmp_path, content):
    bad = tmp_path / "broken.avi"
    bad.write_bytes(content)
    rc, err = _fails(["--config", str(SIM_CONFIG), "--port", "0", "--source", str(bad)])
    assert rc == 3 and str(bad) in err and ("cannot open" in err or "no decodable" in err)


def test_edgetpu_board_without_an_edgetpu_serves_degraded_on_the_cpu_fallback(models_dir, vtest, tmp_path):
    cfg = (ROOT / "board_configs" / "rpi5-coral-usb.yaml").read_text()
    cfg = cfg.replace("/opt/cuecam/models", str(ROOT / "models"))
    assert "\nprivacy:" not in cfg
    cfg += f"privacy:\n  optout: {{pins: none}}\n  audit_log: {tmp_path / 'audit.jsonl'}\nota:\n  root: {tmp_path / 'ota'}\n"
    path = tmp_path / "coral.yaml"
    path.write_text(cfg)
    proc = _start("--config", str(path), "--port", "0", "--source", str(vtest))
    try:
        url = _wait_url(proc)
        for _ in range(100):  # bounded: 10 s
            code, status = _get(url + "/v1/status")
            if status["frames"]["processed"] >= 2:
                break
            time.sleep(0.1)
        assert status["model"]["name"] == "ssd_mobilenet_v1" and status["model"]["delegate"] == "cpu"
        code, health = _get(url + "/health", token=None)
        assert code == 503 and health["status"] == "degraded"
        reason = health["reason"]
        assert "libedgetpu.so.1" in reason and "libedgetpu1-std" in reason  # what to do
        assert "running the CPU fallback ssd_mobilenet_v1" in reason and "pose off" in reason
    finally:
        rc, err = _stop(proc)
    assert rc == 0 and "Traceback" not in err


def test_a_corrupt_model_serves_degraded_instead_of_exiting(models_dir, vtest, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(ROOT / "models", models)
    f = models / "coco_ssd_mobilenet_v1_1.0_quant_2018_06_29.tflite"
    f.write_bytes(f.read_bytes()[:100_000])
    cfg = SIM_CONFIG.read_text().replace("models_dir: ../models", f"models_dir: {models}").replace("../", str(ROOT) + "/")
    path = tmp_path / "board.yaml"
    path.write_text(cfg)
    proc = _start("--config", str(path), "--port", "0")
    try:
        url = _wait_url(proc)
        code, health = _get(url + "/health", token=None)
        assert code == 503 and health["reason"].startswith("model: detector ssd_mobilenet_v1") and str(f) in health["reason"]
        assert _get(url + "/v1/status")[1]["model"]["problem"] is not None
    finally:
        rc, err = _stop(proc)
    assert rc == 0 and "Traceback" not in err


def test_board_without_a_token_says_where_to_put_it(models_dir, vtest, tmp_path):
    cfg = SIM_CONFIG.read_text().replace("generate_token: true", "generate_token: false")
    cfg = cfg.replace("../.cuecam/api-token", str(tmp_path / "api-token")).replace("../", str(ROOT) + "/")
    path = tmp_path / "board.yaml"
    path.write_text(cfg)
    env = _env()
    env.pop("CUECAM_API_TOKEN")
    rc, err = _fails(["--config", str(path), "--port", "0"], env=env)
    assert rc == 3 and str(tmp_path / "api-token") in err and "cuecam provision" in err


def test_sim_generates_a_private_token_once(models_dir, vtest, tmp_path):
    cfg = SIM_CONFIG.read_text().replace("../.cuecam/api-token", str(tmp_path / "tok" / "api-token"))
    cfg = cfg.replace("../", str(ROOT) + "/")
    path = tmp_path / "board.yaml"
    path.write_text(cfg)
    env = _env()
    env.pop("CUECAM_API_TOKEN")
    tokens = []
    for _ in range(2):
        proc = _start("--config", str(path), "--port", "0", env=env)
        try:
            url = _wait_url(proc)
            token = (tmp_path / "tok" / "api-token").read_text().strip()
            assert _get(url + "/v1/status", token=token)[0] == 200
            tokens.append(token)
        finally:
            _stop(proc)
    assert tokens[0] == tokens[1] and len(tokens[0]) >= 32
    assert (tmp_path / "tok" / "api-token").stat().st_mode & 0o777 == 0o600


def test_port_in_use_is_a_clear_error(models_dir, vtest):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        rc, err = _fails(["--config", str(SIM_CONFIG), "--port", str(port)])
    assert rc == 3 and "cannot start the API" in err


def test_bad_config_exits_2(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(SIM_CONFIG.read_text().replace("threads: auto", "threads: many"))
    rc, err = _fails(["--config", str(path)])
    assert rc == 2 and f"{path}:" in err and "inference.threads" in err


def test_cli_device_commands_talk_to_a_running_board(models_dir, vtest):
    proc = _start("--config", str(SIM_CONFIG), "--port", "0")
    try:
        url = _wait_url(proc)
        cli = [sys.executable, "-m", "host_tools.cli", "device"]
        for _ in range(100):
            p = subprocess.run([*cli, "health", "--url", url], cwd=ROOT, capture_output=True, text=True, timeout=20)
            if p.returncode == 0:
                break
            time.sleep(0.1)
        assert json.loads(p.stdout)["status"] == "ok"
        p = subprocess.run([*cli, "status", "--url", url], cwd=ROOT, capture_output=True, text=True, timeout=20,
                           env=_env())
        assert p.returncode == 0 and json.loads(p.stdout)["board"]["kind"] == "sim"
        p = subprocess.run([*cli, "vectors", "--url", url, "--limit", "1"], cwd=ROOT, capture_output=True,
                           text=True, timeout=20, env={k: v for k, v in _env().items() if k != "CUECAM_API_TOKEN"})
        assert p.returncode == 1 and json.loads(p.stdout)["error"]["status"] == 401
        # the privacy officer presses the (mock) button on the sim board from the host tool
        p = subprocess.run([*cli, "press", "--url", url], cwd=ROOT, capture_output=True, text=True, timeout=20, env=_env())
        assert p.returncode == 0 and json.loads(p.stdout)["paused"] is True, p.stdout
        p = subprocess.run([*cli, "health", "--url", url], cwd=ROOT, capture_output=True, text=True, timeout=20)
        assert json.loads(p.stdout)["status"] == "paused"
        p = subprocess.run([*cli, "vectors", "--url", url], cwd=ROOT, capture_output=True, text=True, timeout=20, env=_env())
        assert json.loads(p.stdout)["vectors"] == []
        p = subprocess.run([*cli, "optout", "--url", url], cwd=ROOT, capture_output=True, text=True, timeout=20, env=_env())
        assert p.returncode == 0 and json.loads(p.stdout)["source"] == "api"
        p = subprocess.run([*cli, "audit", "--url", url], cwd=ROOT, capture_output=True, text=True, timeout=20, env=_env())
        last = [(e["event"], e["source"]) for e in json.loads(p.stdout)["entries"][-2:]]
        assert last == [("optout", "button"), ("optout", "api")]
    finally:
        _stop(proc)


def test_validate_config_accepts_every_shipped_board():
    boards = sorted(Path(ROOT / "board_configs").glob("*.yaml"))
    p = subprocess.run([sys.executable, "-m", "firmware", "--validate-config", *map(str, boards)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count(": ok") == len(boards) >= 5
