"""Every registered method trains end to end on an image model and a language model."""

import math

import pytest

from bench.config import RunConfig
from bench.methods import METHODS, parse_layer_methods, resolve_layers
from bench.train import run

TINY_MLP = dict(model="mlp", hidden=16, layers=2, epochs=1, steps=3, eval_limit=200)
TINY_LSTM = dict(model="lstm", dataset="pysrc", hidden=16, seq_len=20, batch_size=8, epochs=1,
                 steps=3, train_limit=4000, eval_limit=400)


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("shape", [TINY_MLP, TINY_LSTM], ids=["mlp", "lstm"])
def test_every_method_runs_end_to_end(method, shape):
    result = run(RunConfig(method=method, **shape))
    m = result.metrics
    assert m["diverged"] == 0 and m["epochs_run"] == 1
    loss = m["test_xent"] if "test_xent" in m else m["test_loss"]
    assert math.isfinite(loss)
    expected_bits = {"fp": 32, "amp": 16, "laq": 3, "twn": 2, "ttq": 2, "lat": 2,
                     "lat-approx": 2}.get(method, 1)
    if method != "mixed":
        assert m["bits_per_weight"] == expected_bits
    else:  # first and last layer 8-bit (the LSTM has only those two), the rest 1-bit
        assert 1 < m["bits_per_weight"] <= 8


def test_mixed_rules_pick_layers_by_name_and_position():
    names = ["features.1.weight", "features.4.weight", "out.weight"]
    specs = resolve_layers("mixed", names, layer_methods="@first=laq:8;features.*=bwn;*=lab")
    assert [specs[n].method.name for n in names] == ["laq", "bwn", "lab"]
    assert specs[names[0]].bits == 8 and specs[names[0]].bits_per_weight == 8.0
    with pytest.raises(ValueError, match="matches no rule"):
        resolve_layers("mixed", names, layer_methods="features.*=lab")
    assert parse_layer_methods("*=laq:4:log")[0].levels == "log"


def test_mixed_bits_per_weight_is_the_size_weighted_mean():
    cfg = RunConfig(method="mixed", layer_methods="@first=laq:8;*=lab", **TINY_MLP)
    m = run(cfg).metrics
    sizes = [784 * 16, 16 * 16, 16 * 10]  # first layer 8-bit, the other two 1-bit
    assert m["bits_per_weight"] == pytest.approx((8 * sizes[0] + sizes[1] + sizes[2]) / sum(sizes))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_autocast_dtypes_run(dtype):
    result = run(RunConfig(method="lab", dtype=dtype, **TINY_MLP))
    assert math.isfinite(result.metrics["test_loss"])


def test_squared_hinge_is_the_papers_l2_svm_loss():
    import torch

    from bench.train import loss_fn

    logits = torch.tensor([[0.5, -2.0, 1.5], [0.0, 0.2, -0.3]])
    target = torch.tensor([2, 0])
    t = torch.tensor([[-1.0, -1, 1], [1, -1, -1]])
    expected = torch.clamp(1 - t * logits, min=0).square().mean()  # mean over batch x classes
    assert loss_fn("sq-hinge", logits, target).item() == pytest.approx(expected.item())
    assert math.isfinite(run(RunConfig(method="lab", loss="sq-hinge", **TINY_MLP))
                         .metrics["test_loss"])
