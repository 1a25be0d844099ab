"""Fold inference-mode batch normalisation into the layer before it.

In eval mode ``BN(z) = k * (z - mean) + beta`` with ``k = gamma / sqrt(var + eps)``, per output
feature. When ``z`` is a linear layer's output, that is the same layer with its output rows scaled
by ``k`` and bias ``k * (bias - mean) + beta``: one layer where there were two, as every deployment
toolchain does before inference. For a packed layer (`bench.deploy.PackedLinear`) the row scale
of its codes absorbs ``k`` (the codes, and so the file's bits, are unchanged); for float
``nn.Linear`` / ``nn.Conv2d`` it is `torch.nn.utils.fusion`'s fold.

The folded network computes the same function up to float rounding (the products are formed in
another order), so a prediction on a near tie can change: `bench.deploy_bench` measures each
folded model's test metric instead of assuming it.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU()).eval()
    >>> net[1].running_mean.uniform_(-1, 1); net[1].running_var.uniform_(0.5, 2)  # doctest: +ELLIPSIS
    tensor(...)
    tensor(...)
    >>> folded = fold_batchnorm(net)
    >>> x = torch.randn(5, 3)
    >>> [type(m).__name__ for m in folded.modules() if not isinstance(m, torch.fx.GraphModule)]
    ['Linear', 'ReLU']
    >>> torch.allclose(folded(x), net(x), atol=1e-6)
    True
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from bench.deploy import PackedLinear, PackedLSTM, PackedMatrix

__all__ = ["fold_batchnorm"]

_LEAVES = (PackedLinear, PackedLSTM, PackedMatrix)


class _Tracer(fx.Tracer):
    """torch.fx's tracer, keeping labbench's packed modules whole (their kernels are not
    traceable, and a fold needs the module, not what it calls)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _LEAVES) or super().is_leaf_module(m, qualname)


def _bn_factors(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(k, shift) with BN(z) = k * z + shift in eval mode, in float64 then float32."""
    var, mean = bn.running_var.double(), bn.running_mean.double()
    k = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        k = k * bn.weight.double()
    shift = -mean * k + (bn.bias.double() if bn.bias is not None else 0.0)
    return k, shift


def _fold_packed(layer: PackedLinear, bn: nn.modules.batchnorm._BatchNorm) -> PackedLinear:
    k, shift = _bn_factors(bn)
    m = layer.matrix
    scale = (m.scale.double() * k).float()
    bias = ((layer.bias.double() * k if layer.bias is not None else 0.0) + shift).float()
    matrix = PackedMatrix(m.codes, scale, m.lut, m.bits, m.in_features, m.backend)
    return PackedLinear(matrix, bias)


def _fold(layer: nn.Module, bn: nn.Module) -> nn.Module | None:
    """``layer`` with ``bn`` folded in, or None where it cannot be (BN without running
    statistics, or a feature count that does not match the layer's outputs)."""
    if not isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)) or not bn.track_running_stats \
            or bn.running_mean is None:
        return None
    if isinstance(layer, PackedLinear) and isinstance(bn, nn.BatchNorm1d) \
            and layer.out_features == bn.num_features:
        return _fold_packed(layer, bn)
    if type(layer) is nn.Linear and isinstance(bn, nn.BatchNorm1d) \
            and layer.out_features == bn.num_features:
        return fuse_linear_bn_eval(layer, bn)
    if type(layer) is nn.Conv2d and isinstance(bn, nn.BatchNorm2d) \
            and layer.out_channels == bn.num_features:
        return fuse_conv_bn_eval(layer, bn)
    return None


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> fx.GraphModule:
    """A copy of ``model`` for inference, with each batch norm that directly follows a linear
    layer folded into it.

    Folded: ``nn.Linear`` or `bench.deploy.PackedLinear` followed by ``nn.BatchNorm1d``, and
    ``nn.Conv2d`` followed by ``nn.BatchNorm2d``, where the layer's output feeds only the norm.
    Every other module stays as it is (a norm after a pooling layer, say). ``model`` is not
    changed.

    Args:
        model: the network (put in eval mode: folding uses the running statistics).

    Returns:
        A ``torch.fx.GraphModule`` in eval mode computing the same function up to float rounding;
        ``folded_batchnorms`` lists the norms folded away (by their names in ``model``).

    Raises:
        TypeError: ``model`` cannot be traced by ``torch.fx`` (data-dependent control flow).
    """
    model = copy.deepcopy(model).eval()
    try:
        graph_module = fx.GraphModule(model, _Tracer().trace(model))
    except Exception as err:  # fx raises several types for untraceable code
        raise TypeError(f"fold_batchnorm: cannot trace {type(model).__name__} with torch.fx "
                        f"({type(err).__name__}: {err}); fold its layers by hand") from err
    modules = dict(graph_module.named_modules())
    folded = []
    for node in list(graph_module.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], nn.modules.batchnorm._BatchNorm):
            continue
        source = node.args[0]
        if not isinstance(source, fx.Node) or source.op != "call_module" or len(source.users) != 1:
            continue
        new = _fold(modules[source.target], modules[node.target])
        if new is None:
            continue
        owner, _, attr = source.target.rpartition(".")
        setattr(graph_module.get_submodule(owner) if owner else graph_module, attr, new)
        node.replace_all_uses_with(source)
        graph_module.graph.erase_node(node)
        folded.append(node.target)
    graph_module.delete_all_unused_submodules()
    graph_module.recompile()
    graph_module.folded_batchnorms = folded
    for name in ("deploy_metadata",):
        if hasattr(model, name):
            setattr(graph_module, name, getattr(model, name))
    return graph_module.eval()
