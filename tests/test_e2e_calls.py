"""Calls end to end: SIPp as trunk and as phones, the real engine process in between.

Every phone registers with digest auth (a real REGISTER from the port its SIPp
then listens on), every caller places a real call; the engine decides by the
directory below. Statuses are changed live with ``switchboard status set``
while the engine runs, as an admin would.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import EngineProcess, free_port
from tests.e2e_helpers import register_udp

sys.path.insert(0, str(Path(__file__).resolve().parent / "sipp"))
from calls import run_uac, start_uas

pytestmark = pytest.mark.peers

# The phones' and the carrier's ports, chosen when the module's first engine starts
# (not at import: the whole suite is collected first, and a port free then may be
# taken by the time these tests run).
PORTS: dict[str, int] = {}


def choose_ports() -> None:
    if not PORTS:
        PORTS.update({ext: free_port()
                      for ext in ("101", "102", "103", "104", "trunk", "trunkin", "uac")})

PASSWORDS = {"101": "pw101", "102": "pw102", "103": "pw103", "104": "pw104"}

def directory_text(channels: int = 3, supports_302: bool = True) -> str:
    choose_ports()
    text = DIRECTORY.format(trunk=PORTS["trunk"], trunkin=PORTS["trunkin"])
    return text.replace("channels = 3", f"channels = {channels}").replace(
        "supports_302 = true", f"supports_302 = {str(supports_302).lower()}")


DIRECTORY = """
[system]
domain = "pbx.test"

[[trunks]]
name = "carrier"
host = "127.0.0.1"
port = {trunk}
channels = 3
inbound_from = ["127.0.0.1/32"]
inbound_port = {trunkin}  # phones share 127.0.0.1: the carrier is this port
supports_302 = true

[[departments]]
name = "Sales"
caller_id = "+15145550100"
timezone = "America/Toronto"
[departments.office_hours]
mon = ["09:00-17:00"]
tue = ["09:00-17:00"]
wed = ["09:00-17:00"]
thu = ["09:00-17:00"]
fri = ["09:00-17:00"]

[[numbers]]
number = "+15145550100"
name = "Sales main line"
route_to = "extension:103"

[[numbers]]
number = "+15145550101"
route_to = "extension:101"

[[numbers]]
number = "+15145550102"
route_to = "extension:102"

[[numbers]]
number = "+15145550104"
route_to = "extension:104"

[[users]]
extension = "101"
name = "Alice Martin"
password = "pw101"
department = "Sales"
mobile = "+15145550111"
[users.forwarding.available]
no_answer_seconds = 2
no_answer = {{ external = "extension:103", internal = "extension:103" }}
busy = {{ external = "extension:103", internal = "extension:103" }}
[users.forwarding.away]
no_answer_seconds = 5
no_answer = {{ external = "voicemail", internal = "voicemail" }}
busy = {{ external = "voicemail", internal = "voicemail" }}
ring_mobile_simultaneously = true
[users.forwarding.business_trip]
no_answer_seconds = 0
no_answer.external = {{ to = "external:+15145550199", deflect_302 = true }}
no_answer.internal = "mobile"
busy = {{ external = "voicemail", internal = "voicemail" }}

[[users]]
extension = "102"
name = "Bruno Tremblay"
password = "pw102"
department = "Sales"
[users.forwarding.available]
no_answer_seconds = 2
no_answer = {{ external = "voicemail", internal = "voicemail" }}
busy = {{ external = "voicemail", internal = "voicemail" }}
voicemail_outside_office_hours = true

[[users]]
extension = "103"
name = "Chloe Roy"
password = "pw103"
department = "Sales"

[[users]]
extension = "104"
name = "David Cote"
password = "pw104"
department = "Sales"
mobile = "+15145550444"
[users.forwarding.available]
no_answer_seconds = 2
no_answer = {{ external = {{ to = "mobile", rebound = true }}, internal = "voicemail" }}
busy = {{ external = "voicemail", internal = "voicemail" }}
"""

# Tuesday 10 March 2026, 10:30 in Toronto: office hours.
OFFICE_CLOCK = "2026-03-10T10:30:00-04:00"


def register_from(engine: EngineProcess, ext: str) -> None:
    """REGISTER ``ext`` with digest auth from the port its SIPp phone will listen on."""
    register_udp(engine, ext, PASSWORDS[ext], PORTS[ext])


@pytest.fixture(scope="module")
def pbx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    work = tmp_path_factory.mktemp("calls")
    directory = work / "directory.toml"
    directory.write_text(directory_text())
    engine = EngineProcess(work, directory, ["--route-clock", OFFICE_CLOCK,
                                             "--advertise", "127.0.0.1",
                                             "--digest-algorithms", "MD5"]).start()
    for ext in ("101", "102", "103", "104"):
        register_from(engine, ext)
    yield engine
    engine.stop()


@pytest.fixture
def work(tmp_path: Path) -> Path:
    return tmp_path


def set_status(pbx: EngineProcess, ext: str, status: str | None) -> None:
    """``switchboard status set|clear`` while the engine runs; wait for it to reload."""
    before = pbx.log().count("directory reloaded")
    result = pbx.cli("status", "set", ext, status) if status else pbx.cli("status", "clear", ext)
    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + 5
    while pbx.log().count("directory reloaded") == before:
        assert time.monotonic() < deadline, "the engine did not pick up the status change"
        time.sleep(0.1)


def ok(result: object) -> None:
    assert result.ok, result.describe()


def log_events(pbx: EngineProcess, event: str) -> list[str]:
    return [line for line in pbx.log().splitlines() if f'"event": "{event}"' in line]


def test_phone_calls_phone_answered_and_hung_up(pbx: EngineProcess, work: Path) -> None:
    callee = start_uas(work, "answer", PORTS["102"], pbx.target)
    ok(run_uac(work, pbx.target, caller="101", dialled="102", expect=200,
               auth=("101", "pw101"), port=PORTS["uac"]))
    ok(callee.result())
    # every call's plan is logged, each step with its reason
    routed = [json.loads(line) for line in log_events(pbx, "call routed")]
    plan = next(r["plan"] for r in routed if r["caller"] == "101" and r["callee"] == "102")
    assert plan.startswith("call 101 -> 102 (phone)") and "1. ring 102" in plan


def test_no_answer_forwards_to_the_rule_target(pbx: EngineProcess, work: Path) -> None:
    desk = start_uas(work, "noanswer", PORTS["101"], pbx.target)
    forward = start_uas(work, "answer", PORTS["103"], pbx.target)
    started = time.monotonic()
    ok(run_uac(work, pbx.target, caller="+15145550199", dialled="+15145550101", expect=200,
               port=PORTS["trunkin"]))
    ok(desk.result())  # rung, then CANCELled
    ok(forward.result())  # then 103 answered
    assert time.monotonic() - started >= 2  # not before no_answer_seconds


def test_busy_forwards_to_the_rule_target(pbx: EngineProcess, work: Path) -> None:
    desk = start_uas(work, "busy", PORTS["101"], pbx.target)
    forward = start_uas(work, "answer", PORTS["103"], pbx.target)
    ok(run_uac(work, pbx.target, caller="102", dialled="101", expect=200,
               auth=("102", "pw102"), port=PORTS["uac"]))
    ok(desk.result())
    ok(forward.result())


def test_mobile_rings_with_the_desk_and_is_cancelled_when_the_desk_answers(
        pbx: EngineProcess, work: Path) -> None:
    set_status(pbx, "101", "away")
    try:
        desk = start_uas(work, "answer", PORTS["101"], pbx.target, ring_ms=1500)
        mobile = start_uas(work, "early", PORTS["trunk"], pbx.target)
        ok(run_uac(work, pbx.target, caller="+15145550199", dialled="+15145550101",
                   expect=200, port=PORTS["trunkin"]))
        ok(desk.result())
        ok(mobile.result())  # 183 early media, then CANCEL
    finally:
        set_status(pbx, "101", None)


def test_deflection_302_seen_by_the_trunk(pbx: EngineProcess, work: Path) -> None:
    set_status(pbx, "101", "business_trip")
    try:
        ok(run_uac(work, pbx.target, caller="+15145550199", dialled="+15145550101",
                   expect=302, port=PORTS["trunkin"]))
    finally:
        set_status(pbx, "101", None)


def test_rebound_refused_comes_back_to_voicemail(pbx: EngineProcess, work: Path) -> None:
    desk = start_uas(work, "noanswer", PORTS["104"], pbx.target)
    mobile = start_uas(work, "refuse", PORTS["trunk"], pbx.target)
    ok(run_uac(work, pbx.target, caller="+15145550199", dialled="+15145550104", expect=200,
               port=PORTS["trunkin"]))  # voicemail answers
    ok(desk.result())
    ok(mobile.result())
    assert any('"box": "104"' in line for line in log_events(pbx, "voicemail answered"))


def test_unregistered_internal_caller_cannot_reach_a_trunk(pbx: EngineProcess,
                                                           work: Path) -> None:
    # No credentials for 'intruder': the 407 is never satisfied -> SIPp sees 407 again.
    result = run_uac(work, pbx.target, caller="intruder", dialled="+15145550199", expect=407,
                     auth=("intruder", "guess"), port=PORTS["uac"])
    ok(result)


def test_route_explain_cli_and_admin_api(pbx: EngineProcess) -> None:
    out = pbx.cli("route", "explain", "--from", "+15145550199", "--to", "+15145550102",
                  "--at", "2026-03-10T20:00:00-04:00")
    assert out.returncode == 0, out.stderr
    assert "voicemail of 102" in out.stdout and "outside office hours" in out.stdout
    plan = pbx.api_get("/route/explain?from=102&to=101&status=away")
    kinds = [step["type"] for step in plan["steps"]]
    assert kinds[0] == "ring" and "voicemail" in kinds


# Tuesday 10 March 2026, 20:00 in Toronto: after hours.
EVENING_CLOCK = "2026-03-10T20:00:00-04:00"


@pytest.fixture(scope="module")
def small_pbx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    """One trunk channel, no 302 support, the clock set to the evening."""
    work = tmp_path_factory.mktemp("small")
    directory = work / "directory.toml"
    directory.write_text(directory_text(channels=1, supports_302=False))
    engine = EngineProcess(work, directory, ["--route-clock", EVENING_CLOCK,
                                             "--digest-algorithms", "MD5"]).start()
    for ext in ("101", "102"):
        register_from(engine, ext)
    yield engine
    engine.stop()


def test_schedule_after_hours_goes_to_voicemail_without_ringing(small_pbx: EngineProcess,
                                                                work: Path) -> None:
    ok(run_uac(work, small_pbx.target, caller="+15145550199", dialled="+15145550102",
               expect=200, port=PORTS["trunkin"]))  # voicemail answers
    steps = log_events(small_pbx, "step")
    assert any("outside office hours" in line for line in steps), steps
    assert not log_events(small_pbx, "ringing")


def test_no_free_channel_for_a_forward_gives_503(small_pbx: EngineProcess, work: Path) -> None:
    # business_trip forwards external callers to +15145550199; the trunk cannot take a
    # 302 here, so the forward needs a second channel of a one-channel trunk.
    set_status(small_pbx, "101", "business_trip")
    try:
        ok(run_uac(work, small_pbx.target, caller="+15145550199", dialled="+15145550101",
                   expect=503, port=PORTS["trunkin"]))
    finally:
        set_status(small_pbx, "101", None)


def test_trunk_registers_to_its_carrier_and_refreshes(tmp_path: Path) -> None:
    from calls import listening, start_carrier_registrar

    port = free_port()
    carrier = start_carrier_registrar(tmp_path, port, "127.0.0.1:5060", "acct42", expires=3)
    listening(carrier, port)
    directory = tmp_path / "directory.toml"
    directory.write_text(f"""
[system]
domain = "pbx.test"

[[trunks]]
name = "carrier"
host = "127.0.0.1"
port = {port}
inbound_from = ["127.0.0.1/32"]
inbound_port = {port}
register = true
username = "acct42"
password = "carrier-secret"

[[departments]]
name = "Sales"
caller_id = "+15145550100"

[[numbers]]
number = "+15145550100"
route_to = "busy"
""")
    engine = EngineProcess(tmp_path, directory).start()
    try:
        ok(carrier.result(30))  # challenged, registered, refreshed before 3 s ran out
        # SIPp is done once it sent its last 200; the engine logs it on receipt
        deadline = time.monotonic() + 5
        while len(log_events(engine, "trunk registered")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(log_events(engine, "trunk registered")) >= 2
        assert "carrier-secret" not in engine.log()
    finally:
        engine.stop()


def test_unregistered_user_follows_the_busy_rule(small_pbx: EngineProcess, work: Path) -> None:
    # 104 has no registered phone on this engine: the external busy rule (voicemail) applies.
    ok(run_uac(work, small_pbx.target, caller="+15145550199", dialled="+15145550104",
               expect=200, port=PORTS["trunkin"]))  # voicemail answers
    routed = [line for line in log_events(small_pbx, "call routed") if "+15145550104" in line]
    assert routed and "no device registered" in routed[-1], routed


def test_directory_change_reaches_the_running_engine(small_pbx: EngineProcess) -> None:
    def first_step() -> dict[str, object]:
        plan = small_pbx.api_get("/route/explain?from=101&to=103")
        step: dict[str, object] = plan["steps"][0]
        return step

    assert first_step()["type"] == "voicemail"  # 103 has no phone on this engine
    changed = small_pbx.data_dir / "changed.toml"
    changed.write_text(directory_text(channels=1, supports_302=False).replace(
        'name = "Chloe Roy"', 'name = "Chloe Roy"\ndisabled = true'))
    before = small_pbx.log().count("directory reloaded")
    result = small_pbx.cli("provision", "apply", str(changed))
    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + 5
    while small_pbx.log().count("directory reloaded") == before:
        assert time.monotonic() < deadline, "the engine did not reload the directory"
        time.sleep(0.1)
    assert first_step()["type"] == "reject"  # 103 is disabled now, no restart
    restored = small_pbx.data_dir / "restored.toml"
    restored.write_text(directory_text(channels=1, supports_302=False))
    assert small_pbx.cli("provision", "apply", str(restored)).returncode == 0
