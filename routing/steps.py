"""The values routing takes and returns: call facts, live state, plan steps.

Everything is a frozen, slotted dataclass: a :class:`Plan` can be logged,
printed by ``route explain`` and handed to the call layer without copies.

A plan is a flat table of steps.  Execution starts at step 0; a :class:`Ring`
names, for each outcome, the index of the next step (always greater than its
own index, so no plan can loop) or ``None`` when the call ends with that
outcome (the engine answers no answer -> 480, busy -> 486, failed -> 480/503).
Every other step is terminal.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from provisioning.model import Destination, Language, QueueStrategy, Status

__all__ = [
    "Busy",
    "CallFacts",
    "Deflect",
    "Device",
    "Diversion",
    "DiversionReason",
    "External",
    "Identity",
    "Ivr",
    "LiveState",
    "MailboxAccess",
    "Park",
    "Pickup",
    "Plan",
    "Queue",
    "QueueLogin",
    "Reject",
    "Ring",
    "Source",
    "Step",
    "Target",
    "Unpark",
    "Voicemail",
]

Source = Literal["phone", "trunk"]

DiversionReason = Literal[
    "no-answer",
    "user-busy",
    "unavailable",
    "unconditional",
    "time-of-day",
    "do-not-disturb",
    "away",
]
"""RFC 5806 reason tokens (also used as History-Info causes by the engine)."""

# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class CallFacts:
    """What the call layer knows about a new call.

    ``source="phone"``: ``caller`` is the calling extension (authenticated by
    digest) and ``callee`` what it dialled (the Request-URI user).
    ``source="trunk"``: ``caller`` is the external caller number, ``callee``
    the dialled DID and ``trunk`` the name of the trunk the call came in on.
    ``at`` must be timezone-aware: office hours are evaluated in each
    department's own time zone.  ``preferred_identity``: the number a phone
    asked to present (its P-Preferred-Identity, RFC 3325 s9.2), ``""`` none.
    """

    caller: str
    callee: str
    source: Source
    at: dt.datetime
    trunk: str = ""
    caller_name: str = ""
    preferred_identity: str = ""

    def __post_init__(self) -> None:
        if self.at.tzinfo is None or self.at.utcoffset() is None:
            raise ValueError("CallFacts.at must be a timezone-aware datetime")


@dataclass(frozen=True, slots=True)
class LiveState:
    """What changes between calls, kept up to date by the engine.

    ``statuses``: live overrides (``switchboard status set``), winning over
    the directory and over ``auto_status``.  ``registered``: extensions with
    at least one registered device.  ``busy``: extensions on a call.
    ``channels_in_use``: per trunk name, including the call being routed
    when it came in on that trunk.  The engine passes views of its own state
    (read during one :func:`~routing.plan`), so none of these is to be kept.
    """

    statuses: Mapping[str, Status] = field(default_factory=lambda: MappingProxyType({}))
    registered: Set[str] = frozenset()
    busy: Set[str] = frozenset()
    channels_in_use: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True, slots=True)
class Device:
    """Every registered contact of ``extension`` (desk phones, softphones)."""

    extension: str


@dataclass(frozen=True, slots=True)
class External:
    """A number reached through ``trunk``.

    ``caller_id`` is the identity presented (the original caller's);
    ``privacy`` asks the trunk to withhold it.  ``rebound``: the far end
    hears who calls and accepts or refuses (a refusal is a *failed*
    outcome).  ``mobile_of``: the extension whose mobile this is.
    ``confirm``: the user's ``confirm_external_answer``: an answer is not
    taken until the far end presses 1 (within ``CONFIRM_SECONDS``); the
    other legs of the step keep ringing meanwhile, and a leg that does not
    confirm is released as if it had not answered (when no leg is left, a
    *no answer* outcome).  Never set with ``rebound``, which screens already.
    ``caller_name``: the display name sent with ``caller_id`` (the number's
    ``caller_id_name``, or a trunk caller's own display name; ``""`` none,
    never a user's name).
    """

    number: str
    trunk: str
    caller_id: str
    privacy: bool
    rebound: bool = False
    mobile_of: str = ""
    confirm: bool = False
    caller_name: str = ""


Target = Device | External


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a call says is calling when one of its legs leaves through a trunk.

    ``caller_id`` and ``name`` (the number's ``caller_id_name``) go in From and
    P-Asserted-Identity; ``privacy`` withholds them from the callee (``*82``
    flips the number's ``block_caller_id``).  ``origin`` says where the caller
    ID came from (``"outbound_caller_id of 101"``, ``"department Sales"``,
    ``"P-Preferred-Identity ..."``, ``"the trunk caller"``, ``"emergency ..."``).
    ``preferred``: the number the phone asked for (P-Preferred-Identity), and
    ``ignored`` why it was not honoured (``""`` honoured, or none asked).
    ``billing_group``: the label of the number the call is counted under (the
    DID of a trunk call, the presented number of a phone call).
    """

    caller_id: str
    name: str = ""
    privacy: bool = False
    origin: str = ""
    preferred: str = ""
    ignored: str = ""
    billing_group: str = ""


@dataclass(frozen=True, slots=True)
class Diversion:
    """One forward: ``extension`` sent the call on, for ``reason``."""

    extension: str
    reason: DiversionReason


# --------------------------------------------------------------------------- steps


@dataclass(frozen=True, slots=True)
class Ring:
    """Ring all ``targets`` in parallel; the first to answer takes the call.

    ``seconds``: the no-answer timer (``None``: ring until the caller hangs
    up).  ``on_*``: index of the next step for that outcome, or ``None``:
    the call ends with it.  ``on_failed`` covers errors, rejections other
    than 486/600 and, for a rebound target, a refusal.  A ``confirm`` target
    that does not press 1 counts as not answering: when it was the last leg
    ringing, ``on_no_answer``.
    """

    targets: tuple[Target, ...]
    seconds: int | None
    reason: str
    on_no_answer: int | None = None
    on_busy: int | None = None
    on_failed: int | None = None
    diversion: tuple[Diversion, ...] = ()
    music: bool = False  # the caller hears hold music while it rings (ring groups)
    # an intercom call (the intercom feature code): the INVITE asks the phone to
    # answer at once (Call-Info answer-after=0, Alert-Info info=alert-autoanswer)
    intercom: bool = False

    @property
    def next_steps(self) -> tuple[int | None, int | None, int | None]:
        """``(on_no_answer, on_busy, on_failed)``."""
        return (self.on_no_answer, self.on_busy, self.on_failed)


@dataclass(frozen=True, slots=True)
class Deflect:
    """Answer the caller's INVITE with 302 to ``number``: the trunk carries the forward."""

    number: str
    trunk: str
    reason: str
    diversion: tuple[Diversion, ...] = ()


@dataclass(frozen=True, slots=True)
class Voicemail:
    """Let the caller leave a message in ``box`` after ``greeting``."""

    box: str
    greeting: str
    reason: str
    diversion: tuple[Diversion, ...] = ()


@dataclass(frozen=True, slots=True)
class MailboxAccess:
    """The caller reaches their own mailbox (they dialled ``system.voicemail_number``)."""

    box: str
    reason: str


@dataclass(frozen=True, slots=True)
class Ivr:
    """The engine answers and plays the menu of IVR ``name``; the caller's key (or
    an extension dialled, with ``dial_by_extension``) picks a destination, which
    routing compiles then (:meth:`routing.Router.choose`) as the call goes on.
    ``prompt`` is a WAV file, or ``""`` when the IVR speaks ``text`` (rendered to a
    WAV in ``language``). Nothing pressed ``timeout_seconds`` after the prompt: it
    plays again, ``repeat`` more times, then ``on_timeout``; a key that is not in
    ``keys``: ``on_invalid``. Terminal in the plan: what follows is decided by
    the caller."""

    name: str
    extension: str
    prompt: str
    text: str
    language: Language
    keys: tuple[tuple[str, Destination], ...]
    dial_by_extension: bool
    timeout_seconds: int
    repeat: int
    on_timeout: Destination
    on_invalid: Destination
    reason: str
    diversion: tuple[Diversion, ...] = ()

    def key(self, key: str) -> Destination | None:
        return next((dest for k, dest in self.keys if k == key), None)


@dataclass(frozen=True, slots=True)
class Queue:
    """The engine answers and the caller waits in queue ``name`` (hold music) while
    its ``agents`` are rung by ``strategy``, ``ring_seconds`` per try; after
    ``max_wait_seconds``, or when ``max_callers`` wait already, ``on_timeout``;
    with no agent logged in, registered and available, ``when_no_agents``
    (``None``: wait anyway). Which agent rings is decided by the engine as the
    call waits (who is logged in, idle, not on a call): routing states the rules.
    Terminal in the plan."""

    name: str
    extension: str
    strategy: QueueStrategy
    agents: tuple[str, ...]
    ring_seconds: int
    wrap_up_seconds: int
    max_wait_seconds: int
    max_callers: int
    on_timeout: Destination
    when_no_agents: Destination | None
    hold_music: tuple[str, ...]
    announce_position_every: int
    service_level_seconds: int
    reason: str
    diversion: tuple[Diversion, ...] = ()
    language: str = ""  # "": the language of the IVR the caller came through, else "en"
    priority_callers: tuple[str, ...] = ()  # see :func:`priority_caller`


@dataclass(frozen=True, slots=True)
class QueueLogin:
    """An agent dialled the queue log-in (``*62``) or log-out (``*63``) code: the
    engine logs ``agent`` in or out of ``queues``, answers and confirms it in
    ``language``, then hangs up. ``queues`` empty: the code named no queue of theirs."""

    agent: str
    queues: tuple[str, ...]
    login: bool
    reason: str
    # The confirmation's language: the named queue's, else the first of the agent's
    # queues', "" (English) when that queue has none.
    language: str = ""


@dataclass(frozen=True, slots=True)
class Pickup:
    """``picker`` takes the oldest call ringing one of ``extensions`` (directed
    pickup: one; group pickup: their department and ring groups); the engine finds
    it (a ringing leg is live state), cancels that leg and answers the caller on the
    picker's INVITE. None ringing: 404."""

    picker: str
    extensions: tuple[str, ...]
    directed: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Park:
    """``parker`` sent its caller to the park code (a blind transfer to it): the
    engine holds that caller on the first free orbit of ``orbits`` with music and
    tells the parker the orbit; not retrieved in ``ring_back_seconds``: the parker
    rings again, then ``ring_back_to``."""

    parker: str
    orbits: tuple[str, ...]
    ring_back_seconds: int
    ring_back_to: Destination
    reason: str


@dataclass(frozen=True, slots=True)
class Unpark:
    """A phone retrieves the call parked on ``orbit`` (the unpark code + the orbit,
    or the orbit dialled). Nothing parked there: 404."""

    orbit: str
    reason: str


@dataclass(frozen=True, slots=True)
class Busy:
    """Answer 486 Busy Here."""

    reason: str


@dataclass(frozen=True, slots=True)
class Reject:
    """Answer ``status`` with reason phrase ``text`` (e.g. 404 Not Found)."""

    status: int
    text: str
    reason: str


Step = (Ring | Deflect | Voicemail | MailboxAccess | Ivr | Queue | QueueLogin | Pickup | Park
        | Unpark | Busy | Reject)


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do with one call: a flat table of steps, starting at step 0.

    ``status_of_callee``: the effective status of the user the call is for
    (the dialled extension, or the user a DID routes to), ``None`` when the
    call is not for a user.  ``callee_extension``: that user's extension or
    ``""``.  ``statuses``: the effective status of every user the plan
    consulted, for ``route explain``.  ``identity``: what the call presents
    on legs that leave through a trunk, and its billing group.
    """

    call: CallFacts
    steps: tuple[Step, ...]
    status_of_callee: Status | None = None
    callee_extension: str = ""
    statuses: Mapping[str, Status] = field(default_factory=lambda: MappingProxyType({}))
    identity: Identity = Identity("")
