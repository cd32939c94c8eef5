"""The number contract end to end: a real engine, scripted UAs over UDP sockets.

``trunk_in`` is the carrier sending calls in (its port is the trunk's
``inbound_port``), ``carrier`` is where the engine sends calls out (the trunk's
host:port); phones register with digest from their own sockets and answer the
calls the engine sends them. RTP is read in the background (``RtpTap``).

- a carrier that writes a DID as digits only gets that number's hold music and
  recording (not the system's music, not "no recording");
- ``record_calls = "external"``: an internal call is not recorded, a trunk call is;
- ``record_outbound`` records a call whose caller ID is withheld (``*82``); the
  carrier sees an anonymous From and the named P-Asserted-Identity;
- a phone's P-Preferred-Identity picks an allowed number (and goes no further);
  ``route explain`` says so, by CLI and admin API; calls are counted by billing
  group.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from engine.sip.message import Request
from media.tones import dominant_frequency, goertzel, tone
from media.wav import write_wav
from tests.conftest import EngineProcess, free_port
from tests.e2e_helpers import SALES, Ua, sdp_offer, user_toml

pytestmark = pytest.mark.peers

DID_HZ, SYSTEM_HZ = 440.0, 2000.0
CALLER = "+15145550199"

DIRECTORY = """
[system]
domain = "pbx.test"
rtp_ports = "{low}-{high}"
hold_music = ["{system_music}"]

[[trunks]]
name = "carrier"
host = "127.0.0.1"
port = {carrier}
inbound_from = ["127.0.0.1/32"]
inbound_port = {trunk_in}  # phones share 127.0.0.1: the carrier is this port
""" + SALES.replace('route_to = "busy"', '''route_to = "busy"
caller_id_name = "Example Sales"
record_outbound = true
billing_group = "sales"''') + """
[[numbers]]
number = "+15145550104"
route_to = "extension:104"
hold_music = ["{did_music}"]
record_inbound = true
billing_group = "support"

[[numbers]]
number = "+15145550102"
route_to = "extension:102"

[[numbers]]
number = "+15145550200"
route_to = "busy"
caller_id_name = "Example Support"
outbound_callers = ["101"]
""" + user_toml("101") + user_toml("102", 'record_calls = "external"\n') + user_toml("104")


@dataclass
class Office:
    engine: EngineProcess
    trunk_in: Ua  # the carrier's calls in
    carrier: Ua  # the carrier answering calls out
    phones: dict[str, Ua]  # registered phones, by extension
    caller: Ua  # 101's phone placing calls (not registered: it only calls)


@pytest.fixture(scope="module")
def office(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Office]:
    work = tmp_path_factory.mktemp("numbers")
    trunk_port, carrier_port = free_port(), free_port()
    low = 40000 + (free_port() % 10000) // 2 * 2
    # whole periods in 1 s, no fades: the players loop them without a seam
    write_wav(work / "did.wav", tone(DID_HZ, 1000, level=0.4, ramp_ms=0))
    write_wav(work / "system.wav", tone(SYSTEM_HZ, 1000, level=0.4, ramp_ms=0))
    (work / "directory.toml").write_text(DIRECTORY.format(
        low=low, high=low + 99, carrier=carrier_port, trunk_in=trunk_port,
        did_music=work / "did.wav", system_music=work / "system.wav"))
    engine = EngineProcess(work, work / "directory.toml").start()
    uas: list[Ua] = []
    try:
        trunk_in = Ua(engine.sip, trunk_port)
        carrier = Ua(engine.sip, carrier_port)
        caller = Ua(engine.sip)
        uas += [trunk_in, carrier, caller]
        phones = {}
        for ext in ("102", "104"):
            phones[ext] = Ua(engine.sip)
            uas.append(phones[ext])
            phones[ext].register(ext, f"pw{ext}")
        yield Office(engine, trunk_in, carrier, phones, caller)
    finally:
        for ua in uas:
            ua.close()
        code = engine.stop()
        assert code == 0, f"engine exit {code}:\n{engine.log()[-3000:]}"


def recordings(engine: EngineProcess, call_id: str, limit: float = 5.0) -> list[dict[str, Any]]:
    """The recordings of ``call_id`` (``recordings list --json``), polled until one is
    written or ``limit`` s have passed."""
    stop = time.monotonic() + limit
    while True:
        listed = engine.cli("recordings", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        rows = [r for r in json.loads(listed.stdout) if r["call_id"] == call_id]
        if rows or time.monotonic() >= stop:
            return rows
        time.sleep(0.2)


def trunk_call(office: Office, did_uri: str, callee: Ua, call_id: str) -> None:
    """The carrier calls ``did_uri``; ``callee`` answers; the call is up."""
    ua = office.trunk_in
    ua.invite(did_uri, CALLER, call_id)
    callee.take_call()
    ua.answered(ua.final(1), did_uri, f"z9hG4bK{call_id}ack")


def test_a_digits_only_did_gets_its_numbers_hold_music_and_recording(office: Office) -> None:
    phone = office.phones["104"]
    caller = office.trunk_in
    trunk_call(office, "sip:15145550104@127.0.0.1", phone, "digits-only")
    caller.send_tone(1000, 400)  # something to record from each side
    phone.send_tone(1500, 400)
    # the caller holds: the engine answers, 104 hears the DID's playlist
    held_at = time.monotonic()
    hold = sdp_offer(caller.rtp_port).replace(b"a=rtpmap:0", b"a=sendonly\r\na=rtpmap:0")
    caller.in_dialog("INVITE", 2, "z9hG4bKdigits-only-hold", hold)
    ok = caller.response_to("INVITE", 2)
    assert ok.status == 200 and b"a=recvonly" in ok.body, ok.to_bytes()[:600]
    caller.ack(ok, "", "z9hG4bKdigits-only-holdack")
    music = phone.tap.wait_audio(50, held_at + 0.3, 5)  # 1 s of what 104 hears on hold
    heard = {"hz": round(dominant_frequency(music, 8000), 1),
             "did": round(goertzel(music, 8000, DID_HZ), 4),
             "system": round(goertzel(music, 8000, SYSTEM_HZ), 4)}
    assert abs(heard["hz"] - DID_HZ) < 15 and heard["did"] > 0.1, heard
    assert heard["system"] < 0.1 * heard["did"], heard
    caller.hang_up(3)
    phone.engine_bye(5)
    [rec] = recordings(office.engine, "digits-only")
    assert rec["reason"] == "number +15145550104 records inbound calls", rec
    assert (rec["caller"], rec["callee"]) == (CALLER, "104"), rec
    [routed] = [e for e in office.engine.events("call routed")
                if e["call_id"] == "digits-only"]
    assert routed["callee"] == "15145550104" and routed["billing_group"] == "support"


def test_record_calls_external_records_a_trunk_call_not_an_internal_one(
        office: Office) -> None:
    phone = office.phones["102"]
    # an internal call from 101 to 102: not external, not recorded
    office.caller.call_with_auth("sip:102@pbx.test", "101", "pw101", "internal-102",
                                 callee=phone)
    office.caller.send_tone(1000, 400)
    office.caller.hang_up()
    phone.engine_bye(5)
    # the same user called through the trunk: recorded
    trunk_call(office, "sip:+15145550102@127.0.0.1", phone, "external-102")
    office.trunk_in.send_tone(1000, 400)
    office.trunk_in.hang_up(3)
    phone.engine_bye(5)
    [rec] = recordings(office.engine, "external-102")
    assert rec["reason"] == "user 102 records external calls", rec
    assert (rec["caller"], rec["callee"]) == (CALLER, "102"), rec
    # the internal call ended first: had it been recorded, it would be listed by now
    assert recordings(office.engine, "internal-102", limit=0) == []
    answered = {e["call_id"] for e in office.engine.events("call ended") if e.get("answered")}
    assert {"internal-102", "external-102"} <= answered


def carrier_leg(office: Office, call_id: str, dialled: str, extra: str = "") -> Request:
    """101 calls ``dialled`` through the trunk; the carrier answers; the INVITE it got."""
    leg = office.caller.call_with_auth(f"sip:{dialled}@pbx.test", "101", "pw101", call_id,
                                       extra, callee=office.carrier)
    assert leg is not None
    return leg


def test_a_withheld_outbound_call_is_recorded_and_asserted_to_the_carrier(
        office: Office) -> None:
    leg = carrier_leg(office, "withheld", "*82+15145550123")
    assert leg.uri.user == "+15145550123"
    assert leg.from_.uri.user == "anonymous" and leg.get("privacy") == "id"
    assert leg.get("p-asserted-identity") == '"Example Sales" <sip:+15145550100@pbx.test>'
    assert b"Alice" not in leg.to_bytes()  # 101's own name never goes to the carrier
    office.caller.send_tone(1000, 400)
    office.caller.hang_up()
    office.carrier.engine_bye(5)
    [rec] = recordings(office.engine, "withheld")
    assert rec["reason"] == "number +15145550100 records outbound calls (caller ID withheld)"


def test_a_phone_presents_an_allowed_number_and_explain_shows_it(office: Office) -> None:
    leg = carrier_leg(office, "ppi", "+15145550124",
                      'P-Preferred-Identity: "Support" <sip:+15145550200@pbx.test>\r\n')
    assert (leg.get("from") or "").startswith('"Example Support" <sip:+15145550200@pbx.test>')
    assert leg.get("p-asserted-identity") == '"Example Support" <sip:+15145550200@pbx.test>'
    assert leg.get("p-preferred-identity") is None  # removed before the call goes out
    office.caller.hang_up()
    office.carrier.engine_bye(5)
    [routed] = [e for e in office.engine.events("call routed") if e["call_id"] == "ppi"]
    assert routed["caller_id"] == "+15145550200"

    engine = office.engine
    out = engine.cli("route", "explain", "--from", "102", "--to", "+15145550124",
                     "--preferred-identity", "+15145550200")
    assert out.returncode == 0, out.stderr
    assert ('identity: +15145550100 "Example Sales" (department Sales); billing group sales; '
            "P-Preferred-Identity +15145550200 ignored: 102 is not in the outbound_callers "
            "of +15145550200") in out.stdout
    out = engine.cli("route", "explain", "--from", "101", "--to", "+15145550124",
                     "--preferred-identity", "tel:+15145550200", "--json")
    assert out.returncode == 0, out.stderr
    identity = json.loads(out.stdout)["identity"]
    assert (identity["caller_id"], identity["name"]) == ("+15145550200", "Example Support")
    query = urllib.parse.urlencode({"from": "101", "to": "*82+15145550124",
                                    "preferred_identity": "+15145550200"})
    api = engine.api_get(f"/route/explain?{query}")
    assert api["identity"]["caller_id"] == "+15145550200" and api["identity"]["privacy"]
    assert api["identity"]["origin"].startswith("P-Preferred-Identity")

    metrics = engine.metrics()
    assert metrics['switchboard_calls_by_billing_group_total{billing_group="sales"}'] >= 1
    assert metrics['switchboard_calls_by_billing_group_total{billing_group="support"}'] >= 1
    assert metrics['switchboard_calls_by_billing_group_total{billing_group="none"}'] >= 1
    assert not any("billing_group" in key and "Example" in key for key in metrics)


def test_the_engine_refuses_a_caller_id_that_is_not_one_of_its_numbers(
        tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[system]\ndomain = \"pbx.test\"\n" + SALES.replace(
        'number = "+15145550100"', 'number = "+15145550101"') + user_toml("101")
        + 'outbound_caller_id = "+18005550100"\n')
    result = EngineProcess(tmp_path, bad).cli("provision", "check", str(bad))
    assert result.returncode != 0
    assert "departments[0].caller_id: '+15145550100' is not one of [[numbers]]" in (
        result.stderr + result.stdout)
    assert "users[0].outbound_caller_id: '+18005550100' is not one of [[numbers]]" in (
        result.stderr + result.stdout)
