"""Load and validate the directory file (``shared/spec/directory.toml``).

Validation is complete and all-or-nothing: every problem is collected, then
one :class:`DirectoryError` lists them all.  Each message names the file,
the table and the key, e.g.::

    directory.toml: users[3].forwarding.away.no_answer.external: unknown extension '109'

Array-of-tables indexes are **0-based**, in file order: ``users[0]`` is the
first ``[[users]]`` table of the file.

:func:`directory_to_dict` is the inverse of :func:`parse_directory`: it
writes every value explicitly (defaults filled in), so that
``parse_directory(directory_to_dict(d)) == d``.  The store keeps rows in
that form.
"""

from __future__ import annotations

import datetime as dt
import difflib
import ipaddress
import re
import tomllib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from provisioning.model import (
    CODECS,
    DEFAULT_CODECS,
    DIGITS_RE,
    FEATURE_CODE_RE,
    FEATURE_CODES_WITH_SUFFIX,
    IVR_KEYS,
    LANGUAGES,
    NAME_RE,
    NUMBER_TYPES,
    PHONE_RE,
    PRIORITY_RE,
    QUEUE_STRATEGIES,
    READ_DATETIMES,
    RECORD_CALLS,
    ROLES,
    SRTP_MODES,
    STATUSES,
    STRATEGIES,
    TRANSPORTS,
    VOICEMAIL_EMAILS,
    WEEKDAYS,
    Codec,
    Department,
    Destination,
    DestinationError,
    Directory,
    FeatureCodes,
    Forwarding,
    Ivr,
    Language,
    Number,
    NumberIndex,
    Park,
    Queue,
    RingGroup,
    RuleTargets,
    Schedule,
    Smtp,
    Status,
    StatusRules,
    System,
    TimeRange,
    Trunk,
    User,
    VoicemailSettings,
    WeeklyHours,
    parse_destination,
)

__all__ = [
    "ROW_WRITERS",
    "TABLES",
    "TABLE_KEYS",
    "DirectoryError",
    "ParseMemo",
    "directory_to_dict",
    "load_directory",
    "parse_directory",
    "table_rows",
]

E = TypeVar("E", bound=str)
Check = Callable[[str], object]
"""A validity test for a string value; truthy means valid (e.g. ``PHONE_RE.fullmatch``)."""

#: The array-of-tables of the file, in file order, and each one's natural key.
TABLE_KEYS: Mapping[str, str] = {
    "trunks": "name",
    "departments": "name",
    "numbers": "number",
    "ring_groups": "name",
    "users": "extension",
    "ivrs": "name",
    "queues": "name",
}
#: Every table of the file, ``system`` first.
TABLES: tuple[str, ...] = ("system", *TABLE_KEYS)

HOST_RE = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
HOURS_RE = re.compile(
    r"([01][0-9]|2[0-3]):([0-5][0-9])-(?:([01][0-9]|2[0-3]):([0-5][0-9])|(24:00))"
)
PORTS_RE = re.compile(r"([0-9]{1,5})-([0-9]{1,5})")
PIN_RE = re.compile(r"[0-9]{4,12}")
# The admin listener as users reach it (behind a proxy: the proxy's): the links in
# welcome and password-reset emails. Never taken from a request's Host header, which
# the requester chooses (a reset link must not point to their server).
ADMIN_URL_RE = re.compile(r"https?://[A-Za-z0-9.\-]+(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~/\-]*)?")

SYSTEM_KEYS = (
    "domain",
    "extension_digits",
    "emergency_numbers",
    "min_register_expires",
    "max_register_expires",
    "hold_music",
    "voicemail_number",
    "rtp_ports",
    "smtp",
    "admin_url",
    "require_2fa",
    "feature_codes",
    "park",
)
FEATURE_CODE_KEYS = tuple(key for key, _ in FeatureCodes().items())
PARK_KEYS = ("orbits", "ring_back_seconds", "ring_back_to")
ORBITS_RE = re.compile(r"([0-9]{1,8})-([0-9]{1,8})")
MAX_ORBITS = 100
TRUNK_KEYS = (
    "name",
    "host",
    "port",
    "transport",
    "channels",
    "inbound_from",
    "inbound_port",
    "supports_302",
    "register",
    "username",
    "password",
)
DEPARTMENT_KEYS = (
    "name",
    "caller_id",
    "timezone",
    "language",
    "holidays",
    "office_hours",
    "break_hours",
)
NUMBER_KEYS = (
    "number",
    "name",
    "type",
    "route_to",
    "block_caller_id",
    "hold_music",
    "record_inbound",
    "record_outbound",
    "caller_id_name",
    "outbound_callers",
    "billing_group",
)
RING_GROUP_KEYS = ("name", "extension", "strategy", "members", "ring_seconds", "no_answer")
IVR_TABLE_KEYS = (
    "name",
    "extension",
    "prompt",
    "text",
    "language",
    "keys",
    "dial_by_extension",
    "timeout_seconds",
    "repeat",
    "on_timeout",
    "on_invalid",
    "outside_office_hours",
    "department",
)
QUEUE_KEYS = (
    "name",
    "extension",
    "strategy",
    "agents",
    "agents_start_logged_in",
    "ring_seconds",
    "wrap_up_seconds",
    "max_wait_seconds",
    "max_callers",
    "on_timeout",
    "when_no_agents",
    "hold_music",
    "announce_position_every",
    "service_level_seconds",
    "language",
    "priority_callers",
)
#: The longest ``text`` of an IVR rendered to speech (about a minute and a half spoken).
IVR_TEXT_MAX = 1000
USER_KEYS = (
    "extension",
    "name",
    "password",
    "voicemail_pin",
    "email",
    "mobile",
    "department",
    "role",
    "outbound_caller_id",
    "status",
    "accept_multiple_calls",
    "disabled",
    "external_calls",
    "outbound_pin_required",
    "codecs",
    "record_calls",
    "confirm_external_answer",
    "srtp",
    "voicemail",
    "schedule",
    "forwarding",
)
VOICEMAIL_KEYS = (
    "enabled",
    "language",
    "pin_required",
    "read_datetime",
    "announce_caller",
    "email",
    "max_seconds",
    "greeting",
)
SCHEDULE_KEYS = ("office_hours", "break_hours", "auto_status", "block_outbound_outside_hours")
STATUS_KEYS = (
    "no_answer_seconds",
    "no_answer",
    "busy",
    "ring_mobile_simultaneously",
    "accept_ring_group_calls",
    "log_out_of_queues",
    "voicemail_outside_office_hours",
    "greeting",
)


class DirectoryError(ValueError):
    """The directory is invalid.  ``errors`` holds one line per problem.

    ``fields`` holds the same problems as ``(path, message)`` pairs (``path``
    like ``users[3].forwarding.away.no_answer.external``, without the file
    name) when the parser found them, so the admin API can return each error
    by field; errors that are not about one field (a file that cannot be read)
    have none.
    """

    def __init__(self, errors: Sequence[str],
                 fields: Sequence[tuple[str, str]] = ()) -> None:
        self.errors: list[str] = list(errors)
        self.fields: list[tuple[str, str]] = list(fields)
        super().__init__(self.errors)

    def __str__(self) -> str:
        count = len(self.errors)
        head = f"{count} error{'s' if count != 1 else ''} in the directory:"
        return "\n  ".join([head, *self.errors])


# --------------------------------------------------------------------------- entry points


#: The secrets of each table a file may leave out (an export without --with-secrets).
KEPT_SECRETS: Mapping[str, tuple[str, ...]] = {"users": ("password", "voicemail_pin"),
                                               "trunks": ("password",)}


def keep_secrets(data: Mapping[str, Any], stored: Mapping[str, Any] | None) -> dict[str, Any]:
    """``data`` with each secret it leaves out taken from ``stored`` (the store's rows).

    The rule: a user (by extension) or a trunk (by name) already in the store that
    the file gives without ``password`` (or, for a user, without ``voicemail_pin``)
    keeps the stored one; a file that wants a secret empty says ``= ""``. A new user
    or trunk without its secret gets no help here: the validator names what is
    missing. So an export without secrets applies as no change, and cannot wipe
    the SIP passwords and PINs of a system.
    """
    out = dict(data)
    if not stored:
        return out
    for table, keys in KEPT_SECRETS.items():
        rows, key_name = data.get(table), TABLE_KEYS[table]
        if not isinstance(rows, list):
            continue
        known = {str(r.get(key_name)): r for r in stored.get(table, []) if isinstance(r, dict)}
        filled = []
        for row in rows:
            old = known.get(str(row.get(key_name))) if isinstance(row, dict) else None
            if old is not None and isinstance(row, dict):
                row = dict(row) | {k: old[k] for k in keys if k not in row and old.get(k)}
            filled.append(row)
        out[table] = filled
    return out


def load_directory(path: str | Path, warnings: list[str] | None = None,
                   stored: Mapping[str, Any] | None = None) -> Directory:
    """Read, parse and validate a directory TOML file.

    The audio files it names (greetings, hold music) are checked against the
    file's folder (:mod:`provisioning.mediafiles`): a bad file is an error, a
    missing one a line added to ``warnings``. ``stored``: the store's directory
    (its rows), whose secrets the file may leave out (:func:`keep_secrets`).
    """
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise DirectoryError([f"{source}: cannot read the file: {exc.strerror or exc}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DirectoryError([f"{source}: line {line}: not valid UTF-8"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DirectoryError([_toml_error(source, exc)]) from None
    from provisioning.mediafiles import resolve_media_files

    directory = parse_directory(keep_secrets(data, stored), source)
    resolved, errors, found = resolve_media_files(directory, source,
                                                  Path(path).resolve().parent)
    if errors:
        raise DirectoryError(errors)
    if warnings is not None:
        warnings.extend(found)
    return resolved


def _toml_error(source: str, exc: tomllib.TOMLDecodeError) -> str:
    message = str(exc)
    found = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
    if found:
        detail = message[: found.start()]
        return f"{source}: line {found[1]}, column {found[2]}: invalid TOML: {detail}"
    found = re.search(r"\s*\(at end of document\)$", message)
    if found:
        return f"{source}: at the end of the file: invalid TOML: {message[: found.start()]}"
    return f"{source}: invalid TOML: {message}"


def parse_directory(data: Mapping[str, Any], source: str = "<directory>",
                    memo: ParseMemo | None = None) -> Directory:
    """Validate a decoded directory (a ``tomllib`` result) into a :class:`Directory`.

    ``source`` names the file in error messages.  Raises :class:`DirectoryError`
    listing every problem found; nothing is returned unless all is valid.
    ``memo`` (kept by whoever validates the same directory again and again, as the
    store does for the admin API) skips reading again a user row equal to one read
    without error in the same context; every check between rows still runs.
    """
    return _Parser(source, memo).parse(data)


@dataclass(frozen=True, slots=True)
class _UserRead:
    """One user row read without error, and what reading it depends on."""

    row: Mapping[str, Any]  # a private copy: a caller changing its row cannot fool the memo
    digits: int | None
    department: Department | None
    user: User
    refs: tuple[_Ref, ...]  # those that name another row; the path after the row's


class ParseMemo:
    """The users of the last :func:`parse_directory` that used it, by extension.

    A user row is a function of the row itself, ``system.extension_digits`` and its
    department; those three equal, the row's :class:`User` and the destinations it
    names are taken from here instead of read again (most of the cost of a
    1,000-user directory: every status's forwarding spelled out). Uniqueness of the
    extension and the references between rows are checked on every parse, so the
    result and the errors are the same as without the memo. Each parse replaces the
    memo with the rows it read; rows that had an error are never kept.
    """

    def __init__(self) -> None:
        self.users: dict[str, _UserRead] = {}
        self.hits = 0  # rows taken from the memo (for tests and profiling)


# --------------------------------------------------------------------------- table reader


_MISSING: Any = object()

_TOML_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "a boolean"),
    (int, "an integer"),
    (float, "a float"),
    (str, "a string"),
    (list, "an array"),
    (Mapping, "a table"),
    (dt.datetime, "a date-time"),
    (dt.date, "a date"),
    (dt.time, "a time"),
)


def _kind(value: object) -> str:
    for typ, name in _TOML_TYPES:
        if isinstance(value, typ):
            return name
    return type(value).__name__


def _join(path: str, key: str) -> str:
    if not key:
        return path
    return f"{path}.{key}" if path else key


class _Errors:
    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[str] = []
        self.fields: list[tuple[str, str]] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(f"{self.source}: {path}: {message}")
        self.fields.append((path, message))


class _Table:
    """A TOML table being read: typed getters that record errors and carry on.

    On an error a getter returns a placeholder (its default); the result is
    never used because the parser raises once it has collected everything.
    """

    def __init__(self, errors: _Errors, path: str, data: object, allowed: Collection[str]) -> None:
        self.errors = errors
        self.path = path
        self.data: Mapping[Any, Any] = data if isinstance(data, Mapping) else {}
        if not isinstance(data, Mapping):
            errors.add(path, f"must be a table, not {_kind(data)}")
        if not _key_set(allowed).issuperset(self.data):  # one C-level pass when all known
            for key in self.data:
                if key not in allowed:
                    errors.add(_join(path, str(key)),
                               "unknown key" + _suggest(str(key), allowed))

    def at(self, key: str) -> str:
        return _join(self.path, key)

    def error(self, key: str, message: str) -> None:
        self.errors.add(self.at(key), message)

    def has(self, key: str) -> bool:
        return key in self.data

    def get(self, key: str) -> Any:
        return self.data.get(key, _MISSING)

    def _typed(self, key: str, typ: type, what: str, required: bool) -> Any:
        value = self.get(key)
        if value is _MISSING:
            if required:
                self.error(key, "missing (required)")
            return _MISSING
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            self.error(key, f"must be {what}, not {_kind(value)}")
            return _MISSING
        return value

    def string(
        self,
        key: str,
        default: str | None = None,
        *,
        check: Check | None = None,
        expect: str = "",
        nonempty: bool = False,
    ) -> str:
        """A string; ``default=None`` makes it required.

        An empty string is accepted as "unset" when the default is empty;
        otherwise it must pass ``check`` (and ``nonempty``).
        """
        value = self._typed(key, str, "a string", default is None)
        if value is _MISSING:
            return default or ""
        text = str(value)
        if text == "" and default == "":
            return text
        if not text.strip() and (nonempty or check is not None):
            self.error(key, "must not be empty")
        elif check is not None and not check(text):
            self.error(key, f"'{text}' is not {expect}")
        return text

    def integer(
        self, key: str, default: int | None = None, *, lo: int | None = None, hi: int | None = None
    ) -> int:
        """An integer in ``[lo, hi]``; ``default=None`` makes it required."""
        value = self._typed(key, int, "an integer", default is None)
        if value is _MISSING:
            return default if default is not None else 0
        if lo is not None and value < lo:
            self.error(key, f"must be at least {lo}, not {value}")
        elif hi is not None and value > hi:
            self.error(key, f"must be at most {hi}, not {value}")
        return int(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self._typed(key, bool, "true or false", False)
        return default if value is _MISSING else bool(value)

    def choice(self, key: str, choices: tuple[E, ...], default: E) -> E:
        value = self._typed(key, str, "a string", False)
        if value is _MISSING:
            return default
        if value not in choices:
            self.error(key, f"'{value}' is not one of: {', '.join(choices)}")
            return default
        return choices[choices.index(value)]

    def strings(
        self,
        key: str,
        default: tuple[str, ...] = (),
        *,
        check: Check | None = None,
        expect: str = "",
        unique: bool = True,
    ) -> tuple[str, ...]:
        """An array of non-empty strings."""
        value = self._typed(key, list, "an array of strings", False)
        if value is _MISSING:
            return default
        items: list[str] = []
        for i, item in enumerate(value):
            where = f"{self.at(key)}[{i}]"
            if not isinstance(item, str):
                self.errors.add(where, f"must be a string, not {_kind(item)}")
            elif not item.strip():
                self.errors.add(where, "must not be empty")
            elif check is not None and not check(item):
                self.errors.add(where, f"'{item}' is not {expect}")
            elif unique and item in items:
                self.errors.add(where, f"'{item}' is listed twice")
            else:
                items.append(item)
        return tuple(items)

    def table(self, key: str, allowed: Collection[str]) -> _Table | None:
        value = self.get(key)
        if value is _MISSING:
            return None
        return _Table(self.errors, self.at(key), value, allowed)

    def tables(self, key: str, allowed: Collection[str]) -> list[_Table]:
        value = self.get(key)
        if value is _MISSING:
            return []
        if not isinstance(value, list):
            self.error(key, f"must be an array of tables ([[{key}]]), not {_kind(value)}")
            return []
        return [
            _Table(self.errors, f"{self.at(key)}[{i}]", item, allowed)
            for i, item in enumerate(value)
        ]


_KEY_SETS: dict[int, tuple[Collection[str], frozenset[str]]] = {}


def _key_set(allowed: Collection[str]) -> frozenset[str]:
    """``allowed`` as a set, made once per declaration (the tuples above)."""
    found = _KEY_SETS.get(id(allowed))
    if found is None or found[0] is not allowed:
        found = _KEY_SETS[id(allowed)] = (allowed, frozenset(allowed))
    return found[1]


def _suggest(key: str, allowed: Collection[str]) -> str:
    close = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{close[0]}'?)"
    return f" (expected one of: {', '.join(allowed)})"


# --------------------------------------------------------------------------- the parser


_Ref = tuple[str, Destination, str | None, bool]
"""A destination whose references are checked once everything is read: the rest of
its path after a base path, the destination, the user's extension when the rule
belongs to a user, and whether it is an internal-callers rule (may be
same_as_external)."""


class _Parser:
    def __init__(self, source: str, memo: ParseMemo | None = None) -> None:
        self.errors = _Errors(source)
        # (base path, refs under it): one entry per destination read, or per user row
        # taken from the memo (its refs as they were, without a new object each)
        self.refs: list[tuple[str, tuple[_Ref, ...]]] = []
        # where each extension / name was first defined, for "already used by" messages
        self.extensions: dict[str, str] = {}
        self.digits_valid = False
        self.memo = memo
        self.read: dict[str, _UserRead] = {}
        self.departments_equal: dict[tuple[int, int], bool] = {}
        self.system_table: _Table | None = None

    def parse(self, data: Mapping[str, Any]) -> Directory:
        root = _Table(self.errors, "", data, TABLES)
        system_table = root.table("system", SYSTEM_KEYS)
        if system_table is None:
            self.errors.add("system", "missing (the [system] table is required)")
        system = self.system(system_table) if system_table is not None else None
        self.system_table = system_table
        # extension lengths are only checked against a valid extension_digits
        digits = system.extension_digits if system is not None and self.digits_valid else None
        trunk_tables = root.tables("trunks", TRUNK_KEYS)
        trunks = tuple(self.trunk(t) for t in trunk_tables)
        department_tables = root.tables("departments", DEPARTMENT_KEYS)
        departments = tuple(self.department(t) for t in department_tables)
        number_tables = root.tables("numbers", NUMBER_KEYS)
        numbers = tuple(self.number(t) for t in number_tables)
        group_tables = root.tables("ring_groups", RING_GROUP_KEYS)
        ring_groups = tuple(self.ring_group(t, digits) for t in group_tables)
        dept_by_name = {d.name: d for d in departments}
        user_tables = root.tables("users", USER_KEYS)
        users = tuple(self.user_once(t, digits, dept_by_name) for t in user_tables)
        if self.memo is not None:
            self.memo.users = self.read
        ivr_tables = root.tables("ivrs", IVR_TABLE_KEYS)
        ivrs = tuple(self.ivr(t, digits, dept_by_name) for t in ivr_tables)
        queue_tables = root.tables("queues", QUEUE_KEYS)
        queues = tuple(self.queue(t, digits) for t in queue_tables)

        self.unique("name", trunks, trunk_tables, lambda t: t.name)
        self.unique("name", departments, department_tables, lambda d: d.name)
        index = self.same_numbers(numbers, number_tables)
        self.unique("name", ring_groups, group_tables, lambda g: g.name)
        self.unique("name", ivrs, ivr_tables, lambda i: i.name)
        self.unique("name", queues, queue_tables, lambda q: q.name)
        self.trunk_sources(trunks, trunk_tables)
        if system is not None:
            self.reserved_numbers(system, [*user_tables, *ivr_tables, *queue_tables],
                                  [*users, *ivrs, *queues], group_tables, ring_groups)
        users_by_ext = {u.extension: u for u in users}
        group_exts = {g.extension: g.name for g in ring_groups}
        self.ring_group_members(group_tables, ring_groups, users_by_ext)
        self.queue_agents(queue_tables, queues, users_by_ext)
        self.caller_ids(index, numbers, department_tables, departments, user_tables, users)
        self.outbound_callers(number_tables, numbers, users_by_ext, group_exts)
        system_exts = {ext: what for ext, what in {
            **{g.extension: f"ring group '{g.name}'; use 'ring_group:{g.name}'"
               for g in ring_groups},
            **{i.extension: f"IVR '{i.name}'; use 'ivr:{i.name}'" for i in ivrs},
            **{q.extension: f"queue '{q.name}'; use 'queue:{q.name}'" for q in queues},
        }.items() if ext not in users_by_ext}
        self.references(users_by_ext, {g.name for g in ring_groups}, system_exts,
                        {i.name for i in ivrs}, {q.name for q in queues})
        if system is not None and self.system_table is not None:
            self.feature_collisions(system, self.system_table, {
                **{n.number: f"number {n.number}" for n in numbers},
                **{e: f"ring group '{n}'" for e, n in group_exts.items()},
                **{i.extension: f"IVR '{i.name}'" for i in ivrs},
                **{q.extension: f"queue '{q.name}'" for q in queues},
                **{u.extension: f"extension {u.extension}" for u in users},
            })
        if self.errors.items or system is None:
            raise DirectoryError(self.errors.items, self.errors.fields)
        return Directory(
            system=system,
            trunks=trunks,
            departments=departments,
            numbers=numbers,
            ring_groups=ring_groups,
            users=users,
            ivrs=ivrs,
            queues=queues,
        )

    # ------------------------------------------------------------------ tables

    def system(self, t: _Table) -> System:
        before = len(self.errors.items)
        digits = t.integer("extension_digits", 3, lo=2, hi=6)
        self.digits_valid = len(self.errors.items) == before
        min_exp = t.integer("min_register_expires", 60, lo=1)
        max_exp = t.integer("max_register_expires", 3600, lo=1)
        if min_exp > max_exp and t.has("min_register_expires"):
            t.error("min_register_expires", f"{min_exp} is above max_register_expires ({max_exp})")
        rtp = t.string("rtp_ports", "20000-29999")
        rtp_min, rtp_max = 20000, 29999
        found = PORTS_RE.fullmatch(rtp)
        if not found:
            t.error("rtp_ports", f"'{rtp}' is not a port range like '20000-29999'")
        else:
            rtp_min, rtp_max = int(found[1]), int(found[2])
            if not 1024 <= rtp_min < rtp_max <= 65535:
                t.error("rtp_ports", f"'{rtp}': need 1024 <= first < last <= 65535")
        smtp: Smtp | None = None
        smtp_table = t.table("smtp", ("host", "port", "sender"))
        if smtp_table is not None:
            smtp = Smtp(
                host=smtp_table.string("host", check=_is_host, expect="a host name or address"),
                port=smtp_table.integer("port", 25, lo=1, hi=65535),
                sender=smtp_table.string("sender", "", check=EMAIL_RE.fullmatch, expect=_EMAIL),
            )
        return System(
            domain=t.string("domain", check=_is_host, expect="a domain name or IP address"),
            extension_digits=digits,
            emergency_numbers=t.strings(
                "emergency_numbers", ("911", "112"), check=DIGITS_RE.fullmatch, expect="digits"
            ),
            min_register_expires=min_exp,
            max_register_expires=max_exp,
            hold_music=t.strings("hold_music", unique=False),
            voicemail_number=t.string(
                "voicemail_number", "9" * digits, check=DIGITS_RE.fullmatch, expect="digits"
            ),
            rtp_port_min=rtp_min,
            rtp_port_max=rtp_max,
            smtp=smtp,
            admin_url=t.string("admin_url", "", check=ADMIN_URL_RE.fullmatch,
                               expect="an http(s) URL like https://pbx.example.com:8443").rstrip("/"),
            require_2fa=t.boolean("require_2fa", False),
            feature_codes=self.feature_codes(t),
            park=self.park(t),
        )

    def feature_codes(self, system: _Table) -> FeatureCodes:
        t = system.table("feature_codes", FEATURE_CODE_KEYS)
        defaults = FeatureCodes()
        if t is None:
            return defaults
        codes = {key: t.string(key, code, check=FEATURE_CODE_RE.fullmatch,
                               expect="a code of 1 to 8 characters among * # 0-9")
                 for key, code in defaults.items()}
        return FeatureCodes(**codes)

    def park(self, system: _Table) -> Park:
        t = system.table("park", PARK_KEYS)
        defaults = Park()
        if t is None:
            return defaults
        orbits = t.string("orbits", f"{defaults.orbit_min}-{defaults.orbit_max}")
        lo, hi, digits = defaults.orbit_min, defaults.orbit_max, defaults.digits
        found = ORBITS_RE.fullmatch(orbits)
        if found is None:
            t.error("orbits", f"'{orbits}' is not a range of orbit numbers like '701-709'")
        elif len(found[1]) != len(found[2]) or int(found[1]) > int(found[2]):
            t.error("orbits", f"'{orbits}': the first and last orbit must have as many digits, "
                    "the first not above the last")
        elif int(found[2]) - int(found[1]) + 1 > MAX_ORBITS:
            t.error("orbits", f"'{orbits}': at most {MAX_ORBITS} orbits")
        else:
            lo, hi, digits = int(found[1]), int(found[2]), len(found[1])
        ring_back_to = defaults.ring_back_to
        raw = t.get("ring_back_to")
        if raw is not _MISSING:
            # "voicemail" alone is the parker's mailbox: no owner to check it against here
            try:
                ring_back_to = parse_destination(raw)
            except DestinationError as exc:
                self.errors.add(_join(t.at("ring_back_to"), exc.key), exc.message)
            else:
                if ring_back_to.kind in ("mobile", "same_as_external"):
                    t.error("ring_back_to", f"'{ring_back_to}' is not a destination for a "
                            "parked call (use voicemail, extension:, ring_group:, queue:, ivr:, "
                            "external: or busy)")
                elif ring_back_to != Destination("voicemail"):
                    self.refs.append((t.at("ring_back_to"), (("", ring_back_to, None, True),)))
        return Park(orbit_min=lo, orbit_max=hi, digits=digits,
                    ring_back_seconds=t.integer("ring_back_seconds", defaults.ring_back_seconds,
                                                lo=10, hi=3600),
                    ring_back_to=ring_back_to)

    def feature_collisions(self, system: System, t: _Table, taken: Mapping[str, str]) -> None:
        """A feature code equal to an extension, a number, an orbit, a reserved number
        or another code, or one that another code or extension starts with while it
        takes digits after it (``**`` + 102 against a code ``**1``), refuses the file,
        naming the key."""
        codes = system.feature_codes
        reserved: dict[str, str] = {
            **taken,
            system.voicemail_number: "system.voicemail_number",
            system.outbound_pin_prefix: "the outbound PIN prefix",
            **{n: "system.emergency_numbers" for n in system.emergency_numbers},
            **{o: f"park orbit {o} (system.park.orbits)" for o in system.park.orbits},
        }
        where = t.at("feature_codes")  # the defaults collide under the same name
        for orbit in system.park.orbits:
            if orbit in taken:
                self.errors.add(_join(t.at("park"), "orbits"),
                                f"orbit {orbit} collides with {taken[orbit]}")
                break
        seen: list[tuple[str, str]] = []
        for key, code in codes.items():
            path = _join(where, key)
            suffix = key in FEATURE_CODES_WITH_SUFFIX
            for other, other_code in seen:
                other_suffix = other in FEATURE_CODES_WITH_SUFFIX
                if code == other_code:
                    self.errors.add(path, f"'{code}' is also the code of {other}")
                elif (other_suffix and code.startswith(other_code)) or (
                        suffix and other_code.startswith(code)):
                    self.errors.add(path, f"'{code}' and {other} ('{other_code}') are ambiguous "
                                    "(one starts with the other, which takes digits after it)")
            seen.append((key, code))
            if code.startswith(system.outbound_pin_prefix):
                self.errors.add(path, f"'{code}' starts with the outbound PIN prefix "
                                f"({system.outbound_pin_prefix})")
                continue
            for number, what in reserved.items():
                if number == code or (suffix and number.startswith(code)):
                    self.errors.add(path, f"'{code}' collides with {what}")
                    break

    def trunk(self, t: _Table) -> Trunk:
        transport = t.choice("transport", TRANSPORTS, "udp")
        register = t.boolean("register", False)
        channels: int | None = None
        if t.has("channels"):
            channels = t.integer("channels", lo=1)
        inbound: list[str] = []
        for i, text in enumerate(t.strings("inbound_from")):
            try:
                inbound.append(str(ipaddress.ip_network(text, strict=True)))
            except ValueError as exc:
                self.errors.add(f"{t.at('inbound_from')}[{i}]", f"not a valid CIDR: {exc}")
        return Trunk(
            name=t.string("name", check=NAME_RE.fullmatch, expect=_NAME),
            host=t.string("host", check=_is_host, expect="a host name or IP address"),
            port=t.integer("port", 5061 if transport == "tls" else 5060, lo=1, hi=65535),
            transport=transport,
            channels=channels,
            inbound_from=tuple(inbound),
            inbound_port=t.integer("inbound_port", lo=1, hi=65535) if t.has("inbound_port")
            else None,
            supports_302=t.boolean("supports_302", False),
            register=register,
            username=t.string("username", None if register else "", nonempty=register),
            password=t.string("password", None if register else "", nonempty=register),
        )

    def department(self, t: _Table) -> Department:
        timezone = t.string("timezone", "UTC")
        if t.has("timezone") and not _valid_timezone(timezone):
            t.error(
                "timezone",
                f"unknown time zone '{timezone}' (use an IANA name like 'America/Toronto')",
            )
        holidays: list[dt.date] = []
        raw = t.get("holidays")
        if raw is not _MISSING and not isinstance(raw, list):
            t.error("holidays", f"must be an array of dates, not {_kind(raw)}")
        elif isinstance(raw, list):
            for i, item in enumerate(raw):
                where = f"{t.at('holidays')}[{i}]"
                day = _date(item)
                if day is None:
                    self.errors.add(where, f"'{item}' is not an ISO date like '2026-12-25'")
                elif day in holidays:
                    self.errors.add(where, f"{day.isoformat()} is listed twice")
                else:
                    holidays.append(day)
        office = t.table("office_hours", WEEKDAYS)
        breaks = t.table("break_hours", WEEKDAYS)
        return Department(
            name=t.string("name", nonempty=True),
            caller_id=t.string("caller_id", check=PHONE_RE.fullmatch, expect=_PHONE),
            timezone=timezone,
            language=t.choice("language", LANGUAGES, "en"),
            holidays=tuple(holidays),
            office_hours=self.weekly(office) if office is not None else None,
            break_hours=self.weekly(breaks) if breaks is not None else WeeklyHours(),
        )

    def number(self, t: _Table) -> Number:
        number = t.string("number", check=PHONE_RE.fullmatch, expect=_PHONE)
        return Number(
            number=number,
            name=t.string("name", ""),
            type=t.choice("type", NUMBER_TYPES, "bidirectional"),
            route_to=self.destination(t, "route_to", None, owner=None),
            block_caller_id=t.boolean("block_caller_id", False),
            hold_music=t.strings("hold_music", unique=False),
            record_inbound=t.boolean("record_inbound", False),
            record_outbound=t.boolean("record_outbound", False),
            caller_id_name=t.string("caller_id_name", "", check=_display_name,
                                    expect=_DISPLAY_NAME),
            outbound_callers=t.strings(
                "outbound_callers", check=DIGITS_RE.fullmatch, expect="an extension (digits)"
            ),
            billing_group=t.string("billing_group", "", check=_label, expect=_LABEL),
        )

    def ring_group(self, t: _Table, digits: int | None) -> RingGroup:
        name = t.string("name", check=NAME_RE.fullmatch, expect=_NAME)
        extension = self.extension(t, digits)
        members = t.strings("members", check=DIGITS_RE.fullmatch, expect="an extension (digits)")
        if t.has("members") and not members and isinstance(t.get("members"), list):
            t.error("members", "must list at least one extension")
        elif not t.has("members"):
            t.error("members", "missing (required)")
        return RingGroup(
            name=name,
            extension=extension,
            strategy=t.choice("strategy", STRATEGIES, "ring_all"),
            members=members,
            ring_seconds=t.integer("ring_seconds", 20, lo=1, hi=600),
            no_answer=self.destination(t, "no_answer", Destination("busy"), owner=None),
        )

    def ivr(self, t: _Table, digits: int | None, departments: Mapping[str, Department]) -> Ivr:
        name = t.string("name", check=NAME_RE.fullmatch, expect=_NAME)
        extension = self.extension(t, digits)
        department = t.string("department", "")
        dept = departments.get(department)
        if department and dept is None:
            t.error("department", f"unknown department '{department}'"
                    + _suggest(department, list(departments)))
        prompt = t.string("prompt", "")
        text = t.string("text", "")
        if prompt and not prompt.lower().endswith(".wav"):
            t.error("prompt", f"'{prompt}' must be a .wav file (PCM, 8 kHz, 16-bit, mono)")
        if prompt and text:
            t.error("text", "give a prompt (a WAV file) or a text (rendered to speech), "
                    "not both")
        elif not prompt and not text.strip():
            t.error("prompt", "missing (a WAV file, or text = \"...\" rendered to speech "
                    "when the directory is applied)")
        elif len(text) > IVR_TEXT_MAX:
            t.error("text", f"at most {IVR_TEXT_MAX} characters, not {len(text)}")
        keys: list[tuple[str, Destination]] = []
        keys_table = t.table("keys", IVR_KEYS)
        if keys_table is not None:
            for key in IVR_KEYS:
                if keys_table.has(key):
                    keys.append((key, self.destination(keys_table, key, None, owner=None)))
        dial = t.boolean("dial_by_extension", False)
        if not keys and not dial:
            t.error("keys", "the menu needs at least one key, or dial_by_extension = true")
        outside: Destination | None = None
        if t.has("outside_office_hours"):
            outside = self.destination(t, "outside_office_hours", None, owner=None)
            if not department:
                t.error("outside_office_hours", "needs the IVR's department (whose office "
                        "hours and holidays decide)")
        here = Destination("ivr", name) if name else Destination("busy")
        return Ivr(
            name=name,
            extension=extension,
            keys=tuple(keys),
            prompt=prompt,
            text=text,
            language=t.choice("language", LANGUAGES, dept.language if dept else "en"),
            dial_by_extension=dial,
            timeout_seconds=t.integer("timeout_seconds", 6, lo=1, hi=60),
            repeat=t.integer("repeat", 1, lo=0, hi=10),
            on_timeout=self.destination(t, "on_timeout", Destination("busy"), owner=None),
            on_invalid=self.destination(t, "on_invalid", here, owner=None),
            outside_office_hours=outside,
            department=department,
        )

    def queue(self, t: _Table, digits: int | None) -> Queue:
        name = t.string("name", check=NAME_RE.fullmatch, expect=_NAME)
        extension = self.extension(t, digits)
        agents = t.strings("agents", check=DIGITS_RE.fullmatch, expect="an extension (digits)")
        if not t.has("agents"):
            t.error("agents", "missing (required)")
        elif not agents and isinstance(t.get("agents"), list):
            t.error("agents", "must list at least one extension")
        no_agents: Destination | None = None
        if t.get("when_no_agents") != "join" and t.has("when_no_agents"):
            no_agents = self.destination(t, "when_no_agents", None, owner=None)
        return Queue(
            name=name,
            extension=extension,
            agents=agents,
            strategy=t.choice("strategy", QUEUE_STRATEGIES, "ring_all"),
            agents_start_logged_in=t.boolean("agents_start_logged_in", False),
            ring_seconds=t.integer("ring_seconds", 15, lo=1, hi=600),
            wrap_up_seconds=t.integer("wrap_up_seconds", 10, lo=0, hi=600),
            max_wait_seconds=t.integer("max_wait_seconds", 300, lo=1, hi=86400),
            max_callers=t.integer("max_callers", 20, lo=1, hi=10000),
            on_timeout=self.destination(t, "on_timeout", Destination("busy"), owner=None),
            when_no_agents=no_agents,
            hold_music=t.strings("hold_music", unique=False),
            announce_position_every=t.integer("announce_position_every", 0, lo=0, hi=3600),
            service_level_seconds=t.integer("service_level_seconds", 20, lo=1, hi=3600),
            language=t.choice("language", LANGUAGES, "en") if t.has("language") else None,
            priority_callers=t.strings(
                "priority_callers", check=PRIORITY_RE.fullmatch,
                expect="a number (+15145550199), an extension (101) or a prefix ending in "
                       "'*' (+1514*)"),
        )

    def user(self, t: _Table, digits: int | None, departments: Mapping[str, Department]) -> User:
        extension = self.extension(t, digits)
        disabled = t.boolean("disabled", False)
        department = t.string("department", nonempty=True)
        dept = departments.get(department)
        if department and dept is None:
            t.error(
                "department",
                f"unknown department '{department}'" + _suggest(department, list(departments)),
            )
        mobile = t.string("mobile", "", check=PHONE_RE.fullmatch, expect=_PHONE)
        email = t.string("email", "", check=EMAIL_RE.fullmatch, expect=_EMAIL)
        pin = t.string("voicemail_pin", "", check=PIN_RE.fullmatch, expect="4 to 12 digits")
        outbound_pin = t.boolean("outbound_pin_required", False)
        if outbound_pin and not pin:
            t.error(
                "outbound_pin_required", "needs a voicemail_pin (the PIN dialled after the prefix)"
            )
        voicemail = self.voicemail(t, dept, email)
        schedule = self.schedule(t)
        fallback = Destination("voicemail") if voicemail.enabled else Destination("busy")
        forwarding = self.forwarding(t, extension, fallback, mobile)
        user = User(
            extension=extension,
            name=t.string("name", nonempty=True),
            password=t.string("password", "" if disabled else None, nonempty=not disabled),
            voicemail_pin=pin,
            email=email,
            mobile=mobile,
            department=department,
            role=t.choice("role", ROLES, "user"),
            outbound_caller_id=t.string(
                "outbound_caller_id", "", check=PHONE_RE.fullmatch, expect=_PHONE
            ),
            status=t.choice("status", STATUSES, "available"),
            accept_multiple_calls=t.boolean("accept_multiple_calls", True),
            disabled=disabled,
            external_calls=t.boolean("external_calls", True),
            outbound_pin_required=outbound_pin,
            codecs=self.codecs(t),
            record_calls=t.choice("record_calls", RECORD_CALLS, "off"),
            confirm_external_answer=t.boolean("confirm_external_answer", False),
            srtp=t.choice("srtp", SRTP_MODES, "off"),
            voicemail=voicemail,
            schedule=schedule,
            forwarding=forwarding,
        )
        if dept is not None:
            self.needs_office_hours(t, user, dept)
        return user

    def user_once(self, t: _Table, digits: int | None,
                  departments: Mapping[str, Department]) -> User:
        """:meth:`user`, or the memo's reading of an equal row in the same context."""
        if self.memo is None:
            return self.user(t, digits, departments)
        extension, department = t.data.get("extension"), t.data.get("department")
        if not isinstance(extension, str) or not isinstance(department, str):
            return self.user(t, digits, departments)
        dept = departments.get(department)
        known = self.memo.users.get(extension)
        if (known is not None and known.digits == digits
                and self.same_department(known.department, dept) and known.row == t.data):
            # what self.user does across rows: the extension is unique, references later
            first = self.extensions.get(extension)
            if first is not None:
                t.error("extension", f"'{extension}' is already used by {first}")
            else:
                self.extensions[extension] = t.path
            self.refs.append((t.path, known.refs))
            self.read[extension] = known
            self.memo.hits += 1
            return known.user
        errors, refs = len(self.errors.items), len(self.refs)
        user = self.user(t, digits, departments)
        if len(self.errors.items) > errors or extension in self.read:
            return user
        # A reference that names no other row (the user's own voicemail or mobile,
        # an external number...) is checked now, once: the memo keeps the row only if
        # it is sound, and keeps only the references the other rows decide.
        cut, across = len(t.path), []
        for base, items in self.refs[refs:]:
            for suffix, dest, owner, internal in items:
                if _names_another_row(dest):
                    across.append((base[cut:] + suffix, dest, owner, internal))
                elif _reference_problem(dest, owner, internal, {extension: user}, set(), {}):
                    return user  # references() names it
        self.read[extension] = _UserRead(_copy_row(t.data), digits, dept, user, tuple(across))
        return user

    def same_department(self, a: Department | None, b: Department | None) -> bool:
        """Equal departments (each parse makes new ones), compared once per parse."""
        key = (id(a), id(b))
        same = self.departments_equal.get(key)
        if same is None:
            same = self.departments_equal[key] = a == b
        return same

    # ------------------------------------------------------------------ user parts

    def voicemail(self, user: _Table, dept: Department | None, email: str) -> VoicemailSettings:
        default_language: Language = dept.language if dept is not None else "en"
        t = user.table("voicemail", VOICEMAIL_KEYS)
        if t is None:
            return VoicemailSettings(language=default_language)
        settings = VoicemailSettings(
            enabled=t.boolean("enabled", True),
            language=t.choice("language", LANGUAGES, default_language),
            pin_required=t.boolean("pin_required", True),
            read_datetime=t.choice("read_datetime", READ_DATETIMES, "24h"),
            announce_caller=t.boolean("announce_caller", False),
            email=t.choice("email", VOICEMAIL_EMAILS, "none"),
            max_seconds=t.integer("max_seconds", 180, lo=1, hi=3600),
            greeting=self.greeting(t),
        )
        if settings.email != "none" and user.get("email") in (_MISSING, ""):
            t.error("email", f"'{settings.email}' needs the user's email address")
        return settings

    def schedule(self, user: _Table) -> Schedule:
        t = user.table("schedule", SCHEDULE_KEYS)
        if t is None:
            return Schedule()
        return Schedule(
            office_hours=self.hours_or_department(t, "office_hours"),
            break_hours=self.hours_or_department(t, "break_hours"),
            auto_status=t.boolean("auto_status", False),
            block_outbound_outside_hours=t.boolean("block_outbound_outside_hours", False),
        )

    def hours_or_department(self, t: _Table, key: str) -> WeeklyHours | None:
        value = t.get(key)
        if value is _MISSING or value == "department":
            return None
        if isinstance(value, Mapping):
            return self.weekly(_Table(self.errors, t.at(key), value, WEEKDAYS))
        t.error(key, 'must be "department" or a table of weekdays like departments.office_hours')
        return None

    def forwarding(
        self, user: _Table, extension: str, fallback: Destination, mobile: str
    ) -> Forwarding:
        t = user.table("forwarding", STATUSES)
        per_status: dict[str, StatusRules] = {}
        for status in STATUSES:
            rules_table = t.table(status, STATUS_KEYS) if t is not None else None
            if rules_table is None:
                per_status[status] = StatusRules.default(fallback)
                continue
            rules = StatusRules(
                no_answer_seconds=rules_table.integer("no_answer_seconds", 20, lo=0, hi=600),
                no_answer=self.targets(rules_table, "no_answer", extension, fallback),
                busy=self.targets(rules_table, "busy", extension, fallback),
                ring_mobile_simultaneously=rules_table.boolean("ring_mobile_simultaneously", False),
                accept_ring_group_calls=rules_table.boolean("accept_ring_group_calls", True),
                log_out_of_queues=rules_table.boolean("log_out_of_queues", False),
                voicemail_outside_office_hours=rules_table.boolean(
                    "voicemail_outside_office_hours", False
                ),
                greeting=self.greeting(rules_table),
            )
            if rules.ring_mobile_simultaneously and user.get("mobile") in (_MISSING, ""):
                rules_table.error("ring_mobile_simultaneously", "the user has no mobile number")
            per_status[status] = rules
        return Forwarding(**per_status)

    def targets(
        self, rules: _Table, key: str, extension: str, fallback: Destination
    ) -> RuleTargets:
        t = rules.table(key, ("external", "internal"))
        if t is None:
            return RuleTargets(fallback, fallback)
        return RuleTargets(
            external=self.destination(t, "external", fallback, owner=extension),
            internal=self.destination(t, "internal", fallback, owner=extension, internal=True),
        )

    def greeting(self, t: _Table) -> str:
        greeting = t.string("greeting", "default", nonempty=True)
        if greeting != "default" and greeting.strip() and not greeting.lower().endswith(".wav"):
            t.error("greeting", f"'{greeting}' must be \"default\" or a .wav file")
        return greeting

    def codecs(self, t: _Table) -> tuple[Codec, ...]:
        names = t.strings("codecs", DEFAULT_CODECS)
        codecs: list[Codec] = []
        by_lower = {c.lower(): c for c in CODECS}
        for i, name in enumerate(names):
            codec = by_lower.get(name.lower())
            if codec is None:
                self.errors.add(
                    f"{t.at('codecs')}[{i}]",
                    f"unknown codec '{name}' (supported: {', '.join(CODECS)})",
                )
            elif codec in codecs:
                self.errors.add(f"{t.at('codecs')}[{i}]", f"'{name}' is listed twice")
            else:
                codecs.append(codec)
        if t.has("codecs") and isinstance(t.get("codecs"), list) and not t.get("codecs"):
            t.error("codecs", "must list at least one codec")
        return tuple(codecs)

    def needs_office_hours(self, t: _Table, user: User, dept: Department) -> None:
        if user.schedule.office_hours is not None or dept.office_hours is not None:
            return
        why = f"needs office hours, but neither the user nor department '{dept.name}' has any"
        if user.schedule.auto_status:
            self.errors.add(t.at("schedule.auto_status"), why)
        if user.schedule.block_outbound_outside_hours:
            self.errors.add(t.at("schedule.block_outbound_outside_hours"), why)
        for status in STATUSES:
            if user.forwarding.for_status(status).voicemail_outside_office_hours:
                self.errors.add(t.at(f"forwarding.{status}.voicemail_outside_office_hours"), why)

    # ------------------------------------------------------------------ values

    def extension(self, t: _Table, digits: int | None) -> str:
        extension = t.string("extension", check=DIGITS_RE.fullmatch, expect="digits only")
        if not extension:
            return extension
        if digits is not None and DIGITS_RE.fullmatch(extension) and len(extension) != digits:
            t.error(
                "extension", f"'{extension}' must have {digits} digits (system.extension_digits)"
            )
        first = self.extensions.get(extension)
        if first is not None:
            t.error("extension", f"'{extension}' is already used by {first}")
        else:
            self.extensions[extension] = t.path
        return extension

    def weekly(self, t: _Table) -> WeeklyHours:
        days: dict[str, tuple[TimeRange, ...]] = {}
        for day in WEEKDAYS:
            ranges: list[TimeRange] = []
            for i, text in enumerate(t.strings(day)):
                where = f"{t.at(day)}[{i}]"
                found = HOURS_RE.fullmatch(text)
                if not found:
                    self.errors.add(where, f"'{text}' is not \"HH:MM-HH:MM\"")
                    continue
                start = int(found[1]) * 60 + int(found[2])
                end = 1440 if found[5] else int(found[3]) * 60 + int(found[4])
                if start >= end:
                    self.errors.add(where, f"'{text}': the start must be before the end")
                    continue
                clash = next((r for r in ranges if r.start < end and start < r.end), None)
                if clash is not None:
                    self.errors.add(where, f"'{text}' overlaps '{clash}'")
                    continue
                ranges.append(TimeRange(start, end))
            days[day] = tuple(sorted(ranges))
        return WeeklyHours(**days)

    def destination(
        self,
        t: _Table,
        key: str,
        default: Destination | None,
        *,
        owner: str | None,
        internal: bool = False,
    ) -> Destination:
        value = t.get(key)
        if value is _MISSING:
            if default is None:
                t.error(key, "missing (required)")
                return Destination("busy")
            return default
        try:
            dest = parse_destination(value)
        except DestinationError as exc:
            self.errors.add(_join(t.at(key), exc.key), exc.message)
            return default or Destination("busy")
        self.refs.append((t.at(key), (("", dest, owner, internal),)))
        return dest

    # ------------------------------------------------------------------ cross-checks

    def unique(
        self,
        key: str,
        items: Sequence[Any],
        tables: Sequence[_Table],
        name_of: Callable[[Any], str],
    ) -> None:
        seen: dict[str, str] = {}
        for item, t in zip(items, tables, strict=True):
            name = name_of(item)
            if not name:
                continue
            if name in seen:
                t.error(key, f"'{name}' is already used by {seen[name]}")
            else:
                seen[name] = t.path

    def same_numbers(self, numbers: Sequence[Number], tables: Sequence[_Table]) -> NumberIndex:
        """Refuse two ``[[numbers]]`` that one lookup cannot tell apart (``+15145550100``
        and ``15145550100`` or ``5145550100``: :class:`NumberIndex`); the index of the
        others, for the caller ID checks."""
        index = NumberIndex()
        where: dict[str, str] = {}
        for number, t in zip(numbers, tables, strict=True):
            if not number.number:
                continue
            first = index.find(number.number)
            if first is not None:
                same = "already used by" if first.number == number.number else (
                    f"the same number as '{first.number}' of")
                t.error("number", f"'{number.number}' is {same} {where[first.number]}")
                continue
            index.add(number)
            where[number.number] = t.path
        return index

    def caller_ids(
        self,
        index: NumberIndex,
        numbers: Sequence[Number],
        department_tables: Sequence[_Table],
        departments: Sequence[Department],
        user_tables: Sequence[_Table],
        users: Sequence[User],
    ) -> None:
        """A caller ID (a department's ``caller_id``, a user's ``outbound_caller_id``)
        must be one of ``[[numbers]]`` that may be presented (not ``inbound_only`` or
        ``toll_free``): the carrier would refuse or rewrite anything else, and the
        number's settings (name, privacy, recording, billing group) must apply."""
        position = {id(n): i for i, n in enumerate(numbers)}
        pairs: list[tuple[_Table, str, str]] = [
            *((t, "caller_id", d.caller_id) for d, t in
              zip(departments, department_tables, strict=True)),
            *((t, "outbound_caller_id", u.outbound_caller_id) for u, t in
              zip(users, user_tables, strict=True)),
        ]
        for t, key, caller_id in pairs:
            if not caller_id or not PHONE_RE.fullmatch(caller_id):
                continue  # unset, or already refused as not a phone number
            number = index.find(caller_id)
            if number is None:
                t.error(key, f"'{caller_id}' is not one of [[numbers]] (a caller ID must be "
                        "a number of the system; add it there)")
            elif not number.outbound:
                t.error(key, f"'{caller_id}' is numbers[{position[id(number)]}], "
                        f"type = \"{number.type}\": it cannot be presented as an outbound "
                        "caller ID (only bidirectional numbers can)")

    def outbound_callers(
        self,
        tables: Sequence[_Table],
        numbers: Sequence[Number],
        users: Mapping[str, User],
        group_exts: Mapping[str, str],
    ) -> None:
        for number, t in zip(numbers, tables, strict=True):
            if number.outbound_callers and not number.outbound:
                t.error("outbound_callers", f"a {number.type} number cannot be presented as "
                        "an outbound caller ID (only bidirectional numbers can)")
            for i, extension in enumerate(number.outbound_callers):
                where = f"{t.at('outbound_callers')}[{i}]"
                if extension in group_exts:
                    self.errors.add(where, f"'{extension}' is ring group "
                                    f"'{group_exts[extension]}'; outbound callers are users")
                elif extension not in users:
                    self.errors.add(where, f"unknown extension '{extension}'")

    def trunk_sources(self, trunks: Sequence[Trunk], tables: Sequence[_Table]) -> None:
        networks: list[tuple[IPNetwork, str, int | None]] = []
        for trunk, t in zip(trunks, tables, strict=True):
            for i, cidr in enumerate(trunk.inbound_from):
                net = ipaddress.ip_network(cidr)
                other = next((o for n, o, port in networks if _overlaps(n, net)
                              and (port is None or trunk.inbound_port is None
                                   or port == trunk.inbound_port)), None)
                if other is not None:
                    self.errors.add(
                        f"{t.at('inbound_from')}[{i}]",
                        f"{cidr} overlaps a source of trunk '{other}' (a caller must identify "
                        "exactly one trunk)",
                    )
                networks.append((net, trunk.name, trunk.inbound_port))

    def reserved_numbers(
        self,
        system: System,
        user_tables: Sequence[_Table],
        users: Sequence[User | Ivr | Queue],
        group_tables: Sequence[_Table],
        groups: Sequence[RingGroup],
    ) -> None:
        reserved = {
            system.voicemail_number: "system.voicemail_number",
            system.outbound_pin_prefix: "the outbound PIN prefix",
        }
        for number in system.emergency_numbers:
            reserved[number] = "system.emergency_numbers"
        pairs: list[tuple[User | Ivr | Queue | RingGroup, _Table]] = [
            *zip(users, user_tables, strict=True),
            *zip(groups, group_tables, strict=True),
        ]
        for item, t in pairs:
            clash = reserved.get(item.extension)
            if clash is not None:
                t.error("extension", f"'{item.extension}' is reserved ({clash})")

    def ring_group_members(
        self,
        tables: Sequence[_Table],
        groups: Sequence[RingGroup],
        users: Mapping[str, User],
    ) -> None:
        group_exts = {g.extension: g.name for g in groups}
        for group, t in zip(groups, tables, strict=True):
            for i, member in enumerate(group.members):
                if member in users:
                    continue
                where = f"{t.at('members')}[{i}]"
                if member in group_exts:
                    self.errors.add(
                        where, f"'{member}' is ring group '{group_exts[member]}'; members are users"
                    )
                else:
                    self.errors.add(where, f"unknown extension '{member}'")

    def queue_agents(
        self, tables: Sequence[_Table], queues: Sequence[Queue], users: Mapping[str, User]
    ) -> None:
        for queue, t in zip(queues, tables, strict=True):
            for i, agent in enumerate(queue.agents):
                if agent not in users:
                    where = f"{t.at('agents')}[{i}]"
                    first = self.extensions.get(agent)
                    self.errors.add(where, f"'{agent}' is {first}; agents are users" if first
                                    else f"unknown extension '{agent}'")

    def references(
        self,
        users: Mapping[str, User],
        group_names: set[str],
        system_exts: Mapping[str, str],
        ivr_names: set[str],
        queue_names: set[str],
    ) -> None:
        for base, items in self.refs:
            for suffix, dest, owner, internal in items:
                problem = _reference_problem(dest, owner, internal, users, group_names,
                                             system_exts)
                if not problem and dest.kind == "ivr" and dest.target not in ivr_names:
                    problem = f"unknown IVR '{dest.target}'" + (
                        _suggest(dest.target, ivr_names) if ivr_names else " (no [[ivrs]])")
                if not problem and dest.kind == "queue" and dest.target not in queue_names:
                    problem = f"unknown queue '{dest.target}'" + (
                        _suggest(dest.target, queue_names) if queue_names
                        else " (no [[queues]])")
                if problem:
                    self.errors.add(base + suffix, problem)


def _names_another_row(dest: Destination) -> bool:
    """Whether a user's destination is valid or not depending on other rows."""
    return dest.kind in ("extension", "ring_group", "ivr", "queue") or (
        dest.kind == "voicemail" and bool(dest.target))


def _reference_problem(
    dest: Destination,
    owner_extension: str | None,
    internal: bool,
    users: Mapping[str, User],
    group_names: set[str],
    system_exts: Mapping[str, str],
) -> str:
    owner = users.get(owner_extension) if owner_extension is not None else None
    if dest.kind == "same_as_external" and not internal:
        return "'same_as_external' is only valid for internal callers"
    if dest.kind in ("mobile", "voicemail") and not dest.target and owner_extension is None:
        return f"'{dest.kind}' needs a user; name one (e.g. 'voicemail:101' or 'external:+1...')"
    if dest.kind == "mobile" and owner is not None and not owner.mobile:
        return "'mobile' but the user has no mobile number"
    if dest.kind == "voicemail":
        box = users.get(dest.target) if dest.target else owner
        if dest.target and box is None:
            return f"unknown extension '{dest.target}'"
        if box is not None and not box.voicemail.enabled:
            return f"the voicemail of {box.extension} is disabled"
    if dest.kind == "extension":
        if dest.target in system_exts:
            return f"'{dest.target}' is {system_exts[dest.target]}"
        if dest.target not in users:
            return f"unknown extension '{dest.target}'"
        if dest.target == owner_extension:
            return f"'{dest}' forwards the user to themselves"
    if dest.kind == "ring_group" and dest.target not in group_names:
        return f"unknown ring group '{dest.target}'" + _suggest(dest.target, group_names)
    return ""


def _copy_row(value: Any) -> Any:
    """A deep copy of decoded TOML/JSON (tables, arrays, scalars), faster than deepcopy."""
    if isinstance(value, Mapping):
        return {k: _copy_row(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_row(v) for v in value]
    return value


def _display_name(text: str) -> bool:
    """A display name for From and P-Asserted-Identity: printable, no double quote or
    backslash (it goes between quotes), at most 64 characters."""
    return len(text) <= 64 and text.isprintable() and '"' not in text and "\\" not in text


def _label(text: str) -> bool:
    """A free label (billing group): printable, at most 64 characters."""
    return len(text) <= 64 and text.isprintable() and text == text.strip()


_DISPLAY_NAME = 'a display name (printable, no " or \\, at most 64 characters)'
_LABEL = "a label (printable, no leading or trailing spaces, at most 64 characters)"
_PHONE = "a phone number (E.164 like +15145550100, or digits)"
_NAME = "a name (letters, digits, _ . -)"
_EMAIL = "an email address"


def _date(value: object) -> dt.date | None:
    if isinstance(value, dt.datetime):
        return None
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str) and re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            return None
    return None


def _is_host(text: str) -> bool:
    """A DNS name or an IPv4/IPv6 address."""
    if HOST_RE.fullmatch(text):
        return True
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _overlaps(a: IPNetwork, b: IPNetwork) -> bool:
    if isinstance(a, ipaddress.IPv4Network) and isinstance(b, ipaddress.IPv4Network):
        return a.overlaps(b)
    if isinstance(a, ipaddress.IPv6Network) and isinstance(b, ipaddress.IPv6Network):
        return a.overlaps(b)
    return False


def _valid_timezone(name: str) -> bool:
    if not name or name.startswith("/") or ".." in name or "\0" in name:
        return False
    try:
        ZoneInfo(name)
    except Exception:  # ZoneInfo raises KeyError, ValueError, OSError... for bad names
        return False
    return True


# --------------------------------------------------------------------------- serialisation


def _hours(hours: WeeklyHours) -> dict[str, list[str]]:
    return {day: [str(r) for r in hours.day(i)] for i, day in enumerate(WEEKDAYS) if hours.day(i)}


def system_to_dict(s: System) -> dict[str, Any]:
    out: dict[str, Any] = {
        "domain": s.domain,
        "extension_digits": s.extension_digits,
        "emergency_numbers": list(s.emergency_numbers),
        "min_register_expires": s.min_register_expires,
        "max_register_expires": s.max_register_expires,
        "hold_music": list(s.hold_music),
        "voicemail_number": s.voicemail_number,
        "rtp_ports": f"{s.rtp_port_min}-{s.rtp_port_max}",
    }
    if s.smtp is not None:
        out["smtp"] = {"host": s.smtp.host, "port": s.smtp.port, "sender": s.smtp.sender}
    if s.admin_url:  # only when set: a directory without it exports as before
        out["admin_url"] = s.admin_url
    if s.require_2fa:  # likewise
        out["require_2fa"] = True
    if s.feature_codes != FeatureCodes():  # likewise: the defaults are not written out
        out["feature_codes"] = dict(s.feature_codes.items())
    if s.park != Park():
        out["park"] = {"orbits": f"{s.park.orbits[0]}-{s.park.orbits[-1]}",
                       "ring_back_seconds": s.park.ring_back_seconds,
                       "ring_back_to": s.park.ring_back_to.to_value()}
    return out


def trunk_to_dict(t: Trunk) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": t.name,
        "host": t.host,
        "port": t.port,
        "transport": t.transport,
        "inbound_from": list(t.inbound_from),
        "supports_302": t.supports_302,
        "register": t.register,
        "username": t.username,
        "password": t.password,
    }
    if t.channels is not None:
        out["channels"] = t.channels
    if t.inbound_port is not None:
        out["inbound_port"] = t.inbound_port
    return out


def department_to_dict(d: Department) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": d.name,
        "caller_id": d.caller_id,
        "timezone": d.timezone,
        "language": d.language,
        "holidays": [day.isoformat() for day in d.holidays],
        "break_hours": _hours(d.break_hours),
    }
    if d.office_hours is not None:
        out["office_hours"] = _hours(d.office_hours)
    return out


def number_to_dict(n: Number) -> dict[str, Any]:
    return {
        "number": n.number,
        "name": n.name,
        "type": n.type,
        "route_to": n.route_to.to_value(),
        "block_caller_id": n.block_caller_id,
        "hold_music": list(n.hold_music),
        "record_inbound": n.record_inbound,
        "record_outbound": n.record_outbound,
        "caller_id_name": n.caller_id_name,
        "outbound_callers": list(n.outbound_callers),
        "billing_group": n.billing_group,
    }


def ring_group_to_dict(g: RingGroup) -> dict[str, Any]:
    return {
        "name": g.name,
        "extension": g.extension,
        "strategy": g.strategy,
        "members": list(g.members),
        "ring_seconds": g.ring_seconds,
        "no_answer": g.no_answer.to_value(),
    }


def ivr_to_dict(i: Ivr) -> dict[str, Any]:
    out: dict[str, Any] = {"name": i.name, "extension": i.extension}
    if i.text:
        out["text"] = i.text
    else:
        out["prompt"] = i.prompt
    out.update({
        "language": i.language,
        "keys": {key: dest.to_value() for key, dest in i.keys},
        "dial_by_extension": i.dial_by_extension,
        "timeout_seconds": i.timeout_seconds,
        "repeat": i.repeat,
        "on_timeout": i.on_timeout.to_value(),
        "on_invalid": i.on_invalid.to_value(),
    })
    if i.outside_office_hours is not None:
        out["outside_office_hours"] = i.outside_office_hours.to_value()
    out["department"] = i.department
    return out


def queue_to_dict(q: Queue) -> dict[str, Any]:
    return {
        "name": q.name,
        "extension": q.extension,
        "strategy": q.strategy,
        "agents": list(q.agents),
        "agents_start_logged_in": q.agents_start_logged_in,
        "ring_seconds": q.ring_seconds,
        "wrap_up_seconds": q.wrap_up_seconds,
        "max_wait_seconds": q.max_wait_seconds,
        "max_callers": q.max_callers,
        "on_timeout": q.on_timeout.to_value(),
        "when_no_agents": "join" if q.when_no_agents is None else q.when_no_agents.to_value(),
        "hold_music": list(q.hold_music),
        "announce_position_every": q.announce_position_every,
        "service_level_seconds": q.service_level_seconds,
        "priority_callers": list(q.priority_callers),
    } | ({} if q.language is None else {"language": q.language})


def _rules_to_dict(r: StatusRules) -> dict[str, Any]:
    return {
        "no_answer_seconds": r.no_answer_seconds,
        "no_answer": {
            "external": r.no_answer.external.to_value(),
            "internal": r.no_answer.internal.to_value(),
        },
        "busy": {"external": r.busy.external.to_value(), "internal": r.busy.internal.to_value()},
        "ring_mobile_simultaneously": r.ring_mobile_simultaneously,
        "accept_ring_group_calls": r.accept_ring_group_calls,
        "log_out_of_queues": r.log_out_of_queues,
        "voicemail_outside_office_hours": r.voicemail_outside_office_hours,
        "greeting": r.greeting,
    }


def user_to_dict(u: User) -> dict[str, Any]:
    v, s = u.voicemail, u.schedule
    return {
        "extension": u.extension,
        "name": u.name,
        "password": u.password,
        "voicemail_pin": u.voicemail_pin,
        "email": u.email,
        "mobile": u.mobile,
        "department": u.department,
        "role": u.role,
        "outbound_caller_id": u.outbound_caller_id,
        "status": u.status,
        "accept_multiple_calls": u.accept_multiple_calls,
        "disabled": u.disabled,
        "external_calls": u.external_calls,
        "outbound_pin_required": u.outbound_pin_required,
        "codecs": list(u.codecs),
        "record_calls": u.record_calls,
        "confirm_external_answer": u.confirm_external_answer,
        "srtp": u.srtp,
        "voicemail": {
            "enabled": v.enabled,
            "language": v.language,
            "pin_required": v.pin_required,
            "read_datetime": v.read_datetime,
            "announce_caller": v.announce_caller,
            "email": v.email,
            "max_seconds": v.max_seconds,
            "greeting": v.greeting,
        },
        "schedule": {
            "office_hours": "department" if s.office_hours is None else _hours(s.office_hours),
            "break_hours": "department" if s.break_hours is None else _hours(s.break_hours),
            "auto_status": s.auto_status,
            "block_outbound_outside_hours": s.block_outbound_outside_hours,
        },
        "forwarding": {
            status: _rules_to_dict(u.forwarding.for_status(status)) for status in STATUSES
        },
    }


ROW_WRITERS: Mapping[str, Callable[[Any], dict[str, Any]]] = {
    "trunks": trunk_to_dict,
    "departments": department_to_dict,
    "numbers": number_to_dict,
    "ring_groups": ring_group_to_dict,
    "users": user_to_dict,
    "ivrs": ivr_to_dict,
    "queues": queue_to_dict,
}


def table_rows(d: Directory) -> dict[str, list[dict[str, Any]]]:
    """Each table of ``d`` as a list of row dicts in file order (``system``: one row)."""
    rows: dict[str, list[dict[str, Any]]] = {"system": [system_to_dict(d.system)]}
    for table, write in ROW_WRITERS.items():
        rows[table] = [write(item) for item in getattr(d, table)]
    return rows


def directory_to_dict(d: Directory) -> dict[str, Any]:
    """``d`` as a directory-file dict, every value explicit; ``parse_directory`` reads it back."""
    rows = table_rows(d)
    out: dict[str, Any] = {"system": rows.pop("system")[0]}
    out.update(rows)
    return out


def with_statuses(d: Directory, statuses: Mapping[str, Status]) -> Directory:
    """``d`` with the status of some users replaced (extensions not in ``d`` are ignored)."""
    if not any(u.extension in statuses for u in d.users):
        return d
    users = tuple(
        replace(u, status=statuses[u.extension]) if u.extension in statuses else u for u in d.users
    )
    return replace(d, users=users)
