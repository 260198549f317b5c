"""Signed OTA bundles: build them on a host, verify them on a board while unpacking into staging.

Format 1 is a plain (uncompressed) POSIX tar, as ``tarfile`` and GNU tar write it, whose members
are, in this order:

``manifest.json``
    The signed manifest (``manifest.py`` says what it holds).
``manifest.sig``
    The 64-byte raw ed25519 signature over the exact bytes of ``manifest.json``.
``payload/<path>``
    One regular file per manifest entry, in manifest order.

The design follows what TUF, RAUC and Mender learned the hard way: nothing is trusted before the
signature verifies, the signed manifest says exactly which files of which size and hash come in
which order, the container must be canonical (every single-bit change is rejected), hard caps
(:class:`Caps`) bound everything before it is read, a bundle must be newer than the installed
version and than the floor, and on any failure the staging directory is removed entirely.

The parts, one job each:

``errors``     BundleError (a machine reason and what to do about it) and the caps
``keys``       ed25519 key pairs, key ids, key files
``manifest``   the manifest's schema, canonical bytes and strict parser
``builder``    the host side: ``build_bundle``
``container``  the strict reader of the tar container (no tarfile on the board)
``verifier``   the board side: ``verify_bundle`` into a staging directory
"""

from __future__ import annotations

from .builder import build_bundle
from .container import BLOCK, MAX_EXTENDED_HEADER, RECORD, Member, TarReader
from .errors import _HINTS, BOARD_KINDS, DEFAULT_CAPS, REASONS, BundleError, Caps
from .keys import (
    KEY_BYTES,
    KEY_ID_CHARS,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    public_key_from_private,
    public_key_hex,
    save_private_key,
    save_public_key,
    sign_manifest,
)
from .manifest import (
    FORMAT,
    MANIFEST_NAME,
    PAYLOAD_PREFIX,
    SIGNATURE_BYTES,
    SIGNATURE_NAME,
    BundleFile,
    BundleManifest,
    check_relpath,
    manifest_json_bytes,
    parse_manifest,
)
from .verifier import VerifiedBundle, _Staging, verify_bundle

__all__ = [
    "BLOCK", "BOARD_KINDS", "DEFAULT_CAPS", "FORMAT", "KEY_BYTES", "KEY_ID_CHARS", "MANIFEST_NAME",
    "MAX_EXTENDED_HEADER", "PAYLOAD_PREFIX", "REASONS", "RECORD", "SIGNATURE_BYTES", "SIGNATURE_NAME", "_HINTS",
    "BundleError", "BundleFile", "BundleManifest", "Caps", "Member", "TarReader", "VerifiedBundle", "_Staging",
    "build_bundle", "check_relpath", "generate_keypair", "key_id", "load_private_key",
    "load_public_key", "manifest_json_bytes", "parse_manifest", "public_key_from_private", "public_key_hex",
    "save_private_key", "save_public_key", "sign_manifest", "verify_bundle",
]
