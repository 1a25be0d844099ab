"""kernels-bench's fused-step cases on CPU: the C++ step is timed beside torch's Adam and the
reference, at each --fused-sizes size, as a fraction of the copy bandwidth measured at that size."""

import csv

import pytest

from kernels.bench import FUSED_OP, main


def test_fused_sizes_rows_have_the_cpp_step_and_its_share_of_copy(tmp_path):
    argv = ["--device", "cpu", "--sizes", "1000", "--ops", "prox_binary", "--no-compile",
            "--threads", "1", "--width", "1", "--fused-sizes", "3000,20000",
            "--interpreter-max", "0", "--out", str(tmp_path)]
    assert main(argv) == 0
    with open(tmp_path / "kernels-bench.csv") as f:
        rows = list(csv.DictReader(f))
    copy = {int(r["size"]): float(r["GBps"]) for r in rows if r["op"] == "copy"}
    fused = [r for r in rows if r["op"] == FUSED_OP]
    assert {(int(r["size"]), r["provider"]) for r in fused} == {
        (n, p) for n in (3000, 20000) for p in ("adam-fused", "eager", "cpp")}
    for r in fused:
        n = int(r["size"])
        assert int(r["bytes"]) == 32 * n  # read W, g, m, v; write W, m, v, w_hat
        assert float(r["copy_GBps"]) == copy[n]  # copy measured at the same size, same run
        gbps = 32 * n / float(r["us"]) / 1e3
        assert float(r["GBps"]) == pytest.approx(gbps, rel=0.01, abs=0.01)
        assert float(r["copy_frac"]) == pytest.approx(gbps / copy[n], rel=0.01, abs=0.002)
    assert ("fused_adam_lab", "cpp") in {(r["op"], r["provider"]) for r in rows}  # ResNet-18 case
    md = (tmp_path / "kernels-bench.md").read_text()
    assert "| 2e+04 |" in md and "| cpp |" in md and "fraction of copy" in md


def test_no_models_skips_the_fused_cases(tmp_path):
    argv = ["--device", "cpu", "--sizes", "1000", "--ops", "prox_binary", "--no-compile",
            "--no-models", "--interpreter-max", "0", "--out", str(tmp_path)]
    assert main(argv) == 0
    with open(tmp_path / "kernels-bench.csv") as f:
        assert not any(r["op"].startswith("fused") for r in csv.DictReader(f))
