"""The dependency rule (README.md, "Layout"), checked two ways: no package imports one above it.

kernels imports nothing of ours; bench imports kernels; ablations imports bench (and kernels);
analysis imports none of them; labbench (the command line) sits on top and imports them all.
The source scan reads every import statement (relative ones resolved, and string arguments of
``importlib.import_module`` / ``__import__``), so an import inside a function counts too; the
fresh-interpreter check imports every module of a package and looks at ``sys.modules``, so an
import the scan cannot see (a re-export, a plugin) counts as well.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OURS = ("kernels", "bench", "ablations", "analysis", "labbench")
ALLOWED = {
    "kernels": {"kernels"},
    "bench": {"bench", "kernels"},
    "ablations": {"ablations", "bench", "kernels"},
    "analysis": {"analysis"},
    "labbench": set(OURS),
}
# `python -m bench` is a script that nothing imports: an alias of `labbench` kept for study
# launchers started before the command moved to labbench/ (they spawn `python -m bench worker`).
SCRIPTS = {"bench/__main__.py": {"labbench"}}


def imported_packages(path: Path, package: str) -> set[str]:
    """The top-level packages that the source file ``path`` (inside ``package``) imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(package if node.level else node.module or "")
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Name) and node.func.id == "__import__")
                   or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"))):
            names.add(node.args[0].value)
    return {name.split(".")[0] for name in names} & set(OURS)


def upward_imports(root: Path, package: str) -> list[str]:
    """``file: package`` for each import in ``root/package`` that the dependency rule forbids."""
    problems = []
    for path in sorted((root / package).rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        allowed = ALLOWED[package] | SCRIPTS.get(rel, set())
        problems += [f"{rel}: {name}" for name in sorted(imported_packages(path, package) - allowed)]
    return problems


@pytest.mark.parametrize("package", OURS)
def test_no_package_imports_one_above_it(package):
    assert (REPO / package / "__init__.py").is_file()
    assert upward_imports(REPO, package) == []


def test_the_scan_sees_every_kind_of_import(tmp_path):
    """A bench module that reaches up in each way the scan knows is reported, once per package."""
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "a.py").write_text(
        "import ablations.cli\nfrom . import models\n\n\ndef f():\n    from analysis import x\n"
        "    import importlib\n    importlib.import_module('labbench.cli')\n")
    (tmp_path / "bench" / "b.py").write_text("m = __import__('analysis.cli')\nimport kernels\n")
    assert upward_imports(tmp_path, "bench") == [
        "bench/a.py: ablations", "bench/a.py: analysis", "bench/a.py: labbench", "bench/b.py: analysis"]


LOAD_ALL = """
import importlib, json, pkgutil, sys
package = importlib.import_module(sys.argv[1])
names = [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")
         if not m.name.endswith("__main__")]
for name in names:
    importlib.import_module(name)
print(json.dumps({"modules": names, "loaded": sorted({m.split(".")[0] for m in sys.modules})}))
"""


@pytest.mark.parametrize("package", ["kernels", "bench", "ablations", "analysis"])
def test_importing_every_module_loads_nothing_above(package):
    proc = subprocess.run([sys.executable, "-c", LOAD_ALL, package], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.splitlines()[-1])
    assert len(report["modules"]) >= 5  # the walk found the package's modules
    loaded = set(report["loaded"]) & set(OURS)
    assert package in loaded and loaded <= ALLOWED[package], sorted(loaded - ALLOWED[package])
