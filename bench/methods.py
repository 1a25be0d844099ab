"""The method registry: how each method quantizes weights (and activations).

`METHODS` maps a name to a small frozen `Method`. The math lives in `kernels/`; the optimizer
wrapper (`bench.optim.QuantOptimizer`) applies it every step; models learn about activation
quantization through `bench.layers`.

Example:
    >>> METHODS["lab"].weights, METHODS["lab"].curvature, METHODS["lab"].bits
    ('binary', True, 1)
    >>> get_method("labb")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown method 'labb' (did you mean 'lab'?); valid: fp, amp, bc, ...
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass

__all__ = [
    "METHODS",
    "LayerRule",
    "LayerSpec",
    "Method",
    "get_method",
    "parse_layer_methods",
    "resolve_layers",
]


@dataclass(frozen=True)
class Method:
    """How one method treats weights and activations.

    Attributes:
        weights: ``fp`` (full precision), ``sign`` (+-1, no scale), ``binary`` (alpha * sign),
            ``ternary`` (alpha * {-1, 0, 1}), ``mbit`` (alpha * m-bit levels), ``ttq`` (two trained
            scales), ``mixed`` (chosen per layer).
        curvature: the scale is loss-aware: weighted by d = sqrt(v) + 1e-8 (v: the second moment).
        solver: `kernels.prox_ternary` solver for ternary methods.
        fixed_scale: the scale is computed once (at the first step) and then frozen.
        activations: ``none`` or ``sign`` (sign with the 1{|x| <= 1} straight-through estimator).
        bits: storage bits per weight (ternary codes take 2 bits; ``mbit`` takes the run's bits).
    """

    name: str
    weights: str
    curvature: bool = False
    solver: str | None = None
    fixed_scale: bool = False
    activations: str = "none"
    bits: float = 32
    paper: str = ""
    summary: str = ""

    @property
    def quantized(self) -> bool:
        return self.weights != "fp"

    @property
    def quantizer(self) -> type | None:
        """The `bench.quantizers.Quantizer` class of this method's weight kind (None for
        ``mixed``, which picks one per layer)."""
        from bench.quantizers import QUANTIZERS  # here: importing bench.methods needs no torch

        return QUANTIZERS.get(self.weights)

    @property
    def scaled(self) -> bool:
        """Whether the quantized weights carry a scale (so `granularity` applies)."""
        quantizer = self.quantizer
        return quantizer is not None and quantizer.scaled


METHODS: dict[str, Method] = {
    "fp": Method("fp", "fp", bits=32, paper="-", summary="full precision (float32 weights)"),
    "amp": Method("amp", "fp", bits=16, paper="Micikevicius et al. 2018",
                  summary="full-precision weights, 16-bit autocast compute"),
    "bc": Method("bc", "sign", bits=1, paper="Courbariaux et al. 2015 (BinaryConnect)",
                 summary="sign(w), unscaled +-1"),
    "bc-scaled": Method("bc-scaled", "binary", fixed_scale=True, bits=1,
                        paper="BinaryConnect with a fixed scale (labbench control)",
                        summary="alpha0 * sign(w), alpha0 = mean|w| at init, frozen"),
    "bwn": Method("bwn", "binary", bits=1, paper="Rastegari et al. 2016 (BWN)",
                  summary="mean|w| * sign(w)"),
    "lab": Method("lab", "binary", curvature=True, bits=1, paper="Hou et al. 2017 (LAB)",
                  summary="sum(d|w|)/sum(d) * sign(w), d = sqrt(v) + 1e-8"),
    "bnn": Method("bnn", "sign", activations="sign", bits=1,
                  paper="Courbariaux et al. 2016 (BNN)", summary="bc weights, sign activations"),
    "xnor": Method("xnor", "binary", activations="sign", bits=1,
                   paper="Rastegari et al. 2016 (XNOR-Net)",
                   summary="bwn weights, sign activations"),
    "lab2": Method("lab2", "binary", curvature=True, activations="sign", bits=1,
                   paper="Hou et al. 2017 (LAB2)", summary="lab weights, sign activations"),
    "twn": Method("twn", "ternary", solver="twn", bits=2, paper="Li & Liu 2016 (TWN)",
                  summary="delta = 0.7 mean|w|, alpha = mean of |w| above delta"),
    "ttq": Method("ttq", "ttq", bits=2, paper="Zhu et al. 2017 (TTQ)",
                  summary="trained W_p, W_n; delta = t * max|w|"),
    "lat": Method("lat", "ternary", curvature=True, solver="exact", bits=2,
                  paper="Hou & Kwok 2018 (LAT, exact)",
                  summary="exact d-weighted ternary prox (sorted candidates)"),
    "lat-approx": Method("lat-approx", "ternary", curvature=True, solver="approx", bits=2,
                         paper="Hou & Kwok 2018 (LAT, approximate)",
                         summary="alternating d-weighted ternary prox, warm-started"),
    "laq": Method("laq", "mbit", curvature=True, bits=3, paper="Hou & Kwok 2018 (LAQ)",
                  summary="alternating d-weighted m-bit prox (linear or log levels)"),
    "mixed": Method("mixed", "mixed", bits=0, paper="-",
                    summary="per-layer method chosen by name pattern (layer_methods)"),
}

# Methods a `mixed` rule may pick: weight-only methods (activations are a model-wide choice).
MIXABLE = ("fp", "bc", "bc-scaled", "bwn", "lab", "twn", "ttq", "lat", "lat-approx", "laq")


def get_method(name: str) -> Method:
    """Look a method up by name; unknown names raise ValueError listing the valid ones."""
    try:
        return METHODS[name]
    except KeyError:
        hint = difflib.get_close_matches(name, list(METHODS), n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ValueError(f"unknown method {name!r}{extra}; valid: {', '.join(METHODS)}") from None


@dataclass(frozen=True)
class LayerRule:
    """One rule of a `mixed` spec: layers matching `pattern` use `method` (with bits/levels)."""

    pattern: str
    method: str
    bits: int | None = None
    levels: str | None = None


@dataclass(frozen=True)
class LayerSpec:
    """The quantization chosen for one layer."""

    method: Method
    bits: int | None = None
    levels: str | None = None

    @property
    def bits_per_weight(self) -> float:
        return float(self.bits if self.method.weights == "mbit" else self.method.bits)


def parse_layer_methods(spec: str) -> list[LayerRule]:
    """Parse ``"PATTERN=METHOD[:BITS[:LEVELS]];..."`` (first matching rule wins).

    Patterns are shell-style (`fnmatch`) patterns over parameter names such as ``layers.0.weight``;
    ``@first`` and ``@last`` name the first and last quantizable layer of the model.

    Example:
        >>> parse_layer_methods("@first=laq:8;*=lab")[0]
        LayerRule(pattern='@first', method='laq', bits=8, levels='linear')
    """
    rules = []
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        pattern, eq, rhs = part.partition("=")
        if not eq or not pattern.strip() or not rhs.strip():
            raise ValueError(f"rule {part!r}: expected PATTERN=METHOD[:BITS[:LEVELS]]")
        name, *opts = rhs.strip().split(":")
        if name not in MIXABLE:
            raise ValueError(f"rule {part!r}: method {name!r} cannot be mixed per layer; "
                             f"choose from {', '.join(MIXABLE)}")
        bits = levels = None
        if name == "laq":
            try:
                bits = int(opts[0]) if opts else 3
            except ValueError:
                raise ValueError(f"rule {part!r}: bits must be an integer, got {opts[0]!r}") from None
            if not 2 <= bits <= 8:
                raise ValueError(f"rule {part!r}: bits must be in 2..8, got {bits}")
            levels = opts[1] if len(opts) > 1 else "linear"
            if levels not in ("linear", "log") or len(opts) > 2:
                raise ValueError(f"rule {part!r}: expected laq[:BITS[:linear|log]]")
        elif opts:
            raise ValueError(f"rule {part!r}: only laq takes :BITS[:LEVELS]")
        rules.append(LayerRule(pattern.strip(), name, bits, levels))
    if not rules:
        raise ValueError("expected at least one PATTERN=METHOD rule")
    return rules


def resolve_layers(method: str, names: list[str], *, bits: int | None = None,
                   levels: str | None = None, layer_methods: str | None = None
                   ) -> dict[str, LayerSpec]:
    """Choose each quantizable layer's quantization.

    Args:
        method: the run's method name.
        names: quantizable parameter names in forward order.
        bits, levels: the run's ``laq`` options.
        layer_methods: the ``mixed`` rules.

    Returns:
        {name: LayerSpec} for every name.

    Raises:
        ValueError: a ``mixed`` layer matched no rule (naming it).
    """
    m = get_method(method)
    if m.weights != "mixed":
        return {name: LayerSpec(m, bits, levels) for name in names}
    rules = parse_layer_methods(layer_methods or "")
    specs = {}
    for i, name in enumerate(names):
        aliases = {"@first"} if i == 0 else set()
        if i == len(names) - 1:
            aliases.add("@last")
        rule = next((r for r in rules if r.pattern in aliases or fnmatch.fnmatchcase(name, r.pattern)),
                    None)
        if rule is None:
            raise ValueError(f"layer_methods: layer {name!r} matches no rule in {layer_methods!r} "
                             "(end with '*=METHOD' to cover the rest)")
        specs[name] = LayerSpec(METHODS[rule.method], rule.bits, rule.levels)
    return specs
