"""What `labbench kernels-bench` times: each operator's inputs, its minimal bytes, its providers.

Providers run the same computation three ways: ``eager`` (the torch reference of `kernels`, through
the public op with ``backend="torch"``), ``compile`` (``torch.compile`` of that same reference
function, static shapes) and ``triton`` (the public op with ``backend="triton"``). Model-level
cases add their own baselines: torch's ``Adam(fused=True)`` step for the fused optimizer step,
one ``prox_binary`` launch pair per tensor for the multi-tensor path.

Minimal bytes are what the operator must move at least, whatever the algorithm: read w and d,
write w_hat (12 B per float32 element; an alternating solver reads w once per iteration but is
still charged 12 B); pack_bits reads w and writes n/8 bytes; an Adam + LAB step reads W, g, m, v
and writes W, m, v, w_hat (32 B).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .binary import _prox_binary_torch, prox_binary
from .fused import EPS_D, fused_adam_lab_step_
from .mbit import prox_mbit
from .multi import prox_binary_multi
from .packing import _pack_bits_torch, pack_bits
from .ternary import _prox_ternary_torch, prox_ternary

Inputs = dict[str, Any]

# ResNet-18's conv and linear weights (torchvision's ImageNet model: 21 tensors, 11.7M weights),
# at a width multiplier of 1; `resnet18_shapes(width)` scales the channels.
_RESNET18_STAGES = (64, 128, 256, 512)  # channels of the four stages, two blocks each


def resnet18_shapes(width: int = 64, classes: int = 1000) -> list[tuple[int, ...]]:
    """Shapes of ResNet-18's 21 conv and linear weights with ``width`` stem channels."""
    shapes: list[tuple[int, ...]] = [(width, 3, 7, 7)]
    cin = width
    for i, channels in enumerate(_RESNET18_STAGES):
        cout = channels * width // 64
        shapes += [(cout, cin, 3, 3), (cout, cout, 3, 3)]
        if i > 0:  # the downsampling shortcut of the first block
            shapes.append((cout, cin, 1, 1))
        shapes += [(cout, cout, 3, 3), (cout, cout, 3, 3)]
        cin = cout
    return [*shapes, (classes, cin)]


@dataclass(frozen=True)
class Op:
    """One operator of the size sweep.

    Attributes:
        name: row label (``prox_binary``, ``prox_ternary/twn``, ...).
        make: inputs of about n elements on a device.
        nbytes: minimal bytes moved, from the inputs.
        run: ``run(inputs, backend)`` through the public op.
        reference_fn: the torch reference function that ``compile`` wraps.
        reference: its arguments for some inputs; None where torch.compile does not apply (the
            alternating solvers' data-dependent stopping test breaks the graph every iteration).
        scales: picks ``(w_hat, scale)`` out of an output, to check Triton against eager.
    """

    name: str
    make: Callable[[int, torch.device], Inputs]
    nbytes: Callable[[Inputs], int]
    run: Callable[[Inputs, str], Any]
    reference_fn: Callable | None
    reference: Callable[[Inputs], tuple] | None
    scales: Callable[[Any], tuple[torch.Tensor, torch.Tensor | None]]


def _weights(n: int, device: torch.device, rows: int = 1) -> Inputs:
    """Latent-like w in [-1, 1] and Adam-like d = sqrt(v) + 1e-8, float32, ``(rows, n // rows)``."""
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (rows, max(1, n // rows))
    w = (torch.rand(shape, generator=gen, device=device) * 2 - 1).reshape(-1 if rows == 1 else shape)
    d = (torch.rand(shape, generator=gen, device=device).square() * 1e-3 + EPS_D).reshape(w.shape)
    return {"w": w, "d": d}


def _wd_bytes(x: Inputs) -> int:
    return 3 * x["w"].numel() * x["w"].element_size()  # read w, d; write w_hat


OPS: dict[str, Op] = {
    "prox_binary": Op(
        "prox_binary", _weights, _wd_bytes,
        lambda x, b: prox_binary(x["w"], x["d"], backend=b),
        _prox_binary_torch, lambda x: (x["w"], x["d"], "tensor"),
        lambda out: out),
    "prox_binary/channel": Op(
        "prox_binary/channel", lambda n, dev: _weights(n, dev, rows=max(1, min(4096, n // 256))),
        _wd_bytes,
        lambda x, b: prox_binary(x["w"], x["d"], granularity="channel", backend=b),
        _prox_binary_torch, lambda x: (x["w"], x["d"], "channel"),
        lambda out: out),
    "prox_ternary/twn": Op(
        "prox_ternary/twn", _weights, _wd_bytes,
        lambda x, b: prox_ternary(x["w"], x["d"], solver="twn", backend=b),
        _prox_ternary_torch, lambda x: (x["w"], x["d"], "twn", "tensor", None, 10, 1e-6),
        lambda out: out[:2]),
    "prox_ternary/approx": Op(
        "prox_ternary/approx", _weights, _wd_bytes,
        lambda x, b: prox_ternary(x["w"], x["d"], solver="approx", backend=b),
        None, None, lambda out: out[:2]),
    "prox_mbit/linear3": Op(
        "prox_mbit/linear3", _weights, _wd_bytes,
        lambda x, b: prox_mbit(x["w"], x["d"], bits=3, backend=b),
        None, None, lambda out: out),
    "pack_bits": Op(
        "pack_bits", _weights, lambda x: x["w"].numel() * 4 + math.ceil(x["w"].numel() / 8),
        lambda x, b: pack_bits(x["w"], backend=b),
        _pack_bits_torch, lambda x: (x["w"],),
        lambda out: (out, None)),
}


# %% Model-level cases: the fused optimizer step and the multi-tensor path on ResNet-18

def model_weights(width: int, device: torch.device) -> Inputs:
    """ResNet-18's weights as latents, with Adam-like state and gradients, float32."""
    gen = torch.Generator(device=device).manual_seed(1)
    shapes = resnet18_shapes(width)

    def rand(shape, scale=1.0):
        return (torch.rand(shape, generator=gen, device=device) * 2 - 1) * scale

    ws = [rand(s) for s in shapes]
    return {"ws": ws, "ds": [rand(s).abs() * 1e-3 + EPS_D for s in shapes],
            "grads": [rand(s, 1e-2) for s in shapes], "ms": [rand(s, 1e-3) for s in shapes],
            "vs": [rand(s).square() * 1e-4 for s in shapes]}


def multi_providers(x: Inputs) -> dict[str, Callable[[], Any]]:
    """prox_binary over a model's weights: one call per tensor (each backend), or one multi call."""
    ws, ds = x["ws"], x["ds"]
    return {
        "eager": lambda: [prox_binary(w, d, backend="torch") for w, d in zip(ws, ds, strict=True)],
        "triton-per-tensor": lambda: [prox_binary(w, d, backend="triton")
                                      for w, d in zip(ws, ds, strict=True)],
        "triton": lambda: prox_binary_multi(ws, ds, backend="triton"),
    }


def fused_providers(x: Inputs, with_triton: bool,
                    with_cpp: bool = False) -> dict[str, Callable[[], Any]]:
    """An Adam + LAB step over a model's weights: torch's fused Adam alone (the target), the
    unfused step (Adam, clip, prox_binary per tensor), and the fused kernels (the C++ one writes
    w_hat over the last one, as `bench.optim.QuantOptimizer`'s fused step does)."""
    params = [torch.nn.Parameter(w.clone()) for w in x["ws"]]
    for p, g in zip(params, x["grads"], strict=True):
        p.grad = g
    adam = torch.optim.Adam(params, lr=1e-3, fused=True)
    unfused = torch.optim.Adam([torch.nn.Parameter(w.clone()) for w in x["ws"]], lr=1e-3)
    for p, g in zip(unfused.param_groups[0]["params"], x["grads"], strict=True):
        p.grad = g
    latents = [w.clone() for w in x["ws"]]
    ms, vs = [m.clone() for m in x["ms"]], [v.clone() for v in x["vs"]]

    def unfused_step():
        unfused.step()
        out = []
        for p in unfused.param_groups[0]["params"]:
            p.data.clamp_(-1, 1)
            out.append(prox_binary(p.data, unfused.state[p]["exp_avg_sq"].sqrt() + EPS_D,
                                   backend="torch"))
        return out

    providers = {"adam-fused": adam.step, "eager": unfused_step}
    if with_triton:
        providers["triton"] = lambda: fused_adam_lab_step_(
            latents, x["grads"], ms, vs, steps=[10] * len(latents), lr=1e-3, backend="triton")
    if with_cpp:
        state = [[t.clone() for t in x[key]] for key in ("ws", "ms", "vs")]
        outs = [torch.empty_like(w) for w in x["ws"]]
        providers["cpp"] = lambda: fused_adam_lab_step_(
            *state[:1], x["grads"], *state[1:], steps=[10] * len(outs), lr=1e-3, backend="cpp",
            out=outs)
    return providers


def fused_nbytes(x: Inputs) -> int:
    """Read W, g, m, v; write W, m, v, w_hat: 32 B per float32 weight."""
    return 32 * sum(w.numel() for w in x["ws"])
