"""The engine's media commands carried out: endpoints, relays, voicemail jobs.

The call layer returns media commands (``engine.calls.events``) with its Sends;
:class:`MediaJobs` opens and closes the RTP endpoints facing callers (it owns
them), hands bridges to :class:`~engine.services.callmedia.CallMedia` and IVR
prompts and keys to :class:`~engine.services.ivrmedia.IvrMedia`, and runs
voicemail and mailbox sessions (:class:`~engine.shell.voicemail.Voicemail`) as
tasks. What a job learns (ports opened, a screening answered, a key pressed, a
prompt played, a message done) goes back to the engine, whose outcome the
``apply`` callback carries out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from pathlib import Path

from engine.calls.events import (
    BridgeMedia,
    IvrPlay,
    IvrQuiet,
    MediaCommand,
    OpenMedia,
    StartMailbox,
    StartVoicemail,
    StopMedia,
    UpdateMedia,
)
from engine.core import Engine, Outcome
from engine.services.callmedia import CallMedia
from engine.services.ivrmedia import IvrMedia
from engine.shell.voicemail import Voicemail
from media.endpoint import MediaEndpoint, MediaError
from media.session import MediaService
from provisioning.model import VoicemailMessage
from provisioning.store import Store

__all__ = ["MediaJobs"]

CallRef = tuple[str, str]


class MediaJobs:
    """Every call's media on this process: endpoints, relays, IVR menus, voicemail
    tasks."""

    def __init__(self, engine: Engine, store: Store, host: str, data_dir: Path,
                 apply: Callable[[Outcome], None],
                 save_voicemail: Callable[[VoicemailMessage], Awaitable[None]]) -> None:
        self.engine = engine
        self.apply = apply
        system = engine.directory.system
        self.media = MediaService(f"{system.rtp_port_min}-{system.rtp_port_max}",
                                  host=host or "0.0.0.0")
        self.endpoints: dict[CallRef, MediaEndpoint] = {}  # facing the caller
        self.calls_media = CallMedia(self.media, data_dir, self._screened)
        self.ivr_media = IvrMedia(self.media, data_dir, self.endpoints.get,
                                  self._ivr_digit, self._ivr_prompt_done)
        self.tasks: set[asyncio.Task[None]] = set()
        self.voicemail = Voicemail(self.media, store, data_dir, lambda: engine.directory,
                                   self.calls_media.resolve, self._hangup, self.spawn,
                                   save_voicemail)

    def run(self, action: MediaCommand) -> None:
        """Carry out one media command of the engine's outcome."""
        if isinstance(action, BridgeMedia):
            self.calls_media.apply(action)
        elif isinstance(action, IvrPlay | IvrQuiet):
            self.ivr_media.apply(action)
        elif isinstance(action, OpenMedia):
            self.spawn(self._open_media(action.call, action.bridge))
        elif isinstance(action, StartVoicemail):
            # A screened or early-media leg is over; or, a called party transferred by
            # its caller leaves the message from the endpoint facing it.
            kept = self.calls_media.detach(action.call, keep_callee=action.callee_side)
            if action.callee_side and kept is not None:
                self.endpoints[action.call] = kept  # the caller's side is closed
            self.spawn(self._on_endpoint(action.call, partial(self.voicemail.leave, action)))
        elif isinstance(action, StartMailbox):
            self.spawn(self._on_endpoint(action.call, partial(self.voicemail.mailbox, action)))
        elif isinstance(action, UpdateMedia):
            endpoint = self.endpoints.get(action.call)
            if endpoint is not None and not endpoint.closed:
                endpoint.configure(action.negotiated)
        elif isinstance(action, StopMedia):
            self.ivr_media.close(action.call)
            if self.voicemail.stop(action.call):
                return  # a message being left: its task saves it, then closes
            self.calls_media.close(action.call)
            endpoint = self.endpoints.pop(action.call, None)
            if endpoint is not None:
                endpoint.close()

    def spawn(self, work: Coroutine[object, object, None]) -> None:
        """Run ``work`` in the background; :meth:`close` waits for it (a while)."""
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def close(self) -> None:
        """Shutdown: messages being left are kept, jobs get 2 s to finish, then every
        endpoint and relay is closed."""
        self.voicemail.stop_all()
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=2.0)
        await self.calls_media.close_all()
        await self.media.close_all()

    def _screened(self, call: CallRef, accepted: bool) -> None:
        self.apply(self.engine.screened(call, accepted, time.monotonic()))

    def _ivr_digit(self, call: CallRef, digit: str) -> None:
        self.apply(self.engine.ivr_digit(call, digit, time.monotonic()))

    def _ivr_prompt_done(self, call: CallRef, generation: int) -> None:
        self.apply(self.engine.ivr_prompt_done(call, generation, time.monotonic()))

    def _hangup(self, call: CallRef) -> None:
        self.apply(self.engine.hangup(call, time.monotonic()))

    async def _open_media(self, call: CallRef, bridge: bool) -> None:
        """One endpoint facing the caller; with ``bridge`` a second facing the callees."""
        opened: list[MediaEndpoint] = []
        try:
            for _ in range(2 if bridge else 1):
                opened.append(await self.media.open_endpoint())
        except MediaError as exc:
            for endpoint in opened:
                endpoint.close()
            self.apply(self.engine.media_failed(call, str(exc), time.monotonic()))
            return
        self.endpoints[call] = opened[0]
        if bridge:
            self.calls_media.add(call, call[0], opened[0], opened[1])
        self.apply(self.engine.media_ready(call, tuple(e.rtp_port for e in opened),
                                           time.monotonic()))

    async def _on_endpoint(self, call: CallRef,
                           work: Callable[[MediaEndpoint], Awaitable[None]]) -> None:
        """A voicemail or mailbox session on the endpoint facing the caller, which is
        closed after it (the call's media ends with the session)."""
        endpoint = self.endpoints.get(call)
        if endpoint is None:
            return
        try:
            await work(endpoint)
        finally:
            gone = self.endpoints.pop(call, None)
            if gone is not None:
                gone.close()
