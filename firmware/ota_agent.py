"""The device side of OTA: receive a signed bundle, verify it, install it into the inactive slot,
restart into it as a trial, and commit it once it is healthy (see docs/ota.md).

The slot store and the bundle format live in the ``ota`` package (shared with the host tools);
this module ties them to the running service: ``POST /v1/ota`` streams the upload into staging
(size-capped), verification and installation run off the event loop, and ``/v1/status`` and
``/health`` show progress and the result. A board that was started by the launcher
(``python -m ota.launch``) knows its slot from the environment; a trial commits itself when the
pipeline produces frames and the API answers within ``ota.health_timeout_s``, and exits
otherwise so that the supervisor restarts it and the slot store rolls back.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
import shutil
import ssl
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from . import __version__
from .config import LoadedConfig

log = logging.getLogger(__name__)

RESTART_EXIT_CODE = 75  # EX_TEMPFAIL: the supervisor (systemd, or ota.launch --supervise) starts us again
CHUNK = 256 * 1024


_OCTET = r"(25[0-5]|(2[0-4]|1\d|[1-9])?\d)"  # \d, \w: ASCII only, as in ECMA-262 (re.ASCII below)
_PORT = r"(6553[0-5]|655[0-2]\d|65[0-4]\d\d|6[0-4]\d{3}|[1-5]\d{4}|[1-9]\d{0,3})"


def pull_url_pattern(pull_hosts: list[str]) -> str:
    """The URLs POST /v1/ota/pull accepts, as one regular expression (also the ``pattern`` of the
    OpenAPI schema, so the contract and the check are the same): http(s), a loopback host or one of
    ``pull_hosts``, an optional port, a plain path; no credentials, query or fragment."""
    hosts = ["localhost", rf"127(\.{_OCTET}){{3}}", r"\[::1\]"]
    for h in pull_hosts:
        h = h.lower().strip("[]")
        hosts.append(rf"\[{re.escape(h)}\]" if ":" in h else re.escape(h))
    return rf"^https?://({'|'.join(hosts)})(:{_PORT})?(/[\w.~!$&'()*+,;=:@/-]*)?$"


class OtaRefused(Exception):
    """A request the device will not act on; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class OtaAgent:
    def __init__(self, loaded: LoadedConfig, *, board_kind: str, request_restart: Callable[[], None]) -> None:
        cfg = loaded.config.ota
        self.cfg = cfg
        self.root = loaded.resolve(cfg.root)
        self.board_kind = board_kind
        self.keys = [bytes.fromhex(k) for k in cfg.trusted_keys]
        self.request_restart = request_restart
        self.slot = os.environ.get("CUECAM_OTA_SLOT") or None
        self.trial = os.environ.get("CUECAM_OTA_TRIAL") == "1"
        self.version = __version__
        self.state = "trial" if self.trial else "idle"  # idle|receiving|verifying|installing|installed|trial|committed|failed
        self.received = 0
        self.expected: int | None = None
        self.error: str | None = None
        self.installed: dict[str, Any] | None = None
        self._busy = asyncio.Lock()
        self.pull_pattern = re.compile(pull_url_pattern(cfg.pull_hosts), re.ASCII)

    def status(self) -> dict[str, Any]:
        return {"version": self.version, "slot": self.slot, "trial": self.trial, "state": self.state,
                "received_bytes": self.received, "expected_bytes": self.expected, "error": self.error,
                "installed": self.installed, "trusted_keys": len(self.keys)}

    def _store(self) -> Any:
        from ota.slots import SlotStore

        return SlotStore(self.root, self.cfg.max_boot_attempts)

    def precheck(self) -> None:
        if not self.keys:
            raise OtaRefused(403, "no trusted keys in ota.trusted_keys: this board accepts no updates")
        if self._busy.locked():
            raise OtaRefused(409, f"an update is already in progress ({self.state})")

    async def receive(self, length: int | None, chunks: AsyncIterator[bytes]) -> dict[str, Any]:
        """Push: stream a bundle to staging, verify it, install it as the trial slot, then restart."""
        self.precheck()
        if length is None:
            raise OtaRefused(411, "Content-Length is required")
        if length > self.cfg.max_bundle_bytes:
            raise OtaRefused(413, f"bundle of {length} bytes is larger than ota.max_bundle_bytes ({self.cfg.max_bundle_bytes})")

        async def fetch(bundle: Path) -> None:
            self.state, self.received, self.expected = "receiving", 0, length
            await self._write(bundle, chunks, "xb", length)
            if self.received != length:
                raise OtaRefused(400, f"upload ended after {self.received} of {length} bytes")

        return await self._update(fetch)

    async def pull(self, url: str) -> dict[str, Any]:
        """Pull: download the bundle from ``url`` (the gateway), resuming an interrupted download
        of the same URL with an HTTP Range request, then verify, install and restart."""
        self.precheck()
        if not (url.startswith(("http://", "https://")) and len(url) <= 2048):
            raise OtaRefused(400, "url must be an http(s) URL of at most 2048 characters")
        if not self.pull_pattern.fullmatch(url):
            raise OtaRefused(400, "url must be http(s)://HOST[:PORT]/PATH with HOST loopback or one of ota.pull_hosts "
                                  f"({', '.join(self.cfg.pull_hosts) or 'none'}), no credentials, query or fragment: "
                                  "pulls come from the gateway only")
        self._check_pull_host(url)

        async def fetch(bundle: Path) -> None:
            import aiohttp

            part, src = self.root / "download" / "incoming.partial", self.root / "download" / "incoming.url"
            await asyncio.to_thread(part.parent.mkdir, parents=True, exist_ok=True)
            have = part.stat().st_size if part.exists() and src.exists() and src.read_text() == url else 0
            if not have:
                await asyncio.to_thread(src.write_text, url)
            self.state, self.received, self.expected = "receiving", have, None
            headers = {"Range": f"bytes={have}-"} if have else {}
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=30)
            async with aiohttp.ClientSession(timeout=timeout) as session, \
                    session.get(url, headers=headers, allow_redirects=False) as r:
                if r.status not in (200, 206):
                    raise OtaRefused(502, f"{url}: HTTP {r.status}")
                total = r.content_length
                if r.status == 206 and r.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
                    total = int(r.headers["Content-Range"].rsplit("/", 1)[1])
                    mode = "ab"
                else:  # the server sent the whole file: start again
                    self.received, mode = 0, "wb"
                if total is None or total > self.cfg.max_bundle_bytes:
                    raise OtaRefused(413, f"{url}: size {total} unknown or above ota.max_bundle_bytes")
                self.expected = total
                await self._write(part, r.content.iter_chunked(CHUNK), mode, total)
            if self.received != total:
                raise OtaRefused(502, f"{url}: download ended after {self.received} of {total} bytes; pull again to resume")
            await asyncio.to_thread(os.replace, part, bundle)
            await asyncio.to_thread(src.unlink, True)

        return await self._update(fetch)

    def _check_pull_host(self, url: str) -> None:
        """No server-side request forgery: a pull fetches only from loopback (an IP literal or
        ``localhost``) or from a host listed in ota.pull_hosts, compared literally (no DNS lookup
        decides), and never follows a redirect elsewhere."""
        try:
            parts = urllib.parse.urlsplit(url)
            host, _port = parts.hostname, parts.port  # .port raises ValueError when out of range
        except ValueError as e:
            raise OtaRefused(400, f"url is not a valid URL: {e}") from None
        if not host or parts.username is not None or parts.password is not None:
            raise OtaRefused(400, "url must name a host and carry no credentials")
        allowed = {h.lower().strip("[]") for h in self.cfg.pull_hosts}
        if host in allowed or host == "localhost":
            return
        try:
            if ipaddress.ip_address(host).is_loopback:
                return
        except ValueError:
            pass
        raise OtaRefused(400, f"url host {host[:100]!r} is not loopback and not in ota.pull_hosts "
                              f"({', '.join(sorted(allowed)) or 'empty'}): pulls come from the gateway only")

    async def _write(self, path: Path, chunks: AsyncIterator[bytes], mode: str, limit: int) -> None:
        f = await asyncio.to_thread(open, path, mode)
        try:
            async for chunk in chunks:
                self.received += len(chunk)
                if self.received > limit or self.received > self.cfg.max_bundle_bytes:
                    raise OtaRefused(413, "bundle is larger than announced or than ota.max_bundle_bytes")
                await asyncio.to_thread(f.write, chunk)
        finally:
            await asyncio.to_thread(f.close)

    async def _update(self, fetch: Callable[[Path], Any]) -> dict[str, Any]:
        async with self._busy:
            staging = self.root / "staging"
            try:
                store = await asyncio.to_thread(self._store)
                st = await asyncio.to_thread(_slot_state, store)
                if st is None:
                    raise OtaRefused(409, f"no slots under {self.root}: initialise the board with "
                                          "`python -m ota.installer --root ROOT init --source DIR --version V`")
                self.error = None
                await asyncio.to_thread(_fresh_dir, staging)
                bundle = staging / "incoming.bundle"
                await fetch(bundle)
                self.state = "verifying"
                verified = await asyncio.to_thread(self._verify, bundle, staging / "payload", st)
                self.state = "installing"
                await asyncio.to_thread(store.install, verified.root, verified.manifest.version)
                self.installed = {"version": verified.manifest.version, "key_id": verified.key_id,
                                  "files": len(verified.manifest.files), "at": round(time.time(), 3)}
                self.state = "installed"
            except OtaRefused as e:
                self._failed(str(e))
                raise
            except Exception as e:  # BundleError, OtaError, OSError, network: refuse with the reason, keep running
                import aiohttp

                from ota.bundle import BundleError

                self._failed(str(e) or type(e).__name__)
                status = 422 if isinstance(e, BundleError) else (502 if isinstance(e, aiohttp.ClientError) else 500)
                raise OtaRefused(status, str(e) or type(e).__name__) from e
            finally:
                await asyncio.to_thread(shutil.rmtree, staging, True)
        log.info("update %s installed as the trial slot; restarting into it", self.installed)
        asyncio.get_running_loop().call_later(0.2, self.request_restart)
        return {"state": self.state, "installed": self.installed, "restart": True}

    def _verify(self, bundle: Path, staging: Path, st: dict[str, Any]) -> Any:
        from ota.bundle import verify_bundle

        return verify_bundle(bundle, self.keys, board_kind=self.board_kind, installed_version=self.version,
                             floor_version=st.get("floor"), staging_dir=staging)

    def _failed(self, message: str) -> None:
        self.state, self.error = "failed", message
        log.error("update refused: %s", message)

    async def watch_trial(self, healthy: Callable[[], bool], api_url: Callable[[], str | None]) -> None:
        """On a trial boot: commit once healthy (frames flowing and the API answering), or ask for a
        restart (the store rolls back after ota.max_boot_attempts) when the time runs out."""
        if not self.trial:
            return
        deadline = time.monotonic() + self.cfg.health_timeout_s
        while time.monotonic() < deadline:
            url = api_url()
            if healthy() and url is not None and await asyncio.to_thread(_answers, url + "/health"):
                st = await asyncio.to_thread(lambda: self._store().commit())
                self.trial, self.state = False, "committed"
                log.info("trial version %s is healthy: committed (%s)", self.version, st)
                return
            await asyncio.sleep(0.5)
        self._failed(f"trial version {self.version} not healthy within {self.cfg.health_timeout_s:.0f} s")
        self.request_restart()


def _slot_state(store: Any) -> dict[str, Any] | None:
    from ota.slots import OtaError

    try:
        state = store.status()["state"]
    except OtaError:
        return None
    return state if isinstance(state, dict) else None


def _fresh_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, mode=0o700)


def _answers(url: str) -> bool:
    # our own API on loopback: with api.tls its certificate is the device's own (self-signed), so it
    # is not verified for this liveness probe; nothing but the status code is read
    ctx = ssl._create_unverified_context() if url.startswith("https://") else None
    try:
        with urllib.request.urlopen(url, timeout=2.0, context=ctx) as r:
            return bool(r.status == 200)
    except OSError:
        return False
