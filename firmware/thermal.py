"""SoC temperature and the Raspberry Pi firmware's throttle flags, behind a small seam.

A Pi reports its SoC temperature in ``/sys/class/thermal/thermal_zone0/temp`` (millidegrees C)
and its throttle state in ``/sys/devices/platform/soc/soc:firmware/get_throttled`` (hex; the same
number ``vcgencmd get_throttled`` prints as ``throttled=0x...``). The firmware caps the clock at
80-85 C; the monitor lowers the analysed frame rate above ``thermal.soft_limit_c`` (or when the
firmware already reports throttling) so the board cools down before that happens, and goes back
to full rate below ``soft_limit_c - hysteresis_c``.

``FileSensor`` reads any two files: on a Pi those are the sysfs files, in tests they are files
the test writes (the fake that ships here is the real reader pointed at other paths).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from .config import LoadedConfig, ThermalConfig
from .errors import ConfigError

log = logging.getLogger(__name__)
MAX_READ = 64

# Bits of get_throttled: now (0-3) and since boot (16-19).
THROTTLE_FLAGS = {
    0: "under_voltage",
    1: "freq_capped",
    2: "throttled",
    3: "soft_temp_limit",
    16: "under_voltage_occurred",
    17: "freq_capped_occurred",
    18: "throttled_occurred",
    19: "soft_temp_limit_occurred",
}
THROTTLING_NOW = (1 << 1) | (1 << 2) | (1 << 3)  # the clock is being held down right now


@dataclass(frozen=True)
class ThermalReading:
    temp_c: float | None
    throttled: int | None
    flags: list[str] = field(default_factory=list)

    @property
    def throttled_hex(self) -> str | None:
        return None if self.throttled is None else f"0x{self.throttled:x}"

    def __str__(self) -> str:
        t = "?" if self.temp_c is None else f"{self.temp_c:.1f} C"
        return f"{t}, throttled={self.throttled_hex}"


def parse_temp(text: str) -> float:
    """sysfs millidegrees ("48312") or a vcgencmd measure_temp line ("temp=48.3'C") in degrees C."""
    t = text.strip()
    if t.startswith("temp="):
        return float(t[5:].rstrip("'C").strip())
    v = float(t)
    return v / 1000.0 if abs(v) >= 200 else v  # millidegrees, or already degrees


def parse_throttled(text: str) -> int:
    """"0x50005", "50005" (sysfs) or "throttled=0x50005" (vcgencmd get_throttled)."""
    t = text.strip().removeprefix("throttled=")
    return int(t, 16)


def decode_flags(value: int) -> list[str]:
    return [name for bit, name in THROTTLE_FLAGS.items() if value & (1 << bit)]


class ThermalSensor:
    name = "none"

    def read(self) -> ThermalReading | None:
        return None


class FileSensor(ThermalSensor):
    """Reads a temperature file and, if present, a throttle-flags file. Never raises."""

    def __init__(self, temp_path: Path, throttled_path: Path | None, name: str = "file") -> None:
        self.temp_path = temp_path
        self.throttled_path = throttled_path
        self.name = name
        self.errors = 0

    def _read(self, path: Path) -> str | None:
        try:
            with open(path, encoding="ascii", errors="replace") as f:
                return f.read(MAX_READ)
        except OSError:
            return None

    def read(self) -> ThermalReading | None:
        temp = throttled = None
        raw = self._read(self.temp_path)
        if raw is not None:
            try:
                temp = round(parse_temp(raw), 2)
            except ValueError:
                self.errors += 1
        if self.throttled_path is not None and (raw_t := self._read(self.throttled_path)) is not None:
            try:
                throttled = parse_throttled(raw_t)
            except ValueError:
                self.errors += 1
        if temp is None and throttled is None:
            return None
        return ThermalReading(temp, throttled, decode_flags(throttled or 0))


def create_sensor(cfg: ThermalConfig, loaded: LoadedConfig | None = None) -> ThermalSensor:
    if cfg.sensor == "none":
        return ThermalSensor()
    resolve = loaded.resolve if loaded is not None else Path
    temp, thr = Path(resolve(cfg.temp_path)), Path(resolve(cfg.throttled_path))
    if cfg.sensor == "auto" and not temp.exists():
        return ThermalSensor()
    if cfg.sensor == "sysfs" and not temp.exists():
        raise ConfigError(f"thermal.sensor is sysfs but {temp} does not exist; use sensor: auto or none")
    return FileSensor(temp, thr, name="sysfs" if cfg.sensor in ("auto", "sysfs") else "file")


class ThermalMonitor:
    """Polled from the event loop; ``hot`` says whether to lower the frame rate."""

    def __init__(self, sensor: ThermalSensor, cfg: ThermalConfig) -> None:
        self.sensor = sensor
        self.cfg = cfg
        self.reading: ThermalReading | None = None
        self.hot = False
        self.hot_spells = 0

    @property
    def sensor_name(self) -> str:
        return self.sensor.name

    def poll(self) -> ThermalReading | None:
        r = self.reading = self.sensor.read()
        if r is None:
            self.hot = False
            return r
        firmware_throttling = r.throttled is not None and bool(r.throttled & THROTTLING_NOW)
        if (r.temp_c is not None and r.temp_c >= self.cfg.soft_limit_c) or firmware_throttling:
            if not self.hot:
                self.hot_spells += 1
            self.hot = True
        elif r.temp_c is None or r.temp_c < self.cfg.soft_limit_c - self.cfg.hysteresis_c:
            self.hot = False
        return r
