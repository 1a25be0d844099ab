"""`labbench`: one command line assembled from each package's subcommands.

Each package registers its own subcommands (`bench.cli.register`: run, speed, kernels-bench;
`ablations.cli.register`: grid, worker, status, retry-failed, repair, studies, demo;
`analysis.cli.register`: report, export, findings). This module is the only one that imports
them all (README.md, "Layout": no package imports one above it), and the one place
where errors become exit statuses:

- 0 done; a command's own status otherwise (1: a failure while running, e.g. a failed cell);
- 2 bad input: argparse's usage errors, and the errors each package's ``exit_statuses()`` names
  (printed as ``error: ...``, one line per problem, naming the field, file or key);
- 130 interrupted (Ctrl-C);
- anything else is a bug: its traceback, and Python's status 1.

``-v``/``--verbose`` (INFO logging) may come before or after the subcommand.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import ablations.cli
import analysis.cli
import bench.cli

__all__ = ["build_parser", "main"]

VERBOSE_FLAGS = ("-v", "--verbose")


def demo_report(study: str, root: Path, tracking_uri: str) -> None:
    """``labbench demo``'s last step: analysis renders the report of the study ablations ran."""
    from analysis.report import build_report

    files = build_report(study, tracking_uri, Path(root) / "reports" / study)
    print(f"report: {files.html}\n        {files.markdown}")


def build_parser() -> argparse.ArgumentParser:
    """The ``labbench`` parser: each package's subcommands, in the order of the data flow."""
    parser = argparse.ArgumentParser(prog="labbench", description=(
        "Loss-aware binarization and quantization of neural networks: runs, studies, reports."))
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    subparsers = parser.add_subparsers(dest="subcommand", metavar="COMMAND", required=True)
    bench.cli.register(subparsers)
    ablations.cli.register(subparsers, demo_report=demo_report)
    analysis.cli.register(subparsers)
    bench.cli.extend_export(subparsers.choices["export"])  # a run's model, or a study's archive
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``labbench ARGV`` (default ``sys.argv[1:]``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args, rest = parser.parse_known_args(argv)
    except SystemExit as usage:  # --help (0) or a usage error (2), already printed by argparse
        return int(usage.code or 0)
    verbose = args.verbose or any(a in VERBOSE_FLAGS for a in rest)  # -v after the subcommand
    rest = [a for a in rest if a not in VERBOSE_FLAGS]
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "pass_through", False):  # a command that parses its own flags
        args.rest = rest
    elif rest:
        try:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        except SystemExit as usage:
            return int(usage.code or 0)
    try:
        return int(args.command(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        status = _exit_status(err, args.exit_statuses())
        if status is None:
            raise
        for message in _messages(err):
            print(f"error: {message}", file=sys.stderr)
        return status


def _exit_status(err: Exception, statuses: dict[type[BaseException], int]) -> int | None:
    """The status of the most specific error class in ``statuses`` that ``err`` is, or None."""
    for kind in type(err).__mro__:
        if kind in statuses:
            return statuses[kind]
    return None


def _messages(err: Exception) -> list[str]:
    """What to print for a bad-input error: each problem of one that only lists its ``errors``
    (bench's ConfigErrors) on a line of its own; otherwise the message as written (a study
    file's errors come with a header naming the file)."""
    problems = [str(e) for e in getattr(err, "errors", [err])]
    return problems if str(err) == "\n".join(problems) else [str(err)]
