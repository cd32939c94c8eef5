"""Anchored media in the B2BUA: SDP rewritten on each leg, hold answered by the
engine, hold-music playlist and recording decisions. Sans-I/O, fake clock (the
harness of test_calls); the sockets side is in test_e2e_hold.py."""

from __future__ import annotations

import tomllib

import pytest

from engine.calls.events import BridgeMedia, OpenMedia, StartVoicemail, StopMedia
from engine.core import Engine
from engine.sip.message import Request, Response
from media.sdp import parse_sdp
from provisioning.directory import parse_directory
from tests.test_calls import (
    DIRECTORY,
    PHONES,
    SDP,
    TRUNK,
    Clock,
    Net,
    in_dialog,
    phone_call,
    register,
    reply,
    trunk_call,
)

ANCHORED = DIRECTORY.replace(
    'voicemail_number = "999"',
    'voicemail_number = "999"\nhold_music = ["moh/system.wav"]',
).replace(
    'number = "+15145550100"\nroute_to = "extension:101"',
    'number = "+15145550100"\nroute_to = "extension:101"\nhold_music = ["moh/sales.wav"]\n'
    "record_inbound = true",
).replace(
    'password = "pw103"\ndepartment = "Sales"',
    'password = "pw103"\ndepartment = "Sales"\noutbound_caller_id = "+15145550104"',
).replace(
    'password = "pw102"\ndepartment = "Sales"',
    'password = "pw102"\ndepartment = "Sales"\ncodecs = ["PCMA", "PCMU"]\n'
    'record_calls = "all"',
)
CALLEE_SDP = (b"v=0\r\no=phone 7 7 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
              b"m=audio 40000 RTP/AVP 8 101\r\na=rtpmap:101 telephone-event/8000\r\n")



def mobile_hangs_up(net: Net, mobile: Request) -> None:
    """The mobile (reached through the trunk by ``mobile``, our INVITE to it, which it
    answered with To tag ``mob``) sends BYE."""
    lines = [
        "BYE sip:switchboard@127.0.0.1:5060 SIP/2.0",
        "Via: SIP/2.0/UDP 127.0.0.9:5090;branch=z9hG4bKmobbye;rport",
        "Max-Forwards: 70",
        f"From: {mobile.get('to')};tag=mob",
        f"To: {mobile.get('from')}",
        f"Call-ID: {mobile.call_id}",
        "CSeq: 1 BYE",
        "Content-Length: 0",
    ]
    net.send(("\r\n".join(lines) + "\r\n\r\n").encode(), TRUNK)

def anchored_net() -> Net:
    clock = Clock()
    directory = parse_directory(tomllib.loads(ANCHORED), "<test>")
    engine = Engine(directory, {"127.0.0.1", "pbx.test"}, 5060, wall_clock=lambda: clock.wall,
                    digest_algorithms=("MD5",), advertise="127.0.0.1", anchor_media=True)
    return Net(engine, clock)


@pytest.fixture
def net() -> Net:
    return anchored_net()


def opened(net: Net) -> OpenMedia:
    [action] = [m for m in net.media if isinstance(m, OpenMedia)]
    return action


def bridges(net: Net) -> list[BridgeMedia]:
    return [m for m in net.media if isinstance(m, BridgeMedia)]


def answered_call(net: Net) -> tuple[Response, Request]:
    """101 calls 102; the engine opens two endpoints; 102 answers with PCMA."""
    register(net, "101", "102")
    src = phone_call(net, "101", "102")
    assert net.requests(PHONES["102"], "INVITE") == []  # waits for the endpoints
    action = opened(net)
    assert action.bridge
    net.take(net.engine.media_ready(action.call, (30000, 30002), net.clock.now))
    [inv] = net.requests(PHONES["102"], "INVITE")
    net.send(reply(inv, 200, body=CALLEE_SDP, contact="<sip:102@127.0.0.1:6102>"),
             PHONES["102"])
    [ok] = [r for r in net.responses(src) if r.status == 200]
    net.send(in_dialog("ACK", ok, src, cseq=2, call_id="call-1", branch="ack1"), src)
    assert [r.method for r in net.requests(PHONES["102"])] == ["ACK"]
    return ok, inv


def test_callee_gets_our_address_and_its_users_codec_order(net: Net) -> None:
    ok, inv = answered_call(net)
    offer = parse_sdp(inv.body)
    audio = offer.audio()
    assert audio is not None and audio.address == "127.0.0.1" and audio.port == 30002
    assert [f.name for f in audio.formats] == ["PCMA", "PCMU", "telephone-event"]
    assert offer.origin.username == "-" and offer.origin.session_id != "1"
    answer = parse_sdp(ok.body)
    caller_side = answer.audio()
    assert caller_side is not None and caller_side.port == 30000
    assert next(f.name for f in caller_side.formats) == "PCMA"  # the callee's choice
    [bridge] = bridges(net)
    assert bridge.caller_media is not None and bridge.callee_media is not None
    assert bridge.caller_media.codec == bridge.callee_media.codec == "PCMA"
    assert bridge.caller_media.remote_port == 20000 and bridge.callee_media.remote_port == 40000
    assert not bridge.music_to_caller and not bridge.music_to_callee
    assert bridge.record == "user 102 records all calls"
    assert bridge.parties == ("101", "102")


def test_hold_from_the_caller_is_answered_by_the_engine_and_plays_music(net: Net) -> None:
    ok, _ = answered_call(net)
    src = PHONES["101"]
    net.media.clear()
    hold = SDP.replace(b"a=rtpmap:101", b"a=sendonly\r\na=rtpmap:101")
    net.send(in_dialog("INVITE", ok, src, cseq=3, call_id="call-1", branch="hold1",
                       body=hold), src)
    [answer] = [r for r in net.responses(src) if r.status == 200]
    assert b"a=recvonly" in answer.body and b"m=audio 30000" in answer.body
    assert net.requests(PHONES["102"]) == []  # the callee is not disturbed
    [bridge] = bridges(net)
    assert bridge.music_to_callee and not bridge.music_to_caller
    assert bridge.playlist == ("moh/sales.wav",)  # 101 presents the Sales number
    net.media.clear()
    net.send(in_dialog("INVITE", ok, src, cseq=4, call_id="call-1", branch="resume1",
                       body=SDP), src)
    [resumed] = [r for r in net.responses(src) if r.status == 200]
    assert b"a=sendrecv" in resumed.body
    [bridge] = bridges(net)
    assert not bridge.music_to_callee and not bridge.music_to_caller


def test_hold_from_the_callee_plays_music_to_the_caller(net: Net) -> None:
    _, inv = answered_call(net)
    net.media.clear()
    ok_to_callee = reply(inv, 200, body=CALLEE_SDP, contact="<sip:102@127.0.0.1:6102>")
    # The callee's re-INVITE: its own dialog (From = callee, To = the engine's leg).
    hold = CALLEE_SDP.replace(b"a=rtpmap:101", b"a=inactive\r\na=rtpmap:101")
    lines = [
        f"INVITE {inv.contacts[0].uri if inv.contacts else 'sip:switchboard@127.0.0.1'} SIP/2.0",
        "Via: SIP/2.0/UDP 127.0.0.1:6102;branch=z9hG4bKcalleehold;rport",
        "Max-Forwards: 70",
        f"From: {ok_to_callee.get('to')}",
        f"To: {inv.get('from')}",
        f"Call-ID: {inv.call_id}",
        "CSeq: 2 INVITE",
        "Contact: <sip:102@127.0.0.1:6102>",
        "Content-Type: application/sdp",
        f"Content-Length: {len(hold)}",
    ]
    net.send(("\r\n".join(lines) + "\r\n\r\n").encode() + hold, PHONES["102"])
    [answer] = [r for r in net.responses(PHONES["102"]) if r.status == 200]
    assert b"a=inactive" in answer.body and b"m=audio 30002" in answer.body
    assert net.requests(PHONES["101"]) == []
    [bridge] = bridges(net)
    assert bridge.music_to_caller and not bridge.music_to_callee


def test_a_trunk_call_holds_with_the_dids_playlist_and_is_recorded(net: Net) -> None:
    register(net, "101")
    trunk_call(net, "+15145550100")
    net.take(net.engine.media_ready(opened(net).call, (30000, 30002), net.clock.now))
    [desk] = net.requests(PHONES["101"], "INVITE")
    net.send(reply(desk, 200, body=CALLEE_SDP, contact="<sip:101@127.0.0.1:6101>"),
             PHONES["101"])
    [bridge] = bridges(net)
    assert bridge.playlist == ("moh/sales.wav",)
    assert bridge.record == "number +15145550100 records inbound calls"


def test_unanswered_anchored_call_goes_to_voicemail_on_the_open_endpoint(net: Net) -> None:
    register(net, "101", "102")
    src = phone_call(net, "101", "102")
    net.take(net.engine.media_ready(opened(net).call, (30000, 30002), net.clock.now))
    [inv] = net.requests(PHONES["102"], "INVITE")
    net.send(reply(inv, 180), PHONES["102"])
    net.tick(10.5)
    assert len([m for m in net.media if isinstance(m, OpenMedia)]) == 1  # no second open
    [start] = [m for m in net.media if isinstance(m, StartVoicemail)]
    assert start.box == "102"
    ok = next(r for r in net.responses(src) if r.status == 200)
    assert b"m=audio 30000" in ok.body


def test_no_media_endpoint_still_connects_the_call_directly(net: Net) -> None:
    register(net, "101", "102")
    phone_call(net, "101", "102")
    net.take(net.engine.media_failed(opened(net).call, "no port free", net.clock.now))
    [inv] = net.requests(PHONES["102"], "INVITE")
    assert inv.body == SDP  # passed end to end


def test_caller_gone_before_the_endpoints_open_closes_them(net: Net) -> None:
    register(net, "101", "102")
    src = phone_call(net, "101", "102")
    action = opened(net)
    cancel = (f"CANCEL sip:102@pbx.test SIP/2.0\r\n"
              f"Via: SIP/2.0/UDP {src[0]}:{src[1]};branch=z9hG4bKcall-1-2;rport\r\n"
              f"Max-Forwards: 70\r\nFrom: \"Caller 101\" <sip:101@pbx.test>;tag=from-call-1\r\n"
              f"To: <sip:102@pbx.test>\r\nCall-ID: call-1\r\nCSeq: 2 CANCEL\r\n"
              f"Content-Length: 0\r\n\r\n").encode()
    net.send(cancel, src)
    assert 487 in [r.status for r in net.responses(src)]
    net.media.clear()
    net.take(net.engine.media_ready(action.call, (30000, 30002), net.clock.now))
    assert [m for m in net.media if isinstance(m, StopMedia)]
    assert net.requests(PHONES["102"]) == []


def test_a_holder_whose_number_has_no_playlist_gets_the_systems(net: Net) -> None:
    register(net, "103", "102")
    src = phone_call(net, "103", "102")
    net.take(net.engine.media_ready(opened(net).call, (30000, 30002), net.clock.now))
    [inv] = net.requests(PHONES["102"], "INVITE")
    net.send(reply(inv, 200, body=CALLEE_SDP, contact="<sip:102@127.0.0.1:6102>"),
             PHONES["102"])
    [ok] = [r for r in net.responses(src) if r.status == 200]
    net.media.clear()
    hold = SDP.replace(b"c=IN IP4 127.0.0.1", b"c=IN IP4 0.0.0.0")  # RFC 2543 hold
    net.send(in_dialog("INVITE", ok, src, cseq=3, call_id="call-1", branch="hold3",
                       body=hold), src)
    [bridge] = bridges(net)
    assert bridge.music_to_callee and bridge.playlist == ("moh/system.wav",)


# ---------------------------------------------------------------------- rebound screening
def screening_call(net: Net) -> Request:
    """A trunk call to 104 (away from the desk): no answer, then the mobile is rung with
    rebound; the mobile answers. Returns the INVITE the mobile leg got."""
    register(net, "104")
    trunk_call(net, "+15145550104")
    net.take(net.engine.media_ready(opened(net).call, (30000, 30002), net.clock.now))
    net.requests(PHONES["104"], "INVITE")
    net.tick(10.5)  # no answer at the desk: the rebound leg to the mobile
    mobile = next(m for m in net.drain(TRUNK) if isinstance(m, Request) and m.method == "INVITE")
    assert mobile.uri_text.startswith("sip:+15145550444@")
    net.media.clear()
    net.send(reply(mobile, 200, tag="mob", body=CALLEE_SDP,
                   contact="<sip:+15145550444@127.0.0.9:5090>"), TRUNK)
    return mobile


def to_caller(net: Net) -> list[Response]:
    return [m for m in net.drain(TRUNK) if isinstance(m, Response) and m.call_id == "tcall-1"]


def test_a_rebound_leg_that_answers_hears_the_caller_and_the_caller_hears_music(
        net: Net) -> None:
    screening_call(net)
    got = to_caller(net)
    assert [r.status for r in got] == [183]  # not answered yet: screened first
    assert b"m=audio 30000" in got[0].body
    [bridge] = bridges(net)
    assert bridge.announce == "+15145550199" and bridge.music_to_caller
    assert not bridge.music_to_callee
    net.media.clear()
    net.take(net.engine.screened(bridge.call, True, net.clock.now))
    assert 200 in [r.status for r in to_caller(net)]
    [bridge] = bridges(net)
    assert bridge.announce == "" and not bridge.music_to_caller  # relayed now


@pytest.mark.parametrize("how", ["refused", "timeout", "far_end_hangs_up"])
def test_a_refused_rebound_comes_back_to_voicemail(net: Net, how: str) -> None:
    mobile = screening_call(net)
    [bridge] = bridges(net)
    net.drain(TRUNK)
    if how == "refused":
        net.take(net.engine.screened(bridge.call, False, net.clock.now))
    elif how == "timeout":
        net.tick(31)
    else:
        mobile_hangs_up(net, mobile)
    msgs = net.drain(TRUNK)
    byes = {m.get("via") for m in msgs if isinstance(m, Request) and m.method == "BYE"}
    assert len(byes) == (0 if how == "far_end_hangs_up" else 1)
    [start] = [m for m in net.media if isinstance(m, StartVoicemail)]
    assert start.box == "104"
    assert any(isinstance(m, Response) and m.status == 200 and m.call_id == "tcall-1"
               for m in msgs)
    assert net.engine.calls.channels_in_use() == {"carrier": 1}  # the mobile leg's channel is free


# ---------------------------------------------------------------------- ring groups
GROUPED = ANCHORED + """
[[ring_groups]]
name = "sales"
extension = "800"
strategy = "ring_all"
members = ["101", "102"]
ring_seconds = 10
no_answer = "voicemail:101"
"""


def test_a_caller_waiting_in_a_ring_group_hears_music_in_a_codec_every_leg_gets() -> None:
    clock = Clock()
    directory = parse_directory(tomllib.loads(GROUPED), "<test>")
    engine = Engine(directory, {"127.0.0.1", "pbx.test"}, 5060, wall_clock=lambda: clock.wall,
                    digest_algorithms=("MD5",), advertise="127.0.0.1", anchor_media=True)
    net = Net(engine, clock)
    register(net, "101", "102", "103")
    src = phone_call(net, "103", "800")
    net.take(net.engine.media_ready(opened(net).call, (30000, 30002), net.clock.now))
    [early] = [r for r in net.responses(src) if r.status == 183]
    answer = parse_sdp(early.body).audio()
    assert answer is not None and answer.port == 30000
    assert answer.formats[0].name == "PCMU"  # 103's list (default: G722 first) among 0 8
    [music] = bridges(net)
    assert music.music_to_caller and music.callee_media is None
    legs = net.requests(PHONES["101"], "INVITE") + net.requests(PHONES["102"], "INVITE")
    assert len(legs) == 2
    for leg in legs:  # 102 prefers PCMA, but the caller already hears PCMU
        offered = parse_sdp(leg.body).audio()
        assert offered is not None
        assert [f.name for f in offered.formats] == ["PCMU", "telephone-event"]
    net.media.clear()
    pcmu = CALLEE_SDP.replace(b"RTP/AVP 8 101", b"RTP/AVP 0 101")
    net.send(reply(legs[1], 200, body=pcmu, contact="<sip:102@127.0.0.1:6102>"),
             PHONES["102"])
    assert 200 in [r.status for r in net.responses(src)]
    [bridge] = bridges(net)
    assert not bridge.music_to_caller and bridge.callee_media is not None
    assert bridge.callee_media.codec == "PCMU"


def test_the_callee_leg_of_an_anchored_call_is_offered_no_session_timer(net: Net) -> None:
    """The engine answers the caller's refreshes itself: a timer on the callee leg with
    the engine as refresher would drop the call when it expires (RFC 4028)."""
    from tests.test_calls import invite

    register(net, "101")
    data = invite("+15145550100", "+15145550199", TRUNK, call_id="timer", host="127.0.0.1")
    data = data.replace(b"Content-Type:", b"Supported: timer, replaces\r\n"
                        b"Session-Expires: 1800\r\nMin-SE: 90\r\nContent-Type:", 1)
    net.send(data, TRUNK)
    net.take(net.engine.media_ready(opened(net).call, (30000, 30002), net.clock.now))
    [leg] = net.requests(PHONES["101"], "INVITE")
    assert leg.get("session-expires") is None and leg.get("min-se") is None
    assert leg.get("supported") == "replaces"
    assert leg.get("to") == "<sip:101@pbx.test>"


@pytest.mark.parametrize("anchored", [True, False])
def test_an_ended_call_is_freed_by_reference_counting(anchored: bool) -> None:
    """No Call, Leg or Dialog is left for the cyclic collector (the engine tunes it to
    run rarely: cycles would pile up between its passes)."""
    import gc

    from tests.test_calls import make_net

    net = anchored_net() if anchored else make_net()
    gc.collect()
    gc.disable()
    try:
        if anchored:
            ok, _ = answered_call(net)
        else:
            register(net, "101", "102")
            src = phone_call(net, "101", "102")
            [inv] = net.requests(PHONES["102"], "INVITE")
            net.send(reply(inv, 200, body=CALLEE_SDP, contact="<sip:102@127.0.0.1:6102>"),
                     PHONES["102"])
            [ok] = [r for r in net.responses(src) if r.status == 200]
            net.send(in_dialog("ACK", ok, src, cseq=2, call_id="call-1", branch="ack1"), src)
        src = PHONES["101"]
        net.send(in_dialog("BYE", ok, src, cseq=3, call_id="call-1", branch="bye1"), src)
        [bye] = net.requests(PHONES["102"], "BYE")
        net.send(reply(bye, 200), PHONES["102"])
        net.tick(64)  # every transaction of the call ends
        assert net.engine.calls.calls_in_progress() == []
        net.inbox.clear()
        net.media.clear()
        del ok, bye
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left = {type(o).__name__ for o in gc.garbage} & {
            "Call", "Leg", "Dialog", "MediaAnchor", "MediaSide", "Transfer"}
        assert left == set()
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
