"""A pjsua2 softphone's buddy list: register, subscribe to a buddy's presence
(RFC 3856, pjsua2's Buddy API), report each presence it is told, as JSON lines.

Run in its own process by ``tests/test_phones_presence.py``. Everything runs on the
main thread (``threadCnt = 0``, events polled with ``libHandleEvents``); every wait
is bounded and the library is always destroyed before exit.

Output, one JSON object per line on stdout:
  {"event": "reg", ...}                       each registration state change
  {"event": "buddy", "online": true, "text": "...", "note": "...", "activity": "busy",
   "sub_state": "ACTIVE"}                    each onBuddyState
  {"event": "done"}                           after libDestroy
A line "stop" on stdin unsubscribes the buddy (SUBSCRIBE Expires: 0), waits
(bounded) for the subscription to end, and stops.
"""

from __future__ import annotations

import argparse
import select
import sys
import time

import pjcommon
import pjsua2 as pj
from pjcommon import RegAccount, emit

ACTIVITY = {pj.PJRPID_ACTIVITY_UNKNOWN: "unknown", pj.PJRPID_ACTIVITY_AWAY: "away",
            pj.PJRPID_ACTIVITY_BUSY: "busy"}


class Buddy(pj.Buddy):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.sub_state = ""

    def onBuddyState(self) -> None:
        info = self.getInfo()
        status = info.presStatus
        self.sub_state = str(info.subStateName)
        emit(event="buddy", online=status.status == pj.PJSUA_BUDDY_STATUS_ONLINE,
             text=str(status.statusText), note=str(status.note),
             activity=ACTIVITY.get(status.activity, str(status.activity)),
             sub_state=self.sub_state, t=time.monotonic())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--registrar", required=True, help="HOST:PORT")
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--domain", required=True)
    ap.add_argument("--buddy", required=True, help="the extension to watch")
    ap.add_argument("--hold", type=float, default=60.0)
    ap.add_argument("--log-level", type=int, default=3, help="pjsip log echoed to stderr")
    args = ap.parse_args()

    writer = pjcommon.Log(args.log_level)
    ep = pj.Endpoint()
    ep.libCreate()
    acc: RegAccount | None = None
    buddy: Buddy | None = None
    try:
        pjcommon.init_endpoint(ep, writer, "pjsua2-switchboard-presence", steady_media=False)
        tid, _port = pjcommon.udp_transport(ep)
        ep.libStart()
        acc = RegAccount(args.user)
        acc.create(pjcommon.registered_config(args.user, args.password, args.domain,
                                              args.registrar, tid))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not acc.active \
                and not any(c >= 300 for c in acc.codes):
            ep.libHandleEvents(20)
        bcfg = pj.BuddyConfig()
        bcfg.uri = f"sip:{args.buddy}@{args.domain}"
        bcfg.subscribe = True
        buddy = Buddy()
        buddy.create(acc, bcfg)
        deadline = time.monotonic() + args.hold
        while time.monotonic() < deadline:
            ep.libHandleEvents(20)
            ready, _, _ = select.select([sys.stdin], [], [], 0)
            if ready:
                sys.stdin.readline()
                break
        buddy.subscribePresence(False)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and buddy.sub_state != "TERMINATED":
            ep.libHandleEvents(20)
        emit(event="unsubscribed", sub_state=buddy.sub_state)
    finally:
        if acc is not None:
            acc.shutdown()
        ep.libDestroy()
        emit(event="done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
