"""One heap of deadlines for every subscription and transaction (O(log n) per operation)."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["TimerQueue"]

T = TypeVar("T", bound=Hashable)


class TimerQueue(Generic[T]):
    """Each object has at most one live deadline; rescheduling or cancelling leaves a stale entry.

    A heap cannot delete from the middle cheaply, so stale entries stay and are recognised by
    their sequence number: skipped when they reach the top, and swept out all at once when they
    outnumber live ones (amortised O(1) per operation, memory bounded by 2x live + slack).
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, T]] = []
        self._live: dict[T, int] = {}  # object -> sequence number of its valid entry
        self._counter = itertools.count()

    def schedule(self, obj: T, when: float) -> None:
        """Set (or move) obj's deadline."""
        seq = next(self._counter)
        self._live[obj] = seq
        heapq.heappush(self._heap, (when, seq, obj))
        self._compact_if_needed()

    def cancel(self, obj: T) -> None:
        """Forget obj's deadline, if it has one."""
        if self._live.pop(obj, None) is not None:
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
        del self._live[obj]
        return obj

    def __len__(self) -> int:
        return len(self._live)

    @property
    def heap_size(self) -> int:
        """Entries in the heap, stale ones included (for tests and stats)."""
        return len(self._heap)

    def _drop_stale_top(self) -> None:
        heap, live = self._heap, self._live
        while heap and live.get(heap[0][2]) != heap[0][1]:
            heapq.heappop(heap)

    def _compact_if_needed(self) -> None:
        if len(self._heap) > 2 * len(self._live) + 64:
            live = self._live
            self._heap = [e for e in self._heap if live.get(e[2]) == e[1]]
            heapq.heapify(self._heap)
