"""kernels.levels_step: the C++ LAQ / LAT-approx step against the torch references and brute force.

The extension is built with ``required=True``: a broken build fails these tests.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bench.quantizers as bq
from bench.methods import METHODS, LayerSpec
from kernels import prox_mbit, prox_ternary
from kernels.levels_step import EPS_D, levels_prox_step_
from tests.kernels._truth import brute_force_min, objective, problems, scale

# Scales of the same sums added in another order (float32 rounding of a float32 or double sum).
SCALE_RTOL = 1e-5
# The secant step with an early stop (rtol=1e-4, as bench.quantizers.LEVELS_RTOL), against the
# 10-update alternation: its objective may be above by this fraction of the reference's objective.
EARLY_RTOL = 1e-3


def problem(shape, seed, spread=0.05):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=gen) * spread
    w.view(-1)[0] = 1.7  # one weight beyond the clip
    v = torch.rand(shape, generator=gen).square() * 1e-4
    return w, v


def reference(w, v, bits, granularity, **kwargs):
    wc = w.clamp(-1, 1)
    d = None if v is None else v.sqrt() + EPS_D
    if bits is None:
        w_hat, alpha, _ = prox_ternary(wc, d, solver="approx", granularity=granularity,
                                       backend="torch", **kwargs)
    else:
        w_hat, alpha = prox_mbit(wc, d, bits=bits, granularity=granularity, backend="torch",
                                 **kwargs)
    return wc, d, w_hat, alpha


@pytest.mark.parametrize("bits", [None, 2, 3, 4, 8])
@pytest.mark.parametrize("shape, granularity", [((64, 300), "tensor"), ((16, 3000), "channel"),
                                                ((40000,), "tensor")])
@pytest.mark.parametrize("curvature", [True, False])
def test_cold_start_without_early_stop_is_the_reference(bits, shape, granularity, curvature):
    w, v = problem(shape, seed=1)
    v = v if curvature else None
    wc, _, want_hat, want_alpha = reference(w, v, bits, granularity)
    latent = w.clone()
    groups = 1 if granularity == "tensor" else shape[0]
    got = levels_prox_step_(latent, v, bits=bits, groups=groups)
    assert torch.equal(latent, wc)  # clipped in place, as clamp_
    torch.testing.assert_close(got.alpha.reshape(want_alpha.shape), want_alpha, rtol=SCALE_RTOL,
                               atol=0)
    # The same levels: w_hat / alpha agree exactly where the scales are equal, to rounding else.
    torch.testing.assert_close(got.w_hat, want_hat, rtol=SCALE_RTOL, atol=0)


@pytest.mark.parametrize("bits", [None, 3])
def test_warm_start_from_a_scale_is_the_reference_from_the_matching_init(bits):
    # b0 = q(W / max|W|) is the reference's b0 for init = W; I_0(W) its b0 for init = W (ternary).
    w, v = problem((64, 300), seed=2)
    wc, _, want_hat, want_alpha = reference(w, v, bits, "tensor", init=w.clamp(-1, 1))
    alpha0 = torch.tensor([0.0 if bits is None else float(wc.abs().max())])
    got = levels_prox_step_(w.clone(), v, bits=bits, alpha0=alpha0)
    torch.testing.assert_close(got.alpha.reshape(()), want_alpha, rtol=SCALE_RTOL, atol=0)
    torch.testing.assert_close(got.w_hat, want_hat, rtol=SCALE_RTOL, atol=0)


@pytest.mark.parametrize("bits", [None, 2, 3, 4])
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("drift", [0.7, 1.0, 1.4])
def test_secant_with_early_stop_reaches_the_ten_update_objective_in_fewer_passes(bits, seed,
                                                                                 drift):
    # The optimizer's case: warm-started from a scale near (drift x) the last one.
    w, v = problem((256, 1024), seed=10 + seed)
    wc, d, ref_hat, ref_alpha = reference(w, v, bits, "tensor", max_iter=10, tol=0.0)
    got = levels_prox_step_(w.clone(), v, bits=bits, alpha0=ref_alpha.reshape(1) * drift,
                            rtol=1e-4, secant=True, tol=0.0)
    ref_obj, got_obj = objective(wc, ref_hat, d), objective(wc, got.w_hat, d)
    assert got_obj <= ref_obj * (1 + EARLY_RTOL)
    if bits in (None, 2, 3):  # LAQ 3-bit and LAT-approx: the study's cases (4-bit may take 10)
        assert int(got.updates) <= 6
    # The reported objective is that of (alpha, the levels before the last update); w_hat's
    # levels are the best for alpha, so its objective is at most that.
    assert got_obj <= float(got.objective) * (1 + 1e-6)


@settings(max_examples=40, deadline=None)
@given(problems(max_size=6), st.sampled_from([None, 2, 3]), st.floats(0.25, 4.0),
       st.booleans())
def test_secant_cannot_beat_brute_force_and_never_ends_worse_than_its_first_update(
        prob, bits, drift, secant):
    w, d = prob
    v = None if d is None else (d - EPS_D).clamp_min(0).square()
    d_used = None if v is None else v.sqrt() + EPS_D
    values = (-1.0, 0.0, 1.0) if bits is None else tuple(
        j / (2 ** (bits - 1) - 1) for j in range(-(2 ** (bits - 1) - 1), 2 ** (bits - 1)))
    alpha0 = torch.tensor([max(float(w.abs().max()), 1e-3) * drift])
    first = levels_prox_step_(w.clone(), v, bits=bits, alpha0=alpha0, max_iter=1)
    got = levels_prox_step_(w.clone(), v, bits=bits, alpha0=alpha0, rtol=1e-4, secant=secant)
    got_obj = objective(w, got.w_hat, d_used)
    size = scale(w, d_used)
    assert got_obj >= brute_force_min(w, d_used, values) - 1e-9 * size
    assert got_obj <= objective(w, first.w_hat, d_used) + 1e-6 * size


def test_results_do_not_depend_on_the_thread_count():
    w, v = problem((8, 100000), seed=3)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = levels_prox_step_(w.clone(), v, bits=3, groups=8, secant=True, rtol=1e-4)
        torch.set_num_threads(2)
        two = levels_prox_step_(w.clone(), v, bits=3, groups=8, secant=True, rtol=1e-4)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one.w_hat, two.w_hat) and torch.equal(one.alpha, two.alpha)


def test_all_zero_group_gives_zero():
    w = torch.zeros(2, 50)
    w[1] = torch.linspace(-0.5, 0.5, 50)
    for bits in (None, 3):
        got = levels_prox_step_(w.clone(), None, bits=bits, groups=2)
        assert float(got.alpha[0]) == 0 and not got.w_hat[0].any()
        assert float(got.alpha[1]) > 0


@pytest.mark.parametrize("method, bits", [("laq", 3), ("lat-approx", None)])
def test_quantizer_takes_the_cpp_step_on_cpu_with_a_warm_start(method, bits, monkeypatch):
    calls = []
    real = bq.levels_prox_step_
    monkeypatch.setattr(bq, "levels_prox_step_",
                        lambda *a, **k: calls.append(k) or real(*a, **k))
    spec = (LayerSpec(METHODS[method], bits=bits, levels="linear") if method == "laq"
            else LayerSpec(METHODS[method]))
    q = bq.make_quantizer(spec)
    w, v = problem((128, 256), seed=4)
    w_hat, alpha = q.prox_(w, v, None)
    q.state["alpha"] = alpha
    w2 = w + 0.001 * torch.randn_like(w)
    w_hat2, alpha2 = q.prox_(w2, v, w_hat)
    assert [c["alpha0"] is None for c in calls] == [True, False]
    # Against the torch reference from the same latent: its objective, to EARLY_RTOL.
    wc, d, ref_hat, _ = reference(w2, v, bits, "tensor", init=w_hat)
    assert objective(wc, w_hat2, d) <= objective(wc, ref_hat, d) * (1 + EARLY_RTOL)
    assert torch.equal(w2, wc) and alpha2.shape == ()


def test_backend_torch_keeps_the_reference(monkeypatch):
    monkeypatch.setattr(bq, "levels_prox_step_", None)  # would fail if called
    q = bq.make_quantizer(LayerSpec(METHODS["laq"], bits=3, levels="linear"),
                          options=bq.ProxOptions(backend="torch"))
    w, v = problem((32, 32), seed=5)
    _, _, want_hat, _ = reference(w, v, 3, "tensor")
    assert torch.equal(q.prox_(w, v, None)[0], want_hat)
