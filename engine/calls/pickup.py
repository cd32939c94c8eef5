"""Call pickup: a phone takes a call ringing another phone (directed: ``**102``,
or an INVITE with Replaces naming that ringing dialog, RFC 3891; group: ``*8``);
and its sibling, retrieving a parked call (``*1701`` or ``701`` dialled).

The picker's INVITE becomes the answering leg of the call it picks up: the call
answers its caller with the picker's media (through the engine's anchor), the
phones still ringing are cancelled with ``Reason: ... "Call completed
elsewhere"`` and the picker gets our 200. The picker's own call object ends
silently (``CallEvent.PICKED``): its INVITE's dialog now belongs to the picked
call, where a BYE from either side ends both as in any answered call.

Why the engine's anchor is needed: both the caller's INVITE and the picker's
carry an SDP offer; only an endpoint in the middle can answer both without a
re-INVITE. The picker is answered from the anchor's callee-side port, in the
codec its offer prefers among those the engine offered the ringing phone, so
the caller is relayed without transcoding. A call whose media is not anchored
(``serve --media direct``) cannot be picked up: 488 with a Warning.

Which call: the oldest still ringing (by the call's start) among the
extensions routing allowed (:class:`routing.Pickup`); calls being transferred,
screened or queued (a queue's caller is already answered) are not taken.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from engine.calls.headers import to_caller
from engine.calls.leg import Leg
from engine.calls.states import CallEvent, CallState, LegEvent
from engine.sip.dialog import Dialog
from engine.sip.message import ParseError, Request, warning_value
from media import sdp
from routing import Device, Pickup, Unpark

if TYPE_CHECKING:
    from engine.calls.call import Call
    from engine.calls.events import CallOutput

__all__ = ["replaces_target", "start_pickup", "start_unpark"]

log = structlog.get_logger("switchboard.call")


def ringing_leg(picker: Call, extensions: tuple[str, ...], call_id: str = "") -> Leg | None:
    """The leg ringing one of ``extensions`` in the oldest call that may be picked
    up (``call_id``: that leg only, a Replaces)."""
    wanted = frozenset(extensions)
    best: Leg | None = None
    for leg in picker.front.ringing_legs():
        call = leg.call
        if call is picker or leg.extension not in wanted or call.state is not CallState.ROUTING \
                or leg not in call.legs or call.transfer is not None \
                or call.screening is not None or call.queued is not None:
            continue
        if call_id and leg.invite.call_id != call_id:
            continue
        if best is None or call.started < best.call.started:
            best = leg
    return best


def replaces_target(picker_invite: Request, legs: list[Leg]) -> Leg | None:
    """The ringing leg an INVITE's Replaces (RFC 3891 s6.1) names: its Call-ID, and
    our tag of that dialog as one of to-tag/from-tag (phones reading a dialog-info
    document differ on which is which; the Call-ID is ours and random anyway)."""
    value = picker_invite.get("replaces")
    if not value:
        return None
    parts = [p.strip() for p in value.split(";")]
    call_id = parts[0]
    tags = {k.strip().lower(): v.strip() for k, _, v in (p.partition("=") for p in parts[1:])}
    for leg in legs:
        if leg.invite.call_id != call_id or not leg.pending:
            continue
        ours = leg.invite.from_.tag or ""
        if ours and ours in (tags.get("to-tag"), tags.get("from-tag")):
            return leg
    return None


def start_pickup(picker: Call, step: Pickup, now: float,
                 replaced_call_id: str = "") -> list[CallOutput]:
    """Run a :class:`routing.Pickup` step in the picker's call."""
    if picker.transfer is not None:  # a code is dialled, not transferred to
        return picker.transfer.failed(403, now)
    leg = ringing_leg(picker, step.extensions, replaced_call_id)
    who = ", ".join(step.extensions)
    if leg is None and step.directed and len(step.extensions) == 1 and not replaced_call_id:
        holder = picker.front.held_elsewhere("ringing", step.extensions[0])
        if holder:  # see start_unpark
            picker.front.count_pickup("elsewhere")
            return picker._unanswered(480, now, [("Warning", warning_value(
                f"the call ringing {who} is held by node {holder}; this node cannot "
                "pick it up"))], reason="Held By Another Node")
    if leg is None:
        picker.front.count_pickup("nothing")
        return picker._unanswered(404, now, [("Warning", warning_value(
            f"no call is ringing {who}" if step.extensions else "no one to pick up for"))],
            reason="Nothing To Pick Up")
    call = leg.call
    if leg.offer is None or not call.anchor.open or not call.anchor.callee_port:
        picker.front.count_pickup("refused")
        return picker._unanswered(488, now, [("Warning", warning_value(
            "call pickup needs the call's media through the engine (serve --media relay)"))])
    # The picker's offer answered from the callee-side port, in a codec the ringing
    # phone was offered (so the caller is relayed as it would have been).
    offered = [f.name for f in leg.offer.stream(0).formats if f.name.lower()
               != "telephone-event"] if leg.offer.media else []
    answered = _answer_picker(
        picker, call, offered, now, "call pickup needs an SDP offer in the INVITE (late "
        "offer is not supported)", "the engine does not transcode", count_refused=True)
    if isinstance(answered, list):
        return answered
    _, ours = answered
    log.info("picked up", call_id=call.id, picker=step.picker, leg=leg.label,
             by=picker.id, directed=step.directed)
    # The picker's call ends without a word: its INVITE is answered by the picked call.
    # Our answer is the leg's "offer" and the picker's offer its "answer": the roles
    # connect() reads (the codec: the picker's first that we answered with).
    mine, events = _adopt(picker, call, step.picker, f"{step.picker} pickup", ours, now)
    call.legs.append(mine)
    events += call.connect(mine, picker.invite.body, "application/sdp", now)
    picker.front.count_pickup("directed" if step.directed else "group")
    return events


def _answer_picker(picker: Call, call: Call, codecs: list[str], now: float, no_offer: str,
                   no_codec: str, count_refused: bool = False,
                   ) -> tuple[sdp.SessionDescription, sdp.SessionDescription] | list[CallOutput]:
    """The picker's SDP offer answered from ``call``'s callee-side port in one of
    ``codecs`` (those the caller can be relayed in without transcoding): (its offer,
    our answer); or the refusal sent to the picker (488 unreadable or no common
    codec, 480 ``no_offer`` without SDP), whose picker's call then ends. A pickup and
    a park retrieval take a call the same way, so they answer the same way."""
    try:
        theirs = sdp.parse_sdp(picker.invite.body) if picker.invite.body else None
    except (sdp.SdpError, ParseError) as exc:
        return picker._unanswered(488, now, [("Warning", warning_value(
            f"unreadable SDP offer: {exc}"))])
    if theirs is None:
        return picker._unanswered(480, now, [("Warning", warning_value(no_offer))])
    session, version = call.anchor.callee.next_origin()
    ours = sdp.answer(theirs, codecs, address=picker.local.host, port=call.anchor.callee_port,
                      session_id=session, session_version=version)
    if isinstance(ours, sdp.AnswerRefused):
        if count_refused:
            picker.front.count_pickup("refused")
        return picker._unanswered(488, now, [("Warning", warning_value(
            f"{ours.reason} ({no_codec})"))])
    return theirs, ours


def _adopt(picker: Call, call: Call, extension: str, label: str,
           ours: sdp.SessionDescription, now: float) -> tuple[Leg, list[CallOutput]]:
    """The picker's INVITE as a leg of ``call``, answered 200 with ``ours``; the
    picker's own call ends silently."""
    events = picker.forget(CallEvent.PICKED, now)
    contact = picker.local.contact(picker.transport)
    mine = Leg(call=call, target=Device(extension), label=label, invite=picker.invite,
               dest=picker.source, transport=picker.transport, key=picker.invite_key)
    mine.offer = ours
    mine.ack = b""  # its 2xx ACK is the picker's, not ours to send
    mine.dialog = Dialog.uas(picker.invite, picker.tag, contact, confirmed=True)
    picker.front.track_picker(mine)
    mine.move(LegEvent.ANSWER)  # RFC 3261 s13.3.1.4: our 2xx to the picker below
    ok = to_caller(picker.invite, 200, picker.tag, [
        ("Contact", contact), ("Content-Type", "application/sdp")], ours.to_bytes())
    return mine, events + call.adopt_ok(mine, ok, now)


def start_unpark(picker: Call, step: Unpark, now: float) -> list[CallOutput]:
    """Retrieve the call parked on ``step.orbit``: the retriever's INVITE becomes its
    callee leg, answered from the engine's callee-side port in the parked caller's
    codec (relayed without transcoding); the hold music stops."""
    front = picker.front
    call = front.parked_call(step.orbit)
    if call is None or call is picker:
        # Parked on another node (its busy lamp says so): a call is held by the node
        # that took its INVITE, and this one cannot reach its media. A 480 naming
        # the holder, not the 404 of an empty orbit: the phone's user learns the
        # call is there, and an edge that hashes the next attempt's Call-ID may
        # land it on the holder.
        holder = front.held_elsewhere("parked", step.orbit)
        if holder and call is None:
            return picker._unanswered(480, now, [("Warning", warning_value(
                f"the call parked on {step.orbit} is held by node {holder}; this node "
                "cannot retrieve it"))], reason="Held By Another Node")
        return picker._unanswered(404, now, [("Warning", warning_value(
            f"no call is parked on {step.orbit}"))], reason="Nothing Parked")
    media = call.anchor.caller.media
    if media is None or not call.anchor.callee_port:
        return picker._unanswered(488, now, [("Warning", warning_value(
            "the parked call has no media through the engine"))])
    answered = _answer_picker(
        picker, call, [media.codec], now,
        "retrieving a parked call needs an SDP offer in the INVITE",
        f"the parked call is in {media.codec}; the engine does not transcode")
    if isinstance(answered, list):
        return answered
    theirs, ours = answered
    extension = picker.facts.caller
    log.info("unparked", call_id=call.id, orbit=step.orbit, by=extension)
    told = call.let_parker_go(now)  # retrieved while the parker hears the orbit
    front.unpark(step.orbit)
    call.parked = call.parker = ""
    call.disarm("park")
    mine, events = _adopt(picker, call, extension, f"{extension} unpark {step.orbit}",
                          ours, now)
    call.callee_leg = mine
    call.anchor.take_side(False, sdp.negotiated(theirs, ours), ours)
    call.join(extension)
    return told + events + call.bridge()
