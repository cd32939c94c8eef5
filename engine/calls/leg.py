"""One callee leg of a call: an INVITE the engine sent, as its UAC (RFC 3261 s13.2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.calls.states import LEG, LegEvent, LegState
from engine.sip.dialog import Dialog
from engine.sip.message import Request
from engine.sip.transaction import Addr, TxKey
from media import sdp
from routing import Device, External

if TYPE_CHECKING:
    from engine.calls.call import Call

__all__ = ["Leg"]


@dataclass(slots=True, eq=False)
class Leg:
    """One callee leg: the INVITE we sent, its dialog and what came back.

    Each leg is its own dialog with its own Call-ID (a phone sees a fresh call per
    leg). Its state moves only through :data:`engine.calls.states.LEG`."""

    call: Call  # the call it belongs to (an attended transfer moves it to another)
    target: Device | External
    label: str  # for logs: "101 sip:101@127.0.0.1:5062" or "+1514... via carrier"
    invite: Request
    dest: Addr  # where its requests go: the device's registration source, or the trunk
    transport: str
    key: TxKey  # the INVITE client transaction
    trunk: str = ""  # holds one channel of this trunk while alive
    state: LegState = LegState.CALLING
    status: int = 0  # the final response's status (487 when cancelled)
    dialog: Dialog | None = None  # once answered
    ack: bytes | None = None  # our ACK of its 2xx, sent again for a retransmission
    offer: sdp.SessionDescription | None = None  # what we offered on an anchored call
    early: sdp.SessionDescription | None = None  # its answer in a 183, if any

    def move(self, event: LegEvent) -> None:
        self.state = LEG.rows[self.state][event]  # IllegalTransition if not in LEG
        front = self.call.front
        if not self.pending:  # the phone stopped ringing: a queue agent may be free
            front.queues.changed(self.extension)
        if front.notes_changes:  # BLF (engine.services.dialoginfo)
            front.changed.append(self)

    @property
    def pending(self) -> bool:
        """Still calling or ringing: its outcome is not known yet."""
        return self.state in (LegState.CALLING, LegState.RINGING)

    @property
    def extension(self) -> str:
        """The user's extension when the leg rings a device, else ""."""
        return self.target.extension if isinstance(self.target, Device) else ""
