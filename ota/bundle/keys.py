"""Signing keys: ed25519 key pairs, key ids, and key files (hex text, private ones mode 0600)."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware.fsutil import atomic_write_bytes

from .errors import BundleError, fail

KEY_BYTES = 32
KEY_ID_CHARS = 16
MAX_KEY_FILE = 1024


def check_key(key: bytes, what: str) -> bytes:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
        fail("bad-key", f"{what} must be {KEY_BYTES} raw bytes")
    return bytes(key)


def generate_keypair() -> tuple[bytes, bytes]:
    """A new ed25519 key pair as (raw private 32 bytes, raw public 32 bytes)."""
    private = Ed25519PrivateKey.generate()
    return private.private_bytes_raw(), private.public_key().public_bytes_raw()


def public_key_from_private(private_key: bytes) -> bytes:
    private = Ed25519PrivateKey.from_private_bytes(check_key(private_key, "the private key"))
    return private.public_key().public_bytes_raw()


def public_key_hex(public_key: bytes) -> str:
    return check_key(public_key, "the public key").hex()


def key_id(public_key: bytes) -> str:
    """What a manifest's ``key_id`` says for bundles signed by this key."""
    return hashlib.sha256(check_key(public_key, "the public key")).hexdigest()[:KEY_ID_CHARS]


def sign_manifest(manifest_bytes: bytes, private_key: bytes) -> bytes:
    """The raw 64-byte ed25519 signature that goes into ``manifest.sig``."""
    return Ed25519PrivateKey.from_private_bytes(check_key(private_key, "the private key")).sign(manifest_bytes)


def save_private_key(path: Path, key: bytes) -> None:
    """Write the key as hex text, mode 0600, atomically."""
    atomic_write_bytes(Path(path), (check_key(key, "the private key").hex() + "\n").encode("ascii"), mode=0o600)


def save_public_key(path: Path, key: bytes) -> None:
    atomic_write_bytes(Path(path), (public_key_hex(key) + "\n").encode("ascii"), mode=0o644)


def _read_key_file(path: Path, *, private: bool) -> bytes:
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise BundleError("bad-key", f"cannot open the key file: {e.strerror}", path=path) from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BundleError("bad-key", "is not a regular file", path=path)
        if private and st.st_mode & 0o077:
            raise BundleError("key-permissions", f"private key file has mode {stat.S_IMODE(st.st_mode):04o}", path=path)
        data = f.read(MAX_KEY_FILE + 1)
    try:
        key = bytes.fromhex(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise BundleError("bad-key", "does not hold a hex-encoded key", path=path) from None
    if len(key) != KEY_BYTES:
        raise BundleError("bad-key", f"holds {len(key)} bytes, an ed25519 key has {KEY_BYTES}", path=path)
    return key


def load_private_key(path: Path) -> bytes:
    """Read a key written by :func:`save_private_key`; refuses files others can read."""
    return _read_key_file(path, private=True)


def load_public_key(path: Path) -> bytes:
    return _read_key_file(path, private=False)
