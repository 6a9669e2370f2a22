"""Every relative link of the project's Markdown (README, docs/, tools/RESULTS.md, configs/) points to
a file or folder that exists, and a link's ``#anchor`` into a Markdown file names one of its headings
(GitHub's slug) or an ``<a id>``: a newcomer following the README never lands on a missing page."""
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SKIP_DIRS = {"runs", "node_modules", "__pycache__"}  # besides hidden folders (.venv, .git)
SKIP_UNDER = {ROOT / "tools" / "results"}  # raw outputs, kept as the runs wrote them
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")


def markdown_files() -> list[Path]:
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS
                   and Path(folder, d) not in SKIP_UNDER]
        found += [Path(folder, f) for f in files if f.endswith(".md")]
    return sorted(found)


def outside_code(text: str) -> list[str]:
    """The lines of ``text`` outside fenced code blocks, inline code spans blanked."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(re.sub(r"`[^`]*`", "", line))
    return lines


def anchors(path: Path) -> set[str]:
    """GitHub's heading slugs (lower case, punctuation dropped, spaces to hyphens, repeats numbered)
    and the explicit ``<a id>`` anchors of a Markdown file."""
    found, seen = set(), {}
    for line in outside_code(path.read_text()):
        found.update(ANCHOR.findall(line))
        heading = HEADING.match(line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            found.add(f"{slug}-{seen[slug]}" if seen.get(slug) else slug)
            seen[slug] = seen.get(slug, 0) + 1
    return found


def broken_links(path: Path) -> list[str]:
    """``path``'s relative links whose target file, folder or anchor does not exist."""
    broken = []
    for line in outside_code(path.read_text()):
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            if not dest.exists():
                broken.append(f"{target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{target} (no heading or anchor '{anchor}' in {dest.name})")
    return broken


def test_the_checker_reports_a_missing_file_and_a_missing_anchor(tmp_path):
    (tmp_path / "b.md").write_text("# Real heading\n\n<a id=\"kept\"></a>\n")
    page = tmp_path / "a.md"
    page.write_text("[ok](b.md#real-heading) [ok](b.md#kept) [x](missing.md) [y](b.md#nope) "
                    "`[code](not-a-link.md)` [web](https://example.org)\n")
    assert broken_links(page) == ["missing.md (no such file)", "b.md#nope (no heading or anchor 'nope' in b.md)"]


def test_the_readme_and_docs_are_checked():
    names = {p.relative_to(ROOT).as_posix() for p in markdown_files()}
    assert {"README.md", "tools/RESULTS.md", "docs/PLUGINS.md"} <= names


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(path):
    assert broken_links(path) == [], f"{path.relative_to(ROOT)}: broken links"
