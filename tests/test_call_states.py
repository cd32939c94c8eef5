"""The state tables of the call layer (engine/calls/states.py): an illegal move
names its event, role and state; every state can end; nothing leaves an end."""

from __future__ import annotations

from typing import Any

import pytest

from engine.calls.states import (
    CALL,
    IVR,
    LEG,
    TRANSFER,
    CallEvent,
    CallState,
    IllegalTransition,
    IvrEvent,
    IvrState,
    LegEvent,
    LegState,
    Machine,
    TransferEvent,
    TransferState,
)

ENDS: list[tuple[Machine[Any, Any], set[Any]]] = [
    (CALL, {CallState.ENDED}),
    (LEG, {LegState.DONE}),
    (TRANSFER, {TransferState.CONNECTED, TransferState.VOICEMAIL, TransferState.FAILED,
                TransferState.ABANDONED, TransferState.PARKED}),
    (IVR, {IvrState.DONE}),
]


def test_an_illegal_move_names_event_role_and_state() -> None:
    with pytest.raises(IllegalTransition) as info:
        LEG.move(LegState.DONE, LegEvent.PROVISIONAL)
    assert (info.value.event, info.value.role, info.value.state) == (
        LegEvent.PROVISIONAL, "leg", LegState.DONE)
    assert str(info.value) == "leg: event 'provisional' is not allowed in state 'done'"
    with pytest.raises(IllegalTransition, match=r"call: event 'answer' .* state 'answered'"):
        CALL.move(CallState.ANSWERED, CallEvent.ANSWER)
    with pytest.raises(IllegalTransition, match=r"transfer: event 'moved' .* 'referred'"):
        TRANSFER.move(TransferState.REFERRED, TransferEvent.MOVED)
    # an IVR plays its prompt again only once it is over, and chooses once
    with pytest.raises(IllegalTransition, match=r"ivr: event 'replay' .* state 'playing'"):
        IVR.move(IvrState.PLAYING, IvrEvent.REPLAY)
    with pytest.raises(IllegalTransition, match=r"ivr: event 'chose' .* state 'done'"):
        IVR.move(IvrState.DONE, IvrEvent.CHOSE)
    with pytest.raises(IllegalTransition, match=r"ivr: event 'no_input' .* 'dialling'"):
        IVR.move(IvrState.DIALLING, IvrEvent.NO_INPUT)


def test_legal_moves() -> None:
    assert LEG.move(LegState.CALLING, LegEvent.PROVISIONAL) is LegState.RINGING
    assert LEG.move(LegState.DONE, LegEvent.ANSWER) is LegState.DONE  # crossed our CANCEL
    assert CALL.move(CallState.ANSWERED, CallEvent.REFER) is CallState.ROUTING
    assert TRANSFER.move(TransferState.MOVING, TransferEvent.MOVED) is TransferState.CONNECTED
    assert TRANSFER.move(TransferState.REFERRED, TransferEvent.PARKED) is TransferState.PARKED
    assert CALL.move(CallState.ROUTING, CallEvent.PICKED) is CallState.ENDED
    assert CALL.move(CallState.ANSWERED, CallEvent.IVR_CHOSE) is CallState.ROUTING
    assert CALL.move(CallState.ROUTING, CallEvent.IVR_SETTLED) is CallState.ANSWERED
    assert IVR.move(IvrState.PLAYING, IvrEvent.DIGIT) is IvrState.DIALLING
    assert IVR.move(IvrState.WAITING, IvrEvent.REPLAY) is IvrState.PLAYING
    assert IVR.move(IvrState.DIALLING, IvrEvent.CHOSE) is IvrState.DONE


@pytest.mark.parametrize(("machine", "ends"), ENDS, ids=lambda x: getattr(x, "role", ""))
def test_every_state_can_end_and_nothing_leaves_an_end(
        machine: Machine[Any, Any], ends: set[Any]) -> None:
    for (state, event), after in machine.moves.items():
        assert state not in ends or after == state, (state, event)
    for start in machine.states() - ends:
        assert machine.reachable(start) & ends, f"{machine.role}: no way to an end from {start}"


def test_every_agent_state_comes_back_to_idle() -> None:
    """Agents have no end: whatever happens, an agent is idle (rung again) later."""
    from engine.calls.states import AGENT, AgentState

    for start in AgentState:
        assert AgentState.IDLE in AGENT.reachable(start), start
