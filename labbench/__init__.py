"""The `labbench` command line: the top of the stack, above kernels, bench, ablations and analysis.

The library lives in those packages (``import bench``: `RunConfig`, `run`, `QuantOptimizer`;
``import ablations``; ``import analysis``); this package only assembles their subcommands
(labbench/cli.py) and is what ``labbench`` and ``python -m labbench`` run.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """``labbench ARGV``; returns the exit status (see labbench/cli.py)."""
    from labbench.cli import main as cli_main

    return cli_main(argv)
