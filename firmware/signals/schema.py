"""Sentiment vectors, schema 1: the ring-buffer record and its JSON form (an allow-list).

One record per track per window. Nothing in a record can hold pixels: every field is a number
or the track's random token, and the serializer below names each field it emits.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..counts import COUNTING_AGGREGATES
from ..tracking.zones import PERSON_HEIGHT_M
from .engine import EXIT_NAMES, ORIENTATION_NAMES, Vector

SCHEMA = 1

VECTOR_DTYPE = np.dtype(
    [
        ("seq", "u8"),
        ("t_wall", "f8"),  # wall clock at the window's end (epoch seconds)
        ("t_mono", "f8"),  # the board's monotonic clock at the window's end: retention, windows
        ("t_start", "f8"),  # window start on the frame timeline (monotonic seconds)
        ("t_end", "f8"),
        ("token", "S32"),  # 128 random bits, hex
        ("zone", "i2"),  # index into the config's zones, -1: none
        ("dwell_s", "f4"),
        ("engagement", "f4"),  # NaN: null
        ("engagement_conf", "f4"),
        ("satisfaction", "f4"),
        ("satisfaction_conf", "f4"),
        ("approach", "f4"),
        ("approach_conf", "f4"),
        ("speed", "f4"),
        ("frames", "u2"),
        ("orientation", "u1"),
        ("exit", "u1"),
    ]
)


def _nan(v: float | None) -> float:
    return math.nan if v is None else v


def record_fields(v: Vector, t_wall_end: float, t_mono_end: float) -> dict[str, Any]:
    return {
        "t_wall": t_wall_end,
        "t_mono": t_mono_end,
        "t_start": v.t_start,
        "t_end": v.t_end,
        "token": v.token.encode("ascii"),
        "zone": v.zone,
        "dwell_s": v.dwell_s,
        "engagement": _nan(v.engagement),
        "engagement_conf": v.engagement_conf,
        "satisfaction": _nan(v.satisfaction),
        "satisfaction_conf": v.satisfaction_conf,
        "approach": _nan(v.approach),
        "approach_conf": v.approach_conf,
        "speed": v.speed,
        "frames": min(v.frames, 65535),
        "orientation": v.orientation,
        "exit": v.exit,
    }


def _num(x: Any, nd: int = 3) -> float | None:
    f = float(x)
    return None if math.isnan(f) else round(f, nd)


def to_json(records: np.ndarray, zone_names: list[str], unit: str) -> Iterator[dict[str, Any]]:
    """The public form of vector records; every key is listed here and nowhere else.

    Speeds are held in person heights per second; with a ground plane (unit ``m/s``) they are
    floor metres / 1.7 and are turned back into metres here."""
    speed_scale = PERSON_HEIGHT_M if unit == "m/s" else 1.0
    for r in records:
        window = float(r["t_end"] - r["t_start"])
        end = float(r["t_wall"])
        zi = int(r["zone"])
        yield {
            "schema": SCHEMA,
            "seq": int(r["seq"]),
            "window_start": round(end - window, 3),
            "window_end": round(end, 3),
            "token": r["token"].decode("ascii"),
            "zone": zone_names[zi] if 0 <= zi < len(zone_names) else None,
            "dwell_s": round(float(r["dwell_s"]), 2),
            "engagement": {"value": _num(r["engagement"]), "confidence": _num(r["engagement_conf"], 2)},
            "dwell_satisfaction": {"value": _num(r["satisfaction"]), "confidence": _num(r["satisfaction_conf"], 2)},
            "approach_avoid": {"value": _num(r["approach"]), "confidence": _num(r["approach_conf"], 2)},
            "speed": round(float(r["speed"]) * speed_scale, 3),
            "speed_unit": unit,
            "frames": int(r["frames"]),
            "orientation": ORIENTATION_NAMES[int(r["orientation"])],
            "exit": EXIT_NAMES[int(r["exit"])] if int(r["exit"]) else None,
        }


def _mean(x: np.ndarray) -> float | None:
    x = x[~np.isnan(x)]
    return round(float(x.mean()), 3) if len(x) else None


AGGREGATE_NUMBERS = ("tracks", "vectors", "stays_ended", "engagement_mean", "dwell_satisfaction_mean",
                     "approach_avoid_mean", "approaching_share", "avoiding_share")


def aggregates(records: np.ndarray, zones: Sequence[tuple[str, str]], k: int = 1) -> list[dict[str, Any]]:
    """Per-zone counts and signal means over the given records (one cell per zone, plus
    ``null`` for people in no zone). A cell computed from fewer than ``k`` distinct tokens is
    suppressed: every number in it is null (k-anonymity)."""
    out = []
    cells: list[tuple[int, str | None, str | None]] = [(i, n, k) for i, (n, k) in enumerate(zones)
                                                       if k not in ("excluded", "line")]  # a line has no stays
    cells.append((-1, None, None))
    for zi, name, kind in cells:
        sel = records[records["zone"] == zi]
        eng = sel["engagement"].astype(np.float64)
        app = sel["approach"].astype(np.float64)
        sat = sel["satisfaction"].astype(np.float64)
        app_v = app[~np.isnan(app)]
        n_tracks = len(np.unique(sel["token"]))
        cell: dict[str, Any] = {
            "zone": name,
            "kind": kind,
            "suppressed": n_tracks < k,
            "tracks": n_tracks,
            "vectors": len(sel),
            "stays_ended": int((~np.isnan(sat)).sum()),
            "engagement_mean": _mean(eng),
            "dwell_satisfaction_mean": _mean(sat),
            "approach_avoid_mean": _mean(app),
            "approaching_share": round(float((app_v > 0.3).mean()), 3) if len(app_v) else None,
            "avoiding_share": round(float((app_v < -0.3).mean()), 3) if len(app_v) else None,
        }
        if cell["suppressed"]:
            cell.update(dict.fromkeys(AGGREGATE_NUMBERS))
        out.append(cell)
    return out


def _signal_schema(description: str, lo: float) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "required": ["value", "confidence"],
        "additionalProperties": False,
        "properties": {
            "value": {"type": ["number", "null"], "minimum": lo, "maximum": 1},
            "confidence": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
        },
    }


VECTOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "One track's window. Numbers and a random token only; no pixels, no identity.",
    "additionalProperties": False,
    "required": ["schema", "seq", "window_start", "window_end", "token", "zone", "dwell_s", "engagement",
                 "dwell_satisfaction", "approach_avoid", "speed", "speed_unit", "frames", "orientation", "exit"],
    "properties": {
        "schema": {"type": "integer", "const": SCHEMA},
        "seq": {"type": "integer", "minimum": 1},
        "window_start": {"type": "number", "description": "Wall clock, epoch seconds."},
        "window_end": {"type": "number"},
        "token": {"type": "string", "pattern": "^[0-9a-f]{32}$",
                  "description": "Random 128-bit per-track token; never derived from appearance."},
        "zone": {"type": ["string", "null"], "maxLength": 64},
        "dwell_s": {"type": "number", "minimum": 0, "description": "Seconds in the current zone stay."},
        "engagement": _signal_schema("Engagement intensity in [0, 1].", 0),
        "dwell_satisfaction": _signal_schema("Dwell satisfaction in [-1, 1]; set in the window a stay ends.", -1),
        "approach_avoid": _signal_schema("Approach (+) / avoid (-) in [-1, 1].", -1),
        "speed": {"type": "number", "minimum": 0},
        "speed_unit": {"type": "string", "enum": ["m/s", "person_heights/s"]},
        "frames": {"type": "integer", "minimum": 0, "maximum": 65535},
        "orientation": {"type": "string", "enum": list(ORIENTATION_NAMES)},
        "exit": {"type": ["string", "null"], "enum": [*EXIT_NAMES[1:], None]},
    },
}

VECTORS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["schema", "boot_id", "purges", "cursor", "lost", "more", "vectors"],
    "properties": {
        "schema": {"type": "integer", "const": SCHEMA},
        "boot_id": {"type": "string", "pattern": "^[0-9a-f]{16}$",
                    "description": "Random per start of the firmware: when it changes, seq numbering restarted "
                                   "(the buffer is RAM only), so a reader starts again from since=0."},
        "purges": {"type": "array", "maxItems": 8,
                   "description": "Last opt-out purges of this run: vectors with seq_from <= seq <= seq_to "
                                  "were purged, a reader forgets its copies. since, t: wall clock, for people.",
                   "items": {"type": "object", "additionalProperties": False,
                             "required": ["n", "seq_from", "seq_to", "since", "t"],
                             "properties": {"n": {"type": "integer", "minimum": 1},
                                            "seq_from": {"type": "integer", "minimum": 0},
                                            "seq_to": {"type": "integer", "minimum": 0},
                                            "since": {"type": "number"}, "t": {"type": "number"}}}},
        "cursor": {"type": "integer", "description": "Pass back as `since` to continue."},
        "lost": {"type": "integer", "description": "Vectors after `since` already expired or overwritten."},
        "more": {"type": "boolean"},
        "vectors": {"type": "array", "items": VECTOR_SCHEMA},
    },
}

_MEAN = {"type": ["number", "null"]}
AGGREGATES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["schema", "window_s", "until", "k_anonymity", "zones", *COUNTING_AGGREGATES],
    "properties": {
        **COUNTING_AGGREGATES,  # people, occupancy, lines, queues (firmware.counts)
        "schema": {"type": "integer", "const": SCHEMA},
        "window_s": {"type": "integer"},
        "until": {"type": "number"},
        "k_anonymity": {"type": "integer", "description": "Cells from fewer distinct tokens are suppressed."},
        "zones": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["zone", "kind", "suppressed", "tracks", "vectors", "stays_ended", "engagement_mean",
                             "dwell_satisfaction_mean", "approach_avoid_mean", "approaching_share", "avoiding_share"],
                "properties": {
                    "zone": {"type": ["string", "null"]},
                    "kind": {"type": ["string", "null"]},
                    "suppressed": {"type": "boolean", "description": "Fewer than k_anonymity people: no numbers."},
                    "tracks": {"type": ["integer", "null"], "minimum": 0},
                    "vectors": {"type": ["integer", "null"], "minimum": 0},
                    "stays_ended": {"type": ["integer", "null"], "minimum": 0},
                    "engagement_mean": _MEAN,
                    "dwell_satisfaction_mean": _MEAN,
                    "approach_avoid_mean": _MEAN,
                    "approaching_share": _MEAN,
                    "avoiding_share": _MEAN,
                },
            },
        },
    },
}
