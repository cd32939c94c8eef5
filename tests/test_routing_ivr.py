"""Routing of IVRs (``[[ivrs]]``, ``ivr:NAME``): the step, its keys, the
outside-hours choice by the department's hours and holidays, what a key
leads to (``Router.choose``) and dial by extension (``Router.dialled``)."""

from __future__ import annotations

from provisioning.model import Destination, Directory
from routing import External, Ivr, Ring, Voicemail, plan, render_text, router_for
from tests.test_routing import (
    CHRISTMAS,
    EVENING,
    OFFICE,
    build,
    live,
    only,
    phone,
    trunk,
    user_toml,
)

IVRS = """
[[numbers]]
number = "+15145550160"
route_to = "ivr:main"

[[ring_groups]]
name = "sales"
extension = "800"
members = ["101", "102"]

[[ivrs]]
name = "main"
extension = "850"
text = "Pour les ventes, faites le 1."
language = "fr"
dial_by_extension = true
timeout_seconds = 4
repeat = 2
on_timeout = "extension:101"
on_invalid = "ivr:main"
outside_office_hours = "voicemail:101"
department = "Sales"
[ivrs.keys]
"1" = "ring_group:sales"
"0" = "extension:101"
"9" = "voicemail:102"
"#" = "external:+15145550199"
"2" = "ivr:other"

[[ivrs]]
name = "other"
extension = "851"
prompt = "other.wav"
keys = { "1" = "extension:102" }
"""


def directory_with_ivrs() -> Directory:
    return build(user_toml("101") + user_toml("102") + IVRS)


def test_a_did_to_an_ivr_is_an_ivr_step_with_its_keys() -> None:
    d = directory_with_ivrs()
    step = only(plan(trunk("+15145550160"), d, live(d)))
    assert isinstance(step, Ivr)
    assert step.name == "main" and step.language == "fr" and step.timeout_seconds == 4
    assert step.key("1") == Destination("ring_group", "sales")
    assert step.key("5") is None
    assert step.on_timeout == Destination("extension", "101")
    assert step.on_invalid == Destination("ivr", "main")
    assert "inside the hours of Sales" in step.reason


def test_outside_office_hours_and_holidays_take_the_outside_destination() -> None:
    d = directory_with_ivrs()
    for when, why in ((EVENING, "outside the office hours of Sales"),
                      (CHRISTMAS, "a holiday of Sales")):
        step = only(plan(trunk("+15145550160", at=when), d, live(d)))
        assert isinstance(step, Voicemail) and step.box == "101"
        assert why in step.reason and "outside_office_hours" in step.reason


def test_an_ivr_without_outside_destination_answers_at_night() -> None:
    d = directory_with_ivrs()
    step = only(plan(phone("101", "851", at=EVENING), d, live(d)))
    assert isinstance(step, Ivr) and step.name == "other"


def test_phone_dials_an_ivr_extension() -> None:
    d = directory_with_ivrs()
    step = only(plan(phone("102", "850"), d, live(d)))
    assert isinstance(step, Ivr) and step.name == "main"


def test_route_explain_shows_the_keys() -> None:
    d = directory_with_ivrs()
    text = render_text(plan(trunk("+15145550160"), d, live(d)))
    assert "IVR main (850)" in text
    assert "key 1 -> ring_group:sales" in text
    assert "key # -> external:+15145550199" in text
    assert "no key within 4 s, prompt played 3 time(s) -> extension:101" in text


def test_choose_a_key_plans_that_destination_for_the_same_caller() -> None:
    d = directory_with_ivrs()
    router = router_for(d)
    call = trunk("+15145550160", at=OFFICE)
    p = router.choose(call, Destination("ring_group", "sales"), "key 1", live(d))
    first = p.steps[0]
    assert isinstance(first, Ring) and first.reason.startswith("key 1")
    assert {t.extension for t in first.targets} == {"101", "102"}  # type: ignore[union-attr]
    p = router.choose(call, Destination("external", "+15145550199"), "key #", live(d))
    out = p.steps[0]
    assert isinstance(out, Ring) and isinstance(out.targets[0], External)
    assert out.targets[0].caller_id == call.caller  # the trunk caller, as for a DID
    p = router.choose(call, Destination("voicemail", "102"), "key 9", live(d))
    assert isinstance(p.steps[0], Voicemail) and p.steps[0].box == "102"


def test_choose_from_a_phone_never_rings_the_caller() -> None:
    d = directory_with_ivrs()
    p = router_for(d).choose(phone("101", "850"), Destination("ring_group", "sales"),
                             "key 1", live(d))
    first = p.steps[0]
    assert isinstance(first, Ring)
    assert {t.extension for t in first.targets} == {"102"}  # type: ignore[union-attr]


def test_dial_by_extension_reaches_users_groups_and_ivrs() -> None:
    router = router_for(directory_with_ivrs())
    assert router.dialled("102") == Destination("extension", "102")
    assert router.dialled("800") == Destination("ring_group", "sales")
    assert router.dialled("851") == Destination("ivr", "other")
    assert router.dialled("555") is None
    prefixes = router.extension_prefixes()
    assert {"1", "10", "8", "85"} <= prefixes and "9" not in prefixes


def test_two_ivrs_sending_each_other_outside_hours_stop_as_a_loop() -> None:
    d = build(user_toml("101") + """
[[ivrs]]
name = "a"
extension = "850"
prompt = "a.wav"
keys = { "1" = "extension:101" }
outside_office_hours = "ivr:b"
department = "Sales"

[[ivrs]]
name = "b"
extension = "851"
prompt = "b.wav"
keys = { "1" = "extension:101" }
outside_office_hours = "ivr:a"
department = "Sales"
""")
    step = only(plan(phone("101", "850", at=EVENING), d, live(d)))
    assert not isinstance(step, Ivr)
    assert "loop" in step.reason
