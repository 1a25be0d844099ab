"""`labbench kernels-bench` on CPU: it runs, checks Triton against eager, and writes its files."""

import csv
import json
import math

import pytest

from kernels._bench_ops import resnet18_shapes
from kernels.bench import main


def test_resnet18_shapes_are_torchvisions():
    shapes = resnet18_shapes()
    assert len(shapes) == 21 and shapes[0] == (64, 3, 7, 7) and shapes[-1] == (1000, 512)
    assert sum(math.prod(s) for s in shapes) == 11_678_912


def run(tmp_path, *extra):
    argv = ["--device", "cpu", "--sizes", "1000,3000", "--ops", "prox_binary,pack_bits",
            "--no-compile", "--threads", "1", "--out", str(tmp_path), "--plot", *extra]
    assert main(argv) == 0
    with open(tmp_path / "kernels-bench.csv") as f:
        return list(csv.DictReader(f))


def test_cpu_run_writes_rows_checks_and_files(tmp_path):
    rows = run(tmp_path, "--no-models")
    assert {(r["op"], r["provider"]) for r in rows} == {
        ("copy", "torch"), ("prox_binary", "eager"), ("prox_binary", "triton"),
        ("pack_bits", "eager"), ("pack_bits", "triton")}
    for r in rows:
        if r["provider"] == "triton":
            assert r["sign_mismatches"] == "0" and float(r["scale_rel_err"]) < 1e-6
            assert r["note"] == "interpreter: not performance"
        if r["op"] == "prox_binary":  # GB/s from the minimal bytes: 12 per element with d
            assert int(r["bytes"]) == 12 * int(r["size"])
    meta = json.loads((tmp_path / "kernels-bench.json").read_text())["meta"]
    assert meta["device_type"] == "cpu" and "kernels-bench" in meta["command"]
    assert "interpreter" in (tmp_path / "kernels-bench.md").read_text()
    assert (tmp_path / "kernels-bench.png").stat().st_size > 0


@pytest.mark.slow
def test_cpu_run_of_the_model_cases(tmp_path):
    # ResNet-18 at width 1 (10,871 weights): small enough for the interpreter.
    rows = run(tmp_path, "--width", "1", "--interpreter-max", "2e4")
    assert {("fused_adam_lab", "adam-fused"), ("fused_adam_lab", "eager"), ("fused_adam_lab", "triton"),
            ("prox_binary_multi", "triton-per-tensor"), ("prox_binary_multi", "triton")} <= {
        (r["op"], r["provider"]) for r in rows}


def test_bad_arguments_exit_2(tmp_path, capsys):
    assert main(["--ops", "prox_unary", "--out", str(tmp_path)]) == 2
    assert "--ops: unknown ['prox_unary']" in capsys.readouterr().err
    assert main(["--sizes", "ten", "--out", str(tmp_path)]) == 2
    assert main(["--help"]) == 0
