"""Trunks over TCP and TLS, end to end: two engines, one the other's carrier.

Engine A is the office under test: its trunk ``carrier`` has ``transport =
"tcp"`` or ``"tls"`` and points at engine B. Engine B plays the carrier: a
real SIP server (the same product, not a mock) listening on UDP/TCP and, for
TLS, on its own TLS port with a certificate made here by ``openssl`` (A
checks it against that certificate: ``serve --tls-ca``). A phone on A calls
an external number; A opens the connection to B (RFC 3261 s18.1.1), B takes
the call as a trunk call and its voicemail answers; the 200 comes back over
the same connection to A and on to the phone, and the BYE goes the same way.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import EngineProcess, free_port
from tests.e2e_helpers import PHONE_SYSTEM, SALES, Ua, user_toml

pytestmark = pytest.mark.peers

OFFICE = PHONE_SYSTEM + """
[[trunks]]
name = "carrier"
host = "127.0.0.1"
port = {port}
transport = "{transport}"
""" + SALES + user_toml("101")

CARRIER = """
[system]
domain = "carrier.test"
rtp_ports = "{low}-{high}"

[[trunks]]
name = "office"
host = "127.0.0.1"
port = 5
inbound_from = ["127.0.0.1/32"]

[[departments]]
name = "Customers"
caller_id = "+15145550900"

[[numbers]]
number = "+15145550900"
route_to = "extension:104"

[[numbers]]
number = "+15145550104"
route_to = "extension:104"

[[users]]
extension = "104"
name = "A customer"
password = "pw104"
department = "Customers"
"""


def make_certificate(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "carrier-cert.pem", folder / "carrier-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def ports(seed: int) -> tuple[int, int]:
    low = 40000 + (seed % 10000) // 2 * 2
    return low, low + 49


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_a_call_to_the_carrier_goes_over_the_trunks_transport(tmp_path: Path,
                                                             transport: str) -> None:
    carrier_dir, office_dir = tmp_path / "carrier", tmp_path / "office"
    carrier_dir.mkdir()
    office_dir.mkdir()
    low, high = ports(free_port())
    (carrier_dir / "directory.toml").write_text(CARRIER.format(low=low, high=high))
    extra: list[str] = []
    office_extra: list[str] = []
    tls_port = free_port()
    if transport == "tls":
        cert, key = make_certificate(tmp_path)
        extra = ["--tls", f"127.0.0.1:{tls_port}", "--tls-cert", str(cert),
                 "--tls-key", str(key)]
        office_extra = ["--tls-ca", str(cert)]
    carrier = EngineProcess(carrier_dir, carrier_dir / "directory.toml", extra).start()
    office = None
    phone = None
    try:
        port = tls_port if transport == "tls" else carrier.port
        (office_dir / "directory.toml").write_text(OFFICE.format(
            low=low + 50, high=high + 50, port=port, transport=transport))
        office = EngineProcess(office_dir, office_dir / "directory.toml", office_extra).start()
        phone = Ua(office.sip)
        uri = "sip:+15145550104@pbx.test"
        phone.call_with_auth(uri, "101", "pw101", "trunk-" + transport)
        assert phone.ok is not None and phone.media is not None
        phone.send_tone(1000, 1200)
        bye = (f"BYE {phone.ok.contacts[0].uri} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP 127.0.0.1:{phone.port};branch=z9hG4bKtbye;rport\r\n"
               f"Max-Forwards: 70\r\nFrom: {phone.ok.get('from')}\r\nTo: {phone.ok.get('to')}"
               f"\r\nCall-ID: {phone.ok.call_id}\r\nCSeq: 3 BYE\r\nContent-Length: 0\r\n\r\n")
        phone.sip.sendto(bye.encode(), office.sip)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if any(e.get("answered") for e in carrier.events("call ended")):
                break
            time.sleep(0.1)
        # The carrier saw the INVITE arrive over the trunk's transport, from the office.
        assert any(e.get("answered") for e in carrier.events("call ended")), carrier.log()
        [routed] = carrier.events("call routed")
        assert routed.get("trunk") == "office" and routed.get("transport") == transport
        # The message the phone left reached the carrier's voicemail, over the trunk.
        listed = carrier.cli("voicemail", "list", "104", "--json")
        assert listed.returncode == 0, listed.stderr
        [message] = json.loads(listed.stdout)
        assert message["caller"] == "+15145550100"  # the office's caller ID
    finally:
        if phone is not None:
            phone.close()
        if office is not None:
            office.stop()
        carrier.stop()
