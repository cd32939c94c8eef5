"""The engine's one timer on the event loop.

The engine keeps every deadline (transactions, calls, registrations, trunks) in
its own heap and says when it next needs to run (``Engine.next_wakeup()``);
this is the single loop timer that wakes it then. Re-armed after everything the
engine is handed (as aioquic's protocol re-arms after each transmit): only an
earlier deadline moves it, a later one waits for the next firing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["Timer"]


class Timer:
    """One ``loop.call_later`` handle, moved only earlier; ``fire`` runs when it is due."""

    __slots__ = ("_at", "_fire", "_handle")

    def __init__(self, fire: Callable[[], None]) -> None:
        self._fire = fire
        self._handle: asyncio.TimerHandle | None = None
        self._at: float | None = None

    def arm(self, wake: float | None) -> None:
        """Fire at ``wake`` (monotonic) unless already due by then; None: nothing due."""
        if wake is None or (self._at is not None and self._at <= wake):
            return
        if self._handle is not None:
            self._handle.cancel()
        delay = max(0.0, wake - time.monotonic())
        self._at = wake
        self._handle = asyncio.get_running_loop().call_later(delay, self._due)

    def _due(self) -> None:
        self._handle = None
        self._at = None
        self._fire()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
