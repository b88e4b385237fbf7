"""The one non-INVITE client transaction of the bridge (RFC 3261 §17.1.2), for NOTIFY and MESSAGE.

Sans-I/O and clock-free: the owner sends ``data`` once, keeps the transaction under ``due_at`` in
its timer queue and calls ``fire(now)`` when that time comes. Over UDP Timer E retransmits from
T1 doubling up to T2 (T2 at once after a 1xx); on every transport Timer F gives up.
"""

from __future__ import annotations

__all__ = ["T1", "T2", "ClientTransaction"]

T1 = 0.5  # seconds: RFC 3261's estimate of a round trip
T2 = 4.0  # seconds: the longest retransmission interval of a non-INVITE request


class ClientTransaction:
    """One request in flight until a final answer or Timer F; subclasses add what the owner
    needs to find its way back (the subscription, the phone's contact)."""

    __slots__ = ("branch", "data", "due_at", "interval", "proceeding", "t2", "timeout_at")

    def __init__(  # noqa: PLR0917 (positional on purpose: see the docstring)
        self,
        branch: str,
        data: bytes,
        now: float,
        t1: float,
        t2: float,
        reliable: bool,
        timeout: float,
    ) -> None:
        """Sent at ``now``; ``timeout``: Timer F's length, 64*T1 (``T1`` here) unless the owner
        wants it sooner (an address that never answered). Positional: built once per NOTIFY of
        every fan-out, where keyword passing costs."""
        self.branch = branch
        self.data = data  # retransmissions resend exactly these bytes
        self.t2 = t2
        self.timeout_at = now + timeout
        self.interval = 0.0 if reliable else t1  # Timer E; streams never retransmit
        self.due_at = now + self.interval if self.interval else self.timeout_at
        self.proceeding = False

    def provisional(self) -> None:
        """A 1xx came: from now on retransmit every T2 (RFC 3261 §17.1.2.2)."""
        self.proceeding = True

    def fire(self, now: float) -> bool:
        """``due_at`` has come: True when Timer F ran out (the transaction failed); False when
        ``data`` must be sent again now, and ``due_at`` is the next time to call."""
        if now >= self.timeout_at:
            return True
        self.interval = self.t2 if self.proceeding else min(2 * self.interval, self.t2)
        self.due_at = min(now + self.interval, self.timeout_at)
        return False
