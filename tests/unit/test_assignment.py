"""The tracker's linear assignment (lap's Jonker-Volgenant) finds the same optimum as scipy's
linear_sum_assignment (maximum total similarity over allowed pairs), on random rectangular
similarity matrices with gated (-inf) and below-threshold pairs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from firmware.tracking.tracker import _assign


def _scipy_assign(score: np.ndarray, min_score: float) -> list[tuple[int, int]]:
    """The maximum-weight matching over allowed pairs: a forbidden pair costs 0, as leaving both unmatched."""
    ok = np.isfinite(score) & (score >= min_score)
    rows, cols = linear_sum_assignment(np.where(ok, -score, 0.0))
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if ok[r, c]]


@pytest.mark.parametrize("seed", range(300))
def test_same_optimum_as_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, m = int(rng.integers(0, 9)), int(rng.integers(0, 9))
    score = rng.uniform(-1.0, 1.0, size=(n, m))
    score[rng.random((n, m)) < 0.3] = -np.inf  # gated pairs
    pairs, un_t, un_d = _assign(score, 0.2)
    want = _scipy_assign(score, 0.2) if n and m else []
    assert sum(score[r, c] for r, c in pairs) == pytest.approx(sum(score[r, c] for r, c in want))
    assert sorted(un_t + [r for r, _ in pairs]) == list(range(n))
    assert sorted(un_d + [c for _, c in pairs]) == list(range(m))
    assert all(score[r, c] >= 0.2 for r, c in pairs)
