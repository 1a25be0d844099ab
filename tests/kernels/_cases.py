"""Inputs for comparing the Triton path with the torch reference: odd sizes, dtypes, layouts.

On CPU the kernels run in Triton's interpreter, which costs about 20 ms per program and tile, so
the shapes stay small: sizes that are not a multiple of a tile (the interpreter's tiles hold 1024
elements), one element, groups spread over several programs (2500 elements), a few rows per
channel (each row is at least one program), 4-D conv weights, and transposed (strided) views.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import strategies as st

from tests.kernels._truth import random_problem

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
TENSOR_SHAPES = ((1,), (7,), (1023,), (2500,), (7, 13), (5, 3, 3, 3), (2, 1500))
CHANNEL_SHAPES = ((1,), (7,), (7, 13), (5, 3, 3, 3), (3, 700))
# Values that exercise sign(0) = +1 and exact ties: placed at a few positions of every case.
SPECIAL = (0.0, -0.0, 0.5, -0.5, 0.25)
# Scales: both backends sum the same float32 values in different orders; the relative error of
# such a sum of n positive terms is below n * 2^-24 in the worst case and ~sqrt(n) * 2^-24 in
# practice, far below 1e-6 for these sizes (the tolerance).
SCALE_RTOL = 1e-6


@dataclass(frozen=True)
class Case:
    w: torch.Tensor
    d: torch.Tensor | None
    granularity: str

    def __repr__(self) -> str:
        layout = "contiguous" if self.w.is_contiguous() else "strided"
        return (f"Case({tuple(self.w.shape)}, {self.w.dtype}, {layout}, d={self.d is not None}, "
                f"{self.granularity})")


@st.composite
def cases(draw, granularities: tuple[str, ...] = ("tensor", "channel"),
          dtypes: tuple[torch.dtype, ...] = DTYPES) -> Case:
    """A weight (and d, or None) of an awkward shape, dtype and layout, with special values."""
    granularity = draw(st.sampled_from(granularities))
    shape = draw(st.sampled_from(TENSOR_SHAPES if granularity == "tensor" else CHANNEL_SHAPES))
    # Transposed 2-D shapes, except where that would make hundreds of channels (programs).
    transposed = len(shape) == 2 and (granularity == "tensor" or shape[1] <= 16) and draw(
        st.booleans())
    if transposed:
        shape = shape[::-1]
    w, d = random_problem(shape, draw(st.integers(0, 2**16)), curvature=draw(st.booleans()))
    flat = w.view(-1)
    for value, position in zip(SPECIAL, draw(st.lists(st.integers(0, flat.numel() - 1),
                                                      min_size=1, max_size=len(SPECIAL))),
                               strict=False):
        flat[position] = value
    if transposed:  # the same values, seen through a strided view
        w = w.t().contiguous().t()
        d = None if d is None else d.t().contiguous().t()
    return Case(w.to(draw(st.sampled_from(dtypes))), d, granularity)


def scale_view(alpha: torch.Tensor, w: torch.Tensor, granularity: str) -> torch.Tensor:
    """Scales broadcastable against ``w``: () or ``(G, 1, ..., 1)``."""
    return alpha if granularity == "tensor" else alpha.reshape((-1,) + (1,) * (w.dim() - 1))


def assert_scales_close(got: torch.Tensor, want: torch.Tensor, rtol: float = SCALE_RTOL) -> None:
    """Scales of two float32 computations of the same sums, within ``rtol`` relative."""
    assert got.dtype == want.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=rtol, atol=0)


FUSED_STATE_TOL = {"rtol": 1e-6, "atol": 1e-7}
"""How close a fused Adam + LAB step's latents and moments must be to the torch reference's."""


def assert_fused_step_matches(got, want, same_sign) -> None:
    """A fused step's ``(latents, exp_avgs, exp_avg_sqs, [(w_hats, alphas)] per step)`` against
    the reference's: the state to `FUSED_STATE_TOL`, every scale by `assert_scales_close`, and
    ``same_sign(w_hat, want_hat)`` for every w_hat."""
    for name, g, x in zip(("latents", "exp_avgs", "exp_avg_sqs"), got[:3], want[:3], strict=True):
        for a, b in zip(g, x, strict=True):
            torch.testing.assert_close(a, b, **FUSED_STATE_TOL, msg=lambda m, name=name: f"{name}: {m}")
    for (w_hats, alphas), (want_hats, want_alphas) in zip(got[3], want[3], strict=True):
        for w_hat, alpha, want_hat, want_alpha in zip(w_hats, alphas, want_hats, want_alphas,
                                                      strict=True):
            assert_scales_close(alpha, want_alpha)
            assert same_sign(w_hat, want_hat)
