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
from scipy import integrate, optimize, special
from scipy import stats as st

__all__ = [
    "MIN_BOOTSTRAP_N",
    "bca_interval",
    "d_z_interval",
    "ncf_cdf",
    "nct_cdf",
    "noncentrality_interval",
    "partial_eta_sq_interval",
    "t_interval",
]

MIN_BOOTSTRAP_N = 5  # fewer values per group: no bootstrap interval at all (see module docstring)
_NCF_LARGE = 1e6  # lambda from which ncf_cdf uses its expansion (error < 3e-10 there)
_NCT_LARGE = 1e3  # |t| beyond which nct_cdf integrates itself (scipy is off by ~1e-7 at 1e5)
_Z_REACH = 40.0  # the normal integral in nct_cdf runs over |z| < 40 (phi(40) ~ 1e-348)
_MAX_STEPS = 2200  # bracket steps: halving from 1e308 to 1e-308 takes ~2050


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
    (exact for normal differences). The cdf is scipy's where scipy is accurate (|t| <= 1000) and
    otherwise a one-dimensional integral over the normal part (:func:`nct_cdf`), so huge t
    (d_z ~ 30 at n = 2 gives t ~ 42; a near-constant difference gives t ~ 1e9) has finite bounds.

    Args:
        d_z: the observed standardised mean difference.
        n: the number of paired differences (>= 2).
        ci: confidence level in (0, 1).

    Returns:
        ``(low, high)`` for the population d_z. ``d_z = +-inf`` (constant nonzero differences, so
        no spread at all) is at the boundary: ``(inf, inf)`` or ``(-inf, -inf)``. NaN if ``d_z``
        is NaN or n < 2.
    """
    if n < 2 or np.isnan(d_z):
        return np.nan, np.nan
    if np.isinf(d_z):
        return float(d_z), float(d_z)
    if d_z < 0:  # the noncentral t is symmetric under (t, delta) -> (-t, -delta)
        low, high = d_z_interval(-d_z, n, ci)
        return -high, -low
    t, df, a = d_z * np.sqrt(n), n - 1, (1.0 - ci) / 2.0

    def cdf(nc: float) -> float:  # decreasing in nc
        return nct_cdf(t, df, nc)

    scale = max(abs(t), 1.0)
    low = _invert_decreasing(cdf, 1.0 - a, t, scale)
    high = _invert_decreasing(cdf, a, t, scale)
    return low / np.sqrt(n), high / np.sqrt(n)


def partial_eta_sq_interval(f: float, df1: float, df2: float, ci: float = 0.95) -> tuple[float, float]:
    """Confidence interval of partial eta squared by inverting the noncentral F (Steiger 2004).

    The interval for the noncentrality lambda of ``F ~ F'(df1, df2, lambda)`` is found first
    (a bound is 0 when the observed F is too small to reach it), then mapped to
    ``lambda / (lambda + df1 + df2 + 1)``, the usual conversion for fixed-effects designs. It
    holds at any F: a design with almost no residual variance (F ~ 1e12) gives bounds close to 1.

    Args:
        f: the observed F statistic (>= 0).
        df1, df2: the term's and the residual's degrees of freedom.
        ci: confidence level in (0, 1).

    Returns:
        ``(low, high)`` in [0, 1]. ``f = inf`` (no residual variance at all, so partial eta^2 is
        exactly 1) is at the boundary: ``(1.0, 1.0)``. NaN if ``f`` is NaN or negative or a
        df is not positive.
    """
    if np.isnan(f) or f < 0 or not df1 > 0 or not df2 > 0:
        return np.nan, np.nan
    if np.isinf(f):
        return 1.0, 1.0
    lam_low, lam_high = noncentrality_interval(f, df1, df2, ci)
    total = df1 + df2 + 1.0

    def eta(lam: float) -> float:
        return 1.0 if np.isinf(lam) else lam / (lam + total)

    return eta(lam_low), eta(lam_high)


def noncentrality_interval(f: float, df1: float, df2: float, ci: float = 0.95) -> tuple[float, float]:
    """Confidence interval of the noncentrality lambda of an observed F (see above).

    Each bound is 0 when even lambda = 0 puts the observed F beyond it; otherwise the root of
    :func:`ncf_cdf` in lambda, bracketed geometrically from ``f * df1`` (where E[F] is about f).
    """
    a = (1.0 - ci) / 2.0

    def cdf(lam: float) -> float:  # decreasing in lambda
        return ncf_cdf(f, df1, df2, lam)

    at_zero = cdf(0.0)
    start = max(f * df1, 1.0)
    low = 0.0 if at_zero <= 1.0 - a else _invert_decreasing(cdf, 1.0 - a, start, start, floor=0.0)
    high = 0.0 if at_zero <= a else _invert_decreasing(cdf, a, start, start, floor=0.0)
    return low, high


def ncf_cdf(f: float, df1: float, df2: float, lam: float) -> float:
    """P(F' <= f) for the noncentral F(df1, df2, lambda), accurate at any lambda.

    Below :data:`_NCF_LARGE` scipy's ``ncf.cdf`` (Boost); above it (where scipy becomes slow and
    then NaN, from lambda ~ 1e11) a second-order expansion in the chi-square numerator ``X1``:
    ``F' <= f`` iff ``X2 >= c * X1`` with ``c = df2 / (df1 f)``, so the cdf is ``E[g(X1)]`` with
    ``g(x) = chi2.sf(c x, df2)``, and ``E[g(X1)] = g(mu) + g''(mu) var / 2 + O(lambda^-2)`` with
    ``mu = df1 + lambda`` and ``var = 2 (df1 + 2 lambda)``. Against scipy the error is
    3e-10 at lambda = 1e6 and falls 100-fold per decade.
    """
    if lam <= 0.0:
        return _clip(st.f.cdf(f, df1, df2))
    if lam < _NCF_LARGE:
        p = st.ncf.cdf(f, df1, df2, lam)
        if np.isfinite(p):
            return _clip(p)
    if f <= 0.0:
        return 0.0
    c = df2 / (df1 * f)
    y = c * (df1 + lam)
    var = 2.0 * (df1 + 2.0 * lam)
    pdf = st.chi2.pdf(y, df2)
    dpdf = pdf * ((df2 / 2.0 - 1.0) / y - 0.5)  # d/dy of the chi2(df2) density
    return _clip(st.chi2.sf(y, df2) - 0.5 * c * c * dpdf * var)


def nct_cdf(t: float, df: float, nc: float) -> float:
    """P(T <= t) for the noncentral t(df, nc), accurate at any t.

    For |t| <= :data:`_NCT_LARGE` scipy's ``nct.cdf``; beyond (where scipy turns inaccurate,
    ~1e-7 at t = 1e5, then NaN) the exact one-dimensional integral
    ``P(Z + nc <= t S) = Phi(-nc) + int_{z > -nc} phi(z) P(V >= df ((z + nc) / t)^2) dz`` for
    t > 0, with ``S = sqrt(V / df)``, ``V ~ chi2(df)``; t < 0 by symmetry.
    """
    if abs(t) <= _NCT_LARGE:
        p = st.nct.cdf(t, df, nc)
        if np.isfinite(p):
            return _clip(p)
    if t < 0:
        return 1.0 - nct_cdf(-t, df, -nc)
    below = float(st.norm.cdf(-nc))  # Z + nc <= 0 <= t S
    lo, hi = max(-nc, -_Z_REACH), _Z_REACH
    if lo >= hi or t == 0:
        return _clip(below)

    def inner(z: float) -> float:
        return st.norm.pdf(z) * special.chdtrc(df, df * ((z + nc) / t) ** 2)

    kink = [0.0] if lo < 0.0 < hi else None
    value, _ = integrate.quad(inner, lo, hi, epsabs=1e-14, epsrel=1e-12, limit=200, points=kink)
    return _clip(below + value)


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


def _clip(p: float) -> float:
    return float(min(max(p, 0.0), 1.0))


def _invert_decreasing(
    cdf: Callable[[float], float], target: float, start: float, scale: float, floor: float = -np.inf
) -> float:
    """The x >= ``floor`` with ``cdf(x) == target`` for a decreasing ``cdf``.

    The bracket grows geometrically from ``start`` (steps ``scale``, 2 ``scale``, 4 ``scale``
    ...; towards a floor of 0 it halves instead, so a bound of 1e-9 or 1e12 is reached in a few
    dozen steps), each new point replacing the near end, and Brent's method finds the root
    inside. Returns ``floor`` when the cdf stays below ``target`` down to it, and +-inf when no
    finite x reaches ``target`` (neither happens for a bound that :func:`noncentrality_interval`
    or :func:`d_z_interval` asks for, which check the boundary first).
    """

    def gap(x: float) -> float:
        return cdf(x) - target

    lo = hi = float(start)
    g_lo = g_hi = gap(lo)
    step = float(scale)
    for _ in range(_MAX_STEPS):  # move hi up until gap(hi) <= 0
        if g_hi <= 0.0:
            break
        lo, g_lo = hi, g_hi
        hi = hi + step
        step *= 2.0
        g_hi = gap(hi)
    else:
        return np.inf
    step = float(scale)
    for _ in range(_MAX_STEPS):  # move lo down until gap(lo) >= 0
        if g_lo >= 0.0:
            break
        hi, g_hi = lo, g_lo
        if floor == 0.0 and lo > 0.0:
            lo = 0.0 if lo < 1e-300 else lo / 2.0
        else:
            lo = max(lo - step, floor)
            step *= 2.0
        g_lo = gap(lo)
        if g_lo < 0.0 and lo <= floor:
            return float(floor)
    else:
        return float(floor) if np.isfinite(floor) else -np.inf
    if g_lo == 0.0:
        return lo
    if g_hi == 0.0:
        return hi
    root, result = optimize.brentq(gap, lo, hi, xtol=1e-300, rtol=4 * np.finfo(float).eps,
                                   maxiter=500, full_output=True, disp=False)  # fmt: skip
    if result.converged:
        return float(root)
    for _ in range(2000):  # bisection cannot fail to converge
        mid = 0.5 * (lo + hi)
        if not lo < mid < hi:
            break
        if gap(mid) >= 0.0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)
