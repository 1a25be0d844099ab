"""fused_adam_lab_step_ on CPU in C++: it matches the torch reference (torch's Adam op for op, the
clip, then `prox_binary`) to float32 rounding with the same signs, and "auto" picks it on CPU.

The extension is built here with ``required=True``: a broken build fails these tests, it does not
skip them (CI installs build-essential).
"""

import math
import warnings

import pytest
import torch

from kernels import fused
from kernels._cpp import ExtensionBuildError
from kernels.fused import fused_adam_lab_step_, fused_cpp_available
from tests.kernels._cases import assert_fused_step_matches, scale_view

# Odd sizes; (3, 40000) and (16385,) cross the extension's 16384-element pieces, so a group's sums
# come from several pieces (and threads); (8, 6) with "gate" is an LSTM matrix's 4 gate blocks.
SHAPES = [(7, 13), (2500,), (1,), (5, 3, 3, 3), (16385,), (3, 40000), (8, 6)]
GRANULARITIES = ["tensor", "tensor", "channel", "channel", "tensor", "channel", "gate"]
# torch's CPU sqrt (AVX-512) is not always correctly rounded, the C++ one is: v and m agree
# exactly, the latents and scales to a few float32 ulps.
STATE_TOL = {"rtol": 1e-6, "atol": 1e-7}


@pytest.fixture(scope="module", autouse=True)
def built():
    fused._extension(required=True)


def view(t, gran):
    """What `bench.optim.QuantTarget.grouped` hands the kernels: "gate" is 4 channel blocks."""
    return (t.reshape(4, -1), "channel") if gran == "gate" else (t, gran)


def problem(seed, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    latents = [(torch.randn(s, generator=gen) * scale).clamp(-1, 1) for s in SHAPES]
    grads = [[torch.randn(s, generator=gen) for s in SHAPES] for _ in range(4)]  # 4 steps
    return latents, grads


def run(backend, latents, grads, curvature, clip=1.0, lr=0.05, beta1=0.9):
    views = [view(w.clone(), gran) for w, gran in zip(latents, GRANULARITIES, strict=True)]
    ws = [v[0] for v in views]
    grans = [v[1] for v in views]
    ms = [torch.zeros_like(w) for w in ws]
    vs = [torch.zeros_like(w) for w in ws]
    outs = []
    for step, gs in enumerate(grads, start=1):
        gs = [g.reshape(w.shape) for g, w in zip(gs, ws, strict=True)]
        outs.append(fused_adam_lab_step_(ws, gs, ms, vs, steps=[step] * len(ws), lr=lr,
                                         beta1=beta1, granularity=grans, curvature=curvature,
                                         clip=clip, backend=backend))
    return ws, ms, vs, outs, grans


@pytest.mark.parametrize("clip", [1.0, 0.3, math.inf], ids=["clip1", "clip-binds", "no-clip"])
@pytest.mark.parametrize("curvature", [True, False], ids=["lab", "bwn"])
def test_cpp_matches_the_reference(curvature, clip):
    latents, grads = problem(2)
    got = run("cpp", latents, grads, curvature, clip)
    want = run("torch", latents, grads, curvature, clip)
    assert_fused_step_matches(got, want, lambda a, b: torch.equal(torch.signbit(a), torch.signbit(b)))
    # The last w_hat is alpha * sign(latent) exactly, sign(0) = +1, alpha of its own group.
    for w, w_hat, alpha, gran in zip(got[0], *got[3][-1], got[4], strict=True):
        assert torch.equal(w_hat, torch.where(w >= 0, 1.0, -1.0) * scale_view(alpha, w, gran))
    if clip < 1:
        assert any(bool((w.abs() == clip).any()) for w in got[0])  # the clip did act
        assert all(bool((w.abs() <= clip).all()) for w in got[0])


def test_lerp_with_a_large_weight_follows_torch():
    """beta1 < 0.5: torch's lerp takes its other branch (end - (end - start) * (1 - weight))."""
    latents, grads = problem(3)
    got = run("cpp", latents, grads, True, beta1=0.25)
    want = run("torch", latents, grads, True, beta1=0.25)
    for a, b in zip(got[1], want[1], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_results_do_not_depend_on_the_thread_count():
    latents, grads = problem(4)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run("cpp", latents, grads, True)
        torch.set_num_threads(max(2, threads))
        many = run("cpp", latents, grads, True)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip([*one[0], *one[3][-1][1]], [*many[0], *many[3][-1][1]], strict=True):
        assert torch.equal(a, b)


def test_auto_picks_cpp_on_cpu(monkeypatch):
    assert fused_cpp_available()
    calls = []
    real = fused._fused_adam_lab_step_cpp
    monkeypatch.setattr(fused, "_fused_adam_lab_step_cpp",
                        lambda *a: calls.append(1) or real(*a))
    w, g = torch.tensor([0.5, -0.25]), torch.tensor([1.0, 1.0])
    _, alphas = fused_adam_lab_step_([w], [g], [torch.zeros(2)], [torch.zeros(2)], steps=[1],
                                     lr=0.1, curvature=False)
    assert calls == [1]
    assert torch.equal(w, torch.tensor([0.4, -0.35])) and alphas[0].item() == pytest.approx(0.375)


def test_strided_gradients_are_read_correctly_and_the_clip_holds():
    w = torch.full((6, 5), 0.99)
    g = -torch.ones(5, 6).t()  # strided: (6, 5) view of a (5, 6) tensor
    m, v = torch.zeros(6, 5), torch.zeros(6, 5)
    w_hats, alphas = fused_adam_lab_step_([w], [g], [m], [v], steps=[1], lr=0.1, backend="cpp")
    assert torch.equal(w, torch.ones(6, 5)) and torch.equal(w_hats[0], w)
    assert torch.equal(alphas[0], torch.tensor(1.0))


def test_a_failed_build_falls_back_to_torch_with_one_warning(monkeypatch, tmp_path):
    broken = tmp_path / "fused_adam_lab.cpp"
    broken.write_text("#error deliberately broken for the test\n")
    monkeypatch.setattr(fused, "_SOURCE", broken)
    monkeypatch.setattr("kernels._cpp._WARNED", set())
    latents, grads = problem(5)
    with pytest.warns(RuntimeWarning, match="fused_adam_lab: building the C\\+\\+ extension"):
        got = run("auto", latents, grads, True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        got = run("auto", latents, grads, True)
    want = run("torch", latents, grads, True)
    for a, b in zip([*got[0], *got[3][-1][0]], [*want[0], *want[3][-1][0]], strict=True):
        assert torch.equal(a, b)  # the reference itself, bit for bit
    with pytest.raises(ExtensionBuildError, match="deliberately broken"):
        run("cpp", latents, grads, True)


@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_out_receives_w_hat_and_changes_nothing_else(backend):
    latents, grads = problem(6)
    grans = ["tensor", "tensor", "channel", "channel", "tensor", "channel", "channel"]
    results = []
    for use_out in (False, True):
        ws = [w.clone() for w in latents]
        ms, vs = [torch.zeros_like(w) for w in ws], [torch.zeros_like(w) for w in ws]
        outs = [torch.full_like(w, 7.0) for w in ws] if use_out else None
        w_hats, alphas = fused_adam_lab_step_(ws, grads[0], ms, vs, steps=[1] * len(ws), lr=0.05,
                                              granularity=grans, backend=backend, out=outs)
        if use_out:
            assert all(a is b for a, b in zip(w_hats, outs, strict=True))
        results.append([*ws, *w_hats, *alphas])
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_out_must_fit_and_not_be_an_input():
    w, g, m, v = (torch.rand(2, 3) for _ in range(4))
    ok = {"steps": [1], "lr": 0.1}
    with pytest.raises(ValueError, match=r"out\[0\]: expected a contiguous float32 tensor of shape"):
        fused_adam_lab_step_([w], [g], [m], [v], out=[torch.empty(3, 2)], **ok)
    with pytest.raises(ValueError, match=r"out\[0\]: must not be one of the inputs"):
        fused_adam_lab_step_([w], [g], [m], [v], out=[g], **ok)
    with pytest.raises(ValueError, match=r"out: expected 1 entries"):
        fused_adam_lab_step_([w], [g], [m], [v], out=[], **ok)


def test_unknown_backends_are_named():
    w = torch.zeros(3)
    with pytest.raises(ValueError, match=r"backend: expected one of .*'cpp'"):
        fused_adam_lab_step_([w], [w], [w.clone()], [w.clone()], steps=[1], lr=0.1, backend="c")
