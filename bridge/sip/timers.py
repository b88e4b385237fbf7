"""One heap of deadlines for every subscription and transaction (O(log n) per operation)."""

from __future__ import annotations

import heapq
import itertools
from typing import Generic, Protocol, TypeVar

__all__ = ["NO_TIMER", "Timed", "TimerQueue"]

NO_TIMER = -1  # Timed.timer_seq of an object without a deadline


class Timed(Protocol):
    """An object a TimerQueue can hold: it carries the sequence number of its valid entry.

    Kept on the object rather than in a dict of the queue: with tens of thousands of
    subscriptions that dict would cost about 100 bytes each. An object belongs to one queue.
    """

    timer_seq: int


T = TypeVar("T", bound=Timed)


class TimerQueue(Generic[T]):
    """Each object has at most one live deadline; rescheduling or cancelling leaves a stale entry.

    A heap cannot delete from the middle cheaply, so stale entries stay and are recognised by
    their sequence number: skipped when they reach the top, and swept out all at once when they
    outnumber live ones (amortised O(1) per operation, memory bounded by 2x live + slack).
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, T]] = []
        self._live = 0  # objects with a deadline
        self._counter = itertools.count()

    def schedule(self, obj: T, when: float) -> None:
        """Set (or move) obj's deadline."""
        if obj.timer_seq == NO_TIMER:
            self._live += 1
        obj.timer_seq = seq = next(self._counter)
        heapq.heappush(self._heap, (when, seq, obj))
        self._compact_if_needed()

    def cancel(self, obj: T) -> None:
        """Forget obj's deadline, if it has one."""
        if obj.timer_seq != NO_TIMER:
            obj.timer_seq = NO_TIMER
            self._live -= 1
            self._compact_if_needed()

    def next_deadline(self) -> float | None:
        """The earliest live deadline, or None."""
        self._drop_stale_top()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> T | None:
        """Remove and return one object whose deadline is <= now (earliest first), or None."""
        self._drop_stale_top()
        if not self._heap or self._heap[0][0] > now:
            return None
        _, _, obj = heapq.heappop(self._heap)
        obj.timer_seq = NO_TIMER
        self._live -= 1
        return obj

    def __len__(self) -> int:
        return self._live

    @property
    def heap_size(self) -> int:
        """Entries in the heap, stale ones included (for tests and stats)."""
        return len(self._heap)

    def _drop_stale_top(self) -> None:
        heap = self._heap
        while heap and heap[0][2].timer_seq != heap[0][1]:
            heapq.heappop(heap)

    def _compact_if_needed(self) -> None:
        if len(self._heap) > 2 * self._live + 64:
            self._heap = [e for e in self._heap if e[2].timer_seq == e[1]]
            heapq.heapify(self._heap)
