"""SDP (RFC 8866) and the offer/answer model (RFC 3264), sans-I/O.

* :func:`parse_sdp` reads a session description into a
  :class:`SessionDescription` (RFC 8866 s5); :meth:`SessionDescription.to_bytes`
  writes it back, CRLF-terminated (s5). Lines that are kept but not
  interpreted (``i=``, ``u=``, ``e=``, ``p=``, ``k=``, ``z=``, ``r=``, lines
  of an unknown type) and every attribute, known or not, survive a round
  trip.
* :meth:`SessionDescription.stream` gives the effective view of one media
  description (:class:`Stream`): connection address (media-level ``c=``
  overrides session-level, s5.7), direction (s6.7; media level, else session
  level, else ``sendrecv``), ``ptime`` (s6.4, default 20 ms) and the payload
  formats, resolved by ``a=rtpmap`` (s6.6) or, without one, by the static
  table of RFC 3551 s6 (desk phones send ``RTP/AVP 0 8 9 18 101`` with no
  ``rtpmap`` for 0, 8, 9 and 18).
* :func:`answer` answers an offer (RFC 3264 s6), :func:`make_offer` makes
  one (s5), :func:`negotiated` tells the media layer what to send once both
  are known (s6.1, s7).
* :func:`with_direction` and :func:`with_connection` rewrite a description
  when the engine puts a leg on hold or anchors its media, incrementing the
  ``o=`` version (RFC 3264 s8).

No socket, no clock. Text is UTF-8 (RFC 8866 s5), bytes that are not are
kept as they were (``surrogateescape``, like ``engine.sip.message``).

Decisions (where no RFC says):

* Parsing is lenient where the meaning is not in doubt: LF-only line ends,
  blank lines, trailing blanks on structured lines (``o= c= b= t= m= a=``),
  a missing ``s=`` (taken as ``-``) or ``t=`` (taken as ``0 0``), an ``m=``
  line with no format, a malformed ``rtpmap``/``fmtp``/``ptime`` (ignored).
  It is strict where a guess could be wrong: ``v=`` must come first and be
  0, ``o=`` must have six fields and a numeric version, ``c=`` three fields,
  ports must be numbers up to 65535, session-only lines (``o= s= t=`` ...)
  may not appear in a media description, and ``v= o= s= c=`` may not repeat
  at session level. :class:`SdpError` names the line (number and content,
  capped at 60 characters).
* A second ``c=`` in a media description (layered multicast, s5.7) is kept
  but not interpreted.
* The names of the attributes interpreted here (``rtpmap``, ``fmtp``,
  ``ptime``, the directions) are compared case-insensitively.
* A format resolves to a known codec only if the ``rtpmap`` name
  (case-insensitive), clock rate and channels all match the table, so
  ``G722/16000`` or ``PCMU/8000/2`` are not taken for G.722 or PCMU (the
  audio would be garbled); ``telephone-event`` is accepted at any rate.
* :func:`answer` accepts the first audio stream it can use (RTP/AVP or
  RTP/AVPF, unicast, port not 0, a codec in common; RTP/SAVP(F) with a usable
  ``a=crypto`` only when given an SRTP key, :mod:`media.srtp`) and rejects every
  other stream with port 0 (RFC 3264 s6): without a key, best-effort SRTP
  offers that put an ``RTP/SAVP`` line before an ``RTP/AVP`` one get the plain
  one. :func:`negotiated` carries the SDES keys (ours, the peer's: each side's
  ``a=crypto`` is the key it sends with, RFC 4568 s6.1); :func:`with_srtp` and
  :func:`without_srtp` make an offer SRTP or plain for a callee. It lists
  every common codec in *our* priority order (the device's or user's
  ``codecs``), with the offer's payload type numbers and ``fmtp``, and an
  ``rtpmap`` even for static types (RFC 3264 s6.1 SHOULD). One
  ``telephone-event`` is kept: the one at the clock rate of our first codec,
  else the first offered, with the offer's number and ``fmtp``.
* :func:`negotiated` sends with the first codec of the answer (also in the
  offer) in both directions, so that a leg carries one codec: that is the
  SHOULD of s7 for the offerer; for the answerer s6.1 says the offer's
  preference SHOULD win, which we override with the device's or user's.
  The payload type sent is the *remote* side's number for the codec, the
  ``ptime`` and ``fmtp`` are the remote side's (RFC 3264 s5.1, s6.1, s7).
* ``c=0.0.0.0`` (RFC 2543 hold, RFC 3264 s8.4) and ``c=::`` mean "do not
  send to me": an answer to a ``sendrecv`` offer with that address is
  ``recvonly``, and :func:`negotiated` does not send.
* :func:`with_connection` drops ICE attributes (RFC 8839), whose candidates
  name the old addresses, and the ``a=rtcp`` (RFC 3605) of the rewritten
  stream. A stream on RFC 2543 hold (``c=0.0.0.0``) stays on hold.
* Refusals carry 488 (RFC 3261 s21.4.26) and a Warning code (s20.43): 304
  (no audio stream), 302 (only a transport we do not support or may not use
  here: SRTP without a key, an unusable ``a=crypto``, plain RTP where SRTP is
  required, multicast), 305 (no common codec, or only codecs the engine cannot decode:
  G.729 is relayed, never transcoded).
"""

from __future__ import annotations

import functools
import ipaddress
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Literal, get_args

from media import srtp

__all__ = [
    "CODECS",
    "DEFAULT_CODECS",
    "DEFAULT_PTIME",
    "DIRECTIONS",
    "STATIC_PAYLOAD_TYPES",
    "TELEPHONE_EVENT",
    "AnswerRefused",
    "Attribute",
    "Bandwidth",
    "Codec",
    "Connection",
    "Direction",
    "Line",
    "MediaDescription",
    "Negotiated",
    "Origin",
    "PayloadFormat",
    "SdpError",
    "SessionDescription",
    "Stream",
    "Timing",
    "answer",
    "answer_direction",
    "codec",
    "make_offer",
    "negotiated",
    "offers_plain_rtp",
    "offers_srtp",
    "parse_sdp",
    "srtp_fault",
    "with_codec_order",
    "with_connection",
    "with_direction",
    "with_origin",
    "with_srtp",
    "without_srtp",
]

Direction = Literal["sendrecv", "sendonly", "recvonly", "inactive"]
DIRECTIONS: tuple[Direction, ...] = get_args(Direction)
_DIRECTION_BY_NAME: dict[str, Direction] = {d: d for d in DIRECTIONS}

#: An attribute line ``a=name:value`` as ``(name, value)``; ``a=name`` (a
#: property attribute, RFC 8866 s5.13) has value ``None``.
Attribute = tuple[str, str | None]
#: A line kept but not interpreted, as ``(type letter, value)``.
Line = tuple[str, str]

DEFAULT_PTIME = 20  # ms, RFC 3551 s4.2 default packetization interval
TELEPHONE_EVENT = "telephone-event"
#: The default codec priority: wideband first, then the G.711 pair, G.729 last.
DEFAULT_CODECS: tuple[str, ...] = ("G722", "PCMU", "PCMA", "G729")

_RTP_PROFILES = frozenset({"RTP/AVP", "RTP/AVPF"})  # what the engine answers
# SDES-SRTP (RFC 4568): answered only when the caller passes a key (the leg came over
# TLS and its user allows SRTP); the plain profile each maps to.
_SRTP_PROFILES = {"RTP/SAVP": "RTP/AVP", "RTP/SAVPF": "RTP/AVPF"}
_UNSPECIFIED = frozenset({"0.0.0.0", "::"})
_SEND: frozenset[str] = frozenset({"sendrecv", "sendonly"})
_RECV: frozenset[str] = frozenset({"sendrecv", "recvonly"})
_NOT_VOICE = frozenset({TELEPHONE_EVENT.casefold(), "cn"})  # RFC 4733, RFC 3389
_ICE_ATTRIBUTES = frozenset({
    "candidate", "remote-candidates", "end-of-candidates", "ice-ufrag", "ice-pwd",
    "ice-options", "ice-lite", "ice-mismatch", "ice-pacing",
})
_SHOW = 60  # characters of a bad line quoted in an error
_DIGITS = re.compile(r"[0-9]+")
_MAX_PT = 127  # RTP payload type is 7 bits (RFC 3550 s5.1)
_FIRST_DYNAMIC_PT = 96  # RFC 3551 s6
_TELEPHONE_EVENT_PT = 101
_TELEPHONE_EVENTS = "0-16"  # DTMF 0-9 * # A-D and flash (RFC 4733 s3.2)

# Type letters (RFC 8866 s5): where each may appear.
_SESSION_ONLY = frozenset("vosuepztr")
_SESSION_OTHER = frozenset("iuepzk")  # kept uninterpreted at session level
_MEDIA_OTHER = frozenset("ikc")  # kept uninterpreted in a media description
_KNOWN_LETTERS = frozenset("vosiuepcbtrzkam")


class SdpError(ValueError):
    """A session description that cannot be read (or written).

    ``message`` names the bad line: ``line 7: bad m= line: 'm=audio x RTP/AVP 0'``.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# -- codecs -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Codec:
    """A codec the engine knows.

    ``clock_rate`` is the RTP clock rate written in ``a=rtpmap`` (8000 for
    G.722, RFC 3551 s4.5.2, although it samples at 16 kHz: ``sample_rate``).
    ``static_pt`` is its RFC 3551 s6 payload type, ``None`` if dynamic.
    """

    name: str
    clock_rate: int
    sample_rate: int
    channels: int = 1
    static_pt: int | None = None


_CODEC_LIST = (
    Codec("PCMU", 8000, 8000, static_pt=0),  # RFC 3551 s4.5.14
    Codec("PCMA", 8000, 8000, static_pt=8),  # RFC 3551 s4.5.14
    Codec("G722", 8000, 16000, static_pt=9),  # RFC 3551 s4.5.2
    Codec("G729", 8000, 8000, static_pt=18),  # RFC 3551 s4.5.6, fmtp annexb (RFC 4856)
    Codec(TELEPHONE_EVENT, 8000, 8000),  # RFC 4733 s7.1.1, any rate
    Codec("opus", 48000, 48000, channels=2),  # RFC 7587 s6.1: always opus/48000/2
)
#: The known codecs by canonical name (the spelling of the directory's ``codecs``).
CODECS: Mapping[str, Codec] = MappingProxyType({c.name: c for c in _CODEC_LIST})
_BY_FOLD = {c.name.casefold(): c for c in _CODEC_LIST}

#: RFC 3551 s6 tables 4 and 5: static payload type -> (name, clock rate, channels).
STATIC_PAYLOAD_TYPES: Mapping[int, tuple[str, int, int]] = MappingProxyType({
    0: ("PCMU", 8000, 1), 3: ("GSM", 8000, 1), 4: ("G723", 8000, 1), 5: ("DVI4", 8000, 1),
    6: ("DVI4", 16000, 1), 7: ("LPC", 8000, 1), 8: ("PCMA", 8000, 1), 9: ("G722", 8000, 1),
    10: ("L16", 44100, 2), 11: ("L16", 44100, 1), 12: ("QCELP", 8000, 1), 13: ("CN", 8000, 1),
    14: ("MPA", 90000, 1), 15: ("G728", 8000, 1), 16: ("DVI4", 11025, 1),
    17: ("DVI4", 22050, 1), 18: ("G729", 8000, 1), 25: ("CelB", 90000, 1),
    26: ("JPEG", 90000, 1), 28: ("nv", 90000, 1), 31: ("H261", 90000, 1),
    32: ("MPV", 90000, 1), 33: ("MP2T", 90000, 1), 34: ("H263", 90000, 1),
})


def codec(name: str) -> Codec | None:
    """The known codec called ``name`` (case-insensitive), else ``None``."""
    return _BY_FOLD.get(name.casefold())


def _canonical(name: str, clock_rate: int, channels: int) -> Codec | None:
    known = _BY_FOLD.get(name.casefold())
    if known is None:
        return None
    if known.name == TELEPHONE_EVENT or (
        known.clock_rate == clock_rate and known.channels == channels
    ):
        return known
    return None


@dataclass(frozen=True, slots=True)
class PayloadFormat:
    """One RTP payload format of a media description, resolved.

    ``name`` is the canonical codec name when the format is a known codec
    (``PCMU``, ``opus``, ``telephone-event``), else the ``rtpmap`` name as
    written. ``fmtp`` is the ``a=fmtp`` parameter string (RFC 8866 s6.15),
    e.g. ``annexb=no`` or ``0-16``.
    """

    payload_type: int
    name: str
    clock_rate: int
    channels: int = 1
    fmtp: str | None = None

    @property
    def codec(self) -> Codec | None:
        """The known codec this format is, or ``None``."""
        return _canonical(self.name, self.clock_rate, self.channels)

    def same_codec(self, other: PayloadFormat) -> bool:
        """Whether ``other`` is the same encoding (payload numbers aside)."""
        return (
            self.name.casefold() == other.name.casefold()
            and self.clock_rate == other.clock_rate
            and self.channels == other.channels
        )

    def rtpmap(self) -> str:
        """The ``a=rtpmap`` value for this format (RFC 8866 s6.6)."""
        value = f"{self.payload_type} {self.name}/{self.clock_rate}"
        return value if self.channels == 1 else f"{value}/{self.channels}"


def _parse_rtpmap(value: str | None) -> tuple[int, str, int, int] | None:
    """``<pt> <name>/<rate>[/<channels>]`` (RFC 8866 s6.6), ``None`` if malformed."""
    if value is None:
        return None
    pt_text, _, encoding = value.strip().partition(" ")
    parts = encoding.strip().split("/")
    if not _is_pt(pt_text) or len(parts) not in (2, 3) or not parts[0]:
        return None
    if not all(_DIGITS.fullmatch(p) for p in parts[1:]):
        return None
    rate = int(parts[1])
    channels = int(parts[2]) if len(parts) == 3 else 1
    if rate == 0 or channels == 0:
        return None
    return int(pt_text), parts[0], rate, channels


def _is_pt(text: str) -> bool:
    return _DIGITS.fullmatch(text) is not None and int(text) <= _MAX_PT


# -- the description --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Origin:
    """``o=<username> <sess-id> <sess-version> <nettype> <addrtype> <address>``
    (RFC 8866 s5.2). ``session_id`` is kept as written; ``session_version``
    is a number because it is incremented on each change (RFC 3264 s8).
    """

    username: str
    session_id: str
    session_version: int
    address: str
    addrtype: str = "IP4"
    nettype: str = "IN"

    def line(self) -> str:
        return (f"{self.username} {self.session_id} {self.session_version} "
                f"{self.nettype} {self.addrtype} {self.address}")


@dataclass(frozen=True, slots=True)
class Connection:
    """``c=<nettype> <addrtype> <address>`` (RFC 8866 s5.7).

    ``address`` is as written, with a multicast ``/ttl/count`` if any;
    :attr:`host` is the address alone.
    """

    address: str
    addrtype: str = "IP4"
    nettype: str = "IN"

    @classmethod
    def to(cls, address: str) -> Connection:
        """``IN IP4 address``, or ``IN IP6`` when ``address`` has a colon."""
        return cls(address, "IP6" if ":" in address else "IP4")

    @property
    def host(self) -> str:
        return self.address.split("/", 1)[0]

    def line(self) -> str:
        return f"{self.nettype} {self.addrtype} {self.address}"


@dataclass(frozen=True, slots=True)
class Bandwidth:
    """``b=<bwtype>:<bandwidth>`` (RFC 8866 s5.8), e.g. ``AS`` in kb/s."""

    type: str
    value: int


@dataclass(frozen=True, slots=True)
class Timing:
    """``t=<start> <stop>`` and its ``r=`` lines (RFC 8866 s5.9, s5.10)."""

    start: int = 0
    stop: int = 0
    repeats: tuple[str, ...] = ()


def _find(attributes: tuple[Attribute, ...], name: str) -> Attribute | None:
    key = name.casefold()
    for attribute in attributes:
        if attribute[0].casefold() == key:
            return attribute
    return None


def _direction_in(attributes: tuple[Attribute, ...]) -> Direction | None:
    for name, _ in attributes:
        direction = _DIRECTION_BY_NAME.get(name.casefold())
        if direction is not None:
            return direction
    return None


@dataclass(frozen=True, slots=True)
class MediaDescription:
    """An ``m=`` line and the lines under it (RFC 8866 s5.14).

    ``formats`` are the ``<fmt>`` strings (RTP payload type numbers for
    ``RTP/*`` protocols). ``port_count`` is the ``/2`` of ``m=audio 5004/2``.
    ``other`` holds the ``i=``, ``k=``, extra ``c=`` and unknown lines.
    """

    media: str
    port: int
    protocol: str
    formats: tuple[str, ...]
    connection: Connection | None = None
    bandwidths: tuple[Bandwidth, ...] = ()
    attributes: tuple[Attribute, ...] = ()
    port_count: int | None = None
    other: tuple[Line, ...] = ()

    def attribute(self, name: str) -> str | None:
        """Value of the first ``a=name`` (case-insensitive); ``None`` if absent or a flag."""
        found = _find(self.attributes, name)
        return None if found is None else found[1]

    def has_attribute(self, name: str) -> bool:
        return _find(self.attributes, name) is not None

    @property
    def is_rtp(self) -> bool:
        return "RTP/" in self.protocol.upper()

    def payload_formats(self) -> tuple[PayloadFormat, ...]:
        """The formats of an RTP stream, resolved, in ``m=`` order.

        By ``a=rtpmap`` when there is one (the first per payload type), else
        by the static table of RFC 3551 s6. A dynamic type without
        ``rtpmap``, or a format that is not a payload type, is left out.
        Cached by (protocol, formats, attributes): a B2BUA resolves the same
        phone's ``m=`` line many times per call.
        """
        if not self.is_rtp:
            return ()
        return _payload_formats(self.formats, self.attributes)

    def lines(self) -> list[str]:
        """The lines of this description, in RFC 8866 s5 order, no line ends."""
        port = str(self.port) if self.port_count is None else f"{self.port}/{self.port_count}"
        out = [f"m={' '.join((self.media, port, self.protocol, *self.formats))}"]
        _check_other(self.other, _MEDIA_OTHER, "media description")
        out += [f"i={v}" for k, v in self.other if k == "i"]
        if self.connection is not None:
            out.append(f"c={self.connection.line()}")
        out += [f"c={v}" for k, v in self.other if k == "c"]
        out += [f"b={b.type}:{b.value}" for b in self.bandwidths]
        out += [f"k={v}" for k, v in self.other if k == "k"]
        out += [f"{k}={v}" for k, v in self.other if k not in _MEDIA_OTHER]
        out += [_attribute_line(a) for a in self.attributes]
        return out


@functools.lru_cache(maxsize=4096)
def _payload_formats(fmts: tuple[str, ...],
                     attributes: tuple[Attribute, ...]) -> tuple[PayloadFormat, ...]:
    rtpmaps: dict[int, tuple[str, int, int]] = {}
    fmtps: dict[int, str] = {}
    for name, value in attributes:
        key = name.casefold()
        if key == "rtpmap":
            parsed = _parse_rtpmap(value)
            if parsed is not None:
                rtpmaps.setdefault(parsed[0], parsed[1:])
        elif key == "fmtp" and value is not None:
            pt_text, _, params = value.strip().partition(" ")
            if _is_pt(pt_text):
                fmtps.setdefault(int(pt_text), params.strip())
    formats: list[PayloadFormat] = []
    seen: set[int] = set()
    for fmt in fmts:
        if not _is_pt(fmt) or int(fmt) in seen:
            continue
        pt = int(fmt)
        seen.add(pt)
        mapping = rtpmaps.get(pt) or STATIC_PAYLOAD_TYPES.get(pt)
        if mapping is None:
            continue
        name, rate, channels = mapping
        known = _canonical(name, rate, channels)
        formats.append(PayloadFormat(pt, known.name if known else name, rate, channels,
                                     fmtps.get(pt)))
    return tuple(formats)


def _attribute_line(attribute: Attribute) -> str:
    name, value = attribute
    return f"a={name}" if value is None else f"a={name}:{value}"


def _check_other(other: tuple[Line, ...], allowed: frozenset[str], where: str) -> None:
    for letter, _ in other:
        if len(letter) != 1 or not ("a" <= letter <= "z") or (
            letter in _KNOWN_LETTERS and letter not in allowed
        ):
            raise SdpError(f"cannot write a {letter!r} line as an uninterpreted line of a {where}")


@dataclass(frozen=True, slots=True)
class Stream:
    """The effective view of one media description (RFC 8866, RFC 3264 s5.1).

    ``address`` is the host of the media-level ``c=``, else the session-level
    one, ``None`` if neither exists; ``direction`` the media-level direction
    attribute, else the session-level one, else ``sendrecv`` (RFC 8866
    s6.7); ``ptime`` the media-level ``a=ptime``, else session-level, else
    20 (RFC 8866 s6.4).
    """

    index: int
    media: str
    protocol: str
    port: int
    address: str | None
    direction: Direction
    ptime: int
    formats: tuple[PayloadFormat, ...]

    @property
    def rejected(self) -> bool:
        """Port 0: the stream is disabled or refused (RFC 3264 s6, s8.2)."""
        return self.port == 0

    @property
    def unspecified_address(self) -> bool:
        """``c=0.0.0.0`` (or ``::``): do not send to it (RFC 3264 s8.4)."""
        return self.address in _UNSPECIFIED

    def is_hold(self) -> bool:
        """``sendonly``/``inactive`` (RFC 3264 s8.4) or RFC 2543 ``c=0.0.0.0`` hold."""
        return self.direction in ("sendonly", "inactive") or self.unspecified_address


def _ptime(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(number) or number <= 0 or number > 10_000:
        return None
    return max(1, round(number))


@dataclass(frozen=True, slots=True)
class SessionDescription:
    """A session description (RFC 8866 s5).

    ``other`` holds the session-level ``i= u= e= p= z= k=`` lines and lines
    of unknown types; ``v=`` is always 0 and not stored.
    """

    origin: Origin
    name: str = "-"
    connection: Connection | None = None
    times: tuple[Timing, ...] = (Timing(),)
    attributes: tuple[Attribute, ...] = ()
    media: tuple[MediaDescription, ...] = ()
    bandwidths: tuple[Bandwidth, ...] = ()
    other: tuple[Line, ...] = ()

    def attribute(self, name: str) -> str | None:
        """Value of the first session-level ``a=name`` (case-insensitive)."""
        found = _find(self.attributes, name)
        return None if found is None else found[1]

    def has_attribute(self, name: str) -> bool:
        return _find(self.attributes, name) is not None

    def stream(self, index: int) -> Stream:
        """The effective properties of ``media[index]``."""
        m = self.media[index]
        connection = m.connection or self.connection
        ptime = _ptime(m.attribute("ptime"))
        if ptime is None:
            ptime = _ptime(self.attribute("ptime"))
        return Stream(
            index=index,
            media=m.media,
            protocol=m.protocol,
            port=m.port,
            address=None if connection is None else connection.host,
            direction=(_direction_in(m.attributes) or _direction_in(self.attributes)
                       or "sendrecv"),
            ptime=DEFAULT_PTIME if ptime is None else ptime,
            formats=m.payload_formats(),
        )

    def streams(self) -> tuple[Stream, ...]:
        return tuple(self.stream(i) for i in range(len(self.media)))

    def audio(self) -> Stream | None:
        """The first audio stream whose port is not 0, if any."""
        for i, m in enumerate(self.media):
            if m.media.casefold() == "audio" and m.port != 0:
                return self.stream(i)
        return None

    def next_version(self) -> SessionDescription:
        """This description with the ``o=`` version incremented (RFC 3264 s8)."""
        origin = replace(self.origin, session_version=self.origin.session_version + 1)
        return replace(self, origin=origin)

    def lines(self) -> list[str]:
        """The lines, in RFC 8866 s5 order, no line ends."""
        _check_other(self.other, _SESSION_OTHER, "session")
        out = ["v=0", f"o={self.origin.line()}", f"s={self.name}"]
        out += [f"{k}={v}" for k, v in self.other if k in "iuep"]
        if self.connection is not None:
            out.append(f"c={self.connection.line()}")
        out += [f"b={b.type}:{b.value}" for b in self.bandwidths]
        for timing in self.times:
            out.append(f"t={timing.start} {timing.stop}")
            out += [f"r={r}" for r in timing.repeats]
        out += [f"{k}={v}" for k, v in self.other if k in "zk"]
        out += [f"{k}={v}" for k, v in self.other if k not in _SESSION_OTHER]
        out += [_attribute_line(a) for a in self.attributes]
        for m in self.media:
            out += m.lines()
        return out

    def to_text(self) -> str:
        """The description, each line CRLF-terminated (RFC 8866 s5).

        Raises :class:`SdpError` if a value holds CR, LF or NUL (it would
        inject lines).
        """
        lines = self.lines()
        for line in lines:
            if "\r" in line or "\n" in line or "\0" in line:
                raise SdpError(f"cannot write a line holding CR, LF or NUL: {_show(line)}")
        return "".join(f"{line}\r\n" for line in lines)

    def to_bytes(self) -> bytes:
        try:
            return self.to_text().encode("utf-8", "surrogateescape")
        except UnicodeEncodeError as exc:
            raise SdpError(f"cannot encode the description as UTF-8: {exc.reason}") from None


# -- parsing ----------------------------------------------------------------


class _Bad(Exception):
    """A line that does not follow RFC 8866 s9; the parser adds where."""


def _show(line: str) -> str:
    return repr(line if len(line) <= _SHOW else line[:_SHOW] + "...")


def _number(text: str, what: str, maximum: int | None = None) -> int:
    if _DIGITS.fullmatch(text) is None:
        raise _Bad(f"{what} is not a number")
    value = int(text)
    if maximum is not None and value > maximum:
        raise _Bad(f"{what} is over {maximum}")
    return value


def _parse_origin(value: str) -> Origin:
    fields = value.split()
    if len(fields) != 6:
        raise _Bad("o= needs 6 fields: username sess-id sess-version nettype addrtype address")
    username, session_id, version, nettype, addrtype, address = fields
    return Origin(username, session_id, _number(version, "o= session version"), address,
                  addrtype, nettype)


def _parse_connection(value: str) -> Connection:
    fields = value.split()
    if len(fields) != 3:
        raise _Bad("c= needs 3 fields: nettype addrtype address")
    nettype, addrtype, address = fields
    return Connection(address, addrtype, nettype)


def _parse_bandwidth(value: str) -> Bandwidth:
    bwtype, sep, amount = value.partition(":")
    if not sep or not bwtype or " " in bwtype:
        raise _Bad("b= must be <bwtype>:<bandwidth>")
    return Bandwidth(bwtype, _number(amount.strip(), "b= bandwidth"))


def _parse_timing(value: str) -> Timing:
    fields = value.split()
    if len(fields) != 2:
        raise _Bad("t= needs 2 fields: start stop")
    return Timing(_number(fields[0], "t= start"), _number(fields[1], "t= stop"))


def _parse_media(value: str) -> MediaDescription:
    fields = value.split()
    if len(fields) < 3:
        raise _Bad("m= needs at least: media port proto")
    media, port_text, protocol, *formats = fields
    port_part, sep, count_part = port_text.partition("/")
    port = _number(port_part, "m= port", 65535)
    count = _number(count_part, "m= port count") if sep else None
    if count == 0:
        raise _Bad("m= port count is 0")
    return MediaDescription(media, port, protocol, tuple(formats), port_count=count)


def _parse_attribute(value: str) -> Attribute:
    name, sep, attr_value = value.partition(":")
    if not name:
        raise _Bad("a= has no attribute name")
    return (name, attr_value if sep else None)


@dataclass(slots=True)
class _MediaBuilder:
    m: MediaDescription
    connection: Connection | None = None
    bandwidths: list[Bandwidth] = field(default_factory=list)
    attributes: list[Attribute] = field(default_factory=list)
    other: list[Line] = field(default_factory=list)

    def build(self) -> MediaDescription:
        return replace(self.m, connection=self.connection, bandwidths=tuple(self.bandwidths),
                       attributes=tuple(self.attributes),
                       other=_in_order(self.other, _MEDIA_RANK))


# Where uninterpreted lines go when written (RFC 8866 s5 order); unknown
# types last, before the a= lines. Parsing sorts them the same way so that
# writing and reading again gives the same description.
_SESSION_RANK = {"i": 0, "u": 0, "e": 0, "p": 0, "z": 1, "k": 1}
_MEDIA_RANK = {"i": 0, "c": 1, "k": 2}


def _in_order(lines: Iterable[Line], rank: Mapping[str, int]) -> tuple[Line, ...]:
    return tuple(sorted(lines, key=lambda line: rank.get(line[0], len(rank))))


def parse_sdp(data: bytes | str) -> SessionDescription:
    """Parse a session description (RFC 8866 s5, s9).

    Accepts CRLF or LF line ends. Raises :class:`SdpError` naming the first
    bad line (see the module notes for what is lenient and what is not).
    """
    text = data if isinstance(data, str) else bytes(data).decode("utf-8", "surrogateescape")
    origin: Origin | None = None
    name: str | None = None
    connection: Connection | None = None
    seen_version = False
    times: list[Timing] = []
    bandwidths: list[Bandwidth] = []
    attributes: list[Attribute] = []
    other: list[Line] = []
    media: list[_MediaBuilder] = []
    number = 0
    line = ""
    try:
        for number, raw in enumerate(text.split("\n"), 1):  # noqa: B007 - used in except
            line = raw[:-1] if raw.endswith("\r") else raw
            if not line.strip():
                continue
            if len(line) < 2 or line[1] != "=" or not ("a" <= line[0] <= "z"):
                raise _Bad("expected <type>=<value>")
            if "\r" in line or "\0" in line:
                raise _Bad("CR or NUL inside a line")
            letter, value = line[0], line[2:]
            if letter in "vocbtma":
                value = value.rstrip(" \t")
            if not seen_version:
                if letter != "v":
                    raise _Bad("the first line must be v=0")
                if value != "0":
                    raise _Bad("unsupported SDP version")
                seen_version = True
                continue
            if letter == "m":
                media.append(_MediaBuilder(_parse_media(value)))
                continue
            if media:  # inside a media description (RFC 8866 s5: i c b k a)
                current = media[-1]
                if letter in _SESSION_ONLY:
                    raise _Bad(f"{letter}= is not allowed in a media description")
                if letter == "c":
                    parsed = _parse_connection(value)
                    if current.connection is None:
                        current.connection = parsed
                    else:
                        current.other.append(("c", value))
                elif letter == "b":
                    current.bandwidths.append(_parse_bandwidth(value))
                elif letter == "a":
                    current.attributes.append(_parse_attribute(value))
                else:
                    current.other.append((letter, value))
                continue
            if letter == "v":
                raise _Bad("v= repeated")
            if letter == "o":
                if origin is not None:
                    raise _Bad("o= repeated")
                origin = _parse_origin(value)
            elif letter == "s":
                if name is not None:
                    raise _Bad("s= repeated")
                name = value
            elif letter == "c":
                if connection is not None:
                    raise _Bad("session-level c= repeated")
                connection = _parse_connection(value)
            elif letter == "b":
                bandwidths.append(_parse_bandwidth(value))
            elif letter == "t":
                times.append(_parse_timing(value))
            elif letter == "r":
                if not times:
                    raise _Bad("r= before any t=")
                times[-1] = replace(times[-1], repeats=(*times[-1].repeats, value))
            elif letter == "a":
                attributes.append(_parse_attribute(value))
            else:
                other.append((letter, value))
    except _Bad as exc:
        raise SdpError(f"line {number}: {exc}: {_show(line)}") from None
    if not seen_version:
        raise SdpError("empty session description")
    if origin is None:
        raise SdpError("missing o= line")
    return SessionDescription(
        origin=origin,
        name="-" if name is None else name,
        connection=connection,
        times=tuple(times) if times else (Timing(),),
        attributes=tuple(attributes),
        media=tuple(b.build() for b in media),
        bandwidths=tuple(bandwidths),
        other=_in_order(other, _SESSION_RANK),
    )


# -- offer / answer ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AnswerRefused:
    """No acceptable answer: reply ``status`` (488 Not Acceptable Here, RFC
    3261 s21.4.26) with ``Warning: <warning> <host> "<reason>"`` (s20.43).
    """

    reason: str
    status: int = 488
    warning: int = 305


def answer_direction(offered: Direction, wanted: Direction = "sendrecv") -> Direction:
    """The answer's direction for an ``offered`` one (RFC 3264 s6.1).

    sendonly -> recvonly, recvonly -> sendonly, inactive -> inactive,
    sendrecv -> sendrecv; ``wanted`` (what we would like, e.g. ``sendonly``
    to hold) can only narrow it.
    """
    send = wanted in _SEND and offered in _RECV
    receive = wanted in _RECV and offered in _SEND
    return _direction(send, receive)


def _direction(send: bool, receive: bool) -> Direction:
    if send:
        return "sendrecv" if receive else "sendonly"
    return "recvonly" if receive else "inactive"


def _unique_folded(names: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for name in names:
        key = name.casefold()
        if key not in seen:
            seen.add(key)
            out.append(name)
    return out


def _matches(local: str, fmt: PayloadFormat) -> bool:
    known = codec(local)
    if known is not None:
        return fmt.codec == known
    return fmt.codec is None and fmt.name.casefold() == local.casefold()


def _names(names: Iterable[str]) -> str:
    listed = ", ".join(names)
    return listed or "nothing"


def _offered_names(m: MediaDescription, formats: tuple[PayloadFormat, ...]) -> list[str]:
    by_pt = {str(f.payload_type): f.name for f in formats}
    names = [by_pt.get(fmt, f"{fmt} (unknown)") for fmt in m.formats]
    return _unique_folded(names)


def _is_multicast(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_multicast
    except ValueError:
        return False


def _pick(
    m: MediaDescription,
    formats: tuple[PayloadFormat, ...],
    wanted: list[str],
    decodable: frozenset[str] | None,
) -> list[PayloadFormat] | AnswerRefused:
    common: list[PayloadFormat] = []
    for name in wanted:
        for fmt in formats:
            if fmt.name.casefold() not in _NOT_VOICE and _matches(name, fmt):
                if fmt not in common:
                    common.append(fmt)
                break
    offered = _offered_names(m, formats)
    if not common:
        return AnswerRefused(
            f"no common codec: offered {_names(offered)}; we support {_names(wanted)}")
    if decodable is None:
        return common
    usable = [f for f in common if f.name.casefold() in decodable]
    if usable:
        return usable
    names = [f.name for f in common]
    them = "it" if len(names) == 1 else "them"
    voice = [n for n in offered if n.casefold() not in _NOT_VOICE]
    if {n.casefold() for n in voice} <= {n.casefold() for n in names}:
        what = f"only {' and '.join(names)} offered"
    else:
        what = f"only {' and '.join(names)} in common (offered {_names(offered)})"
    return AnswerRefused(f"{what}: the engine cannot decode {them} (no transcoding)")


def _telephone_event(
    formats: Iterable[PayloadFormat], clock_rate: int
) -> PayloadFormat | None:
    events = [f for f in formats if f.name == TELEPHONE_EVENT]
    for fmt in events:
        if fmt.clock_rate == clock_rate:
            return fmt
    return events[0] if events else None


def _check_endpoint(address: str, port: int, *, allow_zero: bool = False) -> None:
    if not address or any(c.isspace() for c in address):
        raise ValueError(f"bad media address {address!r}")
    if not (0 if allow_zero else 1) <= port <= 65535:
        raise ValueError(f"bad media port {port}")


def _media_attributes(
    formats: Sequence[PayloadFormat], ptime: int, direction: Direction
) -> tuple[Attribute, ...]:
    attributes: list[Attribute] = []
    for fmt in formats:
        attributes.append(("rtpmap", fmt.rtpmap()))
        if fmt.fmtp is not None:
            attributes.append(("fmtp", f"{fmt.payload_type} {fmt.fmtp}"))
    attributes.append(("ptime", str(ptime)))
    attributes.append((direction, None))
    return tuple(attributes)


def answer(
    offer: SessionDescription,
    local_codecs: Sequence[str],
    *,
    address: str,
    port: int,
    session_id: int,
    session_version: int = 0,
    direction: Direction = "sendrecv",
    ptime: int = DEFAULT_PTIME,
    telephone_event: bool = True,
    can_decode: frozenset[str] | None = None,
    srtp_key: bytes | None = None,
    require_srtp: bool = False,
) -> SessionDescription | AnswerRefused:
    """Answer ``offer`` (RFC 3264 s6, s6.1).

    ``local_codecs`` is the priority list of the device or user on this leg
    (the caller's where the engine itself answers); names are
    case-insensitive, ``telephone-event`` in it is ignored (``telephone_event``
    says whether to accept it). ``can_decode``, when the engine must decode
    or encode the audio itself (voicemail, IVR, hold music), limits the
    choice to those codecs. ``direction`` is what we want (``sendrecv``, or
    ``sendonly``/``inactive`` to hold); the answer's is narrowed by the
    offer's (:func:`answer_direction`). ``address``/``port`` are where we
    receive; ``session_id``/``session_version`` make our ``o=`` line.
    ``srtp_key`` (30 bytes): an ``RTP/SAVP`` stream with a usable
    ``a=crypto`` (:mod:`media.srtp`) may be accepted, answered with this key
    under the offer's tag (RFC 4568 s6.1); without it SAVP streams are refused
    as before. ``require_srtp``: plain RTP streams are refused.

    Returns the answer, or :class:`AnswerRefused` (488) when no audio stream
    can be accepted. Raises :class:`SdpError` when the stream to accept has
    no ``c=`` (RFC 8866 s5.7), ``ValueError`` for bad arguments.
    """
    _check_endpoint(address, port)
    if direction not in DIRECTIONS:
        raise ValueError(f"bad direction {direction!r}")
    wanted = [n for n in _unique_folded(local_codecs) if n.casefold() != TELEPHONE_EVENT]
    decodable = None if can_decode is None else frozenset(n.casefold() for n in can_decode)
    refusal: AnswerRefused | None = None
    accepted: tuple[int, list[PayloadFormat]] | None = None
    crypto: srtp.Crypto | None = None
    for index, m in enumerate(offer.media):
        if m.media.casefold() != "audio" or m.port == 0:
            continue
        stream = offer.stream(index)
        profile = m.protocol.upper()
        crypto = None
        if profile in _SRTP_PROFILES and srtp_key is not None:
            found = _crypto_of(m)
            if isinstance(found, str):
                refusal = refusal or AnswerRefused(found, warning=302)
                continue
            crypto = found
        elif profile in _RTP_PROFILES and require_srtp:
            refusal = refusal or AnswerRefused(
                f"audio offered over {m.protocol}: SRTP (RTP/SAVP with a=crypto) is "
                "required for this user", warning=302)
            continue
        elif profile not in _RTP_PROFILES:
            refusal = refusal or AnswerRefused(
                f"audio offered only over {m.protocol}; we support RTP/AVP", warning=302)
            continue
        if stream.address is None:
            raise SdpError(f"m= line {index + 1} (audio) has no c= and there is no "
                           "session-level c=")
        if _is_multicast(stream.address):
            refusal = refusal or AnswerRefused(
                f"multicast audio ({stream.address}) is not supported", warning=302)
            continue
        picked = _pick(m, stream.formats, wanted, decodable)
        if isinstance(picked, AnswerRefused):
            refusal = refusal or picked
            continue
        accepted = index, picked
        break
    else:
        crypto = None
    if accepted is None:
        if refusal is not None:
            return refusal
        kinds = _unique_folded(m.media for m in offer.media)
        if any(k.casefold() == "audio" for k in kinds):
            return AnswerRefused("no active audio stream offered (every audio port is 0)",
                                 warning=304)
        return AnswerRefused(f"no audio stream offered (offered: {_names(kinds)})", warning=304)

    index, chosen = accepted
    stream = offer.stream(index)
    formats = list(chosen)
    if telephone_event:
        event = _telephone_event(stream.formats, chosen[0].clock_rate)
        if event is not None:
            formats.append(event)
    offered_direction = stream.direction
    if stream.unspecified_address and offered_direction in _RECV:
        # RFC 2543 hold: the offerer does not want media (RFC 3264 s8.4).
        offered_direction = "sendonly" if offered_direction == "sendrecv" else "inactive"
    attributes = _media_attributes(formats, ptime,
                                   answer_direction(offered_direction, direction))
    if crypto is not None:
        assert srtp_key is not None
        attributes += (("crypto", srtp.format_crypto(crypto.tag, srtp_key)),)
    media = tuple(
        MediaDescription(
            m.media, port, m.protocol, tuple(str(f.payload_type) for f in formats),
            attributes=attributes,
        )
        if i == index
        else MediaDescription(m.media, 0, m.protocol, m.formats)
        for i, m in enumerate(offer.media)
    )
    connection = Connection.to(address)
    return SessionDescription(
        origin=Origin("-", str(session_id), session_version, address, connection.addrtype),
        name="-",
        connection=connection,
        times=offer.times,  # RFC 3264 s6: the t= of the answer equals the offer's
        media=media,
    )


def make_offer(
    local_codecs: Sequence[str],
    *,
    address: str,
    port: int,
    session_id: int,
    session_version: int = 0,
    telephone_event: bool = True,
    direction: Direction = "sendrecv",
    ptime: int = DEFAULT_PTIME,
) -> SessionDescription:
    """An offer with one audio stream (RFC 3264 s5, s5.1).

    Codecs in ``local_codecs`` order, static payload types for PCMU, PCMA,
    G722 and G729 (RFC 3551 s6) with ``rtpmap`` lines too, dynamic types
    from 96 for the others; ``telephone-event`` ``0-16`` (RFC 4733) at 101
    for 8000 Hz codecs, and on a dynamic type at 48000 Hz when opus is
    offered. Raises ``ValueError`` for an unknown codec or an empty list.
    """
    _check_endpoint(address, port, allow_zero=True)
    if direction not in DIRECTIONS:
        raise ValueError(f"bad direction {direction!r}")
    codecs: list[Codec] = []
    for name in _unique_folded(local_codecs):
        known = codec(name)
        if known is None:
            raise ValueError(f"unknown codec {name!r}; known: {', '.join(CODECS)}")
        if known.name != TELEPHONE_EVENT:
            codecs.append(known)
    if not codecs:
        raise ValueError("no codec to offer")
    used = {c.static_pt for c in codecs if c.static_pt is not None}
    if telephone_event:
        used.add(_TELEPHONE_EVENT_PT)
    dynamic = (pt for pt in range(_FIRST_DYNAMIC_PT, _MAX_PT + 1) if pt not in used)
    formats: list[PayloadFormat] = []
    for c in codecs:
        pt = c.static_pt if c.static_pt is not None else next(dynamic)
        formats.append(PayloadFormat(pt, c.name, c.clock_rate, c.channels))
    if telephone_event:
        for rate in dict.fromkeys(c.clock_rate for c in codecs):
            pt = _TELEPHONE_EVENT_PT if rate == 8000 else next(dynamic)
            formats.append(PayloadFormat(pt, TELEPHONE_EVENT, rate, 1, _TELEPHONE_EVENTS))
    connection = Connection.to(address)
    return SessionDescription(
        origin=Origin("-", str(session_id), session_version, address, connection.addrtype),
        name="-",
        connection=connection,
        media=(MediaDescription(
            "audio", port, "RTP/AVP", tuple(str(f.payload_type) for f in formats),
            attributes=_media_attributes(formats, ptime, direction)),),
    )


@dataclass(frozen=True, slots=True)
class Negotiated:
    """What the media layer sends and expects on one leg (RFC 3264 s6.1, s7).

    ``payload_type`` and ``telephone_event`` are the numbers to *send* (the
    remote side's, RFC 3264 s5.1); ``receive_payload_type`` and
    ``receive_telephone_event`` the ones ours says we receive (equal unless
    the peer renumbered). ``fmtp`` and ``ptime`` are the remote side's.
    ``direction`` is ours once both descriptions are taken into account,
    including ``c=0.0.0.0`` and port 0.
    """

    index: int
    codec: str
    payload_type: int
    receive_payload_type: int
    clock_rate: int
    channels: int
    fmtp: str | None
    telephone_event: int | None
    receive_telephone_event: int | None
    remote_address: str
    remote_port: int
    direction: Direction
    ptime: int
    # SDES-SRTP (RFC 4568): the key we send with (in our description) and the one
    # the peer sends with (in its); None on plain RTP.
    send_key: bytes | None = field(default=None, repr=False)
    receive_key: bytes | None = field(default=None, repr=False)

    @property
    def srtp(self) -> bool:
        return self.send_key is not None

    @property
    def sends(self) -> bool:
        return self.direction in _SEND

    @property
    def receives(self) -> bool:
        return self.direction in _RECV


def _same(formats: Iterable[PayloadFormat], target: PayloadFormat) -> PayloadFormat | None:
    for fmt in formats:
        if fmt.same_codec(target):
            return fmt
    return None


def _first_common(
    answered: Iterable[PayloadFormat],
    theirs: Sequence[PayloadFormat],
    mine: Sequence[PayloadFormat],
) -> tuple[PayloadFormat, PayloadFormat] | None:
    for fmt in answered:
        if fmt.name.casefold() in _NOT_VOICE:
            continue
        their_fmt, my_fmt = _same(theirs, fmt), _same(mine, fmt)
        if their_fmt is not None and my_fmt is not None:
            return their_fmt, my_fmt
    return None


def negotiated(
    offer: SessionDescription,
    answer: SessionDescription,
    *,
    local: Literal["offerer", "answerer"] = "answerer",
) -> Negotiated:
    """The audio stream agreed by ``offer`` and ``answer``, seen from ``local``.

    The stream is the first audio one accepted (port not 0 on both sides).
    The codec is the first of the answer's that the offer also has (s7);
    see the module notes for why the answerer uses it too. Raises
    :class:`SdpError` when the answer does not match the offer (number of
    ``m=`` lines, s6), accepts no audio stream, or has no common codec.
    """
    if len(offer.media) != len(answer.media):
        raise SdpError(f"the answer has {len(answer.media)} m= lines, the offer "
                       f"{len(offer.media)} (RFC 3264 s6)")
    index = next((i for i, (om, am) in enumerate(zip(offer.media, answer.media, strict=True))
                  if om.media.casefold() == am.media.casefold() == "audio"
                  and om.port != 0 and am.port != 0 and am.is_rtp), None)
    if index is None:
        raise SdpError("the answer accepts no audio stream")
    offered, answered = offer.stream(index), answer.stream(index)
    mine, theirs = (offered, answered) if local == "offerer" else (answered, offered)
    pair = _first_common(answered.formats, theirs.formats, mine.formats)
    if pair is None:
        raise SdpError(f"audio stream {index + 1}: no codec of the answer is in the offer")
    their_fmt, my_fmt = pair
    event = _telephone_event(answered.formats, their_fmt.clock_rate)
    their_event = my_event = None
    if event is not None:
        their_event, my_event = _same(theirs.formats, event), _same(mine.formats, event)
        if their_event is None or my_event is None:
            their_event = my_event = None
    if theirs.address is None:
        remote = "answer" if local == "offerer" else "offer"
        raise SdpError(f"audio stream {index + 1}: the {remote} has no c= for it")
    keys = _keys(offer.media[index], answer.media[index], local)
    send = (mine.direction in _SEND and theirs.direction in _RECV
            and not theirs.unspecified_address and theirs.port != 0)
    receive = (mine.direction in _RECV and theirs.direction in _SEND
               and not mine.unspecified_address)
    return Negotiated(
        index=index,
        codec=their_fmt.name,
        payload_type=their_fmt.payload_type,
        receive_payload_type=my_fmt.payload_type,
        clock_rate=their_fmt.clock_rate,
        channels=their_fmt.channels,
        fmtp=their_fmt.fmtp,
        telephone_event=None if their_event is None else their_event.payload_type,
        receive_telephone_event=None if my_event is None else my_event.payload_type,
        remote_address=theirs.address,
        remote_port=theirs.port,
        direction=_direction(send, receive),
        ptime=theirs.ptime,
        send_key=None if keys is None else keys[0],
        receive_key=None if keys is None else keys[1],
    )


def _crypto_of(m: MediaDescription) -> srtp.Crypto | str:
    """The first usable ``a=crypto`` of an SRTP stream, else why there is none."""
    faults: list[str] = []
    for name, value in m.attributes:
        if name.casefold() == "crypto" and value is not None:
            try:
                return srtp.parse_crypto(value)
            except srtp.SrtpError as exc:
                faults.append(str(exc))
    if not faults:
        return f"audio offered over {m.protocol} without an a=crypto line (RFC 4568)"
    return f"no usable a=crypto in the {m.protocol} stream: {'; '.join(faults)}"


def _keys(offered: MediaDescription, answered: MediaDescription,
          local: Literal["offerer", "answerer"]) -> tuple[bytes, bytes] | None:
    """(our send key, the peer's send key) of an SRTP stream (RFC 4568 s6.1: the
    answer's crypto names the offer's by its tag); None when it is plain RTP."""
    if answered.protocol.upper() not in _SRTP_PROFILES:
        return None
    theirs = _crypto_of(answered)
    if isinstance(theirs, str):
        raise SdpError(f"SRTP answer: {theirs}")
    chosen: srtp.Crypto | None = None
    for name, value in offered.attributes:
        if name.casefold() == "crypto" and value is not None:
            try:
                crypto = srtp.parse_crypto(value)
            except srtp.SrtpError:
                continue
            if crypto.tag == theirs.tag:
                chosen = crypto
                break
    if chosen is None:
        raise SdpError(f"SRTP answer: its crypto tag {theirs.tag} is not one of the offer's")
    # In SDES each side announces the key it sends with.
    if local == "offerer":
        return chosen.key, theirs.key
    return theirs.key, chosen.key


# -- rewriting --------------------------------------------------------------


def with_direction(sdp: SessionDescription, direction: Direction) -> SessionDescription:
    """``sdp`` with every active stream (port not 0) set to ``direction``.

    Hold is ``sendonly`` (or ``inactive`` if we were already receiving
    nothing), resume ``sendrecv`` (RFC 3264 s8.4). The media-level direction
    attribute is replaced where it was (else appended), session-level ones
    are dropped; the ``o=`` version is incremented (s8).
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"bad direction {direction!r}")

    def rewrite(attributes: tuple[Attribute, ...]) -> tuple[Attribute, ...]:
        out: list[Attribute] = []
        placed = False
        for attribute in attributes:
            if attribute[0].casefold() in _DIRECTION_BY_NAME:
                if not placed:
                    out.append((direction, None))
                    placed = True
            else:
                out.append(attribute)
        if not placed:
            out.append((direction, None))
        return tuple(out)

    media = tuple(m if m.port == 0 else replace(m, attributes=rewrite(m.attributes))
                  for m in sdp.media)
    session = tuple(a for a in sdp.attributes if a[0].casefold() not in _DIRECTION_BY_NAME)
    return replace(sdp, attributes=session, media=media).next_version()


def with_connection(
    sdp: SessionDescription, address: str, port: int, *, index: int | None = None
) -> SessionDescription:
    """``sdp`` with the stream ``index`` (default: the first active audio
    stream) received at ``address``:``port`` (RFC 3264 s8.3.1), e.g. when
    the engine anchors the media.

    The session-level ``c=`` becomes ``address``; other active streams that
    relied on the old session-level ``c=`` get it as their own, so they are
    unchanged. ICE attributes are dropped everywhere and ``a=rtcp`` from the
    rewritten stream (their addresses would be stale). A stream on RFC 2543
    hold (``c=0.0.0.0``) keeps that address. The ``o=`` version is
    incremented (s8). Raises :class:`SdpError` if there is no such active
    stream, ``ValueError`` for a bad address or port.
    """
    _check_endpoint(address, port)
    if index is None:
        audio = sdp.audio()
        if audio is None:
            raise SdpError("no active audio stream to rewrite")
        index = audio.index
    if not 0 <= index < len(sdp.media) or sdp.media[index].port == 0:
        raise SdpError(f"no active stream at index {index}")
    target = sdp.stream(index)
    new = Connection.to(address)

    def strip(attributes: tuple[Attribute, ...], also: frozenset[str]) -> tuple[Attribute, ...]:
        return tuple(a for a in attributes
                     if a[0].casefold() not in _ICE_ATTRIBUTES and a[0].casefold() not in also)

    media: list[MediaDescription] = []
    for i, m in enumerate(sdp.media):
        if i == index:
            held = (m.connection or sdp.connection) if target.unspecified_address else None
            m = replace(m, port=port, connection=held,
                        attributes=strip(m.attributes, frozenset({"rtcp"})))
        elif m.port != 0:
            m = replace(m, connection=m.connection or sdp.connection,
                        attributes=strip(m.attributes, frozenset()))
        media.append(m)
    return replace(sdp, connection=new, media=tuple(media),
                   attributes=strip(sdp.attributes, frozenset())).next_version()


def with_codec_order(sdp: SessionDescription, priority: Sequence[str]) -> SessionDescription:
    """``sdp`` with the first active audio stream's codecs in ``priority`` order.

    Used where the engine anchors a call and offers the caller's session to a
    callee: each leg follows the list of the device or user on that leg. Voice
    codecs not in ``priority`` are left out (with their ``rtpmap``/``fmtp``
    lines); ``telephone-event`` and comfort noise stay, after the voice codecs.
    When none of the offered voice codecs is in the list, ``sdp`` is returned
    unchanged: the callee then answers from what the caller offered (or
    refuses), rather than getting an offer with no codec at all.
    """
    audio = sdp.audio()
    if audio is None:
        return sdp
    m = sdp.media[audio.index]
    rank = {name.casefold(): i for i, name in enumerate(_unique_folded(priority))}
    voice = [f for f in audio.formats if f.name.casefold() not in _NOT_VOICE]
    kept = sorted((f for f in voice if f.name.casefold() in rank),
                  key=lambda f: rank[f.name.casefold()])
    if not kept:
        return sdp
    extra = [f for f in audio.formats if f.name.casefold() in _NOT_VOICE]
    order = [str(f.payload_type) for f in (*kept, *extra)]
    dropped = {str(f.payload_type) for f in voice} - set(order)

    def keep(attribute: Attribute) -> bool:
        if attribute[0].casefold() not in ("rtpmap", "fmtp") or attribute[1] is None:
            return True
        return attribute[1].strip().partition(" ")[0] not in dropped

    media = replace(m, formats=tuple(order),
                    attributes=tuple(a for a in m.attributes if keep(a)))
    return replace(sdp, media=tuple(media if i == audio.index else other
                                    for i, other in enumerate(sdp.media)))


def with_origin(sdp: SessionDescription, session_id: int, version: int,
                address: str) -> SessionDescription:
    """``sdp`` under our own ``o=`` line (a B2BUA speaks for itself on each leg)."""
    addrtype = Connection.to(address).addrtype
    return replace(sdp, origin=Origin("-", str(session_id), version, address, addrtype))


# -- SDES-SRTP ----------------------------------------------------------------


def _active_audio(sdp: SessionDescription) -> list[MediaDescription]:
    return [m for m in sdp.media if m.media.casefold() == "audio" and m.port != 0]


def offers_srtp(sdp: SessionDescription) -> bool:
    """Some active audio stream is ``RTP/SAVP`` (or SAVPF): the offer carries keys."""
    return any(m.protocol.upper() in _SRTP_PROFILES for m in _active_audio(sdp))


def srtp_fault(sdp: SessionDescription) -> str | None:
    """Why none of the offer's active SRTP audio streams has a usable ``a=crypto``
    (:mod:`media.srtp`); None when one has (or there is no SRTP stream)."""
    faults = [_crypto_of(m) for m in _active_audio(sdp) if m.protocol.upper() in _SRTP_PROFILES]
    if not faults or any(not isinstance(f, str) for f in faults):
        return None
    return str(faults[0])


def offers_plain_rtp(sdp: SessionDescription) -> bool:
    """Some active audio stream is plain ``RTP/AVP`` (or AVPF)."""
    return any(m.protocol.upper() in _RTP_PROFILES for m in _active_audio(sdp))


def _first_audio_index(sdp: SessionDescription, profiles: Iterable[str]) -> int | None:
    wanted = set(profiles)
    return next((i for i, m in enumerate(sdp.media) if m.media.casefold() == "audio"
                 and m.port != 0 and m.protocol.upper() in wanted), None)


def _keep_one_audio(sdp: SessionDescription, index: int,
                    m: MediaDescription) -> SessionDescription:
    """``sdp`` with ``m`` at ``index`` and every other active audio stream disabled
    (port 0): a best-effort offer's plain twin of the SRTP stream is not offered on."""
    media = tuple(m if i == index else
                  replace(other, port=0) if other.media.casefold() == "audio" else other
                  for i, other in enumerate(sdp.media))
    return replace(sdp, media=media)


def with_srtp(sdp: SessionDescription, key: bytes) -> SessionDescription:
    """``sdp`` as an SRTP offer: its first active audio stream ``RTP/SAVP`` (SAVPF
    for AVPF) with one ``a=crypto:1`` carrying ``key`` (RFC 4568 s9.1), other
    crypto lines dropped; other active audio streams disabled."""
    index = _first_audio_index(sdp, (*_SRTP_PROFILES, *_RTP_PROFILES))
    if index is None:
        return sdp
    m = sdp.media[index]
    profile = m.protocol.upper()
    protocol = profile if profile in _SRTP_PROFILES else "RTP/SAVPF" \
        if profile == "RTP/AVPF" else "RTP/SAVP"
    attributes = tuple(a for a in m.attributes if a[0].casefold() != "crypto")
    m = replace(m, protocol=protocol,
                attributes=(*attributes, ("crypto", srtp.format_crypto(1, key))))
    return _keep_one_audio(sdp, index, m)


def without_srtp(sdp: SessionDescription) -> SessionDescription:
    """``sdp`` as a plain RTP offer: the first active audio stream (SRTP or not) as
    ``RTP/AVP`` (AVPF for SAVPF), its crypto lines dropped; other active audio
    streams disabled (a best-effort offer's twin would be a duplicate)."""
    if not offers_srtp(sdp):
        return sdp
    index = _first_audio_index(sdp, (*_SRTP_PROFILES, *_RTP_PROFILES))
    if index is None:
        return sdp
    m = sdp.media[index]
    profile = m.protocol.upper()
    m = replace(m, protocol=_SRTP_PROFILES.get(profile, m.protocol),
                attributes=tuple(a for a in m.attributes if a[0].casefold() != "crypto"))
    return _keep_one_audio(sdp, index, m)
