"""One Optuna trial = one labbench run = one MLflow child run (docs/mlflow-layout.md).

`Objective` turns the trial's parameters into a `RunConfig`, opens the child run under the study's
parent, runs the configuration in a forked process (`ablations.isolate`) and returns the
objective metric:

- a run that diverges (``diverged = 1``) is a *result*: the trial is COMPLETE, its MLflow run
  FINISHED with its metrics; a non-finite objective is returned as +inf (minimize) or -inf
  (maximize), which Optuna accepts where it would turn NaN into a failure;
- a run that raises leaves the trial FAIL and its MLflow run FAILED with ``traceback.txt``;
  the worker goes on with the next cell;
- Ctrl-C (or SIGTERM) ends the run at once: the MLflow run is KILLED, the trial FAIL with the
  user attribute ``interrupted``, and a later ``labbench grid`` re-queues it.

The seed is not an Optuna parameter. A grid's GridSampler still enumerates every (cell, seed)
(the seed is one of its axes), but the objective reads the trial's seed from the sampler
(`grid_seed`) instead of suggesting it, and records it as the user attribute ``seed``: so
parameter importance (optuna-dashboard, `optuna.importance`) ranks only the study's axes.

A trial that retries an earlier one (heartbeat, ``repair``, ``retry-failed``) carries the earlier
attempt's ``mlflow_run_id``; if that run is still RUNNING it is marked FAILED first, so analysis
never counts an abandoned run.

Checkpoints: with a ``checkpoint_dir`` (the worker's default: ``<root>/checkpoints/<study>/``),
each run keeps its per-epoch checkpoint outside MLflow in ``<digest>.pt``, one file per slot (cell
x seed, `checkpoint_path`). A trial whose slot has one (its earlier attempt was killed, went
stale or was interrupted) goes on from it, with the user attribute ``resumed_from_epoch``. The
file is deleted when the run is over: it ended (a result, diverged or not), raised on its own,
or was pruned; a run killed, interrupted, or stopped by a full disk keeps it for its retry.

``LABBENCH_RUN_FN=module:function`` replaces `bench.train.run` by another function with its
signature, in every worker. It is a hook for tests and for measuring the harness (a run that does
nothing, a run that raises), not a way to run studies.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import math
import os
import socket
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, Trial, TrialState

from ablations import tracking
from ablations.isolate import RESUMED_TAG, RunFailed, current_child, remove_checkpoint, run_isolated
from ablations.spec import StudySpec
from ablations.storage import disk_full
from bench.record import MlflowRecorder

__all__ = ["RUN_FN_ENV", "Interrupts", "Objective", "checkpoint_path", "close_stale_run", "grid_seed",
           "mlflow_run_ids", "process_start", "resolve_run_fn", "rss_mb", "slot_params", "trial_run",
           "trial_seed"]

RUN_FN_ENV = "LABBENCH_RUN_FN"


def resolve_run_fn() -> Callable[..., Any]:
    """`bench.train.run`, or the ``module:function`` named by ``$LABBENCH_RUN_FN``."""
    target = os.environ.get(RUN_FN_ENV)
    if not target:
        from bench.train import run

        return run
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def process_start(pid: int) -> int | None:
    """A process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == b"Z" else int(fields[19])  # state; field 22 of stat(5)


@dataclass
class Interrupts:
    """Ctrl-C / SIGTERM in a worker: the first signal kills the running run process and stops
    the worker after the trial's bookkeeping; a second one raises at once."""

    requested: int = 0
    in_run: bool = False  # an in-process run is going on (no child to kill)
    # the interrupted trial is being recorded (MLflow run KILLED, trial FAIL): a second signal
    # waits for that to finish instead of raising inside it; a third one still raises
    marking: bool = False

    def handler(self, signum: int, frame: Any) -> None:
        self.requested += 1
        child = current_child()
        if self.marking and self.requested < 3:
            return
        if self.requested > 1 or (child is None and self.in_run):
            raise KeyboardInterrupt
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, 9)


@contextlib.contextmanager
def trial_run(client: Any, experiment_id: str, *, run_name: str, tags: dict[str, str]
              ) -> Iterator[MlflowRecorder]:
    """An MLflow run that is always terminated: FINISHED; FAILED with ``traceback.txt``; KILLED
    on Ctrl-C or when the trial is pruned (tag ``labbench.pruned``)."""
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    run_id = run.info.run_id
    try:
        yield MlflowRecorder(client, run_id)
    except optuna.TrialPruned:
        client.set_tag(run_id, "labbench.pruned", "1")
        client.set_terminated(run_id, "KILLED")
        raise
    except KeyboardInterrupt:
        client.set_terminated(run_id, "KILLED")
        raise
    except BaseException as err:
        text = traceback.format_exc()
        if isinstance(err, RunFailed) and err.child_traceback:
            text = f"{err.child_traceback}\n(in the run process of a labbench worker)\n"
        with contextlib.suppress(Exception):
            client.log_text(run_id, text, "traceback.txt")
        client.set_terminated(run_id, "FAILED")
        raise
    else:
        client.set_terminated(run_id, "FINISHED")


@dataclass
class Objective:
    """The callable handed to ``study.optimize``."""

    spec: StudySpec
    client: Any  # MlflowClient
    experiment_id: str
    parent_run_id: str
    run_fn: Callable[..., Any]
    interrupts: Interrupts = field(default_factory=Interrupts)
    threads: int | None = None
    isolate: bool = True
    host: str = field(default_factory=socket.gethostname)
    checkpoint_dir: Path | None = None  # where runs keep their checkpoints (None: they keep none)

    def __call__(self, trial: Trial) -> float:
        try:
            return self._trial(trial)
        except KeyboardInterrupt:
            self.interrupts.marking = True  # until the worker has seen Optuna record the FAIL
            trial.set_user_attr("interrupted", 1)
            raise
        except optuna.TrialPruned:
            raise
        except Exception as err:
            with contextlib.suppress(Exception):  # a full disk may refuse these: keep `err`
                trial.set_user_attr("error", f"{type(err).__name__}: {err}"[:500])
                if disk_full(err):  # not the run's fault: the next `labbench grid` runs it again
                    trial.set_user_attr("fault", "disk full")
            raise

    def _trial(self, trial: Trial) -> float:
        if self.spec.mode == "grid":
            seed = grid_seed(trial, self.spec.seeds)
            trial.set_user_attr("seed", seed)  # before any parameter: a trial with params has it
            params = self.spec.grid_params(trial.suggest_categorical)  # [grid.when.*] too
            seeds = [seed]
            self._skip_duplicate(trial, seed)
        else:
            params = {name: _suggest(trial, r) for name, r in self.spec.search.items()}
            seeds = list(self.spec.seeds)
        # who runs this trial; owner["trial"] tells it apart from a retry's inherited attributes
        trial.set_user_attr("owner", {"host": self.host, "pid": os.getpid(),
                                      "pid_start": process_start(os.getpid()),
                                      "trial": trial.number})
        self._close_previous_attempt(trial)
        runs: list[str] = []
        values = [self._run_one(trial, params, seed, runs,
                                prune=i == 0 and self.spec.mode == "search")
                  for i, seed in enumerate(seeds)]
        trial.set_user_attr("worker_rss_mb", round(rss_mb(), 1))
        return sum(values) / len(values)

    def _run_one(self, trial: Trial, params: dict[str, Any], seed: int, runs: list[str], *,
                 prune: bool) -> float:
        config = self.spec.config(params, seed)
        cell = config.cell_id()
        trial.set_user_attr("cell", cell)
        tags = {"mlflow.parentRunId": self.parent_run_id, "labbench.kind": "trial",
                "labbench.study": self.spec.name, "labbench.cell": cell,
                "labbench.seed": str(seed), "labbench.trial": str(trial.number),
                "labbench.host": self.host, **tracking.source_tags()}
        name = tracking.run_name(self.spec, params, seed)
        on_metrics = _pruner_tap(trial, self.spec.objective) if prune else None
        checkpoint = (checkpoint_path(self.checkpoint_dir, {**params, "seed": seed})
                      if self.checkpoint_dir is not None else None)
        with trial_run(self.client, self.experiment_id, run_name=name, tags=tags) as recorder:
            runs.append(recorder.run_id)
            trial.set_user_attr("mlflow_run_id", recorder.run_id)
            if len(runs) > 1:  # search mode: one run per seed
                trial.set_user_attr("mlflow_run_ids", runs)
            tap = _ParamsTap(recorder, trial)
            self.interrupts.in_run = True
            try:
                if self.interrupts.requested:  # the signal came while the run was being set up
                    raise KeyboardInterrupt
                metrics = run_isolated(self.run_fn, config, tap, on_metrics=on_metrics,
                                       threads=self.threads, isolate=self.isolate,
                                       checkpoint=checkpoint)
            except BaseException as err:
                if isinstance(err, KeyboardInterrupt) or self.interrupts.requested:
                    self.interrupts.marking = True  # the MLflow run is marked KILLED next
                elif checkpoint is not None and _run_is_over(err):
                    remove_checkpoint(checkpoint)
                if not tap.params_logged:  # a run that failed early still names its cell
                    with contextlib.suppress(Exception):
                        recorder.log_params(config.to_dict())
                if isinstance(err, RunFailed) and self.interrupts.requested:
                    raise KeyboardInterrupt from None
                raise
            finally:
                self.interrupts.in_run = False
            if checkpoint is not None:
                remove_checkpoint(checkpoint)
        diverged = bool(metrics.get("diverged", 0.0))
        trial.set_user_attr("diverged", int(diverged))
        if self.spec.objective not in metrics:
            raise KeyError(f"the run logged no metric {self.spec.objective!r} (it logged: "
                           f"{', '.join(sorted(metrics))})")
        value = metrics[self.spec.objective]
        if not math.isfinite(value):  # NaN would make Optuna fail the trial; a diverged run is a result
            value = math.inf if self.spec.direction == "minimize" else -math.inf
        return value

    def _skip_duplicate(self, trial: Trial, seed: int) -> None:
        """Prune this trial when an earlier trial of the same cell and seed is running or done.

        Concurrent workers can draw one cell twice at the grid's tail (docs/harness.md, "How it works"); the
        earlier trial wins, so every cell x seed runs once.
        """
        mine = {**trial.params, "seed": seed}
        for other in trial.study.get_trials(deepcopy=False,
                                            states=(TrialState.RUNNING, TrialState.COMPLETE)):
            if other.number < trial.number and other.params and slot_params(other) == mine:
                trial.set_user_attr("duplicate_of", other.number)
                raise optuna.TrialPruned(f"cell already taken by trial {other.number}")

    def _close_previous_attempt(self, trial: Trial) -> None:
        """A retry inherits the earlier attempt's attributes: clear the outcome ones, and fail
        the earlier MLflow runs that are still RUNNING."""
        attrs = trial.user_attrs
        for key in ("error", "interrupted", "fault", "stale", "diverged", "mlflow_run_id", "mlflow_run_ids",
                    "resumed_from_epoch"):
            if attrs.get(key) is not None:
                trial.set_user_attr(key, None)
        previous = mlflow_run_ids(attrs)
        if previous:
            trial.set_user_attr("previous_mlflow_run_ids", previous)
        for run_id in previous:
            close_stale_run(self.client, run_id)


def trial_seed(trial: FrozenTrial) -> int | None:
    """The seed a grid trial ran (or runs) with: its user attribute ``seed``, or its parameter in
    studies recorded when the seed was one."""
    seed = trial.params.get("seed", trial.user_attrs.get("seed"))
    return None if seed is None else int(seed)


def checkpoint_path(folder: Path, slot: dict[str, Any]) -> Path:
    """The checkpoint file of a slot (a grid cell's values and ``seed``, as `slot_params`):
    ``folder/<16 hex digits of its SHA-256>.pt``, the same in every worker and every attempt."""
    blob = json.dumps(slot, sort_keys=True, default=str).encode()
    return Path(folder) / f"{hashlib.sha256(blob).hexdigest()[:16]}.pt"


def _run_is_over(err: BaseException) -> bool:
    """Whether a run that raised ``err`` is over for good, so its checkpoint goes: it raised on
    its own (not a kill or a full disk, which its retry goes on from), or it was pruned."""
    if isinstance(err, optuna.TrialPruned):
        return True
    return isinstance(err, RunFailed) and bool(err.child_traceback) and not disk_full(err)


def slot_params(trial: FrozenTrial) -> dict[str, Any]:
    """A grid trial's cell values and seed: what identifies its slot."""
    return {**trial.params, "seed": trial_seed(trial)}


def grid_seed(trial: Trial, seeds: tuple[int, ...] | list[int]) -> int:
    """The seed of this grid trial, without making it an Optuna parameter.

    A queued trial names it (``enqueue_trial`` params, or a re-queued copy's ``seed`` attribute
    or parameter); otherwise the GridSampler's cell for this trial holds it, and the sampler's
    public ``sample_independent`` returns it exactly as it would for ``suggest_categorical``.
    """
    study = trial.study
    frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
    fixed = frozen.system_attrs.get("fixed_params") or {}
    if "seed" in fixed:
        return int(fixed["seed"])
    known = trial_seed(frozen)
    if known is not None:
        return known
    return int(study.sampler.sample_independent(study, frozen, "seed",
                                                CategoricalDistribution(list(seeds))))


def close_stale_run(client: Any, run_id: str, *, tag_ended: bool = False) -> bool:
    """Mark an abandoned MLflow run FAILED (tag ``labbench.stale``) if it is still RUNNING.

    With ``tag_ended``, a run that already ended is tagged too: a worker can die after its run
    ended (FINISHED) and before the study was told, and the tag keeps that run from being taken
    for the slot's recorded one. True when a RUNNING run was closed."""
    try:
        status = client.get_run(run_id).info.status
        if status != "RUNNING":
            if tag_ended:
                client.set_tag(run_id, "labbench.stale", "1")
            return False
        client.set_tag(run_id, "labbench.stale", "1")
        client.set_terminated(run_id, "FAILED")
    except Exception:  # an unreachable tracking server must not fail the retry
        return False
    return True


class _ParamsTap:
    """Passes a run's records on to its recorder, noting whether the params were logged; a run
    resumed from a checkpoint (tag `RESUMED_TAG`) gives its trial ``resumed_from_epoch``."""

    def __init__(self, recorder: MlflowRecorder, trial: Trial | None = None):
        self.recorder = recorder
        self.trial = trial
        self.params_logged = False

    def set_tags(self, tags: dict[str, str]) -> None:
        self.recorder.set_tags(tags)
        if RESUMED_TAG in tags and self.trial is not None:
            self.trial.set_user_attr("resumed_from_epoch", int(tags[RESUMED_TAG]))

    def log_params(self, params: dict[str, Any]) -> None:
        self.recorder.log_params(params)
        self.params_logged = True

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.recorder.log_metrics(metrics, step)

    def log_dict(self, obj: dict[str, Any], name: str) -> None:
        self.recorder.log_dict(obj, name)

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        self.recorder.log_artifact(local_path, artifact_path)

    def keep_checkpoint(self, state: dict[str, Any]) -> None:
        """As `PipeRecorder.keep_checkpoint` (a run in the worker's own process)."""


def mlflow_run_ids(attrs: dict[str, Any]) -> list[str]:
    """The MLflow runs a trial opened (one per seed in search mode), from its user attributes."""
    return list(attrs.get("mlflow_run_ids") or ([attrs["mlflow_run_id"]]
                                                  if attrs.get("mlflow_run_id") else []))


def _suggest(trial: Trial, r: Any) -> Any:
    if r.kind == "categorical":
        return trial.suggest_categorical(r.name, list(r.choices))
    if r.kind == "int":
        return trial.suggest_int(r.name, r.low, r.high, step=r.step or 1)
    if r.kind == "log":
        return trial.suggest_float(r.name, r.low, r.high, log=True)
    return trial.suggest_float(r.name, r.low, r.high, step=r.step)


def _pruner_tap(trial: Trial, objective: str) -> Callable[[dict[str, float], int], None]:
    """Report the validation counterpart of the objective each epoch; prune when told to."""
    metric = "val_" + objective.split("_", 1)[1] if objective.startswith(("test_", "best_val_")) \
        else None

    def tap(metrics: dict[str, float], step: int) -> None:
        if metric in metrics and math.isfinite(metrics[metric]):
            trial.report(metrics[metric], step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {step}")

    return tap


def rss_mb() -> float:
    """Resident memory of this process now, in MiB (0 where /proc is absent)."""
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0
