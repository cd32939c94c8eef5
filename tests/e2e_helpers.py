"""Pieces shared by the end-to-end tests: directory fragments, a scripted SIP UA, RTP
read in the background, paced tones and digits, and a few measurements.

Plain helpers (no fixtures): each test builds its own engine and sockets.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.sip.auth import build_authorization
from engine.sip.message import Request, Response, make_response, parse
from media.codecs import codec_for, pcm_to_array
from media.rtp import RtpError, RtpPacket, RtpSender, dtmf_packets
from media.sdp import parse_sdp
from media.tones import goertzel, tone
from media.wav import load_wav
from tests.conftest import EngineProcess, free_port

PCMU = codec_for("PCMU")
FRAME = 160  # PCMU bytes (and samples) per 20 ms packet

# The test office: its people (password "pw<extension>"), all in Sales.
PEOPLE = {"101": "Alice Martin", "102": "Bob Tremblay", "103": "Chloe Roy",
          "104": "David Cote"}
SALES = """
[[departments]]
name = "Sales"
caller_id = "+15145550100"

[[numbers]]  # the department's caller ID is one of the system's numbers
number = "+15145550100"
name = "Sales main line"
route_to = "busy"
"""
# The [system] table of the phone tests, a template for .format(low=..., high=...).
PHONE_SYSTEM = """[system]
domain = "pbx.test"
rtp_ports = "{low}-{high}"
"""


def user_toml(extension: str, extra: str = "") -> str:
    """The [[users]] entry of one of the office's people; ``extra``: lines that go in
    it (its codecs, a [users.voicemail] table...). What follows adds to it too."""
    return (f'\n[[users]]\nextension = "{extension}"\nname = "{PEOPLE[extension]}"\n'
            f'password = "pw{extension}"\ndepartment = "Sales"\n{extra}')


# The office's DID and its user 104 in Sales: goes after [system] and [[trunks]]; what
# follows adds to 104's [[users]] entry.
SALES_104 = SALES + """
[[numbers]]
number = "+15145550104"
route_to = "extension:104"
""" + user_toml("104")


# --- pjsua2 phones --------------------------------------------------------------------------


def register_udp(engine: EngineProcess, ext: str, password: str, port: int,
                 domain: str = "pbx.test") -> None:
    """REGISTER ``ext`` with MD5 digest auth from 127.0.0.1:``port``, where its phone
    (a SIPp UAS) will listen next."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    sock.settimeout(5)
    try:
        def send(cseq: int, auth: str | None) -> Response:
            branch = f"z9hG4bKr{ext}{cseq}{time.time_ns()}"
            lines = [f"REGISTER sip:{domain} SIP/2.0",
                     f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch={branch};rport",
                     f"From: <sip:{ext}@{domain}>;tag=r{cseq}", f"To: <sip:{ext}@{domain}>",
                     f"Call-ID: reg-{ext}-{port}", f"CSeq: {cseq} REGISTER", "Max-Forwards: 70",
                     f"Contact: <sip:{ext}@127.0.0.1:{port}>", "Expires: 3600"]
            if auth:
                lines.append(f"Authorization: {auth}")
            sock.sendto(("\r\n".join([*lines, "Content-Length: 0", "", ""])).encode(),
                        engine.sip)
            while True:
                msg = parse(sock.recv(65535))
                assert isinstance(msg, Response)
                if msg.status >= 200:
                    return msg

        first = send(int(time.time() * 10) % 100000 * 2, None)
        assert first.status == 401
        challenge = next(c for c in first.get_lines("www-authenticate") if "MD5" in c)
        auth = build_authorization(challenge, "REGISTER", f"sip:{domain}", ext, password, "cn")
        assert send(int(time.time() * 10) % 100000 * 2 + 1, auth).status == 200
    finally:
        sock.close()


def require_pjsua2() -> None:
    """Fail (never skip) when pjsua2 is missing."""
    if importlib.util.find_spec("pjsua2") is None:
        pytest.fail("peer missing: the pjsua2 module is not importable; install the test "
                    "extras into the venv (pip install -e '.[test]', package pjsua2-python)",
                    pytrace=False)


def tail(path: Path, size: int = 4000) -> str:
    """The end of a log file."""
    return path.read_text(errors="replace")[-size:] if path.exists() else "(no log)"


def run_script(cmd: list[str], log: Path, engine: EngineProcess, timeout: int, what: str,
               keep: Path | None = None) -> tuple[int, list[dict[str, Any]]]:
    """Run a phone script (``cmd``) to the end, its stderr into ``log``, killed and
    failed after ``timeout`` s (``what`` names it); its exit status and JSON events
    (stdout also written to ``keep``, when given)."""
    with log.open("wb") as err:
        try:
            done = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=err, timeout=timeout)
        except subprocess.TimeoutExpired as e:  # run() has killed it
            pytest.fail(f"{what} hung for {timeout} s; stdout {e.stdout!r}\n"
                        f"--- phone log ---\n{tail(log)}\n--- engine log ---\n"
                        f"{engine.log()[-3000:]}")
    out = done.stdout.decode(errors="replace")
    if keep is not None:
        keep.write_text(out)
    return done.returncode, [json.loads(line) for line in out.splitlines()
                             if line.startswith("{")]


def run_to_done(cmd: list[str], log: Path, engine: EngineProcess, timeout: int, what: str,
                keep: Path | None = None) -> list[dict[str, Any]]:
    """``run_script``, failed unless the script exits 0 after its "done" event."""
    code, events = run_script(cmd, log, engine, timeout, what, keep)
    if code != 0 or not any(e["event"] == "done" for e in events):
        pytest.fail(f"{what} exited {code}; events {events}\n"
                    f"--- phone log ---\n{tail(log)}\n--- engine log ---\n"
                    f"{engine.log()[-3000:]}")
    return events


class CarrierOffice:
    """An engine whose trunk is the pjsua2 phones' carrier port: the directory (a
    template with ``{carrier}``, ``{low}``, ``{high}`` and ``fields``) in ``folder``.
    One serves every run of a module (:func:`shared_office`)."""

    def __init__(self, folder: Path, directory: str, **fields: object) -> None:
        self.carrier = free_port()
        low = 40000 + (free_port() % 10000) // 2 * 2
        (folder / "directory.toml").write_text(
            directory.format(carrier=self.carrier, low=low, high=low + 99, **fields))
        self.engine = EngineProcess(folder, folder / "directory.toml")


def shared_office(folder: Path, directory: str, **fields: object) -> Iterator[CarrierOffice]:
    """A module fixture's body: one carrier office for the module's runs, stopped
    cleanly at the end. Each run reads the engine's log from its own start."""
    require_pjsua2()
    office = CarrierOffice(folder, directory, **fields)
    office.engine.start()
    try:
        yield office
    finally:
        code = office.engine.stop()
    assert code == 0, f"engine did not shut down cleanly ({code}):\n{office.engine.log()[-3000:]}"


class CarrierRun:
    """One run of pjsua2 phones against ``office``, the module's engine whose trunk is
    the phones' carrier port: the phones' events, recordings and logs, and the
    readings the tests make of them. The phone script writes its JSON events to
    stdout and ``heard-by-<side>.wav`` recordings in the run's folder."""

    def __init__(self, tmp_path: Path, office: CarrierOffice) -> None:
        self.tmp = tmp_path
        self.carrier = office.carrier
        self.log = tmp_path / "pjsua.log"
        self.engine = office.engine
        self.since = len(self.engine.log())  # this run's part of the engine's log
        self.events: list[dict[str, Any]] = []

    def engine_log(self) -> str:
        """The engine's log since this run began."""
        return self.engine.log()[self.since:]

    def run(self, cmd: list[str], timeout: int, what: str) -> None:
        """Run the phone script to its "done" event (the JSON lines are kept with
        the recordings, for a look), else fail saying why."""
        code, self.events = run_script(cmd, self.log, self.engine, timeout, what,
                                       self.tmp / "phones.jsonl")
        if code != 0 or not any(e["event"] == "done" for e in self.events):
            pytest.fail(f"{what} exited {code}; {self.why()}")

    def why(self, *extra: object) -> str:
        return (f"{extra}\nevents {self.events}\n--- phone log ---\n{tail(self.log)}\n"
                f"--- engine log ---\n{self.engine.log()[-6000:]}")

    def one(self, name: str) -> dict[str, Any]:
        found = [e for e in self.events if e["event"] == name]
        assert len(found) == 1, self.why(f"{len(found)} {name!r} events")
        return found[0]

    def heard(self, side: str, begin: float, end: float, rate: int = 8000) -> bytes:
        """What ``side`` received between two of the phones' times."""
        start = next(e["t"] for e in self.events
                     if e["event"] == "recording" and e["side"] == side)
        pcm = load_wav(self.tmp / f"heard-by-{side}.wav").pcm16
        a, b = round((begin - start) * rate), round((end - start) * rate)
        assert 0 <= a < b <= len(pcm) // 2, self.why(side, begin, end, a, b, len(pcm) // 2)
        return pcm[2 * a: 2 * b]

    def engine_said(self, prefix: str) -> list[dict[str, Any]]:
        """The engine's log lines of this run whose event starts with ``prefix``, in
        order."""
        out = []
        for line in self.engine_log().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and str(row.get("event", "")).startswith(prefix):
                out.append(row)
        return out


# --- SDP and SIP -------------------------------------------------------------------------


def sdp_offer(rtp_port: int, session: int = 1) -> bytes:
    """PCMU and telephone-event on ``rtp_port`` of 127.0.0.1."""
    return (f"v=0\r\no=- {session} 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {rtp_port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
            f"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n").encode()


def ok_200(req: Request) -> bytes:
    """A bare 200 OK to ``req`` (its Vias, From, To, Call-ID and CSeq as they came)."""
    return ("SIP/2.0 200 OK\r\n" + "".join(f"Via: {v}\r\n" for v in req.get_all("via"))
            + f"From: {req.get('from')}\r\nTo: {req.get('to')}\r\n"
            f"Call-ID: {req.call_id}\r\nCSeq: {req.get('cseq')}\r\n"
            "Content-Length: 0\r\n\r\n").encode()


# --- RTP -----------------------------------------------------------------------------------


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

    def received(self, since: float = 0.0, payload_type: int | None = 0,
                 ssrc: int | None = None, other_than: int | None = None) -> list[RtpPacket]:
        with self.lock:
            raw = [data for at, data in self.packets if at >= since]
        out = []
        for data in raw:
            try:
                packet = RtpPacket.parse(data)
            except RtpError:
                continue
            if payload_type is not None and packet.payload_type != payload_type:
                continue
            if ssrc is not None and packet.ssrc != ssrc:
                continue
            if other_than is not None and packet.ssrc == other_than:
                continue
            out.append(packet)
        return out

    def raw(self, since: float, ssrc: int) -> list[bytes]:
        """The datagrams of stream ``ssrc`` received after ``since``, as they came."""
        with self.lock:
            return [data for at, data in self.packets
                    if at >= since and data[8:12] == ssrc.to_bytes(4, "big")]

    def audio(self, since: float = 0.0, **match: int) -> bytes:
        """The PCMU audio received after ``since`` (payload type 0 unless told), decoded."""
        return b"".join(PCMU.decode(p.payload) for p in self.received(since, **match))

    def wait_audio(self, frames: int, since: float, timeout: float, **match: int) -> bytes:
        """At least ``frames`` PCMU packets' audio received after ``since``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            audio = self.audio(since, **match)
            if len(audio) >= frames * FRAME * 2:
                return audio
            time.sleep(0.05)
        got = len(self.audio(since, **match)) // (FRAME * 2)
        raise AssertionError(f"{got} of {frames} audio packets within {timeout} s")


def send_tone(sock: socket.socket, sender: RtpSender, to: tuple[str, int], freq: float,
              ms: int) -> list[bytes]:
    """``ms`` of a PCMU tone paced at 20 ms; the datagrams sent."""
    audio = PCMU.encode(tone(freq, ms, level=0.4))
    sent: list[bytes] = []
    start = time.monotonic()
    for n, i in enumerate(range(0, len(audio), FRAME)):
        data = sender.audio(audio[i:i + FRAME]).build()
        sock.sendto(data, to)
        sent.append(data)
        time.sleep(max(0.0, start + (n + 1) * 0.02 - time.monotonic()))
    return sent


def send_digit(sock: socket.socket, sender: RtpSender, to: tuple[str, int], digit: str) -> None:
    """``digit`` as RFC 4733 events, paced at 20 ms."""
    for packet in dtmf_packets(sender, digit):
        sock.sendto(packet.build(), to)
        time.sleep(0.02)


def best_match(heard: bytes, expected: bytes) -> float:
    """The highest normalised correlation of ``expected`` against ``heard`` at any lag."""
    x = pcm_to_array(heard).astype(np.float64)
    y = pcm_to_array(expected).astype(np.float64)
    if len(x) < len(y):
        return 0.0
    y = y - y.mean()
    norm_y = float(np.sqrt(np.dot(y, y)))
    corr = np.correlate(x, y, mode="valid")
    ones = np.ones(len(y))
    energy = np.correlate(x * x, ones, mode="valid") - np.correlate(x, ones, mode="valid") ** 2 \
        / len(y)
    scores = corr / (np.sqrt(np.maximum(energy, 1e-9)) * norm_y)
    return float(scores.max())


# --- a caller from the trunk that leaves a voicemail ---------------------------------------


def leave_message_from_trunk(engine: EngineProcess, sip: socket.socket, rtp: socket.socket,
                             seconds: float, call_id: str, tag: str) -> None:
    """Call +15145550104 from the trunk (``sip`` bound to its ``inbound_port``, ``rtp``
    bound), hear most of the beep, speak ``seconds`` of 1 kHz paced at 20 ms, press
    '#' and answer the engine's BYE. Branches are ``z9hG4bK<tag>1`` and ``<tag>2``."""
    sip_port, rtp_port = sip.getsockname()[1], rtp.getsockname()[1]
    offer = (f"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
             f"m=audio {rtp_port} RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n"
             f"a=fmtp:101 0-16\r\n").encode()
    head = (f"INVITE sip:+15145550104@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{sip_port};branch=z9hG4bK{tag}1;rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:+15145550199@127.0.0.1>;tag={tag}\r\n"
            f"To: <sip:+15145550104@127.0.0.1>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
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
           f"Via: SIP/2.0/UDP 127.0.0.1:{sip_port};branch=z9hG4bK{tag}2;rport\r\n"
           f"Max-Forwards: 70\r\nFrom: {ok.get('from')}\r\nTo: {ok.get('to')}\r\n"
           f"Call-ID: {call_id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n")
    sip.sendto(ack.encode(), engine.sip)

    # Hear the beep (the default greeting) before speaking.
    rtp.settimeout(3)
    heard = b""
    while len(heard) < 320 * 15:  # 15 of the beep's 20 packets (400 ms)
        heard += PCMU.decode(rtp.recv(2048)[12:])
    assert goertzel(heard, 8000, 1000) > 0.05  # the 1 kHz beep reached us

    sender = RtpSender.create(0, 8000)
    send_tone(rtp, sender, media_addr, 1000, int(seconds * 1000))
    send_digit(rtp, sender, media_addr, "#")
    # '#' ends the message: the engine hangs up.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        msg = parse(sip.recv(65535))
        if not isinstance(msg, Response) and msg.method == "BYE":
            sip.sendto(ok_200(msg), engine.sip)
            return
    raise AssertionError("the engine did not hang up after '#'")


# --- a scripted UA -------------------------------------------------------------------------


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
        self.incoming: Request | None = None  # the last call we took (take_call)
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
               auth: str = "", extra: str = "") -> None:
        """An INVITE with our SDP offer; ``extra``: header lines ("Name: value\\r\\n")."""
        body = sdp_offer(self.rtp_port)
        head = (f"INVITE {uri} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{call_id}{cseq};rport\r\n"
                f"Max-Forwards: 70\r\nFrom: <sip:{from_user}@pbx.test>;tag={call_id}\r\n"
                f"To: <{uri}>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} INVITE\r\n"
                f"Contact: <sip:{from_user}@127.0.0.1:{self.port}>\r\n"
                + (f"Proxy-Authorization: {auth}\r\n" if auth else "") + extra
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

    def call_with_auth(self, uri: str, user: str, password: str, call_id: str,
                       extra: str = "", callee: Ua | None = None) -> Request | None:
        """INVITE, 407, ACK, INVITE with the MD5 answer, 200, ACK. ``callee``: the UA
        that answers the call (``take_call``) before our 200 can come; the INVITE it got."""
        self.invite(uri, user, call_id, extra=extra)
        challenge = self.final(1)
        assert challenge.status == 407, challenge.to_bytes()[:400]
        self.ack(challenge, uri, f"z9hG4bK{call_id}1")
        md5 = next(c for c in challenge.get_lines("proxy-authenticate") if "MD5" in c)
        self.invite(uri, user, call_id, 2,
                    build_authorization(md5, "INVITE", uri, user, password, "cn"), extra)
        leg = callee.take_call() if callee is not None else None
        self.answered(self.final(2), uri, f"z9hG4bK{call_id}ack")
        return leg

    def register(self, user: str, password: str, domain: str = "pbx.test",
                 timeout: float = 5, expires: int = 3600, cseq: int = 1) -> Response:
        """REGISTER ``user`` from this UA's SIP port with digest (MD5): the engine then
        sends ``user``'s calls here (``expires`` 0: no more). ``cseq``: of the first
        of the two REGISTERs (a later registration of the same UA needs a higher one).
        The 200."""
        def send(cseq: int, auth: str) -> Response:
            lines = [f"REGISTER sip:{domain} SIP/2.0",
                     f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bKreg{user}{cseq}"
                     f"{self.port};rport",
                     f"From: <sip:{user}@{domain}>;tag=reg{user}", f"To: <sip:{user}@{domain}>",
                     f"Call-ID: reg-{user}-{self.port}", f"CSeq: {cseq} REGISTER",
                     "Max-Forwards: 70", f"Contact: <sip:{user}@127.0.0.1:{self.port}>",
                     f"Expires: {expires}"]
            if auth:
                lines.append(f"Authorization: {auth}")
            self.sip.sendto("\r\n".join([*lines, "Content-Length: 0", "", ""]).encode(),
                            self.engine)
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                msg = self.recv(left)
                if isinstance(msg, Response) and msg.cseq.method == "REGISTER" \
                        and msg.cseq.number == cseq and msg.status >= 200:
                    return msg
            raise AssertionError(f"no answer to REGISTER {cseq}: {self.seen}")

        challenge = send(cseq, "")
        assert challenge.status == 401, challenge.to_bytes()[:400]
        md5 = next(c for c in challenge.get_lines("www-authenticate") if "MD5" in c)
        ok = send(cseq + 1, build_authorization(md5, "REGISTER", f"sip:{domain}", user,
                                                password, "cn"))
        assert ok.status == 200, ok.to_bytes()[:400]
        return ok

    def take_call(self, timeout: float = 8) -> Request:
        """Answer the next INVITE the engine sends here (200 with our SDP) and wait
        for its ACK; the INVITE, whose SDP names the engine's media address."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            msg = self.recv(left)
            if isinstance(msg, Request) and msg.method == "INVITE":
                break
        else:
            raise AssertionError(f"no INVITE within {timeout} s: {self.seen}")
        stream = parse_sdp(msg.body).audio()
        assert stream is not None and stream.address is not None, msg.body
        self.media = (stream.address, stream.port)
        self.incoming = msg
        ok = make_response(msg, 200, None, [
            ("Contact", f"<sip:callee@127.0.0.1:{self.port}>"),
            ("Content-Type", "application/sdp")], sdp_offer(self.rtp_port, 7), f"ua{self.port}")
        self.sip.sendto(ok.to_bytes(), self.engine)
        while (left := deadline - time.monotonic()) > 0:
            got = self.recv(left)
            if isinstance(got, Request) and got.method == "ACK":
                return msg
            if isinstance(got, Request) and got.method == "INVITE":  # our 200 was lost
                self.sip.sendto(ok.to_bytes(), self.engine)
        raise AssertionError(f"no ACK for our 200 within {timeout} s: {self.seen}")

    def in_dialog(self, method: str, cseq: int, branch: str, body: bytes = b"") -> None:
        """A request in the dialog of the call we placed (``self.ok``)."""
        ok = self.ok
        assert ok is not None
        head = (f"{method} {ok.contacts[0].uri} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch={branch};rport\r\n"
                f"Max-Forwards: 70\r\nFrom: {ok.get('from')}\r\nTo: {ok.get('to')}\r\n"
                f"Call-ID: {ok.call_id}\r\nCSeq: {cseq} {method}\r\n"
                f"Contact: <sip:caller@127.0.0.1:{self.port}>\r\n"
                + ("Content-Type: application/sdp\r\n" if body else "")
                + f"Content-Length: {len(body)}\r\n\r\n")
        self.sip.sendto(head.encode() + body, self.engine)

    def response_to(self, method: str, cseq: int, timeout: float = 5) -> Response:
        """The final response to our ``method`` of ``cseq``."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            msg = self.recv(left)
            if isinstance(msg, Response) and msg.cseq.method == method \
                    and msg.cseq.number == cseq and msg.status >= 200:
                return msg
        raise AssertionError(f"no final response to {method} {cseq}: {self.seen}")

    def hang_up(self, cseq: int = 9) -> None:
        """BYE the call we placed and wait for its 200."""
        assert self.ok is not None
        self.in_dialog("BYE", cseq, f"z9hG4bKbye{self.ok.call_id}{cseq}")
        assert self.response_to("BYE", cseq).status == 200

    def send_tone(self, freq: float, ms: int) -> None:
        assert self.media is not None
        send_tone(self.rtp, self.sender, self.media, freq, ms)

    def press(self, keys: str, gap: float = 0.1) -> None:
        assert self.media is not None
        for key in keys:
            send_digit(self.rtp, self.sender, self.media, key)
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
