"""Real grids on the local defaults (Optuna journal + SQLite MLflow): layout, memory, outcomes;
the same grid through an ``mlflow server`` (issue tests 1, 4 and 6)."""

from __future__ import annotations

import io
import json
import re
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ablations.spec import parse_study
from analysis import load_runs
from labbench.cli import main
from tests.ablations.helpers import (
    DATA,
    TINY,
    artifacts,
    cli,
    load_study,
    mlflow_runs,
    study_doc,
    write_study,
)


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """A 6-cell x 2-seed grid run by 2 workers on the local defaults (shared by two tests)."""
    folder = tmp_path_factory.mktemp("two")
    doc = study_doc("two", grid={"method": ["fp", "bc", "lab"], "lr": [0.01, 0.002]}, seeds=[0, 1])
    path = write_study(folder, doc)
    root = folder / "runs"
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, redirect_stdout(out), redirect_stderr(err):
        mp.setenv("LABBENCH_DATA", str(DATA))
        mp.setenv("LABBENCH_OFFLINE", "1")
        code = main(["grid", str(path), "--root", str(root), "--workers", "2"])
    return path, root, code, out.getvalue(), err.getvalue()


def test_two_workers_run_every_cell_once_with_the_documented_layout(two, capsys):
    path, root, code, out, err = two
    assert code == 0, out + err
    assert "mlflow ui --backend-store-uri sqlite:///" in out
    spec = parse_study(path)

    # Optuna: each cell x seed exactly once, nothing else
    trials = load_study(str(root / "optuna.journal"), "two").get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 12
    seen = sorted((t.params["method"], t.params["lr"], t.user_attrs["seed"]) for t in trials)
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
        assert int(t["labbench.seed"]) == trial.user_attrs["seed"]
        config = spec.config({"method": trial.params["method"], "lr": trial.params["lr"]},
                             trial.user_attrs["seed"])
        assert re.fullmatch(r"[0-9a-f]{12}", t["labbench.cell"]) and t["labbench.cell"] == config.cell_id()
        cells.setdefault(t["labbench.cell"], set()).add(t["labbench.seed"])
        assert {"labbench.git_commit", "labbench.git_dirty", "labbench.task"} <= set(t)
        assert run.data.params["method"] == trial.params["method"]
        assert run.data.params["seed"] == str(trial.user_attrs["seed"])
        assert {"test_acc", "best_val_acc", "diverged", "wall_s", "val_acc", "train_loss"} \
            <= set(run.data.metrics)
        assert run.data.metrics["test_acc"] == trial.value
        # the trial's model crossed the pipe into its MLflow run; its checkpoint did not
        assert {"config.json", "env.json", "model"} <= artifacts(uri, rt.run_id)
        assert "checkpoint" not in artifacts(uri, rt.run_id)
    assert len(cells) == 6 and all(seeds == {"0", "1"} for seeds in cells.values())

    frame = load_runs("two", uri)
    assert len(frame) == 12 and frame.attrs["seeds"] == [0, 1]
    # a trial's exported model scores the test accuracy its trial recorded
    from contextlib import nullcontext

    import torch

    from bench.data import load_dataset
    from bench.deploy import export_model, load
    from bench.train import evaluate

    lab = next(r for r in children if r.data.params["method"] == "lab")
    model = load(export_model(lab.info.run_id, root / "lab.safetensors", tracking_uri=uri),
                 backend="torch")
    config = spec.config({"method": "lab", "lr": float(lab.data.params["lr"])},
                         int(lab.data.tags["labbench.seed"]))
    data = load_dataset(config.dataset, train_limit=config.train_limit, eval_limit=config.eval_limit)
    got = evaluate(model, data, "test", config, torch.device("cpu"), nullcontext)
    assert got["acc"] == lab.data.metrics["test_acc"]

    # every run lives in a process of its own: a worker does not grow with the runs it has done
    for pid in {t.user_attrs["owner"]["pid"] for t in trials}:
        rss = [t.user_attrs["worker_rss_mb"] for t in trials if t.user_attrs["owner"]["pid"] == pid]
        assert max(rss) - rss[0] < 8, rss
    code, out, _ = cli(capsys, "status", "two", "--root", str(root))
    assert code == 0 and re.search(r"complete\s*│\s*12", out), out


def test_diverged_is_a_result_and_a_raising_cell_fails_alone_then_retries(tmp_path, capsys,
                                                                           monkeypatch):
    doc = study_doc("outcomes", grid={"method": ["fp", "bc", "bwn"], "lr": [0.01, 1e30]},
                    seeds=[0], base={**TINY, "optimizer": "sgd"})
    path = write_study(tmp_path, doc)
    root = tmp_path / "runs"
    monkeypatch.setenv("LABBENCH_RUN_FN", "tests.ablations.fakes:failing_run")
    monkeypatch.setenv("LABBENCH_TEST_FAIL", "bwn")
    code, out, err = cli(capsys, "grid", str(path), "--root", str(root), "--workers", "2")
    assert code == 1, out + err
    assert "retry-failed outcomes" in err

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

    code, out, _ = cli(capsys, "status", "outcomes", "--root", str(root))
    assert re.search(r"failed\s*│\s*2", out) and "planted failure" in out, out

    monkeypatch.delenv("LABBENCH_TEST_FAIL")
    code, out, err = cli(capsys, "retry-failed", "outcomes", "--root", str(root))
    assert code == 0, out + err
    assert "2 failed cell(s) queued again" in out
    after = load_study(journal, "outcomes").get_trials()
    new = [t for t in after if t.number >= 6]
    assert sorted(t.params["lr"] for t in new) == [0.01, 1e30]
    assert all(t.params["method"] == "bwn" and t.state.name == "COMPLETE" for t in new)
    frame = load_runs("outcomes", uri)
    assert len(frame) == 6 and frame.attrs["n_failed"] == 2
    code, out, _ = cli(capsys, "retry-failed", "outcomes", "--root", str(root))
    assert code == 0 and out.strip().endswith("0 failed cell(s) queued again")


def _layout(uri: str, name: str) -> dict:
    """Everything of a study's runs that must not depend on how they were logged."""
    parent, children = mlflow_runs(uri, name)
    skip = {"labbench.storage", "mlflow.user", "mlflow.runName", "mlflow.parentRunId", "labbench.host"}
    runs = {}
    for run in children:
        tags = {k: v for k, v in run.data.tags.items()
                if k not in skip and not k.startswith("mlflow.source")}
        runs[(tags["labbench.cell"], tags["labbench.seed"])] = {
            "status": run.info.status, "tags": sorted(tags), "kind": tags["labbench.kind"],
            "params": run.data.params, "metrics": sorted(run.data.metrics),
            "artifacts": sorted(artifacts(uri, run.info.run_id))}
    ptags = {k: v for k, v in parent.data.tags.items()  # the best run/trial: ids of this record
             if k.startswith("labbench.") and k not in ("labbench.storage", "labbench.best_run_id",
                                                         "labbench.best_trial")}
    return {"parent": (parent.info.status, ptags, parent.data.params, sorted(parent.data.metrics),
                       sorted(artifacts(uri, parent.info.run_id))),
            "runs": runs}


def test_workers_through_an_mlflow_server_record_the_same_layout(two, tmp_path, capsys,
                                                                  mlflow_server):
    path, direct, code, _, _ = two
    assert code == 0
    served = tmp_path / "served"
    code, out, err = cli(capsys, "grid", str(path), "--root", str(served), "--workers", "2",
                         "--tracking-uri", mlflow_server)
    assert code == 0, out + err
    assert not (served / "mlflow.db").exists()  # everything went through the server

    a = _layout(f"sqlite:///{direct / 'mlflow.db'}", "two")
    b = _layout(mlflow_server, "two")
    assert a["parent"] == b["parent"]
    assert set(a["runs"]) == set(b["runs"]) and len(a["runs"]) == 12
    for key, run in a["runs"].items():
        assert run == b["runs"][key], key
        assert run["status"] == "FINISHED" and {"config.json", "env.json"} <= set(run["artifacts"])
    frame = load_runs("two", mlflow_server)
    assert len(frame) == 12 and frame.attrs["seeds"] == [0, 1]


def test_search_mode_samples_with_tpe_and_runs_every_seed(tmp_path, capsys):
    doc = {"study": {"name": "search", "objective": "test_acc", "seeds": [0, 1], "mode": "search",
                     "trials": 3},
           "base": TINY,
           "search": {"lr": {"type": "log", "low": 1e-3, "high": 1e-1}, "method": ["bwn", "lab"]}}
    path = write_study(tmp_path, doc)
    root = tmp_path / "runs"
    code, out, err = cli(capsys, "grid", str(path), "--root", str(root))
    assert code == 0, out + err
    trials = load_study(str(root / "optuna.journal"), "search").get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert all(1e-3 <= t.params["lr"] <= 1e-1 and t.params["method"] in ("bwn", "lab")
               for t in trials)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    parent, children = mlflow_runs(uri, "search")
    assert json.loads(parent.data.tags["labbench.axes"]) == ["lr", "method"]
    for t in trials:  # one child run per seed; the trial's value is their mean
        runs = [r for r in children if r.data.tags["labbench.trial"] == str(t.number)]
        assert sorted(r.data.tags["labbench.seed"] for r in runs) == ["0", "1"]
        assert t.value == pytest.approx(sum(r.data.metrics["test_acc"] for r in runs) / 2)
        assert {r.data.params["lr"] for r in runs} == {str(t.params["lr"])}


def test_demo_runs_its_study_then_renders_the_report(tmp_path, capsys, monkeypatch):
    """`labbench demo` = the demo study through the harness, then analysis' report of it (the
    demo study itself takes minutes: a tiny stand-in takes its place)."""
    import ablations.cli

    doc = study_doc("demo", grid={"method": ["fp", "bc"]}, seeds=[0, 1])
    monkeypatch.setattr(ablations.cli, "DEMO_STUDY", write_study(tmp_path, doc))
    root = tmp_path / "runs"
    code, out, err = cli(capsys, "demo", "--root", str(root), "--workers", "1", "--quiet")
    assert code == 0, out + err
    html = root / "reports" / "demo" / "report.html"
    assert html.is_file() and str(html) in out
    text = (root / "reports" / "demo" / "report.md").read_text()
    assert "bc" in text and "fp" in text
    assert any(p.suffix == ".png" for p in (root / "reports" / "demo" / "figures").iterdir())
