"""Transfers under any order of events: hypothesis drives an answered call through
a blind or attended transfer, by the callee or by the calling party, while the
transferee, the transferor and the target answer, refuse, hang up or stay
silent in any order. Whatever happens, nothing raises inside the B2BUA, and
once everybody has hung up and the timers have run, no call, busy mark or trunk
channel is left."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.sip.message import Request, Response
from engine.sip.transaction import Addr
from tests.test_calls import PHONES, TRUNK, Net, counted, in_dialog, register, reply
from tests.test_calls_anchor import anchored_net, answered_call
from tests.test_calls_transfer import (
    RECEPTION,
    TARGET_SDP,
    answered_trunk_call,
    caller_bye,
    caller_refer,
    consultation,
    from_phone,
    refer,
)

ACTIONS = ["target_180", "target_200", "target_486", "target_603", "target_bye",
           "transferor_bye", "consultation_bye", "caller_bye", "tick", "notify_ok"]


@dataclass
class World:
    net: Net
    desk: Request  # the engine's INVITE to the callee of the transferee's call
    target: Addr = PHONES["102"]
    consult: Request | None = None  # the engine's INVITE to 102 for 101's own call
    ok: Response | None = None  # by the caller: the engine's 200 to 101
    cseq: dict[str, int] = field(default_factory=dict)
    hung_up: set[str] = field(default_factory=set)
    target_invites: list[Request] = field(default_factory=list)

    def next_cseq(self, dialog: str) -> int:
        self.cseq[dialog] = self.cseq.get(dialog, 10) + 1
        return self.cseq[dialog]


def take_target(world: World) -> None:
    """Keep the INVITEs the engine sent the target (new ones or re-INVITEs)."""
    for m in world.net.drain(world.target):
        if isinstance(m, Request) and m.method == "INVITE" and \
                all(m.get("via") != seen.get("via") for seen in world.target_invites):
            world.target_invites.append(m)


def act(world: World, action: str) -> None:
    net = world.net
    take_target(world)
    latest = world.target_invites[-1] if world.target_invites else None
    if action.startswith("target_") and action != "target_bye" and latest is not None:
        status = int(action.split("_")[1])
        body = TARGET_SDP if status == 200 else b""
        net.send(reply(latest, status, body=body, contact="<sip:t@127.0.0.1:6199>"),
                 world.target)
    elif action == "target_bye" and latest is not None and "target" not in world.hung_up:
        world.hung_up.add("target")
        net.send(from_phone(latest, "BYE", world.next_cseq("target"), [], world.target,
                            "tbye"), world.target)
    elif action == "transferor_bye" and "x" not in world.hung_up:
        world.hung_up.add("x")
        if world.ok is not None:  # the calling party transfers: its own dialog
            net.send(in_dialog("BYE", world.ok, RECEPTION, cseq=world.next_cseq("x"),
                               call_id="call-1", branch="xbye"), RECEPTION)
        else:
            net.send(from_phone(world.desk, "BYE", world.next_cseq("x"), [], RECEPTION,
                                "xbye"), RECEPTION)
    elif action == "consultation_bye" and world.consult is not None \
            and "y" not in world.hung_up:
        world.hung_up.add("y")
        net.send(_caller_side_bye(world), RECEPTION)
    elif action == "caller_bye" and "caller" not in world.hung_up and world.ok is not None:
        world.hung_up.add("caller")  # the transferee is 102, the callee
        net.send(from_phone(world.desk, "BYE", world.next_cseq("callee"), [], PHONES["102"],
                            "cbye"), PHONES["102"])
    elif action == "caller_bye" and "caller" not in world.hung_up:
        world.hung_up.add("caller")
        if any(c.call_id == "tcall-1" for c in net.engine.calls.calls_in_progress()):
            net.send(caller_bye(net), TRUNK)
    elif action == "tick":
        net.tick(10.5)
    elif action == "notify_ok":
        for m in net.drain(RECEPTION):
            if isinstance(m, Request) and m.method in ("NOTIFY", "BYE"):
                net.send(reply(m, 200), RECEPTION)
    net.drain(RECEPTION)
    net.drain(TRUNK)


def _caller_side_bye(world: World) -> bytes:
    """101's BYE in its own consultation call (it is the caller there)."""
    net = world.net
    going = any(c.call_id == "call-y" for c in net.engine.calls.calls_in_progress())
    tag = net.tags["call-y"] if going else "gone"
    src: Addr = RECEPTION
    lines = [
        "BYE sip:switchboard@127.0.0.1:5060 SIP/2.0",
        f"Via: SIP/2.0/UDP {src[0]}:{src[1]};branch=z9hG4bKybye;rport",
        "Max-Forwards: 70",
        'From: "Caller 101" <sip:101@pbx.test>;tag=from-call-y',
        f"To: <sip:102@pbx.test>;tag={tag}",
        "Call-ID: call-y",
        f"CSeq: {world.next_cseq('y')} BYE",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def everybody_hangs_up(world: World) -> None:
    for action in ("notify_ok", "caller_bye", "transferor_bye", "consultation_bye",
                   "target_bye", "notify_ok", "target_bye"):
        act(world, action)
    for _ in range(8):  # 84 s: every timer (no-answer, Timer B/F/H) has run
        world.net.tick(10.5)
        for addr in (RECEPTION, PHONES["102"], PHONES["103"], TRUNK):
            for m in world.net.drain(addr):
                if isinstance(m, Request) and m.method in ("BYE", "NOTIFY", "CANCEL"):
                    world.net.send(reply(m, 200), addr)


@given(mode=st.sampled_from(["blind", "attended", "by_caller", "attended_by_caller"]),
       actions=st.lists(st.sampled_from(ACTIONS), max_size=8))
@settings(max_examples=300, deadline=None)
def test_transfers_leave_nothing_behind_whatever_happens(mode: str,
                                                        actions: list[str]) -> None:
    net = anchored_net()
    world = start_transfer(net, mode)
    statuses = [r.status for r in net.responses(RECEPTION)]
    assert statuses == [202], statuses
    for action in actions:
        act(world, action)
    everybody_hangs_up(world)
    check_nothing_left(net)


def start_transfer(net: Net, mode: str) -> World:
    """An answered call and the transferor's REFER: blind or attended by 101 (the
    callee of a carrier's call), or blind by 101 as the caller of 102."""
    if mode in ("by_caller", "attended_by_caller"):
        register(net, "103")
        ok, to_102 = answered_call(net)  # 101 -> 102
        world = World(net, to_102, target=PHONES["103"], ok=ok)
        if mode == "by_caller":
            net.send(caller_refer(ok, "103", cseq=world.next_cseq("x")), RECEPTION)
            return world
        inv, ok_y = consultation(net, "103")
        world.consult = inv
        world.target_invites.append(inv)
        replaces = f"call-y%3Bto-tag%3D{ok_y.to.tag}%3Bfrom-tag%3Dfrom-call-y"
        data = in_dialog("REFER", ok, RECEPTION, cseq=world.next_cseq("x"), call_id="call-1",
                         branch="catt")
        net.send(data.replace(b"Content-Length", f"Refer-To: <sip:103@pbx.test?Replaces="
                              f"{replaces}>\r\nContent-Length".encode()), RECEPTION)
        return world
    desk = answered_trunk_call(net, "102")
    world = World(net, desk)
    if mode == "attended":
        inv, ok = consultation(net)
        world.consult = inv
        world.target_invites.append(inv)
        replaces = f"call-y%3Bto-tag%3D{ok.to.tag}%3Bfrom-tag%3Dfrom-call-y"
        net.send(from_phone(desk, "REFER", world.next_cseq("x"), [
            ("Refer-To", f"<sip:102@pbx.test?Replaces={replaces}>")], RECEPTION, "att"),
            RECEPTION)
    else:
        net.send(refer(desk, "102", cseq=world.next_cseq("x")), RECEPTION)
    return world


def check_nothing_left(net: Net) -> None:
    calls = net.engine.calls
    assert counted(net.engine.metrics, "switchboard_internal_errors") == 0
    assert calls.calls_in_progress() == [], calls.calls_in_progress()
    assert calls.extensions_on_calls() == {}
    channels = calls.channels_in_use()
    assert all(n == 0 for n in channels.values()), channels
