"""analysis.stats against closed forms, simulation with known truth, and hand computations."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from analysis import (
    degradation,
    factor_effects,
    holm_adjust,
    mean_ci,
    paired_bootstrap,
    pareto_mask,
)

# --- factor_effects: a planted interaction -------------------------------------------------------


def _two_by_two(reps: int, sigma: float, interaction: float, rng) -> pd.DataFrame:
    """y = a + b + interaction * a * b + N(0, sigma^2), a, b in {0, 1}, ``reps`` runs per cell."""
    a = np.repeat([0, 0, 1, 1], reps)
    b = np.repeat([0, 1, 0, 1], reps)
    y = a + b + interaction * a * b + rng.normal(0.0, sigma, size=a.size)
    return pd.DataFrame({"a": a, "b": b, "y": y, "seed": np.tile(np.arange(reps), 4)})


def _noncentral_beta_moments(df1: float, df2: float, lam: float) -> tuple[float, float]:
    """Mean and sd of X / (X + Y), X ~ chi2'(df1, lam), Y ~ chi2(df2): a Poisson mixture of Betas.

    X/(X+Y) given J = j is Beta(df1/2 + j, df2/2), J ~ Poisson(lam/2).
    """
    half = lam / 2.0
    j = np.arange(0, int(half + 40 * np.sqrt(half + 1) + 100))
    w = st.poisson.pmf(j, half)
    a, b = df1 / 2.0 + j, df2 / 2.0
    m1 = np.sum(w * a / (a + b))
    m2 = np.sum(w * a * (a + 1) / ((a + b) * (a + b + 1)))
    return float(m1), float(np.sqrt(m2 - m1**2))


def test_planted_interaction_is_found_with_eight_seeds():
    # lambda_ab = reps * sum(gamma^2) / sigma^2 = 8 * 4 * 0.2^2 / 0.2^2 = 32: power at 0.01 ~ 0.99
    data = _two_by_two(reps=8, sigma=0.2, interaction=0.8, rng=np.random.default_rng(1))
    table = factor_effects(data, "y", ["a", "b"]).set_index("term")
    assert list(table.index) == ["a", "b", "a:b", "Residual"]
    assert table.loc["a:b", "p_value"] < 0.01
    assert table.loc["Residual", "df"] == 4 * 8 - 4
    assert table.attrs["typ"] == 3 and table.attrs["replicates"] == 8


def test_partial_eta_squared_matches_the_closed_form():
    # Cell means mu_ij = i + j + 0.8 ij. With sum-to-zero effects: main effects +-0.7 (a and b),
    # interaction +-0.8/4 = +-0.2 in each of the 4 cells. SS_term / sigma^2 is noncentral chi2
    # with lambda = reps * sum over cells of effect^2 / sigma^2, SS_resid / sigma^2 ~ chi2(N - 4),
    # so partial eta^2 = SS_term / (SS_term + SS_resid) follows a noncentral Beta whose mean and
    # sd we compute exactly. Treatment contrasts under type III, or eta^2 over SS_total, would
    # land far outside the tolerance (see the assertion on its size).
    reps, sigma = 200, 0.1
    data = _two_by_two(reps=reps, sigma=sigma, interaction=0.8, rng=np.random.default_rng(7))
    table = factor_effects(data, "y", ["a", "b"]).set_index("term")
    n = 4 * reps
    for term, effect in (("a", 0.7), ("b", 0.7), ("a:b", 0.2)):
        lam = reps * 4 * effect**2 / sigma**2
        mean, sd = _noncentral_beta_moments(1.0, n - 4.0, lam)
        assert 4 * sd < 0.05 * mean, "the tolerance must stay tight"
        assert table.loc[term, "partial_eta_sq"] == pytest.approx(mean, abs=4 * sd), term
        if term == "a:b":  # the estimator's mean is near the population 0.04 / (0.04 + 0.01)
            assert mean == pytest.approx(0.8, abs=0.002)


def test_false_positive_rate_without_effects_is_alpha():
    # 200 null datasets (2 x 3 design, 4 seeds per cell): the count of p < 0.05 for each term
    # must lie within 3 binomial sds of 200 * 0.05 = 10 (sd 3.08), and the interaction's
    # p-values must look uniform (Kolmogorov-Smirnov), which also catches p-values stuck near 1.
    rng = np.random.default_rng(2024)
    hits = {"a": 0, "b": 0, "a:b": 0}
    p_interaction = []
    n_sets = 200
    for _ in range(n_sets):
        a = np.repeat(["x", "y"], 12)
        b = np.tile(np.repeat(["p", "q", "r"], 4), 2)
        data = pd.DataFrame({"a": a, "b": b, "y": rng.normal(size=24)})
        table = factor_effects(data, "y", ["a", "b"]).set_index("term")
        for term in hits:
            hits[term] += bool(table.loc[term, "p_value"] < 0.05)
        p_interaction.append(table.loc["a:b", "p_value"])
    sd = np.sqrt(n_sets * 0.05 * 0.95)
    for term, count in hits.items():
        assert abs(count - n_sets * 0.05) <= 3 * sd, (term, count)
    assert st.kstest(p_interaction, "uniform").pvalue > 0.001


def test_type_two_without_interactions():
    data = _two_by_two(reps=5, sigma=0.3, interaction=0.0, rng=np.random.default_rng(3))
    table = factor_effects(data, "y", ["a", "b"], interactions=False)
    assert table.attrs["typ"] == 2
    assert list(table["term"]) == ["a", "b", "Residual"]
    assert table.loc[2, "df"] == 20 - 3


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.iloc[1:], r"unbalanced design .* a=0, b=0: 2 run\(s\)"),
        (lambda d: d[~((d.a == 1) & (d.b == 1))], r"unbalanced .* a=1, b=1: 0 run\(s\)"),
        (lambda d: d[d.a == 0], r"factor 'a' has 1 level"),
        (lambda d: d[d.seed == 0], r"residual degrees of freedom would be 4 runs - 4 .* too few"),
        (lambda d: d.assign(y=d.y.where(d.seed != 1)), r"response 'y' is missing in 4 run"),
    ],
    ids=["unbalanced", "empty-cell", "one-level", "too-few-seeds", "nan-response"],
)
def test_factor_effects_refuses_designs_it_cannot_analyse(mutate, message):
    data = _two_by_two(reps=3, sigma=0.3, interaction=0.0, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=message):
        factor_effects(mutate(data), "y", ["a", "b"])


def test_factor_effects_names_missing_columns_and_bad_type():
    data = _two_by_two(reps=3, sigma=0.3, interaction=0.0, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"factor_effects: missing column\(s\) \['c'\]"):
        factor_effects(data, "y", ["a", "c"])
    with pytest.raises(ValueError, match="typ must be 1, 2 or 3"):
        factor_effects(data, "y", ["a", "b"], typ=4)


# --- degradation ---------------------------------------------------------------------------------


def _study(direction: str) -> pd.DataFrame:
    """Axes method x hidden, seeds 0..2; objective = base[hidden] + offset[method] + seed/100."""
    rows = []
    offset = {"fp": 0.0, "bc": 0.2, "lab": 0.05}
    for method in offset:
        for hidden in (64, 128):
            for seed in range(3):
                value = (1.0 if hidden == 64 else 0.8) + offset[method] + seed / 100
                if direction == "maximize":
                    value = 1.0 - value
                rows.append({"run_id": f"{method}-{hidden}-{seed}", "method": method,
                             "hidden": hidden, "seed": seed, "obj": value})  # fmt: skip
    frame = pd.DataFrame(rows)
    frame.attrs = {"objective": "obj", "direction": direction, "baseline": {"method": "fp"},
                   "axes": ["method", "hidden"], "metric_columns": {"obj": "obj"}}  # fmt: skip
    return frame


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_degradation_is_positive_when_worse_whatever_the_direction(direction):
    table = degradation(_study(direction))
    assert len(table) == 12  # 2 methods x 2 hidden x 3 seeds, fp left out
    got = table.groupby("method")["degradation"].agg(["min", "max"])
    assert got.loc["bc"].tolist() == pytest.approx([0.2, 0.2])
    assert got.loc["lab"].tolist() == pytest.approx([0.05, 0.05])
    row = table.set_index("run_id").loc["bc-128-2"]
    assert row["baseline_run_id"] == "fp-128-2"  # same hidden, same seed


def test_degradation_reports_runs_without_a_baseline_partner(caplog):
    frame = _study("minimize")
    frame = frame[frame.run_id != "fp-64-1"]
    with caplog.at_level(logging.WARNING, logger="analysis.stats"):
        table = degradation(frame)
    assert {r["run_id"] for r in table.attrs["unpaired"]} == {"bc-64-1", "lab-64-1"}
    assert "bc-64-1" not in set(table.run_id)
    assert "no baseline run" in caplog.text


def test_degradation_refuses_a_baseline_that_matches_nothing():
    with pytest.raises(ValueError, match=r"baseline \{'method': 'nope'\} matches no run"):
        degradation(_study("minimize"), baseline={"method": "nope"})
    with pytest.raises(ValueError, match="direction must be one of"):
        degradation(_study("minimize"), direction="down")


def test_degradation_casts_a_json_string_baseline_to_the_column_type():
    table = degradation(_study("minimize"), baseline={"hidden": "64"})
    assert set(table.hidden) == {128}


# --- paired_bootstrap ----------------------------------------------------------------------------


def test_bootstrap_ci_covers_the_true_mean_at_the_nominal_rate():
    # 200 groups of 20 per-seed differences ~ N(0.3, 1): the 95% BCa CI should cover 0.3 in
    # 95% of them, within 3 binomial sds (sd = sqrt(.95 * .05 / 200) = 0.0154).
    rng = np.random.default_rng(11)
    groups, n = 200, 20
    table = pd.DataFrame(
        {
            "method": np.repeat([f"m{i:03d}" for i in range(groups)], n),
            "seed": np.tile(np.arange(n), groups),
            "degradation": rng.normal(0.3, 1.0, size=groups * n),
        }
    )
    out = paired_bootstrap(table, by=["method"], n_boot=2000, seed=0)
    covered = ((out.ci_low <= 0.3) & (out.ci_high >= 0.3)).mean()
    assert abs(covered - 0.95) <= 3 * np.sqrt(0.95 * 0.05 / groups), covered


def test_paired_ttest_false_positive_rate_and_holm_column():
    rng = np.random.default_rng(5)
    groups, n = 200, 8
    table = pd.DataFrame(
        {
            "method": np.repeat([f"m{i:03d}" for i in range(groups)], n),
            "seed": np.tile(np.arange(n), groups),
            "degradation": rng.normal(0.0, 1.0, size=groups * n),
        }
    )
    out = paired_bootstrap(table, by=["method"], n_boot=200, seed=0)
    rejected = int((out.p_ttest < 0.05).sum())
    assert abs(rejected - 10) <= 3 * np.sqrt(groups * 0.05 * 0.95), rejected
    # Holm by hand: sort, multiply the k-th smallest by (m - k), running max, cap at 1
    p = out.p_ttest.to_numpy()
    order = np.argsort(p)
    adjusted = np.empty_like(p)
    running = 0.0
    for k, i in enumerate(order):
        running = max(running, (len(p) - k) * p[i])
        adjusted[i] = min(1.0, running)
    assert out.p_holm.to_numpy() == pytest.approx(adjusted)


def test_paired_bootstrap_on_a_study_matches_scipy_paired_tests():
    frame = _study("minimize")
    rng = np.random.default_rng(0)
    frame["obj"] = frame["obj"] + rng.normal(0.0, 0.01, size=len(frame))
    table = degradation(frame)
    out = paired_bootstrap(frame, n_boot=500).set_index(["method", "hidden"])
    for (method, hidden), part in table.groupby(["method", "hidden"]):
        part = part.sort_values("seed")
        expected = st.ttest_rel(part["value"], part["baseline_value"]).pvalue
        assert out.loc[(method, hidden), "p_ttest"] == pytest.approx(expected)
        assert out.loc[(method, hidden), "mean"] == pytest.approx(part["degradation"].mean())
    assert out["p_wilcoxon"].isna().all()  # 3 seeds < 6
    assert (out["note"].str.contains("no Wilcoxon")).all()


def test_paired_bootstrap_is_deterministic_given_the_seed():
    rng = np.random.default_rng(0)
    table = pd.DataFrame(
        {"method": np.repeat(["bc", "lab"], 12), "seed": np.tile(np.arange(12), 2),
         "degradation": rng.normal(0.1, 0.05, size=24)}
    )  # fmt: skip
    a = paired_bootstrap(table, by=["method"], n_boot=500, seed=3)
    b = paired_bootstrap(table, by=["method"], n_boot=500, seed=3)
    c = paired_bootstrap(table, by=["method"], n_boot=500, seed=4)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a.ci_low, c.ci_low)


def test_degenerate_groups_are_refused_or_degenerate():
    table = pd.DataFrame(
        {
            "method": ["one", "flat", "flat", "flat", "none"],
            "seed": [0, 0, 1, 2, 0],
            "degradation": [0.5, 0.2, 0.2, 0.2, np.nan],
        }
    )
    out = paired_bootstrap(table, by=["method"], n_boot=100).set_index("method")
    assert out.loc["one", "mean"] == 0.5 and np.isnan(out.loc["one", "ci_low"])
    assert "1 seed: no CI" in out.loc["one", "note"]
    assert out.loc["flat", ["ci_low", "ci_high"]].tolist() == [0.2, 0.2]
    assert np.isnan(out.loc["flat", "p_ttest"]) and "constant" in out.loc["flat", "note"]
    assert out.loc["none", "n_seeds"] == 0 and "NaN left out" in out.loc["none", "note"]
    assert mean_ci([1.0, np.nan])["n"] == 1


# --- Holm and Pareto -----------------------------------------------------------------------------


def test_holm_against_a_hand_computed_example():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> max so far 0.06
    assert holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # NaN is no comparison: m = 2
    out = holm_adjust([0.01, np.nan, 0.04])
    assert out[0] == pytest.approx(0.02) and np.isnan(out[1]) and out[2] == pytest.approx(0.04)


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_pareto_mask_against_brute_force(direction):
    rng = np.random.default_rng(9)
    sign = 1 if direction == "minimize" else -1
    for _ in range(50):
        cost = rng.integers(0, 6, size=12).astype(float)  # small ranges: many ties
        value = rng.integers(0, 6, size=12).astype(float)
        value[rng.integers(0, 12)] = np.nan
        v = sign * value
        truth = [
            np.isfinite(v[i])
            and not any(
                np.isfinite(v[j]) and cost[j] <= cost[i] and v[j] <= v[i]
                and (cost[j] < cost[i] or v[j] < v[i])
                for j in range(12)
            )
            for i in range(12)
        ]  # fmt: skip
        assert pareto_mask(cost, value, direction).tolist() == truth
