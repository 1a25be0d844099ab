"""Fixtures of the analysis tests: fake studies written into MLflow (see fakestudy.py)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.analysis.fakestudy import T0, FakeStudy, write_fake_study


@pytest.fixture(scope="session")
def study_root(tmp_path_factory):
    """One MLflow root for the session's fake studies, in RAM when /dev/shm is writable.

    Each SQLite commit syncs to disk; on tmpfs writing a study takes a third of the time.
    """
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        root = Path(tempfile.mkdtemp(prefix="labbench-analysis-", dir=shm))
        yield root
        shutil.rmtree(root, ignore_errors=True)
    else:
        yield tmp_path_factory.mktemp("studies")


@pytest.fixture(scope="session")
def fake_study(study_root) -> FakeStudy:
    """The study with planted faults (see the module docstring); shared by the whole session."""
    return write_fake_study(study_root, name="fake-study")


@pytest.fixture(scope="session")
def complete_study(study_root) -> FakeStudy:
    """The same grid with no faults: balanced, every cell x seed finished once, a day after the
    fake study, so that where both finished a (cell, seed) the fake study's run ended first."""
    return write_fake_study(study_root, name="complete-study", faults=False, t0=T0 + 86_400_000)
