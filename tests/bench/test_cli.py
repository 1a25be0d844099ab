"""`labbench run` / `labbench speed` as a user meets them: exit codes, messages, MLflow records."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from labbench.cli import main

TINY = ["--hidden", "32", "--layers", "1", "--epochs", "1", "--steps", "4", "--quiet"]


def run_cli(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("flag, value, listed", [
    ("--method", "labx", "fp, amp, bc, bc-scaled, bwn, lab"),
    ("--model", "vgg16", "mlp, cnn, resnet20, resnet18, lstm, transformer"),
    ("--dataset", "imagenet", "fashion-mnist, mnist, cifar10, svhn, pysrc, linux, text:PATH"),
])
def test_unknown_names_exit_2_listing_valid_choices(flag, value, listed, capsys, tmp_path):
    code, _, err = run_cli(["run", flag, value, "--root", str(tmp_path), *TINY], capsys)
    assert code == 2
    assert err.startswith(f"error: {flag[2:]}: unknown value {value!r}") and listed in err
    assert not (tmp_path / "mlflow.db").exists()  # nothing recorded for bad input


def test_missing_dataset_exits_2_saying_where_files_go(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("LABBENCH_DATA", str(tmp_path / "data"))
    code, _, err = run_cli(["run", "--dataset", "mnist", "--no-record", *TINY], capsys)
    assert code == 2
    assert "dataset 'mnist' not found" in err
    assert str(tmp_path / "data" / "mnist" / "train-images-idx3-ubyte.gz") in err


def test_invalid_combination_exits_2_naming_the_field(capsys, tmp_path):
    code, _, err = run_cli(["run", "--method", "lab", "--bits", "3", "--root", str(tmp_path),
                            *TINY], capsys)
    assert code == 2 and err.startswith("error: bits: only applies to method 'laq'")


def test_config_file_with_unknown_key_exits_2(capsys, tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('method = "lab"\nlearning_rate = 0.1\n')
    code, _, err = run_cli(["run", "--config", str(cfg), "--no-record", *TINY], capsys)
    assert code == 2 and "learning_rate: unknown field" in err and str(cfg) in err


def test_run_records_one_mlflow_run(capsys, tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('method = "bwn"\nseed = 3\nlr = 0.5\n')
    code, out, _ = run_cli(["run", "--config", str(cfg), "--lr", "0.02", "--root", str(tmp_path),
                            *TINY], capsys)
    assert code == 0
    uri = f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert uri in out and "mlflow ui --backend-store-uri" in out
    client = MlflowClient(uri)
    (r,) = client.search_runs([client.get_experiment_by_name("labbench-runs").experiment_id])
    assert r.info.status == "FINISHED"
    assert r.data.tags["labbench.kind"] == "run" and r.data.tags["labbench.seed"] == "3"
    assert r.data.params["method"] == "bwn" and r.data.params["lr"] == "0.02"  # flag wins
    assert r.data.metrics["diverged"] == 0 and 0 <= r.data.metrics["test_acc"] <= 1
    assert r.data.metrics["bits_per_weight"] == 1.0
    hist = client.get_metric_history(r.info.run_id, "val_acc")
    assert [m.step for m in hist] == [1]
    artifacts = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert {"config.json", "env.json"} <= artifacts
    env = json.loads((tmp_path / "mlartifacts").joinpath(
        "labbench-runs", r.info.run_id, "artifacts", "env.json").read_text())
    assert env["data"]["name"] == "fashion-mnist" and len(env["data"]["hash"]) == 64
    assert env["packages"]["torch"].startswith("2.")
    # a single run reads in MLflow's UI like a study's: model-training view, source tags
    exp = client.get_experiment_by_name("labbench-runs")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__file__).parent).stdout.strip()
    assert r.data.tags["mlflow.source.name"] == "bench/cli.py"
    assert r.data.tags["mlflow.source.git.commit"] == head


def test_nan_run_exits_0_with_diverged_recorded(capsys, tmp_path):
    code, out, _ = run_cli(["run", "--method", "fp", "--optimizer", "sgd", "--lr", "1e30",
                            "--root", str(tmp_path), *TINY], capsys)
    assert code == 0 and "diverged=1" in out
    client = MlflowClient(f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}")
    (r,) = client.search_runs([client.get_experiment_by_name("labbench-runs").experiment_id])
    assert r.info.status == "FINISHED" and r.data.metrics["diverged"] == 1


def test_speed_prints_ratios_to_fp(capsys):
    code, out, _ = run_cli(["speed", "--methods", "bc,lab", "--hidden", "32", "--layers", "1",
                            "--timed-steps", "4", "--warmup", "1"], capsys)
    assert code == 0
    lines = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert set(lines) == {"fp", "bc", "lab"} and float(lines["fp"][2]) == 1.0


def test_console_script_exit_status():
    proc = subprocess.run([sys.executable, "-m", "labbench", "run", "--method", "nope"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "error: method: unknown value 'nope'" in proc.stderr
