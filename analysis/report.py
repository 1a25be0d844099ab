"""A study's report: Markdown + self-contained HTML with its tables and figures, logged to MLflow.

The report holds the study spec, the runs' environments summarised, the missing cells, the degradation
table (means over seeds with paired t-intervals, d_z, Holm-corrected p-values; bootstrap CIs only
from 5 seeds up), the ANOVA of the factors with the seed as a block when the design allows it
(else the reason it does not), and every figure the data supports, each with
one computed sentence underneath. A figure or table that cannot be made is replaced by a note.
The evidence sections (:mod:`analysis._report_evidence`) set each cell's score beside its
reference floors (flagging undertrained cells), count diverged runs by reason, and summarise the
growth of gradients through time.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from analysis import _report_evidence as evidence
from analysis import _report_figures as figs
from analysis._mlflow import open_client
from analysis._plotstyle import axis_levels, spec_levels, unit
from analysis._render import Heading, Image, Table, Text, to_html, to_markdown
from analysis._render import fmt_number as num
from analysis._render import fmt_p as _p
from analysis._sources import StudyReader
from analysis.plots import save_figure
from analysis.runs import load_bptt_profiles, load_curves, load_runs, metric_names, missing_cells
from analysis.stats import degradation, factor_effects, paired_intervals

__all__ = ["ReportFiles", "build_report", "render_report"]

logger = logging.getLogger(__name__)

FIGURE_DIR = "figures"


@dataclass(frozen=True)
class ReportFiles:
    """The files a report wrote (all under its ``out_dir``)."""

    markdown: Path
    html: Path
    figures: tuple[Path, ...]  # PNG and SVG of each figure, under ``out_dir/figures``


def build_report(
    study: str,
    tracking_uri: str,
    out_dir: str | Path,
    *,
    n_boot: int = 10_000,
    seed: int = 0,
    log_to_mlflow: bool = True,
    conditional: str = "fold",
) -> ReportFiles:
    """Write ``report.md``, ``report.html`` and ``figures/`` for a study, and log them to MLflow.

    Args:
        study: the study (experiment) name.
        tracking_uri: the MLflow tracking URI.
        out_dir: folder to write into (created if needed).
        n_boot: bootstrap resamples for every CI.
        seed: seed of every bootstrap, so the report is reproducible.
        log_to_mlflow: log the files as artifacts of the study's parent run under ``report/``.
        conditional: ``"fold"`` (a method's own axes make levels such as ``laq:4`` of the
            method factor) or ``"factor"`` (they stay factors); see :func:`analysis.load_runs`.

    Returns:
        The :class:`ReportFiles` written.

    Raises:
        LookupError: no database, experiment or parent run for ``study`` at ``tracking_uri``.
    """
    frame = load_runs(study, tracking_uri, conditional=conditional)
    files = render_report(frame, out_dir, n_boot=n_boot, seed=seed)
    if log_to_mlflow:
        client = open_client(tracking_uri)
        parent = frame.attrs["parent_run_id"]
        client.log_artifact(parent, str(files.markdown), artifact_path="report")
        client.log_artifact(parent, str(files.html), artifact_path="report")
        for path in files.figures:
            client.log_artifact(parent, str(path), artifact_path=f"report/{FIGURE_DIR}")
        logger.info("logged the report of %r to parent run %s under report/", study, parent)
    return files


def render_report(frame: pd.DataFrame, out_dir: str | Path, *, n_boot: int = 10_000,
                  seed: int = 0) -> ReportFiles:
    """Write ``report.md``, ``report.html`` and ``figures/`` for a study frame.

    Args:
        frame: from :func:`analysis.load_runs`, :func:`analysis.load_archive` or
            :func:`analysis.combine_studies` (its attrs say where specs, environments and curves
            are read from, so an archive renders the same report as the MLflow study).
        out_dir: folder to write into (created if needed).
        n_boot: bootstrap resamples for every CI.
        seed: seed of every bootstrap, so the report is reproducible.

    Returns:
        The :class:`ReportFiles` written.
    """
    out = Path(out_dir)
    (out / FIGURE_DIR).mkdir(parents=True, exist_ok=True)
    reader = StudyReader(frame)
    frame = frame.copy()  # the grid's level order, for every figure (and table) drawn from it
    specs = reader.specs()  # read once: the level order and the spec section both use them
    levels = spec_levels([spec for _, spec, _ in specs], frame)
    for axis, order in (frame.attrs.get("levels") or {}).items():  # e.g. combined studies'
        levels.setdefault(axis, order)
    frame.attrs["levels"] = levels
    data = _study_data(frame, n_boot, seed)
    blocks: list = _summary(frame, data)
    blocks += _spec_section(specs)
    blocks += _environment_section(reader, frame)
    blocks += _missing_section(frame)
    blocks += evidence.floor_section(frame, data.axes)
    blocks += evidence.divergence_section(frame, data.axes)
    blocks += _degradation_section(data)
    blocks += evidence.interaction_section(frame, data.axes)
    blocks += _anova_section(data)
    blocks += evidence.cost_section(frame, data.axes)
    blocks += evidence.bptt_section(frame, data.axes)
    figure_blocks, written = _figure_sections(data, out / FIGURE_DIR)
    blocks += figure_blocks
    title = f"Study report: {frame.attrs.get('study')}"
    md = out / "report.md"
    html = out / "report.html"
    md.write_text(to_markdown(blocks, title, FIGURE_DIR), encoding="utf-8")
    html.write_text(to_html(blocks, title), encoding="utf-8")
    return ReportFiles(markdown=md, html=html, figures=tuple(written))


def _study_data(frame: pd.DataFrame, n_boot: int, seed: int) -> figs.StudyData:
    """Resolve the objective, hue and degradation once for every section."""
    attrs = frame.attrs
    objective = attrs.get("objective")
    column = (attrs.get("metric_columns") or {}).get(objective) if objective else None
    axes = [a for a in attrs.get("axes") or [] if a in frame.columns]
    baseline = dict(attrs.get("baseline") or {})
    hue = "method" if "method" in axes else next((k for k in baseline if k in axes), None)
    hue = hue or (axes[0] if axes else None)
    hue_order = axis_levels(frame, hue) if hue is not None else []  # the grid's order
    degr = None
    if column and baseline and axes and attrs.get("direction") and len(frame):
        try:
            degr = degradation(frame)
        except ValueError as err:
            logger.warning("report: no degradation table: %s", err)
    val_metric, wanted = figs.pick_curve_metrics(frame, objective)
    curves = load_curves(frame, wanted) if wanted and hue is not None else None
    profiles = load_bptt_profiles(frame) if metric_names(frame, "bptt_growth") else None
    return figs.StudyData(
        frame=frame, objective=objective, column=column, direction=attrs.get("direction"),
        baseline=baseline, axes=axes, hue=hue, hue_order=hue_order, degradation=degr,
        curves=curves, val_metric=val_metric, n_boot=n_boot, seed=seed, profiles=profiles,
    )  # fmt: skip


def _summary(frame: pd.DataFrame, data: figs.StudyData) -> list:
    attrs = frame.attrs
    n_cells = frame["cell"].nunique()
    seeds = attrs.get("seeds") or []
    base = ", ".join(f"{k}={v}" for k, v in data.baseline.items()) or "none"
    return [
        Text(
            f"Objective: {data.objective or 'not set'} ({data.direction or 'no direction'}); "
            f"baseline: {base}; axes: {', '.join(data.axes) or 'none'}; seeds: "
            f"{', '.join(map(str, seeds))} ({attrs.get('seeds_source')}). {len(frame)} finished "
            f"runs in {n_cells} cells; {_excluded_text(attrs.get('excluded_runs') or [])}; "
            f"{attrs.get('duplicates_dropped', 0)} duplicate runs dropped (earliest end kept). "
            f"Parent run {attrs.get('parent_run_id')}; tracking URI {attrs.get('tracking_uri')}; "
            f"generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC."
        )
    ]


def _spec_section(specs: list) -> list:
    """The resolved spec of each study part, from ``StudyReader.specs()``."""
    blocks: list = [Heading("Study spec")]
    for study, spec, tags in specs:
        named = f" of study {study}" if len(specs) > 1 else ""
        if spec is not None:
            blocks += [Text(f"From the parent run's study.json artifact{named}."),
                       Table(_flat_table(spec))]  # fmt: skip
            continue
        tags = {k: v for k, v in sorted(tags.items()) if k.startswith("labbench.")}
        table = pd.DataFrame({"tag": list(tags), "value": list(tags.values())})
        blocks += [Text(f"No study.json artifact{named}; the parent run's tags:", True), Table(table)]
    return blocks


def _environment_section(reader: StudyReader, frame: pd.DataFrame) -> list:
    summary = reader.environment()
    if summary.empty:
        return [Heading("Environment"), Text("No run has an env.json artifact.", note=True)]
    keys = summary["key"].nunique()
    varied = int((summary.groupby("key")["value"].nunique() > 1).sum())
    return [Heading("Environment"),
            Text(f"The env.json of the {len(frame)} runs: each key's distinct values and how "
                 f"many runs had each; {varied} of {keys} keys differ between runs."),
            Table(summary.astype(str))]  # fmt: skip


def _missing_section(frame: pd.DataFrame) -> list:
    blocks: list = [Heading("Missing cells")]
    if not frame.attrs.get("axes"):
        return [*blocks, Text("The study has no axes tag: missing cells cannot be listed.", True)]
    try:
        missing = missing_cells(frame)
    except ValueError as err:
        return [*blocks, Text(f"Missing cells cannot be listed: {err}.", note=True)]
    if missing.empty:
        return [*blocks, Text("None: every cell ran with every seed.")]
    blocks.append(
        Text(
            f"{len(missing)} cell x seed combination(s) of the full factorial have no finished "
            "run; they are reported, never imputed, and the paired statistics below leave them "
            "out."
        )
    )
    return [*blocks, Table(missing.map(num))]


def _degradation_section(d: figs.StudyData) -> list:
    blocks: list = [Heading("Degradation against the baseline")]
    if d.degradation is None or d.degradation.empty:
        return [*blocks, Text("No degradation table: the study lacks an objective, a baseline, "
                              "axes or baseline runs.", note=True)]  # fmt: skip
    stats = paired_intervals(d.degradation, n_boot=d.n_boot, seed=d.seed)
    u = unit(d.objective)
    worse = "value - baseline" if d.direction == "minimize" else "baseline - value"
    level = f"{stats.attrs['ci']:.0%}"
    blocks.append(
        Text(
            f"Degradation = {worse} of {d.objective}{f' ({u})' if u else ''}, paired by seed "
            "and by the other axes; > 0 means worse than the baseline. n is the number of seeds "
            f"with a pair; each mean is over the n per-seed differences, with its {level} paired "
            "t-interval (Student t on those differences, df = n - 1). d_z = mean / sd of the "
            f"per-seed differences (Cohen's d_z, the paired effect size), with its {level} CI "
            "from the noncentral t. p from the paired t-test (and a Wilcoxon signed-rank test "
            "with >= 6 seeds), Holm-corrected over all rows."
        )
    )
    blocks.append(Text(_bootstrap_text(stats, d.n_boot, d.seed)))
    by = list(stats.columns[: list(stats.columns).index("n")])
    table = stats[by].copy()
    table["n"] = stats["n"]
    table["df"] = stats["df"].map(num)
    table["mean"] = stats["mean"].map(num)
    table[f"{level} CI (t)"] = _ranges(stats["ci_low"], stats["ci_high"])
    table["d_z"] = stats["d_z"].map(num)
    table[f"{level} CI (d_z)"] = _ranges(stats["d_z_low"], stats["d_z_high"])
    if (stats["n"] >= stats.attrs["min_bootstrap_n"]).any() and d.n_boot:
        table[f"{level} CI (BCa)"] = _ranges(stats["boot_low"], stats["boot_high"])
    table["p (t)"] = stats["p_ttest"].map(_p)
    table["Holm p"] = stats["p_holm"].map(_p)
    table["p (Wilcoxon)"] = stats["p_wilcoxon"].map(_p)
    table["Holm p (Wilcoxon)"] = stats["p_wilcoxon_holm"].map(_p)
    table["note"] = stats["note"]
    blocks.append(Table(table.astype(str)))
    unpaired = d.degradation.attrs.get("unpaired") or []
    if unpaired:
        blocks.append(Text(f"{len(unpaired)} run(s) have no baseline run with the same seed and "
                           "configuration and are left out.", note=True))  # fmt: skip
    return blocks


def _bootstrap_text(stats: pd.DataFrame, n_boot: int, seed: int) -> str:
    """Why the table has bootstrap CIs for some rows, all rows or none (never below 5 seeds)."""
    floor = stats.attrs["min_bootstrap_n"]
    n = stats["n"][stats["n"] >= 2]
    why = (
        f"a bootstrap interval resamples only the values it has, so from fewer than {floor} seeds "
        "it is far too narrow (a nominal 95% BCa interval covers the true mean about half the "
        "time at n = 2, 71% at n = 3)"
    )
    if not n_boot:
        return "No bootstrap CIs (n_boot = 0); the t-intervals are exact for normal differences."
    if n.empty or (n < floor).all():
        span = "" if n.empty else f" (n = {n.min()}" + ("" if n.min() == n.max() else f" to {n.max()}") + ")"
        return (
            f"No bootstrap CIs: every row has fewer than {floor} seeds{span}, and {why}. The "
            "t-intervals are shown instead; they are exact when the differences are normal."
        )
    which = "every row" if (n >= floor).all() else f"only the rows with at least {floor} seeds"
    return (
        f"BCa bootstrap CIs ({n_boot} resamples, seed {seed}) are shown for {which}, as a check "
        f"against skewed differences; {why}. Even at 5 to 10 seeds the BCa interval tends to be "
        "narrower than it should be (about 84% coverage at n = 5 for normal differences), so the "
        "t-interval is the one to read."
    )


def _ranges(low: pd.Series, high: pd.Series) -> list[str]:
    """``lo to hi`` per row, or an em dash when there is no interval."""
    return [f"{num(lo)} to {num(hi)}" if pd.notna(lo) else num(lo) for lo, hi in zip(low, high, strict=True)]


def _anova_section(d: figs.StudyData) -> list:
    blocks: list = [Heading("Factor effects (ANOVA)")]
    factors = [a for a in d.axes if d.frame[a].nunique(dropna=False) >= 2]
    if not d.column or not factors:
        return [*blocks, Text("No ANOVA: no objective or no axis with two levels.", note=True)]
    paired = "seed" in d.frame.columns and d.frame["seed"].nunique() >= 2
    try:
        table = factor_effects(d.frame, d.column, factors, interactions=len(factors) > 1,
                               block="seed" if paired else None)  # fmt: skip
    except ValueError as err:
        return [*blocks, Text(f"No ANOVA: {err}", note=True)]
    a = table.attrs
    resid_df = num(a["residual_df"])
    design = (
        f"ANOVA of {', '.join(factors)} with the seed as a block: OLS {a['formula']}. Runs that "
        "share a seed are paired, so what a seed shifts in every configuration is taken out; the "
        f"residual is the seed x configuration interaction (df = {resid_df})."
        if paired
        else f"ANOVA of {', '.join(factors)} without a block (one seed): OLS {a['formula']}."
    )
    seeds = f" over {a['n_blocks']} seeds" if paired else ""
    blocks.append(
        Text(
            f"{design} Sum-to-zero contrasts, type {a['typ']} sums of squares; n = {a['n']} runs "
            f"in {a['n'] // a['replicates']} cells ({a['replicates']} per cell{seeds}), "
            f"R^2 = {num(a['r_squared'])}. Partial eta squared = SS_term / (SS_term + "
            f"SS_residual), with its {a['ci']:.0%} CI from the noncentral F (Steiger 2004). The "
            "F tests are not corrected for multiplicity."
        )
    )
    shown = pd.DataFrame(
        {
            "term": [f"{t} (block)" if t == a["block"] else t for t in table["term"]],
            "df": table["df"].map(num), "sum_sq": table["sum_sq"].map(num),
            "F": table["F"].map(num), "p": table["p_value"].map(_p),
            "partial eta^2": table["partial_eta_sq"].map(num),
            f"{a['ci']:.0%} CI (partial eta^2)": _ranges(table["eta_sq_low"], table["eta_sq_high"]),
            "n": a["n"],
        }
    )  # fmt: skip
    return [*blocks, Table(shown.astype(str))]


def _figure_sections(d: figs.StudyData, folder: Path) -> tuple[list, list[Path]]:
    blocks: list = [Heading("Figures")]
    written: list[Path] = []
    for title, build in figs.FIGURES:
        try:
            items = build(d)
        except (figs.Skip, ValueError) as err:
            logger.info("report: figure %r skipped: %s", title, err)
            blocks.append(Text(f"{title}: not drawn ({err}).", note=True))
            continue
        blocks.append(Heading(title, level=3))
        for stem, fig, caption, alt in items:
            paths = save_figure(fig, folder / stem)
            written += paths
            blocks.append(Image(paths[0], caption, alt))
    return blocks, written


def _excluded_text(excluded: list[dict]) -> str:
    """``2 runs not finished were left out (1 FAILED, 1 RUNNING)``."""
    if not excluded:
        return "no run was left unfinished"
    counts = pd.Series([r["status"] for r in excluded]).value_counts().sort_index()
    by_status = ", ".join(f"{n} {status}" for status, n in counts.items())
    return f"{len(excluded)} runs not finished were left out ({by_status})"


def _flat_table(data) -> pd.DataFrame:
    """A JSON object as a two-column table: dotted keys of nested objects, lists inline."""
    rows: list[tuple[str, str]] = []

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict) and value:
            for key in sorted(value):
                walk(f"{prefix}.{key}" if prefix else str(key), value[key])
        else:
            rows.append((prefix or "(value)", json.dumps(value) if not isinstance(value, str)
                         else value))  # fmt: skip

    walk("", data)
    return pd.DataFrame(rows, columns=["key", "value"])
