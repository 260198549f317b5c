"""The companion's hardware in software, for tests and a companion without a Pico: a button pin
that a test presses, an LED that records what it showed, a Wi-Fi radio whose access point can go
away, a watchdog that counts feeds. They have the methods hw.Pico's parts have."""

from .compat import ticks_diff, ticks_ms


class FakePin:
    """A button input: idle high with a pull-up (pressed = low), idle low with a pull-down."""

    def __init__(self, pull_up=True):
        self.pull_up = pull_up
        self.level = 1 if pull_up else 0

    def value(self, v=None):
        if v is not None:
            self.level = v
        return self.level

    def down(self):
        self.level = 0 if self.pull_up else 1

    def up(self):
        self.level = 1 if self.pull_up else 0


class FakeLed:
    def __init__(self, log_limit=2000):
        self.level = 0
        self.changes = []  # (ticks, level)
        self.limit = log_limit

    def value(self, v=None):
        if v is not None and v != self.level:
            self.level = v
            self.changes.append((ticks_ms(), v))
            del self.changes[:-self.limit]
        return self.level


class FakeRadio:
    """Joins ``join_ms`` after connect() while the access point is up; drop() takes the access
    point away (the link goes down at once), restore() brings it back."""

    def __init__(self, join_ms=200):
        self.join_ms = join_ms
        self.ap_up = True
        self._joining = None
        self.connected = False
        self.connects = 0

    def connect(self):
        self.connects += 1
        self._joining = ticks_ms()

    def isconnected(self):
        joined = self._joining is not None and ticks_diff(ticks_ms(), self._joining) >= self.join_ms
        if not self.connected and self.ap_up and joined:
            self.connected, self._joining = True, None
        return self.connected and self.ap_up

    def failed(self):
        return False

    def disconnect(self):
        self._joining = None
        self.connected = False

    def drop(self):
        self.ap_up = False
        self.connected = False

    def restore(self):
        self.ap_up = True


class FakeWatchdog:
    def __init__(self):
        self.feeds = 0

    def feed(self):
        self.feeds += 1


class FakeHardware:
    """hw.Pico's interface over the fakes above; ``transport`` is given (the test's)."""

    def __init__(self, transport, join_ms=200):
        self.pin = None
        self.led_ = FakeLed()
        self.radio_ = FakeRadio(join_ms)
        self.watchdog_ = FakeWatchdog()
        self._transport = transport

    def button(self, pin, pull_up):
        self.pin = FakePin(pull_up)
        return self.pin

    def led(self, pin):
        return self.led_

    def radio(self, wifi):
        return self.radio_

    def watchdog(self):
        return self.watchdog_

    def transport(self):
        return self._transport
