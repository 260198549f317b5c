"""``cuecam sim-store``: a whole store on one machine, for demos and tests.

Starts N real camera boards (``python -m firmware`` processes, each on its own loopback port with
its own API token: one replays vtest.avi and counts the people crossing a line across its plaza,
the store's door in the demo; the others play scripted scenes with real cut-out people), a real
MQTT broker (Debian's mosquitto, when installed), a signage/staff endpoint that checks the
webhooks' HMAC signatures, a till that posts its sales (no identifiers) to the gateway, and the
gateway with the demo rules. Every decision is printed with its explanation as it happens;
``--json`` prints a summary at the end instead.

    cuecam sim-store                       # until Ctrl-C
    cuecam sim-store --duration 60 --json  # a bounded run, summary as JSON
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from .gateway.config import load_gateway_config
from .gateway.outputs import verify_signature
from .gateway.rules import Decision
from .gateway.service import Gateway, serve
from .gateway.transactions import parse_batch

REPO = Path(__file__).resolve().parents[1]
SCENES = REPO / "firmware" / "camera" / "scenes"
# (device name, camera, zones added to the template's): cycled over --devices
DOOR_LINE = {"name": "plaza-door", "kind": "line", "line": [[0.5, 0.2], [0.5, 0.98]], "in_side": "left",
             "entrance": True}  # the demo store's door: people walking left to right across the plaza come in
PLANS: tuple[tuple[str, dict[str, Any], list[dict[str, Any]]], ...] = (
    ("cam-plaza", {"type": "replay", "source": str(REPO / "media" / "vtest.avi"), "pacing": "realtime", "loop": True},
     [DOOR_LINE]),
    ("cam-display", {"type": "synthetic", "scene": str(SCENES / "demo_browse.yaml"), "pacing": "realtime"}, []),
    ("cam-entrance", {"type": "synthetic", "scene": str(SCENES / "demo_veer.yaml"), "pacing": "realtime"}, []),
)
TILL_EVERY_S = 40.0  # the demo till: one sale at the start, then one every this many seconds
DEMO_CONVERSION = 0.45  # the demo history's share of people in who bought, this hour on past weeks
DEMO_RULES = Path(__file__).with_name("gateway") / "demo_rules.yaml"


_HANDED_OUT: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = "127.0.0.1") -> int:
    """A loopback port for a server that binds it later (another process, or a restart on the same
    port). Picked below the kernel's ephemeral range, so no port-0 bind or outgoing connection made
    meanwhile can take it, and never handed out twice by this process."""
    lo, _hi = _ephemeral_range()
    first, last = (10000, lo - 1) if lo > 11000 else (lo, 65535)
    rng = secrets.SystemRandom()
    for _ in range(200):
        port = rng.randint(first, last)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise OSError(f"no free loopback port in {first}-{last}")


@dataclass
class SimDevice:
    name: str
    config: Path
    token_file: Path
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "firmware", "--config", str(self.config)], cwd=REPO,
                                         stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)


def write_device(workdir: Path, name: str, camera: dict[str, Any], port: int, template: Path,
                 zones: list[dict[str, Any]] | None = None) -> SimDevice:
    """A board config for one sim device: the template with its own name, port, token, camera and state dirs."""
    d = workdir / "devices" / name
    d.mkdir(parents=True, exist_ok=True)
    cfg = yaml.safe_load(template.read_text(encoding="utf-8"))
    token_file = d / "api-token"
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
    cfg["board"]["name"] = name
    cfg["camera"] = camera
    cfg["zones"] = [*cfg.get("zones", []), *(zones or [])]
    cfg["inference"]["models_dir"] = str((template.parent / cfg["inference"]["models_dir"]).resolve())
    cfg["inference"]["threads"] = 1
    cfg["api"].update({"host": "127.0.0.1", "port": port, "token_file": str(token_file), "generate_token": False})
    # `cuecam bench` load-tests these boards from loopback: lift the per-client rate limit (a real
    # board keeps its api.rate_limit and answers 429 beyond it)
    cfg["api"]["rate_limit"] = {"per_s": 100000.0, "burst": 100000}
    cfg["privacy"]["audit_log"] = str(d / "audit.jsonl")
    cfg["ota"]["root"] = str(d / "ota")
    path = d / "board.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return SimDevice(name, path, token_file, port, d / "firmware.log")


@dataclass
class Receiver:
    """The store's signage player / staff pager: takes webhooks and checks their signatures."""

    secret: str
    got: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        ok = verify_signature(self.secret, body, request.headers)
        self.got.append({"path": request.path, "verified": ok, "body": body.decode("utf-8", "replace"),
                         "headers": {k: v for k, v in request.headers.items() if k.lower().startswith("x-cuecam-")}})
        return web.json_response({"ok": ok}, status=200 if ok else 401)


class Mosquitto:
    """Debian's MQTT broker on a free loopback port (anonymous, nothing persisted)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n", encoding="utf-8")
        self.start()

    def start(self) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def ready(self, wait_s: float = 10.0) -> None:
        t_end = time.monotonic() + wait_s
        while time.monotonic() < t_end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}")
            with contextlib.suppress(OSError):
                _r, w = await asyncio.open_connection("127.0.0.1", self.port)
                w.close()
                return
            await asyncio.sleep(0.1)
        raise RuntimeError("mosquitto did not start listening")

    def stop(self) -> None:
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        if self.proc.poll() is None:
            self.proc.kill()


def mosquitto_available() -> bool:
    return shutil.which("mosquitto") is not None or Path("/usr/sbin/mosquitto").exists()


def demo_history(now: datetime, weeks: int, per_hour: int) -> list[tuple[str, int, int, int]]:
    """Past visitor counts for this weekday and hour (demo data: stands in for a store's history)."""
    rows = []
    for w in range(1, weeks + 1):
        d = now - timedelta(weeks=w)
        rows.append((d.strftime("%Y-%m-%d"), d.weekday(), d.hour, per_hour + 300 * (w % 3)))
    return rows


def gateway_config(workdir: Path, devices: list[SimDevice], *, mqtt_port: int | None, hook_url: str,
                   hook_secret_file: Path, gateway_port: int, sqlite: bool, till_token_file: Path) -> Path:
    rules = yaml.safe_load(DEMO_RULES.read_text(encoding="utf-8"))["rules"]
    secret = {"file": str(hook_secret_file)}
    outputs: dict[str, Any] = {"log": {"enabled": True},
                               "webhooks": [{"name": "signage", "url": hook_url + "/signage", "secret": secret},
                                            {"name": "staff", "url": hook_url + "/staff", "secret": secret}]}
    if mqtt_port is not None:
        outputs["mqtt"] = {"host": "127.0.0.1", "port": mqtt_port, "topic_prefix": "cuecam", "publish_state_s": 5}
    else:
        for r in rules:
            r["then"] = [a for a in r["then"] if a["output"] != "mqtt"]
    cfg = {"version": 1,
           "gateway": {"name": "demo-store", "host": "127.0.0.1", "port": gateway_port,
                       "till_token": {"file": str(till_token_file)}},
           "devices": [{"name": d.name, "url": d.url, "token": {"file": str(d.token_file)}} for d in devices],
           "polling": {"interval_s": 0.5, "stale_after_s": 5, "counts_s": 2},
           "store": {"retention_s": 3600, "bucket_s": 60} | ({"sqlite": str(workdir / "gateway.sqlite")} if sqlite else {}),
           "rules": rules, "outputs": outputs}
    path = workdir / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


async def run_sim_store(*, n_devices: int = 3, duration: float | None = None, mqtt: str = "auto",
                        workdir: Path | None = None, gateway_port: int = 8090, history: str = "busy",
                        sqlite: bool = False, as_json: bool = False, template: Path | None = None) -> dict[str, Any]:
    template = template or REPO / "board_configs" / "sim.yaml"
    own_dir = workdir is None
    wd = Path(tempfile.mkdtemp(prefix="cuecam-sim-store-")) if workdir is None else workdir
    wd.mkdir(parents=True, exist_ok=True)
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if as_json else (lambda *a: print(*a, flush=True))
    devices = [write_device(wd, f"{PLANS[i % len(PLANS)][0]}{'' if i < len(PLANS) else f'-{i // len(PLANS) + 1}'}",
                            PLANS[i % len(PLANS)][1], free_port(), template, PLANS[i % len(PLANS)][2])
               for i in range(n_devices)]
    broker: Mosquitto | None = None
    mqtt_port: int | None = None
    mqtt_msgs: list[dict[str, Any]] = []
    tasks: list[asyncio.Task[Any]] = []
    hook_runner: web.AppRunner | None = None
    gw: Gateway | None = None
    gw_task: asyncio.Task[Any] | None = None
    try:
        for d in devices:
            d.start()
        if mqtt == "auto" and mosquitto_available():
            broker = Mosquitto(wd)
            await broker.ready()
            mqtt_port = broker.port
        elif mqtt not in ("auto", "off"):
            host, _, port = mqtt.rpartition(":")
            if host not in ("127.0.0.1", "localhost", "::1", "[::1]"):
                raise ValueError("--mqtt must be a loopback HOST:PORT, auto or off")
            mqtt_port = int(port)
        secret_file, till_file = wd / "webhook-secret", wd / "till-token"
        for path in (secret_file, till_file):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
        receiver = Receiver(secret_file.read_text().strip())
        hook_app = web.Application(client_max_size=256 * 1024)
        hook_app.router.add_post("/{name}", receiver.handle)
        hook_runner = web.AppRunner(hook_app, access_log=None)
        await hook_runner.setup()
        await web.TCPSite(hook_runner, "127.0.0.1", 0).start()
        hook_port = int(hook_runner.addresses[0][1])
        gw_cfg = gateway_config(wd, devices, mqtt_port=mqtt_port, hook_url=f"http://127.0.0.1:{hook_port}",
                                hook_secret_file=secret_file, gateway_port=gateway_port, sqlite=sqlite,
                                till_token_file=till_file)
        await _wait_devices(devices, say)

        async def printed(d: Decision) -> None:
            outs = ", ".join(f"{a['output']}:{a['status']}" for a in d.actions)
            say(f"[decision {d.id}] {d.explanation}  -> {outs}")

        gw = Gateway(load_gateway_config(gw_cfg), on_decision=printed)
        if history != "none":
            per_hour = 6000 if history == "busy" else 10
            rows = demo_history(datetime.now(), 4, per_hour)
            await gw.store.seed_history(rows)
            # and the till's history of those hours: DEMO_CONVERSION of the people in bought
            await gw.sales.take_batch(parse_batch({"hours": [
                {"hour": datetime.strptime(f"{day} {h:02d}", "%Y-%m-%d %H").isoformat(),
                 "transactions": int(DEMO_CONVERSION * n), "basket_total": 18.5 * int(DEMO_CONVERSION * n)}
                for day, _wd, h, n in rows]}))
            say(f"demo history ({history}): {len(rows)} past {datetime.now():%A}s at {datetime.now():%H}:00 had "
                f"{min(r[3] for r in rows)}-{max(r[3] for r in rows)} people in/h, {DEMO_CONVERSION:.0%} of them "
                "bought (seeded; a real store imports its door counter's and till's history)")
        if mqtt_port is not None:
            tasks.append(asyncio.create_task(_subscribe(mqtt_port, mqtt_msgs, say)))
        ready = asyncio.Event()
        gw_url: list[str] = []

        def on_ready(url: str) -> None:
            gw_url.append(url)
            ready.set()

        gw_task = asyncio.create_task(serve(gw, ready=on_ready))
        await asyncio.wait_for(ready.wait(), 30)
        tasks.append(asyncio.create_task(_till(gw_url[0], till_file.read_text().strip(), say)))
        say(f"sim-store: {len(devices)} cameras ({', '.join(f'{d.name} {d.url}' for d in devices)}), gateway "
            f"{gw_url[0]} (the store dashboard: {gw_url[0]}/ ; try /v1/state, /v1/decisions, /v1/devices, /metrics), "
            f"MQTT {f'127.0.0.1:{mqtt_port}' if mqtt_port else 'off'}, webhooks -> 127.0.0.1:{hook_port}; "
            f"files in {wd}")
        t_end = None if duration is None else time.monotonic() + duration
        while not gw_task.done() and (t_end is None or time.monotonic() < t_end):
            for d in devices:
                if d.proc is not None and d.proc.poll() is not None:
                    raise RuntimeError(f"{d.name} exited with {d.proc.returncode}; see {d.log}")
            await asyncio.sleep(0.5)
        summary = {"workdir": str(wd), "gateway": gw_url[0], "devices": gw.devices(), "state": gw.state(300),
                   "decisions": [d.to_json() for d in gw.engine.decisions],
                   "sessions": [s.summary() for s in gw.store.sessions.values()],
                   "kpis": gw.sales.hourly(2),
                   "mqtt": {"port": mqtt_port, "received": mqtt_msgs},
                   "webhooks": receiver.got}
        gw.stop_event.set()
        await gw_task
        return summary
    finally:
        for t in tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if gw is not None and not gw.stop_event.is_set():
            gw.stop_event.set()
        if gw_task is not None and not gw_task.done():  # its outputs close before the broker goes
            with contextlib.suppress(asyncio.TimeoutError, Exception):
                await asyncio.wait_for(gw_task, 15)
        if hook_runner is not None:
            await hook_runner.cleanup()
        for d in devices:
            d.stop()
        if broker is not None:
            broker.stop()
        if own_dir and not as_json:
            shutil.rmtree(wd, ignore_errors=True)


async def _wait_devices(devices: list[SimDevice], say: Any, wait_s: float = 90.0) -> None:
    t_end = time.monotonic() + wait_s
    async with aiohttp.ClientSession() as s:
        for d in devices:
            while True:
                if d.proc is not None and d.proc.poll() is not None:
                    raise RuntimeError(f"{d.name} exited with {d.proc.returncode}: {d.log.read_text()[-2000:]}")
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    async with s.get(d.url + "/health", timeout=aiohttp.ClientTimeout(total=2)) as r:
                        await r.read()
                        break
                if time.monotonic() > t_end:
                    raise RuntimeError(f"{d.name} did not start within {wait_s:.0f} s; see {d.log}")
                await asyncio.sleep(0.2)
            say(f"{d.name}: up on {d.url}")


async def _till(gateway: str, token: str, say: Any) -> None:
    """The demo store's till: a sale at the start and one every TILL_EVERY_S, posted as the till
    system would (its own token; time, basket, items, till, category totals; nothing about anyone)."""
    rng = secrets.SystemRandom()
    run = "".join(rng.choice("abcdefghjkmnpqrstuvwxyz") for _ in range(8))  # batch names: no long numbers
    n = 0
    async with aiohttp.ClientSession() as s:
        while True:
            n += 1
            basket = round(rng.uniform(4, 40), 2)
            sale = {"batch": f"demo-till-{run}-{n}", "transactions": [
                {"t": datetime.now().isoformat(timespec="seconds"), "basket": basket, "items": rng.randint(1, 6),
                 "till": "till-1", "categories": {"coffee": round(basket * 0.4, 2), "bakery": round(basket * 0.6, 2)}}]}
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with s.post(f"{gateway}/v1/transactions", json=sale, headers={"Authorization": f"Bearer {token}"},
                                  timeout=aiohttp.ClientTimeout(total=5)) as r:
                    say(f"[till] sale {n}: {basket:.2f} -> gateway {r.status}")
            await asyncio.sleep(TILL_EVERY_S)


async def _subscribe(port: int, into: list[dict[str, Any]], say: Any) -> None:
    import aiomqtt

    while True:
        try:
            async with aiomqtt.Client("127.0.0.1", port) as c:
                await c.subscribe("cuecam/#", qos=1)
                async for m in c.messages:
                    payload = m.payload if isinstance(m.payload, bytes | bytearray) else str(m.payload).encode()
                    try:
                        body = json.loads(payload)
                    except ValueError:
                        body = None
                    into.append({"topic": str(m.topic), "retain": bool(m.retain), "body": body})
                    if not str(m.topic).endswith("/state"):
                        say(f"[mqtt] {m.topic}: {(body or {}).get('explanation', '')}")
        except aiomqtt.MqttError:
            await asyncio.sleep(0.5)


def main_sim_store(args: Any) -> int:
    try:
        summary = asyncio.run(run_sim_store(n_devices=args.devices, duration=args.duration, mqtt=args.mqtt,
                                            workdir=args.workdir, gateway_port=args.gateway_port, history=args.history,
                                            sqlite=args.sqlite, as_json=args.json))
    except KeyboardInterrupt:
        return 130
    except (RuntimeError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(summary, sys.stdout)
        print()
    else:
        n = len(summary["decisions"])
        print(f"sim-store: stopped; {n} decisions, {len(summary['mqtt']['received'])} MQTT messages, "
              f"{sum(w['verified'] for w in summary['webhooks'])}/{len(summary['webhooks'])} webhooks verified")
    return 0
