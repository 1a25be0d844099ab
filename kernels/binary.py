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

import functools
from collections.abc import Sequence
from typing import NamedTuple

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
from ._triton import (
    MAX_PARTIALS,
    TINY_C,
    block_size,
    cdiv,
    check_launch,
    device_table,
    jit,
    num_warps,
    row_view,
    store_cast,
    target_programs,
    tl,
    tl_dtype,
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


# %% Triton fast path
#
# Memory traffic (float32, with d): the floor is reading w and d and writing w_hat, 12 bytes per
# element. Every w_hat needs alpha, a reduction over the whole group, so two plain passes read w
# twice (16 B). Instead pass 1 (`_binary_sums_kernel`) reads w and d, accumulates both sums and
# stores sign(w) as bits (1/8 B per element); pass 2 (`_binary_write_kernel`) reduces the sums to
# alpha and expands the bits: 12.25 B per element. Without d: 8.25 B against a floor of 8.
#
# The work is described by two tables, so that one pair of launches serves one tensor
# (`prox_binary`), all the weights of a model (`prox_binary_multi`) and the fused optimizer step
# (`fused_adam_lab_step_`): a tensor table of data pointers, and a program table (`_plan`) that
# hands each program a run of tiles inside one segment (one group: a whole tensor or one row).
# A tile is BLOCK consecutive elements of a segment, held as (BLOCK // 32, 32): one row of the
# tile is one int32 word of sign bits.

class Plan(NamedTuple):
    """How a launch splits segments into programs (see `_plan`)."""

    programs: torch.Tensor  # (n_programs, 8) int64 on the device: the program table
    n_programs: int
    tiles_per_program: int
    n_words: int  # int32 words of sign bits over all segments
    block: int  # elements per tile


@functools.lru_cache(maxsize=256)
def _plan(shapes: tuple[tuple[int, int], ...], device: torch.device) -> Plan:
    """The program table for tensors viewed as ``(rows, n)``, one segment per row, all n >= 1.

    Each segment of ``tiles`` tiles gets ``ceil(tiles / tiles_per_program)`` programs, and
    tiles_per_program is chosen so that the launch has about `target_programs` programs. Columns:
    0 tensor index, 1 first element of the segment in its tensor, 2 segment length n, 3 first
    tile of the program, 4 first program of the segment (its partials start there), 5 programs of
    the segment, 6 segment index (where its alpha goes), 7 first sign word of the segment.

    The table depends on sizes only (no pointers), so it is cached per shapes and device.
    """
    rows = torch.tensor([r for r, _ in shapes], dtype=torch.int64)  # (T,)
    lens = torch.tensor([n for _, n in shapes], dtype=torch.int64)  # (T,)
    seg_tensor = torch.repeat_interleave(torch.arange(len(shapes)), rows)  # (S,)
    first_seg = torch.cumsum(rows, 0) - rows  # (T,)
    seg_len = lens[seg_tensor]  # (S,)
    seg_start = (torch.arange(seg_tensor.numel()) - first_seg[seg_tensor]) * seg_len
    block = block_size(int(lens.max()), device)
    tiles = (seg_len + block - 1) // block  # (S,)
    per_program = max(1, cdiv(int(tiles.sum()), target_programs(device)))
    chunks = (tiles + per_program - 1) // per_program  # (S,) programs per segment
    first_prog = torch.cumsum(chunks, 0) - chunks
    words = (seg_len + 31) // 32
    first_word = torch.cumsum(words, 0) - words
    prog_seg = torch.repeat_interleave(torch.arange(seg_tensor.numel()), chunks)  # (P,)
    tile0 = (torch.arange(prog_seg.numel()) - first_prog[prog_seg]) * per_program
    table = torch.stack([seg_tensor[prog_seg], seg_start[prog_seg], seg_len[prog_seg], tile0,
                         first_prog[prog_seg], chunks[prog_seg], prog_seg, first_word[prog_seg]],
                        dim=1)  # (P, 8)
    return Plan(table.to(device), table.shape[0], per_program, int(words.sum()), block)


@jit
def _program(programs_ptr, pid):
    """The eight columns of program ``pid`` in the program table (see `_plan`)."""
    row = programs_ptr + 8 * pid
    return (tl.load(row), tl.load(row + 1), tl.load(row + 2), tl.load(row + 3),
            tl.load(row + 4), tl.load(row + 5), tl.load(row + 6), tl.load(row + 7))


@jit
def sign_words(w, mask, lanes):
    """Sign bits of a ``(BLOCK // 32, 32)`` tile, one int32 word per row.

    Bit j of word i is ``w[i, j] >= 0`` (so -0.0 counts as positive: sign(0) = +1); masked lanes
    give 0.
    """
    bits = ((w >= 0) & mask).to(tl.int32) << lanes[None, :]
    # Distinct bits add without carries, so the int32 sum is their OR (bit 31 wraps to the sign).
    return tl.sum(bits, axis=1)


@jit(do_not_specialize=["tiles_per_program"])
def _binary_sums_kernel(
    # pointers: tensor table (T, 3) of w, d, w_hat; program table; partials (P, 2); sign words
    tensors_ptr, programs_ptr, partials_ptr, bits_ptr,
    # sizes
    tiles_per_program,
    # meta-parameters
    W_DTYPE: tl.constexpr, D_DTYPE: tl.constexpr, HAS_D: tl.constexpr, BLOCK: tl.constexpr,
):
    """Pass 1: per program, sum d*|w| and sum d over its tiles, and store the sign bits."""
    pid = tl.program_id(0)
    tensor, start, n, tile0, _, _, _, word0 = _program(programs_ptr, pid)
    w_ptr = tl.load(tensors_ptr + 3 * tensor).to(tl.pointer_type(W_DTYPE)) + start
    d_ptr = tl.load(tensors_ptr + 3 * tensor + 1).to(tl.pointer_type(D_DTYPE)) + start
    rows = tl.arange(0, BLOCK // 32)
    lanes = tl.arange(0, 32)
    inner = rows[:, None] * 32 + lanes[None, :]  # (BLOCK // 32, 32) offsets inside a tile
    # float32 accumulators, one per lane, whatever the input dtype: each lane adds one value per
    # tile, then one tree reduction at the end (float16 sums of d would overflow and lose bits).
    num = tl.zeros((BLOCK // 32, 32), tl.float32)  # sum d*|w|
    den = tl.zeros((BLOCK // 32, 32), tl.float32)  # sum d
    last = tl.minimum(tile0 + tiles_per_program, tl.cdiv(n, BLOCK))
    for tile in range(tile0, last):
        offs = tile * BLOCK + inner  # int64, like the table's sizes
        mask = offs < n
        w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_D:
            d = tl.load(d_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            num += d * tl.abs(w)
            den += d
        else:
            num += tl.abs(w)
        words = tile * (BLOCK // 32) + rows  # (BLOCK // 32,)
        tl.store(bits_ptr + word0 + words, sign_words(w, mask, lanes), mask=words * 32 < n)
    tl.store(partials_ptr + 2 * pid, tl.sum(num))
    tl.store(partials_ptr + 2 * pid + 1, tl.sum(den))


@jit(do_not_specialize=["tiles_per_program"])
def _binary_write_kernel(
    # pointers: tensor table (T, TENSOR_COLS) whose column OUT_COL holds w_hat; program table;
    # partials and sign words of pass 1; alphas (S,)
    tensors_ptr, programs_ptr, partials_ptr, bits_ptr, alphas_ptr,
    # sizes
    tiles_per_program,
    # meta-parameters
    TENSOR_COLS: tl.constexpr, OUT_COL: tl.constexpr, OUT_DTYPE: tl.constexpr,
    HAS_D: tl.constexpr, BLOCK: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """Pass 2: alpha of the segment from pass 1's partials, then w_hat = alpha * sign(w)."""
    pid = tl.program_id(0)
    tensor, start, n, tile0, part0, parts, segment, word0 = _program(programs_ptr, pid)
    out_ptr = tl.load(tensors_ptr + TENSOR_COLS * tensor + OUT_COL)
    out_ptr = out_ptr.to(tl.pointer_type(OUT_DTYPE)) + start
    # Every program of a segment sums the same partials in the same order, so they all hold the
    # same alpha, bit for bit; float32 as in pass 1.
    k = tl.arange(0, BLOCK_P)
    num = tl.zeros((BLOCK_P,), tl.float32)
    den = tl.zeros((BLOCK_P,), tl.float32)
    for p in range(part0, part0 + parts, BLOCK_P):
        inside = p + k < part0 + parts
        num += tl.load(partials_ptr + 2 * (p + k), mask=inside, other=0.0)
        den += tl.load(partials_ptr + 2 * (p + k) + 1, mask=inside, other=0.0)
    if HAS_D:
        alpha = tl.div_rn(tl.sum(num), tl.maximum(tl.sum(den), TINY_C))
    else:  # BWN: mean |w|
        alpha = tl.div_rn(tl.sum(num), n.to(tl.float32))
    if tile0 == 0:
        tl.store(alphas_ptr + segment, alpha)
    rows = tl.arange(0, BLOCK // 32)
    lanes = tl.arange(0, 32)
    inner = rows[:, None] * 32 + lanes[None, :]  # (BLOCK // 32, 32) offsets inside a tile
    last = tl.minimum(tile0 + tiles_per_program, tl.cdiv(n, BLOCK))
    for tile in range(tile0, last):
        words = tile * (BLOCK // 32) + rows
        word = tl.load(bits_ptr + word0 + words, mask=words * 32 < n, other=0)
        positive = ((word[:, None] >> lanes[None, :]) & 1) != 0  # (BLOCK // 32, 32)
        offs = tile * BLOCK + inner
        store_cast(out_ptr + offs, tl.where(positive, alpha, -alpha), offs < n, OUT_DTYPE)


def binary_passes(op: str, ws: Sequence[torch.Tensor], ds: Sequence[torch.Tensor] | None,
                  rows: Sequence[int]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Both passes over non-empty tensors of one dtype (and one d dtype): two launches in all.

    Args:
        op: the public op's name, for error messages.
        ws: weights, each of one float dtype, on one device.
        ds: curvatures of the same shapes (one dtype), or None for BWN.
        rows: scale groups per weight: 1 (``"tensor"``) or ``w.shape[0]`` (``"channel"``).

    Returns:
        ``(w_hats, alphas)``: lists of new tensors; w_hat of w's shape and dtype, alpha float32 of
        shape ``(rows,)``. Strided inputs are copied to contiguous ones first (`row_view`).
    """
    device = check_launch(op, _binary_sums_kernel, [*ws, *(ds or [])])
    w_views = [row_view(w, r) for w, r in zip(ws, rows, strict=True)]  # (rows, n) each
    d_views = None if ds is None else [row_view(d, r) for d, r in zip(ds, rows, strict=True)]
    outs = [torch.empty_like(v) for v in w_views]
    plan = _plan(tuple(v.shape for v in w_views), device)
    tensors = device_table(
        [[w.data_ptr(), 0 if d_views is None else d_views[i].data_ptr(), out.data_ptr()]
         for i, (w, out) in enumerate(zip(w_views, outs, strict=True))], torch.int64, device)
    partials = torch.empty(plan.n_programs, 2, dtype=torch.float32, device=device)
    bits = torch.empty(plan.n_words, dtype=torch.int32, device=device)
    alphas = torch.empty(sum(rows), dtype=torch.float32, device=device)
    w_type = tl_dtype(ws[0].dtype)
    d_type = w_type if ds is None else tl_dtype(ds[0].dtype)
    warps = num_warps(plan.block)
    _binary_sums_kernel[(plan.n_programs,)](
        tensors, plan.programs, partials, bits, plan.tiles_per_program,
        W_DTYPE=w_type, D_DTYPE=d_type, HAS_D=ds is not None, BLOCK=plan.block, num_warps=warps)
    _binary_write_kernel[(plan.n_programs,)](
        tensors, plan.programs, partials, bits, alphas, plan.tiles_per_program,
        TENSOR_COLS=3, OUT_COL=2, OUT_DTYPE=w_type, HAS_D=ds is not None, BLOCK=plan.block,
        BLOCK_P=MAX_PARTIALS, num_warps=warps)
    w_hats = [out.reshape(w.shape) for out, w in zip(outs, ws, strict=True)]
    return w_hats, list(alphas.split(list(rows)))


def _prox_binary_triton(w: torch.Tensor, d: torch.Tensor | None,
                        granularity: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton implementation of `prox_binary` for a validated, non-empty ``w``."""
    rows = 1 if granularity == "tensor" else w.shape[0]
    (w_hat,), (alpha,) = binary_passes("prox_binary", [w], None if d is None else [d], [rows])
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
        backend: ``"auto"``, ``"torch"`` or ``"triton"``. Both agree exactly on signs and
            levels given the same scales, and on scales to float32 rounding (the sums run in
            another order); the Triton path copies strided inputs to contiguous ones first.

    Returns:
        ``(w_hat, alpha)``: ``w_hat`` of ``w``'s shape and dtype, equal to ``alpha * sign(w)``
        with sign(0) = +1; ``alpha`` float32 of shape () or ``(w.shape[0],)``. An empty ``w``
        gives an empty ``w_hat`` and zero scales.

    Raises:
        TypeError: ``w`` or ``d`` is not a tensor of a supported float dtype.
        ValueError: 0-dimensional ``w``; ``d`` of another shape or device; unknown
            ``granularity`` or ``backend``.
        RuntimeError: ``backend="triton"`` without the triton package, or on CPU tensors without
            ``TRITON_INTERPRET=1``.

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
    impl = select_impl("prox_binary", backend, w, torch_impl=_prox_binary_torch,
                       triton_impl=_prox_binary_triton)
    return impl(w, d, granularity)
