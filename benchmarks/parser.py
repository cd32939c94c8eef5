"""INVITE parses per second with the headers routing reads: ours vs sipmessage, same run.

    .venv/bin/python benchmarks/parser.py [--seconds 1.0]

Prints a table and the ratio. Not a test: no assertion on time.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.message import parse

SDP = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n"
       b"m=audio 20000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n")
MESSAGES = {
    "trunk INVITE": (
        b"INVITE sip:+18195550100@pbx.example.test SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bK776asdhds;rport\r\n"
        b"Max-Forwards: 70\r\n"
        b"To: <sip:+18195550100@pbx.example.test>\r\n"
        b'From: "Carrier" <sip:+15145550199@127.0.0.2>;tag=1928301774\r\n'
        b"Call-ID: a84b4c76e66710@pc33.example.test\r\n"
        b"CSeq: 314159 INVITE\r\n"
        b"Contact: <sip:+15145550199@127.0.0.2:5060>\r\n"
        b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n"
        b"User-Agent: carrier-sbc/1.0\r\n"
        b"Content-Type: application/sdp\r\n"
        b"Content-Length: " + str(len(SDP)).encode() + b"\r\n\r\n" + SDP),
    "phone INVITE (proxy auth)": (
        b"INVITE sip:102@pbx.example.test SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 192.168.1.20:5062;rport;branch=z9hG4bK1482871427\r\n"
        b"Route: <sip:pbx.example.test;lr>\r\n"
        b'From: "Alice Martin" <sip:101@pbx.example.test>;tag=1590186367\r\n'
        b"To: <sip:102@pbx.example.test>\r\n"
        b"Call-ID: 1337426432@192.168.1.20\r\n"
        b"CSeq: 2 INVITE\r\n"
        b"Contact: <sip:101@192.168.1.20:5062;transport=udp>\r\n"
        b'Proxy-Authorization: Digest username="101", realm="pbx.example.test", '
        b'nonce="abc", uri="sip:102@pbx.example.test", response="0123456789abcdef", '
        b'algorithm=MD5, cnonce="x", qop=auth, nc=00000001\r\n'
        b"Max-Forwards: 70\r\n"
        b"User-Agent: Yealink SIP-T46S 66.86.0.15\r\n"
        b"Supported: replaces, timer\r\n"
        b"Allow: INVITE, ACK, OPTIONS, CANCEL, BYE, REFER, NOTIFY, INFO, UPDATE\r\n"
        b"Content-Type: application/sdp\r\n"
        b"Content-Length: " + str(len(SDP)).encode() + b"\r\n\r\n" + SDP),
}


def ours(data: bytes) -> tuple[object, ...]:
    m = parse(data)
    return (m.method, m.uri.user, m.top_via.branch, m.from_.tag, m.from_.uri.user,  # type: ignore[union-attr]
            m.to.uri.user, m.call_id, m.cseq.number, m.max_forwards)


def sipmessage_reader() -> Callable[[bytes], tuple[object, ...]]:
    from sipmessage import Message

    def theirs(data: bytes) -> tuple[object, ...]:
        m = Message.parse(data)
        return (m.method, m.uri.user, m.via[0].parameters.get("branch"),
                m.from_address.parameters.get("tag"), m.from_address.uri.user,
                m.to_address.uri.user, m.call_id, m.cseq.sequence, m.max_forwards)
    return theirs


def rate(fn: Callable[[bytes], object], data: bytes, seconds: float) -> float:
    """Calls per second: the best of 5 timed rounds (least disturbed by other load)."""
    best = 0.0
    for _ in range(5):
        n = 0
        start = time.perf_counter()
        end = start + seconds / 5
        while True:
            for _ in range(200):
                fn(data)
            n += 200
            now = time.perf_counter()
            if now >= end:
                break
        best = max(best, n / (now - start))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    theirs = sipmessage_reader()
    print(f"{'message':<28} {'switchboard/s':>14} {'us':>7} {'sipmessage/s':>13} {'us':>7} "
          f"{'ratio':>6}")
    for name, data in MESSAGES.items():
        a, b = ours(data), theirs(data)
        assert a == b, (a, b)  # both read the same values
        r_ours = rate(ours, data, args.seconds)
        r_theirs = rate(theirs, data, args.seconds)
        print(f"{name:<28} {r_ours:>14,.0f} {1e6 / r_ours:>7.2f} {r_theirs:>13,.0f} "
              f"{1e6 / r_theirs:>7.2f} {r_ours / r_theirs:>5.1f}x")


if __name__ == "__main__":
    main()
