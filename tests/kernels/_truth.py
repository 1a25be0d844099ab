"""Independent truth for the kernel tests: the proximal objective and its brute-force minimum.

Everything here is float64 and shares no code with `kernels`. For a fixed pattern b the best
scale is least squares, alpha_b = sum(d*b*w) / sum(d*b^2), restricted to alpha >= 0; the
objective at that scale is sum(d*w^2) - max(0, sum(d*b*w))^2 / sum(d*b^2). The minimum over all
patterns in ``values^n`` is the optimum a proximal operator onto ``alpha * values^n`` must reach.
"""

from __future__ import annotations

import functools

import torch
from hypothesis import strategies as st

MAX_BRUTE_FORCE = 12  # 3^12 = 531441 ternary patterns: a few ms per example, vectorized
MAX_PATTERNS = 3**12


def objective(w: torch.Tensor, w_hat: torch.Tensor, d: torch.Tensor | None = None) -> float:
    """sum d*(w_hat - w)^2 in float64 (d=None: all ones)."""
    w64, w_hat64 = w.double(), w_hat.double()
    d64 = torch.ones_like(w64) if d is None else d.double()
    return float((d64 * (w_hat64 - w64) ** 2).sum())


@functools.cache
def patterns(n: int, values: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """All ``m = len(values)**n`` patterns b in ``values^n``, and b*b: two ``(m, n)`` float64."""
    base = len(values)
    index = torch.arange(base**n, dtype=torch.int64)[:, None]  # (m, 1)
    digits = index // base ** torch.arange(n, dtype=torch.int64) % base  # (m, n)
    b = torch.tensor(values, dtype=torch.float64)[digits]
    return b, b * b


def pattern_objectives(w: torch.Tensor, d: torch.Tensor | None, b: torch.Tensor,
                       b_squared: torch.Tensor | None = None) -> torch.Tensor:
    """The objective of each pattern row of ``b`` at its best scale alpha >= 0: ``(m,)`` float64.

    Args:
        w: ``(n,)`` weights.
        d: ``(n,)`` positive curvature or None.
        b: ``(m, n)`` patterns (or ``(n,)`` for one).
        b_squared: ``b * b`` if already at hand.
    """
    w64 = w.double().reshape(-1)
    d64 = torch.ones_like(w64) if d is None else d.double().reshape(-1)
    b = b.double().reshape(-1, w64.numel())
    b_squared = b * b if b_squared is None else b_squared
    num = (b @ (d64 * w64)).clamp_min(0)  # (m,): alpha >= 0
    den = b_squared @ d64  # (m,)
    gain = torch.where(den > 0, num**2 / den.clamp_min(1e-300), 0.0)
    return (d64 * w64**2).sum() - gain


def brute_force_min(w: torch.Tensor, d: torch.Tensor | None, values: tuple[float, ...]) -> float:
    """min over b in ``values^n`` and alpha >= 0 of sum d*(alpha*b - w)^2, by enumeration."""
    count = len(values) ** w.numel()
    assert count <= MAX_PATTERNS, f"{count} patterns: too many to enumerate"
    return float(pattern_objectives(w, d, *patterns(w.numel(), values)).min())


def scale(w: torch.Tensor, d: torch.Tensor | None) -> float:
    """sum d*w^2: the objective of w_hat = 0, a natural size for tolerances on objectives."""
    return objective(w, torch.zeros_like(w), d)


def assert_attains(value: float, best: float, w: torch.Tensor, d: torch.Tensor | None,
                   rtol: float) -> None:
    """Assert ``best <= value <= best + rtol * sum(d*w^2)``, up to float64 rounding below."""
    size = scale(w, d)
    assert value >= best - 1e-12 * size, f"objective {value} beats the optimum {best}"
    assert value <= best + rtol * size, f"objective {value} > optimum {best} + {rtol} * {size}"


# %% Hypothesis inputs

# Latent weights live in [-1, 1] (LAB clips them). Exact zeros, signed zeros and repeated values
# exercise sign(0) = +1 and tie-breaking; magnitudes below 1e-6 are left out because their squares
# times d underflow float32, which tells nothing about the algorithms.
weight_values = st.one_of(
    st.sampled_from([0.0, -0.0, 0.25, -0.5, 0.5, 1.0, -1.0]),
    st.floats(-1.0, 1.0, width=32).filter(lambda x: x == 0 or abs(x) >= 1e-6),
)
# d = sqrt(v) + 1e-8 spans many decades in training; four here (2^-10 ~ 1e-3 to 10) keep float32
# sums well conditioned. Bounds must be exact float32 values for hypothesis.
curvature_values = st.floats(2.0**-10, 10.0, width=32)


@st.composite
def problems(draw, max_size: int = MAX_BRUTE_FORCE) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(w, d)``: a float32 ``(n,)`` weight vector, 1 <= n <= max_size, and d (or None)."""
    n = draw(st.integers(1, max_size))
    w = torch.tensor(draw(st.lists(weight_values, min_size=n, max_size=n)), dtype=torch.float32)
    d_list = draw(st.none() | st.lists(curvature_values, min_size=n, max_size=n))
    d = None if d_list is None else torch.tensor(d_list, dtype=torch.float32)
    return w, d


def random_problem(shape: tuple[int, ...], seed: int, *, curvature: bool = True
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A seeded Gaussian ``w`` and positive ``d`` (sqrt of an Adam-like second moment + 1e-8)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=gen)
    d = torch.rand(shape, generator=gen).square() + 1e-8 if curvature else None
    return w, d
