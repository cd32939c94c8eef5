"""The B2BUA: every call is one object with a caller leg and callee legs.

Sans-I/O like the layers below: each entry point takes a message or event and
``now`` (monotonic seconds) and returns transaction-layer events (``Send`` and
friends) for the engine to run. Timers of calls (no-answer, 2xx
retransmission) are kept here; :meth:`B2BUA.next_wakeup` says when to call
:meth:`B2BUA.on_timer`.

What a call does comes from ``routing`` as a :class:`routing.Plan`, a table
of steps. The call runs a step, learns its outcome (answered, busy, no
answer, failed) and goes to the step the plan names for it
(docs/architecture.md, "Plans, not callbacks").

RFC notes:

* Each leg is its own dialog (RFC 3261 s12, ``engine.dialog``); the callee
  legs of one step ring in parallel (RFC 3261 s16.7-like forking, done by a
  UA). The first 2xx wins; the other legs get CANCEL with
  ``Reason: SIP;cause=200;text="Call completed elsewhere"`` (RFC 3326).
  A second 2xx that crosses the CANCEL is ACKed and hung up (s13.2.2.4).
* The 2xx to the caller is retransmitted by us, the UAS core, until its
  ACK (s13.3.1.4; the transaction is in RFC 6026's Accepted state); we ACK
  each callee 2xx ourselves at once (s13.2.2.4) and send the same ACK again
  for a retransmitted 2xx.
* CANCEL from the caller: 487 to the INVITE (s9.2), CANCEL to every leg.
* BYE from either side ends both; re-INVITE, UPDATE, INFO and other
  in-dialog requests are passed to the other leg and the answer back.
* Forwarded calls keep the original caller: P-Asserted-Identity (RFC
  3325), Diversion (RFC 5806) and History-Info (RFC 7044, causes of RFC
  4458) name who forwarded and why.
* 302 deflection answers the caller's INVITE with Contact and Diversion
  (RFC 3261 s21.3.3, RFC 5806).
* A phone's P-Preferred-Identity (RFC 3325 s9.2) picks the caller ID (routing
  decides whether it is allowed: ``Plan.identity``) and is never passed on: a
  leg carries only the headers of ``_COPY_TO_CALLEE`` from the caller's INVITE,
  and our own P-Asserted-Identity.

Decisions (where no RFC says):

* A leg to a device is sent to the address its REGISTER came from (NAT,
  like responses: see ``engine.core``), a leg to a trunk to the trunk's
  host and port; in-dialog requests follow the same address.
* Each callee leg has its own Call-ID: a phone sees a fresh call per leg.
* Late offer (an INVITE without SDP): the callee's 2xx carries the offer,
  which goes to the caller in our 2xx; the callee's ACK waits for the
  caller's ACK, whose SDP answer it carries (RFC 3261 s13.2.2.4, RFC 3264
  s4). Without an ACK from the caller the callee is ACKed (no body) and hung
  up with the call.
* Voicemail and mailbox access are answered by the engine itself (the media
  service plays and records on its own endpoint: ``StartVoicemail``,
  ``StartMailbox``).
* With ``anchor_media`` (``serve --media relay``, the default) a call whose
  INVITE has an SDP offer gets two engine endpoints: the callees are offered
  the engine's address (codecs in their user's order), the caller is answered
  with the codec the callee chose, and RTP is relayed between them. A
  re-INVITE or UPDATE from either side is answered by the engine (RFC 3264
  s8): hold plays music to the other side, which is never re-INVITEd. A
  rebound leg that answers is screened (``BridgeMedia.announce``): it hears
  who calls and presses 1 to take the call; the caller hears hold music
  (183 with our SDP) meanwhile.
* Screening has two modes, one mechanism (``Call.screening``, the ``screen``
  timer, :meth:`B2BUA.screened`, ``BridgeMedia.screen``): **rebound** (above:
  the leg is alone in its step, whose timer stops; a refusal is a *failed*
  outcome) and **confirm** (``External.confirm``, a user's
  ``confirm_external_answer``): the answered leg hears "press 1 to take the
  call" while the step's other legs ring on and its no-answer timer runs; the
  caller is not answered and hears what it heard (no hold music; see
  :meth:`B2BUA._ask_confirmation`); no 1 within ``CONFIRM_SECONDS``, another
  key or a hang-up releases that leg only (BYE, its trunk channel, the
  endpoint facing the callees), and when no leg is left ringing the step's
  outcome is *no answer*. Another leg answering meanwhile takes the call.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import heapq
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import structlog

from engine.calls.anchor import DECODABLE, MediaAnchor, callee_answer
from engine.calls.events import (
    MediaCommand,
    OpenMedia,
    ScreenMode,
    StartMailbox,
    StartVoicemail,
    StopMedia,
    UpdateMedia,
)
from engine.calls.headers import (
    COMPLETED_ELSEWHERE,
    Local,
    binding_dest,
    callee_invite,
    cancel_request,
    contact_uri,
    diversion,
    parse_replaces,
    to_caller,
)
from engine.calls.states import (
    CALL,
    LEG,
    TRANSFER,
    CallEvent,
    CallState,
    LegEvent,
    LegState,
    TransferEvent,
    TransferState,
)
from engine.dialog import Dialog, new_tag
from engine.message import (
    URI,
    ParseError,
    Request,
    Response,
    make_response,
    parse_address,
    short_text,
    warning_value,
)
from engine.message.core import REASONS
from engine.transaction import Addr, Event, Send, TxKey
from media import sdp
from provisioning.model import DEFAULT_CODECS, Directory, Status
from routing import (
    CONFIRM_SECONDS,
    REBOUND_SECONDS,
    Busy,
    CallFacts,
    Deflect,
    Device,
    External,
    Identity,
    LiveState,
    MailboxAccess,
    Plan,
    Reject,
    Ring,
    Voicemail,
    plan,
)
from routing.explain import render_text

if TYPE_CHECKING:
    from engine.metrics import Metrics
    from engine.registrar import Registrar
    from engine.transaction import TransactionLayer

log = structlog.get_logger("switchboard.call")

Outcome = Literal["no_answer", "busy", "failed"]
_FINAL_OUTCOME = {302: "deflected", 480: "unanswered", 486: "busy", 487: "cancelled",
                  503: "no_channel"}


@dataclass(slots=True, eq=False)
class Leg:
    """One callee leg: an INVITE we sent, its dialog(s) and what came back."""

    call: Call
    target: Device | External
    label: str  # for logs: "101 sip:101@127.0.0.1:5062" or "+1514... via carrier"
    invite: Request
    dest: Addr
    transport: str
    key: TxKey
    trunk: str = ""  # holds one channel of this trunk while alive
    state: LegState = LegState.CALLING  # moved only by move() (engine.calls.states.LEG)
    status: int = 0  # the final response's status
    dialog: Dialog | None = None
    ack: bytes | None = None
    offer: sdp.SessionDescription | None = None  # what we offered on an anchored call
    early: sdp.SessionDescription | None = None  # its answer in a 183, if any

    def move(self, event: LegEvent) -> None:
        self.state = LEG.move(self.state, event)

    @property
    def pending(self) -> bool:
        """Still calling or ringing: its outcome is not known yet."""
        return self.state in (LegState.CALLING, LegState.RINGING)


@dataclass(slots=True, eq=False)
class Transfer:
    """A blind transfer in progress (RFC 3515, RFC 5589 s6): the answered callee
    ``transferor`` sent REFER asking that the caller be connected to ``target``.

    The caller keeps its dialog and its RTP port on the engine and hears hold
    music; ``target``'s plan runs as a call from the transferor (its rights),
    offered only the caller's codec, so whoever answers is relayed to the caller
    without a re-INVITE. NOTIFYs with a message/sipfrag tell the transferor how
    it went; it may hang up at any time.
    """

    transferor: Leg | None  # None: the calling party transfers the callee
    target: str
    codec: str  # the transferee's codec: the only one offered to the target
    local: Local
    # An attended transfer (Refer-To with Replaces, RFC 3891): the transferor's
    # consultation call, whose callee leg is moved to this call by a re-INVITE.
    consultation: Call | None = None
    reinvite: sdp.SessionDescription | None = None  # our offer in that re-INVITE
    ack: Send | None = None  # our ACK of its 2xx, sent again for a retransmitted 2xx
    state: TransferState = TransferState.REFERRED  # moved only by move()

    def move(self, event: TransferEvent) -> None:
        self.state = TRANSFER.move(self.state, event)


@dataclass(slots=True, eq=False)
class Call:
    """One call: the caller's leg (we are its UAS) and the legs of the current step."""

    id: str  # the caller's Call-ID, for logs
    invite: Request
    key: TxKey  # the caller's INVITE server transaction
    source: Addr
    transport: str
    facts: CallFacts
    plan: Plan
    tag: str  # our To tag toward the caller
    step: int = -1
    legs: list[Leg] = field(default_factory=list)
    rung: set[str] = field(default_factory=set)  # each destination once per call
    state: CallState = CallState.ROUTING  # moved only by move() (engine.calls.states.CALL)
    caller_dialog: Dialog | None = None
    winner: Leg | None = None
    ok: Response | None = None  # our 2xx to the caller, retransmitted until ACK
    ok_interval: float = 0.0
    ok_deadline: float = 0.0
    trunk_in: str = ""  # the trunk the call came in on (holds a channel)
    # What the call presents and its billing group, as first routed (a transfer's
    # plan is the transferor's: the call still came in on its number).
    identity: Identity = field(default_factory=lambda: Identity(""))
    members: tuple[str, ...] = ()  # extensions on this call (busy tracking)
    timers: dict[str, int] = field(default_factory=dict)  # name -> live token
    started: float = 0.0
    answered_at: float = 0.0
    last_failure: int = 0
    early_sent: bool = False
    # A step the engine answers itself (leaving a message, listening to one's
    # mailbox), waiting for or holding media.
    voicemail: Voicemail | MailboxAccess | None = None
    anchor: MediaAnchor = field(default_factory=MediaAnchor)  # the engine's endpoints
    waiting: int | None = None  # a Ring step waiting for its media endpoints
    screening: Leg | None = None  # an answered rebound or confirm leg, being asked
    transfer: Transfer | None = None
    # After a transfer by the calling party: the leg that took the caller's place
    # (we are its UAC; it faces the caller-side endpoint).
    partner: Leg | None = None

    def move(self, event: CallEvent) -> None:
        self.state = CALL.move(self.state, event)


@dataclass(frozen=True, slots=True)
class Relay:
    """An in-dialog request passed to the other leg, waiting for its answer."""

    call: Call
    origin_key: TxKey  # the server transaction of the request we received
    origin: Request
    sent: Request
    to_caller: bool  # True: we sent it to the caller (it came from the callee)




class B2BUA:
    """All calls of one engine."""

    def __init__(self, transactions: TransactionLayer, registrar: Registrar,
                 wall_clock: Callable[[], float], metrics: Metrics | None = None,
                 anchor_media: bool = False) -> None:
        self.metrics = metrics
        # True: calls with an SDP offer get their RTP through the engine (hold
        # music, recording, rebound screening); False: SDP passes end to end.
        self.anchor_media = anchor_media
        self.tx = transactions
        self.registrar = registrar
        self.wall_clock = wall_clock
        self.calls: dict[tuple[str, str], Call] = {}  # (Call-ID, caller's From tag)
        self._by_tag: dict[tuple[str, str], Call] = {}  # (Call-ID, our To tag)
        self._by_key: dict[TxKey, Call] = {}  # the caller's INVITE transaction
        self._legs: dict[TxKey, Leg] = {}  # callee INVITE client transactions
        self._by_leg_call_id: dict[str, Leg] = {}
        self._timers: list[tuple[float, int, tuple[str, str], str]] = []
        self._seq = itertools.count()
        self.channels: dict[str, int] = {}
        self.on_call: dict[str, int] = {}  # extension -> calls it is on
        self.statuses: dict[str, Status] = {}
        self.completed = 0
        self._relays: dict[TxKey, Relay] = {}
        # Re-INVITEs moving a consultation call's callee to the transferee's call.
        self._moves: dict[TxKey, tuple[Call, Transfer]] = {}
        self.media_actions: list[MediaCommand] = []
        self.directory: Directory | None = None
        # Trunks by name: (host, port, transport) and channel limits (None: no limit).
        self.trunk_addresses: dict[str, tuple[str, int, str]] = {}
        self.trunk_limits: dict[str, int | None] = {}
        self.timers = transactions.timers

    def set_directory(self, directory: Directory) -> None:
        self.directory = directory
        if self.metrics is not None:  # file order decides which groups get a label
            self.metrics.admit_billing_groups(n.billing_group for n in directory.numbers)
        self.trunk_addresses = {t.name: (t.host, t.port, t.transport) for t in directory.trunks}
        self.trunk_limits = {t.name: t.channels for t in directory.trunks}

    # ------------------------------------------------------------------ state
    def live_state(self, directory: Directory, now_wall: float) -> LiveState:
        registered = frozenset(aor for aor, per in self.registrar.bindings.items()
                               if any(b.expires_at > now_wall for b in per.values()))
        busy = frozenset(ext for ext, n in self.on_call.items() if n > 0)
        return LiveState(statuses=dict(self.statuses), registered=registered, busy=busy,
                         channels_in_use=dict(self.channels))

    def next_wakeup(self) -> float | None:
        return self._timers[0][0] if self._timers else None

    def _arm(self, call: Call, name: str, when: float) -> None:
        token = next(self._seq)
        call.timers[name] = token
        heapq.heappush(self._timers, (when, token, _call_key(call), name))

    def _disarm(self, call: Call, name: str) -> None:
        call.timers.pop(name, None)

    def on_timer(self, now: float, local: Local) -> list[Event]:
        events: list[Event] = []
        while self._timers and self._timers[0][0] <= now:
            _, token, key, name = heapq.heappop(self._timers)
            call = self.calls.get(key)
            if call is None or call.timers.get(name) != token:
                continue
            del call.timers[name]
            events += self._guard(call, now, local,
                                  functools.partial(self._fire, call, name, now, local))
        return events

    def _fire(self, call: Call, name: str, now: float, local: Local) -> list[Event]:
        if name == "screen" and call.screening is not None:
            if self._screen_mode(call, call.screening) == "confirm":
                log.info("confirm: no key in time", call_id=call.id,
                         leg=call.screening.label, seconds=CONFIRM_SECONDS)
            else:
                log.info("rebound not accepted in time", call_id=call.id)
            return self._refused(call, now, local)
        if name == "no_answer" and call.state is CallState.ROUTING:
            log.info("no answer", call_id=call.id, step=call.step + 1)
            events = self._cancel_legs(call, now, None, local)
            return events + self._outcome(call, "no_answer", now, local)
        if name == "ok" and call.ok is not None and call.state is CallState.ANSWERED:
            if now >= call.ok_deadline:
                log.warning("no ACK for our 2xx: ending the call", call_id=call.id)
                return self._hangup(call, now, local, CallEvent.NO_ACK)
            call.ok_interval = min(call.ok_interval * 2, self.timers.t2)
            self._arm(call, "ok", now + call.ok_interval)
            return self._respond_caller(call, call.ok, now)
        return []

    def _guard(self, call: Call, now: float, local: Local,
               action: Callable[[], list[Event]]) -> list[Event]:
        """Run ``action`` for ``call``; an exception ends this call only."""
        try:
            return action()
        except Exception:
            log.exception("call failed", call_id=call.id)
            if self.metrics is not None:
                self.metrics.errors.inc()
            try:
                return self._teardown(call, now, local, CallEvent.ERROR, status=500)
            except Exception:
                log.exception("call teardown failed", call_id=call.id)
                self._forget(call, CallEvent.ERROR)
                return []

    # ------------------------------------------------------------------ new calls
    def new_call(self, invite: Request, key: TxKey, source: Addr, transport: str,
                 facts: CallFacts, directory: Directory, now: float,
                 local: Local) -> list[Event]:
        state = self.live_state(directory, self.wall_clock())
        the_plan = plan(facts, directory, state)
        call = Call(id=invite.call_id, invite=invite, key=key, source=source,
                    transport=transport, facts=facts, plan=the_plan, tag=new_tag(),
                    started=now, trunk_in=facts.trunk, identity=the_plan.identity)
        call_key = _call_key(call)
        if call_key in self.calls:  # the same INVITE again with new credentials
            return self._respond_caller(call, make_response(
                invite, 482, headers=[("Warning", warning_value("call already in progress"))],
                to_tag=call.tag), now)
        self.calls[call_key] = call
        self._by_tag[(call.id, call.tag)] = call
        self._by_key[key] = call
        if facts.source == "phone":
            self._join(call, facts.caller)
        if facts.trunk:
            self.channels[facts.trunk] = self.channels.get(facts.trunk, 0) + 1
        identity = the_plan.identity
        log.info("call routed", call_id=call.id, caller=facts.caller, callee=facts.callee,
                 source=facts.source, trunk=facts.trunk or None, transport=transport,
                 status=the_plan.status_of_callee, caller_id=identity.caller_id or None,
                 identity=identity.origin or None,
                 billing_group=identity.billing_group or None, plan=_PlanText(the_plan))
        if identity.ignored:
            log.info("preferred identity ignored", call_id=call.id, caller=facts.caller,
                     preferred=identity.preferred, reason=identity.ignored,
                     caller_id=identity.caller_id or None)
        if self.metrics is not None:
            self.metrics.count_billing_group(identity.billing_group)
        return self._guard(call, now, local, lambda: self._run_step(call, 0, now, local))

    # ------------------------------------------------------------------ steps
    def _run_step(self, call: Call, index: int, now: float, local: Local) -> list[Event]:
        call.step = index
        step = call.plan.steps[index]
        log.info("step", call_id=call.id, step=index + 1, kind=type(step).__name__.lower(),
                 reason=step.reason)
        if isinstance(step, Ring):
            if self._wants_anchor(call):
                call.waiting = index
                self.media_actions.append(OpenMedia(_call_key(call), bridge=True))
                return []
            return self._ring(call, step, now, local)
        if isinstance(step, Deflect) and call.transfer is not None:
            return self._final(call, 403, now)  # a 302 cannot move an answered call
        if isinstance(step, Deflect):
            trunk = self.trunk_addresses.get(step.trunk)
            host = f"{trunk[0]}:{trunk[1]}" if trunk else local.domain
            headers = [("Contact", f"<sip:{step.number}@{host}>")]
            headers += [("Diversion", v) for v in diversion(step.diversion, local.domain)]
            return self._final(call, 302, now, headers)
        if call.transfer is not None and isinstance(step, Voicemail):
            return self._transfer_to_voicemail(call, step, now, local)
        if call.transfer is not None and isinstance(step, MailboxAccess):
            return self._final(call, 403, now)  # nobody's mailbox menu for a transferee
        if isinstance(step, Voicemail | MailboxAccess):  # the engine answers itself
            if not call.invite.body:
                what = (f"voicemail of {step.box} was chosen; it" if isinstance(step, Voicemail)
                        else f"mailbox access for {step.box}")
                return self._final(call, 480, now, [("Warning", warning_value(
                    f"{what} needs an SDP offer in the INVITE (late offer is not supported)"))])
            call.voicemail = step
            if call.anchor.open:  # anchored: the endpoint facing the caller is ready
                return self._answer_voicemail(call, step, now, local)
            self.media_actions.append(OpenMedia(_call_key(call)))
            return []
        if isinstance(step, Busy):
            return self._final(call, 486, now)
        if isinstance(step, Reject):
            return self._final(call, step.status, now, [("Warning", warning_value(step.reason))],
                               reason=step.text)
        raise TypeError(f"unknown step {step!r}")

    def _wants_anchor(self, call: Call) -> bool:
        """A first Ring step of a call to anchor: open its endpoints first."""
        if not self.anchor_media:
            return False
        why_not = call.anchor.wants_relay(call.invite.body)
        if why_not:
            log.info("media not anchored: unreadable offer", call_id=call.id, error=why_not)
        return why_not is None

    def _ring(self, call: Call, step: Ring, now: float, local: Local) -> list[Event]:
        events: list[Event] = []
        anchor = call.anchor
        if step.music and anchor.relaying and anchor.open and not anchor.music_codec \
                and call.transfer is None:
            events += self._music_while_ringing(call, now, local)
        call.legs = []
        wall = self.wall_clock()
        for target in step.targets:
            if isinstance(target, Device):
                for binding in self.registrar.lookup(target.extension, wall):
                    if binding.contact in call.rung:
                        continue
                    dest = binding_dest(binding.source)
                    if dest is None:
                        continue
                    call.rung.add(binding.contact)
                    uri = contact_uri(binding.contact)
                    events += self._start_leg(call, step, target, uri, dest[0], dest[1], "",
                                              f"{target.extension} {uri}", now, local)
            else:
                if target.number in call.rung:
                    continue
                trunk = self.trunk_addresses.get(target.trunk)
                limit = self.trunk_limits.get(target.trunk)
                if trunk is None:
                    continue
                if limit is not None and self.channels.get(target.trunk, 0) >= limit:
                    log.info("no channel free", call_id=call.id, trunk=target.trunk,
                             number=target.number)
                    call.last_failure = 503
                    continue
                call.rung.add(target.number)
                host, port, transport = trunk
                uri = f"sip:{target.number}@{host}:{port}"
                events += self._start_leg(call, step, target, uri, (host, port), transport,
                                          target.trunk, f"{target.number} via {target.trunk}",
                                          now, local)
        if not call.legs:
            log.info("nothing to ring", call_id=call.id, step=call.step + 1)
            return events + self._outcome(call, "failed" if call.last_failure else "busy",
                                          now, local)
        if step.seconds is not None:
            self._arm(call, "no_answer", now + step.seconds)
        return events

    def _start_leg(self, call: Call, step: Ring, target: Device | External, uri: str,
                   dest: Addr, transport: str, trunk: str, label: str, now: float,
                   local: Local) -> list[Event]:
        transfer = call.transfer
        offer = self._partner_offer(call, transfer, local) if (
            transfer is not None and transfer.transferor is None) else \
            self._callee_offer(call, target, local)
        invite = self._callee_invite(call, step, target, uri, transport, local, offer)
        key, events = self.tx.send_request(invite, dest, transport, now)
        leg = Leg(call=call, target=target, label=label, invite=invite, dest=dest,
                  transport=transport, key=key, trunk=trunk)
        leg.offer = offer
        if trunk:
            self.channels[trunk] = self.channels.get(trunk, 0) + 1
        call.legs.append(leg)
        self._legs[key] = leg
        self._by_leg_call_id[invite.call_id] = leg
        log.info("ringing", call_id=call.id, leg=label)
        return events

    def _callee_invite(self, call: Call, step: Ring, target: Device | External, uri: str,
                       transport: str, local: Local,
                       offer: sdp.SessionDescription | None = None) -> Request:
        return callee_invite(call.invite, call.facts, step.diversion, target, uri,
                                     transport, local, offer)

    def _callee_offer(self, call: Call, target: Device | External,
                      local: Local) -> sdp.SessionDescription | None:
        """The caller's offer as we make it to a callee on an anchored call: our
        address, our o= line, codecs in the order of the user on that leg (a
        trunk gets the caller's order)."""
        codecs = None
        if isinstance(target, Device) and self.directory is not None:
            user = self.directory.user(target.extension)
            if user is not None:
                codecs = user.codecs
        # The caller was answered early in this codec, or is in a call in it (a
        # transfer): the callee gets only that codec, relayed without transcoding.
        # In a transfer the engine's endpoint sends and receives, whoever held the call.
        transfer = call.transfer
        codec = call.anchor.music_codec or (transfer.codec if transfer else "")
        return call.anchor.callee_offer(local.host, codecs, codec, transfer is not None)

    def _partner_offer(self, call: Call, transfer: Transfer,
                       local: Local) -> sdp.SessionDescription | None:
        """The offer to a target taking the calling party's place (a transfer by the
        caller): see MediaAnchor.caller_side_offer."""
        return call.anchor.caller_side_offer(local.host, transfer.codec)

    # ------------------------------------------------------------------ outcomes
    def _outcome(self, call: Call, outcome: Outcome, now: float, local: Local) -> list[Event]:
        """The current step ended without an answer: go where the plan says."""
        self._disarm(call, "no_answer")
        step = call.plan.steps[call.step]
        nxt = None
        if isinstance(step, Ring):
            nxt = {"no_answer": step.on_no_answer, "busy": step.on_busy,
                   "failed": step.on_failed}[outcome]
        log.info("step outcome", call_id=call.id, step=call.step + 1, outcome=outcome,
                 next_step=None if nxt is None else nxt + 1)
        if nxt is not None:
            return self._run_step(call, nxt, now, local)
        status = {"no_answer": 480, "busy": 486}.get(outcome) or call.last_failure or 480
        return self._final(call, status, now)

    def _final(self, call: Call, status: int, now: float,
               headers: Iterable[tuple[str, str]] = (), reason: str | None = None,
               event: CallEvent = CallEvent.REJECT) -> list[Event]:
        """A final non-2xx answer to the caller: the call ends. (In a transfer the
        caller was answered long ago: the transfer failed instead.)"""
        if call.transfer is not None:
            return self._transfer_failed(call, status, now)
        resp = to_caller(call.invite, status, call.tag, headers, reason=reason)
        log.info("call ended", call_id=call.id, status=status, answered=False,
                 billing_group=call.identity.billing_group or None)
        self._count(_FINAL_OUTCOME.get(status, "rejected" if status < 500 else "failed"))
        events = self._respond_caller(call, resp, now)
        self._forget(call, event)
        return events

    def _respond_caller(self, call: Call, resp: Response, now: float) -> list[Event]:
        try:
            return self.tx.respond(call.key, resp, now)
        except ValueError:  # the transaction is gone (timed out): nothing to answer
            return []

    # ------------------------------------------------------------------ responses from legs
    def on_response(self, resp: Response, key: TxKey, now: float, local: Local) -> list[Event]:
        leg = self._legs.get(key)
        if leg is not None:
            return self._guard(leg.call, now, local,
                               lambda: self._leg_response(leg, resp, now, local))
        moving = self._moves.get(key)
        if moving is not None:
            return self._guard(moving[0], now, local,
                               lambda: self._moved(*moving, resp, now, local))
        relay = self._relays.get(key)
        if relay is not None:
            if resp.status >= 200:
                del self._relays[key]
            return self._guard(relay.call, now, local,
                               lambda: self._relay_response(relay, resp, now, local))
        return []

    def _leg_response(self, leg: Leg, resp: Response, now: float, local: Local) -> list[Event]:
        call = leg.call
        status = resp.status
        if status < 200:
            if status == 100 or not leg.pending:
                return []
            leg.move(LegEvent.PROVISIONAL)
            if call.state is not CallState.ROUTING or leg not in call.legs:
                return []
            if call.transfer is not None:  # the caller hears hold music, not ringing
                call.transfer.move(TransferEvent.TARGET_RINGING)
                if resp.body and status == 183:
                    with contextlib.suppress(sdp.SdpError):
                        leg.early = sdp.parse_sdp(resp.body)
                return []
            headers: list[tuple[str, str]] = []
            body = b""
            if resp.body and status == 183 and leg.offer is not None \
                    and call.screening is not None:
                # The endpoint facing the callees is the asked leg's until it decides:
                # this leg's early media is not relayed; its SDP is kept for its answer.
                with contextlib.suppress(sdp.SdpError):
                    leg.early = sdp.parse_sdp(resp.body)
                return []
            if resp.body and status == 183 and leg.offer is not None:
                early = self._anchored_answer(call, leg, resp.body, local)
                if early is None:
                    return []
                body = early
                headers.append(("Content-Type", "application/sdp"))
            elif resp.body and status == 183:
                body = resp.body
                headers.append(("Content-Type", resp.get("content-type") or "application/sdp"))
            elif status == 183:
                return []
            status_out = 180 if status in (180, 181, 182) else status
            call.early_sent = True
            out = to_caller(call.invite, status_out, call.tag, headers, body)
            return self._respond_caller(call, out, now)
        if status < 300:
            return self._leg_answered(leg, resp, now, local)
        # 300-699: the transaction ACKed it.
        leg.move(LegEvent.REFUSED)
        leg.status = status
        self._release_leg(leg)
        if call.state is not CallState.ROUTING or leg not in call.legs:
            return []
        log.info("leg refused", call_id=call.id, leg=leg.label, status=status)
        if status not in (486, 600, 487):
            call.last_failure = 503 if status == 503 else call.last_failure
        if call.screening is not None:  # the asked leg's answer decides the step
            return []
        if any(other.pending for other in call.legs):
            return []
        statuses = [other.status for other in call.legs]
        if all(s in (486, 600) for s in statuses):
            return self._outcome(call, "busy", now, local)
        if all(s == 487 for s in statuses):
            return self._outcome(call, "no_answer", now, local)
        return self._outcome(call, "failed", now, local)

    def _leg_answered(self, leg: Leg, resp: Response, now: float, local: Local) -> list[Event]:
        call = leg.call
        if leg.ack is not None:  # a retransmitted 2xx: the same ACK again (s13.2.2.4)
            return [Send(leg.ack, leg.dest, leg.transport)]
        if leg.dialog is not None:  # retransmitted while its ACK waits for the caller's
            return []
        dialog = Dialog.uac(leg.invite, resp)
        leg.dialog = dialog
        leg.move(LegEvent.ANSWER)
        events: list[Event] = []
        late_offer = not leg.invite.body and bool(resp.body)
        routing = call.state is CallState.ROUTING and leg in call.legs
        if not (late_offer and routing):
            events += self._ack_leg(leg, local)
        if not routing:
            # Answered after another leg won, or after the step moved on: hang it up.
            log.info("late answer hung up", call_id=call.id, leg=leg.label)
            return events + self._bye_leg(leg, now, local)
        screening = call.screening
        if screening is not None and self._screen_mode(call, leg):
            # One leg is asked at a time (one endpoint faces the callees): this one
            # is released as if it had not confirmed; the asked leg decides the step.
            log.info("confirm: another leg is being asked; released", call_id=call.id,
                     leg=leg.label)
            events += self._bye_leg(leg, now, local)
            leg.status = 487
            return events
        if screening is not None:  # another leg answered while the screened leg decides
            log.info("answered while another leg was asked: it takes the call",
                     call_id=call.id, leg=leg.label, asked=screening.label)
            call.screening = None
            self._disarm(call, "screen")
            events += self._bye_leg(screening, now, local)
        elif self._screen_mode(call, leg):
            return events + self._screen(call, leg, resp, now, local)
        return events + self._connect(call, leg, resp.body, resp.get("content-type"),
                                      now, local)

    def _screen_mode(self, call: Call, leg: Leg) -> ScreenMode:
        """How an answer on ``leg`` is screened before it takes the call: "rebound"
        (who calls, accept or refuse), "confirm" (press 1), "" not at all. Only on an
        anchored leg (the engine plays and reads keys on its endpoint), and not in a
        transfer (the transferee already hears hold music from that endpoint)."""
        target = leg.target
        if leg.offer is None or call.transfer is not None or not isinstance(target, External):
            return ""
        if target.rebound:
            return "rebound"
        return "confirm" if target.confirm else ""

    def _screen(self, call: Call, leg: Leg, resp: Response, now: float,
                local: Local) -> list[Event]:
        """A rebound leg answered: it hears who calls and accepts with 1 (the media
        service reports through :meth:`screened`); the caller hears hold music
        meanwhile (183 with our SDP). Not accepted within REBOUND_SECONDS: refused.
        A confirm leg: :meth:`_ask_confirmation`."""
        call.screening = leg
        if self._screen_mode(call, leg) == "confirm":
            return self._ask_confirmation(call, leg, resp, now, local)
        answer = self._anchored_answer(call, leg, resp.body, local)
        if answer is None:  # cannot screen without media: the answer accepts
            call.screening = None
            return self._connect(call, leg, resp.body, resp.get("content-type"), now, local)
        self._disarm(call, "no_answer")
        self._arm(call, "screen", now + REBOUND_SECONDS)
        log.info("rebound screening", call_id=call.id, leg=leg.label)
        return self._early_media(call, answer, now)

    def _ask_confirmation(self, call: Call, leg: Leg, resp: Response, now: float,
                          local: Local) -> list[Event]:
        """A confirm leg answered: it hears "press 1 to take the call" and the media
        service reports its key through :meth:`screened`. Unlike a rebound, the
        step goes on meanwhile: its other legs ring, its no-answer timer runs, and
        the caller is not answered: it hears what it heard (its own ringback after
        a 180, a ring group's music), no hold music. Only a caller that already
        had our early media (a 183 with SDP, from a carrier's ringback) hears a
        ringback tone from us, since nothing is relayed to it now. Not confirmed
        within CONFIRM_SECONDS: refused (:meth:`_refused`)."""
        answered = self._callee_answer(call, leg, resp.body,
                                       "callee answer unusable for confirmation")
        if answered is None or not self._caller_can_take(call, answered[1].codec, local):
            # Cannot ask without media (or could not connect after a 1): the answer
            # takes the call, as without confirmation.
            call.screening = None
            return self._connect(call, leg, resp.body, resp.get("content-type"), now, local)
        leg.early = answered[0]
        call.anchor.ask(answered[1], leg.offer)
        self._arm(call, "screen", now + CONFIRM_SECONDS)
        log.info("confirm asking", call_id=call.id, leg=leg.label, seconds=CONFIRM_SECONDS)
        self._bridge(call)
        if call.early_sent:
            return []
        # The leg answered before anything rang: the caller is told it rings now.
        call.early_sent = True
        return self._respond_caller(call, to_caller(call.invite, 180, call.tag), now)

    def _caller_can_take(self, call: Call, codec: str, local: Local) -> bool:
        """Whether the caller's offer has ``codec`` (the engine relays, it does not
        transcode): checked before asking, so that a 1 always connects."""
        refused = call.anchor.can_connect(codec, local.host)
        if refused is not None:
            log.warning("caller offer has not the callee's codec", call_id=call.id,
                        codec=codec, reason=refused.reason)
            return False
        return True

    def _early_media(self, call: Call, sdp_body: bytes, now: float) -> list[Event]:
        """183 Session Progress with our SDP: the caller hears the engine before any
        answer (hold music while screening or waiting in a ring group)."""
        call.early_sent = True
        early = to_caller(call.invite, 183, call.tag, [("Content-Type", "application/sdp")],
                          sdp_body)
        return self._respond_caller(call, early, now)

    def screened(self, key: tuple[str, str], accepted: bool, now: float,
                 local: Local) -> list[Event]:
        """The screened leg's key (rebound or confirm): 1 accepts, anything else refuses."""
        call = self.calls.get(key)
        if call is None or call.screening is None or call.state is not CallState.ROUTING:
            return []
        mode = self._screen_mode(call, call.screening)
        if not accepted:
            log.info(f"{mode} refused", call_id=call.id)
            return self._guard(call, now, local,
                               functools.partial(self._refused, call, now, local))
        leg = call.screening
        call.screening = None
        self._disarm(call, "screen")
        log.info(f"{mode} accepted", call_id=call.id, leg=leg.label)
        return self._guard(call, now, local, functools.partial(
            self._connect, call, leg, b"", "application/sdp", now, local))

    def _refused(self, call: Call, now: float, local: Local) -> list[Event]:
        """The screened leg refused, said nothing in time or hung up: BYE, its trunk
        channel freed. A rebound leg was alone in its step: *failed*. A confirm leg
        is as if it had not answered: the other legs ring on, and when none is
        left the step's outcome is *no answer*."""
        leg = call.screening
        call.screening = None
        self._disarm(call, "screen")
        if leg is None:
            return []
        confirm = self._screen_mode(call, leg) == "confirm"
        events = self._bye_leg(leg, now, local)  # it is done (or hung up: done already)
        leg.status = 487 if confirm else 603
        self._release_leg(leg)
        if confirm:
            self._free_callee_side(call)
            log.info("confirm: leg released", call_id=call.id, leg=leg.label,
                     ringing=sum(other.pending for other in call.legs),
                     channels_in_use=dict(self.channels))
        if any(other.pending for other in call.legs):
            return events
        return events + self._outcome(call, "no_answer" if confirm else "failed", now, local)

    def _free_callee_side(self, call: Call) -> None:
        """A confirm leg is gone before taking the call: the endpoint facing the
        callees stops asking and waits for the next leg's answer."""
        call.anchor.callee.forget()
        self._bridge(call)

    def _connect(self, call: Call, leg: Leg, body: bytes, ctype: str | None, now: float,
                 local: Local) -> list[Event]:
        """``leg`` takes the call: 200 to the caller, the other legs cancelled."""
        if call.transfer is not None:
            return self._transfer_connected(call, leg, body, now, local)
        events: list[Event] = []
        call.move(CallEvent.ANSWER)
        call.winner = leg
        call.answered_at = now
        self._disarm(call, "no_answer")
        if isinstance(leg.target, Device):
            self._join(call, leg.target.extension)
        contact = local.contact(call.transport)
        headers = [("Contact", contact)]
        if leg.offer is not None:
            answer = self._anchored_answer(call, leg, body, local, final=True)
            if answer is None:  # no usable answer: let the phones talk directly
                self._unanchor(call)
            else:
                body, ctype = answer, "application/sdp"
        if ctype:
            headers.append(("Content-Type", ctype))
        ok = to_caller(call.invite, 200, call.tag, headers, body)
        call.ok = ok
        call.caller_dialog = Dialog.uas(call.invite, call.tag, contact, confirmed=True)
        if call.transport == "udp":  # s13.3.1.4: T1 doubling to T2, for 64*T1
            call.ok_interval = self.timers.t1
            call.ok_deadline = now + self.timers.long
            self._arm(call, "ok", now + call.ok_interval)
        log.info("call answered", call_id=call.id, leg=leg.label, step=call.step + 1)
        events += self._respond_caller(call, ok, now)
        for other in call.legs:
            if other is not leg:
                events += self._cancel_leg(other, now, COMPLETED_ELSEWHERE)
        return events

    # ------------------------------------------------------------------ anchored media
    def _anchored_answer(self, call: Call, leg: Leg, body: bytes, local: Local,
                         final: bool = False) -> bytes | None:
        """A callee's answer (183 or 2xx) on an anchored call -> our answer to the
        caller, with the codec the callee chose; None when it cannot be used."""
        answered = self._callee_answer(call, leg, body,
                                       "callee answer unusable for media anchoring")
        if answered is None:
            return None
        theirs, callee = answered
        leg.early = theirs
        ours = call.anchor.connect(callee, leg.offer, local.host)
        if isinstance(ours, sdp.AnswerRefused):
            log.warning("caller offer has not the callee's codec", call_id=call.id,
                        codec=callee.codec, reason=ours.reason)
            return None
        if final:
            call.anchor.record = self._record_reason(call, leg)
        self._bridge(call)
        return ours.to_bytes()

    def _callee_answer(self, call: Call, leg: Leg, body: bytes, what: str,
                       ) -> tuple[sdp.SessionDescription, sdp.Negotiated] | None:
        """The callee's SDP answer to our offer on ``leg`` (in ``body``, else the one
        its 183 carried) and what it negotiates; None, logged as ``what``, when
        there is none or it cannot be used."""
        assert leg.offer is not None
        answered = callee_answer(leg.offer, body, leg.early)
        if isinstance(answered, str):
            log.warning(what, call_id=call.id, leg=leg.label, error=answered)
            return None
        return answered

    def _music_while_ringing(self, call: Call, now: float, local: Local) -> list[Event]:
        """A ring group: the caller hears hold music while it rings. The caller is
        answered early (183) in a codec the engine can play, and the callees are
        offered only that codec, so whoever answers is relayed without transcoding."""
        early = call.anchor.ring_with_music(call.invite.body, self._caller_codecs(call),
                                            local.host)
        if isinstance(early, str):
            if early:
                log.info("no music while ringing", call_id=call.id, reason=early)
            return []
        self._bridge(call)
        return self._early_media(call, early.to_bytes(), now)

    def _unanchor(self, call: Call) -> None:
        log.info("media not anchored for this call", call_id=call.id)
        if call.anchor.stop_relay():
            self.media_actions.append(StopMedia(_call_key(call)))

    def _bridge(self, call: Call) -> None:
        anchor = call.anchor
        announce, language = "", "en"
        screen: ScreenMode = ""
        if call.screening is not None:
            screen = self._screen_mode(call, call.screening)
            language = self._screen_language(call, call.screening)
            # A confirm leg is not told who calls: its phone shows the caller's number
            # already, and reading it would take most of the seconds it has.
            announce = call.facts.caller if screen == "rebound" else ""
        # A transferee hears hold music while its target rings (when its codec plays).
        transfer = call.transfer
        transferee = ""
        if transfer is not None and transfer.codec.upper() in DECODABLE:
            transferee = "callee" if transfer.transferor is None else "caller"
        routing = call.state is CallState.ROUTING
        bridge = anchor.bridge(
            _call_key(call), call.id, routing=routing, ringing=routing and transfer is None,
            screen=screen, announce=announce, language=language, transferee=transferee,
            playlist=self._hold_playlist(call, anchor.holder_is_caller),
            parties=(call.facts.caller, self._callee_name(call)))
        if bridge is not None:
            self.media_actions.append(bridge)

    def _screen_language(self, call: Call, leg: Leg) -> str:
        """The prompts' language of the user whose rebound this is."""
        target = leg.target
        ext = target.mobile_of if isinstance(target, External) else ""
        step = call.plan.steps[call.step] if call.step >= 0 else None
        if not ext and isinstance(step, Ring) and step.diversion:
            ext = step.diversion[-1].extension
        user = self.directory.user(ext) if (self.directory and ext) else None
        return user.voicemail.language if user is not None else "en"

    def _callee_name(self, call: Call) -> str:
        target = call.winner.target if call.winner is not None else None
        if isinstance(target, Device):
            return target.extension
        if isinstance(target, External):
            return target.number
        return call.facts.callee

    def _hold_playlist(self, call: Call, holder_is_caller: bool) -> tuple[str, ...]:
        """The DID's playlist for a call that came in on a number; else the playlist
        of the number whose caller ID the holding user presents (a calling phone: the
        one this call presents); else the system's (empty: the media service's
        built-in tune). Numbers are found in any form (``Directory.number``)."""
        directory = self.directory
        if directory is None:
            return ()
        if call.facts.source == "trunk":
            number = directory.number(call.facts.callee)
            if number is not None and number.hold_music:
                return number.hold_music
        presented = ""
        if holder_is_caller and call.facts.source == "phone":
            presented = call.identity.caller_id  # this call's (P-Preferred-Identity)
        elif not holder_is_caller and call.winner is not None \
                and isinstance(call.winner.target, Device):
            user = directory.user(call.winner.target.extension)
            presented = directory.caller_id_for(user) if user is not None else ""
        number = directory.number(presented) if presented else None
        if number is not None and number.hold_music:
            return number.hold_music
        return directory.system.hold_music

    def _record_reason(self, call: Call, leg: Leg) -> str:
        """Why this answered call is recorded ("" not recorded): per user
        (``record_calls``: external or all) and per number (inbound, outbound)."""
        directory = self.directory
        if directory is None:
            return ""
        facts = call.facts
        external = facts.source == "trunk" or isinstance(leg.target, External)
        parties: list[str] = []
        if facts.source == "phone":
            parties.append(facts.caller)
        if isinstance(leg.target, Device):
            parties.append(leg.target.extension)
        for ext in parties:
            user = directory.user(ext)
            if user is None:
                continue
            if user.record_calls == "all" or (user.record_calls == "external" and external):
                return f"user {ext} records {user.record_calls} calls"
        if facts.source == "trunk":
            number = directory.number(facts.callee)
            if number is not None and number.record_inbound:
                return f"number {number.number} records inbound calls"
        elif isinstance(leg.target, External):
            # Withheld caller IDs (*82, block_caller_id) are recorded too: privacy
            # hides the number from the callee, not from its owner's records.
            number = directory.number(leg.target.caller_id)
            if number is not None and number.record_outbound:
                private = " (caller ID withheld)" if leg.target.privacy else ""
                return f"number {number.number} records outbound calls{private}"
        return ""

    def _anchored_offer(self, call: Call, req: Request, key: TxKey, from_caller: bool,
                        now: float, local: Local) -> list[Event]:
        """A re-INVITE or UPDATE from one side of an anchored call, answered by us
        (RFC 3264 s8): the other side is not disturbed. A hold (sendonly,
        inactive, c=0.0.0.0; s8.4) stops the relay and plays hold music to the
        other side; a resume relays again."""
        mine = call.anchor.side(from_caller)
        current = mine.media
        side = call.partner if from_caller else call.winner
        dialog = side.dialog if side is not None else call.caller_dialog
        contact = dialog.local_contact if dialog is not None and dialog.local_contact else \
            local.contact(side.transport if side is not None else call.transport)
        if current is None:
            return self.tx.respond(key, make_response(req, 491), now)
        if not req.body:  # an offer-less re-INVITE: we offer what we have (s14.2)
            if req.method != "INVITE" or mine.sdp is None:
                return self.tx.respond(key, make_response(req, 200, None,
                                                          [("Contact", contact)]), now)
            return self.tx.respond(key, make_response(
                req, 200, None, [("Contact", contact), ("Content-Type", "application/sdp")],
                mine.sdp.next_version().to_bytes()), now)
        try:
            offer = sdp.parse_sdp(req.body)
        except sdp.SdpError as exc:
            return self.tx.respond(key, make_response(req, 488, None, [
                ("Warning", warning_value(f"unreadable SDP offer: {exc.message}"))]), now)
        answered = call.anchor.on_offer(from_caller, offer, local.host)
        if isinstance(answered, sdp.AnswerRefused):
            return self.tx.respond(key, make_response(req, 488, None, [
                ("Warning", warning_value(f"{answered.reason} (the call keeps "
                                          f"{current.codec}; the engine does not transcode)"))]),
                now)
        ours, changed = answered
        if changed:
            log.info("hold" if mine.holds else "resume", call_id=call.id,
                     by="caller" if from_caller else "callee")
        self._bridge(call)
        return self.tx.respond(key, make_response(
            req, 200, None, [("Contact", contact), ("Content-Type", "application/sdp")],
            ours.to_bytes()), now)

    def _ack_leg(self, leg: Leg, local: Local, answer: Request | None = None) -> list[Event]:
        """ACK the callee's 2xx (s13.2.2.4); ``answer``: the caller's ACK whose SDP
        answers the callee's offer (late offer)."""
        if leg.dialog is None or leg.ack is not None:
            return []
        body = answer.body if answer is not None else b""
        ack = leg.dialog.ack(leg.invite.cseq.number, via_host=local.host,
                             via_port=local.port_for(leg.transport),
                             transport=leg.transport.upper(), body=body,
                             content_type=(answer.get("content-type") or "application/sdp")
                             if answer is not None and body else None)
        leg.ack = ack.to_bytes()
        return [Send(leg.ack, leg.dest, leg.transport)]

    def _join(self, call: Call, extension: str) -> None:
        call.members = (*call.members, extension)
        self.on_call[extension] = self.on_call.get(extension, 0) + 1

    def _release_leg(self, leg: Leg) -> None:
        if leg.trunk:
            self.channels[leg.trunk] = max(0, self.channels.get(leg.trunk, 0) - 1)
            leg.trunk = ""

    # ------------------------------------------------------------------ cancelling
    def _cancel_legs(self, call: Call, now: float, reason: str | None,
                     local: Local) -> list[Event]:
        events: list[Event] = []
        screening = call.screening
        if screening is not None:  # answered, still deciding: it gets a BYE
            events += self._bye_leg(screening, now, local)
            call.screening = None
            self._disarm(call, "screen")
            if self._screen_mode(call, screening) == "confirm":
                screening.status = 487
                self._free_callee_side(call)
        for leg in call.legs:
            events += self._cancel_leg(leg, now, reason)
        return events

    def _cancel_leg(self, leg: Leg, now: float, reason: str | None) -> list[Event]:
        if not leg.pending:
            return []
        if leg.state is LegState.CALLING:
            # s9.1: no provisional yet: a CANCEL may not be sent. The leg is
            # given up; a late 2xx is hung up by _leg_answered, a final
            # response closes the transaction.
            leg.move(LegEvent.GIVE_UP)
            leg.status = 487
            self._release_leg(leg)
            return []
        leg.move(LegEvent.CANCEL)
        leg.status = 487
        self._release_leg(leg)
        cancel = cancel_request(leg.invite, reason)
        try:
            _, events = self.tx.send_request(cancel, leg.dest, leg.transport, now)
        except ValueError:
            return []
        return events

    def on_cancel(self, invite_key: TxKey, now: float, local: Local) -> list[Event]:
        """The caller cancelled (the layer answered the CANCEL 200): 487 and CANCEL legs."""
        call = self._by_key.get(invite_key)
        if call is None or call.state is not CallState.ROUTING or call.transfer is not None:
            return []
        log.info("caller cancelled", call_id=call.id)
        events = self._cancel_legs(call, now, None, local)
        return events + self._final(call, 487, now, event=CallEvent.CANCEL)

    # ------------------------------------------------------------------ media (voicemail)
    def take_media(self) -> list[MediaCommand]:
        actions, self.media_actions = self.media_actions, []
        return actions

    def media_ready(self, key: tuple[str, str], ports: tuple[int, ...], now: float,
                    local: Local) -> list[Event]:
        """The endpoints asked for are open on ``ports`` (the caller's side first):
        answer a voicemail call, or ring the callees of an anchored one."""
        call = self.calls.get(key)
        if call is None or call.state is not CallState.ROUTING or call.anchor.open or (
                call.voicemail is None and call.waiting is None):
            self.media_actions.append(StopMedia(key))  # the caller left meanwhile
            return []
        call.anchor.opened(ports)
        if call.voicemail is not None:
            return self._guard(call, now, local, functools.partial(
                self._answer_voicemail, call, call.voicemail, now, local))
        return self._guard(call, now, local, functools.partial(
            self._resume_ring, call, now, local))

    def _resume_ring(self, call: Call, now: float, local: Local) -> list[Event]:
        index, call.waiting = call.waiting, None
        if index is None:
            return []
        if not call.anchor.callee_port:
            self._unanchor(call)
        step = call.plan.steps[index]
        assert isinstance(step, Ring)
        return self._ring(call, step, now, local)

    def media_failed(self, key: tuple[str, str], reason: str, now: float,
                     local: Local) -> list[Event]:
        call = self.calls.get(key)
        if call is None or call.state is not CallState.ROUTING:
            return []
        if call.waiting is not None:  # no media relay: the call still goes through
            log.warning("media not anchored: no endpoint", call_id=call.id, reason=reason)
            call.anchor.stop_relay()  # nothing is open
            return self._guard(call, now, local, functools.partial(
                self._resume_ring, call, now, local))
        log.warning("no media for voicemail", call_id=call.id, reason=reason)
        return self._final(call, 503, now, [("Warning", warning_value(reason))])

    def hangup(self, key: tuple[str, str], now: float, local: Local) -> list[Event]:
        """The engine's own endpoint is done (message recorded): BYE the caller."""
        call = self.calls.get(key)
        if call is None:
            return []
        return self._hangup(call, now, local, CallEvent.ENDPOINT_DONE)

    def _answer_voicemail(self, call: Call, step: Voicemail | MailboxAccess,
                          now: float, local: Local) -> list[Event]:
        result = self._sdp_answer(call, call.invite.body, local)
        if isinstance(result, str):
            return self._final(call, 488, now, [("Warning", warning_value(result))])
        answer, negotiated = result
        owner = self.directory.user(step.box) if self.directory else None
        contact = local.contact(call.transport)
        ok = to_caller(call.invite, 200, call.tag, [("Contact", contact),
                                                    ("Content-Type", "application/sdp")],
                       answer.to_bytes())
        call.move(CallEvent.ANSWER)
        call.answered_at = now
        call.ok = ok
        call.caller_dialog = Dialog.uas(call.invite, call.tag, contact, confirmed=True)
        if call.transport == "udp":
            call.ok_interval = self.timers.t1
            call.ok_deadline = now + self.timers.long
            self._arm(call, "ok", now + call.ok_interval)
        if isinstance(step, MailboxAccess):
            self.media_actions.append(StartMailbox(_call_key(call), call.id, negotiated,
                                                   step.box))
            log.info("mailbox answered", call_id=call.id, box=step.box, codec=negotiated.codec)
            return self._respond_caller(call, ok, now)
        max_seconds = owner.voicemail.max_seconds if owner is not None else 180
        self.media_actions.append(StartVoicemail(
            _call_key(call), call.id, negotiated, step.box, step.greeting, max_seconds,
            call.facts.caller))
        log.info("voicemail answered", call_id=call.id, box=step.box, codec=negotiated.codec)
        return self._respond_caller(call, ok, now)

    # ------------------------------------------------------------------ in-dialog requests
    def on_ack(self, ack: Request, now: float, local: Local) -> list[Event]:
        """An ACK for a 2xx (no transaction): stop retransmitting our 2xx; on a
        late-offer call, the callee's ACK goes now, with the caller's answer."""
        call = self._by_tag.get((ack.call_id, ack.to.tag or ""))
        if call is None:
            return []
        if call.ok is not None:
            call.ok = None
            self._disarm(call, "ok")
        leg = call.winner
        if leg is not None and leg.ack is None:
            return self._ack_leg(leg, local, ack)
        return []

    def in_dialog(self, req: Request, key: TxKey, source: Addr, transport: str, now: float,
                  local: Local) -> list[Event] | None:
        """A request with a To tag; None when it belongs to no call we know (481)."""
        call = self._by_tag.get((req.call_id, req.to.tag or ""))
        if call is not None:
            if call.caller_dialog is None:
                return None
            return self._guard(call, now, local, lambda: self._from_caller(
                call, req, key, now, local))
        leg = self._by_leg_call_id.get(req.call_id)
        if leg is not None and leg.dialog is not None and leg is leg.call.winner:
            return self._guard(leg.call, now, local, lambda: self._from_callee(
                leg, req, key, now, local))
        if leg is not None and leg.dialog is not None and leg is leg.call.partner:
            return self._guard(leg.call, now, local, lambda: self._from_partner(
                leg, req, key, now, local))
        if leg is not None and leg.dialog is not None and leg is leg.call.screening \
                and req.method == "BYE" and leg.dialog.on_request(req) is None:
            # The far end hung up on the announcement: a refusal.
            log.info(f"{self._screen_mode(leg.call, leg)} refused: the far end hung up",
                     call_id=leg.call.id, leg=leg.label)
            events = self.tx.respond(key, make_response(req, 200), now)
            leg.move(LegEvent.BYE)
            return events + self._guard(leg.call, now, local, functools.partial(
                self._refused, leg.call, now, local))
        return None

    def _from_caller(self, call: Call, req: Request, key: TxKey, now: float,
                     local: Local) -> list[Event]:
        assert call.caller_dialog is not None
        check = call.caller_dialog.on_request(req)
        if check is not None:
            return self.tx.respond(key, make_response(req, check), now)
        leg = call.winner
        if req.method == "BYE" and call.transfer is not None \
                and call.transfer.transferor is None:
            # The caller transfers and need not wait for the outcome (blind).
            log.info("transferor hung up", call_id=call.id)
            events = self.tx.respond(key, make_response(req, 200), now)
            call.caller_dialog.terminate()
            self._leave_extension(call, call.facts.caller)
            return events
        if req.method == "BYE":
            events = self.tx.respond(key, make_response(req, 200), now)
            log.info("caller hung up", call_id=call.id)
            if call.transfer is not None:  # the target's legs ring for nobody now
                events += self._transfer_abandoned(call, now, local)
            if leg is not None:
                events += self._bye_leg(leg, now, local)
            self._end(call, now, CallEvent.BYE)
            return events
        if req.method == "REFER":
            return self._refer(call, None, req, key, now, local)
        if call.voicemail is not None and call.anchor.caller_port:
            return self._endpoint_request(call, req, key, now, local)
        if call.anchor.relaying and req.method in ("INVITE", "UPDATE"):
            return self._anchored_offer(call, req, key, True, now, local)
        if leg is None or leg.dialog is None:
            return self.tx.respond(key, make_response(req, 481), now)
        return self._relay_request(call, req, key, leg.dialog, leg.dest, leg.transport,
                                   to_caller=False, now=now, local=local)

    def _endpoint_request(self, call: Call, req: Request, key: TxKey, now: float,
                          local: Local) -> list[Event]:
        """An in-dialog request on a call the engine itself answered (voicemail).

        A re-INVITE or UPDATE with an offer (a session refresh, or a phone locking the
        codec it chose, as pjsip does) gets a new answer on the same port, and the
        media endpoint follows it; anything else is acknowledged with 200.
        """
        if req.method not in ("INVITE", "UPDATE") or not req.body:
            return self.tx.respond(key, make_response(req, 200), now)
        answer = self._sdp_answer(call, req.body, local)
        if isinstance(answer, str):  # refused: the call goes on with the old session
            return self.tx.respond(key, make_response(req, 488, None, [
                ("Warning", warning_value(answer))]), now)
        sdp_answer, negotiated = answer
        self.media_actions.append(UpdateMedia(_call_key(call), negotiated))
        contact = call.caller_dialog.local_contact if call.caller_dialog else ""
        return self.tx.respond(key, make_response(
            req, 200, None, [("Contact", contact), ("Content-Type", "application/sdp")],
            sdp_answer.to_bytes()), now)

    def _sdp_answer(self, call: Call, body: bytes,
                    local: Local) -> tuple[sdp.SessionDescription, sdp.Negotiated] | str:
        """Our answer where the engine is the endpoint: the caller's codec list from the
        directory (the user's codec priority), among what we can decode; a str says why not."""
        return call.anchor.endpoint_answer(body, self._caller_codecs(call), local.host)

    def _caller_codecs(self, call: Call) -> Sequence[str]:
        """The codecs of the calling user, in its order (a trunk's caller: the default)."""
        caller = self.directory.user(call.facts.caller) if (
            self.directory and call.facts.source == "phone") else None
        return caller.codecs if caller is not None else DEFAULT_CODECS

    def _from_callee(self, leg: Leg, req: Request, key: TxKey, now: float,
                     local: Local) -> list[Event]:
        call = leg.call
        assert leg.dialog is not None
        check = leg.dialog.on_request(req)
        if check is not None:
            return self.tx.respond(key, make_response(req, check), now)
        if req.method == "BYE" and call.transfer is not None \
                and call.transfer.transferor is leg:
            # A blind transfer: the transferor need not wait for the outcome.
            log.info("transferor hung up", call_id=call.id, leg=leg.label)
            events = self.tx.respond(key, make_response(req, 200), now)
            leg.move(LegEvent.BYE)
            self._leave(call, leg)
            return events
        if req.method == "BYE":
            events = self.tx.respond(key, make_response(req, 200), now)
            log.info("callee hung up", call_id=call.id, leg=leg.label)
            if call.transfer is not None:  # the transferee left: nothing to transfer
                events += self._transfer_abandoned(call, now, local)
            leg.move(LegEvent.BYE)
            self._release_leg(leg)
            events += self._bye_caller(call, now, local)
            self._end(call, now, CallEvent.BYE)
            return events
        if req.method == "REFER":
            return self._refer(call, leg, req, key, now, local)
        if call.caller_dialog is None:
            return self.tx.respond(key, make_response(req, 481), now)
        if call.anchor.relaying and req.method in ("INVITE", "UPDATE"):
            return self._anchored_offer(call, req, key, False, now, local)
        partner = call.partner
        if partner is not None and partner.dialog is not None:
            return self._relay_request(call, req, key, partner.dialog, partner.dest,
                                       partner.transport, to_caller=True, now=now,
                                       local=local)
        return self._relay_request(call, req, key, call.caller_dialog, call.source,
                                   call.transport, to_caller=True, now=now, local=local)

    def _from_partner(self, leg: Leg, req: Request, key: TxKey, now: float,
                      local: Local) -> list[Event]:
        """A request from the leg that took the caller's place (after a transfer by
        the calling party): it is the caller side now."""
        call = leg.call
        assert leg.dialog is not None
        check = leg.dialog.on_request(req)
        if check is not None:
            return self.tx.respond(key, make_response(req, check), now)
        winner = call.winner
        if req.method == "BYE":
            events = self.tx.respond(key, make_response(req, 200), now)
            log.info("caller hung up", call_id=call.id, leg=leg.label)
            leg.move(LegEvent.BYE)
            if winner is not None:
                events += self._bye_leg(winner, now, local)
            self._end(call, now, CallEvent.BYE)
            return events
        if req.method == "REFER":
            return self._refuse_transfer(call, req, key, now, 501,
                                         "this call was transferred once already")
        if call.anchor.relaying and req.method in ("INVITE", "UPDATE"):
            return self._anchored_offer(call, req, key, True, now, local)
        if winner is None or winner.dialog is None:
            return self.tx.respond(key, make_response(req, 481), now)
        return self._relay_request(call, req, key, winner.dialog, winner.dest,
                                   winner.transport, to_caller=False, now=now, local=local)

    def _refuse_transfer(self, call: Call, req: Request, key: TxKey, now: float,
                         status: int, why: str) -> list[Event]:
        """A REFER the engine does not carry out: ``status`` with a Warning saying
        ``why``, and the call goes on. It is never passed to the other party: a
        carrier could dial the Refer-To number with rights the transferor lacks."""
        log.info("transfer refused", call_id=call.id, reason=why,
                 refer_to=short_text(req.get("refer-to") or ""))
        self._count_transfer("refused")
        return self.tx.respond(key, make_response(req, status, None, [
            ("Warning", warning_value(f"{why}; the call goes on"))]), now)

    # ------------------------------------------------------------------ transfer
    def _refer(self, call: Call, leg: Leg | None, req: Request, key: TxKey, now: float,
               local: Local) -> list[Event]:
        """A REFER from a user's phone in the call (RFC 3515, RFC 5589): ``leg``, the
        answered callee, transfers the caller; None, the calling party transfers
        the callee. Blind: 202, NOTIFY 100, hold music to the transferee, and the
        target's plan as a call from the transferring user (see :class:`Transfer`);
        with Replaces: attended (see :meth:`_attended`)."""
        anchor = call.anchor
        if call.transfer is not None:
            return self._refuse_transfer(call, req, key, now, 491, "a transfer is in progress")
        media = anchor.side(leg is not None).media if anchor.relaying else None
        winner = call.winner
        if media is None or not anchor.open or not anchor.caller_port \
                or not anchor.callee_port or self.directory is None \
                or call.state is not CallState.ANSWERED or winner is None \
                or winner.dialog is None or call.voicemail is not None:
            return self._refuse_transfer(call, req, key, now, 501, (
                "call transfer needs the call's media through the engine (serve --media relay)"))
        if leg is not None:
            user = leg.target.extension if isinstance(leg.target, Device) else ""
        else:
            user = call.facts.caller if call.facts.source == "phone" else ""
        if not user:
            return self._refuse_transfer(call, req, key, now, 403,
                                         "only a user's phone can transfer a call")
        refer_to = self._refer_to(call, req, key, now)
        if not isinstance(refer_to, URI):
            return refer_to
        if refer_to.headers:  # Replaces=... (an attended transfer)
            return self._attended(call, leg, req, key, refer_to.headers, now, local)
        if not refer_to.user:
            return self._refuse_transfer(call, req, key, now, 400, "Refer-To names no number")
        transferor = self.directory.user(user)
        return self._begin_transfer(
            call, req, key, Transfer(leg, refer_to.user, media.codec, local), user,
            transferor.name if transferor else "", now, local)

    def _refer_to(self, call: Call, req: Request, key: TxKey,
                  now: float) -> URI | list[Event]:
        """The REFER's Refer-To URI, or the 400 refusing it."""
        try:
            return parse_address(req.get("refer-to") or "", "Refer-To").uri
        except ParseError as exc:
            return self._refuse_transfer(call, req, key, now, 400, exc.reason)

    def _begin_transfer(self, call: Call, req: Request, key: TxKey, transfer: Transfer,
                        extension: str, name: str, now: float, local: Local) -> list[Event]:
        """202 and NOTIFY 100 to the transferor, hold music to the transferee, and the
        target's plan as a call from the transferring user ``extension``."""
        assert self.directory is not None
        wall = self.wall_clock()
        facts = CallFacts(caller=extension, callee=transfer.target, source="phone",
                          at=local_datetime(wall), caller_name=name)
        the_plan = plan(facts, self.directory, self.live_state(self.directory, wall))
        log.info("transfer", call_id=call.id, transferor=extension, target=transfer.target,
                 by="caller" if transfer.transferor is None else "callee",
                 plan=_PlanText(the_plan))
        call.transfer = transfer
        events = self.tx.respond(key, make_response(req, 202), now)
        events += self._notify_transferor(call, transfer, 100, now)
        call.plan = the_plan
        call.move(CallEvent.REFER)
        call.legs = []
        # Whoever rang earlier in this call may be the target now; the transferring
        # user's own phones are not rung.
        call.rung = {b.contact for b in self.registrar.lookup(extension, wall)}
        self._bridge(call)
        return events + self._run_step(call, 0, now, local)

    def _notify_transferor(self, call: Call, transfer: Transfer, status: int,
                           now: float) -> list[Event]:
        """How the transfer goes, as a message/sipfrag NOTIFY (RFC 3515 s2.4.5), in the
        transferor's dialog: its leg's, or the caller's (a transfer by the caller)."""
        leg = transfer.transferor
        if leg is not None:
            dialog, dest, transport = leg.dialog, leg.dest, leg.transport
        else:
            dialog, dest, transport = call.caller_dialog, call.source, call.transport
        if dialog is None or dialog.terminated:
            return []
        local = transfer.local
        final = status >= 200
        notify = dialog.new_request(
            "NOTIFY", via_host=local.host, via_port=local.port_for(transport),
            transport=transport.upper(), headers=[
                ("Event", "refer"),
                ("Subscription-State",
                 "terminated;reason=noresource" if final else "active;expires=60")],
            body=f"SIP/2.0 {status} {REASONS.get(status, 'Unknown')}\r\n".encode(),
            content_type="message/sipfrag;version=2.0")
        _, events = self.tx.send_request(notify, dest, transport, now)
        return events

    def _leave(self, call: Call, leg: Leg) -> None:
        """The transferor's leg is over: it is no longer on the call (busy state)."""
        self._release_leg(leg)
        self._by_leg_call_id.pop(leg.invite.call_id, None)
        if isinstance(leg.target, Device):
            self._leave_extension(call, leg.target.extension)

    def _leave_extension(self, call: Call, extension: str) -> None:
        if extension in call.members:
            members = list(call.members)
            members.remove(extension)
            call.members = tuple(members)
            self._off_call(extension)

    def _off_call(self, extension: str) -> None:
        """One call fewer for ``extension`` (busy state, :meth:`_join`'s inverse)."""
        n = self.on_call.get(extension, 0) - 1
        if n > 0:
            self.on_call[extension] = n
        else:
            self.on_call.pop(extension, None)

    def _transferor_here(self, call: Call, transfer: Transfer) -> bool:
        """The transferor is still on the call (it may hang up at any time)."""
        if transfer.transferor is not None:
            return transfer.transferor.state is not LegState.DONE
        return call.caller_dialog is not None and not call.caller_dialog.terminated

    def _transferor_out(self, call: Call, transfer: Transfer, status: int,
                        now: float) -> list[Event]:
        """The final NOTIFY, then BYE the transferor if it is still on the call."""
        leg = transfer.transferor
        events = self._notify_transferor(call, transfer, status, now)
        if leg is None:
            if self._transferor_here(call, transfer):
                events += self._bye_caller(call, now, transfer.local)
                self._leave_extension(call, call.facts.caller)
        elif leg.state is not LegState.DONE:
            events += self._bye_leg(leg, now, transfer.local)
            self._leave(call, leg)
        return events

    def _transfer_connected(self, call: Call, leg: Leg, body: bytes, now: float,
                            local: Local) -> list[Event]:
        """The target answered: relay it to the caller (same port, same codec: no
        re-INVITE), NOTIFY 200 and BYE to the transferor, the other legs cancelled."""
        transfer, anchor = call.transfer, call.anchor
        assert transfer is not None
        answered = self._callee_answer(call, leg, body, "transfer target's answer unusable")
        if answered is None:
            hung_up = self._bye_leg(leg, now, local)
            leg.status = 488
            if any(other.pending for other in call.legs):
                return hung_up
            return hung_up + self._outcome(call, "failed", now, local)
        theirs, media = answered
        transfer.move(TransferEvent.TARGET_ANSWERED)
        call.transfer = None
        call.move(CallEvent.TRANSFER_SETTLED)
        self._disarm(call, "no_answer")
        log.info("transfer connected", call_id=call.id, leg=leg.label)
        self._count_transfer("connected")
        events: list[Event] = []
        for other in call.legs:
            if other is not leg:
                events += self._cancel_leg(other, now, COMPLETED_ELSEWHERE)
        events += self._transferor_out(call, transfer, 200, now)
        if isinstance(leg.target, Device):
            self._join(call, leg.target.extension)
        if transfer.transferor is None:  # the target takes the caller's place
            call.partner = leg
            call.legs = [x for x in call.legs if x is not leg]
            anchor.take_side(True, media, leg.offer, offer=theirs)
        else:
            call.winner = leg
            anchor.take_side(False, media, leg.offer)
        self._bridge(call)
        return events

    def _transfer_to_voicemail(self, call: Call, step: Voicemail, now: float,
                               local: Local) -> list[Event]:
        """The target's plan leaves a message: the transferee, already answered, gets
        the greeting and the beep on its own endpoint (the caller's, or the callee's
        in a transfer by the caller); the transferor is done."""
        transfer = call.transfer
        assert transfer is not None
        by_caller = transfer.transferor is None
        media = call.anchor.side(not by_caller).media
        assert media is not None
        transfer.move(TransferEvent.TO_VOICEMAIL)
        call.transfer = None
        call.move(CallEvent.TRANSFER_SETTLED)
        call.voicemail = step
        owner = self.directory.user(step.box) if self.directory else None
        max_seconds = owner.voicemail.max_seconds if owner is not None else 180
        self.media_actions.append(StartVoicemail(
            _call_key(call), call.id, media, step.box, step.greeting, max_seconds,
            self._callee_name(call) if by_caller else call.facts.caller,
            callee_side=by_caller))
        log.info("transfer to voicemail", call_id=call.id, box=step.box)
        self._count_transfer("voicemail")
        return self._transferor_out(call, transfer, 200, now)

    def _transfer_failed(self, call: Call, status: int, now: float) -> list[Event]:
        """The target's plan ended without an answer: back to the transferor when it
        is still on the call (its phone shows the failure and can resume), else the
        call ends."""
        transfer = call.transfer
        assert transfer is not None
        transfer.move(TransferEvent.FAILED)
        call.transfer = None
        if call.state is CallState.ROUTING:  # an attended transfer never left ANSWERED
            call.move(CallEvent.TRANSFER_SETTLED)
        local = transfer.local
        events = self._cancel_legs(call, now, None, local)
        events += self._notify_transferor(call, transfer, status, now)
        if self._transferor_here(call, transfer):
            log.info("transfer failed; back to the transferor", call_id=call.id,
                     status=status)
            self._count_transfer("failed")
            self._bridge(call)
            return events
        log.info("transfer failed; the transferor had hung up, the call ends",
                 call_id=call.id, status=status)
        self._count_transfer("dropped")
        return events + self._hangup(call, now, local, CallEvent.TRANSFER_DROPPED)

    def _transfer_abandoned(self, call: Call, now: float, local: Local) -> list[Event]:
        """The caller hung up while its transfer rang: cancel, and tell the transferor."""
        transfer = call.transfer
        assert transfer is not None
        transfer.move(TransferEvent.TRANSFEREE_GONE)
        call.transfer = None
        self._count_transfer("dropped")
        return self._cancel_legs(call, now, None, local) + self._notify_transferor(
            call, transfer, 487, now)

    def _attended(self, call: Call, leg: Leg | None, req: Request, key: TxKey, headers: str,
                  now: float, local: Local) -> list[Event]:
        """An attended transfer: the transferor (the answered callee ``leg``, or with
        None the calling party) consulted the target in a call of its own and now
        asks that the other party replace it there (Refer-To with Replaces naming
        that call, RFC 5589 s7). The target's leg is re-INVITEd to this call's port
        on the transferor's side, with the transferee's codec; its answer joins
        the two."""
        anchor = call.anchor
        if leg is not None:
            assert isinstance(leg.target, Device)
            user, codec = leg.target.extension, anchor.caller.media
        else:
            user, codec = call.facts.caller, anchor.callee.media
        assert codec is not None
        replaces = parse_replaces(headers)
        if replaces is None:
            return self._refuse_transfer(call, req, key, now, 400,
                                         "Refer-To carries no single readable Replaces")
        call_id, to_tag, from_tag = replaces
        other = self._by_tag.get((call_id, to_tag)) or self._by_tag.get((call_id, from_tag))
        target = other.winner if other is not None else None
        if other is None or other is call or target is None or target.dialog is None:
            return self._refuse_transfer(call, req, key, now, 481,
                                         "Replaces names no call of the transferor's")
        theirs = other.anchor
        if other.state is not CallState.ANSWERED or other.transfer is not None \
                or other.facts.source != "phone" or other.facts.caller != user \
                or not theirs.relaying or not theirs.open or target.offer is None:
            return self._refuse_transfer(call, req, key, now, 403, (
                "Replaces must name an answered call the transferring user made, with "
                "its media through the engine"))
        transfer = call.transfer = Transfer(leg, target.label, codec.codec, local,
                                            consultation=other, state=TransferState.MOVING)
        # Our new offer to the target: this call's port on the transferor's side, the
        # transferee's codec only, in the session the target knows (RFC 3264 s8:
        # same o=, the version one up).
        offer = self._callee_offer(call, target.target, local) if leg is not None else \
            self._partner_offer(call, transfer, local)
        assert offer is not None
        session, version = theirs.callee.next_origin()
        offer = sdp.with_origin(offer, session, version, local.host)
        transfer.reinvite = offer
        reinvite = target.dialog.new_request(
            "INVITE", via_host=local.host, via_port=local.port_for(target.transport),
            transport=target.transport.upper(), body=offer.to_bytes(),
            content_type="application/sdp")
        move_key, events = self.tx.send_request(reinvite, target.dest, target.transport, now)
        self._moves[move_key] = (call, transfer)
        log.info("attended transfer", call_id=call.id, transferor=user, target=target.label,
                 consultation=other.id, by="callee" if leg is not None else "caller")
        events = self.tx.respond(key, make_response(req, 202), now) + events
        events += self._notify_transferor(call, transfer, 100, now)
        self._bridge(call)  # hold music to the caller while the target moves
        return events

    def _moved(self, call: Call, transfer: Transfer, resp: Response, now: float,
               local: Local) -> list[Event]:
        """The target's answer to the re-INVITE of an attended transfer."""
        other = transfer.consultation
        assert other is not None
        if resp.status < 200:
            return []
        if transfer.ack is not None:  # a retransmitted 2xx: the same ACK (s13.2.2.4)
            return [transfer.ack]
        target = other.winner
        if call.transfer is not transfer:
            # The caller hung up while the target was being moved to it: the target
            # now sends its audio to a closed port, so the consultation call ends too.
            if resp.status < 300 and target is not None and target.dialog is not None:
                log.info("attended transfer: the caller left; the consultation call ends",
                         call_id=other.id)
                return [self._ack_move(transfer, target, resp, local), *self._hangup(
                    other, now, local, CallEvent.REPLACED)]
            return []
        if resp.status >= 300 or target is None or target.dialog is None \
                or target.state is LegState.DONE:
            log.info("attended transfer refused by the target", call_id=call.id,
                     status=resp.status)
            return self._transfer_failed(call, resp.status if resp.status >= 300 else 480, now)
        events: list[Event] = [self._ack_move(transfer, target, resp, local)]
        anchor = call.anchor
        assert transfer.reinvite is not None
        try:
            theirs = sdp.parse_sdp(resp.body)
            media = sdp.negotiated(transfer.reinvite, theirs, local="offerer")
        except sdp.SdpError as exc:
            log.warning("attended transfer: the target's answer is unusable", call_id=call.id,
                        error=exc.message)
            return events + self._transfer_failed(call, 488, now)
        # The target's leg leaves the consultation call for this one.
        other.winner = None
        other.legs = [x for x in other.legs if x is not target]
        if isinstance(target.target, Device):
            self._join(call, target.target.extension)
        target.call = call
        transfer.move(TransferEvent.MOVED)
        call.transfer = None
        # The transferor is told and let go first: in a transfer by the caller, the
        # caller's dialog is still the one to end.
        events += self._transferor_out(call, transfer, 200, now)
        # Our answers on the target's side go on in the session it knows.
        origin = other.anchor.callee.session, other.anchor.callee.version
        if transfer.transferor is None:  # the target takes the caller's place
            call.partner = target
            anchor.take_side(True, media, transfer.reinvite, offer=theirs, origin=origin)
        else:
            call.winner = target
            call.legs = [target]
            anchor.take_side(False, media, transfer.reinvite, origin=origin)
        log.info("transfer connected", call_id=call.id, leg=target.label, attended=True)
        self._count_transfer("connected")
        events += self._bye_caller(other, now, local)  # the transferor's consultation call
        self._end(other, now, CallEvent.REPLACED)
        self._bridge(call)
        return events

    def _ack_move(self, transfer: Transfer, target: Leg, resp: Response,
                  local: Local) -> Send:
        """Our ACK of the target's 2xx to the re-INVITE of an attended transfer, kept
        for a retransmitted 2xx."""
        assert target.dialog is not None
        target.dialog.on_response("INVITE", resp)
        ack = target.dialog.ack(target.dialog.local_cseq, via_host=local.host,
                                via_port=local.port_for(target.transport),
                                transport=target.transport.upper())
        transfer.ack = Send(ack.to_bytes(), target.dest, target.transport)
        return transfer.ack

    def _count_transfer(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.transfers.labels(outcome).inc()

    def _relay_request(self, call: Call, req: Request, key: TxKey, dialog: Dialog, dest: Addr,
                       transport: str, *, to_caller: bool, now: float,
                       local: Local) -> list[Event]:
        """Pass an in-dialog request (re-INVITE, UPDATE, INFO...) to the other leg."""
        headers = [(h[1], h[2]) for h in req.headers
                   if h[0] in ("content-type", "event", "subscription-state", "info-package",
                               "session-expires", "supported", "require")]
        out = dialog.new_request(req.method, via_host=local.host,
                                 via_port=local.port_for(transport), transport=transport.upper(),
                                 headers=headers, body=req.body)
        out_key, events = self.tx.send_request(out, dest, transport, now)
        self._relays[out_key] = Relay(call, key, req, out, to_caller)
        return events

    def _relay_response(self, relay: Relay, resp: Response, now: float,
                        local: Local) -> list[Event]:
        """The other leg answered a relayed request: ACK a 2xx to INVITE, answer ours."""
        if resp.status == 100:
            return []
        call, sent = relay.call, relay.sent
        winner = call.winner
        if relay.to_caller:
            dialog, dest, transport = call.caller_dialog, call.source, call.transport
        elif winner is not None:
            dialog, dest, transport = winner.dialog, winner.dest, winner.transport
        else:
            return []
        events: list[Event] = []
        if dialog is not None:
            dialog.on_response(sent.method, resp)
            if sent.method == "INVITE" and 200 <= resp.status < 300:
                ack = dialog.ack(sent.cseq.number, via_host=local.host,
                                 via_port=local.port_for(transport), transport=transport.upper())
                events.append(Send(ack.to_bytes(), dest, transport))
        headers = [(h[1], h[2]) for h in resp.headers
                   if h[0] in ("content-type", "supported", "require", "session-expires")]
        if sent.method == "INVITE" and 200 <= resp.status < 300:
            # Our Contact toward the leg the request came from (the opposite of
            # ``transport``): ;transport=tcp|tls and its port when it is TCP or TLS.
            back = winner.transport if relay.to_caller and winner is not None \
                else call.transport
            headers.append(("Contact", local.contact(back)))
        out = make_response(relay.origin, resp.status, resp.reason, headers, resp.body)
        with contextlib.suppress(ValueError):  # the request's transaction is over
            events += self.tx.respond(relay.origin_key, out, now)
        return events

    # ------------------------------------------------------------------ hanging up
    def _bye_leg(self, leg: Leg, now: float, local: Local) -> list[Event]:
        """Hang up an answered leg: BYE unless its dialog is over already (a 481 or
        408 ended it); either way the leg is done."""
        dialog = leg.dialog
        if dialog is None or (dialog.terminated and leg.state is LegState.DONE):
            return []
        leg.move(LegEvent.HANG_UP)
        self._release_leg(leg)
        if dialog.terminated:
            return []
        events = self._ack_leg(leg, local)  # a late-offer 2xx still waiting for its ACK
        bye = dialog.new_request("BYE", via_host=local.host,
                                 via_port=local.port_for(leg.transport),
                                 transport=leg.transport.upper())
        dialog.terminate()
        _, sent = self.tx.send_request(bye, leg.dest, leg.transport, now)
        return events + sent

    def _bye_caller(self, call: Call, now: float, local: Local) -> list[Event]:
        if call.partner is not None:
            return self._bye_leg(call.partner, now, local)
        dialog = call.caller_dialog
        if dialog is None or dialog.terminated:
            return []
        bye = dialog.new_request("BYE", via_host=local.host,
                                 via_port=local.port_for(call.transport),
                                 transport=call.transport.upper())
        dialog.terminate()
        _, events = self.tx.send_request(bye, call.source, call.transport, now)
        return events

    def _hangup(self, call: Call, now: float, local: Local, event: CallEvent) -> list[Event]:
        """BYE both sides of an answered call and end it."""
        events: list[Event] = []
        if call.winner is not None:
            events += self._bye_leg(call.winner, now, local)
        events += self._bye_caller(call, now, local)
        self._end(call, now, event)
        return events

    def _teardown(self, call: Call, now: float, local: Local, event: CallEvent,
                  status: int) -> list[Event]:
        """End a call whatever its state (an internal error, a shutdown)."""
        if call.transfer is not None:
            return self._transfer_abandoned(call, now, local) + self._hangup(
                call, now, local, event)
        if call.state is CallState.ROUTING:
            events = self._cancel_legs(call, now, None, local)
            return events + self._final(call, status, now, event=event)
        return self._hangup(call, now, local, event)

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.calls.labels(outcome).inc()

    def _end(self, call: Call, now: float, event: CallEvent) -> None:
        if call.state is CallState.ANSWERED:
            self._count("answered")
            log.info("call ended", call_id=call.id, answered=True,
                     seconds=round(now - call.answered_at, 1),
                     billing_group=call.identity.billing_group or None)
        self._forget(call, event)

    def _forget(self, call: Call, event: CallEvent) -> None:
        if call.state is CallState.ENDED:
            return
        call.move(event)
        self.completed += 1
        if call.anchor.open:
            self.media_actions.append(StopMedia(_call_key(call)))
        self.calls.pop(_call_key(call), None)
        self._by_tag.pop((call.id, call.tag), None)
        self._by_key.pop(call.key, None)
        call.timers.clear()
        for ext in call.members:
            self._off_call(ext)
        call.members = ()
        if call.trunk_in:
            self.channels[call.trunk_in] = max(0, self.channels.get(call.trunk_in, 0) - 1)
            call.trunk_in = ""
        for leg in call.legs:
            self._release_leg(leg)
        for party in (call.winner, call.partner):
            if party is not None:
                self._release_leg(party)
                self._by_leg_call_id.pop(party.invite.call_id, None)
        # Break the Call -> Leg -> Call cycles: an ended call is freed by reference
        # counting, as soon as its last transaction ends, not by the cyclic
        # collector (whose passes over a busy engine's heap cost more than calls).
        call.legs = []
        call.winner = call.screening = call.partner = None

    def on_terminated(self, key: TxKey) -> None:
        """A client transaction ended: forget legs that are over."""
        leg = self._legs.pop(key, None)
        if leg is not None and leg is not leg.call.winner and leg is not leg.call.partner:
            self._by_leg_call_id.pop(leg.invite.call_id, None)
        self._relays.pop(key, None)
        self._moves.pop(key, None)

    def on_timed_out(self, key: TxKey, now: float, local: Local) -> list[Event]:
        moving = self._moves.get(key)
        if moving is not None and moving[0].transfer is moving[1]:
            return self._guard(moving[0], now, local, lambda: self._transfer_failed(
                moving[0], 408, now))
        leg = self._legs.get(key)
        if leg is None:
            return []
        return self._guard(leg.call, now, local, lambda: self._leg_response(
            leg, make_response(leg.invite, 408), now, local))

    def shutdown(self, now: float, local: Local) -> list[Event]:
        events: list[Event] = []
        for call in list(self.calls.values()):
            events += self._guard(call, now, local,
                                  functools.partial(self._teardown, call, now, local,
                                                    CallEvent.SHUTDOWN, 503))
        return events


# ---------------------------------------------------------------------- helpers
class _PlanText:
    """The plan as text, rendered only if the log line is written (repr is what both
    structlog renderers use for a value that is not a string)."""

    __slots__ = ("plan",)

    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    def __repr__(self) -> str:
        return render_text(self.plan)


def _call_key(call: Call) -> tuple[str, str]:
    return (call.id, call.invite.from_.tag or "")


def local_datetime(wall: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(wall, dt.UTC)


__all__ = ["B2BUA", "Call", "Leg", "Local", "ParseError", "local_datetime"]
