"""Leave a voicemail end to end: a caller over real UDP sockets (SIP and RTP) to the
running engine; the message is checked by numbers through the CLI a user runs.

The caller here is a small scripted UA built from the engine's own message and
media modules (the engine is the system under test, the caller only speaks
SIP/RTP on sockets); SIPp cannot send a tone and DTMF it computes, and the
pjsua2 voicemail test is the media issue's next step.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from engine.auth import build_authorization
from engine.message import Request, Response, parse
from media.codecs import codec_for
from media.rtp import RtpSender, dtmf_packets
from media.sdp import parse_sdp
from media.tones import dominant_frequency, goertzel, tone
from media.wav import load_wav, wav_info
from tests.conftest import EngineProcess, free_port

pytestmark = pytest.mark.peers

DIRECTORY = """
[system]
domain = "pbx.test"
rtp_ports = "{low}-{high}"

[[trunks]]
name = "carrier"
host = "127.0.0.1"
port = 5
inbound_from = ["127.0.0.1/32"]
inbound_port = {trunk}

[[departments]]
name = "Sales"
caller_id = "+15145550100"

[[numbers]]
number = "+15145550104"
route_to = "extension:104"

[[users]]
extension = "104"
name = "David Cote"
password = "pw104"
department = "Sales"
[users.voicemail]
max_seconds = 20
[users.forwarding.available]
greeting = "missing-greeting.wav"   # unusable: the engine plays the beep and still records
"""


def subscribe_mwi(engine_addr: tuple[str, int], user: str, password: str) -> Request:
    """SUBSCRIBE message-summary with digest auth from a fresh socket; the first NOTIFY."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(5)
        port = s.getsockname()[1]

        def send(cseq: int, auth: str = "") -> None:
            s.sendto((f"SUBSCRIBE sip:{user}@pbx.test SIP/2.0\r\n"
                      f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKsub{cseq};rport\r\n"
                      f"Max-Forwards: 70\r\nFrom: <sip:{user}@pbx.test>;tag=sub\r\n"
                      f"To: <sip:{user}@pbx.test>\r\nCall-ID: mwi-e2e\r\n"
                      f"CSeq: {cseq} SUBSCRIBE\r\nContact: <sip:{user}@127.0.0.1:{port}>\r\n"
                      f"Event: message-summary\r\nExpires: 600\r\n"
                      + (f"Proxy-Authorization: {auth}\r\n" if auth else "")
                      + "Content-Length: 0\r\n\r\n").encode(), engine_addr)

        send(1)
        while True:
            msg = parse(s.recv(65535))
            if isinstance(msg, Response) and msg.status == 407:
                break
        challenge = next(c for c in msg.get_lines("proxy-authenticate") if "MD5" in c)
        send(2, build_authorization(challenge, "SUBSCRIBE", f"sip:{user}@pbx.test", user,
                                    password, "cn"))
        while True:  # the NOTIFY that shows a message (at once, or on the next change)
            msg = parse(s.recv(65535))
            if isinstance(msg, Request) and msg.method == "NOTIFY":
                ok = ("SIP/2.0 200 OK\r\n" + "".join(f"Via: {v}\r\n" for v in msg.get_all("via"))
                      + f"From: {msg.get('from')}\r\nTo: {msg.get('to')}\r\n"
                      f"Call-ID: {msg.call_id}\r\nCSeq: {msg.get('cseq')}\r\n"
                      "Content-Length: 0\r\n\r\n")
                s.sendto(ok.encode(), engine_addr)
                if b"Voice-Message: 0/0" not in msg.body:
                    return msg


def test_leave_a_voicemail_with_a_1khz_tone_then_hash(tmp_path: Path) -> None:
    sip_port, rtp_port = free_port(), free_port()
    low = 40000 + (free_port() % 10000) // 2 * 2
    (tmp_path / "directory.toml").write_text(
        DIRECTORY.format(trunk=sip_port, low=low, high=low + 99))
    engine = EngineProcess(tmp_path, tmp_path / "directory.toml").start()
    sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sip.bind(("127.0.0.1", sip_port))
        rtp.bind(("127.0.0.1", rtp_port))
        sip.settimeout(5)
        offer = (f"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                 f"m=audio {rtp_port} RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n"
                 f"a=fmtp:101 0-16\r\n").encode()
        head = (f"INVITE sip:+15145550104@127.0.0.1 SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{sip_port};branch=z9hG4bKvm1;rport\r\n"
                f"Max-Forwards: 70\r\nFrom: <sip:+15145550199@127.0.0.1>;tag=vm\r\n"
                f"To: <sip:+15145550104@127.0.0.1>\r\nCall-ID: vm-e2e\r\nCSeq: 1 INVITE\r\n"
                f"Contact: <sip:caller@127.0.0.1:{sip_port}>\r\n"
                f"Content-Type: application/sdp\r\nContent-Length: {len(offer)}\r\n\r\n")
        sip.sendto(head.encode() + offer, engine.sip)
        ok = None
        while ok is None:
            msg = parse(sip.recv(65535))
            if isinstance(msg, Response) and msg.status >= 200:
                assert msg.status == 200, msg.to_bytes()[:400]
                ok = msg
        answer = parse_sdp(ok.body).audio()
        assert answer is not None
        media_addr = (answer.address, answer.port)
        ack = (f"ACK {ok.contacts[0].uri} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP 127.0.0.1:{sip_port};branch=z9hG4bKvm2;rport\r\n"
               f"Max-Forwards: 70\r\nFrom: {ok.get('from')}\r\nTo: {ok.get('to')}\r\n"
               f"Call-ID: vm-e2e\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n")
        sip.sendto(ack.encode(), engine.sip)

        # Hear the beep (the default greeting) before speaking.
        rtp.settimeout(3)
        heard = b""
        pcmu = codec_for("PCMU")
        while len(heard) < 320 * 15:  # 15 of the beep's 20 packets (400 ms)
            data = rtp.recv(2048)
            heard += pcmu.decode(data[12:])
        assert goertzel(heard, 8000, 1000) > 0.05  # the 1 kHz beep reached us

        # Speak: 2 s of a 1 kHz tone, paced at 20 ms, then '#'.
        sender = RtpSender.create(0, 8000)
        audio = pcmu.encode(tone(1000, 2000, level=0.4))
        start = time.monotonic()
        for i in range(0, len(audio), 160):
            rtp.sendto(sender.audio(audio[i:i + 160]).build(), media_addr)
            time.sleep(max(0.0, start + (i // 160 + 1) * 0.02 - time.monotonic()))
        for packet in dtmf_packets(sender, "#"):
            rtp.sendto(packet.build(), media_addr)
            time.sleep(0.02)
        # '#' ends the message: the engine hangs up.
        bye = None
        deadline = time.monotonic() + 10
        while bye is None and time.monotonic() < deadline:
            msg = parse(sip.recv(65535))
            if not isinstance(msg, Response) and msg.method == "BYE":
                bye = msg
        assert bye is not None, "the engine did not hang up after '#'"
        reply = ("SIP/2.0 200 OK\r\n" + "".join(f"Via: {v}\r\n" for v in bye.get_all("via"))
                 + f"From: {bye.get('from')}\r\nTo: {bye.get('to')}\r\nCall-ID: {bye.call_id}"
                 f"\r\nCSeq: {bye.get('cseq')}\r\nContent-Length: 0\r\n\r\n")
        sip.sendto(reply.encode(), engine.sip)

        listed = engine.cli("voicemail", "list", "104", "--json")
        assert listed.returncode == 0, listed.stderr
        [message] = json.loads(listed.stdout)
        assert message["caller"] == "+15145550199" and 1.5 <= message["duration"] <= 2.5
        info = wav_info(message["path"])
        assert (info.rate, info.bits, info.channels) == (8000, 16, 1)
        recorded = load_wav(message["path"]).pcm16
        assert abs(dominant_frequency(recorded, 8000) - 1000) < 10
        assert "greeting unusable" in engine.log()

        # 104's phone subscribes to its mailbox: the lamp is on (RFC 3842).
        notify = subscribe_mwi(engine.sip, "104", "pw104")
        assert b"Messages-Waiting: yes" in notify.body and b"Voice-Message: 1/0" in notify.body
    finally:
        sip.close()
        rtp.close()
        engine.stop()
