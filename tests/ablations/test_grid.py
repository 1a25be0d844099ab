"""Real grids on the local defaults (Optuna journal + SQLite MLflow): layout, outcomes, memory
(issue tests 1 and 6)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from mlflow.tracking import MlflowClient

from ablations.spec import parse_study
from analysis import load_runs
from tests.ablations.helpers import (
    TINY,
    artifacts,
    lab_env,
    labbench,
    load_study,
    mlflow_runs,
    study_doc,
    write_study,
)


def test_two_workers_run_every_cell_once_with_the_documented_layout(tmp_path):
    doc = study_doc("two", grid={"method": ["fp", "bc", "lab"], "lr": [0.01, 0.002]}, seeds=[0, 1])
    path = write_study(tmp_path, doc)
    root = tmp_path / "runs"
    proc = labbench("grid", str(path), "--root", str(root), "--workers", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "mlflow ui --backend-store-uri sqlite:///" in proc.stdout
    spec = parse_study(path)

    # Optuna: each cell x seed exactly once, nothing else
    trials = load_study(str(root / "optuna.journal"), "two").get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 12
    seen = sorted((t.params["method"], t.params["lr"], t.params["seed"]) for t in trials)
    assert seen == sorted((c["method"], c["lr"], s) for c in spec.cells() for s in spec.seeds)

    # MLflow: one parent, one FINISHED child per trial, the tags of docs/mlflow-layout.md
    uri = f"sqlite:///{root / 'mlflow.db'}"
    parent, children = mlflow_runs(uri, "two")
    tags = parent.data.tags
    assert (tags["labbench.kind"], tags["labbench.study"], tags["labbench.objective"],
            tags["labbench.direction"]) == ("study", "two", "test_acc", "maximize")
    assert json.loads(tags["labbench.baseline"]) == {"method": "fp"}
    assert json.loads(tags["labbench.axes"]) == ["method", "lr"]
    assert parent.info.status == "FINISHED" and "study.json" in artifacts(uri, parent.info.run_id)
    assert len(children) == 12
    by_trial = {t.number: t for t in trials}
    cells: dict[str, set] = {}
    for run in children:
        t, rt = run.data.tags, run.info
        assert rt.status == "FINISHED"
        assert t["labbench.kind"] == "trial" and t["labbench.study"] == "two"
        trial = by_trial[int(t["labbench.trial"])]
        assert trial.user_attrs["mlflow_run_id"] == rt.run_id
        assert int(t["labbench.seed"]) == trial.params["seed"]
        config = spec.config({"method": trial.params["method"], "lr": trial.params["lr"]},
                             trial.params["seed"])
        assert re.fullmatch(r"[0-9a-f]{12}", t["labbench.cell"]) and t["labbench.cell"] == config.cell_id()
        cells.setdefault(t["labbench.cell"], set()).add(t["labbench.seed"])
        assert {"labbench.git_commit", "labbench.git_dirty", "labbench.task"} <= set(t)
        assert run.data.params["method"] == trial.params["method"]
        assert run.data.params["seed"] == str(trial.params["seed"])
        assert {"test_acc", "best_val_acc", "diverged", "wall_s", "val_acc", "train_loss"} \
            <= set(run.data.metrics)
        assert run.data.metrics["test_acc"] == trial.value
        assert {"config.json", "env.json"} <= artifacts(uri, rt.run_id)
    assert len(cells) == 6 and all(seeds == {"0", "1"} for seeds in cells.values())

    frame = load_runs("two", uri)
    assert len(frame) == 12 and frame.attrs["seeds"] == [0, 1]
    status = labbench("status", "two", "--root", str(root))
    assert status.returncode == 0 and re.search(r"complete\s*│\s*12", status.stdout), status.stdout


def test_diverged_is_a_result_and_a_raising_cell_fails_alone_then_retries(tmp_path):
    doc = study_doc("outcomes", grid={"method": ["fp", "bc", "bwn"], "lr": [0.01, 1e30]},
                    seeds=[0], base={**TINY, "optimizer": "sgd"})
    path = write_study(tmp_path, doc)
    root = tmp_path / "runs"
    env = lab_env(LABBENCH_RUN_FN="tests.ablations.fakes:failing_run", LABBENCH_TEST_FAIL="bwn")
    proc = labbench("grid", str(path), "--root", str(root), "--workers", "2", env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "retry-failed outcomes" in proc.stderr

    journal = str(root / "optuna.journal")
    trials = load_study(journal, "outcomes").get_trials()
    state = {(t.params["method"], t.params["lr"]): t for t in trials}
    assert len(trials) == 6
    for method in ("fp", "bc"):  # lr 1e30 diverges: a COMPLETE trial with diverged=1
        assert state[(method, 1e30)].state.name == "COMPLETE"
        assert state[(method, 1e30)].user_attrs["diverged"] == 1
        assert state[(method, 1e30)].value == float("-inf")  # test_acc is NaN; maximize
        assert state[(method, 0.01)].user_attrs["diverged"] == 0
    for lr in (0.01, 1e30):
        failed = state[("bwn", lr)]
        assert failed.state.name == "FAIL" and "planted failure" in failed.user_attrs["error"]

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    _, children = mlflow_runs(uri, "outcomes")
    runs = {r.info.run_id: r for r in children}
    for (method, lr), trial in state.items():
        run = runs[trial.user_attrs["mlflow_run_id"]]
        if method == "bwn":
            assert run.info.status == "FAILED"
            text = client.download_artifacts(run.info.run_id, "traceback.txt", str(tmp_path))
            assert "planted failure" in Path(text).read_text()
            assert run.data.params["method"] == "bwn"  # a failed run still names its cell
        else:
            assert run.info.status == "FINISHED"
            assert run.data.metrics["diverged"] == (1.0 if lr == 1e30 else 0.0)

    status = labbench("status", "outcomes", "--root", str(root))
    assert re.search(r"failed\s*│\s*2", status.stdout) and "planted failure" in status.stdout

    env = lab_env(LABBENCH_RUN_FN="tests.ablations.fakes:failing_run")
    retry = labbench("retry-failed", "outcomes", "--root", str(root), env=env)
    assert retry.returncode == 0, retry.stdout + retry.stderr
    assert "2 failed cell(s) queued again" in retry.stdout
    after = load_study(journal, "outcomes").get_trials()
    new = [t for t in after if t.number >= 6]
    assert sorted(t.params["lr"] for t in new) == [0.01, 1e30]
    assert all(t.params["method"] == "bwn" and t.state.name == "COMPLETE" for t in new)
    frame = load_runs("outcomes", uri)
    assert len(frame) == 6 and frame.attrs["n_failed"] == 2
    assert labbench("retry-failed", "outcomes", "--root", str(root)).stdout.strip().endswith(
        "0 failed cell(s) queued again")


def test_a_long_worker_keeps_flat_memory(tmp_path):
    doc = study_doc("memory", grid={"lr": [0.001 * (i + 1) for i in range(14)]}, seeds=[0],
                    base={**TINY, "method": "lab"}, baseline={})
    path = write_study(tmp_path, doc)
    root = tmp_path / "runs"
    proc = labbench("grid", str(path), "--root", str(root), "--workers", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trials = sorted(load_study(str(root / "optuna.journal"), "memory").get_trials(),
                    key=lambda t: t.number)
    rss = [t.user_attrs["worker_rss_mb"] for t in trials]
    assert len(rss) == 14
    # every run lives in its own process: the worker does not grow with the runs it has done
    assert max(rss[3:]) - rss[3] < 8, rss
