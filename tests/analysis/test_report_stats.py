"""The report's statistics tables: no bootstrap CIs below 5 seeds, paired t-intervals, n shown,
the ANOVA with the seed as a block. Built from in-memory study frames (no MLflow needed)."""

from __future__ import annotations

import html
import re

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import statsmodels.formula.api as smf
from scipy import stats as st

from analysis._render import fmt_number as num
from analysis._render import to_markdown
from analysis.report import _anova_section, _degradation_section, _study_data

EFFECT = {"fp": 0.0, "bc": 0.3, "lab": 0.05}


def _frame(seeds: int, drop: tuple = ()) -> pd.DataFrame:
    """A finished study: method x hidden x seeds; each seed shifts all its runs (paired design).

    ``drop``: (method, hidden, seed) keys of runs that did not finish.
    """
    rng = np.random.default_rng(seeds)
    rows = []
    for seed in range(seeds):
        offset = rng.normal(0.0, 0.2)
        for method, effect in EFFECT.items():
            for hidden in (16, 32):
                if (method, hidden, seed) in drop:
                    continue
                y = 1.5 - 0.1 * (hidden == 32) + effect + offset + rng.normal(0.0, 0.05)
                rows.append({"run_id": f"{method}-{hidden}-{seed}", "cell": f"{method}-{hidden}",
                             "seed": seed, "method": method, "hidden": hidden, "test_xent": y})  # fmt: skip
    frame = pd.DataFrame(rows)
    frame.attrs = {"study": "s", "objective": "test_xent", "direction": "minimize",
                   "baseline": {"method": "fp"}, "axes": ["method", "hidden"],
                   "metric_columns": {"test_xent": "test_xent"}, "seeds": list(range(seeds))}  # fmt: skip
    return frame


def _tables(markdown: str) -> list[pd.DataFrame]:
    """The Markdown tables of a rendered section, as string frames (escapes undone)."""
    tables, lines = [], []
    for line in [*markdown.splitlines(), ""]:
        if line.startswith("|"):
            cells = re.split(r"(?<!\\)\|", line.strip().removeprefix("|").removesuffix("|"))
            lines.append([html.unescape(re.sub(r"\\(.)", r"\1", c.strip())) for c in cells])
        elif lines:
            tables.append(pd.DataFrame(lines[2:], columns=lines[0]))
            lines = []
    return tables


def _degradation_markdown(frame: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    md = to_markdown(_degradation_section(_study_data(frame, n_boot=500, seed=0)), "t", "figures")
    (table,) = _tables(md)
    return md, table


@pytest.mark.parametrize("seeds", [2, 3, 4])
def test_report_refuses_bootstrap_cis_below_five_seeds(seeds):
    frame = _frame(seeds)
    md, table = _degradation_markdown(frame)
    assert "BCa" not in " ".join(table.columns) and "CI (BCa)" not in md
    assert f"No bootstrap CIs: every row has fewer than 5 seeds (n = {seeds})" in md
    assert "half the time at n = 2" in md  # says why
    # every row shows n, df and the paired t-interval of the per-seed differences
    assert (table["n"] == str(seeds)).all() and (table["df"] == str(seeds - 1)).all()
    for _, row in table.iterrows():
        part = frame[frame.hidden == int(row["hidden"])].pivot(index="seed", columns="method",
                                                               values="test_xent")  # fmt: skip
        ref = st.ttest_rel(part[row["method"]], part["fp"])
        ci = ref.confidence_interval(0.95)
        assert row["95% CI (t)"] == f"{num(ci.low)} to {num(ci.high)}"
        assert row["mean"] == num((part[row["method"]] - part["fp"]).mean())
        assert "no bootstrap CI" in row["note"]


def test_report_adds_bootstrap_cis_only_for_rows_with_five_seeds_or_more():
    frame = _frame(6, drop=(("bc", 32, 4), ("bc", 32, 5)))  # bc at hidden 32: 4 seeds
    md, table = _degradation_markdown(frame)
    assert "only the rows with at least 5 seeds" in md and "the one to read" in md
    table = table.set_index(["method", "hidden"])
    assert table.loc[("bc", "32"), "n"] == "4"
    assert table.loc[("bc", "32"), "95% CI (BCa)"] == "—"
    assert "n=4 < 5: no bootstrap CI" in table.loc[("bc", "32"), "note"]
    for key in [("bc", "16"), ("lab", "16"), ("lab", "32")]:
        assert table.loc[key, "n"] == "6" and " to " in table.loc[key, "95% CI (BCa)"]
        assert " to " in table.loc[key, "95% CI (t)"] and " to " in table.loc[key, "95% CI (d_z)"]


def test_report_anova_has_the_seed_block_and_shows_n():
    frame = _frame(4)
    md = to_markdown(_anova_section(_study_data(frame, n_boot=100, seed=0)), "t", "figures")
    assert "with the seed as a block" in md and "n = 24 runs in 6 cells (4 per cell over 4 seeds)" in md
    (table,) = _tables(md)
    table = table.set_index("term")
    assert list(table.index) == ["method", "hidden", "method:hidden", "seed (block)", "Residual"]
    assert (table["n"] == "24").all()
    ref = sm.stats.anova_lm(smf.ols("test_xent ~ C(seed) + C(method) * C(hidden)", frame).fit(), typ=2)
    assert table.loc["method", "F"] == num(ref.loc["C(method)", "F"])
    assert table.loc["Residual", "df"] == num(ref.loc["Residual", "df"]) == "15"
    assert " to " in table.loc["method", "95% CI (partial eta^2)"]
    assert table.loc["Residual", "95% CI (partial eta^2)"] == "—"


def test_report_anova_of_a_study_missing_a_seed_of_one_cell_is_refused():
    frame = _frame(4, drop=(("lab", 16, 2),))
    md = to_markdown(_anova_section(_study_data(frame, n_boot=100, seed=0)), "t", "figures")
    assert "No ANOVA: factor_effects: unbalanced design" in md
    assert "method=lab, hidden=16, seed=2: 0 run(s)" in md
