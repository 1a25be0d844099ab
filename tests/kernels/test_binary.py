"""prox_binary against brute force, BWN, its own per-row form, and its invariants."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from kernels import prox_binary
from tests.kernels._truth import (
    assert_attains,
    brute_force_min,
    objective,
    pattern_objectives,
    problems,
    random_problem,
)

# Objectives, relative to sum d*w^2: the float32 alpha carries ~n*2^-24 relative error and the
# objective is quadratic around the best alpha, so it moves by far less than 1e-6 of sum d*w^2.
# Signs are compared exactly, so the tolerance cannot hide a flipped sign.
OBJ_RTOL = 1e-6
# Scales compared across two float32 computations of the same sum (another reduction order).
SCALE_RTOL = 1e-6


@given(problems())
def test_attains_the_brute_force_minimum(problem):
    w, d = problem
    w_hat, alpha = prox_binary(w, d)
    best = brute_force_min(w, d, (-1.0, 1.0))
    assert_attains(objective(w, w_hat, d), best, w, d, OBJ_RTOL)
    # The sign pattern it picked is an optimal pattern, with sign(0) = +1.
    b = torch.where(w_hat >= 0, 1.0, -1.0)
    assert torch.equal(b, torch.where(w >= 0, 1.0, -1.0))
    assert_attains(float(pattern_objectives(w, d, b)[0]), best, w, d, OBJ_RTOL)
    assert torch.equal(w_hat.abs(), alpha.expand_as(w_hat))


@given(problems(max_size=64), st.sampled_from([1e-8, 0.5, 1.0, 3.0, 1e4]))
def test_constant_curvature_is_bwn(problem, c):
    w, _ = problem
    w_hat_bwn, alpha_bwn = prox_binary(w)
    w_hat, alpha = prox_binary(w, torch.full_like(w, c))
    assert torch.equal(torch.sign(w_hat), torch.sign(w_hat_bwn))
    torch.testing.assert_close(alpha, alpha_bwn, rtol=SCALE_RTOL, atol=0)


def test_first_lab_step_gives_mean_abs():
    # At LAB's first step the second moment is 0, so d = 1e-8 everywhere (docs/algorithms.md, "The step").
    w, _ = random_problem((64, 33), seed=0, curvature=False)
    _, alpha = prox_binary(w, torch.full_like(w, 1e-8))
    assert float(alpha) == pytest.approx(float(w.double().abs().mean()), rel=SCALE_RTOL)


def test_closed_form_by_hand():
    w = torch.tensor([0.5, -1.0, 0.0, -0.5])
    d = torch.tensor([1.0, 3.0, 1.0, 1.0])
    w_hat, alpha = prox_binary(w, d)
    # (0.5 + 3.0 + 0.0 + 0.5) / 6 = 2/3; sign(0) = +1.
    assert float(alpha) == pytest.approx(2 / 3, rel=1e-7)
    assert torch.equal(torch.sign(w_hat), torch.tensor([1.0, -1.0, 1.0, -1.0]))


@pytest.mark.parametrize("shape", [(7, 13), (16, 3, 3, 3), (4 * 5, 11), (1, 1023)])
@pytest.mark.parametrize("curvature", [True, False])
def test_channel_is_tensor_granularity_per_row(shape, curvature):
    w, d = random_problem(shape, seed=1, curvature=curvature)
    if shape == (4 * 5, 11):  # an LSTM weight with per-gate scales: the caller's (4, -1) view
        w = w.view(4, -1)
        d = None if d is None else d.view(4, -1)
    w_hat, alpha = prox_binary(w, d, granularity="channel")
    assert w_hat.shape == w.shape and alpha.shape == (w.shape[0],)
    for i in range(w.shape[0]):
        row_hat, row_alpha = prox_binary(w[i], None if d is None else d[i])
        assert torch.equal(torch.sign(w_hat[i]), torch.sign(row_hat))
        torch.testing.assert_close(alpha[i], row_alpha, rtol=SCALE_RTOL, atol=0)


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_each_group_holds_exactly_plus_minus_alpha(granularity):
    w, d = random_problem((9, 40), seed=2)
    w_hat, alpha = prox_binary(w, d, granularity=granularity)
    rows = [w_hat] if granularity == "tensor" else list(w_hat)
    alphas = [alpha] if granularity == "tensor" else list(alpha)
    for row, a in zip(rows, alphas, strict=True):
        assert set(row.unique().tolist()) == {-float(a), float(a)}


def test_sign_of_zero_is_plus():
    w = torch.tensor([0.0, -0.0, -1.0, 2.0])
    w_hat, alpha = prox_binary(w)
    assert torch.equal(w_hat, torch.stack([alpha, alpha, -alpha, alpha]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_half_precision_matches_float32_of_the_same_values(dtype, granularity):
    w, d = random_problem((8, 31), seed=3)
    w = w.to(dtype)
    w_hat, alpha = prox_binary(w, d, granularity=granularity)
    w_hat32, alpha32 = prox_binary(w.float(), d, granularity=granularity)
    assert w_hat.dtype == dtype and alpha.dtype == torch.float32
    # The same float32 values go through the same float32 sums: bit-identical scale.
    assert torch.equal(alpha, alpha32)
    assert torch.equal(torch.sign(w_hat.float()), torch.sign(w_hat32))


@pytest.mark.parametrize("shape, granularity, scale_shape", [
    ((0,), "tensor", ()), ((0, 3), "channel", (0,)), ((3, 0), "channel", (3,)),
    ((2, 0, 5), "tensor", ()),
])
def test_empty(shape, granularity, scale_shape):
    w = torch.empty(shape)
    w_hat, alpha = prox_binary(w, torch.empty(shape), granularity=granularity)
    assert w_hat.shape == shape and w_hat.dtype == w.dtype
    assert alpha.shape == scale_shape and torch.equal(alpha, torch.zeros(scale_shape))


def test_one_element():
    w_hat, alpha = prox_binary(torch.tensor([-0.3]))
    assert torch.equal(w_hat, torch.tensor([-0.3])) and torch.equal(alpha, torch.tensor(0.3))


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_non_contiguous_input_matches_its_copy(granularity):
    w, d = random_problem((13, 21), seed=4)
    w_t, d_t = w.t(), d.t()  # (21, 13) views, not contiguous
    got = prox_binary(w_t, d_t, granularity=granularity)
    want = prox_binary(w_t.contiguous(), d_t.contiguous(), granularity=granularity)
    assert all(torch.equal(g, x) for g, x in zip(got, want, strict=True))


def test_inputs_are_not_modified():
    w, d = random_problem((5, 6), seed=5)
    w0, d0 = w.clone(), d.clone()
    prox_binary(w, d, granularity="channel")
    assert torch.equal(w, w0) and torch.equal(d, d0)


def test_bad_arguments_name_the_problem():
    w = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"granularity.*'tensor', 'channel'.*'row'"):
        prox_binary(w, granularity="row")
    with pytest.raises(ValueError, match=r"d: expected the shape of w \(3, 4\), got \(4, 3\)"):
        prox_binary(w, torch.ones(4, 3))
    with pytest.raises(TypeError, match=r"w: .*got torch.int64"):
        prox_binary(torch.ones(3, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"w: .*got torch.float64"):
        prox_binary(torch.ones(3, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"d: .*got torch.int32"):
        prox_binary(w, torch.ones(3, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"w: expected at least 1 dimension, got shape \(\)"):
        prox_binary(torch.tensor(1.0))
