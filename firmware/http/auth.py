"""The device API token: from CUECAM_API_TOKEN, or a 0600 file, or generated once (sim boards)."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import math
import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import AuthError
from ..fsutil import atomic_write_bytes

log = logging.getLogger(__name__)
ENV_VAR = "CUECAM_API_TOKEN"
MIN_LEN, MAX_LEN = 16, 256
MIN_NETWORK_BITS = 128  # ETSI EN 303 645 5.1: no guessable credential on a network-facing device
_ALPHABETS = ("0123456789abcdef", "0123456789ABCDEF",
              "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=",
              "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")


@dataclass(frozen=True)
class Token:
    value: str
    source: str  # where it came from, for the start-up message (never the token itself)
    generated: bool = False

    def matches(self, presented: str) -> bool:
        """Constant time in the presented token's content (hmac.compare_digest on bytes)."""
        return hmac.compare_digest(presented.encode("utf-8", "replace"), self.value.encode())

    @property
    def bits(self) -> float:
        return token_bits(self.value)


def token_bits(value: str) -> float:
    """An upper bound of the token's strength: its length times log2 of the smallest usual alphabet
    (hex, base64, printable ASCII) that holds all its characters, and 0 for a token built from fewer
    than 8 distinct characters (``aaaa...``, ``0101...``)."""
    if len(set(value)) < 8:
        return 0.0
    size = next((len(a) for a in _ALPHABETS if set(value) <= set(a)), 94)
    return len(value) * math.log2(size)


def check_bind(host: str, token: Token) -> None:
    """Refuse to serve a non-loopback address with a weak or self-generated token (no default
    credentials). Loopback (the sim board, a local reverse proxy) is always allowed."""
    if ipaddress.ip_address(host).is_loopback:
        return
    if token.generated:
        raise AuthError(f"refusing to serve {host}: the API token was generated at start-up; provision one "
                        f"with `cuecam provision` (or set {ENV_VAR}) for a board on the network")
    if token.bits < MIN_NETWORK_BITS:
        raise AuthError(f"refusing to serve {host}: the API token from {token.source} is too weak "
                        f"(~{token.bits:.0f} bits, at least {MIN_NETWORK_BITS} needed); "
                        "`cuecam provision` writes a 256-bit one")


def _check(value: str, where: str) -> str:
    value = value.strip()
    if not MIN_LEN <= len(value) <= MAX_LEN or any(c.isspace() for c in value) or not value.isprintable():
        raise AuthError(f"the API token from {where} must be {MIN_LEN}-{MAX_LEN} printable characters without spaces")
    return value


def load_token(token_file: Path, *, generate: bool, env: Mapping[str, str] = os.environ) -> Token:
    if env.get(ENV_VAR):
        return Token(_check(env[ENV_VAR], f"${ENV_VAR}"), f"${ENV_VAR}")
    try:
        raw = token_file.read_bytes()[: MAX_LEN * 4].decode("utf-8")
    except FileNotFoundError:
        if not generate:
            raise AuthError(
                f"no API token: create {token_file} (mode 0600) with `cuecam provision`, or set {ENV_VAR}"
            ) from None
        value = secrets.token_urlsafe(32)
        atomic_write_bytes(token_file, value.encode() + b"\n", mode=0o600)
        return Token(value, str(token_file), generated=True)
    except (OSError, UnicodeDecodeError) as e:
        raise AuthError(f"cannot read the API token file {token_file}: {e}") from e
    if token_file.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("API token file %s is readable by others; run: chmod 600 %s", token_file, token_file)
    return Token(_check(raw, str(token_file)), str(token_file))
