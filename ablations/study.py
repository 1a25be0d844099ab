"""A study's records: the Optuna study and the MLflow experiment + parent run, made exactly once.

`create_or_resume` (the launcher) creates the Optuna study, stores the resolved spec and the MLflow
coordinates in its user attributes, and creates the experiment and the parent run: each exactly
once, before any worker starts (two workers initialising a fresh MLflow database at the same moment
can break it for good: docs/harness.md, "Several processes, several machines"). Launching the same
study file again resumes it; launching a different spec under an existing name is refused.
`load_handle` (workers, ``status``, ``repair``) reads those attributes back and rebuilds the spec
from them, so every worker runs the same grid in the same order (the GridSampler's cells depend on
it).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ablations.spec import StudyError, StudySpec, spec_from_dict
from ablations.storage import Heartbeat, Location, masked, open_storage

__all__ = ["StudyConflict", "StudyHandle", "StudyNotFound", "create_or_resume", "load_handle",
           "mlflow_client", "optuna_study"]

ATTR_SPEC = "labbench.spec"
ATTR_CELLS = "labbench.cells_sha256"
ATTR_PARENT = "labbench.parent_run_id"
ATTR_EXPERIMENT = "labbench.experiment_id"
ATTR_TRACKING = "labbench.tracking_uri"
ATTR_HEARTBEAT = "labbench.heartbeat"


class StudyNotFound(LookupError):
    """No study of that name in the storage (bad input: exit status 2)."""


class StudyConflict(ValueError):
    """The name is taken by a different study (bad input: exit status 2)."""


@dataclass(frozen=True)
class StudyHandle:
    """Everything a worker needs: the spec, where it lives, and its MLflow parent run."""

    spec: StudySpec
    location: Location
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    heartbeat: Heartbeat

    @property
    def name(self) -> str:
        return self.spec.name


def mlflow_client(tracking_uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def cells_digest(spec: StudySpec) -> str:
    """A hash of every run's cell id: a worker whose labbench resolves configs differently (another
    version, other defaults) would record other cells, so it must refuse to join."""
    if spec.mode == "grid":
        ids = [spec.config(cell, spec.seeds[0]).cell_id() for cell in spec.cells()]
    else:  # a search's configurations are sampled; check one
        first = {name: r.candidates()[0] for name, r in spec.search.items()}
        ids = [spec.config(first, spec.seeds[0]).cell_id()]
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()


def optuna_study(handle: StudyHandle, *, heartbeat: bool = False) -> Any:
    """The Optuna study with the sampler every process must share (grid: GridSampler with the
    spec's value order and seed 0, no pruning; search: TPE with median pruning)."""
    import optuna

    storage = open_storage(handle.location, heartbeat=handle.heartbeat
                           if heartbeat and handle.location.heartbeat_capable else None)
    if handle.spec.mode == "grid":
        sampler: Any = optuna.samplers.GridSampler(handle.spec.search_space(), seed=0)
        pruner: Any = optuna.pruners.NopPruner()
    else:
        sampler = optuna.samplers.TPESampler()
        pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    return optuna.load_study(study_name=handle.name, storage=storage, sampler=sampler,
                             pruner=pruner)


def create_or_resume(spec: StudySpec, location: Location, heartbeat: Heartbeat,
                     notes: list[str] | None = None) -> tuple[StudyHandle, bool]:
    """Create the study's records, or find them when the same spec was launched before, or grow
    the study when the spec adds seeds or axis values to it (`ablations.extend`).

    Args:
        notes: receives a line for each thing done besides creating or resuming (growth).

    Returns:
        The handle, and whether the study was created now.

    Raises:
        StudyConflict: the name holds a spec that differs other than by growth, or runs of it
            are running while it would grow, or an MLflow experiment of that name already has
            a parent run recorded with another Optuna storage, or was deleted.
    """
    import optuna

    from ablations.extend import recover

    notes = [] if notes is None else notes
    tracking_uri = location.tracking_uri or location.default_tracking_uri
    storage = open_storage(location)
    mended = recover(storage, spec.name)
    if mended:
        notes.append(mended)
    created = False
    if _study_id(storage, spec.name) is None:
        _refuse_orphan_experiment(spec.name, tracking_uri)
        try:
            study = optuna.create_study(study_name=spec.name, storage=storage,
                                        direction=spec.direction)
            created = True
            study.set_user_attr(ATTR_SPEC, spec.to_dict())
            study.set_user_attr(ATTR_CELLS, cells_digest(spec))
            study.set_user_attr(ATTR_HEARTBEAT, heartbeat.to_dict())
            study.set_user_attr(ATTR_TRACKING, tracking_uri)
            if spec.when:  # conditional cells are no product the GridSampler could hand out
                from ablations.state import queue_slots

                queue_slots(study, spec)
        except optuna.exceptions.DuplicatedStudyError:  # another launcher won the race
            _wait_for(storage, spec.name, ATTR_TRACKING)
    study_id = _study_id(storage, spec.name)
    attrs = storage.get_study_user_attrs(study_id)
    added = _growth(spec, attrs.get(ATTR_SPEC), location)
    if ATTR_PARENT not in attrs:
        if not created:  # the launcher that created it may still be making the parent run
            attrs = _wait_for(storage, spec.name, ATTR_PARENT, timeout_s=20) or attrs
        if ATTR_PARENT not in attrs:
            tracking_uri = attrs.get(ATTR_TRACKING, tracking_uri)
            experiment_id, parent = _create_parent_run(spec, tracking_uri, location)
            storage.set_study_user_attr(study_id, ATTR_EXPERIMENT, experiment_id)
            storage.set_study_user_attr(study_id, ATTR_PARENT, parent)
    if added:
        notes.append(_grow(spec, location, added))
    handle = load_handle(spec.name, location)
    # the stored spec names the storage as its source; keep the file this one came from (hints)
    return replace(handle, spec=replace(handle.spec, source=spec.source)), created


def load_handle(name: str, location: Location) -> StudyHandle:
    """Read a study's spec and MLflow coordinates back from its Optuna storage.

    Raises:
        StudyNotFound: no such study (the message lists those in the storage).
        StudyError: the stored spec does not validate with this labbench (another version).
    """
    if location.kind == "journal" and not Path(location.storage_url).is_file():
        raise StudyNotFound(f"no study {name!r}: there is no Optuna journal at "
                            f"{location.storage_url} (wrong --root?)")
    storage = open_storage(location)
    study_id = _study_id(storage, name)
    if study_id is None:
        names = sorted(s.study_name for s in storage.get_all_studies())
        raise StudyNotFound(f"no study {name!r} in {masked(location.storage_url)}"
                            + (f"; studies there: {', '.join(names)}" if names else
                               " (it holds no study; create one with `labbench grid STUDY.toml`)"))
    attrs = storage.get_study_user_attrs(study_id)
    if ATTR_PARENT not in attrs:
        raise StudyNotFound(f"study {name!r} in {masked(location.storage_url)} is not "
                            "initialised yet (its launcher has not created the MLflow parent run)")
    where = f"study {name!r} stored in {masked(location.storage_url)}"
    spec = spec_from_dict(attrs[ATTR_SPEC], where=where)
    if attrs.get(ATTR_CELLS) != cells_digest(spec):
        raise StudyError(where, "", "this labbench resolves the study's runs to other cell ids "
                         "than the one that created it (different version or defaults); "
                         "install the same labbench version on every worker")
    return StudyHandle(spec=spec, location=location,
                       tracking_uri=location.tracking_uri or attrs[ATTR_TRACKING],
                       experiment_id=attrs[ATTR_EXPERIMENT], parent_run_id=attrs[ATTR_PARENT],
                       heartbeat=Heartbeat(**attrs.get(ATTR_HEARTBEAT, {})))


def _study_id(storage: Any, name: str) -> int | None:
    try:
        return storage.get_study_id_from_name(name)
    except KeyError:
        return None


def _wait_for(storage: Any, name: str, attr: str, timeout_s: float = 30) -> dict | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        study_id = _study_id(storage, name)
        if study_id is not None:
            attrs = storage.get_study_user_attrs(study_id)
            if attr in attrs:
                return attrs
        time.sleep(0.5)
    return None


def _growth(spec: StudySpec, stored: Any, location: Location) -> list[str]:
    """What ``spec`` adds to the stored study; a change other than growth is refused."""
    from ablations.extend import growth

    if stored is None:
        return []
    old = spec_from_dict(stored, where=f"study {spec.name!r} stored in "
                         f"{masked(location.storage_url)}")
    added, changed = growth(old, spec)
    if changed:
        raise StudyConflict(
            f"{spec.source}: study {spec.name!r} already exists in {masked(location.storage_url)}"
            " and this file changes it in a way a study cannot grow (a study grows only by more "
            "seeds or more values on an axis; runs already made must stay valid):\n  "
            + "\n  ".join(changed)
            + f"\nto run this file as a new study, give it another [study].name (e.g. "
            f"'{spec.name}-2'), or use another --root/--storage")
    return added


def _grow(spec: StudySpec, location: Location, added: list[str]) -> str:
    """Grow the study to ``spec`` (`ablations.extend.grow`) once no run of it is running."""
    import optuna

    from ablations.extend import grow
    from ablations.state import repair, stale_trials

    storage = open_storage(location)
    attrs = storage.get_study_user_attrs(_study_id(storage, spec.name))
    study = optuna.load_study(study_name=spec.name, storage=storage)
    client = mlflow_client(location.tracking_uri or attrs[ATTR_TRACKING])
    repair(study, client, stale_trials(study), max_retry=None)  # workers that are gone
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    if running:
        raise StudyConflict(
            f"{spec.source}: study {spec.name!r} would grow ({'; '.join(added)}), but "
            f"{len(running)} of its runs are running (trials "
            f"{', '.join(str(t.number) for t in running[:10])}): let its workers finish, or stop "
            f"them and run `labbench repair {spec.name}`, then launch again")
    new_attrs = {**attrs, ATTR_SPEC: spec.to_dict(), ATTR_CELLS: cells_digest(spec)}
    queued = grow(study, spec, client, attrs[ATTR_PARENT], new_attrs)
    return f"grown ({'; '.join(added)}): {queued} new run(s) queued"


def _refuse_orphan_experiment(name: str, tracking_uri: str) -> None:
    """A new Optuna study must not add a second parent run to an existing study experiment."""
    client = mlflow_client(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return
    if experiment.lifecycle_stage != "active":
        raise StudyConflict(f"the MLflow experiment {name!r} at {masked(tracking_uri)} is deleted; "
                            "restore it (mlflow experiments restore) or choose another name")
    parents = client.search_runs([experiment.experiment_id], "tags.`labbench.kind` = 'study'",
                                 max_results=1)
    if parents:
        raise StudyConflict(f"the MLflow experiment {name!r} at {masked(tracking_uri)} already "
                            f"holds study runs (parent {parents[0].info.run_id}) recorded with "
                            "another Optuna storage; choose another [study].name or delete that "
                            "experiment")


def _create_parent_run(spec: StudySpec, tracking_uri: str, location: Location
                       ) -> tuple[str, str]:
    from ablations.extend import conditional_tag
    from bench.record import ensure_experiment, env_info, git_info

    client = mlflow_client(tracking_uri)
    experiment_id = ensure_experiment(client, spec.name, tracking_uri)
    git = git_info()
    tags = {"labbench.kind": "study", "labbench.study": spec.name,
            "labbench.objective": spec.objective, "labbench.direction": spec.direction,
            "labbench.baseline": json.dumps(spec.baseline), "labbench.axes": json.dumps(spec.axes),
            "labbench.mode": spec.mode, "labbench.storage": masked(location.storage_url),
            **({"labbench.conditional": conditional_tag(spec)} if spec.when else {}),
            "labbench.git_commit": git["git_commit"], "labbench.git_dirty": git["git_dirty"]}
    run = client.create_run(experiment_id, run_name=spec.name, tags=tags)
    run_id = run.info.run_id
    try:
        client.log_dict(run_id, spec.to_dict(), "study.json")
        client.log_dict(run_id, env_info(), "env.json")
    finally:  # the parent is the study's record, never left RUNNING while workers come and go
        client.set_terminated(run_id, "FINISHED")
    return experiment_id, run_id

