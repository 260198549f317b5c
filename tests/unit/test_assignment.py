"""The tracker's linear assignment (lap's Jonker-Volgenant, with a shortcut when every row's best
pair is its own) finds the same optimum as scipy's linear_sum_assignment: the maximum of
sum(sim - min_sim) over allowed pairs (ByteTrack's cost 1 - sim with the unmatched cost at
1 - min_sim), for every allowed pair however low, negative similarities included, with gated
(-inf) pairs never matched, and a per-row handicap (bias) that changes who wins a contested
column but never whether an allowed pair can be matched."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from firmware.tracking.tracker import _assign


def _scipy_assign(score: np.ndarray, allowed: np.ndarray, min_score: float) -> list[tuple[int, int]]:
    """The maximum-weight matching with weights sim - min_score over allowed pairs (a forbidden
    pair weighs 0, as leaving both unmatched)."""
    rows, cols = linear_sum_assignment(np.where(allowed, -(score - min_score), 0.0))
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if allowed[r, c]]


@pytest.mark.parametrize("min_score", [-1.0, -0.3, 0.0, 0.2, 0.5])
@pytest.mark.parametrize("seed", range(60))
def test_same_optimum_as_scipy(seed: int, min_score: float) -> None:
    rng = np.random.default_rng(seed)
    n, m = int(rng.integers(0, 9)), int(rng.integers(0, 9))
    score = rng.uniform(-1.0, 1.0, size=(n, m))
    score[rng.random((n, m)) < 0.3] = -np.inf  # gated pairs
    bias = -rng.choice([0.0, 0.1], size=n) if seed % 2 and n else None
    allowed = np.isfinite(score) & (score >= min_score)
    pairs, un_t, un_d = _assign(score, min_score, bias=bias)
    # with a bias, the optimum is that of sim + bias over the same allowed pairs, every allowed
    # pair weighing at least 0 (the floor moves down with the largest handicap)
    ranked = score if bias is None else score + bias[:, None]
    floor = min_score if bias is None else min_score + float(bias.min())
    want = _scipy_assign(ranked, allowed, floor) if n and m else []
    assert sum(ranked[r, c] - floor for r, c in pairs) == pytest.approx(sum(ranked[r, c] - floor for r, c in want))
    assert sorted(un_t + [r for r, _ in pairs]) == list(range(n))
    assert sorted(un_d + [c for _, c in pairs]) == list(range(m))
    assert all(allowed[r, c] for r, c in pairs)
    assert len({c for _, c in pairs}) == len(pairs)


def test_every_allowed_pair_can_be_matched_however_low() -> None:
    """A lone pair the gate allows is matched even at a negative similarity (boxes that do not
    overlap after a gap): leaving both unmatched is never better than an allowed pair."""
    for sim in (-0.99, -0.5, -0.01, 0.0, 0.3):
        pairs, un_t, un_d = _assign(np.array([[sim]]), -1.0)
        assert pairs == [(0, 0)] and not un_t and not un_d


def test_a_better_pair_is_not_traded_for_two_poor_ones() -> None:
    """Track 0 overlaps detection 0 well (0.9) and detection 1 barely (0.05); track 1 overlaps only
    detection 0, poorly (0.1). Two poor pairs (0.15) do not beat one good one (0.9) at a minimum
    of 0; at a minimum of -1 every pair is worth 1 more than its similarity, and two pairs win:
    why the tracker's association rounds use a minimum near the similarities it trusts."""
    sim = np.array([[0.9, 0.05], [0.1, -np.inf]])
    assert _assign(sim, 0.0)[0] == [(0, 0)]
    assert sorted(_assign(sim, -1.0)[0]) == [(0, 1), (1, 0)]
