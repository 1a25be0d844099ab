"""The findings page's numbers against scipy, on a planted archive frame."""

import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.findings import FindingsError, evaluate, render_findings


@pytest.fixture
def archives():
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(5):
        for method, shift in (("fp", 0.0), ("bc", 1.5), ("bc-scaled:2", 0.7)):
            rows.append({"method": method, "hidden": 64, "seed": seed, "clip": "gate:5",
                         "test_bpc": 3.0 + shift + rng.normal(0, 0.1),
                         "grad": 10.0 ** (2 + 6 * (method == "bc") + rng.normal(0, 0.2)),
                         "floor_bigram_bpc": 4.03})
    return {"s": pd.DataFrame(rows)}


def _ci(x):
    x = np.asarray(x, float)
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return x.mean(), x.mean() - half, x.mean() + half


def test_mean_is_the_student_t_interval(archives):
    frame = archives["s"]
    m, lo, hi = _ci(frame[frame.method == "bc"].test_bpc)
    text = evaluate("mean s test_bpc method=bc,hidden=64", archives)
    assert text == f"{m:.2f} (95% CI {lo:.2f} to {hi:.2f}, n = 5)"


def test_diff_is_paired_by_seed(archives):
    frame = archives["s"].sort_values("seed")
    d = frame[frame.method == "bc"].test_bpc.to_numpy() - frame[frame.method == "fp"].test_bpc.to_numpy()
    m, lo, hi = _ci(d)
    got = evaluate("diff s test_bpc method=bc vs method=fp", archives)
    assert got == f"{m:+.2f} (95% CI {lo:.2f} to {hi:.2f}, paired by seed, n = 5)"
    assert stats.ttest_rel(frame[frame.method == "bc"].test_bpc,
                           frame[frame.method == "fp"].test_bpc).pvalue < 0.05


def test_logmean_value_and_count(archives):
    frame = archives["s"]
    m, lo, hi = _ci(np.log10(frame[frame.method == "bc"].grad))
    assert evaluate("logmean s grad method=bc", archives) == \
        f"10^{m:.1f} (95% CI 10^{lo:.1f} to 10^{hi:.1f}, n = 5)"
    assert evaluate("value s floor_bigram_bpc method=fp", archives) == "4.03"
    assert evaluate("n s method=bc-scaled:2", archives) == "5"
    assert evaluate("n s hidden=64.0", archives) == "15"  # numbers match numerically


@pytest.mark.parametrize(("expr", "message"), [
    ("mean t test_bpc", "no archive for study 't'"),
    ("mean s nope method=fp", "no metric 'nope'"),
    ("mean s test_bpc colour=red", "no column 'colour'"),
    ("mean s test_bpc method=lab", "no run matches"),
    ("value s test_bpc method=fp", "differs between"),
    ("diff s test_bpc hidden=64 vs method=fp", "several runs per seed"),
    ("median s test_bpc", "unknown kind"),
    ("mean s+t test_bpc", "no archive for study 't'"),
])
def test_bad_expressions_are_named(archives, expr, message):
    with pytest.raises(FindingsError, match=message):
        evaluate(expr, archives)


def test_render_collects_every_error(tmp_path):
    with pytest.raises(FindingsError) as err:
        render_findings("a {{ mean x m }} b {{ n y }}", tmp_path)
    assert "'x'" in str(err.value) and "'y'" in str(err.value)


def test_range_and_count_below_another_metric(archives):
    frame = archives["s"]
    bc = frame[frame.method == "bc"].test_bpc
    assert evaluate("range s test_bpc method=bc", archives) == \
        f"{bc.min():.2f} to {bc.max():.2f} (n = 5)"
    expected = int((frame.test_bpc < frame.floor_bigram_bpc).sum())
    assert evaluate("nbelow s test_bpc floor_bigram_bpc hidden=64", archives) == f"{expected} of 15"


def test_diff2_is_the_paired_interaction(archives):
    frame = archives["s"].sort_values("seed")
    col = {m: frame[frame.method == m].test_bpc.to_numpy() for m in ("fp", "bc", "bc-scaled:2")}
    d = (col["bc"] - col["fp"]) - (col["bc-scaled:2"] - col["fp"])
    m, lo, hi = _ci(d)
    got = evaluate("diff2 s test_bpc method=bc vs method=fp minus method=bc-scaled:2 vs method=fp",
                   archives)
    numbers = [float(x) for x in re.findall(r"[-+]?\d+\.\d+", got)]
    assert numbers == pytest.approx([m, lo, hi], abs=6e-3) and got.endswith("paired by seed, n = 5)")
    with pytest.raises(FindingsError, match="minus"):
        evaluate("diff2 s test_bpc method=bc vs method=fp", archives)


def _study(name: str, hidden: int, shift: float, seed: int, end: str) -> pd.DataFrame:
    """An archive-like frame: fp and bc at one width, 5 seeds, bc ``shift`` worse, own noise."""
    rng = np.random.default_rng(seed)
    rows = [{"run_id": f"{name}-{method}-{s}", "cell": f"{method}-{hidden}", "method": method,
             "hidden": hidden, "seed": s, "end_time": pd.Timestamp(end, tz="UTC"),
             "test_bpc": 3.0 + shift * (method == "bc") + rng.normal(0, 0.1)}
            for method in ("fp", "bc") for s in range(5)]
    frame = pd.DataFrame(rows)
    frame.attrs = {"study": name, "objective": "test_bpc", "direction": "minimize",
                   "baseline": {"method": "fp"}, "axes": ["method"], "param_columns": ["method", "hidden"],
                   "archive": [f"/a/{name}"]}
    return frame


def test_studies_joined_by_plus_are_one_analysis(archives):
    """An interaction across two studies (one width each), against scipy on the pooled runs; a
    (cell, seed) both studies ran counts once (the run that ended first), as in `labbench report A B`."""
    narrow, wide = _study("n", 64, 1.0, 1, "2026-01-01"), _study("w", 256, 0.6, 2, "2026-01-02")
    rerun = _study("r", 64, 5.0, 3, "2026-01-03")  # narrow's cells again, ended later: dropped
    both = {"n": narrow, "w": wide, "r": rerun}
    col = {(m, h): f[f.method == m].sort_values("seed").test_bpc.to_numpy()
           for f, h in ((narrow, 64), (wide, 256)) for m in ("fp", "bc")}
    m, lo, hi = _ci((col["bc", 256] - col["fp", 256]) - (col["bc", 64] - col["fp", 64]))
    expr = ("diff2 {} test_bpc method=bc,hidden=256 vs method=fp,hidden=256 minus "
            "method=bc,hidden=64 vs method=fp,hidden=64")
    for study in ("n+w", "r+n+w"):
        got = evaluate(expr.format(study), both)
        numbers = [float(x) for x in re.findall(r"[-+]?\d+\.\d+", got)]
        assert numbers == pytest.approx([m, lo, hi], abs=6e-3) and got.endswith("paired by seed, n = 5)")
    assert evaluate("n r+n+w method=bc", both) == "10"
    other = _study("o", 64, 1.0, 4, "2026-01-04")
    other.attrs["objective"] = "test_loss"
    with pytest.raises(FindingsError, match="different objectives"):
        evaluate("n n+o method=bc", {**both, "o": other})
    with pytest.raises(FindingsError, match="given twice"):
        evaluate("n n+n method=bc", both)
