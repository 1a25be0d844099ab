"""analysis.archive and `labbench export` / `labbench report --from` / `labbench report A B`."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

import analysis
from analysis import load_curves, load_runs
from analysis._sources import CombineError, combine_studies
from analysis.archive import FORMAT, environment_summary, load_archive
from analysis.report import build_report
from analysis.runs import load_bptt_profiles
from labbench.cli import main

BOOT = 200


@pytest.fixture(scope="module")
def archive(fake_study, tmp_path_factory):
    out = tmp_path_factory.mktemp("archive") / "fake"
    code = main(["export", fake_study.name, "--tracking-uri", fake_study.tracking_uri, "--out", str(out)])
    assert code == 0
    return out


def _plain(attrs: dict) -> dict:
    return json.loads(json.dumps({k: v for k, v in attrs.items() if k != "archive"}, default=str))


def test_archive_loads_back_the_frame_load_runs_gives(archive, fake_study):
    original = load_runs(fake_study.name, fake_study.tracking_uri)
    loaded = load_archive(archive)
    pd.testing.assert_frame_equal(loaded, original, check_exact=True)
    assert _plain(loaded.attrs) == _plain(original.attrs)
    assert loaded.attrs["archive"] == [str(archive)]
    # every timestamp in one format, so that pandas' inferred format reads them all
    meta = pd.read_csv(archive / "runs-meta.csv", dtype=str)
    stamps = pd.concat([meta["start_time"], meta["end_time"]])
    assert stamps.str.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00").all()
    assert stamps.str.endswith(".250000+00:00").any() and stamps.str.endswith(".000000+00:00").any()
    ends = loaded["end_time"].reset_index(drop=True)
    pd.testing.assert_series_equal(pd.to_datetime(meta["end_time"]), ends, check_names=False)


def test_runs_csv_has_every_param_and_final_metric_by_name_exactly(archive, fake_study):
    with (archive / "runs.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(fake_study.kept)  # one row per finished (cell, seed)
    client = MlflowClient(tracking_uri=fake_study.tracking_uri)
    by_id = {row["run_id"]: row for row in rows}
    assert set(by_id) == set(fake_study.kept.values())
    for (method, hidden, seed), run_id in fake_study.kept.items():
        row, run = by_id[run_id], client.get_run(run_id)
        assert (row["study"], row["status"], row["method"], row["hidden"], row["seed"]) == (
            fake_study.name, "FINISHED", method, str(hidden), str(seed))
        assert row["cell"] == run.data.tags["labbench.cell"]
        for name in ("test_xent", "best_val_xent", "step_ms"):  # repr: the float read back is exact
            assert float(row[name]) == run.data.metrics[name]
    # deterministic order: by cell, then seed
    keys = [(r["cell"], int(r["seed"])) for r in rows]
    assert keys == sorted(keys)
    # every column that is not a metric, the run id or the seed is a setting: constant within a cell
    metrics = set(load_archive(archive).attrs["metric_columns"].values())
    results = metrics | {"diverged_reason"}  # a run's outcome (a tag), not a setting
    settings = [c for c in rows[0] if c not in results and c not in ("run_id", "seed")]
    cells = {tuple(r[c] for c in settings) for r in rows}
    assert len(cells) == len({r["cell"] for r in rows})
    with (archive / "runs-meta.csv").open(newline="") as f:
        meta = list(csv.DictReader(f))
    assert [m["run_id"] for m in meta] == [r["run_id"] for r in rows]
    assert set(meta[0]) == {"run_id", "trial", "start_time", "end_time"}


def test_manifest_hashes_and_counts_every_file(archive, fake_study):
    manifest = json.loads((archive / "manifest.json").read_text())
    assert manifest["format"] == FORMAT and manifest["study"] == fake_study.name
    assert manifest["labbench"]["version"]
    source = Path(analysis.__file__).parent  # the exporting code's commit (None outside git)
    done = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert manifest["labbench"]["git_commit"] == (done.stdout.strip() if done.returncode == 0 else None)
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((archive / name).read_bytes()).hexdigest() == digest
    on_disk = {p.relative_to(archive).as_posix() for p in archive.rglob("*") if p.is_file()}
    assert on_disk == {*manifest["files"], "manifest.json"}
    assert manifest["rows"]["runs.csv"] == len(fake_study.kept)
    with (archive / "curves.csv").open() as f:
        assert manifest["rows"]["curves.csv"] == sum(1 for _ in f) - 1


def test_curves_from_the_archive_equal_mlflow(archive, fake_study):
    original = load_runs(fake_study.name, fake_study.tracking_uri)
    loaded = load_archive(archive)
    wanted = ["val_xent", "grad_norm/", "spectral/"]
    pd.testing.assert_frame_equal(load_curves(loaded, wanted), load_curves(original, wanted),
                                  check_exact=True)
    with pytest.raises(LookupError, match="test_xent"):  # run-level metrics live in runs.csv only
        load_curves(loaded, ["test_xent"])


def test_profiles_from_the_archive_equal_mlflow(archive, fake_study):
    original = load_runs(fake_study.name, fake_study.tracking_uri)
    loaded = load_archive(archive)
    mlflow_profiles = load_bptt_profiles(original)
    assert len(mlflow_profiles) > 0
    pd.testing.assert_frame_equal(load_bptt_profiles(loaded), mlflow_profiles, check_exact=True)
    # only the last epoch of each run's series is archived
    files = sorted(p.name for p in (archive / "artifacts").rglob("*.json"))
    assert set(files) == {f"epoch-{int(original['epochs_run'].max())}.json"}
    assert len(files) == len(original)


def _normalised(markdown: str) -> str:
    return re.sub(r"generated \d{4}-\d\d-\d\d \d\d:\d\d UTC", "generated <time>", markdown)


def test_report_from_archive_is_the_report_from_mlflow(archive, fake_study, tmp_path, capsys):
    direct = build_report(fake_study.name, fake_study.tracking_uri, tmp_path / "mlflow", n_boot=BOOT,
                          log_to_mlflow=False)
    code = main(["report", "--from", str(archive), "--out", str(tmp_path / "archive"), "--n-boot", str(BOOT)])
    assert code == 0, capsys.readouterr().err
    from_mlflow = _normalised(direct.markdown.read_text())
    from_archive = _normalised((tmp_path / "archive" / "report.md").read_text())
    assert from_archive == from_mlflow
    assert "| bc | 32 | 3 | 000001000020 | not run |" in from_archive  # the faults survive the trip
    assert "fake 2-core" in from_archive


def test_a_changed_file_or_a_missing_archive_exits_2_and_creates_nothing(archive, tmp_path, capsys):
    altered = tmp_path / "altered"
    altered.mkdir()
    for p in archive.rglob("*"):
        if p.is_file():
            target = altered / p.relative_to(archive)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(p.read_bytes())
    runs = altered / "runs.csv"
    runs.write_text(runs.read_text().replace("FINISHED", "FINISHEd", 1))
    out = tmp_path / "out"
    assert main(["report", "--from", str(altered), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "runs.csv" in err and "sha256" in err
    assert not out.exists()
    assert main(["report", "--from", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "no such archive folder" in capsys.readouterr().err
    (altered / "manifest.json").unlink()
    assert main(["report", "--from", str(altered), "--out", str(out)]) == 2
    assert "no manifest.json" in capsys.readouterr().err
    assert not out.exists()


def test_export_of_a_missing_study_exits_2_and_creates_nothing(fake_study, tmp_path, capsys):
    out = tmp_path / "x"
    uri = fake_study.tracking_uri
    assert main(["export", "no-such-study", "--tracking-uri", uri, "--out", str(out)]) == 2
    assert "no-such-study" in capsys.readouterr().err
    assert main(["export", "s", "--root", str(tmp_path / "empty"), "--out", str(out)]) == 2
    assert not out.exists() and not (tmp_path / "empty").exists()


def test_export_again_replaces_its_files_and_keeps_the_others(fake_study, complete_study, tmp_path):
    out = tmp_path / "published"
    out.mkdir()
    (out / "README.md").write_text("how it was made\n")
    uri = fake_study.tracking_uri
    assert main(["export", fake_study.name, "--tracking-uri", uri, "--out", str(out)]) == 0
    assert main(["export", complete_study.name, "--tracking-uri", complete_study.tracking_uri,
                 "--out", str(out)]) == 0
    assert (out / "README.md").read_text() == "how it was made\n"
    manifest = json.loads((out / "manifest.json").read_text())
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert on_disk == {*manifest["files"], "manifest.json", "README.md"}  # the first study's are gone
    runs = set(load_archive(out)["run_id"])
    assert all(name.split("/")[1] in runs for name in manifest["files"] if name.startswith("artifacts/"))


def test_environment_summary_counts_distinct_values():
    envs = [{"torch": "2.13", "packages": {"numpy": "2.1"}, "cpu_count": 2},
            {"torch": "2.13", "packages": {"numpy": "2.2"}, "cpu_count": 2},
            {"torch": "2.12", "packages": {"numpy": "2.2"}}]
    table = environment_summary(envs)
    assert table.values.tolist() == [
        ["cpu_count", "2", 2],
        ["packages.numpy", "2.2", 2], ["packages.numpy", "2.1", 1],
        ["torch", "2.13", 2], ["torch", "2.12", 1],
    ]  # fmt: skip


def _other_objective_study(uri: str, name: str) -> None:
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment(name)
    parent = client.create_run(exp, tags={
        "labbench.kind": "study", "labbench.study": name, "labbench.objective": "test_bpc",
        "labbench.direction": "minimize", "labbench.baseline": '{"method": "fp"}',
        "labbench.axes": '["method"]'})  # fmt: skip
    client.set_terminated(parent.info.run_id)


def test_combined_studies_are_one_analysis_with_a_study_column(fake_study, complete_study, tmp_path, capsys):
    a = load_runs(fake_study.name, fake_study.tracking_uri)
    b = load_runs(complete_study.name, complete_study.tracking_uri)
    both = combine_studies([a, b])
    # the fake studies share cell ids and seeds: each (cell, seed) is kept once, the earliest end.
    # The complete study ran a day later, so it supplies exactly the pairs the fake one lacks.
    assert len(both) == len(set(zip(pd.concat([a, b])["cell"], pd.concat([a, b])["seed"], strict=True)))
    assert not both.duplicated(["cell", "seed"]).any()
    from_complete = both[both["study"] == complete_study.name]
    keys = zip(from_complete["method"], from_complete["hidden"].astype(int),
               from_complete["seed"].astype(int), strict=True)
    assert sorted(keys) == sorted(fake_study.missing)
    kept_fake = set(both.loc[both["study"] == fake_study.name, "run_id"])
    assert kept_fake == set(fake_study.kept.values())
    assert both.attrs["study"] == f"{fake_study.name} + {complete_study.name}"
    out = tmp_path / "both"
    code = main(["report", fake_study.name, complete_study.name, "--tracking-uri", fake_study.tracking_uri,
                 "--out", str(out), "--n-boot", str(BOOT)])
    assert code == 0, capsys.readouterr().err
    md = (out / "report.md").read_text()
    assert f"# Study report: {fake_study.name} + {complete_study.name}" in md
    assert f"study.json artifact of study {complete_study.name}" in md


def test_studies_with_different_objectives_are_refused(fake_study, tmp_path, capsys):
    other = "archive-test-other-objective"
    _other_objective_study(fake_study.tracking_uri, other)
    out = tmp_path / "both"
    uri = fake_study.tracking_uri
    code = main(["report", fake_study.name, other, "--tracking-uri", uri, "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "objective" in err and "test_bpc" in err
    assert not out.exists()
    frame = load_runs(fake_study.name, fake_study.tracking_uri)
    with pytest.raises(CombineError, match="at least two"):
        combine_studies([frame])


def _part(name: str, **fixed) -> pd.DataFrame:
    rows = [{"run_id": f"{name}-{m}-{s}", "study": name, "cell": f"{m}{fixed}", "seed": s,
             "method": m, "hidden": 64, **fixed, "end_time": s, "test_bpc": 3.0}
            for m in ("fp", "lab") for s in (0, 1)]
    frame = pd.DataFrame(rows)
    frame.attrs = {"study": name, "objective": "test_bpc", "direction": "minimize",
                   "baseline": {"method": "fp"}, "axes": ["method"], "seeds": [0, 1],
                   "param_columns": ["method", "hidden", *fixed], "tracking_uri": "x"}
    return frame


def test_combined_studies_that_differ_in_one_setting_get_it_as_an_axis():
    both = combine_studies([_part("t50", seq_len=50), _part("t10", seq_len=10)])
    assert both.attrs["axes"] == ["method", "seq_len"]
    assert both.attrs["levels"] == {"seq_len": [50, 10]}  # the order the studies were given
    assert both.attrs["study_differs"] == ["seq_len"]


def test_combined_studies_that_differ_in_tied_settings_get_study_as_the_axis():
    both = combine_studies([_part("t10", seq_len=10, batch_size=320),
                            _part("t50", seq_len=50, batch_size=64)])
    assert both.attrs["axes"] == ["method", "study"]
    assert both.attrs["levels"] == {"study": ["t10", "t50"]}
    assert both.attrs["study_differs"] == ["seq_len", "batch_size"]
    same = combine_studies([_part("a", seq_len=10), _part("b", seq_len=10)])
    assert same.attrs["axes"] == ["method"] and same.attrs["study_differs"] == []



@pytest.mark.parametrize("study", ["quantizers-mlp", "lstm-clipping"])
def test_published_runs_group_by_their_settings_as_pandas_reads_them(study):
    """An unset setting (laq's bits for other methods) is written UNSET, not empty: read with
    pandas' defaults and grouped by every RunConfig field but the seed, each cell holds all of
    its seeds (an empty cell reads as NaN, and NaN keys made every run a cell of its own)."""
    import dataclasses

    from analysis.archive import UNSET
    from bench.config import RunConfig

    folder = Path(__file__).parents[2] / "docs" / "reports" / study / "archive"
    runs = pd.read_csv(folder / "runs.csv")
    settings = [f.name for f in dataclasses.fields(RunConfig) if f.name in runs and f.name != "seed"]
    assert not runs[settings].isna().any().any() and (runs[settings] == UNSET).any().any()
    by_tuple: dict[tuple, set] = {}
    for key, seed in zip(runs[settings].itertuples(index=False, name=None), runs["seed"], strict=True):
        by_tuple.setdefault(key, set()).add(seed)
    per_cell = runs.groupby(settings)["seed"].nunique()
    n_cells = runs["cell"].nunique()
    assert len(by_tuple) == len(per_cell) == n_cells and per_cell.min() == 5
    assert all(len(seeds) == 5 for seeds in by_tuple.values())
    # load_archive reads UNSET back as missing: the frame the study's report was made from
    frame = load_archive(folder)
    assert frame["bits"].isna().sum() == (runs["bits"] == UNSET).sum() > 0


PUBLISHED = sorted((Path(__file__).parents[2] / "docs" / "reports").glob("*/archive*"))


@pytest.mark.parametrize("folder", PUBLISHED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_published_cell_has_at_least_five_seeds(folder):
    """What the repo publishes has at least 5 seeds per cell, however the cells are formed: by
    the archive's cell key, or by every RunConfig field but the seed as pandas reads runs.csv."""
    import dataclasses

    from bench.config import RunConfig

    runs = pd.read_csv(folder / "runs.csv")
    settings = [f.name for f in dataclasses.fields(RunConfig) if f.name in runs and f.name != "seed"]
    assert (runs["status"] == "FINISHED").all()
    assert runs.groupby("cell")["seed"].nunique().min() >= 5
    by_settings = runs.groupby(settings, dropna=False)["seed"].agg(["nunique", "size"])
    assert len(by_settings) == runs["cell"].nunique()
    assert by_settings["nunique"].min() >= 5 and (by_settings["nunique"] == by_settings["size"]).all()
    assert len(json.loads((folder / "spec.json").read_text())["study"]["seeds"]) >= 5
