"""Statistics on a study frame: paired degradation, small-n intervals over seeds, factor effects.

Conventions (docs/analysis.md): the seed is a block, shared by every configuration, so
comparisons with the baseline are paired by seed and the ANOVA has seed as a block; the interval
of a mean over seeds is the Student t-interval (df = n - 1), with a BCa bootstrap interval beside
it only from 5 seeds up (never below: it undercovers badly there); effect sizes come with
intervals (Cohen's d_z for paired differences, partial eta squared for ANOVA terms); p-values of
many comparisons are Holm-corrected; the ANOVA needs a balanced design and refuses otherwise.
Everything is deterministic given ``seed``.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as st
from statsmodels.stats.multitest import multipletests

from analysis._anova import factor_effects
from analysis._intervals import (
    MIN_BOOTSTRAP_N,
    bca_interval,
    d_z_interval,
    partial_eta_sq_interval,
    t_interval,
)

__all__ = [
    "MIN_BOOTSTRAP_N",
    "bca_interval",
    "d_z_interval",
    "degradation",
    "factor_effects",
    "holm_adjust",
    "in_grid_order",
    "mean_ci",
    "paired_bootstrap",
    "paired_intervals",
    "pareto_mask",
    "partial_eta_sq_interval",
    "t_interval",
]

logger = logging.getLogger(__name__)

_DIRECTIONS = ("minimize", "maximize")
_MIN_WILCOXON = 6  # below 6 pairs the exact two-sided Wilcoxon p cannot reach 0.05
_COLUMNS = [  # paired_intervals' columns after the group keys
    "n", "df", "mean", "sd", "ci_low", "ci_high", "ci_method", "d_z", "d_z_low", "d_z_high",
    "boot_low", "boot_high", "p_ttest", "p_holm", "p_wilcoxon", "p_wilcoxon_holm", "note",
]  # fmt: skip


def degradation(
    frame: pd.DataFrame,
    objective: str | None = None,
    baseline: dict | None = None,
    direction: str | None = None,
    *,
    axes: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Paired degradation of each non-baseline run against its baseline run.

    A run's partner is the baseline run with the same seed and the same value on every axis that
    the baseline does not fix: with axes (method, hidden) and baseline ``{"method": "fp"}``, the
    run (bc, hidden=64, seed 2) is compared with (fp, hidden=64, seed 2).

    Args:
        frame: a frame from :func:`analysis.load_runs`.
        objective: the metric; default ``frame.attrs["objective"]``.
        baseline: axis -> value of the baseline configuration; default ``attrs["baseline"]``.
        direction: ``"minimize"`` or ``"maximize"``; default ``attrs["direction"]``.
        axes: the grid axes; default ``attrs["axes"]``.

    Returns:
        One row per paired run: ``run_id``, ``cell`` (if present), ``seed``, the axes, ``value``
        (the run's objective), ``baseline_value``, ``baseline_run_id`` and ``degradation``, which
        is positive when the run is worse than its baseline whatever the direction
        (minimize: value - baseline; maximize: baseline - value). NaN objectives give NaN.
        ``attrs`` carries the frame's attrs plus ``objective``, ``direction``, ``baseline`` and
        ``unpaired`` (run_id, seed and axes of the runs without a baseline partner; they are
        left out and logged as a warning, never imputed).

    Raises:
        ValueError: a setting is neither given nor in attrs, the direction is unknown, a column is
            missing, the baseline matches no run, or two baseline runs share a seed and config.
    """
    attrs = frame.attrs
    objective = _setting(objective, attrs, "objective", "degradation")
    baseline = dict(_setting(baseline, attrs, "baseline", "degradation"))
    direction = _setting(direction, attrs, "direction", "degradation")
    axes = list(_setting(axes, attrs, "axes", "degradation"))
    if direction not in _DIRECTIONS:
        raise ValueError(f"degradation: direction must be one of {_DIRECTIONS}, got {direction!r}")
    if not baseline:
        raise ValueError("degradation: the baseline is empty (no axis value to compare against)")
    column = (attrs.get("metric_columns") or {}).get(objective, objective)
    axes = list(dict.fromkeys([*axes, *baseline]))
    _require(frame, ["run_id", "seed", column, *axes], "degradation")
    is_base = pd.Series(True, index=frame.index)
    for axis, value in baseline.items():
        is_base &= (frame[axis] == _coerce_like(frame[axis], value)).fillna(False).astype(bool)
    if not is_base.any():
        levels = {axis: sorted(map(str, frame[axis].dropna().unique())) for axis in baseline}
        raise ValueError(
            f"degradation: baseline {baseline} matches no run of study "
            f"{attrs.get('study')!r} (levels seen: {levels})"
        )
    others = [axis for axis in axes if axis not in baseline]
    keys = [*others, "seed"]
    base = frame.loc[is_base, [*keys, "run_id", column]].rename(
        columns={"run_id": "baseline_run_id", column: "baseline_value"}
    )
    twice = base.duplicated(keys, keep=False)
    if twice.any():
        raise ValueError(
            "degradation: several baseline runs share a seed and configuration (duplicates not "
            f"removed?): {sorted(base.loc[twice, 'baseline_run_id'])}"
        )
    ident = ["run_id", *(["cell"] if "cell" in frame.columns else []), "seed"]
    runs = frame.loc[~is_base, [*ident, *axes, column]].rename(columns={column: "value"})
    paired = runs.merge(base, on=keys, how="left", validate="many_to_one")
    lonely = paired["baseline_run_id"].isna()
    if lonely.any():
        logger.warning(
            "degradation: %d run(s) have no baseline run with the same seed and %s; left out: %s",
            int(lonely.sum()),
            others or "configuration",
            ", ".join(paired.loc[lonely, "run_id"]),
        )
    unpaired = paired.loc[lonely, ["run_id", "seed", *axes]].to_dict("records")
    out = paired.loc[~lonely].reset_index(drop=True)
    sign = 1.0 if direction == "minimize" else -1.0
    out["degradation"] = sign * (out["value"] - out["baseline_value"])
    out.attrs = {
        **attrs,
        "objective": objective,
        "direction": direction,
        "baseline": baseline,
        "axes": axes,
        "unpaired": unpaired,
    }
    return out


def paired_intervals(
    data: pd.DataFrame,
    by: Sequence[str] | None = None,
    *,
    ci: float = 0.95,
    ci_method: str = "t",
    n_boot: int = 10_000,
    seed: int = 0,
) -> pd.DataFrame:
    """Mean paired degradation per group with its t-interval, Cohen's d_z, tests and Holm p-values.

    Within a group the degradations are first averaged per seed (the seed is the unit, so a group
    spanning several configurations is not treated as having more seeds than it has). With ``d``
    the per-seed differences and ``n = len(d)``, ``df = n - 1``:

    - ``ci_low``/``ci_high``: the Student t-interval of the mean of ``d`` (the paired
      t-interval, exact for normal differences at any n >= 2). This is the interval to read.
    - ``d_z`` = mean / sd of ``d`` (Cohen's d_z, the paired standardised effect) with its
      interval from the noncentral t (``d_z_low``, ``d_z_high``).
    - ``boot_low``/``boot_high``: a BCa bootstrap interval (``n_boot`` resamples, a fresh
      ``default_rng(seed)`` per group) only when n >= 5; below that it is refused (NaN, and the
      note says so), because a bootstrap interval cannot be wider than the values it resamples:
      at n = 2 a nominal 95% BCa interval covers the true mean about half the time. It stays a
      secondary column at n >= 5 (still short of 95% there for normal data: about 84% at n = 5);
      ``ci_method="bca"`` puts it into ``ci_low``/``ci_high`` instead and then refuses groups
      with 2 <= n < 5 outright.
    - ``p_ttest``: one-sample t-test of ``d`` against 0 (= the paired t-test of value vs
      baseline); ``p_wilcoxon``: signed-rank test when n >= 6 (below that its two-sided p cannot
      fall under 0.0625). Both are Holm-corrected over all groups (``p_holm``,
      ``p_wilcoxon_holm``).
    - constant ``d`` (n >= 2): the degenerate CI [d, d], no d_z, no test. n == 1: the mean only.
      n == 0: all NaN.

    Args:
        data: a :func:`degradation` table, or a :func:`analysis.load_runs` frame (its degradation
            is computed first with the defaults from attrs).
        by: grouping columns; default every axis (one group per non-baseline configuration).
        ci: confidence level in (0, 1) of every interval.
        ci_method: ``"t"`` (default) or ``"bca"``: which interval fills ``ci_low``/``ci_high``.
        n_boot: bootstrap resamples; 0 skips the bootstrap column (only with ``ci_method="t"``).
        seed: seed of the bootstrap generator.

    Returns:
        One row per group: the ``by`` columns, ``n``, ``df``, ``mean``, ``sd``, ``ci_low``,
        ``ci_high``, ``ci_method`` (``t``, ``BCa``, ``degenerate`` or empty), ``d_z``,
        ``d_z_low``, ``d_z_high``, ``boot_low``, ``boot_high``, ``p_ttest``, ``p_holm``,
        ``p_wilcoxon``, ``p_wilcoxon_holm``, ``note`` (empty, or why a value is missing; also
        counts runs left out for a NaN objective). attrs: the input's plus ``ci``, ``ci_method``,
        ``n_boot``, ``seed`` and ``min_bootstrap_n`` (5).

    Raises:
        ValueError: ``by`` names a missing column, ``ci`` is outside (0, 1), ``ci_method`` is
            unknown, ``n_boot`` < 0 (or 0 with ``"bca"``), or ``ci_method="bca"`` and a group
            has 2 to 4 seeds (the message names the groups).
    """
    _check_ci_args("paired_intervals", ci, ci_method, n_boot)
    table = data if "degradation" in data.columns else degradation(data)
    by = list(by) if by is not None else list(table.attrs.get("axes") or [])
    if not by:
        raise ValueError("paired_intervals: no grouping columns (by=) and no axes in attrs")
    _require(table, [*by, "seed", "degradation"], "paired_intervals")
    groups = []
    ordered = in_grid_order(table, by)  # groups in the grid's level order, as the figures
    for key, group in ordered.groupby(by, sort=False, dropna=False):
        per_seed = group.dropna(subset=["degradation"]).groupby("seed")["degradation"].mean()
        label = dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True))
        groups.append((label, per_seed.to_numpy(dtype=float), int(group["degradation"].isna().sum())))
    if ci_method == "bca":
        small = [f"{_label(label)} (n={len(d)})" for label, d, _ in groups if 2 <= len(d) < MIN_BOOTSTRAP_N]
        if small:
            raise ValueError(
                f"paired_intervals: no bootstrap CI with fewer than {MIN_BOOTSTRAP_N} seeds, and "
                f"{len(small)} group(s) have fewer: {', '.join(small[:10])}; use ci_method='t'"
            )
    rows = []
    for label, d, nan in groups:
        row = {**label, **_summarise(d, ci, ci_method, n_boot, seed)}
        if nan:
            row["note"] = "; ".join(filter(None, [row["note"], f"{nan} run(s) with NaN left out"]))
        rows.append(row)
    out = pd.DataFrame(rows, columns=[*by, *_COLUMNS])
    out["p_holm"] = holm_adjust(out["p_ttest"].to_numpy())
    out["p_wilcoxon_holm"] = holm_adjust(out["p_wilcoxon"].to_numpy())
    out.attrs = {**table.attrs, "ci": ci, "ci_method": "BCa" if ci_method == "bca" else "t",
                 "n_boot": n_boot, "seed": seed, "min_bootstrap_n": MIN_BOOTSTRAP_N}  # fmt: skip
    return out


paired_bootstrap = paired_intervals  # the former name (it now leads with the t-interval)


def mean_ci(
    values: Sequence[float] | np.ndarray,
    *,
    ci: float = 0.95,
    ci_method: str = "t",
    n_boot: int = 10_000,
    seed: int = 0,
) -> dict:
    """Mean of ``values`` with the interval :func:`paired_intervals` would give them.

    NaN values are dropped first. The Student t-interval by default; ``ci_method="bca"`` gives
    the BCa bootstrap interval and refuses n from 2 to 4. n == 1 gives no CI; constant values
    give the degenerate CI [c, c].

    Args:
        values: shape (n,), one value per seed (or per run).
        ci, ci_method, n_boot, seed: as in :func:`paired_intervals`.

    Returns:
        ``{"n", "df", "mean", "sd", "ci_low", "ci_high", "ci_method", "note"}``.

    Raises:
        ValueError: as :func:`paired_intervals`, for these values.
    """
    _check_ci_args("mean_ci", ci, ci_method, n_boot)
    d = np.asarray(values, dtype=float)
    d = d[np.isfinite(d)]
    if ci_method == "bca" and 2 <= len(d) < MIN_BOOTSTRAP_N:
        raise ValueError(f"mean_ci: no bootstrap CI with fewer than {MIN_BOOTSTRAP_N} values, got "
                         f"n={len(d)}; use ci_method='t'")  # fmt: skip
    row = _summarise(d, ci, ci_method, 0 if ci_method == "t" else n_boot, seed, tests=False)
    return {k: row[k] for k in ("n", "df", "mean", "sd", "ci_low", "ci_high", "ci_method", "note")}


def in_grid_order(table: pd.DataFrame, by: Sequence[str], levels: dict | None = None) -> pd.DataFrame:
    """``table``'s rows stably sorted by the study grid's level order of each ``by`` column.

    The order is ``levels`` (default ``table.attrs["levels"]``, axis -> values in the study
    file's order, set by :func:`analysis.report.render_report`); values a column has that the
    grid lacks come after, sorted; NaN last. A column without grid levels sorts its values. So a
    table lists ``fp, bc, bwn, lab`` as the study did, not ``bc, bwn, fp, lab``, and agrees with
    the figures (:func:`analysis._plotstyle.axis_levels`). attrs are kept.
    """
    levels = table.attrs.get("levels") if levels is None else levels
    levels = levels or {}
    ranks = []
    for column in by:
        seen = pd.unique(table[column].dropna())
        try:
            seen = sorted(seen)
        except TypeError:  # mixed types
            seen = sorted(seen, key=str)
        grid = [v for v in levels.get(column) or [] if v in set(seen)]
        order = grid + [v for v in seen if v not in set(grid)]
        rank = {v: i for i, v in enumerate(order)}
        ranks.append(table[column].map(rank).fillna(len(order)).to_numpy(dtype=float))
    if not ranks:
        return table
    out = table.iloc[np.lexsort(ranks[::-1])]
    out.attrs = dict(table.attrs)
    return out


def holm_adjust(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values; NaN entries stay NaN and do not count as comparisons.

    Args:
        pvalues: raw p-values, shape (m,).

    Returns:
        Adjusted p-values, shape (m,), each min(1, max over the steps so far of (m - k) p_(k)).
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    finite = np.isfinite(p)
    if finite.any():
        out[finite] = multipletests(p[finite], method="holm")[1]
    return out


def pareto_mask(cost: Sequence[float], value: Sequence[float], direction: str) -> np.ndarray:
    """Which points are on the Pareto front of (lower cost, better value).

    A point is dominated when another has cost <= and value at least as good, one of them
    strictly. NaN points are never on the front.

    Args:
        cost: shape (n,), lower is better (bits per weight, ms per step).
        value: shape (n,), better per ``direction``.
        direction: ``"minimize"`` or ``"maximize"`` for ``value``.

    Returns:
        Boolean array, shape (n,).
    """
    if direction not in _DIRECTIONS:
        raise ValueError(f"pareto_mask: direction must be one of {_DIRECTIONS}, got {direction!r}")
    c = np.asarray(cost, dtype=float)
    v = np.asarray(value, dtype=float) * (1.0 if direction == "minimize" else -1.0)
    if c.shape != v.shape:
        raise ValueError(f"pareto_mask: cost shape {c.shape} != value shape {v.shape}")
    ok = np.isfinite(c) & np.isfinite(v)
    front = np.zeros(c.shape, dtype=bool)
    best = np.inf
    # sweep by cost, then value: a point is on the front iff it beats every cheaper point's value
    for i in np.lexsort((v, c)):
        if ok[i] and v[i] < best:
            front[i] = True
            best = v[i]
    # equal (cost, value) duplicates of a front point are on the front too
    for i in np.flatnonzero(ok & ~front):
        front[i] = bool(np.any(front & (c == c[i]) & (v == v[i])))
    return front


# --- helpers -------------------------------------------------------------------------------------


def _summarise(
    d: np.ndarray, ci: float, ci_method: str, n_boot: int, seed: int, *, tests: bool = True
) -> dict:
    """n, mean, sd, intervals, d_z and p-values of per-seed differences ``d`` (paired_intervals)."""
    n = len(d)
    row: dict = dict.fromkeys(_COLUMNS, np.nan)
    row.update(n=n, ci_method="", note="")
    if n == 0:
        row["note"] = "no paired runs"
        return row
    row["mean"] = float(d.mean())
    if n == 1:
        row["note"] = "1 seed: no CI or test"
        return row
    row["df"] = n - 1
    row["sd"] = float(d.std(ddof=1))
    if np.ptp(d) == 0.0:
        row["ci_low"] = row["ci_high"] = float(d[0])
        row["ci_method"] = "degenerate"
        row["note"] = "constant differences: degenerate CI, no test"
        return row
    notes = []
    low, high, _ = t_interval(d, ci)
    row.update(ci_low=float(low), ci_high=float(high), ci_method="t")
    row["d_z"] = row["mean"] / row["sd"]
    row["d_z_low"], row["d_z_high"] = (float(v) for v in d_z_interval(row["d_z"], n, ci))
    if n_boot and n >= MIN_BOOTSTRAP_N:
        low, high = bca_interval(d, n_boot=n_boot, seed=seed, ci=ci)
        row.update(boot_low=float(low), boot_high=float(high))
        if ci_method == "bca":
            row.update(ci_low=row["boot_low"], ci_high=row["boot_high"], ci_method="BCa")
    elif n_boot:
        notes.append(f"n={n} < {MIN_BOOTSTRAP_N}: no bootstrap CI")
    if tests:
        row["p_ttest"] = float(st.ttest_1samp(d, 0.0).pvalue)
        if n >= _MIN_WILCOXON:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # ties/zeros: normal approximation
                row["p_wilcoxon"] = float(st.wilcoxon(d).pvalue)
        else:
            notes.append(f"n={n} < {_MIN_WILCOXON}: no Wilcoxon test")
    row["note"] = "; ".join(notes)
    return row


def _check_ci_args(where: str, ci: float, ci_method: str, n_boot: int) -> None:
    if not 0.0 < ci < 1.0:
        raise ValueError(f"{where}: ci must be in (0, 1), got {ci=}")
    if ci_method not in ("t", "bca"):
        raise ValueError(f"{where}: ci_method must be 't' or 'bca', got {ci_method=}")
    if n_boot < (1 if ci_method == "bca" else 0):
        raise ValueError(f"{where}: n_boot must be >= {int(ci_method == 'bca')} with "
                         f"ci_method={ci_method!r}, got {n_boot=}")  # fmt: skip


def _label(key: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in key.items())


def _setting(value, attrs: dict, key: str, where: str):
    """An explicit argument, else the study attr of that name; refuse if neither exists."""
    if value is None:
        value = attrs.get(key)
    if value is None or (isinstance(value, str | list | dict) and len(value) == 0):
        raise ValueError(f"{where}: no {key} given and frame.attrs has no {key!r}")
    return value


def _require(frame: pd.DataFrame, columns: Sequence[str], where: str) -> None:
    missing = [c for c in dict.fromkeys(columns) if c not in frame.columns]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing}")


def _coerce_like(series: pd.Series, value):
    """Cast a baseline value (from JSON) to the dtype of the column it is compared with."""
    if isinstance(value, str):
        if pd.api.types.is_bool_dtype(series.dtype):
            return value == "True"
        if pd.api.types.is_integer_dtype(series.dtype) and re.fullmatch(r"[+-]?\d+", value):
            return int(value)
        if pd.api.types.is_numeric_dtype(series.dtype):
            try:
                return float(value)
            except ValueError:
                return value
        return value
    if pd.api.types.is_string_dtype(series.dtype) and not isinstance(value, str):
        return "None" if value is None else str(value)
    return value
