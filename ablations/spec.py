"""Study files: TOML parsed into a frozen `StudySpec`, every value checked before anything runs.

A study file has four tables (docs/harness.md lists every key)::

    [study]                      # name, objective, direction, seeds, baseline, mode, trials
    [base]                       # RunConfig fields shared by every cell
    [grid]                       # mode = "grid": axes, each a list of values (their product = cells)
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
    ablations.spec.StudyError: x.toml: grid.methd: unknown field (did you mean 'method'?); ...
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
RANGE_KINDS = ("int", "float", "log", "categorical")
RANGE_KEYS = ("type", "low", "high", "step", "choices")
MAX_RUNS = 100_000  # cells x seeds: a grid beyond this is almost surely a typo
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_SCALARS = (str, int, float, bool)


class StudyError(ValueError):
    """A bad study file: ``where`` is the file (or the storage holding the spec), ``key`` the
    dotted key (``grid.hidden``, ``study.seeds``), or empty when the whole file is at fault."""

    def __init__(self, where: str, key: str, message: str):
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")
        self.where = where
        self.key = key


def _hint(word: str, options: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _type_name(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "float", str: "string", list: "array",
            dict: "table"}.get(type(value), type(value).__name__)


@dataclass(frozen=True)
class SearchRange:
    """One dimension of a search: ``int`` / ``float`` (uniform, optional ``step``), ``log``
    (log-uniform float, low > 0) or ``categorical`` (``choices``)."""

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: tuple = ()

    def candidates(self) -> tuple:
        """Values that must all be valid RunConfig values: the choices, or both endpoints."""
        return self.choices if self.kind == "categorical" else (self.low, self.high)

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "categorical":
            return {"type": "categorical", "choices": list(self.choices)}
        out = {"type": self.kind, "low": self.low, "high": self.high}
        return out if self.step is None else {**out, "step": self.step}


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

    @property
    def axes(self) -> tuple[str, ...]:
        """The varied RunConfig fields, seed excluded (the ``labbench.axes`` tag)."""
        return tuple(self.grid) if self.mode == "grid" else tuple(self.search)

    @property
    def n_runs(self) -> int:
        """Runs a complete study holds: cells x seeds (grid), trials x seeds (search)."""
        if self.mode == "grid":
            return math.prod(len(v) for v in self.grid.values()) * len(self.seeds)
        return (self.trials or 0) * len(self.seeds)

    def cells(self) -> list[dict[str, Any]]:
        """The grid's cells (axis -> value), in the file's order, seed excluded."""
        names = list(self.grid)
        return [dict(zip(names, values, strict=True))
                for values in itertools.product(*self.grid.values())]

    def search_space(self) -> dict[str, list]:
        """The GridSampler space: every axis and ``seed``, values in the file's order."""
        return {**{k: list(v) for k, v in self.grid.items()}, "seed": list(self.seeds)}

    def config(self, params: dict[str, Any], seed: int) -> RunConfig:
        """The RunConfig of one run: base, then the cell's (or sampled) values, then the seed."""
        return RunConfig.from_dict({**self.base, **params, "seed": seed})

    def to_dict(self) -> dict[str, Any]:
        """The resolved spec (defaults filled in), in the study file's shape: JSON-ready."""
        study = {"name": self.name, "description": self.description, "objective": self.objective,
                 "direction": self.direction, "seeds": list(self.seeds),
                 "baseline": dict(self.baseline), "mode": self.mode}
        if self.mode == "grid":
            return {"study": study, "base": dict(self.base),
                    "grid": {k: list(v) for k, v in self.grid.items()}}
        return {"study": {**study, "trials": self.trials}, "base": dict(self.base),
                "search": {k: r.to_dict() for k, r in self.search.items()}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def parse_study(path: str | Path) -> StudySpec:
    """Read and validate a study file.

    Raises:
        StudyError: the file is missing or not TOML, or any key or value is wrong (the message
            names the file, the dotted key, the value and what was expected).
    """
    where = str(path)
    p = Path(path)
    if not p.is_file():
        raise StudyError(where, "", "no such study file")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise StudyError(where, "", f"not a valid TOML file: {err}") from None
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
        raise StudyError(where, "", f"expected a table at the top level, got {_type_name(data)}")
    for key, value in data.items():
        if key not in TABLES:
            raise StudyError(where, key, f"unknown table{_hint(key, TABLES)}; valid tables: "
                             + ", ".join(f"[{t}]" for t in TABLES))
        if not isinstance(value, dict):
            raise StudyError(where, key, f"expected a table [{key}], got {_type_name(value)}")
    study = data.get("study")
    if study is None:
        raise StudyError(where, "study", "missing table [study] (name, objective, seeds, ...)")
    for key in study:
        if key not in STUDY_KEYS:
            raise StudyError(where, f"study.{key}", f"unknown key{_hint(key, STUDY_KEYS)}; "
                             "valid keys: " + ", ".join(STUDY_KEYS))

    def text(key: str, *, required: bool, choices: tuple[str, ...] = ()) -> str | None:
        value = study.get(key)
        if value is None:
            if required:
                raise StudyError(where, f"study.{key}", "missing (required)")
            return None
        if not isinstance(value, str):
            raise StudyError(where, f"study.{key}", f"expected a string, got {value!r} "
                             f"({_type_name(value)})")
        if choices and value not in choices:
            raise StudyError(where, f"study.{key}", f"expected one of {', '.join(choices)}, got "
                             f"{value!r}{_hint(value, choices)}")
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
    search: dict[str, SearchRange] = {}
    if mode == "grid":
        if trials is not None:
            raise StudyError(where, "study.trials", "only applies to mode = 'search' (a grid "
                             "runs every cell once per seed)")
        grid = _grid(data.get("grid"), base, where)
        configs = _check_cells(grid, base, seeds[0], where)
    else:
        if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
            raise StudyError(where, "study.trials", f"expected an integer >= 1 (the number of "
                             f"configurations to sample), got {trials!r}")
        search = _search(data.get("search"), base, where)
        configs = _check_search(search, base, seeds[0], where)

    baseline = _baseline(study.get("baseline"), grid, mode, where)
    tasks = sorted({config.task for config in configs})
    valid = sorted(set.intersection(*(set(TASK_METRICS[t]) for t in tasks)) | set(COMMON_METRICS))
    if objective not in valid:
        raise StudyError(where, "study.objective", f"unknown metric {objective!r}"
                         f"{_hint(objective, valid)} for {' and '.join(tasks)} runs; "
                         "valid: " + ", ".join(valid))
    if direction is None:  # accuracy is the only final metric where larger is better
        direction = "maximize" if objective.endswith("_acc") else "minimize"
    return StudySpec(name=name, objective=objective, direction=direction, seeds=seeds,
                     baseline=baseline, mode=mode, base=base, grid=grid, search=search,
                     trials=trials, description=description, source=where)


def _seeds(value: Any, where: str) -> tuple[int, ...]:
    key = "study.seeds"
    if value is None:
        raise StudyError(where, key, "missing (required): a list of distinct integers >= 0, "
                         "e.g. seeds = [0, 1, 2]")
    if not isinstance(value, list) or not value:
        raise StudyError(where, key, f"expected a non-empty list of integers >= 0, got {value!r}")
    for seed in value:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise StudyError(where, key, f"expected integers >= 0, got {seed!r} ({_type_name(seed)})")
    if len(set(value)) != len(value):
        dup = next(s for s in value if value.count(s) > 1)
        raise StudyError(where, key, f"duplicate seed {dup} in {value}")
    return tuple(value)


def _check_field(key: str, where: str, table: str) -> None:
    names = RunConfig.field_names()
    if key == "seed":
        raise StudyError(where, f"{table}.seed", "the seeds are set by [study].seeds (each cell "
                         "runs once per seed)")
    if key not in names:
        raise StudyError(where, f"{table}.{key}", f"unknown field{_hint(key, names)}; valid "
                         "fields: " + ", ".join(n for n in names if n != "seed"))


def _scalar(value: Any, key: str, where: str) -> Any:
    if not isinstance(value, _SCALARS):
        raise StudyError(where, key, f"expected a string, integer, float or boolean, got "
                         f"{value!r} ({_type_name(value)})")
    if isinstance(value, float) and not math.isfinite(value):
        raise StudyError(where, key, f"expected a finite number, got {value!r}")
    return value


def _base(table: dict, where: str) -> dict[str, Any]:
    for key, value in table.items():
        _check_field(key, where, "base")
        _scalar(value, f"base.{key}", where)
    return dict(table)


def _same(a: Any, b: Any) -> bool:
    """Equal grid values (1 == 1.0, but True is not 1)."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def _values(values: Any, key: str, where: str) -> tuple:
    """An axis (or a list of choices): a non-empty list of distinct scalars."""
    if not isinstance(values, list):
        raise StudyError(where, key, f"expected a list of values, got {values!r} "
                         f"({_type_name(values)})")
    if not values:
        raise StudyError(where, key, "empty list: an axis needs at least one value")
    for i, value in enumerate(values):
        _scalar(value, key, where)
        if any(_same(value, earlier) for earlier in values[:i]):
            raise StudyError(where, key, f"duplicate value {value!r} in {values}")
    return tuple(values)


def _grid(table: Any, base: dict, where: str) -> dict[str, tuple]:
    if not table:
        raise StudyError(where, "grid", "empty: a grid study needs at least one axis, e.g. "
                         "[grid] method = [\"fp\", \"lab\"]")
    grid = {}
    for key, values in table.items():
        _check_field(key, where, "grid")
        if key in base:
            raise StudyError(where, f"grid.{key}", "also set in [base]; a field is either fixed "
                             "or an axis")
        grid[key] = _values(values, f"grid.{key}", where)
    n_runs = math.prod(len(v) for v in grid.values())
    if n_runs > MAX_RUNS:
        raise StudyError(where, "grid", f"{n_runs} cells: more than {MAX_RUNS}")
    return grid


def _config_error(err: ConfigError, params: dict, base: dict, table: str, where: str
                  ) -> StudyError:
    """A RunConfig error as a study error naming the key the user wrote."""
    name = err.field
    detail = str(err)[len(name) + 2:] if str(err).startswith(f"{name}: ") else str(err)
    context = ", ".join(f"{k}={v!r}" for k, v in params.items())
    if name in params:
        return StudyError(where, f"{table}.{name}", f"value {params[name]!r}: {detail}"
                          + (f" (in the cell {context})" if len(params) > 1 else ""))
    if name in base:
        return StudyError(where, f"base.{name}", f"value {base[name]!r}: {detail}"
                          + (f" (in the cell {context})" if params else ""))
    return StudyError(where, table if params else "base",
                      f"{name}: {detail}" + (f" (in the cell {context})" if params else ""))


def _check_cells(grid: dict[str, tuple], base: dict, seed: int, where: str) -> list[RunConfig]:
    """Build every cell's RunConfig; two cells resolving to one configuration are an error."""
    configs, seen = [], {}
    names = list(grid)
    for values in itertools.product(*grid.values()):
        cell = dict(zip(names, values, strict=True))
        try:
            config = RunConfig.from_dict({**base, **cell, "seed": seed})
        except ConfigError as err:
            raise _config_error(err, cell, base, "grid", where) from None
        cell_id = config.cell_id()
        if cell_id in seen:
            raise StudyError(where, "grid", f"the cells {seen[cell_id]} and {cell} resolve to the "
                             "same run configuration (a value equal to a default?)")
        seen[cell_id] = cell
        configs.append(config)
    return configs


def _search(table: Any, base: dict, where: str) -> dict[str, SearchRange]:
    if not table:
        raise StudyError(where, "search", "empty: a search study needs at least one range, e.g. "
                         "lr = { type = \"log\", low = 1e-4, high = 1e-1 }")
    ranges = {}
    for key, spec in table.items():
        _check_field(key, where, "search")
        k = f"search.{key}"
        if key in base:
            raise StudyError(where, k, "also set in [base]; a field is either fixed or searched")
        if isinstance(spec, list):  # shorthand: a list is a categorical choice
            spec = {"type": "categorical", "choices": spec}
        if not isinstance(spec, dict):
            raise StudyError(where, k, f"expected a list of choices or a table {{ type = ..., "
                             f"low = ..., high = ... }}, got {spec!r} ({_type_name(spec)})")
        for sub in spec:
            if sub not in RANGE_KEYS:
                raise StudyError(where, f"{k}.{sub}", f"unknown key{_hint(sub, RANGE_KEYS)}; "
                                 "valid keys: " + ", ".join(RANGE_KEYS))
        kind = spec.get("type")
        if kind not in RANGE_KINDS:
            raise StudyError(where, f"{k}.type", f"expected one of {', '.join(RANGE_KINDS)}, got "
                             f"{kind!r}")
        ranges[key] = _range(key, kind, spec, where)
    return ranges


def _range(key: str, kind: str, spec: dict, where: str) -> SearchRange:
    k = f"search.{key}"
    if kind == "categorical":
        extra = set(spec) - {"type", "choices"}
        if extra:
            raise StudyError(where, f"{k}.{sorted(extra)[0]}", "does not apply to type "
                             "'categorical' (give choices = [...])")
        if "choices" not in spec:
            raise StudyError(where, f"{k}.choices", "missing: a list of values to choose from")
        return SearchRange(key, kind, choices=_values(spec["choices"], f"{k}.choices", where))
    if "choices" in spec:
        raise StudyError(where, f"{k}.choices", f"does not apply to type {kind!r}")
    number = int if kind == "int" else (int, float)
    bounds = {}
    for sub in ("low", "high") + (("step",) if "step" in spec else ()):
        value = spec.get(sub)
        if isinstance(value, bool) or not isinstance(value, number) or not math.isfinite(value):
            want = "an integer" if kind == "int" else "a number"
            raise StudyError(where, f"{k}.{sub}", f"expected {want}, got {value!r}")
        bounds[sub] = value
    low, high, step = bounds["low"], bounds["high"], bounds.get("step")
    if not low < high:
        raise StudyError(where, k, f"expected low < high, got low={low!r}, high={high!r}")
    if kind == "log" and low <= 0:
        raise StudyError(where, f"{k}.low", f"a log range needs low > 0, got {low!r}")
    if step is not None and (kind == "log" or step <= 0):
        raise StudyError(where, f"{k}.step", "expected > 0 on an int or float range (not log)")
    if kind != "int":
        low, high = float(low), float(high)
    return SearchRange(key, kind, low=low, high=high, step=step)


def _check_search(search: dict[str, SearchRange], base: dict, seed: int, where: str
                  ) -> list[RunConfig]:
    """Every combination of choices and endpoints must be a valid RunConfig (each value on its
    own against the others' first candidates when there are too many combinations)."""
    names = list(search)
    candidates = [search[n].candidates() for n in names]
    if math.prod(len(c) for c in candidates) <= 4096:
        combos = itertools.product(*candidates)
    else:
        first = [c[0] for c in candidates]
        combos = ((*first[:i], v, *first[i + 1:]) for i, c in enumerate(candidates) for v in c)
    configs = []
    for values in combos:
        params = dict(zip(names, values, strict=True))
        try:
            configs.append(RunConfig.from_dict({**base, **params, "seed": seed}))
        except ConfigError as err:
            raise _config_error(err, params, base, "search", where) from None
    return configs


def _baseline(value: Any, grid: dict[str, tuple], mode: str, where: str) -> dict[str, Any]:
    key = "study.baseline"
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise StudyError(where, key, f"expected a table such as {{ method = \"fp\" }}, got "
                         f"{value!r} ({_type_name(value)})")
    if value and mode != "grid":
        raise StudyError(where, key, "only applies to grid studies (degradation pairs cells "
                         "that differ from the baseline on its axes)")
    for axis, level in value.items():
        if axis not in grid:
            raise StudyError(where, f"{key}.{axis}", f"not an axis of [grid]{_hint(axis, list(grid))}"
                             f"; axes: {', '.join(grid)}")
        if not any(_same(level, v) for v in grid[axis]):
            raise StudyError(where, f"{key}.{axis}", f"value {level!r} is not on the axis "
                             f"grid.{axis} = {list(grid[axis])}")
    return dict(value)
