"""The hardened device API, on the real server (DeviceRunner, the firmware's own middlewares) on
loopback with the real pipeline: body caps, rate limits, slow and half-open clients, connection
cap, JSON for every error aiohttp answers itself, TLS, no weak credentials on the network, and the
OTA pull's host guard."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import socket
import ssl
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from firmware.app import build_service
from firmware.errors import AuthError, TlsError
from firmware.http.app import build_app, openapi_document
from firmware.http.auth import MIN_NETWORK_BITS, Token, check_bind, token_bits
from firmware.http.guard import MAX_BODY, DeviceRunner, RateLimiter
from firmware.http.tls import server_context
from tests import device
from tests.conftest import sim_config

TOKEN = "hardened-api-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Board:
    def __init__(self, runner: DeviceRunner, port: int, svc) -> None:
        self.runner, self.port, self.svc = runner, port, svc
        self.url = f"http://127.0.0.1:{port}"


@pytest.fixture
async def board_factory(models_dir, vtest, tmp_path):
    boards: list[Board] = []

    async def make(api: dict | None = None, ssl_ctx: ssl.SSLContext | None = None, **over) -> Board:
        loaded = sim_config({"api": api or {}, "privacy": {"audit_log": str(tmp_path / "audit.jsonl")},
                             "ota": {"root": str(tmp_path / "ota")}, **over})
        svc, token = await build_service(loaded, token_env={"CUECAM_API_TOKEN": TOKEN})
        runner = DeviceRunner(build_app(svc, token), loaded.config.api, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_ctx)
        await site.start()
        b = Board(runner, runner.addresses[0][1], svc)
        boards.append(b)
        return b

    yield make
    for b in boards:
        await b.runner.cleanup()


async def _raw(port: int, data: bytes, *, read_timeout: float = 5.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        async with asyncio.timeout(read_timeout):
            return await reader.read()
    finally:
        writer.close()


def _json_error(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    assert headers["content-type"].startswith("application/json"), (status, headers, body)
    return status, json.loads(body)


# -- bodies ------------------------------------------------------------------------------------
async def test_a_body_over_64_kib_gets_413_as_json_on_every_route_but_the_ota_upload(board_factory):
    b = await board_factory()
    big = b"x" * (MAX_BODY + 1)
    async with aiohttp.ClientSession(headers=AUTH) as http:
        for method, path in (("POST", "/v1/optout"), ("GET", "/v1/status"), ("POST", "/v1/ota/pull"), ("GET", "/health")):
            async with http.request(method, b.url + path, data=big) as r:  # Content-Length announced
                body = await r.json()
                assert r.status == 413 and body["error"]["status"] == 413, (path, body)

            async def chunked():
                for _ in range(20):
                    yield b"y" * 8192  # 160 KiB, no Content-Length

            async with http.request(method, b.url + path, data=chunked()) as r:
                body = await r.json()
                assert r.status == 413 and "65536" in body["error"]["message"], (path, body)
        # exactly 64 KiB is not refused for its size (the optout route ignores the body)
        async with http.post(b.url + "/v1/optout", data=b"z" * MAX_BODY) as r:
            assert r.status == 200
        # the OTA upload streams with its own cap: 1 MiB reaches the OTA agent (no keys on the sim: 403)
        async with http.post(b.url + "/v1/ota", data=b"b" * (1 << 20)) as r:
            assert r.status == 403 and "trusted keys" in (await r.json())["error"]["message"]
    assert b.svc.privacy.optouts == 1  # the refused optout requests never reached the handler


# -- rate limit --------------------------------------------------------------------------------
async def test_rate_limit_answers_429_with_retry_after_per_client(board_factory):
    b = await board_factory({"rate_limit": {"per_s": 2.0, "burst": 5}})
    statuses = []
    async with aiohttp.ClientSession() as http:
        for _ in range(8):
            async with http.get(b.url + "/v1/privacy") as r:
                statuses.append(r.status)
                if r.status == 429:
                    retry = int(r.headers["Retry-After"])
                    body = await r.json()
        assert statuses[:5] == [200] * 5 and statuses[5:] == [429] * 3
        assert retry >= 1 and body["error"]["status"] == 429 and "rate limit" in body["error"]["message"]
        # a wrong token is rate limited too (no free guessing)
        async with http.get(b.url + "/v1/status", headers={"Authorization": "Bearer guess-guess-guess-1"}) as r:
            assert r.status == 429
    # another client address (127.0.0.2 is loopback too) has its own bucket
    conn = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=conn) as other, other.get(b.url + "/v1/privacy") as r:
        assert r.status == 200
    await asyncio.sleep(0.6)  # 2 per second: one token back
    async with aiohttp.ClientSession() as http, http.get(b.url + "/v1/privacy") as r:
        assert r.status == 200


def test_rate_limiter_refills_and_keeps_a_bounded_number_of_clients():
    now = [0.0]
    rl = RateLimiter(per_s=10.0, burst=2, clock=lambda: now[0], max_clients=100)
    assert [rl.take("a") for _ in range(3)][:2] == [0.0, 0.0]
    assert rl.take("a") == pytest.approx(0.1)  # 1 token needs 0.1 s at 10/s
    now[0] += 0.1
    assert rl.take("a") == 0.0
    for i in range(1000):
        rl.take(f"10.0.{i // 256}.{i % 256}")
    assert len(rl) == 100


# -- errors aiohttp answers itself ------------------------------------------------------------
@pytest.mark.parametrize("raw, status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header Without Colon\r\n\r\n", 400),
    (b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n", 400),
    (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"POST /v1/optout HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
    (b"DELETE /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 405),
    (b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404),
    (b"GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 401),
], ids=["request-line", "header", "version", "header-size", "url-size", "dup-length", "405", "404", "401"])
async def test_every_error_is_json_even_from_the_http_parser(board_factory, raw, status):
    b = await board_factory()
    got, body = _json_error(await _raw(b.port, raw))
    assert got in ((status, 400) if status in (414, 431) else (status,)), got
    assert body["error"]["status"] == got and body["error"]["message"]


# -- slow and half-open clients ----------------------------------------------------------------
async def test_slow_headers_and_silent_connections_are_closed(board_factory):
    b = await board_factory({"idle_timeout_s": 1.0})
    # a connection that never sends anything
    reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
    t0 = time.monotonic()
    async with asyncio.timeout(5):
        assert await reader.read() == b""
    assert 0.8 < time.monotonic() - t0 < 3.0
    writer.close()
    # slowloris: a header line every 0.3 s never completes the request
    reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    t0 = time.monotonic()
    eof = asyncio.create_task(reader.read())
    closed_at: list[float] = []
    eof.add_done_callback(lambda _t: closed_at.append(time.monotonic() - t0))
    for i in range(20):
        if eof.done():
            break
        await asyncio.sleep(0.3)
        with contextlib.suppress(ConnectionError):
            writer.write(f"X-Slow-{i}: 1\r\n".encode())
    writer.close()
    assert eof.done() and eof.result() == b"" and closed_at[0] < 3.0, closed_at
    # an idle keep-alive connection is closed too, after its response
    reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
    writer.write(b"GET /v1/privacy HTTP/1.1\r\nHost: x\r\n\r\n")
    async with asyncio.timeout(5):
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        while await reader.read(65536):
            pass  # the body, then EOF when the idle timeout closes the connection
    writer.close()


async def test_a_body_that_stalls_gets_408_within_the_request_timeout(board_factory):
    b = await board_factory({"request_timeout_s": 1.0})
    t0 = time.monotonic()
    raw = await _raw(b.port, b"POST /v1/optout HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                     + b"\r\nContent-Length: 100\r\n\r\n0123456789")
    status, body = _json_error(raw)
    assert status == 408 and body["error"]["status"] == 408 and time.monotonic() - t0 < 3.0
    assert b.svc.privacy.optouts == 0


async def test_connections_beyond_the_cap_are_refused(board_factory):
    b = await board_factory({"max_connections": 3, "idle_timeout_s": 30})
    held = [await asyncio.open_connection("127.0.0.1", b.port) for _ in range(3)]
    await asyncio.sleep(0.1)
    reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
    async with asyncio.timeout(2):
        assert await reader.read() == b""  # closed at once
    writer.close()
    r0, w0 = held[0]  # the held ones still work
    w0.write(b"GET /v1/privacy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    async with asyncio.timeout(5):
        assert (await r0.read()).startswith(b"HTTP/1.1 200")
    for _, w in held:
        w.close()


# -- credentials ---------------------------------------------------------------------------------
def test_token_strength_and_the_network_bind_rule():
    provisioned = "Kq3v9Zb2sXyL0pW7tRm4nQe8hUa1cJd6fGi5kOl2ZxY"  # token_urlsafe(32)-shaped: 43 chars
    assert token_bits(provisioned) >= 256 > token_bits("0123456789abcdef0123456789abcdef") >= MIN_NETWORK_BITS
    for weak in ("a" * 64, "01" * 32, "password-password", "0123456789abcdef"):  # repeats, or < 128 bits
        assert token_bits(weak) < MIN_NETWORK_BITS, weak
        with pytest.raises(AuthError, match="too weak"):
            check_bind("0.0.0.0", Token(weak, "test"))
        check_bind("127.0.0.1", Token(weak, "test"))  # loopback: allowed
        check_bind("::1", Token(weak, "test"))
    check_bind("0.0.0.0", Token(provisioned, "file"))
    with pytest.raises(AuthError, match="generated"):
        check_bind("192.168.1.20", Token(provisioned, "file", generated=True))


def test_a_generated_token_is_a_config_error_on_a_network_address():
    from firmware.config import Config

    base = sim_config().config.model_dump()
    base["api"].update(host="0.0.0.0", generate_token=True)
    with pytest.raises(ValueError, match="generate_token"):
        Config.model_validate(base)


def test_the_board_refuses_to_serve_the_network_with_a_weak_token(models_dir, vtest, tmp_path):
    cfg = device.write_config(tmp_path, {"api": {"host": "0.0.0.0", "generate_token": False}})
    proc = device.start(cfg, "changeme-changeme")  # 16+ characters, ~100 bits at best
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        device.stop(proc)
    err = device.log_text(proc)
    assert proc.returncode == 3, (out, err)
    assert "refusing to serve 0.0.0.0" in err and "too weak" in err and "serving on" not in out


# -- TLS --------------------------------------------------------------------------------------------
def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cuecam-test-board")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    crt, kf = directory / "device.crt", directory / "device.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kf.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    kf.chmod(0o600)
    return crt, kf


def test_tls_serves_with_the_device_certificate_relative_to_the_config(models_dir, vtest, tmp_path):
    crt, _ = _self_signed(tmp_path / "tls")
    cfg = device.write_config(tmp_path, {"api": {"tls": {"cert": "tls/device.crt", "key": "tls/device.key"}}})
    proc = device.start(cfg, TOKEN)
    try:
        url = device.wait_url(proc)
        assert url.startswith("https://127.0.0.1:")
        ctx = ssl.create_default_context(cafile=str(crt))  # verifies the chain and the 127.0.0.1 SAN

        async def fetch():
            async with aiohttp.ClientSession() as http:
                async with http.get(url + "/v1/status", headers=AUTH, ssl=ctx) as r:
                    assert r.status == 200 and (await r.json())["board"]["kind"] == "sim"
                with pytest.raises(aiohttp.ClientError):  # a client that does not trust the cert
                    async with http.get(url + "/health", ssl=ssl.create_default_context()):
                        pass
                with pytest.raises(aiohttp.ClientError):  # plain HTTP on the TLS port
                    async with http.get(url.replace("https", "http") + "/health"):
                        pass

        asyncio.run(fetch())
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            assert s.version() in ("TLSv1.2", "TLSv1.3")
    finally:
        assert device.stop(proc) == 0


def test_tls_problems_are_named(tmp_path):
    crt, key = _self_signed(tmp_path)
    server_context(crt, key)
    with pytest.raises(TlsError, match="missing"):
        server_context(tmp_path / "nope.crt", key)
    other = tmp_path / "other"
    _, other_key = _self_signed(other)
    with pytest.raises(TlsError, match="cannot use"):
        server_context(crt, other_key)  # key does not match the certificate


# -- OTA pull host guard ---------------------------------------------------------------------------
async def test_ota_pull_only_fetches_from_loopback_or_the_configured_gateway(board_factory):
    b = await board_factory(ota={"root": "/nonexistent-ota-root", "trusted_keys": ["ab" * 32],
                                 "pull_hosts": ["gateway.local", "10.1.2.3"]})
    async with aiohttp.ClientSession(headers=AUTH) as http:
        for url in ("http://192.0.2.7/b.bundle", "http://169.254.169.254/latest/meta-data", "https://example.com/x",
                    "http://gateway.local.evil.example/x", "http://user:pw@gateway.local/x", "http://[fe80::1]/x",
                    "http://10.1.2.3:99999/x"):
            async with http.post(b.url + "/v1/ota/pull", json={"url": url}) as r:
                body = await r.json()
                assert r.status == 400, (url, body)
        # allowed hosts get as far as the slot store (none here): 409, not 400
        for url in ("http://gateway.local/b.bundle", "http://10.1.2.3:8000/b", "http://127.0.0.1:1/b", "http://[::1]:1/b"):
            async with http.post(b.url + "/v1/ota/pull", json={"url": url}) as r:
                assert r.status == 409, (url, await r.json())


def test_the_openapi_document_lists_the_common_errors_and_the_zones():
    from openapi_spec_validator import validate

    doc = openapi_document(["plaza-sign", "walkway"])
    validate(doc)
    for path, ops in doc["paths"].items():
        for op in ops.values():
            assert {"408", "413", "429"} <= set(op["responses"]), path
            assert "Retry-After" in op["responses"]["429"]["headers"]
    zone = next(p for p in doc["paths"]["/v1/vectors"]["get"]["parameters"] if p["name"] == "zone")
    assert zone["schema"]["enum"] == ["plaza-sign", "walkway"]


async def test_an_ota_pull_may_take_longer_than_the_request_timeout(board_factory, tmp_path):
    from ota.bundle import generate_keypair, public_key_hex
    from ota.slots import SlotStore

    release = tmp_path / "release"
    release.mkdir()
    (release / "README").write_text("cuecam 0.1.0\n")
    SlotStore(tmp_path / "slots").init("0.1.0", release)

    async def slow_gateway(request: web.Request) -> web.Response:
        await asyncio.sleep(1.5)
        return web.Response(status=404)

    gw = web.Application()
    gw.router.add_get("/b.bundle", slow_gateway)
    runner = web.AppRunner(gw)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        b = await board_factory({"request_timeout_s": 1.0},
                                ota={"root": str(tmp_path / "slots"), "trusted_keys": [public_key_hex(generate_keypair()[1])]})
        t0 = time.monotonic()
        async with aiohttp.ClientSession(headers=AUTH) as http, \
                http.post(b.url + "/v1/ota/pull", json={"url": f"http://127.0.0.1:{runner.addresses[0][1]}/b.bundle"}) as r:
            body = await r.json()
        # the gateway's answer (after 1.5 s), not a 408 after the 1 s request timeout
        assert r.status == 502 and "HTTP 404" in body["error"]["message"] and time.monotonic() - t0 >= 1.4
    finally:
        await runner.cleanup()
