"""prox_binary_multi: the same results as prox_binary per tensor, in a fixed number of launches."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kernels.multi
from kernels import prox_binary, prox_binary_multi
from tests.kernels._cases import assert_scales_close, cases, scale_view

# ResNet-18's 21 conv and linear weights (10 classes) at an eighth of the width: the interpreter
# costs per tile and per program, so sizes stay small; the count and spread of shapes matter.
RESNET18_EIGHTH = [(8, 3, 3, 3)] + [(8, 8, 3, 3)] * 4 + [
    (16, 8, 3, 3), (16, 16, 3, 3), (16, 8, 1, 1), (16, 16, 3, 3), (16, 16, 3, 3),
    (32, 16, 3, 3), (32, 32, 3, 3), (32, 16, 1, 1), (32, 32, 3, 3), (32, 32, 3, 3),
    (64, 32, 3, 3), (64, 64, 3, 3), (64, 32, 1, 1), (64, 64, 3, 3), (64, 64, 3, 3),
    (10, 64)]


def check(ws, ds, granularity):
    w_hats, alphas = prox_binary_multi(ws, ds, granularity=granularity, backend="triton")
    grans = [granularity] * len(ws) if isinstance(granularity, str) else granularity
    for w, d, g, w_hat, alpha in zip(ws, ds or [None] * len(ws), grans, w_hats, alphas,
                                     strict=True):
        want_hat, want_alpha = prox_binary(w, d, granularity=g, backend="torch")
        assert w_hat.shape == w.shape and w_hat.dtype == w.dtype
        assert_scales_close(alpha, want_alpha)
        assert torch.equal(torch.sign(w_hat), torch.sign(want_hat))
        sign = torch.where(w >= 0, 1.0, -1.0)
        assert torch.equal(w_hat, (sign * scale_view(alpha, w, g)).to(w.dtype))


@settings(max_examples=8)
@given(st.lists(cases(), min_size=1, max_size=4))
def test_matches_prox_binary_on_a_mixed_list(case_list):
    # Mixed dtypes, layouts, granularities, and d given or None: one batch per (w, d) dtype pair.
    check([c.w for c in case_list], [c.d for c in case_list], [c.granularity for c in case_list])


def test_a_resnet18_in_two_launches(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    ws = [torch.randn(s, generator=gen).clamp(-1, 1) for s in RESNET18_EIGHTH]
    ds = [torch.rand(s, generator=gen) + 1e-8 for s in RESNET18_EIGHTH]
    batches = []
    passes = kernels.multi.binary_passes
    monkeypatch.setattr(kernels.multi, "binary_passes",
                        lambda *args: batches.append(len(args[1])) or passes(*args))
    check(ws, ds, "tensor")
    assert batches == [len(ws)]  # one call of both passes (two launches) for all 21 weights


def test_empty_list_and_empty_tensors():
    assert prox_binary_multi([], backend="triton") == ([], [])
    w_hats, alphas = prox_binary_multi([torch.empty(0, 3), torch.ones(2)],
                                       granularity=["channel", "tensor"], backend="triton")
    assert w_hats[0].shape == (0, 3) and alphas[0].shape == (0,)
    assert torch.equal(w_hats[1], torch.ones(2)) and torch.equal(alphas[1], torch.tensor(1.0))


def test_auto_on_cpu_is_prox_binary_in_a_loop():
    ws = [torch.randn(3, 4), torch.randn(5)]
    got = prox_binary_multi(ws, granularity=["channel", "tensor"])
    for w, g, w_hat, alpha in zip(ws, ["channel", "tensor"], *got, strict=True):
        want = prox_binary(w, granularity=g)
        assert torch.equal(w_hat, want[0]) and torch.equal(alpha, want[1])


def test_bad_arguments_name_the_problem():
    w = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"ds: expected 2 entries \(one per weight\), got 1"):
        prox_binary_multi([w, w], [None])
    with pytest.raises(ValueError, match=r"granularity: expected 1 entries"):
        prox_binary_multi([w], granularity=["tensor", "tensor"])
    with pytest.raises(ValueError, match=r"weight 1: d: expected the shape of w \(3, 4\)"):
        prox_binary_multi([w, w], [None, torch.ones(4, 3)])
    with pytest.raises(TypeError, match=r"weight 0: w: .*got torch.int64"):
        prox_binary_multi([torch.ones(3, dtype=torch.int64)])
    with pytest.raises(ValueError, match=r"weight 0: granularity: .*'row'"):
        prox_binary_multi([w], granularity="row")
    with pytest.raises(ValueError, match=r"ws: expected one device"):
        prox_binary_multi([w, w.to("meta")])
