"""labbench ablations: study files, the Optuna grid/search runner, MLflow recording, shipped studies.

A study file (docs/harness.md) is parsed into a `StudySpec`; ``labbench grid STUDY.toml`` creates
the Optuna study and the MLflow parent run once (`create_or_resume`) and runs local workers
(`launch`); ``labbench worker`` (`run_worker`) joins from any machine. Every trial is one MLflow
child run laid out as docs/mlflow-layout.md says.

The spec names are imported at once; the runner's (which pull in Optuna, MLflow and torch) on
first use, so that a bad study file is reported before any of them is imported.

Example (trains the demo study, so not run as a doctest)::

    from ablations import Heartbeat, create_or_resume, launch, parse_study, resolve_location
    spec = parse_study("ablations/studies/demo.toml")
    location = resolve_location(root="runs", storage=None, tracking_uri=None)
    handle, created = create_or_resume(spec, location, Heartbeat())
    launch(handle, workers=2)
"""

from __future__ import annotations

import importlib
from typing import Any

from ablations.spec import SearchRange, StudyError, StudySpec, parse_study, spec_from_dict
from ablations.storage import Heartbeat, Location, StorageError, resolve_location

__all__ = [
    "Heartbeat",
    "Location",
    "SearchRange",
    "StorageError",
    "StudyError",
    "StudyHandle",
    "StudySpec",
    "create_or_resume",
    "launch",
    "load_handle",
    "parse_study",
    "repair",
    "requeue_failed",
    "resolve_location",
    "run_worker",
    "spec_from_dict",
    "stale_trials",
    "summarize",
]

_LAZY = {
    "StudyHandle": "ablations.study",
    "create_or_resume": "ablations.study",
    "load_handle": "ablations.study",
    "launch": "ablations.launcher",
    "run_worker": "ablations.worker",
    "repair": "ablations.state",
    "requeue_failed": "ablations.state",
    "stale_trials": "ablations.state",
    "summarize": "ablations.state",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ablations' has no attribute {name!r}")
