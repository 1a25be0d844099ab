"""The `labbench` entry (labbench/cli.py): the commands it assembles and its one error mapping."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

import ablations.cli
import bench.cli
from ablations.preflight import StudyErrors
from ablations.spec import StudyError
from bench.config import ConfigError, ConfigErrors
from labbench.cli import _exit_status, _messages, build_parser, main

# The command line as README.md and docs/harness.md describe it, by the package that owns each.
COMMANDS = {
    "bench": ["run", "speed", "kernels-bench", "deploy-bench"],
    "ablations": ["grid", "studies", "worker", "status", "retry-failed", "repair", "demo"],
    "analysis": ["report", "export", "findings"],
}
ALL = [name for names in COMMANDS.values() for name in names]
# analysis registers `export` (a study's archive); bench.cli.extend_export wraps it (a run's model)
RUNS_IN = {"export": "bench.cli"}


def _commands(parser) -> dict[str, object]:
    (action,) = [a for a in parser._actions if a.dest == "subcommand"]
    return action.choices


def test_every_package_registers_its_commands():
    commands = _commands(build_parser())
    assert sorted(commands) == sorted(ALL)
    for package, names in COMMANDS.items():
        for name in names:  # each command runs a function of the package that owns it
            command = commands[name].get_default("command")
            module = getattr(command, "func", command).__module__
            assert module == RUNS_IN.get(name, f"{package}.cli"), (name, module)


def test_help_exits_0_and_lists_the_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: labbench") and all(n in out for n in ALL)


def test_an_unknown_flag_exits_2_naming_it(capsys):
    assert main(["status", "s", "--bogus"]) == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
    assert main(["no-such-command"]) == 2
    assert "invalid choice: 'no-such-command'" in capsys.readouterr().err


def test_flags_of_a_pass_through_command_reach_it(capsys):
    assert main(["kernels-bench", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: labbench kernels-bench")
    assert main(["kernels-bench", "--ops", "nope"]) == 2  # kernels/bench.py's own check
    assert "--ops: unknown ['nope']" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["-v", "status", "s"], ["status", "s", "-v"],
                                  ["status", "--verbose", "s"]])
def test_verbose_before_or_after_the_command(argv, monkeypatch, tmp_path):
    levels, seen = [], []
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: levels.append(kw["level"]))
    monkeypatch.setattr(ablations.cli, "_status", lambda args: seen.append(args.study) or 0)
    assert main(argv) == 0
    assert levels == [logging.INFO] and seen == ["s"]


def _raising(error: BaseException):
    def command(args):
        raise error
    return command


@pytest.mark.parametrize(("module", "attr", "argv", "error", "status", "message"), [
    (bench.cli, "cmd_run", ["run"], KeyboardInterrupt(), 130, "interrupted"),
    (ablations.cli, "_status", ["status", "s"], KeyboardInterrupt(), 130, "interrupted"),
    (bench.cli, "cmd_run", ["run"], ConfigError("lr", "expected > 0, got -1"), 2,
     "error: lr: expected > 0, got -1"),
    (ablations.cli, "_status", ["status", "s"], ablations.cli.CommandFailed("cannot open x"), 1,
     "error: cannot open x"),
    (ablations.cli, "_status", ["status", "s"], StudyError("s.toml", "grid.lr", "bad"), 2,
     "error: s.toml: grid.lr: bad"),
])
def test_errors_become_exit_statuses(module, attr, argv, error, status, message, monkeypatch,
                                     capsys):
    monkeypatch.setattr(module, attr, _raising(error))
    assert main(argv) == status
    assert capsys.readouterr().err.strip() == message


@pytest.mark.parametrize(("module", "attr", "argv", "error"), [
    (bench.cli, "cmd_run", ["run"], RuntimeError("a bug")),
    (bench.cli, "cmd_run", ["run"], ValueError("a bug")),  # ConfigError is one; a bare one is not
    (ablations.cli, "_status", ["status", "s"], ConfigError("lr", "bench's, not ablations'")),
])
def test_an_error_no_package_names_is_a_bug_and_propagates(module, attr, argv, error,
                                                           monkeypatch):
    monkeypatch.setattr(module, attr, _raising(error))
    with pytest.raises(type(error)):
        main(argv)


def test_the_most_specific_class_decides():
    class Outer(Exception):
        pass

    class Inner(Outer):
        pass

    statuses = {Outer: 2, Inner: 1}
    assert _exit_status(Inner(), statuses) == 1
    assert _exit_status(Outer(), statuses) == 2
    assert _exit_status(ValueError(), statuses) is None


def test_each_problem_of_a_list_is_its_own_line_and_a_summary_stays_whole():
    several = ConfigErrors([ConfigError("lr", "bad"), ConfigError("epochs", "bad too")])
    assert _messages(several) == ["lr: bad", "epochs: bad too"]
    study = StudyErrors([StudyError("s.toml", "study.name", "bad"),
                         StudyError("s.toml", "grid.lr", "worse")])
    (whole,) = _messages(study)
    assert whole.startswith("s.toml: 2 problems:\n") and "study.name: bad" in whole


def test_python_dash_m_labbench_is_the_command(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "labbench", "report", "--n-boot", "5", "x"],
                          capture_output=True, text=True, cwd=tmp_path,
                          env={"PYTHONPATH": str(__import__("pathlib").Path(__file__).parents[2]),
                               "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2 and proc.stderr == "error: --n-boot: expected >= 100, got 5\n"
