"""A store's own past footfall for the slow-hour rule: hourly visitor counts (a door counter's or
till system's export) imported into the gateway's SQLite history, so `slow_traffic` has baselines
from the first day instead of after weeks of the gateway's own counts.

The file is CSV with a header ``date,hour,visitors`` (``2026-11-18,10,412``): date YYYY-MM-DD,
hour 0-23 (local time, the hour that starts then), visitors a whole number. Numbers only — there is
nothing about people in it. Every row is checked before anything is written (file:line errors),
and the import is one SQLite transaction: a bad file changes nothing."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

from firmware.errors import ConfigError

MAX_BYTES = 8 * 1024 * 1024  # 400 days x 24 hours is ~10k rows; this is far above it
MAX_VISITORS = 10_000_000
HEADER = ("date", "hour", "visitors")


@dataclass(frozen=True)
class Parsed:
    rows: list[tuple[str, int, int, int]]  # (day, weekday, hour, visitors), as Store.seed_history takes them
    too_old: int  # rows older than the gateway keeps history (store.history_days)


def parse_history_csv(path: Path, *, history_days: int, today: date | None = None) -> Parsed:
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise ConfigError(f"{path}: {size} bytes; a history file is at most {MAX_BYTES} bytes")
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    today = today or datetime.now().date()
    oldest = today - timedelta(days=history_days)
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None or tuple(h.strip().lower() for h in header) != HEADER:
        raise ConfigError(f"{path}:1: the first line must be the header {','.join(HEADER)}")
    seen: dict[tuple[str, int], int] = {}
    rows: list[tuple[str, int, int, int]] = []
    too_old = 0
    for row in reader:
        line = reader.line_num
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != 3:
            raise ConfigError(f"{path}:{line}: {len(row)} fields; expected date,hour,visitors")
        d_s, h_s, n_s = (c.strip() for c in row)
        try:
            day = date.fromisoformat(d_s)
            if len(d_s) != 10:
                raise ValueError
        except ValueError:
            raise ConfigError(f"{path}:{line}: date {d_s!r} is not YYYY-MM-DD") from None
        if not (h_s.isdigit() and 0 <= int(h_s) <= 23):
            raise ConfigError(f"{path}:{line}: hour {h_s!r} is not a whole number 0-23")
        if not (n_s.isdigit() and int(n_s) <= MAX_VISITORS):
            raise ConfigError(f"{path}:{line}: visitors {n_s!r} is not a whole number 0-{MAX_VISITORS}")
        if day > today:
            raise ConfigError(f"{path}:{line}: {d_s} is in the future (today is {today.isoformat()})")
        key = (day.isoformat(), int(h_s))
        if key in seen:
            raise ConfigError(f"{path}:{line}: {d_s} hour {h_s} again (first on line {seen[key]})")
        seen[key] = line
        if day < oldest:
            too_old += 1
            continue
        rows.append((key[0], day.weekday(), key[1], int(n_s)))
    return Parsed(rows, too_old)
