#!/usr/bin/env python3
"""Busy lamps across two nodes on PostgreSQL: how long from an event at node B to
the NOTIFY at node A, and how many store writes a call costs with and without a
watcher.

The pair of tests/test_e2e_cluster_blf.py (two `switchboard serve` nodes, one fresh
PostgreSQL schema, SIP sent straight to each node): a subscriber at node A watches
102 (dialog package, digest); 101 calls 102 through node B, where 102 registered.
For each of --calls calls, three delays, each from the moment our phone (or the
caller) sent the message to node B to the arrival of A's NOTIFY saying so:
ringing (the phone's 180 -> early), answered (its 200 -> confirmed), ended (the
caller's BYE -> terminated). Everything runs on 127.0.0.1 with one clock.
Store writes: node B's switchboard_lamp_writes_total over --calls calls nobody
watches, then over the watched ones. ``--watch-at b`` puts the subscriber at node B
itself: the same delays without the store in the path (the baseline of the box).

    .venv/bin/python benchmarks/blf_cluster.py --calls 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent)]

from tests.e2e_helpers import Ua  # noqa: E402  (needs the sys.path entry above)
from tests.test_e2e_cluster_blf import (  # noqa: E402
    Watcher,
    answer,
    hang_up,
    lamp_writes,
    place_call,
    started_pair,
)


def summary(name: str, values: list[float]) -> str:
    ms = sorted(1000 * v for v in values)
    p90 = ms[min(len(ms) - 1, int(0.9 * len(ms)))]
    return (f"{name:9} median {statistics.median(ms):6.1f} ms  p90 {p90:6.1f} ms  "
            f"min {ms[0]:6.1f}  max {ms[-1]:6.1f}  (n={len(ms)})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=20, help="calls per measure (1-500)")
    p.add_argument("--watch-at", choices=("a", "b"), default="a",
                   help="the subscriber's node (b: the call's own node, the baseline)")
    args = p.parse_args()
    if not 1 <= args.calls <= 500:
        p.error("--calls: from 1 to 500")
    with tempfile.TemporaryDirectory(prefix="blf-cluster-") as tmp, \
            started_pair(Path(tmp)) as pair:
        caller, phone = Ua(pair.b.sip), Ua(pair.b.sip)
        watcher = Watcher(pair.a.sip if args.watch_at == "a" else pair.b.sip)
        try:
            phone.register("102", "pw102")
            for i in range(args.calls):
                invite, _ = place_call(caller, phone, f"quiet{i}")
                answer(caller, phone, invite, f"quiet{i}")
                hang_up(caller, phone, f"quiet{i}")
            unwatched = lamp_writes(pair.b, "dialogs") + lamp_writes(pair.b, "watch")
            watcher.subscribe()
            last, _ = watcher.wait(lambda s: s == ["terminated"], "idle")
            delays: dict[str, list[float]] = {"ringing": [], "answered": [], "ended": []}
            for i in range(args.calls):
                call_id = f"watched{i}"
                invite, rang = place_call(caller, phone, call_id)
                last, at = watcher.wait(lambda s: s[:1] == ["early"], "ringing", last)
                delays["ringing"].append(at - rang)
                sent = answer(caller, phone, invite, call_id)
                last, at = watcher.wait(lambda s: s[:1] == ["confirmed"], "answered", last)
                delays["answered"].append(at - sent)
                ended = hang_up(caller, phone, call_id)
                last, at = watcher.wait(lambda s: bool(s) and s[0] == "terminated",
                                        "ended", last)
                delays["ended"].append(at - ended)
            watched = lamp_writes(pair.b, "dialogs")
        finally:
            watcher.close()
            caller.close()
            phone.close()
    print(f"node B event -> NOTIFY at node {args.watch_at.upper()}, {args.calls} calls:")
    for name, values in delays.items():
        print("  " + summary(name, values))
    print(f"store writes for the lamps at node B: {unwatched / args.calls:.2f} per call "
          f"nobody watches, {watched / args.calls:.2f} per watched call")


if __name__ == "__main__":
    main()
