"""Backend selection, the same for every op: torch on CPU, a clear error for Triton until then."""

import pytest
import torch

from kernels import BACKENDS, pack_bits, prox_binary, prox_mbit, prox_ternary, unpack_bits
from kernels._backend import select_impl

W = torch.tensor([[0.5, -1.0, 0.25], [0.0, 2.0, -0.3]])
OPS = {
    "prox_binary": lambda backend: prox_binary(W, backend=backend),
    "prox_ternary": lambda backend: prox_ternary(W, backend=backend),
    "prox_mbit": lambda backend: prox_mbit(W, bits=3, backend=backend),
    "pack_bits": lambda backend: pack_bits(W, backend=backend),
    "unpack_bits": lambda backend: unpack_bits(pack_bits(W), W.shape, backend=backend),
}


def same(a, b):
    if isinstance(a, tuple):
        return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    return torch.equal(a, b)


@pytest.mark.parametrize("op", OPS)
def test_auto_on_cpu_is_the_torch_reference(op):
    assert same(OPS[op]("auto"), OPS[op]("torch"))


@pytest.mark.parametrize("op", OPS)
def test_triton_is_not_written_yet(op):
    with pytest.raises(NotImplementedError, match=f"{op}: the triton backend comes in a later"):
        OPS[op]("triton")


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
