"""The ``[search]`` table: ranges that TPE samples (``mode = "search"``)."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

from ablations._fields import StudyError, check_field, check_values, config_error, hint, type_name
from bench.config import ConfigError, RunConfig

__all__ = ["RANGE_KINDS", "SearchRange", "check_search", "parse_search"]

RANGE_KINDS = ("int", "float", "log", "categorical")
RANGE_KEYS = ("type", "low", "high", "step", "choices")


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


def parse_search(table: Any, base: dict, where: str) -> dict[str, SearchRange]:
    if not table:
        raise StudyError(where, "search", "empty: a search study needs at least one range, e.g. "
                         "lr = { type = \"log\", low = 1e-4, high = 1e-1 }")
    ranges = {}
    for key, spec in table.items():
        check_field(key, where, "search")
        k = f"search.{key}"
        if key in base:
            raise StudyError(where, k, "also set in [base]; a field is either fixed or searched")
        if isinstance(spec, list):  # shorthand: a list is a categorical choice
            spec = {"type": "categorical", "choices": spec}
        if not isinstance(spec, dict):
            raise StudyError(where, k, f"expected a list of choices or a table {{ type = ..., "
                             f"low = ..., high = ... }}, got {spec!r} ({type_name(spec)})")
        for sub in spec:
            if sub not in RANGE_KEYS:
                raise StudyError(where, f"{k}.{sub}", f"unknown key{hint(sub, RANGE_KEYS)}; "
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
        return SearchRange(key, kind, choices=check_values(spec["choices"], f"{k}.choices", where))
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


def check_search(search: dict[str, SearchRange], base: dict, seed: int, where: str
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
            raise config_error(err, params, base, "search", where) from None
    return configs
