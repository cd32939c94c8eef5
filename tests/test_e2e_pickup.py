"""Desk-phone features end to end: SIPp phones, the real engine process (media
relayed, the default) in between.

* Directed pickup: 101 calls 102, whose phone rings; 103 dials ``**102`` and
  gets the call: 102's phone is cancelled, the caller and the picker are answered
  (each from the engine's own RTP endpoint), and when the picker hangs up the
  caller gets the BYE.
* Intercom: ``*9102``'s INVITE to 102 carries the auto-answer headers (the SIPp
  phone checks them, failing the call when they are missing).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import EngineProcess, free_port
from tests.e2e_helpers import register_udp

sys.path.insert(0, str(Path(__file__).resolve().parent / "sipp"))
from calls import in_background, run_uac, start_uas
from sipp import run_sipp

pytestmark = pytest.mark.peers

PASSWORDS = {"101": "pw101", "102": "pw102", "103": "pw103"}
PORTS: dict[str, int] = {}

DIRECTORY = """
[system]
domain = "pbx.test"

[[departments]]
name = "Sales"
caller_id = "+15145550100"

[[numbers]]
number = "+15145550100"
route_to = "extension:101"
"""


def user(ext: str) -> str:
    return f"""
[[users]]
extension = "{ext}"
name = "User {ext}"
password = "{PASSWORDS[ext]}"
department = "Sales"
[users.forwarding.available]
no_answer_seconds = 30
no_answer = {{ external = "busy", internal = "busy" }}
busy = {{ external = "busy", internal = "busy" }}
"""


@pytest.fixture(scope="module")
def pbx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    PORTS.update({name: free_port() for name in ("102", "caller", "picker")})
    work = tmp_path_factory.mktemp("pickup")
    directory = work / "directory.toml"
    directory.write_text(DIRECTORY + "".join(user(e) for e in ("101", "102", "103")))
    engine = EngineProcess(work, directory, ["--advertise", "127.0.0.1",
                                             "--digest-algorithms", "MD5"]).start()
    register_udp(engine, "102", PASSWORDS["102"], PORTS["102"])
    yield engine
    engine.stop()


def ok(result: object) -> None:
    assert result.ok, result.describe()  # type: ignore[attr-defined]


def test_directed_pickup_takes_the_call_ringing_102(pbx: EngineProcess, tmp_path: Path) -> None:
    ringing = start_uas(tmp_path, "noanswer", PORTS["102"], pbx.target)  # 180, then CANCEL
    time.sleep(0.3)
    # the caller keeps the call until the engine's BYE (the picker hangs up first)
    caller = in_background(lambda: run_uac(
        tmp_path, pbx.target, caller="101", dialled="102", expect=200,
        auth=("101", "pw101"), port=PORTS["caller"], wait_bye_ms=15000))
    deadline = time.monotonic() + 10
    while not any(str(e.get("leg", "")).startswith("102") for e in pbx.events("ringing")):
        assert time.monotonic() < deadline, "102 never rang"
        time.sleep(0.1)
    ok(run_uac(tmp_path, pbx.target, caller="103", dialled="**102", expect=200,
               auth=("103", "pw103"), port=PORTS["picker"], hold_ms=1000))
    ok(ringing.result())  # 102 was cancelled (200 to CANCEL, 487, ACK)
    ok(caller.result())  # answered, then the BYE when the picker hung up
    [picked] = pbx.events("picked up")
    assert picked["picker"] == "103" and picked["directed"] is True
    answered = [e for e in pbx.events("call answered") if e.get("leg") == "103 pickup"]
    assert answered, "the caller's call was answered by the picker's leg"
    assert pbx.metrics()['switchboard_pickups_total{outcome="directed"}'] == 1.0


INTERCOM_UAS = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="intercom phone">
  <recv request="INVITE">
    <action>
      <ereg regexp="answer-after=0" search_in="hdr" header="Call-Info:" check_it="true"
            assign_to="ci"/>
      <ereg regexp="info=alert-autoanswer" search_in="hdr" header="Alert-Info:"
            check_it="true" assign_to="ai"/>
    </action>
  </recv>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:phone@[local_ip]:[local_port]>
      Content-Type: application/sdp
      Content-Length: [len]

v=0
o=sipp 1 1 IN IP4 [local_ip]
s=-
c=IN IP4 [local_ip]
t=0 0
m=audio 20000 RTP/AVP 0 8 101
a=rtpmap:101 telephone-event/8000

    ]]>
  </send>
  <recv request="ACK"/>
  <Reference variables="ci,ai"/>
  <recv request="BYE"/>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0
    ]]>
  </send>
</scenario>
"""


def test_intercom_invite_carries_the_auto_answer_headers(pbx: EngineProcess,
                                                          tmp_path: Path) -> None:
    xml = tmp_path / "intercom_uas.xml"
    xml.write_text(INTERCOM_UAS)
    phone = in_background(lambda: run_sipp(
        xml, pbx.target, None, calls=1, rate=1, timeout=30,
        extra_args=["-p", str(PORTS["102"]), "-t", "u1"], workdir=tmp_path / "uas-intercom"))
    time.sleep(0.3)
    ok(run_uac(tmp_path, pbx.target, caller="101", dialled="*9102", expect=200,
               auth=("101", "pw101"), port=PORTS["caller"]))
    ok(phone.result())
