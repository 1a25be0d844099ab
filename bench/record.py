"""Recording runs: the `Recorder` interface, its MLflow implementation, and the environment record.

`bench.train.run` hands params, per-epoch metrics and artifacts to a recorder; `MlflowRecorder`
writes them to one MLflow run with batched calls (never the fluent API, which silently creates runs
when none is active). `mlflow_run` opens such a run and always closes it: FINISHED, FAILED with
the traceback as an artifact, or KILLED on Ctrl-C. The names follow docs/mlflow-layout.md.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import logging
import os
import platform
import resource
import socket
import subprocess
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch

__all__ = [
    "EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TAG",
    "MlflowRecorder",
    "NullRecorder",
    "Recorder",
    "default_tracking_uri",
    "download_checkpoint",
    "ensure_experiment",
    "env_info",
    "git_info",
    "mlflow_run",
    "mlflow_run_resumed",
    "peak_rss_mb",
    "source_tags",
]

log = logging.getLogger(__name__)
REPO_DIR = Path(__file__).resolve().parent.parent


# The tag MLflow 3's UI reads to choose an experiment's view, and its value for model training
# (shown as "Machine learning"; "genai_development" is the GenAI view).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

SOURCE_NAME = "bench/cli.py"  # the `labbench` command, relative to the checkout


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO_DIR), *args], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


@functools.cache
def source_tags() -> dict[str, str]:
    """MLflow's source tags for code run from this labbench checkout (computed once per process:
    the code a process runs is the code it imported)."""
    tags = {"mlflow.source.type": "LOCAL", "mlflow.source.name": SOURCE_NAME}
    commit = _git("rev-parse", "HEAD")
    if commit is None:  # not a git checkout (an installed wheel): no git tags
        return tags
    tags["mlflow.source.git.commit"] = commit
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    tags["mlflow.source.git.dirty"] = "true" if dirty else "false"
    branch = _git("rev-parse", "--abbrev-ref", "HEAD")
    if branch and branch != "HEAD":
        tags["mlflow.source.git.branch"] = branch
    url = _git("remote", "get-url", "origin")
    if url:
        tags["mlflow.source.git.repoURL"] = url
    return tags


class Recorder(Protocol):
    """Where a run's results go."""

    def set_tags(self, tags: dict[str, str]) -> None: ...
    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_dict(self, obj: dict[str, Any], name: str) -> None: ...


class NullRecorder:
    """Records nothing (the result still carries the metrics)."""

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_dict(self, obj: dict[str, Any], name: str) -> None:
        pass


class MlflowRecorder:
    """Writes to one existing MLflow run through `MlflowClient.log_batch` (chunked to its limits)."""

    def __init__(self, client: Any, run_id: str):
        self.client, self.run_id = client, run_id

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, tags=items[i:i + 100])

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def log_dict(self, obj: dict[str, Any], name: str) -> None:
        self.client.log_dict(self.run_id, obj, name)

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        """Copy a file into the run's artifacts (replacing one of the same name: checkpoints)."""
        self.client.log_artifact(self.run_id, local_path, artifact_path)


def default_tracking_uri(root: str | os.PathLike) -> str:
    """``sqlite:///<root>/mlflow.db`` (absolute), creating the root directory."""
    path = Path(root).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / 'mlflow.db'}"


def ensure_experiment(client: Any, name: str, tracking_uri: str) -> str:
    """The id of experiment `name`, creating it (with artifacts next to a sqlite database)."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return exp.experiment_id
    location = None
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        location = (db.parent / "mlartifacts" / name).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location,
                                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    except Exception:  # created concurrently by another process: use theirs
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


@contextlib.contextmanager
def mlflow_run(client: Any, experiment_id: str, *, run_name: str, tags: dict[str, str]
               ) -> Iterator[MlflowRecorder]:
    """Create a run and always terminate it (FINISHED / FAILED + traceback.txt / KILLED)."""
    run = client.create_run(experiment_id, run_name=run_name, tags={**source_tags(), **tags})
    recorder = MlflowRecorder(client, run.info.run_id)
    try:
        yield recorder
    except KeyboardInterrupt:
        client.set_terminated(run.info.run_id, "KILLED")
        raise
    except BaseException:
        with contextlib.suppress(Exception):
            client.log_text(run.info.run_id, traceback.format_exc(), "traceback.txt")
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    else:
        client.set_terminated(run.info.run_id, "FINISHED")


@contextlib.contextmanager
def mlflow_run_resumed(client: Any, run_id: str) -> Iterator[MlflowRecorder]:
    """Reopen an existing run (status RUNNING again) and terminate it as `mlflow_run` does."""
    client.update_run(run_id, status="RUNNING")
    recorder = MlflowRecorder(client, run_id)
    try:
        yield recorder
    except KeyboardInterrupt:
        client.set_terminated(run_id, "KILLED")
        raise
    except BaseException:
        with contextlib.suppress(Exception):
            client.log_text(run_id, traceback.format_exc(), "traceback.txt")
        client.set_terminated(run_id, "FAILED")
        raise
    else:
        client.set_terminated(run_id, "FINISHED")


def download_checkpoint(client: Any, run_id: str, dst: str | os.PathLike) -> Path | None:
    """The run's ``checkpoint/last.pt`` (bench.train.CHECKPOINT) copied into `dst`, or None when
    the run has none."""
    names = {f.path for f in client.list_artifacts(run_id, "checkpoint")}
    if "checkpoint/last.pt" not in names:
        return None
    return Path(client.download_artifacts(run_id, "checkpoint/last.pt", str(dst)))


def git_info() -> dict[str, str]:
    """Commit and dirty flag of the labbench checkout (``unknown`` when not in a git checkout)."""
    try:
        commit = subprocess.run(["git", "-C", str(REPO_DIR), "rev-parse", "HEAD"],
                                capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO_DIR), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True, timeout=10,
                               check=True).stdout.strip()
        return {"git_commit": commit, "git_dirty": "1" if dirty else "0"}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown", "git_dirty": "unknown"}


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def env_info(device: torch.device | None = None) -> dict[str, Any]:
    """Versions, hardware and source revision, recorded once per run as ``env.json``."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "packages": {d: _version(d) for d in ("labbench", "torch", "triton", "numpy", "optuna",
                                              "mlflow", "pandas")},
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(device) if device is not None and device.type == "cuda"
        else None,
        **git_info(),
    }
    return info


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
