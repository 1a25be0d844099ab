"""How a study reads in MLflow's UI and in optuna-dashboard (docs/mlflow-layout.md).

- The study's experiment is tagged as model training (``mlflow.experimentKind``), so ``mlflow ui``
  opens it in its "Machine learning" view, not the GenAI one it picks for untagged experiments.
- Every run carries MLflow's source tags (``mlflow.source.name``, ``.type``, ``.git.commit``,
  ``.git.branch``, ``.git.dirty``, ``.git.repoURL`` where the checkout has an ``origin``).
- The parent run carries the spec as params (every axis by its field name, its values joined
  with ", "; every ``[base]`` field; ``seeds``) and the study's outcome as metrics, updated when
  the grid ends: ``runs_total``, ``runs_finished``, ``runs_failed``, ``runs_diverged``,
  ``best/<objective>`` (best single run) and, for grids, ``best_cell/<objective>`` (best mean
  over a cell's seeds). Its status is RUNNING while a launcher runs the grid and FINISHED
  (KILLED when interrupted) with the end time of the grid, so its duration spans the grid.
- Child runs are named by the axes that vary, in full: ``lab h=128 clip=gate:5 s3``.
- The Optuna study's metric is named after the objective (``study.set_metric_names``). The seed
  is not an Optuna parameter (``ablations.objective.grid_seed``), so optuna-dashboard's parameter
  importance never lists it.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

from ablations.spec import StudySpec
from bench.config import RunConfig
from bench.record import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, source_tags

__all__ = ["ALIASES", "EXPERIMENT_KIND", "EXPERIMENT_KIND_TAG", "cell_name", "finish_parent",
           "parent_params", "prepare_study", "run_name", "source_tags", "start_parent",
           "study_outcome", "varying_axes"]

# Short names of common RunConfig fields in run names; other fields keep their own name. The
# method's value stands first, without a name.
ALIASES = {"hidden": "h", "layers": "L", "width": "w", "batch_size": "bs", "weight_decay": "wd",
           "seq_len": "T", "granularity": "gran", "optimizer": "opt", "schedule": "sched",
           "epochs": "ep", "dataset": "data", "fixed_scale": "scale", "ttq_threshold": "ttq",
           "train_limit": "ntrain", "eval_limit": "neval"}

def _value(v: Any, *, sampled: bool = False) -> str:
    if v is None:
        return "none"
    if isinstance(v, float) and sampled:  # a TPE draw: readable digits (the param is exact)
        return f"{v:.4g}"
    return str(v)


def varying_axes(spec: StudySpec) -> list[str]:
    """The axes whose value differs between runs of the study (seed excluded)."""
    if spec.mode == "grid":
        space = spec.search_space()  # conditional axes: the values of every method together
        return [k for k in spec.axes if len(space[k]) > 1]
    return [k for k, r in spec.search.items()
            if not (r.kind == "categorical" and len(r.choices) == 1)]


def cell_name(spec: StudySpec, params: dict[str, Any]) -> str:
    """A cell's name: the method's value, then ``alias=value`` for every other axis that varies
    (``lab h=128 clip=gate:5``). Never cut: the values are short, and the exact ones are the
    run's params."""
    sampled = spec.mode == "search"
    # the method first, even when the study fixes it
    default = RunConfig.__dataclass_fields__["method"].default
    words = [_value(params.get("method", spec.base.get("method", default)), sampled=sampled)]
    for axis in varying_axes(spec):
        if axis != "method" and axis in params:  # (a conditional axis of another method is not)
            words.append(f"{ALIASES.get(axis, axis)}={_value(params[axis], sampled=sampled)}")
    return " ".join(words)


def run_name(spec: StudySpec, params: dict[str, Any], seed: int) -> str:
    """A child run's name: its cell's name and ``s<seed>`` (``lab h=128 clip=gate:5 s3``)."""
    return f"{cell_name(spec, params)} s{seed}"


def parent_params(spec: StudySpec) -> dict[str, str]:
    """The parent run's params: each axis (its values, or its range), each base field, the seeds."""
    out = {k: str(v) for k, v in spec.base.items()}
    if spec.mode == "grid":
        out.update({k: ", ".join(_value(v) for v in values) for k, values in spec.grid.items()})
        conditional: dict[str, list[str]] = {}
        for method, axes in spec.when.items():
            for k, values in axes.items():
                conditional.setdefault(k, []).append(
                    f"{method}: " + ", ".join(_value(v) for v in values))
        out.update({k: "; ".join(v) for k, v in conditional.items() if k not in spec.grid})
    else:
        for k, r in spec.search.items():
            out[k] = (", ".join(_value(v) for v in r.choices) if r.kind == "categorical"
                      else f"{r.kind} {r.low:g}..{r.high:g}" + (f" step {r.step:g}" if r.step else ""))
    out["seeds"] = ", ".join(str(s) for s in spec.seeds)
    return out


def prepare_study(client: Any, study: Any, experiment_id: str, parent_run_id: str,
                  spec: StudySpec, *, attempts: int = 4) -> None:
    """Tag the experiment as model training, name the Optuna metric, and give the parent run its
    source tags and params. Idempotent: the launcher and every worker call it; workers that start
    together race to write the same records (a unique-key error for the loser), so it retries."""
    for attempt in range(attempts):
        try:
            _prepare(client, study, experiment_id, parent_run_id, spec)
            return
        except Exception:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def _prepare(client: Any, study: Any, experiment_id: str, parent_run_id: str,
             spec: StudySpec) -> None:
    from mlflow.entities import Param, RunTag

    if client.get_experiment(experiment_id).tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    if study.metric_names != [spec.objective]:
        with warnings.catch_warnings():  # set_metric_names is marked experimental
            warnings.simplefilter("ignore")
            study.set_metric_names([spec.objective])
    parent = client.get_run(parent_run_id)
    logged = parent.data.params
    tags = {k: v for k, v in source_tags().items() if k not in parent.data.tags}
    params = parent_params(spec)
    # MLflow params cannot change: a value that did (a study grown by more seeds or axis values)
    # goes to the tag labbench.param.<name> instead
    tags.update({f"labbench.param.{k}": v for k, v in params.items()
                 if k in logged and logged[k] != v})
    items = [Param(k, v) for k, v in params.items() if k not in logged] \
        + [RunTag(k, v) for k, v in tags.items()]
    for i in range(0, len(items), 100):  # log_batch takes at most 100 params and tags together
        chunk = items[i:i + 100]
        client.log_batch(parent_run_id, params=[x for x in chunk if isinstance(x, Param)],
                         tags=[x for x in chunk if isinstance(x, RunTag)])


def study_outcome(study: Any, spec: StudySpec) -> tuple[dict[str, float], dict[str, str]]:
    """The parent's summary metrics and tags, from the Optuna study (the record of which runs
    are done)."""
    from optuna.trial import TrialState

    from ablations.objective import trial_seed
    from ablations.state import slot_states, summarize

    summary = summarize(study, spec)
    if spec.mode == "grid":
        done = [t for state, t in slot_states(study.get_trials(deepcopy=False)).values()
                if state == TrialState.COMPLETE]
    else:
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    metrics = {"runs_total": float(summary.total), "runs_finished": float(summary.complete),
               "runs_failed": float(summary.failed),
               "runs_diverged": float(sum(bool(t.user_attrs.get("diverged")) for t in done))}
    tags: dict[str, str] = {}
    pick = max if spec.direction == "maximize" else min
    finite = [t for t in done if t.value is not None and math.isfinite(t.value)]
    if finite:
        best = pick(finite, key=lambda t: t.value)
        metrics[f"best/{spec.objective}"] = best.value
        tags["labbench.best_trial"] = str(best.number)
        if spec.mode == "grid":
            tags["labbench.best_run"] = run_name(spec, _axes_of(best), trial_seed(best))
        if best.user_attrs.get("mlflow_run_id"):
            tags["labbench.best_run_id"] = best.user_attrs["mlflow_run_id"]
    if spec.mode == "grid":
        cells: dict[str, list[float]] = {}
        for t in done:
            cells.setdefault(cell_name(spec, _axes_of(t)), []).append(
                t.value if t.value is not None else math.nan)
        means = {cell: sum(v) / len(v) for cell, v in cells.items()}
        means = {cell: m for cell, m in means.items() if math.isfinite(m)}
        if means:
            cell = pick(means, key=means.__getitem__)
            metrics[f"best_cell/{spec.objective}"] = means[cell]
            tags["labbench.best_cell_name"] = cell
    return metrics, tags


def _axes_of(trial: Any) -> dict[str, Any]:
    return {k: v for k, v in trial.params.items() if k != "seed"}  # older studies tuned the seed


def start_parent(client: Any, parent_run_id: str) -> None:
    """Mark the parent run RUNNING while a launcher runs the grid."""
    client.update_run(parent_run_id, status="RUNNING")


def finish_parent(client: Any, study: Any, spec: StudySpec, parent_run_id: str, *,
                  status: str = "FINISHED") -> dict[str, float]:
    """Record the study's outcome on the parent run and end it now (the grid's end)."""
    from mlflow.entities import Metric, RunTag

    metrics, tags = study_outcome(study, spec)
    now = int(time.time() * 1000)
    client.log_batch(parent_run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                     tags=[RunTag(k, v) for k, v in tags.items()])
    client.set_terminated(parent_run_id, status, end_time=now)
    return metrics
