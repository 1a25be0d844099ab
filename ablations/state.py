"""Where a study stands, and how to mend it: summary, stale trials, re-queueing.

A grid study has one *slot* per cell x seed. A slot is done when one of its trials is COMPLETE;
otherwise it is running, waiting (queued), failed (only FAIL trials) or not started. Trials pruned
as duplicates (`ablations.objective.Objective._skip_duplicate`) belong to no slot.

Re-queueing copies a trial as a WAITING trial with the same parameters and attributes (and the
GridSampler's ``grid_id``), exactly as Optuna's heartbeat retry does, with ``failed_trial`` and
``retry_history`` system attributes: the next worker that asks for a trial runs it.
"""

from __future__ import annotations

import datetime
import socket
import statistics
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from ablations.interrupts import interrupts_deferred
from ablations.objective import close_stale_run, mlflow_run_ids, process_start, slot_params
from ablations.spec import StudySpec

__all__ = ["Summary", "close_orphan_runs", "has_work", "owner_alive", "queue_copy", "queue_slots",
           "repair", "requeue_failed", "slot_key", "stale_trials", "summarize"]

_RANK = {TrialState.COMPLETE: 4, TrialState.RUNNING: 3, TrialState.WAITING: 2, TrialState.FAIL: 1}


def slot_of(trial: FrozenTrial) -> str:
    """The identity of a trial's cell x seed: its parameters and its seed (a user attribute)."""
    return slot_key(slot_params(trial))


def slot_key(params: dict[str, Any]) -> str:
    """The identity of a cell x seed from its values and seed (`StudySpec.slots`)."""
    return repr(sorted(params.items()))


def is_duplicate(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.PRUNED and trial.user_attrs.get("duplicate_of") is not None


def slot_states(trials: list[FrozenTrial]) -> dict[str, tuple[TrialState, FrozenTrial]]:
    """Each slot's best state (COMPLETE > RUNNING > WAITING > FAIL) and its latest such trial."""
    best: dict[str, tuple[TrialState, FrozenTrial]] = {}
    for t in trials:
        if t.state not in _RANK or not t.params:
            continue
        key = slot_of(t)
        if key not in best or (_RANK[t.state], t.number) > (_RANK[best[key][0]], best[key][1].number):
            best[key] = (t.state, t)
    return best


@dataclass
class Summary:
    """Counts for the progress bar and ``labbench status``."""

    total: int
    complete: int = 0
    running: int = 0
    waiting: int = 0
    failed: int = 0
    pruned: int = 0
    duplicates: int = 0
    trials: int = 0
    trial_s: list[float] = field(default_factory=list)
    failures: list[FrozenTrial] = field(default_factory=list)
    running_trials: list[FrozenTrial] = field(default_factory=list)

    @property
    def not_started(self) -> int:
        return max(0, self.total - self.complete - self.running - self.waiting - self.failed)

    @property
    def mean_trial_s(self) -> float | None:
        return statistics.fmean(self.trial_s) if self.trial_s else None


def summarize(study: optuna.Study, spec: StudySpec) -> Summary:
    """Count slots (grid) or trials (search) by state."""
    trials = study.get_trials(deepcopy=False)
    out = Summary(total=spec.n_runs if spec.mode == "grid" else spec.trials or 0, trials=len(trials))
    for t in trials:
        if t.state == TrialState.COMPLETE and t.datetime_start and t.datetime_complete:
            out.trial_s.append((t.datetime_complete - t.datetime_start).total_seconds())
        if t.state == TrialState.RUNNING:
            out.running_trials.append(t)
        if is_duplicate(t):
            out.duplicates += 1
        elif t.state == TrialState.PRUNED:
            out.pruned += 1
    if spec.mode == "grid":
        for state, trial in slot_states(trials).values():
            if state == TrialState.COMPLETE:
                out.complete += 1
            elif state == TrialState.RUNNING:
                out.running += 1
            elif state == TrialState.WAITING:
                out.waiting += 1
            else:
                out.failed += 1
                out.failures.append(trial)
        return out
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    for t in trials:
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and not is_duplicate(t):
            out.complete += 1
        elif t.state == TrialState.RUNNING:
            out.running += 1
        elif t.state == TrialState.WAITING:
            out.waiting += 1
        elif t.state == TrialState.FAIL and t.number not in retried:
            out.failed += 1
            out.failures.append(t)
    return out


def has_work(study: optuna.Study, spec: StudySpec) -> bool:
    """Whether a worker asking for a trial now would get one that needs running: a queued trial,
    a grid cell never drawn, or room left in a search's budget."""
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.WAITING for t in trials):
        return True
    if spec.mode == "grid":  # a slot no trial holds, beyond those drawn but not yet suggested
        taken = {slot_of(t) for t in trials if t.params}
        drawing = sum(1 for t in trials if t.state == TrialState.RUNNING and not t.params)
        free = sum(1 for params in spec.slots() if slot_key(params) not in taken)
        return free > drawing
    return sum(not is_duplicate(t) for t in trials) < (spec.trials or 0)


def owner_alive(trial: FrozenTrial, host: str) -> bool | None:
    """Whether the process running ``trial`` lives: None when it cannot be told from here
    (another host, or the trial has not recorded its owner yet)."""
    owner = trial.user_attrs.get("owner") or {}
    if owner.get("trial") != trial.number or owner.get("host") != host:
        return None
    start = process_start(int(owner["pid"]))
    return start is not None and (owner.get("pid_start") in (None, start))


def stale_trials(study: optuna.Study, *, force: bool = False, stale_after_s: float | None = None,
                 pids: set[int] | None = None) -> list[tuple[FrozenTrial, str]]:
    """RUNNING trials whose worker is gone, with the reason.

    Args:
        force: every RUNNING trial (no worker of the study may be running).
        stale_after_s: also those started more than this many seconds ago, on any host.
        pids: only trials owned by these processes of this host (the launcher, for its dead
            workers).
    """
    host = socket.gethostname()
    now = datetime.datetime.now()
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.user_attrs.get("owner") or {}
        mine = owner.get("trial") == t.number
        if pids is not None:
            if mine and owner.get("host") == host and owner.get("pid") in pids:
                out.append((t, f"its worker (pid {owner['pid']}) died"))
            continue
        alive = owner_alive(t, host)
        age = (now - t.datetime_start).total_seconds() if t.datetime_start else 0.0
        if force:
            out.append((t, "--force"))
        elif alive is False:
            out.append((t, f"its worker (pid {owner['pid']} on {host}) is gone"))
        elif stale_after_s is not None and age > stale_after_s:
            out.append((t, f"running for {age:.0f} s > --stale-after {stale_after_s:g} s"))
    return out


def queue_copy(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a copy of ``trial`` (same parameters, attributes and grid cell) as WAITING."""
    system_attrs: dict[str, Any] = {"failed_trial": trial.number, "retry_history": [],
                                    **trial.system_attrs}
    system_attrs["retry_history"] = [*system_attrs["retry_history"], trial.number]
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        user_attrs=trial.user_attrs, system_attrs=system_attrs))


def queue_slots(study: optuna.Study, spec: StudySpec) -> int:
    """Queue a trial for every (cell, seed) of a grid that no trial holds, its values set.

    Conditional grids are run this way from the start (their cells are no cartesian product the
    GridSampler could hand out) and grown grids for their new runs (`ablations.extend`). The
    cell's values are parameters with the spec's categorical distributions, the seed the user
    attribute ``seed``; ``fixed_params`` tells the GridSampler to leave the trial alone.

    Returns:
        The number of trials queued.
    """
    from optuna.distributions import CategoricalDistribution

    space = {name: CategoricalDistribution(values) for name, values in spec.search_space().items()}
    taken = {slot_of(t) for t in study.get_trials(deepcopy=False) if t.params}
    missing = [slot for slot in spec.slots() if slot_key(slot) not in taken]
    trials = []
    for slot in missing:
        cell = {name: value for name, value in slot.items() if name != "seed"}
        trials.append(optuna.trial.create_trial(
            state=TrialState.WAITING, params=cell,
            distributions={name: space[name] for name in cell},
            user_attrs={"seed": slot["seed"]}, system_attrs={"fixed_params": slot}))
    study.add_trials(trials)
    return len(missing)


def repair(study: optuna.Study, client: Any, stale: list[tuple[FrozenTrial, str]], *,
           max_retry: int | None = None, interrupted: bool = False, requeue: bool = True
           ) -> list[FrozenTrial]:
    """Fail the given stale trials, fail their MLflow runs, and re-queue their slots.

    A slot is re-queued (unless ``requeue`` is False) only when nothing else holds it (no
    COMPLETE, RUNNING or WAITING trial) and, with ``max_retry``, while it has been retried fewer
    times than that. ``interrupted`` records them as interrupted (re-queued on the next launch).

    Returns:
        The trials that were re-queued.
    """
    requeued = []
    for trial, reason in stale:
        with interrupts_deferred():  # Ctrl-C waits until this trial is wholly marked
            again = _fail_stale(study, client, trial, reason, max_retry=max_retry,
                                interrupted=interrupted, requeue=requeue)
        if again is not None:
            requeued.append(again)
    close_orphan_runs(study, client)
    return requeued


def _fail_stale(study: optuna.Study, client: Any, trial: FrozenTrial, reason: str, *,
                max_retry: int | None, interrupted: bool, requeue: bool) -> FrozenTrial | None:
    """Fail one stale trial and its MLflow runs; the trial when its slot was queued again."""
    storage = study._storage
    try:  # attributes first: a finished trial's cannot change
        storage.set_trial_user_attr(trial._trial_id, "stale", reason)
        if interrupted:
            storage.set_trial_user_attr(trial._trial_id, "interrupted", 1)
        if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
            return None
    except UpdateFinishedTrialError:  # it finished meanwhile
        return None
    owner = trial.user_attrs.get("owner") or {}
    if owner.get("trial") == trial.number:
        for run_id in mlflow_run_ids(trial.user_attrs):
            close_stale_run(client, run_id, tag_ended=True)
    trial = storage.get_trial(trial._trial_id)
    history = trial.system_attrs.get("retry_history", [])
    if not requeue or (max_retry is not None and len(history) >= max_retry):
        return None
    state, _ = slot_states(study.get_trials(deepcopy=False)).get(slot_of(trial),
                                                                 (TrialState.FAIL, None))
    if state != TrialState.FAIL:
        return None
    queue_copy(study, trial)
    return trial


def requeue_failed(study: optuna.Study, spec: StudySpec, *, only_interrupted: bool = False
                   ) -> list[FrozenTrial]:
    """Re-queue every failed slot (``retry-failed``), or only those whose last trial failed for
    a reason outside its run (``labbench grid`` on an existing study): Ctrl-C, a full disk, or a
    failure whose reason could not even be recorded."""
    trials = study.get_trials(deepcopy=False)
    if spec.mode == "grid":
        failed = [t for state, t in slot_states(trials).values() if state == TrialState.FAIL]
    else:
        retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
        failed = [t for t in trials if t.state == TrialState.FAIL and t.number not in retried]
    if only_interrupted:
        failed = [t for t in failed if _not_the_runs_fault(t.user_attrs)]
    for trial in failed:
        queue_copy(study, trial)
    return failed


def _not_the_runs_fault(attrs: dict[str, Any]) -> bool:
    return bool(attrs.get("interrupted") or attrs.get("fault")
                or (attrs.get("error") is None and attrs.get("stale") is None))


def close_orphan_runs(study: optuna.Study, client: Any) -> int:
    """Fail MLflow child runs left RUNNING by a trial that is no longer running (a worker
    killed between creating the run and recording its id)."""
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    attrs = study.user_attrs
    experiment, parent = attrs.get("labbench.experiment_id"), attrs.get("labbench.parent_run_id")
    if not experiment or not parent:
        return 0
    runs = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent}' and "
                              "attributes.status = 'RUNNING'", max_results=1000)
    closed = 0
    for run in runs:
        number = run.data.tags.get("labbench.trial")
        if number is not None and int(number) not in running:
            closed += close_stale_run(client, run.info.run_id)
    return closed
