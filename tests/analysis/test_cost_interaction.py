"""Accuracy beside cost, and the interaction contrasts, against brute-force computations on a
synthetic study frame (method x hidden x layers x seed)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from analysis._evidence import cost_table, interaction_table
from analysis._render import Table, Text
from analysis._report_evidence import cost_section, interaction_section

METHODS, HIDDEN, LAYERS, SEEDS = ["fp", "bc", "lab"], [128, 512, 2048], [1, 3], [0, 1, 2, 3, 4]


def _frame(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for m, h, d, s in itertools.product(METHODS, HIDDEN, LAYERS, SEEDS):
        bits = 32 if m == "fp" else 1
        rows.append({"method": m, "hidden": h, "layers": d, "seed": s,
                     "test_err": 10 + rng.normal() + (m != "fp") * (3 - h / 1024) + s * 0.5,
                     "bits_per_weight": bits, "packed_bytes": h * d * bits / 8,
                     "step_ms": h * d * (1.5 if m == "lab" else 1) * (1 + 0.1 * rng.random()),
                     "state_mem_mb": h * d * 1e-3})
    frame = pd.DataFrame(rows)
    frame.attrs.update(objective="test_err", direction="minimize", baseline={"method": "fp"},
                       axes=["method", "hidden", "layers"],
                       metric_columns={c: c for c in ("test_err", "bits_per_weight", "packed_bytes",
                                                       "step_ms", "state_mem_mb")})
    return frame


def _t(values) -> tuple[float, float, float]:
    x = np.asarray(values, dtype=float)
    half = st.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return x.mean(), x.mean() - half, x.mean() + half


def test_cost_table_matches_a_brute_force_per_cell_summary():
    frame = _frame()
    table = cost_table(frame).set_index(["method", "hidden", "layers"])
    assert len(table) == len(METHODS) * len(HIDDEN) * len(LAYERS)
    for m, h, d in itertools.product(METHODS, HIDDEN, LAYERS):
        runs = frame[(frame.method == m) & (frame.hidden == h) & (frame.layers == d)]
        base = frame[(frame.method == "fp") & (frame.hidden == h) & (frame.layers == d)]
        row = table.loc[(m, h, d)]
        mean, low, high = _t(runs.test_err)
        assert row["n"] == 5 and row["mean"] == pytest.approx(mean)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((low, high))
        assert row["packed_bytes"] == h * d * (32 if m == "fp" else 1) / 8
        assert row["step_ms"] == pytest.approx(runs.step_ms.median())
        # the ratio is to the baseline at the same hidden and layers, not pooled over sizes
        assert row["step_ratio"] == pytest.approx(runs.step_ms.median() / base.step_ms.median())
    # the front by brute force: a cell is on it when no other cell is <= on both, < on one
    means = table["mean"].to_numpy()
    for cost in ("packed_bytes", "step_ms"):
        c = table[cost].to_numpy()
        truth = [not any((c[j] <= c[i] and means[j] <= means[i]) and (c[j] < c[i] or means[j] < means[i])
                         for j in range(len(c)) if j != i) for i in range(len(c))]
        assert table[f"front_{cost}"].tolist() == truth


def test_interaction_contrasts_are_paired_differences_of_gaps():
    frame = _frame(1)
    table = interaction_table(frame)
    y = frame.set_index(["method", "hidden", "layers", "seed"])["test_err"]

    def gap(m, h, d, s):
        return y[(m, h, d, s)] - y[("fp", h, d, s)]

    width = table[(table.axis == "hidden") & (table.method == "lab")].set_index("over")
    assert (width["from"].iloc[0], width["to"].iloc[0]) == (128, 2048)
    for d in LAYERS:
        per_seed = [gap("lab", 2048, d, s) - gap("lab", 128, d, s) for s in SEEDS]
        mean, low, high = _t(per_seed)
        row = width.loc[f"layers={d}"]
        assert row["n"] == 5 and row["mean"] == pytest.approx(mean)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((low, high))
    # "all": each seed's contrast averaged over the layers first, then the t-interval over seeds
    per_seed = [np.mean([gap("lab", 2048, d, s) - gap("lab", 128, d, s) for d in LAYERS]) for s in SEEDS]
    assert width.loc["all", "mean"] == pytest.approx(np.mean(per_seed))
    assert width.loc["all", "ci_high"] == pytest.approx(_t(per_seed)[2])
    # the planted effect (the gap shrinks by (2048 - 128) / 1024 = 1.875) is what the contrast sees
    assert width.loc["all", "mean"] == pytest.approx(-1.875, abs=1.5)
    depth = table[(table.axis == "layers") & (table.method == "bc")].set_index("over")
    assert list(depth.index) == ["hidden=128", "hidden=512", "hidden=2048", "all"]
    assert set(table.method) == {"bc", "lab"}  # the baseline has no gap to itself


def test_interaction_table_needs_a_numeric_axis_crossed_with_every_method():
    frame = _frame()
    frame["layers"] = frame["layers"].map({1: "shallow", 3: "deep"})  # not numeric
    assert set(interaction_table(frame).axis) == {"hidden"}
    frame["hidden"] = np.where(frame.method == "fp", np.nan, frame.hidden)  # conditional axis
    assert interaction_table(frame).empty
    frame = _frame()
    frame.attrs["baseline"] = {"method": "fp", "layers": 1}  # two keys: no single gap
    assert interaction_table(frame).empty


def test_sections_word_the_tables_and_say_when_they_cannot():
    frame = _frame()
    cost = cost_section(frame, ["method", "hidden", "layers"])
    text, table = cost[1], cost[2]
    assert isinstance(text, Text) and "Pareto" in text.text and isinstance(table, Table)
    inter = interaction_section(frame, ["method", "hidden", "layers"])
    assert "intervals exclude 0" in inter[1].text
    bare = frame[["method", "hidden", "layers", "seed", "test_err"]].copy()
    bare.attrs = {**frame.attrs, "metric_columns": {"test_err": "test_err"}}
    assert "no cost metrics" in cost_section(bare, ["method"])[1].text
