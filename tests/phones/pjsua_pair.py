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
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import pjsua2 as pj

# pjlib prints some lines straight to fd 1 (before any log config applies): keep
# the real stdout for the JSON lines and point fd 1 at stderr.
REPORT = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)

STATUS = {pj.PJSUA_CALL_MEDIA_NONE: "none", pj.PJSUA_CALL_MEDIA_ACTIVE: "active",
          pj.PJSUA_CALL_MEDIA_LOCAL_HOLD: "local_hold",
          pj.PJSUA_CALL_MEDIA_REMOTE_HOLD: "remote_hold", pj.PJSUA_CALL_MEDIA_ERROR: "error"}


def emit(**fields: Any) -> None:
    REPORT.write(json.dumps(fields) + "\n")
    REPORT.flush()


class Log(pj.LogWriter):  # type: ignore[misc]
    """pjsip's log, echoed to stderr up to ``echo_level``."""

    def __init__(self, echo_level: int) -> None:
        super().__init__()
        self.echo_level = echo_level

    def write(self, entry: Any) -> None:
        if entry.level <= self.echo_level:
            msg = str(entry.msg)
            sys.stderr.write(msg if msg.endswith("\n") else msg + "\n")


class Call(pj.Call):  # type: ignore[misc]
    """Records what happened; the main loop acts on it (no pjsip calls from here
    other than reading the call's own info)."""

    def __init__(self, acc: Account, side: str, call_id: int = pj.PJSUA_INVALID_ID) -> None:
        super().__init__(acc, call_id)
        self.side = side
        self.states: list[str] = []
        self.confirmed = False
        self.disconnected = False
        self.last_code = 0
        self.last_reason = ""
        self.audio_index = -1
        self.status = "none"
        self.media_changes = 0  # bumped on each onCallMediaState: reconnect the bridge
        self.reoffers = 0  # re-INVITE / UPDATE offers received in the dialog

    def onCallState(self, prm: Any) -> None:
        ci = self.getInfo()
        self.states.append(str(ci.stateText))
        self.last_code = int(ci.lastStatusCode)
        self.last_reason = str(ci.lastReason)
        if ci.state == pj.PJSIP_INV_STATE_CONFIRMED:
            self.confirmed = True
        if ci.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.disconnected = True
        emit(event="call", side=self.side, state=str(ci.stateText), code=self.last_code,
             reason=self.last_reason, t=time.monotonic())

    def onCallMediaState(self, prm: Any) -> None:
        ci = self.getInfo()
        for i, media in enumerate(ci.media):
            if media.type == pj.PJMEDIA_TYPE_AUDIO:
                self.audio_index = i if media.status in (
                    pj.PJSUA_CALL_MEDIA_ACTIVE, pj.PJSUA_CALL_MEDIA_LOCAL_HOLD,
                    pj.PJSUA_CALL_MEDIA_REMOTE_HOLD) else -1
                self.status = STATUS.get(media.status, str(media.status))
                break
        self.media_changes += 1
        emit(event="media_state", side=self.side, status=self.status,
             audio_index=self.audio_index, t=time.monotonic())

    def onCallRxOffer(self, prm: Any) -> None:
        self.reoffers += 1
        emit(event="rx_offer", side=self.side, t=time.monotonic())


class Account(pj.Account):  # type: ignore[misc]
    def __init__(self, user: str) -> None:
        super().__init__()
        self.user = user
        self.codes: list[int] = []
        self.active = False
        self.seen = 0  # len(codes) when the un-REGISTER went out
        self.incoming: list[Call] = []  # kept referenced: a collected Call hangs up

    def onRegState(self, prm: Any) -> None:
        info = self.getInfo()
        self.active = bool(info.regIsActive)
        self.codes.append(int(prm.code))
        emit(event="reg", account=self.user, code=int(prm.code), reason=str(prm.reason),
             active=self.active, expiration=int(info.regExpiresSec))

    def onIncomingCall(self, prm: Any) -> None:
        call = Call(self, "callee", prm.callId)
        self.incoming.append(call)
        ci = call.getInfo()
        emit(event="incoming", account=self.user, local=str(ci.localUri),
             remote=str(ci.remoteUri), t=time.monotonic())


class Leg:
    """One phone's side of the call: its call, its player and recorder, kept
    connected through the conference bridge."""

    def __init__(self, call: Call, wav: str, record: str | None) -> None:
        self.call = call
        self.wav = wav
        self.record = record
        self.player: Any = None
        self.recorder: Any = None
        self.seen = -1  # call.media_changes when the bridge was last connected

    def connect(self) -> None:
        """Player -> call and call -> recorder, again after each media change."""
        call = self.call
        if call.disconnected or call.audio_index < 0 or call.media_changes == self.seen:
            return
        self.seen = call.media_changes
        aud = call.getAudioMedia(call.audio_index)
        if self.player is None:
            self.player = pj.AudioMediaPlayer()
            self.player.createPlayer(self.wav, 0)  # looped
        self.player.startTransmit(aud)
        if self.record is not None:
            if self.recorder is None:
                self.recorder = pj.AudioMediaRecorder()
                self.recorder.createRecorder(self.record)
                aud.startTransmit(self.recorder)
                emit(event="recording", side=call.side, path=self.record, t=time.monotonic())
            else:
                aud.startTransmit(self.recorder)


def set_codecs(ep: Any, wanted: str) -> None:
    """Offer exactly the codecs named in ``wanted`` ("G722,PCMU"), in that order."""
    names = [n.strip().casefold() for n in wanted.split(",") if n.strip()]
    found: set[str] = set()
    for c in ep.codecEnum2():
        name = str(c.codecId).split("/", 1)[0].casefold()
        if name in names:
            found.add(name)
            ep.codecSetPriority(str(c.codecId), 200 - names.index(name))
        else:
            ep.codecSetPriority(str(c.codecId), 0)
    missing = [n for n in names if n not in found]
    if missing:
        raise ValueError(f"pjsua2 has no codec {', '.join(missing)}")


class Pair:
    """The running library: accounts and call legs, the bounded event pump."""

    def __init__(self, ep: Any, args: argparse.Namespace, deadline: float) -> None:
        self.ep = ep
        self.args = args
        self.deadline = deadline
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

    def pump(self, until: Callable[[], bool], limit: float) -> bool:
        """Poll pjsip until ``until()`` or ``limit`` seconds (or the deadline) pass."""
        stop = min(time.monotonic() + limit, self.deadline)
        while True:
            self.service()
            if until():
                return True
            if time.monotonic() >= stop:
                return False
            self.ep.libHandleEvents(10)

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
    caller = Call(pair.accounts[0], "caller")
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
        cfg = pj.EpConfig()
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = True
        cfg.uaConfig.userAgent = "pjsua2-switchboard-pair"
        cfg.logConfig.level = 5
        cfg.logConfig.consoleLevel = 5
        cfg.logConfig.msgLogging = True
        cfg.logConfig.writer = writer
        cfg.logConfig.decor = 0
        cfg.medConfig.threadCnt = 0
        cfg.medConfig.hasIoqueue = False
        cfg.medConfig.clockRate = 8000  # the bridge and the recordings at 8 kHz
        cfg.medConfig.sndClockRate = 8000
        cfg.medConfig.noVad = True  # send the tone steadily, no silence suppression
        cfg.medConfig.ecTailLen = 0  # no echo canceller between the WAV and the call
        ep.libInit(cfg)
        ep.audDevManager().setNullDev()

        tids: list[int] = []
        ports: list[int] = []
        for _ in range(2 if args.transports == "two" else 1):
            tcfg = pj.TransportConfig()
            tcfg.boundAddress = "127.0.0.1"
            tcfg.publicAddress = "127.0.0.1"
            tcfg.port = 0
            tid = ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
            tids.append(tid)
            ports.append(int(ep.transportGetInfo(tid).localName.rsplit(":", 1)[1]))
        ep.libStart()
        if args.codecs:
            set_codecs(ep, args.codecs)
        emit(event="codecs", codecs=[f"{c.codecId}:{c.priority}" for c in ep.codecEnum2()
                                     if c.priority > 0])

        for n, spec in enumerate((args.caller, args.callee)):
            user, _, password = spec.partition(":")
            acfg = pj.AccountConfig()
            acfg.idUri = f"sip:{user}@{args.domain}"
            acfg.regConfig.registrarUri = f"sip:{args.registrar}"
            acfg.regConfig.timeoutSec = 300
            acfg.regConfig.retryIntervalSec = 0
            acfg.sipConfig.transportId = tids[min(n, len(tids) - 1)]
            # every request goes to the engine; it drops its own Route
            acfg.sipConfig.proxies.append(f"sip:{args.registrar};lr")
            acfg.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", user, 0, password))
            acfg.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
            acfg.mediaConfig.transportConfig.publicAddress = "127.0.0.1"
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
        # Reported and dropped here: a traceback kept alive into ``finally`` holds the
        # Call (as ``self`` of a pjsua2 method), whose destructor would then run after
        # libDestroy and abort on an assertion in pjsua_call_set_user_data.
        info = e.info() if isinstance(e, pj.Error) else repr(e)
        sys.stderr.write(traceback.format_exc())
        emit(event="error", error=str(info), **result)
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
