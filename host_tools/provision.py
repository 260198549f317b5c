"""``cuecam provision``: one device's identity and config, for the gateway or onto a card's boot partition.

    cuecam provision --template board_configs/rpi5.yaml --name shelf-3 --out devices/ [--json]
    cuecam provision --template board_configs/rpi5.yaml --name shelf-3 --boot /media/$USER/bootfs \\
        [--gateway http://10.0.0.2:9000] [--ota-pub keys/cuecam-ota.pub] [--tls] [--ip 10.0.0.31] [--json]

Generates an API token (256 bit, ``secrets``) and a board config from a template (one of
board_configs/*.yaml) with the device name, the token path /etc/cuecam/api-token, the trusted OTA
public keys and, with ``--tls``, ``api.tls`` pointing at a self-signed device certificate and key
(``cryptography``, ECDSA P-256, SAN = name, name.local and any ``--ip``).

- ``--out DIR``: ``DIR/NAME/`` gets board.yaml, api-token (0600), device.json and tls/: what the
  gateway config lists (the token file path is printed, never the token).
- ``--boot DIR``: ``DIR/cuecam/`` on a freshly flashed card's boot partition (mounted at DIR), or,
  when DIR is a FAT image file (e.g. a boot partition image), written into it with mtools. On first
  boot cuecam-firstboot.service moves the bundle into /etc/cuecam with the right owners and modes
  and scrubs the secrets off the FAT partition (firmware/firstboot.py).

Existing files are not replaced without ``--force`` (a new token locks the gateway out).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

import yaml

from firmware.firstboot import BUNDLE_DIR, BundleError, FatImage, file_spec, read_bundle, validate_board_yaml
from firmware.fsutil import atomic_write_bytes

ETC = "/etc/cuecam"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$")  # also a DNS label for the certificate
CERT_DAYS = 3650
MTOOLS_TIMEOUT_S = 60


class ProvisionError(Exception):
    pass


def _ota_keys(values: list[str]) -> list[str]:
    from ota.bundle import BundleError as KeyFileError
    from ota.bundle import load_public_key, public_key_hex

    keys = []
    for v in values:
        if re.fullmatch(r"[0-9a-f]{64}", v):
            keys.append(v)
            continue
        try:
            keys.append(public_key_hex(load_public_key(Path(v))))
        except (OSError, ValueError, KeyFileError) as e:
            raise ProvisionError(f"--ota-pub {v}: not a key file from `cuecam ota keygen` nor 64 hex characters ({e})") from e
    if len(set(keys)) > 8:
        raise ProvisionError("at most 8 OTA public keys (ota.trusted_keys)")
    return sorted(set(keys), key=keys.index)


def board_config(template: Path, name: str, *, ota_keys: list[str], tls: bool, port: int | None,
                 gateway: str | None = None, companions: list[dict[str, Any]] | None = None) -> str:
    try:
        text = template.read_text(encoding="utf-8")
    except OSError as e:
        raise ProvisionError(f"cannot read the template {template}: {e.strerror or e}") from e
    data = yaml.safe_load(text)
    if not isinstance(data, dict) or not isinstance(data.get("board"), dict):
        raise ProvisionError(f"{template} is not a board config (no board: section)")
    data["board"]["name"] = name
    api = dict(data.get("api") or {})
    api["token_file"] = f"{ETC}/api-token"
    api.pop("generate_token", None)
    if port is not None:
        api["port"] = port
    if tls:
        api["tls"] = {"cert": f"{ETC}/tls/device.crt", "key": f"{ETC}/tls/device.key"}
    data["api"] = api
    if ota_keys:
        data["ota"] = {**(data.get("ota") or {}), "trusted_keys": ota_keys}
    if companions:
        privacy = data["privacy"] = dict(data.get("privacy") or {})
        optout = privacy["optout"] = dict(privacy.get("optout") or {})
        names = {c["name"] for c in companions}
        optout["companions"] = [c for c in optout.get("companions") or [] if c.get("name") not in names] + companions
    if gateway:
        # the board pulls updates from its gateway (POST /v1/ota/pull): allow that host, and only it
        host = urllib.parse.urlsplit(gateway).hostname
        if host:
            ota = dict(data.get("ota") or {})
            ota["pull_hosts"] = sorted({*(ota.get("pull_hosts") or []), host})
            data["ota"] = ota
    out = (f"# cuecam board config for {name}, from {template.name} by `cuecam provision`.\n"
           f"# Installed as {ETC}/board.yaml; paths are absolute, as on the board.\n")
    out += yaml.safe_dump(data, sort_keys=False)
    try:
        validate_board_yaml(out, f"{template.name} for {name}")
    except BundleError as e:
        raise ProvisionError(f"the generated config is invalid: {e}") from e
    return out


def tls_pair(name: str, ips: list[str]) -> tuple[bytes, bytes, str]:
    """A self-signed ECDSA P-256 certificate and its key (PEM), and the certificate's sha256."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cuecam")])
    alt: list[x509.GeneralName] = [x509.DNSName(name), x509.DNSName(f"{name}.local")]
    alt += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return cert_pem, key_pem, cert.fingerprint(hashes.SHA256()).hex()


def make_bundle(args: argparse.Namespace) -> tuple[dict[str, bytes], dict[str, Any]]:
    if not NAME_RE.match(args.name):
        raise ProvisionError(f"--name {args.name!r}: 1-63 letters, digits and '-', starting with a letter or digit")
    for ip in args.ip:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise ProvisionError(f"--ip {ip!r} is not an IP address") from None
    if args.gateway and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", args.gateway):
        raise ProvisionError(f"--gateway {args.gateway!r}: expected a URL such as http://10.0.0.2:9000")
    from .companion_provision import paired

    pairs = [paired(d) for d in args.pair]
    cfg = board_config(args.template, args.name, ota_keys=_ota_keys(args.ota_pub), tls=args.tls, port=args.port,
                       companions=[entry for entry, _ in pairs],
                       gateway=args.gateway)
    kind = yaml.safe_load(cfg)["board"]["kind"]
    token = secrets.token_urlsafe(32)  # 256 bits
    device = {"schema": 1, "name": args.name, "kind": kind, "template": args.template.name, "gateway": args.gateway,
              "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "tls_sha256": None}
    files: dict[str, bytes] = {"board.yaml": cfg.encode(), "api-token": token.encode() + b"\n"}
    for entry, key in pairs:
        files[f"companions/{entry['name']}.key"] = key
    if args.tls:
        cert, key, fp = tls_pair(args.name, args.ip)
        files["tls/device.crt"], files["tls/device.key"] = cert, key
        device["tls_sha256"] = fp
    files["device.json"] = json.dumps(device, indent=2).encode() + b"\n"
    info = {"device": args.name, "kind": kind, "gateway": args.gateway, "tls_sha256": device["tls_sha256"],
            "ota_trusted_keys": len(_ota_keys(args.ota_pub)),
            "token_sha256": hashlib.sha256(token.encode()).hexdigest()[:16]}
    return files, info


def write_dir(dest: Path, files: dict[str, bytes], force: bool) -> None:
    clash = [n for n in files if (dest / n).exists()]
    if clash and not force:
        raise ProvisionError(f"{dest} already holds {', '.join(clash)}: use --force to replace them (a new token)")
    for name, data in files.items():
        spec = file_spec(name)
        assert spec is not None, name
        atomic_write_bytes(dest / name, data, mode=spec[0])


def _mtools(*cmd: str) -> str:
    exe = shutil.which(cmd[0])
    if exe is None:
        raise ProvisionError(f"{cmd[0]} is missing: apt-get install mtools (needed to write into a FAT image)")
    r = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=MTOOLS_TIMEOUT_S,
                       env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
    if r.returncode != 0:
        raise ProvisionError(f"{' '.join(cmd[:2])}: {(r.stderr or r.stdout).strip()[:500]}")
    return r.stdout


def write_fat_image(image: Path, files: dict[str, bytes], force: bool) -> None:
    listing = subprocess.run(["mdir", "-b", "-i", str(image), f"::/{BUNDLE_DIR}"], capture_output=True, text=True,
                             timeout=MTOOLS_TIMEOUT_S, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
    if listing.returncode == 0:
        if not force:
            raise ProvisionError(f"{image} already holds ::/{BUNDLE_DIR}: use --force to replace it (a new token)")
        _mtools("mdeltree", "-i", str(image), f"::/{BUNDLE_DIR}")
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp) / BUNDLE_DIR
        write_dir(stage, files, force=False)
        _mtools("mcopy", "-s", "-i", str(image), str(stage), "::/")
    FatImage(image).read()  # read back off the FAT file system and checked as first boot will


def run(args: argparse.Namespace) -> int:
    from . import companion_provision

    try:
        if args.companion is not None:
            info = companion_provision.make(args)
            print(json.dumps(info, indent=2) if args.json else companion_provision.summary(info))
            return 0
        if args.template is None or args.name is None:
            raise ProvisionError("--template and --name are required (or --companion NAME for an opt-out companion)")
        if args.boot is None and args.out is None:
            raise ProvisionError("give --out DIR (files for the gateway) or --boot DIR (a card's boot partition)")
        files, info = make_bundle(args)
        if args.boot is not None:
            if args.boot.is_file():
                write_fat_image(args.boot, files, args.force)
                where = f"{args.boot}::/{BUNDLE_DIR}"
            elif args.boot.is_dir():
                write_dir(args.boot / BUNDLE_DIR, files, args.force)
                read_bundle(args.boot / BUNDLE_DIR)  # what first boot will check
                where = str(args.boot / BUNDLE_DIR)
            else:
                raise ProvisionError(f"--boot {args.boot}: no such directory (mount the card's boot partition) or FAT image")
            info |= {"boot_bundle": where, "installs_to": ETC}
        else:
            dest = args.out / args.name
            write_dir(dest, files, args.force)
            info |= {"dir": str(dest), "config": str(dest / "board.yaml"), "token_file": str(dest / "api-token"),
                     "device_json": str(dest / "device.json")}
            if args.tls:
                info |= {"tls_cert": str(dest / "tls/device.crt")}
    except (ProvisionError, BundleError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (OSError, subprocess.TimeoutExpired) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"cuecam: device {info['device']} ({info['kind']}) provisioned: {info.get('boot_bundle') or info['dir']}")
    return 0


def add_parser(sub: Any) -> None:
    from . import companion_provision

    p = sub.add_parser("provision", help="make a device's API token and board config (for the gateway, or onto a card), "
                       "or an opt-out companion's key and config (--companion)")
    p.add_argument("--template", type=Path, help="a board config to start from (board_configs/*.yaml)")
    p.add_argument("--name", help="the device name (board.name; a DNS label)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, help="write DIR/NAME/{board.yaml,api-token,device.json}")
    where.add_argument("--boot", type=Path, help="a card's mounted boot partition, or a FAT image file: writes cuecam/ into it")
    p.add_argument("--gateway", help="the store gateway's URL, kept in device.json")
    p.add_argument("--ota-pub", action="append", default=[], help="trusted OTA public key file or hex (repeatable)")
    p.add_argument("--tls", action="store_true", help="also a self-signed device certificate and key (api.tls)")
    p.add_argument("--ip", action="append", default=[], help="an IP address for the certificate's SAN (repeatable)")
    p.add_argument("--port", type=int, choices=range(1, 65536), metavar="PORT", help="api.port (default: the template's)")
    p.add_argument("--force", action="store_true", help="replace an existing bundle (new token)")
    p.add_argument("--pair", action="append", default=[], type=Path, metavar="DIR",
                   help="pair an opt-out companion made by `cuecam provision --companion` (its directory, e.g. "
                   "devices/door-1): its key goes into the bundle, the companion into board.yaml (repeatable)")
    p.add_argument("--json", action="store_true", help="print what was made as JSON")
    companion_provision.add_arguments(p)
