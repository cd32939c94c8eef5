"""The process: the engine and the shell's parts, composed.

Everything that decides is in :mod:`engine.core`. :class:`Server` wires the
shell's parts around it, as aioquic's asyncio protocol does around its QUIC
connection: receive (:mod:`~engine.shell.transports` -> the receive queue,
:mod:`~engine.shell.intake`), process (``Engine.datagram`` / ``Engine.timer``),
transmit (:meth:`Server.apply`: Sends to the sockets, media commands to
:mod:`~engine.shell.media_jobs`, binding changes and dialog records to
:mod:`~engine.shell.storesync`, which writes them behind through
:mod:`~engine.shell.storelink`), re-arm the timer (:mod:`~engine.shell.timer`).
Beside that, :mod:`~engine.shell.storesync` shares bindings with the other nodes
and ends a dead node's calls, :mod:`~engine.shell.reload` polls the store and
:mod:`~engine.shell.admin_http` serves metrics and the admin API.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import signal
import time

import structlog

from engine.core import Engine, Outcome
from engine.shell import admin_api
from engine.shell.admin_http import AdminHttp
from engine.shell.config import NODE_ID, ServerConfig, default_node_id, parse_hostport
from engine.shell.intake import Intake
from engine.shell.media_jobs import MediaJobs
from engine.shell.reload import Reloader
from engine.shell.storesync import StoreSync
from engine.shell.timer import Timer
from engine.shell.transports import Transports
from engine.sip.message import Request, Response, grammar
from engine.sip.transaction import Addr, Send
from provisioning.store import Store

__all__ = ["NODE_ID", "Server", "ServerConfig", "default_node_id", "parse_hostport",
           "raise_open_file_limit", "serve"]

log = structlog.get_logger("switchboard.app")


class Server:
    """One running engine: SIP on UDP, TCP and TLS, media, store sync, admin HTTP."""

    def __init__(self, engine: Engine, store: Store, config: ServerConfig) -> None:
        self.engine = engine
        self.store = store
        self.config = config
        self.stopped = asyncio.Event()
        self.timer = Timer(self._fire)
        # Receive: the sockets hand each message straight to the receive queue.
        self.intake = Intake(config.overload, engine, self.handle, self._send,
                             is_known=lambda source: self.transports.streams.trusted(source[0]))
        self.transports = Transports(engine, config, self.intake.receive)
        self.storesync = StoreSync(engine, store, config.node_id, self.apply,
                                   config.binding_poll_seconds)
        self.link = self.storesync.link  # writes behind; the store's ups and downs
        self.media_jobs = MediaJobs(engine, store, config.sip_host, config.data_dir, self.apply,
                                    self.link.save_voicemail)
        self.reloader = Reloader(engine, store, self.apply, self.rearm)
        self.http = AdminHttp(engine, self.link)
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle -------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.config
        await self.transports.start()
        if self.transports.tls is not None:
            self.engine.tls_port = cfg.tls_port
        self.engine.port = cfg.sip_port
        await self.reloader.load()
        await self.storesync.start(cfg.sip_port)
        self.rearm()  # trunks that register start at once
        self._tasks.append(asyncio.create_task(self._housekeeping()))
        self._tasks.append(asyncio.create_task(self.intake.watch_lag()))
        # Last: /healthz answering means the start is over (tests and deployments wait
        # for it, then may send SIGTERM, which is handled only once start returns).
        await self.http.start(cfg.http_host, cfg.http_port,
                              lambda app: admin_api.setup(app, self))
        log.info("serving", sip=f"{cfg.sip_host}:{cfg.sip_port}",
                 transports="udp,tcp" + (f",tls:{cfg.tls_port}" if self.transports.tls else ""),
                 http=f"{cfg.http_host}:{cfg.http_port}",
                 domain=self.engine.directory.system.domain,
                 users=len(self.engine.directory.users),
                 registrations=self.engine.registrar.count(), node=self.node_id,
                 edges=",".join(ip if port is None else f"{ip}:{port}"
                                for ip, port in self.engine.edge.edges),
                 parser="c" if grammar.SPEEDUPS is not None else "python",
                 max_tcp_connections=cfg.limits.max_connections,
                 tcp_per_source=cfg.limits.per_source,
                 tcp_first_message_seconds=cfg.limits.first_message_seconds,
                 max_queue_ms=round(cfg.overload.max_queue * 1000),
                 source_rate=cfg.overload.source_rate,
                 retry_after="{}-{}".format(*cfg.overload.retry_after))

    async def stop(self) -> None:
        self.apply(self.engine.shutdown(time.monotonic()))  # hang up live calls
        self.timer.cancel()
        await self.transports.close()
        await self.storesync.flush()
        await self.media_jobs.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.storesync.stop()
        await self.http.stop()
        log.info("stopped")
        self.stopped.set()

    @property
    def node_id(self) -> str:
        """This process's name among the nodes sharing the store."""
        return self.storesync.node_id

    # -- receive, process, transmit, re-arm --------------------------------------
    def handle(self, data: bytes, source: Addr, transport: str,
               parsed: Request | Response | None = None) -> None:
        """One message from the receive queue through the engine."""
        try:
            outcome = self.engine.datagram(data, source, transport, time.monotonic(), parsed)
        except Exception:  # never let one message take the listener down
            self.engine.metrics.errors.inc()
            log.exception("message handling failed", source=f"{source[0]}:{source[1]}")
            return
        self.apply(outcome)

    def _fire(self) -> None:
        try:
            outcome = self.engine.timer(time.monotonic())
        except Exception:
            self.engine.metrics.errors.inc()
            log.exception("timer handling failed")
            outcome = Outcome()
        self.apply(outcome)

    def apply(self, outcome: Outcome) -> None:
        """Carry out what the engine returned, then re-arm its timer."""
        send = self.transports.send
        for item in outcome.sends:
            send(item)
        for action in outcome.media:
            try:
                self.media_jobs.run(action)
            except Exception:  # one call's media must not take the listener down
                self.engine.metrics.errors.inc()
                log.exception("media action failed", action=type(action).__name__,
                              call_id=action.call[0])
        for b in outcome.saved:
            self.storesync.save(b)
            self.transports.trust(b)
        for b in outcome.removed:
            self.storesync.delete(b)
        self.storesync.take_records()  # dialog records written or ended by this input
        self.timer.arm(self.engine.next_wakeup())

    def _send(self, send: Send) -> None:
        self.transports.send(send)

    def rearm(self) -> None:
        """The engine's next deadline may be earlier than the timer's."""
        self.timer.arm(self.engine.next_wakeup())

    # -- background work -----------------------------------------------------------
    async def reload(self) -> None:
        """Apply what changed in the store now (an admin API write waits for it)."""
        await self.reloader.reload()

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.apply(self.engine.expire(time.time()))
            self.transports.housekeeping(time.monotonic())
            try:
                await self.link.attempt("reload", self.reloader.reload)
            except Exception:
                log.exception("directory reload failed; serving the previous snapshot")


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
