"""Footfall, occupancy and queue figures in RAM: what ``/v1/counts``, ``/v1/aggregates`` and
``/metrics`` serve about counting lines and queues.

Two fixed-capacity ring buffers (``ringbuffer.RingBuffer``), numbers only:

- *events*: one record per line crossing (line, in or out) and per wait that ended in a queue
  (zone, seconds), with the wall and monotonic time it happened;
- *samples*: once a second while measuring, the people in view, per zone and per queue.

Both follow the vectors' rules: kept ``privacy.retention_s`` (on the monotonic clock), and purged
by an opt-out over the same look-back as the vectors. A count holds no identity, but in a quiet
minute the one crossing in a bucket *is* the person who pressed the button: so the crossings,
waits and samples of the look-back are dropped like their vectors, and the buckets they fell in
are served marked ``purged`` (their numbers are then a lower bound), so that the gateway replaces
its copy and knows why the figure is low. Everything before the look-back survives. While the
board is paused nothing is counted: a bucket's ``measured_s`` says how much of it was watched.

Buckets are fixed (``BUCKET_S``), aligned on the wall clock (minute boundaries), computed from the
events at query time: there is one copy of every number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import ZoneConfig
from .ringbuffer import RingBuffer
from .tracking.counting import CountFrame

BUCKET_S = 60
SAMPLE_S = 1.0
MAX_EVENTS = 65536  # crossings and waits held (the retention window of a very busy door: ~100 a second)
MAX_BUCKETS = 61  # one hour of 1-min buckets per answer (retention is at most an hour)
KIND_IN, KIND_OUT, KIND_WAIT = 0, 1, 2

EVENT_DTYPE = np.dtype([("seq", "u8"), ("t_wall", "f8"), ("t_mono", "f8"), ("kind", "u1"), ("zone", "i2"),
                        ("value", "f4")])


@dataclass(frozen=True)
class _Named:
    index: int  # into the config's zones
    name: str
    entrance: bool = False


class CountStore:
    """See the module docstring. Event-loop only (fed by a pipeline observer), like the vectors."""

    def __init__(self, zones: Sequence[ZoneConfig], retention_s: float) -> None:
        self.zone_names = [z.name for z in zones]
        self.kinds = [z.kind for z in zones]
        self.lines = [_Named(i, z.name, bool(z.entrance if z.entrance is not None else True))
                      for i, z in enumerate(zones) if z.kind == "line"]
        self.queues = [_Named(i, z.name) for i, z in enumerate(zones) if z.kind == "queue"]
        self.areas = [_Named(i, z.name) for i, z in enumerate(zones) if z.kind not in ("line", "excluded")]
        self.retention_s = retention_s
        n = max(len(zones), 1)
        self.events = RingBuffer(EVENT_DTYPE, MAX_EVENTS)
        self.samples = RingBuffer(np.dtype([("seq", "u8"), ("t_wall", "f8"), ("t_mono", "f8"), ("people", "u2"),
                                            ("occupancy", "u2", (n,)), ("queue", "u2", (n,))]),
                                  int(retention_s / SAMPLE_S) + 8)
        self._last_sample = -math.inf
        self.now: CountFrame | None = None  # the latest frame's figures (None: nothing measured yet)
        self.now_mono = -math.inf
        self.purged: list[tuple[float, float]] = []  # wall-clock spans purged by opt-outs (for buckets)

    # -- fed by the pipeline ------------------------------------------------------------------------
    def observe(self, t_mono: float, wall: float, mono: float, counts: CountFrame) -> None:
        """One analysed frame: ``t_mono`` its capture time; ``wall``, ``mono``: the clocks now."""
        for c in counts.crossings:  # c.t on the frame timeline, as t_mono: it happened this long ago
            ago = max(t_mono - c.t, 0.0)
            self.events.append(t_wall=wall - ago, t_mono=mono - ago, kind=KIND_IN if c.direction == "in" else KIND_OUT,
                               zone=c.line, value=1.0)
        for w in counts.waits:
            ago = max(t_mono - w.t, 0.0)
            self.events.append(t_wall=wall - ago, t_mono=mono - ago, kind=KIND_WAIT, zone=w.zone, value=w.wait_s)
        self.now, self.now_mono = counts, mono
        if mono - self._last_sample >= SAMPLE_S:
            self._last_sample = mono
            occ = np.zeros(self.samples.dtype["occupancy"].shape, dtype=np.uint16)
            que = np.zeros_like(occ)
            occ[: len(counts.occupancy)] = counts.occupancy
            que[: len(counts.queues)] = counts.queues
            self.samples.append(t_wall=wall, t_mono=mono, people=counts.people, occupancy=occ, queue=que)

    # -- privacy ------------------------------------------------------------------------------------
    def expire(self, cutoff_mono: float) -> int:
        """Drop what is older than the retention (the caller passes now - retention_s)."""
        n = self.events.expire(cutoff_mono, field="t_mono")
        self.samples.expire(cutoff_mono, field="t_mono")
        return n

    def purge(self, cutoff_mono: float | None, wall: float, mono: float) -> int:
        """An opt-out: drop the events and samples from ``cutoff_mono`` on (None: all). Returns the
        crossings and waits dropped; the buckets they were in are served ``purged`` from now on."""
        if cutoff_mono is None:
            n = self.events.clear()
            self.samples.clear()
            self.purged.append((-math.inf, wall))
        else:
            n = self.events.purge_since(cutoff_mono, field="t_mono")
            self.samples.purge_since(cutoff_mono, field="t_mono")
            self.purged.append((wall - (mono - cutoff_mono), wall))
        self.purged = self.purged[-16:]
        self.now = None  # the figures of the frame before the press are gone with it
        return n

    # -- reading ------------------------------------------------------------------------------------
    def _events(self, t0: float, t1: float, field: str) -> np.ndarray:
        return self.events.between(t0, t1, self.events.capacity, field=field).records

    def _samples(self, t0: float, t1: float, field: str) -> np.ndarray:
        return self.samples.between(t0, t1, self.samples.capacity, field=field).records

    def current(self, mono: float, stale_s: float = 2.0) -> CountFrame | None:
        """The latest frame's figures, or None when no frame was analysed for ``stale_s``."""
        return self.now if self.now is not None and mono - self.now_mono <= stale_s else None

    def buckets(self, since: float, wall: float) -> list[dict[str, Any]]:
        """Per-bucket line counts, queue waits and occupancy, for the buckets ending after ``since``
        (wall clock), oldest first, at most MAX_BUCKETS (the newest ones), up to the one in progress."""
        first = max(math.floor(since / BUCKET_S) * BUCKET_S, math.floor((wall - self.retention_s) / BUCKET_S) * BUCKET_S)
        starts = list(range(int(first), int(wall) + 1, BUCKET_S))[-MAX_BUCKETS:]
        if not starts:
            return []
        ev = self._events(starts[0], starts[-1] + BUCKET_S, "t_wall")
        sm = self._samples(starts[0], starts[-1] + BUCKET_S, "t_wall")
        eb = ((ev["t_wall"] - starts[0]) // BUCKET_S).astype(np.int64)
        sb = ((sm["t_wall"] - starts[0]) // BUCKET_S).astype(np.int64)
        out = []
        for k, start in enumerate(starts):
            end = start + BUCKET_S
            e, s = ev[eb == k], sm[sb == k]
            lines = {ln.name: {"in": int(((e["kind"] == KIND_IN) & (e["zone"] == ln.index)).sum()),
                               "out": int(((e["kind"] == KIND_OUT) & (e["zone"] == ln.index)).sum())}
                     for ln in self.lines}
            queues = {}
            for q in self.queues:
                waits = e["value"][(e["kind"] == KIND_WAIT) & (e["zone"] == q.index)].astype(np.float64)
                queues[q.name] = {"served": len(waits), "wait_s_sum": round(float(waits.sum()), 2),
                                  "wait_s_max": round(float(waits.max()), 2) if len(waits) else None,
                                  "length_max": int(s["queue"][:, q.index].max()) if len(s) else None}
            out.append({
                "start": start, "end": end, "complete": end <= wall,
                "measured_s": round(min(len(s) * SAMPLE_S, BUCKET_S), 1),
                "purged": any(a < end and b >= start for a, b in self.purged),
                "lines": lines, "queues": queues,
                "people_max": int(s["people"].max()) if len(s) else None,
                "people_mean": round(float(s["people"].mean()), 2) if len(s) else None,
            })
        return out

    def window(self, seconds: float, mono: float, k: int) -> dict[str, Any]:
        """The last ``seconds``: crossings per line, occupancy and queues (now, mean, max), and the
        waits of the people who left each queue; wait figures from fewer than ``k`` people are
        suppressed (k-anonymity: they describe what those few did), the counts are not."""
        ev = self._events(mono - seconds, mono + 1.0, "t_mono")
        sm = self._samples(mono - seconds, mono + 1.0, "t_mono")
        cur = self.current(mono)

        def stats(col: np.ndarray) -> dict[str, Any]:
            return {"mean": round(float(col.mean()), 2) if len(col) else None,
                    "max": int(col.max()) if len(col) else None}
        lines = [{"line": ln.name, "entrance": ln.entrance,
                  "in": int(((ev["kind"] == KIND_IN) & (ev["zone"] == ln.index)).sum()),
                  "out": int(((ev["kind"] == KIND_OUT) & (ev["zone"] == ln.index)).sum())} for ln in self.lines]
        zones = [{"zone": z.name, "kind": self.kinds[z.index],
                  "now": None if cur is None else int(cur.occupancy[z.index]), **stats(sm["occupancy"][:, z.index])}
                 for z in self.areas]
        queues = []
        for q in self.queues:
            waits = ev["value"][(ev["kind"] == KIND_WAIT) & (ev["zone"] == q.index)].astype(np.float64)
            few = len(waits) < k
            queues.append({"zone": q.name, "length": None if cur is None else int(cur.queues[q.index]),
                           "length_mean": stats(sm["queue"][:, q.index])["mean"],
                           "length_max": stats(sm["queue"][:, q.index])["max"],
                           "served": len(waits), "suppressed": few,
                           "wait_mean_s": None if few or not len(waits) else round(float(waits.mean()), 2),
                           "wait_max_s": None if few or not len(waits) else round(float(waits.max()), 2)})
        return {"people": {"now": None if cur is None else cur.people, **stats(sm["people"])},
                "zones": zones, "lines": lines, "queues": queues}

    def totals(self) -> dict[tuple[str, str], int]:
        """Crossings held (the retention window, purges applied) per (line, direction)."""
        ev = self.events.between(-math.inf, math.inf, self.events.capacity, field="t_mono").records
        return {(ln.name, d): int(((ev["kind"] == kind) & (ev["zone"] == ln.index)).sum())
                for ln in self.lines for d, kind in (("in", KIND_IN), ("out", KIND_OUT))}


_N = {"type": ["integer", "null"], "minimum": 0}
_F = {"type": ["number", "null"], "minimum": 0}
_STATS = {"mean": _F, "max": _N}
COUNTING_AGGREGATES: dict[str, Any] = {
    "people": {"type": "object", "additionalProperties": False, "required": ["now", "mean", "max"],
               "description": "People in view: now (null when no frame was analysed for 2 s), mean and max of "
                              "the once-a-second samples over the window.",
               "properties": {"now": _N, **_STATS}},
    "occupancy": {"type": "array", "description": "People per area zone: now, mean and max over the window.",
                  "items": {"type": "object", "additionalProperties": False,
                            "required": ["zone", "kind", "now", "mean", "max"],
                            "properties": {"zone": {"type": "string"}, "kind": {"type": "string"}, "now": _N, **_STATS}}},
    "lines": {"type": "array", "description": "Crossings of each counting line over the window.",
              "items": {"type": "object", "additionalProperties": False,
                        "required": ["line", "entrance", "in", "out"],
                        "properties": {"line": {"type": "string"}, "entrance": {"type": "boolean"},
                                       "in": {"type": "integer", "minimum": 0}, "out": {"type": "integer", "minimum": 0}}}},
    "queues": {"type": "array",
               "description": "Queue zones: length now (people inside min_wait_s or more), mean, max; people who "
                              "left (served), their waits (null when fewer than k_anonymity).",
               "items": {"type": "object", "additionalProperties": False,
                         "required": ["zone", "length", "length_mean", "length_max", "served", "suppressed",
                                      "wait_mean_s", "wait_max_s"],
                         "properties": {"zone": {"type": "string"}, "length": _N, "length_mean": _F, "length_max": _N,
                                        "served": {"type": "integer", "minimum": 0}, "suppressed": {"type": "boolean"},
                                        "wait_mean_s": _F, "wait_max_s": _F}}},
}

_LINE_COUNT = {"type": "object", "additionalProperties": False, "required": ["in", "out"],
               "properties": {"in": {"type": "integer", "minimum": 0}, "out": {"type": "integer", "minimum": 0}}}
_QUEUE_BUCKET = {"type": "object", "additionalProperties": False,
                 "required": ["served", "wait_s_sum", "wait_s_max", "length_max"],
                 "properties": {"served": {"type": "integer", "minimum": 0}, "wait_s_sum": {"type": "number", "minimum": 0},
                                "wait_s_max": _F, "length_max": _N}}
COUNTS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["boot_id", "bucket_s", "until", "retention_s", "lines", "queues", "buckets"],
    "properties": {
        "boot_id": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
        "bucket_s": {"type": "integer", "const": BUCKET_S},
        "until": {"type": "number", "description": "Wall clock now (epoch seconds)."},
        "retention_s": {"type": "number"},
        "lines": {"type": "array", "items": {"type": "object", "additionalProperties": False,
                                             "required": ["line", "entrance"],
                                             "properties": {"line": {"type": "string"}, "entrance": {"type": "boolean"}}}},
        "queues": {"type": "array", "items": {"type": "string"}},
        "buckets": {
            "type": "array", "maxItems": MAX_BUCKETS,
            "description": "Wall-clock buckets ending after since, oldest first, to the one in progress. "
                           "measured_s: seconds analysed; purged: an opt-out dropped part of it (replace copies).",
            "items": {"type": "object", "additionalProperties": False,
                      "required": ["start", "end", "complete", "measured_s", "purged", "lines", "queues",
                                   "people_max", "people_mean"],
                      "properties": {"start": {"type": "integer"}, "end": {"type": "integer"},
                                     "complete": {"type": "boolean"}, "measured_s": {"type": "number"},
                                     "purged": {"type": "boolean"},
                                     "lines": {"type": "object", "additionalProperties": _LINE_COUNT},
                                     "queues": {"type": "object", "additionalProperties": _QUEUE_BUCKET},
                                     "people_max": _N, "people_mean": _F}},
        },
    },
}
