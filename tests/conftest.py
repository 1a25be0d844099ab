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
