"""The decision engine: rules (host_tools/gateway/config.py) over the store's vectors, each
decision with its explanation (which rule, which inputs, which threshold), a cooldown per rule and
subject so a screen is not spammed, and the actions handed to the outputs.

Rule kinds:
- ``engaged``: one session (a board's random token) at zone Z with engagement >= min for >= for_s of
  consecutive windows (gaps up to max_gap_s; windows with a null engagement neither add nor break).
  Evaluated as vectors arrive; fires at most once per session, and per zone at most once a cooldown.
- ``slow_traffic``: distinct sessions over the last window_s, as a per-hour rate, below the
  ``percentile`` of the same weekday and hour in the history (>= min_samples past days).
- ``low_satisfaction`` / ``avoidance``: of the sessions with a value in zone Z over the last over_s
  (>= min_visitors), at least ``share`` have a mean dwell satisfaction / approach-avoid below ``below``.
The last three are evaluated every tick (1 s).
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

from .config import EngagedWhen, Rule, ShareWhen, SlowTrafficWhen
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
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.rules = [r for r in rules if r.enabled]
        self.store = store
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
        visitors = self.store.visitors(now - w.window_s, w.zone)
        rate = visitors * 3600.0 / w.window_s
        threshold = float(np.percentile(np.asarray(base, dtype=float), w.percentile))
        if rate >= threshold:
            return None
        where = w.zone or "the store"
        day = d.strftime("%A")
        inputs = {"visitors": visitors, "window_s": w.window_s, "per_hour": round(rate, 1),
                  "baseline_percentile": w.percentile, "baseline_per_hour": round(threshold, 1),
                  "baseline_samples": len(base), "weekday": day, "hour": d.hour, "zone": w.zone}
        why = (f"traffic in {where}: {visitors} sessions in the last {w.window_s} s = {rate:.0f}/h, below "
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
