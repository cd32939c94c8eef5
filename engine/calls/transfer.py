"""Call transfer: REFER (RFC 3515, RFC 5589), blind or attended (RFC 3891 Replaces).

A user's phone in an answered, anchored call sends REFER: the answered callee
transfers the caller, or the calling party transfers the callee. The party
that stays (the *transferee*) keeps its dialog and its RTP port on the engine
and hears hold music; the *transferor* is told how it goes with message/sipfrag
NOTIFYs (RFC 3515 s2.4.5) and may hang up at any time.

* **Blind**: the target's plan runs as a call from the transferor (its
  rights), in the transferee's call, offered only the transferee's codec, so
  whoever answers is relayed to the transferee without a re-INVITE.
* **Attended** (Refer-To with Replaces naming the transferor's consultation
  call, RFC 5589 s7): the consulted target's leg is re-INVITEd to the
  transferee's call, on the port facing the transferor, in the session the
  target knows; its answer joins the two and the consultation call ends.

A :class:`Transfer` is a state machine (``engine.calls.states.TRANSFER``):
referred, target ringing, moving (attended), then connected, voicemail,
failed or abandoned. It acts on the transferee's call (``Transfer.call``).
A REFER the engine does not carry out is refused with a Warning and never
passed to the other party: a carrier could dial the Refer-To number with
rights the transferor lacks.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import structlog

from engine.calls import headers as build
from engine.calls import rules
from engine.calls.anchor import DECODABLE
from engine.calls.events import CallOutput, StartVoicemail
from engine.calls.headers import COMPLETED_ELSEWHERE
from engine.calls.rules import PlanText
from engine.calls.states import (
    TRANSFER,
    CallEvent,
    CallState,
    LegState,
    TransferEvent,
    TransferState,
)
from engine.sip.message import (
    URI,
    ParseError,
    Request,
    Response,
    make_response,
    parse_address,
    short_text,
    warning_value,
)
from engine.sip.message.core import REASONS
from engine.sip.transaction import Send, TxKey
from media import sdp
from routing import (
    Busy,
    CallFacts,
    Deflect,
    Device,
    External,
    MailboxAccess,
    Park,
    Reject,
    Step,
    Voicemail,
    plan,
    router_for,
)
from routing.router import RING_BACK_SECONDS

if TYPE_CHECKING:
    from engine.calls.call import Call
    from engine.calls.leg import Leg

__all__ = ["PARK_TELL_SECONDS", "Transfer", "on_refer"]

# How long the parker stays on the line to hear "parked on 7 0 1" (the longest
# orbit said in the slower language takes under 3 s; tests/test_calls_pickup.py
# checks the committed prompts against it), then the engine sends its BYE.
PARK_TELL_SECONDS = 4.0

log = structlog.get_logger("switchboard.call")


def refuse(call: Call, req: Request, key: TxKey, now: float, status: int,
           why: str) -> list[CallOutput]:
    """A REFER the engine does not carry out: ``status`` with a Warning saying
    ``why``, and the call goes on."""
    log.info("transfer refused", call_id=call.id, reason=why,
             refer_to=short_text(req.get("refer-to") or ""))
    call.front.count_transfer("refused")
    return call.respond(key, make_response(req, status, None, [
        ("Warning", warning_value(f"{why}; the call goes on"))]), now)


def on_refer(call: Call, leg: Leg | None, req: Request, key: TxKey, now: float) -> list[CallOutput]:
    """A REFER in ``call`` from a user's phone: ``leg``, the answered callee,
    transfers the caller; None, the calling party transfers the callee. Blind:
    202, NOTIFY 100, hold music to the transferee and the target's plan; with
    Replaces: attended."""
    anchor = call.anchor
    directory = call.front.directory
    if call.transfer is not None:
        return refuse(call, req, key, now, 491, "a transfer is in progress")
    media = anchor.side(leg is not None).media if anchor.relaying else None
    callee = call.callee_leg
    if media is None or not anchor.open or not anchor.caller_port \
            or not anchor.callee_port or directory is None \
            or call.state is not CallState.ANSWERED or callee is None \
            or callee.dialog is None or call.engine_step is not None:
        return refuse(call, req, key, now, 501, (
            "call transfer needs the call's media through the engine (serve --media relay)"))
    if leg is not None:
        user = leg.extension
    else:
        user = call.facts.caller if call.facts.source == "phone" else ""
    if not user:
        return refuse(call, req, key, now, 403, "only a user's phone can transfer a call")
    try:
        refer_to = parse_address(req.get("refer-to") or "", "Refer-To").uri
    except ParseError as exc:
        return refuse(call, req, key, now, 400, exc.reason)
    if refer_to.headers:  # Replaces=... (an attended transfer)
        return _attended(call, leg, user, req, key, refer_to, now)
    if not refer_to.user:
        return refuse(call, req, key, now, 400, "Refer-To names no number")
    transferor = directory.user(user)
    transfer = Transfer(call, leg, refer_to.user, media.codec)
    return transfer.begin(req, key, user, transferor.name if transferor else "", now)


def _attended(call: Call, leg: Leg | None, user: str, req: Request, key: TxKey,
              refer_to: URI, now: float) -> list[CallOutput]:
    """An attended transfer: the transferor (the answered callee ``leg``, or with
    None the calling party) consulted the target in a call of its own and now
    asks that the other party replace it there (Refer-To with Replaces naming
    that call, RFC 5589 s7)."""
    codec = call.anchor.side(leg is not None).media
    assert codec is not None
    replaces = build.parse_replaces(refer_to.headers)
    if replaces is None:
        return refuse(call, req, key, now, 400, "Refer-To carries no single readable Replaces")
    call_id, to_tag, from_tag = replaces
    front = call.front
    other = front.find_call(call_id, to_tag) or front.find_call(call_id, from_tag)
    target = other.callee_leg if other is not None else None
    if other is None or other is call or target is None or target.dialog is None:
        return refuse(call, req, key, now, 481, "Replaces names no call of the transferor's")
    theirs = other.anchor
    if other.state is not CallState.ANSWERED or other.transfer is not None \
            or other.facts.source != "phone" or other.facts.caller != user \
            or not theirs.relaying or not theirs.open or target.offer is None:
        return refuse(call, req, key, now, 403, (
            "Replaces must name an answered call the transferring user made, with "
            "its media through the engine"))
    # An attended transfer starts by moving the consulted target.
    transfer = Transfer(call, leg, target.label, codec.codec, consultation=other,
                        state=TransferState.MOVING)
    return transfer.move_target(req, key, user, target, now)


@dataclass(slots=True, eq=False)
class Transfer:
    """One transfer of ``call`` (the transferee's call; see the module docstring)."""

    call: Call
    transferor: Leg | None  # None: the calling party transfers the callee
    target: str
    codec: str  # the transferee's codec: the only one offered to the target
    # An attended transfer (Refer-To with Replaces, RFC 3891): the transferor's
    # consultation call, whose callee leg is moved to this call by a re-INVITE.
    consultation: Call | None = None
    reinvite: sdp.SessionDescription | None = None  # our offer in that re-INVITE
    ack: Send | None = None  # our ACK of its 2xx, sent again for a retransmitted 2xx
    state: TransferState = TransferState.REFERRED
    # What the call is told when the target's answer settles it, and the reason
    # logged when that answer is unusable (an IVR choice says its own).
    SETTLED: ClassVar[CallEvent] = CallEvent.TRANSFER_SETTLED
    UNUSABLE: ClassVar[str] = "transfer target's answer unusable"

    def move(self, event: TransferEvent) -> None:
        self.state = TRANSFER.move(self.state, event)

    @property
    def by_caller(self) -> bool:
        """The calling party transfers (the callee is the transferee)."""
        return self.transferor is None

    @property
    def transferee(self) -> str:
        """Who waits, with hold music when its codec plays: "caller" or "callee"."""
        return "callee" if self.by_caller else "caller"

    def is_transferor(self, leg: Leg | None) -> bool:
        """Whether a request on ``leg`` (None: the caller's own dialog) comes from the
        transferor."""
        return leg is self.transferor

    # -- blind -------------------------------------------------------------------
    def begin(self, req: Request, key: TxKey, extension: str, name: str,
              now: float) -> list[CallOutput]:
        """202 and NOTIFY 100 to the transferor, hold music to the transferee, and the
        target's plan as a call from the transferring user ``extension``."""
        call = self.call
        front = call.front
        directory = front.directory
        assert directory is not None
        wall = front.wall_clock()
        facts = CallFacts(caller=extension, callee=self.target, source="phone",
                          at=dt.datetime.fromtimestamp(wall, dt.UTC), caller_name=name)
        the_plan = plan(facts, directory, front.live_state(directory, wall))
        log.info("transfer", call_id=call.id, transferor=extension, target=self.target,
                 by="caller" if self.by_caller else "callee", plan=PlanText(the_plan))
        call.transfer = self
        events = call.respond(key, make_response(req, 202), now)
        events += self.notify(100, now)
        call.plan = the_plan
        call.move(CallEvent.REFER)
        call.legs = []
        # Whoever rang earlier in this call may be the target now; the transferring
        # user's own phones are not rung.
        call.rung = {b.contact for b in front.registrar.lookup(extension, wall)}
        return events + call.bridge() + call.run_step(0, now)

    def offer_for(self, target: Device | External,
                  transport: str) -> sdp.SessionDescription | None:
        """The offer to a target reached over ``transport``: the port facing the
        transferor, the transferee's codec only, sendrecv whoever held the call,
        SRTP by the rule of every leg (``rules.leg_srtp``: an SRTP user's phone over
        TLS). A target taking the caller's place (a transfer by the caller) is
        offered the caller-side endpoint."""
        call = self.call
        if self.by_caller:
            return call.anchor.caller_side_offer(
                call.local.host, self.codec,
                srtp=rules.leg_srtp(call.front.directory, target, transport))
        return call.callee_offer(target, call.anchor.music_codec or self.codec, sendrecv=True,
                                 transport=transport)

    def target_ringing(self) -> None:
        self.move(TransferEvent.TARGET_RINGING)

    def run_step(self, step: Step, now: float) -> list[CallOutput]:
        """A step of the target's plan the engine does not ring: a message is left
        for the target's user; anything else fails the transfer (a 302 cannot move
        an answered call, nobody's mailbox menu is for a transferee)."""
        if isinstance(step, Voicemail):
            return self.to_voicemail(step, now)
        if isinstance(step, Busy):
            return self.failed(486, now)
        if isinstance(step, Reject):
            return self.failed(step.status, now)
        assert isinstance(step, Deflect | MailboxAccess)
        return self.failed(403, now)

    def target_answered(self, leg: Leg, body: bytes, now: float) -> list[CallOutput]:
        """The target answered: relay it to the transferee (same port, same codec: no
        re-INVITE), the other legs cancelled, then :meth:`connected` (a transfer tells
        its transferor; an IVR choice has none). One path for both, so a transfer's
        target and an IVR caller's choice are joined the same way."""
        call = self.call
        answered = call.callee_answer(leg, body, self.UNUSABLE)
        if answered is None:
            hung_up = call.bye_leg(leg, now)
            leg.status = 488
            if any(other.pending for other in call.legs):
                return hung_up
            return hung_up + call.step_outcome("failed", now)
        theirs, media = answered
        self.move(TransferEvent.TARGET_ANSWERED)
        call.transfer = None
        call.move(self.SETTLED)
        call.disarm("no_answer")
        events: list[CallOutput] = []
        for other in call.legs:
            if other is not leg:
                events += call.cancel_leg(other, now, COMPLETED_ELSEWHERE)
        events += self.connected(leg, now)
        if isinstance(leg.target, Device):
            call.join(leg.target.extension)
        if self.by_caller:  # the target takes the caller's place
            call.caller_leg = leg
            call.legs = [x for x in call.legs if x is not leg]
            call.anchor.take_side(True, media, leg.offer, offer=theirs)
        else:
            call.callee_leg = leg
            call.anchor.take_side(False, media, leg.offer)
        return events + call.bridge()

    def connected(self, leg: Leg, now: float) -> list[CallOutput]:
        """The target's answer is taken: NOTIFY 200 and BYE to the transferor."""
        log.info("transfer connected", call_id=self.call.id, leg=leg.label)
        self.call.front.count_transfer("connected")
        return self._let_transferor_go(200, now)

    def to_voicemail(self, step: Voicemail, now: float) -> list[CallOutput]:
        """The target's plan leaves a message: the transferee, already answered, gets
        the greeting and the beep on its own endpoint (the caller's, or the callee's
        in a transfer by the caller); the transferor is done."""
        call = self.call
        media = call.anchor.side(not self.by_caller).media
        assert media is not None
        self.move(TransferEvent.TO_VOICEMAIL)
        call.transfer = None
        call.move(CallEvent.TRANSFER_SETTLED)
        call.engine_step = step
        answered = call.callee_leg.target if call.callee_leg is not None else None
        start = StartVoicemail(
            call.key, call.id, media, step.box, step.greeting,
            rules.voicemail_seconds(call.front.directory, step.box),
            rules.party_name(call.facts, answered) if self.by_caller else call.facts.caller,
            callee_side=self.by_caller)
        log.info("transfer to voicemail", call_id=call.id, box=step.box)
        call.front.count_transfer("voicemail")
        return [start, *self._let_transferor_go(200, now)]

    def failed(self, status: int, now: float) -> list[CallOutput]:
        """The target's plan ended without an answer (or the target refused to move):
        back to the transferor when it is still on the call (its phone shows the
        failure and can resume), else the call ends."""
        call = self.call
        self.move(TransferEvent.FAILED)
        call.transfer = None
        if call.state is CallState.ROUTING:  # an attended transfer never left ANSWERED
            call.move(CallEvent.TRANSFER_SETTLED)
        events = call.cancel_legs(now, None)
        events += self.notify(status, now)
        if self.transferor_here:
            log.info("transfer failed; back to the transferor", call_id=call.id,
                     status=status)
            call.front.count_transfer("failed")
            return events + call.bridge()
        log.info("transfer failed; the transferor had hung up, the call ends",
                 call_id=call.id, status=status)
        call.front.count_transfer("dropped")
        return events + call.close(CallEvent.TRANSFER_DROPPED, now)

    def abandon(self, now: float) -> list[CallOutput]:
        """The transferee's call ends while its transfer runs: cancel the target's
        legs, and tell the transferor (487)."""
        call = self.call
        self.move(TransferEvent.TRANSFEREE_GONE)
        call.transfer = None
        call.front.count_transfer("dropped")
        return call.cancel_legs(now, None) + self.notify(487, now)

    # -- attended ----------------------------------------------------------------
    def move_target(self, req: Request, key: TxKey, user: str, target: Leg,
                    now: float) -> list[CallOutput]:
        """The consulted target's leg is re-INVITEd to this call's port on the
        transferor's side, with the transferee's codec; its answer (:meth:`on_moved`)
        joins the two."""
        call, other = self.call, self.consultation
        assert other is not None and target.dialog is not None
        local = call.local
        call.transfer = self
        # Our new offer to the target: this call's port on the transferor's side, the
        # transferee's codec only, in the session the target knows (RFC 3264 s8:
        # same o=, the version one up).
        offer = self.offer_for(target.target, target.transport)
        assert offer is not None
        session, version = other.anchor.callee.next_origin()
        offer = sdp.with_origin(offer, session, version, local.host)
        self.reinvite = offer
        reinvite = target.dialog.new_request(
            "INVITE", via_host=local.host, via_port=local.port_for(target.transport),
            transport=target.transport.upper(), body=offer.to_bytes(),
            content_type="application/sdp")
        move_key, events = call.send(reinvite, target.dest, target.transport,
                                                      now)
        call.front.track_move(move_key, self)
        log.info("attended transfer", call_id=call.id, transferor=user, target=target.label,
                 consultation=other.id, by="caller" if self.by_caller else "callee")
        events = call.respond(key, make_response(req, 202), now) + events
        events += self.notify(100, now)
        return events + call.bridge()  # hold music to the caller while the target moves

    def on_moved(self, resp: Response, now: float) -> list[CallOutput]:
        """The target's answer to the re-INVITE of an attended transfer."""
        call, other = self.call, self.consultation
        assert other is not None
        if resp.status < 200:
            return []
        if self.ack is not None:  # a retransmitted 2xx: the same ACK (s13.2.2.4)
            return [self.ack]
        target = other.callee_leg
        if self.state is not TransferState.MOVING:
            # The caller hung up while the target was being moved to it: the target
            # now sends its audio to a closed port, so the consultation call ends too.
            if resp.status < 300 and target is not None and target.dialog is not None:
                log.info("attended transfer: the caller left; the consultation call ends",
                         call_id=other.id)
                return [self._ack_move(target, resp), *other.close(CallEvent.REPLACED, now)]
            return []
        if resp.status >= 300 or target is None or target.dialog is None \
                or target.state is LegState.DONE:
            log.info("attended transfer refused by the target", call_id=call.id,
                     status=resp.status)
            return self.failed(resp.status if resp.status >= 300 else 480, now)
        events: list[CallOutput] = [self._ack_move(target, resp)]
        assert self.reinvite is not None
        try:
            theirs = sdp.parse_sdp(resp.body)
            media = sdp.negotiated(self.reinvite, theirs, local="offerer")
        except sdp.SdpError as exc:
            log.warning("attended transfer: the target's answer is unusable", call_id=call.id,
                        error=exc.message)
            return events + self.failed(488, now)
        # The target's leg leaves the consultation call for this one.
        other.callee_leg = None
        other.legs = [x for x in other.legs if x is not target]
        if isinstance(target.target, Device):
            call.join(target.target.extension)
        target.call = call
        self.move(TransferEvent.MOVED)
        call.transfer = None
        # The transferor is told and let go first: in a transfer by the caller, the
        # caller's dialog is still the one to end.
        events += self._let_transferor_go(200, now)
        # Our answers on the target's side go on in the session it knows.
        origin = other.anchor.callee.session, other.anchor.callee.version
        if self.by_caller:  # the target takes the caller's place
            call.caller_leg = target
            call.anchor.take_side(True, media, self.reinvite, offer=theirs, origin=origin)
        else:
            call.callee_leg = target
            call.legs = [target]
            call.anchor.take_side(False, media, self.reinvite, origin=origin)
        log.info("transfer connected", call_id=call.id, leg=target.label, attended=True)
        call.front.count_transfer("connected")
        events += other.close(CallEvent.REPLACED, now)  # the transferor's consultation call
        return events + call.bridge()

    def on_move_timed_out(self, now: float) -> list[CallOutput]:
        """No answer to the re-INVITE of an attended transfer."""
        if self.state is not TransferState.MOVING:
            return []
        return self.failed(408, now)

    def _ack_move(self, target: Leg, resp: Response) -> Send:
        """Our ACK of the target's 2xx to the re-INVITE, kept for a retransmitted 2xx."""
        assert target.dialog is not None
        local = self.call.local
        target.dialog.on_response("INVITE", resp)
        ack = target.dialog.ack(target.dialog.local_cseq, via_host=local.host,
                                via_port=local.port_for(target.transport),
                                transport=target.transport.upper())
        self.ack = Send(ack.to_bytes(), target.dest, target.transport)
        return self.ack

    # -- the transferor ----------------------------------------------------------
    @property
    def transferor_here(self) -> bool:
        """The transferor is still on the call (it may hang up at any time)."""
        if self.transferor is not None:
            return self.transferor.state is not LegState.DONE
        dialog = self.call.caller_dialog
        return dialog is not None and not dialog.terminated

    def transferor_left(self) -> None:
        """The transferor hung up (blind: it need not wait for the outcome): it is
        no longer on the call."""
        call = self.call
        if self.transferor is None:
            call.leave_extension(call.facts.caller)
        else:
            call.leave(self.transferor)

    def park(self, step: Park, now: float) -> list[CallOutput]:
        """The target is the park code: the transferee waits on the first free orbit
        with hold music; the final NOTIFY's phrase names the orbit ("200 Parked on
        701", what a phone showing the sipfrag displays) and the transferor is let
        go. Only the answering side parks (its caller): a calling party's transfer
        to the code fails back to it (403)."""
        call = self.call
        if self.by_caller or self.transferor is None:
            return self.failed(403, now)
        orbit = call.front.free_orbit(step.orbits)
        if orbit is None:
            log.info("park: every orbit taken", call_id=call.id)
            return self.failed(486, now)
        self.move(TransferEvent.PARKED)
        call.transfer = None
        call.move(CallEvent.TRANSFER_SETTLED)
        call.parked, call.parker = orbit, step.parker
        call.front.park(orbit, call)
        call.disarm("no_answer")
        call.arm("park", now + step.ring_back_seconds)
        log.info("parked", call_id=call.id, orbit=orbit, parker=step.parker)
        call.front.count_transfer("parked")
        leg = self.transferor
        callee = call.anchor.callee.media
        if leg is None or leg.state is LegState.DONE or callee is None \
                or callee.codec.upper() not in DECODABLE:
            events = self._let_transferor_go(200, now, f"Parked on {orbit}")
            return events + call.bridge()
        # Desk phones show nothing of the NOTIFY: the parker stays on the line to hear
        # "parked on 7 0 1" from the callee-side endpoint (the caller hears the music,
        # nothing is relayed), then is let go when the "park_told" timer fires.
        call.park_telling = leg
        call.arm("park_told", now + PARK_TELL_SECONDS)
        return self.notify(200, now, f"Parked on {orbit}") + call.bridge()

    @staticmethod
    def ring_back(call: Call, now: float) -> list[CallOutput]:
        """A parked call not retrieved in time: its orbit is freed and the parker's
        phones ring with it, then ``ring_back_to`` (routing's ring-back plan), run as
        a blind transfer whose transferor (the parker, gone) hears nothing: offered
        the callee-side port in the caller's codec, the music playing meanwhile."""
        front = call.front
        directory = front.directory
        media = call.anchor.caller.media
        parker, orbit, old = call.parker, call.parked, call.callee_leg
        if directory is None or media is None or old is None:
            return call.close(CallEvent.TRANSFER_DROPPED, now)
        front.unpark(orbit)
        call.parked = call.parker = ""
        wall = front.wall_clock()
        the_plan = router_for(directory).ring_back(
            call.facts, parker, orbit, RING_BACK_SECONDS, directory.system.park.ring_back_to,
            front.live_state(directory, wall))
        log.info("park ring back", call_id=call.id, orbit=orbit, parker=parker,
                 plan=PlanText(the_plan))
        call.transfer = Transfer(call, old, parker, media.codec)
        call.plan = the_plan
        call.move(CallEvent.RING_BACK)
        call.legs = []
        call.rung = set()
        return call.bridge() + call.run_step(0, now)

    def notify(self, status: int, now: float, phrase: str = "") -> list[CallOutput]:
        """How the transfer goes, as a message/sipfrag NOTIFY (RFC 3515 s2.4.5), in the
        transferor's dialog: its leg's, or the caller's (a transfer by the caller)."""
        call = self.call
        leg = self.transferor
        if leg is not None:
            dialog, dest, transport = leg.dialog, leg.dest, leg.transport
        else:
            dialog, dest, transport = call.caller_dialog, call.source, call.transport
        if dialog is None or dialog.terminated:
            return []
        local = call.local
        final = status >= 200
        notify = dialog.new_request(
            "NOTIFY", via_host=local.host, via_port=local.port_for(transport),
            transport=transport.upper(), headers=[
                ("Event", "refer"),
                ("Subscription-State",
                 "terminated;reason=noresource" if final else "active;expires=60")],
            body=f"SIP/2.0 {status} {phrase or REASONS.get(status, 'Unknown')}\r\n".encode(),
            content_type="message/sipfrag;version=2.0")
        _, events = call.send(notify, dest, transport, now)
        return events

    def _let_transferor_go(self, status: int, now: float, phrase: str = "") -> list[CallOutput]:
        """The final NOTIFY, then BYE the transferor if it is still on the call."""
        call = self.call
        leg = self.transferor
        events = self.notify(status, now, phrase)
        if leg is None:
            if self.transferor_here:
                events += call.bye_caller(now)
                call.leave_extension(call.facts.caller)
        elif leg.state is not LegState.DONE:
            events += call.bye_leg(leg, now)
            call.leave(leg)
        return events
