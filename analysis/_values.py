"""Values as read from MLflow: param strings typed per column, plain Python values for attrs."""

from __future__ import annotations

import re
from collections.abc import Sequence

import pandas as pd

__all__ = ["cast_strings", "int_or_none", "is_missing", "level_key", "plain_records", "sort_key"]

_INT = re.compile(r"[+-]?\d+")


def cast_strings(values: Sequence[str | None]) -> pd.Series:
    """Type one column of MLflow param strings as a whole (docs/mlflow-layout.md).

    Int if every value is an integer literal, float if every value parses as a number, bool if
    every value is ``True``/``False``, else string; ``None`` or ``"None"`` is missing.
    """
    present = [v for v in values if v is not None and v != "None"]
    kinds = {_kind(v) for v in present}
    missing = len(present) < len(values)
    raw = [None if v is None or v == "None" else v for v in values]
    if kinds and kinds <= {"int"}:
        series = pd.Series([None if v is None else int(v) for v in raw], dtype="Int64")
        return series if missing else series.astype("int64")
    if kinds and kinds <= {"int", "float"}:
        return pd.Series([float("nan") if v is None else float(v) for v in raw], dtype="float64")
    if kinds == {"bool"}:
        series = pd.Series([None if v is None else v == "True" for v in raw], dtype="boolean")
        return series if missing else series.astype("bool")
    return pd.Series(raw, dtype="str")


def _kind(value: str) -> str:
    if _INT.fullmatch(value.strip()):
        return "int"
    try:
        float(value)
    except ValueError:
        return "bool" if value in ("True", "False") else "str"
    return "float"


def int_or_none(value: str | None) -> int | None:
    """The integer a tag or param string spells, else None."""
    return int(value) if value is not None and _INT.fullmatch(value.strip()) else None


def plain_records(frame: pd.DataFrame) -> list[dict]:
    """Plain-Python dicts (missing -> None) for attrs."""
    out = []
    for row in frame.to_dict("records"):
        out.append({k: (None if is_missing(v) else _plain(v)) for k, v in row.items()})
    return out


def is_missing(value) -> bool:
    """True for None, NaN, NaT and pandas NA; False for anything else, lists included."""
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _plain(value):
    """A numpy scalar as the Python scalar it holds."""
    return value.item() if hasattr(value, "item") else value


def sort_key(value):
    """Order mixed levels: numbers by value first, then everything else by its text."""
    return (0, value, "") if isinstance(value, int | float) else (1, 0, str(value))


def level_key(value):
    """A hashable level: missing values (None, NaN, NA) become None."""
    return None if is_missing(value) else _plain(value)
