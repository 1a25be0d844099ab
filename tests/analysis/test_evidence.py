"""The report's evidence: floors beside scores, divergence by reason, gradients through time,
whole-matrix spectral norms and raw gradients, each against what fakestudy.py planted."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from analysis import _report_figures as figs
from analysis import build_report, load_bptt_profiles, load_runs
from analysis._evidence import (
    UNDERTRAINED,
    bptt_growth_table,
    divergence_table,
    floor_references,
    floor_table,
)
from analysis._render import Table, Text
from analysis._report_evidence import bptt_section, divergence_section, floor_section
from analysis.report import _study_data
from tests.analysis.fakestudy import BPTT_T, DIVERGED, EPOCHS, FLOORS, HIDDEN, METHODS, bptt_growth

BOOT = 200
LN2 = math.log(2.0)


@pytest.fixture(scope="module")
def frame(fake_study):
    return load_runs(fake_study.name, fake_study.tracking_uri)


@pytest.fixture(scope="module")
def data(frame):
    return _study_data(frame, n_boot=BOOT, seed=0)


def _t_truth(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% Student t-interval, from scipy."""
    x = np.asarray(values)
    low, high = st.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=st.sem(x))
    return x.mean(), low, high


def _kept(study, method, hidden) -> list[tuple]:
    return sorted(k for k in study.kept if k[:2] == (method, hidden))


# --- loading ---------------------------------------------------------------------------------------


def test_diverged_reason_is_a_column_from_the_tag(frame, fake_study):
    got = {(r.method, r.hidden, r.seed): r.diverged_reason for r in frame.itertuples()}
    for key in fake_study.kept:
        want = DIVERGED.get(key)
        assert (got[key] if isinstance(got[key], str) else None) == want, key
    assert frame["diverged_reason"].notna().sum() == sum(1 for r in DIVERGED.values() if r)


def test_bptt_profiles_are_read_from_each_runs_last_epoch(frame, fake_study):
    profiles = load_bptt_profiles(frame)
    assert profiles.attrs["without_profile"] == []
    assert len(profiles) == len(frame) * BPTT_T
    assert set(profiles["epoch"]) == {EPOCHS} and set(profiles["layer"]) == {"lstm.layers.0"}
    key = ("bc", 16, 2)
    mine = profiles[profiles["run_id"] == fake_study.kept[key]].sort_values("t")
    growth = bptt_growth(key)
    assert mine["t"].tolist() == list(range(1, BPTT_T + 1))
    np.testing.assert_allclose(mine["grad_norm"], [growth ** (BPTT_T - t) for t in range(1, BPTT_T + 1)],
                               rtol=1e-12)  # fmt: skip
    assert {"cell", "seed", "method", "hidden"} <= set(profiles.columns)
    first = load_bptt_profiles(frame.head(3), epoch=1)
    assert set(first["epoch"]) == {1} and first["run_id"].nunique() == 3
    assert load_bptt_profiles(frame.head(2), epoch=EPOCHS + 1).attrs["without_profile"] == list(
        frame["run_id"].head(2)
    )


# --- floors ----------------------------------------------------------------------------------------


def test_floor_table_sets_each_cell_beside_its_floors(frame, fake_study):
    table = floor_table(frame).set_index(["method", "hidden"])
    assert table.attrs == {"task": "lm", "score": "test_bpc"}
    for method in METHODS:
        for hidden in HIDDEN:
            row = table.loc[(method, hidden)]
            bpc = [fake_study.objective[k] / LN2 for k in _kept(fake_study, method, hidden)]
            mean, low, high = _t_truth(bpc)
            assert row["n"] == len(bpc)
            assert row["mean"] == pytest.approx(mean, rel=1e-9)
            assert (row["ci_low"], row["ci_high"]) == pytest.approx((low, high), rel=1e-9)
            assert row["floor_bigram_bpc"] == pytest.approx(FLOORS["floor_bigram_bpc"])
            assert row["floor_unigram_bpc"] == pytest.approx(FLOORS["floor_unigram_bpc"])
            assert row["margin"] == pytest.approx(FLOORS["floor_bigram_bpc"] - mean, rel=1e-9)
            # bc at hidden 16 ends near 2.67 bits/char, above the bigram floor 2.5
            want = UNDERTRAINED if (method, hidden) == ("bc", 16) else "beats bigram"
            assert row["verdict"] == want, (method, hidden)


def test_floor_section_flags_the_undertrained_cell_only(frame):
    heading, text, table = floor_section(frame, ["method", "hidden"])
    assert heading.text == "Scores against the reference floors"
    assert f"1 of 6 cells are {UNDERTRAINED}: method=bc, hidden=16 (2.6" in text.text
    assert "method=fp" not in text.text and "method=lab" not in text.text
    rows = table.frame.set_index(["method", "hidden"])
    assert rows.loc[("bc", "16"), "verdict"] == UNDERTRAINED
    assert (rows.drop(index=("bc", "16"))["verdict"] == "beats bigram").all()
    assert {"n", "mean test_bpc", "95% t-interval", "bigram floor", "unigram floor"} <= set(rows.columns)
    # the same study with an easier floor: every cell is trained, nothing is flagged
    easy = frame.copy()
    easy["floor_bigram_bpc"] = 3.0
    easy.attrs = dict(frame.attrs)
    _, text, table = floor_section(easy, ["method", "hidden"])
    assert f"are {UNDERTRAINED}:" not in text.text
    assert "Every one of the 6 cells beats its bigram floor" in text.text
    assert UNDERTRAINED not in set(table.frame["verdict"])


def test_classification_floors_are_chance():
    frame = pd.DataFrame({
        "method": ["a"] * 3 + ["b"] * 3,
        "test_acc": [0.10, 0.09, 0.11, 0.80, 0.82, 0.79],
        "floor_chance_acc": [0.1] * 6,
        "floor_chance_err": [90.0] * 6,
    })  # fmt: skip
    frame.attrs = {"axes": ["method"], "objective": "test_acc",
                   "metric_columns": {c: c for c in frame.columns if c != "method"}}  # fmt: skip
    table = floor_table(frame).set_index("method")
    assert table.attrs["task"] == "classification"
    assert table.loc["a", "verdict"] == "at chance" and table.loc["b", "verdict"] == "above chance"
    assert table.loc["b", "margin"] == pytest.approx(np.mean([0.80, 0.82, 0.79]) - 0.1)
    _, text, _ = floor_section(frame, ["method"])
    assert "1 of 2 cells do not beat chance: method=a." in text.text
    assert floor_references(frame, "val_err") == {"chance": [90.0]}


def test_floor_references_are_in_the_curves_unit(frame):
    bpc = floor_references(frame, "val_bpc")
    assert bpc["unigram"] == pytest.approx([3.2]) and bpc["bigram"] == pytest.approx([2.5])
    nats = floor_references(frame, "val_xent")
    assert nats["bigram"] == pytest.approx([2.5 * LN2]) and nats["unigram"] == pytest.approx([3.2 * LN2])
    assert floor_references(frame, "train_loss") == {}


def test_sections_without_the_new_metrics_say_why(frame):
    old = frame.drop(columns=[c for c in frame.columns if c.startswith(("floor_", "bptt", "diverged"))])
    old.attrs = {**frame.attrs, "metric_columns": {
        k: v for k, v in frame.attrs["metric_columns"].items() if v in old.columns}}  # fmt: skip
    for section in (floor_section, divergence_section, bptt_section):
        blocks = section(old, ["method", "hidden"])
        assert len(blocks) == 2 and isinstance(blocks[1], Text) and blocks[1].note


# --- divergence ------------------------------------------------------------------------------------


def test_divergence_is_counted_per_cell_with_its_reason(frame, fake_study):
    table = divergence_table(frame).set_index(["method", "hidden"])
    assert table.loc[("bc", 16), "diverged"] == 2
    assert table.loc[("bc", 16), "reasons"] == "1 bound, 1 nonfinite"
    assert table.loc[("bc", 32), "reasons"] == "1 no_progress"
    assert table.loc[("lab", 16), "reasons"] == "1 unrecorded"  # diverged=1 without the tag
    assert table.loc[("fp", 16), "diverged"] == 0 and table.loc[("fp", 16), "reasons"] == ""
    assert table["runs"].sum() == len(frame)
    _, text, shown = divergence_section(frame, ["method", "hidden"])
    assert text.text.startswith(f"4 of {len(frame)} finished runs diverged, in 3 of 6 cells.")
    assert "no_progress: an epoch's training loss stayed above" in text.text
    assert len(shown.frame) == 3


# --- gradients through time ------------------------------------------------------------------------


def test_bptt_growth_table_has_n_and_t_intervals(frame, fake_study):
    table = bptt_growth_table(frame).set_index(["method", "hidden"])
    for method in METHODS:
        for hidden in HIDDEN:
            keys = _kept(fake_study, method, hidden)
            mean, low, high = _t_truth([bptt_growth(k) for k in keys])
            row = table.loc[(method, hidden)]
            assert row["n"] == len(keys)
            assert (row["mean"], row["ci_low"], row["ci_high"]) == pytest.approx((mean, low, high), rel=1e-9)
            want = "grows back in time" if method == "bc" else "decays back in time"
            assert row["reading"] == want
    _heading, text, shown = bptt_section(frame, ["method", "hidden"])
    assert "2 of 6 cells have an interval entirely above 1" in text.text
    assert isinstance(shown, Table) and "95% t-interval" in shown.frame.columns


def test_bptt_figure_draws_the_mean_profile_per_method(data, fake_study):
    (stem, fig, caption, _alt), = figs._fig_bptt(data)
    assert stem == "bptt-profile"
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["hidden=16", "hidden=32"]
    assert all(ax.get_yscale() == "log" for ax in panels)
    # the thick lines are the means over seeds: check bc's at hidden 16 against the planted runs
    keys = _kept(fake_study, "bc", 16)
    truth = np.mean([[bptt_growth(k) ** (BPTT_T - t) for t in range(1, BPTT_T + 1)] for k in keys], axis=0)
    means = [line.get_ydata() for line in panels[0].get_lines() if line.get_linewidth() == 2.0]
    assert len(means) == len(METHODS)
    assert any(np.allclose(m, truth, rtol=1e-12) for m in means)
    assert f"at each run's last profiled epoch {EPOCHS}" in caption
    assert "(bc)" in caption.split("ranges from")[1].split(" over ")[0].split(" to ")[1]


# --- figures: spectral norm, raw gradients, floors on learning curves ------------------------------


def test_spectral_figure_compares_whole_matrices_across_methods(data):
    (stem, fig, caption, _alt), = figs._fig_spectral(data)
    assert stem == "spectral-norm"
    legend = {t.get_text() for t in fig.legends[0].get_texts()}
    assert set(METHODS) <= legend  # full precision is drawn too
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["lstm.0.w_hh"]
    # no tautological count of points at or above the bound
    assert not re.search(r"\d+ of \d+", caption) and "points" not in caption
    assert "is not drawn" in caption
    assert re.search(r"ranges from [\d.]+ for lab to [\d.]+ \(95% CI [\d.]+ to [\d.]+, n = 11\) for bc\.",
                     caption)  # fmt: skip


def test_gradient_figure_uses_the_raw_gradient(data):
    (_stem, fig, caption, alt), = figs._fig_grad_norm(data)
    assert "no clipping" in fig.get_suptitle() and "no clipping" in alt
    assert "raw gradient norm (no clipping of any kind)" in caption
    # fakestudy: received = raw / 40 for bc, = raw for fp
    assert "was on average 0.025 of the raw one for bc and 1 for fp" in caption
    without_raw = _study_data(data.frame, n_boot=BOOT, seed=0)
    without_raw.curves = data.curves[~data.curves["metric"].str.startswith("grad_norm_raw/")]
    (_, fig, caption, _), = figs._fig_grad_norm(without_raw)
    assert "no clipping" not in fig.get_suptitle()
    assert "as the optimizer received it (after any clipping)" in caption


def test_learning_curves_show_the_floors(data):
    (_, fig, caption, _), = figs._fig_learning(data)
    assert data.val_metric == "val_xent"
    flat = sorted(line.get_ydata()[0] for line in fig.axes[0].get_lines()
                  if list(line.get_xdata()) == [0, 1] and len(set(line.get_ydata())) == 1)  # fmt: skip
    assert flat == pytest.approx([2.5 * LN2, 3.2 * LN2])
    assert "the unigram floor 2.22 nats, the bigram floor 1.73 nats of the runs' test split" in caption


def test_report_has_the_evidence_sections(fake_study, tmp_path):
    files = build_report(fake_study.name, fake_study.tracking_uri, tmp_path, n_boot=BOOT,
                         log_to_mlflow=False)  # fmt: skip
    md = files.markdown.read_text(encoding="utf-8")
    for heading in ("Scores against the reference floors", "Diverged runs", "Gradients through time"):
        assert f"\n## {heading}\n" in md
    assert "| bc | 16 |" in md and UNDERTRAINED in md
    assert "\n### Gradients through time\n" in md
    assert {p.name for p in files.figures} >= {"bptt-profile.png", "spectral-norm.png", "grad-norm.png"}
