"""The cell-loop LSTM and the per-time-step gate-gradient clamp against independent references."""

import pytest
import torch
from torch import nn

from bench.layers import LSTM, quantizable_weights, sign_ste


def copy_into(ours: LSTM, ref: nn.LSTM) -> None:
    with torch.no_grad():
        for i, layer in enumerate(ours.layers):
            layer.w_ih.copy_(getattr(ref, f"weight_ih_l{i}"))
            layer.w_hh.copy_(getattr(ref, f"weight_hh_l{i}"))
            layer.bias.copy_(getattr(ref, f"bias_ih_l{i}") + getattr(ref, f"bias_hh_l{i}"))


@pytest.mark.parametrize("layers", [1, 2])
def test_cell_loop_matches_torch_lstm(layers):
    torch.manual_seed(0)
    ref = nn.LSTM(5, 7, num_layers=layers, batch_first=True)
    ours = LSTM(5, 7, layers)
    copy_into(ours, ref)
    x = torch.randn(3, 11, 5, requires_grad=True)
    out_ref, _ = ref(x)
    out = ours(x)
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
    grad_ref = torch.autograd.grad(out_ref.square().sum(), x)[0]
    grad = torch.autograd.grad(out.square().sum(), x)[0]
    torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-5)


def test_token_input_is_a_one_hot_lookup():
    torch.manual_seed(0)
    ours = LSTM(6, 4)
    tokens = torch.randint(6, (2, 5))
    one_hot = nn.functional.one_hot(tokens, 6).float()
    torch.testing.assert_close(ours(tokens), ours(one_hot))


def reference_clipped_lstm(x, w_ih, w_hh, b, c_clip):
    """A separate LSTM with Lasagne-style clipping via tensor hooks on each step's gate input."""
    h = x.new_zeros(x.shape[0], w_hh.shape[1])
    c = torch.zeros_like(h)
    outs = []
    for t in range(x.shape[1]):
        g = x[:, t] @ w_ih.t() + h @ w_hh.t() + b
        g.register_hook(lambda grad: grad.clamp(-c_clip, c_clip))
        i, f, cc, o = g.chunk(4, 1)
        c = f.sigmoid() * c + i.sigmoid() * cc.tanh()
        h = o.sigmoid() * c.tanh()
        outs.append(h)
    return torch.stack(outs, 1)


def test_gate_clip_clamps_every_time_step_like_hooks():
    torch.manual_seed(0)
    ours = LSTM(3, 4)
    for p in ours.parameters():
        nn.init.uniform_(p, -2, 2)  # large weights: gradients well beyond the clip
    ours.gate_clip = 0.05
    counts = torch.zeros(2)
    ours.clip_counts = counts
    x = torch.randn(2, 9, 3)
    layer = ours.layers[0]
    out = ours(x)
    loss = (out * torch.linspace(-3, 3, out.numel()).reshape(out.shape)).sum()
    grads = torch.autograd.grad(loss, [layer.w_ih, layer.w_hh, layer.bias])
    ref_params = [p.detach().clone().requires_grad_() for p in (layer.w_ih, layer.w_hh, layer.bias)]
    ref = reference_clipped_lstm(x, *ref_params, 0.05)
    ref_loss = (ref * torch.linspace(-3, 3, ref.numel()).reshape(ref.shape)).sum()
    ref_grads = torch.autograd.grad(ref_loss, ref_params)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)
    # and the clamp actually bit: without it the gradients differ
    ours.gate_clip = None
    unclipped = torch.autograd.grad((ours(x) * torch.linspace(-3, 3, out.numel()).reshape(
        out.shape)).sum(), [layer.w_hh])[0]
    assert not torch.allclose(unclipped, grads[1])
    assert 0 < counts[0] < counts[1] == 2 * 9 * 16


def test_sign_ste_gradient_is_the_indicator_of_unit_interval():
    x = torch.tensor([-1.5, -1.0, -0.2, 0.0, 1.0, 1.01], requires_grad=True)
    y = sign_ste(x)
    y.backward(torch.arange(1.0, 7.0))
    assert y.tolist() == [-1, -1, -1, 1, 1, 1]
    assert x.grad.tolist() == [0, 2, 3, 4, 5, 0]


def test_quantizable_weights_skip_full_precision_heads_and_mark_gates():
    from bench.config import RunConfig
    from bench.models import build_model

    lm = build_model(RunConfig(model="lstm", dataset="pysrc", hidden=8, layers=2), classes=11)
    found = quantizable_weights(lm)
    assert [q.name for q in found] == ["lstm.layers.0.w_ih", "lstm.layers.0.w_hh",
                                       "lstm.layers.1.w_ih", "lstm.layers.1.w_hh"]
    assert [q.recurrent for q in found] == [False, True, False, True]
    assert all(q.gates == 4 for q in found)
