"""Growing a study: the same file with more seeds or axis values runs only the new (cell, seed)
pairs; any other change is refused before anything changes (issue 11, "Extend a study")."""

from __future__ import annotations

import json
import re
from collections import Counter

import optuna
import pytest

from ablations.extend import BACKUP_PREFIX, growth
from ablations.spec import spec_from_dict
from analysis import load_runs
from tests.ablations.helpers import TINY, cli, load_study, mlflow_runs, study_doc, write_study


def _slots(trials) -> Counter:
    """(method, seed) -> number of COMPLETE trials (the seed is a user attribute or a param)."""
    return Counter((t.params["method"], t.user_attrs.get("seed", t.params.get("seed")))
                   for t in trials if t.state.name == "COMPLETE")


def test_more_seeds_then_more_values_run_only_the_new_pairs(tmp_path, capsys):
    root = tmp_path / "runs"
    journal, uri = str(root / "optuna.journal"), f"sqlite:///{root / 'mlflow.db'}"

    def launch(methods, seeds):
        path = write_study(tmp_path, study_doc("grow", grid={"method": methods}, seeds=seeds))
        return cli(capsys, "grid", str(path), "--root", str(root), "--quiet")

    code, out, err = launch(["fp", "bc"], [0])
    assert code == 0, out + err
    first = {t.number: t.user_attrs["mlflow_run_id"] for t in load_study(journal, "grow").get_trials()}
    parent, _ = mlflow_runs(uri, "grow")

    code, out, err = launch(["fp", "bc"], [0, 1])  # one more seed: 2 new runs
    assert code == 0, out + err
    assert "grown (study.seeds: + 1): 2 new run(s) queued" in out
    trials = load_study(journal, "grow").get_trials()
    assert len(trials) == 4
    assert _slots(trials) == Counter({(m, s): 1 for m in ("fp", "bc") for s in (0, 1)})
    # the runs made before are kept as they were: same trial numbers, same MLflow runs
    assert {t.number: t.user_attrs["mlflow_run_id"] for t in trials if t.number in first} == first

    # a value inserted in the middle of the axis: 2 new runs (one per seed), nothing re-run
    code, out, err = launch(["fp", "lab", "bc"], [0, 1])
    assert code == 0, out + err
    assert 'grown (grid.method: + "lab"): 2 new run(s) queued' in out
    trials = load_study(journal, "grow").get_trials()
    assert len(trials) == 6
    assert _slots(trials) == Counter({(m, s): 1 for m in ("fp", "lab", "bc") for s in (0, 1)})

    # the same MLflow experiment and parent run, one FINISHED child per (cell, seed)
    again, children = mlflow_runs(uri, "grow")
    assert again.info.run_id == parent.info.run_id
    assert sorted((c.data.params["method"], c.data.tags["labbench.seed"]) for c in children) == \
        sorted((m, str(s)) for m in ("fp", "lab", "bc") for s in (0, 1))
    frame = load_runs("grow", uri)
    assert len(frame) == 6 and frame.attrs["seeds"] == [0, 1]  # study.json follows the growth
    assert frame.attrs["seeds_source"] == "study.json"

    code, out, err = launch(["fp", "lab", "bc"], [0, 1])  # the same file again: nothing to do
    assert code == 0 and "grown" not in out, out + err
    assert len(load_study(journal, "grow").get_trials()) == 6
    code, out, _ = cli(capsys, "status", "grow", "--root", str(root))
    assert code == 0 and re.search(r"complete\s*│\s*6\b", out), out


@pytest.mark.parametrize(("change", "message"), [
    ({"base": {**TINY, "hidden": 32}}, "base.hidden: 16 -> 32"),
    ({"objective": "test_loss"}, 'study.objective: "test_acc" -> "test_loss"'),
    ({"direction": "minimize"}, 'study.direction: "maximize" -> "minimize"'),
    ({"grid": {"method": ["fp"]}}, 'grid.method: removed "bc"'),
    ({"grid": {"method": ["fp", "bc"], "lr": [0.01]}}, "grid.lr: axis added"),
    ({"seeds": [1]}, "study.seeds: removed 0"),
])
def test_a_change_that_is_not_growth_is_refused_and_changes_nothing(tmp_path, capsys, change,
                                                                   message):
    root = tmp_path / "runs"
    doc = study_doc("fixed", grid={"method": ["fp", "bc"]}, seeds=[0])
    code, out, err = cli(capsys, "grid", str(write_study(tmp_path, doc)), "--root", str(root),
                         "--workers", "0")
    assert code == 0, out + err
    study = {k: v for k, v in change.items() if k not in ("base", "grid", "seeds")}
    bad = study_doc("fixed", grid=change.get("grid", {"method": ["fp", "bc"]}),
                    seeds=change.get("seeds", [0]), base=change.get("base"), **study)
    path = write_study(tmp_path, bad, "bad.toml")
    code, out, err = cli(capsys, "grid", str(path), "--root", str(root), "--workers", "0")
    assert code == 2, out + err
    assert err.startswith(f"error: {path}: study 'fixed' already exists") and message in err
    assert "another [study].name (e.g. 'fixed-2')" in err
    stored = load_study(str(root / "optuna.journal"), "fixed")
    assert stored.user_attrs["labbench.spec"]["grid"] == {"method": ["fp", "bc"]}
    assert stored.user_attrs["labbench.spec"]["study"]["seeds"] == [0]
    assert stored.get_trials() == []  # the GridSampler draws lazily: nothing was queued either


def _spec(grid, seeds=(0,), **study):
    return spec_from_dict({"study": {"name": "s", "objective": "test_acc", "seeds": list(seeds),
                                     **study},
                           "base": TINY, "grid": grid}, where="s.toml")


def test_growth_lists_what_is_added_and_what_is_changed():
    old = _spec({"method": ["fp", "laq"], "lr": [0.1], "when": {"laq": {"bits": [2, 4]}}})
    assert growth(old, old) == ([], [])
    new = _spec({"method": ["fp", "laq", "bc"], "lr": [0.1, 0.01],
                 "when": {"laq": {"bits": [4, 3, 2]}}}, seeds=(0, 5))
    assert growth(old, new) == (["study.seeds: + 5", 'grid.method: + "bc"', "grid.lr: + 0.01",
                                 "grid.when.laq.bits: + 3"], [])
    # a new method may bring axes of its own; an existing method may not gain any
    with_ttq = _spec({"method": ["fp", "laq", "ttq"], "lr": [0.1],
                      "when": {"laq": {"bits": [2, 4]}, "ttq": {"ttq_threshold": [0.05, 0.1]}}})
    assert growth(old, with_ttq) == (['grid.method: + "ttq"'], [])
    plain = _spec({"method": ["fp", "laq"], "lr": [0.1]})
    levels = _spec({"method": ["fp", "laq"], "lr": [0.1],
                    "when": {"laq": {"bits": [2, 4], "levels": ["log"]}}})
    assert growth(plain, old)[1] == ["grid.when.laq: conditional axes added to an existing "
                                     "method (its cells would change)"]
    assert growth(old, plain)[1] == ["grid.when.laq: removed"]
    assert growth(old, levels)[1] == ["grid.when.laq.levels: axis added (its cells would change)"]
    # a reordered axis is the same study (the stored order stays)
    assert growth(old, _spec({"lr": [0.1], "method": ["laq", "fp"],
                              "when": {"laq": {"bits": [4, 2]}}})) == ([], [])


def test_an_interrupted_rewrite_is_restored_on_the_next_launch(tmp_path, capsys):
    """A crash after the old study was deleted and before the grown one was complete leaves only
    the backup: the next launch restores it, then grows it."""
    root = tmp_path / "runs"
    doc = study_doc("cut", grid={"method": ["fp", "bc"]}, seeds=[0])
    code, out, err = cli(capsys, "grid", str(write_study(tmp_path, doc)), "--root", str(root),
                         "--workers", "0")
    assert code == 0, out + err
    journal = str(root / "optuna.journal")
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(journal))
    optuna.copy_study(from_study_name="cut", from_storage=storage, to_storage=storage,
                      to_study_name=BACKUP_PREFIX + "cut")
    optuna.delete_study(study_name="cut", storage=storage)
    optuna.create_study(study_name="cut", storage=storage)  # half-built: no attributes yet

    grown = study_doc("cut", grid={"method": ["fp", "bc"]}, seeds=[0, 1])
    code, out, err = cli(capsys, "grid", str(write_study(tmp_path, grown)), "--root", str(root),
                         "--workers", "0")
    assert code == 0, out + err
    assert "restored study 'cut' from the backup of an interrupted rewrite" in out
    assert "grown (study.seeds: + 1): 4 new run(s) queued" in out  # nothing had run yet
    names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    assert names == {"cut"}
    study = load_study(journal, "cut")
    assert json.dumps(study.user_attrs["labbench.spec"]["study"]["seeds"]) == "[0, 1]"
    assert sorted((t.params["method"], t.user_attrs["seed"]) for t in study.get_trials()) == \
        sorted((m, s) for m in ("fp", "bc") for s in (0, 1))
