"""labbench bench: one run of loss-aware binarization or quantization, and its parts.

A run is a `RunConfig` (model, dataset, method, optimizer, every knob; validated at construction,
errors name the field) handed to `run`, which trains and evaluates it and returns a `RunResult`
(final metrics, and a recorder gets the per-epoch curves). The parts work on their own in your
own training loop: `QuantOptimizer` is a ``torch.optim.Optimizer`` that quantizes the weights of
the parameter groups it is given (LR schedulers, ``state_dict`` and checkpoints work), `METHODS`
is the table of methods (`get_method` looks one up), `build_model` builds the models of `MODELS`
and `load_dataset` the datasets of `DATASETS`. The quantized layers are in `bench.layers`,
packed deployment in `bench.deploy`, and the proximal steps themselves in the `kernels` package.

The names below are imported on first use, so ``import bench`` costs no torch import.

Example:

    >>> import bench
    >>> config = bench.RunConfig(model="lstm", dataset="pysrc", method="laq", bits=2)
    >>> config.method, config.bits, config.hidden  # hidden: the lstm's default
    ('laq', 2, 512)
    >>> bench.get_method("lab").curvature, bench.get_method("bwn").curvature
    (True, False)
    >>> bench.RunConfig(method="lab", bits=2)
    Traceback (most recent call last):
    ...
    bench.config.ConfigError: bits: only applies to method 'laq' (got bits=2 with method 'lab')
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "DATASETS",
    "METHODS",
    "MODELS",
    "QUANTIZERS",
    "ConfigError",
    "ConfigErrors",
    "DatasetNotFoundError",
    "Method",
    "MlflowRecorder",
    "NullRecorder",
    "QuantOptimizer",
    "Quantizer",
    "RunConfig",
    "RunResult",
    "build_model",
    "get_method",
    "load_dataset",
    "run",
]

# Each public name and the module that defines it.
_LAZY = {
    "RunConfig": "bench.config",
    "ConfigError": "bench.config",
    "ConfigErrors": "bench.config",
    "run": "bench.train",
    "RunResult": "bench.train",
    "METHODS": "bench.methods",
    "Method": "bench.methods",
    "get_method": "bench.methods",
    "QuantOptimizer": "bench.optim",
    "Quantizer": "bench.quantizers",
    "QUANTIZERS": "bench.quantizers",
    "MODELS": "bench.models",
    "build_model": "bench.models",
    "DATASETS": "bench.data",
    "DatasetNotFoundError": "bench.data",
    "load_dataset": "bench.data",
    "MlflowRecorder": "bench.record",
    "NullRecorder": "bench.record",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
