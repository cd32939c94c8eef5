"""Concurrent voicemail recordings (RTP in, WAV out) one process sustains on one core.

    .venv/bin/python benchmarks/voicemail_recordings.py [--recordings 100,200,300,400,600]
                                                        [--seconds 20] [--codec PCMU|G722]

The goal: 300 concurrent voicemail recordings on one core.

Per step of the ramp (N recordings), two fresh processes, everything on 127.0.0.1:

* the RECORDER, the system under test: one ``MediaService`` on uvloop, pinned
  to one CPU, opens N endpoints, each negotiated (``sdp.answer`` /
  ``sdp.negotiated``) with one of the sender's ports as the phone, and starts
  ``MediaService.record`` on each as the engine does for voicemail (default
  silence detection, ``max_seconds`` 180): decode every packet, place it by
  RTP timestamp, measure its level, and at the end write the WAV (8 kHz,
  16-bit) in a worker thread. A 10 ms timer chain measures how late the event
  loop runs (the delay a packet waits before it is read);
* the SENDER, pinned to the other CPUs when there are any, plays the phones:
  N UDP sockets, one 20 ms frame per stream per 20 ms for ``--seconds``, the
  streams spread over the 20 ms in ten groups (phones are not in step), each
  stream a steady tone of its own (400..1150 Hz by 50 Hz), encoded beforehand
  with ``media.codecs`` (PCMU, or G.722) as one signal for the whole step.

After the sender is done the recorder closes every endpoint (the hang-up: each
recorder stops as ``"hangup"`` and writes its file), then the parent checks
every WAV: its length against the frames sent, 20 ms blocks of digital silence
in it (the gaps the recorder filled for lost packets), and the stream's own
tone (``media.tones.goertzel``: the tone must hold >= 90 % of the file's
energy, so a file with another stream's audio, noise or holes fails).

Measured in the recorder between 1 s after the streams start and 1 s before
they end: its CPU (``resource.getrusage``, user + system, all threads; 100 % =
one core) and the event loop's lateness (p99 and max). Then the time and CPU
to finish (stop N recorders, write N WAVs; G.722 is recorded at 16 kHz and
resampled to 8 kHz there), and the loop's worst lateness meanwhile. In steady
state (messages ending all the time, not all at once) N recordings produce N
seconds of audio per second, so the *sustained* CPU is the recording CPU plus
the finishing CPU per second of audio times N: ``cpu + finish_cpu / seconds``.

A step *holds* when every WAV is complete, fewer than 0.1 % of the packets sent
were lost, and the recorder is not saturated: sustained CPU under 90 % of its
core and loop lag p99 under 100 ms (5 frames). A saturated recorder, pinned,
reads 95-100 % and falls behind by seconds while the kernel's socket buffers
(about 5 s of one stream each) still hide it: a 20 s step shows no loss, a long
message would. The ramp stops at the first step that does not hold. A script
printing a table, no assertion on time.

On loopback the kernel delivers a datagram in the sending process's
``sendto``: the receive-side softirq work is charged to the sender, not to the
recorder (its CPU is the Python work plus ``recvfrom``).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import resource
import shutil
import socket
import struct
import sys
import tempfile
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

from media.codecs import codec_for
from media.endpoint import MediaEndpoint
from media.session import MediaService, Pcm, Recorder, encode_clip
from media.tones import goertzel, tone
from media.wav import load_wav

GOAL = 300
LOSS_LIMIT_PCT = 0.1
CPU_LIMIT_PCT = 90.0
LAG_LIMIT_MS = 100.0
TONE_SHARE = 0.9
FRAME_S = 0.020
GROUPS = 10
LEVEL = 0.3
PAYLOAD_TYPE = {"PCMU": 0, "G722": 9}
RTP_HEADER = struct.Struct("!BBHII")


# --- helpers -----------------------------------------------------------------------------


def cpu_seconds() -> float:
    """User + system CPU of this process (every thread), in seconds."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def frequency(i: int) -> float:
    """Stream ``i``'s tone: 400..1150 Hz (16 tones; neighbours 50 Hz apart)."""
    return 400.0 + 50.0 * (i % 16)


# --- the sender process (the phones) -----------------------------------------------------


def sender_main(conn: Connection, n: int, codec: str, seconds: float, cpus: list[int],
                max_life: float, inherited: list[Connection]) -> None:
    """Bind N sockets, report their ports; on ("go", ports) send the streams."""
    child_setup(cpus, inherited)
    rate = codec_for(codec).sample_rate
    total = round(seconds / FRAME_S)
    # the whole duration encoded as one signal: G.722 is adaptive, a looped clip would put
    # a burst in every stream where the loop restarts (the encoder's state jumps)
    frames = {f: encode_clip(Pcm(tone(f, total * 20, rate, level=LEVEL, ramp_ms=0), rate),
                             codec)
              for f in sorted({frequency(i) for i in range(n)})}
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(s)
            s.bind((HOST, 0))
    except OSError as exc:
        conn.send(("error", f"sender: {exc}"))
        return
    conn.send(("bound", [s.getsockname()[1] for s in socks]))
    msg = recv_msg(conn, max_life)
    if not msg or msg[0] != "go":
        return
    dests = [(HOST, int(p)) for p in msg[1]]
    pt = PAYLOAD_TYPE[codec]
    ssrcs = [int.from_bytes(os.urandom(4), "big") for _ in range(n)]
    seq0 = [int.from_bytes(os.urandom(2), "big") for _ in range(n)]
    ts0 = [int.from_bytes(os.urandom(4), "big") for _ in range(n)]
    clips = [frames[frequency(i)] for i in range(n)]
    groups = [list(range(g, n, GROUPS)) for g in range(GROUPS)]
    sent = [0] * n
    errors = 0
    lateness: list[float] = []
    pack = RTP_HEADER.pack
    start = time.monotonic() + 0.05
    for k in range(total):
        for g, members in enumerate(groups):
            due = start + k * FRAME_S + g * FRAME_S / GROUPS
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                lateness.append(-delay)
            marker = 0x80 if k == 0 else 0
            for i in members:
                clip = clips[i]
                data = pack(0x80, marker | pt, (seq0[i] + k) & 0xFFFF,
                            (ts0[i] + 160 * k) & 0xFFFFFFFF, ssrcs[i]) + clip[k % len(clip)]
                try:
                    socks[i].sendto(data, dests[i])
                    sent[i] += 1
                except OSError:
                    errors += 1
    late = np.asarray(lateness or [0.0])
    conn.send(("sent", {"sent": sent, "errors": errors,
                        "late_p99_ms": float(np.percentile(late, 99)) * 1000,
                        "late_max_ms": float(late.max()) * 1000,
                        "late_ticks": len(lateness), "ticks": total * GROUPS}))
    for s in socks:
        s.close()


# --- the recorder process (the system under test) ----------------------------------------


def recorder_main(conn: Connection, phone_ports: list[int], codec: str, port_range: str,
                  out_dir: str, cpus: list[int], max_life: float,
                  inherited: list[Connection]) -> None:
    child_setup(cpus, inherited)
    uvloop.run(recorder(conn, phone_ports, codec, port_range, Path(out_dir), max_life))


class LagMonitor:
    """A 10 ms timer chain: how late the loop runs its callbacks."""

    def __init__(self, period: float = 0.010) -> None:
        self.period = period
        self.samples: list[float] = []
        self.measuring = False
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._due = time.monotonic() + self.period
        self._handle = asyncio.get_running_loop().call_later(self.period, self._tick)

    def _tick(self) -> None:
        now = time.monotonic()
        if self.measuring:
            self.samples.append(max(0.0, now - self._due))
        self._due = max(self._due + self.period, now)
        self._handle = asyncio.get_running_loop().call_later(
            max(0.0, self._due - time.monotonic()), self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()


async def recorder(conn: Connection, phone_ports: list[int], codec: str, port_range: str,
                   out_dir: Path, max_life: float) -> None:
    commands = commands_from(conn)
    service = MediaService(port_range, host=HOST)
    endpoints: list[MediaEndpoint] = []
    recorders: list[Recorder] = []
    started = time.monotonic()
    try:
        for i, port in enumerate(phone_ports):
            endpoint = await open_answered(service, phone_offer(port, PAYLOAD_TYPE[codec]),
                                           (codec,), i + 1,
                                           can_decode=frozenset({"PCMU", "G722"}))
            endpoints.append(endpoint)
            recorders.append(service.record(endpoint, out_dir / f"{i:04d}.wav",
                                            max_seconds=180.0))
    except Exception as exc:
        conn.send(("error", f"recorder: {type(exc).__name__}: {exc}"))
        await service.close_all()
        return
    conn.send(("ready", [e.rtp_port for e in endpoints], time.monotonic() - started))
    lag = LagMonitor()
    lag.start()
    cpu0 = cpu1 = t0 = t1 = 0.0
    deadline = time.monotonic() + max_life
    while (left := deadline - time.monotonic()) > 0:
        try:
            msg = await asyncio.wait_for(commands.get(), left)
        except TimeoutError:
            break
        if msg == "mark":
            cpu0, t0 = cpu_seconds(), time.monotonic()
            lag.measuring = True
        elif msg == "mark_end":
            cpu1, t1 = cpu_seconds(), time.monotonic()
            lag.measuring = False
        elif msg == "stop":
            break
    lag.stop()
    # the hang-up: every endpoint closes, every recorder stops and writes its file
    finish_lag = LagMonitor()
    finish_lag.measuring = True
    finish_lag.start()
    cpu2, t2 = cpu_seconds(), time.monotonic()
    received = [e.packets_received for e in endpoints]
    rejected = [e.latch.rejected for e in endpoints]
    decode_errors = [e.decode_errors for e in endpoints]
    for endpoint in endpoints:
        endpoint.close()
    results = await asyncio.gather(*(r.wait() for r in recorders), return_exceptions=True)
    cpu3, t3 = cpu_seconds(), time.monotonic()
    finish_lag.stop()
    await service.close_all()
    lags = np.asarray(lag.samples or [0.0]) * 1000
    window = t1 - t0
    conn.send(("result", {
        "cpu_pct": 100.0 * (cpu1 - cpu0) / window if window > 0 else float("nan"),
        "window_s": window,
        "lag_p99_ms": float(np.percentile(lags, 99)),
        "lag_max_ms": float(lags.max()),
        "finish_s": t3 - t2,
        "finish_cpu_s": cpu3 - cpu2,
        "finish_lag_max_ms": max(finish_lag.samples or [0.0]) * 1000,
        "received": received,
        "rejected": rejected,
        "decode_errors": decode_errors,
        "late_packets": [r.late_packets for r in recorders],
        "recordings": [
            {"error": repr(r)} if isinstance(r, BaseException)
            else {"path": str(r.path), "duration": r.duration, "reason": r.reason}
            for r in results],
    }))


# --- checking the files ------------------------------------------------------------------


def check_wav(path: str, freq: float, sent: int, lost: int) -> dict[str, Any]:
    """A recording against what was sent: length, filled gaps, the stream's tone."""
    pcm = load_wav(path).pcm16
    x = np.frombuffer(pcm, dtype="<i2")
    blocks = len(x) // 160
    frames = len(x) / 160
    silent = 0
    if blocks:
        peaks = np.abs(x[: blocks * 160].reshape(blocks, 160).astype(np.int32)).max(axis=1)
        silent = int((peaks < 300).sum())
    mean_square = float(np.mean((x.astype(np.float64) / 32768.0) ** 2)) if len(x) else 0.0
    amplitude = goertzel(pcm, 8000, freq)
    share = (amplitude**2 / 2) / mean_square if mean_square else 0.0
    # a lost first or last packet shortens the file; one lost inside is filled with silence
    length_ok = sent - lost - 1 <= frames <= sent + 0.5
    complete = length_ok and silent <= lost + 1 and share >= TONE_SHARE
    return {"frames": frames, "silent": silent, "share": share, "complete": complete,
            "error_s": abs(frames - sent) * FRAME_S}


# --- the parent: one step per N ----------------------------------------------------------


def run_step(n: int, args: argparse.Namespace, ctx: Any, recorder_cpus: list[int],
             sender_cpus: list[int]) -> dict[str, Any]:
    max_life = args.seconds + 120.0
    out_dir = Path(tempfile.mkdtemp(prefix=f"vm-bench-{n}-", dir=args.out_dir))
    tx_conn, tx_child = ctx.Pipe()
    rx_conn = None
    tx = rx = None
    try:
        tx = start_child(ctx, sender_main, tx_child, n, args.codec, args.seconds, sender_cpus,
                         max_life, [tx_conn])
        msg = recv_msg(tx_conn, 30)
        if error := not_started(msg, "bound", "sender"):
            return error
        phone_ports = msg[1]
        rx_conn, rx_child = ctx.Pipe()
        rx = start_child(ctx, recorder_main, rx_child, phone_ports, args.codec,
                         args.recorder_ports, str(out_dir), recorder_cpus, max_life,
                         [rx_conn, tx_conn])
        msg = recv_msg(rx_conn, 60)
        if error := not_started(msg, "ready", "recorder"):
            return error
        setup_s = msg[2]
        tx_conn.send(("go", msg[1]))
        time.sleep(1.0)
        rx_conn.send("mark")
        time.sleep(max(0.5, args.seconds - 2.0))
        rx_conn.send("mark_end")
        sent_msg = recv_msg(tx_conn, args.seconds + 60)
        if not sent_msg or sent_msg[0] != "sent":
            return {"error": "sender gave no result"}
        time.sleep(0.3)  # what is in flight still counts
        rx_conn.send("stop")
        result = recv_msg(rx_conn, 120)
        if not result or result[0] != "result":
            return {"error": "recorder gave no result"}
        out: dict[str, Any] = dict(result[1])
        out["setup_s"] = setup_s
        sender = sent_msg[1]
        out["sender"] = sender
        sent = sender["sent"]
        received = out["received"]
        lost = [max(0, s - r) for s, r in zip(sent, received, strict=True)]
        checks = []
        for i, rec in enumerate(out["recordings"]):
            if "error" in rec or rec["reason"] != "hangup":
                checks.append({"complete": False, "frames": 0, "silent": 0, "share": 0.0,
                               "error_s": sent[i] * FRAME_S})
                continue
            checks.append(check_wav(rec["path"], frequency(i), sent[i], lost[i]))
        out["sent_total"] = sum(sent)
        out["received_total"] = sum(min(s, r) for s, r in zip(sent, received, strict=True))
        out["lost_total"] = sum(lost)
        out["loss_pct"] = 100.0 * sum(lost) / sum(sent) if sum(sent) else 100.0
        out["complete"] = sum(1 for c in checks if c["complete"])
        out["wav_frames"] = sum(c["frames"] for c in checks)
        out["silent_frames"] = sum(c["silent"] for c in checks)
        out["min_share"] = min((c["share"] for c in checks), default=0.0)
        out["max_error_s"] = max((c["error_s"] for c in checks), default=0.0)
        out["late_packets_total"] = sum(out["late_packets"])
        out["rejected_total"] = sum(out["rejected"])
        out["sustained_pct"] = out["cpu_pct"] + 100.0 * out["finish_cpu_s"] / args.seconds
        out["holds"] = (out["complete"] == n and out["loss_pct"] < LOSS_LIMIT_PCT
                        and out["sustained_pct"] < CPU_LIMIT_PCT
                        and out["lag_p99_ms"] < LAG_LIMIT_MS)
        for key in ("received", "rejected", "decode_errors", "late_packets", "recordings"):
            del out[key]
        del sender["sent"]
        return out
    finally:
        close_step((rx_conn, tx_conn), (tx, rx))
        if not args.keep:
            shutil.rmtree(out_dir, ignore_errors=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    doc = __doc__ or ""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--recordings", default="100,200,300,400,600",
                   help="the ramp: concurrent recordings, comma-separated")
    p.add_argument("--seconds", type=float, default=20.0, help="seconds of audio per step")
    p.add_argument("--codec", choices=sorted(PAYLOAD_TYPE), default="PCMU")
    p.add_argument("--recorder-ports", default="12000-15999", help="the recorder's RTP ports")
    p.add_argument("--out-dir", default=None, help="where the WAVs go (a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the WAVs")
    p.add_argument("--all", action="store_true", help="run every step, even after a failure")
    p.add_argument("--no-pin", action="store_true",
                   help="do not pin the recorder to one CPU and the sender to the others")
    args = p.parse_args(argv)
    args.ramp = counts(args.recordings)
    if not args.ramp or min(args.ramp) < 1 or max(args.ramp) > 2000:
        p.error("--recordings needs counts between 1 and 2000")
    if not 3.0 <= args.seconds <= 120.0:
        p.error("--seconds must be between 3 and 120")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ctx = mp.get_context("fork")
    cpus, recorder_cpus, sender_cpus = split_cpus(args.no_pin)
    print(f"{len(cpus)} CPUs; recorder pinned to {recorder_cpus or 'any'}, sender to "
          f"{sender_cpus or 'any'}; {args.codec}, {args.seconds:g} s of audio per step; "
          f"load average {os.getloadavg()[0]:.2f}", file=sys.stderr)

    def verdict(n: int, r: dict[str, Any]) -> str | None:
        if r["holds"]:
            return None
        return (f"{n} recordings: {r['complete']}/{n} WAVs complete, lost "
                f"{r['loss_pct']:.3f} %, sustained CPU {r['sustained_pct']:.1f} %, "
                f"loop lag p99 {r['lag_p99_ms']:.1f} ms (holds: all complete, lost < "
                f"{LOSS_LIMIT_PCT:g} %, sustained CPU < {CPU_LIMIT_PCT:g} %, lag p99 < "
                f"{LAG_LIMIT_MS:g} ms)")

    rows, best, stop_reason = run_ramp(
        args.ramp, "recordings",
        lambda n: run_step(n, args, ctx, recorder_cpus, sender_cpus), verdict,
        "every step held: the limit is above the ramp (try larger --recordings)",
        keep_going=args.all)

    def row(n: int, r: dict[str, Any]) -> str:
        lag = f"{r['lag_p99_ms']:.1f} / {r['lag_max_ms']:.1f}"
        packets = f"{r['received_total']} / {r['sent_total']}"
        return (f"{n:10d} | {r['cpu_pct']:15.1f} | {r['sustained_pct']:15.1f} | {lag:>21} | "
                f"{packets:>23} | {r['loss_pct']:7.3f} | {r['complete']:>6d} / {n:<4d} | "
                f"{r['finish_s']:8.2f} | {'yes' if r['holds'] else 'NO'}")

    def detail(n: int, r: dict[str, Any]) -> str:
        s = r["sender"]
        return (f"  {n}: set-up {r['setup_s']:.2f} s; WAVs {r['wav_frames'] * FRAME_S:.1f} s "
                f"of audio in all, worst length error {r['max_error_s'] * 1000:.0f} ms, "
                f"{r['silent_frames']} silent 20 ms blocks, tone share >= "
                f"{r['min_share']:.3f}; {r['late_packets_total']} late packets, "
                f"{r['rejected_total']} rejected; finishing (stop + write) "
                f"{r['finish_cpu_s']:.2f} s CPU, loop up to {r['finish_lag_max_ms']:.0f} ms "
                f"late meanwhile; sender {s['late_ticks']}/{s['ticks']} ticks late (p99 "
                f"{s['late_p99_ms']:.1f} ms, max {s['late_max_ms']:.1f} ms), "
                f"{s['errors']} send errors")

    print_report(rows,
                 "recordings | recording CPU % | sustained CPU % | loop lag p99 / max ms | "
                 "packets received / sent | lost %  | WAVs complete | finish s | holds",
                 "-----------|-----------------|-----------------|-----------------------|-"
                 "------------------------|---------|---------------|----------|------",
                 10, row, detail, stop_reason)
    print(f"highest N that holds on one core: {best or 'none'} (goal {GOAL})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
