"""Blind transfer (REFER from the answered callee, RFC 3515 / RFC 5589 s6) on an
anchored call: the caller keeps its dialog and RTP port and hears hold music,
the target is offered the caller's codec only, NOTIFYs tell the transferor how
it went. Sans-I/O, fake clock (the harness of test_calls / test_calls_anchor)."""

from __future__ import annotations

from engine.calls.events import StartVoicemail
from engine.sip.message import Request, Response
from engine.sip.transaction import Addr
from media.sdp import parse_sdp
from tests.test_calls import (
    PHONES,
    TRUNK,
    Net,
    counted,
    in_dialog,
    make_net,
    phone_call,
    register,
    reply,
)
from tests.test_calls_anchor import CALLEE_SDP, anchored_net, bridges, opened

RECEPTION = PHONES["101"]  # +15145550100 rings 101
TARGET_SDP = CALLEE_SDP.replace(b"40000", b"40002").replace(b"phone 7 7", b"target 9 9")


def from_phone(inv: Request, method: str, cseq: int, headers: list[tuple[str, str]],
               phone: Addr, branch: str) -> Request:
    """A request from the phone that answered ``inv``, inside that dialog."""
    ok = reply(inv, 200)  # the phone's side of the dialog: its To tag is "callee1"
    return Request.build(method, inv.contacts[0].uri.__str__() if inv.contacts else
                         "sip:switchboard@127.0.0.1:5060", [
        ("Via", f"SIP/2.0/UDP {phone[0]}:{phone[1]};branch=z9hG4bK{branch};rport"),
        ("Max-Forwards", "70"), ("From", ok.get("to") or ""), ("To", inv.get("from") or ""),
        ("Call-ID", inv.call_id), ("CSeq", f"{cseq} {method}"),
        ("Contact", f"<sip:x@{phone[0]}:{phone[1]}>"), *headers])


def refer(inv: Request, target: str, *, cseq: int = 2, branch: str = "refer1",
          phone: Addr = RECEPTION) -> Request:
    return from_phone(inv, "REFER", cseq, [("Refer-To", f"<sip:{target}@pbx.test>"),
                                            ("Referred-By", "<sip:101@pbx.test>")],
                      phone, branch)


def answered_trunk_call(net: Net, *extensions: str) -> Request:
    """The carrier calls +15145550100; 101 answers (PCMA). Returns the INVITE to 101."""
    register(net, "101", *extensions)
    net.send(_trunk_invite(), TRUNK)
    net.take(net.engine.media_ready(opened(net).call, (30000, 30002), net.clock.now))
    [desk] = net.requests(RECEPTION, "INVITE")
    net.send(reply(desk, 200, body=CALLEE_SDP, contact="<sip:101@127.0.0.1:6101>"), RECEPTION)
    assert [r.method for r in net.requests(RECEPTION)] == ["ACK"]
    [ok] = [r for r in net.responses(TRUNK) if r.status == 200]
    net.send(in_dialog("ACK", ok, TRUNK, cseq=1, call_id="tcall-1", branch="tack"), TRUNK)
    net.media.clear()
    return desk


def _trunk_invite() -> bytes:
    from tests.test_calls import invite
    return invite("+15145550100", "+15145550199", TRUNK, call_id="tcall-1", host="127.0.0.1")


def notifies(msgs: list[Request | Response]) -> list[tuple[str, str]]:
    """(sipfrag status line, Subscription-State) of each NOTIFY in ``msgs``."""
    return [(m.body.decode().strip(), (m.get("subscription-state") or "").split(";")[0])
            for m in msgs if isinstance(m, Request) and m.method == "NOTIFY"]


def methods(msgs: list[Request | Response]) -> list[str]:
    return [m.method for m in msgs if isinstance(m, Request)]


def test_blind_transfer_connects_the_caller_to_the_target_without_a_reinvite() -> None:
    net = anchored_net()
    desk = answered_trunk_call(net, "102")
    net.send(refer(desk, "102"), RECEPTION)
    to_reception = net.drain(RECEPTION)
    assert [r.status for r in to_reception if isinstance(r, Response)] == [202]
    assert notifies(to_reception) == [("SIP/2.0 100 Trying", "active")]
    [notify] = [m for m in to_reception if isinstance(m, Request)]
    assert notify.get("event") == "refer" and notify.call_id == desk.call_id
    assert notify.get("content-type") == "message/sipfrag;version=2.0"
    [music] = bridges(net)
    assert music.music_to_caller  # the caller hears hold music while the target rings
    # The target is offered the engine's callee-side port and only the caller's codec.
    [inv] = net.requests(PHONES["102"], "INVITE")
    offer = parse_sdp(inv.body).audio()
    assert offer is not None and offer.port == 30002
    assert [f.name for f in offer.formats] == ["PCMA", "telephone-event"]
    net.send(reply(inv, 180), PHONES["102"])
    assert net.drain(TRUNK) == []  # no 180 to a caller answered long ago
    net.media.clear()
    net.send(reply(inv, 200, body=TARGET_SDP, contact="<sip:102@127.0.0.1:6102>"),
             PHONES["102"])
    assert methods(net.drain(PHONES["102"])) == ["ACK"]
    to_reception = net.drain(RECEPTION)
    assert notifies(to_reception) == [("SIP/2.0 200 OK", "terminated")]
    assert methods(to_reception) == ["NOTIFY", "BYE"]
    assert net.drain(TRUNK) == []  # the caller is not re-INVITEd: same port, same codec
    [relay] = bridges(net)
    assert not relay.music_to_caller and not relay.music_to_callee
    assert relay.callee_media is not None and relay.callee_media.remote_port == 40002
    assert relay.caller_media is not None and relay.caller_media.codec == "PCMA"
    calls = net.engine.calls
    assert calls.extensions_on_calls() == {"102": 1}  # 101 is free again
    assert counted(net.engine.metrics, "switchboard_transfers", outcome="connected") == 1
    # The caller hangs up: the BYE goes to the target now.
    net.send(caller_bye(net), TRUNK)
    assert [r.status for r in net.responses(TRUNK)] == [200]
    assert methods(net.drain(PHONES["102"])) == ["BYE"]
    assert calls.calls_in_progress() == [] and calls.extensions_on_calls() == {}


def caller_bye(net: Net) -> Request:
    """The carrier's BYE in the call's dialog (our To tag from our 200 to it)."""
    return Request.build("BYE", "sip:switchboard@127.0.0.1:5060", [
        ("Via", f"SIP/2.0/UDP {TRUNK[0]}:{TRUNK[1]};branch=z9hG4bKtbye;rport"),
        ("Max-Forwards", "70"),
        ("From", '"Caller +15145550199" <sip:+15145550199@127.0.0.1>;tag=from-tcall-1'),
        ("To", f"<sip:+15145550100@127.0.0.1>;tag={net.tags['tcall-1']}"),
        ("Call-ID", "tcall-1"), ("CSeq", "2 BYE")])


def test_a_failed_transfer_comes_back_to_the_transferor() -> None:
    """The voicemail number is no place for a transferee (it would open the
    transferor's mailbox menu): the transfer fails and 101 has its caller back."""
    net = anchored_net()
    desk = answered_trunk_call(net, "102")
    net.send(refer(desk, "999"), RECEPTION)
    to_reception = net.drain(RECEPTION)
    assert [r.status for r in to_reception if isinstance(r, Response)] == [202]
    assert notifies(to_reception) == [("SIP/2.0 100 Trying", "active"),
                                      ("SIP/2.0 403 Forbidden", "terminated")]
    assert "BYE" not in methods(to_reception) and net.drain(TRUNK) == []
    back = bridges(net)[-1]  # relayed to 101 again, as before the transfer
    assert not back.music_to_caller and back.callee_media is not None
    assert back.callee_media.remote_port == 40000
    assert counted(net.engine.metrics, "switchboard_transfers", outcome="failed") == 1
    # 101 can transfer again.
    net.send(refer(desk, "102", cseq=3, branch="refer2"), RECEPTION)
    assert [r.status for r in net.responses(RECEPTION)] == [202]
    assert len(net.requests(PHONES["102"], "INVITE")) == 1


def test_the_transferors_rights_apply_to_the_target() -> None:
    """103 may not call outside: it cannot send its caller to an external number."""
    net = anchored_net()
    register(net, "102", "103")
    src = phone_call(net, "102", "103")
    net.take(net.engine.media_ready(opened(net).call, (30000, 30002), net.clock.now))
    [inv] = net.requests(PHONES["103"], "INVITE")
    net.send(reply(inv, 200, body=CALLEE_SDP, contact="<sip:103@127.0.0.1:6103>"),
             PHONES["103"])
    net.drain(PHONES["103"])
    net.drain(src)
    net.send(refer(inv, "+15145550777", phone=PHONES["103"]), PHONES["103"])
    to_103 = net.drain(PHONES["103"])
    assert notifies(to_103)[-1][1] == "terminated"
    assert not notifies(to_103)[-1][0].startswith("SIP/2.0 2")
    assert net.inbox.get(TRUNK) is None  # nothing went to the carrier


def test_the_transferor_may_hang_up_at_once_and_no_answer_reaches_voicemail() -> None:
    net = anchored_net()
    desk = answered_trunk_call(net, "102")
    net.send(refer(desk, "102"), RECEPTION)
    for notify in [m for m in net.drain(RECEPTION) if isinstance(m, Request)]:
        net.send(reply(notify, 200), RECEPTION)  # a phone answers the NOTIFY
    net.send(from_phone(desk, "BYE", 3, [], RECEPTION, "bye101"), RECEPTION)
    assert [r.status for r in net.responses(RECEPTION)] == [200]
    assert net.engine.calls.extensions_on_calls() == {}  # 101 is free at once
    [inv] = net.requests(PHONES["102"], "INVITE")
    net.send(reply(inv, 180), PHONES["102"])
    net.tick(10.5)  # 102's no-answer: voicemail
    assert set(methods(net.drain(PHONES["102"]))) == {"CANCEL"}
    [start] = [m for m in net.media if isinstance(m, StartVoicemail)]
    assert start.box == "102" and start.caller == "+15145550199"
    assert start.negotiated.codec == "PCMA" and start.negotiated.remote_port == 20000  # the caller
    assert net.drain(TRUNK) == [] and net.drain(RECEPTION) == []
    assert counted(net.engine.metrics, "switchboard_transfers", outcome="voicemail") == 1


def test_a_transfer_that_fails_after_the_transferor_left_ends_the_call() -> None:
    """101 sends its caller to an outside number and hangs up; the number is busy
    and nothing follows in the plan: there is nobody to return to."""
    net = anchored_net()
    desk = answered_trunk_call(net)
    net.send(refer(desk, "+15145550777"), RECEPTION)
    net.send(from_phone(desk, "BYE", 3, [], RECEPTION, "bye101"), RECEPTION)
    net.drain(RECEPTION)
    [out] = net.requests(TRUNK, "INVITE")
    assert out.uri.user == "+15145550777"
    assert out.from_.uri.user == "+15145550100"  # the caller ID 101 presents outside
    net.send(reply(out, 486), TRUNK)
    assert methods(net.drain(TRUNK)) == ["ACK", "BYE"]  # our ACK of the 486; the caller's BYE
    calls = net.engine.calls
    assert calls.calls_in_progress() == [] and calls.channels_in_use().get("carrier", 0) == 0
    assert counted(net.engine.metrics, "switchboard_transfers", outcome="dropped") == 1


def test_the_caller_hanging_up_during_a_transfer_cancels_the_target() -> None:
    net = anchored_net()
    desk = answered_trunk_call(net, "102")
    net.send(refer(desk, "102"), RECEPTION)
    net.drain(RECEPTION)
    [inv] = net.requests(PHONES["102"], "INVITE")
    net.send(reply(inv, 180), PHONES["102"])
    net.send(caller_bye(net), TRUNK)
    assert [r.status for r in net.responses(TRUNK)] == [200]
    assert methods(net.drain(PHONES["102"])) == ["CANCEL"]
    to_reception = net.drain(RECEPTION)
    assert notifies(to_reception) == [("SIP/2.0 487 Request Terminated", "terminated")]
    assert methods(to_reception) == ["NOTIFY", "BYE"]
    calls = net.engine.calls
    assert calls.calls_in_progress() == [] and calls.extensions_on_calls() == {}


def test_refused_transfers_name_why_and_the_call_goes_on() -> None:
    net = anchored_net()
    desk = answered_trunk_call(net, "102")
    net.send(from_phone(desk, "REFER", 3, [], RECEPTION, "noto"), RECEPTION)
    assert [r.status for r in net.responses(RECEPTION)] == [400]
    assert net.requests(PHONES["102"]) == [] and net.drain(TRUNK) == []
    # Without the media through the engine (serve --media direct) there is no transfer.
    direct = make_net()
    register(direct, "101", "102")
    src = phone_call(direct, "102", "101")
    [inv] = direct.requests(RECEPTION, "INVITE")
    direct.send(reply(inv, 200, body=CALLEE_SDP, contact="<sip:101@127.0.0.1:6101>"),
                RECEPTION)
    direct.drain(RECEPTION)
    direct.send(refer(inv, "103"), RECEPTION)
    [resp] = direct.responses(RECEPTION)
    assert resp.status == 501 and "--media relay" in (resp.get("warning") or "")
    assert direct.requests(src) == []


def test_a_phone_rung_earlier_in_the_call_can_be_the_target() -> None:
    """101 did not answer, its no-answer rule rang 103, 103 answered and sends
    the caller back to 101: 101 rings again (not skipped as already rung)."""
    net = anchored_net()
    register(net, "101", "103")
    net.send(_trunk_invite(), TRUNK)
    net.take(net.engine.media_ready(opened(net).call, (30000, 30002), net.clock.now))
    [first] = net.requests(RECEPTION, "INVITE")
    net.send(reply(first, 180), RECEPTION)
    net.tick(10.5)  # 101's no-answer rule: 103
    desk = net.requests(PHONES["103"], "INVITE")[0]  # (and its retransmissions)
    net.send(reply(desk, 200, body=CALLEE_SDP, contact="<sip:103@127.0.0.1:6103>"),
             PHONES["103"])
    net.drain(RECEPTION)
    net.drain(PHONES["103"])
    net.send(refer(desk, "101", phone=PHONES["103"]), PHONES["103"])
    assert [r.status for r in net.responses(PHONES["103"])] == [202]
    [again] = net.requests(RECEPTION, "INVITE")
    assert again.call_id != first.call_id


def consultation(net: Net, target: str = "102") -> tuple[Request, Response]:
    """101, in a call answered already, calls ``target`` itself (call-y, anchored on
    ports 30004/30006), which answers. Returns the engine's INVITE to the target
    and its 200 to 101."""
    from engine.calls.events import OpenMedia
    net.media.clear()
    phone_call(net, "101", target, call_id="call-y")
    [action] = [m for m in net.media if isinstance(m, OpenMedia)]
    net.take(net.engine.media_ready(action.call, (30004, 30006), net.clock.now))
    [inv] = net.requests(PHONES[target], "INVITE")
    net.send(reply(inv, 200, body=TARGET_SDP, contact=f"<sip:{target}@127.0.0.1:6{target}>"),
             PHONES[target])
    net.drain(PHONES[target])
    [ok] = [r for r in net.responses(RECEPTION) if r.status == 200]
    net.send(in_dialog("ACK", ok, RECEPTION, cseq=2, call_id="call-y", branch="acky"),
             RECEPTION)
    net.media.clear()
    return inv, ok


def test_attended_transfer_moves_the_consulted_target_to_the_caller() -> None:
    from engine.calls.events import StopMedia
    net = anchored_net()
    desk = answered_trunk_call(net, "102")
    to_102, ok_y = consultation(net)
    to_tag = ok_y.to.tag
    replaces = f"call-y%3Bto-tag%3D{to_tag}%3Bfrom-tag%3Dfrom-call-y"
    net.send(from_phone(desk, "REFER", 2, [
        ("Refer-To", f"<sip:102@pbx.test?Replaces={replaces}>")], RECEPTION, "att"), RECEPTION)
    to_reception = net.drain(RECEPTION)
    assert [r.status for r in to_reception if isinstance(r, Response)] == [202]
    assert notifies(to_reception) == [("SIP/2.0 100 Trying", "active")]
    # 102 is re-INVITEd in its own dialog, to the caller's call: its callee port, its codec.
    [move] = net.requests(PHONES["102"], "INVITE")
    assert move.call_id == to_102.call_id and move.cseq.number == to_102.cseq.number + 1
    offer = parse_sdp(move.body)
    audio = offer.audio()
    assert audio is not None and audio.port == 30002
    assert [f.name for f in audio.formats] == ["PCMA", "telephone-event"]
    first = parse_sdp(to_102.body).origin
    assert offer.origin.session_id == first.session_id
    assert offer.origin.session_version == first.session_version + 1
    answer = TARGET_SDP.replace(b"40002", b"40004")
    net.send(reply(move, 200, body=answer, contact="<sip:102@127.0.0.1:6102>"), PHONES["102"])
    [ack] = net.requests(PHONES["102"])
    assert ack.method == "ACK" and ack.call_id == to_102.call_id
    to_reception = net.drain(RECEPTION)
    assert notifies(to_reception) == [("SIP/2.0 200 OK", "terminated")]
    byes = [m for m in to_reception if isinstance(m, Request) and m.method == "BYE"]
    assert sorted(b.call_id for b in byes) == sorted([desk.call_id, "call-y"])
    assert any(isinstance(m, StopMedia) for m in net.media)  # the consultation's ports
    relay = bridges(net)[-1]
    assert relay.callee_media is not None and relay.callee_media.remote_port == 40004
    assert not relay.music_to_caller
    calls = net.engine.calls
    assert [c.call_id for c in calls.calls_in_progress()] == ["tcall-1"]
    assert calls.extensions_on_calls() == {"102": 1}
    assert net.drain(TRUNK) == []  # the caller saw nothing but hold music
    # The caller hangs up: the BYE reaches 102 in its dialog.
    net.send(caller_bye(net), TRUNK)
    [bye] = net.requests(PHONES["102"], "BYE")
    assert bye.call_id == to_102.call_id
    assert calls.calls_in_progress() == [] and calls.extensions_on_calls() == {}


def test_attended_transfer_refused_by_the_target_comes_back() -> None:
    net = anchored_net()
    desk = answered_trunk_call(net, "102")
    _, ok_y = consultation(net)
    replaces = f"call-y%3Bto-tag%3D{ok_y.to.tag}%3Bfrom-tag%3Dfrom-call-y"
    net.send(from_phone(desk, "REFER", 2, [
        ("Refer-To", f"<sip:102@pbx.test?Replaces={replaces}>")], RECEPTION, "att"), RECEPTION)
    net.drain(RECEPTION)
    [move] = net.requests(PHONES["102"], "INVITE")
    net.send(reply(move, 488), PHONES["102"])
    to_reception = net.drain(RECEPTION)
    assert notifies(to_reception) == [("SIP/2.0 488 Not Acceptable Here", "terminated")]
    assert "BYE" not in methods(to_reception)
    assert net.engine.calls.active_count == 2  # both calls go on as they were


def test_replaces_must_name_a_call_of_the_transferor() -> None:
    net = anchored_net()
    desk = answered_trunk_call(net, "102")
    for cseq, (replaces, status) in enumerate((
            ("nosuchcall%3Bto-tag%3Da%3Bfrom-tag%3Db", 481), ("garbage", 400)), start=2):
        net.send(from_phone(desk, "REFER", cseq, [
            ("Refer-To", f"<sip:102@pbx.test?Replaces={replaces}>")], RECEPTION, status),
            RECEPTION)
        [resp] = net.responses(RECEPTION)
        assert resp.status == status
    assert net.requests(PHONES["102"]) == [] and net.drain(TRUNK) == []


def test_replaces_is_read_beside_other_headers_of_the_refer_to_uri() -> None:
    from engine.calls.headers import parse_replaces
    pjsip = "Require=replaces&Replaces=QA9N%3Bto-tag%3D0f96%3Bfrom-tag%3D73.hs"
    assert parse_replaces(pjsip) == ("QA9N", "0f96", "73.hs")
    assert parse_replaces("Replaces=a%3Bfrom-tag%3Db%3Bto-tag%3Dc") == ("a", "c", "b")
    for bad in ("Require=replaces", "Replaces=a%3Bto-tag%3Dc", "Replaces=x&Replaces=y",
                "Replaces=%3Bto-tag%3Da%3Bfrom-tag%3Db"):
        assert parse_replaces(bad) is None, bad


def caller_refer(ok: Response, target: str, cseq: int = 3) -> bytes:
    """101's REFER in the call it placed (its dialog with the engine)."""
    data = in_dialog("REFER", ok, RECEPTION, cseq=cseq, call_id="call-1", branch=f"cr{cseq}")
    return data.replace(b"Content-Length", f"Refer-To: <sip:{target}@pbx.test>\r\n"
                        "Content-Length".encode())


def test_the_calling_party_can_transfer_the_callee() -> None:
    """101 called 102 and transfers 102 to 103: 102 hears hold music, 103 is offered
    the engine's caller-side port with 102's codec and takes 101's place."""
    from tests.test_calls_anchor import answered_call
    net = anchored_net()
    register(net, "103")
    ok, to_102 = answered_call(net)  # 101 -> 102, ports 30000 (101) / 30002 (102), PCMA
    net.media.clear()
    net.send(caller_refer(ok, "103"), RECEPTION)
    to_101 = net.drain(RECEPTION)
    assert [r.status for r in to_101 if isinstance(r, Response)] == [202]
    assert notifies(to_101) == [("SIP/2.0 100 Trying", "active")]
    [music] = bridges(net)
    assert music.music_to_callee and not music.music_to_caller
    [inv] = net.requests(PHONES["103"], "INVITE")
    offer = parse_sdp(inv.body)
    audio = offer.audio()
    assert audio is not None and audio.port == 30000  # the port 101 used
    assert [f.name for f in audio.formats] == ["PCMA", "telephone-event"]
    assert offer.origin.session_id == parse_sdp(ok.body).origin.session_id
    net.send(reply(inv, 200, body=TARGET_SDP, contact="<sip:103@127.0.0.1:6103>"),
             PHONES["103"])
    assert methods(net.drain(PHONES["103"])) == ["ACK"]
    to_101 = net.drain(RECEPTION)
    assert notifies(to_101) == [("SIP/2.0 200 OK", "terminated")]
    assert methods(to_101) == ["NOTIFY", "BYE"]
    assert net.drain(PHONES["102"]) == []  # 102 is not re-INVITEd
    relay = bridges(net)[-1]
    assert relay.caller_media is not None and relay.caller_media.remote_port == 40002
    assert relay.callee_media is not None and relay.callee_media.remote_port == 40000
    assert not relay.music_to_callee and not relay.music_to_caller
    calls = net.engine.calls
    assert calls.extensions_on_calls() == {"102": 1, "103": 1}
    # 102 holds: the engine answers, 103 hears music; 103 hangs up: 102 gets the BYE.
    net.send(from_phone(inv, "BYE", 5, [], PHONES["103"], "bye103"), PHONES["103"])
    assert [r.status for r in net.responses(PHONES["103"])] == [200]
    [bye] = net.requests(PHONES["102"], "BYE")
    assert bye.call_id == to_102.call_id
    assert calls.calls_in_progress() == [] and calls.extensions_on_calls() == {}


def test_a_callers_transfer_to_a_busy_target_leaves_a_message_there() -> None:
    """101 transfers 102 to 103 and hangs up; 103 is busy: 102 leaves a message in
    103's mailbox, recorded from the engine's endpoint facing 102."""
    from tests.test_calls_anchor import answered_call
    net = anchored_net()
    register(net, "103")
    ok, to_102 = answered_call(net)
    net.send(caller_refer(ok, "103"), RECEPTION)
    net.send(in_dialog("BYE", ok, RECEPTION, cseq=4, call_id="call-1", branch="bye1"),
             RECEPTION)
    assert 200 in [r.status for r in net.responses(RECEPTION)]
    assert net.engine.calls.extensions_on_calls() == {"102": 1}  # 101 is free at once
    [inv] = net.requests(PHONES["103"], "INVITE")
    net.media.clear()
    net.send(reply(inv, 486), PHONES["103"])  # busy: 103's plan is its voicemail
    [start] = [m for m in net.media if isinstance(m, StartVoicemail)]
    assert start.box == "103" and start.callee_side and start.caller == "102"
    assert start.negotiated.codec == "PCMA" and start.negotiated.remote_port == 40000
    assert net.requests(PHONES["102"]) == []  # 102 stays on, hearing the greeting
    assert counted(net.engine.metrics, "switchboard_transfers", outcome="voicemail") == 1
    # The message is recorded; the engine hangs up on 102.
    net.take(net.engine.hangup(start.call, net.clock.now))
    [bye] = net.requests(PHONES["102"], "BYE")
    assert bye.call_id == to_102.call_id
    calls = net.engine.calls
    assert calls.calls_in_progress() == [] and calls.extensions_on_calls() == {}


def test_the_calling_party_can_transfer_attended() -> None:
    """101 called 102 (call-1), then called 103 itself (call-y) and transfers 102 to
    103 with Replaces: 103 is re-INVITEd onto call-1's caller-side port with 102's
    codec, in the session 103 knows; 102 is never re-INVITEd."""
    from engine.calls.events import OpenMedia, StopMedia
    from tests.test_calls_anchor import answered_call
    net = anchored_net()
    register(net, "103")
    ok, to_102 = answered_call(net)  # ports 30000 (101) / 30002 (102), PCMA
    net.media.clear()
    phone_call(net, "101", "103", call_id="call-y")
    [action] = [m for m in net.media if isinstance(m, OpenMedia)]
    net.take(net.engine.media_ready(action.call, (30004, 30006), net.clock.now))
    [to_103] = net.requests(PHONES["103"], "INVITE")
    net.send(reply(to_103, 200, body=TARGET_SDP, contact="<sip:103@127.0.0.1:6103>"),
             PHONES["103"])
    net.drain(PHONES["103"])
    [ok_y] = [r for r in net.responses(RECEPTION) if r.status == 200]
    net.send(in_dialog("ACK", ok_y, RECEPTION, cseq=2, call_id="call-y", branch="acky"),
             RECEPTION)
    net.media.clear()
    replaces = f"call-y%3Bto-tag%3D{ok_y.to.tag}%3Bfrom-tag%3Dfrom-call-y"
    data = in_dialog("REFER", ok, RECEPTION, cseq=3, call_id="call-1", branch="catt")
    net.send(data.replace(b"Content-Length", f"Refer-To: <sip:103@pbx.test?Replaces="
                          f"{replaces}>\r\nContent-Length".encode()), RECEPTION)
    assert [r.status for r in net.responses(RECEPTION)] == [202]
    [move] = net.requests(PHONES["103"], "INVITE")
    assert move.call_id == to_103.call_id
    offer = parse_sdp(move.body)
    audio = offer.audio()
    assert audio is not None and audio.port == 30000  # call-1's caller-side port
    assert [f.name for f in audio.formats] == ["PCMA", "telephone-event"]
    first = parse_sdp(to_103.body).origin
    assert offer.origin.session_id == first.session_id
    assert offer.origin.session_version == first.session_version + 1
    net.send(reply(move, 200, body=TARGET_SDP.replace(b"40002", b"40004"),
                   contact="<sip:103@127.0.0.1:6103>"), PHONES["103"])
    assert methods(net.drain(PHONES["103"])) == ["ACK"]
    to_101 = net.drain(RECEPTION)
    assert notifies(to_101) == [("SIP/2.0 200 OK", "terminated")]
    byes = [m for m in to_101 if isinstance(m, Request) and m.method == "BYE"]
    assert sorted(b.call_id for b in byes) == ["call-1", "call-y"]
    assert any(isinstance(m, StopMedia) for m in net.media)
    relay = bridges(net)[-1]
    assert relay.caller_media is not None and relay.caller_media.remote_port == 40004
    assert relay.callee_media is not None and relay.callee_media.remote_port == 40000
    assert net.drain(PHONES["102"]) == []
    calls = net.engine.calls
    assert calls.extensions_on_calls() == {"102": 1, "103": 1}
    # 103, now in 101's place, holds: answered by the engine in 103's session.
    hold = TARGET_SDP.replace(b"a=rtpmap", b"a=sendonly\r\na=rtpmap")
    reinvite = from_phone(to_103, "INVITE", 9, [("Content-Type", "application/sdp")],
                          PHONES["103"], "hold103")
    net.send(Request.build("INVITE", reinvite.uri_text, [
        (h[1], h[2]) for h in reinvite.headers if h[0] != "content-length"], hold),
        PHONES["103"])
    [held] = [r for r in net.responses(PHONES["103"]) if r.status == 200]
    assert parse_sdp(held.body).origin.session_id == first.session_id
    assert bridges(net)[-1].music_to_callee  # 102 hears hold music
    net.send(from_phone(to_103, "BYE", 10, [], PHONES["103"], "bye103"), PHONES["103"])
    [bye] = net.requests(PHONES["102"], "BYE")
    assert bye.call_id == to_102.call_id
    assert calls.calls_in_progress() == [] and calls.extensions_on_calls() == {}


def test_a_transferor_that_held_first_still_gets_the_target_a_two_way_call() -> None:
    """Desk phones hold the call before they send REFER: the hold (sendonly) is the
    caller's latest offer, but the target is offered the engine's endpoint both
    ways (a=sendrecv), not the hold."""
    from tests.test_calls import SDP
    from tests.test_calls_anchor import answered_call
    net = anchored_net()
    register(net, "103")
    ok, _ = answered_call(net)
    hold = SDP.replace(b"a=rtpmap:101", b"a=sendonly\r\na=rtpmap:101")
    net.send(in_dialog("INVITE", ok, RECEPTION, cseq=3, call_id="call-1", branch="hold",
                       body=hold), RECEPTION)
    assert 200 in [r.status for r in net.responses(RECEPTION)]
    net.send(caller_refer(ok, "103", cseq=4), RECEPTION)
    [inv] = net.requests(PHONES["103"], "INVITE")
    assert b"a=sendrecv" in inv.body and b"a=sendonly" not in inv.body


def test_the_new_party_can_transfer_the_caller_again() -> None:
    net = anchored_net()
    desk = answered_trunk_call(net, "102", "103")
    net.send(refer(desk, "102"), RECEPTION)
    [inv] = net.requests(PHONES["102"], "INVITE")
    net.send(reply(inv, 200, body=TARGET_SDP, contact="<sip:102@127.0.0.1:6102>"),
             PHONES["102"])
    net.drain(PHONES["102"])
    net.send(refer(inv, "103", phone=PHONES["102"], cseq=7, branch="again"), PHONES["102"])
    assert [r.status for r in net.responses(PHONES["102"])] == [202]
    [again] = net.requests(PHONES["103"], "INVITE")
    net.send(reply(again, 200, body=CALLEE_SDP, contact="<sip:103@127.0.0.1:6103>"),
             PHONES["103"])
    assert "BYE" in methods(net.drain(PHONES["102"]))
    assert net.engine.calls.extensions_on_calls() == {"103": 1}
    assert counted(net.engine.metrics, "switchboard_transfers", outcome="connected") == 2


def test_after_an_attended_move_our_answers_keep_the_targets_session() -> None:
    """102, moved onto the carrier's call by 101's attended transfer, holds: the
    engine answers in the SDP session 102 knows (RFC 3264 s8), not in the one the
    carrier's call used toward 101."""
    net = anchored_net()
    desk = answered_trunk_call(net, "102")
    to_102, ok_y = consultation(net)
    replaces = f"call-y%3Bto-tag%3D{ok_y.to.tag}%3Bfrom-tag%3Dfrom-call-y"
    net.send(from_phone(desk, "REFER", 2, [
        ("Refer-To", f"<sip:102@pbx.test?Replaces={replaces}>")], RECEPTION, "att"), RECEPTION)
    [move] = net.requests(PHONES["102"], "INVITE")
    net.send(reply(move, 200, body=TARGET_SDP, contact="<sip:102@127.0.0.1:6102>"),
             PHONES["102"])
    net.drain(PHONES["102"])
    moved = parse_sdp(move.body).origin
    hold = TARGET_SDP.replace(b"a=rtpmap", b"a=sendonly\r\na=rtpmap")
    reinvite = from_phone(to_102, "INVITE", 9, [("Content-Type", "application/sdp")],
                          PHONES["102"], "hold102")
    net.send(Request.build("INVITE", reinvite.uri_text, [
        (h[1], h[2]) for h in reinvite.headers if h[0] != "content-length"], hold),
        PHONES["102"])
    [held] = [r for r in net.responses(PHONES["102"]) if r.status == 200]
    origin = parse_sdp(held.body).origin
    assert origin.session_id == moved.session_id
    assert origin.session_version > moved.session_version


def test_after_a_transfer_by_the_caller_requests_flow_between_the_new_parties() -> None:
    """One relay for either side: once 101 transferred 102 to 103, an INFO from 103
    (in 101's place) reaches 102 in its dialog and one from 102 reaches 103 in its
    own; each answer comes back to the party that asked."""
    from tests.test_calls_anchor import answered_call
    net = anchored_net()
    register(net, "103")
    ok, to_102 = answered_call(net)
    net.send(caller_refer(ok, "103"), RECEPTION)
    [inv] = net.requests(PHONES["103"], "INVITE")
    net.send(reply(inv, 200, body=TARGET_SDP, contact="<sip:103@127.0.0.1:6103>"),
             PHONES["103"])
    net.inbox.clear()
    info = [("Info-Package", "dtmf")]
    net.send(from_phone(inv, "INFO", 3, info, PHONES["103"], "info103"), PHONES["103"])
    [to_callee] = net.requests(PHONES["102"], "INFO")
    assert to_callee.call_id == to_102.call_id and to_callee.get("info-package") == "dtmf"
    net.send(reply(to_callee, 200), PHONES["102"])
    assert [r.status for r in net.responses(PHONES["103"])] == [200]
    net.send(from_phone(to_102, "INFO", 4, info, PHONES["102"], "info102"), PHONES["102"])
    [to_partner] = net.requests(PHONES["103"], "INFO")
    assert to_partner.call_id == inv.call_id and net.drain(RECEPTION) == []
    net.send(reply(to_partner, 200), PHONES["103"])
    assert [r.status for r in net.responses(PHONES["102"])] == [200]


def test_the_party_in_the_callers_place_hanging_up_cancels_its_own_transfer() -> None:
    """101 transferred 102 to 103; 102 then transfers 103 on to 104. 103 hangs up
    while 104 rings: as for the caller it replaced, its BYE cancels 104, tells 102
    the transfer ended (487) and ends the call."""
    from tests.test_calls_anchor import answered_call
    net = anchored_net()
    register(net, "103", "104")
    ok, to_102 = answered_call(net)
    net.send(caller_refer(ok, "103"), RECEPTION)
    [inv] = net.requests(PHONES["103"], "INVITE")
    net.send(reply(inv, 200, body=TARGET_SDP, contact="<sip:103@127.0.0.1:6103>"),
             PHONES["103"])
    net.inbox.clear()
    net.send(refer(to_102, "104", phone=PHONES["102"], cseq=5, branch="onward"),
             PHONES["102"])
    assert [r.status for r in net.drain(PHONES["102"]) if isinstance(r, Response)] == [202]
    [ring] = net.requests(PHONES["104"], "INVITE")
    net.send(reply(ring, 180), PHONES["104"])
    net.send(from_phone(inv, "BYE", 6, [], PHONES["103"], "bye103"), PHONES["103"])
    assert [r.status for r in net.responses(PHONES["103"])] == [200]
    assert methods(net.drain(PHONES["104"])) == ["CANCEL"]
    to_transferor = net.drain(PHONES["102"])
    assert notifies(to_transferor) == [("SIP/2.0 487 Request Terminated", "terminated")]
    assert methods(to_transferor) == ["NOTIFY", "BYE"]
    assert counted(net.engine.metrics, "switchboard_transfers", outcome="dropped") == 1
    assert net.engine.calls.calls_in_progress() == []
