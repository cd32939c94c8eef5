"""media.codecs and media.tones: G.711 bit-exactness, codec round trips measured by numbers."""

from __future__ import annotations

import hashlib
import importlib
import subprocess
import sys
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from media import codecs
from media.codecs import (
    G722,
    G729_REFUSAL,
    PCMA,
    PCMU,
    AudioCodec,
    CodecError,
    codec_for,
    resample,
)
from media.tones import (
    beep,
    dominant_frequency,
    goertzel,
    rms_dbfs,
    silence,
    sinusoid_snr_db,
    tone,
)

ROOT = Path(__file__).resolve().parents[1]
ALL_SAMPLES = np.arange(-32768, 32768, dtype="<i2").tobytes()  # every 16-bit value, in order
ALL_CODES = bytes(range(256))

# SHA-256 of the outputs over ALL_SAMPLES / ALL_CODES, recorded from CPython 3.11's audioop
# (lin2ulaw, lin2alaw, ulaw2lin, alaw2lin with width 2): the reference both backends must hit.
REFERENCE_SHA256 = {
    "lin2ulaw": "81d633c9e6972a18c74a58720b96cb8ca0bdd096d4060b646dd708c3b846019a",
    "lin2alaw": "38488f6fd710f4686360edc4d38639f96c491595ef93f8eb8d62d5e07ca6ce7b",
    "ulaw2lin": "3dab54339e520bb2c924826e3b72a917a2b612e9fd12fc867500f1d983a75827",
    "alaw2lin": "e04788d110e58ff8c70c93b8480190d973e3b67876b6119abbaec766cc75c174",
}
NUMPY_IMPL = {
    "lin2ulaw": (codecs.lin2ulaw_numpy, ALL_SAMPLES),
    "lin2alaw": (codecs.lin2alaw_numpy, ALL_SAMPLES),
    "ulaw2lin": (codecs.ulaw2lin_numpy, ALL_CODES),
    "alaw2lin": (codecs.alaw2lin_numpy, ALL_CODES),
}


def _audioop() -> ModuleType | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return importlib.import_module("audioop")
    except ImportError:
        return None


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _pcm(*values: int) -> bytes:
    return np.array(values, dtype="<i2").tobytes()


def _ints(pcm16: bytes) -> list[int]:
    return [int(v) for v in np.frombuffer(pcm16, dtype="<i2")]


def _round_trip(codec: AudioCodec, pcm16: bytes) -> bytes:
    """Encode and decode frame by frame, as a stream would."""
    step = codec.bytes_per_frame
    payloads = [codec.encode(pcm16[i : i + step]) for i in range(0, len(pcm16), step)]
    return b"".join(codec.decode(p) for p in payloads)


# --- G.711 bit-exactness ----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(REFERENCE_SHA256))
def test_numpy_g711_matches_reference_table(name: str) -> None:
    func, inputs = NUMPY_IMPL[name]
    assert _sha(func(inputs)) == REFERENCE_SHA256[name]


@pytest.mark.parametrize("name", sorted(REFERENCE_SHA256))
def test_audioop_g711_matches_numpy_on_every_input(name: str) -> None:
    audioop = _audioop()
    func, inputs = NUMPY_IMPL[name]
    if audioop is None:  # Python >= 3.13: the reference table stands in for audioop
        assert _sha(func(inputs)) == REFERENCE_SHA256[name]
        return
    expected = getattr(audioop, name)(inputs, 2)
    assert func(inputs) == expected
    assert _sha(expected) == REFERENCE_SHA256[name]


def test_g711_known_values() -> None:
    # ITU-T G.711: silence is 0xFF (u-law) / 0xD5 (A-law); extremes and decoded maxima.
    assert codecs.lin2ulaw_numpy(_pcm(0, 32767, -32768, -1)) == bytes([0xFF, 0x80, 0x00, 0x7E])
    assert codecs.lin2alaw_numpy(_pcm(0, 32767, -32768, -1)) == bytes([0xD5, 0xAA, 0x2A, 0x55])
    assert _ints(codecs.ulaw2lin_numpy(bytes([0x80, 0x00, 0xFF, 0x7F]))) == [32124, -32124, 0, 0]
    assert _ints(codecs.alaw2lin_numpy(bytes([0xAA, 0x2A, 0xD5, 0x55]))) == [32256, -32256, 8, -8]


@pytest.mark.parametrize("cls", [PCMU, PCMA])
def test_g711_codec_backends_agree(cls: type[PCMU] | type[PCMA]) -> None:
    numpy_codec = cls("numpy")
    assert numpy_codec.backend == "numpy"
    law = "ulaw" if cls is PCMU else "alaw"
    assert _sha(numpy_codec.encode(ALL_SAMPLES)) == REFERENCE_SHA256[f"lin2{law}"]
    assert _sha(numpy_codec.decode(ALL_CODES)) == REFERENCE_SHA256[f"{law}2lin"]
    if codecs.AUDIOOP_AVAILABLE:
        audioop_codec = cls("audioop")
        assert audioop_codec.encode(ALL_SAMPLES) == numpy_codec.encode(ALL_SAMPLES)
        assert audioop_codec.decode(ALL_CODES) == numpy_codec.decode(ALL_CODES)
        assert codecs.DEFAULT_G711_BACKEND == "audioop"
    else:
        assert codecs.DEFAULT_G711_BACKEND == "numpy"


def test_g711_decode_of_encode_is_idempotent() -> None:
    # Decoded G.711 values are exactly representable: re-encoding gives the same codes,
    # except u-law's "negative zero" 0x7F, which decodes to 0 and comes back as 0xFF.
    assert PCMA("numpy").encode(PCMA("numpy").decode(ALL_CODES)) == ALL_CODES
    ulaw = PCMU("numpy")
    expected = bytearray(ALL_CODES)
    expected[0x7F] = 0xFF
    assert ulaw.encode(ulaw.decode(ALL_CODES)) == bytes(expected)


# --- codec facts --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "pt", "clock", "rate", "frame_samples", "payload_bytes"),
    [
        ("PCMU", 0, 8000, 8000, 160, 160),
        ("PCMA", 8, 8000, 8000, 160, 160),
        ("G722", 9, 8000, 16000, 320, 160),
    ],
)
def test_codec_facts_and_frame_sizes(
    name: str, pt: int, clock: int, rate: int, frame_samples: int, payload_bytes: int
) -> None:
    codec = codec_for(name)
    assert (codec.name, codec.payload_type, codec.clock_rate, codec.sample_rate) == (
        name,
        pt,
        clock,
        rate,
    )
    assert codec.samples_per_frame == frame_samples
    assert codec.bytes_per_frame == 2 * frame_samples
    assert codec.timestamp_step == 160
    payload = codec.encode(tone(1000, 20, rate))
    assert len(payload) == payload_bytes
    assert len(codec.decode(payload)) == 2 * frame_samples


def test_g722_is_160_bytes_per_20_ms_for_a_whole_second() -> None:
    codec = G722()
    pcm = tone(440, 1000, 16000)
    payloads = [codec.encode(pcm[i : i + 640]) for i in range(0, len(pcm), 640)]
    assert len(payloads) == 50
    assert {len(p) for p in payloads} == {160}
    assert {len(codec.decode(p)) for p in payloads} == {640}


def test_codec_for_names_and_refusals() -> None:
    assert isinstance(codec_for("pcmu"), PCMU)
    assert isinstance(codec_for(" PCMA "), PCMA)
    assert isinstance(codec_for("G.722"), G722)
    for name in ("G729", "g729", "G.729", "G729a"):
        with pytest.raises(CodecError) as info:
            codec_for(name)
        assert str(info.value) == G729_REFUSAL
    assert G729_REFUSAL == (
        "G.729 is relayed, not transcoded: the engine cannot encode or decode it"
    )
    with pytest.raises(CodecError, match=r"unknown codec 'opus': the engine transcodes PCMU"):
        codec_for("opus")


def test_codec_for_returns_one_object_per_stream() -> None:
    a, b = codec_for("G722"), codec_for("G722")
    assert a is not b
    pcm = tone(1000, 200, 16000)
    # Encoding in 20 ms frames carries ADPCM state across frames: same as one call...
    framed = b"".join(a.encode(pcm[i : i + 640]) for i in range(0, len(pcm), 640))
    assert framed == b.encode(pcm)
    # ...and a stream's state is its own: a fresh object starts from the reset state.
    assert codec_for("G722").encode(pcm[:640]) == framed[:160]
    assert a.encode(pcm[:640]) != framed[:160]


def test_codecs_refuse_malformed_pcm() -> None:
    with pytest.raises(CodecError, match="even number of bytes"):
        PCMU().encode(b"\x00\x01\x02")
    with pytest.raises(CodecError, match="even number of bytes"):
        PCMA("numpy").encode(b"\x00")
    with pytest.raises(CodecError, match="odd number of samples"):
        G722().encode(bytes(6))
    with pytest.raises(CodecError, match=r"unknown G\.711 backend"):
        PCMU("libc")  # type: ignore[arg-type]


# --- codec round trips measured -----------------------------------------------------

# Thresholds: G.711 of a -6 dBFS tone measures 34-36 dB here (the ~38 dB textbook figure
# less the correlated error of 8 samples per period); G.722 at 64 kbit/s measures 47 dB.
SNR_FLOOR_DB = {"PCMU": 30.0, "PCMA": 30.0, "G722": 40.0}


@pytest.mark.parametrize("name", ["PCMU", "PCMA", "G722"])
def test_1khz_tone_survives_encode_decode(name: str) -> None:
    codec = codec_for(name)
    rate = codec.sample_rate
    decoded = _round_trip(codec, tone(1000, 1000, rate, level=0.5, ramp_ms=0))
    steady = decoded[2 * rate // 10 :]  # skip 200 ms: G.722's ADPCM adapts from reset
    assert dominant_frequency(steady, rate) == pytest.approx(1000.0, abs=2.0)
    assert goertzel(steady, rate, 1000) == pytest.approx(0.5, abs=0.01)
    assert sinusoid_snr_db(steady, rate, 1000) > SNR_FLOOR_DB[name]
    if name == "G722":  # wideband: a 6 kHz tone also goes through, which G.711 cannot carry
        wide = _round_trip(G722(), tone(6000, 500, 16000, ramp_ms=0))[3200:]
        assert dominant_frequency(wide, 16000) == pytest.approx(6000.0, abs=2.0)


# --- resampling ------------------------------------------------------------------


def test_resample_8k_to_16k_keeps_tone_and_doubles_length() -> None:
    pcm = tone(1000, 1000, 8000, ramp_ms=0)
    up = resample(pcm, 8000, 16000)
    assert len(up) == 2 * len(pcm)
    middle = up[3200:-3200]  # away from the zero-padded ends
    assert dominant_frequency(middle, 16000) == pytest.approx(1000.0, abs=1.0)
    assert goertzel(middle, 16000, 1000) == pytest.approx(0.5, abs=0.005)
    assert sinusoid_snr_db(middle, 16000, 1000) > 60.0


def test_resample_16k_to_8k_filters_what_would_alias() -> None:
    keep = resample(tone(1000, 1000, 16000, ramp_ms=0), 16000, 8000)
    assert len(keep) == 16000
    assert goertzel(keep[1600:-1600], 8000, 1000) == pytest.approx(0.5, abs=0.005)
    # 6 kHz cannot exist at 8 kHz; unfiltered it would fold to 2 kHz at full level.
    folded = resample(tone(6000, 1000, 16000, ramp_ms=0), 16000, 8000)[1600:-1600]
    assert goertzel(folded, 8000, 2000) < 0.001
    assert rms_dbfs(folded) < -60.0


def test_resample_identity_and_errors() -> None:
    pcm = tone(440, 100, 8000)
    assert resample(pcm, 8000, 8000) == pcm
    assert resample(b"", 8000, 16000) == b""
    with pytest.raises(ValueError, match="positive"):
        resample(pcm, 0, 8000)


# --- tones ------------------------------------------------------------------------


def test_beep_is_1khz_for_400ms() -> None:
    pcm = beep()
    assert len(pcm) == 2 * 3200
    assert dominant_frequency(pcm, 8000) == pytest.approx(1000.0, abs=1.0)
    assert rms_dbfs(pcm) == pytest.approx(-9.0, abs=0.3)  # 0.5 peak: -6 dB, sine RMS -3 dB
    wide = beep(16000)
    assert len(wide) == 2 * 6400
    assert dominant_frequency(wide, 16000) == pytest.approx(1000.0, abs=1.0)
    ints = _ints(pcm)
    assert ints[0] == 0 and abs(ints[-1]) < 200  # faded in and out: no click


def test_silence_and_measurements() -> None:
    assert silence(20) == bytes(320)
    assert silence(20, 16000) == bytes(640)
    assert rms_dbfs(silence(100)) == float("-inf")
    two = np.frombuffer(tone(697, 200, 8000, 0.3, 0), "<i2").astype(np.int32) + np.frombuffer(
        tone(1209, 200, 8000, 0.2, 0), "<i2"
    )
    dtmf_1 = two.astype("<i2").tobytes()  # the two tones of key '1'
    assert goertzel(dtmf_1, 8000, 697) == pytest.approx(0.3, abs=0.01)
    assert goertzel(dtmf_1, 8000, 1209) == pytest.approx(0.2, abs=0.01)
    assert goertzel(dtmf_1, 8000, 941) < 0.01
    assert dominant_frequency(dtmf_1, 8000) == pytest.approx(697.0, abs=2.0)
    with pytest.raises(ValueError, match="between 0 and 4000"):
        tone(5000, 10, 8000)


def test_without_audioop_the_numpy_backend_is_chosen() -> None:
    # What Python 3.13+ looks like: ``import audioop`` fails.
    script = (
        "import sys; sys.modules['audioop'] = None\n"
        "from media import codecs\n"
        "assert not codecs.AUDIOOP_AVAILABLE and codecs.DEFAULT_G711_BACKEND == 'numpy'\n"
        "assert codecs.codec_for('PCMU').backend == 'numpy'\n"
        "try:\n"
        "    codecs.PCMA('audioop')\n"
        "except codecs.CodecError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert done.stdout.strip() == "the audioop G.711 backend is not available on this Python"


def test_integer_decimation_fast_path_equals_the_polyphase_filter() -> None:
    """16 kHz -> 8 kHz (G.722 recordings) takes a one-phase path; same numbers as the
    general polyphase code (a 3:2 ratio forced through it for the same taps)."""
    import numpy as np

    from media import codecs

    x = np.random.default_rng(7).normal(0, 3000, 16000 + 13)
    fast = codecs.resample_float(x, 16000, 8000)
    # The general path, by hand: output n at input 2n, the phase-0 weights.
    cutoff = codecs._RESAMPLE_ROLLOFF * 0.5
    width = codecs._RESAMPLE_HALF_TAPS / cutoff
    reach = int(np.ceil(width))
    taps = np.arange(-reach + 1, reach + 1)
    d = -taps.astype(float)
    window = 0.42 + 0.5 * np.cos(np.pi * d / width) + 0.08 * np.cos(2 * np.pi * d / width)
    h = np.where(np.abs(d) < width, cutoff * np.sinc(cutoff * d) * window, 0.0)
    padded = np.concatenate([np.zeros(reach), x, np.zeros(reach + 1)])
    slow = np.array([padded[2 * n + taps + reach] @ h for n in range(len(fast))])
    assert np.max(np.abs(fast - slow)) < 1e-6
