"""The engine's transaction user: what the engine does with each request.

Sans-I/O like the layers below it: :meth:`Engine.datagram` and friends take
bytes, the source and ``now`` and return :class:`Send` events (and binding
changes for the store). ``engine.shell`` owns the sockets, the clock and the
store; this module owns the decisions, so it is tested without sockets.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Protocol

import structlog

from engine.calls import Calls
from engine.calls.events import MEDIA_COMMANDS, MediaCommand
from engine.calls.headers import SERVER, Local
from engine.calls.records import bye_requests
from engine.metrics import Metrics
from engine.services.dialoginfo import DialogBook, dialog_info, pidf
from engine.services.lamps import ClusterLamps
from engine.services.mwi import EVENT as MWI_EVENT
from engine.services.mwi import MessageWaiting
from engine.services.subscriptions import (
    DIALOG,
    PACKAGES,
    PRESENCE,
    Document,
    Subscription,
    Subscriptions,
)
from engine.services.trunkreg import TrunkRegistrar
from engine.sip.auth import AuthResult, DigestAuthenticator, FailureLimiter
from engine.sip.edge import EdgeTrust
from engine.sip.message import (
    ParseError,
    Request,
    Response,
    check_request,
    make_response,
    parse,
    parse_address,
    parse_uri,
    short_text,
    split_commas,
    warning_value,
)
from engine.sip.registrar import Registrar
from engine.sip.transaction import (
    Addr,
    CancelRequest,
    DeliverRequest,
    DeliverResponse,
    Send,
    Terminated,
    TimedOut,
    Timers,
    TransactionLayer,
    TxKey,
)
from provisioning.model import Binding, DialogRecord, DialogView, Directory, Status
from routing import CallFacts, router_for

log = structlog.get_logger("switchboard.engine")

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, UPDATE, INFO, SUBSCRIBE"
ALLOW_EVENTS = f"{MWI_EVENT}, {DIALOG}, {PRESENCE}"
ACCEPT = "application/sdp"
# Only what is implemented is advertised: RFC 5626 reg-id/instance bindings and
# CRLF keep-alives, and Path (RFC 3327): a REGISTER through the edge is stored
# with its Path, which becomes the route set of calls to that phone.
# Replaces (RFC 3891): an INVITE naming a ringing call picks it up (engine.calls.pickup).
SUPPORTED: tuple[str, ...] = ("outbound", "path", "replaces")
KNOWN_METHODS = frozenset((
    "INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE", "NOTIFY",
    "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE"))


@dataclass(slots=True)
class Outcome:
    """What handling one input produced: datagrams/stream writes, and store writes."""

    sends: list[Send] = field(default_factory=list)
    saved: list[Binding] = field(default_factory=list)
    removed: list[Binding] = field(default_factory=list)
    media: list[MediaCommand] = field(default_factory=list)  # for the media service

    def add(self, produced: Produced) -> None:
        """Append what a step produced (an entry point building its own outcome)."""
        self.sends.extend(produced.sends)
        self.saved.extend(produced.saved)
        self.removed.extend(produced.removed)
        self.media.extend(produced.media)


@dataclass(frozen=True, slots=True)
class Produced:
    """What one internal step produced. Steps return it and callers add them up, so
    no step writes into another's result; only the public entry points turn the sum
    into an :class:`Outcome`."""

    sends: tuple[Send, ...] = ()
    saved: tuple[Binding, ...] = ()
    removed: tuple[Binding, ...] = ()
    media: tuple[MediaCommand, ...] = ()

    def __add__(self, other: Produced) -> Produced:
        # Most sums add nothing on one side (a publish with no NOTIFY to send): the
        # other side is the sum, as both are immutable, with no copy made.
        if other is NOTHING:
            return self
        if self is NOTHING:
            return other
        return Produced(self.sends + other.sends, self.saved + other.saved,
                        self.removed + other.removed, self.media + other.media)

    @staticmethod
    def join(parts: Sequence[Produced]) -> Produced:
        """The sum of ``parts`` in order, copied once (many sends: a timer, a shutdown)."""
        if len(parts) == 1:
            return parts[0]
        return Produced(tuple(chain.from_iterable(p.sends for p in parts)),
                        tuple(chain.from_iterable(p.saved for p in parts)),
                        tuple(chain.from_iterable(p.removed for p in parts)),
                        tuple(chain.from_iterable(p.media for p in parts)))

    def outcome(self) -> Outcome:
        return Outcome(list(self.sends), list(self.saved), list(self.removed),
                       list(self.media))


NOTHING = Produced()


class _StepFailed(Exception):
    """A step raised (its ``__cause__``) after ``produced`` had been produced."""

    def __init__(self, produced: Produced) -> None:
        super().__init__("step failed")
        self.produced = produced


class Answer(Protocol):
    """Answers the request being handled; returns what answering produced."""

    def __call__(self, status: int, headers: list[tuple[str, str]] | None = None,
                 reason: str | None = None) -> Produced: ...


class Engine:
    """The SIP core of one engine process: transactions, registrar, auth, OPTIONS."""

    def __init__(self, directory: Directory, local_hosts: set[str], port: int,
                 metrics: Metrics | None = None, timers: Timers | None = None,
                 auth_key: bytes | None = None,
                 limiter: FailureLimiter | None = None,
                 wall_clock: Callable[[], float] = time.time,
                 digest_algorithms: tuple[str, ...] = ("SHA-256", "MD5"),
                 advertise: str = "127.0.0.1", route_clock_offset: float = 0.0,
                 anchor_media: bool = False, edge: EdgeTrust | None = None) -> None:
        self.metrics = metrics or Metrics()
        # The edge proxies whose X-Switchboard-Source names a request's real source
        # (serve --edge; none by default: the header is then ignored and dropped).
        self.edge = edge or EdgeTrust()
        self.transactions = TransactionLayer(timers or Timers())
        self.advertise = advertise
        # Schedules are evaluated at wall clock + this offset (``serve --route-clock``).
        self.route_clock_offset = route_clock_offset
        self._trunk_nets: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int | None,
                                     str]] = []
        self.limiter = limiter or FailureLimiter()
        self.port = port
        self._tls_port = 0  # the TLS listener's port once it is up (serve --tls)
        self._node_id = ""  # this process among the nodes sharing the store
        self.local_hosts = {h.lower() for h in local_hosts}
        self.wall_clock = wall_clock
        self._auth_key = auth_key or secrets.token_bytes(32)
        self.digest_algorithms = digest_algorithms
        self.directory = directory
        self.registrar = Registrar()
        self.calls = Calls(self.transactions, self.registrar,
                           Local(advertise, port, directory.system.domain), wall_clock,
                           self.metrics, anchor_media=anchor_media)
        self.trunkreg = TrunkRegistrar(self.transactions)
        self.mwi = MessageWaiting(self.transactions)
        # Busy lamps (RFC 4235) and presence (RFC 3856): the extensions' dialogs,
        # kept from the call layer's changes, and the subscriptions to them.
        self.dialogs = DialogBook()
        self.subs = Subscriptions(self.transactions, self._document, self.metrics)
        # The same across the nodes sharing the store: what the others watch and
        # publish, what this node watches and publishes for them (the shell moves it).
        self.lamps = ClusterLamps()
        self.calls.held_elsewhere = self.lamps.holder
        self._presence: dict[str, str] = {}  # extension -> the status presence last saw
        self._revoke_due = False  # the directory changed: subscriptions to check
        self.auth = DigestAuthenticator(directory.system.domain, self._auth_key,
                                        algorithms=digest_algorithms)
        self.set_directory(directory)

    # -- configuration ------------------------------------------------------
    def set_directory(self, directory: Directory) -> None:
        """Swap in a new snapshot; the next request sees it (no restart)."""
        self.directory = directory
        system = directory.system
        self.local_hosts.add(system.domain.lower())
        self.registrar.min_expires = system.min_register_expires
        self.registrar.max_expires = system.max_register_expires
        self.registrar.default_expires = min(3600, system.max_register_expires)
        if self.auth.realm != system.domain:
            self.auth = DigestAuthenticator(system.domain, self._auth_key,
                                            algorithms=self.digest_algorithms)
        self.calls.set_directory(directory)
        self.calls.local = self.local
        self._revoke_due = bool(self.subs.subs)
        self._statuses_changed()
        self.trunkreg.set_trunks(directory.trunks, 0.0, self.advertise)
        self._trunk_nets = [(ipaddress.ip_network(cidr, strict=False), trunk.inbound_port,
                             trunk.name)
                            for trunk in directory.trunks for cidr in trunk.inbound_from]

    def set_statuses(self, statuses: dict[str, Status]) -> None:
        """Live statuses (``switchboard status set``): they win over the directory."""
        self.calls.statuses = dict(statuses)
        # Presence NOTIFYs are queued; the engine's next timer sends them (paced).
        self._statuses_changed()

    def status_of(self, extension: str) -> str:
        """The user's status now: the live one (``status set``) or the directory's."""
        live = self.calls.statuses.get(extension)
        if live is not None:
            return live
        user = self.directory.user(extension)
        return user.status if user is not None else "available"

    def _statuses_changed(self) -> None:
        now = {u.extension: self.status_of(u.extension) for u in self.directory.users}
        changed = {ext for ext in now.keys() | self._presence.keys()
                   if now.get(ext) != self._presence.get(ext)}
        self._presence = now
        if changed:
            self.subs.changed(PRESENCE, changed)

    def _document(self, package: str, extension: str, now: float) -> Document:
        """What a NOTIFY of ``package`` says about ``extension`` now."""
        entity = f"sip:{extension}@{self.directory.system.domain}"
        own = self._book(now).views(extension, now)
        if package == DIALOG:
            views = self.lamps.merge(extension, own, now)
            return Document(views, lambda version: dialog_info(entity, extension, views,
                                                               version))
        status, on_call = self.status_of(extension), self.lamps.on_call(extension, own, now)
        return Document((status, on_call),
                        lambda version: pidf(entity, extension, status, on_call, version))

    def _allowed(self, sub: Subscription) -> str:
        """Why ``sub`` may not go on (RFC 6665 s4.1.3 reason), ``""``: it may."""
        watcher = self.directory.user(sub.watcher)
        if watcher is None or watcher.disabled:
            return "rejected"
        if self.directory.user(sub.target) is None and not (
                sub.package == DIALOG and sub.target in self.directory.system.park.orbits):
            return "noresource"
        return ""

    def _book(self, now: float) -> DialogBook:
        """The dialog book, current: made from the live calls when the calls were not
        noting their changes (no one watched), and kept from their changes after."""
        calls = self.calls
        if not calls.notes_changes:
            self.dialogs.reset(calls.live_items(), now)
            calls.notes_changes = True
        return self.dialogs

    def _publish(self, now: float) -> Produced:
        """The calls that moved reach the busy lamps and presence: NOTIFYs, paced."""
        changes = self.calls.take_changes()
        elsewhere = self.lamps.watched_elsewhere
        if changes and not self.subs.subs and not elsewhere:
            # The last watcher left (here and on the other nodes): stop noting (a call
            # path with no watcher makes no change entries and no book updates); the
            # next watcher's first document builds the book again (_book).
            self.calls.notes_changes = False
            self.dialogs.reset((), now)
        elif changes:
            extensions = self.dialogs.update(changes, now)
            if extensions:
                self.subs.changed(DIALOG, extensions)
                self.subs.changed(PRESENCE, extensions)  # "on a call"; unchanged: not sent
                for ext in extensions & elsewhere:  # another node watches: published
                    self.lamps.publish(ext, self.dialogs.views(ext, now))
        if self.subs.watch_moved:
            self.subs.watch_moved = False
            self.lamps.watch(self.subs.resources())
        if not self.subs.pending:
            return NOTHING
        return self._top(self.subs.flush(now, self.local), now)

    def cluster_lamps(self, watched: frozenset[str],
                      dialogs: Mapping[str, Mapping[str, tuple[DialogView, ...]]],
                      now: float) -> Outcome:
        """What the other nodes watch and published, as read from the store: this
        node publishes its dialogs of the resources newly watched elsewhere, and the
        NOTIFYs of resources whose merged state moved leave (paced)."""
        changed, newly = self.lamps.read(watched, dialogs, now)
        if newly:
            book = self._book(now)  # noting on while another node watches
            for resource in newly:
                self.lamps.publish(resource, book.views(resource, now))
        self.lamps.unpublish_unwatched()
        if changed:
            self.subs.changed(DIALOG, changed)
            self.subs.changed(PRESENCE, changed)
        if not self.subs.pending:
            return Outcome()
        return self._top(self.subs.flush(now, self.local), now).outcome()

    def take_lamps(self) -> tuple[dict[str, bool], dict[str, tuple[DialogView, ...]]]:
        """The lamp changes for the store since the last call (watches, published
        dialogs): the shell writes them behind."""
        return self.lamps.take()

    @property
    def tls_port(self) -> int:
        return self._tls_port

    @tls_port.setter
    def tls_port(self, port: int) -> None:
        self._tls_port = port
        self.calls.local = self.local

    @property
    def node_id(self) -> str:
        return self._node_id

    @node_id.setter
    def node_id(self, node: str) -> None:
        self._node_id = node
        self.calls.local = self.local

    @property
    def local(self) -> Local:
        return Local(self.advertise, self.port, self.directory.system.domain, self._tls_port,
                     self._node_id)

    def end_dialogs(self, records: Sequence[DialogRecord], now: float) -> Outcome:
        """Calls another node held and can no longer end (it died): a BYE in each of
        their dialogs, from this node (engine.calls.records). Their answers come
        back here and end the transactions; no call of ours is touched."""
        events: list[object] = []
        for record in records:
            for bye, dest, transport in bye_requests(record, self.local):
                _, sent = self.transactions.send_request(bye, dest, transport, now)
                events += sent
            self.metrics.calls_taken_over.inc()
        return self._top(events, now).outcome()

    def next_wakeup(self) -> float | None:
        wakes = [w for w in (self.transactions.next_wakeup(), self.calls.next_wakeup(),
                             self.trunkreg.next_wakeup(), self.mwi.next_wakeup(),
                             self.subs.next_wakeup(), 0.0 if self._revoke_due else None,
                             # a status or directory set between inputs: wake the queues
                             0.0 if self.calls.queues.due else None)
                 if w is not None]
        return min(wakes) if wakes else None

    def trunk_of(self, source: Addr) -> str | None:
        """The trunk whose ``inbound_from`` (and ``inbound_port``) holds ``source``."""
        try:
            addr = ipaddress.ip_address(source[0])
        except ValueError:
            return None
        return next((name for net, port, name in self._trunk_nets
                     if addr in net and (port is None or port == source[1])), None)

    def password_of(self, username: str) -> str | None:
        user = self.directory.user(username)
        if user is None or user.disabled or not user.password:
            return None
        return user.password

    # -- input ----------------------------------------------------------------
    # -- the media service's answers (voicemail) ------------------------------------
    def media_ready(self, call: tuple[str, str], ports: tuple[int, ...], now: float) -> Outcome:
        return self._media(self.calls.media_ready(call, ports, now), now)

    def media_failed(self, call: tuple[str, str], reason: str, now: float) -> Outcome:
        return self._media(self.calls.media_failed(call, reason, now), now)

    def screened(self, call: tuple[str, str], accepted: bool, now: float) -> Outcome:
        """A screened leg (rebound, confirm) pressed 1 (``accepted``) or anything else."""
        return self._media(self.calls.screened(call, accepted, now), now)

    def hangup(self, call: tuple[str, str], now: float) -> Outcome:
        return self._media(self.calls.hangup(call, now), now)

    def ivr_digit(self, call: tuple[str, str], digit: str, now: float) -> Outcome:
        """A key (RFC 4733) from the caller of an IVR menu."""
        return self._media(self.calls.ivr_digit(call, digit, now), now)

    def ivr_prompt_done(self, call: tuple[str, str], generation: int, now: float) -> Outcome:
        return self._media(self.calls.ivr_prompt_done(call, generation, now), now)

    def queue_login(self, extension: str, queues: tuple[str, ...], logged_in: bool,
                    now: float) -> Outcome:
        """Log an agent in to (or out of) ``queues`` (the admin API): a log-in may ring
        it for a caller waiting."""
        return self._media(self.calls.queues.log_in(extension, queues, logged_in, now), now)

    def _media(self, events: Sequence[object], now: float) -> Outcome:
        out = self._outcome(events, now)
        if self.calls.queues.due:
            out.add(self._wake_queues(now))
        if self.calls.changed or self.subs.queue or self.subs.watch_moved:
            out.add(self._publish(now))
        return out

    def datagram(self, data: bytes, source: Addr, transport: str, now: float,
                 parsed: Request | Response | None = None) -> Outcome:
        """Handle one datagram (or one framed stream message); ``parsed`` is ``data``
        already parsed (the receive queue reads each message to class it)."""
        got = self._datagram(data, source, transport, now, parsed)
        out = got.outcome() if isinstance(got, Produced) else self._outcome(got, now)
        if self.calls.queues.due:
            out.add(self._wake_queues(now))
        if self.calls.changed or self.subs.queue or self.subs.watch_moved:
            out.add(self._publish(now))
        return out

    def _datagram(self, data: bytes, source: Addr, transport: str, now: float,
                  parsed: Request | Response | None) -> Produced | Sequence[object]:
        """What one datagram produced without running anything (a keep-alive, a
        malformed message), or the transaction layer's events for it, to run."""
        if data[:1] in b"\r\n" and not data.strip(b"\r\n"):
            # A keep-alive: phones (pjsip, Linphone) send CRLFs over UDP too, every
            # 15-30 s. Nothing to answer, and not a parse error (RFC 3261 s7.5).
            return NOTHING
        try:
            msg = parsed if parsed is not None else parse(data, stream=transport != "udp")
        except ParseError as exc:
            self.metrics.parse_errors.labels(transport).inc()
            partial = exc.partial
            if isinstance(partial, Request) and partial.method != "ACK":
                return self._reply_malformed(partial, exc, source, transport)
            log.info("malformed message dropped", source=_fmt(source),
                     reason=short_text(exc.reason))
            return NOTHING
        if isinstance(msg, Response):
            self.metrics.count_in("response", _cseq_method(msg), str(msg.status))
            try:
                events = self.transactions.on_response(msg, now)
            except ParseError as exc:
                self.metrics.parse_errors.labels(transport).inc()
                log.info("malformed response dropped", source=_fmt(source),
                         reason=short_text(exc.reason))
                return NOTHING
            if not events:
                self.metrics.responses_dropped.inc()
            return events
        self.metrics.count_in("request", _method_label(msg.method), "")
        try:
            check_request(msg)
        except ParseError as exc:
            self.metrics.parse_errors.labels(transport).inc()
            if msg.method != "ACK":
                return self._reply_malformed(msg, exc, source, transport)
            return NOTHING
        msg = _stamp_via(self.edge.strip(msg, source), source)
        return self.transactions.on_request(msg, source, transport, now)

    def timer(self, now: float) -> Outcome:
        # One after the other, as before: each source's events are run (and their
        # state changes made) before the next source is asked for its own.
        produced = self._top(self.transactions.on_timer(now), now)
        produced += self._top(self.calls.on_timer(now), now)
        produced += self._wake_queues(now)
        produced += self._top(self.trunkreg.on_timer(now, self.local), now)
        produced += self._top(self.mwi.expire(now, self.local), now)
        if self._revoke_due:
            self._revoke_due = False
            produced += self._top(self.subs.revoke(self._allowed, now, self.local), now)
        produced += self._publish(now)
        produced += self._top(self.subs.on_timer(now, self.local), now)
        return produced.outcome()

    def _wake_queues(self, now: float) -> Produced:
        """The input changed who may be rung (a registration, a status, a call
        ending): a queue's waiting caller is offered to a free agent in this same
        outcome, not at a later poll (engine.calls.queue)."""
        if not self.calls.queues.due:
            return NOTHING
        return self._top(self.calls.wake_queues(now), now)

    def merge_bindings(self, saved: Sequence[Binding], deleted: Sequence[tuple[str, str]],
                       now_wall: float, now: float) -> Outcome:
        """Bindings other nodes saved or deleted (read from the store) into the
        registrar; a queue agent who registered through another node is offered a
        waiting caller now. Nothing here is written back to the store."""
        self.registrar.merge(saved, deleted, now_wall)
        self.calls.queues.changed()
        produced = self._wake_queues(now)
        if self.calls.changed or self.subs.pending or self.subs.watch_moved:
            produced += self._publish(now)
        return produced.outcome()

    def set_mwi_counts(self, counts: dict[str, tuple[int, int]], now: float) -> Outcome:
        """Mailbox counts changed (a message left, read, deleted): NOTIFY subscribers."""
        return self._top(self.mwi.set_counts(counts, now, self.local), now).outcome()

    def shutdown(self, now: float) -> Outcome:
        """Hang up every call (SIGTERM): BYE the answered ones, 503 the others; end
        every dialog and presence subscription (the phones subscribe again)."""
        produced = self._top(self.calls.shutdown(now), now)
        produced += self._top(self.subs.shutdown(now, self.local), now)
        return produced.outcome()

    def expire(self, now_wall: float) -> Outcome:
        removed = self.registrar.expire(now_wall)
        self.metrics.registrations.set(self.registrar.count())
        self.metrics.blocked_sources.set(self.limiter.blocked_count(now_wall))
        for kind, n in self.transactions.counts().items():
            self.metrics.transactions.labels(kind).set(n)
        self.metrics.calls_active.set(self.calls.active_count)
        channels = self.calls.channels_in_use()
        for trunk in self.directory.trunks:
            self.metrics.trunk_channels.labels(trunk.name).set(channels.get(trunk.name, 0))
        return Produced(removed=tuple(removed)).outcome()

    # -- events from the transaction layer -------------------------------------
    def _run(self, events: Sequence[object], now: float) -> Produced:
        """Run events in order; what each produced is added up in that same order.

        A step that raises takes what its earlier siblings produced with it
        (:class:`_StepFailed`): those sends were counted and their transactions moved
        on, so they still go out beside the 500 that answers the failed request."""
        sends: list[Send] = []
        saved: list[Binding] = []
        removed: list[Binding] = []
        media: list[MediaCommand] = []
        self._gather(events, now, sends, saved, removed, media)
        if not (sends or saved or removed or media):
            return NOTHING
        return Produced(tuple(sends), tuple(saved), tuple(removed), tuple(media))

    def _outcome(self, events: Sequence[object], now: float) -> Outcome:
        """:meth:`_run` for an entry point: the :class:`Outcome` is gathered into
        directly (a fresh one, the entry point's own), with no :class:`Produced` made
        on the way; a failure leaves as the exception it was."""
        out = Outcome()
        try:
            self._gather(events, now, out.sends, out.saved, out.removed, out.media)
        except _StepFailed as failed:
            assert failed.__cause__ is not None
            raise failed.__cause__ from None
        return out

    def _gather(self, events: Sequence[object], now: float, sends: list[Send],
                saved: list[Binding], removed: list[Binding],
                media: list[MediaCommand]) -> None:
        """The loop of :meth:`_run` and :meth:`_outcome`, into the lists of that one
        run (never a list another step returned: those are frozen :class:`Produced`).

        Sends and media commands, most of what a call produces, are gathered here
        directly: a result object per Send cost about 4 % of the call rate. Events a
        step hands back to be run (the call layer's answer to a response, an ACK, a
        CANCEL, a time-out) are run into the same lists, in place: what they produce
        comes at their step's place in the order, as a nested run's sum would, with
        no result object made and copied for each of them."""
        for ev in events:
            if isinstance(ev, Send):
                self._count_out(ev.data)
                sends.append(ev)
                continue
            if isinstance(ev, MEDIA_COMMANDS):  # the call layer's commands to the media service
                media.append(ev)
                continue
            try:
                part = self._run_one(ev, now)
            except _StepFailed as failed:
                so_far = Produced(tuple(sends), tuple(saved), tuple(removed), tuple(media))
                raise _StepFailed(so_far + failed.produced) from failed.__cause__
            except Exception as exc:
                so_far = Produced(tuple(sends), tuple(saved), tuple(removed), tuple(media))
                raise _StepFailed(so_far) from exc
            if part is NOTHING:
                continue
            if isinstance(part, Produced):
                sends.extend(part.sends)
                saved.extend(part.saved)
                removed.extend(part.removed)
                media.extend(part.media)
            else:  # events to run: a failure among them carries these lists whole
                self._gather(part, now, sends, saved, removed, media)

    def _top(self, events: Sequence[object], now: float) -> Produced:
        """:meth:`_run` for an entry point: a failure leaves as the exception it was."""
        try:
            return self._run(events, now)
        except _StepFailed as failed:
            assert failed.__cause__ is not None
            raise failed.__cause__ from None

    def _run_one(self, ev: object, now: float) -> Produced | Sequence[object]:
        """One event that is not a Send or a media command (:meth:`_gather` takes
        those): what it produced, or the events it led to, for the caller to run."""
        if isinstance(ev, DeliverRequest):
            if ev.key is None:  # an ACK to a 2xx: the call's business
                return self.calls.on_ack(ev.request, now)
            try:
                return self._request(ev.request, ev.key, ev.source, ev.transport, now)
            except Exception as exc:
                partial, cause = ((exc.produced, exc.__cause__) if isinstance(exc, _StepFailed)
                                  else (NOTHING, exc))
                self.metrics.errors.inc()
                log.error("request handling failed", call_id=_safe_call_id(ev.request),
                          method=ev.request.method, source=_fmt(ev.source), exc_info=cause)
                return partial + self._respond(ev.key, make_response(ev.request, 500), now)
        if isinstance(ev, CancelRequest):
            return self.calls.on_cancel(ev.invite_key, now)
        if isinstance(ev, DeliverResponse):
            # Each client transaction belongs to one of them; the call layer's (the
            # most, two or more a call) are asked for first, with no service asked.
            answer: Sequence[object] | None = self.calls.on_response(ev.response, ev.key,
                                                                     now)
            if answer is None:
                answer = self.trunkreg.on_response(ev.key, ev.response, now, self.local)
            if answer is None:
                self.mwi.on_response(ev.key, ev.response) or self.subs.on_response(
                    ev.key, ev.response)
                answer = []
            return answer
        if isinstance(ev, TimedOut):
            if ev.key.side == "client" and self.subs.on_timed_out(ev.key):
                return NOTHING
            if ev.key.side == "client" and not self.trunkreg.on_timed_out(ev.key, now):
                return self.calls.on_timed_out(ev.key, now)
            return NOTHING
        if isinstance(ev, Terminated):
            self.calls.on_terminated(ev.key)
        return NOTHING

    def _respond(self, key: TxKey, resp: Response, now: float) -> Produced:
        return self._run(list(self.transactions.respond(key, resp, now)), now)

    def _reply_malformed(self, req: Request, exc: ParseError, source: Addr,
                         transport: str) -> Produced:
        """Answer a malformed request statelessly, at the address its Via names if readable."""
        status = exc.status if 400 <= exc.status < 600 else 400
        addr = source  # symmetric, as for every response (see _stamp_via)
        try:
            resp = make_response(req, status, headers=[("Warning", warning_value(exc.reason)),
                                                       ("Server", SERVER)])
            data = resp.to_bytes()
        except Exception:  # the headers to copy are too broken to answer at all
            log.info("malformed request dropped", source=_fmt(source),
                     reason=short_text(exc.reason))
            return NOTHING
        log.info("malformed request", source=_fmt(source), status=status,
                 reason=short_text(exc.reason))
        self._count_out(data)
        return Produced(sends=(Send(data, addr, transport),))

    def _count_out(self, data: bytes) -> None:
        if data.startswith(b"SIP/"):  # a status line: "SIP/2.0 200 OK"
            self.metrics.count_out("response", "", data[8:11].decode("ascii", "replace"))
        else:
            method = data[: data.find(b" ")].decode("ascii", "replace")
            self.metrics.count_out("request", _method_label(method), "")

    # -- the transaction user -------------------------------------------------
    def _request(self, req: Request, key: TxKey, source: Addr, transport: str,
                 now: float) -> Produced:
        def answer(status: int, headers: list[tuple[str, str]] | None = None,
                   reason: str | None = None) -> Produced:
            hs = [("Server", SERVER), *(headers or [])]
            produced = self._respond(key, make_response(req, status, reason, hs), now)
            log.info("request", method=req.method, call_id=req.call_id, source=_fmt(source),
                     transport=transport, status=status)
            return produced

        if req.method not in KNOWN_METHODS:
            return answer(501, [("Allow", ALLOW)])
        # Loose routing (RFC 3261 s16.4): a Route naming us is ours to remove.
        if req.has("route"):
            routes = req.routes
            if routes and self._is_local(routes[0].uri.host, routes[0].uri.port):
                routes = routes[1:]
            if routes:
                return answer(403, [("Warning", warning_value("no relay: this engine routes "
                                                         "no requests onwards yet"))])
        unsupported = [o for o in req.get_all("proxy-require") + req.get_all("require")
                       if o.strip().lower() not in SUPPORTED]
        if unsupported and req.method not in ("CANCEL", "ACK"):
            return answer(420, [("Unsupported", ", ".join(unsupported))])
        mf = req.max_forwards
        if mf == 0 and req.method not in ("OPTIONS", "REGISTER"):
            return answer(483)
        if req.to.tag is not None and req.method not in ("REGISTER", "CANCEL"):
            events: Sequence[object] | None = self.mwi.in_dialog(req, key, now, self.local)
            if events is None:
                events = self.subs.in_dialog(req, key, now, self.local)
            if events is None:
                events = self.calls.in_dialog(req, key, source, transport, now)
            if events is None:
                return answer(481)
            return self._run(events, now)
        if req.method == "OPTIONS":
            return answer(200, [("Allow", ALLOW), ("Accept", ACCEPT),
                                ("Allow-Events", ALLOW_EVENTS),
                                ("Supported", ", ".join(SUPPORTED))])
        # Who sent it: the edge's X-Switchboard-Source when ``source`` is an edge. It
        # names the trunk and keys the failed-authentication block; answers and the
        # dialog still go to ``source``.
        origin = self.edge.origin(req, source)
        if req.method == "REGISTER":
            return self._register(req, source, origin, transport, now, answer)
        if req.method == "INVITE":
            return self._invite(req, key, source, origin, transport, now, answer)
        if req.method == "SUBSCRIBE":
            return self._subscribe(req, key, source, origin, transport, now, answer)
        if req.method in ("BYE", "CANCEL"):
            return answer(481)
        return answer(405, [("Allow", ALLOW)])

    def _invite(self, req: Request, key: TxKey, source: Addr, origin: Addr, transport: str,
                now: float, answer: Answer) -> Produced:
        ctype = (req.get("content-type") or "").split(";", 1)[0].strip().lower()
        if req.body and ctype and ctype != "application/sdp" and not ctype.startswith(
                "multipart/"):
            return answer(415, [("Accept", ACCEPT)])
        accept = [a.split(";", 1)[0].strip().lower() for a in req.get_all("accept")]
        if accept and not any(a in ("application/sdp", "application/*", "*/*") for a in accept):
            return answer(406, [("Accept", ACCEPT)])
        if req.uri.scheme not in ("sip", "sips", "tel"):
            return answer(416)
        # A tel URI's number is its user part as parsed (RFC 3966); a sip URI's
        # user part may be any form of a DID (Directory.number reads them all).
        dialled = req.uri.user or ""
        if req.uri.scheme == "tel" and not dialled:
            dialled = req.uri.host
        when = dt.datetime.fromtimestamp(self.wall_clock() + self.route_clock_offset, dt.UTC)
        trunk = self.trunk_of(origin)
        if trunk is not None:
            # IP-authenticated trunk (RFC 3261 s26.3.2.2 leaves trunk auth to policy).
            # A carrier we register to sends calls to our Contact (the trunk's username):
            # the DID is then in To.
            router = router_for(self.directory)
            to_user = req.to.uri.user or ""
            if router.number_for(dialled) is None and router.number_for(to_user) is not None:
                dialled = to_user
            caller = req.from_.uri.user or "anonymous"
            facts = CallFacts(caller=caller, callee=dialled, source="trunk", at=when,
                              trunk=trunk, caller_name=req.from_.display or "")
        else:
            username = self._authenticate(req, "INVITE", origin, now, answer)
            if isinstance(username, Produced):
                return username
            user = self.directory.user(username)
            facts = CallFacts(caller=username, callee=dialled, source="phone", at=when,
                              caller_name=user.name if user else "",
                              preferred_identity=preferred_identity(req))
        events = self.calls.new_call(req, key, source, transport, facts, self.directory, now)
        return self._run(events, now)

    def _subscribe(self, req: Request, key: TxKey, source: Addr, origin: Addr,
                   transport: str, now: float, answer: Answer) -> Produced:
        """Message waiting (RFC 3842): a phone subscribes to its own mailbox. Busy
        lamps (dialog, RFC 4235) and presence (RFC 3856): a user subscribes to any
        extension of the directory it signs in to (one directory is one office: no
        presence for strangers), digest-authenticated like its calls."""
        event = (req.get("event") or "").split(";", 1)[0].strip().lower()
        if event != MWI_EVENT and event not in PACKAGES:
            # RFC 6665 s8.2.2: Bad Event
            return answer(489, [("Allow-Events", ALLOW_EVENTS)])
        if event in PACKAGES:
            accept = [a.split(";", 1)[0].strip().lower() for a in req.get_all("accept")]
            wanted = PACKAGES[event]
            if accept and not any(a in (wanted, "application/*", "*/*") for a in accept):
                return answer(406, [("Accept", wanted)])  # RFC 3261 s21.4.7
        username = self._authenticate(req, "SUBSCRIBE", origin, now, answer)
        if isinstance(username, Produced):
            return username
        if event in PACKAGES:
            target = req.uri.user or ""
            # A park orbit is watched for its dialogs (a BLF key showing a parked call).
            orbit = event == DIALOG and target in self.directory.system.park.orbits
            if self.directory.user(target) is None and not orbit:
                return answer(404, [("Warning", warning_value(
                    f"no user with extension {target!r} to watch"))])
            return self._run(self.subs.subscribe(req, key, event, username, target, source,
                                                 transport, now, self.local), now)
        box = req.uri.user or ""
        if box != username:
            return answer(403, [("Warning", warning_value(
                f"user {username!r} may not watch mailbox {box!r}"))])
        return self._run(self.mwi.subscribe(req, key, box, source, transport, now, self.local),
                         now)

    def _authenticate(self, req: Request, method: str, source: Addr, now: float,
                      answer: Answer) -> str | Produced:
        """Digest for a request from a phone: as a registrar for REGISTER (RFC 3261
        s22.2: 401, WWW-Authenticate / Authorization), as a proxy for anything else
        (s22.3: 407, Proxy-Authenticate / Proxy-Authorization). One flow for both,
        so the block, the nonce-count and the Request-URI checks cannot drift apart.

        ``source`` is the request's real source (behind an edge, the address the edge
        names): the block is per sender, not per edge.

        Returns the authenticated username, or what answering the request produced
        when it was answered instead (challenge, refusal, block).
        """
        if method == "REGISTER":
            status, challenge_header, credentials_header = (
                401, "WWW-Authenticate", "authorization")
        else:
            status, challenge_header, credentials_header = (
                407, "Proxy-Authenticate", "proxy-authorization")
        ip = source[0]
        if self.limiter.is_blocked(ip, self.wall_clock()):
            return answer(403, [("Warning", warning_value(
                "too many failed authentications; retry later"))])
        credentials = [v for v in req.get_lines(credentials_header)
                       if v.lstrip()[:6].lower() == "digest"]
        if not credentials:
            return answer(status, [(challenge_header, c) for c in self.auth.challenge(now)])
        result = self.auth.verify(method, credentials[0], self.password_of, now)
        if result.ok and not _same_target(result.uri, req, self.local_hosts):
            result = _uri_mismatch(result)
        if result.stale:
            return answer(status, [(challenge_header, c)
                                   for c in self.auth.challenge(now, stale=True)])
        if not result.ok:
            self._auth_failed(req, result.username, result.reason, source, method)
            return answer(status, [(challenge_header, c) for c in self.auth.challenge(now)])
        self.limiter.success(ip)
        return result.username

    def _auth_failed(self, req: Request, username: str, reason: str, source: Addr,
                     method: str) -> None:
        ip = source[0]
        self.metrics.auth_failures.labels(method).inc()
        if self.limiter.failure(ip, self.wall_clock()):
            self.metrics.auth_blocks.inc()
            log.warning("source blocked after failed authentications", source=ip,
                        username=username, block_seconds=self.limiter.block_seconds)
        log.info("authentication failed", source=_fmt(source), username=username,
                 reason=reason, call_id=req.call_id, method=method)

    def _register(self, req: Request, source: Addr, origin: Addr, transport: str, now: float,
                  answer: Answer) -> Produced:
        username = self._authenticate(req, "REGISTER", origin, now, answer)
        if isinstance(username, Produced):
            return username
        wall = self.wall_clock()
        aor = req.to.uri.user or ""
        if aor != username:
            return answer(403, [("Warning", warning_value(
                f"user {username!r} may not register {aor!r}"))])
        outcome = self.registrar.register(req, aor, f"{transport}:{source[0]}:{source[1]}",
                                          wall)
        if outcome.saved or outcome.removed:  # a queue agent may be reachable now
            self.calls.queues.changed(aor)
        # The bindings first, then the answer: the order the store and the phone see them.
        changes = Produced(saved=tuple(outcome.saved), removed=tuple(outcome.removed))
        try:
            return changes + answer(outcome.status, list(outcome.headers), outcome.reason)
        except _StepFailed as failed:  # the registrar has them: the store must too
            raise _StepFailed(changes + failed.produced) from failed.__cause__
        except Exception as exc:
            raise _StepFailed(changes) from exc

    def _is_local(self, host: str, port: int | None) -> bool:
        # Our TLS listener is us too: a TLS phone's outbound proxy (Route) names it.
        return host.lower() in self.local_hosts and (
            port is None or port == self.port or (bool(self._tls_port) and port == self._tls_port))


def preferred_identity(req: Request) -> str:
    """The number a phone asks to present: its P-Preferred-Identity (RFC 3325 s9.2),
    the user part of a sip/sips URI or the number of a tel URI. RFC 3325 allows one
    of each; the first readable value counts. ``""`` when there is none (an
    unreadable value is ignored, like an absent one: the default caller ID applies).
    Only phones' requests are read: routing decides whether it is allowed."""
    for line in req.get_lines("p-preferred-identity"):
        for value in split_commas(line):
            try:
                uri = parse_address(value.strip(), "P-Preferred-Identity").uri
            except ParseError:
                continue
            number = uri.user or (uri.host if uri.scheme == "tel" else "")
            if number:
                return number
    return ""


def _stamp_via(req: Request, source: Addr) -> Request:
    """Add received= and rport= to the top Via (RFC 3261 s18.2.1, RFC 3581 s4).

    rport is stamped even when the client did not ask (Kamailio's
    force_rport): phones behind NAT get their responses at the address and
    port they sent from, which is what a business phone system must do.
    """
    via = req.top_via
    params = [(k, v) for k, v in via.params if k not in ("received", "rport")]
    params.append(("received", source[0]))
    params.append(("rport", str(source[1])))
    stamped = str(via._replace(params=tuple(params)))
    values = req.get_all("via")
    rest = values[1:]
    new = req.remove_first_value("via").prepend("Via", stamped) if rest else req.replace(
        "via", stamped)
    assert isinstance(new, Request)
    return new


def _same_target(digest_uri: str, req: Request, local_hosts: set[str]) -> bool:
    """The signed digest-uri names this request's target (RFC 2617 s3.2.2.5).

    Its user part, when it has one, must be the Request-URI's (a call signed for 102
    cannot reach another number); its host the Request-URI's or one of this engine's
    own names and addresses (SIPp, and some phones, sign the registrar's IP:port).
    """
    try:
        signed, target = parse_uri(digest_uri), req.uri
    except ParseError:
        return False
    if not signed.is_sip:
        return False
    if signed.user and signed.user != (target.user or ""):
        return False
    host = signed.host.lower()
    return host == target.host.lower() or host in local_hosts


def _uri_mismatch(result: AuthResult) -> AuthResult:
    return AuthResult(ok=False, username=result.username, stale=False, reason="uri mismatch")


def _fmt(addr: Addr) -> str:
    return f"{addr[0]}:{addr[1]}"


def _method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "other"


def _cseq_method(resp: Response) -> str:
    try:
        return _method_label(resp.cseq.method)
    except ParseError:
        return "other"


def _safe_call_id(req: Request) -> str:
    return req.get("call-id") or ""
