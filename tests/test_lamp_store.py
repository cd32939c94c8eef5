"""Busy lamps across nodes in the store, on SQLite AND PostgreSQL (the same tests).

Each node writes which resources its subscriptions watch and, for a resource some
other node watches, the dialogs it holds there; every node reads the others' (by the
lamps revision). A dead node's rows go with it at the takeover.
"""

from __future__ import annotations

import asyncio
import time

from provisioning.model import DialogView, Node
from provisioning.store import Store
from tests import test_provisioning_store as stores
from tests.test_provisioning_store import Backend

# The store tests' fixtures: SQLite and PostgreSQL, each in a fresh file or schema.
backend = stores.backend
store = stores.store


def view(call: str, state: str = "confirmed") -> DialogView:
    return DialogView(id=f"id-{call}", call_id=call, local_tag="lt", remote_tag="rt",
                      direction="recipient", state=state,
                      local=("sip:102@pbx.test", ""), remote=("sip:101@pbx.test", "Alice É"))


def beat(node: str, last_seen: float) -> Node:
    return Node(id=node, address="127.0.0.1:5071", started_at=last_seen - 100,
                last_seen=last_seen, calls=0, registrations=0)


async def test_watches_and_dialogs_are_read_by_the_other_nodes(store: Store) -> None:
    first = await store.lamps_state(-1, exclude_node="a")
    assert first is not None and first.watched == frozenset() and first.dialogs == {}
    assert await store.lamps_state(first.revision, exclude_node="a") is None  # nothing moved
    await store.write_lamps("a", watched=["102", "700"])
    await store.write_lamps("b", dialogs={"102": [view("c1", "early")]})
    seen_by_b = await store.lamps_state(first.revision, exclude_node="b")
    assert seen_by_b is not None and seen_by_b.watched == {"102", "700"}
    assert seen_by_b.dialogs == {}  # its own dialogs are not read back
    seen_by_a = await store.lamps_state(first.revision, exclude_node="a")
    assert seen_by_a is not None and seen_by_a.watched == frozenset()
    assert seen_by_a.dialogs == {"102": {"b": (view("c1", "early"),)}}  # every field back
    # the call answered, then over: replaced; an empty list drops the row
    await store.write_lamps("b", dialogs={"102": [view("c1")]})
    later = await store.lamps_state(seen_by_a.revision, exclude_node="a")
    assert later is not None and later.dialogs == {"102": {"b": (view("c1"),)}}
    await store.write_lamps("b", dialogs={"102": []})
    idle = await store.lamps_state(later.revision, exclude_node="a")
    assert idle is not None and idle.dialogs == {}
    # a watch dropped, written twice (a write-behind batch replayed): the same rows
    await store.write_lamps("a", unwatched=["700"])
    await store.write_lamps("a", watched=["102"], unwatched=["700"])
    now = await store.lamps_state(idle.revision, exclude_node="b")
    assert now is not None and now.watched == {"102"}
    await store.clear_lamps("a")
    cleared = await store.lamps_state(now.revision, exclude_node="b")
    assert cleared is not None and cleared.watched == frozenset()


async def test_a_bad_dialog_refuses_the_whole_write(store: Store) -> None:
    start = await store.lamps_state(-1, exclude_node="x")
    assert start is not None
    bad = DialogView(id="d", call_id="c", local_tag="", remote_tag="", direction="recipient",
                     state="ringing", local=("sip:102@pbx.test", ""), remote=("", ""))
    for write, field in (({"watched": ["103"], "dialogs": {"102": [view("ok"), bad]}},
                          "lamps['102'].dialogs[1].state"),
                         ({"watched": ["103", ""]}, "resource")):
        try:
            await store.write_lamps("b", **write)  # type: ignore[arg-type]
        except ValueError as exc:
            assert field in str(exc), exc
        else:
            raise AssertionError(f"stored: {write}")
    assert await store.lamps_state(start.revision, exclude_node="x") is None  # nothing at all


async def test_a_dead_nodes_lamps_go_at_the_takeover(store: Store) -> None:
    now = time.time()
    await store.heartbeat(beat("a", now))
    await store.heartbeat(beat("b", now - 30))  # stopped beating 30 s ago
    await store.write_lamps("a", watched=["102"])
    await store.write_lamps("b", watched=["103"], dialogs={"102": [view("c1")]})
    before = await store.lamps_state(-1, exclude_node="a")
    assert before is not None and before.dialogs and before.watched == {"103"}
    took = await store.take_over("a", stale_before=now - 8, now=now, reclaim_before=now - 60)
    assert took.dead == ("b",)
    after = await store.lamps_state(before.revision, exclude_node="a")
    assert after is not None and after.dialogs == {} and after.watched == frozenset()
    # the live node's own watch stays
    assert (await store.lamps_state(-1, exclude_node="b")) == type(after)(
        after.revision, frozenset({"102"}), {})


async def test_lamp_writes_notify_the_listening_nodes(backend: Backend, store: Store) -> None:
    # PostgreSQL: another node hears each lamp write (the writer's node id) on the
    # listening connection it has for bindings; SQLite cannot (one process).
    bindings: asyncio.Queue[str] = asyncio.Queue()
    lamps: asyncio.Queue[str] = asyncio.Queue()
    async with backend.make() as other:
        listening = await other.listen_bindings(bindings.put_nowait, lambda: None,
                                                lamps.put_nowait)
        assert listening is (backend.name == "postgres")
        await store.write_lamps("a", watched=["102"])
        await store.write_lamps("b", dialogs={"102": [view("c1")]})
        if not listening:
            assert lamps.empty()
            return
        assert await asyncio.wait_for(lamps.get(), 10) == "a"
        assert await asyncio.wait_for(lamps.get(), 10) == "b"
        assert bindings.empty()  # a lamp write is not a binding write
