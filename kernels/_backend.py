"""Backend selection: which implementation of an op runs for a given tensor.

Each op module holds its PyTorch reference (``_<op>_torch``) and, where it has one, a Triton
launcher (``_<op>_triton``) with the same signature. The public op validates its arguments, then asks
`select_impl` for the callable to run. Adding the Triton path to an op is therefore local to its
module: write the kernel and launcher, and pass the launcher as ``triton_impl``.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from typing import TypeVar

import torch

BACKENDS = ("auto", "torch", "triton")

Impl = TypeVar("Impl", bound=Callable)


@functools.cache
def triton_available() -> bool:
    """Whether the ``triton`` package can be imported (looked up once per process)."""
    return importlib.util.find_spec("triton") is not None


def check_backend(backend: str) -> None:
    """Reject a backend name that is not one of `BACKENDS`.

    Raises:
        ValueError: ``backend`` is not one of ``"auto"``, ``"torch"``, ``"triton"``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")


def select_impl(op: str, backend: str, x: torch.Tensor, *, torch_impl: Impl,
                triton_impl: Impl | None = None) -> Impl:
    """Pick the implementation of ``op`` for ``backend`` and the device of ``x``.

    ``"auto"`` picks Triton only when all three hold: the op has a Triton launcher, ``x`` lives on
    a CUDA device, and ``triton`` is importable. Otherwise it picks the torch reference, so
    ``"auto"`` never fails for want of a kernel.

    Args:
        op: the public op's name, used in error messages (``"prox_binary"``).
        backend: ``"auto"``, ``"torch"`` or ``"triton"``.
        x: the op's main input tensor; only its device is read.
        torch_impl: the PyTorch reference implementation.
        triton_impl: the Triton launcher with the same signature, or None where the op has none
            (for these arguments).

    Returns:
        ``torch_impl`` or ``triton_impl``.

    Raises:
        ValueError: unknown ``backend``.
        NotImplementedError: ``backend="triton"`` for an op without a Triton launcher.
        RuntimeError: ``backend="triton"`` but ``triton`` is not installed.
    """
    check_backend(backend)
    if backend == "torch":
        return torch_impl
    if backend == "triton":
        if triton_impl is None:
            raise NotImplementedError(
                f"{op}: no Triton kernel for these arguments; use backend='torch' or 'auto'")
        if not triton_available():
            raise RuntimeError(f"{op}: backend='triton' needs the triton package (pip install "
                               "'labbench[gpu]')")
        return triton_impl
    use_triton = triton_impl is not None and x.is_cuda and triton_available()
    return triton_impl if use_triton else torch_impl
