"""Answer confirmation on external legs (``confirm_external_answer``) in the B2BUA:
an answered mobile must press 1 before it takes the call, while the desk phone
rings on. Sans-I/O, fake clock (the harness of test_calls and test_calls_anchor);
real phones are in test_phones_confirm.py."""

from __future__ import annotations

import tomllib

import pytest

from engine.calls.events import BridgeMedia, StartVoicemail
from engine.core import Engine
from engine.sip.message import Request, Response
from engine.sip.transaction import Addr
from media.sdp import parse_sdp
from provisioning.directory import parse_directory
from provisioning.model import Binding
from routing import CONFIRM_SECONDS
from tests.test_calls import TRUNK, Clock, Net, in_dialog, reply, trunk_call
from tests.test_calls_anchor import ANCHORED, CALLEE_SDP, bridges, mobile_hangs_up, opened

DESK: Addr = ("127.0.0.1", 6105)
CALLER_ID = "tcall-1"
NO_ANSWER = 20  # 105's no_answer_seconds: longer than CONFIRM_SECONDS

CONFIRMING = ANCHORED + f"""
[[numbers]]
number = "+15145550105"
route_to = "extension:105"

[[numbers]]
number = "+15145550106"
route_to = "extension:106"

[[users]]
extension = "105"
name = "Eve Gagnon"
password = "pw105"
department = "Sales"
mobile = "+15145550555"
confirm_external_answer = true
[users.voicemail]
language = "fr"
[users.forwarding.available]
no_answer_seconds = {NO_ANSWER}
no_answer = {{ external = "voicemail", internal = "voicemail" }}
busy = {{ external = "voicemail", internal = "voicemail" }}
ring_mobile_simultaneously = true

[[users]]
extension = "106"
name = "Félix Roy"
password = "pw106"
department = "Sales"
mobile = "+15145550666"
confirm_external_answer = true
[users.forwarding.available]
no_answer_seconds = 0
no_answer = {{ external = "mobile", internal = "voicemail" }}
"""


@pytest.fixture
def net() -> Net:
    clock = Clock()
    directory = parse_directory(tomllib.loads(CONFIRMING), "<test>")
    engine = Engine(directory, {"127.0.0.1", "pbx.test"}, 5060, wall_clock=lambda: clock.wall,
                    digest_algorithms=("MD5",), advertise="127.0.0.1", anchor_media=True)
    return Net(engine, clock)


def register_desk(net: Net) -> None:
    net.engine.registrar.load([Binding(
        aor="105", contact=f"sip:105@{DESK[0]}:{DESK[1]}", expires_at=net.clock.wall + 3600,
        call_id="reg105", cseq=1, source=f"udp:{DESK[0]}:{DESK[1]}")], net.clock.wall)


def to_caller(msgs: list[Request | Response]) -> list[Response]:
    return [m for m in msgs if isinstance(m, Response) and m.call_id == CALLER_ID]


def to_mobile(msgs: list[Request | Response], method: str) -> list[Request]:
    return [m for m in msgs if isinstance(m, Request) and m.method == method
            and m.call_id != CALLER_ID]


def channels(net: Net) -> int:
    return net.engine.calls.channels_in_use().get("carrier", 0)


def ringing(net: Net, early_media: bool = False) -> tuple[Request, Request]:
    """A trunk call to 105: the desk phone and the mobile ring (180; with
    ``early_media`` the mobile's carrier sends 183 with SDP instead). Returns the
    INVITEs (desk, mobile)."""
    register_desk(net)
    trunk_call(net, "+15145550105")
    net.take(net.engine.media_ready(opened(net).call, (30000, 30002), net.clock.now))
    [desk] = net.requests(DESK, "INVITE")
    [mobile] = to_mobile(net.drain(TRUNK), "INVITE")
    assert mobile.uri_text.startswith("sip:+15145550555@")
    net.send(reply(desk, 180), DESK)
    if early_media:
        net.send(reply(mobile, 183, tag="mob", body=CALLEE_SDP), TRUNK)
    else:
        net.send(reply(mobile, 180, tag="mob"), TRUNK)
    assert channels(net) == 2  # the caller's and the mobile's
    return desk, mobile


def mobile_answers(net: Net, mobile: Request) -> list[Request | Response]:
    net.drain(TRUNK)
    net.media.clear()
    net.send(reply(mobile, 200, tag="mob", body=CALLEE_SDP,
                   contact="<sip:+15145550555@127.0.0.9:5090>"), TRUNK)
    return net.drain(TRUNK)


def asked(net: Net, early_media: bool = False) -> tuple[Request, Request, BridgeMedia]:
    """The mobile answers and is asked to press 1; nothing is answered to the caller,
    nothing happens to the desk phone. Returns (desk, mobile INVITE, the bridge)."""
    desk, mobile = ringing(net, early_media)
    got = mobile_answers(net, mobile)
    assert to_caller(got) == []  # no 200, no 183: the caller keeps ringing
    assert [m.method for m in got if isinstance(m, Request)] == ["ACK"]  # the mobile's 2xx
    assert net.drain(DESK) == []  # the desk phone rings on
    [bridge] = bridges(net)
    assert bridge.screen == "confirm" and bridge.language == "fr"
    assert bridge.announce == ""  # its phone shows the caller already
    assert not bridge.music_to_caller  # no hold music for the caller
    assert bridge.callee_media is not None and bridge.callee_media.remote_port == 40000
    assert channels(net) == 2
    net.media.clear()
    return desk, mobile, bridge


def mobile_bye(net: Net) -> Request:
    [bye] = to_mobile(net.drain(TRUNK), "BYE")
    net.send(reply(bye, 200), TRUNK)
    return bye


def released(net: Net) -> None:
    """The mobile got BYE; its channel and the endpoint facing the callees are free;
    the desk phone rings on; the caller is not answered."""
    got = net.drain(TRUNK)
    assert to_caller(got) == []
    [bye] = to_mobile(got, "BYE")
    net.send(reply(bye, 200), TRUNK)
    assert channels(net) == 1  # the caller's only
    assert net.drain(DESK) == []  # no CANCEL: the desk phone rings on
    [bridge] = bridges(net)
    assert bridge.screen == "" and bridge.callee_media is None  # the prompt stops
    assert not bridge.music_to_caller and not bridge.ringback_to_caller
    assert net.engine.calls.active_count == 1  # the call goes on
    net.media.clear()


def voicemail_after_the_step(net: Net, desk: Request) -> None:
    """The step's timer ends it: the desk phone is cancelled, 105's voicemail
    answers; the caller hangs up; nothing is left."""
    net.tick(NO_ANSWER - CONFIRM_SECONDS)
    [cancel] = net.requests(DESK, "CANCEL")
    net.send(reply(cancel, 200), DESK)
    net.send(reply(desk, 487), DESK)
    [start] = [m for m in net.media if isinstance(m, StartVoicemail)]
    assert start.box == "105"
    [ok] = [r for r in to_caller(net.drain(TRUNK)) if r.status == 200]
    hang_up(net, ok)


def hang_up(net: Net, ok: Response) -> None:
    net.send(in_dialog("ACK", ok, TRUNK, cseq=1, call_id=CALLER_ID, branch="cack"), TRUNK)
    net.send(in_dialog("BYE", ok, TRUNK, cseq=2, call_id=CALLER_ID, branch="cbye"), TRUNK)
    for bye in to_mobile(net.drain(TRUNK), "BYE"):
        net.send(reply(bye, 200), TRUNK)
    net.tick(64)  # every transaction ends
    assert net.engine.calls.calls_in_progress() == []
    assert channels(net) == 0


# ---------------------------------------------------------------------- the decision
def test_the_mobile_that_presses_1_takes_the_call(net: Net) -> None:
    desk, _, bridge = asked(net)
    net.take(net.engine.screened(bridge.call, True, net.clock.now))
    [ok] = [r for r in to_caller(net.drain(TRUNK)) if r.status == 200]
    answer = parse_sdp(ok.body).audio()
    assert answer is not None and answer.port == 30000  # the engine's side
    [cancel] = net.requests(DESK, "CANCEL")
    assert cancel.get("reason") == 'SIP;cause=200;text="Call completed elsewhere"'
    net.send(reply(cancel, 200), DESK)
    net.send(reply(desk, 487), DESK)
    [relayed] = bridges(net)
    assert relayed.screen == "" and relayed.caller_media is not None
    assert relayed.callee_media is not None and not relayed.music_to_caller
    assert channels(net) == 2
    net.tick(CONFIRM_SECONDS + 1)  # the question's timer is off: nothing happens
    assert to_mobile(net.drain(TRUNK), "BYE") == []
    hang_up(net, ok)


def test_no_key_in_10_s_releases_the_mobile_the_desk_rings_on_then_voicemail(
        net: Net) -> None:
    desk, _, _ = asked(net)
    net.tick(CONFIRM_SECONDS - 0.5)
    assert to_mobile(net.drain(TRUNK), "BYE") == []  # still asked
    net.tick(0.6)
    released(net)
    voicemail_after_the_step(net, desk)


@pytest.mark.parametrize("how", ["another_key", "hangs_up"])
def test_another_key_or_a_hang_up_releases_the_mobile(net: Net, how: str) -> None:
    desk, mobile, bridge = asked(net)
    if how == "another_key":
        net.take(net.engine.screened(bridge.call, False, net.clock.now))
        released(net)
    else:
        mobile_hangs_up(net, mobile)
        got = net.drain(TRUNK)
        assert [r.status for r in got if isinstance(r, Response)] == [200]  # its BYE
        assert to_mobile(got, "BYE") == []  # it left: no BYE of ours
        assert channels(net) == 1 and net.drain(DESK) == []
        [bridge] = bridges(net)
        assert bridge.screen == "" and bridge.callee_media is None
    net.tick(CONFIRM_SECONDS)  # the question's timer is off
    assert to_mobile(net.drain(TRUNK), "BYE") == []
    voicemail_after_the_step(net, desk)


def test_the_desk_phone_answering_while_the_mobile_is_asked_takes_the_call(
        net: Net) -> None:
    desk, _, _ = asked(net)
    desk_sdp = CALLEE_SDP.replace(b"m=audio 40000", b"m=audio 41000")
    net.send(reply(desk, 200, body=desk_sdp, contact="<sip:105@127.0.0.1:6105>"), DESK)
    got = net.drain(TRUNK)
    [ok] = [r for r in to_caller(got) if r.status == 200]
    [bye] = to_mobile(got, "BYE")
    net.send(reply(bye, 200), TRUNK)
    assert channels(net) == 1
    [bridge] = bridges(net)
    assert bridge.screen == "" and bridge.callee_media is not None
    assert bridge.callee_media.remote_port == 41000  # the desk phone is relayed
    net.tick(CONFIRM_SECONDS + 1)
    assert to_mobile(net.drain(TRUNK), "BYE") == []
    net.send(in_dialog("ACK", ok, TRUNK, cseq=1, call_id=CALLER_ID, branch="cack"), TRUNK)
    net.send(in_dialog("BYE", ok, TRUNK, cseq=2, call_id=CALLER_ID, branch="cbye"), TRUNK)
    [desk_bye] = net.requests(DESK, "BYE")
    net.send(reply(desk_bye, 200), DESK)
    net.tick(64)
    assert net.engine.calls.calls_in_progress() == [] and channels(net) == 0


def test_the_desk_phone_refusing_while_the_mobile_is_asked_waits_for_its_key(
        net: Net) -> None:
    """The asked leg decides the step: a desk phone declining meanwhile does not move
    the call on under it; when the mobile does not confirm, the step has no leg left
    and its no-answer outcome follows."""
    desk, _, bridge = asked(net)
    net.send(reply(desk, 486), DESK)
    assert to_caller(net.drain(TRUNK)) == [] and net.media == []
    net.take(net.engine.screened(bridge.call, False, net.clock.now))
    got = net.drain(TRUNK)
    [bye] = to_mobile(got, "BYE")
    net.send(reply(bye, 200), TRUNK)
    [start] = [m for m in net.media if isinstance(m, StartVoicemail)]
    assert start.box == "105"
    [ok] = [r for r in to_caller(got) if r.status == 200]
    hang_up(net, ok)


def test_a_forward_to_the_mobile_not_confirmed_goes_to_voicemail(net: Net) -> None:
    """The mobile is the step's only leg (106 forwards at once): no key, and the
    plan's next step, the voicemail, answers the caller."""
    trunk_call(net, "+15145550106")
    net.take(net.engine.media_ready(opened(net).call, (30000, 30002), net.clock.now))
    [mobile] = to_mobile(net.drain(TRUNK), "INVITE")
    assert mobile.uri_text.startswith("sip:+15145550666@")
    got = mobile_answers(net, mobile)
    assert [r.status for r in to_caller(got)] == [180]  # it had not rung: told so now
    [bridge] = bridges(net)
    assert bridge.screen == "confirm" and bridge.language == "en"
    net.tick(CONFIRM_SECONDS + 0.1)
    got = net.drain(TRUNK)
    [bye] = to_mobile(got, "BYE")
    net.send(reply(bye, 200), TRUNK)
    [start] = [m for m in net.media if isinstance(m, StartVoicemail)]
    assert start.box == "106"
    [ok] = [r for r in to_caller(got) if r.status == 200]
    hang_up(net, ok)


def test_a_caller_in_the_carriers_early_media_hears_ringback_not_the_mobile(
        net: Net) -> None:
    """The mobile's carrier sent 183 with SDP (its ringback): the caller has our early
    media. While the mobile is asked nothing is relayed to the caller (it would hear
    the mobile's voicemail greeting): the engine plays a ringback tone instead."""
    desk, mobile = ringing(net, early_media=True)
    [early] = [r for r in to_caller(net.drain(TRUNK)) if r.status == 183]
    assert b"m=audio 30000" in early.body
    [relay] = bridges(net)  # the carrier's ringback, relayed
    assert relay.caller_media is not None and relay.callee_media is not None
    assert not relay.ringback_to_caller and relay.screen == ""
    got = mobile_answers(net, mobile)
    assert to_caller(got) == []
    [bridge] = bridges(net)
    assert bridge.screen == "confirm" and bridge.ringback_to_caller
    assert not bridge.music_to_caller
    net.media.clear()
    net.tick(CONFIRM_SECONDS + 0.1)
    mobile_bye(net)
    [bridge] = bridges(net)  # nothing to relay to the caller yet: the ringback goes on
    assert bridge.screen == "" and bridge.callee_media is None and bridge.ringback_to_caller
    net.media.clear()
    net.send(reply(desk, 200, body=CALLEE_SDP, contact="<sip:105@127.0.0.1:6105>"), DESK)
    [ok] = [r for r in to_caller(net.drain(TRUNK)) if r.status == 200]
    [bridge] = bridges(net)
    assert not bridge.ringback_to_caller and bridge.callee_media is not None
    net.send(in_dialog("ACK", ok, TRUNK, cseq=1, call_id=CALLER_ID, branch="cack"), TRUNK)
    net.send(in_dialog("BYE", ok, TRUNK, cseq=2, call_id=CALLER_ID, branch="cbye"), TRUNK)
    [desk_bye] = net.requests(DESK, "BYE")
    net.send(reply(desk_bye, 200), DESK)
    net.tick(64)
    assert net.engine.calls.calls_in_progress() == [] and channels(net) == 0


def test_without_media_relay_the_answer_takes_the_call() -> None:
    """``serve --media direct``: the engine cannot play or read keys, so a confirm leg
    is taken as it answers (as a rebound leg is)."""
    clock = Clock()
    directory = parse_directory(tomllib.loads(CONFIRMING), "<test>")
    net = Net(Engine(directory, {"127.0.0.1", "pbx.test"}, 5060, wall_clock=lambda: clock.wall,
                     digest_algorithms=("MD5",), advertise="127.0.0.1"), clock)
    register_desk(net)
    trunk_call(net, "+15145550105")
    [desk] = net.requests(DESK, "INVITE")
    net.send(reply(desk, 180), DESK)
    [mobile] = to_mobile(net.drain(TRUNK), "INVITE")
    got = mobile_answers(net, mobile)
    assert [r.status for r in to_caller(got) if r.status >= 200] == [200]
    assert [c.method for c in net.requests(DESK)] == ["CANCEL"]
    assert net.media == []  # nothing asked
