"""Faults on the local defaults: a worker killed mid-trial, then ``repair`` and resume (issue test
2); Ctrl-C of the launcher, then resume; a trial killed after epoch 1 goes on from its checkpoint
(issue 15) and ends with the uninterrupted run's metrics."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import torch
from mlflow.tracking import MlflowClient

from ablations.isolate import REFUSED_TAG, RESUMED_TAG, run_isolated
from ablations.objective import checkpoint_path, slot_params
from ablations.spec import parse_study
from analysis import load_runs
from bench.record import NullRecorder
from tests.ablations.helpers import (
    cli,
    lab_env,
    load_study,
    mlflow_runs,
    start_labbench,
    study_doc,
    wait_for,
    write_study,
)

SLOW = "tests.ablations.fakes:slow_run"
PAUSING = "tests.ablations.fakes:pausing_run"
# Three real epochs of a tiny MLP, one torch thread (the same arithmetic in every process)
THREE_EPOCHS = {"model": "mlp", "hidden": 16, "layers": 1, "epochs": 3, "train_limit": 600,
                "eval_limit": 200, "batch_size": 100, "threads": 1}
TIMING = ("epoch_s", "wall_s", "step_ms", "peak_mem_mb")  # timings of the processes involved


def _running_trial_of(journal: str, name: str, pid: int):
    def find():
        try:
            trials = load_study(journal, name).get_trials(deepcopy=False)
        except Exception:  # the study is being written
            return None
        for t in trials:
            owner = t.user_attrs.get("owner") or {}
            if t.state.name == "RUNNING" and owner.get("pid") == pid and owner.get("trial") == t.number \
                    and t.user_attrs.get("mlflow_run_id"):
                return t
        return None
    return find


def _assert_complete_once(root, name: str, n: int) -> None:
    uri = f"sqlite:///{root / 'mlflow.db'}"
    trials = load_study(str(root / "optuna.journal"), name).get_trials()
    complete = [tuple(sorted(slot_params(t).items())) for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == len(set(complete)) == n
    _, children = mlflow_runs(uri, name)
    assert not [r for r in children if r.info.status == "RUNNING"]
    assert sum(r.info.status == "FINISHED" for r in children) == n
    frame = load_runs(name, uri)  # the analysis loader: one finished run per cell x seed
    assert len(frame) == n and frame.attrs["duplicates_dropped"] == 0
    assert len(frame.groupby(["cell", "seed"])) == n


def test_kill_9_a_worker_mid_trial_then_repair_and_resume(tmp_path, capsys, monkeypatch):
    doc = study_doc("killed", grid={"method": ["fp", "bc", "lab"]}, seeds=[0, 1])
    path = write_study(tmp_path, doc)
    root = tmp_path / "runs"
    code, out, err = cli(capsys, "grid", str(path), "--root", str(root), "--workers", "0")
    assert code == 0, err
    assert "labbench worker killed --storage" in out
    monkeypatch.setenv("LABBENCH_RUN_FN", SLOW)
    monkeypatch.setenv("LABBENCH_TEST_SLEEP", "1.5")
    env = lab_env(LABBENCH_RUN_FN=SLOW)
    # A's trial outlasts the kill, so it dies RUNNING (a short one could end first: a race)
    a = start_labbench("worker", "killed", "--root", str(root), "--threads", "1",
                       env={**env, "LABBENCH_TEST_SLEEP": "120"}, log=tmp_path / "a.log")
    b = start_labbench("worker", "killed", "--root", str(root), "--threads", "1", env=env,
                       log=tmp_path / "b.log")
    journal = str(root / "optuna.journal")
    victim = wait_for(_running_trial_of(journal, "killed", a.pid), what="worker A's trial")
    os.kill(a.pid, signal.SIGKILL)
    a.wait()
    assert b.wait(timeout=180) == 0, (tmp_path / "b.log").read_text()

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run_id = victim.user_attrs["mlflow_run_id"]
    assert client.get_run(run_id).info.status == "RUNNING"  # left behind by the killed worker
    code, out, _ = cli(capsys, "status", "killed", "--root", str(root))
    assert f"trial {victim.number}" in out and "stale" in out, out

    code, out, err = cli(capsys, "repair", "killed", "--root", str(root))
    assert code == 0, err
    assert "1 stale trial(s) failed, 1 cell(s) queued again" in out
    assert client.get_run(run_id).info.status == "FAILED"  # analysis will not count it
    assert load_study(journal, "killed").trials[victim.number].state.name == "FAIL"

    code, out, err = cli(capsys, "grid", str(path), "--root", str(root), "--workers", "1")
    assert code == 0, out + err
    _assert_complete_once(root, "killed", 6)
    retry = [t for t in load_study(journal, "killed").trials if t.system_attrs.get("failed_trial")
             == victim.number]
    assert len(retry) == 1 and slot_params(retry[0]) == slot_params(victim)
    assert retry[0].state.name == "COMPLETE"


def test_ctrl_c_stops_cleanly_and_resume_finishes(tmp_path, capsys, monkeypatch):
    doc = study_doc("ctrlc", grid={"method": ["fp", "bc", "bwn"]}, seeds=[0, 1])
    path = write_study(tmp_path, doc)
    root = tmp_path / "runs"
    env = lab_env(LABBENCH_RUN_FN=SLOW, LABBENCH_TEST_SLEEP="20")
    launcher = subprocess.Popen([sys.executable, "-m", "labbench", "grid", str(path), "--root",
                                 str(root), "--workers", "2", "--quiet"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    journal = str(root / "optuna.journal")

    def two_running():
        try:
            trials = load_study(journal, "ctrlc").get_trials(deepcopy=False)
        except Exception:
            return False
        return sum(t.state.name == "RUNNING" and bool(t.user_attrs.get("mlflow_run_id"))
                   for t in trials) == 2

    wait_for(two_running, timeout=180, what="two running trials")
    launcher.send_signal(signal.SIGINT)
    out, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 130, out + err
    assert f"resume with `labbench grid {path.absolute()} --root" in err, err  # runs as printed

    trials = load_study(journal, "ctrlc").get_trials()
    assert not [t for t in trials if t.state.name == "RUNNING"]
    interrupted = [t for t in trials if t.user_attrs.get("interrupted")]
    assert len(interrupted) == 2 and all(t.state.name == "FAIL" for t in interrupted), \
        [(t.number, t.state.name, sorted(t.user_attrs)) for t in trials]
    uri = f"sqlite:///{root / 'mlflow.db'}"
    _, children = mlflow_runs(uri, "ctrlc")
    assert sorted(r.info.status for r in children) == ["KILLED", "KILLED"]

    monkeypatch.setenv("LABBENCH_RUN_FN", SLOW)
    monkeypatch.setenv("LABBENCH_TEST_SLEEP", "0.2")
    code, out, err = cli(capsys, "grid", str(path), "--root", str(root), "--workers", "2")
    assert code == 0, out + err
    assert "2 interrupted trial(s)" in out
    _assert_complete_once(root, "ctrlc", 6)


def test_close_stale_run_fails_a_running_run_and_tags_an_ended_one_only_when_asked(tmp_path):
    from ablations.objective import close_stale_run

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("stale")
    running, ended, errored = (client.create_run(experiment).info.run_id for _ in range(3))
    client.set_terminated(ended, "FINISHED")
    client.set_terminated(errored, "FAILED")

    assert close_stale_run(client, running) is True
    # a worker killed after its run ended, before the study was told: the run is tagged, kept
    assert close_stale_run(client, ended, tag_ended=True) is False
    # a retry's earlier attempt that failed on its own is not called stale
    assert close_stale_run(client, errored) is False
    runs = {r: client.get_run(r) for r in (running, ended, errored)}
    assert runs[running].info.status == "FAILED" and runs[running].data.tags["labbench.stale"] == "1"
    assert runs[ended].info.status == "FINISHED" and runs[ended].data.tags["labbench.stale"] == "1"
    assert runs[errored].info.status == "FAILED" and "labbench.stale" not in runs[errored].data.tags


def _straight(config):
    """The uninterrupted run of ``config`` in this process (torch's thread count restored)."""
    from bench.train import run

    threads = torch.get_num_threads()
    try:
        return run(config)
    finally:
        torch.set_num_threads(threads)


def _untimed(metrics):
    return {k: v for k, v in metrics.items() if k not in TIMING}


def test_a_trial_killed_after_epoch_1_resumes_from_its_checkpoint(tmp_path, capsys, monkeypatch):
    doc = study_doc("resumed", grid={"method": ["lab", "bwn"]}, seeds=[0], base=THREE_EPOCHS,
                    baseline={"method": "bwn"})
    path = write_study(tmp_path, doc)
    root = tmp_path / "runs"
    code, _, err = cli(capsys, "grid", str(path), "--root", str(root), "--workers", "0")
    assert code == 0, err
    marker = tmp_path / "paused"
    monkeypatch.setenv("LABBENCH_RUN_FN", PAUSING)
    monkeypatch.setenv("LABBENCH_TEST_PAUSE", str(marker))
    env = lab_env(LABBENCH_RUN_FN=PAUSING, LABBENCH_TEST_PAUSE=str(marker))
    a = start_labbench("worker", "resumed", "--root", str(root), env=env, log=tmp_path / "a.log")
    journal = str(root / "optuna.journal")
    wait_for(lambda: marker.exists() or a.poll() is not None, what="worker A's first checkpoint")
    assert a.poll() is None, (tmp_path / "a.log").read_text()
    victim = wait_for(_running_trial_of(journal, "resumed", a.pid), what="worker A's trial")
    folder = root / "checkpoints" / "resumed"
    checkpoint = checkpoint_path(folder, slot_params(victim))
    assert checkpoint.exists() and [p.name for p in folder.iterdir()] == [checkpoint.name]
    assert torch.load(checkpoint, weights_only=True)["progress"]["epoch"] == 1
    os.kill(a.pid, signal.SIGKILL)
    a.wait()

    code, out, err = cli(capsys, "repair", "resumed", "--root", str(root))
    assert code == 0 and "1 stale trial(s) failed, 1 cell(s) queued again" in out, out + err
    assert checkpoint.exists()  # the retry's starting point
    code, out, err = cli(capsys, "grid", str(path), "--root", str(root), "--workers", "1")
    assert code == 0, out + err

    _assert_complete_once(root, "resumed", 2)
    trials = load_study(journal, "resumed").trials
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE"
    assert retry[0].user_attrs["resumed_from_epoch"] == 1
    other = [t for t in trials if t.state.name == "COMPLETE" and t is not retry[0]]
    assert len(other) == 1 and "resumed_from_epoch" not in other[0].user_attrs  # from scratch
    assert not list(folder.iterdir())  # every run is over: no checkpoint is left

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    resumed = client.get_run(retry[0].user_attrs["mlflow_run_id"])
    assert resumed.data.tags[RESUMED_TAG] == "1"
    config = parse_study(path).config(retry[0].params, 0)
    straight = _straight(config)
    recorded = {k: resumed.data.metrics[k] for k in straight.metrics}
    assert _untimed(recorded) == _untimed(straight.metrics)
    assert straight.metrics["epochs_run"] == 3
    # the new MLflow run holds every epoch: epoch 1 replayed from the checkpoint, then 2 and 3
    alphas = [k for k in straight.history[0] if k.startswith("alpha/")]
    assert alphas  # lab: the learned scale of each quantized layer
    for key in ("val_acc", "train_loss", *alphas):
        history = sorted((m.step, m.value) for m in client.get_metric_history(resumed.info.run_id, key))
        assert history == [(e, row[key]) for e, row in enumerate(straight.history, 1)], key


class ListRecorder(NullRecorder):
    """What the run process sends: its tags and metrics."""

    def __init__(self):
        self.tags, self.metrics = {}, []

    def set_tags(self, tags):
        self.tags.update(tags)

    def log_metrics(self, metrics, step):
        self.metrics.append((step, dict(metrics)))


def test_a_checkpoint_of_another_configuration_is_refused_and_the_run_starts_afresh(tmp_path):
    from bench.config import RunConfig
    from bench.train import run

    config = RunConfig(**{**THREE_EPOCHS, "epochs": 2}, method="lab", seed=3)
    other = RunConfig.from_dict({**config.to_dict(), "lr": config.lr * 2 if config.lr else 0.01})
    checkpoint = tmp_path / "slot.pt"
    run_isolated(run, other, ListRecorder(), checkpoint=checkpoint)
    assert torch.load(checkpoint, weights_only=True)["config"] == other.to_dict()

    recorder = ListRecorder()
    metrics = run_isolated(run, config, recorder, checkpoint=checkpoint)
    assert "of another configuration (differs in lr)" in recorder.tags[REFUSED_TAG]
    assert RESUMED_TAG not in recorder.tags
    assert [step for step, _ in recorder.metrics] == [1, 2, 2]  # two epochs trained, then the final
    assert _untimed(metrics) == _untimed(_straight(config).metrics)
    assert torch.load(checkpoint, weights_only=True)["config"] == config.to_dict()


def test_a_run_resumed_from_its_final_checkpoint_finishes_with_the_same_metrics(tmp_path):
    """A worker killed after its run ended but before the trial was recorded: the retry trains
    nothing and reports the same result."""
    from bench.config import RunConfig
    from bench.train import run

    config = RunConfig(**{**THREE_EPOCHS, "epochs": 2}, method="bwn")
    checkpoint = tmp_path / "slot.pt"
    first = run_isolated(run, config, ListRecorder(), checkpoint=checkpoint)
    recorder = ListRecorder()
    again = run_isolated(run, config, recorder, checkpoint=checkpoint, isolate=False)
    assert recorder.tags[RESUMED_TAG] == "2"
    assert [step for step, _ in recorder.metrics] == [1, 2, 2]  # both epochs replayed, the final
    assert _untimed(again) == _untimed(first)
    assert not list(tmp_path.glob("*.tmp"))


def test_a_finished_study_leaves_no_checkpoint_and_no_checkpoints_keeps_none(tmp_path, capsys):
    root = tmp_path / "runs"
    for name, flags in (("kept", []), ("none", ["--no-checkpoints"])):
        path = write_study(tmp_path, study_doc(name, grid={"method": ["fp", "lab"]}, seeds=[0]))
        code, out, err = cli(capsys, "grid", str(path), "--root", str(root), "--workers", "1",
                             "--quiet", *flags)
        assert code == 0, out + err
        _assert_complete_once(root, name, 2)
    # each run of 'kept' wrote its checkpoint there (the folder is made by the first write) and
    # deleted it when it ended; the runs of 'none' kept none
    assert [p.name for p in (root / "checkpoints").iterdir()] == ["kept"]
    assert not list((root / "checkpoints" / "kept").iterdir())


def _hands_a_file(config, recorder):
    """A run function that logs one file through its recorder, then deletes its own copy."""
    import tempfile
    from pathlib import Path
    from types import SimpleNamespace

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "final.safetensors"
        path.write_bytes(b"model bytes")
        recorder.log_artifact(str(path), "model")
    return SimpleNamespace(metrics={"test_acc": 1.0})


def test_a_file_the_run_process_hands_over_is_logged_by_the_worker_then_deleted(tmp_path):
    from ablations.isolate import run_isolated

    class Keeps(ListRecorder):
        def __init__(self):
            super().__init__()
            self.files = []

        def log_artifact(self, local_path, artifact_path=None):
            from pathlib import Path

            self.files.append((Path(local_path).name, artifact_path, Path(local_path).read_bytes(),
                               Path(local_path).parent))

    keeps = Keeps()
    assert run_isolated(_hands_a_file, None, keeps) == {"test_acc": 1.0}
    (name, where, data, folder), = keeps.files
    assert (name, where, data) == ("final.safetensors", "model", b"model bytes")
    assert not folder.exists()  # the handed copy's folder is gone once logged
    # a worker-side recorder that keeps no files still gets the copy deleted, and the run goes on
    assert run_isolated(_hands_a_file, None, ListRecorder()) == {"test_acc": 1.0}


def test_the_resume_hint_names_a_file_a_shipped_study_or_retry_failed(tmp_path):
    """A spec read back from storage has a description as its source, not a file: the hint must
    still be a command that runs (the launcher printed `labbench grid '<description>'` before)."""
    from dataclasses import replace

    from ablations.catalog import SHIPPED
    from ablations.launcher import resume_command
    from ablations.spec import parse_study

    spec = parse_study(SHIPPED / "demo.toml")
    assert resume_command(spec, " --root R") == f"labbench grid {SHIPPED / 'demo.toml'} --root R"
    stored = replace(spec, source="study 'demo' stored in /x/optuna.journal")
    assert resume_command(stored, " --root R") == "labbench grid demo --root R"
    own = replace(stored, name="mine")
    assert resume_command(own, " --root R") == "labbench retry-failed mine --root R"
