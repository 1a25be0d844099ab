"""A worker: joins a study and runs trials until no cell is left to start.

Every worker rebuilds the same sampler from the stored spec (`ablations.study.optuna_study`) and
calls ``study.optimize`` without ``n_trials``; a callback stops it as soon as nothing is left to
start (no queued trial, no grid cell never drawn), so workers do not re-run a cell at the grid's
tail. On an RDB storage with a heartbeat a worker with nothing left stays while other workers'
trials run: if one of them stops beating (its machine died), this worker fails it, Optuna's retry
callback queues it again, and this worker runs it.

The worker that finds the study finished (nothing left to start, no trial running) records the
outcome on the MLflow parent run and ends it (`ablations.tracking.finish_parent`), so a study run
by ``labbench worker`` alone, with no launcher, still gets its summary and duration.

Checkpoints: each run keeps its per-epoch checkpoint in ``<root>/checkpoints/<study>/`` (one file
per cell x seed, deleted when the run is over), so a trial retried after its worker died goes on
from its last epoch (`ablations.objective`). A study created or resumed with ``labbench grid
--no-checkpoints`` (the study attribute `CHECKPOINTS_ATTR` false) keeps none.

Signals: Ctrl-C or SIGTERM kills the running run process, records the trial as interrupted
(FAIL, MLflow run KILLED) and stops; a second signal stops at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import signal
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from ablations.isolate import warm_up
from ablations.objective import Interrupts, Objective, resolve_run_fn
from ablations.state import has_work
from ablations.storage import masked
from ablations.study import StudyHandle, mlflow_client, optuna_study
from ablations.tracking import finish_parent, prepare_study

__all__ = ["CHECKPOINTS_ATTR", "checkpoint_dir", "run_worker"]

CHECKPOINTS_ATTR = "labbench.checkpoints"  # study user attribute: False turns checkpoints off

log = logging.getLogger("labbench.worker")


def checkpoint_dir(handle: StudyHandle, study: Any) -> Path | None:
    """Where this worker's runs keep their checkpoints: ``<root>/checkpoints/<study>``, the root
    being the journal's folder (a journal storage) or this worker's ``--root`` (a database); None
    when the study keeps none (`CHECKPOINTS_ATTR`)."""
    if study.user_attrs.get(CHECKPOINTS_ATTR, True) is False:
        return None
    location = handle.location
    root = Path(location.storage_url).parent if location.kind == "journal" else location.root
    return root / "checkpoints" / handle.spec.name


def run_worker(handle: StudyHandle, *, threads: int | None = None, isolate: bool = True,
               die_with_parent: bool = False, quiet: bool = False) -> int:
    """Run the study's trials in this process until none is left to start.

    Args:
        handle: the study (`ablations.study.load_handle`).
        threads: torch intra-op threads of each run (None: torch's default).
        isolate: run each trial in a forked process (see `ablations.isolate`).
        die_with_parent: stop (as on SIGTERM) when the launching process dies (Linux).
        quiet: log warnings only.

    Returns:
        0 when no work is left, 130 when interrupted.
    """
    # MLflow's telemetry fetches its config from a background thread as mlflow is imported; a run
    # forked while that thread is inside dlopen (SSL, DNS) dies in the dynamic loader. Off here.
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    if "mlflow" in sys.modules:
        from mlflow.telemetry.client import set_telemetry_client

        set_telemetry_client()
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING if quiet else optuna.logging.INFO)
    if not quiet and not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    interrupts = Interrupts()
    previous = {sig: signal.signal(sig, interrupts.handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    if die_with_parent:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    spec = handle.spec
    if isolate:
        warm_up()
    study = optuna_study(handle, heartbeat=True)
    client = mlflow_client(handle.tracking_uri)
    prepare_study(client, study, handle.experiment_id, handle.parent_run_id, spec)
    objective = Objective(spec=spec, client=client,
                          experiment_id=handle.experiment_id, parent_run_id=handle.parent_run_id,
                          run_fn=resolve_run_fn(), interrupts=interrupts, threads=threads,
                          isolate=isolate, checkpoint_dir=checkpoint_dir(handle, study))
    # What was imported so far lives as long as the worker: out of the collector's way, the
    # collection after each trial takes milliseconds instead of most of a second.
    gc.freeze()
    ran = [0]

    def after_trial(study: Any, trial: Any) -> None:
        ran[0] += 1
        if interrupts.requested or not has_work(study, spec):
            study.stop()

    log.info("worker %s:%d joined study %r (storage %s, tracking %s)", socket.gethostname(),
             os.getpid(), spec.name, masked(handle.location.storage_url), masked(handle.tracking_uri))
    poll_s = min(5, handle.heartbeat.interval_s)
    try:
        while not interrupts.requested:
            if has_work(study, spec):
                study.optimize(objective, catch=(Exception,), gc_after_trial=True,
                               callbacks=[after_trial])
                continue
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if not (running and handle.location.heartbeat_capable):
                break
            with warnings.catch_warnings():  # an experimental API in Optuna 5
                warnings.simplefilter("ignore")
                optuna.storages.fail_stale_trials(study)
            if not has_work(study, spec):
                time.sleep(poll_s)
    except KeyboardInterrupt:
        interrupts.requested += 1
    finally:
        interrupts.marking = False
        for sig, old in previous.items():
            signal.signal(sig, old)
    if not interrupts.requested and not has_work(study, spec) \
            and not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        try:
            finish_parent(client, study, spec, handle.parent_run_id)
        except Exception as err:  # the runs are recorded; the summary can be redone
            log.warning("could not record the study's outcome on its parent run: %s", err)
    log.info("worker %d %s after %d trial(s)", os.getpid(),
             "interrupted" if interrupts.requested else "done: no cell left to start", ran[0])
    return 130 if interrupts.requested else 0
