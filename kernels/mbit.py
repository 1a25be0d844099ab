"""m-bit proximal step: loss-aware quantization (LAQ, Hou & Kwok, ICLR 2018;
docs/algorithms.md, "Deviations and choices").

``w_hat = alpha * b`` with ``b`` on a symmetric grid of ``2k + 1`` levels, ``k = 2^(bits-1) - 1``:

- ``"linear"``: {0, ±1/k, ±2/k, ..., ±1};
- ``"log"``: {0, ±2^-(k-1), ..., ±1/4, ±1/2, ±1}.

Given alpha > 0, the best b maps each u = w/alpha to its nearest level (the objective separates
per element and d_i > 0 only scales element i's term). Given b, the best alpha is weighted least
squares. `prox_mbit` alternates the two, as the reference code does, generalised from its
hard-coded bits = 3 to any bits in [2, 8].
"""

from __future__ import annotations

import torch

from ._backend import check_backend, select_impl
from ._common import (
    GRANULARITIES,
    TINY,
    check_choice,
    check_iteration,
    check_like,
    check_weight,
    curvature,
    empty_scales,
    groups,
    scale_shape,
)
from ._levels import alternate_triton, compiled, level_sums, level_write, problem

__all__ = ["prox_mbit"]

LEVELS = ("linear", "log")
BITS_RANGE = (2, 8)


# %% PyTorch reference

def _quantize(u: torch.Tensor, k: int, levels: str) -> torch.Tensor:
    """The nearest level to each ``u`` (already scaled by 1/alpha); ties go to the larger magnitude.

    Args:
        u: ``(G, n)`` float32.
        k: number of positive levels, ``2^(bits-1) - 1``.
        levels: ``"linear"`` or ``"log"``.

    Returns:
        ``(G, n)`` float32 levels.
    """
    u = u.clamp(-1.0, 1.0)
    mag = u.abs()
    if levels == "linear":
        # Round half away from zero as floor(|u|*k + 0.5), not torch.round (half to even), so a
        # Triton kernel can do the same float32 operations and match bit for bit.
        return torch.sign(u) * torch.floor(mag * k + 0.5) / k
    # Log levels 2^-j, j = k-1 .. 0, and 0. The boundary between l and 2l is their arithmetic
    # midpoint 1.5*l; between 0 and the smallest level 2^-(k-1) it is 2^-k. Python builds these
    # powers of two exactly, and float32 holds them exactly (2^-127 for bits = 8 as a subnormal).
    # right=True sends a value equal to a boundary to the larger level.
    # level (k+1,): 0, 2^-(k-1), ..., 1/2, 1; bounds (k,): 2^-k, 1.5*2^-(k-1), ..., 0.75
    level = torch.tensor([0.0] + [2.0**-j for j in range(k - 1, -1, -1)],
                         dtype=torch.float32, device=u.device)
    bounds = torch.tensor([2.0**-k] + [1.5 * 2.0**-j for j in range(k - 1, 0, -1)],
                          dtype=torch.float32, device=u.device)
    return torch.sign(u) * level[torch.bucketize(mag, bounds, right=True)]


def _level_sums(w32: torch.Tensor, d32: torch.Tensor, src: torch.Tensor, param: torch.Tensor,
                k: int, levels: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum d*b*w, sum d*b^2)`` per group for b = q(src / param): one pure pass (compilable).

    Args:
        w32, d32, src: ``(G, n)`` float32.
        param: ``(G,)`` float32 divisor (alpha, or max|init| for the warm start).
    """
    b = _quantize(src / param.clamp_min(TINY)[:, None], k, levels)
    db = d32 * b
    return (db * w32).sum(dim=1), (db * b).sum(dim=1)


def _level_write(w32: torch.Tensor, alpha: torch.Tensor, k: int, levels: str,
                 dtype: torch.dtype) -> torch.Tensor:
    """``w_hat = alpha * q(w / alpha)`` in ``dtype``: one pure pass (compilable)."""
    return (alpha[:, None] * _quantize(w32 / alpha.clamp_min(TINY)[:, None], k, levels)).to(dtype)


def _prox_mbit_torch(w: torch.Tensor, d: torch.Tensor | None, bits: int, levels: str,
                     granularity: str, init: torch.Tensor | None, max_iter: int,
                     tol: float, compile: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference implementation of `prox_mbit` for validated, non-empty arguments.

    `_common.alternate` written for this op: from the first iteration on b = q(w / alpha) is a
    function of alpha, so an iteration is `_level_sums` of the current alpha (b is never stored)
    and the result is q(w / alpha) of the final alpha, which is what `alternate` returns. With
    ``compile``, `_level_sums` and `_level_write` run through `torch.compile` (one fused pass
    each; the sums are added in another order, so scales agree to float32 rounding).
    """
    w32 = groups(w, granularity)  # (G, n) float32
    d32 = curvature(d, w32, granularity)  # (G, n) float32
    k = 2 ** (bits - 1) - 1
    peak = w32.abs().amax(dim=1)  # (G,)
    sums = compiled(_level_sums) if compile else _level_sums
    write = compiled(_level_write) if compile else _level_write

    def scale_of(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
        # Weighted least squares sum(d b w) / sum(d b^2). A start whose signs disagree with w, or
        # an all-zero b, gives alpha <= 0 or 0/0: take max|w| (absmax scaling) instead. After one
        # iteration b has the signs of w and a nonzero largest element, so this never recurs.
        alpha = num / den.clamp_min(TINY)
        return torch.where((den > 0) & (alpha > 0), alpha, peak)

    if init is None:  # b0 = sign(w), sign(0) = +1
        b0 = torch.where(w32 >= 0, 1.0, -1.0)
        db = d32 * b0
        alpha = scale_of((db * w32).sum(dim=1), (db * b0).sum(dim=1))
    else:  # b0 = q(init / max|init|)
        init32 = groups(init, granularity)
        alpha = scale_of(*sums(w32, d32, init32, init32.abs().amax(dim=1), k, levels))
    active = torch.ones_like(alpha, dtype=torch.bool)  # (G,)
    for _ in range(max_iter - 1):
        alpha_next = scale_of(*sums(w32, d32, w32, alpha, k, levels))
        moved = (alpha_next - alpha).abs() >= tol
        alpha = torch.where(active, alpha_next, alpha)
        active = active & moved
        if not bool(active.any()):
            break
    w_hat = write(w32, alpha, k, levels, w.dtype)
    return w_hat.reshape(w.shape), scale_shape(alpha, granularity)


# %% Triton fast path
#
# Linear levels only, built from the passes of `_levels` (see there how levels stay exact): 2
# launches per iteration (level sums, scale update) and one for w_hat, plus one for max|init| with
# a warm start. Log levels stay on torch: their nearest level is a bucketize against k boundaries
# down to 2^-127 (a subnormal for bits = 8), and LAQ's experiments use linear levels.

def _prox_mbit_triton(w: torch.Tensor, d: torch.Tensor | None, bits: int, levels: str,
                      granularity: str, init: torch.Tensor | None, max_iter: int,
                      tol: float, compile: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton implementation of `prox_mbit` (linear levels) for validated, non-empty arguments."""
    assert levels == "linear", f"prox_mbit: no Triton kernel for levels={levels!r}"
    n_groups = 1 if granularity == "tensor" else w.shape[0]
    k = 2 ** (bits - 1) - 1
    prob = problem("prox_mbit", w, d, n_groups)
    if init is None:  # b0 = sign(w), sign(0) = +1
        b0_src, b0_levels = None, "sign"
        b0_param = torch.zeros(n_groups, dtype=torch.float32, device=w.device)
    else:  # b0 = q(init / max|init|)
        b0_src, b0_levels = problem("prox_mbit", init, None, n_groups).w, "linear"
        _, _, b0_param = level_sums(prob, prob.w.new_zeros(n_groups, dtype=torch.float32), "sign",
                                    w=b0_src, use_d=False)
    alpha, _ = alternate_triton(prob, b0_param, b0_levels, "linear", k=k, b0_src=b0_src,
                                max_iter=max_iter, tol=tol)
    w_hat = level_write(prob, alpha, alpha, "linear", k=k)
    return w_hat.reshape(w.shape), scale_shape(alpha, granularity)


# %% Public op

def prox_mbit(w: torch.Tensor, d: torch.Tensor | None = None, *, bits: int,
              levels: str = "linear", granularity: str = "tensor",
              init: torch.Tensor | None = None, max_iter: int = 10, tol: float = 1e-6,
              backend: str = "auto", compile: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``w`` to ``alpha * b`` on an m-bit grid, alternating over alpha and b (LAQ).

    Start from b0 = q(init / max|init|) with ``init`` (the previous ``w_hat``), else b0 = sign(w)
    with sign(0) = +1. Then repeat ``alpha = sum(d*b*w) / sum(d*b^2)`` and
    ``b = q(clip(w/alpha, -1, 1))``, where q is the nearest level (ties to the larger magnitude;
    linear levels use floor(|u|*k + 0.5)), until alpha moves by less than ``tol`` (per group) or
    after ``max_iter`` iterations. Each half-step minimizes the objective over its variable, so the
    objective never increases from one iteration to the next.

    Deviation from the reference code: its scale is ``sum(d|b||w|) / sum(d|b|)``, which is the
    least-squares optimum only for b in {-1, 0, 1}; once |b| < 1 it is not. We use the weighted
    least-squares scale. For bits = 2 the two agree, and ``levels="linear"`` is ternary: it
    matches ``prox_ternary(solver="approx")`` from the same b0, except at exact ties |w| = alpha/2,
    which q sends to ±1 and I_{alpha/2} to 0 (both optimal).

    If alpha would be <= 0 or undefined (``init`` with signs against ``w``, or an all-zero b0),
    that iteration uses alpha = max|w| of the group. An all-zero group gets alpha = 0, w_hat = 0.

    Args:
        w: ``(*shape)`` float32, float16 or bfloat16 weights, ``ndim >= 1``. Not modified.
        d: ``(*shape)`` positive curvature (entries must be > 0, not checked) or None for ones.
        bits: bits per weight, an int in [2, 8]: ``k = 2^(bits-1) - 1`` positive levels.
        levels: ``"linear"`` ({0, ±1/k, ..., ±1}) or ``"log"`` ({0, ±2^-(k-1), ..., ±1/2, ±1}).
        granularity: ``"tensor"`` (one alpha) or ``"channel"`` (one alpha per slice ``w[i]``).
        init: ``(*shape)`` warm start, or None.
        max_iter: most alternation iterations (>= 1).
        tol: a group stops when ``|alpha_t - alpha_{t-1}| < tol``.
        backend: ``"auto"``, ``"torch"`` or ``"triton"``. Both agree exactly on signs and
            levels given the same scales, and on scales to float32 rounding (the sums run in
            another order); the Triton path copies strided inputs to contiguous ones first.
        compile: on the torch backend, run each iteration's pass and the final w_hat through
            `torch.compile` (one fused pass each instead of about ten; the first call per
            dtype and levels compiles, seconds; where compiling fails a warning is logged and
            the passes run eagerly). Scales agree with ``compile=False`` to float32 rounding
            (the sums run in another order). Ignored by the Triton backend.

    Returns:
        ``(w_hat, alpha)``: ``w_hat`` of ``w``'s shape and dtype; ``alpha`` float32 of shape ()
        or ``(w.shape[0],)``. An empty ``w`` gives an empty ``w_hat`` and zero scales.

    Raises:
        TypeError: ``w``, ``d`` or ``init`` is not a tensor of a supported float dtype; ``bits``
            is not an int.
        ValueError: ``bits`` outside [2, 8]; 0-dimensional ``w``; ``d`` or ``init`` of another
            shape or device; unknown ``levels``, ``granularity`` or ``backend``; ``max_iter < 1``
            or ``tol < 0``.
        NotImplementedError: ``backend="triton"`` with ``levels="log"`` (log levels stay on torch).
        RuntimeError: ``backend="triton"`` without the triton package, or on CPU tensors without
            ``TRITON_INTERPRET=1``.

    Example:
        >>> w = torch.tensor([0.9, -0.3, 0.05, 0.6])
        >>> w_hat, alpha = prox_mbit(w, bits=3)  # levels {0, ±1/3, ±2/3, ±1}
        >>> (w_hat / alpha * 3).round()
        tensor([ 3., -1.,  0.,  2.])
    """
    check_backend(backend)
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise TypeError(f"bits: expected an int, got {type(bits).__name__} {bits!r}")
    if not BITS_RANGE[0] <= bits <= BITS_RANGE[1]:
        raise ValueError(f"bits: expected an int in [{BITS_RANGE[0]}, {BITS_RANGE[1]}], got {bits}")
    check_weight(w)
    check_like(d, w, "d")
    check_like(init, w, "init")
    check_choice("levels", levels, LEVELS)
    check_choice("granularity", granularity, GRANULARITIES)
    check_iteration(max_iter, tol)
    if w.numel() == 0:
        return torch.empty(w.shape, dtype=w.dtype, device=w.device), empty_scales(w, granularity)
    if backend == "triton" and levels == "log":
        raise NotImplementedError("prox_mbit: levels='log' has no Triton kernel (see "
                                  "`_prox_mbit_triton`); use backend='torch' or 'auto'")
    impl = select_impl("prox_mbit", backend, w, torch_impl=_prox_mbit_torch,
                       triton_impl=_prox_mbit_triton if levels == "linear" else None)
    return impl(w, d, bits, levels, granularity, init, max_iter, tol, compile)
