"""Busy lamps and presence end to end: a real engine process, SIPp phones.

A SIPp subscriber (``tests/sipp/subscribe_dialog.xml``) watches extension 102's
dialogs while a SIPp caller calls 102 and a SIPp phone answers; every NOTIFY body
it received (SIPp's message trace) is validated against the RFC 4235 schema
(``tests/xsd/dialog-info.xsd``, with lxml).
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lxml import etree

from tests.conftest import EngineProcess, free_port
from tests.e2e_helpers import register_udp

sys.path.insert(0, str(Path(__file__).resolve().parent / "sipp"))
from calls import in_background, run_uac, start_uas
from sipp import run_sipp

pytestmark = pytest.mark.peers

NS = {"d": "urn:ietf:params:xml:ns:dialog-info"}
SCHEMA = etree.XMLSchema(etree.parse(str(Path(__file__).parent / "xsd" / "dialog-info.xsd")))

DIRECTORY = """
[system]
domain = "pbx.test"

[[departments]]
name = "Sales"
caller_id = "+15145550100"
timezone = "America/Toronto"

[[numbers]]
number = "+15145550100"
route_to = "extension:102"

[[users]]
extension = "101"
name = "Alice Martin"
password = "pw101"
department = "Sales"

[[users]]
extension = "102"
name = "Bruno Tremblay"
password = "pw102"
department = "Sales"

[[users]]
extension = "103"
name = "Chloe Roy"
password = "pw103"
department = "Sales"
"""


@pytest.fixture(scope="module")
def pbx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    work = tmp_path_factory.mktemp("blf")
    directory = work / "directory.toml"
    directory.write_text(DIRECTORY)
    engine = EngineProcess(work, directory, ["--advertise", "127.0.0.1",
                                             "--digest-algorithms", "MD5"]).start()
    yield engine
    engine.stop()


def notifies_in(trace: Path) -> list[tuple[str, bytes]]:
    """(Subscription-State, body) of each NOTIFY in a SIPp message trace."""
    text = trace.read_text(errors="replace")
    out = []
    for chunk in re.split(r"\n-{10,}[^\n]*\n", text):
        start = chunk.find("NOTIFY sip:")
        if start < 0 or "message received" not in chunk[:start]:
            continue
        message = chunk[start:].replace("\r\n", "\n")
        head, _, body = message.partition("\n\n")
        state = re.search(r"^Subscription-State:\s*(.+)$", head, re.M | re.I)
        out.append((state.group(1).strip() if state else "", body.strip().encode()))
    return out


def document(body: bytes) -> tuple[int, list[etree._Element]]:
    doc = etree.fromstring(body)
    SCHEMA.assertValid(doc)  # RFC 4235 s4.1
    assert doc.get("state") == "full" and doc.get("entity") == "sip:102@pbx.test"
    return int(doc.get("version") or "-1"), doc.findall("d:dialog", NS)


def wait_for(pbx: EngineProcess, event: str, count: int, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while len(pbx.events(event)) < count:
        assert time.monotonic() < deadline, f"no {event!r} in the engine's log"
        time.sleep(0.05)


def test_subscriber_sees_early_confirmed_terminated_and_unsubscribes(
        pbx: EngineProcess, tmp_path: Path) -> None:
    phone102, caller, watcher = free_port(), free_port(), free_port()
    register_udp(pbx, "102", "pw102", phone102)
    trace = tmp_path / "subscriber-messages.log"
    before = len(pbx.events("subscribed"))
    subscriber = in_background(lambda: run_sipp(
        "subscribe_dialog.xml", pbx.target, None, calls=1, rate=1, timeout=60,
        extra_args=["-p", str(watcher), "-t", "u1", "-au", "103", "-ap", "pw103",
                    "-trace_msg", "-message_file", str(trace)],
        keys={"watcher": "103", "target": "102", "domain": "pbx.test"},
        workdir=tmp_path / "subscriber"))
    wait_for(pbx, "subscribed", before + 1)
    callee = start_uas(tmp_path, "answer", phone102, pbx.target, ring_ms=1000)
    call = run_uac(tmp_path, pbx.target, caller="101", dialled="102", expect=200,
                   auth=("101", "pw101"), port=caller, hold_ms=1000)
    assert call.ok, call.describe()
    assert callee.result().ok
    result = subscriber.result()
    assert result.ok, result.describe()

    got = notifies_in(trace)
    assert len(got) == 6, got
    docs = [document(body) for _, body in got]
    assert [v for v, _ in docs] == [0, 1, 2, 3, 4, 5]  # per subscription, +1 each
    states = [[d.findtext("d:state", namespaces=NS) for d in dialogs] for _, dialogs in docs]
    assert states[:5] == [["terminated"], ["trying"], ["early"], ["confirmed"],
                          ["terminated"]]
    idle = docs[0][1][0]
    assert idle.get("call-id") is None  # idle: a terminated dialog that names no call
    ringing = docs[2][1][0]
    assert ringing.get("direction") == "recipient" and ringing.get("call-id")
    assert ringing.get("remote-tag")
    assert ringing.findtext("d:remote/d:identity", namespaces=NS) == "sip:101@pbx.test"
    assert ringing.findtext("d:local/d:identity", namespaces=NS) == "sip:102@pbx.test"
    confirmed = docs[3][1][0]
    assert confirmed.get("call-id") == ringing.get("call-id") and confirmed.get("local-tag")
    assert [s for s, _ in got[:5]] == [s for s, _ in got[:5] if s.startswith("active;")]
    assert got[5][0] == "terminated"  # Expires: 0 ended it, with a final NOTIFY
    metrics = pbx.metrics()
    assert metrics['switchboard_subscriptions_active{package="dialog"}'] == 0
    assert metrics['switchboard_notifies_sent_total{package="dialog"}'] >= 6


def test_wrong_password_is_challenged_and_refused(pbx: EngineProcess, tmp_path: Path) -> None:
    before = len(pbx.events("subscribed"))
    result = run_sipp(
        "subscribe_wrong.xml", pbx.target, None, calls=1, rate=1, timeout=20,
        extra_args=["-p", str(free_port()), "-t", "u1", "-au", "103", "-ap", "not-pw103"],
        keys={"watcher": "103", "target": "102", "domain": "pbx.test"},
        workdir=tmp_path / "wrong")
    assert result.ok, result.describe()  # 407, then 407 again: never a 200
    failed = [e for e in pbx.events("authentication failed") if e.get("method") == "SUBSCRIBE"]
    assert failed and failed[-1]["username"] == "103"
    assert len(pbx.events("subscribed")) == before
    assert pbx.metrics()['switchboard_auth_failures_total{method="SUBSCRIBE"}'] >= 1
