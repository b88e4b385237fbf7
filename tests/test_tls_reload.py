"""A renewed TLS certificate is taken on reload (SIGHUP, ``systemctl reload``), as ACME renews
it: same file names, new contents. The bridge runs as a real process."""

from __future__ import annotations

import asyncio
import shutil
import signal
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sipp import free_port
from test_app import RECORDINGS
from test_restart import BridgeProcess

from bridge.demo.ami_server import RecordedAmiServer


@pytest.fixture
async def server() -> AsyncIterator[RecordedAmiServer]:
    async with RecordedAmiServer(RECORDINGS, speed=4) as srv:
        yield srv


def make_certificate(directory: Path, name: str) -> tuple[Path, Path]:
    directory.mkdir()
    cert, key = directory / "bridge.crt", directory / "bridge.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def der(cert: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.read_text())


async def peer_certificate(port: int) -> tuple[bytes, asyncio.StreamWriter]:
    """A new TLS client's view of the bridge's certificate (and its open connection)."""
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE  # the test compares the certificate itself
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
    seen = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return seen, writer


async def test_a_renewed_certificate_is_taken_on_reload_and_a_broken_one_refused(
    server: RecordedAmiServer, tmp_path: Path
) -> None:
    first, second = make_certificate(tmp_path / "a", "first"), make_certificate(tmp_path / "b", "b")
    live = tmp_path / "live"
    live.mkdir()
    cert, key = live / "bridge.crt", live / "bridge.key"
    shutil.copy(first[0], cert)
    shutil.copy(first[1], key)
    tls_port = free_port()
    config = tmp_path / "bridge.toml"
    config.write_text(f'[sip]\ntls = ["127.0.0.1:{tls_port}"]\ntls_certificate = "{cert}"\n'
                      f'tls_key = "{key}"\n')  # fmt: skip
    bridge = BridgeProcess(config, free_port(), server.port, tmp_path / "s.sqlite3")
    try:
        await bridge.start()
        seen, old = await peer_certificate(tls_port)
        assert seen == der(first[0])
        # Renewed in place, the key first (as certbot's deploy hooks copy them).
        await asyncio.to_thread(shutil.copy, second[1], key)
        await asyncio.to_thread(shutil.copy, second[0], cert)
        assert bridge.process is not None
        bridge.process.send_signal(signal.SIGHUP)
        await bridge.wait_for("reload: new TLS connections use")
        seen, new = await peer_certificate(tls_port)
        assert seen == der(second[0])
        assert not old.is_closing()  # the connection made before keeps going
        # A broken certificate: refused with the setting named, the renewed one kept.
        await asyncio.to_thread(cert.write_text, "-----BEGIN CERTIFICATE-----\nbroken\n")
        bridge.process.send_signal(signal.SIGHUP)
        await bridge.wait_for("reload refused")
        assert "sip.tls_certificate / sip.tls_key: cannot load" in bridge.log
        seen, later = await peer_certificate(tls_port)
        assert seen == der(second[0])
        for writer in (old, new, later):
            writer.close()
        assert await bridge.end(signal.SIGTERM) == 0
    finally:
        await bridge.close()
    assert "Traceback" not in bridge.log
