"""Audio codecs the engine transcodes: PCMU, PCMA (G.711) and G.722; sans-I/O.

Every codec turns 16-bit signed little-endian mono PCM ("pcm16") at its
``sample_rate`` into RTP payload bytes and back. One codec object serves one
stream: G.722 is adaptive (ADPCM), so its encoder and decoder carry state from
one frame to the next, and :func:`codec_for` returns a new object per call.

* PCMU / PCMA: ITU-T G.711, static payload types 0 and 8 (RFC 3551 s4.5.14,
  table 4). The stdlib ``audioop`` module does the work when it is importable
  (Python 3.11/3.12; removed in 3.13) on a little-endian host; otherwise a
  numpy implementation that replicates audioop's arithmetic through lookup
  tables. The tests check the two are bit-identical over all 65536 samples
  and all 256 code bytes.
* G722: ITU-T G.722 at 64 kbit/s via the ``G722`` package (libg722), payload
  type 9. PCM is 16 kHz, but the RTP clock is 8000 Hz: RFC 3551 s4.5.2 keeps
  the clock rate of the original (erroneous) RFC 1890 registration, so one
  20 ms frame is 320 PCM samples, 160 payload bytes and 160 timestamp ticks.
* G729 (payload type 18) is negotiated and relayed untouched, never
  transcoded: :func:`codec_for` refuses it with :class:`CodecError`.

:func:`resample` converts whole buffers between rates (8 kHz prompts on a
16 kHz G.722 stream, and WAV files at any rate).
"""

from __future__ import annotations

import importlib
import math
import sys
import warnings
from abc import ABC, abstractmethod
from types import ModuleType
from typing import Any, ClassVar, Literal, Protocol, cast

import numpy as np
import numpy.typing as npt

from media import sdp

FRAME_MS = 20
"""The packetization time the engine sends (RFC 3551 s4.5: 20 ms default for G.711/G.722)."""

G711Backend = Literal["audioop", "numpy"]

TRANSCODED = ("PCMU", "PCMA", "G722")
"""Codecs the engine can encode and decode, in the engine's preference order."""

RELAYED = ("G729",)
"""Codecs the engine negotiates and relays but cannot encode or decode."""

STATIC_PAYLOAD_TYPES: dict[str, int] = {
    name: pt for pt, (name, _rate, _ch) in sdp.STATIC_PAYLOAD_TYPES.items()
    if name in ("PCMU", "PCMA", "G722", "G729")}
"""RFC 3551 s6, table 4 (from the one table in :mod:`media.sdp`)."""

CLOCK_RATES: dict[str, int] = {
    name: rate for _pt, (name, rate, _ch) in sdp.STATIC_PAYLOAD_TYPES.items()
    if name in STATIC_PAYLOAD_TYPES}
"""RTP clock rates, RFC 3551 table 4 (G722's 8000 is the s4.5.2 quirk)."""

G729_REFUSAL = "G.729 is relayed, not transcoded: the engine cannot encode or decode it"

Int16Array = npt.NDArray[np.int16]
FloatArray = npt.NDArray[np.float64]


class CodecError(ValueError):
    """A codec cannot be built, or its input is malformed."""


def _load_audioop() -> ModuleType | None:
    """``audioop`` when it exists and matches our byte order (it uses the host's)."""
    if sys.byteorder != "little":
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return importlib.import_module("audioop")
    except ImportError:
        return None


_AUDIOOP = _load_audioop()
AUDIOOP_AVAILABLE = _AUDIOOP is not None
DEFAULT_G711_BACKEND: G711Backend = "audioop" if AUDIOOP_AVAILABLE else "numpy"


# --- PCM helpers -------------------------------------------------------------


def pcm_to_array(pcm16: bytes) -> Int16Array:
    """View 16-bit little-endian PCM as a native int16 array (a copy)."""
    if len(pcm16) % 2:
        raise CodecError(f"16-bit PCM must have an even number of bytes, got {len(pcm16)}")
    return np.frombuffer(pcm16, dtype="<i2").astype(np.int16)


def array_to_pcm(samples: npt.NDArray[Any]) -> bytes:
    """int16-range samples to 16-bit little-endian PCM bytes (values are clipped)."""
    arr = np.asarray(samples)
    if arr.dtype.kind == "f":
        arr = np.round(arr)
    return bytes(np.clip(arr, -32768, 32767).astype("<i2").tobytes())


# --- G.711, numpy implementation -----------------------------------------------
#
# The arithmetic is audioop's (Sun's g711.c, as in CPython Modules/audioop.c):
# u-law encodes the sample's top 14 bits, A-law its top 13 bits, with the
# segment search, bias and bit inversions of ITU-T G.711. Tables are built
# once: 65536 entries for the encoders (indexed by the sample as uint16) and
# 256 for the decoders.

_ALL_SAMPLES = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.int16)


def _segment(magnitude: npt.NDArray[np.int32], ends: tuple[int, ...]) -> npt.NDArray[np.int32]:
    """Index of the first segment end >= magnitude (len(ends) when above all)."""
    return np.searchsorted(np.asarray(ends, dtype=np.int32), magnitude, side="left").astype(
        np.int32
    )


def _build_ulaw_encode() -> npt.NDArray[np.uint8]:
    pcm = _ALL_SAMPLES.astype(np.int32) >> 2  # 14-bit
    negative = pcm < 0
    mask = np.where(negative, 0x7F, 0xFF)
    mag = np.minimum(np.where(negative, -pcm, pcm), 8159) + (0x84 >> 2)
    seg = _segment(mag, (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF))
    uval = (seg << 4) | ((mag >> (seg + 1)) & 0xF)
    uval = np.where(seg >= 8, 0x7F, uval)
    return ((uval ^ mask) & 0xFF).astype(np.uint8)


def _build_ulaw_decode() -> Int16Array:
    u = (~np.arange(256, dtype=np.int32)) & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, 0x84 - t, t - 0x84).astype(np.int16)


def _build_alaw_encode() -> npt.NDArray[np.uint8]:
    pcm = _ALL_SAMPLES.astype(np.int32) >> 3  # 13-bit
    negative = pcm < 0
    mask = np.where(negative, 0x55, 0xD5)
    mag = np.where(negative, -pcm - 1, pcm)
    seg = _segment(mag, (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF))
    shift = np.where(seg < 2, 1, seg)
    aval = (seg << 4) | ((mag >> np.minimum(shift, 31)) & 0x0F)
    aval = np.where(seg >= 8, 0x7F, aval)
    return ((aval ^ mask) & 0xFF).astype(np.uint8)


def _build_alaw_decode() -> Int16Array:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    t = a & 0x0F
    seg = (a & 0x70) >> 4
    t = np.where(seg > 0, (t + t + 1 + 32) << (seg + 2), (t + t + 1) << 3)
    return np.where(a & 0x80, t, -t).astype(np.int16)


_ULAW_ENCODE = _build_ulaw_encode()
_ULAW_DECODE = _build_ulaw_decode()
_ALAW_ENCODE = _build_alaw_encode()
_ALAW_DECODE = _build_alaw_decode()


def lin2ulaw_numpy(pcm16: bytes) -> bytes:
    """G.711 u-law encode with numpy (bit-identical to ``audioop.lin2ulaw(pcm16, 2)``)."""
    return _ULAW_ENCODE[pcm_to_array(pcm16).view(np.uint16)].tobytes()


def ulaw2lin_numpy(payload: bytes) -> bytes:
    """G.711 u-law decode with numpy (bit-identical to ``audioop.ulaw2lin(payload, 2)``)."""
    return _ULAW_DECODE[np.frombuffer(payload, dtype=np.uint8)].astype("<i2").tobytes()


def lin2alaw_numpy(pcm16: bytes) -> bytes:
    """G.711 A-law encode with numpy (bit-identical to ``audioop.lin2alaw(pcm16, 2)``)."""
    return _ALAW_ENCODE[pcm_to_array(pcm16).view(np.uint16)].tobytes()


def alaw2lin_numpy(payload: bytes) -> bytes:
    """G.711 A-law decode with numpy (bit-identical to ``audioop.alaw2lin(payload, 2)``)."""
    return _ALAW_DECODE[np.frombuffer(payload, dtype=np.uint8)].astype("<i2").tobytes()


# --- codec objects -------------------------------------------------------------


class AudioCodec(ABC):
    """One direction-pair of one stream: encode PCM to RTP payload and back.

    ``clock_rate`` is the RTP timestamp clock, ``sample_rate`` the PCM rate
    of :meth:`encode`'s input and :meth:`decode`'s output.
    """

    name: ClassVar[str]
    payload_type: ClassVar[int]
    clock_rate: ClassVar[int]
    sample_rate: ClassVar[int]

    @property
    def samples_per_frame(self) -> int:
        """PCM samples in one 20 ms frame (160 at 8 kHz, 320 for G.722)."""
        return self.sample_rate * FRAME_MS // 1000

    @property
    def bytes_per_frame(self) -> int:
        """PCM bytes in one 20 ms frame (2 per sample)."""
        return 2 * self.samples_per_frame

    @property
    def timestamp_step(self) -> int:
        """RTP timestamp increment per 20 ms frame (160 for all three codecs)."""
        return self.clock_rate * FRAME_MS // 1000

    @abstractmethod
    def encode(self, pcm16: bytes) -> bytes:
        """16-bit LE mono PCM at ``sample_rate`` -> RTP payload."""

    @abstractmethod
    def decode(self, payload: bytes) -> bytes:
        """RTP payload -> 16-bit LE mono PCM at ``sample_rate``."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}/{self.clock_rate} pt={self.payload_type}>"


class _G711(AudioCodec):
    clock_rate: ClassVar[int] = 8000
    sample_rate: ClassVar[int] = 8000

    def __init__(self, backend: G711Backend | None = None) -> None:
        chosen = backend or DEFAULT_G711_BACKEND
        if chosen == "audioop" and _AUDIOOP is None:
            raise CodecError("the audioop G.711 backend is not available on this Python")
        if chosen not in ("audioop", "numpy"):
            raise CodecError(f"unknown G.711 backend {chosen!r}")
        self.backend: G711Backend = chosen

    def _check(self, pcm16: bytes) -> None:
        if len(pcm16) % 2:
            raise CodecError(f"16-bit PCM must have an even number of bytes, got {len(pcm16)}")


class PCMU(_G711):
    """G.711 u-law, RTP payload type 0 (RFC 3551 s4.5.14)."""

    name: ClassVar[str] = "PCMU"
    payload_type: ClassVar[int] = 0

    def encode(self, pcm16: bytes) -> bytes:
        self._check(pcm16)
        if self.backend == "audioop":
            return cast(bytes, cast(Any, _AUDIOOP).lin2ulaw(pcm16, 2))
        return lin2ulaw_numpy(pcm16)

    def decode(self, payload: bytes) -> bytes:
        if self.backend == "audioop":
            return cast(bytes, cast(Any, _AUDIOOP).ulaw2lin(payload, 2))
        return ulaw2lin_numpy(payload)


class PCMA(_G711):
    """G.711 A-law, RTP payload type 8 (RFC 3551 s4.5.14)."""

    name: ClassVar[str] = "PCMA"
    payload_type: ClassVar[int] = 8

    def encode(self, pcm16: bytes) -> bytes:
        self._check(pcm16)
        if self.backend == "audioop":
            return cast(bytes, cast(Any, _AUDIOOP).lin2alaw(pcm16, 2))
        return lin2alaw_numpy(pcm16)

    def decode(self, payload: bytes) -> bytes:
        if self.backend == "audioop":
            return cast(bytes, cast(Any, _AUDIOOP).alaw2lin(payload, 2))
        return alaw2lin_numpy(payload)


class _LibG722(Protocol):
    """The slice of ``G722.G722`` (libg722's binding, no type stubs) we use."""

    def encode(self, samples: Int16Array, /) -> bytes: ...

    def decode(self, payload: bytes, /) -> Any: ...


def _new_libg722() -> _LibG722:
    module: Any = importlib.import_module("G722")
    # use_numpy=False: decode() returns array('h') whatever optional addon is installed.
    return cast(_LibG722, module.G722(16000, 64000, use_numpy=False))


class G722(AudioCodec):
    """ITU-T G.722 at 64 kbit/s, RTP payload type 9 (RFC 3551 s4.5.2).

    PCM is 16 kHz; the RTP clock is 8000 Hz (the RFC 3551 quirk). Two PCM
    samples make one payload byte, so 20 ms is 640 PCM bytes <-> 160 payload
    bytes. Encoder and decoder are separate libg722 states owned by this object:
    use one object per stream and feed it frames in order.
    """

    name: ClassVar[str] = "G722"
    payload_type: ClassVar[int] = 9
    clock_rate: ClassVar[int] = 8000
    sample_rate: ClassVar[int] = 16000

    def __init__(self) -> None:
        self._encoder = _new_libg722()
        self._decoder = _new_libg722()

    def encode(self, pcm16: bytes) -> bytes:
        samples = pcm_to_array(pcm16)
        if len(samples) % 2:
            raise CodecError(
                f"G.722 encodes sample pairs: got an odd number of samples ({len(samples)})"
            )
        return bytes(self._encoder.encode(samples))

    def decode(self, payload: bytes) -> bytes:
        decoded = self._decoder.decode(bytes(payload))
        return np.asarray(decoded, dtype=np.int16).astype("<i2").tobytes()


def _normalize(name: str) -> str:
    return name.strip().upper().replace(".", "").replace("-", "").replace("_", "")


def codec_for(name: str, *, g711_backend: G711Backend | None = None) -> AudioCodec:
    """A new codec object for one stream, by SDP encoding name (case-insensitive).

    ``"G.722"``, ``"g722"`` and ``"G722"`` are the same. Raises
    :class:`CodecError` for G.729 (relayed only) and unknown names.
    """
    key = _normalize(name)
    if key == "PCMU":
        return PCMU(g711_backend)
    if key == "PCMA":
        return PCMA(g711_backend)
    if key == "G722":
        return G722()
    if key in ("G729", "G729A", "G729B", "G729AB"):
        raise CodecError(G729_REFUSAL)
    raise CodecError(
        f"unknown codec {name!r}: the engine transcodes {', '.join(TRANSCODED)} "
        f"and relays {', '.join(RELAYED)}"
    )


# --- resampling ----------------------------------------------------------------

_RESAMPLE_HALF_TAPS = 16
_RESAMPLE_ROLLOFF = 0.94
_RESAMPLE_CHUNK = 4096
_RESAMPLE_MAX_PHASES = 4096


def resample_float(samples: FloatArray, src_rate: int, dst_rate: int) -> FloatArray:
    """Band-limited resampling of float samples (any rational ratio).

    Windowed-sinc interpolation: each output sample at input time
    ``t = n * src_rate / dst_rate`` is the sum of nearby input samples weighted
    by a Blackman-windowed sinc whose cutoff is 0.94 x the lower of the two
    Nyquist frequencies, so downsampling filters out what would alias
    (16 kHz -> 8 kHz keeps 0-3.76 kHz) and upsampling does not create images.
    The filter spans 16 zero crossings each side of the lower rate. For ratios
    up/down in lowest terms with ``up <= 4096`` (every common rate) the weights
    of the ``up`` filter phases are computed once (a polyphase filter); output
    is computed in chunks, so memory stays bounded on long files (a minute of
    44.1 kHz audio converts in about half a second). The output has
    ``floor(len * dst_rate / src_rate)`` samples; input past the ends is zero.
    """
    if src_rate <= 0 or dst_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {src_rate} -> {dst_rate}")
    x = np.asarray(samples, dtype=np.float64)
    if src_rate == dst_rate:
        return x.copy()
    g = math.gcd(src_rate, dst_rate)
    up, down = dst_rate // g, src_rate // g
    n_out = len(x) * up // down
    out = np.empty(n_out, dtype=np.float64)
    if n_out == 0:
        return out
    cutoff = _RESAMPLE_ROLLOFF * min(1.0, dst_rate / src_rate)  # in units of src Nyquist
    width = _RESAMPLE_HALF_TAPS / cutoff  # filter half-width, in input samples
    reach = math.ceil(width)
    taps = np.arange(-reach + 1, reach + 1, dtype=np.int64)

    def kernel(frac: FloatArray) -> FloatArray:
        """Filter weights for output positions ``frac`` (0 <= frac < 1) past an input sample."""
        d = frac[:, None] - taps[None, :].astype(np.float64)  # t - input index
        window = 0.42 + 0.5 * np.cos(np.pi * d / width) + 0.08 * np.cos(2 * np.pi * d / width)
        weights: FloatArray = np.where(
            np.abs(d) < width, cutoff * np.sinc(cutoff * d) * window, 0.0
        )
        return weights

    # Output n sits at input position n*down/up: its fractional part takes only `up`
    # values (the polyphase filter's phases), so their weights are computed once.
    phases = kernel(np.arange(up, dtype=np.float64) / up) if up <= _RESAMPLE_MAX_PHASES else None
    last = len(x) - 1
    padded = np.concatenate([np.zeros(reach), x, np.zeros(reach + 1)])
    if up == 1 and phases is not None:
        # Integer decimation (16 kHz G.722 recordings to 8 kHz): one phase, so every
        # output is the same dot product on a window stepping ``down`` samples.
        windows = np.lib.stride_tricks.sliding_window_view(padded, len(taps))
        out[:] = windows[1 : 1 + n_out * down : down] @ phases[0]
        return out
    for start in range(0, n_out, _RESAMPLE_CHUNK):
        n = np.arange(start, min(start + _RESAMPLE_CHUNK, n_out), dtype=np.int64)
        base = (n * down) // up  # floor of the exact input position
        phase = (n * down) % up
        h = phases[phase] if phases is not None else kernel(phase / up)
        idx = np.clip(base[:, None] + taps[None, :], -reach, last + reach + 1) + reach
        out[start : start + len(n)] = np.einsum("ij,ij->i", padded[idx], h)
    return out


def resample(pcm16: bytes, src_rate: int, dst_rate: int) -> bytes:
    """Resample a whole 16-bit LE mono PCM buffer (see :func:`resample_float`).

    Meant for whole prompts, converted once (e.g. an 8 kHz greeting played on
    a 16 kHz G.722 stream): cutting a signal into 20 ms frames and resampling
    each frame separately would click at every frame edge.
    """
    samples = pcm_to_array(pcm16).astype(np.float64)
    return array_to_pcm(resample_float(samples, src_rate, dst_rate))
