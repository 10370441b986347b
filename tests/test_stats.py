"""stars_jax.stats against scipy's own tests, hand-worked Holm and a simulated power."""

import numpy as np
import pytest
from scipy import stats as sp

from stars_jax import stats


def test_paired_p_is_scipys_paired_t_test():
    rng = np.random.default_rng(0)
    a, b = rng.normal(70, 3, 10), rng.normal(71, 3, 10)
    assert stats.paired_p(b - a) == pytest.approx(sp.ttest_rel(b, a).pvalue, rel=1e-12)
    assert stats.paired_p([1.0, 1.0, 1.0]) == 0.0 and stats.paired_p([0.0, 0.0]) == 1.0
    assert np.isnan(stats.paired_p([2.0]))


def test_holm_by_hand():
    # Sorted 0.01, 0.02, 0.04 of m = 3: 3 * 0.01, max(0.03, 2 * 0.02), max(0.04, 1 * 0.04),
    # returned in the input order; a nan does not count towards m.
    assert stats.holm([0.04, 0.01, float("nan"), 0.02]) == pytest.approx(
        [0.04, 0.03, float("nan"), 0.04], nan_ok=True
    )
    # Step-down monotonicity: a larger raw p never gets a smaller adjusted one; capped at 1.
    assert stats.holm([0.5, 0.3, 0.02]) == pytest.approx([0.6, 0.6, 0.06])
    assert stats.holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])


def test_mde_has_80_percent_power_by_simulation():
    sd, n = 2.0, 8
    mde = stats.min_detectable_effect(sd, n)
    assert stats.power(mde, sd, n) == pytest.approx(0.8, abs=1e-6)
    # Large-sample check: near (z_0.975 + z_0.8) * sd / sqrt(n), a little above it (t tails).
    normal = (sp.norm.ppf(0.975) + sp.norm.ppf(0.8)) * sd / np.sqrt(n)
    assert normal < mde < 1.25 * normal
    big = stats.min_detectable_effect(sd, 400)
    assert big == pytest.approx((sp.norm.ppf(0.975) + 0.8416) * sd / 20, rel=0.01)
    # Simulated: paired differences with true mean = MDE are detected in ~80 % of studies.
    rng = np.random.default_rng(1)
    d = rng.normal(mde, sd, (20000, n))
    t = d.mean(1) / (d.std(1, ddof=1) / np.sqrt(n))
    detected = np.abs(t) > sp.t.ppf(0.975, n - 1)
    assert detected.mean() == pytest.approx(0.8, abs=0.015)
    assert np.isnan(stats.min_detectable_effect(0.0, 8)) and np.isnan(
        stats.min_detectable_effect(1, 1)
    )
