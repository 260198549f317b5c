"""`cuecam sim-store` as the integrator runs it: three real boards (vtest.avi and two scripted
scenes), Debian's mosquitto, the webhook receiver and the gateway, all on loopback. The engaged
visitor of the display scene must trigger the sample rule, the seeded busy history must make the
run a slow period (offer rule) on the footfall the plaza camera counts, the demo till's sales
must make conversion low (conversion rule), MQTT must carry them, and every webhook must verify."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from host_tools.gateway.outputs import verify_signature
from host_tools.simstore import mosquitto_available
from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(not mosquitto_available(),
                                reason="Debian's mosquitto is not installed (make mosquitto / apt-get install mosquitto)")


@pytest.fixture(scope="module")
def store_run(tmp_path_factory, models_dir, vtest):
    wd = tmp_path_factory.mktemp("store")
    proc = subprocess.run([sys.executable, "-m", "host_tools.cli", "sim-store", "--devices", "3", "--duration", "62",
                           "--json", "--workdir", str(wd), "--gateway-port", "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout), proc.stderr, Path(wd)


def test_vectors_arrive_from_every_board_matched_per_device(store_run):
    summary, _err, _wd = store_run
    devs = {d["name"]: d for d in summary["devices"]}
    assert set(devs) == {"cam-plaza", "cam-display", "cam-entrance"}
    for d in devs.values():
        assert d["state"] == "ok" and d["vectors"] > 0 and d["lost"] == 0 and d["errors"] == 0, d
    # sessions are a board's token, scoped to that board; never one token on two boards
    by_device: dict[str, set[str]] = {}
    for s in summary["sessions"]:
        by_device.setdefault(s["device"], set()).add(s["token"])
    assert set(by_device) == set(devs)
    assert not (by_device["cam-plaza"] & by_device["cam-display"])
    assert sum(len(v) for v in by_device.values()) == summary["state"]["sessions_held"]
    assert summary["state"]["devices"]["ok"] == 3


def test_the_engaged_visitor_triggers_the_sample_rule(store_run):
    summary, err, _wd = store_run
    samples = [d for d in summary["decisions"] if d["rule"] == "sample-at-display"]
    assert samples, err[-3000:]
    d = samples[0]
    assert d["inputs"]["device"] == "cam-display" and d["inputs"]["engaged_s"] >= 20
    assert d["inputs"]["engagement_mean"] >= 0.7
    assert "engaged" in d["explanation"] and d["explanation"] in err  # printed as it happened
    assert {a["output"]: a["status"] for a in d["actions"]} == {"mqtt": "sent", "signage": "sent", "log": "sent"}
    # the cooldown keeps the display's screen from repeating it within 120 s
    assert len(samples) == 1


def test_a_slow_period_triggers_the_offer_rule(store_run):
    summary, _err, _wd = store_run
    offers = [d for d in summary["decisions"] if d["rule"] == "slow-hour-offer"]
    assert len(offers) == 1
    i = offers[0]["inputs"]
    assert i["per_hour"] < i["baseline_per_hour"] and i["baseline_samples"] == 4 and i["baseline_percentile"] == 25


def test_the_plaza_door_counts_footfall_and_the_till_makes_a_conversion_decision(store_run):
    summary, err, _wd = store_run
    traffic = summary["state"]["traffic"]
    assert traffic["source"] == "footfall" and traffic["people"] >= 3 and traffic["transactions"] >= 1, traffic
    assert traffic["sessions"] == summary["state"]["sessions"]  # kept for what they are
    drops = [d for d in summary["decisions"] if d["rule"] == "conversion-drop"]
    assert len(drops) == 1, err[-3000:]
    d = drops[0]
    i = d["inputs"]
    assert i["footfall"] >= 3 and i["conversion"] == round(i["transactions"] / i["footfall"], 3)
    assert i["conversion"] < i["baseline_conversion"] == 0.45 and i["baseline_samples"] == 4
    assert "conversion in the store" in d["explanation"] and "people in" in d["explanation"] and d["explanation"] in err
    assert {a["output"]: a["status"] for a in d["actions"]} == {"staff": "sent", "signage": "sent", "log": "sent"}
    assert "[till] sale 1" in err and "-> gateway 200" in err
    now = summary["kpis"][-1]
    assert now["footfall"] >= 3 and now["transactions"] >= 1 and now["conversion"] is not None


def test_mqtt_messages_come_back_from_the_real_broker(store_run):
    summary, _err, _wd = store_run
    msgs = summary["mqtt"]["received"]
    topics = [m["topic"] for m in msgs]
    assert "cuecam/demo-store/signage/plaza-sign" in topics
    assert "cuecam/demo-store/signage/entrance" in topics
    state = [m for m in msgs if m["topic"] == "cuecam/demo-store/state"]
    assert state and set(state[-1]["body"]["zones"]) >= {"walkway"}
    decided = {d["id"] for d in summary["decisions"] if any(a["output"] == "mqtt" for a in d["actions"])}
    assert decided == {m["body"]["decision"] for m in msgs if m["body"] and "decision" in m["body"]}
    # no tokens leave the gateway in the store state it publishes
    assert all(len(str(m["body"])) < 20000 for m in msgs)
    assert not any(s["token"] in json.dumps(state) for s in summary["sessions"])


def test_webhook_signatures_verify_with_the_shared_secret(store_run):
    summary, _err, wd = store_run
    secret = (wd / "webhook-secret").read_text().strip()
    hooks = summary["webhooks"]
    assert hooks and all(h["verified"] for h in hooks)
    for h in hooks:
        assert verify_signature(secret, h["body"].encode(), h["headers"])
        assert not verify_signature(secret, h["body"].encode() + b" ", h["headers"])
    assert {json.loads(h["body"])["rule"] for h in hooks} >= {"sample-at-display", "slow-hour-offer"}
