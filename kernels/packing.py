"""Bit packing of binary weights: 8 signs per byte, for storage and for measuring model size.

Layout: element i of the row-major flattened tensor is bit ``i % 8`` (least significant bit first)
of byte ``i // 8``. A value >= 0 (or True) is bit 1 and stands for +1; a negative value (or
False) is bit 0 and stands for -1, so sign(0) = +1 as everywhere in `kernels`. The last byte is
padded with zero bits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ._backend import check_backend, select_impl
from ._triton import MAX_BLOCK, check_launch, jit, num_warps, tl

__all__ = ["pack_bits", "packed_nbytes", "unpack_bits"]

# Dtypes the Triton kernel reads; `pack_bits` keeps other real dtypes (float8, ...) on torch.
TRITON_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
                 torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Signed dtypes that hold -1 exactly: what unpack_bits may return.
UNPACK_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8,
                 torch.int16, torch.int32, torch.int64)


def packed_nbytes(numel: int, bits: int = 1) -> int:
    """Bytes needed to store ``numel`` values of ``bits`` bits each, packed densely.

    Args:
        numel: number of values, >= 0.
        bits: bits per value, in [1, 8].

    Returns:
        ``ceil(numel * bits / 8)``.

    Raises:
        ValueError: ``numel`` < 0 or ``bits`` outside [1, 8].

    Example:
        >>> packed_nbytes(9), packed_nbytes(9, bits=3)
        (2, 4)
    """
    if isinstance(numel, bool) or not isinstance(numel, int) or numel < 0:
        raise ValueError(f"numel: expected an int >= 0, got {numel!r}")
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"bits: expected an int in [1, 8], got {bits!r}")
    return (numel * bits + 7) // 8


# %% PyTorch reference

def _pack_bits_torch(signs: torch.Tensor) -> torch.Tensor:
    """Reference implementation of `pack_bits`."""
    flat = signs.reshape(-1)  # (n,) row-major, a copy if signs is not contiguous
    bits = (flat if flat.dtype == torch.bool else flat >= 0).to(torch.uint8)  # (n,) in {0, 1}
    pad = -bits.numel() % 8
    bits = torch.cat([bits, bits.new_zeros(pad)]).reshape(-1, 8)  # (nbytes, 8)
    shifts = torch.arange(8, dtype=torch.uint8, device=bits.device)  # bit position of column j
    # Distinct powers of two sum to at most 255, so the uint8 sum cannot overflow.
    return (bits << shifts).sum(dim=1, dtype=torch.uint8)  # (nbytes,)


def _unpack_bits_torch(packed: torch.Tensor, shape: torch.Size,
                       dtype: torch.dtype) -> torch.Tensor:
    """Reference implementation of `unpack_bits`."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits = (packed[:, None] >> shifts) & 1  # (nbytes, 8): column j is bit j
    bits = bits.reshape(-1)[: math.prod(shape)]  # (n,) drop the padding bits
    return (2 * bits.to(dtype) - 1).reshape(shape)


# %% Triton fast path
#
# Bytes: read n elements, write n/8 bytes, the floor. Each program packs BLOCK elements, held as
# (BLOCK // 8, 8): one row of the tile is one output byte.

@jit
def _pack_bits_kernel(
    # pointers: signs (n,), contiguous (bool viewed as uint8); packed (nbytes,) uint8
    signs_ptr, out_ptr,
    # sizes
    n, nbytes,
    # meta-parameters
    IS_BOOL: tl.constexpr, WIDEN: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    rows = tl.arange(0, BLOCK // 8)
    lanes = tl.arange(0, 8)
    offs = pid * BLOCK + rows[:, None] * 8 + lanes[None, :]  # (BLOCK // 8, 8)
    mask = offs < n
    x = tl.load(signs_ptr + offs, mask=mask, other=0)
    if WIDEN:  # float16/bfloat16 to float32, exact (the interpreter compares raw bfloat16 bits)
        x = x.to(tl.float32)
    bit = (x != 0) if IS_BOOL else (x >= 0)  # NaN >= 0 is false: bit 0, as in the reference
    # Distinct bits add without carries, so the sum is their OR (at most 255).
    byte = tl.sum((bit & mask).to(tl.int32) << lanes[None, :], axis=1)  # (BLOCK // 8,)
    index = pid * (BLOCK // 8) + rows
    tl.store(out_ptr + index, byte.to(tl.uint8), mask=index < nbytes)


def _pack_bits_triton(signs: torch.Tensor) -> torch.Tensor:
    """Triton implementation of `pack_bits` (one launch; a strided input is copied first)."""
    device = check_launch("pack_bits", _pack_bits_kernel, [signs])
    flat = signs.reshape(-1).contiguous()  # (n,) row-major
    if flat.dtype == torch.bool:
        flat = flat.view(torch.uint8)
    nbytes = packed_nbytes(flat.numel())
    packed = torch.empty(nbytes, dtype=torch.uint8, device=device)
    if nbytes == 0:
        return packed
    block = MAX_BLOCK["cuda" if device.type == "cuda" else "cpu"]
    grid = (-(flat.numel() // -block),)
    _pack_bits_kernel[grid](flat, packed, flat.numel(), nbytes, IS_BOOL=signs.dtype == torch.bool,
                            WIDEN=signs.dtype in (torch.float16, torch.bfloat16), BLOCK=block,
                            num_warps=num_warps(block))
    return packed


# %% Public ops

def pack_bits(signs: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """Pack the signs of a tensor into bytes, 8 per byte, least significant bit first.

    Args:
        signs: ``(*shape)`` tensor of any real or bool dtype, any layout. An entry >= 0 (or True)
            is stored as 1 (+1), a negative one (or False) as 0 (-1). NaN compares false and is
            stored as 0. Not modified.
        backend: ``"auto"``, ``"torch"`` or ``"triton"``.

    Returns:
        ``(ceil(n / 8),)`` uint8 on ``signs``'s device, n = ``signs.numel()``; element i of the
        row-major flattening is bit ``i % 8`` of byte ``i // 8``.

    Raises:
        TypeError: ``signs`` is not a tensor, or is complex.
        ValueError: unknown ``backend``.
        NotImplementedError: ``backend="triton"`` for a dtype outside `TRITON_DTYPES`.

    Example:
        >>> pack_bits(torch.tensor([1., -1., -1., 1., 1., 1., 1., -1., 1.]))
        tensor([121,   1], dtype=torch.uint8)
    """
    check_backend(backend)
    if not isinstance(signs, torch.Tensor):
        raise TypeError(f"signs: expected a torch.Tensor, got {type(signs).__name__}")
    if signs.is_complex():
        raise TypeError(f"signs: expected a real or bool dtype, got {signs.dtype}")
    triton_impl = _pack_bits_triton if signs.dtype in TRITON_DTYPES else None
    impl = select_impl("pack_bits", backend, signs, torch_impl=_pack_bits_torch,
                       triton_impl=triton_impl)
    return impl(signs)


def unpack_bits(packed: torch.Tensor, shape: Sequence[int] | torch.Size, *,
                dtype: torch.dtype = torch.float32, backend: str = "auto") -> torch.Tensor:
    """Unpack bytes from `pack_bits` into a ±1 tensor.

    Args:
        packed: ``(ceil(n / 8),)`` uint8, as `pack_bits` returns; padding bits are ignored.
        shape: shape of the result, with n = prod(shape) elements.
        dtype: a float or signed integer dtype for the result.
        backend: ``"auto"``, ``"torch"`` or ``"triton"``.

    Returns:
        ``shape`` tensor of ``dtype`` on ``packed``'s device, +1 where the bit is 1, -1 where 0.

    Raises:
        TypeError: ``packed`` is not a uint8 tensor; ``dtype`` cannot hold -1.
        ValueError: ``packed`` is not 1-D or has a length other than ``ceil(n / 8)``; a negative
            size in ``shape``; unknown ``backend``.
        NotImplementedError: ``backend="triton"``: unpacking stays on torch (it runs once per
            saved model, not per step).

    Example:
        >>> unpack_bits(torch.tensor([121, 1], dtype=torch.uint8), (3, 3))
        tensor([[ 1., -1., -1.],
                [ 1.,  1.,  1.],
                [ 1., -1.,  1.]])
    """
    check_backend(backend)
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8:
        got = packed.dtype if isinstance(packed, torch.Tensor) else type(packed).__name__
        raise TypeError(f"packed: expected a torch.uint8 tensor, got {got}")
    if dtype not in UNPACK_DTYPES:
        raise TypeError(f"dtype: expected one of {UNPACK_DTYPES} (they hold -1), got {dtype}")
    shape = torch.Size(shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"shape: expected sizes >= 0, got {tuple(shape)}")
    nbytes = packed_nbytes(math.prod(shape))
    if packed.dim() != 1 or packed.numel() != nbytes:
        raise ValueError(f"packed: expected shape ({nbytes},) for shape {tuple(shape)}, got "
                         f"{tuple(packed.shape)}")
    impl = select_impl("unpack_bits", backend, packed, torch_impl=_unpack_bits_torch)
    return impl(packed, shape, dtype)
