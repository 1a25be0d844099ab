"""The `labbench` command line.

Subcommands import their packages lazily, so `labbench run` does not pay for the harness or the
analysis stack. Exit status: 0 done, 2 bad input (a message ``error: ...`` naming the field or
file), 1 a failure while running.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from bench.config import FIELD_HELP, ConfigError, ConfigErrors, RunConfig

__all__ = ["UsageError", "main"]

EXPERIMENT = "labbench-runs"
VERBOSE_FLAGS = ("-v", "--verbose")


class UsageError(Exception):
    """Bad input from the user: exit status 2."""


# --- RunConfig <-> flags ----------------------------------------------------------------------
def _parser_for(annotation: str) -> Callable[[str], Any]:
    kinds = annotation.replace(" ", "").split("|")

    def parse(text: str) -> Any:
        if "None" in kinds and text.lower() == "none":
            return None
        if "int" in kinds:
            try:
                return int(text)
            except ValueError:
                if "float" not in kinds and "str" not in kinds:
                    raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if "float" in kinds:
            try:
                return float(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        return text

    return parse


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One ``--field-name`` flag per RunConfig field (default: unset, i.e. the config default)."""
    group = parser.add_argument_group("run configuration (RunConfig fields)")
    for f in fields(RunConfig):
        if f.name.startswith("_"):
            continue
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f"cfg_{f.name}", metavar="V",
                           type=_parser_for(f.type), default=argparse.SUPPRESS,
                           help=FIELD_HELP[f.name] + ("" if f.default is None
                                                      else f" (default {f.default!r})"))


def read_config_file(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{path}: no such config file")
    try:
        text = p.read_text(encoding="utf-8")
        data = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
    except UnicodeDecodeError as err:
        raise UsageError(f"{path}: not a text file ({err.reason} at byte {err.start}); expected "
                         "TOML or JSON") from None
    except OSError as err:
        raise UsageError(f"{path}: cannot read: {err.strerror or err}") from None
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
        raise UsageError(f"{path}: cannot parse: {err}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a table of RunConfig fields")
    return data


def config_from_args(args: argparse.Namespace) -> RunConfig:
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(read_config_file(args.config))
    values.update({k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_")})
    where = f"{args.config}: " if getattr(args, "config", None) else ""
    return RunConfig.from_dict(values, where=where)


# --- subcommands ------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from bench.preflight import check_name, check_root, check_runnable
    from bench.record import default_tracking_uri, ensure_experiment, mlflow_run
    from bench.train import run

    config = config_from_args(args)
    if not args.no_record:  # names and folders that become paths, before any is made
        check_name(args.experiment, "--experiment")
        if args.tracking_uri is None:
            check_root(args.root)
    problems = check_runnable(config)
    if problems:
        raise ConfigErrors(problems)
    if args.no_record:
        result = run(config, progress=not args.quiet)
        _print_summary(config, result.metrics, None, None)
        return 0
    from mlflow.tracking import MlflowClient

    uri = args.tracking_uri or default_tracking_uri(args.root)
    client = MlflowClient(tracking_uri=uri)
    exp_id = ensure_experiment(client, args.experiment, uri)
    name = args.run_name or f"{config.method}-{config.model}-{config.dataset}-s{config.seed}"
    with mlflow_run(client, exp_id, run_name=name,
                    tags={"labbench.kind": "run", "labbench.cell": config.cell_id(),
                          "labbench.seed": str(config.seed)}) as recorder:
        result = run(config, recorder, progress=not args.quiet)
    _print_summary(config, result.metrics, uri, (args.experiment, recorder.run_id))
    return 0


def _print_summary(config: RunConfig, metrics: dict[str, float], uri: str | None,
                   where: tuple[str, str] | None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"{config.method} / {config.model} / {config.dataset} (seed {config.seed})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    keys = [k for k in metrics if k.startswith(("test_", "best_val_"))] + [
        "best_epoch", "epochs_run", "diverged", "step_ms", "wall_s", "bits_per_weight",
        "packed_bytes", "state_mem_mb", "peak_mem_mb"]
    for k in keys:
        v = metrics[k]
        table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    console.print(table)
    if metrics.get("diverged"):
        console.print("[yellow]the loss became NaN/inf: the run stopped early (diverged=1)[/]")
    if where:
        experiment, run_id = where
        print(f"recorded: experiment {experiment}, run {run_id}\n  in {uri}")
        if uri.startswith("sqlite:"):
            print(f"browse:   mlflow ui --backend-store-uri {uri}")


def cmd_speed(args: argparse.Namespace) -> int:
    from bench.speed import format_speed_table, measure_diagnostics_cost, measure_speed
    from bench.train import DIAG_EVERY

    base = config_from_args(args)
    if args.diagnostics:
        row = measure_diagnostics_cost(base, steps=args.timed_steps, warmup=args.warmup)
        print(f"labbench speed --diagnostics: {base.model} hidden={base.hidden} "
              f"method={row['method']} clip={row['clip']}, {row['steps']} interleaved steps each\n"
              f"plain step {row['plain_ms']:.1f} ms, diagnostic step {row['diag_ms']:.1f} ms "
              f"({row['diag_ratio']:.3f}x); one step in {DIAG_EVERY} is diagnostic: "
              f"{row['amortised_ratio']:.3f}x overall")
        if args.json:
            Path(args.json).write_text(json.dumps(row, indent=2))
        return 0
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    rows = measure_speed(base, methods, steps=args.timed_steps, warmup=args.warmup)
    print(format_speed_table(rows, base))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


# Subcommands of the packages above bench: (module, function, help); imported on use.
EXTERNAL: dict[str, tuple[str, str, str]] = {
    "kernels-bench": ("kernels.bench", "main", "time the proximal-step kernels: eager, compile, Triton"),
    "report": ("analysis.cli", "main", "statistics, figures and an HTML report of a study "
               "(or several, or an archive: --from DIR)"),
    "export": ("analysis.cli", "export_main", "a small archive of a study (CSV + JSON + manifest)"),
    "findings": ("analysis.findings", "main", "render docs/findings.md, every number computed "
                 "from the published archives"),
    "studies": ("ablations.cli", "studies_main", "the shipped study files: size and estimated cost"),
    "grid": ("ablations.cli", "grid_main", "create or resume a study and run it with local workers"),
    "worker": ("ablations.cli", "worker_main", "join a running study (from any machine)"),
    "status": ("ablations.cli", "status_main", "a study's cells: done, running, queued, failed"),
    "retry-failed": ("ablations.cli", "retry_failed_main", "queue a study's failed cells again"),
    "repair": ("ablations.cli", "repair_main", "fail trials whose worker is gone; queue them again"),
    "demo": ("bench.cli", "demo_main", "a small real study on the Python stdlib, then its report"),
}


def demo_main(argv: Sequence[str] | None = None) -> int:
    """``labbench demo``: the harness runs the demo study, then analysis renders its report.

    Joined here because the CLI sits on top of both packages (DESIGN.md: ablations does not
    import analysis).
    """
    from ablations.cli import demo_main as run_demo

    def report(study: str, root: Path, tracking_uri: str) -> None:
        from analysis.report import build_report

        files = build_report(study, tracking_uri, Path(root) / "reports" / study)
        print(f"report: {files.html}\n        {files.markdown}")

    return run_demo(argv, report=report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="labbench", description=(
        "Loss-aware binarization and quantization of neural networks: runs, studies, reports."))
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="one training run, recorded in MLflow")
    p.add_argument("--config", help="TOML or JSON file of RunConfig fields (flags override it)")
    p.add_argument("--root", default="labbench-runs", help="run root (default ./labbench-runs)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///ROOT/mlflow.db)")
    p.add_argument("--experiment", default=EXPERIMENT, help=f"MLflow experiment ({EXPERIMENT})")
    p.add_argument("--run-name", help="MLflow run name")
    p.add_argument("--no-record", action="store_true", help="do not record in MLflow")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_flags(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("speed", help="median training-step time per method, ratio to fp")
    p.add_argument("--methods", default="fp,bc,bwn,lab,lat,laq",
                   help="comma-separated methods (fp is added as the baseline)")
    p.add_argument("--timed-steps", type=int, default=20, help="timed steps per method")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--json", help="also write the rows as JSON here")
    p.add_argument("--diagnostics", action="store_true",
                   help="instead: the cost of run's gradient diagnostics (raw and received "
                   "gradient norms) for --method, a diagnostic step against a plain one")
    p.add_argument("--config", help="TOML or JSON file of RunConfig fields")
    add_config_flags(p)
    p.set_defaults(func=cmd_speed)

    for name, (module, func, help_text) in EXTERNAL.items():
        p = sub.add_parser(name, help=help_text, add_help=False)
        p.set_defaults(external=(module, func))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    verbose = args.verbose or any(a in VERBOSE_FLAGS for a in rest)  # -v after the subcommand
    rest = [a for a in rest if a not in VERBOSE_FLAGS]
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from bench.data import DatasetNotFoundError

    try:
        if hasattr(args, "external"):
            module, func = args.external
            target = getattr(__import__(module, fromlist=[func]), func)
            return int(target(rest) or 0)
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return int(args.func(args) or 0)
    except (ConfigError, UsageError, DatasetNotFoundError) as err:
        for problem in getattr(err, "errors", [err]):  # every problem found, one line each
            print(f"error: {problem}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

