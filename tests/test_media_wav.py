"""media.wav: loading any PCM WAV into 16-bit mono, greeting validation, writing."""

from __future__ import annotations

import struct
import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from media.tones import dominant_frequency, goertzel, tone
from media.wav import (
    GREETING_MAX_BYTES,
    GreetingRefused,
    WavError,
    load_wav,
    validate_greeting,
    wav_info,
    write_wav,
)

RULE = "uploaded greetings must be PCM, 8 kHz, 16-bit, mono, at most 10 MB"


def _sine(freq: float, seconds: float, rate: int, level: float = 0.5) -> npt.NDArray[np.float64]:
    return level * np.sin(2 * np.pi * freq * np.arange(round(seconds * rate)) / rate)


def _encode(samples: npt.NDArray[np.float64], width: int) -> bytes:
    """Float samples (interleaved) as integer PCM the way WAV stores it."""
    if width == 1:
        return (np.round(samples * 127) + 128).astype(np.uint8).tobytes()
    if width == 2:
        return np.round(samples * 32767).astype("<i2").tobytes()
    if width == 3:
        v = np.round(samples * 8388607).astype("<i4").tobytes()
        return b"".join(v[i : i + 3] for i in range(0, len(v), 4))
    return np.round(samples * 2147483647).astype("<i4").tobytes()


def _write(
    path: Path, rate: int, width: int, channels: list[npt.NDArray[np.float64]]
) -> Path:
    interleaved = np.column_stack(channels).reshape(-1)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(len(channels))
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(_encode(interleaved, width))
    return path


def _riff(fmt: bytes, data: bytes) -> bytes:
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _extensible_fmt(channels: int, rate: int, bits: int, subformat: int) -> bytes:
    block = channels * bits // 8
    guid = struct.pack("<H", subformat) + bytes.fromhex("000000001000800000aa00389b71")
    return struct.pack(
        "<HHIIHHHHI", 0xFFFE, channels, rate, rate * block, block, bits, 22, bits, 3
    ) + guid


# --- loading and conversion ----------------------------------------------------------


def test_stereo_44k1_24bit_becomes_mono_8k_16bit_keeping_440hz(tmp_path: Path) -> None:
    left = _sine(440, 1.5, 44100, 0.5)
    right = _sine(440, 1.5, 44100, 0.3)
    path = _write(tmp_path / "moh.wav", 44100, 3, [left, right])
    audio = load_wav(path, 8000)
    assert audio.rate == 8000
    assert audio.samples == 12000  # 1.5 s
    assert (audio.source.rate, audio.source.bits, audio.source.channels) == (44100, 24, 2)
    assert audio.source.describe().startswith("44100 Hz, 24-bit, stereo, 1.50 s")
    middle = audio.pcm16[1600:-1600]
    assert dominant_frequency(middle, 8000) == pytest.approx(440.0, abs=1.0)
    assert goertzel(middle, 8000, 440) == pytest.approx(0.4, abs=0.01)  # mean of 0.5 and 0.3


def test_same_file_at_16k_for_g722(tmp_path: Path) -> None:
    path = _write(tmp_path / "moh.wav", 44100, 3, [_sine(5000, 1.0, 44100)] * 2)
    wide = load_wav(path, 16000)
    assert wide.samples == 16000
    assert dominant_frequency(wide.pcm16[3200:-3200], 16000) == pytest.approx(5000.0, abs=1.0)
    narrow = load_wav(path, 8000)  # 5 kHz is above 8 kHz's Nyquist: filtered, not folded
    assert goertzel(narrow.pcm16[1600:-1600], 8000, 3000) < 0.001


@pytest.mark.parametrize("width", [1, 2, 3, 4])
@pytest.mark.parametrize("rate", [8000, 11025, 22050, 48000])
def test_every_width_and_rate(tmp_path: Path, width: int, rate: int) -> None:
    path = _write(tmp_path / "t.wav", rate, width, [_sine(1000, 0.5, rate)])
    audio = load_wav(path, 8000)
    assert audio.samples == audio.source.frames * 8000 // rate  # 0.5 s, floored at 11025 Hz
    middle = audio.pcm16[800:-800]
    assert dominant_frequency(middle, 8000) == pytest.approx(1000.0, abs=1.0)
    assert goertzel(middle, 8000, 1000) == pytest.approx(0.5, abs=0.01)


def test_16bit_mono_at_target_rate_is_loaded_unchanged(tmp_path: Path) -> None:
    pcm = tone(1000, 300, 8000)
    write_wav(tmp_path / "g.wav", pcm)
    audio = load_wav(tmp_path / "g.wav")
    assert audio.pcm16 == pcm
    upsampled = load_wav(tmp_path / "g.wav", 16000)
    assert upsampled.samples == 4800


def test_extensible_pcm_is_read(tmp_path: Path) -> None:
    data = _encode(_sine(1000, 0.25, 16000), 3)
    path = tmp_path / "ext.wav"
    path.write_bytes(_riff(_extensible_fmt(1, 16000, 24, 1), data))
    audio = load_wav(path, 8000)
    assert audio.source.bits == 24 and audio.samples == 2000
    assert dominant_frequency(audio.pcm16, 8000) == pytest.approx(1000.0, abs=2.0)


def test_odd_chunk_before_data_is_skipped(tmp_path: Path) -> None:
    fmt = struct.pack("<HHIIHH", 1, 1, 8000, 16000, 2, 16)
    data = tone(500, 100, 8000)
    body = b"WAVE" + b"LIST" + struct.pack("<I", 3) + b"abc\x00"  # odd size, padded
    body += b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", len(data)) + data
    path = tmp_path / "list.wav"
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    assert load_wav(path).pcm16 == data


# --- load errors -----------------------------------------------------------------------


def _fails(path: Path, message: str, **kwargs: int) -> None:
    with pytest.raises(WavError) as info:
        load_wav(path, **kwargs)
    assert str(info.value) == f"{path}: {message}"
    assert info.value.path == str(path)


def test_not_pcm(tmp_path: Path) -> None:
    float_fmt = struct.pack("<HHIIHH", 3, 1, 8000, 32000, 4, 32)
    (tmp_path / "f.wav").write_bytes(_riff(float_fmt, np.zeros(80, "<f4").tobytes()))
    _fails(
        tmp_path / "f.wav", "not PCM: the audio is IEEE float; save it as PCM (integer samples)"
    )
    ulaw_fmt = struct.pack("<HHIIHH", 7, 1, 8000, 8000, 1, 8)
    (tmp_path / "u.wav").write_bytes(_riff(ulaw_fmt, bytes(80)))
    _fails(tmp_path / "u.wav", "not PCM: the audio is u-law; save it as PCM (integer samples)")
    (tmp_path / "e.wav").write_bytes(_riff(_extensible_fmt(2, 48000, 32, 3), bytes(80)))
    _fails(tmp_path / "e.wav", "not PCM: the audio is IEEE float; save it as PCM (integer samples)")


def test_empty_unreadable_truncated_too_big(tmp_path: Path) -> None:
    (tmp_path / "zero.wav").write_bytes(b"")
    _fails(tmp_path / "zero.wav", "empty: the file has 0 bytes")
    write_wav(tmp_path / "nodata.wav", b"")
    _fails(tmp_path / "nodata.wav", "empty: no audio samples")
    _fails(tmp_path / "missing.wav", "unreadable: no such file")
    (tmp_path / "mp3.wav").write_bytes(b"ID3\x04" + bytes(100))
    _fails(tmp_path / "mp3.wav", "unreadable: not a WAV file (no RIFF/WAVE header)")
    (tmp_path / "nofmt.wav").write_bytes(b"RIFF\x04\x00\x00\x00WAVE")
    _fails(tmp_path / "nofmt.wav", "unreadable: no fmt chunk")
    write_wav(tmp_path / "cut.wav", bytes(1600))
    whole = (tmp_path / "cut.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(whole[:-800])
    _fails(tmp_path / "cut.wav", "truncated: the header says 800 frames, the file holds 400")
    _fails(tmp_path / "cut.wav", "too big: 844 bytes, the limit is 800 bytes", max_bytes=800)
    with pytest.raises(ValueError, match="target rate must be one of"):
        load_wav(tmp_path / "cut.wav", 44100)


def test_wav_info(tmp_path: Path) -> None:
    path = _write(tmp_path / "i.wav", 22050, 2, [_sine(300, 2.0, 22050)])
    info = wav_info(path)
    assert (info.rate, info.bits, info.channels, info.frames) == (22050, 16, 1, 44100)
    assert info.duration == 2.0
    assert info.file_size == path.stat().st_size


# --- greetings ---------------------------------------------------------------------------


def _refusal(path: Path) -> str:
    with pytest.raises(GreetingRefused) as info:
        validate_greeting(path)
    return str(info.value)


def test_valid_greeting(tmp_path: Path) -> None:
    path = tmp_path / "hello.wav"
    write_wav(path, tone(440, 2000, 8000))
    info = validate_greeting(path)
    assert (info.rate, info.bits, info.channels, info.frames) == (8000, 16, 1, 16000)


def test_greeting_refusals_name_every_problem(tmp_path: Path) -> None:
    cd = _write(tmp_path / "cd.wav", 44100, 2, [_sine(440, 0.1, 44100)] * 2)
    assert _refusal(cd) == f"{cd}: refused: {RULE}; this file is 44100 Hz, stereo"
    hi = _write(tmp_path / "hi.wav", 8000, 3, [_sine(440, 0.1, 8000)])
    assert _refusal(hi) == f"{hi}: refused: {RULE}; this file is 24-bit"
    all_wrong = _write(tmp_path / "x.wav", 16000, 1, [_sine(440, 0.1, 16000)] * 3)
    assert _refusal(all_wrong) == (
        f"{all_wrong}: refused: {RULE}; this file is 16000 Hz, 8-bit, 3 channels"
    )
    fl = tmp_path / "float.wav"
    fl.write_bytes(_riff(struct.pack("<HHIIHH", 3, 1, 8000, 32000, 4, 32), bytes(400)))
    assert _refusal(fl) == (
        f"{fl}: refused: {RULE}; this file is not PCM: the audio is IEEE float; "
        "save it as PCM (integer samples)"
    )
    assert _refusal(tmp_path / "none.wav") == (
        f"{tmp_path / 'none.wav'}: refused: {RULE}; this file is unreadable: no such file"
    )


def test_greeting_over_10_mb_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "long.wav"
    write_wav(big, bytes(GREETING_MAX_BYTES))  # 10 MiB of samples + 44 header bytes
    size = big.stat().st_size
    assert size == GREETING_MAX_BYTES + 44
    assert _refusal(big) == (
        f"{big}: refused: {RULE}; this file is {size} bytes (the limit is 10485760 bytes)"
    )
    ok = tmp_path / "max.wav"
    write_wav(ok, bytes(GREETING_MAX_BYTES - 44))
    assert validate_greeting(ok).file_size == GREETING_MAX_BYTES


# --- writing ------------------------------------------------------------------------------


def test_write_wav_round_trip(tmp_path: Path) -> None:
    pcm = tone(1000, 400, 16000)
    path = tmp_path / "beep.wav"
    write_wav(path, pcm, rate=16000)
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16000)
        assert w.readframes(w.getnframes()) == pcm
    assert sorted(p.name for p in tmp_path.iterdir()) == ["beep.wav"]  # no temporary left
    write_wav(path, tone(500, 100, 8000))  # replaces the file whole
    assert load_wav(path).samples == 800
    with pytest.raises(ValueError, match="even number of bytes"):
        write_wav(path, b"\x00")
    assert load_wav(path).samples == 800
