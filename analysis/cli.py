"""`labbench report STUDY_NAME`: render a study's report (Markdown + HTML + figures).

Kept free of labbench's other packages: the run root's database is found by the layout
convention (``<root>/mlflow.db``), see docs/mlflow-layout.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def tracking_uri_for(root: str) -> str:
    """``sqlite:///<root>/mlflow.db`` for a run root (absolute)."""
    return f"sqlite:///{Path(root).expanduser().resolve() / 'mlflow.db'}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``labbench report``; returns the exit status (2 on bad input)."""
    parser = argparse.ArgumentParser(prog="labbench report", description=(
        "Turn a study's runs into statistics, figures and a Markdown + HTML report, and log the "
        "report to the study's parent run."))
    parser.add_argument("study", help="study name (the MLflow experiment)")
    parser.add_argument("--root", default="labbench-runs", help="run root (default ./labbench-runs)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///ROOT/mlflow.db)")
    parser.add_argument("--out", help="output folder (default ROOT/reports/STUDY)")
    parser.add_argument("--n-boot", type=int, default=10_000, help="bootstrap resamples (10000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (0)")
    parser.add_argument("--no-log", action="store_true", help="do not log the report to MLflow")
    args = parser.parse_args(argv)
    if args.n_boot < 100:
        print(f"error: --n-boot: expected >= 100, got {args.n_boot}", file=sys.stderr)
        return 2

    from analysis.report import build_report

    uri = args.tracking_uri or tracking_uri_for(args.root)
    out = Path(args.out) if args.out else Path(args.root) / "reports" / args.study
    try:
        files = build_report(args.study, uri, out, n_boot=args.n_boot, seed=args.seed,
                             log_to_mlflow=not args.no_log)
    except LookupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"report of study {args.study!r}:\n  {files.html}\n  {files.markdown}\n"
          f"  {len(files.figures) // 2} figures in {files.html.parent / 'figures'}")
    return 0
