"""SIP transaction layer (RFC 3261 s17, RFC 6026, RFC 3581), sans-I/O.

No socket, no event loop, no clock: every entry point takes ``now`` (seconds,
any monotonic origin) and returns a list of events for the caller to carry
out: :class:`Send` bytes, deliver a request or response to the transaction
user (TU), report a time-out or a termination.

Four state machines, each a table of its legal moves (:data:`INVITE_CLIENT`,
:data:`NON_INVITE_CLIENT`, :data:`INVITE_SERVER`, :data:`NON_INVITE_SERVER`, in
the style of ``engine.calls.states``) and one method per state for what is sent
and armed:

* INVITE server (RFC 3261 s17.2.1 as updated by RFC 6026 s7.1: Accepted state)
* non-INVITE server (RFC 3261 s17.2.2)
* INVITE client (RFC 3261 s17.1.1 as updated by RFC 6026 s7.2: Accepted state)
* non-INVITE client (RFC 3261 s17.1.2)

A transaction's state changes only through its table; a move not in it raises
:class:`~engine.statemachine.IllegalTransition` naming the event, the role and
the state. Moves are written ``MACHINE.rows[state][event]`` (the table's rows
refuse a missing event themselves), which costs no Python call per message.

Timers live in one heap with lazy deletion (``engine.sip.timerheap``), keyed by
transaction and timer name: a timer cancelled or re-armed, or whose
transaction ended, is skipped when its entry comes up.

Every transaction ends in Terminated, is removed from the layer and reported
with a :class:`Terminated` event. The layer never ends a server transaction
that is waiting for the TU (INVITE Proceeding, non-INVITE Trying/Proceeding):
the TU must answer every :class:`DeliverRequest` that carries a key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, NamedTuple

from engine.sip.message import ParseError, Request, Response, Via, make_response, random_hex
from engine.sip.timerheap import TimerHeap
from engine.statemachine import Machine

__all__ = [
    "COOKIE",
    "INVITE_CLIENT",
    "INVITE_SERVER",
    "NON_INVITE_CLIENT",
    "NON_INVITE_SERVER",
    "Addr",
    "CancelRequest",
    "DeliverRequest",
    "DeliverResponse",
    "Event",
    "Send",
    "State",
    "Terminated",
    "TimedOut",
    "Timers",
    "TransactionLayer",
    "TxEvent",
    "TxKey",
    "response_addr",
]

COOKIE = "z9hG4bK"  # RFC 3261 s8.1.1.7 magic cookie
DEFAULT_PORT = 5060  # RFC 3261 s18.2.2 / s19.1.2 for UDP and TCP

Addr = tuple[str, int]


# --------------------------------------------------------------------------
# Configuration and events
# --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Timers:
    """RFC 3261 s17.1.1.1 / Table 4 timer values, in seconds.

    ``d`` is Timer D for unreliable transports ("at least 32 seconds",
    s17.1.1.2); every other timer derives from T1, T2 and T4.
    """

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    d: float = 32.0

    def __post_init__(self) -> None:
        for name in ("t1", "t2", "t4", "d"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Timers.{name} must be positive, got {getattr(self, name)!r}")
        if self.t2 < self.t1:
            raise ValueError(f"Timers.t2 ({self.t2}) must not be below t1 ({self.t1})")

    @property
    def long(self) -> float:
        """64*T1: Timers B, F, H, J (unreliable), L and M."""
        return 64 * self.t1


class TxKey(NamedTuple):
    """Identifies one transaction; hashable.

    A NamedTuple, not a frozen dataclass: it is hashed on every lookup of the
    transaction, timer and call tables (several per message), and a tuple's hash
    and equality run in C where a dataclass's ``__hash__`` is a Python call that
    builds a tuple each time. Being a tuple, a key equals the plain tuple of its
    fields.

    Server keys (RFC 3261 s17.2.3): ``branch`` + ``sent_by`` + ``method``
    (ACK maps to INVITE) when the top Via branch carries the magic cookie;
    otherwise ``branch`` is empty and ``legacy`` holds the RFC 2543 fields
    (Request-URI, To tag, From tag, Call-ID, CSeq number, top Via).
    Client keys (s17.1.3): ``branch`` + ``method`` (the CSeq method).
    """

    side: Literal["server", "client"]
    method: str
    branch: str = ""
    sent_by: str = ""
    legacy: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Send:
    """Put ``data`` on the wire to ``addr`` over ``transport`` ("udp" or "tcp")."""

    data: bytes
    addr: Addr
    transport: str


@dataclass(frozen=True, slots=True)
class DeliverRequest:
    """A new request for the TU. ``key`` is None for an ACK to a 2xx (no transaction)."""

    request: Request
    key: TxKey | None
    source: Addr
    transport: str


@dataclass(frozen=True, slots=True)
class DeliverResponse:
    """A response for the TU's client transaction ``key`` (2xx retransmissions included)."""

    response: Response
    key: TxKey


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """A CANCEL matched a server INVITE still waiting for its final response.

    The layer has already answered the CANCEL 200 OK; the TU must answer the
    INVITE (``invite_key``) with 487 Request Terminated (RFC 3261 s9.2).
    """

    cancel: Request
    invite_key: TxKey


@dataclass(frozen=True, slots=True)
class TimedOut:
    """No final response (client Timer B or F, or the RFC 3261 s9.1 CANCEL guard)
    or no ACK (server Timer H)."""

    key: TxKey


@dataclass(frozen=True, slots=True)
class Terminated:
    """The transaction ended and was removed.

    Also sent for transactions the layer ran on its own (a CANCEL, or a
    request it answered 481 or 482), whose keys the TU never saw.
    """

    key: TxKey


Event = Send | DeliverRequest | DeliverResponse | CancelRequest | TimedOut | Terminated


class State(StrEnum):
    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    ACCEPTED = "accepted"
    TERMINATED = "terminated"


class TxEvent(StrEnum):
    """What moves a transaction: a response (the TU's on the server side, the
    network's on the client side), an ACK, or a timer."""

    PROVISIONAL = "1xx"
    SUCCESS = "2xx"
    FAILURE = "300-699"
    ACK = "ack"  # an ACK matched a server INVITE transaction
    TIMEOUT = "timeout"  # Timer B, F or H; or the RFC 3261 s9.1 CANCEL guard
    WAIT_OVER = "wait_over"  # Timer D, I, J, K, L or M (zero on reliable transports)


_CALLING, _TRYING, _PROCEEDING = State.CALLING, State.TRYING, State.PROCEEDING
_COMPLETED, _CONFIRMED, _ACCEPTED = State.COMPLETED, State.CONFIRMED, State.ACCEPTED
_TERMINATED = State.TERMINATED
# Module names for the members the message path uses: an enum member read as a class
# attribute costs about 150 ns on Python 3.11, a module global about 10 ns.
_1XX, _2XX, _FAIL = TxEvent.PROVISIONAL, TxEvent.SUCCESS, TxEvent.FAILURE
_ACK, _TIMEOUT, _WAIT_OVER = TxEvent.ACK, TxEvent.TIMEOUT, TxEvent.WAIT_OVER

# RFC 3261 s17.1.1.2 (Figure 5) as updated by RFC 6026 s7.2 (Accepted).
INVITE_CLIENT: Machine[State, TxEvent] = Machine("invite_client", {
    (_CALLING, _1XX): _PROCEEDING,
    (_PROCEEDING, _1XX): _PROCEEDING,
    (_CALLING, _2XX): _ACCEPTED,  # RFC 6026 s7.2: the TU ACKs; Timer M
    (_PROCEEDING, _2XX): _ACCEPTED,
    (_CALLING, _FAIL): _COMPLETED,  # s17.1.1.3: the transaction ACKs; Timer D
    (_PROCEEDING, _FAIL): _COMPLETED,
    (_CALLING, _TIMEOUT): _TERMINATED,  # Timer B; s9.1 CANCEL guard
    (_PROCEEDING, _TIMEOUT): _TERMINATED,  # s9.1 CANCEL guard
    (_COMPLETED, _WAIT_OVER): _TERMINATED,  # Timer D
    (_ACCEPTED, _WAIT_OVER): _TERMINATED,  # RFC 6026 s7.2: Timer M
})

# RFC 3261 s17.1.2.2 (Figure 6).
NON_INVITE_CLIENT: Machine[State, TxEvent] = Machine("non_invite_client", {
    (_TRYING, _1XX): _PROCEEDING,
    (_PROCEEDING, _1XX): _PROCEEDING,
    (_TRYING, _2XX): _COMPLETED,  # a final response: Timer K
    (_TRYING, _FAIL): _COMPLETED,
    (_PROCEEDING, _2XX): _COMPLETED,
    (_PROCEEDING, _FAIL): _COMPLETED,
    (_TRYING, _TIMEOUT): _TERMINATED,  # Timer F
    (_PROCEEDING, _TIMEOUT): _TERMINATED,
    (_COMPLETED, _WAIT_OVER): _TERMINATED,  # Timer K
})

# RFC 3261 s17.2.1 (Figure 7) as updated by RFC 6026 s7.1 (Accepted).
INVITE_SERVER: Machine[State, TxEvent] = Machine("invite_server", {
    (_PROCEEDING, _1XX): _PROCEEDING,
    (_PROCEEDING, _2XX): _ACCEPTED,  # RFC 6026 s7.1: Timer L
    (_PROCEEDING, _FAIL): _COMPLETED,  # Timers G (unreliable) and H
    (_COMPLETED, _ACK): _CONFIRMED,  # Timer I
    (_COMPLETED, _TIMEOUT): _TERMINATED,  # Timer H: no ACK
    (_CONFIRMED, _WAIT_OVER): _TERMINATED,  # Timer I
    (_ACCEPTED, _2XX): _ACCEPTED,  # RFC 6026 s7.1: the TU's 2xx retransmissions
    (_ACCEPTED, _ACK): _ACCEPTED,  # RFC 6026 s7.1: passed to the TU
    (_ACCEPTED, _WAIT_OVER): _TERMINATED,  # RFC 6026 s7.1: Timer L
})

# RFC 3261 s17.2.2 (Figure 8).
NON_INVITE_SERVER: Machine[State, TxEvent] = Machine("non_invite_server", {
    (_TRYING, _1XX): _PROCEEDING,
    (_PROCEEDING, _1XX): _PROCEEDING,
    (_TRYING, _2XX): _COMPLETED,  # a final response: Timer J
    (_TRYING, _FAIL): _COMPLETED,
    (_PROCEEDING, _2XX): _COMPLETED,
    (_PROCEEDING, _FAIL): _COMPLETED,
    (_COMPLETED, _WAIT_OVER): _TERMINATED,  # Timer J
})


# --------------------------------------------------------------------------
# Response addressing
# --------------------------------------------------------------------------
def is_reliable(transport: str) -> bool:
    """Everything but UDP is a reliable (connection-oriented) transport here."""
    return transport.lower() != "udp"


def response_addr(via: Via, source: Addr, transport: str) -> Addr:
    """Where a server transaction sends its responses (RFC 3261 s18.2.2, RFC 3581 s4).

    * reliable transport: back over the connection the request came on, i.e.
      to ``source``;
    * UDP with ``rport`` in the top Via: the source IP address and port;
    * UDP otherwise: ``received`` (or, when absent, the source IP, which the
      sent-by host then equals per s18.2.1) and the sent-by port, default 5060.
    """
    if is_reliable(transport):
        return source
    if via.rport is not None:
        return source
    host = via.received or source[0]
    return (host, via.port if via.port is not None else DEFAULT_PORT)


# --------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------
def _sent_by(via: Via) -> str:
    return via.host if via.port is None else f"{via.host}:{via.port}"


def _cookie_branch(via: Via) -> str | None:
    """The branch when it is RFC 3261 style: the cookie and something after it."""
    branch = via.branch
    if branch and branch.startswith(COOKIE) and len(branch) > len(COOKIE):
        return branch
    return None


def server_key_of(method: str, via: Via) -> TxKey | None:
    """The server key a request of ``method`` with top Via ``via`` would have, when its
    branch is RFC 3261 style (else None): lets a reader that has not parsed the whole
    message ask whether it retransmits a live transaction."""
    branch = _cookie_branch(via)
    return None if branch is None else TxKey("server", method, branch, _sent_by(via))


def _server_key(req: Request, method: str, to_tag: str | None) -> TxKey:
    """The server key of ``req`` as a request of ``method`` (s17.2.3).

    ``to_tag`` only matters for RFC 2543 keys: the To tag that identifies the
    transaction (the request's own, or for an ACK the one being tried).
    """
    via = req.top_via
    branch = _cookie_branch(via)
    if branch is not None:
        return TxKey("server", method, branch, _sent_by(via))
    legacy = (req.uri_text, to_tag or "", req.from_.tag or "", req.call_id,
              str(req.cseq.number), str(via))
    return TxKey("server", method, legacy=legacy)


def _tag_of(msg: Request | Response) -> str | None:
    try:
        return msg.to.tag
    except ParseError:
        return None


# --------------------------------------------------------------------------
# Transactions and inputs
# --------------------------------------------------------------------------
Kind = Literal["invite_server", "non_invite_server", "invite_client", "non_invite_client"]
KINDS: tuple[Kind, ...] = ("invite_server", "non_invite_server", "invite_client",
                           "non_invite_client")
MergeId = tuple[str, str, int, str]


@dataclass(slots=True, eq=False)
class _ServerTx:
    key: TxKey
    invite: bool
    # The request's method, all a server transaction reads of its request once made
    # (respond() checks the response's CSeq method against it). Not the Request: an
    # INVITE in Accepted (RFC 6026 s7.1, Timer L) or a BYE in Completed (s17.2.2,
    # Timer J) lives 64*T1 after its final response, and its parsed request would
    # live as long, with every header object in it, for the collector to walk.
    method: str
    source: Addr
    transport: str
    addr: Addr  # response_addr() of the request
    state: State
    machine: Machine[State, TxEvent]  # INVITE_SERVER or NON_INVITE_SERVER
    last_response: bytes | None = None  # most recent response sent (s17.2.1, s17.2.2)
    to_tag: str | None = None  # To tag of the latest response that had one
    merge_id: MergeId | None = None
    interval: float = 0.0  # current Timer G interval

    @property
    def kind(self) -> Kind:
        return "invite_server" if self.invite else "non_invite_server"

    @property
    def reliable(self) -> bool:
        return is_reliable(self.transport)


@dataclass(slots=True, eq=False)
class _ClientTx:
    key: TxKey
    invite: bool
    # An INVITE until its final response: the ACK of a 300-699 is built from it
    # (s17.1.1.3); nothing else reads it. None after that (Completed and Accepted last
    # 32 s and 64*T1 on UDP, RFC 6026 s7.2) and for other methods, which send no ACK.
    request: Request | None
    # The request as sent, for retransmissions (Timers A, E); b"" after a final
    # response, which ends them (s17.1.1.2, s17.1.2.2).
    data: bytes
    dest: Addr
    transport: str
    state: State
    machine: Machine[State, TxEvent]  # INVITE_CLIENT or NON_INVITE_CLIENT
    ack: bytes | None = None  # the ACK for a 300-699 (s17.1.1.3)
    interval: float = 0.0  # current Timer A / E interval
    # The RFC 3261 s9.1 CANCEL guard was armed: only then has a final response one to
    # stop (most INVITEs are never cancelled; the heap is not asked for nothing).
    guarded: bool = False

    @property
    def kind(self) -> Kind:
        return "invite_client" if self.invite else "non_invite_client"

    @property
    def reliable(self) -> bool:
        return is_reliable(self.transport)


_Tx = _ServerTx | _ClientTx


@dataclass(frozen=True, slots=True)
class _Retransmit:
    """The transaction's request arrived again (server)."""


@dataclass(frozen=True, slots=True)
class _Ack:
    """An ACK matched a server INVITE transaction."""

    request: Request
    source: Addr
    transport: str


@dataclass(frozen=True, slots=True)
class _Resp:
    """A response: from the TU (server) or from the network (client)."""

    response: Response


@dataclass(frozen=True, slots=True)
class _Fire:
    """Timer ``name`` fired."""

    name: str


_Input = _Retransmit | _Ack | _Resp | _Fire

# The RFC 3261 s9.1 guard: an INVITE client transaction that sent a CANCEL
# gives up 64*T1 after it if no final response came.
CANCEL_GUARD = "cancel"


# --------------------------------------------------------------------------
# The layer
# --------------------------------------------------------------------------
_ServerHandler = Callable[[_ServerTx, _Input, float], list[Event]]
_ClientHandler = Callable[[_ClientTx, _Input, float], list[Event]]


class TransactionLayer:
    """All client and server transactions of one SIP element."""

    def __init__(self, timers: Timers = Timers()) -> None:
        self.timers = timers
        self._txs: dict[TxKey, _Tx] = {}
        # RFC 3261 s8.2.2.2: (From tag, Call-ID, CSeq number, CSeq method) of
        # live server transactions whose request had no To tag.
        self._merge: dict[MergeId, TxKey] = {}
        self.deadlines: TimerHeap[TxKey] = TimerHeap()  # every transaction's timers
        # The state machines as tables: (INVITE?, state) -> the method for that state.
        # Server: s17.2.1 (Figure 7, with RFC 6026 Accepted) and s17.2.2 (Figure 8).
        self._server_table: dict[tuple[bool, State], _ServerHandler] = {
            (True, State.PROCEEDING): self._ist_proceeding,
            (True, State.COMPLETED): self._ist_completed,
            (True, State.CONFIRMED): self._ist_confirmed,
            (True, State.ACCEPTED): self._ist_accepted,
            (False, State.TRYING): self._nist_trying,
            (False, State.PROCEEDING): self._nist_proceeding,
            (False, State.COMPLETED): self._nist_completed,
        }
        # Client: s17.1.1 (Figure 5, with RFC 6026 Accepted) and s17.1.2 (Figure 6).
        self._client_table: dict[tuple[bool, State], _ClientHandler] = {
            (True, State.CALLING): self._ict_calling,
            (True, State.PROCEEDING): self._ict_proceeding,
            (True, State.COMPLETED): self._ict_completed,
            (True, State.ACCEPTED): self._ict_accepted,
            (False, State.TRYING): self._nict_trying,
            (False, State.PROCEEDING): self._nict_proceeding,
            (False, State.COMPLETED): self._nict_completed,
        }

    # -- inspection -----------------------------------------------------
    def __len__(self) -> int:
        return len(self._txs)

    def __contains__(self, key: object) -> bool:
        return key in self._txs

    def counts(self) -> dict[str, int]:
        """Live transactions by kind, every kind present (for metrics)."""
        out: dict[str, int] = dict.fromkeys(KINDS, 0)
        for tx in self._txs.values():
            out[tx.kind] += 1
        return out

    def state(self, key: TxKey) -> State | None:
        """The state of a live transaction, None when there is none."""
        tx = self._txs.get(key)
        return None if tx is None else tx.state

    # -- timers ---------------------------------------------------------
    def next_wakeup(self) -> float | None:
        """The deadline of the earliest pending timer, None when none is armed."""
        return self.deadlines.next_wakeup()

    def on_timer(self, now: float) -> list[Event]:
        """Fire every timer due at ``now`` in deadline order."""
        events: list[Event] = []
        while (due := self.deadlines.pop(now)) is not None:
            key, name = due
            events += self._step(self._txs[key], _Fire(name), now)
        return events

    # Timers are armed with ``self.deadlines.arm(tx.key, name, now + delay)`` where they
    # start: one call, not two, on the message path (six arms a call).

    def _disarm(self, tx: _Tx, *names: str) -> None:
        for name in names:
            self.deadlines.cancel(tx.key, name)

    def _terminate(self, tx: _Tx, event: TxEvent) -> list[Event]:
        """Enter Terminated: the transaction is destroyed at once (s17.1.1.2, s17.2.1)."""
        tx.state = tx.machine.rows[tx.state][event]
        if self._txs.get(tx.key) is tx:
            self.deadlines.cancel_all(tx.key)
        if self._txs.get(tx.key) is tx:
            del self._txs[tx.key]
        if isinstance(tx, _ServerTx) and tx.merge_id is not None \
                and self._merge.get(tx.merge_id) == tx.key:
            del self._merge[tx.merge_id]
        return [Terminated(tx.key)]

    def _wait(self, tx: _Tx, name: str, delay: float, now: float) -> list[Event]:
        """Arm a waiting timer (D, I, J, K), or terminate now when it is zero."""
        if delay <= 0:
            return self._terminate(tx, _WAIT_OVER)
        self.deadlines.arm(tx.key, name, now + delay)
        return []

    def _step(self, tx: _Tx, inp: _Input, now: float) -> list[Event]:
        if isinstance(tx, _ServerTx):
            return self._server_step(tx, inp, now)
        return self._client_step(tx, inp, now)

    # ======================================================================
    # Server side
    # ======================================================================
    def on_request(self, req: Request, source: Addr, transport: str,
                   now: float) -> list[Event]:
        """Match a request from the network to a server transaction, or create one.

        Raises :class:`ParseError` when the request lacks a readable Via,
        CSeq, From, To or Call-ID: run ``check_request`` first.
        """
        transport = transport.lower()
        if req.method == "ACK":
            return self._on_ack(req, source, transport, now)
        key = _server_key(req, req.method, req.to.tag)
        tx = self._txs.get(key)
        if isinstance(tx, _ServerTx):
            return self._server_step(tx, _Retransmit(), now)  # s17.2.3: a retransmission
        if req.method == "CANCEL":
            return self._on_cancel(req, key, source, transport, now)
        merge_id: MergeId | None = None
        if req.to.tag is None:
            cseq = req.cseq
            merge_id = (req.from_.tag or "", req.call_id, cseq.number, cseq.method)
            if merge_id in self._merge:
                # RFC 3261 s8.2.2.2: a merged request (it forked and came back
                # by another path): 482, and the TU never sees it.
                tx = self._new_server(req, key, source, transport)
                return self._server_step(
                    tx, _Resp(make_response(req, 482, to_tag=_new_tag())), now)
        tx = self._new_server(req, key, source, transport)
        if merge_id is not None:
            tx.merge_id = merge_id
            self._merge[merge_id] = key
        events: list[Event] = []
        if tx.invite:
            # s17.2.1: 100 Trying at once (s8.2.6.1: with the request's Timestamp).
            ts = req.get("timestamp")
            trying = make_response(req, 100, headers=[("Timestamp", ts)] if ts else ())
            events += self._server_step(tx, _Resp(trying), now)
        events.append(DeliverRequest(req, key, source, transport))
        return events

    def respond(self, key: TxKey, response: Response, now: float) -> list[Event]:
        """Send the TU's ``response`` through server transaction ``key``.

        A response the state machine no longer takes (a second final response,
        a provisional after the final one) is discarded: ``[]``.
        """
        tx = self._txs.get(key)
        if not isinstance(tx, _ServerTx):
            raise ValueError(f"no live server transaction for {key!r} (unknown, a client "
                             "key, or already terminated)")
        if not 100 <= response.status <= 699:
            raise ValueError(f"status {response.status} is not a SIP response code")
        try:
            method = response.cseq.method
        except ParseError as exc:
            raise ValueError(f"response without a readable CSeq: {exc}") from exc
        if method != tx.method:
            raise ValueError(f"response CSeq method {method!r} does not match the "
                             f"transaction's {tx.method!r}")
        return self._server_step(tx, _Resp(response), now)

    def _new_server(self, req: Request, key: TxKey, source: Addr,
                    transport: str) -> _ServerTx:
        invite = req.method == "INVITE"
        addr = response_addr(req.top_via, source, transport)
        if invite:
            tx = _ServerTx(key, True, "INVITE", source, transport, addr, _PROCEEDING,
                           INVITE_SERVER)
        else:
            tx = _ServerTx(key, False, req.method, source, transport, addr, _TRYING,
                           NON_INVITE_SERVER)
        self._txs[key] = tx
        return tx

    def _find_invite(self, req: Request) -> _ServerTx | None:
        """The server INVITE transaction an ACK or CANCEL belongs to (s17.2.3, s9.2)."""
        tag = req.to.tag
        tx = self._txs.get(_server_key(req, "INVITE", tag))
        if isinstance(tx, _ServerTx) and tx.invite:
            return tx
        if req.method == "ACK" and tag and _cookie_branch(req.top_via) is None:
            # RFC 2543 ACK: the INVITE had no To tag; the ACK carries the tag of
            # the response it acknowledges.
            tx = self._txs.get(_server_key(req, "INVITE", None))
            if isinstance(tx, _ServerTx) and tx.invite and tx.to_tag == tag:
                return tx
        return None

    def _on_ack(self, req: Request, source: Addr, transport: str, now: float) -> list[Event]:
        tx = self._find_invite(req)
        if tx is None:
            # An ACK for a 2xx: no transaction; a new request for the TU
            # (RFC 6026 s7.1 / RFC 3261 s17.2.3).
            return [DeliverRequest(req, None, source, transport)]
        return self._server_step(tx, _Ack(req, source, transport), now)

    def _on_cancel(self, req: Request, key: TxKey, source: Addr, transport: str,
                   now: float) -> list[Event]:
        """RFC 3261 s9.2: the CANCEL has its own non-INVITE server transaction."""
        invite = self._find_invite(req)
        tx = self._new_server(req, key, source, transport)
        if invite is None:
            return self._server_step(tx, _Resp(make_response(req, 481, to_tag=_new_tag())), now)
        # The To tag SHOULD be the one of the INVITE's responses (s9.2).
        ok = make_response(req, 200, to_tag=invite.to_tag or _new_tag())
        events = self._server_step(tx, _Resp(ok), now)
        if invite.state == _PROCEEDING:
            events.append(CancelRequest(req, invite.key))
        # Otherwise a final response was sent already: the CANCEL has no effect.
        return events

    def _server_step(self, tx: _ServerTx, inp: _Input, now: float) -> list[Event]:
        handler = self._server_table.get((tx.invite, tx.state))
        return handler(tx, inp, now) if handler is not None else []

    def _send_response(self, tx: _ServerTx, response: Response) -> list[Event]:
        data = response.to_bytes()
        tx.last_response = data
        tag = _tag_of(response)
        if tag:
            tx.to_tag = tag  # for a CANCEL's 200 (s9.2) and RFC 2543 ACK matching
        return [Send(data, tx.addr, tx.transport)]

    def _resend_response(self, tx: _ServerTx) -> list[Event]:
        if tx.last_response is None:
            return []
        return [Send(tx.last_response, tx.addr, tx.transport)]

    # -- INVITE server: RFC 3261 s17.2.1, RFC 6026 s7.1 (Figure 7) -------
    def _ist_proceeding(self, tx: _ServerTx, inp: _Input, now: float) -> list[Event]:
        if isinstance(inp, _Retransmit):
            # "the most recent provisional response ... MUST be passed to the
            # transport layer for retransmission"
            return self._resend_response(tx)
        if isinstance(inp, _Resp):
            status = inp.response.status
            events = self._send_response(tx, inp.response)
            event = _RESPONSE_EVENT[status // 100]
            tx.state = INVITE_SERVER.rows[tx.state][event]
            if event is _1XX:
                return events
            if event is _2XX:
                # RFC 6026 s7.1: 2xx -> Accepted, Timer L = 64*T1.
                self.deadlines.arm(tx.key, "L", now + self.timers.long)
                return events
            # 300-699 -> Completed; Timer G on unreliable transports, Timer H.
            if not tx.reliable:
                tx.interval = self.timers.t1
                self.deadlines.arm(tx.key, "G", now + tx.interval)
            self.deadlines.arm(tx.key, "H", now + self.timers.long)
            return events
        return []  # an ACK before any final response, or a stale timer: ignored

    def _ist_completed(self, tx: _ServerTx, inp: _Input, now: float) -> list[Event]:
        if isinstance(inp, _Retransmit):
            return self._resend_response(tx)
        if isinstance(inp, _Ack):
            # -> Confirmed; G and H stop; Timer I = T4 (unreliable) or 0.
            self._disarm(tx, "G", "H")
            tx.state = INVITE_SERVER.rows[tx.state][_ACK]
            return self._wait(tx, "I", 0 if tx.reliable else self.timers.t4, now)
        if isinstance(inp, _Fire):
            if inp.name == "G":
                tx.interval = min(2 * tx.interval, self.timers.t2)
                self.deadlines.arm(tx.key, "G", now + tx.interval)
                return self._resend_response(tx)
            if inp.name == "H":
                return [TimedOut(tx.key), *self._terminate(tx, _TIMEOUT)]
        return []  # further responses from the TU are discarded

    def _ist_confirmed(self, tx: _ServerTx, inp: _Input, now: float) -> list[Event]:
        # Absorbs ACK and INVITE retransmissions until Timer I fires.
        if isinstance(inp, _Fire) and inp.name == "I":
            return self._terminate(tx, _WAIT_OVER)
        return []

    def _ist_accepted(self, tx: _ServerTx, inp: _Input, now: float) -> list[Event]:
        if isinstance(inp, _Ack):
            # RFC 6026 s7.1: ACKs are passed to the TU, not absorbed.
            tx.state = INVITE_SERVER.rows[tx.state][_ACK]
            return [DeliverRequest(inp.request, None, inp.source, inp.transport)]
        if isinstance(inp, _Resp) and 200 <= inp.response.status < 300:
            # The TU's 2xx retransmissions (RFC 3261 s13.3.1.4) go through.
            events = self._send_response(tx, inp.response)
            tx.state = INVITE_SERVER.rows[tx.state][_2XX]
            return events
        if isinstance(inp, _Fire) and inp.name == "L":
            return self._terminate(tx, _WAIT_OVER)
        return []  # INVITE retransmissions are absorbed; other responses discarded

    # -- non-INVITE server: RFC 3261 s17.2.2 (Figure 8) ------------------
    def _nist_trying(self, tx: _ServerTx, inp: _Input, now: float) -> list[Event]:
        if isinstance(inp, _Resp):
            return self._nist_respond(tx, inp.response, now)
        return []  # request retransmissions are discarded in Trying

    def _nist_proceeding(self, tx: _ServerTx, inp: _Input, now: float) -> list[Event]:
        if isinstance(inp, _Retransmit):
            return self._resend_response(tx)  # the most recent provisional
        if isinstance(inp, _Resp):
            return self._nist_respond(tx, inp.response, now)
        return []

    def _nist_respond(self, tx: _ServerTx, response: Response, now: float) -> list[Event]:
        events = self._send_response(tx, response)
        event = _RESPONSE_EVENT[response.status // 100]
        tx.state = NON_INVITE_SERVER.rows[tx.state][event]
        if event is _1XX:
            return events
        # Final -> Completed; Timer J = 64*T1 (unreliable) or 0.
        return events + self._wait(tx, "J", 0 if tx.reliable else self.timers.long, now)

    def _nist_completed(self, tx: _ServerTx, inp: _Input, now: float) -> list[Event]:
        if isinstance(inp, _Retransmit):
            return self._resend_response(tx)  # the final response
        if isinstance(inp, _Fire) and inp.name == "J":
            return self._terminate(tx, _WAIT_OVER)
        return []  # other final responses from the TU are discarded

    # ======================================================================
    # Client side
    # ======================================================================
    def send_request(self, request: Request, dest: Addr, transport: str,
                     now: float) -> tuple[TxKey, list[Event]]:
        """Start a client transaction for ``request`` to ``dest``.

        The caller builds the top Via, whose branch (with the RFC 3261 magic
        cookie) identifies the transaction. An ACK has no client transaction
        (the ACK to a 2xx is sent by the TU directly): ValueError.
        """
        transport = transport.lower()
        method = request.method
        if method == "ACK":
            raise ValueError("an ACK has no client transaction: send it directly")
        try:
            branch = _cookie_branch(request.top_via)
            cseq = request.cseq
        except ParseError as exc:
            raise ValueError(f"cannot start a client transaction: {exc}") from exc
        if branch is None:
            raise ValueError("the top Via needs a branch starting with 'z9hG4bK' "
                             "(RFC 3261 s8.1.1.7)")
        if cseq.method != method:
            raise ValueError(f"CSeq method {cseq.method!r} differs from {method!r}")
        key = TxKey("client", method, branch)
        if key in self._txs:
            raise ValueError(f"a client transaction {key!r} is already live")
        invite = method == "INVITE"
        data = request.to_bytes()
        if invite:
            tx = _ClientTx(key, True, request, data, dest, transport, _CALLING,
                           INVITE_CLIENT)
        else:
            tx = _ClientTx(key, False, None, data, dest, transport, _TRYING,
                           NON_INVITE_CLIENT)
        self._txs[key] = tx
        # s17.1.1.2: Timer A (unreliable only) and B; s17.1.2.2: Timer E and F.
        if not tx.reliable:
            tx.interval = self.timers.t1
            self.deadlines.arm(tx.key, "A" if invite else "E", now + tx.interval)
        self.deadlines.arm(tx.key, "B" if invite else "F", now + self.timers.long)
        if method == "CANCEL":
            target = self._txs.get(TxKey("client", "INVITE", branch))
            if isinstance(target, _ClientTx) \
                    and not self.deadlines.armed(target.key, CANCEL_GUARD) \
                    and target.state in (_CALLING, _PROCEEDING):
                # RFC 3261 s9.1: without a final response 64*T1 after the
                # CANCEL, the INVITE client transaction is given up.
                self.deadlines.arm(target.key, CANCEL_GUARD, now + self.timers.long)
                target.guarded = True
        return key, [Send(data, dest, transport)]

    def on_response(self, response: Response, now: float) -> list[Event]:
        """Match a response from the network (s17.1.3); unmatched ones give ``[]``."""
        try:
            branch = response.top_via.branch
            method = response.cseq.method
        except ParseError:
            return []
        if not branch:
            return []
        tx = self._txs.get(TxKey("client", method, branch))
        if not isinstance(tx, _ClientTx):
            return []
        return self._client_step(tx, _Resp(response), now)

    def _client_step(self, tx: _ClientTx, inp: _Input, now: float) -> list[Event]:
        handler = self._client_table.get((tx.invite, tx.state))
        return handler(tx, inp, now) if handler is not None else []

    def _resend_request(self, tx: _ClientTx) -> list[Event]:
        return [Send(tx.data, tx.dest, tx.transport)]

    # -- INVITE client: RFC 3261 s17.1.1, RFC 6026 s7.2 (Figure 5) -------
    def _ict_calling(self, tx: _ClientTx, inp: _Input, now: float) -> list[Event]:
        if isinstance(inp, _Fire):
            if inp.name == "A":
                # Timer A doubles with every retransmission (no T2 cap for INVITE).
                tx.interval *= 2
                self.deadlines.arm(tx.key, "A", now + tx.interval)
                return self._resend_request(tx)
            if inp.name in ("B", CANCEL_GUARD):
                return [TimedOut(tx.key), *self._terminate(tx, _TIMEOUT)]
            return []
        if isinstance(inp, _Resp):
            self._disarm(tx, "A", "B")
            return self._ict_response(tx, inp.response, now)
        return []

    def _ict_proceeding(self, tx: _ClientTx, inp: _Input, now: float) -> list[Event]:
        if isinstance(inp, _Fire) and inp.name == CANCEL_GUARD:
            return [TimedOut(tx.key), *self._terminate(tx, _TIMEOUT)]
        if isinstance(inp, _Resp):
            return self._ict_response(tx, inp.response, now)
        return []

    def _ict_response(self, tx: _ClientTx, response: Response, now: float) -> list[Event]:
        """A response in Calling or Proceeding."""
        event = _RESPONSE_EVENT[response.status // 100]
        tx.state = INVITE_CLIENT.rows[tx.state][event]
        if event is _1XX:
            return [DeliverResponse(response, tx.key)]
        # A final response: no more retransmissions of the INVITE, and only a 300-699
        # needs it (for the ACK, below).
        request, tx.request, tx.data = tx.request, None, b""
        if tx.guarded:
            tx.guarded = False
            self.deadlines.cancel(tx.key, CANCEL_GUARD)
        if event is _2XX:
            # RFC 6026 s7.2: 2xx -> Accepted, Timer M = 64*T1; the TU ACKs.
            self.deadlines.arm(tx.key, "M", now + self.timers.long)
            return [DeliverResponse(response, tx.key)]
        # 300-699 -> Completed: the transaction ACKs (s17.1.1.3); Timer D.
        assert request is not None  # an INVITE's, kept until this final response
        tx.ack = _build_ack(request, response).to_bytes()
        events: list[Event] = [Send(tx.ack, tx.dest, tx.transport),
                               DeliverResponse(response, tx.key)]
        return events + self._wait(tx, "D", 0 if tx.reliable else self.timers.d, now)

    def _ict_completed(self, tx: _ClientTx, inp: _Input, now: float) -> list[Event]:
        if isinstance(inp, _Resp) and inp.response.status >= 300 and tx.ack is not None:
            # A retransmitted final response: ACK again, not passed up.
            return [Send(tx.ack, tx.dest, tx.transport)]
        if isinstance(inp, _Fire) and inp.name == "D":
            return self._terminate(tx, _WAIT_OVER)
        return []

    def _ict_accepted(self, tx: _ClientTx, inp: _Input, now: float) -> list[Event]:
        if isinstance(inp, _Resp) and 200 <= inp.response.status < 300:
            # RFC 6026 s7.2: every 2xx (retransmitted or forked) goes to the TU.
            return [DeliverResponse(inp.response, tx.key)]
        if isinstance(inp, _Fire) and inp.name == "M":
            return self._terminate(tx, _WAIT_OVER)
        return []

    # -- non-INVITE client: RFC 3261 s17.1.2 (Figure 6) ------------------
    def _nict_trying(self, tx: _ClientTx, inp: _Input, now: float) -> list[Event]:
        if isinstance(inp, _Fire):
            if inp.name == "E":
                tx.interval = min(2 * tx.interval, self.timers.t2)
                self.deadlines.arm(tx.key, "E", now + tx.interval)
                return self._resend_request(tx)
            if inp.name == "F":
                return [TimedOut(tx.key), *self._terminate(tx, _TIMEOUT)]
            return []
        if isinstance(inp, _Resp):
            return self._nict_response(tx, inp.response, now)
        return []

    def _nict_proceeding(self, tx: _ClientTx, inp: _Input, now: float) -> list[Event]:
        if isinstance(inp, _Fire):
            if inp.name == "E":
                # In Proceeding Timer E is reset to T2 every time.
                tx.interval = self.timers.t2
                self.deadlines.arm(tx.key, "E", now + tx.interval)
                return self._resend_request(tx)
            if inp.name == "F":
                return [TimedOut(tx.key), *self._terminate(tx, _TIMEOUT)]
            return []
        if isinstance(inp, _Resp):
            return self._nict_response(tx, inp.response, now)
        return []

    def _nict_response(self, tx: _ClientTx, response: Response, now: float) -> list[Event]:
        event = _RESPONSE_EVENT[response.status // 100]
        tx.state = NON_INVITE_CLIENT.rows[tx.state][event]
        events: list[Event] = [DeliverResponse(response, tx.key)]
        if event is _1XX:
            return events
        # Final -> Completed; E and F stop; Timer K = T4 (unreliable) or 0.
        self._disarm(tx, "E", "F")
        tx.data = b""  # no retransmission after a final response (s17.1.2.2)
        return events + self._wait(tx, "K", 0 if tx.reliable else self.timers.t4, now)

    def _nict_completed(self, tx: _ClientTx, inp: _Input, now: float) -> list[Event]:
        # Absorbs response retransmissions until Timer K fires.
        if isinstance(inp, _Fire) and inp.name == "K":
            return self._terminate(tx, _WAIT_OVER)
        return []


# The move a response makes, by its status class (``status // 100``): 1xx, 2xx,
# 300-699 (every three-digit status has its entry; the parser and respond() allow
# 100-699). Indexed where a response moves a transaction: no call per response.
_RESPONSE_EVENT: tuple[TxEvent, ...] = (_1XX, _1XX, _2XX) + (_FAIL,) * 7


def _build_ack(request: Request, response: Response) -> Request:
    """The ACK for a 300-699 response to ``request`` (RFC 3261 s17.1.1.3).

    Request-URI, Call-ID, From and CSeq number of the INVITE; the To of the
    response (with its tag); a single Via, the INVITE's top one (same branch);
    the INVITE's Route header fields.
    """
    headers: list[tuple[str, str]] = [("Via", request.get_all("via")[0])]
    headers += [("Route", value) for value in request.get_lines("route")]
    headers += [
        ("Max-Forwards", "70"),
        ("From", request.get("from") or ""),
        ("To", response.get("to") or request.get("to") or ""),
        ("Call-ID", request.call_id),
        ("CSeq", f"{request.cseq.number} ACK"),
    ]
    return Request.build("ACK", request.uri_text, headers)


def _new_tag() -> str:
    return random_hex(6)
