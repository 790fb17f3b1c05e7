"""The docs stay honest: README.md and docs/*.md name only what the repository holds.

Every relative link points at a file or folder of the repository (and a ``#anchor`` at a
heading of the linked page), no link or path leaves the repository (a reader has only the
repository), every path a document names in code (``gateway/cache/keys.py``) exists, and
every ``make <target>`` they name is a target of the Makefile.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

ROOT: Final = Path(__file__).resolve().parent.parent
DOCS: Final = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^[ \t]*(```|~~~).*?^[ \t]*\1[ \t]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.MULTILINE)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
MAKE = re.compile(r"(?:^|[\s;&|(`$])make\s+((?:[A-Z_]+=\S*\s+)*)([a-z][a-z0-9-]*)", re.MULTILINE)
# A repository path named in code: top-level folders git tracks, then plain path segments.
TRACKED_TOP: Final = (
    ".ci",
    ".github",
    "deploy",
    "docs",
    "gateway",
    "helm",
    "loadtest",
    "localstack",
    "nginx",
    "tests",
    "worker",
)
# Written by a run, never committed (git ignores the rest of what runs write).
RUN_OUTPUTS: Final = frozenset({"loadtest/results/bench-triton.json"})
REPO_PATH = re.compile(r"^[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)+/?$")


def _without_code(text: str) -> str:
    """The prose of a page: fenced blocks and code spans blanked (links in code are text)."""
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    return CODE_SPAN.sub(lambda m: " " * len(m.group(0)), text)


def _code(text: str) -> Iterator[str]:
    """Every code span and every fenced block's lines, comments left out."""
    for block in FENCE.finditer(text):
        for line in block.group(0).splitlines()[1:-1]:
            yield re.sub(r"(^|\s)#.*$", "", line)  # a shell comment is prose
    for span in CODE_SPAN.finditer(FENCE.sub("", text)):
        yield span.group(2).strip()


def _links(text: str) -> list[str]:
    prose = _without_code(text)
    return [m.group(1) for m in LINK.finditer(prose)] + [
        m.group(1) for m in REFERENCE.finditer(prose)
    ]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation out, spaces to -."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors: set[str] = set()
    for match in HEADING.finditer(FENCE.sub("", page.read_text(encoding="utf-8"))):
        slug = _slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def _ignored(name: str) -> bool:
    """A path git ignores: what a run writes (loadtest/runs/), named as where to look."""
    check = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", name], check=False)
    return check.returncode == 0


def _makefile_targets() -> set[str]:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", makefile, re.MULTILINE))


@pytest.mark.parametrize("page", DOCS, ids=_name)
def test_every_relative_link_points_into_the_repository(page: Path) -> None:
    broken: list[str] = []
    for target in _links(page.read_text(encoding="utf-8")):
        if SCHEME.match(target):
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.is_relative_to(ROOT):
            broken.append(f"{target}: leaves the repository")
            continue
        name = resolved.relative_to(ROOT).as_posix()
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target}: no heading #{anchor} in {name}")
    assert not broken, f"{_name(page)}: {broken}"


@pytest.mark.parametrize("page", DOCS, ids=_name)
def test_paths_named_in_code_exist(page: Path) -> None:
    """`../shared/...` or a moved module named in backticks is as wrong as a broken link."""
    wrong: list[str] = []
    for code in _code(page.read_text(encoding="utf-8")):
        if code.strip().startswith("kubectl"):
            continue  # deploy/NAME there is a Deployment, not a folder
        if code.strip().startswith("../"):
            wrong.append(f"{code.strip()}: outside the repository")
            continue
        for word in code.split():
            word = word.strip("`'\"(),;:")
            if REPO_PATH.match(word) and word.split("/")[0] in TRACKED_TOP and "..." not in word:
                if word in RUN_OUTPUTS or (ROOT / word).exists() or _ignored(word):
                    continue
                wrong.append(f"{word}: no such path")
    assert not wrong, f"{_name(page)}: {wrong}"


@pytest.mark.parametrize("page", DOCS, ids=_name)
def test_every_make_target_named_exists(page: Path) -> None:
    targets = _makefile_targets()
    named = {
        m.group(2) for code in _code(page.read_text(encoding="utf-8")) for m in MAKE.finditer(code)
    }
    assert named <= targets, (
        f"{_name(page)} names make targets the Makefile lacks: {sorted(named - targets)}"
    )


def test_readme_names_make_targets() -> None:
    """The check above reads README's commands at all (a regex that matches nothing passes)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    named = {m.group(2) for code in _code(text) for m in MAKE.finditer(code)}
    assert {"up", "test", "down"} <= named


def test_link_and_anchor_helpers_read_markdown() -> None:
    """The checks above see links and headings at all (a parser that finds none passes)."""
    text = "See [a](docs/A.md#b), `[not](code.md)`, ![img](p.png).\n```\n[x](fenced.md)\n```\n"
    assert _links(text) == ["docs/A.md#b", "p.png"]
    kubernetes = _anchors(ROOT / "docs" / "KUBERNETES.md")
    assert "1-first-install-on-a-stock-managed-cluster-eks-gke-aks" in kubernetes
