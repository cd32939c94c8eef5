"""Generate the mailbox prompts with espeak-ng: ``python -m media.prompts.build``.

Run by hand after changing :data:`media.prompts.TEXTS` (the WAV files are
committed; neither the build nor the tests need espeak-ng)::

    apt-get install -y espeak-ng
    .venv/bin/python -m media.prompts.build            # write media/prompts/{en,fr}/*.wav
    .venv/bin/python -m media.prompts.build --check    # only say what is missing or stale

Each text is spoken by espeak-ng (voice ``en-us`` or ``fr``, at
:data:`SPEED` words a minute) to a temporary WAV (22.05 kHz), which is loaded
and resampled to 8 kHz by :func:`media.wav.load_wav`; leading and trailing
silence is trimmed to :data:`EDGE_MS`, the peak is set to :data:`PEAK`
of full scale, and the result is written as 8 kHz, 16-bit, mono PCM by
:func:`media.wav.write_wav`. The silences (:data:`media.prompts.SILENCES`)
are written as they are. Files of names no longer in the catalogue are removed.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from media.codecs import array_to_pcm, pcm_to_array
from media.prompts import LANGUAGES, PROMPTS_DIR, SILENCES, TEXTS, Language, prompt_names
from media.tones import silence
from media.wav import load_wav, write_wav

RATE = 8000
SPEED = 160
"""espeak-ng words per minute (its default is 175; a little slower reads better on a phone)."""
VOICES: dict[Language, str] = {"en": "en-us", "fr": "fr"}
EDGE_MS = 60
"""Silence kept before and after the speech, so that prompts played one after another
have a short natural gap."""
PEAK = 0.7
"""Peak level, a fraction of full scale (about -3 dBFS)."""
THRESHOLD = 0.02
"""A sample louder than this (fraction of full scale) is speech when trimming."""


def speak(text: str, voice: str, workdir: Path) -> bytes:
    """``text`` spoken by espeak-ng, as 8 kHz 16-bit PCM, trimmed and normalised."""
    raw = workdir / "speech.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(SPEED), "-w", str(raw), text],
                   check=True, capture_output=True)
    x = pcm_to_array(load_wav(raw, RATE).pcm16).astype(np.float64) / 32768.0
    loud = np.flatnonzero(np.abs(x) > THRESHOLD)
    if len(loud) == 0:
        raise RuntimeError(f"espeak-ng said nothing for {text!r} ({voice})")
    edge = RATE * EDGE_MS // 1000
    x = x[max(0, loud[0] - edge) : loud[-1] + edge + 1]
    x = x * (PEAK / float(np.max(np.abs(x))))
    return array_to_pcm(x * 32768.0)


def build(out: Path = PROMPTS_DIR, languages: Sequence[Language] = LANGUAGES) -> int:
    """Write every prompt of ``languages`` under ``out``; returns the total bytes."""
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed: apt-get install -y espeak-ng")
    total = 0
    with tempfile.TemporaryDirectory() as tmp:
        for language in languages:
            folder = out / language
            folder.mkdir(parents=True, exist_ok=True)
            for name, text in TEXTS[language].items():
                write_wav(folder / f"{name}.wav", speak(text, VOICES[language], Path(tmp)), RATE)
            for name, ms in SILENCES.items():
                write_wav(folder / f"{name}.wav", silence(ms, RATE), RATE)
            known = set(prompt_names(language))
            for stale in folder.glob("*.wav"):
                if stale.stem not in known:
                    stale.unlink()
            size = sum(p.stat().st_size for p in folder.glob("*.wav"))
            print(f"{language}: {len(known)} prompts, {size} bytes")
            total += size
    print(f"total: {total} bytes")
    return total


def check(out: Path = PROMPTS_DIR) -> list[str]:
    """What is missing (names in the catalogue without a file) or stale (files of no name)."""
    problems = []
    for language in LANGUAGES:
        known = set(prompt_names(language))
        have = {p.stem for p in (out / language).glob("*.wav")}
        problems += [f"{language}/{n}.wav: missing" for n in sorted(known - have)]
        problems += [f"{language}/{n}.wav: not in the catalogue" for n in sorted(have - known)]
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m media.prompts.build", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="list missing or stale prompt files, write nothing")
    parser.add_argument("--language", choices=LANGUAGES, action="append",
                        help="only this language (repeatable; default: all)")
    args = parser.parse_args(argv)
    if args.check:
        problems = check()
        for problem in problems:
            print(problem)
        return 1 if problems else 0
    build(languages=args.language or LANGUAGES)
    return 0


if __name__ == "__main__":
    sys.exit(main())
