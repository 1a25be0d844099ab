"""A study's runs from MLflow as one tidy pandas frame: one row per (cell, seed), typed columns.

The names read here are the contract of docs/mlflow-layout.md; nothing of bench/ or ablations/ is
imported, so a study recorded by any labbench version that keeps those names loads the same way.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from collections.abc import Iterable, Sequence

import pandas as pd
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from analysis._conditional import CONDITIONAL_TAG, apply_conditional, possible
from analysis._mlflow import (
    KIND_TAG,
    PARENT_TAG,
    find_parent_run,
    open_client,
    open_experiment,
    read_json_artifact,
    search_all_runs,
)
from analysis._values import (
    cast_strings,
    int_or_none,
    is_missing,
    level_key,
    plain_records,
    sort_key,
)

__all__ = ["ID_COLUMNS", "load_bptt_profiles", "load_curves", "load_runs", "metric_names", "missing_cells"]

logger = logging.getLogger(__name__)

ID_COLUMNS = ("run_id", "study", "cell", "seed", "trial", "status", "start_time", "end_time")
"""The identity columns every frame of :func:`load_runs` starts with."""

_RUN_TAGS = {"diverged_reason": "labbench.diverged_reason"}
"""Run tags read into columns of their own (column -> tag); missing when a run lacks the tag."""
_BPTT_FILE = re.compile(r"bptt/epoch-(\d+)\.json")

_STUDY_TAGS = {
    "objective": "labbench.objective",
    "direction": "labbench.direction",
    "baseline": "labbench.baseline",
    "axes": "labbench.axes",
}


def load_runs(
    study: str, tracking_uri: str, *, parent_run_id: str | None = None, conditional: str = "fold"
) -> pd.DataFrame:
    """Load a study's finished trial runs into one tidy frame, one row per (cell, seed).

    Only ``FINISHED`` child runs of the study's parent run with ``labbench.kind = trial`` become
    rows; FAILED, KILLED and RUNNING ones are left out and listed in ``attrs["excluded_runs"]``.
    Several FINISHED runs of one (cell, seed) (Optuna's GridSampler re-runs cells under concurrent
    workers) keep the one that ended first, ties broken by the smaller run id.

    Args:
        study: the study name (= the MLflow experiment name).
        tracking_uri: the MLflow tracking URI, e.g. ``sqlite:///labbench-runs/mlflow.db``.
        parent_run_id: choose the parent run when an experiment has several (rare).
        conditional: how axes that only some methods vary (``[grid.when.METHOD]``) are read:
            ``"fold"``, each such configuration one level of the method factor (``laq:4``), or
            ``"factor"``, factors of their own, missing where they do not apply (see
            ``analysis._conditional``).

    Returns:
        A frame with columns ``run_id, study, cell, seed, trial, status, start_time, end_time``
        (seed and trial int64, times UTC timestamps), then every param as a typed column (each
        column cast as a whole: int64, or float64 if any value needs it, or bool, else string;
        ``"None"`` is missing and turns int64 into ``Int64`` and bool into ``boolean``), then every
        metric's latest value as a float64 column (named ``metrics.<name>`` when the name is
        already taken by a param, e.g. the per-epoch ``lr``), then ``diverged_reason`` (string:
        the tag ``labbench.diverged_reason``, missing for a run that did not diverge or was
        recorded before the tag existed). ``frame.attrs`` holds: ``study``,
        ``tracking_uri``, ``experiment_id``, ``parent_run_id``, ``objective``, ``direction``,
        ``baseline`` (dict), ``axes`` (list), ``seeds`` and ``seeds_source`` (``"study.json"`` or
        ``"observed"``), ``param_columns``, ``metric_columns`` (metric name -> column),
        ``n_failed``, ``excluded_runs`` (dicts with run_id, status, cell, seed and axis values),
        ``duplicates_dropped``, ``dropped_run_ids``, ``conditional`` (method -> its own axes)
        and ``conditional_as``.

    Raises:
        LookupError: no database, experiment or parent run for ``study`` at ``tracking_uri``.
        ValueError: a study tag that must be JSON (``labbench.baseline``, ``labbench.axes``) is not.

    Example (needs a recorded study, so not run as a doctest)::

        frame = load_runs("bc-degradation", "sqlite:///runs/mlflow.db")
        frame.groupby("method")["test_xent"].mean()
    """
    client = open_client(tracking_uri)
    experiment = open_experiment(client, study, tracking_uri)
    parent = find_parent_run(client, experiment, study, tracking_uri, parent_run_id)
    parent_id = parent.info.run_id
    meta = _study_meta(parent, study, tracking_uri)
    children = search_all_runs(client, experiment.experiment_id, f"tags.{PARENT_TAG} = '{parent_id}'")
    trials = [run for run in children if run.data.tags.get(KIND_TAG) == "trial"]
    records = [_identity(run) for run in trials]
    malformed = [rec["run_id"] for rec in records if rec["cell"] is None or rec["seed"] is None]
    if malformed:
        logger.warning(
            "study %r: %d trial run(s) lack labbench.cell or an integer labbench.seed and are ignored: %s",
            study,
            len(malformed),
            ", ".join(malformed),
        )
    keep = [i for i, rec in enumerate(records) if rec["run_id"] not in set(malformed)]
    trials = [trials[i] for i in keep]
    records = [records[i] for i in keep]

    frame, param_columns, metric_columns = _typed_frame(records, trials)
    axes = [axis for axis in meta["axes"] if axis in frame.columns]
    finished = frame["status"] == "FINISHED"
    excluded = frame.loc[~finished, ["run_id", "status", "cell", "seed", *axes]]
    frame = frame.loc[finished]
    frame, dropped = _drop_duplicates(frame)
    seeds, seeds_source = _study_seeds(client, parent_id, frame)
    if len(excluded):
        logger.warning(
            "study %r: %d run(s) not FINISHED were left out (%s)",
            study,
            len(excluded),
            ", ".join(f"{r.run_id} {r.status}" for r in excluded.itertuples()),
        )
    if dropped:
        logger.info("study %r: dropped %d duplicate run(s) of a cell x seed", study, len(dropped))
    frame = frame.reset_index(drop=True)
    frame.attrs = {
        **meta,
        "parent_run_id": parent_id,
        "experiment_id": experiment.experiment_id,
        "seeds": seeds,
        "seeds_source": seeds_source,
        "param_columns": param_columns,
        "metric_columns": metric_columns,
        "n_failed": int((excluded["status"] == "FAILED").sum()),
        "excluded_runs": plain_records(excluded),
        "duplicates_dropped": len(dropped),
        "dropped_run_ids": dropped,
    }
    return apply_conditional(frame, parent.data.tags.get(CONDITIONAL_TAG), conditional)


def missing_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """The (cell, seed) combinations of the full factorial that have no row in ``frame``.

    The factorial is the product of the values seen for each axis of ``attrs["axes"]`` (in the
    finished runs and in the excluded ones, so a level whose every run failed still counts; a
    param logged as ``None`` is a level of its own)
    times ``attrs["seeds"]`` (the study spec's seeds, else the seeds seen). Nothing is imputed.

    Args:
        frame: a frame from :func:`load_runs`.

    Returns:
        One row per missing combination: the axis columns, ``seed``, ``cell`` (the cell id when
        another seed of the same configuration ran, else missing) and ``reason`` (``"failed"``,
        ``"running"`` etc. when an excluded run covers it, else ``"not run"``). Empty if complete.

    Raises:
        ValueError: ``attrs["axes"]`` is absent or names a column the frame lacks.
    """
    axes = frame.attrs.get("axes")
    if not axes:
        raise ValueError("missing_cells: frame.attrs['axes'] is empty or absent (not a study frame)")
    absent = [axis for axis in axes if axis not in frame.columns]
    if absent:
        raise ValueError(f"missing_cells: axis column(s) {absent} not in the frame")
    excluded = frame.attrs.get("excluded_runs") or []
    # a missing axis value (param "None") is a level of its own, keyed as None
    configs = [tuple(level_key(v) for v in row) for row in frame[axes].itertuples(index=False)]
    levels = [
        sorted(
            {c[i] for c in configs} | {level_key(r[axis]) for r in excluded if not is_missing(r.get(axis))},
            key=sort_key,
        )
        for i, axis in enumerate(axes)
    ]
    seeds = list(frame.attrs.get("seeds") or sorted(frame["seed"].unique()))
    present = {(*c, s) for c, s in zip(configs, frame["seed"], strict=True)}
    cell_of = dict(zip(configs, frame["cell"], strict=True))
    reason_of = {
        (*(level_key(rec.get(axis)) for axis in axes), rec["seed"]): rec["status"].lower() for rec in excluded
    }
    when = frame.attrs.get("conditional") if frame.attrs.get("conditional_as") == "factor" else None
    rows = []
    for combo in itertools.product(*levels, seeds):
        if combo in present or (when and not possible(dict(zip(axes, combo[:-1], strict=True)), when)):
            continue
        rows.append(
            {
                **dict(zip(axes, combo[:-1], strict=True)),
                "seed": combo[-1],
                "cell": cell_of.get(combo[:-1]),
                "reason": reason_of.get(combo, "not run"),
            }
        )
    missing = pd.DataFrame(rows, columns=[*axes, "seed", "cell", "reason"])
    for axis in axes:
        missing[axis] = missing[axis].astype(frame[axis].dtype)
    missing["seed"] = missing["seed"].astype("int64")
    return missing


def metric_names(frame: pd.DataFrame, prefix: str = "") -> list[str]:
    """Sorted metric names of a :func:`load_runs` frame that start with ``prefix``.

    Args:
        frame: a frame from :func:`load_runs`.
        prefix: e.g. ``"grad_norm/"``; empty for all.

    Returns:
        The names (not the column names) of the metrics at least one row has a value for.
    """
    columns = frame.attrs.get("metric_columns") or {}
    return sorted(
        name
        for name, column in columns.items()
        if name.startswith(prefix) and column in frame.columns and frame[column].notna().any()
    )


def load_curves(
    source: pd.DataFrame | Iterable[str],
    metrics: str | Sequence[str],
    tracking_uri: str | None = None,
) -> pd.DataFrame:
    """Per-step metric histories (``MlflowClient.get_metric_history``) as one long frame.

    Args:
        source: a frame from :func:`load_runs` (its identity and axis columns are joined on, and
            its attrs carried over) or an iterable of run ids.
        metrics: metric names; a name ending in ``/`` (``"grad_norm/"``) selects every metric with
            that prefix present in the runs.
        tracking_uri: defaults to ``source.attrs["tracking_uri"]`` for a frame.

    Returns:
        Columns ``run_id, metric, step, value`` (step int64, value float64), then for a frame
        source ``cell, seed`` and the axis columns. Sorted by run_id, metric, step. When a step was
        logged twice, the value logged last is kept.

    Raises:
        ValueError: no tracking URI, or an empty metric list.
        LookupError: a metric name or prefix matches no metric of the runs.
    """
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    if not names:
        raise ValueError("load_curves: no metrics given")
    frame = source if isinstance(source, pd.DataFrame) else None
    if frame is not None and frame.attrs.get("archive"):  # a frame of analysis.load_archive
        from analysis.archive import archive_curves

        return archive_curves(frame, names)
    if frame is not None:
        tracking_uri = tracking_uri or frame.attrs.get("tracking_uri")
    if not tracking_uri:
        raise ValueError("load_curves: no tracking_uri given and the source frame has none")
    client = open_client(tracking_uri)
    if frame is not None:
        columns = {m: c for m, c in (frame.attrs.get("metric_columns") or {}).items() if c in frame.columns}
        has = frame[list(columns.values())].notna().to_numpy()
        available = {
            run_id: {m for j, m in enumerate(columns) if has[i, j]}
            for i, run_id in enumerate(frame["run_id"])
        }
    else:
        available = {rid: set(client.get_run(rid).data.metrics) for rid in source}
    every = set().union(*available.values()) if available else set()
    wanted = _expand(names, every, tracking_uri)
    rows = []
    for run_id, has in available.items():
        for name in wanted:
            if name not in has:
                continue
            for m in client.get_metric_history(run_id, name):
                rows.append((run_id, name, int(m.step), float(m.value), m.timestamp))
    long = pd.DataFrame(rows, columns=["run_id", "metric", "step", "value", "timestamp"])
    long = (
        long.sort_values(["run_id", "metric", "step", "timestamp"], kind="stable")
        .drop_duplicates(["run_id", "metric", "step"], keep="last")
        .drop(columns="timestamp")
        .astype({"step": "int64", "value": "float64"})
    )
    if frame is not None:
        axes = [a for a in frame.attrs.get("axes") or [] if a in frame.columns]
        keys = ["run_id", *[c for c in ("cell", "seed") if c in frame.columns], *axes]
        long = long.merge(frame[list(dict.fromkeys(keys))], on="run_id", how="left")
        long.attrs = dict(frame.attrs)
    return long.reset_index(drop=True)


def load_bptt_profiles(frame: pd.DataFrame, epoch: int | None = None) -> pd.DataFrame:
    """The gradient-through-time profiles (artifacts ``bptt/epoch-<e>.json``) of a study's runs.

    Each artifact holds, for one epoch, ||d L_T / d h_t|| of the top LSTM layer for t = 1..T
    (L_T: the last time step's loss on a fixed held-out batch, no clipping) and their summary
    ``bptt_growth`` (docs/mlflow-layout.md).

    Args:
        frame: a frame from :func:`load_runs`.
        epoch: the epoch to read; None reads each run's last profiled epoch.

    Returns:
        Long format, one row per run and time step: ``run_id, epoch, layer, t, grad_norm,
        bptt_growth`` (t and epoch int64), then ``cell, seed`` and the axis columns. Runs without
        a profile (not recurrent, or recorded before profiles existed) have no rows and are listed
        in ``attrs["without_profile"]``; the frame's attrs are carried over otherwise.

    Raises:
        ValueError: no tracking URI in ``frame.attrs``, or an artifact lacks a key or its ``t``
            and ``grad_norm`` differ in length (the message names run and file).
    """
    tracking_uri = frame.attrs.get("tracking_uri")
    if not tracking_uri:
        raise ValueError("load_bptt_profiles: the frame has no attrs['tracking_uri']")
    if frame.attrs.get("archive"):  # its artifacts/ folder answers the same two client calls
        from analysis.archive import archive_artifacts

        client = archive_artifacts(frame.attrs["archive"])
    else:
        client = open_client(tracking_uri)
    rows, without = [], []
    for run_id in frame["run_id"]:
        try:
            listed = [info.path for info in client.list_artifacts(run_id, "bptt")]
        except (MlflowException, OSError) as err:
            logger.warning("run %s: cannot list bptt/ artifacts (%s)", run_id, err)
            listed = []
        epochs = sorted(int(m.group(1)) for p in listed if (m := _BPTT_FILE.fullmatch(p)))
        chosen = epoch if epoch is not None else (epochs[-1] if epochs else None)
        if chosen is None or chosen not in epochs:
            without.append(run_id)
            continue
        name = f"bptt/epoch-{chosen}.json"
        profile = read_json_artifact(client, run_id, name)
        keys = profile if isinstance(profile, dict) else {}
        missing = [k for k in ("t", "grad_norm", "bptt_growth") if k not in keys]
        if missing or len(profile["t"]) != len(profile["grad_norm"]):
            raise ValueError(
                f"run {run_id}: artifact {name} lacks {missing}" if missing
                else f"run {run_id}: artifact {name} has {len(profile['t'])} t values and "
                f"{len(profile['grad_norm'])} grad_norm values"
            )
        for t, norm in zip(profile["t"], profile["grad_norm"], strict=True):
            rows.append((run_id, chosen, profile.get("layer"), int(t), float(norm),
                         float(profile["bptt_growth"])))  # fmt: skip
    long = pd.DataFrame(rows, columns=["run_id", "epoch", "layer", "t", "grad_norm", "bptt_growth"])
    long = long.astype({"epoch": "int64", "t": "int64", "grad_norm": "float64", "bptt_growth": "float64"})
    axes = [a for a in frame.attrs.get("axes") or [] if a in frame.columns]
    keys = ["run_id", *[c for c in ("cell", "seed") if c in frame.columns], *axes]
    long = long.merge(frame[list(dict.fromkeys(keys))], on="run_id", how="left")
    long.attrs = {**frame.attrs, "without_profile": without}
    return long


# --- helpers -------------------------------------------------------------------------------------


def _study_meta(parent: Run, study: str, tracking_uri: str) -> dict:
    """Objective, direction, baseline and axes from the parent run's tags."""
    tags = parent.data.tags
    meta = {"study": study, "tracking_uri": tracking_uri}
    for key, tag in _STUDY_TAGS.items():
        raw = tags.get(tag)
        if raw is None:
            logger.warning("study %r: parent run %s has no tag %s", study, parent.info.run_id, tag)
        if key in ("baseline", "axes"):
            try:
                value = json.loads(raw) if raw is not None else None
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"study {study!r}: tag {tag} of parent run {parent.info.run_id} is not JSON: "
                    f"{raw!r} ({err})"
                ) from err
            meta[key] = value if value is not None else ({} if key == "baseline" else [])
        else:
            meta[key] = raw
    return meta


def _identity(run: Run) -> dict:
    """The identity columns of one run; cell/seed None when the run lacks them."""
    tags = run.data.tags
    return {
        "run_id": run.info.run_id,
        "study": tags.get("labbench.study"),
        "cell": tags.get("labbench.cell"),
        "seed": int_or_none(tags.get("labbench.seed")),
        "trial": int_or_none(tags.get("labbench.trial")),
        "status": run.info.status,
        "start_time": run.info.start_time,
        "end_time": run.info.end_time,
    }


def _typed_frame(records: list[dict], runs: list[Run]) -> tuple[pd.DataFrame, list[str], dict[str, str]]:
    """Identity, typed param and float metric columns; also the param names and metric columns."""
    frame = pd.DataFrame(records, columns=list(ID_COLUMNS))
    frame["seed"] = frame["seed"].astype("int64")
    frame["trial"] = frame["trial"].astype("Int64")
    if not frame["trial"].isna().any():
        frame["trial"] = frame["trial"].astype("int64")
    for col in ("start_time", "end_time"):
        frame[col] = pd.to_datetime(frame[col], unit="ms", utc=True)
    param_names = sorted({k for run in runs for k in run.data.params} - set(ID_COLUMNS))
    columns = {name: cast_strings([run.data.params.get(name) for run in runs]) for name in param_names}
    for run, seed in zip(runs, frame["seed"], strict=True):
        logged = int_or_none(run.data.params.get("seed"))
        if logged is not None and logged != seed:
            logger.warning("run %s: param seed=%s but tag labbench.seed=%s", run.info.run_id, logged, seed)
    metric_cols = {}
    for name in sorted({k for run in runs for k in run.data.metrics}):
        column = f"metrics.{name}" if name in columns or name in ID_COLUMNS else name
        metric_cols[name] = column
        columns[column] = pd.Series(
            [run.data.metrics.get(name, float("nan")) for run in runs], dtype="float64"
        )
    for column, tag in _RUN_TAGS.items():
        if column not in columns:
            columns[column] = pd.Series([run.data.tags.get(tag) for run in runs], dtype="str")
    if columns:
        frame = pd.concat([frame, pd.DataFrame(columns)], axis=1)
    return frame, param_names, metric_cols


def _drop_duplicates(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Keep, per (cell, seed), the run that ended first (ties: smaller run id)."""
    ordered = frame.sort_values(["cell", "seed", "end_time", "run_id"], kind="stable")
    dup = ordered.duplicated(["cell", "seed"], keep="first")
    kept = ordered.loc[~dup].sort_values(["cell", "seed"], kind="stable")
    return kept, sorted(ordered.loc[dup, "run_id"])


def _study_seeds(client, parent_id: str, frame: pd.DataFrame) -> tuple[list[int], str]:
    """The spec's seed list from the parent's study.json, else the seeds seen in the frame."""
    spec = read_json_artifact(client, parent_id, "study.json")
    if isinstance(spec, dict):
        for holder in (spec, spec.get("study")):
            if isinstance(holder, dict) and isinstance(holder.get("seeds"), list):
                return [int(s) for s in holder["seeds"]], "study.json"
    return sorted(int(s) for s in frame["seed"].unique()), "observed"


def _expand(names: list[str], every: set[str], tracking_uri: str) -> list[str]:
    """Resolve exact names and ``prefix/`` selections against the metrics the runs have."""
    wanted: list[str] = []
    for name in names:
        if name.endswith("/"):
            found = sorted(m for m in every if m.startswith(name))
            if not found:
                raise LookupError(
                    f"load_curves: no metric starting with {name!r} in these runs "
                    f"(tracking URI {tracking_uri!r})"
                )
            wanted.extend(found)
        elif name in every:
            wanted.append(name)
        else:
            raise LookupError(
                f"load_curves: metric {name!r} is in none of these runs (tracking URI "
                f"{tracking_uri!r}); they have {sorted(every)}"
            )
    return list(dict.fromkeys(wanted))
