"""Models leave as files: a trained network saved as safetensors, and loaded back with packed layers.

A model file holds, for every quantized weight ``W`` of shape ``(out, *rest)`` (``in = prod(rest)``):

==================  =========================  ===========================================================
``<name>.codes``    uint8 ``(out, row_bytes)``  the codes, ``kernels.pack_rows`` layout (``bits`` per code)
``<name>.scale``    float32 ``(out,)``          per-row scale (per-tensor and per-gate scales expanded)
``<name>.lut``      float32 ``(2**bits,)``      the level each code stands for (``(G, 2**bits)``: ttq with
                                               one (W_n, W_p) pair per group of ``out / G`` rows)
==================  =========================  ===========================================================

so that ``W[r, j] = scale[r] * lut[code[r, j]]`` (``lut[g, code]`` for grouped luts), bit for bit the
w_hat the network computed with. Every other tensor of the model's state dict (biases, batch norm,
embeddings, unquantized layers) is stored under its own name at its own dtype. The metadata (strings)
says how to rebuild the network; docs/deploy.md lists every key.

`pack_model` derives the codes from w_hat (and the optimizer's scales) and asserts the reconstruction
equals w_hat; `save_run_model` is what a training run calls; `load` rebuilds the network with
`PackedLinear` and `PackedLSTM` layers whose matmuls go through `kernels.packed_linear`.

Example:
    >>> import torch
    >>> from bench.config import RunConfig
    >>> from bench.models import build_model
    >>> cfg = RunConfig(model="mlp", method="bc", hidden=16, layers=1)
    >>> net = build_model(cfg, in_shape=(1, 28, 28), classes=10).eval()
    >>> with torch.no_grad():
    ...     for lin in (net.features[1], net.out):
    ...         _ = lin.weight.copy_(torch.where(lin.weight >= 0, 1.0, -1.0))
    >>> packed = pack_model(net, cfg, in_shape=(1, 28, 28), classes=10)
    >>> packed.layers["features.1.weight"]["bits"], tuple(packed.tensors["features.1.weight.codes"].shape)
    (1, (16, 98))
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.config import RunConfig
from bench.layers import LSTM, LSTMLayer, quantizable_weights
from bench.methods import LayerSpec, resolve_layers
from bench.models import build_model
from kernels import cpp_available, pack_rows, packed_linear, unpack_rows
from kernels.packed_matmul import _packed_linear_cpp, check_weights

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "ModelFileError",
    "PackedLSTM",
    "PackedLinear",
    "PackedMatrix",
    "PackedModel",
    "encode_weight",
    "load",
    "log_packed",
    "pack_model",
    "pack_run_model",
    "read_model",
    "save_model",
    "save_run_model",
]

log = logging.getLogger(__name__)

FORMAT = "labbench-model"
FORMAT_VERSION = "1"
BIT_LAYOUT = ("rows: row r of a weight viewed as (out, in) is ceil(in * bits / 8) bytes; code j occupies "
              "bits [j*bits, (j+1)*bits) of the row, least significant bit first; value = "
              "scale[r] * lut[code] (lut[group(r), code] for a 2-d lut, group(r) = r // (out / G))")

class ModelFileError(ValueError):
    """A model file that cannot be read: not safetensors, truncated, another format or version."""


# --- codes from w_hat -------------------------------------------------------------------------
def level_table(kind: str, bits: int, levels: str | None = None) -> torch.Tensor:
    """The lut of a weight kind: the levels before scaling, padded with zeros to 2**bits entries.

    ``sign``/``binary``: [-1, +1]; ``ternary``: [-1, 0, +1, 0]; ``mbit``: the 2k + 1 levels of
    `kernels.prox_mbit` (k = 2^(bits-1) - 1) in ascending order, computed with the same float32
    operations (m / k for linear levels; powers of two for log levels), then one zero.

    Example:
        >>> level_table("mbit", 3, "log").tolist()
        [-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 0.0]
        >>> level_table("ternary", 2).tolist()
        [-1.0, 0.0, 1.0, 0.0]
    """
    if kind in ("sign", "binary"):
        return torch.tensor([-1.0, 1.0])
    if kind == "ternary":
        return torch.tensor([-1.0, 0.0, 1.0, 0.0])
    if kind != "mbit":
        raise ValueError(f"kind: expected sign, binary, ternary or mbit, got {kind!r}")
    k = 2 ** (bits - 1) - 1
    if levels == "log":
        pos = torch.tensor([2.0 ** -j for j in range(k - 1, -1, -1)], dtype=torch.float32)
    else:
        pos = torch.arange(1, k + 1, dtype=torch.float32) / k
    return torch.cat([-pos.flip(0), torch.zeros(1), pos, torch.zeros(2 ** bits - 2 * k - 1)])


def _rows_of(group_values: torch.Tensor, out: int) -> torch.Tensor:
    """Expand per-group values ((), (G,)) to one per row of `out` rows (G equal row blocks)."""
    v = group_values.detach().float().reshape(-1)
    if out % v.numel():
        raise ValueError(f"{v.numel()} scale groups do not divide {out} rows")
    return v.repeat_interleave(out // v.numel())


def encode_weight(w_hat: torch.Tensor, kind: str, bits: int, *, levels: str | None = None,
                  groups: int = 1, alpha: torch.Tensor | None = None,
                  ttq: tuple[torch.Tensor, torch.Tensor] | None = None, name: str = "weight"
                  ) -> dict[str, torch.Tensor]:
    """Codes, per-row scale and lut of one quantized weight, checked against w_hat.

    Args:
        w_hat: ``(out, *rest)`` the quantized weight as the network computes with it.
        kind: ``sign`` | ``binary`` | ``ternary`` | ``mbit`` | ``ttq`` (`bench.methods.Method.weights`).
        bits: bits per code (1 for sign/binary, 2 for ternary/ttq, the run's bits for mbit).
        levels: mbit's ``linear`` | ``log``.
        groups: scale groups G, blocks of ``out / G`` rows (1: per tensor, out: per channel).
        alpha: the scale per group, ``()`` or ``(G,)`` (the optimizer's; default: max|w_hat| per
            group, which is the scale for sign, binary and ternary weights; mbit needs alpha
            unless its top level is used).
        ttq: ``(W_p, W_n)`` per group (default: the largest positive and negative values).
        name: for error messages.

    Returns:
        ``{"codes": uint8 (out, row_bytes), "scale": float32 (out,), "lut": float32 (2**bits,)
        or (G, 4) for ttq with G > 1}``.

    Raises:
        ValueError: the codes do not reproduce w_hat exactly (value for value; +0 and -0 are
            equal), naming the weight and the first element that differs.
    """
    out = w_hat.shape[0]
    w = w_hat.detach().float().reshape(out, -1)  # (out, in)
    grouped = w.reshape(groups, -1)  # (G, out/G * in)
    if kind == "ttq":
        wp, wn = ttq if ttq is not None else (grouped.clamp(min=0).amax(1), (-grouped).clamp(min=0).amax(1))
        wp, wn = wp.detach().float().reshape(-1), wn.detach().float().reshape(-1)
        if wp.numel() == 1 and groups > 1:
            wp, wn = wp.expand(groups), wn.expand(groups)
        lut = torch.stack([-wn, torch.zeros_like(wn), wp, torch.zeros_like(wp)], dim=1)  # (G, 4)
        scale = torch.ones(out)
        rows = lut.repeat_interleave(out // groups, dim=0)  # (out, 4)
        lut = lut[0] if groups == 1 else lut
    else:
        lut = level_table(kind, bits, levels)
        if alpha is None:
            alpha = torch.ones(()) if kind == "sign" else grouped.abs().amax(1)
        scale = _rows_of(alpha, out)
        rows = scale[:, None] * lut  # (out, 2**bits): every value a row may hold
    # nearest candidate per element: search the midpoints of each row's sorted candidates
    cand, order = rows.sort(dim=1, stable=True)
    mids = (cand[:, 1:] + cand[:, :-1]) / 2
    codes = order.gather(1, torch.searchsorted(mids.contiguous(), w.contiguous()))
    recon = rows.gather(1, codes)
    if not torch.equal(recon, w):
        bad = (recon != w).nonzero()[0].tolist()
        raise ValueError(
            f"{name}: the {kind} codes do not reproduce w_hat exactly: element {tuple(bad)} is "
            f"{w[bad[0], bad[1]].item()!r}, the nearest code gives {recon[bad[0], bad[1]].item()!r} "
            f"({int((recon != w).sum())} of {w.numel()} differ); the weight is not on its level set")
    return {"codes": pack_rows(codes.to(torch.uint8), bits), "scale": scale.contiguous(),
            "lut": lut.float().contiguous()}


def decode_weight(codes: torch.Tensor, scale: torch.Tensor, lut: torch.Tensor, bits: int,
                  shape: tuple[int, ...]) -> torch.Tensor:
    """The float weight of shape `shape` from its packed codes (the inverse of `encode_weight`)."""
    out, n = shape[0], math.prod(shape[1:])
    c = unpack_rows(codes, bits, n).long()  # (out, in)
    if lut.dim() == 1:
        w = scale[:, None] * lut[c]
    else:
        w = scale[:, None] * lut.repeat_interleave(out // lut.shape[0], dim=0).gather(1, c)
    return w.reshape(shape)


# --- the model as tensors + metadata ----------------------------------------------------------
@dataclass
class PackedModel:
    """A model ready to be written: tensors by key, metadata strings, and the quantized layers.

    ``layers`` maps each quantized weight's name to ``{"kind", "method", "bits", "levels",
    "shape", "groups", "granularity"}`` (stored as the ``layers`` metadata entry, JSON).
    """

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts of tensors and strings (what ``torch.load(weights_only=True)`` reads back:
        a run's checkpoint can carry its best epoch's model). The tensors are copies: a packed
        model's full-precision tensors can be the live model's, which training goes on changing."""
        return {"tensors": {k: v.detach().clone() for k, v in self.tensors.items()},
                "metadata": dict(self.metadata)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PackedModel:
        """The inverse of `to_dict`."""
        return cls(dict(d["tensors"]), dict(d["metadata"]), json.loads(d["metadata"]["layers"]))

    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.tensors.items()}, str(path), metadata=self.metadata)
        return path


def _labbench_version() -> str:
    try:
        return importlib.metadata.version("labbench")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _group_count(granularity: str, out: int, gates: int | None) -> int:
    return {"tensor": 1, "channel": out, "gate": gates or 1}[granularity]


def pack_model(model: nn.Module, config: RunConfig, optimizer: Any = None, *,
               in_shape: tuple[int, ...] = (), classes: int, vocab: str | None = None,
               extra: dict[str, str] | None = None) -> PackedModel:
    """Pack a model built by `bench.models.build_model` from `config`, as trained.

    Args:
        model: the network; its quantized parameters hold w_hat (as after `QuantOptimizer.step`).
        config: the run's config (its method says which weights are quantized and how).
        optimizer: the run's `bench.optim.QuantOptimizer`: its per-group scales (and TTQ's W_p,
            W_n) are used; without it they are read off w_hat (not possible for every mbit weight).
        in_shape, classes: what `build_model` was given; `vocab`: a char model's vocabulary.
        extra: more metadata strings (``tag``, ``epoch``, ``run_id``, ...).

    Raises:
        ValueError: a quantized weight is not on its level set (see `encode_weight`).
    """
    weights = quantizable_weights(model)
    specs = resolve_layers(config.method, [w.name for w in weights], bits=config.bits,
                           levels=config.levels, layer_methods=config.layer_methods)
    targets = {t.name: t for t in getattr(optimizer, "targets", [])}
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, dict[str, Any]] = {}
    for w in weights:
        spec: LayerSpec = specs[w.name]
        kind = spec.method.weights
        if kind == "fp":
            continue
        bits = int(spec.bits_per_weight)
        granularity = (config.granularity or "tensor") if spec.method.scaled else "tensor"
        out = w.param.shape[0]
        groups = _group_count(granularity, out, w.gates)
        t = targets.get(w.name)
        alpha = ttq = None
        if t is not None and kind == "ttq":
            ttq = (t.state["wp"], t.state["wn"])
        elif t is not None:
            alpha = t.state["alpha"].cpu()
        enc = encode_weight(state.pop(w.name), kind, bits, levels=spec.levels, groups=groups,
                            alpha=alpha, ttq=ttq, name=w.name)
        tensors.update({f"{w.name}.{k}": v for k, v in enc.items()})
        layers[w.name] = {"kind": kind, "method": spec.method.name, "bits": bits,
                          "levels": spec.levels if kind == "mbit" else None,
                          "shape": list(w.param.shape), "groups": groups, "granularity": granularity}
    tensors.update({k: v.contiguous() for k, v in state.items()})
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "labbench_version": _labbench_version(),
        "method": config.method,
        "config": json.dumps(config.to_dict()),
        "in_shape": json.dumps(list(in_shape)),
        "classes": str(classes),
        "layers": json.dumps(layers),
        "bit_layout": BIT_LAYOUT,
        **({"vocab": json.dumps(vocab)} if vocab is not None else {}),
        **(extra or {}),
    }
    return PackedModel(tensors, metadata, layers)


def save_model(model: nn.Module, config: RunConfig, path: str | Path, optimizer: Any = None, *,
               in_shape: tuple[int, ...] = (), classes: int, vocab: str | None = None,
               extra: dict[str, str] | None = None) -> Path:
    """`pack_model`, then write it to `path` (safetensors). Returns the path."""
    return pack_model(model, config, optimizer, in_shape=in_shape, classes=classes, vocab=vocab,
                      extra=extra).save(path)


def pack_run_model(model: nn.Module, optimizer: Any, config: RunConfig, data: Any, *,
                   tag: str = "final", epoch: int | None = None) -> PackedModel | None:
    """`pack_model` for a training run: shapes, classes or vocabulary from the run's data, and the
    ``tag``, ``epoch``, ``dataset`` and ``dataset_hash`` metadata. A model with non-finite weights
    (a diverged run) is not packed: a warning says so and None is returned.

    Args:
        model, optimizer, config: the run's network, `QuantOptimizer` and config.
        data: the run's `ImageData` or `CharData`.
        tag: ``final`` or ``best``; epoch: the epoch the weights are from.
    """
    if any(not torch.isfinite(p).all() for p in model.parameters()):
        log.warning("model %s not saved: it has non-finite weights (the run diverged)", tag)
        return None
    lm = data.task == "lm"
    return pack_model(model, config, optimizer, in_shape=() if lm else tuple(data.shape),
                      classes=len(data.vocab) if lm else data.classes,
                      vocab=data.vocab if lm else None,
                      extra={"tag": tag, "dataset": config.dataset,
                             "dataset_hash": str(data.info.get("hash", "")),
                             **({"epoch": str(epoch)} if epoch is not None else {})})


def save_run_model(recorder: Any, model: nn.Module, optimizer: Any, config: RunConfig, data: Any, *,
                   tag: str = "final", epoch: int | None = None) -> PackedModel | None:
    """Save a run's model as the artifact ``model/<tag>.safetensors`` (what `bench.train.run` calls
    at the end of a run): `pack_run_model`, then `log_packed`.

    Args:
        recorder: the run's recorder; an `MlflowRecorder` (anything with ``client`` and ``run_id``)
            or a recorder with ``log_artifact(local_path, artifact_path)`` receives the file; others
            (`NullRecorder`) receive nothing.
        model, optimizer, config, data, tag, epoch: as `pack_run_model`.

    Returns:
        The `PackedModel`, or None (non-finite weights: nothing saved).

    Raises:
        ValueError: a quantized weight is off its level set (`encode_weight`).
    """
    packed = pack_run_model(model, optimizer, config, data, tag=tag, epoch=epoch)
    if packed is not None:
        log_packed(recorder, packed, tag)
    return packed


def log_packed(recorder: Any, packed: PackedModel, tag: str) -> None:
    """Write `packed` to a temporary ``<tag>.safetensors`` and log it under ``model/``."""
    if hasattr(recorder, "log_artifact"):
        log_file = recorder.log_artifact
    elif hasattr(recorder, "client") and hasattr(recorder, "run_id"):
        def log_file(local: str, artifact_path: str) -> None:
            recorder.client.log_artifact(recorder.run_id, local, artifact_path)
    else:
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = packed.save(Path(tmp) / f"{tag}.safetensors")
        log_file(str(path), "model")


# --- reading ----------------------------------------------------------------------------------
def read_model(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a model file, checked to be this format and version.

    Raises:
        ModelFileError: missing, not safetensors (or truncated/corrupt), not a labbench model, a
            format version this labbench does not read, or tensors missing for a layer.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelFileError(f"{path}: not a readable safetensors file (truncated or corrupt?): "
                             f"{err}") from None
    if metadata.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a labbench model file (metadata 'format' is "
                             f"{metadata.get('format')!r}, expected {FORMAT!r})")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(f"{path}: model format version {metadata.get('format_version')!r}; this "
                             f"labbench ({_labbench_version()}) reads version {FORMAT_VERSION}")
    try:
        layers = json.loads(metadata["layers"])
        json.loads(metadata["config"])
    except (KeyError, json.JSONDecodeError) as err:
        raise ModelFileError(f"{path}: metadata entry {err} is missing or not JSON") from None
    for name in layers:
        missing = [f"{name}.{k}" for k in ("codes", "scale", "lut") if f"{name}.{k}" not in tensors]
        if missing:
            raise ModelFileError(f"{path}: tensors {missing} of quantized layer {name!r} are missing")
    return tensors, metadata


# --- packed modules ---------------------------------------------------------------------------
class PackedMatrix(nn.Module):
    """A quantized matrix (out, in) kept packed: ``x @ W.T`` through `kernels.packed_linear`.

    Args:
        codes: uint8 ``(out, row_bytes)``; scale: float32 ``(out,)``; lut: float32 ``(2**bits,)``
            or ``(G, 2**bits)`` (one lut per block of ``out / G`` rows: ttq per gate or channel).
        bits: bits per code; in_features: in.
        backend: `kernels.packed_linear`'s backend.
    """

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, lut: torch.Tensor, bits: int,
                 in_features: int, backend: str = "auto"):
        super().__init__()
        self.bits, self.in_features, self.backend = bits, in_features, backend
        self.out_features = codes.shape[0]
        self.register_buffer("codes", codes)
        self.register_buffer("scale", scale.float())
        self.register_buffer("lut", lut.float())
        self._checked: tuple[torch.Tensor, ...] | None = None  # weights `_direct` has checked

    def _direct(self, x: torch.Tensor, bias: torch.Tensor | None) -> bool:
        """Whether ``x`` can go straight to the C++ kernel. `packed_linear`'s checks of the weights
        (`kernels.packed_matmul.check_weights`) ran once for the very tensors held now (in-place
        changes keep their shapes and dtypes; a new tensor is checked again); x's dtype and shape
        are checked here, cheaply, and the C++ kernel checks every shape and device again."""
        held = self._buffers
        checked = self._checked
        if checked is None or checked[0] is not held["codes"] or checked[1] is not held["lut"] \
                or checked[2] is not held["scale"]:
            if self.lut.dim() != 1 or self.backend not in ("auto", "cpp") \
                    or self.codes.device.type != "cpu" or not cpp_available():
                return False
            check_weights(self.codes, self.bits, self.in_features, self.lut, self.scale)
            self._checked = (held["codes"], held["lut"], held["scale"])
        # shapes and devices are checked again in C++ (TORCH_CHECK), so a mistake raises there
        return x.dtype == torch.float32 and x.dim() == 2 and x.shape[1] == self.in_features

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None, relu: bool = False
                ) -> torch.Tensor:
        """x: (..., in) -> (..., out); with ``relu``, relu of that (in the kernel's epilogue)."""
        if self._direct(x, bias):  # the common CPU case, without re-checking constant weights
            return _packed_linear_cpp(x, self.codes, self.bits, self.in_features, self.lut,
                                      self.scale, bias, relu)
        if self.lut.dim() == 1:
            return packed_linear(x, self.codes, self.bits, self.in_features, self.lut, self.scale,
                                 bias, backend=self.backend, relu=relu)
        y = self._grouped(x, bias)
        return torch.relu(y) if relu else y

    def _grouped(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """One lut per row block (ttq): a packed_linear per block (G <= 8), else ttq's two halves:
        W = W_p * [code = 2] - W_n * [code = 0], as two packed_linears over the same codes."""
        groups, rows = self.lut.shape[0], self.out_features // self.lut.shape[0]
        if groups <= 8:
            ys = [packed_linear(x, self.codes[g * rows:(g + 1) * rows], self.bits, self.in_features,
                                self.lut[g], self.scale[g * rows:(g + 1) * rows],
                                None if bias is None else bias[g * rows:(g + 1) * rows],
                                backend=self.backend) for g in range(groups)]
            return torch.cat(ys, dim=-1)
        per_row = self.lut.repeat_interleave(rows, dim=0)  # (out, 4): [-W_n, 0, W_p, 0]
        pick = torch.eye(4, dtype=torch.float32, device=x.device)
        pos = packed_linear(x, self.codes, self.bits, self.in_features, pick[2],
                            self.scale * per_row[:, 2], bias, backend=self.backend)
        return pos + packed_linear(x, self.codes, self.bits, self.in_features, pick[0],
                                   self.scale * per_row[:, 0], None, backend=self.backend)

    def columns(self, idx: torch.Tensor) -> torch.Tensor:
        """``W[:, idx]`` moved last: (*idx.shape, out), read from the packed bits (one-hot input).

        The first call keeps a copy of the codes packed column by column (``W.T`` in `pack_rows`'
        layout: as many bytes as ``codes``), so that a column is one contiguous bitstream; with
        1, 2, 4 or 8 bits a 256-entry table then turns each byte of it into its codes at once.
        The values are ``scale[o] * lut[code]``, the same product `PackedMatrix.forward` uses."""
        flat = idx.reshape(-1)
        cols, byte_codes, byte_values = self._column_codes()
        picked = cols[flat]  # (n, ceil(out * bits / 8)) uint8
        out = self.out_features
        if byte_values is not None:  # a byte's lut values in one lookup
            values = F.embedding(picked.int(), byte_values)  # (n, bytes, 8 // bits)
            w = self.scale * values.reshape(flat.shape[0], -1)[:, :out]  # (n, out), contiguous as
            # F.embedding's result: torch's vectorised sigmoid/tanh can differ from the strided
            # path in the last bit, and the loaded LSTM must match bench.layers.LSTM exactly
        else:
            c = (byte_codes[picked.long()].reshape(flat.shape[0], -1)[:, :out]
                 if byte_codes is not None else unpack_rows(picked, self.bits, out).long())
            if self.lut.dim() == 1:
                w = self.scale * self.lut[c]
            else:  # one lut per block of rows (ttq): row o reads lut[o // rows]
                per_row = self.lut.repeat_interleave(out // self.lut.shape[0], dim=0)
                w = self.scale * per_row.t().gather(0, c)
        return w.reshape(*idx.shape, self.out_features)

    def _column_codes(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(the codes packed column by column, (in, ceil(out * bits / 8)) uint8; the codes of each
        byte value, (256, 8 // bits) int64, and their lut values (a 1-D lut), or None where codes
        straddle bytes). Made once, and again after ``codes`` or ``lut`` change."""
        key = (self.codes.device, self.codes._version, self.lut._version)
        cached = getattr(self, "_columns_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        codes = unpack_rows(self.codes, self.bits, self.in_features)  # (out, in)
        cols = pack_rows(codes.t().contiguous(), self.bits)
        byte_codes = byte_values = None
        if 8 % self.bits == 0:
            values = torch.arange(256, dtype=torch.uint8, device=self.codes.device)[:, None]
            byte_codes = unpack_rows(values, self.bits, 8 // self.bits).long()  # (256, 8 // bits)
            if self.lut.dim() == 1:
                byte_values = self.lut[byte_codes]
        self._columns_cache = (key, (cols, byte_codes, byte_values))
        return self._columns_cache[1]

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"backend={self.backend!r}")


class FloatMatrix(nn.Module):
    """A full-precision matrix with `PackedMatrix`'s interface (an LSTM matrix left unquantized)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        y = x @ self.weight.t()
        return y if bias is None else y + bias

    def columns(self, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx, self.weight.t())


class PackedLinear(nn.Module):
    """`nn.Linear` with a packed weight: y = x @ (scale * lut[codes]).T + bias; with ``relu``,
    followed by a ReLU in the same kernel call (`bench.fold.fuse_for_inference` sets it)."""

    def __init__(self, matrix: PackedMatrix, bias: torch.Tensor | None, relu: bool = False):
        super().__init__()
        self.matrix, self.relu = matrix, relu
        self.in_features, self.out_features = matrix.in_features, matrix.out_features
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.matrix(x, self.bias, self.relu)

    def extra_repr(self) -> str:
        return "relu=True" if self.relu else ""


class PackedLSTM(nn.Module):
    """`bench.layers.LSTM` for inference with packed (or float) matrices, the same numerics.

    Per layer and step: g_t = (x_t W_ih^T + b) + h_{t-1} W_hh^T, in that order of additions, as
    `bench.layers.LSTM` computes it; gate order i, f, c, o; h_t = o * act(c_t) (tanh, or sign
    with sign(0) = +1). Token input (B, T) reads columns of W_ih straight from the packed bits.
    """

    def __init__(self, layers: list[tuple[nn.Module, nn.Module, torch.Tensor]], hidden: int,
                 activation: str):
        super().__init__()
        self.hidden, self.activation = hidden, activation
        self.w_ih = nn.ModuleList(m for m, _, _ in layers)
        self.w_hh = nn.ModuleList(m for _, m, _ in layers)
        for i, (_, _, bias) in enumerate(layers):
            self.register_buffer(f"bias{i}", bias.detach().clone())

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T) token indices or (B, T, I) features -> (B, T, H)."""
        out = x
        for i, (w_ih, w_hh) in enumerate(zip(self.w_ih, self.w_hh, strict=True)):
            xw = w_ih.columns(out) if out.dtype in (torch.int64, torch.int32) else w_ih(out)
            out = self._run_layer(xw + getattr(self, f"bias{i}"), w_hh)
        return out

    def _run_layer(self, xw: torch.Tensor, w_hh: nn.Module) -> torch.Tensor:
        h = xw.new_zeros(xw.shape[0], self.hidden)
        c = xw.new_zeros(xw.shape[0], self.hidden)
        outputs = []
        for x_t in xw.unbind(dim=1):
            h, c = self.step(x_t, h, c, w_hh)
            outputs.append(h)
        return torch.stack(outputs, dim=1)  # (B, T, H)

    def step(self, x_t: torch.Tensor, h: torch.Tensor, c: torch.Tensor, w_hh: nn.Module
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """One cell step: x_t is x_t W_ih^T + b (B, 4H); returns (h, c)."""
        g = x_t + w_hh(h)  # (B, 4H)
        i, f, c_tilde, o = g.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(c_tilde)
        act = torch.tanh(c) if self.activation == "tanh" else torch.where(c >= 0, 1.0, -1.0).to(c.dtype)
        return torch.sigmoid(o) * act, c


# --- load -------------------------------------------------------------------------------------
def _module(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name) if name else model


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(_module(model, parent), child, new)


def load(path: str | Path, *, backend: str = "auto") -> nn.Module:
    """Rebuild a saved network for inference (eval mode) with packed layers.

    Quantized ``nn.Linear`` layers become `PackedLinear` and `bench.layers.LSTM` modules
    `PackedLSTM` (their matmuls go through `kernels.packed_linear` with `backend`). Quantized
    ``nn.Conv2d`` weights are unpacked once, at load, into float convolutions (the packed kernels
    are for linear and LSTM layers; the file stays packed). Full-precision tensors load as they are.

    Args:
        path: a file written by `save_model` / `save_run_model` / ``labbench export``.
        backend: ``auto`` | ``torch`` | ``cpp`` | ``triton`` (see `kernels.packed_linear`).

    Returns:
        The network, in eval mode; ``model.deploy_metadata`` holds the file's metadata.

    Raises:
        ModelFileError: the file cannot be read, or does not fit the network its metadata names.
    """
    tensors, meta = read_model(path)
    layers = json.loads(meta["layers"])
    try:
        config = RunConfig.from_dict(json.loads(meta["config"]))
        model = build_model(config, in_shape=tuple(json.loads(meta["in_shape"])),
                            classes=int(meta["classes"]))
    except (ValueError, KeyError) as err:
        raise ModelFileError(f"{path}: cannot rebuild the network from its metadata: {err}") from None
    float_state = {k: v for k, v in tensors.items()
                   if not any(k.startswith(f"{n}.") and k[len(n) + 1:] in ("codes", "scale", "lut")
                              for n in layers)}
    missing, unexpected = model.load_state_dict(float_state, strict=False)
    if unexpected or set(missing) != set(layers):
        raise ModelFileError(f"{path}: tensors do not fit the network: unexpected {unexpected}, "
                             f"missing {sorted(set(missing) - set(layers))}")

    def matrix(name: str) -> PackedMatrix:
        spec = layers[name]
        return PackedMatrix(tensors[f"{name}.codes"], tensors[f"{name}.scale"], tensors[f"{name}.lut"],
                            spec["bits"], math.prod(spec["shape"][1:]), backend)

    lstm_layers = {}
    for name, spec in layers.items():
        owner, _, pname = name.rpartition(".")
        module = _module(model, owner)
        if isinstance(module, nn.Linear):
            _replace(model, owner, PackedLinear(matrix(name), module.bias))
        elif isinstance(module, nn.Conv2d):  # unpacked once: no packed conv kernel
            with torch.no_grad():
                module.weight.copy_(decode_weight(tensors[f"{name}.codes"], tensors[f"{name}.scale"],
                                                  tensors[f"{name}.lut"], spec["bits"],
                                                  tuple(spec["shape"])))
        elif isinstance(module, LSTMLayer):
            lstm_layers[(owner, pname)] = matrix(name)
        else:
            raise ModelFileError(f"{path}: quantized weight {name!r} belongs to a "
                                 f"{type(module).__name__}, which has no packed form")
    for lname, lstm in list(model.named_modules()):
        if not isinstance(lstm, LSTM):
            continue
        prefix = f"{lname}.layers" if lname else "layers"
        parts = []
        for i, layer in enumerate(lstm.layers):
            key = f"{prefix}.{i}"
            w_ih = lstm_layers.get((key, "w_ih")) or FloatMatrix(layer.w_ih.detach())
            w_hh = lstm_layers.get((key, "w_hh")) or FloatMatrix(layer.w_hh.detach())
            parts.append((w_ih, w_hh, layer.bias.detach()))
        _replace(model, lname, PackedLSTM(parts, lstm.hidden, lstm.activation))
    model.eval()
    model.requires_grad_(False)
    model.deploy_metadata = dict(meta)
    return model


# --- export -----------------------------------------------------------------------------------
RUN_DIR_LAYOUTS = ("model/{tag}.safetensors", "artifacts/model/{tag}.safetensors", "{tag}.safetensors")


def _find_in_dir(directory: Path, tag: str) -> Path:
    for layout in RUN_DIR_LAYOUTS:
        candidate = directory / layout.format(tag=tag)
        if candidate.is_file():
            return candidate
    raise ModelFileError(f"{directory}: no model file in this run directory (looked for "
                         + ", ".join(layout.format(tag=tag) for layout in RUN_DIR_LAYOUTS) + ")")


def _tracking_run(source: str, tracking_uri: str | None) -> Any:
    """The MLflow run with id `source`, or None when there is none (or no tracking store)."""
    if tracking_uri is None:
        return None
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        return MlflowClient(tracking_uri=tracking_uri).get_run(source)
    except MlflowException:
        return None


def export_kind(source: str, tracking_uri: str | None) -> str:
    """What ``labbench export SOURCE`` exports: ``"model"`` for a model file, a run directory or an
    MLflow run id; ``"study"`` for a study name (an MLflow experiment: its archive).

    Raises:
        LookupError: `source` is none of these (the message says where it looked).
    """
    if Path(source).exists() or _tracking_run(source, tracking_uri) is not None:
        return "model"
    if tracking_uri is not None:
        from mlflow.tracking import MlflowClient

        if MlflowClient(tracking_uri=tracking_uri).get_experiment_by_name(source) is not None:
            return "study"
    where = f"in {tracking_uri}" if tracking_uri else "(and no MLflow store to look in: see --root)"
    raise LookupError(f"{source!r} is neither a model file, a run directory, an MLflow run id nor a "
                      f"study name {where}")


def export_model(source: str, out: str | Path, *, tracking_uri: str | None = None,
                 tag: str = "best") -> Path:
    """Copy a run's saved model to `out`, checking that it loads.

    Args:
        source: a model file, a run directory (its ``model/<tag>.safetensors``, also under
            ``artifacts/``: an MLflow run folder) or an MLflow run id (needs `tracking_uri`).
        out: the file to write.
        tag: ``best`` (default: the best validation epoch's weights, the ones the run's test
            metrics were measured on; a run whose best epoch is its last keeps only ``final``,
            which is then the same model) or ``final`` (the weights at the end of the run).

    Raises:
        ModelFileError: no such model, or the file does not read as a labbench model.
    """
    import shutil

    if tag not in ("best", "final"):
        raise ValueError(f"tag: expected 'best' or 'final', got {tag!r}")
    tags = ("best", "final") if tag == "best" else ("final",)
    out = Path(out)
    path = Path(source)
    with tempfile.TemporaryDirectory() as tmp:
        if path.is_dir():
            path = _first_found(lambda t: _find_in_dir(path, t), tags)
        elif not path.is_file():
            run = _tracking_run(source, tracking_uri)
            if run is None:
                raise ModelFileError(f"{source}: no such file, run directory or MLflow run "
                                     f"(tracking URI {tracking_uri})")
            from mlflow.exceptions import MlflowException
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=tracking_uri)

            def download(t: str) -> Path:
                try:
                    return Path(client.download_artifacts(source, f"model/{t}.safetensors", tmp))
                except (MlflowException, OSError) as err:
                    raise ModelFileError(f"run {source} has no artifact model/{t}.safetensors "
                                         f"({type(err).__name__}); runs recorded before models "
                                         "were saved have none") from None

            path = _first_found(download, tags)
        read_model(path)  # fails loudly on a bad file before anything is written
        out.parent.mkdir(parents=True, exist_ok=True)
        if path.resolve() != out.resolve():
            shutil.copyfile(path, out)
    return out


def _first_found(find: Any, tags: tuple[str, ...]) -> Path:
    """``find(tag)`` for the first tag that has a file; the last tag's error when none has."""
    for tag in tags[:-1]:
        try:
            return find(tag)
        except ModelFileError:
            continue
    return find(tags[-1])
