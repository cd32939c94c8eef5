"""Relayed calls with SRTP against plain RTP, on one core, in the same run.

    .venv/bin/python benchmarks/srtp_relay.py [--streams 200] [--seconds 8]
                                              [--warmup 2] [--rounds 3]

Per round, three modes, each in two fresh processes on 127.0.0.1:

* ``plain``: both legs RTP/AVP (today's relay);
* ``srtp-plain``: the caller's leg SRTP (AES_CM_128_HMAC_SHA1_80), the callee's
  plain: the engine unprotects one way and protects the other;
* ``srtp-srtp``: both legs SRTP, each with its own keys: unprotect and protect
  on every packet.

The SYSTEM UNDER TEST, pinned to one CPU, on uvloop: ``--streams`` calls, each two
``MediaEndpoint`` joined by a ``Relay``, negotiated with ``sdp.answer`` /
``sdp.negotiated`` exactly as the engine does (keys from ``a=crypto``). The LOAD,
pinned to the other CPU: per call one socket as the caller's phone and one as
the callee's, each sending 50 packets/s (PCMU, 20 ms) to the engine, so 100
packets/s per call come in and 100 go out; its SRTP packets are protected
before the clock starts (libsrtp refuses replays, so each is sent once), so the
load's own CPU does not vary by mode. It drains what the engine relays.

Measured over ``--seconds`` after ``--warmup``: packets relayed per second, the
engine's CPU (``time.process_time`` in the engine process: 100 % = one core),
CPU microseconds per relayed packet, and from that the calls one core would
relay at 100 % (each call 100 packets/s). A script printing a table; no
assertion on time. The machine may be shared: compare modes within a round.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import multiprocessing as mp
import os
import socket
import statistics
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pylibsrtp
import uvloop

from media import sdp, srtp
from media.codecs import codec_for
from media.endpoint import MediaEndpoint, PortAllocator, Relay
from media.rtp import RtpSender
from media.tones import tone

HOST = "127.0.0.1"
MODES = ("plain", "srtp-plain", "srtp-srtp")
PCMU = codec_for("PCMU")
CALL_PPS = 100  # 50 packets/s each way


def offer(port: int, key: bytes | None) -> sdp.SessionDescription:
    crypto = "" if key is None else \
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{base64.b64encode(key).decode()}\r\n"
    return sdp.parse_sdp(
        f"v=0\r\no=- 1 1 IN IP4 {HOST}\r\ns=-\r\nc=IN IP4 {HOST}\r\nt=0 0\r\n"
        f"m=audio {port} {'RTP/SAVP' if key else 'RTP/AVP'} 0\r\n{crypto}")


def configure(endpoint: MediaEndpoint, phone_port: int, phone_key: bytes | None,
              engine_key: bytes | None) -> None:
    theirs = offer(phone_port, phone_key)
    ours = sdp.answer(theirs, ["PCMU"], address=HOST, port=endpoint.rtp_port, session_id=1,
                      srtp_key=engine_key)
    assert isinstance(ours, sdp.SessionDescription)
    endpoint.configure(sdp.negotiated(theirs, ours))


def pin(cpu: int | None) -> None:
    if cpu is not None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, [cpu])


# --- the system under test ----------------------------------------------------------------


def engine_main(conn: Connection, cpu: int | None, legs: list[dict[str, Any]]) -> None:
    pin(cpu)
    uvloop.run(_engine(conn, legs))


async def _engine(conn: Connection, legs: list[dict[str, Any]]) -> None:
    ports = PortAllocator(30000, 39999)
    relays: list[Relay] = []
    endpoints: list[MediaEndpoint] = []
    for leg in legs:
        a = await MediaEndpoint.open(ports, HOST)
        b = await MediaEndpoint.open(ports, HOST)
        endpoints += [a, b]
        configure(a, leg["caller_port"], leg["caller_key"], leg["engine_a"])
        configure(b, leg["callee_port"], leg["callee_key"], leg["engine_b"])
        relays.append(Relay(a, b))
    conn.send([(a.rtp_port, b.rtp_port) for a, b in zip(endpoints[::2], endpoints[1::2],
                                                           strict=True)])
    loop = asyncio.get_running_loop()
    while True:
        ready = asyncio.Event()
        loop.add_reader(conn.fileno(), ready.set)
        await ready.wait()
        loop.remove_reader(conn.fileno())
        command = conn.recv()
        if command == "stop":
            break
        forwarded = sum(sum(r.forwarded) for r in relays)
        rejected = sum(e.srtp_rejected for e in endpoints)
        conn.send((time.monotonic(), time.process_time(), forwarded, rejected))
    for e in endpoints:
        e.close()


# --- the load -----------------------------------------------------------------------------


def load_main(conn: Connection, cpu: int | None, socks: list[tuple[socket.socket, socket.socket]],
              packets: list[tuple[list[bytes], list[bytes]]], targets: list[tuple[int, int]]
              ) -> None:
    pin(cpu)
    for a, b in socks:
        a.setblocking(False)
        b.setblocking(False)
    conn.send("ready")
    start = time.monotonic()
    frames = len(packets[0][0])
    received = 0
    for n in range(frames):
        for (a, b), (to_b, to_a), (port_a, port_b) in zip(socks, packets, targets, strict=True):
            a.sendto(to_b[n], (HOST, port_a))
            b.sendto(to_a[n], (HOST, port_b))
        for a, b in socks:
            for s in (a, b):
                while True:
                    try:
                        s.recv(2048)
                        received += 1
                    except BlockingIOError:
                        break
        if conn.poll():
            break
        time.sleep(max(0.0, start + (n + 1) * 0.02 - time.monotonic()))
    conn.send(received)


def stream(key: bytes | None, count: int, seed: int) -> list[bytes]:
    audio = PCMU.encode(tone(300 + seed % 700, 20 * count, level=0.3))
    sender = RtpSender.create(0, 8000)
    plain = [sender.audio(audio[i * 160:(i + 1) * 160]).build() for i in range(count)]
    if key is None:
        return plain
    session = pylibsrtp.Session(pylibsrtp.Policy(
        key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
        srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80))
    return [session.protect(p) for p in plain]


def run_mode(mode: str, streams: int, seconds: float, warmup: float,
             cpus: tuple[int | None, int | None]) -> dict[str, float]:
    ctx = mp.get_context("fork")
    caller_srtp = mode != "plain"
    callee_srtp = mode == "srtp-srtp"
    frames = int((warmup + seconds + 3) / 0.02)
    socks, legs, packets = [], [], []
    for i in range(streams):
        a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        a.bind((HOST, 0))
        b.bind((HOST, 0))
        socks.append((a, b))
        keys = {k: srtp.new_key() for k in ("caller_key", "engine_a", "callee_key", "engine_b")}
        leg: dict[str, Any] = {"caller_port": a.getsockname()[1],
                               "callee_port": b.getsockname()[1]}
        for side, on in (("a", caller_srtp), ("b", callee_srtp)):
            phone = "caller_key" if side == "a" else "callee_key"
            leg[phone] = keys[phone] if on else None
            leg[f"engine_{side}"] = keys[f"engine_{side}"] if on else None
        legs.append(leg)
        packets.append((stream(leg["caller_key"], frames, i),
                        stream(leg["callee_key"], frames, i + 1)))
    engine_conn, engine_end = ctx.Pipe()
    engine = ctx.Process(target=engine_main, args=(engine_end, cpus[0], legs), daemon=True)
    engine.start()
    targets = engine_conn.recv()
    load_conn, load_end = ctx.Pipe()
    load = ctx.Process(target=load_main, args=(load_end, cpus[1], socks, packets, targets),
                       daemon=True)
    load.start()
    assert load_conn.recv() == "ready"
    time.sleep(warmup)
    engine_conn.send("snap")
    t0, c0, f0, _ = engine_conn.recv()
    time.sleep(seconds)
    engine_conn.send("snap")
    t1, c1, f1, rejected = engine_conn.recv()
    load_conn.send("stop")
    load_conn.recv()
    engine_conn.send("stop")
    engine.join(10)
    load.join(10)
    for a, b in socks:
        a.close()
        b.close()
    dt, cpu, relayed = t1 - t0, c1 - c0, f1 - f0
    us = cpu / relayed * 1e6 if relayed else float("nan")
    return {"pps": relayed / dt, "cpu": cpu / dt * 100, "us": us,
            "calls_per_core": 1e6 / us / CALL_PPS if relayed else 0.0,
            "offered": streams * CALL_PPS, "rejected": rejected}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=200, help="calls relayed at once")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    pair = (cpus[0], cpus[1] if len(cpus) > 1 else cpus[0])
    print(f"{args.streams} calls ({args.streams * CALL_PPS} packets/s offered), engine on "
          f"CPU {pair[0]}, load on CPU {pair[1]}, load average {os.getloadavg()[0]:.2f}")
    results: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    for r in range(args.rounds):
        for mode in MODES:
            row = run_mode(mode, args.streams, args.seconds, args.warmup, pair)
            results[mode].append(row)
            print(f"round {r + 1} {mode:10s} relayed {row['pps']:8.0f}/s  engine CPU "
                  f"{row['cpu']:5.1f} %  {row['us']:5.1f} us/packet  -> "
                  f"{row['calls_per_core']:5.0f} calls/core  srtp rejected {row['rejected']:.0f}",
                  flush=True)
    print("\n| mode | relayed packets/s (offered) | engine CPU | CPU per packet | calls one "
          "core relays at 100 % (100 packets/s each) |")
    print("|---|---|---|---|---|")
    base = statistics.median(r["us"] for r in results["plain"])
    for mode in MODES:
        rows = results[mode]
        us = statistics.median(r["us"] for r in rows)
        print(f"| {mode} | {statistics.median(r['pps'] for r in rows):,.0f} "
              f"({rows[0]['offered']:,.0f}) | {statistics.median(r['cpu'] for r in rows):.1f} % "
              f"| {us:.1f} us (x{us / base:.2f}) | "
              f"{statistics.median(r['calls_per_core'] for r in rows):,.0f} |")


if __name__ == "__main__":
    main()
