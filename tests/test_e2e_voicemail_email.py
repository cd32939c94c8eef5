"""Voicemail by email end to end: a caller leaves a message over real UDP sockets (SIP
and RTP) with the running engine, and the email arrives at a real SMTP server
(aiosmtpd on 127.0.0.1) with the recording attached.

The caller is the same small scripted UA as in ``test_e2e_voicemail``: INVITE from
the trunk, hear the beep, speak a 1 kHz tone, ``#``, answer the engine's BYE.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from engine.message import Response, parse
from media.codecs import codec_for
from media.rtp import RtpSender, dtmf_packets
from media.sdp import parse_sdp
from media.tones import dominant_frequency, goertzel, tone
from media.wav import load_wav, wav_info
from tests.conftest import EngineProcess, free_port
from tests.test_e2e_voicemail import DIRECTORY as VOICEMAIL_DIRECTORY
from tests.test_mail import Sink

pytestmark = pytest.mark.peers

# test_e2e_voicemail's office, with a relay and 104's email settings.
DIRECTORY = (VOICEMAIL_DIRECTORY
             .replace('domain = "pbx.test"\n',
                      'domain = "pbx.test"\n'
                      'smtp = {{ host = "127.0.0.1", port = {smtp}, sender = "pbx@pbx.test" }}\n')
             .replace('password = "pw104"\n',
                      'password = "pw104"\nemail = "david@example.test"\n')
             .replace("[users.voicemail]\n",
                      '[users.voicemail]\nemail = "{mode}"\nlanguage = "{language}"\n'))


@pytest.fixture
def relay() -> Iterator[tuple[int, Sink]]:
    sink = Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller.port, sink
    finally:
        controller.stop()


def leave_message(engine: EngineProcess, sip: socket.socket, rtp: socket.socket,
                  seconds: float = 1.5) -> None:
    """Call +15145550104 from the trunk, speak ``seconds`` of 1 kHz, '#', then the BYE."""
    sip_port, rtp_port = sip.getsockname()[1], rtp.getsockname()[1]
    offer = (f"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
             f"m=audio {rtp_port} RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n"
             f"a=fmtp:101 0-16\r\n").encode()
    head = (f"INVITE sip:+15145550104@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{sip_port};branch=z9hG4bKvmm1;rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:+15145550199@127.0.0.1>;tag=vmm\r\n"
            f"To: <sip:+15145550104@127.0.0.1>\r\nCall-ID: vm-mail-e2e\r\nCSeq: 1 INVITE\r\n"
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
           f"Via: SIP/2.0/UDP 127.0.0.1:{sip_port};branch=z9hG4bKvmm2;rport\r\n"
           f"Max-Forwards: 70\r\nFrom: {ok.get('from')}\r\nTo: {ok.get('to')}\r\n"
           f"Call-ID: vm-mail-e2e\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n")
    sip.sendto(ack.encode(), engine.sip)

    rtp.settimeout(3)
    heard = b""
    pcmu = codec_for("PCMU")
    while len(heard) < 320 * 15:  # most of the beep, then speak
        heard += pcmu.decode(rtp.recv(2048)[12:])
    assert goertzel(heard, 8000, 1000) > 0.05

    sender = RtpSender.create(0, 8000)
    audio = pcmu.encode(tone(1000, int(seconds * 1000), level=0.4))
    start = time.monotonic()
    for i in range(0, len(audio), 160):
        rtp.sendto(sender.audio(audio[i:i + 160]).build(), media_addr)
        time.sleep(max(0.0, start + (i // 160 + 1) * 0.02 - time.monotonic()))
    for packet in dtmf_packets(sender, "#"):
        rtp.sendto(packet.build(), media_addr)
        time.sleep(0.02)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        msg = parse(sip.recv(65535))
        if not isinstance(msg, Response) and msg.method == "BYE":
            reply = ("SIP/2.0 200 OK\r\n" + "".join(f"Via: {v}\r\n" for v in msg.get_all("via"))
                     + f"From: {msg.get('from')}\r\nTo: {msg.get('to')}\r\n"
                     f"Call-ID: {msg.call_id}\r\nCSeq: {msg.get('cseq')}\r\n"
                     "Content-Length: 0\r\n\r\n")
            sip.sendto(reply.encode(), engine.sip)
            return
    raise AssertionError("the engine did not hang up after '#'")


def wait_for_email(sink: Sink, timeout: float = 15.0) -> EmailMessage:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sink.envelopes:
            [msg] = sink.messages()
            return msg
        time.sleep(0.05)
    raise AssertionError("no email reached the SMTP server")


def list_messages(engine: EngineProcess) -> list[dict[str, object]]:
    listed = engine.cli("voicemail", "list", "104", "--json")
    assert listed.returncode == 0, listed.stderr
    messages: list[dict[str, object]] = json.loads(listed.stdout)
    return messages


def run_call(tmp_path: Path, smtp_port: int, mode: str, language: str) -> EngineProcess:
    low = 40000 + (free_port() % 10000) // 2 * 2
    sip_port = free_port()
    (tmp_path / "directory.toml").write_text(DIRECTORY.format(
        trunk=sip_port, low=low, high=low + 99, smtp=smtp_port, mode=mode, language=language))
    engine = EngineProcess(tmp_path, tmp_path / "directory.toml").start()
    sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sip.bind(("127.0.0.1", sip_port))
        rtp.bind(("127.0.0.1", free_port()))
        sip.settimeout(5)
        leave_message(engine, sip, rtp)
    except BaseException:
        engine.stop()
        raise
    finally:
        sip.close()
        rtp.close()
    return engine


def test_attach_emails_the_stored_wav(tmp_path: Path, relay: tuple[int, Sink]) -> None:
    port, sink = relay
    engine = run_call(tmp_path, port, "attach", "en")
    try:
        msg = wait_for_email(sink)
        [env] = sink.envelopes
        assert env.mail_from == "pbx@pbx.test" and env.rcpt_tos == ["david@example.test"]
        assert msg["Subject"].startswith("New voicemail from +15145550199 (")
        body = msg.get_body(preferencelist=("plain",))
        assert body is not None and "Extension: 104" in body.get_content()
        [part] = msg.iter_attachments()
        assert part.get_content_type() == "audio/wav"
        assert (part.get_filename() or "").startswith("voicemail-104-")
        [message] = list_messages(engine)  # attach keeps the message
        stored = Path(str(message["path"])).read_bytes()
        assert part.get_content() == stored
        assert message["caller"] == "+15145550199"
        log = engine.log()
        assert '"voicemail email sent"' in log and '"mode": "attach"' in log
        assert "pw104" not in log
    finally:
        assert engine.stop() == 0, engine.log()


def test_attach_and_delete_empties_the_mailbox(tmp_path: Path,
                                               relay: tuple[int, Sink]) -> None:
    port, sink = relay
    engine = run_call(tmp_path, port, "attach_and_delete", "fr")
    try:
        msg = wait_for_email(sink)
        assert msg["Subject"].startswith("Nouveau message vocal de +15145550199 (")
        [part] = msg.iter_attachments()
        wav = tmp_path / "attached.wav"
        wav.write_bytes(part.get_content())
        info = wav_info(wav)
        assert (info.rate, info.bits, info.channels) == (8000, 16, 1)
        assert abs(dominant_frequency(load_wav(wav).pcm16, 8000) - 1000) < 10
        deadline = time.monotonic() + 10  # deleted once the relay has accepted
        while list_messages(engine) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert list_messages(engine) == []
        assert list((tmp_path / "voicemail" / "104").glob("*.wav")) == []
        assert '"deleted": true' in engine.log()
    finally:
        assert engine.stop() == 0, engine.log()
