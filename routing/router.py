"""Call routing: call facts + directory + live state -> :class:`~routing.steps.Plan`.

Pure: no I/O, no clock (``CallFacts.at`` is the time), no asyncio.  A
:class:`Router` holds the indexes of one :class:`~provisioning.model.Directory`
(built once); :func:`plan` finds or builds the router of a directory (a small
cache keyed by identity: ``Directory`` has ``__slots__`` and no
``__weakref__``, so the cache holds the last few directories strongly).

How a plan is built
-------------------
Destinations are compiled depth first into a flat list.  A :class:`Ring`
reserves its index, then compiles what follows each outcome after it, so
every ``on_*`` index is greater than the step's own.  Each path carries the
diversion chain, the users who forwarded the call (loop detection), the
forward hop count, the ring groups entered and what has rung so far (a device
or number never rings twice on one path).  A compiled destination either
emits steps (and returns the index of the first) or emits nothing and returns
``None``: "nothing more to try, the call ends with the outcome that led
here".

Decisions
---------
Where the directory contract (``shared/spec/directory.toml``) is silent:

* **Effective status**: a live override wins; with ``auto_status`` a
  department holiday is ``dnd``, break hours are ``away`` (checked before
  office hours, as breaks normally sit inside them), office hours are
  ``available``, anything else is ``dnd``; all in the department's time zone
  (DST handled by ``zoneinfo``).  A user without office hours keeps the
  configured status.  "Outside office hours" (for
  ``voicemail_outside_office_hours`` and ``block_outbound_outside_hours``)
  is: a department holiday, or office hours defined and not containing the
  local time; no office hours at all means never outside.
* **Order of a user's rules**: disabled (480) -> voicemail outside office
  hours -> ``no_answer_seconds = 0`` -> busy condition (no device registered,
  or on a call with ``accept_multiple_calls = false``) -> ring.  Zero seconds
  comes before the busy condition because the devices are not rung at all:
  someone on a business trip with the desk phone unplugged still wants the
  forward, not the busy rule.
* **Diversion reason** for ``no_answer_seconds = 0``: ``do-not-disturb`` in
  dnd, ``away`` in away, ``unconditional`` otherwise.  A failure while ringing
  a user follows the busy rule (same step as busy, reason ``user-busy``), so
  the plan stays small.
* **Skipped ring**: when everything a Ring would ring has already rung on the
  path, the step is skipped as if nobody answered (the no-answer rule, or the
  group's ``no_answer``).  A forward to a number that already rang, or to an
  external number with no free channel, goes to the next step when there is
  one (rebound: the voicemail), else ends (already rang: the call ends with
  the outcome that led there; no channel: 503).  If nothing at all is left
  for step 0, the plan is a single 480.
* **Rebound**: the screening leg rings for ``REBOUND_SECONDS`` (30 s: the
  announcement, about 10 s, plus time to press 1); refused, unanswered, busy
  or failed, the call goes to the forwarding user's voicemail (Busy if
  disabled).  A rebound forward that is not a user's rule (a DID's
  ``route_to``, a ring group's ``no_answer``) comes back to the first user
  who forwarded the call, if any; otherwise it just ends.
* **Confirmed answer** (a user's ``confirm_external_answer``): the external
  legs of that user's own rules (the mobile rung with the desk phones, a
  forward to the mobile or to a number) carry ``External.confirm``; the
  engine takes such an answer only after a 1 within ``CONFIRM_SECONDS``
  (10 s: the prompt is short, and a human who answered presses at once; a
  mobile's voicemail greeting runs longer than that). A rebound forward is
  not marked: it screens already. A forward rings with no timer, so its
  only unanswered outcome is a leg that did not confirm: it goes to the
  user's voicemail (Busy if disabled), like a refused rebound, instead of
  ending the call with 480. A forward that is not a user's rule (a DID's
  ``route_to``, a ring group's ``no_answer``) and a 302 deflection (the
  carrier takes the call) are not confirmed.
* **Deflect** (302) goes back through the trunk the call came in on, needs no
  free channel and ends our part of the call; it counts as ringing the number.
* **Trunk choice** for outbound legs: the first trunk in directory order with
  a free channel (``channels`` ``None`` = unlimited).  Emergency calls ignore
  the channel limit (first trunk with a free channel, else the first trunk).
* **Caller identity** on external legs (:class:`~routing.steps.Identity`,
  also ``Plan.identity``): for a trunk caller, their number and display name
  (privacy when the number is empty or ``anonymous``); for a phone caller,
  ``Directory.caller_id_for`` (the user's ``outbound_caller_id``, else the
  department's ``caller_id``), or the number its P-Preferred-Identity names
  when the caller is in that number's ``outbound_callers`` (otherwise the
  request is ignored and ``Identity.ignored`` says why).  The ``[[numbers]]``
  entry of the presented number (found by :meth:`Directory.number`, any
  form) gives its written form, its ``caller_id_name`` (the display name;
  none when empty: a user's own name never goes to a trunk), its privacy
  (``block_caller_id``, flipped by ``*82``) and its ``billing_group``.
  ``*82`` may also be dialled right after the PIN; each ``*82`` flips.
  Emergency calls present the department's number and name, never private,
  whatever the phone preferred.
* **PIN prefix**: ``777``/``7777`` is read as the PIN prefix when the caller
  has ``outbound_pin_required``, or when the digits after it start with the
  caller's PIN; otherwise a number starting with 777 is dialled as is.  A
  required PIN that does not match is ``403 Wrong PIN``.  The PIN may
  precede an extension or an emergency number too.
* **Phone calls**: dialling one's own extension opens one's mailbox like
  ``voicemail_number`` (403 when the caller's voicemail is disabled).  The
  caller's own device is never rung (it is on this call: a ring group skips
  it) and the caller counts as already in the forward chain, so a forward
  back to the caller stops as a loop (the first forwarding user's
  voicemail).  Outbound calls and emergency calls ring with no timer.  A
  phone dialling one of our own DIDs goes out through the trunk like any
  number (the spec's rule), it is not short-cut internally.
* **Ring groups** enter the diversion chain (``Diversion(group extension,
  "no-answer" | "unavailable")``) but not the loop/first-user logic; following
  a ring group counts as a forward hop (not from a DID), and re-entering a
  group already on the path is a loop.  ``ring_all``: busy and failed go to
  ``no_answer`` too.  ``hunt``: any non-answer moves to the next member.  A
  group's ``no_answer = "voicemail"`` (no user) or ``"mobile"`` is Busy.
* **Loops and the hop cap** (``MAX_FORWARD_HOPS = 5`` extension or ring group
  forwards): the step becomes the voicemail of the first user who forwarded
  the call (Busy when disabled or when no user forwarded it).
* **IVRs** (``ivr:NAME``): an :class:`~routing.steps.Ivr` step, terminal: the
  caller's key decides what follows, and :meth:`Router.choose` compiles that
  destination then, as a plan of its own for the same call (the caller, its
  identity and its rights stay those of the call; a key to an external
  number goes out like a DID's ``route_to``). Outside the hours of the IVR's
  department (a holiday, or office hours defined and not containing the
  local time, the users' rule), ``outside_office_hours`` replaces the menu
  when set. An IVR entered again on one path (``outside_office_hours`` of
  two IVRs pointing at each other) stops like a forward loop. Dial by
  extension reaches users, ring groups and IVRs (:meth:`Router.dialled`).
* **Queues** (``queue:NAME``): a :class:`~routing.steps.Queue` step, terminal:
  the engine answers, holds the caller and rings the queue's agents by its
  strategy (who is free is live state the engine keeps). A queue's extension
  dialled reaches it, from a phone and by an IVR's dial by extension.
* **Queue feature codes**: a user dialling ``*62`` (log in) or ``*63`` (log
  out), alone (every queue they are an agent of) or followed by a queue's
  extension, gets a :class:`~routing.steps.QueueLogin` step; a code naming a
  queue they are not an agent of is refused 404.
* **Feature codes** (``[system.feature_codes]``, validated against extensions,
  numbers, orbits and each other): ``pickup_directed`` + an extension and
  ``pickup_group`` give a :class:`~routing.steps.Pickup` of the extensions whose
  ringing call the picker may take: the same department by default (directed: the
  target's department is the picker's; group: the picker's department and the
  members of ring groups the picker is in); ``park`` a
  :class:`~routing.steps.Park` (reached as a blind transfer's target);
  ``unpark`` + an orbit, or the orbit dialled, an :class:`~routing.steps.Unpark`;
  ``intercom`` + an extension a :class:`~routing.steps.Ring` with ``intercom``
  set, for callers of the callee's department only (a 403 otherwise).
* **Hand-built directories** (no validation): an unknown extension is 404, a
  ``mobile`` destination of a user without a mobile goes to that user's
  voicemail, an unknown mailbox is Busy.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import TypeVar
from zoneinfo import ZoneInfo

from provisioning.model import (
    PHONE_RE,
    Department,
    Destination,
    Directory,
    Number,
    RingGroup,
    RuleTargets,
    Status,
    Trunk,
    User,
    WeeklyHours,
)
from provisioning.model import Ivr as IvrTable
from provisioning.model import Queue as QueueTable
from routing.steps import (
    Busy,
    CallFacts,
    Deflect,
    Device,
    Diversion,
    DiversionReason,
    External,
    Identity,
    Ivr,
    LiveState,
    MailboxAccess,
    Park,
    Pickup,
    Plan,
    Queue,
    QueueLogin,
    Reject,
    Ring,
    Step,
    Target,
    Unpark,
    Voicemail,
)

__all__ = [
    "CONFIRM_SECONDS",
    "MAX_FORWARD_HOPS",
    "QUEUE_LOGIN_CODE",
    "QUEUE_LOGOUT_CODE",
    "REBOUND_SECONDS",
    "RING_BACK_SECONDS",
    "Router",
    "effective_status",
    "plan",
    "router_for",
]

MAX_FORWARD_HOPS = 5
"""Extension / ring group forwards followed on one path before stopping."""
REBOUND_SECONDS = 30
"""No-answer timer of a rebound (screened) external leg."""
CONFIRM_SECONDS = 10
"""How long an answered ``confirm`` leg has to press 1 (the step's timer keeps running)."""

QUEUE_LOGIN_CODE = "*62"
"""The default queue log-in code (``[system.feature_codes] queue_login``)."""
QUEUE_LOGOUT_CODE = "*63"
"""The default queue log-out code (``[system.feature_codes] queue_logout``)."""
RING_BACK_SECONDS = 20
"""How long a parked call rings its parker back before ``ring_back_to``."""
INTERCOM_SECONDS = 20
"""No-answer timer of an intercom call (a phone that does not auto-answer rings)."""

_T = TypeVar("_T", bound=Target)
_UTC = ZoneInfo("UTC")
_EMPTY_STATE = LiveState()
_DIGITS = frozenset("0123456789")


def _digits(text: str) -> str:
    return "".join(c for c in text if c in _DIGITS)


def _number_key(number: str) -> str:
    return "n:" + _digits(number)


def _describe(dest: Destination) -> str:
    text = str(dest)
    if dest.rebound:
        return text + " (rebound)"
    if dest.deflect_302:
        return text + " (deflect_302)"
    return text


def _confirming(target: _T, user: User | None) -> _T:
    """``target`` as ``user``'s plan rings it: an external leg of a user with
    ``confirm_external_answer`` must press 1 (a rebound leg screens already)."""
    if isinstance(target, External) and user is not None and user.confirm_external_answer \
            and not target.rebound:
        return replace(target, confirm=True)
    return target


def _rule(external: bool, name: str, targets: RuleTargets) -> str:
    if external:
        return f"external {name} rule"
    if targets.internal.kind == "same_as_external":
        return f"internal {name} rule (same_as_external)"
    return f"internal {name} rule"


# --------------------------------------------------------------------------- the router


class Router:
    """The routing indexes of one directory; :meth:`plan` decides a call."""

    __slots__ = (
        "_caller_ids",
        "_departments",
        "_devices",
        "_groups",
        "_holidays",
        "_ivrs",
        "_orbits",
        "_prefixes",
        "_queues",
        "_trunks",
        "_zones",
        "directory",
    )

    def __init__(self, directory: Directory) -> None:
        self.directory = directory
        self._groups: dict[str, RingGroup] = {g.name: g for g in directory.ring_groups}
        self._ivrs: dict[str, IvrTable] = {i.name: i for i in directory.ivrs}
        self._queues: dict[str, QueueTable] = {q.name: q for q in directory.queues}
        self._prefixes: frozenset[str] | None = None
        self._orbits = frozenset(directory.system.park.orbits)
        self._departments: dict[str, Department] = {d.name: d for d in directory.departments}
        self._trunks: dict[str, Trunk] = {t.name: t for t in directory.trunks}
        self._caller_ids: dict[str, Identity] = {}
        self._devices = {u.extension: Device(u.extension) for u in directory.users}
        self._zones: dict[str, ZoneInfo] = {}
        self._holidays: dict[str, frozenset[dt.date]] = {}
        for d in directory.departments:
            try:
                self._zones[d.name] = ZoneInfo(d.timezone)
            except Exception:  # a hand-built directory with a bad zone name: UTC
                self._zones[d.name] = _UTC
            self._holidays[d.name] = frozenset(d.holidays)

    # ------------------------------------------------------------------ lookups

    def number_for(self, dialled: str) -> Number | None:
        """The ``[[numbers]]`` entry for a number in any form (:meth:`Directory.number`:
        exact, else the same digits, else North American national digits)."""
        return self.directory.number(dialled)

    def device(self, extension: str) -> Device:
        """The (shared) ``Device`` target of ``extension``."""
        found = self._devices.get(extension)
        return found if found is not None else Device(extension)

    def ivr(self, name: str) -> IvrTable | None:
        return self._ivrs.get(name)

    def queue(self, name: str) -> QueueTable | None:
        return self._queues.get(name)

    def queue_by_extension(self, extension: str) -> QueueTable | None:
        return next((q for q in self._queues.values() if q.extension == extension), None)

    def dialled(self, digits: str) -> Destination | None:
        """What an IVR caller dialling ``digits`` (dial by extension) reaches: a user,
        a ring group, an IVR or a queue by its extension; ``None``: nothing."""
        d = self.directory
        if digits in d.users_by_extension:
            return Destination("extension", digits)
        group = d.ring_groups_by_extension.get(digits)
        if group is not None:
            return Destination("ring_group", group.name)
        ivr = d.ivrs_by_extension.get(digits)
        if ivr is not None:
            return Destination("ivr", ivr.name)
        queue = self.queue_by_extension(digits)
        return Destination("queue", queue.name) if queue is not None else None

    def extension_prefixes(self) -> frozenset[str]:
        """Every leading part of a dialable extension (users, ring groups, IVRs): an
        IVR waits for more digits while what was typed is one of these."""
        found = self._prefixes
        if found is None:
            d = self.directory
            exts = [*d.users_by_extension, *d.ring_groups_by_extension, *d.ivrs_by_extension,
                    *(q.extension for q in d.queues)]
            found = frozenset(e[:n] for e in exts for n in range(1, len(e)))
            self._prefixes = found
        return found

    def orbits(self) -> frozenset[str]:
        """The park orbits (``[system.park] orbits``), each dialable."""
        return self._orbits

    def ring_group(self, name: str) -> RingGroup | None:
        return self._groups.get(name)

    def department_outside(self, name: str, clock: _Clock) -> str:
        """Why department ``name`` is outside its office hours at the clock's time
        (``"holiday"``, ``"outside office hours"``), ``""`` inside (or no hours
        defined: never outside, as for users)."""
        if clock.holiday(name):
            return f"a holiday of {name}"
        dept = self.department(name)
        if dept is not None and dept.office_hours is not None and \
                not clock.inside(name, dept.office_hours):
            return f"outside the office hours of {name}"
        return ""

    def department(self, name: str) -> Department | None:
        return self._departments.get(name)

    def trunk(self, name: str) -> Trunk | None:
        return self._trunks.get(name)

    def zone(self, department: str) -> ZoneInfo:
        return self._zones.get(department, _UTC)

    def holidays(self, department: str) -> frozenset[dt.date]:
        return self._holidays.get(department, frozenset())

    def office_hours_for(self, user: User) -> WeeklyHours | None:
        if user.schedule.office_hours is not None:
            return user.schedule.office_hours
        dept = self._departments.get(user.department)
        return dept.office_hours if dept is not None else None

    def break_hours_for(self, user: User) -> WeeklyHours:
        if user.schedule.break_hours is not None:
            return user.schedule.break_hours
        dept = self._departments.get(user.department)
        return dept.break_hours if dept is not None else WeeklyHours()

    def caller_id_for(self, user: User) -> str:
        if user.outbound_caller_id:
            return user.outbound_caller_id
        dept = self._departments.get(user.department)
        return dept.caller_id if dept is not None else ""

    def caller_identity(self, user: User, preferred: str = "") -> Identity:
        """What ``user``'s outbound calls present, before ``*82`` (``privacy`` is the
        presented number's ``block_caller_id``).

        ``preferred``: the number the phone asked for (P-Preferred-Identity); it is
        honoured when ``user`` is in that number's ``outbound_callers``, else
        ignored with the reason in ``Identity.ignored``.  The default identity is
        cached per extension (the directory is immutable).
        """
        default = self._caller_ids.get(user.extension)
        if default is None:
            default = self._present(self.caller_id_for(user), self._origin(user))
            self._caller_ids[user.extension] = default
        if not preferred:
            return default
        wanted = self.number_for(preferred)
        if wanted is None:
            why = f"{preferred} is not one of our numbers"
        elif wanted.number == default.caller_id:
            why = ""
        elif not wanted.outbound:
            why = f"{wanted.number} is {wanted.type}: never an outbound caller ID"
        elif user.extension not in wanted.outbound_callers:
            why = f"{user.extension} is not in the outbound_callers of {wanted.number}"
        else:
            return self._present(
                wanted.number,
                f"P-Preferred-Identity: {user.extension} is in the outbound_callers of "
                f"{wanted.number}",
                preferred,
            )
        return self._present(default.caller_id, default.origin, preferred, why)

    @staticmethod
    def _origin(user: User) -> str:
        if user.outbound_caller_id:
            return f"outbound_caller_id of {user.extension}"
        return f"department {user.department}"

    def _present(self, caller_id: str, origin: str, preferred: str = "",
                 ignored: str = "") -> Identity:
        """``caller_id`` as presented: its ``[[numbers]]`` entry's written form, name,
        privacy and billing group (a number outside ``[[numbers]]``, possible only
        in a hand-built directory, goes as written, with no name)."""
        number = self.number_for(caller_id) if caller_id else None
        if number is None:
            return Identity(caller_id, "", False, origin, preferred, ignored)
        return Identity(number.number, number.caller_id_name, number.block_caller_id, origin,
                        preferred, ignored, number.billing_group)

    # ------------------------------------------------------------------ decisions

    def status_of(
        self, extension: str, at: dt.datetime, state: LiveState = _EMPTY_STATE
    ) -> Status | None:
        """The effective status of ``extension`` at ``at`` (``None``: not a user)."""
        user = self.directory.users_by_extension.get(extension)
        if user is None:
            return None
        return self.status_with_origin(user, at, state)[0]

    def status_with_origin(
        self, user: User, at: dt.datetime, state: LiveState = _EMPTY_STATE
    ) -> tuple[Status, str]:
        """The effective status and why, e.g. ``("dnd", "auto_status: holiday")``."""
        return self._status(user, _Clock(self, at), state)

    def outside_office_hours(self, user: User, at: dt.datetime) -> bool:
        """A department holiday, or office hours defined and ``at`` not in them."""
        return self._outside(user, _Clock(self, at))

    def _status(self, user: User, clock: _Clock, state: LiveState) -> tuple[Status, str]:
        live = state.statuses.get(user.extension)
        if live is not None:
            return live, "set live"
        if not user.schedule.auto_status:
            return user.status, ""
        dept = user.department
        if clock.holiday(dept):
            return "dnd", "auto_status: holiday"
        if clock.inside(dept, self.break_hours_for(user)):
            return "away", "auto_status: break"
        office = self.office_hours_for(user)
        if office is None:
            return user.status, ""
        if clock.inside(dept, office):
            return "available", "auto_status: office hours"
        return "dnd", "auto_status: outside office hours"

    def _outside(self, user: User, clock: _Clock) -> bool:
        if clock.holiday(user.department):
            return True
        office = self.office_hours_for(user)
        return office is not None and not clock.inside(user.department, office)

    def plan(
        self, call: CallFacts, state: LiveState = _EMPTY_STATE, route_to: Destination | None = None
    ) -> Plan:
        """Decide ``call``.

        ``route_to`` (trunk calls only, for what-if explanations) replaces the
        DID lookup: the call is routed as if its number pointed there.
        """
        builder = _Builder(self, call, state)
        root = builder.phone() if call.source == "phone" else builder.trunk_call(route_to)
        return self._finish(builder, root)

    def choose(self, call: CallFacts, dest: Destination, why: str,
               state: LiveState = _EMPTY_STATE) -> Plan:
        """The plan of ``call`` from ``dest`` on: what an IVR's caller chose (a key,
        an extension dialled, no key, an invalid key), ``why`` saying which. The
        caller is who called (a phone's own devices are not rung, its identity is
        presented), the rules of ``dest`` apply as to any call reaching it."""
        builder = _Builder(self, call, state)
        return self._finish(builder, builder.resume(dest, why))

    def ring_back(self, call: CallFacts, parker: str, orbit: str, seconds: int,
                  dest: Destination, state: LiveState = _EMPTY_STATE) -> Plan:
        """The plan of a call parked on ``orbit`` too long: ring ``parker``'s phones for
        ``seconds``, then ``dest`` (``[system.park] ring_back_to``; ``voicemail``
        alone: the parker's mailbox). The call's identity is its own (the parker
        sees who waits)."""
        builder = _Builder(self, call, state)
        ring = builder.reserve()
        if dest == Destination("voicemail"):
            dest = Destination("voicemail", parker)
        why = f"parked on {orbit} and not retrieved: ring {parker} back"
        nxt = builder.resume(dest, f"{why}; not answered: ring_back_to {_describe(dest)}")
        builder.steps[ring] = Ring((self.device(parker),), seconds, why, on_no_answer=nxt,
                                   on_busy=nxt, on_failed=nxt)
        return self._finish(builder, ring)

    def _finish(self, builder: _Builder, root: int | None) -> Plan:
        call = builder.call
        if root is None:
            if builder.steps:  # pragma: no cover - compile invariant
                raise AssertionError("routing emitted steps but returned no entry")
            builder.emit(
                Reject(480, "Temporarily Unavailable", "nothing left to try for this call")
            )
        elif root != 0:  # pragma: no cover - compile invariant
            raise AssertionError(f"routing entry is step {root}, not 0")
        steps: list[Step] = []
        for step in builder.steps:
            if step is None:  # pragma: no cover - compile invariant
                raise AssertionError("routing left a reserved step empty")
            steps.append(step)
        callee = builder.callee_extension
        callee_user = self.directory.users_by_extension.get(callee) if callee else None
        if callee_user is not None:
            builder.status(callee_user)  # reported even when the plan did not need it
        statuses = {ext: s for ext, (s, _) in builder.statuses.items()}
        return Plan(
            call=call,
            steps=tuple(steps),
            status_of_callee=statuses.get(callee) if callee else None,
            callee_extension=callee,
            statuses=MappingProxyType(statuses),
            identity=builder.presented(),
        )


# --------------------------------------------------------------------------- local time


class _Clock:
    """``at`` seen from each department, computed once per department and call.

    Most users share their department's ``WeeklyHours`` object, so "is it
    inside these hours" is cached by (department, hours identity).
    """

    __slots__ = ("_holiday", "_inside", "_local", "at", "router")

    def __init__(self, router: Router, at: dt.datetime) -> None:
        self.router = router
        self.at = at
        self._local: dict[str, dt.datetime] = {}
        self._holiday: dict[str, bool] = {}
        self._inside: dict[tuple[str, int], bool] = {}

    def local(self, department: str) -> dt.datetime:
        found = self._local.get(department)
        if found is None:
            found = self.at.astimezone(self.router.zone(department))
            self._local[department] = found
        return found

    def holiday(self, department: str) -> bool:
        found = self._holiday.get(department)
        if found is None:
            found = self.local(department).date() in self.router.holidays(department)
            self._holiday[department] = found
        return found

    def inside(self, department: str, hours: WeeklyHours) -> bool:
        key = (department, id(hours))  # hours belong to the directory: ids are stable
        found = self._inside.get(key)
        if found is None:
            found = hours.contains(self.local(department))
            self._inside[key] = found
        return found


# --------------------------------------------------------------------------- one path


class _Path:
    """What one path through the plan has done so far (immutable by convention)."""

    __slots__ = ("chain", "external", "first_user", "groups", "hops", "rung", "users")

    def __init__(
        self,
        external: bool,
        chain: tuple[Diversion, ...] = (),
        users: frozenset[str] = frozenset(),
        first_user: str = "",
        rung: frozenset[str] = frozenset(),
        hops: int = 0,
        groups: frozenset[str] = frozenset(),
    ) -> None:
        self.external = external
        self.chain = chain
        self.users = users
        self.first_user = first_user
        self.rung = rung
        self.hops = hops
        self.groups = groups

    def divert(self, extension: str, reason: DiversionReason) -> _Path:
        """``extension`` (a user) forwards the call."""
        return _Path(
            self.external,
            (*self.chain, Diversion(extension, reason)),
            self.users | {extension},
            self.first_user or extension,
            self.rung,
            self.hops,
            self.groups,
        )

    def divert_group(self, group: RingGroup, reason: DiversionReason) -> _Path:
        """A ring group sends the call to its ``no_answer`` destination."""
        return _Path(
            self.external,
            (*self.chain, Diversion(group.extension, reason)),
            self.users,
            self.first_user,
            self.rung,
            self.hops,
            self.groups | {group.name},
        )

    def rang(self, keys: Iterable[str]) -> _Path:
        return _Path(
            self.external,
            self.chain,
            self.users,
            self.first_user,
            self.rung.union(keys),
            self.hops,
            self.groups,
        )

    def enter(self, key: str) -> _Path:
        """An IVR (``ivr:NAME``) is entered on this path."""
        return _Path(
            self.external,
            self.chain,
            self.users,
            self.first_user,
            self.rung,
            self.hops,
            self.groups | {key},
        )

    def hop(self) -> _Path:
        return _Path(
            self.external,
            self.chain,
            self.users,
            self.first_user,
            self.rung,
            self.hops + 1,
            self.groups,
        )


# --------------------------------------------------------------------------- the builder


class _Builder:
    """Compiles one call into steps."""

    __slots__ = (
        "call",
        "callee_extension",
        "caller_id",
        "caller_name",
        "clock",
        "directory",
        "identity",
        "privacy",
        "router",
        "state",
        "statuses",
        "steps",
        "trunk_checked",
        "trunk_free",
    )

    def __init__(self, router: Router, call: CallFacts, state: LiveState) -> None:
        self.router = router
        self.directory = router.directory
        self.call = call
        self.clock = _Clock(router, call.at)
        self.state = state
        self.steps: list[Step | None] = []
        self.statuses: dict[str, tuple[Status, str]] = {}
        self.callee_extension = ""
        self.caller_id = ""
        self.caller_name = ""
        self.identity = Identity("")
        self.privacy = False
        self.trunk_checked = False
        self.trunk_free: Trunk | None = None

    # ------------------------------------------------------------------ helpers

    def emit(self, step: Step) -> int:
        self.steps.append(step)
        return len(self.steps) - 1

    def reserve(self) -> int:
        self.steps.append(None)
        return len(self.steps) - 1

    def status(self, user: User) -> tuple[Status, str]:
        found = self.statuses.get(user.extension)
        if found is None:
            found = self.router._status(user, self.clock, self.state)
            self.statuses[user.extension] = found
        return found

    def who(self, user: User) -> str:
        """``"101 is dnd (auto_status: holiday)"``: the status and where it comes from."""
        status, origin = self.status(user)
        if origin:
            return f"{user.extension} is {status} ({origin})"
        return f"{user.extension} is {status}"

    def presented(self) -> Identity:
        """The call's identity with its privacy after ``*82`` (a new value only when
        ``*82`` changed it: most calls reuse the router's cached one)."""
        i = self.identity
        if i.privacy == self.privacy:
            return i
        return Identity(i.caller_id, i.name, self.privacy, i.origin, i.preferred, i.ignored,
                        i.billing_group)

    def free_trunk(self) -> Trunk | None:
        if not self.trunk_checked:
            self.trunk_checked = True
            in_use = self.state.channels_in_use
            for trunk in self.directory.trunks:
                if trunk.channels is None or in_use.get(trunk.name, 0) < trunk.channels:
                    self.trunk_free = trunk
                    break
        return self.trunk_free

    # ------------------------------------------------------------------ entry points

    def trunk_call(self, route_to: Destination | None) -> int | None:
        call = self.call
        self.caller_id = call.caller
        self.caller_name = call.caller_name
        self.privacy = call.caller.strip().lower() in ("", "anonymous")
        number = self.router.number_for(call.callee) if route_to is None else None
        self.identity = Identity(call.caller, call.caller_name, self.privacy, "the trunk caller",
                                 billing_group=number.billing_group if number else "")
        path = _Path(external=True)
        if route_to is not None:
            why = f"what-if: external call from {call.caller} straight to {_describe(route_to)}"
        else:
            if number is None:
                return self.emit(
                    Reject(404, "Not Found", f"{call.callee} is not one of our numbers")
                )
            route_to = number.route_to
            name = f" ({number.name})" if number.name else ""
            why = (
                f"call from {call.caller} to {number.number}{name}: "
                f"route_to {_describe(route_to)}"
            )
        if route_to.kind == "extension":
            self.callee_extension = route_to.target
        return self.follow(route_to, None, path, why, hop=False)

    def resume(self, dest: Destination, why: str) -> int | None:
        """The call goes on to ``dest`` (an IVR's choice): the caller's identity and
        path as at the start of the call, then ``dest``."""
        call = self.call
        if call.source == "trunk":
            self.caller_id, self.caller_name = call.caller, call.caller_name
            self.privacy = call.caller.strip().lower() in ("", "anonymous")
            number = self.router.number_for(call.callee)
            self.identity = Identity(call.caller, call.caller_name, self.privacy,
                                     "the trunk caller",
                                     billing_group=number.billing_group if number else "")
            path = _Path(external=True)
        else:
            user = self.directory.users_by_extension.get(call.caller)
            if user is not None:
                self.identity = self.router.caller_identity(user, call.preferred_identity)
            self.caller_id, self.caller_name = self.identity.caller_id, self.identity.name
            self.privacy = self.identity.privacy
            path = _Path(external=False, users=frozenset((call.caller,)),
                         rung=frozenset((call.caller,)))
        if dest.kind == "extension":
            self.callee_extension = dest.target
        return self.follow(dest, None, path, why, hop=False)

    def phone(self) -> int | None:
        call, d = self.call, self.directory
        user = d.users_by_extension.get(call.caller)
        if user is None:
            return self.emit(Reject(403, "Forbidden", f"{call.caller} is not a user"))
        if user.disabled:
            return self.emit(
                Reject(403, "Extension Disabled", f"{call.caller} is disabled: no calls")
            )
        dialled, flip = _strip_82(call.callee, False)
        self.identity = self.router.caller_identity(user, call.preferred_identity)
        self.caller_id, self.caller_name = self.identity.caller_id, self.identity.name
        blocked = self.identity.privacy
        self.privacy = blocked != flip
        system = d.system
        if dialled in system.emergency_numbers:
            return self.emergency(user, dialled)
        pin_ok = False
        prefix = system.outbound_pin_prefix
        pin = user.voicemail_pin
        if dialled.startswith(prefix) and (
            user.outbound_pin_required or (pin and dialled[len(prefix) :].startswith(pin))
        ):
            rest = dialled[len(prefix) :]
            if not pin or not rest.startswith(pin):
                return self.emit(
                    Reject(
                        403,
                        "Wrong PIN",
                        f"{user.extension} dialled {prefix} + a PIN that is not their "
                        "voicemail PIN",
                    )
                )
            rest, flip = _strip_82(rest[len(pin) :], flip)
            self.privacy = blocked != flip
            if not rest:
                return self.emit(
                    Reject(404, "Not Found", f"{user.extension} dialled nothing after the PIN")
                )
            dialled, pin_ok = rest, True
            if dialled in system.emergency_numbers:
                return self.emergency(user, dialled)
        if dialled in (system.voicemail_number, user.extension):
            what = "voicemail_number" if dialled == system.voicemail_number else "own extension"
            if not user.voicemail.enabled:
                return self.emit(
                    Reject(
                        403, "Voicemail Disabled", f"{user.extension} dialled {dialled} ({what}) "
                        "but their voicemail is disabled"
                    )
                )
            return self.emit(
                MailboxAccess(
                    user.extension, f"{user.extension} dialled {dialled} ({what}): own mailbox"
                )
            )
        path = _Path(
            external=False,
            users=frozenset((user.extension,)),
            rung=frozenset((user.extension,)),
        )
        if dialled in d.users_by_extension:
            self.callee_extension = dialled
            return self.user(dialled, path, f"internal call from {user.extension} to {dialled}")
        group = d.ring_groups_by_extension.get(dialled)
        if group is not None:
            return self.group(
                group,
                path,
                f"internal call from {user.extension} to ring group {group.name} "
                f"({group.extension})",
            )
        ivr = d.ivrs_by_extension.get(dialled)
        if ivr is not None:
            return self.follow(Destination("ivr", ivr.name), None, path,
                               f"internal call from {user.extension} to IVR {ivr.name} "
                               f"({ivr.extension})", hop=False)
        feature = system.feature_codes.match(dialled)
        if feature is not None:
            return self.feature(user, feature[0], feature[1], dialled)
        if dialled in self.router.orbits():
            return self.emit(Unpark(dialled, f"{user.extension} dialled orbit {dialled}: "
                                    "retrieve the call parked there"))
        queue = self.router.queue_by_extension(dialled)
        if queue is not None:
            return self.follow(Destination("queue", queue.name), None, path,
                               f"internal call from {user.extension} to queue {queue.name} "
                               f"({queue.extension})", hop=False)
        if PHONE_RE.fullmatch(dialled):
            return self.outbound(user, dialled, pin_ok)
        return self.emit(
            Reject(404, "Not Found", f"{user.extension} dialled {call.callee!r}: no such number")
        )

    def emergency(self, user: User, number: str) -> int:
        dept = self.router.department(user.department)
        preferred = self.call.preferred_identity
        if dept is not None:
            self.identity = self.router._present(
                dept.caller_id, f"emergency: department {dept.name}", preferred,
                "emergency calls present the department's number" if preferred else "",
            )
        caller_id, name = self.identity.caller_id, self.identity.name
        self.privacy = False
        trunk = self.free_trunk()
        note = ""
        if trunk is None and self.directory.trunks:
            trunk = self.directory.trunks[0]
            note = " (every channel is in use: emergency calls ignore the limit)"
        if trunk is None:
            return self.emit(
                Reject(503, "No Trunk", f"emergency call from {user.extension}: no trunk")
            )
        target = External(number, trunk.name, caller_id, False, caller_name=name)
        return self.emit(
            Ring(
                (target,),
                None,
                f"emergency call from {user.extension} to {number}: always allowed, "
                f"department caller ID {caller_id}, never private, via {trunk.name}{note}",
            )
        )

    def outbound(self, user: User, number: str, pin_ok: bool) -> int:
        who = f"{user.extension} calls {number}"
        if not user.external_calls:
            return self.emit(
                Reject(403, "External Calls Not Allowed", f"{who}: external_calls = false")
            )
        if user.outbound_pin_required and not pin_ok:
            prefix = self.directory.system.outbound_pin_prefix
            return self.emit(
                Reject(
                    403,
                    "PIN Required",
                    f"{who}: outbound_pin_required (dial {prefix} + voicemail PIN + number)",
                )
            )
        if user.schedule.block_outbound_outside_hours and self.router._outside(
            user, self.clock
        ):
            return self.emit(
                Reject(
                    403,
                    "Outside Office Hours",
                    f"{who}: outside office hours (block_outbound_outside_hours)",
                )
            )
        trunk = self.free_trunk()
        if trunk is None:
            return self.emit(Reject(503, "No Trunk Channel Free", f"{who}: no trunk channel free"))
        identity = self.identity
        name = f' "{identity.name}"' if identity.name else ""
        private = ", private (caller ID withheld)" if self.privacy else ""
        ignored = (f"; P-Preferred-Identity {identity.preferred} ignored: {identity.ignored}"
                   if identity.ignored else "")
        target = External(number, trunk.name, self.caller_id, self.privacy,
                          caller_name=self.caller_name)
        return self.emit(
            Ring(
                (target,),
                None,
                f"{who}: outbound via {trunk.name}, caller ID {self.caller_id}{name} "
                f"({identity.origin}){private}{ignored}",
            )
        )

    # ------------------------------------------------------------------ destinations

    def follow(
        self, dest: Destination, owner: User | None, path: _Path, why: str, hop: bool = True
    ) -> int | None:
        """Compile ``dest`` reached by ``why``; ``owner`` is the user whose rule it is."""
        kind = dest.kind
        if kind == "voicemail":
            box = dest.target or (owner.extension if owner is not None else "")
            if not box:
                return self.emit(Busy(f"{why}: no user, so no mailbox -> busy"))
            return self.voicemail(box, path, why)
        if kind == "extension":
            if hop:
                if dest.target in path.users:
                    return self.stop(path, f"{why}: loop ({dest.target} is already in the chain)")
                if path.hops >= MAX_FORWARD_HOPS:
                    return self.stop(path, f"{why}: more than {MAX_FORWARD_HOPS} forwards")
                path = path.hop()
            return self.user(dest.target, path, why)
        if kind == "ring_group":
            group = self.router.ring_group(dest.target)
            if group is None:
                return self.emit(
                    Reject(404, "Not Found", f"{why}: no ring group named {dest.target!r}")
                )
            if hop:
                if group.name in path.groups:
                    return self.stop(path, f"{why}: loop (ring group {group.name} already rang)")
                if path.hops >= MAX_FORWARD_HOPS:
                    return self.stop(path, f"{why}: more than {MAX_FORWARD_HOPS} forwards")
                path = path.hop()
            return self.group(group, path, why)
        if kind == "mobile":
            if owner is None:
                return self.emit(Busy(f"{why}: 'mobile' of no user -> busy"))
            if not owner.mobile:
                return self.voicemail(
                    owner.extension, path, f"{why}: {owner.extension} has no mobile -> voicemail"
                )
            return self.external(owner.mobile, dest, owner, path, why, owner.extension)
        if kind == "external":
            return self.external(dest.target, dest, owner, path, why, "")
        if kind == "ivr":
            return self.ivr(dest.target, path, why)
        if kind == "queue":
            return self.queue(dest.target, path, why)
        if kind == "busy":
            return self.emit(Busy(why))
        # same_as_external is resolved by RuleTargets.for_caller; elsewhere it is invalid
        return self.emit(Reject(404, "Not Found", f"{why}: {dest} is not a destination here"))

    def ivr(self, name: str, path: _Path, why: str) -> int | None:
        ivr = self.router.ivr(name)
        if ivr is None:
            return self.emit(Reject(404, "Not Found", f"{why}: no IVR named {name!r}"))
        label = f"ivr {ivr.name} ({ivr.extension})"
        key = f"ivr:{ivr.name}"  # ring group names have no ':', so no clash in path.groups
        if key in path.groups:
            return self.stop(path, f"{why}: loop ({label} already entered on this path)")
        path = path.enter(key)
        outside = ""
        if ivr.outside_office_hours is not None and ivr.department:
            outside = self.router.department_outside(ivr.department, self.clock)
        if outside and ivr.outside_office_hours is not None:
            dest = ivr.outside_office_hours
            return self.follow(dest, None, path, f"{why}; {label}: {outside}: "
                               f"outside_office_hours -> {_describe(dest)}", hop=False)
        keys = ", ".join(f"{k} -> {_describe(d)}" for k, d in ivr.keys) or "none"
        dial = "; dial by extension" if ivr.dial_by_extension else ""
        hours = (f"; inside the hours of {ivr.department}" if ivr.outside_office_hours
                 is not None else "")
        return self.emit(Ivr(
            ivr.name, ivr.extension, ivr.prompt, ivr.text, ivr.language, ivr.keys,
            ivr.dial_by_extension, ivr.timeout_seconds, ivr.repeat, ivr.on_timeout,
            ivr.on_invalid,
            f"{why}; {label}{hours}: keys {keys}{dial}; no key in {ivr.timeout_seconds} s "
            f"(prompt {ivr.repeat + 1}x) -> {_describe(ivr.on_timeout)}; invalid -> "
            f"{_describe(ivr.on_invalid)}",
            path.chain))

    def queue(self, name: str, path: _Path, why: str) -> int:
        q = self.router.queue(name)
        if q is None:
            return self.emit(Reject(404, "Not Found", f"{why}: no queue named {name!r}"))
        no_agents = "join (wait anyway)" if q.when_no_agents is None else \
            _describe(q.when_no_agents)
        return self.emit(Queue(
            q.name, q.extension, q.strategy, q.agents, q.ring_seconds, q.wrap_up_seconds,
            q.max_wait_seconds, q.max_callers, q.on_timeout, q.when_no_agents, q.hold_music,
            q.announce_position_every, q.service_level_seconds,
            f"{why}; queue {q.name} ({q.extension}): {q.strategy} over "
            f"{', '.join(q.agents) or 'no agents'}, {q.ring_seconds} s a try; "
            f"wait at most {q.max_wait_seconds} s, {q.max_callers} callers -> "
            f"{_describe(q.on_timeout)}; no agent logged in and available -> {no_agents}"
            + (f"; priority callers: {', '.join(q.priority_callers)}"
               if q.priority_callers else ""),
            path.chain, language=q.language or "", priority_callers=q.priority_callers))

    def feature(self, user: User, key: str, rest: str, dialled: str) -> int:
        """A dialled feature code: ``key`` of ``[system.feature_codes]``, ``rest``
        what followed it."""
        codes = self.directory.system.feature_codes
        if key in ("queue_login", "queue_logout"):
            return self.queue_login(user, key == "queue_login",
                                    codes.queue_login if key == "queue_login"
                                    else codes.queue_logout, rest, dialled)
        who = f"{user.extension} dialled {dialled}"
        users = self.directory.users_by_extension
        if key == "pickup_directed":
            target = users.get(rest)
            if target is None:
                return self.emit(Reject(404, "Not Found", f"{who} (directed pickup): "
                                        f"{rest or 'nothing'} is no user"))
            if target.department != user.department:
                return self.emit(Reject(403, "Forbidden", f"{who} (directed pickup): {rest} is "
                                        f"in {target.department}, {user.extension} in "
                                        f"{user.department} (pickup stays in a department)"))
            return self.emit(Pickup(user.extension, (rest,), True,
                                    f"{who}: directed pickup of the oldest call ringing {rest}"))
        if key == "pickup_group":
            mine = [u.extension for u in self.directory.users
                    if u.department == user.department and u.extension != user.extension]
            groups = [g for g in self.directory.ring_groups if user.extension in g.members]
            for g in groups:
                mine.extend(m for m in g.members if m != user.extension and m not in mine)
            names = f" and ring groups {', '.join(g.name for g in groups)}" if groups else ""
            return self.emit(Pickup(user.extension, tuple(mine), False,
                                    f"{who}: group pickup in department {user.department}"
                                    f"{names}"))
        park = self.directory.system.park
        if key == "park":
            return self.emit(Park(user.extension, park.orbits, park.ring_back_seconds,
                                  park.ring_back_to,
                                  f"{who}: park on the first free orbit of "
                                  f"{park.orbits[0]}-{park.orbits[-1]}"))
        if key == "unpark":
            if rest not in park.orbits:
                return self.emit(Reject(404, "Not Found", f"{who}: {rest or 'nothing'} is no "
                                        f"orbit ({park.orbits[0]}-{park.orbits[-1]})"))
            return self.emit(Unpark(rest, f"{who}: retrieve the call parked on {rest}"))
        # intercom
        target = users.get(rest)
        if target is None or target.disabled:
            return self.emit(Reject(404, "Not Found", f"{who} (intercom): "
                                    f"{rest or 'nothing'} is no user that takes calls"))
        if target.department != user.department:
            return self.emit(Reject(403, "Forbidden", f"{who} (intercom): {rest} is in "
                                    f"{target.department}, {user.extension} in "
                                    f"{user.department} (intercom stays in a department)"))
        self.callee_extension = rest
        return self.emit(Ring((self.router.device(rest),), INTERCOM_SECONDS,
                              f"{who}: intercom to {rest}, answered automatically by its phone",
                              intercom=True))

    def queue_login(self, user: User, login: bool, code: str, rest: str, dialled: str) -> int:
        mine = tuple(q.name for q in self.directory.queues if user.extension in q.agents)
        what = "log in to" if login else "log out of"
        if rest:
            q = self.router.queue_by_extension(rest)
            if q is None or q.name not in mine:
                return self.emit(Reject(404, "Not Found", (
                    f"{user.extension} dialled {code}{rest}: {rest} is no queue "
                    f"{user.extension} is an agent of")))
            mine = (q.name,)
        if not mine:
            return self.emit(Reject(404, "Not Found", (
                f"{user.extension} dialled {code}: an agent of no queue")))
        first = next(q for q in self.directory.queues if q.name == mine[0])
        return self.emit(QueueLogin(user.extension, mine, login,
                                    f"{user.extension} dialled {dialled}: {what} "
                                    f"{', '.join(mine)}", language=first.language or ""))

    def stop(self, path: _Path, why: str) -> int:
        """A loop or too many hops: the first forwarding user's voicemail, else busy."""
        if path.first_user:
            return self.voicemail(
                path.first_user, path, f"{why} -> voicemail of {path.first_user}"
            )
        return self.emit(Busy(f"{why} -> busy"))

    def voicemail(self, box: str, path: _Path, why: str) -> int:
        owner = self.directory.users_by_extension.get(box)
        if owner is None:
            return self.emit(Busy(f"{why}; no mailbox {box} -> busy"))
        if not owner.voicemail.enabled:
            return self.emit(Busy(f"{why}; the voicemail of {box} is disabled -> busy"))
        status, _ = self.status(owner)
        greeting = owner.rules(status).greeting
        if greeting == "default":
            greeting = owner.voicemail.greeting
        return self.emit(Voicemail(box, greeting, why, path.chain))

    def user(self, extension: str, path: _Path, why: str) -> int | None:
        user = self.directory.users_by_extension.get(extension)
        if user is None:
            return self.emit(Reject(404, "Not Found", f"{why}; {extension} is not a user"))
        if user.disabled:
            return self.emit(
                Reject(480, "Extension Disabled", f"{why}; {extension} is disabled")
            )
        status, _ = self.status(user)
        rules = user.rules(status)
        who = self.who(user)
        external = path.external
        if rules.voicemail_outside_office_hours and self.router._outside(
            user, self.clock
        ):
            return self.voicemail(
                extension,
                path.divert(extension, "time-of-day"),
                f"{why}; {who}, outside office hours: voicemail_outside_office_hours -> voicemail",
            )
        if rules.no_answer_seconds == 0:
            dest = rules.no_answer.for_caller(external)
            token: DiversionReason = (
                "do-not-disturb" if status == "dnd" else "away" if status == "away"
                else "unconditional"
            )
            return self.follow(
                dest,
                user,
                path.divert(extension, token),
                f"{who}: no_answer_seconds = 0, {_rule(external, 'no-answer', rules.no_answer)}"
                f" -> {_describe(dest)}",
            )
        unregistered = extension not in self.state.registered
        if unregistered or (extension in self.state.busy and not user.accept_multiple_calls):
            dest = rules.busy.for_caller(external)
            condition = (
                "no device registered"
                if unregistered
                else "on a call (accept_multiple_calls = false)"
            )
            return self.follow(
                dest,
                user,
                path.divert(extension, "unavailable" if unregistered else "user-busy"),
                f"{who}, {condition}: {_rule(external, 'busy', rules.busy)} -> {_describe(dest)}",
            )
        targets: list[Target] = []
        keys: list[str] = []
        if extension not in path.rung:  # devices are keyed by extension, numbers by "n:..."
            targets.append(self.router.device(extension))
            keys.append(extension)
        note = ""
        if rules.ring_mobile_simultaneously and user.mobile:
            mobile_key = _number_key(user.mobile)
            trunk = self.free_trunk()
            if mobile_key in path.rung:
                note = " (the mobile already rang)"
            elif trunk is None:
                note = " (mobile skipped: no trunk channel free)"
            else:
                targets.append(
                    External(user.mobile, trunk.name, self.caller_id, self.privacy,
                             mobile_of=extension, caller_name=self.caller_name)
                )
                keys.append(mobile_key)
        no_answer = rules.no_answer.for_caller(external)
        no_answer_rule = _rule(external, "no-answer", rules.no_answer)
        if not targets:
            return self.follow(
                no_answer,
                user,
                path.divert(extension, "no-answer"),
                f"{who}: already rang on this call, {no_answer_rule} -> {_describe(no_answer)}",
            )
        index = self.reserve()
        rang = path.rang(keys)
        on_no_answer = self.follow(
            no_answer,
            user,
            rang.divert(extension, "no-answer"),
            f"{who}: {no_answer_rule} -> {_describe(no_answer)}",
        )
        busy = rules.busy.for_caller(external)
        on_busy = self.follow(
            busy,
            user,
            rang.divert(extension, "user-busy"),
            f"{who}: busy or failed, {_rule(external, 'busy', rules.busy)} -> {_describe(busy)}",
        )
        if len(targets) == 2:
            what = "desk phones + mobile (ring_mobile_simultaneously)"
        elif isinstance(targets[0], Device):
            what = "desk phones"
        else:
            what = "mobile only (ring_mobile_simultaneously; desk phones already rang)"
        if user.confirm_external_answer and not isinstance(targets[-1], Device):
            note += (f"; the mobile presses 1 within {CONFIRM_SECONDS} s to take the call "
                     "(confirm_external_answer), the desk phones ring on meanwhile")
        self.steps[index] = Ring(
            tuple(_confirming(t, user) for t in targets),
            rules.no_answer_seconds,
            f"{why}; {who}: ring {what} for {rules.no_answer_seconds} s{note}",
            on_no_answer,
            on_busy,
            on_busy,
            path.chain,
        )
        return index

    def external(
        self,
        number: str,
        dest: Destination,
        owner: User | None,
        path: _Path,
        why: str,
        mobile_of: str,
    ) -> int | None:
        key = _number_key(number)
        note = ""
        if dest.deflect_302:
            trunk_in = self.router.trunk(self.call.trunk) if self.call.source == "trunk" else None
            if trunk_in is not None and trunk_in.supports_302:
                if key in path.rung:
                    return None
                return self.emit(
                    Deflect(
                        number,
                        trunk_in.name,
                        f"{why}: 302 to {number} through {trunk_in.name} (deflect_302)",
                        path.chain,
                    )
                )
            if self.call.source != "trunk":
                note = " (deflect_302 needs a trunk call: forwarding instead)"
            else:
                note = f" (trunk {self.call.trunk or '?'} cannot 302: forwarding instead)"
        back_to = ""
        if dest.rebound:
            back_to = owner.extension if owner is not None else path.first_user
        if key in path.rung:
            if back_to:
                return self.voicemail(
                    back_to, path, f"{why}: {number} already rang -> voicemail of {back_to}"
                )
            return None
        trunk = self.free_trunk()
        if trunk is None:
            if back_to:
                return self.voicemail(
                    back_to, path, f"{why}: no trunk channel free -> voicemail of {back_to}"
                )
            return self.emit(
                Reject(503, "No Trunk Channel Free", f"{why}: no trunk channel free")
            )
        target = External(
            number, trunk.name, self.caller_id, self.privacy, dest.rebound, mobile_of,
            caller_name=self.caller_name,
        )
        target = _confirming(target, owner)
        if not dest.rebound and not target.confirm:
            return self.emit(
                Ring(
                    (target,),
                    None,
                    f"{why}: forward to {number} via {trunk.name}{note}",
                    diversion=path.chain,
                )
            )
        if not dest.rebound:
            assert owner is not None  # only a user's own rule is confirmed
            index = self.reserve()
            unconfirmed = self.voicemail(
                owner.extension,
                path.rang((key,)),
                f"{why}: {number} did not take the call (no 1 within {CONFIRM_SECONDS} s, "
                f"another key or a hang-up) -> voicemail of {owner.extension}",
            )
            self.steps[index] = Ring(
                (target,),
                None,
                f"{why}: forward to {number} via {trunk.name}{note}; it presses 1 within "
                f"{CONFIRM_SECONDS} s to take the call (confirm_external_answer)",
                on_no_answer=unconfirmed,
                diversion=path.chain,
            )
            return index
        index = self.reserve()
        after: int | None = None
        if back_to:
            after = self.voicemail(
                back_to,
                path.rang((key,)),
                f"{why}: rebound not accepted (refused, unanswered in {REBOUND_SECONDS} s, "
                f"busy or failed) -> voicemail of {back_to}",
            )
        self.steps[index] = Ring(
            (target,),
            REBOUND_SECONDS,
            f"{why}: rebound to {number} via {trunk.name}: the far end hears who calls and "
            f"accepts or refuses within {REBOUND_SECONDS} s",
            after,
            after,
            after,
            path.chain,
        )
        return index

    def group(self, group: RingGroup, path: _Path, why: str) -> int | None:
        users = self.directory.users_by_extension
        device = self.router.device
        registered, busy = self.state.registered, self.state.busy
        members: list[str] = []
        skipped: list[str] = []
        for member in group.members:
            user = users.get(member)
            if user is None or user.disabled:
                skipped.append(f"{member} disabled")
            elif member in path.rung:
                skipped.append(f"{member} already rang")
            elif member not in registered:
                skipped.append(f"{member} not registered")
            elif member in busy and not user.accept_multiple_calls:
                skipped.append(f"{member} on a call")
            else:
                status, _ = self.status(user)
                if user.rules(status).accept_ring_group_calls:
                    members.append(member)
                else:
                    skipped.append(f"{member} is {status} (accept_ring_group_calls = false)")
        label = f"ring group {group.name} ({group.extension})"
        no_answer = group.no_answer
        if not members:
            return self.follow(
                no_answer,
                None,
                path.divert_group(group, "unavailable"),
                f"{why}; {label}: no member can take the call ({', '.join(skipped)}) "
                f"-> no_answer {_describe(no_answer)}",
            )
        skipped_note = f" (skipped: {', '.join(skipped)})" if skipped else ""
        seconds = group.ring_seconds
        rang = path.rang(members)
        if group.strategy == "ring_all":
            index = self.reserve()
            after = self.follow(
                no_answer,
                None,
                rang.divert_group(group, "no-answer"),
                f"{label}: nobody answered in {seconds} s -> no_answer {_describe(no_answer)}",
            )
            self.steps[index] = Ring(
                tuple(device(m) for m in members),
                seconds,
                f"{why}; {label}: ring_all {', '.join(members)} for {seconds} s{skipped_note}",
                after,
                after,
                after,
                path.chain,
                music=True,
            )
            return index
        first = len(self.steps)
        for _ in members:
            self.reserve()
        after = self.follow(
            no_answer,
            None,
            rang.divert_group(group, "no-answer"),
            f"{label}: no member answered (hunt) -> no_answer {_describe(no_answer)}",
        )
        count = len(members)
        for i, member in enumerate(members):
            nxt = first + i + 1 if i + 1 < count else after
            if i == 0:
                reason = f"{why}; {label}: hunt, {member} first ({i + 1}/{count}) for {seconds} s"
                reason += skipped_note
            else:
                reason = (
                    f"{label}: hunt, {members[i - 1]} did not answer -> {member} "
                    f"({i + 1}/{count}) for {seconds} s"
                )
            self.steps[first + i] = Ring(
                (device(member),), seconds, reason, nxt, nxt, nxt, path.chain, music=True
            )
        return first


def _strip_82(dialled: str, flip: bool) -> tuple[str, bool]:
    while dialled.startswith("*82"):
        dialled = dialled[3:]
        flip = not flip
    return dialled, flip


# --------------------------------------------------------------------------- module API


_CACHE: dict[int, tuple[Directory, Router]] = {}
_CACHE_SIZE = 4


def router_for(directory: Directory) -> Router:
    """The :class:`Router` of ``directory``, built once and cached (by identity)."""
    entry = _CACHE.get(id(directory))
    if entry is not None and entry[0] is directory:
        return entry[1]
    router = Router(directory)
    while len(_CACHE) >= _CACHE_SIZE:
        del _CACHE[next(iter(_CACHE))]
    _CACHE[id(directory)] = (directory, router)  # holds directory: its id stays unique
    return router


def plan(call: CallFacts, directory: Directory, state: LiveState = _EMPTY_STATE) -> Plan:
    """Decide ``call`` against ``directory`` and the live ``state``."""
    return router_for(directory).plan(call, state)


def effective_status(
    directory: Directory,
    extension: str,
    at: dt.datetime,
    statuses: Mapping[str, Status] | None = None,
) -> Status | None:
    """The status routing uses for ``extension`` at ``at`` (``None``: not a user)."""
    state = LiveState(statuses=statuses) if statuses else _EMPTY_STATE
    return router_for(directory).status_of(extension, at, state)
