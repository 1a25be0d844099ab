"""The report as a reader sees it: figures legible in a browser, hostile values escaped, the grid's
level order, the environment of every run.

The browser test needs Debian's ``chromium`` (CI installs it: .ci/run); it fails, not skips,
without it.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from PIL import Image

from analysis import _report_figures as figs
from analysis import build_report, load_runs, point_plot
from analysis._plotstyle import axis_levels
from analysis._render import escape_markdown
from analysis.report import _study_data, render_report

HOSTILE = "<script>alert(1)</script>"
PIPE = "a|b"
# the grid's order: neither sorted nor baseline-first, and two values that break Markdown
GRID = ["lab", HOSTILE, "fp", PIPE]
ENVS = [{"python": "3.11.2", "cpu": "fake 2-core"}] * 5 + [{"python": "3.12.1", "cpu": "fake 2-core"}] * 3
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
# appended to a copy of the report: measures, once the page has loaded, each image's natural and
# displayed width and the smallest computed font size of the page's text, into a <pre> the
# --dump-dom output carries
MEASURE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images].map(i => ({natural: i.naturalWidth,
    shown: parseFloat(getComputedStyle(i).width)}));  // content box: the border left out
  const texts = [...document.querySelectorAll("p, td, th, caption, figcaption, h1, h2, h3, h4")]
    .filter(e => e.textContent.trim()).map(e => parseFloat(getComputedStyle(e).fontSize));
  const pre = document.createElement("pre");
  pre.id = "measured";
  pre.textContent = JSON.stringify({images, smallest_text: Math.min(...texts), width: innerWidth});
  document.body.appendChild(pre);
});
</script>"""


def write_hostile_study(root, name: str) -> str:
    """A study whose method values are ``GRID`` (2 seeds) and whose spec has HTML in it."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment(name, artifact_location=(root / f"art-{name}").as_uri())
    parent = client.create_run(exp, run_name=name, tags={
        "labbench.kind": "study", "labbench.study": name, "labbench.objective": "test_xent",
        "labbench.direction": "minimize", "labbench.baseline": '{"method": "fp"}',
        "labbench.axes": '["method"]',
    })  # fmt: skip
    pid = parent.info.run_id
    spec = {
        "study": {"name": name, "description": f"{HOSTILE} | *not bold* [no](link)",
                  "objective": "test_xent", "direction": "minimize", "seeds": [0, 1],
                  "baseline": {"method": "fp"}},
        "base": {"model": "lstm", "dataset": "pysrc"},
        "grid": {"method": GRID},
    }  # fmt: skip
    client.log_dict(pid, spec, "study.json")
    k = 0
    for i, method in enumerate(GRID):
        for seed in (0, 1):
            run = client.create_run(exp, start_time=1000 * (k + 1), tags={
                "mlflow.parentRunId": pid, "labbench.kind": "trial", "labbench.study": name,
                "labbench.cell": f"{i:012x}", "labbench.seed": str(seed), "labbench.trial": str(k),
            })  # fmt: skip
            rid = run.info.run_id
            noise = 0.05 * ((7 * k) % 5 - 2)  # fixed scatter: a design with residual variance
            finals = {"test_xent": 1.5 + 0.1 * i + noise, "step_ms": 10.0 + i + seed,
                      "bits_per_weight": 32.0 if method == "fp" else 1.0}  # fmt: skip
            metrics = [Metric(m, v, 0, 0) for m, v in finals.items()]
            metrics += [Metric("val_xent", 2.0 - 0.1 * e + 0.1 * i, 0, e) for e in (1, 2, 3)]
            client.log_batch(rid, params=[Param("method", method), Param("seed", str(seed))],
                             metrics=metrics)  # fmt: skip
            client.log_dict(rid, ENVS[k], "env.json")
            client.set_terminated(rid, "FINISHED", end_time=10_000 + k)
            k += 1
    client.set_terminated(pid, "FINISHED")
    return uri


@pytest.fixture(scope="module")
def hostile(study_root, tmp_path_factory):
    name = f"hostile {HOSTILE} {PIPE}"
    uri = write_hostile_study(study_root, name)
    out = tmp_path_factory.mktemp("hostile-report")
    files = build_report(name, uri, out, n_boot=200, log_to_mlflow=False)
    return {"name": name, "uri": uri, "files": files}


def _table_rows(md: str) -> list[list[str]]:
    """Each Markdown table row split into cells at the pipes a renderer splits at (not ``\\|``)."""
    rows = []
    for line in md.splitlines():
        if line.startswith("|"):
            rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows


def test_markdown_escapes_values_from_the_study_and_the_runs(hostile):
    md = hostile["files"].markdown.read_text(encoding="utf-8")
    assert "<script" not in md.lower()
    assert "&lt;script>alert(1)&lt;/script>" in md  # shown as text, in the title and the tables
    assert md.startswith("# Study report: hostile &lt;script>alert(1)&lt;/script> a\\|b\n")
    assert "*not bold*" not in md and "\\*not bold\\*" in md and "\\[no\\](link)" in md
    # a "|" in a value stays inside its cell: every row has its table's number of cells
    rows = _table_rows(md)
    assert any("a\\|b" in cell for row in rows for cell in row)
    tables = re.split(r"\n\n+", md)
    for table in tables:
        lines = [row for row in _table_rows(table)]
        if lines:
            assert len({len(row) for row in lines}) == 1, table


def test_html_escapes_values_from_the_study_and_the_runs(hostile):
    html = hostile["files"].html.read_text(encoding="utf-8")
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<td class=\"text\">a|b</td>" in html


@pytest.mark.parametrize(
    ("text", "plain"),
    [
        ("test_xent and _x_ *b*", "test_xent and \\_x\\_ \\*b\\*"),
        ("> 0 is worse; p > 0.05", "\\> 0 is worse; p > 0.05"),
        ("- item\n1. first\n# heading", "\\- item\n1\\. first\n\\# heading"),
        ("`code` ~strike~ $x$ a\\b", "\\`code\\` \\~strike\\~ \\$x\\$ a\\\\b"),
        ("&amp; R&D <b>", "&amp;amp; R&D &lt;b>"),
    ],
)
def test_escape_markdown(text, plain):
    assert escape_markdown(text) == plain


def test_levels_follow_the_grid_in_the_report(hostile, tmp_path, monkeypatch):
    frame = load_runs(hostile["name"], hostile["uri"])
    drawn = []

    def spy(frame, response, x, hue=None, **kw):  # what the report's point plot is asked to draw
        drawn.append(axis_levels(frame, x, kw.get("order")))
        return point_plot(frame, response, x, hue, **kw)

    monkeypatch.setattr(figs.plots, "point_plot", spy)
    render_report(frame, tmp_path, n_boot=50)
    assert drawn == [GRID]
    assert "levels" not in frame.attrs  # the caller's frame is left as it was
    frame.attrs["levels"] = {"method": GRID}
    assert _study_data(frame, n_boot=50, seed=0).hue_order == GRID
    fig = point_plot(frame, "test_xent", "method", n_boot=50)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == GRID


def test_environment_summarises_every_run(hostile):
    md = hostile["files"].markdown.read_text(encoding="utf-8")
    rows = _table_rows(md)
    python = [row for row in rows if row and row[0] == "python"]
    assert sorted((row[1], row[2]) for row in python) == [("3.11.2", "5"), ("3.12.1", "3")]
    cpu = [row for row in rows if row and row[0] == "cpu"]
    assert [(row[1], row[2]) for row in cpu] == [("fake 2-core", "8")]


def _measure_in_chromium(html_path, tmp_path) -> dict:
    assert shutil.which("chromium"), "needs Debian's chromium (.ci/run installs it)"
    page = tmp_path / "measured.html"
    page.write_text(html_path.read_text(encoding="utf-8").replace("</body>", MEASURE + "</body>"),
                    encoding="utf-8")  # fmt: skip
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2000"]
    dom = subprocess.run(["chromium", *flags, "--dump-dom", page.resolve().as_uri()],
                         capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    found = re.search(r'<pre id="measured">(.*?)</pre>', dom.stdout, re.S)
    assert found, "the page did not report its measurements"
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def test_figures_are_legible_at_the_width_the_browser_shows_them(report, tmp_path):
    html = report.html.read_text(encoding="utf-8")
    measured = _measure_in_chromium(report.html, tmp_path)
    assert measured["width"] == 1280
    pngs = [base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]
    assert len(measured["images"]) == len(pngs) >= 8
    for png, shown in zip(pngs, measured["images"], strict=True):
        with Image.open(io.BytesIO(png)) as img:
            natural, dpi = img.size[0], img.info["dpi"][0]
            smallest_pt = float(img.text["labbench.min_font_pt"])
        assert shown["natural"] == natural
        scale = shown["shown"] / natural  # displayed CSS px per image px
        assert scale <= 1.0 + 1e-6, "an image is stretched beyond its pixels"
        smallest_px = smallest_pt / 72 * dpi * scale
        where = f"{natural} px image shown at {shown['shown']:.0f} px"
        assert smallest_px >= 9.0, f"{where}: smallest text {smallest_px:.1f} px"
    assert measured["smallest_text"] >= 9.0


@pytest.fixture(scope="module")
def report(fake_study, tmp_path_factory):
    out = tmp_path_factory.mktemp("report-render")
    return build_report(fake_study.name, fake_study.tracking_uri, out, n_boot=200, log_to_mlflow=False)
