"""analysis._intervals: coverage by simulation with a known truth, and why BCa is refused below 5.

Every coverage check simulates designs whose true effect is known and counts how often the
nominal 95% interval contains it; the tolerance is 3 binomial standard deviations of that count
(a fixed generator seed makes each check deterministic).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as st

from analysis._intervals import _bca
from analysis.stats import (
    MIN_BOOTSTRAP_N,
    bca_interval,
    d_z_interval,
    partial_eta_sq_interval,
    t_interval,
)


def _paired_differences(rng, sims: int, n: int, delta: float) -> np.ndarray:
    """Per-seed differences of ``sims`` paired designs with n seeds, shape (sims, n).

    Each seed has its own offset shared by both arms (what pairing removes), so
    value - baseline = delta + noise, whatever the offsets.
    """
    offset = rng.normal(0.0, 3.0, size=(sims, n))
    baseline = offset + rng.normal(0.0, 0.4, size=(sims, n))
    value = offset + delta + rng.normal(0.0, 0.4, size=(sims, n))
    return value - baseline


def _within(covered: float, sims: int, nominal: float = 0.95) -> bool:
    return abs(covered - nominal) <= 3 * np.sqrt(nominal * (1 - nominal) / sims)


@pytest.mark.parametrize("n", [2, 3, 5])
def test_paired_t_interval_covers_at_the_nominal_rate_at_small_n(n):
    sims, delta = 2000, 0.25
    d = _paired_differences(np.random.default_rng(100 + n), sims, n, delta)
    low, high, df = t_interval(d)
    assert (df == n - 1).all()
    covered = float(np.mean((low <= delta) & (delta <= high)))
    assert _within(covered, sims), covered
    # the same interval as scipy's paired t-test for a few of them
    for i in range(3):
        ref = st.ttest_1samp(d[i], 0.0).confidence_interval(0.95)
        assert (low[i], high[i]) == pytest.approx((ref.low, ref.high), rel=1e-12)


@pytest.mark.parametrize(("n", "at_most"), [(2, 0.65), (3, 0.80)])
def test_bca_at_two_or_three_seeds_covers_far_below_nominal(n, at_most):
    # Why the report refuses bootstrap CIs below 5 seeds: on the same kind of designs as above, a
    # nominal 95% BCa interval of the mean covers the truth about 51% of the time at n = 2 (it
    # can never reach beyond the two values) and about 71% at n = 3.
    sims, delta = 2000, 0.25
    d = _paired_differences(np.random.default_rng(200 + n), sims, n, delta)
    low, high = _bca(d, n_boot=1000, seed=0, ci=0.95, axis=-1, floor=2)
    covered = float(np.mean((low <= delta) & (delta <= high)))
    assert covered < at_most, covered
    t_low, t_high, _ = t_interval(d)
    assert float(np.mean((t_low <= delta) & (delta <= t_high))) > covered + 0.1


def test_bca_interval_refuses_fewer_than_five_values():
    assert MIN_BOOTSTRAP_N == 5
    for n in (2, 3, 4):
        with pytest.raises(ValueError, match=rf"at least 5 values, got n={n}.*t-interval"):
            bca_interval(np.arange(float(n)), n_boot=100, seed=0)
    low, high = bca_interval(np.arange(5.0), n_boot=500, seed=0)
    assert low < 2.0 < high


@pytest.mark.parametrize("n", [2, 4])
def test_d_z_interval_covers_the_true_standardised_effect(n):
    # d_z = mean / sd of the differences; the truth is delta / sd(noise of a difference).
    sims, delta = 1000, 0.25
    sd = np.sqrt(2) * 0.4
    d = _paired_differences(np.random.default_rng(300 + n), sims, n, delta)
    d_z = d.mean(axis=1) / d.std(axis=1, ddof=1)
    bounds = np.array([d_z_interval(z, n) for z in d_z])
    assert np.isfinite(bounds).all()
    covered = float(np.mean((bounds[:, 0] <= delta / sd) & (delta / sd <= bounds[:, 1])))
    assert _within(covered, sims), covered


def test_d_z_interval_is_the_noncentral_t_inversion():
    low, high = d_z_interval(1.2, 4)
    t = 1.2 * np.sqrt(4)
    assert st.nct.cdf(t, 3, low * np.sqrt(4)) == pytest.approx(0.975, abs=1e-9)
    assert st.nct.cdf(t, 3, high * np.sqrt(4)) == pytest.approx(0.025, abs=1e-9)
    # far in the tails scipy's nct.cdf returns NaN: the bracket must still find the bounds
    low, high = d_z_interval(25.0, 2)
    assert 0 < low < 25.0 < high and np.isfinite(high)
    assert np.isnan(d_z_interval(0.5, 1)).all()


@pytest.mark.parametrize(("df1", "df2", "lam"), [(2, 10, 8.0), (1, 4, 3.0)])
def test_partial_eta_squared_interval_covers_the_noncentrality(df1, df2, lam):
    # An ANOVA term's F follows the noncentral F(df1, df2, lambda); the interval inverts it for
    # lambda, then maps lambda -> lambda / (lambda + df1 + df2 + 1) (monotone, so the coverage
    # of the eta^2 interval is the coverage of the lambda interval).
    sims = 1000
    f = st.ncf.rvs(df1, df2, lam, size=sims, random_state=np.random.default_rng(17))
    total = df1 + df2 + 1
    truth = lam / (lam + total)
    bounds = np.array([partial_eta_sq_interval(x, df1, df2) for x in f])
    assert ((bounds >= 0) & (bounds <= 1)).all()
    covered = float(np.mean((bounds[:, 0] <= truth) & (truth <= bounds[:, 1])))
    assert _within(covered, sims), covered


def test_partial_eta_squared_interval_bounds():
    # an F too small for any positive lambda gives [0, 0]; a lower bound of 0 when F is modest
    assert partial_eta_sq_interval(0.01, 2, 10) == (0.0, 0.0)
    low, high = partial_eta_sq_interval(2.0, 2, 10)
    assert low == 0.0 and 0 < high < 1
    # at the lower bound the observed F sits at the 97.5th percentile of the noncentral F
    low, high = partial_eta_sq_interval(30.0, 2, 10)
    lam_low = low * 13 / (1 - low)
    assert st.ncf.cdf(30.0, 2, 10, lam_low) == pytest.approx(0.975, abs=1e-8)


# --- extreme inputs: huge F or t, zero variance, n = 2 ---------------------------------------------
# Each bound is checked against a cdf that shares no code with analysis._intervals: scipy's where
# scipy computes one, else a high-precision mpmath integral (the noncentral F with df1 = 1, whose
# numerator is exactly (Z + sqrt(lambda))^2, and the noncentral t).


def _ncf_cdf_df1_one(f, df2, lam):
    """df1 = 1: X1 = (Z + sqrt(lam))^2 exactly, so P(F' <= f) = E_Z[P(X2 >= (Z + sqrt lam)^2 df2 / f)]."""
    import mpmath as mp

    mp.mp.dps = 40
    root = mp.sqrt(mp.mpf(lam))

    def inner(z):
        y = (z + root) ** 2 * df2 / mp.mpf(f)
        return mp.npdf(z) * mp.gammainc(mp.mpf(df2) / 2, y / 2, mp.inf, regularized=True)  # chi2 sf

    return float(mp.quad(inner, [-40, -10, 0, 10, 40]))


def _nct_cdf_mpmath(t, df, nc):
    """P((Z + nc) / sqrt(V / df) <= t) = int chi2_df(v) Phi(t sqrt(v / df) - nc) dv, t > 0, in mpmath."""
    import mpmath as mp

    mp.mp.dps = 40
    t, df, nc = mp.mpf(t), mp.mpf(df), mp.mpf(nc)

    def inner(v):
        density = v ** (df / 2 - 1) * mp.exp(-v / 2) / (2 ** (df / 2) * mp.gamma(df / 2))
        return density * mp.ncdf(t * mp.sqrt(v / df) - nc)

    step = df * (nc / t) ** 2  # where Phi steps from 0 to 1
    width = 2 * mp.sqrt(step * df) / t  # dv per unit of Phi's argument
    cuts = [mp.mpf(0)] + [step + k * width for k in (-40, -8, -2, 0, 2, 8, 40) if step + k * width > 0]
    return float(mp.quad(inner, [*cuts, mp.inf]))


def test_brute_force_references_agree_with_scipy_where_scipy_is_accurate():
    assert _ncf_cdf_df1_one(30.0, 3, 40.0) == pytest.approx(st.ncf.cdf(30.0, 1, 3, 40.0), abs=1e-12)
    assert _nct_cdf_mpmath(3.0, 2, 2.0) == pytest.approx(st.nct.cdf(3.0, 2, 2.0), abs=1e-12)


@pytest.mark.parametrize(("f", "df1", "df2"), [(1e4, 3, 3), (1e7, 1, 2), (1e8, 3, 6), (1e8, 2, 1)])
def test_partial_eta_squared_interval_at_huge_f_inverts_the_noncentral_f(f, df1, df2):
    # a design with almost no residual variance: F in the millions or billions (the former code
    # raised "brentq failed to converge" or returned NaN cdfs as 0 and so a wrong upper bound)
    from analysis._intervals import noncentrality_interval

    lam_low, lam_high = noncentrality_interval(f, df1, df2)
    assert 0 < lam_low < lam_high < np.inf
    assert st.ncf.cdf(f, df1, df2, lam_low) == pytest.approx(0.975, abs=1e-6)
    assert st.ncf.cdf(f, df1, df2, lam_high) == pytest.approx(0.025, abs=1e-6)
    low, high = partial_eta_sq_interval(f, df1, df2)
    total = df1 + df2 + 1
    assert (low, high) == pytest.approx((lam_low / (lam_low + total), lam_high / (lam_high + total)))
    assert 0 < low < high < 1


@pytest.mark.parametrize("f", [1e12, 1e15])
def test_noncentrality_interval_beyond_scipy(f):
    # lambda ~ 1e12 and up: scipy's ncf.cdf is NaN here; df1 = 1 has an exact 1-D integral
    assert np.isnan(st.ncf.cdf(f, 1, 3, f * 5))
    from analysis._intervals import noncentrality_interval

    lam_low, lam_high = noncentrality_interval(f, 1, 3)
    assert _ncf_cdf_df1_one(f, 3, lam_low) == pytest.approx(0.975, abs=1e-6)
    assert _ncf_cdf_df1_one(f, 3, lam_high) == pytest.approx(0.025, abs=1e-6)


def test_partial_eta_squared_interval_boundaries():
    # no residual variance at all (F = inf): partial eta^2 is exactly 1, and so is its interval;
    # F = 0 is below every quantile: [0, 0]; F = 1e300 does not overflow
    assert partial_eta_sq_interval(np.inf, 2, 3) == (1.0, 1.0)
    assert partial_eta_sq_interval(0.0, 2, 3) == (0.0, 0.0)
    low, high = partial_eta_sq_interval(1e300, 2, 3)
    assert low == pytest.approx(1.0) and high == pytest.approx(1.0) and low <= high <= 1.0
    assert np.isnan(partial_eta_sq_interval(np.nan, 2, 3)).all()
    assert np.isnan(partial_eta_sq_interval(1.0, 2, 0)).all()


@pytest.mark.parametrize(("d_z", "n"), [(30.0, 2), (30.0, 3), (1e3, 2), (1e6, 4), (-2e5, 2), (1e9, 3)])
def test_d_z_interval_at_huge_t_inverts_the_noncentral_t(d_z, n):
    # paired effects here reach d_z ~ 30 (t ~ 42 at n = 2); a near-constant difference gives
    # t ~ 1e9, where scipy's nct.cdf is NaN (and ~1e-7 off already at t = 1e5)
    low, high = d_z_interval(d_z, n)
    assert np.isfinite([low, high]).all() and low < d_z < high
    t, root = abs(d_z) * np.sqrt(n), np.sqrt(n)
    # the bounds of -d_z are minus those of d_z (symmetry), so check on |d_z|
    lo, hi = (-high, -low) if d_z < 0 else (low, high)
    assert _nct_cdf_mpmath(t, n - 1, lo * root) == pytest.approx(0.975, abs=1e-6)
    assert _nct_cdf_mpmath(t, n - 1, hi * root) == pytest.approx(0.025, abs=1e-6)


def test_intervals_at_zero_variance_and_two_values():
    # constant values: t-interval [c, c]; n = 2: the t-interval of scipy's one-sample test
    low, high, df = t_interval(np.array([[3.0, 3.0, 3.0], [1.0, 2.0, 4.0]]))
    assert (low[0], high[0]) == (3.0, 3.0) and df.tolist() == [2.0, 2.0]
    pair = np.array([1e-12, 2e-12])
    low, high, _ = t_interval(pair)
    ref = st.ttest_1samp(pair, 0.0).confidence_interval(0.95)
    assert (low, high) == pytest.approx((ref.low, ref.high), rel=1e-9)
    # d_z of constant nonzero differences is infinite: the interval is the boundary
    assert d_z_interval(np.inf, 3) == (np.inf, np.inf)
    assert d_z_interval(-np.inf, 2) == (-np.inf, -np.inf)
    assert np.isnan(d_z_interval(np.nan, 3)).all() and np.isnan(d_z_interval(0.5, 1)).all()
