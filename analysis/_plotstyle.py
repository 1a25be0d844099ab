"""Shared look of the analysis figures: units in labels, a colour-blind-safe palette, legends.

Figures are ``matplotlib.figure.Figure`` objects made directly, never through pyplot, so drawing
one changes no global matplotlib state (backend, current figure) in the caller's process.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

__all__ = ["figure_legend", "label", "levels", "new_figure", "palette", "require", "unit"]

# unit of a metric by its name (docs/mlflow-layout.md): the first rule that matches wins
_UNIT_RULES = (
    (lambda n: n.endswith("_xent"), "nats"),
    (lambda n: n.endswith("_bpc"), "bits per character"),
    (lambda n: n.endswith("_err"), "%"),
    (lambda n: n.endswith("_ms"), "ms"),
    (lambda n: n.endswith("_s"), "s"),
    (lambda n: n.endswith("_mb"), "MB"),
    (lambda n: n == "bits_per_weight", "bits per weight"),
    (lambda n: n == "packed_bytes", "bytes"),
    (lambda n: n.startswith(("grad_norm/", "grad_norm_max/")), "L2 norm"),
    (lambda n: n.startswith("flip_ratio/") or n == "clip_frac", "fraction"),
    (lambda n: n.startswith(("spectral/", "spectral_bound/")), "largest singular value"),
    (lambda n: n.startswith("alpha/"), "scale"),
)
PALETTE = "colorblind"  # seaborn's colour-blind-safe qualitative palette (10 colours, then cycled)
HEATMAP_CMAP = "vlag"  # diverging blue-white-red: distinguishable with red-green colour blindness


def unit(name: str) -> str | None:
    """The unit of a metric name, or None when the layout does not fix one."""
    bare = name.removeprefix("metrics.")
    for matches, text in _UNIT_RULES:
        if matches(bare):
            return text
    return None


def label(name: str, unit_text: str | None = None) -> str:
    """An axis label: the name and its unit, e.g. ``test_xent (nats)``."""
    text = unit_text if unit_text is not None else unit(name)
    return f"{name} ({text})" if text else name


def require(frame: pd.DataFrame, columns: Iterable[str], where: str) -> None:
    """Raise ValueError naming the function and the columns ``frame`` lacks."""
    missing = [c for c in dict.fromkeys(columns) if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{where}: missing column(s) {missing}; the frame has {sorted(map(str, frame.columns))}"
        )
    if frame.empty:
        raise ValueError(f"{where}: the frame has no rows")


def levels(series: pd.Series, order: Sequence | None = None) -> list:
    """The levels to draw: ``order`` if given, else the sorted distinct values."""
    if order is not None:
        return list(order)
    values = series.dropna().unique().tolist()
    return sorted(values, key=lambda v: (isinstance(v, str), v if not isinstance(v, str) else 0, str(v)))


def palette(values: Sequence) -> dict:
    """Level -> colour from the colour-blind-safe palette, stable for a given level list."""
    colours = sns.color_palette(PALETTE, n_colors=max(len(values), 1))
    return {v: colours[i] for i, v in enumerate(values)}


def new_figure(n_panels: int = 1, *, panel_w: float = 5.0, panel_h: float = 3.6, ncols: int = 3):
    """A constrained-layout Figure with ``n_panels`` axes in a grid; returns (fig, axes list)."""
    ncols = max(1, min(ncols, n_panels))
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(panel_w * ncols + 1.8, panel_h * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def figure_legend(fig: Figure, colours: dict, title: str, extra: Sequence[Line2D] = ()) -> None:
    """One legend for the whole figure, outside the panels on the right."""
    handles = [Line2D([], [], color=c, marker="o", label=str(v)) for v, c in colours.items()]
    handles += list(extra)
    fig.legend(handles=handles, title=title, loc="outside right upper", frameon=False)
