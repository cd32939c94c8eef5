"""Desk-phone features end to end: SIPp phones, the real engine process (media
relayed, the default) in between.

* Directed pickup: 101 calls 102, whose phone rings; 103 dials ``**102`` and
  gets the call: 102's phone is cancelled, the caller and the picker are answered
  (each from the engine's own RTP endpoint), and when the picker hangs up the
  caller gets the BYE.
* The audio path of a picked-up call: the caller and the picker are plain UDP
  sockets here (the test must know their RTP ports and the engine's), and RTP
  sent by each reaches the other through the engine.
* Pickup from a BLF key: 103 fetches 102's dialog state (SUBSCRIBE, ``Expires:
  0``) while 102 rings, reads the ringing dialog's call-id and tags from the
  NOTIFY, and sends an INVITE with ``Replaces`` (RFC 3891) built from them: it
  gets the call as ``**102`` would. A Replaces naming no ringing call is 481.
* Park: 102 answers and transfers its caller to ``*0`` (the final NOTIFY says
  "200 Parked on 701", checked by the SIPp phone, and 102 hears the orbit before
  the engine's BYE); 103 dials ``*1701`` and gets
  the caller, who gets the BYE when 103 hangs up.
* Intercom: ``*9102``'s INVITE to 102 carries the auto-answer headers (the SIPp
  phone checks them, failing the call when they are missing).
"""

from __future__ import annotations

import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from lxml import etree

from engine.sip.auth import build_authorization
from engine.sip.message import Request, Response, parse
from media.sdp import parse_sdp
from tests.conftest import EngineProcess, free_port
from tests.e2e_helpers import register_udp

sys.path.insert(0, str(Path(__file__).resolve().parent / "sipp"))
from calls import Background, in_background, run_uac, start_phone, start_uas, uac_scenario
from sipp import SippResult, run_sipp

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


def phone_102(pbx: EngineProcess, tmp_path: Path, scenario: str, name: str) -> Background:
    """102's phone: SIPp playing ``scenario`` (XML text) on 102's registered port,
    listening once this returns."""
    xml = tmp_path / f"{name}.xml"
    xml.write_text(scenario)
    return start_phone(xml, PORTS["102"], pbx.target, tmp_path / name)


def ring_102(pbx: EngineProcess, tmp_path: Path,
             place: Callable[[], SippResult]) -> tuple[Background, Background]:
    """102's SIPp phone rings (180, then takes the CANCEL: 200, 487, ACK) and
    ``place`` calls 102 in the background; back once the engine logs 102's leg
    ringing, with the phone and the call in progress."""
    ringing = start_uas(tmp_path, "noanswer", PORTS["102"], pbx.target)

    def rang() -> int:
        return sum(1 for e in pbx.events("ringing") if str(e.get("leg", "")).startswith("102"))

    before = rang()
    call = in_background(place)
    deadline = time.monotonic() + 10
    while rang() == before:
        assert time.monotonic() < deadline, "102 never rang"
        time.sleep(0.05)
    return ringing, call


def caller_101(pbx: EngineProcess, tmp_path: Path) -> Callable[[], SippResult]:
    """SIPp as 101 calling 102, kept on the call until the engine's BYE (the picker or
    the retriever hangs up first)."""
    return lambda: run_uac(tmp_path, pbx.target, caller="101", dialled="102", expect=200,
                           auth=("101", "pw101"), port=PORTS["caller"], wait_bye_ms=20000)


def test_directed_pickup_takes_the_call_ringing_102(pbx: EngineProcess, tmp_path: Path) -> None:
    ringing, caller = ring_102(pbx, tmp_path, caller_101(pbx, tmp_path))
    ok(run_uac(tmp_path, pbx.target, caller="103", dialled="**102", expect=200,
               auth=("103", "pw103"), port=PORTS["picker"], hold_ms=1000))
    ok(ringing.result())  # 102 was cancelled (200 to CANCEL, 487, ACK)
    ok(caller.result())  # answered, then the BYE when the picker hung up
    [picked] = pbx.events("picked up")
    assert picked["picker"] == "103" and picked["directed"] is True
    answered = [e for e in pbx.events("call answered") if e.get("leg") == "103 pickup"]
    assert answered, "the caller's call was answered by the picker's leg"
    assert pbx.metrics()['switchboard_pickups_total{outcome="directed"}'] == 1.0


def _ok_in_dialog() -> str:
    return """  <send>
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
"""


# --- pickup from a BLF key: Replaces read from the dialog-info document -------------

# A fetch (RFC 6665 s4.1.2.1: Expires 0 on a new SUBSCRIBE): one NOTIFY with the
# whole state, then the subscription is over. The test reads the body from SIPp's
# message trace: SIPp could capture the values, but its INVITE would have to leave
# on another Call-ID than the SUBSCRIBE's, which one SIPp call cannot receive on.
FETCH_DIALOGS = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="fetch 102's dialogs">
""" + "".join(f"""
  <send retrans="500">
    <![CDATA[
      SUBSCRIBE sip:102@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      Max-Forwards: 70
      From: <sip:103@pbx.test>;tag=[pid]BLF[call_number]
      To: <sip:102@pbx.test>
      Call-ID: [call_id]
      CSeq: {cseq} SUBSCRIBE
      Contact: <sip:103@[local_ip]:[local_port]>
      Event: dialog
      Accept: application/dialog-info+xml
      Expires: 0{auth}
      Content-Length: 0
    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="{status}"{extra}/>
""" for cseq, auth, status, extra in ((1, "", 407, ' auth="true"'),
                                      (2, "\n      [authentication]", 200, ""))) + """
  <recv request="NOTIFY">
    <action>
      <ereg regexp="^ *terminated" search_in="hdr" header="Subscription-State:"
            check_it="true" assign_to="ended"/>
    </action>
  </recv>
""" + _ok_in_dialog() + """
  <Reference variables="ended"/>
</scenario>
"""

NS = {"d": "urn:ietf:params:xml:ns:dialog-info"}


def ringing_dialog(trace: Path) -> etree._Element:
    """The early dialog in the one NOTIFY of a SIPp message trace."""
    text = trace.read_text(errors="replace").replace("\r\n", "\n")
    start = text.find("NOTIFY sip:")
    assert start >= 0, "no NOTIFY in the trace"
    body = text[start:].partition("\n\n")[2]
    body = body[:body.index("</dialog-info>") + len("</dialog-info>")]
    doc = etree.fromstring(body.strip().encode())
    early = [d for d in doc.findall("d:dialog", NS) if d.findtext("d:state", namespaces=NS)
             == "early"]
    assert len(early) == 1, body
    return early[0]


def run_replacing_invite(tmp_path: Path, pbx: EngineProcess, replaces: str, expect: int,
                         name: str) -> object:
    """103's INVITE to 102 with ``Replaces: replaces`` (the SIPp caller scenario with
    the header added), expecting ``expect``; a 200 is held 1 s, then hung up."""
    work = tmp_path / name
    work.mkdir()
    xml = uac_scenario(work, auth=True, expect=expect, hold_ms=1000)
    text = xml.read_text()
    for cseq in (1, 2):
        text = text.replace(f"CSeq: {cseq} INVITE\n",
                            f"CSeq: {cseq} INVITE\n      Replaces: {replaces}\n")
    assert text.count("Replaces:") == 2  # both INVITEs (before and after the 407)
    xml.write_text(text)
    return run_sipp(xml, pbx.target, None, calls=1, rate=1, timeout=30,
                    extra_args=["-s", "102", "-p", str(PORTS["picker"]), "-t", "u1",
                                "-au", "103", "-ap", "pw103"],
                    keys={"caller": "103", "domain": "pbx.test"}, workdir=work / "sipp")


def test_blf_pickup_by_invite_with_replaces_read_from_the_notify(
        pbx: EngineProcess, tmp_path: Path) -> None:
    before_picked = len(pbx.events("picked up"))
    ringing, caller = ring_102(pbx, tmp_path, caller_101(pbx, tmp_path))
    xml, trace = tmp_path / "fetch.xml", tmp_path / "fetch-messages.log"
    xml.write_text(FETCH_DIALOGS)
    fetched = run_sipp(xml, pbx.target, None, calls=1, rate=1, timeout=20,
                       extra_args=["-p", str(free_port()), "-t", "u1", "-au", "103",
                                   "-ap", "pw103", "-trace_msg", "-message_file", str(trace)],
                       keys={"domain": "pbx.test"}, workdir=tmp_path / "fetch")
    ok(fetched)
    dialog = ringing_dialog(trace)
    assert dialog.get("direction") == "recipient"
    call_id, engine_tag = dialog.get("call-id"), dialog.get("remote-tag")
    assert call_id and engine_tag
    # the engine's tag as to-tag; the phone's own tag (local-tag) as from-tag, which a
    # ringing dialog's document does not carry yet: the engine matches on its own tag
    phone_tag = dialog.get("local-tag") or "none"
    # a Replaces naming no ringing call: 481 (RFC 3891 s3), and 102 keeps ringing
    ok(run_replacing_invite(tmp_path, pbx, f"{call_id}x;to-tag={engine_tag};from-tag={phone_tag}",
                            481, "stale"))
    ok(run_replacing_invite(tmp_path, pbx, f"{call_id};to-tag=other;from-tag={phone_tag}",
                            481, "wrong-tag"))
    assert len(pbx.events("picked up")) == before_picked
    ok(run_replacing_invite(tmp_path, pbx, f"{call_id};to-tag={engine_tag};from-tag={phone_tag}",
                            200, "replaces"))
    ok(ringing.result())  # 102 was cancelled (200 to CANCEL, 487, ACK)
    ok(caller.result())  # answered, then the BYE when the picker hung up
    picked = pbx.events("picked up")[before_picked:]
    assert len(picked) == 1 and picked[0]["picker"] == "103" and picked[0]["directed"] is True
    cancels = [e for e in pbx.events("call answered") if e.get("leg") == "103 pickup"]
    assert cancels, "the caller's call was answered by the picker's leg"


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
""" + _ok_in_dialog() + """</scenario>
"""


def test_intercom_invite_carries_the_auto_answer_headers(pbx: EngineProcess,
                                                          tmp_path: Path) -> None:
    phone = phone_102(pbx, tmp_path, INTERCOM_UAS, "uas-intercom")
    ok(run_uac(tmp_path, pbx.target, caller="101", dialled="*9102", expect=200,
               auth=("101", "pw101"), port=PORTS["caller"]))
    ok(phone.result())


# --- the audio path: phones on plain UDP sockets, so the test knows every port ---------


class UdpPhone:
    """A phone on 127.0.0.1 sockets (SIP and RTP) that places one call with digest
    auth: enough SIP to be a caller or a picker, and RTP to hear through the call."""

    def __init__(self, pbx: EngineProcess, ext: str) -> None:
        self.pbx, self.ext = pbx, ext
        self.sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sip.bind(("127.0.0.1", 0))
        self.sip.settimeout(10)
        self.rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rtp.bind(("127.0.0.1", 0))
        self.rtp.settimeout(2)
        self.port = self.sip.getsockname()[1]
        self.call_id = f"{ext}-{time.time_ns()}@127.0.0.1"
        self.cseq = 1

    def close(self) -> None:
        self.sip.close()
        self.rtp.close()

    def _invite(self, dialled: str, auth: str | None) -> bytes:
        sdp = (f"v=0\r\no={self.ext} 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
               f"t=0 0\r\nm=audio {self.rtp.getsockname()[1]} RTP/AVP 8 0 101\r\n"
               "a=rtpmap:101 telephone-event/8000\r\n").encode()
        lines = [f"INVITE sip:{dialled}@pbx.test SIP/2.0",
                 f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{time.time_ns()};rport",
                 f'From: "User {self.ext}" <sip:{self.ext}@pbx.test>;tag=t{self.ext}',
                 f"To: <sip:{dialled}@pbx.test>", f"Call-ID: {self.call_id}",
                 f"CSeq: {self.cseq} INVITE", f"Contact: <sip:{self.ext}@127.0.0.1:{self.port}>",
                 "Max-Forwards: 70", "Content-Type: application/sdp"]
        if auth:
            lines.append(f"Proxy-Authorization: {auth}")
        return ("\r\n".join([*lines, f"Content-Length: {len(sdp)}", "", ""])).encode() + sdp

    def _in_dialog(self, method: str, ok: Response, cseq: int, via: str = "") -> bytes:
        contact = ok.contacts[0].uri
        lines = [f"{method} {contact} SIP/2.0",
                 via or f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{time.time_ns()}",
                 f"From: {ok.get('from')}", f"To: {ok.get('to')}", f"Call-ID: {self.call_id}",
                 f"CSeq: {cseq} {method}", "Max-Forwards: 70", "Content-Length: 0", "", ""]
        return "\r\n".join(lines).encode()

    def _final(self) -> Response:
        while True:
            msg = parse(self.sip.recv(65535))
            if isinstance(msg, Response) and msg.status >= 200:
                return msg

    def call(self, dialled: str) -> Response:
        """INVITE, the 407 answered, then the final answer (a 200 is ACKed)."""
        self.sip.sendto(self._invite(dialled, None), self.pbx.sip)
        challenge = self._final()
        assert challenge.status == 407, challenge.status
        ack = (f"ACK sip:{dialled}@pbx.test SIP/2.0\r\nVia: {challenge.get('via')}\r\n"
               f"From: {challenge.get('from')}\r\nTo: {challenge.get('to')}\r\n"
               f"Call-ID: {self.call_id}\r\nCSeq: {self.cseq} ACK\r\nMax-Forwards: 70\r\n"
               "Content-Length: 0\r\n\r\n")
        self.sip.sendto(ack.encode(), self.pbx.sip)
        auth = build_authorization(challenge.get("proxy-authenticate") or "", "INVITE",
                                   f"sip:{dialled}@pbx.test", self.ext, PASSWORDS[self.ext], "cn")
        self.cseq += 1
        self.sip.sendto(self._invite(dialled, auth), self.pbx.sip)
        final = self._final()
        if final.status == 200:
            self.sip.sendto(self._in_dialog("ACK", final, self.cseq), self.pbx.sip)
        return final

    def hang_up(self, ok: Response) -> None:
        self.sip.sendto(self._in_dialog("BYE", ok, self.cseq + 1), self.pbx.sip)
        assert self._final().status == 200

    def send_rtp(self, to_port: int, count: int = 25) -> None:
        """``count`` PCMA packets of 20 ms to the engine's ``to_port``."""
        for seq in range(count):
            header = struct.pack("!BBHII", 0x80, 8, seq, seq * 160, 0x1234)
            self.rtp.sendto(header + b"\xd5" * 160, ("127.0.0.1", to_port))
            time.sleep(0.02)

    def heard(self) -> int:
        """RTP packets that arrived (waiting up to 2 s for the first)."""
        got = 0
        try:
            while True:
                self.rtp.recv(2048)
                got += 1
                self.rtp.settimeout(0.3)
        except TimeoutError:
            return got


def engine_port(resp: Response) -> int:
    audio = parse_sdp(resp.body).audio()
    assert audio is not None
    return audio.port


def test_picked_up_call_carries_audio_both_ways(pbx: EngineProcess, tmp_path: Path) -> None:
    caller, picker = UdpPhone(pbx, "101"), UdpPhone(pbx, "103")
    try:
        ringing, answered = ring_102(
            pbx, tmp_path, lambda: caller.call("102"))  # type: ignore[arg-type,return-value]
        ok_picker = picker.call("**102")
        assert ok_picker.status == 200
        answered.thread.join(10)
        ok_caller = answered.box[0]
        assert isinstance(ok_caller, Response) and ok_caller.status == 200
        ok(ringing.result())
        picker.send_rtp(engine_port(ok_picker))
        assert caller.heard() >= 10, "the caller does not hear the picker"
        caller.send_rtp(engine_port(ok_caller))
        assert picker.heard() >= 10, "the picker does not hear the caller"
        picker.hang_up(ok_picker)
        bye = parse(caller.sip.recv(65535))
        assert isinstance(bye, Request) and bye.method == "BYE"
    finally:
        caller.close()
        picker.close()


PARKER_UAS = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="answers, then parks the caller (REFER to *0)">
  <recv request="INVITE" rrs="true">
    <action>
      <ereg regexp=".*" search_in="hdr" header="From:" assign_to="from"/>
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
      Contact: <sip:102@[local_ip]:[local_port]>
      Content-Type: application/sdp
      Content-Length: [len]

v=0
o=sipp 1 1 IN IP4 [local_ip]
s=-
c=IN IP4 [local_ip]
t=0 0
m=audio 20000 RTP/AVP 8 0 101
a=rtpmap:101 telephone-event/8000

    ]]>
  </send>
  <recv request="ACK"/>
  <pause milliseconds="500"/>
  <send retrans="500">
    <![CDATA[
      REFER [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: <sip:102@pbx.test>;tag=[pid]SIPpTag01[call_number]
      To: [$from]
      Call-ID: [call_id]
      CSeq: 1 REFER
      Contact: <sip:102@[local_ip]:[local_port]>
      Refer-To: <sip:*0@pbx.test>
      Referred-By: <sip:102@pbx.test>
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
  <recv response="202"/>
  <recv request="NOTIFY"/>
""" + _ok_in_dialog() + """
  <recv request="NOTIFY">
    <action>
      <ereg regexp="SIP/2.0 200 Parked on 701" search_in="body" check_it="true"
            assign_to="parked"/>
    </action>
  </recv>
""" + _ok_in_dialog() + """
  <Reference variables="parked"/>
  <recv request="BYE"/>
""" + _ok_in_dialog() + """
</scenario>
"""


def test_park_by_transfer_to_star_0_then_retrieve_from_another_phone(
        pbx: EngineProcess, tmp_path: Path) -> None:
    parker = phone_102(pbx, tmp_path, PARKER_UAS, "uas-parker")
    caller = in_background(caller_101(pbx, tmp_path))
    ok(parker.result())  # answered, REFER to *0, NOTIFY "200 Parked on 701", BYE
    [told] = pbx.events("orbit told")  # "parked on 7 0 1" played to 102 before the BYE
    assert told["orbit"] == "701"
    [parked] = pbx.events("parked")
    assert parked["orbit"] == "701" and parked["parker"] == "102"
    assert pbx.metrics()["switchboard_parked_calls"] == 1.0
    ok(run_uac(tmp_path, pbx.target, caller="103", dialled="*1701", expect=200,
               auth=("103", "pw103"), port=PORTS["picker"], hold_ms=1000))
    ok(caller.result())  # the retriever hung up: the caller got the BYE
    [unparked] = pbx.events("unparked")
    assert unparked["orbit"] == "701" and unparked["by"] == "103"
    assert pbx.metrics()["switchboard_parked_calls"] == 0.0
