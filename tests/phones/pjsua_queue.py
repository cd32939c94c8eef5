"""pjsua2 agents of a call queue, and (optionally) a pjsua2 caller into it.

Run in its own process by ``tests/test_phones_queue.py``. SIP runs on the main
thread, polled with ``libHandleEvents``; every wait is bounded by one deadline,
and the library is always destroyed before exit.

Every account registers (digest, the engine as outbound proxy, one UDP
transport). Then, in order:

1. ``--code-by EXT``: that agent dials ``--code`` (``*63``, ``*62``...) and waits
   for the engine to answer, confirm and hang up;
2. the caller (``--caller``; ``--no-caller`` when SIPp calls instead) dials
   ``--dial`` and waits until the engine answers it (or, with ``--no-caller``, the
   agents wait for the first incoming call); with ``--keys`` it then presses
   them (RFC 4733), ``--key-wait`` s after the answer (an IVR's menu);
3. each agent's phone rings (180) when called; ``--answer EXT`` answers after
   ``--answer-after`` s of ringing and plays ``--agent-wav``; the others never
   answer (the queue moves on or cancels them);
4. after ``--stay`` s with an agent connected (or ``--stay`` s anyway), everybody
   hangs up.

Each ``--then "ARGS"`` (repeatable) is one more call, made in the same process once
the one before has ended, with the call options in ARGS (``--dial``, ``--answer``,
``--stay``...) changed from those of the call before: the agents register once
for a test's whole sequence of calls. Each call has its own ``result`` event
(``call``: 0, 1...; ``ended_at``: when its last leg ended).

Output, one JSON object per line on stdout:
  {"event": "registered", "ok": true, ...}
  {"event": "incoming", "account": "102", "t": ...}
  {"event": "result", "call": 0, "rung": ["102", "103"], "rung_at": {...},
   "answered_by": "103", "caller_answered": true, "agent_connected": true,
   "code_answered": true, "ended_at": ..., ...}
  {"event": "done"}
Exit status: 0 once run, 2 when a REGISTER failed, 3 on an error.
"""

from __future__ import annotations

import argparse
import copy
import gc
import shlex
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
        self.incoming: list[SideCall] = []  # kept referenced: a collected Call hangs up
        self.rang_to: list[SideCall] = []  # incoming calls answered 180 already

    def onIncomingCall(self, prm: Any) -> None:
        call = SideCall(self, f"agent {self.user}", prm.callId)
        self.incoming.append(call)
        emit(event="incoming", account=self.user, t=time.monotonic())


class Phones(Pump):
    def __init__(self, ep: Any, args: argparse.Namespace, deadline: float) -> None:
        super().__init__(ep, deadline)
        self.args = args
        self.accounts: dict[str, Account] = {}
        self.legs: dict[str, Leg] = {}
        self.rung: list[str] = []
        self.rung_at: dict[str, float] = {}
        self.answered_by = ""
        self.answered_call: SideCall | None = None

    def service(self) -> None:
        """Each poll: 180 to each new incoming call, answer the chosen agent's."""
        now = time.monotonic()
        for user, acc in self.accounts.items():
            for call in acc.incoming:
                if call in acc.rang_to or call.disconnected:
                    continue
                acc.rang_to.append(call)
                call.ringing_since = now
                self.rung.append(user)
                self.rung_at.setdefault(user, now)
                prm = pj.CallOpParam()
                prm.statusCode = 180
                call.answer(prm)
            if user == self.args.answer and not self.answered_by:
                for call in acc.rang_to:
                    if not call.disconnected and now - call.ringing_since >= \
                            self.args.answer_after:
                        self.answered_by = user
                        self.answered_call = call
                        self.legs["agent"] = Leg(call, self.args.agent_wav, None)
                        prm = pj.CallOpParam()
                        prm.statusCode = 200
                        call.answer(prm)
                        break
        for leg in self.legs.values():
            leg.connect()

    def release(self) -> None:
        for leg in self.legs.values():
            leg.player = leg.recorder = None
        self.legs.clear()
        self.answered_call = None  # a Call alive after libDestroy aborts the process
        for acc in self.accounts.values():
            acc.incoming.clear()
            acc.rang_to.clear()


def run(phones: Phones, result: dict[str, Any]) -> None:
    args = phones.args
    if args.code_by:
        acc = phones.accounts[args.code_by]
        out = SideCall(acc, "code")
        out.makeCall(f"sip:{args.code}@{args.domain}", pj.CallOpParam(True))
        phones.pump(lambda: out.disconnected, 15)
        result["code_answered"] = out.confirmed
        result["code_ended_by_engine"] = out.disconnected
        if not out.disconnected:
            out.hangup(pj.CallOpParam(True))
            phones.pump(lambda: out.disconnected, 3)
    caller: SideCall | None = None
    if args.caller:
        caller = SideCall(phones.accounts[args.caller.partition(":")[0]], "caller")
        phones.legs["caller"] = Leg(caller, args.agent_wav, None)
        caller.makeCall(f"sip:{args.dial}@{args.domain}", pj.CallOpParam(True))
        phones.pump(lambda: caller.confirmed or caller.disconnected, 10)
        result["caller_answered"] = caller.confirmed
        if args.keys and caller.confirmed:  # a menu answered: press its keys (RFC 4733)
            phones.pump(lambda: False, args.key_wait)
            for key in args.keys:
                caller.dialDtmf(key)
                phones.pump(lambda: False, 0.4)
            result["keys_sent"] = args.keys
    else:
        phones.pump(lambda: bool(phones.rung), args.wait_first)
    phones.pump(lambda: phones.answered_call is not None and phones.answered_call.confirmed,
                args.wait_answer)
    agent = phones.answered_call
    result["agent_connected"] = bool(agent and agent.confirmed)
    phones.pump(lambda: bool(agent and agent.disconnected), args.stay)
    result["agent_media"] = bool(agent and agent.audio_index >= 0)
    result.update(rung=phones.rung, answered_by=phones.answered_by,
                  rung_at={u: round(t, 3) for u, t in phones.rung_at.items()})
    if caller is not None and not caller.disconnected:
        caller.hangup(pj.CallOpParam(True))
    if agent is not None and not agent.disconnected and caller is None:
        agent.hangup(pj.CallOpParam(True))
    phones.pump(lambda: (caller is None or caller.disconnected)
                and (agent is None or agent.disconnected), 5)
    result["agent_ended"] = bool(agent and agent.disconnected)
    result["ended_at"] = round(time.monotonic(), 3)
    # Every call is over: drop the players and calls while the library still runs
    # and give it a moment, rather than at teardown (a Call or player freed next to
    # libDestroy can crash pjsua2).
    agent = caller = None
    phones.release()
    gc.collect()
    phones.pump(lambda: False, 0.3)
    phones.rung, phones.rung_at, phones.answered_by = [], {}, ""  # the next call's


def call_options(ap: argparse.ArgumentParser, *, defaults: bool = True) -> None:
    """The options of one call: the first call's (``defaults``), or a ``--then``'s
    (no defaults: what it does not name stays as in the call before)."""
    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    ap.add_argument("--dial", default=default("860"), help="the queue's extension")
    ap.add_argument("--answer", default=default(""), help="the agent that answers ('' none)")
    ap.add_argument("--answer-after", type=float, default=default(0.5))
    ap.add_argument("--code-by", default=default(""), help="an agent that dials --code first")
    ap.add_argument("--code", default=default("*63"),
                    help="a queue feature code (*63: log out)")
    ap.add_argument("--keys", default=default(""), help="keys the caller presses once "
                    "answered (RFC 4733), e.g. an IVR's key to the queue")
    ap.add_argument("--key-wait", type=float, default=default(1.0),
                    help="seconds before the keys")
    ap.add_argument("--wait-first", type=float, default=default(15.0))
    ap.add_argument("--wait-answer", type=float, default=default(15.0))
    ap.add_argument("--stay", type=float, default=default(2.0))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--registrar", required=True, help="HOST:PORT of the engine")
    ap.add_argument("--domain", required=True)
    ap.add_argument("--caller", default="101:pw101", help="USER:PASSWORD of the caller")
    ap.add_argument("--no-caller", action="store_true", help="another program calls")
    ap.add_argument("--agents", required=True, help="USER:PASSWORD,... of the agents")
    call_options(ap)
    ap.add_argument("--then", action="append", default=[],
                    help="one more call, after the one before: its changed call options")
    ap.add_argument("--agent-wav", required=True)
    ap.add_argument("--deadline", type=float, default=50.0)
    ap.add_argument("--log-level", type=int, default=3)
    args = ap.parse_args()
    if args.no_caller:
        args.caller = ""
    # each call's options: the call before's, changed by its --then (no defaults there)
    then = argparse.ArgumentParser(prog="--then")
    call_options(then, defaults=False)
    sequence = [args]
    for extra in args.then:
        sequence.append(then.parse_args(shlex.split(extra), copy.copy(sequence[-1])))

    writer = Log(args.log_level)
    ep = pj.Endpoint()
    ep.libCreate()
    phones = Phones(ep, args, time.monotonic() + args.deadline)
    code = 0
    result: dict[str, Any] = {"caller_answered": False}
    try:
        pjcommon.init_endpoint(ep, writer, "pjsua2-switchboard-queue", clock_rate=8000)
        tid, port = pjcommon.udp_transport(ep)
        ep.libStart()
        specs = [s for s in [args.caller, *args.agents.split(",")] if s]
        for spec in specs:
            user, _, password = spec.partition(":")
            acc = Account(user)
            phones.accounts[user] = acc
            acc.create(pjcommon.registered_config(user, password, args.domain, args.registrar,
                                                  tid))
        accounts = list(phones.accounts.values())
        phones.pump(lambda: all(a.active or any(c >= 300 for c in a.codes)
                                for a in accounts), 8)
        ok = all(a.active for a in accounts)
        emit(event="registered", ok=ok, codes={a.user: a.codes for a in accounts}, port=port)
        if not ok:
            return 2
        for index, call_args in enumerate(sequence):
            phones.args = call_args
            result = {"call": index, "caller_answered": False}
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
        for acc in phones.accounts.values():
            acc.shutdown()
        ep.libDestroy()
        emit(event="done")
    return code


if __name__ == "__main__":
    sys.exit(main())
