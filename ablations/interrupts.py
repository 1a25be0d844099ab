"""Bookkeeping that Ctrl-C must not cut in half.

Marking a trial terminated takes several writes (its attributes, its state, its MLflow run, a
queued copy). A KeyboardInterrupt raised between two of them leaves a trial FAIL whose MLflow run
is still RUNNING, or failed but never queued again. `interrupts_deferred` holds SIGINT and
SIGTERM back for the length of such a block and delivers them right after it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["interrupts_deferred"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[list[int]]:
    """Run the block with SIGINT and SIGTERM held back; re-deliver them once it is done.

    Only the main thread receives signals, so elsewhere the block just runs. Yields the list of
    signals received so far (for tests and messages).

    Example:
        >>> import os
        >>> try:
        ...     with interrupts_deferred() as got:
        ...         os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of the block
        ...         finished = True
        ... except KeyboardInterrupt:
        ...     print("interrupted after the block:", finished, got == [signal.SIGINT])
        interrupted after the block: True True
    """
    got: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield got
        return

    def hold(signum: int, frame: object) -> None:
        got.append(signum)

    previous = {sig: signal.signal(sig, hold) for sig in _SIGNALS}
    try:
        yield got
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(got):  # each kind once, to the handler it was meant for
            signal.raise_signal(sig)
