"""`RunConfig`: every knob of one run, validated at construction.

The field names are the contract: they are the CLI flags (`--batch-size`), the keys of study files
and the MLflow params. Fields left as ``None`` take the model's default (``MODEL_DEFAULTS``) when
they apply, and must stay ``None`` when they do not apply (``bits`` on ``lab`` is an error, not a
silently ignored value). The resolved values are what gets recorded.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any

from bench.methods import METHODS, parse_layer_methods
from bench.names import CHAR_DATASETS, IMAGE_DATASETS, MODELS, SEQUENCE_MODELS

__all__ = [
    "CHAR_DATASETS",
    "IMAGE_DATASETS",
    "MODELS",
    "MODEL_DEFAULTS",
    "ConfigError",
    "ConfigErrors",
    "RunConfig",
    "parse_clip",
    "parse_schedule",
]


class ConfigError(ValueError):
    """A bad configuration value. `field` names the offending RunConfig field (or study key)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.errors = [self]


class ConfigErrors(ConfigError):
    """Several bad values at once: ``errors`` holds each one, in field order (the message has
    one line each). ``field`` is the first one's."""

    def __init__(self, errors: list[ConfigError]):
        ValueError.__init__(self, "\n".join(str(e) for e in errors))
        self.field = errors[0].field
        self.errors = list(errors)


OPTIMIZERS = ("adam", "adamw", "sgd")
LOSSES = ("xent", "sq-hinge")
GRANULARITIES = ("tensor", "channel", "gate")
LEVELS = ("linear", "log")
DEVICES = ("auto", "cpu", "cuda")
SHAPE_FIELDS = ("hidden", "layers", "width", "seq_len")
DTYPES = ("float32", "bfloat16", "float16")
BACKENDS = ("auto", "torch", "triton", "compile")

# One line per RunConfig field for `labbench run --help` (choices are checked in _check_choices).
FIELD_HELP: dict[str, str] = {
    "model": " | ".join(MODELS),
    "dataset": " | ".join(IMAGE_DATASETS + CHAR_DATASETS) + " | text:PATH",
    "method": "a method of the README's table: fp, bc, bwn, lab, lat, laq, mixed, ...",
    "bits": "laq: bits per weight, 2..8 (default 3)",
    "levels": "laq: linear | log (default linear)",
    "granularity": "scaled methods: one scale per tensor | channel | gate (default: gate for "
                   "LSTMs, else tensor)",
    "layer_methods": "mixed: 'PATTERN=METHOD[:BITS[:LEVELS]];...', e.g. '@first=laq:8;*=lab'",
    "ttq_threshold": "ttq: delta = t * max|w| (default 0.05)",
    "fixed_scale": "bc-scaled: frozen alpha = fixed_scale / sqrt(fan-in) (default: mean|w| at init)",
    "backend": "proximal step: auto (Triton on CUDA, torch.compile on CPU for >= 1M binary "
               "weights, else torch) | torch | triton | compile",
    "optimizer": " | ".join(OPTIMIZERS),
    "lr": "learning rate (default: the model's)",
    "weight_decay": "weight decay of the base optimizer",
    "schedule": "const | cosine | paper | step:E1,E2:G | every:N:G | exp:G[:START]",
    "epochs": "training epochs",
    "steps": "cap on training steps over all epochs (quick runs)",
    "batch_size": "batch size (default: the model's)",
    "clip": "none | gate:C (LSTM gate-gradient clamp per step) | norm:C (global gradient norm); "
            "default: the model's",
    "loss": " | ".join(LOSSES) + " (classification)",
    "seq_len": "characters per training sequence (char models; default: the model's)",
    "hidden": "hidden units (mlp, lstm), FC width (cnn) or d_model (transformer); default: the model's",
    "layers": "hidden layers (mlp), LSTM layers or transformer blocks (default: the model's)",
    "width": "channels of the first stage (cnn K, resnets; default: the model's)",
    "train_limit": "use only the first N training examples or characters",
    "eval_limit": "use only the first N validation and test examples or characters",
    "seed": "random seed (init, data order)",
    "device": " | ".join(DEVICES) + " (auto: cuda when available)",
    "dtype": " | ".join(DTYPES) + " autocast compute dtype (default: float32, bfloat16 for amp)",
    "threads": "torch intra-op threads (default: torch's)",
}

# Per-model defaults, following the paper's setups (its section 4, and its code) where it has one.
# Keys absent from a model's entry do not apply to that model and must be left unset.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    # 784FC-2048FC-2048FC-2048FC-10, batch 100, Adam lr 0.01 (MNIST setup)
    "mlp": {"hidden": 2048, "layers": 3, "batch_size": 100, "lr": 0.01},
    # (2xK C3)-MP2-(2x2K C3)-MP2-(2x4K C3)-MP2-(2x hidden FC)-10; K=128 on CIFAR-10, batch 50
    "cnn": {"width": 128, "hidden": 1024, "batch_size": 50, "lr": 0.01},
    # He et al.'s CIFAR ResNet-20 (3 stages x 3 basic blocks) and ResNet-18 with a 3x3 stem
    "resnet20": {"width": 16, "batch_size": 128, "lr": 0.001},
    "resnet18": {"width": 64, "batch_size": 128, "lr": 0.001},
    # one LSTM layer x 512, TS 100, batch 100, Adam lr 0.002, gate-gradient clip 5 (section 1.8)
    "lstm": {"hidden": 512, "layers": 1, "seq_len": 100, "batch_size": 100, "lr": 0.002,
             "clip": "gate:5"},
    # a small char-level decoder; hidden = d_model (heads of 64), global-norm clipping at 1
    "transformer": {"hidden": 256, "layers": 4, "seq_len": 128, "batch_size": 64, "lr": 0.001,
                    "clip": "norm:1"},
}

# Bounds that turn crashes deep in a run into a message up front: numpy seeds are 32-bit, torch
# keeps the learning rate in float32 tensors (larger values overflow), and more epochs than this
# are a typo (epochs * steps per epoch must stay a countable number of steps).
MAX_SEED = 2**32 - 1
MAX_FLOAT32 = 3.4028234663852886e38
MAX_EPOCHS = 100_000
MAX_STEPS = 10**12

_SCHEDULE_RE = re.compile(
    r"^(const|cosine|paper|step:\d+(,\d+)*:[0-9.eE+-]+|every:\d+:[0-9.eE+-]+"
    r"|exp:[0-9.eE+-]+(:\d+)?)$"
)
# The paper's learning-rate schedules (its section 4, and its code), by dataset.
PAPER_SCHEDULES = {
    "fashion-mnist": "step:15,25:0.1",
    "mnist": "step:15,25:0.1",
    "cifar10": "every:15:0.5",
    "svhn": "step:15,25:0.1",
}
PAPER_CHAR_SCHEDULE = "exp:0.98:10"


def parse_clip(clip: str) -> tuple[str, float]:
    """Parse a clip spec: ``"none"`` -> ("none", 0.0); ``"gate:5"`` -> ("gate", 5.0); ``"norm:1"``.

    Raises:
        ConfigError: naming the field ``clip`` when the spec is malformed.
    """
    if clip == "none":
        return "none", 0.0
    kind, _, value = clip.partition(":")
    try:
        c = float(value)
    except ValueError:
        c = float("nan")
    if kind not in ("gate", "norm") or not 0 < c < math.inf:
        raise ConfigError("clip", f"expected 'none', 'gate:C' or 'norm:C' with a finite C > 0, "
                          f"got {clip!r}")
    return kind, c


def parse_schedule(schedule: str) -> tuple[str, list[float]]:
    """Parse a schedule spec into (kind, numbers); see `RunConfig.schedule`."""
    if not _SCHEDULE_RE.match(schedule):
        raise ConfigError(
            "schedule",
            "expected one of 'const', 'cosine', 'paper', 'step:E1,E2,...:GAMMA', "
            f"'every:N:GAMMA', 'exp:GAMMA[:START]', got {schedule!r}",
        )
    kind, *rest = schedule.split(":")
    try:
        nums = ([*map(float, rest[0].split(",")), float(rest[1])] if kind == "step"
                else [float(x) for x in rest])
    except ValueError:  # the pattern lets through digit-free words such as "e" or "+-"
        raise ConfigError("schedule", f"expected numbers in {schedule!r}") from None
    gamma = nums[-1] if kind in ("step", "every") else nums[0] if kind == "exp" else 1.0
    if not 0 < gamma < math.inf:
        raise ConfigError("schedule", f"expected a finite factor GAMMA > 0, got {schedule!r}")
    if kind == "every" and nums[0] < 1:
        raise ConfigError("schedule", f"'every:N:GAMMA' needs N >= 1 epochs, got {schedule!r}")
    return kind, nums


@dataclass(frozen=True)
class RunConfig:
    """One training run. Unset (None) fields take the model's default where they apply.

    Example:
        >>> cfg = RunConfig(model="lstm", dataset="pysrc", method="lab")
        >>> cfg.hidden, cfg.clip, cfg.granularity
        (512, 'gate:5', 'gate')
        >>> RunConfig(method="lab", bits=3)
        Traceback (most recent call last):
        ...
        bench.config.ConfigError: bits: only applies to method 'laq' (got bits=3 with method 'lab')
    """

    # what to train
    model: str = "mlp"
    dataset: str = "fashion-mnist"  # an image set, a char corpus, or "text:PATH"
    method: str = "lab"  # a key of bench.methods.METHODS
    # quantization options (only where the method has them)
    bits: int | None = None  # laq: bits per weight (2..8), default 3
    levels: str | None = None  # laq: "linear" | "log", default "linear"
    granularity: str | None = None  # scaled methods: "tensor" | "channel" | "gate" (LSTM only)
    layer_methods: str | None = None  # mixed: "PATTERN=METHOD[:BITS[:LEVELS]];..." first match wins
    ttq_threshold: float | None = None  # ttq: delta = t * max|w|, default 0.05
    # bc-scaled: frozen alpha = fixed_scale / sqrt(fan-in) per matrix (per gate block for LSTMs),
    # i.e. fixed_scale = alpha * sqrt(n); bc is fixed_scale = sqrt(n). Unset: mean|w| at init
    fixed_scale: float | None = None
    # prox kernels: auto (Triton on CUDA; torch.compile on CPU for >= 1M binary weights) | torch |
    # triton | compile
    backend: str = "auto"
    # optimisation
    optimizer: str = "adam"
    lr: float | None = None
    weight_decay: float = 0.0
    schedule: str = "const"  # const | cosine | paper | step:E1,E2:G | every:N:G | exp:G[:START]
    epochs: int = 3
    steps: int | None = None  # cap on training steps (all epochs together), for quick runs
    batch_size: int | None = None
    clip: str | None = None  # "none" | "gate:C" (LSTM: clamp d loss/d gates per step) | "norm:C"
    loss: str = "xent"  # "xent" | "sq-hinge" (classification only; the paper's L2-SVM output)
    # model shape
    seq_len: int | None = None
    hidden: int | None = None
    layers: int | None = None
    width: int | None = None
    # data
    train_limit: int | None = None  # use only the first N training examples or characters
    eval_limit: int | None = None  # use only the first N validation/test examples or characters
    # execution
    seed: int = 0
    device: str = "auto"  # "auto" picks cuda when available
    dtype: str | None = None  # autocast dtype: float32 (no autocast) | bfloat16 | float16
    threads: int | None = None  # torch intra-op threads (None: torch's default)

    _resolved: bool = field(default=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        errors = self._field_errors(set(self.field_names()))
        if errors:  # every field on its own first, all of them; then how they combine
            raise errors[0] if len(errors) == 1 else ConfigErrors(errors)
        self._resolve_and_check_applicability()

    @classmethod
    def check_values(cls, values: dict[str, Any]) -> list[ConfigError]:
        """Each given field's own errors (type, choice, range), all of them, without building a
        config: how fields combine (``bits`` with method ``lab``) is left to construction.

        Example:
            >>> [str(e) for e in RunConfig.check_values({"lr": -1.0, "epochs": 0, "model": "lstm"})]
            ['lr: expected > 0, got -1.0', 'epochs: expected > 0, got 0']
        """
        probe = object.__new__(cls)
        for f in fields(cls):
            object.__setattr__(probe, f.name, values.get(f.name, f.default))
        return probe._field_errors({k for k in values if k in cls.field_names()})

    # --- construction helpers -------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls) if not f.name.startswith("_")]

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, where: str = "") -> RunConfig:
        """Build from a mapping (study file, JSON, CLI); unknown keys are errors with a hint."""
        names = cls.field_names()
        for key in values:
            if key not in names:
                hint = difflib.get_close_matches(key, names, n=1)
                extra = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise ConfigError(f"{where}{key}", f"unknown field{extra}; valid fields: "
                                  + ", ".join(names))
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.field_names()}

    def replace(self, **changes: Any) -> RunConfig:
        return RunConfig.from_dict({**self.to_dict(), **changes})

    def cell_id(self) -> str:
        """12 hex digits identifying the run's settings without its seed (runs across seeds share it)."""
        d = self.to_dict()
        d.pop("seed")
        blob = json.dumps(d, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    @property
    def task(self) -> str:
        """``"classification"`` for image models, ``"lm"`` for char-level language models."""
        return "lm" if self.model in SEQUENCE_MODELS else "classification"

    # --- validation -----------------------------------------------------------------------
    def _field_errors(self, names: set[str]) -> list[ConfigError]:
        """The errors of the fields in ``names``, each judged on its own; a field with the wrong
        type is not judged further."""
        errors: list[ConfigError] = []
        for check in (self._check_types, self._check_choices, self._check_ranges):
            skip = {e.field for e in errors} | (set(self.field_names()) - names)
            errors += [e for e in check(skip) if e.field not in skip]
        return errors

    def _check_types(self, skip: set[str]) -> Iterator[ConfigError]:
        for f in fields(self):
            if f.name.startswith("_") or f.name in skip:
                continue
            value = getattr(self, f.name)
            kinds = f.type.replace(" ", "").split("|")
            if value is None:
                if "None" not in kinds:
                    yield ConfigError(f.name, "must be set (got None)")
                continue
            if "int" in kinds and isinstance(value, int) and not isinstance(value, bool):
                continue
            if "float" in kinds and isinstance(value, int | float) and not isinstance(value, bool):
                object.__setattr__(self, f.name, float(value))
                continue
            if "str" in kinds and isinstance(value, str):
                continue
            want = " or ".join(k for k in kinds if k != "None")
            yield ConfigError(f.name, f"expected {want}, got {value!r} ({type(value).__name__})")

    def _check_choices(self, skip: set[str]) -> Iterator[ConfigError]:
        def choose(name: str, options: tuple[str, ...] | list[str]) -> Iterator[ConfigError]:
            value = getattr(self, name)
            if name not in skip and value is not None and value not in options:
                hint = difflib.get_close_matches(str(value), list(options), n=1)
                extra = f" (did you mean {hint[0]!r}?)" if hint else ""
                yield ConfigError(name, f"unknown value {value!r}{extra}; valid: "
                                  + ", ".join(options))

        yield from choose("model", MODELS)
        yield from choose("method", list(METHODS))
        if "dataset" not in skip:
            if not self.dataset.startswith("text:"):
                yield from choose("dataset", IMAGE_DATASETS + CHAR_DATASETS + ("text:PATH",))
            elif len(self.dataset) <= len("text:"):
                yield ConfigError("dataset", "expected text:PATH with a file path after 'text:'")
        for name, options in (("optimizer", OPTIMIZERS), ("loss", LOSSES),
                              ("granularity", GRANULARITIES), ("levels", LEVELS),
                              ("device", DEVICES), ("dtype", DTYPES), ("backend", BACKENDS)):
            yield from choose(name, options)
        for name, parse in (("schedule", parse_schedule), ("clip", parse_clip)):
            if name not in skip and getattr(self, name) is not None:
                try:
                    parse(getattr(self, name))
                except ConfigError as err:
                    yield err

    def _check_ranges(self, skip: set[str]) -> Iterator[ConfigError]:
        def value_of(name: str) -> Any:
            return None if name in skip else getattr(self, name)

        for name in ("lr", "epochs", "steps", "batch_size", "hidden", "layers", "width",
                     "train_limit", "eval_limit", "threads", "weight_decay", "seed"):
            value = value_of(name)
            low = ">= 0" if name in ("weight_decay", "seed") else "> 0"
            if value is not None and value != value:  # NaN
                yield ConfigError(name, "expected a number, got NaN")
            elif value is not None and not (value >= 0 if low == ">= 0" else value > 0):
                yield ConfigError(name, f"expected {low}, got {value!r}")
            elif name in ("lr", "weight_decay") and value is not None and value > MAX_FLOAT32:
                yield ConfigError(name, f"expected a finite number at most {MAX_FLOAT32:.4g} "
                                  f"(the float32 range the optimizer computes in), got {value!r}")
        for name, top in (("seed", MAX_SEED), ("epochs", MAX_EPOCHS), ("steps", MAX_STEPS)):
            value = value_of(name)
            if value is not None and value > top:
                why = " (numpy's seed range)" if name == "seed" else ""
                yield ConfigError(name, f"expected at most {top}{why}, got {value}")
        if value_of("seq_len") is not None and self.seq_len < 2:
            yield ConfigError("seq_len", f"expected >= 2, got {self.seq_len}")
        if value_of("bits") is not None and not 2 <= self.bits <= 8:
            yield ConfigError("bits", f"expected 2 <= bits <= 8, got {self.bits}")
        if value_of("ttq_threshold") is not None and not 0 < self.ttq_threshold < 1:
            yield ConfigError("ttq_threshold", f"expected 0 < t < 1, got {self.ttq_threshold}")
        if value_of("fixed_scale") is not None and not 0 < self.fixed_scale < math.inf:
            yield ConfigError("fixed_scale", f"expected a finite number > 0, got {self.fixed_scale}")

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def _resolve_and_check_applicability(self) -> None:
        method = METHODS[self.method]
        defaults = MODEL_DEFAULTS[self.model]

        # model/data compatibility
        is_char = self.dataset in CHAR_DATASETS or self.dataset.startswith("text:")
        if self.task == "lm" and not is_char:
            raise ConfigError("dataset", f"model {self.model!r} is a char-level language model; "
                              f"use a char corpus ({', '.join(CHAR_DATASETS)}, text:PATH), "
                              f"got {self.dataset!r}")
        if self.task == "classification" and is_char:
            raise ConfigError("dataset", f"model {self.model!r} classifies images; use one of "
                              f"{', '.join(IMAGE_DATASETS)}, got {self.dataset!r}")
        if self.task == "lm" and self.loss != "xent":
            raise ConfigError("loss", f"{self.loss!r} applies to classification; language models "
                              "use 'xent'")

        # shape fields: default where the model has them, error where it does not
        shape = [k for k in SHAPE_FIELDS if k in defaults]
        for name in SHAPE_FIELDS:
            if getattr(self, name) is None:
                self._set(name, defaults.get(name))
            elif name not in defaults:
                raise ConfigError(name, f"does not apply to model {self.model!r} "
                                  f"(its shape fields: {', '.join(shape)})")
        for name in ("batch_size", "lr", "clip"):
            if getattr(self, name) is None:
                self._set(name, defaults.get(name, "none" if name == "clip" else None))
        if self.batch_size is None:
            self._set("batch_size", 100)
        if parse_clip(self.clip)[0] == "gate" and self.model != "lstm":
            raise ConfigError("clip", f"'gate:C' clips LSTM gate gradients; model is {self.model!r} "
                              "(use 'norm:C' or 'none')")

        # method-specific options
        def only_for(name: str, allowed: tuple[str, ...], default: Any) -> None:
            value = getattr(self, name)
            if self.method in allowed:
                if value is None:
                    self._set(name, default)
            elif value is not None:
                raise ConfigError(name, f"only applies to method {' or '.join(map(repr, allowed))} "
                                  f"(got {name}={value!r} with method {self.method!r})")

        only_for("bits", ("laq",), 3)
        only_for("levels", ("laq",), "linear")
        only_for("ttq_threshold", ("ttq",), 0.05)
        only_for("fixed_scale", ("bc-scaled",), None)
        only_for("layer_methods", ("mixed",), "@first=laq:8;@last=laq:8;*=lab")
        if self.layer_methods is not None:
            try:
                parse_layer_methods(self.layer_methods)
            except ValueError as err:
                raise ConfigError("layer_methods", str(err)) from None

        has_scale = method.scaled or self.method == "mixed"
        if has_scale:
            if self.granularity is None:
                self._set("granularity", "gate" if self.model == "lstm" else "tensor")
            if self.granularity == "gate" and self.model != "lstm":
                raise ConfigError("granularity", f"'gate' gives each LSTM gate matrix its own "
                                  f"scale; model is {self.model!r} (use 'tensor' or 'channel')")
        elif self.granularity is not None:
            raise ConfigError("granularity", f"method {self.method!r} has no scale to make "
                              "per-tensor or per-channel")

        # compute dtype: amp is full-precision weights under 16-bit autocast
        if self.dtype is None:
            self._set("dtype", "bfloat16" if self.method == "amp" else "float32")
        if self.method == "amp" and self.dtype == "float32":
            raise ConfigError("dtype", "method 'amp' runs under autocast: use bfloat16 or float16")
        if self.schedule == "paper":
            self._set("schedule", PAPER_SCHEDULES.get(self.dataset, PAPER_CHAR_SCHEDULE))
        object.__setattr__(self, "_resolved", True)

