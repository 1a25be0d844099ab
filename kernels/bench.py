"""`labbench kernels-bench`: the proximal-step kernels against torch eager, torch.compile and copy.

For each operator (`_bench_ops.OPS`) and size it times every provider, median of repeated runs:
``triton.testing.do_bench`` on CUDA (L2 flushed between runs), wall clock on CPU. It reports
microseconds, effective GB/s from the operator's minimal bytes, the fraction of the copy bandwidth
``dst.copy_(src)`` reaches at the same size in the same run, and speedups; then the fused
Adam + LAB step against torch's ``Adam(fused=True)``, and the multi-tensor path against one launch
pair per tensor, on ResNet-18's weights; then the fused step on one tensor of ``--fused-sizes``
elements (default 1e6 and 1e7), each provider's fraction of the copy bandwidth at that size (on
CPU the C++ step, ``cpp``, is the one the optimizer runs by default). Each Triton result is
checked against eager (sign mismatches, relative scale error) and the check goes into the table.

On CPU, Triton runs in its interpreter (``TRITON_INTERPRET=1``, numpy, one program at a time): it
is timed only up to ``--interpreter-max`` elements, and those times say nothing about performance.

Writes ``kernels-bench.csv`` (one row per op, size and provider), ``kernels-bench.json`` (rows and
the device, versions and command) and ``kernels-bench.md`` (the summary table); ``--plot`` adds
``kernels-bench.png`` (GB/s against size). Exit status 0, or 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import logging
import platform
import signal
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from . import _bench_ops as ops

logger = logging.getLogger(__name__)

GPU_SIZES = (10**4, 10**5, 10**6, 2**24, 10**8)
CPU_SIZES = (10**4, 10**5, 10**6)
FUSED_SIZES = (10**6, 10**7)
FIELDS = ("op", "size", "provider", "us", "bytes", "GBps", "copy_GBps", "copy_frac",
          "speedup_vs_eager", "speedup_vs_compile", "ratio_to_baseline", "sign_mismatches",
          "scale_rel_err", "note")


# %% Timing

def time_us(fn: Callable[[], Any], device: torch.device, *, min_s: float = 0.2,
            max_runs: int = 50) -> float:
    """Median time of ``fn()`` in microseconds: do_bench on CUDA, wall clock (>= 3 runs) on CPU."""
    if device.type == "cuda":
        import triton.testing

        return 1e3 * triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    fn()  # warm-up: allocations, compilation
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < min_s and len(times) < max_runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(times)


def interpreted() -> bool:
    """Whether the Triton kernels run in the interpreter (TRITON_INTERPRET=1 at import)."""
    from .binary import _binary_sums_kernel

    return type(_binary_sums_kernel).__name__ == "InterpretedFunction"


def compare(got: tuple, want: tuple) -> tuple[int, float]:
    """Sign mismatches of w_hat and the largest relative scale difference, Triton vs eager."""
    (w_hat, scale), (want_hat, want_scale) = got, want
    if scale is None:  # pack_bits: bytes, compared exactly
        return int((w_hat != want_hat).sum()), 0.0
    mismatches = int((torch.signbit(w_hat) != torch.signbit(want_hat)).sum())
    rel = ((scale - want_scale).abs() / want_scale.abs().clamp_min(1e-30)).max()
    return mismatches, float(rel)


# %% The sweeps

def row(op: str, size: int, provider: str, us: float, nbytes: int, copy_gbps: float,
        **extra: Any) -> dict[str, Any]:
    gbps = nbytes / us / 1e3
    return {"op": op, "size": size, "provider": provider, "us": round(us, 2), "bytes": nbytes,
            "GBps": round(gbps, 2), "copy_GBps": round(copy_gbps, 2),
            "copy_frac": round(gbps / copy_gbps, 3), **extra}


def copy_bandwidth(n: int, device: torch.device) -> float:
    """GB/s of ``dst.copy_(src)`` on n float32 elements (8 bytes moved per element)."""
    src = torch.rand(n, device=device)
    dst = torch.empty_like(src)
    return 8 * n / time_us(lambda: dst.copy_(src), device) / 1e3


def sweep(names: Sequence[str], sizes: Sequence[int], device: torch.device, *, use_compile: bool,
          triton_max: int, copy: dict[int, float], emit: Callable[[dict], None]) -> None:
    """Time every op in ``names`` at every size, op by op; ``emit`` each row once measured."""
    for name in names:
        op = ops.OPS[name]
        compiled = torch.compile(op.reference_fn, dynamic=False) if (
            use_compile and op.reference is not None) else None
        for n in sizes:
            x = op.make(n, device)
            size, nbytes = x["w"].numel(), op.nbytes(x)
            times = {"eager": time_us(lambda op=op, x=x: op.run(x, "torch"), device)}
            note = {}
            if compiled is not None:
                args = op.reference(x)
                times["compile"] = time_us(lambda args=args, fn=compiled: fn(*args), device)
            if size <= triton_max:
                times["triton"] = time_us(lambda op=op, x=x: op.run(x, "triton"), device)
                mismatches, rel = compare(op.scales(op.run(x, "triton")),
                                          op.scales(op.run(x, "torch")))
                note = {"sign_mismatches": mismatches, "scale_rel_err": f"{rel:.1e}"}
                if device.type == "cpu":
                    note["note"] = "interpreter: not performance"
            for provider, us in times.items():
                extra = dict(note) if provider == "triton" else {}
                if provider in ("triton", "compile"):
                    extra["speedup_vs_eager"] = round(times["eager"] / us, 2)
                if provider == "triton" and "compile" in times:
                    extra["speedup_vs_compile"] = round(times["compile"] / us, 2)
                emit(row(name, size, provider, us, nbytes, copy[n], **extra))
            del x


def model_cases(width: int, device: torch.device, *, triton_max: int,
                emit: Callable[[dict], None]) -> None:
    """The fused Adam + LAB step and the multi-tensor path on ResNet-18's weights."""
    x = ops.model_weights(width, device)
    size = sum(w.numel() for w in x["ws"])
    label = f"resnet18(width={width})"
    copy_gbps = copy_bandwidth(size, device)
    emit(row("copy", size, "torch", 8 * size / copy_gbps / 1e3, 8 * size, copy_gbps))
    run_triton = size <= triton_max
    cpu_note = {"note": "interpreter: not performance"} if device.type == "cpu" else {}

    providers = ops.fused_providers(x, with_triton=run_triton, with_cpp=_with_cpp(device))
    times = {name: time_us(fn, device) for name, fn in providers.items()}
    for name, us in times.items():
        extra = {"ratio_to_baseline": round(us / times["adam-fused"], 3), "note": label}
        if name == "triton":
            extra["speedup_vs_eager"] = round(times["eager"] / us, 2)
            extra["note"] = f"{label}; {cpu_note.get('note', '')}".rstrip("; ")
        emit(row("fused_adam_lab", size, name, us, ops.fused_nbytes(x), copy_gbps, **extra))

    providers = ops.multi_providers(x)
    if not run_triton:
        providers = {"eager": providers["eager"]}
    times = {name: time_us(fn, device) for name, fn in providers.items()}
    for name, us in times.items():
        extra = {"note": label}
        if name == "triton":
            extra["speedup_vs_eager"] = round(times["eager"] / us, 2)
            extra["ratio_to_baseline"] = round(us / times["triton-per-tensor"], 3)
            extra["note"] = f"{label}; baseline triton-per-tensor; {cpu_note.get('note', '')}"
        emit(row("prox_binary_multi", size, name, us, 3 * 4 * size, copy_gbps, **extra))


def _with_cpp(device: torch.device) -> bool:
    from .fused import fused_cpp_available

    return device.type == "cpu" and fused_cpp_available()


def fused_inputs(n: int, device: torch.device) -> dict[str, Any]:
    """One latent of n elements with Adam-like state, in `_bench_ops.model_weights`' layout."""
    gen = torch.Generator(device=device).manual_seed(2)

    def rand(scale=1.0):
        return (torch.rand(n, generator=gen, device=device) * 2 - 1) * scale

    return {"ws": [rand()], "grads": [rand(1e-2)], "ms": [rand(1e-3)],
            "vs": [rand().square() * 1e-4], "ds": [rand().abs() * 1e-3 + 1e-8]}


def fused_sizes(sizes: Sequence[int], device: torch.device, *, triton_max: int,
                copy: dict[int, float], emit: Callable[[dict], None]) -> None:
    """The fused Adam + LAB step on one tensor per size: each provider's share of copy bandwidth
    (32 minimal bytes per element: read W, g, m, v; write W, m, v, w_hat)."""
    for n in sizes:
        if n not in copy:
            copy[n] = copy_bandwidth(n, device)
            emit(row("copy", n, "torch", 8 * n / copy[n] / 1e3, 8 * n, copy[n]))
        x = fused_inputs(n, device)
        providers = ops.fused_providers(x, with_triton=n <= triton_max, with_cpp=_with_cpp(device))
        times = {name: time_us(fn, device) for name, fn in providers.items()}
        for name, us in times.items():
            extra = {"ratio_to_baseline": round(us / times["adam-fused"], 3),
                     "speedup_vs_eager": round(times["eager"] / us, 2)}
            if name == "triton" and device.type == "cpu":
                extra["note"] = "interpreter: not performance"
            emit(row(FUSED_OP, n, name, us, ops.fused_nbytes(x), copy[n], **extra))
        del x, providers


FUSED_OP = "fused_adam_lab/size"


# %% Output

def summary_markdown(rows: list[dict], meta: dict) -> str:
    """The table of the run: one line per op and size, providers side by side."""
    lines = [f"# kernels-bench on {meta['device']}", "",
             f"`{meta['command']}` — torch {meta['torch']}, triton {meta['triton']}, "
             f"{meta['date']}.", ""]
    if meta.get("interrupted"):
        lines += ["**Interrupted**: the rows below are those measured before the stop.", ""]
    if meta["device_type"] == "cpu":
        lines += ["CPU run: Triton ran in its interpreter (numpy); its times say nothing about "
                  "performance and are shown only where it ran. GB/s count the operator's minimal "
                  "bytes; `copy` is `dst.copy_(src)` at the same size, same run.", ""]
    lines += ["Each cell: median microseconds (effective GB/s, fraction of copy).", "",
              "| op | size | copy GB/s | eager | compile | triton | triton vs eager | "
              "vs compile | check |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    table: dict[tuple[str, int], dict[str, dict]] = {}
    for r in rows:
        if r["op"] in ops.OPS:
            table.setdefault((r["op"], r["size"]), {})[r["provider"]] = r
    for (op, size), by in table.items():
        t = by.get("triton", {})

        def cell(provider, by=by):
            r = by.get(provider)
            return f"{r['us']:.1f} ({r['GBps']:.1f}, {r['copy_frac']:.2f})" if r else "-"

        def speedup(key, t=t):
            return f"{t[key]}x" if key in t else "-"

        check = f"{t['sign_mismatches']} signs, {t['scale_rel_err']}" if t else "not run"
        copy = by["eager"]["copy_GBps"]
        lines.append(f"| {op} | {size:.0e} | {copy:.1f} | {cell('eager')} | {cell('compile')} | "
                     f"{cell('triton')} | {speedup('speedup_vs_eager')} | "
                     f"{speedup('speedup_vs_compile')} | {check} |")
    lines += ["", "Fused Adam + LAB step on one tensor: median microseconds (effective GB/s at 32 B "
              "per weight, fraction of copy at the same size); ratio to torch's Adam(fused=True).",
              "", "| size | copy GB/s | provider | us | GB/s | fraction of copy | x Adam(fused) |",
              "|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        if r["op"] == FUSED_OP:
            lines.append(f"| {r['size']:.0e} | {r['copy_GBps']} | {r['provider']} | {r['us']:.1f} | "
                         f"{r['GBps']} | {r['copy_frac']:.2f} | {r['ratio_to_baseline']} |")
    lines += ["", "| model case | size | provider | us | GB/s | ratio | note |",
              "|---|---:|---|---:|---:|---:|---|"]
    for r in rows:
        if r["op"] in ("fused_adam_lab", "prox_binary_multi"):
            lines.append(f"| {r['op']} | {r['size']} | {r['provider']} | {r['us']:.1f} | "
                         f"{r['GBps']} | {r.get('ratio_to_baseline', '')} | {r.get('note', '')} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """GB/s against size, one panel per op, one line per provider, copy bandwidth dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in ops.OPS if any(r["op"] == n for r in rows)]
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.4), squeeze=False)
    copy = sorted((r["size"], r["GBps"]) for r in rows if r["op"] == "copy")
    for ax, name in zip(axes[0], names, strict=True):
        for provider in ("eager", "compile", "triton"):
            points = sorted((r["size"], r["GBps"]) for r in rows
                            if r["op"] == name and r["provider"] == provider)
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=provider)
        if copy:
            ax.plot(*zip(*copy, strict=True), ls="--", color="grey", label="copy")
        ax.set(xscale="log", title=name, xlabel="elements", ylabel="GB/s (minimal bytes)")
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="labbench kernels-bench", description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="cuda when available (auto), else cpu")
    parser.add_argument("--sizes", help="comma-separated element counts (1e4,1e6,...); default: "
                        f"{','.join(f'{s:.0e}' for s in GPU_SIZES)} on CUDA, "
                        f"{','.join(f'{s:.0e}' for s in CPU_SIZES)} on CPU")
    parser.add_argument("--ops", default=",".join(ops.OPS),
                        help=f"comma-separated ops of {', '.join(ops.OPS)}")
    parser.add_argument("--fused-sizes", help="comma-separated element counts for the fused Adam + "
                        f"LAB step on one tensor (default {','.join(f'{s:.0e}' for s in FUSED_SIZES)}"
                        "; 0 skips it)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--no-models", action="store_true",
                        help="skip the fused-step and multi-tensor cases (ResNet-18's weights, "
                        "--fused-sizes)")
    parser.add_argument("--width", type=int, help="ResNet-18 stem width (64 on CUDA, 16 on CPU)")
    parser.add_argument("--interpreter-max", type=float, default=1e4,
                        help="on CPU, time the Triton interpreter up to this many elements")
    parser.add_argument("--threads", type=int,
                        help="torch CPU threads (default: torch's); 1 on a shared machine, where "
                        "OpenMP threads spin-wait for cores other jobs hold")
    parser.add_argument("--out", default=".", help="directory for the CSV, JSON, Markdown, PNG")
    parser.add_argument("--plot", action="store_true", help="also draw kernels-bench.png")
    args = parser.parse_args(argv)
    try:
        args.ops = [o.strip() for o in args.ops.split(",") if o.strip()]
        args.sizes = None if args.sizes is None else [int(float(s)) for s in args.sizes.split(",")]
    except ValueError as err:
        parser.error(f"--sizes: expected comma-separated numbers ({err})")
    try:
        args.fused_sizes = list(FUSED_SIZES) if args.fused_sizes is None else [
            n for n in (int(float(s)) for s in args.fused_sizes.split(",")) if n > 0]
    except ValueError as err:
        parser.error(f"--fused-sizes: expected comma-separated numbers ({err})")
    unknown = [o for o in args.ops if o not in ops.OPS]
    if unknown:
        parser.error(f"--ops: unknown {unknown}; expected some of {list(ops.OPS)}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads: expected >= 1, got {args.threads}")
    if args.sizes is not None and any(s < 1 for s in args.sizes):
        parser.error(f"--sizes: expected sizes >= 1, got {args.sizes}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark with command-line arguments ``argv``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a bad argument (2)
        return int(exit_.code or 0)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda and not interpreted():
        logger.warning("Triton not timed: on CPU it needs TRITON_INTERPRET=1 set before start")
    triton_max = 10**12 if cuda else (int(args.interpreter_max) if interpreted() else 0)
    sizes = args.sizes or (GPU_SIZES if cuda else CPU_SIZES)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from ._triton import triton

    name = torch.cuda.get_device_name(device) if cuda else cpu_name()
    meta = {"device": name, "device_type": device.type, "torch": torch.__version__,
            "triton": triton.__version__ if triton else "not installed",
            "command": " ".join(["labbench kernels-bench", *argv]),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "python": platform.python_version(), "host_cpus": torch.get_num_threads()}
    rows: list[dict] = []
    # `timeout` sends SIGTERM: end like Ctrl-C, so that what was measured is still written.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with open(out / "kernels-bench.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()

            def emit(r: dict) -> None:
                rows.append(r)
                writer.writerow(r)
                f.flush()  # partial results survive an interrupted run
                logger.info("%s", r)

            copy = {}
            for n in sizes:  # first, so every later row can say its fraction of copy
                copy[n] = copy_bandwidth(n, device)
                emit(row("copy", n, "torch", 8 * n / copy[n] / 1e3, 8 * n, copy[n]))
            if not args.no_models:  # the two model-level goals, before the long sweep
                model_cases(args.width or (64 if cuda else 16), device, triton_max=triton_max,
                            emit=emit)
                fused_sizes(args.fused_sizes, device, triton_max=triton_max, copy=copy,
                            emit=emit)
            sweep(args.ops, sizes, device, use_compile=not args.no_compile,
                  triton_max=triton_max, copy=copy, emit=emit)
    except KeyboardInterrupt:
        meta["interrupted"] = True
        logger.warning("kernels-bench interrupted: writing the %d rows measured", len(rows))
    finally:
        (out / "kernels-bench.json").write_text(json.dumps({"meta": meta, "rows": rows},
                                                           indent=1))
        (out / "kernels-bench.md").write_text(summary_markdown(rows, meta))
        if args.plot and rows:
            plot(rows, out / "kernels-bench.png")
    print(f"kernels-bench: {len(rows)} rows on {name} written to {out}/kernels-bench.*")
    return 130 if meta.get("interrupted") else 0


def cpu_name() -> str:
    """The CPU's model name (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
