"""The media of IVR menus: the prompt to the caller, the caller's keys back.

The call layer decides everything (``engine.calls.ivr``); this service does
what it is told on the endpoint facing the caller of an anchored call:

* ``IvrPlay``: play the IVR's prompt (a WAV, looked up like hold music: absolute,
  else under the data dir, else the working directory; or its ``text``,
  rendered once to ``DATA_DIR/ivr-prompts`` by :func:`media.prompts.render.render_text`;
  or a list of built-in prompt files, a queue caller's position)
  and report its end (``on_prompt_done`` with the play's generation). A prompt
  that cannot be played is logged and reported done at once: the caller still
  gets the menu's timer and keys;
* every key the endpoint receives (RFC 4733) from the first ``IvrPlay`` on goes
  to ``on_digit``;
* ``IvrQuiet``: stop the prompt; with ``done`` stop listening too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from engine.calls.events import IvrPlay, IvrQuiet
from media.codecs import CodecError
from media.endpoint import MediaEndpoint, MediaError
from media.prompts import Language
from media.prompts.render import RenderError, render_text
from media.session import MediaService, Player
from media.wav import WavError

__all__ = ["IvrMedia"]

log = structlog.get_logger("switchboard.media")

Key = tuple[str, str]


@dataclass(slots=True, eq=False)
class _Menu:
    endpoint: MediaEndpoint
    unsubscribe: Callable[[], None]
    player: Player | None = None
    generation: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class IvrMedia:
    """IVR prompts and keys for one engine process."""

    def __init__(self, media: MediaService, data_dir: Path,
                 endpoint_of: Callable[[Key], MediaEndpoint | None],
                 on_digit: Callable[[Key, str], None],
                 on_prompt_done: Callable[[Key, int], None]) -> None:
        self.media = media
        self.data_dir = data_dir
        self.endpoint_of = endpoint_of  # the endpoint facing the caller of a call
        self.on_digit = on_digit
        self.on_prompt_done = on_prompt_done
        self.menus: dict[Key, _Menu] = {}

    def apply(self, action: IvrPlay | IvrQuiet) -> None:
        if isinstance(action, IvrQuiet):
            self.quiet(action.call, action.done)
            return
        menu = self.menus.get(action.call)
        if menu is None:
            endpoint = self.endpoint_of(action.call)
            if endpoint is None or endpoint.closed:
                return
            key = action.call
            menu = _Menu(endpoint, endpoint.on_dtmf(lambda digit: self.on_digit(key, digit)))
            self.menus[key] = menu
        self._stop_player(menu)
        menu.generation = action.generation
        try:
            menu.endpoint.configure(action.negotiated)
        except MediaError as exc:
            log.warning("ivr: media not configured", call_id=action.call_id, error=str(exc))
        task = asyncio.create_task(self._play(action.call, menu, action))
        menu.tasks.add(task)
        task.add_done_callback(menu.tasks.discard)

    def quiet(self, key: Key, done: bool) -> None:
        menu = self.menus.get(key)
        if menu is None:
            return
        self._stop_player(menu)
        if done:
            del self.menus[key]
            menu.unsubscribe()
            for task in menu.tasks:
                task.cancel()

    def close(self, key: Key) -> None:
        """The call ended: forget its menu."""
        self.quiet(key, done=True)

    def _stop_player(self, menu: _Menu) -> None:
        menu.generation = -1  # whatever plays now ends as a stale play
        if menu.player is not None and menu.player.playing:
            menu.player.stop()
        menu.player = None

    async def _play(self, key: Key, menu: _Menu, action: IvrPlay) -> None:
        generation = action.generation
        completed = False
        try:
            # built-in prompts are committed files: played at once, nothing to render
            paths = [Path(p) for p in action.prompts] or [await self._prompt(action)]
            if menu.generation != generation or menu.endpoint.closed:
                return
            player = menu.player = await self.media.play(menu.endpoint, paths)
            completed = await player.wait()
        except (MediaError, CodecError, WavError, RenderError, OSError) as exc:
            log.error("ivr prompt cannot be played", call_id=action.call_id,
                      prompt=action.prompt or None, error=str(exc))
            completed = True  # the menu goes on: its timer and keys still work
        if completed and menu.generation == generation and self.menus.get(key) is menu:
            self.on_prompt_done(key, generation)

    async def _prompt(self, action: IvrPlay) -> Path:
        if action.prompt:
            path = Path(action.prompt)
            if path.is_absolute():
                return path
            in_data = self.data_dir / path
            return in_data if in_data.exists() or not path.exists() else path
        language: Language = "fr" if action.language == "fr" else "en"
        return await asyncio.to_thread(render_text, self.data_dir, action.text, language)
