"""RTP/RTCP endpoints on asyncio UDP, and the relay between two of them.

* :class:`PortAllocator` hands out RTP ports from the ``rtp_ports`` range
  (``"20000-29999"``): even numbers, RTCP on the odd port above (RFC 3550
  s11), least recently used first so a released port is not reused while
  stray packets for the previous call may still arrive.
* :class:`MediaEndpoint` is one leg's media: an RTP and an RTCP socket, the
  negotiated parameters (:class:`media.sdp.Negotiated`), symmetric RTP
  (:class:`media.rtp.Latch`: send to where the peer's packets come from),
  subscribers for received packets (raw, decoded audio, DTMF digits), an
  :class:`media.rtp.RtpSender` for the audio the engine sends (prompts, hold
  music) and the RTCP sender reports that go with it.
* :class:`Relay` joins two endpoints: "the PBX delivers audio" with both
  legs' RTP through the engine, codecs passed through untouched.

Works on the default asyncio loop and on uvloop (production). Times are
``time.monotonic()``, never ``loop.time()`` (uvloop's has 1 ms resolution).

Decisions:

* Incoming RTP is accepted with our payload type for the codec *or* the
  peer's (RFC 3264 says the sender uses the receiver's numbers, some phones
  use their own), and likewise for telephone-event. Other payload types
  (comfort noise, a codec we did not choose) are dropped and counted in
  ``latch.rejected``.
* Re-configuring after a re-INVITE keeps the latch when the SDP address and
  port are unchanged: a held phone (``recvonly``) sends nothing, so a reset
  latch would send the hold music to its private SDP address behind NAT.
  The :class:`RtpSender` (SSRC, sequence, timestamp) survives re-INVITEs; its
  payload type follows the new answer.
* The SDP ``c=`` address must be an IP literal (:class:`MediaError`
  otherwise): host names are not resolved.
* RTCP: the peer's RTCP address is the source of RTCP arriving from the
  latched RTP host, else the RTP target's port + 1 (no ``a=rtcp``, RFC 3605,
  in :class:`Negotiated`); no rtcp-mux. While the engine sends audio, a
  sender report with SDES CNAME goes out every ``rtcp_interval`` seconds
  (5 s) on average, randomised x0.5..1.5 (RFC 3550 s6.3.1) so that hundreds
  of streams started together do not report on the same tick; the first
  one after half an interval (s6.2). Received RTCP is passed to subscribers
  (the relay forwards it) and not interpreted.
* SDES-SRTP (RFC 4568, RFC 3711): when :class:`Negotiated` carries keys the
  endpoint owns an :class:`media.srtp.SrtpContext`; what arrives is
  unprotected (RTP and RTCP) before the latch sees it, so a packet that fails
  authentication never moves the latch and is dropped (``srtp_rejected``);
  what leaves (relayed bytes, the engine's own audio, sender reports) is
  protected last. Everything between (relay, players, recorders, DTMF) sees
  plain RTP, so each leg of a call is protected on its own, with its own keys,
  and a plain leg can be relayed to an SRTP one. The context is kept across a
  re-INVITE that keeps both keys (libsrtp's rollover counter and replay window
  survive); new keys make a new one.
* The audio send path builds the 12-byte header with one ``struct.pack``,
  updating the :class:`RtpSender` exactly as :meth:`RtpSender.audio` would
  (the tests check the bytes are identical): it runs 25 000 times a second
  with 500 hold-music streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import ipaddress
import random
import secrets
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog

from media.codecs import AudioCodec, CodecError, codec_for
from media.rtp import (
    TS_MOD,
    Address,
    Latch,
    RtpPacket,
    RtpSender,
    TelephoneEventReceiver,
    build_compound,
)
from media.sdp import Negotiated
from media.srtp import SrtpContext

__all__ = [
    "AudioCallback",
    "DigitCallback",
    "MediaEndpoint",
    "MediaError",
    "PortAllocator",
    "PortsExhausted",
    "Relay",
    "RtcpCallback",
    "RtpCallback",
]

log = structlog.get_logger("switchboard.media")

RtpCallback = Callable[[RtpPacket, bytes], None]
"""Called with each accepted RTP packet and its datagram bytes."""
AudioCallback = Callable[[bytes, RtpPacket], None]
"""Called with each received audio frame decoded to 16-bit PCM at the codec's rate."""
DigitCallback = Callable[[str], None]
"""Called once per RFC 4733 key press: ``0-9 * # A-D``."""
RtcpCallback = Callable[[bytes, Address], None]
"""Called with each RTCP datagram from the peer and its source."""

_RTP_HEADER = struct.Struct("!BBHII")
_RTCP_BYE = struct.Struct("!BBHI")  # V=2, one SSRC, PT 203, length 1 (RFC 3550 s6.6)
_RTCP_TYPES = range(200, 205)  # SR RR SDES BYE APP (RFC 3550 s12.1)
_BIND_ATTEMPTS = 64
_MIN_PORT = 1024
_MAX_PORT = 65535


class MediaError(RuntimeError):
    """The media layer cannot do what was asked (no port, closed endpoint, codecs differ)."""


class PortsExhausted(MediaError):
    """Every RTP port of the configured range is in use."""


# --- ports -------------------------------------------------------------------------


class PortAllocator:
    """Even RTP ports (RTCP = RTP + 1) from ``low..high`` inclusive.

    ``PortAllocator(20000, 29999)`` gives 5000 pairs: 20000/20001 ..
    29998/29999. Ports are handed out least recently released first.
    """

    def __init__(self, low: int, high: int) -> None:
        if not _MIN_PORT <= low < high <= _MAX_PORT:
            raise ValueError(f"RTP port range {low}-{high}: need "
                             f"{_MIN_PORT} <= first < last <= {_MAX_PORT}")
        first = low + (low % 2)
        if first + 1 > high:
            raise ValueError(f"RTP port range {low}-{high} holds no even/odd port pair")
        self.low = low
        self.high = high
        self._free: deque[int] = deque(range(first, high, 2))
        self._used: set[int] = set()
        self.capacity = len(self._free)

    @classmethod
    def parse(cls, text: str) -> PortAllocator:
        """From the directory's ``rtp_ports`` string, e.g. ``"20000-29999"``."""
        low, sep, high = text.strip().partition("-")
        if not sep or not low.strip().isdigit() or not high.strip().isdigit():
            raise ValueError(f"{text!r} is not a port range like '20000-29999'")
        return cls(int(low), int(high))

    @property
    def in_use(self) -> int:
        return len(self._used)

    @property
    def available(self) -> int:
        return len(self._free)

    def allocate(self) -> int:
        """An RTP port (even); its RTCP port is the next one. :class:`PortsExhausted` if none."""
        if not self._free:
            raise PortsExhausted(
                f"no free RTP port: all {self.capacity} pairs of {self.low}-{self.high} "
                "are in use (widen rtp_ports)")
        port = self._free.popleft()
        self._used.add(port)
        return port

    def release(self, port: int) -> None:
        """Give back a port from :meth:`allocate`; ``ValueError`` if it was not allocated."""
        try:
            self._used.remove(port)
        except KeyError:
            raise ValueError(f"RTP port {port} is not allocated") from None
        self._free.append(port)


# --- the endpoint ------------------------------------------------------------------


class _Socket(asyncio.DatagramProtocol):
    """Hands datagrams to the endpoint (dropped until it exists)."""

    def __init__(self, rtcp: bool) -> None:
        self.rtcp = rtcp
        self.endpoint: MediaEndpoint | None = None

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        endpoint = self.endpoint
        if endpoint is None:
            return
        source = (str(addr[0]), int(addr[1]))
        if self.rtcp:
            endpoint._rtcp_received(data, source)
        else:
            endpoint._rtp_received(data, source)

    def error_received(self, exc: Exception) -> None:
        # E.g. ICMP port unreachable from a peer that went away: count and carry on.
        if self.endpoint is not None:
            self.endpoint.send_errors += 1


_C = TypeVar("_C")


def _errno(exc: OSError) -> int | None:
    """The errno of a bind failure (uvloop puts it on ``__cause__``)."""
    if exc.errno is not None:
        return exc.errno
    cause = exc.__cause__
    return cause.errno if isinstance(cause, OSError) else None


def _same(value: _C) -> _C:
    return value


def _unsubscriber(items: list[_C], callback: _C) -> Callable[[], None]:
    def unsubscribe() -> None:
        with contextlib.suppress(ValueError):
            items.remove(callback)
    return unsubscribe


class MediaEndpoint:
    """One leg's RTP and RTCP sockets, bound on ``host`` at an allocated port pair.

    Open with :meth:`open` (or :meth:`media.session.MediaService.open_endpoint`),
    put :attr:`rtp_port` in the SDP, then :meth:`configure` with what the
    offer/answer :func:`media.sdp.negotiated`. Subscribe to what arrives with
    :meth:`on_rtp`, :meth:`on_audio`, :meth:`on_dtmf`, :meth:`on_rtcp` (each
    returns an unsubscribe function). Send with :meth:`send_frame` (the
    engine's own audio, one encoded 20 ms frame) or :meth:`send_rtp_datagram`
    (relayed bytes). :meth:`close` releases the port pair; ``on_close``
    callbacks run then (players stop, recorders finish: that is the hang-up).
    """

    def __init__(
        self,
        ports: PortAllocator,
        rtp_port: int,
        host: str,
        rtp: asyncio.DatagramTransport,
        rtcp: asyncio.DatagramTransport,
        *,
        rtcp_interval: float = 5.0,
    ) -> None:
        self._ports = ports
        self.host = host
        self.rtp_port = rtp_port
        self.rtcp_port = rtp_port + 1
        self._rtp = rtp
        self._rtcp = rtcp
        self.rtcp_interval = rtcp_interval
        self.negotiated: Negotiated | None = None
        self.latch = Latch(None, frozenset())
        self.sender: RtpSender | None = None
        self.cname = f"switchboard-{secrets.token_hex(6)}"
        self.closed = False
        self._dtmf = TelephoneEventReceiver()
        self._decoder: AudioCodec | None = None
        self._audio_pts: frozenset[int] = frozenset()
        self._event_pts: frozenset[int] = frozenset()
        self._rtp_callbacks: list[RtpCallback] = []
        self._audio_callbacks: list[AudioCallback] = []
        self._dtmf_callbacks: list[DigitCallback] = []
        self._rtcp_callbacks: list[RtcpCallback] = []
        self._close_callbacks: list[Callable[[], None]] = []
        self._rtcp_remote: Address | None = None
        self._send_to: Address | None = None  # cached latch.target when sending allowed
        self._step = 160
        self._next_report: float | None = None
        self._last_sent_at = 0.0
        self._last_sent_ts = 0
        self.srtp: SrtpContext | None = None
        self.srtp_rejected = 0
        self.packets_received = 0
        self.rtcp_received = 0
        self.reports_sent = 0
        self.send_errors = 0
        self.decode_errors = 0

    @classmethod
    async def open(
        cls, ports: PortAllocator, host: str = "0.0.0.0", *, rtcp_interval: float = 5.0
    ) -> MediaEndpoint:
        """Bind RTP and RTCP on ``host`` at the next free pair of ``ports``.

        A pair another process holds is skipped (up to 64 tries).
        :class:`PortsExhausted` when the range is used up.
        """
        loop = asyncio.get_running_loop()
        tried: list[int] = []
        try:
            for _ in range(_BIND_ATTEMPTS):
                port = ports.allocate()
                rtp_socket, rtcp_socket = _Socket(rtcp=False), _Socket(rtcp=True)
                rtp: asyncio.DatagramTransport | None = None
                try:
                    rtp, _ = await loop.create_datagram_endpoint(
                        functools.partial(_same, rtp_socket), local_addr=(host, port))
                    rtcp, _ = await loop.create_datagram_endpoint(
                        functools.partial(_same, rtcp_socket), local_addr=(host, port + 1))
                except BaseException as exc:  # OSError, or cancelled while binding
                    if rtp is not None:
                        rtp.close()
                    if not isinstance(exc, OSError) or _errno(exc) not in (
                            errno.EADDRINUSE, errno.EACCES):
                        ports.release(port)
                        raise
                    tried.append(port)
                    continue
                endpoint = cls(ports, port, host, rtp, rtcp, rtcp_interval=rtcp_interval)
                rtp_socket.endpoint = rtcp_socket.endpoint = endpoint
                return endpoint
            raise PortsExhausted(f"no bindable RTP port pair on {host} after "
                                 f"{_BIND_ATTEMPTS} tries ({tried[0]}..{tried[-1]} in use)")
        finally:
            for port in tried:  # in use elsewhere: back of the queue
                ports.release(port)

    # -- configuration --------------------------------------------------------------

    def configure(self, negotiated: Negotiated, *, expected_ssrc: int | None = None) -> None:
        """Apply an offer/answer (the first one, or a re-INVITE's).

        The latch is reset only when the remote SDP address or port changed
        (see the module notes); the sender keeps its SSRC and sequence.
        """
        if self.closed:
            raise MediaError("endpoint is closed")
        try:
            ipaddress.ip_address(negotiated.remote_address)
        except ValueError:
            raise MediaError(f"c= address {negotiated.remote_address!r} is not an IP address "
                             "(host names in SDP are not resolved)") from None
        old = self.negotiated
        if negotiated.send_key is None or negotiated.receive_key is None:
            self.srtp = None
        elif self.srtp is None or (self.srtp.send_key, self.srtp.receive_key) != (
                negotiated.send_key, negotiated.receive_key):
            self.srtp = SrtpContext(negotiated.send_key, negotiated.receive_key)
        signalled = (negotiated.remote_address, negotiated.remote_port)
        self._audio_pts = frozenset({negotiated.payload_type, negotiated.receive_payload_type})
        self._event_pts = frozenset(
            pt for pt in (negotiated.telephone_event, negotiated.receive_telephone_event)
            if pt is not None)
        accepted = self._audio_pts | self._event_pts
        if (old is None or (old.remote_address, old.remote_port) != signalled
                or expected_ssrc != self.latch.expected_ssrc):
            self.latch.reset(signalled, accepted, expected_ssrc)
            self._rtcp_remote = None
        else:
            self.latch.payload_types = accepted
        ptime = 20
        if self.sender is None or self.sender.clock_rate != negotiated.clock_rate:
            self.sender = RtpSender.create(negotiated.payload_type, negotiated.clock_rate,
                                           ptime_ms=ptime)
        else:
            self.sender.payload_type = negotiated.payload_type
        self._step = self.sender.timestamp_step
        if old is None or old.codec.casefold() != negotiated.codec.casefold():
            self._decoder = None
        self.negotiated = negotiated
        self._refresh_target()
        if self._audio_callbacks:
            self._ensure_decoder()

    @property
    def codec(self) -> str | None:
        """The negotiated codec name (``PCMU``, ``G722`` ...), ``None`` before :meth:`configure`."""
        return None if self.negotiated is None else self.negotiated.codec

    @property
    def rtp_target(self) -> Address | None:
        """Where RTP goes now: the latched source, else the SDP address."""
        return self.latch.target

    @property
    def rtcp_target(self) -> Address | None:
        """Where RTCP goes now (see the module notes)."""
        if self._rtcp_remote is not None:
            return self._rtcp_remote
        target = self.latch.target
        return None if target is None else (target[0], target[1] + 1)

    def _refresh_target(self) -> None:
        n = self.negotiated
        self._send_to = self.latch.target if n is not None and n.sends else None

    def _ensure_decoder(self) -> AudioCodec | None:
        if self._decoder is None and self.negotiated is not None:
            self._decoder = codec_for(self.negotiated.codec)
        return self._decoder

    def decoder(self) -> AudioCodec:
        """The codec decoding received audio (created on first use).

        Raises :class:`MediaError` before :meth:`configure`, and
        :class:`media.codecs.CodecError` for a codec the engine only relays (G.729).
        """
        if self.negotiated is None:
            raise MediaError("endpoint not configured: no codec negotiated yet")
        decoder = self._ensure_decoder()
        assert decoder is not None
        return decoder

    # -- subscriptions --------------------------------------------------------------

    def on_rtp(self, callback: RtpCallback) -> Callable[[], None]:
        """Every accepted RTP packet (audio and telephone-event), with its bytes."""
        self._rtp_callbacks.append(callback)
        return _unsubscriber(self._rtp_callbacks, callback)

    def on_audio(self, callback: AudioCallback) -> Callable[[], None]:
        """Each audio frame decoded (16-bit LE mono PCM at the codec's sample rate:
        8000, or 16000 for G.722). Decoding happens only while someone listens.
        Raises :class:`media.codecs.CodecError` when the codec cannot be decoded."""
        if self.negotiated is not None:
            self._ensure_decoder()
        self._audio_callbacks.append(callback)
        return _unsubscriber(self._audio_callbacks, callback)

    def on_dtmf(self, callback: DigitCallback) -> Callable[[], None]:
        """Each RFC 4733 key press, once."""
        self._dtmf_callbacks.append(callback)
        return _unsubscriber(self._dtmf_callbacks, callback)

    def on_rtcp(self, callback: RtcpCallback) -> Callable[[], None]:
        """Each RTCP datagram from the peer's host."""
        self._rtcp_callbacks.append(callback)
        return _unsubscriber(self._rtcp_callbacks, callback)

    def on_close(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Called once by :meth:`close`."""
        self._close_callbacks.append(callback)
        return _unsubscriber(self._close_callbacks, callback)

    # -- receiving ------------------------------------------------------------------

    def _rtp_received(self, data: bytes, source: Address) -> None:
        if self.closed:
            return
        srtp = self.srtp
        if srtp is not None:
            plain = srtp.unprotect(data)
            if plain is None:
                self.srtp_rejected += 1
                return
            data = plain
        was = self.latch.remote
        packet = self.latch.accept_datagram(source, data, time.monotonic())
        if packet is None:
            return
        if self.latch.remote != was:
            self._refresh_target()
            if was is not None:
                log.info("rtp relatched", port=self.rtp_port, old=was, new=self.latch.remote)
        self.packets_received += 1
        for callback in tuple(self._rtp_callbacks):
            callback(packet, data)
        pt = packet.payload_type
        if pt in self._event_pts:
            self._dtmf.payload_type = pt  # ours or the peer's number: both are accepted
            digit = self._dtmf.feed(packet)
            if digit is not None:
                for on_digit in tuple(self._dtmf_callbacks):
                    on_digit(digit)
        elif self._audio_callbacks and pt in self._audio_pts and self._decoder is not None:
            try:
                pcm = self._decoder.decode(packet.payload)
            except (CodecError, ValueError):
                self.decode_errors += 1
                return
            for on_audio in tuple(self._audio_callbacks):
                on_audio(pcm, packet)

    def _rtcp_received(self, data: bytes, source: Address) -> None:
        if self.closed or len(data) < 8 or data[0] >> 6 != 2 or data[1] not in _RTCP_TYPES:
            return
        peer = self.latch.target
        if peer is None or source[0] != peer[0]:
            return
        srtp = self.srtp
        if srtp is not None:
            plain = srtp.unprotect_rtcp(data)
            if plain is None:
                self.srtp_rejected += 1
                return
            data = plain
        self.rtcp_received += 1
        self._rtcp_remote = source
        for callback in tuple(self._rtcp_callbacks):
            callback(data, source)

    # -- sending --------------------------------------------------------------------

    @property
    def can_send(self) -> bool:
        """Configured, the direction lets us send, and there is an address to send to."""
        return self._send_to is not None and not self.closed

    def send_frame(self, payload: bytes, now: float | None = None) -> bool:
        """Send one encoded 20 ms frame of the engine's own audio.

        Sequence and timestamp follow RFC 3550 (via :attr:`sender`). When
        the negotiated direction does not let us send (the peer put us on
        hold), nothing is sent but the timestamp still advances. Sends a
        sender report when one is due. ``now`` is ``time.monotonic()``.
        Returns whether a packet went out.
        """
        sender = self.sender
        if sender is None or self.closed:
            return False
        target = self._send_to
        if target is None:
            sender.skip(1)
            return False
        marker = 0x80 if sender.talkspurt_pending else 0
        packet = _RTP_HEADER.pack(0x80, marker | sender.payload_type, sender.sequence,
                                  sender.timestamp, sender.ssrc) + payload
        if self.srtp is not None:
            packet = self.srtp.protect(packet)
        self._rtp.sendto(packet, target)
        self._last_sent_ts = sender.timestamp
        sender.sequence = (sender.sequence + 1) & 0xFFFF
        sender.timestamp = (sender.timestamp + self._step) % TS_MOD
        sender.packets_sent = (sender.packets_sent + 1) % TS_MOD
        sender.octets_sent = (sender.octets_sent + len(payload)) % TS_MOD
        sender.talkspurt_pending = False
        if now is None:
            now = time.monotonic()
        self._last_sent_at = now
        if self._next_report is None:
            self._next_report = now + self.rtcp_interval * random.uniform(0.25, 0.75)
        elif now >= self._next_report:
            self.send_sender_report(now)
            self._next_report = now + self.rtcp_interval * random.uniform(0.5, 1.5)
        return True

    def skip_frames(self, frames: int) -> None:
        """Let ``frames`` 20 ms frames pass unsent (the timestamp keeps pace)."""
        if self.sender is not None:
            self.sender.skip(frames)

    def resync(self, now: float | None = None) -> None:
        """Before the engine's audio starts again after a pause: advance the
        timestamp by the time that passed since the last packet and mark the
        next packet (RFC 3550 s5.1, RFC 3551 s4.1)."""
        sender = self.sender
        if sender is None:
            return
        if sender.packets_sent and self._last_sent_at:
            elapsed = (time.monotonic() if now is None else now) - self._last_sent_at
            frames = round(elapsed * 1000 / sender.ptime_ms) - 1
            if frames > 0:
                sender.skip(min(frames, 1 << 20))
        sender.start_talkspurt()

    def send_sender_report(self, now: float | None = None, *, bye: bool = False) -> bool:
        """Send an RTCP SR + SDES CNAME for our stream now (RFC 3550 s6.4.1),
        with a BYE (s6.6) when ``bye``. Only once we have sent RTP."""
        sender = self.sender
        target = self.rtcp_target
        if (sender is None or target is None or self.closed or not sender.packets_sent
                or self.negotiated is None or not self.negotiated.sends):
            return False
        mono = time.monotonic() if now is None else now
        ticks = round((mono - self._last_sent_at) * sender.clock_rate)
        report = sender.sender_report(time.time(), (self._last_sent_ts + ticks) % TS_MOD)
        data = build_compound(report, self.cname)
        if bye:
            data += _RTCP_BYE.pack(0x81, 203, 1, sender.ssrc)
        if self.srtp is not None:
            data = self.srtp.protect_rtcp(data)
        self._rtcp.sendto(data, target)
        self.reports_sent += 1
        return True

    def send_rtp_datagram(self, data: bytes) -> bool:
        """Send RTP bytes as they are (relay) to :attr:`rtp_target`, if sending is allowed."""
        target = self._send_to
        if target is None or self.closed:
            return False
        if self.srtp is not None:
            data = self.srtp.protect(data)
        self._rtp.sendto(data, target)
        return True

    def send_rtcp_datagram(self, data: bytes) -> bool:
        """Send RTCP bytes as they are (relay) to :attr:`rtcp_target`."""
        target = self.rtcp_target
        if target is None or self.closed or self.negotiated is None:
            return False
        if self.srtp is not None:
            data = self.srtp.protect_rtcp(data)
        self._rtcp.sendto(data, target)
        return True

    # -- closing --------------------------------------------------------------------

    def close(self) -> None:
        """Send RTCP BYE (if we sent RTP), run the ``on_close`` callbacks, close both
        sockets and release the ports. Idempotent."""
        if self.closed:
            return
        with contextlib.suppress(OSError, RuntimeError):
            self.send_sender_report(bye=True)
        self.closed = True
        callbacks = tuple(self._close_callbacks)
        self._close_callbacks.clear()
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("media on_close callback failed", port=self.rtp_port)
        self._rtp_callbacks.clear()
        self._audio_callbacks.clear()
        self._dtmf_callbacks.clear()
        self._rtcp_callbacks.clear()
        self._send_to = None
        self._rtp.close()
        self._rtcp.close()
        self._ports.release(self.rtp_port)

    def __repr__(self) -> str:
        state = "closed" if self.closed else (self.codec or "unconfigured")
        return f"<MediaEndpoint {self.host}:{self.rtp_port} {state} -> {self.rtp_target}>"


# --- relay -----------------------------------------------------------------------


@dataclass(slots=True)
class _Direction:
    source: MediaEndpoint
    target: MediaEndpoint
    key: tuple[Negotiated | None, Negotiated | None] = (None, None)
    mapping: dict[int, int] | None = None
    forwarded: int = 0
    dropped: int = 0

    def payload_map(self) -> dict[int, int] | None:
        """Received payload type -> payload type to send; None when codecs differ."""
        src, dst = self.source.negotiated, self.target.negotiated
        if (src, dst) == self.key:
            return self.mapping
        self.key = (src, dst)
        self.mapping = None if src is None or dst is None else _payload_map(src, dst)
        return self.mapping

    def rtp(self, packet: RtpPacket, data: bytes) -> None:
        mapping = self.payload_map()
        out = None if mapping is None else mapping.get(packet.payload_type)
        if out is None:
            self.dropped += 1
            return
        if out != packet.payload_type:
            data = b"".join((data[:1], bytes(((data[1] & 0x80) | out,)), data[2:]))
        if self.target.send_rtp_datagram(data):
            self.forwarded += 1
        else:
            self.dropped += 1

    def rtcp(self, data: bytes, source: Address) -> None:
        if self.target.negotiated is not None and self.target.negotiated.sends:
            self.target.send_rtcp_datagram(data)


def _payload_map(src: Negotiated, dst: Negotiated) -> dict[int, int] | None:
    if src.codec.casefold() != dst.codec.casefold() or src.clock_rate != dst.clock_rate:
        return None
    mapping = {src.receive_payload_type: dst.payload_type, src.payload_type: dst.payload_type}
    if dst.telephone_event is not None:
        for pt in (src.receive_telephone_event, src.telephone_event):
            if pt is not None:
                mapping[pt] = dst.telephone_event
    return mapping


class Relay:
    """Both legs' RTP (and RTCP) through the engine, codecs passed through untouched.

    A packet accepted by one endpoint (after its latch) is sent to the other
    endpoint's peer (latched source, else SDP address) as the same bytes:
    payload, SSRC, sequence number, timestamp and marker unchanged. Only when
    the two legs numbered the payload type differently (telephone-event 101
    on one, 96 on the other) is the 7-bit PT rewritten; a telephone-event
    packet for a leg that did not negotiate telephone-event is dropped. Both
    legs must have negotiated the same codec (:class:`MediaError` otherwise:
    the relay does not transcode). A leg whose direction does not let us send
    to it (on hold) gets nothing. Silence on one side does not matter: the
    other side's packets go to the SDP address until the silent side sends.

    The relay reads each endpoint's current :attr:`MediaEndpoint.negotiated`,
    so a re-INVITE needs no new relay. :meth:`close` detaches it: do so
    before playing hold music on one of its endpoints, or the phone would get
    both streams.
    """

    def __init__(self, a: MediaEndpoint, b: MediaEndpoint) -> None:
        if a is b:
            raise ValueError("cannot relay an endpoint to itself")
        if a.closed or b.closed:
            raise MediaError("cannot relay a closed endpoint")
        if a.negotiated is not None and b.negotiated is not None and (
                _payload_map(a.negotiated, b.negotiated) is None):
            raise MediaError(f"relay needs one codec on both legs, got {a.negotiated.codec} "
                             f"and {b.negotiated.codec} (the engine does not transcode calls)")
        self.a = a
        self.b = b
        self._ab = _Direction(a, b)
        self._ba = _Direction(b, a)
        self.closed = False
        self._unsubscribe = [
            a.on_rtp(self._ab.rtp), a.on_rtcp(self._ab.rtcp),
            b.on_rtp(self._ba.rtp), b.on_rtcp(self._ba.rtcp),
            a.on_close(self.close), b.on_close(self.close),
        ]

    @property
    def forwarded(self) -> tuple[int, int]:
        """RTP packets forwarded (a -> b, b -> a)."""
        return self._ab.forwarded, self._ba.forwarded

    @property
    def dropped(self) -> tuple[int, int]:
        """RTP packets not forwarded (a -> b, b -> a): codec mismatch, hold, no address."""
        return self._ab.dropped, self._ba.dropped

    def close(self) -> None:
        """Stop relaying (the endpoints stay open). Idempotent."""
        if self.closed:
            return
        self.closed = True
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()
