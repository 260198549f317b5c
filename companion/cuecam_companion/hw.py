"""The Pico W's hardware for the companion: pins, the CYW43 radio, the watchdog.

``machine`` and ``network`` exist only on the board, so they are imported inside each method;
tests and the sim use fakes.FakeHardware with the same methods. API: MicroPython's
machine.Pin, machine.WDT, network.WLAN (rp2 port).
"""

WATCHDOG_MS = 8000  # the RP2040's longest is 8388 ms; the LED loop feeds it every 20 ms


class PicoRadio:
    """network.WLAN in station mode, power saving off (answers within milliseconds, not 100s)."""

    def __init__(self, wifi):
        import network

        self._network = network
        if wifi.get("country"):
            network.country(wifi["country"])
        self.ssid = wifi["ssid"]
        self.password = wifi.get("password", "")
        self.wlan = network.WLAN(network.STA_IF)
        self.wlan.active(True)
        pm = getattr(network.WLAN, "PM_NONE", None)
        if pm is not None:
            self.wlan.config(pm=pm)

    def connect(self):
        self.wlan.connect(self.ssid, self.password)

    def isconnected(self):
        return self.wlan.isconnected()

    def failed(self):
        n = self._network
        return self.wlan.status() in (getattr(n, "STAT_WRONG_PASSWORD", -3), getattr(n, "STAT_NO_AP_FOUND", -2),
                                      getattr(n, "STAT_CONNECT_FAIL", -1))

    def disconnect(self):
        self.wlan.disconnect()


class Pico:
    """The real board: a Raspberry Pi Pico W running MicroPython >= 1.23."""

    def button(self, pin, pull_up):
        from machine import Pin

        return Pin(pin, Pin.IN, Pin.PULL_UP if pull_up else Pin.PULL_DOWN)

    def led(self, pin):
        from machine import Pin

        p = Pin(pin, Pin.OUT)  # "LED": the Pico W's own LED, on the radio chip
        p.value(0)
        return p

    def radio(self, wifi):
        return PicoRadio(wifi)

    def watchdog(self):
        from machine import WDT

        return WDT(timeout=WATCHDOG_MS)

    def transport(self):
        from .http import SocketTransport

        return SocketTransport()
