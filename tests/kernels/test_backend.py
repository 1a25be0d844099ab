"""Backend selection, the same for every op: torch on CPU with "auto", Triton when asked."""

import pytest
import torch

from kernels import (
    BACKENDS,
    pack_bits,
    prox_binary,
    prox_binary_multi,
    prox_mbit,
    prox_ternary,
    unpack_bits,
)
from kernels._backend import select_impl

W = torch.tensor([[0.5, -1.0, 0.25], [0.0, 2.0, -0.3]])
OPS = {
    "prox_binary": lambda backend: prox_binary(W, backend=backend),
    "prox_ternary": lambda backend: prox_ternary(W, backend=backend),
    "prox_mbit": lambda backend: prox_mbit(W, bits=3, backend=backend),
    "pack_bits": lambda backend: pack_bits(W, backend=backend),
    "unpack_bits": lambda backend: unpack_bits(pack_bits(W), W.shape, backend=backend),
    "prox_binary_multi": lambda backend: prox_binary_multi([W, W[0]], backend=backend),
}
# Ops (or arguments) that stay on torch: "triton" says so instead of silently running torch.
TORCH_ONLY = {
    "unpack_bits": lambda: unpack_bits(pack_bits(W), W.shape, backend="triton"),
    "prox_mbit": lambda: prox_mbit(W, bits=3, levels="log", backend="triton"),
}


def same(a, b):
    if isinstance(a, tuple | list):
        return all(same(x, y) for x, y in zip(a, b, strict=True))
    return torch.equal(a, b)


@pytest.mark.parametrize("op", OPS)
def test_auto_on_cpu_is_the_torch_reference(op):
    assert same(OPS[op]("auto"), OPS[op]("torch"))


@pytest.mark.parametrize("op", sorted(set(OPS) - {"unpack_bits"}))
def test_triton_runs_on_cpu_under_the_interpreter(op):
    # Scales to float32 rounding (another summation order), the rest exactly; the per-op tests
    # compare in depth.
    torch.testing.assert_close(OPS[op]("triton"), OPS[op]("torch"), rtol=1e-6, atol=0)


@pytest.mark.parametrize("op", TORCH_ONLY)
def test_triton_without_a_kernel_says_so(op):
    with pytest.raises(NotImplementedError, match=f"{op}: .*(no Triton kernel|has no Triton kernel)"):
        TORCH_ONLY[op]()


@pytest.mark.parametrize("op", OPS)
def test_unknown_backend_lists_the_choices(op):
    with pytest.raises(ValueError, match=r"backend: expected one of \('auto', 'torch', 'triton'\), "
                                         r"got 'cuda'"):
        OPS[op]("cuda")


def test_auto_picks_triton_only_for_cuda_tensors_of_ops_that_have_a_kernel():
    def reference():
        pass

    def kernel():
        pass

    cpu = torch.ones(2)
    assert BACKENDS == ("auto", "torch", "triton")
    assert select_impl("op", "auto", cpu, torch_impl=reference, triton_impl=kernel) is reference
    assert select_impl("op", "torch", cpu, torch_impl=reference, triton_impl=kernel) is reference
    assert select_impl("op", "triton", cpu, torch_impl=reference, triton_impl=kernel) is kernel
    if torch.cuda.is_available():
        gpu = cpu.cuda()
        assert select_impl("op", "auto", gpu, torch_impl=reference, triton_impl=kernel) is kernel
        assert select_impl("op", "auto", gpu, torch_impl=reference) is reference
