"""The receive queue's overload policy (engine/shell/overload.py) with a fake clock: how
messages are classed, served in order, refused (503) or dropped, and what the
metrics and the start/stop events say."""

from __future__ import annotations

import random

import pytest

from engine.metrics import Metrics
from engine.shell.overload import Klass, Overload, OverloadConfig, read_head
from engine.sip.message import Response, parse
from tests.samples import PHONE_REGISTER, TRUNK_INVITE

TRUNK = ("203.0.113.5", 5060)
PHONE = ("192.168.1.20", 5062)
STRANGER = ("198.51.100.9", 5070)


def request(method: str, branch: str, *, to_tag: str = "", via_params: str = "",
            cseq: int = 1, extra_via: str = "", compact: bool = False) -> bytes:
    via, to = ("v", "t") if compact else ("Via", "To")
    lines = [f"{method} sip:100@pbx.example.test SIP/2.0",
             f"{via}: SIP/2.0/UDP 192.0.2.1:5060;branch={branch}{via_params}"]
    if extra_via:
        lines.append(f"Via: {extra_via}")
    lines += [f"{to}: <sip:100@pbx.example.test>" + (f";tag={to_tag}" if to_tag else ""),
              "From: <sip:200@pbx.example.test>;tag=from1",
              f"Call-ID: {branch}@192.0.2.1", f"CSeq: {cseq} {method}", "Max-Forwards: 70",
              "Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


def response(status: int, method: str, branch: str) -> bytes:
    return (f"SIP/2.0 {status} OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch={branch}\r\n"
            "To: <sip:1@h>;tag=a\r\nFrom: <sip:2@h>;tag=b\r\nCall-ID: c\r\n"
            f"CSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n").encode()


class Fixture:
    def __init__(self, config: OverloadConfig | None = None,
                 live: set[str] | None = None) -> None:
        self.metrics = Metrics()
        self.known = {TRUNK[0], PHONE[0]}
        self.live = live or set()  # branches of live server transactions
        self.ov = Overload(config or OverloadConfig(), self.metrics,
                           retransmits=lambda head: head.branch in self.live,
                           is_known=lambda source: source[0] in self.known,
                           rng=random.Random(7), oc_seq_base=1000.0)

    def offer(self, data: bytes, source: tuple[str, int] = TRUNK, now: float = 0.0,
              transport: str = "udp") -> None:
        self.ov.offer(data, source, transport, now)

    def served(self, now: float) -> list[bytes]:
        out = []
        while (item := self.ov.pop(now)) is not None:
            out.append(item.data)
        return out

    def replies(self) -> list[Response]:
        out = []
        for data, _, _ in self.ov.outbox:
            msg = parse(data)
            assert isinstance(msg, Response)
            out.append(msg)
        self.ov.outbox.clear()
        return out

    def shed(self, cls: str, reason: str) -> float:
        return self.metrics.registry.get_sample_value(
            "switchboard_sip_shed_total", {"class": cls, "reason": reason}) or 0.0


# -- reading and classing ---------------------------------------------------------------


def test_read_head_takes_method_to_tag_via_and_cseq() -> None:
    head = read_head(TRUNK_INVITE)
    assert head is not None and not head.response
    assert (head.method, head.to_tag, head.branch, head.cseq_method) == (
        "INVITE", False, "z9hG4bK776asdhds", "INVITE")
    compact = read_head(request("BYE", "z9hG4bKc1", to_tag="x", compact=True))
    assert compact is not None and compact.to_tag and compact.branch == "z9hG4bKc1"
    resp = read_head(response(200, "BYE", "z9hG4bKr"))
    assert resp is not None and resp.response and resp.cseq_method == "BYE"
    assert read_head(b"INVITE sip:x SIP/2.0\r\nTo: <sip:x@h>\r\n\r\n") is None  # no Via
    assert read_head(b"garbage") is None


@pytest.mark.parametrize(("data", "source", "cls"), [
    (response(180, "INVITE", "z9hG4bKa"), STRANGER, Klass.DIALOG),
    (request("ACK", "z9hG4bKa", to_tag="t"), STRANGER, Klass.DIALOG),
    (request("BYE", "z9hG4bKb", to_tag="t"), STRANGER, Klass.DIALOG),
    (request("CANCEL", "z9hG4bKc"), STRANGER, Klass.DIALOG),
    (request("INVITE", "z9hG4bKd", to_tag="t"), STRANGER, Klass.DIALOG),  # re-INVITE
    (request("REGISTER", "z9hG4bKe"), PHONE, Klass.REFRESH),
    (request("OPTIONS", "z9hG4bKf"), TRUNK, Klass.REFRESH),
    (request("INVITE", "z9hG4bKg"), TRUNK, Klass.INVITE),
    (request("INVITE", "z9hG4bKh"), STRANGER, Klass.INVITE),
    (request("REGISTER", "z9hG4bKi"), STRANGER, Klass.OTHER),
    (request("SUBSCRIBE", "z9hG4bKj"), STRANGER, Klass.OTHER),
    (b"NOTSIP\r\n\r\n", STRANGER, Klass.OTHER),
])
def test_classes(data: bytes, source: tuple[str, int], cls: Klass) -> None:
    f = Fixture()
    f.offer(data, source)
    assert [len(q) for q in f.ov.queues] == [int(c == cls) for c in Klass]


def test_keep_alives_are_not_queued() -> None:
    f = Fixture()
    f.offer(b"\r\n\r\n", PHONE)
    f.offer(b"\r\n", PHONE)
    assert f.ov.queued == 0 and not f.ov.outbox


def test_served_highest_class_first_then_oldest_first() -> None:
    f = Fixture()
    f.offer(request("OPTIONS", "z9hG4bK1"), STRANGER, 0.0)
    f.offer(request("INVITE", "z9hG4bK2"), TRUNK, 0.001)
    f.offer(request("INVITE", "z9hG4bK3"), TRUNK, 0.002)
    f.offer(request("REGISTER", "z9hG4bK4"), PHONE, 0.003)
    f.offer(request("BYE", "z9hG4bK5", to_tag="t"), TRUNK, 0.004)
    f.offer(response(200, "INVITE", "z9hG4bK6"), PHONE, 0.005)
    served = [read_head(d) for d in f.served(0.01)]
    assert [(h.method or "response", h.branch) for h in served if h] == [
        ("BYE", "z9hG4bK5"), ("response", "z9hG4bK6"), ("REGISTER", "z9hG4bK4"),
        ("INVITE", "z9hG4bK2"), ("INVITE", "z9hG4bK3"), ("OPTIONS", "z9hG4bK1")]
    assert f.ov.queued == 0 and not f.ov.outbox


# -- refusing under load ------------------------------------------------------------------


def test_new_invite_refused_at_once_when_the_queue_is_late_but_dialogs_queue() -> None:
    f = Fixture()
    f.offer(request("INVITE", "z9hG4bKold"), TRUNK, 0.0)
    f.offer(request("INVITE", "z9hG4bKnew"), TRUNK, 0.25)  # the oldest waited 250 ms
    [refusal] = f.replies()
    assert refusal.status == 503 and refusal.top_via.branch == "z9hG4bKnew"
    assert 2 <= int(refusal.get("retry-after") or 0) <= 10
    assert refusal.to.tag  # a final answer: the UAS's tag (RFC 3261 s8.2.6.2)
    assert refusal.top_via.received == TRUNK[0] and refusal.top_via.rport == str(TRUNK[1])
    assert refusal.call_id == "z9hG4bKnew@192.0.2.1" and refusal.cseq.method == "INVITE"
    f.offer(request("BYE", "z9hG4bKbye", to_tag="t"), TRUNK, 0.26)
    f.offer(response(200, "INVITE", "z9hG4bKr"), PHONE, 0.26)
    assert not f.ov.outbox and f.ov.queued == 3
    assert f.shed("invite", "delay") == 1
    assert f.ov.congested


def test_lowest_class_is_refused_first() -> None:
    """With INVITEs 150 ms late, other requests (limit 100 ms) are refused while new
    INVITEs (200 ms) and refreshes (400 ms) are still queued."""
    f = Fixture()
    f.offer(request("INVITE", "z9hG4bK0"), TRUNK, 0.0)
    f.offer(request("OPTIONS", "z9hG4bK1"), STRANGER, 0.15)
    f.offer(request("INVITE", "z9hG4bK2"), TRUNK, 0.15)
    f.offer(request("REGISTER", "z9hG4bK3"), PHONE, 0.15)
    assert [r.top_via.branch for r in f.replies()] == ["z9hG4bK1"]
    assert f.shed("other", "delay") == 1 and f.shed("invite", "delay") == 0
    assert [len(q) for q in f.ov.queues] == [0, 1, 2, 0]


def test_a_starved_class_is_refused_after_twice_its_wait() -> None:
    f = Fixture()
    f.offer(request("OPTIONS", "z9hG4bK1"), STRANGER, 0.0)
    f.ov.sweep(0.15)
    assert not f.ov.outbox
    f.ov.sweep(0.25)  # 2 x 100 ms
    assert [r.status for r in f.replies()] == [503]
    assert f.shed("other", "expired") == 1 and f.ov.queued == 0


def test_late_requests_are_refused_and_stale_ones_dropped_when_their_turn_comes() -> None:
    f = Fixture()
    f.offer(request("INVITE", "z9hG4bKlate"), TRUNK, 0.0)
    assert f.served(0.45) == []  # 450 ms > 2 x 200 ms
    assert [r.top_via.branch for r in f.replies()] == ["z9hG4bKlate"]
    f.offer(request("INVITE", "z9hG4bKstale"), TRUNK, 1.0)
    assert f.served(1.6) == []  # over T1 since its last copy: its sender has retransmitted
    assert not f.ov.outbox
    assert f.shed("invite", "expired") == 1 and f.shed("invite", "stale") == 1


def test_stream_requests_are_never_dropped_silently() -> None:
    """No retransmission comes over TCP: a late request gets its 503."""
    f = Fixture()
    f.offer(request("REGISTER", "z9hG4bKtcp"), PHONE, 0.0, transport="tcp")
    assert f.served(2.0) == []
    [(data, addr, transport)] = f.ov.outbox
    assert data.startswith(b"SIP/2.0 503") and (addr, transport) == (PHONE, "tcp")


def test_a_retransmission_merges_into_its_queued_request() -> None:
    f = Fixture()
    invite = request("INVITE", "z9hG4bKrx")
    f.offer(invite, TRUNK, 0.0)
    f.offer(invite, TRUNK, 0.3)
    assert f.ov.queued == 1
    assert f.served(0.35) == [invite]  # its last copy is fresh: served, once
    absorbed = f.metrics.registry.get_sample_value(
        "switchboard_sip_overload_absorbed_total", {"what": "queued_retransmission"})
    assert absorbed == 1


def test_a_retransmission_of_a_live_transaction_is_never_shed() -> None:
    f = Fixture(live={"z9hG4bKlive"})
    f.offer(request("INVITE", "z9hG4bKold"), TRUNK, 0.0)
    f.offer(request("INVITE", "z9hG4bKlive"), TRUNK, 0.3)  # congested, but answered cheaply
    assert not f.ov.outbox and len(f.ov.queues[Klass.DIALOG]) == 1


def test_the_ack_of_a_503_is_absorbed_and_an_ack_is_never_answered() -> None:
    f = Fixture(OverloadConfig(max_items=2))
    f.offer(request("INVITE", "z9hG4bKold"), TRUNK, 0.0)
    f.offer(request("INVITE", "z9hG4bKx"), TRUNK, 0.3)
    assert len(f.replies()) == 1
    f.offer(request("ACK", "z9hG4bKx", to_tag="ours"), TRUNK, 0.31)
    assert f.ov.queued == 1
    f.offer(request("ACK", "z9hG4bKa1", to_tag="t"), TRUNK, 0.32)
    f.offer(request("ACK", "z9hG4bKa2", to_tag="t"), TRUNK, 0.33)  # full: evicts the INVITE
    f.offer(request("ACK", "z9hG4bKa3", to_tag="t"), TRUNK, 0.34)  # full of ACKs: dropped
    assert [r.top_via.branch for r in f.replies()] == ["z9hG4bKold"]
    assert f.shed("invite", "full") == 1 and f.shed("dialog", "full") == 1
    assert f.metrics.registry.get_sample_value(
        "switchboard_sip_overload_absorbed_total", {"what": "ack_of_503"}) == 1


def test_loop_lag_counts_as_queueing_delay() -> None:
    f = Fixture()
    f.ov.tick(0.3, 0.0)  # the loop ran a timer 300 ms late
    f.offer(request("INVITE", "z9hG4bKi"), TRUNK, 0.01)
    f.offer(request("REGISTER", "z9hG4bKr"), PHONE, 0.01)  # 400 ms for refreshes
    f.offer(request("BYE", "z9hG4bKb", to_tag="t"), TRUNK, 0.01)
    assert [r.top_via.branch for r in f.replies()] == ["z9hG4bKi"]
    assert [len(q) for q in f.ov.queues] == [1, 1, 0, 0]


# -- unknown sources -----------------------------------------------------------------------


def test_unknown_sources_have_a_token_bucket_known_ones_do_not() -> None:
    f = Fixture(OverloadConfig(source_rate=2, source_burst=4))
    for i in range(6):
        f.offer(request("OPTIONS", f"z9hG4bKs{i}"), STRANGER, 0.0)
        f.offer(request("INVITE", f"z9hG4bKt{i}"), TRUNK, 0.0)
        f.offer(request("REGISTER", f"z9hG4bKp{i}"), PHONE, 0.0)
    assert [r.top_via.branch for r in f.replies()] == ["z9hG4bKs4", "z9hG4bKs5"]
    assert f.shed("other", "source_rate") == 2
    f.served(0.0)
    f.offer(request("OPTIONS", "z9hG4bKs6"), STRANGER, 0.5)  # one token back
    f.offer(request("OPTIONS", "z9hG4bKs7"), STRANGER, 0.5)
    assert [r.top_via.branch for r in f.replies()] == ["z9hG4bKs7"]
    f.offer(request("OPTIONS", "z9hG4bKs8"), ("198.51.100.10", 5070), 0.5)  # another IP
    assert not f.ov.outbox


def test_source_table_is_bounded() -> None:
    f = Fixture(OverloadConfig(max_sources=10))
    for i in range(50):
        f.offer(request("OPTIONS", f"z9hG4bK{i}"), (f"198.51.100.{i}", 5060), 0.0)
    assert len(f.ov._buckets) == 10


# -- RFC 7339 and the 503 ------------------------------------------------------------------


def test_oc_parameters_on_the_503_when_the_client_asks() -> None:
    f = Fixture()
    f.ov.tick(0.0, 0.0)
    f.offer(request("INVITE", "z9hG4bKq0"), TRUNK, 0.0)
    for i in range(1, 5):  # four more in the same second, all late: 4 of 5 refused
        f.offer(request("INVITE", f"z9hG4bKq{i}"), TRUNK, 0.3)
    f.replies()
    f.ov.tick(0.0, 1.0)  # the second is over: the loss rate is 80 %
    f.offer(request("INVITE", "z9hG4bKoc", via_params=";oc;rport"), TRUNK, 1.0)
    f.offer(request("INVITE", "z9hG4bKplain"), TRUNK, 1.0)
    with_oc, plain = f.replies()
    via = with_oc.top_via
    assert (via.param("oc"), via.param("oc-algo"), via.param("oc-validity")) == (
        "80", '"loss"', "1000")
    assert via.param("oc-seq") == "1001.000"  # oc_seq_base + now
    assert via.rport == str(TRUNK[1])  # the client's empty rport, filled in
    assert plain.top_via.param("oc") is None


def test_oc_is_zero_with_no_validity_once_calm() -> None:
    f = Fixture()
    f.offer(request("INVITE", "z9hG4bKa"), TRUNK, 0.0)
    f.offer(request("INVITE", "z9hG4bKb"), TRUNK, 0.3)
    f.replies()
    f.ov.tick(0.0, 5.0)
    # refused for its source, not for congestion: the engine itself is not overloaded
    f.ov.outbox.clear()
    data = request("OPTIONS", "z9hG4bKc", via_params=";oc")
    head = read_head(data)
    assert head is not None
    refusal = parse(f.ov.refusal(data, head, STRANGER) or b"")
    assert refusal.top_via.param("oc") == "0" and refusal.top_via.param("oc-validity") == "0"


def test_the_503_copies_every_via_and_the_dialog_headers() -> None:
    f = Fixture()
    data = request("INVITE", "z9hG4bKtop", extra_via="SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKp",
                   cseq=42)
    head = read_head(data)
    assert head is not None
    refusal = parse(f.ov.refusal(data, head, TRUNK) or b"")
    assert isinstance(refusal, Response) and refusal.status == 503
    assert [v.branch for v in refusal.vias] == ["z9hG4bKtop", "z9hG4bKp"]
    assert refusal.from_.tag == "from1" and refusal.cseq.number == 42
    assert refusal.get("content-length") == "0"
    register = read_head(PHONE_REGISTER)
    assert register is not None
    again = parse(f.ov.refusal(PHONE_REGISTER, register, PHONE) or b"")
    assert again.call_id == "0_2290743620@192.168.1.20"


def test_retry_after_is_drawn_from_the_range() -> None:
    f = Fixture(OverloadConfig(retry_after=(3, 5), source_rate=1, source_burst=1))
    for i in range(60):
        f.offer(request("OPTIONS", f"z9hG4bK{i}"), STRANGER, 0.0)
    values = {int(r.get("retry-after") or 0) for r in f.replies()}
    assert values == {3, 4, 5}


# -- state and logs --------------------------------------------------------------------------


def test_one_event_when_shedding_starts_and_one_when_it_stops() -> None:
    f = Fixture()
    f.offer(request("INVITE", "z9hG4bK0"), TRUNK, 0.0)
    for i in range(1, 30):
        f.offer(request("INVITE", f"z9hG4bK{i}"), TRUNK, 0.3)
    f.offer(request("OPTIONS", "z9hG4bKo"), STRANGER, 0.3)
    assert [e for e, _ in f.ov.events] == ["started"]
    gauge = "switchboard_overloaded"
    assert f.metrics.registry.get_sample_value(gauge) == 1
    f.ov.tick(0.0, 1.0)  # within 2 s of the last refusal: still on
    assert len(f.ov.events) == 1
    f.ov.tick(0.0, 2.5)
    assert [e for e, _ in f.ov.events] == ["started", "stopped"]
    stopped = f.ov.events[1][1]
    assert stopped["shed"] == {"invite/delay": 29, "other/delay": 1}
    assert f.metrics.registry.get_sample_value(gauge) == 0
    assert not f.ov.congested


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="retry_after"):
        OverloadConfig(retry_after=(5, 2))
    with pytest.raises(ValueError, match="max_queue"):
        OverloadConfig(max_queue=0)
