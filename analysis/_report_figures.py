"""The report's figures: which ones the study's data supports, and each one's computed caption.

Each ``_fig_*`` builder returns a list of (file stem, Figure, caption, alt text) or raises
:class:`Skip` with the reason the figure cannot be drawn (no recurrent layers, a single axis...).
Captions are one sentence naming what the figure shows and the statistic behind it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis import plots
from analysis._plotstyle import unit
from analysis._render import fmt_number as num
from analysis._render import fmt_p as _p
from analysis.runs import metric_names
from analysis.stats import mean_ci, paired_bootstrap, pareto_mask

__all__ = ["FIGURES", "Skip", "StudyData", "pick_curve_metrics"]

logger = logging.getLogger(__name__)

FigureItem = tuple[str, Figure, str, str]


class Skip(Exception):
    """A figure the data cannot support; the message says why."""


@dataclass
class StudyData:
    """What the figure builders read (filled by the report)."""

    frame: pd.DataFrame
    objective: str | None  # metric name
    column: str | None  # its column in frame
    direction: str | None
    baseline: dict
    axes: list[str]
    hue: str | None  # the axis drawn as colours
    hue_order: list
    degradation: pd.DataFrame | None
    curves: pd.DataFrame | None
    val_metric: str | None
    n_boot: int  # resamples of the computed CIs (tables, captions)
    seed: int

    @property
    def plot_boot(self) -> int:
        """Resamples of the drawn CI bands: seaborn bootstraps in a Python loop, so cap it."""
        return min(self.n_boot, 1000)


def pick_curve_metrics(frame: pd.DataFrame, objective: str | None) -> tuple[str | None, list[str]]:
    """The validation metric for learning curves and every curve metric/prefix to load."""
    have = set(metric_names(frame))
    val = None
    if objective:
        stem = objective.removeprefix("best_val_").removeprefix("test_").removeprefix("val_")
        if f"val_{stem}" in have:
            val = f"val_{stem}"
    val = val or next((m for m in ("val_xent", "val_acc", "val_err", "val_loss") if m in have), None)
    wanted = [val] if val else []
    wanted += [p for p in ("grad_norm/", "alpha/", "spectral/", "spectral_bound/") if metric_names(frame, p)]
    return val, wanted


def _fig_points(d: StudyData) -> list[FigureItem]:
    if not d.column or not d.axes:
        raise Skip("no objective or no axes")
    xs = [a for a in d.axes if a != d.hue] or [d.hue]
    items = []
    for x in xs:
        hue = d.hue if x != d.hue else None
        fig = plots.point_plot(
            d.frame, d.column, x, hue, hue_order=d.hue_order if hue else None,
            n_boot=d.plot_boot, seed=d.seed,
        )  # fmt: skip
        keys = [k for k in (hue, x) if k]
        best = _best_group(d, d.frame, keys, d.column, _lower_is_better(d, d.objective))
        where = ", ".join(f"{k}={v}" for k, v in zip(keys, best["key"], strict=True))
        pooled = _pooled(d.axes, keys)
        caption = (
            f"Points are the mean {d.objective} over runs with 95% bootstrap CIs{pooled}; the "
            f"best is {where}: {_value_ci(best, d.objective)}."
        )
        items.append((f"points-{x}", fig, caption, f"{d.objective} by {x}"))
    return items


def _fig_heatmap(d: StudyData) -> list[FigureItem]:
    if d.degradation is None or d.degradation.empty:
        raise Skip("no paired degradation (no objective, baseline or baseline runs)")
    y = next((a for a in d.baseline if a in d.axes), None)
    x = next((a for a in d.axes if a not in d.baseline), None)
    if y is None or x is None:
        raise Skip("the heatmap needs the baseline's axis and one other axis")
    fig = plots.degradation_heatmap(d.degradation, x, y)
    boot = paired_bootstrap(d.degradation, by=[y, x], n_boot=d.n_boot, seed=d.seed)
    boot = boot.dropna(subset=["mean"]).rename(columns={"n_seeds": "n"})
    worst = boot.loc[boot["mean"].idxmax()]
    base = ", ".join(f"{k}={v}" for k, v in d.baseline.items())
    caption = (
        f"Each cell is the mean paired degradation of {d.objective} against the baseline {base} "
        f"(> 0 is worse){_pooled(d.axes, [x, y])}; the largest is {y}={worst[y]}, {x}={worst[x]}: "
        f"{_value_ci(worst, d.objective)}, Holm p {_p_is(worst['p_holm'])}."
    )
    return [(f"degradation-{y}-{x}", fig, caption, f"mean degradation over {y} and {x}")]


def _fig_learning(d: StudyData) -> list[FigureItem]:
    if d.curves is None or not d.val_metric or d.hue is None:
        raise Skip("no validation metric curves in the runs")
    fig = plots.learning_curves(
        d.curves, d.val_metric, d.hue, hue_order=d.hue_order, n_boot=d.plot_boot, seed=d.seed
    )
    data = d.curves[d.curves["metric"] == d.val_metric]
    last = int(data["step"].max())
    at_last = data[data["step"] == last]
    lower = _lower_is_better(d, d.val_metric)
    best = _best_group(d, at_last, [d.hue], "value", lower)
    worst = _best_group(d, at_last, [d.hue], "value", not lower)
    caption = (
        f"Lines are the mean {d.val_metric} per epoch with 95% CI bands over runs"
        f"{_pooled(d.axes, [d.hue])}; at epoch {last} the best is {best['key'][0]} with "
        f"{_value_ci(best, d.val_metric)} and the worst {worst['key'][0]} with "
        f"{_value_ci(worst, d.val_metric)}."
    )
    return [("learning-curves", fig, caption, f"{d.val_metric} per epoch")]


def _fig_grad_norm(d: StudyData) -> list[FigureItem]:
    last, per_hue = _layer_summary(d, "grad_norm/")
    fig = plots.grad_norm_curves(d.curves, d.hue, hue_order=d.hue_order, n_boot=d.plot_boot,
                                 seed=d.seed)  # fmt: skip
    hi, lo = per_hue.iloc[-1], per_hue.iloc[0]
    caption = (
        f"Each panel is one layer's mean gradient norm per epoch (log scale, 95% CI bands); at "
        f"epoch {last}, averaged over layers, {hi['key']} has the largest norm, "
        f"{_value_ci(hi, 'grad_norm/')}, and {lo['key']} the smallest, {num(lo['mean'])}: "
        f"{num(hi['mean'] / lo['mean'], 2)} times less."
    )
    return [("grad-norm", fig, caption, "gradient norm per layer and epoch")]


def _fig_alpha(d: StudyData) -> list[FigureItem]:
    last, per_hue = _layer_summary(d, "alpha/")
    fig = plots.alpha_trajectories(d.curves, d.hue, hue_order=d.hue_order, n_boot=d.plot_boot,
                                   seed=d.seed)  # fmt: skip
    hi, lo = per_hue.iloc[-1], per_hue.iloc[0]
    caption = (
        f"Each panel is one layer's scale alpha per epoch (95% CI bands); at epoch {last}, "
        f"averaged over layers, alpha ranges from {num(lo['mean'])} ({lo['key']}) to "
        f"{num(hi['mean'])} ({hi['key']}, 95% CI {num(hi['ci_low'])} to {num(hi['ci_high'])})."
    )
    return [("alpha", fig, caption, "alpha per layer and epoch")]


def _fig_spectral(d: StudyData) -> list[FigureItem]:
    if d.curves is None or d.hue is None:
        raise Skip("no curves loaded")
    c = d.curves
    norms = c[c["metric"].str.startswith("spectral/")]
    if norms.empty:
        raise Skip("no recurrent layers (no spectral/ metrics)")
    fig = plots.spectral_norm_curves(c, d.hue, hue_order=d.hue_order, n_boot=d.plot_boot,
                                     seed=d.seed)  # fmt: skip
    bounds = c[c["metric"].str.startswith("spectral_bound/")].assign(
        metric=lambda t: "spectral/" + t["metric"].str.removeprefix("spectral_bound/")
    )
    pair = norms.merge(bounds, on=["run_id", "metric", "step"], suffixes=("", "_bound"))
    ratio = pair["value"] / pair["value_bound"]
    held = int((ratio >= 1.0 - 1e-6).sum())
    caption = (
        "Solid lines are the spectral norm of each quantized recurrent gate block, dashed lines "
        "its lower bound alpha*sqrt(H) (Prop. 3.2); the norm is at or above the bound in "
        f"{held} of {len(ratio)} (run, matrix, epoch) points, the smallest ratio being "
        f"{num(float(ratio.min()))}."
    )
    return [("spectral-norm", fig, caption, "spectral norm of recurrent matrices per epoch")]


def _fig_pareto(d: StudyData) -> list[FigureItem]:
    if not d.column or d.direction is None or d.hue is None:
        raise Skip("no objective or direction")
    items = []
    for cost in ("bits_per_weight", "step_ms"):
        column = (d.frame.attrs.get("metric_columns") or {}).get(cost)
        if column is None or d.frame[column].isna().all():
            continue
        by = list(dict.fromkeys([*d.axes, d.hue]))
        fig = plots.pareto_plot(d.frame, d.column, column, d.hue, direction=d.direction, by=by,
                                hue_order=d.hue_order)  # fmt: skip
        configs = d.frame.groupby(by, dropna=False)[[column, d.column]].mean().reset_index()
        front = configs[pareto_mask(configs[column], configs[d.column], d.direction)]
        listed = "; ".join(
            ", ".join(f"{k}={row[k]}" for k in by)
            + f" at {num(row[column])} {unit(cost) or cost} and {num(row[d.column])}"
            + (f" {unit(d.objective)}" if unit(d.objective) else "")
            for row in front.sort_values(column).to_dict("records")
        )
        caption = (
            f"Large markers are configuration means over seeds and the ringed ones form the "
            f"Pareto front of {d.objective} against {cost}: {len(front)} of {len(configs)} "
            f"configurations ({listed})."
        )
        items.append((f"pareto-{cost}", fig, caption, f"{d.objective} against {cost}"))
    if not items:
        raise Skip("no bits_per_weight or step_ms metric in the runs")
    return items


FIGURES = (
    ("Objective by configuration", _fig_points),
    ("Degradation against the baseline", _fig_heatmap),
    ("Learning curves", _fig_learning),
    ("Gradient norms", _fig_grad_norm),
    ("Scale alpha", _fig_alpha),
    ("Spectral norm of recurrent matrices", _fig_spectral),
    ("Pareto fronts", _fig_pareto),
)
"""(section title, builder) in report order."""


# --- helpers -------------------------------------------------------------------------------------


def _layer_summary(d: StudyData, prefix: str) -> tuple[int, pd.DataFrame]:
    """Per hue level: mean over layers per run at the last epoch, then mean and CI over runs.

    Returns:
        (last epoch, rows sorted by mean with ``key``, ``mean``, ``ci_low``, ``ci_high``, ``n``).
    """
    if d.curves is None or d.hue is None:
        raise Skip("no curves loaded")
    data = d.curves[d.curves["metric"].str.startswith(prefix)]
    if data.empty:
        raise Skip(f"no {prefix} metrics in the runs")
    last = int(data["step"].max())
    per_run = data[data["step"] == last].groupby(["run_id", d.hue])["value"].mean().reset_index()
    rows = [
        {"key": key, **mean_ci(part["value"], n_boot=d.n_boot, seed=d.seed)}
        for key, part in per_run.groupby(d.hue, sort=True)
    ]
    return last, pd.DataFrame(rows).sort_values("mean", kind="stable").reset_index(drop=True)


def _lower_is_better(d: StudyData, metric: str) -> bool:
    """The study's direction for the objective and its val_/best_val_ twins; else by name."""

    def stem(name: str) -> str:
        return name.removeprefix("best_val_").removeprefix("test_").removeprefix("val_")

    if d.objective and d.direction and stem(metric) == stem(d.objective):
        return d.direction == "minimize"
    return not metric.endswith("_acc")


def _best_group(d: StudyData, data: pd.DataFrame, keys: list[str], column: str, low: bool):
    """The group of ``keys`` with the lowest (``low``) or highest mean of ``column``, with CI."""
    rows = [
        {"key": key if isinstance(key, tuple) else (key,),
         **mean_ci(part[column], n_boot=d.n_boot, seed=d.seed)}
        for key, part in data.groupby(keys, sort=True, dropna=False)
    ]  # fmt: skip
    table = pd.DataFrame(rows).dropna(subset=["mean"])
    if table.empty:
        raise Skip(f"no finite {column} values")
    return table.loc[table["mean"].idxmin() if low else table["mean"].idxmax()]


def _value_ci(row, metric: str) -> str:
    """``1.23 nats (95% CI 1.20 to 1.26, n = 6)``; without a CI when there is none."""
    u = unit(metric)
    text = num(row["mean"]) + (f" {u}" if u else "")
    if np.isfinite(row["ci_low"]):
        text += f" (95% CI {num(row['ci_low'])} to {num(row['ci_high'])}, n = {row['n']})"
    else:
        text += f" (n = {row['n']}, no CI)"
    return text


def _p_is(p: float) -> str:
    """``= 0.004`` or ``< 0.001`` (or ``n/a``), to follow a "p"."""
    text = _p(p)
    return "n/a" if text == "—" else (text if text.startswith("<") else f"= {text}")


def _pooled(axes: list[str], shown: list[str]) -> str:
    rest = [a for a in axes if a not in shown]
    return f", pooled over {', '.join(rest)}" if rest else ""
