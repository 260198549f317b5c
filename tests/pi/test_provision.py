"""``cuecam provision`` and the first-boot move (firmware/firstboot.py): into a directory, onto a
boot partition directory, and onto a real FAT image (mkfs.vfat + mtools), where the scrub of the
secrets is checked in the image's raw bytes."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from firmware.config import load_config
from firmware.firstboot import main as firstboot
from firmware.http.auth import load_token
from host_tools.cli import main as cuecam
from ota.bundle import generate_keypair, public_key_hex, save_public_key
from tests.conftest import ROOT

RPI4 = ROOT / "board_configs" / "rpi4.yaml"
RPI5 = ROOT / "board_configs" / "rpi5.yaml"
# As root, the service user is someone else (nobody), as on a board; otherwise ourselves.
OWNER = "nobody" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name


def _json(capsys: pytest.CaptureFixture[str]) -> dict:
    return json.loads(capsys.readouterr().out)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_provision_out_dir_for_the_gateway(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cuecam(["provision", "--template", str(RPI4), "--name", "shelf-3", "--out", str(tmp_path), "--json",
                   "--gateway", "http://127.0.0.1:9000"]) == 0
    info = _json(capsys)
    d = tmp_path / "shelf-3"
    assert info["device"] == "shelf-3" and info["kind"] == "rpi4" and info["token_file"] == str(d / "api-token")
    token = (d / "api-token").read_text().strip()
    assert len(token) >= 43 and token not in json.dumps(info)  # 256 bits; never printed
    assert _mode(d / "api-token") == 0o600
    cfg = yaml.safe_load((d / "board.yaml").read_text())
    assert cfg["board"] == {"name": "shelf-3", "kind": "rpi4"} and cfg["api"]["token_file"] == "/etc/cuecam/api-token"
    assert cfg["camera"] == yaml.safe_load(RPI4.read_text())["camera"]  # the rest is the template's
    assert load_config(d / "board.yaml").config.board.name == "shelf-3"
    assert json.loads((d / "device.json").read_text())["gateway"] == "http://127.0.0.1:9000"
    assert cfg["ota"]["pull_hosts"] == ["127.0.0.1"]  # the board may pull its updates from its gateway
    # a second run would lock the gateway out: refused unless --force, which makes a new token
    assert cuecam(["provision", "--template", str(RPI4), "--name", "shelf-3", "--out", str(tmp_path)]) == 2
    assert "--force" in capsys.readouterr().err
    assert (d / "api-token").read_text().strip() == token
    assert cuecam(["provision", "--template", str(RPI4), "--name", "shelf-3", "--out", str(tmp_path), "--force"]) == 0
    assert (d / "api-token").read_text().strip() != token


@pytest.mark.parametrize("args, message", [
    (["--name", "bad name"], "--name"),
    (["--name", "ok", "--gateway", "not a url"], "--gateway"),
    (["--name", "ok", "--ota-pub", "nothex"], "--ota-pub"),
    (["--name", "ok", "--ip", "300.1.1.1", "--tls"], "--ip"),
    (["--name", "ok", "--template", "/nonexistent.yaml"], "cannot read the template"),
])
def test_provision_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    argv = ["provision", "--template", str(RPI4), "--out", str(tmp_path), *args]
    assert cuecam(argv) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_provision_boot_dir_then_first_boot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    boot, etc = tmp_path / "boot", tmp_path / "etc" / "cuecam"
    boot.mkdir()
    (boot / "config.txt").write_text("dtoverlay=vc4-kms-v3d\n")  # the card's own files stay
    _, pub = generate_keypair()
    save_public_key(tmp_path / "ota.pub", pub)
    assert cuecam(["provision", "--template", str(RPI5), "--name", "till-1", "--boot", str(boot), "--tls",
                   "--ip", "127.0.0.1", "--ota-pub", str(tmp_path / "ota.pub"), "--json"]) == 0
    info = _json(capsys)
    bundle = boot / "cuecam"
    token = (bundle / "api-token").read_text().strip()
    assert sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()) == [
        "api-token", "board.yaml", "device.json", "tls/device.crt", "tls/device.key"]

    assert firstboot(["--boot", str(tmp_path / "nothing"), "--boot", str(boot), "--etc", str(etc), "--owner", OWNER,
                      "--json"]) == 0
    result = _json(capsys)
    assert result["installed"] and result["device"] == "till-1"
    assert not bundle.exists() and (boot / "config.txt").exists()
    pw = pwd.getpwnam(OWNER)
    for name, mode, owned in (("api-token", 0o600, True), ("tls/device.key", 0o600, True), ("board.yaml", 0o640, False),
                              ("device.json", 0o644, False), ("tls/device.crt", 0o644, False)):
        st = (etc / name).stat()
        assert stat.S_IMODE(st.st_mode) == mode, name
        assert st.st_gid == pw.pw_gid and (st.st_uid == pw.pw_uid) == (owned or pw.pw_uid == os.geteuid()), name
    assert _mode(etc) == 0o750
    assert load_token(etc / "api-token", generate=False, env={}).value == token
    cfg = yaml.safe_load((etc / "board.yaml").read_text())
    assert cfg["board"]["name"] == "till-1" and cfg["ota"]["trusted_keys"] == [public_key_hex(pub)]
    assert cfg["api"]["tls"] == {"cert": "/etc/cuecam/tls/device.crt", "key": "/etc/cuecam/tls/device.key"}
    cert = x509.load_pem_x509_certificate((etc / "tls/device.crt").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"till-1", "till-1.local"} <= set(sans.get_values_for_type(x509.DNSName))
    assert cert.fingerprint(cert.signature_hash_algorithm).hex() == info["tls_sha256"]  # type: ignore[arg-type]

    # every later boot: nothing to do
    assert firstboot(["--boot", str(boot), "--etc", str(etc), "--owner", OWNER]) == 0
    assert "no provisioning bundle" in capsys.readouterr().out


def test_first_boot_refuses_a_bad_bundle_and_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    boot, etc = tmp_path / "boot", tmp_path / "etc"
    boot.mkdir()
    assert cuecam(["provision", "--template", str(RPI4), "--name", "a1", "--boot", str(boot)]) == 0
    bundle = boot / "cuecam"
    good = {p: p.read_bytes() for p in bundle.rglob("*") if p.is_file()}
    for breakage, message in (
        (lambda: (bundle / "api-token").write_text("has a space in it, too long anyway\n"), "API token"),
        (lambda: (bundle / "board.yaml").write_text("version: 1\nboard: {name: a1, kind: rpi4}\ncamera: {type: x}\n"),
         "board.yaml"),
        (lambda: (bundle / "evil.sh").write_text("rm -rf /\n"), "evil.sh"),
        (lambda: (bundle / "device.json").write_text("[]"), "device.json"),
        (lambda: (bundle / "api-token").unlink(), "api-token is missing"),
        (lambda: (bundle / "board.yaml").write_bytes(b"x" * 70_000), "bytes"),
    ):
        breakage()
        assert firstboot(["--boot", str(boot), "--etc", str(etc), "--owner", OWNER]) == 2
        assert message in capsys.readouterr().err
        assert not etc.exists() and (bundle / "device.json").exists()
        shutil.rmtree(bundle)
        for p, data in good.items():
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
    assert firstboot(["--boot", str(boot), "--etc", str(etc), "--owner", "no-such-user-here"]) == 2
    assert "install.sh" in capsys.readouterr().err


def test_first_boot_finishes_an_interrupted_scrub(tmp_path: Path) -> None:
    boot, etc = tmp_path / "boot", tmp_path / "etc"
    boot.mkdir()
    assert cuecam(["provision", "--template", str(RPI4), "--name", "a2", "--boot", str(boot)]) == 0
    (boot / "cuecam" / "device.json").unlink()  # power cut after the trigger was removed
    assert firstboot(["--boot", str(boot), "--etc", str(etc), "--owner", OWNER]) == 0
    assert not (boot / "cuecam").exists() and not etc.exists()


def _mtools_ready() -> None:
    missing = [t for t in ("mkfs.vfat", "mcopy", "mdir") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} missing: apt-get install dosfstools mtools (.ci/run does)")


def test_fat_image_provision_and_first_boot_scrubs_the_secrets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _mtools_ready()
    image, etc = tmp_path / "bootfs.img", tmp_path / "etc"
    subprocess.run(["truncate", "-s", "32M", str(image)], check=True)
    subprocess.run(["mkfs.vfat", "-n", "BOOTFS", str(image)], check=True, capture_output=True)
    assert cuecam(["provision", "--template", str(RPI4), "--name", "door-2", "--boot", str(image), "--tls", "--json"]) == 0
    assert _json(capsys)["boot_bundle"] == f"{image}::/cuecam"
    raw = image.read_bytes()
    assert b"PRIVATE KEY" in raw and b"door-2" in raw
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    listing = subprocess.run(["mdir", "-/", "-b", "-i", str(image), "::/cuecam"], capture_output=True, text=True, env=env)
    assert {"::/cuecam/board.yaml", "::/cuecam/api-token", "::/cuecam/device.json",
            "::/cuecam/tls/device.key", "::/cuecam/tls/device.crt"} <= set(listing.stdout.split()), listing.stdout

    assert firstboot(["--boot", str(image), "--etc", str(etc), "--owner", OWNER]) == 0
    token = (etc / "api-token").read_text().strip()
    assert _mode(etc / "api-token") == 0o600 and _mode(etc / "tls/device.key") == 0o600
    raw = image.read_bytes()
    assert token.encode() not in raw and b"PRIVATE KEY" not in raw  # overwritten on the FAT file system itself
    assert subprocess.run(["mdir", "-b", "-i", str(image), "::/cuecam"], capture_output=True, env=env).returncode != 0
    assert yaml.safe_load((etc / "board.yaml").read_text())["board"]["name"] == "door-2"


def test_provision_cli_entry_point(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "host_tools.cli", "provision", "--template", str(RPI4), "--name", "x9",
                        "--out", str(tmp_path), "--json"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["config"] == str(tmp_path / "x9" / "board.yaml")


def test_a_companion_paired_on_the_card_reaches_etc_and_its_key_is_scrubbed(tmp_path: Path,
                                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """`cuecam provision --companion` then, per card, `--pair devices/NAME`: the companion's key
    travels in the boot bundle (a real FAT image), first boot installs it as
    /etc/cuecam/companions/NAME.key (0600, the service user's) with the companion in board.yaml,
    and overwrites the key's clusters on the card."""
    _mtools_ready()
    devices = tmp_path / "devices"
    assert cuecam(["provision", "--template", str(RPI5), "--name", "cam-e", "--out", str(devices)]) == 0
    assert cuecam(["provision", "--companion", "door-1", "--out", str(devices), "--board", "cam-e=http://10.0.0.40:8080",
                   "--wifi-ssid", "ShopNet", "--position", "under the arrow"]) == 0
    capsys.readouterr()
    key = (devices / "door-1" / "companion-key").read_text().strip()
    image, etc = tmp_path / "bootfs.img", tmp_path / "etc"
    subprocess.run(["truncate", "-s", "32M", str(image)], check=True)
    subprocess.run(["mkfs.vfat", "-n", "BOOTFS", str(image)], check=True, capture_output=True)
    assert cuecam(["provision", "--template", str(RPI5), "--name", "cam-e", "--boot", str(image),
                   "--pair", str(devices / "door-1")]) == 0
    assert key.encode() in image.read_bytes()
    assert firstboot(["--boot", str(image), "--etc", str(etc), "--owner", OWNER]) == 0
    installed = etc / "companions" / "door-1.key"
    assert installed.read_text().strip() == key and _mode(installed) == 0o600
    assert pwd.getpwnam(OWNER).pw_uid == installed.stat().st_uid
    assert key.encode() not in image.read_bytes(), "the key's clusters on the card are zeros"
    cfg = yaml.safe_load((etc / "board.yaml").read_text())
    assert cfg["privacy"]["optout"]["companions"] == [
        {"name": "door-1", "key_file": "/etc/cuecam/companions/door-1.key", "position": "under the arrow"}]
    # the board loads it: its verifier knows the companion (the key file as installed)
    from firmware.privacy.companion import CompanionVerifier

    text = (etc / "board.yaml").read_text().replace("/etc/cuecam/companions/", f"{etc}/companions/")
    text = text.replace("/var/lib/cuecam/audit.jsonl", str(tmp_path / "audit.jsonl"))
    (tmp_path / "b.yaml").write_text(text)
    v = CompanionVerifier.from_config(load_config(tmp_path / "b.yaml"))
    assert list(v.companions) == ["door-1"] and v.companions["door-1"].key.hex() == key
    # a bundle with a malformed companion key is refused whole
    bad = tmp_path / "boot2"
    bad.mkdir()
    assert cuecam(["provision", "--template", str(RPI5), "--name", "cam-f", "--boot", str(bad)]) == 0
    (bad / "cuecam" / "companions").mkdir()
    (bad / "cuecam" / "companions" / "door-1.key").write_text("not a key\n")
    assert firstboot(["--boot", str(bad), "--etc", str(tmp_path / "etc2"), "--owner", OWNER]) == 2
    assert "companion key" in capsys.readouterr().err and not (tmp_path / "etc2").exists()
