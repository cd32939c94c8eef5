"""INVITE parses per second with the headers routing reads: ours vs sipmessage, same run.

    .venv/bin/python benchmarks/parser.py [--seconds 1.0]

Each call parses the message and reads what routing reads: method, Request-URI
user, top Via branch, From tag and user, To user, Call-ID, CSeq number and
Max-Forwards; both parsers must read the same values. The sample messages live
in tests/samples.py. Prints a table and the ratio (ours / sipmessage, in calls
per second, measured in the same run). Not a test: no assertion on time.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.sip.message import parse
from tests.samples import PHONE_INVITE, PHONE_REGISTER, TRUNK_INVITE

MESSAGES = {
    "trunk INVITE": TRUNK_INVITE,
    "phone INVITE (proxy auth)": PHONE_INVITE,
    "phone REGISTER": PHONE_REGISTER,
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


ROUNDS = 10


def _round(fn: Callable[[bytes], object], data: bytes, seconds: float) -> float:
    """Calls per second over one timed round of about ``seconds``."""
    n = 0
    start = time.perf_counter()
    end = start + seconds
    while True:
        for _ in range(200):
            fn(data)
        n += 200
        now = time.perf_counter()
        if now >= end:
            return n / (now - start)


def rates(fns: list[Callable[[bytes], object]], data: bytes, seconds: float) -> list[float]:
    """Calls per second of each of ``fns``: the best of ROUNDS timed rounds (least
    disturbed by other load), the rounds of the parsers interleaved so that a
    slow spell of the machine hits them alike."""
    best = [0.0] * len(fns)
    for _ in range(ROUNDS):
        for i, fn in enumerate(fns):
            best[i] = max(best[i], _round(fn, data, seconds / ROUNDS))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=2.0, help="per parser and message")
    args = ap.parse_args()
    theirs = sipmessage_reader()
    print(f"{'message':<28} {'switchboard/s':>14} {'us':>7} {'sipmessage/s':>13} {'us':>7} "
          f"{'ratio':>6}")
    for name, data in MESSAGES.items():
        a, b = ours(data), theirs(data)
        assert a == b, (a, b)  # both read the same values
        r_ours, r_theirs = rates([ours, theirs], data, args.seconds)
        print(f"{name:<28} {r_ours:>14,.0f} {1e6 / r_ours:>7.2f} {r_theirs:>13,.0f} "
              f"{1e6 / r_theirs:>7.2f} {r_ours / r_theirs:>5.1f}x")


if __name__ == "__main__":
    main()
