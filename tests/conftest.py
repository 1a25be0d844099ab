"""Shared test configuration.

Hypothesis runs a bounded number of examples so the default CPU suite stays fast; the Triton
kernels run under the interpreter on CPU (TRITON_INTERPRET must be set before triton is imported).
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

from hypothesis import settings

settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=25, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


import sys  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """A test that changes torch's process-wide thread count does not leak it into the next: a
    run in this process on 1 thread and one in a fresh process on all cores sum matmuls in
    different orders, and the fresh-process reproducibility tests compare them bit for bit."""
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    yield
    torch = sys.modules.get("torch")
    if torch is not None and before is not None and torch.get_num_threads() != before:
        torch.set_num_threads(before)
