"""Runs that resume: a run killed (SIGKILL) right after its epoch-1 checkpoint, resumed, ends with
the metrics of the uninterrupted run; `labbench run --resume RUN_ID` continues the same MLflow run."""

import json
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench.config import RunConfig
from bench.record import NullRecorder
from bench.train import CHECKPOINT, run

CONFIGS = {
    "mlp-laq": dict(model="mlp", method="laq", bits=3, hidden=32, layers=1, epochs=3,
                    train_limit=1200, eval_limit=400, batch_size=100),
    "lstm-lab": dict(model="lstm", dataset="pysrc", method="lab", hidden=16, seq_len=20,
                     batch_size=20, lr=0.01, train_limit=6000, eval_limit=2000, epochs=3),
}
TIMING = ("epoch_s", "wall_s", "step_ms", "peak_mem_mb")


class DirRecorder(NullRecorder):
    """Keeps artifacts as files under `root` (as MLflow's file store does) and metrics in memory.

    ``kill_after`` SIGKILLs this process right after that many checkpoints were written."""

    def __init__(self, root, kill_after=None):
        self.root, self.kill_after, self.checkpoints = Path(root), kill_after, 0
        self.metrics = []

    def log_metrics(self, metrics, step):
        self.metrics.append((step, dict(metrics)))

    def log_artifact(self, local_path, artifact_path=None):
        dst = self.root / (artifact_path or "")
        dst.mkdir(parents=True, exist_ok=True)
        shutil.copy(local_path, dst / Path(local_path).name)
        self.checkpoints += 1
        if self.checkpoints == self.kill_after:
            import os

            os.kill(os.getpid(), signal.SIGKILL)


def without_timing(row):
    return {k: v for k, v in row.items() if k not in TIMING}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_run_killed_after_epoch_1_resumes_to_the_uninterrupted_metrics(name, tmp_path):
    config = RunConfig(**CONFIGS[name])
    code = textwrap.dedent(f"""
        from bench.config import RunConfig
        from bench.train import run
        from tests.bench.test_resume import DirRecorder
        run(RunConfig.from_dict({config.to_dict()!r}), DirRecorder({str(tmp_path)!r}, kill_after=1))
        raise SystemExit("not killed")
    """)
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    checkpoint = tmp_path / CHECKPOINT
    assert checkpoint.exists()

    straight = run(config, DirRecorder(tmp_path / "straight"))
    recorder = DirRecorder(tmp_path / "resumed")
    resumed = run(config, recorder, resume=checkpoint)
    assert resumed.metrics["epochs_run"] == straight.metrics["epochs_run"] == 3
    assert without_timing(resumed.metrics) == without_timing(straight.metrics)
    assert [without_timing(r) for r in resumed.history] == [without_timing(r) for r in straight.history]
    # only epochs 2 and 3 ran here (and were logged); epoch 1 came from the checkpoint
    assert [step for step, m in recorder.metrics if "val_loss" in m] == [2, 3]
    # the checkpoint was overwritten by each later epoch: it now holds epoch 3
    assert (tmp_path / "resumed" / CHECKPOINT).exists()


def test_a_checkpoint_of_another_config_is_refused(tmp_path):
    config = RunConfig(**{**CONFIGS["mlp-laq"], "epochs": 1})
    run(config, DirRecorder(tmp_path))
    other = RunConfig(**{**CONFIGS["mlp-laq"], "epochs": 1, "lr": 0.5})
    with pytest.raises(ValueError, match=r"another configuration \(lr: .* there, 0.5 here\)"):
        run(other, resume=tmp_path / CHECKPOINT)


def test_labbench_run_resume_continues_the_same_mlflow_run(tmp_path):
    from mlflow.tracking import MlflowClient

    from labbench.cli import main

    root = tmp_path / "runs"
    flags = ["--model", "mlp", "--method", "lab", "--hidden", "32", "--layers", "1", "--epochs", "3",
             "--train-limit", "1200", "--eval-limit", "400", "--quiet", "--root", str(root)]
    code = textwrap.dedent(f"""
        import os, signal
        import bench.record as record
        original = record.MlflowRecorder.log_artifact
        def log_then_die(self, *args):
            original(self, *args)
            os.kill(os.getpid(), signal.SIGKILL)
        record.MlflowRecorder.log_artifact = log_then_die
        from labbench.cli import main
        main({["run", *flags, "--run-name", "killed"]!r})
    """)
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert main(["run", *flags, "--run-name", "straight"]) == 0

    client = MlflowClient(tracking_uri=f"sqlite:///{root.resolve() / 'mlflow.db'}")
    runs = {r.info.run_name: r for r in client.search_runs(
        [e.experiment_id for e in client.search_experiments()])}
    run_id = runs["killed"].info.run_id
    assert runs["killed"].info.status == "RUNNING"  # SIGKILL: nobody closed it
    assert [m.step for m in client.get_metric_history(run_id, "val_loss")] == [1]
    assert main(["run", "--resume", run_id, "--root", str(root), "--quiet"]) == 0

    resumed, straight = client.get_run(run_id), client.get_run(runs["straight"].info.run_id)
    assert resumed.info.status == "FINISHED"
    for key in ("test_loss", "test_acc", "best_val_loss", "best_epoch", "epochs_run"):
        assert resumed.data.metrics[key] == straight.data.metrics[key], key
    history = client.get_metric_history(run_id, "val_loss")
    assert sorted(m.step for m in history) == [1, 2, 3]
    assert json.loads(Path(client.download_artifacts(run_id, "config.json", str(tmp_path))).read_text()
                      )["epochs"] == 3
