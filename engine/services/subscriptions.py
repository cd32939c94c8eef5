"""Subscriptions to the dialog (BLF) and presence event packages, sans-I/O.

RFC 6665 (SIP events) as the notifier for two packages:

* ``dialog`` (RFC 4235): a desk phone's busy lamp field. The phone subscribes
  to an extension (Request-URI user) and gets a full-state
  ``application/dialog-info+xml`` document on every change of that extension's
  calls (``engine.services.dialoginfo``).
* ``presence`` (RFC 3856): a softphone's buddy list, ``application/pidf+xml``,
  the user's status and whether they are on a call.

The engine authenticates and authorises the SUBSCRIBE (``engine.core``); this
module keeps the subscriptions: their dialogs, their state (:data:`SUBSCRIPTION`,
a table that refuses illegal moves), their expiry (one heap, the engine takes its
earliest deadline) and the NOTIFYs, paced.

Decisions (where the RFCs leave a choice):

* Every document is full state (RFC 4235 s4.1 ``state="full"``, RFC 3856 s6.6):
  the body is built when the NOTIFY leaves, so changes that pile up while a
  subscription waits its turn are sent as one current document, never stale
  partial ones. ``version`` counts per subscription from 0 (RFC 4235 s4.1).
* A document identical to the last one sent to that subscription is not sent
  again (a second 180, a status set to what it was).
* NOTIFYs are paced: at most :data:`NOTIFY_BURST` per :data:`NOTIFY_TICK`
  seconds; the rest wait in order (a status change of a user watched by 200
  phones; after a restart, every phone subscribing again, whose first NOTIFYs wait
  their turn too). The engine's timer comes back for them. Final NOTIFYs
  (terminated) are not held back: the subscription is gone once they leave.
* When the engine stops, each subscription ends with ``reason=deactivated``
  (RFC 6665 s4.1.3: subscribe again at once), so phones move their lamps to the
  engine that takes over (or this one, restarted) instead of waiting for a refresh
  that could be an hour away.
* A NOTIFY that times out or gets an error other than 481 does not end the
  subscription: a phone that missed one (rebooting, a lost datagram burst) keeps
  its lamps, and the next change or refresh brings it the whole state again.
  RFC 6665 s4.2.2 says a notifier SHOULD remove a subscription whose NOTIFY timed
  out; we do after :data:`MAX_FAILURES` failures in a row, so a phone that is
  really gone does not hold a subscription until it expires. A 481 ends it at once
  (RFC 6665 s4.2.2: the subscriber knows no such subscription).
* Each phone (the authenticated user) holds at most :data:`MAX_PER_WATCHER`
  subscriptions of these packages: a BLF page of 100 keys is the largest phone
  expansion module; more is a misconfigured or hostile client (403).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

import structlog

from engine.calls.states import Machine
from engine.sip.dialog import Dialog, new_tag
from engine.sip.message import Request, Response, make_response, warning_value
from engine.sip.subscribe import expires_asked, refresh
from engine.sip.timerheap import TimerHeap
from engine.sip.transaction import Addr, Event, TxKey

if TYPE_CHECKING:
    from engine.calls.headers import Local
    from engine.metrics import Metrics
    from engine.sip.transaction import TransactionLayer

__all__ = [
    "DIALOG",
    "MAX_EXPIRES",
    "MAX_FAILURES",
    "MAX_PER_WATCHER",
    "MIN_EXPIRES",
    "NOTIFY_BURST",
    "NOTIFY_TICK",
    "PACKAGES",
    "PRESENCE",
    "SUBSCRIPTION",
    "Document",
    "SubEvent",
    "SubState",
    "Subscription",
    "Subscriptions",
]

log = structlog.get_logger("switchboard.subscriptions")

DIALOG = "dialog"
PRESENCE = "presence"
# package -> the body type its NOTIFYs carry (RFC 4235 s4, RFC 3856 s6.6).
PACKAGES = {DIALOG: "application/dialog-info+xml", PRESENCE: "application/pidf+xml"}
MIN_EXPIRES = 60
MAX_EXPIRES = 3600  # also the default: RFC 4235 s3.2, RFC 3856 s6.4 suggest 3600
MAX_PER_WATCHER = 100
MAX_FAILURES = 3
NOTIFY_BURST = 50
NOTIFY_TICK = 0.05  # seconds: at most 1,000 NOTIFYs a second


class SubState(StrEnum):
    NEW = "new"  # the SUBSCRIBE is being answered
    ACTIVE = "active"
    TERMINATED = "terminated"


class SubEvent(StrEnum):
    ACCEPT = "accept"  # our 200 to the initial SUBSCRIBE
    FETCH = "fetch"  # an initial SUBSCRIBE with Expires: 0: one NOTIFY, then over
    REFRESH = "refresh"  # a SUBSCRIBE in the dialog with Expires > 0
    UNSUBSCRIBE = "unsubscribe"  # a SUBSCRIBE in the dialog with Expires: 0
    EXPIRE = "expire"  # not refreshed in time
    NOTIFY_OK = "notify_ok"  # a 2xx to one of our NOTIFYs
    NOTIFY_FAILED = "notify_failed"  # a NOTIFY timed out or got an error but 481
    GIVE_UP = "give_up"  # MAX_FAILURES NOTIFYs in a row failed
    GONE = "gone"  # 481 to a NOTIFY: the subscriber has no such subscription
    REVOKED = "revoked"  # the watcher or the watched extension left the directory
    SHUTDOWN = "shutdown"  # the engine stops


_N, _A, _T = SubState.NEW, SubState.ACTIVE, SubState.TERMINATED
SUBSCRIPTION: Machine[SubState, SubEvent] = Machine("subscription", {
    (_N, SubEvent.ACCEPT): _A,  # RFC 6665 s4.2.1.1, s4.2.1.2: 200, then NOTIFY at once
    (_N, SubEvent.FETCH): _T,  # RFC 6665 s4.4.3: a fetch, answered by one NOTIFY
    (_A, SubEvent.REFRESH): _A,  # RFC 6665 s4.2.1.2: the new Expires, then NOTIFY
    (_A, SubEvent.UNSUBSCRIBE): _T,  # RFC 6665 s4.1.2.3, s4.2.1.2: final NOTIFY
    (_A, SubEvent.EXPIRE): _T,  # RFC 6665 s4.2.2: NOTIFY with reason=timeout
    (_A, SubEvent.NOTIFY_OK): _A,  # RFC 6665 s4.2.2
    (_A, SubEvent.NOTIFY_FAILED): _A,  # kept: see the module's decisions
    (_A, SubEvent.GIVE_UP): _T,  # RFC 6665 s4.2.2: SHOULD remove after a timeout
    (_A, SubEvent.GONE): _T,  # RFC 6665 s4.2.2: a 481 removes the subscription
    (_A, SubEvent.REVOKED): _T,  # RFC 6665 s4.2.2 (s4.1.3 reasons rejected, noresource)
    (_A, SubEvent.SHUTDOWN): _T,  # RFC 6665 s4.1.3 reason deactivated: subscribe again
    # The response to the final NOTIFY arrives after the subscription ended.
    (_T, SubEvent.NOTIFY_OK): _T,
    (_T, SubEvent.NOTIFY_FAILED): _T,
    (_T, SubEvent.GONE): _T,
})


@dataclass(frozen=True, slots=True)
class Document:
    """What a NOTIFY of one package says about one extension: ``state`` compares two
    documents (unchanged: not sent again), ``render(version)`` is the body."""

    state: object
    render: Callable[[int], bytes]


# (package, extension, now) -> the document to send now
Renderer = Callable[[str, str, float], Document]


@dataclass(slots=True, eq=False)
class Subscription:
    package: str
    watcher: str  # the authenticated user who subscribed
    target: str  # the extension watched
    dialog: Dialog
    dest: Addr
    transport: str
    expires_at: float  # monotonic
    state: SubState = SubState.NEW
    version: int = 0  # the next document's version (RFC 4235 s4.1)
    failures: int = 0  # NOTIFYs in a row that failed
    last: object = field(default=None)  # the state of the last document sent

    @property
    def ident(self) -> tuple[str, str]:
        return (self.dialog.call_id, self.dialog.local_tag)

    def move(self, event: SubEvent) -> None:
        self.state = SUBSCRIPTION.move(self.state, event)


class Subscriptions:
    """Every dialog and presence subscription of one engine."""

    def __init__(self, transactions: TransactionLayer, render: Renderer,
                 metrics: Metrics | None = None) -> None:
        self.tx = transactions
        self.render = render
        self.metrics = metrics
        self.subs: dict[tuple[str, str], Subscription] = {}  # (Call-ID, our tag)
        self._watching: dict[tuple[str, str], set[Subscription]] = {}  # (package, ext)
        self._per_watcher: dict[str, int] = {}
        # Resources watched (either package) -> how many subscriptions: the set other
        # nodes read (engine.services.lamps); ``watch_moved`` when it gained or lost one.
        self._resources: dict[str, int] = {}
        self.watch_moved = False
        self._expiry: TimerHeap[tuple[str, str]] = TimerHeap()
        self._notifies: dict[TxKey, Subscription] = {}
        # Subscriptions whose NOTIFY waits for the pace; the engine reads it after every
        # input (a deque's truth, no call: :attr:`pending` says the same).
        self.queue: deque[Subscription] = deque()
        self._queued: set[Subscription] = set()
        self._tick_start = float("-inf")
        self._sent_in_tick = 0

    # ------------------------------------------------------------------ SUBSCRIBE
    def subscribe(self, req: Request, key: TxKey, package: str, watcher: str, target: str,
                  source: Addr, transport: str, now: float, local: Local) -> list[Event]:
        """A new SUBSCRIBE (no To tag), authenticated as ``watcher`` and allowed to
        watch ``target`` (the engine checked both)."""
        expires = expires_asked(req, MAX_EXPIRES)
        if 0 < expires < MIN_EXPIRES:  # RFC 6665 s4.2.1.1: 423 with Min-Expires
            return self.tx.respond(key, make_response(
                req, 423, headers=[("Min-Expires", str(MIN_EXPIRES))]), now)
        if expires and self._per_watcher.get(watcher, 0) >= MAX_PER_WATCHER:
            return self.tx.respond(key, make_response(req, 403, headers=[(
                "Warning", warning_value(
                    f"user {watcher!r} holds {MAX_PER_WATCHER} subscriptions, the most "
                    "allowed"))]), now)
        tag = new_tag()
        contact = local.contact(transport)
        events = self.tx.respond(key, make_response(req, 200, headers=[
            ("Expires", str(expires)), ("Contact", contact)], to_tag=tag), now)
        sub = Subscription(package, watcher, target,
                           Dialog.uas(req, tag, contact, confirmed=True), source, transport,
                           now + expires)
        if not expires:
            sub.move(SubEvent.FETCH)
            return events + self._send(sub, now, local, "terminated;reason=timeout")
        sub.move(SubEvent.ACCEPT)
        self._add(sub)
        log.info("subscribed", package=package, watcher=watcher, target=target,
                 expires=expires, call_id=req.call_id)
        return events + self._send_or_queue(sub, now, local)

    def in_dialog(self, req: Request, key: TxKey, now: float,
                  local: Local) -> list[Event] | None:
        """A refresh or an unsubscribe (a request with our To tag); None: not ours."""
        sub = self.subs.get((req.call_id, req.to.tag or ""))
        if sub is None:
            return None
        events, expires = refresh(self.tx, req, key, sub.dialog, now, MIN_EXPIRES,
                                  MAX_EXPIRES)
        if expires is None:
            return events
        if not expires:
            sub.move(SubEvent.UNSUBSCRIBE)
            self._remove(sub, "unsubscribed")
            return events + self._send(sub, now, local, "terminated")
        sub.move(SubEvent.REFRESH)
        sub.expires_at = now + expires
        self._expiry.arm(sub.ident, "expires", sub.expires_at)
        return events + self._send_or_queue(sub, now, local)

    # ------------------------------------------------------------------ changes
    def changed(self, package: str, extensions: Iterable[str]) -> None:
        """The state of ``extensions`` changed for ``package``: their subscriptions
        are queued for a NOTIFY (sent by :meth:`flush`, paced)."""
        for ext in extensions:
            for sub in self._watching.get((package, ext), ()):
                if sub not in self._queued:
                    self._queued.add(sub)
                    self.queue.append(sub)

    @property
    def pending(self) -> bool:
        return bool(self.queue)

    def _budget(self, now: float) -> bool:
        """Whether one more NOTIFY may leave in this tick (a new tick starts when due)."""
        if now >= self._tick_start + NOTIFY_TICK:
            self._tick_start, self._sent_in_tick = now, 0
        return self._sent_in_tick < NOTIFY_BURST

    def _send_or_queue(self, sub: Subscription, now: float, local: Local) -> list[Event]:
        """The NOTIFY that follows a 200 (RFC 6665 s4.2.1.2): now, or in the queue, in
        arrival order, when this tick's budget is spent."""
        sub.last = None  # sent even when the state is the one last sent
        if self._budget(now):
            return self._send(sub, now, local)
        if sub not in self._queued:
            self._queued.add(sub)
            self.queue.append(sub)
        return []

    def shutdown(self, now: float, local: Local) -> list[Event]:
        """The engine stops: every subscription ends (``reason=deactivated``)."""
        events: list[Event] = []
        for sub in list(self.subs.values()):
            sub.move(SubEvent.SHUTDOWN)
            self._remove(sub, "shutdown")
            events += self._send(sub, now, local, "terminated;reason=deactivated")
        return events

    def flush(self, now: float, local: Local) -> list[Event]:
        """Send queued NOTIFYs, at most :data:`NOTIFY_BURST` per :data:`NOTIFY_TICK`."""
        self._budget(now)
        events: list[Event] = []
        while self.queue and self._sent_in_tick < NOTIFY_BURST:
            sub = self.queue.popleft()
            self._queued.discard(sub)
            if sub.state is SubState.ACTIVE:
                events += self._send(sub, now, local, skip_unchanged=True)
        return events

    def revoke(self, allowed: Callable[[Subscription], str], now: float,
               local: Local) -> list[Event]:
        """End the subscriptions ``allowed`` refuses (it returns the RFC 6665 s4.1.3
        reason, ``""`` to keep one): the directory changed under them."""
        events: list[Event] = []
        for sub in list(self.subs.values()):
            reason = allowed(sub)
            if reason:
                sub.move(SubEvent.REVOKED)
                self._remove(sub, reason)
                events += self._send(sub, now, local, f"terminated;reason={reason}")
        return events

    # ------------------------------------------------------------------ timers
    def next_wakeup(self) -> float | None:
        expiry = self._expiry.next_wakeup()
        if self.queue:
            tick = self._tick_start + NOTIFY_TICK
            return tick if expiry is None else min(tick, expiry)
        return expiry

    def on_timer(self, now: float, local: Local) -> list[Event]:
        events: list[Event] = []
        while (due := self._expiry.pop(now)) is not None:
            sub = self.subs.get(due[0])
            if sub is None:
                continue
            sub.move(SubEvent.EXPIRE)
            self._remove(sub, "expired")
            events += self._send(sub, now, local, "terminated;reason=timeout")
        return events + self.flush(now, local)

    # ------------------------------------------------------------------ NOTIFY results
    def on_response(self, key: TxKey, resp: Response) -> bool:
        """A response to one of our NOTIFYs (True: ours)."""
        sub = self._notifies.get(key)
        if sub is None:
            return False
        if resp.status < 200:
            return True
        del self._notifies[key]
        if resp.status < 300:
            sub.failures = 0
            sub.move(SubEvent.NOTIFY_OK)
        elif resp.status == 481:
            self._failed(sub, "481")
            if sub.state is SubState.ACTIVE:
                sub.move(SubEvent.GONE)
                self._remove(sub, "gone")
        else:
            self._failed(sub, str(resp.status))
        return True

    def on_timed_out(self, key: TxKey) -> bool:
        """One of our NOTIFYs got no answer (timer F) (True: ours)."""
        sub = self._notifies.pop(key, None)
        if sub is None:
            return False
        self._failed(sub, "timeout")
        return True

    def _failed(self, sub: Subscription, why: str) -> None:
        if self.metrics is not None:
            self.metrics.notifies_failed.labels(sub.package, why).inc()
        if why == "481":
            return
        sub.move(SubEvent.NOTIFY_FAILED)
        if sub.state is not SubState.ACTIVE:
            return
        sub.failures += 1
        log.info("notify failed", package=sub.package, watcher=sub.watcher, target=sub.target,
                 failures=sub.failures, reason=why, call_id=sub.dialog.call_id)
        if sub.failures >= MAX_FAILURES:
            sub.move(SubEvent.GIVE_UP)
            self._remove(sub, "gave up")

    # ------------------------------------------------------------------ bookkeeping
    def watched_by(self, watcher: str) -> int:
        return self._per_watcher.get(watcher, 0)

    def resources(self) -> set[str]:
        """The extensions and park orbits some subscription watches now."""
        return set(self._resources)

    def _add(self, sub: Subscription) -> None:
        self.subs[sub.ident] = sub
        self._watching.setdefault((sub.package, sub.target), set()).add(sub)
        self._per_watcher[sub.watcher] = self._per_watcher.get(sub.watcher, 0) + 1
        n = self._resources.get(sub.target, 0)
        self._resources[sub.target] = n + 1
        if not n:
            self.watch_moved = True
        self._expiry.arm(sub.ident, "expires", sub.expires_at)
        self._gauge(sub.package, 1)

    def _remove(self, sub: Subscription, why: str) -> None:
        if self.subs.pop(sub.ident, None) is None:
            return
        watching = self._watching.get((sub.package, sub.target))
        if watching is not None:
            watching.discard(sub)
            if not watching:
                del self._watching[(sub.package, sub.target)]
        n = self._per_watcher.get(sub.watcher, 0) - 1
        if n > 0:
            self._per_watcher[sub.watcher] = n
        else:
            self._per_watcher.pop(sub.watcher, None)
        n = self._resources.get(sub.target, 0) - 1
        if n > 0:
            self._resources[sub.target] = n
        else:
            self._resources.pop(sub.target, None)
            self.watch_moved = True
        self._expiry.cancel_all(sub.ident)
        self._queued.discard(sub)  # a queued entry of an ended subscription is skipped
        self._gauge(sub.package, -1)
        log.info("subscription ended", package=sub.package, watcher=sub.watcher,
                 target=sub.target, reason=why, call_id=sub.dialog.call_id)

    def _gauge(self, package: str, delta: int) -> None:
        if self.metrics is not None:
            self.metrics.subscriptions_active.labels(package).inc(delta)

    def _send(self, sub: Subscription, now: float, local: Local, terminal: str = "",
              skip_unchanged: bool = False) -> list[Event]:
        document = self.render(sub.package, sub.target, now)
        if skip_unchanged and document.state == sub.last:
            return []
        sub.last = document.state
        body = document.render(sub.version)
        sub.version += 1
        state = terminal or f"active;expires={max(0, int(sub.expires_at - now))}"
        request = sub.dialog.new_request(
            "NOTIFY", via_host=local.host, via_port=local.port_for(sub.transport),
            transport=sub.transport.upper(),
            headers=[("Event", sub.package), ("Subscription-State", state)],
            body=body, content_type=PACKAGES[sub.package])
        key, events = self.tx.send_request(request, sub.dest, sub.transport, now)
        self._notifies[key] = sub
        self._sent_in_tick += 1
        if self.metrics is not None:
            self.metrics.notifies_sent.labels(sub.package).inc()
        return events
