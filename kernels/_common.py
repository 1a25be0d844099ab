"""Shared pieces of the proximal operators: argument checks, the (groups, n) view, the alternation.

Every operator works on a float32 matrix of shape ``(G, n)``: one row per group that gets its own
scale. ``granularity="tensor"`` is one group holding the whole tensor; ``"channel"`` is one group
per slice along dim 0. The results go back to the caller's shape and dtype at the end.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
GRANULARITIES = ("tensor", "channel")

# Denominators of the scale formulas are sums of positive d; they are 0 only for an empty
# selection, whose numerator is 0 too. Clamping to the smallest normal float32 turns 0/0 into 0.
TINY = torch.finfo(torch.float32).tiny


def check_weight(w: torch.Tensor) -> None:
    """Check that ``w`` is a float tensor with at least one dimension.

    Raises:
        TypeError: ``w`` is not a tensor, or its dtype is not float32, float16 or bfloat16.
        ValueError: ``w`` is 0-dimensional.
    """
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"w: expected a torch.Tensor, got {type(w).__name__}")
    if w.dtype not in FLOAT_DTYPES:
        raise TypeError(f"w: expected dtype float32, float16 or bfloat16, got {w.dtype}")
    if w.dim() < 1:
        raise ValueError(f"w: expected at least 1 dimension, got shape {tuple(w.shape)}")


def check_like(x: torch.Tensor | None, w: torch.Tensor, name: str) -> None:
    """Check that an optional companion tensor (``d``, ``init``) matches ``w``.

    Raises:
        TypeError: ``x`` is not a tensor or not of a float dtype `check_weight` accepts.
        ValueError: ``x`` differs from ``w`` in shape or device.
    """
    if x is None:
        return
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor or None, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected dtype float32, float16 or bfloat16, got {x.dtype}")
    if x.shape != w.shape:
        raise ValueError(f"{name}: expected the shape of w {tuple(w.shape)}, got {tuple(x.shape)}")
    if x.device != w.device:
        raise ValueError(f"{name}: expected the device of w ({w.device}), got {x.device}")


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise ValueError naming ``name``, the valid ``choices`` and the bad ``value``."""
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")


def check_iteration(max_iter: int, tol: float) -> None:
    """Check the stopping rule of an alternating solver.

    Raises:
        ValueError: ``max_iter`` is not an int >= 1, or ``tol`` is not a number >= 0.
    """
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter: expected an int >= 1, got {max_iter!r}")
    if isinstance(tol, bool) or not isinstance(tol, int | float) or not tol >= 0:
        raise ValueError(f"tol: expected a number >= 0, got {tol!r}")


def groups(x: torch.Tensor, granularity: str) -> torch.Tensor:
    """The float32 ``(G, n)`` view of ``x``: G = 1 (``"tensor"``) or ``x.shape[0]`` (``"channel"``).

    Row-major and contiguous: a non-contiguous ``x`` is copied, so the sums run in the same order
    whatever the layout of ``x`` and a strided view gives the same bits as its contiguous copy.
    ``x`` itself is never written.
    """
    if granularity == "tensor":
        return x.reshape(1, x.numel()).float().contiguous()
    return x.reshape(x.shape[0], math.prod(x.shape[1:])).float().contiguous()


def curvature(d: torch.Tensor | None, w32: torch.Tensor, granularity: str) -> torch.Tensor:
    """The float32 ``(G, n)`` curvature; ``d=None`` is an all-ones view that allocates nothing."""
    if d is None:
        return w32.new_ones(()).expand_as(w32)
    return groups(d, granularity)


def scale_shape(alpha: torch.Tensor, granularity: str) -> torch.Tensor:
    """Per-group scales ``(G,)`` as returned to the caller: shape () for ``"tensor"``."""
    return alpha.reshape(()) if granularity == "tensor" else alpha


def empty_scales(w: torch.Tensor, granularity: str) -> torch.Tensor:
    """Zero float32 scales for an empty ``w``: shape () or ``(w.shape[0],)``."""
    shape = () if granularity == "tensor" else (w.shape[0],)
    return torch.zeros(shape, dtype=torch.float32, device=w.device)


def threshold(w32: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """The ternary pattern I_delta(w): +1 where w > delta, -1 where w < -delta, else 0 (strict).

    Args:
        w32: ``(G, n)`` float32 weights.
        delta: ``(G,)`` float32 thresholds, one per group.

    Returns:
        ``(G, n)`` float32 in {-1, 0, +1}.
    """
    delta = delta[:, None]  # (G, 1)
    return torch.where(w32 > delta, 1.0, torch.where(w32 < -delta, -1.0, 0.0))


def alternate(b0: torch.Tensor, scale_of: Callable[[torch.Tensor], torch.Tensor],
              levels_of: Callable[[torch.Tensor], torch.Tensor], max_iter: int,
              tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Alternating minimization of sum d*(alpha*b - w)^2 over the scale and the levels, per group.

    One iteration is ``alpha = scale_of(b)`` then ``b = levels_of(alpha)``: the reference codes'
    order (LATa's and LAQ's), so the result's b is the best pattern for its alpha. A group
    stops once its alpha moved by less than ``tol`` in one iteration and is frozen from then on,
    so each row of a ``(G, n)`` problem follows exactly the iterates it would follow alone.
    ``max_iter`` counts scale updates including the first; the reference computes one scale
    before its 10-step loop, so its ``n_steps=10`` corresponds to ``max_iter=11`` here.

    Args:
        b0: ``(G, n)`` float32 starting levels.
        scale_of: maps ``(G, n)`` levels to ``(G,)`` scales.
        levels_of: maps ``(G,)`` scales to ``(G, n)`` levels.
        max_iter: at most this many iterations (>= 1).
        tol: a group has converged when ``|alpha_t - alpha_{t-1}| < tol``.

    Returns:
        ``(alpha, b)``: ``(G,)`` and ``(G, n)`` float32.
    """
    b = b0
    alpha = None
    active = torch.ones(b0.shape[0], dtype=torch.bool, device=b0.device)  # (G,)
    for _ in range(max_iter):
        alpha_next = scale_of(b)
        b_next = levels_of(alpha_next)
        if alpha is None:
            alpha, b = alpha_next, b_next
            continue
        moved = (alpha_next - alpha).abs() >= tol
        alpha = torch.where(active, alpha_next, alpha)
        b = torch.where(active[:, None], b_next, b)
        active = active & moved
        if not bool(active.any()):
            break
    return alpha, b
