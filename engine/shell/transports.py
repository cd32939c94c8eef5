"""SIP's sockets: UDP, TCP and TLS listeners, outbound streams, connection limits.

:class:`Transports` owns every socket and stream of the SIP side. Bytes in go to
the ``receive`` callback it is given (the receive queue); bytes out come in as
:class:`~engine.sip.transaction.Send`. Which stream may be held, and which is
closed to make room, is decided by :class:`~engine.shell.connlimit.StreamPolicy`
(sans-I/O); this module applies its answers (closes sockets, counts, logs).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import ssl
import struct
import time
from collections.abc import Callable
from typing import cast

import structlog

from engine.core import Engine
from engine.shell.config import ServerConfig
from engine.shell.connlimit import (
    SHED_FIRST_MESSAGE,
    SHED_HANDSHAKE,
    SHED_ROOM,
    RateLog,
    StreamPolicy,
)
from engine.sip.message import ParseError, StreamFramer, parse
from engine.sip.transaction import Addr, Send
from provisioning.model import Binding

__all__ = ["LISTEN_BACKLOG", "Receive", "Transports", "source_ip"]

log = structlog.get_logger("switchboard.app")

CONNECT_SECONDS = 10.0  # an outbound TCP/TLS connection (with its handshake)
MAX_STREAM_MESSAGE = 256 * 1024
LISTEN_BACKLOG = 1024  # a burst of connections waits in the kernel, not refused by it
TRUST_REFRESH_SECONDS = 10.0  # registered sources re-read from the registrar

Receive = Callable[[bytes, Addr, str], None]
"""A message off a socket: (data, source, transport)."""


class _UDP(asyncio.DatagramProtocol):
    def __init__(self, receive: Receive) -> None:
        self.receive = receive

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.receive(data, (addr[0], addr[1]), "udp")

    def error_received(self, exc: Exception) -> None:
        log.debug("udp error", error=str(exc))


class Transports:
    """UDP+TCP SIP on one port, TLS on another, and the streams opened to peers."""

    def __init__(self, engine: Engine, config: ServerConfig, receive: Receive) -> None:
        self.engine = engine
        self.config = config
        self.receive = receive
        self.udp: asyncio.DatagramTransport | None = None
        self.tcp: asyncio.base_events.Server | None = None
        self.connections: dict[Addr, asyncio.StreamWriter] = {}
        self.tls: socket.socket | None = None  # the TLS listener (accepted by _tls_accept)
        self._tls_task: asyncio.Task[None] | None = None
        self._server_tls: ssl.SSLContext | None = None
        self.streams = StreamPolicy(config.limits)
        # The edge carries everyone behind it over a few connections: no per-source cap
        # on it, and nothing closed for a stranger (engine.shell.connlimit).
        self.streams.set_edges(ip for ip, _ in engine.edge.edges)
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

    # -- lifecycle -------------------------------------------------------------
    async def start(self) -> None:
        """Bind UDP and TCP on ``sip_host:sip_port`` (0: any free port) and TLS when a
        certificate is configured; the bound ports are written back to the config."""
        loop = asyncio.get_running_loop()
        cfg = self.config
        family = socket.AF_INET6 if ":" in cfg.sip_host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        sock.bind((cfg.sip_host, cfg.sip_port))
        receive = self.receive
        transport, _ = await loop.create_datagram_endpoint(lambda: _UDP(receive), sock=sock)
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
        cfg.sip_port = bound_port
        self.refresh_trust(time.monotonic())

    async def close(self) -> None:
        """Close the listeners and every stream (handshakes in progress too)."""
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

    def housekeeping(self, now: float) -> None:
        """Once a second: rate-limited log lines out; trusted sources re-read when
        stale or when the directory changed."""
        self._flush_stream_log(now)
        if (now - self._trust_at >= TRUST_REFRESH_SECONDS
                or self.engine.directory is not self._trust_directory):
            self.refresh_trust(now)

    # -- SIP output ------------------------------------------------------------
    def send(self, send: Send) -> None:
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

    # -- who is trusted --------------------------------------------------------------
    def trust(self, binding: Binding) -> None:
        """A phone registered: the address it registered from is trusted."""
        self.streams.trust(self._binding_ip(binding))

    def _binding_ip(self, binding: Binding) -> str:
        """Where ``binding``'s phone is: its source, or behind an edge the address the
        edge's Path names (the edge's own address is trusted anyway)."""
        return self.engine.edge.registered_ip(source_ip(binding.source), binding.path)

    def refresh_trust(self, now: float) -> None:
        """Sources that may exceed the per-source limit and are never closed for a
        stranger: trunks' ``inbound_from`` networks and addresses holding bindings."""
        directory = self.engine.directory
        wall = time.time()
        ips = {self._binding_ip(b) for b in self.engine.registrar.all() if b.expires_at > wall}
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


def source_ip(source: str) -> str:
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
