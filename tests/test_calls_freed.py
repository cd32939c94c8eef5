"""An ended call is freed as it ends, though its legs' transactions live on.

A callee's INVITE client transaction lives 64*T1 after its 2xx (RFC 6026 s7.2,
Timer M) and a refused leg's 32 s after its 300-699 (RFC 3261 s17.1.1.2, Timer D).
What the call layer still owes them is an ACK for each retransmission of a 2xx
(s13.2.2.4), and for a leg still ringing when the call ended, the ACK and BYE of a
late 2xx. Everything else of the call must be freed by reference counting as soon
as it ends (the collector is disabled here): an engine at hundreds of calls a
second would otherwise hold tens of thousands of ended calls for the collector to
walk on every pass.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from engine.calls.call import Call
from engine.calls.leg import Leg
from engine.sip.message import Request, Response, parse
from tests.test_calls import (
    PHONES,
    SDP,
    Net,
    in_dialog,
    make_net,
    phone_call,
    register,
    reply,
    statuses,
)

CALLEE = PHONES["102"]
SOFT = ("127.0.0.1", 7102)  # 102's second device (register(second_device=True))


@pytest.fixture
def net() -> Net:
    return make_net()


@pytest.fixture
def no_collector() -> Iterator[None]:
    """Only reference counting frees objects while the test runs."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def sent_to(net: Net, raw: bytes, source: tuple[str, int]) -> list[bytes]:
    """Feed ``raw`` from ``source``; the bytes the engine sends back to ``source``."""
    out = net.engine.datagram(raw, source, "udp", net.clock.now)
    net.take(out)
    net.drain(source)
    return [s.data for s in out.sends if s.addr == source]


def alive() -> dict[str, int]:
    """Calls and legs still in memory (a Call or a Leg is tracked by the collector as
    long as it exists; with the collector off, only reference counting frees it)."""
    found = {"calls": 0, "legs": 0}
    for obj in gc.get_objects():
        if isinstance(obj, Call):
            found["calls"] += 1
        elif isinstance(obj, Leg):
            found["legs"] += 1
    return found


def answered_call(net: Net, call_id: str) -> tuple[bytes, bytes, Response]:
    """101 calls 102, whose phone answers: (its 200 as sent, the ACK the engine sent
    for it, the engine's 200 to the caller)."""
    src = phone_call(net, "101", "102", call_id=call_id)
    [inv] = net.requests(CALLEE, "INVITE")
    ok = reply(inv, 200, body=SDP, contact="<sip:102@127.0.0.1:6102>").to_bytes()
    [ack] = sent_to(net, ok, CALLEE)
    sent = parse(ack)
    assert isinstance(sent, Request) and sent.method == "ACK"
    [caller_ok] = [r for r in net.responses(src) if r.status == 200]
    net.send(in_dialog("ACK", caller_ok, src, cseq=2, call_id=call_id, branch=f"{call_id}-a"),
             src)
    return ok, ack, caller_ok


def test_hung_up_calls_are_freed_and_a_retransmitted_2xx_gets_the_same_ack(
        net: Net, no_collector: None) -> None:
    register(net, "101", "102")
    src = PHONES["101"]
    answered: list[tuple[bytes, bytes]] = []
    for i in range(20):
        call_id = f"freed-{i}"
        ok, ack, caller_ok = answered_call(net, call_id)
        assert alive() == {"calls": 1, "legs": 1}  # the call up, and its callee
        answered.append((ok, ack))
        net.send(in_dialog("BYE", caller_ok, src, cseq=3, call_id=call_id,
                           branch=f"{call_id}-b"), src)
        assert statuses(net.drain(src)) == [200]
        [bye] = net.requests(CALLEE, "BYE")
        net.send(reply(bye, 200), CALLEE)
    assert net.engine.calls.calls_in_progress() == []
    assert alive() == {"calls": 0, "legs": 0}  # each freed as it ended
    net.tick(5)  # less than 64*T1: the callees' INVITE transactions are in Accepted
    for ok, ack in answered:
        # RFC 3261 s13.2.2.4: the callee did not get our ACK and sends its 2xx again.
        assert sent_to(net, ok, CALLEE) == [ack]


def test_a_leg_ringing_when_the_call_ended_is_acked_and_hung_up_then_freed(
        net: Net, no_collector: None) -> None:
    register(net, "101")
    register(net, "102", second_device=True)
    src = phone_call(net, "101", "102", call_id="fork-1")
    [desk] = net.requests(CALLEE, "INVITE")
    [soft] = net.requests(SOFT, "INVITE")
    net.send(reply(desk, 180, tag="desk"), CALLEE)
    net.send(reply(soft, 180, tag="soft"), SOFT)
    net.send(reply(desk, 200, tag="desk", body=SDP, contact="<sip:102@127.0.0.1:6102>"),
             CALLEE)
    [cancel] = net.requests(SOFT, "CANCEL")
    net.send(reply(cancel, 200), SOFT)
    [caller_ok] = [r for r in net.responses(src) if r.status == 200]
    assert alive() == {"calls": 1, "legs": 2}
    net.send(in_dialog("ACK", caller_ok, src, cseq=2, call_id="fork-1", branch="fa"), src)
    net.send(in_dialog("BYE", caller_ok, src, cseq=3, call_id="fork-1", branch="fb"), src)
    [bye] = net.requests(CALLEE, "BYE")
    net.send(reply(bye, 200), CALLEE)
    assert net.engine.calls.calls_in_progress() == []
    # The soft phone's INVITE waits for its final response (its 487): the leg, and so
    # the call, are kept for a late 2xx.
    assert alive() == {"calls": 1, "legs": 1}
    late = reply(soft, 200, tag="soft", body=SDP,
                 contact="<sip:102@127.0.0.1:7102>").to_bytes()
    out = sent_to(net, late, SOFT)
    got = [parse(data) for data in out]
    assert [m.method for m in got if isinstance(m, Request)] == ["ACK", "BYE"]
    assert alive() == {"calls": 0, "legs": 0}  # its last leg answered: all freed
    net.tick(1)
    assert sent_to(net, late, SOFT) == [out[0]]  # the same ACK (s13.2.2.4)
