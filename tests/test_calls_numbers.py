"""The number contract in the B2BUA: what an outbound leg presents (From,
P-Asserted-Identity, the phone's P-Preferred-Identity), which number's hold music
and recording a call gets whatever form its DID came in, and billing groups in
logs and metrics. Sans-I/O through Engine.datagram, fake clock (test_calls's
harness); the sockets side is in test_e2e_numbers.py.
"""

from __future__ import annotations

import tomllib

import pytest
from structlog.testing import capture_logs

from engine.calls.events import BridgeMedia, OpenMedia
from engine.core import Engine
from engine.metrics import BILLING_GROUP_LABELS, Metrics
from engine.sip.message import Request
from engine.sip.transaction import Addr
from provisioning.directory import parse_directory
from tests.test_calls import (
    PHONES,
    SDP,
    TRUNK,
    Clock,
    Net,
    counted,
    in_dialog,
    invite,
    register,
    reply,
    statuses,
)
from tests.test_calls import phone_call as calls_phone_call

DIRECTORY = """
[system]
domain = "pbx.test"
hold_music = ["moh/system.wav"]

[[trunks]]
name = "carrier"
host = "127.0.0.9"
port = 5090
channels = 4
inbound_from = ["127.0.0.9/32"]

[[departments]]
name = "Sales"
caller_id = "+15145550100"

[[numbers]]
number = "+15145550100"
route_to = "extension:101"
caller_id_name = "Example Sales"
billing_group = "sales"
hold_music = ["moh/sales.wav"]
record_inbound = true

[[numbers]]
number = "+15145550200"
route_to = "extension:102"
caller_id_name = "Example Support"
outbound_callers = ["101"]
record_outbound = true
billing_group = "support"
hold_music = ["moh/support.wav"]

[[numbers]]
number = "+15145550300"
route_to = "extension:102"
outbound_callers = ["101"]

[[users]]
extension = "101"
name = "Alice Martin"
password = "pw101"
department = "Sales"

[[users]]
extension = "102"
name = "Bruno Tremblay"
password = "pw102"
department = "Sales"
"""
CALLEE_SDP = (b"v=0\r\no=phone 7 7 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
              b"m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n")


def make_net(anchor: bool = False) -> Net:
    clock = Clock()
    directory = parse_directory(tomllib.loads(DIRECTORY), "<numbers>")
    engine = Engine(directory, {"127.0.0.1", "pbx.test"}, 5060, wall_clock=lambda: clock.wall,
                    digest_algorithms=("MD5",), advertise="127.0.0.1", anchor_media=anchor)
    return Net(engine, clock)


def phone_call(net: Net, caller: str, dialled: str, ppi: str = "") -> Addr:
    """test_calls's phone call, with a P-Preferred-Identity header when ``ppi`` is given
    (as a desk phone with several lines sends it)."""
    extra = [f"P-Preferred-Identity: {ppi}"] if ppi else []
    return calls_phone_call(net, caller, dialled, extra=extra)


def trunk_leg(net: Net) -> Request:
    [out] = [m for m in net.drain(TRUNK) if isinstance(m, Request) and m.method == "INVITE"]
    return out


# ---------------------------------------------------------------------- caller ID on the wire


def test_an_outbound_leg_carries_the_numbers_name_never_the_users() -> None:
    net = make_net()
    register(net, "101")
    phone_call(net, "101", "+15145550199")
    out = trunk_leg(net)
    assert (out.get("from") or "").startswith('"Example Sales" <sip:+15145550100@pbx.test>;tag=')
    assert out.get("p-asserted-identity") == '"Example Sales" <sip:+15145550100@pbx.test>'
    assert b"Alice" not in out.to_bytes()
    assert out.get("privacy") is None


def test_a_phone_presents_an_allowed_number_and_the_header_goes_no_further() -> None:
    net = make_net()
    register(net, "101")
    with capture_logs() as logs:
        phone_call(net, "101", "+15145550199", ppi='"Line 2" <sip:+15145550200@pbx.test>')
    out = trunk_leg(net)
    assert (out.get("from") or "").startswith('"Example Support" <sip:+15145550200@pbx.test>')
    assert out.get("p-asserted-identity") == '"Example Support" <sip:+15145550200@pbx.test>'
    assert out.get("p-preferred-identity") is None  # RFC 3325 s9.2: not passed on
    [routed] = [e for e in logs if e["event"] == "call routed"]
    assert routed["caller_id"] == "+15145550200" and routed["billing_group"] == "support"
    assert routed["identity"].startswith("P-Preferred-Identity")
    assert not [e for e in logs if e["event"] == "preferred identity ignored"]


def test_a_number_the_phone_may_not_present_is_ignored_and_the_log_says_why() -> None:
    net = make_net()
    register(net, "102")
    with capture_logs() as logs:
        phone_call(net, "102", "+15145550199", ppi="<tel:+15145550200>")
    out = trunk_leg(net)
    assert (out.get("from") or "").startswith('"Example Sales" <sip:+15145550100@pbx.test>')
    assert out.get("p-preferred-identity") is None
    [ignored] = [e for e in logs if e["event"] == "preferred identity ignored"]
    assert ignored["preferred"] == "+15145550200" and ignored["caller_id"] == "+15145550100"
    assert ignored["reason"] == "102 is not in the outbound_callers of +15145550200"


def test_a_number_without_caller_id_name_goes_out_without_a_display_name() -> None:
    net = make_net()
    register(net, "101")
    phone_call(net, "101", "+15145550199", ppi="<sip:+15145550300@pbx.test;user=phone>")
    out = trunk_leg(net)
    assert (out.get("from") or "").startswith("<sip:+15145550300@pbx.test>;tag=")
    assert out.get("p-asserted-identity") == "<sip:+15145550300@pbx.test>"
    assert b"Alice" not in out.to_bytes()


def test_a_withheld_number_is_anonymous_to_the_callee_and_asserted_to_the_carrier() -> None:
    net = make_net()
    register(net, "101")
    phone_call(net, "101", "*82+15145550199")
    out = trunk_leg(net)
    assert (out.get("from") or "").startswith('"Anonymous" <sip:anonymous@anonymous.invalid>')
    assert out.get("p-asserted-identity") == '"Example Sales" <sip:+15145550100@pbx.test>'
    assert out.get("privacy") == "id"


def test_an_internal_leg_still_shows_the_callers_name() -> None:
    net = make_net()
    register(net, "101", "102")
    phone_call(net, "101", "102")
    [inv] = net.requests(PHONES["102"], "INVITE")
    assert inv.from_.display == '"Alice Martin"' and inv.from_.uri.user == "101"


# ---------------------------------------------------------------------- any form of a DID


def trunk_invite(request_uri: str, call_id: str) -> bytes:
    """A carrier's INVITE to ``request_uri``; its To names no number of ours, so only
    the Request-URI can find the DID."""
    data = invite("+15145550100", "+15145550199", TRUNK, call_id=call_id, host="127.0.0.1")
    _, rest = data.split(b"\r\n", 1)
    rest = rest.replace(b"To: <sip:+15145550100@127.0.0.1>", b"To: <sip:did@127.0.0.1>")
    return f"INVITE {request_uri} SIP/2.0".encode() + b"\r\n" + rest


def bridges(net: Net) -> list[BridgeMedia]:
    return [m for m in net.media if isinstance(m, BridgeMedia)]


@pytest.mark.parametrize("request_uri", [
    "sip:15145550100@127.0.0.1",
    "sip:5145550100@127.0.0.1",
    "tel:+15145550100",
    "sip:+15145550100@127.0.0.1;user=phone",
])
def test_a_did_in_any_form_gets_its_numbers_music_recording_and_billing(
        request_uri: str) -> None:
    net = make_net(anchor=True)
    register(net, "101")
    with capture_logs() as logs:
        net.send(trunk_invite(request_uri, "tcall-1"), TRUNK)
        [action] = [m for m in net.media if isinstance(m, OpenMedia)]
        net.take(net.engine.media_ready(action.call, (30000, 30002), net.clock.now))
        [desk] = net.requests(PHONES["101"], "INVITE")
        net.send(reply(desk, 200, body=CALLEE_SDP, contact="<sip:101@127.0.0.1:6101>"),
                 PHONES["101"])
    [bridge] = bridges(net)
    assert bridge.playlist == ("moh/sales.wav",)  # not the system's
    assert bridge.record == "number +15145550100 records inbound calls"
    [routed] = [e for e in logs if e["event"] == "call routed"]
    assert routed["billing_group"] == "sales"
    metrics = net.engine.metrics
    assert counted(metrics, "switchboard_calls_by_billing_group", billing_group="sales") == 1


def answered_outbound(net: Net, dialled: str, ppi: str = "") -> Request:
    register(net, "101")
    src = phone_call(net, "101", dialled, ppi=ppi)
    [action] = [m for m in net.media if isinstance(m, OpenMedia)]
    net.take(net.engine.media_ready(action.call, (30000, 30002), net.clock.now))
    out = trunk_leg(net)
    net.send(reply(out, 200, body=CALLEE_SDP, contact="<sip:+15145550199@127.0.0.9:5090>"),
             TRUNK)
    assert 200 in statuses(net.drain(src))
    return out


def test_record_outbound_records_a_withheld_caller_id_too() -> None:
    net = make_net(anchor=True)
    out = answered_outbound(net, "*82+15145550199", ppi="<sip:+15145550200@pbx.test>")
    assert out.get("privacy") == "id"
    [bridge] = bridges(net)
    assert bridge.record == "number +15145550200 records outbound calls (caller ID withheld)"


def test_no_recording_for_a_number_that_does_not_ask_for_it() -> None:
    net = make_net(anchor=True)
    answered_outbound(net, "+15145550199")  # +15145550100: record_inbound only
    [bridge] = bridges(net)
    assert bridge.record == ""


def test_a_caller_on_hold_hears_the_music_of_the_number_this_call_presents() -> None:
    net = make_net(anchor=True)
    register(net, "101", "102")
    src = phone_call(net, "101", "102", ppi="<sip:+15145550200@pbx.test>")
    [action] = [m for m in net.media if isinstance(m, OpenMedia)]
    net.take(net.engine.media_ready(action.call, (30000, 30002), net.clock.now))
    [inv] = net.requests(PHONES["102"], "INVITE")
    net.send(reply(inv, 200, body=CALLEE_SDP, contact="<sip:102@127.0.0.1:6102>"),
             PHONES["102"])
    [ok] = [r for r in net.responses(src) if r.status == 200]
    net.send(in_dialog("ACK", ok, src, cseq=2, call_id="call-1", branch="a1"), src)
    net.media.clear()
    hold = SDP.replace(b"a=rtpmap:101", b"a=sendonly\r\na=rtpmap:101")
    net.send(in_dialog("INVITE", ok, src, cseq=3, call_id="call-1", branch="h1", body=hold),
             src)
    [bridge] = bridges(net)
    assert bridge.music_to_callee and bridge.playlist == ("moh/support.wav",)


# ---------------------------------------------------------------------- billing groups


def test_call_ended_logs_carry_the_billing_group() -> None:
    net = make_net()
    register(net, "101")
    with capture_logs() as logs:
        net.send(trunk_invite("sip:15145550100@127.0.0.1", "tcall-2"), TRUNK)
        [desk] = net.requests(PHONES["101"], "INVITE")
        net.send(reply(desk, 200, body=CALLEE_SDP, contact="<sip:101@127.0.0.1:6101>"),
                 PHONES["101"])
        [ok] = [r for r in net.responses(TRUNK) if r.status == 200]
        net.send(in_dialog("ACK", ok, TRUNK, cseq=1, call_id="tcall-2", branch="a2"), TRUNK)
        net.send(in_dialog("BYE", ok, TRUNK, cseq=2, call_id="tcall-2", branch="b2"), TRUNK)
        # a call to no number of ours has no billing group
        net.send(trunk_invite("sip:5145550999@127.0.0.1", "tcall-3"), TRUNK)
    ended = {e["call_id"]: e for e in logs if e["event"] == "call ended"}
    assert ended["tcall-2"]["billing_group"] == "sales" and ended["tcall-2"]["answered"]
    assert ended["tcall-3"]["billing_group"] is None and ended["tcall-3"]["status"] == 404
    assert counted(net.engine.metrics, "switchboard_calls_by_billing_group",
                   billing_group="none") == 1


def test_billing_group_labels_are_few_whatever_the_directory_holds() -> None:
    metrics = Metrics()
    groups = [f"group{i}" for i in range(BILLING_GROUP_LABELS + 5)]
    metrics.admit_billing_groups(groups)
    for group in groups:
        metrics.count_billing_group(group)
    metrics.count_billing_group("")
    metrics.admit_billing_groups(["late"])  # a reload cannot add labels past the limit
    metrics.count_billing_group("late")
    samples = [line for line in metrics.render().decode().splitlines()
               if line.startswith("switchboard_calls_by_billing_group_total{")]
    assert len(samples) == BILLING_GROUP_LABELS + 2  # the groups, other, none
    assert 'switchboard_calls_by_billing_group_total{billing_group="other"} 6.0' in samples
    assert 'switchboard_calls_by_billing_group_total{billing_group="none"} 1.0' in samples
    assert metrics.billing_label("group0") == "group0"
    assert metrics.billing_label(f"group{BILLING_GROUP_LABELS}") == "other"
