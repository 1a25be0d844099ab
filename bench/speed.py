"""`labbench speed`: training-step time of several methods on one model, in one process.

Every method trains the same model shape on the same synthetic batch (speed does not depend on the
data's values); rounds interleave the methods so that drift in the machine's speed hits all of them
alike. The step is the training step proper: forward, loss, backward, and the (quantized)
optimizer step, without the per-epoch diagnostics.

``peers=True`` adds other libraries' quantization-aware optimizers on the same model, interleaved
with ours (`PEERS`): torchao's PARQ ``QuantOptimizer`` with 1-bit ``LSBQuantizer`` (greedy 1-bit
least squares: alpha = mean|w| per tensor or per row, i.e. BWN's scale) and ``ProxHardQuant``
(w_hat = the nearest of {-alpha, +alpha}), re-fitting alpha every step (``quant_period=1``) as
LAB does, on the weights labbench quantizes, with the same Adam. It needs the ``peers`` extra
(``pip install 'labbench[peers]'``).
"""

from __future__ import annotations

import importlib.util
import logging
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from bench.config import RunConfig, parse_clip
from bench.diagnostics import grad_norms
from bench.layers import LSTM
from bench.train import (
    DIAG_EVERY,
    build_run,
    loss_fn,
    make_base_optimizer,
    resolve_device,
    seed_everything,
    unclamped_grad_norms,
)

__all__ = ["PEERS", "PeersNotInstalled", "build_parq", "format_speed_table",
           "measure_diagnostics_cost", "measure_speed", "require_peers"]

IMAGE_SHAPES = {"fashion-mnist": (1, 28, 28), "mnist": (1, 28, 28), "cifar10": (3, 32, 32),
                "svhn": (3, 32, 32)}
SYNTHETIC_VOCAB = 100  # about the paper's corpora (87 and 101 characters)


def _batch(config: RunConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, tuple, int]:
    g = torch.Generator().manual_seed(0)
    if config.task == "lm":
        x = torch.randint(SYNTHETIC_VOCAB, (config.batch_size, config.seq_len), generator=g)
        y = torch.randint(SYNTHETIC_VOCAB, (config.batch_size, config.seq_len), generator=g)
        return x.to(device), y.to(device), (), SYNTHETIC_VOCAB
    shape = IMAGE_SHAPES[config.dataset]
    x = torch.randn((config.batch_size, *shape), generator=g)
    y = torch.randint(10, (config.batch_size,), generator=g)
    return x.to(device), y.to(device), shape, 10


# %% Peers: other libraries' optimizers on the same model

PEERS_EXTRA = "pip install 'labbench[peers]'"


class PeersNotInstalled(ImportError):
    """``--peers`` without the optional ``peers`` extra (torchao)."""


def require_peers() -> None:
    """Raise `PeersNotInstalled`, naming the extra, unless torchao's PARQ can be imported."""
    if importlib.util.find_spec("torchao") is None:
        raise PeersNotInstalled(f"labbench speed --peers times torchao's PARQ optimizer, which is "
                                f"not installed: {PEERS_EXTRA}")
    # torchao's import logs a warning per CUDA library it cannot load into a CPU build of torch.
    quiet = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [log.level for log in quiet]
    try:
        for log in quiet:
            log.setLevel(logging.ERROR)
        import torchao.prototype.parq  # noqa: F401
    except ImportError as err:
        raise PeersNotInstalled(f"labbench speed --peers: torchao.prototype.parq cannot be "
                                f"imported ({err}); {PEERS_EXTRA}") from err
    finally:
        for log, level in zip(quiet, levels, strict=True):
            log.setLevel(level)


@dataclass
class PeerRun:
    """A peer's model and optimizer: what `measure_speed` steps (the shape of `bench.train.Built`)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    quantized: list[torch.nn.Parameter]  # the weights the peer quantizes


def build_parq(config: RunConfig, *, in_shape: tuple[int, ...], classes: int) -> PeerRun:
    """torchao PARQ, 1-bit: ``QuantOptimizer(Adam, LSBQuantizer(), ProxHardQuant())``.

    The model is ``config``'s with full-precision layers (method ``fp``: PARQ quantizes through
    the optimizer only), initialised as labbench initialises it. The weights labbench would
    quantize form PARQ's quantized group (``quant_bits=1``, per row with
    ``granularity="channel"``); the rest (biases, batch norm) a plain group of the same Adam.
    """
    require_peers()
    from torchao.prototype.parq.optim import ProxHardQuant
    from torchao.prototype.parq.optim import QuantOptimizer as ParqOptimizer
    from torchao.prototype.parq.quant import LSBQuantizer

    values = {**config.to_dict(), "method": "fp", "dtype": "float32"}
    for key in _METHOD_FIELDS:
        values.pop(key)
    fp = RunConfig.from_dict(values)
    built = build_run(fp, in_shape=in_shape, classes=classes)
    quantized = [w.param for w in built.weights]
    ids = {id(p) for p in quantized}
    rest = [p for p in built.model.parameters() if id(p) not in ids]
    base = make_base_optimizer(fp, [{"params": quantized, "quant_bits": 1},
                                    {"params": rest}])
    optimizer = ParqOptimizer(base, LSBQuantizer(), ProxHardQuant(), quant_period=1,
                              quant_per_channel=config.granularity == "channel")
    return PeerRun(built.model, optimizer, quantized)


PEERS = {"torchao-parq": build_parq}  # row name -> builder


def _state_nbytes(optimizer: Any) -> int:
    if hasattr(optimizer, "state_nbytes"):
        return optimizer.state_nbytes()
    return sum(x.numel() * x.element_size() for s in optimizer.state.values()
               for x in s.values() if isinstance(x, torch.Tensor))


# %% Step time

_METHOD_FIELDS = ("bits", "levels", "granularity", "layer_methods", "ttq_threshold", "fixed_scale")


def measure_speed(base: RunConfig, methods: list[str], *, steps: int = 20, warmup: int = 3,
                  rounds: int = 4, peers: bool = False) -> list[dict[str, Any]]:
    """Median step time per method (ms) and its ratio to ``fp``, measured in this process.

    Args:
        base: model, shape, batch and device settings; its method is ignored.
        methods: methods to time; ``fp`` is added first if absent (the baseline).
        steps: timed steps per method, split over `rounds` interleaved rounds.
        warmup: untimed steps per method before timing.
        peers: also time `PEERS` (rows named after them), interleaved with the methods.

    Returns:
        One dict per method: method, step_ms (median), ratio (to fp), steps, state_mb.

    Raises:
        PeersNotInstalled: ``peers=True`` without torchao (the ``peers`` extra).
    """
    if peers:
        require_peers()
    if "fp" not in methods:
        methods = ["fp", *methods]
    if base.threads:
        torch.set_num_threads(base.threads)
    device = resolve_device(base.device)
    runs = {}
    for m in methods:
        seed_everything(base.seed)
        values = base.to_dict()
        values.pop("method"), values.pop("dtype")
        if m != base.method:  # the other methods run with their own defaults
            for key in _METHOD_FIELDS:
                values.pop(key)
        config = RunConfig.from_dict({**values, "method": m})
        x, y, shape, classes = _batch(config, device)
        runs[m] = (config, build_run(config, in_shape=shape, classes=classes), x, y)
    for name, build in (PEERS.items() if peers else ()):
        seed_everything(base.seed)
        config = runs["fp"][0]
        x, y, shape, classes = _batch(config, device)
        runs[name] = (config, build(base, in_shape=shape, classes=classes), x, y)
    methods = list(runs)

    def step(m: str) -> float:
        config, built, x, y = runs[m]
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=getattr(torch, config.dtype),
                            enabled=config.dtype != "float32"):
            logits = built.model(x)
        loss = loss_fn(config.loss, logits, y)
        built.optimizer.zero_grad()
        loss.backward()
        built.optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    for m in methods:
        for _ in range(warmup):
            step(m)
    times: dict[str, list[float]] = {m: [] for m in methods}
    per_round = max(1, steps // rounds)
    for _ in range(rounds):
        for m in methods:
            times[m] += [step(m) for _ in range(per_round)]
    fp = statistics.median(times["fp"])
    rows = []
    for m in methods:
        built = runs[m][1]
        med = statistics.median(times[m])
        state = sum(p.numel() * p.element_size() for p in built.model.parameters()) \
            + _state_nbytes(built.optimizer)
        rows.append({"method": m, "step_ms": 1000 * med, "ratio": med / fp,
                     "steps": len(times[m]), "state_mb": state / 2**20})
    return rows


def format_speed_table(rows: list[dict[str, Any]], base: RunConfig) -> str:
    shape = {"hidden": base.hidden, "layers": base.layers, "width": base.width,
             "seq_len": base.seq_len, "batch_size": base.batch_size}
    desc = ", ".join(f"{k}={v}" for k, v in shape.items() if v is not None)
    lines = [f"labbench speed: {base.model} ({desc}), device {resolve_device(base.device)}, "
             f"torch threads {torch.get_num_threads()}",
             f"{'method':<14}{'step ms':>10}{'x fp':>8}{'steps':>7}{'state MiB':>11}"]
    for r in rows:
        lines.append(f"{r['method']:<14}{r['step_ms']:>10.2f}{r['ratio']:>8.3f}{r['steps']:>7}"
                     f"{r['state_mb']:>11.1f}")
    return "\n".join(lines)


def measure_diagnostics_cost(base: RunConfig, *, steps: int = 12, warmup: int = 2,
                             rounds: int = 4) -> dict[str, Any]:
    """What the per-layer gradient diagnostics of `bench.train.run` cost, in one process.

    Interleaves, on one model and batch, the plain training step (as `measure_speed`) and the
    diagnostic step that `run` takes every `DIAG_EVERY` steps: under ``gate:C`` one more
    backward with the clamps off for the raw gradient, the per-layer norms of the raw and the
    received gradient, and the flip count. Returns the medians (ms), the diagnostic step's ratio
    to the plain one, and the amortised overhead of one diagnostic step in `DIAG_EVERY`.
    """
    if base.threads:
        torch.set_num_threads(base.threads)
    device = resolve_device(base.device)
    seed_everything(base.seed)
    x, y, shape, classes = _batch(base, device)
    built = build_run(base, in_shape=shape, classes=classes)
    lstms = [m for m in built.model.modules() if isinstance(m, LSTM)]
    clip_kind, clip_c = parse_clip(base.clip)
    for m in lstms:
        m.gate_clip = clip_c if clip_kind == "gate" else None
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    params = [p for p in built.model.parameters() if p.requires_grad]

    def step(diag: bool) -> float:
        t0 = time.perf_counter()
        logits = built.model(x)
        loss = loss_fn(base.loss, logits, y)
        built.optimizer.zero_grad()
        raw = (unclamped_grad_norms(loss, built.weights, lstms, scaler)
               if diag and clip_kind == "gate" else None)
        loss.backward()
        if diag and raw is None:
            raw = grad_norms([w.param.grad for w in built.weights])
        if clip_kind == "norm":
            torch.nn.utils.clip_grad_norm_(params, clip_c)
        if diag and clip_kind != "none":  # as run does: without clipping, received = raw
            grad_norms([w.param.grad for w in built.weights])
        built.optimizer.step(track_flips=diag)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    for _ in range(warmup):
        step(False)
        step(True)
    times: dict[bool, list[float]] = {False: [], True: []}
    per_round = max(1, steps // rounds)
    for _ in range(rounds):
        for diag in (False, True):
            times[diag] += [step(diag) for _ in range(per_round)]
    plain, diag = statistics.median(times[False]), statistics.median(times[True])
    return {"method": base.method, "clip": base.clip, "plain_ms": 1000 * plain,
            "diag_ms": 1000 * diag, "diag_ratio": diag / plain,
            "amortised_ratio": 1 + (diag / plain - 1) / DIAG_EVERY,
            "spread_ms": {k: [1000 * min(v), 1000 * max(v)] for k, v in
                          (("plain", times[False]), ("diag", times[True]))},
            "steps": len(times[False])}
