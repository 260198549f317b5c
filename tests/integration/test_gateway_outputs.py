"""The gateway's outputs against real peers on loopback: Debian's mosquitto broker (publish,
subscribe, broker restart) and an aiohttp webhook receiver (HMAC signatures, retries, refusals)."""

from __future__ import annotations

import asyncio
import contextlib

import aiomqtt
import orjson
import pytest
from aiohttp import web

from host_tools.gateway.config import Action, MqttOutput, RateLimit, WebhookOutput
from host_tools.gateway.outputs import MqttSink, WebhookSink, verify_signature
from host_tools.gateway.rules import Decision
from host_tools.simstore import Mosquitto, mosquitto_available

pytestmark = pytest.mark.skipif(not mosquitto_available(),
                                reason="Debian's mosquitto is not installed (make mosquitto / apt-get install mosquitto)")


def decision(i: int = 1) -> Decision:
    return Decision(i, 1_790_000_000.0 + i, "sample-at-display", "engaged", "plaza-sign",
                    "sample-at-display: a visitor engaged 21 s", {"engaged_s": 21.0, "session": "ab" * 16})


@pytest.fixture
def broker(tmp_path):
    b = Mosquitto(tmp_path)
    yield b
    b.stop()


async def collect(port: int, topic: str, into: list, ready: asyncio.Event) -> None:
    async with aiomqtt.Client("127.0.0.1", port) as c:
        await c.subscribe(topic, qos=1)
        ready.set()
        async for m in c.messages:
            into.append((str(m.topic), orjson.loads(m.payload), m.retain))


async def test_mqtt_decisions_reach_a_real_broker_and_survive_its_restart(broker, tmp_path):
    await broker.ready()
    got: list = []
    ready = asyncio.Event()
    sub = asyncio.create_task(collect(broker.port, "cuecam/#", got, ready))
    await asyncio.wait_for(ready.wait(), 10)
    sink = MqttSink(MqttOutput(port=broker.port, rate_limit=RateLimit(per_minute=600, burst=50)), None, timeout=3.0)
    await sink.start()
    try:
        r = await sink.deliver(decision(1), Action(output="mqtt", topic="store-1/signage/plaza"), "store-1")
        assert r == {"output": "mqtt", "status": "sent", "topic": "cuecam/store-1/signage/plaza"}
        r2 = await sink.deliver(decision(2), Action(output="mqtt"), "store-1")
        assert r2["topic"] == "cuecam/store-1/decisions/sample-at-display"
        for _ in range(50):
            if len(got) >= 2:
                break
            await asyncio.sleep(0.1)
        assert [t for t, _b, _r in got] == ["cuecam/store-1/signage/plaza", "cuecam/store-1/decisions/sample-at-display"]
        body = got[0][1]
        assert body["decision"] == 1 and body["explanation"].startswith("sample-at-display") and body["inputs"]["engaged_s"] == 21
        # the broker goes away: the publish fails (recorded), then the sink reconnects by itself
        sub.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await sub
        broker.stop()
        failed = await sink.deliver(decision(3), Action(output="mqtt"), "store-1")
        assert failed["status"] == "failed"
        broker.start()  # the same port again
        try:
            await broker.ready()
            got.clear()
            ready.clear()
            sub = asyncio.create_task(collect(broker.port, "cuecam/#", got, ready))
            await asyncio.wait_for(ready.wait(), 10)
            for _ in range(100):
                res = await sink.deliver(decision(4), Action(output="mqtt"), "store-1")
                if res["status"] == "sent":
                    break
                await asyncio.sleep(0.2)
            assert res["status"] == "sent" and sink.reconnects >= 1
            for _ in range(50):
                if got:
                    break
                await asyncio.sleep(0.1)
            assert got and got[0][1]["decision"] == 4
        finally:
            sub.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await sub
    finally:
        await sink.stop()


async def test_mqtt_rate_limit_records_what_was_held_back(broker):
    await broker.ready()
    sink = MqttSink(MqttOutput(port=broker.port, rate_limit=RateLimit(per_minute=1, burst=2)), None)
    await sink.start()
    try:
        results = [await sink.deliver(decision(i), Action(output="mqtt"), "s") for i in range(5)]
    finally:
        await sink.stop()
    assert [r["status"] for r in results] == ["sent", "sent", "rate_limited", "rate_limited", "rate_limited"]
    assert sink.limited == 3


async def test_webhooks_are_signed_retried_and_refusals_recorded():
    secret = "webhook-secret-0123456789"
    seen: list[tuple[bool, dict]] = []
    fail_first = {"n": 1}

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        ok = verify_signature(secret, body, request.headers)
        seen.append((ok, orjson.loads(body)))
        if request.path == "/flaky" and fail_first["n"]:
            fail_first["n"] -= 1
            return web.Response(status=503)
        if request.path == "/refuse":
            return web.Response(status=403)
        return web.json_response({"ok": ok}, status=200 if ok else 401)

    app = web.Application()
    app.router.add_post("/{p}", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async def deliver(path: str, retries: int = 2) -> dict:
            sink = WebhookSink(WebhookOutput(name="signage", url=f"http://127.0.0.1:{port}/{path}",
                                             secret={"file": "unused"}, retries=retries, timeout_s=3), secret)
            await sink.start()
            try:
                return await sink.deliver(decision(7), Action(output="signage", payload={"show": "sample"}), "store-1")
            finally:
                await sink.stop()

        ok = await deliver("screen")
        assert ok == {"output": "signage", "status": "sent", "http_status": 200, "attempts": 1}
        assert seen[-1][0] is True and seen[-1][1]["payload"] == {"show": "sample"} and seen[-1][1]["decision"] == 7
        flaky = await deliver("flaky")
        assert flaky["status"] == "sent" and flaky["attempts"] == 2
        refused = await deliver("refuse")
        assert refused["status"] == "failed" and "403" in refused["detail"]
        assert sum(1 for _ok, b in seen if b["decision"] == 7) == 4  # 1 + 2 (one retry) + 1 (403 is not retried)
        assert all(ok for ok, _b in seen)
        # a receiver with another secret refuses: the gateway's signature is what it checks
        wrong = WebhookSink(WebhookOutput(name="x", url=f"http://127.0.0.1:{port}/screen", secret={"file": "u"},
                                          retries=0), "not-the-secret-000")
        await wrong.start()
        try:
            res = await wrong.deliver(decision(8), Action(output="x"), "s")
        finally:
            await wrong.stop()
        assert res["status"] == "failed" and seen[-1][0] is False
        unreachable = WebhookSink(WebhookOutput(name="y", url="http://127.0.0.1:9/none", secret={"file": "u"}, retries=1,
                                                timeout_s=1), secret)
        await unreachable.start()
        try:
            res = await unreachable.deliver(decision(9), Action(output="y"), "s")
        finally:
            await unreachable.stop()
        assert res["status"] == "failed"
    finally:
        await runner.cleanup()
