"""The documentation holds together: README is a front door, and every link in it and in docs/ resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import REPO_ROOT

README_MAX_LINES = 250
# [text](target) outside code: the target up to the closing parenthesis (no spaces in our targets).
LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def _pages() -> list[Path]:
    return [REPO_ROOT / "README.md", REPO_ROOT / "CHANGELOG.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    body = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", body, re.MULTILINE)}


def _links(page: Path) -> list[str]:
    body = INLINE_CODE.sub("", FENCE.sub("", page.read_text(encoding="utf-8")))
    return LINK.findall(body)


def _broken(page: Path) -> list[str]:
    broken = []
    for target in _links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.exists():
            broken.append(f"{page.name}: {target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{page.name}: {target} (no such heading)")
    return broken


def test_readme_is_a_front_door() -> None:
    lines = (REPO_ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail to docs/"
    # The two commands on a fresh machine come first, and every guide is one link away.
    text = "\n".join(lines)
    assert text.index("make demo") < text.index("## A five-minute tour")
    for page in sorted((REPO_ROOT / "docs").glob("*.md")):
        assert f"(docs/{page.name})" in text, f"README does not link docs/{page.name}"


@pytest.mark.parametrize("page", _pages(), ids=lambda p: p.relative_to(REPO_ROOT).as_posix())
def test_every_link_resolves(page: Path) -> None:
    assert _broken(page) == []


def test_the_link_check_sees_a_broken_link_and_a_missing_heading(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Real heading\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md) [ok](other.md#real-heading) [web](https://example.org/x)\n"
        "[gone](missing.md) [bad](other.md#no-such) `[code](ignored.md)`\n"
        "```\n[fenced](ignored-too.md)\n```\n"
    )
    assert _broken(page) == ["page.md: missing.md (no such file)", "page.md: other.md#no-such (no such heading)"]
