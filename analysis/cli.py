"""`labbench report` and `labbench export`: a study's report, and its archive.

Kept free of labbench's other packages: the run root's database is found by the layout
convention (``<root>/mlflow.db``), see docs/mlflow-layout.md. Bad input (a missing study,
archive or root, studies that cannot be combined, an altered archive) exits 2 with ``error: ...``
and creates nothing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["export_main", "main"]


def tracking_uri_for(root: str) -> str:
    """``sqlite:///<root>/mlflow.db`` for a run root (absolute)."""
    return f"sqlite:///{Path(root).expanduser().resolve() / 'mlflow.db'}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``labbench report``; returns the exit status (2 on bad input)."""
    parser = argparse.ArgumentParser(prog="labbench report", description=(
        "Turn a study's runs into statistics, figures and a Markdown + HTML report, and log the "
        "report to the study's parent run. Several studies with the same objective are analysed "
        "as one (a `study` column says where each run came from); --from reads archives written "
        "by `labbench export` instead of MLflow."))
    parser.add_argument("study", nargs="*", help="study name(s) (the MLflow experiment)")
    parser.add_argument("--from", dest="archives", action="append", metavar="DIR", default=[],
                        help="an archive folder instead of a study name (repeat to combine)")
    parser.add_argument("--root", default="labbench-runs", help="run root (default ./labbench-runs)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///ROOT/mlflow.db)")
    parser.add_argument("--out", help="output folder (default ROOT/reports/STUDY; with one --from, "
                        "the archive folder)")
    parser.add_argument("--n-boot", type=int, default=10_000, help="bootstrap resamples (10000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (0)")
    parser.add_argument("--no-log", action="store_true", help="do not log the report to MLflow")
    parser.add_argument("--conditional", choices=("fold", "factor"), default="fold",
                        help="axes only one method varies ([grid.when.METHOD]): fold them into "
                        "the method factor (laq:4; default) or keep them as factors of their own")
    args = parser.parse_args(argv)
    if args.n_boot < 100:
        return _error(f"--n-boot: expected >= 100, got {args.n_boot}")
    if bool(args.study) == bool(args.archives):
        return _error("give study names or --from DIR archives (one of the two)")

    from analysis._sources import CombineError, combine_studies
    from analysis.archive import ArchiveError, load_archive
    from analysis.report import build_report, render_report

    uri = args.tracking_uri or tracking_uri_for(args.root)
    try:
        if len(args.study) == 1:
            out = Path(args.out) if args.out else Path(args.root) / "reports" / _safe(args.study[0])
            files = build_report(args.study[0], uri, out, n_boot=args.n_boot, seed=args.seed,
                                 log_to_mlflow=not args.no_log, conditional=args.conditional)
        else:
            frames = ([load_archive(d) for d in args.archives] if args.archives
                      else [_load(name, uri, args.conditional) for name in args.study])
            frame = frames[0] if len(frames) == 1 else combine_studies(frames)
            if args.out:
                out = Path(args.out)
            elif len(args.archives) == 1:
                out = Path(args.archives[0])
            else:
                out = Path(args.root) / "reports" / "+".join(_safe(f.attrs["study"]) for f in frames)
            files = render_report(frame, out, n_boot=args.n_boot, seed=args.seed)
    except (LookupError, ArchiveError, CombineError) as err:
        return _error(str(err))
    name = ", ".join(args.study) if args.study else ", ".join(args.archives)
    print(f"report of {name}:\n  {files.html}\n  {files.markdown}\n"
          f"  {len(files.figures) // 2} figures in {files.html.parent / 'figures'}")
    return 0


def export_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``labbench export``; returns the exit status (2 on bad input)."""
    parser = argparse.ArgumentParser(prog="labbench export", description=(
        "Write a small, diff-friendly archive of a study (spec, runs.csv, curves.csv, env.csv, "
        "the last gradient-through-time profile of each run, and a manifest with sha256 hashes) "
        "that `labbench report --from DIR` renders without MLflow. Files of a previous archive in "
        "DIR are replaced; other files there are left alone."))
    parser.add_argument("study", help="study name (the MLflow experiment)")
    parser.add_argument("--root", default="labbench-runs", help="run root (default ./labbench-runs)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///ROOT/mlflow.db)")
    parser.add_argument("--out", required=True, metavar="DIR", help="archive folder")
    args = parser.parse_args(argv)

    from analysis.archive import ArchiveError, export_study

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        return _error(f"--out {out}: exists and is not a folder")
    try:
        manifest = export_study(args.study, args.tracking_uri or tracking_uri_for(args.root), out)
    except (LookupError, ArchiveError) as err:
        return _error(str(err))
    rows = manifest["rows"]
    size = sum((out / name).stat().st_size for name in [*manifest["files"], "manifest.json"])
    print(f"archive of study {args.study!r} in {out}: {rows['runs.csv']} runs, "
          f"{rows['curves.csv']} curve points, {len(manifest['files'])} files, {size / 1024:.1f} KiB\n"
          f"  report it with: labbench report --from {out}")
    return 0


def _load(study: str, uri: str, conditional: str = "fold"):
    from analysis.runs import load_runs

    return load_runs(study, uri, conditional=conditional)


def _safe(name: str) -> str:
    """A study name as one folder name (never a path that leaves the reports folder)."""
    cleaned = "".join(c if c.isalnum() or c in "._-" else "_" for c in name).lstrip(".")
    return cleaned or "_"


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2
