"""Figures of the run diagnostics that compare methods: raw gradients, whole-matrix spectral norms,
gradients through time, and reference floors drawn onto a curve.

Re-exported by :mod:`analysis`; the conventions of :mod:`analysis.plots` hold (columns checked
first, Figures made without pyplot, the shared palette, legends outside the panels).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis._curve_plots import layer_figure
from analysis._plotstyle import (
    MIN_FONT_PT,
    axis_levels,
    dashes,
    figure_legend,
    markers,
    new_figure,
    palette,
    require,
    styled,
)

__all__ = ["bptt_profile_plot", "draw_floor_lines", "raw_grad_norm_curves", "spectral_whole_curves"]


raw_grad_norm_curves = layer_figure(
    "raw_grad_norm_curves", "grad_norm_raw/", "Gradient norm per layer, no clipping",
    log=True, max_panels=9,
    doc="""The raw gradient norm (``grad_norm_raw/<layer>``: no clipping of any kind) per epoch.

    One panel per layer, log scale, mean over runs with 95% CI bands. Unlike ``grad_norm/`` (what
    the optimizer received, after gate or norm clipping) it shows an explosion that a clip hides.

    Raises:
        ValueError: a needed column is missing or no ``grad_norm_raw/`` metric is present.
    """,
)  # fmt: skip

spectral_whole_curves = layer_figure(
    "spectral_whole_curves", "spectral_whole/", "Spectral norm of whole recurrent matrices",
    log=False, max_panels=8,
    doc="""Spectral norm of each whole recurrent matrix (``spectral_whole/<w_hh>``) per epoch.

    The 4H x H matrix the forward pass uses: w_hat for quantized methods, the weight itself for
    full precision, so every method (fp included) is on one scale. One panel per matrix.

    Raises:
        ValueError: a needed column is missing or no ``spectral_whole/`` metric is present.
    """,
)  # fmt: skip


@styled
def bptt_profile_plot(
    profiles: pd.DataFrame,
    hue: str = "method",
    *,
    hue_order: Sequence | None = None,
    by: Sequence[str] = (),
    max_panels: int = 6,
) -> Figure:
    """||d L_T / d h_t|| against t, one line per ``hue`` level: the mean over runs (seeds).

    Thin lines of the same colour are the single runs, so the spread is visible without an
    interval that a few seeds cannot support. Each level also has its own marker and dash. Log
    scale when every norm is positive.

    Args:
        profiles: a :func:`analysis.load_bptt_profiles` frame.
        hue, hue_order: the column drawn as colours and its levels (default: the grid's order,
            ``attrs["levels"]``, else sorted).
        by: other columns; one panel per combination of their values (at most ``max_panels``).
        max_panels: draw at most this many panels (the first combinations in sorted order).

    Returns:
        The Figure.

    Raises:
        ValueError: a needed column is missing or the frame is empty.
    """
    by = [b for b in by if b != hue]
    require(profiles, ["run_id", "t", "grad_norm", hue, *by], "bptt_profile_plot")
    groups = list(profiles.groupby(by, sort=True, dropna=False)) if by else [((), profiles)]
    if by:  # panels in the grid's order of each `by` axis (frame.attrs["levels"]), not sorted
        rank = {b: {v: i for i, v in enumerate(axis_levels(profiles, b))} for b in by}
        groups.sort(key=lambda g: tuple(rank[b].get(v, len(rank[b])) for b, v in
                                        zip(by, g[0] if isinstance(g[0], tuple) else (g[0],),
                                            strict=True)))
    shown = groups[:max_panels]
    order = axis_levels(profiles, hue, hue_order)
    colours, shapes, dash = palette(order), markers(order), dashes(order)
    hues = [h for h in order if h in set(profiles[hue])]
    fig, axes = new_figure(len(shown), panel_w=4.6, panel_h=3.4)
    log = bool(np.all(profiles["grad_norm"] > 0))
    for ax, (key, part) in zip(axes, shown, strict=True):
        for level in hues:
            mine = part[part[hue] == level]
            if mine.empty:
                continue
            runs = mine.pivot_table(index="t", columns="run_id", values="grad_norm", aggfunc="mean")
            ax.plot(runs.index, runs.to_numpy(), color=colours[level], lw=0.7, alpha=0.3)
            ax.plot(runs.index, runs.mean(axis=1).to_numpy(), color=colours[level], lw=2.0,
                    linestyle=(0, dash[level]) if dash[level] else "-", marker=shapes[level],
                    markevery=max(1, len(runs) // 8), markersize=5)  # fmt: skip
        if log:
            ax.set_yscale("log")
        key = key if isinstance(key, tuple) else (key,)
        ax.set_title(", ".join(f"{b}={v}" for b, v in zip(by, key, strict=True)) or "all runs",
                     fontsize="medium")  # fmt: skip
        ax.set_xlabel("time step t (the loss is the last step's, t = T)")
        ax.set_ylabel("||d L_T / d h_t|| (L2 norm)")
    more = f" (first {len(shown)} of {len(groups)} panels)" if len(groups) > len(shown) else ""
    fig.suptitle("Gradient of the last step's loss through time\n(each run's last profiled epoch"
                 + more.replace(" (", "; ").rstrip(")") + ")")
    extra = [Line2D([], [], color="0.3", lw=2.0, label="mean over seeds"),
             Line2D([], [], color="0.3", lw=0.7, alpha=0.5, label="one seed")]  # fmt: skip
    figure_legend(fig, {h: colours[h] for h in hues}, hue, extra, shapes=shapes, line_dashes=dash)
    return fig


def draw_floor_lines(ax, references: dict[str, list[float]]) -> None:
    """Horizontal dotted reference lines, each labelled just outside the panel's right edge
    (where no curve can cover the label), in the y axis's unit.

    Args:
        ax: the panel.
        references: label -> values (e.g. ``{"bigram": [1.73]}`` from
            :func:`analysis._evidence.floor_references`); one line per value.
    """
    for name, values in references.items():
        for value in values:
            ax.axhline(value, color="0.25", lw=1.2, ls=":", zorder=1)
            ax.annotate(f"{name}\n{value:.3g}", xy=(1.0, value), xycoords=("axes fraction", "data"),
                        xytext=(4, 0), textcoords="offset points", ha="left", va="center",
                        fontsize=MIN_FONT_PT, color="0.2", annotation_clip=False)  # fmt: skip
