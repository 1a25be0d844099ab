"""labbench deploy-bench: the timing protocol, the file sizes and the command's output."""

import json
import math

import pytest
import torch

from bench import deploy_bench
from bench.deploy_bench import VARIANTS, _parse_runs, quantize_int8, time_cell


class FakeClock:
    """Virtual time: each timed function advances it by its cost, the k-th repetition by a drift
    that hits every variant of that repetition alike (what interleaving is for)."""

    def __init__(self):
        self.now = 0.0
        self.calls = 0

    def __call__(self):
        return self.now

    def work(self, seconds):
        def fn():
            self.calls += 1
            self.now += seconds * (1 + (self.calls // 200) % 3)  # slow phases: 1x, 2x, 3x
        return fn


def test_time_cell_medians_quartiles_and_ratios_on_a_fake_clock():
    clock = FakeClock()
    fns = {"fp32": clock.work(2e-3), "fast": clock.work(0.5e-3)}
    cell = time_cell(fns, (), reps=9, target_ms=4.0, clock=clock)
    assert cell["fp32"]["calls"] == 2 and cell["fast"]["calls"] == 8  # ~4 ms per sample
    assert cell["fast"]["speedup"] == pytest.approx(4.0)  # per-repetition ratios see no drift
    assert cell["fp32"]["speedup"] == 1.0
    assert cell["fast"]["ms_q1"] <= cell["fast"]["ms"] <= cell["fast"]["ms_q3"]
    assert {round(x, 9) for x in (cell["fp32"]["ms"], cell["fp32"]["ms_q1"])} <= {2.0, 4.0, 6.0}
    assert cell["fast"]["vs_int8"] is None  # no int8 variant in this cell
    fns = {"fp32": clock.work(2e-3), "int8": clock.work(1e-3), "fast": clock.work(0.25e-3)}
    cell = time_cell(fns, (), reps=9, target_ms=4.0, clock=clock)
    assert cell["fast"]["vs_int8"] == pytest.approx(4.0) and cell["int8"]["vs_int8"] == 1.0
    assert cell["fast"]["vs_int8_q1"] <= 4.0 + 1e-9 and cell["fast"]["speedup"] == pytest.approx(8.0)


def test_int8_is_pytorchs_dynamic_quantization_and_close_to_fp32():
    lin = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 5)).eval()
    q = quantize_int8(lin)
    assert q[0].weight().dtype == torch.qint8 and q[2].weight().dtype == torch.qint8
    x = torch.randn(7, 64)
    with torch.no_grad():
        torch.testing.assert_close(q(x), lin(x), rtol=0.05, atol=0.05)


def test_run_arguments():
    assert _parse_runs(["fp=a,lab=b", "2bit=c"]) == {"fp32": "a", "packed1": "b", "packed2": "c"}
    with pytest.raises(ValueError, match="VARIANT=RUN_ID"):
        _parse_runs(["bogus=a"])


def test_lstm_cell_rows_sizes_and_outputs(tmp_path, capsys):
    """A short run of the command: every variant timed, files sized from their tensors."""
    code = deploy_bench.main(["--workloads", "lstm", "--batches", "1", "--threads", "1", "--reps", "2",
                              "--target-ms", "1", "--backend", "torch", "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "| lstm | 1 | 1 | packed1 |" in out and "no trained runs given" in out
    result = json.loads((tmp_path / "results.json").read_text())
    rows = {r["variant"]: r for r in result["rows"]}
    assert set(rows) == set(VARIANTS)
    assert all(r["ms"] > 0 and r["test_value"] is None for r in rows.values())
    h, v = 512, deploy_bench.LSTM_VOCAB
    head = 4 * (v * h + v)  # the softmax layer stays float32 in every file
    tensors = {  # bytes of the tensors; the safetensors header adds a little JSON
        "fp32": 4 * (4 * h * v + 4 * h * h + 4 * h) + head,
        "packed1": 4 * h * (math.ceil(v / 8) + h // 8) + 2 * (4 * 4 * h + 4 * 2) + 4 * 4 * h + head,
        "packed2": 4 * h * (math.ceil(v / 4) + h // 4) + 2 * (4 * 4 * h + 4 * 4) + 4 * 4 * h + head,
    }
    for variant, nbytes in tensors.items():
        assert 0 < rows[variant]["file_bytes"] - nbytes < 16_384, variant
    assert rows["fp32"]["file_bytes"] / rows["packed1"]["file_bytes"] == pytest.approx(
        rows["packed1"]["size_ratio"])
    assert (tmp_path / "results.md").read_text().startswith("# labbench deploy-bench")


def test_the_test_column_is_measured_on_each_runs_exported_model(tmp_path):
    """Runs trained here: the fp32 and packed rows score what the runs recorded (the exported
    best-epoch model, loaded as deployed), the int8 row the fp32 run's model quantized to int8."""
    from contextlib import nullcontext

    from mlflow.tracking import MlflowClient

    from bench.config import RunConfig
    from bench.data import load_dataset
    from bench.deploy import export_model, load
    from bench.fold import fuse_for_inference
    from bench.record import default_tracking_uri, ensure_experiment, mlflow_run
    from bench.train import evaluate, run

    uri = default_tracking_uri(tmp_path / "runs")
    client = MlflowClient(tracking_uri=uri)
    exp = ensure_experiment(client, "deploy-bench-test", uri)
    base = dict(model="mlp", hidden=32, layers=1, batch_size=50, train_limit=500, eval_limit=300,
                epochs=1, steps=5, threads=1)
    ids, configs = {}, {}
    for variant, method in (("fp32", "fp"), ("packed1", "lab"), ("packed2", "twn")):
        configs[variant] = RunConfig(**base, method=method)
        with mlflow_run(client, exp, run_name=method, tags={}) as recorder:
            result = run(configs[variant], recorder)
        ids[variant] = (recorder.run_id, result.metrics["test_acc"])
    named = {"mlp": {v: i for v, (i, _) in ids.items()}}
    rows = [{"workload": "mlp", "variant": v} for v in VARIANTS]
    deploy_bench.attach_accuracy(rows, named, uri, "torch", fuse=False)  # the models as trained
    got = {r["variant"]: r for r in rows}
    for variant, (_, recorded) in ids.items():
        assert got[variant]["test_metric"] == "test_acc"
        assert got[variant]["test_value"] == recorded == got[variant]["recorded"]
    # int8: independently, the fp run's exported model through torch's dynamic quantization
    fp_model = load(export_model(ids["fp32"][0], tmp_path / "fp.safetensors", tracking_uri=uri),
                    backend="torch")
    data = load_dataset("fashion-mnist", train_limit=500, eval_limit=300)
    truth = evaluate(quantize_int8(fp_model), data, "test", configs["fp32"], torch.device("cpu"),
                     nullcontext)["acc"]
    assert got["int8"]["test_value"] == truth and got["int8"]["run_id"] == ids["fp32"][0]
    # fused (the default, what is timed): measured on the folded model, int8 quantized after it
    folded_rows = [{"workload": "mlp", "variant": v} for v in VARIANTS]
    deploy_bench.attach_accuracy(folded_rows, named, uri, "torch")
    folded = {r["variant"]: r for r in folded_rows}
    for variant, model in (("fp32", fuse_for_inference(fp_model)),
                           ("int8", quantize_int8(fuse_for_inference(fp_model)))):
        truth = evaluate(model, data, "test", configs["fp32"], torch.device("cpu"), nullcontext)
        assert folded[variant]["test_value"] == truth["acc"]
        assert folded[variant]["recorded"] == ids["fp32"][1]  # beside what the run recorded
    for variant in ("packed1", "packed2"):
        assert abs(folded[variant]["test_value"] - ids[variant][1]) <= 0.02  # a few near ties
    assert "(run: " in deploy_bench.format_table({"rows": [{**got["fp32"], "threads": 1, "batch": 1,
        "ms": 1.0, "ms_q1": 1.0, "ms_q3": 1.0, "speedup": 1.0, "speedup_q1": 1.0, "speedup_q3": 1.0,
        "file_bytes": 1024, "size_ratio": 1.0}]})
