#!/usr/bin/env python3
"""Overload: a target offered 1x, 2x and 3x its own zero-failure call rate, then half.

Per target (engine, sippy): its session establishment rate is found first, as in
``call_rate.py`` (a x1.25 ramp of 3 s steps on a fresh target; or given with
``--engine-rate`` / ``--sippy-rate``). Then, on a freshly started target and phone,
the SIPp trunk (``tests/sipp/overload_uac.xml``: call_load_uac.xml that ACKs and
stops on a 503) offers ``--seconds`` (15) of calls at each multiple in turn, each
run waiting for its calls to end; before the last multiple a second SIPp trunk
places ``--long-calls`` calls that stay up ``--long-hold-ms`` and hang up (BYE)
during the burst; right after, ``--seconds`` at half the rate must be clean.

Per run: calls completed within the offered window (the BYE's 200 received by then,
from SIPp's -trace_counts dumped every second), completed in all, refused (a 503
received), failed otherwise (SIPp's failed calls: timeouts), the set-up time, and the
CPU of the target and of the rest of the box.

    .venv/bin/python benchmarks/overload.py                      # engine and sippy, ~8 min
    .venv/bin/python benchmarks/overload.py --targets engine --engine-rate 1118
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent), str(BENCH.parent / "tests" / "sipp")]

from call_rate import (  # noqa: E402  (needs the sys.path entries above)
    CALLER,
    DEFAULT_SIPPY_CMD,
    DID,
    ENGINE_LOG_ARGS,
    UAC_SCENARIO,
    busy_cpu_seconds,
    engine_directory,
    measure_target,
    register_phone,
    start_phone,
    start_sippy,
)
from register_rate import (  # noqa: E402
    DOMAIN,
    HOST,
    TargetError,
    add_ramp_arguments,
    close_work_dir,
    free_port,
    measure_cpu,
    progress_log,
    running,
    sipp_args,
    sipp_or_none,
    start_engine,
    write_report,
)
from sipp import SippResult, run_sipp, sipp_version  # noqa: E402

OVERLOAD_UAC = "overload_uac.xml"
TARGETS = ("engine", "sippy")


def long_trunk(port: int) -> str:
    """A second trunk: the SIPp that places the long calls, on its own port."""
    return "\n".join(["[[trunks]]", 'name = "carrier-long"', f'host = "{HOST}"',
                      f"port = {free_port()}", f'inbound_from = ["{HOST}/32"]',
                      f"inbound_port = {port}", ""])


def counts_rows(folder: Path) -> list[dict[str, str]]:
    """SIPp's -trace_counts file (one row per second) in ``folder``."""
    files = sorted(folder.glob("*_counts.csv"), key=lambda p: p.stat().st_mtime)
    if not files:
        return []
    with files[-1].open(newline="") as fh:
        return list(csv.DictReader(fh, delimiter=";"))


def elapsed_s(row: dict[str, str]) -> float:
    h, m, s, us = (int(x) for x in row["ElapsedTime"].split(":"))
    return h * 3600 + m * 60 + s + us / 1e6


def summarize(rows: list[dict[str, str]], window: float) -> dict[str, int]:
    """Completed (the BYE's 200, the last 200 of the scenario) and refused (503) calls,
    within ``window`` seconds of the start and in all."""
    if not rows:
        return {"completed_in_window": 0, "completed": 0, "refused": 0,
                "refused_in_window": 0}
    ok_cols = [k for k in rows[0] if k.endswith("_200_Recv")]
    bye_ok = max(ok_cols, key=lambda k: int(k.split("_")[0]))
    refused = next(k for k in rows[0] if k.endswith("_503_Recv"))
    inside = [r for r in rows if elapsed_s(r) <= window + 0.5] or rows[:1]
    return {"completed_in_window": int(inside[-1][bye_ok]), "completed": int(rows[-1][bye_ok]),
            "refused_in_window": int(inside[-1][refused]), "refused": int(rows[-1][refused])}


def burst(server_pid: int, target_port: int, uac_port: int, rate: float, seconds: float,
          work: Path, label: str) -> dict[str, Any]:
    calls = max(1, round(rate * seconds))
    folder = work / label
    folder.mkdir(parents=True, exist_ok=True)
    # Room for every call of the run to be open at once: SIPp must keep offering the
    # rate while refused or timed-out calls linger.
    extra = [*sipp_args(rate, uac_port, "all", calls), "-s", DID, "-d", "0", "-trace_counts"]
    busy0, t0 = busy_cpu_seconds(), time.monotonic()
    result, uac_pct, server_pct = measure_cpu(server_pid, lambda: run_sipp(
        OVERLOAD_UAC, (HOST, target_port), None, calls, rate, seconds + 60, extra,
        keys={"caller": CALLER, "domain": DOMAIN}, workdir=folder))
    wall = max(time.monotonic() - t0, 1e-6)
    busy_pct = 100 * (busy_cpu_seconds() - busy0) / wall
    counted = summarize(counts_rows(folder), seconds)
    failed = result.failed
    return {"label": label, "rate": round(rate), "offered": calls, **counted,
            "failed": failed, "failure_reasons": result.failure_reasons,
            "unaccounted": max(0, calls - counted["completed"] - counted["refused"] - failed),
            "retransmissions": result.retransmissions,
            "setup_ms": result.response_time_ms, "target_cpu_pct": round(server_pct),
            "sipp_cpu_pct": round(uac_pct), "other_cpu_pct": round(max(
                0.0, busy_pct - uac_pct - server_pct)), "wall_s": round(wall, 1)}


class LongCalls(threading.Thread):
    """``n`` calls from their own trunk port that stay up ``hold_ms`` and then BYE."""

    def __init__(self, target_port: int, port: int, n: int, hold_ms: int, work: Path) -> None:
        super().__init__(daemon=True)
        self.args = (target_port, port, n, hold_ms, work)
        self.result: SippResult | None = None

    def run(self) -> None:
        target_port, port, n, hold_ms, work = self.args
        rate = 20.0
        extra = [*sipp_args(rate, port, "all", n), "-s", DID, "-d", str(hold_ms)]
        self.result = run_sipp(UAC_SCENARIO, (HOST, target_port), None, n, rate,
                               n / rate + hold_ms / 1000 + 60, extra,
                               keys={"caller": CALLER, "domain": DOMAIN},
                               workdir=work / "long-calls")


def zero_failure_rate(target: str, args: argparse.Namespace, work: Path,
                      log: Any) -> int:
    given = args.engine_rate if target == "engine" else args.sippy_rate
    if given:
        return int(given)
    args.start_rate = args.engine_start_rate if target == "engine" else args.sippy_start_rate
    row = measure_target(target, args, work / f"ramp-{target}", log)
    if row.error or not row.highest_clean_rate:
        raise TargetError(f"{target}: no zero-failure rate found: {row.error or row.stop_reason}")
    log(f"  {target}: zero-failure rate {row.highest_clean_rate}/s ({row.stop_reason})")
    return int(row.highest_clean_rate)


def measure(target: str, args: argparse.Namespace, work: Path, log: Any) -> dict[str, Any]:
    (work / f"ramp-{target}").mkdir(parents=True, exist_ok=True)
    rate = zero_failure_rate(target, args, work, log)
    uac_port, long_port, phone_port = free_port(), free_port(), free_port()
    out: dict[str, Any] = {"target": target, "rate": rate, "runs": []}
    with ExitStack() as stack:
        if target == "engine":
            directory = engine_directory(uac_port, args.engine_system) + long_trunk(long_port)
            server = start_engine(args, work, directory,
                                  (*ENGINE_LOG_ARGS, "--media", args.engine_media))
            stack.enter_context(running(server))
            register_phone(server.sip_port, phone_port)
        else:
            server = start_sippy(args, work, phone_port)
            stack.enter_context(running(server))
        phone = start_phone(work, phone_port, True, args.start_timeout)
        stack.callback(phone.stop)
        multiples = [float(m) for m in args.multiples.split(",")]
        for i, m in enumerate(multiples):
            long_calls = None
            if i == len(multiples) - 1 and args.long_calls:
                long_calls = LongCalls(server.sip_port, long_port, args.long_calls,
                                       args.long_hold_ms, work / target)
                long_calls.start()
                time.sleep(args.long_calls / 20 + 1.0)  # up before the burst
            log(f"  {target}: {m:g}x = {rate * m:.0f} calls/s for {args.seconds:g} s")
            run = burst(server.proc.pid, server.sip_port, uac_port, rate * m, args.seconds,
                        work / target, f"{m:g}x")
            run["multiple"] = m
            out["runs"].append(run)
            log(f"    {json.dumps(run)}")
            if long_calls is not None:
                long_calls.join(args.long_hold_ms / 1000 + 90)
                res = long_calls.result
                out["long_calls"] = None if res is None else {
                    "calls": res.calls, "successful": res.successful, "failed": res.failed,
                    "failure_reasons": res.failure_reasons}
                log(f"    long calls: {out['long_calls']}")
        log(f"  {target}: 0.5x = {rate / 2:.0f} calls/s for {args.seconds:g} s (after)")
        after = burst(server.proc.pid, server.sip_port, uac_port, rate / 2, args.seconds,
                      work / target, "0.5x-after")
        after["multiple"] = 0.5
        out["runs"].append(after)
        log(f"    {json.dumps(after)}")
        if target == "engine":
            text = server.log_path.read_text(errors="replace")
            out["shedding_log_lines"] = {
                "started": text.count("overload: shedding started"),
                "stopped": text.count("overload: shedding stopped")}
    return out


def print_report(results: list[dict[str, Any]], seconds: float) -> None:
    print()
    print("target | x | offered/s | completed in window /s | completed | refused (503) | "
          "failed (timeout) | 503 share of not completed | set-up ms | target CPU | "
          "other CPU")
    print("---|---|---|---|---|---|---|---|---|---|---")
    for res in results:
        for run in res["runs"]:
            not_done = run["offered"] - run["completed"]
            share = f"{100 * run['refused'] / not_done:.0f} %" if not_done else "-"
            setup = run["setup_ms"]
            print(f"{res['target']} | {run['multiple']:g} | {run['rate']} | "
                  f"{run['completed_in_window'] / seconds:.0f} | {run['completed']} | "
                  f"{run['refused']} | {run['failed']} | {share} | "
                  f"{'-' if setup is None else f'{setup:.0f}'} | {run['target_cpu_pct']} % | "
                  f"{run['other_cpu_pct']} %")
    print()
    for res in results:
        runs = {r["multiple"]: r for r in res["runs"]}
        one, three = runs.get(1.0), runs.get(max(runs))
        line = f"{res['target']}: zero-failure rate {res['rate']}/s"
        if one and three and one["completed_in_window"]:
            kept = three["completed_in_window"] / one["completed_in_window"]
            not_done = three["offered"] - three["completed"]
            refused = three["refused"] / not_done if not_done else 1.0
            line += (f"; at {max(runs):g}x it completes {100 * kept:.0f} % of 1x within the "
                     f"window (goal 80 %), {100 * refused:.0f} % of the calls not completed "
                     "are refused (goal 90 %)")
        if res.get("long_calls"):
            lc = res["long_calls"]
            line += (f"; long calls up during the burst: {lc['successful']}/{lc['calls']} "
                     "BYE answered")
        after = runs.get(0.5)
        if after:
            clean = after["failed"] == 0 and after["completed"] == after["offered"]
            line += f"; half rate after: {'clean' if clean else 'NOT clean'}"
            line += f" ({after['completed']}/{after['offered']})"
        if "shedding_log_lines" in res:
            line += f"; shedding log lines {res['shedding_log_lines']}"
        print(line)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument("--seconds", type=float, default=15.0, help="offered window per run")
    p.add_argument("--multiples", default="1,2,3")
    p.add_argument("--engine-rate", type=float, default=0, help="skip the engine's ramp")
    p.add_argument("--sippy-rate", type=float, default=0, help="skip Sippy's ramp")
    p.add_argument("--engine-start-rate", type=int, default=500)
    p.add_argument("--sippy-start-rate", type=int, default=120)
    p.add_argument("--long-calls", type=int, default=40)
    p.add_argument("--long-hold-ms", type=int, default=8000)
    p.add_argument("--engine-media", choices=("relay", "direct"), default="direct")
    p.add_argument("--sippy-cmd", default=DEFAULT_SIPPY_CMD)
    add_ramp_arguments(p, name="overload", unit="calls", start_rate=500, max_seconds=90.0)
    args = p.parse_args(argv)
    args.hold_ms = 0
    args.kamailio_shm_mb = 64
    args.target_list = [t.strip() for t in args.targets.split(",") if t.strip()]
    if set(args.target_list) - set(TARGETS):
        p.error(f"--targets: use {','.join(TARGETS)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if sipp_or_none() is None:
        return 2
    log = progress_log(args.quiet)
    work = Path(tempfile.mkdtemp(prefix="overload-"))
    log(f"overload: {sipp_version()}, {os.cpu_count()} CPUs, load {os.getloadavg()}, "
        f"work dir {work}")
    results: list[dict[str, Any]] = []
    started = time.time()
    failed = False
    try:
        for target in args.target_list:
            log(f"{target}:")
            try:
                results.append(measure(target, args, work, log))
            except TargetError as exc:
                failed = True
                log(f"  {target}: ERROR: {exc}")
    finally:
        close_work_dir(work, args.keep_tmp or failed, "logs, SIPp stats and counts")
    print_report(results, args.seconds)
    write_report(args.out, "overload", started, {"method": vars(args) | {"out": str(args.out)},
                                                "results": results})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
