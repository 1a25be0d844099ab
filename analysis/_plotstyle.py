"""Shared look of the analysis figures: units, level order, colours with markers and dashes, size.

Figures are ``matplotlib.figure.Figure`` objects made directly, never through pyplot, so drawing
one changes no global matplotlib state (backend, current figure) in the caller's process; the
font sizes below apply only while a figure is drawn (:func:`styled`).

Size: the report shows a figure at most :data:`REPORT_WIDTH_PX` CSS pixels wide (the content
width of its page, 72rem) and scales a wider PNG down to that. A figure is at most
:data:`MAX_WIDTH_IN` inches wide and its smallest text is :data:`MIN_FONT_PT` points, so the
smallest text shows at ``MIN_FONT_PT / 72 * REPORT_WIDTH_PX / MAX_WIDTH_IN`` = 13 px or more,
above the 9 px floor (on a window narrower than the page, proportionally less); panels wrap
into more rows instead of growing the figure wider.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence

import matplotlib as mpl
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.text import Text

__all__ = [
    "DPI",
    "MAX_WIDTH_IN",
    "MIN_FONT_PT",
    "REPORT_WIDTH_PX",
    "axis_levels",
    "dashes",
    "figure_legend",
    "grid_levels",
    "label",
    "levels",
    "markers",
    "min_font_pt",
    "new_figure",
    "palette",
    "require",
    "spec_levels",
    "styled",
    "unit",
]

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
    (lambda n: n.startswith(("grad_norm/", "grad_norm_max/", "grad_norm_raw")), "L2 norm"),
    (lambda n: n.startswith("flip_ratio/") or n == "clip_frac", "fraction"),
    (lambda n: n.startswith(("spectral/", "spectral_bound/", "spectral_whole/")), "largest singular value"),
    (lambda n: n.startswith("alpha/"), "scale"),
)

# Level colours, in order. Chosen (from Okabe-Ito's and Paul Tol's colour-blind-safe sets) so
# that any two of the first six stay apart in CAM02-UCS (Delta E >= 15) with normal vision and
# under simulated deuteranopia, protanopia and tritanopia (Machado et al. 2009, severity 1);
# tests/analysis/test_plots.py checks it. Seaborn's "colorblind" palette fails this: its orange
# #de8f05 and vermillion #d55e00 are Delta E 10.6 apart under deuteranopia. Past six levels,
# markers and dashes carry the distinction.
PALETTE = ("#0072b2", "#ee7733", "#882255", "#cc3311", "#44aa99", "#332288", "#aa3377", "#117733")
MARKERS = ("o", "s", "D", "^", "v", "P", "X", "*", "<", ">")
# matplotlib dash patterns (on, off, ...) in line widths; "" is solid (seaborn's convention)
DASHES = ("", (4, 1.5), (1, 1), (6, 1.5, 1, 1.5), (2.5, 1.5), (6, 3), (1, 2.5), (4, 1, 1, 1, 1, 1))
HEATMAP_CMAP = "vlag"  # diverging blue-white-red: distinguishable with red-green colour blindness

REPORT_WIDTH_PX = 1152  # widest a report shows a figure (CSS px): the page of analysis/_render.py
MAX_WIDTH_IN = 11.0  # widest figure, inches
MIN_FONT_PT = 9.0  # smallest text in a figure, points
DPI = 150  # PNG resolution: an 11-inch figure is 1650 px, shown at 1152 (sharp on HiDPI screens)
_RC = {
    "font.size": 10.0,
    "axes.titlesize": 11.0,
    "axes.labelsize": 10.0,
    "xtick.labelsize": MIN_FONT_PT,
    "ytick.labelsize": MIN_FONT_PT,
    "legend.fontsize": MIN_FONT_PT,
    "legend.title_fontsize": 10.0,
    "figure.titlesize": 12.0,
    "lines.linewidth": 1.6,
}


def styled(draw):
    """Decorator: draw the figure under the analysis font sizes (restored afterwards)."""

    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        with mpl.rc_context(_RC):
            return draw(*args, **kwargs)

    return wrapper


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


def axis_levels(frame: pd.DataFrame, column: str, order: Sequence | None = None) -> list:
    """The levels of ``column`` in the one order every figure uses.

    ``order`` if given; else the study grid's order from ``frame.attrs["levels"][column]`` (set by
    the report from the spec, see :func:`grid_levels`), values the grid lacks appended sorted;
    else the sorted distinct values.
    """
    if order is not None:
        return list(order)
    seen = levels(frame[column])
    grid = (frame.attrs.get("levels") or {}).get(column)
    if not grid:
        return seen
    first = [v for v in grid if v in set(seen)]
    return first + [v for v in seen if v not in set(first)]


def grid_levels(grid: dict, frame: pd.DataFrame) -> dict[str, list]:
    """Axis -> its values in the study file's order, as the values ``frame`` holds them.

    Args:
        grid: the spec's ``[grid]`` table (axis -> list of values), e.g. from ``study.json``.
        frame: the runs; its typed columns (``hidden`` int64, ``lr`` float64) may differ in type
            from the JSON values, so values are matched by their text, then numerically.

    Returns:
        For each axis the frame has: the frame's values in grid order (values of the grid no run
        has are left out; values no grid entry matches are appended, sorted).
    """
    out: dict[str, list] = {}
    for axis, values in (grid or {}).items():
        if axis not in frame.columns or not isinstance(values, list | tuple):
            continue
        seen = levels(frame[axis])
        ordered = []
        for value in values:
            match = next((v for v in seen if v not in ordered and _same_level(v, value)), None)
            if match is not None:
                ordered.append(match)
        out[axis] = ordered + [v for v in seen if v not in ordered]
    return out


def _same_level(a, b) -> bool:
    if str(a) == str(b):
        return True
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False


def palette(values: Sequence) -> dict:
    """Level -> colour (:data:`PALETTE`, cycled), stable for a given level list."""
    return {v: mpl.colors.to_rgb(PALETTE[i % len(PALETTE)]) for i, v in enumerate(values)}


def markers(values: Sequence) -> dict:
    """Level -> marker, in the same order as :func:`palette`."""
    return {v: MARKERS[i % len(MARKERS)] for i, v in enumerate(values)}


def dashes(values: Sequence) -> dict:
    """Level -> dash pattern (seaborn's ``dashes=``; ``""`` is solid), as :func:`palette`."""
    return {v: DASHES[i % len(DASHES)] for i, v in enumerate(values)}


def new_figure(
    n_panels: int = 1,
    *,
    panel_w: float = 5.0,
    panel_h: float = 3.6,
    ncols: int = 3,
    legend_w: float = 1.8,
    legend_h: float = 0.0,
):
    """A constrained-layout Figure with ``n_panels`` axes, at most :data:`MAX_WIDTH_IN` wide.

    Panels wrap into rows: the columns are capped so that ``ncols * panel_w + legend_w`` fits
    (``legend_w``: the room kept for a legend on the right; ``legend_h`` the height kept for one
    below). A single panel wider than the room is narrowed. Returns (fig, axes list).
    """
    room = MAX_WIDTH_IN - legend_w
    panel_w = min(panel_w, room)
    ncols = max(1, min(ncols, n_panels, int(room // panel_w)))
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(panel_w * ncols + legend_w, panel_h * nrows + 0.6 + legend_h), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def figure_legend(
    fig: Figure,
    colours: dict,
    title: str,
    extra: Sequence[Line2D] = (),
    *,
    shapes: dict | None = None,
    line_dashes: dict | None = None,
    below: bool = False,
) -> None:
    """One legend for the whole figure, outside the panels (right, or ``below`` them).

    Each level's entry shows its colour, its marker (``shapes``, default a circle) and its dash
    pattern (``line_dashes``; without it the entry is a marker only, as for points).
    """
    handles = []
    for v, c in colours.items():
        dash = (line_dashes or {}).get(v)
        # a level drawn as points only (no line_dashes) gets a marker-only entry
        style = "none" if line_dashes is None else ((0, dash) if dash else "-")
        handles.append(
            Line2D([], [], color=c, marker=(shapes or {}).get(v, "o"), linestyle=style, label=str(v))
        )
    handles += list(extra)
    if below:
        fig.legend(handles=handles, title=title, loc="outside lower center", frameon=False,
                   ncols=min(len(handles), 4))  # fmt: skip
    else:
        fig.legend(handles=handles, title=title, loc="outside right upper", frameon=False)


def min_font_pt(fig: Figure) -> float:
    """The smallest font size (points) of any visible, non-empty text the figure draws."""
    sizes = [
        t.get_fontsize()
        for t in fig.findobj(Text)
        if t.get_visible()
        and t.get_text().strip()
        and (t.axes is None or t.axes.get_visible())
    ]
    return float(min(sizes)) if sizes else math.inf


def spec_levels(specs: Iterable, frame: pd.DataFrame) -> dict[str, list]:
    """:func:`grid_levels` of one or more study specs (``study.json`` dicts; None skipped).

    Several studies reported together contribute their ``[grid]`` values in the order the specs
    come, each value once, so the first study's order leads.
    """
    merged: dict[str, list] = {}
    for spec in specs:
        grid = spec.get("grid") if isinstance(spec, dict) else None
        for axis, values in (grid if isinstance(grid, dict) else {}).items():
            if isinstance(values, list | tuple):
                have = merged.setdefault(axis, [])
                have += [v for v in values if not any(_same_level(v, h) for h in have)]
    return grid_levels(merged, frame)
