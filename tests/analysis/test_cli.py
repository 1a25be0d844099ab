"""`labbench report` as a user runs it."""

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
