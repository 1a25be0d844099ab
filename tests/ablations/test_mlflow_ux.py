"""A study as MLflow's UI and optuna-dashboard show it (issue 10, point 8): the experiment's kind,
the parent run's params, outcome and duration, readable child names, source tags on every run,
the Optuna metric name, and a seed that never counts as a tuned hyperparameter.

The runs are stand-ins (`scored_run`: no training, values planted per method and seed); MLflow
(SQLite) and Optuna (journal) are the real ones, written by real launcher and worker processes.
"""

from __future__ import annotations

import io
import math
import subprocess
import warnings
from collections import Counter
from contextlib import redirect_stderr, redirect_stdout
from typing import Any

import optuna
import pytest
from mlflow.tracking import MlflowClient

from ablations.spec import spec_from_dict
from ablations.tracking import cell_name, run_name
from labbench.cli import main
from tests.ablations.helpers import (
    REPO,
    TINY,
    cli,
    lab_env,
    labbench,
    load_study,
    mlflow_runs,
    study_doc,
    write_study,
)

RUN_FN = "tests.ablations.test_mlflow_ux:scored_run"
METHOD_SCORE = {"fp": 0.0, "bc": 0.001}


def scored_run(config: Any, recorder: Any) -> Any:
    """A run whose ``test_acc`` is ``0.1 * seed`` plus a tiny method effect: the seed dominates,
    as seed noise often does. ``bwn`` raises; ``lr >= 1e29`` diverges (NaN, ``diverged = 1``)."""
    from bench.train import RunResult

    if config.method == "bwn":
        raise RuntimeError("planted failure")
    recorder.set_tags({"labbench.task": config.task})
    recorder.log_params(config.to_dict())
    diverged = config.lr >= 1e29
    acc = math.nan if diverged else 0.1 * config.seed + METHOD_SCORE[config.method]
    metrics = {"test_acc": acc, "best_val_acc": acc, "diverged": float(diverged), "wall_s": 0.0}
    recorder.log_metrics(metrics, step=1)
    return RunResult(config, metrics)


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def _check_source_tags(tags: dict[str, str], heads: set[str]) -> None:
    assert tags["mlflow.source.type"] == "LOCAL"
    assert tags["mlflow.source.name"] == "bench/cli.py" and (REPO / "bench" / "cli.py").is_file()
    assert tags["mlflow.source.git.commit"] in heads  # HEAD before or after the grid ran
    branch = _git("rev-parse", "--abbrev-ref", "HEAD")  # "HEAD" when detached (as CI may be)
    assert tags.get("mlflow.source.git.branch") == (None if branch == "HEAD" else branch)
    assert tags["mlflow.source.git.dirty"] in ("true", "false")


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """fp / bc / bwn x lr 0.01 / 1e30 x optimizer sgd (one value) x seeds 0, 3, run by the
    launcher with one worker: 8 runs finish (4 of them diverged), bwn's 4 fail."""
    folder = tmp_path_factory.mktemp("ux")
    doc = study_doc("ux", grid={"method": ["fp", "bc", "bwn"], "lr": [0.01, 1e30],
                                "optimizer": ["sgd"]}, seeds=[0, 3])
    path = write_study(folder, doc)
    root = folder / "runs"
    head = _git("rev-parse", "HEAD")
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, redirect_stdout(out), redirect_stderr(err):
        for name, value in lab_env(LABBENCH_RUN_FN=RUN_FN).items():
            mp.setenv(name, value)
        code = main(["grid", str(path), "--root", str(root), "--workers", "1", "--quiet"])
    assert code == 1, out.getvalue() + err.getvalue()  # bwn's cells failed
    return root, {head, _git("rev-parse", "HEAD")}


def test_mlflow_shows_a_model_training_experiment_with_a_summarised_parent(grid):
    root, heads = grid
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("ux")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"

    parent, children = mlflow_runs(uri, "ux")
    assert len(children) == 12
    # the parent carries the spec: axes by field name, base fields, seeds
    params = parent.data.params
    assert (params["method"], params["lr"], params["optimizer"]) == ("fp, bc, bwn", "0.01, 1e+30",
                                                                     "sgd")
    assert params["seeds"] == "0, 3"
    assert {k: params[k] for k in TINY} == {k: str(v) for k, v in TINY.items()}

    # ... and the outcome, against the child runs themselves
    finished = [r for r in children if r.info.status == "FINISHED"]
    failed = [r for r in children if r.info.status == "FAILED"]
    assert (len(finished), len(failed)) == (8, 4)
    assert {r.data.params["method"] for r in failed} == {"bwn"}
    m = parent.data.metrics
    assert m["runs_total"] == 12 and m["runs_finished"] == len(finished)
    assert m["runs_failed"] == len(failed)
    assert m["runs_diverged"] == sum(r.data.metrics["diverged"] for r in finished) == 4
    scores = [r.data.metrics["test_acc"] for r in finished if math.isfinite(r.data.metrics["test_acc"])]
    assert m["best/test_acc"] == max(scores) == pytest.approx(0.301)
    by_cell: dict[str, list[float]] = {}
    for r in finished:
        by_cell.setdefault(r.data.tags["labbench.cell"], []).append(r.data.metrics["test_acc"])
    means = [sum(v) / len(v) for v in by_cell.values() if all(math.isfinite(x) for x in v)]
    assert m["best_cell/test_acc"] == pytest.approx(max(means)) == pytest.approx(0.151)
    assert parent.data.tags["labbench.best_cell_name"] == "bc lr=0.01"
    assert parent.data.tags["labbench.best_run"] == "bc lr=0.01 s3"
    best = client.get_run(parent.data.tags["labbench.best_run_id"])
    assert best.data.metrics["test_acc"] == max(scores)

    # the parent's duration spans the grid; it ended with the grid
    info = parent.info
    assert info.status == "FINISHED"
    assert info.start_time <= min(r.info.start_time for r in children)
    assert info.end_time >= max(r.info.end_time for r in children)

    # every run says which code made it
    for run in [parent, *children]:
        _check_source_tags(run.data.tags, heads)


def test_child_runs_are_named_by_the_axes_that_vary_in_full(grid):
    root, _ = grid
    _, children = mlflow_runs(f"sqlite:///{root / 'mlflow.db'}", "ux")
    lr_text = {"0.01": "0.01", "1e+30": "1e+30"}
    expected = sorted(f"{m} lr={lr} s{s}" for m in ("fp", "bc", "bwn") for lr in lr_text
                      for s in (0, 3))
    assert sorted(r.info.run_name for r in children) == expected  # optimizer: one value, left out
    for run in children:
        p = run.data.params
        assert run.info.run_name == f"{p['method']} lr={lr_text[str(float(p['lr']))]} s{p['seed']}"
        assert run.data.tags["mlflow.runName"] == run.info.run_name


def test_optuna_names_the_metric_and_the_seed_is_no_tuned_parameter(grid):
    root, _ = grid
    study = load_study(str(root / "optuna.journal"), "ux")
    assert study.metric_names == ["test_acc"]
    trials = study.get_trials()
    assert Counter(t.state.name for t in trials) == {"COMPLETE": 8, "FAIL": 4}
    for t in trials:
        assert set(t.params) == {"method", "lr", "optimizer"} and set(t.distributions) == set(t.params)
    # the GridSampler still enumerated every (cell, seed), each exactly once
    slots = Counter((t.params["method"], t.params["lr"], t.user_attrs["seed"]) for t in trials)
    assert slots == {(m, lr, s): 1 for m in ("fp", "bc", "bwn") for lr in (0.01, 1e30)
                     for s in (0, 3)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        importance = optuna.importance.get_param_importances(study)
    assert "seed" not in importance and "method" in importance

    # the control: the same values with the seed as a parameter (as before) rank it first
    seeds = [0, 1, 2, 3, 4]
    control = optuna.create_study(sampler=optuna.samplers.GridSampler(
        {"method": ["fp", "bc"], "seed": seeds}, seed=0), direction="maximize")
    control.optimize(lambda trial: 0.1 * trial.suggest_categorical("seed", seeds)
                     + METHOD_SCORE[trial.suggest_categorical("method", ["fp", "bc"])])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ranked = optuna.importance.get_param_importances(
            control, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    assert next(iter(ranked)) == "seed" and ranked["seed"] > 0.9


def test_a_study_run_by_workers_alone_still_ends_its_parent_run(tmp_path, capsys):
    doc = study_doc("alone", grid={"method": ["fp", "bc"]}, seeds=[1])
    path = write_study(tmp_path, doc)
    root = tmp_path / "runs"
    code, out, err = cli(capsys, "grid", str(path), "--root", str(root), "--workers", "0")
    assert code == 0, out + err
    proc = labbench("worker", "alone", "--root", str(root), "--quiet",
                    env=lab_env(LABBENCH_RUN_FN=RUN_FN))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    uri = f"sqlite:///{root / 'mlflow.db'}"
    parent, children = mlflow_runs(uri, "alone")
    experiment = MlflowClient(tracking_uri=uri).get_experiment_by_name("alone")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert sorted(r.info.run_name for r in children) == ["bc s1", "fp s1"]
    assert parent.info.status == "FINISHED"
    assert parent.info.end_time >= max(r.info.end_time for r in children)
    assert parent.data.params["method"] == "fp, bc"
    m = parent.data.metrics
    assert (m["runs_total"], m["runs_finished"], m["runs_failed"], m["runs_diverged"]) == (2, 2, 0, 0)
    assert m["best/test_acc"] == pytest.approx(0.101)
    assert load_study(str(root / "optuna.journal"), "alone").metric_names == ["test_acc"]


def test_run_names_alias_common_fields_and_are_never_cut():
    spec = spec_from_dict({"study": {"name": "n", "objective": "test_acc", "seeds": [0, 3]},
                           "base": {"model": "mlp"},
                           "grid": {"method": ["bc", "lab"], "hidden": [64, 128],
                                    "batch_size": [32], "weight_decay": [0.0, 1e-4]}},
                          where="n.toml")
    params = {"method": "lab", "hidden": 128, "batch_size": 32, "weight_decay": 1e-4}
    assert run_name(spec, params, 3) == "lab h=128 wd=0.0001 s3"  # batch_size: one value
    long = "x" * 400
    assert run_name(spec, {**params, "hidden": long}, 0) == f"lab h={long} wd=0.0001 s0"

    fixed = spec_from_dict({"study": {"name": "m", "objective": "test_acc", "seeds": [0]},
                            "base": {"model": "mlp", "method": "bwn"}, "grid": {"lr": [0.1, 0.01]}},
                           where="m.toml")
    assert cell_name(fixed, {"lr": 0.01}) == "bwn lr=0.01"  # the method leads even when fixed

    search = spec_from_dict({"study": {"name": "s", "objective": "test_acc", "seeds": [0],
                                       "mode": "search", "trials": 2},
                             "base": {"model": "mlp"},
                             "search": {"lr": {"type": "log", "low": 1e-4, "high": 1e-1},
                                        "method": ["bc", "lab"]}}, where="s.toml")
    assert run_name(search, {"lr": 0.0031622776601683794, "method": "bc"}, 0) == "bc lr=0.003162 s0"


class _RacingClient:
    """An MlflowClient whose first ``log_batch`` loses a race: another worker writes the same
    records between this one's read and its insert, and the store answers with the error the
    SQLite store gave two real workers (seen in test_pg before prepare_study retried)."""

    def __init__(self, client: Any):
        self.client, self.raced = client, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def log_batch(self, run_id: str, **records: Any) -> None:
        from mlflow.exceptions import MlflowException

        if not self.raced:
            self.raced = True
            self.client.log_batch(run_id, **records)  # the other worker
            raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: "
                                  "params.key, params.run_uuid")
        self.client.log_batch(run_id, **records)


def test_prepare_survives_a_racing_worker_and_records_a_grown_spec_as_tags(tmp_path):
    from ablations.tracking import prepare_study

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("p")
    parent = client.create_run(experiment).info.run_id
    doc = {"study": {"name": "p", "objective": "test_err", "seeds": [0, 3]}, "base": {"model": "mlp"},
           "grid": {"method": ["fp", "bc"]}}
    spec = spec_from_dict(doc, where="p.toml")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    racing = _RacingClient(client)
    prepare_study(racing, study, experiment, parent, spec)
    assert racing.raced  # the first attempt lost the race; the second found the params there
    run = client.get_run(parent)
    assert run.data.params == {"model": "mlp", "method": "fp, bc", "seeds": "0, 3"}
    assert study.metric_names == ["test_err"]
    assert client.get_experiment(experiment).tags["mlflow.experimentKind"] == \
        "custom_model_development"

    grown = spec_from_dict({**doc, "study": {**doc["study"], "seeds": [0, 3, 5]}}, where="p.toml")
    prepare_study(client, study, experiment, parent, grown)  # MLflow params cannot change
    run = client.get_run(parent)
    assert run.data.params["seeds"] == "0, 3"
    assert run.data.tags["labbench.param.seeds"] == "0, 3, 5"
    assert "labbench.param.method" not in run.data.tags
