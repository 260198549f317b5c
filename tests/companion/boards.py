"""Real sim boards (the firmware as a process on loopback, replaying vtest.avi) with companions
paired, which a test can stop and start again on the same port (a board that is down)."""

from __future__ import annotations

import json
import secrets
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from host_tools.simstore import free_port
from tests import device


class SimBoard:
    def __init__(self, workdir: Path, name: str, companions: list[tuple[str, bytes]], *, pause_s: float = 60.0,
                 long_press_s: float = 0.8, tls: bool = False) -> None:
        self.name = name
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.token = secrets.token_urlsafe(32)
        self.pause_s = pause_s
        entries = []
        for cname, key in companions:
            kf = self.dir / "companions" / f"{cname}.key"
            kf.parent.mkdir(exist_ok=True)
            kf.write_text(key.hex() + "\n")
            kf.chmod(0o600)
            entries.append({"name": cname, "key_file": str(kf), "position": "the round button below this sign"})
        api: dict[str, Any] = {"port": self.port}
        if tls:
            from host_tools.provision import tls_pair

            cert, key, _ = tls_pair(name, ["127.0.0.1"])
            (self.dir / "device.crt").write_bytes(cert)
            (self.dir / "device.key").write_bytes(key)
            api["tls"] = {"cert": str(self.dir / "device.crt"), "key": str(self.dir / "device.key")}
        self.config = device.write_config(self.dir, {
            "board": {"name": name},
            "api": api,
            "inference": {"threads": 1},
            "signals": {"pose": "off"},
            "privacy": {"optout": {"pause_s": pause_s, "companions": entries,
                                   "button": {"pin": 17, "pull_up": True, "bounce_s": 0.05, "resume": "long_press",
                                              "long_press_s": long_press_s}}},
        })
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.proc: Any = None

    def start(self) -> None:
        self.proc = device.start(self.config, self.token, "--port", str(self.port))
        device.wait_url(self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            device.stop(self.proc)
            self.proc = None

    # -- its API ---------------------------------------------------------------------------------
    def call(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
             token: bool = True) -> tuple[int, dict[str, str], bytes]:
        h = dict(headers or {})
        if token:
            h["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=h)
        try:
            ctx = ssl.create_default_context(cafile=str(self.dir / "device.crt")) if self.url.startswith("https") else None
            with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
                return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
        except urllib.error.HTTPError as e:
            return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()

    def get(self, path: str) -> Any:
        status, _, body = self.call("GET", path)
        assert status == 200, (path, status, body[:300])
        return json.loads(body) if path != "/metrics" else body.decode()

    def status(self) -> dict[str, Any]:
        return self.get("/v1/status")

    def companion(self, name: str) -> dict[str, Any]:
        return next(c for c in self.status()["privacy"]["companions"] if c["name"] == name)

    def audit(self) -> list[dict[str, Any]]:
        return self.get("/v1/audit?limit=1000")["entries"]

    def paused(self) -> bool:
        return bool(self.status()["privacy"]["paused"])

    def measuring(self) -> None:
        """End any pause with the board's own (mock) button held long, as staff would."""
        if self.paused():
            status, _, body = self.call("POST", "/v1/sim/button?hold_ms=1100")
            assert status == 200, body
            wait(lambda: not self.paused(), 10, f"{self.name} measuring again")

    def vectors_held(self) -> int:
        return int(self.status()["buffer"]["records"])


def wait(cond: Any, timeout: float, what: str, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(step)
