"""Closed hours in local time: plain windows, windows past midnight, days, time zones."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest

from firmware.config import ClosedHours, PrivacyConfig
from firmware.errors import ConfigError
from firmware.privacy.schedule import ClosedSchedule

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")


def at(y: int, mo: int, d: int, h: int, mi: int, tz=BERLIN) -> float:
    return dt.datetime(y, mo, d, h, mi, tzinfo=tz).timestamp()


def test_no_windows_is_never_closed():
    s = ClosedSchedule([], "Europe/Berlin")
    assert not s and not s.closed(at(2026, 11, 25, 3, 0))


@pytest.mark.parametrize(
    ("h", "mi", "closed"),
    [(20, 59, False), (21, 0, True), (23, 59, True), (0, 0, True), (7, 59, True), (8, 0, False), (12, 0, False)],
)
def test_a_window_past_midnight(h, mi, closed):
    s = ClosedSchedule([ClosedHours(start="21:00", end="08:00")], "Europe/Berlin")
    assert s.closed(at(2026, 11, 25, h, mi)) is closed


def test_days_apply_to_the_evening_the_window_starts():
    # closed from Saturday 18:00 to Monday... only on Saturdays and Sundays
    s = ClosedSchedule([ClosedHours(start="18:00", end="09:00", days=["sat", "sun"])], "Europe/Berlin")
    assert s.closed(at(2026, 11, 28, 19, 0))  # Saturday evening
    assert s.closed(at(2026, 11, 29, 8, 0))  # Sunday morning (from Saturday)
    assert s.closed(at(2026, 11, 30, 8, 0))  # Monday morning (from Sunday evening)
    assert not s.closed(at(2026, 11, 30, 19, 0))  # Monday evening
    assert not s.closed(at(2026, 11, 28, 8, 0))  # Saturday morning (Friday is not listed)


def test_the_time_zone_is_honoured():
    s = ClosedSchedule([ClosedHours(start="09:00", end="17:00")], "Asia/Tokyo")
    assert s.closed(at(2026, 11, 25, 10, 0, zoneinfo.ZoneInfo("Asia/Tokyo")))
    assert not s.closed(at(2026, 11, 25, 10, 0, zoneinfo.ZoneInfo("Europe/Berlin")))  # 18:00 in Tokyo


def test_bad_times_and_zones_are_config_errors():
    from tests.conftest import sim_config

    with pytest.raises(Exception, match="pattern"):
        ClosedHours(start="25:00", end="08:00")
    with pytest.raises(Exception, match="unknown time zone"):
        PrivacyConfig(timezone="Mars/Olympus_Mons")
    with pytest.raises(Exception, match="less than or equal to 3600"):
        PrivacyConfig(retention_s=7200)  # retention above 60 min is refused
    with pytest.raises(Exception, match="less than or equal to 600"):
        PrivacyConfig(token_rotation_s=3600)
    assert sim_config({"privacy": {"retention_s": 3600}}).config.privacy.retention_s == 3600


def test_a_board_config_with_long_retention_is_refused_with_its_line():
    from firmware.config import parse_config
    from tests.conftest import SIM_CONFIG

    text = SIM_CONFIG.read_text().replace("retention_s: 600 ", "retention_s: 7200")
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if "retention_s: 7200" in ln)
    with pytest.raises(ConfigError, match=rf"board.yaml:{line}: privacy.retention_s: Input should be less than or equal to 3600"):
        parse_config(text, "board.yaml")
