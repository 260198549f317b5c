"""systemd notify and watchdog over a real unix datagram socket: READY=1 once camera, model and
API are up, WATCHDOG=1 from the event loop at WATCHDOG_USEC/2, stopping when the loop is blocked
or the pipeline stalls; STATUS= with state and fps. In-process and with the real firmware process."""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

import pytest

from firmware.app import Service
from firmware.camera import create_camera
from firmware.camera.faults import FaultyCamera
from firmware.model_manager import load_models
from firmware.sdnotify import Notifier
from tests.conftest import ROOT, SIM_CONFIG, sim_config, until


class Listener:
    """A notify socket (as systemd holds it): collects (monotonic time, message) pairs."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def times(self, key: str, since: float = 0.0) -> list[float]:
        return [t for t, m in list(self.messages) if key in m and t >= since]

    def first(self, key: str) -> tuple[float, dict[str, str]] | None:
        return next(((t, m) for t, m in list(self.messages) if key in m), None)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def listener(tmp_path):
    lst = Listener(str(tmp_path / "notify.sock"))
    yield lst
    lst.close()


def test_notifier_speaks_to_an_abstract_socket_and_honours_watchdog_pid():
    name = f"cuecam-test-{secrets.token_hex(6)}"
    lst = Listener("\0" + name)
    try:
        n = Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())})
        assert n.enabled and n.watchdog_interval_s == 1.0
        assert n.ready("up; 9.9 fps") and n.watchdog()
        for _ in range(100):
            if len(lst.messages) >= 2:
                break
            time.sleep(0.01)
        assert [m for _, m in lst.messages] == [{"READY": "1", "STATUS": "up; 9.9 fps"}, {"WATCHDOG": "1"}]
        n.close()
    finally:
        lst.close()
    # another process's watchdog, a bad value, or no socket: no pings from us
    assert Notifier({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}).watchdog_interval_s is None
    assert Notifier({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "soon"}).watchdog_interval_s is None
    assert Notifier({"WATCHDOG_USEC": "2000000"}).watchdog_interval_s is None
    assert not Notifier({}).watchdog()
    # started by ota.launch (the unit's main process): the parent's watchdog is ours
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getppid()), "CUECAM_OTA_SLOT": "a"}
    assert Notifier(env).watchdog_interval_s == 0.5
    # a socket that went away: counted, never raised
    gone = Notifier({"NOTIFY_SOCKET": f"@cuecam-gone-{secrets.token_hex(6)}"})
    assert gone.notify(STATUS="x") is False and gone.errors == 1



async def _until(cond, seconds: float = 30.0, step: float = 0.01) -> None:
    await until(cond, seconds, step)


def _gaps(ts: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(ts)]


async def test_pings_keep_cadence_and_stop_when_the_loop_blocks_or_the_pipeline_stalls(models_dir, tmp_path, listener):
    loaded = sim_config({
        "camera": {"type": "synthetic", "size": [320, 240], "people": 2, "pacing": "realtime", "fps": 20},
        "signals": {"pose": "off"},
        "privacy": {"audit_log": str(tmp_path / "audit.jsonl"), "optout": {"pins": "none"}},
        "health": {"camera_timeout_s": 60, "stall_s": 1.2, "startup_grace_s": 5},
        "thermal": {"sensor": "none"},
    })
    hang = {"on": False}
    models = load_models(loaded)
    cam = FaultyCamera(create_camera(loaded), lambda n: "hang" if hang["on"] else None, hang_max_s=30)
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "200000"})
    svc = Service(loaded, camera=cam, models=models, notifier=notifier)
    await cam.open()
    t_start = time.monotonic()
    await svc.start()
    try:
        await asyncio.sleep(0.3)
        assert listener.first("READY") is None  # the API is not up yet
        svc.api_url = "http://127.0.0.1:1"  # what serve() sets once the site listens
        await _until(lambda: listener.first("READY") is not None)
        t_ready, ready = listener.first("READY")  # type: ignore[misc]
        assert svc.pipeline.stats.frames_processed >= 1 and "fps" in ready["STATUS"]
        # cadence: WATCHDOG_USEC / 2 = 0.1 s
        t0 = time.monotonic()
        await asyncio.sleep(1.5)
        gaps = _gaps(listener.times("WATCHDOG", since=t0))
        assert len(gaps) >= 10
        median = statistics.median(gaps)
        assert 0.08 <= median <= 0.15 and max(gaps) < 0.4, gaps
        print(f"\nwatchdog in-process: ready after {t_ready - t_start:.2f} s, ping gap median {median * 1000:.0f} ms, "
              f"max {max(gaps) * 1000:.0f} ms over {len(gaps)} gaps")
        # a blocked event loop sends nothing
        time.sleep(0.8)  # noqa: ASYNC251 - the point: block the loop (shorter than stall_s)
        t_unblocked = time.monotonic()
        await _until(lambda: listener.times("WATCHDOG", since=t_unblocked), 3)  # pings resume after
        ts = listener.times("WATCHDOG", since=t0)
        assert max(_gaps(ts)) >= 0.75
        # a stalled pipeline (the camera hangs, no frame for health.stall_s): the pings stop
        hang["on"] = True
        t_hang = time.monotonic()
        await asyncio.sleep(2.4)
        stalled = listener.times("WATCHDOG", since=t_hang)
        assert not stalled or max(stalled) < t_hang + 1.2 + 0.3, [round(t - t_hang, 2) for t in stalled]
        ok, reason = svc.health()
        assert not ok and "no frame processed for" in reason
        statuses = [m["STATUS"] for _, m in listener.messages if "STATUS" in m]
        assert any(s.startswith("degraded: no frame processed") for s in statuses), statuses
        # frames come back: pings resume
        hang["on"] = False
        cam._interrupt()
        await _until(lambda: svc.health()[0], 10)
        t_back = time.monotonic()
        await _until(lambda: len(listener.times("WATCHDOG", since=t_back)) >= 2, 5)
    finally:
        await svc.stop()
    assert listener.first("STOPPING") is not None


def test_the_firmware_process_notifies_ready_pings_and_stops_pinging_when_frozen(models_dir, vtest):
    name = f"cuecam-test-{secrets.token_hex(6)}"
    lst = Listener("\0" + name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CUECAM_", "NOTIFY_", "WATCHDOG_"))}
    env.update(CUECAM_API_TOKEN="process-test-token-0123456789", NOTIFY_SOCKET="@" + name, WATCHDOG_USEC="1000000")
    t_spawn = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "firmware", "--config", str(SIM_CONFIG), "--port", "0"], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(300):  # bounded: 30 s
            if lst.first("READY") or proc.poll() is not None:
                break
            time.sleep(0.1)
        got = lst.first("READY")
        assert got is not None, proc.stderr.read() if proc.poll() is not None and proc.stderr else "no READY"
        t_ready, ready = got
        assert ready["STATUS"].startswith("ok;") and "fps" in ready["STATUS"]
        time.sleep(3.0)
        gaps = _gaps(lst.times("WATCHDOG", since=t_ready))
        assert len(gaps) >= 4 and 0.4 <= statistics.median(gaps) <= 0.65 and max(gaps) < 1.0, gaps
        proc.send_signal(signal.SIGSTOP)  # frozen: nothing runs, nothing is sent
        t_stop = time.monotonic()
        time.sleep(2.0)
        proc.send_signal(signal.SIGCONT)
        t_cont = time.monotonic()
        time.sleep(1.5)
        frozen = [t for t in lst.times("WATCHDOG", since=t_stop + 0.05) if t < t_cont]
        assert frozen == []
        assert lst.times("WATCHDOG", since=t_cont)
        print(f"\nwatchdog process: READY {t_ready - t_spawn:.2f} s after spawn; ping gap median "
              f"{statistics.median(gaps) * 1000:.0f} ms (WatchdogSec 1 s), max {max(gaps) * 1000:.0f} ms")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        lst.close()
    assert proc.returncode == 0 and "Traceback" not in err
    assert lst.first("STOPPING") is not None

