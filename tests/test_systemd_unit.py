"""The shipped unit: systemd accepts it, and its sandbox stays tight."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bridge.config import SipConfig, load
from bridge.sip.listener import OTHER_DESCRIPTORS
from bridge.sip.transport import RESPONSE_BUFFER, UDP_BUFFER

ROOT = Path(__file__).parent.parent
UNIT = ROOT / "systemd" / "snom-blf-bridge.service"
MAX_EXPOSURE = 3.0

needs_systemd = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def test_the_shipped_sysctl_lets_the_unprivileged_unit_have_the_buffers_it_asks_for() -> None:
    """The unit has no CAP_NET_ADMIN: without net.core.[rw]mem_max this high the kernel cuts
    the bridge's socket buffers and the answers to a big fan-out cannot all wait."""
    lines = (ROOT / "systemd" / "snom-blf-bridge.sysctl").read_text().splitlines()
    values = {
        name.strip(): int(value)
        for name, _, value in (line.partition("=") for line in lines)
        if value.strip() and not name.lstrip().startswith("#")
    }
    assert values["net.core.rmem_max"] >= max(RESPONSE_BUFFER, UDP_BUFFER)
    assert values["net.core.wmem_max"] >= UDP_BUFFER
    assert "AmbientCapabilities=\n" in UNIT.read_text()  # why the file is needed at all
    readme = (ROOT / "README.md").read_text()
    assert "systemd/snom-blf-bridge.sysctl /etc/sysctl.d/" in readme  # and it is installed


def test_the_descriptor_limit_holds_the_connection_cap() -> None:
    found = re.search(r"^LimitNOFILE=(\d+)$", UNIT.read_text(), flags=re.MULTILINE)
    assert found, "the unit must size the descriptor limit for sip.max_connections"
    shipped = load(ROOT / "etc" / "snom-blf-bridge.toml").sip.max_connections
    for cap in (shipped, SipConfig().max_connections):
        assert cap and cap + OTHER_DESCRIPTORS <= int(found[1])


def _installable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart's program replaced by /bin/true: verify insists that it exists,
    and the bridge is not installed under /opt here. The arguments stay as shipped."""
    text = UNIT.read_text()
    patched, n = re.subn(r"^ExecStart=\S+", "ExecStart=/bin/true", text, flags=re.MULTILINE)
    assert n == 1
    copy = tmp_path / UNIT.name
    copy.write_text(patched)
    return copy


@needs_systemd
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


@needs_systemd
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
