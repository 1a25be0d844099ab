"""One run: data, model, quantized optimizer, the training loop and its diagnostics.

`run(config)` reads top to bottom: build everything from the `RunConfig`, train epoch by epoch,
evaluate on validation (and on test whenever validation improves, so the test metric is the one
at the best validation epoch, as the paper reports), hand every number to the recorder. A run
that diverges ends early with ``diverged = 1`` and a reason (`DIVERGENCE`): BinaryConnect diverging
is one of the things we measure, so it is a result, not a crash.
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.config import ConfigError, RunConfig, parse_clip, parse_schedule
from bench.data import CharData, ImageData, load_dataset
from bench.deploy import PackedModel, log_packed, pack_run_model, save_run_model
from bench.diagnostics import grad_norms, lstm_bptt
from bench.floors import floors
from bench.layers import LSTM, init_weights, quantizable_weights
from bench.methods import LayerSpec, resolve_layers
from bench.models import build_model
from bench.optim import QuantOptimizer, QuantTarget
from bench.quantizers import make_quantizer
from bench.record import (
    NullRecorder,
    Recorder,
    download_checkpoint,
    env_info,
    mlflow_run_resumed,
    peak_rss_mb,
)

__all__ = ["CHECKPOINT", "DIAG_EVERY", "DIVERGENCE", "Progress", "RunResult", "Session", "build_run",
           "build_session", "load_checkpoint", "resume_recorded", "run", "save_checkpoint"]

log = logging.getLogger(__name__)

DIAG_EVERY = 10  # per-layer gradient norms and flip ratios are sampled every N steps (and step 1)
GATES = "ifco"  # LSTM gate order
BPTT_BATCH = 32  # held-out sequences (the first of the validation split) for the BPTT profile

# When a run counts as diverged (``diverged = 1``, tag ``labbench.diverged_reason``). The chance
# loss is that of a model predicting nothing: ln(K) for cross-entropy over K classes or
# characters, 1 for the squared hinge at zero outputs.
DIVERGENCE = {
    "nonfinite": "a training or validation loss is NaN or infinite",
    "bound": "a training step's loss exceeds 100x the chance loss",
    "no_progress": "an epoch's mean training loss stays above 3x the chance loss",
}
BOUND_FACTOR, NO_PROGRESS_FACTOR = 100.0, 3.0


@dataclass
class RunResult:
    """What a run produced: final metrics, per-epoch history, and where its data came from."""

    config: RunConfig
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def diverged(self) -> bool:
        return bool(self.metrics.get("diverged"))


@dataclass
class Built:
    """Everything `run` trains, built from a config (also used by `labbench speed`)."""

    model: nn.Module
    optimizer: QuantOptimizer
    weights: list  # bench.layers.Quantizable, forward order
    specs: dict[str, LayerSpec]
    device: torch.device


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no CUDA device")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_base_optimizer(config: RunConfig, params: Any) -> torch.optim.Optimizer:
    if config.optimizer == "adam":  # eps 1e-8, betas (0.9, 0.999) as the reference code
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)


def lr_factor(schedule: str, epochs: int) -> Any:
    """Multiplier of the initial lr for an epoch index e (completed epochs) under `schedule`."""
    kind, nums = parse_schedule(schedule)
    if kind == "step":
        milestones, gamma = nums[:-1], nums[-1]
        return lambda e: gamma ** sum(e >= m for m in milestones)
    if kind == "every":
        return lambda e: nums[1] ** (e // int(nums[0]))
    if kind == "exp":
        start = nums[1] if len(nums) > 1 else 0
        return lambda e: nums[0] ** max(0.0, e - start)
    if kind == "cosine":
        return lambda e: 0.5 * (1 + math.cos(math.pi * e / epochs))
    return lambda e: 1.0


def build_run(config: RunConfig, *, in_shape: tuple[int, ...], classes: int) -> Built:
    """Model with the reference init, its quantized weights and the wrapped optimizer."""
    device = resolve_device(config.device)
    model = build_model(config, in_shape=in_shape, classes=classes)
    weights = quantizable_weights(model)
    specs = resolve_layers(config.method, [w.name for w in weights], bits=config.bits,
                           levels=config.levels, layer_methods=config.layer_methods)
    init_weights(model, {n for n, s in specs.items() if s.method.quantized})
    model.to(device)
    base = make_base_optimizer(config, model.parameters())
    targets = [QuantTarget(w.name, w.param, specs[w.name],
                           granularity=(config.granularity or "tensor") if specs[w.name].method.scaled
                           else "tensor", gates=w.gates, recurrent=w.recurrent) for w in weights]
    fused = fuses_on_cpu(config, device, targets)
    compiled = not fused and resolve_backend(config.backend, device, targets) == "compile"
    optimizer = QuantOptimizer(targets, base, backend="torch" if compiled else config.backend,
                               ttq_threshold=config.ttq_threshold or 0.05,
                               fixed_scale=config.fixed_scale, compile=compiled, fused=fused)
    return Built(model, optimizer, weights, specs, device)


def fuses_on_cpu(config: RunConfig, device: torch.device, targets: list[QuantTarget]) -> bool:
    """Whether ``backend="auto"`` takes the fused C++ step (`kernels.fused_adam_lab_step_`: Adam,
    clip and binarization in two passes): on CPU, with Adam without weight decay, float32, when
    every quantized weight is binary with a learned scale (lab, bwn, xnor, lab2) and the
    extension builds. The paper's MLP: 0.9x fp per step against 1.1x compiled (preliminary)."""
    if (config.backend != "auto" or device.type != "cpu" or config.optimizer != "adam"
            or config.weight_decay or config.dtype not in (None, "float32")):
        return False
    methods = [t.spec.method for t in targets if t.spec.method.quantized]
    if not methods or any(m.weights != "binary" or m.fixed_scale for m in methods):
        return False
    from kernels.fused import fused_cpp_available

    return fused_cpp_available()


AUTO_COMPILE_MIN_WEIGHTS = 1_000_000


def resolve_backend(backend: str, device: torch.device, targets: list[QuantTarget]) -> str:
    """What ``backend="auto"`` means for this run: ``"compile"`` on a CPU with a C++ compiler when
    at least `AUTO_COMPILE_MIN_WEIGHTS` weights take the binary step (the paper's MLP: eager LAB
    costs 1.36x fp per step, compiled 1.0-1.15x across runs, and the few seconds of compiling
    are repaid within the first epoch) or an alternating ternary/m-bit solver (lat-approx and
    linear-level laq then take the C++ step of `kernels.levels_step` when it builds, a compiled
    pass per iteration otherwise; docs/kernels.md); else ``"auto"`` (the hand-written Triton
    kernels on CUDA, the torch reference elsewhere). Other values are returned as they are."""
    if backend != "auto" or device.type != "cpu":
        return backend
    binary = sum(t.param.numel() for t in targets
                 if (t.quantizer or make_quantizer(t.spec, t.granularity, t.gates)).compiles)
    if binary >= AUTO_COMPILE_MIN_WEIGHTS and any(map(shutil.which, ("c++", "g++", "clang++"))):
        return "compile"
    return backend


def loss_fn(kind: str, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy, or the paper's squared hinge on +-1 one-hot targets (section 1.6)."""
    logits = logits.float().reshape(-1, logits.shape[-1])  # (N, classes)
    target = target.reshape(-1)
    if kind == "sq-hinge":
        t = 2 * F.one_hot(target, logits.shape[-1]).float() - 1
        return F.relu(1 - t * logits).square().mean()
    return F.cross_entropy(logits, target)


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageData | CharData, split: str, config: RunConfig,
             device: torch.device, autocast: Any) -> dict[str, float]:
    """Loss and accuracy/error (classification) or cross-entropy and bits/char (lm) on a split."""
    model.eval()
    total_loss = total_xent = correct = count = 0.0
    for x, y in data.eval_batches(split, config.batch_size, config.seq_len or 0):
        x, y = x.to(device), y.to(device)
        with autocast():
            logits = model(x)
        n = y.numel()
        total_loss += loss_fn(config.loss, logits, y).item() * n
        if data.task == "lm":
            total_xent += loss_fn("xent", logits, y).item() * n
        else:
            correct += (logits.argmax(-1) == y).sum().item()
        count += n
    model.train()
    if count == 0:
        raise ConfigError("eval_limit", f"the {split} split is empty (eval_limit "
                          f"{config.eval_limit}, seq_len {config.seq_len})")
    loss = total_loss / count
    if data.task == "lm":
        xent = total_xent / count
        return {"loss": loss, "xent": xent, "bpc": xent / math.log(2)}
    return {"loss": loss, "acc": correct / count, "err": 100.0 * (1 - correct / count)}


def _spectral(built: Built, alphas: dict[str, torch.Tensor]) -> dict[str, float]:
    """Largest singular value of each (quantized) recurrent matrix as the forward pass uses it:
    the whole 4H x H matrix (``spectral_whole/``, comparable across methods, full precision
    included) and each H x H gate block (``spectral/``). For binary methods also Proposition
    3.2's lower bound alpha * sqrt(H) (a +-1 m x n matrix with m <= n has spectral norm >=
    sqrt(n)); the bound holds for every such matrix, so it is a reference line, not evidence."""
    out = {}
    for w in built.weights:
        if not w.recurrent:
            continue
        out[f"spectral_whole/{w.name}"] = torch.linalg.matrix_norm(
            w.param.detach().float(), ord=2).item()
        blocks = w.param.detach().float().reshape(w.gates, -1, w.param.shape[1])  # (4, H, H)
        norms = torch.linalg.matrix_norm(blocks, ord=2).tolist()
        binary = built.specs[w.name].method.quantizer.two_level
        alpha = alphas.get(w.name, torch.ones(()))
        for g, norm in enumerate(norms):
            out[f"spectral/{w.name}.{GATES[g]}"] = norm
            if binary:
                if alpha.dim() == 0:
                    a = alpha.item()
                elif alpha.numel() == w.gates:  # per gate
                    a = alpha[g].item()
                else:  # per row: min over the block's rows bounds it from below
                    a = alpha.reshape(w.gates, -1)[g].min().item()
                out[f"spectral_bound/{w.name}.{GATES[g]}"] = a * math.sqrt(blocks.shape[-1])
    return out


def unclamped_grad_norms(loss: torch.Tensor, weights: list, lstms: list[LSTM],
                         scaler: torch.amp.GradScaler) -> list[float]:
    """Norms of d loss / d w for each of `weights` with the LSTMs' gate clamps switched off: one
    more backward through the graph of `loss` (kept for the clipped backward that follows), so a
    diagnostic step under ``gate:C`` costs about one extra backward. ``.grad`` is not touched."""
    for m in lstms:
        m.clamp_switch.on = False
    try:
        grads = torch.autograd.grad(scaler.scale(loss), [w.param for w in weights],
                                    retain_graph=True, allow_unused=True)
    finally:
        for m in lstms:
            m.clamp_switch.on = True
    return grad_norms(grads, scale=scaler.get_scale() if scaler.is_enabled() else 1.0)


def model_cost(built: Built, config: RunConfig) -> dict[str, float]:
    """bits_per_weight over quantizable weights and the packed model size in bytes."""
    quant_ids = {id(w.param) for w in built.weights}
    bits_total = numel_total = packed = 0.0
    for w in built.weights:
        spec = built.specs[w.name]
        bits = spec.bits_per_weight
        n = w.param.numel()
        bits_total += bits * n
        numel_total += n
        packed += math.ceil(n * bits / 8)
        quantizer = make_quantizer(spec, config.granularity or "tensor", w.gates)
        packed += 4 * quantizer.n_scales(w.param.shape)  # float32 scales
    float_bytes = 2 if config.method == "amp" else 4
    for p in built.model.parameters():
        if id(p) not in quant_ids:
            packed += p.numel() * float_bytes
    for name, b in built.model.named_buffers():
        if not name.endswith("num_batches_tracked"):
            packed += b.numel() * float_bytes
    return {"bits_per_weight": bits_total / max(numel_total, 1), "packed_bytes": packed}


@dataclass
class Session:
    """What one run trains with, built from its config (`build_session`)."""

    config: RunConfig
    data: ImageData | CharData
    built: Built
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    generator: torch.Generator  # the order of the training batches
    lstms: list[LSTM]
    clip_kind: str
    clip_c: float | None
    chance: float  # the loss of a model that predicts nothing (DIVERGENCE)
    bptt_batch: Any  # held-out sequences for the BPTT profile (LSTM language models)
    info: dict[str, Any]

    @property
    def lm(self) -> bool:
        return self.data.task == "lm"

    def autocast(self) -> Any:
        dtype = getattr(torch, self.config.dtype)
        return torch.autocast(self.built.device.type, dtype=dtype, enabled=dtype != torch.float32)


@dataclass
class Progress:
    """What the epochs so far produced; a checkpoint carries it (with the model's, optimizer's,
    scheduler's and RNG states), so a resumed run goes on from here."""

    epoch: int = 0  # completed epochs
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    step_times: list[float] = field(default_factory=list)
    best: dict[str, dict[str, float]] | None = None  # {"val": ..., "test": ...} at best_epoch
    best_epoch: int = 0
    diverged: bool = False
    reason: str = ""
    wall_s: float = 0.0  # wall time of the processes before this one (resumed runs)
    best_model: dict | None = None  # the best epoch's packed model (`PackedModel.to_dict`)


def run(config: RunConfig, recorder: Recorder | None = None, *, progress: bool = False,
        resume: str | Path | None = None, replay: bool = False) -> RunResult:
    """Train and evaluate one configuration.

    The stages: `build_session` (data, model, optimizer, schedule), then per epoch `train_epoch`
    and `end_epoch` (validation, test at the best validation epoch, diagnostics) and a checkpoint,
    then `finish` (final metrics). A recorder with ``log_artifact`` (`bench.record.MlflowRecorder`)
    receives ``checkpoint/last.pt`` after every epoch, overwritten each time.

    Args:
        config: the run.
        recorder: where params, per-epoch metrics and artifacts go (default: nowhere).
        progress: show a progress bar per epoch (the CLI turns it on).
        resume: a checkpoint file (``checkpoint/last.pt`` of an earlier run of this config): go on
            after its last epoch; the run ends with the metrics the uninterrupted run would have.
        replay: log the checkpoint's per-epoch metrics again (resuming into a new MLflow run).

    Returns:
        `RunResult` with the final metrics (see docs/mlflow-layout.md for the names).

    Raises:
        bench.data.DatasetNotFoundError: the dataset's files are missing.
        ValueError: the checkpoint is of another configuration.
    """
    threads = torch.get_num_threads()  # config.threads holds for this run only
    try:
        return _run(config, recorder or NullRecorder(), progress, resume, replay)
    finally:
        torch.set_num_threads(threads)


def _run(config: RunConfig, recorder: Recorder, progress: bool, resume: str | Path | None,
         replay: bool) -> RunResult:
    t_start = time.perf_counter()
    session = build_session(config)
    state = load_checkpoint(session, resume) if resume is not None else Progress()
    _record_start(session, recorder)
    if replay:
        for epoch, row in enumerate(state.history, 1):
            recorder.log_metrics(row, step=epoch)
    bar = _progress_bar(progress, config)
    for epoch in range(state.epoch + 1, config.epochs + 1):
        if state.diverged or (config.steps and state.step >= config.steps):
            break
        sums = train_epoch(session, state, epoch, bar)
        if state.diverged:
            break
        end_epoch(session, state, epoch, sums, recorder)
        if state.diverged:
            break
        session.scheduler.step()
        state.epoch = epoch
        save_checkpoint(session, state, recorder, time.perf_counter() - t_start)
    if bar:
        bar.stop()
    metrics = finish(session, state, recorder, state.wall_s + time.perf_counter() - t_start)
    save_models(session, state, recorder)
    return RunResult(config, metrics, state.history, session.info)


def _keeps_files(recorder: Recorder) -> bool:
    return hasattr(recorder, "log_artifact") or (hasattr(recorder, "client")
                                                 and hasattr(recorder, "run_id"))


def save_models(s: Session, state: Progress, recorder: Recorder) -> None:
    """Log the run's model as ``model/final.safetensors`` and, when the best validation epoch is
    not the last (or the last weights are not finite), ``model/best.safetensors``
    (docs/deploy.md). A model that cannot be packed does not fail a finished run: a warning and
    the tag ``labbench.model_error`` say why."""
    if not _keeps_files(recorder):
        return
    try:
        final = save_run_model(recorder, s.built.model, s.built.optimizer, s.config, s.data,
                               tag="final", epoch=state.epoch)
        if state.best_model is not None and (final is None or state.best_epoch != state.epoch):
            log_packed(recorder, PackedModel.from_dict(state.best_model), "best")
    except (ValueError, OSError) as err:
        log.warning("the run's model was not saved: %s", err)
        recorder.set_tags({"labbench.model_error": str(err)[:500]})


def build_session(config: RunConfig) -> Session:
    """Seed, load the data, build the model, optimizer, schedule and loop helpers."""
    if config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    data = load_dataset(config.dataset, train_limit=config.train_limit,
                        eval_limit=config.eval_limit)
    lm = data.task == "lm"
    built = build_run(config, in_shape=() if lm else data.shape,
                      classes=len(data.vocab) if lm else data.classes)
    device = built.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if data.train_steps_per_epoch(config.batch_size, config.seq_len or 0) == 0:
        raise ConfigError("batch_size", f"{config.batch_size} batches of seq_len "
                          f"{config.seq_len} exceed the training set ({data.info['splits'][0]} "
                          "examples/characters)")
    info = {**env_info(device), "data": data.info, "device": str(device),
            "quantized": {n: s.method.name for n, s in built.specs.items()},
            "prox_step": "compile" if built.optimizer.compiled else
            "fused" if built.optimizer.fused else config.backend}
    clip_kind, clip_c = parse_clip(config.clip)
    lstms = [m for m in built.model.modules() if isinstance(m, LSTM)]
    for m in lstms:
        m.gate_clip = clip_c if clip_kind == "gate" else None
    scheduler = torch.optim.lr_scheduler.LambdaLR(built.optimizer,
                                                  lr_factor(config.schedule, config.epochs))
    scaler = torch.amp.GradScaler(device.type, enabled=config.dtype == "float16")
    chance = 1.0 if config.loss == "sq-hinge" else math.log(len(data.vocab) if lm else data.classes)
    bptt_batch = (next(data.eval_batches("val", BPTT_BATCH, config.seq_len or 0))
                  if lstms and lm else None)
    return Session(config, data, built, scheduler, scaler,
                   torch.Generator().manual_seed(config.seed), lstms, clip_kind, clip_c, chance,
                   bptt_batch, info)


def _record_start(s: Session, recorder: Recorder) -> None:
    info = s.info
    recorder.set_tags({"labbench.task": s.data.task,
                       "labbench.version": info["packages"]["labbench"],
                       "labbench.git_commit": info["git_commit"],
                       "labbench.git_dirty": info["git_dirty"]})
    recorder.log_params(s.config.to_dict())
    recorder.log_dict(s.config.to_dict(), "config.json")
    recorder.log_dict(info, "env.json")


def train_epoch(s: Session, state: Progress, epoch: int, bar: Any) -> dict[str, Any]:
    """One pass over the training batches (or up to the ``steps`` cap), with the sampled
    diagnostics; sets ``state.diverged`` when the loss does (`DIVERGENCE`)."""
    config, built, device = s.config, s.built, s.built.device
    model, opt = built.model, built.optimizer
    names = [w.name for w in built.weights]
    params = [p for p in model.parameters() if p.requires_grad]
    sums: dict[str, Any] = {"t_start": time.perf_counter(), "loss": 0.0, "n": 0, "clipped": 0.0,
                            "clip_total": 0.0, "n_diag": 0,
                            **{k: dict.fromkeys(names, 0.0) for k in
                               ("grad_sum", "grad_max", "raw_sum", "raw_max", "flips")}}
    total = s.data.train_steps_per_epoch(config.batch_size, config.seq_len or 0)
    task = bar.add_task(f"epoch {epoch}/{config.epochs}", total=total) if bar else None
    for x, y in s.data.train_batches(config.batch_size, s.generator, config.seq_len or 0):
        diag = state.step % DIAG_EVERY == 0
        t0 = time.perf_counter()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        counts = torch.zeros(2, device=device) if diag and s.clip_kind == "gate" else None
        for m in s.lstms:
            m.clip_counts = counts
        with s.autocast():
            logits = model(x)
        loss = loss_fn(config.loss, logits, y)
        opt.zero_grad()
        raw = (unclamped_grad_norms(loss, built.weights, s.lstms, s.scaler)
               if diag and names and s.clip_kind == "gate" else None)
        s.scaler.scale(loss).backward()
        loss_value = loss.item()
        if not math.isfinite(loss_value) or loss_value > BOUND_FACTOR * s.chance:
            state.diverged = True
            state.reason = "nonfinite" if not math.isfinite(loss_value) else "bound"
            break
        skip = False
        if s.scaler.is_enabled():  # float16: unscale, and skip steps with inf/NaN gradients
            s.scaler.unscale_(opt.base)
            skip = not all(bool(torch.isfinite(p.grad).all()) for p in params
                           if p.grad is not None)
        if diag and raw is None:  # no gate clamp: the gradient so far is the raw one
            raw = grad_norms([w.param.grad for w in built.weights])
        if s.clip_kind == "norm":
            norm = torch.nn.utils.clip_grad_norm_(params, s.clip_c)
            sums["clipped"] += float(norm > s.clip_c)
            sums["clip_total"] += 1
        elif counts is not None:
            sums["clipped"] += counts[0].item()
            sums["clip_total"] += counts[1].item()
        if diag:  # d loss / d w_hat per quantized layer: raw, and as the optimizer gets it
            got = (raw if s.clip_kind == "none"
                   else grad_norms([w.param.grad for w in built.weights]))
            for name, r, g in zip(names, raw, got, strict=True):
                sums["raw_sum"][name] += r
                sums["raw_max"][name] = max(sums["raw_max"][name], r)
                sums["grad_sum"][name] += g
                sums["grad_max"][name] = max(sums["grad_max"][name], g)
        if not skip:
            opt.step(track_flips=diag)
        s.scaler.update()
        if diag and not skip:
            for name, f in opt.last_flips.items():
                sums["flips"][name] += f
            sums["n_diag"] += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        state.step_times.append(time.perf_counter() - t0)
        sums["loss"] += loss_value
        sums["n"] += 1
        state.step += 1
        if bar:
            bar.update(task, advance=1, description=f"epoch {epoch}/{config.epochs} "
                       f"loss {loss_value:.3f}")
        if config.steps and state.step >= config.steps:
            break
    if bar:
        bar.remove_task(task)
    if not state.diverged and sums["loss"] / max(sums["n"], 1) > NO_PROGRESS_FACTOR * s.chance:
        state.diverged, state.reason = True, "no_progress"
    return sums


def end_epoch(s: Session, state: Progress, epoch: int, sums: dict[str, Any],
              recorder: Recorder) -> None:
    """Validate (and test, when validation improved), gather the epoch's diagnostics into one
    row of `state.history` and hand it to the recorder."""
    config, built, device, lm = s.config, s.built, s.built.device, s.lm
    model, opt = built.model, built.optimizer
    val = evaluate(model, s.data, "val", config, device, s.autocast)
    if not math.isfinite(val["loss"]):
        state.diverged, state.reason = True, "nonfinite"
        return
    best = state.best
    better = best is None or (val["xent"] < best["val"]["xent"] if lm else
                              (val["acc"], -val["loss"]) > (best["val"]["acc"], -best["val"]["loss"]))
    if better:
        state.best = {"val": val, "test": evaluate(model, s.data, "test", config, device, s.autocast)}
        state.best_epoch = epoch
        if _keeps_files(recorder):  # kept until the end: logged if the last epoch is not the best
            try:
                packed = pack_run_model(model, opt, config, s.data, tag="best", epoch=epoch)
            except ValueError as err:
                log.warning("the best epoch's model was not packed: %s", err)
                packed = None
            state.best_model = packed.to_dict() if packed is not None else None
    alphas_t = {t.name: t.state["alpha"] for t in opt.targets}
    row = {"train_loss": sums["loss"] / max(sums["n"], 1), "lr": opt.param_groups[0]["lr"],
           "epoch_s": time.perf_counter() - sums["t_start"],
           **{f"val_{k}": v for k, v in val.items()},
           **{f"alpha/{k}": v for k, v in opt.alphas().items()},
           **_spectral(built, alphas_t)}
    n_diag = sums["n_diag"]
    if n_diag:
        row.update({f"grad_norm/{k}": v / n_diag for k, v in sums["grad_sum"].items()})
        row.update({f"grad_norm_max/{k}": v for k, v in sums["grad_max"].items()})
        row.update({f"grad_norm_raw/{k}": v / n_diag for k, v in sums["raw_sum"].items()})
        row.update({f"grad_norm_raw_max/{k}": v for k, v in sums["raw_max"].items()})
        row.update({f"flip_ratio/{t.name}": sums["flips"][t.name] / n_diag for t in opt.targets})
    if s.clip_kind != "none":
        row["clip_frac"] = sums["clipped"] / max(sums["clip_total"], 1)
    if s.bptt_batch is not None:
        with s.autocast():
            profile = lstm_bptt(model, *(t.to(device) for t in s.bptt_batch))
        row["bptt_growth"] = profile["bptt_growth"]
        recorder.log_dict({"epoch": epoch, **profile}, f"bptt/epoch-{epoch}.json")
    state.history.append(row)
    recorder.log_metrics(row, step=epoch)


def finish(s: Session, state: Progress, recorder: Recorder, wall_s: float) -> dict[str, float]:
    """The run's final metrics: the best validation epoch's scores and the run's costs."""
    config, built, device = s.config, s.built, s.built.device
    metrics: dict[str, float] = {}
    for split in ("val", "test"):
        for k in ("loss", "xent", "bpc") if s.lm else ("loss", "acc", "err"):
            prefix = "best_val" if split == "val" else "test"
            metrics[f"{prefix}_{k}"] = state.best[split][k] if state.best else float("nan")
    step_times = state.step_times
    metrics.update({
        "best_epoch": state.best_epoch,
        "epochs_run": len(state.history),
        "diverged": float(state.diverged),
        "wall_s": wall_s,
        "step_ms": 1000 * statistics.median(step_times[1:] or step_times or [float("nan")]),
        "peak_mem_mb": (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
                        else peak_rss_mb()),
        "state_mem_mb": (sum(p.numel() * p.element_size() for p in built.model.parameters())
                         + built.optimizer.state_nbytes()) / 2**20,
        **model_cost(built, config),
        **floors(s.data),  # unigram/bigram bits per char or chance, beside every score
    })
    recorder.log_metrics(metrics, step=len(state.history))
    if state.diverged:
        recorder.set_tags({"labbench.diverged_reason": state.reason})
    s.info["diverged_reason"] = state.reason
    return metrics


# --- checkpoints ------------------------------------------------------------------------------
CHECKPOINT = "checkpoint/last.pt"  # the run artifact, overwritten after every epoch
CHECKPOINT_FORMAT = 1


def checkpoint_state(s: Session, state: Progress, wall_s: float) -> dict[str, Any]:
    """Everything the next epoch depends on: model, optimizer (latents, curvature, scales, the
    base's state), schedule, gradient scaler, every RNG (the batch order's included) and
    `Progress`."""
    rng = {"torch": torch.get_rng_state(), "data": s.generator.get_state(),
           "numpy": _numpy_rng_to_torch(np.random.get_state()), "python": random.getstate()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    progress = {**state.__dict__, "wall_s": state.wall_s + wall_s}
    return {"format": CHECKPOINT_FORMAT, "config": s.config.to_dict(), "progress": progress,
            "model": s.built.model.state_dict(), "optimizer": s.built.optimizer.state_dict(),
            "scheduler": s.scheduler.state_dict(), "scaler": s.scaler.state_dict(), "rng": rng}


def save_checkpoint(s: Session, state: Progress, recorder: Recorder, wall_s: float) -> None:
    """Write `CHECKPOINT` through the recorder's ``log_artifact`` (recorders without one keep no
    files, and the run saves nothing). A recorder with ``keep_checkpoint(state)`` keeps the
    checkpoint itself instead (the harness: a file outside MLflow, docs/harness.md)."""
    keep = getattr(recorder, "keep_checkpoint", None)
    if keep is not None:
        keep(checkpoint_state(s, state, wall_s))
        return
    log_artifact = getattr(recorder, "log_artifact", None)
    if log_artifact is None:
        return
    with tempfile.TemporaryDirectory(prefix="labbench-ckpt-") as tmp:
        path = Path(tmp) / Path(CHECKPOINT).name
        torch.save(checkpoint_state(s, state, wall_s), path)
        log_artifact(str(path), str(Path(CHECKPOINT).parent))


def load_checkpoint(s: Session, path: str | Path) -> Progress:
    """Restore a `checkpoint_state` file into a freshly built session; return its `Progress`.

    Raises:
        ValueError: the file is of another configuration or format.
    """
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if saved.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: checkpoint format {saved.get('format')!r}, expected "
                         f"{CHECKPOINT_FORMAT}")
    mine = s.config.to_dict()
    theirs = saved["config"]
    differ = [f"{k}: {theirs.get(k)!r} there, {mine.get(k)!r} here"
              for k in sorted(mine.keys() | theirs.keys()) if mine.get(k) != theirs.get(k)]
    if differ:
        raise ValueError(f"{path}: checkpoint of another configuration ({'; '.join(differ)})")
    s.built.model.load_state_dict(saved["model"])
    s.built.optimizer.load_state_dict(saved["optimizer"])
    s.scheduler.load_state_dict(saved["scheduler"])
    s.scaler.load_state_dict(saved["scaler"])
    rng = saved["rng"]
    torch.set_rng_state(rng["torch"])
    s.generator.set_state(rng["data"])
    np.random.set_state(_numpy_rng_from_torch(rng["numpy"]))
    random.setstate(rng["python"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return Progress(**saved["progress"])


def resume_recorded(client: Any, run_id: str, *, progress: bool = False) -> RunResult:
    """Continue a recorded run from its `CHECKPOINT`, in the same MLflow run, with the
    configuration it started with (``labbench run --resume RUN_ID``).

    Raises:
        ValueError: the run has no checkpoint (it ended before its first epoch did).
    """
    with tempfile.TemporaryDirectory(prefix="labbench-resume-") as tmp:
        path = download_checkpoint(client, run_id, tmp)
        if path is None:
            raise ValueError(f"run {run_id} has no {CHECKPOINT} to resume from (it ended before "
                             "its first epoch did, or was recorded before checkpoints)")
        config = RunConfig.from_dict(torch.load(path, map_location="cpu", weights_only=True)["config"])
        with mlflow_run_resumed(client, run_id) as recorder:
            return run(config, recorder, progress=progress, resume=path)


def _numpy_rng_to_torch(state: tuple) -> tuple:  # weights_only loading takes no numpy arrays
    kind, keys, pos, has_gauss, gauss = state
    return kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)


def _numpy_rng_from_torch(state: tuple) -> tuple:
    kind, keys, pos, has_gauss, gauss = state
    return kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss


def _progress_bar(enabled: bool, config: RunConfig) -> Any:
    if not enabled:
        return None
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeRemainingColumn(), transient=True)
    bar.start()
    return bar
