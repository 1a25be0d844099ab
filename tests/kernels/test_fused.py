"""fused_adam_lab_step_: the reference is torch's Adam op for op; Triton matches it."""

import pytest
import torch

from kernels import fused_adam_lab_step_, prox_binary
from tests.kernels._cases import assert_fused_step_matches, scale_view

SHAPES = [(7, 13), (2500,), (1,), (5, 3, 3, 3)]
GRANULARITIES = ["tensor", "tensor", "channel", "channel"]
# Adam's state and the latents after a few steps: torch's CPU kernels may fuse a multiply and an
# add where the interpreter (numpy) rounds twice, so values differ by a few float32 ulps of
# numbers of order 1e-3 to 1 (m also passes near 0 through cancellation): 1e-6 relative or 1e-7.
STATE_TOL = {"rtol": 1e-6, "atol": 1e-7}


def problem(seed=0):
    gen = torch.Generator().manual_seed(seed)
    latents = [torch.randn(s, generator=gen).clamp(-1, 1) for s in SHAPES]
    grads = [[torch.randn(s, generator=gen) for s in SHAPES] for _ in range(4)]  # 4 steps
    return latents, grads


def run(backend, latents, grads, curvature):
    latents = [w.clone() for w in latents]
    ms = [torch.zeros_like(w) for w in latents]
    vs = [torch.zeros_like(w) for w in latents]
    outs = []
    for step, g in enumerate(grads, start=1):
        outs.append(fused_adam_lab_step_(latents, g, ms, vs, steps=[step] * len(latents), lr=0.05,
                                         granularity=GRANULARITIES, curvature=curvature,
                                         backend=backend))
    return latents, ms, vs, outs


def test_reference_is_torch_adam_then_clip_then_prox_binary_bit_for_bit():
    latents, grads = problem()
    params = [torch.nn.Parameter(w.clone()) for w in latents]
    adam = torch.optim.Adam(params, lr=0.05, foreach=False)
    ref_latents, _, ref_vs, outs = run("torch", latents, grads, curvature=True)
    for step_grads, (w_hats, alphas) in zip(grads, outs, strict=True):
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g
        adam.step()
        for p, gran, w_hat, alpha in zip(params, GRANULARITIES, w_hats, alphas, strict=True):
            p.data.clamp_(-1, 1)
            d = adam.state[p]["exp_avg_sq"].sqrt() + 1e-8
            want_hat, want_alpha = prox_binary(p.data, d, granularity=gran, backend="torch")
            assert torch.equal(w_hat, want_hat) and torch.equal(alpha, want_alpha)
    for p, w, v in zip(params, ref_latents, ref_vs, strict=True):
        assert torch.equal(p.data, w) and torch.equal(adam.state[p]["exp_avg_sq"], v)


@pytest.mark.parametrize("curvature", [True, False], ids=["lab", "bwn"])
def test_triton_matches_the_reference(curvature):
    latents, grads = problem(1)
    got = run("triton", latents, grads, curvature)
    want = run("torch", latents, grads, curvature)
    assert_fused_step_matches(got, want, lambda a, b: torch.equal(torch.sign(a), torch.sign(b)))
    # The last w_hat is alpha * sign(latent) exactly, sign(0) = +1.
    for w, w_hat, alpha, gran in zip(got[0], *got[3][-1], GRANULARITIES, strict=True):
        assert torch.equal(w_hat, torch.where(w >= 0, 1.0, -1.0) * scale_view(alpha, w, gran))


def test_latents_are_clipped_and_strided_gradients_are_read_correctly():
    w = torch.full((6, 5), 0.99)
    g = -torch.ones(5, 6).t()  # strided: (6, 5) view of a (5, 6) tensor
    m, v = torch.zeros(6, 5), torch.zeros(6, 5)
    w_hats, alphas = fused_adam_lab_step_([w], [g], [m], [v], steps=[1], lr=0.1, backend="triton")
    assert torch.equal(w, torch.ones(6, 5)) and torch.equal(w_hats[0], w)
    assert torch.equal(alphas[0], torch.tensor(1.0))


def test_bad_arguments_name_the_problem():
    w, m, v = torch.zeros(3), torch.zeros(3), torch.zeros(3)
    ok = {"steps": [1], "lr": 0.1}
    with pytest.raises(ValueError, match=r"grads: expected 1 entries \(one per latent\), got 2"):
        fused_adam_lab_step_([w], [w, w], [m], [v], **ok)
    with pytest.raises(TypeError, match=r"exp_avgs\[0\]: expected a float32 tensor, got torch.float16"):
        fused_adam_lab_step_([w], [w], [m.half()], [v], **ok)
    with pytest.raises(ValueError, match=r"exp_avg_sqs\[0\]: expected a contiguous tensor"):
        fused_adam_lab_step_([torch.zeros(2, 3)], [torch.zeros(2, 3)], [torch.zeros(2, 3)],
                             [torch.zeros(3, 2).t()], **ok)
    with pytest.raises(ValueError, match=r"grads\[0\]: expected shape \(3,\), got \(4,\)"):
        fused_adam_lab_step_([w], [torch.zeros(4)], [m], [v], **ok)
    with pytest.raises(ValueError, match=r"steps: expected >= 1, got 0"):
        fused_adam_lab_step_([w], [w], [m], [v], steps=[0], lr=0.1)
    with pytest.raises(ValueError, match=r"beta2: out of range, got 1.0"):
        fused_adam_lab_step_([w], [w], [m], [v], beta2=1.0, **ok)
    with pytest.raises(ValueError, match=r"latents\[0\]: expected a non-empty tensor"):
        fused_adam_lab_step_([torch.zeros(0)], [torch.zeros(0)], [torch.zeros(0)],
                             [torch.zeros(0)], **ok)
    with pytest.raises(ValueError, match=r"granularity: expected one of"):
        fused_adam_lab_step_([w], [w], [m], [v], granularity="row", **ok)
