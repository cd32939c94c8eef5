"""Tone and silence generation, and measuring audio by numbers; sans-I/O.

PCM here is always 16-bit signed little-endian mono (``pcm16``), as produced
and consumed by :mod:`media.codecs`. Levels are fractions of full scale
(1.0 = a sine peaking at 32767).
"""

from __future__ import annotations

import math

import numpy as np

from media.codecs import FloatArray, array_to_pcm, pcm_to_array

BEEP_HZ = 1000.0
BEEP_MS = 400
BEEP_LEVEL = 0.5
"""The voicemail "record after the tone" beep: 1 kHz, 400 ms, -6 dBFS."""


def _samples(duration_ms: float, rate: int) -> int:
    if rate <= 0:
        raise ValueError(f"sample rate must be positive, got {rate}")
    if duration_ms < 0:
        raise ValueError(f"duration must not be negative, got {duration_ms} ms")
    return round(rate * duration_ms / 1000)


def silence(duration_ms: float, rate: int = 8000) -> bytes:
    """``duration_ms`` of digital silence."""
    return bytes(2 * _samples(duration_ms, rate))


def tone(
    freq: float,
    duration_ms: float,
    rate: int = 8000,
    level: float = BEEP_LEVEL,
    ramp_ms: float = 5.0,
) -> bytes:
    """A steady sine tone at ``level`` of full scale.

    The first and last ``ramp_ms`` fade in and out (raised cosine) so the
    tone starts and stops without a click; ``ramp_ms=0`` gives hard edges.
    """
    if not 0.0 <= level <= 1.0:
        raise ValueError(f"level is a fraction of full scale (0..1), got {level}")
    if not 0.0 < freq < rate / 2:
        raise ValueError(f"tone frequency {freq} Hz must be between 0 and {rate / 2} Hz")
    n = _samples(duration_ms, rate)
    t = np.arange(n, dtype=np.float64) / rate
    wave = level * 32767.0 * np.sin(2 * np.pi * freq * t)
    ramp = min(_samples(ramp_ms, rate), n // 2)
    if ramp > 0:
        fade = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
        wave[:ramp] *= fade
        wave[n - ramp :] *= fade[::-1]
    return array_to_pcm(wave)


# The built-in hold music: a slow arpeggio (C major, A minor, F major, G major),
# soft notes with long fades, 8 s per loop. It ships in code, so a fresh install
# has music on hold before anyone uploads a playlist.
_TUNE = ((261.63, 329.63, 392.00, 329.63), (220.00, 261.63, 329.63, 261.63),
         (174.61, 220.00, 261.63, 220.00), (196.00, 246.94, 293.66, 246.94))


def hold_tune(rate: int = 8000) -> bytes:
    """The default hold music (one 8 s loop), 16-bit PCM at ``rate``."""
    notes = [tone(f, 500, rate, level=0.18, ramp_ms=60) for chord in _TUNE for f in chord]
    return b"".join(notes)


RINGBACK_HZ = (440.0, 480.0)
RINGBACK_ON_MS, RINGBACK_OFF_MS = 2000, 4000
"""The North American ringback (ANSI T1.401): 440 + 480 Hz, 2 s on, 4 s off."""


def ringback(rate: int = 8000) -> bytes:
    """One cycle of the ringback tone (6 s), for a caller that hears the engine's
    early media while a call is not answered yet."""
    low, high = (pcm_to_array(tone(hz, RINGBACK_ON_MS, rate, level=0.15, ramp_ms=20))
                 for hz in RINGBACK_HZ)
    return array_to_pcm(low.astype(np.int32) + high) + silence(RINGBACK_OFF_MS, rate)


def beep(rate: int = 8000) -> bytes:
    """The voicemail beep: 1 kHz for 400 ms."""
    return tone(BEEP_HZ, BEEP_MS, rate)


def _float(pcm16: bytes) -> FloatArray:
    return pcm_to_array(pcm16).astype(np.float64) / 32768.0


def goertzel(pcm16: bytes, rate: int, freq: float) -> float:
    """Amplitude (fraction of full scale) of the ``freq`` component of ``pcm16``.

    This is the value Goertzel's algorithm computes, a single DFT bin at an
    arbitrary frequency, evaluated as one numpy dot product instead of the
    per-sample recurrence. A full-scale sine at ``freq`` gives about 1.0 when
    the buffer holds many periods; other frequencies leak a little (no window).
    """
    x = _float(pcm16)
    if len(x) == 0:
        return 0.0
    phase = 2 * np.pi * freq / rate * np.arange(len(x))
    bin_value = complex(np.dot(x, np.exp(-1j * phase)))
    return 2.0 * abs(bin_value) / len(x)


def dominant_frequency(pcm16: bytes, rate: int) -> float:
    """The frequency (Hz) of the strongest spectral peak, DC excluded.

    Hann-windowed real FFT, refined between bins by fitting a parabola
    through the log magnitudes of the peak bin and its neighbours (accurate
    to a small fraction of a bin, rate / len).
    """
    x = _float(pcm16)
    if len(x) < 4:
        raise ValueError("need at least 4 samples to find a frequency")
    spectrum = np.abs(np.fft.rfft((x - x.mean()) * np.hanning(len(x))))
    spectrum[0] = 0.0
    k = int(np.argmax(spectrum))
    offset = 0.0
    if 0 < k < len(spectrum) - 1:
        a, b, c = (math.log(max(float(v), 1e-300)) for v in spectrum[k - 1 : k + 2])
        denominator = a - 2 * b + c
        if denominator != 0:
            offset = 0.5 * (a - c) / denominator
    return (k + offset) * rate / len(x)


def sinusoid_snr_db(pcm16: bytes, rate: int, freq: float) -> float:
    """Signal-to-noise ratio (dB) of a signal meant to be a pure ``freq`` tone.

    Least-squares fit of ``a*cos + b*sin + dc`` at ``freq``; the fit is the
    signal, everything else (quantization noise, distortion, other tones) is
    noise. Independent of delay and phase, so it measures codec round trips.
    """
    x = _float(pcm16)
    if len(x) < 3:
        raise ValueError("need at least 3 samples to measure a tone")
    w = 2 * np.pi * freq / rate * np.arange(len(x))
    basis = np.column_stack([np.cos(w), np.sin(w), np.ones(len(x))])
    coeffs, *_ = np.linalg.lstsq(basis, x, rcond=None)
    fitted = basis[:, :2] @ coeffs[:2]
    noise = x - basis @ coeffs
    signal_power = float(np.mean(fitted**2))
    noise_power = float(np.mean(noise**2))
    if noise_power == 0.0:
        return math.inf
    if signal_power == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal_power / noise_power)


def rms_dbfs(pcm16: bytes) -> float:
    """RMS level in dB full scale: 0 dBFS is a full-scale square wave, a full-scale sine is -3."""
    x = _float(pcm16)
    if len(x) == 0:
        return -math.inf
    rms = float(np.sqrt(np.mean(x**2)))
    return -math.inf if rms == 0.0 else 20.0 * math.log10(rms)
