"""A phone speaking SIP over TCP or TLS from raw asyncio streams, for what SIPp cannot do here
(the Debian SIPp has no TLS) or cannot script (drop its connection, then take one from the
bridge on its Contact port).

Messages are cut and read with regular expressions, independently of the bridge's own parser.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["SipMessage", "StreamPhone", "read_message"]

_LENGTH_RE = re.compile(r"^(?:Content-Length|l)\s*:\s*(\d+)\s*$", re.M | re.I)


@dataclass(frozen=True)
class SipMessage:
    """One message as read off a stream: head (start line and headers) and body."""

    head: str
    body: bytes

    @property
    def start_line(self) -> str:
        return self.head.split("\r\n", 1)[0]

    def header(self, name: str) -> str | None:
        """The first value of a header (full name, any case), or None."""
        found = re.search(rf"^{re.escape(name)}\s*:\s*(.*?)\s*$", self.head, re.M | re.I)
        return found[1] if found else None


async def read_message(reader: asyncio.StreamReader, within: float = 5.0) -> SipMessage:
    """The next message on a stream (CRLF keep-alives before it skipped)."""
    async with asyncio.timeout(within):
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        head = head.lstrip("\r\n")
        found = _LENGTH_RE.search(head)
        body = await reader.readexactly(int(found[1])) if found else b""
    return SipMessage(head, body)


class StreamPhone:
    """Subscribes over a connection of its own (from a port the kernel picks) and listens on
    another port, named in its Contact, for connections the bridge opens to it."""

    def __init__(
        self,
        bridge: tuple[str, int],
        transport: Literal["tcp", "tls"],
        *,
        certificate: tuple[Path, Path] | None = None,
        user: str = "203",
    ) -> None:
        self.bridge = bridge
        self.transport = transport
        self.user = user
        self.call_id = secrets.token_hex(8)
        self.tag = secrets.token_hex(4)
        self.cseq = 0
        self._server_tls: ssl.SSLContext | None = None
        self._client_tls: ssl.SSLContext | None = None
        if transport == "tls":
            assert certificate is not None, "a TLS phone needs a certificate to listen with"
            cert, key = certificate
            self._server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._server_tls.load_cert_chain(str(cert), str(key))
            self._client_tls = ssl.create_default_context(cafile=str(cert))
            self._client_tls.check_hostname = False  # the certificate names localhost
        self.contact_port = 0
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.dialed: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.Queue()
        )
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> StreamPhone:
        self._server = await asyncio.start_server(
            lambda r, w: self.dialed.put_nowait((r, w)), "127.0.0.1", 0, ssl=self._server_tls
        )
        self.contact_port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.hang_up()
        while not self.dialed.empty():
            self.dialed.get_nowait()[1].close()
        if self._server is not None:
            self._server.close()

    async def connect(self) -> tuple[str, int]:
        """Open the phone's own connection to the bridge; returns its local address."""
        self.reader, self.writer = await asyncio.open_connection(
            *self.bridge, ssl=self._client_tls
        )
        host, port = self.writer.get_extra_info("sockname")[:2]
        return str(host), int(port)

    def hang_up(self) -> None:
        """Close the phone's own connection."""
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    def subscribe(self, resource: str = "202", expires: int = 600) -> None:
        """Send a SUBSCRIBE for ``resource`` on the phone's own connection."""
        assert self.writer is not None, "connect() first"
        host, port = self.writer.get_extra_info("sockname")[:2]
        self.cseq += 1
        proto = self.transport.upper()
        self.writer.write(
            (
                f"SUBSCRIBE sip:{resource}@pbx.test SIP/2.0\r\n"
                f"Via: SIP/2.0/{proto} {host}:{port};branch=z9hG4bK{secrets.token_hex(6)};rport\r\n"
                f"From: <sip:{self.user}@pbx.test>;tag={self.tag}\r\n"
                f"To: <sip:{resource}@pbx.test>\r\nCall-ID: {self.call_id}\r\n"
                f"CSeq: {self.cseq} SUBSCRIBE\r\n"
                f"Contact: <sip:{self.user}@127.0.0.1:{self.contact_port};"
                f"transport={self.transport}>\r\n"
                f"Event: dialog\r\nExpires: {expires}\r\nContent-Length: 0\r\n\r\n"
            ).encode()
        )

    @staticmethod
    def answer(writer: asyncio.StreamWriter, request: SipMessage, status: int = 200) -> None:
        """Answer a request the bridge sent (a NOTIFY), copying what a response must copy."""
        lines = [f"SIP/2.0 {status} OK"]
        for name in ("Via", "From", "To", "Call-ID", "CSeq"):
            value = request.header(name)
            assert value is not None, f"no {name} in {request.head}"
            lines.append(f"{name}: {value}")
        writer.write(("\r\n".join([*lines, "Content-Length: 0"]) + "\r\n\r\n").encode())

    async def notify(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, within: float = 5.0
    ) -> SipMessage:
        """The next NOTIFY on a connection, answered 200 (responses before it are skipped)."""
        async with asyncio.timeout(within):
            while True:
                message = await read_message(reader, within)
                if message.start_line.startswith("NOTIFY "):
                    self.answer(writer, message)
                    return message
