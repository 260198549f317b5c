"""Optional TLS for the device API: the certificate and key written at provisioning."""

from __future__ import annotations

import ssl
from pathlib import Path

from ..errors import TlsError


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server-side context (TLS 1.2 or newer, the ssl module's default ciphers) with the device
    certificate; TlsError naming the file when it cannot be used."""
    for what, p in (("certificate", cert), ("key", key)):
        if not p.is_file():
            raise TlsError(f"TLS {what} {p} is missing: `cuecam provision --tls` creates tls/device.crt and "
                           "tls/device.key; or remove api.tls")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError, ValueError) as e:
        raise TlsError(f"cannot use the TLS certificate {cert} with key {key}: {e}") from e
    return ctx
