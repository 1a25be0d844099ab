"""Fused Adam + LAB step: the optimizer update and the binarization of its result in two passes.

For each latent weight W (float32) whose gradient g was taken at w_hat, with Adam's state m, v at
step t (Kingma & Ba 2015; LAB, Hou et al. 2017, Algorithm 1 with Adam):

    m <- m + (1 - beta1) * (g - m)                          torch: exp_avg.lerp_(g, 1 - beta1)
    v <- beta2 * v + (1 - beta2) * g * g
    W <- W - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
    W <- clip(W, -c, c)
    d  = sqrt(v) + 1e-8                 v just written: the "previous step" v of the next forward
    w_hat = alpha * sign(W),  alpha = sum d|W| / sum d per group (LAB), mean|W| without d (BWN)

Memory traffic per element (Triton): pass 1 reads W, g, m, v and writes W, m, v (28 B: what
torch's fused Adam moves) and stores sign(W) as bits (1/8 B); pass 2, `binary`'s write pass, reads
the bits and writes w_hat (4 + 1/8 B). 32.25 B in all, 1.15x Adam alone: binarizing costs little
more than writing w_hat once.

On CPU the C++ extension (``csrc/fused_adam_lab.cpp``, built on first use by `kernels._cpp`) does
the same in two passes over all tensors of a call, each one ``at::parallel_for`` on torch's
threads: pass 1 as above but without the bits, pass 2 reads W again and writes w_hat (36 B in
all). Its group sums are added up in a fixed order, so results do not depend on the thread count.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import torch

from ._backend import BACKENDS, select_impl
from ._common import GRANULARITIES, check_choice
from ._cpp import load_extension
from ._triton import MAX_PARTIALS, check_launch, device_table, jit, num_warps, tl
from .binary import _binary_write_kernel, _plan, _program, prox_binary, sign_words

__all__ = ["fused_adam_lab_step_", "fused_cpp_available"]

EPS_D = 1e-8  # d = sqrt(v) + 1e-8, as in the reference code (and `bench.optim.EPS_D`)
FUSED_BACKENDS = (*BACKENDS, "cpp") if "cpp" not in BACKENDS else BACKENDS
_SOURCE = Path(__file__).parent / "csrc" / "fused_adam_lab.cpp"
# No fused multiply-adds but the ones the source writes (torch's rounding: see the source's
# header); sqrt without errno, so that the element loop vectorises.
_CFLAGS = ("-O3", "-ffp-contract=off", "-fno-math-errno")


# %% PyTorch reference

def _fused_adam_lab_step_torch(latents, grads, exp_avgs, exp_avg_sqs, steps, lr, beta1, beta2,
                               eps, granularities, curvature, clip, out=None):
    """Reference: torch's single-tensor Adam, operation for operation, then clip and `prox_binary`.

    On the same inputs it matches ``torch.optim.Adam(foreach=False)`` followed by
    ``clamp_(-clip, clip)`` and ``prox_binary(W, sqrt(v) + 1e-8)`` bit for bit.
    """
    w_hats, alphas = [], []
    for w, g, m, v, step, gran in zip(latents, grads, exp_avgs, exp_avg_sqs, steps, granularities,
                                      strict=True):
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        step_size = lr / (1 - beta1**step)
        denom = (v.sqrt() / (1 - beta2**step) ** 0.5).add_(eps)
        w.addcdiv_(m, denom, value=-step_size)
        w.clamp_(-clip, clip)
        d = v.sqrt().add_(EPS_D) if curvature else None
        w_hat, alpha = prox_binary(w, d, granularity=gran, backend="torch")
        w_hats.append(w_hat if out is None else out[len(w_hats)].copy_(w_hat))
        alphas.append(alpha)
    return w_hats, alphas


# %% Triton fast path

@jit(do_not_specialize=["tiles_per_program"])
def _adam_lab_sums_kernel(
    # pointers: tensor table (T, 5) of W, g, m, v, w_hat; per-tensor scalars (T, 2) float32 of
    # lr / (1 - beta1^t) and sqrt(1 - beta2^t); program table; partials (P, 2); sign words
    tensors_ptr, scalars_ptr, programs_ptr, partials_ptr, bits_ptr,
    # sizes and hyper-parameters
    tiles_per_program, one_minus_beta1, beta2, one_minus_beta2, eps, clip, eps_d,
    # meta-parameters
    HAS_D: tl.constexpr, BLOCK: tl.constexpr,
):
    """Pass 1: Adam's update of W, m, v, the clip, the sums of alpha, and the sign bits of W."""
    pid = tl.program_id(0)
    tensor, start, n, tile0, _, _, _, word0 = _program(programs_ptr, pid)
    row = tensors_ptr + 5 * tensor
    w_ptr = tl.load(row).to(tl.pointer_type(tl.float32)) + start
    g_ptr = tl.load(row + 1).to(tl.pointer_type(tl.float32)) + start
    m_ptr = tl.load(row + 2).to(tl.pointer_type(tl.float32)) + start
    v_ptr = tl.load(row + 3).to(tl.pointer_type(tl.float32)) + start
    step_size = tl.load(scalars_ptr + 2 * tensor)
    bias2_sqrt = tl.load(scalars_ptr + 2 * tensor + 1)
    rows = tl.arange(0, BLOCK // 32)
    lanes = tl.arange(0, 32)
    inner = rows[:, None] * 32 + lanes[None, :]  # (BLOCK // 32, 32) offsets inside a tile
    # float32 accumulators, one per lane (see `binary._binary_sums_kernel`).
    num = tl.zeros((BLOCK // 32, 32), tl.float32)  # sum d*|W|
    den = tl.zeros((BLOCK // 32, 32), tl.float32)  # sum d
    last = tl.minimum(tile0 + tiles_per_program, tl.cdiv(n, BLOCK))
    for tile in range(tile0, last):
        offs = tile * BLOCK + inner
        mask = offs < n
        w = tl.load(w_ptr + offs, mask=mask, other=0.0)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0)
        m = tl.load(m_ptr + offs, mask=mask, other=0.0)
        v = tl.load(v_ptr + offs, mask=mask, other=0.0)
        # Adam in torch's order of operations; sqrt and division correctly rounded, as torch's.
        m = m + one_minus_beta1 * (g - m)
        v = v * beta2 + one_minus_beta2 * g * g
        sqrt_v = tl.sqrt_rn(v)
        w = w - step_size * tl.div_rn(m, tl.div_rn(sqrt_v, bias2_sqrt) + eps)
        w = tl.minimum(tl.maximum(w, -clip), clip)
        tl.store(w_ptr + offs, w, mask=mask)
        tl.store(m_ptr + offs, m, mask=mask)
        tl.store(v_ptr + offs, v, mask=mask)
        if HAS_D:
            d = tl.where(mask, sqrt_v + eps_d, 0.0)
            num += d * tl.abs(w)
            den += d
        else:
            num += tl.abs(w)
        words = tile * (BLOCK // 32) + rows
        tl.store(bits_ptr + word0 + words, sign_words(w, mask, lanes), mask=words * 32 < n)
    tl.store(partials_ptr + 2 * pid, tl.sum(num))
    tl.store(partials_ptr + 2 * pid + 1, tl.sum(den))


def _fused_adam_lab_step_triton(latents, grads, exp_avgs, exp_avg_sqs, steps, lr, beta1, beta2,
                                eps, granularities, curvature, clip, out=None):
    """Both passes over all tensors: two launches, whatever their number."""
    device = check_launch("fused_adam_lab_step_", _adam_lab_sums_kernel,
                          [*latents, *grads, *exp_avgs, *exp_avg_sqs])
    grads = [g.contiguous() for g in grads]  # read only: a strided gradient is copied
    rows = [1 if gran == "tensor" else w.shape[0] for w, gran in zip(latents, granularities,
                                                                      strict=True)]
    w_hats = [torch.empty_like(w) for w in latents] if out is None else list(out)
    plan = _plan(tuple((r, w.numel() // r) for r, w in zip(rows, latents, strict=True)), device)
    tensors = device_table([[t.data_ptr() for t in row] for row in zip(
        latents, grads, exp_avgs, exp_avg_sqs, w_hats, strict=True)], torch.int64, device)
    # Bias corrections in Python floats, as torch's Adam computes them, then rounded to float32.
    scalars = device_table([[lr / (1 - beta1**t), (1 - beta2**t) ** 0.5] for t in steps],
                           torch.float32, device)
    partials = torch.empty(plan.n_programs, 2, dtype=torch.float32, device=device)
    bits = torch.empty(plan.n_words, dtype=torch.int32, device=device)
    alphas = torch.empty(sum(rows), dtype=torch.float32, device=device)
    warps = num_warps(plan.block)
    _adam_lab_sums_kernel[(plan.n_programs,)](
        tensors, scalars, plan.programs, partials, bits, plan.tiles_per_program,
        1 - beta1, beta2, 1 - beta2, eps, clip, EPS_D,
        HAS_D=curvature, BLOCK=plan.block, num_warps=warps)
    _binary_write_kernel[(plan.n_programs,)](
        tensors, plan.programs, partials, bits, alphas, plan.tiles_per_program,
        TENSOR_COLS=5, OUT_COL=4, OUT_DTYPE=tl.float32, HAS_D=curvature, BLOCK=plan.block,
        BLOCK_P=MAX_PARTIALS, num_warps=warps)
    scales = [a.reshape(()) if gran == "tensor" else a
              for a, gran in zip(alphas.split(rows), granularities, strict=True)]
    return w_hats, scales


# %% C++ fast path (CPU)

def _extension(required: bool = False) -> ModuleType | None:
    """The built extension; None (after one warning per process) where it cannot be built, or
    `kernels._cpp.ExtensionBuildError` with ``required=True``."""
    return load_extension("fused_adam_lab", [_SOURCE], extra_cflags=_CFLAGS,
                          required=required)


def fused_cpp_available() -> bool:
    """Whether the C++ fused step builds and loads here (builds it on the first call: seconds)."""
    return _extension() is not None


def _fused_adam_lab_step_cpp(latents, grads, exp_avgs, exp_avg_sqs, steps, lr, beta1, beta2, eps,
                             granularities, curvature, clip, out=None):
    """Both passes over all tensors in C++ (CPU): one ``at::parallel_for`` each."""
    ext = _extension(required=True)
    grads = [g.contiguous() for g in grads]  # read only: a strided gradient is copied
    rows = [1 if gran == "tensor" else w.shape[0] for w, gran in zip(latents, granularities,
                                                                      strict=True)]
    w_hats = [torch.empty_like(w) for w in latents] if out is None else list(out)
    # Bias corrections in Python floats, as torch's Adam computes them; rounded to float32 in C++.
    alphas = ext.adam_lab_step(list(latents), grads, list(exp_avgs), list(exp_avg_sqs), w_hats,
                               [lr / (1 - beta1**t) for t in steps],
                               [(1 - beta2**t) ** 0.5 for t in steps], rows, beta1, beta2, eps,
                               clip, EPS_D, curvature)
    scales = [a.reshape(()) if gran == "tensor" else a
              for a, gran in zip(alphas.split(rows), granularities, strict=True)]
    return w_hats, scales


# %% Public op

def fused_adam_lab_step_(latents: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
                         exp_avgs: Sequence[torch.Tensor], exp_avg_sqs: Sequence[torch.Tensor], *,
                         steps: Sequence[int], lr: float, beta1: float = 0.9,
                         beta2: float = 0.999, eps: float = 1e-8,
                         granularity: str | Sequence[str] = "tensor", curvature: bool = True,
                         clip: float = 1.0, backend: str = "auto",
                         out: Sequence[torch.Tensor] | None = None,
                         ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """One Adam step on latent weights, then their binarization: LAB (or BWN) with Adam, fused.

    Updates ``latents``, ``exp_avgs`` and ``exp_avg_sqs`` in place (the trailing underscore) and
    returns the new ``w_hat = alpha * sign(W)`` of each latent W (formulas in the module docstring).

    Args:
        latents: float32 latent weights W, ndim >= 1, contiguous, on one device. Updated.
        grads: gradients at w_hat, float32, of the latents' shapes (strided ones are copied).
        exp_avgs: Adam's first moments m, float32, contiguous. Updated.
        exp_avg_sqs: Adam's second moments v, float32, contiguous. Updated.
        steps: each tensor's step number t after this step (>= 1), for the bias corrections.
        lr, beta1, beta2, eps: Adam's hyper-parameters (amsgrad, weight decay and maximize are
            not supported).
        granularity: ``"tensor"`` or ``"channel"`` (per slice along dim 0), for all or per tensor.
        curvature: True: LAB's d = sqrt(v) + 1e-8; False: d = 1 (BWN).
        clip: W is clipped to [-clip, clip] after the update.
        out: where to write each w_hat (contiguous float32 tensors of the latents' shapes, none of
            them an input), e.g. the previous step's w_hat: on CPU this saves allocating, and
            faulting in, fresh memory every step. Default: new tensors.
        backend: ``"auto"`` (Triton for CUDA tensors; the C++ extension for CPU tensors where it
            builds, else the reference after one warning), ``"torch"`` (the reference: torch's
            single-tensor Adam op for op, then `prox_binary`), ``"triton"`` (two launches in
            all) or ``"cpp"`` (CPU: two ``at::parallel_for`` passes in all; raises
            `kernels._cpp.ExtensionBuildError` where it cannot be built). The fast paths match
            the reference to float32 rounding, with the same signs.

    Returns:
        ``(w_hats, alphas)``: float32 tensors of the latents' shapes (``out`` when given), and
        float32 scales of shape () or ``(W.shape[0],)``.

    Raises:
        TypeError: a tensor is not float32.
        ValueError: lists of different lengths; shapes that differ; an empty or 0-dimensional
            latent; a latent or moment that is not contiguous; tensors on several devices; a step
            < 1; a hyper-parameter out of range; unknown ``granularity`` or ``backend``; an
            ``out`` tensor that does not fit, or is one of the inputs.

    Example:
        >>> w = torch.tensor([0.5, -0.25])
        >>> m, v = torch.zeros(2), torch.zeros(2)
        >>> w_hats, alphas = fused_adam_lab_step_([w], [torch.tensor([1.0, 1.0])], [m], [v],
        ...                                       steps=[1], lr=0.1)
        >>> w, alphas[0]  # Adam's first step moves each weight by lr against its gradient's sign
        (tensor([ 0.4000, -0.3500]), tensor(0.3750))
    """
    if backend not in FUSED_BACKENDS:
        raise ValueError(f"backend: expected one of {FUSED_BACKENDS}, got {backend!r}")
    lists = {"latents": list(latents), "grads": list(grads), "exp_avgs": list(exp_avgs),
             "exp_avg_sqs": list(exp_avg_sqs), "steps": list(steps)}
    count = len(lists["latents"])
    for name, values in lists.items():
        if len(values) != count:
            raise ValueError(f"{name}: expected {count} entries (one per latent), got {len(values)}")
    granularities = [granularity] * count if isinstance(granularity, str) else list(granularity)
    if len(granularities) != count:
        raise ValueError(f"granularity: expected {count} entries, got {len(granularities)}")
    for gran in granularities:
        check_choice("granularity", gran, GRANULARITIES)
    for name, value, ok in (("lr", lr, lr >= 0), ("beta1", beta1, 0 <= beta1 < 1),
                            ("beta2", beta2, 0 <= beta2 < 1), ("eps", eps, eps >= 0),
                            ("clip", clip, clip > 0)):
        if not ok:
            raise ValueError(f"{name}: out of range, got {value!r}")
    for i in range(count):
        w = lists["latents"][i]
        if lists["steps"][i] < 1:
            raise ValueError(f"steps: expected >= 1, got {lists['steps'][i]!r} for tensor {i}")
        for name in ("latents", "grads", "exp_avgs", "exp_avg_sqs"):
            t = lists[name][i]
            if not isinstance(t, torch.Tensor) or t.dtype != torch.float32:
                got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
                raise TypeError(f"{name}[{i}]: expected a float32 tensor, got {got}")
            if t.shape != w.shape:
                raise ValueError(f"{name}[{i}]: expected shape {tuple(w.shape)}, got {tuple(t.shape)}")
            if name != "grads" and not t.is_contiguous():
                raise ValueError(f"{name}[{i}]: expected a contiguous tensor (it is updated in place)")
        if w.dim() < 1 or w.numel() == 0:
            raise ValueError(f"latents[{i}]: expected a non-empty tensor with ndim >= 1, got shape "
                             f"{tuple(w.shape)}")
    every = [t for name in ("latents", "grads", "exp_avgs", "exp_avg_sqs") for t in lists[name]]
    if len({t.device for t in every}) > 1:
        raise ValueError(f"expected tensors on one device, got {sorted({str(t.device) for t in every})}")
    if count == 0:
        return [], []
    first = lists["latents"][0]
    if backend == "cpp" and first.device.type != "cpu":
        raise ValueError(f"backend='cpp' runs on CPU tensors, got {first.device}")
    if backend == "cpp" or (backend == "auto" and first.device.type == "cpu" and fused_cpp_available()):
        impl = _fused_adam_lab_step_cpp
    else:
        impl = select_impl("fused_adam_lab_step_", backend, first,
                           torch_impl=_fused_adam_lab_step_torch,
                           triton_impl=_fused_adam_lab_step_triton)
    if out is not None:
        out = list(out)
        if len(out) != count:
            raise ValueError(f"out: expected {count} entries (one per latent), got {len(out)}")
        inputs = {t.data_ptr() for name in ("latents", "grads", "exp_avgs", "exp_avg_sqs")
                  for t in lists[name]}
        for i, (o, w) in enumerate(zip(out, lists["latents"], strict=True)):
            if (not isinstance(o, torch.Tensor) or o.dtype != torch.float32 or o.shape != w.shape
                    or not o.is_contiguous() or o.device != w.device):
                raise ValueError(f"out[{i}]: expected a contiguous float32 tensor of shape "
                                 f"{tuple(w.shape)} on {w.device}")
            if o.data_ptr() in inputs:
                raise ValueError(f"out[{i}]: must not be one of the inputs")
    return impl(lists["latents"], lists["grads"], lists["exp_avgs"], lists["exp_avg_sqs"],
                lists["steps"], lr, beta1, beta2, eps, granularities, curvature, clip, out)
