"""Three pjsua2 phones in one process: 101 calls 102, 102 transfers 101 to 103.

Run in its own process by ``tests/test_phones_transfer.py`` (pjsip's threads,
sockets and any crash stay out of pytest). SIP on the main thread, events polled
with ``libHandleEvents``, the null audio device clocking an 8 kHz bridge; every
wait bounded by one overall deadline; the library always destroyed before exit.

Each account registers with digest on its own UDP transport (so the engine's
INVITE for 102 or 103 reaches the account it names), the engine as outbound
proxy. Each phone plays its own WAV into its call, looped, and records what it
receives. 102 and 103 answer 200 at once. Sequence: 101 calls 102; both talk
``--talk`` s; then

* ``--mode blind``: 102 sends REFER (``Call.xfer``, a blind transfer to
  ``sip:103@DOMAIN``) and, like a desk phone, waits for the final NOTIFY;
* ``--mode attended``: 102 holds 101, calls 103 itself (the consultation),
  they talk ``--talk`` s, and 102 sends REFER with Replaces naming that call
  (``Call.xferReplaces``);
* ``--mode caller``: 101, the calling party, sends REFER (blind) to 103;
* ``--mode caller-attended``: 101 holds 102, calls 103 itself, then sends REFER
  with Replaces;

the engine connects the transferee (101, or 102 in caller mode) with 103 and
hangs up the transferor (both its calls); they talk ``--after`` s; the
transferee hangs up. Then every account unregisters (the engine may serve the
next run too). With ``--silent-target`` 103 lets it ring: the transferee
gets 103's voicemail and speaks ``--after`` s into it.

Output, one JSON object per line on stdout (``t``: this process's monotonic clock):
  {"event": "registered", "ok": true, "codes": {...}}
  {"event": "call", "side": "101"|"102"|"103", "state": "CONFIRMED", "code": 200, "t": ...}
  {"event": "recording", "side": ..., "path": ..., "t": ...}   the recorder's sample 0
  {"event": "xfer_status", "side": ..., "code": 100|200|..., "final": bool, "t": ...}
      the NOTIFYs about the transferor's REFER
  (and pjcommon.SideCall's media_state, rx_offer and rx_request lines)
  {"event": "talk"|"consult"|"xfer"|"transferred"|"hangup", "t": ...}   the phases
  {"event": "result", "calls": {"101": {...}, ...}, "xfer_codes": [...]}
  {"event": "error", "error": "..."}   a pjsua2 call raised (exit 3)
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
from pjcommon import Leg, Log, Pump, SideCall, emit, set_codecs

USERS = ("101", "102", "103")


class Account(pjcommon.RegAccount):
    def __init__(self, user: str) -> None:
        super().__init__(user)
        self.incoming: list[SideCall] = []  # kept referenced: a collected Call hangs up

    def onIncomingCall(self, prm: Any) -> None:
        self.incoming.append(SideCall(self, self.user or "?", prm.callId))


class Phones(Pump):
    def __init__(self, ep: Any, args: argparse.Namespace, deadline: float) -> None:
        super().__init__(ep, deadline)
        self.args = args
        self.accounts: dict[str, Account] = {}
        self.legs: dict[str, Leg] = {}

    def service(self) -> None:
        """Each poll: answer what rings at 102 and 103, keep the bridges connected."""
        if not self.accounts:
            return
        for user in ("102", "103"):
            if user == "103" and self.args.silent_target:
                continue
            acc = self.accounts.get(user)
            if acc is not None and acc.incoming and user not in self.legs:
                call = acc.incoming[0]
                self.legs[user] = Leg(call, self.wav(user), self.record(user))
                prm = pj.CallOpParam()
                prm.statusCode = 200
                call.answer(prm)
        for leg in self.legs.values():
            leg.connect()

    def wav(self, user: str) -> str:
        return f"{self.args.folder}/say-{user}.wav"

    def record(self, user: str) -> str:
        return f"{self.args.folder}/heard-by-{user}.wav"

    def up(self, user: str) -> bool:
        leg = self.legs.get(user)
        return leg is not None and leg.call.confirmed and leg.call.audio_index >= 0 \
            and not leg.call.disconnected

    def release(self) -> None:
        for leg in self.legs.values():
            leg.player = leg.recorder = None
        self.legs.clear()
        for acc in self.accounts.values():
            acc.incoming.clear()


def consult_by(phones: Phones, held: SideCall, user: str) -> None:
    """``user`` holds ``held``, calls 103 (the leg "102y", whoever places it) and
    talks with it; then the REFER with Replaces may go."""
    held.setHold(pj.CallOpParam(True))
    consult = SideCall(phones.accounts[user], "102y")
    phones.legs["102y"] = Leg(consult, phones.wav(user), None)
    consult.makeCall(f"sip:103@{phones.args.domain}", pj.CallOpParam(True))
    phones.pump(lambda: phones.up("102y") and phones.up("103"), 10)
    emit(event="consult", t=time.monotonic(), up=phones.up("103"))
    phones.pump(lambda: consult.disconnected, phones.args.talk)
    emit(event="xfer", t=time.monotonic())


def run(phones: Phones, result: dict[str, Any]) -> None:
    args = phones.args
    caller = SideCall(phones.accounts["101"], "101")
    phones.legs["101"] = Leg(caller, phones.wav("101"), phones.record("101"))
    caller.makeCall(f"sip:102@{args.domain}", pj.CallOpParam(True))
    phones.pump(lambda: (phones.up("101") and phones.up("102")) or caller.disconnected, 10)
    transferee = caller
    if phones.up("101") and phones.up("102"):
        emit(event="talk", t=time.monotonic())
        phones.pump(lambda: caller.disconnected, args.talk)
        transferor = phones.legs["102"].call
        if args.mode == "caller":
            transferor, transferee = caller, phones.legs["102"].call
            emit(event="xfer", t=time.monotonic())
            caller.xfer(f"sip:103@{args.domain}", pj.CallOpParam(True))
        elif args.mode == "caller-attended":
            transferor, transferee = caller, phones.legs["102"].call
            consult_by(phones, caller, "101")
            caller.xferReplaces(phones.legs["102y"].call, pj.CallOpParam(True))
        elif args.mode == "blind":
            emit(event="xfer", t=time.monotonic())
            transferor.xfer(f"sip:103@{args.domain}", pj.CallOpParam(True))
        else:
            consult_by(phones, transferor, "102")
            transferor.xferReplaces(phones.legs["102y"].call, pj.CallOpParam(True))
        silent = args.silent_target
        phones.pump(lambda: (phones.up("103") or silent) and transferor.disconnected
                    and ("102y" not in phones.legs or phones.legs["102y"].call.disconnected),
                    15)
        if phones.up("103") or (silent and transferor.disconnected):
            emit(event="transferred", t=time.monotonic())
            phones.pump(lambda: transferee.disconnected, args.after)
    if not transferee.disconnected:
        emit(event="hangup", t=time.monotonic())
        transferee.hangup(pj.CallOpParam(True))
    phones.pump(lambda: all(leg.call.disconnected for leg in phones.legs.values()), 5)
    result["calls"] = {
        user: {"states": leg.call.states, "code": leg.call.last_code,
               "reoffers": leg.call.reoffers, "confirmed": leg.call.confirmed,
               "disconnected": leg.call.disconnected}
        for user, leg in phones.legs.items()}
    side = "101" if args.mode.startswith("caller") else "102"
    result["xfer_codes"] = phones.legs[side].call.xfer_codes if side in phones.legs else []
    result["transferred"] = phones.up("103") or "103" in phones.legs


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--registrar", required=True, help="HOST:PORT of the engine")
    ap.add_argument("--domain", required=True)
    ap.add_argument("--folder", required=True,
                    help="has say-101.wav, say-102.wav, say-103.wav; gets heard-by-*.wav")
    ap.add_argument("--mode", choices=["blind", "attended", "caller", "caller-attended"],
                    default="blind")
    ap.add_argument("--silent-target", action="store_true", help="103 does not answer")
    ap.add_argument("--talk", type=float, default=2.0, help="101 and 102 talk, seconds")
    ap.add_argument("--after", type=float, default=2.5, help="101 and 103 talk, seconds")
    ap.add_argument("--deadline", type=float, default=30.0, help="seconds for everything")
    ap.add_argument("--log-level", type=int, default=3, help="pjsip log echoed to stderr")
    args = ap.parse_args()

    writer = Log(args.log_level)
    ep = pj.Endpoint()
    ep.libCreate()
    phones = Phones(ep, args, time.monotonic() + args.deadline)
    code = 0
    result: dict[str, Any] = {"calls": {}, "xfer_codes": []}
    try:
        pjcommon.init_endpoint(ep, writer, "pjsua2-switchboard-transfer", clock_rate=8000)
        tids = [pjcommon.udp_transport(ep)[0] for _ in USERS]
        ep.libStart()
        set_codecs(ep, "PCMU")
        for user, tid in zip(USERS, tids, strict=True):
            acc = Account(user)
            phones.accounts[user] = acc
            acc.create(pjcommon.registered_config(user, f"pw{user}", args.domain,
                                                  args.registrar, tid))
        accounts = list(phones.accounts.values())
        phones.pump(lambda: all(a.active or any(c >= 300 for c in a.codes)
                                for a in accounts), 8)
        ok = all(a.active for a in accounts)
        emit(event="registered", ok=ok, codes={a.user: a.codes for a in accounts})
        if not ok:
            return 2
        run(phones, result)
        emit(event="result", **result)
        pjcommon.unregister(phones, accounts)  # the module's next run, same engine
    except Exception as e:
        pjcommon.report_error(e, result)
        code = 3
    finally:
        phones.release()
        gc.collect()
        for acc in phones.accounts.values():
            acc.shutdown()
        ep.libDestroy()
        emit(event="done")
    return code


if __name__ == "__main__":
    sys.exit(main())
