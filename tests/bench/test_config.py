import pytest

from bench.config import MODEL_DEFAULTS, ConfigError, RunConfig


def test_model_defaults_fill_only_what_applies():
    lstm = RunConfig(model="lstm", dataset="pysrc")
    assert (lstm.hidden, lstm.layers, lstm.seq_len, lstm.clip, lstm.granularity) == (
        512, 1, 100, "gate:5", "gate")
    assert lstm.width is None
    mlp = RunConfig()
    assert (mlp.hidden, mlp.layers, mlp.seq_len, mlp.width, mlp.clip, mlp.granularity) == (
        2048, 3, None, None, "none", "tensor")
    assert RunConfig(method="laq").bits == 3 and RunConfig(method="laq").levels == "linear"
    assert RunConfig(method="bc").granularity is None


@pytest.mark.parametrize("changes, field", [
    ({"method": "lab", "bits": 3}, "bits"),
    ({"method": "bwn", "levels": "log"}, "levels"),
    ({"method": "bc", "granularity": "channel"}, "granularity"),
    ({"model": "mlp", "granularity": "gate"}, "granularity"),
    ({"model": "mlp", "seq_len": 10}, "seq_len"),
    ({"model": "mlp", "clip": "gate:5"}, "clip"),
    ({"model": "lstm", "dataset": "fashion-mnist"}, "dataset"),
    ({"model": "mlp", "dataset": "pysrc"}, "dataset"),
    ({"lr": -0.1}, "lr"),
    ({"epochs": 0}, "epochs"),
    ({"seed": -1}, "seed"),
    ({"bits": 9, "method": "laq"}, "bits"),
    ({"clip": "norm:-1"}, "clip"),
    ({"clip": "banana"}, "clip"),
    ({"schedule": "step:a:0.1"}, "schedule"),
    ({"method": "amp", "dtype": "float32"}, "dtype"),
    ({"lr": "fast"}, "lr"),
    ({"epochs": 2.5}, "epochs"),
    ({"method": "mixed", "layer_methods": "*=bnn"}, "layer_methods"),
    ({"method": "mixed", "layer_methods": "*=laq:12"}, "layer_methods"),
    ({"ttq_threshold": 0.1}, "ttq_threshold"),
])
def test_invalid_values_name_their_field(changes, field):
    with pytest.raises(ConfigError) as info:
        RunConfig(**changes)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}:")


def test_unknown_names_list_the_valid_choices():
    with pytest.raises(ConfigError, match=r"method: unknown value 'labb' \(did you mean 'lab'\?\)"
                                          r".*fp, amp, bc"):
        RunConfig(method="labb")
    with pytest.raises(ConfigError, match=r"model: .*mlp, cnn, resnet20, resnet18, lstm"):
        RunConfig(model="vgg")
    with pytest.raises(ConfigError, match=r"dataset: .*fashion-mnist.*pysrc.*text:PATH"):
        RunConfig(dataset="imagenet")


def test_from_dict_rejects_unknown_keys_with_a_hint():
    with pytest.raises(ConfigError, match=r"batchsize: unknown field \(did you mean 'batch_size'"):
        RunConfig.from_dict({"batchsize": 10})


def test_cell_id_ignores_only_the_seed():
    a = RunConfig(seed=0)
    assert a.cell_id() == RunConfig(seed=7).cell_id()
    assert a.cell_id() != RunConfig(lr=0.02).cell_id()
    assert len(a.cell_id()) == 12


def test_resolved_config_round_trips():
    cfg = RunConfig(model="lstm", dataset="pysrc", method="laq", schedule="paper")
    assert cfg.schedule == "exp:0.98:10"
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    assert set(MODEL_DEFAULTS) == {"mlp", "cnn", "resnet20", "resnet18", "lstm", "transformer"}


def test_ints_accepted_for_floats():
    assert RunConfig(lr=1).lr == 1.0 and isinstance(RunConfig(lr=1).lr, float)
