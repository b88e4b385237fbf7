"""The code's pointers into docs/ lead somewhere, and nothing cites notes the repository lacks."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
CITED = re.compile(r"docs/([A-Za-z_]+\.md)")
MARKDOWN_LINK = re.compile(r"\]\(([A-Za-z_]+\.md)(#[a-z0-9-]+)?\)")


def sources() -> list[Path]:
    return [p for d in ("bridge", "tests", "benchmarks") for p in (ROOT / d).rglob("*.py")]


def anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return "#" + text.replace(" ", "-")


def test_every_docs_file_the_code_cites_exists() -> None:
    cited = {name for p in sources() for name in CITED.findall(p.read_text(encoding="utf-8"))}
    assert cited >= {"ASTERISK.md", "PICKUP.md", "SNOM.md"}
    assert sorted(n for n in cited if not (ROOT / "docs" / n).exists()) == []


def test_no_comment_cites_the_notes_the_repository_does_not_have() -> None:
    citing = [p.name for p in sources() if "FACTS" + ".md" in p.read_text(encoding="utf-8")]
    assert citing == []


def test_links_between_the_docs_lead_to_a_file_and_heading() -> None:
    for page in (ROOT / "docs").glob("*.md"):
        for target, fragment in MARKDOWN_LINK.findall(page.read_text(encoding="utf-8")):
            linked = ROOT / "docs" / target
            assert linked.exists(), f"{page.name} links to a missing {target}"
            if fragment:
                headings = [line.lstrip("#") for line in linked.read_text().splitlines()
                            if line.startswith("#")]  # fmt: skip
                assert fragment in map(anchor, headings), f"{page.name}: {target}{fragment}"
