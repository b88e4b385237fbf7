"""Stateless UAS rules (RFC 3261 §8.2, RFC 6665 §4.2.1) and the cache of answers to retransmissions.

Whatever does not need the subscription table is decided here, so the notifier only handles
SUBSCRIBEs that passed every check.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from bridge.sip.headers import ParseError, Via
from bridge.sip.message import Request
from bridge.sip.subscription import NotifierSettings

__all__ = [
    "ACCEPTABLE",
    "ALLOW",
    "EVENT_PACKAGE",
    "Answer",
    "ResponseCache",
    "granted_expires",
    "screen_request",
    "screen_subscribe",
]

EVENT_PACKAGE = "dialog"
ALLOW = "OPTIONS, SUBSCRIBE"
ACCEPTABLE = ("application/dialog-info+xml", "application/*", "*/*")


@dataclass(frozen=True, slots=True)
class Answer:
    """A response decided without state; `problem` names what is wrong for a 400."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    problem: str | None = None


def screen_request(req: Request) -> Answer | None:
    """Answer for anything but a well-formed SUBSCRIBE (None: a SUBSCRIBE to look at)."""
    try:
        cseq = req.cseq()
        if cseq.method != req.method:
            return Answer(400, problem="CSeq method differs from the request method")
        req.call_id()
        from_ = req.from_addr()
        req.to_addr()
    except ParseError as exc:
        return Answer(400, problem=exc.reason)
    if req.method == "CANCEL":
        return Answer(481)  # every transaction of ours is already finished
    if req.method not in ("SUBSCRIBE", "OPTIONS"):
        return Answer(405, (("Allow", ALLOW),))
    try:
        required = req.list_values("Require")
    except ParseError as exc:
        return Answer(400, problem=exc.reason)
    if required:  # RFC 3261 §8.2.2.3: we support no extension
        return Answer(420, (("Unsupported", ", ".join(required)),))
    if req.method == "OPTIONS":
        return Answer(
            200, (("Allow", ALLOW), ("Allow-Events", EVENT_PACKAGE), ("Accept", ACCEPTABLE[0]))
        )
    if from_.tag is None:
        return Answer(400, problem="missing From tag")
    return None


def granted_expires(req: Request, settings: NotifierSettings) -> int | Answer:
    """The duration to grant: default when absent, clamped to the maximum, 423 below minimum."""
    try:
        requested = req.expires()
    except ParseError as exc:
        return Answer(400, problem=exc.reason)
    if requested is None:
        return settings.default_expires
    if 0 < requested < settings.min_expires:
        return Answer(423, (("Min-Expires", str(settings.min_expires)),))
    return min(requested, settings.max_expires)


def screen_subscribe(req: Request, settings: NotifierSettings, new: bool) -> int | Answer:
    """Check a SUBSCRIBE's Event, Accept, Contact, Expires and whatever else the notifier reads
    (so it never meets a ParseError halfway through a change); return the Expires to grant.
    """
    try:
        event = req.event()
        if event is None or event.package != EVENT_PACKAGE:
            return Answer(489, (("Allow-Events", EVENT_PACKAGE),))
        if "Accept" in req.headers:
            types = {v.partition(";")[0].strip().lower() for v in req.list_values("Accept")}
            if not types.intersection(ACCEPTABLE):
                return Answer(406, (("Accept", ACCEPTABLE[0]),))
        contact = req.contact()  # parsed on refreshes too: a bad one is a 400 either way
        req.list_values("Record-Route")
        if new:
            req.request_uri()
    except ParseError as exc:
        return Answer(400, problem=exc.reason)
    if new and contact is None:
        return Answer(400, problem="missing Contact")
    return granted_expires(req, settings)


class ResponseCache:
    """What is left of server transactions for a notifier: resend the same answer when a
    request is retransmitted (RFC 3261 §17.2.2), for 64*T1 after it was first answered.
    """

    def __init__(self, lifetime: float = 32.0) -> None:
        self.lifetime = lifetime
        self._answers: dict[tuple[object, ...], bytes] = {}
        # Every entry lives equally long, so insertion order is expiry order: no heap needed.
        self._order: deque[tuple[float, tuple[object, ...]]] = deque()

    @staticmethod
    def key(req: Request, top: Via) -> tuple[object, ...]:
        """RFC 3261 §17.2.3 matching; Call-ID and CSeq also cover pre-3261 branches."""
        headers = req.headers
        return (top.branch, top.host, top.port, req.method, headers.get("i"), headers.get("CSeq"))

    def get(self, key: tuple[object, ...]) -> bytes | None:
        """The answer already sent for this request, if still cached."""
        return self._answers.get(key)

    def put(self, key: tuple[object, ...], data: bytes, now: float) -> None:
        """Remember an answer."""
        if key not in self._answers:
            self._order.append((now + self.lifetime, key))
        self._answers[key] = data

    def expire(self, now: float) -> None:
        """Forget answers older than the lifetime."""
        order = self._order
        while order and order[0][0] <= now:
            self._answers.pop(order.popleft()[1], None)

    def next_deadline(self) -> float | None:
        """When expire() next has something to drop."""
        return self._order[0][0] if self._order else None

    def __len__(self) -> int:
        return len(self._answers)
