"""Closed hours: local times when only staff are in the shop, so nothing may be measured.

Staff may not be subjected to emotion inference at work (EU AI Act Art. 5(1)(f)); before opening
and after closing everyone in view is staff, so frames are dropped before detection.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Sequence

from ..config import ClosedHours

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _minutes(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


class ClosedSchedule:
    """``closed(t)`` for epoch seconds t, in the configured time zone (default: the board's)."""

    def __init__(self, windows: Sequence[ClosedHours], timezone: str | None = None) -> None:
        self.tz = zoneinfo.ZoneInfo(timezone) if timezone else None
        self.windows = [(_minutes(w.start), _minutes(w.end), {DAYS.index(d) for d in w.days}) for w in windows]

    def __bool__(self) -> bool:
        return bool(self.windows)

    def closed(self, t: float) -> bool:
        if not self.windows:
            return False
        local = dt.datetime.fromtimestamp(t, tz=self.tz) if self.tz else dt.datetime.fromtimestamp(t)
        now = local.hour * 60 + local.minute
        day = local.weekday()
        for start, end, days in self.windows:
            if start <= end:
                if day in days and start <= now < end:
                    return True
            # wraps past midnight: the evening part belongs to `day`, the morning part to the day before
            elif (day in days and now >= start) or ((day - 1) % 7 in days and now < end):
                return True
        return False
