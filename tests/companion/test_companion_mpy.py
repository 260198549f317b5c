"""The opt-out companion's real code (the .mpy files mpy-cross makes for a Pico W) under real
MicroPython 1.27 (WebAssembly, in node), against two real sim boards on loopback: presses,
a board that is down, a Wi-Fi drop, a long press, a bouncing contact, a reset, and replayed or
forged requests; what the boards did is read back from their API (status, audit log, metrics)."""

from __future__ import annotations

import itertools
import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from firmware.privacy.companion import authorization
from tests.companion.boards import SimBoard, wait
from tests.companion.conftest import KEY, PAUSE_S
from tests.companion.pico import Pico, companion_config, new_key
from tests.integration.test_promtool import _promtool


def confirms(p: Pico, press: int | None = None, kind: str = "optout") -> dict[str, dict[str, Any]]:
    return {e["board"]: e for e in p.snapshot()
            if e.get("ev") == "confirm" and e["kind"] == kind and (press is None or e["press"] == press)}


def wait_confirmed(p: Pico, names: list[str], timeout: float, kind: str = "optout", after: int = 0) -> dict[str, Any]:
    wait(lambda: set(names) <= {e["board"] for e in p.snapshot()[after:] if e.get("ev") == "confirm"
                                and e["kind"] == kind}, timeout, f"{kind} confirmed by {names}")
    return {e["board"]: e for e in p.snapshot()[after:] if e.get("ev") == "confirm" and e["kind"] == kind}


def last_companion_entry(b: SimBoard, event: str) -> dict[str, Any]:
    return next(e for e in reversed(b.audit()) if e["event"] == event and e["source"] == "companion")


def test_a_press_pauses_and_purges_every_paired_board(pico: Pico, boards: list[SimBoard]) -> None:
    wait(lambda: all(b.vectors_held() > 0 for b in boards), 30, "vectors on both boards before the press")
    before = {b.name: b.companion("door-1")["presses"] for b in boards}
    mark = len(pico.snapshot())
    pico.cmd("press", hold_ms=80)
    got = wait_confirmed(pico, [b.name for b in boards], 5, after=mark)
    for b in boards:
        st = b.status()
        assert st["privacy"]["paused"] is True
        assert st["privacy"]["last_optout"]["source"] == "companion"
        assert st["buffer"]["records"] == 0, "purged: no vector left"
        c = b.companion("door-1")
        assert c["presses"] == before[b.name] + 1 and c["last_action"] == "optout"
        assert c["last_press"] == got[b.name]["press"] and c["last_press_t"] > time.time() - 30
        entry = last_companion_entry(b, "optout")
        assert entry["companion"] == "door-1" and entry["press"] == got[b.name]["press"]
        assert entry["vectors"] > 0, "the press purged what the board held"
        assert PAUSE_S - 5 < st["privacy"]["paused_remaining_s"] <= PAUSE_S
        m = b.get("/metrics")
        assert f'cuecam_companion_presses_total{{companion="door-1"}} {float(c["presses"])}' in m
        assert 'cuecam_companion_last_press_timestamp_seconds{companion="door-1"}' in m
        if shutil.which("promtool"):
            assert _promtool(m) == "", "Prometheus's linter is happy with the companion metrics"
    st = pico.wait_state(lambda s: s["led"] == "on", 2)
    assert st["led_level"] == 1
    assert pico.led_patterns(mark)[:2] == ["unconfirmed", "on"]


def test_a_board_that_is_down_is_retried_with_backoff_until_it_pauses(pico: Pico, boards: list[SimBoard]) -> None:
    a, b = boards
    b.stop()
    try:
        mark = len(pico.snapshot())
        t_press = time.monotonic()
        pico.cmd("press", hold_ms=80)
        wait_confirmed(pico, [a.name], 5, after=mark)
        assert a.paused()
        time.sleep(2.5)
        st = pico.state()
        assert st["led"] == "unconfirmed", "some board did not answer: the LED blinks"
        down = next(x for x in st["boards"] if x["name"] == b.name)
        assert down["pending"] == ["optout"] and down["confirmed"] == 0
        # 100 ms doubling to 1 s (+-25 %) over 2.5 s: 4 to 8 tries, not a busy loop
        assert 3 <= down["failures"] <= 9, down
        trace = pico.cmd("led_trace", since=pico.cmd("now") - 2000)
        assert len(trace) >= 8, "the LED blinks while cam-b has not answered"
        # the double blink: 120 ms on, 120 off, 120 on, 640 off (the LED loop ticks every 20 ms)
        spans = [(lv, t1 - t0) for (t0, lv), (t1, _) in itertools.pairwise(trace)]
        ons = [d for lv, d in spans if lv == 1]
        offs = [d for lv, d in spans if lv == 0]
        assert ons and all(60 <= d <= 260 for d in ons), spans
        assert any(60 <= d <= 260 for d in offs) and any(500 <= d <= 900 for d in offs), spans
    finally:
        b.start()
    got = wait_confirmed(pico, [b.name], 10, after=mark)
    late = time.monotonic() - t_press
    assert b.paused()
    entry = last_companion_entry(b, "optout")
    assert entry["press"] == got[b.name]["press"]
    assert entry["age_ms"] >= 2500, "the press's age reached the board"
    remaining = b.status()["privacy"]["paused_remaining_s"]
    assert remaining <= PAUSE_S - 2.5 and remaining >= PAUSE_S - late - 2, "the pause runs from the press"
    pico.wait_state(lambda s: s["led"] == "on", 2)


def test_a_press_during_a_wifi_drop_is_sent_when_the_link_is_back(pico: Pico, boards: list[SimBoard]) -> None:
    pico.cmd("wifi_drop")
    pico.wait_state(lambda s: not s["online"] and s["led"] == "offline", 2)
    n_requests = len(pico.requests())
    mark = len(pico.snapshot())
    pico.cmd("press", hold_ms=80)
    pico.wait_state(lambda s: s["led"] == "unconfirmed", 1)
    time.sleep(1.5)
    assert not any(b.paused() for b in boards), "nothing can reach the boards while the link is down"
    assert len(pico.requests()) == n_requests
    t_restore = time.monotonic()
    pico.cmd("wifi_restore")
    got = wait_confirmed(pico, [b.name for b in boards], 5, after=mark)
    delay = time.monotonic() - t_restore
    assert delay < 2.0, f"sent within {delay:.2f} s of the link coming back (join 0.2 s + rejoin backoff <= 0.5 s)"
    st = pico.state()
    assert st["drops"] >= 1 and st["links"] >= 2 and st["led"] == "on"
    for b in boards:
        assert b.paused()
        entry = last_companion_entry(b, "optout")
        assert entry["press"] == got[b.name]["press"] and entry["age_ms"] >= 1500
        assert b.status()["privacy"]["paused_remaining_s"] <= PAUSE_S - 1.5


def test_a_press_whose_pause_ran_out_offline_is_never_sent(lib: Path, boards: list[SimBoard], tmp_path: Path,
                                                            flash: Path) -> None:
    for b in boards:
        b.measuring()
    cfg = companion_config(tmp_path / "companion.json", "door-1", KEY, [(b.name, b.url, 2.0) for b in boards])
    p = Pico(lib, cfg, flash)
    try:
        p.wait_state(lambda s: s["online"] and all(b["synced"] for b in s["boards"]), 10)
        p.cmd("wifi_drop")
        p.wait_state(lambda s: not s["online"], 2)
        sent = len(p.requests())
        p.cmd("press", hold_ms=80)
        p.wait_state(lambda s: s["led"] == "unconfirmed", 1)
        st = p.wait_state(lambda s: all(b["expired"] == 1 and not b["pending"] for b in s["boards"]), 4)
        assert st["led"] == "offline", "the pause period passed: nothing left to confirm"
        p.cmd("wifi_restore")
        p.wait_state(lambda s: s["online"], 3)
        time.sleep(0.5)
        assert len(p.requests()) == sent, "a press past its pause period is not sent"
        assert not any(b.paused() for b in boards)
    finally:
        p.close()


def test_a_companion_the_boards_refuse_blinks_fast_and_pauses_nothing(lib: Path, boards: list[SimBoard],
                                                                      tmp_path: Path) -> None:
    """Provisioned wrong (a key the boards do not have): every board refuses it, logged, and its
    LED says so with the fast blink instead of lighting steady."""
    for b in boards:
        b.measuring()
    cfg = companion_config(tmp_path / "companion.json", "door-1", new_key(), [(b.name, b.url, PAUSE_S) for b in boards])
    p = Pico(lib, cfg, tmp_path / "flash")
    try:
        p.wait_state(lambda s: s["online"], 5)
        before = {b.name: b.companion("door-1")["refusals"] for b in boards}
        p.cmd("press", hold_ms=80)
        st = p.wait_state(lambda s: s["led"] == "refused", 3)
        assert all(b["refused"] == "bad_signature" and b["pending"] == ["optout"] for b in st["boards"]), st
        time.sleep(1.0)
        assert p.state()["led"] == "refused", "it keeps retrying (the config may be fixed) and keeps saying so"
        for b in boards:
            assert not b.paused()
            assert b.companion("door-1")["refusals"] > before[b.name]
            assert b.companion("door-1")["last_refusal"] == "bad_signature"
    finally:
        p.close()


def test_a_long_press_pauses_purges_then_resumes_like_the_boards_button(pico: Pico, boards: list[SimBoard]) -> None:
    mark = len(pico.snapshot())
    pico.cmd("press", hold_ms=1200)  # long_press_ms 800, copied from the boards' long_press_s
    wait_confirmed(pico, [b.name for b in boards], 5, kind="resume", after=mark)
    for b in boards:
        assert not b.paused()
        entries = [e for e in b.audit() if e["source"] == "companion"][-2:]
        assert [e["event"] for e in entries] == ["optout", "resume"]
        assert entries[0]["press"] < entries[1]["press"]
    st = pico.wait_state(lambda s: s["led"] == "off", 2)
    assert st["holds"] == 1 and st["presses"] == 1


def test_a_bouncing_contact_is_one_press(pico: Pico, boards: list[SimBoard]) -> None:
    mark = len(pico.snapshot())
    pico.cmd("bounce", n=7, every_ms=4, hold_ms=100)  # 7 level changes within 28 ms, inside bounce_ms 50
    wait_confirmed(pico, [b.name for b in boards], 5, after=mark)
    time.sleep(0.3)
    st = pico.state()
    assert st["presses"] == 1
    sent = [(e["status"], json.loads(bytes.fromhex(e["body"]))) for e in pico.requests()]
    assert len({body["press"] for _, body in sent}) == 1, sent
    assert [st for st, _ in sent] == [200, 200], sent


def test_a_companion_that_lost_its_flash_catches_up_with_the_boards_counter(
        lib: Path, boards: list[SimBoard], tmp_path: Path) -> None:
    """Re-flashed with the same key and an empty flash: the first request is a replay to the
    boards, whose answer names the counter they have seen; the companion skips past it."""
    for b in boards:
        b.measuring()
    cfg = companion_config(tmp_path / "companion.json", "door-1", KEY, [(b.name, b.url, PAUSE_S) for b in boards])
    p = Pico(lib, cfg, tmp_path / "empty-flash")
    try:
        p.wait_state(lambda s: s["online"], 5)
        p.cmd("press", hold_ms=80)
        wait_confirmed(p, [b.name for b in boards], 5)
        statuses = [r["status"] for r in p.requests()]
        assert statuses.count(401) == 2 and statuses.count(200) == 2, statuses
    finally:
        p.close()
    for b in boards:
        assert b.paused() and last_companion_entry(b, "refused")["reason"] == "replay"


def test_the_counter_survives_a_reset_and_replays_stay_refused(lib: Path, boards: list[SimBoard], tmp_path: Path,
                                                               flash: Path) -> None:
    for b in boards:
        b.measuring()
    cfg = companion_config(tmp_path / "companion.json", "door-1", KEY, [(b.name, b.url, PAUSE_S) for b in boards])
    p1 = Pico(lib, cfg, flash)
    try:
        p1.wait_state(lambda s: s["online"], 5)
        p1.cmd("press", hold_ms=80)
        wait_confirmed(p1, [b.name for b in boards], 5)
        first = p1.requests()
    finally:
        p1.close("kill")  # power cut: nothing more is written
    p2 = Pico(lib, cfg, flash)
    try:
        p2.wait_state(lambda s: s["online"], 5)
        p2.cmd("press", hold_ms=80)
        wait_confirmed(p2, [b.name for b in boards], 5)
        old = max(json.loads(bytes.fromhex(r["body"]))["ctr"] for r in first)
        new = min(json.loads(bytes.fromhex(r["body"]))["ctr"] for r in p2.requests())
        assert new > old, "after the reset the counter went on upward"
        assert p2.state()["counter_writes"] <= 2, "flash is written once per block of counters, not per request"
    finally:
        p2.close()
    a = boards[0]
    a.stop()  # the board restarts too: its counters were saved
    a.start()
    accepted = next(r for r in first if r["status"] == 200 and r["url"].startswith(a.url))
    status, _, body = a.call("POST", "/v1/optout", bytes.fromhex(accepted["body"]), accepted["headers"], token=False)
    assert status == 401 and json.loads(body)["refused"] == "replay"
    assert not a.paused()
    assert last_companion_entry(a, "refused")["reason"] == "replay"


def _signed(board: SimBoard, key: bytes, name: str = "door-1", *, ctr: int, ts: float | None = None,
            action: str = "optout", to: str | None = None) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"v": 1, "companion": name, "board": to or board.name, "action": action,
                       "ts": int(time.time() if ts is None else ts), "ctr": ctr, "press": ctr, "age_ms": 0}).encode()
    return body, {"Authorization": authorization(name, key, body), "Content-Type": "application/json"}


def test_replays_stale_timestamps_unknown_companions_and_forgeries_are_refused_and_logged(
        pico: Pico, boards: list[SimBoard]) -> None:
    a = boards[0]
    mark = len(pico.snapshot())
    pico.cmd("press", hold_ms=80)
    wait_confirmed(pico, [b.name for b in boards], 5, after=mark)
    a.measuring()
    optouts = a.status()["privacy"]["optouts"]
    captured = next(r for r in reversed(pico.requests()) if r["status"] == 200 and r["url"].startswith(a.url))
    sent = json.loads(bytes.fromhex(captured["body"]))
    hi = a.companion("door-1")["counter"]
    cases: list[tuple[str, bytes, dict[str, str]]] = [("replay", bytes.fromhex(captured["body"]), captured["headers"])]
    cases.append(("stale", *_signed(a, KEY, ctr=hi + 10, ts=time.time() - 600)))
    cases.append(("stale", *_signed(a, KEY, ctr=hi + 11, ts=time.time() + 600)))
    cases.append(("unknown_companion", *_signed(a, new_key(), "door-9", ctr=1)))
    cases.append(("bad_signature", *_signed(a, new_key(), ctr=hi + 12)))  # a listed name, another key
    body, headers = _signed(a, KEY, ctr=hi + 13)
    cases.append(("bad_signature", body.replace(b'"optout"', b'"resume"'), headers))  # altered after signing
    cases.append(("wrong_board", *_signed(a, KEY, ctr=hi + 14, to="cam-b")))
    refused_before = a.companion("door-1")["refusals"]
    n_audit = len(a.audit())
    for reason, body, headers in cases:
        status, h, answer = a.call("POST", "/v1/optout", body, headers, token=False)
        data = json.loads(answer)
        assert status == 401 and data["refused"] == reason, (reason, status, data)
        assert abs(data["time"] - time.time()) < 5 and "Cuecam-Companion" in h["www-authenticate"]
    time.sleep(1.3)  # refusals within a second are written together, one entry per reason and companion
    logged = [e for e in a.audit()[n_audit:] if e["event"] == "refused"]
    counted: dict[tuple[str, str | None], int] = {}
    for e in logged:
        counted[(e["reason"], e.get("companion"))] = counted.get((e["reason"], e.get("companion")), 0) + e.get("count", 1)
    assert counted == {("replay", "door-1"): 1, ("stale", "door-1"): 2, ("unknown_companion", "door-9"): 1,
                       ("bad_signature", "door-1"): 2, ("wrong_board", "door-1"): 1}, logged
    assert a.status()["privacy"]["optouts"] == optouts, "no refused request paused the board"
    assert a.companion("door-1")["refusals"] == refused_before + 6  # door-9 is not listed
    m = a.get("/metrics")
    assert 'cuecam_companion_refusals_total{reason="stale"}' in m
    # the key allows nothing but opting out
    for method, path in (("GET", "/v1/vectors"), ("GET", "/v1/status"), ("GET", "/v1/audit"), ("POST", "/v1/sim/button")):
        status, _, _ = a.call(method, path, b"" if method == "POST" else None, captured["headers"], token=False)
        assert status == 401, (method, path)
    status, _, _ = a.call("GET", "/v1/status", None, {"Authorization": f"Bearer {KEY.hex()}"}, token=False)
    assert status == 401
    assert sent["companion"] == "door-1" and not a.paused()


def test_a_flood_of_forged_requests_is_all_logged_in_few_writes(boards: list[SimBoard]) -> None:
    """Every refusal is in the audit log, but 40 forged requests in a burst are not 40 fsynced appends."""
    a = boards[1]
    n_audit = len(a.audit())
    for i in range(40):
        body, headers = _signed(a, new_key(), ctr=10**9 + i)
        status, _, _ = a.call("POST", "/v1/optout", body, headers, token=False)
        assert status == 401
    time.sleep(1.3)
    logged = [e for e in a.audit()[n_audit:] if e["event"] == "refused"]
    assert sum(e.get("count", 1) for e in logged) == 40
    assert len(logged) <= 4, logged
    assert {e["reason"] for e in logged} == {"bad_signature"}


@pytest.mark.slow
def test_press_to_paused_and_purged_latency(pico: Pico, boards: list[SimBoard]) -> None:
    """The same budget as the board's GPIO button: p99 < 250 ms from the pin going low to the
    board's signed answer that it has paused and purged, for every board. Interleaved with
    presses of cam-a's own (mock) GPIO button through POST /v1/sim/button, timed from the request
    to the answer that the board paused (it polls every 10 ms), for the ratio."""
    n = 200
    before = {b.name: b.companion("door-1")["presses"] for b in boards}
    lat: dict[str, list[float]] = {b.name: [] for b in boards}
    board_ms: list[float] = []
    gpio_ms: list[float] = []
    overhead: list[float] = []
    t0 = time.monotonic()
    for _ in range(n):
        mark = len(pico.snapshot())
        pico.cmd("down")
        got = wait_confirmed(pico, [b.name for b in boards], 5, after=mark)
        pico.cmd("up")
        for name, e in got.items():
            lat[name].append(e["latency_ms"])
            board_ms.append(e["board_ms"])
            overhead.append(e["latency_ms"] - e["board_ms"])
        time.sleep(0.06)  # past bounce_ms before the next press
        t_gpio = time.perf_counter()
        status, _, body = boards[0].call("POST", "/v1/sim/button?hold_ms=30")
        gpio_ms.append((time.perf_counter() - t_gpio) * 1000)
        assert status == 200, body
        time.sleep(0.06)
    wall = time.monotonic() - t0
    allv = sorted(v for vs in lat.values() for v in vs)

    def pct(vs: list[float], q: float) -> float:
        s = sorted(vs)
        return s[min(len(s) - 1, int(q * len(s)))]

    print(f"\ncompanion_presses: {n} ({len(boards)} boards, {wall:.1f} s)")
    for name, vs in lat.items():
        print(f"companion_press_to_paused_ms_p50[{name}]: {pct(vs, 0.5):.1f}")
        print(f"companion_press_to_paused_ms_p99[{name}]: {pct(vs, 0.99):.1f}")
    print(f"companion_press_to_paused_ms_p50: {pct(allv, 0.5):.1f}")
    print(f"companion_press_to_paused_ms_p99: {pct(allv, 0.99):.1f}")
    print(f"companion_press_to_paused_ms_max: {allv[-1]:.1f}")
    print(f"companion_board_pause_purge_ms_p50: {pct(board_ms, 0.5):.1f}")
    print(f"companion_board_pause_purge_ms_p99: {pct(board_ms, 0.99):.1f}")
    print(f"gpio_button_press_to_paused_ms_p50: {pct(gpio_ms, 0.5):.1f}")
    print(f"gpio_button_press_to_paused_ms_p99: {pct(gpio_ms, 0.99):.1f}")
    print(f"companion_vs_gpio_button_p99_ratio: {pct(allv, 0.99) / pct(gpio_ms, 0.99):.2f}")
    print(f"companion_overhead_ms_p99: {pct(overhead, 0.99):.1f}")
    for b in boards:
        assert b.companion("door-1")["presses"] == before[b.name] + n
        assert b.paused()
    # what the companion adds to the board's own pause (button poll, signing, the HTTP hop, the answer)
    assert pct(overhead, 0.99) < 100
    # the same budget as the board's own button, measured interleaved on the same machine...
    assert pct(allv, 0.99) <= pct(gpio_ms, 0.99) + 100
    # ...and the absolute target, unless the board's own button misses it too (other work on the
    # same 2 cores stretches the board's pause: the frame in analysis must finish first)
    if pct(gpio_ms, 0.99) < 200:
        assert pct(allv, 0.99) < 250
