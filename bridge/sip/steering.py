"""Two UDP sockets on one address: requests arrive on one, responses on the other.

During a fan-out the phones' 200s arrive by the thousand, interleaved with the rare request
that must not wait (a SUBSCRIBE, a refresh). On one socket the bridge has to read every 200 to
reach the SUBSCRIBE behind them, and each read (1.5 to 2 µs in Python) delays the NOTIFYs still to
go. With two sockets in one SO_REUSEPORT group and a classic BPF program that steers each
datagram by its first bytes, the kernel puts the responses on a socket of their own; the
bridge leaves them queued there while it sends, and reads them when the fan-out is done (or
when the queue would outgrow the socket's buffer). Requests keep their socket to themselves.

Linux only (SO_ATTACH_REUSEPORT_CBPF, 4.5+); elsewhere, or when the kernel refuses, the
listener is the one plain socket it always was.
"""

from __future__ import annotations

import ctypes
import logging
import socket
import struct
from typing import Any

__all__ = ["RESPONSE_TRUESIZE", "bind_split"]

logger = logging.getLogger("bridge.sip")

SO_ATTACH_REUSEPORT_CBPF = 51  # <asm-generic/socket.h>; not in Python's socket module
# The program, run on every datagram with the UDP payload at offset 0; its answer is the index
# of the socket in the group (0: the first bound, requests; 1: responses):
#   A = the payload's first four bytes (a shorter datagram ends the program: answer 0)
#   A == "SIP/" ? 1 : 0
_BPF_LD_W_ABS, _BPF_JEQ_K, _BPF_RET_K = 0x20, 0x15, 0x06
_PROGRAM = (
    (_BPF_LD_W_ABS, 0, 0, 0),
    (_BPF_JEQ_K, 0, 1, int.from_bytes(b"SIP/", "big")),
    (_BPF_RET_K, 0, 0, 1),
    (_BPF_RET_K, 0, 0, 0),
)
# What one queued datagram costs of a socket's receive buffer (the kernel counts the buffer it
# allocated, not the payload): 1,280 bytes for a 400-byte 200 on loopback, measured; a NIC's
# page fragments cost more. Used to tell how many answers may wait before they must be read.
RESPONSE_TRUESIZE = 2304


def _attach_program(sock: socket.socket) -> None:
    code = b"".join(struct.pack("HBBI", *instruction) for instruction in _PROGRAM)
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }: the kernel copies
    # the program during the call, so the buffer only has to outlive it.
    buffer = ctypes.create_string_buffer(code, len(code))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF,
                    struct.pack("HL", len(_PROGRAM), ctypes.addressof(buffer)))  # fmt: skip


def _bind_plain(family: int, kind: int, proto: int, address: tuple[Any, ...]) -> socket.socket:
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def bind_split(
    family: int, kind: int, proto: int, address: tuple[Any, ...]
) -> tuple[socket.socket, socket.socket | None]:
    """Bound, non-blocking sockets for ``address``: (requests, responses), or (the one socket,
    None) where the split is not available.

    The address is first bound by a plain socket, so that a port taken by anyone (another
    bridge included: it could otherwise join the group and receive nothing) fails as it
    always did, with EADDRINUSE, and port 0 gets its number.
    """
    plain = _bind_plain(family, kind, proto, address)
    if not hasattr(socket, "SO_REUSEPORT"):
        return plain, None
    bound = plain.getsockname()
    requests = socket.socket(family, kind, proto)
    responses = socket.socket(family, kind, proto)
    try:
        for sock in (requests, responses):
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        _attach_program(requests)
    except OSError as exc:  # no SO_REUSEPORT or no program here: the plain socket it is
        requests.close()
        responses.close()
        logger.info("UDP %s: one socket for requests and answers (%s)", bound, exc)
        return plain, None
    plain.close()  # the port stays free for the pair, a few µs later
    try:
        requests.bind(bound)  # first in the group: index 0
        responses.bind(bound)
    except OSError:
        requests.close()
        responses.close()
        # Taken in between: bind it plainly again, failing as a plain bind fails.
        return _bind_plain(family, kind, proto, bound), None
    return requests, responses
