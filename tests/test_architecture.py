"""The shape of the package, read from its source with ast: no import circle, the product never
reaches the demo PBX, and the core stays free of I/O and clocks."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "bridge"
# The only modules that may bring in the demo PBX: the command line, its factory, and the man
# page written from the command line's parser.
DEMO_PICKERS = {"bridge.__main__", "bridge.demo_pbx", "bridge.manpage"}
# What would make the core wait, read a clock or touch a socket.
NOT_IN_CORE = {"asyncio", "socket", "time", "selectors", "threading", "aiohttp", "panoramisk"}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module a file imports (top-level names, TYPE_CHECKING and function bodies too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            # ``from bridge import settings`` imports the module bridge.settings
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module → the modules of the package it imports."""
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    return {
        name: {m for m in imports_of(path) if m in modules and m != name}
        for name, path in modules.items()
    }


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The import circles (strongly connected components of more than one module, or a module
    importing itself), each as its members in order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            members = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                members.append(member)
                if member == node:
                    break
            if len(members) > 1 or node in edges.get(node, ()):
                found.append(sorted(members))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in edges.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_package_has_no_import_circle() -> None:
    assert circles(graph()) == []


def test_the_product_never_imports_the_demo_pbx() -> None:
    edges = graph()
    demo = {m for m in edges if m == "bridge.demo" or m.startswith("bridge.demo.")}
    offenders = {
        name: sorted(reachable(edges, name) & demo)
        for name in edges
        if name not in demo and name not in DEMO_PICKERS and reachable(edges, name) & demo
    }
    assert offenders == {}
    assert "bridge.demo_pbx" not in reachable(edges, "bridge.app")


def test_the_core_imports_no_io_and_no_clock() -> None:
    imported = {name.partition(".")[0] for name in imports_of(PACKAGE / "core.py")}
    assert imported & NOT_IN_CORE == set()
    assert "bridge.app" not in reachable(graph(), "bridge.core")


def test_the_app_is_glue_of_under_300_lines() -> None:
    assert len((PACKAGE / "app.py").read_text().splitlines()) < 300


# The checks themselves must be able to fail: a small package with the faults they look for.
@pytest.fixture
def crooked(tmp_path: Path) -> Path:
    root = tmp_path / "bridge"
    (root / "demo").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "app.py": "from bridge.status import View\nfrom bridge.demo import server\n",
        "status.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    from bridge.app import Bridge\n",
        "core.py": "import time\nfrom bridge import app\n",
        "demo/__init__.py": "",
        "demo/server.py": "import asyncio\n",
    }
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def test_the_checks_see_a_circle_a_demo_import_and_a_clock(crooked: Path) -> None:
    edges = graph(crooked)
    assert circles(edges) == [["bridge.app", "bridge.status"]]
    assert "bridge.demo.server" in reachable(edges, "bridge.core")
    assert "time" in imports_of(crooked / "core.py")


def test_nothing_the_core_imports_does_io_either() -> None:
    """Not only core.py: every module of the package it reaches is free of I/O and clocks, so
    the core stays drivable by a fake clock however its parts grow."""
    edges = graph()
    offenders = {
        name: sorted({m.partition(".")[0] for m in imports_of(module_path(name))} & NOT_IN_CORE)
        for name in reachable(edges, "bridge.core") | {"bridge.core"}
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def module_path(name: str) -> Path:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
