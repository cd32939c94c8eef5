"""Overload control: past its limit the engine refuses fast and serves what matters
first (RFC 6357 s4-5, RFC 7339). Sans-I/O: bytes, the source and ``now`` in; what to
serve next and what to answer at once out.

Every message received (UDP datagram or framed stream message) is read cheaply
(:func:`read_head`: the start line and the To, Via and CSeq headers, by the parser's
lazy C scan, whose result the engine then uses) and put in one of four queues, served
strictly in this order (:class:`Klass`):

``dialog``   responses, ACK, BYE, CANCEL, requests inside a dialog (To tag), and
             retransmissions of a transaction already being served: what keeps
             calls that are up (and the engine's own transactions) working, and is
             cheap. Never refused; past ``max_items`` a newcomer evicts a lower class.
``refresh``  requests outside a dialog from sources the engine knows (an address
             holding a binding, a trunk): REGISTER refreshes, trunks' OPTIONS pings.
``invite``   new INVITEs.
``other``    new REGISTER, SUBSCRIBE, OPTIONS... from unknown sources, and messages
             too broken to read here (the parser answers them).

Overload is detected from queueing delay, not CPU: a new request of a class is
refused (a stateless ``503`` with a random ``Retry-After``) when what is queued at
its class or above has waited longer than that class may wait (``max_queue`` for
INVITEs, twice that for refreshes, half for the rest) or when the event loop lags
that much. A queue stays about ``max_queue`` deep and everything past it gets its
answer in microseconds, instead of waiting seconds to time out while its
retransmissions fill the queue. The lowest class starves first, so it is refused
first. A request still queued after twice its class's wait (a burst from a higher
class arrived after it) is refused then; a UDP request whose sender has already
retransmitted it (queued longer than T1 since its last copy; 2*T1 for non-INVITE)
is dropped without an answer, since the copies merged into it got none either and
the next one will be answered. A retransmission of a request still queued merges
into it; the ACK of one of our 503s is absorbed here.

New requests outside a dialog from unknown sources (not a trunk, no binding) also
pass a token bucket per source IP (``source_rate``/s, ``source_burst``), whatever the
load: one scanner cannot take the queue from the phones.

A client that marks its top Via with ``oc`` (RFC 7339 s5.1) gets the loss-based
parameters on the 503's Via: ``oc`` (the percentage of new requests refused over the
last second), ``oc-algo="loss"``, ``oc-validity`` (ms) and ``oc-seq``.
"""

from __future__ import annotations

import random
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

from engine.metrics import Metrics
from engine.sip.message import ParseError, Request, Response, Via, parse, random_hex

Addr = tuple[str, int]
Reply = tuple[bytes, Addr, str]  # data, destination, transport


class Klass(IntEnum):
    """Service classes, highest first (the queue of a lower number is served first)."""

    DIALOG = 0
    REFRESH = 1
    INVITE = 2
    OTHER = 3


CLASS_NAMES = ("dialog", "refresh", "invite", "other")

# Why a message was not served (the ``reason`` label of the shed counter):
DELAY = "delay"  # new request, its class's queue or the loop too late: 503 at arrival
EXPIRED = "expired"  # waited in the queue past twice its class's wait: 503
STALE = "stale"  # a UDP request its sender has retransmitted since: dropped
FULL = "full"  # the queue at max_items: 503 for a request, dropped otherwise
SOURCE_RATE = "source_rate"  # its unknown source over its token bucket: 503
CONGESTION = frozenset((DELAY, EXPIRED, STALE, FULL))


@dataclass(frozen=True, slots=True)
class OverloadConfig:
    max_queue: float = 0.2
    """Seconds a new INVITE may wait to be served (``serve --max-queue-ms``)."""
    max_items: int = 10_000
    """Messages queued at most (memory bound; a newcomer evicts a lower class)."""
    source_rate: float = 20.0
    """New requests per second from one unknown source IP (``--source-rate``)."""
    source_burst: float = 40.0
    max_sources: int = 100_000
    retry_after: tuple[int, int] = (2, 10)
    """The 503's Retry-After, seconds, drawn uniformly in this range (RFC 6357 s5:
    a fixed value would bring every refused client back in the same second)."""
    t1: float = 0.5
    calm: float = 2.0
    """Seconds without congestion shedding before the overload is declared over."""
    oc_validity_ms: int = 1000

    def __post_init__(self) -> None:
        low, high = self.retry_after
        if not 0 < low <= high:
            raise ValueError(f"retry_after {low}-{high}: need 0 < low <= high")
        if not self.max_queue > 0:
            raise ValueError(f"max_queue {self.max_queue}: must be more than 0")
        if self.source_rate <= 0 or self.source_burst < 1:
            raise ValueError("source_rate must be > 0 and source_burst >= 1")

    def limit(self, cls: Klass) -> float:
        """How long a new request of ``cls`` may wait before new ones are refused."""
        return self.max_queue * (0.0, 2.0, 1.0, 0.5)[cls]


@dataclass(slots=True)
class Head:
    """What :func:`read_head` reads of a message to class it."""

    response: bool
    method: str  # the request's method ("" for a response)
    to_tag: bool
    via: Via
    cseq_method: str
    msg: Request | Response  # the parsed message, for the engine

    @property
    def branch(self) -> str:
        return self.via.branch or ""


_VIA, _TO, _CSEQ, _FROM, _CALL_ID = range(5)
_NAMES = {b"via": _VIA, b"v": _VIA, b"to": _TO, b"t": _TO, b"cseq": _CSEQ,
          b"from": _FROM, b"f": _FROM, b"call-id": _CALL_ID, b"i": _CALL_ID}


def read_head(data: bytes, stream: bool = False) -> Head | None:
    """The method, To tag, top Via and CSeq method of ``data``; None when the message
    cannot be read (the engine's parser then answers it, or drops it).

    The reading is the engine's own parser: its C framing scan is lazy (values are
    split only when read, the Via, To and CSeq by C quick paths), so the start line
    and these three headers cost 2.8 us for a trunk's INVITE, against 3.7-4.4 us for
    a reader of our own in bytes operations; and the parsed message is handed to the
    engine, which would parse it again otherwise (the classification costs about
    1 us net)."""
    try:
        msg = parse(data, stream)
        if isinstance(msg, Response):
            return Head(True, "", True, msg.top_via, msg.cseq.method, msg)
        return Head(False, msg.method, msg.to.tag is not None, msg.top_via, msg.cseq.method,
                    msg)
    except ParseError:
        return None


def sent_by(via: Via) -> str:
    return via.host if via.port is None else f"{via.host}:{via.port}"


@dataclass(slots=True)
class Item:
    """One message waiting to be served."""

    data: bytes
    source: Addr
    transport: str
    cls: Klass
    arrived: float
    seen: float  # the last copy's arrival (retransmissions merge into the first)
    head: Head | None
    key: tuple[str, str, str] | None = None  # (method, branch, sent-by) while queued


@dataclass(slots=True)
class Episode:
    """One period of shedding, for the start and stop log lines."""

    started: float
    counts: dict[tuple[str, str], int] = field(default_factory=dict)


def _no_transaction(head: Head) -> bool:
    return False


def _nobody(source: Addr) -> bool:
    return False


def _as_received(req: Request, source: Addr) -> Addr:
    return source


class Overload:
    """The receive queue's policy: classification, admission, order, shedding, state.

    The asyncio layer calls :meth:`offer` for every message received, :meth:`pop`
    to get the next one to serve (highest class, oldest first), :meth:`tick` every
    few tens of milliseconds with the event loop's lag, and sends what
    :attr:`outbox` holds (the 503s) and logs what :attr:`events` holds.
    """

    def __init__(self, config: OverloadConfig | None = None, metrics: Metrics | None = None,
                 *, retransmits: Callable[[Head], bool] = _no_transaction,
                 is_known: Callable[[Addr], bool] = _nobody,
                 origin: Callable[[Request, Addr], Addr] = _as_received,
                 rng: random.Random | None = None, oc_seq_base: float = 0.0,
                 server: str = "Switchboard") -> None:
        self.config = config or OverloadConfig()
        self.metrics = metrics or Metrics()
        self._retransmits = retransmits
        self._known = is_known
        # A request's real source (engine.sip.edge: behind a trusted edge, the address
        # the edge names): it picks the class and the token bucket, so that one edge
        # does not count as one source for every phone and trunk behind it.
        self._origin = origin
        self._rng = rng or random.Random()
        self._oc_seq_base = oc_seq_base
        self._server = server.encode()
        self.queues: tuple[deque[Item], ...] = tuple(deque() for _ in Klass)
        self.queued = 0
        self._pending: dict[tuple[str, str, str], Item] = {}
        # Branches answered 503 here, for their ACKs (RFC 3261 s17.1.1.3: the ACK of a
        # non-2xx has the INVITE's branch). Bounded; the oldest go first.
        self._refused: OrderedDict[str, None] = OrderedDict()
        self._refused_max = 65_536
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()
        self.lag = 0.0
        self.outbox: list[Reply] = []
        self.events: list[tuple[str, dict[str, object]]] = []
        self.episode: Episode | None = None
        self._now = 0.0
        self._last_shed = 0.0
        self._congested_at = 0.0
        # The oc loss rate: new requests offered and refused for congestion, this
        # second and the last.
        self._window_start = 0.0
        self._offered = self._dropped_new = 0
        self._loss = 0  # percent, over the last full second
        self.oc_seq = 0.0

    # -- sources --------------------------------------------------------------------
    def _bucket_allows(self, ip: str, now: float) -> bool:
        cfg = self.config
        bucket = self._buckets.get(ip)
        if bucket is None:
            if len(self._buckets) >= cfg.max_sources:
                self._buckets.popitem(last=False)
            bucket = self._buckets[ip] = [cfg.source_burst, now]
        else:
            self._buckets.move_to_end(ip)
            bucket[0] = min(cfg.source_burst, bucket[0] + (now - bucket[1]) * cfg.source_rate)
            bucket[1] = now
        if bucket[0] < 1.0:
            return False
        bucket[0] -= 1.0
        return True

    # -- state ------------------------------------------------------------------------
    @property
    def congested(self) -> bool:
        """Shedding for delay or room within the last ``calm`` seconds."""
        return self._congested_at > 0 and self._congested_at + self.config.calm > self._now

    def loss_percent(self) -> int:
        return self._loss if self.congested else 0

    def wait(self, cls: Klass, now: float) -> float:
        """How long a new message of ``cls`` would wait, by what is queued ahead of it:
        the oldest waiting at its class or above, or the loop's lag if longer."""
        oldest = self.lag
        for q in self.queues[:cls + 1]:
            if q:
                age = now - q[0].arrived
                if age > oldest:
                    oldest = age
        return oldest

    def oldest(self, now: float) -> list[float]:
        """Per class, how long its oldest queued message has waited (0 when empty)."""
        return [now - q[0].arrived if q else 0.0 for q in self.queues]

    def tick(self, lag: float, now: float) -> None:
        """Every few tens of ms: the loop's measured lag; ends an episode once calm."""
        self._now = now
        self.lag = lag
        self.metrics.loop_lag.observe(lag)
        self._roll(now)
        episode = self.episode
        if episode is not None and now - self._last_shed > self.config.calm:
            self.events.append(("stopped", {
                "seconds": round(self._last_shed - episode.started, 1),
                "shed": {f"{c}/{r}": n for (c, r), n in sorted(episode.counts.items())}}))
            self.episode = None
            self.metrics.overloaded.set(0)

    def _roll(self, now: float) -> None:
        if now - self._window_start >= 1.0:
            offered, dropped = self._offered, self._dropped_new
            self._loss = round(100 * dropped / offered) if offered else 0
            self._offered = self._dropped_new = 0
            self._window_start = now

    # -- input --------------------------------------------------------------------------
    def offer(self, data: bytes, source: Addr, transport: str, now: float) -> None:
        """A message has arrived: queue it, merge it, or answer/drop it at once."""
        self._now = now
        if data[:1] in b"\r\n" and not data.strip(b"\r\n"):
            return  # a keep-alive (RFC 5626 s4.4.1 over UDP): nothing to serve
        head = read_head(data, transport != "udp")
        msg = head.msg if head is not None else None
        origin = self._origin(msg, source) if isinstance(msg, Request) else source
        cls = self._classify(head, origin)
        key: tuple[str, str, str] | None = None
        if head is not None and not head.response:
            via = head.via
            if head.method == "ACK":
                if via.branch in self._refused:
                    self.metrics.overload_absorbed.labels("ack_of_503").inc()
                    return  # the ACK of our stateless 503: nothing more to do
            elif cls != Klass.DIALOG and via.branch:
                key = (head.method, via.branch, sent_by(via))
                queued = self._pending.get(key)
                if queued is not None:
                    queued.seen = now  # a retransmission of a request still queued
                    self.metrics.overload_absorbed.labels("queued_retransmission").inc()
                    return
                if self._retransmits(head):
                    cls, key = Klass.DIALOG, None  # its transaction answers it, cheaply
        if cls >= Klass.REFRESH:
            self._roll(now)
            self._offered += 1
            if (cls >= Klass.INVITE and not self._known(origin)
                    and not self._bucket_allows(origin[0], now)):
                self._shed(data, head, source, transport, cls, SOURCE_RATE, now)
                return
            if self.wait(cls, now) > self.config.limit(cls):
                self._shed(data, head, source, transport, cls, DELAY, now)
                return
        if self.queued >= self.config.max_items and not self._make_room(cls, now):
            self._shed(data, head, source, transport, cls, FULL, now)
            return
        item = Item(data, source, transport, cls, now, now, head, key)
        self.queues[cls].append(item)
        self.queued += 1
        if key is not None:
            self._pending[key] = item

    def _classify(self, head: Head | None, source: Addr) -> Klass:
        if head is None:
            return Klass.OTHER
        if head.response or head.to_tag or head.method in ("ACK", "BYE", "CANCEL"):
            return Klass.DIALOG
        if head.method == "INVITE":
            return Klass.INVITE
        return Klass.REFRESH if self._known(source) else Klass.OTHER

    def _make_room(self, cls: Klass, now: float) -> bool:
        """At max_items: evict the newest of the lowest class below ``cls``."""
        for lower in range(len(self.queues) - 1, cls, -1):
            q = self.queues[lower]
            if q:
                victim = q.pop()
                self._dequeued(victim)
                self._shed(victim.data, victim.head, victim.source, victim.transport,
                           victim.cls, FULL, now)
                return True
        return False

    def _dequeued(self, item: Item) -> None:
        self.queued -= 1
        if item.key is not None and self._pending.get(item.key) is item:
            del self._pending[item.key]

    # -- output -------------------------------------------------------------------------
    def pop(self, now: float) -> Item | None:
        """The next message to serve: the oldest of the highest class. Requests that
        waited too long on the way are refused or dropped here (see the module)."""
        self._now = now
        t1 = self.config.t1
        for cls, q in enumerate(self.queues):
            while q:
                item = q.popleft()
                self._dequeued(item)
                if cls:
                    if item.transport == "udp" and now - item.seen > (
                            t1 if item.head is not None and item.head.method == "INVITE"
                            else 2 * t1):
                        self._shed(item.data, item.head, item.source, item.transport,
                                   item.cls, STALE, now)
                        continue
                    if now - item.arrived > 2 * self.config.limit(item.cls):
                        self._shed(item.data, item.head, item.source, item.transport,
                                   item.cls, EXPIRED, now)
                        continue
                self.metrics.observe_wait(CLASS_NAMES[cls], now - item.arrived)
                return item
        return None

    def sweep(self, now: float) -> None:
        """Refuse what a starved class holds past twice its wait (it would be refused
        when its turn came anyway; its sender should hear now)."""
        self._now = now
        for cls in (Klass.OTHER, Klass.INVITE, Klass.REFRESH):
            q = self.queues[cls]
            limit = 2 * self.config.limit(cls)
            while q and now - q[0].arrived > limit:
                item = q.popleft()
                self._dequeued(item)
                reason = STALE if item.transport == "udp" and now - item.seen > (
                    self.config.t1 if cls == Klass.INVITE else 2 * self.config.t1) else EXPIRED
                self._shed(item.data, item.head, item.source, item.transport, cls, reason,
                           now)

    # -- shedding -----------------------------------------------------------------------
    def _shed(self, data: bytes, head: Head | None, source: Addr, transport: str,
              cls: Klass, reason: str, now: float) -> None:
        name = CLASS_NAMES[cls]
        self.metrics.count_shed(name, reason)
        episode = self.episode
        if episode is None:
            episode = self.episode = Episode(now)
            self.events.append(("started", {"class": name, "reason": reason,
                                            "waited_ms": round(1000 * self.wait(cls, now)),
                                            "loop_lag_ms": round(1000 * self.lag),
                                            "queued": self.queued}))
            self.metrics.overloaded.set(1)
        episode.counts[(name, reason)] = episode.counts.get((name, reason), 0) + 1
        self._last_shed = now
        if reason in CONGESTION:
            self._congested_at = now
            if cls >= Klass.REFRESH:
                self._dropped_new += 1
        if reason == STALE or head is None or head.response or head.method == "ACK":
            return  # nothing to answer: a response, an ACK (never 503), or stale
        reply = self.refusal(data, head, source)
        if reply is not None:
            self.outbox.append((reply, source, transport))
            branch = head.branch
            if head.method == "INVITE" and branch:
                refused = self._refused
                refused[branch] = None
                if len(refused) > self._refused_max:
                    refused.popitem(last=False)

    def refusal(self, data: bytes, head: Head, source: Addr) -> bytes | None:
        """A stateless 503 for ``data`` (RFC 3261 s8.2.6, s21.5.4): its Via (the top one
        stamped received/rport, and RFC 7339's parameters when it asked with ``oc``),
        From, To (with a tag), Call-ID and CSeq copied as they came; a random
        Retry-After. None when the request is too broken to answer."""
        via = head.via
        params = [(k, v) for k, v in via.params
                  if k not in ("received", "rport", "oc", "oc-algo", "oc-validity", "oc-seq")]
        params += [("received", source[0]), ("rport", str(source[1]))]
        if via.param("oc") is not None:
            loss = self.loss_percent()
            validity = self.config.oc_validity_ms if loss else 0
            params += [("oc", str(loss)), ("oc-algo", '"loss"'),
                       ("oc-validity", str(validity)),
                       ("oc-seq", f"{self._oc_seq_base + self._now:.3f}")]
        top = str(via._replace(params=tuple(params))).encode()
        end = data.find(b"\r\n\r\n")
        eol = data.find(b"\r\n")
        out = [b"SIP/2.0 503 Service Unavailable"]
        first_via = True
        seen = 0
        for line in data[eol + 2:end].split(b"\r\n"):
            colon = line.find(b":")
            key = _NAMES.get(line[:colon].rstrip(b" \t").lower()) if colon > 0 else None
            if key is None:
                continue
            if key == _VIA and first_via:
                first_via = False
                value = line[colon + 1:].strip()
                comma = value.find(b",")
                line = b"Via: " + top + (value[comma:] if comma >= 0 else b"")
            elif key == _TO:
                if not head.to_tag:
                    line = line.rstrip() + b";tag=" + random_hex(6).encode()
            elif key != _VIA and seen & (1 << key):
                continue  # one From, To, Call-ID, CSeq
            seen |= 1 << key
            out.append(line)
        if seen != 0b11111:
            return None
        low, high = self.config.retry_after
        out += [b"Retry-After: %d" % self._rng.randint(low, high), b"Server: " + self._server,
                b"Content-Length: 0", b"", b""]
        return b"\r\n".join(out)
