"""The audio files a directory names: voicemail greetings, IVR prompts, hold-music playlists.

Checked once, when a directory *file* is loaded (``provision apply|check``,
``serve --directory``), relative paths taken from the file's own folder:

* a file that exists is validated: a greeting (and an IVR's ``prompt``) must be what the admin guide
  says (PCM, 8 kHz, 16-bit, mono, at most 10 MB: :func:`media.wav.validate_greeting`),
  a hold-music file any integer-PCM WAV the engine can convert
  (:func:`media.wav.wav_info`). A bad file refuses the directory whole, with
  the table and key named, like every other error;
* the path of a file found is stored absolute, so the engine finds it
  whatever its working directory;
* a file that does not exist is a *warning*, not an error: a directory may be
  provisioned before its audio is copied. The engine looks for it again
  (under its data dir, then its working directory) each time it plays; a
  greeting still missing then gives the beep only, a playlist the built-in
  tune, and the log names the file.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from media.wav import WavError, validate_greeting, wav_info
from provisioning.model import STATUSES, Directory, Forwarding, StatusRules, User

__all__ = ["render_ivr_texts", "resolve_media_files"]


class _Checker:
    def __init__(self, source: str, base: Path) -> None:
        self.source = source
        self.base = base
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def path(self, where: str, name: str, greeting: bool) -> str:
        if greeting and name == "default":
            return name
        path = Path(name)
        if not path.is_absolute():
            path = self.base / path
        if not path.exists():
            self.warnings.append(f"{self.source}: {where}: '{name}' not found (looked in "
                                 f"{self.base}); the engine looks again under its data dir "
                                 "when it plays it")
            return name
        try:
            if greeting:
                validate_greeting(path)
            else:
                wav_info(path)
        except WavError as exc:
            self.errors.append(f"{self.source}: {where}: {exc}")
            return name
        return str(path.resolve())

    def playlist(self, where: str, names: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(self.path(f"{where}[{i}]", n, greeting=False) for i, n in enumerate(names))

    def user(self, index: int, user: User) -> User:
        where = f"users[{index}]"
        voicemail = replace(user.voicemail, greeting=self.path(
            f"{where}.voicemail.greeting", user.voicemail.greeting, greeting=True))
        rules: dict[str, StatusRules] = {}
        for status in STATUSES:
            r: StatusRules = getattr(user.forwarding, status)
            rules[status] = replace(r, greeting=self.path(
                f"{where}.forwarding.{status}.greeting", r.greeting, greeting=True))
        return replace(user, voicemail=voicemail, forwarding=Forwarding(**rules))


def resolve_media_files(directory: Directory, source: str,
                        base: Path) -> tuple[Directory, list[str], list[str]]:
    """``(directory with absolute paths, errors, warnings)`` (see the module notes)."""
    check = _Checker(source, base)
    system = replace(directory.system,
                     hold_music=check.playlist("system.hold_music", directory.system.hold_music))
    numbers = tuple(replace(n, hold_music=check.playlist(f"numbers[{i}].hold_music",
                                                         n.hold_music))
                    for i, n in enumerate(directory.numbers))
    users = tuple(check.user(i, u) for i, u in enumerate(directory.users))
    # An IVR prompt is held to the greeting's rules: it is played the same way.
    ivrs = tuple(replace(v, prompt=check.path(f"ivrs[{i}].prompt", v.prompt, greeting=True))
                 if v.prompt else v for i, v in enumerate(directory.ivrs))
    queues = tuple(replace(q, hold_music=check.playlist(f"queues[{i}].hold_music", q.hold_music))
                   for i, q in enumerate(directory.queues))
    resolved = replace(directory, system=system, numbers=numbers, users=users, ivrs=ivrs,
                       queues=queues)
    return resolved, check.errors, check.warnings


def render_ivr_texts(directory: Directory, data_dir: Path) -> list[str]:
    """Speak each IVR's ``text`` to its WAV under ``data_dir`` now (``provision apply``,
    ``serve --directory``), so that the first caller does not wait for it; what
    cannot be rendered is a warning (the engine tries again when it plays it)."""
    from media.prompts.render import RenderError, render_text

    warnings: list[str] = []
    for i, ivr in enumerate(directory.ivrs):
        if not ivr.text:
            continue
        try:
            render_text(data_dir, ivr.text, ivr.language)
        except (RenderError, OSError) as exc:
            warnings.append(f"ivrs[{i}].text: not rendered: {exc}")
    return warnings
