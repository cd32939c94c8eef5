"""Asking an answered leg before it takes the call: rebound and confirm.

Two modes, one mechanism (a :class:`Screening` on the call, its ``screen``
timer, the media service's report of the key, ``BridgeMedia.screen``):

* **rebound** (``External.rebound``: a user's calls forwarded to its mobile):
  the answered leg hears who calls and accepts with 1; the caller hears hold
  music meanwhile (183 with our SDP). The leg is alone in its step, whose
  no-answer timer stops; no 1 within ``REBOUND_SECONDS``, another key or a
  hang-up is a refusal: the step's outcome is *failed*.
* **confirm** (``External.confirm``, a user's ``confirm_external_answer``):
  the answered leg hears "press 1 to take the call" while the step's other
  legs ring on and its no-answer timer runs; the caller is not answered and
  hears what it heard (no hold music). No 1 within ``CONFIRM_SECONDS``,
  another key or a hang-up releases that leg only (BYE, its trunk channel,
  the endpoint facing the callees), and when no leg is left ringing the
  step's outcome is *no answer*. Another leg answering meanwhile takes the
  call.

Only an anchored leg is asked (the engine plays and reads keys on its
endpoint), one at a time (one endpoint faces the callees), and never in a
transfer (the transferee already hears hold music from that endpoint).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from engine.calls import rules
from engine.calls.events import CallOutput, ScreenMode
from engine.calls.headers import to_caller
from engine.calls.states import LegEvent
from engine.sip.message import Request, Response, make_response
from engine.sip.transaction import TxKey
from routing import CONFIRM_SECONDS, REBOUND_SECONDS, External

if TYPE_CHECKING:
    from engine.calls.call import Call
    from engine.calls.leg import Leg

__all__ = ["Screening", "screen", "screen_mode"]

log = structlog.get_logger("switchboard.call")


def screen_mode(call: Call, leg: Leg) -> ScreenMode:
    """How an answer on ``leg`` is screened before it takes the call: "rebound",
    "confirm", "" not at all (see the module docstring)."""
    target = leg.target
    if leg.offer is None or call.transfer is not None or not isinstance(target, External):
        return ""
    if target.rebound:
        return "rebound"
    return "confirm" if target.confirm else ""


def screen(call: Call, leg: Leg, resp: Response, now: float) -> list[CallOutput]:
    """``leg`` answered (``resp``) and is to be asked: rebound or confirm."""
    screening = call.screening = Screening(call, leg, screen_mode(call, leg))
    if screening.mode == "confirm":
        return screening.ask(resp, now)
    return screening.announce(resp, now)


@dataclass(slots=True, eq=False)
class Screening:
    """``leg`` of ``call`` answered and is being asked (``mode``)."""

    call: Call
    leg: Leg
    mode: ScreenMode

    # -- starting ----------------------------------------------------------------
    def announce(self, resp: Response, now: float) -> list[CallOutput]:
        """Rebound: the leg hears who calls (``BridgeMedia.announce``) and accepts
        with 1; the caller hears hold music meanwhile (183 with our SDP)."""
        call, leg = self.call, self.leg
        answer = call.anchored_answer(leg, resp.body)
        if answer is None:  # cannot screen without media: the answer accepts
            call.screening = None
            return call.connect(leg, resp.body, resp.get("content-type"), now)
        call.disarm("no_answer")
        call.arm("screen", now + REBOUND_SECONDS)
        log.info("rebound screening", call_id=call.id, leg=leg.label)
        return call.bridge() + call.early_media(answer, now)

    def ask(self, resp: Response, now: float) -> list[CallOutput]:
        """Confirm: the leg hears "press 1 to take the call" while the step goes on:
        its other legs ring, its no-answer timer runs, and the caller is not
        answered: it hears what it heard (its own ringback after a 180, a ring
        group's music). Only a caller that already had our early media (a 183 with
        SDP, from a carrier's ringback) hears a ringback tone from us, since
        nothing is relayed to it now."""
        call, leg = self.call, self.leg
        answered = call.callee_answer(leg, resp.body, "callee answer unusable for confirmation")
        refused = None if answered is None else call.anchor.can_connect(answered[1].codec,
                                                                        call.local.host)
        if refused is not None:
            log.warning("caller offer has not the callee's codec", call_id=call.id,
                        codec=answered[1].codec if answered else "", reason=refused.reason)
        if answered is None or refused is not None:
            # Cannot ask without media (or could not connect after a 1, the engine
            # relaying and not transcoding): the answer takes the call, as without
            # confirmation.
            call.screening = None
            return call.connect(leg, resp.body, resp.get("content-type"), now)
        leg.early = answered[0]
        call.anchor.ask(answered[1], leg.offer)
        call.arm("screen", now + CONFIRM_SECONDS)
        log.info("confirm asking", call_id=call.id, leg=leg.label, seconds=CONFIRM_SECONDS)
        events = call.bridge()
        if call.early_sent:
            return events
        # The leg answered before anything rang: the caller is told it rings now.
        call.early_sent = True
        return events + call.respond_caller(to_caller(call.invite, 180, call.tag), now)

    # -- what the media service hears ----------------------------------------------
    def media(self) -> tuple[ScreenMode, str, str]:
        """(mode, what to announce, in which language) for ``BridgeMedia``. A confirm
        leg is not told who calls: its phone shows the caller's number already, and
        reading it would take most of the seconds it has."""
        call = self.call
        step = call.plan.steps[call.step] if call.step >= 0 else None
        language = rules.prompt_language(call.front.directory, self.leg.target, step)
        announce = call.facts.caller if self.mode == "rebound" else ""
        return self.mode, announce, language

    # -- how it ends -------------------------------------------------------------
    def on_key(self, accepted: bool, now: float) -> list[CallOutput]:
        """The leg's key: 1 accepts (it takes the call), anything else refuses."""
        call, leg = self.call, self.leg
        if not accepted:
            log.info(f"{self.mode} refused", call_id=call.id)
            return self.refused(now)
        self._stop()
        log.info(f"{self.mode} accepted", call_id=call.id, leg=leg.label)
        return call.connect(leg, b"", "application/sdp", now)

    def expired(self, now: float) -> list[CallOutput]:
        """No key in time: refused."""
        call = self.call
        if self.mode == "confirm":
            log.info("confirm: no key in time", call_id=call.id, leg=self.leg.label,
                     seconds=CONFIRM_SECONDS)
        else:
            log.info("rebound not accepted in time", call_id=call.id)
        return self.refused(now)

    def far_end_hung_up(self, req: Request, key: TxKey, now: float) -> list[CallOutput]:
        """The far end hung up on the question (its BYE, already checked against its
        dialog): a refusal."""
        log.info(f"{self.mode} refused: the far end hung up", call_id=self.call.id,
                 leg=self.leg.label)
        events = self.call.respond(key, make_response(req, 200), now)
        self.leg.move(LegEvent.BYE)
        return events + self.refused(now)

    def refused(self, now: float) -> list[CallOutput]:
        """The leg refused, said nothing in time or hung up: BYE, its trunk channel
        freed. A rebound leg was alone in its step: *failed*. A confirm leg is as if
        it had not answered: the other legs ring on, and when none is left the
        step's outcome is *no answer*."""
        call, leg = self.call, self.leg
        self._stop()
        confirm = self.mode == "confirm"
        events = call.bye_leg(leg, now)  # it is done (or hung up: done already)
        leg.status = 487 if confirm else 603
        call.release_leg(leg)
        if confirm:
            events += self._free_callee_side()
            log.info("confirm: leg released", call_id=call.id, leg=leg.label,
                     ringing=sum(other.pending for other in call.legs),
                     channels_in_use=call.front.channels_in_use())
        if any(other.pending for other in call.legs):
            return events
        return events + call.step_outcome("no_answer" if confirm else "failed", now)

    def displaced(self, by: Leg, now: float) -> list[CallOutput]:
        """Another leg answered while this one was asked: that leg takes the call and
        this one gets a BYE."""
        log.info("answered while another leg was asked: it takes the call",
                 call_id=self.call.id, leg=by.label, asked=self.leg.label)
        self._stop()
        return self.call.bye_leg(self.leg, now)

    def release(self, now: float) -> list[CallOutput]:
        """The step ends (no answer, the caller cancelled, the call ends) while the leg
        is asked: it gets a BYE; a confirm leg is as if it had not answered."""
        self._stop()
        events = self.call.bye_leg(self.leg, now)
        if self.mode == "confirm":
            self.leg.status = 487
            events += self._free_callee_side()
        return events

    def _stop(self) -> None:
        self.call.screening = None
        self.call.disarm("screen")

    def _free_callee_side(self) -> list[CallOutput]:
        """A confirm leg is gone before taking the call: the endpoint facing the
        callees stops asking and waits for the next leg's answer."""
        self.call.anchor.callee.forget()
        return self.call.bridge()
