"""The launcher: start N local worker processes for a study and watch them with a progress bar.

Workers are ``python -m labbench worker NAME`` subprocesses (each with ``max(1, cores // N)`` torch
threads), in their own session so that Ctrl-C reaches the launcher only; the launcher forwards one
SIGINT to each (they end their runs and record them as interrupted), and a second Ctrl-C kills
them. A worker that dies otherwise (killed, out of memory) has its trial failed and re-queued here,
and the launcher starts new workers while queued cells remain (at most ``max_retry`` more rounds).
Each worker's output goes to ``<root>/logs/<study>/``.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablations.catalog import SHIPPED
from ablations.progress import ProgressView, slot_label
from ablations.state import has_work, repair, stale_trials, summarize
from ablations.storage import STORAGE_ENV, where_flags
from ablations.study import StudyHandle, mlflow_client, optuna_study
from ablations.tracking import finish_parent, prepare_study, start_parent

__all__ = ["launch", "worker_command"]

POLL_S = 1.0


@dataclass
class _Worker:
    proc: subprocess.Popen
    log: Path


def worker_command(handle: StudyHandle, *, threads: int | None = None) -> list[str]:
    """The command line of one worker (the storage URL travels in ``$LABBENCH_STORAGE``)."""
    cmd = [sys.executable, "-m", "labbench", "worker", handle.name, "--die-with-parent",
           "--root", str(handle.location.root)]  # its checkpoints go there (ablations.worker)
    if threads:
        cmd += ["--threads", str(threads)]
    if handle.location.tracking_uri:
        cmd += ["--tracking-uri", handle.location.tracking_uri]
    return cmd


def _spawn(handle: StudyHandle, n: int, threads: int, log_dir: Path, round_: int) -> list[_Worker]:
    env = {**os.environ, STORAGE_ENV: handle.location.storage_url, "PYTHONUNBUFFERED": "1",
           "MLFLOW_DISABLE_TELEMETRY": "true",  # see ablations.worker
           "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    workers = []
    for k in range(n):
        log = log_dir / f"worker-{stamp}-r{round_}-{k}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(worker_command(handle, threads=threads), env=env,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        workers.append(_Worker(proc, log))
    return workers


def _tail(path: Path, lines: int = 12) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def launch(handle: StudyHandle, *, workers: int, threads: int | None = None,
           quiet: bool = False) -> int:
    """Run the study with ``workers`` local worker processes until no cell is left.

    Returns:
        0 every cell done, 1 some cell failed or is missing, 130 interrupted.
    """
    spec = handle.spec
    study = optuna_study(handle)
    client = mlflow_client(handle.tracking_uri)
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    log_dir = handle.location.root / "logs" / spec.name
    log_dir.mkdir(parents=True, exist_ok=True)
    view = ProgressView(spec.name, spec.n_runs if spec.mode == "grid" else spec.trials or 0,
                        quiet=quiet)
    view.print(f"{workers} worker(s) x {threads} torch thread(s); logs in {log_dir}")
    # the parent run spans the grid: RUNNING now, ended with the study's outcome below
    prepare_study(client, study, handle.experiment_id, handle.parent_run_id, spec)
    start_parent(client, handle.parent_run_id)
    alive: list[_Worker] = []
    interrupted = 0
    fatal = False
    rounds = 0
    old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with view:
            while True:
                try:
                    if not alive:
                        if interrupted or fatal or rounds > handle.heartbeat.max_retry \
                                or not has_work(study, spec):
                            break
                        alive = _spawn(handle, workers, threads, log_dir, rounds)
                        rounds += 1
                    time.sleep(POLL_S)
                    for w in [w for w in alive if w.proc.poll() is not None]:
                        alive.remove(w)
                        fatal |= _worker_ended(w, study, client, handle, view, interrupted)
                    note = "stopping: runs are being interrupted" if interrupted else ""
                    view.update(summarize(study, spec), len(alive), note)
                except KeyboardInterrupt:
                    interrupted += 1
                    sig = signal.SIGINT if interrupted == 1 else signal.SIGKILL
                    for w in alive:
                        _signal(w.proc, sig)
    finally:
        signal.signal(signal.SIGTERM, old_term)
        for w in alive:  # only after an error in the launcher itself
            _signal(w.proc, signal.SIGKILL)
            w.proc.wait()
            _worker_ended(w, study, client, handle, view, interrupted=1)
    finish_parent(client, study, spec, handle.parent_run_id,
                  status="KILLED" if interrupted else "FINISHED")
    return _report(handle, study, view, interrupted)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _signal(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


def _worker_ended(w: _Worker, study: Any, client: Any, handle: StudyHandle, view: ProgressView,
                  interrupted: int) -> bool:
    """Deal with a worker that exited; True when it refused the study (do not start more)."""
    rc = w.proc.returncode
    if rc in (0, 130):
        return False
    how = f"was killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
    view.print(f"[yellow]worker pid {w.proc.pid} {how}[/]; last lines of {w.log}:\n{_tail(w.log)}")
    stale = stale_trials(study, pids={w.proc.pid})
    requeued = repair(study, client, stale, max_retry=handle.heartbeat.max_retry,
                      interrupted=bool(interrupted), requeue=not interrupted)
    for trial, _ in stale:
        again = "queued again" if any(t.number == trial.number for t in requeued) else "failed"
        view.print(f"trial {trial.number} ({slot_label(trial)}) left by that worker: {again}")
    return rc == 2


def resume_command(spec: Any, flags: str) -> str:
    """The command that resumes an interrupted study: ``labbench grid`` of its file when it came
    from one, of its name when it is a shipped study, else ``labbench retry-failed NAME`` (a spec
    read back from storage names where it was stored, not a file)."""
    if spec.source and Path(spec.source).is_file():
        return f"labbench grid {shlex.quote(str(Path(spec.source).absolute()))}{flags}"
    if (SHIPPED / f"{spec.name}.toml").is_file():
        return f"labbench grid {spec.name}{flags}"
    return f"labbench retry-failed {spec.name}{flags}"


def _report(handle: StudyHandle, study: Any, view: ProgressView, interrupted: int) -> int:
    spec = handle.spec
    s = summarize(study, spec)
    view.print(f"study {spec.name}: {s.complete}/{s.total} done, {s.failed} failed, "
               f"{len(s.running_trials)} running, {s.waiting} queued, {s.not_started} not started")
    for t in s.failures[:10]:
        reason = t.user_attrs.get("error") or t.user_attrs.get("stale") or "interrupted"
        view.print(f"  failed: trial {t.number} {slot_label(t)}: {reason}")
    flags = where_flags(handle.location)  # the hints run as printed, from any folder
    if interrupted:
        again = resume_command(spec, flags)
        view.print("interrupted: the running trials were recorded as failed (MLflow runs KILLED); "
                   f"resume with `{again}`")
        return 130
    if s.failed:
        view.print(f"re-run the failed cells with `labbench retry-failed {spec.name}{flags}`")
    if s.complete >= s.total and not s.failed:
        return 0
    return 1
