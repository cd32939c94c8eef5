"""The calls of one engine: the front object of the call layer.

Sans-I/O like the layers below: each entry point takes a message or event and
``now`` (monotonic seconds) and returns what to send. :class:`Calls` finds the
call an input belongs to (by the caller's dialog, by a transaction it started,
by a leg's Call-ID) and hands it over; the call does the rest
(``engine.calls.call.Call``). An exception while one call handles an input is
logged with its Call-ID, counted (``switchboard_internal_errors_total``) and
ends that call only.

It also keeps what calls share: the trunk channels in use, who is on a call
(busy), live statuses, the directory snapshot and how the engine names itself
(:class:`~engine.calls.headers.Local`), and one heap of the calls' next timers
(:meth:`Calls.next_wakeup`, :meth:`Calls.on_timer`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import TYPE_CHECKING

import structlog

from engine.calls.call import Call, RelayedRequest
from engine.calls.events import CallKey, CallOutput, StopMedia
from engine.calls.headers import Local
from engine.calls.leg import Leg
from engine.calls.pickup import replaces_target
from engine.calls.queue import QueueFigures, Queues
from engine.calls.records import dialog_record, mark, parties, record_id
from engine.calls.rules import PlanText
from engine.calls.states import CallEvent, CallState
from engine.calls.transfer import Transfer
from engine.sip.dialog import new_tag
from engine.sip.message import Request, Response, make_response, warning_value
from engine.sip.timerheap import TimerHeap
from engine.sip.transaction import Addr, Send, State, TxKey
from provisioning.model import DialogRecord, Directory, Status
from routing import CallFacts, LiveState, plan

if TYPE_CHECKING:
    from engine.metrics import Metrics
    from engine.sip.registrar import Registrar
    from engine.sip.transaction import TransactionLayer

__all__ = ["CallSummary", "Calls"]

log = structlog.get_logger("switchboard.call")

_NEXT = "next"  # the one deadline per call in the heap: the call's next timer
# The queues' earliest deadline files under this key (no Call-ID is empty).
_QUEUES: CallKey = ("", "queues")


@dataclass(frozen=True, slots=True)
class CallSummary:
    """A call in progress, as the admin API and the tests see it."""

    call_id: str
    caller: str
    callee: str
    state: str  # routing, answered
    step: int  # the plan step running, from 1
    started: float  # monotonic seconds
    members: tuple[str, ...]  # the extensions on the call (what makes them busy)


class Calls:
    """All calls of one engine."""

    def __init__(self, transactions: TransactionLayer, registrar: Registrar, local: Local,
                 wall_clock: Callable[[], float], metrics: Metrics | None = None,
                 anchor_media: bool = False) -> None:
        self.metrics = metrics
        # True: calls with an SDP offer get their RTP through the engine (hold
        # music, recording, rebound screening); False: SDP passes end to end.
        self.anchor_media = anchor_media
        self.tx = transactions
        self.timers = transactions.timers
        self.registrar = registrar
        self.wall_clock = wall_clock
        self.local = local  # how the engine names itself (the engine keeps it current)
        self.directory: Directory | None = None
        # Trunks by name: (host, port, transport) and channel limits (None: no limit).
        self.trunk_addresses: dict[str, tuple[str, int, str]] = {}
        self.trunk_limits: dict[str, int | None] = {}
        # Every queue: callers, agents, their timers (one deadline in the heap).
        self.queues = Queues(self)
        if metrics is not None:
            metrics.read_queues(lambda now: [
                f.to_json() for name in list(self.queues.rooms)
                if (f := self.queues.figures(name, now)) is not None])
        self._statuses: dict[str, Status] = {}
        self.completed = 0  # calls ended since the engine started
        self._channels: dict[str, int] = {}  # trunk -> channels in use
        self._on_call: dict[str, int] = {}  # extension -> calls it is on
        self._calls: dict[CallKey, Call] = {}  # (Call-ID, caller's From tag)
        self._by_tag: dict[tuple[str, str], Call] = {}  # (Call-ID, our To tag)
        self._by_invite: dict[TxKey, Call] = {}  # the caller's INVITE transaction
        self._legs: dict[TxKey, Leg] = {}  # callee INVITE client transactions
        # What stays of an answered leg once its call ended, while its INVITE client
        # transaction lives on (RFC 6026 s7.2: Accepted until Timer M, 64*T1): the ACK
        # its 2xx got, sent again for each retransmission of that 2xx (RFC 3261
        # s13.2.2.4). A Send, not the Leg: the leg would keep its whole ended call
        # (plan, dialogs, requests) alive that long; without it the call is freed by
        # reference counting as it ends (:meth:`_retire`).
        self._acked: dict[TxKey, Send] = {}
        self._by_leg_call_id: dict[str, Leg] = {}
        self._relays: dict[TxKey, RelayedRequest] = {}
        # Re-INVITEs moving a consultation call's callee to the transferee's call.
        self._moves: dict[TxKey, Transfer] = {}
        self._wakeups: TimerHeap[CallKey] = TimerHeap()
        self._parked: dict[str, Call] = {}  # park orbit -> the call waiting there
        # Which other node holds a call (kind "parked": on an orbit; "ringing": an
        # extension), "" when none known: the busy lamps the others published
        # (engine.services.lamps; the engine sets it). Known only for resources some
        # node other than the holder watches.
        self.held_elsewhere: Callable[[str, str], str] = lambda _kind, _resource: ""
        # Dialog records (engine.calls.records): the mark last recorded per answered
        # call, and what to write or delete in the store since the last take_records.
        self._recorded: dict[CallKey, tuple[object, ...]] = {}
        self._answered_wall: dict[CallKey, float] = {}
        self._records_saved: list[DialogRecord] = []
        self._records_ended: list[str] = []
        # Calls and legs whose state moved (or that began) since the engine last took
        # them: the busy lamps and presence follow them (engine.services.dialoginfo).
        # Noted only while the engine keeps its dialog book (someone watches a lamp or
        # a presence): with no watcher a call makes no entries, and the engine builds
        # the book afresh from :meth:`live_items` when the first watcher comes.
        self.notes_changes = False
        self.changed: list[Call | Leg] = []

    def set_directory(self, directory: Directory) -> None:
        self.directory = directory
        if self.metrics is not None:  # file order decides which groups get a label
            self.metrics.admit_billing_groups(n.billing_group for n in directory.numbers)
        self.trunk_addresses = {t.name: (t.host, t.port, t.transport) for t in directory.trunks}
        self.trunk_limits = {t.name: t.channels for t in directory.trunks}
        self.queues.set_directory(directory)
        self.queues.changed()  # agents added, logged in at start, schedules changed

    @property
    def statuses(self) -> dict[str, Status]:
        """Live statuses (``switchboard status set``, the admin API)."""
        return self._statuses

    @statuses.setter
    def statuses(self, statuses: dict[str, Status]) -> None:
        # A status whose rules say log_out_of_queues logs its agent out as it is set.
        self.queues.statuses_changed(self._statuses, statuses)
        self._statuses = statuses
        self.queues.changed()  # an agent made available is offered a caller at once

    def queue_figures(self, name: str, now: float) -> QueueFigures | None:
        """The wallboard's figures of queue ``name`` (None: no such queue)."""
        return self.queues.figures(name, now)

    # ------------------------------------------------------------------ what calls share
    def live_state(self, directory: Directory, now_wall: float) -> LiveState:
        # Views, not copies: a call's plan is built at once from them, and copying
        # every registration, status and busy extension per call grew with the
        # office (``_on_call`` holds only extensions on at least one call; the
        # status dict is replaced whole, never changed in place).
        return LiveState(statuses=MappingProxyType(self._statuses),
                         registered=self.registrar.registered(now_wall),
                         busy=self._on_call.keys(), channels_in_use=dict(self._channels))

    def calls_in_progress(self) -> list[CallSummary]:
        return [CallSummary(c.id, c.facts.caller, c.facts.callee, str(c.state), c.step + 1,
                            c.started, c.members) for c in self._calls.values()]

    @property
    def active_count(self) -> int:
        return len(self._calls)

    def channels_in_use(self) -> dict[str, int]:
        """Trunk -> channels its calls hold (inbound calls and outbound legs)."""
        return dict(self._channels)

    def extensions_on_calls(self) -> dict[str, int]:
        """Extension -> calls it is on (what routing sees as busy)."""
        return dict(self._on_call)

    def extensions_ringing(self) -> set[str]:
        """Extensions whose phones ring now (a leg sent, no final answer yet)."""
        return {leg.extension for leg in self._legs.values() if leg.pending and leg.extension}

    def channel_free(self, trunk: str) -> bool:
        limit = self.trunk_limits.get(trunk)
        return limit is None or self._channels.get(trunk, 0) < limit

    def take_channel(self, trunk: str) -> None:
        self._channels[trunk] = self._channels.get(trunk, 0) + 1

    def free_channel(self, trunk: str) -> None:
        self._channels[trunk] = max(0, self._channels.get(trunk, 0) - 1)

    def join(self, extension: str) -> None:
        """One call more for ``extension`` (busy state)."""
        self._on_call[extension] = self._on_call.get(extension, 0) + 1

    def off_call(self, extension: str) -> None:
        """One call fewer for ``extension`` (busy state, :meth:`join`'s inverse)."""
        n = self._on_call.get(extension, 0) - 1
        if n > 0:
            self._on_call[extension] = n
        else:
            self._on_call.pop(extension, None)
            self.queues.changed(extension)  # off every call: free for a queue's caller

    def count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.calls.labels(outcome).inc()

    def count_ivr(self, outcome: str) -> None:
        """An IVR menu entered (``""``) or how it ended (key, extension, timeout,
        invalid, hangup); never who called."""
        if self.metrics is not None:
            if outcome:
                self.metrics.ivr_outcomes.labels(outcome).inc()
            else:
                self.metrics.ivr_calls.inc()

    def count_transfer(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.transfers.labels(outcome).inc()

    def count_pickup(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.pickups.labels(outcome).inc()

    def free_orbit(self, orbits: tuple[str, ...]) -> str | None:
        """The first orbit of ``orbits`` no call is parked on, here or (as far as the
        lamps tell) on another node."""
        return next((o for o in orbits if o not in self._parked
                     and not self.held_elsewhere("parked", o)), None)

    def park(self, orbit: str, call: Call) -> None:
        self._parked[orbit] = call
        if self.metrics is not None:
            self.metrics.parked_calls.set(len(self._parked))

    def unpark(self, orbit: str) -> Call | None:
        call = self._parked.pop(orbit, None)
        if self.metrics is not None:
            self.metrics.parked_calls.set(len(self._parked))
        return call

    def parked_call(self, orbit: str) -> Call | None:
        return self._parked.get(orbit)

    def ringing_legs(self) -> list[Leg]:
        """Legs whose phones ring now (a leg sent, no final answer yet)."""
        return [leg for leg in self._legs.values() if leg.pending]

    def track_picker(self, leg: Leg) -> None:
        """A picker's INVITE, now a leg of the call it picked up (engine.calls.pickup):
        its in-dialog requests carry its Call-ID, found as a leg's are."""
        self._by_leg_call_id[leg.invite.call_id] = leg
        if self.notes_changes:
            self.changed.append(leg)

    def take_changes(self) -> list[Call | Leg]:
        """The calls and legs noted in :attr:`changed` since the last take."""
        changed, self.changed = self.changed, []
        return changed

    def live_items(self) -> list[Call | Leg]:
        """Every live call, each followed by its legs, oldest call first: what the
        busy lamps start from when the engine begins to note changes."""
        items: dict[Call | Leg, None] = {}
        for call in self._calls.values():
            items[call] = None
            for leg in (*call.legs, call.callee_leg, call.caller_leg, call.adopted):
                if leg is not None:
                    items[leg] = None
        for leg in self._legs.values():  # legs still ringing or answering, any call
            items.setdefault(leg, None)
        return list(items)

    # ------------------------------------------------------------------ lookup tables
    def track_leg(self, leg: Leg) -> None:
        self._legs[leg.key] = leg
        self._by_leg_call_id[leg.invite.call_id] = leg
        if self.notes_changes:
            self.changed.append(leg)

    def untrack_leg(self, leg: Leg) -> None:
        self._by_leg_call_id.pop(leg.invite.call_id, None)

    def track_relay(self, key: TxKey, relay: RelayedRequest) -> None:
        self._relays[key] = relay

    def track_move(self, key: TxKey, transfer: Transfer) -> None:
        self._moves[key] = transfer

    def find_call(self, call_id: str, tag: str) -> Call | None:
        """The call whose caller's dialog is (``call_id``, our To tag ``tag``)."""
        return self._by_tag.get((call_id, tag))

    def forget(self, call: Call) -> None:
        """``call`` ended: it is found no more."""
        self.completed += 1
        self._calls.pop(call.key, None)
        self._by_tag.pop((call.id, call.tag), None)
        self._by_invite.pop(call.invite_key, None)
        self._wakeups.cancel_all(call.key)
        call.wakeup = None
        if self._recorded.pop(call.key, None) is not None:  # its record goes too
            self._answered_wall.pop(call.key, None)
            self._records_ended.append(record_id(*call.key))
        for leg in (*call.legs, call.callee_leg, call.caller_leg):
            if leg is not None and leg.call is call:  # a leg moved to another call stays
                self._retire(leg)

    def _retire(self, leg: Leg) -> None:
        """``leg``'s call ended: keep of it only what its INVITE client transaction may
        still need from the call layer, so that nothing holds the ended call until the
        transaction ends (RFC 6026 s7.2 Timer M after a 2xx, RFC 3261 s17.1.1.2 Timer D
        after a 300-699: 64*T1 and 32 s on UDP)."""
        key = leg.key
        if self._legs.get(key) is not leg:
            return  # its transaction ended already, or is not ours (a picker's INVITE)
        state = self.tx.state(key)
        if state is State.ACCEPTED and leg.ack is not None:
            # Answered and ACKed: each retransmission of the 2xx gets the same ACK
            # (s13.2.2.4), which needs neither the leg nor the call.
            self._acked[key] = Send(leg.ack, leg.dest, leg.transport)
        elif state is not State.COMPLETED and state is not None:
            # No final response yet (Calling, Proceeding): a late 2xx is still ACKed
            # and hung up (s13.2.2.4, s9.1), a time-out still reported, by the call;
            # likewise a 2xx whose ACK waits (close() leaves none so). The leg stays,
            # and is retired by on_response once its final response came.
            return
        # A 300-699 (Completed: the transaction ACKs its retransmissions itself,
        # s17.1.1.2) or the 2xx handled above: the call layer has nothing more to do.
        del self._legs[key]
        call_id = leg.invite.call_id
        if self._by_leg_call_id.get(call_id) is leg:  # an ended call answers 481 anyway
            del self._by_leg_call_id[call_id]

    # ------------------------------------------------------------------ timers
    def next_wakeup(self) -> float | None:
        return self._wakeups.next_wakeup()

    def reschedule(self, call: Call) -> None:
        """``call``'s timers changed: keep its one deadline in the heap current (the
        call keeps what is filed, :attr:`Call.wakeup`, so the heap is not asked)."""
        when = call.next_timer()
        if when is None or call.state is CallState.ENDED:
            if call.wakeup is not None:
                call.wakeup = None
                self._wakeups.cancel(call.key, _NEXT)
        elif call.wakeup != when:
            call.wakeup = when
            self._wakeups.arm(call.key, _NEXT, when)

    def file_wakeup(self, call: Call, when: float) -> None:
        """``when`` is ``call``'s earliest deadline now (a timer armed before the one
        filed): file it, without looking at its other timers."""
        call.wakeup = when
        self._wakeups.arm(call.key, _NEXT, when)

    def reschedule_queues(self) -> None:
        """The queues' timers changed: keep their one deadline in the heap current."""
        when = self.queues.next_timer()
        if when is None:
            self._wakeups.cancel(_QUEUES, _NEXT)
        elif self._wakeups.deadline(_QUEUES, _NEXT) != when:
            self._wakeups.arm(_QUEUES, _NEXT, when)

    def wake_queues(self, now: float) -> list[CallOutput]:
        """After an input: when it changed who may be rung (:meth:`Queues.changed`),
        waiting callers are offered to the agents free now."""
        if not self.queues.due:
            return []
        return self._queue_timer(now, self.queues.wake)

    def _queue_timer(self, now: float,
                     run: Callable[[float], list[CallOutput]] | None = None,
                     ) -> list[CallOutput]:
        try:
            return (run or self.queues.on_timer)(now)
        except Exception:  # the queues go on: a call that failed in them ends alone
            log.exception("queue timer failed")
            if self.metrics is not None:
                self.metrics.errors.inc()
            return []
        finally:
            self.reschedule_queues()

    def on_timer(self, now: float) -> list[CallOutput]:
        events: list[CallOutput] = []
        while (due := self._wakeups.pop(now)) is not None:
            if due[0] == _QUEUES:
                events += self._queue_timer(now)
                continue
            call = self._calls.get(due[0])
            if call is None:
                continue
            call.wakeup = None  # popped: no longer filed
            events += self._guard(call, now, functools.partial(call.on_timer, now))
            self.reschedule(call)
        return events

    # ------------------------------------------------------------------ dialog records
    def take_records(self) -> tuple[list[DialogRecord], list[str]]:
        """Dialog records to write and record ids to delete since the last call (the
        shell writes them behind, in batches: nothing waits on the store)."""
        saved, ended = self._records_saved, self._records_ended
        self._records_saved, self._records_ended = [], []
        return saved, ended

    def _note(self, call: Call) -> None:
        """After ``call`` handled an input: its record is written when it changed
        (answered, a transfer, a request sent in a dialog). An ended call's record is
        deleted by :meth:`forget`, whichever call's input ended it."""
        if call.state is CallState.ENDED or call.caller_dialog is None:
            return
        key = call.key
        now_mark = mark(call)
        if self._recorded.get(key) != now_mark:
            self._recorded[key] = now_mark
            answered = self._answered_wall.setdefault(key, self.wall_clock())
            self._records_saved.append(dialog_record(call, parties(call), self.local.node,
                                                     answered))

    def _guard(self, call: Call, now: float,
               action: Callable[[], list[CallOutput]]) -> list[CallOutput]:
        """Run ``action`` for ``call``; an exception ends this call only."""
        self.queues.now = now  # the time of what the queues hear of without a "now"
        try:
            out = action()
            # _note's own first test, here: a call not answered (most inputs of a
            # call) has no record to check, and costs no call.
            if call.caller_dialog is not None:
                self._note(call)
            return out
        except Exception:
            log.exception("call failed", call_id=call.id)
            if self.metrics is not None:
                self.metrics.errors.inc()
            try:
                return self._noted(call, call.close(CallEvent.ERROR, now, status=500))
            except Exception:
                log.exception("call teardown failed", call_id=call.id)
                return self._noted(call, call.forget(CallEvent.ERROR))

    def _noted(self, call: Call, out: list[CallOutput]) -> list[CallOutput]:
        self._note(call)
        return out

    # ------------------------------------------------------------------ new calls
    def new_call(self, invite: Request, key: TxKey, source: Addr, transport: str,
                 facts: CallFacts, directory: Directory, now: float) -> list[CallOutput]:
        replaced = ""
        if facts.source == "phone" and invite.has("replaces"):
            # RFC 3891: a phone's INVITE naming a ringing leg (read from a dialog-info
            # document) picks that call up, with the rights of a directed pickup.
            leg = replaces_target(invite, self.ringing_legs())
            if leg is None:  # s3: no such dialog (or no longer early)
                try:
                    return [*self.tx.respond(key, make_response(invite, 481, headers=[
                        ("Warning", warning_value("Replaces names no ringing call"))],
                        to_tag=new_tag()), now)]
                except ValueError:
                    return []
            codes = directory.system.feature_codes
            facts = replace(facts, callee=f"{codes.pickup_directed}{leg.extension}")
            replaced = leg.invite.call_id
        state = self.live_state(directory, self.wall_clock())
        the_plan = plan(facts, directory, state)
        tag = new_tag()
        if (invite.call_id, invite.from_.tag or "") in self._calls:
            # The same INVITE again with new credentials.
            try:
                return [*self.tx.respond(key, make_response(invite, 482, headers=[
                    ("Warning", warning_value("call already in progress"))], to_tag=tag), now)]
            except ValueError:
                return []
        call = Call(self, id=invite.call_id, invite=invite, invite_key=key, source=source,
                    transport=transport, facts=facts, plan=the_plan, tag=tag, started=now,
                    trunk_in=facts.trunk, identity=the_plan.identity)
        call.replaces = replaced
        self._calls[call.key] = call
        self._by_tag[(call.id, call.tag)] = call
        self._by_invite[key] = call
        if self.notes_changes:
            self.changed.append(call)
        if facts.source == "phone":
            call.members = (facts.caller,)
            self.join(facts.caller)
        if facts.trunk:
            self.take_channel(facts.trunk)
        identity = the_plan.identity
        log.info("call routed", call_id=call.id, caller=facts.caller, callee=facts.callee,
                 source=facts.source, trunk=facts.trunk or None, transport=transport,
                 status=the_plan.status_of_callee, caller_id=identity.caller_id or None,
                 identity=identity.origin or None,
                 billing_group=identity.billing_group or None, plan=PlanText(the_plan))
        if identity.ignored:
            log.info("preferred identity ignored", call_id=call.id, caller=facts.caller,
                     preferred=identity.preferred, reason=identity.ignored,
                     caller_id=identity.caller_id or None)
        if self.metrics is not None:
            self.metrics.count_billing_group(identity.billing_group)
        return self._guard(call, now, lambda: call.start(now))

    # ------------------------------------------------------------------ responses
    def on_response(self, resp: Response, key: TxKey, now: float) -> list[CallOutput] | None:
        """A response in one of the call layer's client transactions; None when ``key``
        is not one of them (the engine then asks its services)."""
        leg = self._legs.get(key)
        if leg is not None:
            call = leg.call
            out = self._guard(call, now, lambda: call.on_leg_response(leg, resp, now))
            if leg.call.state is CallState.ENDED:  # a leg pending when its call ended
                self._retire(leg)
            return out
        acked = self._acked.get(key)
        if acked is not None:
            # A 2xx again (the transaction passes only those up in Accepted, RFC 6026
            # s7.2) after its call ended: the same ACK again (RFC 3261 s13.2.2.4).
            return [acked]
        moving = self._moves.get(key)
        if moving is not None:
            return self._guard(moving.call, now, lambda: moving.on_moved(resp, now))
        relay = self._relays.get(key)
        if relay is not None:
            if resp.status >= 200:
                del self._relays[key]
            return self._guard(relay.call, now,
                               lambda: relay.call.on_relay_response(relay, resp, now))
        return None

    def on_timed_out(self, key: TxKey, now: float) -> list[CallOutput]:
        moving = self._moves.get(key)
        if moving is not None:
            return self._guard(moving.call, now, lambda: moving.on_move_timed_out(now))
        leg = self._legs.get(key)
        if leg is None:
            return []
        call = leg.call
        return self._guard(call, now, lambda: call.on_leg_timed_out(leg, now))

    def on_terminated(self, key: TxKey) -> None:
        """A client transaction ended: forget legs that are over, and what was kept of
        an ended call's answered leg (:meth:`_retire`)."""
        leg = self._legs.pop(key, None)
        if leg is None:
            self._acked.pop(key, None)
        elif leg is not leg.call.callee_leg and leg is not leg.call.caller_leg:
            self._by_leg_call_id.pop(leg.invite.call_id, None)
        self._relays.pop(key, None)
        self._moves.pop(key, None)

    # ------------------------------------------------------------------ requests
    def on_cancel(self, invite_key: TxKey, now: float) -> list[CallOutput]:
        """The caller cancelled (the layer answered the CANCEL 200): 487 and CANCEL legs."""
        call = self._by_invite.get(invite_key)
        if call is None:
            return []
        return self._guard(call, now, lambda: call.on_cancel(now))

    def on_ack(self, ack: Request, now: float) -> list[CallOutput]:
        """An ACK for a 2xx (no transaction)."""
        call = self._by_tag.get((ack.call_id, ack.to.tag or ""))
        if call is None:
            # A picker's ACK of the 200 the call it took sent it (engine.calls.pickup).
            leg = self._by_leg_call_id.get(ack.call_id)
            if leg is not None and leg is leg.call.adopted:
                leg.call.adopted_acked()
            return []
        return self._guard(call, now, lambda: call.on_ack(ack, now))

    def in_dialog(self, req: Request, key: TxKey, source: Addr, transport: str,
                  now: float) -> list[CallOutput] | None:
        """A request with a To tag; None when it belongs to no call we know (481)."""
        call = self._by_tag.get((req.call_id, req.to.tag or ""))
        if call is not None:
            if call.caller_dialog is None:
                return None
            return self._guard(call, now, lambda: call.on_request(None, req, key, now))
        leg = self._by_leg_call_id.get(req.call_id)
        if leg is None or leg.dialog is None:
            return None
        owner = leg.call
        if leg is owner.callee_leg or leg is owner.caller_leg:
            return self._guard(owner, now, lambda: owner.on_request(leg, req, key, now))
        asked = owner.screening
        if asked is not None and leg is asked.leg and req.method == "BYE" \
                and leg.dialog.on_request(req) is None:
            return self._guard(owner, now, lambda: owner.on_screened_bye(req, key, now))
        return None

    # ------------------------------------------------------------------ the media service
    def media_ready(self, key: CallKey, ports: tuple[int, ...], now: float) -> list[CallOutput]:
        """The endpoints asked for are open on ``ports`` (the caller's side first)."""
        call = self._calls.get(key)
        if call is None:
            return [StopMedia(key)]  # the caller left meanwhile
        return self._guard(call, now, lambda: call.on_media_ready(ports, now))

    def media_failed(self, key: CallKey, reason: str, now: float) -> list[CallOutput]:
        call = self._calls.get(key)
        if call is None:
            return []
        return self._guard(call, now, lambda: call.on_media_failed(reason, now))

    def screened(self, key: CallKey, accepted: bool, now: float) -> list[CallOutput]:
        """The screened leg's key (rebound or confirm): 1 accepts, anything else refuses."""
        call = self._calls.get(key)
        if call is None:
            return []
        return self._guard(call, now, lambda: call.on_screened(accepted, now))

    def ivr_digit(self, key: CallKey, digit: str, now: float) -> list[CallOutput]:
        """A key (RFC 4733) from the caller of an IVR menu."""
        call = self._calls.get(key)
        if call is None:
            return []
        return self._guard(call, now, lambda: call.on_ivr_digit(digit, now))

    def ivr_prompt_done(self, key: CallKey, generation: int, now: float) -> list[CallOutput]:
        """An IVR's prompt played to its end."""
        call = self._calls.get(key)
        if call is None:
            return []
        return self._guard(call, now, lambda: call.on_ivr_prompt_done(generation, now))

    def hangup(self, key: CallKey, now: float) -> list[CallOutput]:
        """The engine's own endpoint is done (message recorded): BYE the caller."""
        call = self._calls.get(key)
        if call is None:
            return []
        return self._guard(call, now, lambda: call.hang_up(now))

    def shutdown(self, now: float) -> list[CallOutput]:
        """Hang up every call (SIGTERM): BYE the answered ones, 503 the others."""
        events: list[CallOutput] = []
        for call in list(self._calls.values()):
            events += self._guard(call, now, functools.partial(
                call.close, CallEvent.SHUTDOWN, now, status=503))
        return events
