"""The math of quantization: proximal operators on tensors, a PyTorch reference and a fast path.

Pure functions, no state. Each op minimizes ``sum d*(w_hat - w)^2`` over its quantized set, with
``d`` the diagonal curvature (LAB: ``sqrt(v) + 1e-8``; None means all ones), per tensor
(``granularity="tensor"``) or per slice along dim 0 (``"channel"``). sign(0) = +1 everywhere.

============================  ===================================================================
``prox_binary``               ``alpha * sign(w)``, LAB's closed form (BWN with ``d=None``)
``prox_ternary``              ``alpha * I_delta(w)``: exact (LAT), alternating (LAT-approx), TWN
``prox_mbit``                 ``alpha * b`` on a linear or log m-bit grid (LAQ)
``pack_bits``/``unpack_bits`` 8 signs per byte and back; ``packed_nbytes`` sizes the storage
``pack_rows``/``unpack_rows`` m-bit codes packed row by row (1..8 bits), for packed layers
``packed_linear``             a linear layer from packed codes: torch, C++ (CPU) and Triton paths
``prox_binary_multi``         ``prox_binary`` of a model's weights in a fixed number of launches
``fused_adam_lab_step_``      Adam's step on latent weights and their binarization, in two passes
============================  ===================================================================

Every op takes ``backend="auto" | "torch" | "triton"``: ``"torch"`` is the reference (the ground
truth), ``"triton"`` the fast path, ``"auto"`` Triton for CUDA tensors when the op has a Triton
kernel and triton is installed, torch otherwise. On CPU tensors ``"triton"`` runs Triton's
interpreter, which needs ``TRITON_INTERPRET=1`` set before `kernels` is imported (docs/kernels.md).
"""

from ._backend import BACKENDS
from ._common import GRANULARITIES
from ._levels import compiled
from .binary import prox_binary
from .fused import fused_adam_lab_step_
from .mbit import LEVELS, prox_mbit
from .multi import prox_binary_multi
from .packed_matmul import PACKED_BACKENDS, cpp_available, pack_rows, packed_linear, unpack_rows
from .packing import pack_bits, packed_nbytes, unpack_bits
from .ternary import SOLVERS, prox_ternary

__all__ = [
    "BACKENDS",
    "GRANULARITIES",
    "LEVELS",
    "PACKED_BACKENDS",
    "SOLVERS",
    "compiled",
    "cpp_available",
    "fused_adam_lab_step_",
    "pack_bits",
    "pack_rows",
    "packed_linear",
    "packed_nbytes",
    "prox_binary",
    "prox_binary_multi",
    "prox_mbit",
    "prox_ternary",
    "unpack_bits",
    "unpack_rows",
]
