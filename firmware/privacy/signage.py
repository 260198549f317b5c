"""The signage opt-out button and status LED, through gpiozero.

The pin factory is injected: ``mock`` (gpiozero's MockFactory: the sim board and tests, pressed
with ``press()`` or ``POST /v1/sim/button``), ``auto`` (gpiozero picks lgpio / RPi.GPIO on a Pi),
``none`` (no button). gpiozero calls back on its own thread; callbacks are handed to the event
loop with ``call_soon_threadsafe`` so all state changes happen on the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from ..config import OptOutConfig
from ..errors import GpioError

log = logging.getLogger(__name__)


class Signage:
    def __init__(
        self,
        cfg: OptOutConfig,
        loop: asyncio.AbstractEventLoop,
        on_press: Callable[[], None],
        on_hold: Callable[[], None],
    ) -> None:
        self.cfg = cfg
        self.kind = cfg.pins
        self.button: Any = None
        self.led: Any = None
        self._factory: Any = None
        self._led_mode = "off"
        if cfg.pins == "none":
            return
        try:
            from gpiozero import LED, Button  # Raspberry Pi OS: python3-gpiozero

            if cfg.pins == "mock":
                from gpiozero.pins.mock import MockFactory

                self._factory = MockFactory()
            b = cfg.button
            self.button = Button(b.pin, pull_up=b.pull_up, bounce_time=b.bounce_s or None, hold_time=b.long_press_s,
                                 pin_factory=self._factory)
            if cfg.led is not None:
                self.led = LED(cfg.led.pin, pin_factory=self._factory)
        except Exception as e:  # no GPIO chip, pin busy, no permission (not in the gpio group)
            self.close()
            raise GpioError(f"opt-out button on GPIO{cfg.button.pin}: {e}; set privacy.optout.pins to mock or none "
                              "on a board without it") from e
        self.button.when_pressed = lambda *_: loop.call_soon_threadsafe(on_press)
        self.button.when_held = lambda *_: loop.call_soon_threadsafe(on_hold)
        self.show(paused=False)

    def show(self, paused: bool) -> None:
        """LED: steady while measuring, blinking while paused."""
        if self.led is None:
            return
        if paused:
            self.led.blink(on_time=0.5, off_time=0.5, background=True)
            self._led_mode = "blinking"
        else:
            self.led.on()
            self._led_mode = "on"

    @property
    def led_state(self) -> str | None:
        return None if self.led is None else self._led_mode

    def press(self, hold_s: float = 0.1) -> None:
        """Drive the mock button (sim board and tests only): down for ``hold_s`` then up."""
        if self._factory is None or self.button is None:
            raise RuntimeError("only a mock button can be pressed in software")
        pin = self.button.pin
        down, up = (pin.drive_low, pin.drive_high) if self.cfg.button.pull_up else (pin.drive_high, pin.drive_low)
        down()
        if hold_s > 0:
            time.sleep(hold_s)
        up()

    def close(self) -> None:
        for dev in (self.button, self.led):
            if dev is not None:
                try:
                    dev.close()
                except Exception as e:  # closing must never stop a shutdown
                    log.warning("closing %s: %s", dev, e)
        self.button = self.led = None
        if self._factory is not None:
            self._factory.close()
            self._factory = None
