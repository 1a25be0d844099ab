"""The report's evidence sections: scores against the reference floors, diverged runs, and the
growth of gradients through time, each a heading, one computed sentence and a table.

The numbers come from :mod:`analysis._evidence`; this module only words and formats them.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from analysis._evidence import UNDERTRAINED, bptt_growth_table, divergence_table, floor_table
from analysis._plotstyle import unit
from analysis._render import Heading, Table, Text
from analysis._render import fmt_number as num

__all__ = ["bptt_section", "divergence_section", "floor_section"]

_INTERVAL = "95% t-interval"
_REASONS = {
    "nonfinite": "a loss became NaN or infinite",
    "bound": "a training loss exceeded the stated bound",
    "no_progress": "an epoch's training loss stayed above the stated multiple of the chance loss",
    "unrecorded": "recorded without a reason tag",
}


def floor_section(frame: pd.DataFrame, axes: list[str]) -> list:
    """Each cell's mean test score beside its floors; undertrained cells named in the text."""
    return _section("Scores against the reference floors", floor_table(frame, axes), axes, _floors,
                    missing="No floors: the runs have no floor_* metrics (recorded before floors "
                    "were logged) or no test score.")  # fmt: skip


def divergence_section(frame: pd.DataFrame, axes: list[str]) -> list:
    """Diverged runs per cell with their reasons (tag ``labbench.diverged_reason``)."""
    return _section("Diverged runs", divergence_table(frame, axes), axes, _divergence,
                    missing="The runs have no diverged metric.")  # fmt: skip


def bptt_section(frame: pd.DataFrame, axes: list[str]) -> list:
    """Mean ``bptt_growth`` per cell with its t-interval and what the interval says."""
    return _section("Gradients through time", bptt_growth_table(frame, axes), axes, _bptt,
                    missing="No bptt_growth metric: no LSTM, or runs recorded before the profile "
                    "was measured.")  # fmt: skip


def _section(
    title: str, table: pd.DataFrame, axes: list[str], body: Callable[[pd.DataFrame, list[str]], list], *,
    missing: str,
) -> list:  # fmt: skip
    """A heading, then ``body(table, axes)`` (a sentence and a table), or the note ``missing``
    when ``table`` is empty (the runs lack the metrics)."""
    if table.empty:
        return [Heading(title), Text(missing, note=True)]
    return [Heading(title), *body(table, axes)]


def _floors(table: pd.DataFrame, axes: list[str]) -> list:
    task, score = table.attrs["task"], table.attrs["score"]
    shown = _cell_means(table, axes, f"mean {score}")
    if task == "lm":
        shown["bigram floor"] = table["floor_bigram_bpc"].map(num)
        shown["unigram floor"] = table["floor_unigram_bpc"].map(num)
        shown["below bigram by"] = table["margin"].map(num)
        flagged = table[table["verdict"] == UNDERTRAINED]
        u = unit("test_bpc")
        text = (
            f"Floors are the bits per character of each run's test split under a unigram and a "
            "bigram model counted on its training split with add-one smoothing (metrics "
            f"floor_unigram_bpc, floor_bigram_bpc); scores are {score} in {u}, means over seeds "
            f"with {_INTERVAL}s (none for n = 1). A cell whose mean is not below its bigram floor "
            f"has learned less than a table of character-pair counts and is marked {UNDERTRAINED}."
        )
        if flagged.empty:
            verdict = f" Every one of the {len(table)} cells beats its bigram floor."
        else:
            listed = "; ".join(
                f"{_cell(row, axes)} ({num(row['mean'])} against {num(row['floor_bigram_bpc'])})"
                for row in flagged.to_dict("records")
            )
            verdict = (f" {len(flagged)} of {len(table)} cells are {UNDERTRAINED}: {listed}; "
                       "comparisons involving them show early training, not what the methods "
                       "can reach.")  # fmt: skip
    else:
        shown["chance"] = table["floor_chance"].map(num)
        flagged = table[table["verdict"] == "at chance"]
        text = (f"Chance is 1/K ({score} as a fraction) or 100 * (1 - 1/K) % for K classes; "
                f"scores are means over seeds with {_INTERVAL}s (none for n = 1).")  # fmt: skip
        verdict = (f" {len(flagged)} of {len(table)} cells do not beat chance: "
                   + "; ".join(_cell(r, axes) for r in flagged.to_dict("records")) + "."
                   if len(flagged) else f" Every one of the {len(table)} cells beats chance.")  # fmt: skip
    shown["verdict"] = table["verdict"]
    return [Text(text + verdict), Table(shown.astype(str))]


def _divergence(table: pd.DataFrame, axes: list[str]) -> list:
    total, runs = int(table["diverged"].sum()), int(table["runs"].sum())
    if total == 0:
        return [Text(f"No run diverged ({runs} finished runs).")]
    seen = sorted({r.split(" ", 1)[1] for cell in table["reasons"] if cell for r in cell.split(", ")})
    reasons = "; ".join(f"{r}: {_REASONS.get(r, r)}" for r in seen)
    text = (
        f"{total} of {runs} finished runs diverged, in {int((table['diverged'] > 0).sum())} of "
        f"{len(table)} cells. A diverged run stopped early and is a result, not a failure: it "
        "stays in the tables above with the test metrics of its best validation epoch (missing "
        f"when it had none). Reasons ({reasons}; docs/mlflow-layout.md states the bounds)."
    )
    shown = table[table["diverged"] > 0].reset_index(drop=True)
    return [Text(text), Table(shown.map(num).astype(str))]


def _bptt(table: pd.DataFrame, axes: list[str]) -> list:
    grows = int((table["reading"] == "grows back in time").sum())
    text = (
        "bptt_growth at each run's last epoch: the median over t of ||g_{t-1}|| / ||g_t||, with "
        "g_t the gradient of the last time step's loss with respect to the top LSTM layer's h_t "
        "on a fixed held-out batch, without clipping; > 1 means the gradient grows going back in "
        f"time. Means over seeds with {_INTERVAL}s (none for n = 1); {grows} of {len(table)} "
        "cells have an interval entirely above 1. The figure Gradients through time shows the "
        "profiles."
    )
    shown = _cell_means(table, axes, "mean bptt_growth")
    shown["reading"] = table["reading"]
    return [Text(text), Table(shown.astype(str))]


def _cell_means(table: pd.DataFrame, axes: list[str], mean: str) -> pd.DataFrame:
    """The cells' ``axes`` columns, ``n``, the formatted mean (column ``mean``) and its t-interval."""
    shown = table[axes].copy() if axes else pd.DataFrame(index=table.index)
    shown["n"] = table["n"]
    shown[mean] = table["mean"].map(num)
    shown[_INTERVAL] = _intervals(table)
    return shown


def _intervals(table: pd.DataFrame) -> list[str]:
    return [f"{num(lo)} to {num(hi)}" if pd.notna(lo) else "—"
            for lo, hi in zip(table["ci_low"], table["ci_high"], strict=True)]  # fmt: skip


def _cell(row: dict, axes: list[str]) -> str:
    return ", ".join(f"{a}={row[a]}" for a in axes) or "all runs"
