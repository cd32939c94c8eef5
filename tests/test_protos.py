"""The PROTOS c07-sip suite (4,527 malformed INVITEs and their teardowns) against one engine.

Each case file holds an INVITE then its teardown, each written as a decimal
byte count, one space, then that many bytes, with placeholders (``<To>``,
``<Call-ID>``, ...) filled in here. All cases go to ONE running engine, over
UDP from one socket, except the cases whose INVITE does not fit in a datagram
(65,507 bytes): those go over TCP, a new connection each. The run happens once
per module (``protos_run``); the tests below each check one property of it:
the engine survives and still answers OPTIONS, no malformed INVITE is answered
2xx or with an unexplained 5xx, parse errors are counted and nothing crashed
inside, and no stateless reply is much larger than the datagram it answers.
"""

from __future__ import annotations

import collections
import json
import re
import socket
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE, SHARED, EngineProcess, udp_exchange

# Run alone (make test's serial pass): the whole corpus floods one engine, which sheds
# with 503s when another worker's load makes it late.
pytestmark = pytest.mark.serial

ARCHIVE = SHARED / "conformance" / "protos-c07-sip.tar.xz"
N_CASES = 4527
N_OVERSIZED_MESSAGES = 116  # INVITEs and teardowns larger than one datagram
UDP_MAX = 65_507
BATCH = 25  # INVITEs sent before draining the replies
IDLE = 0.08  # a drain stops once nothing arrived for this long...
BATCH_LIMIT = 1.5  # ...or after this long in all
TCP_TIMEOUT = 1.5
RUN_LIMIT = 100.0  # the whole run, wall clock
REPLY_GROWTH = 1024  # bytes a reply may add to the request it answers (Server, Warning, tags)
MAX_RSS_KB = 512 * 1024

TOKEN = re.compile(rb"c07x(\d{4})")
STATUS_LINE = re.compile(rb"^SIP/2\.0 (\d{3}) ")
CSEQ_LINE = re.compile(rb"^CSeq[ \t]*:[ \t]*\d+[ \t]+([^\r\n]*)", re.I | re.M)
LENGTH_LINE = re.compile(rb"^(?:Content-Length|l)[ \t]*:[ \t]*(\d+)", re.I | re.M)
PDU = re.compile(rb"(\d+) ")

# RFC 3261 names a 5xx for three defects; any other 5xx is an engine fault.
#   501 (s8.2.1): a method the server does not know
#   505 (s8.2.1, s21.5.7): a SIP-Version other than SIP/2.0
#   513 (s21.5.8): a message larger than the server will process
KNOWN_METHODS = {b"INVITE", b"ACK", b"CANCEL", b"BYE", b"OPTIONS", b"REGISTER", b"PRACK",
                 b"SUBSCRIBE", b"NOTIFY", b"PUBLISH", b"INFO", b"REFER", b"MESSAGE", b"UPDATE"}
CRASH_EVENTS = {"request handling failed", "message handling failed", "timer handling failed",
                "store write failed"}


@dataclass
class Reply:
    status: int
    size: int


@dataclass
class Case:
    number: int
    invite: bytes
    teardown: bytes  # still holding <Teardown-Method>
    tcp: bool = False
    replies: list[Reply] = field(default_factory=list)  # to the INVITE, in arrival order
    teardown_replies: list[Reply] = field(default_factory=list)
    teardown_sent: bool = False
    sent_teardown: bytes = b""

    @property
    def final(self) -> int | None:
        return next((r.status for r in self.replies if r.status >= 200), None)


@dataclass
class Run:
    cases: list[Case]
    stray: list[bytes]
    seconds: float
    options_after: list[bytes]
    alive_after: bool
    metrics: dict[str, float]
    rss_kb: int
    log: str
    tcp_messages: int
    udp_port: int


# -- the corpus ----------------------------------------------------------------------------
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
    """Fill the placeholders; ``<Teardown-Method>`` is left for later.

    The case number goes into Call-ID and branch (``c07xNNNN``) so that each
    reply can be filed under its case; Via names our one UDP socket.
    """
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
    case.teardown_sent = True
    case.sent_teardown = case.teardown.replace(b"<Teardown-Method>", method)
    return case.sent_teardown


# -- replies ---------------------------------------------------------------------------
def status_of(data: bytes) -> int | None:
    m = STATUS_LINE.match(data)
    return int(m.group(1)) if m else None


def record(cases: dict[int, Case], data: bytes, stray: list[bytes]) -> None:
    """File one response under its case (found by the token in Call-ID/Via)."""
    status = status_of(data)
    m = TOKEN.search(data)
    if status is None or m is None or int(m.group(1)) not in cases:
        stray.append(data[:300])
        return
    case = cases[int(m.group(1))]
    cseq = CSEQ_LINE.search(data)
    method = cseq.group(1).strip() if cseq else b""
    reply = Reply(status, len(data))
    if case.teardown_sent and method in (b"CANCEL", b"ACK"):
        case.teardown_replies.append(reply)
    else:
        case.replies.append(reply)


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
            m = LENGTH_LINE.search(buf[:end])
            size = end + 4 + (int(m.group(1)) if m else 0)
            if len(buf) < size:
                break
            record(cases, buf[:size], stray)
            buf = buf[size:]
    return buf


def run_tcp_case(engine: EngineProcess, case: Case, cases: dict[int, Case],
                 stray: list[bytes]) -> int:
    """One oversized case on its own connection; returns how many messages were sent."""
    sent = 0
    with socket.create_connection(engine.sip, timeout=TCP_TIMEOUT) as s:
        try:
            s.sendall(case.invite)
            sent += 1
        except OSError:
            return sent  # the engine may close a stream it cannot frame
        buf = read_stream(s, lambda: case.final is not None, cases, stray)
        if buf is None:
            return sent
        teardown = teardown_for(case)
        try:
            s.sendall(teardown)
            sent += 1
        except OSError:
            return sent
        if teardown.startswith(b"CANCEL"):  # an ACK gets no answer: do not wait for one
            read_stream(s, lambda: bool(case.teardown_replies), cases, stray, buf)
    return sent


def options(call_id: str) -> bytes:
    return (f"OPTIONS sip:pbx.example.test SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK{call_id};rport\r\n"
            f"From: <sip:probe@example.test>;tag=p1\r\nTo: <sip:pbx.example.test>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
            f"Content-Length: 0\r\n\r\n").encode()


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# -- the run ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def protos_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """Start one engine, send it the whole suite, probe it; yield what was seen."""
    work = tmp_path_factory.mktemp("protos")
    # The corpus checks answers, not speed: a generous queueing budget keeps the overload
    # control's delay shedding (tested in test_overload.py and test_e2e_overload.py) out
    # of it. With the default 200 ms, a batch of 25 INVITEs that each start voicemail
    # could wait longer than that on a slow 2-core machine and be answered 503.
    engine = EngineProcess(work, EXAMPLE, ["--max-queue-ms", "5000"]).start()
    assert engine.proc is not None
    try:
        started = time.monotonic()
        stray: list[bytes] = []
        tcp_messages = 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
            sock.bind(("127.0.0.1", 0))
            udp_port = int(sock.getsockname()[1])
            all_cases = load_cases(work / "corpus", udp_port)
            cases = {c.number: c for c in all_cases}
            udp_cases = [c for c in all_cases if not c.tcp]
            for i in range(0, len(udp_cases), BATCH):
                assert time.monotonic() - started < RUN_LIMIT, f"run too slow, at UDP case {i}"
                batch = udp_cases[i:i + BATCH]
                for c in batch:
                    sock.sendto(c.invite, engine.sip)
                drain(sock, cases, stray, batch)
                for c in batch:
                    sock.sendto(teardown_for(c), engine.sip)
            for c in all_cases:
                if c.tcp:
                    assert time.monotonic() - started < RUN_LIMIT, f"too slow, at {c.number}"
                    tcp_messages += run_tcp_case(engine, c, cases, stray)
            drain(sock, cases, stray, [])  # late teardown answers
        seconds = time.monotonic() - started
        alive = engine.alive()
        after = udp_exchange(engine.sip, options("c07-after"), timeout=3.0) if alive else []
        metrics = engine.metrics() if alive else {}
        rss = rss_kb(engine.proc.pid) if alive else 0
        summary = collections.Counter(r.status for c in all_cases for r in c.replies)
        print(f"\nPROTOS c07-sip: {len(all_cases)} cases in {seconds:.1f} s; INVITE replies "
              f"{dict(sorted(summary.items()))}; unanswered "
              f"{sum(c.final is None for c in all_cases)}; strays {len(stray)}; "
              f"engine RSS {rss // 1024} MiB")
        yield Run(all_cases, stray, seconds, after, alive, metrics, rss, engine.log(),
                  tcp_messages, udp_port)
    finally:
        code = engine.stop()
    assert code == 0, f"engine did not shut down cleanly ({code}):\n{engine.log()[-5000:]}"


# -- what it must show ------------------------------------------------------------------------
def test_corpus_is_complete(protos_run: Run) -> None:
    cases = protos_run.cases
    assert [c.number for c in cases] == list(range(N_CASES))
    oversized = sum(len(c.invite) > UDP_MAX for c in cases) + sum(
        len(c.sent_teardown) > UDP_MAX for c in cases)
    assert oversized == N_OVERSIZED_MESSAGES
    assert all(c.tcp for c in cases if len(c.sent_teardown) > UDP_MAX)  # none went over UDP
    assert all(c.teardown_sent for c in cases)  # every INVITE was followed by its teardown
    assert protos_run.tcp_messages >= sum(c.tcp for c in cases)
    assert protos_run.seconds < RUN_LIMIT


def test_engine_survives_and_answers_options_after(protos_run: Run) -> None:
    assert protos_run.alive_after, f"the engine died during the run:\n{protos_run.log[-5000:]}"
    after = protos_run.options_after
    assert len(after) == 1 and status_of(after[0]) == 200, after
    assert protos_run.rss_kb < MAX_RSS_KB, f"engine RSS {protos_run.rss_kb} kB after the run"


def allowed(case: Case, status: int) -> bool:
    """A 1xx, a 4xx, or the one 5xx RFC 3261 names for this case's defect."""
    if 100 <= status < 200 or 400 <= status < 500:
        return True
    parts = case.invite.split(b"\r\n", 1)[0].split(b" ")
    if status == 501:
        return parts[0] not in KNOWN_METHODS
    if status == 505:
        return len(parts) == 3 and parts[2] != b"SIP/2.0"
    if status == 513:
        return len(case.invite) > UDP_MAX or case.invite.count(b"\r\n") > 256
    return False


def test_no_invite_answered_2xx_or_unexplained_5xx(protos_run: Run) -> None:
    cases = protos_run.cases
    bad = {c.number: [r.status for r in c.replies] for c in cases
           if any(not allowed(c, r.status) for r in c.replies)}
    assert not bad, f"{len(bad)} cases answered outside 1xx/4xx (case: statuses): {bad}"
    # the one valid case (0) reaches the engine's call handling: a phone must authenticate
    assert cases[0].final == 407, cases[0].replies
    # An ACK is never answered. A CANCEL that matches the INVITE's transaction is answered
    # 200 even when the INVITE was answered already (RFC 3261 s9.2): the drain may have
    # given up on a slow final answer and sent CANCEL instead of ACK.
    bad_teardown = {c.number: [r.status for r in c.teardown_replies] for c in cases
                    if any(r.status >= 500 or (200 <= r.status < 300 and not (
                        c.sent_teardown.startswith(b"CANCEL") and r.status == 200))
                        for r in c.teardown_replies)}
    assert not bad_teardown, f"teardowns answered 5xx or a 2xx to an ACK: {bad_teardown}"
    stray = [s for s in protos_run.stray
             if (st := status_of(s)) is None or not (100 <= st < 200 or 400 <= st < 500)]
    assert not stray, f"unattributed replies outside 1xx/4xx: {stray[:5]}"


def test_parse_errors_counted(protos_run: Run) -> None:
    """Every 400 comes from the engine's parser/validator, which counts it."""
    metrics = protos_run.metrics
    for transport, tcp in (("udp", False), ("tcp", True)):
        rejected = sum(1 for c in protos_run.cases if c.tcp == tcp
                       for r in (*c.replies, *c.teardown_replies) if r.status == 400)
        key = f'switchboard_sip_parse_errors_total{{transport="{transport}"}}'
        assert metrics.get(key, 0.0) >= rejected, (transport, metrics.get(key), rejected)
    assert metrics['switchboard_sip_parse_errors_total{transport="udp"}'] >= 1000


def crash_entries(log: str) -> list[str]:
    bad: list[str] = []
    for line in log.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            if "Traceback" in line:
                bad.append(line[:2000])
            continue
        if not isinstance(entry, dict):
            continue
        if ("Traceback" in line or "exception" in entry or entry.get("event") in CRASH_EVENTS
                or entry.get("level") in ("error", "critical")):
            bad.append(line[:2000])
    return bad


def test_no_crash_in_engine_log(protos_run: Run) -> None:
    crashes = crash_entries(protos_run.log)
    assert not crashes, f"{len(crashes)} crash entries in the engine log:\n" + "\n".join(
        crashes[:10])
    assert protos_run.metrics["switchboard_internal_errors_total"] == 0.0


def test_stateless_replies_are_not_amplified(protos_run: Run) -> None:
    """A reply over UDP may add its own few headers, not multiply the request.

    The source address of a datagram is not authenticated: a reply many times
    the size of the request reflects and amplifies traffic onto a spoofed
    victim, and one past 65,507 bytes cannot be sent at all (the engine then
    logs a 400 it never delivered).
    """
    grown = {c.number: (len(c.invite), [r.size for r in c.replies])
             for c in protos_run.cases if not c.tcp
             if any(r.size > len(c.invite) + REPLY_GROWTH for r in c.replies)}
    # a reply too large for a datagram never arrives: compare what the engine logged as
    # sent to our UDP socket (stateless answers) with what arrived there
    source = f"127.0.0.1:{protos_run.udp_port}"
    logged: collections.Counter[int] = collections.Counter()
    for line in protos_run.log.splitlines():
        if '"malformed request"' in line and source in line:
            entry = json.loads(line)
            if entry.get("source") == source:
                logged[int(entry["status"])] += 1
    arrived = collections.Counter(r.status for c in protos_run.cases if not c.tcp
                                  for r in (*c.replies, *c.teardown_replies))
    silent = {status: n - arrived[status] for status, n in logged.items() if n > arrived[status]}
    assert not grown and not silent, (
        f"{len(grown)} UDP replies larger than request + {REPLY_GROWTH} bytes "
        f"(case: (request size, reply sizes)): {dict(list(grown.items())[:20])}; "
        f"stateless replies logged as sent but never received (status: count): {silent}")
