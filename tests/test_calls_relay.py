"""In-dialog requests the B2BUA relays (media not anchored, ``serve --media direct``):
the 2xx it passes back names the engine in a Contact fit for the leg it goes to
(RFC 3261 s12.2.2, s19.1.1: ;transport=tcp|tls and the listener's port on TCP/TLS).
Sans-I/O, fake clock, the harness of test_calls; the caller's messages go through
Engine.datagram with the transport they would arrive on."""

from __future__ import annotations

import pytest

from engine.sip.auth import build_authorization
from engine.sip.message import Request, Response
from engine.sip.transaction import Addr
from tests.test_calls import (
    PHONES,
    SDP,
    Net,
    ack_for,
    in_dialog,
    invite,
    make_net,
    register,
    reply,
)

TLS_PORT = 5061


def on(data: bytes, transport: str) -> bytes:
    """``data`` as a phone on ``transport`` writes it (its Via's transport)."""
    return data.replace(b"SIP/2.0/UDP ", f"SIP/2.0/{transport.upper()} ".encode(), 1)


def send(net: Net, data: bytes, source: Addr, transport: str) -> None:
    net.take(net.engine.datagram(on(data, transport), source, transport, net.clock.now))


def ok_of(msgs: list[Response]) -> Response:
    [ok] = [r for r in msgs if r.status == 200]
    return ok


def answered(transport: str) -> tuple[Net, Addr, Response, Request]:
    """101 (on ``transport``) calls 102 (on UDP), media not anchored; 102 answers,
    101 ACKs. Returns the net, 101's address, the engine's 200 to 101 and the
    engine's INVITE to 102."""
    net = make_net()
    assert not net.engine.calls.anchor_media
    net.engine.tls_port = TLS_PORT
    register(net, "101", "102")
    src = PHONES["101"]
    first = invite("102", "101", src)
    send(net, first, src, transport)
    [challenge] = [r for r in net.responses(src) if r.status == 407]
    auth = build_authorization(challenge.get("proxy-authenticate") or "", "INVITE",
                               "sip:102@pbx.test", "101", "pw101", "cn")
    send(net, ack_for(first, challenge), src, transport)
    send(net, invite("102", "101", src, auth=auth, cseq=2), src, transport)
    [inv] = net.requests(PHONES["102"], "INVITE")
    net.send(reply(inv, 200, body=SDP, contact="<sip:102@127.0.0.1:6102>"), PHONES["102"])
    net.drain(PHONES["102"])  # our ACK
    ok = ok_of(net.responses(src))
    send(net, in_dialog("ACK", ok, src, cseq=2, call_id="call-1", branch="ack1"), src,
         transport)
    return net, src, ok, inv


EXPECTED = {
    "udp": "<sip:switchboard@127.0.0.1:5060>",
    "tcp": "<sip:switchboard@127.0.0.1:5060;transport=tcp>",
    "tls": f"<sip:switchboard@127.0.0.1:{TLS_PORT};transport=tls>",
}


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_relayed_reinvite_200_to_the_caller_names_the_callers_transport(
        transport: str) -> None:
    net, src, ok, inv = answered(transport)
    assert ok.get("contact") == EXPECTED[transport]  # the initial 200 got it right
    hold = SDP.replace(b"a=rtpmap", b"a=sendonly\r\na=rtpmap")
    send(net, in_dialog("INVITE", ok, src, cseq=3, call_id="call-1", branch="re1", body=hold),
         src, transport)
    [reinv] = net.requests(PHONES["102"], "INVITE")  # relayed, not answered by the engine
    assert reinv.call_id == inv.call_id and b"a=sendonly" in reinv.body
    net.send(reply(reinv, 200, body=b"v=0 held", contact="<sip:102@127.0.0.1:6102>"),
             PHONES["102"])
    relayed = ok_of(net.responses(src))
    assert relayed.body == b"v=0 held" and relayed.cseq.number == 3
    contact = relayed.get("contact")
    assert contact == EXPECTED[transport]
    if transport == "udp":
        assert "transport=" not in (contact or "")


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_relayed_reinvite_200_to_the_callee_names_the_callees_transport(
        transport: str) -> None:
    """The callee (UDP) re-INVITEs; the caller is on TCP/TLS: the 200 going back to
    the callee names the engine as the callee reaches it, with no transport parameter."""
    net, src, _, inv = answered(transport)
    ours = inv.get("from") or ""  # the engine's side of the callee's dialog
    reinv = Request.build("INVITE", "sip:switchboard@127.0.0.1:5060", [
        ("Via", "SIP/2.0/UDP 127.0.0.1:6102;branch=z9hG4bKcalleere;rport"),
        ("Max-Forwards", "70"), ("From", (inv.get("to") or "") + ";tag=callee1"),
        ("To", ours), ("Call-ID", inv.call_id), ("CSeq", "7 INVITE"),
        ("Contact", "<sip:102@127.0.0.1:6102>"), ("Content-Type", "application/sdp")], SDP)
    net.send(reinv, PHONES["102"])
    [to_caller] = net.requests(src, "INVITE")
    assert to_caller.call_id == "call-1"
    assert to_caller.top_via.transport.upper() == transport.upper()
    answer = reply(to_caller, 200, body=b"v=0 fine", contact=f"<sip:101@{src[0]}:{src[1]}>")
    send(net, answer.to_bytes(), src, transport)
    relayed = ok_of(net.responses(PHONES["102"]))
    assert relayed.body == b"v=0 fine" and relayed.cseq.number == 7
    assert relayed.get("contact") == EXPECTED["udp"]


@pytest.mark.parametrize("who", ["caller", "callee"])
def test_refer_is_refused_and_the_call_goes_on(who: str) -> None:
    """Call transfer is not implemented: REFER from either party gets 501 with a
    Warning naming it, nothing reaches the other party, and the call still relays."""
    net, src, ok, inv = answered("udp")
    if who == "caller":
        refer = in_dialog("REFER", ok, src, cseq=3, call_id="call-1", branch="ref1")
        refer = refer.replace(b"Content-Length", b"Refer-To: <sip:103@pbx.test>\r\n"
                              b"Content-Length")
        send(net, refer, src, "udp")
        [resp] = net.responses(src)
        assert net.requests(PHONES["102"], "REFER") == []
    else:
        req = Request.build("REFER", "sip:switchboard@127.0.0.1:5060", [
            ("Via", "SIP/2.0/UDP 127.0.0.1:6102;branch=z9hG4bKcalleeref;rport"),
            ("Max-Forwards", "70"), ("From", (inv.get("to") or "") + ";tag=callee1"),
            ("To", inv.get("from") or ""), ("Call-ID", inv.call_id), ("CSeq", "7 REFER"),
            ("Contact", "<sip:102@127.0.0.1:6102>"), ("Refer-To", "<sip:103@pbx.test>")])
        net.send(req, PHONES["102"])
        [resp] = net.responses(PHONES["102"])
        assert net.requests(src, "REFER") == []
    assert resp.status == 501 and "transfer" in (resp.get("warning") or "")
    bye = in_dialog("BYE", ok, src, cseq=4, call_id="call-1", branch="bye1")
    send(net, bye, src, "udp")
    [bye_out] = net.requests(PHONES["102"], "BYE")  # the call was still up
    assert bye_out.call_id == inv.call_id
