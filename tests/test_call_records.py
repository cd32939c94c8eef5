"""Dialog records through Engine.datagram (engine.calls.records): an answered call
gives one record with both its dialogs, a change in a dialog writes it again, the
end deletes it; the BYEs another node builds from it; the node id in leg Call-IDs.
Real SIP bytes, a fake clock, no sockets (tests/test_calls.py's scripted phones).
"""

from __future__ import annotations

from engine.calls.records import CSEQ_MARGIN, REASON, bye_requests
from engine.sip.message import Request, Response, parse
from tests.test_calls import (
    PHONES,
    TRUNK,
    Net,
    in_dialog,
    make_net,
    phone_call,
    register,
    reply,
    statuses,
)
from tests.test_calls_anchor import anchored_net
from tests.test_calls_transfer import (
    RECEPTION,
    TARGET_SDP,
    answered_trunk_call,
    caller_bye,
    consultation,
    from_phone,
)


def answered_call(net: Net) -> tuple[Request, Response]:
    register(net, "101", "102")
    src = phone_call(net, "101", "102")
    [inv] = net.requests(PHONES["102"], "INVITE")
    net.send(reply(inv, 200, body=b"v=0 answer", contact="<sip:102@127.0.0.1:6102>",
                   extra=[("Record-Route", "<sip:127.0.0.1:5999;lr>")]), PHONES["102"])
    [ok] = [r for r in net.responses(src) if r.status == 200]
    return inv, ok


def test_an_answered_call_is_recorded_once_and_deleted_when_it_ends() -> None:
    net = make_net()
    net.engine.node_id = "node7"
    calls = net.engine.calls
    assert calls.take_records() == ([], [])
    inv, ok = answered_call(net)
    assert inv.call_id.split("@")[0].endswith("-node7")  # the leg's Call-ID names its node
    saved, ended = calls.take_records()
    assert ended == [] and len(saved) == 1
    [record] = saved
    assert record.id == "call-1;from-call-1" and record.node == "node7"
    caller, callee = record.legs
    # the caller's dialog: we are its UAS, its requests go back where its INVITE came from
    assert caller.call_id == "call-1" and caller.remote_tag == "from-call-1"
    assert caller.remote_target == "sip:101@127.0.0.1:6101"
    assert (caller.peer_host, caller.peer_port, caller.transport) == ("127.0.0.1", 6101, "udp")
    # the callee's: we are its UAC; the route set is its 2xx's Record-Route
    assert callee.call_id == inv.call_id and callee.remote_tag == "callee1"
    assert callee.route_set == ("<sip:127.0.0.1:5999;lr>",) and callee.local_cseq == 1
    assert callee.remote_target == "sip:102@127.0.0.1:6102"
    # the caller's ACK changes no dialog: nothing to write again
    src = PHONES["101"]
    net.send(in_dialog("ACK", ok, src, cseq=2, call_id="call-1", branch="ack1"), src)
    assert calls.take_records() == ([], [])
    # an INFO relayed to the callee moves its local CSeq: written again
    net.send(in_dialog("INFO", ok, src, cseq=3, call_id="call-1", branch="info1"), src)
    [again], [] = calls.take_records()
    assert again.id == record.id and again.legs[1].local_cseq == 2
    # the caller hangs up: the record is deleted
    net.send(in_dialog("BYE", ok, src, cseq=4, call_id="call-1", branch="bye1"), src)
    assert calls.take_records() == ([], [record.id])


def test_a_call_never_answered_leaves_no_record() -> None:
    net = make_net()
    register(net, "101", "102")
    phone_call(net, "101", "102")
    [inv] = net.requests(PHONES["102"], "INVITE")
    net.send(reply(inv, 486), PHONES["102"])
    assert net.engine.calls.take_records() == ([], [])


def test_a_survivor_byes_both_parties_from_the_record() -> None:
    owner = make_net()
    owner.engine.node_id = "a"
    inv, _ = answered_call(owner)
    [record], _ = owner.engine.calls.take_records()
    survivor = make_net()
    survivor.engine.port = 5072
    survivor.engine.node_id = "b"
    byes = bye_requests(record, survivor.engine.local)
    assert [(dest, t) for _, dest, t in byes] == [(PHONES["101"], "udp"), (PHONES["102"], "udp")]
    to_caller, to_callee = (b for b, _, _ in byes)
    assert to_caller.call_id == "call-1" and to_caller.to.tag == "from-call-1"
    assert to_caller.cseq.number == record.legs[0].local_cseq + CSEQ_MARGIN + 1
    assert to_callee.call_id == inv.call_id and to_callee.to.tag == "callee1"
    assert to_callee.uri_text == "sip:102@127.0.0.1:6102"
    assert to_callee.get_all("route") == ["<sip:127.0.0.1:5999;lr>"]
    assert to_callee.cseq.number == 1 + CSEQ_MARGIN + 1 and to_callee.get("reason") == REASON
    assert to_callee.top_via.port == 5072  # the answers come to the survivor
    # sent by the survivor's engine, in client transactions (retransmitted on UDP)
    out = survivor.engine.end_dialogs([record], survivor.clock.now)
    sent = [parse(s.data) for s in out.sends]
    assert sorted(m.call_id for m in sent if isinstance(m, Request) and m.method == "BYE") \
        == sorted(["call-1", inv.call_id])
    assert b"switchboard_calls_ended_for_dead_node_total 1.0" in \
        survivor.engine.metrics.render()
    # the phones answer 200: the survivor's transactions end, no call of its own moves
    for send in out.sends:
        msg = parse(send.data)
        assert isinstance(msg, Request)
        survivor.send(reply(msg, 200), send.addr)
    assert statuses(survivor.drain(PHONES["101"])) == []
    assert survivor.engine.calls.calls_in_progress() == []


def test_an_attended_transfer_rewrites_the_record_and_drops_the_consultations() -> None:
    # 101 answers a carrier's call, calls 102 itself (the consultation), then transfers
    # the carrier to 102 with Replaces: the carrier's call now holds 102's dialog (its
    # record is written again) and the consultation ended (its record is deleted),
    # though the input was the first call's REFER.
    net = anchored_net()
    calls = net.engine.calls
    desk = answered_trunk_call(net, "102")
    [first], _ = calls.take_records()
    assert [g.call_id for g in first.legs] == ["tcall-1", desk.call_id]
    to_102, ok_y = consultation(net)
    [consult], [] = calls.take_records()
    assert consult.id == "call-y;from-call-y"
    replaces = f"call-y%3Bto-tag%3D{ok_y.to.tag}%3Bfrom-tag%3Dfrom-call-y"
    net.send(from_phone(desk, "REFER", 2, [
        ("Refer-To", f"<sip:102@pbx.test?Replaces={replaces}>")], RECEPTION, "att"), RECEPTION)
    [move] = net.requests(PHONES["102"], "INVITE")
    net.send(reply(move, 200, body=TARGET_SDP, contact="<sip:102@127.0.0.1:6102>"),
             PHONES["102"])
    saved, ended = calls.take_records()
    assert consult.id in ended
    assert saved[-1].id == first.id
    assert [g.call_id for g in saved[-1].legs] == ["tcall-1", to_102.call_id]
    net.send(caller_bye(net), TRUNK)
    assert calls.take_records()[1] == [first.id]
