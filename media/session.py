"""What the engine does with media: play, record, relay; one shared pacing clock.

:class:`MediaService` is the media layer's front door. It owns the RTP port
range (:class:`media.endpoint.PortAllocator`), one :class:`PacingScheduler`
and one :class:`FrameCache`, and opens :class:`media.endpoint.MediaEndpoint`
objects. On an endpoint:

* :meth:`MediaService.play` starts a :class:`Player`: a playlist (WAV paths,
  :class:`media.wav.Audio`, or :class:`Pcm` such as :func:`media.tones.beep`),
  played in order, looped (hold music) or once (greeting + beep, then
  ``on_done``), in the negotiated codec. :meth:`Player.stop` on resume.
* :meth:`MediaService.record` starts a :class:`Recorder`: received audio to a
  WAV file (8 kHz, 16-bit, mono) until hang-up (the endpoint is closed, or
  :meth:`Recorder.stop`), a stop digit (``#``), silence, or the maximum length;
  :meth:`Recorder.wait` gives the :class:`Recording`.
* :meth:`MediaService.relay` joins two endpoints (:class:`media.endpoint.Relay`).

Voicemail, for instance::

    ep = await media.open_endpoint()          # ep.rtp_port goes in our SDP
    ep.configure(sdp.negotiated(offer, answer))
    greeting = await media.play(ep, [greeting_wav, Pcm(tones.beep())])
    if await greeting.wait():                 # True: played to the end
        recording = await media.record(ep, path, max_seconds=120).wait()
    ...
    ep.close()                                # BYE: a running recorder finishes as "hangup"

Design for many streams per process (the hold-music benchmark):

* One :class:`PacingScheduler` serves every playing stream from a single
  ``call_later`` chain. Each stream has its own :class:`media.rtp.Pacer`
  (drift-free: frame *n* is due at ``start + n x 20 ms``), and every pacer
  starts on the scheduler's 20 ms grid, so all streams fall due on the same
  tick: one wake-up every 20 ms sends one packet per stream. A late tick
  sends the overdue frames at once (the pacer catches up), more than five
  frames late it skips ahead and the RTP timestamps jump accordingly. A
  frame is sent when due within 2 ms (timers may fire a little early).
* Audio is encoded once per (clip, codec) and cached (:class:`FrameCache`,
  LRU, bounded in bytes); loading, resampling and encoding run in a worker
  thread. A tick is a 12-byte ``struct.pack`` and a ``sendto`` per stream.
  G.722 is adaptive: each clip is encoded after the last 0.5 s of the clip
  played before it (from the second loop on, item 0 after the last item), so
  the phone's decoder, which heard that audio, does not burst at the seams.
* We always send 20 ms frames (:data:`media.codecs.FRAME_MS`), whatever
  ``a=ptime`` the peer asked for (RFC 3551 s4.5: 20 ms is the default
  every G.711/G.722 phone takes).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import structlog

from media.codecs import FRAME_MS, codec_for, resample
from media.endpoint import MediaEndpoint, MediaError, PortAllocator, Relay
from media.rtp import Pacer, RtpPacket
from media.wav import load_wav, write_wav

__all__ = [
    "RECORDING_RATE",
    "Clip",
    "FrameCache",
    "MediaService",
    "PacedStream",
    "PacingScheduler",
    "Pcm",
    "Player",
    "Recorder",
    "Recording",
    "Sound",
    "StopReason",
    "encode_clip",
]

log = structlog.get_logger("switchboard.media")

RECORDING_RATE = 8000
"""Voicemail is written as 8 kHz, 16-bit, mono WAV."""


# --- the shared pacing loop ------------------------------------------------------------


class PacedStream(Protocol):
    """Something the scheduler calls once per due 20 ms frame."""

    def frame_due(self, skipped: int, now: float) -> bool:
        """Send the frame due now (``skipped`` frames were dropped before it:
        advance the RTP timestamp). ``now`` is ``time.monotonic()``.
        Return False to leave the scheduler."""
        ...


class PacingScheduler:
    """One timer chain for every outgoing stream of the process (see the module notes).

    ``early`` is how far ahead of its due time a frame may go (timers may
    wake a little early: uvloop's have millisecond resolution).
    ``lateness`` keeps the worst delay of a tick behind its target, for
    monitoring.
    """

    def __init__(
        self,
        *,
        ptime_ms: int = FRAME_MS,
        early: float = 0.002,
        max_behind: int = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ptime_ms = ptime_ms
        self.early = early
        self.max_behind = max_behind
        self._clock = clock
        self._origin = clock()
        self._streams: dict[PacedStream, Pacer] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._armed_for = math.inf
        self.ticks = 0
        self.lateness = 0.0
        self.skipped = 0

    def __len__(self) -> int:
        return len(self._streams)

    def __contains__(self, stream: object) -> bool:
        return stream in self._streams

    def _grid_after(self, now: float) -> float:
        step = self.ptime_ms / 1000
        k = math.ceil((now - self._origin) / step - 1e-9)
        return self._origin + k * step

    def add(self, stream: PacedStream) -> None:
        """Start pacing ``stream``: its first frame is due on the next 20 ms tick."""
        asyncio.get_running_loop()  # fail here, not in a timer, outside a loop
        pacer = Pacer(self._grid_after(self._clock()), self.ptime_ms, self.max_behind)
        self._streams[stream] = pacer
        self._arm(pacer.next_due)

    def remove(self, stream: PacedStream) -> None:
        """Stop pacing ``stream`` (no error if it is not paced)."""
        self._streams.pop(stream, None)
        if not self._streams and self._handle is not None:
            self._handle.cancel()
            self._handle = None
            self._armed_for = math.inf

    def close(self) -> None:
        """Forget every stream and stop the timer."""
        self._streams.clear()
        self.remove(_NOBODY)

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            if when >= self._armed_for:
                return
            self._handle.cancel()
        loop = asyncio.get_running_loop()
        self._armed_for = when
        self._handle = loop.call_later(max(0.0, when - self._clock()), self._run)

    def _run(self) -> None:
        self._handle = None
        self._armed_for = math.inf
        now = self._clock()
        horizon = now + self.early
        self.ticks += 1
        next_due = math.inf
        streams = self._streams
        for stream, pacer in list(streams.items()):
            if streams.get(stream) is not pacer:
                continue  # removed (or restarted) by an earlier stream's callback
            try:
                while (tick := pacer.poll(horizon)) is not None:
                    lateness = now - tick.due
                    if lateness > self.lateness:
                        self.lateness = lateness
                    if tick.skipped:
                        self.skipped += tick.skipped
                    if not stream.frame_due(tick.skipped, now):
                        if streams.get(stream) is pacer:
                            del streams[stream]
                        break
                else:
                    due = pacer.next_due
                    if due < next_due:
                        next_due = due
            except Exception:
                log.exception("paced stream failed; dropped", stream=repr(stream))
                streams.pop(stream, None)
        if streams:
            if next_due == math.inf:  # every remaining stream was added by a callback
                next_due = min(p.next_due for p in streams.values())
            self._arm(next_due)


class _Nobody:
    def frame_due(self, skipped: int, now: float) -> bool:
        return False


_NOBODY = _Nobody()


# --- clips and the frame cache -----------------------------------------------------------


class Sound(Protocol):
    """16-bit LE mono PCM at some rate: :class:`media.wav.Audio` or :class:`Pcm`."""

    @property
    def pcm16(self) -> bytes: ...

    @property
    def rate(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Pcm:
    """Raw 16-bit LE mono PCM, e.g. ``Pcm(tones.beep())`` (8 kHz)."""

    pcm16: bytes
    rate: int = 8000


Clip = Sound | str | os.PathLike[str]
"""One playlist item: a WAV file path, or audio already in memory."""


STATEFUL_CODECS = frozenset({"G722"})
"""Adaptive codecs: a frame depends on the audio before it (see :func:`encode_clip`)."""
PRIME_SECONDS = 0.5


def _clip_pcm(clip: Clip, rate: int) -> bytes:
    if isinstance(clip, str | os.PathLike):
        return load_wav(clip, rate).pcm16
    return clip.pcm16 if clip.rate == rate else resample(clip.pcm16, clip.rate, rate)


def encode_clip(clip: Clip, codec_name: str, prime: Clip | None = None) -> tuple[bytes, ...]:
    """A clip as RTP payloads of ``codec_name``, one per 20 ms (blocking: a worker thread).

    WAV files are loaded at the codec's rate (:func:`media.wav.load_wav`),
    PCM at another rate is resampled once; the last frame is padded with
    silence. Raises :class:`media.wav.WavError` for a bad file and
    :class:`media.codecs.CodecError` for a codec the engine cannot encode.

    ``prime``: the clip played just before this one. G.722 is adaptive: a
    clip encoded from a fresh encoder but played after other audio makes the
    phone's decoder (adapted to that audio) burst for ~40 ms at the seam (a
    looped hold tune did, at every loop). So the last :data:`PRIME_SECONDS` of
    ``prime`` are encoded first and their frames dropped: the encoder is in
    the state the decoder is in. Ignored for stateless codecs (G.711).
    """
    codec = codec_for(codec_name)
    rate = codec.sample_rate
    pcm = _clip_pcm(clip, rate)
    frame_bytes = codec.bytes_per_frame
    pcm = pcm + bytes(-len(pcm) % frame_bytes)
    frames = len(pcm) // frame_bytes
    if not frames:
        return ()
    lead = b""
    if prime is not None and codec_name.upper() in STATEFUL_CODECS:
        before = _clip_pcm(prime, rate)
        before = before + bytes(-len(before) % frame_bytes)
        keep = min(len(before), frame_bytes * round(PRIME_SECONDS * 50))
        lead = before[len(before) - keep:]
    encoded = codec.encode(lead + pcm)
    size = len(encoded) // (frames + len(lead) // frame_bytes)
    skip = len(lead) // frame_bytes
    return tuple(encoded[(skip + i) * size : (skip + i + 1) * size] for i in range(frames))


_FRAME_OVERHEAD = 41  # bytes object header + tuple slot, roughly, per cached frame


class FrameCache:
    """Encoded frames per (clip, codec), least recently used evicted beyond ``max_bytes``.

    A path is keyed by its real path, size and modification time (a replaced
    file is re-encoded); in-memory audio by its bytes. Two players asking for
    the same clip at once share one encoding.
    """

    def __init__(self, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[Hashable, tuple[bytes, ...]] = OrderedDict()
        self._pending: dict[Hashable, asyncio.Future[tuple[bytes, ...]]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def _key(clip: Clip, codec_name: str, prime: Clip | None = None) -> Hashable | None:
        """The cache key, None for a file that cannot be read (not cached)."""
        codec = codec_name.upper()
        if prime is not None and codec in STATEFUL_CODECS:
            mine, before = FrameCache._key(clip, codec), FrameCache._key(prime, codec)
            return None if mine is None or before is None else ("primed", mine, before)
        if isinstance(clip, str | os.PathLike):
            path = os.path.realpath(clip)
            try:
                st = os.stat(path)
            except OSError:
                return None
            return ("path", path, st.st_size, st.st_mtime_ns, codec)
        return ("pcm", clip.pcm16, clip.rate, codec)

    async def frames(self, clip: Clip, codec_name: str,
                     prime: Clip | None = None) -> tuple[bytes, ...]:
        """The clip's frames in ``codec_name`` (see :func:`encode_clip`)."""
        if codec_name.upper() not in STATEFUL_CODECS:
            prime = None
        key = self._key(clip, codec_name, prime)
        if key is None:  # let encode_clip say what is wrong with the file
            return await asyncio.to_thread(encode_clip, clip, codec_name, prime)
        cached = self._entries.get(key)
        if cached is not None:
            self._entries.move_to_end(key)
            self.hits += 1
            return cached
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        self.misses += 1
        future: asyncio.Future[tuple[bytes, ...]] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved
        self._pending[key] = future
        try:
            frames = await asyncio.to_thread(encode_clip, clip, codec_name, prime)
        except BaseException as exc:
            if isinstance(exc, Exception):
                future.set_exception(exc)
            else:
                future.cancel()
            raise
        finally:
            self._pending.pop(key, None)
        size = sum(len(f) + _FRAME_OVERHEAD for f in frames)
        self._entries[key] = frames
        self.bytes += size
        while self.bytes > self.max_bytes and len(self._entries) > 1:
            _, old = self._entries.popitem(last=False)
            self.bytes -= sum(len(f) + _FRAME_OVERHEAD for f in old)
        future.set_result(frames)
        return frames


# --- playing -----------------------------------------------------------------------------


class Player:
    """A playlist playing on one endpoint, paced by the shared scheduler.

    Made by :meth:`MediaService.play`. ``loop=True`` repeats the playlist in
    order until :meth:`stop`; otherwise it plays once and ends by itself.
    ``on_done(completed)`` is called once when the player ends: ``completed``
    is True when a one-shot playlist reached its end, False when stopped
    (:meth:`stop`, the endpoint closed, or a newer player took the endpoint).
    While the endpoint may not send (the peer holds us) frames are counted
    but not sent.
    """

    def __init__(
        self,
        scheduler: PacingScheduler,
        endpoint: MediaEndpoint,
        items: Sequence[tuple[bytes, ...]],
        *,
        loop: bool = False,
        on_done: Callable[[bool], None] | None = None,
        loop_items: Sequence[tuple[bytes, ...]] | None = None,
    ) -> None:
        self._items = [frames for frames in items if frames]
        if not self._items:
            raise MediaError("nothing to play: the playlist holds no audio")
        # From the second time round: the same audio encoded after the playlist's
        # end (an adaptive codec's seam, see encode_clip); None: the same items.
        self._loop_items = None if loop_items is None else [f for f in loop_items if f]
        if self._loop_items is not None and len(self._loop_items) != len(self._items):
            self._loop_items = None
        self._scheduler = scheduler
        self.endpoint = endpoint
        self.codec = endpoint.codec
        self.loop = loop
        self.on_done = on_done
        self.frames_played = 0
        self.item = 0
        """Index of the playlist item playing."""
        self._position = 0
        self._done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._unsubscribe: Callable[[], None] | None = None

    def _start(self) -> None:
        self._unsubscribe = self.endpoint.on_close(self.stop)
        self.endpoint.resync()
        self._scheduler.add(self)

    @property
    def playing(self) -> bool:
        return not self._done.done()

    def frame_due(self, skipped: int, now: float) -> bool:
        try:
            return self._next_frame(skipped, now)
        except Exception:
            log.exception("player failed", port=self.endpoint.rtp_port)
            self._finish(False)
            return False

    def _next_frame(self, skipped: int, now: float) -> bool:
        endpoint = self.endpoint
        if endpoint.closed:
            self._finish(False)
            return False
        if skipped:
            endpoint.skip_frames(skipped)
        frames = self._items[self.item]
        if endpoint.codec == self.codec:
            endpoint.send_frame(frames[self._position], now)
        else:  # re-INVITE changed the codec: these frames would be noise
            endpoint.skip_frames(1)
        self.frames_played += 1
        self._position += 1
        if self._position == len(frames):
            self._position = 0
            self.item += 1
            if self.item == len(self._items):
                self.item = 0
                if not self.loop:
                    self._finish(True)
                    return False
                if self._loop_items is not None:
                    self._items, self._loop_items = self._loop_items, None
        return True

    def stop(self) -> None:
        """Stop now (hold music on resume, a greeting on hang-up). Idempotent."""
        self._scheduler.remove(self)
        self._finish(False)

    def _finish(self, completed: bool) -> None:
        if self._done.done():
            return
        self._done.set_result(completed)
        # Both callbacks are dropped once used: each may hold this player (the
        # endpoint's on_close holds ``self.stop``), and a finished player must be
        # freed by reference counting, not left in a cycle for the collector.
        unsubscribe, self._unsubscribe = self._unsubscribe, None
        on_done, self.on_done = self.on_done, None
        if unsubscribe is not None:
            unsubscribe()
        if on_done is not None:
            try:
                on_done(completed)
            except Exception:
                log.exception("player on_done failed", port=self.endpoint.rtp_port)

    async def wait(self) -> bool:
        """Wait until the player ends; True when it played to the end."""
        return await asyncio.shield(self._done)

    def __repr__(self) -> str:
        return (f"<Player port={self.endpoint.rtp_port} item={self.item} "
                f"frames={self.frames_played} {'playing' if self.playing else 'done'}>")


# --- recording ---------------------------------------------------------------------------

StopReason = Literal["hangup", "dtmf", "silence", "max_length"]


@dataclass(frozen=True, slots=True)
class Recording:
    """A finished recording: the WAV file (8 kHz, 16-bit, mono) and why it stopped."""

    path: Path
    duration: float
    """Seconds of audio in the file."""
    reason: StopReason
    digit: str | None = None
    """The key that stopped it, for ``reason == "dtmf"``."""


class Recorder:
    """Received audio to a WAV file. Made by :meth:`MediaService.record`.

    * Audio is placed by RTP timestamp: a packet after a gap (loss, or a
      phone that stops sending in silence) is preceded by silence for the
      gap, late and duplicate packets are dropped, a new SSRC starts a new
      run. G.722 is recorded at 16 kHz and resampled to 8 kHz once, at the
      end (per-frame resampling would click).
    * Stops: ``stop_digits`` (RFC 4733; the key is not recorded), when
      nothing louder than ``silence_dbfs`` (RMS of a 20 ms frame) arrived for
      ``silence_seconds`` (missing packets count as silence; the silent tail
      is cut from the file), at ``max_seconds`` of audio (cut exactly there,
      also enforced by wall clock when packets stop), or :meth:`stop`; when
      the endpoint closes (hang-up) it stops with reason ``"hangup"``.
    * The file is written in a worker thread (whole, via a temporary name);
      :meth:`wait` returns the :class:`Recording` or raises the write error.
    """

    def __init__(
        self,
        endpoint: MediaEndpoint,
        path: str | os.PathLike[str],
        *,
        max_seconds: float = 180.0,
        silence_seconds: float | None = 5.0,
        silence_dbfs: float = -45.0,
        stop_digits: str = "#",
    ) -> None:
        if max_seconds <= 0:
            raise ValueError(f"max_seconds must be positive, got {max_seconds}")
        if silence_seconds is not None and silence_seconds <= 0:
            raise ValueError(f"silence_seconds must be positive, got {silence_seconds}")
        negotiated = endpoint.negotiated
        if negotiated is None or endpoint.closed:
            raise MediaError("cannot record: the endpoint is not configured or closed")
        decoder = endpoint.decoder()  # CodecError for G.729
        self.endpoint = endpoint
        self.path = Path(path)
        self.max_seconds = max_seconds
        self.silence_seconds = silence_seconds
        self.silence_dbfs = silence_dbfs
        self.stop_digits = stop_digits
        self._rate = decoder.sample_rate
        self._ticks_per_sample = negotiated.clock_rate / decoder.sample_rate
        self._max_bytes = 2 * round(max_seconds * self._rate)
        self._threshold = (10 ** (silence_dbfs / 20) * 32768.0) ** 2  # mean square
        self._pcm = bytearray()
        self._voice_end = 0
        self._ssrc: int | None = None
        self._next_ts = 0
        self._started = time.monotonic()
        self._last_voice = self._started
        self._loop = asyncio.get_running_loop()
        self._result: asyncio.Future[Recording] = self._loop.create_future()
        self._result.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._watchdog: asyncio.TimerHandle | None = None
        self._writer: asyncio.Task[None] | None = None
        self.recording = False
        self.late_packets = 0
        self._unsubscribe: list[Callable[[], None]] = []

    def _start(self) -> None:
        self.recording = True
        self._started = self._last_voice = time.monotonic()
        self._unsubscribe = [
            self.endpoint.on_audio(self._audio),
            self.endpoint.on_dtmf(self._digit),
            self.endpoint.on_close(self.stop),
        ]
        self._arm()

    @property
    def duration(self) -> float:
        """Seconds recorded so far (before any trimming)."""
        return len(self._pcm) / 2 / self._rate

    def _arm(self) -> None:
        self._watchdog = self._loop.call_later(0.1, self._check)

    def _check(self) -> None:
        if not self.recording:
            return
        now = time.monotonic()
        if self.silence_seconds is not None and now - self._last_voice >= self.silence_seconds:
            self.stop("silence")
        elif now - self._started >= self.max_seconds + 1.0:
            self.stop("max_length")
        else:
            self._arm()

    def _audio(self, pcm: bytes, packet: RtpPacket) -> None:
        if not self.recording:
            return
        ticks = round(len(pcm) // 2 * self._ticks_per_sample)
        if packet.ssrc != self._ssrc:
            self._ssrc = packet.ssrc
        else:
            gap = (packet.timestamp - self._next_ts) & 0xFFFFFFFF
            if gap >= 1 << 31:  # before the expected timestamp: late or duplicate
                self.late_packets += 1
                return
            if gap:
                cap = self.silence_seconds if self.silence_seconds is not None else 1.0
                samples = min(round(gap / self._ticks_per_sample), round(cap * self._rate))
                self._pcm += bytes(2 * samples)
        self._next_ts = (packet.timestamp + ticks) & 0xFFFFFFFF
        self._pcm += pcm
        x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
        if len(x) and float(np.dot(x, x)) / len(x) >= self._threshold:
            self._voice_end = len(self._pcm)
            self._last_voice = time.monotonic()
        if len(self._pcm) >= self._max_bytes:
            self.stop("max_length")

    def _digit(self, digit: str) -> None:
        if digit in self.stop_digits:
            self.stop("dtmf", digit)

    def stop(self, reason: StopReason = "hangup", digit: str | None = None) -> None:
        """Stop recording and write the file (in the background; see :meth:`wait`).
        Idempotent: the first reason wins."""
        if not self.recording:
            return
        self.recording = False
        if self._watchdog is not None:
            self._watchdog.cancel()
        # Dropped once used: they hold this recorder's bound methods (a cycle the
        # collector would have to find; see Player._finish).
        unsubscribers, self._unsubscribe = self._unsubscribe, []
        for unsubscribe in unsubscribers:
            unsubscribe()
        end = len(self._pcm)
        if reason == "silence":
            end = self._voice_end
        end = min(end, self._max_bytes)
        pcm = bytes(self._pcm[:end])
        self._pcm.clear()
        self._writer = self._loop.create_task(self._write(pcm, reason, digit))

    async def _write(self, pcm: bytes, reason: StopReason, digit: str | None) -> None:
        rate = self._rate
        path = self.path

        def work() -> float:
            out = pcm if rate == RECORDING_RATE else resample(pcm, rate, RECORDING_RATE)
            write_wav(path, out, RECORDING_RATE)
            return len(out) / 2 / RECORDING_RATE

        try:
            duration = await asyncio.to_thread(work)
        except Exception as exc:
            log.exception("recording not written", path=str(path))
            self._result.set_exception(exc)
            return
        self._result.set_result(Recording(path, duration, reason, digit))

    async def wait(self) -> Recording:
        """Wait until the recording has stopped and its file is written."""
        return await asyncio.shield(self._result)

    async def finish(self, reason: StopReason = "hangup") -> Recording:
        """:meth:`stop` and :meth:`wait`."""
        self.stop(reason)
        return await self.wait()


# --- the service ------------------------------------------------------------------------


class MediaService:
    """The media layer of one engine process (see the module notes).

    ``ports`` is the ``rtp_ports`` range (``"20000-29999"`` or a
    :class:`PortAllocator`), ``host`` the address the sockets bind to.
    """

    def __init__(
        self,
        ports: PortAllocator | str = "20000-29999",
        *,
        host: str = "0.0.0.0",
        rtcp_interval: float = 5.0,
        cache_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        self.ports = PortAllocator.parse(ports) if isinstance(ports, str) else ports
        self.host = host
        self.rtcp_interval = rtcp_interval
        self.scheduler = PacingScheduler()
        self.cache = FrameCache(cache_bytes)
        self._endpoints: set[MediaEndpoint] = set()
        self._players: dict[MediaEndpoint, Player] = {}
        self._recorders: set[Recorder] = set()

    @property
    def endpoints(self) -> int:
        """Endpoints open."""
        return len(self._endpoints)

    async def open_endpoint(self) -> MediaEndpoint:
        """A new endpoint on the next free port pair (:class:`PortsExhausted` when none)."""
        endpoint = await MediaEndpoint.open(self.ports, self.host,
                                            rtcp_interval=self.rtcp_interval)
        self._endpoints.add(endpoint)
        endpoint.on_close(lambda: self._endpoints.discard(endpoint))
        return endpoint

    async def play(
        self,
        endpoint: MediaEndpoint,
        playlist: Sequence[Clip] | Clip,
        *,
        loop: bool = False,
        on_done: Callable[[bool], None] | None = None,
    ) -> Player:
        """Start playing ``playlist`` on ``endpoint`` in its negotiated codec.

        Replaces (stops) a player already on the endpoint. Files are loaded
        and encoded first (cached). Raises :class:`MediaError` when the
        endpoint is not configured or closed, :class:`media.wav.WavError` for a
        bad file, :class:`media.codecs.CodecError` for a codec the engine cannot
        encode (G.729).
        """
        codec = endpoint.codec
        if codec is None or endpoint.closed:
            raise MediaError("cannot play: the endpoint is not configured or closed")
        clips: list[Clip]
        if isinstance(playlist, str | os.PathLike):
            clips = [playlist]
        elif isinstance(playlist, Sequence):
            clips = list(playlist)
        else:
            clips = [playlist]
        cache = self.cache
        primes: list[Clip | None] = [None, *clips[:-1]]
        items = await asyncio.gather(*(cache.frames(c, codec, p) for c, p in zip(
            clips, primes, strict=True)))
        loop_items = None
        if loop and codec.upper() in STATEFUL_CODECS:  # item 0 after the last one
            loop_items = [await cache.frames(clips[0], codec, clips[-1]), *items[1:]]
        if endpoint.closed:
            raise MediaError("cannot play: the endpoint closed while the audio was loading")
        if endpoint.codec != codec:
            return await self.play(endpoint, clips, loop=loop, on_done=on_done)
        player = Player(self.scheduler, endpoint, items, loop=loop, on_done=on_done,
                        loop_items=loop_items)
        previous = self._players.get(endpoint)
        if previous is not None:
            previous.stop()
        self._players[endpoint] = player

        def forget(_: object) -> None:
            if self._players.get(endpoint) is player:
                del self._players[endpoint]

        player._done.add_done_callback(forget)
        player._start()
        return player

    def player(self, endpoint: MediaEndpoint) -> Player | None:
        """The player running on ``endpoint``, if any."""
        return self._players.get(endpoint)

    def record(
        self,
        endpoint: MediaEndpoint,
        path: str | os.PathLike[str],
        *,
        max_seconds: float = 180.0,
        silence_seconds: float | None = 5.0,
        silence_dbfs: float = -45.0,
        stop_digits: str = "#",
    ) -> Recorder:
        """Start recording what ``endpoint`` receives to ``path`` (see :class:`Recorder`)."""
        recorder = Recorder(endpoint, path, max_seconds=max_seconds,
                            silence_seconds=silence_seconds, silence_dbfs=silence_dbfs,
                            stop_digits=stop_digits)
        recorder._start()
        self._recorders.add(recorder)
        recorder._result.add_done_callback(lambda _: self._recorders.discard(recorder))
        return recorder

    def relay(self, a: MediaEndpoint, b: MediaEndpoint) -> Relay:
        """Relay RTP between two endpoints (see :class:`media.endpoint.Relay`)."""
        return Relay(a, b)

    async def close_all(self) -> None:
        """Shutdown: close every endpoint (players stop, recorders finish as
        ``"hangup"`` and their files are written), then stop the scheduler."""
        for endpoint in list(self._endpoints):
            endpoint.close()
        recorders = list(self._recorders)
        for recorder in recorders:
            recorder.stop("hangup")
        with contextlib.suppress(Exception):
            await asyncio.gather(*(r.wait() for r in recorders), return_exceptions=True)
        self.scheduler.close()

