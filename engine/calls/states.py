"""The states of calls, legs and transfers, and every legal move between them.

Each machine is an enum of states, an enum of the events that move it and a
table ``(state, event) -> next state``; a move that is not in its table raises
:class:`IllegalTransition`, which names the event, the role and the state. The
objects of the call layer (``Call``, ``Leg``, ``Transfer``) change state only
through :meth:`Machine.move`, so this file is the whole of what can happen to
them. A move driven by SIP cites the RFC section it comes from.

Three roles:

* **call**: the caller's INVITE as we, its UAS, answer it. ``routing`` while a
  plan runs (the caller's own, or a transfer target's for a caller we
  answered earlier), ``answered`` once a party is connected to it (a callee,
  or the engine's own endpoint: voicemail, mailbox), ``ended``.
* **leg**: one INVITE we sent a callee, as its UAC: ``calling`` until a
  provisional response, ``ringing``, ``answered`` on a 2xx, ``done`` when
  refused, cancelled or hung up. A 2xx that crosses our CANCEL reaches a done
  leg, which is ACKed and hung up and stays done (RFC 3261 s9.1, s13.2.2.4).
* **transfer**: a REFER we accepted (RFC 3515). Blind: ``referred`` while the
  target's plan runs, ``target_ringing`` once a target leg rings, then
  ``connected``, ``voicemail`` (the plan left a message), ``failed`` or
  ``abandoned`` (the transferee hung up). Attended (Refer-To with Replaces,
  RFC 3891): ``moving`` while the consulted target is re-INVITEd to the
  transferee's call, then ``connected``, ``failed`` or ``abandoned``.
* **agent** (``engine.calls.queue``): a queue agent as the queues see it, one
  state across all its queues: ``idle``, ``ringing`` (a try's INVITE), ``on_call``
  (it answered a queue caller), ``wrap_up`` (after that call, for the queue's
  ``wrap_up_seconds``), then ``idle`` again.
"""

from __future__ import annotations

from enum import StrEnum

# The machine and its error are shared with the transaction layer (engine/sip).
from engine.statemachine import IllegalTransition, Machine

__all__ = [
    "AGENT",
    "CALL",
    "IVR",
    "LEG",
    "TRANSFER",
    "AgentEvent",
    "AgentState",
    "CallEvent",
    "CallState",
    "IllegalTransition",
    "IvrEvent",
    "IvrState",
    "LegEvent",
    "LegState",
    "Machine",
    "TransferEvent",
    "TransferState",
]


# ---------------------------------------------------------------------- calls
class CallState(StrEnum):
    ROUTING = "routing"
    ANSWERED = "answered"
    ENDED = "ended"


class CallEvent(StrEnum):
    ANSWER = "answer"  # our 2xx to the caller's INVITE
    REFER = "refer"  # a REFER accepted: a transfer target's plan runs
    TRANSFER_SETTLED = "transfer_settled"  # connected, to voicemail, or back to the transferor
    IVR_CHOSE = "ivr_chose"  # the caller of an IVR chose: that destination's plan runs
    RING_BACK = "ring_back"  # a parked call not retrieved: its parker rings again
    IVR_SETTLED = "ivr_settled"  # the choice is connected, leaves a message, or is an IVR
    # Every ending goes through Call.close(event):
    REJECT = "reject"  # a final non-2xx answer to the caller
    CANCEL = "cancel"  # the caller's CANCEL
    BYE = "bye"  # a party hung up
    NO_ACK = "no_ack"  # our 2xx was never ACKed
    ENDPOINT_DONE = "endpoint_done"  # the engine's endpoint is done (message recorded)
    REPLACED = "replaced"  # a consultation call whose target moved to another call
    PICKED = "picked"  # a picker's call: its INVITE answers the call it picked up
    TRANSFER_DROPPED = "transfer_dropped"  # a transfer failed and its transferor was gone
    ERROR = "error"  # an exception while handling the call: it ends alone
    SHUTDOWN = "shutdown"  # the engine stops


_R, _A, _X = CallState.ROUTING, CallState.ANSWERED, CallState.ENDED
CALL: Machine[CallState, CallEvent] = Machine("call", {
    (_R, CallEvent.ANSWER): _A,  # RFC 3261 s13.3.1.4: the 2xx, retransmitted until its ACK
    (_A, CallEvent.REFER): _R,  # RFC 3515 s2.4.2: 202 Accepted, the target is called
    (_R, CallEvent.TRANSFER_SETTLED): _A,  # RFC 3515 s2.4.5: the final NOTIFY
    # An IVR's caller is answered (s13.3.1.4) and keeps its dialog while the plan of
    # its choice rings; no SIP goes to the caller for either move.
    (_A, CallEvent.IVR_CHOSE): _R,
    # A parked caller (answered) waits while its parker's phones ring (RFC 3261
    # s13.2.1: new INVITEs on the callee side, nothing to the caller).
    (_A, CallEvent.RING_BACK): _R,
    (_R, CallEvent.IVR_SETTLED): _A,
    (_R, CallEvent.REJECT): _X,  # RFC 3261 s13.3.1.3, s8.2.6 (302: s13.3.1.2)
    (_R, CallEvent.CANCEL): _X,  # RFC 3261 s9.2: 487 to the INVITE
    (_A, CallEvent.BYE): _X,  # RFC 3261 s15.1.2
    # A transferee (answered before its REFER) may hang up while the target rings.
    (_R, CallEvent.BYE): _X,  # RFC 3261 s15.1.2
    (_A, CallEvent.NO_ACK): _X,  # RFC 3261 s13.3.1.4: no ACK in 64*T1, BYE
    (_A, CallEvent.ENDPOINT_DONE): _X,  # RFC 3261 s15.1.1: our BYE
    # RFC 3891 s3: the dialog named by Replaces ends (the consultation call); it
    # may be running a transfer of its own.
    (_A, CallEvent.REPLACED): _X,
    (_R, CallEvent.REPLACED): _X,
    # RFC 3891 s3 (a pickup by Replaces, or by code): the picker's INVITE is answered
    # by the call it picked up; its own call object ends without a word.
    (_R, CallEvent.PICKED): _X,
    (_A, CallEvent.TRANSFER_DROPPED): _X,  # RFC 3261 s15.1.1: our BYE to the transferee
    (_R, CallEvent.ERROR): _X,
    (_A, CallEvent.ERROR): _X,
    (_R, CallEvent.SHUTDOWN): _X,
    (_A, CallEvent.SHUTDOWN): _X,
})


# ---------------------------------------------------------------------- legs
class LegState(StrEnum):
    CALLING = "calling"
    RINGING = "ringing"
    ANSWERED = "answered"
    DONE = "done"


class LegEvent(StrEnum):
    PROVISIONAL = "provisional"  # 101-199
    ANSWER = "answer"  # a 2xx
    REFUSED = "refused"  # 300-699 (a time-out counts as 408)
    GIVE_UP = "give_up"  # given up before any provisional: no CANCEL may be sent
    CANCEL = "cancel"  # our CANCEL
    HANG_UP = "hang_up"  # our BYE
    BYE = "bye"  # the callee's BYE


_C, _G, _N, _D = LegState.CALLING, LegState.RINGING, LegState.ANSWERED, LegState.DONE
LEG: Machine[LegState, LegEvent] = Machine("leg", {
    (_C, LegEvent.PROVISIONAL): _G,  # RFC 3261 s13.2.2.1
    (_G, LegEvent.PROVISIONAL): _G,
    (_C, LegEvent.ANSWER): _N,  # RFC 3261 s13.2.2.4: we ACK it
    (_G, LegEvent.ANSWER): _N,
    # RFC 3261 s13.2.2.4, s9.1: a 2xx crossing our CANCEL: ACKed, then BYE.
    (_D, LegEvent.ANSWER): _D,
    (_C, LegEvent.REFUSED): _D,  # RFC 3261 s13.2.2.2, s13.2.2.3 (the transaction ACKs)
    (_G, LegEvent.REFUSED): _D,
    (_D, LegEvent.REFUSED): _D,  # RFC 3261 s9.1: the 487 answering our CANCEL
    (_C, LegEvent.GIVE_UP): _D,  # RFC 3261 s9.1: no CANCEL before a provisional
    (_G, LegEvent.CANCEL): _D,  # RFC 3261 s9.1
    (_N, LegEvent.HANG_UP): _D,  # RFC 3261 s15.1.1
    (_D, LegEvent.HANG_UP): _D,  # the BYE of a 2xx that crossed our CANCEL
    (_N, LegEvent.BYE): _D,  # RFC 3261 s15.1.2
})


# ---------------------------------------------------------------------- transfers
class TransferState(StrEnum):
    REFERRED = "referred"
    TARGET_RINGING = "target_ringing"
    MOVING = "moving"
    CONNECTED = "connected"
    VOICEMAIL = "voicemail"
    FAILED = "failed"
    ABANDONED = "abandoned"
    PARKED = "parked"


class TransferEvent(StrEnum):
    TARGET_RINGING = "target_ringing"  # a provisional response from a target leg
    TARGET_ANSWERED = "target_answered"  # a target leg's 2xx, usable
    TO_VOICEMAIL = "to_voicemail"  # the target's plan leaves a message
    MOVED = "moved"  # the consulted target's 2xx to our re-INVITE
    FAILED = "failed"  # no answer, refused, or the move refused
    TRANSFEREE_GONE = "transferee_gone"  # the transferee's call ends (hung up, error...)
    PARKED = "parked"  # the target is the park code: the transferee waits on an orbit


_P, _T, _M = TransferState.REFERRED, TransferState.TARGET_RINGING, TransferState.MOVING
TRANSFER: Machine[TransferState, TransferEvent] = Machine("transfer", {
    (_P, TransferEvent.TARGET_RINGING): _T,  # RFC 3261 s13.2.2.1
    (_T, TransferEvent.TARGET_RINGING): _T,
    # RFC 3515 s2.4.5: the final NOTIFY (message/sipfrag 200) follows each of these.
    (_P, TransferEvent.TARGET_ANSWERED): TransferState.CONNECTED,
    (_T, TransferEvent.TARGET_ANSWERED): TransferState.CONNECTED,
    (_P, TransferEvent.TO_VOICEMAIL): TransferState.VOICEMAIL,
    (_T, TransferEvent.TO_VOICEMAIL): TransferState.VOICEMAIL,
    (_M, TransferEvent.MOVED): TransferState.CONNECTED,  # RFC 3891 s3, RFC 5589 s7
    # RFC 3515 s2.4.5: the final NOTIFY (200, its phrase naming the orbit) follows.
    (_P, TransferEvent.PARKED): TransferState.PARKED,
    # RFC 3515 s2.4.5: the final NOTIFY carries the failure.
    (_P, TransferEvent.FAILED): TransferState.FAILED,
    (_T, TransferEvent.FAILED): TransferState.FAILED,
    (_M, TransferEvent.FAILED): TransferState.FAILED,
    # RFC 3261 s15.1.2 (the transferee's BYE); the final NOTIFY says 487.
    (_P, TransferEvent.TRANSFEREE_GONE): TransferState.ABANDONED,
    (_T, TransferEvent.TRANSFEREE_GONE): TransferState.ABANDONED,
    (_M, TransferEvent.TRANSFEREE_GONE): TransferState.ABANDONED,
})


# ---------------------------------------------------------------------- IVRs
class IvrState(StrEnum):
    PLAYING = "playing"  # the prompt plays; a key interrupts it
    WAITING = "waiting"  # the prompt is over: the response timer runs
    DIALLING = "dialling"  # digits of an extension: the inter-digit timer runs
    DONE = "done"  # chosen, timed out, invalid, or the caller left


class IvrEvent(StrEnum):
    PROMPT_DONE = "prompt_done"  # the media service played the prompt to its end
    REPLAY = "replay"  # no key in time, a repeat left: the prompt again
    DIGIT = "digit"  # a digit that may start or continue an extension
    CHOSE = "chose"  # a key of the menu, or an extension dialled
    INVALID = "invalid"  # a key not in the menu, or digits that are no extension
    NO_INPUT = "no_input"  # no key in time and no repeat left
    GONE = "gone"  # the call ended (the caller hung up)


_PL, _WA, _DI, _DN = IvrState.PLAYING, IvrState.WAITING, IvrState.DIALLING, IvrState.DONE
# Keys arrive as RFC 4733 telephone-events (s3.2) or SIP INFO application/dtmf-relay
# (RFC 6086 carries it; the body is the de facto Signal=/Duration= form).
IVR: Machine[IvrState, IvrEvent] = Machine("ivr", {
    (_PL, IvrEvent.PROMPT_DONE): _WA,
    (_WA, IvrEvent.REPLAY): _PL,
    (_PL, IvrEvent.DIGIT): _DI,
    (_WA, IvrEvent.DIGIT): _DI,
    (_DI, IvrEvent.DIGIT): _DI,
    (_PL, IvrEvent.CHOSE): _DN,
    (_WA, IvrEvent.CHOSE): _DN,
    (_DI, IvrEvent.CHOSE): _DN,
    (_PL, IvrEvent.INVALID): _DN,
    (_WA, IvrEvent.INVALID): _DN,
    (_DI, IvrEvent.INVALID): _DN,
    (_WA, IvrEvent.NO_INPUT): _DN,
    (_PL, IvrEvent.GONE): _DN,
    (_WA, IvrEvent.GONE): _DN,
    (_DI, IvrEvent.GONE): _DN,
})


# ---------------------------------------------------------------------- queue agents
class AgentState(StrEnum):
    IDLE = "idle"  # may be rung (when logged in, registered, available, not on a call)
    RINGING = "ringing"  # a queue caller's leg rings this agent's phones
    ON_CALL = "on_call"  # connected to a queue caller
    WRAP_UP = "wrap_up"  # after a queue call: not rung for the queue's wrap_up_seconds


class AgentEvent(StrEnum):
    RING = "ring"  # a queue caller's INVITE sent to the agent
    ANSWER = "answer"  # the agent's 2xx, relayed to the caller
    NO_ANSWER = "no_answer"  # no answer in ring_seconds, refused, or the caller left
    HANG_UP = "hang_up"  # the queue call ended (either side's BYE, or a transfer out)
    WRAP_DONE = "wrap_done"  # wrap_up_seconds passed


_AI, _AR, _AO, _AW = AgentState.IDLE, AgentState.RINGING, AgentState.ON_CALL, \
    AgentState.WRAP_UP
# One agent across every queue it is in: rung for one caller at a time. The INVITE
# to it follows RFC 3261 s13.2 (its leg's own states are LEG); these are the
# queue's view of the agent.
AGENT: Machine[AgentState, AgentEvent] = Machine("agent", {
    (_AI, AgentEvent.RING): _AR,  # RFC 3261 s13.2.1: the INVITE to the agent
    (_AR, AgentEvent.ANSWER): _AO,  # RFC 3261 s13.2.2.4: its 2xx
    (_AR, AgentEvent.NO_ANSWER): _AI,  # s13.2.2.3 a refusal, s9.1 our CANCEL
    (_AO, AgentEvent.HANG_UP): _AW,  # RFC 3261 s15.1: BYE on the queue call
    (_AW, AgentEvent.WRAP_DONE): _AI,
})
