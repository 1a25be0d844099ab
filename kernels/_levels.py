"""Triton passes shared by `prox_ternary` and `prox_mbit`: level sums, scale updates, w_hat.

Both ops fit ``w_hat = alpha * b`` per group (a row of the contiguous ``(G, n)`` view) with b on a
level set, and their solvers are made of three kinds of pass:

- `level_sums`: per group, the two sums of the least-squares scale for levels b chosen from a
  source tensor (w, or the warm start) and a per-group float32 parameter, plus max|w|;
- `alternate_triton`: `_common.alternate` on the device: one level-sums launch and one small
  update launch per iteration, with no host synchronization. A group that has converged is frozen
  by the update kernel instead of ending the loop; the reference freezes it too, so the result is
  the same, at the price of iterations every group skips once all have converged;
- `level_write`: ``w_hat = alpha * b``.

Level rules (the constexpr LEVELS), for the float32 source value s and the group's parameter:

- ``"sign"``: b = +1 if s >= 0 else -1 (sign(0) = +1); the parameter is unused;
- ``"ternary"``: b = I_delta(s), +1 above delta, -1 below -delta, else 0 (strict); param = delta;
- ``"linear"``: u = clip(s / max(alpha, TINY), -1, 1), b = sign(u) * floor(|u| * k + 0.5) / k;
  param = alpha.

Exactness: a level is computed with the reference's float32 operations in the same order
(correctly rounded division, no FMA contraction: launches pass ``enable_fp_fusion=False``), so for
the same float32 parameter both backends choose the same b. Only the sums differ from the
reference, in the order of their additions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from ._triton import (
    MAX_PARTIALS,
    TINY_C,
    block_size,
    cdiv,
    check_launch,
    jit,
    num_warps,
    row_view,
    store_cast,
    target_programs,
    tl,
    tl_dtype,
)


class Problem(NamedTuple):
    """One op's inputs as contiguous ``(G, n)`` views, and how launches split them."""

    w: torch.Tensor  # (G, n), the caller's dtype
    d: torch.Tensor | None  # (G, n) or None for all ones
    programs_per_group: int
    block: int


def problem(op: str, w: torch.Tensor, d: torch.Tensor | None, groups: int) -> Problem:
    """View ``w`` (and ``d``) as ``(groups, n)``, copying strided inputs, and size the grid.

    Each group gets about ``target_programs / groups`` programs (at least one), each looping over
    every ``programs_per_group``-th tile of its row.
    """
    check_launch(op, _level_sums_kernel, [w] if d is None else [w, d])
    w2 = row_view(w, groups)
    d2 = None if d is None else row_view(d, groups)
    n = w2.shape[1]
    block = block_size(n, w.device)
    per_group = max(1, min(cdiv(n, block), target_programs(w.device) // groups, MAX_PARTIALS))
    return Problem(w2, d2, per_group, block)


@jit
def _levels(s, param, k, LEVELS: tl.constexpr):
    """The levels b of float32 source values ``s`` (rules in the module docstring)."""
    if LEVELS == "sign":
        b = tl.where(s >= 0, 1.0, -1.0)
    elif LEVELS == "ternary":
        b = tl.where(s > param, 1.0, tl.where(s < -param, -1.0, 0.0))
    else:
        u = tl.div_rn(s, tl.maximum(param, TINY_C))
        u = tl.minimum(tl.maximum(u, -1.0), 1.0)
        sign_u = tl.where(u > 0, 1.0, tl.where(u < 0, -1.0, 0.0))
        b = tl.div_rn(sign_u * tl.floor(tl.abs(u) * k + 0.5), k)  # round half away from zero
    return b


@jit(do_not_specialize=["programs_per_group"])
def _level_sums_kernel(
    # pointers: w, d and the levels' source as (G, n); per-group parameters (G,); partials
    # (G, programs_per_group, 3): sum d*b*w, sum d*b^2, max|w|
    w_ptr, d_ptr, src_ptr, param_ptr, partials_ptr,
    # sizes
    n, programs_per_group, k,
    # meta-parameters
    HAS_D: tl.constexpr, HAS_SRC: tl.constexpr, LEVELS: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    group = pid // programs_per_group
    row = group.to(tl.int64) * n
    param = tl.load(param_ptr + group)
    lanes = tl.arange(0, BLOCK)
    # float32 accumulators, one per lane, whatever the input dtype.
    num = tl.zeros((BLOCK,), tl.float32)
    den = tl.zeros((BLOCK,), tl.float32)
    peak = tl.zeros((BLOCK,), tl.float32)
    for tile in range(pid % programs_per_group, tl.cdiv(n, BLOCK), programs_per_group):
        offs = row + tile * BLOCK + lanes
        mask = tile * BLOCK + lanes < n
        w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        s = tl.load(src_ptr + offs, mask=mask, other=0.0).to(tl.float32) if HAS_SRC else w
        ones = tl.where(mask, 1.0, 0.0)
        d = tl.load(d_ptr + offs, mask=mask, other=0.0).to(tl.float32) if HAS_D else ones
        b = _levels(s, param, k, LEVELS)
        if LEVELS == "ternary":  # the reference's sum d|b||w| / sum d|b| (b may disagree with w)
            db = d * tl.abs(b)
            num += db * tl.abs(w)
            den += db
        else:  # weighted least squares sum d*b*w / sum d*b^2
            db = d * b
            num += db * w
            den += db * b
        peak = tl.maximum(peak, tl.abs(w))
    out = partials_ptr + 3 * pid
    tl.store(out, tl.sum(num))
    tl.store(out + 1, tl.sum(den))
    tl.store(out + 2, tl.max(peak))


@jit(do_not_specialize=["programs_per_group"])
def _scale_update_kernel(
    # pointers: partials (G, programs_per_group, 3); per-group alpha, parameter, active flag (G,)
    partials_ptr, alpha_ptr, param_ptr, active_ptr,
    # sizes and scalars
    programs_per_group, tol,
    # meta-parameters
    RULE: tl.constexpr, FIRST: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """One scale half-step of the alternation for group ``program_id``, with its freezing rule."""
    group = tl.program_id(0)
    k = tl.arange(0, BLOCK_P)
    inside = k < programs_per_group
    parts = partials_ptr + 3 * (group * programs_per_group + k)
    num = tl.sum(tl.load(parts, mask=inside, other=0.0))
    den = tl.sum(tl.load(parts + 1, mask=inside, other=0.0))
    peak = tl.max(tl.load(parts + 2, mask=inside, other=0.0))
    ratio = tl.div_rn(num, tl.maximum(den, TINY_C))
    if RULE == "ternary":  # an all-zero b falls back to max|w| (`ternary._approx_scale`)
        alpha_next = tl.where(den > 0, ratio, peak)
    else:  # alpha <= 0 or 0/0 falls back to max|w| (`mbit._prox_mbit_torch`)
        alpha_next = tl.where((den > 0) & (ratio > 0), ratio, peak)
    if FIRST:
        alpha = alpha_next
    else:  # `_common.alternate`: a group stops once alpha moved by less than tol
        alpha_prev = tl.load(alpha_ptr + group)
        active = tl.load(active_ptr + group) != 0
        alpha = tl.where(active, alpha_next, alpha_prev)
        moved = tl.abs(alpha_next - alpha_prev) >= tol
        tl.store(active_ptr + group, (active & moved).to(tl.int32))
    tl.store(alpha_ptr + group, alpha)
    tl.store(param_ptr + group, alpha * 0.5 if RULE == "ternary" else alpha)


@jit(do_not_specialize=["programs_per_group"])
def _level_write_kernel(
    # pointers: w (G, n); per-group parameter and alpha (G,); w_hat (G, n)
    w_ptr, param_ptr, alpha_ptr, out_ptr,
    # sizes
    n, programs_per_group, k,
    # meta-parameters
    LEVELS: tl.constexpr, OUT_DTYPE: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    group = pid // programs_per_group
    row = group.to(tl.int64) * n
    param = tl.load(param_ptr + group)
    alpha = tl.load(alpha_ptr + group)
    lanes = tl.arange(0, BLOCK)
    for tile in range(pid % programs_per_group, tl.cdiv(n, BLOCK), programs_per_group):
        offs = row + tile * BLOCK + lanes
        mask = tile * BLOCK + lanes < n
        w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        store_cast(out_ptr + offs, alpha * _levels(w, param, k, LEVELS), mask, OUT_DTYPE)


# %% Launchers

def level_sums(prob: Problem, param: torch.Tensor, levels: str, *, k: int = 1,
               src: torch.Tensor | None = None, w: torch.Tensor | None = None,
               use_d: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-group ``(sum d*b*w, sum d*b^2, max|w|)``, each ``(G,)`` float32, for b = levels(src).

    Args:
        prob: the problem.
        param: ``(G,)`` float32 parameter of the levels (delta or alpha; unused by ``"sign"``).
        levels: ``"sign"``, ``"ternary"`` or ``"linear"``.
        k: positive levels of ``"linear"``.
        src: ``(G, n)`` source of the levels; None: w itself.
        w: ``(G, n)`` in place of ``prob.w`` (to take max|init|).
        use_d: weight by ``prob.d``; False sums with d = 1.
    """
    w = prob.w if w is None else w
    groups, n = w.shape
    d = prob.d if use_d else None
    partials = torch.empty(groups, prob.programs_per_group, 3, dtype=torch.float32, device=w.device)
    _level_sums_kernel[(groups * prob.programs_per_group,)](
        w, w if d is None else d, w if src is None else src, param, partials,
        n, prob.programs_per_group, float(k),
        HAS_D=d is not None, HAS_SRC=src is not None, LEVELS=levels, BLOCK=prob.block,
        num_warps=num_warps(prob.block), enable_fp_fusion=False)
    # Sums over a group's programs, in torch: a few tiny launches, only for the non-iterative steps.
    return partials[:, :, 0].sum(1), partials[:, :, 1].sum(1), partials[:, :, 2].amax(1)


def alternate_triton(prob: Problem, b0_param: torch.Tensor, b0_levels: str, rule: str, *,
                     k: int = 1, b0_src: torch.Tensor | None = None, max_iter: int,
                     tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`_common.alternate` for the ternary (``rule="ternary"``) or linear m-bit scale rule.

    b0 is ``b0_levels`` of ``b0_src`` (or of w) with ``b0_param``; each iteration then takes the
    scale of the current b (with the rule's fallback to max|w|) and b = levels(alpha).

    Returns:
        ``(alpha, param)``: ``(G,)`` float32; param is the final levels' parameter (delta =
        alpha / 2 for ternary, alpha for linear), so that ``level_write`` gives the final b.
    """
    groups = prob.w.shape[0]
    device = prob.w.device
    alpha = torch.zeros(groups, dtype=torch.float32, device=device)
    param = torch.empty(groups, dtype=torch.float32, device=device)
    active = torch.ones(groups, dtype=torch.int32, device=device)
    partials = torch.empty(groups, prob.programs_per_group, 3, dtype=torch.float32, device=device)
    n = prob.w.shape[1]
    warps = num_warps(prob.block)
    d = prob.w if prob.d is None else prob.d
    for i in range(max_iter):
        first = i == 0
        levels, src, level_param = (b0_levels, b0_src, b0_param) if first else (rule, None, param)
        _level_sums_kernel[(groups * prob.programs_per_group,)](
            prob.w, d, prob.w if src is None else src, level_param, partials,
            n, prob.programs_per_group, float(k),
            HAS_D=prob.d is not None, HAS_SRC=src is not None, LEVELS=levels, BLOCK=prob.block,
            num_warps=warps, enable_fp_fusion=False)
        _scale_update_kernel[(groups,)](
            partials, alpha, param, active, prob.programs_per_group, tol,
            RULE=rule, FIRST=first, BLOCK_P=MAX_PARTIALS)
    return alpha, param


def level_write(prob: Problem, param: torch.Tensor, alpha: torch.Tensor, levels: str, *,
                k: int = 1) -> torch.Tensor:
    """``w_hat = alpha * levels(w)``: ``(G, n)`` in w's dtype."""
    groups, n = prob.w.shape
    out = torch.empty_like(prob.w)
    _level_write_kernel[(groups * prob.programs_per_group,)](
        prob.w, param, alpha, out, n, prob.programs_per_group, float(k),
        LEVELS=levels, OUT_DTYPE=tl_dtype(prob.w.dtype), BLOCK=prob.block,
        num_warps=num_warps(prob.block), enable_fp_fusion=False)
    return out


# %% torch.compile of the torch reference's passes
#
# The torch references (`mbit._prox_mbit_torch`, `ternary._approx_scale`) write each iteration of
# the alternation as one pure function of (w, d, scale) returning the two sums of the next scale,
# the levels recomputed inside instead of stored. Eagerly that is about ten full-tensor passes per
# iteration; `torch.compile` fuses it into one read of w and d (the paper's MLP on CPU: 16 ms
# instead of 175 ms per iteration for a 2048 x 2048 m-bit weight, 2 ms instead of 78 ms ternary).

_COMPILED: dict[Callable[..., Any], Callable[..., Any] | None] = {}
log = logging.getLogger(__name__)


def compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``torch.compile(fn, dynamic=True)``, made once per function, or ``fn`` itself for good once
    compiling failed (no C++ compiler, ...; logged once as a warning). Compiling happens before the
    compiled code runs, and the passes only read their inputs (or, like bench.optim's clip steps,
    mutate them only in code that has not run yet), so falling back repeats nothing. The returned
    callable may be kept: it looks the compiled function up on every call."""
    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn, dynamic=True)
    if _COMPILED[fn] is None:
        return fn

    def call(*args: Any) -> Any:
        compiled_fn = _COMPILED.get(fn)
        if compiled_fn is not None:
            try:
                return compiled_fn(*args)
            except Exception as err:  # torch._dynamo / inductor failures have no common base
                log.warning("torch.compile of %s failed (%s: %s); running it eagerly",
                            fn.__name__, type(err).__name__, str(err).splitlines()[0][:200])
                _COMPILED[fn] = None
        return fn(*args)

    return call
