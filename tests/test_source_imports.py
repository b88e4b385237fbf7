"""What the source adapters and the demo may import: the sources know the event types and the
shared device helpers, never the tracker or the rest of the core; the demo reads its recordings
itself, without the adapters."""

from __future__ import annotations

import ast
from pathlib import Path

BRIDGE = Path(__file__).parent.parent / "bridge"


def imported(path: Path) -> set[str]:
    """The bridge modules a file imports (``from bridge.x import y`` → ``bridge.x``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bridge"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("bridge"))
    return found


def test_sources_import_only_events_devices_and_each_other() -> None:
    for path in sorted((BRIDGE / "asterisk").glob("*.py")):
        foreign = {
            m for m in imported(path)
            if m not in ("bridge.events", "bridge.devices") and not m.startswith("bridge.asterisk")
        }  # fmt: skip
        assert foreign == set(), f"{path.name} imports {sorted(foreign)}"


def test_the_demo_reads_its_recordings_itself() -> None:
    for path in sorted((BRIDGE / "demo").glob("*.py")):
        assert not {m for m in imported(path) if m.startswith("bridge.asterisk")}, path.name
    assert imported(BRIDGE / "demo" / "ari_server.py").isdisjoint({"bridge.demo.ami_server"})

