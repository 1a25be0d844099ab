import os
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(autouse=True)
def _test_data(monkeypatch):
    """Tests read the committed Fashion-MNIST subset and never download."""
    monkeypatch.setenv("LABBENCH_DATA", str(DATA))
    monkeypatch.setenv("LABBENCH_OFFLINE", "1")
    yield


@pytest.fixture
def data_dir() -> Path:
    return DATA


def pytest_configure(config):
    os.environ.setdefault("LABBENCH_OFFLINE", "1")
