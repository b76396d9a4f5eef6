"""The repository's documents point at what exists: every relative link in a Markdown file names a
file that is there (and a heading of it, for an anchor), and every comment, docstring or document
that cites a section of ``docs/*.md`` by name names a section or entry that document has. Sections
move between documents (docs/performance-journal.md took performance.md's dated measurements);
a citation left behind would send a reader to nothing."""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

_LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
_CITATION = re.compile(r'docs/([\w.-]+\.md)(?: §\d+)?,? "([^"]{2,150})"')
_NUMBERED = re.compile(r"\b([\w-]+\.md) §(\d+)")
# A line break inside a comment, docstring or paragraph, with what starts the next line of a
# comment: a citation may be wrapped anywhere.
_WRAP = re.compile(r"[ \t]*\n[ \t]*(?:#+[ \t]*|--[ \t]*)?")
# What may open the line that holds a cited section or entry: a heading's marks and number, a
# list item's dash, bold.
_OPENING = re.compile(r"^(?:#+\s*|\d+\.\s+|-\s+|\*\*)+")


def _tracked(*patterns: str) -> list[Path]:
    """The repository's files matching ``patterns``: git's list of them or, outside a git
    checkout (an unpacked archive), every such file outside hidden and generated folders."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--", *patterns],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        found = {path for pattern in patterns for path in REPO.rglob(pattern)}
        return sorted(path for path in found if path.is_file() and not _generated(path))
    return [REPO / name for name in listed if (REPO / name).is_file()]


_GENERATED = frozenset({".venv", "node_modules", "__pycache__", "data"})


def _generated(path: Path) -> bool:
    folders = path.relative_to(REPO).parts[:-1]
    return any(folder.startswith(".") or folder in _GENERATED for folder in folders)


def _markdown() -> list[Path]:
    return _tracked("*.md")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but hyphens and underscores
    dropped, spaces as hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@cache
def _headings(path: Path) -> frozenset[str]:
    lines = path.read_text().splitlines()
    return frozenset(_slug(line.lstrip("#")) for line in lines if re.match(r"#{1,6} ", line))


@cache
def _entries(path: Path) -> tuple[str, ...]:
    """Each line of a document with its heading marks, number, dash and bold taken off."""
    return tuple(_OPENING.sub("", line.strip()) for line in path.read_text().splitlines())


def _broken_links(path: Path) -> list[str]:
    broken = []
    text = path.read_text()
    # Code spans and blocks show links; they are not links.
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    for target in _LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue  # https:, mailto: and the like
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in _headings(linked):
            broken.append(f"{target}: no such heading")
    return broken


@pytest.mark.parametrize("path", _markdown(), ids=lambda path: str(path.relative_to(REPO)))
def test_every_relative_link_names_a_file_and_heading_that_exist(path: Path) -> None:
    assert _broken_links(path) == []


def test_every_cited_section_of_a_document_exists() -> None:
    missing = []
    for path in _tracked("*.py", "*.md", "*.sql"):
        text = _WRAP.sub(" ", path.read_text())
        for name, title in _CITATION.findall(text):
            document = REPO / "docs" / name
            if not document.exists():
                missing.append(f"{path.relative_to(REPO)}: docs/{name} does not exist")
            elif not any(entry.startswith(title) for entry in _entries(document)):
                missing.append(f'{path.relative_to(REPO)}: docs/{name} has no "{title}"')
    assert missing == []


def test_every_cited_section_number_exists() -> None:
    missing = []
    for path in _tracked("*.py", "*.md", "*.sql"):
        for name, number in _NUMBERED.findall(_WRAP.sub(" ", path.read_text())):
            document = REPO / "docs" / name
            numbered = re.compile(rf"#{{1,6}} {number}\. ", re.M)
            if document.exists() and not numbered.search(document.read_text()):
                missing.append(f"{path.relative_to(REPO)}: docs/{name} has no §{number}")
    assert missing == []


def test_a_citation_of_a_missing_section_is_found(tmp_path: Path) -> None:
    """The check above can fail: a moved section is reported, a present one is not."""
    document = tmp_path / "guide.md"
    document.write_text("# Guide\n\n## 2. Kept here\n\n- **A bold entry**: text.\n")
    _entries.cache_clear()
    try:
        entries = _entries(document)
        assert any(entry.startswith("Kept here") for entry in entries)
        assert any(entry.startswith("A bold entry") for entry in entries)
        assert not any(entry.startswith("Moved away") for entry in entries)
    finally:
        _entries.cache_clear()
    # Put together here, so that the scan above does not take this file's example as a citation.
    source = "x = 1  # see (docs/" + 'guide.md, "Moved\n    # away") for why\n'
    assert _CITATION.findall(_WRAP.sub(" ", source)) == [("guide.md", "Moved away")]
    page = tmp_path / "page.md"
    page.write_text("[ok](guide.md#2-kept-here) [gone](guide.md#moved-away) [none](nothing.md)\n")
    assert _broken_links(page) == [
        "guide.md#moved-away: no such heading",
        "nothing.md: no such file",
    ]
