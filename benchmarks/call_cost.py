"""What one in-process call costs: call_memory.py's set-up loop, counted.

    .venv/bin/python benchmarks/call_cost.py [--calls 1000] [--media relay|direct]
        [--gc-stats] [--serve-gc] [--hang-up]

Runs the same INVITE / media ready / 180 / 200 / ACK loop as ``call_memory.py``
(its helpers, its directory) and prints the rate by wall time and by this
process's CPU time, which other jobs on the box disturb less. ``--gc-stats``
adds the collector's passes per 10,000 calls, the objects it examined per call
and the objects tracked once the calls are up; ``--serve-gc`` sets the
collector as ``serve`` does (``engine.cli.tune_gc``). ``--hang-up``: the trunk
hangs each call up right after its ACK (BYE, and the phone answers ours), as
a load of short calls does; the clock does not move, so every transaction of
the ended calls is still alive (as for 64*T1 after each call in a running
engine) and the objects tracked are what ended calls leave behind.

Instructions per call, which load does not change at all: run it under
callgrind for two call counts and divide the difference, e.g.

    PYTHONHASHSEED=0 valgrind --tool=callgrind .venv/bin/python \\
        benchmarks/call_cost.py --calls 200    # and again with --calls 1200

On a busy machine the simulated start-up (imports, the directory) costs most of
such a run. ``--instr-on`` lets callgrind skip it: started with
``--instr-atstart=no``, the script switches instrumentation on
(``callgrind_control -i on``) just before its loop, so the counts are the loop's
alone; divide the difference of two call counts as above, e.g.

    PYTHONHASHSEED=0 valgrind --tool=callgrind --instr-atstart=no .venv/bin/python \\
        benchmarks/call_cost.py --instr-on --calls 100    # and again with --calls 400

A script printing numbers, no assertion on time.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import call_memory as cm  # beside this file; puts the project on sys.path

from engine.sip.message import make_response


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--media", choices=("relay", "direct"), default="relay")
    ap.add_argument("--gc-stats", action="store_true")
    ap.add_argument("--serve-gc", action="store_true")
    ap.add_argument("--hang-up", action="store_true",
                    help="hang each call up at once (BYE from the trunk, 200 from the phone)")
    ap.add_argument("--instr-on", action="store_true",
                    help="under callgrind --instr-atstart=no: instrument from the loop on")
    args = ap.parse_args()
    import structlog
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40),
                        cache_logger_on_first_use=True)

    wall = [1_790_000_000.0]
    engine = cm.Engine(cm.parse_directory(tomllib.loads(cm.DIRECTORY), "<bench>"),
                       {"127.0.0.1"}, 5060, wall_clock=lambda: wall[0],
                       anchor_media=args.media == "relay")
    engine.registrar.load([cm.Binding(aor="200", contact=f"sip:200@{cm.PHONE[0]}:{cm.PHONE[1]}",
                                      expires_at=wall[0] + 86400, call_id="r", cseq=1,
                                      source=f"udp:{cm.PHONE[0]}:{cm.PHONE[1]}")], wall[0])
    now = 1000.0
    gc.collect()
    if args.serve_gc:
        from engine.cli import tune_gc
        tune_gc()
    passes = [0, 0, 0]
    examined = [0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":  # what this pass walks: its generation and the younger ones
            generation = info["generation"]
            passes[generation] += 1
            examined[0] += sum(len(gc.get_objects(g)) for g in range(generation + 1))

    if args.gc_stats:
        gc.callbacks.append(on_gc)
    if args.instr_on:
        import os
        import subprocess
        ctl = subprocess.Popen(["callgrind_control", "-i", "on", str(os.getpid())],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while ctl.poll() is None:  # guest code runs meanwhile: valgrind polls for the command
            sum(range(1000))
    started, cpu0 = time.perf_counter(), time.process_time()
    for i in range(args.calls):  # call_memory.py's set-up loop
        out = engine.datagram(cm.invite(i), cm.TRUNK, "udp", now)
        for action in out.media:
            out = engine.media_ready(action.call, (20000 + 4 * (i % 2000), 20002), now)
        leg = next(p for s in out.sends if isinstance(p := cm.parse(s.data), cm.Request))
        engine.datagram(cm.answer(leg, 180, f"c{i}"), cm.PHONE, "udp", now)
        out = engine.datagram(cm.answer(leg, 200, f"c{i}"), cm.PHONE, "udp", now)
        ok = next(p for s in out.sends if isinstance(p := cm.parse(s.data), cm.Response)
                  and p.status == 200)
        engine.datagram(cm.ack_for(ok, i), cm.TRUNK, "udp", now)
        if args.hang_up:
            out = engine.datagram(cm.bye_for(ok, i), cm.TRUNK, "udp", now)
            bye = next(p for s in out.sends if isinstance(p := cm.parse(s.data), cm.Request))
            engine.datagram(make_response(bye, 200).to_bytes(), cm.PHONE, "udp", now)
        engine.calls.take_records()  # the shell hands the dialog records to the store
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu0
    n = max(args.calls, 1)
    print(f"{'calls set up':<40} {args.calls:>10,}")
    print(f"{'calls/s, wall':<40} {args.calls / elapsed:>10,.0f}")
    print(f"{'calls/s, CPU time of this process':<40} {args.calls / cpu:>10,.0f}")
    if args.gc_stats:
        gc.callbacks.remove(on_gc)
        per = "/".join(f"{p * 10_000 / n:,.0f}" for p in passes)
        print(f"{'collector passes per 10,000 calls':<40} {per:>10}  (young/middle/full)")
        print(f"{'objects the collector examined per call':<40} {examined[0] / n:>10,.0f}")
        gc.collect()
        state = "calls ended" if args.hang_up else "calls up"
        print(f"{f'objects tracked, {state}':<40} {len(gc.get_objects()):>10,}")


if __name__ == "__main__":
    main()
