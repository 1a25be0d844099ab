"""Conditional axes in a study frame: axes that only some methods vary ([grid.when.METHOD]).

A study file can give one method axes of its own (``[grid.when.laq] bits = [2, 4]``); the
parent run's tag ``labbench.conditional`` records them as JSON, method -> axes
(docs/mlflow-layout.md). The analysis reads them one of two ways, as the user asks:

- ``"fold"`` (default): each configuration of such a method is one level of the method factor,
  ``laq:4`` (the conditional values in the order of the study file, joined by ``:``); the
  conditional axes leave ``attrs["axes"]``, so the design is a plain factorial again.
- ``"factor"``: the conditional axes stay factors of their own; in the rows of methods that do
  not vary them they are missing (not applicable), and `analysis.missing_cells` only expects
  the combinations the study has.
"""

from __future__ import annotations

import json

import pandas as pd

__all__ = ["CONDITIONAL_CHOICES", "CONDITIONAL_TAG", "apply_conditional", "possible"]

CONDITIONAL_TAG = "labbench.conditional"
CONDITIONAL_CHOICES = ("fold", "factor")


def apply_conditional(frame: pd.DataFrame, tag: str | None, how: str) -> pd.DataFrame:
    """Read the conditional axes of a :func:`analysis.load_runs` frame as ``how`` says.

    Args:
        frame: the frame (its ``attrs`` set); changed in place and returned.
        tag: the parent run's ``labbench.conditional`` tag (None: the study has none).
        how: ``"fold"`` or ``"factor"`` (module doc).

    Returns:
        The frame, with ``attrs["conditional"]`` (method -> axes) and ``attrs["conditional_as"]``.

    Raises:
        ValueError: ``how`` is neither choice, or the tag is not JSON.
    """
    if how not in CONDITIONAL_CHOICES:
        raise ValueError(f"conditional: expected one of {', '.join(CONDITIONAL_CHOICES)}, got {how!r}")
    try:
        when = json.loads(tag) if tag else {}
    except json.JSONDecodeError as err:
        raise ValueError(f"tag {CONDITIONAL_TAG} of study {frame.attrs.get('study')!r} is not JSON: "
                         f"{tag!r} ({err})") from err
    frame.attrs["conditional"] = when
    frame.attrs["conditional_as"] = how
    if not when or "method" not in frame.columns:
        return frame
    owned = {axis for axes in when.values() for axis in axes}
    excluded = frame.attrs.get("excluded_runs") or []
    if how == "fold":
        frame["method"] = pd.array([_folded(row, when) for row in frame.to_dict("records")],
                                   dtype="str")
        for record in excluded:
            record["method"] = _folded(record, when)
        frame.attrs["axes"] = [a for a in frame.attrs.get("axes") or [] if a not in owned]
        return frame
    for axis in owned & set(frame.columns):
        owners = [m for m, axes in when.items() if axis in axes]
        frame.loc[~frame["method"].isin(owners), axis] = pd.NA
        for record in excluded:
            if record.get("method") not in owners:
                record[axis] = None
    return frame


def possible(combo: dict, when: dict[str, list[str]]) -> bool:
    """Whether a combination of axis values (a missing value is None) is a cell the study can
    have when its conditional axes are factors: set exactly for the methods that vary them."""
    owned = {axis for axes in when.values() for axis in axes}
    mine = set(when.get(combo.get("method"), ()))
    return all((combo.get(axis) is not None) == (axis in mine) for axis in owned if axis in combo)


def _folded(row: dict, when: dict[str, list[str]]) -> str:
    method = row.get("method")
    axes = when.get(method)
    if not axes:
        return method
    return ":".join([str(method), *(_text(row.get(axis)) for axis in axes)])


def _text(value: object) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "None"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
