"""The B2BUA through Engine.datagram: real SIP bytes in and out, a fake clock, no sockets.

Phones and the trunk are played by small scripted endpoints that read what the
engine sends them and answer with bytes, as a phone would.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field

import pytest

from engine.core import Engine, Outcome
from engine.metrics import Metrics
from engine.sip.auth import build_authorization
from engine.sip.message import Request, Response, parse
from engine.sip.transaction import Addr
from provisioning.directory import parse_directory
from provisioning.model import Binding

DIRECTORY = """
[system]
domain = "pbx.test"
voicemail_number = "999"

[[trunks]]
name = "carrier"
host = "127.0.0.9"
port = 5090
channels = 3
inbound_from = ["127.0.0.9/32"]
supports_302 = true

[[departments]]
name = "Sales"
caller_id = "+15145550100"
timezone = "America/Toronto"

[[numbers]]
number = "+15145550100"
route_to = "extension:101"

[[numbers]]
number = "+15145550102"
route_to = "extension:102"

[[numbers]]
number = "+15145550104"
route_to = "extension:104"

[[users]]
extension = "101"
name = "Alice Martin"
password = "pw101"
department = "Sales"
mobile = "+15145550111"
[users.forwarding.available]
no_answer_seconds = 10
no_answer = { external = "extension:103", internal = "extension:103" }
busy = { external = "voicemail", internal = "busy" }
[users.forwarding.away]
no_answer_seconds = 10
no_answer = { external = "voicemail", internal = "voicemail" }
busy = { external = "voicemail", internal = "voicemail" }
ring_mobile_simultaneously = true
[users.forwarding.business_trip]
no_answer_seconds = 0
no_answer = { external = { to = "external:+15145550199", deflect_302 = true }, internal = "mobile" }
busy = { external = "voicemail", internal = "voicemail" }

[[users]]
extension = "102"
name = "Bruno Tremblay"
password = "pw102"
department = "Sales"
accept_multiple_calls = false
[users.forwarding.available]
no_answer_seconds = 10
no_answer = { external = "voicemail", internal = "voicemail" }
busy = { external = "extension:103", internal = "extension:103" }

[[users]]
extension = "103"
name = "Chloe Roy"
password = "pw103"
department = "Sales"
external_calls = false

[[users]]
extension = "104"
name = "David Cote"
password = "pw104"
department = "Sales"
mobile = "+15145550444"
[users.forwarding.available]
no_answer_seconds = 10
no_answer = { external = { to = "mobile", rebound = true }, internal = "voicemail" }
busy = { external = "voicemail", internal = "voicemail" }
"""

ENGINE_ADDR: Addr = ("127.0.0.1", 5060)
TRUNK: Addr = ("127.0.0.9", 5090)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.wall = 1_790_000_000.0  # a weekday in 2026

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.wall += seconds


@dataclass
class Net:
    """Everything the engine sent, by destination, parsed."""

    engine: Engine
    clock: Clock
    inbox: dict[Addr, list[Request | Response]] = field(default_factory=dict)
    media: list[object] = field(default_factory=list)
    # Call-ID -> our To tag in the 2xx the engine sent to a caller's INVITE.
    tags: dict[str, str] = field(default_factory=dict)

    def take(self, outcome: Outcome) -> None:
        self.media.extend(outcome.media)
        for send in outcome.sends:
            msg = parse(send.data)
            if isinstance(msg, Response) and msg.status == 200 and msg.to.tag \
                    and msg.cseq.method == "INVITE":
                self.tags[msg.call_id] = msg.to.tag
            self.inbox.setdefault(send.addr, []).append(msg)

    def send(self, data: bytes | Request | Response, source: Addr) -> None:
        raw = data if isinstance(data, bytes) else data.to_bytes()
        self.take(self.engine.datagram(raw, source, "udp", self.clock.now))

    def tick(self, seconds: float) -> None:
        """Let ``seconds`` pass, firing every timer due on the way."""
        end = self.clock.now + seconds
        while True:
            wake = self.engine.next_wakeup()
            if wake is None or wake > end:
                break
            self.clock.advance(max(0.0, wake - self.clock.now))
            self.take(self.engine.timer(self.clock.now))
        self.clock.advance(end - self.clock.now)

    def drain(self, addr: Addr) -> list[Request | Response]:
        return self.inbox.pop(addr, [])

    def requests(self, addr: Addr, method: str | None = None) -> list[Request]:
        got = [m for m in self.drain(addr) if isinstance(m, Request)]
        return [m for m in got if method is None or m.method == method]

    def responses(self, addr: Addr) -> list[Response]:
        return [m for m in self.drain(addr) if isinstance(m, Response)]


def reply(req: Request, status: int, *, tag: str = "callee1", body: bytes = b"",
          contact: str | None = None, extra: Iterable[tuple[str, str]] = ()) -> Response:
    """What a UAS sends back: the request's Via/From/To/Call-ID/CSeq, a To tag."""
    to = req.get("to") or ""
    if ";tag=" not in to and status > 100:
        to += f";tag={tag}"
    headers = [("Via", v) for v in req.get_all("via")]
    headers += [("From", req.get("from") or ""), ("To", to), ("Call-ID", req.call_id),
                ("CSeq", req.get("cseq") or "")]
    if contact:
        headers.append(("Contact", contact))
    headers += list(extra)
    if body:
        headers.append(("Content-Type", "application/sdp"))
    return Response.build(status, {180: "Ringing", 200: "OK", 486: "Busy Here",
                                   487: "Request Terminated"}.get(status, "X"), headers, body)


SDP = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n" \
      b"m=audio 20000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n"


def invite(dialled: str, caller: str, source: Addr, *, call_id: str = "call-1",
           auth: str | None = None, cseq: int = 1, host: str = "pbx.test",
           extra: Iterable[str] = ()) -> bytes:
    """An INVITE with SDP; ``extra``: more header lines ("Name: value")."""
    lines = [
        f"INVITE sip:{dialled}@{host} SIP/2.0",
        f"Via: SIP/2.0/UDP {source[0]}:{source[1]};branch=z9hG4bK{call_id}-{cseq};rport",
        "Max-Forwards: 70",
        f'From: "Caller {caller}" <sip:{caller}@{host}>;tag=from-{call_id}',
        f"To: <sip:{dialled}@{host}>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} INVITE",
        f"Contact: <sip:{caller}@{source[0]}:{source[1]}>",
        "Content-Type: application/sdp",
    ]
    if auth:
        lines.append(f"Proxy-Authorization: {auth}")
    lines += extra
    lines.append(f"Content-Length: {len(SDP)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + SDP


def in_dialog(method: str, ok: Response, source: Addr, *, cseq: int, call_id: str,
              branch: str, body: bytes = b"") -> bytes:
    """A request from the caller inside the dialog the engine's 200 created."""
    contact = ok.contacts[0].uri
    lines = [
        f"{method} {contact} SIP/2.0",
        f"Via: SIP/2.0/UDP {source[0]}:{source[1]};branch=z9hG4bK{branch};rport",
        "Max-Forwards: 70",
        f"From: {ok.get('from')}",
        f"To: {ok.get('to')}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
    ]
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


PHONES: dict[str, Addr] = {"101": ("127.0.0.1", 6101), "102": ("127.0.0.1", 6102),
                           "103": ("127.0.0.1", 6103), "104": ("127.0.0.1", 6104)}
PASSWORDS = {"101": "pw101", "102": "pw102", "103": "pw103", "104": "pw104"}


def make_net() -> Net:
    clock = Clock()
    directory = parse_directory(tomllib.loads(DIRECTORY), "<test>")
    engine = Engine(directory, {"127.0.0.1", "pbx.test"}, 5060, wall_clock=lambda: clock.wall,
                    digest_algorithms=("MD5",), advertise="127.0.0.1")
    return Net(engine, clock)


@pytest.fixture
def net() -> Net:
    return make_net()


def register(net: Net, *extensions: str, second_device: bool = False) -> None:
    bindings = []
    for ext in extensions:
        addr = PHONES[ext]
        bindings.append(Binding(aor=ext, contact=f"sip:{ext}@{addr[0]}:{addr[1]}",
                                expires_at=net.clock.wall + 3600, call_id=f"reg{ext}", cseq=1,
                                source=f"udp:{addr[0]}:{addr[1]}"))
        if second_device:
            port = addr[1] + 1000
            bindings.append(Binding(aor=ext, contact=f"sip:{ext}@{addr[0]}:{port}",
                                    expires_at=net.clock.wall + 3600, call_id=f"reg{ext}b",
                                    cseq=1, source=f"udp:{addr[0]}:{port}"))
    net.engine.registrar.load(bindings, net.clock.wall)


def phone_call(net: Net, caller: str, dialled: str, call_id: str = "call-1",
               extra: Iterable[str] = ()) -> Addr:
    """Place a call from ``caller``'s phone: INVITE, 407, ACK, INVITE with credentials
    (``extra``: more header lines in both INVITEs)."""
    src = PHONES[caller]
    first = invite(dialled, caller, src, call_id=call_id, extra=extra)
    net.send(first, src)
    challenge = [r for r in net.responses(src) if r.status == 407]
    assert challenge, "a phone's INVITE is challenged (407)"
    net.send(ack_for(first, challenge[0]), src)
    value = challenge[0].get("proxy-authenticate") or ""
    auth = build_authorization(value, "INVITE", f"sip:{dialled}@pbx.test", caller,
                               PASSWORDS[caller], "cn")
    net.send(invite(dialled, caller, src, call_id=call_id, auth=auth, cseq=2, extra=extra), src)
    return src


def trunk_call(net: Net, did: str, caller: str = "+15145550199", call_id: str = "tcall-1") -> None:
    net.send(invite(did, caller, TRUNK, call_id=call_id, host="127.0.0.1"), TRUNK)


def ack_for(invite_data: bytes, resp: Response) -> bytes:
    """The caller's ACK of a non-2xx final response (RFC 3261 s17.1.1.3)."""
    inv = parse(invite_data)
    assert isinstance(inv, Request)
    return Request.build("ACK", inv.uri_text, [
        ("Via", inv.get_all("via")[0]), ("Max-Forwards", "70"), ("From", inv.get("from") or ""),
        ("To", resp.get("to") or ""), ("Call-ID", inv.call_id),
        ("CSeq", f"{inv.cseq.number} ACK")]).to_bytes()


def counted(metrics: Metrics, name: str, **labels: str) -> float:
    """Counter ``name`` (without ``_total``) as /metrics reports it, 0 before any count."""
    value = metrics.registry.get_sample_value(f"{name}_total", labels)
    return 0.0 if value is None else value


def statuses(msgs: Iterable[Request | Response]) -> list[int]:
    return [m.status for m in msgs if isinstance(m, Response)]


# ---------------------------------------------------------------------- basic calls
def test_internal_call_answered_then_caller_hangs_up(net: Net) -> None:
    register(net, "101", "102")
    src = phone_call(net, "101", "102")
    assert 100 in statuses(net.drain(src))
    [inv] = net.requests(PHONES["102"], "INVITE")
    assert inv.uri_text == "sip:102@127.0.0.1:6102"
    assert inv.get("p-asserted-identity") == "<sip:101@pbx.test>"
    assert inv.from_.uri.user == "101" and inv.from_.display == '"Alice Martin"'
    assert inv.body == SDP and inv.max_forwards == 69
    assert inv.call_id != "call-1"  # a B2BUA: a new call leg
    net.send(reply(inv, 180), PHONES["102"])
    assert statuses(net.drain(src)) == [180]
    net.send(reply(inv, 200, body=b"v=0 answer", contact="<sip:102@127.0.0.1:6102>"),
             PHONES["102"])
    [ack] = net.requests(PHONES["102"], "ACK")  # we ACK the callee's 2xx ourselves
    assert ack.cseq.number == 1 and ack.to.tag == "callee1"
    [ok] = net.responses(src)
    assert ok.status == 200 and ok.body == b"v=0 answer" and ok.to.tag
    assert net.engine.calls.extensions_on_calls() == {"101": 1, "102": 1}
    net.send(in_dialog("ACK", ok, src, cseq=2, call_id="call-1", branch="ack1"), src)
    net.tick(5)
    assert net.responses(src) == []  # ACKed: no 2xx retransmission
    net.send(in_dialog("BYE", ok, src, cseq=3, call_id="call-1", branch="bye1"), src)
    assert statuses(net.drain(src)) == [200]
    [bye] = net.requests(PHONES["102"], "BYE")
    assert bye.call_id == inv.call_id and bye.to.tag == "callee1"
    net.send(reply(bye, 200), PHONES["102"])
    calls = net.engine.calls
    assert calls.calls_in_progress() == [] and calls.extensions_on_calls() == {}


def test_callee_hangs_up_and_unacked_2xx_is_retransmitted(net: Net) -> None:
    register(net, "101", "102")
    src = phone_call(net, "101", "102")
    [inv] = net.requests(PHONES["102"], "INVITE")
    net.send(reply(inv, 200, contact="<sip:102@127.0.0.1:6102>"), PHONES["102"])
    net.drain(PHONES["102"])
    assert 200 in statuses(net.drain(src))
    net.tick(0.6)
    assert statuses(net.drain(src)) == [200]  # RFC 3261 s13.3.1.4: until the ACK
    bye = Request.build("BYE", "sip:switchboard@127.0.0.1:5060", [
        ("Via", "SIP/2.0/UDP 127.0.0.1:6102;branch=z9hG4bKcalleebye"),
        ("Max-Forwards", "70"), ("From", (inv.get("to") or "") + ";tag=callee1"),
        ("To", inv.get("from") or ""), ("Call-ID", inv.call_id), ("CSeq", "7 BYE")])
    net.send(bye, PHONES["102"])
    assert statuses(net.drain(PHONES["102"])) == [200]
    [caller_bye] = net.requests(src, "BYE")
    assert caller_bye.call_id == "call-1" and caller_bye.from_.tag  # our tag toward caller
    assert net.engine.calls.calls_in_progress() == []


def test_unknown_dialog_gets_481(net: Net) -> None:
    src = PHONES["101"]
    data = (b"BYE sip:switchboard@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:6101;"
            b"branch=z9hG4bKnope\r\nMax-Forwards: 70\r\nFrom: <sip:101@pbx.test>;tag=a\r\n"
            b"To: <sip:102@pbx.test>;tag=b\r\nCall-ID: nope\r\nCSeq: 1 BYE\r\n"
            b"Content-Length: 0\r\n\r\n")
    net.send(data, src)
    assert statuses(net.drain(src)) == [481]


# ---------------------------------------------------------------------- forking
def test_every_device_rings_first_200_wins_others_cancelled_with_reason(net: Net) -> None:
    register(net, "101")
    register(net, "102", second_device=True)
    src = phone_call(net, "101", "102")
    desk = net.requests(PHONES["102"], "INVITE")
    soft = net.requests(("127.0.0.1", 7102), "INVITE")
    assert len(desk) == 1 and len(soft) == 1
    net.send(reply(soft[0], 180, tag="soft"), ("127.0.0.1", 7102))
    net.send(reply(desk[0], 180, tag="desk"), PHONES["102"])
    net.send(reply(desk[0], 200, tag="desk", contact="<sip:102@127.0.0.1:6102>"),
             PHONES["102"])
    [cancel] = net.requests(("127.0.0.1", 7102), "CANCEL")
    assert cancel.get("reason") == 'SIP;cause=200;text="Call completed elsewhere"'
    assert cancel.top_via.branch == soft[0].top_via.branch
    assert 200 in statuses(net.drain(src))


def test_late_second_200_is_acked_and_hung_up(net: Net) -> None:
    register(net, "101")
    register(net, "102", second_device=True)
    phone_call(net, "101", "102")
    [desk] = net.requests(PHONES["102"], "INVITE")
    [soft] = net.requests(("127.0.0.1", 7102), "INVITE")
    net.send(reply(desk, 180, tag="desk"), PHONES["102"])
    net.send(reply(soft, 180, tag="soft"), ("127.0.0.1", 7102))
    net.send(reply(desk, 200, tag="desk", contact="<sip:102@127.0.0.1:6102>"), PHONES["102"])
    net.drain(("127.0.0.1", 7102))
    net.send(reply(soft, 200, tag="soft", contact="<sip:102@127.0.0.1:7102>"),
             ("127.0.0.1", 7102))
    got = net.requests(("127.0.0.1", 7102))
    assert [r.method for r in got] == ["ACK", "BYE"]


# ---------------------------------------------------------------------- forwarding
def test_no_answer_forwards_to_the_rule_target_with_diversion(net: Net) -> None:
    register(net, "101", "102", "103")
    src = phone_call(net, "102", "101")
    [inv] = net.requests(PHONES["101"], "INVITE")
    net.send(reply(inv, 180), PHONES["101"])
    net.tick(9.5)
    assert net.requests(PHONES["103"]) == []  # not before no_answer_seconds
    net.tick(1.0)
    cancel = net.requests(PHONES["101"], "CANCEL")[0]  # (Timer E may resend it)
    assert cancel.get("reason") is None
    fwd = net.requests(PHONES["103"], "INVITE")[0]  # (and Timer A retransmissions)
    assert fwd.get("diversion") == "<sip:101@pbx.test>;reason=no-answer;counter=1"
    assert fwd.get("p-asserted-identity") == "<sip:102@pbx.test>"  # the original caller
    history = fwd.get_all("history-info")
    assert history[0].startswith("<sip:101@pbx.test?Reason=SIP%3Bcause%3D408")
    assert "index=1.1" in history[-1]
    net.send(reply(cancel, 200), PHONES["101"])
    net.send(reply(inv, 487), PHONES["101"])
    assert net.requests(PHONES["101"], "ACK")  # the transaction ACKs the 487
    net.send(reply(fwd, 200, contact="<sip:103@127.0.0.1:6103>"), PHONES["103"])
    assert 200 in statuses(net.drain(src))


def test_busy_devices_follow_the_busy_rule(net: Net) -> None:
    register(net, "101", "102", "103")
    phone_call(net, "101", "102")
    [inv] = net.requests(PHONES["102"], "INVITE")
    net.send(reply(inv, 486), PHONES["102"])
    [fwd] = net.requests(PHONES["103"], "INVITE")
    assert fwd.get("diversion") == "<sip:102@pbx.test>;reason=user-busy;counter=1"


def test_internal_busy_rule_send_busy(net: Net) -> None:
    register(net, "101", "102")
    src = phone_call(net, "102", "101")
    [inv] = net.requests(PHONES["101"], "INVITE")
    net.send(reply(inv, 486), PHONES["101"])
    assert 486 in statuses(net.drain(src))


def test_unregistered_user_follows_busy_rule(net: Net) -> None:
    register(net, "101", "103")  # 102 has no device
    phone_call(net, "101", "102")
    [fwd] = net.requests(PHONES["103"], "INVITE")
    assert "reason=unavailable" in (fwd.get("diversion") or "")


def test_on_a_call_without_multiple_calls_is_busy(net: Net) -> None:
    register(net, "101", "102", "103", "104")
    phone_call(net, "101", "102")
    [inv] = net.requests(PHONES["102"], "INVITE")
    net.send(reply(inv, 200, contact="<sip:102@127.0.0.1:6102>"), PHONES["102"])
    net.drain(PHONES["102"])
    phone_call(net, "104", "102", call_id="call-2")  # 102 is on a call: the busy rule
    assert net.requests(PHONES["102"], "INVITE") == []
    [fwd] = net.requests(PHONES["103"], "INVITE")
    assert "reason=user-busy" in (fwd.get("diversion") or "")


def voicemail_answered(net: Net, src: Addr, box: str) -> Response:
    """The media service opens an endpoint; the engine answers the caller with SDP."""
    from engine.calls.events import OpenMedia, StartVoicemail

    [opened] = [m for m in net.media if isinstance(m, OpenMedia)]
    net.take(net.engine.media_ready(opened.call, (30000,), net.clock.now))
    [start] = [m for m in net.media if isinstance(m, StartVoicemail)]
    assert start.box == box and start.negotiated.codec in ("PCMU", "PCMA", "G722")
    [ok] = [r for r in net.responses(src) if r.status == 200]
    assert b"m=audio 30000 RTP/AVP" in ok.body
    return ok


def test_voicemail_answers_with_sdp_then_hangs_up_when_done(net: Net) -> None:
    from engine.calls.events import OpenMedia, StopMedia

    register(net, "101", "102")
    src = phone_call(net, "101", "102")
    [inv] = net.requests(PHONES["102"], "INVITE")
    net.send(reply(inv, 180), PHONES["102"])
    net.tick(10.5)
    ok = voicemail_answered(net, src, "102")
    net.send(in_dialog("ACK", ok, src, cseq=2, call_id="call-1", branch="vmack"), src)
    [opened] = [m for m in net.media if isinstance(m, OpenMedia)]
    net.take(net.engine.hangup(opened.call, net.clock.now))  # message recorded ('#')
    assert net.requests(src, "BYE")
    calls = net.engine.calls
    assert any(isinstance(m, StopMedia) for m in net.media) and calls.calls_in_progress() == []


def test_voicemail_refuses_g729_only_with_488(net: Net) -> None:
    from engine.calls.events import OpenMedia

    register(net, "101")
    net.engine.set_statuses({"101": "away"})
    g729 = invite("+15145550100", "+15145550199", TRUNK, call_id="g729", host="127.0.0.1")
    body = SDP.replace(b"RTP/AVP 0 8 101", b"RTP/AVP 18 101")
    g729 = g729.replace(SDP, body).replace(b"Content-Length: %d" % len(SDP),
                                           b"Content-Length: %d" % len(body))
    net.send(g729, TRUNK)
    net.drain(PHONES["101"])
    net.tick(10.5)
    [opened] = [m for m in net.media if isinstance(m, OpenMedia)]
    net.take(net.engine.media_ready(opened.call, (30002,), net.clock.now))
    final = [r for r in net.responses(TRUNK) if r.status >= 300]
    assert final and final[0].status == 488
    assert "G729" in (final[0].get("warning") or "")


# ---------------------------------------------------------------------- trunks
def test_trunk_call_rings_desk_and_mobile_desk_answers_mobile_cancelled(net: Net) -> None:
    register(net, "101")
    net.engine.set_statuses({"101": "away"})
    trunk_call(net, "+15145550100")
    [desk] = net.requests(PHONES["101"], "INVITE")
    trunk_msgs = net.drain(TRUNK)
    [mobile] = [m for m in trunk_msgs if isinstance(m, Request) and m.method == "INVITE"]
    assert mobile.uri_text == "sip:+15145550111@127.0.0.9:5090"
    # a forwarded trunk caller keeps its own number and display name
    assert mobile.get("p-asserted-identity") == \
        '"Caller +15145550199" <sip:+15145550199@pbx.test>'
    assert (mobile.get("from") or "").startswith(
        '"Caller +15145550199" <sip:+15145550199@pbx.test>;tag=')
    assert net.engine.calls.channels_in_use() == {"carrier": 2}  # the inbound call + the mobile leg
    net.send(reply(mobile, 183, tag="mob", body=SDP), TRUNK)  # early media
    assert 183 in statuses(net.drain(TRUNK))
    net.send(reply(desk, 200, contact="<sip:101@127.0.0.1:6101>"), PHONES["101"])
    trunk_msgs = net.drain(TRUNK)
    [cancel] = [m for m in trunk_msgs if isinstance(m, Request) and m.method == "CANCEL"]
    assert "cause=200" in (cancel.get("reason") or "")
    assert 200 in statuses(trunk_msgs)
    assert net.engine.calls.channels_in_use() == {"carrier": 1}


def test_early_media_does_not_stop_the_no_answer_timer(net: Net) -> None:
    register(net, "101")
    net.engine.set_statuses({"101": "away"})
    trunk_call(net, "+15145550100")
    net.drain(PHONES["101"])
    [mobile] = [m for m in net.drain(TRUNK) if isinstance(m, Request)]
    net.send(reply(mobile, 183, tag="mob", body=SDP), TRUNK)
    net.tick(10.5)
    msgs = net.drain(TRUNK)
    assert any(isinstance(m, Request) and m.method == "CANCEL" for m in msgs)
    from engine.calls.events import OpenMedia
    assert any(isinstance(m, OpenMedia) for m in net.media)  # away, no answer -> voicemail


def test_deflection_302_to_a_trunk_that_supports_it(net: Net) -> None:
    register(net, "101")
    net.engine.set_statuses({"101": "business_trip"})
    trunk_call(net, "+15145550100")
    [moved] = [r for r in net.responses(TRUNK) if r.status == 302]
    assert moved.contacts[0].uri.user == "+15145550199"
    assert moved.get("diversion") == "<sip:101@pbx.test>;reason=unconditional;counter=1"
    calls = net.engine.calls
    assert calls.calls_in_progress() == [] and calls.channels_in_use() == {"carrier": 0}


def test_unknown_did_is_404_and_unknown_source_is_challenged(net: Net) -> None:
    trunk_call(net, "+19999999999")
    assert 404 in statuses(net.drain(TRUNK))
    stranger = ("127.0.0.50", 5060)
    net.send(invite("+15145550199", "evil", stranger, call_id="relay"), stranger)
    assert statuses(net.drain(stranger)) == [100, 407]  # no open relay to trunks
    assert net.drain(TRUNK) == []


def test_rebound_refused_comes_back_to_voicemail(net: Net) -> None:
    register(net, "104")
    trunk_call(net, "+15145550104")
    [desk] = net.requests(PHONES["104"], "INVITE")
    net.send(reply(desk, 180), PHONES["104"])
    net.tick(10.5)
    mobile = next(m for m in net.drain(TRUNK) if isinstance(m, Request) and m.method == "INVITE")
    assert mobile.uri.user == "+15145550444"
    net.send(reply(mobile, 603, tag="mob"), TRUNK)
    voicemail_answered(net, TRUNK, "104")


def test_channel_limit_gives_503_when_nothing_else_is_planned(net: Net) -> None:
    register(net, "101")
    for n in range(3):  # the carrier's 3 channels, all busy with other calls
        trunk_call(net, "+15145550100", call_id=f"busy-{n}")
    assert net.engine.calls.channels_in_use() == {"carrier": 3}
    src = phone_call(net, "101", "+15145550199")
    assert 503 in statuses(net.drain(src))


def test_outbound_call_through_the_trunk_with_department_caller_id(net: Net) -> None:
    register(net, "101")
    src = phone_call(net, "101", "+15145550199")
    [out] = [m for m in net.drain(TRUNK) if isinstance(m, Request)]
    assert out.uri_text == "sip:+15145550199@127.0.0.9:5090"
    assert out.from_.uri.user == "+15145550100"
    net.send(reply(out, 200, contact="<sip:+15145550199@127.0.0.9:5090>"), TRUNK)
    assert 200 in statuses(net.drain(src))
    assert net.engine.calls.channels_in_use() == {"carrier": 1}


def test_external_calls_forbidden_for_user(net: Net) -> None:
    register(net, "103")
    src = phone_call(net, "103", "+15145550199")
    assert 403 in statuses(net.drain(src))
    assert net.drain(TRUNK) == []


# ---------------------------------------------------------------------- cancel, auth, crash
def test_caller_cancel_gives_487_and_cancels_legs(net: Net) -> None:
    register(net, "101", "102")
    src = phone_call(net, "101", "102")
    [inv] = net.requests(PHONES["102"], "INVITE")
    net.send(reply(inv, 180), PHONES["102"])
    net.drain(src)
    cancel = (b"CANCEL sip:102@pbx.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:6101;"
              b"branch=z9hG4bKcall-1-2;rport\r\nMax-Forwards: 70\r\n"
              b'From: "Caller 101" <sip:101@pbx.test>;tag=from-call-1\r\n'
              b"To: <sip:102@pbx.test>\r\nCall-ID: call-1\r\nCSeq: 2 CANCEL\r\n"
              b"Content-Length: 0\r\n\r\n")
    net.send(cancel, src)
    assert sorted(statuses(net.drain(src))) == [200, 487]
    assert net.requests(PHONES["102"], "CANCEL")
    assert net.engine.calls.calls_in_progress() == []


def test_wrong_password_on_invite_is_refused_and_counted(net: Net) -> None:
    src = PHONES["101"]
    net.send(invite("102", "101", src), src)
    [challenge] = [r for r in net.responses(src) if r.status == 407]
    auth = build_authorization(challenge.get("proxy-authenticate") or "", "INVITE",
                               "sip:102@pbx.test", "101", "wrong", "cn")
    net.send(invite("102", "101", src, auth=auth, cseq=2), src)
    assert 407 in statuses(net.drain(src))
    assert counted(net.engine.metrics, "switchboard_auth_failures", method="INVITE") == 1


def test_a_crash_in_one_call_does_not_take_down_another(net: Net,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.calls import headers

    register(net, "101", "102", "103")
    original = headers.callee_invite

    def explode(caller, facts, chain, target, uri, transport, local,  # type: ignore[no-untyped-def]
                offer=None):
        if "6103" in uri:
            raise RuntimeError("boom")
        return original(caller, facts, chain, target, uri, transport, local, offer)

    monkeypatch.setattr(headers, "callee_invite", explode)
    src = phone_call(net, "101", "103", call_id="bad")
    assert 500 in statuses(net.drain(src))
    src2 = phone_call(net, "101", "102", call_id="good")
    [inv] = net.requests(PHONES["102"], "INVITE")
    net.send(reply(inv, 200, contact="<sip:102@127.0.0.1:6102>"), PHONES["102"])
    assert 200 in statuses(net.drain(src2))


def test_reinvite_is_passed_to_the_other_leg(net: Net) -> None:
    register(net, "101", "102")
    src = phone_call(net, "101", "102")
    [inv] = net.requests(PHONES["102"], "INVITE")
    net.send(reply(inv, 200, contact="<sip:102@127.0.0.1:6102>"), PHONES["102"])
    net.drain(PHONES["102"])
    [ok] = [r for r in net.responses(src) if r.status == 200]
    net.send(in_dialog("ACK", ok, src, cseq=2, call_id="call-1", branch="a1"), src)
    hold = SDP.replace(b"a=rtpmap", b"a=sendonly\r\na=rtpmap")
    net.send(in_dialog("INVITE", ok, src, cseq=3, call_id="call-1", branch="re1", body=hold),
             src)
    [reinv] = net.requests(PHONES["102"], "INVITE")
    assert reinv.call_id == inv.call_id and b"a=sendonly" in reinv.body
    assert reinv.cseq.number == 2
    net.send(reply(reinv, 200, body=b"v=0 held", contact="<sip:102@127.0.0.1:6102>"),
             PHONES["102"])
    assert [r.method for r in net.requests(PHONES["102"])] == ["ACK"]
    relayed = [r for r in net.responses(src) if r.status == 200]
    assert relayed and relayed[0].body == b"v=0 held"


# ---------------------------------------------------------------------- trunk registration
REGISTERING = DIRECTORY.replace('''supports_302 = true
''', '''supports_302 = true
register = true
username = "acct42"
password = "carrier-secret"
''', 1)


def test_trunk_registers_with_digest_and_refreshes_before_expiry() -> None:
    from structlog.testing import capture_logs

    from engine.sip.auth import DigestAuthenticator

    clock = Clock()
    directory = parse_directory(tomllib.loads(REGISTERING), "<test>")
    engine = Engine(directory, {"127.0.0.1"}, 5060, wall_clock=lambda: clock.wall,
                    advertise="127.0.0.1")
    net = Net(engine, clock)
    carrier = DigestAuthenticator("carrier.test", b"k" * 32, algorithms=("MD5",))
    with capture_logs() as logs:
        net.tick(0.01)
        [first] = net.requests(TRUNK, "REGISTER")
        assert first.uri_text == "sip:127.0.0.9:5090" and first.to.uri.user == "acct42"
        assert first.contacts[0].uri.host == "127.0.0.1" and first.get("authorization") is None
        net.send(reply(first, 401, extra=[("WWW-Authenticate", carrier.challenge(0.0)[0])]),
                 TRUNK)
        [second] = net.requests(TRUNK, "REGISTER")
        assert second.call_id == first.call_id and second.cseq.number == first.cseq.number + 1
        result = carrier.verify("REGISTER", second.get("authorization") or "",
                                lambda u: "carrier-secret" if u == "acct42" else None, 0.0)
        assert result.ok, result.reason
        net.send(reply(second, 200, extra=[("Expires", "60")]), TRUNK)
        assert engine.trunkreg.registered("carrier")
        net.tick(47)
        assert net.requests(TRUNK, "REGISTER") == []  # refresh at 80 % of 60 s
        net.tick(1.01)
        [refresh] = net.requests(TRUNK, "REGISTER")
        assert refresh.call_id == first.call_id and refresh.cseq.number > second.cseq.number
        # the carrier now refuses the credentials: one retry with them, then wait and retry
        net.send(reply(refresh, 401, extra=[("WWW-Authenticate", carrier.challenge(0.0)[0])]),
                 TRUNK)
        [again] = net.requests(TRUNK, "REGISTER")
        net.send(reply(again, 401, extra=[("WWW-Authenticate", carrier.challenge(0.0)[0])]),
                 TRUNK)
        assert net.requests(TRUNK, "REGISTER") == [] and not engine.trunkreg.registered("carrier")
        net.tick(29)
        assert net.requests(TRUNK, "REGISTER") == []
        net.tick(1.01)  # RETRY_SECONDS after the refusal
        assert len(net.requests(TRUNK, "REGISTER")) == 1
    assert "carrier-secret" not in repr(logs)  # secrets never logged
    assert any(e["event"] == "trunk registration refused" for e in logs)


def test_registered_trunk_call_to_our_contact_takes_the_did_from_to(net: Net) -> None:
    register(net, "101")
    data = invite("+15145550100", "+15145550199", TRUNK, call_id="viacontact", host="127.0.0.1")
    data = data.replace(b"INVITE sip:+15145550100@127.0.0.1", b"INVITE sip:acct42@127.0.0.1")
    net.send(data, TRUNK)
    assert net.requests(PHONES["101"], "INVITE")


def test_credentials_signed_for_another_uri_are_refused(net: Net) -> None:
    """A digest answer binds the Request-URI (RFC 2617 s3.2.2.5): one signed for a call to
    102 cannot place a call to an external number."""
    register(net, "101")
    src = PHONES["101"]
    net.send(invite("+15145550199", "101", src), src)
    [challenge] = [r for r in net.responses(src) if r.status == 407]
    auth = build_authorization(challenge.get("proxy-authenticate") or "", "INVITE",
                               "sip:102@pbx.test", "101", "pw101", "cn")
    net.send(invite("+15145550199", "101", src, auth=auth, cseq=2), src)
    assert 407 in statuses(net.drain(src)) and net.drain(TRUNK) == []


def test_reinvite_on_a_voicemail_call_gets_a_new_answer(net: Net) -> None:
    """pjsip locks the codec it chose with a re-INVITE offering only that one: the engine,
    being the endpoint, answers it on the same port and the media follows."""
    from engine.calls.events import UpdateMedia

    register(net, "101", "102")
    src = phone_call(net, "101", "102")
    [inv] = net.requests(PHONES["102"], "INVITE")
    net.send(reply(inv, 180), PHONES["102"])
    net.tick(10.5)
    ok = voicemail_answered(net, src, "102")
    net.send(in_dialog("ACK", ok, src, cseq=2, call_id="call-1", branch="vmack2"), src)
    locked = SDP.replace(b"RTP/AVP 0 8 101", b"RTP/AVP 0 101")
    net.send(in_dialog("INVITE", ok, src, cseq=3, call_id="call-1", branch="lock",
                       body=locked), src)
    [answer] = [r for r in net.responses(src) if r.status == 200]
    assert b"m=audio 30000 RTP/AVP 0 101" in answer.body and answer.cseq.number == 3
    [update] = [m for m in net.media if isinstance(m, UpdateMedia)]
    assert update.negotiated.codec == "PCMU"
    net.send(in_dialog("INFO", ok, src, cseq=4, call_id="call-1", branch="info"), src)
    assert statuses(net.drain(src)) == [200]


def test_late_offer_the_callees_ack_carries_the_callers_answer(net: Net) -> None:
    """An INVITE without SDP: the callee offers in its 200, the caller answers in its
    ACK, and that answer must reach the callee in the callee's ACK (RFC 3261
    s13.2.2.4); the engine holds the callee's ACK until then."""
    register(net, "101", "102")
    src = PHONES["101"]
    plain = invite("102", "101", src, call_id="late")
    no_sdp = plain.replace(SDP, b"").replace(b"Content-Length: %d" % len(SDP),
                                             b"Content-Length: 0")
    net.send(no_sdp, src)
    [challenge] = [r for r in net.responses(src) if r.status == 407]
    net.send(ack_for(no_sdp, challenge), src)
    auth = build_authorization(challenge.get("proxy-authenticate") or "", "INVITE",
                               "sip:102@pbx.test", "101", "pw101", "cn")
    signed = invite("102", "101", src, call_id="late", auth=auth, cseq=2)
    signed = signed.replace(SDP, b"").replace(b"Content-Length: %d" % len(SDP),
                                              b"Content-Length: 0")
    net.send(signed, src)
    [inv] = net.requests(PHONES["102"], "INVITE")
    assert inv.body == b""
    net.send(reply(inv, 200, body=SDP, contact="<sip:102@127.0.0.1:6102>"), PHONES["102"])
    assert net.requests(PHONES["102"], "ACK") == []  # waits for the caller's answer
    [ok] = [r for r in net.responses(src) if r.status == 200]
    assert ok.body == SDP  # the callee's offer
    net.send(reply(inv, 200, body=SDP, contact="<sip:102@127.0.0.1:6102>"), PHONES["102"])
    assert net.requests(PHONES["102"], "ACK") == []  # a retransmitted 200 changes nothing
    answer = SDP.replace(b"20000", b"30000")
    net.send(in_dialog("ACK", ok, src, cseq=2, call_id="late", branch="lateack",
                       body=answer), src)
    [ack] = net.requests(PHONES["102"], "ACK")
    assert ack.body == answer and ack.get("content-type") == "application/sdp"
    net.send(reply(inv, 200, body=SDP, contact="<sip:102@127.0.0.1:6102>"), PHONES["102"])
    [again] = net.requests(PHONES["102"], "ACK")  # the same ACK for a late retransmission
    assert again.body == answer


def test_late_offer_without_the_callers_ack_the_callee_is_acked_then_hung_up(
        net: Net) -> None:
    register(net, "101", "102")
    src = PHONES["101"]

    def no_sdp(data: bytes) -> bytes:
        return data.replace(SDP, b"").replace(b"Content-Length: %d" % len(SDP),
                                              b"Content-Length: 0")

    first = no_sdp(invite("102", "101", src, call_id="late2"))
    net.send(first, src)
    [challenge] = [r for r in net.responses(src) if r.status == 407]
    net.send(ack_for(first, challenge), src)
    auth = build_authorization(challenge.get("proxy-authenticate") or "", "INVITE",
                               "sip:102@pbx.test", "101", "pw101", "cn")
    net.send(no_sdp(invite("102", "101", src, call_id="late2", auth=auth, cseq=2)), src)
    [inv] = net.requests(PHONES["102"], "INVITE")
    net.send(reply(inv, 200, body=SDP, contact="<sip:102@127.0.0.1:6102>"), PHONES["102"])
    net.tick(40)  # the caller never ACKs our 200 (64*T1)
    methods = [m.method for m in net.requests(PHONES["102"])]
    assert methods[:2] == ["ACK", "BYE"]
