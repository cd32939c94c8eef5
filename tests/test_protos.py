"""The PROTOS c07-sip suite (4,527 malformed INVITEs and their teardowns) against one engine.

Each case file holds an INVITE then its teardown, each written as a decimal
byte count, one space, then that many bytes, with placeholders (``<To>``,
``<Call-ID>``, ...) filled in here. Every case goes to ONE running engine:
over UDP from one socket, except the cases whose INVITE does not fit in a
datagram (65,507 bytes), which go over TCP (a new connection each). The
engine must survive them all, answer no malformed INVITE with a 2xx or an
unexplained 5xx, log no crash, and still answer a plain OPTIONS afterwards.
"""

from __future__ import annotations

import collections
import json
import re
import socket
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import SHARED, EngineProcess, udp_exchange

ARCHIVE = SHARED / "conformance" / "protos-c07-sip.tar.xz"
N_CASES = 4527
N_OVERSIZED_MESSAGES = 116  # INVITEs and teardowns larger than one datagram
UDP_MAX = 65_507
BATCH = 25
IDLE = 0.08  # drain: stop once nothing arrived for this long...
BATCH_LIMIT = 1.5  # ...or after this long in all
TCP_TIMEOUT = 1.5
RUN_LIMIT = 110.0  # the whole run, wall clock

TOKEN = re.compile(rb"c07x(\d{4})")
STATUS_LINE = re.compile(rb"^SIP/2\.0 (\d{3}) ")
CSEQ_LINE = re.compile(rb"^CSeq[ \t]*:[ \t]*\d+[ \t]+([^\r\n]*)", re.I | re.M)
PDU = re.compile(rb"(\d+) ")

# RFC 3261 names a 5xx for three defects; anything else in 5xx is an engine fault.
#   501 (s8.2.1): a method the server does not know
#   505 (s8.2.1 / s21.5.7): a SIP-Version other than SIP/2.0
#   513 (s21.5.8): a message larger than the server will process
KNOWN_METHODS = {b"INVITE", b"ACK", b"CANCEL", b"BYE", b"OPTIONS", b"REGISTER", b"PRACK",
                 b"SUBSCRIBE", b"NOTIFY", b"PUBLISH", b"INFO", b"REFER", b"MESSAGE", b"UPDATE"}
CRASH_EVENTS = {"request handling failed", "message handling failed", "timer handling failed",
                "store write failed"}


@dataclass
class Case:
    number: int
    invite: bytes
    teardown: bytes  # still holding <Teardown-Method>
    tcp: bool = False
    replies: list[int] = field(default_factory=list)  # to the INVITE, in arrival order
    teardown_replies: list[int] = field(default_factory=list)
    teardown_sent: bool = False

    @property
    def final(self) -> int | None:
        return next((s for s in self.replies if s >= 200), None)


def split_pdus(raw: bytes) -> list[bytes]:
    """'<count> <bytes><count> <bytes>...' -> the messages."""
    out: list[bytes] = []
    pos = 0
    while pos < len(raw) and len(out) < 8:
        m = PDU.match(raw, pos)
        assert m, f"bad framing at byte {pos}: {raw[pos:pos + 30]!r}"
        start = m.end()
        size = int(m.group(1))
        assert start + size <= len(raw), "a message runs past the end of its file"
        out.append(raw[start:start + size])
        pos = start + size
    return out


def fill(pdu: bytes, number: int, port: int) -> bytes:
    """Fill the placeholders; ``<Teardown-Method>`` is left for later."""
    token = f"c07x{number:04d}".encode()
    values = {
        b"<To>": b"101@pbx.example.test",
        b"<From>": b"c07@127.0.0.1",
        b"<From-Address>": b"127.0.0.1",
        b"<From-IP>": b"127.0.0.1",
        b"<Local-Port>": str(port).encode(),
        b"<Call-ID>": token,
        b"<Branch-ID>": token,
        b"<CSeq>": b"1",
    }
    for key, value in values.items():
        pdu = pdu.replace(key, value)
    head_end = pdu.find(b"\r\n\r\n")
    body = len(pdu) - head_end - 4 if head_end >= 0 else 0
    return pdu.replace(b"<Content-Length>", str(body).encode())


def load_cases(dest: Path, port: int) -> list[Case]:
    with tarfile.open(ARCHIVE, "r:xz") as tar:
        tar.extractall(dest, filter="data")
    files = sorted(p for p in dest.rglob("*") if p.is_file() and p.name.isdigit())
    cases: list[Case] = []
    for path in files:
        pdus = split_pdus(path.read_bytes())
        assert len(pdus) == 2, (path.name, len(pdus))
        invite, teardown = (fill(p, int(path.name), port) for p in pdus)
        cases.append(Case(int(path.name), invite, teardown, tcp=len(invite) > UDP_MAX))
    return cases


def teardown_for(case: Case) -> bytes:
    """ACK a final answer (it stops the retransmissions), else CANCEL the INVITE."""
    method = b"ACK" if case.final is not None else b"CANCEL"
    return case.teardown.replace(b"<Teardown-Method>", method)


def status_of(data: bytes) -> int | None:
    m = STATUS_LINE.match(data)
    return int(m.group(1)) if m else None


def record(cases: dict[int, Case], data: bytes, stray: list[bytes]) -> None:
    """File one response under its case (found by the token in Call-ID/Via)."""
    status = status_of(data)
    m = TOKEN.search(data)
    if status is None or m is None or int(m.group(1)) not in cases:
        stray.append(data[:200])
        return
    case = cases[int(m.group(1))]
    cseq = CSEQ_LINE.search(data)
    method = cseq.group(1).strip() if cseq else b""
    if case.teardown_sent and method in (b"CANCEL", b"ACK"):
        case.teardown_replies.append(status)
    else:
        case.replies.append(status)


def drain(sock: socket.socket, cases: dict[int, Case], stray: list[bytes],
          waiting: list[Case]) -> None:
    """Read replies until every case in ``waiting`` has a final one, or idle/limit."""
    limit = time.monotonic() + BATCH_LIMIT
    sock.settimeout(IDLE)
    while time.monotonic() < limit:
        if waiting and all(c.final is not None for c in waiting):
            sock.settimeout(0.0)  # take what is already queued, then go
            try:
                while True:
                    record(cases, sock.recv(65535), stray)
            except (BlockingIOError, TimeoutError):
                return
        try:
            record(cases, sock.recv(65535), stray)
        except TimeoutError:
            return


def run_tcp_case(engine: EngineProcess, case: Case, cases: dict[int, Case],
                 stray: list[bytes]) -> None:
    """One oversized case on its own connection: INVITE, replies, teardown, replies."""
    with socket.create_connection(engine.sip, timeout=TCP_TIMEOUT) as s:
        try:
            s.sendall(case.invite)
        except OSError:
            return  # the engine may close a stream it cannot frame
        buf = read_stream(s, until=lambda: case.final is not None, cases=cases, stray=stray)
        if buf is None:
            return
        case.teardown_sent = True
        teardown = teardown_for(case)
        try:
            s.sendall(teardown)
        except OSError:
            return
        if teardown.startswith(b"CANCEL"):  # an ACK gets no answer: do not wait for one
            read_stream(s, until=lambda: bool(case.teardown_replies), cases=cases,
                        stray=stray, buf=buf)


def read_stream(s: socket.socket, until: Callable[[], bool], cases: dict[int, Case],
                stray: list[bytes], buf: bytes = b"") -> bytes | None:
    """Read framed responses off ``s`` until ``until()`` or a timeout; None once closed."""
    deadline = time.monotonic() + TCP_TIMEOUT
    while time.monotonic() < deadline and not until():
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            return buf
        except OSError:
            return None
        if not chunk:
            return None
        buf += chunk
        while (end := buf.find(b"\r\n\r\n")) >= 0:
            m = re.search(rb"^(?:Content-Length|l)[ \t]*:[ \t]*(\d+)", buf[:end], re.I | re.M)
            size = end + 4 + (int(m.group(1)) if m else 0)
            if len(buf) < size:
                break
            record(cases, buf[:size], stray)
            buf = buf[size:]
    return buf


def options(call_id: str) -> bytes:
    return (f"OPTIONS sip:pbx.example.test SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK{call_id};rport\r\n"
            f"From: <sip:probe@example.test>;tag=p1\r\nTo: <sip:pbx.example.test>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
            f"Content-Length: 0\r\n\r\n").encode()


def allowed(case: Case, status: int) -> bool:
    """A 1xx, a 4xx, or the one 5xx RFC 3261 names for this case's defect."""
    if 100 <= status < 200 or 400 <= status < 500:
        return True
    line = case.invite.split(b"\r\n", 1)[0]
    parts = line.split(b" ")
    if status == 501:
        return bool(parts) and parts[0] not in KNOWN_METHODS
    if status == 505:
        return len(parts) == 3 and parts[2] != b"SIP/2.0"
    if status == 513:
        return len(case.invite) > UDP_MAX or case.invite.count(b"\r\n") > 256
    return False


def crash_entries(log: str) -> list[str]:
    bad: list[str] = []
    for line in log.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            if "Traceback" in line:
                bad.append(line)
            continue
        if not isinstance(entry, dict):
            continue
        if ("Traceback" in line or "exception" in entry or entry.get("event") in CRASH_EVENTS
                or entry.get("level") in ("error", "critical")):
            bad.append(line[:2000])
    return bad


def test_protos_c07_sip_suite(engine: EngineProcess, tmp_path: Path) -> None:
    started = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
        all_cases = load_cases(tmp_path / "protos", port)
        assert len(all_cases) == N_CASES
        assert [c.number for c in all_cases] == list(range(N_CASES))
        oversized = sum(len(c.invite) > UDP_MAX for c in all_cases) + sum(
            len(c.teardown) > UDP_MAX for c in all_cases)
        assert oversized == N_OVERSIZED_MESSAGES
        assert all(c.tcp for c in all_cases if len(c.teardown) > UDP_MAX)
        cases = {c.number: c for c in all_cases}
        stray: list[bytes] = []

        udp_cases = [c for c in all_cases if not c.tcp]
        for i in range(0, len(udp_cases), BATCH):
            assert time.monotonic() - started < RUN_LIMIT, f"run too slow, at case {i}"
            batch = udp_cases[i:i + BATCH]
            for c in batch:
                sock.sendto(c.invite, engine.sip)
            drain(sock, cases, stray, batch)
            for c in batch:
                c.teardown_sent = True
                sock.sendto(teardown_for(c), engine.sip)
        for c in all_cases:
            if c.tcp:
                assert time.monotonic() - started < RUN_LIMIT, f"run too slow, at case {c.number}"
                run_tcp_case(engine, c, cases, stray)
        drain(sock, cases, stray, [])
    elapsed = time.monotonic() - started

    assert engine.alive(), f"the engine died during the run:\n{engine.log()[-5000:]}"
    after = udp_exchange(engine.sip, options("c07-after"), timeout=3.0)
    assert after and status_of(after[0]) == 200, after

    summary = collections.Counter(s for c in all_cases for s in c.replies)
    bad = {c.number: c.replies for c in all_cases
           if any(not allowed(c, s) for s in c.replies)}
    bad_teardown = {c.number: c.teardown_replies for c in all_cases
                    if any(200 <= s < 300 or s >= 500 for s in c.teardown_replies)}
    print(f"\nPROTOS c07-sip: {len(all_cases)} cases in {elapsed:.1f} s; INVITE replies "
          f"{dict(sorted(summary.items()))}; unanswered "
          f"{sum(c.final is None for c in all_cases)}; strays {len(stray)}")
    assert not bad, f"{len(bad)} cases answered outside 1xx/4xx (case: statuses): {bad}"
    assert not bad_teardown, f"teardowns answered 2xx/5xx: {bad_teardown}"

    # every 400 the engine sent comes from its parser/validator, which counts it
    metrics = engine.metrics()
    for transport, tcp in (("udp", False), ("tcp", True)):
        rejected = sum(1 for c in all_cases if c.tcp == tcp
                       for s in (*c.replies, *c.teardown_replies) if s == 400)
        counted = metrics.get(f'switchboard_sip_parse_errors_total{{transport="{transport}"}}', 0)
        assert counted >= rejected, (transport, counted, rejected)
    assert metrics['switchboard_sip_parse_errors_total{transport="udp"}'] >= 1000

    crashes = crash_entries(engine.log())
    assert not crashes, f"{len(crashes)} crash entries in the engine log:\n" + "\n".join(
        crashes[:10])
