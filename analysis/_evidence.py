"""Per-cell evidence tables: scores against the reference floors, divergence, gradient growth,
accuracy beside cost, and how the gap to the baseline moves along a numeric axis.

Each function takes a :func:`analysis.load_runs` frame and returns one row per cell (a
combination of the study's axes) with ``n``, the number of runs the row summarises, and, for
means, a 95% Student t-interval over the runs (seeds): it is exact for normal values at any
n >= 2, where a bootstrap interval is too narrow (docs/analysis.md). One run gives no interval.

The floors are run-level metrics (docs/mlflow-layout.md): ``floor_unigram_bpc`` and
``floor_bigram_bpc`` (bits per character of the run's test split under count models of its
training split), ``floor_chance_acc`` (1/K) and ``floor_chance_err`` (100 * (1 - 1/K), in %).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis._intervals import t_interval
from analysis.stats import in_grid_order, pareto_mask

__all__ = [
    "COSTS",
    "UNDERTRAINED",
    "bptt_growth_table",
    "cost_table",
    "divergence_table",
    "floor_references",
    "floor_table",
    "interaction_table",
]

COSTS = ("bits_per_weight", "packed_bytes", "step_ms", "state_mem_mb")
"""Run-level cost metrics (docs/mlflow-layout.md): storage bits per quantizable weight, the packed
model's bytes, the median training step in ms, and the optimizer state's memory in MiB."""

UNDERTRAINED = "undertrained"
"""The verdict of a character-model cell whose mean test bits/char does not beat the bigram floor."""

_LN2 = math.log(2.0)


def floor_table(frame: pd.DataFrame, axes: list[str] | None = None) -> pd.DataFrame:
    """Each cell's mean test score beside the floors of its test split, with a verdict.

    Character tasks: the score is ``test_bpc`` (or ``test_xent`` / ln 2), the floors
    ``floor_bigram_bpc`` and ``floor_unigram_bpc``; a cell whose mean does not beat (is not below)
    its bigram floor gets the verdict :data:`UNDERTRAINED`: a table of character-pair counts does
    at least as well. Classification: ``test_acc`` against ``floor_chance_acc`` (or ``test_err``
    against ``floor_chance_err`` when the study has no accuracy); ``"at chance"`` when the mean
    does not beat it.

    Args:
        frame: a :func:`analysis.load_runs` frame.
        axes: the cell's columns; default ``frame.attrs["axes"]``.

    Returns:
        Columns: the axes, ``n`` (runs with a finite score), ``score`` (the metric's name),
        ``mean``, ``ci_low``, ``ci_high``, then ``floor_bigram_bpc``, ``floor_unigram_bpc``
        (lm) or ``floor_chance`` (classification), each the cell's mean over its runs, then
        ``margin`` (floor - mean for lower-is-better scores, mean - floor otherwise: > 0 beats the
        floor) and ``verdict``. ``attrs["task"]`` is ``"lm"`` or ``"classification"``.
        Empty (no columns) when the runs have no floor metric.
    """
    axes = _axes(frame, axes)
    column = _column(frame)
    if column("floor_bigram_bpc"):
        task, floors = "lm", {"floor_bigram_bpc": column("floor_bigram_bpc"),
                              "floor_unigram_bpc": column("floor_unigram_bpc")}  # fmt: skip
        if column("test_bpc"):
            score_name, score = "test_bpc", frame[column("test_bpc")]
        elif column("test_xent"):
            score_name, score = "test_xent / ln 2", frame[column("test_xent")] / _LN2
        else:
            return pd.DataFrame()
        lower, reference = True, "floor_bigram_bpc"
    elif column("floor_chance_acc") or column("floor_chance_err"):
        task = "classification"
        use_err = not column("test_acc") or _objective_stem(frame) == "err"
        name = "err" if use_err else "acc"
        if not column(f"test_{name}") or not column(f"floor_chance_{name}"):
            return pd.DataFrame()
        score_name, score = f"test_{name}", frame[column(f"test_{name}")]
        floors = {"floor_chance": column(f"floor_chance_{name}")}
        lower, reference = use_err, "floor_chance"
    else:
        return pd.DataFrame()
    data = frame[axes].copy()
    data["_score"] = score.to_numpy(dtype=float)
    for out, col in floors.items():
        data[out] = frame[col].to_numpy(dtype=float) if col else np.nan
    rows = []
    for key, part in _cells(data, axes):
        row = {**key, "score": score_name, **_mean_interval(part["_score"])}
        for out in floors:
            row[out] = float(part[out].mean())
        margin = row[reference] - row["mean"] if lower else row["mean"] - row[reference]
        row["margin"] = margin
        if not np.isfinite(margin):
            row["verdict"] = "no finite score" if not np.isfinite(row["mean"]) else "no floor"
        elif margin > 0:
            row["verdict"] = "beats bigram" if task == "lm" else "above chance"
        else:
            row["verdict"] = UNDERTRAINED if task == "lm" else "at chance"
        rows.append(row)
    table = pd.DataFrame(rows)
    table.attrs = {"task": task, "score": score_name}
    return table


def floor_references(frame: pd.DataFrame, metric: str) -> dict[str, list[float]]:
    """The floors in the unit of a per-epoch ``metric``, for reference lines on its curves.

    ``*_bpc`` gets the bits/char floors, ``*_xent`` the same times ln 2 (nats), ``*_acc`` and
    ``*_err`` chance. The values are the distinct floors of the runs (one per dataset split in
    the study, usually one; values equal to 6 significant digits count as one).

    Returns:
        ``{"unigram": [...], "bigram": [...]}``, ``{"chance": [...]}``, or ``{}`` when the metric
        has no floor or the runs have none.
    """
    column = _column(frame)
    names: dict[str, tuple[str, float]] = {}
    if metric.endswith(("_bpc", "_xent")):
        scale = 1.0 if metric.endswith("_bpc") else _LN2
        names = {"unigram": ("floor_unigram_bpc", scale), "bigram": ("floor_bigram_bpc", scale)}
    elif metric.endswith(("_acc", "_err")):
        names = {"chance": (f"floor_chance_{metric.rsplit('_', 1)[1]}", 1.0)}
    out = {}
    for label, (name, scale) in names.items():
        col = column(name)
        if col:
            values = frame[col].to_numpy(dtype=float) * scale
            values = values[np.isfinite(values)]
            distinct: dict[str, list[float]] = {}  # runs of one split agree to rounding
            for v in values:
                distinct.setdefault(f"{v:.6g}", []).append(float(v))
            if distinct:
                out[label] = sorted(float(np.mean(group)) for group in distinct.values())
    return out


def divergence_table(frame: pd.DataFrame, axes: list[str] | None = None) -> pd.DataFrame:
    """Diverged runs per cell (metric ``diverged`` = 1), counted by reason.

    The reason is the tag ``labbench.diverged_reason`` (column ``diverged_reason``):
    ``nonfinite``, ``bound`` or ``no_progress``; a diverged run without the tag (recorded before
    it existed) counts as ``unrecorded``.

    Returns:
        Columns: the axes, ``runs``, ``diverged``, ``reasons`` (e.g. ``"2 bound, 1 nonfinite"``,
        empty when none diverged). Empty (no columns) when the runs have no ``diverged`` metric.
    """
    axes = _axes(frame, axes)
    column = _column(frame)("diverged")
    if not column:
        return pd.DataFrame()
    data = frame[axes].copy()
    data["_diverged"] = frame[column].fillna(0).to_numpy(dtype=float) > 0.5
    reasons = frame["diverged_reason"] if "diverged_reason" in frame.columns else [None] * len(frame)
    data["_reason"] = [r if isinstance(r, str) and r else "unrecorded" for r in reasons]
    rows = []
    for key, part in _cells(data, axes):
        counts = part.loc[part["_diverged"], "_reason"].value_counts()
        listed = ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items()))
        rows.append({**key, "runs": len(part), "diverged": int(part["_diverged"].sum()), "reasons": listed})
    return pd.DataFrame(rows)


def bptt_growth_table(frame: pd.DataFrame, axes: list[str] | None = None) -> pd.DataFrame:
    """Mean ``bptt_growth`` per cell at each run's last epoch, with its t-interval and reading.

    ``bptt_growth`` is the median over t of ||g_{t-1}|| / ||g_t||, g_t = d L_T / d h_t: above 1
    the gradient of the last step's loss grows going back in time.

    Returns:
        Columns: the axes, ``n``, ``mean``, ``ci_low``, ``ci_high``, ``reading`` (``"grows back
        in time"`` when the interval lies above 1, ``"decays back in time"`` below 1, else
        ``"not distinguishable from 1"``; ``"n = 1: no interval"``). Empty (no columns) when
        the runs have no ``bptt_growth`` metric.
    """
    axes = _axes(frame, axes)
    column = _column(frame)("bptt_growth")
    if not column:
        return pd.DataFrame()
    data = frame[axes].copy()
    data["_growth"] = frame[column].to_numpy(dtype=float)
    rows = []
    for key, part in _cells(data, axes):
        row = {**key, **_mean_interval(part["_growth"])}
        if row["n"] == 0:
            continue
        if row["n"] < 2:
            reading = "n = 1: no interval"
        elif row["ci_low"] > 1.0:
            reading = "grows back in time"
        elif row["ci_high"] < 1.0:
            reading = "decays back in time"
        else:
            reading = "not distinguishable from 1"
        rows.append({**row, "reading": reading})
    return pd.DataFrame(rows)


def cost_table(frame: pd.DataFrame, axes: list[str] | None = None) -> pd.DataFrame:
    """Each cell's objective beside what it costs, and whether it is on a Pareto front.

    Storage costs (``bits_per_weight``, ``packed_bytes``, ``state_mem_mb``) are the same in every
    run of a cell and shown as the mean; ``step_ms`` is a timing, noisy on a shared machine, so
    the cell's median over runs, and ``step_ratio`` is that median over the baseline's (the runs
    matching ``frame.attrs["baseline"]`` at the same levels of the other axes). ``front_<cost>``
    says whether the cell is on the Pareto front of the objective's mean against that cost (lower
    cost, better objective: no other cell is at least as good on both and better on one).

    Returns:
        Columns: the axes, ``n``, ``mean``, ``ci_low``, ``ci_high`` (the objective, 95%
        t-interval over runs), then each cost in :data:`COSTS` that the runs have, ``step_ratio``
        (with ``step_ms``) and ``front_<cost>`` for ``packed_bytes`` and ``step_ms``.
        ``attrs["objective"]``. Empty (no columns) when the runs have no objective or no cost.
    """
    axes = _axes(frame, axes)
    lookup = _column(frame)
    objective = frame.attrs.get("objective")
    column = lookup(objective) if objective else None
    costs = {c: lookup(c) for c in COSTS if lookup(c)}
    if not column or not costs:
        return pd.DataFrame()
    data = frame[axes].copy()
    data["_y"] = frame[column].to_numpy(dtype=float)
    for cost, col in costs.items():
        data[cost] = frame[col].to_numpy(dtype=float)
    rows = []
    for key, part in _cells(data, axes):
        row = {**key, **_mean_interval(part["_y"])}
        for cost in costs:
            values = part[cost].dropna()
            row[cost] = float(values.median() if cost == "step_ms" else values.mean()) \
                if len(values) else np.nan
        rows.append(row)
    table = pd.DataFrame(rows)
    if "step_ms" in costs:
        table["step_ratio"] = _step_ratio(frame, data, table, axes)
    direction = frame.attrs.get("direction") or "minimize"
    for cost in ("packed_bytes", "step_ms"):
        if cost in table.columns:
            table[f"front_{cost}"] = pareto_mask(table[cost], table["mean"], direction)
    table.attrs["objective"] = objective
    return table


def interaction_table(frame: pd.DataFrame, axes: list[str] | None = None) -> pd.DataFrame:
    """How each method's gap to the baseline moves from the lowest to the highest level of each
    numeric axis: an interaction contrast, paired by seed, with its 95% t-interval.

    For a numeric axis A (not a baseline key) and a hue level h (the baseline's other value, e.g.
    each method against ``method = fp``), with the other axes O held at one level o, seed s:
    ``gap(h, a, o, s) = y(h, a, o, s) - y(baseline, a, o, s)`` and the contrast is
    ``gap(h, max A, o, s) - gap(h, min A, o, s)``; < 0 means the gap shrinks as A grows (for a
    lower-is-better objective). The row with O = ``"all"`` averages each seed's contrasts over
    the levels of O first, so it asks whether the gap moves along A on average over the design.

    Returns:
        Columns: ``axis``, ``from``, ``to``, the hue column, ``over`` (the levels of O, or
        ``"all"``), ``n`` (seeds with all four values), ``mean``, ``ci_low``, ``ci_high``.
        Empty (no columns) when the study has no baseline over one hue axis or no numeric axis
        crossed with every hue level.
    """
    axes = _axes(frame, axes)
    baseline = frame.attrs.get("baseline") or {}
    objective = frame.attrs.get("objective")
    column = _column(frame)(objective) if objective else None
    if len(baseline) != 1 or not column or "seed" not in frame.columns:
        return pd.DataFrame()
    (hue, base_level), = baseline.items()
    if hue not in axes:
        return pd.DataFrame()
    rows = []
    for axis in axes:
        if axis == hue:
            continue
        levels = pd.to_numeric(frame[axis], errors="coerce")
        if levels.isna().any() or levels.nunique() < 2:
            continue  # not numeric, or conditional (missing for some methods)
        others = [a for a in axes if a not in (hue, axis)]
        data = frame[[hue, *others, "seed"]].copy()
        data["_a"], data["_y"] = levels.to_numpy(dtype=float), frame[column].to_numpy(dtype=float)
        low, high = data["_a"].min(), data["_a"].max()
        index = [hue, *others, "seed"]
        y = {a: data[data["_a"] == a].set_index(index)["_y"] for a in (low, high)}
        if any(v.index.duplicated().any() for v in y.values()):
            continue  # several runs per seed and cell: not a paired design
        base = {a: v.xs(base_level, level=hue) for a, v in y.items()}
        for level in in_grid_order(data, [hue])[hue].unique():
            if level == base_level:
                continue
            try:
                gaps = {a: (y[a].xs(level, level=hue) - base[a]).dropna() for a in (low, high)}
            except KeyError:
                continue
            contrast = (gaps[high] - gaps[low]).dropna()
            if contrast.empty:
                continue
            groups = [((), contrast)] if not others else [
                *contrast.groupby(level=others, sort=True),
                (("all",), contrast.groupby(level="seed").mean())]
            for key, part in groups:
                key = key if isinstance(key, tuple) else (key,)
                over = "all" if key == ("all",) or not others else \
                    ", ".join(f"{a}={v}" for a, v in zip(others, key, strict=True))
                rows.append({"axis": axis, "from": _plain(low), "to": _plain(high), hue: level,
                             "over": over, **_mean_interval(pd.Series(part.to_numpy().round(10)))})
    table = pd.DataFrame(rows)
    table.attrs.update(hue=hue, baseline=base_level, objective=objective)
    return table


def _step_ratio(frame: pd.DataFrame, data: pd.DataFrame, table: pd.DataFrame,
                axes: list[str]) -> np.ndarray:
    """Each cell's median step over the baseline's at the same levels of the other axes."""
    baseline = frame.attrs.get("baseline") or {}
    if not baseline or any(k not in frame.columns for k in baseline):
        return np.full(len(table), np.nan)
    match = np.ones(len(frame), dtype=bool)
    for k, v in baseline.items():
        match &= (frame[k] == v).to_numpy()
    others = [a for a in axes if a not in baseline]
    base = data.loc[match]
    if not others:
        ref = float(base["step_ms"].median()) if len(base) else np.nan
        return table["step_ms"].to_numpy() / ref
    medians = base.groupby(others, dropna=False)["step_ms"].median()
    keys = [tuple(row) if len(others) > 1 else row[0] for row in table[others].itertuples(index=False)]
    return np.array([s / medians.get(k, np.nan) for s, k in zip(table["step_ms"], keys, strict=True)])


def _plain(x: float) -> float | int:
    return int(x) if float(x).is_integer() else float(x)


# --- helpers -------------------------------------------------------------------------------------


def _mean_interval(values: pd.Series) -> dict:
    """``n``, ``mean`` and the 95% t-interval of the finite values (NaN bounds when n < 2)."""
    x = values.to_numpy(dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return {"n": 0, "mean": np.nan, "ci_low": np.nan, "ci_high": np.nan}
    low, high, _ = t_interval(x)
    return {"n": len(x), "mean": float(x.mean()), "ci_low": float(low), "ci_high": float(high)}


def _axes(frame: pd.DataFrame, axes: list[str] | None) -> list[str]:
    chosen = list(axes) if axes is not None else list(frame.attrs.get("axes") or [])
    return [a for a in chosen if a in frame.columns]


def _column(frame: pd.DataFrame):
    """A lookup: metric name -> its column in ``frame`` if any run has a value, else None."""
    columns = frame.attrs.get("metric_columns") or {}

    def lookup(name: str) -> str | None:
        col = columns.get(name, name if name in frame.columns else None)
        return col if col in frame.columns and frame[col].notna().any() else None

    return lookup


def _objective_stem(frame: pd.DataFrame) -> str:
    objective = frame.attrs.get("objective") or ""
    return objective.removeprefix("best_val_").removeprefix("test_").removeprefix("val_")


def _cells(data: pd.DataFrame, axes: list[str]):
    """(axis -> value, rows) per cell, in the grid's level order; the whole frame without axes."""
    if not axes:
        yield {}, data
        return
    for key, part in in_grid_order(data, axes).groupby(axes, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        yield dict(zip(axes, key, strict=True)), part
