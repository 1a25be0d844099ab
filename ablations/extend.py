"""Growing a study: its file launched again with more seeds or more values on an axis.

Only growth is allowed. `growth` compares the stored spec with the file: new seeds, new values on
an existing axis (conditional ones included), and new methods with their own ``[grid.when.*]``
axes are growth; anything else (a change to ``[base]``, the objective, the direction, the
baseline, an axis added or removed, a value removed) would change runs already made, and is
refused with the list of changes and how to start a new study instead.

Why the Optuna study is rewritten. Optuna fixes a parameter's distribution at its first trial:
every storage refuses a later trial whose categorical choices differ ("CategoricalDistribution
does not support dynamic value space"), and the GridSampler matches trials to cells by comparing
its whole search space, so a grown axis (seeds are an axis too) can neither be suggested nor be
matched with the trials already run. `grow` therefore copies every trial into a study of the same
name whose parameters carry the grown distributions (same numbers, states, values, attributes
and times; the GridSampler's ``grid_id`` of the old space dropped), then queues one trial per
new (cell, seed) with its parameters set, so workers run exactly those. The study's user
attributes, and with them the MLflow experiment and parent run, are kept; the parent's
``study.json`` and axis tags are brought up to date.

The rewrite is made safe against a crash: the old study is first copied to a backup study
(``~backup~NAME``, a name no study file can have), the grown study is marked complete last, and
`recover` (run before every launch) finishes or undoes a rewrite that was cut short.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from ablations._fields import same_value
from ablations.spec import StudySpec

__all__ = ["BACKUP_PREFIX", "grow", "growth", "recover"]

BACKUP_PREFIX = "~backup~"
ATTR_GROWN = "labbench.grown_from"


def growth(old: StudySpec, new: StudySpec) -> tuple[list[str], list[str]]:
    """What the file ``new`` adds to the stored study ``old``, and what it changes.

    Returns:
        (added, changed): ``added`` lists the growth (``"study.seeds: + 2, 3"``), ``changed``
        every change that is not growth (``"base.hidden: 16 -> 32"``). Both empty: same study.
    """
    a, b = old.to_dict(), new.to_dict()
    added: list[str] = []
    changed: list[str] = []
    sa, sb = a["study"], b["study"]
    for key in sorted(set(sa) | set(sb)):
        if key in ("description", "seeds"):
            continue
        if sa.get(key) != sb.get(key):
            changed.append(f"study.{key}: {_show(sa.get(key))} -> {_show(sb.get(key))}")
    _values("study.seeds", sa["seeds"], sb["seeds"], added, changed)
    for key in sorted(set(a["base"]) | set(b["base"])):
        if key not in b["base"]:
            changed.append(f"base.{key}: removed (was {_show(a['base'][key])})")
        elif key not in a["base"]:
            changed.append(f"base.{key}: added ({_show(b['base'][key])})")
        elif not same_value(a["base"][key], b["base"][key]):
            changed.append(f"base.{key}: {_show(a['base'][key])} -> {_show(b['base'][key])}")
    if old.mode != "grid" or new.mode != "grid":
        if a.get("search") != b.get("search"):
            changed.append("search: the ranges changed (a search study cannot grow)")
        if added:
            changed.append("study.seeds: more seeds (a search study cannot grow)")
        return [], changed
    for axis in [*old.grid, *(x for x in new.grid if x not in old.grid)]:
        if axis not in new.grid:
            changed.append(f"grid.{axis}: axis removed")
        elif axis not in old.grid:
            changed.append(f"grid.{axis}: axis added (it would change every existing cell)")
        else:
            _values(f"grid.{axis}", old.grid[axis], new.grid[axis], added, changed)
    old_methods = old.grid.get("method", ())
    for method in [*old.when, *(m for m in new.when if m not in old.when)]:
        key = f"grid.when.{method}"
        was, now = old.when.get(method), new.when.get(method)
        if now is None:
            changed.append(f"{key}: removed")
        elif was is None:
            if any(same_value(method, m) for m in old_methods):
                changed.append(f"{key}: conditional axes added to an existing method (its cells "
                               "would change)")
        else:
            for axis in [*was, *(x for x in now if x not in was)]:
                if axis not in now:
                    changed.append(f"{key}.{axis}: axis removed")
                elif axis not in was:
                    changed.append(f"{key}.{axis}: axis added (its cells would change)")
                else:
                    _values(f"{key}.{axis}", was[axis], now[axis], added, changed)
    return added, changed


def grow(study: Any, new: StudySpec, client: Any, parent_run_id: str,
         attrs: dict[str, Any]) -> int:
    """Rewrite ``study`` for the grown spec ``new`` and queue its new runs (see the module doc).

    Args:
        study: the Optuna study (no trial of it may be RUNNING).
        new: the grown spec.
        client: an MlflowClient of the study's tracking URI.
        parent_run_id: the study's MLflow parent run.
        attrs: the study user attributes to store (the new spec and cells digest included).

    Returns:
        The number of runs queued.
    """
    import optuna

    from ablations.state import queue_slots

    storage = study._storage
    name = study.study_name
    backup = BACKUP_PREFIX + name
    if _exists(storage, backup):
        optuna.delete_study(study_name=backup, storage=storage)
    optuna.copy_study(from_study_name=name, from_storage=storage, to_storage=storage,
                      to_study_name=backup)
    trials = [_regrown(t, new) for t in study.get_trials(deepcopy=True)]
    system_attrs = storage.get_study_system_attrs(study._study_id)
    optuna.delete_study(study_name=name, storage=storage)
    grown = optuna.create_study(study_name=name, storage=storage, direction=new.direction)
    for key, value in system_attrs.items():
        storage.set_study_system_attr(grown._study_id, key, value)
    for key, value in attrs.items():
        grown.set_user_attr(key, value)
    grown.add_trials(trials)
    numbers = [t.number for t in grown.get_trials(deepcopy=False)]
    assert numbers == [t.number for t in trials], f"trial numbers changed: {numbers}"
    queued = queue_slots(grown, new)
    grown.set_user_attr(ATTR_GROWN, backup)  # the rewrite is complete
    optuna.delete_study(study_name=backup, storage=storage)
    update_parent_run(client, parent_run_id, new)
    return queued


def recover(storage: Any, name: str) -> str | None:
    """Finish or undo a rewrite of study ``name`` cut short (a backup study is left).

    Returns:
        What was done, or None when there was nothing to mend.
    """
    import optuna

    backup = BACKUP_PREFIX + name
    if not _exists(storage, backup):
        return None
    if _exists(storage, name):
        attrs = storage.get_study_user_attrs(storage.get_study_id_from_name(name))
        if attrs.get(ATTR_GROWN) == backup:  # complete: only the backup was left
            optuna.delete_study(study_name=backup, storage=storage)
            return f"removed the backup of study {name!r} left by a completed rewrite"
        optuna.delete_study(study_name=name, storage=storage)
    optuna.copy_study(from_study_name=backup, from_storage=storage, to_storage=storage,
                      to_study_name=name)
    optuna.delete_study(study_name=backup, storage=storage)
    return f"restored study {name!r} from the backup of an interrupted rewrite"


def update_parent_run(client: Any, parent_run_id: str, spec: StudySpec) -> None:
    """The parent run's record of the spec: ``study.json`` and the tags read by the analysis."""
    client.log_dict(parent_run_id, spec.to_dict(), "study.json")
    client.set_tag(parent_run_id, "labbench.axes", json.dumps(spec.axes))
    if spec.when:
        client.set_tag(parent_run_id, "labbench.conditional", conditional_tag(spec))


def conditional_tag(spec: StudySpec) -> str:
    """The ``labbench.conditional`` tag: method -> the axes only its cells vary (JSON)."""
    return json.dumps({method: list(axes) for method, axes in spec.when.items()})


def _regrown(trial: Any, new: StudySpec) -> Any:
    """A copy of ``trial`` whose parameters carry the grown distributions."""
    from optuna.distributions import CategoricalDistribution

    space = new.search_space()
    out = copy.deepcopy(trial)
    out.distributions = {name: CategoricalDistribution(space[name]) if name in space else dist
                         for name, dist in trial.distributions.items()}
    out.system_attrs = {k: v for k, v in trial.system_attrs.items()
                        if k not in ("grid_id", "search_space")}
    return out


def _values(key: str, was: Any, now: Any, added: list[str], changed: list[str]) -> None:
    gone = [v for v in was if not any(same_value(v, n) for n in now)]
    new = [v for v in now if not any(same_value(v, w) for w in was)]
    if gone:
        changed.append(f"{key}: removed {', '.join(map(_show, gone))}")
    if new:
        added.append(f"{key}: + {', '.join(map(_show, new))}")


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str | dict | list) else repr(value)


def _exists(storage: Any, name: str) -> bool:
    try:
        storage.get_study_id_from_name(name)
    except KeyError:
        return False
    return True
