"""One pjsua2 process plays the carrier: the caller on a DID and the screened mobile.

Run in its own process by ``tests/test_phones_rebound.py`` so that pjsip's
threads, sockets and any crash stay out of pytest. SIP runs on the main thread
(``threadCnt = 0``, events polled with ``libHandleEvents``); the conference
bridge (8 kHz) is clocked by pjsip's null audio device. Every wait is bounded by
one overall deadline, and the library is always destroyed before exit.

One UDP transport on ``--port`` (the directory's trunk: ``host:port`` and
``inbound_port``), one account without registration (``sip:CALLER@127.0.0.1``,
no registrar, no proxy). The caller INVITEs ``sip:DID@ENGINE`` straight to the
engine, so the call comes from the trunk; the engine's forward to the mobile
(``sip:MOBILE@127.0.0.1:PORT``) arrives on the same transport and goes to the
same account (the ``incoming`` event shows its request URI user). The mobile
rings (180), answers 200 after ``--ring`` s, and ``--press-after`` s into its
media (the announcement) sends ``--key`` as RFC 4733 (``Call.sendDtmf`` with
``PJSUA_DTMF_METHOD_RFC2833``). Then the script waits for the caller's 200
(the mobile accepted, or voicemail answered after a refusal), lets ``--talk``
s pass and hangs the caller up.

Each side plays its own WAV into its call, looped (``--caller-wav``,
``--mobile-wav``), from its first media on (the caller's early media too), and
records what it receives (``--caller-record``, ``--mobile-record``). The
conference connections are made again after every media change (pjsua may
rebuild a stream's bridge port when the 200 follows the 183).

Output, one JSON object per line on stdout; ``t`` is this process's
``time.monotonic()``, so the recordings can be cut into phases:
  {"event": "ready", "port": 5060, "codecs": [...]}
  {"event": "incoming", "local": "...", "remote": "...", "request_user": "+1514...", "t": ...}
  {"event": "call", "side": "caller"|"mobile", "state": "EARLY", "code": 183, "t": ...}
  {"event": "media_state", "side": ..., "status": "active", "call_state": "EARLY", "t": ...}
  {"event": "recording", "side": ..., "path": "...", "t": ...}  the recorder's sample 0
  {"event": "rx_request", "side": "mobile", "method": "BYE", "t": ...}
  {"event": "ringing"|"answer"|"press"|"answered"|"hangup", "t": ...}   the phases
  {"event": "result", "caller_states": [...], "mobile_states": [...], "dtmf": true, ...}
  {"event": "error", "error": "...", ...}                   a pjsua2 call raised (exit 3)
  {"event": "done"}                                          after libDestroy
Exit status: 0 once a call was tried, 3 on an error.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from typing import Any

import pjcommon
import pjsua2 as pj
from pjcommon import Leg, Log, Pump, codec_of, emit, set_codecs

Call = pjcommon.SideCall  # records what happened; the main loop acts on it


class Account(pj.Account):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.incoming: list[Call] = []  # kept referenced: a collected Call hangs up

    def onIncomingCall(self, prm: Any) -> None:
        call = Call(self, "mobile", prm.callId)
        self.incoming.append(call)
        ci = call.getInfo()
        uri, user = pjcommon.request_target(prm)
        emit(event="incoming", local=str(ci.localUri), remote=str(ci.remoteUri),
             request_uri=uri, request_user=user, t=time.monotonic())


class Phone(Pump):
    """The running library: the account, the two legs, the bounded event pump."""

    def __init__(self, ep: Any, args: argparse.Namespace, deadline: float) -> None:
        super().__init__(ep, deadline)
        self.args = args
        self.account: Account | None = None
        self.legs: dict[str, Leg] = {}
        self.ring_until = 0.0  # when the mobile answers 200 (after its 180)
        self.answered = False

    def service(self) -> None:
        """Each poll: ring a new incoming call, answer it in time, keep the bridge
        connected (pjsip calls from the main loop, not from the callbacks)."""
        acc = self.account
        if "mobile" not in self.legs and acc is not None and acc.incoming:
            call = acc.incoming[0]
            self.legs["mobile"] = Leg(call, self.args.mobile_wav, self.args.mobile_record)
            prm = pj.CallOpParam()
            prm.statusCode = 180
            call.answer(prm)
            self.ring_until = time.monotonic() + self.args.ring
            emit(event="ringing", t=time.monotonic())
        mobile = self.legs.get("mobile")
        if mobile is not None and not self.answered and time.monotonic() >= self.ring_until \
                and not mobile.call.disconnected:
            self.answered = True
            prm = pj.CallOpParam(True)
            prm.statusCode = 200
            mobile.call.answer(prm)
            emit(event="answer", t=time.monotonic())
        for leg in self.legs.values():
            leg.connect()

    def release(self) -> None:
        """Drop every pjsua2 object this side holds (before libDestroy); the
        recorders' destructors finish their WAV headers."""
        for leg in self.legs.values():
            leg.player = leg.recorder = None
        self.legs.clear()
        if self.account is not None:
            self.account.incoming.clear()


def scenario(phone: Phone, result: dict[str, Any]) -> None:
    """The caller calls the DID; the mobile answers, hears the announcement and
    presses the key; the caller gets its 200 (accepted, or voicemail), talks,
    hangs up. The caller's Call lives in this frame and in ``phone.legs`` only."""
    args = phone.args
    acc = phone.account
    assert acc is not None
    caller = Call(acc, "caller")
    phone.legs["caller"] = Leg(caller, args.caller_wav, args.caller_record)
    caller.makeCall(f"sip:{args.did}@{args.engine}", pj.CallOpParam(True))

    def mobile() -> Call | None:
        leg = phone.legs.get("mobile")
        return leg.call if leg is not None else None

    def screening() -> bool:
        m = mobile()
        return m is not None and m.confirmed and m.audio_index >= 0 and caller.audio_index >= 0

    def broken() -> bool:
        m = mobile()
        return caller.disconnected or (m is not None and m.disconnected)

    phone.pump(lambda: screening() or broken(), 10)
    m = mobile()
    result["incoming"] = len(acc.incoming)
    result["screening"] = screening() and not broken()
    result["caller_early_media"] = caller.audio_index >= 0 and not caller.confirmed
    if m is not None:
        result["mobile_codec"] = codec_of(m)
    result["caller_codec_early"] = codec_of(caller)
    if m is not None and result["screening"]:
        # the announcement started with the mobile's media (the engine plays at once)
        press_at = m.media_at + args.press_after
        phone.pump(broken, max(0.0, press_at - time.monotonic()))
        if not broken():
            emit(event="press", key=args.key, t=time.monotonic(),
                 caller_state=caller.states[-1] if caller.states else None)
            prm = pj.CallSendDtmfParam()
            prm.method = pj.PJSUA_DTMF_METHOD_RFC2833
            prm.digits = args.key
            try:
                m.sendDtmf(prm)
                result["dtmf"] = True
            except pj.Error as e:
                result["dtmf"] = f"refused: {e.info()}"

            if args.key == "1":
                phone.pump(lambda: caller.confirmed or broken(), 6)
            else:  # refused: the engine hangs the mobile up, voicemail answers the caller
                phone.pump(lambda: (caller.confirmed and m.disconnected)
                           or caller.disconnected, 8)
            if caller.confirmed and not caller.disconnected:
                emit(event="answered", t=caller.at.get("CONFIRMED", time.monotonic()))
                phone.pump(lambda: caller.audio_index >= 0 or caller.disconnected, 2)
                result["caller_codec"] = codec_of(caller)
                phone.pump(lambda: caller.disconnected, args.talk)

    result["mobile_ended_by"] = "engine" if m is not None and m.disconnected else None
    if not caller.disconnected:
        emit(event="hangup", t=time.monotonic())
        caller.hangup(pj.CallOpParam(True))
        caller.hung_up = True
    phone.pump(lambda: caller.disconnected and (m is None or m.disconnected), 5)
    if caller.hung_up:  # pjsua reports DISCONNECTED as it sends the BYE: let its 200 in
        phone.pump(lambda: False, 0.3)
    if m is not None and not m.disconnected:
        m.hangup(pj.CallOpParam(True))
        m.hung_up = True
        phone.pump(lambda: m.disconnected, 3)
    if result["mobile_ended_by"] is None and m is not None and m.disconnected:
        # hung up by the engine after the caller's BYE (accepted: the relay ends)
        result["mobile_ended_by"] = "phone" if m.hung_up else "engine after caller"
    result.update(
        caller_states=caller.states, caller_at=caller.at, caller_code=caller.last_code,
        caller_reason=caller.last_reason, caller_rx_requests=caller.rx_requests,
        mobile_states=m.states if m else [], mobile_at=m.at if m else {},
        mobile_code=m.last_code if m else 0, mobile_reason=m.last_reason if m else "",
        mobile_rx_requests=m.rx_requests if m else [],
        mobile_media_at=m.media_at if m else 0.0, caller_media_at=caller.media_at)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", required=True, help="HOST:PORT of the engine")
    ap.add_argument("--port", type=int, required=True,
                    help="this phone's UDP SIP port: the directory's trunk")
    ap.add_argument("--caller-id", default="+15145550199")
    ap.add_argument("--did", default="+15145550104", help="the number the caller dials")
    ap.add_argument("--key", choices=["1", "2"], required=True,
                    help="the mobile's answer: 1 accepts, 2 refuses")
    ap.add_argument("--caller-wav", required=True, help="the caller's voice, looped")
    ap.add_argument("--mobile-wav", required=True, help="the mobile's voice, looped")
    ap.add_argument("--caller-record", required=True, help="WAV of what the caller receives")
    ap.add_argument("--mobile-record", required=True, help="WAV of what the mobile receives")
    ap.add_argument("--ring", type=float, default=0.5, help="the mobile's 180 before its 200")
    ap.add_argument("--press-after", type=float, default=1.5,
                    help="seconds of the announcement before the key")
    ap.add_argument("--talk", type=float, default=2.0,
                    help="seconds after the caller's 200 before it hangs up")
    ap.add_argument("--codecs", default="PCMU", help="offer exactly these codecs, in order")
    ap.add_argument("--deadline", type=float, default=25.0, help="seconds for everything")
    ap.add_argument("--log-level", type=int, default=3, help="pjsip log echoed to stderr")
    args = ap.parse_args()

    writer = Log(args.log_level)
    ep = pj.Endpoint()
    ep.libCreate()
    phone = Phone(ep, args, time.monotonic() + args.deadline)
    code = 0
    result: dict[str, Any] = {"screening": False, "dtmf": None, "caller_codec": None,
                              "mobile_codec": None}
    try:
        pjcommon.init_endpoint(ep, writer, "pjsua2-switchboard-carrier",
                               clock_rate=8000)  # the bridge and recordings at 8 kHz

        tid, port = pjcommon.udp_transport(ep, args.port)
        ep.libStart()
        set_codecs(ep, args.codecs)

        acfg = pj.AccountConfig()
        acfg.idUri = f"sip:{args.caller_id}@127.0.0.1"  # no registrar, no proxy
        acfg.sipConfig.transportId = tid
        pjcommon.local_media(acfg)
        acc = Account()
        phone.account = acc
        acc.create(acfg, True)  # the default account: takes the engine's INVITE too
        emit(event="ready", port=port, codecs=pjcommon.enabled_codecs(ep))

        scenario(phone, result)
        emit(event="result", **result)
    except Exception as e:
        pjcommon.report_error(e, result)  # and ``e`` is dropped here (see there)
        code = 3
    finally:
        # pjsua2 objects go before libDestroy (their destructors call into pjsip)
        phone.release()
        gc.collect()
        if phone.account is not None:
            phone.account.shutdown()
        ep.libDestroy()
        emit(event="done")
    return code


if __name__ == "__main__":
    sys.exit(main())
