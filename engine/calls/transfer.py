"""A transfer in progress (RFC 3515 REFER, RFC 5589; attended: RFC 3891 Replaces)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.calls.states import TRANSFER, TransferEvent, TransferState
from engine.transaction import Send
from media import sdp

if TYPE_CHECKING:
    from engine.calls.call import Call
    from engine.calls.leg import Leg

__all__ = ["Transfer"]


@dataclass(slots=True, eq=False)
class Transfer:
    """A transfer in progress (RFC 3515, RFC 5589 s6): the answered callee
    ``transferor`` sent REFER asking that the caller be connected to ``target``
    (or, with ``transferor`` None, the calling party asks it for the callee).

    The transferee keeps its dialog and its RTP port on the engine and hears hold
    music; ``target``'s plan runs as a call from the transferor (its rights),
    offered only the transferee's codec, so whoever answers is relayed to the
    transferee without a re-INVITE. NOTIFYs with a message/sipfrag tell the
    transferor how it went; it may hang up at any time.
    """

    transferor: Leg | None  # None: the calling party transfers the callee
    target: str
    codec: str  # the transferee's codec: the only one offered to the target
    # An attended transfer (Refer-To with Replaces, RFC 3891): the transferor's
    # consultation call, whose callee leg is moved to this call by a re-INVITE.
    consultation: Call | None = None
    reinvite: sdp.SessionDescription | None = None  # our offer in that re-INVITE
    ack: Send | None = None  # our ACK of its 2xx, sent again for a retransmitted 2xx
    state: TransferState = TransferState.REFERRED

    def move(self, event: TransferEvent) -> None:
        self.state = TRANSFER.move(self.state, event)
