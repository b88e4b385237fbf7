"""The shipped unit: systemd accepts it, and its sandbox stays tight."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).parent.parent / "systemd" / "snom-blf-bridge.service"
MAX_EXPOSURE = 3.0

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def _installable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart's program replaced by /bin/true: verify insists that it exists,
    and the bridge is not installed under /opt here. The arguments stay as shipped."""
    text = UNIT.read_text()
    patched, n = re.subn(r"^ExecStart=\S+", "ExecStart=/bin/true", text, flags=re.MULTILINE)
    assert n == 1
    copy = tmp_path / UNIT.name
    copy.write_text(patched)
    return copy


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    unit = _installable_copy(tmp_path)
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    # Unknown keys and values that do not parse are only warnings (exit 0): fail on any line
    # about our unit as well.
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if UNIT.name in line]
    assert done.returncode == 0, done.stderr
    assert complaints == []


def test_security_exposure_is_low(tmp_path: Path) -> None:
    unit = _installable_copy(tmp_path)
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    found = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", done.stdout)
    assert found, done.stdout
    exposure = float(found.group(1))
    print(f"systemd-analyze security: overall exposure {exposure}")
    assert exposure <= MAX_EXPOSURE, done.stdout
