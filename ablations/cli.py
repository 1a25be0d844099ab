"""ablations' subcommands of `labbench`: ``grid``, ``studies``, ``worker``, ``status``,
``retry-failed``, ``repair`` and ``demo``.

`register` adds them to the command line that labbench/cli.py assembles. Each command returns
its exit status: 0 done, 1 a failure while running (a cell failed, a storage could not be
reached: `CommandFailed`); the errors `exit_statuses` names are bad input (exit 2, the message
``error: ...`` names the file and key); interrupted is 130. Bad input is found before anything is
created in the run root.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ablations.preflight import check_location, check_study
from ablations.spec import StudyError, StudySpec, parse_study
from ablations.storage import DEFAULT_ROOT, Heartbeat, Location, StorageError, masked, resolve_location

__all__ = ["CommandFailed", "after_demo", "exit_statuses", "register"]

DEMO_STUDY = Path(__file__).resolve().parent / "studies" / "demo.toml"


class CommandFailed(Exception):
    """A failure while running that is not the input's fault (a storage that cannot be reached):
    exit status 1, with the message."""


def exit_statuses() -> dict[type[BaseException], int]:
    """ablations' errors and the exit status each means; read by the `labbench` entry."""
    from ablations.study import StudyConflict, StudyNotFound

    return {StudyError: 2, StorageError: 2, StudyNotFound: 2, StudyConflict: 2, CommandFailed: 1}


def _where_args(p: argparse.ArgumentParser, *, launcher: bool = False) -> None:
    p.add_argument("--root", default=DEFAULT_ROOT, help="run root: the Optuna journal, "
                   "mlflow.db and logs (default ./labbench-runs)")
    p.add_argument("--storage", help="Optuna storage instead of ROOT/optuna.journal: "
                   "postgresql+psycopg2://USER:PASS@HOST/DB (several machines), a journal file "
                   "path, or sqlite:///FILE (one worker); default $LABBENCH_STORAGE")
    p.add_argument("--tracking-uri", help="MLflow tracking URI " + (
        "(default sqlite:///ROOT/mlflow.db; http://HOST:PORT for an mlflow server)" if launcher
        else "(default: the one the study was created with)"))


def _location(args: argparse.Namespace) -> Location:
    return resolve_location(root=args.root, storage=args.storage, tracking_uri=args.tracking_uri)


def _load(args: argparse.Namespace) -> Any:
    from ablations.study import load_handle

    location = _location(args)
    try:
        return load_handle(args.study, location)
    except (StudyError, LookupError, ValueError):
        raise
    except Exception as err:  # a database that cannot be reached
        raise CommandFailed(f"cannot open the Optuna storage {masked(location.storage_url)}: {err}") \
            from None


def _positive(name: str, value: int | None, minimum: int = 1) -> None:
    if value is not None and value < minimum:
        raise StorageError(f"{name}: expected an integer >= {minimum}, got {value}")


# --- grid / demo -------------------------------------------------------------------------------
def _grid_parser(subparsers: argparse._SubParsersAction, name: str, help_text: str,
                 description: str, *, study_file: bool) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help=help_text, description=description)
    if study_file:
        p.add_argument("study_file", metavar="STUDY.toml", help="the study file, or the name of a "
                       "shipped study (`labbench studies` lists them)")
    _where_args(p, launcher=True)
    p.add_argument("--workers", type=int, default=2 if not study_file else 1,
                   help="local worker processes (0: create the study only, start workers "
                   "elsewhere with `labbench worker`)")
    p.add_argument("--threads", type=int, help="torch threads per worker (default cores // workers)")
    p.add_argument("--heartbeat", type=int, default=30, help="RDB storages: seconds between "
                   "heartbeats; a trial silent for 4x this is failed and re-queued (default 30)")
    p.add_argument("--max-retry", type=int, default=2, help="times a cell whose worker died is "
                   "re-queued automatically (default 2)")
    p.add_argument("--no-checkpoints", action="store_true", help="runs keep no per-epoch "
                   "checkpoint (ROOT/checkpoints/STUDY/), so a retried trial starts from scratch")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _run_study(spec: StudySpec, args: argparse.Namespace, *, where: bool = True) -> int:
    _positive("--workers", args.workers, 0)
    _positive("--threads", args.threads)
    _positive("--heartbeat", args.heartbeat)
    _positive("--max-retry", args.max_retry, 0)
    location = _location(args)
    if location.single_process and args.workers > 1:
        raise StorageError(f"--storage {masked(location.storage_url)}: SQLite cannot serve several "
                           "workers (use the default journal file, or PostgreSQL)")
    if location.single_process:
        print("warning: an SQLite Optuna storage is for one worker only", file=sys.stderr)
    if location.tracking_uri is None and location.kind == "rdb" and args.workers == 0:
        print("warning: no --tracking-uri: runs go to a SQLite file on this machine, which "
              "workers on other machines cannot reach", file=sys.stderr)
    check_location(location)  # folders that can be made and written, then what each run needs
    check_study(spec)
    # the input is good: from here on things are created
    import optuna

    from ablations.launcher import launch
    from ablations.state import repair, requeue_failed, stale_trials
    from ablations.study import create_or_resume, mlflow_client, optuna_study
    from ablations.worker import CHECKPOINTS_ATTR

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the launcher says what it does itself
    location.root.mkdir(parents=True, exist_ok=True)
    if location.kind == "journal":
        Path(location.storage_url).parent.mkdir(parents=True, exist_ok=True)
    heartbeat = Heartbeat(args.heartbeat, 4 * args.heartbeat, args.max_retry)
    notes: list[str] = []
    try:
        handle, created = create_or_resume(spec, location, heartbeat, notes)
    except (StudyError, LookupError, ValueError):
        raise
    except Exception as err:
        raise CommandFailed(f"cannot create the study in {masked(location.storage_url)} / "
                    f"{masked(location.tracking_uri or location.default_tracking_uri)}: {err}") \
            from None
    study = optuna_study(handle)
    study.set_user_attr(CHECKPOINTS_ATTR, not args.no_checkpoints)  # read by every worker
    print(f"study {spec.name}: {'created' if created else 'resuming'}, {spec.n_runs} runs "
          f"({'cells x seeds' if spec.mode == 'grid' else 'trials x seeds'})\n"
          f"  storage  {masked(location.storage_url)}\n  tracking {masked(handle.tracking_uri)}")
    for note in notes:
        print(f"  {note}")
    if not created:
        client = mlflow_client(handle.tracking_uri)
        mended = repair(study, client, stale_trials(study), max_retry=None)
        again = requeue_failed(study, spec, only_interrupted=True)
        if mended or again:
            print(f"  queued again: {len(mended)} trial(s) of workers that are gone, "
                  f"{len(again)} interrupted trial(s)")
    if args.workers == 0:
        print(f"no local workers; on each machine run:\n  labbench worker {spec.name} --storage "
              f"{masked(location.storage_url)} --tracking-uri {masked(handle.tracking_uri)}")
        return 0
    code = launch(handle, workers=args.workers, threads=args.threads, quiet=args.quiet)
    if where:
        _print_where(handle)
    return code


def _print_where(handle: Any) -> None:
    uri = handle.tracking_uri
    print(f"runs: MLflow experiment {handle.name!r} at {masked(uri)}")
    if uri.startswith("sqlite:///"):
        print(f"open: mlflow ui --backend-store-uri {uri}   (then http://127.0.0.1:5000)")


def _grid(args: argparse.Namespace) -> int:
    from ablations.catalog import find_study_file

    return _run_study(parse_study(find_study_file(args.study_file)), args)


def _studies(args: argparse.Namespace) -> int:
    import json

    from ablations.catalog import cost_table, format_costs

    _positive("--workers", args.workers)
    costs, probe_s = cost_table(args.names, probe=not args.no_probe)
    if args.json:
        print(json.dumps([c.to_dict() for c in costs], indent=2))
    else:
        print(format_costs(costs, args.workers, probe_s))
    return 0


DemoReport = Callable[[str, Path, str], None]


def after_demo(study_name: str, root: Path, tracking_uri: str, report: DemoReport | None) -> int:
    """What `labbench demo` does once its study is done: render its report, say where things are.

    ``report(study_name, root, tracking_uri)`` renders the analysis report; the top CLI
    (labbench/cli.py) passes analysis' one, since ablations does not import analysis (README.md, "Layout").
    A report that fails leaves the recorded study as it is, says how to retry, and makes the
    exit status 1.
    """
    code = 0
    if report is not None:
        try:
            report(study_name, root, tracking_uri)
        except Exception as err:  # the runs are recorded: say how to retry
            print(f"error: the report could not be rendered ({type(err).__name__}: {err}); "
                  f"retry with: labbench report {study_name} --root {root}", file=sys.stderr)
            code = 1
    print(f"\ndemo study {study_name!r} is in {root}\n"
          f"  browse the runs: mlflow ui --backend-store-uri {tracking_uri}\n"
          f"  report:          labbench report {study_name} --root {root}")
    return code


def _demo(args: argparse.Namespace, report: DemoReport | None = None) -> int:
    spec = parse_study(DEMO_STUDY)
    code = _run_study(spec, args, where=False)
    if code == 0:
        location = _location(args)
        code = after_demo(spec.name, location.root,
                          location.tracking_uri or location.default_tracking_uri, report)
    return code


# --- worker / status / repair / retry-failed ---------------------------------------------------
def _worker(args: argparse.Namespace) -> int:
    from ablations.worker import run_worker

    _positive("--threads", args.threads)
    handle = _load(args)
    code = run_worker(handle, threads=args.threads, isolate=not args.in_process,
                      die_with_parent=args.die_with_parent, quiet=args.quiet)
    # Everything is recorded: end the process here. Tearing down torch, Triton and MLflow takes
    # seconds and fills the log with nanobind's leak reports, and nothing is left to flush.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _status(args: argparse.Namespace) -> int:
    from ablations.progress import print_status
    from ablations.state import stale_trials, summarize
    from ablations.study import optuna_study

    handle = _load(args)
    study = optuna_study(handle)
    summary = summarize(study, handle.spec)
    print_status(handle, summary, stale_trials(study))
    return 0


def _repair(args: argparse.Namespace) -> int:
    from ablations.state import close_orphan_runs, repair, stale_trials
    from ablations.study import mlflow_client, optuna_study

    handle = _load(args)
    study = optuna_study(handle)
    stale = stale_trials(study, force=args.force, stale_after_s=args.stale_after)
    for trial, reason in stale:
        print(f"stale: trial {trial.number} {dict(trial.params)}: {reason}")
    if args.dry_run:
        return 0
    client = mlflow_client(handle.tracking_uri)
    requeued = repair(study, client, stale)
    closed = close_orphan_runs(study, client)
    print(f"repair: {len(stale)} stale trial(s) failed, {len(requeued)} cell(s) queued again, "
          f"{closed} orphan MLflow run(s) closed"
          + (f"; run `labbench grid` or `labbench worker {handle.name}` to run them"
             if requeued else ""))
    return 0


def _retry_failed(args: argparse.Namespace) -> int:
    from ablations.launcher import launch
    from ablations.state import requeue_failed
    from ablations.study import optuna_study

    _positive("--workers", args.workers, 0)
    handle = _load(args)
    requeued = requeue_failed(optuna_study(handle), handle.spec)
    for trial in requeued:
        print(f"queued again: trial {trial.number} {dict(trial.params)}")
    print(f"retry-failed: {len(requeued)} failed cell(s) queued again")
    if not requeued or args.workers == 0:
        return 0
    code = launch(handle, workers=args.workers, threads=args.threads, quiet=args.quiet)
    _print_where(handle)
    return code


def _named_parser(subparsers: argparse._SubParsersAction, name: str, help_text: str,
                  description: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help=help_text, description=description)
    p.add_argument("study", metavar="STUDY_NAME", help="the study's name ([study].name)")
    _where_args(p)
    return p


def register(subparsers: argparse._SubParsersAction, *, demo_report: DemoReport | None = None
             ) -> None:
    """Add ablations' subcommands to ``labbench``.

    Each sets ``command(args) -> exit status`` and ``exit_statuses``; the ``labbench`` entry
    (labbench/cli.py) parses, calls it and maps errors to exit statuses. ``demo_report(study,
    root, tracking_uri)`` renders the demo study's report once it is done (the entry passes
    analysis' one; ablations does not import analysis).
    """
    commands: dict[str, Callable[[argparse.Namespace], int]] = {}
    _grid_parser(subparsers, "grid", "create or resume a study and run it with local workers",
                 "Create (or resume) a study and run it with local workers, with a progress bar.",
                 study_file=True)
    commands["grid"] = _grid
    studies = subparsers.add_parser("studies", help="the shipped study files: size and "
                                    "estimated cost", description=(
        "The shipped study files (ablations/studies/): cells x seeds, runs, training steps, and "
        "the training cost estimated on this machine from one timed step per cell "
        "(docs/harness.md, 'Shipped studies'). Run one by name: labbench grid NAME."))
    studies.add_argument("names", nargs="*", metavar="NAME", help="only these studies (default all)")
    studies.add_argument("--no-probe", action="store_true", help="sizes only: time nothing")
    studies.add_argument("--workers", type=int, default=2, help="workers the wall time assumes (2)")
    studies.add_argument("--json", action="store_true", help="print the rows as JSON")
    commands["studies"] = _studies
    worker = _named_parser(subparsers, "worker", "join a running study (from any machine)",
                           "Join a study and run its cells until none is left (from any machine "
                           "that reaches its storage and tracking server).")
    worker.add_argument("--threads", type=int, help="torch threads per run (default: torch's)")
    worker.add_argument("--in-process", action="store_true",
                        help="run trials in this process instead of a forked one (debugging)")
    worker.add_argument("--die-with-parent", action="store_true", help=argparse.SUPPRESS)
    worker.add_argument("--quiet", action="store_true", help="log warnings only")
    commands["worker"] = _worker
    _named_parser(subparsers, "status", "a study's cells: done, running, queued, failed",
                  "Cells done, running, queued and failed.")
    commands["status"] = _status
    retry = _named_parser(subparsers, "retry-failed", "queue a study's failed cells again",
                          "Queue the failed cells again and run them.")
    retry.add_argument("--workers", type=int, default=1, help="local workers (0: only queue them)")
    retry.add_argument("--threads", type=int, help="torch threads per worker")
    retry.add_argument("--quiet", action="store_true", help="no progress bar")
    commands["retry-failed"] = _retry_failed
    repair = _named_parser(subparsers, "repair", "fail trials whose worker is gone; queue them "
                           "again", "Fail trials whose worker is gone (their MLflow runs too) and "
                           "queue their cells again.")
    repair.add_argument("--force", action="store_true", help="treat every running trial as "
                        "stale (when no worker of the study is running anywhere)")
    repair.add_argument("--stale-after", type=float, metavar="SECONDS", help="also treat trials "
                        "running longer than this as stale, on any host")
    repair.add_argument("--dry-run", action="store_true", help="only list the stale trials")
    commands["repair"] = _repair
    _grid_parser(subparsers, "demo", "a small real study on the Python stdlib, then its report",
                 f"Run the demo study ({DEMO_STUDY.name}: fp, bc, bwn, lab x 5 seeds, a small "
                 "LSTM on the Python standard library; about 3 minutes on 2 cores), then render its "
                 "report.", study_file=False)
    commands["demo"] = functools.partial(_demo, report=demo_report)
    for name, command in commands.items():
        subparsers.choices[name].set_defaults(command=command, exit_statuses=exit_statuses)
