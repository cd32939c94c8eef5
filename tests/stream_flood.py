"""A connection flood against a SIP TCP port, run in its own process by the tests.

It holds ``idle`` connections that never send a byte and ``drip`` connections
that send one byte of a SIP header every ``drip_every`` seconds and never
finish it, from the given source addresses (round robin), and opens a new
connection whenever the engine closes one. Bounded in count (idle + drip
sockets), rate (``rate`` connection attempts per second) and time
(``seconds``). Only the standard library: it is imported in a spawned process.
"""

from __future__ import annotations

import collections
import resource
import selectors
import socket
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event

DRIP_HEAD = b"OPTIONS sip:pbx.test SIP/2.0\r\nVia: SIP/2.0/TCP 10.0.0.66:5060;branch=z9hG4bKd"


def raise_nofile(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard == resource.RLIM_INFINITY else min(hard, max(soft, wanted))
    if target != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def flood(target: tuple[str, int], sources: list[str], idle: int, drip: int, seconds: float,
          rate: float, drip_every: float, ready: Event, stop: Event,
          results: Queue[dict[str, int]]) -> None:
    total = idle + drip
    raise_nofile(total + 256)
    # Drippers spread among the idle ones, so every source has both kinds.
    every = max(1, total // max(1, drip))
    dripping = {i for i in range(0, total, every)} if drip else set()
    while len(dripping) > drip:
        dripping.pop()
    sel = selectors.DefaultSelector()
    socks: list[socket.socket | None] = [None] * total
    sent = [0] * total
    next_drip = [0.0] * total
    empty = collections.deque(range(total))
    stats = {"attempts": 0, "closed_by_engine": 0, "bind_errors": 0, "drip_bytes": 0,
             "most_open": 0}
    start = last = time.monotonic()
    end = start + seconds
    budget = 0.0
    while not stop.is_set() and (now := time.monotonic()) < end:
        budget = min(rate, budget + (now - last) * rate)
        last = now
        while empty and budget >= 1.0:
            i = empty.popleft()
            budget -= 1.0
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.bind((sources[i % len(sources)], 0))
            except OSError:
                stats["bind_errors"] += 1
                s.close()
                empty.append(i)
                continue
            s.connect_ex(target)
            stats["attempts"] += 1
            socks[i] = s
            sent[i] = 0
            next_drip[i] = now + drip_every
            sel.register(s, selectors.EVENT_READ, i)
        stats["most_open"] = max(stats["most_open"], total - len(empty))
        if stats["attempts"] >= total:
            ready.set()
        for key, _ in sel.select(timeout=0.02):
            i = key.data
            s = socks[i]
            assert s is not None
            try:
                data = s.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:  # closed (or refused) by the engine: open another
                sel.unregister(s)
                s.close()
                socks[i] = None
                empty.append(i)
                stats["closed_by_engine"] += 1
        now = time.monotonic()
        for i in dripping:
            s = socks[i]
            if s is None or now < next_drip[i]:
                continue
            byte = DRIP_HEAD[sent[i]:sent[i] + 1] or b"a"  # a header that never ends
            try:
                s.send(byte)
            except OSError:  # still connecting, or being closed: next time
                continue
            sent[i] += 1
            next_drip[i] = now + drip_every
            stats["drip_bytes"] += 1
    for s in socks:
        if s is not None:
            s.close()
    results.put(stats)
