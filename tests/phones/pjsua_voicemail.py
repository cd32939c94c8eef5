"""A pjsua2 phone that leaves a voicemail: register, call, play a WAV, press '#'.

Run in its own process by ``tests/test_phones_voicemail.py`` so that pjsip's
threads, sockets and any crash stay out of pytest. SIP runs on the main thread
(``threadCnt = 0``, events polled with ``libHandleEvents``); the conference
bridge is clocked by pjsip's null audio device. Every wait is bounded by one
overall deadline, and the library is always destroyed before exit.

Steps: REGISTER (digest), INVITE ``--dial`` through the registrar (outbound
proxy), once the call is CONFIRMED with active audio wait ``--beep-wait``
seconds (the engine's beep), play ``--wav`` into the call for ``--play``
seconds, then end the message with DTMF '#' (RFC 4733) or by hanging up
(``--end``), and wait for the call to be over.

Options for the codec tests (``tests/test_phones_codecs.py``), off by default:
``--codecs G722,PCMU,PCMA`` offers exactly those codecs in that order
(priorities 200, 199, ...; every other codec disabled) instead of pjsua2's
defaults; ``--report-sdp`` reports each SIP message with an SDP body the
phone sends (its offers) or receives (the engine's answers).

Output, one JSON object per line on stdout:
  {"event": "reg", "code": 200, "active": true, ...}     each registration change
  {"event": "registered", "ok": true, "codes": [...], "port": 1234}
  {"event": "call", "state": "CONFIRMED", "code": 200, ...} each call state change
  {"event": "media", "codec": "G722/16000", "audio_index": 0}   audio became active
  {"event": "sdp_rx", "start_line": "SIP/2.0 200 OK", "method": "INVITE",
   "sdp": "v=0..."}            --report-sdp: a message with SDP received (sdp_tx: sent)
  {"event": "playing"} / {"event": "dtmf", "ok": true} / {"event": "hangup"}
  {"event": "result", "confirmed": true, "media": true, "played": 3.0,
   "ended_by": "engine", "last_code": 200, "codec": "...",
   "codec_final": "..." (read again after playing), ...}
  {"event": "error", "error": "...", ...}                   a pjsua2 call raised (exit 3)
  {"event": "done"}                                          after libDestroy
Exit status: 0 once a call was tried, 2 when REGISTER failed, 3 on an error.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import pjcommon
import pjsua2 as pj
from pjcommon import Log, RegAccount, emit, set_codecs


class Call(pjcommon.TrackedCall):
    """Records what happened; the main loop acts on it."""

    def __init__(self, acc: RegAccount, report_sdp: bool = False) -> None:
        super().__init__(acc)
        self.report_sdp = report_sdp

    def onCallState(self, prm: Any) -> None:
        ci = self.track_state()
        emit(event="call", state=str(ci.stateText), code=self.last_code,
             reason=self.last_reason)

    def onCallMediaState(self, prm: Any) -> None:
        ci = self.getInfo()
        for i, media in enumerate(ci.media):
            if (media.type == pj.PJMEDIA_TYPE_AUDIO
                    and media.status == pj.PJSUA_CALL_MEDIA_ACTIVE):
                self.audio_index = i
        emit(event="media_state", audio_index=self.audio_index)

    def onCallTsxState(self, prm: Any) -> None:
        """--report-sdp: each SIP message with an SDP body sent or received (as sent:
        pjsip trims its codec-lock offer after ``onCallSdpCreated``)."""
        if not self.report_sdp or prm.e.type != pj.PJSIP_EVENT_TSX_STATE:
            return
        state = prm.e.body.tsxState
        if state.type == pj.PJSIP_EVENT_RX_MSG:
            kind, whole = "sdp_rx", str(state.src.rdata.wholeMsg)
        elif state.type == pj.PJSIP_EVENT_TX_MSG:
            kind, whole = "sdp_tx", str(state.src.tdata.wholeMsg)
        else:
            return
        head, _, body = whole.partition("\r\n\r\n")
        if "m=" in body:
            emit(event=kind, start_line=head.split("\r\n", 1)[0],
                 method=str(state.tsx.method), sdp=body)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--registrar", required=True, help="HOST:PORT of the engine")
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--domain", required=True)
    ap.add_argument("--dial", required=True, help="the user part to call")
    ap.add_argument("--wav", required=True, help="what to say: a WAV played into the call")
    ap.add_argument("--beep-wait", type=float, default=0.6)
    ap.add_argument("--play", type=float, default=3.0, help="seconds of --wav to play")
    ap.add_argument("--end", choices=["hash", "hangup"], default="hash")
    ap.add_argument("--deadline", type=float, default=40.0, help="seconds for everything")
    ap.add_argument("--log-level", type=int, default=4, help="pjsip log echoed to stderr")
    ap.add_argument("--codecs", default=None,
                    help="offer exactly these codecs, in order (default: pjsua2's own)")
    ap.add_argument("--report-sdp", action="store_true",
                    help="emit sdp_tx / sdp_rx events")
    args = ap.parse_args()

    deadline = time.monotonic() + args.deadline
    writer = Log(args.log_level)
    ep = pj.Endpoint()
    ep.libCreate()
    acc: RegAccount | None = None
    call: Call | None = None
    player: Any = None
    the_call: Call | None = None
    code = 0
    result: dict[str, Any] = {"confirmed": False, "media": False, "played": 0.0,
                              "dtmf": None, "ended_by": None, "codec": None,
                              "codec_final": None}

    pump = pjcommon.Pump(ep, deadline).pump

    try:
        pjcommon.init_endpoint(ep, writer, "pjsua2-switchboard-test")

        tid, port = pjcommon.udp_transport(ep)
        ep.libStart()
        if args.codecs:
            set_codecs(ep, args.codecs)
        emit(event="codecs", codecs=pjcommon.enabled_codecs(ep))

        acfg = pjcommon.registered_config(args.user, args.password, args.domain,
                                          args.registrar, tid)
        # pjsip's default codec lock stays on: it re-INVITEs with the codec it chose,
        # and the engine (the voicemail endpoint) must answer that.
        acc = RegAccount()
        acc.create(acfg)
        registered_acc = acc
        pump(lambda: registered_acc.active or any(c >= 300 for c in registered_acc.codes), 8)
        emit(event="registered", ok=acc.active, codes=acc.codes, port=port)
        if not acc.active:
            code = 2
            return code

        call = the_call = Call(acc, args.report_sdp)
        prm = pj.CallOpParam(True)
        call.makeCall(f"sip:{args.dial}@{args.domain}", prm)
        pump(lambda: (the_call.confirmed and the_call.audio_index >= 0)
             or the_call.disconnected, 10)
        result["confirmed"] = call.confirmed
        result["media"] = call.audio_index >= 0
        if call.confirmed and call.audio_index >= 0 and not call.disconnected:
            result["codec"] = pjcommon.codec_of(call)
            emit(event="media", codec=result["codec"], audio_index=call.audio_index)
            pump(lambda: the_call.disconnected, args.beep_wait)  # the engine's beep

            player = pj.AudioMediaPlayer()
            player.createPlayer(args.wav, pj.PJMEDIA_FILE_NO_LOOP)
            aud = call.getAudioMedia(call.audio_index)
            player.startTransmit(aud)
            started = time.monotonic()
            emit(event="playing")
            pump(lambda: the_call.disconnected, args.play)
            result["played"] = round(time.monotonic() - started, 3)
            if not call.disconnected:  # after pjsip's codec-lock re-INVITE, if any
                result["codec_final"] = pjcommon.codec_of(call)
            if not call.disconnected:
                player.stopTransmit(aud)
            pump(lambda: the_call.disconnected, 0.2)

            if args.end == "hash" and not call.disconnected:
                try:
                    call.dialDtmf("#")  # RFC 4733 when the answer has telephone-event
                    result["dtmf"] = True
                except pj.Error as e:
                    result["dtmf"] = f"refused: {e.info()}"
                emit(event="dtmf", ok=result["dtmf"])
                # '#' ends the message: the engine should hang up on its own
                if pump(lambda: the_call.disconnected, 10):
                    result["ended_by"] = "engine"
        elif call.disconnected:
            result["ended_by"] = "engine"
        if not call.disconnected:
            result["ended_by"] = result["ended_by"] or "phone"
            emit(event="hangup")
            call.hangup(pj.CallOpParam(True))
            pump(lambda: the_call.disconnected, 5)
        result.update(states=call.states, last_code=call.last_code,
                      last_reason=call.last_reason)
        emit(event="result", **result)

        seen = len(acc.codes)
        acc.setRegistration(False)  # un-REGISTER; wait (bounded) for its answer
        pump(lambda: len(registered_acc.codes) > seen, 3)
    except Exception as e:
        pjcommon.report_error(e, result)  # and ``e`` is dropped here (see there)
        code = 3
    finally:
        # pjsua2 objects go before libDestroy (their destructors call into pjsip)
        player = call = the_call = None
        if acc is not None:
            acc.shutdown()
        ep.libDestroy()
        emit(event="done")
    return code


if __name__ == "__main__":
    sys.exit(main())
