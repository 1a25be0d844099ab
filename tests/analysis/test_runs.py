"""analysis.runs against a fake study whose every run is known (conftest.write_fake_study)."""

from __future__ import annotations

import logging

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from analysis import load_curves, load_runs, metric_names, missing_cells
from analysis._values import cast_strings
from analysis.runs import ID_COLUMNS
from tests.analysis.fakestudy import EPOCHS, LAYERS, cell_id


@pytest.fixture(scope="module")
def frame(fake_study):
    return load_runs(fake_study.name, fake_study.tracking_uri)


def _key(row) -> tuple:
    return (row["method"], row["hidden"], row["seed"])


def test_one_row_per_cell_and_seed_with_the_kept_run(frame, fake_study):
    assert list(frame.columns[: len(ID_COLUMNS)]) == list(ID_COLUMNS)
    assert not frame.duplicated(["cell", "seed"]).any()
    got = {_key(row): row["run_id"] for _, row in frame.iterrows()}
    assert got == fake_study.kept
    for _, row in frame.iterrows():
        assert row["cell"] == cell_id(row["method"], row["hidden"])
        assert row["test_xent"] == fake_study.objective[_key(row)]
    assert set(frame["status"]) == {"FINISHED"}
    assert set(frame["study"]) == {fake_study.name}


def test_duplicates_dropped_deterministically(frame, fake_study):
    # (bc, 16, 0): the run written first ended later and is dropped (earliest end kept);
    # (fp, 32, 1): both ended at once, the larger run id is dropped
    assert frame.attrs["duplicates_dropped"] == 2
    assert set(frame.attrs["dropped_run_ids"]) == fake_study.dropped_run_ids
    again = load_runs(fake_study.name, fake_study.tracking_uri)
    pd.testing.assert_frame_equal(frame, again)


def test_column_types(frame):
    dtypes = frame.dtypes.astype(str).to_dict()
    assert dtypes["seed"] == "int64" and dtypes["trial"] == "int64"
    assert dtypes["hidden"] == "int64" and dtypes["epochs"] == "int64"
    assert dtypes["lr"] == "float64"
    assert dtypes["weight_decay"] == "float64"  # "0" and "0.0001": the column is float
    assert dtypes["bits"] == "Int64"  # "None" for fp: nullable int
    assert frame.loc[frame.method == "fp", "bits"].isna().all()
    assert dtypes["deterministic"] == "bool"
    for col in ("method", "model", "clip", "cell", "run_id"):
        assert pd.api.types.is_string_dtype(frame[col]), col
    assert frame["steps"].isna().all()  # "None" everywhere
    assert str(frame["end_time"].dt.tz) == "UTC"
    for name in ("test_xent", "step_ms", "bits_per_weight", f"grad_norm/{LAYERS[0]}"):
        assert dtypes[name] == "float64", name
    # the per-epoch metric lr collides with the param lr: the metric is renamed
    assert frame.attrs["metric_columns"]["lr"] == "metrics.lr"
    assert frame.attrs["metric_columns"]["test_xent"] == "test_xent"
    assert "seed" not in frame.attrs["param_columns"]


def test_study_metadata_in_attrs(frame, fake_study):
    attrs = frame.attrs
    assert attrs["objective"] == "test_xent" and attrs["direction"] == "minimize"
    assert attrs["baseline"] == {"method": "fp"}
    assert attrs["axes"] == ["method", "hidden"]
    assert attrs["parent_run_id"] == fake_study.parent_run_id
    assert attrs["seeds"] == list(fake_study.seeds) and attrs["seeds_source"] == "study.json"
    assert attrs["tracking_uri"] == fake_study.tracking_uri


def test_failed_and_running_runs_are_excluded_and_reported(frame, fake_study, caplog):
    excluded = {r["run_id"]: r["status"] for r in frame.attrs["excluded_runs"]}
    assert excluded == {
        **dict.fromkeys(fake_study.failed_run_ids, "FAILED"),
        **dict.fromkeys(fake_study.running_run_ids, "RUNNING"),
    }
    assert frame.attrs["n_failed"] == 1
    with caplog.at_level(logging.WARNING, logger="analysis.runs"):
        load_runs(fake_study.name, fake_study.tracking_uri)
    assert "not FINISHED were left out" in caplog.text


def test_missing_cells_are_reported_with_reasons(frame, fake_study):
    missing = missing_cells(frame)
    got = {(r.method, r.hidden, r.seed): r.reason for r in missing.itertuples()}
    assert got == fake_study.missing
    assert set(missing["cell"]) == {cell_id("bc", 32), cell_id("lab", 32)}
    assert missing["hidden"].dtype == frame["hidden"].dtype


def test_missing_cells_of_a_complete_study_is_empty(complete_study):
    full = load_runs(complete_study.name, complete_study.tracking_uri)
    assert len(full) == 3 * 2 * 6
    assert missing_cells(full).empty
    assert full.attrs["duplicates_dropped"] == 0 and full.attrs["n_failed"] == 0


def test_load_curves_from_a_frame(frame):
    curves = load_curves(frame, ["val_xent", "grad_norm/"])
    assert list(curves.columns[:4]) == ["run_id", "metric", "step", "value"]
    assert {"cell", "seed", "method", "hidden"} <= set(curves.columns)
    names = {"val_xent", *(f"grad_norm/{layer}" for layer in LAYERS)}
    assert set(curves["metric"]) == names
    assert len(curves) == len(frame) * len(names) * EPOCHS
    assert sorted(curves["step"].unique()) == list(range(1, EPOCHS + 1))
    # the history's last value is the latest value that search_runs put in the frame
    last = curves[(curves.metric == "val_xent") & (curves.step == EPOCHS)].set_index("run_id")
    assert last["value"].to_dict() == frame.set_index("run_id")["val_xent"].to_dict()


def test_load_curves_prefix_only_where_present(frame):
    curves = load_curves(frame, "alpha/")
    assert set(curves["method"]) == {"bc", "lab"}  # fp logs no alpha
    assert metric_names(frame, "spectral_bound/") == [f"spectral_bound/lstm.0.w_hh.{g}" for g in "fgio"]


def test_load_curves_from_run_ids(frame, fake_study):
    ids = list(frame.run_id[:2])
    curves = load_curves(ids, "val_loss", fake_study.tracking_uri)
    assert list(curves.columns) == ["run_id", "metric", "step", "value"]
    assert len(curves) == 2 * EPOCHS


def test_load_curves_names_what_is_missing(frame):
    with pytest.raises(LookupError, match="metric 'val_nope' is in none of these runs"):
        load_curves(frame, ["val_nope"])
    with pytest.raises(LookupError, match="no metric starting with 'nope/'"):
        load_curves(frame, "nope/")
    with pytest.raises(ValueError, match="no tracking_uri"):
        load_curves(["abc"], "val_loss")


def test_unknown_study_names_study_and_uri(fake_study):
    with pytest.raises(LookupError, match=r"study 'no-such-study': no MLflow experiment .*\.db"):
        load_runs("no-such-study", fake_study.tracking_uri)


def test_missing_database_is_not_created(tmp_path):
    uri = f"sqlite:///{tmp_path / 'typo' / 'mlflow.db'}"
    with pytest.raises(LookupError, match="no MLflow database at"):
        load_runs("any", uri)
    assert not (tmp_path / "typo").exists()


def test_experiment_without_parent_run(fake_study):
    client = MlflowClient(tracking_uri=fake_study.tracking_uri)
    client.create_experiment("orphans", artifact_location=(fake_study.root / "orphans").as_uri())
    with pytest.raises(LookupError, match=r"study 'orphans' at tracking URI .*: no parent run"):
        load_runs("orphans", fake_study.tracking_uri)


@pytest.mark.parametrize(
    ("values", "dtype", "expected"),
    [
        (["1", "-2"], "int64", [1, -2]),
        (["1", "None"], "Int64", [1, pd.NA]),
        (["1", "2.5"], "float64", [1.0, 2.5]),
        (["1e-3", "None", "3"], "float64", [0.001, float("nan"), 3.0]),
        (["True", "False"], "bool", [True, False]),
        (["True", None], "boolean", [True, pd.NA]),
        (["1", "True"], "str", ["1", "True"]),
        (["gate:5", "none"], "str", ["gate:5", "none"]),
    ],
)
def test_cast_strings(values, dtype, expected):
    got = cast_strings(values)
    assert str(got.dtype) == dtype
    pd.testing.assert_series_equal(got, pd.Series(expected, dtype=dtype), check_names=False)
