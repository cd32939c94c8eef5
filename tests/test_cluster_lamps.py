"""Busy lamps and presence across nodes, engine side: two engines (sans-I/O, fake
clocks, the harness of test_calls) share their lamps through a real store (SQLite
and PostgreSQL, the same tests) as the shell does (engine.shell.storesync): each
engine's ``take_lamps`` written with ``write_lamps``, each reads ``lamps_state``
into ``cluster_lamps``.
"""

from __future__ import annotations

from engine.services.dialoginfo import ENDED_LINGER
from engine.services.lamps import ClusterLamps
from provisioning.model import DialogView
from provisioning.store import Store
from tests import test_provisioning_store as stores
from tests.test_blf import answer_notifies, authorized, dialogs, presence_of, watching
from tests.test_calls import PHONES, SDP, Net, in_dialog, make_net, phone_call, register, reply
from tests.test_calls_anchor import anchored_net
from tests.test_calls_pickup import parked_call, picker_invite, ringing_call

backend = stores.backend
store = stores.store

async def share(store: Store, nodes: dict[str, Net]) -> int:
    """One round of what storesync does on every node: write behind, then read. How
    many lamp changes were written."""
    written = 0
    for name, net in nodes.items():
        watches, published = net.engine.take_lamps()
        written += len(watches) + len(published)
        await store.write_lamps(name, watched=[r for r, w in watches.items() if w],
                                unwatched=[r for r, w in watches.items() if not w],
                                dialogs=published)
    for name, net in nodes.items():
        snapshot = await store.lamps_state(-1, exclude_node=name)
        assert snapshot is not None
        net.take(net.engine.cluster_lamps(snapshot.watched, snapshot.dialogs,
                                          net.clock.now))
    return written


async def test_an_orbit_watched_at_one_node_lights_for_a_call_parked_at_another(
        store: Store) -> None:
    a, b = anchored_net(), anchored_net()
    nodes = {"a": a, "b": b}
    watching(a, "104", "701")
    assert await share(store, nodes) == 1  # a's watch of 701
    parked_call(b)  # the carrier's call, parked on 701 at node b
    b.tick(1)
    await share(store, nodes)
    await share(store, nodes)
    [lit] = answer_notifies(a, "104")[-1:]
    [(state, dialog)] = dialogs(lit)  # validated against the RFC 4235 schema
    assert state == "confirmed" and dialog.get("call-id") == "tcall-1"
    # Retrieved at a, which does not hold it: 480 naming the holder, not 404.
    register(a, "103")
    picker_invite(a, "701", call_id="pick-a")
    [refused] = [r for r in a.responses(PHONES["103"]) if r.status >= 300]
    assert refused.status == 480 and refused.reason == "Held By Another Node"
    assert "held by node b" in (refused.get("warning") or "")
    # and a call parked at a now takes the next orbit, 701 being b's
    assert a.engine.calls.free_orbit(("701", "702")) == "702"
    picker_invite(b, "701")  # retrieved at b
    b.tick(1)
    await share(store, nodes)
    [out] = answer_notifies(a, "104")[-1:]
    assert [s for s, _ in dialogs(out)] == ["terminated"]


async def test_a_directed_pickup_at_a_node_not_ringing_names_the_holder(
        store: Store) -> None:
    a, b = anchored_net(), anchored_net()
    nodes = {"a": a, "b": b}
    watching(a, "104", "102")  # a BLF key on 102 at a: b publishes 102's dialogs
    await share(store, nodes)
    ringing_call(b)  # 101 calls 102 at b; 102 rings
    await share(store, nodes)
    register(a, "103")
    picker_invite(a, "**102", call_id="pick-a")
    [refused] = [r for r in a.responses(PHONES["103"]) if r.status >= 300]
    assert refused.status == 480 and "ringing 102 is held by node b" in (
        refused.get("warning") or "")
    assert a.engine.metrics.pickups.labels("elsewhere")._value.get() == 1
    # b, which holds it, picks it up as before
    picker_invite(b, "**102", call_id="pick-b")
    assert b.engine.metrics.pickups.labels("directed")._value.get() == 1


async def test_presence_at_one_node_says_on_a_call_carried_by_another(store: Store) -> None:
    a, b = make_net(), make_net()
    nodes = {"a": a, "b": b}
    register(b, "101", "102")
    msgs = authorized(a, "103", "102", event="presence")
    a.send(reply(next(m for m in msgs if getattr(m, "method", "") == "NOTIFY"), 200,
                 tag="w"), PHONES["103"])
    await share(store, nodes)
    src = phone_call(b, "101", "102")
    [inv] = b.requests(PHONES["102"], "INVITE")
    b.send(reply(inv, 200, body=SDP, contact="<sip:102@127.0.0.1:6102>"), PHONES["102"])
    await share(store, nodes)
    [on_call] = answer_notifies(a, "103")[-1:]
    assert presence_of(on_call) == ("open", "on-the-phone", "On a call (Available)")
    [ok] = [r for r in b.responses(src) if r.status == 200]
    b.send(in_dialog("ACK", ok, src, cseq=2, call_id="call-1", branch="a1"), src)
    b.send(in_dialog("BYE", ok, src, cseq=3, call_id="call-1", branch="b1"), src)
    await share(store, nodes)
    [free] = answer_notifies(a, "103")[-1:]
    assert presence_of(free) == ("open", "unknown", "Available")


async def test_alone_a_node_writes_no_dialogs_and_a_call_nobody_watches_none(
        store: Store) -> None:
    # One node (SQLite's case): its own watcher costs one watch row, its calls nothing.
    b = make_net()
    register(b, "101", "102")
    phone_call(b, "101", "102")  # nobody watches anywhere
    assert await share(store, {"b": b}) == 0
    authorized(b, "103", "102")  # a watcher mid-call
    b.send(reply(b.requests(PHONES["102"], "INVITE")[0], 180), PHONES["102"])
    assert b.engine.lamps.dialog_writes == {}
    assert await share(store, {"b": b}) == 1  # the watch, once


def view(call: str, state: str) -> DialogView:
    return DialogView(id=call, call_id=call, local_tag="", remote_tag="", direction="recipient",
                      state=state, local=("sip:102@pbx.test", ""), remote=("sip:101@pbx.test", ""))


def test_merged_dialogs_rank_bound_and_ended_ones_linger_then_go() -> None:
    lamps = ClusterLamps()
    changed, newly = lamps.read(frozenset({"102"}), {"102": {"b": (
        view("b1", "terminated"), view("b2", "confirmed"))}}, now=100.0)
    assert changed == {"102"} and newly == {"102"}
    own = (view("a1", "early"),)
    # ringing first, then connected, then ended; this node's first within a rank
    assert [v.id for v in lamps.merge("102", own, 100.0)] == ["a1", "b2", "b1"]
    assert [v.id for v in lamps.merge("102", own, 100.0 + ENDED_LINGER)] == ["a1", "b2"]
    # the same rows read again: nothing changed, and the linger still counts from then
    assert lamps.read(frozenset({"102"}), {"102": {"b": (
        view("b1", "terminated"), view("b2", "confirmed"))}}, now=105.0) == (set(), set())
    # node b's row gone (it died, or the call ended): changed, only this node's left
    assert lamps.read(frozenset(), {}, now=106.0) == ({"102"}, set())
    assert lamps.merge("102", own, 106.0) == own
    many = tuple(view(f"c{i}", "confirmed") for i in range(6))
    lamps.read(frozenset(), {"102": {"c": many}}, now=107.0)
    assert len(lamps.merge("102", own, 107.0)) == 4  # a document's bound
