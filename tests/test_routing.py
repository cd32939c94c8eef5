"""Unit tests for routing.plan: one test (or a few) per rule, with concrete steps."""

from __future__ import annotations

import datetime as dt
import tomllib
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from provisioning.directory import load_directory, parse_directory
from provisioning.model import STATUSES, Directory, Status
from routing import (
    CONFIRM_SECONDS,
    MAX_FORWARD_HOPS,
    REBOUND_SECONDS,
    Busy,
    CallFacts,
    Deflect,
    Device,
    Diversion,
    External,
    Ivr,
    LiveState,
    MailboxAccess,
    Plan,
    Queue,
    Reject,
    Ring,
    Router,
    Step,
    Voicemail,
    effective_status,
    plan,
    router_for,
)

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT.parent / "shared" / "spec" / "directory.toml"
EXAMPLE = ROOT / "examples" / "directory.toml"
TZ = ZoneInfo("America/Toronto")

# Tuesday 10 March 2026 (DST already started on the 8th)
OFFICE = dt.datetime(2026, 3, 10, 10, 30, tzinfo=TZ)
BREAK = dt.datetime(2026, 3, 10, 12, 30, tzinfo=TZ)
EVENING = dt.datetime(2026, 3, 10, 20, 0, tzinfo=TZ)
CHRISTMAS = dt.datetime(2026, 12, 25, 10, 30, tzinfo=TZ)  # a Friday, a holiday
CALLER = "+15145550199"

BASE = """
[system]
domain = "pbx.test"
extension_digits = 3
voicemail_number = "999"
emergency_numbers = ["911", "112"]

[[trunks]]
name = "carrier"
host = "127.0.0.1"
channels = 4
supports_302 = true

[[trunks]]
name = "backup"
host = "127.0.0.2"
channels = 2

[[departments]]
name = "Sales"
caller_id = "+15145550100"
timezone = "America/Toronto"
holidays = ["2026-12-25"]
[departments.office_hours]
mon = ["09:00-17:00"]
tue = ["09:00-17:00"]
wed = ["09:00-17:00"]
thu = ["09:00-17:00"]
fri = ["09:00-17:00"]
[departments.break_hours]
mon = ["12:00-13:00"]
tue = ["12:00-13:00"]
wed = ["12:00-13:00"]
thu = ["12:00-13:00"]
fri = ["12:00-13:00"]

[[numbers]]
number = "+15145550100"
route_to = "extension:101"

[[numbers]]
number = "+15145550177"
route_to = "extension:101"
block_caller_id = true
"""


def build(text: str) -> Directory:
    """BASE + ``text`` (users, ring groups, more numbers) as a validated Directory."""
    return parse_directory(tomllib.loads(BASE + text), "test.toml")


def user_toml(ext: str, extra: str = "", **keys: Any) -> str:
    """A [[users]] table; ``keys`` are top-level keys, ``extra`` sub-tables."""
    lines = [
        "[[users]]",
        f'extension = "{ext}"',
        f'name = "User {ext}"',
        f'password = "pw-{ext}"',
        'department = "Sales"',
    ]
    for key, value in keys.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, int):
            lines.append(f"{key} = {value}")
        else:
            lines.append(f'{key} = "{value}"')
    return "\n".join(lines) + "\n" + extra + "\n"


def spec_directory(extra_numbers: list[dict[str, Any]] | None = None) -> Directory:
    with SPEC.open("rb") as f:
        data = tomllib.load(f)
    data["numbers"].append({"number": "+15145550101", "route_to": "extension:101"})
    data["numbers"].extend(extra_numbers or [])
    return parse_directory(data, str(SPEC))


def phone(caller: str, callee: str, at: dt.datetime = OFFICE) -> CallFacts:
    return CallFacts(caller, callee, "phone", at)


def trunk(did: str, at: dt.datetime = OFFICE, via: str = "carrier", caller: str = CALLER) -> (
    CallFacts
):
    return CallFacts(caller, did, "trunk", at, trunk=via)


def live(
    d: Directory,
    statuses: dict[str, Status] | None = None,
    unregistered: set[str] | None = None,
    busy: set[str] | None = None,
    channels: dict[str, int] | None = None,
) -> LiveState:
    registered = frozenset(u.extension for u in d.users) - frozenset(unregistered or ())
    return LiveState(
        statuses=statuses or {},
        registered=registered,
        busy=frozenset(busy or ()),
        channels_in_use=channels or {},
    )


def ring(p: Plan, index: int) -> Ring:
    step = p.steps[index]
    assert isinstance(step, Ring), f"step {index} is {step}"
    return step


def only(p: Plan) -> Step:
    assert len(p.steps) == 1, p.steps
    return p.steps[0]


def devices(r: Ring) -> list[str]:
    return [t.extension for t in r.targets if isinstance(t, Device)]


def externals(r: Ring) -> list[External]:
    return [t for t in r.targets if isinstance(t, External)]


def chain(step: Step) -> list[tuple[str, str]]:
    return [(d.extension, d.reason) for d in getattr(step, "diversion", ())]


def at_index(p: Plan, index: int | None) -> Step:
    assert index is not None
    return p.steps[index]


# --------------------------------------------------------------------------- spec directory,
# every status x caller class x outcome (101 of shared/spec/directory.toml)


@pytest.fixture(scope="module")
def spec() -> Directory:
    return spec_directory()


def spec_call(external: bool) -> CallFacts:
    return trunk("+15145550101") if external else phone("102", "101")


@pytest.mark.parametrize("external", [True, False])
def test_spec_available_rings_then_voicemail(spec: Directory, external: bool) -> None:
    p = plan(spec_call(external), spec, live(spec, {"101": "available"}))
    assert p.status_of_callee == "available"
    first = ring(p, 0)
    assert first.targets == (Device("101"),)
    assert first.seconds == 20
    na, bz = at_index(p, first.on_no_answer), at_index(p, first.on_busy)
    assert first.on_failed == first.on_busy
    assert isinstance(na, Voicemail) and na.box == "101"
    assert chain(na) == [("101", "no-answer")]
    assert isinstance(bz, Voicemail) and bz.box == "101"
    assert chain(bz) == [("101", "user-busy")]
    if not external:
        assert "same_as_external" in bz.reason  # internal busy = same_as_external
    assert len(p.steps) == 3


@pytest.mark.parametrize("external", [True, False])
def test_spec_available_unregistered_goes_to_busy_rule(spec: Directory, external: bool) -> None:
    p = plan(spec_call(external), spec, live(spec, {"101": "available"}, unregistered={"101"}))
    step = only(p)
    assert isinstance(step, Voicemail) and step.box == "101"
    assert chain(step) == [("101", "unavailable")]
    assert "no device registered" in step.reason


def test_spec_away_external_rings_mobile_simultaneously(spec: Directory) -> None:
    p = plan(spec_call(True), spec, live(spec, {"101": "away"}))
    first = ring(p, 0)
    assert first.seconds == 15
    assert devices(first) == ["101"]
    (mobile,) = externals(first)
    assert mobile == External("+15145550111", "carrier", CALLER, False, mobile_of="101")
    # the no-answer rule is mobile (rebound) but the mobile already rang: straight to voicemail
    na = at_index(p, first.on_no_answer)
    assert isinstance(na, Voicemail) and na.box == "101"
    assert "already rang" in na.reason and "mobile (rebound)" in na.reason
    bz = at_index(p, first.on_busy)
    assert isinstance(bz, Voicemail) and chain(bz) == [("101", "user-busy")]


def test_spec_away_internal_caller_id_is_the_callers(spec: Directory) -> None:
    p = plan(spec_call(False), spec, live(spec, {"101": "away"}))
    first = ring(p, 0)
    (mobile,) = externals(first)
    assert mobile.caller_id == "+15145550100"  # 102's external caller ID (department)
    na = at_index(p, first.on_no_answer)
    assert isinstance(na, Voicemail) and "internal no-answer rule" in na.reason


def test_spec_away_no_free_channel_drops_the_mobile(spec: Directory) -> None:
    p = plan(spec_call(True), spec, live(spec, {"101": "away"}, channels={"carrier": 8}))
    first = ring(p, 0)
    assert first.targets == (Device("101"),)
    assert "no trunk channel free" in first.reason
    na = at_index(p, first.on_no_answer)  # rebound to the mobile: no channel -> voicemail
    assert isinstance(na, Voicemail) and na.box == "101"


@pytest.mark.parametrize("external", [True, False])
@pytest.mark.parametrize("unregistered", [set(), {"101"}])
def test_spec_dnd_goes_to_voicemail_without_ringing(
    spec: Directory, external: bool, unregistered: set[str]
) -> None:
    p = plan(spec_call(external), spec, live(spec, {"101": "dnd"}, unregistered=unregistered))
    step = only(p)
    assert isinstance(step, Voicemail) and step.box == "101"
    assert chain(step) == [("101", "do-not-disturb")]
    assert "no_answer_seconds = 0" in step.reason
    assert p.status_of_callee == "dnd"


def test_spec_lunch_external_forwards_to_102(spec: Directory) -> None:
    p = plan(spec_call(True), spec, live(spec, {"101": "lunch"}))
    first = ring(p, 0)
    assert first.targets == (Device("101"),) and first.seconds == 20
    second = ring(p, first.on_no_answer or 0)
    assert second.targets == (Device("102"),)
    assert chain(second) == [("101", "no-answer")]
    assert "external no-answer rule -> extension:102" in second.reason
    # 102 has no rules of its own: product defaults (20 s, voicemail)
    assert second.seconds == 20
    vm = at_index(p, second.on_no_answer)
    assert isinstance(vm, Voicemail) and vm.box == "102"
    assert chain(vm) == [("101", "no-answer"), ("102", "no-answer")]
    bz = at_index(p, first.on_busy)
    assert isinstance(bz, Voicemail) and bz.box == "101"


def test_spec_lunch_internal_goes_to_voicemail(spec: Directory) -> None:
    p = plan(spec_call(False), spec, live(spec, {"101": "lunch"}))
    first = ring(p, 0)
    na = at_index(p, first.on_no_answer)
    assert isinstance(na, Voicemail) and na.box == "101"


def test_spec_lunch_unregistered_follows_busy_rule(spec: Directory) -> None:
    p = plan(spec_call(True), spec, live(spec, {"101": "lunch"}, unregistered={"101"}))
    step = only(p)
    assert isinstance(step, Voicemail) and chain(step) == [("101", "unavailable")]


def test_spec_business_trip_external_deflects_with_302(spec: Directory) -> None:
    p = plan(spec_call(True), spec, live(spec, {"101": "business_trip"}))
    step = only(p)
    assert step == Deflect(
        "+15145550199", "carrier", step.reason, (Diversion("101", "unconditional"),)
    )
    assert "deflect_302" in step.reason


def test_spec_business_trip_unregistered_still_forwards(spec: Directory) -> None:
    # zero seconds: the devices are not rung, so their registration does not matter
    p = plan(
        spec_call(True), spec, live(spec, {"101": "business_trip"}, unregistered={"101"})
    )
    assert isinstance(only(p), Deflect)


def test_spec_business_trip_internal_forwards_to_mobile(spec: Directory) -> None:
    p = plan(spec_call(False), spec, live(spec, {"101": "business_trip"}))
    step = ring(p, 0)
    assert len(p.steps) == 1
    assert step.targets == (
        External("+15145550111", "carrier", "+15145550100", False, mobile_of="101"),
    )
    assert step.seconds is None
    assert step.next_steps == (None, None, None)
    assert chain(step) == [("101", "unconditional")]


def test_spec_ring_group_excludes_dnd_member(spec: Directory) -> None:
    p = plan(trunk("+15145550100"), spec, live(spec, {"101": "dnd"}))
    first = ring(p, 0)
    assert first.targets == (Device("102"),)
    assert first.seconds == 25
    assert "accept_ring_group_calls = false" in first.reason
    vm = at_index(p, first.on_no_answer)
    assert isinstance(vm, Voicemail) and vm.box == "101"
    assert chain(vm) == [("800", "no-answer")]
    assert first.on_busy == first.on_failed == first.on_no_answer


# --------------------------------------------------------------------------- example directory


@pytest.fixture(scope="module")
def example() -> Directory:
    return load_directory(EXAMPLE)


def test_example_main_line_rings_sales(example: Directory) -> None:
    p = plan(trunk("+15145550100"), example, live(example))
    first = ring(p, 0)
    assert devices(first) == ["101", "102", "103"]
    assert p.status_of_callee is None


def test_example_toll_free_and_digits_only_did(example: Directory) -> None:
    for did in ("+18005550100", "18005550100"):
        p = plan(trunk(did), example, live(example))
        assert devices(ring(p, 0)) == ["101", "102", "103"]


def test_example_unknown_did_is_404(example: Directory) -> None:
    step = only(plan(trunk("+15145550999"), example, live(example)))
    assert isinstance(step, Reject) and step.status == 404


def test_example_support_line_chain_to_voicemail_of_201(example: Directory) -> None:
    # 201 available (25 s) -> external no-answer extension:202; 202 dnd -> voicemail:201
    p = plan(trunk("+15145550200"), example, live(example))
    first = ring(p, 0)
    assert first.targets == (Device("201"),) and first.seconds == 25
    vm = at_index(p, first.on_no_answer)
    assert isinstance(vm, Voicemail) and vm.box == "201"
    assert chain(vm) == [("201", "no-answer"), ("202", "do-not-disturb")]
    assert p.status_of_callee == "available" and p.callee_extension == "201"


def test_example_disabled_user(example: Directory) -> None:
    step = only(plan(phone("101", "203"), example, live(example)))
    assert isinstance(step, Reject) and step.status == 480
    step = only(plan(phone("203", "101"), example, live(example)))
    assert isinstance(step, Reject) and step.status == 403


def test_example_ring_group_member_does_not_follow_own_rules(example: Directory) -> None:
    # 102 is on a business trip (0 s, deflect) but a ring group call just rings the desk
    p = plan(phone("201", "800"), example, live(example))
    assert devices(ring(p, 0)) == ["101", "102", "103"]


def test_example_caller_is_not_rung_by_own_group(example: Directory) -> None:
    p = plan(phone("101", "800"), example, live(example))
    assert devices(ring(p, 0)) == ["102", "103"]


def test_example_lunch_to_ring_group_skips_already_rung(example: Directory) -> None:
    # 103 lunch: 10 s, external no-answer -> ring_group:sales; 103 is not rung twice
    p = plan(trunk("+15145550100"), example, live(example, unregistered={"101", "102"}))
    # every member but 103 unregistered: group rings 103 only
    first = ring(p, 0)
    assert devices(first) == ["103"]
    d = build(
        user_toml(
            "101",
            """
[users.forwarding.lunch]
no_answer_seconds = 10
no_answer = { external = "ring_group:sales", internal = "voicemail" }
""",
            status="lunch",
        )
        + user_toml("102")
        + """
[[ring_groups]]
name = "sales"
extension = "800"
members = ["101", "102"]
no_answer = "voicemail:102"
"""
    )
    p = plan(trunk("+15145550100"), d, live(d))
    first = ring(p, 0)
    assert first.targets == (Device("101"),)
    group = ring(p, first.on_no_answer or 0)
    assert group.targets == (Device("102"),)  # 101 already rang on this path
    assert chain(group) == [("101", "no-answer")]
    vm = at_index(p, group.on_no_answer)
    assert isinstance(vm, Voicemail) and vm.box == "102"
    assert chain(vm) == [("101", "no-answer"), ("800", "no-answer")]


def test_example_voicemail_number(example: Directory) -> None:
    step = only(plan(phone("102", "999"), example, live(example)))
    assert step == MailboxAccess("102", step.reason)
    step = only(plan(phone("102", "102"), example, live(example)))
    assert isinstance(step, MailboxAccess) and step.box == "102"


# --------------------------------------------------------------------------- user rules


def test_busy_with_accept_multiple_calls_false() -> None:
    d = build(
        user_toml(
            "101",
            """
[users.forwarding.available]
busy = { external = "extension:102", internal = "busy" }
""",
            accept_multiple_calls=False,
        )
        + user_toml("102")
    )
    p = plan(trunk("+15145550100"), d, live(d, busy={"101"}))
    first = ring(p, 0)
    assert first.targets == (Device("102"),)
    assert chain(first) == [("101", "user-busy")]
    assert "accept_multiple_calls = false" in first.reason
    step = only(plan(phone("102", "101"), d, live(d, busy={"101"})))
    assert isinstance(step, Busy) and "internal busy rule" in step.reason


def test_busy_with_accept_multiple_calls_true_still_rings() -> None:
    d = build(user_toml("101") + user_toml("102"))
    p = plan(trunk("+15145550100"), d, live(d, busy={"101"}))
    assert ring(p, 0).targets == (Device("101"),)


def test_same_as_external_internal_follows_external_rule() -> None:
    d = build(
        user_toml(
            "101",
            """
[users.forwarding.available]
no_answer = { external = "extension:103", internal = "same_as_external" }
""",
        )
        + user_toml("102")
        + user_toml("103")
    )
    p = plan(phone("102", "101"), d, live(d))
    nxt = ring(p, ring(p, 0).on_no_answer or 0)
    assert nxt.targets == (Device("103"),)
    assert "internal no-answer rule (same_as_external) -> extension:103" in nxt.reason


def test_voicemail_of_another_user_and_greeting_per_status() -> None:
    d = build(
        user_toml(
            "101",
            """
[users.forwarding.lunch]
no_answer_seconds = 0
no_answer = { external = "voicemail:102", internal = "voicemail" }
greeting = "lunch.wav"
""",
            status="lunch",
        )
        + user_toml(
            "102",
            """
[users.voicemail]
greeting = "bruno.wav"
[users.forwarding.away]
greeting = "away.wav"
""",
        )
    )
    step = only(plan(trunk("+15145550100"), d, live(d)))
    assert isinstance(step, Voicemail)
    assert (step.box, step.greeting) == ("102", "bruno.wav")  # 102 available: mailbox default
    step = only(plan(trunk("+15145550100"), d, live(d, {"102": "away"})))
    assert isinstance(step, Voicemail) and step.greeting == "away.wav"
    step = only(plan(phone("102", "101"), d, live(d)))
    assert isinstance(step, Voicemail) and (step.box, step.greeting) == ("101", "lunch.wav")
    assert chain(step) == [("101", "unconditional")]


def test_voicemail_disabled_is_busy() -> None:
    d = build(
        user_toml(
            "101",
            """
[users.voicemail]
enabled = false
""",
        )
    )
    p = plan(trunk("+15145550100"), d, live(d))
    busy = at_index(p, ring(p, 0).on_no_answer)
    assert isinstance(busy, Busy)  # the product default for no voicemail is busy
    step = only(plan(phone("101", "999"), d, live(d)))
    assert isinstance(step, Reject) and step.status == 403


def test_voicemail_outside_office_hours() -> None:
    d = build(
        user_toml(
            "101",
            """
[users.forwarding.available]
voicemail_outside_office_hours = true
""",
        )
    )
    p = plan(trunk("+15145550100", at=EVENING), d, live(d))
    step = only(p)
    assert isinstance(step, Voicemail) and step.box == "101"
    assert chain(step) == [("101", "time-of-day")]
    assert "voicemail_outside_office_hours" in step.reason
    step = only(plan(trunk("+15145550100", at=CHRISTMAS), d, live(d)))
    assert isinstance(step, Voicemail) and chain(step) == [("101", "time-of-day")]
    assert isinstance(plan(trunk("+15145550100", at=OFFICE), d, live(d)).steps[0], Ring)


def test_queue_and_ivr_are_steps_after_a_forward() -> None:
    d = build(
        user_toml(
            "101",
            """
[users.forwarding.available]
no_answer = { external = "queue:support", internal = "ivr:main" }
""",
        )
        + user_toml("102")
        + """
[[numbers]]
number = "+15145550150"
route_to = "queue:support"

[[ivrs]]
name = "main"
extension = "850"
prompt = "main.wav"
keys = { "1" = "extension:102" }

[[queues]]
name = "support"
extension = "860"
agents = ["101", "102"]
"""
    )
    p = plan(trunk("+15145550100"), d, live(d))
    queued = at_index(p, ring(p, 0).on_no_answer)
    assert isinstance(queued, Queue) and queued.name == "support"
    assert queued.diversion == (Diversion("101", "no-answer"),)
    queued = only(plan(trunk("+15145550150"), d, live(d)))
    assert isinstance(queued, Queue) and queued.agents == ("101", "102")
    p = plan(phone("102", "101"), d, live(d))
    menu = at_index(p, ring(p, 0).on_no_answer)
    assert isinstance(menu, Ivr) and menu.name == "main"
    assert menu.diversion == (Diversion("101", "no-answer"),)


def test_busy_destination() -> None:
    d = build(
        user_toml(
            "101",
            """
[users.forwarding.dnd]
no_answer_seconds = 0
no_answer = { external = "busy", internal = "busy" }
""",
            status="dnd",
        )
    )
    step = only(plan(trunk("+15145550100"), d, live(d)))
    assert isinstance(step, Busy) and "dnd" in step.reason


def test_status_away_zero_seconds_diversion_is_away() -> None:
    d = build(
        user_toml(
            "101",
            """
[users.forwarding.away]
no_answer_seconds = 0
""",
            status="away",
        )
    )
    step = only(plan(trunk("+15145550100"), d, live(d)))
    assert isinstance(step, Voicemail) and chain(step) == [("101", "away")]


def test_live_status_overrides_directory() -> None:
    d = build(user_toml("101", status="dnd"))
    p = plan(trunk("+15145550100"), d, live(d, {"101": "available"}))
    assert p.status_of_callee == "available"
    assert isinstance(p.steps[0], Ring)
    assert "set live" in p.steps[0].reason


# --------------------------------------------------------------------------- chains and loops


def forward_chain(n: int, loop_to: str | None = None) -> Directory:
    """Users 101..10n, each forwarding no-answer to the next; the last to ``loop_to``."""
    text = ""
    for i in range(n):
        ext = f"{101 + i}"
        nxt = f"{102 + i}" if i + 1 < n else loop_to
        rule = (
            f"""
[users.forwarding.available]
no_answer_seconds = 10
no_answer = {{ external = "extension:{nxt}", internal = "extension:{nxt}" }}
"""
            if nxt
            else ""
        )
        text += user_toml(ext, rule)
    return build(text)


def follow_no_answer(p: Plan) -> list[Step]:
    path = [p.steps[0]]
    while isinstance(path[-1], Ring):
        nxt = path[-1].on_no_answer
        if nxt is None:
            break
        path.append(p.steps[nxt])
    return path


def test_extension_chain_accumulates_diversions() -> None:
    d = forward_chain(3)
    path = follow_no_answer(plan(trunk("+15145550100"), d, live(d)))
    assert [devices(s) for s in path if isinstance(s, Ring)] == [["101"], ["102"], ["103"]]
    last = path[-1]
    assert isinstance(last, Voicemail) and last.box == "103"
    assert chain(last) == [("101", "no-answer"), ("102", "no-answer"), ("103", "no-answer")]


def test_loop_stops_at_voicemail_of_first_user() -> None:
    d = forward_chain(2, loop_to="101")
    p = plan(trunk("+15145550100"), d, live(d))
    path = follow_no_answer(p)
    assert [devices(s) for s in path if isinstance(s, Ring)] == [["101"], ["102"]]
    last = path[-1]
    assert isinstance(last, Voicemail) and last.box == "101"
    assert "loop" in last.reason


def test_forward_back_to_the_caller_is_a_loop() -> None:
    d = forward_chain(2, loop_to="101")
    p = plan(phone("101", "102"), d, live(d))
    path = follow_no_answer(p)
    assert [devices(s) for s in path if isinstance(s, Ring)] == [["102"]]
    last = path[-1]
    assert isinstance(last, Voicemail) and last.box == "102" and "loop" in last.reason


def test_hop_cap() -> None:
    d = forward_chain(8)
    p = plan(trunk("+15145550100"), d, live(d))
    path = follow_no_answer(p)
    rings = [devices(s) for s in path if isinstance(s, Ring)]
    assert len(rings) == MAX_FORWARD_HOPS + 1  # the callee and 5 forwards
    last = path[-1]
    assert isinstance(last, Voicemail) and last.box == "101"
    assert f"more than {MAX_FORWARD_HOPS} forwards" in last.reason


def test_disabled_forward_target_rejects_480() -> None:
    d = build(
        user_toml(
            "101",
            """
[users.forwarding.available]
no_answer = { external = "extension:102", internal = "voicemail" }
""",
        )
        + user_toml("102", disabled=True)
    )
    p = plan(trunk("+15145550100"), d, live(d))
    rej = at_index(p, ring(p, 0).on_no_answer)
    assert isinstance(rej, Reject) and rej.status == 480


# --------------------------------------------------------------------------- ring groups


def group_directory(strategy: str, no_answer: str = "voicemail:104") -> Directory:
    return build(
        user_toml("101")
        + user_toml("102", accept_multiple_calls=False)
        + user_toml(
            "103",
            """
[users.forwarding.away]
accept_ring_group_calls = false
""",
        )
        + user_toml("104")
        + f"""
[[ring_groups]]
name = "team"
extension = "800"
strategy = "{strategy}"
members = ["101", "102", "103"]
ring_seconds = 12
no_answer = "{no_answer}"

[[numbers]]
number = "+15145550180"
route_to = "ring_group:team"
"""
    )


def test_ring_all() -> None:
    d = group_directory("ring_all")
    p = plan(trunk("+15145550180"), d, live(d))
    first = ring(p, 0)
    assert devices(first) == ["101", "102", "103"] and first.seconds == 12
    vm = at_index(p, first.on_no_answer)
    assert isinstance(vm, Voicemail) and vm.box == "104"
    assert first.on_busy == first.on_failed == first.on_no_answer


def test_ring_all_eligibility() -> None:
    d = group_directory("ring_all")
    p = plan(
        trunk("+15145550180"), d, live(d, {"103": "away"}, unregistered={"101"}, busy={"102"})
    )
    vm = only(p)  # nobody left
    assert isinstance(vm, Voicemail) and vm.box == "104"
    assert chain(vm) == [("800", "unavailable")]
    assert "101 not registered" in vm.reason and "102 on a call" in vm.reason
    p = plan(trunk("+15145550180"), d, live(d, {"103": "away"}))
    assert devices(ring(p, 0)) == ["101", "102"]


def test_hunt() -> None:
    d = group_directory("hunt", no_answer="busy")
    p = plan(trunk("+15145550180"), d, live(d))
    assert [ring(p, i).targets for i in range(3)] == [
        (Device("101"),),
        (Device("102"),),
        (Device("103"),),
    ]
    assert [ring(p, i).next_steps for i in range(3)] == [(1, 1, 1), (2, 2, 2), (3, 3, 3)]
    assert all(ring(p, i).seconds == 12 for i in range(3))
    assert isinstance(p.steps[3], Busy)
    assert len(p.steps) == 4


def test_hunt_skips_ineligible() -> None:
    d = group_directory("hunt")
    p = plan(trunk("+15145550180"), d, live(d, busy={"102"}))
    assert [ring(p, i).targets for i in range(2)] == [(Device("101"),), (Device("103"),)]


def test_group_no_answer_to_member_skips_their_desk() -> None:
    d = group_directory("ring_all", no_answer="extension:101")
    p = plan(trunk("+15145550180"), d, live(d))
    first = ring(p, 0)
    vm = at_index(p, first.on_no_answer)  # 101's desk already rang: its no-answer rule
    assert isinstance(vm, Voicemail) and vm.box == "101"
    assert chain(vm) == [("800", "no-answer"), ("101", "no-answer")]


# --------------------------------------------------------------------------- external forwards


def forwarding_user(rule: str, status: str = "available", mobile: str = "+15145550111") -> str:
    return user_toml(
        "101",
        f"""
[users.forwarding.{status}]
no_answer_seconds = 10
no_answer = {{ external = {rule}, internal = {rule} }}
""",
        mobile=mobile,
        status=status,
    ) + user_toml("102")


def test_rebound_to_mobile() -> None:
    d = build(forwarding_user('{ to = "mobile", rebound = true }'))
    p = plan(trunk("+15145550100"), d, live(d))
    first = ring(p, 0)
    rebound = ring(p, first.on_no_answer or 0)
    assert rebound.targets == (
        External("+15145550111", "carrier", CALLER, False, rebound=True, mobile_of="101"),
    )
    assert rebound.seconds == REBOUND_SECONDS
    assert chain(rebound) == [("101", "no-answer")]
    assert rebound.on_no_answer == rebound.on_busy == rebound.on_failed
    vm = at_index(p, rebound.on_no_answer)
    assert isinstance(vm, Voicemail) and vm.box == "101" and "rebound" in vm.reason


def test_rebound_with_voicemail_disabled_is_busy() -> None:
    d = build(
        user_toml(
            "101",
            """
[users.voicemail]
enabled = false
[users.forwarding.available]
no_answer = { external = { to = "external:+15145550122", rebound = true }, internal = "busy" }
""",
        )
    )
    p = plan(trunk("+15145550100"), d, live(d))
    rebound = ring(p, ring(p, 0).on_no_answer or 0)
    assert isinstance(at_index(p, rebound.on_failed), Busy)


def test_external_forward_without_rebound_has_no_timer() -> None:
    d = build(forwarding_user('"external:+15145550122"'))
    p = plan(phone("102", "101"), d, live(d))
    fwd = ring(p, ring(p, 0).on_no_answer or 0)
    assert fwd.targets == (External("+15145550122", "carrier", "+15145550100", False),)
    assert fwd.seconds is None and fwd.next_steps == (None, None, None)


# ------------------------------------------------------------------- confirm_external_answer


def confirming_user(rule: str, status: str = "available", simultaneous: bool = False,
                    confirm: bool = True) -> str:
    """101 with ``confirm_external_answer`` and ``rule`` as its no-answer rule."""
    return user_toml(
        "101",
        f"""
[users.forwarding.{status}]
no_answer_seconds = 20
no_answer = {{ external = {rule}, internal = {rule} }}
ring_mobile_simultaneously = {"true" if simultaneous else "false"}
""",
        mobile="+15145550111",
        status=status,
        confirm_external_answer=confirm,
    ) + user_toml("102")


def test_confirm_marks_the_mobile_rung_with_the_desk_phones() -> None:
    d = build(confirming_user('"voicemail"', simultaneous=True))
    p = plan(trunk("+15145550100"), d, live(d))
    first = ring(p, 0)
    assert devices(first) == ["101"] and first.seconds == 20
    assert externals(first) == [External("+15145550111", "carrier", CALLER, False,
                                         mobile_of="101", confirm=True)]
    assert "confirm_external_answer" in first.reason
    assert f"presses 1 within {CONFIRM_SECONDS} s" in first.reason
    # a mobile that does not confirm is an unanswered leg: the no-answer rule
    vm = at_index(p, first.on_no_answer)
    assert isinstance(vm, Voicemail) and vm.box == "101"


def test_confirm_off_by_default_leaves_the_plan_as_it_was() -> None:
    on = build(confirming_user('"voicemail"', simultaneous=True, confirm=False))
    default = build(user_toml("101", """
[users.forwarding.available]
no_answer_seconds = 20
no_answer = { external = "voicemail", internal = "voicemail" }
ring_mobile_simultaneously = true
""", mobile="+15145550111") + user_toml("102"))
    assert default.users[0].confirm_external_answer is False
    for d in (on, default):
        p = plan(trunk("+15145550100"), d, live(d))
        assert not any(t.confirm for t in externals(ring(p, 0)))
        assert "confirm_external_answer" not in ring(p, 0).reason


@pytest.mark.parametrize("rule", ['"mobile"', '"external:+15145550122"'])
def test_a_confirmed_forward_goes_to_voicemail_when_not_taken(rule: str) -> None:
    d = build(confirming_user(rule))
    p = plan(trunk("+15145550100"), d, live(d))
    fwd = ring(p, ring(p, 0).on_no_answer or 0)
    (target,) = externals(fwd)
    assert target.confirm and not target.rebound
    assert target.mobile_of == ("101" if rule == '"mobile"' else "")
    # a forward rings with no timer: its only "no answer" is a leg that did not press 1
    assert fwd.seconds is None and fwd.on_busy is None and fwd.on_failed is None
    assert "confirm_external_answer" in fwd.reason and chain(fwd) == [("101", "no-answer")]
    vm = at_index(p, fwd.on_no_answer)
    assert isinstance(vm, Voicemail) and vm.box == "101"
    assert "did not take the call" in vm.reason and chain(vm) == [("101", "no-answer")]


def test_a_confirmed_forward_with_voicemail_disabled_ends_busy() -> None:
    d = build(user_toml("101", """
[users.voicemail]
enabled = false
[users.forwarding.available]
no_answer = { external = "mobile", internal = "busy" }
""", mobile="+15145550111", confirm_external_answer=True))
    p = plan(trunk("+15145550100"), d, live(d))
    fwd = ring(p, ring(p, 0).on_no_answer or 0)
    assert externals(fwd)[0].confirm
    assert isinstance(at_index(p, fwd.on_no_answer), Busy)


def test_confirm_leaves_rebound_and_deflection_alone() -> None:
    d = build(confirming_user('{ to = "mobile", rebound = true }'))
    p = plan(trunk("+15145550100"), d, live(d))
    rebound = ring(p, ring(p, 0).on_no_answer or 0)
    assert rebound.targets == (
        External("+15145550111", "carrier", CALLER, False, rebound=True, mobile_of="101"),
    )
    d = build(confirming_user('{ to = "external:+15145550122", deflect_302 = true }'))
    p = plan(trunk("+15145550100"), d, live(d))
    assert isinstance(at_index(p, ring(p, 0).on_no_answer), Deflect)


def test_a_did_routed_to_a_number_is_not_confirmed() -> None:
    """Only a user's own rules are confirmed: a DID's route_to has no user."""
    d = build(confirming_user('"voicemail"') + """
[[numbers]]
number = "+15145550188"
route_to = "external:+15145550122"
""")
    p = plan(trunk("+15145550188"), d, live(d))
    (target,) = externals(ring(p, 0))
    assert not target.confirm


@pytest.mark.parametrize(
    ("call", "deflects"),
    [
        (trunk("+15145550100", via="carrier"), True),  # supports_302
        (trunk("+15145550100", via="backup"), False),  # no 302 on this trunk
        (phone("102", "101"), False),  # phone callers never deflect
    ],
)
def test_deflect_302(call: CallFacts, deflects: bool) -> None:
    d = build(forwarding_user('{ to = "external:+15145550122", deflect_302 = true }'))
    p = plan(call, d, live(d))
    nxt = at_index(p, ring(p, 0).on_no_answer)
    if deflects:
        assert nxt == Deflect(
            "+15145550122", "carrier", nxt.reason, (Diversion("101", "no-answer"),)
        )
    else:
        assert isinstance(nxt, Ring) and nxt.targets[0] == External(
            "+15145550122", "carrier", nxt.targets[0].caller_id, False  # type: ignore[union-attr]
        )
        assert "forwarding instead" in nxt.reason


def test_deflect_needs_no_free_channel() -> None:
    d = build(forwarding_user('{ to = "external:+15145550122", deflect_302 = true }'))
    p = plan(trunk("+15145550100"), d, live(d, channels={"carrier": 4, "backup": 2}))
    assert isinstance(at_index(p, ring(p, 0).on_no_answer), Deflect)


def test_channels_full() -> None:
    d = build(forwarding_user('"external:+15145550122"'))
    full = {"carrier": 4, "backup": 2}
    p = plan(trunk("+15145550100"), d, live(d, channels=full))
    rej = at_index(p, ring(p, 0).on_no_answer)
    assert isinstance(rej, Reject) and rej.status == 503
    # the second trunk when the first is full
    p = plan(trunk("+15145550100"), d, live(d, channels={"carrier": 4, "backup": 1}))
    fwd = ring(p, ring(p, 0).on_no_answer or 0)
    assert externals(fwd)[0].trunk == "backup"


def test_external_caller_id_is_the_original_callers() -> None:
    d = build(forwarding_user('"external:+15145550122"'))
    p = plan(trunk("+15145550100", caller="anonymous"), d, live(d))
    fwd = ring(p, ring(p, 0).on_no_answer or 0)
    assert externals(fwd)[0].caller_id == "anonymous" and externals(fwd)[0].privacy
    p = plan(phone("102", "*82101"), d, live(d))  # *82 applies to forwarded legs too
    fwd = ring(p, ring(p, 0).on_no_answer or 0)
    assert externals(fwd)[0].caller_id == "+15145550100" and externals(fwd)[0].privacy


# --------------------------------------------------------------------------- outbound calls


def outbound_directory() -> Directory:
    return build(
        user_toml("101", voicemail_pin="1234")
        + user_toml("102", voicemail_pin="2468", outbound_pin_required=True)
        + user_toml("103", external_calls=False, outbound_pin_required=True, voicemail_pin="1111")
        + user_toml("104", outbound_caller_id="+15145550177")
        + user_toml(
            "105",
            """
[users.schedule]
block_outbound_outside_hours = true
""",
        )
    )


def outbound_target(p: Plan) -> External:
    step = ring(p, 0)
    assert len(p.steps) == 1 and step.seconds is None and step.next_steps == (None, None, None)
    (target,) = externals(step)
    return target


def test_outbound_department_caller_id() -> None:
    d = outbound_directory()
    target = outbound_target(plan(phone("101", "+15145550122"), d, live(d)))
    assert target == External("+15145550122", "carrier", "+15145550100", False)


def test_outbound_user_caller_id_and_block_caller_id() -> None:
    d = outbound_directory()
    target = outbound_target(plan(phone("104", "5550122"), d, live(d)))
    assert target.caller_id == "+15145550177" and target.privacy  # that number blocks it
    target = outbound_target(plan(phone("104", "*825550122"), d, live(d)))
    assert target.caller_id == "+15145550177" and not target.privacy  # *82 flips it


def test_star82_flips_privacy() -> None:
    d = outbound_directory()
    assert outbound_target(plan(phone("101", "*82+15145550122"), d, live(d))).privacy
    assert not outbound_target(plan(phone("101", "*82*82+15145550122"), d, live(d))).privacy


def test_outbound_pin() -> None:
    d = outbound_directory()
    rej = only(plan(phone("102", "+15145550122"), d, live(d)))
    assert isinstance(rej, Reject) and (rej.status, rej.text) == (403, "PIN Required")
    rej = only(plan(phone("102", "7779999+15145550122"), d, live(d)))
    assert isinstance(rej, Reject) and (rej.status, rej.text) == (403, "Wrong PIN")
    target = outbound_target(plan(phone("102", "7772468+15145550122"), d, live(d)))
    assert target.number == "+15145550122"
    target = outbound_target(plan(phone("102", "7772468*82+15145550122"), d, live(d)))
    assert target.privacy
    # a PIN before an extension is accepted and ignored
    assert ring(plan(phone("102", "7772468101"), d, live(d)), 0).targets == (Device("101"),)
    # without outbound_pin_required, 777... not followed by the PIN is an ordinary number
    assert outbound_target(plan(phone("101", "7775550122"), d, live(d))).number == "7775550122"
    assert outbound_target(plan(phone("101", "77712345550122"), d, live(d))).number == (
        "5550122"
    )


def test_external_calls_false() -> None:
    d = outbound_directory()
    rej = only(plan(phone("103", "7771111+15145550122"), d, live(d)))
    assert isinstance(rej, Reject) and rej.status == 403
    assert rej.text == "External Calls Not Allowed"
    assert isinstance(plan(phone("103", "101"), d, live(d)).steps[0], Ring)  # internal ok


@pytest.mark.parametrize("number", ["911", "112", "*82911", "7771111911"])
def test_emergency_always_allowed(number: str) -> None:
    d = outbound_directory()
    target = outbound_target(
        plan(phone("103", number, at=EVENING), d, live(d, channels={"carrier": 4, "backup": 2}))
    )
    assert target == External(number[-3:], "carrier", "+15145550100", False)


def test_emergency_uses_department_caller_id() -> None:
    d = outbound_directory()
    target = outbound_target(plan(phone("104", "911"), d, live(d)))
    assert target.caller_id == "+15145550100" and not target.privacy


def test_block_outbound_outside_hours() -> None:
    d = outbound_directory()
    rej = only(plan(phone("105", "+15145550122", at=EVENING), d, live(d)))
    assert isinstance(rej, Reject) and rej.text == "Outside Office Hours"
    rej = only(plan(phone("105", "+15145550122", at=CHRISTMAS), d, live(d)))
    assert isinstance(rej, Reject) and rej.status == 403
    assert outbound_target(plan(phone("105", "+15145550122"), d, live(d))).number
    assert isinstance(plan(phone("105", "101", at=EVENING), d, live(d)).steps[0], Ring)


def test_outbound_no_channel() -> None:
    d = outbound_directory()
    rej = only(plan(phone("101", "+15145550122"), d, live(d, channels={"carrier": 4,
                                                                          "backup": 2})))
    assert isinstance(rej, Reject) and rej.status == 503


@pytest.mark.parametrize(
    ("caller", "callee", "status"),
    [("109", "101", 403), ("101", "abc", 404), ("101", "1", 404), ("101", "7771234", 404)],
)
def test_phone_rejects(caller: str, callee: str, status: int) -> None:
    d = outbound_directory()
    rej = only(plan(phone(caller, callee), d, live(d)))
    assert isinstance(rej, Reject) and rej.status == status


# --------------------------------------------------------------------------- auto status


def auto_directory() -> Directory:
    return build(
        user_toml(
            "101",
            """
[users.schedule]
auto_status = true
""",
            status="lunch",
        )
    )


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (OFFICE, "available"),
        (BREAK, "away"),
        (EVENING, "dnd"),
        (CHRISTMAS, "dnd"),
        (dt.datetime(2026, 3, 14, 10, 30, tzinfo=TZ), "dnd"),  # Saturday
        # 14:30 UTC is 09:30 in Toronto in January (EST) ...
        (dt.datetime(2026, 1, 13, 14, 30, tzinfo=dt.UTC), "available"),
        (dt.datetime(2026, 1, 13, 13, 30, tzinfo=dt.UTC), "dnd"),
        # ... and 13:30 UTC is 09:30 in July (EDT)
        (dt.datetime(2026, 7, 14, 13, 30, tzinfo=dt.UTC), "available"),
        (dt.datetime(2026, 7, 14, 21, 30, tzinfo=dt.UTC), "dnd"),
    ],
)
def test_auto_status(at: dt.datetime, expected: Status) -> None:
    d = auto_directory()
    assert effective_status(d, "101", at) == expected
    p = plan(trunk("+15145550100", at=at), d, live(d))
    assert p.status_of_callee == expected
    assert p.statuses["101"] == expected


def test_auto_status_loses_to_live_override() -> None:
    d = auto_directory()
    assert effective_status(d, "101", EVENING, {"101": "available"}) == "available"
    assert effective_status(d, "109", EVENING) is None


def test_auto_status_user_office_hours() -> None:
    d = build(
        user_toml(
            "101",
            """
[users.schedule]
auto_status = true
office_hours = { tue = ["18:00-22:00"] }
""",
        )
    )
    assert effective_status(d, "101", EVENING) == "available"
    assert effective_status(d, "101", OFFICE) == "dnd"
    assert effective_status(d, "101", BREAK) == "away"  # department break hours still apply


def test_auto_status_dnd_outside_hours_in_spec() -> None:
    d = spec_directory()
    p = plan(trunk("+15145550101", at=EVENING), d, live(d))
    step = only(p)
    assert isinstance(step, Voicemail) and chain(step) == [("101", "do-not-disturb")]
    assert "auto_status: outside office hours" in step.reason


def test_spec_live_available_outside_hours_goes_to_voicemail() -> None:
    # the live override beats auto_status; 'available' has voicemail_outside_office_hours
    d = spec_directory()
    p = plan(trunk("+15145550101", at=EVENING), d, live(d, {"101": "available"}))
    step = only(p)
    assert isinstance(step, Voicemail) and step.box == "101"
    assert chain(step) == [("101", "time-of-day")]
    assert p.status_of_callee == "available"


def test_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        CallFacts("101", "102", "phone", dt.datetime(2026, 3, 10, 10, 30))


# --------------------------------------------------------------------------- the router


def test_router_is_cached_per_directory() -> None:
    d = outbound_directory()
    assert router_for(d) is router_for(d)
    assert isinstance(router_for(d), Router)
    other = outbound_directory()
    assert router_for(other) is not router_for(d)
    assert router_for(d).plan(phone("101", "102"), live(d)).steps == plan(
        phone("101", "102"), d, live(d)
    ).steps


def test_every_step_has_a_reason_and_forward_indexes(example: Directory) -> None:
    calls = [trunk(n.number) for n in example.numbers] + [
        phone(u.extension, v.extension) for u in example.users for v in example.users
    ]
    for call in calls:
        for status in STATUSES:
            state = live(example, {u.extension: status for u in example.users})
            p = plan(call, example, state)
            assert p.steps
            for i, step in enumerate(p.steps):
                assert step.reason.strip()
                if isinstance(step, Ring):
                    assert step.targets
                    for nxt in step.next_steps:
                        assert nxt is None or i < nxt < len(p.steps)
