"""SIP notifier, sans-I/O: what one state change costs per watcher, and what a SUBSCRIBE costs.

Driven the way the transport drives it: raw datagrams into ``receive()``, bytes out of
``outgoing()``, a fake clock. No socket is involved, so the figures are the notifier's own work.
"""

from __future__ import annotations

import gc
import time

from benchmarks.render import ONE_DIALOG, SETTINGS
from benchmarks.timing import REPEAT, Row, median
from bridge.dialoginfo import DialogInfoDocument, render
from bridge.model import EntityState
from bridge.sip.notifier import Notifier, Peer

RESOURCE = "202"
_ECHOED = frozenset({b"via", b"from", b"to", b"call-id", b"cseq"})

Sent = list[tuple[bytes, Peer]]


class OneExtension:
    """A DocumentSource that knows one extension, whose state flips between idle and ringing.

    Both states are rendered up front, as the bridge renders once per change: the fan-out
    figure is then the notifier's work alone.
    """

    def __init__(self) -> None:
        self._documents = (render(EntityState(RESOURCE), SETTINGS), render(ONE_DIALOG, SETTINGS))
        self._current = 0

    def resolve(self, user: str, watcher: str, domain: str = "") -> str | None:
        """One PBX context: the user part is the resource."""
        return user

    def knows(self, resource: str) -> bool:
        """Only the one extension can be watched."""
        return resource == RESOURCE

    def document(self, resource: str, watcher: str) -> DialogInfoDocument:
        """The extension's current rendering (the same for every watcher here)."""
        return self._documents[self._current]

    def flip(self) -> None:
        """Change the state (idle ↔ ringing)."""
        self._current ^= 1


def subscribe_request(watcher: int, resource: str = RESOURCE) -> tuple[bytes, Peer]:
    """A phone's initial SUBSCRIBE and the address it comes from; each watcher is its own
    dialog (Call-ID, From tag) on its own port, like one BLF key of one phone."""
    port = 20000 + watcher
    lines = [
        f"SUBSCRIBE sip:{resource}@pbx.example SIP/2.0",
        f"Via: SIP/2.0/UDP 10.0.0.5:{port};branch=z9hG4bK-w{watcher};rport",
        f"From: <sip:w{watcher}@pbx.example>;tag=from{watcher}",
        f"To: <sip:{resource}@pbx.example>",
        f"Call-ID: blf-{watcher}@10.0.0.5",
        "CSeq: 1 SUBSCRIBE",
        f"Contact: <sip:w{watcher}@10.0.0.5:{port}>",
        "Event: dialog",
        "Accept: application/dialog-info+xml",
        "Expires: 3600",
        "Max-Forwards: 70",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), Peer("udp", "192.0.2.10", port)


def ok_for(notify: bytes) -> bytes:
    """The phone's 200 to a NOTIFY: Via, From, To, Call-ID and CSeq copied (RFC 3261 §8.2.6.2)."""
    head = notify.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]
    echoed = [line for line in head if line.partition(b":")[0].strip().lower() in _ECHOED]
    return b"\r\n".join([b"SIP/2.0 200 OK", *echoed, b"Content-Length: 0", b"", b""])


def answer_all(notifier: Notifier, sent: Sent, now: float) -> None:
    """Answer every NOTIFY in ``sent`` with a 200, so that none is left in flight."""
    for data, peer in sent:
        if data.startswith(b"NOTIFY "):
            notifier.receive(ok_for(data), peer, now)
    # Guards, not assertions on speed: a figure for NOTIFYs that never went out means nothing.
    if notifier.outgoing() or notifier.stats().notifies_in_flight:
        raise RuntimeError("the notifier still has NOTIFYs in flight after the 200s")


def subscribe_all(notifier: Notifier, requests: list[tuple[bytes, Peer]], now: float) -> Sent:
    """Feed every SUBSCRIBE; return what was sent (a 200 and a NOTIFY each)."""
    sent: Sent = []
    for data, peer in requests:
        notifier.receive(data, peer, now)
        sent += notifier.outgoing()
    if len(sent) != 2 * len(requests):
        raise RuntimeError(f"expected a 200 and a NOTIFY per SUBSCRIBE, got {len(sent)} messages")
    return sent


def subscribe_cost(requests: list[tuple[bytes, Peer]]) -> float:
    """Seconds per new subscription: SUBSCRIBE parsed and screened, 200 and first NOTIFY built.

    Median over fresh notifiers that each take every request, so the table grows as in real use.
    """
    runs: list[float] = []
    for _ in range(REPEAT):
        notifier = Notifier(OneExtension())
        gc.collect()
        start = time.perf_counter()
        subscribe_all(notifier, requests, 0.0)
        runs.append((time.perf_counter() - start) / len(requests))
    return median(runs)


def fan_out(watchers: int) -> tuple[float, float]:
    """Seconds for ``resource_changed()`` + ``outgoing()`` of one change to ``watchers`` watchers
    (none with a NOTIFY in flight, so each gets one at once), and seconds per 200 handled.

    The 200s are timed separately: they are the other half of every NOTIFY on UDP.
    """
    source = OneExtension()
    notifier = Notifier(source)
    requests = [subscribe_request(i) for i in range(watchers)]
    answer_all(notifier, subscribe_all(notifier, requests, 0.0), 0.0)
    changes: list[float] = []
    answers: list[float] = []
    for rep in range(REPEAT + 1):
        now = 1.0 + rep
        source.flip()
        gc.collect()
        start = time.perf_counter()
        notifier.resource_changed(RESOURCE, now)
        sent = notifier.outgoing()
        changed = time.perf_counter()
        if len(sent) != watchers:
            raise RuntimeError(f"{watchers} watchers but {len(sent)} NOTIFYs")
        oks = [(ok_for(data), peer) for data, peer in sent]
        answered = time.perf_counter()
        for data, peer in oks:
            notifier.receive(data, peer, now)
        done = time.perf_counter()
        answer_all(notifier, [], now)  # only the check that nothing is left in flight
        if rep:  # rep 0 warms up: the first NOTIFYs with a new body, timer heap growth
            changes.append(changed - start)
            answers.append((done - answered) / watchers)
    return median(changes), median(answers)


def run(quick: bool) -> list[Row]:
    """Every notifier figure."""
    watchers = 100 if quick else 1000
    change, per_answer = fan_out(watchers)
    per_subscribe = subscribe_cost([subscribe_request(i) for i in range(watchers)])
    return [
        (f"notifier: one change fanned out to {watchers} watchers", change * 1e3, "ms"),
        ("notifier: fan-out rate", watchers / change, "NOTIFY/s"),
        ("notifier: fan-out per watcher", change / watchers * 1e6, "µs"),
        ("notifier: 200 to a NOTIFY handled", per_answer * 1e6, "µs"),
        (f"notifier: SUBSCRIBE → 200 + NOTIFY ({watchers} subscriptions)", per_subscribe * 1e6,
         "µs/subscribe"),
    ]  # fmt: skip
