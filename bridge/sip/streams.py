"""SIP over TCP and TLS: judging, limiting, timing out and dialing connections (asyncio glue).

Connections are accepted by ``bridge.sip.listener`` rather than by ``loop.create_server``, so
that a source outside ``security.allow`` or over a connection limit is turned away here before
anything is read from it (and before a TLS handshake costs anything). Every admitted connection
then goes through ``loop.connect_accepted_socket``, which uvloop and the standard loop both
provide. Transports are used by what they do (write, close, abort), never checked by class:
uvloop's are no subclasses of ``asyncio.Transport``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import ssl
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

from bridge.sip.headers import ParseError, parse_name_addr
from bridge.sip.log_limit import LogLimiter
from bridge.sip.message import (
    REASONS,
    MessageTooLarge,
    Request,
    Response,
    StreamFramer,
    build_response,
    parse_message,
)
from bridge.sip.subscription import Peer, Transport

if TYPE_CHECKING:
    from bridge.sip.access import SourceGate, StreamLimits

__all__ = ["StreamConnections", "StreamTransport"]

logger = logging.getLogger("bridge.sip")
# A peer that reads nothing while this much waits for it is cut off: answers and NOTIFYs to a
# connection nobody reads must not pile up in memory.
WRITE_BACKLOG = 4 << 20
DIAL_QUEUE = 256  # messages kept for a connection being opened; more are dropped


class StreamTransport(Protocol):
    """What the stream code uses of a transport (asyncio's, uvloop's, a TLS one)."""

    def write(self, data: bytes) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...
    def is_closing(self) -> bool: ...
    def get_extra_info(self, name: str, default: Any = None) -> Any: ...
    def get_write_buffer_size(self) -> int: ...


class Receiver(Protocol):
    """Where complete messages go (the SipService)."""

    def received(self, message: bytes | Request | Response, peer: Peer) -> None:
        """Feed one framed message to the core."""
        ...


class _Slot:
    """One counted connection: released exactly once, however the connection ends."""

    __slots__ = ("host", "released")

    def __init__(self, host: str) -> None:
        self.host = host
        self.released = False


class StreamConnections:
    """The open TCP and TLS connections, by peer, with their limits and log."""

    def __init__(
        self,
        receiver: Receiver,
        gate: Callable[[], SourceGate],
        *,
        max_message: int,
        limits: StreamLimits,
        user_agent: Callable[[], str],
        tls_client: ssl.SSLContext | None = None,
    ) -> None:
        self.receiver = receiver
        self._gate = gate  # read anew each time: a reload may replace the allow-list
        self.max_message = max_message
        self.limits = limits
        self._user_agent = user_agent
        self.tls_client = tls_client
        self.loop = asyncio.get_running_loop()
        self.by_peer: dict[Peer, _Stream] = {}
        self.dialing: dict[Peer, list[bytes]] = {}  # queued while a connection is being opened
        self.open_total = 0
        self.open_by_source: dict[str, int] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.on_disconnect: Callable[[Peer], None] | None = None

    @property
    def log(self) -> LogLimiter:
        """The SIP side's one log limiter (the gate's), shared with the notifier."""
        return self._gate().logs

    # ------------------------------------------------------------ accepting

    def accepted(self, sock: socket.socket, host: str, kind: Transport, tls: ssl.SSLContext | None
                 ) -> None:  # fmt: skip
        """Judge a connection just accepted: refuse it at once, or adopt it."""
        now, limits = self.loop.time(), self.limits
        refusal = None
        if not self._gate().allowed(host):
            refusal = "not in security.allow"
        elif limits.max_connections and self.open_total >= limits.max_connections:
            refusal = f"sip.max_connections ({limits.max_connections}) reached"
        elif (
            limits.max_connections_per_source
            and self.open_by_source.get(host, 0) >= limits.max_connections_per_source
        ):
            refusal = (
                f"sip.max_connections_per_source ({limits.max_connections_per_source}) reached"
            )
        if refusal is not None:
            # A reset, not a polite close: nothing is owed, and no TIME_WAIT is left behind.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
            self.log.log(logging.WARNING, (host, "refused"), now,
                         "refusing %s connections from %s: %s", kind.upper(), host,
                         refusal)  # fmt: skip
            return
        slot = self._take(host)
        sock.setblocking(False)
        self._spawn(self._adopt(sock, slot, kind, tls))

    async def _adopt(
        self, sock: socket.socket, slot: _Slot, kind: Transport, tls: ssl.SSLContext | None
    ) -> None:
        streams: list[_Stream] = []

        def protocol() -> _Stream:
            streams.append(_Stream(self, kind, slot))
            return streams[0]

        timeout = self.limits.header_timeout if tls is not None else None
        try:
            await self.loop.connect_accepted_socket(
                protocol, sock, ssl=tls, ssl_handshake_timeout=timeout or None
            )
        except asyncio.CancelledError:  # the service is closing
            sock.close()
            self.release(slot)
            raise
        except Exception as exc:  # a failed handshake is the peer's problem, not a bug of ours
            sock.close()
            self.release(slot)
            self.log.log(logging.INFO, (slot.host, "handshake"), self.loop.time(),
                         "%s connection from %s closed during the handshake: %s",
                         kind.upper(), slot.host, _describe(exc))  # fmt: skip

    # ------------------------------------------------------------ sending and dialing

    def send(self, data: bytes, peer: Peer) -> None:
        """Write to the peer's connection; without one, open one (see ``dial``)."""
        stream = self.by_peer.get(peer)
        if stream is not None and stream.transport is not None:
            transport = stream.transport
            transport.write(data)
            if transport.get_write_buffer_size() > WRITE_BACKLOG:
                self.log.log(logging.WARNING, (peer.host, "backlog"), self.loop.time(),
                             "closing the connection to %s: it reads nothing (%d KiB waiting)",
                             peer, transport.get_write_buffer_size() >> 10)  # fmt: skip
                transport.abort()
        elif (queue := self.dialing.get(peer)) is not None:
            if len(queue) < DIAL_QUEUE:
                queue.append(data)
        else:
            self.dial(peer, data)

    def dial(self, peer: Peer, data: bytes) -> None:
        """The connection a message must go on is gone: open one (RFC 3261 §18) and send the
        message and what follows on it once it is up.

        A request goes to the port of its Request-URI (the phone's Contact) or of its first
        Route, a response to the port of its top Via; the host is always the address the phone
        connected from, so an unauthenticated SUBSCRIBE cannot make the bridge dial a third host.
        """
        now, limits = self.loop.time(), self.limits
        port = _dial_port(data, peer)
        if limits.max_connections and self.open_total >= limits.max_connections:
            self.log.log(logging.WARNING, (peer.host, "dial"), now,
                         "cannot connect to %s: sip.max_connections (%d) reached; a message is "
                         "dropped", peer, limits.max_connections)  # fmt: skip
            return
        if peer.transport == "tls" and self.tls_client is None:
            self.log.log(logging.INFO, (peer.host, "dial"), now,
                         "no TLS connection from %s any more; a message is dropped",
                         peer)  # fmt: skip
            return
        self.dialing[peer] = [data]
        self._spawn(self._dial(peer, port, self._take(peer.host)))

    async def _dial(self, peer: Peer, port: int, slot: _Slot) -> None:
        tls = self.tls_client if peer.transport == "tls" else None
        timeout = self.limits.header_timeout or None
        try:
            async with asyncio.timeout(timeout):
                await self.loop.create_connection(
                    lambda: _Stream(self, peer.transport, slot, peer),
                    peer.host,
                    port,
                    ssl=tls,
                    server_hostname=peer.host if tls is not None else None,
                    ssl_handshake_timeout=timeout if tls is not None else None,
                )
        except asyncio.CancelledError:  # the service is closing
            self.release(slot)
            raise
        except Exception as exc:
            self.release(slot)
            dropped = len(self.dialing.pop(peer, []))
            self.log.log(logging.INFO, (peer.host, "dial"), self.loop.time(),
                         "cannot connect to %s at port %d: %s; dropping %d messages",
                         peer, port, _describe(exc), dropped)  # fmt: skip

    # ------------------------------------------------------------ bookkeeping

    def opened(self, stream: _Stream) -> None:
        """A connection is up (accepted, past its handshake, or dialed)."""
        assert stream.peer is not None and stream.transport is not None
        self.by_peer[stream.peer] = stream
        for data in self.dialing.pop(stream.peer, []):
            stream.transport.write(data)

    def closed(self, stream: _Stream) -> None:
        """A connection is gone: forget it and give its memory back."""
        self.release(stream.slot)
        if stream.peer is not None and self.by_peer.get(stream.peer) is stream:
            del self.by_peer[stream.peer]
            if self.on_disconnect is not None:
                self.on_disconnect(stream.peer)

    def _take(self, host: str) -> _Slot:
        self.open_total += 1
        self.open_by_source[host] = self.open_by_source.get(host, 0) + 1
        return _Slot(host)

    def release(self, slot: _Slot) -> None:
        """Count a connection as closed (once)."""
        if slot.released:
            return
        slot.released = True
        self.open_total -= 1
        left = self.open_by_source.get(slot.host, 0) - 1
        if left > 0:
            self.open_by_source[slot.host] = left
        else:
            self.open_by_source.pop(slot.host, None)

    def _spawn(self, coroutine: Any) -> None:
        task = self.loop.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def user_agent(self) -> str:
        """The Server header of the answers the stream code writes itself."""
        return self._user_agent()

    def close_all(self) -> None:
        """Drop every connection and every task opening one."""
        for stream in list(self.by_peer.values()):
            if stream.transport is not None:
                stream.transport.abort()
        for task in list(self.tasks):
            task.cancel()


class _Stream(asyncio.Protocol):
    """One TCP or TLS connection: framing, keep-alive pongs, idle and header timeouts."""

    def __init__(
        self, streams: StreamConnections, kind: Transport, slot: _Slot, peer: Peer | None = None
    ) -> None:
        self.streams = streams
        self.kind = kind
        self.slot = slot
        self.peer = peer  # set beforehand when we dialed: the peer the messages were for
        self.framer = StreamFramer(streams.max_message)
        self.transport: StreamTransport | None = None
        # A dialed connection carries our request first; an accepted one must show with a
        # whole message within header_timeout that it speaks SIP.
        self.greeted = peer is not None
        self.opened_at = self.last_seen = 0.0
        self.started: float | None = None  # when the unfinished message began
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(StreamTransport, transport)
        if self.peer is None:
            host, port = transport.get_extra_info("peername")[:2]
            local_host, local_port = transport.get_extra_info("sockname")[:2]
            self.peer = Peer(self.kind, str(host), int(port), (str(local_host), int(local_port)))
        self.opened_at = self.last_seen = self.streams.loop.time()
        self.streams.opened(self)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.peer is None:
            return
        try:
            self._take(data, self.transport, self.peer)
        except Exception:  # a bug must not take the listener down, nor flood the log
            self.streams.log.log(logging.ERROR, (self.peer.host, "bug"), self.streams.loop.time(),
                                 "internal error on the connection from %s", self.peer,
                                 exc_info=True)  # fmt: skip
            self.transport.abort()

    def _take(self, data: bytes, transport: StreamTransport, peer: Peer) -> None:
        now = self.streams.loop.time()
        try:
            messages = self.framer.feed(data)
        except ParseError as exc:
            self._refuse(exc, transport, peer, now)
            return
        if self.framer.pings:
            transport.write(b"\r\n" * self.framer.pings)  # RFC 5626 pong
            self.framer.pings = 0
        if messages:
            self.greeted = True
        if self.framer.pending:
            if self.started is None:
                self.started = now
        else:
            self.started = None
            self.last_seen = now
        self._arm()
        for message in messages:
            self.streams.receiver.received(message, peer)

    def _refuse(self, exc: ParseError, transport: StreamTransport, peer: Peer, now: float) -> None:
        """The stream cannot be resynchronised: say what was wrong (413 for too large, else
        400, when the request was readable enough to answer), then close once that is written."""
        status = 413 if isinstance(exc, MessageTooLarge) else 400
        answer = _answer_to_unframable(exc, status, peer, self.streams.user_agent())
        if answer is not None:
            transport.write(answer)
        self.streams.log.log(logging.INFO, (peer.host, "framing"), now,
                             "closing the connection from %s: %s%s", peer, exc.reason,
                             f" (answered {status})" if answer else "")  # fmt: skip
        transport.close()

    def eof_received(self) -> bool | None:
        return None  # the peer is done sending: close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.framer.release()
        self.transport = None  # no cycle between protocol and transport outlives the connection
        self.streams.closed(self)

    # ------------------------------------------------------------ timeouts

    def deadline(self) -> float | None:
        """When this connection is closed unless something arrives, or None (never)."""
        limits = self.streams.limits
        if limits.header_timeout and (self.started is not None or not self.greeted):
            since = self.opened_at if not self.greeted else self.started
            assert since is not None
            return since + limits.header_timeout
        if limits.idle_timeout:
            return self.last_seen + limits.idle_timeout
        return None

    def _arm(self) -> None:
        # One timer per connection, moved lazily: data only moves the deadline later, and the
        # timer, when it fires early, re-arms for the new deadline instead of being replaced on
        # every read.
        deadline = self.deadline()
        if deadline is None or (self.timer is not None and self.timer.when() <= deadline):
            return
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.streams.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        deadline = self.deadline()
        if self.transport is None or deadline is None:
            return
        now = self.streams.loop.time()
        if now + 0.001 < deadline:
            self.timer = self.streams.loop.call_at(deadline, self._on_timer)
            return
        limits = self.streams.limits
        if self.started is not None or not self.greeted:
            what = f"no whole message within sip.header_timeout ({limits.header_timeout:g} s)"
        else:
            what = f"idle for sip.idle_timeout ({limits.idle_timeout:g} s)"
        assert self.peer is not None
        self.streams.log.log(logging.INFO, (self.peer.host, "timeout"), now,
                             "closing the connection from %s: %s", self.peer, what)  # fmt: skip
        self.transport.abort()


def _dial_port(data: bytes, peer: Peer) -> int:
    default = 5061 if peer.transport == "tls" else 5060
    try:
        message = parse_message(data)
        if isinstance(message, Request):
            routes = message.list_values("Route")
            uri = parse_name_addr(routes[0]).uri if routes else message.request_uri()
            port = uri.port
        else:
            port = message.vias()[0].port
    except ParseError:
        return default
    return port or default


def _answer_to_unframable(exc: ParseError, status: int, peer: Peer, user_agent: str
                          ) -> bytes | None:  # fmt: skip
    request = exc.request
    if not isinstance(request, Request):
        return None
    try:
        request.vias()
    except ParseError:
        return None  # without a Via there is nowhere to send it
    response = build_response(
        request,
        status,
        f"{REASONS[status]} ({exc.reason})",
        to_tag=secrets.token_hex(6),
        source=(peer.host, peer.port),
        headers=[("Server", user_agent)],
    )
    return response.to_bytes()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
