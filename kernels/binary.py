"""Binary proximal step: LAB's closed form (Hou, Yao & Kwok, ICLR 2017, Proposition 3.1).

The proximal Newton subproblem ``min sum d*(w_hat - w)^2`` over ``w_hat = alpha*b``, ``alpha > 0``,
``b in {-1, +1}^n`` has the closed form

    b = sign(w)                       (sign(0) = +1, as the reference code's rounding gives)
    alpha = sum(d*|w|) / sum(d)       (= ||d * w||_1 / ||d||_1)

For any b, the best alpha is sum(d*b*w)/sum(d) and the objective falls by (sum(d*b*w))^2/sum(d);
sum(d*b*w) <= sum(d*|w|) with equality for b = sign(w), which proves both lines. With d constant
(or ``d=None``) alpha is mean|w|, the BWN scale (Remark 3.1).
"""

from __future__ import annotations

import torch

from ._backend import check_backend, select_impl
from ._common import (
    GRANULARITIES,
    TINY,
    check_choice,
    check_like,
    check_weight,
    empty_scales,
    groups,
    scale_shape,
)

__all__ = ["prox_binary"]


# %% PyTorch reference

def _prox_binary_torch(w: torch.Tensor, d: torch.Tensor | None,
                       granularity: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference implementation of `prox_binary` for a validated, non-empty ``w``."""
    w32 = groups(w, granularity)  # (G, n) float32
    # Both sums accumulate in float32 whatever w's dtype (w32 is float32).
    if d is None:  # BWN: alpha = mean|w|
        alpha = w32.abs().mean(dim=1)  # (G,)
    else:
        d32 = groups(d, granularity)  # (G, n) float32
        alpha = torch.linalg.vecdot(d32, w32.abs()) / d32.sum(dim=1).clamp_min(TINY)  # (G,)
    # b = sign(w) with sign(0) = +1. copysign reads the sign bit, so -0.0 is first made +0.0
    # (x + 0.0); on CPU this is several times faster than where(w >= 0, 1, -1).
    w_hat = torch.copysign(alpha[:, None], w32 + 0.0).to(w.dtype).reshape(w.shape)
    return w_hat, scale_shape(alpha, granularity)


# %% Public op

def prox_binary(w: torch.Tensor, d: torch.Tensor | None = None, *, granularity: str = "tensor",
                backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Loss-aware binarization: the closed-form minimizer of sum d*(alpha*b - w)^2.

    Args:
        w: ``(*shape)`` float32, float16 or bfloat16 weights, ``ndim >= 1``. Not modified.
        d: ``(*shape)`` positive diagonal curvature (LAB: ``sqrt(v) + 1e-8``), any of the same
            dtypes, or None for all ones (BWN). Entries must be > 0; this is not checked. Keep it
            in float32 when it holds values like 1e-8, which float16 flushes to 0.
        granularity: ``"tensor"`` (one alpha) or ``"channel"`` (one alpha per slice ``w[i]``).
        backend: ``"auto"``, ``"torch"`` or ``"triton"``.

    Returns:
        ``(w_hat, alpha)``: ``w_hat`` of ``w``'s shape and dtype, equal to ``alpha * sign(w)``
        with sign(0) = +1; ``alpha`` float32 of shape () or ``(w.shape[0],)``. An empty ``w``
        gives an empty ``w_hat`` and zero scales.

    Raises:
        TypeError: ``w`` or ``d`` is not a tensor of a supported float dtype.
        ValueError: 0-dimensional ``w``; ``d`` of another shape or device; unknown
            ``granularity`` or ``backend``.
        NotImplementedError: ``backend="triton"`` (not written yet).

    Example:
        >>> w = torch.tensor([0.5, -1.0, 0.0, -0.5])
        >>> prox_binary(w)
        (tensor([ 0.5000, -0.5000,  0.5000, -0.5000]), tensor(0.5000))
        >>> d = torch.tensor([1.0, 3.0, 1.0, 1.0])  # curvature pulls alpha towards |-1.0|
        >>> prox_binary(w, d)[1]
        tensor(0.6667)
    """
    check_backend(backend)
    check_weight(w)
    check_like(d, w, "d")
    check_choice("granularity", granularity, GRANULARITIES)
    if w.numel() == 0:
        return torch.empty(w.shape, dtype=w.dtype, device=w.device), empty_scales(w, granularity)
    impl = select_impl("prox_binary", backend, w, torch_impl=_prox_binary_torch)
    return impl(w, d, granularity)
