# The test rig inside MicroPython (loaded by harness.mjs): the companion on fake hardware, its
# HTTP requests handed to the harness, its LED changes and confirmations reported as events.
import asyncio
import binascii
import json

import harness
from cuecam_companion import core, fakes
from cuecam_companion.compat import ticks_diff, ticks_ms

RIG = None


def emit(obj):
    harness.emit(json.dumps(obj))


class JsTransport:
    """The companion's transport: each request goes to the harness, which sends it to the board.
    No request leaves while the fake radio is down, and an answer that comes back after the link
    dropped is lost, as on the air."""

    def __init__(self, radio):
        self.radio = radio

    async def request(self, board, method, path, headers, body, timeout_ms):
        if not self.radio.isconnected():
            raise OSError(113, "EHOSTUNREACH (Wi-Fi down)")
        spec = {"url": board.url, "method": method, "path": path, "headers": headers,
                "body": binascii.hexlify(body).decode(), "timeout_ms": timeout_ms}
        res = json.loads(await harness.request(json.dumps(spec)))
        if not self.radio.isconnected():
            raise OSError(113, "EHOSTUNREACH (Wi-Fi dropped during the request)")
        if "error" in res:
            raise OSError(res["error"])
        return res["status"], res["headers"], binascii.unhexlify(res["body"])


class Rig:
    def __init__(self, config_path, flash, join_ms):
        cfg = core.load_config(config_path)
        self.hw = fakes.FakeHardware(None, join_ms)
        self.hw._transport = JsTransport(self.hw.radio_)
        self.pin = self.hw.button(cfg["button"]["pin"], cfg["button"]["pull_up"])
        self.c = core.Companion(cfg, button_pin=self.pin, led=self.hw.led(cfg["led"]["pin"]),
                                radio=self.hw.radio(cfg["wifi"]), transport=self.hw.transport(),
                                watchdog=self.hw.watchdog(), state_dir=flash, log=lambda m: emit({"ev": "log", "msg": m}))
        self.last_drive = None
        self.drives = {}  # press number -> ticks when the pin was driven
        self.c.on_led = lambda p: emit({"ev": "led", "pattern": p, "t": ticks_ms()})
        self.c.on_confirm = self.confirmed
        press, hold = self.c.button.on_press, self.c.button.on_hold
        self.c.button.on_press = lambda: self._detected(press)
        self.c.button.on_hold = lambda: self._detected(hold)

    def _detected(self, handler):
        handler()
        self.drives[self.c.counter.value] = self.last_drive
        # The press number is the counter value the handler took: latency counts from the drive.

    def confirmed(self, board, action, since_edge_ms, board_ms):
        now = ticks_ms()
        drive = self.drives.get(action.press)
        emit({"ev": "confirm", "board": board.name, "kind": action.kind, "press": action.press,
              "latency_ms": None if drive is None else ticks_diff(now, drive), "since_edge_ms": since_edge_ms,
              "board_ms": board_ms,
              "attempts": board.attempts})

    def down(self):
        self.last_drive = ticks_ms()
        self.pin.down()

    async def command(self, line):
        cmd = json.loads(line)
        name, result = cmd["cmd"], None
        if name == "down":
            self.down()
        elif name == "up":
            self.pin.up()
        elif name == "press":
            self.down()
            await asyncio.sleep(cmd.get("hold_ms", 80) / 1000)
            self.pin.up()
        elif name == "bounce":
            # a bouncing contact: level changes every `every_ms` for `n` changes, then held down
            self.down()
            for i in range(cmd["n"]):
                await asyncio.sleep(cmd["every_ms"] / 1000)
                if i % 2 == 0:
                    self.pin.up()
                else:
                    self.pin.down()
            await asyncio.sleep(cmd.get("hold_ms", 80) / 1000)
            self.pin.up()
        elif name == "wifi_drop":
            self.hw.radio_.drop()
        elif name == "wifi_restore":
            self.hw.radio_.restore()
        elif name == "state":
            result = self.c.state()
            result["led_level"] = self.hw.led_.level
            result["led_changes"] = len(self.hw.led_.changes)
            result["radio_connects"] = self.hw.radio_.connects
            result["watchdog_feeds"] = self.hw.watchdog_.feeds
        elif name == "led_trace":
            t0 = cmd.get("since", 0)
            result = [[t, v] for t, v in self.hw.led_.changes if ticks_diff(t, t0) >= 0]
        elif name == "now":
            result = ticks_ms()
        else:
            emit({"id": cmd.get("id"), "ok": False, "error": "unknown command %r" % name})
            return
        emit({"id": cmd.get("id"), "ok": True, "result": result})


def start(config_path, flash, join_ms):
    global RIG
    RIG = Rig(config_path, flash, join_ms)
    RIG.c.start()


async def command(line):
    await RIG.command(line)
