"""Register one pjsua2 account to a registrar, report as JSON lines, then shut down.

Run in its own process by ``tests/test_phones.py`` so that pjsip's threads,
sockets and any crash stay out of pytest. Everything runs on the main thread
(``threadCnt = 0``, events polled with ``libHandleEvents``), every wait is
bounded, and the library is always destroyed before exit.

Output, one JSON object per line on stdout:
  {"event": "reg", "code": 200, "reason": "OK", "active": true, "expiration": 300}
      for each registration state change
  {"event": "result", "registered": true, "codes": [...], "uri": "...", "port": 1234,
   "algorithms": ["MD5"]}
      once the registration succeeded, failed for good, or timed out
  {"event": "done"}
      after libDestroy
After "result" the script keeps the registration up until a line arrives on
stdin (or --hold seconds pass), so that the caller can inspect the registrar.
"""

from __future__ import annotations

import argparse
import re
import select
import sys
import time
from typing import Any

import pjcommon
import pjsua2 as pj
from pjcommon import RegAccount, emit

AUTH_ALGORITHM = re.compile(r"^Authorization:.*?algorithm=([A-Za-z0-9-]+)", re.M)


class Log(pjcommon.Log):
    """pjsip's log, echoed to stderr; notes the digest algorithm of each REGISTER sent."""

    def __init__(self, echo_level: int) -> None:
        super().__init__(echo_level)
        self.algorithms: list[str] = []

    def write(self, entry: Any) -> None:
        msg = str(entry.msg)
        if "TX " in msg and "REGISTER" in msg:
            self.algorithms.extend(AUTH_ALGORITHM.findall(msg))
        super().write(entry)


def algorithm(name: str) -> int:
    return int({"any": pj.PJSIP_AUTH_ALGORITHM_NOT_SET, "MD5": pj.PJSIP_AUTH_ALGORITHM_MD5,
                "SHA-256": pj.PJSIP_AUTH_ALGORITHM_SHA256}[name])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--registrar", required=True, help="HOST:PORT")
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--domain", required=True)
    ap.add_argument("--algorithm", default="any", choices=["any", "MD5", "SHA-256"])
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--hold", type=float, default=20.0)
    ap.add_argument("--log-level", type=int, default=3, help="pjsip log echoed to stderr")
    args = ap.parse_args()

    writer = Log(args.log_level)
    ep = pj.Endpoint()
    ep.libCreate()
    acc: RegAccount | None = None
    try:
        # pjsip's log at level 5 carries the SIP messages the writer reads
        pjcommon.init_endpoint(ep, writer, "pjsua2-switchboard-test", steady_media=False)

        tid, port = pjcommon.udp_transport(ep)
        ep.libStart()

        acfg = pj.AccountConfig()
        acfg.idUri = f"sip:{args.user}@{args.domain}"
        acfg.regConfig.registrarUri = f"sip:{args.registrar}"
        acfg.regConfig.timeoutSec = 300
        acfg.regConfig.retryIntervalSec = 0  # no automatic retry after a failure
        acfg.sipConfig.transportId = tid
        cred = pj.AuthCredInfo("digest", "*", args.user, 0, args.password)
        cred.algoType = algorithm(args.algorithm)
        acfg.sipConfig.authCreds.append(cred)
        acc = RegAccount()
        acc.create(acfg)

        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            ep.libHandleEvents(20)
            if acc.active or any(c >= 300 for c in acc.codes):
                break
        emit(event="result", registered=acc.active, codes=acc.codes, uri=acfg.idUri,
             port=port, algorithms=writer.algorithms)

        if acc.active:  # hold the binding until told to stop
            deadline = time.monotonic() + args.hold
            while time.monotonic() < deadline:
                ep.libHandleEvents(20)
                ready, _, _ = select.select([sys.stdin], [], [], 0)
                if ready:
                    sys.stdin.readline()
                    break
            seen = len(acc.codes)
            acc.setRegistration(False)  # un-REGISTER; wait (bounded) for its answer
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline and len(acc.codes) == seen:
                ep.libHandleEvents(20)
    finally:
        if acc is not None:
            acc.shutdown()
        ep.libDestroy()
        emit(event="done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
