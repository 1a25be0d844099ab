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
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection, Pipe
from typing import Any

__all__ = ["PipeRecorder", "RunFailed", "current_child", "run_isolated", "warm_up"]

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
                 threads: int | None = None, isolate: bool = True) -> dict[str, float]:
    """Call ``fn(config, recorder)`` in a forked child; return its ``.metrics``.

    Args:
        fn: the run function (`bench.train.run` or a stand-in with its signature).
        config: its `RunConfig`.
        recorder: the worker-side recorder the child's records are applied to, in order.
        on_metrics: called in the worker with each per-epoch record (pruning); what it raises
            kills the child and propagates.
        threads: torch intra-op threads in the child (None: leave torch's setting).
        isolate: False runs ``fn`` in this process (debugging, platforms without fork).

    Raises:
        RunFailed: the run raised (its traceback in ``child_traceback``) or its process died.
    """
    if not isolate or not hasattr(os, "fork"):
        return _in_process(fn, config, recorder, on_metrics, threads)
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
            _child_main(fn, config, write, parent, threads, mask)
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
                threads: int | None, mask: set) -> None:
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
        result = fn(config, PipeRecorder(conn))
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
                threads: int | None) -> dict[str, float]:
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
        result = fn(config, Tap())
    except Exception as err:
        raise RunFailed(f"{type(err).__name__}: {err}", traceback.format_exc()) from err
    return {k: float(v) for k, v in result.metrics.items()}
