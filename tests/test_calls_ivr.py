"""IVR menus in the call layer, sans-I/O with a fake clock (the harness of
test_calls): the engine answers, plays the prompt (``IvrPlay``), times out and
plays again, reads keys from the media service (RFC 4733) and from SIP INFO
application/dtmf-relay, dials by extension with its inter-digit timer, and runs
the choice as the answered caller's plan. The sockets side is
tests/test_phones_ivr.py."""

from __future__ import annotations

import tomllib

from engine.calls.events import BridgeMedia, IvrPlay, IvrQuiet, OpenMedia, StopMedia
from engine.calls.ivr import INTER_DIGIT_SECONDS
from engine.core import Engine
from engine.sip.message import Request, Response
from provisioning.directory import parse_directory
from tests.test_calls import (
    DIRECTORY,
    PHONES,
    TRUNK,
    Clock,
    Net,
    in_dialog,
    phone_call,
    register,
    reply,
    trunk_call,
)

# 103 answers in the only codec it was offered: the caller's (PCMU)
CALLEE_SDP = (b"v=0\r\no=phone 7 7 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
              b"m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n")

MENU = DIRECTORY.replace('number = "+15145550102"\nroute_to = "extension:102"',
                         'number = "+15145550102"\nroute_to = "ivr:main"\n'
                         'record_inbound = true') + """
[[ivrs]]
name = "main"
extension = "850"
prompt = "menu.wav"
keys = { "1" = "extension:102", "9" = "busy", "0" = "external:+15145550177" }
dial_by_extension = true
timeout_seconds = 4
repeat = 1
on_timeout = "extension:103"
on_invalid = "ivr:main"
"""
KEY = ("call-1", "from-call-1")


def ivr_net(anchor: bool = True) -> Net:
    clock = Clock()
    directory = parse_directory(tomllib.loads(MENU), "<test>")
    engine = Engine(directory, {"127.0.0.1", "pbx.test"}, 5060, wall_clock=lambda: clock.wall,
                    digest_algorithms=("MD5",), advertise="127.0.0.1", anchor_media=anchor)
    return Net(engine, clock)


def plays(net: Net) -> list[IvrPlay]:
    return [m for m in net.media if isinstance(m, IvrPlay)]


def in_menu(net: Net) -> Response:
    """101 calls the menu: two endpoints open, the engine answers 200 and plays."""
    register(net, "101", "102", "103")
    src = PHONES["101"]
    phone_call(net, "101", "850")
    [opened] = [m for m in net.media if isinstance(m, OpenMedia)]
    assert opened.bridge and opened.call == KEY
    net.take(net.engine.media_ready(KEY, (30000, 30002), net.clock.now))
    [ok] = [r for r in net.responses(src) if r.status == 200]
    assert b"m=audio 30000" in ok.body
    net.send(in_dialog("ACK", ok, src, cseq=2, call_id="call-1", branch="ack1"), src)
    [play] = plays(net)
    assert (play.prompt, play.generation) == ("menu.wav", 1)
    return ok


def prompt_done(net: Net, generation: int) -> None:
    net.take(net.engine.ivr_prompt_done(KEY, generation, net.clock.now))


def digit(net: Net, key: str) -> None:
    net.take(net.engine.ivr_digit(KEY, key, net.clock.now))


def test_no_key_plays_again_then_goes_to_on_timeout_in_the_answered_call() -> None:
    net = ivr_net()
    in_menu(net)
    net.tick(30)  # the response timer starts after the prompt, not before
    assert len(plays(net)) == 1 and net.requests(PHONES["103"]) == []
    prompt_done(net, 1)
    net.tick(3.9)
    assert len(plays(net)) == 1
    net.tick(0.2)
    assert [p.generation for p in plays(net)] == [1, 2]  # repeat = 1: once more
    prompt_done(net, 1)  # a stale report of the first play changes nothing
    net.tick(5)
    assert net.requests(PHONES["103"]) == []
    prompt_done(net, 2)
    net.tick(4.1)
    [inv] = net.requests(PHONES["103"], "INVITE")
    assert any(isinstance(m, IvrQuiet) and m.done for m in net.media)
    # the caller waits with hold music; 103 is offered only the caller's codec
    assert [b.music_to_caller for b in net.media if isinstance(b, BridgeMedia)][-1]
    assert b"m=audio 30002" in inv.body
    net.send(reply(inv, 200, body=CALLEE_SDP, contact="<sip:103@127.0.0.1:6103>"),
             PHONES["103"])
    assert [r.method for r in net.requests(PHONES["103"])] == ["ACK"]
    last = [b for b in net.media if isinstance(b, BridgeMedia)][-1]
    assert last.caller_media is not None and last.callee_media is not None
    assert not last.music_to_caller
    assert net.responses(PHONES["101"]) == []  # no second answer: the same dialog


def test_a_key_by_sip_info_chooses_at_once() -> None:
    net = ivr_net()
    ok = in_menu(net)
    src = PHONES["101"]
    info = in_dialog("INFO", ok, src, cseq=3, call_id="call-1", branch="info1",
                     body=b"Signal=9\r\nDuration=160\r\n")
    info = info.replace(b"Content-Type: application/sdp", b"Content-Type: application/dtmf-relay")
    net.send(info, src)
    got = net.drain(src)
    assert [r.status for r in got if isinstance(r, Response) and r.cseq.method == "INFO"] == [200]
    # key 9 is "busy": the answered caller is hung up
    assert [r.method for r in got if isinstance(r, Request)] == ["BYE"]
    assert any(isinstance(m, StopMedia) for m in net.media)


def test_dial_by_extension_waits_between_digits() -> None:
    net = ivr_net()
    in_menu(net)
    digit(net, "1")  # starts 101-103: wait for more, the prompt stops
    assert any(isinstance(m, IvrQuiet) and not m.done for m in net.media)
    net.tick(INTER_DIGIT_SECONDS - 0.5)
    digit(net, "0")
    net.tick(INTER_DIGIT_SECONDS - 0.5)
    assert net.requests(PHONES["102"]) == []
    digit(net, "2")  # complete: 102 at once
    [inv] = net.requests(PHONES["102"], "INVITE")
    assert inv.call_id != "call-1"


def test_one_digit_that_is_also_a_key_is_the_key_after_the_wait() -> None:
    net = ivr_net()
    in_menu(net)
    digit(net, "1")
    net.tick(INTER_DIGIT_SECONDS - 0.1)
    assert net.requests(PHONES["102"]) == []
    net.tick(0.2)
    assert len(net.requests(PHONES["102"], "INVITE")) == 1


def test_an_invalid_key_and_digits_that_are_no_extension_go_to_on_invalid() -> None:
    net = ivr_net()
    in_menu(net)
    digit(net, "5")  # not a key, no extension starts with 5: on_invalid, the menu again
    assert [p.generation for p in plays(net)] == [1, 1]  # a new session's first play
    digit(net, "1")
    digit(net, "0")
    digit(net, "7")  # 107 is no one
    assert len(plays(net)) == 3
    assert net.requests(PHONES["102"]) == []


def test_a_caller_hanging_up_in_the_menu_ends_it() -> None:
    net = ivr_net()
    ok = in_menu(net)
    src = PHONES["101"]
    net.send(in_dialog("BYE", ok, src, cseq=3, call_id="call-1", branch="bye1"), src)
    assert any(isinstance(m, StopMedia) for m in net.media)
    assert net.engine.calls.calls_in_progress() == []
    digit(net, "1")  # a key after the end is nobody's
    assert net.requests(PHONES["102"]) == []


def test_without_the_engines_media_the_menu_is_refused_with_a_warning() -> None:
    net = ivr_net(anchor=False)
    register(net, "101")
    phone_call(net, "101", "850")
    [final] = [r for r in net.responses(PHONES["101"]) if r.status >= 300]
    assert final.status == 480
    assert "serve --media relay" in (final.get("warning") or "")


def test_a_trunk_caller_chooses_an_external_number_through_the_trunk() -> None:
    net = ivr_net()
    register(net, "102")
    trunk_call(net, "+15145550102")  # the DID routes to the menu
    [opened] = [m for m in net.media if isinstance(m, OpenMedia)]
    net.take(net.engine.media_ready(opened.call, (30000, 30002), net.clock.now))
    got = net.drain(TRUNK)
    [ok] = [r for r in got if isinstance(r, Response) and r.status == 200]
    assert b"m=audio 30000" in ok.body
    assert net.engine.calls.channels_in_use() == {"carrier": 1}
    net.take(net.engine.ivr_digit(opened.call, "0", net.clock.now))
    [out] = [r for r in net.drain(TRUNK) if isinstance(r, Request) and r.method == "INVITE"]
    assert out.uri_text.startswith("sip:+15145550177@")
    assert "+15145550199" in (out.get("p-asserted-identity") or "")  # the trunk caller's
    assert net.engine.calls.channels_in_use() == {"carrier": 2}  # in and out
    net.send(reply(out, 200, body=CALLEE_SDP, contact="<sip:+15145550177@127.0.0.9:5090>"),
             TRUNK)
    last = [b for b in net.media if isinstance(b, BridgeMedia)][-1]
    assert last.callee_media is not None and not last.music_to_caller
    assert last.record == "number +15145550102 records inbound calls"  # as a DID call is
