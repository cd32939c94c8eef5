"""Pieces shared by the pjsua2 phone scripts in this folder.

Each script runs as ``sys.executable tests/phones/pjsua_*.py``, so this folder is
on ``sys.path`` and the scripts ``import pjcommon``. Importing this module does
the stdout dance once, before pjsua2 can print anything: pjlib prints some lines
straight to fd 1 (before any log config applies), so the real stdout is kept for
the JSON lines (``emit``) and fd 1 points at stderr.
"""

from __future__ import annotations

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


class RegAccount(pj.Account):  # type: ignore[misc]
    """An account that registers: notes each registration code and whether the
    binding is active. ``user``, when given, is reported with each ``reg`` event."""

    def __init__(self, user: str | None = None) -> None:
        super().__init__()
        self.user = user
        self.codes: list[int] = []
        self.active = False

    def onRegState(self, prm: Any) -> None:
        info = self.getInfo()
        self.active = bool(info.regIsActive)
        self.codes.append(int(prm.code))
        fields: dict[str, Any] = {"event": "reg"}
        if self.user is not None:
            fields["account"] = self.user
        emit(**fields, code=int(prm.code), reason=str(prm.reason), active=self.active,
             expiration=int(info.regExpiresSec))


class TrackedCall(pj.Call):  # type: ignore[misc]
    """A call that notes its states as they come; the main loop acts on them (no
    pjsip calls from the callbacks other than reading the call's own info)."""

    def __init__(self, acc: Any, call_id: int = pj.PJSUA_INVALID_ID) -> None:
        super().__init__(acc, call_id)
        self.states: list[str] = []
        self.confirmed = False
        self.disconnected = False
        self.last_code = 0
        self.last_reason = ""
        self.audio_index = -1

    def track_state(self) -> Any:
        """In ``onCallState``: note the new state; the call's info."""
        ci = self.getInfo()
        self.states.append(str(ci.stateText))
        self.last_code = int(ci.lastStatusCode)
        self.last_reason = str(ci.lastReason)
        if ci.state == pj.PJSIP_INV_STATE_CONFIRMED:
            self.confirmed = True
        if ci.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.disconnected = True
        return ci


class SideCall(TrackedCall):
    """One side's call (``side``: caller, callee, mobile, desk...), reported as JSON
    lines as it goes: each state (``call``, and its first time in ``at``), each
    media change (``media_state``; ``media_changes`` tells a :class:`Leg` to connect
    the bridge again), each request the far end sends in the dialog
    (``rx_request``, once per CSeq: retransmissions are not counted again), each
    offer the far end makes in the dialog (``rx_offer``; ``reoffers`` counts
    re-INVITEs and UPDATEs with SDP) and each NOTIFY about a REFER this side sent
    (``xfer_status``; ``xfer_codes``). One class for the calls of every script, so
    that what a phone saw is reported alike whichever test drives it."""

    def __init__(self, acc: Any, side: str, call_id: int = pj.PJSUA_INVALID_ID) -> None:
        super().__init__(acc, call_id)
        self.side = side
        self.status = "none"  # the audio's status at the last media change
        self.at: dict[str, float] = {}  # state text -> first time seen
        self.hung_up = False  # this script hung it up (else the far end did)
        self.media_changes = 0
        self.media_at = 0.0  # first active audio
        self.rx_requests: list[str] = []  # requests received inside the dialog
        self.seen_cseqs: set[str] = set()
        self.reoffers = 0  # re-INVITE / UPDATE offers received in the dialog
        self.xfer_codes: list[int] = []  # the NOTIFYs' codes of this side's REFER
        self.ringing_since = 0.0  # when this script answered it 180 (0: never)

    def onCallState(self, prm: Any) -> None:
        ci = self.track_state()
        state = str(ci.stateText)
        now = time.monotonic()
        self.at.setdefault(state, now)
        emit(event="call", side=self.side, state=state, code=self.last_code,
             reason=self.last_reason, t=now)

    def onCallMediaState(self, prm: Any) -> None:
        ci = self.getInfo()
        found = audio_status(ci)
        if found is None:
            self.status = "none"
        else:
            self.audio_index, self.status = found
        now = time.monotonic()
        if self.audio_index >= 0 and not self.media_at:
            self.media_at = now
        self.media_changes += 1
        emit(event="media_state", side=self.side, status=self.status,
             call_state=str(ci.stateText), audio_index=self.audio_index, t=now)

    def onCallRxOffer(self, prm: Any) -> None:
        self.reoffers += 1  # answered by pjsua2's default (200 with its own SDP)
        emit(event="rx_offer", side=self.side, t=time.monotonic())

    def onCallTransferStatus(self, prm: Any) -> None:
        self.xfer_codes.append(int(prm.statusCode))
        emit(event="xfer_status", side=self.side, code=int(prm.statusCode),
             final=bool(prm.finalNotify), t=time.monotonic())

    def onCallTsxState(self, prm: Any) -> None:
        if prm.e.type != pj.PJSIP_EVENT_TSX_STATE:
            return
        state = prm.e.body.tsxState
        if state.type != pj.PJSIP_EVENT_RX_MSG or state.tsx.role != pj.PJSIP_ROLE_UAS:
            return
        whole = str(state.src.rdata.wholeMsg)
        cseq = next((line.split(":", 1)[1].strip() for line in whole.split("\r\n")
                     if line.lower().startswith("cseq:")), "")
        if cseq and cseq not in self.seen_cseqs:
            self.seen_cseqs.add(cseq)
            method = str(state.tsx.method)
            self.rx_requests.append(method)
            emit(event="rx_request", side=self.side, method=method, cseq=cseq,
                 t=time.monotonic())


def request_target(prm: Any) -> tuple[str, str]:
    """In ``onIncomingCall``: the INVITE's request URI and its user part (which
    account pjsua hands a call to says little when several share a transport)."""
    first = str(prm.rdata.wholeMsg).split("\r\n", 1)[0]  # INVITE sip:USER@HOST SIP/2.0
    uri = first.split(" ")[1] if " " in first else ""
    return uri, uri.partition(":")[2].partition("@")[0]


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


def enabled_codecs(ep: Any) -> list[str]:
    """``codecId:priority`` of each codec offered (priority above 0)."""
    return [f"{c.codecId}:{c.priority}" for c in ep.codecEnum2() if c.priority > 0]


def init_endpoint(ep: Any, writer: Log, user_agent: str, *, steady_media: bool = True,
                  clock_rate: int | None = None) -> None:
    """``libInit`` for the main thread only (SIP and media polled with
    ``libHandleEvents``), pjsip's log at level 5 into ``writer``, the null audio
    device. ``steady_media``: no VAD and no echo canceller (the WAV goes out as it
    is); ``clock_rate``: the conference bridge's and the sound device's rate.
    The caller keeps ``writer`` referenced until ``libDestroy``."""
    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 0
    cfg.uaConfig.mainThreadOnly = True
    cfg.uaConfig.userAgent = user_agent
    cfg.logConfig.level = 5  # level 5 carries the SIP messages
    cfg.logConfig.consoleLevel = 5
    cfg.logConfig.msgLogging = True
    cfg.logConfig.writer = writer
    cfg.logConfig.decor = 0
    cfg.medConfig.threadCnt = 0
    cfg.medConfig.hasIoqueue = False
    if clock_rate is not None:
        cfg.medConfig.clockRate = clock_rate  # the bridge and the recordings
        cfg.medConfig.sndClockRate = clock_rate
    if steady_media:
        cfg.medConfig.noVad = True  # send the tone steadily, no silence suppression
        cfg.medConfig.ecTailLen = 0  # no echo canceller between the WAV and the call
    ep.libInit(cfg)
    ep.audDevManager().setNullDev()


def udp_transport(ep: Any, port: int = 0) -> tuple[int, int]:
    """A UDP transport on 127.0.0.1 (``port`` 0: any): its id and its port."""
    tcfg = pj.TransportConfig()
    tcfg.boundAddress = "127.0.0.1"
    tcfg.publicAddress = "127.0.0.1"
    tcfg.port = port
    tid = ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
    return tid, int(ep.transportGetInfo(tid).localName.rsplit(":", 1)[1])


def local_media(acfg: Any) -> None:
    """The account's RTP on 127.0.0.1."""
    acfg.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
    acfg.mediaConfig.transportConfig.publicAddress = "127.0.0.1"


def registered_config(user: str, password: str, domain: str, registrar: str,
                      tid: int) -> Any:
    """An ``AccountConfig`` that registers ``user`` (digest) with ``registrar`` and
    sends every request (the INVITE too) there as outbound proxy; the engine drops
    its own Route. RTP on 127.0.0.1."""
    acfg = pj.AccountConfig()
    acfg.idUri = f"sip:{user}@{domain}"
    acfg.regConfig.registrarUri = f"sip:{registrar}"
    acfg.regConfig.timeoutSec = 300
    acfg.regConfig.retryIntervalSec = 0
    acfg.sipConfig.transportId = tid
    acfg.sipConfig.proxies.append(f"sip:{registrar};lr")
    acfg.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", user, 0, password))
    local_media(acfg)
    return acfg


def codec_of(call: Any) -> str | None:
    """The codec of the call's audio stream, None without one."""
    if call.audio_index < 0 or call.disconnected:
        return None
    try:
        si = call.getStreamInfo(call.audio_index)
    except pj.Error as e:
        return f"unknown ({e.info()})"
    return f"{si.codecName}/{si.codecClockRate}"


class Pump:
    """The bounded event pump: one overall deadline, ``service()`` on each poll."""

    def __init__(self, ep: Any, deadline: float) -> None:
        self.ep = ep
        self.deadline = deadline

    def service(self) -> None:
        """Called on each poll, from the main loop (not from a pjsua2 callback)."""

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


def unregister(pump: Pump, accounts: list[RegAccount], limit: float = 3.0) -> bool:
    """Remove each account's binding (REGISTER with Expires 0) and wait, bounded, for
    the answers: a later run against the same engine then finds only its own
    bindings, not a contact that no longer listens."""
    seen = [len(acc.codes) for acc in accounts]
    for acc in accounts:
        acc.setRegistration(False)
    return pump.pump(lambda: all(len(acc.codes) > n for acc, n in zip(accounts, seen,
                                                                         strict=True)),
                     limit)


class Leg:
    """One side's call, its player and recorder (optional), kept connected through
    the conference bridge. ``call`` has ``side``, ``disconnected``, ``audio_index``
    and ``media_changes`` (bumped on each onCallMediaState)."""

    def __init__(self, call: Any, wav: str, record: str | None) -> None:
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


def audio_status(ci: Any) -> tuple[int, str] | None:
    """(index, status) of the call's first audio media (index -1 unless active or
    on hold), None without audio media."""
    for i, media in enumerate(ci.media):
        if media.type == pj.PJMEDIA_TYPE_AUDIO:
            index = i if media.status in (
                pj.PJSUA_CALL_MEDIA_ACTIVE, pj.PJSUA_CALL_MEDIA_LOCAL_HOLD,
                pj.PJSUA_CALL_MEDIA_REMOTE_HOLD) else -1
            return index, STATUS.get(media.status, str(media.status))
    return None


def report_error(e: BaseException, result: dict[str, Any]) -> None:
    """The ``error`` event for an exception caught in ``main``. Called inside the
    ``except`` block, which then drops ``e``: a traceback kept alive into ``finally``
    holds the Call (as ``self`` of a pjsua2 method), whose destructor would then run
    after libDestroy and abort on an assertion in pjsua_call_set_user_data."""
    info = e.info() if isinstance(e, pj.Error) else repr(e)
    sys.stderr.write(traceback.format_exc())
    emit(event="error", error=str(info), **result)
