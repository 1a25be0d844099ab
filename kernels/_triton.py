"""Triton, when it is installed, and what the launchers of every op share.

Importing this module never fails: without triton, `jit` leaves functions undecorated and the
public ops refuse ``backend="triton"`` before a launcher runs (`_backend.select_impl`).

Where kernels run: ``@triton.jit`` decides, when it decorates a kernel at import, between compiled
code (CUDA tensors) and Triton's interpreter (numpy, one program after another), which it picks
when ``TRITON_INTERPRET=1`` is set. On a machine without a GPU, set it before importing `kernels`
(the test suite's conftest does); a CPU tensor given to a compiled kernel is refused with that
advice (`check_launch`).

Two workarounds shared by the kernels:

- `store_cast` rounds float32 to bfloat16 with integer operations. ``x.to(tl.bfloat16)`` rounds to
  nearest even when compiled, but Triton 3.9's interpreter truncates (and its ``"rtne"`` mode
  forgets the carry into the exponent), so the interpreter disagreed with torch on about half of
  all values. The integer form is torch's own rounding, exact in both modes.
- Decisions that must agree bit for bit with the torch reference (a level chosen from ``w / alpha``)
  use ``tl.div_rn`` (correctly rounded; plain ``/`` is approximate on the GPU) and are launched with
  ``enable_fp_fusion=False`` (no fused multiply-add contracting ``|u|*k + 0.5`` into one rounding).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the `gpu` extra is optional; the torch reference still works
    triton = None
    tl = None

# Denominators are sums of positive d, 0 only for an empty selection whose numerator is 0 too;
# the smallest normal float32 turns 0/0 into 0, as `_common.TINY` does for the reference.
TINY = 1.1754943508222875e-38
# The same value as a Triton constant: kernels may read only constexpr globals.
TINY_C = tl.constexpr(TINY) if tl is not None else TINY
# Tiles of the compiled kernels: 4096 elements (16 per thread at 8 warps: 128-bit loads), or 1024
# when no group is longer; two sizes only, since every size is one more compilation. The
# interpreter costs per tile, not per element, but the tests use a few thousand elements and should
# cross tile and program boundaries, so it uses smaller tiles (any power of two from 128) and
# fewer programs.
MAX_BLOCK = {"cuda": 4096, "cpu": 1024}
PROGRAMS_PER_SM = 8
# Partials one program reduces in a single block: a group gets at most this many programs.
MAX_PARTIALS = 1024


def jit(fn=None, **options):
    """``triton.jit`` (with its ``options``) when triton is installed; else ``fn`` undecorated.

    Loop counts such as ``tiles_per_program`` go in ``do_not_specialize``: Triton would otherwise
    compile one variant for 1, one for multiples of 16 and one for the rest, for nothing.
    """
    if fn is None:
        return functools.partial(jit, **options)
    return fn if triton is None else triton.jit(fn, **options)


def check_launch(op: str, kernel, tensors: Sequence[torch.Tensor]) -> torch.device:
    """Check that ``kernel`` can run on the tensors' one device, and return that device.

    Raises:
        ValueError: the tensors live on more than one device, or on a device that is neither CPU
            nor CUDA.
        RuntimeError: CPU tensors, but the kernel was compiled (``TRITON_INTERPRET`` was not set to
            1 before `kernels` was imported).
    """
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ValueError(f"{op}: expected tensors on one device, got {sorted(map(str, devices))}")
    device = devices.pop()
    interpreted = type(kernel).__name__ == "InterpretedFunction"
    if device.type == "cpu" and not interpreted:
        raise RuntimeError(f"{op}: backend='triton' on CPU tensors runs Triton's interpreter: set "
                           "TRITON_INTERPRET=1 before importing kernels, or use a CUDA device")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"{op}: backend='triton' needs CUDA (or CPU) tensors, got {device}")
    return device


@functools.cache
def _multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def target_programs(device: torch.device) -> int:
    """How many programs a launch should have to fill ``device``: 8 per SM, or 4 interpreted."""
    if device.type == "cuda":
        return PROGRAMS_PER_SM * _multiprocessors(device.index or 0)
    return 4


def block_size(longest: int, device: torch.device) -> int:
    """Tile length for groups of at most ``longest`` elements (see `MAX_BLOCK`)."""
    if device.type == "cuda":
        return 1024 if longest <= 1024 else MAX_BLOCK["cuda"]
    return max(128, min(MAX_BLOCK["cpu"], triton.next_power_of_2(max(longest, 1))))


def num_warps(block: int) -> int:
    """Warps for a tile of ``block`` elements: 8 at 4096, fewer for small tiles."""
    return max(1, min(8, block // 512))


def cdiv(a: int, b: int) -> int:
    return -(a // -b)


def device_table(rows: Sequence[Sequence[int]], dtype: torch.dtype,
                 device: torch.device) -> torch.Tensor:
    """A small host-built table (pointers, sizes) on ``device``, copied without a device sync.

    On CUDA the rows go through pinned memory, so the copy is asynchronous; torch's caching host
    allocator keeps the pinned buffer alive until the copy has run.
    """
    host = torch.tensor(rows, dtype=dtype)
    if device.type != "cuda":
        return host
    return host.pin_memory().to(device, non_blocking=True)


def row_view(x: torch.Tensor, rows: int) -> torch.Tensor:
    """The contiguous ``(rows, numel // rows)`` view of ``x``; a copy when ``x`` is not contiguous.

    The kernels index rows as ``row * n + i``, so they need this layout; copying a strided input is
    the one correct choice short of passing strides, and costs one extra pass over it.
    """
    return x.reshape(rows, math.prod(x.shape) // rows if rows else 0).contiguous()


# %% Shared device functions

@jit
def bit_or(a, b):
    """Combine function of ``tl.reduce``: packs distinct bits into one word."""
    return a | b


@jit
def store_cast(ptr, x, mask, DTYPE: tl.constexpr):
    """Store float32 ``x`` as ``DTYPE``, rounding to nearest even (see the module docstring)."""
    if DTYPE == tl.bfloat16:  # noqa: SIM300 (DTYPE is a compile-time parameter, not a constant)
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16  # torch's round_to_nearest_even
        tl.store(ptr, bits.to(tl.uint16).to(tl.bfloat16, bitcast=True), mask=mask)
    else:
        tl.store(ptr, x.to(DTYPE), mask=mask)


def tl_dtype(dtype: torch.dtype):
    """The Triton element type of a float torch dtype (for pointer casts and ``store_cast``)."""
    return {torch.float32: tl.float32, torch.float16: tl.float16,
            torch.bfloat16: tl.bfloat16}[dtype]
