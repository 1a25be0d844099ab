"""Seaborn figures of a study: configurations, degradation, curves, diagnostics, Pareto fronts.

Every function takes a tidy frame (from :func:`analysis.load_runs`, :func:`analysis.degradation`
or :func:`analysis.load_curves`), checks first that the columns it needs are there (ValueError
naming the function and the missing columns), and returns a ``matplotlib.figure.Figure`` made
without pyplot. Colours come from seaborn's colour-blind-safe palette, intervals are 95%
bootstrap CIs over the rows (the seeds) with a fixed ``seed``, legends sit outside the data.
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
)
from analysis._plotstyle import (
    HEATMAP_CMAP,
    figure_legend,
    label,
    levels,
    new_figure,
    palette,
    require,
)
from analysis.stats import pareto_mask

__all__ = [
    "alpha_trajectories",
    "degradation_heatmap",
    "grad_norm_curves",
    "learning_curves",
    "pareto_plot",
    "point_plot",
    "save_figure",
    "spectral_norm_curves",
]

_CI = ("ci", 95)


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
    """Mean ``response`` per level of ``x`` (one line per ``hue`` level) with 95% bootstrap CIs.

    Args:
        frame: one row per run; rows of other axes at the same (x, hue) are pooled.
        response: the metric column, e.g. ``test_xent``.
        x: the axis along the horizontal, e.g. ``hidden``.
        hue: the axis drawn as colours, e.g. ``method``.
        order, hue_order: level orders (default sorted).
        n_boot, seed: the CI's bootstrap resamples and seed.

    Returns:
        The Figure.

    Raises:
        ValueError: a needed column is missing or the frame is empty.
    """
    require(frame, [response, x, *([hue] if hue else [])], "point_plot")
    fig, (ax,) = new_figure(1, panel_w=6.0, panel_h=4.2)
    x_levels = levels(frame[x], order)
    kw = {}
    if hue:
        hues = levels(frame[hue], hue_order)
        kw = {"hue": hue, "hue_order": hues, "palette": palette(hues), "dodge": 0.25}
    else:
        kw = {"color": palette([0])[0]}
    sns.pointplot(
        data=frame,
        x=x,
        y=response,
        order=x_levels,
        errorbar=_CI,
        n_boot=n_boot,
        seed=seed,
        capsize=0.08,
        ax=ax,
        **kw,
    )
    ax.set_xlabel(label(x))
    ax.set_ylabel(label(response) + ", mean and 95% CI")
    ax.set_title(f"{response} by {x}" + (f" and {hue}" if hue else ""))
    if hue:
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, title=hue)
    return fig


def degradation_heatmap(table: pd.DataFrame, x: str, y: str, *, value: str = "degradation") -> Figure:
    """Mean degradation over two axes (rows ``y``, columns ``x``), annotated, centred at 0.

    Args:
        table: a :func:`analysis.degradation` table (its attrs name the objective and baseline).
        x, y: the two axes.
        value: the column averaged in each cell.

    Returns:
        The Figure. Cells without runs are left blank.

    Raises:
        ValueError: a needed column is missing or the table is empty.
    """
    require(table, [x, y, value], "degradation_heatmap")
    objective = table.attrs.get("objective", "objective")
    grid = table.pivot_table(index=y, columns=x, values=value, aggfunc="mean", observed=False)
    grid = grid.reindex(index=levels(table[y]), columns=levels(table[x]))
    fig, (ax,) = new_figure(1, panel_w=1.2 * grid.shape[1] + 3.0, panel_h=0.7 * grid.shape[0] + 2.0)
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
        cbar_kws={"label": f"mean degradation ({unit_text}; > 0 is worse)"},
    )
    ax.set_xlabel(label(x))
    ax.set_ylabel(label(y))
    baseline = ", ".join(f"{k}={v}" for k, v in (table.attrs.get("baseline") or {}).items())
    ax.set_title(f"{objective}: mean degradation vs the baseline {baseline}".strip())
    return fig


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
    are small faint points. The front joins the configurations that no other beats on both cost
    (lower is better) and objective (per ``direction``).

    Args:
        frame: one row per run (a :func:`analysis.load_runs` frame).
        objective: the objective column.
        cost: the cost column, e.g. ``bits_per_weight`` or ``step_ms``.
        hue: the column drawn as colours.
        direction: ``minimize`` or ``maximize``; default ``frame.attrs["direction"]``.
        by: the configuration columns; default ``frame.attrs["axes"]`` (or ``[hue]``).
        hue_order: the levels of ``hue`` (default sorted), which fixes their colours.

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
    configs = runs.groupby(by, sort=True, dropna=False)[[cost, objective]].mean().reset_index()
    on_front = pareto_mask(configs[cost], configs[objective], direction)
    colours = palette(levels(frame[hue], hue_order))
    hues = [h for h in colours if h in set(runs[hue])]
    fig, (ax,) = new_figure(1, panel_w=6.4, panel_h=4.4)
    for level in hues:
        part = runs[runs[hue] == level]
        ax.scatter(part[cost], part[objective], s=10, alpha=0.3, color=colours[level], lw=0)
        mine = configs[configs[hue] == level]
        ax.scatter(mine[cost], mine[objective], s=55, color=colours[level], edgecolor="white")
    front = configs[on_front].sort_values(cost)
    ax.step(front[cost], front[objective], where="post", color="0.2", lw=1.2, zorder=1)
    ax.scatter(front[cost], front[objective], s=150, facecolor="none", edgecolor="0.1", lw=1.4)
    others = [c for c in by if c != hue]
    for row in front.to_dict("records"):
        text = ", ".join([str(row[hue]), *(f"{c}={row[c]}" for c in others)])
        ax.annotate(
            text,
            (row[cost], row[objective]),
            fontsize="x-small",
            xytext=(6, 6),
            textcoords="offset points",
        )
    positive = configs[cost].min() > 0
    if positive and configs[cost].max() / configs[cost].min() >= 8:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(label(cost))
    ax.set_ylabel(label(objective))
    better = "lower" if direction == "minimize" else "higher"
    ax.set_title(f"{objective} vs {cost}\n(better: {better} {objective}, lower {cost})")
    extra = [
        Line2D(
            [],
            [],
            color="0.2",
            marker="o",
            markerfacecolor="none",
            markersize=11,
            label="Pareto front (configuration means)",
        ),
        Line2D([], [], color="0.5", marker="o", lw=0, markersize=3, alpha=0.5, label="single runs"),
    ]
    figure_legend(fig, {h: colours[h] for h in hues}, hue, extra)
    return fig


def save_figure(fig: Figure, path_stem: str | Path) -> list[Path]:
    """Write ``fig`` as ``<path_stem>.png`` (150 dpi) and ``<path_stem>.svg``.

    Args:
        fig: a Figure from this module.
        path_stem: the file path without suffix; missing folders are created.

    Returns:
        ``[png_path, svg_path]``.
    """
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    png, svg = stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".svg")
    fig.savefig(png, dpi=150, metadata={"Software": None})
    fig.savefig(svg, metadata={"Date": None})
    return [png, svg]
