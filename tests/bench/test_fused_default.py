"""On CPU the default backend takes the fused C++ Adam + LAB step for lab/bwn runs with Adam, and
trains what the unfused torch step trains (same signs, latents to float32 rounding)."""

import pytest
import torch

import kernels.fused
from bench.config import RunConfig
from bench.train import build_run, loss_fn, seed_everything

SMALL = {"hidden": 48, "layers": 2, "batch_size": 16, "lr": 0.01}


def built(**values):
    seed_everything(0)
    return build_run(RunConfig(**{**SMALL, **values}), in_shape=(1, 28, 28), classes=10)


@pytest.mark.parametrize("values, fused", [
    ({"method": "lab"}, True),
    ({"method": "bwn", "granularity": "channel"}, True),
    ({"method": "lab", "backend": "torch"}, False),  # asked for the reference
    ({"method": "lab", "optimizer": "sgd"}, False),  # the fused step is Adam's
    ({"method": "lab", "weight_decay": 1e-4}, False),
    ({"method": "bc"}, False),  # no learned scale
    ({"method": "lat"}, False),  # ternary
    ({"method": "fp"}, False),
])
def test_auto_fuses_adam_with_learned_binary_scales(values, fused):
    assert built(**values).optimizer.fused is fused


def test_without_the_extension_auto_does_not_fuse(monkeypatch):
    monkeypatch.setattr(kernels.fused, "fused_cpp_available", lambda: False)
    assert built(method="lab").optimizer.fused is False


@pytest.mark.parametrize("method", ["lab", "bwn"])
def test_the_default_fused_step_trains_what_the_torch_step_trains(method):
    """Same losses, latents and signs of the binarized weights. (Not the biases of the Linear
    layers before batch norm: their gradient is rounding noise, which Adam scales up to +-lr.)"""
    runs = [built(method=method), built(method=method, backend="torch")]
    assert runs[0].optimizer.fused and not runs[1].optimizer.fused
    gen = torch.Generator().manual_seed(3)
    for _ in range(4):
        x = torch.randn(16, 1, 28, 28, generator=gen)
        y = torch.randint(10, (16,), generator=gen)
        losses = []
        for b in runs:
            b.optimizer.zero_grad()
            loss = loss_fn("xent", b.model(x), y)
            loss.backward()
            b.optimizer.step()
            losses.append(loss.item())
        assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    for t, u in zip(runs[0].optimizer.targets, runs[1].optimizer.targets, strict=True):
        torch.testing.assert_close(t.state["latent"], u.state["latent"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(t.state["alpha"], u.state["alpha"], rtol=1e-5, atol=0)
        assert torch.equal(torch.signbit(t.param), torch.signbit(u.param)), t.name
