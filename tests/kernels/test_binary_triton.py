"""prox_binary's Triton path against the torch reference (under the interpreter on CPU)."""

import pytest
import torch
from hypothesis import given, settings

from kernels import prox_binary
from kernels._triton import check_launch
from tests.kernels._cases import Case, assert_scales_close, cases, scale_view
from tests.kernels._truth import random_problem


def check_against_reference(case: Case) -> None:
    w_hat, alpha = prox_binary(case.w, case.d, granularity=case.granularity, backend="triton")
    want_hat, want_alpha = prox_binary(case.w, case.d, granularity=case.granularity,
                                       backend="torch")
    assert w_hat.shape == case.w.shape and w_hat.dtype == case.w.dtype
    assert_scales_close(alpha, want_alpha)
    # Signs exactly, sign(0) = +1; values exactly alpha (rounded once to w's dtype) times them.
    sign = torch.where(case.w >= 0, 1.0, -1.0)
    assert torch.equal(w_hat, (sign * scale_view(alpha, case.w, case.granularity)).to(w_hat.dtype))
    assert torch.equal(torch.sign(w_hat), torch.sign(want_hat))


@settings(max_examples=20)
@given(cases())
def test_matches_the_reference(case):
    check_against_reference(case)


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("curvature", [True, False])
def test_groups_spanning_several_programs_and_tiles(granularity, curvature):
    # 2 rows of 4500: 5 interpreter tiles per row, split over 2 programs per row.
    w, d = random_problem((2, 4500), seed=7, curvature=curvature)
    check_against_reference(Case(w, d, granularity))


@pytest.mark.slow
def test_large_awkward_matrix():
    w, d = random_problem((1823, 781), seed=8)
    check_against_reference(Case(w, d, "tensor"))


def test_sign_of_zero_is_plus_and_one_element():
    w = torch.tensor([0.0, -0.0, -1.0, 2.0])
    w_hat, alpha = prox_binary(w, backend="triton")
    assert torch.equal(w_hat, torch.stack([alpha, alpha, -alpha, alpha]))
    w_hat, alpha = prox_binary(torch.tensor([-0.3]), backend="triton")
    assert torch.equal(w_hat, torch.tensor([-0.3])) and torch.equal(alpha, torch.tensor(0.3))


@pytest.mark.parametrize("shape, granularity, scale_shape", [
    ((0,), "tensor", ()), ((0, 3), "channel", (0,)), ((3, 0), "channel", (3,)),
])
def test_empty(shape, granularity, scale_shape):
    w_hat, alpha = prox_binary(torch.empty(shape), granularity=granularity, backend="triton")
    assert w_hat.shape == shape and alpha.shape == scale_shape and not alpha.any()


def test_bfloat16_output_is_alpha_rounded_to_nearest_even():
    # Triton 3.9's interpreter truncates float32 -> bfloat16 casts; the kernels round themselves.
    w = torch.tensor([1.0, -2.0], dtype=torch.bfloat16)
    d = torch.tensor([1.0, 0.0049])  # alpha = (1 + 2 * 0.0049) / 1.0049 = 1.00488...
    w_hat, alpha = prox_binary(w, d, backend="triton")
    truncated = (alpha.view(torch.int32) & -65536).view(torch.float32)  # keep the top 16 bits
    assert truncated.bfloat16() != alpha.bfloat16(), "this alpha must round up in bfloat16"
    assert torch.equal(w_hat, (torch.tensor([1.0, -1.0]) * alpha).bfloat16())


def test_inputs_are_not_modified():
    w, d = random_problem((5, 6), seed=5)
    w0, d0 = w.clone(), d.clone()
    prox_binary(w, d, granularity="channel", backend="triton")
    assert torch.equal(w, w0) and torch.equal(d, d0)


def test_compiled_kernels_refuse_cpu_tensors_with_advice():
    class JITFunction:  # stands for a kernel compiled without TRITON_INTERPRET=1
        pass

    with pytest.raises(RuntimeError, match="set TRITON_INTERPRET=1 before importing kernels"):
        check_launch("prox_binary", JITFunction(), [torch.ones(3)])
    with pytest.raises(ValueError, match="expected tensors on one device"):
        check_launch("prox_binary", JITFunction(), [torch.ones(3), torch.ones(3, device="meta")])
