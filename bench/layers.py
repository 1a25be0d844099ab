"""What models know about quantization: sign activations, the cell-loop LSTM, and init.

Weights need no special layer: `bench.optim.QuantOptimizer` keeps the latent weights and writes
w_hat into each quantized parameter's storage, so a plain `nn.Linear`/`nn.Conv2d` computes with the
quantized weight and autograd returns d loss / d w_hat. A layer that must stay full precision (the
output layer of a language model) sets ``full_precision = True``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LSTM",
    "Quantizable",
    "SignActivation",
    "gate_grad_clamp",
    "init_weights",
    "quantizable_weights",
    "sign_ste",
]


class _SignSTE(torch.autograd.Function):
    """sign(x) with sign(0) = +1; backward passes the gradient where |x| <= 1 (BNN's STE)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    """Binary activation: +-1 forward, 1{|x| <= 1} straight-through gradient.

    Example:
        >>> x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0], requires_grad=True)
        >>> y = sign_ste(x); y.sum().backward()
        >>> y.tolist(), x.grad.tolist()
        ([-1.0, -1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 1.0, 1.0, 0.0])
    """
    return _SignSTE.apply(x)


class SignActivation(nn.Module):
    """`sign_ste` as a module (the hidden activation of bnn, xnor and lab2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sign_ste(x)


class ClampSwitch:
    """Read when the gradient flows back, not when the graph is built: with ``on`` False, every
    `gate_grad_clamp` of a graph passes its gradient through unclamped (and counts nothing). One
    forward then serves two backwards: the raw gradient, then the clipped one (`bench.train`'s
    ``grad_norm_raw`` diagnostic)."""

    def __init__(self) -> None:
        self.on = True


class _GateGradClamp(torch.autograd.Function):
    """Identity forward; clamps the incoming gradient to [-c, c] (Lasagne's grad_clipping)."""

    @staticmethod
    def forward(ctx, g: torch.Tensor, c: float, counts: torch.Tensor | None,
                switch: ClampSwitch | None) -> torch.Tensor:
        ctx.c, ctx.counts, ctx.switch = c, counts, switch
        return g.view_as(g)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if ctx.switch is not None and not ctx.switch.on:
            return grad, None, None, None
        if ctx.counts is not None:  # [clamped elements, all elements]
            ctx.counts[0] += (grad.abs() > ctx.c).sum()
            ctx.counts[1] += grad.numel()
        return grad.clamp(-ctx.c, ctx.c), None, None, None


def gate_grad_clamp(g: torch.Tensor, c: float, counts: torch.Tensor | None = None,
                    switch: ClampSwitch | None = None) -> torch.Tensor:
    """Clamp the gradient flowing back into `g` to [-c, c]; optionally count clamped elements.
    A `switch` turned off at backward time lets the gradient through unclamped."""
    return _GateGradClamp.apply(g, c, counts, switch)


class LSTMLayer(nn.Module):
    """Parameters of one LSTM layer; the i, f, c, o gate matrices are stacked along dim 0."""

    def __init__(self, input_size: int, hidden: int):
        super().__init__()
        self.w_ih = nn.Parameter(torch.empty(4 * hidden, input_size))  # (4H, I)
        self.w_hh = nn.Parameter(torch.empty(4 * hidden, hidden))  # (4H, H)
        self.bias = nn.Parameter(torch.zeros(4 * hidden))  # (4H,)


class LSTM(nn.Module):
    """LSTM written as an explicit loop over time steps (gate order i, f, c, o).

    Per step: g_t = x_t W_ih^T + h_{t-1} W_hh^T + b; c_t = f * c_{t-1} + i * tanh(c~);
    h_t = o * act(c_t) with act = tanh, or sign (lab2/bnn/xnor: the paper's LSTM binarizes only
    this activation, as the reference code's LAB2 does). Writing the loop by hand makes the paper's
    clipping possible: with `gate_clip` = C the gradient into every g_t is clamped to [-C, C] at
    every time step (Lasagne's grad_clipping), before it flows to earlier steps and to the weights.

    Args:
        input_size: input features, or the vocabulary size when the input is token indices
            (one-hot input: x_t W_ih^T is a column lookup).
        hidden: H, cells per layer.
        layers: stacked layers.
        activation: ``tanh`` or ``sign``.
    """

    def __init__(self, input_size: int, hidden: int, layers: int = 1, activation: str = "tanh"):
        super().__init__()
        if activation not in ("tanh", "sign"):
            raise ValueError(f"activation: expected 'tanh' or 'sign', got {activation!r}")
        self.hidden, self.activation = hidden, activation
        self.layers = nn.ModuleList(
            LSTMLayer(input_size if i == 0 else hidden, hidden) for i in range(layers))
        self.gate_clip: float | None = None
        self.clip_counts: torch.Tensor | None = None  # set to a (2,) tensor to count clamping
        self.clamp_switch = ClampSwitch()  # off at backward time: an unclamped gradient
        # set to a list to receive, per layer, the list of its T hidden states h_t (graph nodes:
        # torch.autograd.grad can differentiate w.r.t. them; `bench.diagnostics.lstm_bptt`)
        self.hidden_states: list[list[torch.Tensor]] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T) token indices or (B, T, I) features -> (B, T, H); every chunk starts at h=c=0."""
        out = x
        for layer in self.layers:
            if out.dtype in (torch.int64, torch.int32):
                xw = F.embedding(out, layer.w_ih.t())  # one-hot input: (B, T, 4H)
            else:
                xw = out @ layer.w_ih.t()  # (B, T, 4H)
            out = self._run_layer(xw + layer.bias, layer.w_hh.t())
        return out

    def _run_layer(self, xw: torch.Tensor, w_hh_t: torch.Tensor) -> torch.Tensor:
        batch = xw.shape[0]
        h = xw.new_zeros(batch, self.hidden)
        c = xw.new_zeros(batch, self.hidden)
        outputs = []
        # unbind, not xw[:, t]: each select's backward would zero-fill a full (B, T, 4H) tensor,
        # O(T^2) memory traffic per sequence; unbind's backward stacks the T gradients once
        for x_t in xw.unbind(dim=1):
            g = x_t + h @ w_hh_t  # (B, 4H)
            if self.gate_clip is not None and torch.is_grad_enabled():
                g = gate_grad_clamp(g, self.gate_clip, self.clip_counts, self.clamp_switch)
            i, f, c_tilde, o = g.chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(c_tilde)
            act = torch.tanh(c) if self.activation == "tanh" else sign_ste(c)
            h = torch.sigmoid(o) * act
            outputs.append(h)
        if self.hidden_states is not None:
            self.hidden_states.append(outputs)
        return torch.stack(outputs, dim=1)  # (B, T, H)


@dataclass(frozen=True)
class Quantizable:
    """A weight that a method may quantize, with what init and scale grouping need to know."""

    name: str
    param: nn.Parameter
    fan_in: int
    fan_out: int
    gates: int | None = None  # LSTM: 4 stacked gate matrices
    recurrent: bool = False  # LSTM hidden-to-hidden


def quantizable_weights(model: nn.Module) -> list[Quantizable]:
    """Every Linear/Conv2d weight and LSTM matrix not marked ``full_precision``, in forward order."""
    found = []
    for mname, module in model.named_modules():
        if getattr(module, "full_precision", False):
            continue
        prefix = f"{mname}." if mname else ""
        if isinstance(module, nn.Linear):
            found.append(Quantizable(prefix + "weight", module.weight, module.in_features,
                                     module.out_features))
        elif isinstance(module, nn.Conv2d):
            k = math.prod(module.kernel_size)
            # fan_out counts k*k*C_out, as Lasagne (and the reference code) does
            found.append(Quantizable(prefix + "weight", module.weight,
                                     k * module.in_channels // module.groups, k * module.out_channels))
        elif isinstance(module, LSTMLayer):
            hidden = module.w_hh.shape[1]
            found.append(Quantizable(prefix + "w_ih", module.w_ih, module.w_ih.shape[1], 4 * hidden,
                                     gates=4))
            found.append(Quantizable(prefix + "w_hh", module.w_hh, hidden, 4 * hidden, gates=4,
                                     recurrent=True))
    return found


@torch.no_grad()
def init_weights(model: nn.Module, quantized: set[str]) -> None:
    """The reference code's initialisation (docs/algorithms.md, "The step").

    - Linear/Conv2d weights: Uniform(-H, H) with H = sqrt(1.5 / (fan_in + fan_out)) (half the
      Glorot bound) when the layer is quantized, Glorot-uniform sqrt(6 / (fan_in + fan_out))
      otherwise; biases 0.
    - LSTM: every matrix Uniform(-0.08, 0.08), biases 0 except the forget gate's, 1.
    - Layers marked ``full_precision`` keep the init their model gave them.

    Args:
        model: the model.
        quantized: names of the weights a quantized method will own.
    """
    for q in quantizable_weights(model):
        if q.gates is not None:
            q.param.uniform_(-0.08, 0.08)
            continue
        bound = math.sqrt((1.5 if q.name in quantized else 6.0) / (q.fan_in + q.fan_out))
        q.param.uniform_(-bound, bound)
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Conv2d) and module.bias is not None \
                and not getattr(module, "full_precision", False):
            module.bias.zero_()
        elif isinstance(module, LSTMLayer):
            hidden = module.w_hh.shape[1]
            module.bias.zero_()
            module.bias[hidden:2 * hidden] = 1.0  # forget gate
