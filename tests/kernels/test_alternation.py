"""The alternating solvers of prox_mbit and prox_ternary("approx") on the torch backend: stopping
early reaches the fixed point, the fused iteration follows the literal alternation, and the
compiled passes agree with the eager ones."""

import pytest
import torch

from kernels import prox_mbit, prox_ternary
from kernels._common import TINY, alternate, curvature, groups, threshold
from kernels.mbit import _quantize
from tests.kernels._truth import objective, random_problem

# Objectives of two solutions of the same problem, relative to the full-iteration one.
OBJ_RTOL = 1e-6
# Scales after iterations whose sums were added in another order (compiled vs eager).
COMPILED_SCALE_RTOL = 1e-4

SHAPES = [(4096,), (16, 300)]
MBIT_CASES = [(2, "linear"), (3, "linear"), (4, "linear"), (3, "log")]


def drift(w: torch.Tensor, seed: int) -> torch.Tensor:
    """The next latent weight of a training step: w moved by a few percent of its size."""
    gen = torch.Generator().manual_seed(seed + 1000)
    return (w + 0.05 * torch.randn(w.shape, generator=gen)).clamp(-1, 1)


def problem_with_start(shape, seed, warm, solve):
    """``(w, d, init)``: a latent after a step, and the previous w_hat as warm start (or None)."""
    w, d = random_problem(shape, seed)
    w = w.clamp(-1, 1)
    init = solve(w, d, None) if warm else None
    return drift(w, seed), d, init


def gran(shape):
    return "tensor" if len(shape) == 1 else "channel"


@pytest.mark.parametrize("warm", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("bits", "levels"), MBIT_CASES)
def test_mbit_early_stop_reaches_the_fixed_point(bits, levels, shape, warm):
    def solve(w, d, init, **kw):
        return prox_mbit(w, d, bits=bits, levels=levels, granularity=gran(shape), init=init,
                         backend="torch", **kw)[0]

    w, d, init = problem_with_start(shape, 3, warm, solve)
    full = solve(w, d, init, max_iter=500, tol=0.0)
    stopped = solve(w, d, init, max_iter=500)  # default tol: stops once alpha moved < 1e-6
    # The fixed point itself: one more iteration from the full solution changes nothing.
    again = solve(w, d, full, max_iter=2, tol=0.0)
    assert objective(w, again, d) == pytest.approx(objective(w, full, d), rel=1e-7)
    assert objective(w, stopped, d) == pytest.approx(objective(w, full, d), rel=OBJ_RTOL)


@pytest.mark.parametrize("warm", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_ternary_approx_early_stop_reaches_the_fixed_point(shape, warm):
    def solve(w, d, init, **kw):
        return prox_ternary(w, d, solver="approx", granularity=gran(shape), init=init,
                            backend="torch", **kw)[0]

    w, d, init = problem_with_start(shape, 5, warm, solve)
    full = solve(w, d, init, max_iter=500, tol=0.0)
    stopped = solve(w, d, init, max_iter=500)
    assert objective(w, stopped, d) == pytest.approx(objective(w, full, d), rel=OBJ_RTOL)


def literal_mbit(w, d, bits, levels, g, init, max_iter, tol):
    """The alternation as written in LAQ's reference code: store b, update alpha, requantize."""
    w32, k = groups(w, g), 2 ** (bits - 1) - 1
    d32 = curvature(d, w32, g)
    peak = w32.abs().amax(dim=1)

    def scale_of(b):
        db = d32 * b
        num, den = (db * w32).sum(dim=1), (db * b).sum(dim=1)
        alpha = num / den.clamp_min(TINY)
        return torch.where((den > 0) & (alpha > 0), alpha, peak)

    if init is None:
        b0 = torch.where(w32 >= 0, 1.0, -1.0)
    else:
        i32 = groups(init, g)
        b0 = _quantize(i32 / i32.abs().amax(dim=1, keepdim=True).clamp_min(TINY), k, levels)
    alpha, b = alternate(b0, scale_of, lambda a: _quantize(w32 / a.clamp_min(TINY)[:, None],
                                                           k, levels), max_iter, tol)
    return alpha[:, None] * b, alpha


@pytest.mark.parametrize("max_iter", [1, 2, 10])
@pytest.mark.parametrize("warm", [False, True])
@pytest.mark.parametrize(("bits", "levels"), MBIT_CASES)
def test_mbit_follows_the_literal_alternation_bit_for_bit(bits, levels, warm, max_iter):
    shape = (16, 300)

    def solve(w, d, init):
        return prox_mbit(w, d, bits=bits, levels=levels, granularity="channel", init=init,
                         backend="torch", max_iter=max_iter)

    w, d, init = problem_with_start(shape, 7, warm, lambda w, d, i: solve(w, d, i)[0])
    w_hat, alpha = solve(w, d, init)
    want_hat, want_alpha = literal_mbit(w, d, bits, levels, "channel", init, max_iter, 1e-6)
    assert torch.equal(alpha, want_alpha)
    assert torch.equal(w_hat, want_hat.reshape(shape))


@pytest.mark.parametrize("max_iter", [1, 2, 10])
@pytest.mark.parametrize("warm", [False, True])
def test_ternary_approx_follows_the_literal_alternation_bit_for_bit(warm, max_iter):
    shape = (16, 300)

    def solve(w, d, init):
        return prox_ternary(w, d, solver="approx", granularity="channel", init=init,
                            backend="torch", max_iter=max_iter)

    w, d, init = problem_with_start(shape, 9, warm, lambda w, d, i: solve(w, d, i)[0])
    _, alpha, _ = solve(w, d, init)
    a = w.abs()

    def scale_of(b):
        db = d * b.abs()
        den = db.sum(dim=1)
        return torch.where(den > 0, (db * a).sum(dim=1) / den.clamp_min(TINY), a.amax(dim=1))

    b0 = threshold(w, 0.7 * a.mean(dim=1)) if init is None else torch.sign(init)
    want, _ = alternate(b0, scale_of, lambda al: threshold(w, al / 2), max_iter, 1e-6)
    assert torch.equal(alpha, want)


@pytest.mark.parametrize("warm", [False, True])
def test_compiled_passes_agree_with_eager(warm):
    shape = (16, 300)
    w, d = random_problem(shape, 11)
    w = w.clamp(-1, 1)
    init = None
    if warm:
        init = prox_mbit(w, d, bits=3, granularity="channel", backend="torch")[0]
        w = drift(w, 11)
    for kw in ({"bits": 3}, {"bits": 4, "levels": "log"}):
        eager = prox_mbit(w, d, granularity="channel", init=init, backend="torch", **kw)
        comp = prox_mbit(w, d, granularity="channel", init=init, backend="torch", compile=True,
                         **kw)
        torch.testing.assert_close(comp[1], eager[1], rtol=COMPILED_SCALE_RTOL, atol=0)
        assert objective(w, comp[0], d) == pytest.approx(objective(w, eager[0], d), rel=OBJ_RTOL)
    tinit = None if init is None else torch.sign(init)
    eager = prox_ternary(w, d, solver="approx", granularity="channel", init=tinit,
                         backend="torch")
    comp = prox_ternary(w, d, solver="approx", granularity="channel", init=tinit,
                        backend="torch", compile=True)
    torch.testing.assert_close(comp[1], eager[1], rtol=COMPILED_SCALE_RTOL, atol=0)
    assert objective(w, comp[0], d) == pytest.approx(objective(w, eager[0], d), rel=OBJ_RTOL)
    # the compiled path really ran (a failed compile would fall back to eager and compare eager
    # with itself); .ci/run installs the C++ compiler that torch.compile needs on CPU
    from kernels import _levels
    assert _levels._COMPILED and all(fn is not None for fn in _levels._COMPILED.values())
