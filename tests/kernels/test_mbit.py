"""prox_mbit: its levels, its alternation, its ternary special case, and invariants."""

import itertools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from kernels import LEVELS, prox_mbit, prox_ternary
from kernels.mbit import _quantize
from tests.kernels._truth import (
    assert_attains,
    brute_force_min,
    objective,
    problems,
    random_problem,
    scale,
)

# Objectives, relative to sum d*w^2: float32 scales and float32 comparisons against level
# midpoints may pick the other of two levels within ~2^-24 relative of a midpoint, which moves the
# objective by far less than 1e-6 of sum d*w^2.
OBJ_RTOL = 1e-6
# Scales compared across two float32 computations of the same sums, or against a hand value.
SCALE_RTOL = 1e-6
# Whether a level is a nearest level to u = w/alpha: the kernel divides in float32 (relative error
# 2^-24), so near a midpoint either neighbour is acceptable within 1e-6 (|u| <= 1 after clipping).
LEVEL_ATOL = 1e-6


def level_set(bits: int, levels: str) -> torch.Tensor:
    """The non-negative levels in float64, built from the definition."""
    k = 2 ** (bits - 1) - 1
    if levels == "linear":
        return torch.arange(k + 1, dtype=torch.float64) / k
    return torch.tensor([0.0] + [2.0**-j for j in range(k)], dtype=torch.float64)


def signed_levels(bits: int, levels: str) -> tuple[float, ...]:
    pos = level_set(bits, levels).tolist()
    return tuple(sorted({-v for v in pos} | set(pos)))


def test_log_levels_use_arithmetic_midpoints_and_round_ties_up():
    # bits = 3 (LAQ's reference code): |u| < 1/8 -> 0, [1/8, 3/8) -> 1/4, [3/8, 3/4) -> 1/2, else 1
    u = torch.tensor([[0.0, 0.1249, 0.125, 0.3749, 0.375, 0.7499, 0.75, 1.0, 2.0, -0.125, -0.75]])
    want = torch.tensor([[0.0, 0.0, 0.25, 0.25, 0.5, 0.5, 1.0, 1.0, 1.0, -0.25, -1.0]])
    assert torch.equal(_quantize(u, 3, "log"), want)


def test_linear_levels_round_half_away_from_zero():
    # k = 1: u = +-0.5 is a tie between 0 and +-1; torch.round (half to even) would give 0.
    u = torch.tensor([[0.5, -0.5, 0.4999, 0.25, -1.5]])
    assert torch.equal(_quantize(u, 1, "linear"), torch.tensor([[1.0, -1.0, 0.0, 0.0, -1.0]]))
    # k = 3: 0.5 * 3 = 1.5 -> 2/3; 1/6 sits between 0 and 1/3 and rounds up.
    u = torch.tensor([[0.5, -0.5, 1 / 6 + 1e-7, 0.16]])
    want = torch.tensor([[2.0, -2.0, 1.0, 0.0]]) / 3
    assert torch.equal(_quantize(u, 3, "linear"), want)


@given(problems(max_size=40), st.sampled_from([2, 3, 4, 8]), st.sampled_from(LEVELS))
def test_output_is_on_the_grid_at_a_nearest_level(problem, bits, levels):
    w, d = problem
    w_hat, alpha = prox_mbit(w, d, bits=bits, levels=levels)
    if float(alpha) == 0:
        assert torch.equal(w_hat, torch.zeros_like(w)) and not w.any()
        return
    grid = level_set(bits, levels)  # (k+1,) float64
    w64, w_hat64, a = w.double(), w_hat.double(), float(alpha)
    b = grid[(w_hat64.abs()[:, None] / a - grid).abs().argmin(dim=1)] * torch.sign(w_hat64)
    # On the grid: w_hat is alpha times a level, up to float32 rounding of the product.
    torch.testing.assert_close(w_hat64, a * b, rtol=2**-23, atol=0)
    # At a nearest level of u = clip(w / alpha, -1, 1).
    u = (w64 / a).clamp(-1, 1)
    nearest = (u.abs()[:, None] - grid).abs().min(dim=1).values
    assert ((b - u).abs() <= nearest + LEVEL_ATOL).all()


@given(problems(max_size=6), st.sampled_from([2, 3]), st.sampled_from(LEVELS))
def test_cannot_beat_the_brute_force_minimum(problem, bits, levels):
    w, d = problem  # 7^6 = 117649 three-bit patterns at most
    w_hat, _ = prox_mbit(w, d, bits=bits, levels=levels)
    best = brute_force_min(w, d, signed_levels(bits, levels))
    assert objective(w, w_hat, d) >= best - 1e-12 * scale(w, d)
    if bits == 2:  # ternary: the alternation is no better than the exact ternary optimum
        assert_attains(objective(w, prox_ternary(w, d)[0], d), best, w, d, 1e-5)


@given(problems(max_size=40), st.sampled_from([2, 3, 5, 8]), st.sampled_from(LEVELS),
       st.booleans())
def test_objective_never_increases_across_iterations(problem, bits, levels, with_init):
    w, d = problem
    init = w.flip(0) if with_init else None  # any start: signs may disagree with w
    objectives = [objective(w, prox_mbit(w, d, bits=bits, levels=levels, init=init,
                                         max_iter=t, tol=0.0)[0], d) for t in range(1, 7)]
    size = scale(w, d)
    for before, after in itertools.pairwise(objectives):
        assert after <= before + OBJ_RTOL * size


def test_scale_is_weighted_least_squares_not_the_reference_formula():
    w = torch.tensor([0.9, -0.3, 0.05, 0.6])
    # b0 = sign(w): alpha1 = sum|w| / 4 = 0.4625; u = w / alpha1 -> b1 = [1, -2/3, 0, 1].
    w_hat, alpha = prox_mbit(w, bits=3, max_iter=1)
    assert float(alpha) == pytest.approx(0.4625, rel=SCALE_RTOL)
    torch.testing.assert_close(w_hat, 0.4625 * torch.tensor([1.0, -2 / 3, 0.0, 1.0]))
    # alpha2 = sum(b1*w) / sum(b1^2) = 1.7 / (22/9); the reference's sum|b1||w| / sum|b1| would
    # give 1.8 / (8/3) = 0.675.
    _, alpha = prox_mbit(w, bits=3, max_iter=2)
    assert float(alpha) == pytest.approx(1.7 * 9 / 22, rel=SCALE_RTOL)


def test_start_with_signs_against_w_falls_back_to_max_abs():
    w, d = random_problem((50,), seed=13)
    _, alpha = prox_mbit(w, d, bits=3, init=-w, max_iter=1)  # sum(d*b0*w) < 0
    assert torch.equal(alpha, w.abs().max())


@pytest.mark.parametrize("shape, granularity", [((300,), "tensor"), ((6, 50), "channel")])
@pytest.mark.parametrize("curvature", [True, False])
@pytest.mark.parametrize("start", ["masked", "default"])
def test_two_bits_is_ternary_approx_from_the_same_start(shape, granularity, curvature, start):
    w, d = random_problem(shape, seed=14, curvature=curvature)  # Gaussian: no zeros, no ties
    if start == "masked":  # a ternary warm start with the signs of w, given to both
        keep = torch.rand(shape, generator=torch.Generator().manual_seed(15)) < 0.6
        init = ternary_init = torch.where(keep, torch.sign(w), 0.0)
    else:  # prox_mbit's own start b0 = sign(w), given to the ternary solver explicitly
        init, ternary_init = None, torch.sign(w)
    want_hat, want_alpha, _ = prox_ternary(w, d, solver="approx", granularity=granularity,
                                           init=ternary_init)
    for levels in LEVELS:  # 2-bit log levels are {0, +-1} too
        w_hat, alpha = prox_mbit(w, d, bits=2, levels=levels, granularity=granularity, init=init)
        # Same b0, same sums in the same order: identical results, bit for bit.
        assert torch.equal(w_hat, want_hat) and torch.equal(alpha, want_alpha)


@pytest.mark.parametrize("bits", [2, 3, 8])
@pytest.mark.parametrize("levels", LEVELS)
@pytest.mark.parametrize("with_init", [True, False])
def test_channel_is_tensor_granularity_per_row(bits, levels, with_init):
    w, d = random_problem((4 * 5, 11), seed=16)
    w, d = w.view(4, -1), d.view(4, -1)  # an LSTM weight with per-gate scales, as the caller does
    init = random_problem((4, 55), seed=17)[0] if with_init else None
    w_hat, alpha = prox_mbit(w, d, bits=bits, levels=levels, granularity="channel", init=init)
    assert alpha.shape == (4,)
    for i in range(4):
        row_hat, row_alpha = prox_mbit(w[i], d[i], bits=bits, levels=levels,
                                       init=None if init is None else init[i])
        torch.testing.assert_close(alpha[i], row_alpha, rtol=SCALE_RTOL, atol=0)
        # Same levels: w_hat / alpha agrees up to the float32 rounding of alpha.
        torch.testing.assert_close(w_hat[i] / alpha[i], row_hat / row_alpha, rtol=1e-6, atol=0)


def test_rows_stop_on_their_own():
    # With a coarse tol the rows converge after different numbers of iterations; each must stop
    # where it would stop alone, not keep iterating until the slowest row is done.
    w, d = random_problem((12, 30), seed=22)
    _, alpha = prox_mbit(w, d, bits=3, granularity="channel", tol=0.05)
    rows = torch.stack([prox_mbit(w[i], d[i], bits=3, tol=0.05)[1] for i in range(12)])
    torch.testing.assert_close(alpha, rows, rtol=SCALE_RTOL, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("levels", LEVELS)
def test_half_precision_matches_float32_of_the_same_values(dtype, levels):
    w, d = random_problem((8, 31), seed=18)
    w = w.to(dtype)
    w_hat, alpha = prox_mbit(w, d, bits=4, levels=levels, granularity="channel")
    want_hat, want_alpha = prox_mbit(w.float(), d, bits=4, levels=levels, granularity="channel")
    assert w_hat.dtype == dtype and alpha.dtype == torch.float32
    # The same float32 values go through the same float32 arithmetic: bit-identical results.
    assert torch.equal(alpha, want_alpha) and torch.equal(w_hat, want_hat.to(dtype))


def test_small_and_degenerate_inputs():
    w_hat, alpha = prox_mbit(torch.empty(0, 4), bits=3, granularity="channel")
    assert w_hat.shape == (0, 4) and alpha.shape == (0,)
    _, alpha = prox_mbit(torch.empty(3, 0), bits=3, granularity="channel")
    assert torch.equal(alpha, torch.zeros(3))
    w_hat, alpha = prox_mbit(torch.tensor([-0.3]), bits=5, levels="log")
    assert torch.equal(w_hat, torch.tensor([-0.3])) and torch.equal(alpha, torch.tensor(0.3))
    # An all-zero row, and an all-zero start: zero scale and output for the first, no NaN.
    w = torch.tensor([[0.0, -0.0, 0.0], [0.5, -1.0, 0.25]])
    w_hat, alpha = prox_mbit(w, bits=3, granularity="channel", init=torch.zeros(2, 3))
    assert torch.equal(w_hat[0], torch.zeros(3)) and float(alpha[0]) == 0.0
    assert not torch.isnan(w_hat).any() and float(alpha[1]) > 0
    # 8-bit log levels reach 2^-126 and the zero boundary 2^-127 (a float32 subnormal).
    w = torch.tensor([1.0, 2.0**-126, 2.0**-127, 2.0**-128, -(2.0**-100)])
    w_hat, alpha = prox_mbit(w, bits=8, levels="log", init=w, max_iter=1)  # b0 = q(w): alpha 1
    assert float(alpha) == 1.0 and torch.equal(w_hat, torch.tensor(
        [1.0, 2.0**-126, 2.0**-126, 0.0, -(2.0**-100)]))


def test_non_contiguous_input_matches_its_copy_and_is_not_modified():
    w, d = random_problem((13, 21), seed=19)
    init = random_problem((13, 21), seed=20)[0]
    w_t, d_t, init_t = w.t(), d.t(), init.t()  # (21, 13) views, not contiguous
    got = prox_mbit(w_t, d_t, bits=3, granularity="channel", init=init_t)
    want = prox_mbit(w_t.contiguous(), d_t.contiguous(), bits=3, granularity="channel",
                     init=init_t.contiguous())
    assert all(torch.equal(g, x) for g, x in zip(got, want, strict=True))
    assert torch.equal(w_t, w.t()) and torch.equal(d_t, d.t()) and torch.equal(init_t, init.t())


def test_bad_arguments_name_the_problem():
    w = torch.randn(3, 4)
    for bits in (1, 9, -3):
        with pytest.raises(ValueError, match=rf"bits: expected an int in \[2, 8\], got {bits}"):
            prox_mbit(w, bits=bits)
    for bits in (3.0, True, "3"):
        with pytest.raises(TypeError, match="bits: expected an int"):
            prox_mbit(w, bits=bits)
    with pytest.raises(ValueError, match=r"levels.*'linear', 'log'.*'exp'"):
        prox_mbit(w, bits=3, levels="exp")
    with pytest.raises(ValueError, match=r"granularity.*'tensor', 'channel'.*'row'"):
        prox_mbit(w, bits=3, granularity="row")
    with pytest.raises(ValueError, match=r"init: expected the shape of w \(3, 4\), got \(4, 3\)"):
        prox_mbit(w, bits=3, init=torch.ones(4, 3))
