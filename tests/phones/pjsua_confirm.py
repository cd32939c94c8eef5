"""One pjsua2 process plays the carrier (the caller and the mobile) and 104's desk phone.

Run in its own process by ``tests/test_phones_confirm.py`` so that pjsip's
threads, sockets and any crash stay out of pytest. SIP runs on the main thread
(``threadCnt = 0``, events polled with ``libHandleEvents``); the conference
bridge (8 kHz) is clocked by pjsip's null audio device. Every wait is bounded by
one overall deadline, and the library is always destroyed before exit.

Two UDP transports:

* ``--port``: the directory's trunk (``host:port`` and ``inbound_port``), one
  account without registration (``sip:CALLER@carrier.test``, the default
  account). The caller INVITEs ``sip:DID@ENGINE`` straight to the engine, so
  the call comes from the trunk; the engine's leg to the mobile
  (``sip:MOBILE@127.0.0.1:PORT``) arrives here too.
* any port: the desk phone, an account that registers as ``--desk`` (digest,
  the engine as registrar and outbound proxy); the engine rings it there.

Incoming calls are told apart by their request URI's user (the mobile's
number or the desk's extension), whichever account pjsua gives them to.
Both ring (180). The mobile answers 200 after ``--ring`` s and then, by
``--mode``:

* ``1``: ``--press-after`` s into its media (the prompt) it sends 1 (RFC 4733);
* ``none``: it says nothing (a voicemail greeting would not press 1);
* ``hangup``: ``--press-after`` s into its media it hangs up.

The desk phone never answers, except in ``hangup`` mode, ``--desk-after`` s
after the mobile's call ended (it still rings then). The caller waits for its
200 (the mobile, the desk phone or 104's voicemail), lets ``--talk`` s pass and
hangs up. Each side plays its own WAV, looped, from its first media on, and
records what it receives.

Output, one JSON object per line on stdout; ``t`` is this process's
``time.monotonic()``, so the recordings can be cut into phases:
  {"event": "ready", "port": 5060, "desk_port": ...}
  {"event": "registered", "ok": true, "codes": [...]}
  {"event": "incoming", "side": "mobile"|"desk", "request_user": "...", "t": ...}
  {"event": "call", "side": "caller"|"mobile"|"desk", "state": "EARLY", "code": 180, "t": ...}
  {"event": "media_state", "side": ..., "status": "active", "call_state": ..., "t": ...}
  {"event": "recording", "side": ..., "path": "...", "t": ...}  the recorder's sample 0
  {"event": "rx_request", "side": ..., "method": "BYE", "t": ...}
  {"event": "answer"|"press"|"mobile_hangup"|"desk_answer"|"answered"|"hangup", "t": ...}
  {"event": "result", "caller_states": [...], "mobile_states": [...], ...}
  {"event": "error", "error": "...", ...}                   a pjsua2 call raised (exit 3)
  {"event": "done"}                                          after libDestroy
The desk phone unregisters before the script exits (the engine may serve the next
run too).
Exit status: 0 once a call was tried, 2 when the desk phone did not register, 3 on
an error.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from typing import Any

import pjcommon
import pjsua2 as pj
from pjcommon import Leg, Log, Pump, codec_of, emit, set_codecs

SIDES = ("caller", "mobile", "desk")


Call = pjcommon.SideCall  # records what happened; the main loop acts on it


class Account(pjcommon.RegAccount):
    """The carrier's account or the desk phone's: an incoming call is handed to
    ``sink`` with the user of its request URI (which account pjsua picks for it
    does not matter)."""

    def __init__(self, sink: Callable[[Any, str], None], user: str | None = None) -> None:
        super().__init__(user)
        self.sink = sink

    def onIncomingCall(self, prm: Any) -> None:
        self.sink(Call(self, "?", prm.callId), pjcommon.request_target(prm)[1])


class Phones(Pump):
    """The running library: the accounts, the legs, the bounded event pump."""

    def __init__(self, ep: Any, args: argparse.Namespace, deadline: float) -> None:
        super().__init__(ep, deadline)
        self.args = args
        self.accounts: list[Account] = []
        self.calls: dict[str, Call] = {}  # kept referenced: a collected Call hangs up
        self.legs: dict[str, Leg] = {}
        self.new: list[Call] = []
        self.ring_until = 0.0  # when the mobile answers 200 (after its 180)
        self.desk_at = 0.0  # when the desk phone answers 200 (0: never)
        self.mobile_answered = False
        self.desk_answered = False

    def incoming(self, call: Call, user: str) -> None:
        side = "mobile" if user == self.args.mobile else "desk" if user == self.args.desk \
            else "unknown"
        call.side = side
        emit(event="incoming", side=side, request_user=user, t=time.monotonic())
        self.new.append(call)

    def wav(self, side: str) -> str:
        return f"{self.args.folder}/say-{side}.wav"

    def record(self, side: str) -> str:
        return f"{self.args.folder}/heard-by-{side}.wav"

    def service(self) -> None:
        """Each poll: ring new calls, answer in time, keep the bridges connected
        (pjsip calls from the main loop, not from the callbacks)."""
        while self.new:
            call = self.new.pop(0)
            if call.side not in ("mobile", "desk") or call.side in self.calls:
                prm = pj.CallOpParam()
                prm.statusCode = 486
                call.answer(prm)
                continue
            self.calls[call.side] = call
            self.legs[call.side] = Leg(call, self.wav(call.side), self.record(call.side))
            prm = pj.CallOpParam()
            prm.statusCode = 180
            call.answer(prm)
            if call.side == "mobile":
                self.ring_until = time.monotonic() + self.args.ring
        now = time.monotonic()
        mobile = self.calls.get("mobile")
        if mobile is not None and not self.mobile_answered and now >= self.ring_until \
                and not mobile.disconnected:
            self.mobile_answered = True
            self.answer(mobile, "answer")
        desk = self.calls.get("desk")
        if desk is not None and self.desk_at and now >= self.desk_at \
                and not self.desk_answered and not desk.disconnected:
            self.desk_answered = True
            self.answer(desk, "desk_answer")
        for leg in self.legs.values():
            leg.connect()

    def answer(self, call: Call, event: str) -> None:
        prm = pj.CallOpParam(True)
        prm.statusCode = 200
        call.answer(prm)
        emit(event=event, t=time.monotonic())

    def release(self) -> None:
        """Drop every pjsua2 object this side holds (before libDestroy); the
        recorders' destructors finish their WAV headers."""
        for leg in self.legs.values():
            leg.player = leg.recorder = None
        self.legs.clear()
        self.calls.clear()
        self.new.clear()


def scenario(phones: Phones, carrier: Account, result: dict[str, Any]) -> None:
    args = phones.args
    caller = Call(carrier, "caller")
    phones.legs["caller"] = Leg(caller, phones.wav("caller"), phones.record("caller"))
    caller.makeCall(f"sip:{args.did}@{args.engine}", pj.CallOpParam(True))

    def mobile() -> Call | None:
        return phones.calls.get("mobile")

    def asked() -> bool:
        m = mobile()
        return m is not None and m.confirmed and m.audio_index >= 0 and "desk" in phones.calls

    phones.pump(lambda: asked() or caller.disconnected, 10)
    m = mobile()
    result["asked"] = asked() and not caller.disconnected
    result["mobile_codec"] = codec_of(m) if m is not None else None
    if m is not None and result["asked"]:
        act_at = m.media_at + args.press_after
        phones.pump(lambda: m.disconnected or caller.disconnected,
                    max(0.0, act_at - time.monotonic()))
        result["caller_media_while_asked"] = caller.audio_index >= 0
        if args.mode == "1" and not m.disconnected:
            emit(event="press", key="1", t=time.monotonic(),
                 caller_state=caller.states[-1] if caller.states else None)
            prm = pj.CallSendDtmfParam()
            prm.method = pj.PJSUA_DTMF_METHOD_RFC2833
            prm.digits = "1"
            m.sendDtmf(prm)
            result["dtmf"] = True
        elif args.mode == "hangup" and not m.disconnected:
            emit(event="mobile_hangup", t=time.monotonic())
            m.hangup(pj.CallOpParam(True))
            m.hung_up = True
        # the mobile takes the call, or is released (by the engine or by itself)
        phones.pump(lambda: caller.confirmed or m.disconnected or caller.disconnected,
                    args.confirm_seconds + 5)
        desk = phones.calls.get("desk")
        result["desk_ringing_when_mobile_gone"] = (
            m.disconnected and desk is not None and not desk.disconnected)
        if args.mode == "hangup" and m.disconnected:
            phones.desk_at = time.monotonic() + args.desk_after
        # the caller's 200: the mobile, the desk phone, or 104's voicemail
        phones.pump(lambda: caller.confirmed or caller.disconnected, args.no_answer + 5)
        if caller.confirmed and not caller.disconnected:
            emit(event="answered", t=caller.at.get("CONFIRMED", time.monotonic()))
            phones.pump(lambda: caller.audio_index >= 0 or caller.disconnected, 2)
            result["caller_codec"] = codec_of(caller)
            phones.pump(lambda: caller.disconnected, args.talk)
    if not caller.disconnected:
        emit(event="hangup", t=time.monotonic())
        caller.hangup(pj.CallOpParam(True))
        caller.hung_up = True
    others = [c for c in phones.calls.values()]
    phones.pump(lambda: caller.disconnected and all(c.disconnected for c in others), 5)
    if caller.hung_up:  # pjsua reports DISCONNECTED as it sends the BYE: let its 200 in
        phones.pump(lambda: False, 0.3)
    for c in others:
        if not c.disconnected:
            c.hangup(pj.CallOpParam(True))
            c.hung_up = True
    phones.pump(lambda: all(c.disconnected for c in others), 3)
    for side, call in (("caller", caller), *phones.calls.items()):
        result[side] = {"states": call.states, "at": call.at, "code": call.last_code,
                        "rx_requests": call.rx_requests, "media_at": call.media_at,
                        "hung_up": call.hung_up}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", required=True, help="HOST:PORT of the engine")
    ap.add_argument("--port", type=int, required=True,
                    help="the carrier's UDP SIP port: the directory's trunk")
    ap.add_argument("--domain", default="pbx.test")
    ap.add_argument("--caller-id", default="+15145550199")
    ap.add_argument("--did", default="+15145550104", help="the number the caller dials")
    ap.add_argument("--mobile", default="+15145550444", help="the mobile's number")
    ap.add_argument("--desk", default="104", help="the desk phone's extension")
    ap.add_argument("--password", default="pw104")
    ap.add_argument("--mode", choices=["1", "none", "hangup"], required=True)
    ap.add_argument("--folder", required=True,
                    help="has say-caller.wav, say-mobile.wav, say-desk.wav; gets heard-by-*.wav")
    ap.add_argument("--ring", type=float, default=0.5, help="the mobile's 180 before its 200")
    ap.add_argument("--press-after", type=float, default=1.5,
                    help="seconds of the prompt before the key or the hang-up")
    ap.add_argument("--desk-after", type=float, default=1.0,
                    help="hangup mode: the desk answers this long after the mobile left")
    ap.add_argument("--confirm-seconds", type=float, default=10.0)
    ap.add_argument("--no-answer", type=float, default=14.0, help="104's no_answer_seconds")
    ap.add_argument("--talk", type=float, default=2.0,
                    help="seconds after the caller's 200 before it hangs up")
    ap.add_argument("--deadline", type=float, default=40.0, help="seconds for everything")
    ap.add_argument("--log-level", type=int, default=3, help="pjsip log echoed to stderr")
    args = ap.parse_args()

    writer = Log(args.log_level)
    ep = pj.Endpoint()
    ep.libCreate()
    phones = Phones(ep, args, time.monotonic() + args.deadline)
    code = 0
    result: dict[str, Any] = {"asked": False, "dtmf": None}
    try:
        pjcommon.init_endpoint(ep, writer, "pjsua2-switchboard-confirm", clock_rate=8000)
        tid, port = pjcommon.udp_transport(ep, args.port)
        desk_tid, desk_port = pjcommon.udp_transport(ep)
        ep.libStart()
        set_codecs(ep, "PCMU")

        acfg = pj.AccountConfig()
        # not 127.0.0.1: pjsua would give the desk's INVITE (to 127.0.0.1) to this account
        acfg.idUri = f"sip:{args.caller_id}@carrier.test"
        acfg.sipConfig.transportId = tid
        pjcommon.local_media(acfg)
        carrier = Account(phones.incoming)
        phones.accounts.append(carrier)
        carrier.create(acfg, True)  # the default account
        desk = Account(phones.incoming, args.desk)
        phones.accounts.append(desk)
        desk.create(pjcommon.registered_config(args.desk, args.password, args.domain,
                                               args.engine, desk_tid))
        emit(event="ready", port=port, desk_port=desk_port)
        phones.pump(lambda: desk.active or any(c >= 300 for c in desk.codes), 8)
        emit(event="registered", ok=desk.active, codes=desk.codes)
        if not desk.active:
            return 2
        scenario(phones, carrier, result)
        emit(event="result", **result)
        pjcommon.unregister(phones, [desk])  # the module's next run, same engine
    except Exception as e:
        pjcommon.report_error(e, result)  # and ``e`` is dropped here (see there)
        code = 3
    finally:
        # pjsua2 objects go before libDestroy (their destructors call into pjsip)
        phones.release()
        gc.collect()
        for acc in phones.accounts:
            acc.shutdown()
        ep.libDestroy()
        emit(event="done")
    return code


if __name__ == "__main__":
    sys.exit(main())
