"""GET /v1/privacy (public) and GET /v1/audit (token) on a real aiohttp server on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from aiohttp.test_utils import TestClient, TestServer

from firmware.app import build_service
from firmware.config import LoadedConfig
from firmware.http.app import build_app
from firmware.privacy.audit import AUDIT_SCHEMA
from firmware.privacy.notice import PRIVACY_SCHEMA
from tests.conftest import sim_config

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def _client(loaded: LoadedConfig):
    svc, token = await build_service(loaded, token_env={"CUECAM_API_TOKEN": TOKEN})
    # The pipeline is not started: these routes only read the config and the audit log.
    server = TestServer(build_app(svc, token, manage_service=False), host="127.0.0.1")
    client = TestClient(server)
    await client.start_server()
    client.svc = svc  # type: ignore[attr-defined]
    return client


@pytest.fixture
async def make_client(models_dir, vtest):
    clients = []

    async def make(loaded: LoadedConfig) -> TestClient:
        c = await _client(loaded)
        clients.append(c)
        return c

    yield make
    for c in clients:
        await c.close()
        await c.svc.stop()


def _config(tmp_path: Path, overrides: dict | None = None) -> LoadedConfig:
    base = {"privacy": {"audit_log": str(tmp_path / "audit.jsonl")}}
    if overrides:
        base["privacy"] |= overrides.pop("privacy", {})
        base |= overrides
    return sim_config(base)


async def test_the_privacy_notice_needs_no_token(make_client, tmp_path: Path) -> None:
    client = await make_client(_config(tmp_path))
    r = await client.get("/v1/privacy")
    assert r.status == 200 and r.headers["Content-Type"].startswith("application/json")
    body = await r.json()
    jsonschema.validate(body, PRIVACY_SCHEMA)
    assert body["controller"] == "cuecam demo store" and body["contact"] == "privacy@example.invalid"
    assert (await client.get("/v1/privacy", headers={"Authorization": "Bearer wrong-token-xxxxxxxx"})).status == 200
    doc = await (await client.get("/openapi.json", headers=AUTH)).json()
    assert doc["paths"]["/v1/privacy"]["get"]["security"] == []
    assert doc["paths"]["/v1/audit"]["get"]["security"] == [{"bearer": []}]


async def test_the_privacy_notice_follows_the_config(make_client, tmp_path: Path) -> None:
    client = await make_client(_config(tmp_path, {"privacy": {
        "retention_s": 120.0, "k_anonymity": 7, "token_rotation_s": 60.0,
        "optout": {"pause_s": 900.0, "pins": "mock"},
        "closed_hours": [{"start": "22:00", "end": "07:00"}],
        "notice": {"controller": "Corner Shop Ltd", "contact": "dpo@corner.example", "purpose": "to see busy hours"},
    }}))
    body = await (await client.get("/v1/privacy")).json()
    jsonschema.validate(body, PRIVACY_SCHEMA)
    assert (body["controller"], body["contact"], body["purpose"]) == ("Corner Shop Ltd", "dpo@corner.example",
                                                                      "to see busy hours")
    assert body["retention"] == {"seconds": 120.0, "text": "2 minutes"}
    assert body["k_anonymity"] == 7 and body["token_rotation_s"] == 60.0
    assert body["opt_out"]["pause_minutes"] == 15 and "15 minutes" in body["opt_out"]["how"][0]
    assert body["closed_hours"][0]["start"] == "22:00" and len(body["closed_hours"][0]["days"]) == 7
    assert body["staff"]["excluded_zones"] == ["staff-path"]


async def test_the_audit_log_needs_the_token_and_pages(make_client, tmp_path: Path) -> None:
    client = await make_client(_config(tmp_path))
    audit = client.svc.audit
    assert audit.path == tmp_path / "audit.jsonl"
    r = await client.get("/v1/audit")
    assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    body = await (await client.get("/v1/audit", headers=AUTH)).json()
    assert body == {"entries": [], "write_errors": 0}

    clock = iter([1000.25, 1001.5, 1002.75, 1003.0])
    audit.clock = lambda: next(clock)
    audit.append("optout", "button", vectors=12, tracks=3)
    audit.append("purge", "api", vectors=0)
    audit.append("retention", "schedule", vectors=5)
    audit.append("resume", "button")
    r = await client.get("/v1/audit", headers=AUTH)
    body = await r.json()
    jsonschema.validate(body, AUDIT_SCHEMA)
    assert [e["event"] for e in body["entries"]] == ["optout", "purge", "retention", "resume"]
    assert body["entries"][0] == {"t": 1000.25, "iso": "1970-01-01T00:16:40.250Z", "event": "optout",
                                  "source": "button", "vectors": 12, "tracks": 3}
    assert body["write_errors"] == 0
    page = await (await client.get("/v1/audit?limit=2", headers=AUTH)).json()
    assert [e["event"] for e in page["entries"]] == ["retention", "resume"]  # the newest, oldest first
    after = await (await client.get("/v1/audit?since=1001", headers=AUTH)).json()
    assert [e["t"] for e in after["entries"]] == [1001.5, 1002.75, 1003.0]
    for q in ("limit=0", "limit=100000", "since=-1", "since=1.5", "limit=x", "event=optout", "limit=1&limit=2"):
        r = await client.get(f"/v1/audit?{q}", headers=AUTH)
        assert r.status == 400, q
        assert (await r.json())["error"]["status"] == 400
    # What the API served is what is on disk.
    on_disk = [json.loads(line) for line in audit.path.read_text().splitlines()]
    assert on_disk == body["entries"]


async def test_a_relative_audit_path_resolves_against_the_config_file(make_client, tmp_path: Path) -> None:
    from tests.conftest import MODELS_DIR

    cfg_dir = tmp_path / "etc"
    cfg_dir.mkdir()
    state = cfg_dir / "state" / "audit.jsonl"
    state.parent.mkdir()
    entry = {"t": 5.0, "iso": "1970-01-01T00:00:05.000Z", "event": "optout", "source": "api", "vectors": 1}
    state.write_text(json.dumps(entry) + "\n" + '{"t": 6.0, "iso": "1970-01-0', encoding="utf-8")  # torn tail
    sim = sim_config({"privacy": {"audit_log": "state/audit.jsonl"}, "inference": {"models_dir": str(MODELS_DIR)},
                      "api": {"token_file": str(tmp_path / "token")}})
    vtest_src = sim.resolve(sim.config.camera.source)
    cfg = sim.config.model_copy(update={"camera": sim.config.camera.model_copy(update={"source": str(vtest_src)})})
    client = await make_client(LoadedConfig(cfg, cfg_dir / "board.yaml"))
    assert client.svc.audit.path == state and client.svc.audit.skipped_lines == 1
    body = await (await client.get("/v1/audit", headers=AUTH)).json()
    assert body == {"entries": [entry], "write_errors": 0}
