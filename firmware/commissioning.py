"""The commissioning view's model (GET /ui, docs/commissioning.md): what the page draws, the traffic
map, and the zone editor's file handling.

``LiveView`` is a pipeline observer: it is handed each analysed frame's result (boxes, confirmed
tracks, keypoints), never the image. What it keeps is geometry and counts only, normalized to the
frame: the people seen in the last frame (box, keypoints, a few seconds of foot path), how many
stand in each zone, and a grid counting how many people stepped into each cell over the last
minutes. An opt-out purges all of it at once (``purge``).

``ZoneFile`` saves edited zones into the board's config file: the zones validated with the same
strict model as at start-up, only the file's ``zones:`` block rewritten (every other line and
comment kept), the result parsed again and compared, then written atomically. The file it replaced
is kept beside it (``<config>.prev``) for a one-step undo.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from pydantic import ValidationError

from .config import MAX_CONFIG_BYTES, CommissioningConfig, Config, ZoneConfig, parse_config, read_capped_text
from .errors import ConfigError
from .fsutil import atomic_write_bytes
from .signals.analyzer import FrameResult
from .tracking.zones import ZoneMap

MAX_PEOPLE = 64  # people drawn per message (the detector's cap is far above what a shop camera sees)
MAX_TAIL = 24  # points of foot path per person per message
POSE_HOLD_S = 1.0  # a skeleton stays drawn this long after its last pose invoke (the pose budget rotates)
GONE_S = 5.0  # a track unseen this long is forgotten (tail, last cell)
HEAT_BUCKETS = 12  # the traffic map's time slices


def _r(x: float) -> float:
    return round(float(x), 4)


@dataclass
class _Person:
    tail: deque[tuple[float, float, float]]  # (t, x, y) of the feet, normalized
    cell: int = -1  # the traffic-map cell the feet were last counted in
    seen: float = 0.0
    pose_t: float = -math.inf
    pose: list[list[float]] | None = None


class LiveView:
    """The latest frame as the page draws it, and the traffic map; fed by ``observe`` on the event loop."""

    def __init__(self, cfg: CommissioningConfig, zones: Sequence[ZoneConfig], *, clock: Callable[[], float],
                 retention_s: float = 3600.0) -> None:
        self.cfg = cfg
        self.clock = clock
        self.cols, self.rows = cfg.heatmap_grid
        self.frames = 0  # frames observed since start (the page sees whether the board is analysing)
        self.size: tuple[int, int] | None = None
        # the last frame's people as (person, box normalized to the frame) and its time; the page's
        # message is built from them when a page asks (``people``), not on every frame
        self._last: list[tuple[_Person, tuple[float, float, float, float]]] = []
        self._last_t = 0.0
        self._people: list[dict[str, Any]] | None = []
        self.zone_counts: list[int] = []
        self._persons: dict[str, _Person] = {}
        # The traffic map spans heatmap_minutes, never more than the retention: HEAT_BUCKETS grids of counts,
        # each a span/HEAT_BUCKETS slice of the monotonic clock; a slice is dropped once any of it is older
        # than the span, so no count outlives privacy.retention_s.
        self.span_s = min(cfg.heatmap_minutes * 60.0, retention_s)
        self._slice_s = self.span_s / HEAT_BUCKETS
        self._slices: deque[tuple[int, np.ndarray]] = deque()
        self.zones: list[ZoneConfig] = list(zones)
        self._zonemap: ZoneMap | None = None

    def set_zones(self, zones: Sequence[ZoneConfig]) -> None:
        self.zones = list(zones)
        self._zonemap = None
        self.zone_counts = [0] * len(self.zones)

    def purge(self) -> int:
        """Forget everything (an opt-out): people, paths, counts. Returns how many people were held."""
        n = len(self._persons)
        self._persons.clear()
        self._slices.clear()
        self._last, self._people = [], []
        self.zone_counts = [0] * len(self.zones)
        return n

    def observe(self, frame_id: int, t: float, res: FrameResult) -> None:
        w, h = res.size
        if w <= 0 or h <= 0:
            return
        self.frames += 1
        if self.size != (w, h) or self._zonemap is None:
            self.size = (w, h)
            self._zonemap = ZoneMap(self.zones, None, w, h)
        poses = dict(res.poses)
        counts = [0] * len(self.zones)
        last: list[tuple[_Person, tuple[float, float, float, float]]] = []
        grid = self._grid()
        for tr in res.tracked[:MAX_PEOPLE]:
            x0, y0, x1, y1 = (float(v) for v in tr.box)
            fx, fy = (x0 + x1) / 2.0, y1  # the feet: where the person stands on the floor
            p = self._persons.get(tr.tid)
            if p is None:
                p = self._persons[tr.tid] = _Person(deque(maxlen=256))
            p.seen = t
            nx, ny = min(max(fx / w, 0.0), 1.0), min(max(fy / h, 0.0), 1.0)
            p.tail.append((t, nx, ny))
            while p.tail and p.tail[0][0] < t - self.cfg.tail_s:
                p.tail.popleft()
            cell = min(int(ny * self.rows), self.rows - 1) * self.cols + min(int(nx * self.cols), self.cols - 1)
            if cell != p.cell:  # a person counts once per cell they step into, not once per frame
                p.cell = cell
                grid.flat[cell] += 1
            kp = poses.get(tr.tid)
            if kp is not None:
                p.pose_t, p.pose = t, [[_r(k[0]), _r(k[1]), round(float(k[2]), 2)] for k in kp]
            for z in self._zonemap.zones:
                if z.kind != "line" and z.contains(np.array([fx, fy])):  # a counting line holds nobody
                    counts[z.index] += 1
            last.append((p, (x0 / w, y0 / h, x1 / w, y1 / h)))
        for tid in [k for k, p in self._persons.items() if t - p.seen > GONE_S]:
            del self._persons[tid]
        self._last, self._last_t, self._people = last, t, None
        self.zone_counts = counts

    @property
    def people(self) -> list[dict[str, Any]]:
        """The people of the last frame as the page draws them: box, skeleton (held POSE_HOLD_S after
        its pose invoke) and foot path, normalized and rounded. Built at the first read after a frame
        (observe runs on the event loop, like the readers, so it reads the state that frame left)."""
        if self._people is None:
            t = self._last_t
            people = []
            for p, (x0, y0, x1, y1) in self._last:
                tail = list(p.tail)
                step = max(1, math.ceil(len(tail) / MAX_TAIL))
                people.append({
                    "box": [_r(x0), _r(y0), _r(x1), _r(y1)],
                    "kp": p.pose if t - p.pose_t <= POSE_HOLD_S else None,
                    "tail": [[_r(x), _r(y)] for _, x, y in tail[::-1][::step][::-1]],
                })
            self._people = people
        return self._people

    def _grid(self) -> np.ndarray:
        self.expire()
        key = int(self.clock() // self._slice_s)
        if not self._slices or self._slices[-1][0] != key:
            self._slices.append((key, np.zeros((self.rows, self.cols), dtype=np.int32)))
        return self._slices[-1][1]

    def expire(self) -> None:
        """Drop the traffic map's slices that began before the span (privacy.retention_s at most)."""
        oldest = int(self.clock() // self._slice_s) - HEAT_BUCKETS + 1
        while self._slices and self._slices[0][0] < oldest:
            self._slices.popleft()

    def heatmap(self) -> dict[str, Any]:
        """The traffic map: per cell, how many people stepped into it over the span (heatmap_minutes, at most
        the retention), as sparse [column, row, count] cells (the empty floor is not sent)."""
        self.expire()
        total = np.zeros((self.rows, self.cols), dtype=np.int64)
        for _, g in self._slices:
            total += g
        rows, cols = np.nonzero(total)
        return {"span_s": round(self.span_s), "grid": [self.cols, self.rows],
                "max": int(total.max()) if total.size else 0,
                "cells": [[int(c), int(r), int(total[r, c])] for r, c in zip(rows, cols, strict=True)]}


# -- the zone editor ----------------------------------------------------------------------------
class ZoneProblems(ConfigError):
    """The zones sent by the editor are not valid: every problem, each naming its zone and key."""


def validate_zones(cfg: Config, raw: Any) -> list[ZoneConfig]:
    """``raw`` (the editor's JSON: a list of zone objects) validated with the board's strict config model,
    the rest of the board's config unchanged; ZoneProblems lists every problem."""
    if not isinstance(raw, list):
        raise ZoneProblems("zones must be a list of zone objects", problems=["zones: must be a list"])
    data = cfg.model_dump()
    data["zones"] = raw
    try:
        new = Config.model_validate(data)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = list(err["loc"])
            if loc[:1] == ["zones"]:
                loc = loc[1:]
                if loc and isinstance(loc[0], int) and loc[0] < len(raw):
                    item = raw[loc[0]]
                    name = item.get("name") if isinstance(item, dict) else None
                    loc[0] = f"zone {loc[0] + 1}" + (f" ({str(name)[:64]})" if isinstance(name, str) else "")
            key = ": ".join(str(p) for p in loc) or "zones"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            elif err["type"] == "string_pattern_mismatch" and loc[-1:] == ["name"]:
                msg = "use letters, digits, '.', '_' and '-' only, starting with a letter or digit"
            problems.append(f"{key}: {msg}")
        raise ZoneProblems("; ".join(problems), problems=problems) from e
    return list(new.zones)


_TOP_KEY = re.compile(r"^[A-Za-z0-9_][\w-]*\s*:")
_ZONES_KEY = re.compile(r"^zones\s*:(?P<rest>.*)$")


def _flow(v: Any) -> str:
    """A YAML flow value (JSON, which YAML reads; floats rounded so they stay plain decimals)."""
    if isinstance(v, float):
        return repr(round(v, 6))
    if isinstance(v, list):
        return "[" + ", ".join(_flow(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{orjson.dumps(k).decode()}: {_flow(x)}" for k, x in v.items()) + "}"
    return orjson.dumps(v).decode()


def zones_yaml(zones: Sequence[ZoneConfig], comment: str = "") -> str:
    """The ``zones:`` block of a board config for these zones (unset keys left out)."""
    if not zones:
        return f"zones: []{comment}\n"
    out = [f"zones:{comment}\n"]
    for z in zones:
        fields = z.model_dump(exclude_none=True)
        first = True
        for k, v in fields.items():
            out.append(f"{'  - ' if first else '    '}{k}: {_flow(v)}\n")
            first = False
    return "".join(out)


def replace_zones(text: str, zones: Sequence[ZoneConfig]) -> str:
    """The config text with its top-level ``zones:`` block replaced (appended when there is none);
    every other line, comments included, as it was."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if _ZONES_KEY.match(line)), None)
    if start is None:
        sep = "" if not text or text.endswith("\n") else "\n"
        return text + sep + zones_yaml(zones)
    rest = _ZONES_KEY.match(lines[start].rstrip("\r\n"))
    assert rest is not None
    tail = rest.group("rest")
    comment = "  " + tail[tail.index("#"):] if "#" in tail and tail.strip().startswith("#") else ""
    end = start + 1
    while end < len(lines) and not _TOP_KEY.match(lines[end]):
        end += 1
    # blank and comment lines just before the next key belong to that key, not to the zones
    while end > start + 1 and (not lines[end - 1].strip() or lines[end - 1].startswith("#")):
        end -= 1
    return "".join(lines[:start]) + zones_yaml(zones, comment) + "".join(lines[end:])


class ZoneFile:
    """The board's config file as the zone editor writes it, with a one-step undo (``<name>.prev``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.prev = path.with_name(path.name + ".prev")

    def _read(self, path: Path) -> str:
        return read_capped_text(path, MAX_CONFIG_BYTES, "config file", "the board's config file was moved")

    def _mode(self) -> int:
        try:
            return self.path.stat().st_mode & 0o777
        except OSError:
            return 0o644

    def save(self, zones: Sequence[ZoneConfig]) -> Config:
        """Write ``zones`` into the file (validated zones only); the old file becomes the undo step.
        Returns the config as the file now says. ConfigError (nothing written) when the result would not
        parse back to exactly these zones."""
        old = self._read(self.path)
        new_text = replace_zones(old, zones)
        cfg = parse_config(new_text, str(self.path))  # the same loader as at start-up
        if [z.model_dump() for z in cfg.zones] != [z.model_dump() for z in zones]:
            raise ConfigError(f"{self.path}: the rewritten zones would not read back as sent; nothing was saved")
        mode = self._mode()
        atomic_write_bytes(self.prev, old.encode("utf-8"), mode=mode)
        atomic_write_bytes(self.path, new_text.encode("utf-8"), mode=mode)
        return cfg

    @property
    def can_undo(self) -> bool:
        return self.prev.is_file()

    def undo(self) -> Config:
        """Put the previous file back (once: the undo step is used up). ConfigError when there is none
        or it no longer validates (then nothing changes)."""
        if not self.prev.is_file():
            raise ConfigError("nothing to undo: no zones were saved since the last undo")
        text = self._read(self.prev)
        cfg = parse_config(text, str(self.prev))
        atomic_write_bytes(self.path, text.encode("utf-8"), mode=self._mode())
        self.prev.unlink()
        return cfg
