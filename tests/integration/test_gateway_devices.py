"""The gateway against boards that restart, networks that drop and gateways that restart: no
vector lost or taken twice; 32 boards polled at once; the device commands of the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from host_tools.gateway.bench import run_bench, write_config
from host_tools.gateway.config import load_gateway_config
from host_tools.gateway.service import Gateway
from host_tools.gateway.simdevice import SimBoard
from host_tools.simstore import PLANS, REPO, SimDevice, free_port, write_device
from tests.conftest import until


class Proxy:
    """A TCP proxy on loopback that can drop every connection and refuse new ones (a network cut)."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.port = free_port()
        self.server: asyncio.AbstractServer | None = None
        self.conns: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def down(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
        for w in list(self.conns):
            w.transport.abort()
        self.conns.clear()

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            w.transport.abort()
            return
        self.conns |= {w, uw}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(r, uw), pipe(ur, w))
        self.conns -= {w, uw}


def sqlite_seqs(db: Path) -> dict[tuple[str, str], list[int]]:
    out: dict[tuple[str, str], list[int]] = {}
    with sqlite3.connect(db) as c:
        for dev, boot, seq in c.execute("SELECT device, boot, seq FROM vectors ORDER BY device, boot, seq"):
            out.setdefault((dev, boot), []).append(seq)
    return out


async def wait_for(cond, limit_s: float = 20.0) -> None:
    await until(cond, limit_s, 0.1)


def gateway_on(cfg_path: Path, delivered: list) -> Gateway:
    gw = Gateway(load_gateway_config(cfg_path))
    original = gw._on_vectors

    async def spy(recs):
        delivered.extend((r.device, r.boot, r.seq) for r in recs)
        await original(recs)

    gw._on_vectors = spy  # type: ignore[method-assign]  (the pollers hand their pages to this)
    return gw


async def start(gw: Gateway) -> None:
    await gw.start()


async def test_board_restarts_network_cuts_and_gateway_restarts_lose_and_repeat_nothing(tmp_path):
    boards = [SimBoard(f"sim-{i}", rate=20.0, seed=i) for i in range(3)]
    for b in boards:
        await b.start()
    proxies = [Proxy(b.port) for b in boards]
    for p in proxies:
        await p.up()
    # the gateway reaches the boards through the proxies
    real_ports = [b.port for b in boards]
    for b, p in zip(boards, proxies, strict=True):
        b.port = p.port
    cfg = write_config(tmp_path, boards, interval_s=0.2, sqlite=True)
    for b, port in zip(boards, real_ports, strict=True):
        b.port = port
    delivered: list = []
    produced: dict[tuple[str, str], int] = {}

    def note_boot(b: SimBoard) -> None:
        produced[(b.name, b.boot_id)] = b.vectors.newest_seq

    gw = gateway_on(cfg, delivered)
    await start(gw)
    try:
        for b in boards:
            b.start_producing()
        await asyncio.sleep(1.5)
        # a network cut for 2 s: the boards go on producing into their buffers
        for p in proxies:
            await p.down()
        await asyncio.sleep(2.0)
        assert all(d["state"] in ("ok", "starting", "stale") for d in gw.devices())
        assert sum(p.state.errors for p in gw.pollers) >= 3
        for p in proxies:
            await p.up()
        # back on the network: the gateway catches up with what the boards made during the cut
        mark = {b.name: b.vectors.newest_seq for b in boards}
        await wait_for(lambda: all(gw.store.cursor(b.name).seq >= mark[b.name] for b in boards), limit_s=30)
        # board 1 restarts: new boot, empty buffer (what it had not been asked for yet died with its RAM)
        note_boot(boards[1])
        await boards[1].restart()
        await asyncio.sleep(1.5)
        restarts_seen = {d["name"]: d["restarts_seen"] for d in gw.devices()}
        # the gateway restarts; its SQLite store holds the cursors
        await gw.stop()
        await asyncio.sleep(1.0)
        gw = gateway_on(cfg, delivered)
        await start(gw)
        await asyncio.sleep(1.5)
        for b in boards:
            await b.stop_producing()
            note_boot(b)
        await wait_for(lambda: all(gw.store.cursor(b.name).boot == b.boot_id
                                   and gw.store.cursor(b.name).seq >= b.vectors.newest_seq for b in boards))
    finally:
        await gw.stop()
        for p in proxies:
            await p.down()
        for b in boards:
            await b.stop()
    assert len(delivered) == len(set(delivered)), "a vector was handed to the rules twice"
    held = sqlite_seqs(tmp_path / "gateway.sqlite")
    assert sum(len(v) for v in held.values()) == len(delivered)
    for (name, boot), newest in produced.items():
        seqs = held.get((name, boot), [])
        current = any(b.name == name and b.boot_id == boot for b in boards)
        if current:
            assert seqs == list(range(1, newest + 1)), f"{name} boot {boot}: not every vector exactly once"
        else:
            # the restarted board's old boot: a gap-free prefix (the tail died with the board's RAM)
            assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= mark[name]
    assert sum(produced.values()) >= 3 * 20 * 5
    assert restarts_seen == {"sim-0": 0, "sim-1": 1, "sim-2": 0}


@pytest.fixture(scope="module")
def real_board(tmp_path_factory, models_dir, vtest):
    wd = tmp_path_factory.mktemp("board")
    dev = write_device(wd, "cam-real", dict(PLANS[0][1], pacing="fast"), free_port(), REPO / "board_configs" / "sim.yaml")
    dev.start()
    yield dev
    dev.stop()


async def _wait_up(dev: SimDevice, limit_s: float = 60.0) -> None:
    async with aiohttp.ClientSession() as s:
        t_end = time.monotonic() + limit_s
        while True:
            assert dev.proc is not None and dev.proc.poll() is None, dev.log.read_text()[-2000:]
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with s.get(dev.url + "/health") as r:
                    if r.status == 200:
                        return
            assert time.monotonic() < t_end, "the board did not come up"
            await asyncio.sleep(0.2)


def one_board_config(tmp_path: Path, dev: SimDevice, polling: dict) -> Path:
    """A gateway config (JSON is YAML) polling one real board, with a SQLite store in tmp_path."""
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(json.dumps({
        "version": 1, "gateway": {"port": 0},
        "devices": [{"name": dev.name, "url": dev.url, "token": {"file": str(dev.token_file)}}],
        "polling": polling, "store": {"sqlite": str(tmp_path / "g.sqlite")}, "outputs": {"log": {"enabled": False}}}))
    return cfg


async def _dump(dev: SimDevice) -> tuple[str, int, list[int]]:
    """Everything the board holds now: (boot_id, cursor, seqs)."""
    headers = {"Authorization": f"Bearer {dev.token_file.read_text().strip()}"}
    seqs: list[int] = []
    since = 0
    async with aiohttp.ClientSession(headers=headers) as s:
        while True:
            async with s.get(dev.url + "/v1/vectors", params={"since": str(since), "limit": "1000"}) as r:
                page = await r.json()
            seqs += [v["seq"] for v in page["vectors"]]
            since = page["cursor"]
            if not page["more"]:
                return page["boot_id"], since, seqs


async def test_real_board_killed_and_restarted_under_a_polling_gateway(real_board, tmp_path):
    await _wait_up(real_board)
    cfg = one_board_config(tmp_path, real_board, {"interval_s": 0.3, "stale_after_s": 2})
    delivered: list = []
    gw = gateway_on(cfg, delivered)
    await start(gw)
    try:
        await wait_for(lambda: gw.store.cursor("cam-real").taken >= 20, limit_s=60)
        boot1 = gw.store.cursor("cam-real").boot
        real_board.stop(signal.SIGKILL)  # a power cut
        await wait_for(lambda: gw.devices()[0]["state"] == "stale", limit_s=15)
        real_board.start()
        await _wait_up(real_board)
        await wait_for(lambda: gw.store.cursor("cam-real").boot not in (None, boot1) and
                       gw.store.cursor("cam-real").taken >= 40, limit_s=60)
        boot2, cursor2, held2 = await _dump(real_board)
        await wait_for(lambda: gw.store.cursor("cam-real").seq >= cursor2, limit_s=15)
        assert gw.devices()[0]["state"] == "ok" and gw.devices()[0]["restarts_seen"] == 1
    finally:
        await gw.stop()
    assert boot2 != boot1
    assert len(delivered) == len(set(delivered))
    held = sqlite_seqs(tmp_path / "g.sqlite")
    first = held[("cam-real", boot1)]
    assert first == list(range(1, len(first) + 1)) and len(first) >= 20
    got2 = [s for s in held[("cam-real", boot2)] if s <= cursor2]
    assert got2 == held2, "the gateway's copy of the board's current buffer differs from the board's"


async def test_an_optout_on_the_board_is_forgotten_by_the_gateway(real_board, tmp_path):
    await _wait_up(real_board)
    cfg = one_board_config(tmp_path, real_board, {"interval_s": 0.2})
    gw = Gateway(load_gateway_config(cfg))
    await gw.start()
    headers = {"Authorization": f"Bearer {real_board.token_file.read_text().strip()}"}
    try:
        await wait_for(lambda: gw.store.cursor("cam-real").taken >= 15, limit_s=60)
        boot = gw.store.cursor("cam-real").boot
        async with aiohttp.ClientSession(headers=headers) as s, s.post(real_board.url + "/v1/optout") as r:
            assert r.status == 200
            purged = (await r.json())["purged"]["vectors"]
        assert purged > 0
        await wait_for(lambda: gw.store.cursor("cam-real").purges_seen == 1, limit_s=10)
        assert not [r for r in gw.store.recs if r.device == "cam-real" and r.boot == boot]
        assert not [s for s in gw.store.sessions.values() if s.device == "cam-real"]
        dev = gw.devices()[0]
        assert dev["forgotten"] >= 15 and dev["optouts_seen"] == 1
        with sqlite3.connect(tmp_path / "g.sqlite") as c:
            assert c.execute("SELECT count(*) FROM vectors WHERE boot = ?", (boot,)).fetchone()[0] == 0
        # the board measures again (the sim board's long press resumes): new vectors are kept
        async with aiohttp.ClientSession(headers=headers) as s, \
                s.post(real_board.url + "/v1/sim/button", params={"hold_ms": "3500"}) as r:
            assert r.status == 200
        before = gw.store.cursor("cam-real").taken
        await wait_for(lambda: gw.store.cursor("cam-real").taken >= before + 5, limit_s=60)
        assert len([r for r in gw.store.recs if r.device == "cam-real"]) >= 5
    finally:
        await gw.stop()


def test_device_tail_and_bench_commands(real_board):
    asyncio.run(_wait_up(real_board))
    base = [sys.executable, "-m", "host_tools.cli"]
    tail = subprocess.run([*base, "device", "tail", "--url", real_board.url, "--token-file", str(real_board.token_file),
                           "--count", "5", "--interval", "0.2"], capture_output=True, text=True, timeout=60)
    assert tail.returncode == 0, tail.stderr
    lines = [json.loads(x) for x in tail.stdout.splitlines()]
    assert len(lines) == 5 and all(v["schema"] == 1 and "token" in v for v in lines)
    assert [v["seq"] for v in lines] == sorted(v["seq"] for v in lines)
    bench = subprocess.run([*base, "bench", "--url", real_board.url, "--token-file", str(real_board.token_file),
                            "--duration", "2", "--concurrency", "4", "--json"], capture_output=True, text=True, timeout=60)
    assert bench.returncode == 0, bench.stdout + bench.stderr
    res = json.loads(bench.stdout)
    assert res["requests"] > 20 and res["errors"] == 0 and set(res["status"]) == {"200"}
    assert 0 < res["latency_ms_p50"] <= res["latency_ms_p99"] <= res["latency_ms_max"]
    print(f"\ndevice bench: {res['rps']} req/s, p50 {res['latency_ms_p50']} ms, p99 {res['latency_ms_p99']} ms")
    wrong = subprocess.run([*base, "bench", "--url", real_board.url, "--duration", "0.5"], capture_output=True,
                           text=True, timeout=60, env={"PATH": "/usr/bin", "CUECAM_API_TOKEN": "wrong-token-123456789"})
    assert wrong.returncode == 1 and "401" in wrong.stdout


async def test_one_gateway_polls_32_boards_exactly_once():
    res = await run_bench(32, rate=5.0, duration=6.0)
    print("\n" + "\n".join(f"{k}: {v}" for k, v in res.items()))
    assert res["missing"] == 0 and res["duplicates"] == 0
    assert res["gateway_vectors_produced"] >= 32 * 5 * 5
    assert res["gateway_stale_devices"] == 0
    assert res["gateway_ingest_lag_s_p99"] is not None and res["gateway_ingest_lag_s_p99"] < 5.0


def test_every_subcommand_has_help():
    from host_tools.cli import main

    groups = {"device": ["health", "status", "vectors", "aggregates", "optout", "press", "audit", "tail"],
              "gateway": ["run", "check", "bench", "import-history"], "ota": ["keygen", "build", "sign", "verify", "push"],
              "sim-store": [None], "bench": [None], "sign": [None]}
    for group, cmds in groups.items():
        for cmd in cmds:
            argv = [group] + ([cmd] if cmd else []) + ["--help"]
            with contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit) as e:
                main(argv)
            assert e.value.code == 0, argv
