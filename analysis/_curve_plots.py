"""Figures of per-epoch curves: learning curves, gradient norms, alpha, spectral norms.

Re-exported by :mod:`analysis.plots`; the conventions there hold (columns checked first, Figures
made without pyplot, grid order, a colour, marker and dash per level, 95% t-interval bands over
seeds (:func:`t_errorbar`),
legends outside, text >= 9 px at the report's width). Figures with one panel per layer wrap
their panels into rows of at most three and put the legend below them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from analysis._intervals import t_interval
from analysis._plotstyle import (
    axis_levels,
    dashes,
    figure_legend,
    label,
    markers,
    new_figure,
    palette,
    require,
    styled,
)

__all__ = ["alpha_trajectories", "grad_norm_curves", "learning_curves", "spectral_norm_curves", "t_errorbar"]


def t_errorbar(values) -> tuple[float, float]:
    """seaborn ``errorbar=`` callable: the 95% Student t-interval of the mean of ``values``.

    The figures use the tables' small-n rule (docs/analysis.md): a bootstrap interval over 2 or 3
    seeds is far too narrow, the t-interval is exact for normal values at any n >= 2. NaN values
    are dropped; fewer than 2 values draw no interval.
    """
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) < 2:
        return np.nan, np.nan
    low, high, _ = t_interval(x, 0.95)
    return float(low), float(high)


_CI = t_errorbar
_CURVE_COLUMNS = ("run_id", "metric", "step", "value")
_PANEL = {"panel_w": 3.5, "panel_h": 2.9, "ncols": 3, "legend_w": 0.0, "legend_h": 0.9}


def _hue_style(levels: list, shown: list, hue: str) -> dict:
    """seaborn lineplot keywords: colour, marker and dash of each shown level, in grid order."""
    colours, shapes, lines = palette(levels), markers(levels), dashes(levels)
    return {
        "hue": hue, "hue_order": shown, "palette": {h: colours[h] for h in shown},
        "style": hue, "style_order": shown, "markers": {h: shapes[h] for h in shown},
        "dashes": {h: lines[h] for h in shown},
    }  # fmt: skip


def _legend(fig: Figure, levels: list, shown: list, hue: str, extra=(), *, below: bool) -> None:
    colours, shapes, lines = palette(levels), markers(levels), dashes(levels)
    figure_legend(fig, {h: colours[h] for h in shown}, hue, extra, shapes=shapes, line_dashes=lines,
                  below=below)  # fmt: skip


@styled
def learning_curves(
    curves: pd.DataFrame,
    metric: str,
    hue: str = "method",
    *,
    hue_order: Sequence | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> Figure:
    """``metric`` against epoch, one line per ``hue`` level: mean over runs with a 95% t-interval band.

    Args:
        curves: a :func:`analysis.load_curves` frame holding ``metric``.
        metric: e.g. ``val_xent``.
        hue: the column drawn as colours.
        hue_order: its levels (default: the grid's order, else sorted, of the whole ``curves``
            frame, so colours, markers and dashes agree between figures drawn from one frame).
        n_boot, seed: unused (kept for callers; the bands are t-intervals, not bootstrap).

    Returns:
        The Figure.

    Raises:
        ValueError: a needed column is missing, or ``metric`` has no rows.
    """
    require(curves, [*_CURVE_COLUMNS, hue], "learning_curves")
    data = curves[curves["metric"] == metric]
    if data.empty:
        raise ValueError(f"learning_curves: no rows for metric {metric!r}")
    every = axis_levels(curves, hue, hue_order)
    hues = [h for h in every if h in set(data[hue])]
    fig, (ax,) = new_figure(1, panel_w=6.0, panel_h=4.2)
    sns.lineplot(
        data=data,
        x="step",
        y="value",
        errorbar=_CI,
        n_boot=n_boot,
        seed=seed,
        ax=ax,
        legend=False,
        **_hue_style(every, hues, hue),
    )
    _epoch_axis(ax)
    ax.set_ylabel(label(metric) + ", mean and 95% t-interval")
    ax.set_title(f"Learning curves: {metric}")
    _legend(fig, every, hues, hue, below=False)
    return fig


def layer_figure(name: str, prefix: str, title: str, *, log: bool, max_panels: int, doc: str):
    """Make the figure function ``name`` with one panel per ``<prefix><layer>`` metric.

    The per-layer figures differ only in the metric prefix, the title, the y scale and how many
    panels they show by default, so their one signature is written once, here::

        name(curves, hue="method", *, hue_order=None, max_panels=max_panels, n_boot=1000, seed=0)

    It draws with :func:`_layer_panels`; its errors start with ``name``, ``doc`` is its docstring.
    The function is returned unstyled: wrap it in :func:`styled` for the analysis font sizes.
    """

    def figure(
        curves: pd.DataFrame,
        hue: str = "method",
        *,
        hue_order: Sequence | None = None,
        max_panels: int = max_panels,
        n_boot: int = 1000,
        seed: int = 0,
    ) -> Figure:
        return _layer_panels(curves, prefix, hue, name, title, log=log, hue_order=hue_order,
                             max_panels=max_panels, n_boot=n_boot, seed=seed)  # fmt: skip

    figure.__name__ = figure.__qualname__ = name
    figure.__doc__ = doc
    return figure


grad_norm_curves = styled(layer_figure(
    "grad_norm_curves", "grad_norm/", "Gradient norm per layer (before clipping)", log=True, max_panels=9,
    doc="""Gradient norm (``grad_norm/<layer>``) per epoch, one panel per layer, log scale.

    Args:
        curves: a :func:`analysis.load_curves` frame holding ``grad_norm/`` metrics.
        hue, hue_order: the column drawn as colours and its levels (as in learning_curves).
        max_panels: draw at most this many layers (the first ones by name).
        n_boot, seed: unused (kept for callers; the bands are t-intervals, not bootstrap).

    Returns:
        The Figure.

    Raises:
        ValueError: a needed column is missing or no ``grad_norm/`` metric is present.
    """,
))  # fmt: skip

alpha_trajectories = styled(layer_figure(
    "alpha_trajectories", "alpha/", "Scale alpha per layer", log=False, max_panels=9,
    doc="""The scale alpha (``alpha/<layer>``) per epoch, one panel per layer.

    Args:
        curves: a :func:`analysis.load_curves` frame holding ``alpha/`` metrics.
        hue, hue_order: the column drawn as colours and its levels (as in learning_curves).
        max_panels: draw at most this many layers (the first ones by name).
        n_boot, seed: unused (kept for callers; the bands are t-intervals, not bootstrap).

    Returns:
        The Figure.

    Raises:
        ValueError: a needed column is missing or no ``alpha/`` metric is present.
    """,
))  # fmt: skip


@styled
def spectral_norm_curves(
    curves: pd.DataFrame,
    hue: str = "method",
    *,
    hue_order: Sequence | None = None,
    max_panels: int = 8,
    n_boot: int = 1000,
    seed: int = 0,
) -> Figure:
    """Spectral norm of each quantized recurrent gate block per epoch, with its lower bound.

    Lines with markers (95% t-interval band) are ``spectral/<layer>.<gate>``; thick faint lines of the same
    colour are the mean ``spectral_bound/<layer>.<gate>`` = alpha * sqrt(H), Proposition 3.2's
    lower bound for alpha times an H x H matrix of +-1. Panels wrap three to a row.

    Args:
        curves: a :func:`analysis.load_curves` frame holding ``spectral/`` and
            ``spectral_bound/`` metrics.
        hue, hue_order: the column drawn as colours and its levels (as in learning_curves).
        max_panels: draw at most this many matrices (the first ones by name).
        n_boot, seed: unused (kept for callers; the bands are t-intervals, not bootstrap).

    Returns:
        The Figure.

    Raises:
        ValueError: a needed column is missing, no ``spectral/`` metric is present, or a spectral
            metric has no matching ``spectral_bound/`` metric.
    """
    where = "spectral_norm_curves"
    require(curves, [*_CURVE_COLUMNS, hue], where)
    names = sorted(m for m in curves["metric"].unique() if m.startswith("spectral/"))
    if not names:
        raise ValueError(f"{where}: no 'spectral/' metric in the curves")
    bounds = set(curves["metric"].unique())
    lacking = [m for m in names if "spectral_bound/" + m.removeprefix("spectral/") not in bounds]
    if lacking:
        raise ValueError(f"{where}: no spectral_bound/ metric for {lacking}")
    names = names[:max_panels]
    every = axis_levels(curves, hue, hue_order)
    hues = [h for h in every if h in set(curves.loc[curves["metric"].isin(names), hue])]
    colours = palette(every)
    fig, axes = new_figure(len(names), **_PANEL)
    for ax, name in zip(axes, names, strict=True):
        matrix = name.removeprefix("spectral/")
        data = curves[curves["metric"] == name]
        sns.lineplot(
            data=data,
            x="step",
            y="value",
            errorbar=_CI,
            n_boot=n_boot,
            seed=seed,
            ax=ax,
            legend=False,
            **_hue_style(every, hues, hue),
        )
        bound = curves[curves["metric"] == "spectral_bound/" + matrix]
        for level, part in bound.groupby(hue, sort=True):
            mean = part.groupby("step")["value"].mean()
            ax.plot(mean.index, mean.to_numpy(), color=colours[level], lw=3.5, alpha=0.3,
                    solid_capstyle="butt")  # fmt: skip
        ax.set_title(matrix)
        _epoch_axis(ax)
        ax.set_ylabel("largest singular value")
    fig.suptitle("Spectral norm of quantized recurrent matrices and the bound alpha*sqrt(H)")
    extra = [
        Line2D([], [], color="0.3", marker="o", label="spectral norm (mean, 95% t-interval)"),
        Line2D([], [], color="0.3", lw=3.5, alpha=0.3, label="bound alpha*sqrt(H) (Prop. 3.2)"),
    ]
    _legend(fig, every, hues, hue, extra, below=True)
    return fig


def _layer_panels(
    curves: pd.DataFrame,
    prefix: str,
    hue: str,
    where: str,
    title: str,
    *,
    log: bool,
    hue_order: Sequence | None,
    max_panels: int,
    n_boot: int,
    seed: int,
) -> Figure:
    """One panel per ``<prefix><layer>`` metric, lines per ``hue`` with 95% t-interval bands."""
    require(curves, [*_CURVE_COLUMNS, hue], where)
    names = sorted(m for m in curves["metric"].unique() if m.startswith(prefix))
    if not names:
        raise ValueError(f"{where}: no {prefix!r} metric in the curves")
    shown = names[:max_panels]
    every = axis_levels(curves, hue, hue_order)
    hues = [h for h in every if h in set(curves.loc[curves["metric"].isin(shown), hue])]
    fig, axes = new_figure(len(shown), **_PANEL)
    for ax, name in zip(axes, shown, strict=True):
        data = curves[curves["metric"] == name]
        sns.lineplot(
            data=data,
            x="step",
            y="value",
            errorbar=_CI,
            n_boot=n_boot,
            seed=seed,
            ax=ax,
            legend=False,
            **_hue_style(every, hues, hue),
        )
        if log and np.all(data["value"] > 0):
            ax.set_yscale("log")
        ax.set_title(name.removeprefix(prefix))
        _epoch_axis(ax)
        ax.set_ylabel(label(name).replace(name, prefix.rstrip("/")))
    more = f" (first {len(shown)} of {len(names)} layers)" if len(names) > len(shown) else ""
    fig.suptitle(title + more)
    _legend(fig, every, hues, hue, below=True)
    return fig


def _epoch_axis(ax) -> None:
    """Label the x axis as epochs, with whole-number ticks."""
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
