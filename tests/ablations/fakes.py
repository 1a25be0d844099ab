"""Stand-ins for `bench.train.run`, selected in worker processes by ``$LABBENCH_RUN_FN``."""

from __future__ import annotations

import os
import time
from typing import Any

from ablations.bench_harness import null_run


def slow_run(config: Any, recorder: Any) -> Any:
    """`null_run` after ``$LABBENCH_TEST_SLEEP`` seconds (default 2): time to kill a worker."""
    time.sleep(float(os.environ.get("LABBENCH_TEST_SLEEP", "2")))
    return null_run(config, recorder)


def failing_run(config: Any, recorder: Any) -> Any:
    """The real run, except that methods listed in ``$LABBENCH_TEST_FAIL`` raise."""
    if config.method in os.environ.get("LABBENCH_TEST_FAIL", "").split(","):
        raise RuntimeError(f"planted failure for method {config.method}")
    from bench.train import run

    return run(config, recorder)
