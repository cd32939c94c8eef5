"""Concurrent outgoing RTP streams (hold music) one process sustains on one core.

    .venv/bin/python benchmarks/rtp_streams.py [--streams 100,200,300,500,700,1000]
                                               [--seconds 10] [--warmup 2]

The goal: 500 streams from one process, on one core, with the
p99 gap between consecutive packets of a stream under 30 ms.

Per step of the ramp (N streams), two fresh processes, everything on 127.0.0.1:

* the SENDER, the system under test: one ``MediaService`` on uvloop, pinned to
  one CPU, opens N endpoints and plays hold music to each (a looped 2-clip
  playlist made in memory with ``media.tones.tone``, PCMU, 20 ms frames), each
  endpoint negotiated (``sdp.answer`` / ``sdp.negotiated``) with one receiver
  port as the phone;
* the RECEIVER, pinned to the other CPUs when there are any: binds N RTP
  sockets (and their RTCP ports, drained), SO_RCVBUF 4 MiB each, reads them
  in an epoll loop and takes each packet's kernel arrival time
  (SO_TIMESTAMPNS; ``time.time_ns()`` if the kernel gives none), so its own
  scheduling does not show up in the gaps.

After ``--warmup`` seconds the receiver records for ``--seconds``; meanwhile
the sender's CPU time is read from ``/proc/<pid>/stat`` (utime + stime, 100 %
= one core). Reported per step: the p50 / p99 / max inter-arrival gap over all
streams, the packets lost (by RTP sequence number, per stream, within the
window) and the sender's CPU. The ramp stops at the first N whose p99 gap is
30 ms or more, or whose loss exceeds 0.1 %. A script printing a table, no
assertion on time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import multiprocessing as mp
import os
import select
import socket
import struct
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import uvloop
from _common import (
    HOST,
    child_setup,
    close_step,
    commands_from,
    counts,
    not_started,
    open_answered,
    phone_offer,
    print_report,
    recv_msg,
    run_ramp,
    split_cpus,
    start_child,
)

from media.session import MediaService, Pcm
from media.tones import tone

P99_LIMIT_MS = 30.0
LOSS_LIMIT_PCT = 0.1
GOAL = 500
RCVBUF = 4 * 1024 * 1024
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux (asm-generic), 64-bit timespec
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- helpers -----------------------------------------------------------------------------


def parse_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    return int(low), int(high)


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# --- the receiver process ----------------------------------------------------------------


def receiver_main(conn: Connection, n: int, port_range: str, cpus: list[int],
                  max_life: float, inherited: list[Connection]) -> None:
    """Bind N RTP ports, then record arrivals between "start" and "stop"."""
    child_setup(cpus, inherited)
    hard_deadline = time.monotonic() + max_life
    low, high = parse_range(port_range)
    rtp: list[socket.socket] = []
    rtcp: list[socket.socket] = []
    port = low + (low % 2)
    while len(rtp) < n and port + 1 <= high:  # bounded by the range
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind((HOST, port))
        except OSError:
            s.close()
            port += 2
            continue
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
        s.setblocking(False)
        rtp.append(s)
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            c.bind((HOST, port + 1))  # RTCP sender reports: drained, not measured
            c.setblocking(False)
            rtcp.append(c)
        except OSError:
            c.close()
        port += 2
    if len(rtp) < n:
        conn.send(("error", f"receiver: only {len(rtp)} free ports in {port_range}"))
        return
    conn.send(("ready", [s.getsockname()[1] for s in rtp]))

    ep = select.epoll()
    stream_of: dict[int, int] = {}
    for i, s in enumerate(rtp):
        ep.register(s.fileno(), select.EPOLLIN)
        stream_of[s.fileno()] = i
    drain = {c.fileno(): c for c in rtcp}
    for fd in drain:
        ep.register(fd, select.EPOLLIN)
    ctl = conn.fileno()
    ep.register(ctl, select.EPOLLIN)

    times: list[list[int]] = [[] for _ in rtp]
    seqs: list[list[int]] = [[] for _ in rtp]
    overflow = [0] * n  # the kernel's drop counter per socket (SO_RXQ_OVFL)
    overflow_at_start = [0] * n
    kernel_stamps = 0
    user_stamps = 0
    t_start = t_stop = 0
    recording = False
    stop_draining_at = math.inf
    max_events = len(rtp) + len(rtcp) + 1
    unpack_ts = struct.Struct("qq").unpack
    now_ns = time.time_ns

    while time.monotonic() < min(hard_deadline, stop_draining_at):
        for fd, _ in ep.poll(0.05, max_events):
            if fd == ctl:
                msg = recv_msg(conn, 0)
                if msg == "start":
                    t_start = now_ns()
                    overflow_at_start = list(overflow)
                    recording = True
                elif msg == "stop" or msg is None:
                    t_stop = now_ns()
                    stop_draining_at = time.monotonic() + 0.3  # what is queued still counts
                    if msg is None:
                        return
                    ep.unregister(ctl)
                continue
            other = drain.get(fd)
            if other is not None:
                for _ in range(64):
                    try:
                        other.recv(2048)
                    except OSError:
                        break
                continue
            i = stream_of[fd]
            s = rtp[i]
            for _ in range(256):  # bounded; epoll is level-triggered and comes back
                try:
                    data, anc, _flags, _addr = s.recvmsg(2048, 256)
                except OSError:
                    break
                stamp = 0
                for level, kind, cdata in anc:
                    if level != socket.SOL_SOCKET:
                        continue
                    if kind == SO_TIMESTAMPNS and len(cdata) >= 16:
                        sec, nsec = unpack_ts(cdata[:16])
                        stamp = sec * 1_000_000_000 + nsec
                    elif kind == SO_RXQ_OVFL and len(cdata) >= 4:
                        overflow[i] = int.from_bytes(cdata[:4], sys.byteorder)
                if not recording or len(data) < 12:
                    continue
                if stamp:
                    kernel_stamps += 1
                else:
                    stamp = now_ns()
                    user_stamps += 1
                if stamp < t_start or (t_stop and stamp >= t_stop):
                    continue
                times[i].append(stamp)
                seqs[i].append((data[2] << 8) | data[3])

    gaps: list[np.ndarray] = []
    received = expected = silent = 0
    for ts, sq in zip(times, seqs, strict=True):
        if len(ts) < 2:
            silent += 1
            received += len(ts)
            continue
        gaps.append(np.diff(np.asarray(ts, dtype=np.int64)))
        s16 = np.asarray(sq, dtype=np.int64)
        steps = (np.diff(s16) + 32768) % 65536 - 32768  # sequence numbers wrap at 2^16
        unwrapped = np.concatenate(([0], np.cumsum(steps)))
        expected += int(unwrapped.max() - unwrapped.min() + 1)
        received += len(np.unique(unwrapped))
    all_gaps = np.concatenate(gaps) / 1e6 if gaps else np.zeros(1)
    conn.send(("result", {
        "p50": float(np.percentile(all_gaps, 50)),
        "p99": float(np.percentile(all_gaps, 99)),
        "max": float(all_gaps.max()),
        "received": received,
        "lost": max(0, expected - received),
        "expected": expected,
        "silent_streams": silent,
        "socket_drops": sum(o - b for o, b in zip(overflow, overflow_at_start, strict=True)),
        "kernel_stamps": kernel_stamps,
        "user_stamps": user_stamps,
        "window_s": (t_stop - t_start) / 1e9 if t_stop else 0.0,
    }))
    for s in rtp + rtcp:
        s.close()


# --- the sender process (the system under test) ------------------------------------------


def sender_main(conn: Connection, dest_ports: list[int], port_range: str, cpus: list[int],
                max_life: float, inherited: list[Connection]) -> None:
    child_setup(cpus, inherited)
    uvloop.run(sender(conn, dest_ports, port_range, max_life))


async def sender(conn: Connection, dest_ports: list[int], port_range: str,
                 max_life: float) -> None:
    commands = commands_from(conn)
    service = MediaService(port_range, host=HOST)
    # hold music: two clips, looped
    playlist = [Pcm(tone(440.0, 4000, level=0.3)), Pcm(tone(554.37, 3000, level=0.3))]
    started = time.monotonic()
    try:
        for i, port in enumerate(dest_ports):
            endpoint = await open_answered(service, phone_offer(port), ("PCMU",), i + 1)
            await service.play(endpoint, playlist, loop=True)
    except Exception as exc:
        conn.send(("error", f"sender: {type(exc).__name__}: {exc}"))
        await service.close_all()
        return
    conn.send(("playing", time.monotonic() - started))
    scheduler = service.scheduler
    ticks0 = 0
    deadline = time.monotonic() + max_life
    try:
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = await asyncio.wait_for(commands.get(), left)
            except TimeoutError:
                break
            if msg == "mark":
                scheduler.lateness = 0.0
                scheduler.skipped = 0
                ticks0 = scheduler.ticks
            elif msg == "stop":
                break
        stats = {"lateness_ms": scheduler.lateness * 1000, "skipped": scheduler.skipped,
                 "ticks": scheduler.ticks - ticks0, "streams": len(scheduler)}
    finally:
        await service.close_all()
    with contextlib.suppress(OSError):
        conn.send(("stopped", stats))


# --- the parent: one step per N ----------------------------------------------------------


def run_step(n: int, args: argparse.Namespace, ctx: Any, sender_cpus: list[int],
             receiver_cpus: list[int]) -> dict[str, Any]:
    max_life = args.warmup + args.seconds + 60.0
    rx_conn, rx_child = ctx.Pipe()
    tx_conn = None
    rx = tx = None
    try:
        rx = start_child(ctx, receiver_main, rx_child, n, args.receiver_ports, receiver_cpus,
                         max_life, [rx_conn])
        msg = recv_msg(rx_conn, 20)
        if error := not_started(msg, "ready", "receiver"):
            return error
        tx_conn, tx_child = ctx.Pipe()
        tx = start_child(ctx, sender_main, tx_child, msg[1], args.sender_ports, sender_cpus,
                         max_life, [tx_conn, rx_conn])
        msg = recv_msg(tx_conn, 30)
        if error := not_started(msg, "playing", "sender"):
            return error
        setup_s = msg[1]
        time.sleep(args.warmup)
        cpu0, t0 = proc_cpu_seconds(tx.pid or 0), time.monotonic()
        tx_conn.send("mark")
        rx_conn.send("start")
        time.sleep(args.seconds)
        rx_conn.send("stop")
        cpu1, t1 = proc_cpu_seconds(tx.pid or 0), time.monotonic()
        tx_conn.send("stop")
        result = recv_msg(rx_conn, 30)
        stopped = recv_msg(tx_conn, 10)
        if not result or result[0] != "result":
            return {"error": "receiver gave no result"}
        out: dict[str, Any] = dict(result[1])
        out["cpu_pct"] = 100.0 * (cpu1 - cpu0) / (t1 - t0)
        out["setup_s"] = setup_s
        out["sender"] = stopped[1] if stopped and stopped[0] == "stopped" else {}
        return out
    finally:
        close_step((rx_conn, tx_conn), (tx, rx))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--streams", default="100,200,300,500,700,1000",
                   help="the ramp: stream counts, comma-separated")
    p.add_argument("--seconds", type=float, default=10.0, help="measurement window per step")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    p.add_argument("--sender-ports", default="20000-23999", help="the sender's RTP ports")
    p.add_argument("--receiver-ports", default="24000-27999", help="the receiver's ports")
    p.add_argument("--no-pin", action="store_true",
                   help="do not pin the sender to one CPU and the receiver to the others")
    args = p.parse_args(argv)
    args.ramp = counts(args.streams)
    if not args.ramp or min(args.ramp) < 1:
        p.error("--streams needs positive counts")
    if args.seconds <= 0 or args.warmup < 0:
        p.error("--seconds must be > 0 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ctx = mp.get_context("fork")
    cpus, sender_cpus, receiver_cpus = split_cpus(args.no_pin)
    print(f"{len(cpus)} CPUs; sender pinned to {sender_cpus or 'any'}, receiver to "
          f"{receiver_cpus or 'any'}; {args.warmup:g} s warm-up + {args.seconds:g} s "
          "per step", file=sys.stderr)

    def verdict(n: int, r: dict[str, Any]) -> str | None:
        lost_pct = 100.0 * r["lost"] / r["expected"] if r["expected"] else 100.0
        r["lost_pct"] = lost_pct
        if r["p99"] >= P99_LIMIT_MS or lost_pct > LOSS_LIMIT_PCT:
            return (f"{n} streams: p99 {r['p99']:.1f} ms, lost {lost_pct:.2f} % "
                    f"(limits: p99 < {P99_LIMIT_MS:g} ms, lost <= {LOSS_LIMIT_PCT:g} %)")
        return None

    rows, best, stop_reason = run_ramp(
        args.ramp, "streams", lambda n: run_step(n, args, ctx, sender_cpus, receiver_cpus),
        verdict, "every step passed: the limit is above the ramp (try larger --streams)")

    def row(n: int, r: dict[str, Any]) -> str:
        return (f"{n:7d} | {r['p50']:10.2f} | {r['p99']:10.2f} | {r['max']:10.2f} | "
                f"{r['lost_pct']:6.3f} | {r['cpu_pct']:12.1f}")

    def detail(n: int, r: dict[str, Any]) -> str:
        s = r["sender"]
        stamps = "kernel" if not r["user_stamps"] else f"{r['user_stamps']} user-space"
        return (f"  {n}: {r['received']} packets in {r['window_s']:.1f} s, "
                f"{r['lost']} lost ({r['socket_drops']} dropped by receiver sockets), "
                f"{r['silent_streams']} silent streams; sender set-up {r['setup_s']:.2f} s, "
                f"worst tick {s.get('lateness_ms', float('nan')):.1f} ms late, "
                f"{s.get('skipped', '?')} frames skipped; {stamps} timestamps")

    print_report(rows, "streams | p50 gap ms | p99 gap ms | max gap ms | lost % | sender CPU %",
                 "--------|------------|------------|------------|--------|-------------",
                 7, row, detail, stop_reason)
    print(f"highest N with p99 < {P99_LIMIT_MS:g} ms on one core: {best or 'none'} "
          f"(goal {GOAL})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
