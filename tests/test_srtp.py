"""SDES-SRTP (RFC 4568): the crypto attribute, SAVP offer/answer, and the relay
protecting and unprotecting each leg with its own keys on real UDP sockets.

The "phones" of the socket tests are raw UDP sockets with their own libsrtp
sessions (pylibsrtp), each with the key it announced: what they send is SRTP
the engine must unprotect, what they get must authenticate under the key the
engine announced on that leg, or it would not decrypt.
"""

from __future__ import annotations

import asyncio
import base64
import os
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pylibsrtp
import pytest

from engine.calls.events import BridgeMedia
from engine.services.callmedia import CallMedia
from media import sdp, srtp
from media.codecs import codec_for
from media.endpoint import MediaEndpoint
from media.rtp import RtpPacket, RtpSender, dtmf_packets
from media.session import MediaService
from media.tones import dominant_frequency, tone
from tests.test_media_endpoint import HOST, Phone, new_service, open_phone, until

KEY = bytes(range(30))
KEY_B64 = base64.b64encode(KEY).decode()
PCMU = codec_for("PCMU")


def session(key: bytes, outbound: bool) -> pylibsrtp.Session:
    kind = pylibsrtp.Policy.SSRC_ANY_OUTBOUND if outbound else pylibsrtp.Policy.SSRC_ANY_INBOUND
    return pylibsrtp.Session(pylibsrtp.Policy(
        key=key, ssrc_type=kind, srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80))


# --- the crypto attribute ------------------------------------------------------------


def test_crypto_round_trip_and_fresh_keys_are_30_bytes() -> None:
    value = srtp.format_crypto(1, KEY)
    assert value == f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_B64}"
    assert srtp.parse_crypto(value) == srtp.Crypto(1, KEY)
    a, b = srtp.new_key(), srtp.new_key()
    assert len(a) == len(b) == srtp.KEY_LENGTH == 30 and a != b
    # The RFC 4568 s9.1 example's shape: a lifetime of 2^20 is refused (no re-keying),
    # one of 2^31 or more accepted.
    assert srtp.parse_crypto(f"7 AES_CM_128_HMAC_SHA1_80 inline:{KEY_B64}|2^31").tag == 7


@pytest.mark.parametrize(("value", "fault"), [
    (f"1 AES_CM_128_HMAC_SHA1_32 inline:{KEY_B64}", "suite AES_CM_128_HMAC_SHA1_32"),
    (f"x AES_CM_128_HMAC_SHA1_80 inline:{KEY_B64}", "tag 'x'"),
    ("1 AES_CM_128_HMAC_SHA1_80 inline:" + base64.b64encode(bytes(16)).decode(),
     "16 bytes"),
    ("1 AES_CM_128_HMAC_SHA1_80 inline:not*base64", "base64"),
    (f"1 AES_CM_128_HMAC_SHA1_80 key:{KEY_B64}", "'key' is not 'inline'"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_B64}|2^20", "shorter than 2^31"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_B64}|2^31|1:4", "MKI"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_B64} KDR=1", "session parameters"),
    ("1 AES_CM_128_HMAC_SHA1_80", "needs tag, suite and key"),
])
def test_unusable_crypto_lines_are_named(value: str, fault: str) -> None:
    with pytest.raises(srtp.SrtpError, match=fault.replace("^", r"\^").replace("*", r"\*")):
        srtp.parse_crypto(value)


def test_format_refuses_a_short_key() -> None:
    with pytest.raises(srtp.SrtpError, match="30 bytes"):
        srtp.format_crypto(1, bytes(16))


# --- SAVP offer/answer ---------------------------------------------------------------


def offer(protocol: str = "RTP/SAVP", crypto: str = f"3 AES_CM_128_HMAC_SHA1_80 "
          f"inline:{KEY_B64}", extra: str = "") -> sdp.SessionDescription:
    lines = ["v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0",
             f"m=audio 4000 {protocol} 0 101", "a=rtpmap:101 telephone-event/8000"]
    if crypto:
        lines.append(f"a=crypto:{crypto}")
    return sdp.parse_sdp("\r\n".join(lines) + "\r\n" + extra)


def test_savp_offer_answered_with_our_key_under_its_tag_and_keys_per_direction() -> None:
    ours = srtp.new_key()
    answer = sdp.answer(offer(), ["PCMU"], address="127.0.0.1", port=5000, session_id=1,
                        srtp_key=ours)
    assert isinstance(answer, sdp.SessionDescription)
    m = answer.media[0]
    assert m.protocol == "RTP/SAVP"
    assert m.attribute("crypto") == srtp.format_crypto(3, ours)  # the offer's tag
    mine = sdp.negotiated(offer(), answer)  # we are the answerer
    assert (mine.send_key, mine.receive_key) == (ours, KEY) and mine.srtp
    theirs = sdp.negotiated(offer(), answer, local="offerer")
    assert (theirs.send_key, theirs.receive_key) == (KEY, ours)


def test_savp_refused_without_a_key_and_plain_refused_when_required() -> None:
    refused = sdp.answer(offer(), ["PCMU"], address="127.0.0.1", port=5000, session_id=1)
    assert isinstance(refused, sdp.AnswerRefused) and refused.warning == 302
    assert "RTP/SAVP" in refused.reason
    plain = sdp.answer(offer("RTP/AVP", crypto=""), ["PCMU"], address="127.0.0.1", port=5000,
                       session_id=1, srtp_key=KEY, require_srtp=True)
    assert isinstance(plain, sdp.AnswerRefused) and "required" in plain.reason
    no_crypto = sdp.answer(offer(crypto=""), ["PCMU"], address="127.0.0.1", port=5000,
                           session_id=1, srtp_key=KEY)
    assert isinstance(no_crypto, sdp.AnswerRefused) and "without an a=crypto" in \
        no_crypto.reason
    bad = sdp.answer(offer(crypto=f"1 AES_256_CM_HMAC_SHA1_80 inline:{KEY_B64}"), ["PCMU"],
                     address="127.0.0.1", port=5000, session_id=1, srtp_key=KEY)
    assert isinstance(bad, sdp.AnswerRefused) and "AES_256_CM_HMAC_SHA1_80" in bad.reason


def test_best_effort_offer_gets_the_plain_stream_where_srtp_is_not_allowed() -> None:
    both = offer(extra="m=audio 4002 RTP/AVP 0\r\n")
    assert sdp.offers_srtp(both) and sdp.offers_plain_rtp(both)
    answer = sdp.answer(both, ["PCMU"], address="127.0.0.1", port=5000, session_id=1)
    assert isinstance(answer, sdp.SessionDescription)
    assert [m.port for m in answer.media] == [0, 5000]
    assert not sdp.negotiated(both, answer).srtp


def test_offers_to_callees_with_and_without_srtp() -> None:
    fresh = srtp.new_key()
    savp = sdp.with_srtp(offer("RTP/AVP", crypto=""), fresh)
    m = savp.media[0]
    assert m.protocol == "RTP/SAVP" and m.attribute("crypto") == srtp.format_crypto(1, fresh)
    assert sdp.parse_sdp(savp.to_bytes()) == savp
    plain = sdp.without_srtp(offer())
    assert plain.media[0].protocol == "RTP/AVP" and not plain.media[0].has_attribute("crypto")
    # A best-effort offer's plain twin is disabled: one audio stream is offered on.
    twin = sdp.without_srtp(offer(extra="m=audio 4002 RTP/AVP 0\r\n"))
    assert [(m.protocol, m.port) for m in twin.media] == [("RTP/AVP", 4000), ("RTP/AVP", 0)]


# --- the relay on sockets ------------------------------------------------------------


@dataclass
class SrtpPhone:
    """A UDP socket with its own libsrtp sessions: it sends with ``key`` and
    decrypts with the engine's key on its leg."""

    socket: Phone
    key: bytes
    engine_key: bytes | None
    tx: pylibsrtp.Session
    rx: pylibsrtp.Session | None

    def send(self, plain: bytes, port: int) -> None:
        self.socket.send(self.tx.protect(plain), port)

    def send_rtcp(self, plain: bytes, port: int) -> None:
        self.socket.send(self.tx.protect_rtcp(plain), port)

    def heard(self) -> list[bytes]:
        assert self.rx is not None
        return [self.rx.unprotect(data) for _, data in self.socket.received]


def leg(endpoint: MediaEndpoint, phone_port: int, phone_key: bytes | None,
        ) -> tuple[sdp.Negotiated, bytes | None]:
    """Negotiate ``endpoint`` with a phone that offers SAVP with ``phone_key`` (plain
    RTP when None); returns what the endpoint negotiated and the engine's key."""
    engine_key = srtp.new_key() if phone_key is not None else None
    crypto = "" if phone_key is None else \
        f"1 AES_CM_128_HMAC_SHA1_80 inline:{base64.b64encode(phone_key).decode()}"
    theirs = sdp.parse_sdp(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {phone_port} {'RTP/SAVP' if phone_key else 'RTP/AVP'} 0 101\r\n"
        "a=rtpmap:101 telephone-event/8000\r\n" + (f"a=crypto:{crypto}\r\n" if crypto else ""))
    ours = sdp.answer(theirs, ["PCMU"], address=HOST, port=endpoint.rtp_port, session_id=1,
                      srtp_key=engine_key)
    assert isinstance(ours, sdp.SessionDescription)
    negotiated = sdp.negotiated(theirs, ours)
    endpoint.configure(negotiated)
    return negotiated, engine_key


@dataclass
class Rig:
    media: MediaService
    calls: CallMedia
    a: MediaEndpoint
    b: MediaEndpoint
    secure: SrtpPhone  # SRTP, on a
    plain: Phone  # plain RTP, on b
    caller_media: sdp.Negotiated
    callee_media: sdp.Negotiated

    def state(self, *, music_to_caller: bool = False) -> BridgeMedia:
        return BridgeMedia(call=("c", "t"), call_id="c", caller_media=self.caller_media,
                           callee_media=self.callee_media, music_to_caller=music_to_caller,
                           music_to_callee=False, playlist=(), record="",
                           parties=("101", "102"))


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    media = new_service()
    calls = CallMedia(media, tmp_path)
    socket, plain = await open_phone(), await open_phone()
    try:
        a, b = await media.open_endpoint(), await media.open_endpoint()
        calls.add(("c", "t"), "c", a, b)
        key = srtp.new_key()
        caller_media, engine_key = leg(a, socket.port, key)
        callee_media, _ = leg(b, plain.port, None)
        assert engine_key is not None
        phone = SrtpPhone(socket, key, engine_key, session(key, True),
                          session(engine_key, False))
        yield Rig(media, calls, a, b, phone, plain, caller_media, callee_media)
    finally:
        await calls.close_all()
        await media.close_all()
        socket.close()
        plain.close()


def pcmu_stream(seed: int, count: int = 10) -> list[bytes]:
    rng = np.random.default_rng(seed)
    sender = RtpSender.create(0, 8000)
    return [sender.audio(PCMU.encode(rng.integers(-8000, 8000, 160, dtype=np.int16)
                                      .tobytes())).build() for _ in range(count)]


async def test_relay_decrypts_and_encrypts_per_leg_srtp_to_plain_both_ways(rig: Rig) -> None:
    rig.calls.apply(rig.state())
    to_plain, to_secure = pcmu_stream(1), pcmu_stream(2)
    for data in to_plain:
        rig.secure.send(data, rig.a.rtp_port)
    for data in to_secure:
        rig.plain.send(data, rig.b.rtp_port)
    await until(lambda: len(rig.plain.received) >= 10 and len(rig.secure.socket.received) >= 10)
    # The plain phone gets the SRTP phone's packets decrypted: the very RTP it protected.
    assert [data for _, data in rig.plain.received] == to_plain
    # The SRTP phone gets the plain phone's packets protected under the engine's key on
    # its leg (the 10-byte auth tag; they authenticate and decrypt to what was sent).
    wire = [data for _, data in rig.secure.socket.received]
    assert all(len(w) == len(p) + 10 for w, p in zip(wire, to_secure, strict=True))
    assert all(w[12:22] != p[12:22] for w, p in zip(wire, to_secure, strict=True))
    heard = rig.secure.heard()
    assert heard == to_secure
    decoded = [PCMU.decode(RtpPacket.parse(d).payload) for d in heard]
    assert decoded == [PCMU.decode(d[12:]) for d in to_secure]


async def test_forged_or_replayed_srtp_is_dropped_and_never_relayed(rig: Rig) -> None:
    rig.calls.apply(rig.state())
    [first, second] = pcmu_stream(3, 2)
    protected = rig.secure.tx.protect(first)
    rig.secure.socket.send(protected, rig.a.rtp_port)
    await until(lambda: len(rig.plain.received) == 1)
    rig.secure.socket.send(protected, rig.a.rtp_port)  # a replay
    forged = bytearray(rig.secure.tx.protect(second))
    forged[20] ^= 1  # one bit of the payload: the auth tag no longer matches
    rig.secure.socket.send(bytes(forged), rig.a.rtp_port)
    rig.secure.socket.send(second, rig.a.rtp_port)  # plain RTP on an SRTP leg
    third = pcmu_stream(4, 1)[0]
    rig.secure.send(third, rig.a.rtp_port)
    await until(lambda: len(rig.plain.received) == 2)
    assert [d for _, d in rig.plain.received] == [first, third]
    assert rig.a.srtp_rejected == 3


async def test_srtcp_is_relayed_decrypted_and_reencrypted(rig: Rig) -> None:
    rig.calls.apply(rig.state())
    # RTCP goes where the peer's RTCP comes from (else the latched RTP port + 1): the
    # phones send theirs from their RTP sockets, so the relayed reports come back there.
    rig.secure.send(pcmu_stream(5, 1)[0], rig.a.rtp_port)
    rig.plain.send(pcmu_stream(6, 1)[0], rig.b.rtp_port)
    await until(lambda: len(rig.plain.received) == 1 and len(rig.secure.socket.received) == 1)
    from_plain = RtpSender.create(0, 8000).sender_report(1.0).build()
    from_secure = RtpSender.create(0, 8000).sender_report(2.0).build()
    # The first SRTCP teaches a where the SRTP phone's RTCP comes from (its copy goes to
    # the plain phone's RTP port + 1, where nobody listens); then one report each way.
    rig.secure.send_rtcp(RtpSender.create(0, 8000).sender_report(0.5).build(), rig.a.rtcp_port)
    await until(lambda: rig.a.rtcp_received == 1)
    rig.plain.send(from_plain, rig.b.rtcp_port)
    await until(lambda: len(rig.secure.socket.received) == 2)
    rig.secure.send_rtcp(from_secure, rig.a.rtcp_port)
    await until(lambda: len(rig.plain.received) == 2)
    # The plain phone gets the SRTP phone's report decrypted ...
    assert rig.plain.received[1][1] == from_secure
    # ... and the SRTP phone the plain one's as SRTCP under the engine's key on its leg.
    wire = rig.secure.socket.received[1][1]
    assert wire != from_plain
    assert rig.secure.rx is not None and rig.secure.rx.unprotect_rtcp(wire) == from_plain
    assert rig.a.srtp_rejected == 0


async def test_hold_music_to_an_srtp_leg_is_protected(rig: Rig) -> None:
    rig.calls.apply(rig.state(music_to_caller=True))
    await until(lambda: len(rig.secure.socket.received) >= 5)
    heard = [RtpPacket.parse(d) for d in rig.secure.heard()[:5]]  # raises if not SRTP
    assert {p.payload_type for p in heard} == {0}
    assert any(p.payload != b"\xff" * 160 for p in heard)  # music, not silence


def test_context_refuses_wrong_key_lengths() -> None:
    with pytest.raises(srtp.SrtpError, match="send key must be 30 bytes"):
        srtp.SrtpContext(os.urandom(16), KEY)


async def test_voicemail_recording_and_keys_on_an_srtp_leg(tmp_path: Path) -> None:
    """What the engine consumes itself (a voicemail recorder, RFC 4733 keys) hears the
    phone's SRTP decrypted: the WAV holds the tone, '#' ends it."""
    media = new_service()
    socket = await open_phone()
    try:
        endpoint = await media.open_endpoint()
        key = srtp.new_key()
        leg(endpoint, socket.port, key)
        tx = session(key, True)
        recorder = media.record(endpoint, tmp_path / "vm.wav")
        sender = RtpSender.create(0, 8000)
        audio = PCMU.encode(tone(1000, 1000))
        for i in range(0, len(audio), 160):
            socket.send(tx.protect(sender.audio(audio[i:i + 160]).build()), endpoint.rtp_port)
            await asyncio.sleep(0.004)
        for packet in dtmf_packets(sender, "#"):
            socket.send(tx.protect(packet.build()), endpoint.rtp_port)
        recording = await asyncio.wait_for(recorder.wait(), 5.0)
    finally:
        socket.close()
        await media.close_all()
    assert (recording.reason, recording.digit) == ("dtmf", "#")
    with wave.open(str(recording.path), "rb") as w:
        pcm = w.readframes(w.getnframes())
    assert abs(dominant_frequency(pcm, 8000) - 1000) < 10
    assert endpoint.srtp_rejected == 0
