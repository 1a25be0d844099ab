"""Every bad input exits 2 with a message naming the field or key, and creates nothing.

Each case is run through the real command line (`labbench.cli.main`, in this process) in an empty
folder; the check is the exit status, the field the message names, and that the folder holds
nothing but the inputs afterwards: no run root, no ``mlflow.db``, no journal, no FAILED run.
A study file with several independent mistakes reports each of them (hypothesis draws them).
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ablations.preflight import StudyErrors
from ablations.spec import StudyError, parse_study
from ablations.storage import resolve_location, where_flags
from bench.config import MAX_SEED
from labbench.cli import build_parser
from tests.ablations.helpers import TINY, cli, study_doc, to_toml, write_study

TINY_FLAGS = ["--model", "mlp", "--hidden", "16", "--layers", "1", "--epochs", "1", "--steps",
              "2", "--train-limit", "600", "--eval-limit", "200", "--quiet"]
LSTM_FLAGS = ["--model", "lstm", "--hidden", "8", "--epochs", "1", "--steps", "2", "--quiet"]
LSTM_BASE = {"model": "lstm", "hidden": 8, "epochs": 1, "steps": 2}


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    """An empty working folder with a small text, an empty file, a binary file and a plain
    file; no CUDA and no Triton, as on the CI machine (so the cases mean the same on a GPU)."""
    import kernels._backend

    (tmp_path / "small.txt").write_text("hello world, a small text corpus for probes. " * 40)
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "bin.dat").write_bytes(bytes(range(256)) * 50)
    (tmp_path / "afile").write_text("x")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(kernels._backend, "triton_available", lambda: False)
    return tmp_path


def _created(folder: Path, before: set[str]) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if str(p.relative_to(folder)) not in before)


RUN_CASES = [
    # (label, extra flags, field the message names)
    ("hidden 1e9 does not fit in memory", [*TINY_FLAGS, "--hidden", "1000000000"], "hidden"),
    ("seed beyond numpy's range", [*TINY_FLAGS, "--seed", "99999999999999"], "seed"),
    ("batch larger than the data", [*TINY_FLAGS, "--batch-size", "5000"], "batch_size"),
    ("sequence longer than the text", [*LSTM_FLAGS, "--dataset", "text:small.txt", "--seq-len",
                                       "100000"], "seq_len"),
    ("text file missing", [*LSTM_FLAGS, "--dataset", "text:missing.txt"], "dataset"),
    ("text file empty", [*LSTM_FLAGS, "--dataset", "text:empty.txt"], "dataset"),
    ("text /dev/null", [*LSTM_FLAGS, "--dataset", "text:/dev/null"], "dataset"),
    ("text file binary", [*LSTM_FLAGS, "--dataset", "text:bin.dat"], "dataset"),
    ("schedule every 0 epochs", [*TINY_FLAGS, "--schedule", "every:0:0.5"], "schedule"),
    ("schedule exp:e", [*TINY_FLAGS, "--schedule", "exp:e"], "schedule"),
    ("cuda without CUDA", [*TINY_FLAGS, "--device", "cuda"], "device"),
    ("triton without Triton", [*TINY_FLAGS, "--backend", "triton"], "backend"),
    ("lr 1e300", [*TINY_FLAGS, "--lr", "1e300"], "lr"),
    ("lr inf", [*TINY_FLAGS, "--lr", "inf"], "lr"),
    ("clip norm:inf", [*TINY_FLAGS, "--clip", "norm:inf"], "clip"),
    ("clip gate:inf", [*LSTM_FLAGS, "--dataset", "text:small.txt", "--seq-len", "10",
                       "--batch-size", "4", "--clip", "gate:inf"], "clip"),
    ("epochs 1e15", [*TINY_FLAGS, "--epochs", str(10**15)], "epochs"),
    ("config file binary", ["--config", "bin.dat"], "bin.dat"),
    ("root is a file", [*TINY_FLAGS, "--root", "afile"], "--root"),
    ("root under a file", [*TINY_FLAGS, "--root", "afile/runs"], "--root"),
    ("root read-only", [*TINY_FLAGS, "--root", "/proc/labbench-runs"], "--root"),
    ("experiment ../../x", [*TINY_FLAGS, "--experiment", "../../x"], "--experiment"),
    ("experiment absolute", [*TINY_FLAGS, "--experiment", "/tmp/labbench-escape"], "--experiment"),
]


@pytest.mark.parametrize(("flags", "field"), [c[1:] for c in RUN_CASES], ids=[c[0] for c in RUN_CASES])
def test_run_refuses_bad_input_and_creates_nothing(inputs, capsys, flags, field):
    before = {str(p.relative_to(inputs)) for p in inputs.rglob("*")}
    code, out, err = cli(capsys, "run", *flags)
    assert code == 2, out + err
    assert err.startswith(f"error: {field}"), err
    assert "Traceback" not in err
    assert _created(inputs, before) == []
    assert not Path("/tmp/labbench-escape").exists()


def test_run_reports_every_bad_flag_at_once(inputs, capsys):
    code, _, err = cli(capsys, "run", *TINY_FLAGS, "--lr", "-1", "--epochs", "0",
                       "--schedule", "every:0:0.5", "--seed", str(MAX_SEED + 1))
    assert code == 2
    fields = [line.split(":")[1].strip() for line in err.splitlines() if line.startswith("error:")]
    assert fields == ["schedule", "lr", "epochs", "seed"], err


def _grid_file(folder: Path, name: str, base: dict, **study) -> Path:
    doc = study_doc(name, base=base, grid={"method": ["fp", "lab"]}, **{"seeds": [0], **study})
    if base.get("model") == "lstm":
        doc["study"]["objective"] = "test_bpc"
        doc["study"].pop("baseline")
    return write_study(folder, doc)


GRID_CASES = [
    ("hidden 1e9", {**TINY, "hidden": 1_000_000_000}, {}, "base.hidden"),
    ("seeds beyond numpy's range", TINY, {"seeds": [0, 99999999999999999]}, "study.seeds"),
    ("batch larger than the data", {**TINY, "batch_size": 5000}, {}, "base.batch_size"),
    ("sequence longer than the text", {**LSTM_BASE, "dataset": "text:small.txt",
                                       "seq_len": 100000}, {}, "base.seq_len"),
    ("text file missing", {**LSTM_BASE, "dataset": "text:missing.txt"}, {}, "base.dataset"),
    ("text file empty", {**LSTM_BASE, "dataset": "text:empty.txt"}, {}, "base.dataset"),
    ("text /dev/null", {**LSTM_BASE, "dataset": "text:/dev/null"}, {}, "base.dataset"),
    ("text file binary", {**LSTM_BASE, "dataset": "text:bin.dat"}, {}, "base.dataset"),
    ("schedule every 0 epochs", {**TINY, "schedule": "every:0:0.5"}, {}, "base.schedule"),
    ("schedule exp:e", {**TINY, "schedule": "exp:e"}, {}, "base.schedule"),
    ("cuda without CUDA", {**TINY, "device": "cuda"}, {}, "base.device"),
    ("triton without Triton", {**TINY, "backend": "triton"}, {}, "base.backend"),
    ("lr 1e300", {**TINY, "lr": 1e300}, {}, "base.lr"),
    ("lr inf", {**TINY, "lr": float("inf")}, {}, "base.lr"),
    ("clip norm:inf", {**TINY, "clip": "norm:inf"}, {}, "base.clip"),
    ("clip gate:inf", {**LSTM_BASE, "dataset": "text:small.txt", "clip": "gate:inf"}, {},
     "base.clip"),
    ("epochs 1e15 (float)", {**TINY, "epochs": 1e15}, {}, "base.epochs"),
    ("epochs 10**15", {**TINY, "epochs": 10**15}, {}, "base.epochs"),
]


@pytest.mark.parametrize(("base", "study", "key"), [c[1:] for c in GRID_CASES],
                         ids=[c[0] for c in GRID_CASES])
def test_grid_refuses_bad_study_and_creates_nothing(inputs, capsys, base, study, key):
    path = _grid_file(inputs, "bad", base, **study)
    before = {str(p.relative_to(inputs)) for p in inputs.rglob("*")}
    code, out, err = cli(capsys, "grid", str(path), "--root", "runs", "--workers", "1")
    assert code == 2, out + err
    assert f"{path}: {key}:" in err, err
    assert "Traceback" not in err
    assert _created(inputs, before) == []


@pytest.mark.parametrize(("root", "what"), [("afile", "is a file"), ("afile/runs", "which is a file"),
                                            ("/proc/labbench-runs", "cannot write")])
def test_grid_refuses_a_root_that_cannot_be_a_folder(inputs, capsys, root, what):
    path = _grid_file(inputs, "ok", TINY)
    before = {str(p.relative_to(inputs)) for p in inputs.rglob("*")}
    code, out, err = cli(capsys, "grid", str(path), "--root", root, "--workers", "1")
    assert code == 2, out + err
    assert err.startswith("error: --root:") and what in err, err
    assert _created(inputs, before) == []


def test_report_of_a_missing_study_or_root_creates_nothing(inputs, capsys):
    before = {str(p.relative_to(inputs)) for p in inputs.rglob("*")}
    for args in (["nosuch", "--root", "runs"], ["../../x"], ["../../x", "--root", "runs"]):
        code, out, err = cli(capsys, "report", *args)
        assert code == 2, out + err
        assert "Traceback" not in err
    assert _created(inputs, before) == []
    assert not (inputs.parent.parent / "x").exists()


def test_run_accepts_options_after_the_subcommand(inputs, capsys):
    code, out, err = cli(capsys, "run", "-v", *TINY_FLAGS, "--no-record")
    assert code == 0, err
    assert "test_acc" in out


def test_printed_hints_name_the_same_location(tmp_path):
    """The flags a hint prints, parsed by the CLI as a shell would split them, give back the
    same storage, tracking URI and root (a root with a space, a journal elsewhere)."""
    root = tmp_path / "my runs"
    for storage, uri in ((None, None), (str(tmp_path / "other.journal"), "sqlite:////x/m.db")):
        loc = resolve_location(root=root, storage=storage, tracking_uri=uri)
        argv = shlex.split(f"labbench status s{where_flags(loc)}")[2:]
        args = build_parser().parse_args(["status", *argv])
        again = resolve_location(root=args.root, storage=args.storage,
                                 tracking_uri=args.tracking_uri)
        assert again == loc


# --- several errors in one study file ---------------------------------------------------------
# Each mutation breaks one key in a way that does not depend on any other key.
MUTATIONS = {
    "study.colour": lambda d: d["study"].__setitem__("colour", "red"),
    "study.name": lambda d: d["study"].__setitem__("name", "bad name!"),
    "study.direction": lambda d: d["study"].__setitem__("direction", "sideways"),
    "study.seeds": lambda d: d["study"].__setitem__("seeds", [0, MAX_SEED + 1]),
    "study.mode": lambda d: d["study"].__setitem__("mode", "random"),
    "base.lrr": lambda d: d["base"].__setitem__("lrr", 0.1),
    "base.epochs": lambda d: d["base"].__setitem__("epochs", 0),
    "base.lr": lambda d: d["base"].__setitem__("lr", 1e300),
    "base.schedule": lambda d: d["base"].__setitem__("schedule", "every:0:0.5"),
    "base.optimizer": lambda d: d["base"].__setitem__("optimizer", "adamm"),
    "grid.method": lambda d: d["grid"].__setitem__("method", ["fp", "nope"]),
    "grid.hidden": lambda d: d["grid"].__setitem__("hidden", []),
    "grid.clip": lambda d: d["grid"].__setitem__("clip", ["norm:1", "norm:inf"]),
    "grid.widht": lambda d: d["grid"].__setitem__("widht", [1, 2]),
    "searchh": lambda d: d.__setitem__("searchh", {"lr": 1}),
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keys=st.lists(st.sampled_from(sorted(MUTATIONS)), min_size=1, max_size=6, unique=True))
def test_a_file_with_k_independent_errors_reports_k(tmp_path, keys):
    doc = study_doc("many")
    for key in keys:
        MUTATIONS[key](doc)
    path = tmp_path / "many.toml"
    path.write_text(to_toml(doc))
    with pytest.raises(StudyError) as info:
        parse_study(path)
    errors = info.value.errors if isinstance(info.value, StudyErrors) else [info.value]
    assert sorted(e.key for e in errors) == sorted(keys), str(info.value)
    assert str(info.value).count("\n") == (len(keys) if len(keys) > 1 else 0)


def test_the_shipped_studies_still_parse():
    studies = sorted((Path(__file__).resolve().parents[2] / "ablations" / "studies").glob("*.toml"))
    assert studies
    for path in studies:
        assert parse_study(path).n_runs > 0
