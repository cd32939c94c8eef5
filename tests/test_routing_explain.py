"""Tests for routing.explain: plan_to_json, render_text and the what-if explain()."""

from __future__ import annotations

import datetime as dt
import json
import tomllib
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from provisioning.directory import load_directory, parse_directory
from provisioning.model import Directory
from routing import (
    Busy,
    Deflect,
    Device,
    MailboxAccess,
    Reject,
    Ring,
    Voicemail,
    explain,
    plan_to_json,
    render_text,
)

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT.parent / "shared" / "spec" / "directory.toml"
EXAMPLE = ROOT / "examples" / "directory.toml"
OFFICE = dt.datetime(2026, 3, 10, 10, 30, tzinfo=ZoneInfo("America/Toronto"))
EVENING = dt.datetime(2026, 3, 10, 20, 0, tzinfo=ZoneInfo("America/Toronto"))


@pytest.fixture(scope="module")
def spec() -> Directory:
    with SPEC.open("rb") as f:
        return parse_directory(tomllib.load(f), str(SPEC))


@pytest.fixture(scope="module")
def example() -> Directory:
    return load_directory(EXAMPLE)


def test_render_text_away(spec: Directory) -> None:
    p = explain(spec, "+15145550199", "101", OFFICE, status="away")
    text = render_text(p)
    lines = text.splitlines()
    assert lines[0] == (
        "call +15145550199 -> 101 (trunk carrier) at 2026-03-10T10:30:00-04:00; 101 is away"
    )
    # what the call presents on the mobile leg: the trunk caller's number, no name
    assert lines[1] == "identity: +15145550199 (no name) (the trunk caller)"
    assert lines[2].startswith(
        "1. ring 101 (desk phones) + +15145550111 (mobile via carrier, caller ID +15145550199) "
        "for 15 s  — "
    )
    assert "101 is away (set live): ring desk phones + mobile (ring_mobile_simultaneously)" in (
        lines[2]
    )
    assert lines[3] == "   no answer -> 2, busy -> 3, failed -> 3"
    assert lines[4].startswith("2. voicemail of 101 (greeting default)  — ")
    assert lines[5] == "   diverted by 101 (no-answer)"
    assert lines[6].startswith("3. voicemail of 101")
    assert lines[7] == "   diverted by 101 (user-busy)"
    assert len(lines) == 8


def test_render_text_every_step_kind(spec: Directory, example: Directory) -> None:
    deflect = explain(spec, "+15145550199", "101", OFFICE, status="business_trip")
    assert isinstance(deflect.steps[0], Deflect)
    assert render_text(deflect).splitlines()[2].startswith(
        "1. deflect (302) to +15145550199 through carrier  — "
    )
    text = render_text(explain(example, "101", "999", OFFICE))
    assert "1. mailbox of 101  — 101 dialled 999" in text
    text = render_text(explain(example, "101", "abc", OFFICE))
    assert "1. reject 404 Not Found  — " in text
    outbound = render_text(explain(example, "101", "+15145550199", OFFICE))
    assert ('1. ring +15145550199 (external via carrier, caller ID +15145550100 "Example Sales")'
            " with no timer") in outbound
    assert 'identity: +15145550100 "Example Sales" (department Sales); billing group sales' in (
        outbound
    )
    assert "   no answer -> end (480), busy -> end (486), failed -> end (480/503)" in outbound
    d = parse_directory(
        {
            "system": {"domain": "pbx.test"},
            "departments": [{"name": "D", "caller_id": "+15145550100"}],
            "numbers": [{"number": "+15145550100", "route_to": "busy"}],
        }
    )
    p = explain(d, "+15145550199", "+15145550100", OFFICE)
    assert isinstance(p.steps[0], Busy)
    assert "1. busy (486)  — " in render_text(p)


def test_explain_shows_a_confirmed_mobile() -> None:
    d = parse_directory(
        {
            "system": {"domain": "pbx.test"},
            "trunks": [{"name": "carrier", "host": "127.0.0.9"}],
            "departments": [{"name": "D", "caller_id": "+15145550100"}],
            "numbers": [{"number": "+15145550100", "route_to": "extension:101"}],
            "users": [{"extension": "101", "name": "A", "password": "pw", "department": "D",
                       "mobile": "+15145550111", "confirm_external_answer": True,
                       "forwarding": {"available": {"ring_mobile_simultaneously": True}}}],
        }
    )
    p = explain(d, "+15145550199", "+15145550100", OFFICE)
    text = render_text(p)
    assert "+15145550111 (mobile via carrier, caller ID +15145550199, confirm: press 1 to " \
           "take the call)" in text
    mobile = plan_to_json(p)["steps"][0]["targets"][1]
    assert mobile["confirm"] is True and mobile["mobile_of"] == "101"


def test_plan_to_json(spec: Directory) -> None:
    p = explain(spec, "+15145550199", "101", OFFICE, status="away")
    doc = plan_to_json(p)
    assert json.loads(json.dumps(doc)) == doc
    assert doc["call"] == {
        "caller": "+15145550199",
        "callee": "101",
        "source": "trunk",
        "at": "2026-03-10T10:30:00-04:00",
        "trunk": "carrier",
        "caller_name": "",
        "preferred_identity": None,
    }
    assert doc["identity"] == {
        "caller_id": "+15145550199",
        "name": "",
        "privacy": False,
        "origin": "the trunk caller",
        "preferred": None,
        "preferred_ignored": None,
        "billing_group": None,
    }
    assert doc["effective_status"] == "away"
    assert doc["callee_extension"] == "101"
    assert doc["statuses"] == {"101": "away"}
    first = doc["steps"][0]
    assert first["index"] == 0 and first["type"] == "ring" and first["seconds"] == 15
    assert first["targets"] == [
        {"type": "device", "extension": "101"},
        {
            "type": "external",
            "number": "+15145550111",
            "trunk": "carrier",
            "caller_id": "+15145550199",
            "privacy": False,
            "rebound": False,
            "mobile_of": "101",
            "confirm": False,
            "caller_name": "",
        },
    ]
    assert first["next"] == {"no_answer": 1, "busy": 2, "failed": 2}
    assert first["diversion"] == []
    assert first["reason"]
    assert doc["steps"][1] == {
        "index": 1,
        "type": "voicemail",
        "box": "101",
        "greeting": "default",
        "reason": p.steps[1].reason,
        "diversion": [{"extension": "101", "reason": "no-answer"}],
    }


def test_plan_to_json_terminal_kinds(spec: Directory, example: Directory) -> None:
    doc = plan_to_json(explain(spec, "+15145550199", "101", OFFICE, status="business_trip"))
    assert doc["steps"][0]["type"] == "deflect"
    assert doc["steps"][0]["diversion"] == [{"extension": "101", "reason": "unconditional"}]
    doc = plan_to_json(explain(example, "102", "999", OFFICE))
    assert doc["steps"] == [
        {"index": 0, "type": "mailbox_access", "box": "102", "reason": doc["steps"][0]["reason"]}
    ]
    doc = plan_to_json(explain(example, "101", "203", OFFICE))
    assert doc["steps"][0]["type"] == "reject" and doc["steps"][0]["status"] == 480
    assert doc["effective_status"] is not None  # 203 is a user, even though disabled


def test_explain_phone_caller(example: Directory) -> None:
    p = explain(example, "102", "101", OFFICE)
    assert p.call.source == "phone" and p.call.trunk == ""
    assert p.status_of_callee == "available"  # 101 has auto_status, in office hours


def test_explain_external_caller_uses_first_trunk(example: Directory) -> None:
    p = explain(example, "+15145550199", "+15145550100", OFFICE)
    assert p.call.source == "trunk" and p.call.trunk == "carrier"
    first = p.steps[0]
    assert isinstance(first, Ring) and len(first.targets) == 3


def test_explain_status_forces_callee(example: Directory) -> None:
    p = explain(example, "102", "101", OFFICE, status="dnd")
    assert p.status_of_callee == "dnd"
    assert isinstance(p.steps[0], Voicemail)
    # through a DID routing to a user: the status applies to that user
    p = explain(example, "+15145550199", "+15145550200", OFFICE, status="dnd")
    assert p.callee_extension == "201" and p.status_of_callee == "dnd"


def test_explain_registered(example: Directory) -> None:
    p = explain(example, "102", "101", OFFICE)
    assert isinstance(p.steps[0], Ring)  # every user assumed registered
    p = explain(example, "102", "101", OFFICE, registered=frozenset())
    step = p.steps[0]
    assert isinstance(step, Voicemail) and step.diversion[0].reason == "unavailable"


def test_explain_external_caller_to_extension_or_group(example: Directory) -> None:
    p = explain(example, "+15145550199", "201", EVENING)
    first = p.steps[0]
    assert isinstance(first, Ring) and first.targets == (Device("201"),)
    assert "what-if" in first.reason
    p = explain(example, "+15145550199", "800", OFFICE)
    assert isinstance(p.steps[0], Ring) and "ring group sales" in p.steps[0].reason
    p = explain(example, "+15145550199", "555", OFFICE)
    assert isinstance(p.steps[0], Reject) and p.steps[0].status == 404


def test_explain_naive_time_is_utc(example: Directory) -> None:
    p = explain(example, "102", "101", dt.datetime(2026, 3, 10, 14, 30))
    assert p.call.at.tzinfo is not None
    assert p.status_of_callee == "available"  # 10:30 in Toronto


def test_explain_mailbox(example: Directory) -> None:
    assert isinstance(explain(example, "101", "999", OFFICE).steps[0], MailboxAccess)
