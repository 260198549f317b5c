"""The decision engine: rules (host_tools/gateway/config.py) over the store's vectors, each
decision with its explanation (which rule, which inputs, which threshold), a cooldown per rule and
subject so a screen is not spammed, and the actions handed to the outputs.

Rule kinds:
- ``engaged``: one session (a board's random token) at zone Z with engagement >= min for >= for_s of
  consecutive windows (gaps up to max_gap_s; windows with a null engagement neither add nor break).
  Evaluated as vectors arrive; fires at most once per session, and per zone at most once a cooldown.
- ``slow_traffic``: footfall (people in through the boards' entrance lines; distinct sessions while
  no board has one) over the last window_s, as a per-hour rate, below the ``percentile`` of the
  same weekday and hour in the history (>= min_samples past days).
- ``low_conversion``: footfall normal for the hour, transactions / footfall over window_s below
  the ``percentile`` of the same hour's conversion on past days.
- ``queue_alert``: a queue zone's longest queue, or its people's mean wait, over the limit.
- ``low_satisfaction`` / ``avoidance``: of the sessions with a value in zone Z over the last over_s
  (>= min_visitors), at least ``share`` have a mean dwell satisfaction / approach-avoid below ``below``.
All but ``engaged`` are evaluated every tick (1 s).
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from .config import EngagedWhen, LowConversionWhen, QueueWhen, Rule, ShareWhen, SlowTrafficWhen
from .sales import SalesStore
from .store import Rec, Store


@dataclass
class Decision:
    id: int
    t: float
    rule: str
    kind: str
    subject: str  # the zone, or "store"
    explanation: str
    inputs: dict[str, Any]
    actions: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "t": round(self.t, 3), "iso": datetime.fromtimestamp(self.t).isoformat(timespec="seconds"),
                "rule": self.rule, "kind": self.kind, "subject": self.subject, "explanation": self.explanation,
                "inputs": self.inputs, "actions": self.actions}


@dataclass(slots=True)
class _Run:
    seconds: float = 0.0
    end: float | None = None
    values: list[float] = field(default_factory=list)
    fired: bool = False


class DecisionEngine:
    def __init__(self, rules: list[Rule], store: Store, *, kept: int = 1000, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic, sales: SalesStore | None = None) -> None:
        self.rules = [r for r in rules if r.enabled]
        self.store = store
        self.sales = sales if sales is not None else SalesStore(store)
        self.clock = clock
        self.monotonic = monotonic
        self.started = monotonic()
        self.decisions: deque[Decision] = deque(maxlen=kept)
        self._ids = itertools.count(1)
        self._last_fired: dict[tuple[str, str], float] = {}  # (rule, subject) -> monotonic time
        self._runs: dict[tuple[str, str], _Run] = {}  # (rule, session) -> engaged run
        self.suppressed = 0  # conditions met during a cooldown
        self.fired_total: dict[str, int] = dict.fromkeys((r.name for r in self.rules), 0)

    def restore(self, saved: list[dict[str, Any]]) -> None:
        """Decisions kept from before a restart (oldest first): /v1/decisions shows them, ids go on
        from the newest, and each (rule, subject) cooldown runs on from its last decision (by the wall
        clock, the only clock a restart keeps), so a restart does not fire a screen twice."""
        now_m, now = self.monotonic(), self.clock()
        for j in saved:
            d = Decision(int(j["id"]), float(j["t"]), str(j["rule"]), str(j["kind"]), str(j["subject"]),
                         str(j["explanation"]), dict(j["inputs"]), list(j["actions"]))
            self.decisions.append(d)
            if any(r.name == d.rule for r in self.rules):
                self._last_fired[(d.rule, d.subject)] = now_m - max(0.0, now - d.t)
        if saved:
            self._ids = itertools.count(int(saved[-1]["id"]) + 1)

    # -- evaluation ----------------------------------------------------------------------------
    def on_vectors(self, recs: list[Rec]) -> list[Decision]:
        out = []
        for rule in self.rules:
            if isinstance(rule.when, EngagedWhen):
                for r in recs:
                    d = self._engaged(rule, rule.when, r)
                    if d is not None:
                        out.append(d)
        return out

    def tick(self) -> list[Decision]:
        out = []
        for rule in self.rules:
            w = rule.when
            d: Decision | None = None
            if isinstance(w, SlowTrafficWhen):
                d = self._slow(rule, w)
            elif isinstance(w, ShareWhen):
                d = self._share(rule, w)
            elif isinstance(w, LowConversionWhen):
                d = self._conversion(rule, w)
            elif isinstance(w, QueueWhen):
                d = self._queue(rule, w)
            if d is not None:
                out.append(d)
        self._forget_runs()
        return out

    def _engaged(self, rule: Rule, w: EngagedWhen, r: Rec) -> Decision | None:
        if r.zone != w.zone:
            return None
        key = (rule.name, r.session)
        run = self._runs.setdefault(key, _Run())
        if run.end is not None and r.t0 - run.end > w.max_gap_s:
            run.seconds, run.values = 0.0, []
        if r.engagement is None:
            run.end = r.t1 if run.seconds else None
            return None
        if r.engagement < w.min_engagement:
            run.seconds, run.end, run.values = 0.0, None, []
            return None
        run.seconds += max(0.0, r.t1 - r.t0)
        run.end = r.t1
        run.values.append(r.engagement)
        if run.fired or run.seconds < w.for_s:
            return None
        run.fired = True
        # no session token in a decision: outputs (screens, pagers, brokers) need the where, not the who
        inputs = {"device": r.device, "zone": w.zone, "engaged_s": round(run.seconds, 1),
                  "engagement_mean": round(float(np.mean(run.values)), 3), "windows": len(run.values),
                  "min_engagement": w.min_engagement, "for_s": w.for_s}
        why = (f"a visitor at {w.zone} (camera {r.device}) engaged {run.seconds:.0f} s with mean engagement "
               f"{inputs['engagement_mean']:.2f} >= {w.min_engagement} for >= {w.for_s:g} s")
        return self._fire(rule, w.zone, why, inputs)

    def _slow(self, rule: Rule, w: SlowTrafficWhen) -> Decision | None:
        if self.monotonic() - self.started < w.window_s:
            return None  # not observed a whole window yet: an empty start is not a slow hour
        now = self.clock()
        d = datetime.fromtimestamp(now)
        base = self.store.baseline(d.weekday(), d.hour, d.strftime("%Y-%m-%d"))
        if len(base) < w.min_samples:
            return None
        footfall = self.sales.has_lines and w.zone is None  # people in through the doors, not fragments
        if footfall:
            visitors, span = self.sales.footfall(now - w.window_s)
            span = max(span, float(w.window_s))
        else:
            visitors, span = self.store.visitors(now - w.window_s, w.zone), float(w.window_s)
        rate = visitors * 3600.0 / span
        threshold = float(np.percentile(np.asarray(base, dtype=float), w.percentile))
        if rate >= threshold:
            return None
        where = w.zone or "the store"
        day = d.strftime("%A")
        what = "people in through the entrances" if footfall else "sessions"
        inputs = {"visitors": visitors, "traffic": "footfall" if footfall else "sessions", "window_s": w.window_s,
                  "per_hour": round(rate, 1), "baseline_percentile": w.percentile,
                  "baseline_per_hour": round(threshold, 1), "baseline_samples": len(base), "weekday": day,
                  "hour": d.hour, "zone": w.zone}
        why = (f"traffic in {where}: {visitors} {what} in the last {span:.0f} s = {rate:.0f}/h, below "
               f"p{w.percentile:g} ({threshold:.0f}/h) of {len(base)} past {day}s {d.hour:02d}:00-{d.hour + 1:02d}:00")
        return self._fire(rule, w.zone or "store", why, inputs)

    def _share(self, rule: Rule, w: ShareWhen) -> Decision | None:
        signal = "satisfaction" if w.kind == "low_satisfaction" else "approach"
        per = self.store.per_session(self.clock() - w.over_s, w.zone, signal)
        if len(per) < w.min_visitors:
            return None
        below = sum(1 for vals in per.values() if float(np.mean(vals)) < w.below)
        share = below / len(per)
        if share < w.share:
            return None
        label = "dwell satisfaction" if signal == "satisfaction" else "approach/avoid"
        inputs = {"zone": w.zone, "visitors": len(per), "below": below, "share": round(share, 3),
                  "threshold": w.below, "min_share": w.share, "over_s": w.over_s, "signal": label}
        why = (f"{below} of {len(per)} visitors ({share:.0%}) in {w.zone} over the last {w.over_s} s had mean "
               f"{label} < {w.below:g} (rule: >= {w.share:.0%} of >= {w.min_visitors})")
        return self._fire(rule, w.zone, why, inputs)

    def _conversion(self, rule: Rule, w: LowConversionWhen) -> Decision | None:
        if not self.sales.has_lines:
            return None
        now = self.clock()
        d = datetime.fromtimestamp(now)
        base = self.sales.conversion_baseline(d.weekday(), d.hour, d.strftime("%Y-%m-%d"))
        if len(base) < w.min_samples:
            return None
        people, span = self.sales.footfall(now - w.window_s)
        span = max(span, 60.0)
        if people < w.min_footfall:
            return None
        rate = people * 3600.0 / span
        normal = None if w.footfall_percentile is None else float(np.percentile([f for f, _ in base], w.footfall_percentile))
        if normal is not None and rate < normal:
            return None  # a slow hour: that is slow_traffic's business, not a conversion problem
        sold = len(self.sales.transactions(now - span, w.zone))
        conversion = sold / people
        threshold = float(np.percentile([c for _, c in base], w.percentile))
        if conversion >= threshold:
            return None
        where = f"at {w.zone}" if w.zone else "in the store"
        day = d.strftime("%A")
        inputs = {"zone": w.zone, "footfall": people, "transactions": sold, "conversion": round(conversion, 3),
                  "window_s": round(span), "footfall_per_hour": round(rate, 1),
                  "footfall_normal_per_hour": None if normal is None else round(normal, 1),
                  "baseline_percentile": w.percentile,
                  "baseline_conversion": round(threshold, 3), "baseline_samples": len(base), "weekday": day,
                  "hour": d.hour}
        why = (f"conversion {where}: {sold} transactions for {people} people in = {conversion:.1%} over the last "
               f"{span / 60:.0f} min, below p{w.percentile:g} ({threshold:.1%}) of {len(base)} past {day}s "
               f"{d.hour:02d}:00-{d.hour + 1:02d}:00, "
               + (f"footfall {rate:.0f}/h (not compared)" if normal is None
                  else f"with footfall normal ({rate:.0f}/h >= {normal:.0f}/h)"))
        return self._fire(rule, w.zone or "store", why, inputs)

    def _queue(self, rule: Rule, w: QueueWhen) -> Decision | None:
        q = self.sales.queue(w.zone, self.clock() - w.over_s)
        long = w.max_length is not None and q["length_max"] is not None and q["length_max"] > w.max_length
        slow = w.max_wait_s is not None and q["wait_mean_s"] is not None and q["wait_mean_s"] > w.max_wait_s
        if not (long or slow):
            return None
        inputs = {"zone": w.zone, "over_s": w.over_s, "length_max": q["length_max"], "max_length": w.max_length,
                  "served": q["served"], "wait_mean_s": q["wait_mean_s"], "wait_max_s": q["wait_max_s"],
                  "max_wait_s": w.max_wait_s}
        parts = []
        if long:
            parts.append(f"up to {q['length_max']} people queueing > {w.max_length}")
        if slow:
            parts.append(f"the {q['served']} who left waited {q['wait_mean_s']:.0f} s on average > {w.max_wait_s:g} s")
        why = f"queue at {w.zone} over the last {w.over_s} s: {' and '.join(parts)}"
        return self._fire(rule, w.zone, why, inputs)

    def _fire(self, rule: Rule, subject: str, why: str, inputs: dict[str, Any]) -> Decision | None:
        now_m = self.monotonic()
        last = self._last_fired.get((rule.name, subject))
        if last is not None and now_m - last < rule.cooldown_s:
            self.suppressed += 1
            return None
        self._last_fired[(rule.name, subject)] = now_m
        self.fired_total[rule.name] += 1
        d = Decision(next(self._ids), self.clock(), rule.name, rule.when.kind, subject,
                     f"{rule.name}: {why}", inputs)
        self.decisions.append(d)
        return d

    def _forget_runs(self) -> None:
        # runs of sessions the store has forgotten (retention) go too
        for key in [k for k in self._runs if k[1] not in self.store.sessions]:
            del self._runs[key]

    def recent(self, since_id: int = 0, limit: int = 100) -> list[Decision]:
        return [d for d in self.decisions if d.id > since_id][:limit]
