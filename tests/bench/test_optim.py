"""QuantOptimizer against the reference semantics (docs/algorithms.md, "The step")."""

import copy

import pytest
import torch
from torch import nn

from bench.methods import METHODS, LayerSpec
from bench.optim import QuantOptimizer, QuantTarget


def tiny_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def batches(n=20, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 6, generator=g), torch.randint(3, (16,), generator=g))
            for _ in range(n)]


def weights(model):
    return [(f"{i}.weight", m.weight) for i, m in enumerate(model) if isinstance(m, nn.Linear)]


def train(model, opt, data, *, clip=None):
    for x, y in data:
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("make", [
    lambda p: torch.optim.Adam(p, lr=1e-2),
    lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
])
def test_fp_is_the_base_optimizer_bit_for_bit(make):
    a, b = tiny_mlp(), tiny_mlp()
    data = batches()
    train(a, make(a.parameters()), data)
    opt = QuantOptimizer(weights(b), make(b.parameters()), "fp")
    assert opt.targets == []
    train(b, opt, data)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def reference_lab_trajectory(model, data, alpha_rule, steps_lr=1e-2):
    """The reference code's step (docs/algorithms.md, "The step"), written independently of QuantOptimizer:
    a straight-through w_hat in the forward pass, Adam on W, clamp W to [-1, 1].

    The STE is written w_hat + (W - W.detach()): its value is w_hat exactly (W + (w_hat - W)
    is not, in floating point, and Adam's normalised step amplifies such 1e-8 differences on
    weights whose gradient is ~0 into lr-sized ones)."""
    lin = [m for m in model if isinstance(m, nn.Linear)]
    for m in lin:
        m.weight.data.clamp_(-1, 1)
    opt = torch.optim.Adam(model.parameters(), lr=steps_lr)
    hats = []
    for x, y in data:
        latent = {m: m.weight for m in lin}
        step_hats = []
        for m in lin:
            W = latent[m]
            with torch.no_grad():
                v = opt.state[W]["exp_avg_sq"] if W in opt.state else torch.zeros_like(W)
                d = v.sqrt() + 1e-8
                b = torch.where(W >= 0, 1.0, -1.0)
                alpha = alpha_rule(W, d)
            step_hats.append((alpha * b).clone())
        # functional forward with w_hat in place of W (gradient straight to W)
        h = x
        k = 0
        for m in model:
            if isinstance(m, nn.Linear):
                W = m.weight
                h = nn.functional.linear(h, step_hats[k] + (W - W.detach()), m.bias)
                k += 1
            else:
                h = m(h)
        loss = nn.functional.cross_entropy(h, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for m in lin:
                m.weight.clamp_(-1, 1)
        hats.append(step_hats)
    return hats


@pytest.mark.parametrize("method, alpha_rule", [
    ("lab", lambda W, d: (d * W.abs()).sum() / d.sum()),
    ("bwn", lambda W, d: W.abs().mean()),
    ("bc", lambda W, d: torch.ones(())),
])
def test_matches_an_independent_implementation_of_the_reference_step(method, alpha_rule):
    data = batches(12)
    ref_model = tiny_mlp()
    ref_hats = reference_lab_trajectory(ref_model, data, alpha_rule)
    model = tiny_mlp()
    opt = QuantOptimizer(weights(model), torch.optim.Adam(model.parameters(), lr=1e-2), method)
    for (x, y), expected in zip(data, ref_hats, strict=True):
        got = [p.detach().clone() for _, p in weights(model)]
        for g, e in zip(got, expected, strict=True):
            # alpha's float32 sums may differ in summation order only; a sign flip or a wrong
            # alpha would show as an O(alpha) error
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-7)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_first_step_alpha_is_mean_abs_w():
    model = tiny_mlp()
    latents = {n: p.detach().clone().clamp(-1, 1) for n, p in weights(model)}
    opt = QuantOptimizer(weights(model), torch.optim.Adam(model.parameters()), "lab")
    for name, alpha in opt.alphas().items():
        assert alpha == pytest.approx(latents[name].abs().mean().item(), rel=1e-6)


@pytest.mark.parametrize("base", ["adam", "sgd"])
def test_own_curvature_equals_adams_exp_avg_sq(base):
    model = tiny_mlp()
    if base == "adam":
        inner = torch.optim.Adam(model.parameters(), lr=1e-2)
    else:  # SGD has no second moment: compare against a side Adam fed the same gradients
        inner = torch.optim.SGD(model.parameters(), lr=0.05)
    opt = QuantOptimizer(weights(model), inner, "lab", curvature="own")
    side = {n: torch.zeros_like(p) for n, p in weights(model)}
    for x, y in batches(8):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        for n, p in weights(model):  # Adam's exp_avg_sq update, written out
            side[n].mul_(0.999).addcmul_(p.grad, p.grad, value=0.001)
        opt.step()
    for n, p in weights(model):
        if base == "adam":
            assert torch.equal(opt.curvature(n), inner.state[p]["exp_avg_sq"])
        assert torch.equal(opt.curvature(n), side[n])


def test_shared_curvature_reads_adam_state():
    model = tiny_mlp()
    inner = torch.optim.Adam(model.parameters(), lr=1e-2)
    opt = QuantOptimizer(weights(model), inner, "lab")
    train(model, opt, batches(3))
    for n, p in weights(model):
        assert opt.curvature(n) is inner.state[p]["exp_avg_sq"]
    # Adam with L2 weight decay adds wd*w to the gradient: v is no longer ours, keep our own
    model = tiny_mlp()
    opt = QuantOptimizer(weights(model), torch.optim.Adam(model.parameters(), weight_decay=0.1),
                         "lab")
    assert all("v" in opt.state[p] for _, p in weights(model))


@pytest.mark.parametrize("method", [m for m, spec in METHODS.items()
                                    if spec.quantized and spec.weights != "mixed"])
def test_latent_weights_stay_in_unit_box_and_levels_are_few(method):
    model = tiny_mlp()
    opt = QuantOptimizer(weights(model), torch.optim.Adam(model.parameters(), lr=0.5), method,
                         bits=3)
    train(model, opt, batches(6))
    spec = METHODS[method]
    for t in opt.targets:
        latent = opt.latent(t.name)
        assert latent.abs().max() <= 1.0
        values = t.param.detach().unique()
        if spec.weights == "sign":
            assert set(values.tolist()) <= {-1.0, 1.0}
        elif spec.weights == "binary":  # exactly +-alpha
            alpha = opt.alphas()[t.name]
            assert torch.allclose(values.abs(), torch.full_like(values, alpha))
        elif spec.weights in ("ternary", "ttq"):
            assert len(values) <= 3
        elif spec.weights == "mbit":
            assert len(values) <= 2 ** 3 - 1


def test_bc_sign_of_zero_is_plus_one():
    lin = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.0, -0.0, 0.5, -0.5], [0.1, 0.0, -0.2, 0.3]]))
    QuantOptimizer([("w", lin.weight)], torch.optim.SGD(lin.parameters(), lr=0.1), "bc")
    assert lin.weight.tolist() == [[1.0, 1.0, 1.0, -1.0], [1.0, 1.0, -1.0, 1.0]]


def test_gate_granularity_is_tensor_granularity_per_gate_block():
    torch.manual_seed(0)
    w = nn.Parameter(torch.rand(4 * 3, 5) - 0.5)
    blocks = w.detach().clone().reshape(4, 3, 5)
    v = torch.rand(4 * 3, 5)
    base = torch.optim.Adam([w], lr=1e-3)
    opt = QuantOptimizer([QuantTarget("w", w, LayerSpec(METHODS["lab"]), "gate", gates=4)], base,
                         curvature="own")
    opt.targets[0].state["v"].copy_(v)  # a known curvature, then requantize
    w_hat, alpha = opt.targets[0].quantizer.prox_(opt.latent("w"), opt.curvature("w"), None)
    d = v.sqrt().add(1e-8).reshape(4, 3, 5)
    for g in range(4):
        a = (d[g] * blocks[g].abs()).sum() / d[g].sum()
        torch.testing.assert_close(alpha[g], a)
        torch.testing.assert_close(w_hat.reshape(4, 3, 5)[g], a * torch.where(blocks[g] >= 0, 1., -1.))


def test_ttq_scale_gradients_match_autograd():
    torch.manual_seed(0)
    lin = nn.Linear(5, 4, bias=False)
    x = torch.randn(7, 5)
    opt = QuantOptimizer([("w", lin.weight)], torch.optim.SGD(lin.parameters(), lr=0.0), "ttq",
                         ttq_threshold=0.2)
    t = opt.targets[0]
    latent = opt.latent("w")
    # the same w_hat built differentiably in W_p and W_n
    wp = t.state["wp"].detach().clone().requires_grad_()
    wn = t.state["wn"].detach().clone().requires_grad_()
    delta = 0.2 * latent.abs().max()
    w_hat = torch.where(latent > delta, wp, torch.where(latent < -delta, -wn, torch.zeros(())))
    (x @ w_hat.t()).square().sum().backward()
    lin.weight.grad = None
    (lin(x)).square().sum().backward()
    g = lin.weight.grad.clone()
    t.quantizer.grad_(lin.weight.grad, t.state["latent"])
    torch.testing.assert_close(t.state["wp"].grad, wp.grad)
    torch.testing.assert_close(t.state["wn"].grad, wn.grad)
    expected = torch.where(latent > delta, wp.detach() * g,
                           torch.where(latent < -delta, wn.detach() * g, g))
    torch.testing.assert_close(lin.weight.grad, expected)


def test_state_dict_resumes_the_same_trajectory():
    data = batches(10)
    a = tiny_mlp()
    opt_a = QuantOptimizer(weights(a), torch.optim.Adam(a.parameters(), lr=1e-2), "lat-approx")
    train(a, opt_a, data)

    b = tiny_mlp()
    opt_b = QuantOptimizer(weights(b), torch.optim.Adam(b.parameters(), lr=1e-2), "lat-approx")
    train(b, opt_b, data[:5])
    saved_model, saved_opt = copy.deepcopy(b.state_dict()), copy.deepcopy(opt_b.state_dict())
    c = tiny_mlp(seed=5)
    c.load_state_dict(saved_model)
    opt_c = QuantOptimizer(weights(c), torch.optim.Adam(c.parameters(), lr=1e-2), "lat-approx")
    opt_c.load_state_dict(saved_opt)
    train(c, opt_c, data[5:])
    for pa, pc in zip(a.parameters(), c.parameters(), strict=True):
        torch.testing.assert_close(pa, pc, rtol=0, atol=0)


def test_compiled_binary_step_matches_eager():
    """`compile=True` fuses clip + binarize: the same signs exactly, scales to float32 rounding
    (the fused reduction sums in another order)."""
    from bench.quantizers import clip_and_binarize, clip_and_sign

    fused_binarize = torch.compile(clip_and_binarize, dynamic=True)
    fused_sign = torch.compile(clip_and_sign, dynamic=True)
    g = torch.Generator().manual_seed(0)
    for shape, gran in [((1000,), "tensor"), ((37, 29), "channel"), ((4, 3, 50), "channel")]:
        w = torch.rand(shape, generator=g) * 2.4 - 1.2
        w.view(-1)[:3] = torch.tensor([0.0, -0.0, 1.5])
        v = torch.rand(shape, generator=g) ** 4 * 1e-4
        for vv in (v, None):
            eager_w, fused_w = w.clone(), w.clone()
            hat_e, alpha_e = clip_and_binarize(eager_w, vv, gran, "torch")
            hat_c, alpha_c = fused_binarize(fused_w, vv, gran, "torch")
            assert torch.equal(eager_w, fused_w) and eager_w.abs().max() <= 1  # clipped in place
            assert torch.equal(torch.signbit(hat_e), torch.signbit(hat_c))
            assert not torch.signbit(hat_c.view(-1)[1])  # sign(-0.0) = +1
            torch.testing.assert_close(alpha_c, alpha_e, rtol=1e-6, atol=0)
        scale = torch.tensor(0.3)
        torch.testing.assert_close(fused_sign(w.clone(), scale), clip_and_sign(w.clone(), scale),
                                   rtol=0, atol=0)


def test_compiled_optimizer_trains_like_eager():
    model = tiny_mlp()
    opt = QuantOptimizer(weights(model), torch.optim.Adam(model.parameters(), lr=1e-2), "lab",
                         compile=True)
    train(model, opt, batches(5))
    for name, p in weights(model):
        assert torch.allclose(p.abs(), torch.full_like(p, opt.alphas()[name]))
        assert opt.latent(name).abs().max() <= 1


@pytest.mark.parametrize("method", ["lab", "lat", "bc"])
def test_closure_is_evaluated_at_w_hat_like_a_backward_before_step(method):
    """``step(closure)`` = backward outside then ``step()``: the gradient is the one at w_hat,
    and the loss returned is the loss at w_hat."""
    data = batches(6)
    a, b = tiny_mlp(), tiny_mlp()
    opt_a = QuantOptimizer(weights(a), torch.optim.Adam(a.parameters(), lr=1e-2), method)
    opt_b = QuantOptimizer(weights(b), torch.optim.Adam(b.parameters(), lr=1e-2), method)
    train(a, opt_a, data)
    for x, y in data:
        def closure(x=x, y=y):
            opt_b.zero_grad()
            loss = nn.functional.cross_entropy(b(x), y)
            loss.backward()
            return loss

        with torch.no_grad():
            at_w_hat = nn.functional.cross_entropy(b(x), y)
        b.train()
        loss = opt_b.step(closure)
        assert torch.isclose(loss, at_w_hat, rtol=1e-5), (loss, at_w_hat)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)


def test_compile_refuses_handwritten_triton_kernels():
    model = tiny_mlp()
    with pytest.raises(ValueError, match="compile=True"):
        QuantOptimizer(weights(model), torch.optim.Adam(model.parameters()), "lab", compile=True,
                       backend="triton")


def test_a_failed_compile_falls_back_to_the_eager_step(caplog, monkeypatch):
    """No C++ compiler (or an unsupported GPU) must not stop a run: the step runs eagerly."""
    from bench.quantizers import clip_and_binarize
    from kernels import _levels, compiled

    step = compiled(clip_and_binarize)  # as QuantOptimizer(compile=True) holds it

    def broken(*args):
        raise RuntimeError("InductorError: no working C++ compiler found")

    monkeypatch.setitem(_levels._COMPILED, clip_and_binarize, broken)
    w = torch.linspace(-1.5, 1.5, 11)
    expected = clip_and_binarize(w.clone(), None, "tensor", "torch")
    with caplog.at_level("WARNING", logger="kernels._levels"):
        got = step(w, None, "tensor", "torch")
        again = step(w.clone(), None, "tensor", "torch")  # eager for good: no second warning
    assert caplog.text.count("running it eagerly") == 1
    assert _levels._COMPILED[clip_and_binarize] is None
    torch.testing.assert_close(again, expected, rtol=0, atol=0)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
