"""Seaborn figures of a study: configurations, degradation, curves, diagnostics, Pareto fronts.

Every function takes a tidy frame (from :func:`analysis.load_runs`, :func:`analysis.degradation`
or :func:`analysis.load_curves`), checks first that the columns it needs are there (ValueError
naming the function and the missing columns), and returns a ``matplotlib.figure.Figure`` made
without pyplot. Levels are drawn in one order, the study grid's (``frame.attrs["levels"]``, else
sorted); each level has its own colour, marker and dash (colour-blind-safe palette, see
:mod:`analysis._plotstyle`); intervals are 95% Student t-intervals over the rows (the seeds), the
tables' rule at small n (:func:`analysis._curve_plots.t_errorbar`); legends sit outside the
data; figures fit the report's width with text >= 9 px.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis._curve_plots import (
    alpha_trajectories,
    grad_norm_curves,
    learning_curves,
    spectral_norm_curves,
    t_errorbar,
)
from analysis._plotstyle import (
    DPI,
    HEATMAP_CMAP,
    MIN_FONT_PT,
    axis_levels,
    figure_legend,
    label,
    markers,
    min_font_pt,
    new_figure,
    palette,
    require,
    styled,
    unit,
)
from analysis.stats import pareto_mask

__all__ = [
    "alpha_trajectories",
    "degradation_heatmap",
    "grad_norm_curves",
    "is_timing",
    "learning_curves",
    "pareto_configs",
    "pareto_plot",
    "point_plot",
    "save_figure",
    "spectral_norm_curves",
]

MIN_FONT_KEY = "labbench.min_font_pt"  # PNG text chunk: the figure's smallest font size (points)


@styled
def point_plot(
    frame: pd.DataFrame,
    response: str,
    x: str,
    hue: str | None = None,
    *,
    order: Sequence | None = None,
    hue_order: Sequence | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> Figure:
    """Mean ``response`` per level of ``x`` (one marker per ``hue`` level) with 95% t-intervals over runs.

    The levels of ``x`` are categories: points are not joined by lines (a line would suggest
    values between levels); ``hue`` levels are dodged sideways and told apart by colour and marker.

    Args:
        frame: one row per run; rows of other axes at the same (x, hue) are pooled.
        response: the metric column, e.g. ``test_xent``.
        x: the axis along the horizontal, e.g. ``hidden``.
        hue: the axis drawn as colours and markers, e.g. ``method``.
        order, hue_order: level orders (default: the grid's, see :func:`analysis._plotstyle.axis_levels`).
        n_boot, seed: unused (kept for callers; the intervals are t-intervals, not bootstrap).

    Returns:
        The Figure.

    Raises:
        ValueError: a needed column is missing or the frame is empty.
    """
    require(frame, [response, x, *([hue] if hue else [])], "point_plot")
    fig, (ax,) = new_figure(1, panel_w=6.0, panel_h=4.2)
    x_levels = axis_levels(frame, x, order)
    if hue:
        hues = axis_levels(frame, hue, hue_order)
        shapes = markers(hues)
        kw = {"hue": hue, "hue_order": hues, "palette": palette(hues),
              "markers": [shapes[h] for h in hues], "dodge": 0.4 if len(hues) > 1 else False}  # fmt: skip
    else:
        kw = {"color": palette([0])[0], "markers": "o"}
    sns.pointplot(
        data=frame,
        x=x,
        y=response,
        order=x_levels,
        errorbar=t_errorbar,
        n_boot=n_boot,
        seed=seed,
        capsize=0.08,
        linestyle="none",  # categorical levels: no connecting lines
        ax=ax,
        **kw,
    )
    ax.set_xlabel(label(x))
    ax.set_ylabel(label(response) + ", mean and 95% t-interval")
    ax.set_title(f"{response} by {x}" + (f" and {hue}" if hue else ""))
    if hue:
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, title=hue)
    return fig


@styled
def degradation_heatmap(
    table: pd.DataFrame,
    x: str,
    y: str,
    *,
    value: str = "degradation",
    x_order: Sequence | None = None,
    y_order: Sequence | None = None,
) -> Figure:
    """Mean degradation over two axes (rows ``y``, columns ``x``), annotated, centred at 0.

    Args:
        table: a :func:`analysis.degradation` table (its attrs name the objective and baseline).
        x, y: the two axes.
        value: the column averaged in each cell.
        x_order, y_order: level orders (default: the grid's).

    Returns:
        The Figure. Cells without runs are left blank.

    Raises:
        ValueError: a needed column is missing or the table is empty.
    """
    require(table, [x, y, value], "degradation_heatmap")
    objective = table.attrs.get("objective", "objective")
    grid = table.pivot_table(index=y, columns=x, values=value, aggfunc="mean", observed=False)
    grid = grid.reindex(index=axis_levels(table, y, y_order), columns=axis_levels(table, x, x_order))
    fig, (ax,) = new_figure(1, panel_w=1.2 * grid.shape[1] + 3.0, panel_h=0.7 * grid.shape[0] + 2.0,
                            legend_w=0.0)  # fmt: skip
    unit_text = label(objective).removeprefix(objective).strip(" ()") or "objective units"
    # symmetric limits centre the diverging map at 0 (seaborn's center= trips a matplotlib
    # deprecation of Colormap.set_bad)
    reach = float(np.nanmax(np.abs(grid.to_numpy(dtype=float)))) if grid.notna().any().any() else 1.0
    sns.heatmap(
        grid,
        annot=True,
        fmt=".3g",
        cmap=HEATMAP_CMAP,
        vmin=-reach,
        vmax=reach,
        linewidths=0.5,
        ax=ax,
        annot_kws={"fontsize": 10},
        cbar_kws={"label": f"mean degradation ({unit_text}; > 0 is worse)"},
    )
    ax.set_xlabel(label(x))
    ax.set_ylabel(label(y))
    baseline = ", ".join(f"{k}={v}" for k, v in (table.attrs.get("baseline") or {}).items())
    ax.set_title(f"{objective}: mean degradation vs the baseline {baseline}".strip())
    return fig


def is_timing(name: str) -> bool:
    """Whether a metric is a wall-clock time (``step_ms``, ``wall_s``): noisy on shared machines."""
    return unit(name) in ("ms", "s")


def pareto_configs(
    frame: pd.DataFrame, objective: str, cost: str, by: Sequence[str], direction: str
) -> pd.DataFrame:
    """One row per configuration (group of ``by``): its cost, objective and Pareto front flag.

    The objective is the mean over the configuration's runs (seeds). The cost is the mean too,
    except a timing (:func:`is_timing`), which is the median: one slow step on a busy machine
    must not move a configuration. Runs lacking either value are left out.

    Returns:
        Columns ``by``, ``cost`` (mean or median), ``<cost>_min`` and ``<cost>_max`` (the spread
        over runs), ``objective`` (mean), ``n`` (runs) and ``on_front`` (bool).
    """
    runs = frame.dropna(subset=[objective, cost])
    grouped = runs.groupby(list(by), sort=True, dropna=False)
    configs = grouped[cost].agg("median" if is_timing(cost) else "mean").to_frame()
    configs[f"{cost}_min"] = grouped[cost].min()
    configs[f"{cost}_max"] = grouped[cost].max()
    configs[objective] = grouped[objective].mean()
    configs["n"] = grouped.size()
    configs = configs.reset_index()
    configs["on_front"] = pareto_mask(configs[cost], configs[objective], direction)
    return configs


@styled
def pareto_plot(
    frame: pd.DataFrame,
    objective: str,
    cost: str,
    hue: str = "method",
    *,
    direction: str | None = None,
    by: Sequence[str] | None = None,
    hue_order: Sequence | None = None,
) -> Figure:
    """Objective against a cost (bits per weight, ms per step), with the Pareto front marked.

    Each configuration (a group of ``by``) is one large marker at its mean over seeds; the runs
    are small faint points. A timing cost (``step_ms``) is the configuration's median over seeds
    instead, with a bar from its fastest to its slowest seed: timings on a shared machine are
    noisy. The front joins the configurations that no other beats on both cost (lower is better)
    and objective (per ``direction``); see :func:`pareto_configs`.

    Args:
        frame: one row per run (a :func:`analysis.load_runs` frame).
        objective: the objective column.
        cost: the cost column, e.g. ``bits_per_weight`` or ``step_ms``.
        hue: the column drawn as colours and markers.
        direction: ``minimize`` or ``maximize``; default ``frame.attrs["direction"]``.
        by: the configuration columns; default ``frame.attrs["axes"]`` (or ``[hue]``).
        hue_order: the levels of ``hue`` (default: the grid's), which fixes their colours.

    Returns:
        The Figure.

    Raises:
        ValueError: a needed column is missing, the direction is unknown, or no run has both values.
    """
    where = "pareto_plot"
    direction = direction or frame.attrs.get("direction")
    if direction not in ("minimize", "maximize"):
        raise ValueError(f"{where}: direction must be 'minimize' or 'maximize', got {direction!r}")
    by = list(dict.fromkeys([*(by or frame.attrs.get("axes") or []), hue]))
    require(frame, [objective, cost, *by], where)
    runs = frame.dropna(subset=[objective, cost])
    if runs.empty:
        raise ValueError(f"{where}: no run has both {objective!r} and {cost!r}")
    configs = pareto_configs(frame, objective, cost, by, direction)
    timing = is_timing(cost)
    all_levels = axis_levels(frame, hue, hue_order)
    colours, shapes = palette(all_levels), markers(all_levels)
    hues = [h for h in colours if h in set(runs[hue])]
    fig, (ax,) = new_figure(1, panel_w=6.4, panel_h=4.4, legend_w=2.6)
    for level in hues:
        part = runs[runs[hue] == level]
        ax.scatter(part[cost], part[objective], s=12, alpha=0.35, color=colours[level], lw=0,
                   marker=shapes[level])  # fmt: skip
        mine = configs[configs[hue] == level]
        if timing:
            spread = [mine[cost] - mine[f"{cost}_min"], mine[f"{cost}_max"] - mine[cost]]
            ax.errorbar(mine[cost], mine[objective], xerr=spread, fmt="none", ecolor=colours[level],
                        elinewidth=1.2, capsize=3, alpha=0.8)  # fmt: skip
        ax.scatter(mine[cost], mine[objective], s=60, color=colours[level], edgecolor="white",
                   marker=shapes[level], zorder=3)  # fmt: skip
    front = configs[configs["on_front"]].sort_values(cost)
    ax.step(front[cost], front[objective], where="post", color="0.2", lw=1.2, zorder=1)
    ax.scatter(front[cost], front[objective], s=170, facecolor="none", edgecolor="0.1", lw=1.4)
    others = [c for c in by if c != hue]
    for row in front.to_dict("records"):
        text = ", ".join([str(row[hue]), *(f"{c}={row[c]}" for c in others)])
        ax.annotate(
            text,
            (row[cost], row[objective]),
            fontsize=MIN_FONT_PT,
            xytext=(6, 6),
            textcoords="offset points",
        )
    positive = configs[cost].min() > 0
    if positive and configs[cost].max() / configs[cost].min() >= 8:
        ax.set_xscale("log", base=2)
    stat = "median over seeds, bar: fastest to slowest seed" if timing else "mean over seeds"
    ax.set_xlabel(f"{label(cost)}, {stat}")
    ax.set_ylabel(label(objective) + ", mean over seeds")
    better = "lower" if direction == "minimize" else "higher"
    title = f"{objective} vs {cost}\n(better: {better} {objective}, lower {cost})"
    if timing:
        title += "\ntimings on a shared machine are noisy"
    ax.set_title(title)
    extra = [
        Line2D(
            [],
            [],
            color="0.2",
            marker="o",
            markerfacecolor="none",
            markersize=11,
            label="Pareto front\n(configurations)",
        ),
        Line2D([], [], color="0.5", marker="o", lw=0, markersize=3, alpha=0.5, label="single runs"),
    ]
    figure_legend(fig, {h: colours[h] for h in hues}, hue, extra, shapes=shapes)
    return fig


def save_figure(fig: Figure, path_stem: str | Path) -> list[Path]:
    """Write ``fig`` as ``<path_stem>.png`` (150 dpi) and ``<path_stem>.svg``.

    The PNG records its smallest font size in points as the text chunk ``labbench.min_font_pt``
    (:func:`analysis._plotstyle.min_font_pt`): with the PNG's width and dpi it gives the smallest
    text in pixels at any displayed width (the report's test checks it in a browser).

    Args:
        fig: a Figure from this module.
        path_stem: the file path without suffix; missing folders are created.

    Returns:
        ``[png_path, svg_path]``.
    """
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    png, svg = stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".svg")
    fig.savefig(png, dpi=DPI, metadata={"Software": None, MIN_FONT_KEY: f"{min_font_pt(fig):g}"})
    fig.savefig(svg, metadata={"Date": None})
    return [png, svg]
