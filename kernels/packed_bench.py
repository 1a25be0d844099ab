"""Kernel-level timing of `packed_linear`: fp32 matmul, int8 and packed 1/2-bit, measured in one run.

Models are stacks of linear layers with random weights (the kernels' speed does not depend on the
values): the paper's MLP (784-2048x3-10) and one step of a 1x512 LSTM cell (the gate matmuls of the
input and the hidden state, 2048x512 each). For each batch size every provider runs the whole
stack; the table gives the median time, its interquartile range, and the ratio of fp32's median to
the provider's (> 1: faster than fp32), all from the same run.

Providers: ``fp32`` (``torch.nn.functional.linear``), ``int8`` (PyTorch's dynamic int8
quantization of ``nn.Linear``; CPU), ``packed1``/``packed2`` (`packed_linear` with 1-bit codes and
``lut = [-1, +1]``, 2-bit codes and the ternary lut; ``backend="cpp"`` on CPU, ``"triton"`` on
CUDA). Whole models with trained weights and file sizes are ``labbench deploy-bench``'s job.

``--clock thread`` times CPU time of the calling thread instead of wall time: on a busy machine it
leaves out the time the process waited for a core (valid with one thread only).

Usage: ``python -m kernels.packed_bench [--device cuda] [--threads 1] [--batches 1,8,64]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .packed_matmul import pack_rows, packed_linear

__all__ = ["MODELS", "bench_packed_linear"]

# (in, out) of each layer. An MLP's layers run one after the other; the LSTM cell's two gate
# matmuls (input and hidden state, 512 each, to 4 x 512 gates) both read the step's input.
MODELS: dict[str, tuple[tuple[int, int], ...]] = {
    "mlp": ((784, 2048), (2048, 2048), (2048, 2048), (2048, 10)),
    "lstm-cell": ((512, 2048), (512, 2048)),
}
CHAINED = {"mlp": True, "lstm-cell": False}
LUTS = {1: (-1.0, 1.0), 2: (-1.0, 0.0, 1.0, 0.0)}


def _time(fn: Callable[[], Any], device: torch.device, clock: str, min_s: float,
          max_runs: int) -> list[float]:
    """Times of ``fn()`` in microseconds (after one warm-up call), at least 5 runs."""
    now = time.thread_time if clock == "thread" else time.perf_counter
    fn()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 5 or (time.perf_counter() - start < min_s and len(times) < max_runs):
        t0 = now()
        fn()
        sync()
        times.append(1e6 * (now() - t0))
    return times


def _providers(layers: Sequence[tuple[int, int]], chained: bool, device: torch.device, seed: int
               ) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    fp = [(torch.randn(o, i, generator=g) / i**0.5, torch.randn(o, generator=g)) for i, o in layers]
    out: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    fp_dev = [(w.to(device), b.to(device)) for w, b in fp]

    def fp32(x0):
        x = x0
        for w, b in fp_dev:
            x = torch.nn.functional.linear(x if chained else x0, w, b)
        return x

    out["fp32"] = fp32
    if device.type == "cpu":
        seq = torch.nn.Sequential(*[torch.nn.Linear(i, o) for i, o in layers])
        with warnings.catch_warnings():  # torch.ao's deprecation notice
            warnings.simplefilter("ignore")
            try:
                q = torch.ao.quantization.quantize_dynamic(seq, {torch.nn.Linear},
                                                           dtype=torch.qint8)
                out["int8"] = q if chained else (lambda x0, q=q: [m(x0) for m in q])
            except (RuntimeError, AttributeError) as err:  # no quantized engine on this build
                warnings.warn(f"packed_bench: int8 dynamic quantization unavailable: {err}",
                              RuntimeWarning, stacklevel=2)
    backend = "cpp" if device.type == "cpu" else "triton"
    for bits, lut_values in LUTS.items():
        lut = torch.tensor(lut_values, device=device)
        packed = []
        for (w, b), (i, _o) in zip(fp, layers, strict=True):
            codes = torch.randint(0, 2**bits, w.shape, dtype=torch.uint8, generator=g)
            packed.append((pack_rows(codes, bits).to(device), i, w.abs().mean(1).to(device),
                           b.to(device)))

        def run(x0, packed=packed, bits=bits, lut=lut):
            x = x0
            for p, i, scale, b in packed:
                x = packed_linear(x if chained else x0, p, bits, i, lut, scale, b,
                                  backend=backend)
            return x

        out[f"packed{bits}"] = run
    return out


def bench_packed_linear(models: Sequence[str] = ("mlp", "lstm-cell"),
                        batches: Sequence[int] = (1, 8, 64), *, threads: int | None = 1,
                        device: str | torch.device = "cpu", clock: str = "wall",
                        min_s: float = 0.3, max_runs: int = 200, seed: int = 0,
                        echo: Callable[[str], None] | None = print) -> list[dict[str, Any]]:
    """Time fp32, int8 and packed 1/2-bit linear stacks at each batch size; ratios vs fp32.

    Args:
        models: names in `MODELS`.
        batches: batch sizes.
        threads: ``torch.set_num_threads`` for the run (restored after); None keeps the current.
        device: ``"cpu"`` (C++ kernel) or a CUDA device (Triton kernel).
        clock: ``"wall"`` or ``"thread"`` (CPU time of this thread; one thread only).
        min_s, max_runs: each case runs for at least ``min_s`` seconds or ``max_runs`` times.
        seed: the random weights and inputs.
        echo: prints the Markdown table (None: silent).

    Returns:
        One dict per model, batch and provider: ``model``, ``batch``, ``provider``, ``us``
        (median), ``us_q1``, ``us_q3``, ``speedup_vs_fp32``, ``threads``, ``device``, ``clock``.

    Raises:
        ValueError: an unknown model or clock, a thread clock with more than one thread.
    """
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise ValueError(f"models: unknown {unknown}; expected some of {sorted(MODELS)}")
    if clock not in ("wall", "thread"):
        raise ValueError(f"clock: expected 'wall' or 'thread', got {clock!r}")
    device = torch.device(device)
    saved = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    if clock == "thread" and torch.get_num_threads() != 1:
        raise ValueError("clock='thread' measures one thread: use threads=1")
    rows: list[dict[str, Any]] = []
    try:
        with torch.inference_mode():
            for model in models:
                providers = _providers(MODELS[model], CHAINED[model], device, seed)
                for batch in batches:
                    x = torch.randn(batch, MODELS[model][0][0],
                                    generator=torch.Generator().manual_seed(seed)).to(device)
                    found = {}
                    for name, fn in providers.items():
                        t = _time(lambda fn=fn, x=x: fn(x), device, clock, min_s, max_runs)
                        q = statistics.quantiles(t, n=4)
                        found[name] = (statistics.median(t), q[0], q[2])
                    for name, (med, q1, q3) in found.items():
                        rows.append({"model": model, "batch": batch, "provider": name,
                                     "us": round(med, 1), "us_q1": round(q1, 1),
                                     "us_q3": round(q3, 1),
                                     "speedup_vs_fp32": round(found["fp32"][0] / med, 2),
                                     "threads": torch.get_num_threads(), "device": str(device),
                                     "clock": clock})
    finally:
        torch.set_num_threads(saved)
    if echo is not None:
        echo(markdown(rows))
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    lines = ["| model | batch | provider | median us | IQR us | speedup vs fp32 |",
             "|---|---:|---|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['batch']} | {r['provider']} | {r['us']} | "
              f"{r['us_q1']}-{r['us_q3']} | {r['speedup_vs_fp32']} |" for r in rows]
    if rows:
        r = rows[0]
        lines.append(f"\n{r['device']}, {r['threads']} thread(s), {r['clock']} clock")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernels.packed_bench",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="0: keep torch's default")
    parser.add_argument("--batches", default="1,8,64")
    parser.add_argument("--models", default="mlp,lstm-cell")
    parser.add_argument("--clock", default="wall", choices=("wall", "thread"))
    parser.add_argument("--min-s", type=float, default=0.3)
    args = parser.parse_args(argv)
    try:
        batches = [int(b) for b in args.batches.split(",")]
        bench_packed_linear(args.models.split(","), batches, threads=args.threads or None,
                            device=args.device, clock=args.clock, min_s=args.min_s)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
