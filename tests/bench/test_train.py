"""Whole runs on real data: learning, diagnostics, divergence, reproducibility."""

import json
import math
import subprocess
import sys

import pytest
import torch

from bench.config import RunConfig
from bench.data import load_dataset
from bench.train import run

MLP = dict(model="mlp", hidden=1024, epochs=2)
LSTM_SLICE = dict(model="lstm", dataset="pysrc", hidden=128, seq_len=50, batch_size=50, lr=0.01,
                  train_limit=150_000, eval_limit=20_000, epochs=2)


@pytest.mark.parametrize("method", ["fp", "bc", "bwn", "lab"])
def test_mlp_learns_fashion_subset(method):
    result = run(RunConfig(method=method, **MLP))
    assert result.metrics["test_acc"] > 0.75, result.metrics
    assert result.metrics["diverged"] == 0
    assert len(result.history) == 2


def unigram_entropy(stream: torch.Tensor) -> float:
    p = torch.bincount(stream).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log()).sum())


@pytest.mark.parametrize("method", ["fp", "lab"])
def test_lstm_beats_the_unigram_entropy_of_pysrc(method):
    data = load_dataset("pysrc", train_limit=LSTM_SLICE["train_limit"],
                        eval_limit=LSTM_SLICE["eval_limit"])
    h_unigram = unigram_entropy(data.train)
    result = run(RunConfig(method=method, **LSTM_SLICE))
    assert result.metrics["test_xent"] < h_unigram - 0.2, (result.metrics["test_xent"], h_unigram)
    assert result.metrics["test_bpc"] == pytest.approx(result.metrics["test_xent"] / math.log(2))


def test_lstm_diagnostics_and_proposition_3_2():
    """bc's recurrent gate blocks are +-1 H x H matrices: spectral norm >= sqrt(H) (Prop. 3.2)."""
    cfg = RunConfig(method="bc", **{**LSTM_SLICE, "hidden": 32, "train_limit": 20_000,
                                     "eval_limit": 5_000, "epochs": 1})
    result = run(cfg)
    row = result.history[-1]
    blocks = [k for k in row if k.startswith("spectral/lstm.layers.0.w_hh.")]
    assert sorted(k[-1] for k in blocks) == ["c", "f", "i", "o"]
    for k in blocks:
        bound = row[k.replace("spectral/", "spectral_bound/")]
        assert bound == pytest.approx(math.sqrt(32))
        assert row[k] >= bound - 1e-4
    assert 0 <= row["clip_frac"] <= 1  # gate:5 by default for the LSTM
    for name in ("lstm.layers.0.w_ih", "lstm.layers.0.w_hh"):
        assert row[f"grad_norm/{name}"] > 0 and row[f"alpha/{name}"] == 1.0
        assert 0 <= row[f"flip_ratio/{name}"] <= 1


def test_proposition_3_2_on_random_sign_matrices():
    """Independent check of the bound the diagnostic plots against."""
    g = torch.Generator().manual_seed(0)
    for m, n in [(4, 4), (8, 32), (64, 64), (5, 7)]:
        w = torch.where(torch.rand(m, n, generator=g) < 0.5, -1.0, 1.0)
        assert torch.linalg.matrix_norm(w, ord=2) >= math.sqrt(n) - 1e-5


def test_divergence_is_a_result_not_a_crash():
    result = run(RunConfig(method="fp", optimizer="sgd", lr=1e30, hidden=16, epochs=2))
    assert result.metrics["diverged"] == 1
    assert math.isnan(result.metrics["test_acc"])


def test_lab_costs_and_memory_accounting():
    result = run(RunConfig(method="lab", hidden=64, layers=1, epochs=1, steps=3))
    m = result.metrics
    assert m["bits_per_weight"] == 1.0
    weights = 64 * 784 + 10 * 64
    # 1 bit per weight + one float32 alpha per layer + float32 biases and BN (params + buffers)
    fp_bytes = 4 * ((64 + 10) + 2 * (64 + 10) + 2 * (64 + 10))
    assert m["packed_bytes"] == math.ceil(64 * 784 / 8) + math.ceil(10 * 64 / 8) + 2 * 4 + fp_bytes
    # state: params (w_hat) + latents + Adam's m, v and step count for each of the 8 params +
    # one alpha per quantized layer, all float32
    params = weights + 3 * (64 + 10)
    expected = 4 * (params + weights + 2 * params + 8 + 2)
    assert m["state_mem_mb"] * 2**20 == pytest.approx(expected, rel=1e-9)
    assert m["epochs_run"] == 1 and m["step_ms"] > 0


def test_runs_are_reproducible_in_a_fresh_process(tmp_path):
    cfg = RunConfig(method="lab", hidden=64, epochs=1, steps=5)
    here = run(cfg).metrics
    code = ("import json,sys; from bench.config import RunConfig; from bench.train import run; "
            f"r = run(RunConfig.from_dict({json.dumps(cfg.to_dict())!r} and "
            f"json.loads({json.dumps(json.dumps(cfg.to_dict()))}))); "
            "print(json.dumps(r.metrics))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    there = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("test_acc", "test_loss", "best_val_loss", "bits_per_weight"):
        assert there[key] == here[key], key


def test_a_runs_thread_count_holds_for_that_run_only():
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    result = run(RunConfig(method="lab", hidden=16, epochs=1, steps=2, threads=wanted))
    assert result.metrics["test_acc"] >= 0 and torch.get_num_threads() == before


def test_auto_backend_compiles_only_big_binary_steps_on_a_cpu_with_a_compiler(monkeypatch):
    import bench.train as train
    from bench.train import build_run, resolve_backend

    def targets(config):
        return build_run(config, in_shape=(1, 28, 28), classes=10).optimizer.targets

    paper = targets(RunConfig(method="lab"))  # 784-2048x3-10: 10.0 M binary weights
    small = targets(RunConfig(method="lab", hidden=64))
    ternary = targets(RunConfig(method="lat"))
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(train.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert resolve_backend("auto", cpu, paper) == "compile"
    assert resolve_backend("auto", cpu, small) == "auto"  # compiling would cost more than it saves
    assert resolve_backend("auto", cpu, ternary) == "auto"  # only the binary step is compiled
    assert resolve_backend("auto", cuda, paper) == "auto"  # the hand-written Triton kernels
    assert resolve_backend("torch", cpu, paper) == "torch"
    monkeypatch.setattr(train.shutil, "which", lambda name: None)  # torch.compile needs a C++ compiler
    assert resolve_backend("auto", cpu, paper) == "auto"
