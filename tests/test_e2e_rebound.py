"""Rebound screening end to end: a forwarded call to a mobile is announced to the mobile,
which accepts with 1 or refuses; the caller waits on hold music meanwhile.

One scripted carrier over real UDP sockets, built from the engine's own message
and media modules: ``caller`` is the trunk's inbound side (its port is the
trunk's ``inbound_port``), ``mobile`` is the trunk's host:port, where the
engine sends the forwarded INVITE. Each side has its own RTP socket, read in
the background (:class:`RtpTap`) so no packet waits in a full socket buffer.
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.sip.message import Request, Response, make_response, parse
from media.prompts import prompt_path
from media.rtp import RtpSender
from media.sdp import parse_sdp
from media.tones import dominant_frequency, goertzel, rms_dbfs
from media.wav import load_wav
from tests.conftest import EngineProcess, free_port
from tests.e2e_helpers import (
    FRAME,
    PCMU,
    SALES_104,
    RtpTap,
    best_match,
    sdp_offer,
    send_digit,
    send_tone,
)

pytestmark = pytest.mark.peers

DIRECTORY = """
[system]
domain = "pbx.test"
rtp_ports = "{low}-{high}"

[[trunks]]
name = "carrier"
host = "127.0.0.1"
port = {carrier}
inbound_from = ["127.0.0.1/32"]
inbound_port = {caller}
""" + SALES_104 + """mobile = "+15145550111"
[users.voicemail]
language = "fr"
max_seconds = 20
[users.forwarding.available]
no_answer_seconds = 0
no_answer = {{ external = {{ to = "mobile", rebound = true }}, internal = "voicemail" }}
"""

CALLER_NUMBER = "+15145550199"
DID = "+15145550104"
MOBILE = "+15145550111"


# --- the scripted carrier ----------------------------------------------------------------


def media_address(body: bytes) -> tuple[str, int]:
    stream = parse_sdp(body).audio()
    assert stream is not None and stream.address is not None, body
    return (stream.address, stream.port)


class SipSocket:
    """A UDP SIP socket of the carrier; every wait is bounded."""

    def __init__(self, port: int, engine: tuple[str, int]) -> None:
        self.port = port
        self.engine = engine
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", port))
        self.seen: list[Request | Response] = []

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.engine)

    def reply(self, req: Request, status: int, headers: list[tuple[str, str]] | None = None,
              body: bytes = b"", to_tag: str | None = None) -> None:
        self.send(make_response(req, status, None, headers or [], body, to_tag).to_bytes())

    def next(self, timeout: float) -> Request | Response | None:
        """The next message within ``timeout`` s, or None."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(65535)
        except TimeoutError:
            return None
        msg = parse(data)
        self.seen.append(msg)
        return msg

    def wait(self, want: Callable[[Request | Response], bool], timeout: float,
             what: str, on_other: Callable[[Request | Response], None] | None = None,
             ) -> Request | Response:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            msg = self.next(left)
            if msg is None:
                break
            if want(msg):
                return msg
            if on_other is not None:
                on_other(msg)
        raise AssertionError(f"{what}: nothing within {timeout} s; got "
                             f"{[m.start_line() for m in self.seen]}")

    def request(self, method: str, timeout: float) -> Request:
        msg = self.wait(lambda m: isinstance(m, Request) and m.method == method, timeout,
                        f"no {method} on port {self.port}")
        assert isinstance(msg, Request)
        return msg

    def quiet(self, seconds: float, method: str) -> bool:
        """True when no ``method`` request arrives within ``seconds``."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            msg = self.next(left)
            if isinstance(msg, Request) and msg.method == method:
                return False
        return True


@dataclass
class Caller:
    """The trunk's inbound side: INVITE to the DID, ACK, BYE."""

    sip: SipSocket
    rtp_port: int
    call_id: str
    tag: str = "carrier-in"
    cseq: int = 1
    ok: Response | None = None

    def invite(self) -> None:
        body = sdp_offer(self.rtp_port, 1)
        head = (f"INVITE sip:{DID}@127.0.0.1 SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{self.sip.port};branch=z9hG4bK{self.call_id}1;rport"
                f"\r\nMax-Forwards: 70\r\nFrom: <sip:{CALLER_NUMBER}@127.0.0.1>;tag={self.tag}"
                f"\r\nTo: <sip:{DID}@127.0.0.1>\r\nCall-ID: {self.call_id}\r\nCSeq: 1 INVITE\r\n"
                f"Contact: <sip:carrier@127.0.0.1:{self.sip.port}>\r\n"
                f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n")
        self.sip.send(head.encode() + body)

    def response(self, want: Callable[[Response], bool], timeout: float, what: str) -> Response:
        msg = self.sip.wait(lambda m: isinstance(m, Response) and m.cseq.method == "INVITE"
                            and want(m), timeout, what)
        assert isinstance(msg, Response)
        return msg

    def ack(self, ok: Response) -> None:
        self.ok = ok
        ack = (f"ACK {ok.contacts[0].uri} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP 127.0.0.1:{self.sip.port};branch=z9hG4bK{self.call_id}a;rport"
               f"\r\nMax-Forwards: 70\r\nFrom: {ok.get('from')}\r\nTo: {ok.get('to')}\r\n"
               f"Call-ID: {self.call_id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n")
        self.sip.send(ack.encode())

    def bye(self) -> None:
        ok = self.ok
        assert ok is not None
        self.cseq += 1
        bye = (f"BYE {ok.contacts[0].uri} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP 127.0.0.1:{self.sip.port};branch=z9hG4bK{self.call_id}b;rport"
               f"\r\nMax-Forwards: 70\r\nFrom: {ok.get('from')}\r\nTo: {ok.get('to')}\r\n"
               f"Call-ID: {self.call_id}\r\nCSeq: {self.cseq} BYE\r\nContent-Length: 0\r\n\r\n")
        self.sip.send(bye.encode())


def windows(pcm16: bytes, ms: int = 200) -> Iterator[bytes]:
    size = 8 * ms * 2
    for i in range(0, len(pcm16) - size + 1, size):
        yield pcm16[i:i + size]


def has_beep(pcm16: bytes) -> bool:
    """A 200 ms window dominated by 1 kHz (the voicemail beep)."""
    return any(goertzel(w, 8000, 1000) > 0.1 and abs(dominant_frequency(w, 8000) - 1000) < 20
               for w in windows(pcm16))


@dataclass
class Rig:
    """The engine, the carrier's two SIP sockets and the two RTP sockets."""

    engine: EngineProcess
    caller: Caller
    mobile: SipSocket
    caller_rtp: socket.socket
    mobile_rtp: socket.socket
    caller_tap: RtpTap
    mobile_tap: RtpTap


@contextlib.contextmanager
def rig(tmp_path: Path, call_id: str) -> Iterator[Rig]:
    caller_port, mobile_port = free_port(), free_port()
    low = 40000 + (free_port() % 10000) // 2 * 2
    (tmp_path / "directory.toml").write_text(
        DIRECTORY.format(caller=caller_port, carrier=mobile_port, low=low, high=low + 99))
    engine = EngineProcess(tmp_path, tmp_path / "directory.toml").start()
    opened: list[socket.socket] = []
    sips: list[SipSocket] = []
    taps: list[RtpTap] = []
    try:
        caller_sip = SipSocket(caller_port, engine.sip)
        sips.append(caller_sip)
        mobile = SipSocket(mobile_port, engine.sip)
        sips.append(mobile)
        for _ in range(2):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            opened.append(s)
            s.bind(("127.0.0.1", free_port()))
        caller_rtp, mobile_rtp = opened
        taps = [RtpTap(caller_rtp), RtpTap(mobile_rtp)]
        for tap in taps:
            tap.start()
        yield Rig(engine, Caller(caller_sip, caller_rtp.getsockname()[1], call_id), mobile,
                  caller_rtp, mobile_rtp, taps[0], taps[1])
    finally:
        for tap in taps:
            tap.stop()
        for s in opened:
            s.close()
        for sip in sips:
            sip.close()
        code = engine.stop()
        assert code == 0, f"engine exit {code}:\n{engine.log()}"


@dataclass
class Screening:
    """The call as the screening starts: the mobile's INVITE and where each side's media goes."""

    invite: Request
    mobile_tag: str
    to_engine_from_mobile: tuple[str, int]  # the engine's callee-side RTP address
    to_engine_from_caller: tuple[str, int]  # the engine's caller-side RTP address
    early_at: float  # when the caller got the 183


def start_screening(r: Rig) -> Screening:
    """Caller INVITEs the DID; the mobile rings then answers; the caller gets 183."""
    r.caller.invite()
    invite = r.mobile.request("INVITE", 8)
    assert invite.uri.user == MOBILE, invite.start_line()
    offer_to_mobile = media_address(invite.body)
    tag = "mobile"
    r.mobile.reply(invite, 180, to_tag=tag)
    answer = sdp_offer(r.mobile_rtp.getsockname()[1], 2)
    ok_headers = [("Contact", f"<sip:{MOBILE}@127.0.0.1:{r.mobile.port}>"),
                  ("Content-Type", "application/sdp")]
    r.mobile.reply(invite, 200, ok_headers, answer, to_tag=tag)

    def again(msg: Request | Response) -> None:  # our 200 crossed an INVITE retransmission
        if isinstance(msg, Request) and msg.method == "INVITE":
            r.mobile.reply(msg, 200, ok_headers, answer, to_tag=tag)

    ack = r.mobile.wait(lambda m: isinstance(m, Request) and m.method == "ACK", 5,
                        "no ACK for the mobile's 200", again)
    assert isinstance(ack, Request) and ack.call_id == invite.call_id
    early = r.caller.response(lambda m: m.status >= 183, 5, "no 183 for the caller")
    assert early.status == 183, early.to_bytes()[:400]
    assert early.get("content-type") == "application/sdp"
    return Screening(invite, tag, offer_to_mobile, media_address(early.body), time.monotonic())


def mobile_bye(r: Rig, s: Screening) -> None:
    """The mobile hangs up its answered leg."""
    inv = s.invite
    contact = inv.contacts[0].uri
    bye = (f"BYE {contact} SIP/2.0\r\n"
           f"Via: SIP/2.0/UDP 127.0.0.1:{r.mobile.port};branch=z9hG4bKmobye;rport\r\n"
           f"Max-Forwards: 70\r\nFrom: {inv.get('to')};tag={s.mobile_tag}\r\n"
           f"To: {inv.get('from')}\r\nCall-ID: {inv.call_id}\r\nCSeq: 1 BYE\r\n"
           f"Content-Length: 0\r\n\r\n")
    r.mobile.send(bye.encode())


def hears_speech(pcm16: bytes) -> int:
    """How many 20 ms frames carry sound (above -45 dBFS)."""
    frames = [pcm16[i:i + FRAME * 2] for i in range(0, len(pcm16), FRAME * 2)]
    return sum(1 for f in frames if rms_dbfs(f) > -45)


def check_screening_media(r: Rig, s: Screening) -> None:
    """The caller hears hold music; the mobile hears the announcement in French."""
    music = r.caller_tap.wait_audio(40, s.early_at, 5)
    assert rms_dbfs(music) > -40, "the caller hears silence while the mobile decides"
    heard = r.mobile_tap.wait_audio(75, 0.0, 5)  # 1.5 s of the announcement
    assert hears_speech(heard) >= 25, "the announcement is (nearly) silent"
    intro = load_wav(prompt_path("fr", "rebound_intro")).pcm16
    expected = PCMU.decode(PCMU.encode(intro[:4000 * 2]))  # its first 500 ms
    score = best_match(heard, expected)
    assert score > 0.9, f"the mobile does not hear 'Vous avez un appel du' ({score:.2f})"
    # Not a tone: speech spreads over the band (a pure tone would give a huge SNR).
    assert not math.isclose(dominant_frequency(heard, 8000), 1000, abs_tol=30)


def check_relayed_tone(sock: socket.socket, sender: RtpSender, to: tuple[str, int],
                       tap: RtpTap, freq: float, what: str) -> float:
    """1 s of ``freq`` Hz sent from ``sock`` reaches ``tap`` relayed untouched (``what``
    names the 40-of-50 check); when it started."""
    start = time.monotonic()
    sent = send_tone(sock, sender, to, freq, 1000)
    time.sleep(0.2)
    relayed = tap.received(start, ssrc=sender.ssrc)
    assert len(relayed) >= 40, f"{len(relayed)} of 50 {what}"
    assert set(tap.raw(start, sender.ssrc)) <= set(sent), "the relay changed the packets"
    audio = b"".join(PCMU.decode(p.payload) for p in relayed)
    assert abs(dominant_frequency(audio, 8000) - freq) < 10
    return start


# --- the tests ---------------------------------------------------------------------------


def test_rebound_accepted_with_1_connects_caller_and_mobile(tmp_path: Path) -> None:
    with rig(tmp_path, "rebound-accept") as r:
        s = start_screening(r)
        check_screening_media(r, s)

        mobile_sender = RtpSender.create(0, 8000)
        send_digit(r.mobile_rtp, mobile_sender, s.to_engine_from_mobile, "1")
        ok = r.caller.response(lambda m: m.status >= 200, 5, "no 200 after '1'")
        assert ok.status == 200, ok.to_bytes()[:400]
        assert media_address(ok.body) == s.to_engine_from_caller
        r.caller.ack(ok)
        accepted_at = time.monotonic()
        time.sleep(0.3)  # the relay replaces the music and the announcement

        # Caller -> mobile: 700 Hz, relayed untouched.
        caller_sender = RtpSender.create(0, 8000)
        start = check_relayed_tone(r.caller_rtp, caller_sender, s.to_engine_from_caller,
                                   r.mobile_tap, 700, "caller packets reached the mobile")
        others = r.mobile_tap.received(start + 0.2, other_than=caller_sender.ssrc)
        assert not others, f"the mobile still hears the engine ({len(others)} packets)"

        # Mobile -> caller: 1100 Hz.
        check_relayed_tone(r.mobile_rtp, mobile_sender, s.to_engine_from_mobile, r.caller_tap,
                           1100, "mobile packets reached the caller")
        music = r.caller_tap.received(accepted_at + 0.5, other_than=mobile_sender.ssrc)
        assert not music, f"hold music goes on after the answer ({len(music)} packets)"

        # The caller hangs up: the mobile gets the BYE.
        r.caller.bye()
        bye = r.mobile.request("BYE", 5)
        assert bye.call_id == s.invite.call_id
        r.mobile.reply(bye, 200)
        done = r.caller.sip.wait(lambda m: isinstance(m, Response) and m.cseq.method == "BYE",
                                 5, "no 200 for the caller's BYE")
        assert isinstance(done, Response) and done.status == 200
        log = r.engine.log()
        assert "rebound screening" in log and "rebound accepted" in log
        assert "rebound refused" not in log


def leave_message_after_refusal(r: Rig, s: Screening, freq: float) -> None:
    """The call came back to voicemail: 200, the beep, then ``freq`` Hz for 1.5 s and '#'."""
    ok = r.caller.response(lambda m: m.status >= 200, 6, "no answer from voicemail")
    assert ok.status == 200, ok.to_bytes()[:400]
    assert media_address(ok.body) == s.to_engine_from_caller  # the same endpoint goes on
    r.caller.ack(ok)
    answered = time.monotonic()
    deadline = answered + 4
    while not has_beep(r.caller_tap.audio(answered)):
        assert time.monotonic() < deadline, "no 1 kHz beep from voicemail"
        time.sleep(0.1)
    time.sleep(0.45)  # the rest of the beep (400 ms)
    sender = RtpSender.create(0, 8000)
    send_tone(r.caller_rtp, sender, s.to_engine_from_caller, freq, 1500)
    send_digit(r.caller_rtp, sender, s.to_engine_from_caller, "#")
    bye = r.caller.sip.request("BYE", 5)
    r.caller.sip.reply(bye, 200)
    listed = r.engine.cli("voicemail", "list", "104", "--json")
    assert listed.returncode == 0, listed.stderr
    [message] = json.loads(listed.stdout)
    assert message["caller"] == CALLER_NUMBER and 1.0 <= message["duration"] <= 2.5
    recorded = load_wav(message["path"]).pcm16
    assert abs(dominant_frequency(recorded, 8000) - freq) < 10


def test_rebound_refused_with_2_goes_to_voicemail(tmp_path: Path) -> None:
    with rig(tmp_path, "rebound-refuse") as r:
        s = start_screening(r)
        r.mobile_tap.wait_audio(50, s.early_at - 1, 5)  # 1 s of the announcement
        send_digit(r.mobile_rtp, RtpSender.create(0, 8000), s.to_engine_from_mobile, "2")
        bye = r.mobile.request("BYE", 5)
        assert bye.call_id == s.invite.call_id
        r.mobile.reply(bye, 200)
        leave_message_after_refusal(r, s, 600)
        log = r.engine.log()
        assert "rebound screening" in log and "rebound refused" in log
        assert "rebound accepted" not in log and "voicemail answered" in log


def test_rebound_mobile_hangs_up_during_announcement_goes_to_voicemail(
        tmp_path: Path) -> None:
    with rig(tmp_path, "rebound-hangup") as r:
        s = start_screening(r)
        r.mobile_tap.wait_audio(25, s.early_at - 1, 5)  # 0.5 s of the announcement
        mobile_bye(r, s)
        done = r.mobile.wait(lambda m: isinstance(m, Response) and m.cseq.method == "BYE",
                             5, "no answer to the mobile's BYE")
        assert isinstance(done, Response) and done.status == 200
        leave_message_after_refusal(r, s, 500)
        # The engine sends no BYE of its own for the leg that hung up.
        assert not any(isinstance(m, Request) and m.method == "BYE" for m in r.mobile.seen)
        assert r.mobile.quiet(0.3, "BYE")
        log = r.engine.log()
        assert "rebound screening" in log and "voicemail answered" in log
        assert "rebound accepted" not in log
