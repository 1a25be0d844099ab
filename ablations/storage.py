"""Where a study lives: the Optuna storage and the MLflow tracking URI, from the command line.

One machine (the defaults): an Optuna journal file ``<root>/optuna.journal`` (safe for several
processes on one host, no heartbeat) and MLflow in ``sqlite:///<root>/mlflow.db``. Several machines:
``--storage postgresql+psycopg2://...`` (RDBStorage with a heartbeat: a trial whose worker stops
beating is failed and re-queued automatically) and ``--tracking-uri http://host:5000`` (an
``mlflow server``). ``sqlite:///`` storage URLs work for one worker only (SQLite cannot hand out
queued trials to several processes safely: harness.md 1.2).

Example:
    >>> loc = resolve_location(root="/tmp/runs", storage=None, tracking_uri=None)
    >>> loc.storage_url, loc.default_tracking_uri, loc.kind
    ('/tmp/runs/optuna.journal', 'sqlite:////tmp/runs/mlflow.db', 'journal')
    >>> masked("postgresql+psycopg2://me:secret@db:5432/studies")
    'postgresql+psycopg2://me:***@db:5432/studies'
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_ROOT",
    "Heartbeat",
    "Location",
    "StorageError",
    "masked",
    "open_storage",
    "resolve_location",
]

DEFAULT_ROOT = "labbench-runs"
JOURNAL_NAME = "optuna.journal"
STORAGE_ENV = "LABBENCH_STORAGE"  # the launcher hands the URL to its workers here (not in argv)
_RDB_SCHEMES = ("postgresql", "mysql", "sqlite")


class StorageError(ValueError):
    """A storage URL or tracking URI that cannot be used (bad input: exit status 2)."""


@dataclass(frozen=True)
class Heartbeat:
    """RDB heartbeat settings, stored with the study so that every worker uses the same ones.

    A RUNNING trial whose worker has not beaten for ``grace_s`` seconds is failed by the next
    worker that asks for a trial, and re-queued (at most ``max_retry`` times per cell).
    """

    interval_s: int = 30
    grace_s: int = 120
    max_retry: int = 2

    def to_dict(self) -> dict[str, int]:
        return {"interval_s": self.interval_s, "grace_s": self.grace_s, "max_retry": self.max_retry}


@dataclass(frozen=True)
class Location:
    """A study's storage and tracking URI. ``root`` is the local run root (logs go there)."""

    root: Path
    storage_url: str  # a journal file path, or an SQLAlchemy URL
    tracking_uri: str | None  # None: the one stored with the study (the launcher: the default)
    kind: str  # "journal" | "rdb"

    @property
    def default_tracking_uri(self) -> str:
        """``sqlite:///<root>/mlflow.db``: where a study created without --tracking-uri records."""
        return f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def heartbeat_capable(self) -> bool:
        return self.kind == "rdb"

    @property
    def single_process(self) -> bool:
        return self.storage_url.startswith("sqlite")


def masked(url: str) -> str:
    """The URL with its password replaced by ``***`` (for messages, tags and logs)."""
    return re.sub(r"^([a-z0-9+]+://[^:/@]+):[^@]*@", r"\1:***@", url)


def resolve_location(*, root: str | os.PathLike | None, storage: str | None,
                     tracking_uri: str | None) -> Location:
    """Canonical storage and tracking URI from ``--root``, ``--storage`` and ``--tracking-uri``.

    Nothing is created here: the caller creates the root only once the input is known good.

    Raises:
        StorageError: an unsupported URL scheme.
    """
    root_path = Path(root or DEFAULT_ROOT).expanduser().resolve()
    storage = storage or os.environ.get(STORAGE_ENV) or None
    if storage is None:
        url, kind = str(root_path / JOURNAL_NAME), "journal"
    elif storage.startswith("journal:"):
        url, kind = str(Path(storage[len("journal:"):]).expanduser().resolve()), "journal"
    elif "://" in storage:
        scheme = storage.split("://", 1)[0].split("+", 1)[0]
        if scheme not in _RDB_SCHEMES:
            raise StorageError(f"--storage: unsupported URL scheme {scheme!r} in {masked(storage)!r};"
                               " use postgresql://..., mysql://..., sqlite:///FILE (one worker) or"
                               " a journal file path")
        url, kind = storage, "rdb"
    else:  # a path: a journal file
        url, kind = str(Path(storage).expanduser().resolve()), "journal"
    if tracking_uri is not None and not re.match(r"^(sqlite:///|https?://|file:|databricks|"
                                                 r"postgresql|mysql)", tracking_uri):
        raise StorageError(f"--tracking-uri: expected sqlite:///FILE or http(s)://HOST:PORT, got "
                           f"{tracking_uri!r}")
    return Location(root=root_path, storage_url=url, tracking_uri=tracking_uri, kind=kind)


def open_storage(location: Location, *, heartbeat: Heartbeat | None = None) -> Any:
    """The Optuna storage object (journal, or RDB with ``heartbeat`` when given).

    The journal's directory must exist (the launcher creates the run root).
    """
    from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
    from optuna.storages.journal import JournalFileBackend

    if location.kind == "journal":
        return JournalStorage(JournalFileBackend(location.storage_url))
    kwargs: dict[str, Any] = {"engine_kwargs": {"pool_pre_ping": True}}
    if location.storage_url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    if heartbeat is not None:
        with warnings.catch_warnings():  # the heartbeat is experimental in Optuna 5 (harness.md 0)
            warnings.simplefilter("ignore")
            callback = RetryHeartbeatStaleTrialCallback(max_retry=heartbeat.max_retry)
            return RDBStorage(location.storage_url, heartbeat_interval=heartbeat.interval_s,
                              grace_period=heartbeat.grace_s,
                              heartbeat_stale_trial_callback=callback, **kwargs)
    return RDBStorage(location.storage_url, **kwargs)
