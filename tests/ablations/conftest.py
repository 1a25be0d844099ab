"""Fixtures of the harness tests: a throwaway PostgreSQL server and an ``mlflow server``.

Both listen on loopback ports picked at random and are stopped after the session. PostgreSQL
comes from the system (Debian's ``postgresql`` package; .ci/run installs it): when its binaries
are missing the ``pg`` tests fail and say so, they are not skipped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.ablations.helpers import DATA, REPO


@pytest.fixture(autouse=True)
def _lab_env(monkeypatch):
    """Committed data, no downloads, tests importable by worker processes, and no storage or
    run hook leaking in from the caller."""
    monkeypatch.setenv("LABBENCH_DATA", str(DATA))
    monkeypatch.setenv("LABBENCH_OFFLINE", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO),
                                                                   os.environ.get("PYTHONPATH")])))
    for name in ("LABBENCH_STORAGE", "LABBENCH_RUN_FN", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bindir() -> Path | None:
    """Debian's /usr/lib/postgresql/N/bin (newest), else the folder of pg_ctl on the PATH."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                      key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if versions:
        return versions[-1].parent
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


@pytest.fixture(scope="session")
def pg_url():
    """``postgresql+psycopg2://labbench@127.0.0.1:PORT/studies`` on a fresh cluster."""
    bindir = _pg_bindir()
    if bindir is None:
        pytest.fail("PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's "
                    "`postgresql` package (.ci/run does), or deselect with -m 'not pg'")
    folder = Path(tempfile.mkdtemp(prefix="labbench-pg-"))
    data, port = folder / "data", free_port()
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: run the server as the postgres user
        shutil.chown(folder, "postgres", "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]

    def pg(*args: str) -> None:
        proc = subprocess.run([*as_postgres, *args], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")

    pg(str(bindir / "initdb"), "-D", str(data), "-U", "labbench", "-A", "trust", "--no-sync")
    pg(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-w", "-t", "60",
       "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off "
       "-c max_connections=300", "start")
    try:
        pg(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "labbench", "studies")
        yield f"postgresql+psycopg2://labbench@127.0.0.1:{port}/studies"
    finally:
        with contextlib.suppress(Exception):
            pg(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """``http://127.0.0.1:PORT`` of an ``mlflow server`` whose backend is a SQLite file."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = open(folder / "server.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
         f"sqlite:///{folder / 'srv.db'}", "--artifacts-destination", str(folder / "art"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})  # no job runner
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("mlflow server did not start:\n"
                                   + (folder / "server.log").read_text(errors="replace")[-3000:])
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        log.close()
