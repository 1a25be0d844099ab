"""A fake labbench study written straight into MLflow, per docs/mlflow-layout.md.

``write_fake_study`` is the reusable writer: it needs nothing of bench/ or ablations/, so the
analysis tests can check the loader against a study whose every run is known. conftest.py's
fixtures ``fake_study`` (with the faults a real study has) and ``complete_study`` (balanced, no
faults) build one each per test session; tests import the constants from here.

Faults planted in the default study (axes method x hidden, seeds 0..5):
- duplicates: (bc, 16, seed 0) finished twice, the run created first ended *later*, so keeping the
  earliest end differs from keeping the first created; (fp, 32, seed 1) finished twice with the
  same end time, so the smaller run id must be kept;
- (lab, 32, seed 5) FAILED and never re-run: a missing cell with reason "failed";
- (bc, 32, seed 3) never run: a missing cell with reason "not run";
- (lab, 16, seed 2) has a zombie RUNNING run beside its finished one;
- a stray ``labbench.kind = run`` run in the experiment that belongs to no study.

Evidence planted in both studies (docs/mlflow-layout.md's diagnostics contract):
- floors ``floor_unigram_bpc`` = 3.2 and ``floor_bigram_bpc`` = 2.5 on every run; bc at hidden 16
  ends near 2.67 bits/char (undertrained), every other cell below 2.3;
- ``grad_norm_raw/<layer>`` = ``grad_norm/<layer>`` times RAW_OVER_RECEIVED (bc's raw gradient
  is clipped hard, the others' hardly), ``spectral_whole/lstm.0.w_hh`` for every method, fp too;
- ``bptt_growth`` and ``bptt/epoch-<e>.json`` per epoch: a profile g_t = r ** (T - t), so its
  median step ratio is r exactly, r = BPTT_GROWTH[method] times a per-run factor exp(0.03 z)
  (bc grows back in time, fp and lab decay);
- DIVERGED: runs with ``diverged = 1`` and their ``labbench.diverged_reason`` tag (None: a run
  recorded before the tag existed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

METHODS = ("fp", "bc", "lab")
HIDDEN = (16, 32)
SEEDS = tuple(range(6))
EPOCHS = 4
LAYERS = ("lstm.0.w_ih", "lstm.0.w_hh", "head.weight")
GATES = ("i", "f", "g", "o")
# planted degradation of test_xent vs fp, by (method, hidden): bc's depends on hidden (interaction)
EFFECT = {
    ("fp", 16): 0.0,
    ("fp", 32): 0.0,
    ("bc", 16): 0.35,
    ("bc", 32): 0.15,
    ("lab", 16): 0.05,
    ("lab", 32): 0.03,
}
NOISE_SD = 0.015
FLOORS = {"floor_unigram_bpc": 3.2, "floor_bigram_bpc": 2.5}
RAW_OVER_RECEIVED = {"fp": 1.0, "bc": 40.0, "lab": 1.5}
SPECTRAL_WHOLE = {"fp": 1.2, "bc": 9.0, "lab": 0.8}  # times sqrt(hidden / 16)
BPTT_GROWTH = {"fp": 0.8, "bc": 1.25, "lab": 0.7}
BPTT_T = 20  # time steps of the profile
DIVERGED = {("bc", 16, 4): "bound", ("bc", 16, 5): "nonfinite", ("bc", 32, 0): "no_progress",
            ("lab", 16, 0): None}  # fmt: skip
T0 = 1_700_000_000_000  # ms


@dataclass
class FakeStudy:
    """What was written, so tests can compare the loader's answer with the truth."""

    name: str
    tracking_uri: str
    root: Path
    parent_run_id: str
    axes: tuple[str, ...] = ("method", "hidden")
    seeds: tuple[int, ...] = SEEDS
    kept: dict[tuple, str] = field(default_factory=dict)  # (method, hidden, seed) -> run id
    objective: dict[tuple, float] = field(default_factory=dict)  # same key -> test_xent
    dropped_run_ids: set[str] = field(default_factory=set)
    failed_run_ids: set[str] = field(default_factory=set)
    running_run_ids: set[str] = field(default_factory=set)
    missing: dict[tuple, str] = field(default_factory=dict)  # (method, hidden, seed) -> reason


def cell_id(method: str, hidden: int) -> str:
    """A stable 12-hex-digit cell id (the real one hashes the RunConfig without the seed)."""
    return f"{METHODS.index(method):06x}{hidden:06x}"


def write_fake_study(root: Path, *, name: str = "fake-study", faults: bool = True, t0: int = T0) -> FakeStudy:
    """Write a study (parent + trial runs with curves, diagnostics and artifacts) under ``root``.

    Args:
        root: folder for ``mlflow.db`` and ``mlartifacts/`` (several studies may share it).
        name: the study (experiment) name.
        faults: plant the duplicates, failed, missing, running and stray runs listed above.
        t0: start of the study in ms since the epoch; trial k starts at ``t0 + 1000 (k + 1)`` and
            ends 60 s later (60.25 s for odd seeds).

    Returns:
        The :class:`FakeStudy` describing what a correct loader must return.
    """
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment(name, artifact_location=(root / "mlartifacts").as_uri())
    parent = client.create_run(
        exp,
        start_time=t0,
        tags={
            "labbench.kind": "study",
            "labbench.study": name,
            "labbench.objective": "test_xent",
            "labbench.direction": "minimize",
            "labbench.baseline": '{"method": "fp"}',
            "labbench.axes": '["method", "hidden"]',
        },
        run_name=name,
    )
    pid = parent.info.run_id
    client.log_dict(
        pid,
        {
            "study": {
                "name": name,
                "objective": "test_xent",
                "direction": "minimize",
                "seeds": list(SEEDS),
                "baseline": {"method": "fp"},
            },
            "base": {"model": "lstm", "dataset": "pysrc", "epochs": EPOCHS},
            "grid": {"method": list(METHODS), "hidden": list(HIDDEN)},
        },
        "study.json",
    )
    client.set_terminated(pid, "FINISHED", end_time=t0 + 10)
    study = FakeStudy(name=name, tracking_uri=uri, root=root, parent_run_id=pid)

    failed = {("lab", 32, 5)} if faults else set()
    skipped = {("bc", 32, 3)} if faults else set()
    trial = 0
    for method in METHODS:
        for hidden in HIDDEN:
            for seed in SEEDS:
                key = (method, hidden, seed)
                if key in skipped:
                    study.missing[key] = "not run"
                    continue
                start = t0 + 1000 * (trial + 1)
                if key in failed:
                    rid = _write_trial(client, exp, pid, name, key, trial, start, "FAILED")
                    study.failed_run_ids.add(rid)
                    study.missing[key] = "failed"
                    trial += 1
                    continue
                # odd seeds end a quarter second past the second: as in real studies, some end
                # times have a fraction and some do not (ISO 8601 writes them differently)
                end = start + 60_000 + 250 * (seed % 2)
                if faults and key == ("bc", 16, 0):  # first written, ends later: dropped
                    rid = _write_trial(client, exp, pid, name, key, trial, start, "FINISHED", end=end + 5_000)
                    study.dropped_run_ids.add(rid)
                    trial += 1
                if faults and key == ("fp", 32, 1):  # same end: the larger run id is dropped
                    ids = [
                        _write_trial(client, exp, pid, name, key, trial + k, start, "FINISHED", end=end)
                        for k in range(2)
                    ]
                    trial += 2
                    study.kept[key] = min(ids)
                    study.dropped_run_ids.add(max(ids))
                    study.objective[key] = _objective(key)
                    continue
                if faults and key == ("lab", 16, 2):
                    rid = _write_trial(client, exp, pid, name, key, trial, start, "RUNNING")
                    study.running_run_ids.add(rid)
                    trial += 1
                study.kept[key] = _write_trial(client, exp, pid, name, key, trial, start, "FINISHED", end=end)
                study.objective[key] = _objective(key)
                trial += 1
    if faults:
        stray = client.create_run(exp, tags={"labbench.kind": "run"}, start_time=t0)
        client.set_terminated(stray.info.run_id, "FINISHED", end_time=t0 + 1)
    return study


def _objective(key: tuple) -> float:
    method, hidden, seed = key
    z = np.random.default_rng([seed, METHODS.index(method), hidden]).standard_normal()
    return 1.5 - 0.08 * (hidden == 32) + EFFECT[(method, hidden)] + NOISE_SD * z


def _write_trial(client, exp, pid, name, key, trial, start, status, end=None) -> str:
    """One trial run: tags, params (strings, as recorded), curves, finals, artifacts."""
    method, hidden, seed = key
    run = client.create_run(
        exp,
        start_time=start,
        tags={
            "mlflow.parentRunId": pid,
            "labbench.kind": "trial",
            "labbench.study": name,
            "labbench.cell": cell_id(method, hidden),
            "labbench.seed": str(seed),
            "labbench.trial": str(trial),
            "labbench.task": "lm",
        },
    )
    rid = run.info.run_id
    params = {
        "model": "lstm",
        "dataset": "pysrc",
        "method": method,
        "hidden": str(hidden),
        "bits": "None" if method == "fp" else "1",
        "lr": "0.002",
        "epochs": str(EPOCHS),
        "steps": "None",
        "clip": "gate:5",
        "seed": str(seed),
        "deterministic": "True",
        "weight_decay": "0" if method == "fp" else "0.0001",
        "schedule": "const",
    }
    if status == "FAILED":
        client.log_batch(rid, params=[Param(k, v) for k, v in params.items()])
        client.log_text(rid, "Traceback (most recent call last): ...\n", "traceback.txt")
        client.set_terminated(rid, "FAILED", end_time=start + 500)
        return rid
    metrics = _curves(key, start) if status == "FINISHED" else _curves(key, start)[:5]
    tags = [RunTag("labbench.version", "0.1.0")]
    if status == "FINISHED" and DIVERGED.get(key):
        tags.append(RunTag("labbench.diverged_reason", DIVERGED[key]))
    client.log_batch(
        rid,
        params=[Param(k, v) for k, v in params.items()],
        metrics=metrics,
        tags=tags,
    )
    client.log_dict(rid, {"method": method, "hidden": hidden, "seed": seed}, "config.json")
    client.log_dict(
        rid,
        {"python": "3.11.2", "torch": "2.13.0", "cpu": "fake 2-core", "corpus_sha256": "ab12"},
        "env.json",
    )
    if status == "FINISHED":
        for epoch in range(1, EPOCHS + 1):
            client.log_dict(rid, bptt_profile(key, epoch), f"bptt/epoch-{epoch}.json")
        client.set_terminated(rid, "FINISHED", end_time=end)
    return rid


def _curves(key: tuple, start: int) -> list[Metric]:
    """Per-epoch curves and diagnostics, then the final metrics (docs/mlflow-layout.md)."""
    method, hidden, seed = key
    rng = np.random.default_rng([seed, METHODS.index(method), hidden, 7])
    final = _objective(key)
    out: list[Metric] = []
    quantized = method != "fp"
    for epoch in range(1, EPOCHS + 1):
        ts = start + epoch * 1000
        val = final + 0.6 * math.exp(-(epoch - 1)) + 0.01 * rng.standard_normal()
        values = {
            "train_loss": val - 0.05,
            "val_loss": val,
            "val_xent": val,
            "val_bpc": val / math.log(2),
            "lr": 0.002,
            "epoch_s": 3.0 + rng.random(),
        }
        for i, layer in enumerate(LAYERS):
            values[f"grad_norm/{layer}"] = (
                (0.5 + i)
                * (3.0 if method == "bc" else 1.0)
                * (0.7**epoch)
                * math.exp(0.1 * rng.standard_normal())
            )
            values[f"grad_norm_raw/{layer}"] = values[f"grad_norm/{layer}"] * RAW_OVER_RECEIVED[method]
            if quantized:
                alpha = 0.05 + 0.01 * i + 0.005 * epoch + 0.002 * rng.standard_normal()
                values[f"alpha/{layer}"] = 1.0 if method == "bc" else alpha
                values[f"flip_ratio/{layer}"] = 0.1 / epoch
        values["spectral_whole/lstm.0.w_hh"] = SPECTRAL_WHOLE[method] * math.sqrt(hidden / 16) * (
            1.0 + 0.02 * epoch + 0.01 * rng.standard_normal()
        )
        values["bptt_growth"] = bptt_growth(key)
        if quantized:
            alpha = 1.0 if method == "bc" else values["alpha/lstm.0.w_hh"]
            for gate in GATES:
                bound = alpha * math.sqrt(hidden)
                values[f"spectral_bound/lstm.0.w_hh.{gate}"] = bound
                values[f"spectral/lstm.0.w_hh.{gate}"] = bound * (1.8 + 0.05 * rng.random())
        out += [Metric(k, float(v), ts, epoch) for k, v in values.items()]
    ts = start + (EPOCHS + 1) * 1000
    finals = {
        "test_xent": final,
        "test_bpc": final / math.log(2),
        "best_val_xent": final - 0.01,
        "best_val_bpc": (final - 0.01) / math.log(2),
        "best_epoch": EPOCHS,
        "epochs_run": EPOCHS,
        "diverged": int(key in DIVERGED),
        "wall_s": 60.0,
        "peak_mem_mb": 100.0 + hidden,
        "step_ms": {"fp": 10.0, "bc": 12.0, "lab": 14.0}[method] * hidden / 16 + 0.2 * rng.standard_normal(),
        "bits_per_weight": 32.0 if method == "fp" else 1.0,
    }
    out += [Metric(k, float(v), ts, EPOCHS) for k, v in finals.items()]
    out += [Metric(k, v, start, 0) for k, v in FLOORS.items()]  # run-level, logged once at step 0
    return out


def bptt_growth(key: tuple) -> float:
    """The planted bptt_growth of a (method, hidden, seed) run."""
    method, hidden, seed = key
    z = np.random.default_rng([seed, METHODS.index(method), hidden, 11]).standard_normal()
    return BPTT_GROWTH[method] * math.exp(0.03 * z)


def bptt_profile(key: tuple, epoch: int) -> dict:
    """The ``bptt/epoch-<e>.json`` artifact: g_t = growth ** (T - t) for t = 1..T, so every step
    back in time multiplies the norm by ``growth`` and bptt_growth (the median ratio) is it."""
    growth = bptt_growth(key)
    return {
        "epoch": epoch,
        "layer": "lstm.layers.0",
        "t": list(range(1, BPTT_T + 1)),
        "grad_norm": [growth ** (BPTT_T - t) for t in range(1, BPTT_T + 1)],
        "bptt_growth": growth,
    }
