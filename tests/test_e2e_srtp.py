"""SDES-SRTP end to end: a real ``switchboard serve`` with a TLS listener (an
``openssl`` certificate), an SRTP phone calling over TLS and a plain-RTP phone
on UDP, audio both ways through the relay, checked decoded.

The SRTP phone is a scripted UA on a TLS socket whose RTP goes through its own
libsrtp sessions (pylibsrtp): it protects with the key it offered and can only
hear the engine with the key in the engine's answer. The plain phone is the
UDP ``Ua`` of the other end-to-end tests. The 488s are checked on the same
engine: an SRTP offer over UDP, and a plain offer from a ``required`` user.
"""

from __future__ import annotations

import base64
import socket
import ssl
import threading
import time
from pathlib import Path

import pylibsrtp
import pytest

from engine.sip.auth import build_authorization
from engine.sip.message import Request, Response, parse
from media import srtp
from media.codecs import codec_for
from media.rtp import RtpPacket, RtpSender
from media.sdp import parse_sdp
from media.tones import dominant_frequency, tone
from tests.conftest import EngineProcess, free_port
from tests.e2e_helpers import FRAME, PHONE_SYSTEM, SALES, RtpTap, Ua, user_toml
from tests.test_e2e_trunk_transports import make_certificate, ports

pytestmark = pytest.mark.peers

PCMU = codec_for("PCMU")
DIRECTORY = PHONE_SYSTEM + SALES + user_toml("101", 'srtp = "allowed"\n') + user_toml("102") \
    + user_toml("103", 'srtp = "required"\n')


def srtp_session(key: bytes, outbound: bool) -> pylibsrtp.Session:
    kind = pylibsrtp.Policy.SSRC_ANY_OUTBOUND if outbound else pylibsrtp.Policy.SSRC_ANY_INBOUND
    return pylibsrtp.Session(pylibsrtp.Policy(
        key=key, ssrc_type=kind, srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80))


def offer(rtp_port: int, key: bytes | None) -> bytes:
    profile = "RTP/SAVP" if key is not None else "RTP/AVP"
    crypto = "" if key is None else \
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{base64.b64encode(key).decode()}\r\n"
    return (f"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {rtp_port} {profile} 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
            f"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n{crypto}").encode()


class TlsPhone:
    """A scripted UA on one TLS connection to the engine, SIP only (RTP is the test's)."""

    def __init__(self, address: tuple[str, int], cafile: Path) -> None:
        context = ssl.create_default_context(cafile=str(cafile))
        raw = socket.create_connection(address, timeout=5)
        self.sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
        self.port = self.sock.getsockname()[1]
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, timeout: float = 8) -> Request | Response:
        deadline = time.monotonic() + timeout
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end >= 0:
                head = self.buffer[:head_end].decode(errors="replace")
                length = next((int(line.split(":", 1)[1]) for line in head.split("\r\n")
                               if line.lower().startswith(("content-length:", "l:"))), 0)
                end = head_end + 4 + length
                if len(self.buffer) >= end:
                    data, self.buffer = self.buffer[:end], self.buffer[end:]
                    return parse(data)
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("nothing from the engine over TLS")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65535)
            if not chunk:
                raise AssertionError("the engine closed the TLS connection")
            self.buffer += chunk

    def final(self, cseq: int, method: str = "INVITE") -> Response:
        while True:
            msg = self.recv()
            if isinstance(msg, Response) and msg.cseq.method == method \
                    and msg.cseq.number == cseq and msg.status >= 200:
                return msg

    def request(self, method: str, uri: str, call_id: str, cseq: int, *, user: str,
                to: str, body: bytes = b"", auth: str = "", branch: str = "") -> None:
        head = (f"{method} {uri} SIP/2.0\r\n"
                f"Via: SIP/2.0/TLS 127.0.0.1:{self.port};"
                f"branch={branch or f'z9hG4bK{call_id}{cseq}'};rport\r\n"
                f"Max-Forwards: 70\r\nFrom: <sip:{user}@pbx.test>;tag={call_id}\r\n"
                f"To: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n"
                f"Contact: <sip:{user}@127.0.0.1:{self.port};transport=tls>\r\n"
                + (f"Proxy-Authorization: {auth}\r\n" if auth else "")
                + ("Content-Type: application/sdp\r\n" if body else "")
                + f"Content-Length: {len(body)}\r\n\r\n")
        self.send(head.encode() + body)

    def call(self, dialled: str, user: str, call_id: str, body: bytes) -> Response:
        """INVITE, 407, ACK, INVITE with credentials; the final response (ACKed if 2xx)."""
        uri = f"sip:{dialled}@pbx.test"
        self.request("INVITE", uri, call_id, 1, user=user, to=f"<{uri}>", body=body)
        challenge = self.final(1)
        assert challenge.status == 407, challenge.to_bytes()[:400]
        self.request("ACK", uri, call_id, 1, user=user, to=challenge.get("to") or "")
        md5 = next(c for c in challenge.get_lines("proxy-authenticate") if "MD5" in c)
        self.request("INVITE", uri, call_id, 2, user=user, to=f"<{uri}>", body=body,
                     auth=build_authorization(md5, "INVITE", uri, user, f"pw{user}", "cn"))
        final = self.final(2)
        if final.status == 200:
            self.request("ACK", final.contacts[0].uri, call_id, 2, user=user,
                         to=final.get("to") or "", branch=f"z9hG4bK{call_id}ack")
        else:
            self.request("ACK", uri, call_id, 2, user=user, to=final.get("to") or "")
        return final


def raw_after(tap: RtpTap, since: float) -> list[bytes]:
    with tap.lock:
        return [data for at, data in tap.packets if at >= since]


def frequency(pcm: bytes) -> float:
    return dominant_frequency(pcm, 8000)


def tone_packets(sender: RtpSender, freq: float, ms: int) -> list[bytes]:
    audio = PCMU.encode(tone(freq, ms, level=0.4))
    return [sender.audio(audio[i:i + FRAME]).build() for i in range(0, len(audio), FRAME)]


def paced(sock: socket.socket, datagrams: list[bytes], to: tuple[str, int]) -> None:
    start = time.monotonic()
    for n, data in enumerate(datagrams):
        sock.sendto(data, to)
        time.sleep(max(0.0, start + (n + 1) * 0.02 - time.monotonic()))


def test_srtp_phone_over_tls_talks_with_a_plain_phone_both_ways(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    tls_port = free_port()
    low, high = ports(free_port())
    (tmp_path / "directory.toml").write_text(DIRECTORY.format(low=low, high=high))
    engine = EngineProcess(tmp_path, tmp_path / "directory.toml",
                           ["--tls", f"127.0.0.1:{tls_port}", "--tls-cert", str(cert),
                            "--tls-key", str(key)]).start()
    plain = Ua(engine.sip)
    secure = TlsPhone(("127.0.0.1", tls_port), cert)
    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp.bind(("127.0.0.1", 0))
    tap = RtpTap(rtp)
    tap.start()
    try:
        plain.register("102", "pw102")
        phone_key = srtp.new_key()
        # 101 (srtp allowed) calls 102 over TLS with SRTP; 102 answers plain RTP.
        taken: list[Request] = []
        answer = threading.Thread(target=lambda: taken.append(plain.take_call()))
        answer.start()
        ok = secure.call("102", "101", "srtp-call", offer(rtp.getsockname()[1], phone_key))
        answer.join(10)
        assert ok.status == 200, ok.to_bytes()[:500]
        [leg] = taken
        assert b"RTP/AVP" in leg.body and b"crypto" not in leg.body  # the plain phone's leg
        ours = parse_sdp(ok.body)
        m = ours.media[0]
        assert m.protocol == "RTP/SAVP"
        engine_key = srtp.parse_crypto(m.attribute("crypto") or "").key
        assert engine_key != phone_key
        stream = ours.audio()
        assert stream is not None and stream.address is not None
        to_engine = (stream.address, stream.port)
        assert plain.media is not None

        # SRTP phone -> plain phone: 1 s of 1000 Hz, protected with the phone's key.
        tx = srtp_session(phone_key, outbound=True)
        sender = RtpSender.create(0, 8000)
        since = time.monotonic()
        paced(rtp, [tx.protect(p) for p in tone_packets(sender, 1000, 1000)], to_engine)
        heard = plain.tap.wait_audio(40, since, 5)
        assert abs(frequency(heard) - 1000) < 10

        # Plain phone -> SRTP phone: 600 Hz in the clear, arrives protected.
        since = time.monotonic()
        plain.send_tone(600, 1000)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(raw_after(tap, since)) < 40:
            time.sleep(0.05)
        wire = raw_after(tap, since)
        assert len(wire) >= 40
        rx = srtp_session(engine_key, outbound=False)
        packets = [RtpPacket.parse(rx.unprotect(data)) for data in wire]  # raises if not SRTP
        audio = b"".join(PCMU.decode(p.payload) for p in packets if p.payload_type == 0)
        assert abs(frequency(audio) - 600) < 10
        # Sent in the clear it would not have decoded: the wire is not the plain packets.
        assert all(len(data) == len(p.build()) + 10 for data, p in zip(wire, packets,
                                                                      strict=True))

        # The 488s, on the same engine: SRTP over UDP, and plain RTP from 103 (required).
        udp = Ua(engine.sip)
        try:
            body = offer(udp.rtp_port, srtp.new_key())
            uri = "sip:102@pbx.test"
            head = (f"INVITE {uri} SIP/2.0\r\n"
                    f"Via: SIP/2.0/UDP 127.0.0.1:{udp.port};branch=z9hG4bKudp1;rport\r\n"
                    f"Max-Forwards: 70\r\nFrom: <sip:101@pbx.test>;tag=u1\r\nTo: <{uri}>\r\n"
                    f"Call-ID: srtp-udp\r\nCSeq: 1 INVITE\r\n"
                    f"Contact: <sip:101@127.0.0.1:{udp.port}>\r\n"
                    f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n")
            udp.sip.sendto(head.encode() + body, engine.sip)
            challenge = udp.final(1)
            assert challenge.status == 407
            udp.ack(challenge, uri, "z9hG4bKudp1")
            md5 = next(c for c in challenge.get_lines("proxy-authenticate") if "MD5" in c)
            auth = build_authorization(md5, "INVITE", uri, "101", "pw101", "cn")
            head2 = head.replace("CSeq: 1 INVITE", "CSeq: 2 INVITE").replace(
                "branch=z9hG4bKudp1", "branch=z9hG4bKudp2").replace(
                "Content-Type", f"Proxy-Authorization: {auth}\r\nContent-Type")
            udp.sip.sendto(head2.encode() + body, engine.sip)
            refused = udp.final(2)
            assert refused.status == 488
            assert "only over TLS" in (refused.get("warning") or "")
        finally:
            udp.close()
        required = TlsPhone(("127.0.0.1", tls_port), cert)
        try:
            refused = required.call("102", "103", "plain-from-103", offer(40000, None))
            assert refused.status == 488
            assert "user 103 requires SRTP" in (refused.get("warning") or "")
        finally:
            required.close()
    finally:
        tap.stop()
        rtp.close()
        secure.close()
        plain.close()
        engine.stop()
