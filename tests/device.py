"""The firmware as a real process on loopback, for the API tests, the fuzzer and the soak: a sim
board config written to a directory of its own (overrides merged in, paths made absolute), the
process started, its URL read from the 'serving on' line, and stopped with SIGTERM."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ROOT, _merge

PATH_KEYS = (("camera", "source"), ("inference", "models_dir"), ("api", "token_file"), ("privacy", "audit_log"),
             ("ota", "root"))


def write_config(directory: Path, overrides: dict[str, Any] | None = None, name: str = "board.yaml") -> Path:
    """board_configs/sim.yaml with ``overrides``; its relative paths made absolute, except paths
    given in ``overrides`` (which stay relative to the written file, as a board config's do)."""
    from firmware.config import Config, load_config

    loaded = load_config(ROOT / "board_configs" / "sim.yaml")
    data = loaded.config.model_dump(mode="json", exclude_none=True)
    for section, key in PATH_KEYS:
        if key in data.get(section, {}):
            data[section][key] = str(loaded.resolve(data[section][key]))
    data["api"]["token_file"] = str(directory / "api-token")
    data["privacy"]["audit_log"] = str(directory / "audit.jsonl")
    data["ota"]["root"] = str(directory / "ota")
    data = _merge(data, overrides or {})
    Config.model_validate(data)  # fail here, not in the child, on a bad override
    path = directory / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def env(token: str | None, **extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("CUECAM_")}
    if token is not None:
        out["CUECAM_API_TOKEN"] = token
    out.update(extra)
    return out


def start(config: Path, token: str | None, *args: str) -> subprocess.Popen[str]:
    """The firmware on ``config``; its log (stderr) goes to firmware.log beside the config, so a long
    run never blocks on a full pipe; stdout (the 'serving on' line) is a pipe."""
    log = open(config.parent / "firmware.log", "w")  # noqa: SIM115 - the child holds it; closed by stop()
    proc = subprocess.Popen([sys.executable, "-m", "firmware", "--config", str(config), "--port", "0", *args],
                            cwd=ROOT, env=env(token), stdout=subprocess.PIPE, stderr=log, text=True,
                            errors="replace")
    log.close()  # the child has its own descriptor
    proc.log_path = config.parent / "firmware.log"  # type: ignore[attr-defined]
    return proc


def log_text(proc: subprocess.Popen[str]) -> str:
    path = getattr(proc, "log_path", None)
    return path.read_text(errors="replace") if path is not None and path.exists() else ""


def serving_url(proc: subprocess.Popen[str], timeout: float) -> str | None:
    """The URL from the firmware's "cuecam: serving on URL" line, or None (exited or timed out)."""
    sel = selectors.DefaultSelector()
    assert proc.stdout is not None
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sel.select(timeout=0.2):
            line = proc.stdout.readline()
            if line.startswith("cuecam: serving on "):
                return line.split()[3]
            if not line and proc.poll() is not None:
                break
    return None


def wait_url(proc: subprocess.Popen[str], timeout: float = 60.0) -> str:
    url = serving_url(proc, timeout)
    if url is not None:
        return url
    stop(proc)
    raise AssertionError(f"no 'serving on' line; log: {log_text(proc)[-4000:]}")


def stop(proc: subprocess.Popen[str], timeout: float = 20.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for f in (proc.stdout, proc.stderr):
        if f is not None:
            f.close()
    return proc.returncode
