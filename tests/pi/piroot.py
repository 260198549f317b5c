"""An emulated Raspberry Pi OS userland for ``make test-pi``: Debian bookworm arm64 + aarch64 wheels.

    python tests/pi/piroot.py build [--cache .cache/pi]     # idempotent; prints key: value timings

What it builds, under ``.cache/pi/`` (gitignored), each part only when its inputs changed:

- ``root/``: ``mmdebstrap --variant=extract --architectures=arm64 bookworm`` with python3,
  python3-numpy (1.24), python3-yaml, python3-gpiozero and the C++ runtime. ``extract`` skips the
  maintainer scripts, so the libblas/liblapack links that update-alternatives would have made are
  added here.
- ``wheels/``: the aarch64 wheels of cuecam's dependencies (``pip download --platform
  manylinux_2_xx_aarch64 --only-binary=:all:``), resolved against a constraint that pins numpy to
  the version inside the root, exactly as install.sh pins it to the board's apt numpy.
- ``site/``: those wheels unpacked (``pip install --target --no-deps``) without numpy and PyYAML,
  which come from the root's apt packages. Emulated python3 runs with ``PYTHONPATH=site:repo``.
- ``cpuinfo``: a Cortex-A76-style /proc/cpuinfo. XNNPACK's cpuinfo library segfaults under
  qemu-user when it reads an x86 one, so the firmware runs in ``unshare -m`` with this file
  bind-mounted over /proc/cpuinfo (:func:`emulated_command`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = REPO / ".cache" / "pi"
SUITE = "bookworm"
ROOT_PACKAGES = ["python3", "python3-numpy", "python3-yaml", "python3-gpiozero", "libstdc++6", "libgcc-s1"]
# Provided by the root's apt packages (as on the board, where install.sh apt-installs them).
FROM_APT = {"numpy", "pyyaml"}
# pip does not widen a manylinux_2_36 platform to the older tags, so every one glibc 2.36 runs is listed.
PLATFORMS = ["manylinux2014_aarch64"] + [f"manylinux_2_{v}_aarch64" for v in (17, 24, 26, 27, 28, 31, 34, 35, 36)]
TOOLS = {"mmdebstrap": "mmdebstrap", "qemu-aarch64-static": "qemu-user-static", "unshare": "util-linux"}
BUILD_TIMEOUT_S = 1200
LIBDIR = "usr/lib/aarch64-linux-gnu"

CPUINFO_CORE = """processor\t: {n}
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x4
CPU part\t: 0xd0b
CPU revision\t: 1

"""


class PiRootError(RuntimeError):
    pass


def missing_tools() -> list[str]:
    """Debian packages to install for the tools this needs (empty when all are there)."""
    return sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None})


def requirements() -> list[str]:
    """cuecam's runtime dependencies from pyproject.toml, without those the root gets from apt."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    out = []
    for d in deps:
        name = re.split(r"[\s<>=!~;\[]", d, maxsplit=1)[0].lower().replace("_", "-")
        if name not in FROM_APT:
            out.append(d)
    return out


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _stamp_ok(d: Path, digest: str) -> bool:
    return (d / ".stamp").is_file() and (d / ".stamp").read_text().strip() == digest


def _fresh(d: Path) -> Path:
    tmp = d.with_name(d.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def _commit(tmp: Path, d: Path, digest: str) -> None:
    (tmp / ".stamp").write_text(digest + "\n")
    shutil.rmtree(d, ignore_errors=True)
    tmp.rename(d)


def _run(cmd: list[str], what: str, **kw: object) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, **kw)  # type: ignore[call-overload]
    if r.returncode != 0:
        tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-25:])
        raise PiRootError(f"{what} failed (exit {r.returncode}): {' '.join(cmd[:6])} ...\n{tail}")


def build_root(cache: Path) -> tuple[Path, bool]:
    root = cache / "root"
    digest = _digest(SUITE, ROOT_PACKAGES)
    if _stamp_ok(root, digest):
        return root, False
    tmp = _fresh(root)
    _run(["mmdebstrap", "--variant=extract", "--architectures=arm64", "--include=" + ",".join(ROOT_PACKAGES),
          SUITE, str(tmp)], "mmdebstrap")
    lib = tmp / LIBDIR
    for name, sub in (("libblas.so.3", "blas"), ("liblapack.so.3", "lapack")):
        # what update-alternatives (a maintainer script, skipped by --variant=extract) would link
        if not (lib / sub / name).exists():
            raise PiRootError(f"{lib / sub / name} is missing from the root")
        link = lib / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(f"{sub}/{name}")
    _commit(tmp, root, digest)
    return root, True


def apt_numpy_version(root: Path) -> str:
    dist = root / "usr/lib/python3/dist-packages"
    found = sorted(p.name for p in dist.glob("numpy-*.egg-info")) + sorted(p.name for p in dist.glob("numpy-*.dist-info"))
    if not found:
        raise PiRootError(f"no numpy in {dist}: is python3-numpy in the root?")
    return found[0].split("-")[1].removesuffix(".egg").removesuffix(".dist")


def _platform_args() -> list[str]:
    args = []
    for p in PLATFORMS:
        args += ["--platform", p]
    return args + ["--python-version", "3.11", "--implementation", "cp", "--only-binary=:all:"]


def build_wheels(cache: Path, numpy_version: str) -> tuple[Path, bool]:
    wheels = cache / "wheels"
    constraints = _constraints(numpy_version)
    reqs = requirements()
    digest = _digest(reqs, constraints, PLATFORMS)
    if _stamp_ok(wheels, digest):
        return wheels, False
    tmp = _fresh(wheels)
    tmp.mkdir(parents=True)
    (tmp / "constraints.txt").write_text(constraints)
    _run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "-d", str(tmp),
          *_platform_args(), "-c", str(tmp / "constraints.txt"), *reqs], "pip download (aarch64 wheels)")
    _commit(tmp, wheels, digest)
    return wheels, True


def _constraints(numpy_version: str) -> str:
    """tests/bookworm-constraints.txt with numpy pinned to the root's apt numpy."""
    lines = [f"numpy=={numpy_version}"]
    for line in (REPO / "tests" / "bookworm-constraints.txt").read_text().splitlines():
        s = line.split("#", 1)[0].strip()
        if s and not s.lower().startswith(("numpy", "tflite-runtime")):
            lines.append(s)
    return "\n".join(lines) + "\n"


def build_site(cache: Path, wheels: Path) -> tuple[Path, bool]:
    site = cache / "site"
    files = sorted(p.name for p in wheels.glob("*.whl"))
    keep = [f for f in files if re.split(r"-", f, maxsplit=1)[0].lower().replace("_", "-") not in FROM_APT]
    digest = _digest(keep)
    if _stamp_ok(site, digest):
        return site, False
    tmp = _fresh(site)
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-index", "--no-deps",
          "--target", str(tmp), *_platform_args(), *[str(wheels / f) for f in keep]], "pip install --target (aarch64)")
    _commit(tmp, site, digest)
    return site, True


def build(cache: Path = DEFAULT_CACHE) -> dict[str, object]:
    """Build (or reuse) the root, the wheels and the site dir; return paths and timings."""
    miss = missing_tools()
    if miss:
        raise PiRootError(f"missing tools: apt-get install -y {' '.join(miss)}  (.ci/run installs them)")
    cache.mkdir(parents=True, exist_ok=True)
    out: dict[str, object] = {}
    t0 = time.monotonic()
    root, built = build_root(cache)
    out["root_build_s"] = round(time.monotonic() - t0, 1) if built else 0.0
    numpy_version = apt_numpy_version(root)
    t1 = time.monotonic()
    wheels, built = build_wheels(cache, numpy_version)
    out["wheels_download_s"] = round(time.monotonic() - t1, 1) if built else 0.0
    t2 = time.monotonic()
    site, built = build_site(cache, wheels)
    out["site_install_s"] = round(time.monotonic() - t2, 1) if built else 0.0
    cpuinfo = cache / "cpuinfo"
    text = "".join(CPUINFO_CORE.format(n=n) for n in range(4))
    if not cpuinfo.is_file() or cpuinfo.read_text() != text:
        cpuinfo.write_text(text)
    out.update(root=str(root), wheels=str(wheels), site=str(site), cpuinfo=str(cpuinfo), apt_numpy=numpy_version,
               build_total_s=round(time.monotonic() - t0, 1))
    return out


def emulated_command(root: Path, cpuinfo: Path, argv: list[str]) -> list[str]:
    """``argv`` (an aarch64 program inside ``root`` and its arguments) under qemu-user, in a private
    mount namespace whose /proc/cpuinfo is the ARM one. Needs root (unshare -m, mount --bind)."""
    script = 'mount --bind "$1" /proc/cpuinfo || exit 97; shift; exec "$@"'
    return ["unshare", "-m", "sh", "-c", script, "sh", str(cpuinfo), "qemu-aarch64-static", "-L", str(root),
            str(root / argv[0].lstrip("/")), *argv[1:]]


def emulated_env(site: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO)])
    env.update(extra or {})
    return env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python tests/pi/piroot.py", description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["build"])
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    a = ap.parse_args(argv)
    try:
        info = build(a.cache)
    except (PiRootError, subprocess.TimeoutExpired) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for k, v in info.items():
        print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
