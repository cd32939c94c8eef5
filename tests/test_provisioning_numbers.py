"""One number lookup for the whole system: ``Directory.number`` (provisioning.model.NumberIndex).

Routing, hold music, recording and caller ID all find a ``[[numbers]]`` entry
through it, so a carrier that writes a DID as ``15145550100``, ``tel:+1...`` or
``sip:+1...;user=phone`` gets the same number everywhere.
"""

from __future__ import annotations

import tomllib

import pytest

from provisioning.directory import parse_directory
from provisioning.model import Destination, Directory, Number, NumberIndex, number_digits
from routing import router_for

DIRECTORY = """
[system]
domain = "pbx.test"

[[departments]]
name = "Sales"
caller_id = "+15145550100"

[[numbers]]
number = "+15145550100"
route_to = "extension:101"

[[numbers]]
number = "+33145550100"
route_to = "extension:101"

[[numbers]]
number = "4930123456"
route_to = "extension:101"

[[users]]
extension = "101"
name = "Alice Martin"
password = "pw101"
department = "Sales"
"""


@pytest.fixture(scope="module")
def directory() -> Directory:
    return parse_directory(tomllib.loads(DIRECTORY), "<numbers>")


@pytest.mark.parametrize(
    "form",
    [
        "+15145550100",  # exact
        "15145550100",  # digits only
        "5145550100",  # North American national digits
        "tel:+15145550100",
        "tel:+1-514-555-0100;phone-context=pbx.test",  # visual separators, parameters
        "sip:+15145550100@carrier.test;user=phone",
        "sips:15145550100@carrier.test:5061",
        "<sip:+15145550100@carrier.test;user=phone>",
        "+1 (514) 555-0100",
        "%2B15145550100",  # an escaped '+' in a URI user part
    ],
)
def test_every_form_of_a_did_finds_its_number(directory: Directory, form: str) -> None:
    found = directory.number(form)
    assert found is not None and found.number == "+15145550100"
    # routing reads the same index: one answer everywhere
    assert router_for(directory).number_for(form) is found


@pytest.mark.parametrize(
    ("form", "expected"),
    [
        ("+33145550100", "+33145550100"),
        ("33145550100", "+33145550100"),  # full digits work in every country
        ("0145550100", None),  # a French national form: never guessed
        ("145550100", None),  # digits missing: no suffix matching
        ("+4930123456", "4930123456"),  # a directory number written without '+'
        ("1514555010", None),  # ten digits starting with 1: not a NANP national number
        ("+5145550100", None),  # '+' and ten digits is another country, not NANP national
        ("anonymous", None),
        ("sip:alice@carrier.test", None),  # words carry no number
        ("*825145550100", None),  # a feature code is not a DID
        ("", None),
    ],
)
def test_what_does_not_match(directory: Directory, form: str, expected: str | None) -> None:
    found = directory.number(form)
    assert (found.number if found is not None else None) == expected


def test_a_number_written_nationally_is_found_from_e164() -> None:
    national = Number("5145550100", Destination("busy"))
    index = NumberIndex([national])
    assert index.find("+15145550100") is national
    assert index.find("15145550100") is national
    assert index.find("tel:+15145550100") is national


def test_first_entry_wins_in_a_hand_built_directory() -> None:
    # The loader refuses two entries one lookup cannot tell apart; a hand-built
    # directory gets the first in file order.
    first = Number("+15145550100", Destination("busy"))
    second = Number("15145550100", Destination("busy"))
    index = NumberIndex([first, second])
    assert index.find("15145550100") is second  # the exact string first
    assert index.find("5145550100") is first
    assert index.find("tel:+15145550100") is first


@pytest.mark.parametrize(
    ("text", "digits"),
    [
        ("+15145550100", "15145550100"),
        ("sip:+15145550100@h;user=phone", "15145550100"),
        ("sip:+15145550100;npdi@h", "15145550100"),
        ("TEL:+15145550100", "15145550100"),
        ("+1.514.555.0100", "15145550100"),
        ("101", "101"),
        ("abc", ""),
        ("sip:anonymous@anonymous.invalid", ""),
    ],
)
def test_number_digits(text: str, digits: str) -> None:
    assert number_digits(text) == digits
