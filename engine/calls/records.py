"""Dialog records: an answered call as the store keeps it, and the BYEs another node
sends from it when the node holding the call dies. Pure: no state, no clock, no I/O.

A call's record lists the dialogs it holds toward the parties still on it (the
caller's, or the party that took the caller's place after a transfer; the
callee's), each with what a BYE in it needs (RFC 3261 s12.2.1.1): Call-ID, tags,
From/To URIs, remote target, route set, the last local CSeq, the transport and
the address its requests went to. :func:`mark` is what changes a record: the call
layer writes it again only when the mark moves (an answer, a transfer, a request
the node sent in a dialog, a target refresh).

:func:`bye_requests` builds, for a survivor, one BYE per dialog of a record: the
recorded route set, Request-URI the remote target, a CSeq :data:`CSEQ_MARGIN`
above the recorded one (a request the dead node sent after its last write must
not make the BYE's CSeq look old to the peer, s12.2.2), and the survivor's own
Via, so the answers come back to it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.calls.headers import Local
from engine.sip.dialog import CSEQ_LIMIT, Dialog, DialogState
from engine.sip.message import Request
from engine.sip.transaction import Addr
from provisioning.model import DialogLeg, DialogRecord

if TYPE_CHECKING:
    from engine.calls.call import Call

__all__ = ["CSEQ_MARGIN", "REASON", "bye_requests", "dialog_record", "mark", "record_id"]

# Above the recorded local CSeq: room for requests sent between the last record
# write and the death (the write is behind the call path by a few milliseconds).
CSEQ_MARGIN = 100
# RFC 3326: why the call ended, for the phones' logs and CDRs.
REASON = 'SIP;cause=500;text="The node holding the call stopped"'

Party = tuple[Dialog, Addr, str]  # a dialog, where its requests go, its transport


def record_id(call_id: str, from_tag: str) -> str:
    """A call's record id: the caller's Call-ID and From tag."""
    return f"{call_id};{from_tag}"


def parties(call: Call) -> list[Party]:
    """The live dialogs of an answered call: the caller side, then the callee side
    (:func:`mark` reads the same ones)."""
    out: list[Party] = []
    caller = call.caller_leg
    if caller is not None:
        dialog = caller.dialog
        if dialog is not None and dialog.state is not DialogState.TERMINATED:
            out.append((dialog, caller.dest, caller.transport))
    else:
        dialog = call.caller_dialog
        if dialog is not None and dialog.state is not DialogState.TERMINATED:
            out.append((dialog, call.source, call.transport))
    callee = call.callee_leg
    if callee is not None:
        dialog = callee.dialog
        if dialog is not None and dialog.state is not DialogState.TERMINATED:
            out.append((dialog, callee.dest, callee.transport))
    return out


def mark(call: Call) -> tuple[object, ...]:
    """What a record of ``call`` holds that can change while the call lasts, for the
    parties :func:`parties` finds, in its order. A dialog stands for its ID (Call-ID
    and tags are never changed on a Dialog), so the mark is compared by identity
    there, without building the ID on every input."""
    # Run after every input of an answered call, where it is nearly always unchanged:
    # read straight from the call (no list of parties first), one flat tuple (the
    # node keeps a mark per answered call: one object for the collector, not one per
    # dialog).
    terminated = DialogState.TERMINATED
    caller = call.caller_leg
    if caller is not None:
        dialog, dest = caller.dialog, caller.dest
    else:
        dialog, dest = call.caller_dialog, call.source
    out: tuple[object, ...] = ()
    if dialog is not None and dialog.state is not terminated:
        out = (dialog, dialog.local_cseq, dialog.remote_target, dialog.route_set, dest)
    callee = call.callee_leg
    if callee is not None:
        dialog = callee.dialog
        if dialog is not None and dialog.state is not terminated:
            out += (dialog, dialog.local_cseq, dialog.remote_target, dialog.route_set,
                    callee.dest)
    return out


def dialog_record(call: Call, found: list[Party], node: str, answered_at: float,
                  ) -> DialogRecord:
    return DialogRecord(
        id=record_id(*call.key), node=node, answered_at=answered_at,
        legs=tuple(DialogLeg(
            call_id=d.call_id, local_tag=d.local_tag, remote_tag=d.remote_tag,
            local_uri=d.local_uri, remote_uri=d.remote_uri, remote_target=d.remote_target,
            route_set=d.route_set, local_cseq=d.local_cseq, local_contact=d.local_contact,
            transport=transport, peer_host=dest[0], peer_port=dest[1])
            for d, dest, transport in found))


def bye_requests(record: DialogRecord, local: Local) -> list[tuple[Request, Addr, str]]:
    """One BYE per dialog of ``record``, sent by the node ``local`` names; with where
    each goes and its transport. A dialog whose record cannot make a request (an
    unreadable route or target) is skipped."""
    out: list[tuple[Request, Addr, str]] = []
    for g in record.legs:
        dialog = Dialog(call_id=g.call_id, local_tag=g.local_tag, remote_tag=g.remote_tag,
                        local_uri=g.local_uri, remote_uri=g.remote_uri,
                        remote_target=g.remote_target,
                        local_cseq=min(g.local_cseq + CSEQ_MARGIN, CSEQ_LIMIT - 2),
                        route_set=g.route_set, local_contact=g.local_contact,
                        state=DialogState.CONFIRMED)
        transport = g.transport.lower() or "udp"
        try:
            bye = dialog.new_request("BYE", via_host=local.host,
                                     via_port=local.port_for(transport),
                                     transport=transport.upper(),
                                     headers=[("Reason", REASON)])
        except ValueError:
            continue
        out.append((bye, (g.peer_host, g.peer_port), transport))
    return out
