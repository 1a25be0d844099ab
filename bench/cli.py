"""bench's subcommands of `labbench`: ``run``, ``speed``, ``kernels-bench`` and ``deploy-bench``
(and the model half of ``export``: `extend_export`).

`register` adds them to the command line that labbench/cli.py assembles; each command returns
its exit status and raises the errors `exit_statuses` names for bad input (exit 2, the message
``error: ...`` naming the field or file). A command imports what it runs on first use, so
``labbench --help`` pays for none of it.
"""

from __future__ import annotations

import argparse
import json
import tomllib
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from bench.config import FIELD_HELP, ConfigError, ConfigErrors, RunConfig

__all__ = ["UsageError", "add_config_flags", "config_from_args", "exit_statuses", "extend_export",
           "register"]

EXPERIMENT = "labbench-runs"


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

    if args.resume:
        return _resume(args)
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


def _resume(args: argparse.Namespace) -> int:
    """``labbench run --resume RUN_ID``: the run goes on from its last checkpoint, in the same
    MLflow run, with the configuration it was started with."""
    from mlflow.tracking import MlflowClient

    from bench.record import default_tracking_uri
    from bench.train import resume_recorded

    uri = args.tracking_uri or default_tracking_uri(args.root)
    client = MlflowClient(tracking_uri=uri)
    result = resume_recorded(client, args.resume, progress=not args.quiet)
    experiment = client.get_experiment(client.get_run(args.resume).info.experiment_id).name
    _print_summary(result.config, result.metrics, uri, (experiment, args.resume))
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
    from bench.speed import (
        PeersNotInstalled,
        format_speed_table,
        measure_diagnostics_cost,
        measure_speed,
    )
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
    try:
        rows = measure_speed(base, methods, steps=args.timed_steps, warmup=args.warmup,
                             peers=args.peers)
    except PeersNotInstalled as err:  # an optional extra the user can install: bad input
        raise UsageError(str(err)) from err
    print(format_speed_table(rows, base))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


def cmd_kernels_bench(args: argparse.Namespace) -> int:
    from kernels.bench import main as kernels_bench

    return kernels_bench(args.rest)


def cmd_deploy_bench(args: argparse.Namespace) -> int:
    from bench.deploy_bench import main as deploy_bench

    return deploy_bench(args.rest)


def extend_export(export: argparse.ArgumentParser) -> None:
    """Make ``labbench export`` (analysis': ``STUDY --out DIR``, a study's archive) also export a
    run's model: ``labbench export RUN_ID|RUN_DIR|FILE --out model.safetensors [--tag best]``.
    The argument decides (`bench.deploy.export_kind`); neither a run nor a study is exit 2."""
    study_command, study_statuses = export.get_default("command"), export.get_default("exit_statuses")
    export.add_argument("--tag", choices=("best", "final"), default="best",
                        help="a run's model: the best validation epoch's weights, on which its "
                        "test metrics were measured (best, the default; the final ones when the "
                        "best epoch is the last), or the weights at the end (final)")
    for action in export._actions:  # the positional and --out now name either kind
        if action.dest == "study":
            action.help = "a study name (its archive), or a run id, run folder or model file (its model)"
        elif action.dest == "out":
            action.metavar, action.help = "PATH", "archive folder (a study) or model file (a run)"
    export.description = (export.description or "") + (
        " Given an MLflow run id, a run's artifact folder or a model file instead of a study, it "
        "writes the run's model (safetensors, packed; docs/deploy.md) to --out FILE.")

    def command(args: argparse.Namespace) -> int:
        from bench.deploy import export_kind, export_model

        uri = args.tracking_uri
        db = Path(args.root).expanduser().resolve() / "mlflow.db"
        if uri is None and db.is_file():  # never create a run root for a mistyped argument
            uri = f"sqlite:///{db}"
        if export_kind(args.study, uri) == "study":
            return study_command(args)
        out = export_model(args.study, args.out, tracking_uri=uri, tag=args.tag)
        print(f"model of {args.study} ({args.tag}) in {out}: {out.stat().st_size / 1024:.1f} KiB\n"
              f"  load it with: bench.deploy.load({str(out)!r})")
        return 0

    def statuses() -> dict[type[BaseException], int]:
        from bench.deploy import ModelFileError

        return {**study_statuses(), LookupError: 2, ModelFileError: 2}

    export.set_defaults(command=command, exit_statuses=statuses)


def exit_statuses() -> dict[type[BaseException], int]:
    """bench's errors that are the user's to fix (exit 2); read by the `labbench` entry."""
    from bench.data import DatasetNotFoundError

    return {ConfigError: 2, UsageError: 2, DatasetNotFoundError: 2}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add bench's subcommands (``run``, ``speed``, ``kernels-bench``) to ``labbench``.

    Each sets ``command(args) -> exit status`` and ``exit_statuses``; the ``labbench`` entry
    (labbench/cli.py) parses, calls it and maps errors to exit statuses.
    """
    p = subparsers.add_parser("run", help="one training run, recorded in MLflow")
    p.add_argument("--config", help="TOML or JSON file of RunConfig fields (flags override it)")
    p.add_argument("--root", default="labbench-runs", help="run root (default ./labbench-runs)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///ROOT/mlflow.db)")
    p.add_argument("--experiment", default=EXPERIMENT, help=f"MLflow experiment ({EXPERIMENT})")
    p.add_argument("--run-name", help="MLflow run name")
    p.add_argument("--no-record", action="store_true", help="do not record in MLflow")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--resume", metavar="RUN_ID", help="continue that run from its last checkpoint "
                   "(checkpoint/last.pt, written after every epoch), in the same MLflow run")
    add_config_flags(p)
    p.set_defaults(command=cmd_run, exit_statuses=exit_statuses)

    p = subparsers.add_parser("speed", help="median training-step time per method, ratio to fp")
    p.add_argument("--methods", default="fp,bc,bwn,lab,lat,laq",
                   help="comma-separated methods (fp is added as the baseline)")
    p.add_argument("--timed-steps", type=int, default=20, help="timed steps per method")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--json", help="also write the rows as JSON here")
    p.add_argument("--peers", action="store_true",
                   help="also time torchao's PARQ (1-bit LSBQuantizer + ProxHardQuant) on the same "
                   "model, interleaved (needs: pip install 'labbench[peers]')")
    p.add_argument("--diagnostics", action="store_true",
                   help="instead: the cost of run's gradient diagnostics (raw and received "
                   "gradient norms) for --method, a diagnostic step against a plain one")
    p.add_argument("--config", help="TOML or JSON file of RunConfig fields")
    add_config_flags(p)
    p.set_defaults(command=cmd_speed, exit_statuses=exit_statuses)

    # kernels/bench.py parses its own flags (kernels imports nothing of ours): they pass through.
    p = subparsers.add_parser("kernels-bench", add_help=False, help="time the proximal-step "
                              "kernels: eager, compile, Triton (labbench kernels-bench --help)")
    p.set_defaults(command=cmd_kernels_bench, exit_statuses=exit_statuses, pass_through=True)

    # bench/deploy_bench.py parses its own flags (labbench deploy-bench --help).
    p = subparsers.add_parser("deploy-bench", add_help=False, help="inference latency and file size "
                              "of fp32, int8 and packed 1/2-bit models (labbench deploy-bench --help)")
    p.set_defaults(command=cmd_deploy_bench, exit_statuses=exit_statuses, pass_through=True)
