"""Tests for engine.transaction: the four RFC 3261 s17 / RFC 6026 state machines.

Deterministic: the clock is a plain float handed to each call; no sockets.
Every message is built from wire text and parsed, as it would arrive.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.sip.message import Request, Response, make_response, parse, parse_via
from engine.sip.transaction import (
    INVITE_CLIENT,
    INVITE_SERVER,
    KINDS,
    NON_INVITE_CLIENT,
    NON_INVITE_SERVER,
    CancelRequest,
    DeliverRequest,
    DeliverResponse,
    Event,
    Send,
    State,
    Terminated,
    TimedOut,
    Timers,
    TransactionLayer,
    TxEvent,
    TxKey,
    response_addr,
)
from engine.statemachine import IllegalTransition, Machine
from tests.conftest import SHARED

RFC4475 = SHARED / "conformance" / "rfc4475"
UAC = ("192.0.2.10", 5070)  # where the test requests come from
UAS = ("198.51.100.7", 5060)  # where client transactions send to
T1, T2, T4 = 0.5, 4.0, 5.0
LONG = 64 * T1  # Timers B, F, H, J, L, M


# --------------------------------------------------------------------------
# Message builders: wire text -> parse()
# --------------------------------------------------------------------------
def wire(text: str, body: str = "") -> bytes:
    """Header lines (indentation ignored) plus body, CRLF-framed, Content-Length set."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    lines.append(f"Content-Length: {len(body.encode())}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def request(method: str, *, branch: str = "z9hG4bKa1", sent_by: str = "pc33.example.com:5070",
            via_params: str = "", transport: str = "UDP", uri: str = "sip:bob@example.com",
            from_tag: str = "ft1", to_tag: str | None = None,
            call_id: str = "c1@pc33.example.com", cseq: int = 1,
            extra: Iterable[str] = ()) -> Request:
    to_tag_param = f";tag={to_tag}" if to_tag else ""
    text = f"""
        {method} {uri} SIP/2.0
        Via: SIP/2.0/{transport} {sent_by};branch={branch}{via_params}
        Max-Forwards: 70
        From: Alice <sip:alice@example.com>;tag={from_tag}
        To: Bob <sip:bob@example.com>{to_tag_param}
        Call-ID: {call_id}
        CSeq: {cseq} {method}
        Contact: <sip:alice@{sent_by}>
    """ + "\n".join(extra)
    msg = parse(wire(text))
    assert isinstance(msg, Request)
    return msg


def invite(**kw: object) -> Request:
    return request("INVITE", **kw)  # type: ignore[arg-type]


def options(**kw: object) -> Request:
    return request("OPTIONS", **kw)  # type: ignore[arg-type]


def register(**kw: object) -> Request:
    kw.setdefault("uri", "sip:example.com")
    return request("REGISTER", **kw)  # type: ignore[arg-type]


def response(req: Request, status: int, reason: str = "Reason",
             to_tag: str | None = "uas1") -> Response:
    """A response as the far end would send it, from text."""
    to = req.get("to") or ""
    if to_tag and ";tag=" not in to:
        to += f";tag={to_tag}"
    vias = "\n".join(f"Via: {value}" for value in req.get_lines("via"))
    text = f"""
        SIP/2.0 {status} {reason}
        {vias}
        From: {req.get("from")}
        To: {to}
        Call-ID: {req.call_id}
        CSeq: {req.get("cseq")}
    """
    msg = parse(wire(text))
    assert isinstance(msg, Response)
    return msg


def ack(inv: Request, resp: Response, branch: str | None = None) -> Request:
    """The ACK a UAC sends: same branch for a non-2xx (s17.1.1.3), a new one for a 2xx."""
    via = inv.get_all("via")[0]
    if branch is not None:
        via = via.replace(inv.top_via.branch or "", branch)
    text = f"""
        ACK {inv.uri_text} SIP/2.0
        Via: {via}
        Max-Forwards: 70
        From: {inv.get("from")}
        To: {resp.get("to")}
        Call-ID: {inv.call_id}
        CSeq: {inv.cseq.number} ACK
    """
    msg = parse(wire(text))
    assert isinstance(msg, Request)
    return msg


def cancel(inv: Request) -> Request:
    """CANCEL per s9.1: Request-URI, Call-ID, To, From, CSeq number and top Via of the INVITE."""
    text = f"""
        CANCEL {inv.uri_text} SIP/2.0
        Via: {inv.get_all("via")[0]}
        Max-Forwards: 70
        From: {inv.get("from")}
        To: {inv.get("to")}
        Call-ID: {inv.call_id}
        CSeq: {inv.cseq.number} CANCEL
    """
    msg = parse(wire(text))
    assert isinstance(msg, Request)
    return msg


def conformance(name: str) -> Request:
    path = RFC4475 / name
    if not path.exists():
        pytest.fail(f"{path} is missing: the conformance corpus lives in ../shared beside "
                    "the checkout")
    msg = parse(path.read_bytes())
    assert isinstance(msg, Request)
    return msg


# --------------------------------------------------------------------------
# Event helpers
# --------------------------------------------------------------------------
def sends(events: Iterable[Event]) -> list[Send]:
    return [e for e in events if isinstance(e, Send)]


def sent(events: Iterable[Event]) -> list[Request | Response]:
    return [parse(e.data) for e in sends(events)]


def statuses(events: Iterable[Event]) -> list[int]:
    return [m.status for m in sent(events) if isinstance(m, Response)]


def only(events: list[Event], kind: type[Event]) -> Event:
    matching = [e for e in events if isinstance(e, kind)]
    assert len(matching) == 1, events
    return matching[0]


def delivered_key(events: list[Event]) -> TxKey:
    ev = only(events, DeliverRequest)
    assert isinstance(ev, DeliverRequest) and ev.key is not None
    return ev.key


def run(layer: TransactionLayer, until: float) -> list[tuple[float, Event]]:
    """Fire timers at their exact deadlines up to ``until``; (time, event) pairs."""
    # Times are rounded to 9 places so they compare equal to decimal literals.
    out: list[tuple[float, Event]] = []
    while (t := layer.next_wakeup()) is not None and t <= until:
        out += [(round(t, 9), e) for e in layer.on_timer(t)]
    return out


def send_times(timeline: list[tuple[float, Event]]) -> list[float]:
    return [t for t, e in timeline if isinstance(e, Send)]


def gaps(times: list[float]) -> list[float]:
    return [round(b - a, 9) for a, b in pairwise(times)]


def server_invite(layer: TransactionLayer, now: float = 0.0, **kw: object
                  ) -> tuple[Request, TxKey, list[Event]]:
    inv = invite(**kw)
    events = layer.on_request(inv, UAC, str(kw.get("transport", "udp")).lower(), now)
    return inv, delivered_key(events), events


# ==========================================================================
# Timers and events
# ==========================================================================
def test_timer_defaults_and_validation() -> None:
    t = Timers()
    assert (t.t1, t.t2, t.t4, t.d, t.long) == (0.5, 4.0, 5.0, 32.0, 32.0)
    assert Timers(t1=0.1).long == pytest.approx(6.4)
    with pytest.raises(ValueError, match="t1"):
        Timers(t1=0)
    with pytest.raises(ValueError, match="t2"):
        Timers(t1=5, t2=4)
    with pytest.raises(AttributeError):
        t.t1 = 1.0  # type: ignore[misc]


def test_events_are_frozen_and_keys_hashable() -> None:
    key = TxKey("server", "INVITE", "z9hG4bKx", "h:1")
    assert {key: 1}[TxKey("server", "INVITE", "z9hG4bKx", "h:1")] == 1
    ev = Terminated(key)
    with pytest.raises(AttributeError):
        ev.key = key  # type: ignore[misc]
    assert hash(Send(b"x", ("h", 1), "udp")) == hash(Send(b"x", ("h", 1), "udp"))


# ==========================================================================
# INVITE server transaction (RFC 3261 s17.2.1, RFC 6026 s7.1)
# ==========================================================================
# --------------------------------------------------------------------------
# The tables (RFC 3261 s17 Figures 5-8, RFC 6026 s7)
# --------------------------------------------------------------------------
MACHINES: list[tuple[Machine[State, TxEvent], State]] = [
    (INVITE_CLIENT, State.CALLING), (NON_INVITE_CLIENT, State.TRYING),
    (INVITE_SERVER, State.PROCEEDING), (NON_INVITE_SERVER, State.TRYING)]


def test_an_illegal_transaction_move_names_event_role_and_state() -> None:
    with pytest.raises(IllegalTransition) as info:
        INVITE_SERVER.move(State.CONFIRMED, TxEvent.SUCCESS)
    assert (info.value.event, info.value.role, info.value.state) == (
        TxEvent.SUCCESS, "invite_server", State.CONFIRMED)
    assert str(info.value) == "invite_server: event '2xx' is not allowed in state 'confirmed'"
    # A non-INVITE transaction has no ACK; nothing moves a terminated transaction.
    with pytest.raises(IllegalTransition, match=r"non_invite_server: event 'ack' .* 'completed'"):
        NON_INVITE_SERVER.move(State.COMPLETED, TxEvent.ACK)
    with pytest.raises(IllegalTransition, match=r"invite_client: event '1xx' .* 'terminated'"):
        INVITE_CLIENT.move(State.TERMINATED, TxEvent.PROVISIONAL)


def test_the_tables_follow_the_rfc_figures() -> None:
    assert {machine.role for machine, _ in MACHINES} == set(KINDS)  # the metrics' kinds
    # RFC 6026 s7: a 2xx moves INVITE transactions to Accepted, not Terminated.
    assert INVITE_CLIENT.move(State.PROCEEDING, TxEvent.SUCCESS) is State.ACCEPTED
    assert INVITE_SERVER.move(State.PROCEEDING, TxEvent.SUCCESS) is State.ACCEPTED
    # RFC 3261 s17.2.1: a 300-699 waits for its ACK in Completed, then Confirmed.
    assert INVITE_SERVER.move(State.PROCEEDING, TxEvent.FAILURE) is State.COMPLETED
    assert INVITE_SERVER.move(State.COMPLETED, TxEvent.ACK) is State.CONFIRMED
    # RFC 3261 s17.1.2.2: any final response completes a non-INVITE transaction.
    for event in (TxEvent.SUCCESS, TxEvent.FAILURE):
        assert NON_INVITE_CLIENT.move(State.TRYING, event) is State.COMPLETED


@pytest.mark.parametrize(("machine", "start"), MACHINES, ids=lambda x: getattr(x, "role", ""))
def test_every_transaction_state_reaches_terminated_and_none_leaves_it(
        machine: Machine[State, TxEvent], start: State) -> None:
    assert machine.reachable(start) == machine.states()  # every state is used
    assert machine.reachable(State.TERMINATED) == {State.TERMINATED}
    for origin in machine.states():
        assert State.TERMINATED in machine.reachable(origin), (machine.role, origin)


def test_invite_server_sends_100_at_once_then_delivers() -> None:
    layer = TransactionLayer()
    inv = invite(extra=["Timestamp: 54.3"])
    events = layer.on_request(inv, UAC, "udp", 0.0)
    assert [type(e) for e in events] == [Send, DeliverRequest]
    trying = sent(events)[0]
    assert isinstance(trying, Response) and trying.status == 100
    assert trying.to.tag is None  # no To tag on a 100 (s8.2.6.2)
    assert trying.get("timestamp") == "54.3"  # s8.2.6.1
    assert trying.top_via.branch == "z9hG4bKa1"
    assert sends(events)[0].addr == ("192.0.2.10", 5070)
    deliver = events[1]
    assert isinstance(deliver, DeliverRequest)
    assert deliver.request is inv and deliver.source == UAC and deliver.transport == "udp"
    assert deliver.key == TxKey("server", "INVITE", "z9hG4bKa1", "pc33.example.com:5070")
    assert layer.state(deliver.key) is State.PROCEEDING
    assert layer.counts() == {"invite_server": 1, "non_invite_server": 0,
                              "invite_client": 0, "non_invite_client": 0}
    assert layer.next_wakeup() is None  # Proceeding runs no timer


def test_invite_retransmission_resends_the_latest_provisional() -> None:
    layer = TransactionLayer()
    inv, key, _ = server_invite(layer)
    assert statuses(layer.on_request(inv, UAC, "udp", 0.3)) == [100]
    ringing = make_response(inv, 180, to_tag="uas1")
    assert statuses(layer.respond(key, ringing, 1.0)) == [180]
    again = layer.on_request(inv, UAC, "udp", 1.5)
    assert statuses(again) == [180]
    assert sends(again)[0].data == ringing.to_bytes()
    assert not [e for e in again if isinstance(e, DeliverRequest)]
    assert len(layer) == 1


def test_invite_server_486_timer_g_doubles_to_t2_and_ack_stops_it() -> None:
    layer = TransactionLayer()
    inv, key, _ = server_invite(layer)
    busy = make_response(inv, 486, to_tag="uas1")
    assert statuses(layer.respond(key, busy, 0.0)) == [486]
    assert layer.state(key) is State.COMPLETED
    timeline = run(layer, 12.0)
    times = send_times(timeline)
    # Timer G: T1, 2T1, 4T1, then capped at T2.
    assert times == [0.5, 1.5, 3.5, 7.5, 11.5]
    assert gaps([0.0, *times]) == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert all(parse(e.data).status == 486 for _, e in timeline  # type: ignore[union-attr]
               if isinstance(e, Send))
    # A retransmitted INVITE gets the final response again.
    assert statuses(layer.on_request(inv, UAC, "udp", 12.0)) == [486]
    # The ACK (same branch, To tag of the 486) -> Confirmed, G and H stop.
    assert layer.on_request(ack(inv, busy), UAC, "udp", 12.2) == []
    assert layer.state(key) is State.CONFIRMED
    assert layer.next_wakeup() == pytest.approx(12.2 + T4)  # Timer I, stale G skipped
    assert layer.on_timer(15.5) == []  # where G would have fired
    # ACK and INVITE retransmissions are absorbed in Confirmed.
    assert layer.on_request(ack(inv, busy), UAC, "udp", 13.0) == []
    assert layer.on_request(inv, UAC, "udp", 13.0) == []
    assert run(layer, 100.0) == [(round(17.2, 9), Terminated(key))]
    assert len(layer) == 0 and layer.next_wakeup() is None


def test_invite_server_timer_h_fires_without_ack() -> None:
    layer = TransactionLayer()
    inv, key, _ = server_invite(layer)
    layer.respond(key, make_response(inv, 486, to_tag="uas1"), 0.0)
    timeline = run(layer, 100.0)
    events = [e for _, e in timeline]
    assert events[-2:] == [TimedOut(key), Terminated(key)]
    assert timeline[-1][0] == pytest.approx(LONG)
    assert max(send_times(timeline)) < LONG
    assert len(layer) == 0
    with pytest.raises(ValueError, match="no live server transaction"):
        layer.respond(key, make_response(inv, 500), 40.0)


def test_invite_server_2xx_accepted_timer_l_and_tu_retransmissions() -> None:
    layer = TransactionLayer()
    inv, key, _ = server_invite(layer)
    ok = make_response(inv, 200, to_tag="uas1")
    assert statuses(layer.respond(key, ok, 1.0)) == [200]
    assert layer.state(key) is State.ACCEPTED
    # The layer itself never retransmits a 2xx; the TU's retransmissions go through.
    assert [t for t, e in run(layer, 2.0) if isinstance(e, Send)] == []
    assert statuses(layer.respond(key, ok, 1.5)) == [200]
    assert statuses(layer.respond(key, ok, 2.5)) == [200]
    # INVITE retransmissions are absorbed (RFC 6026), not new requests.
    assert layer.on_request(inv, UAC, "udp", 2.6) == []
    # Late 1xx and non-2xx from the TU are discarded.
    assert layer.respond(key, make_response(inv, 180), 2.7) == []
    assert layer.respond(key, make_response(inv, 486), 2.7) == []
    # The ACK to the 2xx has a new branch: a request of its own for the TU.
    the_ack = ack(inv, ok, branch="z9hG4bKack2xx")
    assert layer.on_request(the_ack, UAC, "udp", 3.0) == [
        DeliverRequest(the_ack, None, UAC, "udp")]
    assert layer.state(key) is State.ACCEPTED
    assert run(layer, 100.0) == [(round(1.0 + LONG, 9), Terminated(key))]
    assert len(layer) == 0
    # After Timer L the ACK still reaches the TU (no transaction).
    assert layer.on_request(the_ack, UAC, "udp", 40.0) == [
        DeliverRequest(the_ack, None, UAC, "udp")]


def test_invite_server_ack_matching_transaction_in_accepted_goes_to_tu() -> None:
    # A (non-compliant) ACK reusing the INVITE branch while Accepted: passed up.
    layer = TransactionLayer()
    inv, key, _ = server_invite(layer)
    ok = make_response(inv, 200, to_tag="uas1")
    layer.respond(key, ok, 0.0)
    the_ack = ack(inv, ok)
    assert layer.on_request(the_ack, UAC, "udp", 0.1) == [
        DeliverRequest(the_ack, None, UAC, "udp")]


def test_invite_server_ignores_ack_before_final_and_extra_finals() -> None:
    layer = TransactionLayer()
    inv, key, _ = server_invite(layer)
    assert layer.on_request(ack(inv, make_response(inv, 486)), UAC, "udp", 0.1) == []
    assert layer.state(key) is State.PROCEEDING
    layer.respond(key, make_response(inv, 486, to_tag="t"), 0.2)
    assert layer.respond(key, make_response(inv, 200, to_tag="t"), 0.3) == []
    assert layer.state(key) is State.COMPLETED


def test_respond_rejects_unknown_client_and_mismatched() -> None:
    layer = TransactionLayer()
    inv, key, _ = server_invite(layer)
    with pytest.raises(ValueError, match="no live server transaction"):
        layer.respond(TxKey("server", "INVITE", "z9hG4bKnope", "x"), make_response(inv, 200),
                      0.0)
    ckey, _ = layer.send_request(options(branch="z9hG4bKc1"), UAS, "udp", 0.0)
    with pytest.raises(ValueError, match="client key"):
        layer.respond(ckey, make_response(inv, 200), 0.0)
    with pytest.raises(ValueError, match="CSeq method"):
        layer.respond(key, make_response(options(), 200), 0.0)


def test_respond_rejects_bad_status_and_missing_cseq() -> None:
    layer = TransactionLayer()
    inv, key, _ = server_invite(layer)
    bogus = Response.build(700, "Nope", [("CSeq", "1 INVITE")])
    with pytest.raises(ValueError, match="not a SIP response code"):
        layer.respond(key, bogus, 0.0)
    with pytest.raises(ValueError, match="CSeq"):
        layer.respond(key, Response.build(200, "OK", [("Via", inv.get_all("via")[0])]), 0.0)
    assert layer.state(key) is State.PROCEEDING


def test_invite_server_tcp_has_no_timer_g_and_zero_timer_i() -> None:
    layer = TransactionLayer()
    inv, key, events = server_invite(layer, transport="TCP")
    assert sends(events)[0].transport == "tcp" and sends(events)[0].addr == UAC
    busy = make_response(inv, 486, to_tag="uas1")
    layer.respond(key, busy, 0.0)
    assert layer.next_wakeup() == pytest.approx(LONG)  # Timer H only, no G
    assert run(layer, 31.0) == []
    assert layer.on_request(ack(inv, busy), UAC, "tcp", 5.0) == [Terminated(key)]
    assert len(layer) == 0 and layer.next_wakeup() is None


def test_invite_server_tcp_timer_h() -> None:
    layer = TransactionLayer()
    inv, key, _ = server_invite(layer, transport="TCP")
    layer.respond(key, make_response(inv, 603, to_tag="uas1"), 0.0)
    assert [e for _, e in run(layer, 100.0)] == [TimedOut(key), Terminated(key)]


# ==========================================================================
# non-INVITE server transaction (RFC 3261 s17.2.2)
# ==========================================================================
def test_non_invite_server_caches_final_response_and_timer_j() -> None:
    layer = TransactionLayer()
    reg = register(branch="z9hG4bKreg1")
    events = layer.on_request(reg, UAC, "udp", 0.0)
    assert [type(e) for e in events] == [DeliverRequest]  # no 100 for non-INVITE
    key = delivered_key(events)
    assert layer.state(key) is State.TRYING
    assert layer.on_request(reg, UAC, "udp", 0.5) == []  # Trying absorbs
    ok = make_response(reg, 200, to_tag="reg")
    assert statuses(layer.respond(key, ok, 1.0)) == [200]
    assert layer.state(key) is State.COMPLETED
    again = layer.on_request(reg, UAC, "udp", 2.0)
    assert [e.data for e in sends(again)] == [ok.to_bytes()]
    assert layer.respond(key, make_response(reg, 500), 2.5) == []  # discarded
    assert run(layer, 100.0) == [(round(1.0 + LONG, 9), Terminated(key))]
    assert len(layer) == 0
    # After Timer J a retransmission is a new request again.
    assert delivered_key(layer.on_request(reg, UAC, "udp", 40.0)) == key


def test_non_invite_server_provisional_then_retransmission() -> None:
    layer = TransactionLayer()
    opt = options(branch="z9hG4bKopt")
    key = delivered_key(layer.on_request(opt, UAC, "udp", 0.0))
    layer.respond(key, make_response(opt, 100), 0.1)
    assert layer.state(key) is State.PROCEEDING
    assert statuses(layer.on_request(opt, UAC, "udp", 0.2)) == [100]
    layer.respond(key, make_response(opt, 183, to_tag="x"), 0.3)
    assert statuses(layer.on_request(opt, UAC, "udp", 0.4)) == [183]
    layer.respond(key, make_response(opt, 200, to_tag="x"), 0.5)
    assert statuses(layer.on_request(opt, UAC, "udp", 0.6)) == [200]


def test_non_invite_server_tcp_timer_j_is_zero() -> None:
    layer = TransactionLayer()
    opt = options(transport="TCP")
    key = delivered_key(layer.on_request(opt, UAC, "tcp", 0.0))
    events = layer.respond(key, make_response(opt, 200), 0.1)
    assert statuses(events) == [200]
    assert events[-1] == Terminated(key)
    assert sends(events)[0].addr == UAC and sends(events)[0].transport == "tcp"
    assert len(layer) == 0 and layer.next_wakeup() is None


# ==========================================================================
# INVITE client transaction (RFC 3261 s17.1.1, RFC 6026 s7.2)
# ==========================================================================
def client_invite(layer: TransactionLayer, over: str = "udp", now: float = 0.0,
                  **kw: object) -> tuple[Request, TxKey, list[Event]]:
    kw.setdefault("branch", "z9hG4bKcli1")
    kw.setdefault("sent_by", "203.0.113.1:5060")
    kw.setdefault("via_params", ";rport")
    inv = invite(**kw)
    key, events = layer.send_request(inv, UAS, over, now)
    return inv, key, events


def test_invite_client_timer_a_doubles_and_timer_b_times_out() -> None:
    layer = TransactionLayer()
    inv, key, events = client_invite(layer)
    assert key == TxKey("client", "INVITE", "z9hG4bKcli1")
    assert events == [Send(inv.to_bytes(), UAS, "udp")]
    assert layer.state(key) is State.CALLING
    timeline = run(layer, 100.0)
    times = send_times(timeline)
    assert times == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert gaps([0.0, *times]) == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]  # no T2 cap for A
    assert all(e == Send(inv.to_bytes(), UAS, "udp") for _, e in timeline if isinstance(e, Send))
    assert [e for _, e in timeline if not isinstance(e, Send)] == [TimedOut(key),
                                                                   Terminated(key)]
    assert timeline[-1][0] == pytest.approx(LONG)
    assert len(layer) == 0


def test_invite_client_486_generates_ack_with_same_branch_and_to_tag() -> None:
    layer = TransactionLayer()
    inv, key, _ = client_invite(layer, extra=["Route: <sip:p1.example.com;lr>",
                                              "Route: <sip:p2.example.com;lr>"])
    busy = response(inv, 486, "Busy Here", to_tag="callee-9")
    events = layer.on_response(busy, 0.2)
    assert [type(e) for e in events] == [Send, DeliverResponse]
    assert events[1] == DeliverResponse(busy, key)
    the_ack = parse(sends(events)[0].data)
    assert sends(events)[0].addr == UAS and sends(events)[0].transport == "udp"
    assert isinstance(the_ack, Request)
    assert the_ack.method == "ACK" and the_ack.uri_text == inv.uri_text
    assert the_ack.get_all("via") == [inv.get_all("via")[0]]
    assert the_ack.top_via.branch == "z9hG4bKcli1"
    assert the_ack.to.tag == "callee-9"
    assert the_ack.from_.tag == inv.from_.tag and the_ack.call_id == inv.call_id
    assert (the_ack.cseq.number, the_ack.cseq.method) == (inv.cseq.number, "ACK")
    assert the_ack.get_all("route") == inv.get_all("route")
    assert the_ack.body == b"" and the_ack.get("content-length") is not None
    assert layer.state(key) is State.COMPLETED
    # Timer A/B stopped; a retransmitted 486 is ACKed again but not passed up.
    again = layer.on_response(busy, 1.0)
    assert [type(e) for e in again] == [Send] and again[0] == sends(events)[0]
    timeline = run(layer, 100.0)
    assert timeline == [(round(0.2 + 32.0, 9), Terminated(key))]  # Timer D


def test_invite_client_provisional_stops_a_and_b_then_2xx_accepted() -> None:
    layer = TransactionLayer()
    inv, key, _ = client_invite(layer)
    ringing = response(inv, 180, "Ringing", to_tag="b1")
    assert layer.on_response(ringing, 0.2) == [DeliverResponse(ringing, key)]
    assert layer.state(key) is State.PROCEEDING
    assert layer.next_wakeup() is None
    assert run(layer, 100.0) == []  # no A retransmissions, no B in Proceeding
    ok = response(inv, 200, "OK", to_tag="b1")
    assert layer.on_response(ok, 100.0) == [DeliverResponse(ok, key)]
    assert layer.state(key) is State.ACCEPTED
    # RFC 6026: retransmitted and forked 2xx go up too; others are absorbed.
    assert layer.on_response(ok, 100.5) == [DeliverResponse(ok, key)]
    forked = response(inv, 200, "OK", to_tag="b2")
    assert layer.on_response(forked, 101.0) == [DeliverResponse(forked, key)]
    assert layer.on_response(response(inv, 486, to_tag="b3"), 101.0) == []
    assert layer.on_response(response(inv, 183, to_tag="b3"), 101.0) == []
    assert run(layer, 1000.0) == [(round(100.0 + LONG, 9), Terminated(key))]  # Timer M
    assert layer.on_response(ok, 200.0) == []  # stray 2xx after M: dropped


def test_invite_client_2xx_in_calling() -> None:
    layer = TransactionLayer()
    inv, key, _ = client_invite(layer)
    ok = response(inv, 200, "OK")
    assert layer.on_response(ok, 0.1) == [DeliverResponse(ok, key)]
    assert run(layer, 1000.0) == [(round(0.1 + LONG, 9), Terminated(key))]


def test_invite_client_tcp_no_timer_a_and_zero_timer_d() -> None:
    layer = TransactionLayer()
    inv, _, events = client_invite(layer, "tcp", transport="TCP")
    assert events[0].transport == "tcp"  # type: ignore[union-attr]
    assert layer.next_wakeup() == pytest.approx(LONG)  # Timer B only
    busy = response(inv, 486, to_tag="x")
    events = layer.on_response(busy, 1.0)
    assert [type(e) for e in events] == [Send, DeliverResponse, Terminated]
    assert len(layer) == 0 and layer.next_wakeup() is None


def test_invite_client_tcp_timer_b() -> None:
    layer = TransactionLayer()
    _, key, _ = client_invite(layer, "tcp", transport="TCP")
    assert [e for _, e in run(layer, 100.0)] == [TimedOut(key), Terminated(key)]


def test_invite_client_cancel_guard_ends_proceeding_invite() -> None:
    # RFC 3261 s9.1: no final response 64*T1 after the CANCEL: give up.
    layer = TransactionLayer()
    inv, key, _ = client_invite(layer)
    layer.on_response(response(inv, 180, to_tag="b1"), 0.1)
    canc = cancel(inv)
    ckey, events = layer.send_request(canc, UAS, "udp", 10.0)
    assert ckey == TxKey("client", "CANCEL", "z9hG4bKcli1") and ckey != key
    assert events == [Send(canc.to_bytes(), UAS, "udp")]
    cancel_ok = response(canc, 200, "OK", to_tag="b1")
    assert layer.on_response(cancel_ok, 10.1) == [DeliverResponse(cancel_ok, ckey)]
    assert layer.state(key) is State.PROCEEDING
    timeline = run(layer, 1000.0)
    assert (round(10.0 + LONG, 9), TimedOut(key)) in timeline
    assert (round(10.0 + LONG, 9), Terminated(key)) in timeline
    assert len(layer) == 0


def test_invite_client_cancel_guard_disarmed_by_487() -> None:
    layer = TransactionLayer()
    inv, key, _ = client_invite(layer)
    layer.on_response(response(inv, 180, to_tag="b1"), 0.1)
    layer.send_request(cancel(inv), UAS, "udp", 1.0)
    layer.on_response(response(inv, 487, to_tag="b1"), 1.2)
    timeline = run(layer, 1000.0)
    assert TimedOut(key) not in [e for _, e in timeline]
    assert Terminated(key) in [e for _, e in timeline]


def test_send_request_validation() -> None:
    layer = TransactionLayer()
    with pytest.raises(ValueError, match="branch"):
        layer.send_request(options(branch="z9hG4bK"), UAS, "udp", 0.0)
    with pytest.raises(ValueError, match="branch"):
        layer.send_request(options(branch="old-style-1"), UAS, "udp", 0.0)
    inv = invite(branch="z9hG4bKdup")
    with pytest.raises(ValueError, match="ACK"):
        layer.send_request(ack(inv, response(inv, 200)), UAS, "udp", 0.0)
    mismatched = parse(options(branch="z9hG4bKmm").to_bytes().replace(b"1 OPTIONS",
                                                                      b"1 INFO"))
    assert isinstance(mismatched, Request)
    with pytest.raises(ValueError, match="CSeq method"):
        layer.send_request(mismatched, UAS, "udp", 0.0)
    no_via = Request.build("OPTIONS", "sip:x@example.com", [("CSeq", "1 OPTIONS")])
    with pytest.raises(ValueError, match="cannot start"):
        layer.send_request(no_via, UAS, "udp", 0.0)
    layer.send_request(inv, UAS, "udp", 0.0)
    with pytest.raises(ValueError, match="already live"):
        layer.send_request(inv, UAS, "udp", 0.0)
    assert len(layer) == 1


# ==========================================================================
# non-INVITE client transaction (RFC 3261 s17.1.2)
# ==========================================================================
def test_non_invite_client_timer_e_doubles_to_t2_and_f_times_out() -> None:
    layer = TransactionLayer()
    reg = register(branch="z9hG4bKr1", sent_by="203.0.113.1")
    key, _ = layer.send_request(reg, UAS, "udp", 0.0)
    assert key == TxKey("client", "REGISTER", "z9hG4bKr1")
    assert layer.state(key) is State.TRYING
    timeline = run(layer, 100.0)
    times = send_times(timeline)
    assert gaps([0.0, *times])[:5] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert set(gaps([0.0, *times])[3:]) == {4.0}
    assert max(times) < LONG
    assert [e for _, e in timeline if not isinstance(e, Send)] == [TimedOut(key),
                                                                   Terminated(key)]
    assert timeline[-1][0] == pytest.approx(LONG)


def test_non_invite_client_provisional_moves_to_proceeding_retransmit_at_t2() -> None:
    layer = TransactionLayer()
    opt = options(branch="z9hG4bKo1", sent_by="203.0.113.1")
    key, _ = layer.send_request(opt, UAS, "udp", 0.0)
    trying = response(opt, 100, "Trying", to_tag=None)
    assert layer.on_response(trying, 0.2) == [DeliverResponse(trying, key)]
    assert layer.state(key) is State.PROCEEDING
    times = send_times(run(layer, 13.0))
    assert times == [0.5, 4.5, 8.5, 12.5]  # the pending E, then every T2
    ok = response(opt, 200, "OK")
    assert layer.on_response(ok, 13.0) == [DeliverResponse(ok, key)]
    assert layer.state(key) is State.COMPLETED
    assert layer.on_response(ok, 13.5) == []  # absorbed
    assert run(layer, 100.0) == [(round(13.0 + T4, 9), Terminated(key))]  # Timer K


def test_non_invite_client_timer_f_in_proceeding() -> None:
    layer = TransactionLayer()
    opt = options(branch="z9hG4bKo9")
    key, _ = layer.send_request(opt, UAS, "udp", 0.0)
    layer.on_response(response(opt, 100, "Trying", to_tag=None), 0.1)
    timeline = run(layer, 100.0)
    assert [e for _, e in timeline if not isinstance(e, Send)] == [TimedOut(key),
                                                                   Terminated(key)]
    assert timeline[-1][0] == LONG


def test_non_invite_client_final_in_trying() -> None:
    layer = TransactionLayer()
    opt = options(branch="z9hG4bKo2")
    key, _ = layer.send_request(opt, UAS, "udp", 0.0)
    nf = response(opt, 404, "Not Found")
    assert layer.on_response(nf, 0.1) == [DeliverResponse(nf, key)]
    assert run(layer, 100.0) == [(round(0.1 + T4, 9), Terminated(key))]


def test_non_invite_client_tcp() -> None:
    layer = TransactionLayer()
    opt = options(branch="z9hG4bKo3", transport="TCP")
    key, _ = layer.send_request(opt, UAS, "tcp", 0.0)
    assert layer.next_wakeup() == pytest.approx(LONG)  # F only, no E
    ok = response(opt, 200, "OK")
    assert layer.on_response(ok, 1.0) == [DeliverResponse(ok, key), Terminated(key)]
    assert len(layer) == 0 and layer.next_wakeup() is None


def test_unmatched_responses_are_dropped() -> None:
    layer = TransactionLayer()
    inv, _, _ = client_invite(layer)
    assert layer.on_response(response(invite(branch="z9hG4bKother"), 200), 0.1) == []
    # Same branch, other CSeq method: the CANCEL's transaction, not the INVITE's.
    assert layer.on_response(response(cancel(inv), 200), 0.1) == []
    no_branch = parse(wire("""
        SIP/2.0 200 OK
        Via: SIP/2.0/UDP 203.0.113.1
        From: <sip:a@example.com>;tag=1
        To: <sip:b@example.com>;tag=2
        Call-ID: x
        CSeq: 1 INVITE
    """))
    assert isinstance(no_branch, Response)
    assert layer.on_response(no_branch, 0.1) == []
    no_via = parse(b"SIP/2.0 200 OK\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
    assert isinstance(no_via, Response)
    assert layer.on_response(no_via, 0.1) == []


# ==========================================================================
# CANCEL (RFC 3261 s9.2)
# ==========================================================================
def test_cancel_matches_invite_answered_200_and_tu_told() -> None:
    layer = TransactionLayer()
    inv, key, _ = server_invite(layer)
    layer.respond(key, make_response(inv, 180, to_tag="uas-tag"), 0.1)
    canc = cancel(inv)
    events = layer.on_request(canc, UAC, "udp", 1.0)
    assert [type(e) for e in events] == [Send, CancelRequest]
    ok = parse(events[0].data)  # type: ignore[union-attr]
    assert isinstance(ok, Response)
    assert ok.status == 200 and ok.cseq.method == "CANCEL"
    assert ok.to.tag == "uas-tag"  # same To tag as the INVITE's responses (s9.2)
    assert events[1] == CancelRequest(canc, key)
    assert layer.counts()["non_invite_server"] == 1
    # A retransmitted CANCEL gets the cached 200, no second CancelRequest.
    assert [type(e) for e in layer.on_request(canc, UAC, "udp", 1.5)] == [Send]
    # The TU answers the INVITE 487; the UAC ACKs it.
    terminated = make_response(inv, 487, to_tag="uas-tag")
    assert statuses(layer.respond(key, terminated, 1.6)) == [487]
    assert layer.on_request(ack(inv, terminated), UAC, "udp", 1.7) == []
    events = [e for _, e in run(layer, 1000.0)]
    assert set(events) == {Terminated(key), Terminated(TxKey(
        "server", "CANCEL", "z9hG4bKa1", "pc33.example.com:5070"))}
    assert len(layer) == 0


def test_cancel_after_final_response_has_no_effect_but_gets_200() -> None:
    layer = TransactionLayer()
    inv, key, _ = server_invite(layer)
    layer.respond(key, make_response(inv, 200, to_tag="t1"), 0.1)
    events = layer.on_request(cancel(inv), UAC, "udp", 0.2)
    assert statuses(events) == [200]
    assert not [e for e in events if isinstance(e, CancelRequest)]


def test_unknown_cancel_is_answered_481() -> None:
    layer = TransactionLayer()
    inv = invite(branch="z9hG4bKnever")
    canc = cancel(inv)
    events = layer.on_request(canc, UAC, "udp", 0.0)
    assert statuses(events) == [481]
    assert not [e for e in events if isinstance(e, DeliverRequest | CancelRequest)]
    assert statuses(layer.on_request(canc, UAC, "udp", 0.5)) == [481]
    assert [e for _, e in run(layer, 100.0)][-1] == Terminated(
        TxKey("server", "CANCEL", "z9hG4bKnever", "pc33.example.com:5070"))
    assert len(layer) == 0


def test_cancel_of_another_sent_by_does_not_match() -> None:
    layer = TransactionLayer()
    server_invite(layer)
    other = cancel(invite(sent_by="10.0.0.9:5070"))
    assert statuses(layer.on_request(other, UAC, "udp", 0.1)) == [481]


# ==========================================================================
# Merged requests (RFC 3261 s8.2.2.2)
# ==========================================================================
def test_merged_request_gets_482_and_is_not_delivered() -> None:
    layer = TransactionLayer()
    _, key, _ = server_invite(layer)
    merged = invite(branch="z9hG4bKotherpath", sent_by="proxy2.example.com")
    events = layer.on_request(merged, ("192.0.2.20", 5060), "udp", 0.1)
    assert statuses(events) == [482]
    assert [type(e) for e in events] == [Send]
    assert sends(events)[0].addr == ("192.0.2.20", 5060)
    loop = sent(events)[0]
    assert isinstance(loop, Response) and loop.reason == "Loop Detected"
    assert loop.to.tag
    # Its retransmission gets the 482 again; its ACK is absorbed.
    assert statuses(layer.on_request(merged, ("192.0.2.20", 5060), "udp", 0.6)) == [482]
    assert layer.on_request(ack(merged, loop), ("192.0.2.20", 5060), "udp", 0.7) == []
    assert layer.state(key) is State.PROCEEDING
    assert len(layer) == 2


def test_merged_non_invite_and_in_dialog_requests() -> None:
    layer = TransactionLayer()
    opt = options(branch="z9hG4bKm1")
    key = delivered_key(layer.on_request(opt, UAC, "udp", 0.0))
    assert statuses(layer.on_request(options(branch="z9hG4bKm2"), UAC, "udp", 0.1)) == [482]
    # Another CSeq is simply a new request.
    delivered_key(layer.on_request(options(branch="z9hG4bKm3", cseq=2), UAC, "udp", 0.1))
    # A request with a To tag is never checked for merging.
    delivered_key(layer.on_request(options(branch="z9hG4bKm4", to_tag="d1"), UAC, "udp", 0.1))
    # Once the first transaction ended, the same identifiers are new again.
    layer.respond(key, make_response(opt, 200), 0.2)
    run(layer, 100.0)
    assert key not in layer
    delivered_key(layer.on_request(options(branch="z9hG4bKm5"), UAC, "udp", 100.0))


# ==========================================================================
# RFC 2543 matching (s17.2.3 fallback), RFC 4475 torture messages
# ==========================================================================
def test_badbranch_bare_cookie_is_matched_rfc2543_style() -> None:
    layer = TransactionLayer()
    opt = conformance("badbranch.dat")
    assert opt.top_via.branch == "z9hG4bK"
    events = layer.on_request(opt, ("192.0.2.1", 5060), "udp", 0.0)
    key = delivered_key(events)
    assert key.branch == "" and key.method == "OPTIONS"
    assert key.legacy == ("sip:user@example.com", "", "33242",
                          "badbranch.sadonfo23i420jv0as0derf3j3n", "8",
                          str(opt.top_via))
    ok = make_response(opt, 200, to_tag="b")
    assert sends(layer.respond(key, ok, 0.1))[0].addr == ("192.0.2.1", 5060)
    # The same bytes again: a retransmission.
    retrans = conformance("badbranch.dat")
    assert [e.data for e in sends(layer.on_request(retrans, ("192.0.2.1", 5060), "udp",
                                                   0.5))] == [ok.to_bytes()]
    # Another top Via (same bare cookie branch): not this transaction; same
    # From tag, Call-ID and CSeq: a merged request.
    other_via = parse(retrans.to_bytes().replace(b"192.0.2.1;", b"192.0.2.99;"))
    assert isinstance(other_via, Request)
    assert statuses(layer.on_request(other_via, ("192.0.2.99", 5060), "udp", 0.6)) == [482]
    # Another CSeq number: a new transaction.
    new_cseq = parse(retrans.to_bytes().replace(b"CSeq: 8", b"CSeq: 9"))
    assert isinstance(new_cseq, Request)
    assert delivered_key(layer.on_request(new_cseq, ("192.0.2.1", 5060), "udp", 0.7)) != key


def test_inv2543_retransmission_ack_and_cancel() -> None:
    layer = TransactionLayer()
    src = ("192.0.2.5", 5060)
    inv = conformance("inv2543.dat")
    assert inv.top_via.branch is None
    events = layer.on_request(inv, src, "udp", 0.0)
    key = delivered_key(events)
    assert key.branch == "" and key.legacy
    assert statuses(events) == [100]
    # No received, no rport: the source IP and the Via's default port.
    assert sends(events)[0].addr == ("192.0.2.5", 5060)
    assert statuses(layer.on_request(conformance("inv2543.dat"), src, "udp", 0.3)) == [100]
    # CANCEL: same Request-URI, Call-ID, To, From, CSeq number and Via.
    canc = cancel(inv)
    events = layer.on_request(canc, src, "udp", 0.4)
    assert statuses(events) == [200]
    assert events[-1] == CancelRequest(canc, key)
    busy = make_response(inv, 487, to_tag="2543tag")
    layer.respond(key, busy, 0.5)
    # An ACK with another To tag acknowledges something else: passed up.
    wrong = ack(inv, make_response(inv, 487, to_tag="not-ours"))
    assert layer.on_request(wrong, src, "udp", 0.6) == [DeliverRequest(wrong, None, src, "udp")]
    assert layer.state(key) is State.COMPLETED
    # The RFC 2543 ACK (To tag of the 487) matches the INVITE transaction.
    assert layer.on_request(ack(inv, busy), src, "udp", 0.7) == []
    assert layer.state(key) is State.CONFIRMED
    run(layer, 100.0)
    assert len(layer) == 0


def test_inv2543_ack_for_2xx_goes_to_tu() -> None:
    layer = TransactionLayer()
    src = ("192.0.2.5", 5060)
    inv = conformance("inv2543.dat")
    key = delivered_key(layer.on_request(inv, src, "udp", 0.0))
    ok = make_response(inv, 200, to_tag="t2543")
    layer.respond(key, ok, 0.1)
    the_ack = ack(inv, ok)
    assert layer.on_request(the_ack, src, "udp", 0.2) == [
        DeliverRequest(the_ack, None, src, "udp")]
    assert layer.state(key) is State.ACCEPTED


def test_rfc2543_in_dialog_reinvite_ack_matches() -> None:
    # An RFC 2543 re-INVITE already carries a To tag; its ACK the same tag.
    layer = TransactionLayer()
    inv = parse(wire("""
        INVITE sip:bob@192.0.2.7 SIP/2.0
        Via: SIP/2.0/UDP 192.0.2.5
        From: <sip:alice@example.com>;tag=a
        To: <sip:bob@example.com>;tag=b
        Call-ID: re2543@example.com
        CSeq: 2 INVITE
    """))
    assert isinstance(inv, Request)
    key = delivered_key(layer.on_request(inv, ("192.0.2.5", 5060), "udp", 0.0))
    busy = make_response(inv, 488)
    layer.respond(key, busy, 0.1)
    assert layer.on_request(ack(inv, busy), ("192.0.2.5", 5060), "udp", 0.2) == []
    assert layer.state(key) is State.CONFIRMED


# ==========================================================================
# Response addressing (RFC 3261 s18.2.2, RFC 3581)
# ==========================================================================
@pytest.mark.parametrize(("via", "transport", "expected"), [
    ("SIP/2.0/UDP pc33.example.com:5070;branch=z9hG4bKa;rport", "udp", ("203.0.113.5", 40000)),
    ("SIP/2.0/UDP pc33.example.com:5070;branch=z9hG4bKa;rport=1234;received=1.2.3.4", "udp",
     ("203.0.113.5", 40000)),
    ("SIP/2.0/UDP pc33.example.com:5070;branch=z9hG4bKa;received=192.0.2.77", "udp",
     ("192.0.2.77", 5070)),
    ("SIP/2.0/UDP pc33.example.com;branch=z9hG4bKa;received=192.0.2.77", "udp",
     ("192.0.2.77", 5060)),
    ("SIP/2.0/UDP 203.0.113.5;branch=z9hG4bKa", "udp", ("203.0.113.5", 5060)),
    ("SIP/2.0/UDP 203.0.113.5:5080;branch=z9hG4bKa", "udp", ("203.0.113.5", 5080)),
    ("SIP/2.0/TCP pc33.example.com:5070;branch=z9hG4bKa", "tcp", ("203.0.113.5", 40000)),
    ("SIP/2.0/TCP pc33.example.com;branch=z9hG4bKa;received=9.9.9.9", "tcp",
     ("203.0.113.5", 40000)),
])
def test_response_addr(via: str, transport: str, expected: tuple[str, int]) -> None:
    assert response_addr(parse_via(via), ("203.0.113.5", 40000), transport) == expected


def test_server_responses_follow_rport_and_received() -> None:
    layer = TransactionLayer()
    nat = ("203.0.113.5", 40000)
    inv = invite(via_params=";rport")
    events = layer.on_request(inv, nat, "udp", 0.0)
    key = delivered_key(events)
    assert sends(events)[0].addr == nat
    # Every later Send of this transaction too (G retransmissions included).
    layer.respond(key, make_response(inv, 486, to_tag="x"), 0.1)
    assert {e.addr for _, e in run(layer, 5.0) if isinstance(e, Send)} == {nat}
    inv2 = invite(branch="z9hG4bKrecv", call_id="c2", via_params=";received=192.0.2.77")
    events = layer.on_request(inv2, nat, "udp", 0.0)
    assert sends(events)[0].addr == ("192.0.2.77", 5070)


# ==========================================================================
# Timer heap
# ==========================================================================
def test_late_clock_fires_due_timers_once_in_order() -> None:
    layer = TransactionLayer()
    inv, key, _ = server_invite(layer)
    layer.respond(key, make_response(inv, 486, to_tag="x"), 0.0)
    events = layer.on_timer(1000.0)  # the loop was stalled: G once, then H
    assert statuses(events) == [486]
    assert events[-2:] == [TimedOut(key), Terminated(key)]
    assert layer.next_wakeup() is None and len(layer) == 0


def test_cancelled_timers_never_fire_and_heap_stays_bounded() -> None:
    layer = TransactionLayer()
    for i in range(500):
        opt = options(branch=f"z9hG4bKh{i}", call_id=f"h{i}")
        key, _ = layer.send_request(opt, UAS, "udp", 0.0)
        # A final at once: E and F are cancelled, K armed.
        events = layer.on_response(response(opt, 200), 0.0)
        assert events == [DeliverResponse(events[0].response, key)]  # type: ignore[union-attr]
    assert layer.next_wakeup() == pytest.approx(T4)  # stale E at 0.5 skipped
    assert layer.deadlines.entries < 2000
    events = layer.on_timer(T4)
    assert len(events) == 500 and all(isinstance(e, Terminated) for e in events)
    assert layer.on_timer(1000.0) == []
    assert len(layer) == 0 and layer.next_wakeup() is None


def test_heap_compacts_stale_entries() -> None:
    layer = TransactionLayer()
    for i in range(300):
        inv, _, _ = client_invite(layer, branch=f"z9hG4bKq{i}", call_id=f"q{i}")
        layer.on_response(response(inv, 180), 0.1)  # A and B cancelled: stale entries
    assert layer.next_wakeup() is None
    layer.send_request(options(branch="z9hG4bKlast"), UAS, "udp", 0.2)
    assert layer.deadlines.entries == 2  # compacted down to E and F
    assert layer.next_wakeup() == 0.7


def test_everything_terminates_after_all_timers_run() -> None:
    layer = TransactionLayer()
    now = 0.0
    inv, k1, _ = server_invite(layer, branch="z9hG4bKe1", call_id="e1")
    layer.respond(k1, make_response(inv, 200, to_tag="t"), now)
    inv2, k2, _ = server_invite(layer, branch="z9hG4bKe2", call_id="e2")
    layer.respond(k2, make_response(inv2, 486, to_tag="t"), now)
    opt = options(branch="z9hG4bKe3", call_id="e3")
    k3 = delivered_key(layer.on_request(opt, UAC, "udp", now))
    layer.respond(k3, make_response(opt, 200), now)
    layer.on_request(cancel(invite(branch="z9hG4bKe4")), UAC, "udp", now)
    cinv, _, _ = client_invite(layer, branch="z9hG4bKe5", call_id="e5")
    layer.send_request(options(branch="z9hG4bKe6", call_id="e6"), UAS, "udp", now)
    layer.on_response(response(cinv, 503, to_tag="z"), now)
    assert len(layer) == 6
    assert layer.counts() == {"invite_server": 2, "non_invite_server": 2,
                              "invite_client": 1, "non_invite_client": 1}
    terminated = [e for _, e in run(layer, 1e6) if isinstance(e, Terminated)]
    assert len(terminated) == 6 == len(set(terminated))
    assert len(layer) == 0 and layer.next_wakeup() is None
    assert set(layer.counts().values()) == {0}


# ==========================================================================
# Property: random interleavings always drain
# ==========================================================================
ACTION = st.tuples(
    st.sampled_from(["tick", "retransmit", "respond", "ack", "ack2xx", "cancel", "fork",
                     "client_response"]),
    st.integers(min_value=0, max_value=7),
    st.sampled_from([100, 180, 200, 486, 503]),
    st.floats(min_value=0.0, max_value=40.0, allow_nan=False),
)
SETUP = st.tuples(st.sampled_from(["server", "client"]), st.sampled_from(["INVITE", "OPTIONS"]),
                  st.sampled_from(["udp", "tcp"]))


@settings(max_examples=300, deadline=None)
@given(st.lists(SETUP, min_size=1, max_size=6), st.lists(ACTION, max_size=80))
def test_random_interleavings_never_raise_and_drain(
        setups: list[tuple[str, str, str]],
        actions: list[tuple[str, int, int, float]]) -> None:
    layer = TransactionLayer()
    now = 0.0
    servers: list[tuple[Request, str]] = []  # requests the far end sends
    clients: list[Request] = []  # requests we sent
    tu: dict[TxKey, Request] = {}  # server transactions the TU must answer
    started: list[TxKey] = []
    ended: list[TxKey] = []

    def absorb(events: list[Event]) -> None:
        for ev in events:
            if isinstance(ev, Send):
                assert ev.transport in ("udp", "tcp")
                parse(ev.data)
            elif isinstance(ev, DeliverRequest) and ev.key is not None:
                assert ev.key in layer
                tu[ev.key] = ev.request
                started.append(ev.key)
            elif isinstance(ev, CancelRequest):
                assert ev.invite_key in tu
            elif isinstance(ev, Terminated):
                assert ev.key not in layer
                ended.append(ev.key)

    for i, (side, method, transport) in enumerate(setups):
        req = request(method, branch=f"z9hG4bKp{i}", call_id=f"p{i}", from_tag=f"f{i}",
                      transport=transport.upper())
        if side == "server":
            servers.append((req, transport))
            absorb(layer.on_request(req, UAC, transport, now))
        else:
            clients.append(req)
            key, events = layer.send_request(req, UAS, transport, now)
            started.append(key)
            absorb(events)

    for what, index, status, dt in actions:
        if what == "tick":
            now += dt
            absorb(layer.on_timer(now))
        elif what == "client_response":
            if clients:
                req = clients[index % len(clients)]
                absorb(layer.on_response(response(req, status, to_tag=f"r{status}"), now))
        elif servers:
            req, transport = servers[index % len(servers)]
            if what == "retransmit":
                absorb(layer.on_request(req, UAC, transport, now))
            elif what == "respond":
                live = [k for k in tu if k in layer]
                if live:
                    key = live[index % len(live)]
                    absorb(layer.respond(key, make_response(tu[key], status, to_tag="uas"),
                                         now))
            elif what in ("ack", "ack2xx") and req.method == "INVITE":
                final = make_response(req, status if status >= 200 else 486, to_tag="uas")
                branch = "z9hG4bKack" + str(index) if what == "ack2xx" else None
                absorb(layer.on_request(ack(req, final, branch), UAC, transport, now))
            elif what == "cancel":
                absorb(layer.on_request(cancel(req), UAC, transport, now))
            elif what == "fork":
                forked = parse(req.to_bytes().replace(b";branch=z9hG4bKp",
                                                      f";branch=z9hG4bKfork{index}x".encode()))
                assert isinstance(forked, Request)
                absorb(layer.on_request(forked, UAC, transport, now))
        assert len(layer) >= len([k for k in tu if k in layer])

    # The TU answers what is still open, the far ends answer our requests...
    for key, req in list(tu.items()):
        if key in layer:
            absorb(layer.respond(key, make_response(req, 500, to_tag="uas"), now))
    for req in clients:
        absorb(layer.on_response(response(req, 486), now))
    # ...and enough time passes.
    for _ in range(10_000):
        wake = layer.next_wakeup()
        if wake is None:
            break
        now = max(now, wake)
        absorb(layer.on_timer(now))
    assert len(layer) == 0
    assert layer.next_wakeup() is None
    assert set(layer.counts().values()) == {0}
    assert set(started) <= set(ended)
