"""labbench analysis: MLflow runs -> tidy pandas -> statistics -> seaborn figures -> report.

Reads studies by the names in docs/mlflow-layout.md and imports nothing else of labbench.

Example (needs a recorded study, so not run as a doctest)::

    from analysis import load_runs, paired_bootstrap, build_report
    uri = "sqlite:///labbench-runs/mlflow.db"
    frame = load_runs("bc-degradation", uri)
    paired_bootstrap(frame)  # mean degradation per configuration
    build_report("bc-degradation", uri, "out/")
"""

from analysis._diagnostic_plots import bptt_profile_plot, raw_grad_norm_curves, spectral_whole_curves
from analysis._evidence import bptt_growth_table, divergence_table, floor_table
from analysis._sources import combine_studies
from analysis.archive import export_study, load_archive
from analysis.plots import (
    alpha_trajectories,
    degradation_heatmap,
    grad_norm_curves,
    learning_curves,
    pareto_plot,
    point_plot,
    save_figure,
    spectral_norm_curves,
)
from analysis.report import ReportFiles, build_report, render_report
from analysis.runs import (
    ID_COLUMNS,
    load_bptt_profiles,
    load_curves,
    load_runs,
    metric_names,
    missing_cells,
)
from analysis.stats import (
    degradation,
    factor_effects,
    holm_adjust,
    mean_ci,
    paired_bootstrap,
    pareto_mask,
)

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
