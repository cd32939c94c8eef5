"""Path (RFC 3327): a REGISTER through the edge is stored with its Path, and calls
to that phone go through the edge with the Path as their route set."""

from __future__ import annotations

import dataclasses

from engine.sip.message import Request, parse
from engine.sip.registrar import BindingTarget, Registrar, binding_target
from provisioning.model import Binding
from tests.test_calls import PHONES, SDP, Net, make_net, phone_call, reply, statuses

EDGE = ("127.0.0.1", 5070)
EDGE_PATH = "<sip:127.0.0.1:5070;lr;received=sip:10.1.2.3:40000>"


def register(path: list[str], contact: str = "<sip:102@10.1.2.3:40000>",
             cseq: int = 1) -> Request:
    lines = [
        "REGISTER sip:pbx.example.test SIP/2.0",
        "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKedge" + str(cseq),
        "Via: SIP/2.0/UDP 10.1.2.3:40000;branch=z9hG4bKphone" + str(cseq),
        "From: <sip:102@pbx.example.test>;tag=f1",
        "To: <sip:102@pbx.example.test>",
        "Call-ID: reg-102",
        f"CSeq: {cseq} REGISTER",
        f"Contact: {contact}",
        *[f"Path: {p}" for p in path],
        "Content-Length: 0",
    ]
    msg = parse(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(msg, Request)
    return msg


def test_the_path_is_stored_with_the_binding_and_echoed_in_the_200() -> None:
    r = Registrar(random=lambda: 0.0)
    res = r.register(register([EDGE_PATH, "<sip:outer.example;lr>"]), "102",
                     "udp:127.0.0.1:5070", 1000.0)
    assert res.status == 200
    assert ("Path", f"{EDGE_PATH}, <sip:outer.example;lr>") in res.headers
    [saved] = res.saved
    assert saved.path == (EDGE_PATH, "<sip:outer.example;lr>")
    # a refresh without Path (the phone now registers directly) drops the old Path
    again = r.register(register([], cseq=2), "102", "udp:10.1.2.3:40000", 1001.0)
    assert again.status == 200 and not any(k == "Path" for k, _ in again.headers)
    assert again.saved[0].path == ()


def test_a_path_that_is_not_an_address_is_refused() -> None:
    r = Registrar(random=lambda: 0.0)
    res = r.register(register(["not a <uri"]), "102", "udp:127.0.0.1:5070", 1000.0)
    assert res.status == 400 and r.count() == 0


def _binding(source: str, path: tuple[str, ...] = ()) -> Binding:
    return Binding(aor="102", contact="sip:102@10.1.2.3:40000;ob", expires_at=2e9,
                   call_id="c", cseq=1, source=source, path=path)


def test_binding_target_direct_and_through_the_path() -> None:
    assert binding_target(_binding("tcp:10.1.2.3:40000")) == BindingTarget(
        "sip:102@10.1.2.3:40000;ob", ("10.1.2.3", 40000), "tcp")
    assert binding_target(_binding("udp:[::1]:5062")) == BindingTarget(
        "sip:102@10.1.2.3:40000;ob", ("::1", 5062), "udp")
    via_edge = binding_target(_binding("udp:127.0.0.1:5070", (EDGE_PATH, "<sip:b.test;lr>")))
    assert via_edge == BindingTarget("sip:102@10.1.2.3:40000;ob", EDGE, "udp",
                                     (EDGE_PATH, "<sip:b.test;lr>"))
    tcp_edge = binding_target(_binding("udp:x:1", ("<sip:edge.test;transport=TCP;lr>",)))
    assert tcp_edge is not None and tcp_edge.dest == ("edge.test", 5060)
    assert tcp_edge.transport == "tcp"
    tls_edge = binding_target(_binding("udp:x:1", ("<sips:edge.test;lr>",)))
    assert tls_edge is not None and tls_edge.dest == ("edge.test", 5061)
    assert tls_edge.transport == "tls"
    assert binding_target(_binding("udp:nowhere")) is None


def _register_through_edge(net: Net) -> None:
    net.engine.registrar.load([Binding(
        aor="102", contact="sip:102@10.1.2.3:40000", expires_at=net.clock.wall + 3600,
        call_id="reg102", cseq=1, source=f"udp:{EDGE[0]}:{EDGE[1]}",
        path=(EDGE_PATH,))], net.clock.wall)
    net.engine.registrar.load([Binding(
        aor="101", contact=f"sip:101@{PHONES['101'][0]}:{PHONES['101'][1]}",
        expires_at=net.clock.wall + 3600, call_id="reg101", cseq=1,
        source=f"udp:{PHONES['101'][0]}:{PHONES['101'][1]}")], net.clock.wall)


def test_a_call_to_a_phone_behind_the_edge_goes_through_its_path() -> None:
    net = make_net()
    _register_through_edge(net)
    src = phone_call(net, "101", "102")
    [inv] = net.requests(EDGE, "INVITE")
    assert inv.uri_text == "sip:102@10.1.2.3:40000"  # the Request-URI is the Contact
    assert inv.get_all("route") == [EDGE_PATH]  # preloaded: the Path
    assert inv.body == SDP
    # The edge record-routes; the dialog's requests follow the route set.
    rr = "<sip:127.0.0.1:5070;lr>"
    net.send(reply(inv, 200, body=b"v=0 answer", contact="<sip:102@10.1.2.3:40000>",
                   extra=[("Record-Route", rr)]), EDGE)
    [ack] = net.requests(EDGE, "ACK")
    assert ack.get_all("route") == [rr]
    assert 200 in statuses(net.drain(src))


def test_a_cancel_to_a_phone_behind_the_edge_carries_the_path() -> None:
    net = make_net()
    _register_through_edge(net)
    src = phone_call(net, "101", "102")
    [inv] = net.requests(EDGE, "INVITE")
    net.send(reply(inv, 180), EDGE)
    net.drain(src)
    cancel = Request.build("CANCEL", "sip:102@pbx.test", [
        ("Via", f"SIP/2.0/UDP {src[0]}:{src[1]};branch=z9hG4bKcall-1-2;rport"),
        ("Max-Forwards", "70"), ("From", '"Caller 101" <sip:101@pbx.test>;tag=from-call-1'),
        ("To", "<sip:102@pbx.test>"), ("Call-ID", "call-1"), ("CSeq", "2 CANCEL")])
    net.send(cancel, src)
    [leg_cancel] = net.requests(EDGE, "CANCEL")
    assert leg_cancel.get_all("route") == [EDGE_PATH]  # RFC 3261 s9.1: the INVITE's Route


def test_merge_applies_other_nodes_bindings() -> None:
    r = Registrar(random=lambda: 0.0)
    r.register(register([EDGE_PATH]), "102", "udp:127.0.0.1:5070", 1000.0)
    other = _binding("udp:127.0.0.1:5070", (EDGE_PATH,))
    stale = Binding(aor="103", contact="sip:103@h", expires_at=999.0, call_id="c", cseq=1,
                    source="udp:h:1")
    r.merge([other, stale], [], 1000.0)
    assert {b.contact for b in r.lookup("102", 1000.0)} == {
        "sip:102@10.1.2.3:40000", "sip:102@10.1.2.3:40000;ob"}
    assert r.lookup("103", 1000.0) == []
    r.merge([], [("102", "sip:102@10.1.2.3:40000"), ("104", "sip:none")], 1000.0)
    assert [b.contact for b in r.lookup("102", 1000.0)] == ["sip:102@10.1.2.3:40000;ob"]
    r.merge([dataclasses.replace(other, expires_at=10.0)], [], 1000.0)  # expired there
    assert r.count() == 0 and r.bindings == {}
