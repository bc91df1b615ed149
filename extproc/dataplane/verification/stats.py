"""The statistics the verification rates and the δ rule read: Wilson and Beta bounds."""

from __future__ import annotations

import math
from functools import lru_cache

LEVEL = 0.95
"""One-sided confidence of the false-hit rate's upper bound (the Wilson gauge)."""
Z = 1.6448536269514722
"""The standard normal quantile at LEVEL (Wilson bound)."""


def wilson_upper(wrong: int, total: int) -> float:
    """The Wilson score upper bound (one-sided, LEVEL) of a rate seen as ``wrong`` in ``total``."""
    if total <= 0:
        return 1.0
    p = wrong / total
    z2 = Z * Z
    centre = p + z2 / (2 * total)
    spread = Z * math.sqrt(p * (1 - p) / total + z2 / (4 * total * total))
    return min(1.0, (centre + spread) / (1 + z2 / total))


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularized incomplete beta (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-12:
            break
    return h


def beta_cdf(x: float, a: float, b: float) -> float:
    """P(X ≤ x) for X ~ Beta(a, b) (the regularized incomplete beta function)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


@lru_cache(maxsize=8192)  # posteriors change only with outcomes: most calls repeat
def beta_upper(a: float, b: float, level: float = LEVEL) -> float:
    """The ``level`` quantile of Beta(a, b) (bisection: 50 steps resolve 1e-15)."""
    lo, hi = 0.0, 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        if beta_cdf(mid, a, b) < level:
            lo = mid
        else:
            hi = mid
    return hi
