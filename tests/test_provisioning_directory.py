"""Tests for provisioning.directory: loading, validation and error messages."""

from __future__ import annotations

import copy
import datetime as dt
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provisioning.directory import (
    DirectoryError,
    ParseMemo,
    directory_to_dict,
    load_directory,
    parse_directory,
)
from provisioning.model import (
    STATUSES,
    Destination,
    DestinationError,
    Directory,
    TimeRange,
    parse_destination,
)

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT.parent / "shared" / "spec" / "directory.toml"
EXAMPLE = ROOT / "examples" / "directory.toml"
SOURCE = "directory.toml"


def example_data() -> dict[str, Any]:
    with EXAMPLE.open("rb") as f:
        return tomllib.load(f)


EXAMPLE_DATA = example_data()


@pytest.fixture
def data() -> dict[str, Any]:
    return copy.deepcopy(EXAMPLE_DATA)


def errors_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(DirectoryError) as info:
        parse_directory(data, SOURCE)
    assert info.value.errors, "a DirectoryError must carry at least one error"
    return info.value.errors


def assert_error(errors: list[str], path: str, fragment: str) -> None:
    prefix = f"{SOURCE}: {path}: "
    matching = [e for e in errors if e.startswith(prefix) and fragment in e]
    assert matching, f"no error '{prefix}...{fragment}...' in:\n" + "\n".join(errors)


# --------------------------------------------------------------------------- valid files


@pytest.mark.parametrize("path", [SPEC, EXAMPLE], ids=["spec", "example"])
def test_reference_files_load_and_round_trip(path: Path) -> None:
    directory = load_directory(path)
    assert directory.users and directory.departments and directory.trunks
    again = parse_directory(directory_to_dict(directory), "round-trip")
    assert again == directory


def test_spec_values_are_read() -> None:
    d = load_directory(SPEC)
    assert d.system.domain == "pbx.example.test"
    assert d.system.outbound_pin_prefix == "777"
    assert (d.system.rtp_port_min, d.system.rtp_port_max) == (20000, 29999)
    assert d.trunks[0].inbound_from == ("127.0.0.1/32",)
    assert d.trunks[0].supports_302 is True
    sales = d.department("Sales")
    assert sales is not None and sales.office_hours is not None
    assert sales.office_hours.mon == (TimeRange(9 * 60, 17 * 60),)
    assert sales.office_hours.fri == (TimeRange(9 * 60, 16 * 60),)
    assert sales.break_hours.mon == (TimeRange(12 * 60, 13 * 60),)
    assert sales.holidays == (dt.date(2026, 12, 25), dt.date(2027, 1, 1))
    alice = d.user("101")
    assert alice is not None
    assert alice.rules("away").no_answer.external == Destination("mobile", rebound=True)
    assert alice.rules("away").ring_mobile_simultaneously is True
    trip = alice.rules("business_trip").no_answer.external
    assert trip == Destination("external", "+15145550199", deflect_302=True)
    assert alice.rules("available").busy.for_caller(external=False) == Destination("voicemail")
    assert alice.rules("lunch").no_answer.external == Destination("extension", "102")
    assert alice.schedule.auto_status is True and alice.schedule.office_hours is None
    assert d.office_hours_for(alice) == sales.office_hours
    group = d.ring_group("sales")
    assert group is not None and d.ring_groups_by_extension["800"] is group
    assert group.no_answer == Destination("voicemail", "101")


def test_confirm_external_answer_is_read_defaults_off_and_round_trips(
        data: dict[str, Any]) -> None:
    data["users"][0]["confirm_external_answer"] = True
    d = parse_directory(data, "confirm.toml")
    assert d.users[0].confirm_external_answer is True
    assert d.users[1].confirm_external_answer is False  # the key is optional, off
    written = directory_to_dict(d)
    assert [u["confirm_external_answer"] for u in written["users"][:2]] == [True, False]
    assert parse_directory(written, "round-trip") == d


def test_status_without_table_follows_product_defaults() -> None:
    bruno = load_directory(SPEC).user("102")
    assert bruno is not None
    for status in STATUSES:
        rules = bruno.rules(status)
        assert rules.no_answer_seconds == 20
        for targets in (rules.no_answer, rules.busy):
            assert targets.external == Destination("voicemail")
            assert targets.internal == Destination("voicemail")
        assert rules.voicemail_outside_office_hours is False
    assert bruno.schedule.auto_status is False
    assert bruno.schedule.block_outbound_outside_hours is False
    assert bruno.voicemail.language == "fr"  # the department's language


def test_user_without_voicemail_defaults_to_busy() -> None:
    d = load_directory(EXAMPLE)
    former = d.user("203")
    assert former is not None and former.disabled and not former.voicemail.enabled
    assert former.rules("available").no_answer.external == Destination("busy")


def test_partial_rule_table_keeps_defaults_for_the_rest(data: dict[str, Any]) -> None:
    data["users"][2]["forwarding"]["lunch"] = {"no_answer": {"external": "extension:101"}}
    user = parse_directory(data, SOURCE).user("103")
    assert user is not None
    lunch = user.rules("lunch")
    assert lunch.no_answer.external == Destination("extension", "101")
    assert lunch.no_answer.internal == Destination("voicemail")
    assert lunch.busy.external == Destination("voicemail")
    assert lunch.no_answer_seconds == 20


def test_toml_dates_and_strings_are_both_accepted(data: dict[str, Any]) -> None:
    data["departments"][0]["holidays"] = [dt.date(2026, 12, 25), "2027-01-01"]
    sales = parse_directory(data, SOURCE).department("Sales")
    assert sales is not None
    assert sales.holidays == (dt.date(2026, 12, 25), dt.date(2027, 1, 1))


# --------------------------------------------------------------------------- destinations


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("voicemail", Destination("voicemail")),
        ("voicemail:102", Destination("voicemail", "102")),
        ("extension:102", Destination("extension", "102")),
        ("mobile", Destination("mobile")),
        ("external:+15145550199", Destination("external", "+15145550199")),
        ("ring_group:sales", Destination("ring_group", "sales")),
        ("queue:support", Destination("queue", "support")),
        ("ivr:main", Destination("ivr", "main")),
        ("busy", Destination("busy")),
        ("same_as_external", Destination("same_as_external")),
        ({"to": "mobile", "rebound": True}, Destination("mobile", rebound=True)),
        (
            {"to": "external:+15145550199", "deflect_302": True},
            Destination("external", "+15145550199", deflect_302=True),
        ),
    ],
)
def test_parse_destination(value: object, expected: Destination) -> None:
    parsed = parse_destination(value)
    assert parsed == expected
    assert parse_destination(parsed.to_value()) == parsed


@pytest.mark.parametrize(
    ("value", "key", "fragment"),
    [
        ("voicemal", "", "unknown destination"),
        ("extension:", "", "needs a target"),
        ("extension:abc", "", "digits only"),
        ("busy:now", "", "takes no target"),
        ("external:call-me", "", "not a phone number"),
        ({"to": "voicemail", "rebound": True}, "rebound", "only to 'mobile' and 'external:'"),
        ({"to": "mobile", "rebound": True, "deflect_302": True}, "", "cannot both be true"),
        ({"to": "mobile", "rebound": "yes"}, "rebound", "true or false"),
        ({"rebound": True}, "to", "missing"),
        ({"to": "mobile", "bounce": True}, "bounce", "unknown key"),
        (42, "", "destination string"),
    ],
)
def test_parse_destination_errors(value: object, key: str, fragment: str) -> None:
    with pytest.raises(DestinationError) as info:
        parse_destination(value)
    assert info.value.key == key
    assert fragment in info.value.message


# --------------------------------------------------------------------------- error classes

Mutation = Callable[[dict[str, Any]], None]


def _set(*path: str | int, value: object) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        node: Any = data
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = value

    return mutate


def _delete(*path: str | int) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        node: Any = data
        for step in path[:-1]:
            node = node[step]
        del node[path[-1]]

    return mutate


def _append(table: str, row: dict[str, Any]) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        data[table].append(row)

    return mutate


def _copy_row(table: str, index: int, **changes: object) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        row = copy.deepcopy(data[table][index])
        row.update(changes)
        data[table].append(row)

    return mutate


ERROR_CASES: list[tuple[str, Mutation, str, str]] = [
    # types
    ("int-as-string", _set("system", "extension_digits", value="3"),
     "system.extension_digits", "must be an integer, not a string"),
    ("bool-as-int", _set("ring_groups", 0, "ring_seconds", value=True),
     "ring_groups[0].ring_seconds", "must be an integer, not a boolean"),
    ("string-as-bool", _set("users", 0, "disabled", value="no"),
     "users[0].disabled", "must be true or false, not a string"),
    ("table-as-string", _set("users", 0, "voicemail", value="on"),
     "users[0].voicemail", "must be a table"),
    ("array-as-table", _set("users", value={"extension": "101"}),
     "users", "must be an array of tables"),
    ("float-as-int", _set("trunks", 0, "port", value=5090.0),
     "trunks[0].port", "must be an integer, not a float"),
    # enums
    ("status", _set("users", 0, "status", value="vacation"), "users[0].status", "'vacation'"),
    ("role", _set("users", 0, "role", value="admin"), "users[0].role", "not one of: user"),
    ("strategy", _set("ring_groups", 0, "strategy", value="random"),
     "ring_groups[0].strategy", "ring_all, hunt"),
    ("number-type", _set("numbers", 0, "type", value="local"), "numbers[0].type", "toll_free"),
    ("transport", _set("trunks", 0, "transport", value="sctp"), "trunks[0].transport", "udp"),
    ("record-calls", _set("users", 0, "record_calls", value="some"),
     "users[0].record_calls", "off, external, all"),
    ("confirm-answer", _set("users", 1, "confirm_external_answer", value="yes"),
     "users[1].confirm_external_answer", "must be true or false, not a string"),
    ("vm-email", _set("users", 0, "voicemail", "email", value="always"),
     "users[0].voicemail.email", "attach_and_delete"),
    ("vm-datetime", _set("users", 0, "voicemail", "read_datetime", value="12h"),
     "users[0].voicemail.read_datetime", "none, ampm, 24h"),
    ("vm-language", _set("users", 0, "voicemail", "language", value="de"),
     "users[0].voicemail.language", "fr, en"),
    ("codec", _set("users", 0, "codecs", value=["G722", "AMR"]),
     "users[0].codecs[1]", "unknown codec 'AMR'"),
    # extension format
    ("ext-letters", _set("users", 0, "extension", value="1a1"),
     "users[0].extension", "digits only"),
    ("ext-length", _set("users", 0, "extension", value="1011"),
     "users[0].extension", "must have 3 digits"),
    ("group-ext-length", _set("ring_groups", 0, "extension", value="80"),
     "ring_groups[0].extension", "must have 3 digits"),
    ("ext-reserved", _set("users", 5, "extension", value="999"),
     "users[5].extension", "reserved (system.voicemail_number)"),
    ("ext-emergency", _set("users", 5, "extension", value="911"),
     "users[5].extension", "reserved (system.emergency_numbers)"),
    # uniqueness
    ("dup-user-ext", _set("users", 1, "extension", value="101"),
     "users[1].extension", "'101' is already used by users[0]"),
    ("dup-user-group-ext", _set("ring_groups", 0, "extension", value="201"),
     "users[3].extension", "'201' is already used by ring_groups[0]"),
    ("dup-trunk", _copy_row("trunks", 0, inbound_from=[]),
     "trunks[1].name", "'carrier' is already used by trunks[0]"),
    ("dup-department", _copy_row("departments", 0),
     "departments[2].name", "'Sales' is already used by departments[0]"),
    ("dup-ring-group", _copy_row("ring_groups", 0, extension="801"),
     "ring_groups[1].name", "'sales' is already used by ring_groups[0]"),
    ("dup-number", _copy_row("numbers", 0),
     "numbers[3].number", "already used by numbers[0]"),
    ("overlapping-trunk-sources",
     _copy_row("trunks", 0, name="other", inbound_from=["127.0.0.0/8"]),
     "trunks[1].inbound_from[0]", "overlaps a source of trunk 'carrier'"),
    # references
    ("unknown-department", _set("users", 0, "department", value="Sale"),
     "users[0].department", "unknown department 'Sale' (did you mean 'Sales'?)"),
    ("unknown-member", _set("ring_groups", 0, "members", value=["101", "109"]),
     "ring_groups[0].members[1]", "unknown extension '109'"),
    ("group-as-member", _set("ring_groups", 0, "members", value=["800"]),
     "ring_groups[0].members[0]", "members are users"),
    ("unknown-extension-target",
     _set("users", 0, "forwarding", "away", "no_answer", "external", value="extension:109"),
     "users[0].forwarding.away.no_answer.external", "unknown extension '109'"),
    ("unknown-voicemail-target", _set("ring_groups", 0, "no_answer", value="voicemail:109"),
     "ring_groups[0].no_answer", "unknown extension '109'"),
    ("disabled-voicemail-target", _set("numbers", 1, "route_to", value="voicemail:203"),
     "numbers[1].route_to", "voicemail of 203 is disabled"),
    ("unknown-ring-group", _set("numbers", 0, "route_to", value="ring_group:sale"),
     "numbers[0].route_to", "unknown ring group 'sale'"),
    ("extension-is-group", _set("numbers", 0, "route_to", value="extension:800"),
     "numbers[0].route_to", "use 'ring_group:sales'"),
    ("mobile-without-mobile",
     _set("users", 2, "forwarding", "lunch", "no_answer", "external", value="mobile"),
     "users[2].forwarding.lunch.no_answer.external", "no mobile number"),
    ("ring-mobile-without-mobile",
     _set("users", 2, "forwarding", "lunch", "ring_mobile_simultaneously", value=True),
     "users[2].forwarding.lunch.ring_mobile_simultaneously", "no mobile number"),
    ("bad-external", _set("users", 0, "forwarding", "away", "busy",
                          value={"external": "external:5551234x", "internal": "voicemail"}),
     "users[0].forwarding.away.busy.external", "not a phone number"),
    ("same-as-external-for-external",
     _set("users", 0, "forwarding", "available", "busy", "external", value="same_as_external"),
     "users[0].forwarding.available.busy.external", "only valid for internal callers"),
    ("own-voicemail-on-number", _set("numbers", 0, "route_to", value="voicemail"),
     "numbers[0].route_to", "needs a user"),
    ("forward-to-self",
     _set("users", 0, "forwarding", "available", "no_answer", "external", value="extension:101"),
     "users[0].forwarding.available.no_answer.external", "to themselves"),
    ("rebound-on-voicemail", _set("users", 0, "forwarding", "away", "no_answer", "external",
                                  value={"to": "voicemail", "rebound": True}),
     "users[0].forwarding.away.no_answer.external.rebound", "only to 'mobile'"),
    ("vm-email-without-email", _delete("users", 3, "email"),
     "users[3].voicemail.email", "needs the user's email"),
    ("pin-required-without-pin", _delete("users", 1, "voicemail_pin"),
     "users[1].outbound_pin_required", "needs a voicemail_pin"),
    ("auto-status-without-hours", _delete("departments", 0, "office_hours"),
     "users[0].schedule.auto_status", "needs office hours"),
    # hours, dates, zones, networks, ports
    ("hours-format", _set("departments", 0, "office_hours", "mon", value=["9-17"]),
     "departments[0].office_hours.mon[0]", 'is not "HH:MM-HH:MM"'),
    ("hours-order", _set("departments", 0, "office_hours", "tue", value=["17:00-09:00"]),
     "departments[0].office_hours.tue[0]", "start must be before the end"),
    ("hours-overlap", _set("departments", 1, "office_hours", "sat",
                           value=["10:00-14:00", "13:00-15:00"]),
     "departments[1].office_hours.sat[1]", "overlaps '10:00-14:00'"),
    ("hours-weekday", _set("departments", 0, "office_hours", "monday", value=["09:00-17:00"]),
     "departments[0].office_hours.monday", "unknown key (did you mean 'mon'?)"),
    ("user-hours", _set("users", 3, "schedule", "office_hours", value="always"),
     "users[3].schedule.office_hours", 'must be "department" or a table'),
    ("holiday-invalid", _set("departments", 0, "holidays", value=["2026-13-01"]),
     "departments[0].holidays[0]", "not an ISO date"),
    ("holiday-format", _set("departments", 0, "holidays", value=["25/12/2026"]),
     "departments[0].holidays[0]", "not an ISO date"),
    ("timezone", _set("departments", 0, "timezone", value="America/Montreal_"),
     "departments[0].timezone", "unknown time zone"),
    ("cidr-prefix", _set("trunks", 0, "inbound_from", value=["127.0.0.1/33"]),
     "trunks[0].inbound_from[0]", "not a valid CIDR"),
    ("cidr-host-bits", _set("trunks", 0, "inbound_from", value=["10.0.0.1/8"]),
     "trunks[0].inbound_from[0]", "has host bits set"),
    ("rtp-format", _set("system", "rtp_ports", value="20000:29999"),
     "system.rtp_ports", "not a port range"),
    ("rtp-order", _set("system", "rtp_ports", value="30000-20000"),
     "system.rtp_ports", "first < last"),
    ("expires-order", _set("system", "min_register_expires", value=7200),
     "system.min_register_expires", "above max_register_expires (3600)"),
    # unknown keys
    ("unknown-top-level", _set("sytem", value={}), "sytem", "unknown key (did you mean 'system'?)"),
    ("unknown-system-key", _set("system", "domian", value="x"),
     "system.domian", "did you mean 'domain'?"),
    ("unknown-user-key", _set("users", 0, "pasword", value="x"),
     "users[0].pasword", "did you mean 'password'?"),
    ("unknown-status", _set("users", 0, "forwarding", "vacation", value={}),
     "users[0].forwarding.vacation", "unknown key"),
    ("unknown-rule-key", _set("users", 0, "forwarding", "away", "no_anwser_seconds", value=3),
     "users[0].forwarding.away.no_anwser_seconds", "did you mean 'no_answer_seconds'?"),
    ("unknown-target-key", _set("users", 0, "forwarding", "away", "no_answer", "externel",
                                value="voicemail"),
     "users[0].forwarding.away.no_answer.externel", "did you mean 'external'?"),
    ("unknown-smtp-key", _set("system", "smtp", "user", value="x"), "system.smtp.user",
     "unknown key"),
    # ranges and required values
    ("negative-seconds", _set("users", 0, "forwarding", "away", "no_answer_seconds", value=-1),
     "users[0].forwarding.away.no_answer_seconds", "must be at least 0"),
    ("vm-max-seconds", _set("users", 0, "voicemail", "max_seconds", value=0),
     "users[0].voicemail.max_seconds", "must be at least 1"),
    ("empty-password", _set("users", 1, "password", value=""),
     "users[1].password", "must not be empty"),
    ("missing-password", _delete("users", 1, "password"), "users[1].password", "missing"),
    ("missing-domain", _delete("system", "domain"), "system.domain", "missing (required)"),
    ("missing-system", _delete("system"), "system", "missing"),
    ("missing-route", _delete("numbers", 0, "route_to"), "numbers[0].route_to", "missing"),
    ("bad-caller-id", _set("departments", 0, "caller_id", value="514-555-0100"),
     "departments[0].caller_id", "not a phone number"),
    ("bad-mobile", _set("users", 0, "mobile", value="cell"), "users[0].mobile", "phone number"),
    ("bad-email", _set("users", 0, "email", value="alice"), "users[0].email", "email address"),
    ("bad-pin", _set("users", 0, "voicemail_pin", value="12"), "users[0].voicemail_pin", "4 to 12"),
    ("bad-greeting", _set("users", 0, "forwarding", "away", "greeting", value="hello.mp3"),
     "users[0].forwarding.away.greeting", ".wav"),
    ("registering-trunk-without-credentials", _set("trunks", 0, "register", value=True),
     "trunks[0].username", "missing"),
    ("empty-ring-group", _set("ring_groups", 0, "members", value=[]),
     "ring_groups[0].members", "at least one"),
    # the number contract: caller IDs are presentable numbers of the system
    ("caller-id-not-a-number", _set("departments", 0, "caller_id", value="+15145550999"),
     "departments[0].caller_id", "'+15145550999' is not one of [[numbers]]"),
    ("outbound-caller-id-not-a-number", _set("users", 2, "outbound_caller_id",
                                             value="+15145550999"),
     "users[2].outbound_caller_id", "is not one of [[numbers]]"),
    ("outbound-caller-id-toll-free", _set("users", 2, "outbound_caller_id",
                                          value="+18005550100"),
     "users[2].outbound_caller_id",
     "is numbers[2], type = \"toll_free\": it cannot be presented"),
    ("caller-id-inbound-only", _set("numbers", 1, "type", value="inbound_only"),
     "departments[1].caller_id", 'type = "inbound_only": it cannot be presented'),
    ("outbound-callers-on-toll-free", _set("numbers", 2, "outbound_callers", value=["101"]),
     "numbers[2].outbound_callers", "a toll_free number cannot be presented"),
    ("outbound-callers-unknown", _set("numbers", 1, "outbound_callers", value=["101", "109"]),
     "numbers[1].outbound_callers[1]", "unknown extension '109'"),
    ("outbound-callers-group", _set("numbers", 1, "outbound_callers", value=["800"]),
     "numbers[1].outbound_callers[0]", "is ring group 'sales'"),
    ("outbound-callers-twice", _set("numbers", 1, "outbound_callers", value=["101", "101"]),
     "numbers[1].outbound_callers[1]", "listed twice"),
    ("outbound-callers-not-digits", _set("numbers", 1, "outbound_callers", value=["alice"]),
     "numbers[1].outbound_callers[0]", "not an extension"),
    ("same-number-digits", _append("numbers", {"number": "15145550100", "route_to": "busy"}),
     "numbers[3].number", "the same number as '+15145550100' of numbers[0]"),
    ("same-number-national", _append("numbers", {"number": "5145550200", "route_to": "busy"}),
     "numbers[3].number", "the same number as '+15145550200' of numbers[1]"),
    ("caller-id-name-quote", _set("numbers", 0, "caller_id_name", value='Say "hi"'),
     "numbers[0].caller_id_name", "is not a display name"),
    ("caller-id-name-type", _set("numbers", 0, "caller_id_name", value=7),
     "numbers[0].caller_id_name", "must be a string"),
    ("billing-group-type", _set("numbers", 0, "billing_group", value=["a"]),
     "numbers[0].billing_group", "must be a string"),
    ("billing-group-long", _set("numbers", 0, "billing_group", value="x" * 65),
     "numbers[0].billing_group", "at most 64 characters"),
]


@pytest.mark.parametrize(
    ("mutate", "path", "fragment"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
def test_each_error_names_file_table_and_key(
    data: dict[str, Any], mutate: Mutation, path: str, fragment: str
) -> None:
    parse_directory(data, SOURCE)  # the base is valid
    mutate(data)
    assert_error(errors_of(data), path, fragment)


@pytest.mark.parametrize(
    "mutate", [case[1] for case in ERROR_CASES], ids=[case[0] for case in ERROR_CASES])
def test_a_memo_changes_no_error(data: dict[str, Any], mutate: Mutation) -> None:
    """The memo of an earlier parse (rows changed in place after it, as here) gives the
    same errors, in the same order, as a parse without it."""
    memo = ParseMemo()
    parse_directory(data, SOURCE, memo)
    assert memo.users  # the valid users were kept
    mutate(data)
    with pytest.raises(DirectoryError) as plain:
        parse_directory(copy.deepcopy(data), SOURCE)
    with pytest.raises(DirectoryError) as memoised:
        parse_directory(data, SOURCE, memo)
    assert memoised.value.errors == plain.value.errors
    assert memoised.value.fields == plain.value.fields


def test_a_memo_reads_only_changed_users_and_gives_the_same_directory(
        data: dict[str, Any]) -> None:
    memo = ParseMemo()
    first = parse_directory(data, SOURCE, memo)
    assert memo.hits == 0
    users = len(data["users"])
    data["users"][0] = {**data["users"][0], "name": "Renamed"}
    second = parse_directory(data, SOURCE, memo)
    assert memo.hits == users - 1
    assert second == parse_directory(copy.deepcopy(data), SOURCE)
    assert second.users[0].name == "Renamed" and second.users[1] is first.users[1]
    # a department's change reads its users again (their language and hours follow it)
    dept = data["users"][1]["department"]
    data["departments"] = [{**d, "holidays": ["2027-07-01"]} if d["name"] == dept else d
                           for d in data["departments"]]
    hits = memo.hits
    third = parse_directory(data, SOURCE, memo)
    assert third == parse_directory(copy.deepcopy(data), SOURCE)
    same_dept = sum(u.get("department") == dept for u in data["users"])
    assert memo.hits - hits == users - same_dept


def test_a_memoised_user_still_sees_what_it_names_go_away(data: dict[str, Any]) -> None:
    """A user's forward to an IVR, a queue, a ring group or another user's mailbox is
    checked against the other rows on every parse, memo or not."""
    targets = {"busy": "ivr:reception", "no_answer": "queue:support"}
    data["users"][0] = {**data["users"][0], "forwarding": {"away": {
        key: {"external": value} for key, value in targets.items()}}}
    memo = ParseMemo()
    parse_directory(data, SOURCE, memo)
    data["ivrs"], data["queues"] = [], []
    with pytest.raises(DirectoryError) as memoised:
        parse_directory(data, SOURCE, memo)
    assert memo.hits == len(data["users"])
    paths = {path for path, _ in memoised.value.fields}
    assert {"users[0].forwarding.away.busy.external",
            "users[0].forwarding.away.no_answer.external"} <= paths


def test_every_caller_id_problem_is_named_at_once(data: dict[str, Any]) -> None:
    data["users"][2]["outbound_caller_id"] = "+18005550100"  # toll-free
    data["users"][4]["outbound_caller_id"] = "+15145550999"  # not one of [[numbers]]
    data["departments"][0]["caller_id"] = "+15145550998"
    data["numbers"][1]["outbound_callers"] = ["109"]
    errors = errors_of(data)
    assert_error(errors, "users[2].outbound_caller_id", "toll_free")
    assert_error(errors, "users[4].outbound_caller_id", "not one of [[numbers]]")
    assert_error(errors, "departments[0].caller_id", "not one of [[numbers]]")
    assert_error(errors, "numbers[1].outbound_callers[0]", "unknown extension '109'")
    assert len(errors) == 4, errors


def test_number_keys_are_read_and_a_caller_id_may_be_written_in_any_form(
    data: dict[str, Any],
) -> None:
    data["users"][2]["outbound_caller_id"] = "5145550200"  # national digits of +15145550200
    d = parse_directory(data, SOURCE)
    support = d.number("+15145550200")
    assert support is not None
    assert support.caller_id_name == "Example Support"
    assert support.outbound_callers == ("101",)
    assert support.billing_group == "support" and support.record_outbound
    assert d.number("5145550200") is support
    main = d.number("+15145550100")
    assert main is not None and main.outbound_callers == () and main.billing_group == "sales"
    toll_free = d.number("+18005550100")
    assert toll_free is not None and not toll_free.outbound and main.outbound
    assert parse_directory(directory_to_dict(d), "round-trip") == d


def test_disabled_user_may_have_no_password(data: dict[str, Any]) -> None:
    assert "password" not in data["users"][5]
    assert parse_directory(data, SOURCE).users[5].disabled


def test_all_errors_are_collected(data: dict[str, Any]) -> None:
    chosen = [
        "int-as-string", "bool-as-int", "string-as-bool", "status", "role", "strategy",
        "number-type", "transport", "hours-format", "timezone", "cidr-prefix",
        "unknown-user-key", "negative-seconds", "empty-password", "unknown-extension-target",
        "dup-trunk", "unknown-member",
    ]
    cases = {case[0]: case[1:] for case in ERROR_CASES}
    for name in chosen:
        cases[name][0](data)
    errors = errors_of(data)
    for name in chosen:
        _mutate, path, fragment = cases[name]
        assert_error(errors, path, fragment)
    assert len(errors) >= len(chosen)
    assert all(e.startswith(f"{SOURCE}: ") for e in errors)


def test_error_is_a_value_error_listing_every_problem(data: dict[str, Any]) -> None:
    data["users"][0]["status"] = "vacation"
    data["trunks"][0]["transport"] = "sctp"
    with pytest.raises(ValueError) as info:
        parse_directory(data, SOURCE)
    assert isinstance(info.value, DirectoryError)
    text = str(info.value)
    assert text.startswith("2 errors in the directory:")
    for error in info.value.errors:
        assert error in text


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "directory.toml"
    path.write_text('[system]\ndomain = "pbx.example.test"\nextension_digits = \n')
    with pytest.raises(DirectoryError) as info:
        load_directory(path)
    (error,) = info.value.errors
    assert error.startswith(f"{path}: line 3, column ")
    assert "invalid TOML" in error


def test_duplicate_table_is_a_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "dup.toml"
    path.write_text('[system]\ndomain = "a.test"\n[system]\ndomain = "b.test"\n')
    with pytest.raises(DirectoryError) as info:
        load_directory(path)
    assert info.value.errors[0].startswith(f"{path}: line 3")


def test_missing_and_undecodable_files(tmp_path: Path) -> None:
    with pytest.raises(DirectoryError, match="cannot read the file"):
        load_directory(tmp_path / "absent.toml")
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'[system]\ndomain = "caf\xe9.test"\n')
    with pytest.raises(DirectoryError, match=r"line 2: not valid UTF-8"):
        load_directory(bad)


def test_file_errors_use_the_path_given(tmp_path: Path, data: dict[str, Any]) -> None:
    path = tmp_path / "office.toml"
    text = EXAMPLE.read_text().replace('extension = "102"', 'extension = "10x"')
    path.write_text(text)
    with pytest.raises(DirectoryError) as info:
        load_directory(path)
    assert_error_prefix = f"{path}: users[1].extension: "
    assert any(e.startswith(assert_error_prefix) for e in info.value.errors)


# --------------------------------------------------------------------------- property


def _paths(node: object, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    found: list[tuple[str | int, ...]] = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found.extend(_paths(value, (*prefix, key)))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found.extend(_paths(value, (*prefix, i)))
    return found


KNOWN_VALUES = [
    "101", "102", "109", "800", "999", "", " ", "voicemail", "voicemail:102", "voicemail:203",
    "extension:102", "mobile", "external:+15145550199", "ring_group:sales", "queue:support",
    "same_as_external", "busy", "department", "09:00-17:00", "24:00-25:00", "2026-12-25",
    "127.0.0.1/32", "::1", "Sales", "Support", "UTC", "America/Toronto", "fr", "hunt",
    "available", "away", "G722", "20000-29999", "alice@example.test", "+15145550111",
    {"to": "mobile", "rebound": True}, {"external": "voicemail", "internal": "busy"},
]
KNOWN_KEYS = sorted(
    {str(p[-1]) for p in _paths(EXAMPLE_DATA) if p and isinstance(p[-1], str)}
    | {"channels", "register", "username", "password", "log_out_of_queues", "to"}
)

scalars = st.one_of(
    st.booleans(),
    st.integers(),
    st.integers(min_value=-2, max_value=100_000),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.dates(),
    st.datetimes(),
    st.times(),
    st.none(),
    st.sampled_from(KNOWN_VALUES),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(KNOWN_KEYS) | st.text(max_size=6), inner, max_size=3),
    ),
    max_leaves=6,
)


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    data = copy.deepcopy(EXAMPLE_DATA)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        paths = _paths(data)
        path = draw(st.sampled_from(paths))
        node: Any = data
        for step in path[:-1]:
            node = node[step]
        action = draw(st.sampled_from(["replace", "delete", "add_key"]))
        if not path:
            action = "add_key"
        if action == "replace":
            node[path[-1]] = draw(values)
        elif action == "delete":
            del node[path[-1]]
        else:
            target: Any = data
            for step in path:
                target = target[step]
            if isinstance(target, dict):
                key = draw(st.sampled_from(KNOWN_KEYS) | st.text(max_size=6))
                target[key] = draw(values)
            elif isinstance(target, list):
                target.append(draw(values))
    return data


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutations_load_or_raise_directory_error(data: dict[str, Any]) -> None:
    try:
        directory = parse_directory(data, SOURCE)
    except DirectoryError as exc:
        assert exc.errors
        assert all(e.startswith(f"{SOURCE}: ") for e in exc.errors)
        return
    assert isinstance(directory, Directory)
    assert parse_directory(directory_to_dict(directory), "round-trip") == directory


def test_invalid_extension_digits_does_not_cascade(data: dict[str, Any]) -> None:
    data["system"]["extension_digits"] = "3"
    errors = errors_of(data)
    assert errors == [
        f"{SOURCE}: system.extension_digits: must be an integer, not a string",
    ]


# --------------------------------------------------------------------------- audio files
def test_audio_files_resolve_against_the_files_folder_and_bad_ones_refuse_it(
        tmp_path: Path) -> None:
    from media.tones import tone
    from media.wav import write_wav

    text = EXAMPLE.read_text()
    (tmp_path / "moh").mkdir()
    write_wav(tmp_path / "moh" / "default.wav", tone(440, 500), 16000)  # any PCM WAV plays
    path = tmp_path / "directory.toml"
    path.write_text(text)
    warnings: list[str] = []
    directory = load_directory(path, warnings)
    assert directory.system.hold_music == (str((tmp_path / "moh" / "default.wav").resolve()),)
    assert warnings == []
    # A greeting must be PCM 8 kHz 16-bit mono (the admin guide): 16 kHz is refused by name.
    write_wav(tmp_path / "hello.wav", tone(440, 500, 16000), 16000)
    (tmp_path / "moh" / "default.wav").unlink()
    path.write_text(text.replace("[users.forwarding.available]",
                                 '[users.forwarding.available]\ngreeting = "hello.wav"', 1))
    with pytest.raises(DirectoryError) as err:
        load_directory(path)
    assert "forwarding.available.greeting" in str(err.value) and "8" in str(err.value)
    # A missing file is a warning: audio may be copied after provisioning.
    path.write_text(text.replace("[users.forwarding.available]",
                                 '[users.forwarding.available]\ngreeting = "later.wav"', 1))
    warnings = []
    load_directory(path, warnings)
    assert any("users[0].forwarding.available.greeting: 'later.wav' not found" in w
               for w in warnings)
    assert any("system.hold_music[0]: 'moh/default.wav' not found" in w for w in warnings)
