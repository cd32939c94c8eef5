"""Tests for engine.dialog: RFC 3261 s12 dialogs, s13.2.2.4 ACK, s14 target refresh.

Sans-I/O: every message is wire text handed to ``parse``, every request the
dialog builds goes back through ``parse(req.to_bytes())`` to prove it is
valid on the wire. Where the shared RFC 3665 call flows are available, the
dialogs are checked against the RFC's own messages.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.sip.dialog import (
    CONTACT_METHODS,
    TARGET_REFRESH,
    Dialog,
    DialogState,
    new_branch,
    new_call_id,
    new_tag,
)
from engine.sip.message import Request, Response, check_request, make_response, parse
from engine.sip.transaction import Send, TransactionLayer

CALLFLOWS = Path(__file__).resolve().parents[2] / "shared" / "conformance" / "callflows"
TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
VIA = re.compile(r"SIP/2\.0/(\w+) (\S+?);branch=(z9hG4bK[0-9a-f]{16});rport")

class ViaArgs(TypedDict):
    via_host: str
    via_port: int


OUR: ViaArgs = {"via_host": "sb.example.net", "via_port": 5060}  # our Via sent-by


# --------------------------------------------------------------------------
# Message builders: wire text -> parse()
# --------------------------------------------------------------------------
def wire(text: str, body: str = "") -> bytes:
    """Header lines (indentation ignored) plus body, CRLF-framed, Content-Length set."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    lines.append(f"Content-Length: {len(body.encode())}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def req(text: str, body: str = "") -> Request:
    msg = parse(wire(text, body))
    assert isinstance(msg, Request)
    check_request(msg)
    return msg


def resp(text: str, body: str = "") -> Response:
    msg = parse(wire(text, body))
    assert isinstance(msg, Response)
    return msg


def roundtrip(request: Request) -> Request:
    """``request`` serialized and parsed again: same start line, headers and body."""
    data = request.to_bytes()
    again = parse(data)
    assert isinstance(again, Request)
    check_request(again)
    assert again.start_line() == request.start_line()
    assert [(h[0], h[2]) for h in again.headers] == [(h[0], h[2]) for h in request.headers]
    assert again.body == request.body
    assert again.get("content-length") == str(len(request.body))
    assert again.to_bytes() == data
    return again


def via_of(request: Request) -> tuple[str, str, str]:
    """(transport, sent-by, branch) of the single Via the dialog wrote."""
    assert request.count("via") == 1
    m = VIA.fullmatch(request.get("via") or "")
    assert m is not None, request.get("via")
    return m.group(1), m.group(2), m.group(3)


# Our side (Switchboard) calls Bob through two record-routing proxies. The
# response's Record-Route lists the proxy nearest to Bob first.
OUT_INVITE = """
    INVITE sip:bob@biloxi.example.com SIP/2.0
    Via: SIP/2.0/UDP sb.example.net:5060;branch=z9hG4bKinv1;rport
    Max-Forwards: 70
    Route: <sip:p1.atlanta.example.com;lr>
    From: "Switchboard" <sip:alice@atlanta.example.com>;tag=ltag1
    To: Bob <sip:bob@biloxi.example.com>
    Call-ID: out1@sb.example.net
    CSeq: 101 INVITE
    Contact: <sip:sb@192.0.2.1:5060>
"""
LOOSE_RR = "Record-Route: <sip:p2.biloxi.example.com;lr>, <sip:p1.atlanta.example.com;lr>"
BOB_CONTACT = "Contact: <sip:bob@192.0.2.44:5062;transport=udp>"


def out_invite() -> Request:
    return req(OUT_INVITE)


def answer(status: int, *, to_tag: str | None = "btag1", record_route: str = LOOSE_RR,
           contact: str = BOB_CONTACT, reason: str = "Whatever", cseq: str = "101 INVITE",
           body: str = "") -> Response:
    to = "To: Bob <sip:bob@biloxi.example.com>" + (f";tag={to_tag}" if to_tag else "")
    ctype = "Content-Type: application/sdp" if body else ""
    return resp(f"""
        SIP/2.0 {status} {reason}
        Via: SIP/2.0/UDP sb.example.net:5060;branch=z9hG4bKinv1;rport=5060
        {record_route}
        From: "Switchboard" <sip:alice@atlanta.example.com>;tag=ltag1
        {to}
        Call-ID: out1@sb.example.net
        CSeq: {cseq}
        {contact}
        {ctype}
    """, body)


def uac_dialog(status: int = 200, **kw: Any) -> Dialog:
    return Dialog.uac(out_invite(), answer(status, **kw))


# A caller reaches us through two record-routing proxies: p2 (nearest to us)
# is the top Record-Route.
IN_INVITE = """
    INVITE sip:+18195550100@sb.example.net SIP/2.0
    Via: SIP/2.0/UDP p2.example.com;branch=z9hG4bKp2
    Via: SIP/2.0/UDP p1.example.com;branch=z9hG4bKp1
    Via: SIP/2.0/UDP 198.51.100.5:5060;branch=z9hG4bKc1;rport
    Max-Forwards: 68
    Record-Route: <sip:p2.example.com;lr>
    Record-Route: <sip:p1.example.com;lr;ftag=rtag9>
    From: "Carol C" <sip:carol@chicago.example.com>;tag=rtag9
    To: <sip:+18195550100@sb.example.net>
    Call-ID: in1@198.51.100.5
    CSeq: 4711 INVITE
    Contact: "Carol" <sip:carol@198.51.100.5:5060;ob>;expires=60
"""


def in_invite(text: str = IN_INVITE) -> Request:
    return req(text)


def uas_dialog(confirmed: bool = False, secure: bool | None = None) -> Dialog:
    return Dialog.uas(in_invite(), "ourtag", "<sip:sb@192.0.2.1:5060>", confirmed,
                      local_cseq=0, secure=secure)


def in_dialog(method: str, cseq: int, *, contact: str = "", extra: str = "",
              call_id: str = "in1@198.51.100.5", from_tag: str = "rtag9",
              to_tag: str = "ourtag") -> Request:
    """A request from Carol inside the UAS dialog."""
    return req(f"""
        {method} sip:sb@192.0.2.1:5060 SIP/2.0
        Via: SIP/2.0/UDP p2.example.com;branch=z9hG4bKq{cseq}{method}
        Max-Forwards: 69
        From: "Carol C" <sip:carol@chicago.example.com>;tag={from_tag}
        To: <sip:+18195550100@sb.example.net>;tag={to_tag}
        Call-ID: {call_id}
        CSeq: {cseq} {method}
        {contact}
        {extra}
    """)


def request_id(request: Request) -> tuple[str, str, str]:
    """The ID of the dialog a request from the peer belongs to, as the receiver
    files it (s12.2.2): Call-ID, To tag (ours), From tag (theirs)."""
    return request.call_id, request.to.tag or "", request.from_.tag or ""


def response_id(response: Response) -> tuple[str, str, str]:
    """The ID of the dialog a response to our request belongs to (s12.1.2): Call-ID,
    From tag (ours), To tag (theirs, '' when absent)."""
    return response.call_id, response.from_.tag or "", response.to.tag or ""


# --------------------------------------------------------------------------
# Identifiers
# --------------------------------------------------------------------------
def test_new_branch_has_the_cookie_and_is_unique() -> None:
    branches = {new_branch() for _ in range(500)}
    assert len(branches) == 500
    for b in branches:
        assert b.startswith("z9hG4bK") and len(b) == 7 + 16
        assert TOKEN.fullmatch(b)


def test_new_tag_is_a_random_token() -> None:
    tags = {new_tag() for _ in range(500)}
    assert len(tags) == 500
    assert all(TOKEN.fullmatch(t) and len(t) == 16 for t in tags)


def test_new_call_id() -> None:
    a, b = new_call_id("sb.example.net"), new_call_id("sb.example.net")
    assert a != b
    local, _, host = a.partition("@")
    assert host == "sb.example.net" and len(local) == 32 and TOKEN.fullmatch(local)
    assert "@" not in new_call_id()
    assert new_call_id("[2001:db8::1]").endswith("@[2001:db8::1]")


# --------------------------------------------------------------------------
# UAC dialogs (s12.1.2)
# --------------------------------------------------------------------------
def test_uac_early_dialog_from_180() -> None:
    d = uac_dialog(180, reason="Ringing")
    assert d.state is DialogState.EARLY and d.early and not d.confirmed
    assert d.id == ("out1@sb.example.net", "ltag1", "btag1")
    assert d.call_id == "out1@sb.example.net"
    assert d.local_tag == "ltag1" and d.remote_tag == "btag1"
    assert d.local_uri == '"Switchboard" <sip:alice@atlanta.example.com>'
    assert d.remote_uri == "Bob <sip:bob@biloxi.example.com>"
    assert d.local_cseq == 101
    assert d.remote_cseq is None
    assert d.remote_target == "sip:bob@192.0.2.44:5062;transport=udp"
    # s12.1.2: the response's Record-Route, reversed.
    assert d.route_set == ("<sip:p1.atlanta.example.com;lr>", "<sip:p2.biloxi.example.com;lr>")
    assert d.local_contact == "<sip:sb@192.0.2.1:5060>"
    assert d.secure is False


def test_uac_confirmed_dialog_from_200() -> None:
    d = uac_dialog(200, reason="OK")
    assert d.state is DialogState.CONFIRMED and d.confirmed
    assert d.route_set == ("<sip:p1.atlanta.example.com;lr>", "<sip:p2.biloxi.example.com;lr>")


def test_uac_record_route_on_separate_lines_keeps_overall_order() -> None:
    rr = ("Record-Route: <sip:p3.example.org;lr>\r\n"
          "Record-Route: <sip:p2.biloxi.example.com;lr>, <sip:p1.atlanta.example.com;lr>")
    d = uac_dialog(200, record_route=rr)
    assert d.route_set == ("<sip:p1.atlanta.example.com;lr>", "<sip:p2.biloxi.example.com;lr>",
                           "<sip:p3.example.org;lr>")


def test_uac_without_record_route_has_empty_route_set() -> None:
    assert uac_dialog(200, record_route="").route_set == ()


def test_uac_2xx_without_to_tag_gives_empty_remote_tag() -> None:
    d = uac_dialog(200, to_tag=None)
    assert d.remote_tag == "" and d.id == ("out1@sb.example.net", "ltag1", "")
    bye = roundtrip(d.new_request("BYE", **OUR))
    assert bye.get("to") == "Bob <sip:bob@biloxi.example.com>"
    assert bye.to.tag is None


def test_uac_180_without_contact_falls_back_to_request_uri() -> None:
    d = uac_dialog(180, contact="")
    assert d.remote_target == "sip:bob@biloxi.example.com"
    d.on_response("INVITE", answer(200))
    assert d.remote_target == "sip:bob@192.0.2.44:5062;transport=udp"


@pytest.mark.parametrize("status", [100, 300, 404, 487, 603])
def test_uac_refuses_responses_that_create_no_dialog(status: int) -> None:
    with pytest.raises(ValueError, match="creates no dialog"):
        uac_dialog(status)


def test_uac_refuses_provisional_without_to_tag() -> None:
    with pytest.raises(ValueError, match="without a To tag"):
        uac_dialog(183, to_tag=None)


OTHER_200 = """
    SIP/2.0 200 OK
    Via: SIP/2.0/UDP sb.example.net:5060;branch=z9hG4bKinv1
    From: <sip:alice@atlanta.example.com>;tag=ltag1
    To: <sip:bob@biloxi.example.com>;tag=x
    Call-ID: another@sb.example.net
    CSeq: 101 INVITE
    Contact: <sip:bob@192.0.2.44>
"""


def test_uac_refuses_a_response_to_another_request() -> None:
    with pytest.raises(ValueError, match="Call-ID"):
        Dialog.uac(out_invite(), resp(OTHER_200))
    wrong_tag = resp(OTHER_200.replace("another@", "out1@").replace("ltag1", "zzz"))
    with pytest.raises(ValueError, match="From tag"):
        Dialog.uac(out_invite(), wrong_tag)


def test_uac_secure_flag() -> None:
    sips = req(OUT_INVITE.replace("INVITE sip:bob", "INVITE sips:bob")
               .replace("SIP/2.0/UDP sb", "SIP/2.0/TLS sb"))
    assert Dialog.uac(sips, answer(200)).secure is True
    sips_udp = req(OUT_INVITE.replace("INVITE sip:bob", "INVITE sips:bob"))
    assert Dialog.uac(sips_udp, answer(200)).secure is False
    assert Dialog.uac(out_invite(), answer(200), secure=True).secure is True


# --------------------------------------------------------------------------
# UAS dialogs (s12.1.1)
# --------------------------------------------------------------------------
def test_uas_dialog_from_invite() -> None:
    d = uas_dialog()
    assert d.state is DialogState.EARLY
    assert d.id == ("in1@198.51.100.5", "ourtag", "rtag9")
    assert d.local_uri == "<sip:+18195550100@sb.example.net>"
    assert d.remote_uri == '"Carol C" <sip:carol@chicago.example.com>'
    assert d.remote_cseq == 4711
    assert d.local_cseq == 0
    # Contact URI only: display name and header parameters dropped.
    assert d.remote_target == "sip:carol@198.51.100.5:5060;ob"
    # s12.1.1: Record-Route in order, URI parameters preserved.
    assert d.route_set == ("<sip:p2.example.com;lr>", "<sip:p1.example.com;lr;ftag=rtag9>")
    assert d.local_contact == "<sip:sb@192.0.2.1:5060>"
    assert d.secure is False


def test_uas_confirmed_and_bare_contact() -> None:
    d = Dialog.uas(in_invite(), "ourtag", "sip:sb@192.0.2.1:5060", confirmed=True)
    assert d.state is DialogState.CONFIRMED
    assert d.local_contact == "<sip:sb@192.0.2.1:5060>"


def test_uas_initial_local_cseq_is_random_below_2_20() -> None:
    seen = {Dialog.uas(in_invite(), "t", "<sip:sb@h>").local_cseq for _ in range(50)}
    assert len(seen) > 40
    assert all(0 <= n < 2**20 for n in seen)


def test_uas_without_from_tag_is_rfc2543_empty_tag() -> None:
    text = IN_INVITE.replace(";tag=rtag9", "").replace(";ftag=rtag9", "")
    d = Dialog.uas(in_invite(text), "ourtag", "<sip:sb@h>")
    assert d.remote_tag == ""
    assert d.id == ("in1@198.51.100.5", "ourtag", "")
    bye = roundtrip(d.new_request("BYE", **OUR))
    assert bye.get("to") == '"Carol C" <sip:carol@chicago.example.com>'


def test_uas_refusals() -> None:
    with pytest.raises(ValueError, match="local tag"):
        Dialog.uas(in_invite(), "", "<sip:sb@h>")
    tagged = in_invite(IN_INVITE.replace("sb.example.net>", "sb.example.net>;tag=x"))
    with pytest.raises(ValueError, match="To tag"):
        Dialog.uas(tagged, "ourtag", "<sip:sb@h>")
    no_contact = in_invite(IN_INVITE.replace(
        'Contact: "Carol" <sip:carol@198.51.100.5:5060;ob>;expires=60', ""))
    with pytest.raises(ValueError, match="Contact"):
        Dialog.uas(no_contact, "ourtag", "<sip:sb@h>")
    tel_contact = in_invite(IN_INVITE.replace(
        '"Carol" <sip:carol@198.51.100.5:5060;ob>;expires=60', "<tel:+15555550100>"))
    with pytest.raises(ValueError, match="Contact"):
        Dialog.uas(tel_contact, "ourtag", "<sip:sb@h>")


def test_uas_secure_flag() -> None:
    text = IN_INVITE.replace("INVITE sip:+1", "INVITE sips:+1").replace(
        "SIP/2.0/UDP p2", "SIP/2.0/TLS p2")
    assert Dialog.uas(in_invite(text), "t", "<sips:sb@h>").secure is True
    assert uas_dialog().secure is False
    assert uas_dialog(secure=True).secure is True


# --------------------------------------------------------------------------
# Requests inside a dialog (s12.2.1.1)
# --------------------------------------------------------------------------
def test_bye_with_loose_route_set() -> None:
    d = uac_dialog(200)
    bye = roundtrip(d.new_request("BYE", **OUR))
    assert bye.method == "BYE"
    assert bye.uri_text == "sip:bob@192.0.2.44:5062;transport=udp"
    assert bye.get_lines("route") == ["<sip:p1.atlanta.example.com;lr>",
                                      "<sip:p2.biloxi.example.com;lr>"]
    assert bye.get("from") == '"Switchboard" <sip:alice@atlanta.example.com>;tag=ltag1'
    assert bye.get("to") == "Bob <sip:bob@biloxi.example.com>;tag=btag1"
    assert bye.from_.tag == "ltag1" and bye.to.tag == "btag1"
    assert bye.call_id == "out1@sb.example.net"
    assert bye.get("cseq") == "102 BYE"
    assert bye.get("max-forwards") == "70"
    assert not bye.has("contact")
    assert not bye.has("content-type")
    assert bye.body == b""
    transport, sent_by, branch = via_of(bye)
    assert (transport, sent_by) == ("UDP", "sb.example.net:5060")
    assert bye.transaction_branch == branch
    assert [h[0] for h in bye.headers] == ["via", "max-forwards", "route", "route", "from",
                                           "to", "call-id", "cseq", "content-length"]
    assert d.local_cseq == 102


def test_cseq_increments_and_branches_differ() -> None:
    d = uac_dialog(200)
    reqs = [roundtrip(d.new_request(m, **OUR)) for m in ("INFO", "OPTIONS", "UPDATE", "BYE")]
    assert [r.cseq.number for r in reqs] == [102, 103, 104, 105]
    assert [r.cseq.method for r in reqs] == ["INFO", "OPTIONS", "UPDATE", "BYE"]
    assert len({via_of(r)[2] for r in reqs}) == 4
    assert d.local_cseq == 105


def test_strict_first_route() -> None:
    # p1 (nearest to us) is an RFC 2543 strict router: no lr.
    rr = "Record-Route: <sip:p2.biloxi.example.com;lr>, <sip:10.0.0.1:5070;transport=tcp>"
    d = uac_dialog(200, record_route=rr)
    assert d.route_set == ("<sip:10.0.0.1:5070;transport=tcp>", "<sip:p2.biloxi.example.com;lr>")
    bye = roundtrip(d.new_request("BYE", **OUR))
    # s12.2.1.1: R-URI = first route; Route = the rest, then the remote target.
    assert bye.uri_text == "sip:10.0.0.1:5070;transport=tcp"
    assert bye.get_lines("route") == ["<sip:p2.biloxi.example.com;lr>",
                                      "<sip:bob@192.0.2.44:5062;transport=udp>"]
    assert d.next_hop() == ("10.0.0.1", 5070, "tcp")


def test_strict_single_route() -> None:
    d = uac_dialog(200, record_route="Record-Route: <sip:strict.example.com>")
    bye = roundtrip(d.new_request("BYE", **OUR))
    assert bye.uri_text == "sip:strict.example.com"
    assert bye.get_lines("route") == ["<sip:bob@192.0.2.44:5062;transport=udp>"]


def test_strict_route_loses_parameters_forbidden_in_a_request_uri() -> None:
    rr = "Record-Route: <sip:strict.example.com;maddr=10.0.0.9;method=INVITE?X-A=1>"
    d = uac_dialog(200, record_route=rr)
    bye = roundtrip(d.new_request("BYE", **OUR))
    # s12.2.1.1 / s19.1.1 Table 1: no method parameter, no headers in a Request-URI.
    assert bye.uri_text == "sip:strict.example.com;maddr=10.0.0.9"
    assert d.next_hop() == ("10.0.0.9", None, "udp")


def test_loose_first_route_wins_over_strict_later_ones() -> None:
    rr = "Record-Route: <sip:strict.example.com>, <sip:p1.atlanta.example.com;lr>"
    d = uac_dialog(200, record_route=rr)
    bye = roundtrip(d.new_request("BYE", **OUR))
    assert bye.uri_text == "sip:bob@192.0.2.44:5062;transport=udp"
    assert bye.get_lines("route") == ["<sip:p1.atlanta.example.com;lr>",
                                      "<sip:strict.example.com>"]


def test_no_route_set_means_no_route_header() -> None:
    d = uac_dialog(200, record_route="")
    bye = roundtrip(d.new_request("BYE", **OUR))
    assert bye.uri_text == "sip:bob@192.0.2.44:5062;transport=udp"
    assert not bye.has("route")


def test_remote_target_headers_are_not_put_in_the_request_uri() -> None:
    d = uac_dialog(200, record_route="",
                   contact="Contact: <sip:bob@192.0.2.44;method=INVITE?Subject=hi>")
    assert d.remote_target == "sip:bob@192.0.2.44;method=INVITE?Subject=hi"
    assert roundtrip(d.new_request("BYE", **OUR)).uri_text == "sip:bob@192.0.2.44"


def test_reinvite_carries_contact_and_body() -> None:
    d = uac_dialog(200)
    sdp = b"v=0\r\no=- 1 2 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
    inv = roundtrip(d.new_request("INVITE", body=sdp, content_type="application/sdp", **OUR))
    assert inv.get("contact") == "<sip:sb@192.0.2.1:5060>"
    assert inv.get("content-type") == "application/sdp"
    assert inv.get("content-length") == str(len(sdp))
    assert inv.body == sdp
    assert inv.get("cseq") == "102 INVITE"
    assert inv.uri_text == "sip:bob@192.0.2.44:5062;transport=udp"
    upd = roundtrip(d.new_request("UPDATE", **OUR))
    assert upd.get("contact") == "<sip:sb@192.0.2.1:5060>"


@pytest.mark.parametrize("method", sorted(CONTACT_METHODS))
def test_contact_methods(method: str) -> None:
    r = roundtrip(uac_dialog(200).new_request(method, **OUR))
    assert r.get("contact") == "<sip:sb@192.0.2.1:5060>"


@pytest.mark.parametrize("method", ["BYE", "INFO", "OPTIONS", "MESSAGE", "PRACK"])
def test_no_contact_for_other_methods(method: str) -> None:
    assert not roundtrip(uac_dialog(200).new_request(method, **OUR)).has("contact")


def test_extra_headers_and_overrides() -> None:
    d = uac_dialog(200)
    r = roundtrip(d.new_request("INVITE", headers=[
        ("Max-Forwards", "42"), ("Contact", "<sip:other@192.0.2.2>"),
        ("Supported", "timer"), ("Content-Type", "application/sdp")], body=b"v=0\r\n", **OUR))
    assert r.get_lines("max-forwards") == ["42"]
    assert r.get_lines("contact") == ["<sip:other@192.0.2.2>"]
    assert r.get("supported") == "timer"
    assert r.get_lines("content-type") == ["application/sdp"]


@pytest.mark.parametrize("name", ["Via", "From", "t", "Call-ID", "CSeq", "Route", "l"])
def test_dialog_owned_headers_are_refused(name: str) -> None:
    d = uac_dialog(200)
    with pytest.raises(ValueError, match="writes"):
        d.new_request("INFO", headers=[(name, "x")], **OUR)
    assert d.local_cseq == 101  # nothing consumed


def test_body_needs_a_content_type() -> None:
    d = uac_dialog(200)
    with pytest.raises(ValueError, match="Content-Type"):
        d.new_request("INFO", body=b"hello", **OUR)
    with pytest.raises(ValueError, match="twice"):
        d.new_request("INFO", body=b"hello", content_type="text/plain",
                      headers=[("Content-Type", "text/plain")], **OUR)
    assert d.local_cseq == 101


@pytest.mark.parametrize("method", ["ACK", "CANCEL", "ack"])
def test_new_request_refuses_ack_and_cancel(method: str) -> None:
    d = uac_dialog(200)
    with pytest.raises(ValueError, match=r"ack\(\)|s9\.1"):
        d.new_request(method, **OUR)
    assert d.local_cseq == 101


def test_new_request_refused_on_terminated_dialog() -> None:
    d = uac_dialog(200)
    d.terminate()
    with pytest.raises(ValueError, match="terminated"):
        d.new_request("BYE", **OUR)


def test_cseq_limit() -> None:
    d = uac_dialog(200)
    d.local_cseq = 2**31 - 2
    assert roundtrip(d.new_request("INFO", **OUR)).cseq.number == 2**31 - 1
    with pytest.raises(ValueError, match="exhausted"):
        d.new_request("INFO", **OUR)
    with pytest.raises(ValueError, match="2\\*\\*31"):
        Dialog(call_id="c", local_tag="a", remote_tag="b", local_uri="<sip:a@h>",
               remote_uri="<sip:b@h>", remote_target="sip:b@h", local_cseq=2**31)


def test_via_transport_and_ipv6_host() -> None:
    d = uac_dialog(200)
    r = roundtrip(d.new_request("OPTIONS", via_host="2001:db8::1", via_port=5080,
                                transport="tcp"))
    transport, sent_by, _ = via_of(r)
    assert (transport, sent_by) == ("TCP", "[2001:db8::1]:5080")
    assert r.top_via.host == "[2001:db8::1]" and r.top_via.port == 5080
    assert r.top_via.rport == ""
    r = roundtrip(d.new_request("OPTIONS", via_host="[2001:db8::2]", via_port=5061,
                                transport="TLS"))
    assert via_of(r)[:2] == ("TLS", "[2001:db8::2]:5061")


def test_uas_dialog_requests_swap_from_and_to() -> None:
    d = uas_dialog()
    bye = roundtrip(d.new_request("BYE", **OUR))
    assert bye.uri_text == "sip:carol@198.51.100.5:5060;ob"
    assert bye.get_lines("route") == ["<sip:p2.example.com;lr>",
                                      "<sip:p1.example.com;lr;ftag=rtag9>"]
    assert bye.get("from") == "<sip:+18195550100@sb.example.net>;tag=ourtag"
    assert bye.get("to") == '"Carol C" <sip:carol@chicago.example.com>;tag=rtag9'
    assert bye.get("cseq") == "1 BYE"  # local_cseq=0: the first request is 1
    assert d.next_hop() == ("p2.example.com", None, "udp")


def test_built_requests_start_client_transactions() -> None:
    d = uac_dialog(200)
    layer = TransactionLayer()
    bye = d.new_request("BYE", **OUR)
    key, events = layer.send_request(bye, ("192.0.2.50", 5060), "udp", 0.0)
    assert key.method == "BYE" and key.branch == via_of(bye)[2]
    assert events == [Send(bye.to_bytes(), ("192.0.2.50", 5060), "udp")]
    # A response the peer builds from it carries the dialog's ID back.
    assert response_id(make_response(roundtrip(bye), 200)) == d.id


# --------------------------------------------------------------------------
# ACK for a 2xx (s13.2.2.4)
# --------------------------------------------------------------------------
def test_ack_for_2xx() -> None:
    d = uac_dialog(200)
    ack = roundtrip(d.ack(101, **OUR))
    assert ack.method == "ACK"
    assert ack.get("cseq") == "101 ACK"
    assert d.local_cseq == 101  # not incremented
    assert ack.uri_text == "sip:bob@192.0.2.44:5062;transport=udp"
    assert ack.get_lines("route") == ["<sip:p1.atlanta.example.com;lr>",
                                      "<sip:p2.biloxi.example.com;lr>"]
    assert ack.get("from") == '"Switchboard" <sip:alice@atlanta.example.com>;tag=ltag1'
    assert ack.get("to") == "Bob <sip:bob@biloxi.example.com>;tag=btag1"
    assert ack.call_id == "out1@sb.example.net"
    assert ack.get("max-forwards") == "70"
    assert not ack.has("contact")
    branch = via_of(ack)[2]
    assert branch != "z9hG4bKinv1"  # s13.2.2.4: not the INVITE's branch
    assert via_of(roundtrip(d.ack(101, **OUR)))[2] != branch
    # Still CSeq 102 next.
    assert d.new_request("BYE", **OUR).cseq.number == 102


def test_ack_for_reinvite_and_with_sdp() -> None:
    d = uac_dialog(200)
    reinvite = d.new_request("INVITE", **OUR)  # late offer
    d.new_request("INFO", **OUR)
    ack = roundtrip(d.ack(reinvite.cseq.number, body=b"v=0\r\n",
                          content_type="application/sdp", **OUR))
    assert ack.get("cseq") == "102 ACK"
    assert ack.body == b"v=0\r\n" and ack.get("content-type") == "application/sdp"
    assert d.local_cseq == 103


def test_ack_strict_route() -> None:
    d = uac_dialog(200, record_route="Record-Route: <sip:strict.example.com>")
    ack = roundtrip(d.ack(101, **OUR))
    assert ack.uri_text == "sip:strict.example.com"
    assert ack.get_lines("route") == ["<sip:bob@192.0.2.44:5062;transport=udp>"]


@pytest.mark.parametrize("cseq", [102, -1])
def test_ack_for_an_unsent_invite_is_refused(cseq: int) -> None:
    with pytest.raises(ValueError, match="never sent"):
        uac_dialog(200).ack(cseq, **OUR)


def test_ack_is_no_client_transaction() -> None:
    with pytest.raises(ValueError, match="ACK"):
        TransactionLayer().send_request(uac_dialog(200).ack(101, **OUR),
                                        ("192.0.2.50", 5060), "udp", 0.0)


# --------------------------------------------------------------------------
# next_hop (RFC 3263 without DNS)
# --------------------------------------------------------------------------
@pytest.mark.parametrize(("uri", "hop"), [
    ("sip:bob@192.0.2.44", ("192.0.2.44", None, "udp")),
    ("sip:bob@192.0.2.44:5062", ("192.0.2.44", 5062, "udp")),
    ("sip:bob@Client.Biloxi.Example.COM;transport=TCP", ("client.biloxi.example.com", None,
                                                         "tcp")),
    ("sip:bob@h.example.com:5070;transport=tls", ("h.example.com", 5070, "tls")),
    ("sips:bob@h.example.com", ("h.example.com", None, "tls")),
    ("sips:bob@h.example.com:5061", ("h.example.com", 5061, "tls")),
    ("sips:bob@h.example.com;transport=tcp", ("h.example.com", None, "tls")),
    ("sips:bob@h.example.com;transport=ws", ("h.example.com", None, "ws")),
    ("sip:bob@[2001:db8::7]:5062", ("2001:db8::7", 5062, "udp")),
    ("sip:bob@h.example.com;maddr=192.0.2.9;transport=sctp", ("192.0.2.9", None, "sctp")),
])
def test_next_hop_remote_target(uri: str, hop: tuple[str, int | None, str]) -> None:
    d = uac_dialog(200, record_route="", contact=f"Contact: <{uri}>")
    assert d.next_hop() == hop


@pytest.mark.parametrize(("route", "hop"), [
    ("<sip:p1.atlanta.example.com;lr>", ("p1.atlanta.example.com", None, "udp")),
    ("<sip:192.0.2.7:5080;transport=tcp;lr>", ("192.0.2.7", 5080, "tcp")),
    ("<sips:edge.example.com;lr>", ("edge.example.com", None, "tls")),
    ("<sips:edge.example.com:5071;lr>", ("edge.example.com", 5071, "tls")),
    ("<sip:[2001:db8::1];lr>", ("2001:db8::1", None, "udp")),
])
def test_next_hop_first_route(route: str, hop: tuple[str, int | None, str]) -> None:
    d = uac_dialog(200, record_route=f"Record-Route: <sip:far.example.com;lr>, {route}")
    assert d.route_set[0] == route
    assert d.next_hop() == hop


def test_next_hop_refuses_non_sip_target() -> None:
    d = uac_dialog(200, record_route="")
    d.remote_target = "tel:+15555550100"
    with pytest.raises(ValueError, match="not a SIP"):
        d.next_hop()


# --------------------------------------------------------------------------
# Requests from the peer (s12.2.2)
# --------------------------------------------------------------------------
def test_reinvite_refreshes_remote_target() -> None:
    d = uas_dialog(confirmed=True)
    reinvite = in_dialog("INVITE", 4712, contact="Contact: <sip:carol@203.0.113.9:5090>")
    assert d.on_request(reinvite) is None
    assert d.remote_cseq == 4712
    assert d.remote_target == "sip:carol@203.0.113.9:5090"
    assert d.route_set == ("<sip:p2.example.com;lr>", "<sip:p1.example.com;lr;ftag=rtag9>")
    assert roundtrip(d.new_request("BYE", **OUR)).uri_text == "sip:carol@203.0.113.9:5090"


def test_update_refreshes_remote_target_info_does_not() -> None:
    d = uas_dialog(confirmed=True)
    assert d.on_request(in_dialog("INFO", 4712, contact="Contact: <sip:x@203.0.113.1>")) is None
    assert d.remote_target == "sip:carol@198.51.100.5:5060;ob"
    assert d.on_request(in_dialog("UPDATE", 4713, contact="Contact: <sip:y@203.0.113.2>")) \
        is None
    assert d.remote_target == "sip:y@203.0.113.2"
    assert d.remote_cseq == 4713
    assert {"INVITE", "UPDATE"} == TARGET_REFRESH


def test_reinvite_without_contact_keeps_target() -> None:
    d = uas_dialog(confirmed=True)
    assert d.on_request(in_dialog("INVITE", 4800)) is None
    assert d.remote_target == "sip:carol@198.51.100.5:5060;ob"
    assert d.remote_cseq == 4800


def test_target_refresh_with_non_sip_contact_is_400() -> None:
    d = uas_dialog(confirmed=True)
    assert d.on_request(in_dialog("INVITE", 4712, contact="Contact: <tel:+15555550100>")) == 400
    assert d.remote_cseq == 4711
    assert d.remote_target == "sip:carol@198.51.100.5:5060;ob"


@pytest.mark.parametrize("cseq", [4711, 4710, 1])
def test_lower_or_equal_cseq_is_500(cseq: int) -> None:
    d = uas_dialog(confirmed=True)
    r = in_dialog("INVITE", cseq, contact="Contact: <sip:carol@203.0.113.9>")
    assert d.on_request(r) == 500
    assert d.remote_cseq == 4711
    assert d.remote_target == "sip:carol@198.51.100.5:5060;ob"
    assert d.state is DialogState.CONFIRMED
    assert d.on_request(in_dialog("BYE", cseq)) == 500
    assert d.state is DialogState.CONFIRMED


def test_ack_and_cancel_reuse_the_invite_cseq() -> None:
    d = uas_dialog()
    assert d.on_request(in_dialog("CANCEL", 4711)) is None
    d.on_response_sent("INVITE", 200)
    assert d.on_request(in_dialog("ACK", 4711)) is None
    assert d.remote_cseq == 4711
    assert d.state is DialogState.CONFIRMED


def test_gaps_in_remote_cseq_are_fine() -> None:
    d = uas_dialog(confirmed=True)
    assert d.on_request(in_dialog("INFO", 5000)) is None
    assert d.on_request(in_dialog("INFO", 4999)) == 500
    assert d.remote_cseq == 5000


def test_uac_dialog_accepts_any_first_remote_cseq() -> None:
    d = uac_dialog(200)
    assert d.remote_cseq is None
    bye = req("""
        BYE sip:sb@192.0.2.1:5060 SIP/2.0
        Via: SIP/2.0/UDP p2.biloxi.example.com;branch=z9hG4bKbye1
        Max-Forwards: 70
        From: Bob <sip:bob@biloxi.example.com>;tag=btag1
        To: "Switchboard" <sip:alice@atlanta.example.com>;tag=ltag1
        Call-ID: out1@sb.example.net
        CSeq: 7 BYE
    """)
    assert d.on_request(bye) is None
    assert d.remote_cseq == 7
    assert d.state is DialogState.TERMINATED


def test_bye_terminates_and_later_requests_get_481() -> None:
    d = uas_dialog(confirmed=True)
    assert d.on_request(in_dialog("BYE", 4712)) is None
    assert d.state is DialogState.TERMINATED and d.terminated
    assert d.on_request(in_dialog("INFO", 4713)) == 481
    assert d.remote_cseq == 4712


def test_bye_on_early_dialog_terminates() -> None:
    d = uas_dialog()
    assert d.on_request(in_dialog("BYE", 4712)) is None
    assert d.state is DialogState.TERMINATED


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=2**31 - 1), max_size=30))
def test_remote_cseq_only_moves_up(numbers: list[int]) -> None:
    d = uas_dialog(confirmed=True)
    highest = 4711
    for n in numbers:
        status = d.on_request(in_dialog("INFO", n))
        assert status == (None if n > highest else 500)
        highest = max(highest, n)
        assert d.remote_cseq == highest


# --------------------------------------------------------------------------
# Responses to our requests (s12.2.1.2, s13.2.2.4)
# --------------------------------------------------------------------------
def test_early_to_confirmed_recomputes_route_set_and_target() -> None:
    d = uac_dialog(180)
    assert d.route_set == ("<sip:p1.atlanta.example.com;lr>", "<sip:p2.biloxi.example.com;lr>")
    # A later 1xx of the same dialog changes nothing.
    d.on_response("INVITE", answer(183, record_route="Record-Route: <sip:x.example;lr>",
                                   contact="Contact: <sip:bob@192.0.2.99>"))
    assert d.state is DialogState.EARLY
    assert d.route_set == ("<sip:p1.atlanta.example.com;lr>", "<sip:p2.biloxi.example.com;lr>")
    assert d.remote_target == "sip:bob@192.0.2.44:5062;transport=udp"
    # s13.2.2.4: the 2xx recomputes the route set.
    ok = answer(200, record_route="Record-Route: <sip:p3.example.org;lr>, "
                                  "<sip:p1.atlanta.example.com;lr>",
                contact="Contact: <sip:bob@192.0.2.45>")
    d.on_response("INVITE", ok)
    assert d.confirmed
    assert d.route_set == ("<sip:p1.atlanta.example.com;lr>", "<sip:p3.example.org;lr>")
    assert d.remote_target == "sip:bob@192.0.2.45"


def test_2xx_without_record_route_empties_the_early_route_set() -> None:
    d = uac_dialog(180)
    d.on_response("INVITE", answer(200, record_route=""))
    assert d.route_set == ()


def test_garbled_record_route_keeps_route_set() -> None:
    d = uac_dialog(180)
    d.on_response("INVITE", answer(200, record_route="Record-Route: <sip:bad host;lr>"))
    assert d.state is DialogState.CONFIRMED
    assert d.route_set == ("<sip:p1.atlanta.example.com;lr>", "<sip:p2.biloxi.example.com;lr>")


def test_reinvite_2xx_refreshes_target_not_route_set() -> None:
    d = uac_dialog(200)
    d.new_request("INVITE", **OUR)
    d.on_response("INVITE", answer(200, cseq="102 INVITE",
                                   record_route="Record-Route: <sip:other.example;lr>",
                                   contact="Contact: <sip:bob@203.0.113.7:5070>"))
    assert d.remote_target == "sip:bob@203.0.113.7:5070"
    assert d.route_set == ("<sip:p1.atlanta.example.com;lr>", "<sip:p2.biloxi.example.com;lr>")
    assert d.state is DialogState.CONFIRMED


def test_update_2xx_refreshes_target_info_2xx_does_not() -> None:
    d = uac_dialog(200)
    d.on_response("INFO", answer(200, cseq="102 INFO", contact="Contact: <sip:no@192.0.2.1>"))
    assert d.remote_target == "sip:bob@192.0.2.44:5062;transport=udp"
    d.on_response("UPDATE", answer(200, cseq="103 UPDATE", contact="Contact: <sip:y@192.0.2.8>"))
    assert d.remote_target == "sip:y@192.0.2.8"


def test_update_2xx_on_early_dialog_refreshes_target_but_does_not_confirm() -> None:
    d = uac_dialog(183)
    d.on_response("UPDATE", answer(200, cseq="102 UPDATE", contact="Contact: <sip:e@192.0.2.3>",
                                   record_route="Record-Route: <sip:zz.example;lr>"))
    assert d.early
    assert d.remote_target == "sip:e@192.0.2.3"
    assert d.route_set == ("<sip:p1.atlanta.example.com;lr>", "<sip:p2.biloxi.example.com;lr>")
    d.on_response("UPDATE", answer(488, cseq="103 UPDATE"))
    assert d.early  # only the INVITE's failure ends an early dialog


def test_reinvite_2xx_without_contact_keeps_target() -> None:
    d = uac_dialog(200)
    d.on_response("INVITE", answer(200, cseq="102 INVITE", contact=""))
    assert d.remote_target == "sip:bob@192.0.2.44:5062;transport=udp"


@pytest.mark.parametrize(("method", "status"), [("INFO", 481), ("INVITE", 408),
                                                ("UPDATE", 481), ("OPTIONS", 408)])
def test_481_and_408_terminate(method: str, status: int) -> None:
    d = uac_dialog(200)
    d.on_response(method, answer(status, cseq=f"102 {method}"))
    assert d.state is DialogState.TERMINATED


@pytest.mark.parametrize("status", [486, 488, 491, 500])
def test_failed_reinvite_keeps_the_dialog(status: int) -> None:
    d = uac_dialog(200)
    d.on_response("INVITE", answer(status, cseq="102 INVITE"))
    assert d.state is DialogState.CONFIRMED
    assert d.remote_target == "sip:bob@192.0.2.44:5062;transport=udp"


@pytest.mark.parametrize("status", [302, 404, 486, 487, 603])
def test_failed_initial_invite_ends_early_dialog(status: int) -> None:
    d = uac_dialog(180)
    d.on_response("INVITE", answer(status))
    assert d.state is DialogState.TERMINATED


@pytest.mark.parametrize("status", [200, 481, 500])
def test_any_final_response_to_bye_terminates(status: int) -> None:
    d = uac_dialog(200)
    d.new_request("BYE", **OUR)
    d.on_response("BYE", answer(status, cseq="102 BYE"))
    assert d.state is DialogState.TERMINATED


def test_provisional_and_terminated_are_no_ops() -> None:
    d = uac_dialog(200)
    d.on_response("INVITE", answer(180, cseq="102 INVITE", contact="Contact: <sip:q@1.2.3.4>"))
    assert d.state is DialogState.CONFIRMED
    assert d.remote_target == "sip:bob@192.0.2.44:5062;transport=udp"
    d.terminate()
    d.on_response("INVITE", answer(200, cseq="102 INVITE"))
    assert d.terminated


def test_on_response_sent_moves_uas_dialog() -> None:
    d = uas_dialog()
    d.on_response_sent("INVITE", 180)
    assert d.early
    d.on_response_sent("INVITE", 200)
    assert d.confirmed
    d.on_response_sent("INVITE", 488)  # a failed re-INVITE
    assert d.state is DialogState.CONFIRMED
    e = uas_dialog()
    e.on_response_sent("INVITE", 486)
    assert e.state is DialogState.TERMINATED
    f = uas_dialog()
    f.on_response_sent("UPDATE", 200)
    assert f.state is DialogState.EARLY


# --------------------------------------------------------------------------
# Forking
# --------------------------------------------------------------------------
def test_forked_early_dialogs_are_told_apart() -> None:
    invite = out_invite()
    r1 = answer(180, to_tag="fork-a", contact="Contact: <sip:bob@192.0.2.61>")
    r2 = answer(183, to_tag="fork-b", contact="Contact: <sip:bob@192.0.2.62>",
                record_route="Record-Route: <sip:p9.example.com;lr>")
    a, b = Dialog.uac(invite, r1), Dialog.uac(invite, r2)
    assert a.call_id == b.call_id and a.local_tag == b.local_tag
    assert a.id == ("out1@sb.example.net", "ltag1", "fork-a") == response_id(r1)
    assert b.id == ("out1@sb.example.net", "ltag1", "fork-b") == response_id(r2)
    assert a.remote_target == "sip:bob@192.0.2.61"
    assert b.remote_target == "sip:bob@192.0.2.62"
    assert b.route_set == ("<sip:p9.example.com;lr>",)
    # The 2xx comes from fork b: confirm it, end the others (s12.3 is the TU's call).
    ok = answer(200, to_tag="fork-b", contact="Contact: <sip:bob@192.0.2.62>")
    assert response_id(ok) == b.id
    b.on_response("INVITE", ok)
    a.terminate()
    assert b.confirmed and a.terminated


def test_repr() -> None:
    assert repr(uac_dialog(180)) == ("<Dialog early call_id='out1@sb.example.net' "
                                     "local_tag='ltag1' remote_tag='btag1'>")


# --------------------------------------------------------------------------
# Both ends built by this module talk to each other
# --------------------------------------------------------------------------
def test_uac_and_uas_ends_agree() -> None:
    """Switchboard calls itself: the UAS end is made from the INVITE, the UAC end
    from the UAS's 200; each end's requests carry the other end's dialog ID."""
    caller_tag, callee_tag = new_tag(), new_tag()
    invite = req(f"""
        INVITE sip:bob@192.0.2.2 SIP/2.0
        Via: SIP/2.0/UDP 192.0.2.1:5060;branch={new_branch()};rport
        Max-Forwards: 70
        From: <sip:alice@example.com>;tag={caller_tag}
        To: <sip:bob@example.com>
        Call-ID: {new_call_id("192.0.2.1")}
        CSeq: 1 INVITE
        Contact: <sip:alice@192.0.2.1:5060>
        Record-Route: <sip:proxy.example.com;lr>
    """)
    callee = Dialog.uas(invite, callee_tag, "<sip:bob@192.0.2.2:5060>", local_cseq=900)
    ok = make_response(invite, 200, to_tag=callee_tag, headers=[  # copies Record-Route
        ("Contact", callee.local_contact)])
    assert ok.get_all("record-route") == ["<sip:proxy.example.com;lr>"]
    callee.on_response_sent("INVITE", 200)
    caller = Dialog.uac(invite, ok)
    assert caller.id == (callee.call_id, callee.remote_tag, callee.local_tag)
    assert caller.route_set == callee.route_set == ("<sip:proxy.example.com;lr>",)
    ack = roundtrip(caller.ack(1, **OUR))
    assert request_id(ack) == callee.id
    assert callee.on_request(ack) is None

    info = roundtrip(callee.new_request("INFO", **OUR))
    assert info.get("cseq") == "901 INFO"
    assert info.uri_text == "sip:alice@192.0.2.1:5060"
    assert request_id(info) == caller.id
    assert caller.on_request(info) is None and caller.remote_cseq == 901
    assert response_id(make_response(info, 200)) != caller.id  # not ours

    reinvite = roundtrip(caller.new_request(
        "INVITE", headers=[("Contact", "<sip:alice@192.0.2.99:5060>")], **OUR))
    assert request_id(reinvite) == callee.id
    assert callee.on_request(reinvite) is None
    assert callee.remote_target == "sip:alice@192.0.2.99:5060"
    ok2 = make_response(reinvite, 200, headers=[("Contact", "<sip:bob@192.0.2.22>")])
    assert response_id(ok2) == caller.id
    caller.on_response("INVITE", ok2)
    assert caller.remote_target == "sip:bob@192.0.2.22"
    assert roundtrip(caller.ack(reinvite.cseq.number, **OUR)).get("cseq") == "2 ACK"

    bye = roundtrip(callee.new_request("BYE", **OUR))
    assert bye.uri_text == "sip:alice@192.0.2.99:5060"
    assert caller.on_request(bye) is None and caller.terminated
    callee.on_response("BYE", make_response(bye, 200))
    assert callee.terminated


# --------------------------------------------------------------------------
# RFC 3665 call flows (shared conformance corpus)
# --------------------------------------------------------------------------
def callflow(name: str) -> list[Request | Response]:
    path = CALLFLOWS / "rfc3665" / name
    if not path.exists():
        pytest.fail(f"{path} is missing: the conformance corpus lives in ../shared beside "
                    "the checkout")
    blocks = re.split(r"^- \|\+\n", path.read_text(), flags=re.M)[1:]
    out: list[Request | Response] = []
    for block in blocks:
        lines = [line[2:] if line.startswith("  ") else line
                 for line in block.rstrip("\n").split("\n")]
        text = "\r\n".join(lines)
        out.append(parse((text + ("\r\n" if "\r\n\r\n" in text else "\r\n\r\n")).encode()))
    return out


def same_except_via_and_uri(ours: Request, theirs: Request | Response) -> None:
    """Our request equals the RFC's but for the Via (a fresh branch, rport) and
    line folding; the RFC 3665 examples drop the Contact's ``transport``
    parameter from the Request-URI, which RFC 3261 s12.2.1.1 keeps."""
    assert isinstance(theirs, Request)
    assert ours.method == theirs.method
    for name in ("max-forwards", "from", "to", "call-id", "cseq", "content-length"):
        assert ours.get(name) == theirs.get(name), name
    assert ours.get_all("route") == theirs.get_all("route")
    assert ours.uri.host == theirs.uri.host and ours.uri.user == theirs.uri.user


def test_rfc3665_session_through_two_proxies() -> None:
    """RFC 3665 s3.2: Alice (UAC) and Bob (UAS) through two record-routing proxies."""
    m = callflow("3.02_session-establishment-through-two-proxies.yaml")
    f4, f7, f11, f14, f15, f18, f20, f23 = m[3], m[6], m[10], m[13], m[14], m[17], m[19], m[22]
    assert isinstance(f4, Request) and isinstance(f7, Request) and isinstance(f20, Request)
    assert isinstance(f11, Response) and isinstance(f14, Response)
    assert isinstance(f23, Response)

    alice = Dialog.uac(f4, f11)
    assert alice.early and alice.id == ("3848276298220188511@atlanta.example.com",
                                        "9fxced76sl", "314159")
    alice.on_response("INVITE", f14)
    assert alice.confirmed
    assert alice.route_set == ("<sip:ss1.atlanta.example.com;lr>",
                               "<sip:ss2.biloxi.example.com;lr>")
    assert alice.remote_target == "sip:bob@client.biloxi.example.com;transport=tcp"
    assert alice.next_hop() == ("ss1.atlanta.example.com", None, "udp")

    ack = roundtrip(alice.ack(2, via_host="client.atlanta.example.com", via_port=5060,
                              transport="TCP"))
    same_except_via_and_uri(ack, f15)
    assert ack.uri_text == "sip:bob@client.biloxi.example.com;transport=tcp"

    bob = Dialog.uas(f7, "314159", "<sip:bob@client.biloxi.example.com;transport=tcp>",
                     local_cseq=0)
    bob.on_response_sent("INVITE", 200)
    assert bob.confirmed and bob.id == (alice.call_id, "314159", "9fxced76sl")
    assert bob.route_set == ("<sip:ss2.biloxi.example.com;lr>",
                             "<sip:ss1.atlanta.example.com;lr>")
    assert bob.remote_cseq == 2
    bye = roundtrip(bob.new_request("BYE", via_host="client.biloxi.example.com",
                                    via_port=5060, transport="TCP"))
    same_except_via_and_uri(bye, f18)
    assert bye.uri_text == "sip:alice@client.atlanta.example.com;transport=tcp"

    assert request_id(f20) == alice.id
    assert alice.on_request(f20) is None
    assert alice.terminated and alice.remote_cseq == 1
    bob.on_response("BYE", f23)
    assert bob.terminated


def test_rfc3665_reinvite_ip_address_change() -> None:
    """RFC 3665 s3.7: Bob's re-INVITE moves the remote target; Alice's BYE follows."""
    m = callflow("3.07_session-with-re-invite-ip-address-change.yaml")
    f1, f7, f8, f9, f11, f12 = m[0], m[6], m[7], m[8], m[10], m[11]
    assert isinstance(f1, Request) and isinstance(f7, Response)
    assert isinstance(f9, Request) and isinstance(f11, Request)

    alice = Dialog.uac(f1, f7)
    assert alice.confirmed and alice.route_set == ()
    us: ViaArgs = {"via_host": "client.atlanta.example.com", "via_port": 5060}
    ack = roundtrip(alice.ack(1, **us))
    same_except_via_and_uri(ack, f8)
    assert ack.uri_text == "sip:bob@client.biloxi.example.com" and not ack.has("route")

    assert alice.on_request(f9) is None
    assert alice.remote_target == "sip:bob@client.chicago.example.com"
    assert alice.remote_cseq == 14
    assert alice.on_request(f11) is None  # the ACK: CSeq 14 again, fine
    assert alice.on_request(f9) == 500  # the same CSeq again as a new request

    bye = roundtrip(alice.new_request("BYE", **us))
    same_except_via_and_uri(bye, f12)
    assert bye.uri_text == "sip:bob@client.chicago.example.com"
    assert bye.get("cseq") == "2 BYE"
    assert alice.next_hop() == ("client.chicago.example.com", None, "udp")
