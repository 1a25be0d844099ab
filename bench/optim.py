"""`QuantOptimizer`: wraps any torch optimizer and quantizes weights with a proximal step.

The reference code's step (algorithms.md section 1.2), for every quantized weight W:

1. the forward pass uses w_hat = prox(W, d), with d = sqrt(v) + 1e-8 built from the *previous*
   step's second moment v (no bias correction: alpha is a ratio of d-weighted sums, so any scalar
   factor on d cancels);
2. the gradient g = d loss / d w_hat is applied to W unchanged by the base optimizer;
3. W is clipped to [-1, 1]; v <- beta2 * v + (1 - beta2) * g^2.

How it is done here (the layout of torchao's PARQ): between steps each quantized parameter's
storage *is* w_hat, so the model needs no special layers and autograd delivers g in `p.grad`.
The full-precision latent W lives in this optimizer's state. `step()` swaps the latent in, runs the
base optimizer, clips, computes the next w_hat and swaps it back. With no quantized parameters
(method ``fp``) `step()` is the base optimizer's step, bit for bit.

Example:
    >>> import torch
    >>> lin = torch.nn.Linear(4, 3)
    >>> base = torch.optim.Adam(lin.parameters(), lr=1e-2)
    >>> opt = QuantOptimizer([("weight", lin.weight)], base, "lab")
    >>> sorted(lin.weight.detach().abs().unique().tolist()) == [opt.alphas()["weight"]]
    True
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from bench.methods import LayerSpec, Method, get_method
from kernels import compiled, fused_adam_lab_step_, prox_binary, prox_mbit, prox_ternary

__all__ = ["EPS_D", "QuantOptimizer", "QuantTarget"]

EPS_D = 1e-8  # d = sqrt(v) + EPS_D, as in the reference code
log = logging.getLogger(__name__)


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


@dataclass
class QuantTarget:
    """One quantized weight and how to quantize it.

    Attributes:
        name: the parameter's name in the model (used in metrics and state_dict).
        param: the parameter; its storage holds w_hat between steps.
        spec: the layer's method (with bits/levels for ``laq``).
        granularity: ``tensor`` | ``channel`` (per row of dim 0) | ``gate`` (per block of
            ``gates`` equal row groups: an LSTM's stacked i, f, c, o matrices).
        gates: number of stacked gate blocks (``gate`` granularity only).
        recurrent: a hidden-to-hidden matrix (its spectral norm is a diagnostic).
    """

    name: str
    param: torch.nn.Parameter
    spec: LayerSpec
    granularity: str = "tensor"
    gates: int | None = None
    recurrent: bool = False
    state: dict[str, Any] = field(default_factory=dict, repr=False)

    def grouped(self, t: torch.Tensor) -> tuple[torch.Tensor, str]:
        """View `t` for the kernels: (view, kernel granularity)."""
        if self.granularity == "tensor":
            return t, "tensor"
        if self.granularity == "channel":
            return t.reshape(t.shape[0], -1), "channel"
        return t.reshape(self.gates, -1), "channel"


class QuantOptimizer:
    """Latent weights + curvature estimate + proximal quantization around a base optimizer.

    Args:
        params: the weights to quantize: parameters, ``(name, parameter)`` pairs, `QuantTarget`s,
            or dicts with keys ``param`` (required), ``name``, ``method``, ``bits``, ``levels``,
            ``granularity``, ``gates``, ``recurrent`` overriding the defaults below per weight.
        base: a torch optimizer over *all* the model's parameters (quantized ones included).
        method: default method name (a key of `bench.methods.METHODS`) or `LayerSpec`.
        granularity, bits, levels: defaults for every weight.
        beta2: decay of the second-moment estimate v; default: the base optimizer's beta2 when it
            has betas (Adam, AdamW), else 0.999.
        curvature: ``"auto"`` reads v from Adam's ``exp_avg_sq`` when that is provably the same
            quantity (Adam/AdamW without amsgrad/maximize and, for Adam, weight_decay 0; same beta2),
            saving a weight-sized buffer; ``"own"`` always keeps its own EMA of g^2.
        ttq_threshold: TTQ's t in delta = t * max|w|.
        fixed_scale: methods with a frozen scale (``bc-scaled``): alpha = fixed_scale / sqrt(n)
            for every weight, n its fan-in (``prod(shape[1:])``; an LSTM gate block's fan-in is
            H), frozen for the whole run; ``fixed_scale = sqrt(n)`` is unscaled BinaryConnect.
            None: the first step's BWN scale mean|w| (per group), then frozen.
        backend: `kernels` backend for the proximal operators.
        compile: run the clip + binarize step of binary methods (bc, bc-scaled, bwn, lab, ...)
            through `torch.compile` (two fused passes instead of about ten; the first step of a new
            shape compiles, several seconds), and each iteration of the alternating ternary
            (``lat-approx``) and m-bit (``laq``) solvers (``compile=True`` of `prox_ternary` and
            `prox_mbit`: one fused pass per iteration); ``lat``'s sort, TWN and TTQ stay eager.
            Where compiling fails (e.g. no C++ compiler) a warning is logged and the step runs
            eagerly.
        fused: do the whole step of the quantized weights in `kernels.fused_adam_lab_step_`: Adam's
            update of the latent weight, the clip and LAB's (or BWN's) binarization in two passes
            over all of them (Triton on CUDA; its torch reference elsewhere, unless ``backend``
            says otherwise). The other parameters still go through ``base``. Needs
            ``torch.optim.Adam`` without amsgrad, weight decay, maximize, capturable or
            differentiable, ``curvature="auto"``, float32 contiguous weights and binary methods
            with a learned scale (``lab``, ``bwn``, ``xnor``, ``lab2``). Results match the
            unfused step to float32 rounding (bit for bit with the torch reference on CPU).

    Raises:
        ValueError: an unknown method/granularity, or ``gate`` granularity without ``gates``;
            ``fused=True`` with an optimizer, method or weight it does not support.
    """

    def __init__(self, params: Iterable[Any], base: torch.optim.Optimizer,
                 method: str | LayerSpec = "lab", *, granularity: str = "tensor",
                 bits: int | None = None, levels: str | None = None, beta2: float | None = None,
                 curvature: str = "auto", ttq_threshold: float = 0.05,
                 fixed_scale: float | None = None, backend: str = "auto",
                 compile: bool = False, fused: bool = False):
        if curvature not in ("auto", "own"):
            raise ValueError(f"curvature: expected 'auto' or 'own', got {curvature!r}")
        if compile and backend == "triton":
            raise ValueError("compile=True generates its own kernels (Triton on CUDA); it cannot "
                             "also call the hand-written Triton ones: use backend='auto' or 'torch'")
        self.base = base
        self.backend = backend
        self.compiled = compile
        # Inside torch.compile the proximal step is traced from its torch reference; "auto" would
        # pick the hand-written Triton kernel on CUDA, an opaque call that splits the fused graph.
        self._binarize_backend = "torch" if compile else backend
        self._binarize = compiled(clip_and_binarize) if compile else clip_and_binarize
        self._sign = compiled(clip_and_sign) if compile else clip_and_sign
        self.ttq_threshold = ttq_threshold
        if fixed_scale is not None and not 0 < fixed_scale < math.inf:
            raise ValueError(f"fixed_scale: expected a finite number > 0, got {fixed_scale!r}")
        self.fixed_scale = fixed_scale
        default_spec = method if isinstance(method, LayerSpec) else LayerSpec(
            get_method(method), bits if bits is not None else 3, levels or "linear")
        self.targets: list[QuantTarget] = []
        for i, item in enumerate(params):
            target = self._as_target(item, i, default_spec, granularity)
            if target.spec.method.quantized:
                self.targets.append(target)
        self.beta2 = beta2 if beta2 is not None else self._base_beta2()
        self._shared_v = curvature == "auto" and self._adam_v_is_ours()
        self.fused = fused
        if fused:
            self._check_fusable()
        self._ttq_scales: list[torch.nn.Parameter] = []
        self.last_flips: dict[str, float] = {}
        for t in self.targets:
            self._init_target(t)
        if self._ttq_scales:
            base.add_param_group({"params": self._ttq_scales, "weight_decay": 0.0})

    # --- setup ----------------------------------------------------------------------------
    @staticmethod
    def _as_target(item: Any, i: int, default: LayerSpec, granularity: str) -> QuantTarget:
        if isinstance(item, QuantTarget):
            return item
        if isinstance(item, torch.Tensor):
            item = {"param": item}
        elif isinstance(item, tuple):
            item = {"name": item[0], "param": item[1]}
        item = dict(item)
        spec = item.pop("method", default)
        if isinstance(spec, str | Method):
            m = get_method(spec) if isinstance(spec, str) else spec
            spec = LayerSpec(m, item.pop("bits", default.bits), item.pop("levels", default.levels))
        target = QuantTarget(name=item.pop("name", f"param{i}"), param=item.pop("param"), spec=spec,
                             granularity=item.pop("granularity", granularity),
                             gates=item.pop("gates", None), recurrent=item.pop("recurrent", False))
        if item:
            raise ValueError(f"unknown keys for quantized weight {target.name!r}: {sorted(item)}")
        if target.granularity not in ("tensor", "channel", "gate"):
            raise ValueError(f"granularity: expected tensor, channel or gate, "
                             f"got {target.granularity!r}")
        if target.granularity == "gate" and not target.gates:
            raise ValueError(f"granularity 'gate' needs `gates` for {target.name!r}")
        return target

    def _base_beta2(self) -> float:
        betas = self.base.defaults.get("betas")
        return float(betas[1]) if betas is not None else 0.999

    def _adam_v_is_ours(self) -> bool:
        if type(self.base) not in (torch.optim.Adam, torch.optim.AdamW):
            return False
        ids = {id(t.param) for t in self.targets}
        for group in self.base.param_groups:
            if not ids.intersection(map(id, group["params"])):
                continue
            decoupled = type(self.base) is torch.optim.AdamW or group.get("decoupled_weight_decay")
            if (group.get("amsgrad") or group.get("maximize") or group["betas"][1] != self.beta2
                    or (group["weight_decay"] != 0 and not decoupled)):
                return False
        return True

    @torch.no_grad()
    def _init_target(self, t: QuantTarget) -> None:
        p = t.param
        latent = p.detach().clone()
        t.state["latent"] = latent
        if not self._shared_v and t.spec.method.curvature:
            t.state["v"] = torch.zeros_like(latent, dtype=torch.float32)
        if t.spec.method.weights == "ttq":
            # W_p and W_n start at 1.0, as in the TTQ authors' code; their gradients come from
            # `_ttq_grads` and the base optimizer updates them (a param group of their own).
            groups = {"tensor": (), "channel": (latent.shape[0],), "gate": (t.gates,)}
            shape = groups[t.granularity]
            t.state["wp"] = torch.nn.Parameter(torch.ones(shape, device=latent.device))
            t.state["wn"] = torch.nn.Parameter(torch.ones(shape, device=latent.device))
            self._ttq_scales += [t.state["wp"], t.state["wn"]]
        w_hat, alpha = self._quantize(t, latent)
        t.state["alpha"] = alpha
        p.data = w_hat

    # --- the proximal step ----------------------------------------------------------------
    def _v(self, t: QuantTarget) -> torch.Tensor | None:
        """The previous step's second moment v behind d (None if the method is not loss-aware)."""
        if not t.spec.method.curvature:
            return None
        if self._shared_v:
            v = self.base.state.get(t.param, {}).get("exp_avg_sq")
            if v is None:  # before the first step v = 0, so d = 1e-8 everywhere
                return torch.zeros_like(t.state["latent"], dtype=torch.float32)
            return v
        return t.state["v"]

    def _ttq_delta(self, view: torch.Tensor, gran: str) -> torch.Tensor:
        if gran == "channel":
            return self.ttq_threshold * view.abs().amax(dim=tuple(range(1, view.dim())), keepdim=True)
        return self.ttq_threshold * view.abs().max()

    def _quantize(self, t: QuantTarget, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip the latent weight to [-1, 1] in place; return w_hat and its scale (shape () or
        (groups,))."""
        m = t.spec.method
        view, gran = t.grouped(latent)
        if m.weights == "sign":
            return self._sign(latent, torch.ones((), device=latent.device)), torch.ones(())
        v = self._v(t)
        v_view = None if v is None else t.grouped(v)[0]
        if m.weights == "binary" and m.fixed_scale:
            if "fixed_alpha" not in t.state:  # set at the first step, then frozen
                if self.fixed_scale is not None:
                    fan_in = math.prod(latent.shape[1:])  # alpha * sqrt(n) = fixed_scale
                    groups = () if gran == "tensor" else (view.shape[0],)
                    t.state["fixed_alpha"] = torch.full(
                        groups, self.fixed_scale / math.sqrt(fan_in), dtype=latent.dtype,
                        device=latent.device)
                else:  # the first step's BWN scale
                    t.state["fixed_alpha"] = self._binarize(view, None, gran,
                                                            self._binarize_backend)[1]
            alpha = t.state["fixed_alpha"]
            shape = (-1,) + (1,) * (view.dim() - 1) if gran == "channel" else ()
            return self._sign(view, alpha.reshape(shape)).reshape(latent.shape), alpha
        if m.weights == "binary":
            w_hat, alpha = self._binarize(view, v_view, gran, self._binarize_backend)
            return w_hat.reshape(latent.shape), alpha
        latent.clamp_(-1, 1)
        d_view = None if v_view is None else v_view.sqrt() + EPS_D
        prev = t.param.detach() if "alpha" in t.state else None  # warm start from last w_hat
        prev_view = None if prev is None else t.grouped(prev)[0]
        if m.weights == "ternary":  # with compile: each alternation pass (approx) compiled
            w_hat, alpha, _ = prox_ternary(view, d_view, solver=m.solver, granularity=gran,
                                           init=prev_view, backend=self.backend,
                                           compile=self.compiled)
        elif m.weights == "mbit":
            w_hat, alpha = prox_mbit(view, d_view, bits=t.spec.bits, levels=t.spec.levels,
                                     granularity=gran, init=prev_view, backend=self.backend,
                                     compile=self.compiled)
        elif m.weights == "ttq":
            delta = self._ttq_delta(view, gran)
            shape = (-1,) + (1,) * (view.dim() - 1) if gran == "channel" else ()
            wp, wn = t.state["wp"].detach().reshape(shape), t.state["wn"].detach().reshape(shape)
            w_hat = torch.where(view > delta, wp, torch.where(view < -delta, -wn, 0.0))
            w_hat = w_hat.to(view.dtype)
            alpha = (t.state["wp"].detach() + t.state["wn"].detach()) / 2
        else:
            raise AssertionError(f"unhandled weight kind {m.weights!r}")
        return w_hat.reshape(latent.shape), alpha

    @torch.no_grad()
    def _ttq_grads(self, t: QuantTarget) -> None:
        """TTQ's gradients: dL/dW_p = sum_{w>delta} g, dL/dW_n = -sum_{w<-delta} g; the latent
        gets W_p*g above delta, g inside, W_n*g below (algorithms.md section 3.5)."""
        g = t.param.grad
        view, gran = t.grouped(t.state["latent"])
        g_view = t.grouped(g)[0]
        delta = self._ttq_delta(view, gran)
        pos, neg = view > delta, view < -delta
        dims = tuple(range(1, view.dim())) if gran == "channel" else None
        wp, wn = t.state["wp"], t.state["wn"]
        wp.grad = (g_view * pos).sum(dim=dims).float().reshape(wp.shape)
        wn.grad = -(g_view * neg).sum(dim=dims).float().reshape(wn.shape)
        shape = (-1,) + (1,) * (view.dim() - 1) if gran == "channel" else ()
        scale = torch.where(pos, wp.detach().reshape(shape),
                            torch.where(neg, wn.detach().reshape(shape), 1.0))
        g.copy_((g_view * scale).reshape(g.shape))

    @torch.no_grad()
    def step(self, closure: Any = None, *, track_flips: bool = False) -> Any:
        """One step: base step on the latent weights, clip, next w_hat.

        Args:
            closure: re-evaluates the loss and its gradients; it runs first, at w_hat (the
                weights the model computes with), and its loss is returned.
            track_flips: also measure, per weight, the fraction of quantized values that changed
                (read it from `last_flips`); costs one extra pass over the weights.
        """
        if not self.targets:
            return self.base.step(closure)
        if self.fused:
            return self._fused_step(closure, track_flips)
        loss = None
        if closure is not None:  # before the swap below: the gradient is taken at w_hat
            with torch.enable_grad():
                loss = closure()
        old_hat = {}
        for t in self.targets:
            p = t.param
            if p.grad is not None:
                if t.spec.method.weights == "ttq":
                    self._ttq_grads(t)
                if "v" in t.state:  # own EMA of g^2, the same ops as Adam's exp_avg_sq
                    t.state["v"].mul_(self.beta2).addcmul_(p.grad, p.grad, value=1 - self.beta2)
            old_hat[t.name] = p.data
            p.data = t.state["latent"]
        self.base.step()
        for scale in self._ttq_scales:  # magnitudes: a negative one would swap the codes' signs
            scale.data.clamp_(min=0)
        self.last_flips: dict[str, float] = {}
        for t in self.targets:
            p = t.param
            latent = p.data
            p.data = old_hat[t.name]  # so `_quantize` can warm-start from the last w_hat
            w_hat, alpha = self._quantize(t, latent)
            if track_flips:
                self.last_flips[t.name] = self._changed_fraction(t, p.data, t.state["alpha"],
                                                                  w_hat, alpha)
            t.state["latent"], t.state["alpha"] = latent, alpha
            p.data = w_hat
        return loss

    # --- the fused step (Adam + binary methods) -------------------------------------------
    def _check_fusable(self) -> None:
        """Raise ValueError unless `kernels.fused_adam_lab_step_` can do every quantized step."""
        if type(self.base) is not torch.optim.Adam:
            raise ValueError(f"fused=True needs torch.optim.Adam as base, got {type(self.base).__name__}")
        ids = {id(t.param) for t in self.targets}
        for i, group in enumerate(self.base.param_groups):
            if not ids.intersection(map(id, group["params"])):
                continue
            for flag in ("amsgrad", "maximize", "capturable", "differentiable",
                         "decoupled_weight_decay"):
                if group.get(flag):
                    raise ValueError(f"fused=True does not support Adam's {flag}=True "
                                     f"(param group {i})")
            if group["weight_decay"] != 0:
                raise ValueError(f"fused=True needs weight_decay=0, got {group['weight_decay']} "
                                 f"(param group {i})")
        if not self._shared_v:
            raise ValueError("fused=True needs curvature='auto' with v shared with Adam's exp_avg_sq "
                             f"(same beta2, {self.beta2})")
        for t in self.targets:
            m = t.spec.method
            if m.weights != "binary" or m.fixed_scale:
                raise ValueError(f"fused=True supports binary methods with a learned scale (lab, bwn, "
                                 f"xnor, lab2), got {m.name!r} for {t.name!r}")
            if t.param.dtype != torch.float32 or not t.param.is_contiguous():
                raise ValueError(f"fused=True needs float32 contiguous weights, got {t.param.dtype} "
                                 f"(contiguous={t.param.is_contiguous()}) for {t.name!r}")

    def _adam_state(self, t: QuantTarget) -> dict[str, Any]:
        """Adam's state of a quantized weight, created as `torch.optim.Adam` creates it."""
        state = self.base.state[t.param]
        if not state:
            fused_adam = any(t.param is p and g.get("fused") for g in self.base.param_groups
                             for p in g["params"])
            dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
            device = t.param.device if fused_adam else "cpu"  # where Adam keeps `step`
            state["step"] = torch.zeros((), dtype=dtype, device=device)
            state["exp_avg"] = torch.zeros_like(t.state["latent"], memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(t.state["latent"],
                                                   memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def _fused_step(self, closure: Any, track_flips: bool) -> Any:
        """`step` with fused=True: base step for the other parameters, then one fused call per
        (param group, curvature) for the quantized weights that have a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grads = {t.name: t.param.grad for t in self.targets}
        try:  # Adam skips parameters without a gradient: the base step updates the others
            for t in self.targets:
                t.param.grad = None
            self.base.step()
        finally:
            for t in self.targets:
                t.param.grad = grads[t.name]
        group_of = {id(p): i for i, g in enumerate(self.base.param_groups) for p in g["params"]}
        batches: dict[tuple[int, bool], list[QuantTarget]] = {}
        for t in self.targets:
            if grads[t.name] is not None and t.param.numel() > 0:
                key = (group_of[id(t.param)], t.spec.method.curvature)
                batches.setdefault(key, []).append(t)
        self.last_flips = {t.name: 0.0 for t in self.targets} if track_flips else {}
        for (index, curvature), batch in batches.items():
            group = self.base.param_groups[index]
            states = [self._adam_state(t) for t in batch]
            for state in states:
                state["step"] += 1
            views = [(t, *(t.grouped(x) for x in (t.state["latent"], t.param.grad,
                                                  s["exp_avg"], s["exp_avg_sq"])))
                     for t, s in zip(batch, states, strict=True)]
            w_hats, alphas = fused_adam_lab_step_(
                [v[1][0] for v in views], [v[2][0] for v in views], [v[3][0] for v in views],
                [v[4][0] for v in views], steps=[float(s["step"]) for s in states],
                lr=float(group["lr"]), beta1=group["betas"][0], beta2=group["betas"][1],
                eps=group["eps"], granularity=[v[1][1] for v in views], curvature=curvature,
                backend=self.backend)
            for t, w_hat, alpha in zip(batch, w_hats, alphas, strict=True):
                w_hat = w_hat.reshape(t.param.shape)
                if track_flips:
                    self.last_flips[t.name] = self._changed_fraction(t, t.param.data,
                                                                      t.state["alpha"], w_hat, alpha)
                t.state["alpha"] = alpha
                t.param.data = w_hat
        return loss

    @staticmethod
    def _changed_fraction(t: QuantTarget, old: torch.Tensor, old_alpha: torch.Tensor,
                          new: torch.Tensor, new_alpha: torch.Tensor) -> float:
        """Fraction of weights whose quantized level (not just value: scales move) changed."""
        if old.numel() == 0:
            return 0.0
        if t.spec.method.weights == "mbit":  # level index k * w_hat / alpha, per group
            k = 2 ** (t.spec.bits - 1) - 1
            codes = []
            for w, alpha in ((old, old_alpha), (new, new_alpha)):
                view, gran = t.grouped(w)
                shape = (-1,) + (1,) * (view.dim() - 1) if gran == "channel" else ()
                codes.append(torch.round(view / alpha.reshape(shape).clamp_min(1e-30) * k))
            changed = codes[0] != codes[1]
        elif t.spec.method.weights in ("sign", "binary"):
            changed = (old >= 0) != (new >= 0)
        else:  # ternary codes -1, 0, +1
            changed = torch.sign(old) != torch.sign(new)
        return changed.float().mean().item()

    # --- introspection and plumbing -------------------------------------------------------
    def alphas(self) -> dict[str, float]:
        """Mean scale per quantized weight (1.0 for unscaled ``sign`` weights)."""
        return {t.name: float(t.state["alpha"].float().mean()) for t in self.targets}

    def latent(self, name: str) -> torch.Tensor:
        """The full-precision latent weight of a quantized parameter, by name."""
        for t in self.targets:
            if t.name == name:
                return t.state["latent"]
        raise KeyError(f"no quantized weight named {name!r}; have {[t.name for t in self.targets]}")

    def curvature(self, name: str) -> torch.Tensor | None:
        """The second-moment estimate v behind d for a weight (None if it is not loss-aware)."""
        t = next(t for t in self.targets if t.name == name)
        if not t.spec.method.curvature:
            return None
        if self._shared_v:
            return self.base.state.get(t.param, {}).get("exp_avg_sq")
        return t.state["v"]

    def state_nbytes(self) -> int:
        """Bytes held by this optimizer and its base: latents, v, scales, base state."""
        total = 0
        for t in self.targets:
            total += sum(x.numel() * x.element_size() for x in t.state.values()
                         if isinstance(x, torch.Tensor))
        for s in self.base.state.values():
            total += sum(x.numel() * x.element_size() for x in s.values()
                         if isinstance(x, torch.Tensor))
        return total

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.base.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)
        for s in self._ttq_scales:
            s.grad = None

    def state_dict(self) -> dict[str, Any]:
        quant = {t.name: {k: (v.detach().clone() if isinstance(v, torch.Tensor) else v)
                          for k, v in t.state.items()} for t in self.targets}
        return {"base": self.base.state_dict(), "quant": quant}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base.load_state_dict(state["base"])
        for t in self.targets:
            saved = state["quant"][t.name]
            for k, v in saved.items():
                if isinstance(t.state.get(k), torch.nn.Parameter):
                    t.state[k].data.copy_(v)
                else:
                    t.state[k] = v.clone() if isinstance(v, torch.Tensor) else v
            w_hat, _ = self._quantize(t, t.state["latent"])
            t.param.data = w_hat
