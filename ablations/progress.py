"""What the user sees: the launcher's progress bar and the ``status`` report (rich, on stderr)."""

from __future__ import annotations

import datetime
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ablations.state import Summary
from ablations.storage import masked, where_flags
from ablations.study import StudyHandle

__all__ = ["ProgressView", "format_duration", "print_status", "slot_label"]


def format_duration(seconds: float | None) -> str:
    """``1h02m``, ``3m05s``, ``12s``; ``?`` when unknown."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def slot_label(trial: Any) -> str:
    """``method=bc hidden=64 seed=1`` for a trial's parameters and seed (a user attribute)."""
    seed = {"seed": trial.user_attrs["seed"]} if "seed" in trial.user_attrs else {}
    return " ".join(f"{k}={v}" for k, v in {**trial.params, **seed}.items()) or f"trial {trial.number}"


class ProgressView:
    """Cells done / total, running, failed and an ETA, refreshed from the storage by the caller.

    The ETA is the remaining cells over the rate at which cells have completed since the bar
    started (the mean trial time over the workers until the first one completes).
    """

    def __init__(self, title: str, total: int, *, quiet: bool = False,
                 console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.quiet = quiet
        self.started = time.monotonic()
        self.first_done: int | None = None
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                                 TimeElapsedColumn(), console=self.console, transient=False)
        self.task = self.progress.add_task(title, total=total, info="starting workers")

    def __enter__(self) -> ProgressView:
        if not self.quiet:
            self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self.quiet:
            self.progress.stop()

    def update(self, summary: Summary, workers: int, note: str = "") -> None:
        done = summary.complete
        if self.first_done is None:
            self.first_done = done
        elapsed = time.monotonic() - self.started
        remaining = summary.total - done
        gained = done - self.first_done
        if gained > 0:
            eta = remaining * elapsed / gained
        elif summary.mean_trial_s is not None and workers:
            eta = remaining * summary.mean_trial_s / workers
        else:
            eta = None
        info = (f"running {len(summary.running_trials)}  failed {summary.failed}  "
                f"workers {workers}  ETA {format_duration(eta) if remaining else '0s'}")
        if note:
            info += f"  [yellow]{note}[/]"
        self.progress.update(self.task, completed=done, total=summary.total, info=info)

    def print(self, text: str) -> None:
        """A message above the bar (or alone when quiet)."""
        self.console.print(text, highlight=False, soft_wrap=True)


def print_status(handle: StudyHandle, summary: Summary, stale: list[tuple[Any, str]],
                 console: Console | None = None) -> None:
    """The ``labbench status`` report: counts, running and failed trials, where the runs are."""
    console = console or Console()
    spec = handle.spec
    unit = "cells x seeds" if spec.mode == "grid" else "trials"
    console.print(f"study {spec.name} ({spec.mode}, objective {spec.objective}, {spec.direction})",
                  highlight=False, soft_wrap=True)
    table = Table(show_header=False)
    table.add_column("what")
    table.add_column("count", justify="right")
    for label, value in [(f"total ({unit})", summary.total), ("complete", summary.complete),
                         ("running", len(summary.running_trials)), ("queued", summary.waiting),
                         ("failed", summary.failed), ("not started", summary.not_started),
                         ("pruned", summary.pruned), ("duplicates skipped", summary.duplicates),
                         ("trials recorded", summary.trials)]:
        table.add_row(label, str(value))
    if summary.mean_trial_s is not None:
        table.add_row("mean trial time", format_duration(summary.mean_trial_s))
    console.print(table)
    stale_numbers = {t.number: reason for t, reason in stale}
    now = datetime.datetime.now()
    for t in summary.running_trials:
        owner = t.user_attrs.get("owner") or {}
        who = (f"{owner.get('host')}:{owner.get('pid')}" if owner.get("trial") == t.number
               else "owner not recorded yet")
        age = format_duration((now - t.datetime_start).total_seconds()) if t.datetime_start else "?"
        flag = f"  [red]stale: {stale_numbers[t.number]}[/]" if t.number in stale_numbers else ""
        console.print(f"running  trial {t.number}  {slot_label(t)}  ({who}, {age}){flag}",
                      highlight=False, soft_wrap=True)
    for t in summary.failures[:20]:
        reason = t.user_attrs.get("error") or t.user_attrs.get("stale") or (
            "interrupted" if t.user_attrs.get("interrupted") else "failed")
        console.print(f"failed   trial {t.number}  {slot_label(t)}: {reason}", highlight=False,
                      soft_wrap=True)
    if len(summary.failures) > 20:
        console.print(f"... and {len(summary.failures) - 20} more failed")
    console.print(f"storage  {masked(handle.location.storage_url)}\n"
                  f"tracking {masked(handle.tracking_uri)}  (parent run {handle.parent_run_id})",
                  highlight=False, soft_wrap=True)
    where = where_flags(handle.location)
    if stale:
        console.print(f"[yellow]{len(stale)} trial(s) look stale: `labbench repair {spec.name}"
                      f"{where}` fails them and queues their cells again[/]", highlight=False,
                      soft_wrap=True)
    if summary.failed:
        console.print(f"[yellow]`labbench retry-failed {spec.name}{where}` re-runs the failed "
                      "cells[/]", highlight=False, soft_wrap=True)
