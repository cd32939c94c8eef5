"""What the call layer asks of the media service: the media commands.

Every entry point of the call layer returns one list: the transaction layer's
events (``Send`` and friends, ``engine.sip.transaction.Event``) and these commands,
in the order they arose. ``engine.core`` passes the commands on
(``Outcome.media``); ``engine.shell.media_jobs`` carries them out on real sockets
(``engine.services.callmedia`` for the relay of anchored calls, its own tasks for
voicemail and the mailbox menu) and reports back through the call layer's
``media_ready``, ``media_failed``, ``screened`` and ``hangup``.

Each command names its call by :data:`CallKey`, the caller's Call-ID and From
tag, which is how the media service files its endpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeGuard

from engine.sip.transaction import Event
from media import sdp

__all__ = [
    "MEDIA_COMMANDS",
    "BridgeMedia",
    "CallKey",
    "CallOutput",
    "IvrPlay",
    "IvrQuiet",
    "MediaCommand",
    "OpenMedia",
    "ScreenMode",
    "StartMailbox",
    "StartVoicemail",
    "StopMedia",
    "UpdateMedia",
    "is_media_command",
]

CallKey = tuple[str, str]  # (the caller's Call-ID, the caller's From tag)
# How an answered leg is asked before it takes the call: "rebound" (who calls,
# accept or refuse), "confirm" (press 1 to take the call), "" not asked.
ScreenMode = Literal["", "rebound", "confirm"]


@dataclass(frozen=True, slots=True)
class OpenMedia:
    """Open an RTP endpoint for ``call`` (two with ``bridge``: one facing the
    caller, one the callees); answer with ``media_ready`` (or ``media_failed``)."""

    call: CallKey
    bridge: bool = False


@dataclass(frozen=True, slots=True)
class StartVoicemail:
    """The caller was answered: play the greeting and a beep, then record."""

    call: CallKey
    call_id: str
    negotiated: sdp.Negotiated
    box: str
    greeting: str  # "default" or a WAV path
    max_seconds: int
    caller: str
    # The party leaving the message is on the endpoint facing the callee (it was
    # the called party of a call its caller transferred): record that one.
    callee_side: bool = False


@dataclass(frozen=True, slots=True)
class StartMailbox:
    """The owner of ``box`` called the voicemail number and was answered: the
    mailbox menu (PIN, listen, delete); hang up with ``hangup``."""

    call: CallKey
    call_id: str
    negotiated: sdp.Negotiated
    box: str


@dataclass(frozen=True, slots=True)
class UpdateMedia:
    """A new offer/answer on a call the engine answered (re-INVITE): follow it."""

    call: CallKey
    negotiated: sdp.Negotiated


@dataclass(frozen=True, slots=True)
class StopMedia:
    """The call ended: stop what plays or records, close the endpoint."""

    call: CallKey


@dataclass(frozen=True, slots=True)
class BridgeMedia:
    """The media state of an anchored call, sent on every change; the media
    service makes it so (idempotent): each endpoint follows its leg's offer/
    answer; RTP is relayed between them unless someone is on hold, and a held
    party hears ``playlist`` (empty: the system's, else the built-in tune)."""

    call: CallKey
    call_id: str
    caller_media: sdp.Negotiated | None
    callee_media: sdp.Negotiated | None
    music_to_caller: bool
    music_to_callee: bool
    playlist: tuple[str, ...]
    record: str  # why the call is recorded; "" not recorded
    parties: tuple[str, str]  # (caller, callee) for the recording's listing
    # Rebound screening: announce ``announce`` (the caller's number) to the callee in
    # ``language`` and report its key with ``screened``.
    announce: str = ""
    language: str = "en"
    # The callee side is being asked (rebound: who calls, accept or refuse; confirm:
    # press 1 to take the call); "" nothing to ask. Never relayed to the caller then.
    screen: ScreenMode = ""
    # The caller has our early media and nothing else feeds it (a confirm leg is
    # asked, or the leg that fed it was released): it hears a ringback tone.
    ringback_to_caller: bool = False
    # A parker still on the line hears "parked on 7 0 1" (this orbit) once, in
    # ``language``, on the callee side, until the call lets it go (the caller hears music).
    tell_orbit: str = ""


@dataclass(frozen=True, slots=True)
class IvrPlay:
    """An IVR's caller (answered, on the endpoint facing it, in ``negotiated``) hears
    its prompt: ``prompt`` (a WAV) or ``text`` rendered to speech in ``language``, or
    ``prompts``, built-in prompt files (``media/prompts``) said one after another.
    The media service reports the end of this play with its ``generation``
    (``ivr_prompt_done``) and every key the caller sends (RFC 4733) with
    ``ivr_digit``, until :class:`IvrQuiet` with ``done``."""

    call: CallKey
    call_id: str
    negotiated: sdp.Negotiated
    prompt: str
    text: str
    language: str
    generation: int
    prompts: tuple[str, ...] = ()  # built-in prompt files said in order (instead of the above)


@dataclass(frozen=True, slots=True)
class IvrQuiet:
    """Stop the IVR's prompt (a key interrupts it); with ``done`` stop listening to
    keys too: the caller chose, its call goes on."""

    call: CallKey
    done: bool = False


MediaCommand = (OpenMedia | StartVoicemail | StartMailbox | UpdateMedia | StopMedia | BridgeMedia
                | IvrPlay | IvrQuiet)
# The classes of MediaCommand, for isinstance where a function call per item costs
# (engine.core sorts every output of every input with it).
MEDIA_COMMANDS = (OpenMedia, StartVoicemail, StartMailbox, UpdateMedia, StopMedia, BridgeMedia,
                  IvrPlay, IvrQuiet)
# One item of what an entry point of the call layer returns.
CallOutput = Event | MediaCommand


def is_media_command(item: object) -> TypeGuard[MediaCommand]:
    """Whether ``item`` (of a call layer's output) is for the media service."""
    return isinstance(item, MEDIA_COMMANDS)
