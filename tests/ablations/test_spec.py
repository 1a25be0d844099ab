"""Study files: good ones parse to the right spec; bad ones fail naming file and key, exit 2 and
create nothing (issue test 5)."""

from __future__ import annotations

import copy
import string
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ablations.spec import StudyError, parse_study, spec_from_dict
from bench.config import RunConfig
from labbench.cli import main
from tests.ablations.helpers import TINY, study_doc, to_toml, write_study

STUDIES = sorted((Path(__file__).resolve().parents[2] / "ablations" / "studies").glob("*.toml"))


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_shipped_studies_are_valid(path):
    spec = parse_study(path)
    assert spec.name == path.stem
    assert spec.n_runs >= 2 and len(spec.seeds) >= 2
    assert spec_from_dict(spec.to_dict(), where="stored") == spec


def test_spec_resolves_cells_defaults_and_round_trips(tmp_path):
    doc = study_doc("ok", grid={"method": ["fp", "bc", "lab"], "lr": [0.01, 0.001]}, seeds=[3, 1])
    spec = parse_study(write_study(tmp_path, doc))
    assert (spec.name, spec.objective, spec.direction, spec.mode) == ("ok", "test_acc", "maximize",
                                                                       "grid")
    assert spec.seeds == (3, 1) and spec.axes == ("method", "lr") and spec.n_runs == 12
    assert spec.cells()[:2] == [{"method": "fp", "lr": 0.01}, {"method": "fp", "lr": 0.001}]
    assert spec.search_space() == {"method": ["fp", "bc", "lab"], "lr": [0.01, 0.001],
                                   "seed": [3, 1]}
    config = spec.config({"method": "bc", "lr": 0.01}, 3)
    assert config == RunConfig.from_dict({**TINY, "method": "bc", "lr": 0.01, "seed": 3})
    assert spec_from_dict(spec.to_dict(), where="stored") == spec
    lm = study_doc("lm", base={"model": "lstm", "dataset": "pysrc"}, objective="test_bpc")
    assert parse_study(write_study(tmp_path, lm)).direction == "minimize"


def test_search_spec(tmp_path):
    doc = {"study": {"name": "s", "objective": "test_acc", "seeds": [0], "mode": "search",
                     "trials": 12},
           "base": TINY,
           "search": {"lr": {"type": "log", "low": 1e-4, "high": 0.1},
                      "method": ["bwn", "lab"],
                      "batch_size": {"type": "int", "low": 16, "high": 64, "step": 16}}}
    spec = parse_study(write_study(tmp_path, doc))
    assert spec.mode == "search" and spec.trials == 12 and spec.axes == ("lr", "method", "batch_size")
    assert spec.search["lr"].kind == "log" and spec.search["method"].choices == ("bwn", "lab")
    assert spec_from_dict(spec.to_dict(), where="stored") == spec


def _set(path: str, value):
    def change(doc):
        *tables, key = path.split(".")
        node = doc
        for t in tables:
            node = node.setdefault(t, {})
        node[key] = value
    return change


def _drop(path: str):
    def change(doc):
        *tables, key = path.split(".")
        node = doc
        for t in tables:
            node = node[t]
        del node[key]
    return change


# (id, change to a valid document, dotted key the error must name, words the message must hold)
BAD = [
    ("wrong type base", _set("base.hidden", "big"), "base.hidden", "expected int"),
    ("wrong type seeds", _set("study.seeds", "0,1"), "study.seeds", "list"),
    ("float seed", _set("study.seeds", [0, 1.5]), "study.seeds", "integers"),
    ("bool seed", _set("study.seeds", [True]), "study.seeds", "boolean"),
    ("negative seed", _set("study.seeds", [0, -1]), "study.seeds", ">= 0"),
    ("duplicate seed", _set("study.seeds", [2, 2]), "study.seeds", "duplicate"),
    ("empty seeds", _set("study.seeds", []), "study.seeds", "non-empty"),
    ("missing seeds", _drop("study.seeds"), "study.seeds", "required"),
    ("missing name", _drop("study.name"), "study.name", "required"),
    ("bad name", _set("study.name", "my study"), "study.name", "characters"),
    ("unknown study key", _set("study.nmae", "x"), "study.nmae", "did you mean 'name'"),
    ("unknown base key", _set("base.hiden", 3), "base.hiden", "did you mean 'hidden'"),
    ("unknown grid key", _set("grid.methd", ["fp"]), "grid.methd", "did you mean 'method'"),
    ("unknown table", _set("gird", {"method": ["fp"]}), "gird", "did you mean 'grid'"),
    ("empty grid", _set("grid", {}), "grid", "at least one axis"),
    ("empty axis", _set("grid.method", []), "grid.method", "at least one value"),
    ("scalar axis", _set("grid.method", "fp"), "grid.method", "list"),
    ("nested axis", _set("grid.method", [["fp"]]), "grid.method", "array"),
    ("unknown method", _set("grid.method", ["fp", "labb"]), "grid.method", "did you mean 'lab'"),
    ("duplicate axis value", _set("grid.method", ["fp", "bc", "fp"]), "grid.method", "duplicate"),
    ("duplicate number", _set("grid.lr", [0.01, 0.010]), "grid.lr", "duplicate"),
    ("seed axis", _set("grid.seed", [0, 1]), "grid.seed", "[study].seeds"),
    ("seed in base", _set("base.seed", 0), "base.seed", "[study].seeds"),
    ("axis also in base", _set("grid.hidden", [16, 32]), "grid.hidden", "also set in [base]"),
    ("negative lr", _set("grid.lr", [0.01, -0.1]), "grid.lr", "> 0"),
    ("float for int", _set("base.layers", 1.5), "base.layers", "expected int"),
    ("bits with lab", _set("base.bits", 3), "base.bits", "only applies to method"),
    ("gate clip on mlp", _set("grid.clip", ["none", "gate:5"]), "grid.clip", "LSTM"),
    ("granularity without scale", _set("grid.granularity", ["tensor", "channel"]),
     "grid.granularity", "method 'fp' has no scale"),
    ("unknown objective", _set("study.objective", "test_accuracy"), "study.objective",
     "did you mean 'test_acc'"),
    ("objective of another task", _set("study.objective", "test_bpc"), "study.objective",
     "classification"),
    ("bad direction", _set("study.direction", "up"), "study.direction", "minimize, maximize"),
    ("bad mode", _set("study.mode", "grids"), "study.mode", "grid, search"),
    ("trials in a grid", _set("study.trials", 5), "study.trials", "search"),
    ("baseline off the axis", _set("study.baseline", {"method": "bwn"}), "study.baseline.method",
     "not on the axis"),
    ("baseline not an axis", _set("study.baseline", {"hidden": 16}), "study.baseline.hidden",
     "not an axis"),
    ("baseline not a table", _set("study.baseline", "fp"), "study.baseline", "table"),
    ("search without trials", lambda d: (d["study"].update(mode="search"), d.pop("grid"),
                                          d.update(search={"lr": [0.1, 0.01]})),
     "study.trials", "integer >= 1"),
    ("grid table in a search", lambda d: d["study"].update(mode="search", trials=3), "grid",
     "does not apply"),
    ("log range from zero", lambda d: (d["study"].update(mode="search", trials=3), d.pop("grid"),
                                       d.update(search={"lr": {"type": "log", "low": 0, "high": 1}})),
     "search.lr.low", "low > 0"),
    ("infinite lr", _set("grid.lr", [float("inf")]), "grid.lr", "finite"),
]


@pytest.mark.parametrize(("change", "key", "words"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_study_names_file_and_key(tmp_path, change, key, words):
    doc = study_doc("bad")
    change(doc)
    path = write_study(tmp_path, doc, "bad.toml")
    with pytest.raises(StudyError) as info:
        parse_study(path)
    assert info.value.key == key
    message = str(info.value)
    assert message.startswith(f"{path}: {key}: ")
    assert words in message


def test_same_configuration_twice_is_an_error(tmp_path):
    doc = study_doc("dup", grid={"method": ["fp"], "schedule": ["paper", "step:15,25:0.1"]})
    with pytest.raises(StudyError, match="resolve to the same run configuration") as info:
        parse_study(write_study(tmp_path, doc))
    assert info.value.key == "grid"


def test_not_toml_and_missing_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[study\nname = 'x'\n")
    with pytest.raises(StudyError, match="not a valid TOML file"):
        parse_study(path)
    with pytest.raises(StudyError, match="no such study file"):
        parse_study(tmp_path / "absent.toml")


@pytest.mark.parametrize(("change", "key", "words"), [b[1:] for b in BAD[::4]],
                         ids=[b[0] for b in BAD[::4]])
def test_cli_exits_2_and_creates_nothing(tmp_path, capsys, change, key, words):
    doc = study_doc("bad")
    change(doc)
    path = write_study(tmp_path, doc, "bad.toml")
    root = tmp_path / "runs"
    assert main(["grid", str(path), "--root", str(root), "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: {key}: ") and words in err
    assert not root.exists()


def test_cli_bad_options_exit_2(tmp_path, capsys):
    path = write_study(tmp_path, study_doc("good"))
    root = tmp_path / "runs"
    assert main(["grid", str(path), "--root", str(root), "--workers", "-1"]) == 2
    assert main(["grid", str(path), "--root", str(root), "--storage", "redis://x"]) == 2
    assert main(["grid", str(path), "--root", str(root), "--workers", "2",
                      "--storage", f"sqlite:///{tmp_path}/o.db"]) == 2
    err = capsys.readouterr().err
    assert "--workers" in err and "redis" in err and "SQLite cannot serve several" in err
    assert not root.exists() and not (tmp_path / "o.db").exists()


# --- generated malformed files ----------------------------------------------------------------
_names = st.text(string.ascii_lowercase + "_", min_size=1, max_size=12)
_junk = st.one_of(st.integers(-5, 5), st.floats(allow_nan=False), st.booleans(),
                  st.text(string.printable, max_size=8), st.lists(st.integers(-3, 3), max_size=3),
                  st.dictionaries(_names, st.integers(), max_size=2))
_STUDY_KEYS = ("name", "description", "objective", "direction", "seeds", "baseline", "mode", "trials")


@st.composite
def malformed(draw):
    """A valid document with one change that must be rejected, and the key it must name."""
    doc = study_doc("gen")
    kind = draw(st.sampled_from(["unknown", "type", "seeds", "axis", "method", "baseline"]))
    table = draw(st.sampled_from(["study", "base", "grid"]))
    if kind == "unknown":
        name = draw(_names.filter(lambda n: n not in _STUDY_KEYS + tuple(RunConfig.field_names())))
        doc[table][name] = draw(_junk)
        return doc, f"{table}.{name}"
    if kind == "type":  # a field of RunConfig with a value of the wrong kind
        field = draw(st.sampled_from(["hidden", "layers", "epochs", "steps", "train_limit"]))
        value = draw(st.one_of(st.text(string.ascii_letters, min_size=1, max_size=5),
                               st.floats(0.1, 9.9).filter(lambda x: x != int(x)), st.booleans()))
        doc["base"][field] = value
        return doc, f"base.{field}"
    if kind == "seeds":
        bad = draw(st.one_of(st.just([]), st.lists(st.integers(max_value=-1), min_size=1, max_size=3),
                             st.integers(0, 5).map(lambda s: [s, s]),
                             st.text(max_size=4), st.floats(0, 3)))
        doc["study"]["seeds"] = bad
        return doc, "study.seeds"
    if kind == "axis":
        values = draw(st.lists(st.sampled_from([16, 32, 64]), min_size=1, max_size=3))
        doc["grid"]["hidden"] = [*values, values[0]] if draw(st.booleans()) else []
        doc["base"].pop("hidden")
        return doc, "grid.hidden"
    if kind == "method":
        method = draw(st.text(string.ascii_lowercase + "-", min_size=1, max_size=8)
                      .filter(lambda m: m not in ("fp", "amp", "bc", "bc-scaled", "bwn", "lab",
                                                  "bnn", "xnor", "lab2", "twn", "ttq", "lat",
                                                  "lat-approx", "laq", "mixed")))
        doc["grid"]["method"] = ["fp", method]
        return doc, "grid.method"
    axis = draw(st.sampled_from(["method", "lr"]))
    doc["study"]["baseline"] = {axis: draw(st.sampled_from(["bwn", 0.5]))}
    return doc, f"study.baseline.{axis}"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=malformed())
def test_generated_malformed_studies_name_their_key(tmp_path, case):
    doc, key = case
    path = tmp_path / "gen.toml"
    path.write_text(to_toml(doc))
    with pytest.raises(StudyError) as info:
        parse_study(path)
    assert info.value.key == key, str(info.value)
    assert str(info.value).startswith(f"{path}: {key}: ")


_values = st.recursive(st.one_of(st.integers(-3, 70), st.floats(allow_nan=False), st.booleans(),
                                 st.sampled_from(["fp", "bc", "lab", "mlp", "lstm", "test_acc",
                                                  "minimize", "grid", "search", "none"])),
                       lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.sampled_from(["type", "low", "high", "method"]), inner,
                                         max_size=2), max_leaves=6)
_keys = st.sampled_from([*_STUDY_KEYS, "method", "hidden", "lr", "seed", "model", "epochs", "zzz"])


@settings(max_examples=80, deadline=None)
@given(doc=st.dictionaries(st.sampled_from(["study", "base", "grid", "search", "extra"]),
                           st.dictionaries(_keys, _values, max_size=5), max_size=4))
def test_random_documents_parse_or_raise_study_error(doc):
    text = to_toml(copy.deepcopy(doc))
    data = tomllib.loads(text)
    try:
        spec = spec_from_dict(data, where="random.toml")
    except StudyError as err:
        assert str(err).startswith("random.toml: ")
    else:  # whatever passes is a complete, runnable study
        assert spec.n_runs >= 1
        if spec.mode == "grid":
            for cell in spec.cells():
                spec.config(cell, spec.seeds[0])
