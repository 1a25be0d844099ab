"""Per-cell evidence tables: scores against the reference floors, divergence, gradient growth.

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
from analysis.stats import in_grid_order

__all__ = [
    "UNDERTRAINED",
    "bptt_growth_table",
    "divergence_table",
    "floor_references",
    "floor_table",
]

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
