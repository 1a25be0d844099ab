"""Multi-tensor binarization: all the quantized weights of a model in a fixed number of launches.

A model's small layers are launch-bound: one `prox_binary` per weight costs two launches and the
host work around them whatever the size (ResNet-18 has 21 conv and linear weights, from 1,728 to
2.4M elements). `prox_binary_multi` hands all of them to the two passes of `prox_binary` at once,
through a table of data pointers and a program table that cuts every scale group (a tensor, or a
row) into runs of tiles: two launches per distinct (w dtype, d dtype), however many tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._backend import check_backend, select_impl
from ._common import GRANULARITIES, check_choice, check_like, check_weight, empty_scales
from .binary import binary_passes, prox_binary

__all__ = ["prox_binary_multi"]


# %% PyTorch reference

def _prox_binary_multi_torch(ws: list[torch.Tensor], ds: list[torch.Tensor | None],
                             granularities: list[str]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Reference: `prox_binary` on each tensor in turn."""
    results = [prox_binary(w, d, granularity=g, backend="torch")
               for w, d, g in zip(ws, ds, granularities, strict=True)]
    return [r[0] for r in results], [r[1] for r in results]


# %% Triton fast path

def _prox_binary_multi_triton(ws: list[torch.Tensor], ds: list[torch.Tensor | None],
                              granularities: list[str]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Both passes of `prox_binary` per (w dtype, d dtype) present: two launches each."""
    w_hats: list[torch.Tensor | None] = [None] * len(ws)
    alphas: list[torch.Tensor | None] = [None] * len(ws)
    batches: dict[tuple, list[int]] = {}
    for i, (w, d, g) in enumerate(zip(ws, ds, granularities, strict=True)):
        if w.numel() == 0:
            w_hats[i] = torch.empty(w.shape, dtype=w.dtype, device=w.device)
            alphas[i] = empty_scales(w, g)
        else:
            batches.setdefault((w.dtype, None if d is None else d.dtype), []).append(i)
    for (_, d_dtype), index in batches.items():
        rows = [1 if granularities[i] == "tensor" else ws[i].shape[0] for i in index]
        batch_ds = None if d_dtype is None else [ds[i] for i in index]
        hats, scales = binary_passes("prox_binary_multi", [ws[i] for i in index], batch_ds, rows)
        for i, w_hat, alpha in zip(index, hats, scales, strict=True):
            w_hats[i] = w_hat
            alphas[i] = alpha.reshape(()) if granularities[i] == "tensor" else alpha
    return w_hats, alphas


# %% Public op

def prox_binary_multi(ws: Sequence[torch.Tensor], ds: Sequence[torch.Tensor | None] | None = None, *,
                      granularity: str | Sequence[str] = "tensor",
                      backend: str = "auto") -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """`prox_binary` of many tensors at once: the same results, in a fixed number of launches.

    Args:
        ws: weights, each as `prox_binary` takes them (float32, float16 or bfloat16, ndim >= 1),
            all on one device. Not modified.
        ds: curvatures matching ``ws`` one for one (None entries: all ones, BWN), or None for BWN
            everywhere.
        granularity: ``"tensor"`` or ``"channel"`` for every weight, or one per weight.
        backend: ``"auto"`` (Triton for CUDA tensors), ``"torch"`` (`prox_binary` in a loop) or
            ``"triton"``: two launches per distinct (w dtype, d dtype). Signs agree with
            `prox_binary` exactly, scales to float32 rounding (the sums are split differently).

    Returns:
        ``(w_hats, alphas)``: lists with one entry per weight, as `prox_binary` returns them.

    Raises:
        TypeError: a weight or curvature is not a tensor of a supported float dtype.
        ValueError: ``ds`` or ``granularity`` of another length than ``ws``; a 0-dimensional
            weight; a curvature of another shape or device than its weight; weights on several
            devices; unknown ``granularity`` or ``backend``.

    Example:
        >>> ws = [torch.tensor([0.5, -1.0]), torch.tensor([[2.0, -2.0], [0.0, -1.0]])]
        >>> w_hats, alphas = prox_binary_multi(ws, granularity=["tensor", "channel"])
        >>> alphas
        [tensor(0.7500), tensor([2.0000, 0.5000])]
    """
    check_backend(backend)
    ws = list(ws)
    ds = [None] * len(ws) if ds is None else list(ds)
    granularities = [granularity] * len(ws) if isinstance(granularity, str) else list(granularity)
    for name, values in (("ds", ds), ("granularity", granularities)):
        if len(values) != len(ws):
            raise ValueError(f"{name}: expected {len(ws)} entries (one per weight), got {len(values)}")
    for i, (w, d, g) in enumerate(zip(ws, ds, granularities, strict=True)):
        try:
            check_weight(w)
            check_like(d, w, "d")
            check_choice("granularity", g, GRANULARITIES)
        except (TypeError, ValueError) as error:
            raise type(error)(f"weight {i}: {error}") from None
    if len({w.device for w in ws}) > 1:
        raise ValueError(f"ws: expected one device, got {sorted({str(w.device) for w in ws})}")
    if not ws:
        return [], []
    impl = select_impl("prox_binary_multi", backend, ws[0], torch_impl=_prox_binary_multi_torch,
                       triton_impl=_prox_binary_multi_triton)
    return impl(ws, ds, granularities)
