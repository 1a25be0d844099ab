"""Shared helpers of the harness tests: study files, the CLI in a subprocess, MLflow queries."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
# A run of a second or less: an MLP of 16 units, 3 steps on the committed Fashion-MNIST subset.
TINY = {"model": "mlp", "hidden": 16, "layers": 1, "epochs": 1, "steps": 3, "train_limit": 600,
        "eval_limit": 200}


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if v != v else ("inf" if v == math.inf else "-inf" if v == -math.inf else repr(v))
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {v!r} as TOML")


def to_toml(doc: dict[str, Any]) -> str:
    """A document of tables (and top-level scalars) as TOML text."""
    lines = [f"{json.dumps(k)} = {toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for name, table in doc.items():
        if isinstance(table, dict):
            lines.append(f"[{json.dumps(name)}]")
            lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def study_doc(name: str = "t", *, grid: dict | None = None, base: dict | None = None,
              seeds: list[int] | None = None, **study: Any) -> dict[str, Any]:
    return {"study": {"name": name, "objective": "test_acc", "seeds": seeds or [0, 1],
                      "baseline": {"method": "fp"}, **study},
            "base": dict(TINY if base is None else base),
            "grid": grid if grid is not None else {"method": ["fp", "bc", "lab"]}}


def write_study(folder: Path, doc: dict[str, Any], filename: str | None = None) -> Path:
    path = folder / (filename or f"{doc['study']['name']}.toml")
    path.write_text(to_toml(doc))
    return path


def lab_env(**extra: str) -> dict[str, str]:
    """Environment of labbench subprocesses: committed data, offline, tests importable. What a
    test set (``LABBENCH_RUN_FN`` included) is inherited: the autouse fixture already keeps the
    caller's storage and run hook out."""
    env = dict(os.environ)
    env.update({"LABBENCH_DATA": str(DATA), "LABBENCH_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)})
    env.update(extra)
    return env


def labbench(*args: str, env: dict[str, str] | None = None, timeout: float = 300,
             cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``labbench ARGS`` (``python -m labbench``) to completion."""
    return subprocess.run([sys.executable, "-m", "labbench", *args], env=env or lab_env(),
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)


def cli(capsys: Any, *args: str) -> tuple[int, str, str]:
    """Run ``labbench ARGS`` in this process (its imports are paid for already); workers that a
    launcher starts are still processes of their own. Returns (status, stdout, stderr)."""
    from labbench.cli import main

    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def start_labbench(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
                   log: Path | None = None) -> subprocess.Popen:
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 (closed with the process)
    return subprocess.Popen([sys.executable, "-m", "labbench", *args], env=env or lab_env(),
                            stdout=out, stderr=subprocess.STDOUT, cwd=cwd)


def load_study(storage: str, name: str) -> Any:
    """The Optuna study, with plain storage (journal path or RDB URL)."""
    import optuna
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    st = RDBStorage(storage) if "://" in storage else JournalStorage(JournalFileBackend(storage))
    return optuna.load_study(study_name=name, storage=st)


def wait_for(predicate: Any, timeout: float = 120, every: float = 0.2, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def mlflow_runs(tracking_uri: str, name: str) -> tuple[Any, list[Any]]:
    """(parent run, child runs) of a study, straight from MLflow."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(name)
    assert exp is not None, f"no experiment {name!r} at {tracking_uri}"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("labbench.kind") == "study"]
    assert len(parents) == 1, f"{len(parents)} parent runs"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) + 1 == len(runs), "runs outside the study in its experiment"
    return parents[0], children


def artifacts(tracking_uri: str, run_id: str) -> set[str]:
    from mlflow.tracking import MlflowClient

    return {a.path for a in MlflowClient(tracking_uri=tracking_uri).list_artifacts(run_id)}
