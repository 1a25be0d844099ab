"""prox_ternary's three solvers against brute force, each other, TWN's definition and invariants."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from kernels import SOLVERS, prox_ternary
from tests.kernels._truth import assert_attains, brute_force_min, objective, problems, random_problem, scale

TERNARY = (-1.0, 0.0, 1.0)
# Objectives, relative to sum d*w^2. The exact solver ranks candidates by float32 cumulative sums
# of up to n = 12 terms (relative error ~1e-6 at most), so between two candidates within that of
# each other it may pick either; the objectives then differ by less than 1e-5 of sum d*w^2.
OBJ_RTOL = 1e-5
# Scales compared across two float32 computations of the same sums, or against float64.
SCALE_RTOL = 1e-6


def ternary_pattern(w_hat: torch.Tensor) -> torch.Tensor:
    return torch.sign(w_hat)  # w_hat = alpha * b with alpha > 0


@given(problems())
def test_exact_attains_the_brute_force_minimum(problem):
    w, d = problem
    w_hat, alpha, delta = prox_ternary(w, d, solver="exact")
    assert_attains(objective(w, w_hat, d), brute_force_min(w, d, TERNARY), w, d, OBJ_RTOL)
    # w_hat = alpha * I_{alpha/2}(w): nonzero exactly where |w| > delta.
    assert torch.equal(delta, alpha / 2)
    assert torch.equal(w_hat != 0, w.abs() > delta)
    assert torch.equal(w_hat.abs()[w_hat != 0], alpha.expand_as(w)[w_hat != 0])


def test_exact_by_hand():
    # Sorted |w| = 1, 0.9, 0.1, 0: f_j = (sum a)^2 / j = 1, 1.805, 1.3333, 1.0: j* = 2.
    w_hat, alpha, delta = prox_ternary(torch.tensor([1.0, -0.9, 0.1, 0.0]))
    assert float(alpha) == pytest.approx(0.95, rel=1e-7) and float(delta) == pytest.approx(0.475)
    assert torch.equal(torch.sign(w_hat), torch.tensor([1.0, -1.0, 0.0, 0.0]))


def test_exact_beats_the_reference_fallback_on_ties():
    # The reference code (FNN/laq.py: findalpha) considers only j < n with
    # (a_(j) - c_j) * (a_(j+1) - c_j) < 0. With all |w| equal every product is positive, so it falls
    # back to delta = 0.7 * c_n = 0.35, i.e. alpha = 0.7; the optimum keeps every weight at alpha 1.
    w = torch.tensor([1.0, -1.0, 1.0, -1.0])
    w_hat, alpha, _ = prox_ternary(w, solver="exact")
    assert torch.equal(w_hat, w) and float(alpha) == 1.0


@given(problems(), st.booleans(), st.randoms(use_true_random=False))
def test_approx_is_no_better_than_exact_and_a_fixed_point(problem, with_init, rnd):
    w, d = problem
    init = torch.tensor([rnd.choice(TERNARY) for _ in range(w.numel())]) if with_init else None
    w_hat, alpha, delta = prox_ternary(w, d, solver="approx", init=init, max_iter=100, tol=0.0)
    exact_hat, _, _ = prox_ternary(w, d, solver="exact")
    assert objective(w, w_hat, d) >= objective(w, exact_hat, d) - OBJ_RTOL * scale(w, d)
    assert torch.equal(delta, alpha / 2)
    # One more iteration from its own output changes nothing (alternating minimization converged).
    again_hat, again_alpha, _ = prox_ternary(w, d, solver="approx", init=w_hat, max_iter=1)
    assert torch.equal(again_hat, w_hat) and torch.equal(again_alpha, alpha)


def test_approx_iterations_by_hand():
    w = torch.tensor([1.0, -0.9, 0.3, 0.0])
    # TWN start: delta0 = 0.7 * 0.55 = 0.385, b0 = [1, -1, 0, 0] -> alpha = 0.95, b = I_0.475(w).
    _, alpha, _ = prox_ternary(w, solver="approx", max_iter=1)
    assert float(alpha) == pytest.approx(0.95, rel=1e-7)
    # From init [1, 1, 1, 0] (signs ignored, |b| used): alpha = (1 + 0.9 + 0.3) / 3.
    init = torch.tensor([1.0, 1.0, 1.0, 0.0])
    _, alpha, _ = prox_ternary(w, solver="approx", init=init, max_iter=1)
    assert float(alpha) == pytest.approx(2.2 / 3, rel=1e-7)
    # The threshold is strict: |w| = alpha/2 exactly maps to 0 (init [1, 0, 0, 0]: alpha = 1).
    w_hat, _, _ = prox_ternary(torch.tensor([1.0, -0.5, 0.1, 0.0]), solver="approx",
                               init=torch.tensor([1.0, 0.0, 0.0, 0.0]), max_iter=1)
    assert torch.equal(w_hat, torch.tensor([1.0, 0.0, 0.0, 0.0]))
    # An all-zero start falls back to alpha = max|w| = 1.
    w_hat, alpha, _ = prox_ternary(w, solver="approx", init=torch.zeros(4), max_iter=1)
    assert float(alpha) == 1.0 and torch.equal(w_hat, torch.tensor([1.0, -1.0, 0.0, 0.0]))


def test_approx_stops_when_alpha_settles():
    w, d = random_problem((200,), seed=6)
    # With tol = inf every group stops after the second iteration; one more changes nothing.
    stopped = prox_ternary(w, d, solver="approx", max_iter=50, tol=float("inf"))
    two = prox_ternary(w, d, solver="approx", max_iter=2, tol=0.0)
    assert all(torch.equal(a, b) for a, b in zip(stopped, two, strict=True))


def test_twn_by_hand():
    # mean|w| = 0.4, delta = 0.28: S = {1.0, -0.281} (0.281 just above delta), alpha = 0.6405 with
    # d = None, and (1.0 + 3 * 0.281) / 4 = 0.46075 with d = [1, 3, 1, 1].
    w = torch.tensor([1.0, -0.281, 0.2, 0.119])
    w_hat, alpha, delta = prox_ternary(w, solver="twn")
    assert float(delta) == pytest.approx(0.28, rel=1e-6)
    assert float(alpha) == pytest.approx(0.6405, rel=1e-6)
    assert torch.equal(torch.sign(w_hat), torch.tensor([1.0, -1.0, 0.0, 0.0]))
    _, alpha, _ = prox_ternary(w, torch.tensor([1.0, 3.0, 1.0, 1.0]), solver="twn")
    assert float(alpha) == pytest.approx(0.46075, rel=1e-6)


@given(problems(max_size=64))
def test_twn_follows_its_definition(problem):
    w, d = problem
    w_hat, alpha, delta = prox_ternary(w, d, solver="twn")
    w64 = w.double()
    assert float(delta) == pytest.approx(0.7 * float(w64.abs().mean()), rel=SCALE_RTOL)
    # The support is judged against the returned delta, so float32 rounding of delta near some
    # |w| cannot make this test flaky; the line above pins delta itself.
    support = w.abs() > delta
    d64 = torch.ones_like(w64) if d is None else d.double()
    if support.any():
        want = float((d64 * w64.abs())[support].sum() / d64[support].sum())
        assert float(alpha) == pytest.approx(want, rel=SCALE_RTOL)
    assert torch.equal(w_hat != 0, support)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("shape", [(7, 13), (16, 3, 3, 3), (4 * 5, 11)])
@pytest.mark.parametrize("curvature", [True, False])
def test_channel_is_tensor_granularity_per_row(solver, shape, curvature):
    w, d = random_problem(shape, seed=7, curvature=curvature)
    init = torch.sign(random_problem(shape, seed=8)[0]) if solver == "approx" else None
    if shape == (4 * 5, 11):  # an LSTM weight with per-gate scales: the caller's (4, -1) view
        w, init = w.view(4, -1), None if init is None else init.view(4, -1)
        d = None if d is None else d.view(4, -1)
    w_hat, alpha, delta = prox_ternary(w, d, solver=solver, granularity="channel", init=init)
    assert alpha.shape == delta.shape == (w.shape[0],)
    for i in range(w.shape[0]):
        row = prox_ternary(w[i], None if d is None else d[i], solver=solver,
                           init=None if init is None else init[i])
        assert torch.equal(torch.sign(w_hat[i]), torch.sign(row[0]))
        torch.testing.assert_close(alpha[i], row[1], rtol=SCALE_RTOL, atol=0)
        torch.testing.assert_close(delta[i], row[2], rtol=SCALE_RTOL, atol=0)


def test_approx_rows_stop_on_their_own():
    # With a coarse tol the rows converge after different numbers of iterations; each must stop
    # where it would stop alone, not keep iterating until the slowest row is done.
    w, d = random_problem((12, 30), seed=21)
    _, alpha, _ = prox_ternary(w, d, solver="approx", granularity="channel", tol=0.05)
    rows = torch.stack([prox_ternary(w[i], d[i], solver="approx", tol=0.05)[1] for i in range(12)])
    torch.testing.assert_close(alpha, rows, rtol=SCALE_RTOL, atol=0)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_each_group_holds_zero_and_plus_minus_alpha(solver, granularity):
    w, d = random_problem((9, 40), seed=9)
    w_hat, alpha, _ = prox_ternary(w, d, solver=solver, granularity=granularity)
    rows = [w_hat] if granularity == "tensor" else list(w_hat)
    alphas = [alpha] if granularity == "tensor" else list(alpha)
    for row, a in zip(rows, alphas, strict=True):
        assert set(row.unique().tolist()) == {-float(a), 0.0, float(a)}


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_matches_float32_of_the_same_values(solver, dtype):
    w, d = random_problem((8, 31), seed=10)
    w = w.to(dtype)
    w_hat, alpha, delta = prox_ternary(w, d, solver=solver, granularity="channel")
    want_hat, want_alpha, want_delta = prox_ternary(w.float(), d, solver=solver,
                                                    granularity="channel")
    assert w_hat.dtype == dtype and alpha.dtype == delta.dtype == torch.float32
    # The same float32 values go through the same float32 arithmetic: bit-identical results.
    assert torch.equal(alpha, want_alpha) and torch.equal(delta, want_delta)
    assert torch.equal(torch.sign(w_hat.float()), torch.sign(want_hat))


@pytest.mark.parametrize("solver", SOLVERS)
def test_small_and_degenerate_inputs(solver):
    w_hat, alpha, delta = prox_ternary(torch.empty(0, 4), solver=solver, granularity="channel")
    assert w_hat.shape == (0, 4) and alpha.shape == delta.shape == (0,)
    w_hat, alpha, delta = prox_ternary(torch.empty(3, 0), solver=solver, granularity="channel")
    assert torch.equal(alpha, torch.zeros(3)) and torch.equal(delta, torch.zeros(3))
    w_hat, alpha, _ = prox_ternary(torch.tensor([-0.3]), solver=solver)
    assert torch.equal(w_hat, torch.tensor([-0.3])) and torch.equal(alpha, torch.tensor(0.3))
    # An all-zero row: zero scale, zero output, no NaN.
    w = torch.tensor([[0.0, -0.0, 0.0], [0.5, -1.0, 0.25]])
    w_hat, alpha, delta = prox_ternary(w, solver=solver, granularity="channel")
    assert torch.equal(w_hat[0], torch.zeros(3)) and float(alpha[0]) == float(delta[0]) == 0.0
    assert not torch.isnan(w_hat).any()


@pytest.mark.parametrize("solver", SOLVERS)
def test_non_contiguous_input_matches_its_copy_and_is_not_modified(solver):
    w, d = random_problem((13, 21), seed=11)
    init = torch.sign(random_problem((13, 21), seed=12)[0])
    w_t, d_t, init_t = w.t(), d.t(), init.t()  # (21, 13) views, not contiguous
    got = prox_ternary(w_t, d_t, solver=solver, granularity="channel", init=init_t)
    want = prox_ternary(w_t.contiguous(), d_t.contiguous(), solver=solver, granularity="channel",
                        init=init_t.contiguous())
    assert all(torch.equal(g, x) for g, x in zip(got, want, strict=True))
    assert torch.equal(w_t, w.t()) and torch.equal(d_t, d.t()) and torch.equal(init_t, init.t())


def test_bad_arguments_name_the_problem():
    w = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"solver.*'exact', 'approx', 'twn'.*'lat'"):
        prox_ternary(w, solver="lat")
    with pytest.raises(ValueError, match=r"granularity.*'tensor', 'channel'.*'gate'"):
        prox_ternary(w, granularity="gate")
    with pytest.raises(ValueError, match=r"init: expected the shape of w \(3, 4\), got \(12,\)"):
        prox_ternary(w, solver="approx", init=torch.ones(12))
    with pytest.raises(ValueError, match="max_iter: expected an int >= 1, got 0"):
        prox_ternary(w, solver="approx", max_iter=0)
    with pytest.raises(ValueError, match="tol: expected a number >= 0, got -1"):
        prox_ternary(w, solver="approx", tol=-1.0)
