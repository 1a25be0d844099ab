"""A full disk never leaves a study unreadable, nor reaches the other studies of its root.

The first tests tear a real Optuna journal by hand (a last line cut short, as a write that ran
out of space leaves it; and the line that Optuna's next append glued onto it) and check that
plain Optuna is broken by it while labbench reads it, keeps the torn bytes, and appends after it.
The last test fills a real 2 MB tmpfs under a running study (marker ``tmpfs``: it mounts one,
so it needs root; CI runs as root).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from ablations.storage import open_storage, recover_journal, resolve_location
from tests.ablations.helpers import TINY, cli, lab_env, labbench, load_study, study_doc, write_study

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _plain(journal: Path) -> JournalStorage:
    return JournalStorage(JournalFileBackend(str(journal)))


def _two_studies(journal: Path) -> None:
    """Study a with 3 finished trials and study b with 2, in one journal (the default layout)."""
    for name, n in (("a", 3), ("b", 2)):
        study = optuna.create_study(study_name=name, storage=_plain(journal))
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=n)


def _counts(storage) -> dict[str, int]:
    return {s.study_name: len(optuna.load_study(study_name=s.study_name, storage=storage).trials)
            for s in storage.get_all_studies()}


def _torn(journal: Path) -> bytes:
    """Append the first half of a real operation, without its newline, as a full disk does."""
    line = json.dumps({"op_code": 8, "worker_id": "w", "trial_id": 4,
                       "user_attr": {"error": "database or disk is full"}}, separators=(",", ":"))
    torn = line[:len(line) // 2].encode()
    with open(journal, "ab") as f:
        f.write(torn)
    return torn


def _glue_and_append(journal: Path) -> None:
    """What plain Optuna does next to a torn line: a trial of b glued onto it, then study c."""
    with pytest.raises(AttributeError):  # Optuna 5 cannot find the trial it just created
        optuna.load_study(study_name="b", storage=_plain(journal)).optimize(
            lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    with pytest.raises(ValueError):  # written, then the replay fails on the glued line
        optuna.create_study(study_name="c", storage=_plain(journal))


def test_a_torn_last_line_is_cut_off_kept_and_the_journal_stays_appendable(tmp_path):
    journal = tmp_path / "optuna.journal"
    _two_studies(journal)
    whole = journal.read_bytes()
    torn = _torn(journal)

    # plain Optuna: reading skips the torn line, but its next append glues onto it (the trial
    # it creates is never read back), and after one more append no study in the file can be read
    broken = tmp_path / "plain.journal"
    broken.write_bytes(journal.read_bytes())
    _glue_and_append(broken)
    with pytest.raises(ValueError):
        _counts(_plain(broken))

    location = resolve_location(root=tmp_path, storage=None, tracking_uri=None)
    storage = open_storage(location)
    assert journal.read_bytes() == whole  # the torn half-line is gone, nothing else
    backups = list(tmp_path.glob("optuna.journal.torn-*"))
    assert [b.read_bytes() for b in backups] == [torn]
    assert _counts(storage) == {"a": 3, "b": 2}
    optuna.load_study(study_name="b", storage=storage).optimize(
        lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert _counts(_plain(journal)) == {"a": 3, "b": 3}  # plain Optuna reads it again too


def test_a_line_glued_onto_a_torn_one_keeps_its_operation(tmp_path):
    """A journal that an earlier labbench let Optuna damage: the glued operation survives."""
    journal = tmp_path / "optuna.journal"
    _two_studies(journal)
    torn = _torn(journal)
    _glue_and_append(journal)
    with pytest.raises(ValueError):
        _counts(_plain(journal))

    note = recover_journal(journal)
    assert note is not None and "torn byte" in note
    assert _counts(_plain(journal)) == {"a": 3, "b": 3, "c": 0}  # the glued trial of b is back
    (backup,) = tmp_path.glob("optuna.journal.torn-*")
    assert backup.read_bytes() == torn
    assert recover_journal(journal) is None  # whole now: nothing more to do


def test_an_append_that_runs_out_of_space_leaves_the_journal_as_it_was(tmp_path, monkeypatch):
    """ENOSPC in the middle of an append (simulated: the write stops after 10 bytes)."""
    journal = tmp_path / "optuna.journal"
    _two_studies(journal)
    before = journal.read_bytes()
    storage = open_storage(resolve_location(root=tmp_path, storage=None, tracking_uri=None))
    real_open = open

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[:10])
            self.f.flush()
            raise OSError(28, "No space left on device")

    def full_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return FullDisk(f) if str(path) == str(journal) and mode == "ab" else f

    monkeypatch.setattr("builtins.open", full_open)
    with pytest.raises(OSError):
        storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], "c")
    monkeypatch.setattr("builtins.open", real_open)
    assert journal.read_bytes() == before
    assert _counts(_plain(journal)) == {"a": 3, "b": 2}


@contextlib.contextmanager
def _small_disk(folder: Path, size: str = "2m"):
    folder.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (the tmpfs tests need root): {mount.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` until no space is left, then give back ``leave`` bytes."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 4096)
    os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def _finished_runs(tracking_uri: str, name: str) -> list[tuple[str, str]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], "tags.`labbench.kind` = 'trial' and "
                              "attributes.status = 'FINISHED'", max_results=1000)
    return sorted((r.data.tags["labbench.cell"], r.data.tags["labbench.seed"]) for r in runs)


@pytest.mark.tmpfs
def test_a_full_disk_fails_trials_cleanly_and_the_study_finishes_after(tmp_path, capsys,
                                                                       monkeypatch):
    monkeypatch.setenv("LABBENCH_RUN_FN", "ablations.bench_harness:null_run")
    env = lab_env(LABBENCH_RUN_FN="ablations.bench_harness:null_run")
    with _small_disk(tmp_path / "disk") as disk:
        root = disk / "runs"
        done = write_study(tmp_path, study_doc("done", grid={"method": ["fp", "bc"]}, seeds=[0]))
        code, out, err = cli(capsys, "grid", str(done), "--root", str(root), "--quiet")
        assert code == 0, out + err
        base = {k: v for k, v in TINY.items() if k != "hidden"}
        full = write_study(tmp_path, study_doc("full", base=base, seeds=[0, 1], grid={
            "method": ["fp", "bc", "bwn", "lab"], "hidden": [16, 32]}))

        filler = _fill(disk, leave=100 * 1024)
        proc = labbench("grid", str(full), "--root", str(root), "--workers", "2", "--quiet",
                        env=env)
        assert proc.returncode == 1, proc.stdout + proc.stderr  # runs failed: not a crash
        # the journal holds no glued line and both studies read with plain Optuna
        counts = _counts(_plain(root / "optuna.journal"))
        assert counts["done"] == 2 and "full" in counts, counts
        status = labbench("status", "done", "--root", str(root), env=env)
        assert status.returncode == 0 and "Traceback" not in status.stderr, status.stderr

        filler.unlink()  # space is freed
        # --force: no worker of the study runs now, and a trial whose RUNNING state was written
        # just before the disk filled may have no owner recorded, which plain repair cannot judge
        for args in (("repair", "full", "--root", str(root), "--force"),
                     ("grid", str(full), "--root", str(root), "--workers", "2", "--quiet")):
            proc = labbench(*args, env=env)
            assert proc.returncode == 0, proc.stdout + proc.stderr
        for name, n in (("full", 16), ("done", 2)):
            study = load_study(str(root / "optuna.journal"), name)
            complete = [t for t in study.trials if t.state.name == "COMPLETE"]
            slots = {(tuple(sorted(t.params.items())), t.user_attrs.get("seed")) for t in complete}
            assert len(complete) == len(slots) == n, name  # every run once, none twice
            finished = _finished_runs(f"sqlite:///{root / 'mlflow.db'}", name)
            assert len(finished) == len(set(finished)) == n, name
        assert not [b for b in root.glob("optuna.journal.torn-*") if b.stat().st_size == 0]


# --- Ctrl-C while a trial is being marked -----------------------------------------------------
def test_a_second_signal_while_marking_waits_and_a_third_raises():
    from ablations.objective import Interrupts

    interrupts = Interrupts(requested=1, marking=True)  # the first Ctrl-C is being recorded
    interrupts.handler(signal.SIGINT, None)  # the second: no KeyboardInterrupt inside the marking
    assert interrupts.requested == 2
    with pytest.raises(KeyboardInterrupt):
        interrupts.handler(signal.SIGINT, None)
    with pytest.raises(KeyboardInterrupt):  # outside a marking a second signal raises at once
        Interrupts(requested=1).handler(signal.SIGINT, None)


def test_ctrl_c_in_the_middle_of_repair_waits_for_the_trial_to_be_marked(tmp_path, monkeypatch):
    """A real SIGINT arrives while repair closes the trial's MLflow run: the trial still ends
    FAIL with its cell queued again, and the KeyboardInterrupt comes after that."""
    import ablations.state
    from ablations.state import repair

    storage = open_storage(resolve_location(root=tmp_path, storage=None, tracking_uri=None))
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask({"x": optuna.distributions.CategoricalDistribution([1, 2])})
    trial.set_user_attr("owner", {"trial": trial.number, "host": "h", "pid": 1})
    trial.set_user_attr("mlflow_run_id", "r1")
    closed = []

    def close_with_ctrl_c(client, run_id, **_):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C lands in the middle of the marking
        closed.append(run_id)
        return True

    monkeypatch.setattr(ablations.state, "close_stale_run", close_with_ctrl_c)
    frozen = study.trials[trial.number]
    with pytest.raises(KeyboardInterrupt):
        repair(study, client=None, stale=[(frozen, "its worker is gone")])
    states = [t.state.name for t in study.get_trials()]
    assert closed == ["r1"] and states == ["FAIL", "WAITING"]
