"""Checks a request must pass before the engine acts on it (RFC 3261 s8.2, s16.3).

:func:`parse` only frames a message; this reads every header a server relies
on, so that a malformed one is answered 400 (or 416/505) naming the fault.
"""

from __future__ import annotations

from engine.sip.message.core import Request
from engine.sip.message.grammar import KNOWN_SCHEMES, ParseError

REQUIRED = ("via", "from", "to", "call-id", "cseq")
SINGLE = ("from", "to", "call-id", "cseq", "max-forwards", "content-type", "expires")
_LABEL = {"via": "Via", "from": "From", "to": "To", "call-id": "Call-ID", "cseq": "CSeq",
          "max-forwards": "Max-Forwards", "content-type": "Content-Type",
          "expires": "Expires"}


def check_request(req: Request) -> None:
    """Raise :class:`ParseError` (with ``partial`` set) when ``req`` is not servable."""
    try:
        _check(req)
    except ParseError as exc:
        exc.partial = req
        raise


def _check(req: Request) -> None:
    for key in REQUIRED:
        if not req.has(key):
            raise ParseError(f"missing {_LABEL[key]} header")
    for key in SINGLE:
        lines = req.get_lines(key)
        if len(lines) > 1:
            raise ParseError(f"{_LABEL[key]} appears {len(lines)} times; it takes one value")
    if not req.call_id.strip():
        raise ParseError("empty Call-ID")
    vias = req.vias  # parses every Via value, raising on the first bad one
    if not vias:
        raise ParseError("empty Via")
    cseq = req.cseq
    if cseq.method != req.method:
        raise ParseError(f"CSeq method {cseq.method!r} differs from the Request-Line's "
                         f"{req.method!r}")
    req.max_forwards  # noqa: B018 - parses and range-checks
    if req.has("expires"):
        req.expires  # noqa: B018
    req.from_  # noqa: B018
    req.to  # noqa: B018
    req.contacts  # noqa: B018
    try:
        uri = req.uri
    except ParseError as exc:
        raise ParseError(f"Request-URI: {exc.reason}") from exc
    if uri.scheme not in KNOWN_SCHEMES:
        raise ParseError(f"Request-URI scheme {uri.scheme!r} is not supported", 416)
    if uri.headers:
        raise ParseError("Request-URI carries headers ('?'), which it must not")
