"""The supervisor: systemd's READY=1, watchdog pings and STATUS=, and the thermal limit.

It runs on the event loop, so a blocked loop pings nothing; whether the board is alive (and what
STATUS= says) comes from the status view, and the model manager's retry is driven from its tick.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from .config import Config
from .pipeline import Pipeline
from .sdnotify import Notifier
from .thermal import ThermalMonitor

log = logging.getLogger("cuecam")
SUPERVISE_TICK_S = 0.25  # the supervisor's loop: READY, watchdog pings, STATUS, thermal
STATUS_EVERY_S = 10.0  # STATUS= is re-sent at least this often, and whenever the state changes


class Supervisor:
    def __init__(self, cfg: Config, *, notifier: Notifier, thermal: ThermalMonitor, pipeline: Pipeline,
                 alive: Callable[[], tuple[bool, str]], status_line: Callable[[], str],
                 ready_due: Callable[[], bool], uptime: Callable[[], float], clock: Callable[[], float],
                 ticks: tuple[Callable[[float], None], ...] = ()) -> None:
        self.cfg = cfg
        self.notifier = notifier
        self.thermal = thermal
        self.pipeline = pipeline
        self._alive = alive
        self._status_line = status_line
        self._ready_due = ready_due
        self._uptime = uptime
        self.now = clock
        self._ticks = ticks
        self.ready_after_s: float | None = None  # when READY=1 was due (uptime)
        self.watchdog_pings = 0
        self._last_status = ""
        self._last_status_t = -1e18
        self._last_ping = -1e18

    async def run(self) -> None:
        n = self.notifier
        interval = n.watchdog_interval_s
        tick = SUPERVISE_TICK_S if interval is None else min(SUPERVISE_TICK_S, interval / 4)
        next_thermal = self.now()
        while True:
            now = self.now()
            if self.ready_after_s is None and self._ready_due():
                self.ready_after_s = self._uptime()
                line = self._status_line()
                n.ready(line)
                log.info("ready after %.2f s: %s", self.ready_after_s, line)
            if interval is not None and now - self._last_ping >= interval:
                alive, why = self._alive()
                if alive:
                    if n.watchdog():
                        self.watchdog_pings += 1
                    self._last_ping = now
                elif now - self._last_ping >= interval:  # once per interval: say why the pings stop
                    log.error("watchdog: not pinging (%s)", why)
                    self._last_ping = now - interval + 1.0
            if now >= next_thermal:
                next_thermal = now + self.cfg.thermal.poll_s
                self.apply_thermal()
            for t in self._ticks:
                t(now)
            if self.ready_after_s is not None:
                line = self._status_line()
                head = line.split(";")[0]
                if head != self._last_status.split(";")[0] or now - self._last_status_t >= STATUS_EVERY_S:
                    n.status(line)
                    self._last_status, self._last_status_t = line, now
            await asyncio.sleep(tick)

    def apply_thermal(self) -> None:
        was = self.thermal.hot
        self.thermal.poll()
        hot = self.thermal.hot
        self.pipeline.min_interval_s = 1.0 / self.cfg.thermal.hot_fps if hot else 0.0
        if hot != was:
            r = self.thermal.reading
            log.warning("thermal: %s (%s); analysing %s", "hot" if hot else "cooled down", r,
                        f"at most {self.cfg.thermal.hot_fps:g} fps" if hot else "every frame")

    def status(self, alive: bool, why: str) -> dict[str, Any]:
        return {"notify": self.notifier.enabled, "watchdog_interval_s": self.notifier.watchdog_interval_s,
                "watchdog_pings": self.watchdog_pings, "alive": alive, "why": why,
                "ready_after_s": None if self.ready_after_s is None else round(self.ready_after_s, 2)}

    def thermal_status(self, frames_skipped: int) -> dict[str, Any]:
        reading = self.thermal.reading
        return {"sensor": self.thermal.sensor_name, "temp_c": None if reading is None else reading.temp_c,
                "throttled": None if reading is None else reading.throttled_hex,
                "flags": [] if reading is None else reading.flags, "hot": self.thermal.hot,
                "soft_limit_c": self.cfg.thermal.soft_limit_c,
                "fps_cap": self.cfg.thermal.hot_fps if self.thermal.hot else None,
                "frames_skipped": frames_skipped}
