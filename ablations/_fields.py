"""The checks study files share: the error type and the validation of single keys and values."""

from __future__ import annotations

import difflib
import math
from typing import Any

from bench.config import ConfigError, RunConfig

__all__ = ["StudyError", "check_field", "check_scalar", "check_values", "config_error", "hint",
           "same_value", "type_name"]

_SCALARS = (str, int, float, bool)


class StudyError(ValueError):
    """A bad study file: ``where`` is the file (or the storage holding the spec), ``key`` the
    dotted key (``grid.hidden``, ``study.seeds``), or empty when the whole file is at fault."""

    def __init__(self, where: str, key: str, message: str):
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")
        self.where = where
        self.key = key


def hint(word: str, options: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def type_name(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "float", str: "string", list: "array",
            dict: "table"}.get(type(value), type(value).__name__)


def check_field(key: str, where: str, table: str) -> None:
    names = RunConfig.field_names()
    if key == "seed":
        raise StudyError(where, f"{table}.seed", "the seeds are set by [study].seeds (each cell "
                         "runs once per seed)")
    if key not in names:
        raise StudyError(where, f"{table}.{key}", f"unknown field{hint(key, names)}; valid "
                         "fields: " + ", ".join(n for n in names if n != "seed"))


def check_scalar(value: Any, key: str, where: str) -> Any:
    if not isinstance(value, _SCALARS):
        raise StudyError(where, key, f"expected a string, integer, float or boolean, got "
                         f"{value!r} ({type_name(value)})")
    if isinstance(value, float) and not math.isfinite(value):
        raise StudyError(where, key, f"expected a finite number, got {value!r}")
    return value


def same_value(a: Any, b: Any) -> bool:
    """Equal grid values (1 == 1.0, but True is not 1)."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def check_values(values: Any, key: str, where: str) -> tuple:
    """An axis (or a list of choices): a non-empty list of distinct scalars."""
    if not isinstance(values, list):
        raise StudyError(where, key, f"expected a list of values, got {values!r} "
                         f"({type_name(values)})")
    if not values:
        raise StudyError(where, key, "empty list: an axis needs at least one value")
    for i, value in enumerate(values):
        check_scalar(value, key, where)
        if any(same_value(value, earlier) for earlier in values[:i]):
            raise StudyError(where, key, f"duplicate value {value!r} in {values}")
    return tuple(values)


def config_error(err: ConfigError, params: dict, base: dict, table: str, where: str
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
