"""Call pickup in the call layer (engine.calls.pickup) through Engine.datagram, on
anchored calls: ``**102`` and ``*8`` take the oldest call ringing, an INVITE with
Replaces takes the leg it names; the ringing phone is cancelled ("Call completed
elsewhere"), the caller and the picker are answered from the engine's endpoints
and relayed; BYEs cross; nothing to pick up is 404; a direct-media call is 488;
the intercom code's INVITE carries the auto-answer headers. Park: a blind transfer
to ``*0`` holds the caller on the first free orbit with music (the final NOTIFY
names it), ``*1701`` or ``701`` retrieves it; not retrieved, the parker's phones
ring, then its voicemail. Sans-I/O, fake clock
(the harness of test_calls)."""

from __future__ import annotations

from engine.calls.events import BridgeMedia, OpenMedia, StartVoicemail, StopMedia
from engine.calls.transfer import PARK_TELL_SECONDS
from engine.sip.message import Request, Response
from media.prompts import LANGUAGES, digit_paths, prompt_path
from media.sdp import parse_sdp
from media.wav import wav_info
from tests.test_blf import NS, answer_notifies, authorized, dialogs, watching
from tests.test_calls import (
    PHONES,
    SDP,
    Net,
    in_dialog,
    make_net,
    phone_call,
    register,
    reply,
    statuses,
)
from tests.test_calls_anchor import CALLEE_SDP, anchored_net, bridges
from tests.test_calls_transfer import (
    RECEPTION,
    TRUNK,
    answered_trunk_call,
    caller_bye,
    from_phone,
    methods,
    notifies,
    refer,
)

PICKER_SDP = (b"v=0\r\no=picker 9 9 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
              b"m=audio 41000 RTP/AVP 8 0 101\r\na=rtpmap:101 telephone-event/8000\r\n")


def ringing_call(net: Net, call_id: str = "call-1") -> Request:
    """101 calls 102 (anchored: the endpoints open first); 102 rings. Returns the
    INVITE 102 got."""
    register(net, "101", "102", "103", "104")
    phone_call(net, "101", "102", call_id=call_id)
    [action] = [m for m in net.media if isinstance(m, OpenMedia) and m.call[0] == call_id]
    net.take(net.engine.media_ready(action.call, (30000, 30002), net.clock.now))
    [inv] = net.requests(PHONES["102"], "INVITE")
    net.send(reply(inv, 180, tag="ring102"), PHONES["102"])
    return inv


def picker_invite(net: Net, dialled: str, call_id: str = "pick-1",
                  extra: tuple[str, ...] = ()) -> None:
    """103 dials ``dialled`` with PICKER_SDP (the harness INVITE, body swapped)."""
    import tests.test_calls as harness
    saved = harness.SDP
    harness.SDP = PICKER_SDP
    try:
        phone_call(net, "103", dialled, call_id=call_id, extra=extra)
    finally:
        harness.SDP = saved


def test_directed_pickup_takes_the_ringing_call() -> None:
    net = anchored_net()
    inv = ringing_call(net)
    net.drain(PHONES["101"])
    picker_invite(net, "**102")
    # 102 is cancelled, with the reason phones show as "answered elsewhere"
    [cancel] = net.requests(PHONES["102"], "CANCEL")
    assert cancel.call_id == inv.call_id
    assert "Call completed elsewhere" in (cancel.get("reason") or "")
    # the picker gets 200 from the engine's callee-side endpoint, in PCMA (the ringing
    # phone was offered its user's order, PCMA first; the picker offers 8 first)
    [ok_picker] = [r for r in net.responses(PHONES["103"]) if r.status == 200]
    ours = parse_sdp(ok_picker.body).audio()
    assert ours is not None and ours.port == 30002
    assert next(f.name for f in ours.formats) == "PCMA"
    # the caller is answered from its endpoint in the same codec
    [ok_caller] = [r for r in net.responses(PHONES["101"]) if r.status == 200]
    caller_side = parse_sdp(ok_caller.body).audio()
    assert caller_side is not None and caller_side.port == 30000
    [bridge] = [m for m in net.media if isinstance(m, BridgeMedia)]
    assert bridge.callee_media is not None and bridge.callee_media.remote_port == 41000
    assert bridge.caller_media is not None and bridge.caller_media.codec == "PCMA"
    assert net.engine.calls.extensions_on_calls() == {"101": 1, "103": 1}
    assert [c.callee for c in net.engine.calls.calls_in_progress()] == ["102"]
    # the picker hangs up: the caller gets a BYE, the call is over
    net.send(in_dialog("ACK", ok_picker, PHONES["103"], cseq=2, call_id="pick-1",
                       branch="pack"), PHONES["103"])
    net.send(in_dialog("BYE", ok_picker, PHONES["103"], cseq=3, call_id="pick-1",
                       branch="pbye"), PHONES["103"])
    assert statuses(net.drain(PHONES["103"])) == [200]
    [bye] = net.requests(PHONES["101"], "BYE")
    assert bye.call_id == "call-1"
    assert net.engine.calls.calls_in_progress() == []
    assert any(isinstance(m, StopMedia) for m in net.media)


def test_the_caller_hanging_up_sends_the_picker_a_bye() -> None:
    net = anchored_net()
    ringing_call(net)
    picker_invite(net, "**102")
    [ok_caller] = [r for r in net.responses(PHONES["101"]) if r.status == 200]
    [ok_picker] = [r for r in net.responses(PHONES["103"]) if r.status == 200]
    net.send(in_dialog("BYE", ok_caller, PHONES["101"], cseq=3, call_id="call-1",
                       branch="cbye"), PHONES["101"])
    [bye] = net.requests(PHONES["103"], "BYE")
    assert bye.call_id == "pick-1" and bye.from_.tag == ok_picker.to.tag
    assert bye.uri_text == "sip:103@127.0.0.1:6103"  # the picker's Contact


def test_group_pickup_takes_the_oldest_ringing_call() -> None:
    net = anchored_net()
    ringing_call(net, "call-1")
    net.clock.advance(1)
    register(net, "104")
    phone_call(net, "104", "102", call_id="call-2")  # 102 accepts one call: busy
    net.drain(PHONES["104"])
    picker_invite(net, "*8")
    assert [r.status for r in net.responses(PHONES["103"]) if r.status >= 200] == [200]
    assert [r.status for r in net.responses(PHONES["101"]) if r.status >= 200] == [200]


def test_nothing_ringing_is_404_and_the_picker_is_free() -> None:
    net = anchored_net()
    register(net, "101", "102", "103")
    picker_invite(net, "**102")
    [final] = [r for r in net.responses(PHONES["103"]) if r.status >= 200]
    assert final.status == 404 and "no call is ringing 102" in (final.get("warning") or "")
    assert net.engine.calls.calls_in_progress() == []


def test_replaces_names_the_ringing_leg() -> None:
    net = anchored_net()
    inv = ringing_call(net)
    # what a dialog-info document gave the phone: the leg's Call-ID, our tag, 102's tag
    replaces = f"Replaces: {inv.call_id};to-tag={inv.from_.tag};from-tag=ring102;early-only"
    picker_invite(net, "102", extra=(replaces,))
    assert [r.status for r in net.responses(PHONES["103"]) if r.status >= 200] == [200]
    assert [r.method for r in net.requests(PHONES["102"])] == ["CANCEL"]
    assert [r.status for r in net.responses(PHONES["101"]) if r.status >= 200] == [200]


def test_replaces_naming_no_ringing_call_is_481() -> None:
    net = anchored_net()
    register(net, "101", "102", "103")
    picker_invite(net, "102", extra=("Replaces: nope@x;to-tag=a;from-tag=b",))
    assert [r.status for r in net.responses(PHONES["103"]) if r.status >= 200] == [481]


def test_a_call_whose_media_is_not_anchored_cannot_be_picked_up() -> None:
    net = make_net()
    register(net, "101", "102", "103")
    phone_call(net, "101", "102")
    [inv] = net.requests(PHONES["102"], "INVITE")
    net.send(reply(inv, 180), PHONES["102"])
    picker_invite(net, "**102")
    [final] = [r for r in net.responses(PHONES["103"]) if r.status >= 200]
    assert final.status == 488 and "media through the engine" in (final.get("warning") or "")
    assert net.requests(PHONES["102"], "CANCEL") == []  # 102 still rings


def test_intercom_invite_asks_the_phone_to_answer_at_once() -> None:
    net = make_net()
    register(net, "101", "102")
    phone_call(net, "101", "*9102")
    [inv] = net.requests(PHONES["102"], "INVITE")
    assert inv.get("call-info") == "<sip:pbx.test>;answer-after=0"
    assert inv.get("alert-info") == "<http://127.0.0.1>;info=alert-autoanswer"
    net.send(reply(inv, 200, body=SDP, contact="<sip:102@127.0.0.1:6102>"), PHONES["102"])
    assert 200 in statuses(net.drain(PHONES["101"]))


def test_a_phones_own_auto_answer_headers_are_not_passed_on() -> None:
    net = make_net()
    register(net, "101", "102")
    phone_call(net, "101", "102", extra=("Call-Info: <sip:x>;answer-after=0",
                                         "Alert-Info: <http://x>;info=alert-autoanswer"))
    [inv] = net.requests(PHONES["102"], "INVITE")
    assert inv.get("call-info") is None and inv.get("alert-info") is None


# ---------------------------------------------------------------------- park
def parked_call(net: Net) -> Request:
    """The carrier calls +15145550100, 101 answers and transfers it to ``*0``."""
    desk = answered_trunk_call(net, "102", "103", "104")
    net.send(refer(desk, "*0"), RECEPTION)
    return desk


def test_a_transfer_to_the_park_code_parks_the_caller_with_music() -> None:
    net = anchored_net()
    parked_call(net)
    to_reception = net.drain(RECEPTION)
    assert notifies(to_reception) == [("SIP/2.0 100 Trying", "active"),
                                      ("SIP/2.0 200 Parked on 701", "terminated")]
    # the parker stays on the line to hear the orbit, the caller hears the music
    assert methods(to_reception) == ["NOTIFY", "NOTIFY"]
    music = bridges(net)[-1]
    assert music.music_to_caller and not music.music_to_callee
    assert music.tell_orbit == "701" and music.language == "en"
    assert net.drain(TRUNK) == []  # the caller keeps its dialog, untouched
    net.media.clear()
    net.tick(PARK_TELL_SECONDS)
    # then the parker is let go (the NOTIFYs, unanswered here, are sent again on UDP)
    assert [m for m in methods(net.drain(RECEPTION)) if m != "NOTIFY"] == ["BYE"]
    [quiet] = bridges(net)
    assert quiet.music_to_caller and quiet.tell_orbit == ""
    [summary] = net.engine.calls.calls_in_progress()
    assert summary.members == ()  # the parker is off the call
    assert net.engine.calls.parked_call("701") is not None


def test_the_orbit_is_said_in_the_parkers_language_from_committed_prompts() -> None:
    # What the media service plays: "parked on" and the orbit's digits, each a
    # committed prompt; said in full before the engine's BYE in both languages.
    for language in LANGUAGES:
        clips = [prompt_path(language, "parked_on"), *digit_paths("709", language)]
        seconds = sum(wav_info(c).duration for c in clips)
        assert 0.5 < seconds < PARK_TELL_SECONDS - 0.5, (language, seconds)


def test_a_parker_hanging_up_while_told_leaves_the_call_parked() -> None:
    net = anchored_net()
    desk = parked_call(net)
    net.drain(RECEPTION)
    net.send(from_phone(desk, "BYE", 3, [], RECEPTION, "parkerbye"), RECEPTION)
    assert [r.status for r in net.responses(RECEPTION)][-1:] == [200]
    assert net.drain(TRUNK) == []  # the caller is not hung up on
    net.media.clear()
    net.tick(PARK_TELL_SECONDS)
    assert net.requests(RECEPTION, "BYE") == []  # no BYE to a leg already gone
    assert net.engine.calls.parked_call("701") is not None


def test_the_caller_hanging_up_while_the_parker_is_told_ends_both() -> None:
    net = anchored_net()
    desk = parked_call(net)
    net.drain(RECEPTION)
    net.send(from_phone(desk, "REFER", 3, [("Refer-To", "<sip:*0@pbx.test>")], RECEPTION,
                        "again"), RECEPTION)
    assert [r.status for r in net.responses(RECEPTION)] == [403]  # parked once is enough
    net.send(caller_bye(net), TRUNK)
    assert methods(net.drain(RECEPTION)) == ["BYE"]
    assert net.engine.calls.parked_call("701") is None
    assert net.engine.calls.calls_in_progress() == []


def test_retrieved_while_the_parker_is_told_lets_the_parker_go() -> None:
    net = anchored_net()
    parked_call(net)
    net.drain(RECEPTION)
    picker_invite(net, "*1701")
    assert methods(net.drain(RECEPTION)) == ["BYE"]
    assert [r.status for r in net.responses(PHONES["103"]) if r.status >= 200] == [200]
    [relay] = bridges(net)[-1:]
    assert relay.tell_orbit == "" and not relay.music_to_caller


def test_the_orbit_dialled_retrieves_the_parked_call() -> None:
    net = anchored_net()
    parked_call(net)
    net.media.clear()
    picker_invite(net, "*1701")
    [ok] = [r for r in net.responses(PHONES["103"]) if r.status == 200]
    ours = parse_sdp(ok.body).audio()
    assert ours is not None and ours.port == 30002  # the callee-side endpoint
    assert next(f.name for f in ours.formats) == "PCMA"  # the parked caller's codec
    [relay] = bridges(net)
    assert not relay.music_to_caller
    assert relay.callee_media is not None and relay.callee_media.remote_port == 41000
    assert net.engine.calls.extensions_on_calls() == {"103": 1}
    # the retriever hangs up: the carrier's caller gets the BYE
    net.send(in_dialog("ACK", ok, PHONES["103"], cseq=2, call_id="pick-1", branch="ua"),
             PHONES["103"])
    net.send(in_dialog("BYE", ok, PHONES["103"], cseq=3, call_id="pick-1", branch="ub"),
             PHONES["103"])
    assert methods(net.drain(TRUNK)) == ["BYE"]
    assert net.engine.calls.calls_in_progress() == []


def test_a_second_park_takes_the_next_orbit_and_the_number_alone_retrieves() -> None:
    net = anchored_net()
    parked_call(net)
    front = net.engine.calls
    assert front.parked_call("701") is not None and front.free_orbit(("701", "702")) == "702"
    picker_invite(net, "701")
    assert [r.status for r in net.responses(PHONES["103"]) if r.status >= 200] == [200]
    assert front.parked_call("701") is None


def test_nothing_parked_is_404_and_a_hang_up_frees_the_orbit() -> None:
    net = anchored_net()
    parked_call(net)
    picker_invite(net, "*1702")
    [final] = [r for r in net.responses(PHONES["103"]) if r.status >= 200]
    assert final.status == 404 and "no call is parked on 702" in (final.get("warning") or "")
    net.send(caller_bye(net), TRUNK)
    assert net.engine.calls.parked_call("701") is None
    assert net.engine.calls.calls_in_progress() == []


def test_the_park_code_dialled_is_refused() -> None:
    net = anchored_net()
    register(net, "101", "102", "103")
    picker_invite(net, "*0")
    [final] = [r for r in net.responses(PHONES["103"]) if r.status >= 200]
    assert final.status == 403 and "transfer target" in (final.get("warning") or "")


def one_invite(sent: list[Request]) -> Request:
    """The one INVITE in ``sent`` (the fake clock's ticks retransmit it on UDP)."""
    assert sent and {r.call_id for r in sent} == {sent[0].call_id}
    return sent[0]


def test_not_retrieved_in_time_rings_the_parker_back_who_gets_the_caller() -> None:
    net = anchored_net()
    parked_call(net)
    net.drain(RECEPTION)
    net.tick(119)
    assert net.requests(RECEPTION, "INVITE") == []
    net.tick(2)  # ring_back_seconds = 120 (the default)
    inv = one_invite(net.requests(RECEPTION, "INVITE"))
    offer = parse_sdp(inv.body).audio()
    assert offer is not None and offer.port == 30002
    assert [f.name for f in offer.formats] == ["PCMA", "telephone-event"]
    assert net.engine.calls.parked_call("701") is None  # the orbit is free again
    net.media.clear()
    net.send(reply(inv, 200, body=CALLEE_SDP, contact="<sip:101@127.0.0.1:6101>",
                   tag="back"), RECEPTION)
    [relay] = bridges(net)
    assert not relay.music_to_caller and relay.callee_media is not None
    assert net.drain(TRUNK) == []  # the caller, answered long ago, is not disturbed


def test_a_ring_back_not_answered_goes_to_the_parkers_voicemail() -> None:
    net = anchored_net()
    parked_call(net)
    net.tick(121)
    inv = one_invite(net.requests(RECEPTION, "INVITE"))
    net.send(reply(inv, 180, tag="back"), RECEPTION)
    net.tick(21)  # RING_BACK_SECONDS
    [start] = [m for m in net.media if isinstance(m, StartVoicemail)]
    assert start.box == "101"


def test_an_orbit_is_a_busy_lamp_lit_while_a_call_is_parked_there() -> None:
    net = anchored_net()
    watching(net, "104", "701")  # an orbit may be watched (dialog package only)
    parked_call(net)
    net.tick(1)
    [lit] = answer_notifies(net, "104")[-1:]
    [(state, dialog)] = dialogs(lit)  # validated against the RFC 4235 schema
    assert state == "confirmed" and dialog.get("direction") == "recipient"
    assert dialog.get("call-id") == "tcall-1"
    assert "+15145550199" in (dialog.findtext("d:remote/d:identity", namespaces=NS) or "")
    picker_invite(net, "701")
    net.tick(1)
    [out] = answer_notifies(net, "104")[-1:]
    assert [s for s, _ in dialogs(out)] == ["terminated"]


def test_presence_of_an_orbit_and_unknown_orbits_are_404() -> None:
    net = anchored_net()
    register(net, "104")
    msgs = authorized(net, "104", "701", event="presence", call_id="p-1")
    assert 404 in [m.status for m in msgs if isinstance(m, Response)]
    msgs = authorized(net, "104", "710", call_id="p-2")
    assert 404 in [m.status for m in msgs if isinstance(m, Response)]


def test_our_200_to_the_picker_is_sent_again_until_its_ack() -> None:
    net = anchored_net()
    ringing_call(net)
    picker_invite(net, "**102")
    [ok] = [r for r in net.responses(PHONES["103"]) if r.status == 200]
    net.tick(0.6)  # T1 = 0.5 s
    assert [r.status for r in net.responses(PHONES["103"])] == [200]
    net.send(in_dialog("ACK", ok, PHONES["103"], cseq=2, call_id="pick-1", branch="pa"),
             PHONES["103"])
    net.tick(10)
    assert net.responses(PHONES["103"]) == []
    assert [c.callee for c in net.engine.calls.calls_in_progress()] == ["102"]


def test_a_picker_that_never_acks_ends_the_call() -> None:
    net = anchored_net()
    ringing_call(net)
    picker_invite(net, "**102")
    [ok_caller] = [r for r in net.responses(PHONES["101"]) if r.status == 200]
    net.send(in_dialog("ACK", ok_caller, PHONES["101"], cseq=2, call_id="call-1",
                       branch="ca"), PHONES["101"])
    net.tick(40)  # 64 * T1 (32 s), checked at the next resend
    assert "BYE" in [m.method for m in net.drain(PHONES["101"]) if isinstance(m, Request)]
    assert net.engine.calls.calls_in_progress() == []
