"""The store link (engine/shell/storelink.py): the queue of changes, and the link
against a real PostgreSQL server of the test's own that is stopped and started
(tests/throwaway_pg.py; the shared server is never touched)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import structlog
import structlog.testing

from engine.metrics import Metrics
from engine.shell.storelink import (
    COALESCE_SECONDS,
    BindingWrite,
    DialogWrite,
    PendingWrites,
    StoreLink,
    VoicemailWrite,
)
from provisioning.model import Binding, DialogRecord, VoicemailMessage
from provisioning.store import PostgresStore, SQLiteStore, Store, StoreError, connection_lost
from tests.throwaway_pg import ThrowawayPostgres


def binding(aor: str, contact: str = "", cseq: int = 1) -> Binding:
    return Binding(aor=aor, contact=contact or f"sip:{aor}@127.0.0.1:5062",
                   expires_at=time.time() + 3600, call_id=f"c-{aor}", cseq=cseq,
                   source="udp:127.0.0.1:5062")


def message(box: str, id_: str) -> VoicemailMessage:
    return VoicemailMessage(id=id_, box=box, caller="+15145550199", time=time.time(),
                            duration=2.0, path=f"/tmp/{id_}.wav")


def test_one_entry_per_key_in_the_order_of_last_change() -> None:
    q = PendingWrites()
    a1, b1, a2 = (BindingWrite("save", binding("101", cseq=1)),
                  BindingWrite("save", binding("102")),
                  BindingWrite("delete", binding("101", cseq=2)))
    for w in (a1, b1, a2):
        assert q.put(w)
    assert len(q) == 2
    assert q.head() == [b1, a2]  # 101's refresh replaced its save and went last


def test_a_call_answered_and_ended_before_its_batch_writes_nothing() -> None:
    q = PendingWrites()
    record = DialogRecord(id="c1;t1", node="n1", legs=(), answered_at=time.time())
    reg = BindingWrite("save", binding("101"))
    q.put(DialogWrite(record.id, record))
    q.put(reg)
    q.put(DialogWrite(record.id, None))
    assert q.head() == [reg]  # the record and its end cancel out


def test_a_call_ended_while_its_record_is_being_written_is_deleted() -> None:
    q = PendingWrites()
    record = DialogRecord(id="c1;t1", node="n1", legs=(), answered_at=time.time())
    q.put(DialogWrite(record.id, record))
    taken = q.head()  # on its way to the store
    q.put(DialogWrite(record.id, None))
    q.done(taken)
    assert q.head() == [DialogWrite("c1;t1", None)]


def test_a_stored_record_changed_then_ended_is_deleted() -> None:
    q = PendingWrites()
    first = DialogRecord(id="c1;t1", node="n1", legs=(), answered_at=time.time())
    q.put(DialogWrite(first.id, first))
    q.done(q.head())  # in the store
    q.put(DialogWrite(first.id, replace(first, answered_at=first.answered_at + 1)))
    q.put(DialogWrite(first.id, None))  # the change never written, the end must be
    assert q.head() == [DialogWrite("c1;t1", None)]
    q.done(q.head())
    q.put(DialogWrite("c2;t2", replace(first, id="c2;t2")))
    q.put(DialogWrite("c2;t2", None))
    assert q.head() == []  # a record gone from the store is forgotten


def test_a_change_made_while_its_batch_is_written_is_kept() -> None:
    q = PendingWrites()
    first = BindingWrite("save", binding("101", cseq=1))
    q.put(first)
    taken = q.head()
    newer = BindingWrite("save", binding("101", cseq=2))
    q.put(newer)  # arrives while ``taken`` is on its way to the store
    q.done(taken)
    assert q.head() == [newer]


def test_the_bound_refuses_new_keys_but_not_changes_to_queued_ones() -> None:
    q = PendingWrites(limit=2)
    assert q.put(BindingWrite("save", binding("101")))
    assert q.put(BindingWrite("save", binding("102")))
    assert not q.put(BindingWrite("save", binding("103")))
    assert q.put(BindingWrite("delete", binding("101")))  # same key: takes no room
    assert (len(q), q.dropped) == (2, 1)
    with pytest.raises(ValueError, match="limit"):
        PendingWrites(limit=0)


def test_at_the_bound_a_change_is_dropped_and_counted_without_waiting(tmp_path: Path) -> None:
    metrics = Metrics()
    link = StoreLink(SQLiteStore(tmp_path / "unopened.db"), metrics, limit=1)
    link.save_binding(binding("101"))
    link.save_binding(binding("102"))  # no room: dropped at once, the caller goes on
    link.save_binding(binding("101", cseq=2))  # a queued binding's refresh takes none
    assert len(link.pending) == 1 and link.pending.head()[0].binding.cseq == 2
    assert sample(metrics, "switchboard_store_writes_dropped_total", reason="full") == 1
    assert sample(metrics, "switchboard_store_queued_writes") == 1


def test_a_batch_is_bindings_in_a_row_or_one_message() -> None:
    q = PendingWrites()
    b1, b2 = BindingWrite("save", binding("101")), BindingWrite("save", binding("102"))
    vm = VoicemailWrite(message("101", "m1"))
    for w in (b1, vm, b2):
        q.put(w)
    assert q.head() == [b1]
    q.done([b1])
    assert q.head() == [vm]
    q.done([vm])
    assert q.head() == [b2]
    assert PendingWrites().head() == []


def test_connection_errors_are_told_from_refused_statements() -> None:
    assert connection_lost(ConnectionRefusedError(111, "refused"))
    assert not connection_lost(StoreError("the directory is at revision 3, not 2"))
    wrapped = StoreError("cannot connect")
    wrapped.__cause__ = OSError("unreachable")
    assert connection_lost(wrapped)
    assert not connection_lost(ValueError("a binding needs an aor and a contact"))


@pytest.fixture
def pg() -> Iterator[ThrowawayPostgres]:
    server = ThrowawayPostgres()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


async def _until(check: object, seconds: float = 20.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not in time"
        await asyncio.sleep(0.05)


def test_changes_made_while_the_store_is_away_are_written_in_order_when_back(
        pg: ThrowawayPostgres) -> None:
    async def run() -> None:
        store = PostgresStore(pg.url)
        async with writing(store) as (link, metrics, _):
            link.save_binding(binding("101"))
            await _until(lambda: not link.pending)
            assert [b.aor for b in await store.load_bindings()] == ["101"]

            await asyncio.to_thread(pg.stop)
            link.save_binding(binding("102"))  # the writer finds the store gone
            await _until(lambda: not link.up)
            assert sample(metrics, "switchboard_store_up") == 0
            # while away: a new phone, 101 leaves, 102 refreshes, a message is left
            link.save_binding(binding("103"))
            link.delete_binding(binding("101"))
            link.save_binding(binding("102", cseq=2))
            await link.save_voicemail(message("103", "m1"))
            assert len(link.pending) == 4
            ran = await link.attempt("reader", _fail_if_called)
            assert ran is False  # readers skip their turn while the store is away

            await asyncio.to_thread(pg.start)
            await _until(lambda: link.up and not link.pending)
            stored = {b.aor: b for b in await store.load_bindings()}
            assert set(stored) == {"102", "103"}
            assert stored["102"].cseq == 2
            assert [m.id for m in await store.list_voicemail("103")] == ["m1"]
            assert sample(metrics, "switchboard_store_reconnects_total") == 1
            assert sample(metrics, "switchboard_store_queued_writes") == 0

    asyncio.run(run())


@contextlib.asynccontextmanager
async def writing(store: Store) -> AsyncIterator[tuple[StoreLink, Metrics, asyncio.Task[None]]]:
    """``store`` opened, a link to it and its writer running; all closed after."""
    await store.open()
    metrics = Metrics()
    link = StoreLink(store, metrics, rng=lambda: 0.0)
    link.node_id = "n1"
    writer = asyncio.create_task(link.run())
    try:
        yield link, metrics, writer
    finally:
        writer.cancel()
        await link.close()
        await store.close()


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


async def _fail_if_called() -> None:
    raise AssertionError("a reader ran while the store was away")


def test_the_writer_goes_on_when_a_short_calls_writes_cancel_out(tmp_path: Path) -> None:
    """The writer woken by a call's record finds the queue empty after its pause (the
    call ended meanwhile): nothing is written, nothing refused, and the next change
    is written as usual."""
    async def run() -> None:
        store = SQLiteStore(tmp_path / "store.db")
        async with writing(store) as (link, _, writer):
            with structlog.testing.capture_logs() as logged:
                record = DialogRecord(id="c1;t1", node="n1", legs=(),
                                      answered_at=time.time())
                await asyncio.sleep(0.01)  # the writer waits for a change
                link.save_dialog(record)
                await asyncio.sleep(0.01)  # woken by it, the writer pauses
                link.end_dialog(record.id)
                assert not link.pending
                await asyncio.sleep(2 * COALESCE_SECONDS)
                link.save_binding(binding("101"))
                await _until(lambda: not link.pending)
            assert [b.aor for b in await store.load_bindings()] == ["101"]
            assert not writer.done()
            assert [e for e in logged if e["log_level"] in ("error", "warning")] == []

    asyncio.run(run())
