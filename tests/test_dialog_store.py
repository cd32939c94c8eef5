"""Dialog records and the takeover claim, on SQLite AND PostgreSQL (the same tests).

A node writes a record per answered call and deletes it when the call ends; when a
node's heartbeat goes stale, one survivor claims its records (``take_over``) and
ends its calls. Two claimers at once: one wins each dead node and each record.
"""

from __future__ import annotations

import asyncio
import time

from provisioning.model import DialogLeg, DialogRecord, Node
from provisioning.store import Store
from tests import test_provisioning_store as stores
from tests.test_provisioning_store import Backend

# The store tests' fixtures: SQLite and PostgreSQL, each in a fresh file or schema.
backend = stores.backend
store = stores.store


def leg(call_id: str, cseq: int = 7, routes: tuple[str, ...] = ()) -> DialogLeg:
    return DialogLeg(call_id=call_id, local_tag="lt" + call_id, remote_tag="rt" + call_id,
                     local_uri="<sip:102@pbx.test>", remote_uri='"Alice" <sip:101@pbx.test>',
                     remote_target="sip:101@127.0.0.1:5062", route_set=routes,
                     local_cseq=cseq, local_contact="<sip:switchboard@127.0.0.1:5071>",
                     transport="udp", peer_host="127.0.0.1", peer_port=5060)


def record(call: str, node: str) -> DialogRecord:
    return DialogRecord(id=f"{call};ftag", node=node, answered_at=1_700_000_000.5,
                        legs=(leg(call, routes=("<sip:127.0.0.1:5060;lr>",)),
                              leg(f"{call}-b", cseq=1)))


def beat(node: str, last_seen: float) -> Node:
    return Node(id=node, address=f"127.0.0.1:{5071 if node == 'a' else 5072}",
                started_at=last_seen - 100, last_seen=last_seen, calls=1, registrations=0)


async def test_records_are_written_read_and_deleted(store: Store) -> None:
    assert await store.load_dialogs() == []
    one, two = record("c1", "a"), record("c2", "b")
    await store.write_dialogs([one, two])
    assert await store.load_dialogs() == [one, two]  # every field read back as written
    assert await store.load_dialogs("a") == [one]
    # the same call again (a transfer changed its parties): replaced, not added
    moved = DialogRecord(id=one.id, node="a", answered_at=one.answered_at,
                         legs=(leg("c9", cseq=12),))
    await store.write_dialogs([moved], ended=[two.id])
    assert await store.load_dialogs() == [moved]
    await store.write_dialogs([], ended=[moved.id, "never-written;x"])
    assert await store.load_dialogs() == []


async def test_a_record_without_a_node_is_refused(store: Store) -> None:
    bad = DialogRecord(id="c;t", node="", answered_at=0.0, legs=())
    try:
        await store.write_dialogs([bad])
    except ValueError as exc:
        assert "node" in str(exc)
    else:
        raise AssertionError("a record without a node was stored")


async def test_a_stale_node_is_taken_over_once(store: Store) -> None:
    now = time.time()
    await store.heartbeat(beat("a", now - 30))  # stopped beating 30 s ago
    await store.heartbeat(beat("b", now))
    await store.write_dialogs([record("c1", "a"), record("c2", "a"), record("c3", "b")])
    took = await store.take_over("b", stale_before=now - 8, now=now, reclaim_before=now - 60)
    assert took.dead == ("a",)
    assert [r.id for r in took.records] == ["c1;ftag", "c2;ftag"]
    assert [n.id for n in await store.list_nodes()] == ["b"]
    # claimed: nobody takes them again, while the claimer ends the calls
    again = await store.take_over("b", stale_before=now - 8, now=now, reclaim_before=now - 60)
    assert again.dead == () and again.records == ()
    # the live node's own records are nobody else's
    assert [r.id for r in await store.load_dialogs("b")] == ["c3;ftag"]


async def test_a_fresh_node_is_not_taken_over(store: Store) -> None:
    now = time.time()
    await store.heartbeat(beat("a", now - 3))
    await store.write_dialogs([record("c1", "a")])
    took = await store.take_over("b", stale_before=now - 8, now=now, reclaim_before=now - 60)
    assert took.dead == () and took.records == ()
    assert len(await store.load_dialogs("a")) == 1


async def test_two_claimers_one_wins(backend: Backend, store: Store) -> None:
    # Two survivors (two store connections, as two processes) claim at the same moment.
    now = time.time()
    await store.heartbeat(beat("a", now - 30))
    await store.write_dialogs([record(f"c{i}", "a") for i in range(50)])
    async with backend.make() as second:
        results = await asyncio.gather(
            store.take_over("b", stale_before=now - 8, now=now, reclaim_before=now - 60),
            second.take_over("c", stale_before=now - 8, now=now, reclaim_before=now - 60))
    dead = [t.dead for t in results]
    assert sorted(dead) == [(), ("a",)], dead  # one logs the death, not both
    claimed = [r.id for t in results for r in t.records]
    assert len(claimed) == 50 and len(set(claimed)) == 50  # each call ended once


async def test_a_claim_whose_claimer_died_is_taken_again(store: Store) -> None:
    now = time.time()
    await store.heartbeat(beat("a", now - 300))
    await store.write_dialogs([record("c1", "a")])
    first = await store.take_over("b", stale_before=now - 200, now=now - 120,
                                  reclaim_before=now - 180)
    assert [r.id for r in first.records] == ["c1;ftag"]
    # b died too before ending it: after the reclaim time, c takes the record
    second = await store.take_over("c", stale_before=now - 8, now=now, reclaim_before=now - 60)
    assert [r.id for r in second.records] == ["c1;ftag"] and second.dead == ()


async def test_a_node_claims_what_a_previous_run_left(store: Store) -> None:
    now = time.time()
    await store.write_dialogs([record("c1", "a"), record("c2", "b")])
    mine = await store.claim_own_dialogs("a", now)
    assert [r.id for r in mine] == ["c1;ftag"]
    assert await store.claim_own_dialogs("a", now) == []
