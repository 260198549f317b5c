"""The device API token: from CUECAM_API_TOKEN, or a 0600 file, or generated once (sim boards)."""

from __future__ import annotations

import hmac
import logging
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


@dataclass(frozen=True)
class Token:
    value: str
    source: str  # where it came from, for the start-up message (never the token itself)
    generated: bool = False

    def matches(self, presented: str) -> bool:
        return hmac.compare_digest(presented.encode("utf-8", "replace"), self.value.encode())


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
