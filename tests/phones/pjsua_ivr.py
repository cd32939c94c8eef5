"""A pjsua2 caller in an IVR menu, and a pjsua2 callee that answers what it chose.

Run in its own process by ``tests/test_phones_ivr.py`` (pjsip's threads, sockets and
any crash stay out of pytest). SIP runs on the main thread, polled with
``libHandleEvents``; the null audio device clocks the bridge. Every wait is bounded
by one overall deadline, and the library is always destroyed before exit.

Both accounts (``--caller``, ``--callee``) register with digest on one UDP
transport, the engine as outbound proxy. The caller calls ``--dial`` and waits for
CONFIRMED with active audio (the engine answers the menu), waits ``--wait`` s
(part of the prompt), then presses ``--keys`` one by one (``--gap`` s apart) as
RFC 4733 telephone-events (``--method rfc4733``) or SIP INFO
application/dtmf-relay (``--method info``), then stays ``--stay`` s on the call,
recording what it hears (``--caller-record``). The callee answers any call at once
and plays ``--callee-wav`` into it, looped. Then the caller hangs up (if the
engine did not), and both wait for the end.

Output, one JSON object per line on stdout:
  {"event": "registered", "ok": true, ...}
  {"event": "call", "side": "caller"|"callee", "state": "CONFIRMED", "code": 200, "t": ...}
  (and pjcommon.SideCall's media_state and rx_request lines)
  {"event": "incoming", "account": "102", "t": ...}
  {"event": "key", "key": "1", "method": "rfc4733", "t": ...}
  {"event": "result", "answered": true, "callee_rang": true, "callee_answered": true,
   "caller_states": [...], "caller_disconnected_by_engine": false, ...}
  {"event": "done"}
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
from pjcommon import Leg, Log, Pump, SideCall, emit


class Account(pjcommon.RegAccount):
    def __init__(self, user: str) -> None:
        super().__init__(user)
        self.seen = 0
        self.incoming: list[SideCall] = []  # kept referenced: a collected pj.Call hangs up

    def onIncomingCall(self, prm: Any) -> None:
        call = SideCall(self, "callee", prm.callId)
        self.incoming.append(call)
        emit(event="incoming", account=self.user, t=time.monotonic())


class Phones(Pump):
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
            self.legs["callee"] = Leg(call, self.args.callee_wav, None)
            prm = pj.CallOpParam()
            prm.statusCode = 200
            call.answer(prm)
        for leg in self.legs.values():
            leg.connect()

    def release(self) -> None:
        for leg in self.legs.values():
            leg.player = leg.recorder = None
        self.legs.clear()
        for acc in self.accounts:
            acc.incoming.clear()


def press(call: SideCall, key: str, method: str) -> None:
    if method == "info":
        prm = pj.CallSendDtmfParam()
        prm.method = pj.PJSUA_DTMF_METHOD_SIP_INFO
        prm.digits = key
        prm.duration = 160
        call.sendDtmf(prm)
    else:
        call.dialDtmf(key)  # RFC 4733: the engine's answer offers telephone-event
    emit(event="key", key=key, method=method, t=time.monotonic())


def run(phones: Phones, result: dict[str, Any]) -> None:
    args = phones.args
    caller = SideCall(phones.accounts[0], "caller")
    phones.legs["caller"] = Leg(caller, args.callee_wav, args.caller_record)
    caller.makeCall(f"sip:{args.dial}@{args.domain}", pj.CallOpParam(True))
    phones.pump(lambda: (caller.confirmed and caller.audio_index >= 0) or caller.disconnected,
                10)
    result["answered"] = caller.confirmed and caller.audio_index >= 0
    if result["answered"]:
        emit(event="answered", t=time.monotonic(), codec=pjcommon.codec_of(caller))
        phones.pump(lambda: caller.disconnected, args.wait)
        for i, key in enumerate(args.keys):
            if caller.disconnected:
                break
            if i:
                phones.pump(lambda: caller.disconnected, args.gap)
            press(caller, key, args.method)
        phones.pump(lambda: caller.disconnected, args.stay)
    callee_acc = phones.accounts[1]
    callee = callee_acc.incoming[0] if callee_acc.incoming else None
    result["callee_rang"] = callee is not None
    result["callee_answered"] = bool(callee and callee.confirmed)
    result["callee_media"] = bool(callee and callee.audio_index >= 0)
    result["caller_disconnected_by_engine"] = caller.disconnected
    if not caller.disconnected:
        emit(event="hangup", t=time.monotonic())
        caller.hangup(pj.CallOpParam(True))
    phones.pump(lambda: caller.disconnected and (callee is None or callee.disconnected), 5)
    result.update(caller_states=caller.states, caller_code=caller.last_code,
                  callee_states=callee.states if callee else [],
                  callee_disconnected=bool(callee and callee.disconnected))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--registrar", required=True, help="HOST:PORT of the engine")
    ap.add_argument("--domain", required=True)
    ap.add_argument("--caller", default="101:pw101", help="USER:PASSWORD of the caller")
    ap.add_argument("--callee", default="102:pw102", help="USER:PASSWORD of the callee")
    ap.add_argument("--dial", required=True, help="the IVR's extension")
    ap.add_argument("--keys", default="", help="keys to press, in order ('' none)")
    ap.add_argument("--method", choices=["rfc4733", "info"], default="rfc4733")
    ap.add_argument("--wait", type=float, default=1.0, help="seconds before the first key")
    ap.add_argument("--gap", type=float, default=0.4, help="seconds between two keys")
    ap.add_argument("--stay", type=float, default=4.0, help="seconds after the last key")
    ap.add_argument("--callee-wav", required=True, help="what the callee says, looped")
    ap.add_argument("--caller-record", default=None, help="WAV of what the caller hears")
    ap.add_argument("--deadline", type=float, default=40.0, help="seconds for everything")
    ap.add_argument("--log-level", type=int, default=3, help="pjsip log echoed to stderr")
    args = ap.parse_args()

    writer = Log(args.log_level)
    ep = pj.Endpoint()
    ep.libCreate()
    phones = Phones(ep, args, time.monotonic() + args.deadline)
    code = 0
    result: dict[str, Any] = {"answered": False}
    try:
        pjcommon.init_endpoint(ep, writer, "pjsua2-switchboard-ivr", clock_rate=8000)
        tid, port = pjcommon.udp_transport(ep)
        ep.libStart()
        for spec in (args.caller, args.callee):
            user, _, password = spec.partition(":")
            acc = Account(user)
            phones.accounts.append(acc)
            acc.create(pjcommon.registered_config(user, password, args.domain, args.registrar,
                                                  tid))
        accounts = phones.accounts
        phones.pump(lambda: all(a.active or any(c >= 300 for c in a.codes)
                                for a in accounts), 8)
        ok = all(a.active for a in accounts)
        emit(event="registered", ok=ok, codes={a.user: a.codes for a in accounts}, port=port)
        if not ok:
            return 2
        run(phones, result)
        emit(event="result", **result)
        for acc in accounts:
            acc.seen = len(acc.codes)
            acc.setRegistration(False)
        phones.pump(lambda: all(len(a.codes) > a.seen for a in accounts), 3)
    except Exception as e:
        pjcommon.report_error(e, result)
        code = 3
    finally:
        phones.release()
        gc.collect()
        for acc in phones.accounts:
            acc.shutdown()
        ep.libDestroy()
        emit(event="done")
    return code


if __name__ == "__main__":
    sys.exit(main())
