import pytest
import torch

from bench.config import RunConfig
from bench.layers import quantizable_weights
from bench.models import MODELS, build_model

SMALL = {
    "mlp": dict(hidden=16, layers=2),
    "cnn": dict(width=4, hidden=8),
    "resnet20": dict(width=4),
    "resnet18": dict(width=4),
    "lstm": dict(hidden=8, layers=2, seq_len=5),
    "transformer": dict(hidden=64, layers=1, seq_len=5),
}


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("method", ["fp", "lab2"])
def test_every_model_builds_runs_and_backpropagates(name, method):
    torch.manual_seed(0)
    lm = name in ("lstm", "transformer")
    cfg = RunConfig(model=name, dataset="pysrc" if lm else "cifar10", method=method, **SMALL[name])
    model = build_model(cfg, in_shape=() if lm else (3, 32, 32), classes=13 if lm else 10)
    x = torch.randint(13, (2, 5)) if lm else torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == ((2, 5, 13) if lm else (2, 10))
    out.square().mean().backward()
    found = quantizable_weights(model)
    assert found and all(q.param.grad is not None for q in found)


def test_paper_mlp_has_the_papers_shape():
    model = build_model(RunConfig(), in_shape=(1, 28, 28), classes=10)
    shapes = [tuple(q.param.shape) for q in quantizable_weights(model)]
    assert shapes == [(2048, 784), (2048, 2048), (2048, 2048), (10, 2048)]


def test_paper_cnn_layout():
    model = build_model(RunConfig(model="cnn", dataset="cifar10"), in_shape=(3, 32, 32), classes=10)
    shapes = [tuple(q.param.shape) for q in quantizable_weights(model)]
    assert [s[0] for s in shapes] == [128, 128, 256, 256, 512, 512, 1024, 1024, 10]
    assert shapes[6] == (1024, 512 * 4 * 4)  # three 2x2 max-pools: 32 -> 4


def test_resnet_depths():
    def convs(name):
        cfg = RunConfig(model=name, dataset="cifar10")
        m = build_model(cfg, in_shape=(3, 32, 32), classes=10)
        return sum(1 for q in quantizable_weights(m) if q.param.dim() == 4 and q.param.shape[-1] == 3)

    assert convs("resnet20") == 19 and convs("resnet18") == 17  # + the final Linear = 20 / 18
