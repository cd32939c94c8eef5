"""An IVR's ``text`` as a WAV: the built-in prompts' generator, for admins' own words.

:func:`rendered_path` names the file (a hash of the language and the text, so
an edited text gets a new file and an unchanged one is never rendered twice);
:func:`render_text` writes it with espeak-ng exactly as
:mod:`media.prompts.build` writes the built-in prompts (same voices, speed,
trimming, level; 8 kHz, 16-bit, mono PCM). Rendered when a directory is
applied (``switchboard provision apply``, ``serve --directory``) and, for a
text set through the admin API or applied on another node, by the engine
the first time the IVR plays it.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

from media.prompts import Language
from media.prompts.build import RATE, VOICES, speak
from media.wav import write_wav

__all__ = ["RenderError", "render_text", "rendered_path"]

FOLDER = "ivr-prompts"
"""Where rendered texts go, under the data dir."""


class RenderError(RuntimeError):
    """The text cannot be spoken (espeak-ng missing or failing)."""


def rendered_path(data_dir: Path, text: str, language: Language) -> Path:
    digest = hashlib.sha256(f"{language}\0{text}".encode()).hexdigest()[:24]
    return data_dir / FOLDER / f"{language}-{digest}.wav"


def render_text(data_dir: Path, text: str, language: Language) -> Path:
    """The WAV of ``text`` spoken in ``language`` under ``data_dir`` (rendered once)."""
    path = rendered_path(data_dir, text, language)
    if path.exists():
        return path
    if shutil.which("espeak-ng") is None:
        raise RenderError("espeak-ng is not installed (apt-get install -y espeak-ng): an "
                          "IVR text cannot be spoken")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            pcm = speak(text, VOICES[language], Path(tmp))
        except Exception as exc:  # espeak-ng failed, or said nothing
            raise RenderError(f"espeak-ng could not speak the text: {exc}") from exc
        partial = Path(tmp) / path.name
        write_wav(partial, pcm, RATE)
        shutil.move(str(partial), path)  # whole or not at all, for a concurrent reader
    return path
