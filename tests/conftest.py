"""Fixtures shared by the test files: the replayed Asterisk and a TLS certificate.

``server`` is a RecordedAmiServer over tests/fixtures/asterisk-22.10.1, replayed at the module's
``AMI_REPLAY_SPEED`` (0, the default: as fast as the events come; 4: recorded gaps of 2-3 s
shrink to 0.5-0.75 s, so every state a phone sees gets its own NOTIFY).
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.demo.ami_server import RecordedAmiServer

RECORDINGS = Path(__file__).parent / "fixtures" / "asterisk-22.10.1"


@pytest.fixture
async def server(request: pytest.FixtureRequest) -> AsyncIterator[RecordedAmiServer]:
    """Asterisk 22.10.1 as recorded: an AMI server on a free loopback port."""
    speed = float(getattr(request.module, "AMI_REPLAY_SPEED", 0))
    async with RecordedAmiServer(RECORDINGS, speed=speed) as srv:
        yield srv


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A fresh self-signed certificate for localhost and its key (PEM files)."""
    cert, key = tmp_path / "bridge.crt", tmp_path / "bridge.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key
