"""Faults on the local defaults: a worker killed mid-trial, then ``repair`` and resume (issue test
2); Ctrl-C of the launcher, then resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from mlflow.tracking import MlflowClient

from ablations.objective import slot_params
from analysis import load_runs
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
    env = lab_env()
    a = start_labbench("worker", "killed", "--root", str(root), "--threads", "1", env=env,
                       log=tmp_path / "a.log")
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
    assert "resume with" in err

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
