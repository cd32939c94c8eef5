"""SIPp call scenarios, generated per test: a caller (UAC) and scripted phones (UAS).

The UAC places one call and expects one final status; with auth it answers the
engine's 407 (SIPp's ``-au``/``-ap``). A UAS plays one phone behaviour:

* ``answer``:   180, rings ``ring_ms``, 200 with SDP, takes the ACK, then the BYE;
* ``busy``:     486;
* ``refuse``:   180, then 603 Decline (a rebound the far end refuses);
* ``noanswer``: 180 and rings until the engine CANCELs (200, 487, ACK);
* ``early``:    183 with SDP (early media, as a mobile network plays), until CANCEL.

Each returns the path of an XML file written under ``work``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sipp import SippResult, run_sipp

SDP = """v=0
o=sipp 1 1 IN IP4 [local_ip]
s=-
c=IN IP4 [local_ip]
t=0 0
m=audio 20000 RTP/AVP 0 8 101
a=rtpmap:101 telephone-event/8000
"""


def _invite(cseq: int, auth: bool) -> str:
    # No blank line in the headers: SIPp would end the header block there.
    auth_line = "\n      [authentication]" if auth else ""
    return f"""
  <send retrans="500">
    <![CDATA[
      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: "[caller]" <sip:[caller]@[domain]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[domain]>
      Call-ID: [call_id]
      CSeq: {cseq} INVITE
      Contact: <sip:[caller]@[local_ip]:[local_port]>
      Max-Forwards: 70{auth_line}
      Content-Type: application/sdp
      Content-Length: [len]

{SDP}
    ]]>
  </send>
"""


def _uac_request(method: str, cseq: int, *, in_dialog: bool, retrans: bool = False) -> str:
    """A request of the caller: in the dialog (to [next_url], new branch) or, for the
    ACK of a non-2xx, to the INVITE's target with the INVITE's Via (RFC 3261 s17.1.1.3)."""
    uri = "[next_url]" if in_dialog else "sip:[service]@[remote_ip]:[remote_port]"
    via = ("Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport"
           if in_dialog else "[last_Via:]")
    return f"""
  <send{' retrans="500"' if retrans else ''}>
    <![CDATA[
      {method} {uri} SIP/2.0
      {via}
      From: "[caller]" <sip:[caller]@[domain]>;tag=[pid]SIPpTag00[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: {cseq} {method}
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
"""


def uac_scenario(work: Path, *, auth: bool, expect: int, hold_ms: int = 500,
                 wait_bye_ms: int = 0) -> Path:
    """One call: (407 dance), then ``expect``; a 200 is ACKed and hung up after ``hold_ms``,
    or, with ``wait_bye_ms``, kept until the far end's BYE (answered 200) comes within
    that long."""
    parts = ['<?xml version="1.0" encoding="ISO-8859-1" ?>', '<scenario name="uac">',
             _invite(1, auth=False)]
    if auth:
        parts += ['  <recv response="100" optional="true"/>',
                  '  <recv response="407" auth="true"/>',
                  _uac_request("ACK", 1, in_dialog=False), _invite(2, auth=True)]
    cseq = 2 if auth else 1
    parts.append("""
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="183" optional="true"/>
  <recv response="180" optional="true"/>
""")
    if expect == 200 and wait_bye_ms:
        parts += ['  <recv response="200" rrs="true"/>', _uac_request("ACK", cseq, in_dialog=True),
                  f'  <recv request="BYE" timeout="{wait_bye_ms}"/>',
                  _reply("200 OK", contact=False).replace(";tag=[pid]SIPpTag01[call_number]", "")]
    elif expect == 200:
        parts += ['  <recv response="200" rrs="true"/>', _uac_request("ACK", cseq, in_dialog=True),
                  f'  <pause milliseconds="{hold_ms}"/>',
                  _uac_request("BYE", cseq + 1, in_dialog=True, retrans=True),
                  '  <recv response="200"/>']
    else:
        parts += [f'  <recv response="{expect}"/>', _uac_request("ACK", cseq, in_dialog=False)]
    parts.append("</scenario>\n")
    path = work / f"uac_{'auth' if auth else 'trunk'}_{expect}{'_waits' if wait_bye_ms else ''}.xml"
    path.write_text("\n".join(parts))
    return path


_REPLY_HEADERS = """      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]"""


def _reply(status: str, sdp: bool = False, contact: bool = True) -> str:
    body = f"Content-Type: application/sdp\n      Content-Length: [len]\n\n{SDP}" if sdp \
        else "Content-Length: 0\n"
    contact_line = "      Contact: <sip:phone@[local_ip]:[local_port]>\n" if contact else ""
    return f"""
  <send>
    <![CDATA[
      SIP/2.0 {status}
{_REPLY_HEADERS}
{contact_line}      {body}
    ]]>
  </send>
"""


_CANCELLED = """
  <recv request="CANCEL"/>
""" + _reply("200 OK", contact=False) + """
  <send>
    <![CDATA[
      SIP/2.0 487 Request Terminated
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      CSeq: 1 INVITE
      Content-Length: 0
    ]]>
  </send>
  <recv request="ACK"/>
"""


def uas_scenario(work: Path, behaviour: str, ring_ms: int = 500) -> Path:
    parts = ['<?xml version="1.0" encoding="ISO-8859-1" ?>', f'<scenario name="uas {behaviour}">',
             '  <recv request="INVITE"/>']
    if behaviour == "answer":
        parts += [_reply("180 Ringing"), f'  <pause milliseconds="{ring_ms}"/>',
                  _reply("200 OK", sdp=True), '  <recv request="ACK"/>', '  <recv request="BYE"/>',
                  _reply("200 OK", contact=False)]
    elif behaviour == "busy":
        parts += [_reply("486 Busy Here"), '  <recv request="ACK"/>']
    elif behaviour == "refuse":
        parts += [_reply("180 Ringing"), f'  <pause milliseconds="{ring_ms}"/>',
                  _reply("603 Decline"), '  <recv request="ACK"/>']
    elif behaviour == "noanswer":
        parts += [_reply("180 Ringing"), _CANCELLED]
    elif behaviour == "early":
        parts += [_reply("183 Session Progress", sdp=True), _CANCELLED]
    else:
        raise ValueError(f"unknown UAS behaviour {behaviour!r}")
    parts.append("</scenario>\n")
    path = work / f"uas_{behaviour}_{ring_ms}.xml"
    path.write_text("\n".join(parts))
    return path


@dataclass
class Background:
    """A SIPp run in a thread (a UAS waiting for its call)."""

    thread: threading.Thread
    box: list[SippResult]

    def result(self, timeout: float = 60.0) -> SippResult:
        self.thread.join(timeout)
        if not self.box:
            raise RuntimeError("SIPp did not finish")
        return self.box[0]


def in_background(run: Callable[[], SippResult]) -> Background:
    box: list[SippResult] = []
    thread = threading.Thread(target=lambda: box.append(run()), daemon=True)
    thread.start()
    return Background(thread, box)


def listening(phone: Background, port: int, limit: float = 10.0) -> None:
    """Wait, bounded, until a UDP socket is bound on ``port`` (as /proc/net/udp says) or
    ``phone``'s SIPp has ended (its result says why). A fixed sleep is too long on a
    quiet machine and too short on a busy one; a probe binding the port itself could
    take it from SIPp."""
    needle = f":{port:04X}"
    deadline = time.monotonic() + limit
    while phone.thread.is_alive():
        with open("/proc/net/udp") as table:
            if any(line.split()[1].endswith(needle) for line in table.readlines()[1:]):
                return
        if time.monotonic() >= deadline:
            raise RuntimeError(f"SIPp does not listen on UDP port {port} after {limit} s")
        time.sleep(0.02)


def start_uas(work: Path, behaviour: str, port: int, engine_target: str, *,
              ring_ms: int = 500, timeout: float = 30.0) -> Background:
    """A SIPp phone on 127.0.0.1:``port`` that takes one call and behaves so; it
    listens once this returns."""
    xml = uas_scenario(work, behaviour, ring_ms)
    sub = work / f"uas-{port}-{behaviour}"
    return start_phone(xml, port, engine_target, sub, timeout=timeout)


def start_phone(xml: Path, port: int, engine_target: str, workdir: Path, *,
                timeout: float = 30.0) -> Background:
    """SIPp playing the scenario ``xml`` once as a phone on 127.0.0.1:``port`` (UDP),
    in the background; it listens once this returns."""
    phone = in_background(lambda: run_sipp(
        xml, engine_target, None, calls=1, rate=1, timeout=timeout,
        extra_args=["-p", str(port), "-t", "u1"], workdir=workdir))
    listening(phone, port)
    return phone


def run_uac(work: Path, engine_target: str, *, caller: str, dialled: str, expect: int,
            auth: tuple[str, str] | None = None, port: int, hold_ms: int = 500,
            timeout: float = 30.0, domain: str = "pbx.test", wait_bye_ms: int = 0) -> SippResult:
    xml = uac_scenario(work, auth=auth is not None, expect=expect, hold_ms=hold_ms,
                       wait_bye_ms=wait_bye_ms)
    args = ["-s", dialled, "-p", str(port), "-t", "u1"]
    if auth is not None:
        args += ["-au", auth[0], "-ap", auth[1]]
    return run_sipp(xml, engine_target, None, calls=1, rate=1, timeout=timeout,
                    extra_args=args, keys={"caller": caller, "domain": domain},
                    workdir=work / f"uac-{port}-{expect}")


def carrier_registrar_scenario(work: Path, username: str, expires: int) -> Path:
    """A carrier's registrar: challenge, check the digest username, grant ``expires``,
    then take the refresh (same Call-ID) and grant it again."""
    www = 'Digest realm="carrier.test", nonce="[pid][call_number]n", algorithm=MD5, qop="auth"'
    challenge = f"""
  <send>
    <![CDATA[
      SIP/2.0 401 Unauthorized
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      WWW-Authenticate: {www}
      Content-Length: 0
    ]]>
  </send>
"""
    granted = f"""
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      [last_Contact:];expires={expires}
      Content-Length: 0
    ]]>
  </send>
"""
    check = f"""
  <recv request="REGISTER">
    <action>
      <ereg regexp="Digest .*username=.{username}." search_in="hdr" header="Authorization:"
            check_it="true" assign_to="auth"/>
    </action>
  </recv>
"""
    xml = ('<?xml version="1.0" encoding="ISO-8859-1" ?>\n<scenario name="carrier registrar">\n'
           + '  <recv request="REGISTER"/>\n' + challenge + check + granted
           + '  <recv request="REGISTER" timeout="' + str(expires * 1000 + 2000) + '"/>\n'
           + challenge + check + granted + "</scenario>\n")
    path = work / "carrier_registrar.xml"
    path.write_text(xml)
    return path


def start_carrier_registrar(work: Path, port: int, engine_target: str, username: str,
                            expires: int) -> Background:
    xml = carrier_registrar_scenario(work, username, expires)
    return in_background(lambda: run_sipp(
        xml, engine_target, None, calls=1, rate=1, timeout=expires + 20,
        extra_args=["-p", str(port), "-t", "u1"], workdir=work / "carrier"))
