"""Live events for a wallboard: status changes, registrations up and down, calls
started, answered and ended.

**Where they come from.** The hub polls the engine's live view (the same
:class:`~provisioning.api.live.Live` the ``/statuses``, ``/registrations`` and
``/calls`` routes read) once a second while someone listens, and diffs it with
the previous poll. No hook sits in the call code: the B2BUA is being reshaped,
and a poll of its public list of calls survives that where a callback inside it
would not. The price is precision: an event's time is the poll's (within a
second), and a call shorter than a poll interval may not be seen at all.

**How they are served.** ``GET /api/v1/events`` is Server-Sent Events. The
admin listener ends any request after 30 s, so a stream lasts at most
:data:`STREAM_SECONDS` and says ``retry: 1000``: an ``EventSource`` reconnects
by itself and sends ``Last-Event-ID``; the hub keeps the last
:data:`KEEP_EVENTS` events, so a reconnecting wallboard misses nothing.

:func:`diff` is pure (two snapshots in, events out) and tested on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from provisioning.api.live import Live

__all__ = ["KEEP_EVENTS", "POLL_SECONDS", "STREAM_SECONDS", "EventHub", "Snapshot", "diff",
           "involved"]

POLL_SECONDS = 1.0
STREAM_SECONDS = 25.0  # under the listener's 30 s handler deadline
KEEP_EVENTS = 1000


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="seconds")


@dataclass
class Snapshot:
    statuses: dict[str, str] = field(default_factory=dict)
    registrations: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    calls: dict[str, dict[str, Any]] = field(default_factory=dict)  # call_id -> facts


def take(live: Live, previous: Snapshot, now: float) -> Snapshot:
    """The live view now; a call keeps the times first seen (started, answered)."""
    statuses: dict[str, str] = {u.extension: u.status for u in live.directory().users}
    registrations: dict[tuple[str, str], dict[str, Any]] = {
        (str(r["extension"]), str(r.get("contact", ""))): r for r in live.registrations()}
    calls: dict[str, dict[str, Any]] = {}
    for call in live.calls():
        call_id = str(call["call_id"])
        before = previous.calls.get(call_id, {})
        answered = call.get("state") == "answered"
        calls[call_id] = {
            "call_id": call_id, "caller": call.get("caller", ""),
            "callee": call.get("callee", ""), "extensions": sorted(call.get("members", ())),
            "started": before.get("started") or _iso(now - float(call.get("seconds", 0))),
            "answered": before.get("answered") or (_iso(now) if answered else None),
        }
    return Snapshot(statuses, registrations, calls)


def diff(old: Snapshot, new: Snapshot, now: float) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for ext, status in sorted(new.statuses.items()):
        if ext in old.statuses and old.statuses[ext] != status:
            events.append({"type": "status", "extension": ext, "status": status,
                           "previous": old.statuses[ext]})
    for key in sorted(new.registrations.keys() - old.registrations.keys()):
        r = new.registrations[key]
        events.append({"type": "registration", "state": "up", "extension": key[0],
                       "contact": key[1], "user_agent": r.get("user_agent", "")})
    for key in sorted(old.registrations.keys() - new.registrations.keys()):
        events.append({"type": "registration", "state": "down", "extension": key[0],
                       "contact": key[1]})
    for call_id, call in new.calls.items():
        before = old.calls.get(call_id)
        if before is None:
            events.append({"type": "call.started", **call})
        if call["answered"] and (before is None or not before.get("answered")):
            events.append({"type": "call.answered", **call})
    for call_id, call in old.calls.items():
        if call_id not in new.calls:
            events.append({"type": "call.ended", **call, "ended": _iso(now)})
    return events


def involved(event: Mapping[str, Any]) -> set[str]:
    """The extensions an event is about (who may see it follows from these)."""
    if "extension" in event:
        return {str(event["extension"])}
    return {str(event.get("caller", "")), str(event.get("callee", "")),
            *map(str, event.get("extensions", ()))} - {""}


class EventHub:
    """Polls while at least one stream listens; keeps the last events, numbered."""

    def __init__(self, live: Live, interval: float = POLL_SECONDS,
                 keep: int = KEEP_EVENTS) -> None:
        self.live = live
        self.interval = interval
        self.events: deque[tuple[int, dict[str, Any]]] = deque(maxlen=keep)
        self.last_id = 0
        self.listeners = 0
        self.closing = False  # the server stops: streams end at once
        self._snapshot: Snapshot | None = None
        self._polled = 0.0
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    def listen(self) -> None:
        self.listeners += 1
        if self._task is None or self._task.done():
            if self._snapshot is None or time.monotonic() - self._polled > 5 * self.interval:
                # nobody listened for a while: start from now, not with a burst of stale diffs
                self._snapshot = take(self.live, Snapshot(), time.time())
                self._polled = time.monotonic()
            self._task = asyncio.create_task(self._poll())

    def leave(self) -> None:
        self.listeners -= 1

    async def _poll(self) -> None:
        while self.listeners > 0:
            await asyncio.sleep(self.interval)
            self.poll_once()
            async with self._changed:
                self._changed.notify_all()

    def poll_once(self) -> None:
        now = time.time()
        old = self._snapshot or Snapshot()
        self._snapshot = take(self.live, old, now)
        self._polled = time.monotonic()
        for event in diff(old, self._snapshot, now):
            self.last_id += 1
            self.events.append((self.last_id, {"at": _iso(now), **event}))

    async def close(self) -> None:
        self.closing = True
        async with self._changed:
            self._changed.notify_all()
        if self._task is not None:
            self._task.cancel()

    def after(self, last_id: int) -> list[tuple[int, dict[str, Any]]]:
        return [(i, e) for i, e in self.events if i > last_id]

    async def wait(self, timeout: float) -> None:
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)
