"""The digital receptionist (IVR): a menu the engine answers, and the caller's choice.

An :class:`~routing.Ivr` step of a plan is run here, on the call's side, sans-I/O:

* **answer**: the call must have the engine's media (``serve --media relay`` and an
  SDP offer): the caller is answered from the endpoint facing it (200, a codec the
  engine plays) and keeps that dialog and port for the rest of the call, whatever
  it chooses. Without it the call is refused (480 with a Warning saying why).
* **the menu** (:class:`IvrSession`, its states in ``engine.calls.states.IVR``):
  the prompt plays (``IvrPlay``); a key interrupts it (``IvrQuiet``). Keys come
  from the media service (RFC 4733 telephone-events on the caller's endpoint)
  or from SIP INFO ``application/dtmf-relay`` in the caller's dialog, both
  through :meth:`IvrSession.on_digit`. A key of ``keys`` chooses at once. With
  ``dial_by_extension`` a digit that starts an extension (a user, a ring group,
  an IVR) waits for the next ones (:data:`INTER_DIGIT_SECONDS` between two; ``#``
  ends early); the extension is chosen when its length is reached, and one
  digit alone that is a key of the menu is that key. Nothing pressed
  ``timeout_seconds`` after the prompt: the prompt again, ``repeat`` more
  times, then ``on_timeout``; a key leading nowhere: ``on_invalid``. The
  session owns one timer of the call, ``ivr``.
* **the choice** (:class:`IvrChoice`): routing plans the destination for the
  same call (``Router.choose``) and the call runs that plan as an answered
  caller's, like the target of a blind transfer with nobody to notify: the
  callees are offered the caller's codec on the endpoint facing them, the
  caller hears hold music while they ring, the first to answer is relayed to
  it; a voicemail step records on the caller's endpoint; another IVR starts on
  the same media; a plan that ends unanswered hangs up (BYE).

A caller sent from menu to menu without pressing anything (``on_timeout`` to
an IVR whose ``on_timeout`` comes back) is hung up after :data:`MAX_MENUS`
menus in one call.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import structlog

from engine.calls import rules
from engine.calls.events import CallOutput, IvrPlay, IvrQuiet, OpenMedia, StartVoicemail
from engine.calls.headers import to_caller
from engine.calls.rules import PlanText
from engine.calls.states import (
    IVR,
    CallEvent,
    CallState,
    IvrEvent,
    IvrState,
    TransferEvent,
)
from engine.calls.transfer import Transfer
from engine.sip.message import Request, make_response, warning_value
from engine.sip.transaction import TxKey
from provisioning.model import Destination
from routing import Ivr, Voicemail, router_for

if TYPE_CHECKING:
    from engine.calls.call import Call
    from engine.calls.leg import Leg

__all__ = ["INTER_DIGIT_SECONDS", "MAX_MENUS", "IvrChoice", "IvrSession", "dtmf_relay_digit",
           "start_ivr"]

log = structlog.get_logger("switchboard.call")

INTER_DIGIT_SECONDS = 3.0
"""Dial by extension: the longest wait for the next digit (then what was typed counts)."""
MAX_MENUS = 10
"""IVR menus one call may enter (a caller bounced between menus that time out)."""
_DTMF = frozenset("0123456789*#ABCD")


def dtmf_relay_digit(body: bytes) -> str | None:
    """The key of a SIP INFO ``application/dtmf-relay`` body (``Signal=5``,
    ``Duration=160`` lines), ``None`` when it names none. ``Signal=10``/``11``
    are ``*``/``#`` as some phones send them."""
    for line in body.decode("utf-8", "replace").splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip().lower() == "signal":
            key = value.strip().upper()
            key = {"10": "*", "11": "#"}.get(key, key)
            return key if len(key) == 1 and key in _DTMF else None
    return None


def start_ivr(call: Call, step: Ivr, now: float) -> list[CallOutput]:
    """Run the IVR step ``step``: answer the caller (first menu of the call), then
    the menu (see the module docstring)."""
    choice = call.transfer
    if choice is not None and not isinstance(choice, IvrChoice):
        # A REFER to an IVR's extension: the transferee is someone's caller already
        # answered by a person; a menu is not what its transferor meant.
        return choice.failed(403, now)
    events: list[CallOutput] = []
    if isinstance(choice, IvrChoice):
        choice.settle()
        events += call.bridge()  # the hold music while the choice ran stops
    call.menus += 1
    if call.menus > MAX_MENUS:
        log.info("ivr: too many menus in one call; hanging up", call_id=call.id,
                 menus=MAX_MENUS)
        call.front.count_ivr("timeout")
        return events + call.close(CallEvent.ENDPOINT_DONE, now)
    if call.state is CallState.ROUTING:  # the first menu: answer the caller
        anchor = call.anchor
        if not (anchor.relaying and anchor.open):
            if call.front.anchor_media and not anchor.open and call._wants_anchor():
                call.waiting_step = call.step
                return [OpenMedia(call.key, bridge=True)]
            return call._unanswered(480, now, [("Warning", warning_value(
                f"IVR {step.name} needs the call's media through the engine (serve --media "
                "relay) and an SDP offer in the INVITE"))])
        result = anchor.endpoint_answer(call.invite.body,
                                        rules.caller_codecs(call.front.directory, call.facts),
                                        call.local.host)
        if isinstance(result, str):
            return call._unanswered(488, now, [("Warning", warning_value(result))])
        anchor.caller.sdp, anchor.caller.media = result
        contact = call.local.contact(call.transport)
        ok = to_caller(call.invite, 200, call.tag, [("Contact", contact),
                                                    ("Content-Type", "application/sdp")],
                       result[0].to_bytes())
        call.move(CallEvent.ANSWER)
        call.answered_at = now
        log.info("ivr answered", call_id=call.id, ivr=step.name, codec=result[1].codec)
        events += call._answer_caller(ok, contact, now)
    session = call.ivr = IvrSession(call, step)
    return events + session.start(now)


@dataclass(slots=True, eq=False)
class IvrSession:
    """One menu of ``call``: its state (``engine.calls.states.IVR``), the digits typed,
    the plays of its prompt, and the call's ``ivr`` timer."""

    call: Call
    step: Ivr
    state: IvrState = IvrState.PLAYING
    plays: int = 0
    generation: int = 0  # of the IvrPlay running: a late "prompt done" of an older one is stale
    digits: str = ""
    prefixes: frozenset[str] = field(default_factory=frozenset)

    def move(self, event: IvrEvent) -> None:
        self.state = IVR.move(self.state, event)

    def start(self, now: float) -> list[CallOutput]:
        directory = self.call.front.directory
        if self.step.dial_by_extension and directory is not None:
            self.prefixes = router_for(directory).extension_prefixes()
        self.call.front.count_ivr("")
        self.call.menu_language = self.step.language
        log.info("ivr menu", call_id=self.call.id, ivr=self.step.name)
        return self._play()

    def _play(self) -> list[CallOutput]:
        call = self.call
        media = call.anchor.caller.media
        assert media is not None  # answered from the endpoint facing the caller
        self.plays += 1
        self.generation += 1
        return [IvrPlay(call.key, call.id, media, self.step.prompt, self.step.text,
                        self.step.language, self.generation)]

    # -- what the media service and the caller's dialog report ---------------------
    def on_prompt_done(self, generation: int, now: float) -> list[CallOutput]:
        """The prompt of play ``generation`` played to its end: the response timer."""
        if self.state is not IvrState.PLAYING or generation != self.generation:
            return []
        self.move(IvrEvent.PROMPT_DONE)
        self.call.arm("ivr", now + self.step.timeout_seconds)
        return []

    def on_digit(self, digit: str, now: float) -> list[CallOutput]:
        """A key from the caller (RFC 4733 or INFO)."""
        if self.state is IvrState.DONE:
            return []
        quiet: list[CallOutput] = [IvrQuiet(self.call.key)] if \
            self.state is IvrState.PLAYING else []
        if self.state is IvrState.DIALLING:
            if digit == "#":
                return self._dialled(now)
            if not digit.isdigit():
                return self._invalid(f"'{digit}' while dialling {self.digits}", now)
            self.digits += digit
            return self._more_digits(now)
        if self.step.dial_by_extension and digit in self.prefixes:
            self.digits = digit
            return quiet + self._more_digits(now)
        dest = self.step.key(digit)
        if dest is None:
            return quiet + self._invalid(f"key {digit} is not in the menu", now)
        return quiet + self._choose(dest, "key", f"key {digit} -> {dest}", now)

    def on_timer(self, now: float) -> list[CallOutput]:
        """The ``ivr`` timer: no key after the prompt, or no next digit."""
        if self.state is IvrState.DIALLING:
            return self._dialled(now)
        if self.state is not IvrState.WAITING:
            return []
        if self.plays <= self.step.repeat:
            self.move(IvrEvent.REPLAY)
            log.info("ivr: no key; the prompt again", call_id=self.call.id, ivr=self.step.name,
                     play=self.plays + 1)
            return self._play()
        dest = self.step.on_timeout
        return self._choose(dest, "timeout", f"no key in {self.step.timeout_seconds} s after "
                            f"{self.plays} prompt(s): on_timeout -> {dest}", now,
                            IvrEvent.NO_INPUT)

    def on_info(self, req: Request, key: TxKey, now: float) -> list[CallOutput]:
        """An INFO in the caller's dialog: ``application/dtmf-relay`` carries a key
        (200 either way: RFC 6086 s4.2 leaves other packages to the receiver)."""
        events = self.call.respond(key, make_response(req, 200), now)
        ctype = (req.get("content-type") or "").split(";")[0].strip().lower()
        digit = dtmf_relay_digit(req.body) if ctype == "application/dtmf-relay" else None
        if digit is None:
            return events
        return events + self.on_digit(digit, now)

    def gone(self) -> None:
        """The call ended during the menu (the caller hung up)."""
        if self.state is not IvrState.DONE:
            self.move(IvrEvent.GONE)
            self.call.front.count_ivr("hangup")

    # -- dial by extension ---------------------------------------------------------
    def _more_digits(self, now: float) -> list[CallOutput]:
        self.move(IvrEvent.DIGIT)
        if self.digits in self.prefixes:  # an extension may go on: wait for the next digit
            self.call.arm("ivr", now + INTER_DIGIT_SECONDS)
            return []
        return self._dialled(now)

    def _dialled(self, now: float) -> list[CallOutput]:
        """What was typed is complete (length, ``#`` or the inter-digit timer)."""
        digits = self.digits
        directory = self.call.front.directory
        dest = router_for(directory).dialled(digits) if directory is not None else None
        if dest is not None:
            return self._choose(dest, "extension", f"dialled {digits} -> {dest}", now)
        key = self.step.key(digits) if len(digits) == 1 else None
        if key is not None:
            return self._choose(key, "key", f"key {digits} -> {key}", now)
        return self._invalid(f"{digits} is no extension", now)

    # -- how it ends ---------------------------------------------------------------
    def _invalid(self, why: str, now: float) -> list[CallOutput]:
        dest = self.step.on_invalid
        return self._choose(dest, "invalid", f"{why}: on_invalid -> {dest}", now,
                            IvrEvent.INVALID)

    def _choose(self, dest: Destination, outcome: str, why: str, now: float,
                event: IvrEvent = IvrEvent.CHOSE) -> list[CallOutput]:
        """The menu is over: ``dest``'s plan runs for the call (:class:`IvrChoice`)."""
        call = self.call
        self.move(event)
        call.disarm("ivr")
        call.ivr = None
        call.front.count_ivr(outcome)
        why = f"IVR {self.step.name}: {why}"
        log.info("ivr choice", call_id=call.id, ivr=self.step.name, outcome=outcome,
                 destination=str(dest))
        events: list[CallOutput] = [IvrQuiet(call.key, done=True)]
        return events + IvrChoice.begin_choice(call, dest, why, now)


@dataclass(slots=True, eq=False)
class IvrChoice(Transfer):
    """The plan of an IVR caller's choice, running in its answered call: a blind
    transfer's target plan with no transferor (nobody to NOTIFY, nobody to hand
    the call back to), the caller waiting as the transferee."""

    SETTLED: ClassVar[CallEvent] = CallEvent.IVR_SETTLED
    UNUSABLE: ClassVar[str] = "answer to an IVR choice unusable"

    @staticmethod
    def begin_choice(call: Call, dest: Destination, why: str, now: float) -> list[CallOutput]:
        front = call.front
        directory = front.directory
        assert directory is not None
        media = call.anchor.caller.media
        assert media is not None
        wall = front.wall_clock()
        facts = dataclasses.replace(call.facts, at=dt.datetime.fromtimestamp(wall, dt.UTC))
        if dest.deflect_302:  # an answered call cannot be deflected: forwarded instead
            dest = Destination(dest.kind, dest.target, dest.rebound)
        the_plan = router_for(directory).choose(facts, dest, why,
                                                front.live_state(directory, wall))
        log.info("ivr plan", call_id=call.id, plan=PlanText(the_plan))
        choice = IvrChoice(call, None, str(dest), media.codec)
        call.transfer = choice
        call.plan = the_plan
        call.move(CallEvent.IVR_CHOSE)
        call.legs = []
        call.rung = set()
        first = the_plan.steps[0]
        events = [] if isinstance(first, Ivr) else call.bridge()  # hold music while it rings
        return events + call.run_step(0, now)

    @property
    def by_caller(self) -> bool:
        return False

    def is_transferor(self, leg: Leg | None) -> bool:
        return False

    @property
    def transferor_here(self) -> bool:
        return False

    def settle(self) -> None:
        """The choice led to another IVR: the caller is answered and stays so."""
        call = self.call
        call.transfer = None
        call.move(CallEvent.IVR_SETTLED)

    def connected(self, leg: Leg, now: float) -> list[CallOutput]:
        """A callee of the choice answered (nobody to tell): recorded as the same call
        straight to that party would be (the user's record_calls, the number's
        record_inbound/outbound)."""
        call = self.call
        log.info("ivr choice connected", call_id=call.id, leg=leg.label)
        call.anchor.record = rules.record_reason(call.front.directory, call.facts, leg.target)
        return []

    def to_voicemail(self, step: Voicemail, now: float) -> list[CallOutput]:
        """The choice leaves a message: greeting and beep on the caller's endpoint."""
        call = self.call
        media = call.anchor.caller.media
        assert media is not None
        self.move(TransferEvent.TO_VOICEMAIL)
        call.transfer = None
        call.move(CallEvent.IVR_SETTLED)
        call.engine_step = step
        log.info("ivr choice to voicemail", call_id=call.id, box=step.box)
        return [StartVoicemail(call.key, call.id, media, step.box, step.greeting,
                               rules.voicemail_seconds(call.front.directory, step.box),
                               call.facts.caller)]

    def failed(self, status: int, now: float) -> list[CallOutput]:
        """The choice's plan ended unanswered: the call ends (BYE to the caller)."""
        call = self.call
        self.move(TransferEvent.FAILED)
        call.transfer = None
        call.move(CallEvent.IVR_SETTLED)
        log.info("ivr choice unanswered; hanging up", call_id=call.id, status=status)
        return call.cancel_legs(now, None) + call.close(CallEvent.ENDPOINT_DONE, now)

    def abandon(self, now: float) -> list[CallOutput]:
        """The caller hung up while its choice rang."""
        call = self.call
        self.move(TransferEvent.TRANSFEREE_GONE)
        call.transfer = None
        return call.cancel_legs(now, None)
