"""Developer sessions. `nox` alone runs the default CPU suite and lint.

Sessions install torch 2.13.0 first with pip (uv would not see a local CPU wheel and would pull a
multi-GB CUDA build), then labbench with its test extras.
"""

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests", "lint"]
nox.options.reuse_venv = "yes"

TORCH = "torch==2.13.0"


def install(session: nox.Session, extras: str = "test") -> None:
    session.install(TORCH)
    session.install("-e", f".[{extras}]")


@nox.session
def tests(session: nox.Session) -> None:
    """The default CPU suite (Triton kernels under TRITON_INTERPRET=1; needs PostgreSQL and
    Chromium installed, as in .ci/run). Extra args go to pytest: `nox -s tests -- -k optim`."""
    install(session)
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")


@nox.session(default=False)
def slow(session: nox.Session) -> None:
    """Tests marked `slow` (longer learning runs)."""
    install(session)
    session.run("python", "-m", "pytest", "-m", "slow", *session.posargs)


@nox.session(default=False)
def gpu(session: nox.Session) -> None:
    """On a CUDA machine: the `gpu` tests and the kernel benchmark, results under docs/benchmarks."""
    install(session, "test,gpu")
    session.run("bash", "scripts/gpu-check.sh", external=True)


@nox.session(default=False)
def demo(session: nox.Session) -> None:
    """`labbench demo`: a small real study on the Python standard library, then its report."""
    install(session, "test")
    session.run("labbench", "demo", *session.posargs)


@nox.session(default=False)
def speed(session: nox.Session) -> None:
    """`labbench speed` on the paper's MLP and a 1x512 LSTM (step-time ratios to fp)."""
    install(session, "test")
    session.run("labbench", "speed", "--model", "mlp", "--batch-size", "100", *session.posargs)
    session.run("labbench", "speed", "--model", "lstm", "--dataset", "pysrc", "--hidden", "512",
                "--batch-size", "100", "--seq-len", "100", *session.posargs)
