"""QuantOptimizer(fused=True) against the unfused step (kernels.fused_adam_lab_step_)."""

import copy

import pytest
import torch
from torch import nn

from bench.optim import QuantOptimizer
from tests.bench.test_optim import batches, tiny_mlp, weights


def run(method, *, fused, backend="auto", granularity="tensor", steps=6, track_flips=False):
    model = tiny_mlp()
    opt = QuantOptimizer(weights(model), torch.optim.Adam(model.parameters(), lr=1e-2), method,
                         granularity=granularity, backend=backend, fused=fused)
    flips = []
    for x, y in batches(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step(track_flips=track_flips)
        flips.append(dict(opt.last_flips))
    return model, opt, flips


@pytest.mark.parametrize("method", ["lab", "bwn"])
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_torch_reference_is_the_unfused_step_bit_for_bit(method, granularity):
    a, opt_a, flips_a = run(method, fused=False, granularity=granularity, track_flips=True)
    b, opt_b, flips_b = run(method, fused=True, backend="torch", granularity=granularity,
                            track_flips=True)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    for name, _ in weights(a):
        assert torch.equal(opt_a.latent(name), opt_b.latent(name))
    assert flips_a == flips_b
    # Adam's own state of the quantized weights stays what Adam would hold.
    for (_, pa), (_, pb) in zip(weights(a), weights(b), strict=True):
        state_a, state_b = opt_a.base.state[pa], opt_b.base.state[pb]
        assert float(state_a["step"]) == float(state_b["step"]) == 6
        assert state_b["step"].device == state_a["step"].device
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(state_a[key], state_b[key])


def regression_run(method, *, fused, device="cpu", steps=5):
    """A small tanh regression: every gradient is well above rounding noise.

    Classification losses do not do here: the softmax gradient sums to 0 over classes, so a hidden
    unit whose binarized outgoing weights all share one sign gets a gradient of pure rounding
    noise (~1e-9), and Adam's normalized step turns a 1-ulp difference in w_hat into an lr-sized
    move of the latent weight. Comparing to float32 rounding needs gradients that carry signal.
    """
    gen = torch.Generator(device=device).manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.Tanh(), nn.Linear(30, 5)).to(device)
    opt = QuantOptimizer([("0.weight", model[0].weight), ("2.weight", model[2].weight)],
                         torch.optim.Adam(model.parameters(), lr=1e-2), method,
                         backend="triton", fused=fused)
    for _ in range(steps):
        x = torch.randn(64, 20, generator=gen, device=device)
        y = torch.randn(64, 5, generator=gen, device=device)
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, opt


def assert_same_trajectory(a, opt_a, b, opt_b):
    for name in ("0.weight", "2.weight"):
        p_a, p_b = dict(a.named_parameters())[name], dict(b.named_parameters())[name]
        # Latents and v differ by a few float32 ulps per step (tests/kernels/test_fused.py).
        torch.testing.assert_close(opt_b.latent(name), opt_a.latent(name), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(opt_b.base.state[p_b]["exp_avg_sq"],
                                   opt_a.base.state[p_a]["exp_avg_sq"], rtol=1e-5, atol=1e-12)
        assert torch.equal(torch.sign(p_b), torch.sign(p_a))
        assert opt_b.alphas()[name] == pytest.approx(opt_a.alphas()[name], rel=1e-5)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):  # biases: the base step
        torch.testing.assert_close(pb, pa, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["lab", "bwn"])
def test_triton_matches_the_unfused_step_to_float32_rounding(method):
    assert_same_trajectory(*regression_run(method, fused=False), *regression_run(method, fused=True))


def test_state_dict_resumes_into_the_unfused_optimizer():
    b, opt_b, _ = run("lab", fused=True, backend="torch", steps=3)
    c = copy.deepcopy(b)
    opt_c = QuantOptimizer(weights(c), torch.optim.Adam(c.parameters(), lr=1e-2), "lab")
    opt_c.load_state_dict(copy.deepcopy(opt_b.state_dict()))
    for x, y in batches(3):
        for model, opt in ((b, opt_b), (c, opt_c)):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    for pb, pc in zip(b.parameters(), c.parameters(), strict=True):
        assert torch.equal(pb, pc)


def test_unsupported_setups_are_refused_with_the_reason():
    model = tiny_mlp()

    def make(method="lab", base=None, **kwargs):
        base = base or torch.optim.Adam(model.parameters(), lr=1e-2)
        return QuantOptimizer(weights(model), base, method, fused=True, **kwargs)

    with pytest.raises(ValueError, match=r"needs torch.optim.Adam as base, got SGD"):
        make(base=torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match=r"amsgrad=True"):
        make(base=torch.optim.Adam(model.parameters(), amsgrad=True))
    with pytest.raises(ValueError, match=r"weight_decay=0, got 0.1"):
        make(base=torch.optim.Adam(model.parameters(), weight_decay=0.1))
    with pytest.raises(ValueError, match=r"curvature='auto'"):
        make(curvature="own")
    with pytest.raises(ValueError, match=r"binary methods with a learned scale.*'lat'"):
        make("lat")
    with pytest.raises(ValueError, match=r"binary methods with a learned scale.*'bc-scaled'"):
        make("bc-scaled")


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["lab", "bwn"])
def test_cuda_fused_step_matches_the_unfused_step(method):
    assert torch.cuda.is_available(), "the gpu tests need a CUDA device"
    unfused = regression_run(method, fused=False, device="cuda")
    fused = regression_run(method, fused=True, device="cuda")
    assert fused[0][0].weight.is_cuda
    assert_same_trajectory(*unfused, *fused)
