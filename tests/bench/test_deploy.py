"""Models leave as files: pack -> safetensors -> load with packed layers gives the same network."""

import json
import math
from contextlib import nullcontext

import pytest
import torch
from safetensors.torch import save_file

import bench.train as train
from bench import deploy
from bench.config import RunConfig
from bench.data import load_dataset
from bench.deploy import ModelFileError, PackedLinear, PackedLSTM, decode_weight, encode_weight
from bench.train import build_run, evaluate, loss_fn, run
from kernels import prox_mbit

MLP = dict(model="mlp", hidden=48, layers=2, batch_size=50, train_limit=600, eval_limit=300,
           backend="torch")
LSTM = dict(model="lstm", dataset="pysrc", hidden=24, seq_len=20, batch_size=20, train_limit=20_000,
            eval_limit=2_000, backend="torch")
METHODS = {  # one per weight kind, plus granularities and mixed
    "lab": {}, "bwn": {}, "bc": {}, "bc-scaled": {}, "twn": {}, "lat": {}, "ttq": {},
    "laq2": {"method": "laq", "bits": 2}, "laq3": {"method": "laq", "bits": 3},
    "laq3-log": {"method": "laq", "bits": 3, "levels": "log"}, "laq8": {"method": "laq", "bits": 8},
    "lab-channel": {"method": "lab", "granularity": "channel"},
    "mixed": {"method": "mixed", "layer_methods": "@first=laq:3;@last=fp;*=twn"},
    "fp": {}, "amp": {}, "xnor": {},
}
LSTM_METHODS = {
    "lab": {}, "twn": {}, "ttq": {}, "laq2": {"method": "laq", "bits": 2},
    "laq3": {"method": "laq", "bits": 3},
    "mixed": {"method": "mixed", "layer_methods": "*w_ih=laq:3;*=lab"}, "fp": {}, "lab2": {},
    "lab-tensor": {"method": "lab", "granularity": "tensor"},
}


def config_for(name: str, options: dict, base: dict) -> RunConfig:
    values = {**base, "method": name, **options}
    return RunConfig(**values)


def trained(config: RunConfig, steps: int = 4):
    """A few steps of training (the same pieces as bench.train.run), in eval mode."""
    torch.manual_seed(config.seed)
    data = load_dataset(config.dataset, train_limit=config.train_limit, eval_limit=config.eval_limit)
    lm = data.task == "lm"
    built = build_run(config, in_shape=() if lm else data.shape,
                      classes=len(data.vocab) if lm else data.classes)
    batches = data.train_batches(config.batch_size, torch.Generator().manual_seed(0),
                                 config.seq_len or 0)
    for _, (x, y) in zip(range(steps), batches, strict=False):
        loss = loss_fn(config.loss, built.model(x), y)
        built.optimizer.zero_grad()
        loss.backward()
        built.optimizer.step()
    built.model.eval()
    return built, data


def round_trip(config, tmp_path, backend="torch"):
    built, data = trained(config)
    lm = data.task == "lm"
    path = deploy.save_model(built.model, config, tmp_path / "m.safetensors", built.optimizer,
                             in_shape=() if lm else data.shape,
                             classes=len(data.vocab) if lm else data.classes,
                             vocab=data.vocab if lm else None)
    return built, data, deploy.load(path, backend=backend), path


def check_same_network(built, data, loaded, config, *, exact=True):
    """Same predictions, loss to float32 rounding; with `exact`, the very same logits: the torch
    path multiplies by the very w_hat the network used, with the same matmuls and additions, except
    where a Linear's bias is added after the matmul (kernels' reference) instead of inside it
    (nn.Linear's addmm), which rounds differently."""
    x, y = next(data.eval_batches("test", 300 if data.task != "lm" else 16, config.seq_len or 0))
    with torch.no_grad():
        want, got = built.model(x), loaded(x)
    assert torch.equal(want.argmax(-1), got.argmax(-1))
    if exact and not any(isinstance(m, PackedLinear) and m.bias is not None for m in loaded.modules()):
        assert torch.equal(want, got)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss_fn("xent", got, y), loss_fn("xent", want, y), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", METHODS)
def test_mlp_round_trip_gives_the_same_network(name, tmp_path):
    config = config_for(METHODS[name].get("method", name), {k: v for k, v in METHODS[name].items()
                                                           if k != "method"}, MLP)
    built, data, loaded, path = round_trip(config, tmp_path)
    check_same_network(built, data, loaded, config)
    meta = loaded.deploy_metadata
    layers = json.loads(meta["layers"])
    quantized = {n: s for n, s in built.specs.items() if s.method.quantized}
    assert set(layers) == set(quantized)
    params = dict(built.model.named_parameters())
    with safe_tensors(path) as tensors:
        for name_, spec in layers.items():
            w_hat = params[name_].detach()
            # independent truth: the file's codes decode to w_hat, value for value
            decoded = decode_weight(tensors[f"{name_}.codes"], tensors[f"{name_}.scale"],
                                    tensors[f"{name_}.lut"], spec["bits"], tuple(spec["shape"]))
            assert torch.equal(decoded, w_hat)
            out, n = w_hat.shape[0], math.prod(w_hat.shape[1:])
            assert tensors[f"{name_}.codes"].dtype == torch.uint8
            assert tensors[f"{name_}.codes"].shape == (out, math.ceil(n * spec["bits"] / 8))
            assert spec["bits"] == quantized[name_].bits_per_weight
    for owner in {n.rpartition(".")[0] for n in layers}:
        assert isinstance(loaded.get_submodule(owner), PackedLinear)


class safe_tensors:
    def __init__(self, path):
        self.path = path

    def __enter__(self):
        return deploy.read_model(self.path)[0]

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("name", LSTM_METHODS)
def test_lstm_round_trip_gives_the_same_network(name, tmp_path):
    options = {k: v for k, v in LSTM_METHODS[name].items() if k != "method"}
    config = config_for(LSTM_METHODS[name].get("method", name.split("-")[0]), options, LSTM)
    built, data, loaded, _ = round_trip(config, tmp_path)
    assert isinstance(loaded.lstm, PackedLSTM) and json.loads(loaded.deploy_metadata["vocab"]) == data.vocab
    check_same_network(built, data, loaded, config)
    # feature input (not token indices) goes through the packed matmul of W_ih, not its columns
    feats = torch.randn(3, 5, len(data.vocab))
    with torch.no_grad():
        torch.testing.assert_close(loaded.lstm(feats), built.model.lstm(feats), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("base,name,options", [(MLP, "lab", {}), (MLP, "laq", {"bits": 2}),
                                               (MLP, "laq", {"bits": 3}), (LSTM, "lab", {}),
                                               (LSTM, "twn", {})])
def test_the_cpp_kernel_gives_the_same_predictions(base, name, options, tmp_path):
    """The C++ kernel (another order of additions) against the trained network."""
    config = config_for(name, options, base)
    built, data, loaded, _ = round_trip(config, tmp_path, backend="cpp")
    check_same_network(built, data, loaded, config, exact=False)


def test_ttq_per_channel_scales_and_channel_lut(tmp_path):
    """TTQ with one (W_p, W_n) per row: a 2-d lut, computed as two packed halves (float tolerance)."""
    config = config_for("ttq", {"granularity": "channel"}, MLP)
    built, data, loaded, path = round_trip(config, tmp_path)
    check_same_network(built, data, loaded, config, exact=False)
    tensors, _ = deploy.read_model(path)
    assert tensors["features.1.weight.lut"].shape == (48, 4)


def test_packed_columns_read_the_bits_of_one_column():
    g = torch.Generator().manual_seed(0)
    for bits in (1, 2, 3, 4, 5, 8):
        for groups in (None, 1, 7):  # one lut; one lut per block of rows (ttq per gate/channel)
            codes = torch.randint(0, 2 ** bits, (7, 13), generator=g, dtype=torch.uint8)
            scale = torch.rand(7, generator=g) + 0.5
            lut = torch.randn(*(() if groups is None else (groups,)), 2 ** bits, generator=g)
            m = deploy.PackedMatrix(deploy.pack_rows(codes, bits), scale, lut, bits, 13, "torch")
            rows = lut if groups is None else lut.repeat_interleave(7 // groups, dim=0)
            w = scale[:, None] * (rows[codes.long()] if groups is None
                                  else rows.gather(1, codes.long()))  # brute force: the matrix
            idx = torch.tensor([[0, 12, 5], [7, 7, 1]])
            got = m.columns(idx)
            assert got.shape == (2, 3, 7) and torch.equal(got, w.t()[idx]), (bits, groups)
            # the column copy follows the weights when they are loaded anew
            other = torch.randint(0, 2 ** bits, (7, 13), generator=g, dtype=torch.uint8)
            w = scale[:, None] * 2 * (rows[other.long()] if groups is None
                                      else rows.gather(1, other.long()))
            m.load_state_dict({"codes": deploy.pack_rows(other, bits), "scale": scale,
                               "lut": lut * 2})  # (copied into m's buffers, which are lut itself)
            assert torch.equal(m.columns(idx), w.t()[idx]), (bits, groups)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("levels", ["linear", "log"])
def test_codes_of_prox_mbit_weights_are_exact(bits, levels):
    """prox_mbit's output is on level_table's grid times alpha, for every bits and level kind."""
    w = torch.randn(33, 17, generator=torch.Generator().manual_seed(bits)) * 0.3
    w_hat, alpha = prox_mbit(w, bits=bits, levels=levels, granularity="channel", backend="torch")
    enc = encode_weight(w_hat, "mbit", bits, levels=levels, groups=33, alpha=alpha)
    assert torch.equal(decode_weight(enc["codes"], enc["scale"], enc["lut"], bits, (33, 17)), w_hat)
    assert len(enc["lut"]) == 2 ** bits


def test_weights_off_their_level_set_fail_loudly():
    w_hat = torch.where(torch.randn(6, 10) >= 0, 0.5, -0.5)
    encode_weight(w_hat, "binary", 1)  # on the set: fine
    w_hat[2, 3] = 0.25
    with pytest.raises(ValueError, match=r"w: the binary codes do not reproduce w_hat.*\(2, 3\)"):
        encode_weight(w_hat, "binary", 1, name="w")
    with pytest.raises(ValueError, match="do not reproduce"):
        encode_weight(torch.full((4, 4), float("nan")), "ternary", 2)


def test_bad_files_give_clear_errors(tmp_path):
    config = config_for("lab", {}, MLP)
    built, data = trained(config, steps=1)
    good = deploy.save_model(built.model, config, tmp_path / "good.safetensors", built.optimizer,
                             in_shape=data.shape, classes=10)
    blob = good.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        deploy.load(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        deploy.load(garbage)
    with pytest.raises(ModelFileError, match="no such model file"):
        deploy.load(tmp_path / "absent.safetensors")
    tensors, meta = deploy.read_model(good)
    other = tmp_path / "v2.safetensors"
    save_file(tensors, str(other), metadata={**meta, "format_version": "2"})
    with pytest.raises(ModelFileError, match=r"format version .2.; this labbench .* reads version 1"):
        deploy.load(other)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(ModelFileError, match="not a labbench model file"):
        deploy.load(plain)
    partial = tmp_path / "partial.safetensors"
    save_file({k: v for k, v in tensors.items() if k != "out.weight.scale"}, str(partial), metadata=meta)
    with pytest.raises(ModelFileError, match=r"out\.weight\.scale"):
        deploy.load(partial)


@pytest.fixture
def tracking(tmp_path):
    from mlflow.tracking import MlflowClient

    from bench.record import default_tracking_uri, ensure_experiment

    uri = default_tracking_uri(tmp_path / "runs")
    client = MlflowClient(tracking_uri=uri)
    return uri, client, ensure_experiment(client, "deploy-test", uri)


@pytest.mark.parametrize("base,method", [(MLP, "lab"), (MLP, "laq"), (LSTM, "twn")])
def test_exported_run_scores_its_recorded_test_metric(base, method, tracking, tmp_path, monkeypatch):
    """A run trained by bench.train.run, recorded in MLflow, exported by run id and loaded: its test
    metric equals the run's recorded one (one epoch, so the best epoch is the last)."""
    from bench.record import mlflow_run

    uri, client, exp = tracking
    config = RunConfig(**{**base, "method": method, "epochs": 1, "steps": 6})
    with mlflow_run(client, exp, run_name="r", tags={}) as recorder:
        result = run(config, recorder)
    out = deploy.export_model(recorder.run_id, tmp_path / "exported.safetensors", tracking_uri=uri)
    assert deploy.export_kind(recorder.run_id, uri) == "model"
    assert deploy.export_kind("deploy-test", uri) == "study"
    with pytest.raises(LookupError, match="neither"):
        deploy.export_kind("no-such-thing", uri)
    loaded = deploy.load(out, backend="torch")
    assert loaded.deploy_metadata["tag"] == "final" and loaded.deploy_metadata["epoch"] == "1"
    data = load_dataset(config.dataset, train_limit=config.train_limit, eval_limit=config.eval_limit)
    got = evaluate(loaded, data, "test", config, torch.device("cpu"), nullcontext)
    if data.task == "lm":
        assert got["xent"] == pytest.approx(result.metrics["test_xent"], rel=1e-6)
    else:
        assert got["acc"] == result.metrics["test_acc"]
        assert got["loss"] == pytest.approx(result.metrics["test_loss"], rel=1e-6)
    # the same file from the run's artifact folder (a run directory)
    run_dir = tmp_path / "runs" / "mlartifacts" / "deploy-test" / recorder.run_id
    again = deploy.export_model(str(run_dir), tmp_path / "again.safetensors")
    assert again.read_bytes() == out.read_bytes()
    # one epoch: the best epoch is the last, so only `final` is kept and `best` finds it
    best = deploy.export_model(recorder.run_id, tmp_path / "best.safetensors", tracking_uri=uri, tag="best")
    assert best.read_bytes() == out.read_bytes()
    # the command line: one `export` for a run's model and a study's archive
    from labbench.cli import main

    cli_out = tmp_path / "cli.safetensors"
    assert main(["export", recorder.run_id, "--out", str(cli_out), "--tracking-uri", uri]) == 0
    assert cli_out.read_bytes() == out.read_bytes()
    assert main(["export", "no-such-run", "--out", str(cli_out), "--tracking-uri", uri]) == 2
    assert main(["export", recorder.run_id, "--out", str(cli_out), "--tracking-uri", uri,
                 "--tag", "final"]) == 0 and cli_out.read_bytes() == out.read_bytes()


def test_diverged_models_are_not_saved(caplog):
    config = config_for("lab", {}, MLP)
    built, data = trained(config, steps=1)
    with torch.no_grad():
        built.model.out.bias.fill_(float("nan"))
    logged = []

    class Recorder:
        def log_artifact(self, local, artifact_path):
            logged.append((local, artifact_path))

    assert deploy.save_run_model(Recorder(), built.model, built.optimizer, config, data) is None
    assert logged == [] and "non-finite" in caplog.text
    with torch.no_grad():
        built.model.out.bias.zero_()
    assert deploy.save_run_model(Recorder(), built.model, built.optimizer, config, data, tag="best")
    assert [(p.rpartition("/")[2], a) for p, a in logged] == [("best.safetensors", "model")]


def test_a_packed_model_survives_a_checkpoint(tmp_path):
    """What a run keeps of its best epoch goes through torch.save/weights_only load unchanged."""
    config = config_for("laq", {"bits": 3}, MLP)
    built, data = trained(config, steps=2)
    packed = deploy.pack_run_model(built.model, built.optimizer, config, data, tag="best", epoch=2)
    torch.save({"best_model": packed.to_dict()}, tmp_path / "ckpt.pt")
    again = deploy.PackedModel.from_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True)["best_model"])
    assert again.metadata == packed.metadata and again.layers == packed.layers
    assert all(torch.equal(again.tensors[k], v) for k, v in packed.tensors.items())
    loaded = deploy.load(again.save(tmp_path / "best.safetensors"), backend="torch")
    check_same_network(built, data, loaded, config)


def test_a_run_whose_best_epoch_is_not_its_last_keeps_both_models(tracking, tmp_path, monkeypatch):
    """The recorded test metrics are the best validation epoch's: `export` (tag best) gives that
    model, `--tag final` the last weights."""
    from bench.record import mlflow_run

    uri, client, exp = tracking
    real_evaluate, calls = train.evaluate, {"val": 0}

    def first_val_epoch_is_best(model, data, split, *args, **kwargs):
        result = real_evaluate(model, data, split, *args, **kwargs)
        if split == "val":
            calls["val"] += 1
            if calls["val"] > 1:  # later epochs look worse, so epoch 1 stays the best
                result = {**result, "acc": 0.0, "loss": 1e3}
        return result

    monkeypatch.setattr(train, "evaluate", first_val_epoch_is_best)
    config = RunConfig(**{**MLP, "method": "lab", "epochs": 3, "steps": 36})
    with mlflow_run(client, exp, run_name="r", tags={}) as recorder:
        result = run(config, recorder)
    assert result.metrics["best_epoch"] == 1
    best = deploy.load(deploy.export_model(recorder.run_id, tmp_path / "b.safetensors", tracking_uri=uri))
    final = deploy.load(deploy.export_model(recorder.run_id, tmp_path / "f.safetensors", tracking_uri=uri,
                                            tag="final"))
    assert best.deploy_metadata["epoch"] == "1" and final.deploy_metadata["epoch"] == "3"
    data = load_dataset(config.dataset, train_limit=config.train_limit, eval_limit=config.eval_limit)
    got = real_evaluate(best, data, "test", config, torch.device("cpu"), nullcontext)
    assert got["acc"] == result.metrics["test_acc"]
    assert got["loss"] == pytest.approx(result.metrics["test_loss"], rel=1e-6)
    # the final weights are another model (two more epochs of training)
    assert any(not torch.equal(a, b) for a, b in zip(best.state_dict().values(),
                                                     final.state_dict().values(), strict=True))


def test_the_direct_cpu_path_is_the_checked_op_and_rechecks_new_weights():
    """PackedMatrix skips packed_linear's per-call checks once its weights passed them: the same
    results bit for bit, bad input still refused, and weights replaced by new tensors checked
    again (the C++ kernel checks shapes itself, so nothing reads out of bounds)."""
    from kernels import cpp_available

    assert cpp_available()  # CI builds the extension; the direct path is the C++ kernel
    g = torch.Generator().manual_seed(3)
    codes = torch.randint(0, 2, (9, 70), generator=g, dtype=torch.uint8)
    lut, scale, bias = torch.tensor([-1.0, 1.0]), torch.rand(9, generator=g), torch.randn(9, generator=g)
    m = deploy.PackedMatrix(deploy.pack_rows(codes, 1), scale, lut, 1, 70, "auto")
    x = torch.randn(5, 70, generator=g)
    for relu in (False, True):
        want = deploy.packed_linear(x, m.codes, 1, 70, lut, scale, bias, backend="cpp", relu=relu)
        assert torch.equal(m(x, bias, relu), want)
    assert m._checked is not None  # the direct path was taken
    assert torch.equal(m(x[None], bias), m(x, bias)[None])  # 3-D input: the checked op
    with pytest.raises(ValueError, match="x: expected a float tensor"):
        m(torch.randn(5, 71))
    with pytest.raises(RuntimeError, match="one per output row"):
        m(x, torch.randn(8))  # a wrong bias reaches the C++ checks, not memory past its end
    m.scale = torch.rand(8)  # a new tensor of the wrong length: checked again, refused
    with pytest.raises(ValueError, match="scale"):
        m(x)
