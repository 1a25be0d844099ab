"""analysis.stats against statsmodels, closed forms, simulation with known truth and hand counts."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import statsmodels.formula.api as smf
from scipy import stats as st
from statsmodels.stats.anova import AnovaRM

from analysis.stats import (
    degradation,
    factor_effects,
    holm_adjust,
    mean_ci,
    paired_bootstrap,
    paired_intervals,
    pareto_mask,
    partial_eta_sq_interval,
)

# --- factor_effects: a planted interaction -------------------------------------------------------


def _two_by_two(reps: int, sigma: float, interaction: float, rng) -> pd.DataFrame:
    """y = a + b + interaction * a * b + N(0, sigma^2), a, b in {0, 1}, ``reps`` runs per cell."""
    a = np.repeat([0, 0, 1, 1], reps)
    b = np.repeat([0, 1, 0, 1], reps)
    y = a + b + interaction * a * b + rng.normal(0.0, sigma, size=a.size)
    return pd.DataFrame({"a": a, "b": b, "y": y, "seed": np.tile(np.arange(reps), 4)})


def _paired_design(seeds: int, rng, *, seed_sd: float = 0.5) -> pd.DataFrame:
    """method (3) x hidden (2) x seed, one run per cell and seed; each seed shifts all its runs.

    y = 1 + method effect + hidden effect + an interaction in (b, 32) + seed offset + noise.
    """
    rows = []
    for seed in range(seeds):
        offset = rng.normal(0.0, seed_sd)
        for method, e_m in zip("abc", (0.0, 0.3, 0.1), strict=True):
            for hidden, e_h in ((16, 0.0), (32, -0.2)):
                inter = 0.2 if (method, hidden) == ("b", 32) else 0.0
                y = 1.0 + e_m + e_h + inter + offset + rng.normal(0.0, 0.1)
                rows.append({"method": method, "hidden": hidden, "seed": seed, "y": y})
    return pd.DataFrame(rows)


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


def test_paired_anova_matches_statsmodels_with_seed_as_a_block():
    # The reference: statsmodels' own formula with treatment coding (ours uses Sum contrasts and
    # type III; in a balanced design the F tests agree to rounding).
    data = _paired_design(seeds=5, rng=np.random.default_rng(42))
    table = factor_effects(data, "y", ["method", "hidden"]).set_index("term")
    ref = sm.stats.anova_lm(smf.ols("y ~ C(seed) + C(method) * C(hidden)", data).fit(), typ=2)
    names = {"method": "C(method)", "hidden": "C(hidden)", "method:hidden": "C(method):C(hidden)",
             "seed": "C(seed)", "Residual": "Residual"}  # fmt: skip
    assert list(table.index) == list(names)
    for ours, theirs in names.items():
        assert table.loc[ours, "df"] == ref.loc[theirs, "df"]
        assert table.loc[ours, "sum_sq"] == pytest.approx(ref.loc[theirs, "sum_sq"], rel=1e-8)
        if ours != "Residual":
            assert table.loc[ours, "F"] == pytest.approx(ref.loc[theirs, "F"], rel=1e-8)
            assert table.loc[ours, "p_value"] == pytest.approx(ref.loc[theirs, "PR(>F)"], rel=1e-8)
    assert table.loc["Residual", "df"] == (6 - 1) * (5 - 1)  # seed x configuration
    assert table.attrs["block"] == "seed" and table.attrs["n_blocks"] == 5
    assert table.attrs["n"] == 30 and table.attrs["replicates"] == 5
    assert "C(seed, Sum) + C(method, Sum) * C(hidden, Sum)" in table.attrs["formula"]
    # the partial eta^2 interval of each term is the one computed from its F and df
    for term in ("method", "hidden", "method:hidden"):
        low, high = partial_eta_sq_interval(table.loc[term, "F"], table.loc[term, "df"], 20.0)
        assert table.loc[term, ["eta_sq_low", "eta_sq_high"]].tolist() == pytest.approx([low, high])
        assert low <= table.loc[term, "partial_eta_sq"] <= high


def test_one_factor_paired_anova_equals_repeated_measures_anova():
    # With one within-seed factor the blocked ANOVA is the repeated-measures ANOVA (AnovaRM).
    data = _paired_design(seeds=4, rng=np.random.default_rng(3))
    data = data[data.hidden == 16]
    table = factor_effects(data, "y", ["method"]).set_index("term")
    ref = AnovaRM(data, "y", "seed", within=["method"]).fit().anova_table.loc["method"]
    assert table.loc["method", "F"] == pytest.approx(ref["F Value"], rel=1e-8)
    assert table.loc["method", "df"] == ref["Num DF"]
    assert table.loc["Residual", "df"] == ref["Den DF"]
    assert table.loc["method", "p_value"] == pytest.approx(ref["Pr > F"], rel=1e-8)


def test_the_seed_block_removes_seed_to_seed_variation():
    # Seeds that shift every run by a lot hide a real method effect from the unpaired ANOVA.
    data = _paired_design(seeds=4, rng=np.random.default_rng(8), seed_sd=2.0)
    paired = factor_effects(data, "y", ["method", "hidden"]).set_index("term")
    unpaired = factor_effects(data, "y", ["method", "hidden"], block=None).set_index("term")
    assert paired.loc["method", "p_value"] < 1e-4 < 0.05 < unpaired.loc["method", "p_value"]
    assert unpaired.loc["Residual", "df"] == 24 - 6 and unpaired.attrs["block"] is None


def test_planted_interaction_is_found_with_eight_seeds():
    # lambda_ab = reps * sum(gamma^2) / sigma^2 = 8 * 4 * 0.2^2 / 0.2^2 = 32: power at 0.01 ~ 0.99
    data = _two_by_two(reps=8, sigma=0.2, interaction=0.8, rng=np.random.default_rng(1))
    table = factor_effects(data, "y", ["a", "b"]).set_index("term")
    assert list(table.index) == ["a", "b", "a:b", "seed", "Residual"]
    assert table.loc["a:b", "p_value"] < 0.01
    assert table.loc["Residual", "df"] == (4 - 1) * (8 - 1)
    assert table.attrs["typ"] == 3 and table.attrs["replicates"] == 8


def test_partial_eta_squared_matches_the_closed_form():
    # Unpaired design (block=None). Cell means mu_ij = i + j + 0.8 ij. With sum-to-zero effects:
    # main effects +-0.7 (a and b), interaction +-0.8/4 = +-0.2 in each of the 4 cells.
    # SS_term / sigma^2 is noncentral chi2 with lambda = reps * sum over cells of effect^2 /
    # sigma^2, SS_resid / sigma^2 ~ chi2(N - 4), so partial eta^2 = SS_term / (SS_term +
    # SS_resid) follows a noncentral Beta whose mean and sd we compute exactly. Treatment
    # contrasts under type III, or eta^2 over SS_total, would land far outside the tolerance.
    reps, sigma = 200, 0.1
    data = _two_by_two(reps=reps, sigma=sigma, interaction=0.8, rng=np.random.default_rng(7))
    table = factor_effects(data, "y", ["a", "b"], block=None).set_index("term")
    n = 4 * reps
    for term, effect in (("a", 0.7), ("b", 0.7), ("a:b", 0.2)):
        lam = reps * 4 * effect**2 / sigma**2
        mean, sd = _noncentral_beta_moments(1.0, n - 4.0, lam)
        assert 4 * sd < 0.05 * mean, "the tolerance must stay tight"
        assert table.loc[term, "partial_eta_sq"] == pytest.approx(mean, abs=4 * sd), term
        if term == "a:b":  # the estimator's mean is near the population 0.04 / (0.04 + 0.01)
            assert mean == pytest.approx(0.8, abs=0.002)


def test_false_positive_rate_of_the_paired_anova_is_alpha():
    # 200 null datasets (2 x 3 design, 4 seeds, each seed shifting its runs by N(0, 1)): the count
    # of p < 0.05 for each term must lie within 3 binomial sds of 200 * 0.05 = 10 (sd 3.08), and
    # the interaction's p-values must look uniform (Kolmogorov-Smirnov), which also catches
    # p-values stuck near 1.
    rng = np.random.default_rng(2024)
    hits = {"a": 0, "b": 0, "a:b": 0}
    p_interaction = []
    n_sets = 200
    a = np.repeat(["x", "y"], 12)
    b = np.tile(np.repeat(["p", "q", "r"], 4), 2)
    seed = np.tile(np.arange(4), 6)
    for _ in range(n_sets):
        y = rng.normal(size=4)[seed] + rng.normal(size=24)
        data = pd.DataFrame({"a": a, "b": b, "seed": seed, "y": y})
        table = factor_effects(data, "y", ["a", "b"], ci=None).set_index("term")
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
    assert list(table["term"]) == ["a", "b", "seed", "Residual"]
    assert table.loc[3, "df"] == 20 - 3 - 4


@pytest.mark.parametrize(
    ("mutate", "block", "message"),
    [
        (lambda d: d.iloc[1:], "seed", r"unbalanced design .* a=0, b=0, seed=0: 0 run\(s\)"),
        (lambda d: d[~((d.a == 1) & (d.b == 1))], "seed", r"unbalanced .* a=1, b=1, seed=0: 0 run"),
        (lambda d: d.iloc[1:], None, r"unbalanced design .* a=0, b=0: 2 run\(s\)"),
        (lambda d: d[d.a == 0], "seed", r"factor 'a' has 1 level"),
        (lambda d: d[d.seed == 0], "seed", r"block 'seed' has 1 level.*block=None"),
        (lambda d: d[d.seed == 0], None, r"residual degrees of freedom would be 4 runs - 4 .* too few"),
        (lambda d: d.assign(y=d.y.where(d.seed != 1)), "seed", r"response 'y' is missing in 4 run"),
        (lambda d: d.drop(columns="seed"), "seed", r"missing column\(s\) \['seed'\]"),
    ],
    ids=["unbalanced", "empty-cell", "unbalanced-unpaired", "one-level", "one-seed",
         "too-few-seeds", "nan-response", "no-seed-column"],
)  # fmt: skip
def test_factor_effects_refuses_designs_it_cannot_analyse(mutate, block, message):
    data = _two_by_two(reps=3, sigma=0.3, interaction=0.0, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=message):
        factor_effects(mutate(data), "y", ["a", "b"], block=block)


def test_factor_effects_names_missing_columns_and_bad_type():
    data = _two_by_two(reps=3, sigma=0.3, interaction=0.0, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"factor_effects: missing column\(s\) \['c'\]"):
        factor_effects(data, "y", ["a", "c"])
    with pytest.raises(ValueError, match="typ must be 1, 2 or 3"):
        factor_effects(data, "y", ["a", "b"], typ=4)
    with pytest.raises(ValueError, match="the block 'a' is also a factor"):
        factor_effects(data, "y", ["a", "b"], block="a")


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


# --- paired_intervals ----------------------------------------------------------------------------


def _groups(rng, groups: int, n: int, mean: float) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "method": np.repeat([f"m{i:03d}" for i in range(groups)], n),
            "seed": np.tile(np.arange(n), groups),
            "degradation": rng.normal(mean, 1.0, size=groups * n),
        }
    )


def test_intervals_cover_the_true_mean_at_the_nominal_rate_with_twenty_seeds():
    # 200 groups of 20 per-seed differences ~ N(0.3, 1): the 95% t-interval covers 0.3 in 95% of
    # them within 3 binomial sds (sd = sqrt(.95 * .05 / 200) = 0.0154); so does the bootstrap at
    # this n (it is the small-n bootstrap that fails: test_intervals.py).
    groups = 200
    out = paired_intervals(_groups(np.random.default_rng(11), groups, 20, 0.3), by=["method"],
                           n_boot=2000, seed=0)  # fmt: skip
    tolerance = 3 * np.sqrt(0.95 * 0.05 / groups)
    for low, high in (("ci_low", "ci_high"), ("boot_low", "boot_high")):
        covered = ((out[low] <= 0.3) & (out[high] >= 0.3)).mean()
        assert abs(covered - 0.95) <= tolerance, (low, covered)
    assert (out.ci_method == "t").all() and (out.n == 20).all() and (out.df == 19).all()


def test_no_bootstrap_interval_below_five_seeds():
    rng = np.random.default_rng(4)
    table = pd.concat(
        [_groups(rng, 1, n, 0.2).assign(method=f"n{n}") for n in (2, 3, 4, 5, 6)], ignore_index=True
    )
    out = paired_intervals(table, by=["method"], n_boot=500, seed=0).set_index("method")
    small, large = ["n2", "n3", "n4"], ["n5", "n6"]
    assert out.loc[small, ["boot_low", "boot_high"]].isna().all().all()
    for name in small:
        assert f"n={out.loc[name, 'n']} < 5: no bootstrap CI" in out.loc[name, "note"]
    assert np.isfinite(out.loc[large, ["boot_low", "boot_high"]].to_numpy()).all()
    assert np.isfinite(out[["ci_low", "ci_high"]].to_numpy()).all()  # the t-interval everywhere
    assert out.attrs["min_bootstrap_n"] == 5 and out.attrs["ci_method"] == "t"
    # asking for bootstrap CIs refuses the small groups by name
    with pytest.raises(ValueError, match=r"fewer than 5 seeds.*method=n2 \(n=2\).*method=n4 \(n=4\)"):
        paired_intervals(table, by=["method"], ci_method="bca", n_boot=500)
    big = paired_intervals(table[table.method.isin(large)], by=["method"], ci_method="bca", n_boot=500)
    assert (big.ci_method == "BCa").all()
    assert big.ci_low.tolist() == big.boot_low.tolist()
    with pytest.raises(ValueError, match="no bootstrap CI with fewer than 5 values, got n=3"):
        mean_ci([1.0, 2.0, 4.0], ci_method="bca")


def test_paired_ttest_false_positive_rate_and_holm_column():
    groups = 200
    out = paired_intervals(_groups(np.random.default_rng(5), groups, 8, 0.0), by=["method"], n_boot=0)
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


def test_paired_intervals_on_a_study_match_scipy_paired_tests():
    frame = _study("minimize")
    rng = np.random.default_rng(0)
    frame["obj"] = frame["obj"] + rng.normal(0.0, 0.01, size=len(frame))
    table = degradation(frame)
    out = paired_intervals(frame, n_boot=500).set_index(["method", "hidden"])
    for (method, hidden), part in table.groupby(["method", "hidden"]):
        part = part.sort_values("seed")
        row = out.loc[(method, hidden)]
        ref = st.ttest_rel(part["value"], part["baseline_value"])
        assert row["p_ttest"] == pytest.approx(ref.pvalue)
        ci = ref.confidence_interval(0.95)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((ci.low, ci.high))
        assert row["mean"] == pytest.approx(part["degradation"].mean())
        d = part["degradation"].to_numpy()
        assert row["d_z"] == pytest.approx(d.mean() / d.std(ddof=1))
        assert row["d_z_low"] < row["d_z"] < row["d_z_high"]
        assert (row["n"], row["df"]) == (3, 2)
    assert out["p_wilcoxon"].isna().all() and out["boot_low"].isna().all()  # 3 seeds
    assert (out["note"].str.contains("no Wilcoxon") & out["note"].str.contains("no bootstrap")).all()


def test_paired_intervals_are_deterministic_given_the_seed():
    rng = np.random.default_rng(0)
    table = pd.DataFrame(
        {"method": np.repeat(["bc", "lab"], 12), "seed": np.tile(np.arange(12), 2),
         "degradation": rng.normal(0.1, 0.05, size=24)}
    )  # fmt: skip
    a = paired_intervals(table, by=["method"], n_boot=500, seed=3)
    b = paired_intervals(table, by=["method"], n_boot=500, seed=3)
    c = paired_intervals(table, by=["method"], n_boot=500, seed=4)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a.boot_low, c.boot_low)
    assert np.allclose(a.ci_low, c.ci_low)  # the t-interval has no randomness
    assert paired_bootstrap is paired_intervals  # the former name


def test_degenerate_groups_are_refused_or_degenerate():
    table = pd.DataFrame(
        {
            "method": ["one", "flat", "flat", "flat", "none"],
            "seed": [0, 0, 1, 2, 0],
            "degradation": [0.5, 0.2, 0.2, 0.2, np.nan],
        }
    )
    out = paired_intervals(table, by=["method"], n_boot=100).set_index("method")
    assert out.loc["one", "mean"] == 0.5 and np.isnan(out.loc["one", "ci_low"])
    assert "1 seed: no CI" in out.loc["one", "note"]
    assert out.loc["flat", ["ci_low", "ci_high"]].tolist() == [0.2, 0.2]
    assert np.isnan(out.loc["flat", "p_ttest"]) and "constant" in out.loc["flat", "note"]
    assert np.isnan(out.loc["flat", "d_z"])
    assert out.loc["none", "n"] == 0 and "NaN left out" in out.loc["none", "note"]
    assert mean_ci([1.0, np.nan])["n"] == 1


def test_mean_ci_is_the_t_interval():
    values = [1.0, 1.4, 0.9, 1.2]
    got = mean_ci(values)
    ref = st.ttest_1samp(values, 0.0).confidence_interval(0.95)
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((ref.low, ref.high))
    assert (got["n"], got["df"], got["ci_method"], got["note"]) == (4, 3, "t", "")


def test_interval_arguments_are_checked():
    table = _groups(np.random.default_rng(0), 2, 5, 0.0)
    for kwargs, message in (({"ci": 1.0}, "ci must be in"), ({"ci_method": "z"}, "ci_method must be"),
                            ({"n_boot": -1}, "n_boot must be >= 0"),
                            ({"ci_method": "bca", "n_boot": 0}, "n_boot must be >= 1")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            paired_intervals(table, by=["method"], **kwargs)
    out = paired_intervals(table, by=["method"], n_boot=0)  # no bootstrap at all
    assert out.boot_low.isna().all() and not out.note.str.contains("bootstrap").any()


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


def test_tables_follow_the_grid_level_order_not_the_sorted_one():
    # the study lists methods fp, lab, bwn, bc and widths 64, 8: tables read in that order, as
    # the figures do, whatever order sorting or the rows give
    from analysis._evidence import bptt_growth_table, floor_table
    from analysis.stats import in_grid_order

    grid = {"method": ["fp", "lab", "bwn", "bc"], "hidden": [64, 8]}
    rows = []
    for method in ["bc", "bwn", "fp", "lab"]:
        for hidden in [8, 64]:
            for seed in (0, 1, 2):
                score = 2.0 + 0.1 * seed + {"fp": 0, "lab": 0.1, "bwn": 0.3, "bc": 0.5}[method]
                rows.append({"run_id": f"{method}-{hidden}-{seed}", "method": method, "hidden": hidden,
                             "seed": seed, "test_bpc": score, "floor_bigram_bpc": 3.0,
                             "floor_unigram_bpc": 4.0, "bptt_growth": 1.0 + 0.01 * seed})  # fmt: skip
    frame = pd.DataFrame(rows)
    frame.attrs = {"objective": "test_bpc", "direction": "minimize", "baseline": {"method": "fp"},
                   "axes": ["method", "hidden"], "levels": grid}  # fmt: skip
    want = [(m, h) for m in grid["method"] for h in grid["hidden"]]

    def order(table):
        return list(zip(table["method"], table["hidden"], strict=True))

    stats = paired_intervals(degradation(frame), n_boot=0)
    assert order(stats) == [k for k in want if k[0] != "fp"]
    assert stats.loc[stats["method"] == "bc", "mean"].tolist() == pytest.approx([0.5, 0.5])
    assert order(floor_table(frame)) == want
    assert order(bptt_growth_table(frame)) == want
    # without grid levels: sorted; values the grid lacks come after the grid's, sorted
    frame.attrs.pop("levels")
    assert order(paired_intervals(degradation(frame), n_boot=0))[0] == ("bc", 8)
    partial = in_grid_order(frame, ["method"], {"method": ["lab", "fp"]})
    assert list(dict.fromkeys(partial["method"])) == ["lab", "fp", "bc", "bwn"]
