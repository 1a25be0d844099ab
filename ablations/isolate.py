"""Run one training run in a forked child process, its records streamed back to the worker.

Why a process per trial: a long grid in one worker process would accumulate memory (allocator
fragmentation, caches, a CUDA context), ``peak_mem_mb`` (the process's peak RSS) would carry over
from earlier trials, and a run killed by the kernel's OOM killer would take the worker with it.
The worker has imported torch, bench and MLflow once; ``os.fork`` gives each run a fresh copy for
a few tens of milliseconds, and everything the run allocates goes away when it exits.

The child never touches Optuna or MLflow: it hands each record (tags, params, per-epoch metrics,
artifacts, the final metrics) to a pipe, and the worker applies it to the trial's MLflow run. So
nothing is half-written when a run dies, and the child needs no database connection of its own.
The worker itself runs no torch op, so the child starts with no OpenMP pool or CUDA context to
inherit. Where ``fork`` does not exist the run happens in the worker's own process.

Checkpoints: given a ``checkpoint`` path, the run writes its per-epoch checkpoint there (atomically:
a temporary file in the same folder, then ``os.replace``) instead of into MLflow, and a run that
finds a checkpoint of its configuration there goes on from it (``resume``, ``replay``: the new
MLflow run receives the earlier epochs' metrics again) and tags ``labbench.resumed_from_epoch``.
A checkpoint that cannot be read, or of another configuration, is deleted with a warning and the
run starts from scratch (tag ``labbench.resume_refused``: why). Who deletes the file when the run
is over: `ablations.objective`.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection, Pipe
from pathlib import Path
from typing import Any

__all__ = ["REFUSED_TAG", "RESUMED_TAG", "PipeRecorder", "RunFailed", "current_child", "remove_checkpoint",
           "run_isolated", "warm_up"]

log = logging.getLogger(__name__)

RESUMED_TAG = "labbench.resumed_from_epoch"  # MLflow tag of a run that went on from a checkpoint
REFUSED_TAG = "labbench.resume_refused"  # why a run found a checkpoint and started afresh anyway

PR_SET_PDEATHSIG = 1  # prctl(2): signal this process when its parent dies

_child: list[int] = []  # pid of the running child, for signal handlers (at most one)


class RunFailed(Exception):
    """The run raised (``child_traceback`` is its traceback) or its process died."""

    def __init__(self, message: str, child_traceback: str = ""):
        super().__init__(message)
        self.child_traceback = child_traceback


class PipeRecorder:
    """A `bench.record.Recorder` that sends every record to the worker through a pipe."""

    def __init__(self, conn: Connection):
        self.conn = conn

    def set_tags(self, tags: dict[str, str]) -> None:
        self.conn.send(("set_tags", (dict(tags),)))

    def log_params(self, params: dict[str, Any]) -> None:
        self.conn.send(("log_params", (dict(params),)))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.conn.send(("log_metrics", ({k: float(v) for k, v in metrics.items()}, int(step))))

    def log_dict(self, obj: dict[str, Any], name: str) -> None:
        self.conn.send(("log_dict", (obj, name)))

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        """Hand a file (the run's model, docs/deploy.md) to the worker, which logs it and deletes
        it: a copy in a folder of its own, since the run may delete ``local_path`` on return."""
        folder = tempfile.mkdtemp(prefix="labbench-artifact-")
        copy = shutil.copy2(local_path, Path(folder) / Path(local_path).name)
        self.conn.send(("log_handed_file", (str(copy), artifact_path)))

    def keep_checkpoint(self, state: dict[str, Any]) -> None:
        """A trial keeps its checkpoint only in the harness's file (`_CheckpointKeeper`, which
        answers this first); without one (``--no-checkpoints``) it keeps none, never in MLflow."""


def _log_handed_file(recorder: Any, path: str, artifact_path: str | None) -> None:
    """Log a file the run process handed over (`PipeRecorder.log_artifact`) with the worker's
    recorder, when it keeps files, then delete the file and its folder in any case."""
    try:
        log_artifact = getattr(recorder, "log_artifact", None)
        if log_artifact is not None:
            log_artifact(path, artifact_path)
    finally:
        shutil.rmtree(Path(path).parent, ignore_errors=True)


def warm_up() -> None:
    """Import in the worker what a run imports lazily, so each forked run does not pay for it
    again (torch's optimizers import torch._dynamo on first use: seconds per run otherwise).

    Imports only: a torch op here would start OpenMP's thread pool, and a child forked after
    that hangs in its first parallel region.
    """
    import encodings.utf_32_le  # noqa: F401  (char corpora are decoded through UTF-32)

    import torch._dynamo
    import torch.profiler  # noqa: F401

    import bench.train  # noqa: F401


def current_child() -> int | None:
    """The pid of the run process now running, if any (signal handlers kill it)."""
    return _child[0] if _child else None


def run_isolated(fn: Callable[..., Any], config: Any, recorder: Any, *,
                 on_metrics: Callable[[dict[str, float], int], None] | None = None,
                 threads: int | None = None, isolate: bool = True,
                 checkpoint: str | Path | None = None) -> dict[str, float]:
    """Call ``fn(config, recorder)`` in a forked child; return its ``.metrics``.

    Args:
        fn: the run function (`bench.train.run` or a stand-in with its signature).
        config: its `RunConfig`.
        recorder: the worker-side recorder the child's records are applied to, in order.
        on_metrics: called in the worker with each per-epoch record (pruning); what it raises
            kills the child and propagates.
        threads: torch intra-op threads in the child (None: leave torch's setting).
        isolate: False runs ``fn`` in this process (debugging, platforms without fork).
        checkpoint: the file the run keeps its per-epoch checkpoint in, and goes on from when it
            holds one of ``config`` (then ``fn(config, recorder, resume=checkpoint,
            replay=True)``); None: no checkpoint.

    Raises:
        RunFailed: the run raised (its traceback in ``child_traceback``) or its process died.
    """
    if not isolate or not hasattr(os, "fork"):
        return _in_process(fn, config, recorder, on_metrics, threads, checkpoint)
    read, write = Pipe(duplex=False)
    parent = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    # Ctrl-C / SIGTERM wait until the child is known, so that the handler can kill it
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        pid = os.fork()
        if pid == 0:  # the run process: never returns
            read.close()
            _child_main(fn, config, write, parent, threads, mask, checkpoint)
        _child.append(pid)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    write.close()
    metrics: dict[str, float] | None = None
    error: tuple[str, str] | None = None
    try:
        while True:
            try:
                kind, args = read.recv()
            except EOFError:
                break
            if kind == "result":
                metrics = args
            elif kind == "error":
                error = args
            elif kind == "log_handed_file":
                _log_handed_file(recorder, *args)
            else:
                getattr(recorder, kind)(*args)
                if kind == "log_metrics" and on_metrics is not None:
                    on_metrics(*args)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        raise
    finally:
        read.close()
        status = _reap(pid)
        _child.clear()
    if metrics is not None:
        return metrics
    if error is not None:
        raise RunFailed(error[0], error[1])
    how = (f"killed by signal {signal.Signals(-status).name}" if status < 0
           else f"exited with status {status}")
    raise RunFailed(f"the run process {how} before reporting a result (out of memory?)")


def _reap(pid: int) -> int:
    """Wait for the child; its exit status, or minus the signal that killed it."""
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            return 0
        except InterruptedError:
            continue
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _child_main(fn: Callable[..., Any], config: Any, conn: Connection, parent: int,
                threads: int | None, mask: set, checkpoint: str | Path | None) -> None:
    code = 1
    try:
        # Ctrl-C and SIGTERM end the run at once; the worker records the outcome.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        with contextlib.suppress(OSError, AttributeError):  # Linux: die with the worker
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the worker died before prctl took effect
            os._exit(1)
        if threads:
            import torch

            torch.set_num_threads(threads)
        result = _call(fn, config, PipeRecorder(conn), checkpoint)
        conn.send(("result", {k: float(v) for k, v in result.metrics.items()}))
        code = 0
    except BaseException as err:  # everything goes back to the worker, which records it
        with contextlib.suppress(Exception):
            conn.send(("error", (f"{type(err).__name__}: {err}", traceback.format_exc())))
    finally:
        with contextlib.suppress(Exception):
            conn.close()
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)  # no atexit handlers, no flushing of the worker's inherited buffers


def _in_process(fn: Callable[..., Any], config: Any, recorder: Any,
                on_metrics: Callable[[dict[str, float], int], None] | None,
                threads: int | None, checkpoint: str | Path | None) -> dict[str, float]:
    if threads:
        import torch

        torch.set_num_threads(threads)

    class Tap:  # forwards to the recorder, calling on_metrics on per-epoch records
        def __getattr__(self, name: str) -> Any:
            return getattr(recorder, name)

        def log_metrics(self, metrics: dict[str, float], step: int) -> None:
            recorder.log_metrics(metrics, step)
            if on_metrics is not None:
                on_metrics(metrics, step)

    try:
        result = _call(fn, config, Tap(), checkpoint)
    except Exception as err:
        raise RunFailed(f"{type(err).__name__}: {err}", traceback.format_exc()) from err
    return {k: float(v) for k, v in result.metrics.items()}


# --- checkpoints ------------------------------------------------------------------------------
def _call(fn: Callable[..., Any], config: Any, recorder: Any, checkpoint: str | Path | None) -> Any:
    """``fn(config, recorder)``; with a checkpoint path, the run keeps its checkpoint there and
    goes on from the one it finds."""
    if checkpoint is None:
        return fn(config, recorder)
    recorder = _CheckpointKeeper(recorder, Path(checkpoint))
    epoch, refused = _resume_point(Path(checkpoint), config)
    if refused:
        recorder.set_tags({REFUSED_TAG: refused[:500]})
    if epoch is None:
        return fn(config, recorder)
    recorder.set_tags({RESUMED_TAG: str(epoch)})
    return fn(config, recorder, resume=str(checkpoint), replay=True)


class _CheckpointKeeper:
    """A recorder that passes everything on and keeps the run's checkpoint in one file
    (`bench.train.save_checkpoint` hands it ``keep_checkpoint(state)`` after every epoch)."""

    def __init__(self, recorder: Any, path: Path):
        self.recorder, self.path = recorder, path

    def __getattr__(self, name: str) -> Any:
        return getattr(self.recorder, name)

    def keep_checkpoint(self, state: dict[str, Any]) -> None:
        """Write ``state`` to the checkpoint file atomically. A file that cannot be written (a
        full disk) does not fail the run: a warning, and the previous checkpoint stays."""
        import torch

        tmp = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name + ".",
                                       suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                torch.save(state, f)
            os.replace(tmp, self.path)
        except OSError as err:
            log.warning("checkpoint not written to %s: %s", self.path, err)
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)


def _resume_point(path: Path, config: Any) -> tuple[int | None, str]:
    """(the last epoch of the checkpoint at ``path`` when the run can go on from it, else None;
    why not, when there is a checkpoint). One that cannot be read, or of another configuration,
    is deleted (a warning says why): the run starts from scratch."""
    if not path.exists():
        return None, ""
    try:
        import torch

        from bench.train import CHECKPOINT_FORMAT

        # mmap: only the small progress and config records are read here, not the tensors
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if saved.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"format {saved.get('format')!r}, expected {CHECKPOINT_FORMAT}")
        mine, theirs = config.to_dict(), saved["config"]
        differ = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
        if differ:
            raise ValueError(f"of another configuration (differs in {', '.join(differ)})")
        epoch = int(saved["progress"]["epoch"])
    except Exception as err:  # unreadable (torch's errors vary), or not this run's
        log.warning("not resuming from %s: %s; the run starts from scratch", path, err)
        remove_checkpoint(path)
        return None, f"{path}: {err}"
    return epoch, ""


def remove_checkpoint(path: str | Path) -> None:
    """Delete a run's checkpoint file and any temporary file a killed write left beside it (a
    file that cannot be deleted is left with a warning: the run's outcome stands)."""
    path = Path(path)
    for f in [path, *path.parent.glob(path.name + ".*.tmp")]:
        try:
            f.unlink()
        except FileNotFoundError:
            pass
        except OSError as err:
            log.warning("could not delete the checkpoint %s: %s", f, err)
