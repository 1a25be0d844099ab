"""analysis.plots: every figure renders for the fake study, is not blank, and refuses bad frames;
level order, colour-vision safety and legibility at the report's width."""

from __future__ import annotations

import itertools

import colorspacious
import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Text
from PIL import Image

from analysis import (
    alpha_trajectories,
    degradation,
    degradation_heatmap,
    grad_norm_curves,
    learning_curves,
    load_curves,
    load_runs,
    pareto_plot,
    point_plot,
    save_figure,
    spectral_norm_curves,
)
from analysis._plotstyle import DPI, REPORT_WIDTH_PX, grid_levels, min_font_pt, palette

BOOT = 200  # CI resamples: enough to draw a band, cheap enough for the suite


@pytest.fixture(scope="module")
def data(fake_study):
    frame = load_runs(fake_study.name, fake_study.tracking_uri)
    curves = load_curves(frame, ["val_xent", "grad_norm/", "alpha/", "spectral/", "spectral_bound/"])
    return {"frame": frame, "curves": curves, "degradation": degradation(frame)}


# name -> (source key, draw function, the columns its refusal must name)
FIGURES = {
    "point": ("frame", lambda f: point_plot(f, "test_xent", "hidden", "method", n_boot=BOOT),
              ["test_xent", "hidden", "method"]),
    "heatmap": ("degradation", lambda f: degradation_heatmap(f, "hidden", "method"),
                ["hidden", "method", "degradation"]),
    "learning": ("curves", lambda f: learning_curves(f, "val_xent", n_boot=BOOT),
                 ["run_id", "metric", "step", "value", "method"]),
    "grad_norm": ("curves", lambda f: grad_norm_curves(f, n_boot=BOOT),
                  ["run_id", "metric", "step", "value", "method"]),
    "alpha": ("curves", lambda f: alpha_trajectories(f, n_boot=BOOT),
              ["run_id", "metric", "step", "value", "method"]),
    "spectral": ("curves", lambda f: spectral_norm_curves(f, n_boot=BOOT),
                 ["run_id", "metric", "step", "value", "method"]),
    "pareto_bits": ("frame", lambda f: pareto_plot(f, "test_xent", "bits_per_weight"),
                    ["test_xent", "bits_per_weight", "method", "hidden"]),
    "pareto_ms": ("frame", lambda f: pareto_plot(f, "test_xent", "step_ms"),
                  ["test_xent", "step_ms", "method", "hidden"]),
}  # fmt: skip
FUNCTION_NAME = {
    "point": "point_plot", "heatmap": "degradation_heatmap", "learning": "learning_curves",
    "grad_norm": "grad_norm_curves", "alpha": "alpha_trajectories",
    "spectral": "spectral_norm_curves", "pareto_bits": "pareto_plot", "pareto_ms": "pareto_plot",
}  # fmt: skip


@pytest.mark.parametrize("name", list(FIGURES))
def test_figure_renders_and_is_not_blank(name, data, tmp_path):
    source, draw, _ = FIGURES[name]
    open_before = plt.get_fignums()
    fig = draw(data[source])
    png, svg = save_figure(fig, tmp_path / "sub" / name)
    assert png == tmp_path / "sub" / f"{name}.png" and svg.suffix == ".svg"
    assert png.stat().st_size > 10_000 and svg.stat().st_size > 10_000
    pixels = mpimg.imread(png)[..., :3]  # (H, W, 3) floats in [0, 1]
    assert pixels.var() > 0.005, "the figure looks blank"
    assert (pixels < 0.9).any(axis=-1).mean() > 0.02, "too little is drawn"
    assert fig.axes[0].get_title() or fig.get_suptitle()
    assert plt.get_fignums() == open_before, "figures must not go through pyplot's state"


@pytest.mark.parametrize("name", list(FIGURES))
def test_figure_refuses_a_frame_lacking_its_columns(name, data):
    source, draw, needed = FIGURES[name]
    for column in needed:
        with pytest.raises(ValueError, match=rf"{FUNCTION_NAME[name]}: missing column.*'{column}'"):
            draw(data[source].drop(columns=[column]))


def test_legend_sits_outside_the_data(data):
    fig = point_plot(data["frame"], "test_xent", "hidden", "method", n_boot=BOOT)
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 >= ax.get_window_extent().x1


def test_axis_labels_carry_units(data):
    fig = point_plot(data["frame"], "test_xent", "hidden", "method", n_boot=BOOT)
    assert "(nats)" in fig.axes[0].get_ylabel()
    fig = pareto_plot(data["frame"], "test_xent", "step_ms")
    assert fig.axes[0].get_xlabel() == "step_ms (ms), median over seeds, bar: fastest to slowest seed"


def test_same_level_same_colour_across_figures(data):
    order = ["fp", "bc", "lab"]
    a = learning_curves(data["curves"], "val_xent", hue_order=order, n_boot=BOOT)
    b = spectral_norm_curves(data["curves"], hue_order=order, n_boot=BOOT)  # no fp here
    colour = {fig: {h.get_label(): h.get_color() for h in fig.legends[0].legend_handles} for fig in (a, b)}
    assert colour[a]["lab"] == colour[b]["lab"] and colour[a]["bc"] == colour[b]["bc"]


def test_curve_figures_name_a_missing_metric(data):
    curves = data["curves"]
    with pytest.raises(ValueError, match="learning_curves: no rows for metric 'val_acc'"):
        learning_curves(curves, "val_acc")
    no_spectral = curves[~curves.metric.str.startswith("spectral")]
    with pytest.raises(ValueError, match="spectral_norm_curves: no 'spectral/' metric"):
        spectral_norm_curves(no_spectral)
    no_bound = curves[~curves.metric.str.startswith("spectral_bound/")]
    with pytest.raises(ValueError, match="no spectral_bound/ metric for"):
        spectral_norm_curves(no_bound)
    with pytest.raises(ValueError, match="grad_norm_curves: no 'grad_norm/' metric"):
        grad_norm_curves(curves[curves.metric == "val_xent"])


def test_pareto_front_marks_the_non_dominated_configurations(data):
    # bits: lab (1 bit) is best among 1-bit configurations at hidden 32 and fp at 32 bits is
    # the best overall: the ringed points are exactly those two
    fig = pareto_plot(data["frame"], "test_xent", "bits_per_weight")
    ax = fig.axes[0]
    labels = sorted(t.get_text() for t in ax.texts)
    assert labels == ["fp, hidden=32", "lab, hidden=32"]
    assert ax.get_xscale() == "log"  # 1 to 32 bits: a log2 axis


# --- level order -----------------------------------------------------------------------------------


def test_grid_levels_match_typed_values_in_the_spec_order():
    frame = pd.DataFrame({"hidden": [16, 64, 32, 16], "lr": [1e-3, 1e-2, 1e-3, 5e-4],
                          "method": ["lab", "fp", "bc", "zz"]})  # fmt: skip
    grid = {"hidden": [64, "16", 32, 128], "lr": [0.01, 0.001], "method": ["fp", "lab", "bc"],
            "absent": [1, 2]}  # fmt: skip
    got = grid_levels(grid, frame)
    assert got == {"hidden": [64, 16, 32], "lr": [0.01, 0.001, 0.0005],
                   "method": ["fp", "lab", "bc", "zz"]}  # fmt: skip
    # the frame's own values (typed), not the spec's: "16" became the int 16
    assert all(isinstance(v, int | np.integer) for v in got["hidden"])


def test_every_figure_draws_levels_in_the_grid_order(data):
    order = {"method": ["lab", "fp", "bc"], "hidden": [32, 16]}  # neither sorted nor baseline-first
    frame, curves, degr = data["frame"].copy(), data["curves"].copy(), data["degradation"].copy()
    for f in (frame, curves, degr):
        f.attrs = {**f.attrs, "levels": order}
    point = point_plot(frame, "test_xent", "hidden", "method", n_boot=BOOT)
    ax = point.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["32", "16"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["lab", "fp", "bc"]
    heat = degradation_heatmap(degr, "hidden", "method")
    assert [t.get_text() for t in heat.axes[0].get_yticklabels()] == ["lab", "bc"]  # no fp row
    assert [t.get_text() for t in heat.axes[0].get_xticklabels()] == ["32", "16"]
    for fig in (learning_curves(curves, "val_xent", n_boot=BOOT), grad_norm_curves(curves, n_boot=BOOT),
                pareto_plot(frame, "test_xent", "step_ms")):  # fmt: skip
        assert [t.get_text() for t in fig.legends[0].get_texts()][:3] == ["lab", "fp", "bc"]


# --- points, markers, dashes -------------------------------------------------------------------------


def test_point_plot_joins_no_categorical_levels(data):
    fig = point_plot(data["frame"], "test_xent", "hidden", "method", n_boot=BOOT)
    ax = fig.axes[0]
    drawn = [ln for ln in ax.lines if len(ln.get_xdata())]  # (legend entries hold no data)
    pointed = [ln for ln in drawn if ln.get_marker() not in ("None", "", None)]
    assert len(pointed) == 3  # one per method
    assert all(ln.get_linestyle() == "None" for ln in pointed)
    # what is drawn as a line (error bars, caps) stays within one category: the categories sit
    # 1 apart on the axis, a line joining two would span >= 1
    for ln in drawn:
        if ln.get_linestyle() == "None":
            continue
        x = np.asarray(ln.get_xdata(), dtype=float)
        for segment in np.split(x, np.flatnonzero(np.isnan(x))):  # NaN breaks a line (caps)
            segment = segment[~np.isnan(segment)]
            if len(segment):
                assert np.ptp(segment) < 0.5, f"a line spans {np.ptp(segment)} categories"
    assert len({ln.get_marker() for ln in pointed}) == 3


def test_methods_differ_in_marker_and_dash_as_well_as_colour(data):
    fig = learning_curves(data["curves"], "val_xent", n_boot=BOOT)
    handles = fig.legends[0].legend_handles
    assert len({h.get_marker() for h in handles}) == len(handles) == 3
    assert len({str(h.get_linestyle()) + str(h._dash_pattern) for h in handles}) == 3
    drawn = {mpl_colour(ln.get_color()): ln for ln in fig.axes[0].lines if len(ln.get_xdata())}
    for h in handles:  # each drawn line carries its legend entry's marker
        assert drawn[mpl_colour(h.get_color())].get_marker() == h.get_marker()


def mpl_colour(c) -> tuple:
    from matplotlib.colors import to_rgb

    return tuple(round(v, 4) for v in to_rgb(c))


# --- colour-vision deficiency ------------------------------------------------------------------------

MIN_DELTA_E = 12.0  # CAM02-UCS distance between any two of the first six level colours


def _simulated(rgb: np.ndarray, cvd: str | None) -> np.ndarray:
    """Colours as seen with a full (severity 100) deficiency, by Machado et al. 2009 (colorspacious)."""
    if cvd is None:
        return rgb
    space = {"name": "sRGB1+CVD", "cvd_type": cvd, "severity": 100}
    return np.clip(colorspacious.cspace_convert(rgb, space, "sRGB1"), 0, 1)


def _closest_pair(rgb: np.ndarray, cvd: str | None) -> float:
    seen = _simulated(rgb, cvd)
    return min(
        float(colorspacious.deltaE(seen[i], seen[j], input_space="sRGB1"))
        for i, j in itertools.combinations(range(len(seen)), 2)
    )


@pytest.mark.parametrize("cvd", [None, "deuteranomaly", "protanomaly", "tritanomaly"])
def test_level_colours_stay_apart_under_colour_vision_deficiency(cvd):
    # the demo's methods in grid order: bc and lab are the pair the review could not tell apart
    methods = ["fp", "bc", "bwn", "lab", "twn", "bc-scaled"]
    rgb = np.array(list(palette(methods).values()))
    assert _closest_pair(rgb, cvd) >= MIN_DELTA_E
    bc_lab = _simulated(rgb[[1, 3]], cvd)
    assert colorspacious.deltaE(bc_lab[0], bc_lab[1], input_space="sRGB1") >= MIN_DELTA_E


def test_the_colour_check_rejects_seaborns_colorblind_orange_and_vermillion():
    # the figures' old bc (#de8f05) and lab (#d55e00): close under deuteranopia, so the test bites
    old = np.array([[0xDE, 0x8F, 0x05], [0xD5, 0x5E, 0x00]]) / 255
    assert _closest_pair(old, None) > MIN_DELTA_E  # distinct with normal vision...
    assert _closest_pair(old, "deuteranomaly") < MIN_DELTA_E  # ...not with deuteranopia


# --- legibility at the report's width --------------------------------------------------------------


def _smallest_text_in(fig) -> float:
    """The smallest drawn text, in inches, measured on the rendered figure: the height of each
    text's box (its width when turned 90 degrees), which for matplotlib's fonts is the font size."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    across = []
    for t in fig.findobj(Text):
        if not (t.get_visible() and t.get_text().strip()):
            continue
        if t.axes is not None and not t.axes.get_visible():
            continue
        box = t.get_window_extent(renderer)
        across.append(box.width if abs(t.get_rotation() % 180 - 90) < 1 else box.height)
    return min(across) / fig.dpi


@pytest.mark.parametrize("name", list(FIGURES))
def test_figure_text_is_at_least_9_px_at_the_reports_width(name, data, tmp_path):
    source, draw, _ = FIGURES[name]
    fig = draw(data[source])
    png, _ = save_figure(fig, tmp_path / name)
    natural_px = Image.open(png).size[0]
    shown_px = min(natural_px, REPORT_WIDTH_PX)  # the page scales a wider image down to fit
    smallest_px = _smallest_text_in(fig) * DPI * shown_px / natural_px
    assert smallest_px >= 9.0, f"{name}: {natural_px} px wide, smallest text {smallest_px:.1f} px"


def test_save_figure_records_the_smallest_font(data, tmp_path):
    fig = spectral_norm_curves(data["curves"], n_boot=BOOT)
    png, _ = save_figure(fig, tmp_path / "spectral")
    with Image.open(png) as img:
        assert float(img.text["labbench.min_font_pt"]) == pytest.approx(_smallest_text_in(fig) * 72, rel=1e-3)
        assert img.info["dpi"] == pytest.approx((DPI, DPI), abs=0.1)
    assert min_font_pt(fig) >= 9.0


def test_error_bars_are_student_t_intervals_over_the_seeds():
    # the figures follow the tables' small-n rule: at 2 or 3 seeds a bootstrap interval cannot
    # reach beyond the values themselves; the t-interval (scipy's one-sample t) can
    from scipy import stats as st

    values = {("a", "x"): [1.0, 1.4], ("a", "y"): [2.0, 2.1, 2.9], ("b", "x"): [0.5, 3.0]}
    rows = [{"m": m, "h": h, "seed": s, "v": v} for (m, h), vs in values.items() for s, v in enumerate(vs)]
    frame = pd.DataFrame(rows)
    fig = point_plot(frame, "v", "h", "m", order=["x", "y"], hue_order=["a", "b"])
    bars = []  # each error bar with caps is one line: cap, NaN, the bar, NaN, cap
    for line in fig.axes[0].lines:
        ys = np.asarray(line.get_ydata(), dtype=float)
        if len(ys) == 8 and np.isfinite(ys).any():
            bars.append((np.nanmin(ys), np.nanmax(ys)))
    expected = []
    for vs in values.values():
        ci = st.ttest_1samp(vs, 0.0).confidence_interval(0.95)
        expected.append((ci.low, ci.high))
        assert ci.high - ci.low > np.ptp(vs)  # wider than the values: no bootstrap could draw it
    assert np.allclose(sorted(bars), sorted(expected), rtol=1e-9, atol=0)
    plt.close(fig)

    curves = pd.DataFrame(
        [
            {"run_id": f"r{s}", "metric": "val_xent", "step": e, "value": v + e, "method": "fp"}
            for s, v in enumerate([1.0, 1.3, 2.2])
            for e in (1, 2)
        ]
    )
    fig = learning_curves(curves, "val_xent", "method")
    band = fig.axes[0].collections[0].get_paths()[0].vertices[:, 1]
    ci = st.ttest_1samp([1.0, 1.3, 2.2], 0.0).confidence_interval(0.95)
    assert band.min() == pytest.approx(ci.low + 1) and band.max() == pytest.approx(ci.high + 2)
    plt.close(fig)
