"""Render a report, held as a list of blocks, to Markdown and to self-contained HTML.

A block is one of :class:`Heading`, :class:`Text`, :class:`Table`, :class:`Image`.
The HTML embeds each image as a base64 PNG data URI and its style sheet inline: it loads nothing
from anywhere and needs no JavaScript.

Every string of a block is plain text, whatever its source (the study file, run params, env.json
values): the HTML escapes it with :func:`html.escape`, the Markdown with :func:`escape_markdown`,
so ``<script>`` never reaches either as markup and ``|`` never splits a table cell.
"""

from __future__ import annotations

import base64
import html
import math
import numbers
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

_NUMBER = r"[-+]?\d*\.?\d+(?:e[-+]?\d+)?"
_NUMERIC = re.compile(rf"—|< ?{_NUMBER}|{_NUMBER}(?: to {_NUMBER})?")

__all__ = [
    "Heading",
    "Image",
    "Table",
    "Text",
    "escape_markdown",
    "fmt_number",
    "fmt_p",
    "to_html",
    "to_markdown",
]


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Text:
    text: str
    note: bool = False  # a remark (a skipped figure, a refused test): shown in italics


@dataclass(frozen=True)
class Table:
    frame: pd.DataFrame  # cells already formatted as strings
    caption: str = ""


@dataclass(frozen=True)
class Image:
    png: Path
    caption: str  # one sentence: what the figure shows and the statistic behind it
    alt: str


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; max-width: 72rem;
       margin: 2rem auto; padding: 0 1.5rem; color: #1b1b1b; line-height: 1.5; }
h1 { border-bottom: 2px solid #0173b2; padding-bottom: .3rem; }
h2 { margin-top: 2.2rem; border-bottom: 1px solid #ccc; padding-bottom: .2rem; }
table { border-collapse: collapse; margin: .8rem 0 1.2rem; font-size: .9rem; }
th, td { border: 1px solid #bbb; padding: .25rem .6rem; text-align: right; }
th { background: #eef3f8; }
td:first-child, th:first-child, td.text { text-align: left; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: .3rem; }
figure { margin: 1.2rem 0 2rem; }
figure img { max-width: 100%; height: auto; border: 1px solid #e2e2e2; }
figcaption { margin-top: .4rem; font-size: .95rem; }
p.note { font-style: italic; color: #555; }
"""


def fmt_number(value, digits: int = 3) -> str:
    """A number with ``digits`` significant digits; missing as an em dash; ints unchanged."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, bool | str):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    number = float(value)
    if number.is_integer() and abs(number) < 1e6:
        return str(int(number))
    return f"{number:.{digits}g}"


def fmt_p(p: float) -> str:
    """A p-value: ``< 0.001``, three decimals, or an em dash when there is none (NaN)."""
    if p is None or not math.isfinite(p):
        return "—"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


# characters that start Markdown syntax anywhere in a line (GitHub-flavoured: ~ strikes through,
# $ starts math); backslash-escaped
_MD_SPECIAL = re.compile(r"([\\`*\[\]|~$#])")
# "_" starts emphasis only next to a non-word character: "test_xent" stays as it is
_MD_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")
# a character reference (&amp; &#60;) would be decoded: escape its "&"
_MD_ENTITY = re.compile(r"&(?=#?[A-Za-z0-9]+;)")
# what makes a line a block (quote, list item, heading underline) when it starts the line
_MD_LINE_START = re.compile(r"^(\s*)([>+=-]|\d+(?=[.)]))", re.MULTILINE)


def escape_markdown(text: str, *, block: bool = True) -> str:
    """``text`` as literal Markdown: it renders as the same characters and never as markup.

    HTML is neutralised (``<`` becomes ``&lt;``, a character reference keeps its ``&`` literal),
    inline syntax is backslash-escaped (``* _ ` [ ] | ~ $ # \\``; an underscore inside a word is
    left alone) and, for a paragraph (``block``), so is what would start a block at the start of
    a line (``>``, ``-``, ``+``, ``=``, ``1.``); inside a heading or a table cell those are plain
    characters (``3.11.2`` stays as it is). Newlines are kept; a cell replaces them first.
    """
    text = _MD_ENTITY.sub("&amp;", str(text))
    text = text.replace("<", "&lt;")
    text = _MD_SPECIAL.sub(r"\\\1", text)
    text = _MD_UNDERSCORE.sub(r"\\_", text)
    if not block:
        return text
    return _MD_LINE_START.sub(lambda m: m.group(1) + _escape_line_start(m.group(2)), text)


def _escape_line_start(token: str) -> str:
    # "1." -> "1\." (the digits stay); ">" "-" "+" "=" -> backslash-escaped
    return token + "\\" if token[0].isdigit() else "\\" + token


def to_markdown(blocks: list, title: str, figure_dir: str) -> str:
    """The report as GitHub-flavoured Markdown; images link to ``<figure_dir>/<name>.png``.

    Every text (title, headings, paragraphs, captions, alt texts, table cells) goes through
    :func:`escape_markdown`; a heading or a table cell is one line.
    """
    esc = escape_markdown
    out = [f"# {_one_line(title)}", ""]
    for block in blocks:
        if isinstance(block, Heading):
            out += ["#" * block.level + " " + _one_line(block.text), ""]
        elif isinstance(block, Text):
            out += [f"*{esc(block.text)}*" if block.note else esc(block.text), ""]
        elif isinstance(block, Table):
            if block.caption:
                out += [f"**{_one_line(block.caption)}**", ""]
            out += [_markdown_table(block.frame), ""]
        elif isinstance(block, Image):
            out += [f"![{_one_line(block.alt)}]({figure_dir}/{block.png.name})", "",
                    esc(block.caption), ""]  # fmt: skip
    return "\n".join(out).rstrip("\n") + "\n"


def _one_line(text) -> str:
    """Escaped Markdown with newlines turned into spaces (headings, cells, alt texts)."""
    return escape_markdown(" ".join(str(text).splitlines()), block=False)


def to_html(blocks: list, title: str) -> str:
    """The report as one self-contained HTML page (inline CSS, base64 PNG images)."""
    esc = html.escape
    body = [f"<h1>{esc(title)}</h1>"]
    for block in blocks:
        if isinstance(block, Heading):
            level = min(max(block.level, 2), 6)
            body.append(f"<h{level}>{esc(block.text)}</h{level}>")
        elif isinstance(block, Text):
            cls = ' class="note"' if block.note else ""
            body.append(f"<p{cls}>{esc(block.text)}</p>")
        elif isinstance(block, Table):
            body.append(_html_table(block.frame, block.caption))
        elif isinstance(block, Image):
            data = base64.b64encode(block.png.read_bytes()).decode("ascii")
            body.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{esc(block.alt)}">'
                f"<figcaption>{esc(block.caption)}</figcaption></figure>"
            )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def _markdown_table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(_one_line(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(_one_line(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def _html_table(frame: pd.DataFrame, caption: str) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(str(c))}</th>" for c in frame.columns)
    rows = "".join(
        "<tr>" + "".join(_html_cell(str(v)) for v in row) + "</tr>" for row in frame.itertuples(index=False)
    )
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _html_cell(text: str) -> str:
    """A table cell: numbers (and ranges, p-values, dashes) right-aligned, text left-aligned."""
    cls = "" if _NUMERIC.fullmatch(text) else ' class="text"'
    return f"<td{cls}>{html.escape(text)}</td>"
