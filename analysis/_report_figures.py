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

from analysis import _diagnostic_plots as diag_plots
from analysis import plots
from analysis._evidence import floor_references
from analysis._plotstyle import unit
from analysis._render import fmt_number as num
from analysis._render import fmt_p as _p
from analysis.runs import metric_names
from analysis.stats import mean_ci, paired_bootstrap

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
    profiles: pd.DataFrame | None = None  # load_bptt_profiles(frame), when runs have profiles

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
    prefixes = ("grad_norm/", "grad_norm_raw/", "alpha/", "spectral_whole/")
    wanted += [p for p in prefixes if metric_names(frame, p)]
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
            f"Points are the mean {d.objective} over runs with 95% t-intervals over "
            f"{_seeds(d.frame, keys)}{pooled}; the "
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
    references = floor_references(d.frame, d.val_metric)
    diag_plots.draw_floor_lines(fig.axes[0], references)
    data = d.curves[d.curves["metric"] == d.val_metric]
    last = int(data["step"].max())
    at_last = data[data["step"] == last]
    lower = _lower_is_better(d, d.val_metric)
    best = _best_group(d, at_last, [d.hue], "value", lower)
    worst = _best_group(d, at_last, [d.hue], "value", not lower)
    caption = (
        f"Lines are the mean {d.val_metric} per epoch with 95% t-interval bands over "
        f"{_seeds(data, [d.hue, 'step'])}"
        f"{_pooled(d.axes, [d.hue])}; at epoch {last} the best is {best['key'][0]} with "
        f"{_value_ci(best, d.val_metric)} and the worst {worst['key'][0]} with "
        f"{_value_ci(worst, d.val_metric)}{_floor_text(references, d.val_metric)}."
    )
    return [("learning-curves", fig, caption, f"{d.val_metric} per epoch")]


def _fig_grad_norm(d: StudyData) -> list[FigureItem]:
    raw = d.curves is not None and d.curves["metric"].str.startswith("grad_norm_raw/").any()
    prefix = "grad_norm_raw/" if raw else "grad_norm/"
    last, per_hue = _layer_summary(d, prefix, log=True)
    draw = diag_plots.raw_grad_norm_curves if raw else plots.grad_norm_curves
    fig = draw(d.curves, d.hue, hue_order=d.hue_order, n_boot=d.plot_boot, seed=d.seed)
    hi, lo = per_hue.iloc[-1], per_hue.iloc[0]
    what = ("raw gradient norm (no clipping of any kind)" if raw
            else "gradient norm as the optimizer received it (after any clipping)")  # fmt: skip
    caption = (
        f"Each panel is one layer's mean {what} per epoch (log scale, 95% t-interval bands over "
        f"{_seeds(_curve_rows(d, prefix), [d.hue, 'metric', 'step'])}); at "
        f"epoch {last}, averaged over layers (geometric mean over runs), {hi['key']} has the "
        f"largest norm, "
        f"{_value_ci(hi, prefix)}, and {lo['key']} the smallest, {num(lo['mean'])}: "
        f"{num(hi['mean'] / lo['mean'], 2)} times less{_received_text(d, last) if raw else ''}."
    )
    return [("grad-norm", fig, caption, f"{what} per layer and epoch")]


def _fig_alpha(d: StudyData) -> list[FigureItem]:
    last, per_hue = _layer_summary(d, "alpha/")
    fig = plots.alpha_trajectories(d.curves, d.hue, hue_order=d.hue_order, n_boot=d.plot_boot,
                                   seed=d.seed)  # fmt: skip
    hi, lo = per_hue.iloc[-1], per_hue.iloc[0]
    caption = (
        f"Each panel is one layer's scale alpha per epoch (95% t-interval bands over "
        f"{_seeds(_curve_rows(d, 'alpha/'), [d.hue, 'metric', 'step'])}); at epoch {last}, "
        f"averaged over layers, alpha ranges from {num(lo['mean'])} ({lo['key']}) to "
        f"{num(hi['mean'])} ({hi['key']}, 95% CI {num(hi['ci_low'])} to {num(hi['ci_high'])})."
    )
    return [("alpha", fig, caption, "alpha per layer and epoch")]


def _fig_spectral(d: StudyData) -> list[FigureItem]:
    if d.curves is None or not d.curves["metric"].str.startswith("spectral_whole/").any():
        raise Skip("no spectral_whole/ metrics (no recurrent layers, or runs recorded before the "
                   "whole-matrix norm was logged)")  # fmt: skip
    last, per_hue = _layer_summary(d, "spectral_whole/")
    fig = diag_plots.spectral_whole_curves(d.curves, d.hue, hue_order=d.hue_order,
                                           n_boot=d.plot_boot, seed=d.seed)  # fmt: skip
    hi, lo = per_hue.iloc[-1], per_hue.iloc[0]
    caption = (
        "Each panel is the largest singular value of one whole 4H x H recurrent matrix as the "
        "forward pass uses it (w_hat for quantized methods, the weight for full precision), "
        f"mean per epoch with 95% t-interval bands over "
        f"{_seeds(_curve_rows(d, 'spectral_whole/'), [d.hue, 'metric', 'step'])}; at epoch {last}, "
        "averaged over matrices, it ranges "
        f"from {num(lo['mean'])} for {lo['key']} to {_value_ci(hi, 'spectral norm')} for "
        f"{hi['key']}. Proposition 3.2's bound alpha*sqrt(H) holds for every +-1 matrix by "
        "construction, so it is not drawn."
    )
    return [("spectral-norm", fig, caption, "spectral norm of each whole recurrent matrix per epoch")]


def _fig_bptt(d: StudyData) -> list[FigureItem]:
    if d.profiles is None or d.profiles.empty or d.hue is None:
        raise Skip("no bptt/epoch-<e>.json profiles (no LSTM, or runs recorded before profiles)")
    by = [a for a in d.axes if a != d.hue and d.profiles[a].nunique(dropna=False) > 1]
    profiles = d.profiles.copy()
    profiles.attrs["levels"] = d.frame.attrs.get("levels") or {}
    fig = diag_plots.bptt_profile_plot(profiles, d.hue, hue_order=d.hue_order, by=by)
    per_run = d.profiles.drop_duplicates("run_id")
    growth = per_run.groupby(d.hue, sort=True)["bptt_growth"].mean().sort_values(kind="stable")
    epochs = sorted(per_run["epoch"].unique())
    at = f"epoch {epochs[0]}" if len(epochs) == 1 else f"epochs {epochs[0]} to {epochs[-1]}"
    caption = (
        "Lines are the mean over seeds of the norm of the gradient of the last time step's loss "
        "with respect to the top LSTM layer's hidden state h_t, on a fixed held-out batch without "
        f"clipping, at each run's last profiled {at} (log scale; thin lines are single seeds); "
        f"the mean bptt_growth (median over t of the step-to-step ratio going back in time, > 1 "
        f"means growth) ranges from {num(growth.iloc[0])} ({growth.index[0]}) to "
        f"{num(growth.iloc[-1])} ({growth.index[-1]}) over {len(per_run)} runs."
    )
    return [("bptt-profile", fig, caption, "gradient norm through time per method")]


def _fig_pareto(d: StudyData) -> list[FigureItem]:
    if not d.column or d.direction is None or d.hue is None:
        raise Skip("no objective or direction")
    items = []
    for cost in ("bits_per_weight", "packed_bytes", "step_ms"):
        column = (d.frame.attrs.get("metric_columns") or {}).get(cost)
        if column is None or d.frame[column].isna().all():
            continue
        by = list(dict.fromkeys([*d.axes, d.hue]))
        fig = plots.pareto_plot(d.frame, d.column, column, d.hue, direction=d.direction, by=by,
                                hue_order=d.hue_order)  # fmt: skip
        configs = plots.pareto_configs(d.frame, d.column, column, by, d.direction)
        front = configs[configs["on_front"]]
        listed = "; ".join(
            ", ".join(f"{k}={row[k]}" for k in by)
            + f" at {num(row[column])} {unit(cost) or cost} and {num(row[d.column])}"
            + (f" {unit(d.objective)}" if unit(d.objective) else "")
            for row in front.sort_values(column).to_dict("records")
        )
        stat = "means over seeds"
        if plots.is_timing(cost):
            stat = (f"mean {d.objective} and median {cost} over seeds (bars: fastest to slowest "
                    "seed; timings on a shared machine are noisy, so read the front as a rough "
                    "guide)")  # fmt: skip
        caption = (
            f"Large markers are configuration {stat} and the ringed ones form the "
            f"Pareto front of {d.objective} against {cost}: {len(front)} of {len(configs)} "
            f"configurations ({listed})."
        )
        items.append((f"pareto-{cost}", fig, caption, f"{d.objective} against {cost}"))
    if not items:
        raise Skip("no bits_per_weight, packed_bytes or step_ms metric in the runs")
    return items


FIGURES = (
    ("Objective by configuration", _fig_points),
    ("Degradation against the baseline", _fig_heatmap),
    ("Learning curves", _fig_learning),
    ("Gradient norms", _fig_grad_norm),
    ("Scale alpha", _fig_alpha),
    ("Spectral norm of recurrent matrices", _fig_spectral),
    ("Gradients through time", _fig_bptt),
    ("Pareto fronts", _fig_pareto),
)
"""(section title, builder) in report order."""


# --- helpers -------------------------------------------------------------------------------------


def _layer_summary(d: StudyData, prefix: str, *, log: bool = False) -> tuple[int, pd.DataFrame]:
    """Per hue level: mean over layers per run at the last epoch, then mean and CI over runs
    (with ``log``, of log10 of the positive per-run values, returned as powers of ten: the
    geometric mean and its interval, for norms that span orders of magnitude across seeds).

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
    log = log and bool((per_run["value"] > 0).all())
    rows = []
    for key, part in per_run.groupby(d.hue, sort=True):
        values = np.log10(part["value"]) if log else part["value"]
        row = {"key": key, **mean_ci(values, n_boot=d.n_boot, seed=d.seed)}
        if log:
            row.update({k: 10.0 ** row[k] for k in ("mean", "ci_low", "ci_high")})
        rows.append(row)
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


def _floor_text(references: dict[str, list[float]], metric: str) -> str:
    """``; dotted lines: the bigram floor 1.73 nats and ...`` for the learning-curve caption."""
    if not references:
        return ""
    u = unit(metric)
    parts = [f"the {name} floor {' and '.join(num(v) for v in values)}" + (f" {u}" if u else "")
             for name, values in references.items()]  # fmt: skip
    return f"; dotted lines are {', '.join(parts)} of the runs' test split (counted on training data)"


def _received_text(d: StudyData, last: int) -> str:
    """``; what the optimizer received (grad_norm/) was at most 0.01 of it (bc)`` at ``last``."""
    c = d.curves
    at = c[(c["step"] == last) & c["metric"].str.startswith(("grad_norm/", "grad_norm_raw/"))]
    if not at["metric"].str.startswith("grad_norm/").any():
        return ""
    at = at.assign(layer=at["metric"].str.split("/", n=1).str[1],
                   kind=at["metric"].str.split("/", n=1).str[0])  # fmt: skip
    wide = at.pivot_table(index=["run_id", "layer", d.hue], columns="kind", values="value").dropna()
    if wide.empty or "grad_norm" not in wide or "grad_norm_raw" not in wide:
        return ""
    ratio = (wide["grad_norm"] / wide["grad_norm_raw"]).groupby(level=d.hue).mean().sort_values()
    return (f"; the gradient the optimizer received (grad_norm/, after clipping) was on average "
            f"{num(ratio.iloc[0])} of the raw one for {ratio.index[0]} and {num(ratio.iloc[-1])} "
            f"for {ratio.index[-1]}")  # fmt: skip


def _curve_rows(d: StudyData, prefix: str) -> pd.DataFrame:
    return d.curves[d.curves["metric"].str.startswith(prefix)]


def _seeds(data: pd.DataFrame, keys: list[str]) -> str:
    """``n = 2 seeds`` or ``n = 2 to 3 seeds``: the rows behind each drawn interval.

    They are "runs" instead when a group pools several runs of one seed (other axes pooled).
    """
    grouped = data.groupby([k for k in keys if k], sort=False, dropna=False)
    counts = grouped.size()
    lo, hi = (int(counts.min()), int(counts.max())) if len(counts) else (0, 0)
    what = "seeds" if "seed" in data and (grouped["seed"].nunique() == counts).all() else "runs"
    return f"n = {lo} {what}" if lo == hi else f"n = {lo} to {hi} {what}"


def _p_is(p: float) -> str:
    """``= 0.004`` or ``< 0.001`` (or ``n/a``), to follow a "p"."""
    text = _p(p)
    return "n/a" if text == "—" else (text if text.startswith("<") else f"= {text}")


def _pooled(axes: list[str], shown: list[str]) -> str:
    rest = [a for a in axes if a not in shown]
    return f", pooled over {', '.join(rest)}" if rest else ""
