"""Several machines: Optuna on a real PostgreSQL server, where a killed worker's trial is retried by
the heartbeat with no manual repair (issue test 3)."""

from __future__ import annotations

import os
import signal

import pytest
from mlflow.tracking import MlflowClient

from ablations.objective import slot_params
from analysis import load_runs
from tests.ablations.helpers import (
    cli,
    lab_env,
    load_study,
    start_labbench,
    study_doc,
    wait_for,
    write_study,
)


@pytest.mark.pg
def test_postgres_heartbeat_retries_a_killed_workers_trial(tmp_path, capsys, monkeypatch, pg_url):
    doc = study_doc("pg", grid={"method": ["fp", "bc", "lab"]}, seeds=[0, 1])
    path = write_study(tmp_path, doc)
    root = tmp_path / "runs"
    code, out, err = cli(capsys, "grid", str(path), "--root", str(root), "--storage", pg_url,
                         "--workers", "0", "--heartbeat", "1")
    assert code == 0, out + err
    monkeypatch.setenv("LABBENCH_RUN_FN", "tests.ablations.fakes:slow_run")
    monkeypatch.setenv("LABBENCH_TEST_SLEEP", "1.5")
    # workers on "other machines": only the storage URL; the tracking URI comes from the study
    args = ("worker", "pg", "--storage", pg_url, "--threads", "1")
    # A's trial outlasts the kill, so it dies RUNNING (a short one could end first: a race)
    slow = {"LABBENCH_RUN_FN": "tests.ablations.fakes:slow_run"}
    a = start_labbench(*args, env=lab_env(**slow, LABBENCH_TEST_SLEEP="120"), log=tmp_path / "a.log",
                       cwd=tmp_path)
    b = start_labbench(*args, env=lab_env(**slow), log=tmp_path / "b.log", cwd=tmp_path)

    def running_trial_of_a():
        for t in load_study(pg_url, "pg").get_trials(deepcopy=False):
            owner = t.user_attrs.get("owner") or {}
            if t.state.name == "RUNNING" and owner.get("pid") == a.pid \
                    and owner.get("trial") == t.number and t.user_attrs.get("mlflow_run_id"):
                return t
        return None

    victim = wait_for(running_trial_of_a, what="worker A's trial")
    os.kill(a.pid, signal.SIGKILL)
    a.wait()
    # B finishes the grid, waits for A's trial to go stale (4 heartbeats), fails it, runs the retry
    assert b.wait(timeout=240) == 0, (tmp_path / "b.log").read_text()

    trials = load_study(pg_url, "pg").get_trials()
    assert trials[victim.number].state.name == "FAIL"
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE"
    assert slot_params(retry[0]) == slot_params(victim)
    assert retry[0].user_attrs["owner"]["pid"] == b.pid
    complete = [tuple(sorted(slot_params(t).items())) for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == len(set(complete)) == 6

    uri = f"sqlite:///{root / 'mlflow.db'}"
    stale = MlflowClient(tracking_uri=uri).get_run(victim.user_attrs["mlflow_run_id"])
    assert stale.info.status == "FAILED" and stale.data.tags["labbench.stale"] == "1"
    frame = load_runs("pg", uri)
    assert len(frame) == 6 and len(frame.groupby(["cell", "seed"])) == 6
