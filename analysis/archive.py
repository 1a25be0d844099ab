"""A study as a small folder of text files: export it from MLflow, load it back without MLflow.

``labbench export STUDY --out DIR`` writes (docs/analysis.md, "Archives", describes each file):

    manifest.json   format, labbench version and git commit, creation time, row counts, sha256 of
                    every other file
    spec.json       the resolved study spec (the parent run's study.json)
    meta.json       what the tidy frame needs beside its rows: its attrs (objective, direction,
                    baseline, axes, seeds, excluded runs...), the parent run's tags, column types
    runs.csv        the tidy frame of :func:`analysis.load_runs`: one row per finished run, every
                    param (each RunConfig field, ``seed`` included) and final metric by its name;
                    what identifies a run's cell and its results, nothing else; an unset field
                    is `UNSET` (``-``), never empty
    runs-meta.csv   the run bookkeeping that differs between the seeds of one cell and is not a
                    setting or a result: run_id, trial, start_time, end_time
    curves.csv      per-epoch metrics, long: run_id, epoch, metric, value
    env.csv         the runs' env.json summarised: key, value, runs (how many runs had it)
    artifacts/<run_id>/bptt/epoch-<e>.json   the last profiled epoch of each recurrent run

Rows are sorted (runs by cell and seed, curves by run, metric and epoch) and floats are written
with ``repr``, so a file diffs cleanly and every number reads back bit for bit: the report of an
archive (:func:`load_archive`, then :func:`analysis.report.render_report`) equals the report
rendered from MLflow.

Example (needs a recorded study, so not run as a doctest)::

    export_study("demo", "sqlite:///labbench-runs/mlflow.db", "docs/reports/demo")
    frame = load_archive("docs/reports/demo")   # the frame load_runs returned, attrs included
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from analysis._mlflow import open_client, read_json_artifact
from analysis.runs import load_curves, load_runs

__all__ = ["FORMAT", "RUN_LEVEL_METRICS", "UNSET", "ArchiveError", "archive_artifacts", "archive_curves",
           "environment_summary",
           "export_study", "load_archive", "verify_archive"]

logger = logging.getLogger(__name__)

FORMAT = "labbench-archive/3"  # 2: run bookkeeping moved to runs-meta.csv; 3: UNSET settings
READABLE = ("labbench-archive/2", FORMAT)  # a 2 has empty cells where a 3 has UNSET
UNSET = "-"
"""What runs.csv holds for a RunConfig field that is unset (None) in a run, e.g. ``bits`` of a
method without bits. Not an empty cell: readers take that for NaN, and NaN keys break a grouping
of the runs by their settings (pandas' groupby drops those rows; tuples of NaN never compare
equal), so each run would look like a cell of its own."""
RUN_LEVEL_METRICS = ("best_epoch", "epochs_run", "diverged", "wall_s", "step_ms", "peak_mem_mb",
                     "state_mem_mb", "bits_per_weight", "packed_bytes")
"""Metrics logged once per run (docs/mlflow-layout.md); with the ``best_val_``, ``test_`` and
``floor_`` ones they are columns of runs.csv only, every other metric's history is in curves.csv."""
_RUN_LEVEL_PREFIXES = ("best_val_", "test_", "floor_")
_SERIES = {"bptt": re.compile(r"bptt/epoch-(\d+)\.json")}
"""Per-epoch JSON artifacts kept for each run's last epoch only (folder -> file name pattern)."""
_FILES = ("spec.json", "meta.json", "runs.csv", "runs-meta.csv", "curves.csv", "env.csv")
BOOKKEEPING = ("trial", "start_time", "end_time")
"""Frame columns kept out of runs.csv (in runs-meta.csv, by run_id): per-run identifiers and
times, which a reader grouping runs.csv by its settings would otherwise take for settings."""


class ArchiveError(ValueError):
    """A missing, incomplete or altered archive; the message names the folder and the file."""


# --- export ---------------------------------------------------------------------------------------


def export_study(study: str, tracking_uri: str, out_dir: str | Path) -> dict:
    """Write the archive of ``study`` into ``out_dir``; return its manifest.

    Everything is read before anything is written, so a missing study creates nothing. Files of a
    previous archive in ``out_dir`` (those its manifest lists) are replaced or removed; any other
    file there (a report, a README) is left alone.

    Raises:
        LookupError: no database, experiment or parent run for ``study`` at ``tracking_uri``.
    """
    frame = load_runs(study, tracking_uri)
    client = open_client(tracking_uri)
    attrs = frame.attrs
    curve_names = [name for name in attrs["metric_columns"] if not _run_level(name)]
    curves = load_curves(frame, curve_names) if curve_names and len(frame) else None
    envs = [read_json_artifact(client, run_id, "env.json") for run_id in frame["run_id"]]
    files: dict[str, bytes] = {
        "spec.json": _json_bytes(read_json_artifact(client, attrs["parent_run_id"], "study.json")),
        "meta.json": _json_bytes({
            "attrs": {k: v for k, v in attrs.items() if k != "archive"},
            "parent_tags": dict(sorted(client.get_run(attrs["parent_run_id"]).data.tags.items())),
            "columns": [[c, str(t)] for c, t in frame.dtypes.items()],  # in the frame's order
        }),
        "runs.csv": _csv_bytes(frame.drop(columns=list(BOOKKEEPING)),
                               unset=attrs.get("param_columns") or ()),
        "runs-meta.csv": _csv_bytes(frame[["run_id", *BOOKKEEPING]]),
        "curves.csv": _curves_bytes(curves),
        "env.csv": _csv_bytes(environment_summary(e for e in envs if isinstance(e, dict))),
    }
    for run_id in frame["run_id"]:
        for name, profile in _last_series(client, run_id):
            files[f"artifacts/{run_id}/{name}"] = _json_bytes(profile)
    rows = {"runs.csv": len(frame), "curves.csv": 0 if curves is None else len(curves),
            "env.csv": files["env.csv"].count(b"\n") - 1}
    manifest = {
        "format": FORMAT,
        "study": study,
        "labbench": _labbench_version(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "rows": rows,
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())},
    }
    _write(Path(out_dir), files, manifest)
    return manifest


def _run_level(name: str) -> bool:
    return name in RUN_LEVEL_METRICS or name.startswith(_RUN_LEVEL_PREFIXES)


def _last_series(client, run_id: str) -> list[tuple[str, dict | list]]:
    """(artifact path, content) of the last epoch of each per-epoch artifact series of a run."""
    out = []
    for folder, pattern in _SERIES.items():
        try:
            listed = [info.path for info in client.list_artifacts(run_id, folder)]
        except OSError as err:
            logger.warning("run %s: cannot list %s/ artifacts (%s)", run_id, folder, err)
            continue
        epochs = sorted((int(m.group(1)), p) for p in listed if (m := pattern.fullmatch(p)))
        if epochs:
            content = read_json_artifact(client, run_id, epochs[-1][1])
            if content is not None:
                out.append((epochs[-1][1], content))
    return out


def _write(out: Path, files: dict[str, bytes], manifest: dict) -> None:
    if out.exists() and not out.is_dir():
        raise ArchiveError(f"{out}: exists and is not a folder")
    stale: set[str] = set()
    old = out / "manifest.json"
    if old.is_file():
        try:
            stale = set(json.loads(old.read_text(encoding="utf-8")).get("files", {})) - set(files)
        except (json.JSONDecodeError, AttributeError):
            stale = set()
    out.mkdir(parents=True, exist_ok=True)
    for name in sorted(stale):
        path = out / name
        if path.is_file():
            path.unlink()
            for parent in path.parents:  # drop folders left empty (artifacts/<run>/bptt)
                if parent == out or any(parent.iterdir()):
                    break
                parent.rmdir()
    for name, data in files.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (out / "manifest.json").write_bytes(_json_bytes(manifest))


def _labbench_version() -> dict:
    """The exporting labbench's version and the git commit of its source tree (None outside git)."""
    try:
        version = metadata.version("labbench")
    except metadata.PackageNotFoundError:
        version = None
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True,
                                  timeout=10, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"version": version, "git_commit": commit,
            "git_dirty": None if commit is None or dirty is None else bool(dirty)}


# --- values as text -------------------------------------------------------------------------------


def _json_bytes(value) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True, default=_plain, allow_nan=True) + "\n").encode()


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, pd.Timestamp):
        return value.isoformat(timespec="microseconds")
    return str(value)


def _cell(value) -> str:
    """One CSV cell: missing is empty, floats by repr (round-trip exact), timestamps in ISO 8601."""
    if value is None or value is pd.NaT or value is pd.NA:
        return ""
    if isinstance(value, pd.Timestamp):  # one format for every row: pandas infers it from the first
        return value.isoformat(timespec="microseconds")
    if isinstance(value, float | np.floating):
        return "" if np.isnan(value) else repr(float(value))
    if isinstance(value, np.generic):
        return str(value.item())
    return str(value)


def _csv_bytes(frame: pd.DataFrame, unset=()) -> bytes:
    """The frame as CSV; a missing value of a column in ``unset`` (the settings) is `UNSET`."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(frame.columns)
    marks = [c in set(unset) for c in frame.columns]
    for row in frame.itertuples(index=False, name=None):
        writer.writerow([(_cell(v) or UNSET) if mark else _cell(v)
                         for v, mark in zip(row, marks, strict=True)])
    return buffer.getvalue().encode()


def _curves_bytes(curves: pd.DataFrame | None) -> bytes:
    columns = ["run_id", "epoch", "metric", "value"]
    if curves is None:
        return _csv_bytes(pd.DataFrame(columns=columns))
    table = curves.rename(columns={"step": "epoch"})[columns]
    return _csv_bytes(table.sort_values(["run_id", "metric", "epoch"], kind="stable"))


def _column(values: list[str], dtype: str) -> pd.Series:
    """A runs.csv column typed back as the frame had it."""
    if dtype.startswith("datetime64"):
        # ISO8601, not a format inferred from the first value: archives written before every
        # timestamp got microseconds have both "...:54+00:00" and "...:54.442000+00:00"
        stamps = pd.to_datetime([v or None for v in values], utc=True, format="ISO8601")
        return pd.Series(stamps).astype(dtype)
    if dtype in ("float64", "float32"):
        return pd.Series([float(v) if v else np.nan for v in values], dtype=dtype)
    if dtype in ("bool", "boolean"):
        return pd.Series([None if not v else v == "True" for v in values], dtype=dtype)
    if dtype in ("int64", "Int64"):
        return pd.Series([int(v) if v else None for v in values], dtype=dtype)
    return pd.Series([v if v else None for v in values], dtype=dtype)


# --- load -----------------------------------------------------------------------------------------


def verify_archive(path: str | Path) -> dict:
    """Check an archive against its manifest; return the manifest.

    Raises:
        ArchiveError: the folder or a file is missing, the manifest is unreadable or of another
            format, or a file's sha256 differs from the manifest's (the message names the file).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ArchiveError(f"{folder}: no such archive folder")
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArchiveError(f"{folder}: not an archive (no manifest.json; write one with "
                           "`labbench export STUDY --out DIR`)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArchiveError(f"{folder / 'manifest.json'}: not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") not in READABLE:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise ArchiveError(f"{folder / 'manifest.json'}: format {found!r}, expected {FORMAT!r}")
    listed = manifest.get("files")
    if not isinstance(listed, dict) or not set(_FILES) <= set(listed):
        raise ArchiveError(f"{folder / 'manifest.json'}: its file list lacks one of {list(_FILES)}")
    for name, digest in sorted(listed.items()):
        file = folder / name
        if ".." in Path(name).parts or Path(name).is_absolute():
            raise ArchiveError(f"{folder / 'manifest.json'}: file {name!r} is outside the archive")
        if not file.is_file():
            raise ArchiveError(f"{file}: listed in the manifest but missing")
        actual = hashlib.sha256(file.read_bytes()).hexdigest()
        if actual != digest:
            raise ArchiveError(f"{file}: sha256 {actual[:12]}... differs from the manifest's "
                               f"{str(digest)[:12]}...: the file was changed after export")
    return manifest


def load_archive(path: str | Path) -> pd.DataFrame:
    """The frame :func:`analysis.load_runs` returned at export, read from an archive.

    Same columns, dtypes, values and attrs, plus ``attrs["archive"]`` (the folder, as a one-item
    list), which routes :func:`analysis.load_curves` and the report to the archive's files.

    Raises:
        ArchiveError: see :func:`verify_archive`.
    """
    folder = Path(path)
    verify_archive(folder)
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    types = dict(meta["columns"])
    columns: dict[str, pd.Series] = {}
    for name in ("runs.csv", "runs-meta.csv"):
        with (folder / name).open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        header, body = rows[0], rows[1:]
        if not set(header) <= set(types) or (name == "runs-meta.csv" and "run_id" in columns
                                             and [r[0] for r in body] != list(columns["run_id"])):
            raise ArchiveError(f"{folder / name}: its columns or rows differ from meta.json's "
                               "and runs.csv's")
        settings = set(meta["attrs"].get("param_columns") or ()) if name == "runs.csv" else set()
        columns.update({c: _column([("" if c in settings and r[i] == UNSET else r[i]) for r in body],
                                   types[c]) for i, c in enumerate(header)})
    if set(columns) != set(types):
        raise ArchiveError(f"{folder / 'runs.csv'}: its columns differ from meta.json's")
    frame = pd.DataFrame({c: columns[c] for c, _ in meta["columns"]})  # the frame's order
    frame.attrs = {**meta["attrs"], "archive": [str(folder)]}
    return frame


def archive_curves(frame: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """:func:`analysis.load_curves` for a frame of :func:`load_archive`: the same long frame.

    Raises:
        LookupError: a metric or ``prefix/`` matches no curve of the archive (run-level metrics,
            e.g. ``test_xent``, are in runs.csv only).
    """
    parts = [pd.read_csv(Path(folder) / "curves.csv", dtype={"run_id": "str", "metric": "str"},
                         keep_default_na=False, na_values=[""]) for folder in frame.attrs["archive"]]
    long = pd.concat(parts, ignore_index=True).rename(columns={"epoch": "step"})
    long = long[long["run_id"].isin(set(frame["run_id"]))]
    every = set(long["metric"])
    wanted: list[str] = []
    for name in metrics:
        found = sorted(m for m in every if m.startswith(name)) if name.endswith("/") else (
            [name] if name in every else [])
        if not found:
            raise LookupError(f"load_curves: no curve {name!r} in the archive(s) "
                              f"{', '.join(frame.attrs['archive'])}")
        wanted += found
    long = long[long["metric"].isin(wanted)][["run_id", "metric", "step", "value"]]
    long = long.sort_values(["run_id", "metric", "step"], kind="stable").astype(
        {"step": "int64", "value": "float64"})
    axes = [a for a in frame.attrs.get("axes") or [] if a in frame.columns]
    keys = ["run_id", *[c for c in ("cell", "seed") if c in frame.columns], *axes]
    long = long.merge(frame[list(dict.fromkeys(keys))], on="run_id", how="left")
    long.attrs = dict(frame.attrs)
    return long.reset_index(drop=True)


class _ArchiveArtifacts:
    """The two ``MlflowClient`` calls that read run artifacts (``list_artifacts``, ``get_run``),
    answered from archives' ``artifacts/<run_id>/`` folders, so that
    :func:`analysis._mlflow.read_json_artifact` reads an archive in place."""

    def __init__(self, folders: list[str]):
        self._folders = [Path(f) / "artifacts" for f in folders]

    def _root(self, run_id: str) -> Path:
        return next((f / run_id for f in self._folders if (f / run_id).is_dir()),
                    self._folders[0] / run_id)

    def list_artifacts(self, run_id: str, path: str | None = None) -> list[SimpleNamespace]:
        folder = self._root(run_id) / (path or "")
        if not folder.is_dir():
            return []
        return [SimpleNamespace(path=p.relative_to(self._root(run_id)).as_posix(), is_dir=p.is_dir())
                for p in sorted(folder.iterdir())]

    def get_run(self, run_id: str) -> SimpleNamespace:
        return SimpleNamespace(info=SimpleNamespace(run_id=run_id,
                                                    artifact_uri=self._root(run_id).resolve().as_uri()))


def archive_artifacts(folders: list[str]) -> _ArchiveArtifacts:
    """A stand-in for ``MlflowClient`` that reads the run artifacts of archives, e.g. of a
    :func:`load_archive` frame's ``attrs["archive"]`` (only each series' last epoch is archived,
    e.g. ``bptt/epoch-<e>.json``)."""
    return _ArchiveArtifacts(folders)


def environment_summary(envs) -> pd.DataFrame:
    """Distinct values of each env.json key over runs, and how many runs had each.

    Nested objects become dotted keys (``packages.torch``); lists and numbers are written as JSON.

    Returns:
        Columns ``key, value, runs`` (string, string, int64), sorted by key, then by runs
        (most first), then by value.
    """
    counts: dict[tuple[str, str], int] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict) and value:
            for key in value:
                walk(f"{prefix}.{key}" if prefix else str(key), value[key])
        else:
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            counts[(prefix or "(value)", text)] = counts.get((prefix or "(value)", text), 0) + 1

    for env in envs:
        walk("", env)
    rows = sorted(counts.items(), key=lambda item: (item[0][0], -item[1], item[0][1]))
    table = pd.DataFrame([(k, v, n) for (k, v), n in rows], columns=["key", "value", "runs"])
    return table.astype({"key": "str", "value": "str", "runs": "int64"})
