"""labbench analysis: MLflow runs -> tidy pandas -> statistics -> seaborn figures -> report.

Reads studies by the names in docs/mlflow-layout.md and imports nothing else of labbench.

Example (needs a recorded study, so not run as a doctest)::

    from analysis import load_runs, paired_bootstrap, build_report
    uri = "sqlite:///labbench-runs/mlflow.db"
    frame = load_runs("bc-degradation", uri)
    paired_bootstrap(frame)  # mean degradation per configuration
    build_report("bc-degradation", uri, "out/")
"""

from __future__ import annotations

import importlib
from typing import Any

# Each public name and the module that defines it, imported on first use: the command line
# (labbench/cli.py) imports analysis.cli, which must not pay for pandas, MLflow and seaborn.
_LAZY = {
    "bptt_profile_plot": "analysis._diagnostic_plots",
    "raw_grad_norm_curves": "analysis._diagnostic_plots",
    "spectral_whole_curves": "analysis._diagnostic_plots",
    "bptt_growth_table": "analysis._evidence",
    "divergence_table": "analysis._evidence",
    "floor_table": "analysis._evidence",
    "combine_studies": "analysis._sources",
    "export_study": "analysis.archive",
    "load_archive": "analysis.archive",
    "alpha_trajectories": "analysis.plots",
    "degradation_heatmap": "analysis.plots",
    "grad_norm_curves": "analysis.plots",
    "learning_curves": "analysis.plots",
    "pareto_plot": "analysis.plots",
    "point_plot": "analysis.plots",
    "save_figure": "analysis.plots",
    "spectral_norm_curves": "analysis.plots",
    "ReportFiles": "analysis.report",
    "build_report": "analysis.report",
    "render_report": "analysis.report",
    "ID_COLUMNS": "analysis.runs",
    "load_bptt_profiles": "analysis.runs",
    "load_curves": "analysis.runs",
    "load_runs": "analysis.runs",
    "metric_names": "analysis.runs",
    "missing_cells": "analysis.runs",
    "degradation": "analysis.stats",
    "factor_effects": "analysis.stats",
    "holm_adjust": "analysis.stats",
    "mean_ci": "analysis.stats",
    "paired_bootstrap": "analysis.stats",
    "pareto_mask": "analysis.stats",
}

__all__ = [
    "ID_COLUMNS",
    "ReportFiles",
    "alpha_trajectories",
    "bptt_growth_table",
    "bptt_profile_plot",
    "build_report",
    "combine_studies",
    "degradation",
    "degradation_heatmap",
    "divergence_table",
    "export_study",
    "factor_effects",
    "floor_table",
    "grad_norm_curves",
    "holm_adjust",
    "learning_curves",
    "load_archive",
    "load_bptt_profiles",
    "load_curves",
    "load_runs",
    "mean_ci",
    "metric_names",
    "missing_cells",
    "paired_bootstrap",
    "pareto_mask",
    "pareto_plot",
    "point_plot",
    "raw_grad_norm_curves",
    "render_report",
    "save_figure",
    "spectral_norm_curves",
    "spectral_whole_curves",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
