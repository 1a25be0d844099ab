"""The shipped study files (``ablations/studies/*.toml``): find one by name, size and cost them.

``labbench grid lstm-clipping`` finds ``ablations/studies/lstm-clipping.toml``; ``labbench
studies`` lists every shipped study with its cells x seeds, runs, training steps and an estimated
cost on this machine. The estimate (docs/harness.md, "Shipped studies"):

    core-seconds = sum over runs of (training steps of the run) x (step time of its cell)

- training steps = epochs x steps per epoch (the run's own data split, batch size and sequence
  length, as `bench.train` counts them; ``steps`` caps the total);
- step time = one training step (forward, backward, optimizer and proximal step) of the cell's
  model and method on a synthetic batch of its shape, timed by `bench.speed.measure_speed` on one
  torch thread after one untimed step, the proximal step in torch (no compile);
- evaluation, diagnostics and process start-up are not counted, and a busy machine times slower:
  read it as a lower bound good to a factor of about 2. Wall time is core-seconds / workers (one
  thread each).

A search study is costed at the midpoint of each range (geometric for ``log``), ``trials`` times.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablations._fields import StudyError, hint
from ablations.spec import StudySpec, parse_study

__all__ = ["SHIPPED", "StudyCost", "estimate_cost", "find_study_file", "shipped_studies"]

SHIPPED = Path(__file__).resolve().parent / "studies"
_SPEED_FIELDS = ("model", "dataset", "method", "bits", "levels", "granularity", "layer_methods",
                 "ttq_threshold", "hidden", "layers", "width", "batch_size", "seq_len", "dtype",
                 "device", "loss")
"""The RunConfig fields a step's time depends on (lr, clip, seed, schedule... do not matter)."""


def shipped_studies() -> list[Path]:
    """The shipped study files, sorted by name."""
    return sorted(SHIPPED.glob("*.toml"))


def find_study_file(name: str) -> Path:
    """A study file path as given, or the shipped study of that name.

    ``name`` is a path when it names an existing file, contains a ``/`` or ends in ``.toml``;
    otherwise it is looked up as ``ablations/studies/<name>.toml``.

    Raises:
        StudyError: no such file, naming the shipped studies.
    """
    path = Path(name)
    if path.is_file() or "/" in name or name.endswith(".toml"):
        return path
    shipped = SHIPPED / f"{name}.toml"
    if shipped.is_file():
        return shipped
    names = [p.stem for p in shipped_studies()]
    raise StudyError(name, "", f"no such study file, and no shipped study of that name{hint(name, names)}; "
                     f"shipped: {', '.join(names)} (`labbench studies` lists them)")


@dataclass(frozen=True)
class StudyCost:
    """A study's size and its estimated training cost on this machine (module docstring)."""

    name: str
    mode: str
    cells: int  # grid cells, or search trials
    seeds: int
    runs: int
    steps: int | None  # training steps of all runs; None when a dataset is not on this machine
    core_s: float | None  # estimated core-seconds of training; None when not probed or unknown
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _midpoint(r) -> Any:
    if r.kind == "categorical":
        return r.choices[len(r.choices) // 2]
    mid = math.sqrt(r.low * r.high) if r.kind == "log" else (r.low + r.high) / 2
    if r.kind == "int":
        step = int(r.step or 1)
        return int(r.low + step * round((mid - r.low) / step))
    return mid


def _cells(spec: StudySpec) -> list[dict[str, Any]]:
    if spec.mode == "grid":
        return spec.cells()
    return [{k: _midpoint(r) for k, r in spec.search.items()}]


def estimate_cost(spec: StudySpec, *, probe: bool = True, cache: dict | None = None) -> StudyCost:
    """Size a study and, with ``probe``, time one step of each of its cells (module docstring).

    Args:
        spec: the parsed study.
        probe: time the steps; False gives the size only (``core_s`` None).
        cache: shared between calls, so that equal datasets and shapes are loaded and timed once.
    """
    from bench.data import DatasetNotFoundError, load_dataset

    cache = {} if cache is None else cache
    cells = _cells(spec)
    runs_per_cell = len(spec.seeds) * (1 if spec.mode == "grid" else spec.trials or 0)
    steps_total, core_s, notes = 0, 0.0, []
    for cell in cells:
        config = spec.config(cell, spec.seeds[0])
        data_key = ("data", config.dataset, config.train_limit)
        if data_key not in cache:
            try:
                cache[data_key] = load_dataset(config.dataset, train_limit=config.train_limit,
                                               eval_limit=1)
            except (DatasetNotFoundError, OSError, ValueError) as err:
                cache[data_key] = err
        data = cache[data_key]
        if isinstance(data, Exception):
            notes.append(f"{config.dataset} is not on this machine")
            steps_total = None
            break
        per_epoch = data.train_steps_per_epoch(config.batch_size, config.seq_len or 0)
        steps = config.epochs * per_epoch
        steps = min(steps, config.steps) if config.steps else steps
        steps_total += steps * runs_per_cell
        if probe:
            core_s += steps * runs_per_cell * _step_s(config, cache)
    note = "; ".join(dict.fromkeys(notes))
    if spec.mode == "search":
        note = "; ".join(filter(None, [note, "costed at the midpoint of each search range"]))
    return StudyCost(name=spec.name, mode=spec.mode, cells=len(spec.cells()) if spec.mode == "grid"
                     else spec.trials or 0, seeds=len(spec.seeds), runs=spec.n_runs,
                     steps=steps_total, core_s=core_s if probe and steps_total is not None else None,
                     note=note)  # fmt: skip


def _step_s(config, cache: dict) -> float:
    """Seconds of one training step of ``config``'s shape and method (cached per shape)."""
    from bench.speed import measure_speed

    key = ("step", *(getattr(config, f) for f in _SPEED_FIELDS))
    if key not in cache:
        timed = config.replace(backend="torch", threads=1)
        rows = measure_speed(timed, [config.method], steps=1, warmup=1, rounds=1)
        cache[key] = next(r["step_ms"] for r in rows if r["method"] == config.method) / 1000
    return cache[key]


def format_costs(costs: list[StudyCost], workers: int, probe_s: float | None) -> str:
    """The table `labbench studies` prints."""
    head = f"{'study':<20} {'mode':<6} {'cells x seeds':>13} {'runs':>5} {'steps':>9} " \
           f"{'core-h':>7} {f'wall ({workers} workers)':>17}"
    lines = [head, "-" * len(head)]
    for c in costs:
        steps = "?" if c.steps is None else f"{c.steps:,}"
        core = "?" if c.core_s is None else f"{c.core_s / 3600:.2f}"
        wall = "?" if c.core_s is None else _duration(c.core_s / workers)
        lines.append(f"{c.name:<20} {c.mode:<6} {f'{c.cells} x {c.seeds}':>13} {c.runs:>5} "
                     f"{steps:>9} {core:>7} {wall:>17}" + (f"   ({c.note})" if c.note else ""))
    if probe_s is not None:
        lines.append(f"\nCost: training steps x one timed step per cell (one torch thread, after one "
                     f"untimed step; {probe_s:.0f} s of probes); evaluation and start-up not "
                     "counted, a busy machine times slower: a lower bound, good to about 2x.")
    else:
        lines.append("\n--no-probe: sizes only, no timing.")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def cost_table(names: list[str], *, probe: bool) -> tuple[list[StudyCost], float | None]:
    """Parse and cost the named shipped studies (all when ``names`` is empty)."""
    paths = [find_study_file(n) for n in names] if names else shipped_studies()
    specs = [parse_study(p) for p in paths]
    cache: dict = {}
    t0 = time.perf_counter()
    costs = [estimate_cost(s, probe=probe, cache=cache) for s in specs]
    return costs, (time.perf_counter() - t0 if probe else None)
