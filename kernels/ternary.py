"""Ternary proximal step: loss-aware ternarization (LAT, Hou & Kwok, ICLR 2018) and TWN.

All solvers return ``w_hat = alpha * I_delta(w)`` with I_delta(x) = +1 if x > delta, -1 if
x < -delta, 0 otherwise (strict), and target ``min sum d*(w_hat - w)^2`` over ``alpha > 0`` and
``b in {-1, 0, +1}^n`` (Hou & Kwok, ICLR 2018; how we depart from its code:
docs/algorithms.md, "Deviations and choices"):

- ``"exact"``: the global minimizer, from sorted candidates (LATe; see
  `_exact_scale` for why the argmax over top-j supports is optimal and how it departs from the
  reference code);
- ``"approx"``: alternating minimization over alpha and b (LATa);
- ``"twn"``: Ternary Weight Networks' fixed threshold 0.7*mean|w| (Li & Liu 2016, section 3.5).
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
    threshold,
)
from ._levels import alternate_triton, compiled, level_sums, level_write, problem

__all__ = ["prox_ternary"]

SOLVERS = ("exact", "approx", "twn")

# TWN's threshold factor: delta = 0.7 * mean|w| (Li & Liu 2016, eq. 8's approximation).
TWN_FACTOR = 0.7


# %% PyTorch reference

def _exact_scale(w32: torch.Tensor, d32: torch.Tensor) -> torch.Tensor:
    """The globally optimal ternary scale of each row, from sorted candidates (LATe).

    For a support S with signs b_i = sign(w_i), the best alpha is sum_S d|w| / sum_S d, and the
    objective is sum d*w^2 minus f(S) = (sum_S d|w|)^2 / sum_S d. Why a top-j set is enough: take
    a global minimizer (alpha*, b*). For that alpha* each b_i is chosen on its own, and
    d_i*(alpha*|b_i| - |w_i|)^2 is smallest with |b_i| = 1 exactly when |w_i| >= alpha*/2 (either
    choice at equality). So an optimal support is {i : |w_i| >= alpha*/2}, the j largest |w| for
    some j. Every j is feasible, so max_j f_j is the global optimum. Sorting |w| in descending
    order (carrying d) gives all f_j with two cumulative sums; the argmax (first index on ties)
    is j*. The returned pattern I_{alpha/2}(w) is the best b for alpha_{j*}, so its objective is at
    most f_{j*}'s and hence optimal.

    The reference code (LATe's ``findalpha``) keeps only "valid" j < n, whose
    threshold c_j = alpha_j/2 lies strictly between the j-th and (j+1)-th largest |w|, and falls
    back to delta = 0.7*c_n when none is valid. It never considers j = n, and with tied |w| or a
    |w| exactly at c_j the strict test rejects the optimum; the fallback is not optimal (all |w|
    equal gives alpha = 0.7*|w| instead of |w|). We do not copy that: the argmax over all j needs
    no validity test.

    Args:
        w32: ``(G, n)`` float32 weights, n >= 1.
        d32: ``(G, n)`` float32 positive curvature.

    Returns:
        ``(G,)`` float32 alpha; 0 for an all-zero row.
    """
    a_sorted, order = w32.abs().sort(dim=1, descending=True, stable=True)  # (G, n)
    d_sorted = d32.gather(1, order)  # (G, n)
    cum_da = (d_sorted * a_sorted).cumsum(dim=1)  # (G, n): sum_{i<=j} d a, float32
    cum_d = d_sorted.cumsum(dim=1)  # (G, n): sum_{i<=j} d > 0
    alpha_j = cum_da / cum_d  # (G, n): best scale of the top-j support
    gain = cum_da * alpha_j  # (G, n): f_j = (sum d a)^2 / sum d, without squaring cum_da
    j = gain.argmax(dim=1, keepdim=True)  # (G, 1), first index on ties
    return alpha_j.gather(1, j).squeeze(1)


def _twn_scale(w32: torch.Tensor, d32: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """TWN's threshold and its least-squares scale: ``(alpha, delta)``, each ``(G,)`` float32."""
    a = w32.abs()  # (G, n)
    delta = TWN_FACTOR * a.mean(dim=1)  # (G,): unweighted, as in TWN
    support = (a > delta[:, None]).float()  # (G, n)
    ds = d32 * support
    alpha = (ds * a).sum(dim=1) / ds.sum(dim=1).clamp_min(TINY)
    return alpha, delta


def _support_sums(w32: torch.Tensor, d32: torch.Tensor,
                  delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum d|b||w|, sum d|b|)`` per group for b = I_delta(w): |b| = 1 exactly where
    |w| > delta. One pure pass (compilable)."""
    a = w32.abs()
    db = d32 * (a > delta[:, None])
    return (db * a).sum(dim=1), db.sum(dim=1)


def _ternary_write(w32: torch.Tensor, alpha: torch.Tensor, delta: torch.Tensor,
                   dtype: torch.dtype) -> torch.Tensor:
    """``w_hat = alpha * I_delta(w)`` in ``dtype``: one pure pass (compilable)."""
    return (alpha[:, None] * threshold(w32, delta)).to(dtype)


def _approx_scale(w32: torch.Tensor, d32: torch.Tensor, init: torch.Tensor | None,
                  max_iter: int, tol: float, compile: bool = False) -> torch.Tensor:
    """Alternating minimization (LATa): ``(G,)`` float32 alpha of the last iteration.

    `_common.alternate` written for this op: from the first iteration on b = I_{alpha/2}(w) is a
    function of alpha, so an iteration is `_support_sums` of the current alpha (b is never
    stored). With ``compile`` those sums run through `torch.compile` (one fused pass; the sums
    are added in another order, so scales agree to float32 rounding).
    """
    peak = w32.abs().amax(dim=1)  # (G,)
    sums = compiled(_support_sums) if compile else _support_sums

    def scale_of(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
        # Least squares for a ternary b whose signs follow w: sum d|b||w| / sum d|b|. A row whose
        # b is all zero falls back to max|w| (the scale of the support {argmax |w|}); the next
        # pattern I_{alpha/2}(w) then holds at least the largest |w|.
        return torch.where(den > 0, num / den.clamp_min(TINY), peak)

    # b0: TWN's pattern (how the reference initializes Wq), or I_0(init) = the reference's
    # sign(Wq_prev), where 0 stays 0 (|b0| = 1 where init != 0).
    if init is None:
        alpha = scale_of(*sums(w32, d32, TWN_FACTOR * w32.abs().mean(dim=1)))
    else:
        db = d32 * (init != 0)
        alpha = scale_of((db * w32.abs()).sum(dim=1), db.sum(dim=1))
    active = torch.ones_like(alpha, dtype=torch.bool)  # (G,)
    for _ in range(max_iter - 1):
        alpha_next = scale_of(*sums(w32, d32, alpha / 2))
        moved = (alpha_next - alpha).abs() >= tol
        alpha = torch.where(active, alpha_next, alpha)
        active = active & moved
        if not bool(active.any()):
            break
    return alpha


def _prox_ternary_torch(w: torch.Tensor, d: torch.Tensor | None, solver: str, granularity: str,
                        init: torch.Tensor | None, max_iter: int, tol: float,
                        compile: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference implementation of `prox_ternary` for validated, non-empty arguments."""
    w32 = groups(w, granularity)  # (G, n) float32
    d32 = curvature(d, w32, granularity)  # (G, n) float32
    if solver == "exact":
        alpha = _exact_scale(w32, d32)
        delta = alpha / 2
    elif solver == "twn":
        alpha, delta = _twn_scale(w32, d32)
    else:
        init32 = None if init is None else groups(init, granularity)
        alpha = _approx_scale(w32, d32, init32, max_iter, tol, compile)
        delta = alpha / 2
    write = compiled(_ternary_write) if compile and solver == "approx" else _ternary_write
    w_hat = write(w32, alpha, delta, w.dtype)  # (G, n)
    return (w_hat.reshape(w.shape), scale_shape(alpha, granularity),
            scale_shape(delta, granularity))


# %% Triton fast path
#
# Built from the passes of `_levels` (see there how decisions stay exact):
#   "twn"     3 launches: sum|w| -> delta; the sums of S = {|w| > delta} -> alpha; w_hat.
#   "approx"  2 per iteration (level sums, scale update) + w_hat, no host synchronization.
#   "exact"   the scale stays on torch: it needs a sort of |w| per group (plus a gather and two
#             cumulative sums), which torch's radix sort already does near the memory limit and a
#             hand-written Triton sort would not beat; the threshold and w_hat are one Triton pass.

def _prox_ternary_triton(w: torch.Tensor, d: torch.Tensor | None, solver: str, granularity: str,
                         init: torch.Tensor | None, max_iter: int, tol: float,
                         compile: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton implementation of `prox_ternary` for validated, non-empty arguments."""
    n_groups = 1 if granularity == "tensor" else w.shape[0]
    prob = problem("prox_ternary", w, d, n_groups)
    n = prob.w.shape[1]
    unused = torch.zeros(n_groups, dtype=torch.float32, device=w.device)
    if solver == "exact":
        w32 = groups(w, granularity)
        alpha = _exact_scale(w32, curvature(d, w32, granularity))
        delta = alpha / 2
    else:
        delta = None
        if solver == "twn" or init is None:  # TWN's threshold: 0.7 * mean|w|, unweighted
            sum_abs, _, _ = level_sums(prob, unused, "sign", use_d=False)
            delta = TWN_FACTOR * (sum_abs / n)
        if solver == "twn":
            num, den, _ = level_sums(prob, delta, "ternary")
            alpha = num / den.clamp_min(TINY)
        else:  # b0: TWN's pattern, or I_0(init) = the signs of init with 0 kept
            b0_src = None if init is None else problem("prox_ternary", init, None, n_groups).w
            b0_param = unused if init is not None else delta
            alpha, delta = alternate_triton(prob, b0_param, "ternary", "ternary", b0_src=b0_src,
                                            max_iter=max_iter, tol=tol)
    w_hat = level_write(prob, delta, alpha, "ternary")
    return (w_hat.reshape(w.shape), scale_shape(alpha, granularity),
            scale_shape(delta, granularity))


# %% Public op

def prox_ternary(w: torch.Tensor, d: torch.Tensor | None = None, *, solver: str = "exact",
                 granularity: str = "tensor", init: torch.Tensor | None = None,
                 max_iter: int = 10, tol: float = 1e-6, backend: str = "auto",
                 compile: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ternarize ``w`` as ``alpha * I_delta(w)``, minimizing (or approximating) sum d*(w_hat - w)^2.

    Solvers:

    - ``"exact"``: the global minimizer (see `_exact_scale`); ``delta = alpha / 2``.
    - ``"approx"``: starting from b0 = I_0(init) (the signs of ``init``, 0 where it is 0), or
      from TWN's pattern I_{0.7 mean|w|}(w) without ``init``, repeat ``alpha = sum(d|b||w|) /
      sum(d|b|)`` then ``b = I_{alpha/2}(w)``; a group stops when alpha moved by less than
      ``tol``, all stop after ``max_iter`` iterations. A group whose b is all zero (an all-zero
      ``init``) takes alpha = max|w| for that iteration. ``delta = alpha / 2``.
    - ``"twn"``: ``delta = 0.7 * mean|w|`` (unweighted, as TWN) and, on S = {|w| > delta},
      ``alpha = sum_S d|w| / sum_S d``: TWN's mean of |w| over S when ``d`` is None, and the
      loss-aware least-squares scale for TWN's fixed threshold otherwise.

    An all-zero group gets ``alpha = delta = 0`` and ``w_hat = 0``.

    Args:
        w: ``(*shape)`` float32, float16 or bfloat16 weights, ``ndim >= 1``. Not modified.
        d: ``(*shape)`` positive curvature (entries must be > 0, not checked) or None for ones.
        solver: ``"exact"``, ``"approx"`` or ``"twn"``.
        granularity: ``"tensor"`` (one alpha) or ``"channel"`` (one alpha per slice ``w[i]``).
        init: ``(*shape)`` warm start for ``"approx"`` (the previous ``w_hat``); other solvers
            ignore it.
        max_iter: most iterations of ``"approx"`` (>= 1).
        tol: ``"approx"`` stops a group when ``|alpha_t - alpha_{t-1}| < tol``.
        backend: ``"auto"``, ``"torch"`` or ``"triton"``. Both agree exactly on signs and
            levels given the same scales, and on scales to float32 rounding (the sums run in
            another order); the Triton path copies strided inputs to contiguous ones first.
        compile: ``"approx"`` on the torch backend: run each iteration's pass through
            `torch.compile` (one fused pass instead of about six; the first call per dtype
            compiles, seconds; where compiling fails a warning is logged and it runs eagerly).
            Scales agree with ``compile=False`` to float32 rounding. Ignored otherwise.

    Returns:
        ``(w_hat, alpha, delta)``: ``w_hat`` of ``w``'s shape and dtype with values in
        ``{-alpha, 0, +alpha}`` per group; ``alpha`` and ``delta`` float32 of shape () or
        ``(w.shape[0],)``. An empty ``w`` gives an empty ``w_hat`` and zero scales.

    Raises:
        TypeError: ``w``, ``d`` or ``init`` is not a tensor of a supported float dtype.
        ValueError: 0-dimensional ``w``; ``d`` or ``init`` of another shape or device; unknown
            ``solver``, ``granularity`` or ``backend``; ``max_iter < 1`` or ``tol < 0``.
        RuntimeError: ``backend="triton"`` without the triton package, or on CPU tensors without
            ``TRITON_INTERPRET=1``.

    Example:
        >>> w = torch.tensor([1.0, -0.9, 0.1, 0.0])
        >>> w_hat, alpha, delta = prox_ternary(w)
        >>> w_hat, alpha, delta
        (tensor([ 0.9500, -0.9500,  0.0000,  0.0000]), tensor(0.9500), tensor(0.4750))
    """
    check_backend(backend)
    check_weight(w)
    check_like(d, w, "d")
    check_like(init, w, "init")
    check_choice("solver", solver, SOLVERS)
    check_choice("granularity", granularity, GRANULARITIES)
    check_iteration(max_iter, tol)
    if w.numel() == 0:
        zeros = empty_scales(w, granularity)
        return torch.empty(w.shape, dtype=w.dtype, device=w.device), zeros, zeros.clone()
    impl = select_impl("prox_ternary", backend, w, torch_impl=_prox_ternary_torch,
                       triton_impl=_prox_ternary_triton)
    return impl(w, d, solver, granularity, init, max_iter, tol, compile)
