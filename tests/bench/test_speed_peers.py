"""`labbench speed --peers`: torchao's PARQ timed beside labbench, and that its step quantizes.

The truth for PARQ's step is computed apart from PARQ: torch's own Adam on copies of the latent
weights, fed the gradients the model received, then sign(W) * mean|W| per tensor or per row (the
1-bit least-squares fit, BWN's closed form).
"""

import importlib.util

import pytest
import torch

from bench import speed
from bench.config import RunConfig
from bench.speed import PeersNotInstalled, build_parq, measure_speed
from bench.train import loss_fn, seed_everything
from labbench.cli import main

SMALL = {"model": "mlp", "dataset": "fashion-mnist", "method": "lab", "hidden": 24, "layers": 2,
         "batch_size": 8, "lr": 0.01}


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_parq_step_binarizes_the_adam_updated_latents(granularity):
    config = RunConfig.from_dict({**SMALL, "granularity": granularity})
    seed_everything(0)
    peer = build_parq(config, in_shape=(1, 28, 28), classes=10)
    shadows = [torch.nn.Parameter(p.detach().clone()) for p in peer.quantized]
    shadow_adam = torch.optim.Adam(shadows, lr=config.lr)  # the same defaults as labbench's Adam
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(8, 1, 28, 28, generator=gen)
        y = torch.randint(10, (8,), generator=gen)
        peer.optimizer.zero_grad()
        loss_fn("xent", peer.model(x), y).backward()
        for shadow, p in zip(shadows, peer.quantized, strict=True):
            shadow.grad = p.grad.clone()  # the gradient at w_hat, as both optimizers see it
        peer.optimizer.step()
        shadow_adam.step()
        for shadow, p in zip(shadows, peer.quantized, strict=True):
            latent = shadow.detach().reshape(p.shape[0], -1) if granularity == "channel" else \
                shadow.detach().reshape(1, -1)
            alpha = latent.abs().mean(dim=1, keepdim=True)
            want = torch.where(latent >= 0, alpha, -alpha).reshape(p.shape)
            torch.testing.assert_close(p.detach(), want)
            # Two values per group, +-alpha, up to rounding: PARQ writes w - (w - alpha*sign(w)).
            for row, a in zip(p.detach().reshape(latent.shape), alpha[:, 0], strict=True):
                assert set(torch.sign(row).tolist()) == {-1.0, 1.0}
                spread = row.abs().max() - row.abs().min()
                assert spread <= 4 * torch.finfo(torch.float32).eps * a


def test_speed_table_has_the_parq_row_interleaved_with_ours():
    config = RunConfig.from_dict(SMALL)
    rows = measure_speed(config, ["lab"], steps=4, warmup=1, rounds=2, peers=True)
    assert [r["method"] for r in rows] == ["fp", "lab", "torchao-parq"]
    assert rows[0]["ratio"] == 1.0
    parq = rows[2]
    assert parq["steps"] == 4 and parq["step_ms"] > 0
    assert parq["ratio"] == pytest.approx(parq["step_ms"] / rows[0]["step_ms"])
    assert parq["state_mb"] > rows[0]["state_mb"]  # PARQ keeps a latent copy of the weights


@pytest.fixture
def no_torchao(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(speed.importlib.util, "find_spec",
                        lambda name, *a: None if name.split(".")[0] == "torchao" else real(name, *a))


def test_missing_extra_is_named(no_torchao):
    with pytest.raises(PeersNotInstalled, match=r"pip install 'labbench\[peers\]'"):
        measure_speed(RunConfig.from_dict(SMALL), ["lab"], steps=2, warmup=0, peers=True)


def test_cli_peers_without_the_extra_exits_2_naming_it(no_torchao, capsys):
    code = main(["speed", "--peers", "--methods", "lab", "--hidden", "24", "--layers", "1",
                 "--timed-steps", "2", "--warmup", "0"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and "pip install 'labbench[peers]'" in err
