"""Call recording: both directions of a relayed call mixed into one WAV.

A :class:`CallRecorder` listens to the decoded audio of the two endpoints of
an anchored call (what each party sends us) and writes one WAV file, 8 kHz,
16-bit, mono, when stopped.

Placement: within one RTP stream (one SSRC) a frame goes where its RTP
timestamp says, so jitter does not smear the audio; a new SSRC, the first
packet, or a stream that drifted more than :data:`REANCHOR_SECONDS` from the
wall clock (a phone silent on hold, then sending again) is placed by the
monotonic clock instead. The two sides therefore stay aligned to within a
packet's jitter. Silence on a side (hold, no packets) is silence in the
file. G.722 sides are kept at 16 kHz and resampled once at the end, like
:class:`media.session.Recorder` (per-frame resampling clicks).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from media.codecs import resample
from media.endpoint import MediaEndpoint, MediaError
from media.rtp import RtpPacket
from media.wav import write_wav

RATE = 8000
REANCHOR_SECONDS = 1.0
MAX_SECONDS = 4 * 3600.0  # a recording stops growing after this (memory bound)


@dataclass(slots=True)
class _Side:
    rate: int
    ticks_per_sample: float
    pcm: bytearray
    ssrc: int | None = None
    base_ts: int = 0
    base_pos: int = 0  # sample index of base_ts
    max_samples: int = 0

    def place(self, pcm: bytes, packet: RtpPacket, elapsed: float) -> None:
        wall = round(elapsed * self.rate)
        if packet.ssrc != self.ssrc:
            self.ssrc, self.base_ts, self.base_pos = packet.ssrc, packet.timestamp, wall
            pos = wall
        else:
            delta = (packet.timestamp - self.base_ts) & 0xFFFFFFFF
            if delta >= 1 << 31:
                delta -= 1 << 32
            pos = self.base_pos + round(delta / self.ticks_per_sample)
            if abs(pos - wall) > REANCHOR_SECONDS * self.rate:
                self.base_ts, self.base_pos, pos = packet.timestamp, wall, wall
        if pos < 0 or pos >= self.max_samples:
            return
        start, end = 2 * pos, 2 * pos + len(pcm)
        if end > len(self.pcm):
            self.pcm.extend(bytes(end - len(self.pcm)))
        self.pcm[start:end] = pcm

    def samples(self) -> np.ndarray:
        pcm = bytes(self.pcm)
        if self.rate != RATE:
            pcm = resample(pcm, self.rate, RATE)
        return np.frombuffer(pcm, dtype="<i2").astype(np.int32)


@dataclass(frozen=True, slots=True)
class CallRecording:
    path: Path
    duration: float  # seconds in the file


class CallRecorder:
    """Mix what both endpoints receive into ``path`` (see the module notes)."""

    def __init__(self, a: MediaEndpoint, b: MediaEndpoint, path: str | Path,
                 max_seconds: float = MAX_SECONDS) -> None:
        self.path = Path(path)
        self.started = time.monotonic()
        self.recording = True
        self._sides: list[_Side] = []
        self._unsubscribe: list[Callable[[], None]] = []
        for endpoint in (a, b):
            negotiated = endpoint.negotiated
            if negotiated is None or endpoint.closed:
                raise MediaError("cannot record: an endpoint is not configured or closed")
            rate = endpoint.decoder().sample_rate  # CodecError for G.729
            side = _Side(rate, negotiated.clock_rate / rate, bytearray(),
                         max_samples=round(max_seconds * rate))
            self._sides.append(side)
            self._unsubscribe.append(endpoint.on_audio(self._listener(side)))
            self._unsubscribe.append(endpoint.on_close(self.stop))
        self._result: asyncio.Future[CallRecording] = \
            asyncio.get_running_loop().create_future()
        self._result.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._writer: asyncio.Task[None] | None = None

    def _listener(self, side: _Side) -> Callable[[bytes, RtpPacket], None]:
        def heard(pcm: bytes, packet: RtpPacket) -> None:
            if self.recording:
                side.place(pcm, packet, time.monotonic() - self.started)
        return heard

    def stop(self) -> None:
        """Stop and write the file in a worker thread (idempotent); see :meth:`wait`."""
        if not self.recording:
            return
        self.recording = False
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()
        sides = self._sides
        elapsed = time.monotonic() - self.started
        path = self.path

        def work() -> CallRecording:
            tracks = [side.samples() for side in sides]
            length = max(round(elapsed * RATE), *(len(t) for t in tracks))
            mixed = np.zeros(length, dtype=np.int32)
            for track in tracks:
                mixed[:len(track)] += track
            out = np.clip(mixed, -32768, 32767).astype("<i2").tobytes()
            write_wav(path, out, RATE)
            return CallRecording(path, length / RATE)

        async def write() -> None:
            try:
                self._result.set_result(await asyncio.to_thread(work))
            except Exception as exc:
                self._result.set_exception(exc)

        self._writer = asyncio.get_running_loop().create_task(write())

    async def wait(self) -> CallRecording:
        return await asyncio.shield(self._result)
