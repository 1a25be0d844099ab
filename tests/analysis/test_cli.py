"""`labbench report` and `labbench findings` as a user runs them."""

import csv
from pathlib import Path

from labbench.cli import main


def test_report_command_writes_the_report(complete_study, tmp_path, capsys):
    out = tmp_path / "report"
    code = main(["report", complete_study.name, "--tracking-uri", complete_study.tracking_uri,
                 "--out", str(out), "--n-boot", "200", "--no-log"])
    assert code == 0
    printed = capsys.readouterr().out
    assert str(out / "report.html") in printed
    html = (out / "report.html").read_text()
    assert complete_study.name in html and "data:image/png;base64," in html
    assert (out / "report.md").stat().st_size > 500


def test_report_of_an_unknown_study_exits_2(tmp_path, capsys):
    code = main(["report", "no-such-study", "--root", str(tmp_path)])
    assert code == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert not (tmp_path / "mlflow.db").exists()  # the loader must not create a database


def test_findings_command_renders_a_template_from_the_archives(tmp_path, capsys):
    reports = Path(__file__).resolve().parents[2] / "docs" / "reports"
    with open(reports / "lstm-scale-capacity" / "archive" / "runs.csv", newline="") as f:
        runs = list(csv.DictReader(f))
    fp_runs = sum(r["method"] == "fp" for r in runs)
    template, out = tmp_path / "t.in.md", tmp_path / "t.md"
    template.write_text("fp runs: {{ n lstm-scale-capacity method=fp }}\n")
    code = main(["findings", "--template", str(template), "--reports", str(reports),
                 "--out", str(out)])
    assert code == 0 and capsys.readouterr().out == f"wrote {out}\n"
    assert out.read_text().splitlines()[1:] == [f"fp runs: {fp_runs}"]  # under the generated-by line
    assert 0 < fp_runs < len(runs)


def test_findings_command_bad_input_exits_2_on_stderr(tmp_path, capsys):
    assert main(["findings", "--template", str(tmp_path / "absent.md")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'absent.md'}: no such template\n"
    template = tmp_path / "t.in.md"
    template.write_text("{{ n no-such-study method=fp }}\n")
    assert main(["findings", "--template", str(template), "--reports", str(tmp_path),
                 "--out", str(tmp_path / "t.md")]) == 2
    assert capsys.readouterr().err.startswith("error: ") and not (tmp_path / "t.md").exists()
