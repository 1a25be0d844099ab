"""Stand-ins for `bench.train.run`, selected in worker processes by ``$LABBENCH_RUN_FN``."""

from __future__ import annotations

import os
import time
from typing import Any

from ablations.bench_harness import null_run


def slow_run(config: Any, recorder: Any, **resume: Any) -> Any:
    """`null_run` after ``$LABBENCH_TEST_SLEEP`` seconds (default 2): time to kill a worker. It
    takes `bench.train.run`'s resume arguments and starts over (it has nothing to resume)."""
    time.sleep(float(os.environ.get("LABBENCH_TEST_SLEEP", "2")))
    return null_run(config, recorder)


def failing_run(config: Any, recorder: Any) -> Any:
    """The real run, except that methods listed in ``$LABBENCH_TEST_FAIL`` raise."""
    if config.method in os.environ.get("LABBENCH_TEST_FAIL", "").split(","):
        raise RuntimeError(f"planted failure for method {config.method}")
    from bench.train import run

    return run(config, recorder)


def pausing_run(config: Any, recorder: Any, **resume: Any) -> Any:
    """The real run (checkpoints on). The first run that writes a checkpoint while the file
    ``$LABBENCH_TEST_PAUSE`` does not exist creates it after that checkpoint and sleeps: time to
    SIGKILL its worker right after epoch 1. Other runs, and runs that resume, go straight on."""
    from bench.train import run

    marker = os.environ.get("LABBENCH_TEST_PAUSE")
    if marker and not resume:
        inner, keep = recorder, recorder.keep_checkpoint

        class Pausing:
            def __getattr__(self, name: str) -> Any:
                return getattr(inner, name)

            def keep_checkpoint(self, state: Any) -> None:
                keep(state)
                try:
                    os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    return
                time.sleep(600)

        recorder = Pausing()
    return run(config, recorder, **resume)
