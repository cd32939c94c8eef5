"""Listening to one's own mailbox by phone (the caller dialled the voicemail number).

Two parts:

* :class:`MailboxSession`, a sans-I/O state machine: it is fed events
  (:class:`Digit`, :class:`PromptDone`, :class:`Timeout`) and answers with a
  :class:`MenuReply`: actions to carry out (:class:`Play`, :class:`StopPlaying`,
  :class:`MarkRead`, :class:`Delete`, :class:`Hangup`) and how long to wait
  for the caller before a :class:`Timeout` (None: no timer; a prompt is
  playing and ends with :class:`PromptDone`).
* :func:`serve_mailbox`, the asyncio driver: loads the messages from the
  store, plays the prompts on the caller's media endpoint, feeds it the
  caller's RFC 4733 key presses, applies the store changes, and returns when
  the session hangs up or the endpoint closes.

The call flow and the keys (``docs/voicemail.md``):

1. PIN, unless the box has ``pin_required = false`` or no ``voicemail_pin``:
   "Please enter your PIN, followed by the pound key." Digits, then ``#``
   (or a pause of :data:`INTER_DIGIT_SECONDS`); ``*`` starts over. A key stops
   the prompt. Three wrong or empty entries: "Goodbye." and hang-up.
2. The summary: "You have 2 new messages and 1 old message" (or "You have no
   messages. Goodbye." and hang-up). A key skips it.
3. Each message in turn, new messages first, then old ones, each group
   oldest first: a header ("Message 1", then when
   ``read_datetime`` is ``ampm`` or ``24h`` the day and time, then when
   ``announce_caller`` the caller's number digit by digit), the recording,
   then the menu. A message is marked read when its recording starts.
4. The keys, during the header, the recording (barge-in) or the menu:

   ==========  ==========================================================
   ``1``       play the recording again (from the start)
   ``3``       delete the message ("Message deleted."), then the next one
   ``#``/``6`` the next message
   ``*``/``4`` the previous message (the first one again on the first)
   ``9``       "Goodbye." and hang-up
   ==========  ==========================================================

   Other keys are ignored. After the last message: "End of messages. For
   the previous message, press star. To end, press 9." With no key for
   :data:`MENU_SECONDS` a menu is said again, the third time it is
   "Goodbye." and hang-up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import enum
import hmac
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from engine.services.zones import zone
from media.codecs import CodecError
from media.endpoint import MediaEndpoint, MediaError
from media.prompts import (
    Language,
    ReadDatetime,
    datetime_names,
    digit_names,
    number_names,
    prompt_path,
)
from media.session import MediaService, Player
from media.wav import WavError
from provisioning.mailbox import delete_message
from provisioning.model import User, VoicemailMessage
from provisioning.store import Store

__all__ = [
    "FIRST_DIGIT_SECONDS",
    "INTER_DIGIT_SECONDS",
    "MAX_PIN_ATTEMPTS",
    "MAX_PIN_DIGITS",
    "MENU_REPEATS",
    "MENU_SECONDS",
    "Action",
    "Delete",
    "Digit",
    "Hangup",
    "MailboxSession",
    "MarkRead",
    "MenuInput",
    "MenuReply",
    "Play",
    "PromptDone",
    "StopPlaying",
    "Timeout",
    "serve_mailbox",
]

log = structlog.get_logger("switchboard.mailbox")

FIRST_DIGIT_SECONDS = 10.0
"""PIN: how long the caller has for the first digit once the prompt is over."""
INTER_DIGIT_SECONDS = 5.0
"""PIN: a pause this long after a digit ends the entry, as ``#`` would."""
MENU_SECONDS = 10.0
"""A menu waits this long for a key before it is said again."""
MENU_REPEATS = 3
"""The third silence after a menu ends the call."""
MAX_PIN_ATTEMPTS = 3
"""Wrong (or empty) PIN entries before "Goodbye"."""
MAX_PIN_DIGITS = 20
"""A PIN entry this long is checked without waiting for ``#``."""


# --- events in, actions out ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Digit:
    """A key press (RFC 4733): ``0-9 * # A-D``."""

    digit: str


@dataclass(frozen=True, slots=True)
class PromptDone:
    """The last :class:`Play` played to its end (not stopped by a newer one)."""


@dataclass(frozen=True, slots=True)
class Timeout:
    """The :attr:`MenuReply.timeout` of the last step passed with no other event."""


MenuInput = Digit | PromptDone | Timeout


@dataclass(frozen=True, slots=True)
class Play:
    """Play these files in order, replacing (stopping) whatever plays now."""

    paths: tuple[Path, ...]


@dataclass(frozen=True, slots=True)
class StopPlaying:
    """Stop what is playing (a key interrupted the prompt); no :class:`PromptDone` follows."""


@dataclass(frozen=True, slots=True)
class MarkRead:
    """The message was listened to: it becomes an old message."""

    id: str


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete the message: its store row and its WAV file."""

    id: str
    path: str


@dataclass(frozen=True, slots=True)
class Hangup:
    """The session is over: end the call."""


Action = Play | StopPlaying | MarkRead | Delete | Hangup


@dataclass(frozen=True, slots=True)
class MenuReply:
    """What to do after an event: ``actions`` in order, then wait for the next event,
    at most ``timeout`` seconds (then feed :class:`Timeout`); ``None``: no timer."""

    actions: tuple[Action, ...] = ()
    timeout: float | None = None


class _State(enum.Enum):
    PIN = "pin"
    SUMMARY = "summary"
    HEADER = "header"
    RECORDING = "recording"
    MENU = "menu"
    DELETED = "deleted"
    END = "end"
    GOODBYE = "goodbye"
    DONE = "done"


_NEXT = "#6"
_PREVIOUS = "*4"
_REPLAY = "1"
_DELETE = "3"
_QUIT = "9"


# --- the state machine -----------------------------------------------------------------------


class MailboxSession:
    """One caller in their mailbox (see the module notes); sans-I/O.

    ``messages`` as the store lists them (any order: the session puts new
    ones first, then old ones, each oldest first). ``now`` (epoch seconds)
    and ``tz`` place the messages' times in the owner's day ("today").
    Call :meth:`start` once, then :meth:`handle` for each event.
    """

    def __init__(
        self,
        messages: Sequence[VoicemailMessage],
        *,
        language: Language = "en",
        pin: str = "",
        pin_required: bool = True,
        read_datetime: ReadDatetime = "24h",
        announce_caller: bool = False,
        now: float | None = None,
        tz: dt.tzinfo = dt.UTC,
    ) -> None:
        ordered = sorted(messages, key=lambda m: (m.read, m.time, m.id))
        self.messages: list[VoicemailMessage] = ordered
        self.numbers = {m.id: n for n, m in enumerate(ordered, 1)}
        """Each message's number as announced ("Message 2"): kept when one before it is deleted."""
        self.language: Language = language
        self.pin = pin
        self.pin_required = pin_required and bool(pin)
        self.read_datetime: ReadDatetime = read_datetime
        self.announce_caller = announce_caller
        self.tz = tz
        self.today = dt.datetime.fromtimestamp(time.time() if now is None else now, tz).date()
        self.new_count = sum(1 for m in ordered if not m.read)
        self.old_count = len(ordered) - self.new_count
        self.state = _State.PIN
        self.index = 0
        """The message being presented (an index in :attr:`messages`)."""
        self.entered = ""
        self.pin_failures = 0
        self.idle = 0
        self.playing = False
        self.timeout: float | None = None
        self.started = False

    @classmethod
    def for_user(
        cls,
        user: User,
        messages: Sequence[VoicemailMessage],
        *,
        now: float | None = None,
        tz: dt.tzinfo = dt.UTC,
    ) -> MailboxSession:
        """A session with ``user``'s voicemail settings and PIN."""
        settings = user.voicemail
        return cls(messages, language=settings.language, pin=user.voicemail_pin,
                   pin_required=settings.pin_required, read_datetime=settings.read_datetime,
                   announce_caller=settings.announce_caller, now=now, tz=tz)

    @property
    def done(self) -> bool:
        """The session has hung up."""
        return self.state is _State.DONE

    # -- building blocks -----------------------------------------------------------------

    def _prompts(self, *names: str) -> tuple[Path, ...]:
        return tuple(prompt_path(self.language, name) for name in names)

    def _play(self, state: _State, paths: Sequence[Path], *before: Action) -> MenuReply:
        self.state = state
        self.playing = True
        self.timeout = None
        return MenuReply((*before, Play(tuple(paths))), None)

    def _wait(self, seconds: float, *actions: Action) -> MenuReply:
        self.timeout = seconds
        return MenuReply(actions, seconds)

    def _goodbye(self, *first: str) -> MenuReply:
        return self._play(_State.GOODBYE, self._prompts(*first, "goodbye"))

    def summary_names(self) -> list[str]:
        """The prompts of "You have 2 new messages and 1 old message"."""
        if not self.messages:
            return ["no_messages"]
        names = ["you_have"]
        if self.new_count:
            names += number_names(self.new_count, self.language)
            names.append("new_message" if self.new_count == 1 else "new_messages")
        if self.new_count and self.old_count:
            names.append("and")
        if self.old_count:
            names += number_names(self.old_count, self.language)
            names.append("old_message" if self.old_count == 1 else "old_messages")
        return names

    def header_names(self, index: int) -> list[str]:
        """The prompts said before message ``index``: its number, when, who."""
        message = self.messages[index]
        names = ["message", *number_names(self.numbers[message.id], self.language), "pause"]
        if self.read_datetime != "none":
            when = dt.datetime.fromtimestamp(message.time, self.tz)
            names += datetime_names(when, self.language, self.read_datetime, today=self.today)
            names.append("pause")
        if self.announce_caller:
            digits = digit_names(message.caller, self.language)
            names += ["from", *digits] if digits else ["unknown_caller"]
            names.append("pause")
        return names

    # -- transitions ----------------------------------------------------------------------

    def start(self) -> MenuReply:
        """The first step: the PIN prompt, or straight to the summary."""
        if self.started:
            raise RuntimeError("the mailbox session has already started")
        self.started = True
        if self.pin_required:
            return self._play(_State.PIN, self._prompts("enter_pin"))
        return self._summary()

    def _summary(self) -> MenuReply:
        if not self.messages:
            return self._goodbye("no_messages")
        return self._play(_State.SUMMARY, self._prompts(*self.summary_names()))

    def _header(self, index: int) -> MenuReply:
        self.index = index
        self.idle = 0
        return self._play(_State.HEADER, self._prompts(*self.header_names(index)))

    def _recording(self) -> MenuReply:
        self.idle = 0
        message = self.messages[self.index]
        before: tuple[Action, ...] = ()
        if not message.read:
            self.messages[self.index] = dataclasses.replace(message, read=True)
            before = (MarkRead(message.id),)
        return self._play(_State.RECORDING, [Path(message.path)], *before)

    def _menu(self) -> MenuReply:
        return self._play(_State.MENU, self._prompts("menu"))

    def _end(self) -> MenuReply:
        self.index = len(self.messages)
        if not self.messages:
            return self._goodbye("end_of_messages")
        return self._play(_State.END, self._prompts("end_of_messages", "menu_end"))

    def _next(self) -> MenuReply:
        if self.index + 1 < len(self.messages):
            return self._header(self.index + 1)
        return self._end()

    def _previous(self) -> MenuReply:
        return self._header(max(0, self.index - 1))  # at the end, index is len(messages)

    def _delete(self) -> MenuReply:
        message = self.messages.pop(self.index)
        self.idle = 0
        return self._play(_State.DELETED, self._prompts("deleted"),
                          Delete(message.id, message.path))

    def handle(self, event: MenuInput) -> MenuReply:
        """Feed one event; returns what to do next."""
        if not self.started:
            raise RuntimeError("call start() first")
        if self.state is _State.DONE:
            return MenuReply()
        if isinstance(event, PromptDone):
            if not self.playing:
                return MenuReply((), self.timeout)  # stale: nothing was playing
            self.playing = False
            return self._prompt_done()
        if isinstance(event, Timeout):
            if self.playing:
                return MenuReply()  # the driver only times out while no prompt plays
            return self._timed_out()
        return self._digit(event.digit)

    def _prompt_done(self) -> MenuReply:
        state = self.state
        if state is _State.PIN:
            return self._wait(INTER_DIGIT_SECONDS if self.entered else FIRST_DIGIT_SECONDS)
        if state is _State.SUMMARY:
            return self._header(0)
        if state is _State.HEADER:
            return self._recording()
        if state is _State.RECORDING:
            return self._menu()
        if state is _State.DELETED:
            if self.index < len(self.messages):
                return self._header(self.index)
            return self._end()
        if state in (_State.MENU, _State.END):
            return self._wait(MENU_SECONDS)
        # GOODBYE
        self.state = _State.DONE
        return MenuReply((Hangup(),))

    def _timed_out(self) -> MenuReply:
        state = self.state
        if state is _State.PIN:
            if self.entered:
                return self._check_pin()
            return self._pin_failed(wrong=False)
        if state in (_State.MENU, _State.END):
            self.idle += 1
            if self.idle >= MENU_REPEATS:
                return self._goodbye()
            return self._play(state, self._prompts(
                *(["menu"] if state is _State.MENU else ["menu_end"])))
        return MenuReply()

    def _digit(self, digit: str) -> MenuReply:
        state = self.state
        if state is _State.PIN:
            return self._pin_digit(digit)
        if state is _State.SUMMARY:
            return self._header(0)  # any key: on to the first message
        if state in (_State.HEADER, _State.RECORDING, _State.MENU):
            if digit in _REPLAY:
                return self._recording()
            if digit in _DELETE:
                return self._delete()
            if digit in _NEXT:
                return self._next()
            if digit in _PREVIOUS:
                return self._previous()
            if digit in _QUIT:
                return self._goodbye()
        elif state is _State.END:
            if digit in _PREVIOUS:
                return self._previous()
            if digit in _QUIT or digit in _NEXT:
                return self._goodbye()
        # An ignored key: a prompt playing goes on; a menu waiting waits again.
        return MenuReply((), None if self.playing else self._wait(MENU_SECONDS).timeout)

    # -- the PIN ---------------------------------------------------------------------------

    def _pin_digit(self, digit: str) -> MenuReply:
        stop: tuple[Action, ...] = (StopPlaying(),) if self.playing else ()
        self.playing = False
        if digit == "#":
            return self._with(stop, self._check_pin())
        if digit == "*":
            self.entered = ""
            return self._wait(FIRST_DIGIT_SECONDS, *stop)
        if digit.isdigit():
            self.entered += digit
            if len(self.entered) >= MAX_PIN_DIGITS:
                return self._with(stop, self._check_pin())
        return self._wait(INTER_DIGIT_SECONDS if self.entered else FIRST_DIGIT_SECONDS, *stop)

    @staticmethod
    def _with(first: tuple[Action, ...], step: MenuReply) -> MenuReply:
        return MenuReply((*first, *step.actions), step.timeout)

    def _check_pin(self) -> MenuReply:
        entered, self.entered = self.entered, ""
        if hmac.compare_digest(entered.encode(), self.pin.encode()):
            return self._summary()
        return self._pin_failed(wrong=True)

    def _pin_failed(self, *, wrong: bool) -> MenuReply:
        self.pin_failures += 1
        first = ["wrong_pin"] if wrong else []
        if self.pin_failures >= MAX_PIN_ATTEMPTS:
            return self._goodbye(*first)
        return self._play(_State.PIN, self._prompts(*first, "enter_pin"))


# --- the driver ------------------------------------------------------------------------------


_Queued = tuple[MenuInput | None, int]
"""(event, generation of the Play it belongs to); None: the endpoint closed."""


async def serve_mailbox(
    media: MediaService,
    endpoint: MediaEndpoint,
    store: Store,
    user: User,
    *,
    now: Callable[[], float] = time.time,
    tz: str | dt.tzinfo = "UTC",
) -> None:
    """Let ``user`` (who called the voicemail number) listen to their mailbox.

    ``endpoint`` is the caller's media, configured (answered). Runs a
    :class:`MailboxSession` with ``user``'s settings over the messages of box
    ``user.extension``: prompts play with ``media.play`` (a key the session
    acts on interrupts them), key presses come from ``endpoint.on_dtmf``,
    read marks and deletions (the row, then the WAV file) go to ``store``.
    ``tz`` is the owner's time zone (their department's) for reading the
    date and time of messages. Returns when the session hangs up (the caller
    of this function then ends the call: BYE) or when the endpoint closes (the
    caller hung up). The endpoint is not closed here.
    """
    if endpoint.closed:
        return
    box = user.extension
    messages = await store.list_voicemail(box)
    session = MailboxSession.for_user(user, messages, now=now(), tz=zone(tz))
    queue: asyncio.Queue[_Queued] = asyncio.Queue()
    generation = 0
    player: Player | None = None

    def on_digit(digit: str) -> None:
        queue.put_nowait((Digit(digit), generation))

    def on_close() -> None:
        queue.put_nowait((None, generation))

    def current() -> int:
        return generation

    unsubscribe = [endpoint.on_dtmf(on_digit), endpoint.on_close(on_close)]
    log.info("mailbox session", box=box, new=session.new_count, old=session.old_count,
             pin=session.pin_required)
    try:
        step = session.start()
        while True:
            for action in step.actions:
                if isinstance(action, Play):
                    generation += 1
                    mine = generation

                    def done(completed: bool, mine: int = mine) -> None:
                        if completed:
                            queue.put_nowait((PromptDone(), mine))

                    try:
                        player = await media.play(endpoint, action.paths, on_done=done)
                    except WavError as exc:  # a message file missing or damaged: skip it
                        log.error("mailbox audio unusable; skipped", box=box, error=str(exc))
                        queue.put_nowait((PromptDone(), mine))
                    except (MediaError, CodecError) as exc:
                        if not endpoint.closed:
                            log.error("mailbox cannot play", box=box, error=str(exc))
                        return
                elif isinstance(action, StopPlaying):
                    generation += 1
                    if player is not None:
                        player.stop()
                elif isinstance(action, MarkRead):
                    try:
                        await store.mark_voicemail_read(box, action.id)
                    except Exception:
                        log.exception("mailbox: marking a message read failed", box=box)
                elif isinstance(action, Delete):
                    await _delete(store, box, action)
                else:  # Hangup
                    log.info("mailbox session over", box=box)
                    return
            if endpoint.closed:
                return
            event = await _next_event(queue, step.timeout, current)
            if event is None:
                return
            step = session.handle(event)
    finally:
        for off in unsubscribe:
            off()
        if player is not None and player.playing and not endpoint.closed:
            player.stop()


async def _next_event(
    queue: asyncio.Queue[_Queued], timeout: float | None, current: Callable[[], int]
) -> MenuInput | None:
    """The next event that counts (a PromptDone of a replaced Play does not)."""
    deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
    while True:
        try:
            if deadline is None:
                event, generation = await queue.get()
            else:
                remaining = deadline - asyncio.get_running_loop().time()
                event, generation = await asyncio.wait_for(queue.get(), max(0.0, remaining))
        except TimeoutError:
            return Timeout()
        if isinstance(event, PromptDone) and generation != current():
            continue
        return event


async def _delete(store: Store, box: str, action: Delete) -> None:
    try:
        done = await delete_message(store, box, action.id, action.path)
    except Exception:
        log.exception("mailbox: deleting a message failed", box=box, id=action.id)
        return
    if done.file_error is not None:
        log.error("mailbox: message file not removed", box=box, id=action.id,
                  error=str(done.file_error))
    log.info("mailbox: message deleted", box=box, id=action.id)
