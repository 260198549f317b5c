"""Fuzz the real firmware's API with schemathesis against its own /openapi.json.

The sim board (real models, the replay camera on vtest.avi) runs as a real process on loopback;
`st run` generates requests from the served OpenAPI 3.1 document (examples, boundary values,
random valid and invalid data, every check: server errors, status codes, content types, headers,
response schemas, negative data rejected, positive data accepted, auth ignored...) until at least
``--cases`` test cases ran. Prints ``key: value`` lines and exits 1 on any failure.

    .venv/bin/python tests/fuzz/fuzz_api.py --cases 10000     # `make fuzz`

The board's rate limit is raised for the run (one client sending thousands of requests would
otherwise mostly get 429, which the schema documents); everything else is the sim board's config.
The opt-out pause is short so the pipeline keeps producing vectors between presses. The board
trusts a freshly generated OTA key and has an initialised slot store, so the fuzzed uploads and
pulls go all the way to verification (and are refused there: nothing the fuzzer sends is signed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests import device  # noqa: E402

TOKEN = "fuzz-token-" + "7f3a9c2e51b84d06a1e9f3c27b5d8e40"
OVERRIDES = {
    "api": {"rate_limit": {"per_s": 100000.0, "burst": 1000000}},
    "privacy": {"optout": {"pause_s": 5.0}},
    # the commissioning view's live stream runs until the page goes (up to commissioning.max_stream_s): off
    # here, its routes are then not served nor in /openapi.json (tests/integration/test_commissioning.py covers them)
    "commissioning": {"enabled": False},
}


def _wait_healthy(url: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url}/health never turned ok")


def _operations(url: str) -> int:
    req = urllib.request.Request(url + "/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        doc = json.loads(r.read())
    return sum(len(ops) for ops in doc["paths"].values())


def run_st(url: str, work: Path, max_examples: int, seed: int, max_time: float | None) -> dict:
    report = work / "report.json"
    cmd = [str(Path(sys.executable).parent / "st"), "--config-file", str(Path(__file__).with_name("schemathesis.toml")),
           "run", url + "/openapi.json", "--checks", "all",
           "-H", f"Authorization: Bearer {TOKEN}", "--max-examples", str(max_examples), "--seed", str(seed),
           "--workers", "1", "--request-timeout", "20", "--report", "json", "--report-json-path", str(report),
           "--no-color", "--output-truncate", "true", "--suppress-health-check", "all"]
    if max_time is not None:
        cmd += ["--max-time", str(int(max_time))]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, errors="replace",
                          env={**os.environ, "SCHEMATHESIS_HOOKS": ""})
    elapsed = time.monotonic() - t0
    if not report.exists():
        raise SystemExit(f"schemathesis wrote no report (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    out = json.loads(report.read_text())
    out["_stdout"], out["_exit"], out["_elapsed"] = proc.stdout, proc.returncode, elapsed
    return out


def summarize(report: dict) -> dict[str, object]:
    """Counts from schemathesis's JSON run report: test cases generated, failures by code (ST101
    is a server error; every other failure is a violation of the schema or of HTTP semantics)."""
    failures = {f"{f['code']} {f['title']}": int(f["count"]) for f in report.get("failures", [])}
    server = sum(int(f["count"]) for f in report.get("failures", []) if f["code"] == "ST101")
    return {"cases": int(report["test_cases"]["generated"]), "failures": failures, "server_errors": server,
            "schema_violations": sum(failures.values()) - server, "errors": len(report.get("errors", [])),
            "operations": int(report["operations"]["tested"])}


def _ota_ready(base: Path) -> dict:
    """A trusted key (its private half thrown away) and slot a initialised with a one-file release."""
    from ota.bundle import generate_keypair, public_key_hex
    from ota.slots import SlotStore

    _priv, pub = generate_keypair()
    release = base / "release-0.1.0"
    release.mkdir()
    (release / "README").write_text("cuecam 0.1.0\n")
    SlotStore(base / "ota").init("0.1.0", release)
    return {"ota": {"trusted_keys": [public_key_hex(pub)], "max_bundle_bytes": 4 * 1024 * 1024}}


def fuzz(cases: int, seed: int, max_time: float | None = None, work: Path | None = None) -> dict[str, object]:
    """Run schemathesis against a fresh firmware process until ``cases`` test cases ran (several
    runs with successive seeds if one generates fewer: operations without inputs have few cases)."""
    with tempfile.TemporaryDirectory(prefix="cuecam-fuzz-") as tmp:
        base = Path(tmp) if work is None else work
        config = device.write_config(base, {**OVERRIDES, **_ota_ready(base)})
        proc = device.start(config, TOKEN)
        runs: list[dict[str, object]] = []
        stdout: list[str] = []
        try:
            url = device.wait_url(proc)
            _wait_healthy(url)
            ops = _operations(url)
            total = 0
            for i in range(6):  # bounded
                per_op = max(1, math.ceil((cases - total) / ops * (1.0 if i == 0 else 2.0)))
                (base / f"run{i}").mkdir()
                report = run_st(url, base / f"run{i}", per_op, seed + i, max_time)
                r = summarize(report)
                r.update(st_exit=report["_exit"], seconds=report["_elapsed"])
                runs.append(r)
                stdout.append(str(report["_stdout"]))
                total += int(r["cases"])  # type: ignore[call-overload]
                if total >= cases or report["_exit"] != 0:
                    break
        finally:
            code = device.stop(proc)
        failures: dict[str, int] = {}
        for r in runs:
            for k, n in r["failures"].items():  # type: ignore[attr-defined]
                failures[k] = failures.get(k, 0) + n
        return {"cases": sum(int(r["cases"]) for r in runs), "runs": len(runs),  # type: ignore[call-overload]
                "server_errors": sum(int(r["server_errors"]) for r in runs),  # type: ignore[call-overload]
                "schema_violations": sum(int(r["schema_violations"]) for r in runs),  # type: ignore[call-overload]
                "errors": sum(int(r["errors"]) for r in runs),  # type: ignore[call-overload]
                "operations": runs[0]["operations"] if runs else 0, "failures": failures,
                "st_exit": max(int(r["st_exit"]) for r in runs) if runs else -1,  # type: ignore[call-overload]
                "seconds": round(sum(float(r["seconds"]) for r in runs), 1),  # type: ignore[arg-type]
                "firmware_exit": code, "stdout": "\n".join(stdout)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=int(os.environ.get("FUZZ_CASES", "10000")))
    ap.add_argument("--seed", type=int, default=int(os.environ.get("FUZZ_SEED", "20261125")))
    args = ap.parse_args()
    r = fuzz(args.cases, args.seed)
    print(str(r["stdout"])[-6000:])
    for k in ("operations", "runs", "cases", "server_errors", "schema_violations", "errors", "seconds", "st_exit",
              "firmware_exit"):
        print(f"fuzz_{k}: {r[k]}")
    print(f"fuzz_failures: {json.dumps(r['failures'])}")
    ok = (int(r["cases"]) >= args.cases and r["server_errors"] == 0 and r["schema_violations"] == 0 and r["errors"] == 0
          and r["st_exit"] == 0 and r["firmware_exit"] == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
