"""The report's evidence sections: scores against the reference floors, diverged runs, the
growth of gradients through time, accuracy beside cost, and the interaction contrasts, each a
heading, computed sentences and a table.

The numbers come from :mod:`analysis._evidence`; this module only words and formats them.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from analysis._evidence import (
    UNDERTRAINED,
    bptt_growth_table,
    cost_table,
    divergence_table,
    floor_table,
    interaction_table,
)
from analysis._plotstyle import unit
from analysis._render import Heading, Table, Text
from analysis._render import fmt_number as num

__all__ = ["bptt_section", "cost_section", "divergence_section", "floor_section",
           "interaction_section"]

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


def cost_section(frame: pd.DataFrame, axes: list[str]) -> list:
    """The objective beside bits per weight, packed bytes, step time and optimizer memory."""
    return _section("Accuracy and cost", cost_table(frame, axes), axes, _costs,
                    missing="The runs have no cost metrics (bits_per_weight, packed_bytes, step_ms, "
                    "state_mem_mb) or no objective.")  # fmt: skip


def interaction_section(frame: pd.DataFrame, axes: list[str]) -> list:
    """Does the gap to the baseline shrink along each numeric axis? Paired contrasts per method."""
    return _section("Interaction contrasts", interaction_table(frame, axes), axes, _interactions,
                    missing="No contrast: the study has no numeric axis crossed with every level "
                    "of a one-key baseline (e.g. method = fp), or it is not paired by seed.")  # fmt: skip


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


def _costs(table: pd.DataFrame, axes: list[str]) -> list:
    objective = table.attrs["objective"]
    shown = _cell_means(table, axes, f"mean {objective}")
    if "bits_per_weight" in table.columns:
        shown["bits/weight"] = table["bits_per_weight"].map(num)
    if "packed_bytes" in table.columns:
        shown["packed KiB"] = (table["packed_bytes"] / 1024).map(num)
    if "step_ms" in table.columns:
        shown["step ms (median)"] = table["step_ms"].map(num)
        shown["x baseline step"] = table["step_ratio"].map(num)
    if "state_mem_mb" in table.columns:
        shown["optimizer state MiB"] = table["state_mem_mb"].map(num)
    fronts = []
    for cost, label in (("packed_bytes", "bytes"), ("step_ms", "step")):
        if f"front_{cost}" in table.columns:
            shown[f"front ({label})"] = ["yes" if f else "" for f in table[f"front_{cost}"]]
            on = table[table[f"front_{cost}"]]
            fronts.append(f"against {cost}: " + "; ".join(_cell(r, axes) for r in on.to_dict("records")))
    text = (
        f"{objective}: means over seeds with {_INTERVAL}s. Costs per cell: bits per quantizable "
        "weight and the packed model's size (the same in every run), the median training step "
        "over runs and its ratio to the baseline's median (timings on a shared machine are noisy), "
        "and the optimizer state's memory. The Pareto fronts take the cell means (no other cell "
        "is at least as good on both and better on one): " + (" | ".join(fronts) or "none") + "."
    )
    return [Text(text), Table(shown.astype(str))]


def _interactions(table: pd.DataFrame, axes: list[str]) -> list:
    hue, base, objective = table.attrs["hue"], table.attrs["baseline"], table.attrs["objective"]
    clear = table[(table["ci_high"] < 0) | (table["ci_low"] > 0)]
    text = (
        f"For each numeric axis and each {hue}, the change of its gap to {hue} = {base} in "
        f"{objective} from the axis's lowest to its highest level: per seed, (value - baseline) at "
        "the highest level minus (value - baseline) at the lowest, with the other axes held at "
        "one level (rows 'over' that level) or averaged over their levels per seed first (rows "
        f"'over all'). Means over seeds with {_INTERVAL}s of the paired contrasts; < 0 means the "
        f"gap shrinks as the axis grows (for a lower-is-better objective). {len(clear)} of "
        f"{len(table)} intervals exclude 0."
    )
    shown = table[["axis", "from", "to", hue, "over"]].copy()
    shown["n"] = table["n"]
    shown["mean change of the gap"] = table["mean"].map(num)
    shown[_INTERVAL] = _intervals(table)
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
