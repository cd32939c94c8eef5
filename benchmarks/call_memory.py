"""Memory per established call: N calls up at once in one engine, measured.

    .venv/bin/python benchmarks/call_memory.py [--calls 10000]

Drives the sans-I/O engine (no sockets: the bytes a trunk and a phone would
send) through INVITE / 180 / 200 / ACK for ``--calls`` calls from the trunk to
extension 200, keeps them all up, and reports the Python heap growth
(tracemalloc) and the process RSS growth per call, then hangs them all up and
checks nothing is left. A script printing a table, no assertion on time.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tomllib
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.core import Engine
from engine.sip.message import Request, Response, parse
from provisioning.directory import parse_directory
from provisioning.model import Binding

DIRECTORY = """
[system]
domain = "bench.test"

[[trunks]]
name = "carrier"
host = "127.0.0.9"
port = 5090
inbound_from = ["127.0.0.9/32"]

[[departments]]
name = "Bench"
caller_id = "+15550001000"  # its own DID (a caller ID is one of the numbers)

[[numbers]]
number = "+15550001000"
route_to = "extension:200"

[[users]]
extension = "200"
name = "Desk"
password = "pw200"
department = "Bench"
[users.forwarding.available]
no_answer_seconds = 60
no_answer = { external = "voicemail", internal = "voicemail" }
busy = { external = "voicemail", internal = "voicemail" }
"""
TRUNK = ("127.0.0.9", 5090)
PHONE = ("127.0.0.1", 6200)
SDP = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.9\r\ns=-\r\nc=IN IP4 127.0.0.9\r\nt=0 0\r\n"
       b"m=audio 20000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n")


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def invite(i: int) -> bytes:
    return (f"INVITE sip:+15550001000@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.9:5090;branch=z9hG4bKm{i};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:+1555{i:07d}@127.0.0.9>;tag=t{i}\r\n"
            f"To: <sip:+15550001000@127.0.0.1>\r\nCall-ID: mem-{i}@127.0.0.9\r\n"
            f"CSeq: 1 INVITE\r\nContact: <sip:+1555{i:07d}@127.0.0.9:5090>\r\n"
            f"Content-Type: application/sdp\r\nContent-Length: {len(SDP)}\r\n\r\n").encode() + SDP


def answer(req: Request, status: int, tag: str) -> bytes:
    headers = [("Via", v) for v in req.get_all("via")]
    headers += [("From", req.get("from") or ""), ("To", f"{req.get('to')};tag={tag}"),
                ("Call-ID", req.call_id), ("CSeq", req.get("cseq") or ""),
                ("Contact", f"<sip:200@{PHONE[0]}:{PHONE[1]}>")]
    body = SDP if status == 200 else b""
    if body:
        headers.append(("Content-Type", "application/sdp"))
    return Response.build(status, "OK" if status == 200 else "Ringing", headers,
                          body).to_bytes()


def ack_for(ok: Response, i: int) -> bytes:
    return (f"ACK {ok.contacts[0].uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.9:5090;branch=z9hG4bKa{i};rport\r\nMax-Forwards: 70\r\n"
            f"From: {ok.get('from')}\r\nTo: {ok.get('to')}\r\nCall-ID: {ok.call_id}\r\n"
            f"CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n").encode()


def bye_for(ok: Response, i: int) -> bytes:
    return (f"BYE {ok.contacts[0].uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.9:5090;branch=z9hG4bKb{i};rport\r\nMax-Forwards: 70\r\n"
            f"From: {ok.get('from')}\r\nTo: {ok.get('to')}\r\nCall-ID: {ok.call_id}\r\n"
            f"CSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n").encode()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=10_000)
    ap.add_argument("--media", choices=("relay", "direct"), default="relay",
                    help="relay (serve's default): the engine's signalling side of media "
                         "anchoring (SDP rewritten per leg; the sockets are not opened here)")
    ap.add_argument("--no-tracemalloc", action="store_true",
                    help="RSS only: tracemalloc's own bookkeeping inflates RSS and slows set-up")
    args = ap.parse_args()
    import structlog
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40),  # warnings+
                        cache_logger_on_first_use=True)

    wall = [1_790_000_000.0]
    engine = Engine(parse_directory(tomllib.loads(DIRECTORY), "<bench>"), {"127.0.0.1"}, 5060,
                    wall_clock=lambda: wall[0], anchor_media=args.media == "relay")
    engine.registrar.load([Binding(aor="200", contact=f"sip:200@{PHONE[0]}:{PHONE[1]}",
                                   expires_at=wall[0] + 86400, call_id="r", cseq=1,
                                   source=f"udp:{PHONE[0]}:{PHONE[1]}")], wall[0])
    now = 1000.0
    gc.collect()
    rss0 = rss_kb()
    trace = not args.no_tracemalloc
    if trace:
        tracemalloc.start()
    heap0 = tracemalloc.get_traced_memory()[0] if trace else 0
    oks: list[Response] = []
    started = time.perf_counter()
    for i in range(args.calls):
        out = engine.datagram(invite(i), TRUNK, "udp", now)
        for action in out.media:  # the media service would open two endpoints here
            out = engine.media_ready(action.call, (20000 + 4 * (i % 2000), 20002), now)
        leg = next(p for s in out.sends if isinstance(p := parse(s.data), Request))
        engine.datagram(answer(leg, 180, f"c{i}"), PHONE, "udp", now)
        out = engine.datagram(answer(leg, 200, f"c{i}"), PHONE, "udp", now)
        ok = next(p for s in out.sends if isinstance(p := parse(s.data), Response)
                  and p.status == 200)
        engine.datagram(ack_for(ok, i), TRUNK, "udp", now)
        engine.calls.take_records()  # the shell hands the dialog records to the store
        oks.append(ok)
    setup = time.perf_counter() - started
    # Let the transactions of call set-up finish (Timer M/L: 64*T1) so only calls remain.
    now += 40.0
    engine.timer(now)
    gc.collect()
    heap = tracemalloc.get_traced_memory()[0] - heap0 if trace else 0
    rss = rss_kb() - rss0
    up = engine.calls.active_count
    held = sum(len(o.to_bytes()) for o in oks)  # the benchmark's own copies of the 200s
    if trace:
        tracemalloc.stop()
    for i, ok in enumerate(oks):
        engine.datagram(bye_for(ok, i), TRUNK, "udp", now)
    now += 40.0
    engine.timer(now)
    left = engine.calls.active_count
    print(f"{'calls up':<34} {up:>10,}")
    print(f"{'set-up (INVITE..ACK), s':<34} {setup:>10.2f}  ({args.calls / setup:,.0f} calls/s "
          "in-process, one core)")
    if trace:
        print(f"{'Python heap per call (tracemalloc)':<34} "
              f"{(heap - held) / max(up, 1) / 1024:>10.1f} KiB")
    print(f"{'RSS per call':<34} {rss / max(up, 1):>10.1f} KiB")
    print(f"{'calls left after BYE':<34} {left:>10,}")


if __name__ == "__main__":
    main()
