"""Who may hold a SIP TCP/TLS connection, and which one to close: sans-I/O.

One host on the LAN must not be able to lock TCP and TLS clients out by
opening connections and sending nothing (or half a header). The policy:

* a source (one IP address) holds at most ``per_source`` connections;
* a new connection has ``first_message_seconds`` to finish its TLS handshake
  and deliver one complete SIP message; one that did keeps ``idle_seconds``
  (CRLF keep-alives count as activity, RFC 5626 s3.5.1);
* at the global cap the least valuable connection is closed to make room for
  the newcomer instead of refusing it;
* trusted sources (a trunk's ``inbound_from`` networks, an address holding
  registered bindings) are not held to ``per_source`` and their connections
  are never closed to make room: strangers cannot crowd them out;
* an edge proxy's address (``serve --edge``) is trusted the same way, by IP
  alone (its connections come from any port): the edge holds a few long-lived
  connections that carry every phone and trunk behind it, so a per-source cap
  on it would lock the whole office out at once. Per real source the edge
  limits itself (deploy/kamailio/kamailio.cfg: pike), and the node's request
  limits use the source the edge names (engine.sip.edge).

:class:`StreamPolicy` decides; ``engine.shell.transports`` applies (closes sockets, counts,
logs). Time is ``now`` in monotonic seconds, passed in.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Why a newcomer was refused.
REFUSED_PER_SOURCE = "per_source"  # its source already holds per_source connections
REFUSED_CAP = "cap"  # the global cap, with nothing that may be closed for it
# Why an open connection was closed by the policy.
SHED_ROOM = "room"  # closed at the global cap to admit a newcomer
SHED_FIRST_MESSAGE = "first_message"  # no complete SIP message in time
SHED_HANDSHAKE = "handshake"  # the TLS handshake failed or did not finish in time


@dataclass(frozen=True, slots=True)
class StreamLimits:
    max_connections: int = 1024
    per_source: int = 32
    first_message_seconds: float = 5.0
    idle_seconds: float = 3600.0

    def __post_init__(self) -> None:
        for name in ("max_connections", "per_source"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        for name in ("first_message_seconds", "idle_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be more than 0, not {getattr(self, name)}")


@dataclass(frozen=True, slots=True)
class Shed:
    """A connection the policy closed (and forgot): the I/O layer closes its socket."""

    conn: int
    source: str
    transport: str
    valid: bool  # it had delivered a message: close it gracefully


@dataclass(frozen=True, slots=True)
class Admission:
    admitted: bool
    refused: str = ""  # REFUSED_* when not admitted
    shed: tuple[Shed, ...] = ()


@dataclass(slots=True)
class _Conn:
    source: str
    transport: str
    opened: float
    last: float  # the last bytes received
    valid: bool  # delivered a complete SIP message (or is ours: outbound)
    outbound: bool


@dataclass(slots=True)
class _Source:
    count: int
    trusted: bool
    # Its accepted connections that have not delivered a message yet, oldest first:
    # the first to close at the cap, found without scanning every connection.
    silent: dict[int, None] = field(default_factory=dict)


@dataclass(slots=True)
class StreamPolicy:
    limits: StreamLimits = field(default_factory=StreamLimits)
    _conns: dict[int, _Conn] = field(default_factory=dict)
    _sources: dict[str, _Source] = field(default_factory=dict)
    _by_transport: dict[str, int] = field(default_factory=dict)
    _trusted_ips: set[str] = field(default_factory=set)
    _trusted_nets: tuple[IpNetwork, ...] = ()
    _edge_ips: frozenset[str] = frozenset()

    # -- trust ----------------------------------------------------------------------
    def set_edges(self, ips: Iterable[str]) -> None:
        """The edge proxies' addresses: trusted whatever the directory and the
        registrations say (:meth:`set_trusted` does not replace them)."""
        self._edge_ips = frozenset(ips)
        for ip, source in self._sources.items():
            source.trusted = self._is_trusted(ip)

    def set_trusted(self, ips: Iterable[str], networks: Iterable[str]) -> None:
        """Replace the trusted addresses (registered sources) and networks (trunks)."""
        self._trusted_ips = set(ips)
        self._trusted_nets = tuple(ipaddress.ip_network(n, strict=False) for n in networks)
        for ip, source in self._sources.items():
            source.trusted = self._is_trusted(ip)

    def trust(self, ip: str) -> None:
        """One more trusted address (a REGISTER just succeeded from it)."""
        self._trusted_ips.add(ip)
        source = self._sources.get(ip)
        if source is not None:
            source.trusted = True

    def trusted(self, ip: str) -> bool:
        source = self._sources.get(ip)
        return source.trusted if source is not None else self._is_trusted(ip)

    def _is_trusted(self, ip: str) -> bool:
        if ip in self._trusted_ips or ip in self._edge_ips:
            return True
        if not self._trusted_nets:
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self._trusted_nets)

    # -- connections ----------------------------------------------------------------
    def admit(self, conn: int, ip: str, transport: str, now: float,
              outbound: bool = False) -> Admission:
        """A new connection ``conn`` from ``ip``: admitted (maybe closing others) or not.

        A connection the engine opened itself (to a trunk) is always admitted and
        never closed for another: the engine chose to open it.
        """
        source = self._sources.get(ip)
        trusted = source.trusted if source is not None else self._is_trusted(ip)
        shed: tuple[Shed, ...] = ()
        if not outbound:
            held = source.count if source is not None else 0
            if not trusted and held >= self.limits.per_source:
                return Admission(False, REFUSED_PER_SOURCE)
            if len(self._conns) >= self.limits.max_connections:
                victim = self._least_valuable()
                if victim is None:
                    return Admission(False, REFUSED_CAP)
                shed = (victim,)
                source = self._sources.get(ip)  # the victim may have been its last
        if source is None:
            source = self._sources[ip] = _Source(0, trusted)
        source.count += 1
        if not outbound:
            source.silent[conn] = None
        self._conns[conn] = _Conn(ip, transport, now, now, outbound, outbound)
        self._by_transport[transport] = self._by_transport.get(transport, 0) + 1
        return Admission(True, shed=shed)

    def _least_valuable(self) -> Shed | None:
        """The connection to close at the cap: never a trusted source's or our own;
        first one that never delivered a message, then from the busiest source (so
        a flood pays before a lone stranger in the middle of its handshake), then
        the longest idle, then the oldest."""
        busiest: list[_Source] = []
        for source in self._sources.values():
            if source.trusted or not source.silent:
                continue
            if not busiest or source.count > busiest[0].count:
                busiest = [source]
            elif source.count == busiest[0].count:
                busiest.append(source)
        conns = self._conns
        best: tuple[int, float, float] | None = None
        best_id = -1
        if busiest:
            candidates: Iterable[int] = (i for source in busiest for i in source.silent)
        else:  # every stranger's connection has delivered a message: scan them all
            candidates = (i for i, c in conns.items()
                          if not c.outbound and not self._sources[c.source].trusted)
        for conn_id in candidates:
            c = conns[conn_id]
            key = (-self._sources[c.source].count, c.last, c.opened)
            if best is None or key < best:
                best, best_id = key, conn_id
        if best is None:
            return None
        victim = conns[best_id]
        self.closed(best_id)
        return Shed(best_id, victim.source, victim.transport, victim.valid)

    def touched(self, conn: int, now: float) -> None:
        """Bytes arrived on ``conn`` (a keep-alive, or part of a message)."""
        c = self._conns.get(conn)
        if c is not None:
            c.last = now

    def delivered(self, conn: int, now: float) -> None:
        """``conn`` delivered a complete, well-formed SIP message."""
        c = self._conns.get(conn)
        if c is not None:
            c.valid = True
            c.last = now
            self._sources[c.source].silent.pop(conn, None)

    def closed(self, conn: int) -> None:
        """``conn`` is gone (whoever closed it); unknown ids are ignored."""
        c = self._conns.pop(conn, None)
        if c is None:
            return
        source = self._sources[c.source]
        source.count -= 1
        source.silent.pop(conn, None)
        if source.count <= 0:
            del self._sources[c.source]
        self._by_transport[c.transport] -= 1

    def deadline(self, conn: int) -> float | None:
        """When ``conn`` is to be closed if nothing more comes: the first-message
        deadline until it delivered a message, then the idle timeout."""
        c = self._conns.get(conn)
        if c is None:
            return None
        if c.valid:
            return c.last + self.limits.idle_seconds
        return c.opened + self.limits.first_message_seconds

    def valid(self, conn: int) -> bool:
        c = self._conns.get(conn)
        return c is not None and c.valid

    def known(self, conn: int) -> bool:
        return conn in self._conns

    def count(self, transport: str | None = None) -> int:
        if transport is None:
            return len(self._conns)
        return self._by_transport.get(transport, 0)

    def held_by(self, ip: str) -> int:
        source = self._sources.get(ip)
        return source.count if source is not None else 0


@dataclass(slots=True)
class RateLog:
    """Log an event the first time per key, then only count it for ``window`` seconds.

    A flood must cost one log line per source and minute, not one per connection.
    :meth:`flush` hands back the keys whose window ended with events counted
    but not logged (for one summary line each). At most ``max_keys`` keys are
    kept; past that, new keys share one overflow key per kind: ("*", kind).
    """

    window: float = 60.0
    max_keys: int = 10_000
    _open: dict[tuple[str, str], tuple[float, int]] = field(default_factory=dict)

    def hit(self, key: tuple[str, str], now: float) -> bool:
        """Count one event; True when it is to be logged now."""
        entry = self._open.get(key)
        if entry is None:
            if len(self._open) >= self.max_keys:
                key = ("*", key[1])
                entry = self._open.get(key)
            if entry is None:
                self._open[key] = (now, 0)
                return True
        start, count = entry
        self._open[key] = (start, count + 1)
        return False

    def flush(self, now: float) -> list[tuple[tuple[str, str], int]]:
        """Close the windows that ended: (key, events counted but not logged)."""
        out: list[tuple[tuple[str, str], int]] = []
        for key, (start, count) in list(self._open.items()):
            if now - start >= self.window:
                del self._open[key]
                if count:
                    out.append((key, count))
        return out
