"""Callers waiting in queues: hold music and position announcements from one engine.

    .venv/bin/python benchmarks/queue_load.py [--callers 500] [--queues 5]
                                              [--announce-every 10] [--seconds 30]

Two measurements:

1. **Waiting callers.** One ``switchboard serve`` (the system under test, pinned to
   one CPU) with ``--queues`` queues whose one agent never registers (nobody can be
   rung: every caller waits, and the queue looks for a free agent every 2 s per
   caller), hold music (the built-in tune) and ``announce_position_every`` seconds
   between position announcements (espeak-ng, rendered the first time a text is
   said). A RECEIVER process (pinned to the other CPUs) is the trunk: it places
   ``--callers`` calls (paced, ``--rate`` per second) to the queues' numbers from
   one SIP socket, each offering its own RTP port, ACKs the 200s, then records
   each RTP packet's kernel arrival time (SO_TIMESTAMPNS) for ``--seconds`` after
   ``--warmup`` seconds, as ``rtp_streams.py`` does. Reported: p50 / p99 / max
   gap between consecutive packets of a stream (music and announcements are one
   stream: a pause while a prompt starts shows as a gap), packets lost, the
   engine's CPU (utime + stime from /proc, 100 % = one core) and the
   announcements said in the window (from the engine's log).
2. **Queue decisions per second**, in process, sans-I/O: the call layer's test
   harness (``tests/test_calls.py``: SIP messages in, messages and media commands
   out, a fake clock) with one queue and 20 agents; rounds of arrivals (a trunk
   INVITE through routing into the queue, answered, ACKed), agents answering
   (200 from the agent, the queue's bridge) and hang-ups (BYE from the caller,
   the agent's wrap-up). Each rate counts the whole call layer's work for that
   event, SIP parsing included.

A script printing tables; no assertion on time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing as mp
import os
import select
import socket
import struct
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from _common import HOST, child_setup, close_step, not_started, recv_msg, split_cpus, start_child

from engine.sip.message import Request, Response, parse

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
CLK_TCK = os.sysconf("SC_CLK_TCK")
RCVBUF = 1024 * 1024
FIRST_DID = 15145550300


def proc_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# --- the directory ---------------------------------------------------------------------------


def directory_toml(queues: int, trunk_port: int, rtp: str, announce_every: int,
                   max_callers: int) -> str:
    parts = [f'[system]\ndomain = "pbx.test"\nrtp_ports = "{rtp}"\n',
             '[[trunks]]\nname = "carrier"\nhost = "127.0.0.1"\nport = 5\n'
             f'inbound_from = ["127.0.0.1/32"]\ninbound_port = {trunk_port}\n',
             '[[departments]]\nname = "Support"\ncaller_id = "+15145550100"\n',
             '[[numbers]]\nnumber = "+15145550100"\nroute_to = "busy"\n',
             # the agent: a user who never registers, so nobody may be rung
             '[[users]]\nextension = "101"\nname = "Agent"\npassword = "pw101"\n'
             'department = "Support"\n']
    for q in range(queues):
        parts.append(f'[[numbers]]\nnumber = "+{FIRST_DID + q}"\nroute_to = "queue:q{q}"\n')
        parts.append(f'[[queues]]\nname = "q{q}"\nextension = "{870 + q}"\n'
                     f'strategy = "ring_all"\nagents = ["101"]\n'
                     f'agents_start_logged_in = true\nmax_wait_seconds = 3600\n'
                     f'max_callers = {max_callers}\nwhen_no_agents = "join"\n'
                     f'announce_position_every = {announce_every}\n')
    return "\n".join(parts)


# --- the receiver: the trunk and its callers' phones --------------------------------------


def invite(call_id: str, did: str, sip_port: int, rtp_port: int) -> bytes:
    body = (f"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {rtp_port} RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n"
            f"a=fmtp:101 0-16\r\n").encode()
    head = (f"INVITE sip:{did}@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{sip_port};branch=z9hG4bK{call_id};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:+15145550199@127.0.0.1>;tag={call_id}\r\n"
            f"To: <sip:{did}@127.0.0.1>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
            f"Contact: <sip:trunk@127.0.0.1:{sip_port}>\r\n"
            f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def ack_for(ok: Response, sip_port: int) -> bytes:
    return (f"ACK {ok.contacts[0].uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{sip_port};branch=z9hG4bKack{ok.call_id};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: {ok.get('from')}\r\nTo: {ok.get('to')}\r\n"
            f"Call-ID: {ok.call_id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n").encode()


def ok_for(req: Request) -> bytes:
    lines = ["SIP/2.0 200 OK", *(f"Via: {v}" for v in req.get_lines("via")),
             f"From: {req.get('from')}", f"To: {req.get('to')}", f"Call-ID: {req.call_id}",
             f"CSeq: {req.get('cseq')}", "Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


def receiver_main(conn: Connection, n: int, queues: int, sip_port: int,
                  engine: tuple[str, int], port_range: str, rate: float, cpus: list[int],
                  max_life: float, inherited: list[Connection]) -> None:
    child_setup(cpus, inherited)
    hard_deadline = time.monotonic() + max_life
    low, high = (int(x) for x in port_range.split("-"))
    sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sip.bind((HOST, sip_port))
    sip.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sip.setblocking(False)
    rtp: list[socket.socket] = []
    rtcp: list[socket.socket] = []  # the engine's sender reports: drained, not measured
    port = low + (low % 2)
    while len(rtp) < n and port < high:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind((HOST, port))
            c.bind((HOST, port + 1))
        except OSError:  # taken (the SIP socket among them): the next pair
            s.close()
            c.close()
            port += 2
            continue
        c.setblocking(False)
        rtcp.append(c)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        s.setblocking(False)
        rtp.append(s)
        port += 2
    if len(rtp) < n:
        conn.send(("error", f"receiver: only {len(rtp)} free ports in {port_range}"))
        return

    ep = select.epoll()
    stream_of = {s.fileno(): i for i, s in enumerate(rtp)}
    for fd in stream_of:
        ep.register(fd, select.EPOLLIN)
    drain = {c.fileno(): c for c in rtcp}
    for fd in drain:
        ep.register(fd, select.EPOLLIN)
    ep.register(sip.fileno(), select.EPOLLIN)
    ctl = conn.fileno()
    ep.register(ctl, select.EPOLLIN)

    answered: dict[str, Response] = {}
    refused: dict[int, int] = {}
    sent = 0
    started = time.monotonic()
    ready_sent = False
    times: list[list[int]] = [[] for _ in rtp]
    seqs: list[list[int]] = [[] for _ in rtp]
    recording = False
    t_start = t_stop = 0
    stop_at = math.inf
    unpack_ts = struct.Struct("qq").unpack
    while time.monotonic() < min(hard_deadline, stop_at):
        now = time.monotonic()
        due = min(n, int((now - started) * rate) + 1)
        while sent < due:  # paced calls, one per caller, round the queues
            call_id = f"qload-{sent}"
            did = f"+{FIRST_DID + sent % queues}"
            sip.sendto(invite(call_id, did, sip_port, rtp[sent].getsockname()[1]), engine)
            sent += 1
        if not ready_sent and len(answered) + sum(refused.values()) >= n:
            if refused:
                conn.send(("error", f"calls refused: {refused}"))
                return
            conn.send(("ready", time.monotonic() - started))
            ready_sent = True
        for fd, _ in ep.poll(0.02):
            if fd == ctl:
                msg = recv_msg(conn, 0)
                if msg == "start":
                    t_start, recording = time.time_ns(), True
                elif msg == "stop" or msg is None:
                    t_stop = time.time_ns()
                    stop_at = time.monotonic() + 0.3
                    ep.unregister(ctl)
                continue
            if fd in drain:
                with contextlib.suppress(OSError):
                    drain[fd].recv(2048)
                continue
            if fd == sip.fileno():
                for _ in range(256):
                    try:
                        data = sip.recv(65535)
                    except OSError:
                        break
                    msg2 = parse(data)
                    if isinstance(msg2, Response):
                        if msg2.cseq.method != "INVITE" or msg2.status < 200:
                            continue
                        if msg2.status == 200:
                            answered[msg2.call_id] = msg2
                            sip.sendto(ack_for(msg2, sip_port), engine)  # retransmits too
                        else:
                            refused[msg2.status] = refused.get(msg2.status, 0) + 1
                    elif msg2.method != "ACK":
                        sip.sendto(ok_for(msg2), engine)
                continue
            i = stream_of[fd]
            s = rtp[i]
            for _ in range(64):
                try:
                    data, anc, _f, _a = s.recvmsg(2048, 256)
                except OSError:
                    break
                if not recording or len(data) < 12:
                    continue
                stamp = 0
                for level, kind, cdata in anc:
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(cdata) >= 16:
                        sec, nsec = unpack_ts(cdata[:16])
                        stamp = sec * 1_000_000_000 + nsec
                stamp = stamp or time.time_ns()
                if stamp < t_start or (t_stop and stamp >= t_stop):
                    continue
                times[i].append(stamp)
                seqs[i].append((data[2] << 8) | data[3])
    if not ready_sent:
        conn.send(("error", f"only {len(answered)} of {n} calls answered"))
        return
    gaps: list[Any] = []
    received = expected = silent = 0
    for ts, sq in zip(times, seqs, strict=True):
        if len(ts) < 2:
            silent += 1
            continue
        gaps.append(np.diff(np.asarray(ts, dtype=np.int64)))
        steps = (np.diff(np.asarray(sq, dtype=np.int64)) + 32768) % 65536 - 32768
        unwrapped = np.concatenate(([0], np.cumsum(steps)))
        expected += int(unwrapped.max() - unwrapped.min() + 1)
        received += len(np.unique(unwrapped))
    all_gaps = np.concatenate(gaps) / 1e6 if gaps else np.zeros(1)
    conn.send(("result", {
        "p50": float(np.percentile(all_gaps, 50)), "p99": float(np.percentile(all_gaps, 99)),
        "p999": float(np.percentile(all_gaps, 99.9)), "max": float(all_gaps.max()),
        "received": received, "lost": max(0, expected - received), "expected": expected,
        "silent": silent, "window_s": (t_stop - t_start) / 1e9}))
    # hang up: the engine's dialogs end with BYEs (answered in the loop above until now)
    for i, ok in enumerate(answered.values()):
        bye = (f"BYE {ok.contacts[0].uri} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP 127.0.0.1:{sip_port};branch=z9hG4bKbye{i};rport\r\n"
               f"Max-Forwards: 70\r\nFrom: {ok.get('from')}\r\nTo: {ok.get('to')}\r\n"
               f"Call-ID: {ok.call_id}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n")
        with contextlib.suppress(OSError):
            sip.sendto(bye.encode(), engine)
        if i % 50 == 49:
            time.sleep(0.05)
    for s in [*rtp, *rtcp, sip]:
        s.close()


# --- 1: waiting callers ----------------------------------------------------------------------


def waiting_callers(args: argparse.Namespace) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    _cpus, engine_cpus, receiver_cpus = split_cpus(args.no_pin)
    work = Path(tempfile.mkdtemp(prefix="queue-load-"))
    trunk_port = free_port()
    sip_port, http_port = free_port(), free_port()
    (work / "directory.toml").write_text(directory_toml(
        args.queues, trunk_port, args.engine_ports, args.announce_every,
        math.ceil(args.callers / args.queues) + 10))
    binary = str(Path(sys.executable).parent / "switchboard")
    log = (work / "engine.log").open("ab")
    engine = subprocess.Popen(
        [binary, "serve", "--data-dir", str(work), "--sip", f"{HOST}:{sip_port}",
         "--http", f"{HOST}:{http_port}", "--log-format", "json",
         "--directory", str(work / "directory.toml")],
        stdout=log, stderr=log, cwd=work)
    rx_conn = rx = None
    try:
        if engine_cpus:
            os.sched_setaffinity(engine.pid, engine_cpus)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # up when its HTTP port answers
            with contextlib.suppress(OSError), socket.create_connection((HOST, http_port), 0.2):
                break
            if engine.poll() is not None:
                return {"error": f"engine exited: {(work / 'engine.log').read_text()[-2000:]}"}
            time.sleep(0.1)
        max_life = args.callers / args.rate + args.warmup + args.seconds + 120
        rx_conn, rx_child = ctx.Pipe()
        rx = start_child(ctx, receiver_main, rx_child, args.callers, args.queues, trunk_port,
                         (HOST, sip_port), args.receiver_ports, args.rate, receiver_cpus,
                         max_life, [rx_conn])
        msg = recv_msg(rx_conn, args.callers / args.rate + 60)
        if error := not_started(msg, "ready", "receiver"):
            return error
        setup_s = msg[1]
        time.sleep(args.warmup)
        said0 = (work / "engine.log").read_text(errors="replace").count('"queue position"')
        cpu0, t0 = proc_cpu_seconds(engine.pid), time.monotonic()
        rx_conn.send("start")
        time.sleep(args.seconds)
        rx_conn.send("stop")
        cpu1, t1 = proc_cpu_seconds(engine.pid), time.monotonic()
        said1 = (work / "engine.log").read_text(errors="replace").count('"queue position"')
        result = recv_msg(rx_conn, 30)
        if not result or result[0] != "result":
            return {"error": f"receiver gave no result: {result}"}
        out: dict[str, Any] = dict(result[1])
        out["cpu_pct"] = 100 * (cpu1 - cpu0) / (t1 - t0)
        out["setup_s"] = setup_s
        out["announcements"] = said1 - said0
        out["pinned"] = f"engine {engine_cpus or 'any'}, receiver {receiver_cpus or 'any'}"
        return out
    finally:
        close_step((rx_conn,), (rx,))
        engine.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            engine.wait(15)
        if engine.poll() is None:
            engine.kill()
        log.close()


# --- 2: decisions per second -----------------------------------------------------------------


def decisions(rounds: int, per_round: int) -> dict[str, float]:
    import logging
    import tomllib

    import structlog

    from engine.core import Engine
    from provisioning.directory import parse_directory
    from tests.test_calls import PHONES, TRUNK, Clock, Net, register, reply
    from tests.test_calls_queue import AGENT_SDP, arrive, hang_up_caller, queue_directory

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    # hunt over agents 102-104 with only 102 registered: one caller rung at a time,
    # the next one as soon as 102 is free again (no wrap-up, no caller limit to speak of)
    text = (queue_directory("hunt").replace("max_callers = 3", "max_callers = 10000")
            .replace("wrap_up_seconds = 5", "wrap_up_seconds = 0"))
    clock = Clock()
    net = Net(Engine(parse_directory(tomllib.loads(text), "<bench>"),
                     {"127.0.0.1", "pbx.test"}, 5060, wall_clock=lambda: clock.wall,
                     digest_algorithms=("MD5",), advertise="127.0.0.1", anchor_media=True),
              clock)
    register(net, "102")
    agent = PHONES["102"]
    spent = {"arrivals": 0.0, "answers": 0.0, "hang-ups": 0.0}
    done = {"arrivals": 0, "answers": 0, "hang-ups": 0}
    n = 0
    for _ in range(rounds):
        calls = []
        t = time.perf_counter()
        for _ in range(per_round):
            n += 1
            calls.append((n, arrive(net, n)[1]))
        spent["arrivals"] += time.perf_counter() - t
        done["arrivals"] += per_round
        for num, ok in calls:  # in arrival order: 102 answers, then the caller hangs up
            invites = net.requests(agent, "INVITE")
            if not invites:
                raise RuntimeError(f"caller {num}: agent 102 was not rung")
            t = time.perf_counter()
            net.send(reply(invites[-1], 200, body=AGENT_SDP,
                           contact=f"<sip:102@127.0.0.1:{agent[1]}>"), agent)
            spent["answers"] += time.perf_counter() - t
            done["answers"] += 1
            t = time.perf_counter()
            hang_up_caller(net, ok, f"tcall-{num}")
            spent["hang-ups"] += time.perf_counter() - t
            done["hang-ups"] += 1
            for req in net.requests(agent, "BYE"):
                net.send(reply(req, 200), agent)
            net.tick(0.01)  # the wrap-up (0 s) ends: 102 is rung for the next caller
        net.drain(TRUNK)
        net.media.clear()
    if net.engine.calls.queues.leftovers():
        raise RuntimeError(f"left behind: {net.engine.calls.queues.leftovers()}")
    return {k: done[k] / spent[k] for k in spent if spent[k] > 0} | \
        {f"{k}_n": float(v) for k, v in done.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--callers", type=int, default=500)
    p.add_argument("--queues", type=int, default=5)
    p.add_argument("--announce-every", type=int, default=10)
    p.add_argument("--rate", type=float, default=100.0, help="calls placed per second")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--engine-ports", default="30000-31999")
    p.add_argument("--receiver-ports", default="34000-35999")
    p.add_argument("--rounds", type=int, default=20, help="decision rounds")
    p.add_argument("--per-round", type=int, default=50)
    p.add_argument("--no-pin", action="store_true")
    p.add_argument("--skip-media", action="store_true")
    args = p.parse_args(argv)
    with open("/proc/loadavg") as f:
        print(f"load average before: {' '.join(f.read().split()[:3])}", file=sys.stderr)
    report: dict[str, Any] = {}
    if not args.skip_media:
        r = waiting_callers(args)
        report["waiting"] = r
        print()
        if "error" in r:
            print(f"waiting callers: ERROR {r['error']}")
        else:
            print("callers | queues | announce every | p50 gap ms | p99 gap ms | p99.9 ms | "
                  "max ms | lost % | engine CPU % | announcements in window")
            lost = 100 * r["lost"] / r["expected"] if r["expected"] else 100.0
            print(f"{args.callers:7d} | {args.queues:6d} | {args.announce_every:12d} s | "
                  f"{r['p50']:10.2f} | {r['p99']:10.2f} | {r['p999']:8.2f} | {r['max']:6.1f} | "
                  f"{lost:6.3f} | {r['cpu_pct']:12.1f} | {r['announcements']}")
            print(f"  {r['received']} packets in {r['window_s']:.1f} s, {r['silent']} silent "
                  f"streams; calls set up in {r['setup_s']:.1f} s; pinned: {r['pinned']}")
    d = decisions(args.rounds, args.per_round)
    report["decisions"] = d
    print()
    print("queue events, in process (call layer, sans-I/O) | per second | events")
    for k in ("arrivals", "answers", "hang-ups"):
        if k in d:
            print(f"{k:48s} | {d[k]:10.0f} | {int(d[k + '_n'])}")
    with open("/proc/loadavg") as f:
        print(f"load average after: {' '.join(f.read().split()[:3])}")
    print(json.dumps(report, default=str), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
