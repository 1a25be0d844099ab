"""Packed linear layers: ``y = x @ (scale[:, None] * lut[codes]).T + bias`` from bit-packed codes.

Layout (`pack_rows`): each output row of ``codes`` (``(out, in)`` integers in ``[0, 2**bits)``) is
a dense bitstream of ``row_bytes = ceil(in * bits / 8)`` bytes; code j occupies bits
``[j * bits, (j + 1) * bits)`` of the row, least significant bit first, so a code may straddle two
bytes (3, 5, 6, 7 bits). Rows start on a byte; the padding bits are zero. For ``bits=1`` a row is
`pack_bits`' layout of that row (bit 1 = +1): binary weights use ``lut = [-1, +1]``, ternary ones
2-bit codes with ``lut = [-1, 0, +1, 0]``, m-bit ones their level set; ``scale`` is per output row.

Backends of `packed_linear` (none of the fast ones builds the float weight matrix):

``"torch"``   the reference: unpack the codes, ``scale * lut[codes]``, one matmul
``"cpp"``     C++ extension (`kernels/csrc/packed_matmul.cpp`, built on first use by `_cpp`):
              bits 1 and 2 take the table-lookup path (the 2^IDX partial sums of each group of
              inputs are tabulated once per call, then each row is ``in * bits / IDX`` table reads
              and adds); bits 3..8 decode one row at a time into a float buffer and take its dot
              products with the batch. Threads: ``torch.get_num_threads()``.
``"triton"``  CUDA, or CPU tensors under ``TRITON_INTERPRET=1``: one program per block of output
              rows and batch rows, codes shifted and masked out of the loaded bytes, fp32 ``dot``
``"auto"``    Triton for CUDA tensors; on CPU the C++ path when it builds, else torch after one
              warning that says why
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import torch

from ._backend import select_impl
from ._cpp import ExtensionBuildError, load_extension
from ._triton import cdiv, check_launch, jit, tl

__all__ = ["PACKED_BACKENDS", "cpp_available", "pack_rows", "packed_linear", "unpack_rows"]

PACKED_BACKENDS = ("auto", "torch", "cpp", "triton")
# Bits with a table-lookup path in the C++ kernel; others take its decode-a-row path.
CPP_LUT_BITS = (1, 2)
# Bits with the AVX-512 path (16-entry tables looked up 16 rows at a time), where the CPU has it.
SIMD_BITS = (1, 2, 4)
# Table index width of the C++ table path by batch size: a byte (8 inputs per table at 1 bit) while
# one batch row's tables fit in cache, a nibble (16-entry tables) for the wider tables of a batch.
_CPP_SOURCE = Path(__file__).parent / "csrc" / "packed_matmul.cpp"


def _idx_bits(batch: int) -> int:
    return 8 if batch <= 1 else 4


# %% Validation

def _check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"bits: expected an int in [1, 8], got {bits!r}")
    return bits


def _check_packed(packed, bits: int, in_features) -> None:
    if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features < 0:
        raise ValueError(f"in_features: expected an int >= 0, got {in_features!r}")
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8 or packed.dim() != 2:
        got = (f"{packed.dtype} of shape {tuple(packed.shape)}" if isinstance(packed, torch.Tensor)
               else type(packed).__name__)
        raise ValueError(f"packed: expected a 2-D torch.uint8 tensor (out, row_bytes), got {got}")
    row_bytes = cdiv(in_features * bits, 8)
    if packed.shape[1] != row_bytes:
        raise ValueError(f"packed: expected row_bytes = ceil(in_features * bits / 8) = "
                         f"ceil({in_features} * {bits} / 8) = {row_bytes}, got shape "
                         f"{tuple(packed.shape)}")


def _check_vector(name: str, t, n: int, bits: int, out: int) -> None:
    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() != 1 \
            or t.shape[0] != n:
        got = (f"{t.dtype} of shape {tuple(t.shape)}" if isinstance(t, torch.Tensor)
               else type(t).__name__)
        raise ValueError(f"{name}: expected a float tensor of shape ({n},) for bits={bits}, "
                         f"out={out}, got {got}")


def check_weights(packed, bits, in_features, lut, scale) -> int:
    """`packed_linear`'s checks of a layer's constant operands (what a caller that keeps them can
    run once); returns ``bits``. Raises ValueError naming the operand that does not fit."""
    bits = _check_bits(bits)
    _check_packed(packed, bits, in_features)
    out = packed.shape[0]
    _check_vector("lut", lut, 2**bits, bits, out)
    _check_vector("scale", scale, out, bits, out)
    return bits


# %% Packing

def pack_rows(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack each row of ``codes`` into a dense bitstream of ``bits`` bits per code.

    Args:
        codes: ``(out, in)`` integer tensor with values in ``[0, 2**bits)``.
        bits: bits per code, in [1, 8].

    Returns:
        ``(out, ceil(in * bits / 8))`` uint8 on ``codes``' device: code j of a row is bits
        ``[j * bits, (j + 1) * bits)`` of its bytes, least significant bit first; padding is 0.

    Raises:
        ValueError: ``bits`` outside [1, 8]; ``codes`` not a 2-D integer tensor; a code out of
            range.

    Example:
        >>> pack_rows(torch.tensor([[1, 0, 3], [2, 2, 0]], dtype=torch.uint8), bits=2)
        tensor([[49],
                [10]], dtype=torch.uint8)
    """
    bits = _check_bits(bits)
    if (not isinstance(codes, torch.Tensor) or codes.dim() != 2 or codes.is_floating_point()
            or codes.is_complex() or codes.dtype == torch.bool):
        got = (f"{codes.dtype} of shape {tuple(codes.shape)}" if isinstance(codes, torch.Tensor)
               else type(codes).__name__)
        raise ValueError(f"codes: expected a 2-D integer tensor (out, in), got {got}")
    out, n = codes.shape
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= 2**bits):
        raise ValueError(f"codes: expected values in [0, {2**bits}) for bits={bits}, got "
                         f"[{int(codes.min())}, {int(codes.max())}]")
    row_bytes = cdiv(n * bits, 8)
    c = codes.to(torch.int32)
    shifts = torch.arange(bits, dtype=torch.int32, device=codes.device)
    stream = ((c[:, :, None] >> shifts) & 1).reshape(out, n * bits)  # (out, in * bits) LSB first
    stream = torch.nn.functional.pad(stream, (0, row_bytes * 8 - n * bits))
    weights = 1 << torch.arange(8, dtype=torch.int32, device=codes.device)
    return (stream.reshape(out, row_bytes, 8) * weights).sum(dim=2).to(torch.uint8)


def unpack_rows(packed: torch.Tensor, bits: int, in_features: int) -> torch.Tensor:
    """The codes `pack_rows` packed: the exact inverse.

    Args:
        packed: ``(out, ceil(in_features * bits / 8))`` uint8.
        bits: bits per code, in [1, 8].
        in_features: codes per row.

    Returns:
        ``(out, in_features)`` uint8 codes on ``packed``'s device.

    Raises:
        ValueError: ``bits`` outside [1, 8]; ``packed`` not 2-D uint8 or of the wrong row length.
    """
    bits = _check_bits(bits)
    _check_packed(packed, bits, in_features)
    out = packed.shape[0]
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    stream = ((packed[:, :, None] >> shifts) & 1).reshape(out, packed.shape[1] * 8)
    stream = stream[:, : in_features * bits].reshape(out, in_features, bits).to(torch.int32)
    weights = 1 << torch.arange(bits, dtype=torch.int32, device=packed.device)
    return (stream * weights).sum(dim=2).to(torch.uint8)


# %% PyTorch reference

def _packed_linear_torch(x, packed, bits, in_features, lut, scale, bias):
    """Reference: ``x (N, in) @ (scale * lut[codes]).T + bias`` in float32, ``(N, out)``."""
    codes = unpack_rows(packed, bits, in_features).long()  # (out, in)
    w = scale[:, None] * lut[codes]  # (out, in) float32
    y = x @ w.T
    return y if bias is None else y + bias


# %% C++ fast path

@functools.cache
def _extension():
    """The compiled extension, or the build error (one attempt per process)."""
    try:
        return load_extension("packed_matmul", [_CPP_SOURCE], required=True)
    except ExtensionBuildError as err:
        return err


def cpp_available() -> bool:
    """Whether the C++ kernel of `packed_linear` builds here (built on the first call, cached)."""
    return not isinstance(_extension(), ExtensionBuildError)


@functools.cache
def _warn_fallback() -> None:
    warnings.warn(f"packed_linear: the C++ CPU kernel is unavailable, so backend='auto' falls back "
                  f"to unpacking the weights and a torch matmul (slower, more memory). Cause: "
                  f"{_extension()}", RuntimeWarning, stacklevel=3)


def _packed_linear_cpp(x, packed, bits, in_features, lut, scale, bias, relu=False):
    ext = _extension()
    if isinstance(ext, ExtensionBuildError):
        raise ext
    # The byte-table paths read whole bytes of codes: pad x with zeros (the AVX-512 path reads x
    # only up to in_features). The extension makes every operand contiguous float32 itself.
    simd = ext.simd and bits in SIMD_BITS
    if not simd:
        width = packed.shape[1] * 8 // bits if bits in CPP_LUT_BITS else in_features
        if width != in_features:
            x = torch.nn.functional.pad(x, (0, width - in_features))
    return ext.packed_linear(x, packed, bits, in_features, lut, scale, bias,
                             0 if simd else _idx_bits(x.shape[0]), relu)


# %% Triton fast path
#
# Bytes: the packed weight (out * in * bits / 8) plus x and y; per weight the kernel loads the byte
# (two when the code straddles bytes) that holds its code, shifts and masks the code out, looks its
# value up in the 2^bits-entry lut, and multiplies with x in a tl.dot over a (BLOCK_N, BLOCK_K) x
# (BLOCK_K, BLOCK_O) tile. Accumulation is fp32 (input_precision="ieee": no tf32 rounding of x).

@jit
def _packed_linear_kernel(
    # pointers: x (N, K) float32, packed (O, row_bytes) uint8, lut (2^BITS,), scale (O,),
    # bias (O,) (unused without HAS_BIAS), y (N, O) float32; all contiguous
    x_ptr, packed_ptr, lut_ptr, scale_ptr, bias_ptr, y_ptr,
    # sizes
    N, K, O, row_bytes,
    # meta-parameters
    BITS: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_o = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # batch rows (BLOCK_N,)
    outs = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)  # output features (BLOCK_O,)
    ks = tl.arange(0, BLOCK_K)
    row_ok = rows < N
    out_ok = outs < O
    acc = tl.zeros((BLOCK_N, BLOCK_O), dtype=tl.float32)  # fp32 accumulator
    for k0 in range(0, K, BLOCK_K):
        k = k0 + ks  # (BLOCK_K,)
        k_ok = k < K
        xt = tl.load(x_ptr + rows[:, None].to(tl.int64) * K + k[None, :],
                     mask=row_ok[:, None] & k_ok[None, :], other=0.0)  # (BLOCK_N, BLOCK_K)
        bit = k * BITS  # first bit of code k in its row
        byte = bit // 8
        shift = bit % 8
        base = packed_ptr + outs[None, :].to(tl.int64) * row_bytes  # (1, BLOCK_O)
        ok = k_ok[:, None] & out_ok[None, :]  # (BLOCK_K, BLOCK_O)
        lo = tl.load(base + byte[:, None], mask=ok, other=0).to(tl.int32)
        # A code straddles into the next byte when shift + BITS > 8 (never for 1, 2, 4, 8 bits).
        hi = tl.load(base + byte[:, None] + 1, mask=ok & (byte[:, None] + 1 < row_bytes),
                     other=0).to(tl.int32)
        code = ((lo | (hi << 8)) >> shift[:, None]) & ((1 << BITS) - 1)  # (BLOCK_K, BLOCK_O)
        w = tl.load(lut_ptr + code, mask=ok, other=0.0)  # lut values, 0 outside the matrix
        acc += tl.dot(xt, w, input_precision="ieee")
    scale = tl.load(scale_ptr + outs, mask=out_ok, other=0.0)
    y = acc * scale[None, :]
    if HAS_BIAS:
        y += tl.load(bias_ptr + outs, mask=out_ok, other=0.0)[None, :]
    tl.store(y_ptr + rows[:, None].to(tl.int64) * O + outs[None, :], y,
             mask=row_ok[:, None] & out_ok[None, :])


def _packed_linear_triton(x, packed, bits, in_features, lut, scale, bias):
    device = check_launch("packed_linear", _packed_linear_kernel,
                          [x, packed, lut, scale] + ([] if bias is None else [bias]))
    n, o = x.shape[0], packed.shape[0]
    y = torch.empty(n, o, dtype=torch.float32, device=device)
    if n == 0 or o == 0:
        return y
    if in_features == 0:
        return y.copy_((bias if bias is not None else scale.new_zeros(o)).expand(n, o))
    block_n = 16 if n <= 16 else 32  # tl.dot needs every dimension >= 16
    block_o, block_k = (64, 64) if device.type == "cuda" else (32, 32)
    grid = (cdiv(o, block_o), cdiv(n, block_n))
    _packed_linear_kernel[grid](
        x.contiguous(), packed.contiguous(), lut.contiguous(), scale.contiguous(),
        scale if bias is None else bias.contiguous(), y,
        n, in_features, o, packed.shape[1],
        BITS=bits, HAS_BIAS=bias is not None, BLOCK_N=block_n, BLOCK_O=block_o, BLOCK_K=block_k,
        num_warps=4)
    return y


# %% Public op

def packed_linear(x: torch.Tensor, packed: torch.Tensor, bits: int, in_features: int,
                  lut: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None, *,
                  backend: str = "auto", relu: bool = False) -> torch.Tensor:
    """A linear layer whose weight is ``scale[:, None] * lut[codes]``, codes packed by `pack_rows`.

    Computes ``y = x @ (scale[:, None] * lut[codes]).T + bias`` in float32, then ``relu(y)`` with
    ``relu`` (in the C++ kernel's epilogue: one call for a Linear -> ReLU pair).

    Args:
        x: ``(..., in_features)`` float tensor (computed in float32).
        packed: ``(out, ceil(in_features * bits / 8))`` uint8, `pack_rows`' layout.
        bits: bits per code, in [1, 8]. The C++ kernel has table-lookup fast paths for 1 and 2
            bits (`CPP_LUT_BITS`) and a decode-one-row path for 3..8.
        in_features: codes per row (x's last size).
        lut: ``(2**bits,)`` float32: the value of each code before scaling (``[-1, +1]`` for
            binary weights, ``[-1, 0, +1, 0]`` for ternary ones).
        scale: ``(out,)`` float32 per output row.
        bias: ``(out,)`` float, or None.
        backend: ``"auto"``, ``"torch"``, ``"cpp"`` or ``"triton"`` (module docstring).
        relu: apply ``torch.relu`` to the result.

    Returns:
        ``(..., out)`` tensor of x's dtype on x's device.

    Raises:
        ValueError: a bad dtype, shape, ``bits``, ``lut`` length or ``backend``.
        ExtensionBuildError: ``backend="cpp"`` and the C++ kernel cannot be built.
        RuntimeError, NotImplementedError: ``backend="triton"`` where Triton cannot run.

    Example:
        >>> codes = torch.tensor([[1, 0, 1], [0, 0, 1]], dtype=torch.uint8)  # signs +-+, --+
        >>> packed_linear(torch.tensor([[1.0, 2.0, 3.0]]), pack_rows(codes, 1), 1, 3,
        ...               torch.tensor([-1.0, 1.0]), torch.tensor([0.5, 2.0]), backend="torch")
        tensor([[1., 0.]])
    """
    if backend not in PACKED_BACKENDS:
        raise ValueError(f"backend: expected one of {PACKED_BACKENDS}, got {backend!r}")
    bits = check_weights(packed, bits, in_features, lut, scale)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() == 0 \
            or x.shape[-1] != in_features:
        got = (f"{x.dtype} of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor)
               else type(x).__name__)
        raise ValueError(f"x: expected a float tensor (..., {in_features}), got {got}")
    out = packed.shape[0]
    if bias is not None:
        _check_vector("bias", bias, out, bits, out)
    flat = x.dim() == 2  # the common case skips two reshapes (a layer call is a few us)
    x2 = x if flat else x.reshape(-1, in_features)
    if backend == "cpp" or (backend == "auto" and x.device.type == "cpu"):
        if x.device.type != "cpu":
            raise ValueError(f"packed_linear: backend='cpp' needs CPU tensors, got {x.device}")
        if backend == "cpp" or cpp_available():
            y = _packed_linear_cpp(x2, packed, bits, in_features, lut, scale, bias, bool(relu))
            if x.dtype != torch.float32:
                y = y.to(x.dtype)
            return y if flat else y.reshape(*x.shape[:-1], out)
        _warn_fallback()
        impl = _packed_linear_torch
    else:
        impl = select_impl("packed_linear", backend, x, torch_impl=_packed_linear_torch,
                           triton_impl=_packed_linear_triton)
    y = impl(x2.float(), packed, bits, in_features, lut.float(), scale.float(),
             None if bias is None else bias.float())
    if relu:
        y = torch.relu(y)
    return y.to(x.dtype).reshape(*x.shape[:-1], out)
