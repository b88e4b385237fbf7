"""Listening sockets for SIP over TCP and TLS, and the file descriptors their connections take.

The listener accepts by itself (a reader callback on the socket) and hands every connection to
``StreamConnections.accepted`` before anything is read. When the process is out of descriptors
it says so once and rests instead of spinning on a listening socket that stays readable.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import socket
import ssl

from bridge.sip.access import StreamLimits
from bridge.sip.streams import StreamConnections
from bridge.sip.subscription import Transport

__all__ = ["OTHER_DESCRIPTORS", "StreamListener", "descriptors_short", "listen_stream"]

ACCEPT_BATCH = 64  # connections taken per wake-up of a listening socket
ACCEPT_PAUSE = 1.0  # seconds a listener rests when the process is out of file descriptors
BACKLOG = 511
_OUT_OF_DESCRIPTORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
# Descriptors the bridge needs besides SIP connections: listeners, AMI/ARI, the store, the
# panel and its clients, the journal.
OTHER_DESCRIPTORS = 256


class StreamListener:
    """One listening TCP socket whose connections are judged before anything is read.

    Stands where the bridge used an ``asyncio.Server`` (``sockets``, ``close``, ``wait_closed``).
    """

    def __init__(
        self,
        streams: StreamConnections,
        sock: socket.socket,
        kind: Transport,
        tls: ssl.SSLContext | None,
    ) -> None:
        self.sockets = [sock]
        self._streams = streams
        self._kind = kind
        self._tls = tls
        self._closed = False
        self._resume: asyncio.TimerHandle | None = None
        streams.loop.add_reader(sock.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        sock = self.sockets[0]
        for _ in range(ACCEPT_BATCH):
            try:
                conn, address = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_DESCRIPTORS:
                    self._pause(exc)
                    return
                continue  # e.g. ECONNABORTED: that peer gave up already
            self._streams.accepted(conn, str(address[0]), self._kind, self._tls)

    def _pause(self, exc: OSError) -> None:
        streams = self._streams
        streams.log.log(logging.ERROR, ("", "descriptors"), streams.loop.time(),
                        "cannot accept %s connections: %s; lower sip.max_connections or raise "
                        "the file descriptor limit (LimitNOFILE)", self._kind.upper(),
                        exc.strerror)  # fmt: skip
        streams.loop.remove_reader(self.sockets[0].fileno())
        self._resume = streams.loop.call_later(ACCEPT_PAUSE, self._listen_again)

    def _listen_again(self) -> None:
        self._resume = None
        if not self._closed:
            self._streams.loop.add_reader(self.sockets[0].fileno(), self._on_readable)

    def use_tls(self, context: ssl.SSLContext) -> None:
        """Make the next accepted connections' TLS handshakes with ``context``."""
        self._tls = context

    def close(self) -> None:
        """Stop accepting (open connections are closed by the SipService)."""
        if self._closed:
            return
        self._closed = True
        if self._resume is not None:
            self._resume.cancel()
        self._streams.loop.remove_reader(self.sockets[0].fileno())
        self.sockets[0].close()

    async def wait_closed(self) -> None:
        """Nothing to wait for: closing is immediate."""


async def listen_stream(
    streams: StreamConnections, host: str, port: int, kind: Transport, tls: ssl.SSLContext | None
) -> StreamListener:
    """Bind and listen on host:port (the first address it resolves to that binds)."""
    infos = await streams.loop.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    error: OSError | None = None
    for family, _, _, _, address in infos:
        try:
            sock = socket.create_server(address[:2], family=family, backlog=BACKLOG)
        except OSError as exc:
            error = error or exc
            continue
        sock.setblocking(False)
        return StreamListener(streams, sock, kind, tls)
    raise error or OSError(f"getaddrinfo({host!r}) returned nothing")


def descriptors_short(limits: StreamLimits) -> str | None:
    """Make room for ``limits`` under the file descriptor limit (the soft limit is raised up to
    the hard one when that is not enough); says why it cannot, or None. Without room, the
    connections past it take the descriptors the panel, AMI and the store need."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = limits.max_connections + OTHER_DESCRIPTORS
    if soft == resource.RLIM_INFINITY:
        return None
    if not limits.max_connections:
        return f"sip.max_connections is 0 (no limit) while the process may open {soft} files"
    if need > soft and (hard == resource.RLIM_INFINITY or hard > soft):
        raised = need if hard == resource.RLIM_INFINITY else min(need, hard)
        with contextlib.suppress(OSError, ValueError):  # e.g. a seccomp filter forbids it
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
    if need > soft:
        return (f"sip.max_connections ({limits.max_connections}) + {OTHER_DESCRIPTORS} is more "
                f"than the {soft} files the process may open")  # fmt: skip
    return None
