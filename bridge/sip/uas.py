"""Stateless UAS rules (RFC 3261 §8.2, RFC 6665 §4.2.1) and the cache of answers to retransmissions.

Whatever does not need the subscription table is decided here, so the notifier only handles
SUBSCRIBEs that passed every check.
"""

from __future__ import annotations

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
    "SentAnswer",
    "granted_expires",
    "screen_request",
    "screen_subscribe",
    "supports_eventlist",
]

EVENT_PACKAGE = "dialog"
ALLOW = "OPTIONS, SUBSCRIBE"
ACCEPTABLE = ("application/dialog-info+xml", "application/*", "*/*")
# What a list subscriber may accept instead (RFC 4662 §5): the multipart around the parts.
LIST_ACCEPTABLE = ("multipart/related", "multipart/*", "application/rlmi+xml")


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
            acceptable = ACCEPTABLE + (LIST_ACCEPTABLE if supports_eventlist(req) else ())
            if not types.intersection(acceptable):
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


def supports_eventlist(req: Request) -> bool:
    """Whether the request says ``Supported: eventlist`` (RFC 4662; the compact form is k)."""
    try:
        return any(v.strip().lower() == "eventlist" for v in req.list_values("Supported"))
    except ParseError:
        return False


@dataclass(frozen=True, slots=True)
class SentAnswer:
    """What was answered to a request, enough to send the same bytes again.

    The 200 that starts or refreshes a subscription is not kept as bytes: a site powering up
    subscribes tens of thousands of keys within one cache lifetime, and their answers would
    outweigh the subscriptions. It is built again from the request (a retransmission carries
    the same headers), the dialog's tag and the Expires granted. Other answers are rare and are
    kept as sent (``data``).
    """

    call_id: str  # checked on a hit: the cache is keyed by a hash
    data: bytes = b""
    to_tag: str = ""  # of an accepted SUBSCRIBE (data empty)
    expires: int = 0
    eventlist: bool = False  # the accepted SUBSCRIBE is a list subscription (Require: eventlist)


class ResponseCache:
    """What is left of server transactions for a notifier: resend the same answer when a
    request is retransmitted (RFC 3261 §17.2.2), for at least 64*T1 after it was answered.

    Entries are dropped a generation at a time: every ``lifetime`` the current generation
    becomes the old one and the old one is forgotten, so an answer stays between one and two
    lifetimes, with no per-entry deadline to keep. A generation that reaches ``max_entries``
    is rotated at once: under a flood answers are kept for less time, but memory stays bounded
    (two generations at most) whatever arrives.
    """

    def __init__(self, lifetime: float = 32.0, max_entries: int = 50_000) -> None:
        self.lifetime = lifetime
        self.max_entries = max_entries
        self._current: dict[int, SentAnswer] = {}
        self._previous: dict[int, SentAnswer] = {}
        self._rotate_at: float | None = None

    @staticmethod
    def key(req: Request, top: Via) -> int:
        """RFC 3261 §17.2.3 matching (Call-ID and CSeq also cover pre-3261 branches), hashed:
        one small int per entry instead of a tuple of six strings."""
        headers = req.headers
        return hash(
            (top.branch, top.host, top.port, req.method, headers.get("i"), headers.get("CSeq"))
        )

    def get(self, key: int, call_id: str) -> SentAnswer | None:
        """The answer already sent for this request, if still cached."""
        sent = self._current.get(key) or self._previous.get(key)
        return sent if sent is not None and sent.call_id == call_id else None

    def put(self, key: int, answer: SentAnswer, now: float) -> None:
        """Remember an answer."""
        if len(self._current) >= self.max_entries:
            self._previous, self._current = self._current, {}
            self._rotate_at = now + self.lifetime
        self._current[key] = answer
        if self._rotate_at is None:
            self._rotate_at = now + self.lifetime

    def expire(self, now: float) -> None:
        """Forget the generation that has lived a whole lifetime since its last entry."""
        while self._rotate_at is not None and self._rotate_at <= now:
            self._previous, self._current = self._current, {}
            self._rotate_at = now + self.lifetime if self._previous else None

    def next_deadline(self) -> float | None:
        """When expire() next has something to drop."""
        return self._rotate_at

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)
