"""MLflow access shared by the loaders and the report: client, study lookup, paging, JSON artifacts.

Everything here follows docs/mlflow-layout.md: a study is an experiment named after it, holding one
parent run tagged ``labbench.kind = study`` and one child run per trial.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from mlflow.entities import Experiment, Run, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

__all__ = [
    "KIND_TAG",
    "PARENT_TAG",
    "find_parent_run",
    "open_client",
    "open_experiment",
    "read_json_artifact",
    "search_all_runs",
]

logger = logging.getLogger(__name__)

KIND_TAG = "labbench.kind"
PARENT_TAG = "mlflow.parentRunId"
_PAGE = 1000  # MlflowClient.search_runs' largest page


def open_client(tracking_uri: str) -> MlflowClient:
    """Return a client for ``tracking_uri``, refusing a SQLite file that does not exist.

    MLflow silently creates an empty database for any ``sqlite:///`` path, so a mistyped path
    would otherwise read as "no such study" after leaving a stray ``mlflow.db`` behind.

    Args:
        tracking_uri: an MLflow tracking URI (``sqlite:///<root>/mlflow.db``, ``http://host:5000``).

    Returns:
        An ``MlflowClient`` bound to that URI (no global MLflow state is changed).

    Raises:
        LookupError: the URI names a SQLite file that does not exist.
    """
    if tracking_uri.startswith("sqlite:///"):
        # sqlite:///relative.db, sqlite:////absolute.db; a query string may follow
        path = Path(tracking_uri[len("sqlite:///") :].split("?", 1)[0])
        if str(path) not in ("", ".", ":memory:") and not path.exists():
            raise LookupError(f"tracking URI {tracking_uri!r}: no MLflow database at {path}")
    return MlflowClient(tracking_uri=tracking_uri)


def open_experiment(client: MlflowClient, study: str, tracking_uri: str) -> Experiment:
    """Return the active experiment named ``study``.

    Raises:
        LookupError: no experiment of that name, or it was deleted.
    """
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        raise LookupError(
            f"study {study!r}: no MLflow experiment of that name at tracking URI {tracking_uri!r}"
        )
    if experiment.lifecycle_stage != "active":
        raise LookupError(
            f"study {study!r}: its MLflow experiment at tracking URI {tracking_uri!r} is "
            f"{experiment.lifecycle_stage}"
        )
    return experiment


def search_all_runs(client: MlflowClient, experiment_id: str, filter_string: str) -> list[Run]:
    """All active runs of one experiment matching ``filter_string``, following every page.

    Returns:
        Runs ordered by run id, so that callers iterate in a stable order.
    """
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=filter_string,
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=_PAGE,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            break
    return sorted(runs, key=lambda run: run.info.run_id)


def find_parent_run(
    client: MlflowClient,
    experiment: Experiment,
    study: str,
    tracking_uri: str,
    parent_run_id: str | None = None,
) -> Run:
    """The study's parent run (tag ``labbench.kind = study``).

    Args:
        parent_run_id: pick this run explicitly (it must belong to the experiment and be a study
            parent); otherwise the only parent run, or the earliest started one if a launcher
            created several (a warning names them all).

    Raises:
        LookupError: no parent run, or ``parent_run_id`` is not a parent run of this study.
    """
    where = f"study {study!r} at tracking URI {tracking_uri!r}"
    if parent_run_id is not None:
        try:
            run = client.get_run(parent_run_id)
        except MlflowException as err:
            raise LookupError(f"{where}: no run with id {parent_run_id!r}") from err
        if run.info.experiment_id != experiment.experiment_id or run.data.tags.get(KIND_TAG) != "study":
            raise LookupError(f"{where}: run {parent_run_id!r} is not this study's parent run")
        return run
    parents = search_all_runs(client, experiment.experiment_id, f"tags.`{KIND_TAG}` = 'study'")
    if not parents:
        raise LookupError(f"{where}: no parent run (tag {KIND_TAG} = 'study') in the experiment")
    parents.sort(key=lambda run: (run.info.start_time or 0, run.info.run_id))
    if len(parents) > 1:
        logger.warning(
            "%s has %d parent runs (%s); using the earliest, %s (pass parent_run_id= to choose)",
            where,
            len(parents),
            ", ".join(run.info.run_id for run in parents),
            parents[0].info.run_id,
        )
    return parents[0]


def read_json_artifact(client: MlflowClient, run_id: str, name: str) -> dict | list | None:
    """Download and parse the JSON artifact ``name`` (a path, e.g. ``bptt/epoch-3.json``) of a run;
    None if the run has no such file.

    Raises:
        ValueError: the artifact exists but is not valid JSON (the message names run and file).
    """
    folder = name.rpartition("/")[0]  # "bptt/epoch-3.json" is listed under "bptt"
    try:
        listed = {info.path for info in client.list_artifacts(run_id, folder or None)}
    except (MlflowException, OSError) as err:
        logger.warning("run %s: cannot list artifacts (%s)", run_id, err)
        return None
    if name not in listed:
        return None
    local_root = _local_artifact_root(client.get_run(run_id).info.artifact_uri)
    if local_root is not None:  # read in place: no copy, and no MLflow download progress bar
        text = (local_root / name).read_text(encoding="utf-8")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            local = client.download_artifacts(run_id, name, dst_path=tmp)
            text = Path(local).read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"run {run_id}: artifact {name} is not valid JSON ({err})") from err


def _local_artifact_root(artifact_uri: str | None) -> Path | None:
    """The folder of a run's artifacts when they live on this file system, else None."""
    if not artifact_uri:
        return None
    parsed = urlparse(artifact_uri)
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
        path = Path(url2pathname(parsed.path))
    elif parsed.scheme == "":
        path = Path(artifact_uri)
    else:
        return None
    return path if path.is_dir() else None
