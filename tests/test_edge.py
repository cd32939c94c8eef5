"""The edge's X-Switchboard-Source (engine.sip.edge): believed from a configured edge
only, through Engine.datagram and the receive queue's policy. SIP bytes in, a fake
clock, no sockets (tests/test_e2e_cluster.py runs it with the real Kamailio)."""

from __future__ import annotations

import tomllib

import pytest

from engine.core import Engine
from engine.metrics import Metrics
from engine.shell.overload import Klass, Overload, OverloadConfig
from engine.sip.auth import FailureLimiter
from engine.sip.edge import EdgeTrust, parse_edges, parse_source
from engine.sip.message import Request, Response, parse
from engine.sip.transaction import Addr
from provisioning.directory import parse_directory
from tests.test_core import DIRECTORY, PHONE, TRUNK, Clock, request

EDGE: Addr = ("127.0.0.20", 5060)


def header(addr: Addr) -> str:
    return f"X-Switchboard-Source: {addr[0]}:{addr[1]};proto=udp\r\n"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def engine(clock: Clock) -> Engine:
    directory = parse_directory(tomllib.loads(DIRECTORY), "<test>")
    return Engine(directory, {"127.0.0.1", "pbx.test"}, 5060, wall_clock=clock,
                  digest_algorithms=("MD5",), limiter=FailureLimiter(max_failures=3),
                  edge=EdgeTrust(parse_edges(f"{EDGE[0]}:{EDGE[1]}")))


def statuses(engine: Engine, data: bytes, source: Addr, clock: Clock) -> list[int]:
    out = engine.datagram(data, source, "udp", clock.now)
    """The final statuses the engine answered ``data`` with."""
    return [m.status for m in (parse(s.data) for s in out.sends)
            if isinstance(m, Response) and m.status >= 200]


def trunk_invite(extra: str) -> bytes:
    return request("INVITE", "sip:+15145550100@pbx.test", user="+15145550199",
                   source=EDGE, extra=extra)


def test_parse_edges_names_the_bad_entry() -> None:
    assert parse_edges("10.0.0.1, 10.0.0.2:5060,[::1]:5070") == (
        ("10.0.0.1", None), ("10.0.0.2", 5060), ("::1", 5070))
    assert parse_edges("") == ()
    with pytest.raises(ValueError, match=r"--edge 'edge\.example'"):
        parse_edges("10.0.0.1,edge.example")
    with pytest.raises(ValueError, match="port"):
        parse_edges("10.0.0.1:99999")
    assert parse_source("[2001:db8::7]:5060;proto=udp") == ("2001:db8::7", 5060)
    assert parse_source("10.0.0.9;proto=udp") is None  # no port: unreadable


def test_the_edge_names_a_trunk(engine: Engine, clock: Clock) -> None:
    # From the edge, the trunk's address in the header: the trunk's call (routed at
    # once, no challenge; 480 because this INVITE has no SDP for voicemail).
    assert statuses(engine, trunk_invite(header(TRUNK)), EDGE, clock) == [480]
    # From the edge, a phone's address: challenged as a phone.
    assert statuses(engine, trunk_invite(header(PHONE)), EDGE, clock) == [407]
    # The edge's own port is part of its address: another port there is not the edge.
    other: Addr = (EDGE[0], 5999)
    assert statuses(engine, trunk_invite(header(TRUNK)), other, clock) == [407]


def test_a_phone_writing_the_header_is_still_a_phone(engine: Engine, clock: Clock) -> None:
    out = engine.datagram(trunk_invite(header(TRUNK)), PHONE, "udp", clock.now)
    sent = [parse(s.data) for s in out.sends]
    assert [m.status for m in sent if isinstance(m, Response) and m.status >= 200] == [407]
    no_edge = Engine(engine.directory, {"pbx.test"}, 5060, wall_clock=clock)
    assert statuses(no_edge, trunk_invite(header(TRUNK)), EDGE, clock) == [407]


def test_the_failed_auth_block_is_per_real_source(engine: Engine, clock: Clock) -> None:
    # Three wrong passwords from one phone behind the edge block that phone, not the
    # edge: another phone behind the same edge still gets its challenge.
    from engine.sip.auth import build_authorization

    behind: Addr = ("198.51.100.7", 40000)
    for _ in range(3):
        challenge = engine.datagram(request("REGISTER", source=EDGE, extra=header(behind)),
                                    EDGE, "udp", clock.now)
        resp = parse(challenge.sends[-1].data)
        assert isinstance(resp, Response) and resp.status == 401
        auth = build_authorization(resp.get_lines("www-authenticate")[0], "REGISTER",
                                   "sip:pbx.test", "101", "wrong", "cn1")
        assert statuses(engine, request("REGISTER", source=EDGE, extra=header(behind)
                                        + f"Authorization: {auth}\r\n"), EDGE, clock) == [401]
    assert statuses(engine, request("REGISTER", source=EDGE, extra=header(behind)),
                    EDGE, clock) == [403]
    assert statuses(engine, request("REGISTER", source=EDGE, extra=header(PHONE)),
                    EDGE, clock) == [401]


def test_the_header_from_outside_is_dropped_and_logged_once(
        engine: Engine, clock: Clock, capsys: pytest.CaptureFixture[str]) -> None:
    msg = parse(trunk_invite(header(TRUNK)))
    assert isinstance(msg, Request)
    stripped = engine.edge.strip(msg, PHONE)
    assert not stripped.has("x-switchboard-source") and stripped.method == "INVITE"
    assert engine.edge.strip(msg, EDGE) is msg  # the edge's own: kept, read later
    engine.edge.strip(msg, PHONE)
    engine.edge.origin(msg, PHONE)
    logged = capsys.readouterr()
    assert (logged.out + logged.err).count("X-Switchboard-Source ignored") == 1


def test_the_receive_queue_classes_by_the_real_source(clock: Clock) -> None:
    # Behind one edge, each source has its own token bucket: a scanner behind the edge
    # is refused (503) while a phone behind the same edge is queued; a known source
    # (a trunk) is classed as one.
    edge = EdgeTrust([EDGE])
    known = {TRUNK}
    policy = Overload(OverloadConfig(source_rate=1.0, source_burst=2.0), Metrics(),
                      is_known=lambda source: source in known, origin=edge.origin)
    scanner: Addr = ("203.0.113.66", 5060)
    for _ in range(5):
        policy.offer(request("OPTIONS", source=EDGE, extra=header(scanner)).replace(
            b"OPTIONS", b"INVITE", 1), EDGE, "udp", 100.0)
    assert len(policy.outbox) == 3  # burst 2, the rest refused
    policy.offer(request("INVITE", "sip:102@pbx.test", source=EDGE, extra=header(PHONE)),
                 EDGE, "udp", 100.0)
    assert len(policy.outbox) == 3 and len(policy.queues[Klass.INVITE]) == 3
    policy.offer(request("OPTIONS", source=EDGE, extra=header(TRUNK)), EDGE, "udp", 100.0)
    assert len(policy.queues[Klass.REFRESH]) == 1


def test_a_phone_registered_through_the_edge_is_known_by_its_own_address() -> None:
    # The binding's source is the edge; the Path the edge put first names where the
    # phone's REGISTER came from (received=, escaped or not): that address is the one
    # the receive queue and the connection policy know. Without an edge, or from a
    # source that is not one, the source stays.
    edge = EdgeTrust(parse_edges(f"{EDGE[0]}:{EDGE[1]}"))
    path = (f"<sip:{EDGE[0]}:{EDGE[1]};lr;received=sip:198.51.100.7:40000>",
            "<sip:proxy.example;lr>")
    assert edge.registered_ip(EDGE[0], path) == "198.51.100.7"
    escaped = (f"<sip:{EDGE[0]};lr;received=sip%3A198.51.100.8%3A5062%3Btransport%3Dudp>",)
    assert edge.registered_ip(EDGE[0], escaped) == "198.51.100.8"
    assert edge.registered_ip(EDGE[0], ()) == EDGE[0]
    assert edge.registered_ip(EDGE[0], ("<sip:edge;lr>",)) == EDGE[0]
    assert edge.registered_ip(EDGE[0], ("<sip:edge;lr;received=nonsense>",)) == EDGE[0]
    assert edge.registered_ip("203.0.113.9", path) == "203.0.113.9"  # not from an edge
    assert EdgeTrust().registered_ip(EDGE[0], path) == EDGE[0]


def test_the_edges_own_probe_is_a_known_sources_request(clock: Clock) -> None:
    # The edge's OPTIONS probe (no header: the edge's own request) is classed as a
    # known source's, past any per-source bucket, so a node refusing strangers with
    # 503 still answers its edge and stays in; a stranger behind the edge is held to
    # its bucket.
    from engine.shell.connlimit import StreamPolicy

    streams = StreamPolicy()
    streams.set_edges([EDGE[0]])
    edge = EdgeTrust([EDGE])
    policy = Overload(OverloadConfig(source_rate=0.5, source_burst=1.0), Metrics(),
                      is_known=lambda source: streams.trusted(source[0]), origin=edge.origin)
    for _ in range(4):
        policy.offer(request("OPTIONS", source=EDGE), EDGE, "udp", 100.0)
    assert len(policy.queues[Klass.REFRESH]) == 4 and not policy.outbox
    stranger: Addr = ("203.0.113.66", 5060)
    for _ in range(3):
        policy.offer(request("OPTIONS", source=EDGE, extra=header(stranger)), EDGE, "udp",
                     100.0)
    assert len(policy.queues[Klass.OTHER]) == 1 and len(policy.outbox) == 2
