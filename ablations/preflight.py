"""Bad input, all of it, before anything is created: a study file's errors and what its runs need.

`study_problems` judges each key of a parsed study file on its own and returns every error, so a
file with several independent mistakes is reported in one go (`parse_study` raises them together
as `StudyErrors`); how keys combine (cells that resolve to one configuration, the objective for
the runs' task) is judged by `ablations.spec.spec_from_dict` once each key is right.
`check_study` then asks `bench.preflight.check_runnable` about every distinct run of the study:
the device, Triton, the dataset and a batch of it, memory. The launcher calls it before it
creates the run root, the Optuna study or the MLflow database.

Example:
    >>> errors = study_problems({"study": {"name": "x y", "objective": "test_acc", "seeds": [-1]},
    ...                          "base": {"lr": -1.0}, "grid": {"method": ["fp"]}}, where="s.toml")
    >>> [e.key for e in errors]
    ['study.name', 'study.seeds', 'base.lr']
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ablations._fields import (
    StudyError,
    check_field,
    check_scalar,
    check_values,
    config_error,
    hint,
    type_name,
)
from ablations.spec import _NAME_RE, STUDY_KEYS, TABLES, StudySpec, _seeds
from ablations.storage import Location, StorageError
from bench.config import ConfigError, RunConfig

__all__ = ["StudyErrors", "check_location", "check_study", "study_problems"]


class StudyErrors(StudyError):
    """Several errors in one study file: ``errors`` holds each (a `StudyError`), one line each."""

    def __init__(self, errors: list[StudyError]):
        where = errors[0].where
        lines = "\n".join(f"  {str(e)[len(where) + 2:] if str(e).startswith(where) else e}"
                          for e in errors)
        ValueError.__init__(self, f"{where}: {len(errors)} problems:\n{lines}")
        self.where, self.key, self.errors = where, errors[0].key, list(errors)


def _passes(errors: list[StudyError], check: Any, *args: Any) -> bool:
    """Run one check; its error goes to ``errors``."""
    try:
        check(*args)
    except StudyError as err:
        errors.append(err)
        return False
    return True


def _value_errors(values: dict[str, Any], table: str, where: str) -> list[StudyError]:
    """RunConfig's own judgement of each value (type, choice, range), as study errors."""
    out = []
    for err in RunConfig.check_values(values):
        out.append(config_error(err, {}, values, table, where) if table == "base" else
                   StudyError(where, f"{table}.{err.field}",
                              f"value {values[err.field]!r}: {str(err)[len(err.field) + 2:]}"))
    return out


def study_problems(data: Any, where: str) -> list[StudyError]:
    """Every error of a parsed study file that one key shows on its own.

    Args:
        data: the parsed TOML document.
        where: the file, for messages.

    Returns:
        The errors in file order: unknown tables and keys, a bad name, mode, direction or seed,
        unknown fields, and values RunConfig refuses whatever the other fields are. Empty when
        each key is right on its own (the file may still be wrong as a whole).
    """
    errors: list[StudyError] = []
    if not isinstance(data, dict):
        return errors
    for key, value in data.items():
        if key not in TABLES:
            errors.append(StudyError(where, key, f"unknown table{hint(key, TABLES)}; valid "
                                     "tables: " + ", ".join(f"[{t}]" for t in TABLES)))
        elif not isinstance(value, dict):
            errors.append(StudyError(where, key, f"expected a table [{key}], got "
                                     f"{type_name(value)}"))
    study = data.get("study")
    if isinstance(study, dict):
        errors += _study_table(study, where)
    base = data.get("base")
    if isinstance(base, dict):
        good = {}
        for key, value in base.items():
            if _passes(errors, check_field, key, where, "base") and \
                    _passes(errors, check_scalar, value, f"base.{key}", where):
                good[key] = value
        errors += _value_errors(good, "base", where)
    grid = data.get("grid")
    if isinstance(grid, dict):
        for key, values in grid.items():
            if key == "when" or not _passes(errors, check_field, key, where, "grid"):
                continue
            if isinstance(base, dict) and key in base:
                errors.append(StudyError(where, f"grid.{key}", "also set in [base]; a field is "
                                         "either fixed or an axis"))
                continue
            if not _passes(errors, check_values, values, f"grid.{key}", where):
                continue
            for value in values:
                bad = _value_errors({key: value}, "grid", where)
                if bad:  # the first bad value of an axis
                    errors += bad
                    break
    return errors


def _study_table(study: dict, where: str) -> list[StudyError]:
    errors = [StudyError(where, f"study.{key}", f"unknown key{hint(key, STUDY_KEYS)}; valid keys: "
                         + ", ".join(STUDY_KEYS)) for key in study if key not in STUDY_KEYS]
    for key, choices in (("name", ()), ("objective", ()), ("description", ()),
                         ("mode", ("grid", "search")), ("direction", ("minimize", "maximize"))):
        value = study.get(key)
        if value is None:
            if key in ("name", "objective"):
                errors.append(StudyError(where, f"study.{key}", "missing (required)"))
        elif not isinstance(value, str):
            errors.append(StudyError(where, f"study.{key}", f"expected a string, got {value!r} "
                                     f"({type_name(value)})"))
        elif choices and value not in choices:
            errors.append(StudyError(where, f"study.{key}", f"expected one of "
                                     f"{', '.join(choices)}, got {value!r}{hint(value, choices)}"))
        elif key == "name" and not _NAME_RE.match(value):
            errors.append(StudyError(where, "study.name", "expected 1-100 characters from A-Z "
                                     "a-z 0-9 . _ - starting with a letter or digit, got "
                                     f"{value!r}"))
    seeds = study.get("seeds") if _passes(errors, _seeds, study.get("seeds"), where) else []
    for seed in seeds:
        bad = RunConfig.check_values({"seed": seed})
        if bad:
            errors.append(StudyError(where, "study.seeds", f"seed {seed}: "
                                     f"{str(bad[0])[len('seed: '):]}"))
            break
    return errors


def check_location(location: Location) -> None:
    """Refuse a run root (or journal folder) that is a file, lies under one, or is read-only.

    Raises:
        StorageError: naming ``--root`` or ``--storage``.
    """
    from bench.preflight import check_root

    try:
        check_root(location.root, "--root")
        if location.kind == "journal":
            check_root(Path(location.storage_url).parent, "--storage")
    except ConfigError as err:
        raise StorageError(str(err)) from None


def _runs(spec: StudySpec) -> list[tuple[dict[str, Any], RunConfig]]:
    """(the cell, its RunConfig) of every configuration the study can run, seeds aside; a search
    study's smallest and largest candidates of each range."""
    if spec.mode == "grid":
        return [(cell, spec.config(cell, spec.seeds[0])) for cell in spec.cells()]
    ends = [{name: r.candidates()[i] for name, r in spec.search.items()} for i in (0, -1)]
    return [(params, spec.config(params, spec.seeds[0])) for params in ends]


def check_study(spec: StudySpec) -> None:
    """Refuse a study one of whose runs cannot start on this machine.

    Each distinct data and shape setting is checked once (`bench.preflight.check_runnable`).

    Raises:
        StudyError: naming the file, the key at fault and the cell (several: `StudyErrors`).
    """
    from bench.preflight import check_runnable

    errors: list[StudyError] = []
    seen: set[tuple] = set()
    messages: set[str] = set()
    for params, config in _runs(spec):
        key = tuple(getattr(config, f) for f in (
            "model", "dataset", "device", "backend", "hidden", "layers", "width", "seq_len",
            "batch_size", "train_limit", "eval_limit"))
        if key in seen:
            continue
        seen.add(key)
        problems: list[ConfigError] = check_runnable(config)
        for err in problems:
            study_err = config_error(err, params, spec.base, "grid" if spec.mode == "grid"
                                     else "search", spec.source or spec.name)
            if str(err) not in messages:  # one bad base value fails every cell alike
                messages.add(str(err))
                errors.append(study_err)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise StudyErrors(errors)
