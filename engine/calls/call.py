"""One call: the caller's INVITE (we are its UAS) and the legs of its plan.

A :class:`Call` is an active object: it runs its routing plan, its legs, its
media anchor and its timers, and it ends through one method, :meth:`Call.close`.
The front object (``engine.calls.front.Calls``) finds the call an input belongs
to and hands it over; everything the call sends comes back as the return value
of the entry point (transaction events; media commands go to the media service,
``engine.calls.events``).

What a call does comes from ``routing`` as a :class:`routing.Plan`, a table of
steps. The call runs a step, learns its outcome (answered, busy, no answer,
failed) and goes to the step the plan names for it (docs/architecture.md,
"Plans, not callbacks").

RFC notes:

* Each leg is its own dialog (RFC 3261 s12, ``engine.sip.dialog``); the callee
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
  4458) name who forwarded and why (``engine.calls.headers``).
* 302 deflection answers the caller's INVITE with Contact and Diversion
  (RFC 3261 s21.3.3, RFC 5806).
* A phone's P-Preferred-Identity (RFC 3325 s9.2) picks the caller ID (routing
  decides whether it is allowed: ``Plan.identity``) and is never passed on: a
  leg carries only the headers of ``headers.COPY_TO_CALLEE`` from the caller's
  INVITE, and our own P-Asserted-Identity.

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
  INVITE has an SDP offer gets two engine endpoints (``engine.calls.anchor``):
  the callees are offered the engine's address (codecs in their user's
  order), the caller is answered with the codec the callee chose, and RTP is
  relayed between them. A re-INVITE or UPDATE from either side is answered by
  the engine (RFC 3264 s8): hold plays music to the other side, which is never
  re-INVITEd. A rebound leg that answers is screened
  (``BridgeMedia.announce``): it hears who calls and presses 1 to take the
  call; the caller hears hold music (183 with our SDP) meanwhile.
* Screening has two modes, rebound and confirm (``engine.calls.screening``):
  the answered leg is asked before it takes the call.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

import structlog

from engine.calls import headers as build
from engine.calls import rules
from engine.calls.anchor import DECODABLE, MediaAnchor, callee_answer
from engine.calls.events import (
    CallKey,
    CallOutput,
    OpenMedia,
    ScreenMode,
    StartMailbox,
    StartVoicemail,
    StopMedia,
    UpdateMedia,
)
from engine.calls.headers import COMPLETED_ELSEWHERE, Local, to_caller
from engine.calls.ivr import IvrSession, start_ivr
from engine.calls.leg import Leg
from engine.calls.pickup import start_pickup, start_unpark
from engine.calls.queue import QueueCaller, queue_music, start_queue, start_queue_login
from engine.calls.screening import Screening, screen, screen_mode
from engine.calls.states import (
    CALL,
    CallEvent,
    CallState,
    LegEvent,
    LegState,
)
from engine.calls.transfer import Transfer, on_refer
from engine.calls.transfer import refuse as refuse_transfer
from engine.sip.dialog import Dialog
from engine.sip.message import (
    Request,
    Response,
    make_response,
    warning_value,
)
from engine.sip.registrar import binding_target, preload_routes
from engine.sip.transaction import Addr, Send, TxKey
from media import sdp
from routing import (
    Busy,
    CallFacts,
    Deflect,
    Device,
    External,
    Identity,
    Ivr,
    MailboxAccess,
    Park,
    Pickup,
    Plan,
    Queue,
    QueueLogin,
    Reject,
    Ring,
    Unpark,
    Voicemail,
)

if TYPE_CHECKING:
    from engine.calls.front import Calls

__all__ = ["Call", "RelayedRequest", "StepOutcome"]

log = structlog.get_logger("switchboard.call")

# How a step ended without an answer; the plan says where each goes next.
StepOutcome = Literal["no_answer", "busy", "failed"]
_FINAL_OUTCOME = {302: "deflected", 480: "unanswered", 486: "busy", 487: "cancelled",
                  503: "no_channel"}
_ORDER = itertools.count()  # ties between timers due at the same time: arming order


@dataclass(frozen=True, slots=True)
class RelayedRequest:
    """An in-dialog request passed to the party on the other side, waiting for its
    answer."""

    call: Call
    origin_key: TxKey  # the server transaction of the request we received
    origin: Request
    sent: Request
    to: Leg | None  # who we sent it to (None: the caller's own dialog)
    back: str  # the transport of the party it came from (our Contact toward it)


@dataclass(slots=True, eq=False)
class Call:
    """One call: the caller's leg (we are its UAS) and the legs of the current step."""

    front: Calls  # the calls of this engine: shared state, lookup tables, configuration
    id: str  # the caller's Call-ID, for logs
    invite: Request
    invite_key: TxKey  # the caller's INVITE server transaction
    source: Addr
    transport: str
    facts: CallFacts
    plan: Plan
    tag: str  # our To tag toward the caller
    step: int = -1
    legs: list[Leg] = field(default_factory=list)
    rung: set[str] = field(default_factory=set)  # each destination once per call
    state: CallState = CallState.ROUTING  # moved only by move() (engine.calls.states.CALL)
    caller_dialog: Dialog | None = None  # with the caller, once we answered it
    # The leg connected on the callee side: the callee that answered (or the target
    # that took its place in a transfer).
    callee_leg: Leg | None = None
    pending_ok: Response | None = None  # our 2xx to the caller, retransmitted until ACK
    ok_interval: float = 0.0  # the next retransmission of pending_ok, after this long
    ok_deadline: float = 0.0  # no ACK by then: the call ends
    trunk_in: str = ""  # the trunk the call came in on (holds a channel)
    # What the call presents and its billing group, as first routed (a transfer's
    # plan is the transferor's: the call still came in on its number).
    identity: Identity = field(default_factory=lambda: Identity(""))
    members: tuple[str, ...] = ()  # extensions on this call (busy tracking)
    started: float = 0.0
    answered_at: float = 0.0
    last_failure: int = 0
    early_sent: bool = False
    # The step the engine answers itself (leaving a message, listening to one's
    # mailbox), waiting for or holding its media endpoint.
    engine_step: Voicemail | MailboxAccess | None = None
    # The engine's endpoints (:attr:`anchor`), made when first needed: a call whose
    # media goes end to end (``--media direct``, no voicemail or IVR) never needs
    # one, and an anchor with its two sides was a third of such a call's objects.
    _anchor: MediaAnchor | None = field(default=None, init=False, repr=False, compare=False)
    waiting_step: int | None = None  # a Ring step waiting for its media endpoints
    screening: Screening | None = None  # an answered leg being asked (rebound, confirm)
    ivr: IvrSession | None = None  # an IVR menu the caller is in (engine.calls.ivr)
    menus: int = 0  # IVR menus entered in this call
    menu_language: str = ""  # the language of the last IVR menu the caller heard
    queued: QueueCaller | None = None  # waiting in a queue (engine.calls.queue)
    replaces: str = ""  # an INVITE with Replaces: the Call-ID of the ringing leg it names
    # A picker's (or retriever's) INVITE this call answered (engine.calls.pickup): our
    # 2xx to it, retransmitted on UDP until its ACK as the caller's is.
    adopted: Leg | None = None
    adopted_ok: Response | None = None
    adopted_interval: float = 0.0
    adopted_deadline: float = 0.0
    parked: str = ""  # the park orbit the caller waits on (engine.calls.transfer.park)
    parker: str = ""  # who parked it
    # The parker's leg while it hears the orbit (engine.calls.transfer.park), let go
    # by the "park_told" timer or its own BYE.
    park_telling: Leg | None = None
    transfer: Transfer | None = None
    # After a transfer by the calling party: the leg that took the caller's place
    # (we are its UAC; it faces the caller-side endpoint). None: the caller's own
    # dialog is the caller side.
    caller_leg: Leg | None = None
    # The call's timers: name -> (deadline, arming order). "no_answer" (the step's
    # ring time), "screen" (a screened leg's time to answer), "ok" (the 2xx
    # retransmission, RFC 3261 s13.3.1.4).
    timers: dict[str, tuple[float, int]] = field(default_factory=dict)
    # The earliest of them as filed in the front's heap (None: none filed). Kept here
    # so that arming a timer later than it, or disarming one that is not it, leaves
    # the heap alone: the front's heap is asked only when the earliest one moves.
    wakeup: float | None = None
    # (Call-ID, the caller's From tag): how the front and the media service know the
    # call. Set once from the INVITE (neither changes): it is read on every input
    # and timer change, and the From header would be looked up each time.
    key: CallKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.key = (self.id, self.invite.from_.tag or "")

    @property
    def local(self) -> Local:
        return self.front.local

    @property
    def anchor(self) -> MediaAnchor:
        """The call's media anchor, made on first use (paths that only ask whether the
        engine's endpoints are open read ``_anchor``, so they make none)."""
        anchor = self._anchor
        if anchor is None:
            anchor = self._anchor = MediaAnchor()
        return anchor

    def move(self, event: CallEvent) -> None:
        self.state = CALL.rows[self.state][event]  # IllegalTransition if not in CALL
        front = self.front
        if front.notes_changes:  # BLF (engine.services.dialoginfo)
            front.changed.append(self)

    def respond(self, key: TxKey, resp: Response, now: float) -> list[CallOutput]:
        """Answer a request we received (its server transaction ``key``)."""
        return [*self.front.tx.respond(key, resp, now)]

    def send(self, request: Request, dest: Addr, transport: str,
             now: float) -> tuple[TxKey, list[CallOutput]]:
        """Send a request in a client transaction of its own."""
        key, events = self.front.tx.send_request(request, dest, transport, now)
        return key, [*events]

    # ------------------------------------------------------------------ timers
    def next_timer(self) -> float | None:
        """When :meth:`on_timer` is due next; None when no timer is armed."""
        timers = self.timers
        # (deadline, arming order) tuples: the least one holds the earliest deadline.
        return min(timers.values())[0] if timers else None

    def on_timer(self, now: float) -> list[CallOutput]:
        """Fire the earliest timer due at ``now`` (the front calls again for the next)."""
        timers = self.timers
        if not timers:
            return []
        name = min(timers, key=timers.__getitem__)
        if timers[name][0] > now:
            return []
        del timers[name]
        self.front.reschedule(self)
        return self._fire(name, now)

    def arm(self, name: str, when: float) -> None:
        timers = self.timers
        old = timers.get(name)
        timers[name] = (when, next(_ORDER))
        filed = self.wakeup
        if filed is None or when < filed:
            if self.state is not CallState.ENDED:  # the new earliest: filed as it is
                self.front.file_wakeup(self, when)
                return
        elif old is None or old[0] != filed:
            return  # the filed deadline is still the earliest
        self.front.reschedule(self)

    def disarm(self, name: str) -> None:
        old = self.timers.pop(name, None)
        if old is not None and old[0] == self.wakeup:  # the earliest one went
            self.front.reschedule(self)

    def _fire(self, name: str, now: float) -> list[CallOutput]:
        if name == "screen" and self.screening is not None:
            return self.screening.expired(now)
        if name == "ivr" and self.ivr is not None:
            return self.ivr.on_timer(now)
        if name == "adopted_ok" and self.adopted is not None and self.adopted_ok is not None:
            return self._resend_adopted_ok(now)
        if name == "park_told" and self.park_telling is not None:
            return self.let_parker_go(now) + self.bridge()
        if name == "park" and self.parked and self.state is CallState.ANSWERED:
            return self.let_parker_go(now) + Transfer.ring_back(self, now)
        if name == "no_answer" and self.state is CallState.ROUTING:
            log.info("no answer", call_id=self.id, step=self.step + 1)
            events = self.cancel_legs(now, None)
            return events + self.step_outcome("no_answer", now)
        if name == "ok" and self.pending_ok is not None and self.state is CallState.ANSWERED:
            if now >= self.ok_deadline:
                log.warning("no ACK for our 2xx: ending the call", call_id=self.id)
                return self.close(CallEvent.NO_ACK, now)
            self.ok_interval = min(self.ok_interval * 2, self.front.timers.t2)
            self.arm("ok", now + self.ok_interval)
            return self.respond_caller(self.pending_ok, now)
        return []

    def adopt_ok(self, leg: Leg, ok: Response, now: float) -> list[CallOutput]:
        """Our 2xx to a picker whose INVITE ``leg`` now is: sent, and on UDP sent
        again until its ACK (RFC 3261 s13.3.1.4: T1 doubling to T2, for 64*T1)."""
        self.adopted, self.adopted_ok = leg, ok
        if leg.transport == "udp":
            timers = self.front.timers
            self.adopted_interval = timers.t1
            self.adopted_deadline = now + timers.long
            self.arm("adopted_ok", now + self.adopted_interval)
        return self.respond(leg.key, ok, now)

    def adopted_acked(self) -> None:
        self.adopted = self.adopted_ok = None
        self.disarm("adopted_ok")

    def _resend_adopted_ok(self, now: float) -> list[CallOutput]:
        leg, ok = self.adopted, self.adopted_ok
        assert leg is not None and ok is not None
        if now >= self.adopted_deadline:
            log.warning("no ACK from the picker: ending the call", call_id=self.id,
                        leg=leg.label)
            self.adopted = self.adopted_ok = None
            return self.close(CallEvent.NO_ACK, now)
        self.adopted_interval = min(self.adopted_interval * 2, self.front.timers.t2)
        self.arm("adopted_ok", now + self.adopted_interval)
        try:
            return self.respond(leg.key, ok, now)
        except ValueError:  # the transaction is gone: nothing to send again
            return []

    # ------------------------------------------------------------------ steps
    def start(self, now: float) -> list[CallOutput]:
        """Run the plan from its first step, once the offer's SRTP is acceptable."""
        if self.invite.body:
            refused = self._srtp_policy()
            if refused is not None:
                log.info("srtp refused", call_id=self.id, reason=refused)
                return self._unanswered(488, now, [("Warning", warning_value(refused))])
        return self.run_step(0, now)

    def _srtp_policy(self) -> str | None:
        """Refuse an offer whose SRTP the caller may not use (rules.srtp_refusal), else
        let the caller's side answer SAVP when it came over TLS from an SRTP user."""
        directory, facts = self.front.directory, self.facts
        mode = rules.user_srtp(directory, facts.caller) if facts.source == "phone" else "off"
        body = self.invite.body
        if mode == "off" and b"savp" not in body.lower():
            # No RTP/SAVP(F) line and no SRTP for this caller: nothing to refuse and
            # nothing to set, so most calls skip parsing the offer here (the relay
            # parses it once, in MediaAnchor.wants_relay; a direct call never).
            return None
        try:
            offer = sdp.parse_sdp(body)
        except sdp.SdpError:
            return None  # the steps say why an unreadable offer cannot be used
        refused = rules.srtp_refusal(directory, facts, self.transport, offer)
        if refused is None and facts.source == "phone":
            srtp_ok = mode != "off" and self.transport.lower() == "tls"
            if srtp_ok or mode == "required":  # else the side's defaults say it
                side = self.anchor.caller
                side.srtp_ok = srtp_ok
                side.srtp_required = mode == "required"
        return refused

    def run_step(self, index: int, now: float) -> list[CallOutput]:
        self.step = index
        step = self.plan.steps[index]
        log.info("step", call_id=self.id, step=index + 1, kind=type(step).__name__.lower(),
                 reason=step.reason)
        if isinstance(step, Ring):
            if self._wants_anchor():
                self.waiting_step = index
                return [OpenMedia(self.key, bridge=True)]
            return self._ring(step, now)
        if isinstance(step, Ivr):  # the engine answers and plays the menu (engine.calls.ivr)
            return start_ivr(self, step, now)
        if isinstance(step, Queue):  # the engine answers, the caller waits (engine.calls.queue)
            return start_queue(self, step, now)
        if isinstance(step, QueueLogin):
            if self.transfer is not None:  # a code is dialled, not transferred to
                return self.transfer.failed(403, now)
            return start_queue_login(self, step, now)
        if isinstance(step, Pickup):  # engine.calls.pickup
            return start_pickup(self, step, now, self.replaces)
        if isinstance(step, Park):  # a blind transfer's target (engine.calls.transfer)
            if self.transfer is not None:
                return self.transfer.park(step, now)
            return self._unanswered(403, now, [("Warning", warning_value(
                "the park code is a transfer target: transfer the call to it"))])
        if isinstance(step, Unpark):  # engine.calls.pickup
            if self.transfer is not None:
                return self.transfer.failed(403, now)
            return start_unpark(self, step, now)
        if self.transfer is not None:  # the target's plan decides how the transfer ends
            return self.transfer.run_step(step, now)
        if isinstance(step, Deflect):
            trunk = self.front.trunk_addresses.get(step.trunk)
            domain = self.local.domain
            host = f"{trunk[0]}:{trunk[1]}" if trunk else domain
            headers = [("Contact", f"<sip:{step.number}@{host}>")]
            headers += [("Diversion", v) for v in build.diversion(step.diversion, domain)]
            return self._unanswered(302, now, headers)
        if isinstance(step, Voicemail | MailboxAccess):  # the engine answers itself
            if not self.invite.body:
                what = (f"voicemail of {step.box} was chosen; it" if isinstance(step, Voicemail)
                        else f"mailbox access for {step.box}")
                return self._unanswered(480, now, [("Warning", warning_value(
                    f"{what} needs an SDP offer in the INVITE (late offer is not supported)"))])
            self.engine_step = step
            if self.anchor.open:  # anchored: the endpoint facing the caller is ready
                return self._answer_voicemail(step, now)
            return [OpenMedia(self.key)]
        if isinstance(step, Busy):
            return self._unanswered(486, now)
        if isinstance(step, Reject):
            return self._unanswered(step.status, now, [("Warning", warning_value(step.reason))],
                                    reason=step.text)
        raise TypeError(f"unknown step {step!r}")

    def _wants_anchor(self) -> bool:
        """A first Ring step of a call to anchor: open its endpoints first."""
        if not self.front.anchor_media:
            return False
        why_not = self.anchor.wants_relay(self.invite.body)
        if why_not:
            log.info("media not anchored: unreadable offer", call_id=self.id, error=why_not)
        return why_not is None

    def _ring(self, step: Ring, now: float) -> list[CallOutput]:
        events: list[CallOutput] = []
        anchor = self._anchor
        if step.music and anchor is not None and anchor.relaying and anchor.open \
                and not anchor.music_codec and self.transfer is None:
            events += self._music_while_ringing(now)
        self.legs = []
        front = self.front
        wall = front.wall_clock()
        for target in step.targets:
            if isinstance(target, Device):
                # A user whose srtp is "required" takes no call without SRTP, and SRTP
                # keys travel in SDP only over TLS: a phone of theirs registered over
                # UDP or TCP is not rung (the plan goes on as if it were not there).
                tls_only = rules.user_srtp(front.directory, target.extension) == "required"
                for binding in front.registrar.lookup(target.extension, wall):
                    if binding.contact in self.rung:
                        continue
                    # The binding's Path (RFC 3327) is the callee INVITE's route set.
                    hop = binding_target(binding)
                    if hop is None:
                        continue
                    if tls_only and hop.transport != "tls":
                        log.info("srtp required: phone not over TLS not rung", call_id=self.id,
                                 extension=target.extension, transport=hop.transport)
                        continue
                    self.rung.add(binding.contact)
                    events += self._start_leg(step, target, hop.uri, hop.dest, hop.transport,
                                              "", f"{target.extension} {hop.uri}", now,
                                              routes=hop.routes)
            else:
                if target.number in self.rung:
                    continue
                trunk = front.trunk_addresses.get(target.trunk)
                if trunk is None:
                    continue
                if not front.channel_free(target.trunk):
                    log.info("no channel free", call_id=self.id, trunk=target.trunk,
                             number=target.number)
                    self.last_failure = 503
                    continue
                self.rung.add(target.number)
                host, port, transport = trunk
                uri = f"sip:{target.number}@{host}:{port}"
                events += self._start_leg(step, target, uri, (host, port), transport,
                                          target.trunk, f"{target.number} via {target.trunk}",
                                          now)
        if not self.legs:
            log.info("nothing to ring", call_id=self.id, step=self.step + 1)
            return events + self.step_outcome("failed" if self.last_failure else "busy", now)
        if step.seconds is not None:
            self.arm("no_answer", now + step.seconds)
        return events

    def _start_leg(self, step: Ring, target: Device | External, uri: str, dest: Addr,
                   transport: str, trunk: str, label: str, now: float,
                   routes: tuple[str, ...] = ()) -> list[CallOutput]:
        anchor = self._anchor
        if self.transfer is not None:
            offer = self.transfer.offer_for(target, transport)
        elif anchor is None or not anchor.relaying:  # the SDP goes end to end
            offer = None
        else:
            offer = self.callee_offer(target, anchor.music_codec, transport=transport)
        invite = build.callee_invite(self.invite, self.facts, step.diversion, target, uri,
                                     transport, self.local, offer)
        if step.intercom and isinstance(target, Device):
            invite = build.intercom(invite, self.local)
        if routes:
            invite = preload_routes(invite, routes)
        key, events = self.send(invite, dest, transport, now)
        leg = Leg(call=self, target=target, label=label, invite=invite, dest=dest,
                  transport=transport, key=key, trunk=trunk)
        leg.offer = offer
        if trunk:
            self.front.take_channel(trunk)
        self.legs.append(leg)
        self.front.track_leg(leg)
        log.info("ringing", call_id=self.id, leg=label)
        return events

    def callee_offer(self, target: Device | External, only: str = "",
                     sendrecv: bool = False, transport: str = "",
                     ) -> sdp.SessionDescription | None:
        """The caller's offer as we make it to a callee on an anchored call: our
        address, our o= line, codecs in the order of the user on that leg (a
        trunk gets the caller's order). ``only``: the caller was answered early in
        this codec, or is in a call in it (a transfer): the callee gets only that
        codec, relayed without transcoding. ``transport``: the leg's; a phone of an
        SRTP user (allowed or required) reached over TLS is offered SAVP with our
        key, anyone else plain RTP."""
        return self.anchor.callee_offer(self.local.host,
                                        rules.callee_codecs(self.front.directory, target),
                                        only, sendrecv,
                                        rules.leg_srtp(self.front.directory, target, transport))

    # ------------------------------------------------------------------ outcomes
    def step_outcome(self, outcome: StepOutcome, now: float) -> list[CallOutput]:
        """The current step ended without an answer: go where the plan says."""
        self.disarm("no_answer")
        step = self.plan.steps[self.step]
        nxt = None
        if isinstance(step, Ring):
            nxt = {"no_answer": step.on_no_answer, "busy": step.on_busy,
                   "failed": step.on_failed}[outcome]
        log.info("step outcome", call_id=self.id, step=self.step + 1, outcome=outcome,
                 next_step=None if nxt is None else nxt + 1)
        if nxt is not None:
            return self.run_step(nxt, now)
        status = {"no_answer": 480, "busy": 486}.get(outcome) or self.last_failure or 480
        return self._unanswered(status, now)

    def _unanswered(self, status: int, now: float, headers: Iterable[tuple[str, str]] = (),
                    reason: str | None = None) -> list[CallOutput]:
        """The plan ends without an answer: a final non-2xx answer to the caller, and
        the call ends. (In a transfer the caller was answered long ago: the transfer
        failed instead.)"""
        if self.transfer is not None:
            return self.transfer.failed(status, now)
        return self.close(CallEvent.REJECT, now, status, headers, reason)

    def respond_caller(self, resp: Response, now: float) -> list[CallOutput]:
        try:
            return self.respond(self.invite_key, resp, now)
        except ValueError:  # the transaction is gone (timed out): nothing to answer
            return []

    # ------------------------------------------------------------------ responses from legs
    def on_leg_response(self, leg: Leg, resp: Response, now: float) -> list[CallOutput]:
        status = resp.status
        if status < 200:
            if status == 100 or not leg.pending:
                return []
            leg.move(LegEvent.PROVISIONAL)
            if self.state is not CallState.ROUTING or leg not in self.legs:
                return []
            if self.transfer is not None:  # the caller hears hold music, not ringing
                self.transfer.target_ringing()
                if resp.body and status == 183:
                    with contextlib.suppress(sdp.SdpError):
                        leg.early = sdp.parse_sdp(resp.body)
                return []
            events: list[CallOutput] = []
            headers: list[tuple[str, str]] = []
            body = b""
            if resp.body and status == 183 and leg.offer is not None \
                    and self.screening is not None:
                # The endpoint facing the callees is the asked leg's until it decides:
                # this leg's early media is not relayed; its SDP is kept for its answer.
                with contextlib.suppress(sdp.SdpError):
                    leg.early = sdp.parse_sdp(resp.body)
                return []
            if resp.body and status == 183 and leg.offer is not None:
                early = self.anchored_answer(leg, resp.body)
                if early is None:
                    return []
                events += self.bridge()
                body = early
                headers.append(("Content-Type", "application/sdp"))
            elif resp.body and status == 183:
                body = resp.body
                headers.append(("Content-Type", resp.get("content-type") or "application/sdp"))
            elif status == 183:
                return []
            status_out = 180 if status in (180, 181, 182) else status
            self.early_sent = True
            out = to_caller(self.invite, status_out, self.tag, headers, body)
            return events + self.respond_caller(out, now)
        if status < 300:
            return self._leg_answered(leg, resp, now)
        # 300-699: the transaction ACKed it.
        leg.move(LegEvent.REFUSED)
        leg.status = status
        self.release_leg(leg)
        if self.state is not CallState.ROUTING or leg not in self.legs:
            return []
        log.info("leg refused", call_id=self.id, leg=leg.label, status=status)
        if status not in (486, 600, 487):
            self.last_failure = 503 if status == 503 else self.last_failure
        if self.screening is not None:  # the asked leg's answer decides the step
            return []
        if any(other.pending for other in self.legs):
            return []
        statuses = [other.status for other in self.legs]
        if all(s in (486, 600) for s in statuses):
            return self.step_outcome("busy", now)
        if all(s == 487 for s in statuses):
            return self.step_outcome("no_answer", now)
        return self.step_outcome("failed", now)

    def on_leg_timed_out(self, leg: Leg, now: float) -> list[CallOutput]:
        """No final response from ``leg`` (Timer B, or the CANCEL guard): a 408."""
        return self.on_leg_response(leg, make_response(leg.invite, 408), now)

    def _leg_answered(self, leg: Leg, resp: Response, now: float) -> list[CallOutput]:
        if leg.ack is not None:  # a retransmitted 2xx: the same ACK again (s13.2.2.4)
            return [Send(leg.ack, leg.dest, leg.transport)]
        if leg.dialog is not None:  # retransmitted while its ACK waits for the caller's
            return []
        leg.dialog = Dialog.uac(leg.invite, resp)
        leg.move(LegEvent.ANSWER)
        events: list[CallOutput] = []
        late_offer = not leg.invite.body and bool(resp.body)
        routing = self.state is CallState.ROUTING and leg in self.legs
        if not (late_offer and routing):
            events += self._ack_leg(leg)
        if not routing:
            # Answered after another leg won, or after the step moved on: hang it up.
            log.info("late answer hung up", call_id=self.id, leg=leg.label)
            return events + self.bye_leg(leg, now)
        asked = self.screening
        if asked is not None and screen_mode(self, leg):
            # One leg is asked at a time (one endpoint faces the callees): this one
            # is released as if it had not confirmed; the asked leg decides the step.
            log.info("confirm: another leg is being asked; released", call_id=self.id,
                     leg=leg.label)
            events += self.bye_leg(leg, now)
            leg.status = 487
            return events
        if asked is not None:  # another leg answered while the asked leg decides
            events += asked.displaced(leg, now)
        elif screen_mode(self, leg):
            return events + screen(self, leg, resp, now)
        return events + self.connect(leg, resp.body, resp.get("content-type"), now)

    # ------------------------------------------------------------------ screening
    def early_media(self, sdp_body: bytes, now: float) -> list[CallOutput]:
        """183 Session Progress with our SDP: the caller hears the engine before any
        answer (hold music while screening or waiting in a ring group)."""
        self.early_sent = True
        early = to_caller(self.invite, 183, self.tag, [("Content-Type", "application/sdp")],
                          sdp_body)
        return self.respond_caller(early, now)

    def on_screened(self, accepted: bool, now: float) -> list[CallOutput]:
        """The asked leg's key (rebound or confirm): 1 accepts, anything else refuses."""
        if self.screening is None or self.state is not CallState.ROUTING:
            return []
        return self.screening.on_key(accepted, now)

    # ------------------------------------------------------------------ IVR
    def on_ivr_digit(self, digit: str, now: float) -> list[CallOutput]:
        """A key the caller sent (RFC 4733) while in an IVR menu."""
        return [] if self.ivr is None else self.ivr.on_digit(digit, now)

    def on_ivr_prompt_done(self, generation: int, now: float) -> list[CallOutput]:
        """The IVR's prompt (play ``generation``) played to its end."""
        return [] if self.ivr is None else self.ivr.on_prompt_done(generation, now)

    # ------------------------------------------------------------------ answered
    def connect(self, leg: Leg, body: bytes, ctype: str | None, now: float) -> list[CallOutput]:
        """``leg`` takes the call: 200 to the caller, the other legs cancelled."""
        if self.transfer is not None:
            return self.transfer.target_answered(leg, body, now)
        events: list[CallOutput] = []
        self.move(CallEvent.ANSWER)
        self.callee_leg = leg
        self.answered_at = now
        if isinstance(leg.target, Device):
            self.join(leg.target.extension)
        contact = self.local.contact(self.transport)
        headers = [("Contact", contact)]
        if leg.offer is not None:
            answer = self.anchored_answer(leg, body, final=True)
            if answer is None:  # no usable answer: let the phones talk directly
                events += self._unanchor()
            else:
                events += self.bridge()
                body, ctype = answer, "application/sdp"
        if ctype:
            headers.append(("Content-Type", ctype))
        events += self._answer_caller(to_caller(self.invite, 200, self.tag, headers, body),
                                      contact, now)
        # After the 2xx's retransmission timer is armed (earlier than the ring time):
        # that re-files the call's deadline once, and this disarm leaves it alone.
        self.disarm("no_answer")
        log.info("call answered", call_id=self.id, leg=leg.label, step=self.step + 1)
        for other in self.legs:
            if other is not leg:
                events += self.cancel_leg(other, now, COMPLETED_ELSEWHERE)
        return events

    def _answer_caller(self, ok: Response, contact: str, now: float) -> list[CallOutput]:
        """Our 2xx to the caller: the dialog with it is confirmed, and on UDP the 2xx
        is retransmitted until its ACK (s13.3.1.4: T1 doubling to T2, for 64*T1)."""
        timers = self.front.timers
        self.pending_ok = ok
        self.caller_dialog = Dialog.uas(self.invite, self.tag, contact, confirmed=True)
        if self.transport == "udp":
            self.ok_interval = timers.t1
            self.ok_deadline = now + timers.long
            self.arm("ok", now + self.ok_interval)
        return self.respond_caller(ok, now)

    # ------------------------------------------------------------------ anchored media
    def anchored_answer(self, leg: Leg, body: bytes, final: bool = False) -> bytes | None:
        """A callee's answer (183 or 2xx) on an anchored call -> our answer to the
        caller, with the codec the callee chose; None when it cannot be used. The
        anchor's state changed: the caller sends :meth:`bridge` on."""
        answered = self.callee_answer(leg, body, "callee answer unusable for media anchoring")
        if answered is None:
            return None
        theirs, callee = answered
        leg.early = theirs
        anchor = self.anchor
        ours = anchor.connect(callee, leg.offer, self.local.host)
        if isinstance(ours, sdp.AnswerRefused):
            log.warning("caller offer has not the callee's codec", call_id=self.id,
                        codec=callee.codec, reason=ours.reason)
            return None
        if final:
            anchor.record = rules.record_reason(self.front.directory, self.facts,
                                                leg.target)
        return ours.to_bytes()

    def callee_answer(self, leg: Leg, body: bytes, what: str,
                       ) -> tuple[sdp.SessionDescription, sdp.Negotiated] | None:
        """The callee's SDP answer to our offer on ``leg`` (in ``body``, else the one
        its 183 carried) and what it negotiates; None, logged as ``what``, when
        there is none or it cannot be used."""
        assert leg.offer is not None
        answered = callee_answer(leg.offer, body, leg.early)
        if isinstance(answered, str):
            log.warning(what, call_id=self.id, leg=leg.label, error=answered)
            return None
        return answered

    def _music_while_ringing(self, now: float) -> list[CallOutput]:
        """A ring group: the caller hears hold music while it rings. The caller is
        answered early (183) in a codec the engine can play, and the callees are
        offered only that codec, so whoever answers is relayed without transcoding."""
        early = self.anchor.ring_with_music(
            self.invite.body, rules.caller_codecs(self.front.directory, self.facts),
            self.local.host)
        if isinstance(early, str):
            if early:
                log.info("no music while ringing", call_id=self.id, reason=early)
            return []
        return self.bridge() + self.early_media(early.to_bytes(), now)

    def _unanchor(self) -> list[CallOutput]:
        log.info("media not anchored for this call", call_id=self.id)
        return [StopMedia(self.key)] if self.anchor.stop_relay() else []

    def bridge(self) -> list[CallOutput]:
        """The anchor's state for the media service (a BridgeMedia), when it relays."""
        anchor = self.anchor
        directory = self.front.directory
        mode: ScreenMode = ""
        announce, language = "", "en"
        if self.screening is not None:
            mode, announce, language = self.screening.media()
        # A transferee hears hold music while its target rings (when its codec plays).
        transfer = self.transfer
        transferee = ""
        if transfer is not None and transfer.codec.upper() in DECODABLE:
            transferee = transfer.transferee
        elif self.parked and anchor.caller.media is not None \
                and anchor.caller.media.codec.upper() in DECODABLE:
            transferee = "caller"  # a parked caller hears hold music
        routing = self.state is CallState.ROUTING
        answered = self.callee_leg.target if self.callee_leg is not None else None
        bridge = anchor.bridge(
            self.key, self.id, routing=routing, ringing=routing and transfer is None,
            screen=mode, announce=announce, language=language, transferee=transferee,
            playlist=rules.hold_playlist(directory, self.facts, self.identity,
                                         anchor.holder_is_caller, answered),
            parties=(self.facts.caller, rules.party_name(self.facts, answered)))
        if bridge is not None and self.queued is not None:
            bridge = queue_music(self, bridge)
        if bridge is not None and self.park_telling is not None and self.parked:
            user = directory.user(self.parker) if directory is not None else None
            bridge = replace(bridge, tell_orbit=self.parked,
                             language=user.voicemail.language if user is not None else "en")
        return [] if bridge is None else [bridge]

    def _anchored_offer(self, req: Request, key: TxKey, from_caller: bool,
                        now: float) -> list[CallOutput]:
        """A re-INVITE or UPDATE from one side of an anchored call, answered by us
        (RFC 3264 s8): the other side is not disturbed. A hold (sendonly,
        inactive, c=0.0.0.0; s8.4) stops the relay and plays hold music to the
        other side; a resume relays again."""
        mine = self.anchor.side(from_caller)
        current = mine.media
        side = self.caller_leg if from_caller else self.callee_leg
        dialog = side.dialog if side is not None else self.caller_dialog
        contact = dialog.local_contact if dialog is not None and dialog.local_contact else \
            self.local.contact(side.transport if side is not None else self.transport)
        if current is None:
            return self.respond(key, make_response(req, 491), now)
        if not req.body:  # an offer-less re-INVITE: we offer what we have (s14.2)
            if req.method != "INVITE" or mine.sdp is None:
                return self.respond(key, make_response(req, 200, None, [("Contact", contact)]),
                                  now)
            return self.respond(key, make_response(
                req, 200, None, [("Contact", contact), ("Content-Type", "application/sdp")],
                mine.sdp.next_version().to_bytes()), now)
        try:
            offer = sdp.parse_sdp(req.body)
        except sdp.SdpError as exc:
            return self.respond(key, make_response(req, 488, None, [
                ("Warning", warning_value(f"unreadable SDP offer: {exc.message}"))]), now)
        answered = self.anchor.on_offer(from_caller, offer, self.local.host)
        if isinstance(answered, sdp.AnswerRefused):
            return self.respond(key, make_response(req, 488, None, [
                ("Warning", warning_value(f"{answered.reason} (the call keeps "
                                          f"{current.codec}; the engine does not transcode)"))]),
                now)
        ours, changed = answered
        if changed:
            log.info("hold" if mine.holds else "resume", call_id=self.id,
                     by="caller" if from_caller else "callee")
        return self.bridge() + self.respond(key, make_response(
            req, 200, None, [("Contact", contact), ("Content-Type", "application/sdp")],
            ours.to_bytes()), now)

    def _ack_leg(self, leg: Leg, answer: Request | None = None) -> list[CallOutput]:
        """ACK the callee's 2xx (s13.2.2.4); ``answer``: the caller's ACK whose SDP
        answers the callee's offer (late offer)."""
        if leg.dialog is None or leg.ack is not None:
            return []
        local = self.local
        body = answer.body if answer is not None else b""
        ack = leg.dialog.ack(leg.invite.cseq.number, via_host=local.host,
                             via_port=local.port_for(leg.transport),
                             transport=leg.transport.upper(), body=body,
                             content_type=(answer.get("content-type") or "application/sdp")
                             if answer is not None and body else None)
        leg.ack = ack.to_bytes()
        return [Send(leg.ack, leg.dest, leg.transport)]

    def join(self, extension: str) -> None:
        self.members = (*self.members, extension)
        self.front.join(extension)

    def release_leg(self, leg: Leg) -> None:
        if leg.trunk:
            self.front.free_channel(leg.trunk)
            leg.trunk = ""

    # ------------------------------------------------------------------ cancelling
    def cancel_legs(self, now: float, reason: str | None) -> list[CallOutput]:
        events: list[CallOutput] = []
        if self.screening is not None:  # answered, still deciding: it gets a BYE
            events += self.screening.release(now)
        for leg in self.legs:
            events += self.cancel_leg(leg, now, reason)
        return events

    def cancel_leg(self, leg: Leg, now: float, reason: str | None) -> list[CallOutput]:
        if not leg.pending:
            return []
        if leg.state is LegState.CALLING:
            # s9.1: no provisional yet: a CANCEL may not be sent. The leg is
            # given up; a late 2xx is hung up by _leg_answered, a final
            # response closes the transaction.
            leg.move(LegEvent.GIVE_UP)
            leg.status = 487
            self.release_leg(leg)
            return []
        leg.move(LegEvent.CANCEL)
        leg.status = 487
        self.release_leg(leg)
        cancel = build.cancel_request(leg.invite, reason)
        try:
            _, events = self.send(cancel, leg.dest, leg.transport, now)
        except ValueError:
            return []
        return events

    def on_cancel(self, now: float) -> list[CallOutput]:
        """The caller cancelled (the layer answered the CANCEL 200): 487 and CANCEL legs."""
        if self.state is not CallState.ROUTING or self.transfer is not None:
            return []
        log.info("caller cancelled", call_id=self.id)
        return self.close(CallEvent.CANCEL, now, 487)

    # ------------------------------------------------------------------ media (voicemail)
    def on_media_ready(self, ports: tuple[int, ...], now: float) -> list[CallOutput]:
        """The endpoints asked for are open on ``ports`` (the caller's side first):
        answer a voicemail call, or ring the callees of an anchored one."""
        anchor = self.anchor
        if self.state is not CallState.ROUTING or anchor.open or (
                self.engine_step is None and self.waiting_step is None):
            return [StopMedia(self.key)]  # the caller left meanwhile
        anchor.opened(ports)
        if self.engine_step is not None:
            return self._answer_voicemail(self.engine_step, now)
        return self._resume_ring(now)

    def _resume_ring(self, now: float) -> list[CallOutput]:
        index, self.waiting_step = self.waiting_step, None
        if index is None:
            return []
        events = self._unanchor() if not self.anchor.callee_port else []
        step = self.plan.steps[index]
        if isinstance(step, Ivr):
            return events + start_ivr(self, step, now)
        if isinstance(step, Queue):
            return events + start_queue(self, step, now)
        if isinstance(step, QueueLogin):
            return events + start_queue_login(self, step, now)
        assert isinstance(step, Ring)
        return events + self._ring(step, now)

    def on_media_failed(self, reason: str, now: float) -> list[CallOutput]:
        if self.state is not CallState.ROUTING:
            return []
        if self.waiting_step is not None and isinstance(self.plan.steps[self.waiting_step],
                                                        Ivr | Queue | QueueLogin):
            log.warning("no media for the IVR", call_id=self.id, reason=reason)
            return self._unanswered(503, now, [("Warning", warning_value(reason))])
        if self.waiting_step is not None:  # no media relay: the call still goes through
            log.warning("media not anchored: no endpoint", call_id=self.id, reason=reason)
            self.anchor.stop_relay()  # nothing is open
            return self._resume_ring(now)
        log.warning("no media for voicemail", call_id=self.id, reason=reason)
        return self._unanswered(503, now, [("Warning", warning_value(reason))])

    def _answer_voicemail(self, step: Voicemail | MailboxAccess, now: float) -> list[CallOutput]:
        directory = self.front.directory
        result = self._endpoint_answer(self.invite.body)
        if isinstance(result, str):
            return self._unanswered(488, now, [("Warning", warning_value(result))])
        answer, negotiated = result
        contact = self.local.contact(self.transport)
        ok = to_caller(self.invite, 200, self.tag, [("Contact", contact),
                                                    ("Content-Type", "application/sdp")],
                       answer.to_bytes())
        self.move(CallEvent.ANSWER)
        self.answered_at = now
        start: StartMailbox | StartVoicemail
        if isinstance(step, MailboxAccess):
            start = StartMailbox(self.key, self.id, negotiated, step.box)
            log.info("mailbox answered", call_id=self.id, box=step.box, codec=negotiated.codec)
        else:
            start = StartVoicemail(self.key, self.id, negotiated, step.box, step.greeting,
                                   rules.voicemail_seconds(directory, step.box),
                                   self.facts.caller)
            log.info("voicemail answered", call_id=self.id, box=step.box,
                     codec=negotiated.codec)
        return [start, *self._answer_caller(ok, contact, now)]

    def _endpoint_answer(self, body: bytes,
                         ) -> tuple[sdp.SessionDescription, sdp.Negotiated] | str:
        """Our answer where the engine is the endpoint: the caller's codec list from the
        directory (the user's codec priority), among what we can decode; a str says why not."""
        return self.anchor.endpoint_answer(
            body, rules.caller_codecs(self.front.directory, self.facts), self.local.host)

    # ------------------------------------------------------------------ in-dialog requests
    def on_ack(self, ack: Request, now: float) -> list[CallOutput]:
        """An ACK for a 2xx (no transaction): stop retransmitting our 2xx; on a
        late-offer call, the callee's ACK goes now, with the caller's answer."""
        if self.pending_ok is not None:
            self.pending_ok = None
            self.disarm("ok")
        leg = self.callee_leg
        if leg is not None and leg.ack is None:
            return self._ack_leg(leg, ack)
        return []

    def on_screened_bye(self, req: Request, key: TxKey, now: float) -> list[CallOutput]:
        """The asked leg's far end hung up on the question: a refusal."""
        if self.screening is None:
            return []
        return self.screening.far_end_hung_up(req, key, now)

    def on_request(self, leg: Leg | None, req: Request, key: TxKey,
                   now: float) -> list[CallOutput]:
        """An in-dialog request from a party of the answered call, on either side:
        ``leg`` is the callee, or the party that took the caller's place (after a
        transfer by the calling party); None is the caller's own dialog (we are its
        UAS). BYE ends the call (or lets a blind transferor go); REFER transfers;
        a re-INVITE or UPDATE on an anchored call is answered by the engine; the
        rest is relayed to the party on the other side."""
        dialog = self.caller_dialog if leg is None else leg.dialog
        assert dialog is not None
        check = dialog.on_request(req)
        if check is not None:
            return self.respond(key, make_response(req, check), now)
        from_caller = leg is None or leg is self.caller_leg
        labels = {} if leg is None else {"leg": leg.label}
        if req.method == "BYE":
            events = self.respond(key, make_response(req, 200), now)
            if leg is not None:
                leg.move(LegEvent.BYE)
            if leg is not None and leg is self.park_telling:
                # The parker hung up while hearing the orbit: the parked call stays.
                log.info("parker hung up", call_id=self.id, **labels)
                self.park_telling = None
                self.disarm("park_told")
                self.leave(leg)
                return events + self.bridge()
            if self.transfer is not None and self.transfer.is_transferor(leg):
                # A blind transfer: the transferor need not wait for the outcome.
                log.info("transferor hung up", call_id=self.id, **labels)
                self.transfer.transferor_left()
                return events
            log.info("caller hung up" if from_caller else "callee hung up", call_id=self.id,
                     **labels)
            if leg is not None:
                self.release_leg(leg)
            return events + self.close(CallEvent.BYE, now)
        if req.method == "REFER":
            if leg is not None and leg is self.park_telling:
                return refuse_transfer(self, req, key, now, 403,
                                       "the call is parked already")
            if leg is not None and leg is self.caller_leg:
                return refuse_transfer(self, req, key, now, 501,
                                       "this call was transferred once already")
            return on_refer(self, leg, req, key, now)
        if leg is None and self.ivr is not None and req.method == "INFO":
            return self.ivr.on_info(req, key, now)
        anchor = self._anchor
        if leg is None and self.engine_step is not None and anchor is not None \
                and anchor.caller_port:
            return self._endpoint_request(req, key, now)
        if self.caller_dialog is None:  # not answered: nothing to relay to
            return self.respond(key, make_response(req, 481), now)
        if anchor is not None and anchor.relaying and req.method in ("INVITE", "UPDATE"):
            return self._anchored_offer(req, key, from_caller, now)
        to = self.callee_leg if from_caller else self.caller_leg
        if to is not None and to.dialog is None:
            to = None
        if from_caller and to is None:
            return self.respond(key, make_response(req, 481), now)
        return self._relay_request(req, key, to, leg, now)

    def _endpoint_request(self, req: Request, key: TxKey, now: float) -> list[CallOutput]:
        """An in-dialog request on a call the engine itself answered (voicemail).

        A re-INVITE or UPDATE with an offer (a session refresh, or a phone locking the
        codec it chose, as pjsip does) gets a new answer on the same port, and the
        media endpoint follows it; anything else is acknowledged with 200.
        """
        if req.method not in ("INVITE", "UPDATE") or not req.body:
            return self.respond(key, make_response(req, 200), now)
        answer = self._endpoint_answer(req.body)
        if isinstance(answer, str):  # refused: the call goes on with the old session
            return self.respond(key, make_response(req, 488, None, [
                ("Warning", warning_value(answer))]), now)
        sdp_answer, negotiated = answer
        contact = self.caller_dialog.local_contact if self.caller_dialog else ""
        return [UpdateMedia(self.key, negotiated), *self.respond(key, make_response(
            req, 200, None, [("Contact", contact), ("Content-Type", "application/sdp")],
            sdp_answer.to_bytes()), now)]

    def _relay_request(self, req: Request, key: TxKey, to: Leg | None, origin: Leg | None,
                       now: float) -> list[CallOutput]:
        """Pass an in-dialog request (re-INVITE, UPDATE, INFO...) from ``origin`` to the
        party ``to`` on the other side (None: the caller's own dialog)."""
        local = self.local
        dialog, dest, transport = self._reach(to)
        assert dialog is not None
        headers = [(h[1], h[2]) for h in req.headers
                   if h[0] in ("content-type", "event", "subscription-state", "info-package",
                               "session-expires", "supported", "require")]
        out = dialog.new_request(req.method, via_host=local.host,
                                 via_port=local.port_for(transport), transport=transport.upper(),
                                 headers=headers, body=req.body)
        out_key, events = self.send(out, dest, transport, now)
        back = origin.transport if origin is not None else self.transport
        self.front.track_relay(out_key, RelayedRequest(self, key, req, out, to, back))
        return events

    def on_relay_response(self, relay: RelayedRequest, resp: Response,
                          now: float) -> list[CallOutput]:
        """The other party answered a relayed request: ACK a 2xx to INVITE, answer ours."""
        if resp.status == 100:
            return []
        local = self.local
        sent = relay.sent
        dialog, dest, transport = self._reach(relay.to)
        events: list[CallOutput] = []
        if dialog is not None:
            dialog.on_response(sent.method, resp)
            if sent.method == "INVITE" and 200 <= resp.status < 300:
                ack = dialog.ack(sent.cseq.number, via_host=local.host,
                                 via_port=local.port_for(transport), transport=transport.upper())
                events.append(Send(ack.to_bytes(), dest, transport))
        headers = [(h[1], h[2]) for h in resp.headers
                   if h[0] in ("content-type", "supported", "require", "session-expires")]
        if sent.method == "INVITE" and 200 <= resp.status < 300:
            # Our Contact toward the party the request came from: ;transport=tcp|tls
            # and its port when it is TCP or TLS.
            headers.append(("Contact", local.contact(relay.back)))
        out = make_response(relay.origin, resp.status, resp.reason, headers, resp.body)
        with contextlib.suppress(ValueError):  # the request's transaction is over
            events += self.respond(relay.origin_key, out, now)
        return events

    def _reach(self, party: Leg | None) -> tuple[Dialog | None, Addr, str]:
        """How requests reach ``party``: its dialog, address and transport (None: the
        caller's own dialog, at the address its INVITE came from)."""
        if party is None:
            return self.caller_dialog, self.source, self.transport
        return party.dialog, party.dest, party.transport

    # ------------------------------------------------------------------ transfer
    def let_parker_go(self, now: float) -> list[CallOutput]:
        """The parker heard the orbit (or the call moves on): BYE its leg (the
        caller sends the next BridgeMedia)."""
        leg = self.park_telling
        if leg is None:
            return []
        self.park_telling = None
        self.disarm("park_told")
        events = self.bye_leg(leg, now) if leg.state is not LegState.DONE else []
        self.leave(leg)
        return events  # the caller's next bridge() stops the telling

    def leave(self, leg: Leg) -> None:
        """The transferor's leg is over: it is no longer on the call (busy state)."""
        self.release_leg(leg)
        self.front.untrack_leg(leg)
        if leg.extension:
            self.leave_extension(leg.extension)

    def leave_extension(self, extension: str) -> None:
        if extension in self.members:
            members = list(self.members)
            members.remove(extension)
            self.members = tuple(members)
            self.front.off_call(extension)
            self.front.queues.agent_left(self, extension)

    # ------------------------------------------------------------------ hanging up
    def bye_leg(self, leg: Leg, now: float) -> list[CallOutput]:
        """Hang up an answered leg: BYE unless its dialog is over already (a 481 or
        408 ended it); either way the leg is done."""
        dialog = leg.dialog
        if dialog is None or (dialog.terminated and leg.state is LegState.DONE):
            return []
        leg.move(LegEvent.HANG_UP)
        self.release_leg(leg)
        if dialog.terminated:
            return []
        events = self._ack_leg(leg)  # a late-offer 2xx still waiting for its ACK
        local = self.local
        bye = dialog.new_request("BYE", via_host=local.host,
                                 via_port=local.port_for(leg.transport),
                                 transport=leg.transport.upper())
        dialog.terminate()
        _, sent = self.send(bye, leg.dest, leg.transport, now)
        return events + sent

    def bye_caller(self, now: float) -> list[CallOutput]:
        if self.caller_leg is not None:
            return self.bye_leg(self.caller_leg, now)
        dialog = self.caller_dialog
        if dialog is None or dialog.terminated:
            return []
        local = self.local
        bye = dialog.new_request("BYE", via_host=local.host,
                                 via_port=local.port_for(self.transport),
                                 transport=self.transport.upper())
        dialog.terminate()
        _, events = self.send(bye, self.source, self.transport, now)
        return events

    def hang_up(self, now: float) -> list[CallOutput]:
        """The engine's own endpoint is done (message recorded): BYE the caller."""
        return self.close(CallEvent.ENDPOINT_DONE, now)

    def close(self, event: CallEvent, now: float, status: int = 0,
              headers: Iterable[tuple[str, str]] = (), reason: str | None = None,
              ) -> list[CallOutput]:
        """End the call, whatever its state; every ending goes through here.

        ``event`` says why (its move to ``ended`` must be in the call's table). A
        transfer still running is abandoned (its transferor is told 487). A caller
        not answered yet gets the final ``status`` (with ``headers`` and the
        ``reason`` phrase) and the legs still ringing are cancelled; otherwise
        whoever is still on the call gets a BYE. Then the call lets go of
        everything it holds (channels, busy marks, media, its lookup entries)."""
        if self.state is CallState.ENDED:
            return []
        events: list[CallOutput] = []
        if self.transfer is not None:
            events += self.transfer.abandon(now)
        if self.caller_dialog is None:  # the caller has no answer yet
            events += self.cancel_legs(now, None)
            resp = to_caller(self.invite, status, self.tag, headers, reason=reason)
            log.info("call ended", call_id=self.id, status=status, answered=False,
                     billing_group=self.identity.billing_group or None)
            self.front.count(_FINAL_OUTCOME.get(status, "rejected" if status < 500
                                                else "failed"))
            events += self.respond_caller(resp, now)
        else:
            if self.callee_leg is not None:
                events += self.bye_leg(self.callee_leg, now)
            events += self.bye_caller(now)
            if self.state is CallState.ANSWERED:
                self.front.count("answered")
                log.info("call ended", call_id=self.id, answered=True,
                         seconds=round(now - self.answered_at, 1),
                         billing_group=self.identity.billing_group or None)
        return events + self.forget(event, now)

    def forget(self, event: CallEvent, now: float | None = None) -> list[CallOutput]:
        """The call is over: let go of what it holds, without a word to anyone on SIP
        (what had to be said, :meth:`close` said); the media service is told to close
        the call's endpoints."""
        if self.state is CallState.ENDED:
            return []
        self.move(event)
        front = self.front
        if self.ivr is not None:
            self.ivr.gone()
            self.ivr = None
        self.timers.clear()
        if self.parked:  # the caller hung up while parked
            front.unpark(self.parked)
            self.parked = ""
        front.queues.call_gone(self, now)
        front.forget(self)
        for ext in self.members:
            front.off_call(ext)
        self.members = ()
        if self.trunk_in:
            front.free_channel(self.trunk_in)
            self.trunk_in = ""
        for leg in self.legs:
            self.release_leg(leg)
        for party in (self.callee_leg, self.caller_leg):
            if party is not None:
                self.release_leg(party)
                front.untrack_leg(party)
        # Break the Call -> Leg -> Call cycles: an ended call is freed by reference
        # counting, as soon as its last transaction ends, not by the cyclic
        # collector (whose passes over a busy engine's heap cost more than calls).
        self.legs = []
        self.callee_leg = self.caller_leg = self.screening = None
        self.transfer = None
        anchor = self._anchor
        return [StopMedia(self.key)] if anchor is not None and anchor.open else []
