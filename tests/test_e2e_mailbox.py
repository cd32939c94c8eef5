"""Listening to one's mailbox by phone, end to end: a message is left through the trunk,
then its owner's phone dials the voicemail number (999), enters the PIN and hears it.

Scripted UAs over real UDP sockets, built from the engine's own message and media
modules (like ``test_e2e_voicemail``): the trunk caller is recognised by its
source port (the trunk's ``inbound_port``), the phone authenticates with digest
(407, MD5 challenge). RTP to each side is read in the background so no packet
waits in a full socket buffer.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.auth import build_authorization
from engine.message import Request, Response, make_response, parse
from media.codecs import codec_for
from media.rtp import RtpError, RtpPacket, RtpSender, dtmf_packets
from media.sdp import parse_sdp
from media.tones import dominant_frequency, goertzel, tone
from tests.conftest import EngineProcess, free_port

pytestmark = pytest.mark.peers

DIRECTORY = """
[system]
domain = "pbx.test"
rtp_ports = "{low}-{high}"
voicemail_number = "999"

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
voicemail_pin = "1234"
[users.voicemail]
language = "en"
pin_required = true
max_seconds = 20
"""

CALLER_NUMBER = "+15145550199"
PCMU = codec_for("PCMU")
FRAME = 160


class RtpTap(threading.Thread):
    """Every RTP packet a socket receives, with its arrival time, read in the background."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.packets: list[tuple[float, bytes]] = []
        self.stopping = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        self.sock.settimeout(0.05)
        while not self.stopping.is_set():
            try:
                data = self.sock.recv(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            with self.lock:
                self.packets.append((time.monotonic(), data))

    def stop(self) -> None:
        self.stopping.set()
        self.join(2)

    def audio(self, since: float = 0.0) -> bytes:
        """The PCMU audio received after ``since``, decoded."""
        with self.lock:
            raw = [data for at, data in self.packets if at >= since]
        out = []
        for data in raw:
            with contextlib.suppress(RtpError):
                packet = RtpPacket.parse(data)
                if packet.payload_type == 0:
                    out.append(PCMU.decode(packet.payload))
        return b"".join(out)


def offer(rtp_port: int) -> bytes:
    return (f"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {rtp_port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
            f"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n").encode()


class Ua:
    """One scripted SIP UA (a SIP and an RTP socket) talking to the engine."""

    def __init__(self, engine: tuple[str, int], sip_port: int = 0) -> None:
        self.engine = engine
        self.sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sip.bind(("127.0.0.1", sip_port))
        self.port = self.sip.getsockname()[1]
        self.rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rtp.bind(("127.0.0.1", 0))
        self.rtp_port = self.rtp.getsockname()[1]
        self.tap = RtpTap(self.rtp)
        self.tap.start()
        self.sender = RtpSender.create(0, 8000)
        self.media: tuple[str, int] | None = None
        self.ok: Response | None = None
        self.seen: list[str] = []

    def close(self) -> None:
        self.tap.stop()
        self.rtp.close()
        self.sip.close()

    def recv(self, timeout: float) -> Request | Response | None:
        self.sip.settimeout(max(timeout, 0.001))
        try:
            msg = parse(self.sip.recv(65535))
        except TimeoutError:
            return None
        self.seen.append(msg.start_line())
        return msg

    def final(self, cseq: int, timeout: float = 8) -> Response:
        """The final response to our INVITE of ``cseq``."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            msg = self.recv(left)
            if isinstance(msg, Response) and msg.cseq.method == "INVITE" \
                    and msg.cseq.number == cseq and msg.status >= 200:
                return msg
        raise AssertionError(f"no final response to INVITE {cseq}: {self.seen}")

    def invite(self, uri: str, from_user: str, call_id: str, cseq: int = 1,
               auth: str = "") -> None:
        body = offer(self.rtp_port)
        head = (f"INVITE {uri} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{call_id}{cseq};rport\r\n"
                f"Max-Forwards: 70\r\nFrom: <sip:{from_user}@pbx.test>;tag={call_id}\r\n"
                f"To: <{uri}>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} INVITE\r\n"
                f"Contact: <sip:{from_user}@127.0.0.1:{self.port}>\r\n"
                + (f"Proxy-Authorization: {auth}\r\n" if auth else "")
                + f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n")
        self.sip.sendto(head.encode() + body, self.engine)

    def ack(self, resp: Response, uri: str, branch: str) -> None:
        """ACK a final response: a 2xx to its Contact, a non-2xx in its transaction."""
        target = resp.contacts[0].uri if resp.status < 300 else uri
        ack = (f"ACK {target} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch={branch};rport\r\n"
               f"Max-Forwards: 70\r\nFrom: {resp.get('from')}\r\nTo: {resp.get('to')}\r\n"
               f"Call-ID: {resp.call_id}\r\nCSeq: {resp.cseq.number} ACK\r\n"
               f"Content-Length: 0\r\n\r\n")
        self.sip.sendto(ack.encode(), self.engine)

    def answered(self, ok: Response, uri: str, branch: str) -> None:
        assert ok.status == 200, ok.to_bytes()[:400]
        stream = parse_sdp(ok.body).audio()
        assert stream is not None and stream.address is not None
        self.media = (stream.address, stream.port)
        self.ok = ok
        self.ack(ok, uri, branch)

    def call_with_auth(self, uri: str, user: str, password: str, call_id: str) -> None:
        """INVITE, 407, ACK, INVITE with the MD5 answer, 200, ACK."""
        self.invite(uri, user, call_id)
        challenge = self.final(1)
        assert challenge.status == 407, challenge.to_bytes()[:400]
        self.ack(challenge, uri, f"z9hG4bK{call_id}1")
        md5 = next(c for c in challenge.get_lines("proxy-authenticate") if "MD5" in c)
        self.invite(uri, user, call_id, 2,
                    build_authorization(md5, "INVITE", uri, user, password, "cn"))
        self.answered(self.final(2), uri, f"z9hG4bK{call_id}ack")

    def send_tone(self, freq: float, ms: int) -> None:
        assert self.media is not None
        audio = PCMU.encode(tone(freq, ms, level=0.4))
        start = time.monotonic()
        for n, i in enumerate(range(0, len(audio), FRAME)):
            self.rtp.sendto(self.sender.audio(audio[i:i + FRAME]).build(), self.media)
            time.sleep(max(0.0, start + (n + 1) * 0.02 - time.monotonic()))

    def press(self, keys: str, gap: float = 0.1) -> None:
        assert self.media is not None
        for key in keys:
            for packet in dtmf_packets(self.sender, key):
                self.rtp.sendto(packet.build(), self.media)
                time.sleep(0.02)
            time.sleep(gap)
            self.sender.skip(int(gap / 0.02))

    def engine_bye(self, timeout: float) -> Request:
        """Wait for the engine's BYE and answer it."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            msg = self.recv(left)
            if isinstance(msg, Request) and msg.method == "BYE":
                self.sip.sendto(make_response(msg, 200).to_bytes(), self.engine)
                return msg
        raise AssertionError(f"the engine did not hang up within {timeout} s: {self.seen}")


def leave_message(engine: EngineProcess, trunk: Ua) -> None:
    """Through the trunk to 104's DID: after the beep, 2 s of 1 kHz, then '#'."""
    uri = "sip:+15145550104@127.0.0.1"
    trunk.invite(uri, CALLER_NUMBER, "vm-leave")
    answered_at = time.monotonic()
    trunk.answered(trunk.final(1), uri, "z9hG4bKvm-leave-ack")
    deadline = time.monotonic() + 4
    while goertzel(trunk.tap.audio(answered_at), 8000, 1000) < 0.05:
        assert time.monotonic() < deadline, "no beep"
        time.sleep(0.05)
    time.sleep(0.5)  # the rest of the 400 ms beep
    trunk.send_tone(1000, 2000)
    trunk.press("#")
    trunk.engine_bye(10)
    listed = json.loads(engine.cli("voicemail", "list", "104", "--json").stdout)
    assert [(m["caller"], m["read"]) for m in listed] == [(CALLER_NUMBER, False)]


def one_khz_stretch(pcm16: bytes, windows: int = 5) -> bool:
    """``windows`` consecutive 200 ms windows dominated by 1 kHz (1 s of the message)."""
    size = 1600 * 2
    run = 0
    for i in range(0, len(pcm16) - size + 1, size):
        w = pcm16[i:i + size]
        if goertzel(w, 8000, 1000) > 0.2 and abs(dominant_frequency(w, 8000) - 1000) < 20:
            run += 1
            if run >= windows:
                return True
        else:
            run = 0
    return False


@dataclass
class Office:
    engine: EngineProcess
    trunk: Ua
    phone: Ua


@contextlib.contextmanager
def office(tmp_path: Path) -> Iterator[Office]:
    trunk_port = free_port()
    low = 40000 + (free_port() % 10000) // 2 * 2
    (tmp_path / "directory.toml").write_text(
        DIRECTORY.format(trunk=trunk_port, low=low, high=low + 99))
    engine = EngineProcess(tmp_path, tmp_path / "directory.toml").start()
    uas: list[Ua] = []
    try:
        uas.append(Ua(engine.sip, trunk_port))
        uas.append(Ua(engine.sip))
        yield Office(engine, uas[0], uas[1])
    finally:
        for ua in uas:
            ua.close()
        code = engine.stop()
        assert code == 0, f"engine exit {code}:\n{engine.log()}"


def test_listen_to_a_message_by_phone_then_delete_it(tmp_path: Path) -> None:
    with office(tmp_path) as o:
        leave_message(o.engine, o.trunk)

        phone = o.phone
        phone.call_with_auth("sip:999@pbx.test", "104", "pw104", "mbx-listen")
        answered_at = time.monotonic()
        # The PIN prompt plays; the PIN interrupts it.
        deadline = answered_at + 3
        while len(phone.tap.audio(answered_at)) < 8000:  # 0.5 s of "Please enter your PIN"
            assert time.monotonic() < deadline, "no PIN prompt"
            time.sleep(0.05)
        phone.press("1234#")
        pin_at = time.monotonic()
        # Summary, header, then the recording: 1 kHz for about 2 s.
        deadline = pin_at + 15
        while not one_khz_stretch(phone.tap.audio(pin_at)):
            assert time.monotonic() < deadline, "the message was not played within 15 s"
            time.sleep(0.1)
        listed = json.loads(o.engine.cli("voicemail", "list", "104", "--json").stdout)
        assert [m["read"] for m in listed] == [True]  # read once its recording starts

        phone.press("3")  # delete: "Message deleted." (1 s), then "End of messages..."
        time.sleep(1.8)
        bye = None
        for _ in range(3):  # '9' during "Message deleted." would be ignored: press again
            phone.press("9")  # "Goodbye." and hang-up
            with contextlib.suppress(AssertionError):
                bye = phone.engine_bye(3)
                break
        assert bye is not None, f"no hang-up after '9': {phone.seen}"
        assert phone.ok is not None and bye.call_id == phone.ok.call_id

        listed = json.loads(o.engine.cli("voicemail", "list", "104", "--json").stdout)
        assert listed == []
        log = o.engine.log()
        assert "mailbox answered" in log and "mailbox: message deleted" in log
        assert "mailbox session over" in log


def test_three_wrong_pins_hang_up_and_keep_the_message(tmp_path: Path) -> None:
    with office(tmp_path) as o:
        leave_message(o.engine, o.trunk)

        phone = o.phone
        phone.call_with_auth("sip:999@pbx.test", "104", "pw104", "mbx-wrong")
        answered_at = time.monotonic()
        deadline = answered_at + 3
        while len(phone.tap.audio(answered_at)) < 8000:
            assert time.monotonic() < deadline, "no PIN prompt"
            time.sleep(0.05)
        for _ in range(3):
            phone.press("4321#")
            time.sleep(0.5)
        phone.engine_bye(8)
        heard = phone.tap.audio(answered_at)
        assert not one_khz_stretch(heard), "the message played without the PIN"

        listed = json.loads(o.engine.cli("voicemail", "list", "104", "--json").stdout)
        assert [(m["caller"], m["read"]) for m in listed] == [(CALLER_NUMBER, False)]
        assert "mailbox session over" in o.engine.log()
