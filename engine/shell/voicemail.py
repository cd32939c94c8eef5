"""The voicemail workflow on a call's endpoint: leave a message, or the mailbox menu.

A message: greeting, beep, record until the caller hangs up (or the limit), the
file into the mailbox folder and its row into the store (queued while the store is
away), then the owner's email.
The endpoint belongs to :class:`~engine.shell.media_jobs.MediaJobs`, which closes
it after; this module owns the recorders of messages being left.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path

import structlog

from engine.calls.events import StartMailbox, StartVoicemail
from engine.services.mail import email_voicemail
from media.endpoint import MediaEndpoint
from media.session import Clip, MediaService, Pcm, Recorder
from media.tones import beep
from media.wav import WavError, load_wav
from provisioning.mailbox import mailbox_dir
from provisioning.model import Directory, VoicemailMessage
from provisioning.store import Store

__all__ = ["MIN_MESSAGE_SECONDS", "Voicemail"]

log = structlog.get_logger("switchboard.app")

MIN_MESSAGE_SECONDS = 0.5  # shorter recordings (a hang-up at the beep) are not kept

CallRef = tuple[str, str]


class Voicemail:
    """Messages being left (their recorders) and mailbox sessions, one task each."""

    def __init__(self, media: MediaService, store: Store, data_dir: Path,
                 directory: Callable[[], Directory], resolve: Callable[[str], Path],
                 hangup: Callable[[CallRef], None],
                 spawn: Callable[[Coroutine[object, object, None]], None],
                 save: Callable[[VoicemailMessage], Awaitable[None]]) -> None:
        self.media = media
        self.store = store
        # A message's row: through the store link, which queues it while the store is
        # away (the caller has left it, and the WAV is on disk already).
        self.save = save
        self.data_dir = data_dir
        self.directory = directory  # the engine's current snapshot
        self.resolve = resolve  # a prompt or greeting name -> its file
        self.hangup = hangup  # the engine hangs up the call (its Sends carried out)
        self.spawn = spawn  # background work, waited for at shutdown
        self.recorders: dict[CallRef, Recorder] = {}

    def stop(self, call: CallRef) -> bool:
        """The caller hung up: the message being recorded on ``call`` ends (and is
        kept). False when none is."""
        recorder = self.recorders.get(call)
        if recorder is None:
            return False
        recorder.stop("hangup")  # the voicemail task saves and closes
        return True

    def stop_all(self) -> None:
        for recorder in list(self.recorders.values()):
            recorder.stop("hangup")  # messages being left are kept

    async def leave(self, job: StartVoicemail, endpoint: MediaEndpoint) -> None:
        """Greeting, beep, record; the message goes to the store; then hang up."""
        try:
            endpoint.configure(job.negotiated)
            clips: list[Clip] = []
            if job.greeting != "default":
                try:  # a greeting that cannot be played must not lose the message
                    clips.append(load_wav(self.resolve(job.greeting)))
                except WavError as exc:
                    log.warning("greeting unusable, playing the beep only", box=job.box,
                                error=str(exc))
            clips.append(Pcm(beep()))
            player = await self.media.play(endpoint, clips)
            await player.wait()
            if endpoint.closed:
                return  # the caller hung up during the greeting
            message_id = uuid.uuid4().hex
            folder = mailbox_dir(self.data_dir, job.box)
            folder.mkdir(parents=True, exist_ok=True)
            recorder = self.media.record(endpoint, folder / f"{message_id}.wav",
                                         max_seconds=job.max_seconds)
            self.recorders[job.call] = recorder
            recording = await recorder.wait()
            if recording.duration >= MIN_MESSAGE_SECONDS:
                message = VoicemailMessage(
                    id=message_id, box=job.box, caller=job.caller, time=time.time(),
                    duration=recording.duration, path=str(recording.path.resolve()))
                await self.save(message)
                log.info("voicemail left", call_id=job.call_id, box=job.box, id=message_id,
                         seconds=round(recording.duration, 1), ended_by=recording.reason)
                self.email(message)
            else:
                recording.path.unlink(missing_ok=True)
            if recording.reason != "hangup":
                self.hangup(job.call)
        except Exception:
            log.exception("voicemail failed", call_id=job.call_id, box=job.box)
            self.hangup(job.call)
        finally:
            self.recorders.pop(job.call, None)

    async def mailbox(self, job: StartMailbox, endpoint: MediaEndpoint) -> None:
        """The mailbox menu for its owner (PIN, listen, delete), then hang up."""
        from engine.services.mailbox_access import serve_mailbox

        directory = self.directory()
        user = directory.user(job.box)
        try:
            if user is None:
                raise LookupError(f"mailbox {job.box} has no user")
            endpoint.configure(job.negotiated)
            await serve_mailbox(self.media, endpoint, self.store, user,
                                tz=directory.timezone_for(user))
        except Exception:
            log.exception("mailbox session failed", call_id=job.call_id, box=job.box)
        finally:
            if not endpoint.closed:
                self.hangup(job.call)

    def email(self, message: VoicemailMessage) -> None:
        """Email the message in the background per the mailbox's ``voicemail.email``,
        its times in the owner's time zone (their department's, as the mailbox menu)."""
        directory = self.directory()
        user = directory.user(message.box)
        if user is not None and user.voicemail.email != "none":
            self.spawn(email_voicemail(self.store, directory.system, user, message,
                                       tz=directory.timezone_for(user)))
