"""What the live check read from Asterisk, whichever way it asked (AMI or ARI)."""

from __future__ import annotations

from dataclasses import dataclass, field

from bridge.events import DialplanRead


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One PJSIP endpoint as Asterisk reports it."""

    name: str
    context: str = ""
    subscribe_context: str = ""
    call_groups: frozenset[int] = frozenset()
    pickup_groups: frozenset[int] = frozenset()


@dataclass(slots=True)
class SiteFacts:
    """Everything one look at Asterisk found; ``None`` where that could not be read."""

    source: str  # how it was reached: "AMI 127.0.0.1:5038", "ARI http://pbx:8088/ari"
    kind: str = "ami"  # "ami" or "ari"
    login_error: str = ""  # "" once logged in
    login_fix: str = ""
    # Rights: action (or REST call) → why Asterisk refused it ("Permission denied")
    denied: dict[str, str] = field(default_factory=dict)
    getvar_checked: bool = False  # the check could tell whether Getvar is allowed
    # Events: the classes of events that arrived while the check listened (AMI Privilege)
    event_classes: set[str] = field(default_factory=set)
    events_seen: int = 0
    booted: bool = False  # AMI FullyBooted (sent at login to users with read = system)
    listened: float = 0.0  # seconds the check listened for events
    # (extension, context, hint) for every hint; None when Asterisk cannot list them (ARI)
    hints: list[tuple[str, str, str]] | None = None
    endpoints: dict[str, Endpoint] | None = None
    # The includes and pattern hints (AMI ShowDialPlan); None when they could not be listed
    dialplan: DialplanRead | None = None
    # AOR → the contacts Asterisk can reach; None when they could not be read
    contacts: dict[str, list[str]] | None = None
    notes: list[str] = field(default_factory=list)  # what went wrong reading, for the log
