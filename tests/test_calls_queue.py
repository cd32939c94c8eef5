"""Call queues in the call layer, sans-I/O with a fake clock (the harness of
test_calls): the engine answers the caller and plays the queue's hold music,
rings agents by strategy (hunt, ring_all, round_robin...), skips agents that
may not be rung, bridges the agent that answers, wraps up, times callers out,
forgets callers who hang up, logs agents in and out by *62/*63 and by status;
the agent state table; and a property test that nothing is left behind. The
sockets side is tests/test_phones_queue.py."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.calls.events import BridgeMedia, IvrPlay, OpenMedia, StopMedia
from engine.calls.queue import SCHEDULE_POLL_SECONDS, QueueCaller, Queues, Room, queue_step
from engine.calls.states import AGENT, AgentEvent, AgentState, IllegalTransition
from engine.core import Engine
from engine.sip.auth import build_authorization
from engine.sip.message import Request, Response
from provisioning.directory import parse_directory
from provisioning.model import Binding
from tests.test_calls import (
    DIRECTORY,
    PASSWORDS,
    PHONES,
    TRUNK,
    Clock,
    Net,
    in_dialog,
    phone_call,
    register,
    reply,
    trunk_call,
)

AGENT_SDP = (b"v=0\r\no=phone 7 7 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
             b"m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n")
DID = "+15145550170"


def queue_directory(strategy: str = "hunt", logged_in: bool = True, extra: str = "") -> str:
    return DIRECTORY + f"""
[[numbers]]
number = "{DID}"
route_to = "queue:support"

[[queues]]
name = "support"
extension = "860"
strategy = "{strategy}"
agents = ["102", "103", "104"]
agents_start_logged_in = {"true" if logged_in else "false"}
ring_seconds = 10
wrap_up_seconds = 5
max_wait_seconds = 60
max_callers = 3
on_timeout = "busy"
hold_music = ["moh/queue.wav"]
service_level_seconds = 20
{extra}
"""


def queue_net(strategy: str = "hunt", logged_in: bool = True, extra: str = "") -> Net:
    clock = Clock()
    directory = parse_directory(tomllib.loads(queue_directory(strategy, logged_in, extra)),
                                "<test>")
    engine = Engine(directory, {"127.0.0.1", "pbx.test"}, 5060, wall_clock=lambda: clock.wall,
                    digest_algorithms=("MD5",), advertise="127.0.0.1", anchor_media=True)
    return Net(engine, clock)


def queues(net: Net) -> Queues:
    return net.engine.calls.queues


def arrive(net: Net, n: int = 1) -> tuple[tuple[str, str], Response]:
    """Trunk caller ``n`` dials the queue's number: answered from the engine's endpoint."""
    call_id = f"tcall-{n}"
    trunk_call(net, DID, call_id=call_id)
    key = (call_id, f"from-{call_id}")
    assert any(isinstance(m, OpenMedia) and m.call == key for m in net.media)
    net.take(net.engine.media_ready(key, (30000 + 10 * n, 30002 + 10 * n), net.clock.now))
    oks = [r for r in net.drain(TRUNK)
           if isinstance(r, Response) and r.status == 200 and r.call_id == call_id]
    assert oks, "the queue answers its caller"
    net.send(in_dialog("ACK", oks[0], TRUNK, cseq=1, call_id=call_id, branch=f"ack-{call_id}"),
             TRUNK)
    return key, oks[0]


def invites(net: Net, *agents: str) -> dict[str, Request]:
    """The INVITEs each agent got since last asked."""
    out: dict[str, Request] = {}
    for ext in agents:
        for req in net.requests(PHONES[ext], "INVITE"):
            out[ext] = req
    return out


def ring(net: Net, inv: Request, ext: str) -> None:
    net.send(reply(inv, 180), PHONES[ext])


def answer(net: Net, inv: Request, ext: str) -> None:
    net.send(reply(inv, 200, body=AGENT_SDP, contact=f"<sip:{ext}@127.0.0.1:{PHONES[ext][1]}>"),
             PHONES[ext])


def hang_up_caller(net: Net, ok: Response, call_id: str) -> None:
    net.send(in_dialog("BYE", ok, TRUNK, cseq=5, call_id=call_id, branch=f"bye-{call_id}"),
             TRUNK)


def last_bridge(net: Net) -> BridgeMedia:
    return [b for b in net.media if isinstance(b, BridgeMedia)][-1]


# ---------------------------------------------------------------------- the state table
def test_agent_table_refuses_illegal_moves() -> None:
    assert AGENT.move(AgentState.IDLE, AgentEvent.RING) is AgentState.RINGING
    assert AGENT.move(AgentState.RINGING, AgentEvent.ANSWER) is AgentState.ON_CALL
    assert AGENT.move(AgentState.ON_CALL, AgentEvent.HANG_UP) is AgentState.WRAP_UP
    assert AGENT.move(AgentState.WRAP_UP, AgentEvent.WRAP_DONE) is AgentState.IDLE
    with pytest.raises(IllegalTransition, match="agent: event 'ring' is not allowed in state "
                       "'wrap_up'"):
        AGENT.move(AgentState.WRAP_UP, AgentEvent.RING)
    with pytest.raises(IllegalTransition):
        AGENT.move(AgentState.IDLE, AgentEvent.ANSWER)
    with pytest.raises(IllegalTransition):
        AGENT.move(AgentState.ON_CALL, AgentEvent.RING)


# ---------------------------------------------------------------------- strategies' order
def picks(strategy: str, rounds: int, **prepare: dict[str, float]) -> list[str]:
    """The agents successive tries of one caller ring, everyone free."""
    net = queue_net(strategy)
    qs = queues(net)
    room = qs.rooms["support"]
    for name, values in prepare.items():
        for ext, value in values.items():
            if name == "idle_since":
                qs.agents[ext].idle_since = value
            elif name == "answered":
                room.answered_by[ext] = int(value)
            elif name == "talk":
                room.talk_by[ext] = value
            elif name == "last_rung":
                room.last_rung = ext
    caller = QueueCaller(None, room, 0.0, 60.0)  # type: ignore[arg-type]
    out = []
    for _ in range(rounds):
        [ext] = qs.pick(room, caller, ["102", "103", "104"])
        caller.tried.add(ext)
        room.last_rung = ext
        out.append(ext)
    return out


def test_strategies_order() -> None:
    assert picks("hunt", 4) == ["102", "103", "104", "102"]
    assert picks("round_robin", 4, last_rung={"103": 0}) == ["104", "102", "103", "104"]
    assert picks("longest_idle", 3, idle_since={"102": 50, "103": 10, "104": 30}) == \
        ["103", "104", "102"]
    assert picks("fewest_answered", 3, answered={"102": 4, "103": 2, "104": 2}) == \
        ["103", "104", "102"]
    assert picks("least_talk_time", 3, talk={"102": 10.0, "103": 99.0, "104": 0.0}) == \
        ["104", "102", "103"]
    net = queue_net("ring_all")
    room = queues(net).rooms["support"]
    assert queues(net).pick(room, QueueCaller(None, room, 0, 1),  # type: ignore[arg-type]
                            ["102", "104"]) == ("102", "104")
    assert queues(net).pick(room, QueueCaller(None, room, 0, 1), []) == ()  # type: ignore


# ---------------------------------------------------------------------- calls
def test_hunt_rings_in_order_bridges_the_answer_and_wraps_up() -> None:
    net = queue_net("hunt")
    register(net, "102", "103", "104")
    key, ok = arrive(net)
    assert b"m=audio 30010" in ok.body
    music = last_bridge(net)
    assert music.music_to_caller and music.playlist == ("moh/queue.wav",)
    got = invites(net, "102", "103", "104")
    assert list(got) == ["102"]  # hunt: the first agent, alone
    ring(net, got["102"], "102")
    assert queues(net).agents["102"].state is AgentState.RINGING
    net.tick(10.1)  # ring_seconds: 102 is cancelled, 103 is next
    assert [r.method for r in net.requests(PHONES["102"])] == ["CANCEL"]
    got = invites(net, "102", "103", "104")
    assert list(got) == ["103"]
    assert queues(net).agents["102"].state is AgentState.IDLE
    assert last_bridge(net).music_to_caller  # still waiting with music
    answer(net, got["103"], "103")
    assert [r.method for r in net.requests(PHONES["103"])] == ["ACK"]
    bridged = last_bridge(net)
    assert bridged.callee_media is not None and not bridged.music_to_caller
    assert queues(net).agents["103"].state is AgentState.ON_CALL
    assert net.engine.calls.extensions_on_calls() == {"103": 1}
    net.tick(30)
    hang_up_caller(net, ok, key[0])
    assert [r.method for r in net.requests(PHONES["103"])] == ["BYE"]
    assert queues(net).agents["103"].state is AgentState.WRAP_UP
    fig = net.engine.calls.queue_figures("support", net.clock.now)
    assert fig is not None
    assert (fig.answered, fig.abandoned, fig.answered_within_service_level) == (1, 0, 1)
    assert fig.average_wait_seconds == 10.1 and fig.average_talk_seconds == 30.0
    net.tick(5.1)
    assert queues(net).leftovers() == []
    assert net.engine.calls.calls_in_progress() == []


def test_ring_all_rings_every_free_agent_and_cancels_the_others() -> None:
    net = queue_net("ring_all")
    register(net, "102", "103", "104")
    arrive(net)
    got = invites(net, "102", "103", "104")
    assert sorted(got) == ["102", "103", "104"]
    for ext, inv in got.items():
        ring(net, inv, ext)
    answer(net, got["104"], "104")
    assert [r.method for r in net.requests(PHONES["102"])] == ["CANCEL"]
    assert [r.method for r in net.requests(PHONES["103"])] == ["CANCEL"]
    states = {e: a.state for e, a in queues(net).agents.items()}
    assert states == {"102": AgentState.IDLE, "103": AgentState.IDLE,
                      "104": AgentState.ON_CALL}


def test_agents_who_may_not_be_rung_are_skipped() -> None:
    net = queue_net("ring_all")
    register(net, "102", "103")  # 104 is not registered
    net.engine.set_statuses({"103": "dnd"})
    # 102 is on another call (any call: here one it placed to 101)
    register(net, "101")
    phone_call(net, "102", "101", call_id="other-1")
    assert net.engine.calls.extensions_on_calls() == {"102": 1}
    arrive(net)
    assert invites(net, "102", "103", "104") == {}
    net.engine.set_statuses({})  # 103 available again: the queues are told
    assert net.engine.next_wakeup() == 0.0  # the engine's very next timer, no poll
    net.tick(0)
    assert list(invites(net, "102", "103", "104")) == ["103"]


def sip_register(net: Net, ext: str) -> None:
    """``ext``'s phone REGISTERs over SIP: 401, then again with its credentials."""
    addr = PHONES[ext]

    def message(cseq: int, auth: str = "") -> bytes:
        lines = ["REGISTER sip:pbx.test SIP/2.0",
                 f"Via: SIP/2.0/UDP {addr[0]}:{addr[1]};branch=z9hG4bKreg{ext}-{cseq};rport",
                 "Max-Forwards: 70", f"From: <sip:{ext}@pbx.test>;tag=reg-{ext}",
                 f"To: <sip:{ext}@pbx.test>", f"Call-ID: reg-{ext}", f"CSeq: {cseq} REGISTER",
                 f"Contact: <sip:{ext}@{addr[0]}:{addr[1]}>", "Expires: 3600"]
        if auth:
            lines.append(f"Authorization: {auth}")
        return ("\r\n".join([*lines, "Content-Length: 0"]) + "\r\n\r\n").encode()

    net.send(message(1), addr)
    [challenge] = [m for m in net.drain(addr) if isinstance(m, Response) and m.status == 401]
    auth = build_authorization(challenge.get("www-authenticate") or "", "REGISTER",
                               "sip:pbx.test", ext, PASSWORDS[ext], "cn")
    net.send(message(2, auth), addr)


def test_an_agent_registering_while_a_caller_waits_is_rung_at_its_register() -> None:
    net = queue_net("hunt")
    arrive(net)  # no agent registered: the caller waits with music
    assert invites(net, "102", "103", "104") == {}
    assert net.engine.next_wakeup() is None or net.engine.next_wakeup() > net.clock.now + 30
    at = net.clock.now
    sip_register(net, "103")  # the clock does not move: the REGISTER's own outcome rings
    assert net.clock.now == at
    got = [m for m in net.drain(PHONES["103"])]
    assert [m.status for m in got if isinstance(m, Response)] == [200]
    assert [m.method for m in got if isinstance(m, Request)] == ["INVITE"]


def test_an_agent_registered_through_another_node_is_rung_when_its_binding_is_read() -> None:
    net = queue_net("hunt")
    arrive(net)
    addr = PHONES["104"]
    binding = Binding(aor="104", contact=f"sip:104@{addr[0]}:{addr[1]}",
                      expires_at=net.clock.wall + 3600, call_id="reg104", cseq=1,
                      source=f"udp:{addr[0]}:{addr[1]}")
    outcome = net.engine.merge_bindings([binding], [], net.clock.wall, net.clock.now)
    assert not outcome.saved  # another node's: not written back
    net.take(outcome)
    assert list(invites(net, "102", "103", "104")) == ["104"]


def test_a_scheduled_status_is_looked_at_again_while_a_caller_waits() -> None:
    """103's status follows its office hours (from 10:14 Toronto; the clock starts at
    10:13:20): nothing tells the queue when they begin, so it looks every 15 s."""
    net = queue_net("hunt")
    text = queue_directory("hunt").replace('external_calls = false\n', (
        'external_calls = false\n[users.schedule]\nauto_status = true\n'
        'office_hours = { mon = ["10:14-18:00"] }\n'), 1)
    net.engine.set_directory(parse_directory(tomllib.loads(text), "<test>"))
    register(net, "103")
    net.tick(0)
    arrive(net)
    assert invites(net, "103") == {}  # dnd before its hours
    assert net.engine.next_wakeup() == net.clock.now + SCHEDULE_POLL_SECONDS
    net.tick(30)  # 10:13:50
    assert invites(net, "103") == {}
    net.tick(15)  # 10:14:05: the next look finds it available
    assert list(invites(net, "103")) == ["103"]


def test_an_agent_whose_other_call_ends_is_rung_as_it_ends() -> None:
    net = queue_net("hunt")
    register(net, "101", "102")
    phone_call(net, "102", "101", call_id="other-1")  # 102 calls 101: on a call
    net.take(net.engine.media_ready(("other-1", "from-other-1"), (31000, 31002),
                                    net.clock.now))
    [other] = net.requests(PHONES["101"], "INVITE")
    arrive(net)
    assert invites(net, "102") == {}
    net.send(reply(other, 486), PHONES["101"])  # 101 is busy: 102's call ends
    assert list(invites(net, "102")) == ["102"]


def test_an_agent_whose_phone_rings_for_another_call_is_skipped() -> None:
    net = queue_net("hunt")
    register(net, "101", "102", "103")
    phone_call(net, "101", "102", call_id="direct-1")  # 102's phone rings for 101
    net.take(net.engine.media_ready(("direct-1", "from-direct-1"), (31000, 31002),
                                    net.clock.now))
    [direct] = net.requests(PHONES["102"], "INVITE")
    net.send(reply(direct, 180), PHONES["102"])
    arrive(net)
    assert list(invites(net, "102", "103")) == ["103"]  # hunt skips 102, ringing


def test_logged_out_agents_and_wrap_up_are_skipped() -> None:
    net = queue_net("hunt", logged_in=False)
    register(net, "102", "103", "104")
    net.take(net.engine.queue_login("104", ("support",), True, net.clock.now))
    key, ok = arrive(net)
    got = invites(net, "102", "103", "104")
    assert list(got) == ["104"]
    answer(net, got["104"], "104")
    hang_up_caller(net, ok, key[0])
    assert [r.method for r in net.requests(PHONES["104"])] == ["ACK", "BYE"]
    arrive(net, 2)  # 104 wraps up for 5 s: nobody is rung
    assert invites(net, "102", "103", "104") == {}
    net.tick(5.1)
    assert list(invites(net, "102", "103", "104")) == ["104"]


def test_max_wait_goes_to_on_timeout_and_a_full_queue_too() -> None:
    net = queue_net("hunt", logged_in=False)
    register(net, "102")
    key1, _ = arrive(net, 1)
    arrive(net, 2)
    arrive(net, 3)
    trunk_call(net, DID, call_id="tcall-4")  # max_callers = 3: on_timeout (busy): BYE
    k4 = ("tcall-4", "from-tcall-4")
    net.take(net.engine.media_ready(k4, (30100, 30102), net.clock.now))
    got = net.drain(TRUNK)
    assert [r.method for r in got if isinstance(r, Request)] == ["BYE"]
    net.tick(60.1)
    byes = [r for r in net.drain(TRUNK) if isinstance(r, Request) and r.method == "BYE"]
    # (tcall-4's BYE, never answered here, is retransmitted meanwhile)
    assert sorted({b.call_id for b in byes}) == ["tcall-1", "tcall-2", "tcall-3", "tcall-4"]
    assert net.engine.calls.calls_in_progress() == []
    fig = net.engine.calls.queue_figures("support", net.clock.now)
    assert fig is not None and fig.timed_out == 4 and fig.callers_waiting == 0
    assert queues(net).leftovers() == []
    assert net.engine.calls.calls_in_progress() == []
    del key1


def test_when_no_agents_sends_the_caller_on() -> None:
    net = queue_net("hunt", logged_in=False, extra='when_no_agents = "extension:101"')
    register(net, "101", "102")
    arrive(net)
    assert len(net.requests(PHONES["101"], "INVITE")) == 1
    assert queues(net).rooms["support"].callers == []


def test_a_caller_hanging_up_while_an_agent_rings_leaves_nothing() -> None:
    net = queue_net("hunt")
    register(net, "102", "103", "104")
    key, ok = arrive(net)
    got = invites(net, "102")
    ring(net, got["102"], "102")
    hang_up_caller(net, ok, key[0])
    assert [r.method for r in net.requests(PHONES["102"])] == ["CANCEL"]
    assert any(isinstance(m, StopMedia) for m in net.media)
    fig = net.engine.calls.queue_figures("support", net.clock.now)
    assert fig is not None and fig.abandoned == 1
    assert queues(net).leftovers() == []
    assert net.engine.calls.calls_in_progress() == []


def test_star_63_logs_the_agent_out_with_a_spoken_confirmation() -> None:
    net = queue_net("hunt")
    register(net, "102", "103", "104")
    src = phone_call(net, "103", "*63")
    [opened] = [m for m in net.media if isinstance(m, OpenMedia)]
    net.take(net.engine.media_ready(opened.call, (30000, 30002), net.clock.now))
    assert [r.status for r in net.responses(src) if r.status >= 200] == [200]
    [play] = [m for m in net.media if isinstance(m, IvrPlay)]
    # a committed prompt, nothing rendered at call time
    assert spoken(play) == ["en/queue_logged_out"] and play.text == ""
    assert all(Path(f).is_file() for f in play.prompts)
    assert "103" not in queues(net).rooms["support"].logged_in
    net.take(net.engine.ivr_prompt_done(opened.call, play.generation, net.clock.now))
    assert [r.method for r in net.requests(src)] == ["BYE"]
    phone_call(net, "103", "*62860", call_id="call-2")
    assert "103" in queues(net).rooms["support"].logged_in


def test_log_in_codes_confirm_in_the_queue_language() -> None:
    # support (French) is 103's first queue; billing names no language
    net = queue_net("hunt", extra="""language = "fr"

[[queues]]
name = "billing"
extension = "861"
agents = ["103"]
""")
    register(net, "103")
    confirmations = []
    for n, code in enumerate(("*62", "*63861", "*62860"), 1):
        before = len(net.media)
        phone_call(net, "103", code, call_id=f"code-{n}")
        [opened] = [m for m in net.media[before:] if isinstance(m, OpenMedia)]
        net.take(net.engine.media_ready(opened.call, (30000 + 10 * n, 30002 + 10 * n),
                                        net.clock.now))
        [play] = [m for m in net.media[before:] if isinstance(m, IvrPlay)]
        confirmations.append(spoken(play))
        net.take(net.engine.ivr_prompt_done(opened.call, play.generation, net.clock.now))
    # *62: both queues, the first's language; *63861: billing's (none: English);
    # *62860: support's
    assert confirmations == [["fr/queue_logged_in"], ["en/queue_logged_out"],
                             ["fr/queue_logged_in"]]
    assert "103" in queues(net).rooms["support"].logged_in
    assert "103" not in queues(net).rooms["billing"].logged_in
    assert net.engine.calls.calls_in_progress() == []


def test_a_status_that_logs_out_of_queues() -> None:
    extra_user = """
[users.forwarding.lunch]
log_out_of_queues = true
"""
    text = queue_directory("hunt").replace(
        'external_calls = false\n', 'external_calls = false\n' + extra_user, 1)
    clock = Clock()
    engine = Engine(parse_directory(tomllib.loads(text), "<test>"), {"127.0.0.1"}, 5060,
                    wall_clock=lambda: clock.wall, anchor_media=True)
    room = engine.calls.queues.rooms["support"]
    engine.set_statuses({"103": "dnd"})
    assert "103" in room.logged_in  # dnd skips the agent but does not log it out
    engine.set_statuses({"103": "lunch"})
    assert "103" not in room.logged_in


def test_queue_step_from_the_table() -> None:
    d = parse_directory(tomllib.loads(queue_directory()), "<test>")
    step = queue_step(d.queues[0], "x")
    assert (step.name, step.strategy, step.ring_seconds) == ("support", "hunt", 10)
    assert Room(step, set()).callers == []


# ---------------------------------------------------------------------- nothing leaks
ACTIONS = st.lists(st.tuples(
    st.sampled_from(["arrive", "hangup", "agent_answer", "agent_refuse", "tick", "logout",
                     "login", "agent_bye"]),
    st.integers(min_value=0, max_value=3),
    st.floats(min_value=0.1, max_value=15.0)), max_size=25)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(strategy=st.sampled_from(["ring_all", "hunt", "round_robin", "longest_idle",
                                 "fewest_answered", "least_talk_time"]), actions=ACTIONS,
       announce=st.booleans())
def test_random_arrivals_answers_hangups_and_logouts_leave_nothing(
        strategy: str, actions: list[tuple[str, int, float]], announce: bool) -> None:
    net = queue_net(strategy, extra="announce_position_every = 5" if announce else "")
    register(net, "102", "103", "104")
    agents = ("102", "103", "104")
    callers: dict[int, Response] = {}
    ringing: dict[str, Request] = {}
    agent_ok: dict[str, Response] = {}
    n = 0

    def collect() -> None:
        for ext in agents:
            for req in net.requests(PHONES[ext]):
                if req.method == "INVITE":
                    ringing[ext] = req
                    net.send(reply(req, 180), PHONES[ext])
                elif req.method in ("CANCEL", "BYE"):
                    ringing.pop(ext, None)
                    agent_ok.pop(ext, None)
                    net.send(reply(req, 200), PHONES[ext])
        net.drain(TRUNK)

    for what, i, seconds in actions:
        ext = agents[i % 3]
        if what == "arrive":
            n += 1
            _, ok = arrive(net, n)
            callers[n] = ok
        elif what == "hangup" and callers:
            which = sorted(callers)[i % len(callers)]
            hang_up_caller(net, callers.pop(which), f"tcall-{which}")
        elif what == "agent_answer" and ext in ringing:
            inv = ringing.pop(ext)
            answer(net, inv, ext)
            resp = reply(inv, 200, body=AGENT_SDP)
            agent_ok[ext] = resp
        elif what == "agent_refuse" and ext in ringing:
            net.send(reply(ringing.pop(ext), 486), PHONES[ext])
        elif what == "agent_bye" and ext in agent_ok:
            resp = agent_ok.pop(ext)
            net.send(Request.build("BYE", "sip:pbx@127.0.0.1:5060", [
                ("Via", f"SIP/2.0/UDP 127.0.0.1:{PHONES[ext][1]};branch=z9hG4bKb{n}{ext}"),
                ("From", resp.get("to") or ""), ("To", resp.get("from") or ""),
                ("Call-ID", resp.call_id), ("CSeq", "9 BYE")]).to_bytes(), PHONES[ext])
        elif what == "tick":
            net.tick(seconds)
        elif what == "logout":
            net.take(net.engine.queue_login(ext, ("support",), False, net.clock.now))
        elif what == "login":
            net.take(net.engine.queue_login(ext, ("support",), True, net.clock.now))
        collect()
    for which in sorted(callers):  # every caller hangs up
        hang_up_caller(net, callers.pop(which), f"tcall-{which}")
        collect()
    net.tick(70)  # wrap-ups and transactions end
    collect()
    assert queues(net).leftovers() == []
    assert net.engine.calls.calls_in_progress() == []
    assert net.engine.calls.extensions_on_calls() == {}
    fig = net.engine.calls.queue_figures("support", net.clock.now)
    assert fig is not None
    # every caller is counted once: answered, abandoned or sent on after its wait
    assert fig.answered + fig.abandoned + fig.timed_out == n
    assert fig.callers_waiting == 0 and fig.agents_on_call == 0
    assert all(n == 0 for n in net.engine.calls.channels_in_use().values())  # trunk channels
    assert net.engine.calls.next_wakeup() is None  # no call or queue timer


def test_an_agent_transferring_the_caller_out_wraps_up_and_leaves_nothing() -> None:
    from tests.test_calls_transfer import refer

    net = queue_net("hunt")
    register(net, "101", "102")
    key, ok = arrive(net)
    [inv] = net.requests(PHONES["102"], "INVITE")
    answer(net, inv, "102")
    net.requests(PHONES["102"])
    net.tick(4)
    net.send(refer(inv, "101", phone=PHONES["102"]), PHONES["102"])  # blind, to 101
    [target] = net.requests(PHONES["101"], "INVITE")
    net.send(reply(target, 200, body=AGENT_SDP, contact="<sip:101@127.0.0.1:6101>"),
             PHONES["101"])
    assert "BYE" in [r.method for r in net.requests(PHONES["102"])]  # the agent is let go
    assert queues(net).agents["102"].state is AgentState.WRAP_UP
    assert net.engine.calls.extensions_on_calls() == {"101": 1}
    fig = net.engine.calls.queue_figures("support", net.clock.now)
    assert fig is not None and fig.average_talk_seconds == 4.0
    hang_up_caller(net, ok, key[0])
    net.tick(6)
    assert queues(net).leftovers() == []
    assert net.engine.calls.calls_in_progress() == []


def test_a_queue_removed_while_callers_wait_still_times_them_out() -> None:
    net = queue_net("hunt", logged_in=False)
    arrive(net)
    without = parse_directory(tomllib.loads(DIRECTORY), "<test>")
    net.engine.calls.set_directory(without)
    assert queues(net).rooms["support"].logged_in == set()
    net.tick(60.1)
    assert "BYE" in [r.method for r in net.drain(TRUNK) if isinstance(r, Request)]
    assert queues(net).leftovers() == []
    net.engine.calls.set_directory(without)
    assert queues(net).rooms == {}


def test_waiting_callers_hear_their_position_every_n_seconds() -> None:
    net = queue_net("hunt", logged_in=False, extra="announce_position_every = 20")
    register(net, "102")
    k1, _ = arrive(net, 1)
    k2, _ = arrive(net, 2)
    net.tick(20.1)
    said = {p.call: p for p in net.media if isinstance(p, IvrPlay)}
    assert spoken(said[k1]) == ["en/caller_number", "en/1", "en/pause"]
    assert spoken(said[k2]) == ["en/caller_number", "en/2", "en/pause"]
    assert all(Path(f).is_file() for f in said[k1].prompts)  # committed built-in prompts
    quiet = [b for b in net.media if isinstance(b, BridgeMedia) and b.call == k1][-1]
    assert not quiet.music_to_caller  # the music pauses while the position is said
    net.take(net.engine.queue_login("102", ("support",), True, net.clock.now))
    assert net.requests(PHONES["102"]) == []  # no try while its position is said
    net.take(net.engine.ivr_prompt_done(k1, said[k1].generation, net.clock.now))
    again = [b for b in net.media if isinstance(b, BridgeMedia) and b.call == k1][-1]
    assert again.music_to_caller and again.playlist == ("moh/queue.wav",)
    [inv] = net.requests(PHONES["102"], "INVITE")  # caller 1 is tried now
    answer(net, inv, "102")
    net.media.clear()
    net.tick(16)  # caller 2's announcement never reported done: its guard timer ends it
    assert [b for b in net.media if isinstance(b, BridgeMedia)][-1].music_to_caller
    net.tick(4.1)  # caller 2 again, now with the expected wait (1 answered after 20 s)
    [second] = [p for p in net.media if isinstance(p, IvrPlay)]
    # "You are caller number 1. Your expected wait is about 1 minute."
    assert spoken(second) == ["en/caller_number", "en/1", "en/pause", "en/expected_wait",
                              "en/1", "en/minute"]


def spoken(play: IvrPlay) -> list[str]:
    """The built-in prompts of a play, as language/name."""
    return [f"{Path(f).parent.name}/{Path(f).stem}" for f in play.prompts]


def test_positions_are_said_in_the_queue_language() -> None:
    net = queue_net("hunt", logged_in=False,
                    extra='announce_position_every = 20\nlanguage = "fr"')
    register(net, "102")
    key, _ = arrive(net, 1)
    net.tick(20.1)
    [said] = [p for p in net.media if isinstance(p, IvrPlay) and p.call == key]
    # "Vous êtes l'appelant numéro 1."
    assert spoken(said) == ["fr/caller_number", "fr/1", "fr/pause"]
    net.take(net.engine.ivr_prompt_done(key, said.generation, net.clock.now))
    room = queues(net).rooms["support"]
    room.answered, room.wait_total = 1, 1300.0  # 21 min 40 s, less the 40 s waited
    net.media.clear()
    net.tick(20)
    [again] = [p for p in net.media if isinstance(p, IvrPlay) and p.call == key]
    # "... Votre attente est estimée à environ vingt et une minutes." (feminine)
    assert spoken(again) == ["fr/caller_number", "fr/1", "fr/pause", "fr/expected_wait",
                             "fr/21f", "fr/minutes"]


def test_a_caller_from_a_french_menu_hears_french() -> None:
    menu = """
[[ivrs]]
name = "accueil"
extension = "850"
prompt = "menu.wav"
language = "fr"
keys = { "1" = "queue:support" }
"""
    net = queue_net("hunt", logged_in=False, extra="announce_position_every = 20" + menu)
    register(net, "101", "102")
    phone_call(net, "101", "850")  # 101 calls the French menu and presses 1
    key = ("call-1", "from-call-1")
    net.take(net.engine.media_ready(key, (30000, 30002), net.clock.now))
    [ok] = [r for r in net.responses(PHONES["101"]) if r.status == 200]
    net.send(in_dialog("ACK", ok, PHONES["101"], cseq=2, call_id="call-1", branch="ack1"),
             PHONES["101"])
    net.take(net.engine.ivr_digit(key, "1", net.clock.now))
    [caller] = queues(net).rooms["support"].callers
    assert caller.call.key == key
    net.media.clear()
    net.tick(20.1)
    [said] = [p for p in net.media if isinstance(p, IvrPlay) and p.call == key]
    assert spoken(said) == ["fr/caller_number", "fr/1", "fr/pause"]


# ---------------------------------------------------------------------- priority callers
def test_priority_callers_go_ahead_of_the_others() -> None:
    net = queue_net("hunt", logged_in=False,
                    extra='priority_callers = ["+15145550123", "+1438*"]')
    register(net, "102")
    for n, number in enumerate(("+15145550199", "+14385550001", "+15145550123"), start=1):
        arrive_from(net, n, number)  # max_callers = 3
    room = queues(net).rooms["support"]
    order = [c.call.facts.caller for c in room.callers]
    # the two priority callers first, in their arrival order, then the others
    assert order == ["+14385550001", "+15145550123", "+15145550199"]
    assert [c.priority for c in room.callers] == [True, True, False]
    # the first try goes to the first priority caller
    net.take(net.engine.queue_login("102", ("support",), True, net.clock.now))
    [inv] = net.requests(PHONES["102"], "INVITE")
    assert room.callers[0].ringing == ("102",)
    assert room.callers[0].call.facts.caller == "+14385550001"
    answer(net, inv, "102")
    assert [c.call.facts.caller for c in room.callers] == ["+15145550123", "+15145550199"]


def arrive_from(net: Net, n: int, number: str) -> tuple[str, str]:
    """Like :func:`arrive` with the caller's number ``number``."""
    call_id = f"tcall-{n}"
    trunk_call(net, DID, call_id=call_id, caller=number)
    key = (call_id, f"from-{call_id}")
    net.take(net.engine.media_ready(key, (30000 + 10 * n, 30002 + 10 * n), net.clock.now))
    oks = [r for r in net.drain(TRUNK)
           if isinstance(r, Response) and r.status == 200 and r.call_id == call_id]
    assert oks, "the queue answers its caller"
    net.send(in_dialog("ACK", oks[0], TRUNK, cseq=1, call_id=call_id, branch=f"ack-{call_id}"),
             TRUNK)
    return key
