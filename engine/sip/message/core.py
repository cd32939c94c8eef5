"""SIP message objects and the framing parser (RFC 3261 s7, s18.3, s20).

Parsing is lazy: :func:`parse` splits the start line and the header lines
(unfolding continuations, expanding compact names) and checks every line, but
keeps only the raw value of each header's first line; the full header list
and index are built on first use, and structured values (Via, From, To, CSeq,
URIs) are parsed on first access and cached. A message is immutable from the
outside: builders return new ones. Unknown headers, and every header nobody
rewrote, serialize byte-exact.

Cost model (CPython 3.11, counted with callgrind): roughly 1,000 instructions
per str method call, 300 per dict look-up, 1,500 per NamedTuple built, and
2,000 plus 30-100 per character per regex match; hence one partition per
header line at parse time, and value parsers that do one regex match and
build their tuples straight from its groups (the quick paths in grammar.py).
The framing scan and those quick paths also exist in C (_speedups.c, used
when built), which gives the same results; the Python code stays the
reference and the whole parser without it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

from engine.sip.message.grammar import (
    _METHODS,
    SPEEDUPS,
    URI,
    Address,
    CSeq,
    ParseError,
    Via,
    is_token,
    parse_address,
    parse_cseq,
    parse_uri,
    parse_via,
    split_commas,
)

ENCODING = "utf-8"
ERRORS = "surrogateescape"

# RFC 3261 s7.3.3 and the IANA registry of compact forms.
COMPACT = {
    "i": "call-id", "m": "contact", "e": "content-encoding", "l": "content-length",
    "c": "content-type", "f": "from", "s": "subject", "k": "supported", "t": "to",
    "v": "via", "o": "event", "r": "refer-to", "b": "referred-by", "u": "allow-events",
    "a": "accept-contact", "j": "reject-contact", "d": "request-disposition",
    "x": "session-expires", "y": "identity",
}
_CANONICAL = {
    "call-id": "Call-ID", "cseq": "CSeq", "www-authenticate": "WWW-Authenticate",
    "mime-version": "MIME-Version", "rack": "RAck", "rseq": "RSeq",
    "p-asserted-identity": "P-Asserted-Identity", "sip-etag": "SIP-ETag",
    "sip-if-match": "SIP-If-Match",
}
# Headers whose values are comma-separated lists (RFC 3261 s7.3.1).
LIST_HEADERS = frozenset((
    "via", "route", "record-route", "contact", "allow", "supported", "require",
    "proxy-require", "unsupported", "accept", "accept-encoding", "accept-language",
    "allow-events", "content-encoding", "in-reply-to", "history-info", "diversion",
    "path", "service-route", "p-asserted-identity", "reason", "content-language",
))
_KNOWN_KEYS = frozenset(COMPACT.values()) | LIST_HEADERS | frozenset((
    "cseq", "max-forwards", "expires", "min-expires", "authorization",
    "proxy-authorization", "www-authenticate", "proxy-authenticate", "user-agent", "server",
    "date", "timestamp", "organization", "priority", "retry-after", "warning",
    "mime-version", "authentication-info", "error-info", "alert-info", "call-info",
    "reply-to", "content-disposition",
))

MAX_HEADERS = 256

# One header line: (key, name, value, raw). ``key`` is the lowercased full
# name, ``value`` the unfolded value, ``raw`` the original line(s) without
# the final CRLF, or None for a header the engine wrote.
Header = tuple[str, str, str, str | None]


def canonical_name(key: str) -> str:
    name = _CANONICAL.get(key)
    if name is None:
        name = "-".join(part.capitalize() for part in key.split("-"))
    return name


def header_key(name: str) -> str:
    key = name.lower()
    return COMPACT.get(key, key)


class Message:
    """A parsed or built SIP message. Treat as immutable.

    A message from :func:`parse` keeps its header lines as text and, at first,
    only a map from each header key to the raw value of its first line; the
    full :attr:`headers` list and the per-name index are built on first use.
    """

    __slots__ = ("_cache", "_cseq", "_first", "_from", "_headers", "_index", "_text", "_to",
                 "_top_via", "body")

    def __init__(self, headers: list[Header], body: bytes,
                 index: dict[str, list[int]] | None = None) -> None:
        self._headers: list[Header] | None = headers
        self.body = body
        if index is None:
            index = _index_of(headers)
        self._index: dict[str, list[int]] | None = index
        # key -> value of the first line; raw (unstripped) when _text is set
        self._first = {key: headers[idx[0]][2] for key, idx in index.items()}
        # The head (start line and header lines) as parsed, when the header
        # list is still to be built from it.
        self._text: str | None = None
        self._cache: dict[str, Any] | None = None
        self._top_via: Via | None = None
        self._from: Address | None = None
        self._to: Address | None = None
        self._cseq: CSeq | None = None

    # -- generic access -------------------------------------------------
    def start_line(self) -> str:
        raise NotImplementedError

    @property
    def headers(self) -> list[Header]:
        """Every header line as (key, name, value, raw), in message order."""
        headers = self._headers
        if headers is None:
            assert self._text is not None
            headers = []
            self._index = {}
            _split_plain(self._text.split("\r\n"), headers, self._index)
            self._headers = headers
        return headers

    @headers.setter
    def headers(self, headers: list[Header]) -> None:
        self._headers = headers
        self._index = _index_of(headers)
        self._first = {key: headers[idx[0]][2] for key, idx in self._index.items()}
        self._text = None
        self._cache = self._top_via = self._from = self._to = self._cseq = None

    def _positions(self) -> dict[str, list[int]]:
        """Header key -> the indexes of its lines in :attr:`headers`."""
        index = self._index
        if index is None:
            self.headers  # noqa: B018 - builds the index too
            assert self._index is not None
            index = self._index
        return index

    def _value(self, key: str) -> str | None:
        value = self._first.get(key)
        if value is not None and self._text is not None:
            return value.strip(" \t")
        return value

    def get(self, name: str) -> str | None:
        """The value of the first header line of ``name`` (compact forms accepted)."""
        key = _KEY_OF.get(name)
        return self._value(header_key(name) if key is None else key)

    def get_lines(self, name: str) -> list[str]:
        """Every header line of ``name``, unsplit."""
        idx = self._positions().get(header_key(name))
        headers = self.headers
        return [] if idx is None else [headers[i][2] for i in idx]

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``; list headers are split at their commas."""
        key = header_key(name)
        idx = self._positions().get(key)
        if idx is None:
            return []
        headers = self.headers
        if key not in LIST_HEADERS:
            return [headers[i][2] for i in idx]
        out: list[str] = []
        for i in idx:
            out.extend(split_commas(headers[i][2]))
        return out

    def has(self, name: str) -> bool:
        return header_key(name) in self._first

    def count(self, name: str) -> int:
        idx = self._positions().get(header_key(name))
        return 0 if idx is None else len(idx)

    def names(self) -> Iterator[str]:
        return iter(self._positions())

    # -- parsed, cached values -----------------------------------------
    def _cached(self) -> dict[str, Any]:
        cache = self._cache
        if cache is None:
            cache = self._cache = {}
        return cache

    @property
    def call_id(self) -> str:
        value = self._first.get("call-id")
        if value is None:
            raise ParseError("missing Call-ID")
        return value.strip(" \t") if self._text is not None else value

    @property
    def cseq(self) -> CSeq:
        c = self._cseq
        if c is None:
            value = self._first.get("cseq")
            if value is None:
                raise ParseError("missing CSeq")
            if self._text is not None:
                value = value.strip(" \t")
            c = self._cseq = parse_cseq(value)
        return c

    @property
    def vias(self) -> list[Via]:
        cache = self._cached()
        v: list[Via] | None = cache.get("via")
        if v is None:
            v = cache["via"] = [parse_via(item) for item in self.get_all("via")]
        return v

    @property
    def top_via(self) -> Via:
        c = self._top_via
        if c is None:
            value = self._first.get("via")
            if value is None:
                raise ParseError("missing Via")
            if self._text is not None:
                value = value.strip(" \t")
            if "," in value:
                first = split_commas(value)
                if not first:
                    raise ParseError("empty Via")
                value = first[0]
            c = self._top_via = parse_via(value)
        return c

    @property
    def from_(self) -> Address:
        a = self._from
        if a is None:
            value = self._first.get("from")
            if value is None:
                raise ParseError("missing From")
            if self._text is not None:
                value = value.strip(" \t")
            a = self._from = parse_address(value, "From")
        return a

    @property
    def to(self) -> Address:
        a = self._to
        if a is None:
            value = self._first.get("to")
            if value is None:
                raise ParseError("missing To")
            if self._text is not None:
                value = value.strip(" \t")
            a = self._to = parse_address(value, "To")
        return a

    @property
    def contacts(self) -> list[Address]:
        """Contact values; ``Contact: *`` is not an address: check :attr:`contact_star`."""
        cache = self._cached()
        c: list[Address] | None = cache.get("contact")
        if c is None:
            c = cache["contact"] = [
                parse_address(v, "Contact") for v in self.get_all("contact") if v != "*"
            ]
        return c

    @property
    def contact_star(self) -> bool:
        return "*" in self.get_all("contact")

    @property
    def routes(self) -> list[Address]:
        return [parse_address(v, "Route") for v in self.get_all("route")]

    @property
    def max_forwards(self) -> int | None:
        value = self._first.get("max-forwards")
        if value is None:
            return None
        value = value.strip()
        if value.isdigit() and len(value) <= 10:
            hops = int(value)
            if hops <= 255:
                return hops
        raise ParseError(f"Max-Forwards {value[:20]!r}: not a number from 0 to 255")

    @property
    def expires(self) -> int | None:
        value = self._first.get("expires")
        if value is None:
            return None
        value = value.strip()
        if not value.isdigit():
            raise ParseError(f"Expires {value[:20]!r}: not a number of seconds")
        return min(int(value), 2**32 - 1)

    @property
    def transaction_branch(self) -> str | None:
        """The top Via branch when it carries the RFC 3261 magic cookie."""
        branch = self.top_via.branch
        if branch and branch.startswith("z9hG4bK") and len(branch) > 7:
            return branch
        return None

    # -- building -------------------------------------------------------
    def _with_headers(self, headers: list[Header]) -> Message:
        raise NotImplementedError

    def replace(self, name: str, *values: str) -> Message:
        """A copy where every ``name`` header is replaced by ``values`` (at the first's place)."""
        key = header_key(name)
        out: list[Header] = []
        placed = False
        for h in self.headers:
            if h[0] == key:
                if not placed:
                    out.extend((key, canonical_name(key), v, None) for v in values)
                    placed = True
                continue
            out.append(h)
        if not placed:
            out.extend((key, canonical_name(key), v, None) for v in values)
        return self._with_headers(out)

    def prepend(self, name: str, value: str) -> Message:
        key = header_key(name)
        return self._with_headers([(key, canonical_name(key), value, None), *self.headers])

    def append(self, name: str, value: str) -> Message:
        key = header_key(name)
        return self._with_headers([*self.headers, (key, canonical_name(key), value, None)])

    def remove_first_value(self, name: str) -> Message:
        """A copy without the first value of a list header (e.g. the top Via or Route)."""
        key = header_key(name)
        idx = self._positions().get(key)
        if idx is None:
            return self
        headers = self.headers
        first = idx[0]
        values = split_commas(headers[first][2])
        out = list(headers)
        if len(values) <= 1:
            del out[first]
        else:
            out[first] = (key, headers[first][1], ", ".join(values[1:]), None)
        return self._with_headers(out)

    def to_bytes(self) -> bytes:
        parts = [self.start_line()]
        for key, name, value, raw in self.headers:
            if raw is not None:
                parts.append(raw)
            elif key == "content-length":
                parts.append(f"Content-Length: {len(self.body)}")
            else:
                parts.append(f"{name}: {value}")
        parts.append("")
        parts.append("")
        return "\r\n".join(parts).encode(ENCODING, ERRORS) + self.body

    def __bytes__(self) -> bytes:
        return self.to_bytes()


def _index_of(headers: list[Header]) -> dict[str, list[int]]:
    index: dict[str, list[int]] = {}
    for i, h in enumerate(headers):
        index.setdefault(h[0], []).append(i)
    return index


class Request(Message):
    __slots__ = ("_uri", "method", "uri_text", "version")

    def __init__(self, method: str, uri_text: str, headers: list[Header], body: bytes = b"",
                 version: str = "SIP/2.0", index: dict[str, list[int]] | None = None) -> None:
        super().__init__(headers, body, index)
        self.method = method
        self.uri_text = uri_text
        self.version = version
        self._uri: URI | None = None

    def start_line(self) -> str:
        return f"{self.method} {self.uri_text} {self.version}"

    @property
    def uri(self) -> URI:
        u = self._uri
        if u is None:
            u = self._uri = parse_uri(self.uri_text)
        return u

    def _with_headers(self, headers: list[Header]) -> Request:
        return Request(self.method, self.uri_text, headers, self.body, self.version)

    def with_uri(self, uri: str) -> Request:
        return Request(self.method, uri, list(self.headers), self.body, self.version)

    @classmethod
    def build(cls, method: str, uri: str, headers: Iterable[tuple[str, str]],
              body: bytes = b"") -> Request:
        """A new request; Content-Length is set from the body."""
        return cls(method, uri, _built_headers(headers), body)

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri_text}>"


class Response(Message):
    __slots__ = ("reason", "status", "version")

    def __init__(self, status: int, reason: str, headers: list[Header], body: bytes = b"",
                 version: str = "SIP/2.0", index: dict[str, list[int]] | None = None) -> None:
        super().__init__(headers, body, index)
        self.status = status
        self.reason = reason
        self.version = version

    def start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    def _with_headers(self, headers: list[Header]) -> Response:
        return Response(self.status, self.reason, headers, self.body, self.version)

    @classmethod
    def build(cls, status: int, reason: str, headers: Iterable[tuple[str, str]],
              body: bytes = b"") -> Response:
        return cls(status, reason, _built_headers(headers), body)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


def _built_headers(headers: Iterable[tuple[str, str]]) -> list[Header]:
    out: list[Header] = []
    has_length = False
    for name, value in headers:
        key = header_key(name)
        has_length = has_length or key == "content-length"
        out.append((key, canonical_name(key) if key != name.lower() or name.islower() else name,
                    value, None))
    if not has_length:
        out.append(("content-length", "Content-Length", "", None))
    return out


REASONS = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 200: "OK", 202: "Accepted", 301: "Moved Permanently",
    302: "Moved Temporarily", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable",
    407: "Proxy Authentication Required", 408: "Request Timeout", 415: "Unsupported Media Type",
    416: "Unsupported URI Scheme", 420: "Bad Extension", 423: "Interval Too Brief",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist",
    482: "Loop Detected", 483: "Too Many Hops", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 500: "Server Internal Error", 501: "Not Implemented",
    503: "Service Unavailable", 504: "Server Time-out", 505: "Version Not Supported",
    513: "Message Too Large", 603: "Decline",
}


WARNING_MAX = 160


def short_text(text: str) -> str:
    """Printable ASCII, at most WARNING_MAX characters: a reply or log line about a
    malformed request must never grow with it (no UDP amplification)."""
    ascii_text = text.encode("ascii", "replace").decode("ascii")
    safe = "".join(c if " " <= c <= "~" else "?" for c in ascii_text)
    return safe if len(safe) <= WARNING_MAX else safe[: WARNING_MAX - 3] + "..."


def warning_value(text: str) -> str:
    """A Warning header value (RFC 3261 s20.43) carrying ``text``, capped and quoted."""
    safe = short_text(text).replace("\\", "\\\\").replace('"', "'")
    return f'399 switchboard "{safe}"'


_POOL_SIZE = 4096
_pool = b""
_pool_pos = 0


def random_bytes(nbytes: int) -> bytes:
    """``nbytes`` cryptographically random bytes (os.urandom) drawn from a 4 KiB pool:
    one system call per hundreds of tags, branches, Call-IDs, nonces and SDP session
    ids instead of one each (RFC 3261 s19.3: tags cryptographically random;
    s8.1.1.4 Call-IDs). Each byte is handed out once."""
    global _pool, _pool_pos
    if _pool_pos + nbytes > len(_pool):
        _pool = os.urandom(max(_POOL_SIZE, nbytes))
        _pool_pos = 0
    start = _pool_pos
    _pool_pos += nbytes
    return _pool[start:_pool_pos]


def random_hex(nbytes: int) -> str:
    """:func:`random_bytes` as hex."""
    return random_bytes(nbytes).hex()


def random_below(bound: int) -> int:
    """A random integer in [0, bound) from :func:`random_bytes` (bound < 2**32: the
    modulo bias of 8 random bytes is below 2**-32)."""
    return int.from_bytes(random_bytes(8)) % bound


def new_tag() -> str:
    return random_hex(6)


def make_response(request: Request, status: int, reason: str | None = None,
                  headers: Iterable[tuple[str, str]] = (), body: bytes = b"",
                  to_tag: str | None = None) -> Response:
    """A response to ``request`` per RFC 3261 s8.2.6.2: Via, From, To, Call-ID, CSeq copied.

    A To tag is added to final and non-100 responses when the request had
    none (``to_tag`` chooses it, for a stable dialog identity). A response
    that creates a dialog (101-299 to INVITE or SUBSCRIBE) also copies the
    Record-Route (s12.1.1): the caller's in-dialog requests then go through
    the proxies that asked, such as the edge in front of several engines.
    """
    out: list[Header] = []
    to: Address | None = None
    copied = ("via", "from", "call-id", "cseq", "record-route") if (
        100 < status < 300 and request.method in ("INVITE", "SUBSCRIBE")) else (
        "via", "from", "call-id", "cseq")
    for h in request.headers:
        key = h[0]
        if key in copied:
            out.append(h)
        elif key == "to":
            value = h[2]
            try:
                to = request.to
                has_tag = to.tag is not None
            except ParseError:
                to = None
                has_tag = ";tag=" in value.replace(" ", "").lower()
            if status > 100 and not has_tag:
                tag = to_tag or new_tag()
                value = f"{value};tag={tag}"
                out.append((key, "To", value, None))
                if to is not None:
                    to = Address(to.uri, to.display, (*to.params, ("tag", tag)), to.angle)
            else:
                out.append(h)
    for name, value in headers:
        key = header_key(name)
        out.append((key, canonical_name(key), value, None))
    out.append(("content-length", "Content-Length", "", None))
    resp = Response(status, reason or REASONS.get(status, "Unknown"), out, body)
    # What the response copied from the request reads the same: keep the parsed forms
    # (the transaction layer reads the To tag of every response it sends).
    resp._to = to
    resp._from = request._from
    resp._cseq = request._cseq
    return resp


def _parse_folded(rest: str, headers: list[Header]) -> ParseError | None:
    """The slow path: header lines with continuations (RFC 3261 s7.3.1 folding)."""
    error: ParseError | None = None
    lines = rest.replace("\r\n", "\n").split("\n")
    if len(lines) > MAX_HEADERS:
        raise ParseError(f"more than {MAX_HEADERS} header lines", 513)
    for line in lines:
        if not line:
            continue
        if line[0] in " \t":
            if not headers:
                error = error or ParseError("continuation line before any header")
                continue
            key, name, value, raw = headers[-1]
            more = line.strip(" \t")
            joined = f"{value} {more}" if value and more else value or more
            headers[-1] = (key, name, joined, f"{raw}\r\n{line}")
            continue
        colon = line.find(":")
        if colon <= 0:
            error = error or ParseError(f"header line without a name and colon: {line[:60]!r}")
            continue
        name = line[:colon]
        key = name.lower().rstrip(" \t")
        key = COMPACT.get(key, key)
        if not is_token(key):
            error = error or ParseError(f"bad header name {name[:60]!r}")
            continue
        headers.append((key, name, line[colon + 1 :].strip(" \t"), line))
    return error


def _split_plain(lines: list[str], headers: list[Header],
                 index: dict[str, list[int]]) -> ParseError | None:
    """Header lines without continuations into ``headers`` and ``index``.

    ``lines[0]`` is the start line, skipped. Returns the first fault found.
    """
    error: ParseError | None = None
    for line in lines[1:]:
        colon = line.find(":")
        name = line[:colon]
        key = name.lower()
        if key not in _KNOWN_KEYS or colon < 0:
            if not line:
                continue
            key = key.rstrip(" \t")
            key = COMPACT.get(key, key)
            if colon <= 0 or "\r" in line or not is_token(key):
                error = error or ParseError(f"bad header line {line[:60]!r}")
                continue
        slot = index.get(key)
        if slot is None:
            index[key] = [len(headers)]
        else:
            slot.append(len(headers))
        headers.append((key, name, line[colon + 1 :].strip(" \t"), line))
    return error


# Header names as they appear on the wire -> key, for the names whose line
# the fast scan may take without looking further: the known headers
# (_KNOWN_KEYS, whose values may hold any character, as in _split_plain), in
# the spellings of canonical_name; other spellings are added as they are met
# (_line_key), up to _NAMES_MAX entries.
_LINE_KEYS: dict[str, str] = {}
_OTHER_KEYS: dict[str, str] = {}  # the same for other valid names (compact, extension)
_NAMES_MAX = 2000
# Any name a caller may pass to get() -> key (canonical, lower-case and compact forms).
_KEY_OF: dict[str, str] = {}


def _learn_names() -> None:
    for key in _KNOWN_KEYS:
        _LINE_KEYS[canonical_name(key)] = key
        _LINE_KEYS[key] = key
        _KEY_OF[canonical_name(key)] = key
        _KEY_OF[key] = key
    for compact, key in COMPACT.items():
        _OTHER_KEYS[compact] = key
        _OTHER_KEYS[compact.upper()] = key
        _KEY_OF[compact] = key
        _KEY_OF[compact.upper()] = key


def _line_key(name: str, sep: str, line: str) -> str | None:
    """The key of a header line the fast scan of :func:`parse` did not take (a name
    not in _LINE_KEYS, no colon, a bare LF), as :func:`_split_plain` would find it;
    None when only :func:`_parse_slow` can tell (fold, bad line, bare CR or LF)."""
    if not sep or "\n" in line:
        return None
    key = _OTHER_KEYS.get(name)
    if key is not None:
        return None if "\r" in line else key
    key = name.lower()
    if key in _KNOWN_KEYS:
        if len(_LINE_KEYS) < _NAMES_MAX:
            _LINE_KEYS[name] = key
        return key
    key = key.rstrip(" \t")
    key = COMPACT.get(key, key)
    if not is_token(key):
        return None
    if len(_OTHER_KEYS) < _NAMES_MAX:
        _OTHER_KEYS[name] = key
    return None if "\r" in line else key


_learn_names()


Scanned = tuple[str, str, dict[str, str], bytes, bool]


def _scan_py(data: bytes) -> Scanned | None:
    """The fast scan of :func:`parse`, for CRLF messages none of whose header lines
    is folded or bad: one partition and one dict look-up per line, keeping the
    raw value of the first line of each key (stripped when read). Returns
    (head text, start line, {key: raw value}, body, Content-Length seen twice),
    or None for a message only :func:`_parse_slow` can split.

    ``_speedups.scan`` does the same in C for the header names already learnt;
    tests/test_speedups.py holds the two to the same results.
    """
    head, blank, body = data.partition(b"\r\n\r\n")
    if not blank:
        return None
    text = head.decode(ENCODING, ERRORS)
    lines = text.split("\r\n")
    start = lines[0]
    if not start or "\n" in start or "\r" in start or len(lines) > MAX_HEADERS + 1:
        return None
    first: dict[str, str] = {}
    key_of = _LINE_KEYS.get
    twice = False
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        key = key_of(name)
        if key is None or not colon or "\n" in value:
            key = _line_key(name, colon, line)
            if key is None:
                return None
        if key not in first:
            first[key] = value
        elif key == "content-length":
            twice = True
    return text, start, first, body, twice


_scan_c = None if SPEEDUPS is None else SPEEDUPS.scan


def parse(data: bytes, stream: bool = False) -> Request | Response:
    """Parse one SIP message.

    ``stream=False`` (a datagram): the body is what follows the blank line,
    cut to Content-Length, which must not exceed it (RFC 3261 s18.3).
    ``stream=True``: ``data`` is exactly one framed message (see
    :class:`StreamFramer`). Raises :class:`ParseError`; when the headers were
    readable, ``error.partial`` is the message so a 4xx can be addressed.
    """
    scanned = None if _scan_c is None else _scan_c(data, _LINE_KEYS, _OTHER_KEYS)
    if scanned is None:
        scanned = _scan_py(data)
        if scanned is None:
            return _parse_slow(*_split_head(data), stream)
    text, start, first, body, twice = scanned
    msg: Request | Response
    if start[:4] == "SIP/":
        msg = Response.__new__(Response)
        msg._text = text
        msg._first = first
        msg._headers = msg._index = msg._cache = None
        msg._top_via = msg._from = msg._to = msg._cseq = None
        msg.body = body
        _status_line(msg, start)
    else:
        req = msg = Request.__new__(Request)
        req._text = text
        req._first = first
        req._headers = req._index = req._cache = None
        req._top_via = req._from = req._to = req._cseq = req._uri = None
        req.body = body
        parts = start.split(" ")
        if len(parts) == 3 and parts[2] == "SIP/2.0" and parts[0] in _METHODS and parts[1]:
            req.method, req.uri_text, req.version = parts
        else:
            req.method, req.uri_text, req.version = "INVALID", "sip:invalid", "SIP/2.0"
            _request_line(req, parts, start)
    length = first.get("content-length")
    if length is not None:
        if twice:
            raise ParseError("several Content-Length headers", 400, msg)
        length = length.strip(" \t")
        if not (length.isdigit() and len(length) < 10 and int(length) == len(body)):
            _cut_body(msg, length, body)
    elif stream and body:
        raise ParseError("missing Content-Length on a stream", 400, msg)
    return msg


def _split_head(data: bytes) -> tuple[str, bytes]:
    """The head of ``data`` as text and its body: the blank line is CRLF CRLF,
    else LF LF; with neither, all of it is head."""
    head, blank, body = data.partition(b"\r\n\r\n")
    if not blank:
        end = data.find(b"\n\n")
        if end >= 0:
            head, body = data[:end], data[end + 2 :]
        else:
            head, body = data.rstrip(b"\r\n"), b""
    return head.decode(ENCODING, ERRORS), body


def _status_line(msg: Response, start: str) -> None:
    version, _, rest = start.partition(" ")
    code, _, reason = rest.partition(" ")
    if not code.isdigit() or len(code) != 3 or not 100 <= int(code) <= 699:
        raise ParseError(f"bad status code {code[:20]!r}")
    msg.status = int(code)
    msg.reason = reason
    msg.version = version
    if version.upper() != "SIP/2.0":
        raise ParseError(f"unsupported version {version[:20]!r}", 505)


def _request_line(req: Request, parts: list[str], start: str) -> None:
    """Check the Request-Line ``parts`` and set them on ``req`` (the partial on error)."""
    if len(parts) != 3 or not all(parts):
        raise ParseError(f"bad Request-Line {start[:80]!r}: expected "
                         "'METHOD SP Request-URI SP SIP/2.0'", 400, req)
    method, uri_text, version = parts
    req.method, req.uri_text, req.version = method, uri_text, version
    if not is_token(method):
        raise ParseError(f"bad method {method[:40]!r}", 400, req)
    if version.upper() != "SIP/2.0":
        if version[:4].upper() == "SIP/":
            raise ParseError(f"unsupported version {version[:20]!r}", 505, req)
        raise ParseError(f"bad version {version[:20]!r}", 400, req)


def _cut_body(msg: Message, value: str, body: bytes) -> None:
    """Check the (stripped) Content-Length ``value`` and cut the body to it."""
    if not value.isdigit() or len(value) > 9:
        raise ParseError(f"bad Content-Length {value[:20]!r}", 400, msg)
    length = int(value)
    if length > len(body):
        raise ParseError(f"Content-Length {length} exceeds the {len(body)} bytes "
                         "of body received", 400, msg)
    if length < len(body):
        msg.body = body[:length]


def _parse_slow(text: str, body: bytes, stream: bool) -> Request | Response:
    """:func:`parse` for messages the fast scan leaves: folded lines, LF line ends,
    unknown or bad header lines. Every header line is split and checked here."""
    text = text.lstrip("\r\n")
    nl = text.find("\n")
    start = (text if nl < 0 else text[:nl]).rstrip("\r")
    error: ParseError | None = None
    headers: list[Header] = []
    index: dict[str, list[int]] = {}
    if nl >= 0:
        rest = text[nl + 1 :]
        if "\n " in rest or "\n\t" in rest or rest[:1] in (" ", "\t"):
            error = _parse_folded(rest, headers)
            for i, h in enumerate(headers):
                index.setdefault(h[0], []).append(i)
        else:
            lines = rest.split("\r\n") if "\r" in rest else rest.split("\n")
            if len(lines) > MAX_HEADERS:
                raise ParseError(f"more than {MAX_HEADERS} header lines", 513)
            lines.insert(0, start)
            error = _split_plain(lines, headers, index)

    msg: Request | Response
    if start.startswith("SIP/"):
        msg = Response(0, "", headers, body, "SIP/2.0", index)
        _status_line(msg, start)
    else:
        req = Request("INVALID", "sip:invalid", headers, body, "SIP/2.0", index)
        _request_line(req, start.split(" "), start)
        msg = req
    if error is not None:
        error.partial = msg
        raise error

    lengths = index.get("content-length")
    if lengths is not None:
        if len(lengths) > 1:
            raise ParseError("several Content-Length headers", 400, msg)
        _cut_body(msg, headers[lengths[0]][2], body)
    elif stream and body:
        raise ParseError("missing Content-Length on a stream", 400, msg)
    return msg


class StreamFramer:
    """Cuts a TCP byte stream into SIP messages by Content-Length (RFC 3261 s18.3).

    ``feed`` returns complete items: ``bytes`` of one message each, or
    ``b"\\r\\n\\r\\n"`` for a keep-alive ping, which the caller answers with a
    single CRLF (RFC 5626 s3.5.1). A lone CRLF (a pong) is dropped. Raises
    :class:`ParseError` when a message's head or body exceeds ``max_size``.
    """

    def __init__(self, max_size: int = 65536 * 2) -> None:
        self.buffer = bytearray()
        self.max_size = max_size

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        out: list[bytes] = []
        buf = self.buffer
        while buf:
            if buf[:4] == b"\r\n\r\n":
                out.append(b"\r\n\r\n")
                del buf[:4]
                continue
            if buf[:2] == b"\r\n":
                if len(buf) < 4 and b"\r\n\r\n".startswith(bytes(buf)):
                    break  # may be the start of a ping
                del buf[:2]
                continue
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > self.max_size:
                    raise ParseError("message head larger than the limit", 513)
                break
            length = _content_length(bytes(buf[:end]))
            total = end + 4 + length
            if total > self.max_size:
                raise ParseError(f"message of {total} bytes exceeds the limit of "
                                 f"{self.max_size}", 513)
            if len(buf) < total:
                break
            out.append(bytes(buf[:total]))
            del buf[:total]
        return out


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() in (b"content-length", b"l"):
            value = value.strip()
            if not value.isdigit():
                raise ParseError(f"bad Content-Length {value[:20]!r}")
            return int(value)
    return 0
