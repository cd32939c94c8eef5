"""Pieces shared by the two-process media benchmarks (``rtp_streams.py``,
``voicemail_recordings.py``): CPU pinning, the child processes and their pipes, the
phone's SDP offer, the ramp and its report.

The scripts run as ``.venv/bin/python benchmarks/x.py``: this folder is on
``sys.path`` as the script's own, and they ``from _common import ...``.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import resource
import signal
import sys
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection
from typing import Any

from media import sdp
from media.endpoint import MediaEndpoint
from media.session import MediaService

HOST = "127.0.0.1"

Row = tuple[int, dict[str, Any]]


# --- processes, CPUs and pipes -----------------------------------------------------------


def pin(cpus: list[int]) -> None:
    if cpus:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, cpus)


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def child_setup(cpus: list[int], inherited: list[Connection]) -> None:
    """First thing in a child process: Ctrl-C is the parent's, the parent's pipe ends
    closed here, pinned to ``cpus``, as many file descriptors as allowed."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent cleans up
    for other in inherited:  # the parent's ends: its exit must read as EOF here
        other.close()
    pin(cpus)
    raise_nofile()


def split_cpus(no_pin: bool) -> tuple[list[int], list[int], list[int]]:
    """This process's CPUs, then the system under test's (the first) and the load's
    (the others, or all of them on one CPU); both empty with ``no_pin``."""
    cpus = sorted(os.sched_getaffinity(0))
    if no_pin:
        return cpus, [], []
    return cpus, cpus[:1], cpus[1:] or cpus


def recv_msg(conn: Connection, timeout: float) -> Any:
    """The next message on ``conn``, or None after ``timeout`` seconds or at EOF."""
    try:
        if conn.poll(timeout):
            return conn.recv()
    except (EOFError, OSError):
        pass
    return None


def commands_from(conn: Connection) -> asyncio.Queue[Any]:
    """The parent's messages on ``conn``, queued by the running loop; "stop" once the
    parent is gone."""
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[Any] = asyncio.Queue()

    def readable() -> None:
        try:
            commands.put_nowait(conn.recv())
        except (EOFError, OSError):  # the parent is gone
            loop.remove_reader(conn.fileno())
            commands.put_nowait("stop")

    loop.add_reader(conn.fileno(), readable)
    return commands


def stop_process(proc: mp.process.BaseProcess | None) -> None:
    if proc is None:
        return
    proc.join(2)
    if proc.is_alive():
        proc.terminate()
        proc.join(2)
    if proc.is_alive():
        proc.kill()
        proc.join(2)


def start_child(ctx: Any, target: Callable[..., None], *args: Any) -> mp.process.BaseProcess:
    """``target(*args)`` in a new daemon process of ``ctx``; ``args[0]`` is the child's
    end of its pipe, closed here once the child has its own."""
    proc: mp.process.BaseProcess = ctx.Process(target=target, daemon=True, args=args)
    proc.start()
    args[0].close()
    return proc


def not_started(msg: Any, kind: str, who: str) -> dict[str, Any] | None:
    """None when ``msg`` is the child's ``kind`` message; else the step's error."""
    if not msg or msg[0] != kind:
        return {"error": msg[1] if msg else f"{who} did not start"}
    return None


def close_step(conns: Iterable[Connection | None],
               procs: Iterable[mp.process.BaseProcess | None]) -> None:
    """The end of a step: the parent's pipe ends closed, then each child stopped."""
    for conn in conns:
        if conn is not None:
            conn.close()
    for proc in procs:
        stop_process(proc)


# --- media -------------------------------------------------------------------------------


def phone_offer(port: int, payload_type: int = 0) -> sdp.SessionDescription:
    """The offer of a phone on ``port`` (``payload_type`` + telephone-event)."""
    lines = ["v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0",
             f"m=audio {port} RTP/AVP {payload_type} 101",
             "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-16"]
    return sdp.parse_sdp(("\r\n".join(lines) + "\r\n").encode())


async def open_answered(service: MediaService, offer: sdp.SessionDescription,
                        codecs: tuple[str, ...], session_id: int,
                        **answer_args: Any) -> MediaEndpoint:
    """A new endpoint of ``service``, configured with its answer to ``offer``."""
    endpoint = await service.open_endpoint()
    answer = sdp.answer(offer, codecs, address=HOST, port=endpoint.rtp_port,
                        session_id=session_id, **answer_args)
    assert isinstance(answer, sdp.SessionDescription)
    endpoint.configure(sdp.negotiated(offer, answer, local="answerer"))
    return endpoint


# --- the ramp and its report -------------------------------------------------------------


def counts(text: str) -> list[int]:
    """The ramp: "100,200,300" -> [100, 200, 300]."""
    return [int(x) for x in text.split(",") if x.strip()]


def run_ramp(ramp: list[int], unit: str, step: Callable[[int], dict[str, Any]],
             verdict: Callable[[int, dict[str, Any]], str | None], stop_reason: str,
             keep_going: bool = False) -> tuple[list[Row], int, str]:
    """One ``step(n)`` per count, in order: the rows, the highest N before the first
    failure, and why the ramp stopped. ``verdict`` says why a step fails (None: it
    holds); the ramp stops at a step's error, Ctrl-C, or its first failure unless
    ``keep_going``. Every child process is stopped at the end."""
    rows: list[Row] = []
    best = 0
    failed = False
    try:
        for n in ramp:
            print(f"  {n} {unit} ...", file=sys.stderr, flush=True)
            r = step(n)
            rows.append((n, r))
            if "error" in r:
                stop_reason = f"{n} {unit}: {r['error']}"
                break
            reason = verdict(n, r)
            if reason is None:
                if not failed:
                    best = n
                continue
            if not failed:
                stop_reason = reason
            failed = True
            if not keep_going:
                break
    except KeyboardInterrupt:
        stop_reason = "interrupted (Ctrl-C)"
    finally:
        for child in mp.active_children():
            stop_process(child)
    return rows, best, stop_reason


def print_report(rows: list[Row], header: str, rule: str, width: int,
                 row: Callable[[int, dict[str, Any]], str],
                 detail: Callable[[int, dict[str, Any]], str], stop_reason: str) -> None:
    """The table (one ``row`` per step, an error in its place), then one ``detail``
    line per step that ran, then why the ramp stopped."""
    print()
    print(header)
    print(rule)
    for n, r in rows:
        if "error" in r:
            print(f"{n:{width}d} | ERROR: {r['error']}")
            continue
        print(row(n, r))
    print()
    for n, r in rows:
        if "error" in r:
            continue
        print(detail(n, r))
    print(f"  stopped: {stop_reason}")
