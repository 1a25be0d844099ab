"""Every citation of a docs/ section in the code names a section that exists.

A citation is either ``docs/PAGE.md, "Heading"`` or ``README.md, "Heading"`` (or 'Heading'; a
prefix of the heading is enough: ``"Archives"`` for "Archives: a study without MLflow") or a
numbered one such as ``PAGE.md section 3.4`` / ``PAGE.md 3.4``, which needs a heading that
starts with that number.
Pages outside docs/ (an internal spec, a style guide) cannot be cited by section: readers of the
repository cannot open them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ["kernels", "bench", "ablations", "analysis", "labbench", "tests", "scripts",
           "noxfile.py", "pyproject.toml", "README.md", "docs"]
NAMED = re.compile(r"\b((?:docs/)?[\w.-]+)\.md,\s+([\"'])([A-Za-z`][^\"'\n]*)\2")
NUMBERED = re.compile(r"\b((?:docs/)?[\w.-]+)\.md,?\s+(?:sections?\s+|§\s*)?(\d+(?:\.\d+)*)\b")


def headings(page: Path) -> list[str]:
    """The Markdown headings of ``page`` (outside fenced code), without #'s and backticks."""
    found, fenced = [], False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and (m := re.match(r"#{1,6}\s+(.*)", line)):
            found.append(m.group(1).strip().replace("`", ""))
    return found


def page_of(cited: str, docs: Path) -> Path:
    """The page a citation names: README.md at the top of the repository, else a page of docs/."""
    name = Path(cited).name + ".md"
    return docs.parent / name if name == "README.md" else docs / name


def bad_citations(text: str, docs: Path) -> list[str]:
    """Each citation in ``text`` that names no existing section of a page in ``docs`` (or of the
    README beside it)."""
    problems = []
    for m in NAMED.finditer(text):
        page = page_of(m.group(1), docs)
        cited = m.group(3).replace("`", "")
        if not page.is_file() or not any(h.startswith(cited) for h in headings(page)):
            problems.append(m.group(0))
    for m in NUMBERED.finditer(text):
        page = page_of(m.group(1), docs)
        number = m.group(2)
        if not page.is_file() or not any(re.match(rf"{re.escape(number)}\b", h)
                                         for h in headings(page)):
            problems.append(m.group(0))
    return problems


def source_files() -> list[Path]:
    files = []
    for name in SOURCES:
        path = REPO / name
        if path.is_file():
            files.append(path)
        else:
            files += sorted(p for p in path.rglob("*") if p.suffix in (".py", ".md", ".toml")
                            and "reports" not in p.relative_to(REPO).parts)
    return [p for p in files if p != Path(__file__).resolve()]  # this file's examples are bad on purpose


def test_code_and_docs_cite_only_sections_that_exist():
    problems = [f"{path.relative_to(REPO)}: {bad}" for path in source_files()
                for bad in bad_citations(path.read_text(encoding="utf-8"), REPO / "docs")]
    assert problems == []


def test_the_scan_covers_the_code_and_finds_its_citations():
    files = {p.relative_to(REPO).as_posix() for p in source_files()}
    assert {"bench/optim.py", "kernels/ternary.py", "pyproject.toml", "docs/harness.md"} <= files
    cited = sum(len(NAMED.findall(p.read_text(encoding="utf-8"))) for p in source_files())
    assert cited >= 10  # the code does cite sections; the first test checks each of them


@pytest.mark.parametrize(("text", "bad"), [
    ('(docs/harness.md, "Bad input")', False),
    ('(README.md, "Layout")', False),
    ('(README.md, "Layers")', True),
    ("(docs/analysis.md, 'Archives', describes each file)", False),  # a prefix of the heading
    ('docs/kernels.md, "labbench kernels-bench"', False),  # a heading in backticks
    ('(docs/harness.md, "Bad inputs!")', True),
    ('(docs/harness.md, "trials = 30")', True),  # a comment inside a code block is no heading
    ('(docs/nowhere.md, "Bad input")', True),
    ("(algorithms.md section 3.4)", True),  # the page has no numbered sections
    ("(algorithms.md 1.2)", True),
    ("(STYLE.md 5)", True),  # not a page of docs/
])
def test_the_checker_against_the_real_docs(text, bad):
    assert bool(bad_citations(text, REPO / "docs")) == bad


def test_numbered_sections_are_checked_against_numbered_headings(tmp_path):
    (tmp_path / "spec.md").write_text("# Spec\n## 1. One\n### 1.2 Two\n```\n# 3.1 not a heading\n```\n")
    text = "spec.md 1.2, spec.md section 1, spec.md 3.1, spec.md §1.3"
    assert bad_citations(text, tmp_path) == ["spec.md 3.1", "spec.md §1.3"]
