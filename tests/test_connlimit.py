"""The SIP TCP/TLS connection policy (engine.connlimit), without sockets."""

from __future__ import annotations

import pytest

from engine.shell.connlimit import (
    REFUSED_CAP,
    REFUSED_PER_SOURCE,
    RateLog,
    StreamLimits,
    StreamPolicy,
)


def policy(cap: int = 1024, per_source: int = 32, first: float = 5.0,
           idle: float = 3600.0) -> StreamPolicy:
    return StreamPolicy(StreamLimits(cap, per_source, first, idle))


def test_a_source_is_refused_past_its_own_limit_and_others_still_get_in() -> None:
    p = policy(per_source=3)
    assert all(p.admit(i, "10.0.0.9", "tcp", 0.0).admitted for i in range(3))
    refused = p.admit(3, "10.0.0.9", "tcp", 0.0)
    assert (refused.admitted, refused.refused, refused.shed) == (False, REFUSED_PER_SOURCE, ())
    assert p.admit(4, "10.0.0.2", "tls", 0.0).admitted
    assert (p.count(), p.count("tcp"), p.count("tls"), p.held_by("10.0.0.9")) == (4, 3, 1, 3)
    # One closes: its source may connect again.
    p.closed(0)
    assert p.admit(5, "10.0.0.9", "tcp", 1.0).admitted


def test_the_limit_counts_tcp_and_tls_together() -> None:
    p = policy(per_source=2)
    assert p.admit(1, "10.0.0.9", "tcp", 0.0).admitted
    assert p.admit(2, "10.0.0.9", "tls", 0.0).admitted
    assert p.admit(3, "10.0.0.9", "tls", 0.0).refused == REFUSED_PER_SOURCE


def test_at_the_cap_a_silent_connection_of_the_busiest_source_makes_room() -> None:
    p = policy(cap=6, per_source=4)
    for i in range(4):  # a flood: four connections that never send a message
        assert p.admit(i, "10.0.0.66", "tcp", float(i)).admitted
    assert p.admit(10, "10.0.0.5", "tcp", 10.0).admitted  # a lone stranger, silent too
    assert p.admit(11, "10.0.0.6", "tcp", 11.0).admitted
    p.delivered(11, 11.5)
    newcomer = p.admit(20, "10.0.0.7", "tls", 20.0)
    assert newcomer.admitted
    [shed] = newcomer.shed
    # The flood's oldest pays, not the lone stranger (older than the newcomer but alone).
    assert (shed.conn, shed.source, shed.transport, shed.valid) == (0, "10.0.0.66", "tcp",
                                                                    False)
    assert not p.known(0) and p.count() == 6 and p.held_by("10.0.0.66") == 3


def test_the_longest_idle_goes_first_among_equals() -> None:
    p = policy(cap=3, per_source=3)
    for i in range(3):
        p.admit(i, "10.0.0.66", "tcp", 0.0)
    p.touched(0, 5.0)  # dripping bytes
    p.touched(2, 6.0)
    [shed] = p.admit(9, "10.0.0.7", "tcp", 7.0).shed
    assert shed.conn == 1


def test_silent_connections_go_before_ones_that_delivered_a_message() -> None:
    p = policy(cap=3, per_source=3)
    p.admit(1, "10.0.0.1", "tcp", 0.0)
    p.delivered(1, 0.5)
    p.admit(2, "10.0.0.1", "tcp", 0.0)
    p.delivered(2, 0.5)
    p.admit(3, "10.0.0.2", "tcp", 9.0)  # newest, from a smaller source, but silent
    [shed] = p.admit(4, "10.0.0.3", "tcp", 10.0).shed
    assert shed.conn == 3
    p.delivered(4, 10.5)
    # Only connections that delivered are left: the busiest source's longest idle goes.
    p.touched(1, 8.0)
    [shed] = p.admit(5, "10.0.0.3", "tcp", 11.0).shed
    assert (shed.conn, shed.valid) == (2, True)


def test_trusted_sources_are_never_crowded_out_and_have_no_per_source_limit() -> None:
    p = policy(cap=4, per_source=2)
    p.set_trusted(["10.0.0.20"], ["192.0.2.0/24"])  # a registered phone; a trunk's network
    assert all(p.admit(i, "192.0.2.7", "tls", 0.0).admitted for i in range(3))  # > per_source
    assert p.admit(3, "10.0.0.20", "tcp", 0.0).admitted
    # Full of trusted connections: a stranger is refused, nothing is closed for it.
    stranger = p.admit(4, "10.0.0.66", "tcp", 1.0)
    assert (stranger.admitted, stranger.refused, stranger.shed) == (False, REFUSED_CAP, ())
    # A trusted newcomer is refused too: the cap is the last resort for everyone.
    assert p.admit(5, "192.0.2.8", "tcp", 1.0).refused == REFUSED_CAP


def test_a_trusted_newcomer_takes_a_strangers_room() -> None:
    p = policy(cap=3, per_source=3)
    p.admit(1, "10.0.0.66", "tcp", 0.0)
    p.admit(2, "10.0.0.66", "tcp", 0.0)
    p.admit(3, "10.0.0.20", "tcp", 0.0)
    p.trust("10.0.0.20")  # it registered over that connection
    admitted = p.admit(4, "10.0.0.20", "tcp", 1.0)
    assert admitted.admitted and admitted.shed[0].source == "10.0.0.66"
    # Registrations gone (refreshed from the registrar): a stranger again.
    p.set_trusted([], [])
    assert not p.trusted("10.0.0.20")
    [shed] = p.admit(5, "10.0.0.7", "tcp", 2.0).shed
    assert shed.source in ("10.0.0.66", "10.0.0.20")


def test_a_newcomer_may_take_the_room_of_its_own_sources_last_connection() -> None:
    p = policy(cap=1, per_source=4)
    p.admit(1, "10.0.0.66", "tcp", 0.0)
    admitted = p.admit(2, "10.0.0.66", "tcp", 1.0)
    assert admitted.admitted and admitted.shed[0].conn == 1
    assert p.held_by("10.0.0.66") == 1
    p.closed(2)
    assert p.count() == 0 and p.held_by("10.0.0.66") == 0


def test_outbound_connections_are_always_admitted_and_never_shed() -> None:
    p = policy(cap=1, per_source=1)
    assert p.admit(1, "198.51.100.1", "tls", 0.0, outbound=True).admitted
    assert p.admit(2, "198.51.100.1", "tls", 0.0, outbound=True).admitted  # past both limits
    assert p.valid(1) and p.deadline(1) == 3600.0  # ours: no first-message deadline
    assert p.admit(3, "10.0.0.66", "tcp", 0.0).refused == REFUSED_CAP


def test_deadlines_first_message_then_idle() -> None:
    p = policy(first=5.0, idle=60.0)
    p.admit(1, "10.0.0.1", "tcp", 100.0)
    assert p.deadline(1) == 105.0
    p.touched(1, 103.0)  # half a header: the first-message deadline does not move
    assert p.deadline(1) == 105.0 and not p.valid(1)
    p.delivered(1, 104.0)
    assert p.valid(1) and p.deadline(1) == 164.0
    p.touched(1, 150.0)  # a CRLF keep-alive keeps an established connection open
    assert p.deadline(1) == 210.0
    p.closed(1)
    assert p.deadline(1) is None and not p.known(1)
    p.closed(1)  # twice: ignored


def test_trusted_networks_match_ipv6_and_ignore_garbage() -> None:
    p = policy()
    p.set_trusted([], ["2001:db8::/32", "10.1.0.0/16"])
    assert p.trusted("2001:db8::5") and p.trusted("10.1.2.3")
    assert not p.trusted("10.2.0.1") and not p.trusted("not-an-ip")


@pytest.mark.parametrize(("field", "value"), [("max_connections", 0), ("per_source", 0),
                                              ("first_message_seconds", 0.0),
                                              ("idle_seconds", -1.0)])
def test_limits_refuse_nonsense(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        StreamLimits(**{field: value})  # type: ignore[arg-type]


def test_the_shedding_choice_stays_within_the_cap_under_churn() -> None:
    """A few thousand admissions from many sources: the cap and the counts hold."""
    p = policy(cap=50, per_source=8)
    open_ids: set[int] = set()
    for i in range(3000):
        ip = f"10.0.{i % 13}.{i % 7}"
        result = p.admit(i, ip, "tcp" if i % 3 else "tls", float(i))
        for shed in result.shed:
            open_ids.discard(shed.conn)
        if result.admitted:
            open_ids.add(i)
        if i % 5 == 0:
            p.delivered(i, float(i))
        if i % 11 == 0 and open_ids:
            gone = min(open_ids)
            p.closed(gone)
            open_ids.discard(gone)
        assert p.count() == len(open_ids) <= 50
        assert p.count("tcp") + p.count("tls") == p.count()
    assert all(p.held_by(f"10.0.{a}.{b}") <= 8 for a in range(13) for b in range(7))


def test_rate_log_logs_once_per_key_and_window_then_sums_up() -> None:
    log = RateLog(window=60.0)
    assert log.hit(("10.0.0.66", "refused:per_source"), 0.0)
    assert not any(log.hit(("10.0.0.66", "refused:per_source"), t) for t in range(1, 40))
    assert log.hit(("10.0.0.5", "refused:per_source"), 2.0)  # another source: its own line
    assert log.hit(("10.0.0.66", "shed:first_message"), 3.0)  # another reason too
    assert log.flush(59.0) == []
    assert log.flush(62.5) == [(("10.0.0.66", "refused:per_source"), 39)]
    assert log.flush(70.0) == []  # the others ended with nothing more to say
    assert log.hit(("10.0.0.66", "refused:per_source"), 80.0)  # a new window


def test_rate_log_is_bounded() -> None:
    log = RateLog(window=60.0, max_keys=3)
    assert [log.hit((f"10.0.0.{i}", "refused:cap"), 0.0) for i in range(3)] == [True] * 3
    # Past max_keys, new sources share one overflow key per kind.
    assert log.hit(("10.0.0.3", "refused:cap"), 1.0)
    assert not log.hit(("10.0.0.4", "refused:cap"), 1.0)
    assert (("*", "refused:cap"), 1) in log.flush(61.0)


def test_an_edge_has_no_per_source_limit_and_stays_trusted_through_reloads() -> None:
    # The edge (serve --edge) carries every phone behind it over its connections:
    # more than per_source of them are admitted, none is closed for a stranger, and
    # the registrar's and directory's trust (set_trusted) does not replace it.
    p = policy(cap=5, per_source=2)
    p.set_edges(["10.0.0.1"])
    p.set_trusted([], [])
    assert all(p.admit(i, "10.0.0.1", "tcp", 0.0).admitted for i in range(4))
    assert p.trusted("10.0.0.1") and p.held_by("10.0.0.1") == 4
    assert p.admit(10, "10.0.0.66", "tcp", 1.0).admitted
    # At the cap a stranger's newcomer can only take its own source's room, never
    # an edge connection's.
    [shed] = p.admit(11, "10.0.0.66", "tcp", 2.0).shed
    assert shed.conn == 10 and p.held_by("10.0.0.1") == 4
    p.closed(0)
    assert p.admit(12, "10.0.0.66", "tcp", 3.0).admitted
    assert p.admit(13, "10.0.0.66", "tcp", 3.0).refused == REFUSED_PER_SOURCE  # its limit
