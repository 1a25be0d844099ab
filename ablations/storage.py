"""Where a study lives: the Optuna storage and the MLflow tracking URI, from the command line.

One machine (the defaults): an Optuna journal file ``<root>/optuna.journal`` (safe for several
processes on one host, no heartbeat) and MLflow in ``sqlite:///<root>/mlflow.db``. Several machines:
``--storage postgresql+psycopg2://...`` (RDBStorage with a heartbeat: a trial whose worker stops
beating is failed and re-queued automatically) and ``--tracking-uri http://host:5000`` (an
``mlflow server``). ``sqlite:///`` storage URLs work for one worker only (SQLite cannot hand out
queued trials to several processes safely: docs/harness.md, "Several processes, several machines").

Example:
    >>> loc = resolve_location(root="/tmp/runs", storage=None, tracking_uri=None)
    >>> loc.storage_url, loc.default_tracking_uri, loc.kind
    ('/tmp/runs/optuna.journal', 'sqlite:////tmp/runs/mlflow.db', 'journal')
    >>> masked("postgresql+psycopg2://me:secret@db:5432/studies")
    'postgresql+psycopg2://me:***@db:5432/studies'
"""

from __future__ import annotations

import datetime
import errno
import json
import logging
import os
import re
import shlex
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_ROOT",
    "Heartbeat",
    "Location",
    "StorageError",
    "disk_full",
    "masked",
    "open_storage",
    "recover_journal",
    "resolve_location",
    "where_flags",
]

DEFAULT_ROOT = "labbench-runs"
JOURNAL_NAME = "optuna.journal"
log = logging.getLogger("labbench.storage")
_OP_START = b'{"op_code":'  # how Optuna's journal writes each operation (a JSON object a line)
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


def disk_full(err: BaseException | None) -> bool:
    """Whether ``err`` (or an error it was raised from) is a full disk: ENOSPC or EDQUOT, or
    SQLite's "database or disk is full" as MLflow and SQLAlchemy pass it on."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(err) for text in ("database or disk is full",
                                             "No space left on device")):
            return True
        err = err.__cause__ or err.__context__
    return False


def where_flags(location: Location) -> str:
    """The ``--root``/``--storage``/``--tracking-uri`` flags that name ``location`` again, for the
    commands that messages suggest (quoted for a POSIX shell; a password shows as ``***``).

    Example:
        >>> where_flags(resolve_location(root="/tmp/my runs", storage=None, tracking_uri=None))
        " --root '/tmp/my runs'"
    """
    flags = f" --root {shlex.quote(str(location.root))}"
    if location.storage_url != str(location.root / JOURNAL_NAME):
        flags += f" --storage {shlex.quote(masked(location.storage_url))}"
    if location.tracking_uri is not None:
        flags += f" --tracking-uri {shlex.quote(masked(location.tracking_uri))}"
    return flags


def recover_journal(path: str | os.PathLike, lock: Any = None) -> str | None:
    """Make a journal that a full disk (or a killed writer) tore readable again.

    A write cut short leaves a last line without its newline. Optuna skips such a line when it
    reads, but its next append glues a whole operation onto it, and from then on every read of
    the file fails, for every study in it. Here the torn tail is cut off (its bytes kept in
    ``<journal>.torn-<UTC time>``), and a glued line written before this check existed keeps the
    whole operation at its end. A torn operation was never acknowledged to Optuna's caller, so
    nothing that was recorded is lost.

    Args:
        path: the journal file (absent: nothing to do).
        lock: the journal backend's lock, held while the file is mended (None: held already).

    Returns:
        What was mended, for a warning, or None when the journal was whole.

    Raises:
        OSError: the backup or the mended file cannot be written (a disk still full); the
            journal is left as it was.
    """
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return None
    if _ends_whole(path) and not _glued_lines(path):
        return None
    if lock is not None:
        lock.acquire()
    try:
        return _mend(path)
    finally:
        if lock is not None:
            lock.release()


def _ends_whole(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _mend(path: Path) -> str | None:
    """`recover_journal`'s work, with the journal's lock held."""
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    lines, tail = data[:cut].splitlines(keepends=True), data[cut:]
    mended, dropped = [], [tail] if tail else []
    for line in lines:
        op = _salvage(line)
        if op is None:
            dropped.append(line)
        else:
            mended.append(op)
            if op != line:
                dropped.append(line[:len(line) - len(op)])
    if not dropped:
        return None
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    backup = path.with_name(f"{path.name}.torn-{stamp}")
    _write_synced(backup, b"\n".join(dropped))
    if len(dropped) == 1 and tail:  # only a torn last line: cut it off in place
        os.truncate(path, cut)
    else:  # glued lines: write the mended journal beside it, then swap
        tmp = path.with_name(f"{path.name}.mending")
        try:
            _write_synced(tmp, b"".join(mended))
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, path)
    return (f"the Optuna journal {path} had {sum(map(len, dropped))} torn byte(s) (a full disk or "
            f"a killed writer?); they were moved to {backup} and the journal is whole again")


def _write_synced(path: Path, data: bytes) -> None:
    try:
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError:
        path.unlink(missing_ok=True)
        raise


def _journal_backend(path: str) -> Any:
    """Optuna's journal file backend, with appends that never leave a torn line behind."""
    from optuna.storages.journal import JournalFileBackend

    class MendingJournalFileBackend(JournalFileBackend):
        """Each append first cuts a torn tail (a writer killed mid-line) and, when the write
        fails (a full disk), truncates the journal back to where it was, so the next append
        never glues an operation onto half of another."""

        def append_logs(self, logs: list[dict[str, Any]]) -> None:
            text = "\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n"
            self._lock.acquire()
            try:
                journal = Path(self._file_path)
                if not _ends_whole(journal):
                    note = _mend(journal)
                    if note:
                        log.warning("%s", note)
                size = journal.stat().st_size
                try:
                    with open(journal, "ab") as f:
                        f.write(text.encode("utf-8"))
                        f.flush()
                        os.fsync(f.fileno())
                except OSError:
                    os.truncate(journal, size)  # needs no space
                    raise
            finally:
                self._lock.release()

    return MendingJournalFileBackend(path)


def _glued_lines(path: Path) -> bool:
    """Whether a line of the journal does not parse (a torn write with an operation glued on)."""
    with open(path, "rb") as f:
        return any(_salvage(line) != line for line in f if line.find(_OP_START, 1) > 0)


def _salvage(line: bytes) -> bytes | None:
    """The line if it is one JSON operation; else the whole operation at its end; else None."""
    try:
        json.loads(line)
        return line
    except ValueError:
        pass
    start = line.rfind(b"{")
    while start > 0:
        try:
            if isinstance(json.loads(line[start:]), dict):
                return line[start:]
        except ValueError:
            pass
        start = line.rfind(b"{", 0, start)
    return None


def open_storage(location: Location, *, heartbeat: Heartbeat | None = None) -> Any:
    """The Optuna storage object (journal, or RDB with ``heartbeat`` when given).

    The journal's directory must exist (the launcher creates the run root).
    """
    from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
    from sqlalchemy.pool import NullPool

    if location.kind == "journal":
        backend = _journal_backend(location.storage_url)
        try:
            note = recover_journal(location.storage_url, backend._lock)
        except OSError as err:  # a disk still full: Optuna reads past a torn last line anyway
            note = (f"the Optuna journal {location.storage_url} has a torn last line that cannot "
                    f"be mended now ({err.strerror or err}); it is read without it")
        if note:
            log.warning("%s", note)
        return JournalStorage(backend)
    # No connection pool: every process (launcher, each worker, each trial, `status`) would keep
    # up to five idle connections per storage it opened, and a study with many workers on one
    # PostgreSQL server ran into its max_connections ("too many clients already"). A harness
    # makes a few queries per trial, so a new connection per query (a few ms on a LAN) is cheap.
    kwargs: dict[str, Any] = {"engine_kwargs": {"poolclass": NullPool}}
    if location.storage_url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    if heartbeat is not None:
        with warnings.catch_warnings():  # the heartbeat is experimental in Optuna 5
            warnings.simplefilter("ignore")
            callback = RetryHeartbeatStaleTrialCallback(max_retry=heartbeat.max_retry)
            return RDBStorage(location.storage_url, heartbeat_interval=heartbeat.interval_s,
                              grace_period=heartbeat.grace_s,
                              heartbeat_stale_trial_callback=callback, **kwargs)
    return RDBStorage(location.storage_url, **kwargs)
