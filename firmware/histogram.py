"""A cumulative histogram for Prometheus: fixed buckets (upper bounds, base units), counts since
start, and the sum; cheap enough to observe every frame (one bisect and two additions)."""

from __future__ import annotations

import bisect
from collections.abc import Sequence


class Histogram:
    def __init__(self, buckets: Sequence[float]) -> None:
        if list(buckets) != sorted(set(buckets)) or not buckets:
            raise ValueError("histogram buckets must be increasing and unique")
        self.buckets = tuple(float(b) for b in buckets)
        self._counts = [0] * (len(self.buckets) + 1)  # per bucket, the last one above every bound
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self.buckets, value)] += 1
        self.count += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        """(le, observations <= le) for every bucket, then ("+Inf", count): HistogramMetricFamily's buckets."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip(self.buckets, self._counts, strict=False):
            running += n
            out.append((f"{bound:g}", float(running)))
        out.append(("+Inf", float(self.count)))
        return out
