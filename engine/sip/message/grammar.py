"""SIP header value grammar: URIs, name-addr, parameters, Via, CSeq (RFC 3261 s25).

Value types are NamedTuples, not frozen dataclasses: equally immutable, and
three times cheaper to build on the per-message hot path.

Pure functions over ``str`` (the wire bytes decoded as UTF-8 with
``surrogateescape``, so every byte round-trips). Each parser raises
:class:`ParseError` naming what is wrong; nothing else escapes.
"""

from __future__ import annotations

import os
import re
from types import ModuleType
from typing import NamedTuple

Params = tuple[tuple[str, str | None], ...]


class ParseError(ValueError):
    """A SIP message or header value that does not follow the grammar.

    ``status`` is the response a server sends for it (400 unless a more
    precise code applies, e.g. 505 for an unknown version, 416 for an
    unsupported URI scheme). ``partial`` is the message as far as it could be
    read, so that a response can still be addressed; ``None`` when even the
    headers could not be read.
    """

    def __init__(self, reason: str, status: int = 400, partial: object | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.partial = partial


_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~")
_HOST_RE = re.compile(r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.\-]*[A-Za-z0-9.])?")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
# Characters that may never appear raw inside a URI (RFC 3986 / 3261 s25.1).
_URI_FORBIDDEN = frozenset(' \t\r\n<>"{}|\\^`')
# Characters that end or break a header parameter value (token / host, s25.1).
_PARAM_FORBIDDEN = frozenset(' \t\r\n<>",')
_VIA_RE = re.compile(
    r"SIP[ \t]*/[ \t]*2\.0[ \t]*/[ \t]*([A-Za-z0-9\-.!%*_+`'~]+)[ \t]+"
    r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-.]+)(?:[ \t]*:[ \t]*([0-9]{1,5}))?[ \t]*$",
    re.IGNORECASE,
)
_CSEQ_RE = re.compile(r"([0-9]{1,10})[ \t]+([A-Za-z0-9\-.!%*_+`'~]+)$")

# Request methods in common use: a CSeq naming one needs no token check.
_METHODS = frozenset(("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK",
                      "SUBSCRIBE", "NOTIFY", "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE"))
SIP_SCHEMES = frozenset(("sip", "sips"))
KNOWN_SCHEMES = frozenset(("sip", "sips", "tel"))


def is_token(text: str) -> bool:
    """True when ``text`` is a non-empty RFC 3261 token."""
    return bool(text) and _TOKEN_RE.fullmatch(text) is not None


def parse_params(text: str, what: str) -> Params:
    """Parse ``;name[=value]`` parameters (the leading ``;`` already removed).

    Values may be tokens, hosts or quoted strings; LWS around ``;`` and ``=``
    is allowed. Names are lowercased; values keep their case.
    """
    if _PARAMS_PLAIN_RE.fullmatch(text) is not None:
        for part in text.split(";"):
            if not is_token(part.partition("=")[0]):
                break
        else:
            return _split_plain_params(text)
    if '"' not in text:
        out: list[tuple[str, str | None]] = []
        for part in text.split(";"):
            name, eq, value = part.partition("=")
            name = name.strip(" \t")
            if not name or not is_token(name):
                raise ParseError(f"{what}: bad parameter {part.strip()!r}")
            if eq:
                value = value.strip(" \t")
                if not value or any(c in _PARAM_FORBIDDEN for c in value):
                    raise ParseError(f"{what}: bad value for parameter {name!r}")
                out.append((name.lower(), value))
            else:
                out.append((name.lower(), None))
        return tuple(out)
    return _parse_params_quoted(text, what)


def _parse_params_quoted(text: str, what: str) -> Params:
    out: list[tuple[str, str | None]] = []
    i, n = 0, len(text)
    while True:
        j = i
        while j < n and text[j] not in ";=":
            j += 1
        name = text[i:j].strip(" \t")
        if not is_token(name):
            raise ParseError(f"{what}: bad parameter name {name!r}")
        value: str | None = None
        if j < n and text[j] == "=":
            j += 1
            while j < n and text[j] in " \t":
                j += 1
            if j < n and text[j] == '"':
                end = quoted_end(text, j)
                if end < 0:
                    raise ParseError(f"{what}: unterminated quoted string")
                value = text[j : end + 1]
                j = end + 1
                while j < n and text[j] in " \t":
                    j += 1
            else:
                k = j
                while k < n and text[k] != ";":
                    k += 1
                value = text[j:k].strip(" \t")
                if not value:
                    raise ParseError(f"{what}: empty value for parameter {name!r}")
                j = k
        out.append((name.lower(), value))
        if j >= n:
            return tuple(out)
        if text[j] != ";":
            raise ParseError(f"{what}: unexpected {text[j]!r} after parameter {name!r}")
        i = j + 1


def quoted_end(text: str, start: int) -> int:
    """Index of the closing quote of the quoted string opening at ``start``, or -1."""
    i, n = start + 1, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == '"':
            return i
        i += 1
    return -1


def unquote(value: str) -> str:
    """Strip quotes and backslash escapes from a quoted string; plain text unchanged."""
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def param(params: Params, name: str) -> str | None:
    """Value of parameter ``name`` ('' for a flag without value), None when absent."""
    for key, value in params:
        if key == name:
            return "" if value is None else value
    return None


def format_params(params: Params) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


def split_commas(value: str) -> list[str]:
    """Split a header value at commas outside quotes and angle brackets."""
    if "," not in value:
        return [value]
    items: list[str] = []
    depth_angle = False
    in_quote = False
    start = 0
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if in_quote:
            if c == "\\":
                i += 1
            elif c == '"':
                in_quote = False
        elif c == '"':
            in_quote = True
        elif c == "<":
            depth_angle = True
        elif c == ">":
            depth_angle = False
        elif c == "," and not depth_angle:
            items.append(value[start:i].strip(" \t"))
            start = i + 1
        i += 1
    items.append(value[start:].strip(" \t"))
    return [item for item in items if item]


class URI(NamedTuple):
    """A SIP, SIPS or tel URI; other schemes keep their text in ``opaque``."""

    scheme: str
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: Params = ()
    headers: str = ""
    opaque: str | None = None

    def param(self, name: str) -> str | None:
        return param(self.params, name)

    @property
    def is_sip(self) -> bool:
        return self.scheme in SIP_SCHEMES

    @property
    def hostport(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def with_params(self, params: Params) -> URI:
        return URI(self.scheme, self.user, self.password, self.host, self.port, params,
                   self.headers, self.opaque)

    def __str__(self) -> str:
        if self.opaque is not None:
            return f"{self.scheme}:{self.opaque}"
        if self.scheme == "tel":
            return f"tel:{self.user or ''}{format_params(self.params)}"
        userinfo = ""
        if self.user is not None:
            userinfo = self.user if self.password is None else f"{self.user}:{self.password}"
            userinfo += "@"
        text = f"{self.scheme}:{userinfo}{self.hostport}{format_params(self.params)}"
        return f"{text}?{self.headers}" if self.headers else text


_SIP_URI_RE = re.compile(
    r"(sips?):(?:([^:@\s<>\"]+)(?::([^@\s<>\"]*))?@)?"
    r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.\-]*[A-Za-z0-9.])?)"
    r"(?::([0-9]{1,5}))?(?:;([^?\s<>\"]*))?(?:\?([^\s<>\"]+))?",
    re.IGNORECASE,
)
_PARAM_ITEM = r"[^\s<>\",=;]+(?:=[^\s<>\",=;]+)?"
_PARAMS_PLAIN_RE = re.compile(f"{_PARAM_ITEM}(?:;{_PARAM_ITEM})*")

# Quick paths for the common shapes of URI, name-addr and Via. Each quick
# pattern accepts a strict subset of what the general code after it accepts,
# and splits it the same way, so it yields the same value; anything else
# (upper case, non-ASCII, escapes, more parameters...) takes the general path.
# They are case-sensitive, use positive ASCII classes (bitmaps), and capture up
# to two or three parameters in fixed groups, with lower-case names, so that
# the parameter tuples are built without splitting or lowercasing:
#   _Q_USER  printable ASCII but " : < > @           (a subset of [^:@\s<>"])
#   _Q_UPAR  printable ASCII but " , ; < = > ? @     (URI parameter values)
#   _Q_PVAL  printable ASCII but " , ; < = >         (header parameter values)
#   _Q_PNAME a lower-case parameter name
_Q_USER = r"[!#-9;=?A-Z\[-~]"
_Q_UPAR = r"[!#-+\--:A-~]"
_Q_PVAL = r"[!#-+\--:?-~]"
_Q_PNAME = r"[a-z][a-z0-9\-]*"
_Q_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]"
_Q_HOST = r"[a-z0-9](?:[a-z0-9.\-]*[a-z0-9.]|)"
# (Optional parts are written "(?:...|)", not "(?:...)?": the same match, but
# sre runs a branch faster than a repeated group: a third off the Via match.)


def _q_params(count: int, value: str, lead: str = ";") -> str:
    """``count`` optional nested ``;name[=value]`` groups (2 groups each)."""
    one = rf"(?:{lead}({_Q_PNAME})(?:=({value}+)|)"
    return one + "".join(rf"(?:;({_Q_PNAME})(?:=({value}+)|)" for _ in range(count - 1)) + (
        "|)" * count)


_Q_URI = rf"(sips?):(?:({_Q_USER}+)@|)({_Q_HOST})(?::([0-9]{{1,5}})|){_q_params(2, _Q_UPAR)}"
# groups: scheme, user, host, port, 2 x (name, value)
_URI_QUICK_RE = re.compile(_Q_URI)
# groups: display (quoted or tokens), the 8 of _Q_URI, 2 x (name, value)
_ADDR_QUICK_RE = re.compile(
    rf'(?:("[^"\\]*"|{_Q_TOKEN}+(?:[ \t]+{_Q_TOKEN}+)*)[ \t]*|)'
    rf"<{_Q_URI}>" + _q_params(2, _Q_PVAL, r"[ \t]*;[ \t]*")
)
# groups: transport, host, port, 3 x (name, value)
_VIA_QUICK_RE = re.compile(
    rf"SIP/2\.0/([A-Z]+) ([a-z0-9.\-]+|\[[0-9a-f:.]+\])(?::([0-9]{{1,5}})|)"
    rf"{_q_params(3, _Q_PVAL)}"
)
# Building a NamedTuple through tuple.__new__ skips its Python-level __new__.
_new = tuple.__new__


def parse_uri(text: str) -> URI:
    """Parse an absolute URI (RFC 3261 s19.1, RFC 3966 for tel)."""
    m = _URI_QUICK_RE.fullmatch(text)
    if m is not None:
        scheme, user, host, port, n1, v1, n2, v2 = m.groups()
        if port is None or len(port) < 5 or int(port) <= 65535:
            return _new(URI, (scheme, user, None, host, None if port is None else int(port),
                              () if n1 is None else ((n1, v1),) if n2 is None else
                              ((n1, v1), (n2, v2)), "", None))
    return _parse_uri_general(text)


def _parse_uri_general(text: str) -> URI:
    m = _SIP_URI_RE.fullmatch(text)
    if m is not None:
        scheme, user, password, host, port, ptext, headers = m.groups()
        if port is not None and int(port) > 65535:
            raise ParseError(f"URI {text[:80]!r}: bad port {port!r}")
        if ptext:
            if _PARAMS_PLAIN_RE.fullmatch(ptext) is not None:
                params = _split_plain_params(ptext)
            else:
                params = parse_params(ptext, "URI")
        else:
            params = ()
        return URI(scheme.lower(), user, password, host.lower(),
                   None if port is None else int(port), params, headers or "")
    return _parse_uri_slow(text)


def _split_plain_params(ptext: str) -> Params:
    out: list[tuple[str, str | None]] = []
    for part in ptext.split(";"):
        name, eq, value = part.partition("=")
        out.append((name.lower(), value if eq else None))
    return tuple(out)


def _parse_uri_slow(text: str) -> URI:
    colon = text.find(":")
    if colon <= 0 or _SCHEME_RE.fullmatch(text, 0, colon) is None:
        raise ParseError(f"URI {text[:80]!r}: no scheme")
    if any(c in _URI_FORBIDDEN for c in text):
        raise ParseError(f"URI {text[:80]!r}: whitespace or reserved character")
    scheme = text[:colon].lower()
    rest = text[colon + 1 :]
    if not rest:
        raise ParseError(f"URI {text[:80]!r}: empty after scheme")
    if scheme == "tel":
        number, _, ptext = rest.partition(";")
        if not number:
            raise ParseError(f"URI {text[:80]!r}: empty telephone number")
        return URI("tel", user=number, params=parse_params(ptext, "tel URI") if ptext else ())
    if scheme not in SIP_SCHEMES:
        return URI(scheme, opaque=rest)
    headers = ""
    user = password = None
    # '@' never appears unescaped after the user part, so the last one ends it;
    # the user part itself may hold '?', ';' and ',' (RFC 4475 3.1.1.2).
    at = rest.rfind("@")
    userinfo = ""
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
    q = rest.find("?")
    if q >= 0:
        rest, headers = rest[:q], rest[q + 1 :]
        if not headers:
            raise ParseError(f"URI {text[:80]!r}: empty headers after '?'")
    if at >= 0:
        if not userinfo:
            raise ParseError(f"URI {text[:80]!r}: empty user part")
        # The user part may itself contain ';' (RFC 4475 3.1.1.9) but a ':'
        # separates the password.
        user, sep, pw = userinfo.partition(":")
        password = pw if sep else None
        if not user:
            raise ParseError(f"URI {text[:80]!r}: empty user part")
    hostport, _, ptext = rest.partition(";")
    if hostport.startswith("["):
        end = hostport.find("]")
        host, portpart = hostport[: end + 1], hostport[end + 1 :]
        if end < 0 or (portpart and not portpart.startswith(":")):
            raise ParseError(f"URI {text[:80]!r}: bad IPv6 reference")
        portpart = portpart[1:] if portpart else ""
        has_port = bool(hostport[end + 1 :])
    else:
        host, has_sep, portpart = hostport.partition(":")
        has_port = bool(has_sep)
    if not host or _HOST_RE.fullmatch(host) is None:
        raise ParseError(f"URI {text[:80]!r}: bad host {host!r}")
    port: int | None = None
    if has_port:
        if not portpart.isdigit() or len(portpart) > 5 or int(portpart) > 65535:
            raise ParseError(f"URI {text[:80]!r}: bad port {portpart!r}")
        port = int(portpart)
    params = parse_params(ptext, "URI") if ptext else ()
    return URI(scheme, user, password, host.lower(), port, params, headers)


class Address(NamedTuple):
    """name-addr or addr-spec with header parameters (From, To, Contact, Route)."""

    uri: URI
    display: str | None = None
    params: Params = ()
    angle: bool = True

    @property
    def tag(self) -> str | None:
        for key, value in self.params:
            if key == "tag":
                return "" if value is None else value
        return None

    def param(self, name: str) -> str | None:
        return param(self.params, name)

    def with_params(self, params: Params) -> Address:
        return Address(self.uri, self.display, params, True)

    def __str__(self) -> str:
        display = f"{self.display} " if self.display else ""
        return f"{display}<{self.uri}>{format_params(self.params)}"


_ADDR_FAST_RE = re.compile(
    r"(?:(\"(?:[^\"\\]|\\.)*\")[ \t]*"
    r"|([A-Za-z0-9\-.!%*_+`'~]+(?:[ \t]+[A-Za-z0-9\-.!%*_+`'~]+)*)[ \t]*)?"
    r"<([^\s<>\"]+)>"
    r"(?:[ \t]*;[ \t]*([^\s<>\",=;]+(?:=[^\s<>\",=;]+)?(?:;[^\s<>\",=;]+(?:=[^\s<>\",=;]+)?)*))?"
)


def parse_address(text: str, what: str = "address") -> Address:
    """Parse name-addr / addr-spec followed by ``;params`` (RFC 3261 s20.10, s25.1)."""
    m = _ADDR_QUICK_RE.fullmatch(text)
    if m is not None:
        display, scheme, user, host, port, n1, v1, n2, v2, h1, w1, h2, w2 = m.groups()
        if port is None or len(port) < 5 or int(port) <= 65535:
            uri = _new(URI, (scheme, user, None, host, None if port is None else int(port),
                             () if n1 is None else ((n1, v1),) if n2 is None else
                             ((n1, v1), (n2, v2)), "", None))
            return _new(Address, (uri, display, () if h1 is None else ((h1, w1),)
                                  if h2 is None else ((h1, w1), (h2, w2)), True))
    return _parse_address_general(text, what)


def _parse_address_general(text: str, what: str = "address") -> Address:
    m = _ADDR_FAST_RE.fullmatch(text)
    if m is not None:
        quoted, tokens, uri_text, ptext = m.groups()
        fast = _split_plain_params(ptext) if ptext else ()
        for name, _ in fast:
            if not is_token(name):
                raise ParseError(f"{what}: bad parameter name {name!r}")
        return Address(parse_uri(uri_text), quoted or tokens, fast, True)
    value = text.strip(" \t")
    if not value:
        raise ParseError(f"{what}: empty")
    display: str | None = None
    if value[0] == '"':
        end = quoted_end(value, 0)
        if end < 0:
            raise ParseError(f"{what}: unterminated quoted display name")
        display = value[: end + 1]
        rest = value[end + 1 :].lstrip(" \t")
        if not rest.startswith("<"):
            raise ParseError(f"{what}: expected '<' after the display name")
    else:
        lt = value.find("<")
        if lt >= 0:
            words = value[:lt].split()
            for word in words:
                if not is_token(word):
                    raise ParseError(f"{what}: display name {value[:lt].strip()!r} is not "
                                     "a token list; quote it")
            display = " ".join(words) or None
            rest = value[lt:]
        else:
            rest = ""
    if rest:
        gt = rest.find(">")
        if gt < 0:
            raise ParseError(f"{what}: missing '>'")
        uri_text = rest[1:gt]
        if uri_text != uri_text.strip(" \t"):
            raise ParseError(f"{what}: whitespace inside <>")
        uri = parse_uri(uri_text)
        tail = rest[gt + 1 :].strip(" \t")
        angle = True
    else:
        semi = value.find(";")
        uri_text = value if semi < 0 else value[:semi]
        tail = "" if semi < 0 else value[semi:]
        uri_text = uri_text.rstrip(" \t")
        if "?" in uri_text or "," in uri_text:
            raise ParseError(f"{what}: a URI with '?' or ',' must be enclosed in <>")
        uri = parse_uri(uri_text)
        angle = False
    params: Params = ()
    if tail:
        if tail[0] != ";":
            raise ParseError(f"{what}: unexpected text {tail[:40]!r} after the URI")
        params = parse_params(tail[1:], what)
    return Address(uri, display, params, angle)


class Via(NamedTuple):
    """One via-parm (RFC 3261 s20.42)."""

    transport: str
    host: str
    port: int | None = None
    params: Params = ()

    def param(self, name: str) -> str | None:
        return param(self.params, name)

    @property
    def branch(self) -> str | None:
        for key, value in self.params:
            if key == "branch":
                return "" if value is None else value
        return None

    @property
    def rport(self) -> str | None:
        return param(self.params, "rport")

    @property
    def received(self) -> str | None:
        return param(self.params, "received")

    def __str__(self) -> str:
        hostport = self.host if self.port is None else f"{self.host}:{self.port}"
        return f"SIP/2.0/{self.transport} {hostport}{format_params(self.params)}"


_VIA_FAST_RE = re.compile(
    r"SIP/2\.0/([A-Za-z]+) ([A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(?::([0-9]{1,5}))?"
    r"(?:;([^\s<>\",=;]+(?:=[^\s<>\",=;]+)?(?:;[^\s<>\",=;]+(?:=[^\s<>\",=;]+)?)*))?",
    re.IGNORECASE,
)


def parse_via(text: str) -> Via:
    m = _VIA_QUICK_RE.fullmatch(text)
    if m is not None:
        transport, host, port, n1, v1, n2, v2, n3, v3 = m.groups()
        if port is None or len(port) < 5 or int(port) <= 65535:
            return _new(Via, (transport, host, None if port is None else int(port),
                              () if n1 is None else ((n1, v1),) if n2 is None else
                              ((n1, v1), (n2, v2)) if n3 is None else
                              ((n1, v1), (n2, v2), (n3, v3))))
    return _parse_via_general(text)


def _parse_via_general(text: str) -> Via:
    m = _VIA_FAST_RE.fullmatch(text)
    if m is not None:
        transport, host, port, ptext = m.groups()
        if port is not None and int(port) > 65535:
            raise ParseError(f"Via {text[:80]!r}: port out of range")
        return Via(transport.upper(), host.lower(), None if port is None else int(port),
                   _split_plain_params(ptext) if ptext else ())
    semi = text.find(";")
    head = text if semi < 0 else text[:semi]
    m = _VIA_RE.match(head.strip(" \t"))
    if m is None:
        raise ParseError(f"Via {text[:80]!r}: expected 'SIP/2.0/TRANSPORT host[:port]'")
    port = int(m.group(3)) if m.group(3) else None
    if port is not None and port > 65535:
        raise ParseError(f"Via {text[:80]!r}: port out of range")
    params = parse_params(text[semi + 1 :], "Via") if semi >= 0 else ()
    return Via(m.group(1).upper(), m.group(2).lower(), port, params)


class CSeq(NamedTuple):
    number: int
    method: str

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


def parse_cseq(text: str) -> CSeq:
    digits, _, name = text.partition(" ")  # the usual "1 INVITE"
    if name in _METHODS and digits.isascii() and digits.isdigit() and len(digits) < 10:
        return _new(CSeq, (int(digits), name))
    return _parse_cseq_general(text)


def _parse_cseq_general(text: str) -> CSeq:
    m = _CSEQ_RE.match(text.strip(" \t"))
    if m is None:
        raise ParseError(f"CSeq {text[:80]!r}: expected 'number METHOD'")
    number = int(m.group(1))
    if number >= 2**31:
        raise ParseError(f"CSeq {text[:80]!r}: sequence number over 2**31")
    return CSeq(number, m.group(2))


# -- the C quick paths ------------------------------------------------------
# engine/sip/message/_speedups.c takes the common shapes of URI, name-addr and Via
# (and the framing scan of core.parse) in C and hands everything else to the
# general Python parsers above, so that results and errors are the same with
# or without it (tests/test_speedups.py). SWITCHBOARD_NO_EXTENSIONS=1, or a
# machine that could not build it, runs the pure-Python parser.
parse_uri_py, parse_address_py, parse_via_py, parse_cseq_py = (
    parse_uri, parse_address, parse_via, parse_cseq)


def _load_speedups() -> ModuleType | None:
    if os.environ.get("SWITCHBOARD_NO_EXTENSIONS"):
        return None
    try:
        from engine.sip.message import _speedups
    except ImportError:
        return None
    _speedups.setup(URI, Address, Via, CSeq, _parse_uri_general, _parse_address_general,
                    _parse_via_general, _parse_cseq_general)
    return _speedups


SPEEDUPS = _load_speedups()
if SPEEDUPS is not None:
    parse_uri = SPEEDUPS.parse_uri
    parse_address = SPEEDUPS.parse_address
    parse_via = SPEEDUPS.parse_via
    parse_cseq = SPEEDUPS.parse_cseq
