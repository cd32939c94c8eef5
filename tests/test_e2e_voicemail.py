"""Leave a voicemail end to end: a caller over real UDP sockets (SIP and RTP) to the
running engine; the message is checked by numbers through the CLI a user runs.

The caller here is a small scripted UA built from the engine's own message and
media modules (the engine is the system under test, the caller only speaks
SIP/RTP on sockets); SIPp cannot send a tone and DTMF it computes. A real phone
leaves a message in tests/test_phones_voicemail.py.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from engine.sip.auth import build_authorization
from engine.sip.message import Request, Response, parse
from media.tones import dominant_frequency
from media.wav import load_wav, wav_info
from tests.conftest import EngineProcess, free_port
from tests.e2e_helpers import SALES_104, leave_message_from_trunk, ok_200

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
""" + SALES_104 + """[users.voicemail]
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
                s.sendto(ok_200(msg), engine_addr)
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
        # Hear the beep, speak 2 s of a 1 kHz tone, then '#': the engine hangs up.
        leave_message_from_trunk(engine, sip, rtp, 2.0, "vm-e2e", "vm")

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
