"""The store dashboard in a real browser: on a gateway polling two scripted boards (fast, default suite)
the page asks for the gateway's token, then shows store now, the plots and the decisions, and new
decisions arrive over the live stream; on `cuecam sim-store` (real boards on real footage; slow) the
demo's decisions arrive as they happen."""

from __future__ import annotations

import asyncio
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from host_tools.gateway.bench import write_config
from host_tools.gateway.config import load_gateway_config
from host_tools.gateway.service import Gateway, serve
from host_tools.gateway.simdevice import SimBoard
from tests.browser.conftest import screenshot, wait_js
from tests.conftest import ROOT

TOKEN = "dashboard-browser-token-0123456789"


class StoreThread:
    """Two scripted boards and a gateway (with an API token) on their own event loop, in a thread."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.url: str | None = None
        self.gw: Gateway | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # said by start()
            self.error = e
            self.ready.set()

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        boards = [SimBoard(f"sim-{i}", rate=10.0, seed=i) for i in range(2)]
        for b in boards:
            await b.start()
        path = write_config(self.workdir, boards, interval_s=0.2)
        cfg = yaml.safe_load(path.read_text())
        (self.workdir / "gw-token").write_text(TOKEN)
        cfg["gateway"]["token"] = {"file": "gw-token"}
        cfg["outputs"] = {"log": {"enabled": True}}
        cfg["rules"] = [{"name": "engaged-display", "when": {"kind": "engaged", "zone": "plaza-sign",
                                                             "min_engagement": 0.0, "for_s": 1},
                         "then": [{"output": "log"}], "cooldown_s": 3600}]
        path.write_text(yaml.safe_dump(cfg))
        self.gw = Gateway(load_gateway_config(path))

        def ready(url: str) -> None:
            self.url = url
            for b in boards:
                b.start_producing()
            self.ready.set()

        try:
            await serve(self.gw, ready=ready)
        finally:
            for b in boards:
                await b.stop()

    def start(self) -> str:
        self.thread.start()
        assert self.ready.wait(30), "the gateway did not start"
        if self.error is not None:
            raise self.error
        assert self.url is not None
        return self.url

    def call(self, fn: Any) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(fn)

    def stop(self) -> None:
        if self.gw is not None and self.loop is not None:
            self.loop.call_soon_threadsafe(self.gw.stop_event.set)
        self.thread.join(30)


@pytest.fixture
def store(tmp_path) -> Iterator[StoreThread]:
    st = StoreThread(tmp_path)
    st.start()
    try:
        yield st
    finally:
        st.stop()


def test_the_dashboard_shows_the_store_and_decisions_arrive_live(store, page):
    page.goto(store.url + "/")
    wait_js(page, "() => !document.getElementById('login').hidden", 10)  # a token is needed: asked once
    page.fill("#token", TOKEN)
    page.click("#login button")
    wait_js(page, "() => window.cuecamDashboard.messages > 0", 15)
    wait_js(page, "() => window.cuecamDashboard.decisions.length > 0", 30)
    assert int(page.inner_text("#visitors-now")) > 0
    assert page.inner_text("#boards-healthy") == "2 / 2"
    assert {r.get_attribute("data-zone") for r in page.locator("#zones tbody tr").all()} >= {"plaza-sign", "walkway"}
    assert page.locator(".uplot").count() >= 2  # traffic per hour and at least one zone's signals
    first = page.locator("#decisions li").first.inner_text()
    assert "engaged-display" in first and "log: sent" in first
    # a new decision reaches the open page over the live stream (no reload)
    n = page.evaluate("() => window.cuecamDashboard.decisions.length")
    assert store.gw is not None
    store.call(store.gw.engine._last_fired.clear)  # the rule's cooldown forgotten: the next engaged visitor fires it
    wait_js(page, f"() => window.cuecamDashboard.decisions.length > {n}", 30)
    assert page.locator("#decisions li").count() > n
    screenshot(page, "dashboard-scripted")
    assert page.errors == []


@pytest.mark.slow
def test_the_dashboard_on_the_sim_store_sees_decisions_arrive(models_dir, vtest, tmp_path, page):
    proc = subprocess.Popen([sys.executable, "-m", "host_tools.cli", "sim-store", "--devices", "3", "--duration", "150",
                             "--gateway-port", "0", "--workdir", str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        url = _gateway_url(proc, 120)
        page.goto(url + "/")
        wait_js(page, "() => window.cuecamDashboard.messages > 0", 20)
        wait_js(page, "() => document.querySelectorAll('#decisions li').length > 0", 120)
        assert page.inner_text("#boards-healthy") == "3 / 3"
        time.sleep(2)
        screenshot(page, "dashboard-sim-store")
        assert page.errors == []
    finally:
        proc.terminate()
        proc.wait(30)


def _gateway_url(proc: subprocess.Popen[str], seconds: float) -> str:
    sel = selectors.DefaultSelector()
    assert proc.stdout is not None
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:  # bounded
        if sel.select(timeout=0.5):
            line = proc.stdout.readline()
            if line.startswith("sim-store:") and " gateway " in line:
                return line.split(" gateway ", 1)[1].split()[0]
            if not line and proc.poll() is not None:
                break
    raise AssertionError("sim-store printed no gateway URL")
