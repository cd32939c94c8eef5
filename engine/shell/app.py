"""The thin asyncio layer: sockets, one timer, the store, admin HTTP.

Everything that decides is in :mod:`engine.core`; this module moves bytes
between sockets and the engine, drives its timer, and writes binding
changes through to the store in the background (never in the hot path).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import re
import resource
import signal
import socket
import ssl
import struct
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from engine.calls.events import (
    BridgeMedia,
    IvrPlay,
    IvrQuiet,
    MediaCommand,
    OpenMedia,
    StartMailbox,
    StartVoicemail,
    StopMedia,
    UpdateMedia,
)
from engine.core import Engine, Outcome
from engine.services.callmedia import CallMedia
from engine.services.ivrmedia import IvrMedia
from engine.services.mail import email_voicemail
from engine.shell import admin_api
from engine.shell.connlimit import (
    SHED_FIRST_MESSAGE,
    SHED_HANDSHAKE,
    SHED_ROOM,
    RateLog,
    StreamLimits,
    StreamPolicy,
)
from engine.shell.overload import CLASS_NAMES, Head, Overload, OverloadConfig
from engine.shell.storelink import StoreLink
from engine.sip.message import ParseError, Request, Response, StreamFramer, grammar, parse
from engine.sip.transaction import Addr, Send, server_key_of
from media.endpoint import MediaEndpoint, MediaError
from media.session import Clip, MediaService, Pcm, Recorder
from media.tones import beep
from media.wav import WavError, load_wav
from provisioning.mailbox import mailbox_dir
from provisioning.model import Node, VoicemailMessage
from provisioning.store import Store, Takeover, connection_lost

log = structlog.get_logger("switchboard.app")

MIN_MESSAGE_SECONDS = 0.5  # shorter recordings (a hang-up at the beep) are not kept
# At a clean stop, changes still queued for the store get this long to be written
# (the store may be away: the stop must end anyway, and says how many were lost).
STOP_FLUSH_SECONDS = 5.0
# Nodes sharing a store: how often each reads the bindings the others wrote (a
# phone registered through one node is reachable through the others after
# about this long) and refreshes its heartbeat row (see `switchboard nodes`).
BINDING_SYNC_SECONDS = 1.0
HEARTBEAT_SECONDS = 2.0
# Expired and deleted bindings leave the store this long after their time (every
# node has read a deletion by then), checked every BINDING_PURGE_PERIOD.
BINDING_PURGE_GRACE = 300.0
BINDING_PURGE_PERIOD = 60.0
# A node whose heartbeat is older than this is dead (three heartbeats missed, plus
# the sync tick): one survivor claims its calls' dialog records and ends the calls
# with a BYE to each party. Checked every TAKEOVER_SECONDS, so a dead node's calls
# end within about DEAD_AFTER_SECONDS + TAKEOVER_SECONDS + one BYE round trip. A
# claim whose claimer died before ending the calls is taken again after
# RECLAIM_SECONDS. Heartbeat times are each node's wall clock: keep them in sync (NTP).
DEAD_AFTER_SECONDS = 4 * HEARTBEAT_SECONDS
TAKEOVER_SECONDS = 2.0
RECLAIM_SECONDS = 60.0
CONNECT_SECONDS = 10.0  # an outbound TCP/TLS connection (with its handshake)
MAX_STREAM_MESSAGE = 256 * 1024
LISTEN_BACKLOG = 1024  # a burst of connections waits in the kernel, not refused by it
TRUST_REFRESH_SECONDS = 10.0  # registered sources re-read from the registrar
# Admin HTTP: a request's head must arrive within HTTP_IDLE_SECONDS of connecting (or of
# the previous answer), else the connection is closed: a client that sends half a
# request and stops holds nothing for long. Handlers get HTTP_HANDLER_SECONDS (504).
HTTP_IDLE_SECONDS = 5.0
HTTP_HANDLER_SECONDS = 30.0
HTTP_MAX_BODY = 64 * 1024  # an API write is one resource as JSON: far less
HTTP_MAX_LINE = 8190
HTTP_MAX_HEADERS = 64
# The receive queue is served in slices of at most DRAIN_SECONDS, so that the loop
# reads the sockets between slices (libuv reads at most 32 datagrams per socket and
# iteration) and a datagram of a higher class waits at most about one slice. Short,
# because what waits in the kernel's buffer is invisible here (its age is not
# measured, nothing there is shed): with 2 ms slices a 3x burst filled the 4 MiB
# buffer and INVITEs waited over T1 before being read.
DRAIN_SECONDS = 0.0005
LAG_PERIOD = 0.05  # the event loop's lag is sampled this often


NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,62}")


def default_node_id(port: int) -> str:
    """This host's name and the SIP port, as a node id (what a Call-ID may carry)."""
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname()).strip("-.") or "node"
    return f"{host[:56]}:{port}"


def parse_hostport(text: str, default_port: int) -> tuple[str, int]:
    """'HOST:PORT', 'HOST' or ':PORT' -> (host, port); IPv6 as '[::1]:5060'."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    if port and not port.isdigit():
        raise ValueError(f"{text!r}: the port must be a number")
    return host or "0.0.0.0", int(port) if port else default_port


@dataclass(slots=True)
class ServerConfig:
    sip_host: str = "0.0.0.0"
    sip_port: int = 5060
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    data_dir: Path = Path("switchboard-data")
    # SIP over TLS (RFC 3261 s26.3.1): a listener when a certificate is given, and
    # the CA bundle that trunks' certificates are checked against (None: the
    # system's, or $SSL_CERT_FILE).
    tls_host: str = ""
    tls_port: int = 0
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str | None = None
    # SIP TCP/TLS connection limits (engine.connlimit): per source, global, deadlines.
    limits: StreamLimits = field(default_factory=StreamLimits)
    # The receive queue's overload control (engine.overload).
    overload: OverloadConfig = field(default_factory=OverloadConfig)
    # This process's name among the nodes sharing the store ("" : host:port).
    node_id: str = ""


class _UDP(asyncio.DatagramProtocol):
    def __init__(self, server: Server) -> None:
        self.server = server

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.server.receive(data, (addr[0], addr[1]), "udp")

    def error_received(self, exc: Exception) -> None:
        log.debug("udp error", error=str(exc))


class Server:
    """One running engine: UDP+TCP SIP on one port, admin HTTP, store write-through."""

    def __init__(self, engine: Engine, store: Store, config: ServerConfig) -> None:
        self.engine = engine
        self.store = store
        self.config = config
        self.udp: asyncio.DatagramTransport | None = None
        self.tcp: asyncio.base_events.Server | None = None
        self.http: web.AppRunner | None = None
        self.connections: dict[Addr, asyncio.StreamWriter] = {}
        self.tls: socket.socket | None = None  # the TLS listener (accepted by _tls_accept)
        self._tls_task: asyncio.Task[None] | None = None
        self._server_tls: ssl.SSLContext | None = None
        self.streams = StreamPolicy(config.limits)
        self._stream_ids = itertools.count(1)
        # What closes an admitted stream the policy sheds: its transport, or the task
        # of a TLS handshake in progress.
        self._stream_handles: dict[int, asyncio.Transport | asyncio.Task[None]] = {}
        self._stream_log = RateLog()
        self._trust_directory: object = None
        self._trust_at = 0.0
        self._connecting: dict[Addr, list[bytes]] = {}  # outbound streams being opened
        self._client_tls: ssl.SSLContext | None = None
        self._stream_tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.link = StoreLink(store, engine.metrics)  # writes behind; the store's ups and downs
        self._takeover_at = 0.0
        # Since when the store has answered every sync and heartbeat (None: it failed
        # last time): a node judges others dead only after DEAD_AFTER_SECONDS of that.
        self._store_ok_since: float | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.stopped = asyncio.Event()
        self._revision = 0
        self._vm_revision = 0
        self.node_id = config.node_id
        self._binding_revision = 0  # the first sync reads every other node's binding
        self._started_wall = time.time()
        self._heartbeat_at = 0.0
        self._purged_at = time.monotonic()
        system = engine.directory.system
        self.media = MediaService(f"{system.rtp_port_min}-{system.rtp_port_max}",
                                  host=config.sip_host or "0.0.0.0")
        self._endpoints: dict[tuple[str, str], MediaEndpoint] = {}  # facing the caller
        self.calls_media = CallMedia(self.media, config.data_dir, self._screened)
        self.ivr_media = IvrMedia(
            self.media, config.data_dir, self._endpoints.get,
            lambda call, digit: self._apply(self.engine.ivr_digit(call, digit,
                                                                  time.monotonic())),
            lambda call, gen: self._apply(self.engine.ivr_prompt_done(call, gen,
                                                                      time.monotonic())))
        self._recorders: dict[tuple[str, str], Recorder] = {}
        self._media_tasks: set[asyncio.Task[None]] = set()
        self.overload = Overload(
            config.overload, engine.metrics, retransmits=self._retransmits,
            is_known=lambda source: self.streams.trusted(source[0]),
            rng=random.Random(), oc_seq_base=time.time() - time.monotonic())
        self._draining: asyncio.Handle | None = None

    # -- lifecycle -------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.config
        family = socket.AF_INET6 if ":" in cfg.sip_host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        sock.bind((cfg.sip_host, cfg.sip_port))
        transport, _ = await loop.create_datagram_endpoint(lambda: _UDP(self), sock=sock)
        self.udp = transport
        bound_port = sock.getsockname()[1]
        self.tcp = await asyncio.start_server(self._tcp_client, cfg.sip_host, bound_port,
                                              reuse_address=True, backlog=LISTEN_BACKLOG)
        if cfg.tls_cert:
            server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            server_tls.load_cert_chain(cfg.tls_cert, cfg.tls_key or None)
            self._server_tls = server_tls
            self.tls = _listen(cfg.tls_host or cfg.sip_host, cfg.tls_port)
            self._tls_task = asyncio.create_task(self._tls_accept(self.tls))
            cfg.tls_port = self.tls.getsockname()[1]
            self.engine.tls_port = cfg.tls_port
        self.config.sip_port = bound_port
        self.engine.port = bound_port
        app = web.Application(client_max_size=HTTP_MAX_BODY, middlewares=[_handler_deadline])
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        admin_api.setup(app, self)
        self.http = web.AppRunner(app, access_log=None, keepalive_timeout=HTTP_IDLE_SECONDS,
                                  max_line_size=HTTP_MAX_LINE, max_field_size=HTTP_MAX_LINE,
                                  max_headers=HTTP_MAX_HEADERS, handler_cancellation=True)
        await self.http.setup()
        site = web.TCPSite(self.http, cfg.http_host, cfg.http_port)
        await site.start()
        self._refresh_trust(time.monotonic())
        self._revision = await self.store.revision()
        self.engine.set_statuses(await self.store.load_status_overrides())
        self._vm_revision = await self.store.voicemail_revision()
        self._apply(self.engine.set_mwi_counts(await self.store.voicemail_counts(),
                                               time.monotonic()))
        if not self.node_id:
            self.node_id = default_node_id(bound_port)
        self.engine.node_id = self.node_id
        self.link.node_id = self.node_id
        await self._sync_bindings()
        await self._heartbeat(time.monotonic())
        # Calls this node held when it last died (killed, and back before another node
        # noticed): nobody holds them now; their parties get a BYE.
        left = await self.store.claim_own_dialogs(self.node_id, time.time())
        if left:
            self._end_dialogs(Takeover((), tuple(left)), previous_run=True)
            await self.store.write_dialogs([], [r.id for r in left])
        self._tasks.append(asyncio.create_task(self.link.run()))
        self._tasks.append(asyncio.create_task(self._share_bindings()))
        self._schedule()  # trunks that register start at once
        self._tasks.append(asyncio.create_task(self._housekeeping()))
        self._tasks.append(asyncio.create_task(self._watch_lag()))
        log.info("serving", sip=f"{cfg.sip_host}:{bound_port}",
                 transports="udp,tcp" + (f",tls:{cfg.tls_port}" if self.tls else ""),
                 http=f"{cfg.http_host}:{cfg.http_port}",
                 domain=self.engine.directory.system.domain,
                 users=len(self.engine.directory.users),
                 registrations=self.engine.registrar.count(), node=self.node_id,
                 parser="c" if grammar.SPEEDUPS is not None else "python",
                 max_tcp_connections=cfg.limits.max_connections,
                 tcp_per_source=cfg.limits.per_source,
                 tcp_first_message_seconds=cfg.limits.first_message_seconds,
                 max_queue_ms=round(cfg.overload.max_queue * 1000),
                 source_rate=cfg.overload.source_rate,
                 retry_after="{}-{}".format(*cfg.overload.retry_after))

    async def stop(self) -> None:
        self._apply(self.engine.shutdown(time.monotonic()))  # hang up live calls
        if self._timer is not None:
            self._timer.cancel()
        if self.udp is not None:
            self.udp.close()
        if self._tls_task is not None:
            self._tls_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tls_task
        if self.tls is not None:
            self.tls.close()
        if self.tcp is not None:
            self.tcp.close()
            for writer in list(self.connections.values()):
                writer.close()
            for handle in list(self._stream_handles.values()):
                if isinstance(handle, asyncio.Task):
                    handle.cancel()  # a TLS handshake in progress
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.tcp.wait_closed(), 2.0)
        left = await self.link.flush(STOP_FLUSH_SECONDS)
        if left:
            log.error("store changes not written at stop", count=left, store_up=self.link.up)
        for recorder in list(self._recorders.values()):
            recorder.stop("hangup")  # messages being left are kept
        if self._media_tasks:
            await asyncio.wait(set(self._media_tasks), timeout=2.0)
        await self.calls_media.close_all()
        await self.media.close_all()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.link.close()
        try:
            if self.link.up:
                await self.store.remove_node(self.node_id)
        except Exception as exc:
            if not connection_lost(exc):
                log.exception("node row not removed", node=self.node_id)
        if self.http is not None:
            await self.http.cleanup()
        log.info("stopped")
        self.stopped.set()

    # -- SIP input -------------------------------------------------------------
    def receive(self, data: bytes, source: Addr, transport: str) -> None:
        """A message from a socket: into the receive queue (or answered at once by the
        overload policy); the queue is served soon after, by class."""
        overload = self.overload
        overload.offer(data, source, transport, time.monotonic())
        if overload.outbox:
            self._flush_overload()
        if overload.queued and self._draining is None:
            self._draining = asyncio.get_running_loop().call_soon(self._drain)

    def _drain(self) -> None:
        """Serve the receive queue for one slice, highest class first."""
        self._draining = None
        overload = self.overload
        start = time.monotonic()
        overload.sweep(start)
        now = start
        while now - start < DRAIN_SECONDS:
            item = overload.pop(now)
            if item is None:
                break
            head = item.head
            self.handle(item.data, item.source, item.transport,
                        head.msg if head is not None else None)
            now = time.monotonic()
        if overload.outbox:
            self._flush_overload()
        if overload.queued:
            self._draining = asyncio.get_running_loop().call_soon(self._drain)

    def _flush_overload(self) -> None:
        overload = self.overload
        for data, addr, transport in overload.outbox:
            self._send(Send(data, addr, transport))
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

    async def _watch_lag(self) -> None:
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
                self._flush_overload()

    def handle(self, data: bytes, source: Addr, transport: str,
               parsed: Request | Response | None = None) -> None:
        try:
            outcome = self.engine.datagram(data, source, transport, time.monotonic(), parsed)
        except Exception:  # never let one message take the listener down
            self.engine.metrics.errors.inc()
            log.exception("message handling failed", source=f"{source[0]}:{source[1]}")
            return
        self._apply(outcome)

    def _apply(self, outcome: Outcome) -> None:
        for send in outcome.sends:
            self._send(send)
        for action in outcome.media:
            try:
                self._media_action(action)
            except Exception:  # one call's media must not take the listener down
                self.engine.metrics.errors.inc()
                log.exception("media action failed", action=type(action).__name__,
                              call_id=action.call[0])
        for b in outcome.saved:
            self.link.save_binding(b)
            self.streams.trust(_source_ip(b.source))
        for b in outcome.removed:
            self.link.delete_binding(b)
        saved, ended = self.engine.calls.take_records()
        for record in saved:
            self.link.save_dialog(record)
        for record_id in ended:
            self.link.end_dialog(record_id)
        self._schedule()

    def _send(self, send: Send) -> None:
        if send.transport == "udp":
            if self.udp is not None:
                self.udp.sendto(send.data, send.addr)
            return
        writer = self.connections.get(send.addr)
        if writer is not None and not writer.is_closing():
            writer.write(send.data)
            return
        pending = self._connecting.get(send.addr)
        if pending is not None:
            pending.append(send.data)
            return
        if send.data.startswith(b"SIP/2.0 "):
            log.info("no connection for response", dest=f"{send.addr[0]}:{send.addr[1]}")
            return
        # A request to a peer we have no stream to (a trunk over TCP or TLS): open one
        # (RFC 3261 s18.1.1); what is sent meanwhile waits for it.
        self._connecting[send.addr] = [send.data]
        task = asyncio.create_task(self._connect(send.addr, send.transport))
        self._stream_tasks.add(task)
        task.add_done_callback(self._stream_tasks.discard)

    async def _connect(self, addr: Addr, transport: str) -> None:
        tls = transport == "tls"
        try:
            if tls and self._client_tls is None:
                self._client_tls = ssl.create_default_context(cafile=self.config.tls_ca)
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                addr[0], addr[1], ssl=self._client_tls if tls else None,
                server_hostname=addr[0] if tls else None), CONNECT_SECONDS)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            dropped = len(self._connecting.pop(addr, []))
            log.warning("connection failed", dest=f"{addr[0]}:{addr[1]}", transport=transport,
                        error=str(exc) or type(exc).__name__, messages_dropped=dropped)
            return
        for data in self._connecting.pop(addr, []):
            writer.write(data)
        conn = self._admit(addr, transport, outbound=True)
        if conn is not None:
            await self._stream(reader, writer, addr, transport, conn)

    def _schedule(self) -> None:
        wake = self.engine.next_wakeup()
        if wake is None or (self._timer_at is not None and self._timer_at <= wake):
            return
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        delay = max(0.0, wake - time.monotonic())
        self._timer_at = wake
        self._timer = loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = None
        try:
            outcome = self.engine.timer(time.monotonic())
        except Exception:
            self.engine.metrics.errors.inc()
            log.exception("timer handling failed")
            outcome = Outcome()
        self._apply(outcome)

    # -- SIP over TCP and TLS --------------------------------------------------------
    async def _tcp_client(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        addr = (peer[0], peer[1])
        conn = self._admit(addr, "tcp")
        if conn is None:
            writer.transport.abort()  # a reset: nothing to flush, no TIME_WAIT kept
            return
        await self._stream(reader, writer, addr, "tcp", conn)

    async def _tls_accept(self, listener: socket.socket) -> None:
        """Accept TLS connections as plain sockets: each is admitted (or refused) by
        its address before its handshake starts, so connections still handshaking
        count against their source's limit and the first-message deadline covers
        the handshake."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, peer = await loop.sock_accept(listener)
            except OSError as exc:  # out of descriptors: the kernel queue waits
                if self._stream_log.hit(("*", "accept"), time.monotonic()):
                    log.warning("tls accept failed", error=str(exc))
                await asyncio.sleep(0.1)
                continue
            addr = (peer[0], peer[1])
            conn = self._admit(addr, "tls")
            if conn is None:
                _reset(sock)
                continue
            task = asyncio.create_task(self._tls_client(sock, addr, conn))
            self._stream_handles[conn] = task
            self._stream_tasks.add(task)
            task.add_done_callback(self._stream_tasks.discard)
            # Shed before it ran, the socket is still ours to close; once the loop has
            # it, close() only drops this reference (the transport closes the fd).
            task.add_done_callback(_closer(sock))

    async def _tls_client(self, sock: socket.socket, addr: Addr, conn: int) -> None:
        """The handshake of an admitted TLS connection, within its first-message
        deadline; then framed messages in, as over TCP."""
        assert self._server_tls is not None
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        left = max(0.001, (self.streams.deadline(conn) or 0.0) - time.monotonic())
        try:
            tls, _ = await loop.connect_accepted_socket(
                lambda: protocol, sock, ssl=self._server_tls, ssl_handshake_timeout=left)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            self._stream_handles.pop(conn, None)
            if self.streams.known(conn):
                self.streams.closed(conn)
                self._shed_count(addr[0], "tls", SHED_HANDSHAKE, time.monotonic(),
                                 str(exc) or type(exc).__name__)
                self._gauge()
            return
        writer = asyncio.StreamWriter(tls, protocol, reader, loop)
        await self._stream(reader, writer, addr, "tls", conn)

    def _admit(self, addr: Addr, transport: str, outbound: bool = False) -> int | None:
        """A new stream, by the connection policy: its id, or None (the caller closes
        it at once). Connections shed to make room for it are closed here."""
        now = time.monotonic()
        conn = next(self._stream_ids)
        admission = self.streams.admit(conn, addr[0], transport, now, outbound=outbound)
        for shed in admission.shed:
            victim = self._stream_handles.pop(shed.conn, None)
            if isinstance(victim, asyncio.Task):
                victim.cancel()  # its handshake: the transport is closed with it
            elif victim is not None:
                if shed.valid:
                    victim.close()
                else:
                    victim.abort()  # nothing to flush: a reset, and no TIME_WAIT kept
            self._shed_count(shed.source, shed.transport, SHED_ROOM, now)
        if not admission.admitted:
            self.engine.metrics.tcp_refused.labels(transport, admission.refused).inc()
            if self._stream_log.hit((addr[0], "refused:" + admission.refused), now):
                log.warning("tcp connection refused", source=addr[0], transport=transport,
                            reason=admission.refused, held=self.streams.held_by(addr[0]),
                            per_source=self.config.limits.per_source,
                            cap=self.config.limits.max_connections,
                            note="more from this source are counted, logged once a minute")
            return None
        self._gauge()
        return conn

    def _shed_count(self, source: str, transport: str, reason: str, now: float,
                    error: str = "") -> None:
        self.engine.metrics.tcp_shed.labels(transport, reason).inc()
        if self._stream_log.hit((source, "shed:" + reason), now):
            log.warning("tcp connection closed by the limits", source=source,
                        transport=transport, reason=reason, **({"error": error} if error else {}),
                        note="more from this source are counted, logged once a minute")

    def _gauge(self) -> None:
        gauge = self.engine.metrics.tcp_connections
        for transport in ("tcp", "tls"):
            gauge.labels(transport).set(self.streams.count(transport))

    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      addr: Addr, transport: str, conn: int) -> None:
        """One admitted TCP or TLS connection, accepted or opened: framed messages in,
        until its deadline (the first message's, then the idle timeout) passes."""
        self._stream_handles[conn] = cast(asyncio.Transport, writer.transport)
        self.connections[addr] = writer
        streams = self.streams
        framer = StreamFramer(MAX_STREAM_MESSAGE)
        try:
            while True:
                deadline = streams.deadline(conn)
                if deadline is None:
                    break  # closed for a newcomer
                left = deadline - time.monotonic()
                if left <= 0:
                    if not streams.valid(conn):
                        streams.closed(conn)
                        self._shed_count(addr[0], transport, SHED_FIRST_MESSAGE,
                                         time.monotonic())
                    break
                try:
                    data = await asyncio.wait_for(reader.read(65536), left)
                except TimeoutError:
                    continue  # the deadline is checked (it may have moved) above
                if not data:
                    break
                now = time.monotonic()
                streams.touched(conn, now)
                try:
                    items = framer.feed(data)
                except ParseError as exc:
                    self.engine.metrics.parse_errors.labels(transport).inc()
                    log.info("stream unframeable, closing", source=f"{addr[0]}:{addr[1]}",
                             transport=transport, reason=exc.reason)
                    break
                for item in items:
                    if item == b"\r\n\r\n":
                        writer.write(b"\r\n")  # RFC 5626 s3.5.1 keep-alive pong
                        continue
                    if not streams.valid(conn) and _well_formed(item):
                        streams.delivered(conn, now)
                    self.receive(item, addr, transport)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            if self.connections.get(addr) is writer:
                del self.connections[addr]
            streams.closed(conn)
            self._stream_handles.pop(conn, None)
            self._gauge()
            writer.close()

    def _refresh_trust(self, now: float) -> None:
        """Sources that may exceed the per-source limit and are never closed for a
        stranger: trunks' ``inbound_from`` networks and addresses holding bindings."""
        directory = self.engine.directory
        wall = time.time()
        ips = {_source_ip(b.source) for b in self.engine.registrar.all() if b.expires_at > wall}
        self.streams.set_trusted(ips, [cidr for trunk in directory.trunks
                                       for cidr in trunk.inbound_from])
        self._trust_directory = directory
        self._trust_at = now

    def _flush_stream_log(self, now: float) -> None:
        for (source, what), count in self._stream_log.flush(now):
            event, _, reason = what.partition(":")
            log.warning("tcp connections " + ("refused" if event == "refused"
                                               else "closed by the limits"),
                        source=source, reason=reason, more=count,
                        seconds=self._stream_log.window)

    # -- media (voicemail) ---------------------------------------------------------
    def _media_action(self, action: MediaCommand) -> None:
        if isinstance(action, BridgeMedia):
            self.calls_media.apply(action)
        elif isinstance(action, IvrPlay | IvrQuiet):
            self.ivr_media.apply(action)
        elif isinstance(action, OpenMedia):
            self._spawn(self._open_media(action.call, action.bridge))
        elif isinstance(action, StartVoicemail):
            # A screened or early-media leg is over; or, a called party transferred by
            # its caller leaves the message from the endpoint facing it.
            kept = self.calls_media.detach(action.call, keep_callee=action.callee_side)
            if action.callee_side and kept is not None:
                self._endpoints[action.call] = kept  # the caller's side is closed
            self._spawn(self._voicemail(action))
        elif isinstance(action, StartMailbox):
            self._spawn(self._mailbox(action))
        elif isinstance(action, UpdateMedia):
            endpoint = self._endpoints.get(action.call)
            if endpoint is not None and not endpoint.closed:
                endpoint.configure(action.negotiated)
        elif isinstance(action, StopMedia):
            self.ivr_media.close(action.call)
            recorder = self._recorders.get(action.call)
            if recorder is not None:
                recorder.stop("hangup")  # the voicemail task saves and closes
            else:
                self.calls_media.close(action.call)
                endpoint = self._endpoints.pop(action.call, None)
                if endpoint is not None:
                    endpoint.close()

    def _screened(self, call: tuple[str, str], accepted: bool) -> None:
        self._apply(self.engine.screened(call, accepted, time.monotonic()))

    def _spawn(self, work: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(work)
        self._media_tasks.add(task)
        task.add_done_callback(self._media_tasks.discard)

    async def _open_media(self, call: tuple[str, str], bridge: bool) -> None:
        """One endpoint facing the caller; with ``bridge`` a second facing the callees."""
        opened: list[MediaEndpoint] = []
        try:
            for _ in range(2 if bridge else 1):
                opened.append(await self.media.open_endpoint())
        except MediaError as exc:
            for endpoint in opened:
                endpoint.close()
            self._apply(self.engine.media_failed(call, str(exc), time.monotonic()))
            return
        self._endpoints[call] = opened[0]
        if bridge:
            self.calls_media.add(call, call[0], opened[0], opened[1])
        self._apply(self.engine.media_ready(call, tuple(e.rtp_port for e in opened),
                                            time.monotonic()))

    async def _voicemail(self, job: StartVoicemail) -> None:
        """Greeting, beep, record; the message goes to the store; then hang up."""
        endpoint = self._endpoints.get(job.call)
        if endpoint is None:
            return
        try:
            endpoint.configure(job.negotiated)
            clips: list[Clip] = []
            if job.greeting != "default":
                try:  # a greeting that cannot be played must not lose the message
                    clips.append(load_wav(self.calls_media.resolve(job.greeting)))
                except WavError as exc:
                    log.warning("greeting unusable, playing the beep only", box=job.box,
                                error=str(exc))
            clips.append(Pcm(beep()))
            player = await self.media.play(endpoint, clips)
            await player.wait()
            if endpoint.closed:
                return  # the caller hung up during the greeting
            message_id = uuid.uuid4().hex
            folder = mailbox_dir(self.config.data_dir, job.box)
            folder.mkdir(parents=True, exist_ok=True)
            recorder = self.media.record(endpoint, folder / f"{message_id}.wav",
                                         max_seconds=job.max_seconds)
            self._recorders[job.call] = recorder
            recording = await recorder.wait()
            if recording.duration >= MIN_MESSAGE_SECONDS:
                message = VoicemailMessage(
                    id=message_id, box=job.box, caller=job.caller, time=time.time(),
                    duration=recording.duration, path=str(recording.path.resolve()))
                await self.link.save_voicemail(message)
                log.info("voicemail left", call_id=job.call_id, box=job.box, id=message_id,
                         seconds=round(recording.duration, 1), ended_by=recording.reason)
                self._email_voicemail(message)
            else:
                recording.path.unlink(missing_ok=True)
            if recording.reason != "hangup":
                self._apply(self.engine.hangup(job.call, time.monotonic()))
        except Exception:
            log.exception("voicemail failed", call_id=job.call_id, box=job.box)
            self._apply(self.engine.hangup(job.call, time.monotonic()))
        finally:
            self._recorders.pop(job.call, None)
            gone = self._endpoints.pop(job.call, None)
            if gone is not None:
                gone.close()

    async def _mailbox(self, job: StartMailbox) -> None:
        """The mailbox menu for its owner (PIN, listen, delete), then hang up."""
        from engine.services.mailbox_access import serve_mailbox

        endpoint = self._endpoints.get(job.call)
        directory = self.engine.directory
        user = directory.user(job.box)
        if endpoint is None:
            return
        try:
            if user is None:
                raise LookupError(f"mailbox {job.box} has no user")
            endpoint.configure(job.negotiated)
            await serve_mailbox(self.media, endpoint, self.store, user,
                                tz=directory.timezone_for(user))
        except Exception:
            log.exception("mailbox session failed", call_id=job.call_id, box=job.box)
        finally:
            if not endpoint.closed:
                self._apply(self.engine.hangup(job.call, time.monotonic()))
            gone = self._endpoints.pop(job.call, None)
            if gone is not None:
                gone.close()

    def _email_voicemail(self, message: VoicemailMessage) -> None:
        """Email the message in the background per the mailbox's ``voicemail.email``,
        its times in the owner's time zone (their department's, as the mailbox menu)."""
        directory = self.engine.directory
        user = directory.user(message.box)
        if user is not None and user.voicemail.email != "none":
            self._spawn(email_voicemail(self.store, directory.system, user, message,
                                        tz=directory.timezone_for(user)))

    # -- background work -----------------------------------------------------------
    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._apply(self.engine.expire(time.time()))
            now = time.monotonic()
            self._flush_stream_log(now)
            if (now - self._trust_at >= TRUST_REFRESH_SECONDS
                    or self.engine.directory is not self._trust_directory):
                self._refresh_trust(now)
            try:
                await self.link.attempt("reload", self._reload)
            except Exception:
                log.exception("directory reload failed; serving the previous snapshot")

    async def _share_bindings(self) -> None:
        """Read what the other nodes registered, and heartbeat; off the hot path."""
        while True:
            await asyncio.sleep(BINDING_SYNC_SECONDS)
            try:
                if not await self.link.attempt("binding sync", self._share_once):
                    self._store_ok_since = None
            except Exception:
                self._store_ok_since = None
                log.exception("binding sync failed; keeping the bindings held")

    def _end_dialogs(self, took: Takeover, previous_run: bool = False) -> None:
        """BYE both parties of each call in ``took`` (engine.calls.records), and say so
        once per node whose calls they were."""
        self._apply(self.engine.end_dialogs(took.records, time.monotonic()))
        per_node: dict[str, int] = dict.fromkeys(took.dead, 0)
        for record in took.records:
            per_node[record.node] = per_node.get(record.node, 0) + 1
        for node, calls in sorted(per_node.items()):
            if previous_run:
                log.warning("calls of this node's previous run ended", node=node, calls=calls)
            else:
                log.warning("node dead: its calls ended", node=node, calls=calls,
                            by=self.node_id, heartbeat_missing=node in took.dead,
                            dead_after_seconds=DEAD_AFTER_SECONDS)

    async def _share_once(self) -> None:
        await self._sync_bindings()
        now = time.monotonic()
        await self._heartbeat(now)
        if self._store_ok_since is None:
            self._store_ok_since = now
        # Judge the others only after DEAD_AFTER_SECONDS of store access without a
        # break: back from a store outage, every other node's heartbeat looks old
        # until it has beaten again, and none of them is dead for that.
        if now - self._takeover_at >= TAKEOVER_SECONDS \
                and now - self._store_ok_since >= DEAD_AFTER_SECONDS:
            self._takeover_at = now
            wall = time.time()
            took = await self.store.take_over(
                self.node_id, wall - DEAD_AFTER_SECONDS, wall, wall - RECLAIM_SECONDS)
            if took.dead or took.records:
                self._end_dialogs(took)
                await self.store.write_dialogs([], [r.id for r in took.records])
        if now - self._purged_at >= BINDING_PURGE_PERIOD:
            self._purged_at = now
            await self.store.purge_expired_bindings(time.time() - BINDING_PURGE_GRACE)

    async def _sync_bindings(self) -> None:
        """Bindings other nodes saved or deleted since the last look, into the registrar:
        the next call to one of those phones goes where it registered last."""
        changes = await self.store.bindings_since(self._binding_revision,
                                                  exclude_node=self.node_id)
        self._binding_revision = changes.revision
        if changes.saved or changes.deleted:
            self.engine.registrar.merge(changes.saved, changes.deleted, time.time())
            log.debug("bindings from other nodes", saved=len(changes.saved),
                      deleted=len(changes.deleted), revision=changes.revision)

    async def _heartbeat(self, now: float) -> None:
        if now - self._heartbeat_at < HEARTBEAT_SECONDS and self._heartbeat_at:
            return
        self._heartbeat_at = now
        engine = self.engine
        await self.store.heartbeat(Node(
            id=self.node_id, address=f"{engine.advertise}:{engine.port}",
            started_at=self._started_wall, last_seen=time.time(),
            calls=engine.calls.active_count, registrations=engine.registrar.count()))

    async def _reload(self) -> None:
        """A directory apply or a status change (another process) reaches the next call;
        a message left, read or deleted (here or by the CLI) reaches the phones' lamps."""
        vm_revision = await self.store.voicemail_revision()
        if vm_revision != self._vm_revision:
            self._vm_revision = vm_revision
            self._apply(self.engine.set_mwi_counts(await self.store.voicemail_counts(),
                                                   time.monotonic()))
        revision = await self.store.revision()
        if revision == self._revision:
            return
        directory = await self.store.load_directory()
        statuses = await self.store.load_status_overrides()
        self._revision = revision
        if directory is None:
            return
        self.engine.set_directory(directory)
        self.engine.set_statuses(statuses)
        self._schedule()
        log.info("directory reloaded", revision=revision, users=len(directory.users),
                 live_statuses=len(statuses))

    # -- admin HTTP ----------------------------------------------------------------------
    async def _metrics(self, request: web.Request) -> web.Response:
        self.engine.expire(time.time())
        self.engine.metrics.asyncio_tasks.set(len(asyncio.all_tasks()))
        return web.Response(body=self.engine.metrics.render(),
                            content_type="text/plain", charset="utf-8")

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "registrations": self.engine.registrar.count(),
                                  "transactions": len(self.engine.transactions),
                                  "store": "up" if self.link.up else "down",
                                  "store_queued": len(self.link.pending)})


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket (non-blocking) on ``host``:``port``."""
    family, kind, proto, _, sockaddr = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _closer(sock: socket.socket) -> Callable[[object], None]:
    return lambda _: sock.close()


def _reset(sock: socket.socket) -> None:
    """Close with a reset (SO_LINGER 0): nothing to flush, no TIME_WAIT kept."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _source_ip(source: str) -> str:
    """The address of a binding's ``source``: 'tcp:127.0.0.1:5062' -> '127.0.0.1'
    ('udp:::1:5062' -> '::1')."""
    return source.partition(":")[2].rpartition(":")[0]


def _well_formed(item: bytes) -> bool:
    """A framed stream message parses: its connection has delivered a SIP message."""
    try:
        parse(item, stream=True)
    except ParseError:
        return False
    return True


@web.middleware
async def _handler_deadline(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every admin request is answered within HTTP_HANDLER_SECONDS (else 504)."""
    async with asyncio.timeout(HTTP_HANDLER_SECONDS):
        return await handler(request)


def raise_open_file_limit() -> None:
    """The soft open-file limit up to the hard one: every SIP TCP/TLS connection is a
    descriptor, and a common soft limit (1024) is below the connection cap."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and soft != resource.RLIM_INFINITY:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("open-file limit not raised", soft=soft, hard=hard, error=str(exc))
            return
    log.info("open-file limit", was=soft, now=resource.getrlimit(resource.RLIMIT_NOFILE)[0])


async def serve(engine: Engine, store: Store, config: ServerConfig) -> None:
    """Run until SIGTERM/SIGINT, then shut down cleanly."""
    raise_open_file_limit()
    server = Server(engine, store, config)
    await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await server.stop()
