"""Quantizers: one class per weight kind, owning one weight's quantization state and its step.

The shape of torchao's PARQ: `kernels/` holds the pure proximal operators; a
`Quantizer` holds what one weight keeps between steps (its scale ``alpha``, bc-scaled's frozen
scale, TTQ's trained W_p and W_n) and calls the operator; `bench.optim.QuantOptimizer` decides
when, and for which parameters. The latent weight and the curvature v belong to the optimizer and
are passed in.

A new weight kind is one class here and one row in `QUANTIZERS`, keyed by `Method.weights`
(bench/methods.py); `Method.quantizer` looks it up.

Example:
    >>> import torch
    >>> from bench.methods import METHODS, LayerSpec
    >>> q = make_quantizer(LayerSpec(METHODS["bwn"]))
    >>> w_hat, alpha = q.prox_(torch.tensor([0.5, -0.25, 2.0]), None, None)
    >>> w_hat.tolist(), round(alpha.item(), 4)  # the latent is clipped to [-1, 1] first
    ([0.5833333134651184, -0.5833333134651184, 0.5833333134651184], 0.5833)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from kernels import compiled, prox_binary, prox_mbit, prox_ternary
from kernels.levels_step import levels_cpp_available, levels_prox_step_

if TYPE_CHECKING:
    from bench.methods import LayerSpec

__all__ = [
    "EPS_D",
    "GRANULARITIES",
    "QUANTIZERS",
    "TTQ",
    "Binary",
    "FullPrecision",
    "MBit",
    "ProxOptions",
    "Quantizer",
    "Sign",
    "Ternary",
    "clip_and_binarize",
    "clip_and_sign",
    "make_quantizer",
]

EPS_D = 1e-8  # d = sqrt(v) + EPS_D, as in the reference code
GRANULARITIES = ("tensor", "channel", "gate")


def clip_and_binarize(latent: torch.Tensor, v: torch.Tensor | None, granularity: str,
                      backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip a latent weight to [-1, 1] in place, then LAB's closed form with d = sqrt(v) + 1e-8
    (BWN's when v is None). Tensors only, so `torch.compile` can fuse it into two passes."""
    latent.clamp_(-1.0, 1.0)
    d = None if v is None else v.sqrt() + EPS_D
    return prox_binary(latent, d, granularity=granularity, backend=backend)


def clip_and_sign(latent: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Clip a latent weight to [-1, 1] in place, then scale * sign(w) with sign(0) = +1
    (copysign reads the sign bit, so -0.0 is made +0.0 first)."""
    latent.clamp_(-1.0, 1.0)
    return torch.copysign(scale, latent + 0.0)


@dataclass(frozen=True)
class ProxOptions:
    """Run-wide options of the proximal steps (see `bench.optim.QuantOptimizer`'s arguments)."""

    backend: str = "auto"
    compile: bool = False
    ttq_threshold: float = 0.05
    fixed_scale: float | None = None


class Quantizer:
    """How one weight is quantized: its state between steps and its proximal step.

    Args:
        spec: the layer's method (with bits/levels for ``laq``).
        granularity: ``tensor`` | ``channel`` (per row of dim 0) | ``gate`` (per block of
            ``gates`` equal row groups: an LSTM's stacked i, f, c, o matrices).
        gates: number of stacked gate blocks (``gate`` granularity only).
        options: backend, compile, ttq_threshold, fixed_scale.
        state: the dict to keep the state in (``alpha`` and the kind's own entries).

    Class attributes:
        quantized: False only for full precision.
        scaled: w_hat carries float scales, so `granularity` applies.
        scales_per_group: float scales stored per group (TTQ keeps W_p and W_n).
        two_level: w_hat = alpha * sign(W): Proposition 3.2's spectral bound applies.
    """

    quantized: ClassVar[bool] = True
    scaled: ClassVar[bool] = True
    scales_per_group: ClassVar[int] = 1
    two_level: ClassVar[bool] = False

    def __init__(self, spec: LayerSpec, granularity: str = "tensor", gates: int | None = None,
                 options: ProxOptions | None = None, state: dict[str, Any] | None = None):
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity: expected tensor, channel or gate, got {granularity!r}")
        if granularity == "gate" and not gates:
            raise ValueError("granularity 'gate' needs `gates` (the number of stacked gate blocks)")
        self.spec = spec
        self.granularity = granularity
        self.gates = gates
        self.options = options or ProxOptions()
        self.state: dict[str, Any] = {} if state is None else state

    @property
    def curvature(self) -> bool:
        """Whether the step is loss-aware (weighted by d = sqrt(v) + 1e-8)."""
        return self.spec.method.curvature

    @property
    def compiles(self) -> bool:
        """Whether ``compile=True`` fuses this kind's step (worth it for big weights)."""
        return False

    def grouped(self, t: torch.Tensor) -> tuple[torch.Tensor, str]:
        """View `t` for the kernels: (view, kernel granularity)."""
        if self.granularity == "tensor":
            return t, "tensor"
        if self.granularity == "channel":
            return t.reshape(t.shape[0], -1), "channel"
        return t.reshape(self.gates, -1), "channel"

    def n_groups(self, shape: torch.Size | tuple[int, ...]) -> int:
        """Number of scale groups of a weight of this shape."""
        return {"tensor": 1, "channel": shape[0] if shape else 1,
                "gate": self.gates or 1}[self.granularity]

    def n_scales(self, shape: torch.Size | tuple[int, ...]) -> int:
        """Float scales stored beside the codes of a weight of this shape (model size)."""
        return self.n_groups(shape) * self.scales_per_group if self.scaled else 0

    def init_(self, latent: torch.Tensor) -> list[torch.nn.Parameter]:
        """Create the kind's state for a new weight; return the scales the base optimizer must
        train (TTQ's W_p, W_n), none for the other kinds."""
        return []

    def prox_(self, latent: torch.Tensor, v: torch.Tensor | None, prev: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip `latent` to [-1, 1] in place; return (w_hat, alpha).

        Args:
            latent: the full-precision weight W.
            v: the second moment behind d = sqrt(v) + 1e-8 (None: d = 1, or not loss-aware).
            prev: the previous w_hat (a warm start for the alternating solvers), or None.

        Returns:
            w_hat with `latent`'s shape, and alpha of shape () or (groups,).
        """
        raise NotImplementedError

    def grad_(self, g: torch.Tensor, latent: torch.Tensor) -> None:
        """Turn d loss / d w_hat in `g` into the latent's gradient in place (and set the trained
        scales' gradients); the identity (straight-through) for every kind but TTQ."""

    def codes(self, w_hat: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """The quantized level of each weight (flip ratios compare two steps' codes)."""
        return torch.sign(w_hat)

    def _d(self, v: torch.Tensor | None) -> torch.Tensor | None:
        return None if v is None else self.grouped(v)[0].sqrt() + EPS_D

    def _broadcast(self, alpha: torch.Tensor, view: torch.Tensor, gran: str) -> torch.Tensor:
        """alpha of shape () or (groups,) shaped to multiply a grouped view."""
        return alpha.reshape((-1,) + (1,) * (view.dim() - 1)) if gran == "channel" else alpha


class FullPrecision(Quantizer):
    """``fp``, ``amp``: the weight is trained as it is (the optimizer leaves it out)."""

    quantized = False
    scaled = False

    def prox_(self, latent, v, prev):
        return latent, torch.ones(())


class Sign(Quantizer):
    """``bc``, ``bnn``: w_hat = sign(W), unscaled +-1 (sign(0) = +1)."""

    scaled = False
    two_level = True

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._sign = compiled(clip_and_sign) if self.options.compile else clip_and_sign

    @property
    def compiles(self) -> bool:
        return True

    def prox_(self, latent, v, prev):
        return self._sign(latent, torch.ones((), device=latent.device)), torch.ones(())

    def codes(self, w_hat, alpha):
        return w_hat >= 0


class Binary(Quantizer):
    """``bwn``, ``lab``, ``xnor``, ``lab2``: w_hat = alpha * sign(W) with LAB's closed form
    alpha = sum(d|W|)/sum(d) (BWN's mean|W| without curvature); ``bc-scaled``: alpha frozen at
    the first step (``fixed_scale / sqrt(fan-in)``, or that step's BWN scale)."""

    two_level = True

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        compile_ = self.options.compile
        self._binarize = compiled(clip_and_binarize) if compile_ else clip_and_binarize
        self._sign = compiled(clip_and_sign) if compile_ else clip_and_sign
        # Inside torch.compile the step is traced from its torch reference; "auto" would pick the
        # hand-written Triton kernel on CUDA, an opaque call that splits the fused graph.
        self._backend = "torch" if compile_ else self.options.backend

    @property
    def compiles(self) -> bool:
        return True

    def prox_(self, latent, v, prev):
        view, gran = self.grouped(latent)
        if self.spec.method.fixed_scale:
            alpha = self._fixed_alpha(latent, view, gran)
            return self._sign(view, self._broadcast(alpha, view, gran)).reshape(latent.shape), alpha
        v_view = None if v is None else self.grouped(v)[0]
        w_hat, alpha = self._binarize(view, v_view, gran, self._backend)
        return w_hat.reshape(latent.shape), alpha

    def _fixed_alpha(self, latent: torch.Tensor, view: torch.Tensor, gran: str) -> torch.Tensor:
        if "fixed_alpha" not in self.state:  # set at the first step, then frozen
            fixed = self.options.fixed_scale
            if fixed is not None:
                fan_in = math.prod(latent.shape[1:])  # alpha * sqrt(n) = fixed_scale
                groups = () if gran == "tensor" else (view.shape[0],)
                self.state["fixed_alpha"] = torch.full(groups, fixed / math.sqrt(fan_in),
                                                       dtype=latent.dtype, device=latent.device)
            else:  # the first step's BWN scale
                self.state["fixed_alpha"] = self._binarize(view, None, gran, self._backend)[1]
        return self.state["fixed_alpha"]

    def codes(self, w_hat, alpha):
        return w_hat >= 0


# The C++ step of the alternating solvers (`kernels.levels_step`): on CPU it replaces the torch
# reference's passes (eager, or compiled with ``compile=True``) for ``lat-approx`` and linear
# ``laq``, warm-started from the previous step's scale and stopped once an update lowers the
# objective by at most LEVELS_RTOL of itself (docs/kernels.md, "The m-bit and ternary CPU step").
LEVELS_RTOL = 1e-4


def _levels_cpp(options: ProxOptions, latent: torch.Tensor) -> bool:
    """Whether the C++ step runs: a contiguous float32 CPU latent, backend ``auto`` (or the
    ``compile`` that ``auto`` resolves to on CPU), and the extension builds."""
    return (latent.device.type == "cpu" and latent.dtype == torch.float32
            and latent.is_contiguous() and (options.backend == "auto" or options.compile)
            and levels_cpp_available())


def _levels_step(q: Quantizer, latent: torch.Tensor, v: torch.Tensor | None,
                 prev: torch.Tensor | None, bits: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """`kernels.levels_step.levels_prox_step_` of one weight, warm-started from its last alpha."""
    n_groups = q.n_groups(latent.shape) if q.granularity != "tensor" else 1
    alpha0 = q.state.get("alpha") if prev is not None else None
    step = levels_prox_step_(latent, None if v is None else v.contiguous(), bits=bits,
                             groups=n_groups, alpha0=alpha0, rtol=LEVELS_RTOL, secant=True)
    return step.w_hat, step.alpha.reshape(()) if q.granularity == "tensor" else step.alpha


class Ternary(Quantizer):
    """``twn``, ``lat``, ``lat-approx``: w_hat = alpha * {-1, 0, 1} by `kernels.prox_ternary`
    with the method's solver (warm-started from the previous w_hat)."""

    @property
    def compiles(self) -> bool:
        return self.spec.method.solver == "approx"  # each alternation pass, compiled

    def prox_(self, latent, v, prev):
        if self.spec.method.solver == "approx" and _levels_cpp(self.options, latent):
            return _levels_step(self, latent, v, prev, bits=None)
        latent.clamp_(-1, 1)
        view, gran = self.grouped(latent)
        w_hat, alpha, _ = prox_ternary(view, self._d(v), solver=self.spec.method.solver,
                                       granularity=gran,
                                       init=None if prev is None else self.grouped(prev)[0],
                                       backend=self.options.backend, compile=self.options.compile)
        return w_hat.reshape(latent.shape), alpha


class MBit(Quantizer):
    """``laq``: w_hat = alpha * m-bit levels (linear or log) by `kernels.prox_mbit`."""

    @property
    def compiles(self) -> bool:
        return True

    def prox_(self, latent, v, prev):
        if self.spec.levels == "linear" and _levels_cpp(self.options, latent):
            return _levels_step(self, latent, v, prev, bits=self.spec.bits)
        latent.clamp_(-1, 1)
        view, gran = self.grouped(latent)
        w_hat, alpha = prox_mbit(view, self._d(v), bits=self.spec.bits, levels=self.spec.levels,
                                 granularity=gran,
                                 init=None if prev is None else self.grouped(prev)[0],
                                 backend=self.options.backend, compile=self.options.compile)
        return w_hat.reshape(latent.shape), alpha

    def codes(self, w_hat, alpha):  # level index k * w_hat / alpha, per group
        k = 2 ** (self.spec.bits - 1) - 1
        view, gran = self.grouped(w_hat)
        return torch.round(view / self._broadcast(alpha, view, gran).clamp_min(1e-30) * k)


class TTQ(Quantizer):
    """``ttq``: w_hat = W_p above delta, -W_n below -delta, 0 between, delta = t * max|W|, with
    W_p and W_n trained by the base optimizer (Zhu et al., ICLR 2017;
    docs/algorithms.md, "Deviations and choices")."""

    scales_per_group = 2

    def init_(self, latent):
        # W_p and W_n start at 1.0, as in the TTQ authors' code; `grad_` sets their gradients and
        # the base optimizer updates them (a param group of their own).
        shape = {"tensor": (), "channel": (latent.shape[0],), "gate": (self.gates,)}
        for key in ("wp", "wn"):
            self.state[key] = torch.nn.Parameter(
                torch.ones(shape[self.granularity], device=latent.device))
        return [self.state["wp"], self.state["wn"]]

    def _delta(self, view: torch.Tensor, gran: str) -> torch.Tensor:
        t = self.options.ttq_threshold
        if gran == "channel":
            return t * view.abs().amax(dim=tuple(range(1, view.dim())), keepdim=True)
        return t * view.abs().max()

    def prox_(self, latent, v, prev):
        latent.clamp_(-1, 1)
        view, gran = self.grouped(latent)
        delta = self._delta(view, gran)
        wp = self._broadcast(self.state["wp"].detach(), view, gran)
        wn = self._broadcast(self.state["wn"].detach(), view, gran)
        w_hat = torch.where(view > delta, wp, torch.where(view < -delta, -wn, 0.0)).to(view.dtype)
        alpha = (self.state["wp"].detach() + self.state["wn"].detach()) / 2
        return w_hat.reshape(latent.shape), alpha

    @torch.no_grad()
    def grad_(self, g, latent):
        """dL/dW_p = sum_{W>delta} g, dL/dW_n = -sum_{W<-delta} g; the latent gets W_p*g above
        delta, g inside, W_n*g below."""
        view, gran = self.grouped(latent)
        g_view = self.grouped(g)[0]
        delta = self._delta(view, gran)
        pos, neg = view > delta, view < -delta
        dims = tuple(range(1, view.dim())) if gran == "channel" else None
        wp, wn = self.state["wp"], self.state["wn"]
        wp.grad = (g_view * pos).sum(dim=dims).float().reshape(wp.shape)
        wn.grad = -(g_view * neg).sum(dim=dims).float().reshape(wn.shape)
        scale = torch.where(pos, self._broadcast(wp.detach(), view, gran),
                            torch.where(neg, self._broadcast(wn.detach(), view, gran), 1.0))
        g.copy_((g_view * scale).reshape(g.shape))


# One row per weight kind (`Method.weights`); ``mixed`` is chosen per layer, so it has none.
QUANTIZERS: dict[str, type[Quantizer]] = {
    "fp": FullPrecision,
    "sign": Sign,
    "binary": Binary,
    "ternary": Ternary,
    "mbit": MBit,
    "ttq": TTQ,
}


def make_quantizer(spec: LayerSpec, granularity: str = "tensor", gates: int | None = None,
                   options: ProxOptions | None = None, state: dict[str, Any] | None = None
                   ) -> Quantizer:
    """The quantizer of a layer's method (``granularity`` is ``tensor`` for unscaled kinds).

    Raises:
        ValueError: a kind with no quantizer (``mixed``), or a bad granularity.
    """
    cls = QUANTIZERS.get(spec.method.weights)
    if cls is None:
        raise ValueError(f"method {spec.method.name!r} has no weight quantizer of its own "
                         f"(kind {spec.method.weights!r}); valid kinds: {', '.join(QUANTIZERS)}")
    return cls(spec, granularity if cls.scaled else "tensor", gates, options, state)
