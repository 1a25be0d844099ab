"""The compiled Triton kernels on a CUDA device against the torch reference (``-m gpu``).

Deselected by default; `scripts/gpu-check.sh` runs them with TRITON_INTERPRET=0. They reuse the
CPU tests' checks, on CUDA tensors and on sizes the interpreter cannot afford: 16M elements, the
1823 x 781 matrix, channel granularity with thousands of rows, all of ResNet-18's weights.
"""

import math

import pytest
import torch

from kernels import fused_adam_lab_step_, pack_bits, prox_binary, prox_binary_multi
from kernels._bench_ops import resnet18_shapes
from tests.kernels._cases import Case
from tests.kernels.test_binary_triton import check_against_reference as check_binary
from tests.kernels.test_fused import STATE_TOL
from tests.kernels.test_mbit_triton import check as check_mbit
from tests.kernels.test_multi import check as check_multi
from tests.kernels.test_ternary_triton import check_common as check_ternary
from tests.kernels.test_ternary_triton import run as run_ternary

pytestmark = pytest.mark.gpu

SHAPES = [(1,), (1023,), (7, 13), (1823, 781), (64, 64, 3, 3), (2**24 + 3,)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def compiled_on_cuda():
    assert torch.cuda.is_available(), "the gpu tests need a CUDA device"
    from kernels.binary import _binary_sums_kernel

    assert type(_binary_sums_kernel).__name__ != "InterpretedFunction", (
        "TRITON_INTERPRET=1 is set: run the gpu tests with TRITON_INTERPRET=0 "
        "(scripts/gpu-check.sh does)")


def case(shape, dtype=torch.float32, granularity="tensor", curvature=True, strided=False):
    gen = torch.Generator(device="cuda").manual_seed(math.prod(shape))
    w = torch.randn(shape, generator=gen, device="cuda")
    w.view(-1)[: min(3, w.numel())] = torch.tensor([0.0, -0.0, 0.5], device="cuda")[: w.numel()]
    d = torch.rand(shape, generator=gen, device="cuda").square() + 1e-8 if curvature else None
    if strided and w.dim() == 2:
        w, d = w.t().contiguous().t(), None if d is None else d.t().contiguous().t()
    return Case(w.to(dtype), d, granularity)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_prox_binary(shape, dtype, granularity):
    if granularity == "channel" and len(shape) == 1 and shape[0] > 2000:
        pytest.skip("one-element channels of a 16M vector: a shape nobody quantizes")
    check_binary(case(shape, dtype, granularity, curvature=dtype == torch.float32))
    check_binary(case(shape, dtype, granularity, strided=True))


def test_auto_picks_triton_for_cuda_tensors():
    c = case((4096,))
    got = prox_binary(c.w, c.d)
    want = prox_binary(c.w, c.d, backend="triton")
    assert all(torch.equal(g, x) for g, x in zip(got, want, strict=True))


SOLVER_CASES = [((7, 13), "tensor"), ((7, 13), "channel"), ((1823, 781), "tensor"),
                ((1823, 781), "channel"), ((2**22 + 1,), "tensor")]


@pytest.mark.parametrize("solver", ["twn", "approx", "exact"])
@pytest.mark.parametrize("shape, granularity", SOLVER_CASES)
def test_prox_ternary(solver, shape, granularity):
    c = case(shape, granularity=granularity)
    got, want = run_ternary(c, solver)
    check_ternary(c, got, want)


@pytest.mark.parametrize("bits", [2, 3, 8])
@pytest.mark.parametrize("shape, granularity", SOLVER_CASES)
def test_prox_mbit_linear(bits, shape, granularity):
    check_mbit(case(shape, granularity=granularity), bits)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.bool, torch.int8])
def test_pack_bits(dtype):
    x = case((2**24 + 5,)).w
    x = x > 0 if dtype == torch.bool else x.to(dtype)
    assert torch.equal(pack_bits(x, backend="triton"), pack_bits(x, backend="torch"))


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_prox_binary_multi_on_resnet18(granularity):
    # The device pointer tables: 21 tensors of 9,408 to 2.4M elements in two launches.
    gen = torch.Generator(device="cuda").manual_seed(0)
    shapes = resnet18_shapes()
    ws = [torch.rand(s, generator=gen, device="cuda") * 2 - 1 for s in shapes]
    ds = [torch.rand(s, generator=gen, device="cuda") * 1e-3 + 1e-8 for s in shapes]
    check_multi(ws, ds, granularity)
    mixed = [w.to(torch.bfloat16) if i % 3 == 0 else w for i, w in enumerate(ws)]
    check_multi(mixed, [None if i % 2 else d for i, d in enumerate(ds)], granularity)
    assert prox_binary_multi(ws)[0][0].is_cuda


@pytest.mark.parametrize("curvature", [True, False], ids=["lab", "bwn"])
def test_fused_adam_lab_step_on_resnet18(curvature):
    gen = torch.Generator(device="cuda").manual_seed(1)
    shapes = resnet18_shapes(width=32)
    grans = ["channel" if i % 2 else "tensor" for i in range(len(shapes))]
    states = {}
    for backend in ("torch", "triton"):
        latents = [torch.rand(s, generator=torch.Generator(device="cuda").manual_seed(2),
                              device="cuda") * 2 - 1 for s in shapes]
        ms, vs = [torch.zeros_like(w) for w in latents], [torch.zeros_like(w) for w in latents]
        gen.manual_seed(1)
        for step in range(1, 4):
            grads = [torch.randn(s, generator=gen, device="cuda") for s in shapes]
            out = fused_adam_lab_step_(latents, grads, ms, vs, steps=[step] * len(shapes), lr=1e-2,
                                       granularity=grans, curvature=curvature, backend=backend)
        states[backend] = (latents, ms, vs, out)
    for got, want in zip(states["triton"][:3], states["torch"][:3], strict=True):
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, **STATE_TOL)
    for a, b in zip(states["triton"][3][1], states["torch"][3][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=0)
    # Signs agree wherever the latent is not within rounding of 0 (2.9M latents move by ~lr per
    # step; a few may sit within an ulp of 0, where either sign is float32 rounding).
    for a, b, w in zip(states["triton"][3][0], states["torch"][3][0], states["torch"][0],
                       strict=True):
        clear = w.abs() > 1e-5
        assert torch.equal(torch.signbit(a)[clear], torch.signbit(b)[clear])
