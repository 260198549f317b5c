"""First boot of a provisioned card: move the provisioning bundle from the boot partition into /etc/cuecam.

    python -m firmware.firstboot [--boot /boot/firmware --boot /boot] [--etc /etc/cuecam] [--owner cuecam] [--json]

``cuecam provision --boot DIR`` writes ``DIR/cuecam/`` onto a freshly flashed card's FAT boot
partition (:data:`BUNDLE_FILES`: device.json, board.yaml, api-token, and with ``--tls`` the
device's certificate and key; with ``--pair`` the keys of opt-out companions, companions/NAME.key,
installed 0600 for the service user and scrubbed like the token). On the board, cuecam-firstboot.service runs this before
cuecam.service. It

1. finds the first ``BOOT/cuecam/device.json`` and reads the bundle (only the known names, regular
   files, each size-capped), and checks it: device.json, a valid board config, a well-formed token,
   a PEM certificate and key;
2. writes each file into ``/etc/cuecam`` atomically (temp file, fsync, rename) with its owner and
   mode: the API token and the TLS key 0600 owned by the service user, board.yaml 0640 root:cuecam,
   device.json and the certificate 0644;
3. removes device.json from the boot partition (so the bundle is never installed twice), then
   overwrites the secrets (token, TLS key) with zeros in place, fsyncs, and deletes the rest of the
   bundle. A bundle folder left without device.json (power cut during step 3) is scrubbed and
   deleted at the next run.

Nothing to do (every later boot) is exit 0. A bad bundle is exit 2 with a message naming the
file and nothing is changed. Exit 1: the files could not be written.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import re
import stat
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .fsutil import atomic_write_bytes, fsync_dir

BUNDLE_DIR = "cuecam"
TRIGGER = "device.json"
MAX_FILE_BYTES = 64 * 1024
TOKEN_MIN, TOKEN_MAX = 16, 256
# name in the bundle -> (mode in /etc/cuecam, owned by the service user (else root:service group), secret)
BUNDLE_FILES: dict[str, tuple[int, bool, bool]] = {
    "device.json": (0o644, False, False),
    "board.yaml": (0o640, False, False),
    "api-token": (0o600, True, True),
    "tls/device.crt": (0o644, False, False),
    "tls/device.key": (0o600, True, True),
}
REQUIRED = ("device.json", "board.yaml", "api-token")
# and any number (up to 32) of opt-out companions' keys, `cuecam provision --pair DIR`: secret like the token
COMPANION_KEY = re.compile(r"^companions/[A-Za-z0-9][A-Za-z0-9-]{0,62}\.key$")
COMPANION_KEY_SPEC = (0o600, True, True)
MAX_COMPANION_KEYS = 32


def file_spec(rel: str) -> tuple[int, bool, bool] | None:
    """(mode, owned by the service user, secret) of a file a bundle may hold, or None."""
    return BUNDLE_FILES.get(rel) or (COMPANION_KEY_SPEC if COMPANION_KEY.match(rel) else None)


def secret_names(names: list[str]) -> list[str]:
    return [n for n in names if (spec := file_spec(n)) is not None and spec[2]]


class BundleError(ValueError):
    """The provisioning bundle is malformed; the message names the file."""


@dataclass(frozen=True)
class Owner:
    uid: int
    gid: int

    @classmethod
    def named(cls, name: str) -> Owner:
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            raise BundleError(f"no user {name!r} on this system: run install.sh first (it creates the cuecam user)") from None
        return cls(pw.pw_uid, pw.pw_gid)


def validate_board_yaml(text: str, source: str) -> None:
    """The board config must load with the firmware's strict loader. ``api.tls`` (written by
    ``cuecam provision --tls``) is checked only by firmware that knows the key."""
    import yaml

    from .config import ApiConfig, parse_config
    from .errors import ConfigError

    if "tls" not in ApiConfig.model_fields:
        data = yaml.safe_load(text)
        if isinstance(data, dict) and isinstance(data.get("api"), dict) and "tls" in data["api"]:
            data["api"] = {k: v for k, v in data["api"].items() if k != "tls"}
            text = yaml.safe_dump(data, sort_keys=False)
    try:
        parse_config(text, source)
    except ConfigError as e:
        raise BundleError(str(e)) from e


def check_token(raw: bytes, source: str) -> None:
    try:
        value = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise BundleError(f"{source}: the API token is not UTF-8 text") from None
    if not TOKEN_MIN <= len(value) <= TOKEN_MAX or any(c.isspace() for c in value) or not value.isprintable():
        raise BundleError(f"{source}: the API token must be {TOKEN_MIN}-{TOKEN_MAX} printable characters without spaces")


def check_device_json(raw: bytes, source: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise BundleError(f"{source}: not JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("schema") != 1 or not isinstance(doc.get("name"), str):
        raise BundleError(f"{source}: expected an object with schema 1 and a device name")
    return doc


def _read(path: Path) -> bytes:
    st = path.lstat()
    if not stat.S_ISREG(st.st_mode):
        raise BundleError(f"{path}: not a regular file")
    if st.st_size > MAX_FILE_BYTES:
        raise BundleError(f"{path}: {st.st_size} bytes, more than the {MAX_FILE_BYTES} a bundle file may have")
    with path.open("rb") as f:
        return f.read(MAX_FILE_BYTES + 1)


def read_bundle(bundle: Path) -> dict[str, bytes]:
    """The bundle's files by name, checked; BundleError names the first problem."""
    files: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(bundle):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            rel = Path(dirpath, name).relative_to(bundle).as_posix()
            if file_spec(rel) is None:
                raise BundleError(f"{bundle / rel}: not a file a provisioning bundle holds "
                                  f"({', '.join(BUNDLE_FILES)}, companions/NAME.key)")
            files[rel] = _read(bundle / rel)
    for need in REQUIRED:
        if need not in files:
            raise BundleError(f"{bundle / need} is missing: write the bundle again with `cuecam provision --boot`")
    if ("tls/device.crt" in files) != ("tls/device.key" in files):
        raise BundleError(f"{bundle / 'tls'}: device.crt and device.key go together")
    keys = [n for n in files if COMPANION_KEY.match(n)]
    if len(keys) > MAX_COMPANION_KEYS:
        raise BundleError(f"{bundle / 'companions'}: at most {MAX_COMPANION_KEYS} companion keys")
    for n in keys:
        if not re.fullmatch(rb"[0-9a-f]{64}\n?", files[n]):
            raise BundleError(f"{bundle / n}: a companion key is 64 hex characters (`cuecam provision --companion`)")
    check_device_json(files["device.json"], str(bundle / "device.json"))
    check_token(files["api-token"], str(bundle / "api-token"))
    try:
        board_text = files["board.yaml"].decode("utf-8")
    except UnicodeDecodeError:
        raise BundleError(f"{bundle / 'board.yaml'}: not UTF-8 text") from None
    validate_board_yaml(board_text, str(bundle / "board.yaml"))
    if "tls/device.crt" in files:
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        try:
            cert = x509.load_pem_x509_certificate(files["tls/device.crt"])
            key = load_pem_private_key(files["tls/device.key"], password=None)
        except (ValueError, TypeError) as e:
            raise BundleError(f"{bundle / 'tls'}: the certificate or key is not valid PEM ({e})") from None
        if cert.public_key().public_numbers() != key.public_key().public_numbers():  # type: ignore[union-attr]
            raise BundleError(f"{bundle / 'tls'}: device.key does not belong to device.crt")
    return files


def _scrub(path: Path) -> None:
    """Overwrite a secret in place with zeros (FAT rewrites the same clusters) before unlinking."""
    try:
        size = path.lstat().st_size
        with path.open("r+b") as f:
            f.write(b"\0" * size)
            f.flush()
            os.fsync(f.fileno())
    except FileNotFoundError:
        return
    path.unlink()


def remove_bundle(bundle: Path) -> None:
    trigger = bundle / TRIGGER
    if trigger.exists():
        trigger.unlink()
        fsync_dir(bundle)
    present = [Path(d, f).relative_to(bundle).as_posix() for d, _, fs in os.walk(bundle) for f in fs]
    for name in secret_names(present):
        _scrub(bundle / name)
    for dirpath, dirnames, filenames in os.walk(bundle, topdown=False):
        for n in filenames:
            os.unlink(os.path.join(dirpath, n))
        for n in dirnames:
            os.rmdir(os.path.join(dirpath, n))
    bundle.rmdir()
    fsync_dir(bundle.parent)


def install(files: dict[str, bytes], etc: Path, owner: Owner) -> list[str]:
    etc.mkdir(parents=True, exist_ok=True)
    os.chown(etc, 0 if os.geteuid() == 0 else -1, owner.gid)
    etc.chmod(0o750)
    written = []
    for name, data in files.items():
        spec = file_spec(name)
        assert spec is not None, name  # read_bundle let only these through
        mode, service_owned, _ = spec
        dest = etc / name
        if dest.parent != etc:
            dest.parent.mkdir(exist_ok=True)
            os.chown(dest.parent, 0 if os.geteuid() == 0 else -1, owner.gid)
            dest.parent.chmod(0o750)
        atomic_write_bytes(dest, data, mode=mode)
        os.chown(dest, owner.uid if service_owned else (0 if os.geteuid() == 0 else -1), owner.gid)
        dest.chmod(mode)
        written.append(str(dest))
    fsync_dir(etc)
    return written


class DirMedium:
    """A mounted boot partition (the board: /boot/firmware)."""

    def __init__(self, boot: Path) -> None:
        self.bundle = boot / BUNDLE_DIR
        self.where = str(self.bundle)

    def present(self) -> bool:
        return self.bundle.is_dir()

    def triggered(self) -> bool:
        return (self.bundle / TRIGGER).is_file()

    def read(self) -> dict[str, bytes]:
        return read_bundle(self.bundle)

    def remove(self) -> None:
        remove_bundle(self.bundle)


class FatImage:
    """A FAT boot partition image, read and changed with mtools (no mount needed): a card image
    prepared offline, and how the tests prove the scrub on a real FAT file system."""

    def __init__(self, image: Path) -> None:
        self.image = image
        self.where = f"{image}::/{BUNDLE_DIR}"

    def _m(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        import shutil

        exe = shutil.which(cmd[0])
        if exe is None:
            raise OSError(f"{cmd[0]} is missing: apt-get install mtools")
        r = subprocess.run([exe, "-i", str(self.image), *cmd[1:]], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
        if check and r.returncode != 0:
            raise OSError(f"{cmd[0]} on {self.image}: {(r.stderr or r.stdout).strip()[:300]}")
        return r

    def present(self) -> bool:
        return self._m("mdir", "-b", f"::/{BUNDLE_DIR}", check=False).returncode == 0

    def triggered(self) -> bool:
        return self._m("mdir", "-b", f"::/{BUNDLE_DIR}/{TRIGGER}", check=False).returncode == 0

    def read(self) -> dict[str, bytes]:
        with tempfile.TemporaryDirectory() as tmp:
            self._m("mcopy", "-s", "-n", f"::/{BUNDLE_DIR}", tmp)
            return read_bundle(Path(tmp) / BUNDLE_DIR)

    def remove(self) -> None:
        if self.triggered():
            self._m("mdel", f"::/{BUNDLE_DIR}/{TRIGGER}")
        listing = self._m("mdir", "-b", "-/", f"::/{BUNDLE_DIR}", check=False).stdout.splitlines()
        present = [line.strip().split(f"::/{BUNDLE_DIR}/", 1)[1] for line in listing if f"::/{BUNDLE_DIR}/" in line]
        for name in dict.fromkeys(secret_names([n.rstrip("/") for n in present] + list(BUNDLE_FILES))):
            self._zero_clusters(f"::/{BUNDLE_DIR}/{name}")
        self._m("mdeltree", f"::/{BUNDLE_DIR}")

    def _zero_clusters(self, path: str) -> None:
        """Overwrite every cluster of ``path`` with zeros in the image itself (mtools would
        allocate a fresh cluster for new content, leaving the secret in the old one)."""
        r = self._m("mshowfat", path, check=False)
        if r.returncode != 0:
            return  # not there
        runs = [(int(a), int(b or a)) for a, b in re.findall(r"<(\d+)(?:-(\d+))?>", r.stdout)]
        first_data, cluster_bytes = fat_geometry(self.image)
        with self.image.open("r+b") as f:
            for a, b in runs:
                for c in range(a, b + 1):
                    f.seek(first_data + (c - 2) * cluster_bytes)
                    f.write(b"\0" * cluster_bytes)
            f.flush()
            os.fsync(f.fileno())


def fat_geometry(image: Path) -> tuple[int, int]:
    """(byte offset of cluster 2, bytes per cluster) from a FAT12/16/32 boot sector."""
    with image.open("rb") as f:
        bs = f.read(512)
    if len(bs) < 512 or bs[510:512] != b"\x55\xaa":
        raise OSError(f"{image}: no FAT boot sector")
    bps, spc, reserved, nfats, root_entries = struct.unpack_from("<HBHBH", bs, 11)
    fat_size = struct.unpack_from("<H", bs, 22)[0] or struct.unpack_from("<I", bs, 36)[0]
    if bps not in (512, 1024, 2048, 4096) or spc == 0 or nfats == 0 or fat_size == 0:
        raise OSError(f"{image}: implausible FAT geometry")
    root_sectors = (root_entries * 32 + bps - 1) // bps
    return (reserved + nfats * fat_size + root_sectors) * bps, spc * bps


def run(boots: list[Path], etc: Path, owner_name: str) -> tuple[int, dict[str, Any]]:
    for boot in boots:
        medium: DirMedium | FatImage = FatImage(boot) if boot.is_file() else DirMedium(boot)
        if not medium.present():
            continue
        if not medium.triggered():
            medium.remove()  # left over from an interrupted scrub: the config is already installed
            return 0, {"installed": False, "scrubbed": medium.where}
        files = medium.read()
        owner = Owner.named(owner_name)
        written = install(files, etc, owner)
        medium.remove()
        device = check_device_json(files["device.json"], "device.json")
        return 0, {"installed": True, "device": device["name"], "from": medium.where, "files": written}
    return 0, {"installed": False, "reason": "no provisioning bundle on " + ", ".join(map(str, boots))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m firmware.firstboot", description=__doc__.splitlines()[0])
    ap.add_argument("--boot", type=Path, action="append", help="boot partition mount point, or a FAT image file "
                    "(repeatable; default /boot/firmware then /boot)")
    ap.add_argument("--etc", type=Path, default=Path("/etc/cuecam"))
    ap.add_argument("--owner", default="cuecam", help="the service user that must read the token and key")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    boots = a.boot or [Path("/boot/firmware"), Path("/boot")]
    try:
        code, result = run(boots, a.etc, a.owner)
    except BundleError as e:
        print(f"cuecam-firstboot: bad provisioning bundle, nothing installed: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"cuecam-firstboot: cannot install the provisioning bundle: {e}", file=sys.stderr)
        return 1
    if a.json:
        print(json.dumps(result))
    elif result["installed"]:
        print(f"cuecam-firstboot: device {result['device']} provisioned into {a.etc}; bundle removed from {result['from']}")
    else:
        print(f"cuecam-firstboot: {result.get('reason') or 'scrubbed ' + result['scrubbed']}")
    return code


if __name__ == "__main__":
    sys.exit(main())
