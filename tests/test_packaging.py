"""What ``pip install`` puts in place: one version, an SPDX license, the manual page that the
systemd unit's Documentation= names."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

import bridge
from bridge.manpage import render

ROOT = Path(__file__).parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
MANPAGE = ROOT / "man" / "snom-blf-bridge.1"
UNIT = ROOT / "systemd" / "snom-blf-bridge.service"


def test_the_shipped_manual_page_is_the_one_the_cli_generates() -> None:
    assert MANPAGE.read_text() == render(), "run: python -m bridge.manpage > man/snom-blf-bridge.1"


def test_the_manual_page_describes_every_command() -> None:
    page = MANPAGE.read_text()
    for command in ("run", "status", "led", "check-config", "snom-keys"):
        assert f".B {command}\n" in page
    assert r"\-\-phone" in page and "JOURNAL_STREAM" in page


def test_one_version_source() -> None:
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    attr = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "bridge.__version__"
    assert importlib.metadata.version("snom-blf-bridge") == bridge.__version__


def test_the_license_is_an_spdx_expression_with_its_file() -> None:
    project = PYPROJECT["project"]
    assert project["license"] == "MIT"  # a table is deprecated by setuptools (PEP 639)
    assert all((ROOT / name).is_file() for name in project["license-files"])


def test_documentation_names_the_installed_manual_page() -> None:
    unit = UNIT.read_text()
    docs = re.search(r"^Documentation=(.*)$", unit, re.M)
    exec_start = re.search(r"^ExecStart=(\S+)/bin/snom-blf-bridge ", unit, re.M)
    assert docs and exec_start
    installed = PYPROJECT["tool"]["setuptools"]["data-files"]
    assert installed["share/man/man1"] == ["man/snom-blf-bridge.1"]
    # The file: URL is where pip puts the page in the venv ExecStart runs from.
    prefix = exec_start[1]
    assert docs[1].split() == [
        "man:snom-blf-bridge(1)", f"file://{prefix}/share/man/man1/snom-blf-bridge.1"
    ]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_finds_the_manual_page_the_unit_names(tmp_path: Path) -> None:
    unit = tmp_path / UNIT.name
    unit.write_text(re.sub(r"^ExecStart=\S+", "ExecStart=/bin/true", UNIT.read_text(), flags=re.M))
    (tmp_path / "man" / "man1").mkdir(parents=True)
    shutil.copy(MANPAGE, tmp_path / "man" / "man1")

    def verify(manpath: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["systemd-analyze", "verify", "--man=yes", str(unit)],
            capture_output=True, text=True, timeout=60, check=False,
            env={**os.environ, "MANPATH": str(manpath)},
        )  # fmt: skip

    assert verify(tmp_path / "man").returncode == 0
    missing = verify(tmp_path / "elsewhere")  # the check can fail: without the page it does
    assert missing.returncode != 0 and "snom-blf-bridge(1)" in missing.stderr
