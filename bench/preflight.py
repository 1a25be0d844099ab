"""What a run needs from this machine and its data, checked before anything is created.

`RunConfig` judges values on their own and in combination; this module judges them against the
machine: the device and Triton exist, the model and its activations fit in memory, the dataset is
there and holds a batch. The CLI calls `check_runnable` before it opens an MLflow database or
creates a study, so bad input exits 2 and leaves nothing behind (docs/harness.md, "Bad input").
It also checks the names and folders that become paths (`check_name`, `check_root`).

Example:
    >>> from bench.config import RunConfig
    >>> [str(e) for e in check_runnable(RunConfig(hidden=16, layers=1, device="cpu"),
    ...                                 data=False)]
    []
    >>> check_name("../x", "--experiment")
    Traceback (most recent call last):
    ...
    bench.config.ConfigError: --experiment: expected a simple name (A-Z a-z 0-9 . _ -), got '../x'
"""

from __future__ import annotations

import codecs
import functools
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from bench.config import IMAGE_DATASETS, ConfigError, RunConfig

__all__ = ["check_name", "check_root", "check_runnable", "estimate_memory", "machine_memory"]

# Bytes per parameter while training: the weight, its gradient, Adam's two moments, and the
# quantizing optimizer's latent copy, curvature and w_hat (fp32 each).
_BYTES_PER_PARAM = 7 * 4
# Each value an operation produces is kept for the backward pass, with as much for its gradient.
_BYTES_PER_ACTIVATION = 2 * 4
_IMAGE_SHAPES = {"fashion-mnist": (1, 28, 28), "mnist": (1, 28, 28), "cifar10": (3, 32, 32),
                 "svhn": (3, 32, 32)}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_TEXT_PROBE_BYTES = 1 << 20  # how much of a text:PATH file is checked for text


def check_name(name: str, what: str) -> str:
    """A name that becomes a folder (an MLflow experiment, a study): a simple name only.

    Raises:
        ConfigError: naming ``what`` when the name holds a path separator, is ``.``/``..``,
            starts with a dot or dash, or is empty.
    """
    if not _NAME_RE.match(name) or ".." in name:
        raise ConfigError(what, f"expected a simple name (A-Z a-z 0-9 . _ -), got {name!r}")
    return name


def check_root(root: str | os.PathLike, what: str = "--root") -> Path:
    """The run root as an absolute path, once it is known that it is (or can become) a folder
    that can be written to. Nothing is left behind by the check.

    Raises:
        ConfigError: naming ``what``: the path or one of its parents is a file, or the first
            folder that exists is not writable (a read-only file system, no permission).
    """
    path = Path(root).expanduser().absolute()
    existing = path
    while not existing.exists():
        if existing.is_symlink():  # a dangling link
            raise ConfigError(what, f"{existing} is a broken symbolic link")
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == path else f"is under {existing}, which is a file"
        raise ConfigError(what, f"{path} {where}; expected a folder")
    try:  # os.access says yes to root on a read-only file system: try it
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".labbench-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ConfigError(what, f"cannot write in {existing}: {err.strerror or err}") from None
    return path


def machine_memory(device: torch.device) -> int:
    """Bytes of memory of ``device``: the GPU's, or this machine's RAM."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def estimate_memory(config: RunConfig, *, classes: int = 10, vocab: int = 256) -> tuple[int, int]:
    """(parameters, activation values) of one training step, counted on PyTorch's meta device
    (shapes only, nothing allocated): the model is built and run on one batch.

    Args:
        config: the run.
        classes: output classes of an image model.
        vocab: vocabulary size of a char model (its input and output layers).
    """
    from bench.models import build_model

    if config.task == "lm":
        in_shape: tuple[int, ...] = (config.seq_len,)
        x = torch.zeros(config.batch_size, config.seq_len, dtype=torch.long, device="meta")
        classes = vocab
    else:
        in_shape = _IMAGE_SHAPES[config.dataset]
        x = torch.zeros(config.batch_size, *in_shape, device="meta")
    with torch.device("meta"):
        model = build_model(config, in_shape=in_shape, classes=classes)
    params = sum(p.numel() for p in model.parameters())
    with _CountOutputs() as counter:
        model(x)
    return params, counter.values


class _CountOutputs(TorchDispatchMode):
    """Counts the values every tensor operation produces (shapes only on the meta device): an
    upper bound of what one forward pass keeps for the backward pass, views aside."""

    values = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if not _is_view(func):
            self.values += sum(o.numel() for o in tree_flatten(out)[0]
                               if isinstance(o, torch.Tensor))
        return out


def _is_view(func: Any) -> bool:
    return any(a.alias_info is not None and not a.alias_info.is_write
               for a in func._schema.returns)


def _split_sizes(name: str) -> tuple[int, int, int, int]:
    """(train, val, test, classes or vocabulary size) of a dataset, loaded once per process and
    place it is read from (``$LABBENCH_DATA``; a ``text:`` file's size and time)."""
    from bench.data import data_root

    where: tuple = (str(data_root()),)
    if name.startswith("text:"):
        stat = Path(name[len("text:"):]).expanduser().stat()
        where = (stat.st_size, stat.st_mtime_ns)
    return _load_sizes(name, where)


@functools.cache
def _load_sizes(name: str, where: tuple) -> tuple[int, int, int, int]:
    from bench.data import load_dataset

    data = load_dataset(name)
    if data.task == "lm":
        return len(data.train), len(data.val), len(data.test), len(data.vocab)
    return len(data.y_train), len(data.y_val), len(data.y_test), data.classes


def _text_problem(path: str) -> str | None:
    """Why ``text:PATH`` cannot be a corpus, or None."""
    p = Path(path).expanduser()
    if not p.exists():
        return f"no such file {p}"
    if not p.is_file():
        return f"{p} is not a regular file"
    try:
        with p.open("rb") as f:
            head = f.read(_TEXT_PROBE_BYTES)
    except OSError as err:
        return f"cannot read {p}: {err.strerror or err}"
    if not head.strip():
        return f"{p} is empty" if not head else f"{p} holds only white space"
    if b"\0" in head:
        return f"{p} is a binary file (it holds NUL bytes); expected UTF-8 text"
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=len(head) < _TEXT_PROBE_BYTES)
    except UnicodeDecodeError as err:
        return f"{p} is not UTF-8 text ({err.reason} at byte {err.start})"
    return None


def _data_problems(config: RunConfig) -> tuple[list[ConfigError], int | None]:
    """Errors about the dataset and the batch shape it must hold; and classes or vocabulary."""
    from bench.data import DatasetNotFoundError

    if config.dataset.startswith("text:"):
        problem = _text_problem(config.dataset[len("text:"):])
        if problem:
            return [ConfigError("dataset", problem)], None
    try:
        n_train, n_val, n_test, size = _split_sizes(config.dataset)
    except DatasetNotFoundError as err:
        return [ConfigError("dataset", str(err))], None
    if config.train_limit:
        n_train = min(n_train, config.train_limit)
    if config.eval_limit:
        n_val, n_test = min(n_val, config.eval_limit), min(n_test, config.eval_limit)
    errors = []
    if config.task == "lm":
        chunks = (n_train - 1) // config.seq_len
        if chunks < 1:
            errors.append(ConfigError("seq_len", f"{config.seq_len} is longer than the training "
                                      f"split of {config.dataset!r} ({n_train} characters)"))
        elif chunks < config.batch_size:
            errors.append(ConfigError("batch_size", f"{config.batch_size} sequences of "
                                      f"{config.seq_len} characters exceed the training split of "
                                      f"{config.dataset!r} ({n_train} characters: {chunks} "
                                      "sequences)"))
        for split, n in (("validation", n_val), ("test", n_test)):
            if not errors and (n - 1) // config.seq_len < 1:
                errors.append(ConfigError("seq_len", f"{config.seq_len} is longer than the "
                                          f"{split} split of {config.dataset!r} ({n} characters)"))
                break
    elif n_train < config.batch_size:
        errors.append(ConfigError("batch_size", f"{config.batch_size} exceeds the training split "
                                  f"of {config.dataset!r} ({n_train} examples)"))
    return errors, size


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB"


def check_runnable(config: RunConfig, *, data: bool = True) -> list[ConfigError]:
    """Everything that would stop ``config`` on this machine, each naming its field.

    Args:
        config: a valid run configuration.
        data: also load the dataset (once per process and name) to check that it exists and
            holds a batch; without it the memory estimate assumes 256 characters of vocabulary.

    Returns:
        The problems (empty when the run can start): a CUDA device or Triton that is not there,
        a dataset that is missing, empty, binary or smaller than one batch, a model whose
        parameters and activations need more memory than the device has.
    """
    from kernels._backend import triton_available

    errors = []
    if config.device == "cuda" and not torch.cuda.is_available():
        errors.append(ConfigError("device", f"'cuda', but torch {torch.__version__} sees no CUDA "
                                  "device here; use 'cpu' or 'auto'"))
    if config.backend == "triton" and not triton_available():
        errors.append(ConfigError("backend", "'triton' needs the triton package (pip install "
                                  "'labbench[gpu]'); use 'auto' or 'torch'"))
    size = None
    if data:
        data_errors, size = _data_problems(config)
        errors += data_errors
        if data_errors:
            return errors
    kwargs = {"vocab": size or 256} if config.task == "lm" else {"classes": size or 10}
    if config.task == "classification" and config.dataset not in IMAGE_DATASETS:
        return errors
    params, activations = estimate_memory(config, **kwargs)
    need = params * _BYTES_PER_PARAM + activations * _BYTES_PER_ACTIVATION
    device = torch.device("cuda" if config.device != "cpu" and torch.cuda.is_available() else "cpu")
    have = machine_memory(device)
    if need > have:
        field = "batch_size" if activations * _BYTES_PER_ACTIVATION > params * _BYTES_PER_PARAM \
            else next((f for f in ("hidden", "width", "layers") if getattr(config, f)), "model")
        shape = ", ".join(f"{f}={getattr(config, f)}" for f in
                          ("hidden", "layers", "width", "seq_len", "batch_size")
                          if getattr(config, f) is not None)
        errors.append(ConfigError(field, f"model {config.model!r} with {shape} needs about "
                                  f"{_gib(need)} to train ({params:.3g} parameters, "
                                  f"{activations:.3g} activation values per step); this "
                                  f"machine's {device.type} memory is {_gib(have)}"))
    assert math.isfinite(need), "a memory estimate is a count of bytes"
    return errors
