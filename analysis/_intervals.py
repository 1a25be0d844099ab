"""Confidence intervals that hold at small n: Student t, Cohen's d_z, partial eta squared, BCa.

The functions are vectorised where the math allows it, so the coverage tests can check thousands
of simulated designs quickly. Re-exported through :mod:`analysis.stats`.

Why no bootstrap below 5 seeds (docs/analysis.md): a bootstrap interval of a mean resamples the
observed values only, so with n = 2 it can never be wider than the two values themselves; a
nominal 95% BCa interval of normal differences covers the true mean about 51% of the time at
n = 2, 71% at n = 3 and 84% at n = 5 (``tests/analysis/test_stats.py`` checks this), while the
Student t-interval is exact for normal differences at every n >= 2.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
from scipy import optimize
from scipy import stats as st

__all__ = ["MIN_BOOTSTRAP_N", "bca_interval", "d_z_interval", "partial_eta_sq_interval", "t_interval"]

MIN_BOOTSTRAP_N = 5  # fewer values per group: no bootstrap interval at all (see module docstring)


def t_interval(values, ci: float = 0.95, axis: int = -1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Student t confidence interval of the mean, ``mean -+ t_{n-1, (1+ci)/2} * sd / sqrt(n)``.

    Applied to per-seed paired differences this is the paired t-interval; it is exact when the
    differences are normal, at any n >= 2.

    Args:
        values: shape (..., n) (with the default ``axis``); NaN is not dropped.
        ci: confidence level in (0, 1).
        axis: the axis holding the n values.

    Returns:
        ``(low, high, df)``, each of the shape of ``values`` without ``axis``; NaN where n < 2.
    """
    x = np.asarray(values, dtype=float)
    n = x.shape[axis]
    if n < 2:
        nan = np.full(np.delete(x.shape, axis if axis >= 0 else x.ndim + axis), np.nan)
        return nan, nan.copy(), nan.copy()
    mean = x.mean(axis=axis)
    half = st.t.ppf(0.5 + ci / 2.0, n - 1) * x.std(axis=axis, ddof=1) / np.sqrt(n)
    return mean - half, mean + half, np.full(mean.shape, float(n - 1))


def d_z_interval(d_z: float, n: int, ci: float = 0.95) -> tuple[float, float]:
    """Confidence interval of Cohen's d_z = mean / sd of paired differences, from the noncentral t.

    ``t = d_z * sqrt(n)`` follows a noncentral t with ``n - 1`` degrees of freedom and
    noncentrality ``delta * sqrt(n)``; the interval inverts its cdf in the noncentrality
    (exact for normal differences).

    Args:
        d_z: the observed standardised mean difference (finite).
        n: the number of paired differences (>= 2).
        ci: confidence level in (0, 1).

    Returns:
        ``(low, high)`` for the population d_z; NaN if ``d_z`` is not finite or n < 2.
    """
    if n < 2 or not np.isfinite(d_z):
        return np.nan, np.nan
    t, df, a = d_z * np.sqrt(n), n - 1, (1.0 - ci) / 2.0

    def cdf(nc: float) -> float:  # decreasing in nc; scipy returns NaN deep in the tails
        return _tail_safe(st.nct.cdf(t, df, nc), above=nc > t)

    low = _invert_decreasing(cdf, 1.0 - a, t)
    high = _invert_decreasing(cdf, a, t)
    return low / np.sqrt(n), high / np.sqrt(n)


def partial_eta_sq_interval(f: float, df1: float, df2: float, ci: float = 0.95) -> tuple[float, float]:
    """Confidence interval of partial eta squared by inverting the noncentral F (Steiger 2004).

    The interval for the noncentrality lambda of ``F ~ F'(df1, df2, lambda)`` is found first
    (a bound is 0 when the observed F is too small to reach it), then mapped to
    ``lambda / (lambda + df1 + df2 + 1)``, the usual conversion for fixed-effects designs.

    Args:
        f: the observed F statistic.
        df1, df2: the term's and the residual's degrees of freedom.
        ci: confidence level in (0, 1).

    Returns:
        ``(low, high)`` in [0, 1]; NaN if ``f`` is not finite.
    """
    if not np.isfinite(f) or df1 <= 0 or df2 <= 0:
        return np.nan, np.nan
    lam_low, lam_high = noncentrality_interval(f, df1, df2, ci)
    total = df1 + df2 + 1.0
    return lam_low / (lam_low + total), lam_high / (lam_high + total)


def noncentrality_interval(f: float, df1: float, df2: float, ci: float = 0.95) -> tuple[float, float]:
    """Confidence interval of the noncentrality lambda of an observed F (see above)."""
    a = (1.0 - ci) / 2.0

    def cdf(lam: float) -> float:  # decreasing in lambda
        return _tail_safe(st.ncf.cdf(f, df1, df2, lam) if lam > 0 else st.f.cdf(f, df1, df2), True)

    at_zero = cdf(0.0)
    low = 0.0 if at_zero <= 1.0 - a else _invert_decreasing(cdf, 1.0 - a, max(f * df1, 1.0), 0.0)
    high = 0.0 if at_zero <= a else _invert_decreasing(cdf, a, max(f * df1, 1.0), 0.0)
    return low, high


def bca_interval(values, *, n_boot: int, seed: int, ci: float = 0.95, axis: int = -1):
    """BCa bootstrap interval of the mean (``scipy.stats.bootstrap``), refused below 5 values.

    Args:
        values: shape (..., n); the bootstrap runs over ``axis``, batched over the rest.
        n_boot: resamples.
        seed: seed of ``numpy.random.default_rng``.
        ci: confidence level in (0, 1).
        axis: the axis holding the n values.

    Returns:
        ``(low, high)``, each of the shape of ``values`` without ``axis``.

    Raises:
        ValueError: n < 5 (:data:`MIN_BOOTSTRAP_N`): use :func:`t_interval`.
    """
    x = np.asarray(values, dtype=float)
    return _bca(x, n_boot=n_boot, seed=seed, ci=ci, axis=axis, floor=MIN_BOOTSTRAP_N)


def _bca(x: np.ndarray, *, n_boot: int, seed: int, ci: float, axis: int, floor: int):
    """BCa with a minimum n of ``floor`` (the tests call it with floor 2 to show why 5 is needed)."""
    n = x.shape[axis]
    if n < floor:
        raise ValueError(
            f"bca_interval: a bootstrap CI needs at least {floor} values, got n={n}; a 95% BCa "
            "interval covers the mean far less often than 95% at small n (docs/analysis.md): use "
            "the t-interval"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # constant resamples: degenerate jackknife
        res = st.bootstrap(
            (x,), np.mean, n_resamples=n_boot, confidence_level=ci, method="BCa",
            rng=np.random.default_rng(seed), vectorized=True, axis=axis,
        )  # fmt: skip
    return res.confidence_interval.low, res.confidence_interval.high


def _tail_safe(p: float, above: bool) -> float:
    """A cdf value scipy could not compute (NaN) deep in a tail: 0 above the mode, 1 below."""
    if np.isnan(p):
        return 0.0 if above else 1.0
    return float(min(max(p, 0.0), 1.0))


def _invert_decreasing(
    cdf: Callable[[float], float], target: float, start: float, floor: float = -np.inf
) -> float:
    """The x with ``cdf(x) == target`` for a decreasing ``cdf``, bracketing outward from ``start``."""
    lo, hi, step = max(start - 1.0, floor), start + 1.0, 1.0
    for _ in range(200):
        f_lo, f_hi = cdf(lo) - target, cdf(hi) - target
        if f_lo >= 0.0 >= f_hi:
            return float(optimize.brentq(lambda x: cdf(x) - target, lo, hi, xtol=1e-10, rtol=1e-12))
        step *= 2.0
        if f_lo < 0.0:
            if lo <= floor:
                return floor
            lo = max(lo - step, floor)
        if f_hi > 0.0:
            hi += step
    return np.nan
