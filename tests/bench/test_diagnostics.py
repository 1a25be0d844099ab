"""Gradient diagnostics against independent truth: raw vs clipped gradients, the gradient through
time against autograd on a hand-written loop, growth on linear recurrences of known spectral
norm, fixed-scale BinaryConnect and the divergence rules."""

import math

import pytest
import torch
import torch.nn.functional as F

import bench.train as train
from bench.config import ConfigError, RunConfig
from bench.diagnostics import bptt_growth, bptt_profile, lstm_bptt
from bench.models import build_model
from bench.optim import QuantOptimizer
from bench.train import run

TINY_LSTM = dict(model="lstm", dataset="pysrc", method="bc", hidden=32, seq_len=20, batch_size=16,
                 epochs=1, steps=1, train_limit=60_000, eval_limit=10_000)


def test_raw_gradient_does_not_depend_on_the_clip_and_the_received_one_does():
    free = run(RunConfig(**TINY_LSTM, clip="none")).history[-1]
    clamped = run(RunConfig(**TINY_LSTM, clip="gate:1e-6")).history[-1]
    normed = run(RunConfig(**TINY_LSTM, clip="norm:1e-4")).history[-1]
    for name in ("lstm.layers.0.w_ih", "lstm.layers.0.w_hh"):
        raw = free[f"grad_norm_raw/{name}"]
        assert raw > 0
        assert clamped[f"grad_norm_raw/{name}"] == pytest.approx(raw, rel=1e-6)
        assert normed[f"grad_norm_raw/{name}"] == pytest.approx(raw, rel=1e-6)
        assert free[f"grad_norm/{name}"] == raw  # nothing clipped: received = raw
        assert clamped[f"grad_norm/{name}"] < 0.5 * raw
        assert normed[f"grad_norm/{name}"] < 0.5 * raw
    assert clamped["clip_frac"] > 0 and normed["clip_frac"] == 1.0
    # the global norm clip scales every gradient to total norm 1e-4
    total = math.hypot(*(normed[f"grad_norm/lstm.layers.0.{w}"] for w in ("w_ih", "w_hh")))
    assert total <= 1e-4 * (1 + 1e-5)


def test_an_unbinding_gate_clip_gives_the_same_gradient():
    free = run(RunConfig(**TINY_LSTM, clip="none")).history[-1]
    loose = run(RunConfig(**TINY_LSTM, clip="gate:1e6")).history[-1]
    for name in ("lstm.layers.0.w_ih", "lstm.layers.0.w_hh"):
        assert loose[f"grad_norm/{name}"] == pytest.approx(free[f"grad_norm/{name}"], rel=1e-6)
    assert loose["clip_frac"] == 0


def _manual_lstm_profile(model, x, y):
    """The same LSTM written out again, with retain_grad on every h_t (independent of
    bench.layers' loop and of bench.diagnostics)."""
    layer = model.lstm.layers[0]
    hidden = layer.w_hh.shape[1]
    h = torch.zeros(x.shape[0], hidden)
    c = torch.zeros(x.shape[0], hidden)
    hs = []
    for t in range(x.shape[1]):
        g = layer.w_ih[:, x[:, t]].t() + layer.bias + h @ layer.w_hh.t()
        i, f, ct, o = g.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(ct)
        h = torch.sigmoid(o) * torch.tanh(c)
        h.retain_grad()
        hs.append(h)
    logits = model.head(h)
    F.cross_entropy(logits, y[:, -1]).backward()
    return [float(hh.grad.norm()) for hh in hs]


def test_lstm_bptt_profile_matches_autograd_on_a_hand_written_loop():
    torch.manual_seed(0)
    cfg = RunConfig(model="lstm", dataset="pysrc", method="fp", hidden=12)
    model = build_model(cfg, classes=7)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    x = torch.randint(0, 7, (3, 9))
    y = torch.randint(0, 7, (3, 9))
    model.lstm.gate_clip = 1e-9  # the profile must ignore clipping
    got = lstm_bptt(model, x, y)
    assert all(p.grad is None for p in model.parameters())  # .grad untouched
    expected = _manual_lstm_profile(model, x, y)
    assert got["layer"] == "lstm.layers.0" and got["t"] == list(range(1, 10))
    assert got["grad_norm"] == pytest.approx(expected, rel=1e-5)
    assert model.lstm.gate_clip == 1e-9 and model.lstm.hidden_states is None  # restored


@pytest.mark.parametrize(("norm", "grows"), [(3.0, True), (0.3, False)])
def test_bptt_growth_of_a_linear_recurrence(norm, grows):
    """h_t = W h_{t-1} + x_t with ||W||_2 = norm and W symmetric (so ||W^k v|| moves by the
    eigenvalues): the gradient of the last step's loss grows going back in time iff norm > 1."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    w = q @ torch.diag(torch.full((16,), norm)) @ q.t()  # every singular value = norm
    h0 = torch.zeros(4, 16, requires_grad=True)
    x = torch.randn(20, 4, 16, generator=g)
    h = h0
    hs = []
    for t in range(20):
        h = h @ w.t() + x[t]
        hs.append(h)
    loss = h.square().sum()
    profile = bptt_profile(loss, hs)
    growth = bptt_growth(profile)
    assert growth == pytest.approx(norm, rel=1e-4)  # exactly the norm: every step multiplies by W^T
    assert (growth > 1) == grows


def test_bptt_growth_ignores_zero_and_nonfinite_pairs():
    assert bptt_growth([4.0, 2.0, 1.0]) == 2.0
    assert bptt_growth([1.0, 0.0, 2.0, 1.0]) == 1.0  # 1/0 left out; median of 0/2 and 2/1
    assert bptt_growth([math.inf, 3.0, 1.0]) == 3.0  # inf/3 left out
    assert math.isnan(bptt_growth([1.0]))


def test_lstm_run_logs_the_bptt_profile_and_whole_spectral_norm():
    logged = {}

    class Capture(train.NullRecorder):
        def log_dict(self, d, name):
            logged[name] = d

    result = run(RunConfig(**{**TINY_LSTM, "steps": 2}), Capture())
    row = result.history[-1]
    profile = logged["bptt/epoch-1.json"]
    assert len(profile["grad_norm"]) == TINY_LSTM["seq_len"]
    assert row["bptt_growth"] == profile["bptt_growth"]
    w_hh = row["spectral_whole/lstm.layers.0.w_hh"]
    blocks = [row[f"spectral/lstm.layers.0.w_hh.{g}"] for g in "ifco"]
    # stacking blocks: max block norm <= whole norm <= sqrt(sum of squared block norms)
    assert max(blocks) - 1e-4 <= w_hh <= math.sqrt(sum(b * b for b in blocks)) + 1e-4


# --- fixed_scale ----------------------------------------------------------------------------
def _step(method, w0, **kw):
    p = torch.nn.Parameter(w0.clone())
    opt = QuantOptimizer([{"param": p, **kw.pop("target", {})}],
                         torch.optim.Adam([p], lr=0.01), method, **kw)
    for _ in range(3):
        opt.zero_grad()
        (p * torch.arange(p.numel(), dtype=p.dtype).reshape(p.shape).sin()).sum().backward()
        opt.step()
    return p.detach(), opt.targets[0].state["alpha"]


def test_fixed_scale_sqrt_n_is_binaryconnect_bit_for_bit():
    w0 = torch.randn(8, 25, generator=torch.Generator().manual_seed(1)) * 0.1
    bc, _ = _step("bc", w0)
    scaled, alpha = _step("bc-scaled", w0, fixed_scale=5.0)  # sqrt(fan-in 25)
    assert torch.equal(bc, scaled)
    assert float(alpha) == 1.0


def test_fixed_scale_is_per_gate_block_fan_in_and_frozen():
    w0 = torch.randn(4 * 16, 16, generator=torch.Generator().manual_seed(2)) * 0.1
    w, alpha = _step("bc-scaled", w0, fixed_scale=2.0, granularity="gate",
                     target={"gates": 4})
    assert alpha.shape == (4,) and torch.all(alpha == 2.0 / 4)  # 2 / sqrt(16)
    assert set(w.abs().unique().tolist()) == {0.5}


def test_fixed_scale_is_refused_for_every_other_method():
    assert RunConfig(method="bc-scaled", fixed_scale=2.0).fixed_scale == 2.0
    assert RunConfig(method="bc-scaled").fixed_scale is None  # default: mean|w| at init
    for method in ("bc", "lab", "bwn", "fp"):
        with pytest.raises(ConfigError, match="fixed_scale"):
            RunConfig(method=method, fixed_scale=2.0)
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ConfigError, match="fixed_scale"):
            RunConfig(method="bc-scaled", fixed_scale=bad)


# --- divergence rules -----------------------------------------------------------------------
def _run_with_loss(monkeypatch, value):
    real = train.loss_fn

    def fake(kind, logits, target):
        loss = real(kind, logits, target)
        return loss * 0 + value + 0 * loss  # keeps the graph, fixes the value

    monkeypatch.setattr(train, "loss_fn", fake)
    return run(RunConfig(method="fp", hidden=16, epochs=2, steps=30))


def test_a_loss_above_the_bound_is_divergence(monkeypatch):
    result = _run_with_loss(monkeypatch, 1e21)
    assert result.metrics["diverged"] == 1 and result.info["diverged_reason"] == "bound"


def test_a_loss_that_stays_far_above_chance_is_divergence(monkeypatch):
    result = _run_with_loss(monkeypatch, 4 * math.log(10))  # 4x chance, below the bound
    assert result.metrics["diverged"] == 1 and result.info["diverged_reason"] == "no_progress"
    assert result.metrics["epochs_run"] == 0


def test_a_loss_near_chance_is_not_divergence(monkeypatch):
    result = _run_with_loss(monkeypatch, 2 * math.log(10))
    assert result.metrics["diverged"] == 0 and result.info["diverged_reason"] == ""


def test_nonfinite_loss_reason():
    result = run(RunConfig(method="fp", optimizer="sgd", lr=1e30, hidden=16, epochs=2))
    assert result.metrics["diverged"] == 1
    assert result.info["diverged_reason"] in ("nonfinite", "bound")


def test_diagnostics_cost_benchmark_times_both_steps():
    from bench.speed import measure_diagnostics_cost

    cfg = RunConfig(model="lstm", dataset="pysrc", method="lab", hidden=16, seq_len=8,
                    batch_size=4, clip="gate:1e-6")
    row = measure_diagnostics_cost(cfg, steps=4, warmup=1, rounds=2)
    assert row["steps"] == 4 and row["plain_ms"] > 0 and row["diag_ms"] > 0
    assert row["diag_ratio"] == pytest.approx(row["diag_ms"] / row["plain_ms"])
    assert row["amortised_ratio"] == pytest.approx(1 + (row["diag_ratio"] - 1) / train.DIAG_EVERY)
