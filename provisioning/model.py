"""The provisioning data model: a whole phone system as immutable values.

Everything here is a frozen, slotted dataclass built from tuples, so a
``Directory`` can be shared freely between the engine, routing and the store
as a snapshot.  Values are produced by :func:`provisioning.directory.parse_directory`,
which validates them; constructing them by hand skips that validation
(``Store.apply_directory`` re-validates what it is given).

Keys and meanings follow the directory file contract
(``shared/spec/directory.toml``).
"""

from __future__ import annotations

import datetime as dt
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, get_args

Status = Literal["available", "away", "dnd", "lunch", "business_trip"]
Role = Literal["user", "receptionist", "department_admin", "manager", "owner"]
Transport = Literal["udp", "tcp", "tls"]
NumberType = Literal["toll_free", "inbound_only", "bidirectional"]
Strategy = Literal["ring_all", "hunt"]
QueueStrategy = Literal[
    "ring_all", "hunt", "round_robin", "longest_idle", "fewest_answered", "least_talk_time"
]
RecordCalls = Literal["off", "external", "all"]
# SDES-SRTP (RFC 4568) on the user's phones: refused, taken when offered over TLS,
# or the only media they may use.
SrtpMode = Literal["off", "allowed", "required"]
Language = Literal["fr", "en"]
ReadDatetime = Literal["none", "ampm", "24h"]
VoicemailEmail = Literal["none", "notify", "attach", "attach_and_delete"]
Codec = Literal["G722", "PCMU", "PCMA", "G729", "opus"]
DestinationKind = Literal[
    "voicemail",
    "extension",
    "mobile",
    "external",
    "ring_group",
    "queue",
    "ivr",
    "busy",
    "same_as_external",
]

STATUSES: tuple[Status, ...] = get_args(Status)
ROLES: tuple[Role, ...] = get_args(Role)
TRANSPORTS: tuple[Transport, ...] = get_args(Transport)
NUMBER_TYPES: tuple[NumberType, ...] = get_args(NumberType)
STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)
QUEUE_STRATEGIES: tuple[QueueStrategy, ...] = get_args(QueueStrategy)
#: The keys of a phone's keypad an IVR menu answers to (RFC 4733 events 0-11).
IVR_KEYS: tuple[str, ...] = ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "*", "#")
RECORD_CALLS: tuple[RecordCalls, ...] = get_args(RecordCalls)
SRTP_MODES: tuple[SrtpMode, ...] = get_args(SrtpMode)
LANGUAGES: tuple[Language, ...] = get_args(Language)
READ_DATETIMES: tuple[ReadDatetime, ...] = get_args(ReadDatetime)
VOICEMAIL_EMAILS: tuple[VoicemailEmail, ...] = get_args(VoicemailEmail)
CODECS: tuple[Codec, ...] = get_args(Codec)
DESTINATION_KINDS: tuple[DestinationKind, ...] = get_args(DestinationKind)
#: The default codec priority (a user or device without a ``codecs`` list): wideband
#: G.722 first, then the G.711 pair every phone and carrier speaks, G.729 last.
DEFAULT_CODECS: tuple[Codec, ...] = ("G722", "PCMU", "PCMA", "G729")
WEEKDAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

#: Destinations that leave the system through a trunk; only these may carry
#: ``rebound`` / ``deflect_302``.
EXTERNAL_KINDS: frozenset[DestinationKind] = frozenset({"mobile", "external"})
#: Destinations written as ``kind:target``.
TARGETED_KINDS: frozenset[DestinationKind] = frozenset(
    {"extension", "external", "ring_group", "queue", "ivr"}
)

PHONE_RE = re.compile(r"\+[1-9][0-9]{1,14}|[0-9]{2,20}")
"""A dialable number: E.164 (``+15145550100``) or plain digits (``5550100``).
All patterns here are meant for ``fullmatch``."""
DIGITS_RE = re.compile(r"[0-9]+")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
PRIORITY_RE = re.compile(r"\+?[0-9]{1,20}\*?")
"""An entry of a queue's ``priority_callers``: a number (E.164 or digits), an
extension, or a prefix ending in ``*`` (``+1514*``: every number starting so)."""


def priority_caller(patterns: tuple[str, ...], caller: str) -> bool:
    """Whether ``caller`` (an extension, or an external caller's number) is one of
    ``patterns`` (a queue's ``priority_callers``): equal to an entry, or starting
    with an entry's prefix (``+1514*``)."""
    for pattern in patterns:
        if pattern.endswith("*"):
            if caller.startswith(pattern[:-1]):
                return True
        elif caller == pattern:
            return True
    return False
"""Names used in ``kind:name`` destinations (ring groups, queues, IVRs, trunks)."""


# --------------------------------------------------------------------------- destinations


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a call goes.

    ``target`` is the extension for ``extension``/``voicemail`` (empty for
    the user's own voicemail), the number for ``external``, the name for
    ``ring_group``/``queue``/``ivr`` and empty for the others.
    """

    kind: DestinationKind
    target: str = ""
    rebound: bool = False
    deflect_302: bool = False

    @property
    def is_external(self) -> bool:
        """True when the call leaves through a trunk (mobile or external number)."""
        return self.kind in EXTERNAL_KINDS

    def __str__(self) -> str:
        return f"{self.kind}:{self.target}" if self.target else self.kind

    def to_value(self) -> str | dict[str, object]:
        """The directory-file form: a string, or a table when a flag is set."""
        if not self.rebound and not self.deflect_302:
            return str(self)
        table: dict[str, object] = {"to": str(self)}
        if self.rebound:
            table["rebound"] = True
        if self.deflect_302:
            table["deflect_302"] = True
        return table


class DestinationError(ValueError):
    """A destination that does not parse; ``key`` names the sub-key of the
    table form (``"to"``, ``"rebound"``...) or is empty for the value itself."""

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(message)
        self.key = key
        self.message = message


def parse_destination(value: object) -> Destination:
    """Parse the string or table form of a destination (syntax only).

    Raises :class:`DestinationError`.  References (does extension 102
    exist? does the user have a mobile?) are checked by the directory
    loader, which knows the whole system.
    """
    if isinstance(value, Mapping):
        for key in value:
            if key not in ("to", "rebound", "deflect_302"):
                raise DestinationError(
                    "unknown key (a destination table has to, rebound, deflect_302)", str(key)
                )
        if "to" not in value:
            raise DestinationError("missing (a destination table needs 'to')", "to")
        flags: dict[str, bool] = {}
        for key in ("rebound", "deflect_302"):
            flag = value.get(key, False)
            if not isinstance(flag, bool):
                raise DestinationError("must be true or false", key)
            flags[key] = flag
        to = value["to"]
        if not isinstance(to, str):
            raise DestinationError("must be a string like 'external:+15145550199'", "to")
        try:
            base = _parse_destination_string(to)
        except DestinationError as exc:
            raise DestinationError(exc.message, "to") from None
        if (flags["rebound"] or flags["deflect_302"]) and not base.is_external:
            flag_key = "rebound" if flags["rebound"] else "deflect_302"
            raise DestinationError(
                f"applies only to 'mobile' and 'external:' destinations, not '{base}'", flag_key
            )
        if flags["rebound"] and flags["deflect_302"]:
            raise DestinationError(
                "rebound and deflect_302 cannot both be true (a deflected call never comes back)"
            )
        return Destination(base.kind, base.target, flags["rebound"], flags["deflect_302"])
    if isinstance(value, str):
        return _parse_destination_string(value)
    raise DestinationError(
        "must be a destination string like 'voicemail', or a table "
        "{ to = ..., rebound = ..., deflect_302 = ... }"
    )


def _parse_destination_string(text: str) -> Destination:
    kind_text, sep, target = text.partition(":")
    if kind_text not in DESTINATION_KINDS:
        raise DestinationError(
            f"unknown destination '{text}' (expected one of: {', '.join(DESTINATION_KINDS)})"
        )
    kind = DESTINATION_KINDS[DESTINATION_KINDS.index(kind_text)]  # typed as the Literal
    if kind == "voicemail":
        if sep and not _is_digits(target):
            raise DestinationError(f"'{text}': voicemail:<extension> needs an extension in digits")
        return Destination(kind, target)
    if kind not in TARGETED_KINDS:
        if sep:
            raise DestinationError(f"'{text}': '{kind}' takes no target")
        return Destination(kind)
    if not target:
        raise DestinationError(f"'{text}': '{kind}' needs a target, like '{kind}:{_example(kind)}'")
    if kind == "extension" and not _is_digits(target):
        raise DestinationError(f"'{text}': an extension is digits only")
    if kind == "external" and not PHONE_RE.fullmatch(target):
        raise DestinationError(
            f"'{target}' is not a phone number (E.164 like +15145550199, or digits)"
        )
    if kind in ("ring_group", "queue", "ivr") and not NAME_RE.fullmatch(target):
        raise DestinationError(f"'{text}': '{target}' is not a valid name (letters, digits, _ . -)")
    return Destination(kind, target)


def _is_digits(text: str) -> bool:
    """ASCII digits only (``str.isdigit`` also accepts '²' and other scripts)."""
    return DIGITS_RE.fullmatch(text) is not None


def _example(kind: str) -> str:
    return {"extension": "102", "external": "+15145550199"}.get(kind, "name")


# --------------------------------------------------------------------------- schedules


@dataclass(frozen=True, slots=True, order=True)
class TimeRange:
    """A daily interval in minutes since midnight, ``start < end <= 1440``."""

    start: int
    end: int

    def contains(self, minute: int) -> bool:
        return self.start <= minute < self.end

    def __str__(self) -> str:
        return f"{_hhmm(self.start)}-{_hhmm(self.end)}"


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


@dataclass(frozen=True, slots=True)
class WeeklyHours:
    """Intervals per weekday; a day with no interval is closed all day."""

    mon: tuple[TimeRange, ...] = ()
    tue: tuple[TimeRange, ...] = ()
    wed: tuple[TimeRange, ...] = ()
    thu: tuple[TimeRange, ...] = ()
    fri: tuple[TimeRange, ...] = ()
    sat: tuple[TimeRange, ...] = ()
    sun: tuple[TimeRange, ...] = ()

    def day(self, weekday: int) -> tuple[TimeRange, ...]:
        """Intervals for ``weekday`` (0 = Monday, as ``date.weekday()``)."""
        ranges: tuple[TimeRange, ...] = getattr(self, WEEKDAYS[weekday])
        return ranges

    def contains(self, when: dt.datetime) -> bool:
        """Whether the local wall-clock time ``when`` falls in an interval."""
        minute = when.hour * 60 + when.minute
        return any(r.contains(minute) for r in self.day(when.weekday()))


@dataclass(frozen=True, slots=True)
class Schedule:
    """A user's schedule.  ``None`` hours mean "the department's"."""

    office_hours: WeeklyHours | None = None
    break_hours: WeeklyHours | None = None
    auto_status: bool = False
    block_outbound_outside_hours: bool = False


# --------------------------------------------------------------------------- system tables


@dataclass(frozen=True, slots=True)
class Smtp:
    host: str
    port: int = 25
    sender: str = ""


#: ``[system.feature_codes]`` keys whose code is followed by more digits (an
#: extension, an orbit, a queue's extension): another code or an extension that
#: starts with one of these is ambiguous, so the file is refused.
FEATURE_CODES_WITH_SUFFIX: tuple[str, ...] = (
    "queue_login", "queue_logout", "pickup_directed", "unpark", "intercom",
)
FEATURE_CODE_RE = re.compile(r"[*#0-9]{1,8}")


@dataclass(frozen=True, slots=True)
class FeatureCodes:
    """What a phone dials for desk-phone features (``[system.feature_codes]``).

    ``queue_login``/``queue_logout`` alone or + a queue's extension; ``pickup_group``
    alone; ``pickup_directed``, ``intercom`` + an extension; ``park`` alone (a
    transfer target); ``unpark`` + an orbit."""

    queue_login: str = "*62"
    queue_logout: str = "*63"
    pickup_group: str = "*8"
    pickup_directed: str = "**"
    park: str = "*0"
    unpark: str = "*1"
    intercom: str = "*9"

    def items(self) -> tuple[tuple[str, str], ...]:
        """``(key, code)`` in file order."""
        return (("queue_login", self.queue_login), ("queue_logout", self.queue_logout),
                ("pickup_group", self.pickup_group), ("pickup_directed", self.pickup_directed),
                ("park", self.park), ("unpark", self.unpark), ("intercom", self.intercom))

    def match(self, dialled: str) -> tuple[str, str] | None:
        """``(key, what follows the code)`` for a dialled string, ``None``: no code.
        The longest code wins (the validator refuses the ambiguous sets)."""
        best: tuple[str, str] | None = None
        size = -1
        for key, code in self.items():
            if not dialled.startswith(code) or len(code) <= size:
                continue
            rest = dialled[len(code):]
            if rest and key not in FEATURE_CODES_WITH_SUFFIX:
                continue
            best, size = (key, rest), len(code)
        return best


@dataclass(frozen=True, slots=True)
class Park:
    """``[system.park]``: the orbits ``orbit_min``..``orbit_max`` (dialable: each
    retrieves its call); a call parked ``ring_back_seconds`` rings its parker back,
    then goes to ``ring_back_to`` (``voicemail``: the parker's mailbox)."""

    orbit_min: int = 701
    orbit_max: int = 709
    digits: int = 3
    ring_back_seconds: int = 120
    ring_back_to: Destination = Destination("voicemail")

    @property
    def orbits(self) -> tuple[str, ...]:
        return tuple(str(n).zfill(self.digits) for n in range(self.orbit_min, self.orbit_max + 1))


@dataclass(frozen=True, slots=True)
class System:
    domain: str
    extension_digits: int = 3
    emergency_numbers: tuple[str, ...] = ("911", "112")
    min_register_expires: int = 60
    max_register_expires: int = 3600
    hold_music: tuple[str, ...] = ()
    voicemail_number: str = "999"
    rtp_port_min: int = 20000
    rtp_port_max: int = 29999
    smtp: Smtp | None = None
    admin_url: str = ""  # the admin listener's public URL, for links in emails
    # Every web sign-in needs TOTP: a user without it gets a token good for enrolling
    # only (provisioning/api/auth.py). API keys are not people and are not concerned.
    require_2fa: bool = False
    feature_codes: FeatureCodes = FeatureCodes()
    park: Park = Park()

    @property
    def outbound_pin_prefix(self) -> str:
        """``777`` for 3-digit systems, ``7777`` for 4-digit ones."""
        return "7" * self.extension_digits


@dataclass(frozen=True, slots=True)
class Trunk:
    name: str
    host: str
    port: int = 5060
    transport: Transport = "udp"
    channels: int | None = None  # None: no limit
    inbound_from: tuple[str, ...] = ()  # normalised CIDRs
    # Only this source port counts (a carrier sharing an address with phones); None: any.
    inbound_port: int | None = None
    supports_302: bool = False
    register: bool = False
    username: str = ""
    password: str = ""


@dataclass(frozen=True, slots=True)
class Department:
    name: str
    caller_id: str
    timezone: str = "UTC"
    language: Language = "en"
    holidays: tuple[dt.date, ...] = ()
    office_hours: WeeklyHours | None = None  # None: none defined
    break_hours: WeeklyHours = WeeklyHours()


#: Number types that may not be presented as an outbound caller ID.
INBOUND_ONLY_TYPES: frozenset[NumberType] = frozenset({"inbound_only", "toll_free"})


@dataclass(frozen=True, slots=True)
class Number:
    number: str
    route_to: Destination
    name: str = ""
    type: NumberType = "bidirectional"
    block_caller_id: bool = False
    hold_music: tuple[str, ...] = ()
    record_inbound: bool = False
    record_outbound: bool = False  # also when the caller ID is withheld (privacy)
    caller_id_name: str = ""  # the display name sent with this number on outbound calls
    outbound_callers: tuple[str, ...] = ()  # extensions that may choose it (P-Preferred-Identity)
    billing_group: str = ""  # a free label, for reports

    @property
    def outbound(self) -> bool:
        """Whether it may be presented as an outbound caller ID (``bidirectional``)."""
        return self.type not in INBOUND_ONLY_TYPES


# --------------------------------------------------------------------------- number lookup

_URI_SCHEMES = ("sip:", "sips:", "tel:")
_VISUAL_SEPARATORS = frozenset("+-.() ")  # RFC 3966 visual separators, plus spaces
_NANP_AREA_FIRST = frozenset("23456789")


def number_digits(text: str) -> str:
    """The digits of a number written in any of the forms a carrier or a phone uses.

    ``+15145550100``, ``15145550100``, ``+1 (514) 555-0100``, ``tel:+15145550100``
    (parameters ignored), ``sip:+15145550100@host;user=phone`` and ``<sip:...>``
    all give ``15145550100``.  Anything that is not a number (``anonymous``, an
    extension with letters, ``*82...``) gives ``""``: no digits are picked out
    of words.
    """
    plain = text[1:] if text[:1] == "+" else text
    if plain.isdigit() and plain.isascii():  # the usual case, E.164 or digits: no parsing
        return plain
    text = text.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    lowered = text[:5].lower()
    for scheme in _URI_SCHEMES:
        if lowered.startswith(scheme):
            text = text[len(scheme):]
            if scheme != "tel:":
                text = text.partition("@")[0]
            text = text.partition(";")[0]
            break
    if "%" in text:
        text = urllib.parse.unquote(text)
    digits: list[str] = []
    for ch in text:
        if "0" <= ch <= "9":
            digits.append(ch)
        elif ch not in _VISUAL_SEPARATORS:
            return ""
    return "".join(digits)


class NumberIndex:
    """Finds a ``[[numbers]]`` entry from any form of its number.

    The rule (the same for routing, hold music, recording and caller ID):

    1. the exact string, else
    2. the same digits (:func:`number_digits`: ``15145550100``,
       ``tel:+15145550100``, ``sip:+15145550100@host;user=phone`` all find
       ``+15145550100``), else
    3. North American national digits: ten digits without ``+`` whose first
       is 2-9 find the ``+1`` number (``5145550100`` finds ``+15145550100``),
       and ``1`` + ten digits finds a number written with its ten national
       digits.  NANP only: elsewhere the national form carries a trunk prefix
       (``0`` in most of Europe) and country codes have 1 to 3 digits, so a
       guess could find someone else's number; those carriers send E.164 or
       the full digits, which rules 1 and 2 find.

    When two entries answer to the same form by the same rule, the first in
    file order wins; the directory loader refuses a file with two entries one
    lookup cannot tell apart, so this only matters for hand-built directories.
    """

    __slots__ = ("_by_digits", "_exact")

    def __init__(self, numbers: Iterable[Number] = ()) -> None:
        self._exact: dict[str, Number] = {}
        self._by_digits: dict[str, Number] = {}
        for n in numbers:
            self.add(n)

    def add(self, number: Number) -> None:
        self._exact.setdefault(number.number, number)
        digits = number_digits(number.number)
        if digits:
            self._by_digits.setdefault(digits, number)

    def find(self, text: str) -> Number | None:
        found = self._exact.get(text)
        if found is not None or not text:
            return found
        digits = number_digits(text)
        if not digits:
            return None
        found = self._by_digits.get(digits)
        if found is not None:
            return found
        if len(digits) == 10 and digits[0] in _NANP_AREA_FIRST and "+" not in text:
            return self._by_digits.get("1" + digits)
        if len(digits) == 11 and digits[0] == "1" and digits[1] in _NANP_AREA_FIRST:
            return self._by_digits.get(digits[1:])
        return None


@dataclass(frozen=True, slots=True)
class RingGroup:
    name: str
    extension: str
    members: tuple[str, ...]
    strategy: Strategy = "ring_all"
    ring_seconds: int = 20
    no_answer: Destination = Destination("busy")


@dataclass(frozen=True, slots=True)
class Ivr:
    """A digital receptionist (``[[ivrs]]``, destination ``ivr:NAME``).

    The caller is answered, hears ``prompt`` (a WAV) or ``text`` (rendered to a
    WAV in ``language`` when the directory is applied), and presses a key of
    ``keys`` (each a destination), or dials an extension when
    ``dial_by_extension``. Nothing within ``timeout_seconds`` after the prompt:
    the prompt plays again, ``repeat`` more times, then ``on_timeout``. A key
    that leads nowhere: ``on_invalid``. ``outside_office_hours`` (``None``: not
    used) replaces the menu outside the hours of ``department``.
    """

    name: str
    extension: str
    keys: tuple[tuple[str, Destination], ...] = ()  # (key, destination) in IVR_KEYS order
    prompt: str = ""  # a WAV file; "" when ``text`` is given
    text: str = ""
    language: Language = "en"
    dial_by_extension: bool = False
    timeout_seconds: int = 6
    repeat: int = 1
    on_timeout: Destination = Destination("busy")
    on_invalid: Destination = Destination("busy")
    outside_office_hours: Destination | None = None
    department: str = ""

    def key(self, key: str) -> Destination | None:
        """The destination of ``key`` (``None``: the key is not in the menu)."""
        return next((dest for k, dest in self.keys if k == key), None)


@dataclass(frozen=True, slots=True)
class Queue:
    """A call queue (``[[queues]]``, destination ``queue:NAME``).

    Read and validated; the engine answers ``queue:`` destinations 480 until
    queues are built. ``when_no_agents``: ``None`` is "join" (wait anyway).
    """

    name: str
    extension: str
    agents: tuple[str, ...]
    strategy: QueueStrategy = "ring_all"
    agents_start_logged_in: bool = False
    ring_seconds: int = 15
    wrap_up_seconds: int = 10
    max_wait_seconds: int = 300
    max_callers: int = 20
    on_timeout: Destination = Destination("busy")
    when_no_agents: Destination | None = None
    hold_music: tuple[str, ...] = ()
    announce_position_every: int = 0
    service_level_seconds: int = 20
    language: Language | None = None  # None: the IVR's the caller came through, else English
    priority_callers: tuple[str, ...] = ()  # numbers, extensions, prefixes ending in "*"


# --------------------------------------------------------------------------- users


@dataclass(frozen=True, slots=True)
class VoicemailSettings:
    enabled: bool = True
    language: Language = "en"
    pin_required: bool = True
    read_datetime: ReadDatetime = "24h"
    announce_caller: bool = False
    email: VoicemailEmail = "none"
    max_seconds: int = 180
    greeting: str = "default"


@dataclass(frozen=True, slots=True)
class RuleTargets:
    """Where a call goes, by who calls: external or internal callers."""

    external: Destination
    internal: Destination

    def for_caller(self, external: bool) -> Destination:
        """The destination, with ``same_as_external`` already resolved."""
        if external or self.internal.kind == "same_as_external":
            return self.external
        return self.internal


@dataclass(frozen=True, slots=True)
class StatusRules:
    """Forwarding rules for one status (``users.forwarding.<status>``)."""

    no_answer: RuleTargets
    busy: RuleTargets
    no_answer_seconds: int = 20  # 0: do not ring the user's devices at all
    ring_mobile_simultaneously: bool = False
    accept_ring_group_calls: bool = True
    log_out_of_queues: bool = False
    voicemail_outside_office_hours: bool = False
    greeting: str = "default"

    @staticmethod
    def default(fallback: Destination) -> StatusRules:
        """The product default: ring 20 s, then ``fallback`` for everyone."""
        targets = RuleTargets(fallback, fallback)
        return StatusRules(no_answer=targets, busy=targets)


@dataclass(frozen=True, slots=True)
class Forwarding:
    available: StatusRules
    away: StatusRules
    dnd: StatusRules
    lunch: StatusRules
    business_trip: StatusRules

    def for_status(self, status: Status) -> StatusRules:
        rules: StatusRules = getattr(self, status)
        return rules


@dataclass(frozen=True, slots=True)
class User:
    extension: str
    name: str
    department: str
    forwarding: Forwarding
    password: str = ""
    voicemail_pin: str = ""
    email: str = ""
    mobile: str = ""
    role: Role = "user"
    outbound_caller_id: str = ""  # empty: the department's caller ID
    status: Status = "available"
    accept_multiple_calls: bool = True
    disabled: bool = False
    external_calls: bool = True
    outbound_pin_required: bool = False
    codecs: tuple[Codec, ...] = DEFAULT_CODECS
    record_calls: RecordCalls = "off"
    # An external leg of this user's plan (the mobile rung with the desk phones, a
    # forward to the mobile or to a number) must press 1 before it gets the call.
    confirm_external_answer: bool = False
    srtp: SrtpMode = "off"
    voicemail: VoicemailSettings = VoicemailSettings()
    schedule: Schedule = Schedule()

    def rules(self, status: Status | None = None) -> StatusRules:
        """Forwarding rules for ``status`` (default: the user's current status)."""
        return self.forwarding.for_status(self.status if status is None else status)


# --------------------------------------------------------------------------- the directory


@dataclass(frozen=True, slots=True)
class Directory:
    """The whole phone system.  Tables keep the order of the file."""

    system: System
    trunks: tuple[Trunk, ...] = ()
    departments: tuple[Department, ...] = ()
    numbers: tuple[Number, ...] = ()
    ring_groups: tuple[RingGroup, ...] = ()
    users: tuple[User, ...] = ()
    ivrs: tuple[Ivr, ...] = ()
    queues: tuple[Queue, ...] = ()
    users_by_extension: Mapping[str, User] = field(
        init=False, repr=False, compare=False, hash=False
    )
    ring_groups_by_extension: Mapping[str, RingGroup] = field(
        init=False, repr=False, compare=False, hash=False
    )
    ivrs_by_extension: Mapping[str, Ivr] = field(
        init=False, repr=False, compare=False, hash=False
    )
    numbers_index: NumberIndex = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "numbers_index", NumberIndex(self.numbers))
        object.__setattr__(
            self, "users_by_extension", MappingProxyType({u.extension: u for u in self.users})
        )
        object.__setattr__(
            self,
            "ring_groups_by_extension",
            MappingProxyType({g.extension: g for g in self.ring_groups}),
        )
        object.__setattr__(
            self, "ivrs_by_extension", MappingProxyType({i.extension: i for i in self.ivrs})
        )

    def user(self, extension: str) -> User | None:
        return self.users_by_extension.get(extension)

    def ring_group(self, name: str) -> RingGroup | None:
        return next((g for g in self.ring_groups if g.name == name), None)

    def ivr(self, name: str) -> Ivr | None:
        return next((i for i in self.ivrs if i.name == name), None)

    def queue(self, name: str) -> Queue | None:
        return next((q for q in self.queues if q.name == name), None)

    def department(self, name: str) -> Department | None:
        return next((d for d in self.departments if d.name == name), None)

    def trunk(self, name: str) -> Trunk | None:
        return next((t for t in self.trunks if t.name == name), None)

    def number(self, number: str) -> Number | None:
        """The ``[[numbers]]`` entry of ``number`` in any form (:class:`NumberIndex`):
        routing, hold music, recording and caller ID all look numbers up here."""
        return self.numbers_index.find(number)

    def office_hours_for(self, user: User) -> WeeklyHours | None:
        """The user's own office hours, else the department's (``None``: none defined)."""
        if user.schedule.office_hours is not None:
            return user.schedule.office_hours
        dept = self.department(user.department)
        return dept.office_hours if dept is not None else None

    def break_hours_for(self, user: User) -> WeeklyHours:
        """The user's own break hours, else the department's."""
        if user.schedule.break_hours is not None:
            return user.schedule.break_hours
        dept = self.department(user.department)
        return dept.break_hours if dept is not None else WeeklyHours()

    def timezone_for(self, user: User) -> str:
        """The user's time zone (an IANA name): their department's, else ``UTC``.

        Message times are read (mailbox by phone) and written (voicemail email) in it.
        """
        dept = self.department(user.department)
        return dept.timezone if dept is not None else "UTC"

    def caller_id_for(self, user: User) -> str:
        """Outbound caller ID: the user's own, else the department's."""
        if user.outbound_caller_id:
            return user.outbound_caller_id
        dept = self.department(user.department)
        return dept.caller_id if dept is not None else ""


# --------------------------------------------------------------------------- registrations


@dataclass(frozen=True, slots=True, kw_only=True)
class Binding:
    """A registrar contact binding (RFC 3261 s10, RFC 5626 instance/reg-id).

    Keyword-only, so call sites read as the registrar's fields.
    """

    aor: str  # the extension
    contact: str  # the Contact URI
    expires_at: float  # epoch seconds
    q: float = 1.0
    call_id: str
    cseq: int
    source: str  # e.g. "udp:127.0.0.1:5062"
    user_agent: str = ""
    instance: str = ""  # +sip.instance, empty when absent
    reg_id: int | None = None
    # The REGISTER's Path (RFC 3327), as its header values in order: the proxies
    # (the edge) a request to this contact goes through; empty when it came direct.
    path: tuple[str, ...] = ()

    def expired(self, now: float) -> bool:
        return self.expires_at <= now


def binding_json(b: Binding, now: float) -> dict[str, object]:
    """A live binding as the CLI and the admin HTTP show it."""
    return {"extension": b.aor, "contact": b.contact, "expires_in": max(0, int(b.expires_at - now)),
            "q": b.q, "source": b.source, "user_agent": b.user_agent}


@dataclass(frozen=True, slots=True, kw_only=True)
class Node:
    """One engine process sharing the store: its heartbeat row."""

    id: str  # host:port unless given (serve --node-id)
    address: str  # its SIP address, host:port
    started_at: float  # epoch seconds
    last_seen: float  # epoch seconds of the last heartbeat
    calls: int  # calls it holds
    registrations: int  # live bindings it holds in memory (its own and the others')


# RFC 4235 s4.1.2: what a <dialog> may say; a published dialog is refused otherwise.
DIALOG_STATES = ("trying", "proceeding", "early", "confirmed", "terminated")
DIALOG_DIRECTIONS = ("initiator", "recipient")


@dataclass(frozen=True, slots=True)
class DialogView:
    """One dialog of an extension (or a park orbit), as RFC 4235 s4.1 describes it:
    what a busy lamp shows. A node publishes the ones of resources other nodes watch
    (``Store.write_lamps``), so it lives here, below the engine and the store."""

    id: str
    call_id: str
    local_tag: str
    remote_tag: str
    direction: str  # initiator | recipient
    state: str  # trying | proceeding | early | confirmed | terminated
    local: tuple[str, str]  # (URI, display name)
    remote: tuple[str, str]


@dataclass(frozen=True, slots=True)
class LampSnapshot:
    """The busy lamps the other nodes share (``Store.lamps_state``): the resources
    (extensions, park orbits) their subscriptions watch, and the dialogs each of them
    published for a watched resource it holds calls of (resource -> node -> dialogs)."""

    revision: int
    watched: frozenset[str]
    dialogs: dict[str, dict[str, tuple[DialogView, ...]]]


@dataclass(frozen=True, slots=True, kw_only=True)
class DialogLeg:
    """One dialog of an answered call as the node holding it left it in the store:
    enough for another node to send a BYE in it (RFC 3261 s12.2.1.1) when that node
    dies. ``local_cseq`` is the last CSeq sent when the record was written."""

    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: str  # our From value, without its tag
    remote_uri: str  # our To value, without its tag
    remote_target: str  # the peer's Contact URI: the Request-URI
    route_set: tuple[str, ...] = ()  # Route values in the order they are sent
    local_cseq: int
    local_contact: str = ""
    transport: str  # udp, tcp, tls
    peer_host: str  # where its requests went: the edge, a trunk, a phone
    peer_port: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DialogRecord:
    """An answered call held by ``node``: its dialogs (the caller's, the callee's),
    written behind the answer and deleted when the call ends."""

    id: str  # the call: the caller's Call-ID and From tag ("call-id;from-tag")
    node: str  # the node id holding the call
    legs: tuple[DialogLeg, ...]
    answered_at: float  # epoch seconds


# --------------------------------------------------------------------------- voicemail


@dataclass(frozen=True, slots=True, kw_only=True)
class VoicemailMessage:
    """One message in a mailbox: who left it, when, how long, and its WAV file."""

    id: str
    box: str  # the extension
    caller: str
    time: float  # epoch seconds
    duration: float  # seconds
    path: str  # absolute path of the WAV (8 kHz, 16-bit, mono)
    read: bool = False


# --------------------------------------------------------------------------- accounts

#: What an API caller acts as: a signed-in user (their own role, extension and
#: department) or an integration's API key (the role it was created with).
PrincipalKind = Literal["user", "api_key"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Session:
    """A sign-in token as stored: only the SHA-256 of the token is kept."""

    token_hash: str
    extension: str
    created_at: float
    expires_at: float
    source: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiKey:
    """An integration's key: a role (and, for a department role, its department).

    The secret is shown once at creation; the store keeps its SHA-256 only (a
    key is 32 random bytes, so a slow hash adds nothing)."""

    id: str
    name: str
    role: Role
    department: str = ""
    secret_hash: str
    created_at: float
    revoked_at: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TotpRecord:
    """A user's TOTP enrolment (RFC 6238): the shared secret, the hashes of the
    unused recovery codes, and the last time step accepted (a code is good once)."""

    extension: str
    secret: str
    recovery_hashes: tuple[str, ...] = ()
    last_counter: int = -1
    created_at: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEntry:
    """One change: who (``user:101``, ``api_key:<id>``, ``cli``), what, the values
    before and after (secrets masked), when, and from where."""

    id: str
    at: float
    actor: str
    source: str
    action: str  # e.g. "users.update", "status.set", "auth.password"
    target: str  # e.g. "users/101"
    before: Mapping[str, object] | None = None
    after: Mapping[str, object] | None = None
