"""The companion: a button and an LED by the privacy sign that pause every paired camera board.

A press (the button's down edge, debounced as gpiozero does: edges within ``bounce_ms`` of the
last one are ignored) is an opt-out; holding it ``long_press_ms`` is a resume, exactly what the
board's own GPIO button does (gpiozero ``when_pressed`` / ``when_held``). Each is sent straight
to every board in the config, each board on its own task, as a signed ``POST /v1/optout``
(firmware/privacy/companion.py on the board checks it): HMAC-SHA256 with the companion's key
over the exact body, which carries the board's name, a timestamp on the board's clock, a fresh
counter (never reused, kept in flash across resets) and the press's age. The board's answer is
signed back with the same key over the counter: a forged "paused" cannot light the LED.

A board that does not confirm is retried with exponential backoff (``retry.first_ms`` doubling
to ``retry.max_ms``, with jitter) until it does or the pause period since the press has passed.
While the Wi-Fi link is down nothing is sent; the link is rejoined with backoff and every press
still within its pause period goes out the moment the link is back (its age tells the board how
much of the pause is left).

The LED: off when idle; steady while every paired board has confirmed it is paused; a double
blink while some board has not answered yet; a fast blink while some board refuses the
companion (a provisioning problem: wrong key, not listed); a short blip every 3 s while the
Wi-Fi link is down and nothing is pending.
"""

import asyncio
import hashlib
import hmac
import json
import os
import random

from .compat import equal, ticks_add, ticks_diff, ticks_ms

SIGN_PREFIX = b"cuecam-companion-v1\nPOST /v1/optout\n"
CONFIRM_PREFIX = b"cuecam-board-v1\n"
SCHEME = "Cuecam-Companion"
SYNC_MAX_AGE_MS = 3_600_000  # re-read a board's clock hourly (ticks wrap after ~6 days; crystal drift)
MAX_QUEUE = 4  # pending actions per board

# LED patterns: (level, ms) steps, repeated
PATTERNS = {
    "off": ((0, 1000),),
    "on": ((1, 1000),),
    "unconfirmed": ((1, 120), (0, 120), (1, 120), (0, 640)),
    "refused": ((1, 80), (0, 80)),
    "offline": ((1, 60), (0, 2940)),
}


class ConfigError(Exception):
    pass


# -- configuration ---------------------------------------------------------------------------------
_DEFAULTS = {
    "button": {"pin": 15, "pull_up": True, "bounce_ms": 50, "long_press_ms": 3000, "poll_ms": 5},
    "led": {"pin": 14},
    "retry": {"first_ms": 100, "max_ms": 5000, "timeout_ms": 2000},
    "wifi": {"first_ms": 1000, "max_ms": 30000, "connect_timeout_ms": 15000, "country": None},
}


def _name_ok(s):
    if not isinstance(s, str) or not 1 <= len(s) <= 63 or s[0] == "-":
        return False
    return all(c.isalpha() or c.isdigit() or c == "-" for c in s) and all(ord(c) < 128 for c in s)


def parse_url(url):
    """(scheme, host, port) of http://HOST[:PORT] or https://HOST[:PORT]."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError("board url %r: expected http://HOST:PORT" % (url,))
    scheme, rest = url.split("://", 1)
    rest = rest.rstrip("/")
    if scheme not in ("http", "https") or not rest or "/" in rest:
        raise ConfigError("board url %r: expected http://HOST:PORT (no path)" % (url,))
    host, port = rest, 443 if scheme == "https" else 80
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        if tail.startswith(":"):
            port = tail[1:]
    elif ":" in rest:
        host, port = rest.rsplit(":", 1)
    try:
        port = int(port)
    except ValueError:
        raise ConfigError("board url %r: bad port" % (url,)) from None
    if not host or not 0 < port < 65536:
        raise ConfigError("board url %r: bad host or port" % (url,))
    return scheme, host, port


def _int(section, key, value, lo, hi):
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError("%s.%s must be an integer from %d to %d, not %r" % (section, key, lo, hi, value))
    return value


def check_config(cfg):
    """The companion.json from `cuecam provision --companion`, checked, with defaults filled in."""
    if not isinstance(cfg, dict) or cfg.get("schema") != 1:
        raise ConfigError("not a companion config (schema 1): make one with `cuecam provision --companion NAME`")
    out = {"schema": 1}
    if not _name_ok(cfg.get("name")):
        raise ConfigError("name must be 1-63 letters, digits and '-'")
    out["name"] = cfg["name"]
    key = cfg.get("key")
    if not isinstance(key, str) or len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
        raise ConfigError("key must be 64 lowercase hex characters (256 bits)")
    out["key"] = bytes.fromhex(key)
    wifi = cfg.get("wifi")
    if not isinstance(wifi, dict) or not isinstance(wifi.get("ssid"), str) or not 1 <= len(wifi["ssid"]) <= 32:
        raise ConfigError("wifi.ssid must be a network name of 1-32 characters")
    if not isinstance(wifi.get("password", ""), str) or len(wifi.get("password", "")) > 64:
        raise ConfigError("wifi.password must be a string of at most 64 characters")
    boards = cfg.get("boards")
    if not isinstance(boards, list) or not 1 <= len(boards) <= 16:
        raise ConfigError("boards must list 1-16 camera boards")
    out["boards"] = []
    for i, b in enumerate(boards):
        if not isinstance(b, dict) or not _name_ok(b.get("name")):
            raise ConfigError("boards[%d].name must be the board's name (board.name)" % i)
        parse_url(b.get("url"))
        pause = b.get("pause_s", 600)
        if isinstance(pause, bool) or not isinstance(pause, (int, float)) or not 1 <= pause <= 3600:
            raise ConfigError("boards[%d].pause_s must be 1-3600 (the board's privacy.optout.pause_s)" % i)
        out["boards"].append({"name": b["name"], "url": b["url"], "pause_s": pause})
    names = [b["name"] for b in out["boards"]]
    if len(set(names)) != len(names):
        raise ConfigError("boards: each board once")
    for section, defaults in _DEFAULTS.items():
        given = cfg.get(section, {}) if section != "wifi" else wifi
        if not isinstance(given, dict):
            raise ConfigError("%s must be an object" % section)
        merged = dict(defaults)
        merged.update(given)
        out[section] = merged
    unknown = [k for k in cfg if k not in ("schema", "name", "key", "wifi", "boards", "button", "led", "retry")]
    if unknown:
        raise ConfigError("unknown keys: %s" % ", ".join(sorted(unknown)))
    b = out["button"]
    if not isinstance(b["pin"], int) or not 0 <= b["pin"] <= 28:
        raise ConfigError("button.pin must be a GPIO number 0-28 (GP15 = physical pin 20)")
    _int("button", "bounce_ms", b["bounce_ms"], 0, 1000)
    _int("button", "long_press_ms", b["long_press_ms"], 100, 30000)
    _int("button", "poll_ms", b["poll_ms"], 1, 50)
    led = out["led"]["pin"]
    if led != "LED" and (isinstance(led, bool) or not isinstance(led, int) or not 0 <= led <= 28):
        raise ConfigError('led.pin must be a GPIO number 0-28 or "LED" (the Pico W\'s own LED)')
    r = out["retry"]
    _int("retry", "first_ms", r["first_ms"], 10, 60000)
    _int("retry", "max_ms", r["max_ms"], r["first_ms"], 600000)
    _int("retry", "timeout_ms", r["timeout_ms"], 100, 60000)
    w = out["wifi"]
    _int("wifi", "first_ms", w["first_ms"], 10, 600000)
    _int("wifi", "max_ms", w["max_ms"], w["first_ms"], 3600000)
    _int("wifi", "connect_timeout_ms", w["connect_timeout_ms"], 100, 120000)
    return out


def load_config(path):
    try:
        with open(path) as f:
            text = f.read(16384)
    except OSError as e:
        raise ConfigError("cannot read %s (%s): copy the companion.json from `cuecam provision` onto the Pico"
                          % (path, e)) from e
    try:
        cfg = json.loads(text)
    except ValueError as e:
        raise ConfigError("%s is not JSON: %s" % (path, e)) from e
    return check_config(cfg)


# -- the counter that survives resets --------------------------------------------------------------
class CounterStore:
    """A counter that never repeats, across resets. Flash is written once per ``block`` values: the
    file holds a bound above every value handed out, and a reset resumes from that bound (skipping
    at most ``block`` values, which the board does not mind: it wants each counter higher than the
    last). Written as temp file + rename (atomic on the Pico's littlefs)."""

    def __init__(self, path, block=32):
        self.path = path
        self.block = block
        self.writes = 0
        try:
            with open(path) as f:
                start = int(f.read(32).strip())
        except (OSError, ValueError):
            start = 0
        self.value = start  # the last value that may have been handed out
        self.reserved = start

    def _write(self, bound):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(bound))
        os.rename(tmp, self.path)
        self.writes += 1

    def next(self):
        if self.value + 1 > self.reserved:
            self._write(self.value + self.block)  # before the value is used
            self.reserved = self.value + self.block
        self.value += 1
        return self.value

    def skip_past(self, n):
        """The board says it has seen counter ``n`` (state lost here): jump above it."""
        if n >= self.value:
            self.value = n
            self.next()


# -- the button ------------------------------------------------------------------------------------
class Button:
    """A debounced push button read every ``poll_ms`` (gpiozero's semantics: a press fires on the
    down edge; a hold fires once, ``long_press_ms`` after the press, while still held; edges
    within ``bounce_ms`` of the last accepted one are ignored)."""

    def __init__(self, pin, cfg, on_press, on_hold, clock=ticks_ms):
        self.pin = pin
        self.pull_up = cfg["pull_up"]
        self.bounce_ms = cfg["bounce_ms"]
        self.long_ms = cfg["long_press_ms"]
        self.poll_ms = cfg["poll_ms"]
        self.on_press = on_press
        self.on_hold = on_hold
        self.clock = clock
        self.pressed = False
        self.last_edge = None
        self.down_at = 0
        self.held = False
        self.presses = 0
        self.holds = 0

    def sample(self):
        down = self.pin.value() == (0 if self.pull_up else 1)
        now = self.clock()
        if down != self.pressed and (self.last_edge is None or ticks_diff(now, self.last_edge) >= self.bounce_ms):
            self.pressed, self.last_edge = down, now
            if down:
                self.down_at, self.held = now, False
                self.presses += 1
                self.on_press()
        elif self.pressed and not self.held and ticks_diff(now, self.down_at) >= self.long_ms:
            self.held = True
            self.holds += 1
            self.on_hold()

    async def run(self):
        while True:
            self.sample()
            await asyncio.sleep(self.poll_ms / 1000)


# -- one paired board ------------------------------------------------------------------------------
class Action:
    def __init__(self, kind, press, t):
        self.kind = kind  # "optout" or "resume"
        self.press = press  # the press's number (a counter value)
        self.t = t  # ticks at the press
        self.resyncs = 0


class Board:
    def __init__(self, cfg):
        self.name = cfg["name"]
        self.url = cfg["url"]
        self.scheme, self.host, self.port = parse_url(cfg["url"])
        self.pause_ms = int(cfg["pause_s"] * 1000)
        self.queue = []
        self.wake = asyncio.Event()
        self.sync = None  # (board epoch seconds, ticks) when read
        self.paused_until = None  # ticks: the board confirmed a pause until then
        self.confirmed_press = None
        self.refused = None  # the board's reason, while it refuses this companion
        self.last_error = None
        self.attempts = 0
        self.confirmed = 0
        self.failures = 0
        self.expired = 0
        self.latencies = []  # press -> confirmed, ms (the last 1000)

    def enqueue(self, action):
        # A newer action supersedes a pending one of its kind (a newer press purges as much and its
        # pause lasts longer); order is kept, so a press then a hold ends resumed, a hold then a press paused.
        self.queue = [a for a in self.queue if a.kind != action.kind]
        self.queue.append(action)
        del self.queue[:-MAX_QUEUE]
        self.wake.set()

    def now_s(self, now):
        """The board's clock (epoch seconds) as this companion estimates it, or None."""
        if self.sync is None:
            return None
        return self.sync[0] + ticks_diff(now, self.sync[1]) / 1000

    def paused(self, now):
        return self.paused_until is not None and ticks_diff(self.paused_until, now) > 0

    def state(self, now):
        return {"name": self.name, "pending": [a.kind for a in self.queue], "paused": self.paused(now),
                "refused": self.refused, "last_error": self.last_error, "attempts": self.attempts,
                "confirmed": self.confirmed, "failures": self.failures, "expired": self.expired,
                "synced": self.sync is not None}


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(value):
    """Epoch seconds of an HTTP Date header ("Tue, 01 Dec 2026 21:53:00 GMT"), or None."""
    try:
        _, d, mon, y, hms, _gmt = value.split()
        h, mi, s = (int(x) for x in hms.split(":"))
        m, day, year = _MONTHS.index(mon) + 1, int(d), int(y)
    except (ValueError, AttributeError):
        return None
    # days from civil (Howard Hinnant), proleptic Gregorian
    year -= m <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    days = era * 146097 + doe - 719468
    return days * 86400 + h * 3600 + mi * 60 + s


def _jitter(ms):
    return ms * (768 + random.getrandbits(9)) // 1024  # 75 % .. 125 %


# -- the companion ---------------------------------------------------------------------------------
class Companion:
    """Everything but the hardware, which comes in: ``button_pin`` (``value()``), ``led``
    (``value(v)``), ``radio`` (``connect()``, ``isconnected()``, ``failed()``, ``disconnect()``),
    ``transport`` (``await request(board, method, path, headers, body, timeout_ms)`` ->
    ``(status, headers, body)``; raises OSError), ``watchdog`` (``feed()``) or None."""

    def __init__(self, cfg, *, button_pin, led, radio, transport, watchdog=None, state_dir=".", log=print):
        self.cfg = cfg
        self.name = cfg["name"]
        self.key = cfg["key"]
        self.led = led
        self.radio = radio
        self.transport = transport
        self.watchdog = watchdog
        self.log = log
        self.counter = CounterStore(state_dir.rstrip("/") + "/counter")
        self.boards = [Board(b) for b in cfg["boards"]]
        self.button = Button(button_pin, cfg["button"], self.press, self.hold)
        self.online = False
        self.links = 0
        self.drops = 0
        self.pattern = "off"
        self.led_changes = 0
        self._pattern_t = ticks_ms()
        self._tasks = []
        self.on_led = None  # callback(pattern) for tests and logs
        self.on_confirm = None  # callback(board, action, latency_ms, the board's own purge ms)

    # -- presses -----------------------------------------------------------------------------------
    def press(self):
        self._act("optout")

    def hold(self):
        self._act("resume")

    def _act(self, kind):
        press, now = self.counter.next(), ticks_ms()
        self.log("companion: %s (press %d) to %d board(s)" % (kind, press, len(self.boards)))
        for b in self.boards:
            b.enqueue(Action(kind, press, now))
        self._update_led()

    # -- signing -----------------------------------------------------------------------------------
    def signed(self, board, action, now):
        """(headers, body, counter) of one attempt, signed afresh."""
        ctr = self.counter.next()
        ts = board.now_s(now)
        body = json.dumps({"v": 1, "companion": self.name, "board": board.name, "action": action.kind,
                           "ts": int(ts + 0.5), "ctr": ctr, "press": action.press,
                           "age_ms": max(0, ticks_diff(now, action.t))}).encode()
        sig = hmac.new(self.key, SIGN_PREFIX + body, hashlib.sha256).hexdigest()
        headers = {"Authorization": "%s %s:%s" % (SCHEME, self.name, sig), "Content-Type": "application/json"}
        return headers, body, ctr

    def confirmed_by_board(self, headers, body, ctr):
        got = headers.get("cuecam-confirm", "")
        want = hmac.new(self.key, CONFIRM_PREFIX + str(ctr).encode() + b"\n" + body, hashlib.sha256).hexdigest()
        return equal(got.encode(), want.encode())

    # -- talking to one board ----------------------------------------------------------------------
    async def _sync(self, b):
        """Read the board's clock off its Date header (GET /health needs no token)."""
        t0 = ticks_ms()
        try:
            _status, headers, _body = await self.transport.request(b, "GET", "/health", {}, b"",
                                                                   self.cfg["retry"]["timeout_ms"])
        except Exception as e:  # OSError, timeout: the board is unreachable
            b.last_error = "clock: %s" % (e,)
            return False
        t = http_date(headers.get("date", ""))
        if t is None:
            b.last_error = "clock: no Date header"
            return False
        rtt = ticks_diff(ticks_ms(), t0)
        b.sync = (t + 0.5, ticks_add(t0, rtt // 2))  # the header is whole seconds: its middle
        return True

    async def _attempt(self, b, a):
        now = ticks_ms()
        headers, body, ctr = self.signed(b, a, now)
        b.attempts += 1
        try:
            status, rh, rbody = await self.transport.request(b, "POST", "/v1/optout", headers, body,
                                                             self.cfg["retry"]["timeout_ms"])
        except Exception as e:
            b.failures += 1
            b.last_error = "%s: %s" % (type(e).__name__, e)
            return "retry"
        done = ticks_ms()
        try:
            data = json.loads(rbody) if rbody else {}
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        # Only an answer signed back with this companion's key over this request's counter is the
        # board's: its time, counter and "paused" are believed; anything else is noise on the network.
        signed = self.confirmed_by_board(rh, rbody, ctr)
        t = data.get("time")
        if signed and isinstance(t, (int, float)) and not isinstance(t, bool):
            b.sync = (t, ticks_add(now, ticks_diff(done, now) // 2))
        if status == 200:
            if not signed:
                b.failures += 1
                b.last_error = "answer not signed with this companion's key"
                return "retry"
            b.refused, b.last_error = None, None
            b.confirmed += 1
            if a.kind == "optout" and data.get("paused"):
                remaining = data.get("remaining_s", 0)
                b.paused_until = ticks_add(done, int(remaining * 1000))
                b.confirmed_press = a.press
            else:
                b.paused_until = None
            latency = ticks_diff(done, a.t)
            b.latencies.append(latency)
            del b.latencies[:-1000]
            if self.on_confirm is not None:
                self.on_confirm(b, a, latency, data.get("latency_ms"))
            return "done"
        b.failures += 1
        reason = data.get("refused")
        b.last_error = "HTTP %d %s" % (status, reason or "")
        if status == 401 and signed and reason in ("stale", "replay"):
            if reason == "replay" and isinstance(data.get("counter"), int):
                self.counter.skip_past(data["counter"])
            a.resyncs += 1
            return "again" if a.resyncs <= 2 else "retry"
        if status == 401 and signed and reason in ("expired", "resume_not_allowed"):
            return "drop"
        if status == 401:
            b.refused = reason or "refused"
        return "retry"

    async def _nap(self, b, ms):
        """Sleep ``ms``, or less when the link comes back or a new press arrives."""
        b.wake.clear()
        try:
            await asyncio.wait_for(b.wake.wait(), ms / 1000)
        except asyncio.TimeoutError:
            pass

    async def _sender(self, b):
        r = self.cfg["retry"]
        backoff = r["first_ms"]
        while True:
            now = ticks_ms()
            while b.queue and ticks_diff(now, b.queue[0].t) >= b.pause_ms:
                b.queue.pop(0)  # the pause period has passed: nothing left to pause
                b.expired += 1
                self._update_led()
            if not self.online:
                await self._nap(b, 1000)
                continue
            stale = b.sync is None or ticks_diff(now, b.sync[1]) > SYNC_MAX_AGE_MS
            if stale and not await self._sync(b):
                await self._nap(b, _jitter(backoff))
                backoff = min(backoff * 2, r["max_ms"])
                continue
            if not b.queue:
                await self._nap(b, 60_000)
                continue
            a = b.queue[0]
            res = await self._attempt(b, a)
            if res in ("done", "drop"):
                if b.queue and b.queue[0] is a:
                    b.queue.pop(0)
                backoff = r["first_ms"]
            elif res == "retry":
                self._update_led()
                await self._nap(b, _jitter(backoff))
                backoff = min(backoff * 2, r["max_ms"])
            self._update_led()

    # -- Wi-Fi -------------------------------------------------------------------------------------
    async def _wifi(self):
        w = self.cfg["wifi"]
        backoff = w["first_ms"]
        while True:
            if self.radio.isconnected():
                if not self.online:
                    self.online = True
                    self.links += 1
                    backoff = w["first_ms"]
                    self.log("companion: Wi-Fi up (link %d)" % self.links)
                    for b in self.boards:
                        b.wake.set()
                    self._update_led()
                await asyncio.sleep(0.05)
                continue
            if self.online:
                self.online = False
                self.drops += 1
                self.log("companion: Wi-Fi down; rejoining")
                self._update_led()
            self.radio.connect()
            t0 = ticks_ms()
            while (not self.radio.isconnected() and not self.radio.failed()
                   and ticks_diff(ticks_ms(), t0) < w["connect_timeout_ms"]):
                await asyncio.sleep(0.05)
            if self.radio.isconnected():
                continue
            self.radio.disconnect()
            await asyncio.sleep(_jitter(backoff) / 1000)
            backoff = min(backoff * 2, w["max_ms"])

    # -- the LED -----------------------------------------------------------------------------------
    def wanted_pattern(self, now=None):
        now = ticks_ms() if now is None else now
        pending = [b for b in self.boards if b.queue]
        if pending:
            return "refused" if any(b.refused for b in pending) else "unconfirmed"
        if all(b.paused(now) for b in self.boards):
            return "on"
        return "offline" if not self.online else "off"

    def _update_led(self):
        p = self.wanted_pattern()
        if p != self.pattern:
            self.pattern = p
            self.led_changes += 1
            self._pattern_t = ticks_ms()
            if self.on_led is not None:
                self.on_led(p)

    async def _led_loop(self):
        level = None
        while True:
            self._update_led()  # a pause running out turns the light off
            steps = PATTERNS[self.pattern]
            cycle = sum(ms for _, ms in steps)
            phase = ticks_diff(ticks_ms(), self._pattern_t) % cycle
            want = steps[-1][0]
            for lv, ms in steps:
                if phase < ms:
                    want = lv
                    break
                phase -= ms
            if want != level:
                self.led.value(want)
                level = want
            if self.watchdog is not None:
                self.watchdog.feed()
            await asyncio.sleep(0.02)

    # -- running -----------------------------------------------------------------------------------
    def state(self):
        now = ticks_ms()
        return {"name": self.name, "online": self.online, "links": self.links, "drops": self.drops,
                "led": self.pattern, "counter": self.counter.value, "counter_writes": self.counter.writes,
                "presses": self.button.presses, "holds": self.button.holds,
                "boards": [b.state(now) for b in self.boards]}

    def start(self):
        """Start the companion's tasks on the running event loop."""
        self._tasks = [asyncio.create_task(self.button.run()), asyncio.create_task(self._led_loop()),
                       asyncio.create_task(self._wifi())]
        self._tasks += [asyncio.create_task(self._sender(b)) for b in self.boards]

    def stop(self):
        for t in self._tasks:
            t.cancel()
        self._tasks = []


async def main(hardware, config_path="companion.json", state_dir="/"):
    """Run the companion on ``hardware`` (hw.Pico() on a Pico W). A bad config blinks fast and
    prints what is wrong (seen with `mpremote repl`)."""
    try:
        cfg = load_config(config_path)
    except ConfigError as e:
        print("companion: config error:", e)
        led = hardware.led("LED")
        while True:
            led.value(1)
            await asyncio.sleep(0.08)
            led.value(0)
            await asyncio.sleep(0.08)
    c = Companion(cfg, button_pin=hardware.button(cfg["button"]["pin"], cfg["button"]["pull_up"]),
                  led=hardware.led(cfg["led"]["pin"]), radio=hardware.radio(cfg["wifi"]),
                  transport=hardware.transport(), watchdog=hardware.watchdog(), state_dir=state_dir)
    c.start()
    print("companion %s: %d board(s): %s" % (c.name, len(c.boards), ", ".join(b.name for b in c.boards)))
    while True:
        await asyncio.sleep(3600)
