"""analysis.plots: every figure renders for the fake study, is not blank, and refuses bad frames."""

from __future__ import annotations

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import pytest

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
    assert fig.axes[0].get_xlabel() == "step_ms (ms)"


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
