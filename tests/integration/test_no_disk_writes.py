"""Nothing on disk: the real service, serving the real API over loopback and handling an opt-out,
writes no file except its audit log.

The run happens in a subprocess with a ``sys.addaudithook`` hook installed before anything is
imported (audit hooks cannot be removed, so none is ever installed in the pytest process). The
hook records every Python-level write to the file system: ``open`` events whose mode or flags
mean writing, ``os.rename``/``os.replace``, ``os.remove``, ``os.mkdir`` and friends, and the
``shutil`` events. Writes to the configured audit log (and the temp files beside it that its
atomic rewrite uses) and to /dev/null are allowed; everything else is a violation.

Audit hooks only see what goes through the Python runtime: a C library (OpenCV's decoder, LiteRT,
libjpeg ...) calling ``open(2)``/``fopen(3)`` itself is invisible to them. So the test also lists
files before and after the run, with their mtimes and sizes, and only the audit log may differ:

- the whole tmp dir. The subprocess runs a private copy of the working tree made there (firmware/,
  board_configs/, models/ and media/, links resolved), from that copy as its cwd, with HOME,
  TMPDIR and XDG_* dirs there too: whatever the firmware writes relative to its config (the token
  file, the default audit log), its cwd or its package, or to the usual per-user and temp places,
  lands in the snapshot. (A copy, because other people and tools edit the real checkout while
  tests run; a snapshot of the whole real tree would blame them on the firmware.)
- the real checkout's parts the firmware could reach by an absolute path: firmware/,
  board_configs/, models/, media/, .cuecam/ and the files at its top (__pycache__ excluded).

Writes elsewhere on the machine by C code (say /var/tmp) would still go unseen.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

TOKEN = "no-disk-writes-token-0123456789"
SKIP_DIRS = {".venv", ".venv-bookworm", ".git", ".pytest_cache", "__pycache__"}
TREE = ("firmware", "board_configs", "models", "media")  # what the sim board needs, copied for the run

# Runs in the subprocess: argv[1] = the audit log's directory, argv[2] = the (copied) working tree.
PROBE = r'''
import os
import sys

AUDIT_DIR = os.path.normpath(os.path.abspath(sys.argv[1]))
AUDIT_NAME = "audit.jsonl"
AUDIT = os.path.join(AUDIT_DIR, AUDIT_NAME)
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
violations = []
allowed = []


def _path(p):
    if isinstance(p, int):
        return None  # an fd already open: its open() was checked when it happened
    try:
        return os.path.normpath(os.path.abspath(os.fsdecode(p)))
    except Exception:
        return repr(p)


def _allowed(event, path):
    if path == os.devnull:
        return True
    if event == "os.mkdir" and path == AUDIT_DIR:
        return True  # AuditLog / atomic_write_bytes: mkdir(parents=True, exist_ok=True) of the log's folder
    d, name = os.path.split(path)
    # the log itself and fsutil.atomic_write_bytes' temp files beside it (.audit.jsonl.XXXX.tmp)
    return d == AUDIT_DIR and (name == AUDIT_NAME or (name.startswith("." + AUDIT_NAME + ".") and name.endswith(".tmp")))


# event -> indexes of the arguments that are paths written to (created, replaced, removed, changed)
PATH_ARGS = {
    "os.rename": (0, 1),  # os.rename and os.replace
    "os.remove": (0,),  # os.remove and os.unlink
    "os.mkdir": (0,),
    "os.rmdir": (0,),
    "os.truncate": (0,),
    "os.link": (1,),
    "os.symlink": (1,),
    "os.chmod": (0,),
    "os.chown": (0,),
    "os.utime": (0,),
    "shutil.copyfile": (1,),
    "shutil.copymode": (1,),
    "shutil.copystat": (1,),
    "shutil.copytree": (1,),
    "shutil.move": (0, 1),
    "shutil.rmtree": (0,),
    "shutil.chown": (0,),
    "shutil.make_archive": (0,),
    "shutil.unpack_archive": (1,),
}


def hook(event, args):
    try:
        if event == "open":
            path, mode, flags = args
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & WRITE_FLAGS)
            paths = [path] if writes else []
        elif event in PATH_ARGS:
            paths = [args[i] for i in PATH_ARGS[event] if i < len(args)]
        elif event.startswith("shutil."):
            paths = [a for a in args if isinstance(a, (str, bytes, os.PathLike))]
        else:
            return
        for p in paths:
            path = _path(p)
            if path is None:
                continue
            (allowed if _allowed(event, path) else violations).append([event, path])
    except Exception as e:  # a hook must never break the operation it watches
        violations.append(["hook-error", f"{event}: {e!r}"])


sys.addaudithook(hook)

import asyncio  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(sys.argv[2])
sys.path.insert(0, str(ROOT))

from aiohttp import ClientSession, ClientTimeout, web  # noqa: E402

import firmware  # noqa: E402

assert Path(firmware.__file__).resolve().is_relative_to(ROOT.resolve()), firmware.__file__
from firmware.app import build_service  # noqa: E402
from firmware.config import Config, LoadedConfig, load_config  # noqa: E402
from firmware.http.app import ROUTES, build_app  # noqa: E402


async def until(cond, seconds, step=0.05):
    for _ in range(int(seconds / step)):  # bounded
        if cond():
            return
        await asyncio.sleep(step)
    raise SystemExit(f"condition not met within {seconds} s")


async def main():
    base = load_config(ROOT / "board_configs" / "sim.yaml")
    data = base.config.model_dump()
    data["camera"].update(pacing="fast", loop=False)
    data["privacy"]["audit_log"] = AUDIT
    loaded = LoadedConfig(Config.model_validate(data), base.path)
    svc, token = await build_service(loaded)  # the token comes from $CUECAM_API_TOKEN: no file
    runner = web.AppRunner(build_app(svc, token), handle_signals=False, access_log=None)
    await runner.setup()  # starts the pipeline
    requests = 0
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        url = f"http://{host}:{port}"
        headers = {"Authorization": "Bearer " + os.environ["CUECAM_API_TOKEN"]}
        gets = [r.path for r in ROUTES if r.method == "GET"]
        async with ClientSession(timeout=ClientTimeout(total=10)) as http:

            async def crawl(ok=(200,)):
                nonlocal requests
                for path in gets:
                    async with http.get(url + path, headers=headers) as r:
                        await r.read()
                        requests += 1
                        if r.status not in ok and not (path == "/health" and r.status == 503):
                            raise SystemExit(f"GET {path}: {r.status}")

            await until(lambda: svc.pipeline.stats.vectors >= 5, 60)
            await crawl()
            async with http.post(url + "/v1/sim/button?hold_ms=0", headers=headers) as r:
                body = await r.json()
                requests += 1
                if r.status != 200 or not body["paused"]:
                    raise SystemExit(f"POST /v1/sim/button: {r.status} {body}")
            await crawl()  # while paused
            if not await svc.privacy.resume("api"):
                raise SystemExit("resume: not paused")
            await crawl()
            await until(lambda: svc.pipeline.stats.state != "running", 180)
            await crawl()  # the source ended: /health says degraded (503)
    finally:
        await runner.cleanup()  # stops the pipeline, closes the camera, joins the workers
    st = svc.pipeline.stats
    return {"state": st.state, "error": st.error, "frames": st.frames_processed, "frames_captured": st.frames_captured,
            "vectors": st.vectors, "optouts": svc.privacy.optouts, "requests": requests, "gets": gets,
            "audit_write_errors": svc.audit.write_errors}


report = asyncio.run(main())
report.update(violations=violations, audit_writes=sum(e != "os.mkdir" for e, _ in allowed), allowed=allowed[:20])
print("REPORT " + json.dumps(report), flush=True)
'''


def _snapshot(*roots: Path) -> dict[str, tuple]:
    """Every file and folder under ``roots`` (not following links): files with mtime and size."""
    out: dict[str, tuple] = {}
    for root in roots:
        if root.is_file():
            st = root.lstat()
            out[str(root)] = (st.st_mtime_ns, st.st_size)
            continue
        for d, dirs, files in os.walk(root):
            dirs[:] = [x for x in dirs if x not in SKIP_DIRS]
            out[d] = ("dir",)
            for name in files:
                p = os.path.join(d, name)
                try:
                    st = os.lstat(p)
                except FileNotFoundError:
                    continue
                out[p] = (st.st_mtime_ns, st.st_size)
    return out


def test_the_running_service_writes_nothing_but_its_audit_log(models_dir, vtest, tmp_path):
    tmp_path = tmp_path.resolve()
    audit_dir = tmp_path / "audit"
    home = tmp_path / "home"
    for d in (audit_dir, home, home / "tmp", home / ".cache", home / ".config", home / ".local" / "share"):
        d.mkdir(parents=True)
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    tree = tmp_path / "tree"
    for name in TREE:
        shutil.copytree(ROOT / name, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
    real = [ROOT / name for name in (*TREE, ".cuecam")] + [p for p in ROOT.iterdir() if p.is_file()]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CUECAM_", "PYTHON", "XDG_", "TMP", "TEMP"))}
    env.update(CUECAM_API_TOKEN=TOKEN, PYTHONDONTWRITEBYTECODE="1", HOME=str(home), TMPDIR=str(home / "tmp"),
               XDG_CACHE_HOME=str(home / ".cache"), XDG_CONFIG_HOME=str(home / ".config"),
               XDG_DATA_HOME=str(home / ".local" / "share"))
    before = _snapshot(tmp_path, *real)
    proc = subprocess.run([sys.executable, str(probe), str(audit_dir), str(tree)], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=240)
    after = _snapshot(tmp_path, *real)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, f"probe failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    report = json.loads(lines[-1].removeprefix("REPORT "))

    assert report["state"] == "ended", report
    assert report["frames"] >= 700, report
    assert report["vectors"] > 0, report
    assert report["optouts"] == 1 and report["audit_write_errors"] == 0, report
    assert set(report["gets"]) >= {"/v1/vectors", "/v1/aggregates", "/v1/status", "/metrics", "/v1/privacy",
                                   "/v1/audit", "/openapi.json", "/health"}
    assert report["audit_writes"] >= 1, "the hook saw no write at all, not even the audit log's"
    assert report["violations"] == [], report["violations"]

    # C-level writes: only the audit log may have appeared or changed
    audit = str(audit_dir / "audit.jsonl")
    changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
    assert changed == [audit], changed
    entries = [json.loads(x) for x in Path(audit).read_text().splitlines()]
    assert [(e["event"], e["source"]) for e in entries] == [("optout", "button"), ("resume", "api")]
