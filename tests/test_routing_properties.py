"""Property tests for routing.plan on random directories, live states and calls.

Directories are built straight from the model (no validation), so they also
contain what the loader would refuse: self-forwards, 'mobile' without a
mobile, mailboxes that are disabled, departments that do not exist...
Routing must still return a finite, well-formed plan for every call.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import get_args

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provisioning.model import (
    STATUSES,
    Department,
    Destination,
    Directory,
    Forwarding,
    Number,
    RingGroup,
    RuleTargets,
    Schedule,
    StatusRules,
    System,
    TimeRange,
    Trunk,
    User,
    VoicemailSettings,
    WeeklyHours,
)
from routing import (
    MAX_FORWARD_HOPS,
    CallFacts,
    Device,
    DiversionReason,
    External,
    LiveState,
    Plan,
    Ring,
    plan,
    plan_to_json,
    render_text,
    router_for,
)

EXTENSIONS = [str(100 + i) for i in range(8)]
GROUPS = ["g0", "g1", "g2"]
GROUP_EXTENSIONS = {"g0": "800", "g1": "801", "g2": "802"}
EXTERNALS = ["+15145550122", "+15145550133", "5550144"]
MOBILES = ["+15145550111", "+15145550122", "+15145550155"]  # one shared with EXTERNALS
DIDS = ["+15145550100", "+15145550200", "18005550100"]
TRUNKS = ["carrier", "backup"]
ZONES = ["America/Toronto", "Europe/Paris", "UTC", "Australia/Sydney", "Bad/Zone"]
REASONS = frozenset(get_args(DiversionReason))

KINDS = (
    "extension",
    "extension",
    "extension",
    "ring_group",
    "ring_group",
    "mobile",
    "mobile",
    "external",
    "external",
    "voicemail",
    "voicemail",
    "voicemail:",
    "queue",
    "ivr",
    "busy",
)
# DIDs and ring groups have no user: 'voicemail' and 'mobile' mean little there
ROUTE_KINDS = ("extension",) * 6 + ("ring_group",) * 3 + (
    "external",
    "voicemail:",
    "voicemail:",
    "queue",
    "busy",
    "voicemail",
    "mobile",
)

# Hypothesis favours small integers and False, so odds are written as lists
rarely = st.sampled_from([False] * 11 + [True])
sometimes = st.sampled_from([False] * 3 + [True])
either = st.sampled_from([False, True])

hours = st.builds(
    WeeklyHours,
    mon=st.just((TimeRange(540, 1020),)),
    tue=st.just((TimeRange(540, 720), TimeRange(780, 1020))),
    wed=st.sampled_from([(), (TimeRange(0, 1440),)]),
    fri=st.just((TimeRange(600, 960),)),
)
breaks = st.builds(WeeklyHours, mon=st.just((TimeRange(720, 780),)), tue=st.just(()))


@st.composite
def destinations(
    draw: st.DrawFn,
    exts: list[str],
    groups: list[str],
    internal: bool = False,
    kinds: tuple[str, ...] = KINDS,
) -> Destination:
    """Mostly to what exists in the directory being built; now and then dangling."""
    kind = draw(st.sampled_from(kinds + (("same_as_external",) * 2 if internal else ())))
    dangling = draw(rarely)
    if kind == "voicemail:":
        return Destination("voicemail", "999" if dangling else draw(st.sampled_from(exts)))
    if kind == "extension":
        return Destination("extension", "899" if dangling else draw(st.sampled_from(exts)))
    if kind == "ring_group":
        if not groups:
            return Destination("extension", draw(st.sampled_from(exts)))
        if dangling:
            return Destination("ring_group", "nogroup")
        return Destination("ring_group", draw(st.sampled_from(groups)))
    if kind in ("queue", "ivr"):
        return Destination(kind, "x")  # type: ignore[arg-type]
    if kind in ("mobile", "external"):
        target = draw(st.sampled_from(EXTERNALS)) if kind == "external" else ""
        flag = draw(st.sampled_from(["", "rebound", "deflect_302"]))
        return Destination(
            kind,  # type: ignore[arg-type]
            target,
            rebound=flag == "rebound",
            deflect_302=flag == "deflect_302",
        )
    return Destination(kind)  # type: ignore[arg-type]


@st.composite
def status_rules(draw: st.DrawFn, exts: list[str], groups: list[str]) -> StatusRules:
    def dest(internal: bool = False) -> Destination:
        return draw(destinations(exts, groups, internal))

    return StatusRules(
        no_answer=RuleTargets(dest(), dest(internal=True)),
        busy=RuleTargets(dest(), dest(internal=True)),
        no_answer_seconds=draw(st.sampled_from([20, 5, 0])),
        ring_mobile_simultaneously=draw(st.booleans()),
        accept_ring_group_calls=not draw(sometimes),
        voicemail_outside_office_hours=draw(sometimes),
        greeting=draw(st.sampled_from(["default", "x.wav"])),
    )


@st.composite
def users(draw: st.DrawFn, extension: str, exts: list[str], groups: list[str]) -> User:
    pool = [draw(status_rules(exts, groups)) for _ in range(3)]  # statuses share rule sets
    return User(
        extension=extension,
        name=f"User {extension}",
        department=draw(st.sampled_from(["Sales", "Support", "Ghost"])),
        forwarding=Forwarding(*(draw(st.sampled_from(pool)) for _ in STATUSES)),
        voicemail_pin=draw(st.sampled_from(["", "1234", "2468"])),
        mobile=draw(st.sampled_from(["", *MOBILES])),
        outbound_caller_id=draw(st.sampled_from(["", "+15145550200"])),
        status=draw(st.sampled_from(STATUSES)),
        accept_multiple_calls=draw(st.booleans()),
        disabled=draw(rarely),
        external_calls=draw(st.booleans()),
        outbound_pin_required=draw(st.booleans()),
        confirm_external_answer=draw(st.booleans()),
        voicemail=VoicemailSettings(enabled=not draw(sometimes)),
        schedule=Schedule(
            office_hours=draw(st.none() | hours),
            break_hours=draw(st.none() | breaks),
            auto_status=draw(sometimes),
            block_outbound_outside_hours=draw(sometimes),
        ),
    )


@st.composite
def directories(draw: st.DrawFn) -> Directory:
    exts = draw(st.lists(st.sampled_from(EXTENSIONS), min_size=2, max_size=8, unique=True))
    names = draw(st.lists(st.sampled_from(GROUPS), max_size=3, unique=True))
    groups = tuple(
        RingGroup(
            name=name,
            extension=GROUP_EXTENSIONS[name],
            members=tuple(
                draw(st.lists(st.sampled_from(exts), min_size=1, max_size=5, unique=True))
            ),
            strategy=draw(st.sampled_from(["ring_all", "hunt"])),
            ring_seconds=draw(st.sampled_from([5, 20])),
            no_answer=draw(destinations(exts, names, kinds=ROUTE_KINDS)),
        )
        for name in names
    )
    trunks = tuple(
        Trunk(
            name=name,
            host="127.0.0.1",
            channels=draw(st.none() | st.integers(1, 3)),
            supports_302=draw(st.booleans()),
        )
        for name in draw(st.lists(st.sampled_from(TRUNKS), max_size=2, unique=True))
    )
    departments = tuple(
        Department(
            name=name,
            caller_id=caller_id,
            timezone=draw(st.sampled_from(ZONES)),
            holidays=(dt.date(2026, 12, 25),),
            office_hours=draw(st.none() | hours),
            break_hours=draw(breaks),
        )
        for name, caller_id in (("Sales", "+15145550100"), ("Support", "+15145550200"))
    )
    numbers = tuple(
        Number(
            number=did,
            route_to=draw(destinations(exts, names, kinds=ROUTE_KINDS)),
            block_caller_id=draw(st.booleans()),
        )
        for did in draw(st.lists(st.sampled_from(DIDS), min_size=1, max_size=3, unique=True))
    )
    return Directory(
        system=System(domain="pbx.test"),
        trunks=trunks,
        departments=departments,
        numbers=numbers,
        ring_groups=groups,
        users=tuple(draw(users(ext, exts, names)) for ext in exts),
    )


times = st.datetimes(
    min_value=dt.datetime(2026, 1, 1), max_value=dt.datetime(2027, 1, 1), timezones=st.just(dt.UTC)
)
PHONE_DIALS = [
    "999",
    "911",
    "*82911",
    "+15145550199",
    "*82+15145550199",
    "7771234+15145550199",
    "7772468*825550199",
    "7779999+15145550199",
    "7771234",
    "777",
    "abc",
    "",
]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Directory, LiveState, CallFacts]:
    """A directory, then a live state and a call that mostly involve its users."""
    directory = draw(directories())
    exts = [u.extension for u in directory.users]
    some = st.lists(st.sampled_from(exts), unique=True).map(frozenset)
    unregistered = draw(some if draw(sometimes) else st.just(frozenset()))
    state = LiveState(
        statuses=draw(st.dictionaries(st.sampled_from(exts), st.sampled_from(STATUSES))),
        registered=frozenset(exts) - unregistered,
        busy=draw(some if draw(sometimes) else st.just(frozenset())),
        channels_in_use=draw(st.dictionaries(st.sampled_from(TRUNKS), st.integers(0, 4))),
    )
    at = draw(times)
    if draw(either):
        caller = draw(st.just("899") if draw(rarely) else st.sampled_from(exts))
        targets = [e for e in exts if e != caller] + [g.extension for g in directory.ring_groups]
        callee = draw(
            st.sampled_from(PHONE_DIALS) if draw(sometimes) else st.sampled_from(targets)
        )
        prefix = draw(st.sampled_from(["", "", "", "*82", "7771234"]))
        return directory, state, CallFacts(caller, prefix + callee, "phone", at)
    dids = [n.number for n in directory.numbers]
    callee = draw(
        st.sampled_from(["15145550100", "+18005550100", "404"])
        if draw(rarely)
        else st.sampled_from(dids)
    )
    call = CallFacts(
        draw(st.sampled_from(["+15145550199", "anonymous", ""])),
        callee,
        "trunk",
        at,
        trunk=draw(st.sampled_from([*TRUNKS, ""])),
    )
    return directory, state, call


def ring_keys(step: Ring) -> list[str]:
    keys = []
    for target in step.targets:
        if isinstance(target, Device):
            keys.append(target.extension)
        else:
            assert isinstance(target, External)
            keys.append("n:" + target.number.lstrip("+"))
    return keys


def check_paths(p: Plan) -> int:
    """Walk every path from step 0; returns how many there are."""
    count = 0
    stack: list[tuple[int, frozenset[str], int]] = [(0, frozenset(), 0)]
    while stack:
        index, rung, depth = stack.pop()
        assert depth <= len(p.steps), "a path longer than the plan: it loops"
        step = p.steps[index]
        if not isinstance(step, Ring):
            count += 1
            continue
        keys = ring_keys(step)
        assert len(keys) == len(set(keys)), f"step {index} rings something twice"
        assert not rung.intersection(keys), f"step {index} re-rings {rung & set(keys)}"
        rung = rung.union(keys)
        nexts = {n for n in step.next_steps}
        for nxt in nexts:
            if nxt is None:
                count += 1
            else:
                assert index < nxt < len(p.steps)
                stack.append((nxt, rung, depth + 1))
    return count


def check_plan(p: Plan) -> None:
    assert p.steps, "a plan is never empty"
    for i, step in enumerate(p.steps):
        assert isinstance(step.reason, str) and step.reason.strip(), f"step {i} has no reason"
        if isinstance(step, Ring):
            assert step.targets, f"step {i} rings nothing"
            assert step.seconds is None or step.seconds > 0
            for nxt in step.next_steps:
                assert nxt is None or i < nxt < len(p.steps)
            for target in step.targets:
                # a rebound leg screens already: it is never also confirmed
                assert not (isinstance(target, External) and target.confirm and target.rebound)
        for diversion in getattr(step, "diversion", ()):
            assert diversion.reason in REASONS
    assert check_paths(p) >= 1
    # every step is reachable from step 0 (no dead rows in the table)
    reachable = {0}
    for i, step in enumerate(p.steps):
        if i in reachable and isinstance(step, Ring):
            reachable.update(n for n in step.next_steps if n is not None)
    assert reachable == set(range(len(p.steps)))
    doc = plan_to_json(p)
    assert json.loads(json.dumps(doc)) == doc
    assert len(doc["steps"]) == len(p.steps)
    text = render_text(p)
    assert f"\n{len(p.steps)}. " in text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios())
def test_every_plan_is_well_formed(scenario: tuple[Directory, LiveState, CallFacts]) -> None:
    directory, state, call = scenario
    p = plan(call, directory, state)
    assert p.call is call
    check_plan(p)
    # deterministic, and the router gives the same plan
    assert router_for(directory).plan(call, state).steps == p.steps


WEB_KINDS = ("extension",) * 6 + ("ring_group",) * 2 + ("voicemail", "mobile")


@st.composite
def forwarding_webs(draw: st.DrawFn) -> Directory:
    """Every user forwards to other users or groups: deep chains, loops, the hop cap."""
    exts = EXTENSIONS[: draw(st.sampled_from(range(2, 9)))]
    names = GROUPS[: draw(st.integers(0, 2))]

    ordered = draw(either)  # a long chain 100 -> 101 -> ... on no answer (hits the hop cap)

    def rules(index: int) -> StatusRules:
        def dest() -> Destination:
            return draw(destinations(exts, names, kinds=WEB_KINDS))

        no_answer = dest()
        if ordered:
            no_answer = Destination("extension", exts[(index + 1) % len(exts)])
        return StatusRules(
            no_answer=RuleTargets(no_answer, dest()),
            busy=RuleTargets(dest(), dest()),
            no_answer_seconds=draw(st.sampled_from([10, 10, 0])),
            ring_mobile_simultaneously=draw(sometimes),
        )

    users_ = tuple(
        User(
            extension=ext,
            name=ext,
            department="Sales",
            forwarding=Forwarding(*(rules(i) for _ in STATUSES)),
            mobile=draw(st.sampled_from(MOBILES)),
            confirm_external_answer=draw(sometimes),
        )
        for i, ext in enumerate(exts)
    )
    groups = tuple(
        RingGroup(
            name=name,
            extension=GROUP_EXTENSIONS[name],
            members=tuple(draw(st.lists(st.sampled_from(exts), min_size=1, unique=True))),
            strategy=draw(st.sampled_from(["ring_all", "hunt"])),
            no_answer=draw(destinations(exts, names, kinds=WEB_KINDS)),
        )
        for name in names
    )
    return Directory(
        system=System(domain="pbx.test"),
        trunks=(Trunk("carrier", "127.0.0.1", supports_302=True),),
        departments=(Department("Sales", "+15145550100"),),
        numbers=(Number("+15145550100", Destination("extension", exts[0])),),
        ring_groups=groups,
        users=users_,
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    directory=forwarding_webs(),
    source=either,
    unregistered=st.lists(st.sampled_from(EXTENSIONS), max_size=3).map(frozenset),
)
def test_forwarding_webs_end(
    directory: Directory, source: bool, unregistered: frozenset[str]
) -> None:
    exts = [u.extension for u in directory.users]
    state = LiveState(registered=frozenset(exts) - unregistered)
    at = dt.datetime(2026, 3, 10, 15, 0, tzinfo=dt.UTC)
    if source:
        call = CallFacts(exts[-1], exts[0], "phone", at)
    else:
        call = CallFacts("+15145550199", "+15145550100", "trunk", at, trunk="carrier")
    p = plan(call, directory, state)
    check_plan(p)
    # every path visits at most 1 + MAX_FORWARD_HOPS users' own rings
    for step in p.steps:
        chain = getattr(step, "diversion", ())
        users_in_chain = [d.extension for d in chain if d.extension in exts]
        assert len(users_in_chain) == len(set(users_in_chain)), "a user forwarded twice"
        assert len(chain) <= 2 * (MAX_FORWARD_HOPS + 1)
