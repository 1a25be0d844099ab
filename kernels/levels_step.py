"""The whole proximal step of one LAQ (linear m-bit) or LAT-approx (ternary) weight, in C++ (CPU).

What `bench.quantizers.MBit` and `bench.quantizers.Ternary` do each training step, in a few passes
over memory instead of the torch reference's many: clip the latent W to [-clip, clip] in place,
take d = sqrt(v) + 1e-8, alternate the scale and the levels (`kernels.prox_mbit`'s and
`kernels.prox_ternary(solver="approx")`'s alternation) and write ``w_hat = alpha * b``.

Passes (``csrc/levels_prox.cpp``): pass A reads W and v, writes the clipped W and sums the first
scale; each further scale update reads W and v (sqrt(v) is recomputed, cheaper than storing d);
the write reads W and writes w_hat. 12 + 8 (updates - 1) + 8 bytes per weight; the references
read and write several times that per update (the compiled one reads W and d once per update,
but d = sqrt(v) + 1e-8, max|W|, the clip and the warm start's max|init| cost passes of their own).

Two departures from the references, both chosen by the caller:

- warm start from the previous step's scale ``alpha0``: b0 = levels(W / alpha0) (ternary:
  I_{alpha0/2}(W)), the best levels for the new W at the old scale, instead of the references'
  b0 from the previous w_hat (``init``, which needs a pass for max|init|);
- ``rtol > 0``: a group also stops once a scale update lowered the objective
  sum d (W - alpha b)^2 by at most ``rtol`` of itself. Each half-step of the alternation
  minimizes the objective over its variable, so the objective never rises; stopping early leaves
  an objective above the fixed point's by about the last improvement. tests/kernels/
  test_levels_step.py bounds it against the 10-iteration reference and brute force.

With ``alpha0=None`` and ``rtol=0`` the step is the references' (``init=None``): the same levels
for the same scale, bit for bit, and scales equal to float32 rounding (sums in another order).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import NamedTuple

import torch

from ._cpp import load_extension

__all__ = ["LevelsStep", "levels_cpp_available", "levels_prox_step_"]

EPS_D = 1e-8  # d = sqrt(v) + 1e-8, as in the reference code
_SOURCE = Path(__file__).parent / "csrc" / "levels_prox.cpp"
# No fused multiply-adds (the references' float32 rounding of each level); sqrt without errno so
# that the element loops vectorise.
_CFLAGS = ("-O3", "-ffp-contract=off", "-fno-math-errno")


def _extension(required: bool = False) -> ModuleType | None:
    return load_extension("levels_prox", [_SOURCE], extra_cflags=_CFLAGS, required=required)


def levels_cpp_available() -> bool:
    """Whether the C++ step builds and loads here (builds it on the first call: seconds)."""
    return _extension() is not None


class LevelsStep(NamedTuple):
    """What `levels_prox_step_` returns."""

    w_hat: torch.Tensor  # W's shape, float32
    alpha: torch.Tensor  # (groups,) float32
    updates: torch.Tensor  # (groups,) int64: scale updates (passes over W) per group
    objective: torch.Tensor  # (groups,) float64: sum d (W - alpha b)^2 after the last update
    history: list[float]  # group 0's objective after each of its scale updates


def levels_prox_step_(latent: torch.Tensor, v: torch.Tensor | None, *, bits: int | None,
                      groups: int = 1, alpha0: torch.Tensor | None = None, max_iter: int = 10,
                      tol: float = 1e-6, rtol: float = 0.0, secant: bool = False,
                      clip: float | None = 1.0,
                      out: torch.Tensor | None = None) -> LevelsStep:
    """Clip ``latent`` in place and quantize it: LAQ's linear m-bit levels, or LAT-approx's ternary.

    Args:
        latent: float32 contiguous CPU weight, viewed as ``(groups, numel / groups)``; clipped to
            [-clip, clip] in place.
        v: Adam's second moment of the latent's shape (d = sqrt(v) + 1e-8), or None (d = 1).
        bits: linear m-bit levels {0, +-1/k, ..., +-1}, k = 2^(bits-1) - 1, bits in [2, 8]; None:
            ternary ``I_{alpha/2}`` (strict, as `prox_ternary`; bits=2 differs only at exact ties).
        groups: 1 (one scale) or the number of rows of the grouped view.
        alpha0: ``(groups,)`` float32 warm start (the previous step's scale), or None: b0 = sign(W)
            (m-bit) or TWN's pattern (ternary), as the references without ``init``.
        max_iter: most scale updates per group (>= 1).
        tol: a group stops when its scale moved by less than ``tol``.
        rtol: > 0: a group also stops when an update lowered its objective by at most ``rtol``
            of it.
        clip: the clip of W (None: none).
        out: float32 contiguous tensor of the latent's shape for w_hat (default: a new one).

    Raises:
        kernels._cpp.ExtensionBuildError: the extension cannot be built here.
        RuntimeError: a tensor is not float32, contiguous, on CPU, or of the latent's size.
        ValueError: ``bits`` out of range.
    """
    if bits is not None and not 2 <= bits <= 8:
        raise ValueError(f"bits: expected an int in [2, 8] or None, got {bits!r}")
    ext = _extension(required=True)
    k = 0 if bits is None else 2 ** (bits - 1) - 1
    w_hat = torch.empty_like(latent) if out is None else out
    if alpha0 is not None:
        alpha0 = alpha0.detach().reshape(groups).to(torch.float32).contiguous()
    alpha, updates, objective, history = ext.levels_prox(
        latent, v, w_hat, alpha0, groups, k, max_iter, tol, rtol, secant,
        -1.0 if clip is None else float(clip), EPS_D)
    return LevelsStep(w_hat, alpha, updates, objective, history)
