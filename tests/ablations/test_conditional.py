"""Conditional axes ([grid.when.METHOD]): the study file's form and its errors, and a conditional
grid end to end, through the analysis (issue 11, "Conditional axes")."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from ablations.spec import StudyError, spec_from_dict
from analysis import load_runs, missing_cells
from tests.ablations.helpers import TINY, cli, load_study, mlflow_runs, write_study


def _doc(grid, **study):
    return {"study": {"name": "cond", "objective": "test_acc", "seeds": [0],
                      "baseline": {"method": "fp"}, **study}, "base": dict(TINY), "grid": grid}


def test_cells_are_the_shared_product_then_each_method_s_own_axes():
    spec = spec_from_dict(_doc({"method": ["fp", "lab", "laq"], "lr": [0.1, 0.01],
                                "when": {"laq": {"bits": [2, 4], "levels": ["linear", "log"]}}},
                               seeds=[0, 1]), where="c.toml")
    expected = [{"method": m, "lr": lr} for m in ("fp", "lab") for lr in (0.1, 0.01)]
    expected += [{"method": "laq", "lr": lr, "bits": b, "levels": lv}
                 for lr in (0.1, 0.01) for b in (2, 4) for lv in ("linear", "log")]
    cells = spec.cells()
    assert sorted(map(json.dumps, cells)) == sorted(map(json.dumps, expected))
    assert spec.n_runs == len(expected) * 2 == 24 and len(spec.slots()) == 24
    assert spec.axes == ("method", "lr", "bits", "levels")
    for cell in cells:  # bits reaches laq's runs only
        assert spec.config(cell, 0).bits == cell.get("bits")
    assert spec_from_dict(spec.to_dict(), where="stored") == spec  # the stored form round-trips


@pytest.mark.parametrize(("grid", "key", "words"), [
    ({"method": ["fp", "lab"], "when": {"laq": {"bits": [2]}}}, "grid.when.laq",
     "'laq' is not a value of grid.method"),
    ({"method": ["fp", "lab"], "when": {"lan": {"bits": [2]}}}, "grid.when.lan",
     "(did you mean 'lab'?)"),
    ({"lr": [0.1], "when": {"laq": {"bits": [2]}}}, "grid.when", "need a method axis"),
    ({"method": ["fp", "laq"], "bits": [2], "when": {"laq": {"bits": [2, 4]}}},
     "grid.when.laq.bits", "also an axis of [grid]"),
    ({"method": ["fp", "laq"], "when": {"laq": {"method": ["lab"]}}}, "grid.when.laq.method",
     "cannot be a conditional axis"),
    ({"method": ["fp", "laq"], "when": {"laq": {"bitz": [2]}}}, "grid.when.laq.bitz",
     "unknown field (did you mean 'bits'?)"),
    ({"method": ["fp", "laq", "lab"], "when": {"lab": {"bits": [2]}}}, "grid.when.lab.bits",
     "only applies to method 'laq'"),
    ({"method": ["fp", "laq"], "when": {"laq": {"bits": [2, 9]}}}, "grid.when.laq.bits",
     "value 9: expected 2 <= bits <= 8"),
    ({"method": ["fp", "laq"], "when": {"laq": {"bits": []}}}, "grid.when.laq.bits", "empty list"),
    ({"method": ["fp", "laq"], "when": {"laq": {}}}, "grid.when.laq", "expected a table of axes"),
    ({"method": ["fp", "laq"], "when": ["laq"]}, "grid.when", "expected tables"),
])
def test_a_bad_conditional_axis_names_the_file_and_key(grid, key, words):
    with pytest.raises(StudyError) as caught:
        spec_from_dict(_doc(grid), where="c.toml")
    assert caught.value.key == key and str(caught.value).startswith(f"c.toml: {key}: ")
    assert words in str(caught.value)


def test_conditional_axes_conflict_with_base_and_baseline():
    doc = _doc({"method": ["fp", "laq"], "when": {"laq": {"levels": ["log"]}}})
    doc["base"]["levels"] = "log"
    with pytest.raises(StudyError, match=r"c.toml: grid.when.laq.levels: also set in \[base\]"):
        spec_from_dict(doc, where="c.toml")
    doc = _doc({"method": ["fp", "laq"], "when": {"laq": {"bits": [2, 4]}}},
               baseline={"method": "laq"})
    with pytest.raises(StudyError, match=r"c.toml: study.baseline.method: method 'laq' has "
                                         "conditional axes"):
        spec_from_dict(doc, where="c.toml")


def test_a_conditional_grid_end_to_end(tmp_path, capsys):
    """fp and lab once per seed, laq once per bits value: 4 runs, no bits given to fp; the
    analysis sees laq:2 and laq:4 as method levels (or bits as a factor of its own)."""
    grid = {"method": ["fp", "lab", "laq"], "when": {"laq": {"bits": [2, 4]}}}
    path = write_study(tmp_path, _doc(grid))
    root = tmp_path / "runs"
    code, out, err = cli(capsys, "grid", str(path), "--root", str(root), "--quiet")
    assert code == 0, out + err
    assert "4 runs" in out

    trials = load_study(str(root / "optuna.journal"), "cond").get_trials()
    assert sorted(json.dumps(t.params, sort_keys=True) for t in trials) == sorted(
        json.dumps(c, sort_keys=True) for c in
        [{"method": "fp"}, {"method": "lab"}, {"method": "laq", "bits": 2},
         {"method": "laq", "bits": 4}])
    assert all(t.state.name == "COMPLETE" for t in trials)

    uri = f"sqlite:///{root / 'mlflow.db'}"
    parent, children = mlflow_runs(uri, "cond")
    assert json.loads(parent.data.tags["labbench.conditional"]) == {"laq": ["bits"]}
    assert json.loads(parent.data.tags["labbench.axes"]) == ["method", "bits"]
    assert sorted((r.data.params["method"], r.data.params["bits"]) for r in children) == \
        [("fp", "None"), ("lab", "None"), ("laq", "2"), ("laq", "4")]

    folded = load_runs("cond", uri)
    assert sorted(folded["method"]) == ["fp", "lab", "laq:2", "laq:4"]
    assert folded.attrs["axes"] == ["method"] and folded.attrs["conditional_as"] == "fold"
    assert missing_cells(folded).empty
    factor = load_runs("cond", uri, conditional="factor")
    assert factor.attrs["axes"] == ["method", "bits"]
    by_method = factor.set_index("method")["bits"]
    assert pd.isna(by_method["fp"]) and pd.isna(by_method["lab"])
    assert sorted(by_method["laq"]) == [2, 4]
    assert missing_cells(factor).empty  # fp x bits=2 is no cell of this study

    # the conditional axis grows by one value: one new run, laq:3 joins the method levels
    grid["when"]["laq"]["bits"] = [2, 3, 4]
    code, out, err = cli(capsys, "grid", str(write_study(tmp_path, _doc(grid))), "--root",
                         str(root), "--quiet")
    assert code == 0, out + err
    assert "grown (grid.when.laq.bits: + 3): 1 new run(s) queued" in out
    assert len(load_study(str(root / "optuna.journal"), "cond").get_trials()) == 5
    folded = load_runs("cond", uri)
    assert sorted(folded["method"]) == ["fp", "lab", "laq:2", "laq:3", "laq:4"]
    factor = load_runs("cond", uri, conditional="factor")
    assert len(factor) == 5 and missing_cells(factor).empty

    # the report, as the user asks: laq:3 a level of the method factor, or bits a factor
    for how, present in (("fold", "laq:3"), ("factor", "bits")):
        out_dir = tmp_path / f"report-{how}"
        code, out, err = cli(capsys, "report", "cond", "--root", str(root), "--out", str(out_dir),
                             "--n-boot", "100", "--no-log", "--conditional", how)
        assert code == 0, out + err
        assert present in (out_dir / "report.md").read_text()
