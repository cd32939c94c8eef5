"""Deadlines of many owners in one heap, earliest first (sans-I/O: no clock).

The transaction layer keeps every transaction's timers here (owner: its key,
name: "A", "B", ...), the call layer one deadline per call (its next timer).

Lazy deletion: arming pushes an entry with a fresh token and records the token
as the live one for (owner, name); cancelling or re-arming only changes that
record, and an entry whose token is no longer live is dropped when it reaches
the head (:meth:`TimerHeap.next_wakeup` and :meth:`TimerHeap.pop` never return
one). The heap is rebuilt from its live entries when stale ones outnumber
them four to one, looked at each time it outgrows four times the timers armed at
the last look (at least 256 entries), so it stays bounded however often timers
are re-armed.
"""

from __future__ import annotations

from collections.abc import Hashable
from heapq import heapify, heappop, heappush
from typing import Generic, TypeVar

__all__ = ["TimerHeap"]

K = TypeVar("K", bound=Hashable)

_COMPACT_ABOVE = 256  # entries; below this a rebuild is not worth it


class TimerHeap(Generic[K]):
    """Named deadlines per owner; :meth:`pop` hands out the due ones in order."""

    __slots__ = ("_armed", "_check_at", "_heap", "_live", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, K, str]] = []
        # owner -> name -> (the live entry's token, its deadline)
        self._live: dict[K, dict[str, tuple[int, float]]] = {}
        self._seq = 0
        self._armed = 0
        self._check_at = _COMPACT_ABOVE  # heap entries above which _compact looks

    @property
    def entries(self) -> int:
        """Entries in the heap, stale ones not yet dropped included (its memory)."""
        return len(self._heap)

    def __len__(self) -> int:
        """Armed timers."""
        return self._armed

    def deadline(self, owner: K, name: str) -> float | None:
        """When ``name`` of ``owner`` fires; None when it is not armed."""
        names = self._live.get(owner)
        live = None if names is None else names.get(name)
        return None if live is None else live[1]

    def armed(self, owner: K, name: str) -> bool:
        names = self._live.get(owner)
        return names is not None and name in names

    def arm(self, owner: K, name: str, when: float) -> None:
        """(Re-)arm ``name`` of ``owner`` to fire at ``when``."""
        # Six arms a call and more per transaction: attributes are read once here, and
        # an owner's first timer makes its dict in one expression.
        self._seq = seq = self._seq + 1
        names = self._live.get(owner)
        if names is None:  # not setdefault: that builds an empty dict on every arm
            self._live[owner] = {name: (seq, when)}
            self._armed += 1
        else:
            if name not in names:
                self._armed += 1
            names[name] = (seq, when)
        heap = self._heap
        heappush(heap, (when, seq, owner, name))
        if len(heap) > self._check_at:
            self._compact()

    def _compact(self) -> None:
        """Rebuild the heap from its live entries when stale ones outnumber them four
        to one; either way, the next look is when the heap outgrows four times the
        timers armed now (or :data:`_COMPACT_ABOVE`): one comparison per arm, not a
        count of the live ones."""
        if len(self._heap) > 4 * self._armed:
            self._heap = [e for e in self._heap if self._is_live(e)]
            heapify(self._heap)
        self._check_at = max(_COMPACT_ABOVE, 4 * self._armed)

    def cancel(self, owner: K, name: str) -> None:
        names = self._live.get(owner)
        if names is not None and names.pop(name, None) is not None:
            self._armed -= 1
            if not names:
                del self._live[owner]

    def cancel_all(self, owner: K) -> None:
        names = self._live.pop(owner, None)
        if names is not None:
            self._armed -= len(names)

    def next_wakeup(self) -> float | None:
        """The earliest armed deadline, None when nothing is armed."""
        heap = self._heap
        while heap and not self._is_live(heap[0]):
            heappop(heap)
        return heap[0][0] if heap else None

    def pop(self, now: float) -> tuple[K, str] | None:
        """The earliest timer due at ``now``, disarmed; None when none is due."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            entry = heappop(heap)
            if self._is_live(entry):
                _, _, owner, name = entry
                self.cancel(owner, name)
                return owner, name
        return None

    def _is_live(self, entry: tuple[float, int, K, str]) -> bool:
        names = self._live.get(entry[2])
        live = None if names is None else names.get(entry[3])
        return live is not None and live[0] == entry[1]
