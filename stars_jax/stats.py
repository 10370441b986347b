"""Paired statistics for comparing methods over seeds (``stars_jax.sweep``).

A comparison is a variant against the reference on the seeds both finished: the per-seed
differences ``d``. For each: the mean with its two-sided Student-t interval, the paired
t-test's p-value, and the minimum detectable effect (the smallest true mean difference the
same test would find with 80 % power, given ``d``'s observed SD and n). Over a sweep's
comparisons the p-values are Holm-corrected (family-wise error at 5 %), since a sweep reads
many intervals at once.
"""

from __future__ import annotations

import numpy as np
from scipy import integrate, optimize, stats

ALPHA = 0.05
POWER = 0.8


def interval(x, level=0.95) -> tuple[float, float, float]:
    """Mean of x and its two-sided Student-t confidence interval (nan bounds for n < 2)."""
    x = np.asarray(x, np.float64)
    mean = float(x.mean()) if x.size else float("nan")
    if x.size < 2:
        return mean, float("nan"), float("nan")
    half = stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
    return mean, mean - half, mean + half


def paired_p(d) -> float:
    """Two-sided p-value of the one-sample t-test of mean(d) = 0 (nan for n < 2; 0 or 1 when
    every difference is the same, nonzero or zero)."""
    d = np.asarray(d, np.float64)
    if d.size < 2:
        return float("nan")
    sd = d.std(ddof=1)
    if sd == 0:
        return 1.0 if d.mean() == 0 else 0.0
    t = d.mean() / (sd / np.sqrt(d.size))
    return float(2 * stats.t.sf(abs(t), d.size - 1))


def power(effect: float, sd: float, n: int, alpha=ALPHA) -> float:
    """Power of the two-sided paired t-test at level ``alpha`` for a true mean difference
    ``effect`` with per-pair SD ``sd`` over ``n`` pairs: P(|Z + nc| > c sqrt(V / df)) with
    Z normal and V chi-square (the noncentral t, integrated over V; scipy's ``nct`` turns nan
    far out in its tail)."""
    df, nc = n - 1, effect / (sd / np.sqrt(n))
    crit = stats.t.ppf(1 - alpha / 2, df)

    def given_v(v):
        c = crit * np.sqrt(v / df)
        return (stats.norm.sf(c - nc) + stats.norm.cdf(-c - nc)) * stats.chi2.pdf(v, df)

    lo, hi = stats.chi2.ppf([1e-12, 1 - 1e-12], df)  # where V's mass is, for quad to find
    return float(integrate.quad(given_v, lo, hi, limit=200)[0])


def min_detectable_effect(sd: float, n: int, alpha=ALPHA, target=POWER) -> float:
    """The smallest mean difference the paired t-test detects with power ``target`` (nan for
    n < 2 or sd = 0): what a comparison this size could have seen."""
    if n < 2 or not sd > 0:
        return float("nan")
    # Power rises with the effect: bracket the root from the normal approximation upwards.
    hi = (stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(target)) * sd / np.sqrt(n)
    for _ in range(60):
        if power(hi, sd, n, alpha) >= target:
            break
        hi *= 1.5
    return float(optimize.brentq(lambda e: power(e, sd, n, alpha) - target, 0.0, hi, xtol=1e-10))


def holm(p_values) -> list[float]:
    """Holm's step-down adjusted p-values, in the given order (nan entries stay nan and do not
    count towards the family)."""
    p = np.asarray(p_values, np.float64)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    order = idx[np.argsort(p[idx], kind="stable")]
    m, running = len(order), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return [float(v) for v in out]
