"""`labbench findings`: docs/findings.md with every number computed from the published archives.

The findings page is written as a template, ``docs/findings.in.md``, whose numbers are
expressions in double braces; this module evaluates them on the archives under
``docs/reports/<folder>/archive*`` (written by ``labbench export``; STUDY below is the study name
the archive records, or several joined by ``+``: the studies as one, as ``labbench report A B``
combines them, e.g. a width comparison made of two studies) and writes ``docs/findings.md``.
So no number in the prose is typed by hand, each carries its n and interval, and re-running the
command after a study is extended updates them all.

Expressions (``FILTER`` is ``key=value`` pairs, comma-separated, matched against the archive's
``runs.csv`` columns as text, e.g. ``method=bc-scaled:2,hidden=64``):

``{{ mean STUDY METRIC FILTER }}``
    mean over the matching runs with its 95% Student-t interval and n:
    ``3.28 (95% CI 3.22 to 3.34, n = 5)``.
``{{ logmean STUDY METRIC FILTER }}``
    the same on log10 of the values, written as powers of ten (for gradient norms that span
    orders of magnitude): ``10^8.9 (95% CI 10^8.7 to 10^9.1, n = 5)``.
``{{ diff STUDY METRIC FILTER_A vs FILTER_B }}``
    runs of A minus runs of B paired by seed (every other column of the filters must select one
    run per seed), mean with its 95% paired t-interval: ``+0.91 (95% CI 0.81 to 1.01, paired by
    seed, n = 5)``.
``{{ diff2 STUDY METRIC A vs B minus C vs D }}``
    an interaction: (A - B) - (C - D), all four paired by seed, with its 95% paired t-interval
    (e.g. how much LAB's gap to fp shrinks from one width to another).
``{{ value STUDY METRIC FILTER }}``
    a number that is the same in every matching run (a floor, a count): ``4.03``.
``{{ n STUDY FILTER }}``
    how many runs match.
``{{ nbelow STUDY METRIC OTHER FILTER }}``
    ``k of n``: how many matching runs have METRIC below their own OTHER (e.g. test_bpc below
    floor_bigram_bpc: the runs that beat the bigram floor).
``{{ range STUDY METRIC FILTER }}``
    the lowest and highest value over the matching runs: ``3.61 to 5.43 (n = 5)``.
"""

from __future__ import annotations

import contextlib
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from analysis._intervals import t_interval
from analysis._sources import CombineError, combine_studies
from analysis.archive import load_archive

__all__ = ["FindingsError", "evaluate", "render_findings"]

EXPR = re.compile(r"\{\{(.*?)\}\}", re.S)


class FindingsError(ValueError):
    """An expression that cannot be evaluated (unknown study, metric or filter; no runs)."""


def _num(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    if x == 0:
        return "0"
    digits = max(0, 2 - math.floor(math.log10(abs(x))))
    return f"{x:.{digits}f}" if abs(x) < 1e5 else f"{x:.3g}"


def _filter(frame: pd.DataFrame, text: str, expr: str) -> pd.DataFrame:
    out = frame
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise FindingsError(f"{{{{{expr}}}}}: filter {part!r} is not key=value")
        if key not in frame.columns:
            raise FindingsError(f"{{{{{expr}}}}}: no column {key!r} in the archive")
        column = out[key]
        as_text = column.astype(str)
        mask = as_text == value
        numeric = pd.to_numeric(column, errors="coerce")
        with contextlib.suppress(ValueError):  # 1.0 matches 1, 2 matches 2.0
            mask |= np.isclose(numeric, float(value), rtol=0, atol=1e-12)
        out = out[mask]
    return out


def _values(frame: pd.DataFrame, metric: str, expr: str) -> pd.Series:
    if metric not in frame.columns:
        raise FindingsError(f"{{{{{expr}}}}}: no metric {metric!r} in the archive")
    values = pd.to_numeric(frame[metric], errors="coerce")
    if values.empty:
        raise FindingsError(f"{{{{{expr}}}}}: no run matches")
    if values.isna().any():
        raise FindingsError(f"{{{{{expr}}}}}: {int(values.isna().sum())} run(s) have no {metric}")
    return values


def _interval(values: np.ndarray, *, log: bool = False, signed: bool = False) -> str:
    n = len(values)
    mean = float(np.mean(values))
    lo, hi, _ = (float(v) for v in t_interval(values))
    fmt = (lambda v: f"10^{v:.1f}") if log else _num
    head = (f"{mean:+.2f}" if signed and not log else fmt(mean))
    if n < 2:
        return f"{head} (n = 1, no interval)"
    return f"{head} (95% CI {fmt(lo)} to {fmt(hi)}, n = {n})"


def evaluate(expr: str, archives: dict[str, pd.DataFrame]) -> str:
    """The text that replaces ``{{expr}}``; raises `FindingsError` with the expression."""
    words = expr.split(None, 2)
    if len(words) < 2:
        raise FindingsError(f"{{{{{expr}}}}}: expected 'KIND STUDY ...'")
    kind, study = words[0], words[1]
    rest = words[2] if len(words) > 2 else ""
    names = study.split("+")
    for name in names:
        if name not in archives:
            raise FindingsError(f"{{{{{expr}}}}}: no archive for study {name!r} "
                                f"(have: {', '.join(sorted(archives)) or 'none'})")
    try:
        frame = archives[study] if len(names) == 1 else combine_studies([archives[n] for n in names])
    except CombineError as err:
        raise FindingsError(f"{{{{{expr}}}}}: {err}") from None
    if kind == "n":
        return str(len(_filter(frame, rest, expr)))
    metric, _, filt = rest.partition(" ")
    if kind == "mean":
        return _interval(_values(_filter(frame, filt, expr), metric, expr).to_numpy())
    if kind == "logmean":
        values = _values(_filter(frame, filt, expr), metric, expr).to_numpy()
        if (values <= 0).any():
            raise FindingsError(f"{{{{{expr}}}}}: logmean needs positive values")
        return _interval(np.log10(values), log=True)
    if kind == "range":
        values = _values(_filter(frame, filt, expr), metric, expr)
        return f"{_num(float(values.min()))} to {_num(float(values.max()))} (n = {len(values)})"
    if kind == "nbelow":
        other, _, filt = filt.partition(" ")
        runs = _filter(frame, filt, expr)
        below = _values(runs, metric, expr) < _values(runs, other, expr)
        return f"{int(below.sum())} of {len(below)}"
    if kind == "value":
        values = _values(_filter(frame, filt, expr), metric, expr)
        if not np.allclose(values, values.iloc[0], rtol=1e-9, atol=0):
            raise FindingsError(f"{{{{{expr}}}}}: {metric} differs between the matching runs")
        return _num(float(values.iloc[0]))
    if kind in ("diff", "diff2"):
        # diff: A - B; diff2: (A - B) - (C - D), an interaction; every side paired by seed
        halves = filt.split(" minus ") if kind == "diff2" else [filt]
        if len(halves) != (2 if kind == "diff2" else 1):
            raise FindingsError(f"{{{{{expr}}}}}: expected 'diff2 STUDY METRIC A vs B minus C vs D'")
        sides = []
        for half in halves:
            a_text, sep, b_text = half.partition(" vs ")
            if not sep:
                raise FindingsError(f"{{{{{expr}}}}}: expected 'diff STUDY METRIC A vs B'")
            sides += [a_text, b_text]
        series = []
        for name, text in zip("ABCD", sides, strict=False):
            runs = _filter(frame, text, expr)
            if runs["seed"].duplicated().any():
                raise FindingsError(f"{{{{{expr}}}}}: side {name} has several runs per seed; "
                                    "filter on more columns")
            series.append(_values(runs, metric, expr).set_axis(runs["seed"].to_numpy()))
        seeds = sorted(set.intersection(*(set(x.index) for x in series)))
        if not seeds:
            raise FindingsError(f"{{{{{expr}}}}}: the sides share no seed")
        d = series[0][seeds] - series[1][seeds]
        if kind == "diff2":
            d = d - (series[2][seeds] - series[3][seeds])
        text = _interval(d.to_numpy(), signed=True)
        return text.replace(", n = ", ", paired by seed, n = ")
    raise FindingsError(f"{{{{{expr}}}}}: unknown kind {kind!r} (mean, logmean, diff, diff2, "
                        "value, n, nbelow, range)")


def render_findings(template: str, reports: Path) -> str:
    """Evaluate every ``{{...}}`` of `template` on the archives under `reports`; all errors are
    collected and raised together."""
    archives: dict[str, pd.DataFrame] = {}
    for folder in sorted(reports.glob("*/archive*")):  # archive/, or archive-<part>/ of a study
        if (folder / "manifest.json").is_file():  # reported in parts: each named by its study
            frame = load_archive(folder)
            archives[str(frame.attrs.get("study") or folder.parent.name)] = frame
    errors: list[str] = []

    def sub(match: re.Match) -> str:
        try:
            return evaluate(" ".join(match.group(1).split()), archives)
        except FindingsError as err:
            errors.append(str(err))
            return match.group(0)

    text = EXPR.sub(sub, template)
    if errors:
        raise FindingsError("\n".join(errors))
    return text
