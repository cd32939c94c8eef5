"""Where a request really came from, when an edge proxy relayed it.

Behind the Kamailio edge (deploy/kamailio/kamailio.cfg) every request arrives from
the edge's address, so the engine could not tell a trunk from a phone by source.
The edge removes any ``X-Switchboard-Source`` a request brought from outside and
adds its own, naming the address it received the request from::

    X-Switchboard-Source: 203.0.113.7:5060;proto=udp

The engine believes that header only from an address it was told is an edge
(``serve --edge ADDR[,ADDR]``): from anyone else it is ignored, dropped from the
request and logged once per source, so a phone cannot pose as a trunk by writing
the header itself. The real source then names the trunk (``inbound_from``), and
keys the per-source limits, the overload classes and the failed-authentication
block. Responses still go to the edge (the address the request came from).
Sans-I/O: a request and its source in, an address out.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections import OrderedDict
from collections.abc import Iterable, Sequence

import structlog

from engine.sip.message import ParseError, Request, parse_address

__all__ = ["HEADER", "EdgeTrust", "parse_edges"]

HEADER = "X-Switchboard-Source"
_KEY = HEADER.lower()

Addr = tuple[str, int]
# Sources already logged for sending the header without being an edge: bounded, so a
# scanner trying many addresses cannot grow it without end (the oldest go first).
WARNED_MAX = 4096

log = structlog.get_logger("switchboard.edge")


def _addr(text: str, what: str) -> tuple[str, int | None]:
    """'IP', 'IP:PORT' or '[IPv6]:PORT' -> (ip, port or None); ValueError naming ``what``."""
    text = text.strip()
    port_text = ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{what} {text!r}: expected [IPv6]:PORT")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host = text  # an IPv4 address, or an IPv6 one without a port
    try:
        ip = str(ipaddress.ip_address(host))
    except ValueError:
        raise ValueError(f"{what} {text!r}: not an IP address (IP, IP:PORT or [IPv6]:PORT)")\
            from None
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"{what} {text!r}: the port must be a number from 1 to 65535")
        return ip, int(port_text)
    return ip, None


def parse_edges(text: str) -> tuple[tuple[str, int | None], ...]:
    """``serve --edge`` ('ADDR[,ADDR]', each IP or IP:PORT): the edges' addresses."""
    return tuple(_addr(part, "--edge") for part in text.split(",") if part.strip())


def parse_source(value: str) -> Addr | None:
    """The header's value ('IP:PORT;proto=udp') -> (ip, port); None when unreadable."""
    hostport = value.split(";", 1)[0].strip()
    try:
        ip, port = _addr(hostport, HEADER)
    except ValueError:
        return None
    return (ip, port) if port is not None else None


class EdgeTrust:
    """Which sources are edges, and a request's real source."""

    def __init__(self, edges: Iterable[tuple[str, int | None]] = ()) -> None:
        self.edges = tuple(edges)
        self._ips = {ip for ip, _ in self.edges}
        self._warned: OrderedDict[str, None] = OrderedDict()

    def is_edge_ip(self, ip: str) -> bool:
        """``ip`` is an edge's, whatever the port (its TCP connections come from any)."""
        return ip in self._ips

    def registered_ip(self, source_ip: str, path: Sequence[str]) -> str:
        """The address a phone registered from: behind an edge, the ``received=`` of
        the Path the edge put first (RFC 3327; Kamailio's add_path_received), else
        ``source_ip``. It makes the phone a known source for the receive queue's
        classes and token bucket, as a phone registered directly is."""
        if source_ip not in self._ips or not path:
            return source_ip
        try:
            received = parse_address(path[0], "Path").uri.param("received")
        except ParseError:
            return source_ip
        if not received:
            return source_ip
        text = urllib.parse.unquote(received)
        text = text.partition(":")[2] if text.lower().startswith(("sip:", "sips:")) else text
        hostport = text.split(";", 1)[0]
        try:
            ip, _ = _addr(hostport, "received")
        except ValueError:
            return source_ip
        return ip

    def is_edge(self, source: Addr) -> bool:
        if source[0] not in self._ips:
            return False
        return any(ip == source[0] and (port is None or port == source[1])
                   for ip, port in self.edges)

    def origin(self, req: Request, source: Addr) -> Addr:
        """Where ``req`` came from: its header's address when ``source`` is an edge and
        the header is readable, else ``source`` (logged once per source when the
        header is there but not believed)."""
        if not req.has(_KEY):
            return source
        if self.is_edge(source):
            # The edge appends its own line last (after removing any from outside).
            found = parse_source(req.get_lines(_KEY)[-1])
            if found is not None:
                return found
            self._warn(source, "unreadable", req)
            return source
        self._warn(source, "not an edge", req)
        return source

    def strip(self, req: Request, source: Addr) -> Request:
        """``req`` without the header unless ``source`` is an edge: what an outsider
        wrote there goes no further."""
        if not req.has(_KEY) or self.is_edge(source):
            return req
        self._warn(source, "not an edge", req)
        stripped = req.replace(HEADER)
        assert isinstance(stripped, Request)
        return stripped

    def _warn(self, source: Addr, why: str, req: Request) -> None:
        key = f"{source[0]}:{source[1]}"
        if key in self._warned:
            return
        self._warned[key] = None
        if len(self._warned) > WARNED_MAX:
            self._warned.popitem(last=False)
        log.warning(f"{HEADER} ignored", source=key, reason=why,
                    value=(req.get(_KEY) or "")[:100], method=req.method)
