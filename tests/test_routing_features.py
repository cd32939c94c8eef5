"""Feature codes (``[system.feature_codes]``) and park orbits (``[system.park]``):
the file's defaults and collisions (refused, the key named), and the steps routing
makes of a dialled code: pickup (directed, group; rights by department), park,
unpark (code + orbit, the orbit dialled), intercom, queue log-in from the table."""

from __future__ import annotations

import tomllib

import pytest

from provisioning.directory import DirectoryError, parse_directory, system_to_dict
from provisioning.model import Destination, Directory, FeatureCodes, Park
from routing import (
    Device,
    Pickup,
    QueueLogin,
    Reject,
    Ring,
    Unpark,
    plan,
    render_text,
    step_to_json,
)
from routing import Park as ParkStep
from tests.test_routing import BASE, build, live, only, phone, user_toml

SUPPORT = """
[[departments]]
name = "Support"
caller_id = "+15145550100"

[[users]]
extension = "201"
name = "User 201"
password = "pw-201"
department = "Support"

[[ring_groups]]
name = "desk"
extension = "600"
members = ["103", "201"]
"""


def directory(extra: str = "") -> Directory:
    return build(user_toml("101") + user_toml("102") + user_toml("103") + SUPPORT + extra)


def with_system(system_extra: str) -> str:
    """BASE with ``system_extra`` (sub-tables of [system]) in its system table."""
    head = 'emergency_numbers = ["911", "112"]\n'
    return BASE.replace(head, head + system_extra + "\n", 1)


def refused(system_extra: str, extra: str = "") -> str:
    text = with_system(system_extra)
    with pytest.raises(DirectoryError) as caught:
        parse_directory(tomllib.loads(text + user_toml("101") + extra), "test.toml")
    return str(caught.value)


def test_defaults_are_the_contract_values() -> None:
    d = directory()
    codes = d.system.feature_codes
    assert dict(codes.items()) == {
        "queue_login": "*62", "queue_logout": "*63", "pickup_group": "*8",
        "pickup_directed": "**", "park": "*0", "unpark": "*1", "intercom": "*9"}
    park = d.system.park
    assert park.orbits == tuple(str(n) for n in range(701, 710))
    assert (park.ring_back_seconds, park.ring_back_to) == (120, Destination("voicemail"))
    assert "feature_codes" not in system_to_dict(d.system)  # defaults are not written out


def test_codes_and_park_are_read_and_written_back() -> None:
    text = with_system('''[system.feature_codes]
pickup_group = "#8"
intercom = "*55"
[system.park]
orbits = "7001-7005"
ring_back_seconds = 60
ring_back_to = "extension:101"
''')
    d = parse_directory(tomllib.loads(text + user_toml("101")), "test.toml")
    assert d.system.feature_codes == FeatureCodes(pickup_group="#8", intercom="*55")
    assert d.system.park == Park(7001, 7005, 4, 60, Destination("extension", "101"))
    out = system_to_dict(d.system)
    assert out["feature_codes"]["intercom"] == "*55"
    assert out["park"] == {"orbits": "7001-7005", "ring_back_seconds": 60,
                           "ring_back_to": "extension:101"}


@pytest.mark.parametrize(("system", "named"), [
    ('[system.feature_codes]\npark = "*62"',
     "system.feature_codes.park: '*62' is also the code of queue_login"),
    ('[system.feature_codes]\npickup_directed = "*6"',
     "system.feature_codes.pickup_directed: '*6' and queue_login ('*62') are ambiguous"),
    ('[system.feature_codes]\nintercom = "10"',
     "system.feature_codes.intercom: '10' collides with extension 101"),
    ('[system.feature_codes]\npickup_group = "101"',
     "system.feature_codes.pickup_group: '101' collides with extension 101"),
    ('[system.feature_codes]\nunpark = "99"',
     "system.feature_codes.unpark: '99' collides with system.voicemail_number"),
    ('[system.feature_codes]\npark = "7771"',
     "system.feature_codes.park: '7771' starts with the outbound PIN prefix"),
    ('[system.feature_codes]\npark = "*0a"', "system.feature_codes.park: '*0a' is not a code"),
    ('[system.feature_codes]\nparking = "*0"', "system.feature_codes.parking: unknown key"),
    ('[system.park]\norbits = "100-109"', "system.park.orbits: orbit 101 collides with "
     "extension 101"),
    ('[system.park]\norbits = "9-100"', "system.park.orbits: '9-100': the first and last"),
    ('[system.park]\nring_back_seconds = 1', "system.park.ring_back_seconds: must be at least"),
    ('[system.park]\nring_back_to = "extension:555"',
     "system.park.ring_back_to: unknown extension '555'"),
    ('[system.park]\nring_back_to = "mobile"', "system.park.ring_back_to: 'mobile' is not"),
])
def test_collisions_and_bad_values_refuse_the_file_naming_the_key(system: str,
                                                                   named: str) -> None:
    assert named in refused(system)


def test_a_code_colliding_with_a_number_or_ring_group_is_refused() -> None:
    assert "'60' collides with ring group 'g'" in refused(
        '[system.feature_codes]\nintercom = "60"',
        '[[ring_groups]]\nname = "g"\nextension = "600"\nmembers = ["101"]\n')


def test_directed_pickup_in_the_department() -> None:
    d = directory()
    step = only(plan(phone("103", "**102"), d, live(d)))
    assert isinstance(step, Pickup)
    assert (step.picker, step.extensions, step.directed) == ("103", ("102",), True)
    text = render_text(plan(phone("103", "**102"), d, live(d)))
    assert "103 picks up the oldest call ringing 102" in text
    assert step_to_json(0, step)["type"] == "pickup"


def test_directed_pickup_across_departments_is_forbidden_and_unknown_is_404() -> None:
    d = directory()
    step = only(plan(phone("201", "**102"), d, live(d)))
    assert isinstance(step, Reject) and step.status == 403
    assert "pickup stays in a department" in step.reason
    step = only(plan(phone("103", "**555"), d, live(d)))
    assert isinstance(step, Reject) and step.status == 404


def test_group_pickup_is_the_department_and_the_pickers_ring_groups() -> None:
    d = directory()
    step = only(plan(phone("103", "*8"), d, live(d)))
    assert isinstance(step, Pickup) and not step.directed
    assert set(step.extensions) == {"101", "102", "201"}  # 201 through ring group desk
    step = only(plan(phone("201", "*8"), d, live(d)))
    assert isinstance(step, Pickup) and set(step.extensions) == {"103"}


def test_park_unpark_and_the_orbit_dialled() -> None:
    d = directory()
    step = only(plan(phone("101", "*0"), d, live(d)))
    assert isinstance(step, ParkStep) and step.parker == "101"
    assert step.orbits[0] == "701" and step.ring_back_seconds == 120
    step = only(plan(phone("102", "*1703"), d, live(d)))
    assert isinstance(step, Unpark) and step.orbit == "703"
    step = only(plan(phone("102", "705"), d, live(d)))
    assert isinstance(step, Unpark) and step.orbit == "705"
    step = only(plan(phone("102", "*1800"), d, live(d)))
    assert isinstance(step, Reject) and step.status == 404 and "no orbit" in step.reason


def test_intercom_rings_the_device_with_the_intercom_flag_in_the_department() -> None:
    d = directory()
    step = only(plan(phone("101", "*9102"), d, live(d)))
    assert isinstance(step, Ring) and step.intercom
    assert step.targets == (Device("102"),)
    assert "(intercom: answered automatically)" in render_text(plan(phone("101", "*9102"), d,
                                                                     live(d)))
    step = only(plan(phone("101", "*9201"), d, live(d)))
    assert isinstance(step, Reject) and step.status == 403
    first = plan(phone("101", "102"), d, live(d)).steps[0]
    assert isinstance(first, Ring) and not first.intercom


def test_queue_codes_come_from_the_table() -> None:
    text = with_system('''[system.feature_codes]
queue_login = "#62"
''')
    d = parse_directory(tomllib.loads(text + user_toml("101") + """
[[queues]]
name = "support"
extension = "860"
agents = ["101"]
"""), "test.toml")
    step = only(plan(phone("101", "#62860"), d, live(d)))
    assert isinstance(step, QueueLogin) and step.login and step.queues == ("support",)
    step = only(plan(phone("101", "*62"), d, live(d)))
    assert isinstance(step, Reject)  # the old code is no code any more
