"""Study files: TOML parsed into a frozen `StudySpec`, every value checked before anything runs.

A study file has four tables (docs/harness.md lists every key)::

    [study]                      # name, objective, direction, seeds, baseline, mode, trials
    [base]                       # RunConfig fields shared by every cell
    [grid]                       # mode = "grid": axes, each a list of values (their product = cells)
    [grid.when.METHOD]           # axes that apply only to the cells of method METHOD
    [search]                     # mode = "search": ranges sampled by TPE

`parse_study` builds the `bench.config.RunConfig` of every grid cell (base + cell + first seed), so
an invalid value or combination (``bits`` with method ``lab``, ``clip = "gate:5"`` on an MLP) is
reported with the file, the key and the value before a study or a directory exists. Errors are
`StudyError`, a ValueError whose message starts with the file and the key.

Example:
    >>> spec = spec_from_dict({
    ...     "study": {"name": "demo", "objective": "test_acc", "seeds": [0, 1]},
    ...     "base": {"model": "mlp", "hidden": 16, "layers": 1},
    ...     "grid": {"method": ["fp", "bc"]}}, where="demo.toml")
    >>> spec.direction, spec.axes, len(spec.cells()), spec.n_runs
    ('maximize', ('method',), 2, 4)
    >>> spec_from_dict({"study": {"name": "x", "objective": "test_acc", "seeds": [0]},
    ...                 "grid": {"methd": ["fp"]}}, where="x.toml")
    Traceback (most recent call last):
    ...
    ablations._fields.StudyError: x.toml: grid.methd: unknown field (did you mean 'method'?); ...
"""

from __future__ import annotations

import itertools
import json
import math
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ablations._fields import (
    StudyError,
    check_field,
    check_scalar,
    check_values,
    config_error,
    hint,
    same_value,
    type_name,
)
from ablations.ranges import SearchRange, check_search, parse_search
from bench.config import ConfigError, RunConfig

__all__ = [
    "COMMON_METRICS",
    "TASK_METRICS",
    "SearchRange",
    "StudyError",
    "StudySpec",
    "parse_study",
    "spec_from_dict",
]

# Final metrics a run logs (docs/mlflow-layout.md), by task; the objective must be one of them.
TASK_METRICS = {
    "classification": tuple(f"{p}_{m}" for p in ("test", "best_val") for m in ("acc", "err", "loss")),
    "lm": tuple(f"{p}_{m}" for p in ("test", "best_val") for m in ("xent", "bpc", "loss")),
}
COMMON_METRICS = ("best_epoch", "epochs_run", "diverged", "wall_s", "step_ms", "peak_mem_mb",
                  "state_mem_mb", "bits_per_weight", "packed_bytes")

TABLES = ("study", "base", "grid", "search")
STUDY_KEYS = ("name", "description", "objective", "direction", "seeds", "baseline", "mode", "trials")
MAX_RUNS = 100_000  # cells x seeds: a grid beyond this is almost surely a typo
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass(frozen=True)
class StudySpec:
    """A validated study. ``grid`` keeps the file's axis order and value order (the GridSampler's
    cells depend on it); ``source`` is the file it came from (not part of the identity)."""

    name: str
    objective: str
    direction: str
    seeds: tuple[int, ...]
    baseline: dict[str, Any]
    mode: str
    base: dict[str, Any]
    grid: dict[str, tuple] = field(default_factory=dict)
    search: dict[str, SearchRange] = field(default_factory=dict)
    trials: int | None = None
    description: str = ""
    source: str = field(default="", compare=False)
    when: dict[str, dict[str, tuple]] = field(default_factory=dict)
    """Conditional axes: method -> {axis: values}, axes that only that method's cells vary."""

    @property
    def axes(self) -> tuple[str, ...]:
        """The varied RunConfig fields, seed excluded (the ``labbench.axes`` tag): the grid's
        axes, then the conditional ones."""
        if self.mode != "grid":
            return tuple(self.search)
        return tuple(dict.fromkeys([*self.grid, *(a for axes in self.when.values() for a in axes)]))

    @property
    def n_runs(self) -> int:
        """Runs a complete study holds: cells x seeds (grid), trials x seeds (search)."""
        if self.mode == "grid":
            return len(self.cells()) * len(self.seeds)
        return (self.trials or 0) * len(self.seeds)

    def cells(self) -> list[dict[str, Any]]:
        """The grid's cells (axis -> value), in the file's order, seed excluded: the product of
        the ``[grid]`` axes, each cell of a method with ``[grid.when.METHOD]`` axes once per
        combination of those."""
        return [{**cell, **extra} for cell in _product(self.grid)
                for extra in _product(self.when.get(cell.get("method"), {}))]

    def slots(self) -> list[dict[str, Any]]:
        """Every run of the grid as its Optuna parameters: the cell's axes and ``seed``."""
        return [{**cell, "seed": seed} for cell in self.cells() for seed in self.seeds]

    def search_space(self) -> dict[str, list]:
        """The GridSampler space: every axis and ``seed``, values in the file's order (a
        conditional axis that several methods vary holds the values of all, first seen first)."""
        space = {k: list(v) for k, v in self.grid.items()}
        for axes in self.when.values():
            for axis, values in axes.items():
                merged = space.setdefault(axis, [])
                merged += [v for v in values if not any(same_value(v, m) for m in merged)]
        return {**space, "seed": list(self.seeds)}

    def grid_params(self, suggest: Callable[[str, list], Any]) -> dict[str, Any]:
        """A grid trial's cell, asked for define-by-run: ``suggest(name, choices)`` for each
        ``[grid]`` axis, then for the conditional axes of the method drawn (seed excluded)."""
        space = self.search_space()
        params = {name: suggest(name, space[name]) for name in sorted(self.grid)}
        for name in sorted(self.when.get(params.get("method"), {})):
            params[name] = suggest(name, space[name])
        return params

    def config(self, params: dict[str, Any], seed: int) -> RunConfig:
        """The RunConfig of one run: base, then the cell's (or sampled) values, then the seed."""
        return RunConfig.from_dict({**self.base, **params, "seed": seed})

    def to_dict(self) -> dict[str, Any]:
        """The resolved spec (defaults filled in), in the study file's shape: JSON-ready."""
        study = {"name": self.name, "description": self.description, "objective": self.objective,
                 "direction": self.direction, "seeds": list(self.seeds),
                 "baseline": dict(self.baseline), "mode": self.mode}
        if self.mode == "grid":
            grid: dict[str, Any] = {k: list(v) for k, v in self.grid.items()}
            if self.when:
                grid["when"] = {m: {k: list(v) for k, v in axes.items()}
                                for m, axes in self.when.items()}
            return {"study": study, "base": dict(self.base), "grid": grid}
        return {"study": {**study, "trials": self.trials}, "base": dict(self.base),
                "search": {k: r.to_dict() for k, r in self.search.items()}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def parse_study(path: str | Path) -> StudySpec:
    """Read and validate a study file.

    Raises:
        StudyError: the file is missing or not TOML, or any key or value is wrong (the message
            names the file, the dotted key, the value and what was expected); every key that is
            wrong on its own is reported at once (`ablations.preflight.StudyErrors`).
    """
    from ablations.preflight import StudyErrors, study_problems

    where = str(path)
    p = Path(path)
    if not p.is_file():
        raise StudyError(where, "", "no such study file")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise StudyError(where, "", f"not a valid TOML file: {err}") from None
    except OSError as err:
        raise StudyError(where, "", f"cannot read: {err.strerror or err}") from None
    problems = study_problems(data, where)
    if problems:
        raise problems[0] if len(problems) == 1 else StudyErrors(problems)
    return spec_from_dict(data, where=where)


def spec_from_dict(data: Any, *, where: str) -> StudySpec:
    """Validate a parsed study (a TOML document, or a stored ``StudySpec.to_dict()``).

    Args:
        data: the document.
        where: the file or storage it came from, for messages.

    Raises:
        StudyError: naming ``where`` and the dotted key at fault.
    """
    if not isinstance(data, dict):
        raise StudyError(where, "", f"expected a table at the top level, got {type_name(data)}")
    for key, value in data.items():
        if key not in TABLES:
            raise StudyError(where, key, f"unknown table{hint(key, TABLES)}; valid tables: "
                             + ", ".join(f"[{t}]" for t in TABLES))
        if not isinstance(value, dict):
            raise StudyError(where, key, f"expected a table [{key}], got {type_name(value)}")
    study = data.get("study")
    if study is None:
        raise StudyError(where, "study", "missing table [study] (name, objective, seeds, ...)")
    for key in study:
        if key not in STUDY_KEYS:
            raise StudyError(where, f"study.{key}", f"unknown key{hint(key, STUDY_KEYS)}; "
                             "valid keys: " + ", ".join(STUDY_KEYS))

    def text(key: str, *, required: bool, choices: tuple[str, ...] = ()) -> str | None:
        value = study.get(key)
        if value is None:
            if required:
                raise StudyError(where, f"study.{key}", "missing (required)")
            return None
        if not isinstance(value, str):
            raise StudyError(where, f"study.{key}", f"expected a string, got {value!r} "
                             f"({type_name(value)})")
        if choices and value not in choices:
            raise StudyError(where, f"study.{key}", f"expected one of {', '.join(choices)}, got "
                             f"{value!r}{hint(value, choices)}")
        return value

    name = text("name", required=True)
    if not _NAME_RE.match(name):
        raise StudyError(where, "study.name", f"expected 1-100 characters from A-Z a-z 0-9 . _ - "
                         f"starting with a letter or digit, got {name!r}")
    description = text("description", required=False) or ""
    mode = text("mode", required=False, choices=("grid", "search")) or "grid"
    objective = text("objective", required=True)
    direction = text("direction", required=False, choices=("minimize", "maximize"))
    seeds = _seeds(study.get("seeds"), where)
    base = _base(data.get("base", {}), where)

    other = "search" if mode == "grid" else "grid"
    if other in data:
        raise StudyError(where, other, f"a [{other}] table does not apply to mode = {mode!r}")
    trials = study.get("trials")
    grid: dict[str, tuple] = {}
    when: dict[str, dict[str, tuple]] = {}
    search: dict[str, SearchRange] = {}
    if mode == "grid":
        if trials is not None:
            raise StudyError(where, "study.trials", "only applies to mode = 'search' (a grid "
                             "runs every cell once per seed)")
        grid, when = _grid(data.get("grid"), base, where)
        configs = _check_cells(grid, when, base, seeds[0], where)
    else:
        if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
            raise StudyError(where, "study.trials", f"expected an integer >= 1 (the number of "
                             f"configurations to sample), got {trials!r}")
        search = parse_search(data.get("search"), base, where)
        configs = check_search(search, base, seeds[0], where)

    baseline = _baseline(study.get("baseline"), grid, when, mode, where)
    tasks = sorted({config.task for config in configs})
    valid = sorted(set.intersection(*(set(TASK_METRICS[t]) for t in tasks)) | set(COMMON_METRICS))
    if objective not in valid:
        raise StudyError(where, "study.objective", f"unknown metric {objective!r}"
                         f"{hint(objective, valid)} for {' and '.join(tasks)} runs; "
                         "valid: " + ", ".join(valid))
    if direction is None:  # accuracy is the only final metric where larger is better
        direction = "maximize" if objective.endswith("_acc") else "minimize"
    return StudySpec(name=name, objective=objective, direction=direction, seeds=seeds,
                     baseline=baseline, mode=mode, base=base, grid=grid, search=search,
                     trials=trials, description=description, source=where, when=when)


def _seeds(value: Any, where: str) -> tuple[int, ...]:
    key = "study.seeds"
    if value is None:
        raise StudyError(where, key, "missing (required): a list of distinct integers >= 0, "
                         "e.g. seeds = [0, 1, 2]")
    if not isinstance(value, list) or not value:
        raise StudyError(where, key, f"expected a non-empty list of integers >= 0, got {value!r}")
    for seed in value:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise StudyError(where, key, f"expected integers >= 0, got {seed!r} ({type_name(seed)})")
    if len(set(value)) != len(value):
        dup = next(s for s in value if value.count(s) > 1)
        raise StudyError(where, key, f"duplicate seed {dup} in {value}")
    return tuple(value)


def _base(table: dict, where: str) -> dict[str, Any]:
    for key, value in table.items():
        check_field(key, where, "base")
        check_scalar(value, f"base.{key}", where)
    return dict(table)


def _product(axes: dict[str, tuple]) -> list[dict[str, Any]]:
    """The cartesian product of axes, in their order ([{}] for no axes)."""
    names = list(axes)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*axes.values())]


def _grid(table: Any, base: dict, where: str) -> tuple[dict[str, tuple], dict[str, dict[str, tuple]]]:
    """The ``[grid]`` axes and the conditional ones of ``[grid.when.METHOD]`` tables."""
    if not table:
        raise StudyError(where, "grid", "empty: a grid study needs at least one axis, e.g. "
                         "[grid] method = [\"fp\", \"lab\"]")
    grid = {}
    for key, values in table.items():
        if key == "when":
            continue
        check_field(key, where, "grid")
        if key in base:
            raise StudyError(where, f"grid.{key}", "also set in [base]; a field is either fixed "
                             "or an axis")
        grid[key] = check_values(values, f"grid.{key}", where)
    when = _when(table.get("when"), grid, base, where)
    if not grid:
        raise StudyError(where, "grid", "no axis besides [grid.when.*]: give the methods as an "
                         "axis, e.g. method = [\"fp\", \"laq\"]")
    n_runs = sum(math.prod(len(v) for v in when.get(m, {}).values())
                 for m in grid.get("method", [None])) * math.prod(
                     len(v) for k, v in grid.items() if k != "method")
    if n_runs > MAX_RUNS:
        raise StudyError(where, "grid", f"{n_runs} cells: more than {MAX_RUNS}")
    return grid, when


def _when(table: Any, grid: dict[str, tuple], base: dict, where: str
          ) -> dict[str, dict[str, tuple]]:
    """``[grid.when.METHOD]`` tables: axes that only the cells of that method vary."""
    if table is None:
        return {}
    example = "e.g. [grid.when.laq] bits = [2, 4]"
    if not isinstance(table, dict) or not table:
        raise StudyError(where, "grid.when", f"expected tables of conditional axes, {example}; "
                         f"got {table!r} ({type_name(table)})")
    methods = list(grid.get("method", ()))
    if not methods:
        raise StudyError(where, "grid.when", "conditional axes need a method axis in [grid] "
                         "(grid.method = [...]): [grid.when.METHOD] applies to that method's cells")
    when: dict[str, dict[str, tuple]] = {}
    for method, axes in table.items():
        key = f"grid.when.{method}"
        if not any(same_value(method, m) for m in methods):
            raise StudyError(where, key, f"{method!r} is not a value of grid.method"
                             f"{hint(method, [str(m) for m in methods])}; methods: "
                             + ", ".join(map(str, methods)))
        if not isinstance(axes, dict) or not axes:
            raise StudyError(where, key, f"expected a table of axes ({example}), got {axes!r}"
                             f" ({type_name(axes)})")
        when[method] = {}
        for axis, values in axes.items():
            check_field(axis, where, key)
            if axis == "method":
                raise StudyError(where, f"{key}.method", "the method is what [grid.when.METHOD] "
                                 "depends on; it cannot be a conditional axis")
            if axis in grid:
                raise StudyError(where, f"{key}.{axis}", f"also an axis of [grid] (grid.{axis} "
                                 "applies to every cell); an axis is either shared or conditional")
            if axis in base:
                raise StudyError(where, f"{key}.{axis}", "also set in [base]; a field is either "
                                 "fixed or an axis")
            when[method][axis] = check_values(values, f"{key}.{axis}", where)
    return when


def _check_cells(grid: dict[str, tuple], when: dict[str, dict[str, tuple]], base: dict, seed: int,
                 where: str) -> list[RunConfig]:
    """Build every cell's RunConfig; two cells resolving to one configuration are an error."""
    configs, seen = [], {}
    for shared in _product(grid):
        extra_axes = when.get(shared.get("method"), {})
        for extra in _product(extra_axes):
            cell = {**shared, **extra}
            try:
                config = RunConfig.from_dict({**base, **cell, "seed": seed})
            except ConfigError as err:
                if err.field in extra_axes:
                    table = f"grid.when.{shared['method']}"
                    raise config_error(err, extra, base, table, where) from None
                raise config_error(err, cell, base, "grid", where) from None
            configs.append(_distinct(config, cell, seen, where))
    return configs


def _distinct(config: RunConfig, cell: dict, seen: dict, where: str) -> RunConfig:
    """The config, unless an earlier cell resolved to the same one (then a StudyError)."""
    cell_id = config.cell_id()
    if cell_id in seen:
        raise StudyError(where, "grid", f"the cells {seen[cell_id]} and {cell} resolve to the "
                         "same run configuration (a value equal to a default?)")
    seen[cell_id] = cell
    return config


def _baseline(value: Any, grid: dict[str, tuple], when: dict[str, dict[str, tuple]], mode: str,
              where: str) -> dict[str, Any]:
    key = "study.baseline"
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise StudyError(where, key, f"expected a table such as {{ method = \"fp\" }}, got "
                         f"{value!r} ({type_name(value)})")
    if value and mode != "grid":
        raise StudyError(where, key, "only applies to grid studies (degradation pairs cells "
                         "that differ from the baseline on its axes)")
    for axis, level in value.items():
        if any(axis in axes for axes in when.values()):
            raise StudyError(where, f"{key}.{axis}", "a conditional axis ([grid.when.*]) cannot "
                             "be part of the baseline: it does not apply to every cell")
        if axis not in grid:
            raise StudyError(where, f"{key}.{axis}", f"not an axis of [grid]{hint(axis, list(grid))}"
                             f"; axes: {', '.join(grid)}")
        if not any(same_value(level, v) for v in grid[axis]):
            raise StudyError(where, f"{key}.{axis}", f"value {level!r} is not on the axis "
                             f"grid.{axis} = {list(grid[axis])}")
    if value.get("method") in when:
        raise StudyError(where, f"{key}.method", f"method {value['method']!r} has conditional "
                         f"axes ([grid.when.{value['method']}]), so it is several cells, not one "
                         "baseline; choose a method without them")
    return dict(value)
