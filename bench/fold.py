"""Prepare a network for inference: fold batch norm into the layer before it, fuse ReLUs.

In eval mode ``BN(z) = k * (z - mean) + beta`` with ``k = gamma / sqrt(var + eps)``, per output
feature. When ``z`` is a linear layer's output, that is the same layer with its output rows scaled
by ``k`` and bias ``k * (bias - mean) + beta``: one layer where there were two, as every deployment
toolchain does before inference. For a packed layer (`bench.deploy.PackedLinear`) the row scale
of its codes absorbs ``k`` (the codes, and so the file's bits, are unchanged); for float
``nn.Linear`` / ``nn.Conv2d`` it is `torch.nn.utils.fusion`'s fold.

A ReLU that follows a linear layer is fused with it: a packed layer applies it in its kernel's
epilogue (one call instead of two), and ``nn.Linear`` becomes ``torch.ao.nn.intrinsic.LinearReLU``,
which PyTorch's dynamic int8 quantization turns into its fused int8 Linear-ReLU.

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
    >>> folded = fuse_for_inference(net)
    >>> x = torch.randn(5, 3)
    >>> folded.folded_batchnorms, folded.fused_relus
    (['1'], ['2'])
    >>> [type(m).__name__ for m in folded.modules() if not isinstance(m, torch.fx.GraphModule)]
    ['LinearReLU', 'Linear', 'ReLU']
    >>> torch.allclose(folded(x), net(x), atol=1e-6)
    True
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.ao.nn.intrinsic import LinearReLU
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from bench.deploy import PackedLinear, PackedLSTM, PackedMatrix

__all__ = ["fuse_for_inference"]

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
    if isinstance(layer, PackedLinear) and not layer.relu and isinstance(bn, nn.BatchNorm1d) \
            and layer.out_features == bn.num_features:
        return _fold_packed(layer, bn)
    if type(layer) is nn.Linear and isinstance(bn, nn.BatchNorm1d) \
            and layer.out_features == bn.num_features:
        return fuse_linear_bn_eval(layer, bn)
    if type(layer) is nn.Conv2d and isinstance(bn, nn.BatchNorm2d) \
            and layer.out_channels == bn.num_features:
        return fuse_conv_bn_eval(layer, bn)
    return None


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return type(modules[node.target]) is nn.ReLU
    if node.op in ("call_function", "call_method"):
        inplace = node.kwargs.get("inplace", False) or (len(node.args) > 1 and node.args[1])
        return node.target in (torch.relu, F.relu, "relu") and not inplace
    return False


def _fuse_relu(layer: nn.Module) -> nn.Module | None:
    """``layer`` followed by a ReLU as one module, or None where there is no fused form."""
    if isinstance(layer, PackedLinear) and not layer.relu:
        return PackedLinear(layer.matrix, layer.bias, relu=True)
    if type(layer) is nn.Linear:
        return LinearReLU(layer, nn.ReLU())
    return None


def _replace_pairs(graph_module: fx.GraphModule, match, merge) -> list[str]:
    """For each node ``match(node)`` accepts whose input is the only use of a module call, put
    ``merge(module, node's module or None)`` in that module's place and drop the node; returns
    the dropped nodes' names (module names for modules)."""
    modules = dict(graph_module.named_modules())
    dropped = []
    for node in list(graph_module.graph.nodes):
        if not match(node, modules):
            continue
        source = node.args[0] if node.args else None
        if not isinstance(source, fx.Node) or source.op != "call_module" or len(source.users) != 1:
            continue
        new = merge(modules[source.target],
                    modules[node.target] if node.op == "call_module" else None)
        if new is None:
            continue
        owner, _, attr = source.target.rpartition(".")
        setattr(graph_module.get_submodule(owner) if owner else graph_module, attr, new)
        modules[source.target] = new
        node.replace_all_uses_with(source)
        graph_module.graph.erase_node(node)
        dropped.append(node.target if node.op == "call_module" else node.name)
    return dropped


@torch.no_grad()
def fuse_for_inference(model: nn.Module, *, relu: bool = True) -> fx.GraphModule:
    """A copy of ``model`` for inference: each batch norm that directly follows a linear layer
    folded into it, then (with ``relu``) each ReLU that directly follows one fused with it.

    Folded: ``nn.Linear`` or `bench.deploy.PackedLinear` followed by ``nn.BatchNorm1d``, and
    ``nn.Conv2d`` followed by ``nn.BatchNorm2d``, where the layer's output feeds only the norm.
    Fused: a ``PackedLinear`` or ``nn.Linear`` (after folding) followed by ``nn.ReLU`` /
    ``torch.relu`` / ``F.relu`` (not in place). Every other module stays as it is (a norm after a
    pooling layer, say). ``model`` is not changed.

    Args:
        model: the network (put in eval mode: folding uses the running statistics).
        relu: also fuse ReLUs.

    Returns:
        A ``torch.fx.GraphModule`` in eval mode computing the same function up to float rounding;
        ``folded_batchnorms`` lists the norms folded away (by their names in ``model``) and
        ``fused_relus`` the ReLUs fused (module names, or fx node names for functions).

    Raises:
        TypeError: ``model`` cannot be traced by ``torch.fx`` (data-dependent control flow).
    """
    model = copy.deepcopy(model).eval()
    try:
        graph_module = fx.GraphModule(model, _Tracer().trace(model))
    except Exception as err:  # fx raises several types for untraceable code
        raise TypeError(f"fuse_for_inference: cannot trace {type(model).__name__} with torch.fx "
                        f"({type(err).__name__}: {err}); fold its layers by hand") from err
    is_norm = lambda node, modules: (node.op == "call_module" and  # noqa: E731
                                     isinstance(modules[node.target], nn.modules.batchnorm._BatchNorm))
    graph_module.folded_batchnorms = _replace_pairs(graph_module, is_norm, _fold)
    graph_module.fused_relus = (_replace_pairs(graph_module, _is_relu, lambda m, _: _fuse_relu(m))
                                if relu else [])
    graph_module.delete_all_unused_submodules()
    graph_module.recompile()
    if hasattr(model, "deploy_metadata"):
        graph_module.deploy_metadata = model.deploy_metadata
    return graph_module.eval()
