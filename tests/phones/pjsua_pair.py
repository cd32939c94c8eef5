"""Two pjsua2 phones in one process: 101 calls 102 through the engine, holds, resumes.

Run in its own process by ``tests/test_phones_hold.py`` so that pjsip's threads,
sockets and any crash stay out of pytest. SIP runs on the main thread
(``threadCnt = 0``, events polled with ``libHandleEvents``); the conference
bridge (8 kHz) is clocked by pjsip's null audio device. Every wait is bounded by
one overall deadline, and the library is always destroyed before exit.

Both accounts register with digest on one UDP transport (``--transports two``:
one transport each), with the engine as outbound proxy. The engine sends the
INVITE for 102 to 102's registered contact (``sip:102@127.0.0.1:PORT``); pjsua
hands it to the account whose user part matches, which the ``incoming`` event
reports. 102 answers 200 at once (from the main loop, not the callback).

Once both calls are CONFIRMED with active audio, each phone plays its own WAV
into its call, looped (``--caller-wav``, ``--callee-wav``) and records what it
receives (``--callee-record``, optionally ``--caller-record``). Then: talk
``--talk`` s, 101 puts the call on hold (``Call.setHold``: a re-INVITE with
a=sendonly), wait ``--hold`` s, 101 resumes (re-INVITE with PJSUA_CALL_UNHOLD),
wait ``--resume`` s, 101 hangs up; the engine's BYE ends 102's call. The conference
connections are made again after every media change (pjsua may rebuild a
stream's bridge port on a re-INVITE).

``--caller-tls HOST:PORT`` registers and calls as 101 over TLS to the engine's TLS
listener (its certificate is not verified: a test certificate); ``--caller-srtp``
makes 101's calls SDES-SRTP only (``srtpUse`` mandatory: an answer without
a=crypto fails the call); the result then says the caller's stream protocol
(``caller_proto``: ``RTP/SAVP`` or ``RTP/AVP``).

``--session-expires N`` makes the caller ask for an RFC 4028 session timer of
N s (pjsua2's default is 1800 s with ``Supported: timer``), to see whether the
call survives past N s without a refresh from the engine.

Output, one JSON object per line on stdout; ``t`` is this process's
``time.monotonic()``, so the recordings can be cut into phases:
  {"event": "reg", "account": "101", "code": 200, "active": true, ...}
  {"event": "registered", "ok": true, "codes": {"101": [...], "102": [...]},
   "ports": [1234]}
  {"event": "incoming", "account": "102", "local": "...", "remote": "...", "t": ...}
  {"event": "call", "side": "caller"|"callee", "state": "CONFIRMED", "code": 200, "t": ...}
  {"event": "media_state", "side": ..., "status": "active"|"local_hold"|..., "t": ...}
  {"event": "recording", "side": "callee", "path": "...", "t": ...}  the recorder's sample 0
  {"event": "rx_request", "side": ..., "method": "BYE", "t": ...}  once per CSeq
  {"event": "talk"|"hold"|"held"|"resume"|"resumed"|"hangup", "t": ...}   the phases
  {"event": "result", "confirmed": true, "media": true, "codec": "PCMU/8000",
   "hold_status": "local_hold", "resume_status": "active", "callee_reoffers": 0,
   "caller_states": [...], "callee_states": [...], "caller_code": 200, ...}
  {"event": "error", "error": "...", ...}                   a pjsua2 call raised (exit 3)
  {"event": "done"}                                          after libDestroy
Exit status: 0 once a call was tried, 2 when a REGISTER failed, 3 on an error.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from typing import Any

import pjcommon
import pjsua2 as pj
from pjcommon import Leg, Log, Pump, SideCall, emit, set_codecs


class Account(pjcommon.RegAccount):
    def __init__(self, user: str) -> None:
        super().__init__(user)
        self.seen = 0  # len(codes) when the un-REGISTER went out
        self.incoming: list[SideCall] = []  # kept referenced: a collected Call hangs up

    def onIncomingCall(self, prm: Any) -> None:
        call = SideCall(self, "callee", prm.callId)
        self.incoming.append(call)
        ci = call.getInfo()
        emit(event="incoming", account=self.user, local=str(ci.localUri),
             remote=str(ci.remoteUri), t=time.monotonic())


class Pair(Pump):
    """The running library: accounts and call legs, the bounded event pump."""

    def __init__(self, ep: Any, args: argparse.Namespace, deadline: float) -> None:
        super().__init__(ep, deadline)
        self.args = args
        self.accounts: list[Account] = []
        self.legs: dict[str, Leg] = {}

    def service(self) -> None:
        """Each poll: answer a new incoming call, keep the bridge connected."""
        if "callee" not in self.legs and len(self.accounts) == 2 \
                and self.accounts[1].incoming:
            call = self.accounts[1].incoming[0]
            self.legs["callee"] = Leg(call, self.args.callee_wav, self.args.callee_record)
            prm = pj.CallOpParam()
            prm.statusCode = 200
            call.answer(prm)
        for leg in self.legs.values():
            leg.connect()

    def over(self) -> bool:
        return any(leg.call.disconnected for leg in self.legs.values())

    def up(self) -> bool:
        return len(self.legs) == 2 and all(
            leg.call.confirmed and leg.call.audio_index >= 0 for leg in self.legs.values())

    def release(self) -> None:
        """Drop every pjsua2 object this side holds (before libDestroy); the
        recorders' destructors finish their WAV headers."""
        for leg in self.legs.values():
            leg.player = leg.recorder = None
        self.legs.clear()
        for acc in self.accounts:
            acc.incoming.clear()


def converse(pair: Pair, result: dict[str, Any]) -> None:
    """101 calls 102; talk, hold, resume, hang up. The caller's Call lives in this
    frame and in ``pair.legs`` only."""
    args = pair.args
    caller = SideCall(pair.accounts[0], "caller")
    pair.legs["caller"] = Leg(caller, args.caller_wav, args.caller_record)
    callee_user = args.callee.partition(":")[0]
    caller.makeCall(f"sip:{callee_user}@{args.domain}", pj.CallOpParam(True))

    pair.pump(lambda: pair.up() or pair.over(), 10)
    callee = pair.legs["callee"].call if "callee" in pair.legs else None
    result["confirmed"] = caller.confirmed and callee is not None and callee.confirmed
    result["media"] = pair.up()
    if pair.accounts[1].incoming:
        result["callee_account"] = pair.accounts[1].user
    elif pair.accounts[0].incoming:
        result["callee_account"] = pair.accounts[0].user  # misrouted to the caller
    if pair.up() and not pair.over():
        si = caller.getStreamInfo(caller.audio_index)
        result["codec"] = f"{si.codecName}/{si.codecClockRate}"
        result["caller_proto"] = "RTP/SAVP" if si.proto == pj.PJMEDIA_TP_PROTO_RTP_SAVP \
            else "RTP/AVP" if si.proto == pj.PJMEDIA_TP_PROTO_RTP_AVP else str(si.proto)
        emit(event="talk", t=time.monotonic(), codec=result["codec"])
        pair.pump(pair.over, args.talk)

        if not pair.over():
            emit(event="hold", t=time.monotonic())
            caller.setHold(pj.CallOpParam(True))
            pair.pump(lambda: caller.status != "active" or pair.over(), 5)
            result["hold_status"] = caller.status
            emit(event="held", t=time.monotonic(), status=caller.status)
            pair.pump(pair.over, args.hold)

        if not pair.over():
            emit(event="resume", t=time.monotonic())
            prm = pj.CallOpParam(True)
            prm.opt.flag = pj.PJSUA_CALL_UNHOLD
            caller.reinvite(prm)
            pair.pump(lambda: caller.status == "active" or pair.over(), 5)
            result["resume_status"] = caller.status
            emit(event="resumed", t=time.monotonic(), status=caller.status)
            pair.pump(pair.over, args.resume)

    if not caller.disconnected:
        emit(event="hangup", t=time.monotonic())
        caller.hangup(pj.CallOpParam(True))
    pair.pump(lambda: caller.disconnected and (callee is None or callee.disconnected), 5)
    result.update(
        caller_states=caller.states, caller_code=caller.last_code,
        caller_reason=caller.last_reason, caller_reoffers=caller.reoffers,
        callee_states=callee.states if callee else [],
        callee_code=callee.last_code if callee else 0,
        callee_reoffers=callee.reoffers if callee else None,
        callee_disconnected=bool(callee and callee.disconnected))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--registrar", required=True, help="HOST:PORT of the engine")
    ap.add_argument("--domain", required=True)
    ap.add_argument("--caller", default="101:pw101", help="USER:PASSWORD of the caller")
    ap.add_argument("--callee", default="102:pw102", help="USER:PASSWORD of the callee")
    ap.add_argument("--caller-wav", required=True, help="the caller's voice, looped")
    ap.add_argument("--callee-wav", required=True, help="the callee's voice, looped")
    ap.add_argument("--callee-record", required=True, help="WAV of what 102 receives")
    ap.add_argument("--caller-record", default=None, help="WAV of what 101 receives")
    ap.add_argument("--talk", type=float, default=2.0, help="seconds before the hold")
    ap.add_argument("--hold", type=float, default=3.0, help="seconds on hold")
    ap.add_argument("--resume", type=float, default=2.0, help="seconds after the resume")
    ap.add_argument("--codecs", default="PCMU",
                    help="offer exactly these codecs, in order ('' for pjsua2's own)")
    ap.add_argument("--transports", choices=["one", "two"], default="one",
                    help="one UDP transport for both accounts, or one each")
    ap.add_argument("--caller-tls", default="", help="HOST:PORT: the caller over TLS")
    ap.add_argument("--caller-srtp", action="store_true", help="the caller: SRTP only")
    ap.add_argument("--session-expires", type=int, default=0,
                    help="the caller's Session-Expires (RFC 4028; >= 90), 0: pjsua2's 1800")
    ap.add_argument("--deadline", type=float, default=25.0, help="seconds for everything")
    ap.add_argument("--log-level", type=int, default=3, help="pjsip log echoed to stderr")
    args = ap.parse_args()

    writer = Log(args.log_level)
    ep = pj.Endpoint()
    ep.libCreate()
    pair = Pair(ep, args, time.monotonic() + args.deadline)
    code = 0
    result: dict[str, Any] = {"confirmed": False, "media": False, "codec": None,
                              "hold_status": None, "resume_status": None,
                              "callee_account": None}
    try:
        pjcommon.init_endpoint(ep, writer, "pjsua2-switchboard-pair",
                               clock_rate=8000)  # the bridge and recordings at 8 kHz

        tids: list[int] = []
        ports: list[int] = []
        for _ in range(2 if args.transports == "two" else 1):
            tid, port = pjcommon.udp_transport(ep)
            tids.append(tid)
            ports.append(port)
        if args.caller_tls:
            tcfg = pj.TransportConfig()
            tcfg.boundAddress = "127.0.0.1"
            tcfg.port = 0
            tcfg.tlsConfig.verifyServer = False
            tls_tid = ep.transportCreate(pj.PJSIP_TRANSPORT_TLS, tcfg)
        ep.libStart()
        if args.codecs:
            set_codecs(ep, args.codecs)
        emit(event="codecs", codecs=pjcommon.enabled_codecs(ep))

        for n, spec in enumerate((args.caller, args.callee)):
            user, _, password = spec.partition(":")
            acfg = pjcommon.registered_config(user, password, args.domain, args.registrar,
                                              tids[min(n, len(tids) - 1)])
            if n == 0 and args.caller_tls:
                # The domain as registrar (the engine takes requests for its domain on any
                # listener), its TLS listener as outbound proxy.
                acfg.regConfig.registrarUri = f"sip:{args.domain};transport=tls"
                acfg.sipConfig.transportId = tls_tid
                acfg.sipConfig.proxies.clear()
                acfg.sipConfig.proxies.append(f"sip:{args.caller_tls};transport=tls;lr")
            if n == 0 and args.caller_srtp:
                acfg.mediaConfig.srtpUse = pj.PJMEDIA_SRTP_MANDATORY
                acfg.mediaConfig.srtpSecureSignaling = 0  # sip: over TLS, not sips:
            if args.session_expires and n == 0:
                acfg.callConfig.timerSessExpiresSec = args.session_expires
                acfg.callConfig.timerMinSESec = min(90, args.session_expires)
            acc = Account(user)
            pair.accounts.append(acc)
            acc.create(acfg)
        accounts = pair.accounts
        pair.pump(lambda: all(a.active or any(c >= 300 for c in a.codes) for a in accounts), 8)
        ok = all(a.active for a in accounts)
        emit(event="registered", ok=ok, codes={a.user: a.codes for a in accounts}, ports=ports)
        if not ok:
            code = 2
            return code

        converse(pair, result)
        emit(event="result", **result)

        for acc in accounts:  # un-REGISTER; wait (bounded) for the answers
            acc.seen = len(acc.codes)
            acc.setRegistration(False)
        pair.pump(lambda: all(len(a.codes) > a.seen for a in accounts), 3)
    except Exception as e:
        pjcommon.report_error(e, result)  # and ``e`` is dropped here (see there)
        code = 3
    finally:
        # pjsua2 objects go before libDestroy (their destructors call into pjsip)
        pair.release()
        gc.collect()
        for acc in pair.accounts:
            acc.shutdown()
        ep.libDestroy()
        emit(event="done")
    return code


if __name__ == "__main__":
    sys.exit(main())
