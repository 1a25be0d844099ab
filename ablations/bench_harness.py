"""Measure the harness: overhead per trial, worker scaling, and SQLite locking under 4 workers.

    python -m ablations.bench_harness [--out DIR] [--only overhead,scaling,locks]

- ``overhead``: a grid of runs that do nothing (`null_run`: it records what a real run records,
  params, tags, config.json, env.json and the final metrics, and trains nothing) on the local
  defaults with one worker; the harness's own time per trial is the wall time of the trials
  (Optuna trial start to end) and the gap between consecutive trials, from the journal.
- ``scaling``: the same CPU-bound grid (a small LSTM on pysrc, one torch thread per worker) with
  1 and then 2 workers; throughput = runs / (first trial start to last trial end). Beside it, the
  machine's own ceiling: two plain one-thread torch processes against one (``machine_speedup``);
  ``efficiency`` = harness speedup / machine speedup.
- ``locks``: a 50-cell grid of short real runs with 4 workers; counts "database is locked" in
  every worker log and trial error.

The CPU is shared: note the load (``uptime``) beside the numbers.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.config import RunConfig

__all__ = ["measure_locks", "measure_overhead", "measure_scaling", "null_run"]

NULL_RUN = "ablations.bench_harness:null_run"


def null_run(config: RunConfig, recorder: Any) -> Any:
    """A run that trains nothing but records what `bench.train.run` records (a stand-in for
    ``$LABBENCH_RUN_FN``: it measures the harness, and tests use it)."""
    from bench.record import env_info
    from bench.train import RunResult

    info = env_info()
    recorder.set_tags({"labbench.task": config.task, "labbench.version": info["packages"]["labbench"],
                       "labbench.git_commit": info["git_commit"],
                       "labbench.git_dirty": info["git_dirty"]})
    recorder.log_params(config.to_dict())
    recorder.log_dict(config.to_dict(), "config.json")
    recorder.log_dict(info, "env.json")
    names = ("xent", "bpc", "loss") if config.task == "lm" else ("acc", "err", "loss")
    metrics = {f"{p}_{m}": 0.5 for p in ("best_val", "test") for m in names}
    metrics.update({"best_epoch": 1, "epochs_run": 1, "diverged": 0.0, "wall_s": 0.0,
                    "step_ms": 0.0, "peak_mem_mb": 0.0, "state_mem_mb": 0.0,
                    "bits_per_weight": 32.0, "packed_bytes": 0.0})
    recorder.log_metrics(metrics, step=1)
    return RunResult(config, metrics)


def _write_study(folder: Path, name: str, base: dict, grid: dict, seeds: list[int]) -> Path:
    def toml(v: Any) -> str:
        return json.dumps(v)  # strings, numbers and lists of them are valid TOML as JSON writes them

    lines = ["[study]", f"name = {toml(name)}", 'objective = "wall_s"', f"seeds = {toml(seeds)}",
             "[base]", *(f"{k} = {toml(v)}" for k, v in base.items()),
             "[grid]", *(f"{k} = {toml(v)}" for k, v in grid.items())]
    path = folder / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _launch(study: Path, root: Path, workers: int, *, run_fn: str | None = None) -> float:
    """Run ``labbench grid`` (one torch thread per worker) in a subprocess; its wall time."""
    env = {**os.environ, "LABBENCH_OFFLINE": "1"}
    if run_fn:
        env["LABBENCH_RUN_FN"] = run_fn
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "labbench", "grid", str(study), "--root", str(root),
                           "--workers", str(workers), "--threads", "1", "--quiet"], env=env,
                          capture_output=True,
                          text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"labbench grid exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return wall


def _trials(root: Path, name: str) -> list[Any]:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(root / "optuna.journal")))
    trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    return sorted(trials, key=lambda t: t.datetime_start)


def _span(trials: list[Any]) -> float:
    return (max(t.datetime_complete for t in trials)
            - min(t.datetime_start for t in trials)).total_seconds()


def measure_overhead(folder: Path, n: int = 40) -> dict[str, float]:
    """Harness seconds per trial with runs that do nothing, one worker, journal + SQLite."""
    study = _write_study(folder, "overhead", {"model": "mlp", "hidden": 16, "layers": 1},
                         {"lr": [0.001 * (i + 1) for i in range(n // 2)]}, [0, 1])
    wall = _launch(study, folder / "overhead-runs", 1, run_fn=NULL_RUN)
    trials = _trials(folder / "overhead-runs", "overhead")
    inside = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials]
    gaps = [(b.datetime_start - a.datetime_complete).total_seconds()
            for a, b in itertools.pairwise(trials)]
    return {"trials": len(trials), "per_trial_s": _span(trials) / len(trials),
            "inside_trial_median_s": statistics.median(inside),
            "between_trials_median_s": statistics.median(gaps), "launcher_wall_s": wall}


def measure_scaling(folder: Path) -> dict[str, float]:
    """Throughput of one CPU-bound grid with 1 and 2 workers (one torch thread each)."""
    base = {"model": "lstm", "dataset": "pysrc", "hidden": 96, "seq_len": 64, "batch_size": 32,
            "epochs": 1, "steps": 100, "train_limit": 400000, "eval_limit": 8192}
    out: dict[str, float] = {}
    for workers in (1, 2):
        name = f"scaling{workers}"
        study = _write_study(folder, name, base, {"method": ["fp", "bc", "bwn", "lab"]}, [0, 1, 2])
        wall = _launch(study, folder / f"{name}-runs", workers)
        trials = _trials(folder / f"{name}-runs", name)
        out[f"w{workers}_runs_per_min"] = 60 * len(trials) / _span(trials)
        out[f"w{workers}_wall_s"] = wall
        out[f"w{workers}_trial_median_s"] = statistics.median(
            (t.datetime_complete - t.datetime_start).total_seconds() for t in trials)
    out["speedup"] = out["w2_runs_per_min"] / out["w1_runs_per_min"]
    out["speedup_wall"] = out["w1_wall_s"] / out["w2_wall_s"]
    out.update(measure_machine())
    out["efficiency"] = out["speedup"] / out["machine_speedup"]
    return out


_SPIN = """
import sys, time, torch
torch.set_num_threads(1)
a = torch.randn(400, 400)
t = time.perf_counter()
for _ in range(1500):
    a = (a @ a).tanh()
print(time.perf_counter() - t)
"""


def measure_machine() -> dict[str, float]:
    """How much two CPU-bound one-thread torch processes gain over one on this machine now: the
    ceiling of any 2-worker speedup (a shared or hyperthreaded CPU gives less than 2)."""
    def spin(n: int) -> float:
        t0 = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-c", _SPIN], stdout=subprocess.PIPE)
                 for _ in range(n)]
        for p in procs:
            p.communicate()
        return time.perf_counter() - t0

    one, two = min(spin(1), spin(1)), min(spin(2), spin(2))
    return {"one_process_s": one, "two_processes_s": two, "machine_speedup": 2 * one / two}


def measure_locks(folder: Path) -> dict[str, float]:
    """A 50-cell grid of short real runs with 4 workers: "database is locked" occurrences."""
    study = _write_study(folder, "locks", {"model": "mlp", "hidden": 16, "layers": 1, "epochs": 1,
                                           "steps": 3, "train_limit": 600, "eval_limit": 200},
                         {"method": ["fp", "bc", "bwn", "lab", "twn"],
                          "lr": [0.001, 0.002, 0.005, 0.01, 0.02]}, [0, 1])
    root = folder / "locks-runs"
    wall = _launch(study, root, 4)
    trials = _trials(root, "locks")
    logs = "".join(p.read_text(errors="replace") for p in (root / "logs").rglob("*.log"))
    errors = [str(t.user_attrs.get("error")) for t in trials if t.user_attrs.get("error")]
    return {"cells_x_seeds": 50, "trials": len(trials),
            "complete": sum(t.state.name == "COMPLETE" for t in trials),
            "database_is_locked": logs.count("database is locked")
            + sum(e.count("database is locked") for e in errors),
            "wall_s": wall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--only", default="overhead,scaling,locks", help="which measurements")
    args = parser.parse_args(argv)
    folder = Path(args.out or tempfile.mkdtemp(prefix="labbench-harness-"))
    folder.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"load_before": os.getloadavg(), "cpus": os.cpu_count()}
    measures = {"overhead": measure_overhead, "scaling": measure_scaling, "locks": measure_locks}
    for name in args.only.split(","):
        results[name] = measures[name](folder)
        results[f"load_after_{name}"] = os.getloadavg()
        print(json.dumps({name: results[name]}, indent=1), flush=True)
    (folder / "results.json").write_text(json.dumps(results, indent=1))
    print(f"results: {folder / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
