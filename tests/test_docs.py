"""Every `samsbench ...` command in the docs' code blocks (README.md, docs/*.md; fenced or
indented) parses with the options it shows: a renamed or newly required option fails here."""

import re
import shlex
from pathlib import Path

import pytest

from samsbench import cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _code_lines(text: str):
    """Lines of fenced blocks and of 4-space indented blocks, continuations joined."""
    lines, fenced, out = text.splitlines(), False, []
    for i, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        indented = line.startswith("    ") and (i == 0 or not lines[i - 1].strip()
                                                or lines[i - 1].startswith("    "))
        if fenced or indented:
            out.append(line.strip())
    joined = "\n".join(out).replace("\\\n", " ")
    return joined.splitlines()


def commands():
    found = []
    for path in DOCS:
        for line in _code_lines(path.read_text()):
            if re.match(r"samsbench \w", line):
                found.append(pytest.param(line, id=f"{path.name}: {line[:60]}"))
    return found


@pytest.mark.parametrize("line", commands())
def test_documented_command_parses(line):
    # optional parts written [--opt VALUE] are parsed too
    words = shlex.split(line.split(" #")[0].replace("[", "").replace("]", ""))[1:]
    try:
        cli.build_parser().parse_args(words)
    except SystemExit as e:
        pytest.fail(f"`{line}` does not parse (exit {e.code})")


def test_the_docs_show_commands():
    assert len(commands()) >= 8


def test_no_citation_of_notes_outside_the_repository():
    # the design notes (DESIGN.md, reference/models.md, data_and_evaluation.md) are not shipped
    cited = re.compile(r"\b(models\.md|data_and_evaluation\.md|DESIGN\.md)")
    files = [*DOCS, ROOT / "config.yaml", *(ROOT / "workflow").rglob("*.py"),
             *(ROOT / "workflow").rglob("*.smk"), *(ROOT / "workflow").rglob("*.rst")]
    bad = [f"{p.relative_to(ROOT)}:{i}" for p in files
           for i, line in enumerate(p.read_text().splitlines(), 1) if cited.search(line)]
    assert not bad, bad
