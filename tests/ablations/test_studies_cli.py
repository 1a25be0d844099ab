"""`labbench studies` and `labbench grid NAME`: the shipped study files by name, sized and costed."""

from __future__ import annotations

import json
import math
import tomllib

import pytest

from ablations.catalog import SHIPPED, find_study_file
from ablations.spec import StudyError
from tests.ablations.helpers import cli


def _expected_size(doc: dict) -> tuple[int, int]:
    """(cells or trials, seeds) counted straight from a study file's tables."""
    study = doc["study"]
    if study.get("mode") == "search":
        return study["trials"], len(study["seeds"])
    grid = doc["grid"]
    axes = {k: v for k, v in grid.items() if k != "when"}
    when = grid.get("when", {})
    others = math.prod(len(v) for k, v in axes.items() if k != "method")
    methods = axes.get("method", [None])
    cells = sum(others * math.prod(len(v) for v in when.get(m, {}).values()) for m in methods)
    return cells, len(study["seeds"])


DEMO = tomllib.loads((SHIPPED / "demo.toml").read_text())


def _demo_seeds() -> int:
    return len(DEMO["study"]["seeds"])


def _demo_steps_per_run() -> int:
    base = DEMO["base"]
    return base["epochs"] * (((base["train_limit"] - 1) // base["seq_len"]) // base["batch_size"])


def test_studies_lists_every_shipped_study_with_its_size(capsys, monkeypatch):
    monkeypatch.setenv("LABBENCH_OFFLINE", "1")
    code, out, err = cli(capsys, "studies", "--no-probe", "--json")
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(out)}
    files = sorted(SHIPPED.glob("*.toml"))
    assert len(files) >= 6 and len(rows) == len(files)
    for path in files:
        doc = tomllib.loads(path.read_text())
        cells, seeds = _expected_size(doc)
        row = rows[doc["study"]["name"]]
        assert (row["cells"], row["seeds"], row["runs"]) == (cells, seeds, cells * seeds), path.name
        assert row["core_s"] is None
    # demo: epochs x ((train_limit - 1) // seq_len) // batch_size steps (pysrc's training split
    # is far longer than the limit), 4 methods x its seeds
    assert rows["demo"]["steps"] == 4 * _demo_seeds() * _demo_steps_per_run()


def test_the_cost_is_steps_times_the_probed_step_time(capsys, monkeypatch):
    probed = []
    step_ms = {"fp": 10.0, "bc": 20.0, "bwn": 30.0, "lab": 40.0}

    def fake_speed(config, methods, *, steps, warmup, rounds):
        probed.append((config, methods))
        return [{"method": m, "step_ms": step_ms[m]} for m in ["fp", *methods]]

    monkeypatch.setattr("bench.speed.measure_speed", fake_speed)
    code, out, err = cli(capsys, "studies", "demo", "--json")
    assert code == 0, err
    (row,) = json.loads(out)
    # the seeds x the steps of a run, each method at its own step time
    core_s = _demo_seeds() * _demo_steps_per_run() * (0.010 + 0.020 + 0.030 + 0.040)
    assert row["core_s"] == pytest.approx(core_s, rel=1e-12)
    assert sorted(methods[0] for _, methods in probed) == ["bc", "bwn", "fp", "lab"]
    for config, _ in probed:  # timed as one worker runs it, without torch.compile
        assert (config.threads, config.backend, config.hidden, config.batch_size, config.seq_len) == (
            1, "torch", 128, 32, 64)
    code, out, _ = cli(capsys, "studies", "demo", "--workers", "2")
    wall = f"{core_s / 2:.0f} s" if core_s / 2 < 90 else f"{core_s / 2 / 60:.0f} min"  # 2 workers
    assert code == 0 and f" {core_s / 3600:.2f} " in out and f" {wall}" in out


def test_a_shipped_study_is_found_by_name_and_a_path_is_kept():
    assert find_study_file("lstm-clipping") == SHIPPED / "lstm-clipping.toml"
    assert find_study_file("somewhere/x.toml").as_posix() == "somewhere/x.toml"
    with pytest.raises(StudyError, match=r"lstm-clipin.*did you mean 'lstm-clipping'.*shipped: demo"):
        find_study_file("lstm-clipin")


def test_grid_by_name_creates_the_shipped_study(tmp_path, capsys):
    root = tmp_path / "runs"
    code, out, err = cli(capsys, "grid", "demo", "--root", str(root), "--workers", "0")
    assert code == 0, err
    assert f"study demo: created, {4 * _demo_seeds()} runs" in out
    assert (root / "mlflow.db").exists()


def test_grid_of_an_unknown_name_exits_2_and_creates_nothing(tmp_path, capsys):
    root = tmp_path / "runs"
    code, _, err = cli(capsys, "grid", "no-such-study", "--root", str(root))
    assert code == 2
    assert err.startswith("error: no-such-study") and "labbench studies" in err
    assert not root.exists()
    code, _, err = cli(capsys, "studies", "no-such-study")
    assert code == 2 and "shipped:" in err


def test_speed_keeps_the_timed_methods_own_fields_and_drops_them_for_the_baseline():
    from bench.config import RunConfig
    from bench.speed import measure_speed

    # bc-scaled needs its fixed_scale; fp, timed beside it as the baseline, must not get it
    base = RunConfig(model="mlp", hidden=16, layers=1, method="bc-scaled", fixed_scale=2.0,
                     batch_size=8, threads=1, train_limit=64, eval_limit=8)
    rows = measure_speed(base, ["bc-scaled"], steps=1, warmup=0, rounds=1)
    assert [r["method"] for r in rows] == ["fp", "bc-scaled"]
    assert rows[0]["ratio"] == 1.0 and rows[1]["step_ms"] > 0
