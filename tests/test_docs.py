"""The code's pointers into docs/ lead somewhere, and nothing cites notes the repository lacks."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
CITED = re.compile(r"docs/([A-Za-z_]+\.md)")
MARKDOWN_LINK = re.compile(r"\]\(([A-Za-z_]+\.md)(#[a-z0-9-]+)?\)")
# Pages other helpers of step 14 write, which the README and docs/OPERATIONS.md link: the lead
# merges them together (then this goes).
PENDING = ("COMPATIBILITY",)
WRITTEN_ELSEWHERE = {f"docs/{name}.md" for name in PENDING}


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
            if f"docs/{target}" in WRITTEN_ELSEWHERE and not linked.exists():
                continue
            assert linked.exists(), f"{page.name} links to a missing {target}"
            if fragment:
                headings = [line.lstrip("#") for line in linked.read_text().splitlines()
                            if line.startswith("#")]  # fmt: skip
                assert fragment in map(anchor, headings), f"{page.name}: {target}{fragment}"


# ----------------------------------------------------------------- the README, for a newcomer

README = ROOT / "README.md"
README_LINK = re.compile(r"\]\((docs/[A-Za-z_-]+\.md|[A-Z]+)(#[a-z0-9-]+)?\)")


def test_the_readme_is_short() -> None:
    assert len(README.read_text(encoding="utf-8").splitlines()) < 250


def test_every_page_the_readme_links_exists() -> None:
    links = {target for target, _ in README_LINK.findall(README.read_text(encoding="utf-8"))}
    assert {"docs/CONFIGURATION.md", "docs/OPERATIONS.md", "docs/SECURITY.md", "docs/LEDS.md",
            "docs/SCALE-OUT.md", "docs/PERFORMANCE.md"} <= links  # fmt: skip
    assert links >= WRITTEN_ELSEWHERE  # the "Phones and sites" and "Reference" lists name them
    missing = sorted(t for t in links - WRITTEN_ELSEWHERE if not (ROOT / t).exists())
    assert missing == []


def test_the_install_configures_before_it_starts_and_ends_with_the_live_check() -> None:
    text = README.read_text(encoding="utf-8")
    install = text[text.index("## Install on an Asterisk host"):text.index("## Phones and sites")]
    order = [install.index(step) for step in (
        "enabled = yes", "manager reload", "manager show user", "pickup_group = 1",
        "pip install", 'username = "blf-bridge"', "snom-blf-bridge check-config",
        "enable --now", "filter_registrar", "snom-blf-bridge check-site",
    )]  # fmt: skip
    assert order == sorted(order)
    assert "write = system,call" in install


def test_every_command_the_readme_shows_is_one_the_bridge_has() -> None:
    from bridge.__main__ import _parser  # noqa: PLC0415

    known = set(_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    shown = set(re.findall(r"snom-blf-bridge ([a-z][a-z-]+)", README.read_text(encoding="utf-8")))
    shown -= {"venv", "service", "bridge"}  # paths and names: /opt/snom-blf-bridge/venv, …
    assert shown and shown <= known, shown - known
