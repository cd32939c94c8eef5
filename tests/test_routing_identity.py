"""What a call presents when it leaves through a trunk: caller ID, name, privacy, where
it came from and its billing group (``Plan.identity``, ``External.caller_name``),
including a phone's choice with P-Preferred-Identity (RFC 3325 s9.2).

The office is examples/directory.toml: 101 is in Sales (+15145550100 "Example
Sales", billing group sales) and may present +15145550200 (Support, "Example
Support", outbound_callers = ["101"]); 103 is in Sales too but may not.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from provisioning.directory import load_directory
from provisioning.model import Directory
from routing import CallFacts, External, LiveState, Plan, Ring, explain, plan, plan_to_json
from routing.explain import render_text

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "directory.toml"
OFFICE = dt.datetime(2026, 3, 10, 10, 30, tzinfo=ZoneInfo("America/Toronto"))


@pytest.fixture(scope="module")
def office() -> Directory:
    return load_directory(EXAMPLE)


def live(d: Directory) -> LiveState:
    return LiveState(registered=frozenset(u.extension for u in d.users))


def call(d: Directory, caller: str, dialled: str, preferred: str = "") -> Plan:
    return plan(CallFacts(caller, dialled, "phone", OFFICE, preferred_identity=preferred),
                d, live(d))


def out(p: Plan) -> External:
    step = p.steps[0]
    assert isinstance(step, Ring), p.steps
    (target,) = step.targets
    assert isinstance(target, External)
    return target


def test_the_default_identity_is_the_departments_number_with_its_name(
        office: Directory) -> None:
    p = call(office, "101", "+15145550199")
    assert out(p) == External("+15145550199", "carrier", "+15145550100", False,
                              caller_name="Example Sales")
    identity = p.identity
    assert (identity.caller_id, identity.name, identity.privacy) == (
        "+15145550100", "Example Sales", False)
    assert identity.origin == "department Sales" and identity.billing_group == "sales"
    assert identity.preferred == identity.ignored == ""


def test_a_number_without_a_name_sends_none_never_the_users_name(office: Directory) -> None:
    d = dataclasses.replace(office, numbers=tuple(
        dataclasses.replace(n, caller_id_name="") for n in office.numbers))
    p = call(d, "101", "+15145550199")
    assert out(p).caller_name == "" and p.identity.name == ""
    assert "Alice" not in json.dumps(plan_to_json(p)["identity"])


def test_preferred_identity_honoured_for_an_outbound_caller(office: Directory) -> None:
    for form in ("+15145550200", "15145550200", "5145550200", "tel:+15145550200",
                 "sip:+15145550200@pbx.example.test;user=phone"):
        p = call(office, "101", "+15145550199", form)
        target = out(p)
        assert (target.caller_id, target.caller_name) == ("+15145550200", "Example Support")
        assert p.identity.origin == (
            "P-Preferred-Identity: 101 is in the outbound_callers of +15145550200")
        assert p.identity.billing_group == "support" and p.identity.ignored == ""
        assert p.identity.preferred == form


@pytest.mark.parametrize(
    ("caller", "preferred", "why"),
    [
        ("103", "+15145550200", "103 is not in the outbound_callers of +15145550200"),
        ("101", "+15145550999", "+15145550999 is not one of our numbers"),
        ("101", "+18005550100", "+18005550100 is toll_free: never an outbound caller ID"),
    ],
)
def test_preferred_identity_ignored_otherwise(office: Directory, caller: str, preferred: str,
                                               why: str) -> None:
    p = call(office, caller, "+15145550199", preferred)
    assert out(p).caller_id == "+15145550100"  # the default applies
    assert p.identity.origin == "department Sales"
    assert (p.identity.preferred, p.identity.ignored) == (preferred, why)
    step = p.steps[0]
    assert f"P-Preferred-Identity {preferred} ignored: {why}" in step.reason


def test_preferred_identity_naming_the_default_is_no_change(office: Directory) -> None:
    p = call(office, "103", "+15145550199", "15145550100")
    assert out(p).caller_id == "+15145550100" and p.identity.ignored == ""


def test_star82_withholds_the_chosen_number(office: Directory) -> None:
    p = call(office, "101", "*82+15145550199", "+15145550200")
    target = out(p)
    assert target.caller_id == "+15145550200" and target.privacy
    assert p.identity.privacy and p.identity.billing_group == "support"


def test_emergency_keeps_the_department_number_and_name(office: Directory) -> None:
    p = call(office, "101", "911", "+15145550200")
    target = out(p)
    assert (target.caller_id, target.caller_name, target.privacy) == (
        "+15145550100", "Example Sales", False)
    assert p.identity.origin == "emergency: department Sales"
    assert p.identity.ignored == "emergency calls present the department's number"
    p = call(office, "101", "*82911")  # never private either
    assert not out(p).privacy and not p.identity.privacy


def test_a_forward_to_a_mobile_presents_the_callers_number_and_its_name(
        office: Directory) -> None:
    # 101 is away: its mobile rings with the desk (ring_mobile_simultaneously); an
    # internal caller (103) presents its own number, named, on that leg.
    state = dataclasses.replace(live(office), statuses={"101": "away"})
    p = plan(CallFacts("103", "101", "phone", OFFICE), office, state)
    step = p.steps[0]
    assert isinstance(step, Ring)
    mobile = next(t for t in step.targets if isinstance(t, External))
    assert (mobile.caller_id, mobile.caller_name) == ("+15145550100", "Example Sales")


def test_a_trunk_call_presents_its_caller_and_counts_under_its_did(office: Directory) -> None:
    # +15145550200 is Support's line (billing group support), sent as national digits
    facts = CallFacts("+15145550199", "5145550200", "trunk", OFFICE, trunk="carrier",
                      caller_name="A Customer")
    p = plan(facts, office, live(office))
    assert p.identity.caller_id == "+15145550199" and p.identity.name == "A Customer"
    assert p.identity.origin == "the trunk caller" and p.identity.billing_group == "support"


def test_route_explain_shows_the_identity_and_a_phones_choice(office: Directory) -> None:
    p = explain(office, "101", "+15145550199", OFFICE, preferred_identity="+15145550200")
    doc = plan_to_json(p)
    assert doc["call"]["preferred_identity"] == "+15145550200"
    assert doc["identity"] == {
        "caller_id": "+15145550200",
        "name": "Example Support",
        "privacy": False,
        "origin": "P-Preferred-Identity: 101 is in the outbound_callers of +15145550200",
        "preferred": "+15145550200",
        "preferred_ignored": None,
        "billing_group": "support",
    }
    assert doc["steps"][0]["targets"][0]["caller_name"] == "Example Support"
    text = render_text(explain(office, "103", "*82+15145550199", OFFICE,
                               preferred_identity="+15145550200"))
    assert text.splitlines()[1] == (
        'identity: +15145550100 "Example Sales", private (caller ID withheld) '
        "(department Sales); billing group sales; P-Preferred-Identity +15145550200 "
        "ignored: 103 is not in the outbound_callers of +15145550200")
