"""SDES-SRTP in the call layer (sans-I/O, the harness of test_calls): who may offer
RTP/SAVP (TLS only, a user whose ``srtp`` allows it), the 488s with the Warning
saying why, the engine's own fresh key on each leg, and SAVP offered only to an
SRTP user's phone registered over TLS."""

from __future__ import annotations

import base64
import tomllib

import pytest

from engine.calls.events import BridgeMedia, OpenMedia
from engine.core import Engine
from engine.sip.auth import build_authorization
from engine.sip.message import Request
from engine.sip.registrar import Binding
from media import sdp, srtp
from provisioning.directory import parse_directory
from tests.test_calls import (
    PHONES,
    SDP,
    Clock,
    Net,
    ack_for,
    in_dialog,
    invite,
    phone_call,
    reply,
)
from tests.test_calls_anchor import ANCHORED, CALLEE_SDP, answered_call
from tests.test_calls_relay import send
from tests.test_calls_transfer import (
    TARGET_SDP,
    answered_trunk_call,
    caller_refer,
    from_phone,
    refer,
)

KEY = bytes(range(30))
SRTP_SDP = SDP.replace(b"RTP/AVP", b"RTP/SAVP") + \
    f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{base64.b64encode(KEY).decode()}\r\n".encode()


def srtp_net(modes: dict[str, str]) -> Net:
    text = ANCHORED
    for extension, mode in modes.items():
        text = text.replace(f'password = "pw{extension}"',
                            f'password = "pw{extension}"\nsrtp = "{mode}"')
    clock = Clock()
    directory = parse_directory(tomllib.loads(text), "<test>")
    engine = Engine(directory, {"127.0.0.1", "pbx.test"}, 5060, wall_clock=lambda: clock.wall,
                    digest_algorithms=("MD5",), advertise="127.0.0.1", anchor_media=True)
    engine.tls_port = 5061
    return Net(engine, clock)


def with_body(data: bytes, body: bytes) -> bytes:
    head = data[:data.index(b"\r\n\r\n")].replace(
        f"Content-Length: {len(SDP)}".encode(), f"Content-Length: {len(body)}".encode())
    return head + b"\r\n\r\n" + body


def register_on(net: Net, transports: dict[str, str]) -> None:
    net.engine.registrar.load([
        Binding(aor=ext, contact=f"sip:{ext}@{PHONES[ext][0]}:{PHONES[ext][1]}",
                expires_at=net.clock.wall + 3600, call_id=f"reg{ext}", cseq=1,
                source=f"{transport}:{PHONES[ext][0]}:{PHONES[ext][1]}")
        for ext, transport in transports.items()], net.clock.wall)


def call(net: Net, body: bytes, transport: str, caller: str = "101",
         dialled: str = "102") -> list[object]:
    """``caller`` calls ``dialled`` over ``transport`` with ``body``; the final
    responses the caller got (after the digest challenge)."""
    src = PHONES[caller]
    first = with_body(invite(dialled, caller, src), body)
    send(net, first, src, transport)
    [challenge] = [r for r in net.responses(src) if r.status == 407]
    send(net, ack_for(first, challenge), src, transport)
    auth = build_authorization(challenge.get("proxy-authenticate") or "", "INVITE",
                               f"sip:{dialled}@pbx.test", caller, f"pw{caller}", "cn")
    send(net, with_body(invite(dialled, caller, src, auth=auth, cseq=2), body), src, transport)
    return list(net.responses(src))


def refusal(responses: list[object]) -> str:
    [final] = [r for r in responses if getattr(r, "status", 0) >= 300]
    assert getattr(final, "status", 0) == 488
    return str(final.get("warning"))  # type: ignore[attr-defined]


def test_srtp_over_udp_is_refused_saying_keys_need_tls() -> None:
    net = srtp_net({"101": "allowed"})
    register_on(net, {"102": "udp"})
    warning = refusal(call(net, SRTP_SDP, "udp"))
    assert "over UDP" in warning and "only over TLS" in warning
    assert net.requests(PHONES["102"], "INVITE") == []  # nobody rang


def test_srtp_from_a_user_with_srtp_off_is_refused() -> None:
    net = srtp_net({})
    register_on(net, {"102": "udp"})
    warning = refusal(call(net, SRTP_SDP, "tls"))
    assert "SRTP is off for user 101 (srtp = off)" in warning


def test_plain_rtp_from_a_required_user_is_refused() -> None:
    net = srtp_net({"101": "required"})
    register_on(net, {"102": "udp"})
    warning = refusal(call(net, SDP, "tls"))
    assert "user 101 requires SRTP" in warning


def test_required_user_over_tcp_is_refused_even_with_srtp() -> None:
    net = srtp_net({"101": "required"})
    register_on(net, {"102": "udp"})
    assert "only over TLS" in refusal(call(net, SRTP_SDP, "tcp"))


def ring(net: Net, body: bytes) -> list[object]:
    responses = call(net, body, "tls")
    [action] = [m for m in net.media if isinstance(m, OpenMedia)]
    net.take(net.engine.media_ready(action.call, (30000, 30002), net.clock.now))
    return responses


def test_srtp_caller_to_a_plain_phone_gets_our_fresh_key_and_the_callee_plain_rtp() -> None:
    net = srtp_net({"101": "allowed"})
    register_on(net, {"102": "udp"})
    ring(net, SRTP_SDP)
    [inv] = net.requests(PHONES["102"], "INVITE")
    offered = sdp.parse_sdp(inv.body)
    assert offered.media[0].protocol == "RTP/AVP" and b"crypto" not in inv.body
    net.send(reply(inv, 200, body=CALLEE_SDP, contact="<sip:102@127.0.0.1:6102>"),
             PHONES["102"])
    [ok] = [r for r in net.responses(PHONES["101"]) if r.status == 200]
    answer = sdp.parse_sdp(ok.body)
    m = answer.media[0]
    assert m.protocol == "RTP/SAVP"
    crypto = srtp.parse_crypto(m.attribute("crypto") or "")
    assert crypto.tag == 1 and crypto.key != KEY and len(crypto.key) == 30
    [bridge] = [b for b in net.media if isinstance(b, BridgeMedia)]
    assert bridge.caller_media is not None and bridge.callee_media is not None
    assert bridge.caller_media.send_key == crypto.key
    assert bridge.caller_media.receive_key == KEY
    assert not bridge.callee_media.srtp


def test_srtp_user_over_tls_is_offered_savp_with_another_fresh_key() -> None:
    net = srtp_net({"102": "allowed"})
    register_on(net, {"102": "tls"})
    ring(net, SDP)  # 101 calls with plain RTP over TLS (its srtp is off)
    [inv] = net.requests(PHONES["102"], "INVITE")
    offered = sdp.parse_sdp(inv.body).media[0]
    assert offered.protocol == "RTP/SAVP"
    ours = srtp.parse_crypto(offered.attribute("crypto") or "").key
    callee_key = srtp.new_key()
    answer = CALLEE_SDP.replace(b"RTP/AVP", b"RTP/SAVP") + (
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"
        f"{base64.b64encode(callee_key).decode()}\r\n").encode()
    net.send(reply(inv, 200, body=answer, contact="<sip:102@127.0.0.1:6102>"), PHONES["102"])
    [ok] = [r for r in net.responses(PHONES["101"]) if r.status == 200]
    assert sdp.parse_sdp(ok.body).media[0].protocol == "RTP/AVP" and b"crypto" not in ok.body
    [bridge] = [b for b in net.media if isinstance(b, BridgeMedia)]
    assert bridge.callee_media is not None and bridge.caller_media is not None
    assert (bridge.callee_media.send_key, bridge.callee_media.receive_key) == (ours, callee_key)
    assert not bridge.caller_media.srtp


def test_srtp_user_registered_over_udp_is_offered_plain_rtp() -> None:
    net = srtp_net({"101": "allowed", "102": "allowed"})
    register_on(net, {"102": "udp"})
    ring(net, SRTP_SDP)
    [inv] = net.requests(PHONES["102"], "INVITE")
    assert sdp.parse_sdp(inv.body).media[0].protocol == "RTP/AVP"


def test_a_required_users_phone_registered_over_udp_is_not_rung() -> None:
    net = srtp_net({"101": "allowed", "102": "required"})
    register_on(net, {"102": "udp"})
    ring(net, SRTP_SDP)
    assert net.requests(PHONES["102"], "INVITE") == []  # plain RTP would break its rule
    # the plan goes on as with nothing to ring: here, the busy rule's voicemail
    assert [type(m).__name__ for m in net.media] == ["OpenMedia", "StartVoicemail"]
    assert [r.status for r in net.responses(PHONES["101"])] == [200]


def test_a_required_users_phone_over_tls_is_rung_with_savp() -> None:
    net = srtp_net({"101": "allowed", "102": "required"})
    register_on(net, {"102": "tls"})
    ring(net, SRTP_SDP)
    [inv] = net.requests(PHONES["102"], "INVITE")
    assert sdp.parse_sdp(inv.body).media[0].protocol == "RTP/SAVP"


def test_hold_from_the_srtp_caller_is_answered_savp_with_the_same_key() -> None:
    net = srtp_net({"101": "allowed"})
    register_on(net, {"102": "udp"})
    ring(net, SRTP_SDP)
    [inv] = net.requests(PHONES["102"], "INVITE")
    net.send(reply(inv, 200, body=CALLEE_SDP, contact="<sip:102@127.0.0.1:6102>"),
             PHONES["102"])
    [ok] = [r for r in net.responses(PHONES["101"]) if r.status == 200]
    first = srtp.parse_crypto(sdp.parse_sdp(ok.body).media[0].attribute("crypto") or "").key
    src = PHONES["101"]
    send(net, in_dialog("ACK", ok, src, cseq=2, call_id="call-1", branch="ack1"), src, "tls")
    net.media.clear()
    hold = SRTP_SDP.replace(b"a=rtpmap:101", b"a=sendonly\r\na=rtpmap:101")
    send(net, in_dialog("INVITE", ok, src, cseq=3, call_id="call-1", branch="hold1",
                        body=hold), src, "tls")
    [answer] = [r for r in net.responses(src) if r.status == 200]
    m = sdp.parse_sdp(answer.body).media[0]
    assert m.protocol == "RTP/SAVP" and m.attribute("recvonly") is None
    assert b"a=recvonly" in answer.body
    assert srtp.parse_crypto(m.attribute("crypto") or "").key == first  # kept: no re-key
    [bridge] = [b for b in net.media if isinstance(b, BridgeMedia)]
    assert bridge.music_to_callee and bridge.caller_media is not None
    assert bridge.caller_media.send_key == first
    # A plain re-offer on the SRTP side is answered too (srtp allowed, not required).
    send(net, in_dialog("INVITE", ok, src, cseq=4, call_id="call-1", branch="plain1",
                        body=SDP), src, "tls")
    [plain] = [r for r in net.responses(src) if r.status == 200]
    assert b"RTP/AVP" in plain.body and b"crypto" not in plain.body


def test_a_required_users_plain_reoffer_gets_488_and_the_call_keeps_srtp() -> None:
    net = srtp_net({"101": "required"})
    register_on(net, {"102": "udp"})
    ring(net, SRTP_SDP)
    [inv] = net.requests(PHONES["102"], "INVITE")
    net.send(reply(inv, 200, body=CALLEE_SDP, contact="<sip:102@127.0.0.1:6102>"),
             PHONES["102"])
    [ok] = [r for r in net.responses(PHONES["101"]) if r.status == 200]
    src = PHONES["101"]
    send(net, in_dialog("ACK", ok, src, cseq=2, call_id="call-1", branch="ack1"), src, "tls")
    net.media.clear()
    send(net, in_dialog("INVITE", ok, src, cseq=3, call_id="call-1", branch="plain1",
                        body=SDP), src, "tls")
    [refused] = [r for r in net.responses(src) if r.status >= 200]
    assert refused.status == 488 and "SRTP" in (refused.get("warning") or "")
    assert "required" in (refused.get("warning") or "")
    assert [b for b in net.media if isinstance(b, BridgeMedia)] == []  # nothing changed


def test_srtp_with_an_unusable_crypto_line_is_refused_naming_it() -> None:
    net = srtp_net({"101": "allowed"})
    register_on(net, {"102": "udp"})
    body = SRTP_SDP.replace(b"AES_CM_128_HMAC_SHA1_80", b"AES_256_CM_HMAC_SHA1_80")
    warning = refusal(call(net, body, "tls"))
    assert "crypto suite AES_256_CM_HMAC_SHA1_80 is not supported" in warning
    assert net.requests(PHONES["102"], "INVITE") == []


# ---------------------------------------------------------------------- transfer legs
def savp_answer(body: bytes, key: bytes) -> bytes:
    """A phone's SAVP answer to an SRTP offer, with its own ``key``."""
    return body.replace(b"RTP/AVP", b"RTP/SAVP") + (
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"
        f"{base64.b64encode(key).decode()}\r\n").encode()


def our_key(inv: Request) -> bytes:
    """The key of our SAVP offer in ``inv`` (fails on a plain RTP offer)."""
    m = sdp.parse_sdp(inv.body).media[0]
    assert m.protocol == "RTP/SAVP"
    return srtp.parse_crypto(m.attribute("crypto") or "").key


def transferred_to_103(mode: str, transport: str,
                       by_caller: bool = False) -> tuple[Net, list[Request]]:
    """101 calls 102 (plain RTP, UDP); then 102 transfers 101 (``by_caller``: 101
    transfers 102) blind to 103, whose ``srtp`` is ``mode`` and whose phone is
    registered over ``transport``. Returns the INVITEs 103 got."""
    net = srtp_net({"103": mode})
    register_on(net, {"103": transport})
    ok, to_102 = answered_call(net)
    if by_caller:
        net.send(caller_refer(ok, "103"), PHONES["101"])
    else:
        net.send(refer(to_102, "103", phone=PHONES["102"]), PHONES["102"])
    return net, net.requests(PHONES["103"], "INVITE")


@pytest.mark.parametrize("by_caller", [False, True])
def test_a_transfer_offers_an_srtp_users_tls_phone_savp_like_a_first_call(
        by_caller: bool) -> None:
    """103 is offered SAVP as it would be if called: in 102's place with our
    callee-side key, or (a transfer by the caller) in 101's place with our
    caller-side key. The party that stays keeps plain RTP."""
    net, [inv] = transferred_to_103("allowed", "tls", by_caller)
    ours, theirs = our_key(inv), srtp.new_key()
    net.media.clear()
    net.send(reply(inv, 200, body=savp_answer(TARGET_SDP, theirs),
                   contact="<sip:103@127.0.0.1:6103>"), PHONES["103"])
    relay = [b for b in net.media if isinstance(b, BridgeMedia)][-1]
    new, stays = (relay.caller_media, relay.callee_media) if by_caller else \
        (relay.callee_media, relay.caller_media)
    assert new is not None and stays is not None
    assert (new.send_key, new.receive_key) == (ours, theirs)
    assert not stays.srtp


def test_a_transfer_to_an_srtp_users_udp_phone_offers_plain_rtp() -> None:
    _, [inv] = transferred_to_103("allowed", "udp")
    assert sdp.parse_sdp(inv.body).media[0].protocol == "RTP/AVP" and b"crypto" not in inv.body


def test_a_transfer_does_not_ring_a_required_users_phone_over_udp() -> None:
    _, invites = transferred_to_103("required", "udp")
    assert invites == []  # plain RTP would break its rule


def test_an_attended_transfer_moves_an_srtp_target_with_savp() -> None:
    """102 (SRTP user, TLS) answered 101's consultation call with SAVP; 101 transfers
    the trunk caller to it attended: its re-INVITE offers SAVP again (the engine's
    key of the caller's call), not a fall back to plain RTP."""
    net = srtp_net({"102": "allowed"})
    register_on(net, {"102": "tls"})
    desk = answered_trunk_call(net)
    net.media.clear()
    phone_call(net, "101", "102", call_id="call-y")
    [action] = [m for m in net.media if isinstance(m, OpenMedia)]
    net.take(net.engine.media_ready(action.call, (30004, 30006), net.clock.now))
    [to_102] = net.requests(PHONES["102"], "INVITE")
    our_key(to_102)  # the consultation leg is SAVP (a first call's rule)
    net.send(reply(to_102, 200, body=savp_answer(TARGET_SDP, srtp.new_key()),
                   contact="<sip:102@127.0.0.1:6102>"), PHONES["102"])
    net.drain(PHONES["102"])
    [ok_y] = [r for r in net.responses(PHONES["101"]) if r.status == 200]
    net.send(in_dialog("ACK", ok_y, PHONES["101"], cseq=2, call_id="call-y",
                       branch="acky"), PHONES["101"])
    replaces = f"call-y%3Bto-tag%3D{ok_y.to.tag}%3Bfrom-tag%3Dfrom-call-y"
    net.send(from_phone(desk, "REFER", 2, [
        ("Refer-To", f"<sip:102@pbx.test?Replaces={replaces}>")], PHONES["101"], "att"),
        PHONES["101"])
    [move] = net.requests(PHONES["102"], "INVITE")
    assert move.call_id == to_102.call_id
    ours, theirs = our_key(move), srtp.new_key()
    net.media.clear()
    net.send(reply(move, 200, body=savp_answer(TARGET_SDP.replace(b"40002", b"40004"), theirs),
                   contact="<sip:102@127.0.0.1:6102>"), PHONES["102"])
    relay = [b for b in net.media if isinstance(b, BridgeMedia)][-1]
    assert relay.callee_media is not None and relay.callee_media.remote_port == 40004
    assert (relay.callee_media.send_key, relay.callee_media.receive_key) == (ours, theirs)
