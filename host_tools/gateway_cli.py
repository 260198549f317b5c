"""``cuecam gateway run|check|bench``, ``cuecam sim-store``, ``cuecam bench`` and ``cuecam device tail``.

    cuecam gateway run   --config gateway.yaml          # poll the boards, decide, serve the gateway API
    cuecam gateway check --config gateway.yaml          # validate a gateway config (exit 2 if invalid)
    cuecam gateway import-history --config gateway.yaml visitors.csv  # past hourly footfall as baselines
    cuecam gateway import-transactions --config gateway.yaml till.csv  # till data without identifiers
    cuecam gateway bench --devices 32 --duration 20     # one gateway polling 32 simulated boards
    cuecam sim-store [--devices 3] [--duration S]       # a whole store on this machine (see simstore.py)
    cuecam bench  --url URL --token-file F              # a board's API under load: latency percentiles
    cuecam device tail --url URL --token-file F         # follow a board's vectors as they come
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson


def add_parsers(sub: Any, device_sub: Any, common: Any) -> None:
    g = sub.add_parser("gateway", help="the store's edge gateway: poll boards, decide, serve")
    gsub = g.add_subparsers(dest="cmd", required=True)
    run = gsub.add_parser("run", help="run the gateway until Ctrl-C / SIGTERM")
    run.add_argument("--config", type=Path, required=True, help="gateway config (YAML)")
    run.add_argument("--port", type=int, help="override gateway.port (0: any free port)")
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    chk = gsub.add_parser("check", help="validate a gateway config and the secrets it names")
    chk.add_argument("--config", type=Path, required=True)
    chk.add_argument("--json", action="store_true", help="print the result as JSON")
    imp = gsub.add_parser("import-history", help="hourly visitor counts (CSV date,hour,visitors) into the "
                                                "gateway's SQLite history, as slow-hour baselines")
    imp.add_argument("--config", type=Path, required=True, help="gateway config (YAML) with store.sqlite")
    imp.add_argument("csv", type=Path, help="CSV with the header date,hour,visitors (e.g. a door counter's export)")
    imp.add_argument("--json", action="store_true", help="print the result as JSON")
    tx = gsub.add_parser("import-transactions", help="a till export (CSV t,basket,items[,till][,zone][,cat:NAME]; "
                                                    "no identifiers) into the gateway's SQLite: conversion baselines")
    tx.add_argument("--config", type=Path, required=True, help="gateway config (YAML) with store.sqlite")
    tx.add_argument("csv", type=Path, help="CSV with the header t,basket,items and optional till, zone, cat:NAME")
    tx.add_argument("--json", action="store_true", help="print the result as JSON")
    b = gsub.add_parser("bench", help="one gateway process polling N simulated boards: CPU, latency, exactly-once")
    b.add_argument("--devices", type=int, default=32)
    b.add_argument("--rate", type=float, default=5.0, help="vectors per second per simulated board")
    b.add_argument("--duration", type=float, default=20.0, help="seconds of load")
    b.add_argument("--json", action="store_true", help="print the result as JSON (default: key: value lines)")

    s = sub.add_parser("sim-store", help="a whole store on this machine: N sim boards, MQTT, webhooks, gateway")
    s.add_argument("--devices", type=int, default=3, help="camera boards to start (1-12)")
    s.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    s.add_argument("--mqtt", default="auto", help="auto (start Debian's mosquitto if installed), off, or HOST:PORT")
    s.add_argument("--workdir", type=Path, help="keep configs, tokens, logs here (default: a temp dir)")
    s.add_argument("--gateway-port", type=int, default=8090, help="gateway API port (0: any free port)")
    s.add_argument("--history", choices=("busy", "quiet", "none"), default="busy",
                   help="seeded visitor history for the slow-hour rule (demo data)")
    s.add_argument("--sqlite", action="store_true", help="keep the gateway's store in SQLite in the workdir")
    s.add_argument("--json", action="store_true", help="print a JSON summary at the end (progress goes to stderr)")

    bench = sub.add_parser("bench", help="query one board's API under load and report latency percentiles")
    common(bench)
    bench.add_argument("--concurrency", type=int, default=8, help="clients at once (1-256)")
    bench.add_argument("--duration", type=float, default=10.0, help="seconds (0.5-3600)")
    bench.add_argument("--paths", default="/v1/vectors?limit=100,/v1/status,/v1/aggregates?window=60,/health",
                       help="comma-separated paths, cycled")
    bench.add_argument("--json", action="store_true", help="print the result as JSON (default: key: value lines)")

    tail = device_sub.add_parser("tail", help="follow the board's vectors as they come (one JSON line each)")
    common(tail)
    tail.add_argument("--since", type=int, default=0, help="start after this cursor (0: everything held)")
    tail.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    tail.add_argument("--count", type=int, help="stop after this many vectors")
    tail.add_argument("--zone", help="only vectors of this zone")


def run(args: argparse.Namespace, token: str | None) -> int:
    if args.group == "gateway":
        return {"run": _gateway_run, "check": _gateway_check, "bench": _gateway_bench,
                "import-history": _gateway_import_history,
                "import-transactions": _gateway_import_transactions}[args.cmd](args)
    if args.group == "sim-store":
        if not 1 <= args.devices <= 12:
            print("error: --devices must be 1-12", file=sys.stderr)
            return 2
        from .simstore import main_sim_store

        return main_sim_store(args)
    if args.group == "bench":
        return _device_bench(args, token)
    if args.group == "device" and args.cmd == "tail":
        return _tail(args, token)
    raise AssertionError(args)


def _load(path: Path) -> Any:
    from firmware.errors import ConfigError

    from .gateway.config import load_gateway_config

    try:
        return load_gateway_config(path)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return None


def _gateway_check(args: argparse.Namespace) -> int:
    from firmware.errors import ConfigError

    loaded = _load(args.config)
    if loaded is None:
        return 2
    cfg = loaded.config
    try:
        for d in cfg.devices:
            loaded.secret(d.token, f"devices.{d.name}.token")
        for w in cfg.outputs.webhooks:
            loaded.secret(w.secret, f"outputs.webhooks.{w.name}.secret")
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    result: dict[str, Any] = {"config": str(args.config), "ok": True, "devices": [d.name for d in cfg.devices],
              "rules": [r.name for r in cfg.rules],
              "outputs": ["log"] * cfg.outputs.log.enabled + ["mqtt"] * (cfg.outputs.mqtt is not None)
              + [w.name for w in cfg.outputs.webhooks]}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.config}: ok ({len(result['devices'])} devices, {len(result['rules'])} rules, "
              f"outputs {', '.join(result['outputs'])})")
    return 0


def _load_with_sqlite(path: Path, what: str) -> Any:
    """A gateway config for an import: None (said why) unless it loads and keeps its store in SQLite."""
    loaded = _load(path)
    if loaded is not None and loaded.config.store.sqlite is None:
        print(f"{path}: store.sqlite is not set: {what} would be gone when this command ends", file=sys.stderr)
        return None
    return loaded


def _write_and_report(args: argparse.Namespace, what: str, write: Any, report: Any) -> int:
    """Run an import's ``write`` (a coroutine function) and print ``report(its result)``: a dict
    (printed as JSON with --json) and a sentence; 1 when the SQLite store cannot be written."""
    try:
        written = asyncio.run(write())
    except (OSError, sqlite3.Error) as e:
        print(f"error: cannot write {what}: {e}", file=sys.stderr)
        return 1
    result, text = report(written)
    print(json.dumps(result) if args.json else text)
    return 0


def _gateway_import_history(args: argparse.Namespace) -> int:
    from firmware.errors import ConfigError

    from .gateway.history import parse_history_csv
    from .gateway.store import Store

    loaded = _load_with_sqlite(args.config, "the history")
    if loaded is None:
        return 2
    st = loaded.config.store
    try:
        parsed = parse_history_csv(args.csv, history_days=st.history_days)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2

    async def write() -> int:
        store = Store.from_config(loaded)  # not opened: the vectors it holds are not needed here
        assert store.db is not None
        try:
            await store.seed_history(parsed.rows)
            return int(await store.db.call(store.db.count, "history"))
        finally:
            await store.close()

    def report(held: int) -> tuple[dict[str, Any], str]:
        result = {"imported": len(parsed.rows), "too_old": parsed.too_old, "history_hours": held,
                  "sqlite": str(loaded.resolve(st.sqlite))}
        return result, (f"imported {result['imported']} hours ({result['too_old']} older than store.history_days="
                        f"{st.history_days} skipped); {held} hours of history in {result['sqlite']}. A running gateway "
                        "reads them when it next starts.")

    return _write_and_report(args, "the history", write, report)


def _gateway_import_transactions(args: argparse.Namespace) -> int:
    from .gateway.sales import SalesStore
    from .gateway.store import Store
    from .gateway.transactions import Batch, TransactionError, parse_csv

    loaded = _load_with_sqlite(args.config, "the transactions")
    if loaded is None:
        return 2
    st = loaded.config.store
    try:
        txs = parse_csv(args.csv)  # every row checked before anything is written
    except TransactionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    async def write() -> dict[str, Any]:
        store = Store.from_config(loaded)
        sales = SalesStore(store)
        try:
            await sales.open()
            return await sales.take_batch(Batch(txs, [], None))
        finally:
            await store.close()

    def report(res: dict[str, Any]) -> tuple[dict[str, Any], str]:
        result = {"imported": res["accepted"], "sqlite": str(loaded.resolve(st.sqlite))}
        return result, (f"imported {result['imported']} transactions (their hourly totals kept store.history_days="
                        f"{st.history_days}, the transactions themselves store.retention_s) into {result['sqlite']}. "
                        "A running gateway reads them when it next starts; POST /v1/transactions feeds a running one.")

    return _write_and_report(args, "the transactions", write, report)


def _gateway_run(args: argparse.Namespace) -> int:
    from firmware.errors import ConfigError

    from .gateway.service import Gateway, serve

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    loaded = _load(args.config)
    if loaded is None:
        return 2
    if args.port is not None:
        loaded = type(loaded)(loaded.config.model_copy(update={"gateway": loaded.config.gateway.model_copy(
            update={"port": args.port})}), loaded.path)

    async def main() -> None:
        gw = Gateway(loaded)
        await serve(gw, ready=lambda url: print(f"cuecam gateway: serving on {url}", flush=True))

    try:
        asyncio.run(main())
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot start the gateway: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def _gateway_bench(args: argparse.Namespace) -> int:
    from .gateway.bench import run_bench

    if not 1 <= args.devices <= 256 or not 0 < args.rate <= 200 or not 1 <= args.duration <= 3600:
        print("error: --devices 1-256, --rate (0, 200], --duration 1-3600", file=sys.stderr)
        return 2
    result = asyncio.run(run_bench(args.devices, args.rate, args.duration))
    _print_result(result, args.json)
    return 0 if result["missing"] == 0 and result["duplicates"] == 0 else 1


def _print_result(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def _device_bench(args: argparse.Namespace, token: str | None) -> int:
    if not 1 <= args.concurrency <= 256 or not 0.5 <= args.duration <= 3600:
        print("error: --concurrency must be 1-256 and --duration 0.5-3600", file=sys.stderr)
        return 2
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    if not paths or any(not p.startswith("/") for p in paths):
        print("error: --paths must be comma-separated paths starting with /", file=sys.stderr)
        return 2

    async def main() -> dict[str, Any]:
        lat: list[float] = []
        codes: dict[int, int] = {}
        errors = 0
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        t_end = time.monotonic() + args.duration
        async with aiohttp.ClientSession(base_url=args.url.rstrip("/"), headers=headers,
                                         timeout=aiohttp.ClientTimeout(total=args.timeout)) as s:
            async def client(i: int) -> None:
                nonlocal errors
                n = i
                while time.monotonic() < t_end:
                    path = paths[n % len(paths)]
                    n += 1
                    t0 = time.perf_counter()
                    try:
                        async with s.get(path) as r:
                            await r.read()
                            codes[r.status] = codes.get(r.status, 0) + 1
                    except (TimeoutError, aiohttp.ClientError):
                        errors += 1
                        continue
                    lat.append((time.perf_counter() - t0) * 1000)

            t0 = time.monotonic()
            await asyncio.gather(*(client(i) for i in range(args.concurrency)))
            wall = time.monotonic() - t0
        return {"url": args.url, "concurrency": args.concurrency, "duration_s": round(wall, 2), "requests": len(lat),
                "rps": round(len(lat) / wall, 1), "errors": errors, "rate_limited": codes.get(429, 0),
                "status": {str(k): v for k, v in sorted(codes.items())},
                "latency_ms_p50": round(_pct(lat, 0.5), 2), "latency_ms_p90": round(_pct(lat, 0.9), 2),
                "latency_ms_p99": round(_pct(lat, 0.99), 2), "latency_ms_max": round(max(lat), 2) if lat else None}

    result = asyncio.run(main())
    _print_result(result, args.json)
    # 429 is the board's per-client rate limit doing its job (api.rate_limit); anything else fails
    ok = result["errors"] == 0 and set(result["status"]) <= {"200", "429"}
    return 0 if ok and result["requests"] else 1


def _tail(args: argparse.Namespace, token: str | None) -> int:
    """Poll /v1/vectors forever (or --count vectors), one JSON line per vector; survives restarts."""
    from .gateway.client import BOOT_ID

    async def main() -> int:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        cursor, boot, shown, backoff = args.since, None, 0, args.interval
        params: dict[str, str] = {"limit": "500"} | ({"zone": args.zone} if args.zone else {})
        async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=args.timeout)) as s:
            while args.count is None or shown < args.count:
                try:
                    async with s.get(args.url.rstrip("/") + "/v1/vectors", params={**params, "since": str(cursor)}) as r:
                        body = await r.content.read(16 * 1024 * 1024)
                        if r.status == 401:
                            print("error: the board refused the token", file=sys.stderr)
                            return 1
                        if r.status != 200:
                            raise aiohttp.ClientError(f"HTTP {r.status}")
                    page = orjson.loads(body)
                except (TimeoutError, aiohttp.ClientError, orjson.JSONDecodeError) as e:
                    print(f"cuecam: {args.url}: {e}; retrying in {backoff:.1f} s", file=sys.stderr)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 30.0)
                    continue
                backoff = args.interval
                new_boot = page.get("boot_id")
                if isinstance(new_boot, str) and BOOT_ID.match(new_boot) and boot is not None and new_boot != boot:
                    print(f"cuecam: {args.url} restarted; reading its new buffer from the start", file=sys.stderr)
                    cursor, boot = 0, new_boot
                    continue
                boot = new_boot
                if page.get("lost"):
                    print(f"cuecam: {page['lost']} vectors expired before they were read", file=sys.stderr)
                for v in page.get("vectors", []):
                    sys.stdout.write(orjson.dumps(v).decode() + "\n")
                    shown += 1
                    if args.count is not None and shown >= args.count:
                        break
                sys.stdout.flush()
                cursor = page.get("cursor", cursor)
                if not page.get("more"):
                    await asyncio.sleep(args.interval)
        return 0

    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(main())
    return 130

