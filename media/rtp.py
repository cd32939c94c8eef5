"""RTP and RTCP on the wire, telephone events, pacing and latching; sans-I/O.

Nothing here opens a socket or reads a clock: times are arguments (seconds
from a monotonic clock for :class:`Pacer` and :class:`Latch`, Unix wall-clock
seconds for RTCP's NTP timestamps), randomness can be injected.

* :class:`RtpPacket`: the fixed header, CSRC list, header extension and
  padding of RFC 3550 s5.1 / s5.3.1; parse errors are :class:`RtpError`.
* :class:`RtpSender`: one outgoing stream (RFC 3550 s5.1, RFC 3551 s4.1).
* :class:`Pacer`: when each 20 ms packet is due.
* RFC 4733 telephone events: :class:`TelephoneEvent` (the payload),
  :func:`dtmf_packets` (a sender's packets for one digit) and
  :class:`TelephoneEventReceiver` (packets back into digits).
* :class:`SenderReport`: RTCP SR (RFC 3550 s6.4.1), plus SDES CNAME (s6.5.1)
  to make a valid compound packet (s6.1).
* :class:`Latch`: symmetric RTP behind NAT (RFC 4961).
"""

from __future__ import annotations

import math
import random
import secrets
import struct
from collections import deque
from dataclasses import dataclass, field

RTP_VERSION = 2
RTP_HEADER_SIZE = 12
SEQ_MOD = 1 << 16
TS_MOD = 1 << 32
MAX_CSRCS = 15

Address = tuple[str, int]
"""A transport address: (host, port)."""


class RtpError(ValueError):
    """Malformed RTP/RTCP data or an out-of-range field."""


def _check_uint(name: str, value: int, bits: int) -> None:
    if not 0 <= value < (1 << bits):
        raise RtpError(f"{name} must fit in {bits} bits (0..{(1 << bits) - 1}), got {value}")


# --- RTP packets (RFC 3550 s5.1) -------------------------------------------------


@dataclass(frozen=True, slots=True)
class RtpExtension:
    """A header extension (RFC 3550 s5.3.1): 16 profile-defined bits and 32-bit words."""

    profile: int
    data: bytes = b""

    def __post_init__(self) -> None:
        _check_uint("extension profile field", self.profile, 16)
        if len(self.data) % 4:
            raise RtpError(f"extension data must be whole 32-bit words, got {len(self.data)} bytes")
        _check_uint("extension length (words)", len(self.data) // 4, 16)


@dataclass(frozen=True, slots=True)
class RtpPacket:
    """One RTP data packet (RFC 3550 s5.1). Field ranges are checked on creation.

    ``padding`` is the number of padding octets at the end (including the
    count octet itself); 0 means the P bit is clear.
    """

    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes = b""
    marker: bool = False
    csrcs: tuple[int, ...] = ()
    extension: RtpExtension | None = None
    padding: int = 0

    def __post_init__(self) -> None:
        _check_uint("payload type", self.payload_type, 7)
        _check_uint("sequence number", self.sequence, 16)
        _check_uint("timestamp", self.timestamp, 32)
        _check_uint("SSRC", self.ssrc, 32)
        if len(self.csrcs) > MAX_CSRCS:
            raise RtpError(f"at most {MAX_CSRCS} CSRCs, got {len(self.csrcs)}")
        for csrc in self.csrcs:
            _check_uint("CSRC", csrc, 32)
        _check_uint("padding", self.padding, 8)

    def build(self) -> bytes:
        """The packet's bytes."""
        first = (
            (RTP_VERSION << 6)
            | (0x20 if self.padding else 0)
            | (0x10 if self.extension is not None else 0)
            | len(self.csrcs)
        )
        second = (0x80 if self.marker else 0) | self.payload_type
        parts = [
            struct.pack("!BBHII", first, second, self.sequence, self.timestamp, self.ssrc),
            struct.pack(f"!{len(self.csrcs)}I", *self.csrcs),
        ]
        if self.extension is not None:
            ext = self.extension
            parts.append(struct.pack("!HH", ext.profile, len(ext.data) // 4) + ext.data)
        parts.append(self.payload)
        if self.padding:
            parts.append(bytes(self.padding - 1) + bytes((self.padding,)))
        return b"".join(parts)

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        """Parse one RTP packet; anything malformed raises :class:`RtpError`."""
        data = bytes(data)
        if len(data) < RTP_HEADER_SIZE:
            raise RtpError(f"RTP packet too short: {len(data)} bytes, the header alone is 12")
        first, second, seq, ts, ssrc = struct.unpack_from("!BBHII", data)
        version = first >> 6
        if version != RTP_VERSION:
            raise RtpError(f"RTP version must be 2, got {version}")
        end = len(data)
        padding = 0
        if first & 0x20:
            padding = data[-1]
            if padding == 0:
                raise RtpError("RTP padding bit set but the padding count is 0")
            end -= padding
            if end < RTP_HEADER_SIZE:
                raise RtpError(f"RTP padding count {padding} overruns the packet")
        pos = RTP_HEADER_SIZE
        cc = first & 0x0F
        if pos + 4 * cc > end:
            raise RtpError(f"RTP packet too short for its {cc} CSRCs")
        csrcs = struct.unpack_from(f"!{cc}I", data, pos)
        pos += 4 * cc
        extension = None
        if first & 0x10:
            if pos + 4 > end:
                raise RtpError("RTP packet too short for its header extension")
            profile, words = struct.unpack_from("!HH", data, pos)
            pos += 4
            if pos + 4 * words > end:
                raise RtpError(f"RTP header extension of {words} words overruns the packet")
            extension = RtpExtension(profile, data[pos : pos + 4 * words])
            pos += 4 * words
        if pos > end:
            raise RtpError(f"RTP padding count {padding} overruns the payload")
        return cls(
            payload_type=second & 0x7F,
            sequence=seq,
            timestamp=ts,
            ssrc=ssrc,
            payload=data[pos:end],
            marker=bool(second & 0x80),
            csrcs=tuple(csrcs),
            extension=extension,
            padding=padding,
        )


def seq_distance(a: int, b: int) -> int:
    """Signed distance from sequence number ``a`` to ``b`` modulo 2^16 (-32768..32767)."""
    return (b - a + SEQ_MOD // 2) % SEQ_MOD - SEQ_MOD // 2


# --- sending ----------------------------------------------------------------------


def _random_bits(rng: random.Random | None, bits: int) -> int:
    return rng.getrandbits(bits) if rng is not None else secrets.randbits(bits)


@dataclass(slots=True)
class RtpSender:
    """The state of one outgoing RTP stream.

    RFC 3550 s5.1: the initial sequence number and timestamp are random, and
    so is the SSRC (s8.1); the sequence number grows by one per packet sent,
    modulo 2^16. The timestamp grows by the frame's samples (``clock_rate x
    ptime``) per frame, modulo 2^32, whether or not the frame is sent. RFC 3551
    s4.1: the marker bit is set on the first packet of a talkspurt, i.e. the
    very first packet and the first one after frames were not sent.

    ``packets_sent`` and ``octets_sent`` (payload octets only) feed the RTCP
    sender report (RFC 3550 s6.4.1).
    """

    payload_type: int
    clock_rate: int
    ssrc: int
    sequence: int
    """The sequence number of the next packet."""
    timestamp: int
    """The RTP timestamp of the next frame."""
    ptime_ms: int = 20
    packets_sent: int = 0
    octets_sent: int = 0
    talkspurt_pending: bool = True
    """The next audio packet starts a talkspurt and gets the marker bit."""

    def __post_init__(self) -> None:
        _check_uint("payload type", self.payload_type, 7)
        _check_uint("SSRC", self.ssrc, 32)
        _check_uint("sequence number", self.sequence, 16)
        _check_uint("timestamp", self.timestamp, 32)
        if self.clock_rate <= 0 or self.ptime_ms <= 0:
            raise RtpError("clock rate and ptime must be positive")
        if self.clock_rate * self.ptime_ms % 1000:
            raise RtpError(
                f"{self.ptime_ms} ms is not a whole number of {self.clock_rate} Hz ticks"
            )

    @classmethod
    def create(
        cls,
        payload_type: int,
        clock_rate: int,
        *,
        ptime_ms: int = 20,
        rng: random.Random | None = None,
    ) -> RtpSender:
        """A new stream with random SSRC, sequence and timestamp (``secrets`` unless ``rng``)."""
        return cls(
            payload_type=payload_type,
            clock_rate=clock_rate,
            ssrc=_random_bits(rng, 32),
            sequence=_random_bits(rng, 16),
            timestamp=_random_bits(rng, 32),
            ptime_ms=ptime_ms,
        )

    @property
    def timestamp_step(self) -> int:
        """RTP ticks per frame: 160 for 20 ms at 8000 Hz (also G.722's clock)."""
        return self.clock_rate * self.ptime_ms // 1000

    def emit(self, payload_type: int, payload: bytes, timestamp: int, marker: bool) -> RtpPacket:
        """A packet of this stream with explicit type, timestamp and marker.

        For payloads that share the stream's SSRC and sequence space but not its
        frame clock (RFC 4733 events). Sequence number and counts advance; the
        stream's timestamp does not.
        """
        packet = RtpPacket(payload_type, self.sequence, timestamp, self.ssrc, payload, marker)
        self.sequence = (self.sequence + 1) % SEQ_MOD
        self.packets_sent = (self.packets_sent + 1) % TS_MOD
        self.octets_sent = (self.octets_sent + len(payload)) % TS_MOD
        return packet

    def audio(self, payload: bytes) -> RtpPacket:
        """The packet carrying the next frame; advances sequence and timestamp."""
        packet = self.emit(self.payload_type, payload, self.timestamp, self.talkspurt_pending)
        self.talkspurt_pending = False
        self.timestamp = (self.timestamp + self.timestamp_step) % TS_MOD
        return packet

    def skip(self, frames: int = 1) -> None:
        """Let ``frames`` frames pass unsent (silence, or the pacer skipped ahead).

        The timestamp keeps pace with the media clock; the sequence number does
        not move (it counts packets); the next audio packet starts a talkspurt.
        """
        if frames < 0:
            raise ValueError(f"cannot skip a negative number of frames ({frames})")
        if frames:
            self.timestamp = (self.timestamp + frames * self.timestamp_step) % TS_MOD
            self.talkspurt_pending = True

    def start_talkspurt(self) -> None:
        """Mark the next audio packet (e.g. after a hold, or a new source)."""
        self.talkspurt_pending = True

    def sender_report(self, wall_time: float, rtp_timestamp: int | None = None) -> SenderReport:
        """An RTCP SR for this stream at Unix time ``wall_time``.

        ``rtp_timestamp`` is the media time corresponding to ``wall_time``;
        by default the timestamp of the next frame, right when the sender is
        paced (the frame about to be sent is due now).
        """
        return SenderReport.at(
            self.ssrc,
            wall_time,
            self.timestamp if rtp_timestamp is None else rtp_timestamp,
            self.packets_sent,
            self.octets_sent,
        )


# --- pacing -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tick:
    """What :meth:`Pacer.poll` says to send now."""

    index: int
    """The frame to send now (0 = the first frame)."""
    due: float
    skipped: int
    """Frames dropped just before this one because the sender fell too far behind."""


@dataclass(slots=True)
class Pacer:
    """When each packet of a stream is due, from one start time.

    Frame ``n`` is due at ``start + n * ptime`` computed from ``n`` each time,
    never by adding ptime to the previous deadline, so rounding and late
    wake-ups never accumulate into drift. A sender that falls behind sends
    the overdue frames at once to catch up, unless it is more than
    ``max_behind`` frames late: then it skips straight to the frame due now and
    reports how many it skipped (advance :class:`RtpSender` timestamps with
    :meth:`RtpSender.skip` so the receiver's clock stays right).
    """

    start: float
    ptime_ms: int = 20
    max_behind: int = 5
    next_index: int = 0
    skipped_total: int = 0

    def __post_init__(self) -> None:
        if self.ptime_ms <= 0:
            raise ValueError(f"ptime must be positive, got {self.ptime_ms} ms")
        if self.max_behind < 0:
            raise ValueError(f"max_behind must not be negative, got {self.max_behind}")

    def due(self, n: int) -> float:
        """When frame ``n`` is due (``n * ptime_ms / 1000`` is exact for whole seconds)."""
        return self.start + n * self.ptime_ms / 1000

    @property
    def next_due(self) -> float:
        """When the next frame is due: sleep until then."""
        return self.due(self.next_index)

    def _latest_due(self, now: float) -> int:
        k = math.floor((now - self.start) * 1000 / self.ptime_ms)
        while self.due(k + 1) <= now:
            k += 1
        while k >= 0 and self.due(k) > now:
            k -= 1
        return k

    def poll(self, now: float) -> Tick | None:
        """The frame to send at ``now``, or None when the next one is not due yet.

        Call again after each send until it returns None, then sleep until
        :attr:`next_due`.
        """
        if now < self.next_due:
            return None
        latest = self._latest_due(now)
        behind = latest - self.next_index
        skipped = behind if behind > self.max_behind else 0
        index = self.next_index + skipped
        self.next_index = index + 1
        self.skipped_total += skipped
        return Tick(index, self.due(index), skipped)


# --- RFC 4733 telephone events ----------------------------------------------------

DTMF_DIGITS = "0123456789*#ABCD"
"""RFC 4733 s3.2 (table 7): events 0-15 are these DTMF keys, in order."""

DEFAULT_EVENT_PAYLOAD_TYPE = 101
"""The customary dynamic payload type for telephone-event/8000."""


def event_for_digit(digit: str) -> int:
    """The RFC 4733 event code of a DTMF key: 0-9, ``*``, ``#``, A-D (case-insensitive)."""
    key = digit.upper()
    if len(key) != 1 or key not in DTMF_DIGITS:
        raise ValueError(f"not a DTMF key: {digit!r} (0-9, *, #, A-D)")
    return DTMF_DIGITS.index(key)


def digit_for_event(event: int) -> str | None:
    """The DTMF key of an event code, None for non-DTMF events (flash, tones)."""
    return DTMF_DIGITS[event] if 0 <= event < len(DTMF_DIGITS) else None


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """The telephone-event payload (RFC 4733 s2.3).

    ``volume`` is the power level in -dBm0 (0..63, larger is quieter);
    ``duration`` is in RTP clock ticks since the event began (s2.3.5).
    The reserved R bit is sent as 0 and ignored on receipt (s2.3.3).
    """

    event: int
    end: bool = False
    volume: int = 10
    duration: int = 0

    def __post_init__(self) -> None:
        _check_uint("event", self.event, 8)
        _check_uint("volume", self.volume, 6)
        _check_uint("duration", self.duration, 16)

    @property
    def digit(self) -> str | None:
        return digit_for_event(self.event)

    def encode(self) -> bytes:
        return struct.pack(
            "!BBH", self.event, (0x80 if self.end else 0) | self.volume, self.duration
        )

    @classmethod
    def decode(cls, payload: bytes) -> TelephoneEvent:
        """The first event block of ``payload``; :class:`RtpError` if shorter than 4 bytes."""
        if len(payload) < 4:
            raise RtpError(f"telephone-event payload must be 4 bytes, got {len(payload)}")
        event, flags, duration = struct.unpack_from("!BBH", payload)
        return cls(event, bool(flags & 0x80), flags & 0x3F, duration)


def dtmf_packets(
    sender: RtpSender,
    digit: str,
    *,
    duration_ms: int = 100,
    payload_type: int = DEFAULT_EVENT_PAYLOAD_TYPE,
    volume: int = 10,
    end_repeats: int = 3,
) -> list[RtpPacket]:
    """The packets announcing one key press, one per frame, to send at successive ticks.

    RFC 4733 s2.5.1: every packet of the event carries the timestamp of the
    event's start (s2.5.1.1) and the marker bit is set on the first one only;
    each update (one per ptime) carries the duration so far; the final
    packet has the E bit and the full duration and is sent ``end_repeats``
    (three) times in all (s2.5.1.4), each with its own sequence number.
    Packets come from ``sender`` (same SSRC and sequence space as the audio);
    its timestamp advances one frame per packet as the media clock runs, and
    the next audio packet starts a talkspurt.
    """
    event = event_for_digit(digit)
    if sender.clock_rate != 8000:
        raise RtpError(f"telephone-event/8000 needs an 8000 Hz stream, got {sender.clock_rate}")
    if end_repeats < 1:
        raise ValueError(f"end_repeats must be at least 1, got {end_repeats}")
    total = duration_ms * sender.clock_rate // 1000
    if not 0 < total <= 0xFFFF:
        raise ValueError(f"DTMF duration must be 1..8191 ms, got {duration_ms} ms")
    step = sender.timestamp_step
    start = sender.timestamp
    updates = [(min((i + 1) * step, total), False) for i in range(math.ceil(total / step) - 1)]
    updates += [(total, True)] * end_repeats
    packets: list[RtpPacket] = []
    for i, (duration, end) in enumerate(updates):
        payload = TelephoneEvent(event, end, volume, duration).encode()
        packets.append(sender.emit(payload_type, payload, start, marker=i == 0))
        sender.skip(1)
    return packets


@dataclass(slots=True)
class TelephoneEventReceiver:
    """Turns received telephone-event packets into key presses, each reported once.

    An event is identified by its SSRC and RTP timestamp (RFC 4733 s2.5.2.1:
    all packets of one event share the start timestamp), so the updates and the
    three end packets of one press yield one digit, reported by the first
    packet seen, whether or not it is the marked start packet (the start may
    be lost) and whether or not it is an end packet. The last ``memory`` events
    are remembered so late or reordered duplicates stay silent. Two presses
    of the same key have different timestamps and give two digits. A single
    event longer than 8 s is split into segments (s2.5.1.3) and would count
    twice; key presses are far shorter.
    """

    payload_type: int = DEFAULT_EVENT_PAYLOAD_TYPE
    memory: int = 32
    malformed: int = 0
    _seen: deque[tuple[int, int, int]] = field(default_factory=deque, repr=False)

    def feed(self, packet: RtpPacket) -> str | None:
        """The digit this packet announces, or None (other payload, duplicate, not DTMF)."""
        if packet.payload_type != self.payload_type:
            return None
        try:
            event = TelephoneEvent.decode(packet.payload)
        except RtpError:
            self.malformed += 1
            return None
        key = (packet.ssrc, packet.timestamp, event.event)
        if key in self._seen:
            return None
        self._seen.append(key)
        while len(self._seen) > self.memory:
            self._seen.popleft()
        return event.digit


# --- RTCP sender report (RFC 3550 s6.4.1) --------------------------------------------

RTCP_SR = 200
RTCP_SDES = 202
NTP_UNIX_OFFSET = 2_208_988_800
"""Seconds from the NTP epoch (1900-01-01) to the Unix epoch (1970-01-01)."""


def ntp_timestamp(wall_time: float) -> int:
    """Unix time in seconds -> 64-bit NTP timestamp, 32.32 fixed point (RFC 3550 s4)."""
    seconds = math.floor(wall_time)
    fraction = int((wall_time - seconds) * (1 << 32))
    return (((seconds + NTP_UNIX_OFFSET) % TS_MOD) << 32) | min(fraction, (1 << 32) - 1)


def ntp_to_unix(ntp: int) -> float:
    """The inverse of :func:`ntp_timestamp` (for the era 1968-2036)."""
    return (ntp >> 32) - NTP_UNIX_OFFSET + (ntp & 0xFFFFFFFF) / (1 << 32)


@dataclass(frozen=True, slots=True)
class ReportBlock:
    """One reception report block (RFC 3550 s6.4.1), 24 bytes."""

    ssrc: int
    fraction_lost: int
    """Fixed point, lost/expected x 256, since the previous report."""
    cumulative_lost: int
    """Signed 24 bits (duplicates can make it negative)."""
    highest_sequence: int
    """Extended: cycles << 16 | highest sequence number received."""
    jitter: int
    last_sr: int
    """Middle 32 bits of the last SR's NTP timestamp (LSR), 0 if none."""
    delay_since_last_sr: int
    """DLSR, in units of 1/65536 s."""

    def __post_init__(self) -> None:
        _check_uint("SSRC", self.ssrc, 32)
        _check_uint("fraction lost", self.fraction_lost, 8)
        if not -(1 << 23) <= self.cumulative_lost < (1 << 23):
            raise RtpError(
                f"cumulative lost must fit in signed 24 bits, got {self.cumulative_lost}"
            )
        for name in ("highest_sequence", "jitter", "last_sr", "delay_since_last_sr"):
            _check_uint(name, getattr(self, name), 32)

    def build(self) -> bytes:
        lost = self.cumulative_lost & 0xFFFFFF
        return struct.pack(
            "!IIIIII",
            self.ssrc,
            (self.fraction_lost << 24) | lost,
            self.highest_sequence,
            self.jitter,
            self.last_sr,
            self.delay_since_last_sr,
        )

    @classmethod
    def parse(cls, data: bytes) -> ReportBlock:
        ssrc, lost_word, highest, jitter, lsr, dlsr = struct.unpack_from("!IIIIII", data)
        lost = lost_word & 0xFFFFFF
        if lost & 0x800000:
            lost -= 1 << 24
        return cls(ssrc, lost_word >> 24, lost, highest, jitter, lsr, dlsr)


@dataclass(frozen=True, slots=True)
class SenderReport:
    """An RTCP SR packet (RFC 3550 s6.4.1): 28 bytes plus 24 per report block.

    ``packet_count`` counts RTP data packets sent and ``octet_count`` their
    payload octets (no headers, no padding), both since the stream began,
    modulo 2^32.
    """

    ssrc: int
    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: tuple[ReportBlock, ...] = ()

    def __post_init__(self) -> None:
        _check_uint("SSRC", self.ssrc, 32)
        _check_uint("NTP timestamp", self.ntp_timestamp, 64)
        _check_uint("RTP timestamp", self.rtp_timestamp, 32)
        _check_uint("packet count", self.packet_count, 32)
        _check_uint("octet count", self.octet_count, 32)
        if len(self.reports) > 31:
            raise RtpError(f"at most 31 report blocks, got {len(self.reports)}")

    @classmethod
    def at(
        cls,
        ssrc: int,
        wall_time: float,
        rtp_timestamp: int,
        packet_count: int,
        octet_count: int,
        reports: tuple[ReportBlock, ...] = (),
    ) -> SenderReport:
        """A report stamped with Unix wall-clock time ``wall_time``."""
        return cls(
            ssrc, ntp_timestamp(wall_time), rtp_timestamp, packet_count, octet_count, reports
        )

    @property
    def compact_ntp(self) -> int:
        """The middle 32 bits of the NTP timestamp: what receivers echo as LSR."""
        return (self.ntp_timestamp >> 16) & 0xFFFFFFFF

    def build(self) -> bytes:
        length_words = (28 + 24 * len(self.reports)) // 4 - 1
        header = struct.pack(
            "!BBHIIIIII",
            (RTP_VERSION << 6) | len(self.reports),
            RTCP_SR,
            length_words,
            self.ssrc,
            self.ntp_timestamp >> 32,
            self.ntp_timestamp & 0xFFFFFFFF,
            self.rtp_timestamp,
            self.packet_count,
            self.octet_count,
        )
        return header + b"".join(block.build() for block in self.reports)

    @classmethod
    def parse(cls, data: bytes) -> SenderReport:
        """Parse an SR at the start of ``data`` (the first packet of a compound)."""
        if len(data) < 28:
            raise RtpError(f"RTCP SR too short: {len(data)} bytes, at least 28")
        first, pt, length = struct.unpack_from("!BBH", data)
        if first >> 6 != RTP_VERSION:
            raise RtpError(f"RTCP version must be 2, got {first >> 6}")
        if pt != RTCP_SR:
            raise RtpError(f"not an RTCP sender report: packet type {pt}")
        count = first & 0x1F
        if 4 * (length + 1) < 28 + 24 * count or len(data) < 28 + 24 * count:
            raise RtpError(f"RTCP SR too short for its {count} report blocks")
        ssrc, ntp_hi, ntp_lo, rtp_ts, packets, octets = struct.unpack_from("!IIIIII", data, 4)
        reports = tuple(ReportBlock.parse(data[28 + 24 * i : 52 + 24 * i]) for i in range(count))
        return cls(ssrc, (ntp_hi << 32) | ntp_lo, rtp_ts, packets, octets, reports)


def build_sdes_cname(ssrc: int, cname: str) -> bytes:
    """An RTCP SDES packet with one chunk holding a CNAME item (RFC 3550 s6.5, s6.5.1)."""
    _check_uint("SSRC", ssrc, 32)
    text = cname.encode("utf-8")
    if not 0 < len(text) <= 255:
        raise RtpError(f"CNAME must be 1..255 bytes of UTF-8, got {len(text)}")
    chunk = struct.pack("!IBB", ssrc, 1, len(text)) + text + b"\x00"  # CNAME, then END
    chunk += bytes(-len(chunk) % 4)  # null octets to the next 32-bit boundary
    header = struct.pack("!BBH", (RTP_VERSION << 6) | 1, RTCP_SDES, (4 + len(chunk)) // 4 - 1)
    return header + chunk


def build_compound(report: SenderReport, cname: str) -> bytes:
    """The SR followed by SDES CNAME: the minimal valid compound RTCP packet (s6.1)."""
    return report.build() + build_sdes_cname(report.ssrc, cname)


# --- symmetric RTP latching (RFC 4961) ---------------------------------------------


@dataclass(slots=True)
class Latch:
    """Where to send a leg's RTP: the address its RTP actually comes from.

    Phones behind NAT announce a private address in SDP; the packets arrive
    from the NAT's public mapping. Symmetric RTP (RFC 4961) means the peer
    receives on the address it sends from, so the engine sends to the source
    of what it receives. Until a packet arrives it sends to the ``signalled``
    (SDP) address.

    Latching: the first valid RTP packet whose payload type is one of
    ``payload_types`` (and whose SSRC is ``expected_ssrc``, when SDP gave one
    with a=ssrc) fixes the remote address and SSRC.

    Against hijacking: once latched, packets from any other address are
    dropped, so a stranger spraying RTP at the port cannot steal the stream
    while the peer is talking. Only when the latched peer has been silent for
    ``relatch_after`` seconds (default 2 s) may a valid packet from a new address
    re-latch: that is how a phone whose NAT mapping changed mid-call gets its
    audio back, after at most that gap. A peer that stops sending (hold) opens
    the same window; a new offer/answer calls :meth:`reset`.
    """

    signalled: Address | None
    payload_types: frozenset[int]
    expected_ssrc: int | None = None
    relatch_after: float = 2.0
    remote: Address | None = None
    ssrc: int | None = None
    last_heard: float | None = None
    relatches: int = 0
    rejected: int = 0

    @property
    def latched(self) -> bool:
        return self.remote is not None

    @property
    def target(self) -> Address | None:
        """Where to send RTP now."""
        return self.remote if self.remote is not None else self.signalled

    def reset(
        self,
        signalled: Address | None,
        payload_types: frozenset[int],
        expected_ssrc: int | None = None,
    ) -> None:
        """New SDP (re-INVITE): forget the latch and wait for the first packet again."""
        self.signalled = signalled
        self.payload_types = payload_types
        self.expected_ssrc = expected_ssrc
        self.remote = self.ssrc = self.last_heard = None

    def _acceptable(self, packet: RtpPacket) -> bool:
        if packet.payload_type not in self.payload_types:
            return False
        return self.expected_ssrc is None or packet.ssrc == self.expected_ssrc

    def accept(self, source: Address, packet: RtpPacket, now: float) -> bool:
        """Whether to take ``packet`` from ``source`` at monotonic time ``now`` (may latch)."""
        if not self._acceptable(packet):
            self.rejected += 1
            return False
        if self.remote is None or self.last_heard is None:
            self.remote, self.ssrc, self.last_heard = source, packet.ssrc, now
            return True
        if source == self.remote:
            self.ssrc, self.last_heard = packet.ssrc, now
            return True
        if now - self.last_heard >= self.relatch_after:
            self.remote, self.ssrc, self.last_heard = source, packet.ssrc, now
            self.relatches += 1
            return True
        self.rejected += 1
        return False

    def accept_datagram(self, source: Address, data: bytes, now: float) -> RtpPacket | None:
        """Parse and :meth:`accept` a received datagram; None when it is dropped."""
        try:
            packet = RtpPacket.parse(data)
        except RtpError:
            self.rejected += 1
            return None
        return packet if self.accept(source, packet, now) else None
