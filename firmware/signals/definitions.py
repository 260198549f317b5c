"""The three behavioural indices as pure functions (see docs/signals.md for the full write-up).

They measure observable behaviour — position, motion, body orientation, stillness, time — and
nothing else. Units: distances in person heights (PH: the track's box height, or floor metres /
1.7 with a ground-plane calibration), speeds in PH per second, times in seconds.
"""

from __future__ import annotations

import math

import numpy as np

from .orientation import orientation_score  # noqa: F401  (Ō is defined with the orientation rules)

# -- thresholds (from measurements on real footage; see docs/signals.md) -------------------------
STILL_PH_S = 0.15  # below: standing (jitter alone sums to ~0.17 PH/s of steps on vtest)
SLOW_PH_S = 0.5  # at and above: walking; stillness S is 0
WALK_PH_S = 0.75  # "walking speed" for abrupt exits
NEAR_PH = 0.6  # ~1 m: proximity P is 1 at or below
FAR_PH = 1.8  # ~3 m: proximity P is 0 at or beyond
ORIENT_TAU_S = 3.0  # oriented time constant: T = 1 - exp(-t / 3 s)
RADIAL_SCALE_PH_S = 0.3  # approach/avoid = tanh(radial speed / 0.3 PH/s)
MIN_STAY_S = 2.0  # shorter stays get no dwell satisfaction

EXIT_SCORES = {"calm": 1.0, "truncated": 0.0, "unknown": 0.0, "veer": -0.5, "abrupt": -1.0, "wander": -1.0, "pass": 0.0}
PASS_SLOW_SHARE = 0.2  # a stay with less than this share of its time below SLOW_PH_S was walked through


def clip01(x: float) -> float:
    return 0.0 if not x > 0 else (1.0 if x > 1 else float(x))


def stillness(speed: float) -> float:
    """S in [0, 1]: 1 when standing still, 0 at walking pace."""
    return clip01((SLOW_PH_S - speed) / (SLOW_PH_S - STILL_PH_S))


def proximity(distance: float) -> float:
    """P in [0, 1]: 1 within ~1 m of the focus point, 0 beyond ~3 m."""
    return clip01((FAR_PH - distance) / (FAR_PH - NEAR_PH))


def oriented_time(seconds: float) -> float:
    """T in [0, 1): saturating credit for time spent inside the zone oriented toward the focus."""
    return 1.0 - math.exp(-max(seconds, 0.0) / ORIENT_TAU_S)


def engagement(orient: float, speed: float, distance: float, oriented_s: float, inside: bool) -> float:
    """Engagement intensity E = Ō · (0.4 S + 0.3 P + 0.3 T) inside an attraction zone, else 0."""
    if not inside:
        return 0.0
    return clip01(orient * (0.4 * stillness(speed) + 0.3 * proximity(distance) + 0.3 * oriented_time(oriented_s)))


def approach(radial_speed: float, miss: float = 0.0) -> float:
    """Approach/avoid A = tanh(v_r / 0.3 PH/s) · P(miss): + closing in on the focus point, − moving
    away from it. ``miss`` is how close the straight line of the motion passes the focus point:
    walking at the display (or straight away from it) counts fully, passing it by tangentially
    (the line misses by more than ~3 m) counts nothing, in between by the proximity ramp P."""
    return float(math.tanh(radial_speed / RADIAL_SCALE_PH_S) * proximity(miss))


def closest_approach(d: np.ndarray, v: np.ndarray) -> tuple[float, float]:
    """For relative position d (person − focus) and velocity v: time to closest approach t*
    (seconds, may be negative = already past) and the miss distance |d + v t*|."""
    vv = float(v @ v)
    if vv < 1e-12:
        return math.inf, float(np.hypot(*d))
    t_star = -float(d @ v) / vv
    return t_star, float(np.hypot(*(d + v * t_star)))


def dwell_satisfaction(dwell_s: float, typical_s: float, exit_pattern: str) -> float:
    """Dwell satisfaction Q = 0.5 z + 0.5 x in [−1, 1]; a stay-outcome index, not a feeling.

    z = tanh(log2(dwell / typical stay in this zone)): longer than usual > 0, shorter < 0;
    x = the exit pattern: calm +1, truncated/unknown 0, veer −0.5, abrupt or wander −1.
    A walk through the zone ("pass": never slowed to a stand) is no stay to judge: Q = 0. A stay
    cut short by losing the track ("truncated") lasted at least ``dwell_s``: only a z above 0
    says anything."""
    if exit_pattern == "pass":
        return 0.0
    z = math.tanh(math.log2(max(dwell_s, 1e-3) / max(typical_s, 1e-3)))
    if exit_pattern == "truncated":
        z = max(z, 0.0)
    return float(min(max(0.5 * z + 0.5 * EXIT_SCORES[exit_pattern], -1.0), 1.0))


def lsq_velocity(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Least-squares slope of positions p (n, k) over times t (n,): units per second."""
    if len(t) < 2:
        return np.zeros(p.shape[1])
    tc = t - t.mean()
    denom = float(tc @ tc)
    if denom < 1e-9:
        return np.zeros(p.shape[1])
    return (tc @ (p - p.mean(axis=0))) / denom


def walked_through(t: np.ndarray, p: np.ndarray, step_s: float = 0.5) -> bool:
    """True when a path (times t (n,), positions p (n, 2) in PH) spent less than PASS_SLOW_SHARE
    of its time below SLOW_PH_S, speed measured over steps of at least ``step_s``."""
    slow = total = 0.0
    i = 0
    for j in range(1, len(t)):
        dt = float(t[j] - t[i])
        if dt < step_s and j < len(t) - 1:
            continue
        if dt > 0:
            total += dt
            if float(np.hypot(*(p[j] - p[i]))) / dt < SLOW_PH_S:
                slow += dt
        i = j
    return total > 0 and slow < PASS_SLOW_SHARE * total


def straightness(p: np.ndarray) -> tuple[float, float]:
    """(net displacement / path length, path length) of a polyline p (n, 2)."""
    if len(p) < 2:
        return 1.0, 0.0
    steps = np.diff(p, axis=0)
    path = float(np.hypot(steps[:, 0], steps[:, 1]).sum())
    net = float(np.hypot(*(p[-1] - p[0])))
    return (net / path if path > 1e-9 else 1.0), path


def reversals(p: np.ndarray, min_turn_deg: float = 120.0, min_step: float = 0.25) -> int:
    """Number of heading changes sharper than ``min_turn_deg`` along p, after resampling the path
    into steps of ``min_step`` (so jitter does not count as turning)."""
    if len(p) < 3:
        return 0
    pts = [p[0]]
    for q in p[1:]:
        if np.hypot(*(q - pts[-1])) >= min_step:
            pts.append(q)
    if len(pts) < 3:
        return 0
    d = np.diff(np.array(pts), axis=0)
    h = d / np.maximum(np.hypot(d[:, 0], d[:, 1])[:, None], 1e-9)
    cos_turn = (h[1:] * h[:-1]).sum(axis=1)
    return int((cos_turn < math.cos(math.radians(min_turn_deg))).sum())
