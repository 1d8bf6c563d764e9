"""Small statistics without SciPy: Student-t quantiles and mean ± confidence intervals (a leaf module)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["mean_ci", "paired_difference", "student_t_quantile"]


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """Mean, sample std and the Student-t interval of the finite values (``ci_low``, ``ci_high``, ``n``)."""
    data = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    n = int(data.size)
    if n == 0:
        return {"mean": math.nan, "std": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0}
    mean = float(data.mean())
    if n < 2:
        return {"mean": mean, "std": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": n}
    std = float(data.std(ddof=1))
    half = student_t_quantile(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half, "n": n}


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95, *,
                      resamples: int = 20_000, seed: int = 0) -> dict[str, float]:
    """Paired comparison of ``a`` and ``b`` (the same prompt and seed under two settings): the mean of ``a - b``
    with its Student-t interval, and the two-sided p-value of the sign-flip (paired permutation) test of "no
    difference" — exact over all ``2^n`` sign patterns for ``n <= 16``, otherwise ``resamples`` random patterns
    (seeded, with the +1 correction). Pairs where either value is missing are dropped. ``wins`` / ``losses`` /
    ``ties`` count pairs with ``a > b`` / ``a < b`` / ``a == b``."""
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]
    diff = np.array([x - y for x, y in pairs], dtype=np.float64)
    out = mean_ci(diff.tolist(), confidence)
    out.update(wins=int((diff > 0).sum()), losses=int((diff < 0).sum()), ties=int((diff == 0).sum()))
    n = diff.size
    if n == 0:
        out["p_value"] = math.nan
        return out
    observed = abs(diff.sum())
    if n <= 16:
        signs = ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1) * 2 - 1
        sums = np.abs(signs @ diff)
        out["p_value"] = float(np.mean(sums >= observed - 1e-12 * max(1.0, observed)))
    else:
        rng = np.random.default_rng(seed)
        signs = rng.choice((-1.0, 1.0), size=(resamples, n))
        extreme = int((np.abs(signs @ diff) >= observed - 1e-12 * max(1.0, observed)).sum())
        out["p_value"] = (extreme + 1) / (resamples + 1)
    return out


def student_t_quantile(p: float, df: float) -> float:
    """Quantile of Student's t distribution (no SciPy): bisection on the CDF, which is the regularised incomplete
    beta function evaluated by its continued fraction (Lentz's method)."""
    if not 0 < p < 1 or df <= 0:
        raise ValueError(f"need 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -student_t_quantile(1 - p, df)
    low, high = 0.0, 1.0
    while _student_t_cdf(high, df) < p:
        high *= 2
    for _ in range(200):
        middle = (low + high) / 2
        if _student_t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
        if high - low < 1e-12 * max(1.0, high):
            break
    return (low + high) / 2


def _student_t_cdf(t: float, df: float) -> float:
    tail = 0.5 * _regularised_incomplete_beta(df / (df + t * t), df / 2, 0.5)
    return 1 - tail if t >= 0 else tail


def _regularised_incomplete_beta(x: float, a: float, b: float) -> float:
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    if x > (a + 1) / (a + b + 2):  # the continued fraction converges fast only below this point
        return 1 - _regularised_incomplete_beta(1 - x, b, a)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    return math.exp(log_front) * _beta_continued_fraction(x, a, b) / a


def _beta_continued_fraction(x: float, a: float, b: float) -> float:
    tiny = 1e-300

    def guard(value: float) -> float:
        return value if abs(value) > tiny else tiny

    c, d = 1.0, 1 / guard(1 - (a + b) * x / (a + 1))
    result = d
    for m in range(1, 500):
        # even step of the continued fraction
        numerator = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1 / guard(1 + numerator * d)
        c = guard(1 + numerator / c)
        result *= d * c
        # odd step
        numerator = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1 / guard(1 + numerator * d)
        c = guard(1 + numerator / c)
        delta = d * c
        result *= delta
        if abs(delta - 1) < 1e-15:
            break
    return result
