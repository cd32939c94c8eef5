"""SIP digest authentication and a failed-authentication limiter.

Implements the server and client sides of HTTP Digest as used by SIP
(RFC 3261 section 22, RFC 7616, RFC 8760) with the SHA-256 and MD5
algorithms and ``qop=auth`` only.

The module is sans-I/O: it opens no sockets, reads no clock and does not use
asyncio.  Every operation that depends on time takes ``now`` (seconds, an
opaque non-decreasing float supplied by the caller).

Nonces are stateless: ``base64url(issue_time || random || MAC)`` where the MAC
is a truncated HMAC-SHA-256 keyed with a subkey of the server key and bound to
the realm.  The only per-nonce state is the highest nonce-count accepted, which
is needed to refuse replays; that table is bounded (see
:class:`DigestAuthenticator`).

Secrets (passwords, HA1 values, the server key) never appear in exception
messages or reprs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import hmac
import math
import re
import struct
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from engine.sip.message import random_bytes

__all__ = [
    "MAX_HEADER_LENGTH",
    "SUPPORTED_ALGORITHMS",
    "AuthReason",
    "AuthResult",
    "DigestAuthenticator",
    "FailureLimiter",
    "build_authorization",
    "parse_auth_params",
]

# ---------------------------------------------------------------------------
# Hash algorithms
# ---------------------------------------------------------------------------


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _md5_hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# Canonical name -> hex digest function, in order of preference (RFC 8760:
# the server lists the challenge for its most preferred algorithm first).
_HASHES: Final[dict[str, Callable[[bytes], str]]] = {
    "SHA-256": _sha256_hex,
    "MD5": _md5_hex,
}
_CANONICAL_BY_UPPER: Final[dict[str, str]] = {name.upper(): name for name in _HASHES}

#: Algorithms this module implements, most preferred first.
SUPPORTED_ALGORITHMS: Final[tuple[str, ...]] = tuple(_HASHES)


def _canonical_algorithm(name: str) -> str | None:
    """Return the canonical spelling of a supported algorithm, else None."""
    return _CANONICAL_BY_UPPER.get(name.upper())


def _digest_response(
    algorithm: str,
    *,
    username: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    nc: str | None,
    cnonce: str | None,
    qop: str | None,
) -> str:
    """Compute the request-digest (lower-case hex).

    With ``qop`` set: ``H(HA1:nonce:nc:cnonce:qop:HA2)``; without it (RFC 2069
    compatibility, client side only): ``H(HA1:nonce:HA2)``.
    """
    h = _HASHES[algorithm]
    ha1 = h(f"{username}:{realm}:{password}".encode())
    ha2 = h(f"{method}:{uri}".encode())
    if qop is None:
        return h(f"{ha1}:{nonce}:{ha2}".encode())
    return h(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}".encode())


# ---------------------------------------------------------------------------
# Header parsing
# ---------------------------------------------------------------------------

#: Longest header value :func:`parse_auth_params` accepts (bounds the work).
MAX_HEADER_LENGTH: Final = 8192

# RFC 3261 token characters.
_TOKEN_CHARS: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
)
_WS: Final = frozenset(" \t")


def _is_forbidden_in_quoted(c: str) -> bool:
    """Control characters (other than TAB) are not allowed in quoted strings."""
    o = ord(c)
    return (o < 0x20 and c != "\t") or o == 0x7F


def _skip_ws(value: str, i: int) -> int:
    n = len(value)
    while i < n and value[i] in _WS:
        i += 1
    return i


def _read_token(value: str, i: int) -> tuple[str, int]:
    start = i
    n = len(value)
    while i < n and value[i] in _TOKEN_CHARS:
        i += 1
    return value[start:i], i


def _read_quoted(value: str, i: int) -> tuple[str, int]:
    """Read a quoted string starting at the opening quote; return (text, next index)."""
    start = i
    i += 1  # opening quote
    n = len(value)
    out: list[str] = []
    while i < n:
        c = value[i]
        if c == '"':
            return "".join(out), i + 1
        if c == "\\":
            if i + 1 >= n:
                break
            escaped = value[i + 1]
            if _is_forbidden_in_quoted(escaped):
                raise ValueError(f"invalid escaped character at position {i + 1}")
            out.append(escaped)
            i += 2
            continue
        if _is_forbidden_in_quoted(c):
            raise ValueError(f"control character in quoted string at position {i}")
        out.append(c)
        i += 1
    raise ValueError(f"unterminated quoted string starting at position {start}")


def _describe_char(value: str, i: int) -> str:
    return "end of input" if i >= len(value) else f"{value[i]!r} at position {i}"


_TOKEN_RE = r"[A-Za-z0-9\-.!%*_+`'~]+"
# The common shape, in one pass: ``Scheme k="v", k=v`` with no escapes, controls or
# non-ASCII; anything else goes through the careful reader below, which names the fault.
_FAST_AUTH: Final = re.compile(
    rf"[ \t]*({_TOKEN_RE})[ \t]+"
    rf"((?:{_TOKEN_RE}[ \t]*=[ \t]*(?:\"[\x20\x21\x23-\x5b\x5d-\x7e\t]*\"|{_TOKEN_RE})"
    rf"[ \t]*(?:,[ \t]*(?!$)|$))+)"
)
_FAST_PARAM: Final = re.compile(
    rf"({_TOKEN_RE})[ \t]*=[ \t]*(?:\"([\x20\x21\x23-\x5b\x5d-\x7e\t]*)\"|({_TOKEN_RE}))"
)


def parse_auth_params(value: str) -> tuple[str, dict[str, str]]:
    """Parse a challenge/credentials header value into ``(scheme, params)``.

    Accepts ``Scheme name=token, name="quoted string", ...`` with optional
    whitespace (space/TAB) around ``=`` and ``,``.  Parameter names are
    returned lower-cased; quoted values are unescaped (``\\x`` -> ``x``).  The
    scheme is returned as written (compare it case-insensitively).  A bare
    scheme yields an empty dict.

    Raises ValueError (and nothing else) on malformed input: empty or over-long
    values, a missing scheme, missing ``=`` or value, unterminated quoted
    strings, control characters, stray characters, empty list elements or
    duplicate parameter names.  Messages give positions, never parameter values.
    """
    fast = _FAST_AUTH.fullmatch(value) if len(value) <= MAX_HEADER_LENGTH else None
    if fast is not None:
        pairs = _FAST_PARAM.findall(fast[2])
        params = {name.lower(): quoted or token for name, quoted, token in pairs}
        if len(params) == len(pairs):  # else a duplicate: the careful reader names it
            return fast[1], params
    return _parse_auth_params_slow(value)


def _parse_auth_params_slow(value: str) -> tuple[str, dict[str, str]]:
    """The careful reader: every deviation is a ValueError naming its position."""
    if len(value) > MAX_HEADER_LENGTH:
        raise ValueError(f"auth header too long ({len(value)} > {MAX_HEADER_LENGTH} characters)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("auth header is not valid Unicode text") from None

    n = len(value)
    i = _skip_ws(value, 0)
    scheme, i = _read_token(value, i)
    if not scheme:
        raise ValueError(f"expected auth scheme, found {_describe_char(value, i)}")
    params: dict[str, str] = {}
    after_scheme = i
    i = _skip_ws(value, i)
    if i >= n:
        return scheme, params
    if i == after_scheme:
        raise ValueError(f"expected whitespace after auth scheme, found {_describe_char(value, i)}")

    while True:
        name, i = _read_token(value, i)
        if not name:
            raise ValueError(f"expected parameter name, found {_describe_char(value, i)}")
        key = name.lower()
        i = _skip_ws(value, i)
        if i >= n or value[i] != "=":
            raise ValueError(
                f"expected '=' after parameter {key[:40]!r}, found {_describe_char(value, i)}"
            )
        i = _skip_ws(value, i + 1)
        if i < n and value[i] == '"':
            param_value, i = _read_quoted(value, i)
        else:
            param_value, i = _read_token(value, i)
            if not param_value:
                raise ValueError(
                    f"expected value for parameter {key[:40]!r}, found {_describe_char(value, i)}"
                )
        if key in params:
            raise ValueError(f"duplicate parameter {key[:40]!r}")
        params[key] = param_value
        i = _skip_ws(value, i)
        if i >= n:
            return scheme, params
        if value[i] != ",":
            raise ValueError(f"expected ',' between parameters, found {_describe_char(value, i)}")
        i = _skip_ws(value, i + 1)


def _quote(text: str, what: str) -> str:
    """Render ``text`` as a quoted-string; ``what`` names it in errors (never the value)."""
    if any(_is_forbidden_in_quoted(c) for c in text):
        raise ValueError(f"{what} contains control characters")
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


# ---------------------------------------------------------------------------
# Server side
# ---------------------------------------------------------------------------

AuthReason = Literal[
    "ok",
    "bad credentials",
    "stale nonce",
    "replay",
    "malformed",
    "unsupported algorithm",
    "wrong realm",
    "bad nonce",
    "uri mismatch",
]


@dataclass(frozen=True, slots=True)
class AuthResult:
    """Outcome of :meth:`DigestAuthenticator.verify`.

    ``stale`` is True when the credentials were right but the nonce had
    expired (or its replay state was evicted): answer with a fresh challenge
    carrying ``stale=true`` and do not count it as a failed attempt.
    ``username`` is the name the client claimed ("" if it could not be parsed);
    ``uri`` the digest-uri it signed (set when ``ok``).
    """

    ok: bool
    username: str
    stale: bool
    reason: AuthReason
    uri: str = ""


_NONCE_TIME: Final = struct.Struct(">d")
_NONCE_RANDOM_BYTES: Final = 12
_NONCE_MAC_BYTES: Final = 16
# 8 + 12 + 16 = 36 bytes -> exactly 48 base64url characters, no padding, and
# every 48-character string decodes to exactly one byte string (canonical).
_NONCE_RE: Final = re.compile(r"[A-Za-z0-9_-]{48}")
_NC_RE: Final = re.compile(r"[0-9A-Fa-f]{1,8}")
_MIN_KEY_BYTES: Final = 16


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _subkey(key: bytes, label: str, realm: str) -> bytes:
    return hmac.new(key, f"switchboard {label} v1\0{realm}".encode(), hashlib.sha256).digest()


def _ct_equal(a: str, b: str) -> bool:
    # compare_digest on str rejects non-ASCII, so compare the UTF-8 bytes.
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def _fail(reason: AuthReason, username: str = "", *, stale: bool = False) -> AuthResult:
    return AuthResult(ok=False, username=username, stale=stale, reason=reason)


class DigestAuthenticator:
    """Issues Digest challenges and verifies Authorization headers for one realm.

    Nonce replay protection keeps, per nonce that has authenticated at least
    once, the highest nonce-count accepted; at most ``max_tracked_nonces``
    entries.  When full, expired nonces are dropped first (they can no longer
    be accepted anyway), then the oldest by issue time.  Evicting a still-live
    nonce raises a floor: any untracked nonce issued at or before it is answered
    as stale (silent re-challenge) instead of being accepted, so eviction never
    re-opens a replay window.
    """

    def __init__(
        self,
        realm: str,
        key: bytes,
        nonce_ttl: float = 300.0,
        algorithms: tuple[str, ...] = ("SHA-256", "MD5"),
        max_tracked_nonces: int = 100_000,
    ) -> None:
        if not realm:
            raise ValueError("realm must not be empty")
        _quote(realm, "realm")  # rejects control characters
        if len(key) < _MIN_KEY_BYTES:
            raise ValueError(f"key must be at least {_MIN_KEY_BYTES} bytes")
        if not (math.isfinite(nonce_ttl) and nonce_ttl > 0):
            raise ValueError("nonce_ttl must be a positive finite number")
        if max_tracked_nonces < 1:
            raise ValueError("max_tracked_nonces must be at least 1")
        if not algorithms:
            raise ValueError("at least one algorithm is required")
        chosen: set[str] = set()
        for name in algorithms:
            canonical = _canonical_algorithm(name)
            if canonical is None:
                raise ValueError(
                    f"unsupported digest algorithm {name!r}; supported: {SUPPORTED_ALGORITHMS}"
                )
            chosen.add(canonical)

        self.realm: Final = realm
        self.nonce_ttl: Final = float(nonce_ttl)
        self.max_tracked_nonces: Final = max_tracked_nonces
        # Always in order of preference (SHA-256 before MD5, RFC 8760).
        self.algorithms: Final = tuple(a for a in SUPPORTED_ALGORITHMS if a in chosen)

        self._nonce_key = _subkey(key, "nonce", realm)
        self._opaque = _b64url(_subkey(key, "opaque", realm)[:12])
        # Password used for unknown users so they cost the same as known ones.
        self._dummy_password = _b64url(_subkey(key, "dummy-password", realm)[:24])
        self._quoted_realm = _quote(realm, "realm")

        self._highest_nc: dict[str, int] = {}
        self._by_issue_time: list[tuple[float, str]] = []  # min-heap over _highest_nc
        self._evicted_floor = -math.inf

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(realm={self.realm!r}, nonce_ttl={self.nonce_ttl!r}, "
            f"algorithms={self.algorithms!r}, tracked_nonces={len(self._highest_nc)})"
        )

    # -- nonces -------------------------------------------------------------

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._nonce_key, payload, hashlib.sha256).digest()[:_NONCE_MAC_BYTES]

    def _make_nonce(self, now: float) -> str:
        payload = _NONCE_TIME.pack(now) + random_bytes(_NONCE_RANDOM_BYTES)
        return _b64url(payload + self._mac(payload))

    def _open_nonce(self, nonce: str) -> float | None:
        """Return the issue time of an authentic nonce, else None."""
        if not _NONCE_RE.fullmatch(nonce):
            return None
        try:
            raw = base64.urlsafe_b64decode(nonce)
        except (binascii.Error, ValueError):
            return None
        payload, mac = raw[:-_NONCE_MAC_BYTES], raw[-_NONCE_MAC_BYTES:]
        if not hmac.compare_digest(mac, self._mac(payload)):
            return None
        (issued,) = _NONCE_TIME.unpack(payload[: _NONCE_TIME.size])
        if not math.isfinite(issued):
            return None
        return float(issued)

    def _expired(self, issued: float, now: float) -> bool:
        return now - issued > self.nonce_ttl

    # -- challenge ----------------------------------------------------------

    def challenge(self, now: float, stale: bool = False) -> list[str]:
        """Return WWW-Authenticate / Proxy-Authenticate values, SHA-256 first.

        Each value carries its own fresh nonce.
        """
        if not math.isfinite(now):
            raise ValueError("now must be a finite number")
        suffix = ", stale=true" if stale else ""
        return [
            f'Digest realm={self._quoted_realm}, nonce="{self._make_nonce(now)}", '
            f'opaque="{self._opaque}", algorithm={algorithm}, qop="auth"{suffix}'
            for algorithm in self.algorithms
        ]

    # -- verification -------------------------------------------------------

    def verify(
        self,
        method: str,
        authorization: str,
        lookup_password: Callable[[str], str | None],
        now: float,
    ) -> AuthResult:
        """Check an Authorization / Proxy-Authorization header value.

        ``lookup_password(username)`` returns the clear-text password or None
        for an unknown user; unknown users are checked against a dummy password
        and fail exactly like a wrong password ("bad credentials").

        Order of checks: syntax, realm, algorithm, qop/cnonce/nc, nonce MAC and
        opaque, response, nonce age, nonce-count.  The nonce age is checked
        after the response so that ``stale`` is only reported to clients that
        know the password (RFC 7616 section 3.3).  Only successful
        verifications update the nonce-count table.

        The caller remains responsible for checking that ``uri`` matches the
        Request-URI if it wants that binding.
        """
        try:
            scheme, params = parse_auth_params(authorization)
        except ValueError:
            return _fail("malformed")
        if scheme.lower() != "digest":
            return _fail("malformed")
        username = params.get("username")
        if username is None:
            return _fail("malformed")
        realm = params.get("realm")
        nonce = params.get("nonce")
        uri = params.get("uri")
        response = params.get("response")
        if realm is None or nonce is None or uri is None or response is None:
            return _fail("malformed", username)
        if params.get("userhash", "false").lower() != "false":
            return _fail("malformed", username)  # never offered
        if realm != self.realm:
            return _fail("wrong realm", username)
        # RFC 7616 section 3.4: MD5 is assumed when algorithm is absent.
        algorithm = _canonical_algorithm(params.get("algorithm", "MD5"))
        if algorithm is None or algorithm not in self.algorithms:
            return _fail("unsupported algorithm", username)
        qop = params.get("qop")
        if qop is None or qop.lower() != "auth":
            return _fail("malformed", username)  # we only ever offer qop="auth"
        cnonce = params.get("cnonce")
        if not cnonce:
            return _fail("malformed", username)
        nc = params.get("nc")
        if nc is None or not _NC_RE.fullmatch(nc):
            return _fail("malformed", username)
        nc_value = int(nc, 16)
        if nc_value == 0:
            return _fail("malformed", username)

        issued = self._open_nonce(nonce)
        if issued is None:
            return _fail("bad nonce", username)
        opaque = params.get("opaque")
        if opaque is not None and not _ct_equal(opaque, self._opaque):
            return _fail("bad nonce", username)

        password = lookup_password(username)
        known = password is not None
        expected = _digest_response(
            algorithm,
            username=username,
            realm=self.realm,
            password=password if password is not None else self._dummy_password,
            method=method,
            uri=uri,
            nonce=nonce,
            nc=nc,
            cnonce=cnonce,
            qop=qop,
        )
        matches = _ct_equal(expected, response.lower())
        if not (matches and known):
            return _fail("bad credentials", username)

        if issued > now or self._expired(issued, now):
            # A nonce from the "future" (clock reset with a persistent key) is
            # treated like an expired one: the client retries silently.
            return _fail("stale nonce", username, stale=True)
        highest = self._highest_nc.get(nonce)
        if highest is None:
            if issued <= self._evicted_floor:
                return _fail("stale nonce", username, stale=True)
            self._track(nonce, issued, nc_value, now)
        elif nc_value <= highest:
            return _fail("replay", username)
        else:
            self._highest_nc[nonce] = nc_value
        return AuthResult(ok=True, username=username, stale=False, reason="ok", uri=uri)

    def _track(self, nonce: str, issued: float, nc_value: int, now: float) -> None:
        heap = self._by_issue_time
        # Drop expired entries first: they sit at the front of the heap.
        while heap and self._expired(heap[0][0], now):
            _, old = heapq.heappop(heap)
            del self._highest_nc[old]
        # Still full: evict the oldest live nonces and raise the floor.
        while len(self._highest_nc) >= self.max_tracked_nonces:
            old_issued, old = heapq.heappop(heap)
            del self._highest_nc[old]
            self._evicted_floor = max(self._evicted_floor, old_issued)
        self._highest_nc[nonce] = nc_value
        heapq.heappush(heap, (issued, nonce))

    @property
    def tracked_nonces(self) -> int:
        """Number of nonces whose nonce-count is currently remembered."""
        return len(self._highest_nc)


# ---------------------------------------------------------------------------
# Client side
# ---------------------------------------------------------------------------


def build_authorization(
    challenge_value: str,
    method: str,
    uri: str,
    username: str,
    password: str,
    cnonce: str,
    nc: int = 1,
) -> str:
    """Answer one Digest challenge value with an Authorization header value.

    Supports SHA-256 and MD5 (absent ``algorithm`` means MD5).  If the
    challenge offers ``qop`` it must include ``auth``, and the answer uses
    ``qop=auth`` with ``cnonce`` and ``nc``; a challenge without ``qop``
    (RFC 2069 style, seen at some carriers) is answered without them.
    ``opaque`` is echoed.  Raises ValueError for unusable challenges or
    arguments; messages never contain the password.
    """
    scheme, params = parse_auth_params(challenge_value)
    if scheme.lower() != "digest":
        raise ValueError("not a Digest challenge")
    realm = params.get("realm")
    nonce = params.get("nonce")
    if realm is None or nonce is None:
        raise ValueError("Digest challenge lacks realm or nonce")
    algorithm_param = params.get("algorithm")
    algorithm = _canonical_algorithm(algorithm_param if algorithm_param is not None else "MD5")
    if algorithm is None:
        raise ValueError(f"unsupported digest algorithm in challenge: {algorithm_param!r}")
    qop_options = params.get("qop")
    use_qop = qop_options is not None
    if qop_options is not None:
        offered = {option.strip().lower() for option in qop_options.split(",")}
        if "auth" not in offered:
            raise ValueError("challenge does not offer qop=auth")
        if not 1 <= nc <= 0xFFFFFFFF:
            raise ValueError("nc must be between 1 and 0xFFFFFFFF")
        if not cnonce:
            raise ValueError("cnonce must not be empty")
    nc_text = f"{nc:08x}"

    response = _digest_response(
        algorithm,
        username=username,
        realm=realm,
        password=password,
        method=method,
        uri=uri,
        nonce=nonce,
        nc=nc_text if use_qop else None,
        cnonce=cnonce if use_qop else None,
        qop="auth" if use_qop else None,
    )
    parts = [
        f"username={_quote(username, 'username')}",
        f"realm={_quote(realm, 'realm')}",
        f"nonce={_quote(nonce, 'nonce')}",
        f"uri={_quote(uri, 'uri')}",
        f'response="{response}"',
    ]
    if algorithm_param is not None:
        parts.append(f"algorithm={algorithm}")
    if use_qop:
        parts += [f"cnonce={_quote(cnonce, 'cnonce')}", "qop=auth", f"nc={nc_text}"]
    opaque = params.get("opaque")
    if opaque is not None:
        parts.append(f"opaque={_quote(opaque, 'opaque')}")
    return "Digest " + ", ".join(parts)


# ---------------------------------------------------------------------------
# Failed-authentication limiter
# ---------------------------------------------------------------------------


class FailureLimiter:
    """Blocks a source after ``max_failures`` failures within ``window`` seconds.

    A block lasts ``block_seconds``; failures reported while blocked are
    ignored (they neither extend the block nor count afterwards).  Memory is
    bounded: at most ``max_sources`` sources with recent failures and at most
    ``max_sources`` blocked sources are kept.  When a table is full the entry
    that is stale (or, failing that, oldest) is dropped first.  Sources are
    opaque strings; loopback addresses get no special treatment.
    """

    def __init__(
        self,
        max_failures: int = 10,
        window: float = 60.0,
        block_seconds: float = 300.0,
        max_sources: int = 100_000,
    ) -> None:
        if max_failures < 1:
            raise ValueError("max_failures must be at least 1")
        if not (math.isfinite(window) and window > 0):
            raise ValueError("window must be a positive finite number")
        if not (math.isfinite(block_seconds) and block_seconds >= 0):
            raise ValueError("block_seconds must be a non-negative finite number")
        if max_sources < 1:
            raise ValueError("max_sources must be at least 1")
        self.max_failures: Final = max_failures
        self.window: Final = float(window)
        self.block_seconds: Final = float(block_seconds)
        self.max_sources: Final = max_sources
        # source -> failure times inside the window; ordered by last failure.
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        # source -> blocked-until; insertion order == expiry order because
        # block_seconds is constant and ``now`` does not decrease.
        self._blocked: dict[str, float] = {}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(max_failures={self.max_failures}, window={self.window}, "
            f"block_seconds={self.block_seconds}, tracked={len(self._failures)}, "
            f"blocked={len(self._blocked)})"
        )

    def _prune_blocked(self, now: float) -> None:
        blocked = self._blocked
        while blocked:
            source, until = next(iter(blocked.items()))
            if until > now:
                break
            del blocked[source]

    def _prune_failures(self, now: float) -> None:
        failures = self._failures
        cutoff = now - self.window
        while failures:
            source, times = next(iter(failures.items()))
            if times and times[-1] > cutoff:
                break
            del failures[source]

    def is_blocked(self, source: str, now: float) -> bool:
        until = self._blocked.get(source)
        if until is None:
            return False
        if until <= now:
            del self._blocked[source]
            return False
        return True

    def failure(self, source: str, now: float) -> bool:
        """Record a failed attempt; True when this failure starts a block."""
        if self.is_blocked(source, now):
            return False
        cutoff = now - self.window
        times = self._failures.get(source)
        if times is None:
            self._prune_failures(now)
            if len(self._failures) >= self.max_sources:
                self._failures.popitem(last=False)
            times = deque()
            self._failures[source] = times
        else:
            self._failures.move_to_end(source)
        while times and times[0] <= cutoff:
            times.popleft()
        times.append(now)
        if len(times) < self.max_failures:
            return False
        del self._failures[source]
        self._prune_blocked(now)
        if len(self._blocked) >= self.max_sources:
            del self._blocked[next(iter(self._blocked))]
        self._blocked[source] = now + self.block_seconds
        return True

    def success(self, source: str) -> None:
        """Forget the source's failure history (an active block stays in force)."""
        self._failures.pop(source, None)

    def blocked_count(self, now: float) -> int:
        self._prune_blocked(now)
        return sum(1 for until in self._blocked.values() if until > now)
