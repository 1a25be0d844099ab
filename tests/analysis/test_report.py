"""analysis.report: the report of the fake studies, its files, its MLflow artifacts, its look."""

from __future__ import annotations

import re
import shutil
import subprocess

import matplotlib.image as mpimg
import pytest
from mlflow.tracking import MlflowClient

from analysis import _report_figures as figs
from analysis import build_report, load_runs
from analysis.report import _figure_sections, _study_data

BOOT = 500  # bootstrap resamples: the report's statistics, cheap enough for the suite
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.fixture(scope="module")
def report(fake_study, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return build_report(fake_study.name, fake_study.tracking_uri, out, n_boot=BOOT)


def test_report_files_exist_and_embed_every_figure(report):
    html = report.html.read_text(encoding="utf-8")
    md = report.markdown.read_text(encoding="utf-8")
    pngs = [p for p in report.figures if p.suffix == ".png"]
    assert len(pngs) == 9  # points, heatmap, learning, grad norm, alpha, spectral, bptt, 2 Pareto
    assert all(p.exists() for p in report.figures)
    assert html.count('src="data:image/png;base64,') == len(pngs)
    assert md.count("](figures/") == len(pngs)
    # self-contained: no external resource, no script
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", html)
    assert "<script" not in html.lower()


def test_report_sections_and_computed_sentences(report, fake_study):
    md = report.markdown.read_text(encoding="utf-8")
    headings = ["Study spec", "Environment", "Missing cells", "Degradation against the baseline",
                "Factor effects (ANOVA)", "Figures"]  # fmt: skip
    for heading in headings:
        assert f"\n## {heading}\n" in md
    assert "| bc | 32 | 3 | 000001000020 | not run |" in md
    assert "| lab | 32 | 5 | 000002000020 | failed |" in md
    # the fake study misses two cells: the ANOVA is refused and the reason printed
    assert "No ANOVA: factor_effects: unbalanced design" in md
    # every figure is followed by one sentence with a computed statistic
    blocks = md.split("![")[1:]
    for block in blocks:
        sentence = block.split("\n\n")[1]
        assert sentence.strip().endswith(".") and re.search(r"\d", sentence), sentence
    assert re.search(r"the largest is method=bc, hidden=16: 0\.3\d+ nats \(95% CI", md)
    # drawn intervals follow the tables' small-n rule, and the captions say so with n
    assert "bootstrap CIs" not in md.split("## Figures")[1]
    n = r"n = \d+( to \d+)? (seeds|runs)"  # runs when other axes are pooled
    assert re.search(rf"Points are the mean \S+ over runs with 95% t-intervals over {n}", md)
    assert re.search(rf"95% t-interval bands over {n}", md)
    assert "env.json of the" in md and "fake 2-core" in md


def test_report_is_logged_to_the_parent_run(report, fake_study):
    client = MlflowClient(tracking_uri=fake_study.tracking_uri)
    logged = {a.path for a in client.list_artifacts(fake_study.parent_run_id, "report")}
    assert {"report/report.md", "report/report.html", "report/figures"} <= logged
    figures = client.list_artifacts(fake_study.parent_run_id, "report/figures")
    assert len(figures) == len(report.figures)


def test_complete_study_report_has_the_anova(complete_study, tmp_path):
    files = build_report(
        complete_study.name, complete_study.tracking_uri, tmp_path, n_boot=100,
        log_to_mlflow=False,
    )  # fmt: skip
    md = files.markdown.read_text(encoding="utf-8")
    assert "No ANOVA" not in md
    assert "| method:hidden |" in md and "partial eta^2" in md
    assert "None: every cell ran with every seed." in md


def test_figures_the_data_cannot_support_are_skipped_with_a_note(fake_study, tmp_path, monkeypatch):
    frame = load_runs(fake_study.name, fake_study.tracking_uri)
    data = _study_data(frame, n_boot=100, seed=0)
    data.curves = data.curves[~data.curves.metric.str.startswith("spectral")]
    keep = ("Spectral norm of recurrent matrices", "Learning curves")
    monkeypatch.setattr(figs, "FIGURES", tuple(f for f in figs.FIGURES if f[0] in keep))
    blocks, written = _figure_sections(data, tmp_path)
    notes = [b.text for b in blocks if getattr(b, "note", False)]
    assert notes == ["Spectral norm of recurrent matrices: not drawn (no spectral_whole/ metrics "
                     "(no recurrent layers, or runs recorded before the whole-matrix norm was "
                     "logged))."]  # fmt: skip
    assert [p.name for p in written] == ["learning-curves.png", "learning-curves.svg"]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium")
def test_html_renders_in_headless_chromium(report, tmp_path):
    shot = tmp_path / "report.png"
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    url = report.html.resolve().as_uri()
    dom = subprocess.run(
        ["chromium", *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120,
        check=True,
    )  # fmt: skip
    assert dom.stdout.count("<figure>") == 9 and "<table>" in dom.stdout
    run = subprocess.run(
        ["chromium", *flags, "--enable-logging=stderr", "--v=0", "--window-size=1280,2000",
         f"--screenshot={shot}", url],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    errors = [line for line in run.stderr.splitlines() if "Uncaught" in line or "ERROR:CONSOLE" in line]
    assert errors == []
    pixels = mpimg.imread(shot)[..., :3]
    assert pixels.shape[:2] == (2000, 1280)
    assert pixels.var() > 0.005, "the screenshot looks blank"


def test_report_of_a_study_with_no_finished_run(study_root, tmp_path):
    # a launched study whose trials have not finished: every section says why it is empty
    client = MlflowClient(tracking_uri=f"sqlite:///{study_root / 'mlflow.db'}")
    exp = client.create_experiment("launched", artifact_location=(tmp_path / "art").as_uri())
    client.create_run(exp, tags={"labbench.kind": "study", "labbench.axes": '["method"]',
                                 "labbench.baseline": '{"method": "fp"}'})  # fmt: skip
    files = build_report("launched", f"sqlite:///{study_root / 'mlflow.db'}", tmp_path / "out")
    md = files.markdown.read_text(encoding="utf-8")
    assert files.figures == ()
    assert "No degradation table" in md and "No ANOVA" in md
    assert md.count("not drawn (") == 8
