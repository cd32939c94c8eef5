"""The state tables of the call layer (engine/calls/states.py): an illegal move
names its event, role and state; every state can end; nothing leaves an end."""

from __future__ import annotations

from typing import Any

import pytest

from engine.calls.states import (
    CALL,
    LEG,
    TRANSFER,
    CallEvent,
    CallState,
    IllegalTransition,
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
                TransferState.ABANDONED}),
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


def test_legal_moves() -> None:
    assert LEG.move(LegState.CALLING, LegEvent.PROVISIONAL) is LegState.RINGING
    assert LEG.move(LegState.DONE, LegEvent.ANSWER) is LegState.DONE  # crossed our CANCEL
    assert CALL.move(CallState.ANSWERED, CallEvent.REFER) is CallState.ROUTING
    assert TRANSFER.move(TransferState.MOVING, TransferEvent.MOVED) is TransferState.CONNECTED


@pytest.mark.parametrize(("machine", "ends"), ENDS, ids=lambda x: getattr(x, "role", ""))
def test_every_state_can_end_and_nothing_leaves_an_end(
        machine: Machine[Any, Any], ends: set[Any]) -> None:
    for (state, event), after in machine.moves.items():
        assert state not in ends or after == state, (state, event)
    for start in machine.states() - ends:
        assert machine.reachable(start) & ends, f"{machine.role}: no way to an end from {start}"
