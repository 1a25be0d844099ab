"""Diagnostics of exploding gradients: norms of the raw and received gradients, and the gradient
through time of a recurrent network.

The review's question about BinaryConnect in LSTMs is whether unscaled +-1 recurrent weights make
gradients explode *through time*. `bptt_profile` measures exactly that: for the loss of the last
time step L_T it returns ||d L_T / d h_t|| for every t, and `bptt_growth` summarises the profile
as the median factor by which the gradient grows per step going back in time (> 1: it grows).
Both are measured without any clipping, on a fixed held-out batch, once per epoch
(`bench.train.run`; artifact ``bptt/epoch-<e>.json``, metric ``bptt_growth``).
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.layers import LSTM

__all__ = ["bptt_growth", "bptt_profile", "grad_norms", "lstm_bptt"]


def grad_norms(grads: Sequence[torch.Tensor | None], *, scale: float = 1.0) -> list[float]:
    """L2 norm of each gradient (0 for None), divided by `scale` (a GradScaler's factor)."""
    if not grads:
        return []
    device = next((g.device for g in grads if g is not None), torch.device("cpu"))
    norms = torch.stack([g.detach().float().norm() if g is not None
                         else torch.zeros((), device=device) for g in grads]).tolist()
    return [n / scale for n in norms]


def bptt_profile(loss: torch.Tensor, hidden: Sequence[torch.Tensor]) -> list[float]:
    """||d loss / d h_t|| for each hidden state h_1..h_T of a graph that produced `loss`.

    The derivative is the total one: everything that flows back into h_t (through h_{t+1}'s
    gates and through any output at t). Hidden states the loss does not depend on give 0.
    """
    grads = torch.autograd.grad(loss, list(hidden), allow_unused=True, retain_graph=False)
    return grad_norms(grads)


def bptt_growth(profile: Sequence[float]) -> float:
    """Median over t of ||g_{t-1}|| / ||g_t||: > 1 when gradients grow going back in time.

    Pairs where g_t is zero or either norm is not finite are left out; NaN when none is left.
    """
    ratios = [a / b for a, b in itertools.pairwise(profile)
              if b > 0 and math.isfinite(a) and math.isfinite(b)]
    return statistics.median(ratios) if ratios else float("nan")


def lstm_bptt(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """The gradient-through-time profile of the top layer of the model's last `LSTM`.

    Runs `model` on the batch (x, y): (B, T) inputs and targets of a char model, with every
    clipping disabled, takes L_T = mean cross-entropy of the last time step's prediction and
    returns ``{"layer", "t", "grad_norm", "bptt_growth"}`` (t = 1..T). Parameters' ``.grad`` are
    not touched.
    """
    named = [(name, m) for name, m in model.named_modules() if isinstance(m, LSTM)]
    if not named:
        raise ValueError("lstm_bptt: the model has no bench.layers.LSTM")
    name, lstm = named[-1]
    saved = lstm.gate_clip, lstm.hidden_states
    lstm.gate_clip, lstm.hidden_states = None, []
    try:
        with torch.enable_grad():
            logits = model(x)  # (B, T, V)
            loss = F.cross_entropy(logits[:, -1].float(), y[:, -1])
            hidden = lstm.hidden_states[-1]
            profile = bptt_profile(loss, hidden)
    finally:
        lstm.gate_clip, lstm.hidden_states = saved
    prefix = f"{name}." if name else ""
    return {"layer": f"{prefix}layers.{len(lstm.layers) - 1}", "t": list(range(1, len(profile) + 1)),
            "grad_norm": profile, "bptt_growth": bptt_growth(profile)}
