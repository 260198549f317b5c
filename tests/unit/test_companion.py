"""The companion protocol on both sides, under CPython: the board's verifier (replays, stale
timestamps, unknown companions, forgeries, the counters kept across restarts), the companion's
own code (signing, debounce, the counter that survives resets, the Date header, its config),
`cuecam provision --companion` and `cuecam sign --companion`. The MicroPython run is
tests/companion/test_companion_mpy.py."""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import stat
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from firmware.config import load_config
from firmware.errors import ConfigError
from firmware.http.companion import confirm
from firmware.privacy.audit import AuditLog
from firmware.privacy.companion import Companion, CompanionVerifier, Refused, authorization, parse_key, sign
from host_tools.cli import main as cli
from tests.conftest import ROOT, SIM_CONFIG

sys.path.insert(0, str(ROOT / "companion"))
from cuecam_companion import core

KEY = bytes(range(32))
WINDOW = 90.0


class Clock:
    def __init__(self, t: float = 1_750_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def verifier(tmp_path: Path, clock: Clock, key: bytes = KEY, resume: bool = True, pause_s: float = 600) -> CompanionVerifier:
    return CompanionVerifier([Companion("door-1", key)], "cam-a", WINDOW, tmp_path / "companions.json",
                             pause_s=pause_s, resume_allowed=resume, clock=clock)


def request(clock: Clock, ctr: int, *, key: bytes = KEY, name: str = "door-1", board: str = "cam-a",
            action: str = "optout", dt: float = 0.0, age_ms: int = 0, **extra: object) -> tuple[str, bytes]:
    body = json.dumps({"v": 1, "companion": name, "board": board, "action": action, "ts": round(clock() + dt),
                       "ctr": ctr, "press": ctr, "age_ms": age_ms, **extra}).encode()
    return authorization(name, key, body), body


def refused(v: CompanionVerifier, header: str, body: bytes) -> str:
    with pytest.raises(Refused) as e:
        v.verify(header, body)
    return e.value.reason


def test_a_fresh_signed_request_is_accepted_once(tmp_path: Path) -> None:
    c = Clock()
    v = verifier(tmp_path, c)
    h, b = request(c, 5)
    acc = v.verify(h, b)
    assert (acc.companion, acc.action, acc.ctr) == ("door-1", "optout", 5)
    assert refused(v, h, b) == "replay"
    assert refused(v, *request(c, 4)) == "replay", "a lower counter is a replay too"
    assert v.verify(*request(c, 6)).ctr == 6


@pytest.mark.parametrize("dt", [-WINDOW - 1, -WINDOW - 120, WINDOW + 1, WINDOW + 3600, -1e6])
def test_timestamps_outside_the_window_are_stale(tmp_path: Path, dt: float) -> None:
    c = Clock()
    assert refused(verifier(tmp_path, c), *request(c, 1, dt=dt)) == "stale"


@pytest.mark.parametrize("dt", [-WINDOW + 1, -30, 0, 30, WINDOW - 1])
def test_timestamps_inside_the_window_pass(tmp_path: Path, dt: float) -> None:
    c = Clock()
    assert verifier(tmp_path, c).verify(*request(c, 1, dt=dt)).ctr == 1


def test_forgeries_and_strangers_are_refused(tmp_path: Path) -> None:
    c = Clock()
    v = verifier(tmp_path, c)
    assert refused(v, *request(c, 1, name="door-2")) == "unknown_companion"
    assert refused(v, *request(c, 1, key=bytes(32))) == "bad_signature"
    h, b = request(c, 2)
    assert refused(v, h, b.replace(b'"optout"', b'"resume"')) == "bad_signature"
    assert refused(v, h.replace("door-1:", "door-1:00"), b) == "bad_signature"
    assert refused(v, "Cuecam-Companion", b) == "malformed"
    assert refused(v, "Cuecam-Companion ../etc:abc", b) == "malformed"
    assert refused(v, *request(c, 3, board="cam-b")) == "wrong_board"
    assert refused(v, *request(c, 4, extra_field=1)) == "malformed"
    for bad in ({"ctr": True}, {"ts": -1}, {"age_ms": 1.5}, {"ctr": 2**60}):
        body = json.dumps({"v": 1, "companion": "door-1", "board": "cam-a", "action": "optout", "ts": round(c()),
                           "ctr": 9, "press": 9, "age_ms": 0, **bad}).encode()
        assert refused(v, authorization("door-1", KEY, body), body) == "malformed", bad
    body = b'{"v":1}'
    assert refused(v, authorization("door-1", KEY, body), body) == "malformed"
    big = b" " * 2000
    assert refused(v, authorization("door-1", KEY, big), big) == "malformed"
    assert v.refusals["malformed"] >= 6 and v.status()[0]["refusals"] >= 10
    assert v.counter("door-1") == 0, "no refused request used up a counter"


def test_a_late_press_past_its_pause_and_a_resume_where_none_is_allowed(tmp_path: Path) -> None:
    c = Clock()
    v = verifier(tmp_path, c, resume=False, pause_s=60)
    assert refused(v, *request(c, 1, age_ms=60_000)) == "expired"
    assert v.verify(*request(c, 2, age_ms=59_000)).age_s == 59.0
    assert refused(v, *request(c, 3, action="resume")) == "resume_not_allowed"
    assert refused(v, *request(c, 3, action="resume")) == "replay", "a refused-but-authentic request used its counter"


def test_the_counters_survive_a_board_restart_and_a_new_key_starts_afresh(tmp_path: Path) -> None:
    c = Clock()
    v = verifier(tmp_path, c)
    h, b = request(c, 41)
    v.accepted(v.verify(h, b))
    v.save()
    assert stat.S_IMODE((tmp_path / "companions.json").stat().st_mode) == 0o600
    again = verifier(tmp_path, c)
    assert refused(again, h, b) == "replay"
    assert again.status()[0]["presses"] == 1 and again.status()[0]["last_press"] == 41
    rekeyed = verifier(tmp_path, c, key=bytes(31) + b"\x01")
    assert rekeyed.verify(*request(c, 1, key=bytes(31) + b"\x01")).ctr == 1
    (tmp_path / "companions.json").write_bytes(b"{torn")
    assert verifier(tmp_path, c).counter("door-1") == 0  # logged; the timestamp window still holds


def test_key_files_must_hold_256_bits_of_hex() -> None:
    assert parse_key("ab" * 32 + "\n", "x") == bytes([0xAB]) * 32
    for bad in ("ab" * 31, "AB" * 32, "zz" * 32, ""):
        with pytest.raises(Exception, match="64 hex"):
            parse_key(bad, "x")


# -- the companion's own code (MicroPython's, run by CPython) -------------------------------------------
def companion_cfg(**over: object) -> dict:
    cfg = {"schema": 1, "name": "door-1", "key": KEY.hex(), "wifi": {"ssid": "ShopNet", "password": "pw"},
           "boards": [{"name": "cam-a", "url": "http://10.0.0.31:8080", "pause_s": 600}]}
    cfg.update(over)
    return cfg


def test_what_the_companion_signs_the_board_accepts_and_the_boards_answer_is_checked(tmp_path: Path) -> None:
    c = Clock()
    v = verifier(tmp_path, c)
    comp = core.Companion(core.check_config(companion_cfg()), button_pin=None, led=None, radio=None, transport=None,
                          state_dir=str(tmp_path), log=lambda m: None)
    board = comp.boards[0]
    now = core.ticks_ms()
    board.sync = (c(), now)
    comp.press()
    action = board.queue[0]
    headers, body, ctr = comp.signed(board, action, now)
    acc = v.verify(headers["Authorization"], body)
    assert acc.ctr == ctr and acc.press == action.press < ctr
    assert headers["Authorization"].split(":")[1] == sign(KEY, body)
    answer = b'{"paused":true,"remaining_s":600}'
    assert comp.confirmed_by_board({"cuecam-confirm": confirm(KEY, ctr, answer)}, answer, ctr)
    assert not comp.confirmed_by_board({"cuecam-confirm": confirm(KEY, ctr + 1, answer)}, answer, ctr)
    assert not comp.confirmed_by_board({"cuecam-confirm": confirm(KEY, ctr, answer)}, answer.replace(b"true", b"fals"), ctr)
    assert not comp.confirmed_by_board({}, answer, ctr)


@pytest.mark.parametrize("seed", range(8))
def test_debounce_one_press_per_press_and_one_hold_per_long_press(seed: int) -> None:
    rng = random.Random(seed)
    t = [0]
    pin = SimpleNamespace(level=1, value=lambda: pin.level)
    events: list[tuple[str, int]] = []
    cfg = {"pull_up": True, "bounce_ms": 50, "long_press_ms": 800, "poll_ms": 5}
    btn = core.Button(pin, cfg, lambda: events.append(("press", t[0])), lambda: events.append(("hold", t[0])),
                      clock=lambda: t[0])
    expected = []
    for _ in range(20):
        hold = rng.choice([rng.randint(80, 500), rng.randint(900, 2000)])
        bounces = rng.randint(0, 6)
        start = t[0]
        schedule = [(start, 0)] + [(start + 1 + i * rng.randint(1, 6), (i + 1) % 2) for i in range(bounces)]
        schedule.append((schedule[-1][0] + 1, 0))  # settles down
        release = start + hold
        schedule += [(release, 1)] + [(release + 1 + i * 3, i % 2) for i in range(rng.randint(0, 4))]
        schedule.append((schedule[-1][0] + 1, 1))
        expected.append("press")
        if hold >= 800 + 45:
            expected.append("hold")
        end = schedule[-1][0] + 200
        while t[0] < end:
            for at, lv in schedule:
                if at <= t[0]:
                    pin.level = lv
            btn.sample()
            t[0] += 5
    assert [e for e, _ in events] == expected


def test_the_counter_never_repeats_across_resets(tmp_path: Path) -> None:
    path = str(tmp_path / "counter")
    rng = random.Random(7)
    seen: list[int] = []
    store = core.CounterStore(path, block=8)
    for _ in range(300):
        if rng.random() < 0.1:
            store = core.CounterStore(path, block=8)  # a reset at an arbitrary point
        seen.append(store.next())
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    assert not (tmp_path / "counter.tmp").exists()
    store.skip_past(10_000)
    assert store.next() > 10_000


def test_http_dates_read_as_epoch_seconds() -> None:
    rng = random.Random(3)
    for _ in range(500):
        t = rng.randint(0, 2**32)
        assert core.http_date(email.utils.formatdate(t, usegmt=True)) == t
    assert core.http_date("garbage") is None and core.http_date("") is None


def test_the_companion_config_is_checked() -> None:
    cfg = core.check_config(companion_cfg())
    assert cfg["button"]["bounce_ms"] == 50 and cfg["led"]["pin"] == 14 and cfg["key"] == KEY
    for over, msg in (({"schema": 2}, "schema"), ({"key": "ab"}, "key"), ({"boards": []}, "boards"),
                      ({"boards": [{"name": "a", "url": "ftp://x"}]}, "url"), ({"button": {"pin": 40}}, "button.pin"),
                      ({"led": {"pin": "X"}}, "led.pin"), ({"surprise": 1}, "unknown"),
                      ({"boards": [{"name": "a", "url": "http://h:1"}, {"name": "a", "url": "http://h:2"}]}, "once")):
        with pytest.raises(core.ConfigError, match=msg):
            core.check_config(companion_cfg(**over))
    assert core.parse_url("http://[::1]:8080") == ("http", "::1", 8080)
    assert core.parse_url("https://10.0.0.3") == ("https", "10.0.0.3", 443)


# -- provisioning and the sign ---------------------------------------------------------------------
def provision_boards(out: Path) -> None:
    for name in ("cam-a", "cam-b"):
        assert cli(["provision", "--template", str(ROOT / "board_configs" / "rpi5.yaml"), "--name", name,
                    "--out", str(out)]) == 0


def test_provision_companion_writes_its_config_and_pairs_it_with_each_board(tmp_path: Path, capsys) -> None:
    out = tmp_path / "devices"
    provision_boards(out)
    pw = tmp_path / "wifi.txt"
    pw.write_text("s3cret wifi\n")
    args = ["provision", "--companion", "door-1", "--out", str(out), "--board", "cam-a=http://10.0.0.31:8080",
            "--board", "cam-b=http://10.0.0.32:8080", "--wifi-ssid", "ShopNet", "--wifi-password-file", str(pw),
            "--position", "below this text", "--json"]
    capsys.readouterr()
    assert cli(args) == 0
    info = json.loads(capsys.readouterr().out)
    cfg = json.loads((out / "door-1" / "companion.json").read_text())
    checked = core.check_config(cfg)
    key = (out / "door-1" / "companion-key").read_text().strip()
    assert cfg["key"] == key and key not in json.dumps(info)
    assert cfg["wifi"]["password"] == "s3cret wifi" and [b["name"] for b in cfg["boards"]] == ["cam-a", "cam-b"]
    assert checked["button"]["long_press_ms"] == 3000 and cfg["boards"][0]["pause_s"] == 600
    for f in ("door-1/companion.json", "door-1/companion-key", "cam-a/companions/door-1.key"):
        assert stat.S_IMODE((out / f).stat().st_mode) == 0o600, f
    for b in ("cam-a", "cam-b"):
        assert (out / b / "companions" / "door-1.key").read_text().strip() == key
        data = yaml.safe_load((out / b / "board.yaml").read_text())
        assert data["privacy"]["optout"]["companions"] == [
            {"name": "door-1", "key_file": "/etc/cuecam/companions/door-1.key", "position": "below this text"}]
        assert (out / b / "board.yaml").read_text().startswith("# cuecam board config")
    assert cli(args) == 2, "a second run needs --force (a new key)"
    assert cli([*args, "--force"]) == 0
    assert (out / "door-1" / "companion-key").read_text().strip() != key
    data = yaml.safe_load((out / "cam-a" / "board.yaml").read_text())
    assert len(data["privacy"]["optout"]["companions"]) == 1
    assert cli(["provision", "--companion", "door-2", "--out", str(out), "--board", "cam-z=http://10.0.0.9:8080",
                "--wifi-ssid", "ShopNet"]) == 2
    assert "provision the board into the same directory first" in capsys.readouterr().err


def test_the_sign_says_where_the_companions_button_is(tmp_path: Path) -> None:
    text = SIM_CONFIG.read_text().replace("    led: {pin: 27}\n", "    led: {pin: 27}\n    companions:\n"
                                          "      - {name: door-1, key_file: k, position: at the bottom right of this sign}\n")
    cfg_path = tmp_path / "board.yaml"
    cfg_path.write_text(text)
    out = tmp_path / "sign.html"
    assert cli(["sign", "--config", str(cfg_path), "--out", str(out), "--companion", "door-1"]) == 0
    assert "Press the button at the bottom right of this sign: the cameras here stop measuring" in out.read_text()
    assert cli(["sign", "--config", str(cfg_path), "--out", str(out), "--companion", "door-9"]) == 2


def test_companion_names_are_unique_in_a_board_config(tmp_path: Path) -> None:
    text = SIM_CONFIG.read_text().replace("    led: {pin: 27}\n", "    led: {pin: 27}\n    companions:\n"
                                          "      - {name: door-1, key_file: a}\n      - {name: door-1, key_file: b}\n")
    p = tmp_path / "board.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match="companion names must be unique"):
        load_config(p)


def test_audit_entries_take_a_companion_name_and_a_refusal_reason_only(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", 4096)
    e = log.append("refused", "companion", reason="replay", companion="door-1")
    assert e["reason"] == "replay" and e["companion"] == "door-1"
    for bad in ({"reason": "because"}, {"companion": "<script>"}, {"note": "free text"}):
        with pytest.raises(ValueError):
            log.append("refused", "companion", **bad)  # type: ignore[arg-type]
    assert [x["event"] for x in AuditLog(tmp_path / "audit.jsonl", 4096).read(10)] == ["refused"]


def test_the_companion_code_runs_on_cpython_asyncio_too(tmp_path: Path) -> None:
    """The fakes and the LED loop on CPython's asyncio: offline, then joined."""
    from cuecam_companion import fakes

    async def run() -> list[str]:
        hw = fakes.FakeHardware(transport=None, join_ms=50)
        cfg = core.check_config(companion_cfg())
        comp = core.Companion(cfg, button_pin=hw.button(15, True), led=hw.led(14), radio=hw.radio(cfg["wifi"]),
                              transport=hw.transport(), watchdog=hw.watchdog(), state_dir=str(tmp_path), log=lambda m: None)
        seen: list[str] = []
        comp.on_led = seen.append
        comp.start()
        await asyncio.sleep(0.4)
        comp.stop()
        assert hw.watchdog_.feeds > 5 and comp.online
        return seen

    assert asyncio.run(run())[:2] == ["offline", "off"]


def test_pairing_changes_are_in_the_audit_log_once(tmp_path: Path) -> None:
    """A companion added, re-keyed or removed between two starts is logged (paired / unpaired),
    and a start with the same companions logs nothing."""
    from firmware.config import LoadedConfig, load_config

    def start(companions: dict[str, bytes]) -> tuple[CompanionVerifier, list[tuple[str, str]]]:
        entries = []
        for name, key in companions.items():
            (tmp_path / f"{name}.key").write_text(key.hex() + "\n")
            entries.append(f"      - {{name: {name}, key_file: {tmp_path / (name + '.key')}}}\n")
        text = SIM_CONFIG.read_text().replace("    led: {pin: 27}\n", "    led: {pin: 27}\n    companions:\n"
                                              + "".join(entries) if entries else "    led: {pin: 27}\n")
        text = text.replace("audit_log: ../.cuecam/audit.jsonl", f"audit_log: {tmp_path / 'audit.jsonl'}")
        (tmp_path / "board.yaml").write_text(text)
        loaded: LoadedConfig = load_config(tmp_path / "board.yaml")
        audit = AuditLog(tmp_path / "audit.jsonl", 65536)
        before = len(audit)
        v = CompanionVerifier.from_config(loaded, audit=audit)
        return v, [(e["event"], e["companion"]) for e in audit.read(100)[before:]]

    assert start({"door-1": KEY, "door-2": bytes(32)})[1] == [("paired", "door-1"), ("paired", "door-2")]
    assert start({"door-1": KEY, "door-2": bytes(32)})[1] == []
    v, logged = start({"door-1": bytes(31) + b"\x07"})
    assert logged == [("unpaired", "door-1"), ("unpaired", "door-2"), ("paired", "door-1")]
    assert start({"door-1": bytes(31) + b"\x07"})[1] == [] and v.counter("door-1") == 0


def test_the_companion_believes_only_answers_signed_with_its_key(tmp_path: Path) -> None:
    """Someone on the network answering in the board's place: an unsigned "replay" with a huge
    counter or a "stale" with a far-off time changes nothing; the same answers signed by the board
    (with the key, over the request's counter) are followed."""
    answers: list[tuple[int, dict, bytes]] = []

    class Air:  # what comes back over the network for the next request
        async def request(self, board, method, path, headers, body, timeout_ms):
            ctr = json.loads(body)["ctr"]
            status, data, signed = answers.pop(0)
            raw = json.dumps(data).encode()
            return status, ({"cuecam-confirm": confirm(KEY, ctr, raw)} if signed else {}), raw

    comp = core.Companion(core.check_config(companion_cfg()), button_pin=None, led=None, radio=None, transport=Air(),
                          state_dir=str(tmp_path), log=lambda m: None)
    b = comp.boards[0]
    b.sync = (1_750_000_000.0, core.ticks_ms())
    comp.press()

    async def attempt() -> str:
        return await comp._attempt(b, b.queue[0])

    answers.append((401, {"refused": "replay", "counter": 2**52, "time": 1.0}, False))
    assert asyncio.run(attempt()) == "retry"
    assert comp.counter.value < 100 and b.sync[0] == 1_750_000_000.0
    answers.append((200, {"paused": True, "remaining_s": 600}, False))
    assert asyncio.run(attempt()) == "retry" and not b.paused(core.ticks_ms()), "an unsigned 'paused' lights nothing"
    answers.append((401, {"refused": "replay", "counter": 5000, "time": 1_750_000_100.0}, True))
    assert asyncio.run(attempt()) == "again"
    assert comp.counter.value > 5000 and b.sync[0] == 1_750_000_100.0
    answers.append((200, {"paused": True, "remaining_s": 600, "time": 1_750_000_101.0}, True))
    assert asyncio.run(attempt()) == "done" and b.paused(core.ticks_ms())
