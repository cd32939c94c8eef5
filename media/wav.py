"""WAV files in and out: prompts, greetings, hold music.

Any integer-PCM WAV (8-, 16-, 24- or 32-bit, any number of channels, any
rate) loads into the engine's internal form: 16-bit signed little-endian mono
at 8000 or 16000 Hz. Files are validated once, on load, and every refusal is
a :class:`WavError` whose message names the file and what is wrong with it.

Reading uses the stdlib ``wave`` module. On Python 3.11 ``wave`` only knows
format tag 1 (``WAVE_FORMAT_PCM``), while many tools write 24-bit and
multichannel PCM as ``WAVE_FORMAT_EXTENSIBLE`` (tag 0xFFFE, Microsoft's
WAVEFORMATEXTENSIBLE) with a PCM sub-format GUID; such a file is read by
rewriting its tag to 1 in memory (the layout of the samples is the same).
Files are read whole, so loading is capped (:data:`MAX_LOAD_BYTES` by default).
"""

from __future__ import annotations

import io
import os
import struct
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from media.codecs import FloatArray, array_to_pcm, resample_float

StrPath = str | os.PathLike[str]

INTERNAL_RATES = (8000, 16000)
"""Rates the engine plays at: 8 kHz for G.711, 16 kHz for G.722."""

MAX_LOAD_BYTES = 100 * 1024 * 1024
"""Largest WAV file :func:`load_wav` reads (100 MiB: about 10 minutes of 44.1 kHz stereo)."""

GREETING_MAX_BYTES = 10 * 1024 * 1024
"""The admin guide's "at most 10 MB" for uploaded greetings, read as 10 MiB (10485760 bytes)."""

GREETING_RULE = "uploaded greetings must be PCM, 8 kHz, 16-bit, mono, at most 10 MB"

_FORMAT_NAMES = {
    0x0001: "PCM",
    0x0002: "Microsoft ADPCM",
    0x0003: "IEEE float",
    0x0006: "A-law",
    0x0007: "u-law",
    0x0011: "IMA ADPCM",
    0x0031: "GSM 6.10",
    0x0055: "MP3",
    0xFFFE: "extensible",
}
_WAVE_FORMAT_PCM = 0x0001
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE
# KSDATAFORMAT_SUBTYPE_*: the first two bytes are the format tag, the rest is fixed.
_GUID_TAIL = bytes.fromhex("000000001000800000aa00389b71")


class WavError(ValueError):
    """A WAV file cannot be used; the message names the file and the problem."""

    def __init__(self, path: StrPath, problem: str) -> None:
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class GreetingRefused(WavError):
    """An uploaded greeting breaks the admin guide's rule (:data:`GREETING_RULE`)."""


@dataclass(frozen=True, slots=True)
class WavInfo:
    """What a WAV file's header says, checked against its data."""

    path: str
    channels: int
    sample_width: int
    """Bytes per sample: 1, 2, 3 or 4."""
    rate: int
    frames: int
    file_size: int

    @property
    def bits(self) -> int:
        return 8 * self.sample_width

    @property
    def duration(self) -> float:
        """Seconds."""
        return self.frames / self.rate

    def describe(self) -> str:
        """E.g. ``44100 Hz, 24-bit, stereo, 1.50 s, 264644 bytes``."""
        layout = {1: "mono", 2: "stereo"}.get(self.channels, f"{self.channels} channels")
        return (
            f"{self.rate} Hz, {self.bits}-bit, {layout}, {self.duration:.2f} s, "
            f"{self.file_size} bytes"
        )


@dataclass(frozen=True, slots=True)
class Audio:
    """Decoded audio in the internal form: 16-bit LE mono PCM at ``rate``."""

    pcm16: bytes
    rate: int
    source: WavInfo

    @property
    def samples(self) -> int:
        return len(self.pcm16) // 2

    @property
    def duration(self) -> float:
        """Seconds."""
        return self.samples / self.rate


def _read_bytes(path: StrPath, max_bytes: int) -> tuple[bytes, int]:
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        raise WavError(path, "unreadable: no such file") from None
    except OSError as exc:
        raise WavError(path, f"unreadable: {exc.strerror or exc}") from None
    if size > max_bytes:
        raise WavError(path, f"too big: {size} bytes, the limit is {max_bytes} bytes")
    if size == 0:
        raise WavError(path, "empty: the file has 0 bytes")
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise WavError(path, f"unreadable: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise WavError(path, f"too big: more than {max_bytes} bytes")
    return data, len(data)


def _fmt_chunk(path: StrPath, data: bytes) -> tuple[int, int]:
    """(offset of the fmt chunk body, effective format tag); RIFF per the WAVE spec."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise WavError(path, "unreadable: not a WAV file (no RIFF/WAVE header)")
    pos = 12
    while pos + 8 <= len(data):
        chunk_id = data[pos : pos + 4]
        (size,) = struct.unpack_from("<I", data, pos + 4)
        body = pos + 8
        if chunk_id == b"fmt ":
            if size < 16 or body + size > len(data):
                raise WavError(path, "unreadable: truncated or malformed fmt chunk")
            (tag,) = struct.unpack_from("<H", data, body)
            if tag == _WAVE_FORMAT_EXTENSIBLE:
                if size < 40:
                    raise WavError(path, "unreadable: extensible fmt chunk shorter than 40 bytes")
                guid = data[body + 24 : body + 40]
                if guid[2:] != _GUID_TAIL:
                    raise WavError(path, "not PCM: extensible format with an unknown sub-format")
                (tag,) = struct.unpack_from("<H", guid)
            return body, tag
        pos = body + size + (size & 1)  # chunks are word-aligned
    raise WavError(path, "unreadable: no fmt chunk")


def _open(path: StrPath, max_bytes: int) -> tuple[WavInfo, bytes]:
    """Validate the file and return its header facts and raw sample bytes."""
    data, size = _read_bytes(path, max_bytes)
    fmt_body, tag = _fmt_chunk(path, data)
    if tag != _WAVE_FORMAT_PCM:
        name = _FORMAT_NAMES.get(tag, f"format tag 0x{tag:04x}")
        raise WavError(path, f"not PCM: the audio is {name}; save it as PCM (integer samples)")
    patched = bytearray(data)
    struct.pack_into("<H", patched, fmt_body, _WAVE_FORMAT_PCM)
    try:
        with wave.open(io.BytesIO(bytes(patched)), "rb") as w:
            channels = w.getnchannels()
            width = w.getsampwidth()
            rate = w.getframerate()
            frames = w.getnframes()
            raw = w.readframes(frames)
    except (wave.Error, EOFError, struct.error) as exc:
        raise WavError(path, f"unreadable: {exc or type(exc).__name__}") from None
    if channels < 1:
        raise WavError(path, "unreadable: the header says 0 channels")
    if width not in (1, 2, 3, 4):
        raise WavError(path, f"unsupported sample size: {8 * width} bits (8, 16, 24 or 32)")
    if rate <= 0:
        raise WavError(path, f"unreadable: sample rate {rate}")
    frame_bytes = channels * width
    got = len(raw) // frame_bytes
    if got == 0:
        raise WavError(path, "empty: no audio samples")
    if got < frames:
        raise WavError(path, f"truncated: the header says {frames} frames, the file holds {got}")
    info = WavInfo(os.fspath(path), channels, width, rate, got, size)
    return info, raw[: got * frame_bytes]


def wav_info(path: StrPath, *, max_bytes: int = MAX_LOAD_BYTES) -> WavInfo:
    """Validate a WAV file as :func:`load_wav` would, and describe it."""
    info, _ = _open(path, max_bytes)
    return info


def _to_float(raw: bytes, width: int, channels: int) -> FloatArray:
    """Interleaved integer PCM -> mono float in [-1, 1) (channels averaged)."""
    if width == 1:  # 8-bit WAV is unsigned, offset 128
        x = (np.frombuffer(raw, dtype=np.uint8).astype(np.float64) - 128.0) / 128.0
    elif width == 2:
        x = np.frombuffer(raw, dtype="<i2").astype(np.float64) / 32768.0
    elif width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        v = np.where(v & 0x800000, v - 0x1000000, v)
        x = v.astype(np.float64) / 8388608.0
    else:
        x = np.frombuffer(raw, dtype="<i4").astype(np.float64) / 2147483648.0
    if channels > 1:
        x = x.reshape(-1, channels).mean(axis=1)
    return x


def load_wav(path: StrPath, rate: int = 8000, *, max_bytes: int = MAX_LOAD_BYTES) -> Audio:
    """Load a PCM WAV as 16-bit LE mono at ``rate`` (8000 or 16000).

    Channels are averaged to mono; the rate is converted with
    :func:`media.codecs.resample_float` (band-limited); samples are rounded and
    clipped to 16 bits. A 16-bit mono file already at ``rate`` is returned as is.
    Raises :class:`WavError` naming the file and the problem.
    """
    if rate not in INTERNAL_RATES:
        raise ValueError(f"target rate must be one of {INTERNAL_RATES}, got {rate}")
    info, raw = _open(path, max_bytes)
    if info.sample_width == 2 and info.channels == 1 and info.rate == rate:
        return Audio(raw, rate, info)
    mono = _to_float(raw, info.sample_width, info.channels)
    converted = resample_float(mono, info.rate, rate)
    if len(converted) == 0:
        raise WavError(path, f"empty: too short to hold one sample at {rate} Hz")
    return Audio(array_to_pcm(converted * 32768.0), rate, info)


def validate_greeting(path: StrPath) -> WavInfo:
    """Apply the admin guide's rule to an uploaded greeting, or refuse it.

    The rule (:data:`GREETING_RULE`): PCM, 8 kHz, 16-bit, mono, at most
    10 MB. Returns the file's :class:`WavInfo` when it complies; otherwise raises
    :class:`GreetingRefused` whose message states the rule and lists every way
    the file breaks it, e.g. ``hello.wav: refused: uploaded greetings must be
    PCM, 8 kHz, 16-bit, mono, at most 10 MB; this file is 44100 Hz, stereo``.
    """
    try:
        size = os.stat(path).st_size
    except OSError:
        size = -1
    if size > GREETING_MAX_BYTES:
        raise GreetingRefused(
            path,
            f"refused: {GREETING_RULE}; this file is {size} bytes "
            f"(the limit is {GREETING_MAX_BYTES} bytes)",
        )
    try:
        info, _ = _open(path, GREETING_MAX_BYTES)
    except WavError as exc:
        refusal = f"refused: {GREETING_RULE}; this file is {exc.problem}"
        raise GreetingRefused(path, refusal) from None
    wrong: list[str] = []
    if info.rate != 8000:
        wrong.append(f"{info.rate} Hz")
    if info.sample_width != 2:
        wrong.append(f"{info.bits}-bit")
    if info.channels != 1:
        wrong.append("stereo" if info.channels == 2 else f"{info.channels} channels")
    if wrong:
        raise GreetingRefused(path, f"refused: {GREETING_RULE}; this file is {', '.join(wrong)}")
    return info


def write_wav(path: StrPath, pcm16: bytes, rate: int = 8000) -> None:
    """Write 16-bit LE mono PCM as a WAV file (``WAVE_FORMAT_PCM``).

    The file appears whole or not at all: it is written next to ``path`` under
    a temporary name and renamed into place.
    """
    if len(pcm16) % 2:
        raise ValueError(f"16-bit PCM must have an even number of bytes, got {len(pcm16)}")
    if rate <= 0:
        raise ValueError(f"sample rate must be positive, got {rate}")
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f, wave.open(f, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(pcm16)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a prompt is read by other tools
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
