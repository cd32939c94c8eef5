"""The receive queue on the event loop: messages in, served by class in short slices.

:class:`~engine.shell.overload.Overload` decides (sans-I/O: classes, admission,
503s); :class:`Intake` drives it: offers what the sockets read, serves the queue
in slices between socket reads, sends what the policy answers itself, and feeds
it the event loop's lag.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

import structlog

from engine.core import Engine
from engine.shell.overload import CLASS_NAMES, Head, Overload, OverloadConfig
from engine.sip.message import Request, Response
from engine.sip.transaction import Addr, Send, server_key_of

__all__ = ["Handle", "Intake"]

log = structlog.get_logger("switchboard.app")

# The receive queue is served in slices of at most DRAIN_SECONDS, so that the loop
# reads the sockets between slices (libuv reads at most 32 datagrams per socket and
# iteration) and a datagram of a higher class waits at most about one slice. Short,
# because what waits in the kernel's buffer is invisible here (its age is not
# measured, nothing there is shed): with 2 ms slices a 3x burst filled the 4 MiB
# buffer and INVITEs waited over T1 before being read.
DRAIN_SECONDS = 0.0005
LAG_PERIOD = 0.05  # the event loop's lag is sampled this often

Handle = Callable[[bytes, Addr, str, Request | Response | None], None]
"""Process one message: (data, source, transport, what the queue already parsed)."""


class Intake:
    """The receive queue between the sockets and the engine."""

    def __init__(self, config: OverloadConfig, engine: Engine, handle: Handle,
                 send: Callable[[Send], None], is_known: Callable[[Addr], bool]) -> None:
        self.engine = engine
        self.handle = handle
        self.send = send
        self.overload = Overload(
            config, engine.metrics, retransmits=self._retransmits, is_known=is_known,
            origin=engine.edge.origin, rng=random.Random(),
            oc_seq_base=time.time() - time.monotonic())
        self._draining: asyncio.Handle | None = None

    def receive(self, data: bytes, source: Addr, transport: str) -> None:
        """A message from a socket: into the receive queue (or answered at once by the
        overload policy); the queue is served soon after, by class."""
        overload = self.overload
        overload.offer(data, source, transport, time.monotonic())
        if overload.outbox:
            self._flush()
        if overload.queued and self._draining is None:
            self._draining = asyncio.get_running_loop().call_soon(self._drain)

    def _drain(self) -> None:
        """Serve the receive queue for one slice, highest class first."""
        self._draining = None
        overload = self.overload
        handle = self.handle
        start = time.monotonic()
        overload.sweep(start)
        now = start
        while now - start < DRAIN_SECONDS:
            item = overload.pop(now)
            if item is None:
                break
            head = item.head
            handle(item.data, item.source, item.transport,
                   head.msg if head is not None else None)
            now = time.monotonic()
        if overload.outbox:
            self._flush()
        if overload.queued:
            self._draining = asyncio.get_running_loop().call_soon(self._drain)

    def _flush(self) -> None:
        overload = self.overload
        for data, addr, transport in overload.outbox:
            self.send(Send(data, addr, transport))
        overload.outbox.clear()
        for event, fields in overload.events:
            if event == "started":
                log.warning("overload: shedding started", **fields)
            else:
                log.warning("overload: shedding stopped", **fields)
        overload.events.clear()

    def _retransmits(self, head: Head) -> bool:
        """A request retransmitting a live server transaction (its answer is cheap)."""
        key = server_key_of("INVITE" if head.method == "ACK" else head.method, head.via)
        return key is not None and key in self.engine.transactions

    async def watch_lag(self) -> None:
        """The event loop's lag, every LAG_PERIOD: a signal of overload the receive
        queue cannot see (datagrams waiting in the kernel, a slow callback)."""
        overload = self.overload
        metrics = self.engine.metrics
        while True:
            before = time.monotonic()
            await asyncio.sleep(LAG_PERIOD)
            now = time.monotonic()
            overload.tick(max(0.0, now - before - LAG_PERIOD), now)
            for name, age, q in zip(CLASS_NAMES, overload.oldest(now), overload.queues,
                                    strict=True):
                metrics.queue_oldest.labels(name).set(age)
                metrics.queue_length.labels(name).set(len(q))
            if overload.outbox or overload.events:
                self._flush()
