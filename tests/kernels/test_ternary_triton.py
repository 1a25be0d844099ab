"""prox_ternary's Triton path against the torch reference (under the interpreter on CPU).

Exactness is checked where it is defined: the pattern must be I_delta(w) for the delta the kernel
returned, bit for bit; delta and alpha agree with the reference to float32 rounding (their sums
run in another order).
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import prox_ternary
from tests.kernels._cases import Case, assert_scales_close, cases, scale_view
from tests.kernels._truth import random_problem


def pattern(w: torch.Tensor, delta: torch.Tensor, granularity: str) -> torch.Tensor:
    """I_delta(w) in float32, strict: +1 above delta, -1 below -delta."""
    w32, delta = w.float(), scale_view(delta, w, granularity)
    return torch.where(w32 > delta, 1.0, torch.where(w32 < -delta, -1.0, 0.0))


def twn_scale(w: torch.Tensor, d: torch.Tensor | None, delta: torch.Tensor,
              granularity: str) -> torch.Tensor:
    """TWN's least-squares scale on S = {|w| > delta}, in float64, per group."""
    rows = 1 if granularity == "tensor" else w.shape[0]
    support = pattern(w, delta, granularity).abs().double().reshape(rows, -1)
    a = w.double().abs().reshape(rows, -1)
    d64 = torch.ones_like(a) if d is None else d.double().reshape(rows, -1)
    alpha = (d64 * support * a).sum(1) / (d64 * support).sum(1).clamp_min(1e-300)
    return alpha.float().reshape(delta.shape)


def run(case: Case, solver: str, init: torch.Tensor | None = None):
    kwargs = {"solver": solver, "granularity": case.granularity, "init": init}
    got = prox_ternary(case.w, case.d, backend="triton", **kwargs)
    want = prox_ternary(case.w, case.d, backend="torch", **kwargs)
    return got, want


def check_common(case: Case, got, want) -> None:
    w_hat, alpha, delta = got
    assert w_hat.shape == case.w.shape and w_hat.dtype == case.w.dtype
    assert_scales_close(delta, want[2])
    assert_scales_close(alpha, want[1])
    b = pattern(case.w, delta, case.granularity)
    assert torch.equal(w_hat, (b * scale_view(alpha, case.w, case.granularity)).to(w_hat.dtype))


@settings(max_examples=10)
@given(cases())
def test_twn_matches_the_reference(case):
    got, want = run(case, "twn")
    check_common(case, got, want)
    # alpha is the least-squares scale of the pattern the kernel chose.
    assert_scales_close(got[1], twn_scale(case.w, case.d, got[2], case.granularity))


@settings(max_examples=10)
@given(cases(), st.booleans())
def test_approx_matches_the_reference(case, with_init):
    init = None
    if with_init:  # the previous w_hat: a ternary pattern, zeros included
        init = torch.sign(torch.randn(case.w.shape, generator=torch.Generator().manual_seed(0)))
        init = (init * (torch.rand(case.w.shape) > 0.3)).to(case.w.dtype)
    got, want = run(case, "approx", init)
    check_common(case, got, want)
    assert torch.equal(got[2], got[1] / 2)
    # Same iterates: the pattern agrees with the reference's exactly.
    assert torch.equal(torch.sign(got[0]), torch.sign(want[0]))


@settings(max_examples=8)
@given(cases())
def test_exact_matches_the_reference_exactly(case):
    # The scale comes from the same torch sort; only the threshold pass runs in Triton.
    got, want = run(case, "exact")
    for g, x in zip(got, want, strict=True):
        assert torch.equal(g, x)


@pytest.mark.parametrize("solver", ["twn", "approx", "exact"])
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_groups_spanning_several_programs(solver, granularity):
    w, d = random_problem((2, 4500), seed=3)
    got, want = run(Case(w, d, granularity), solver)
    check_common(Case(w, d, granularity), got, want)


@pytest.mark.parametrize("solver", ["twn", "approx", "exact"])
def test_all_zero_group_and_one_element(solver):
    w = torch.tensor([[0.0, -0.0, 0.0], [0.3, -0.9, 0.0]])
    w_hat, alpha, delta = prox_ternary(w, solver=solver, granularity="channel", backend="triton")
    assert float(alpha[0]) == 0.0 and float(delta[0]) == 0.0 and not w_hat[0].any()
    w_hat, alpha, _ = prox_ternary(torch.tensor([-0.3]), solver=solver, backend="triton")
    assert torch.equal(w_hat, torch.tensor([-0.3])) and torch.equal(alpha, torch.tensor(0.3))


def test_approx_with_an_all_zero_start_falls_back_to_max_abs():
    w = torch.tensor([0.2, -0.8, 0.5])
    got = prox_ternary(w, solver="approx", init=torch.zeros(3), max_iter=1, backend="triton")
    want = prox_ternary(w, solver="approx", init=torch.zeros(3), max_iter=1, backend="torch")
    assert torch.equal(got[1], torch.tensor(0.8)) and torch.equal(got[0], want[0])


@pytest.mark.parametrize("solver", ["twn", "approx", "exact"])
def test_empty(solver):
    w_hat, alpha, delta = prox_ternary(torch.empty(3, 0), solver=solver, granularity="channel",
                                       backend="triton")
    assert w_hat.shape == (3, 0) and alpha.shape == delta.shape == (3,) and not alpha.any()
