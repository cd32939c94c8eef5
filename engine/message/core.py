"""SIP message objects and the framing parser (RFC 3261 s7, s18.3, s20).

Parsing is lazy: :func:`parse` splits the start line and the header lines
(unfolding continuations, expanding compact names) and indexes them by name;
structured values (Via, From, To, CSeq, URIs) are parsed on first access and
cached. A message is immutable from the outside: builders return new ones.
Unknown headers, and every header nobody rewrote, serialize byte-exact.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator
from typing import Any

from engine.message.grammar import (
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
    """A parsed or built SIP message. Treat as immutable."""

    __slots__ = ("_cache", "_index", "body", "headers")

    def __init__(self, headers: list[Header], body: bytes,
                 index: dict[str, list[int]] | None = None) -> None:
        self.headers = headers
        self.body = body
        if index is None:
            index = {}
            for i, h in enumerate(headers):
                index.setdefault(h[0], []).append(i)
        self._index = index
        self._cache: dict[str, Any] = {}

    # -- generic access -------------------------------------------------
    def start_line(self) -> str:
        raise NotImplementedError

    def get(self, name: str) -> str | None:
        """The value of the first header line of ``name`` (compact forms accepted)."""
        idx = self._index.get(header_key(name))
        return None if idx is None else self.headers[idx[0]][2]

    def get_lines(self, name: str) -> list[str]:
        """Every header line of ``name``, unsplit."""
        idx = self._index.get(header_key(name))
        return [] if idx is None else [self.headers[i][2] for i in idx]

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``; list headers are split at their commas."""
        key = header_key(name)
        idx = self._index.get(key)
        if idx is None:
            return []
        if key not in LIST_HEADERS:
            return [self.headers[i][2] for i in idx]
        out: list[str] = []
        for i in idx:
            out.extend(split_commas(self.headers[i][2]))
        return out

    def has(self, name: str) -> bool:
        return header_key(name) in self._index

    def count(self, name: str) -> int:
        idx = self._index.get(header_key(name))
        return 0 if idx is None else len(idx)

    def names(self) -> Iterator[str]:
        return iter(self._index)

    # -- parsed, cached values -----------------------------------------
    @property
    def call_id(self) -> str:
        value = self.get("call-id")
        if value is None:
            raise ParseError("missing Call-ID")
        return value

    @property
    def cseq(self) -> CSeq:
        c = self._cache.get("cseq")
        if c is None:
            value = self.get("cseq")
            if value is None:
                raise ParseError("missing CSeq")
            c = self._cache["cseq"] = parse_cseq(value)
        return c

    @property
    def vias(self) -> list[Via]:
        v = self._cache.get("via")
        if v is None:
            v = self._cache["via"] = [parse_via(item) for item in self.get_all("via")]
        return v

    @property
    def top_via(self) -> Via:
        c = self._cache.get("top_via")
        if c is None:
            value = self.get("via")
            if value is None:
                raise ParseError("missing Via")
            first = split_commas(value)
            if not first:
                raise ParseError("empty Via")
            c = self._cache["top_via"] = parse_via(first[0])
        return c

    def _address(self, key: str, label: str) -> Address:
        a = self._cache.get(key)
        if a is None:
            value = self.get(key)
            if value is None:
                raise ParseError(f"missing {label}")
            a = self._cache[key] = parse_address(value, label)
        return a

    @property
    def from_(self) -> Address:
        return self._address("from", "From")

    @property
    def to(self) -> Address:
        return self._address("to", "To")

    @property
    def contacts(self) -> list[Address]:
        """Contact values; ``Contact: *`` is not an address: check :attr:`contact_star`."""
        c = self._cache.get("contact")
        if c is None:
            c = self._cache["contact"] = [
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
        value = self.get("max-forwards")
        if value is None:
            return None
        value = value.strip()
        if not value.isdigit() or len(value) > 10 or int(value) > 255:
            raise ParseError(f"Max-Forwards {value[:20]!r}: not a number from 0 to 255")
        return int(value)

    @property
    def expires(self) -> int | None:
        value = self.get("expires")
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
        idx = self._index.get(key)
        if idx is None:
            return self
        first = idx[0]
        values = split_commas(self.headers[first][2])
        out = list(self.headers)
        if len(values) <= 1:
            del out[first]
        else:
            out[first] = (key, self.headers[first][1], ", ".join(values[1:]), None)
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


class Request(Message):
    __slots__ = ("method", "uri_text", "version")

    def __init__(self, method: str, uri_text: str, headers: list[Header], body: bytes = b"",
                 version: str = "SIP/2.0", index: dict[str, list[int]] | None = None) -> None:
        super().__init__(headers, body, index)
        self.method = method
        self.uri_text = uri_text
        self.version = version

    def start_line(self) -> str:
        return f"{self.method} {self.uri_text} {self.version}"

    @property
    def uri(self) -> URI:
        u = self._cache.get("uri")
        if u is None:
            u = self._cache["uri"] = parse_uri(self.uri_text)
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


def new_tag() -> str:
    return secrets.token_hex(6)


def make_response(request: Request, status: int, reason: str | None = None,
                  headers: Iterable[tuple[str, str]] = (), body: bytes = b"",
                  to_tag: str | None = None) -> Response:
    """A response to ``request`` per RFC 3261 s8.2.6.2: Via, From, To, Call-ID, CSeq copied.

    A To tag is added to final and non-100 responses when the request had
    none (``to_tag`` chooses it, for a stable dialog identity).
    """
    out: list[Header] = []
    for h in request.headers:
        key = h[0]
        if key in ("via", "from", "call-id", "cseq"):
            out.append(h)
        elif key == "to":
            value = h[2]
            try:
                has_tag = request.to.tag is not None
            except ParseError:
                has_tag = ";tag=" in value.replace(" ", "").lower()
            if status > 100 and not has_tag:
                tag = to_tag or new_tag()
                value = f"{value};tag={tag}"
                out.append((key, "To", value, None))
            else:
                out.append(h)
    for name, value in headers:
        key = header_key(name)
        out.append((key, canonical_name(key), value, None))
    out.append(("content-length", "Content-Length", "", None))
    return Response(status, reason or REASONS.get(status, "Unknown"), out, body)


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


def parse(data: bytes, stream: bool = False) -> Request | Response:
    """Parse one SIP message.

    ``stream=False`` (a datagram): the body is what follows the blank line,
    cut to Content-Length, which must not exceed it (RFC 3261 s18.3).
    ``stream=True``: ``data`` is exactly one framed message (see
    :class:`StreamFramer`). Raises :class:`ParseError`; when the headers were
    readable, ``error.partial`` is the message so a 4xx can be addressed.
    """
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        head, body = data[:end], data[end + 4 :]
    else:
        end = data.find(b"\n\n")
        if end >= 0:
            head, body = data[:end], data[end + 2 :]
        else:
            head, body = data.rstrip(b"\r\n"), b""
    text = head.decode(ENCODING, ERRORS).lstrip("\r\n")
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
            for line in lines:
                colon = line.find(":")
                name = line[:colon]
                key = name.lower()
                if key not in _KNOWN_KEYS:
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

    msg: Request | Response
    if start.startswith("SIP/"):
        version, _, rest = start.partition(" ")
        code, _, reason = rest.partition(" ")
        if not code.isdigit() or len(code) != 3 or not 100 <= int(code) <= 699:
            raise ParseError(f"bad status code {code[:20]!r}")
        msg = Response(int(code), reason, headers, body, version, index)
        if version.upper() != "SIP/2.0":
            raise ParseError(f"unsupported version {version[:20]!r}", 505)
    else:
        parts = start.split(" ")
        if len(parts) != 3 or not all(parts):
            bad = Request("INVALID", "sip:invalid", headers, body, "SIP/2.0", index)
            raise ParseError(f"bad Request-Line {start[:80]!r}: expected "
                             "'METHOD SP Request-URI SP SIP/2.0'", 400, bad)
        method, uri, version = parts
        msg = Request(method, uri, headers, body, version, index)
        if not is_token(method):
            raise ParseError(f"bad method {method[:40]!r}", 400, msg)
        if version.upper() != "SIP/2.0":
            if version[:4].upper() == "SIP/":
                raise ParseError(f"unsupported version {version[:20]!r}", 505, msg)
            raise ParseError(f"bad version {version[:20]!r}", 400, msg)
    if error is not None:
        error.partial = msg
        raise error

    lengths = index.get("content-length")
    if lengths is not None:
        if len(lengths) > 1:
            raise ParseError("several Content-Length headers", 400, msg)
        value = headers[lengths[0]][2]
        if not value.isdigit() or len(value) > 9:
            raise ParseError(f"bad Content-Length {value[:20]!r}", 400, msg)
        length = int(value)
        if length > len(body):
            raise ParseError(f"Content-Length {length} exceeds the {len(body)} bytes "
                             "of body received", 400, msg)
        if length < len(body):
            msg.body = body[:length]
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
