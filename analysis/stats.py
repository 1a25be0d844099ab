"""Statistics on a study frame: paired degradation, bootstrap CIs over seeds, factor effects.

Conventions (shared/reference/harness.md section 4): the seed is a block, shared by every
configuration, so comparisons with the baseline are paired by seed; a confidence interval is a
bootstrap over seeds; p-values of many comparisons are Holm-corrected; the ANOVA needs a balanced
design and refuses otherwise. Everything is deterministic given ``seed``.
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

__all__ = [
    "degradation",
    "factor_effects",
    "holm_adjust",
    "mean_ci",
    "paired_bootstrap",
    "pareto_mask",
]

logger = logging.getLogger(__name__)

_DIRECTIONS = ("minimize", "maximize")
_MIN_WILCOXON = 6  # below 6 pairs the exact two-sided Wilcoxon p cannot reach 0.05 (harness.md 4)


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


def paired_bootstrap(
    data: pd.DataFrame,
    by: Sequence[str] | None = None,
    *,
    n_boot: int = 10_000,
    seed: int = 0,
    ci: float = 0.95,
) -> pd.DataFrame:
    """Mean degradation per group with a bootstrap CI over seeds, paired tests and Holm p-values.

    Within a group the degradations are first averaged per seed (the seed is the resampled unit,
    so a group spanning several configurations is not treated as having more seeds than it has).
    With ``d`` the per-seed means and ``n = len(d)``:

    - n >= 2, ``d`` not constant: BCa interval of the mean from ``scipy.stats.bootstrap`` with
      ``n_boot`` resamples and ``rng = numpy.random.default_rng(seed)`` (a fresh generator per
      group, so a group's CI does not depend on which other groups exist); one-sample t-test of
      ``d`` against 0 (= the paired t-test of value vs baseline); Wilcoxon signed-rank when
      n >= 6 (below that its two-sided p cannot fall under 0.0625).
    - n >= 2, constant ``d``: the degenerate CI [d, d]; no test (p is NaN).
    - n == 1: the mean only; CI and p are NaN (refusal noted in ``note``). n == 0: all NaN.

    Args:
        data: a :func:`degradation` table, or a :func:`analysis.load_runs` frame (its degradation
            is computed first with the defaults from attrs).
        by: grouping columns; default every axis (one group per non-baseline configuration).
        n_boot: bootstrap resamples.
        seed: seed of the bootstrap generator.
        ci: confidence level in (0, 1).

    Returns:
        One row per group: the ``by`` columns, ``n_seeds``, ``mean``, ``sd``, ``ci_low``,
        ``ci_high``, ``p_ttest``, ``p_holm`` (Holm over all groups' finite t-test p-values),
        ``p_wilcoxon``, ``p_wilcoxon_holm``, ``note`` (empty, or why a value is missing; also
        counts runs left out for a NaN objective). attrs: the input's plus ``ci``, ``n_boot``,
        ``seed``, ``ci_method``.

    Raises:
        ValueError: ``by`` names a missing column, ``ci`` is outside (0, 1) or ``n_boot`` < 1.
    """
    if not 0.0 < ci < 1.0:
        raise ValueError(f"paired_bootstrap: ci must be in (0, 1), got {ci=}")
    if n_boot < 1:
        raise ValueError(f"paired_bootstrap: n_boot must be >= 1, got {n_boot=}")
    table = data if "degradation" in data.columns else degradation(data)
    by = list(by) if by is not None else list(table.attrs.get("axes") or [])
    if not by:
        raise ValueError("paired_bootstrap: no grouping columns (by=) and no axes in attrs")
    _require(table, [*by, "seed", "degradation"], "paired_bootstrap")
    rows = []
    for key, group in table.groupby(by, sort=True, dropna=False):
        nan = int(group["degradation"].isna().sum())
        per_seed = group.dropna(subset=["degradation"]).groupby("seed")["degradation"].mean()
        row = dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True))
        row.update(_summarise(per_seed.to_numpy(dtype=float), n_boot, seed, ci))
        if nan:
            row["note"] = "; ".join(filter(None, [row["note"], f"{nan} run(s) with NaN left out"]))
        rows.append(row)
    out = pd.DataFrame(rows)
    out["p_holm"] = holm_adjust(out["p_ttest"].to_numpy())
    out["p_wilcoxon_holm"] = holm_adjust(out["p_wilcoxon"].to_numpy())
    order = [
        "n_seeds",
        "mean",
        "sd",
        "ci_low",
        "ci_high",
        "p_ttest",
        "p_holm",
        "p_wilcoxon",
        "p_wilcoxon_holm",
        "note",
    ]
    out = out[[*by, *order]]
    out.attrs = {**table.attrs, "ci": ci, "n_boot": n_boot, "seed": seed, "ci_method": "BCa"}
    return out


def mean_ci(
    values: Sequence[float] | np.ndarray, *, n_boot: int = 10_000, seed: int = 0, ci: float = 0.95
) -> dict:
    """Mean of ``values`` with the BCa bootstrap CI that :func:`paired_bootstrap` uses.

    NaN values are dropped first. The same refusals apply: n == 1 gives no CI, constant values
    give the degenerate CI [c, c].

    Args:
        values: shape (n,), one value per seed.
        n_boot, seed, ci: as in :func:`paired_bootstrap`.

    Returns:
        ``{"n": n, "mean": ..., "sd": ..., "ci_low": ..., "ci_high": ..., "note": ...}``.
    """
    d = np.asarray(values, dtype=float)
    d = d[np.isfinite(d)]
    row = _summarise(d, n_boot, seed, ci)
    return {
        "n": row["n_seeds"],
        **{k: row[k] for k in ("mean", "sd", "ci_low", "ci_high")},
        "note": row["note"] if "Wilcoxon" not in row["note"] else "",
    }


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


def _summarise(d: np.ndarray, n_boot: int, seed: int, ci: float) -> dict:
    """Mean, sd, CI and p-values of per-seed differences ``d`` (see paired_bootstrap)."""
    n = len(d)
    row = {
        "n_seeds": n,
        "mean": np.nan,
        "sd": np.nan,
        "ci_low": np.nan,
        "ci_high": np.nan,
        "p_ttest": np.nan,
        "p_wilcoxon": np.nan,
        "note": "",
    }
    if n == 0:
        row["note"] = "no paired runs"
        return row
    row["mean"] = float(d.mean())
    if n == 1:
        row["note"] = "1 seed: no CI or test"
        return row
    row["sd"] = float(d.std(ddof=1))
    if np.ptp(d) == 0.0:
        row["ci_low"] = row["ci_high"] = float(d[0])
        row["note"] = "constant differences: degenerate CI, no test"
        return row
    res = st.bootstrap(
        (d,),
        np.mean,
        n_resamples=n_boot,
        confidence_level=ci,
        method="BCa",
        rng=np.random.default_rng(seed),
        vectorized=True,
    )
    row["ci_low"] = float(res.confidence_interval.low)
    row["ci_high"] = float(res.confidence_interval.high)
    row["p_ttest"] = float(st.ttest_1samp(d, 0.0).pvalue)
    if n >= _MIN_WILCOXON:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # ties/zeros: normal approximation
            row["p_wilcoxon"] = float(st.wilcoxon(d).pvalue)
    else:
        row["note"] = f"n={n} < {_MIN_WILCOXON}: no Wilcoxon test"
    return row


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
