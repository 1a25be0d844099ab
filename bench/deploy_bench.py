"""``labbench deploy-bench``: inference latency and file size of fp32, int8 and packed models.

Two workloads: the paper's MLP (784-2048x3-10, Linear -> BN -> ReLU) and one step of a 1 x 512
char-level LSTM cell (the input's column lookup, the 512 x 2048 recurrent matmul and the gates).
Each MLP variant is prepared for inference as a deployment would be (`bench.fold.fuse_for_inference`):
batch norms folded into the linear layers before them, each Linear -> ReLU pair fused (int8:
PyTorch's fused dynamic LinearReLU); ``fuse=False`` / ``--no-fuse`` times them as trained.
Four variants each:

- ``fp32``: the network as `bench.models` builds it;
- ``int8``: PyTorch's dynamic int8 quantization of the Linear layers
  (`torch.ao.quantization.quantize_dynamic`, per-tensor int8 weights, activations quantized per
  batch; for the LSTM the recurrent matrix is such a Linear);
- ``packed1`` / ``packed2``: `bench.deploy.load` of a 1-bit (lab) / 2-bit (ternary) file, the
  matmuls in `kernels.packed_linear`.

Each (workload, threads, batch) cell times the variants interleaved: repetition r times every
variant once, in a rotating order, so drift on a busy machine hits them alike. A sample is the mean
of enough calls to last about `target_ms`. Reported: the median and interquartile range of the
samples, and each variant's speed-up over fp32 as the median (and IQR) of the per-repetition
ratios. File sizes are the safetensors files (`torch.save` of the quantized state dict for int8).
Test accuracy, when trained runs are given (``--run``), is measured on each run's exported model
loaded as deployed (`measure_run_model`; int8: the fp32 run's model quantized), beside the
metric the run recorded; else it is "-".
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.ao.nn.intrinsic import LinearReLU

from bench.config import RunConfig
from bench.deploy import PackedLSTM, load, pack_model
from bench.fold import fuse_for_inference
from bench.layers import init_weights, quantizable_weights
from bench.models import build_model
from kernels import prox_binary, prox_ternary

__all__ = ["VARIANTS", "deploy_bench", "format_table", "main"]

VARIANTS = ("fp32", "int8", "packed1", "packed2")
METHOD_OF = {"fp32": "fp", "packed1": "lab", "packed2": "twn"}  # what the synthetic weights are
LSTM_VOCAB = 100  # a char vocabulary's size (the input lookup is cheap next to the 512 x 2048 matmul)


def quantize_int8(model: nn.Module) -> nn.Module:
    """PyTorch's dynamic int8 quantization of every nn.Linear, and of every fused Linear -> ReLU
    (`bench.fold.fuse_for_inference`) into its fused int8 module (torch.ao; deprecated in favour of
    torchao, but it runs on torch 2.13's CPU build with the fbgemm/x86 kernels)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear, LinearReLU},
                                                      dtype=torch.qint8)


def _on_levels(model: nn.Module, method: str) -> None:
    """Put every quantizable weight on its method's level set (random weights, for timing)."""
    with torch.no_grad():
        for q in quantizable_weights(model):
            if method == "lab":
                q.param.copy_(prox_binary(q.param)[0])
            elif method == "twn":
                q.param.copy_(prox_ternary(q.param, solver="twn")[0])


def _file_bytes(model: nn.Module, config: RunConfig, in_shape: tuple[int, ...], classes: int,
                path: Path) -> int:
    return pack_model(model, config, in_shape=in_shape, classes=classes).save(path).stat().st_size


def _int8_bytes(model: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


class LSTMCellStep(nn.Module):
    """One step of a char LSTM as `bench.layers.LSTM` computes it, for the fp32 and int8 rows:
    x_t W_ih^T + b by column lookup, then + h W_hh^T (an nn.Linear, so int8 can quantize it)."""

    def __init__(self, lstm: PackedLSTM):
        super().__init__()
        w_ih, w_hh = lstm.w_ih[0].weight.detach(), lstm.w_hh[0].weight.detach()  # float matrices
        self.w_ih_t = nn.Parameter(w_ih.t().contiguous(), requires_grad=False)
        self.bias = nn.Parameter(lstm.bias0.detach().clone(), requires_grad=False)
        self.w_hh = nn.Linear(w_hh.shape[1], w_hh.shape[0], bias=False)
        with torch.no_grad():
            self.w_hh.weight.copy_(w_hh)

    def forward(self, token: torch.Tensor, h: torch.Tensor, c: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        g = (self.w_ih_t[token] + self.bias) + self.w_hh(h)  # (B, 4H)
        i, f, c_tilde, o = g.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(c_tilde)
        return torch.sigmoid(o) * torch.tanh(c), c


def _packed_step(lstm: PackedLSTM) -> Callable[..., Any]:
    bias = lstm.bias0

    def step(token: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        return lstm.step(lstm.w_ih[0].columns(token) + bias, h, c, lstm.w_hh[0])

    return step


def build_variants(workload: str, backend: str, tmp: Path, hidden: int = 512, *, fuse: bool = True
                   ) -> tuple[dict[str, Callable[..., Any]], dict[str, int], Callable[[int], tuple]]:
    """The four callables of a workload, their file sizes, and a function making inputs of a batch
    (with ``fuse``, the MLP prepared by `bench.fold.fuse_for_inference`, int8's before quantizing)."""
    if workload == "mlp":
        in_shape, classes = (1, 28, 28), 10
        make = lambda m: RunConfig(model="mlp", method=m)  # noqa: E731
    else:
        in_shape, classes = (), LSTM_VOCAB
        make = lambda m: RunConfig(model="lstm", dataset="pysrc", method=m, hidden=hidden)  # noqa: E731
    fns: dict[str, Callable[..., Any]] = {}
    sizes: dict[str, int] = {}
    torch.manual_seed(0)
    for variant in ("fp32", "packed1", "packed2"):
        config = make(METHOD_OF[variant])
        model = build_model(config, in_shape=in_shape, classes=classes).eval()
        init_weights(model, {q.name for q in quantizable_weights(model)})  # LSTM matrices start empty
        _on_levels(model, config.method)
        path = tmp / f"{workload}-{variant}.safetensors"
        sizes[variant] = _file_bytes(model, config, in_shape, classes, path)
        loaded = load(path, backend=backend)
        if fuse and workload == "mlp":
            loaded = fuse_for_inference(loaded)
        if variant == "fp32":
            fp_model = loaded
        if workload == "mlp":
            fns[variant] = loaded
        else:
            fns[variant] = (LSTMCellStep(loaded.lstm) if variant == "fp32"
                            else _packed_step(loaded.lstm))
    # int8 quantizes the Linear layers: the MLP's; for the LSTM the recurrent matrix and the
    # softmax layer (its file), while the input matrix, read by column lookup, stays float32
    fns["int8"] = quantize_int8(fp_model if workload == "mlp" else LSTMCellStep(fp_model.lstm))
    sizes["int8"] = _int8_bytes(fns["int8"] if workload == "mlp"
                                else nn.ModuleList([fns["int8"], quantize_int8(fp_model.head)]))
    fns = {v: fns[v] for v in VARIANTS}

    def inputs(batch: int) -> tuple:
        g = torch.Generator().manual_seed(batch)
        if workload == "mlp":
            return (torch.randn(batch, *in_shape, generator=g),)
        return (torch.randint(0, classes, (batch,), generator=g),
                torch.randn(batch, hidden, generator=g) * 0.1, torch.randn(batch, hidden, generator=g) * 0.1)

    return fns, sizes, inputs


def _calls_for(fn: Callable[..., Any], args: tuple, target_ms: float,
               clock: Callable[[], float]) -> int:
    t0 = clock()
    fn(*args)
    once = clock() - t0
    return max(1, min(1000, round(target_ms / 1000 / max(once, 1e-7))))


def _quartiles(xs: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
    return q[0], statistics.median(xs), q[2]


@torch.inference_mode()
def time_cell(fns: dict[str, Callable[..., Any]], args: tuple, reps: int, target_ms: float, *,
              clock: Callable[[], float] = time.perf_counter) -> dict[str, dict[str, float]]:
    """Interleaved timing of every variant on the same inputs: per variant the median and IQR of
    its samples (ms per call) and its speed-up over fp32 (median and IQR of per-repetition ratios),
    and over int8 the same way when there is an int8 variant (``vs_int8``; else None). `clock`
    returns seconds (a fake one in tests)."""
    for fn in fns.values():  # warm up (allocations, extension loading, oneDNN primitives)
        fn(*args)
    calls = {v: _calls_for(fn, args, target_ms, clock) for v, fn in fns.items()}
    samples: dict[str, list[float]] = {v: [] for v in fns}
    names = list(fns)
    for r in range(reps):
        for v in names[r % len(names):] + names[:r % len(names)]:
            fn, n = fns[v], calls[v]
            t0 = clock()
            for _ in range(n):
                fn(*args)
            samples[v].append((clock() - t0) / n * 1000)
    out = {}
    for v in names:
        q1, med, q3 = _quartiles(samples[v])
        ratios = [f / s for f, s in zip(samples["fp32"], samples[v], strict=True)]
        r1, rmed, r3 = _quartiles(ratios)
        out[v] = {"ms": med, "ms_q1": q1, "ms_q3": q3, "speedup": rmed, "speedup_q1": r1,
                  "speedup_q3": r3, "calls": calls[v], "reps": reps,
                  "vs_int8": None, "vs_int8_q1": None, "vs_int8_q3": None}
        if "int8" in samples:
            i1, imed, i3 = _quartiles([f / s for f, s in zip(samples["int8"], samples[v], strict=True)])
            out[v].update(vs_int8=imed, vs_int8_q1=i1, vs_int8_q3=i3)
    return out


def measure_run_model(run_id: str, tracking_uri: str, *, int8: bool = False,
                      backend: str = "auto", fuse: bool = True) -> dict[str, Any]:
    """The test metric of a run's exported model, measured here: `bench.deploy.export_model`
    (the best epoch's model, the one the run's test metrics were measured on), `bench.deploy.load`,
    then `bench.train.evaluate` on the run's test split. With ``fuse``, a model with batch norms is
    first put through `bench.fold.fuse_for_inference` (as the timed models are); with
    ``int8``, the model is then put through `quantize_int8` (a fp run's model, deployed as int8).

    Returns:
        ``{"test_metric", "test_value", "recorded"}``: ``test_acc`` (MLP) or ``test_bpc`` (LSTM),
        its value on the loaded model, and the run's recorded value of it (None if absent).
    """
    from contextlib import nullcontext

    from mlflow.tracking import MlflowClient

    from bench.data import load_dataset
    from bench.deploy import export_model
    from bench.train import evaluate

    with tempfile.TemporaryDirectory() as tmp:
        path = export_model(run_id, Path(tmp) / "model.safetensors", tracking_uri=tracking_uri)
        model = load(path, backend=backend)
    config = RunConfig.from_dict(json.loads(model.deploy_metadata["config"]))
    if fuse and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        model = fuse_for_inference(model)
    if int8:
        model = quantize_int8(model)
    data = load_dataset(config.dataset, train_limit=config.train_limit, eval_limit=config.eval_limit)
    got = evaluate(model, data, "test", config, torch.device("cpu"), nullcontext)
    metric, value = ("test_bpc", got["bpc"]) if data.task == "lm" else ("test_acc", got["acc"])
    recorded = MlflowClient(tracking_uri=tracking_uri).get_run(run_id).data.metrics.get(metric)
    return {"test_metric": metric, "test_value": value, "recorded": recorded}


def attach_accuracy(rows: list[dict[str, Any]], runs: dict[str, dict[str, str]],
                    tracking_uri: str | None, backend: str = "auto", fuse: bool = True) -> None:
    """Each row's test metric, measured on the model of the run named for its workload and
    variant (`measure_run_model`); the int8 row, when no int8 run is named, on the fp32 run's
    model quantized to int8. "-" when no run is named."""
    cache: dict[tuple[str, bool], dict[str, Any]] = {}
    for row in rows:
        named = runs.get(row["workload"], {})
        int8 = row["variant"] == "int8" and "int8" not in named
        run_id = named.get("fp32") if int8 else named.get(row["variant"])
        row.update(test_metric="-", test_value=None, recorded=None, run_id=run_id)
        if run_id and tracking_uri:
            if (run_id, int8) not in cache:
                cache[run_id, int8] = measure_run_model(run_id, tracking_uri, int8=int8,
                                                        backend=backend, fuse=fuse)
            row.update(cache[run_id, int8])


def deploy_bench(*, workloads: Sequence[str] = ("mlp", "lstm"), batches: Sequence[int] = (1, 8, 64),
                 threads: Sequence[int] | None = None, reps: int = 15, target_ms: float = 5.0,
                 backend: str = "auto", runs: dict[str, dict[str, str]] | None = None,
                 tracking_uri: str | None = None, fuse: bool = True) -> dict[str, Any]:
    """Measure every (workload, threads, batch, variant) cell; return rows and the environment.

    Args:
        workloads: ``mlp`` (the paper's 784-2048x3-10) and/or ``lstm`` (a 1 x 512 cell step).
        batches: batch sizes.
        threads: torch intra-op thread counts (default: 1 and all cores).
        reps: interleaved repetitions per cell (samples per variant).
        target_ms: duration of one sample (calls are repeated to last about this long).
        backend: `kernels.packed_linear` backend of the packed rows.
        runs: ``{workload: {variant: run_id}}`` for the test-metric column.
        tracking_uri: where those runs are.
        fuse: put every MLP variant through `bench.fold.fuse_for_inference` (batch norms folded,
            Linear -> ReLU fused) before timing it and before measuring its test metric.

    Returns:
        ``{"rows": [...], "env": {...}}``; a row has workload, variant, threads, batch, ms (median),
        ms_q1/ms_q3, speedup (over fp32, median of per-repetition ratios) with its quartiles,
        file_bytes, size_ratio (fp32 bytes / file bytes) and the test metric.
    """
    threads = list(threads or sorted({1, os.cpu_count() or 1}))
    before = torch.get_num_threads()
    rows: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for workload in workloads:
                fns, sizes, inputs = build_variants(workload, backend, Path(tmp), fuse=fuse)
                for n in threads:
                    torch.set_num_threads(n)
                    for batch in batches:
                        cell = time_cell(fns, inputs(batch), reps, target_ms)
                        for v in VARIANTS:
                            rows.append({"workload": workload, "variant": v, "threads": n, "batch": batch,
                                         **cell[v], "file_bytes": sizes[v],
                                         "size_ratio": sizes["fp32"] / sizes[v]})
    finally:
        torch.set_num_threads(before)
    attach_accuracy(rows, runs or {}, tracking_uri, backend, fuse)
    from bench.record import env_info

    env = env_info()
    try:
        from kernels import cpp_available

        env["packed_cpp"] = cpp_available()
    except ImportError:  # pragma: no cover - before kernels/packed_matmul.py
        env["packed_cpp"] = False
    env.update({"backend": backend, "reps": reps, "target_ms": target_ms, "fuse_for_inference": fuse,
                "int8": "torch.ao.quantization.quantize_dynamic (qint8, nn.Linear)"})
    return {"rows": rows, "env": env}


def format_table(result: dict[str, Any]) -> str:
    """Markdown table of the rows (one line per cell and variant)."""
    lines = ["| workload | threads | batch | variant | ms (median) | IQR ms | speed-up vs fp32 (IQR) "
             "| vs int8 (IQR) | file KiB | size vs fp32 | test |",
             "|---|---:|---:|---|---:|---|---|---|---:|---:|---|"]
    for r in result["rows"]:
        test = "-" if r["test_value"] is None else f"{r['test_metric']} {r['test_value']:.4g}"
        if r.get("recorded") is not None:
            test += f" (run: {r['recorded']:.4g})"
        vs_int8 = ("-" if r.get("vs_int8") is None else
                   f"{r['vs_int8']:.2f}x ({r['vs_int8_q1']:.2f}-{r['vs_int8_q3']:.2f})")
        lines.append(
            f"| {r['workload']} | {r['threads']} | {r['batch']} | {r['variant']} | {r['ms']:.4g} | "
            f"{r['ms_q1']:.4g}-{r['ms_q3']:.4g} | {r['speedup']:.2f}x "
            f"({r['speedup_q1']:.2f}-{r['speedup_q3']:.2f}) | {vs_int8} | {r['file_bytes'] / 1024:.1f} | "
            f"1/{r['size_ratio']:.1f} | {test} |")
    return "\n".join(lines)


def _parse_runs(items: list[str]) -> dict[str, str]:
    runs = {}
    for item in items:
        for part in filter(None, item.split(",")):
            key, eq, run_id = part.partition("=")
            key = {"fp": "fp32", "lab": "packed1", "1bit": "packed1", "2bit": "packed2"}.get(key, key)
            if not eq or key not in VARIANTS or not run_id:
                raise ValueError(f"--run {part!r}: expected VARIANT=RUN_ID with VARIANT one of "
                                 f"{', '.join(VARIANTS)} (or fp, lab, 1bit, 2bit)")
            runs[key] = run_id
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``labbench deploy-bench``; returns the exit status (2 on bad input)."""
    parser = argparse.ArgumentParser(prog="labbench deploy-bench", description=(
        "Inference latency (batch 1, 8, 64; 1 thread and all) and model file size of fp32, int8 "
        "(PyTorch dynamic quantization), packed 1-bit and packed 2-bit, for the paper's MLP and a "
        "1 x 512 LSTM cell step; medians and IQRs over interleaved repetitions, speed-ups against "
        "fp32 measured in the same run. Timings on a busy machine are noise: publish only numbers "
        "from a quiet one."))
    parser.add_argument("--workloads", default="mlp,lstm", help="mlp,lstm (default both)")
    parser.add_argument("--batches", default="1,8,64", help="batch sizes (default 1,8,64)")
    parser.add_argument("--threads", default="1,all", help="thread counts; 'all' = every core")
    parser.add_argument("--reps", type=int, default=15, help="interleaved repetitions (default 15)")
    parser.add_argument("--target-ms", type=float, default=5.0, help="length of one sample (ms)")
    parser.add_argument("--backend", default="auto", help="packed_linear backend (auto|cpp|torch)")
    parser.add_argument("--run", action="append", default=[], metavar="VARIANT=RUN_ID,...",
                        help="MLP runs whose test accuracy each row shows (fp=..., lab=..., 2bit=...)")
    parser.add_argument("--lstm-run", action="append", default=[], metavar="VARIANT=RUN_ID,...",
                        help="LSTM runs whose test bits/char each LSTM row shows")
    parser.add_argument("--root", default="labbench-runs", help="run root (default ./labbench-runs)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///ROOT/mlflow.db)")
    parser.add_argument("--no-fuse", action="store_true", help="time the MLP as trained instead "
                        "of folding its batch norms and fusing Linear -> ReLU (every variant)")
    parser.add_argument("--out", metavar="DIR", help="write results.json and results.md here")
    args = parser.parse_args(argv)
    try:
        workloads = [w for w in args.workloads.split(",") if w]
        if not workloads or set(workloads) - {"mlp", "lstm"}:
            raise ValueError(f"--workloads: expected mlp and/or lstm, got {args.workloads!r}")
        batches = [int(b) for b in args.batches.split(",")]
        threads = [os.cpu_count() or 1 if t == "all" else int(t) for t in args.threads.split(",")]
        if min(batches) < 1 or min(threads) < 1 or args.reps < 2:
            raise ValueError("batches and threads must be >= 1, --reps >= 2")
        runs = {"mlp": _parse_runs(args.run), "lstm": _parse_runs(args.lstm_run)}
    except ValueError as err:
        print(f"error: {err}", file=__import__("sys").stderr)
        return 2
    uri = None
    if any(runs.values()):
        uri = args.tracking_uri or f"sqlite:///{Path(args.root).expanduser().resolve() / 'mlflow.db'}"
    result = deploy_bench(workloads=workloads, batches=batches, threads=sorted(set(threads)),
                          reps=args.reps, target_ms=args.target_ms, backend=args.backend, runs=runs,
                          tracking_uri=uri, fuse=not args.no_fuse)
    table = format_table(result)
    print(table)
    if not any(runs.values()):
        print("test column: '-' (no trained runs given; pass --run fp=ID,lab=ID,2bit=ID and --lstm-run)")
    folded = ("batch norms folded, Linear -> ReLU fused" if not args.no_fuse
              else "as trained (batch norms and ReLUs separate)")
    print(f"packed backend {args.backend} (C++ kernel available: {result['env']['packed_cpp']}); "
          f"MLP {folded}; {args.reps} interleaved repetitions per cell on "
          f"{result['env']['cpu']}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
        (out / "results.md").write_text(
            f"# labbench deploy-bench\n\n{table}\n\nCPU: {result['env']['cpu']} "
            f"({result['env']['cpu_count']} cores), torch {result['env']['packages']['torch']}, "
            f"packed backend {args.backend}, C++ kernel: {result['env']['packed_cpp']}; MLP "
            f"{folded}; "
            f"{args.reps} interleaved repetitions per cell, ~{args.target_ms:g} ms per sample.\n")
        print(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return 0 if all(math.isfinite(r["ms"]) for r in result["rows"]) else 1
