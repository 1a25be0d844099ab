"""`QuantOptimizer`: a `torch.optim.Optimizer` that wraps any torch optimizer and quantizes weights
with a proximal step.

The reference code's step (docs/algorithms.md, "The step"), for every quantized weight W:

1. the forward pass uses w_hat = prox(W, d), with d = sqrt(v) + 1e-8 built from the *previous*
   step's second moment v (no bias correction: alpha is a ratio of d-weighted sums, so any scalar
   factor on d cancels);
2. the gradient g = d loss / d w_hat is applied to W unchanged by the base optimizer;
3. W is clipped to [-1, 1]; v <- beta2 * v + (1 - beta2) * g^2.

How it is done here (the layout of torchao's PARQ): between steps each quantized parameter's
storage *is* w_hat, so the model needs no special layers and autograd delivers g in `p.grad`.
The full-precision latent W lives in this optimizer's state (``opt.state[p]["latent"]``). `step()`
swaps the latent in, runs the base optimizer, clips, computes the next w_hat with the weight's
`bench.quantizers.Quantizer` and swaps it back. With no quantized parameters (method ``fp``)
`step()` is the base optimizer's step, bit for bit.

``param_groups`` *are* the base optimizer's groups (the same list), so LR schedulers, gradient
scalers and user edits of ``lr`` reach the base; `state_dict` holds the base's state and every
quantized weight's latent, curvature, scales and current w_hat, so a checkpoint resumes bit for bit.

Example (own model, own loop, a scheduler; the param groups say what to quantize):
    >>> import torch
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> weights = [model[0].weight, model[2].weight]
    >>> others = [model[0].bias, model[2].bias]
    >>> opt = QuantOptimizer(torch.optim.Adam([{"params": weights, "method": "lab"},
    ...                                        {"params": others}], lr=1e-2))
    >>> sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5)
    >>> x, y = torch.randn(32, 4), torch.randint(3, (32,))
    >>> for _ in range(5):
    ...     opt.zero_grad()
    ...     torch.nn.functional.cross_entropy(model(x), y).backward()
    ...     opt.step()
    ...     sched.step()
    >>> alpha = opt.alphas()["param0"]  # weights hold exactly +-alpha; the latents are in opt.state
    >>> bool((model[0].weight.abs() == alpha).all()), opt.state[model[0].weight]["latent"].shape
    (True, torch.Size([8, 4]))
"""

from __future__ import annotations

import logging
from collections import OrderedDict, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from bench.methods import LayerSpec, Method, get_method
from bench.quantizers import EPS_D, ProxOptions, Quantizer, make_quantizer
from kernels import fused_adam_lab_step_

__all__ = ["EPS_D", "GROUP_KEYS", "QuantOptimizer", "QuantTarget"]

log = logging.getLogger(__name__)

# Param-group keys that say how a group's weights are quantized (a group without ``method`` is
# trained in full precision). ``gates``: stacked gate blocks, for ``granularity="gate"``.
GROUP_KEYS = ("method", "bits", "levels", "granularity", "gates")


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
        state: latent, own curvature ``v``, ``alpha`` and the quantizer's entries (shared with
            ``quantizer.state`` and ``QuantOptimizer.state[param]``).
        quantizer: the weight kind's `Quantizer` (set by `QuantOptimizer`).
    """

    name: str
    param: torch.nn.Parameter
    spec: LayerSpec
    granularity: str = "tensor"
    gates: int | None = None
    recurrent: bool = False
    state: dict[str, Any] = field(default_factory=dict, repr=False)
    quantizer: Quantizer | None = field(default=None, repr=False)

    def grouped(self, t: torch.Tensor) -> tuple[torch.Tensor, str]:
        """View `t` for the kernels: (view, kernel granularity)."""
        return self.quantizer.grouped(t)


class QuantOptimizer(torch.optim.Optimizer):
    """Latent weights + curvature estimate + proximal quantization around a base optimizer.

    Two ways to say what is quantized:

    - ``QuantOptimizer(base)``: the base optimizer's param groups carry `GROUP_KEYS`
      (``{"params": ..., "method": "laq", "bits": 4, "granularity": "channel"}``, as torchao
      PARQ's groups carry ``quant_bits``); groups without ``method`` stay full precision. Names
      come from the group's ``param_names`` (pass ``(name, param)`` pairs) or are ``param<i>``.
    - ``QuantOptimizer(params, base, method, ...)``: `params` lists the weights to quantize:
      parameters, ``(name, parameter)`` pairs, `QuantTarget`s, or dicts with keys ``param``
      (required), ``name``, ``method``, ``bits``, ``levels``, ``granularity``, ``gates``,
      ``recurrent`` overriding the defaults below per weight; `base` is a torch optimizer over
      *all* the model's parameters (quantized ones included).

    Args:
        params: the weights to quantize, or the base optimizer (first form).
        base: the base optimizer (second form).
        method: default method name (a key of `bench.methods.METHODS`) or `LayerSpec`; ``lab``
            when not given (second form only: in the first, each group names its own).
        granularity, bits, levels: defaults for every weight (or group).
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
            over all of them (backend: `_fused_backend`). The other parameters still go through
            ``base``. Needs ``torch.optim.Adam`` without amsgrad, weight decay, maximize,
            capturable or differentiable, ``curvature="auto"``, float32 contiguous weights and
            binary methods with a learned scale (``lab``, ``bwn``, ``xnor``, ``lab2``). Results
            match the unfused step to float32 rounding (bit for bit with the torch reference).

    Raises:
        ValueError: an unknown method/granularity, ``gate`` granularity without ``gates``, a
            quantized weight the base optimizer does not hold; ``fused=True`` with an optimizer,
            method or weight it does not support.
    """

    def __init__(self, params: Iterable[Any] | torch.optim.Optimizer,
                 base: torch.optim.Optimizer | None = None,
                 method: str | LayerSpec | None = None, *, granularity: str = "tensor",
                 bits: int | None = None, levels: str | None = None, beta2: float | None = None,
                 curvature: str = "auto", ttq_threshold: float = 0.05,
                 fixed_scale: float | None = None, backend: str = "auto",
                 compile: bool = False, fused: bool = False):
        from_groups = isinstance(params, torch.optim.Optimizer)
        if from_groups:
            if base is not None or method is not None:
                raise ValueError("QuantOptimizer(base): each param group names its method; pass "
                                 "no second optimizer and no `method`")
            base = params
        elif not isinstance(base, torch.optim.Optimizer):
            raise TypeError(f"base: expected a torch.optim.Optimizer, got {type(base).__name__}")
        if curvature not in ("auto", "own"):
            raise ValueError(f"curvature: expected 'auto' or 'own', got {curvature!r}")
        if compile and backend == "triton":
            raise ValueError("compile=True generates its own kernels (Triton on CUDA); it cannot "
                             "also call the hand-written Triton ones: use backend='auto' or 'torch'")
        if fixed_scale is not None and not 0 < fixed_scale < float("inf"):
            raise ValueError(f"fixed_scale: expected a finite number > 0, got {fixed_scale!r}")
        # torch.optim.Optimizer's own setup, minus its param groups: ours are the base's.
        self._optimizer_step_pre_hooks: OrderedDict = OrderedDict()
        self._optimizer_step_post_hooks: OrderedDict = OrderedDict()
        self._optimizer_state_dict_pre_hooks: OrderedDict = OrderedDict()
        self._optimizer_state_dict_post_hooks: OrderedDict = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks: OrderedDict = OrderedDict()
        self._optimizer_load_state_dict_post_hooks: OrderedDict = OrderedDict()
        self._patch_step_function()
        self.base = base
        self.defaults = base.defaults
        self.state: defaultdict[torch.Tensor, dict[str, Any]] = defaultdict(dict)

        self.backend = backend
        self.compiled = compile
        self.options = ProxOptions(backend=backend, compile=compile, ttq_threshold=ttq_threshold,
                                   fixed_scale=fixed_scale)
        self.ttq_threshold, self.fixed_scale = ttq_threshold, fixed_scale
        self.beta2 = beta2 if beta2 is not None else self._base_beta2()
        self.curvature_mode = curvature
        self._defaults = {"method": method, "granularity": granularity, "bits": bits,
                          "levels": levels}
        self.targets: list[QuantTarget] = []
        self.last_flips: dict[str, float] = {}
        if from_groups:
            for group in list(base.param_groups):
                self._add_targets(self._group_targets(group, len(self.targets)))
        else:
            default_spec = self._spec(method or "lab", bits, levels)
            self._add_targets([self._as_target(item, i, default_spec, granularity)
                               for i, item in enumerate(params)])
        self.fused = fused
        if fused:
            self._check_fusable()

    # --- setup ----------------------------------------------------------------------------
    @staticmethod
    def _spec(method: str | Method | LayerSpec, bits: int | None, levels: str | None) -> LayerSpec:
        if isinstance(method, LayerSpec):
            return method
        m = get_method(method) if isinstance(method, str) else method
        return LayerSpec(m, bits if bits is not None else 3, levels or "linear")

    @classmethod
    def _as_target(cls, item: Any, i: int, default: LayerSpec, granularity: str) -> QuantTarget:
        if isinstance(item, QuantTarget):
            return item
        if isinstance(item, torch.Tensor):
            item = {"param": item}
        elif isinstance(item, tuple):
            item = {"name": item[0], "param": item[1]}
        item = dict(item)
        spec = item.pop("method", default)
        if not isinstance(spec, LayerSpec):
            spec = cls._spec(spec, item.pop("bits", default.bits), item.pop("levels", default.levels))
        target = QuantTarget(name=item.pop("name", f"param{i}"), param=item.pop("param"), spec=spec,
                             granularity=item.pop("granularity", granularity),
                             gates=item.pop("gates", None), recurrent=item.pop("recurrent", False))
        if item:
            raise ValueError(f"unknown keys for quantized weight {target.name!r}: {sorted(item)}")
        return target

    def _group_targets(self, group: dict[str, Any], first: int) -> list[QuantTarget]:
        """Targets for a param group that carries `GROUP_KEYS` (none without ``method``)."""
        if group.get("method") is None:
            return []
        opts = {k: group.get(k, self._defaults.get(k)) for k in GROUP_KEYS}
        spec = self._spec(opts["method"], opts["bits"], opts["levels"])
        names = group.get("param_names") or [f"param{first + j}" for j in range(len(group["params"]))]
        return [QuantTarget(name, p, spec, granularity=opts["granularity"] or "tensor",
                            gates=opts["gates"]) for name, p in zip(names, group["params"], strict=True)]

    def _add_targets(self, targets: list[QuantTarget]) -> None:
        """Create the state of new quantized weights (fp ones are left to the base)."""
        scales: list[tuple[str, torch.nn.Parameter]] = []
        known = {t.name for t in self.targets}
        for t in targets:
            if not t.spec.method.quantized:
                continue
            if t.name in known:
                raise ValueError(f"two quantized weights are named {t.name!r}")
            try:
                t.quantizer = make_quantizer(t.spec, t.granularity, t.gates, self.options, t.state)
            except ValueError as err:
                raise ValueError(f"quantized weight {t.name!r}: {err}") from None
            t.granularity = t.quantizer.granularity
            group = self._base_group(t.param)
            if group is None:
                raise ValueError(f"quantized weight {t.name!r} is not in the base optimizer's "
                                 "param groups")
            self._init_target(t, group)
            trained = t.quantizer.init_(t.state["latent"])  # TTQ: [W_p, W_n]
            scales += [(f"{t.name}.{k}", s) for k, s in zip(("wp", "wn"), trained, strict=False)]
            self._requantize(t, prev=None)
            self.targets.append(t)
            self.state[t.param] = t.state
            known.add(t.name)
        if scales:  # trained scales (TTQ): a param group of their own, without weight decay
            named = "param_names" in self.base.param_groups[0]
            self.base.add_param_group({"params": scales if named else [s for _, s in scales],
                                       "weight_decay": 0.0})

    def _base_beta2(self) -> float:
        betas = self.base.defaults.get("betas")
        return float(betas[1]) if betas is not None else 0.999

    def _base_group(self, p: torch.Tensor) -> dict[str, Any] | None:
        return next((g for g in self.base.param_groups if any(p is q for q in g["params"])), None)

    def _adam_v_is_ours(self, group: dict[str, Any]) -> bool:
        """Whether Adam's ``exp_avg_sq`` of this group's weights is our v (then it is shared)."""
        if type(self.base) not in (torch.optim.Adam, torch.optim.AdamW):
            return False
        decoupled = type(self.base) is torch.optim.AdamW or group.get("decoupled_weight_decay")
        return not (group.get("amsgrad") or group.get("maximize") or group["betas"][1] != self.beta2
                    or (group["weight_decay"] != 0 and not decoupled))

    @torch.no_grad()
    def _init_target(self, t: QuantTarget, group: dict[str, Any]) -> None:
        t.state["latent"] = t.param.detach().clone()
        shared = self.curvature_mode == "auto" and self._adam_v_is_ours(group)
        if t.spec.method.curvature and not shared:
            t.state["v"] = torch.zeros_like(t.state["latent"], dtype=torch.float32)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the base optimizer; its weights are quantized if it names a ``method``
        (`GROUP_KEYS`)."""
        self.base.add_param_group(param_group)
        self._add_targets(self._group_targets(self.base.param_groups[-1], len(self.targets)))
        if self.fused:
            self._check_fusable()

    # --- the proximal step ----------------------------------------------------------------
    def _v(self, t: QuantTarget) -> torch.Tensor | None:
        """The previous step's second moment v behind d (None if the method is not loss-aware)."""
        if not t.spec.method.curvature:
            return None
        if "v" in t.state:
            return t.state["v"]
        v = self.base.state.get(t.param, {}).get("exp_avg_sq")
        if v is None:  # before the first step v = 0, so d = 1e-8 everywhere
            return torch.zeros_like(t.state["latent"], dtype=torch.float32)
        return v

    @torch.no_grad()
    def _requantize(self, t: QuantTarget, prev: torch.Tensor | None) -> None:
        """w_hat and alpha from the latent (clipped in place), into the parameter and state."""
        w_hat, alpha = t.quantizer.prox_(t.state["latent"], self._v(t), prev)
        t.state["alpha"] = alpha
        t.param.data = w_hat

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
                t.quantizer.grad_(p.grad, t.state["latent"])
                if "v" in t.state:  # own EMA of g^2, the same ops as Adam's exp_avg_sq
                    t.state["v"].mul_(self.beta2).addcmul_(p.grad, p.grad, value=1 - self.beta2)
            old_hat[t.name] = p.data
            p.data = t.state["latent"]
        self.base.step()
        for t in self.targets:  # magnitudes: a negative one would swap the codes' signs
            for key in ("wp", "wn"):
                if key in t.state:
                    t.state[key].data.clamp_(min=0)
        self.last_flips = {}
        for t in self.targets:
            p = t.param
            t.state["latent"] = p.data
            old_alpha = t.state["alpha"]
            self._requantize(t, prev=old_hat[t.name])  # warm-started from the last w_hat
            if track_flips:
                self.last_flips[t.name] = self._flip_ratio(t, old_hat[t.name], old_alpha,
                                                           p.data, t.state["alpha"])
        return loss

    # --- the fused step (Adam + binary methods) -------------------------------------------
    def _fused_backend(self) -> str:
        """The backend of `kernels.fused_adam_lab_step_` (the one place that chooses it)."""
        return self.backend

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
        for t in self.targets:
            if "v" in t.state:
                raise ValueError("fused=True needs curvature='auto' with v shared with Adam's "
                                 f"exp_avg_sq (same beta2, {self.beta2})")
        for t in self.targets:
            m = t.spec.method
            if not t.quantizer.two_level or not t.quantizer.scaled or m.fixed_scale:
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
            # Unless flips are counted (they need the old w_hat), the new w_hat overwrites the
            # old one: on CPU, fresh memory every step costs more than the step itself.
            reuse = not track_flips and all(
                t.param.data.is_contiguous() and t.param.data_ptr() != t.state["latent"].data_ptr()
                for t in batch)
            w_hats, alphas = fused_adam_lab_step_(
                [v[1][0] for v in views], [v[2][0] for v in views], [v[3][0] for v in views],
                [v[4][0] for v in views], steps=[float(s["step"]) for s in states],
                lr=float(group["lr"]), beta1=group["betas"][0], beta2=group["betas"][1],
                eps=group["eps"], granularity=[v[1][1] for v in views], curvature=curvature,
                backend=self._fused_backend(),
                out=[t.grouped(t.param.data)[0] for t in batch] if reuse else None)
            for t, w_hat, alpha in zip(batch, w_hats, alphas, strict=True):
                w_hat = w_hat.reshape(t.param.shape)
                if track_flips:
                    self.last_flips[t.name] = self._flip_ratio(t, t.param.data, t.state["alpha"],
                                                               w_hat, alpha)
                t.state["alpha"] = alpha
                t.param.data = w_hat
        return loss

    @staticmethod
    def _flip_ratio(t: QuantTarget, old: torch.Tensor, old_alpha: torch.Tensor,
                    new: torch.Tensor, new_alpha: torch.Tensor) -> float:
        """Fraction of weights whose quantized level (not just value: scales move) changed."""
        if old.numel() == 0:
            return 0.0
        q = t.quantizer
        return (q.codes(old, old_alpha) != q.codes(new, new_alpha)).float().mean().item()

    # --- introspection --------------------------------------------------------------------
    def alphas(self) -> dict[str, float]:
        """Mean scale per quantized weight (1.0 for unscaled ``sign`` weights)."""
        return {t.name: float(t.state["alpha"].float().mean()) for t in self.targets}

    def target(self, name: str) -> QuantTarget:
        """A quantized weight's record (spec, granularity, quantizer, state), by name."""
        for t in self.targets:
            if t.name == name:
                return t
        raise KeyError(f"no quantized weight named {name!r}; have {[t.name for t in self.targets]}")

    def latent(self, name: str) -> torch.Tensor:
        """The full-precision latent weight of a quantized parameter, by name."""
        return self.target(name).state["latent"]

    def curvature(self, name: str) -> torch.Tensor | None:
        """The second-moment estimate v behind d for a weight (None if it is not loss-aware)."""
        t = self.target(name)
        if not t.spec.method.curvature:
            return None
        return t.state["v"] if "v" in t.state else self.base.state.get(t.param, {}).get("exp_avg_sq")

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

    # --- torch.optim.Optimizer plumbing ---------------------------------------------------
    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        """The base optimizer's groups (looked up each time: its load_state_dict replaces the
        list), so LR schedulers and edits of ``lr`` reach the base."""
        return self.base.param_groups

    @param_groups.setter
    def param_groups(self, groups: list[dict[str, Any]]) -> None:
        self.base.param_groups = groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)  # TTQ's scales are in a base group too

    def __getstate__(self) -> dict[str, Any]:  # pickle/deepcopy: all of it, the base included
        return dict(self.__dict__)

    def state_dict(self) -> dict[str, Any]:
        """``{"base": base.state_dict(), "quant": {name: state}}``.

        A quantized weight's state: ``latent``, ``alpha``, ``v`` (own curvature), the kind's
        entries (``fixed_alpha``, TTQ's ``wp``/``wn``) and ``w_hat``, the parameter's current value
        (the warm start of the next step). Tensors are references, as in torch's optimizers:
        `torch.save` them or deep-copy; ``w_hat`` shares the parameter's storage, so saving it
        beside the model's state_dict costs nothing.
        """
        for hook in self._optimizer_state_dict_pre_hooks.values():
            hook(self)
        quant = {t.name: {**{k: (v.detach() if isinstance(v, torch.Tensor) else v)
                             for k, v in t.state.items()}, "w_hat": t.param.detach()}
                 for t in self.targets}
        state = {"base": self.base.state_dict(), "quant": quant}
        for post in self._optimizer_state_dict_post_hooks.values():
            state = post(self, state) or state
        return state

    @torch.no_grad()
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore `state_dict` (tensors are copied): the next `step` continues bit for bit.

        Raises:
            ValueError: the saved quantized weights are not this optimizer's (names differ).
        """
        for pre in self._optimizer_load_state_dict_pre_hooks.values():
            state_dict = pre(self, state_dict) or state_dict
        saved_names, names = set(state_dict["quant"]), {t.name for t in self.targets}
        if saved_names != names:
            raise ValueError(f"state_dict: saved quantized weights {sorted(saved_names)} differ from "
                             f"this optimizer's {sorted(names)}")
        self.base.load_state_dict(state_dict["base"])
        for t in self.targets:
            saved = state_dict["quant"][t.name]
            device = t.param.device
            for k, v in saved.items():
                if k == "w_hat":
                    continue
                if isinstance(t.state.get(k), torch.nn.Parameter):  # the base trains this object
                    t.state[k].data.copy_(v)
                else:
                    t.state[k] = v.detach().clone().to(device) if isinstance(v, torch.Tensor) else v
            if "w_hat" in saved:
                t.param.data = saved["w_hat"].detach().clone().to(device, t.param.dtype)
            else:  # a state_dict without it: recompute from the latent
                self._requantize(t, prev=t.param.detach())
        for post in self._optimizer_load_state_dict_post_hooks.values():
            post(self)
