"""Thin asyncio glue around the Notifier: UDP and stream listeners and one loop timer (aioquic
style); the TCP and TLS connections themselves are in ``bridge.sip.streams``.

On every input: hand it to the core with loop.time(), send what the core wants sent, re-arm the
single timer for the core's next deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import socket
import ssl
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from bridge.heap import FanoutPause
from bridge.sip.access import SourceGate, StreamLimits
from bridge.sip.listener import StreamListener, descriptors_short, listen_stream
from bridge.sip.message import Request, Response
from bridge.sip.steering import RESPONSE_TRUESIZE, bind_split
from bridge.sip.streams import StreamConnections
from bridge.sip.subscription import NotifierSettings, Peer

__all__ = ["SipCore", "SipService", "StreamLimits", "phone_tls_context", "start_sip"]

logger = logging.getLogger("bridge.sip")
_UDP_MAX = 65507  # largest UDP payload over IPv4
_RECV_SIZE = 1 << 16  # past any UDP payload: a datagram is never cut short
_ROUTE_CACHE = 4096  # remembered "which of our addresses reaches this phone" answers
_PEER_CACHE = 16384  # phone addresses whose Peer is kept for reuse (forgotten all at once)
# One state change fans out to every watcher at once, and their answers all come back at once:
# with the kernel's default buffer (about 200 KiB) the answers to a 2,000-NOTIFY fan-out are
# dropped, the NOTIFYs time out and subscriptions are lost (seen in benchmarks/soak.py).
UDP_BUFFER = 8 << 20
# The responses socket of a split listener (bridge.sip.steering) holds a fan-out's answers
# until it is done: 10,000 of them at the 2,304 bytes each is reckoned at.
RESPONSE_BUFFER = 32 << 20
# Datagrams read per wake-up of the UDP socket: the stdlib transport reads one per event-loop
# turn (an epoll call each); a fan-out's 200s arrive by the thousand, so they are read in a
# batch and what they trigger goes out in one burst (fewer wake-ups of the receivers as well).
UDP_BATCH = 256
UDP_SLICE = 32  # ... handled and answered in slices of this many
# NOTIFYs of a fan-out sent per turn of the event loop; between two slices the loop reads what
# came in (a SUBSCRIBE, another key's change), so nothing waits behind a whole 5,000-watcher
# burst. With the answers on a socket of their own (bridge.sip.steering), a SUBSCRIBE sent mid
# burst waits about one slice: 0.5-0.7 ms at 16, 0.8-1.2 ms at 64, 4-9 ms at 256, while the
# burst itself is no faster with bigger slices (docs/PERFORMANCE.md).
FANOUT_SLICE = 16


# Past net.core.[rw]mem_max with CAP_NET_ADMIN (root); Python's socket module does not name
# them (<asm-generic/socket.h>), so they are spelled out for Linux (0: not here).
_SO_SNDBUFFORCE, _SO_RCVBUFFORCE = (32, 33) if sys.platform == "linux" else (0, 0)


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def grow_buffers(sock: socket.socket, size: int = UDP_BUFFER) -> int:
    """Ask for big receive and send buffers; returns the receive buffer the kernel granted.
    Without CAP_NET_ADMIN the kernel caps the request at net.core.rmem_max."""
    for force, plain in ((_SO_RCVBUFFORCE, socket.SO_RCVBUF), (_SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force or plain, size)
        except OSError:  # not privileged: take what net.core.[rw]mem_max allows
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, plain, size)
    granted: int = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    return granted


def _backlog(transport: asyncio.DatagramTransport) -> int:
    """Bytes the transport holds back because the socket was full (1 if it cannot tell)."""
    size = getattr(transport, "get_write_buffer_size", None)
    return int(size()) if size is not None else 1


def local_address_towards(host: str) -> str | None:
    """The address the kernel would send from to reach host (connecting a UDP socket only
    looks the route up; nothing is sent), or None when there is no route."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((host, 9))
            return str(probe.getsockname()[0])
    except OSError:
        return None


class SipCore(Protocol):
    """The sans-I/O side the listeners feed: the bridge's core, or a bare Notifier."""

    @property
    def gate(self) -> SourceGate:
        """Who may talk to us, and the SIP side's one log limiter."""
        ...

    @property
    def settings(self) -> NotifierSettings:
        """Protocol settings (the User-Agent of what the streams answer themselves)."""
        ...

    def receive(self, message: Request | Response | bytes, peer: Peer, now: float) -> None:
        """A datagram or a framed message from a peer."""
        ...

    def resource_changed(self, resource: str, now: float) -> None:
        """The state of a watched resource changed."""
        ...

    def drain(self, now: float, budget: int, *, ringing_only: bool = False
              ) -> Iterator[tuple[bytes, Peer]]:  # fmt: skip
        """What is to be sent: everything urgent, then at most ``budget`` fan-out NOTIFYs, each
        built as it is handed out."""
        ...

    @property
    def fanout_pending(self) -> bool:
        """Whether drain() has more fan-out NOTIFYs."""
        ...

    def next_timer(self) -> float | None:
        """When handle_timer() next has work."""
        ...

    def handle_timer(self, now: float) -> None:
        """Run what is due."""
        ...

    def contact(self, transport: str) -> tuple[str, int]:
        """Contact/Via address of a transport."""
        ...

    def set_contact(self, transport: str, host: str, port: int) -> None:
        """Set it once the port is bound."""
        ...


class SipService:
    """Running SIP listeners feeding one sans-I/O core, and the one loop timer it needs (re-armed
    from its next_timer() after every input); create it with start_sip()."""

    def __init__(
        self,
        notifier: SipCore,
        max_datagram: int,
        max_message: int,
        limits: StreamLimits | None = None,
        tls_client: ssl.SSLContext | None = None,
    ) -> None:
        self.notifier = notifier
        self.max_datagram = min(max_datagram, _UDP_MAX)
        self.max_message = max_message
        self.udp: list[asyncio.DatagramTransport] = []
        self._udp_socks: list[socket.socket] = []  # the sockets of self.udp, in order
        self.tcp: list[StreamListener] = []
        self.tls: list[StreamListener] = []
        self._loop = asyncio.get_running_loop()
        self.streams = StreamConnections(
            self,
            lambda: self.notifier.gate,
            max_message=max_message,
            limits=limits or StreamLimits(),
            user_agent=lambda: self.notifier.settings.user_agent,
            tls_client=tls_client,
        )
        self._timer: asyncio.Handle | None = None
        self._timer_at: float | None = None  # when self._timer is due
        self._next_slice: asyncio.Handle | None = None  # the fan-out goes on at the next turn
        self._answers_later: list[tuple[bytes, Peer]] = []  # 2xx read during a fan-out
        # The responses sockets of split UDP listeners (bridge.sip.steering), left unread
        # while a fan-out goes on, and how many NOTIFYs went out since they were last read.
        self._responses: list[_ResponseReader] = []
        self._held = False
        self._held_sent = 0
        self._gc = FanoutPause()
        self._routes: OrderedDict[str, str] = OrderedDict()  # phone host → our address to it

    @property
    def on_disconnect(self) -> Callable[[Peer], None] | None:
        """Called with the peer of every stream connection that closes (metrics, tests)."""
        return self.streams.on_disconnect

    @on_disconnect.setter
    def on_disconnect(self, callback: Callable[[Peer], None] | None) -> None:
        self.streams.on_disconnect = callback

    @property
    def stream_limits(self) -> StreamLimits:
        """Connection caps and timeouts of TCP and TLS (a reload may set new ones)."""
        return self.streams.limits

    @stream_limits.setter
    def stream_limits(self, limits: StreamLimits) -> None:
        self.streams.limits = limits

    def use_tls_context(self, context: ssl.SSLContext) -> None:
        """Accept new TLS connections with ``context`` (a renewed certificate); connections
        already open keep the one they were made with."""
        for listener in self.tls:
            listener.use_tls(context)

    def resource_changed(self, resource: str) -> None:
        """Tell the watchers of resource about its new state."""
        self.notifier.resource_changed(resource, self._loop.time())
        self._flush(FANOUT_SLICE)

    def flush(self) -> None:
        """Send what the core wants sent after it was fed from elsewhere (Asterisk, a reload):
        the urgent messages and a first slice of ringing keys' fan-outs now, the rest a slice
        per turn of the loop (other keys' changes of the same burst wait for the ringing ones);
        re-arm the timer."""
        self._flush(FANOUT_SLICE, ringing_only=True)

    def received(self, message: bytes | Request | Response, peer: Peer) -> None:
        """Feed one datagram or framed message to the core."""
        self.notifier.receive(message, peer, self._loop.time())
        self._flush()

    def received_datagrams(self, batch: list[tuple[bytes, Peer]]) -> None:
        """Feed datagrams read in one go to the core, then send what they caused at once.

        While a fan-out goes on, the 2xx answers (to its own NOTIFYs, nearly all) are kept
        for when it is done: they must be read to reach a SUBSCRIBE behind them, but handling
        them can wait, and the fan-out's last NOTIFY then does not wait for it.
        """
        now, receive, limit = self._loop.time(), self.notifier.receive, self.max_datagram
        later = self._answers_later if self.notifier.fanout_pending else None
        for data, peer in batch:
            if later is not None and data[:9] == b"SIP/2.0 2":
                later.append((data, peer))
            elif len(data) > limit:  # rationed like every line a peer can cause
                self.notifier.gate.logs.log(logging.INFO, (peer.host, "too large"), now,
                                            "dropped a %d-byte datagram from %s: over "
                                            "sip.max_message_size", len(data), peer)  # fmt: skip
            else:
                receive(data, peer, now)
        self._flush()

    def connections(self) -> list[Peer]:
        """Peers with an open TCP or TLS connection."""
        return list(self.streams.by_peer)

    async def close(self) -> None:
        """Stop listening, drop connections and the timer."""
        if self._timer is not None:
            self._timer.cancel()
        if self._next_slice is not None:
            self._next_slice.cancel()
            self._next_slice = None
        self._gc.release()
        for transport in self.udp:
            transport.close()
        for reader in self._responses:
            reader.close()
        self._responses.clear()
        for server in self.tcp + self.tls:
            server.close()
        self.streams.close_all()
        for server in self.tcp + self.tls:
            await server.wait_closed()

    def local_towards(self, remote_host: str) -> tuple[str, int]:
        """Our address on the first UDP socket as seen from ``remote_host`` (for a Via)."""
        host, port = self.udp[0].get_extra_info("sockname")[:2]
        return self.udp_local((str(host), int(port)), remote_host)

    def udp_local(self, bound: tuple[str, int], remote_host: str) -> tuple[str, int]:
        """Our address for a datagram that came in on a socket bound to ``bound``: a wildcard
        bind (0.0.0.0) is resolved to the address that routes to the phone."""
        host, port = bound
        if not _is_wildcard(host):
            return bound
        local = self._routes.get(remote_host)
        if local is None:
            local = local_address_towards(remote_host) or host
            self._routes[remote_host] = local
            if len(self._routes) > _ROUTE_CACHE:
                self._routes.popitem(last=False)
        return local, port

    def _udp_socket_for(self, peer: Peer) -> int:
        # Answer from the socket the phone sent to: a NAT only lets the reply through from there.
        if peer.local is not None and len(self.udp) > 1:
            for index, transport in enumerate(self.udp):
                host, port = transport.get_extra_info("sockname")[:2]
                if port == peer.local[1] and (_is_wildcard(host) or host == peer.local[0]):
                    return index
        return 0

    def _send_udp(self, data: bytes, peer: Peer) -> None:
        if not self.udp:
            return  # an LED MESSAGE while the bridge listens on TCP/TLS only
        index = self._udp_socket_for(peer)
        transport, address = self.udp[index], (peer.host, peer.port)
        if _backlog(transport) or transport.is_closing():
            transport.sendto(data, address)  # keeps the order behind what it has buffered
            return
        # Straight to the socket: the transport's sendto does the same after a few checks.
        try:
            self._udp_socks[index].sendto(data, address)
        except (BlockingIOError, InterruptedError):
            transport.sendto(data, address)  # the transport buffers it and waits for room
        except OSError as exc:
            logger.debug("UDP error: %s", exc)  # what the transport would report

    def _flush(self, budget: int = 0, *, ringing_only: bool = False) -> None:
        """Send the urgent messages and at most ``budget`` fan-out NOTIFYs, each as soon as it
        is built; what is left goes on at the next turn of the loop; re-arm the timer."""
        core = self.notifier
        if core.fanout_pending:
            self._gc.hold()  # no collection in the middle of a burst (bridge.heap)
        sock = None  # the one UDP socket, written straight to while it has room
        if len(self.udp) == 1 and not _backlog(self.udp[0]) and not self.udp[0].is_closing():
            sock = self._udp_socks[0]
        for data, peer in core.drain(self._loop.time(), budget, ringing_only=ringing_only):
            if peer.transport != "udp":
                self.streams.send(data, peer)
            elif sock is None:
                self._send_udp(data, peer)
            else:
                try:
                    sock.sendto(data, (peer.host, peer.port))
                except (BlockingIOError, InterruptedError):
                    sock = None  # full: the transport buffers this and what follows, in order
                    self.udp[0].sendto(data, (peer.host, peer.port))
                except OSError as exc:
                    logger.debug("UDP error: %s", exc)  # what the transport would report
        if core.fanout_pending:
            if self._responses:
                self._hold_responses(budget)  # at most that many fan-out NOTIFYs went out
            if self._next_slice is None:
                self._next_slice = self._loop.call_soon(self._drain_slice)
        elif self._held:
            self._release_responses()
        elif self._answers_later:
            self._take_answers()
        if not core.fanout_pending:
            self._gc.release()
        when = core.next_timer()
        # The time is kept here: uvloop hands back a plain Handle, without when(), for a
        # deadline less than a millisecond away.
        if self._timer is not None and self._timer_at != when:
            self._timer.cancel()
            self._timer = None
        if when is not None and self._timer is None:
            self._timer = self._loop.call_at(when, self._on_timer, when)
            self._timer_at = when

    def _hold_responses(self, sent: int) -> None:
        """Leave the phones' answers queued in the kernel while a fan-out goes on (the SUBSCRIBEs
        have their own socket), unless so many NOTIFYs went out that their answers would
        overflow the buffer: then they are read now (and handled once the fan-out is done)."""
        if not self._held:
            self._held, self._held_sent = True, 0
            for reader in self._responses:
                reader.pause()
        self._held_sent += sent
        if self._held_sent >= min(reader.room for reader in self._responses):
            self._held_sent = 0
            for reader in self._responses:
                reader.read_queued()

    def _release_responses(self) -> None:
        """The fan-out is done: the answers are read again as they come (the loop reads what
        is queued at its next turn), and those read meanwhile are handled now."""
        self._held = False
        for reader in self._responses:
            reader.resume()
        if self._answers_later:
            self._take_answers()

    def _take_answers(self) -> None:
        """Hand the answers kept during a fan-out to the core (before any timer runs: a NOTIFY
        answered must not be sent again), and send what they caused."""
        later, self._answers_later = self._answers_later, []
        now, receive = self._loop.time(), self.notifier.receive
        for data, peer in later:
            receive(data, peer, now)
        self._flush()

    def _drain_slice(self) -> None:
        self._next_slice = None
        self._flush(FANOUT_SLICE)

    def _on_timer(self, when: float) -> None:
        self._timer = None
        # A NOTIFY whose 200 is queued must not be sent again: the answers are read first
        # (behind a long run of requests, the loop may come to the timer before to them).
        for reader in self._responses:
            reader.read_queued()
        if self._answers_later:
            later, self._answers_later = self._answers_later, []
            for data, peer in later:
                self.notifier.receive(data, peer, self._loop.time())
        # The loop may run a timer a hair before its time; never let the core see "too early".
        self.notifier.handle_timer(max(self._loop.time(), when))
        self._flush()


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, service: SipService, sock: socket.socket) -> None:
        self.service = service
        self.sock = sock  # the transport's socket: read on directly, see UDP_BATCH
        self._view = memoryview(bytearray(_RECV_SIZE))  # what every read lands in first
        self._read_this_turn = False  # a batch was read in this turn of the loop
        self.bound: tuple[str, int] = ("0.0.0.0", 0)
        self.wildcard = True
        self._peers: dict[tuple[str, int, tuple[str, int]], Peer] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        host, port = transport.get_extra_info("sockname")[:2]
        self.bound = (str(host), int(port))
        self.wildcard = _is_wildcard(self.bound[0])

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if self._read_this_turn:  # the batch is read: this one alone, the rest next turn
            self._hand_over([(data, addr)])
            return
        # uvloop hands over up to 32 datagrams a turn, each a call of this: reading on from
        # every one of them took up to 32 batches (8,192 SUBSCRIBEs, over a second of work)
        # in one turn, with the AMI events, the timers and the answers waiting behind them.
        self._read_this_turn = True
        asyncio.get_running_loop().call_soon(self._next_turn)
        self.read(self.sock, UDP_BATCH, [(data, addr)])

    def _next_turn(self) -> None:
        self._read_this_turn = False

    def read(
        self, sock: socket.socket, limit: int, batch: list[tuple[bytes, Any]] | None = None
    ) -> bool:
        """Read ``sock`` (this listener's, or its responses socket) until it is empty or about
        ``limit`` datagrams are in, handing them over a slice at a time; True when it is
        empty (or failed)."""
        recvfrom_into, view = sock.recvfrom_into, self._view
        batch = batch or []
        for _ in range(max(1, limit // UDP_SLICE)):
            while len(batch) < UDP_SLICE:
                try:
                    size, addr = recvfrom_into(view)
                    # Into one buffer, then copied at its size: recvfrom(64 KiB) allocates 64 KiB
                    # a datagram and shrinks it (no RSS difference measured at 50,000
                    # subscriptions, 139.3 against 139.0 MB: it spares the allocator, no more).
                    batch.append((view[:size].tobytes(), addr))
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    self.error_received(exc)
                    break
            if batch:
                self._hand_over(batch)
            if len(batch) < UDP_SLICE:
                return True  # the socket is empty (or failed): wait for the next wake-up
            batch = []
        return False

    def _hand_over(self, batch: list[tuple[bytes, tuple[str | Any, int]]]) -> None:
        # A slice at a time: what it causes goes out before the next is read, so the phones
        # answer while the rest is handled.
        self.service.received_datagrams([(data, self._peer(addr)) for data, addr in batch])

    def _peer(self, addr: tuple[str | Any, int]) -> Peer:
        # A phone sends from the same address again and again (every 200, every refresh): one
        # Peer per address, looked up instead of built per datagram.
        host = str(addr[0])
        local = self.service.udp_local(self.bound, host) if self.wildcard else self.bound
        key = (host, addr[1], local)
        peer = self._peers.get(key)
        if peer is None:
            if len(self._peers) >= _PEER_CACHE:
                self._peers.clear()
            peer = self._peers[key] = Peer("udp", host, addr[1], local)
        return peer

    def error_received(self, exc: Exception) -> None:
        logger.debug("UDP error: %s", exc)  # e.g. ICMP port unreachable from a dead phone


class _ResponseReader:
    """The responses socket of a split UDP listener (see bridge.sip.steering): read as data
    comes, except while the service holds it during a fan-out."""

    def __init__(self, sock: socket.socket, datagrams: _Datagrams, granted: int) -> None:
        self.sock = sock
        self.datagrams = datagrams  # its listener's: the same peers, the same hand-over
        # NOTIFYs that may go out unread before their answers could fill the buffer (a quarter
        # of it kept free for what else comes).
        self.room = max(UDP_SLICE, granted * 3 // 4 // RESPONSE_TRUESIZE)
        self._loop = asyncio.get_running_loop()
        self._watched = False
        self.resume()

    def _readable(self) -> None:
        # Bounded (about 4 ms of 200s): what Asterisk says in between (a ringing key) does not
        # wait for the thousands of answers to a fan-out just done. Four times the requests'
        # batch, so the answers keep up with what the requests cause.
        self.datagrams.read(self.sock, 4 * UDP_BATCH)

    def pause(self) -> None:
        """Stop reading as data comes (what arrives stays queued in the kernel)."""
        if self._watched:
            self._loop.remove_reader(self.sock.fileno())
            self._watched = False

    def resume(self) -> None:
        """Read as data comes again (what is queued is read at the loop's next turn)."""
        if not self._watched and self.sock.fileno() != -1:
            self._loop.add_reader(self.sock.fileno(), self._readable)
            self._watched = True

    def read_queued(self) -> None:
        """Read what is queued now (bounded: a flood cannot keep this going)."""
        self.datagrams.read(self.sock, 2 * self.room)

    def close(self) -> None:
        """Stop reading and close the socket."""
        self.pause()
        self.sock.close()


async def _udp_sockets(host: str, port: int) -> tuple[socket.socket, socket.socket | None]:
    """A bound, non-blocking UDP socket, as create_datagram_endpoint(local_addr=…) makes it, and
    where the kernel allows it a second one on the same address that takes the responses."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    if not infos:
        raise OSError(f"getaddrinfo({host!r}) returned nothing")
    error: OSError | None = None
    for family, kind, proto, _, address in infos:
        try:
            return bind_split(family, kind, proto, address)
        except OSError as exc:
            error = error or exc
    assert error is not None
    raise error


async def start_sip(
    notifier: SipCore,
    udp_addrs: Sequence[tuple[str, int]],
    tcp_addrs: Sequence[tuple[str, int]],
    *,
    max_datagram: int = 16384,
    max_message: int = 65535,
    tls_addrs: Sequence[tuple[str, int]] = (),
    tls: ssl.SSLContext | None = None,
    limits: StreamLimits | None = None,
    tls_client: ssl.SSLContext | None = None,
) -> SipService:
    """Bind the listeners. A notifier contact with port 0 gets the first bound port of its kind.

    ``tls_client`` is what the bridge dials a phone's TLS Contact with when the phone's own
    connection is gone, and an LED contact registered over TLS even without a TLS listener
    (default: ``phone_tls_context()``).
    """
    loop = asyncio.get_running_loop()
    if tls_client is None:
        tls_client = phone_tls_context()
    service = SipService(notifier, max_datagram, max_message, limits, tls_client)
    try:
        for host, port in udp_addrs:
            sock, responses = await _udp_sockets(host, port)
            try:
                transport, datagrams = await loop.create_datagram_endpoint(
                    functools.partial(_Datagrams, service, sock), sock=sock
                )
            except BaseException:
                sock.close()
                if responses is not None:
                    responses.close()
                raise
            service.udp.append(transport)
            service._udp_socks.append(sock)
            granted, wanted = grow_buffers(sock), UDP_BUFFER
            if responses is not None:  # where the answers to a whole fan-out wait
                granted, wanted = grow_buffers(responses, RESPONSE_BUFFER), RESPONSE_BUFFER
                service._responses.append(_ResponseReader(responses, datagrams, granted))
            if granted < wanted:  # Linux reports twice what it was asked for
                logger.warning(
                    "UDP receive buffer on %s:%d is %d KiB: the answers to a large fan-out are "
                    "read while it goes on, or lost. Raise net.core.rmem_max to %d "
                    "(systemd/snom-blf-bridge.sysctl) or grant CAP_NET_ADMIN",
                    host, port, granted >> 10, wanted,
                )  # fmt: skip
        if tcp_addrs or (tls_addrs and tls is not None):
            short = descriptors_short(service.stream_limits)
            if short is not None:
                logger.warning("%s: lower sip.max_connections or raise the limit (systemd: "
                               "LimitNOFILE, shell: ulimit -n)", short)  # fmt: skip
        for host, port in tcp_addrs:
            service.tcp.append(await listen_stream(service.streams, host, port, "tcp", None))
        for host, port in tls_addrs if tls is not None else ():
            service.tls.append(await listen_stream(service.streams, host, port, "tls", tls))
    except OSError:
        await service.close()
        raise
    bound = {
        "udp": [t.get_extra_info("sockname") for t in service.udp],
        "tcp": [s.sockets[0].getsockname() for s in service.tcp],
        "tls": [s.sockets[0].getsockname() for s in service.tls],
    }
    for transport_name, names in bound.items():
        if not names:
            continue
        host, port = notifier.contact(transport_name)
        if port == 0 and names:
            notifier.set_contact(transport_name, host, names[0][1])
    return service


def phone_tls_context() -> ssl.SSLContext:
    """How the bridge dials a phone over TLS: encrypted, but the phone's certificate is not
    checked. Phones carry self-signed or vendor certificates no installer could list, and the
    host dialed is always the one the phone subscribed from (see StreamConnections.dial)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
