"""The Asterisk releases the tests replay: one ``tests/fixtures/asterisk-<release>/`` folder each,
recorded on the lab with the same scenarios (see docs/COMPATIBILITY.md). A test that shows how
Asterisk behaves is parametrized over them, so a release that behaves differently fails its own
case; ``22.10.1`` is the reference, recorded with every scenario.
"""

from __future__ import annotations

from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE = "22.10.1"


def _order(release: str) -> tuple[int | str, ...]:
    """22.11.0-rc1 sorts after 22.10.1 and before 23.4.1."""
    return tuple(int(p) if p.isdigit() else p for p in release.replace("-", ".").split("."))


RELEASES = tuple(
    sorted(
        (p.name.removeprefix("asterisk-") for p in FIXTURES.glob("asterisk-*") if p.is_dir()),
        key=_order,
    )
)


def recordings(release: str = REFERENCE) -> Path:
    """The folder of one release's recordings."""
    return FIXTURES / f"asterisk-{release}"


def release_cases(*scenarios: str) -> list[tuple[str, str]]:
    """(release, scenario) for every release that recorded the scenario."""
    return [(release, scenario) for release in RELEASES for scenario in scenarios
            if (recordings(release) / scenario / "ami-wire.jsonl").is_file()]  # fmt: skip


def releases_with(scenario: str) -> list[str]:
    """The releases that recorded ``scenario``."""
    return [release for release, _ in release_cases(scenario)]
