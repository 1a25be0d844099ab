"""Batch norm folded into the layer before it, ReLU fused with it: the same function, fewer calls."""

import pytest
import torch
from torch import nn
from torch.ao.nn.intrinsic import LinearReLU

from bench import deploy
from bench.config import RunConfig
from bench.deploy import PackedLinear
from bench.fold import fuse_for_inference
from tests.bench.test_deploy import MLP, config_for, round_trip


def _randomise_norms(model: nn.Module, seed: int = 0) -> None:
    """Running statistics and affine parameters far from the identity, so a wrong fold shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                if m.running_mean is not None:
                    m.running_mean.copy_(torch.randn(n, generator=g))
                    m.running_var.copy_(torch.rand(n, generator=g) * 3 + 0.1)
                if m.weight is not None:
                    m.weight.copy_(torch.randn(n, generator=g))
                    m.bias.copy_(torch.randn(n, generator=g))


@pytest.mark.parametrize("name", ["lab", "twn", "laq3", "fp"])
def test_a_loaded_mlp_folds_to_the_same_function(name, tmp_path):
    config = config_for(name, {"method": "laq", "bits": 3} if name == "laq3" else {}, MLP)
    _, data, loaded, _ = round_trip(config, tmp_path)
    _randomise_norms(loaded)
    norms = [n for n, m in loaded.named_modules() if isinstance(m, nn.BatchNorm1d)]
    relus = [n for n, m in loaded.named_modules() if isinstance(m, nn.ReLU)]
    folded = fuse_for_inference(loaded)
    assert sorted(folded.folded_batchnorms) == sorted(norms)  # every norm follows a linear layer
    assert sorted(folded.fused_relus) == sorted(relus)  # and every ReLU follows a norm
    assert not [m for m in folded.modules() if isinstance(m, nn.BatchNorm1d)]
    if name == "fp":  # torch's fused module, which int8 quantization turns into its fused kernel
        assert sum(isinstance(m, LinearReLU) for m in folded.modules()) == len(relus)
    else:  # the packed layers do the ReLU in their kernel call, except the output layer
        assert not [m for m in folded.modules() if isinstance(m, nn.ReLU)]
        fused = [m for m in folded.modules() if isinstance(m, PackedLinear)]
        assert [m.relu for m in fused] == [True] * len(relus) + [False]
    x, _ = next(data.eval_batches("test", 200, 0))
    with torch.no_grad():
        want, got = loaded(x), folded(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.99  # ties may flip
    # the original is untouched, and the packed bits are the same bits
    assert sum(isinstance(m, nn.BatchNorm1d) for m in loaded.modules()) == len(norms)
    packed = {n: m for n, m in folded.named_modules() if isinstance(m, deploy.PackedMatrix)}
    for n, m in loaded.named_modules():
        if isinstance(m, deploy.PackedMatrix):
            assert torch.equal(packed[n].codes, m.codes)


def test_the_folded_packed_layer_is_the_closed_form():
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, 2, (6, 10), generator=g, dtype=torch.uint8)
    scale, bias = torch.rand(6, generator=g) + 0.5, torch.randn(6, generator=g)
    layer = PackedLinear(deploy.PackedMatrix(deploy.pack_rows(codes, 1), scale,
                                             torch.tensor([-1.0, 1.0]), 1, 10, "torch"), bias)
    bn = nn.BatchNorm1d(6, eps=1e-3)
    net = nn.Sequential(layer, bn).eval()
    _randomise_norms(net)
    k = bn.weight.double() / torch.sqrt(bn.running_var.double() + 1e-3)
    folded = fuse_for_inference(net)
    (matrix,) = [m for m in folded.modules() if isinstance(m, deploy.PackedMatrix)]
    (new,) = [m for m in folded.modules() if isinstance(m, PackedLinear)]
    assert torch.equal(matrix.scale, (scale.double() * k).float())
    want_bias = (bias.double() - bn.running_mean.double()) * k + bn.bias.double()
    torch.testing.assert_close(new.bias, want_bias.float(), rtol=1e-6, atol=1e-6)
    w = (scale.double() * k)[:, None] * (codes.double() * 2 - 1)  # the float matrix, by hand
    x = torch.randn(4, 10, generator=g)
    torch.testing.assert_close(folded(x).double(), x.double() @ w.T + want_bias, rtol=1e-5, atol=1e-5)


def test_relu_fusion_takes_every_form_of_relu_and_nothing_else():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c, self.d = (nn.Linear(4, 4) for _ in range(4))

        def forward(self, x):
            x = torch.relu(self.a(x))
            x = nn.functional.relu(self.b(x))
            y = self.c(x)
            x = nn.functional.gelu(y) + torch.relu(y)  # c's output has two users: not fused
            return self.d(x).relu()

    net = Net().eval()
    fused = fuse_for_inference(net)
    assert len(fused.fused_relus) == 3
    kinds = {n: type(m).__name__ for n, m in fused.named_children()}
    assert kinds == {"a": "LinearReLU", "b": "LinearReLU", "c": "Linear", "d": "LinearReLU"}
    x = torch.randn(6, 4)
    with torch.no_grad():
        assert torch.equal(fused(x), net(x))  # no batch norm: nothing is reordered
    assert fuse_for_inference(net, relu=False).fused_relus == []


def test_only_norms_right_after_a_linear_layer_fold():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(3)  # right after the conv: folds
            self.conv2 = nn.Conv2d(3, 3, 3, padding=1)
            self.pool = nn.MaxPool2d(2)
            self.bn2 = nn.BatchNorm2d(3)  # after a pool: stays
            self.fc = nn.Linear(12, 5)
            self.bn3 = nn.BatchNorm1d(5, track_running_stats=False)  # batch statistics: stays
            self.fc2 = nn.Linear(5, 4)
            self.bn4 = nn.BatchNorm1d(4)  # fc2's output also feeds the residual: stays

        def forward(self, x):
            x = self.bn2(self.pool(self.conv2(self.bn1(self.conv(x)))))
            z = self.fc2(self.bn3(self.fc(x.flatten(1))))
            return self.bn4(z) + z

    net = Net().eval()
    _randomise_norms(net)
    folded = fuse_for_inference(net)
    assert folded.folded_batchnorms == ["bn1"] and folded.fused_relus == []
    x = torch.randn(8, 2, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-4, atol=1e-5)


def test_an_untraceable_model_is_refused_with_the_reason():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.bn = nn.Linear(3, 3), nn.BatchNorm1d(3)

        def forward(self, x):
            return self.bn(self.fc(x)) if x.sum() > 0 else x  # data-dependent control flow

    with pytest.raises(TypeError, match="cannot trace Branchy"):
        fuse_for_inference(Branchy().eval())


def test_an_lstm_passes_through_unchanged(tmp_path):
    config = RunConfig(model="lstm", dataset="pysrc", method="lab", hidden=16, seq_len=10,
                       batch_size=10, train_limit=5_000, eval_limit=1_000, backend="torch")
    _, data, loaded, _ = round_trip(config, tmp_path)
    folded = fuse_for_inference(loaded)
    assert folded.folded_batchnorms == [] and folded.fused_relus == []
    x, _ = next(data.eval_batches("test", 4, 10))
    with torch.no_grad():
        assert torch.equal(folded(x), loaded(x))
