"""prox_mbit's Triton path (linear levels) against the torch reference (interpreter on CPU).

Exactness where it is defined: for the alpha the kernel returned, every level must be the
reference's rounding of w / alpha (`kernels.mbit._quantize`, the same float32 operations); alpha
agrees with the reference's to float32 rounding.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import prox_mbit
from kernels.mbit import _quantize
from tests.kernels._cases import Case, assert_scales_close, cases, scale_view
from tests.kernels._truth import random_problem

BITS = (2, 3, 4, 8)


def check(case: Case, bits: int, init: torch.Tensor | None = None) -> None:
    kwargs = {"bits": bits, "granularity": case.granularity, "init": init}
    w_hat, alpha = prox_mbit(case.w, case.d, backend="triton", **kwargs)
    want_hat, want_alpha = prox_mbit(case.w, case.d, backend="torch", **kwargs)
    assert w_hat.shape == case.w.shape and w_hat.dtype == case.w.dtype
    assert_scales_close(alpha, want_alpha)
    k = 2 ** (bits - 1) - 1
    scale = scale_view(alpha, case.w, case.granularity)
    b = _quantize(case.w.float() / scale.clamp_min(torch.finfo(torch.float32).tiny), k, "linear")
    assert torch.equal(w_hat, (scale * b).to(w_hat.dtype))
    # Same iterates as the reference: the same level codes.
    want_scale = scale_view(want_alpha, case.w, case.granularity)
    codes = torch.round(w_hat.float() / scale.clamp_min(1e-30) * k)
    want_codes = torch.round(want_hat.float() / want_scale.clamp_min(1e-30) * k)
    assert torch.equal(codes, want_codes)


@settings(max_examples=10)
@given(cases(), st.sampled_from(BITS))
def test_matches_the_reference(case, bits):
    check(case, bits)


@settings(max_examples=6)
@given(cases(dtypes=(torch.float32,)), st.sampled_from(BITS))
def test_matches_the_reference_from_a_warm_start(case, bits):
    init, _ = prox_mbit(case.w.float() * 0.9 + 0.01, bits=bits, granularity=case.granularity)
    check(case, bits, init)


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_groups_spanning_several_programs(granularity):
    w, d = random_problem((2, 4500), seed=4)
    check(Case(w, d, granularity), 3)


def test_start_against_the_signs_of_w_falls_back_to_max_abs():
    w = torch.tensor([0.2, -0.8, 0.5])
    init = -w
    got = prox_mbit(w, bits=3, init=init, max_iter=1, backend="triton")
    want = prox_mbit(w, bits=3, init=init, max_iter=1, backend="torch")
    assert torch.equal(got[1], torch.tensor(0.8)) and torch.equal(got[0], want[0])


def test_all_zero_group_one_element_and_empty():
    w = torch.tensor([[0.0, -0.0], [0.3, -0.9]])
    w_hat, alpha = prox_mbit(w, bits=3, granularity="channel", backend="triton")
    assert float(alpha[0]) == 0.0 and not w_hat[0].any()
    w_hat, alpha = prox_mbit(torch.tensor([-0.3]), bits=4, backend="triton")
    assert torch.equal(w_hat, torch.tensor([-0.3])) and torch.equal(alpha, torch.tensor(0.3))
    w_hat, alpha = prox_mbit(torch.empty(0), bits=4, backend="triton")
    assert w_hat.shape == (0,) and alpha.shape == ()


def test_log_levels_have_no_kernel_and_auto_keeps_them_on_torch():
    w = torch.randn(10)
    with pytest.raises(NotImplementedError, match="levels='log' has no Triton kernel"):
        prox_mbit(w, bits=3, levels="log", backend="triton")
    got = prox_mbit(w, bits=3, levels="log", backend="auto")
    want = prox_mbit(w, bits=3, levels="log", backend="torch")
    assert all(torch.equal(g, x) for g, x in zip(got, want, strict=True))
