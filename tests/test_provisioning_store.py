"""Tests for provisioning.store and provisioning.apply, on SQLite AND PostgreSQL.

Every test runs against both real databases: SQLite in ``tmp_path`` and
PostgreSQL at ``$DATABASE_URL`` (default ``postgresql://127.0.0.1:5432/test``)
in a fresh random schema dropped afterwards.  An unreachable PostgreSQL is a
failure, never a skip.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiosqlite
import asyncpg
import pytest

from provisioning.apply import apply_file, format_report
from provisioning.directory import DirectoryError, load_directory, parse_directory
from provisioning.model import Binding, Directory, Node, User
from provisioning.store import (
    PostgresStore,
    RevisionConflict,
    SQLiteStore,
    Store,
    StoreError,
    UnknownExtensionError,
    open_store,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "directory.toml"
PG_URL = os.environ.get("DATABASE_URL", "postgresql://127.0.0.1:5432/test")


@dataclass
class Backend:
    """One database: ``make()`` returns a new, unopened store on it (a restart)."""

    name: str
    url: str | None
    data_dir: Path
    schema: str | None
    sql: Callable[[str], Awaitable[None]]  # run SQL on the database, outside the store

    def make(self) -> Store:
        return open_store(self.url, self.data_dir, schema=self.schema)


async def _sqlite_sql(path: Path, statement: str) -> None:
    async with aiosqlite.connect(path) as conn:
        await conn.executescript(statement)


async def _pg_sql(schema: str, statement: str) -> None:
    conn = await asyncpg.connect(PG_URL, server_settings={"search_path": schema})
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        db = tmp_path / "switchboard.db"
        yield Backend("sqlite", None, tmp_path, None, lambda s: _sqlite_sql(db, s))
        return
    try:
        conn = await asyncpg.connect(PG_URL, timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL is required and unreachable at {PG_URL}: {exc}")
    schema = f"sb_test_{uuid.uuid4().hex[:12]}"
    try:
        yield Backend("postgres", PG_URL, tmp_path, schema, lambda s: _pg_sql(schema, s))
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    async with backend.make() as opened:
        yield opened


@pytest.fixture
def directory() -> Directory:
    return load_directory(EXAMPLE)


def _replace_user(d: Directory, extension: str, **changes: object) -> Directory:
    users = tuple(
        dataclasses.replace(u, **changes) if u.extension == extension else u  # type: ignore[arg-type]
        for u in d.users
    )
    return dataclasses.replace(d, users=users)


def _user(d: Directory | None, extension: str) -> User:
    assert d is not None
    user = d.user(extension)
    assert user is not None
    return user


def _binding(aor: str, host: str, expires_at: float, **extra: object) -> Binding:
    fields: dict[str, object] = {
        "aor": aor,
        "contact": f"sip:{aor}@{host}:5062;transport=udp",
        "expires_at": expires_at,
        "call_id": f"{aor}-{host}@phone",
        "cseq": 1,
        "source": f"udp:{host}:5062",
    }
    fields.update(extra)
    return Binding(**fields)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- directory


async def test_new_store_has_no_directory(store: Store) -> None:
    assert await store.load_directory() is None
    assert await store.load_bindings() == []


async def test_apply_then_load_gives_the_same_directory(store: Store, directory: Directory) -> None:
    report = await store.apply_directory(directory)
    assert report.changed
    assert report.added("system") == ("system",)
    assert report.added("users") == ("101", "102", "103", "201", "202", "203")
    assert report.added("ring_groups") == ("sales",)
    assert report.added("numbers") == ("+15145550100", "+15145550200", "+18005550100")
    assert not any(c.action != "added" for c in report.changes)
    loaded = await store.load_directory()
    assert loaded == directory
    # the number contract's keys are kept (Number equality covers them; said plainly)
    support = loaded.number("+15145550200") if loaded is not None else None
    assert support is not None and support.caller_id_name == "Example Support"
    assert support.outbound_callers == ("101",) and support.billing_group == "support"


async def test_apply_twice_is_no_change(store: Store, directory: Directory) -> None:
    await store.apply_directory(directory)
    again = await store.apply_directory(load_directory(EXAMPLE))
    assert not again.changed
    assert again.changes == ()
    assert format_report(again) == "no change"
    assert await store.load_directory() == directory


async def test_edited_directory_changes_only_what_differs(
    store: Store, directory: Directory
) -> None:
    await store.apply_directory(directory)
    alice = _user(directory, "101")
    away = dataclasses.replace(alice.forwarding.away, no_answer_seconds=30)
    edited = _replace_user(
        directory, "101", forwarding=dataclasses.replace(alice.forwarding, away=away)
    )
    newcomer = dataclasses.replace(_user(directory, "202"), extension="204", name="Félix Roy")
    edited = dataclasses.replace(
        edited,
        users=(*(u for u in edited.users if u.extension != "203"), newcomer),
        trunks=(dataclasses.replace(edited.trunks[0], port=5091),),
    )

    report = await store.apply_directory(edited)

    assert report.updated("users") == ("101",)
    (change,) = [c for c in report.changes if c.action == "changed" and c.table == "users"]
    assert change.fields == ("forwarding.away.no_answer_seconds",)
    assert report.added("users") == ("204",)
    assert report.removed("users") == ("203",)
    assert report.updated("trunks") == ("carrier",)
    assert len(report.changes) == 4, report.changes
    assert not report.reordered("users")
    assert await store.load_directory() == edited
    assert format_report(report).splitlines() == [
        "~ trunks carrier: changed port",
        "~ users 101: changed forwarding.away.no_answer_seconds",
        "+ users 204: added",
        "- users 203: removed",
    ]
    assert not (await store.apply_directory(edited)).changed


async def test_reorder_is_reported_once_and_kept(store: Store, directory: Directory) -> None:
    await store.apply_directory(directory)
    reordered = dataclasses.replace(directory, users=tuple(reversed(directory.users)))
    report = await store.apply_directory(reordered)
    assert [(c.table, c.action) for c in report.changes] == [("users", "reordered")]
    assert format_report(report) == "~ users: reordered"
    loaded = await store.load_directory()
    assert loaded is not None
    assert [u.extension for u in loaded.users] == ["203", "202", "201", "103", "102", "101"]


async def test_failed_apply_leaves_the_previous_state(
    backend: Backend, store: Store, directory: Directory
) -> None:
    await store.apply_directory(directory)
    await store.set_user_status("102", "away")
    kept = _binding("101", "10.0.0.11", 2e9)
    await store.save_binding(kept)
    before = await store.load_directory()

    # A real database failure in the middle of the apply: a trigger refuses
    # the row of the new user 204, after 101 and 102 were already updated.
    if backend.name == "sqlite":
        await backend.sql(
            "CREATE TRIGGER refuse_204 BEFORE INSERT ON directory_rows "
            "WHEN NEW.key = '204' BEGIN SELECT RAISE(ABORT, 'refused by test'); END;"
        )
    else:
        await backend.sql(
            "CREATE FUNCTION refuse_204() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN IF NEW.key = '204' THEN RAISE EXCEPTION 'refused by test'; END IF; "
            "RETURN NEW; END $$; "
            "CREATE TRIGGER refuse_204 BEFORE INSERT ON directory_rows "
            "FOR EACH ROW EXECUTE FUNCTION refuse_204();"
        )
    edited = _replace_user(directory, "101", name="Alice Martin-Roy")
    edited = _replace_user(edited, "102", status="dnd")
    newcomer = dataclasses.replace(_user(directory, "202"), extension="204", name="New")
    edited = dataclasses.replace(
        edited, users=(*(u for u in edited.users if u.extension != "203"), newcomer)
    )
    with pytest.raises(Exception, match="refused by test"):
        await store.apply_directory(edited)

    after = await store.load_directory()
    assert after == before
    assert _user(after, "102").status == "away"  # the override was not dropped
    assert _user(after, "101").name == "Alice Martin"
    assert await store.load_bindings() == [kept]

    if backend.name == "sqlite":
        await backend.sql("DROP TRIGGER refuse_204;")
    else:
        await backend.sql("DROP TRIGGER refuse_204 ON directory_rows;")
    report = await store.apply_directory(edited)  # nothing of the failed attempt stuck
    assert report.updated("users") == ("101", "102")
    assert report.added("users") == ("204",)
    assert report.removed("users") == ("203",)


async def test_invalid_directory_is_refused_before_writing(
    store: Store, directory: Directory
) -> None:
    await store.apply_directory(directory)
    broken = _replace_user(directory, "101", department="Nowhere")
    with pytest.raises(DirectoryError, match=r"users\[0\]\.department: unknown department"):
        await store.apply_directory(broken)
    assert await store.load_directory() == directory


# --------------------------------------------------------------------------- statuses


async def test_status_override_survives_reapplying_the_same_file(
    store: Store, directory: Directory
) -> None:
    await store.apply_directory(directory)
    assert _user(directory, "102").status == "business_trip"
    await store.set_user_status("102", "away")
    assert _user(await store.load_directory(), "102").status == "away"

    report = await store.apply_directory(load_directory(EXAMPLE))
    assert not report.changed
    assert _user(await store.load_directory(), "102").status == "away"

    # an unrelated edit of the same user keeps the override too
    renamed = _replace_user(directory, "102", name="Bruno T.")
    assert (await store.apply_directory(renamed)).updated("users") == ("102",)
    assert _user(await store.load_directory(), "102").status == "away"


async def test_editing_the_configured_status_drops_the_override(
    store: Store, directory: Directory
) -> None:
    await store.apply_directory(directory)
    await store.set_user_status("102", "away")
    edited = _replace_user(directory, "102", status="lunch")
    report = await store.apply_directory(edited)
    assert report.updated("users") == ("102",)
    assert _user(await store.load_directory(), "102").status == "lunch"


async def test_clear_user_status(store: Store, directory: Directory) -> None:
    await store.apply_directory(directory)
    await store.set_user_status("101", "dnd")
    assert await store.clear_user_status("101") is True
    assert await store.clear_user_status("101") is False
    assert _user(await store.load_directory(), "101").status == "available"


async def test_set_user_status_errors(store: Store, directory: Directory) -> None:
    with pytest.raises(UnknownExtensionError, match="unknown extension '101'"):
        await store.set_user_status("101", "away")  # nothing applied yet
    await store.apply_directory(directory)
    with pytest.raises(UnknownExtensionError, match="unknown extension '109'"):
        await store.set_user_status("109", "away")
    with pytest.raises(UnknownExtensionError, match="'800'"):
        await store.set_user_status("800", "away")  # a ring group, not a user
    with pytest.raises(ValueError, match="unknown status 'vacation'"):
        await store.set_user_status("101", "vacation")
    assert await store.load_directory() == directory


async def test_removing_a_user_drops_its_status_and_bindings(
    store: Store, directory: Directory
) -> None:
    await store.apply_directory(directory)
    await store.set_user_status("203", "dnd")
    await store.save_binding(_binding("203", "10.0.0.23", 2e9))
    other = _binding("201", "10.0.0.21", 2e9)
    await store.save_binding(other)
    without = dataclasses.replace(
        directory, users=tuple(u for u in directory.users if u.extension != "203")
    )
    assert (await store.apply_directory(without)).removed("users") == ("203",)
    assert await store.load_bindings() == [other]
    await store.apply_directory(directory)  # back again: the directory's status applies
    assert _user(await store.load_directory(), "203").status == "available"


# --------------------------------------------------------------------------- bindings


async def test_bindings_save_load_delete_purge(store: Store) -> None:
    a1 = _binding(
        "101",
        "10.0.0.1",
        1000.25,
        q=0.5,
        user_agent="Yealink T54W",
        instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>",
        reg_id=1,
    )
    a2 = _binding("101", "10.0.0.2", 2000.5, q=1.0)
    b1 = _binding("102", "10.0.0.3", 1500.0, cseq=7)
    for b in (a1, a2, b1):
        await store.save_binding(b)
    assert await store.load_bindings() == [a2, a1, b1]  # by aor, then q highest first

    refreshed = dataclasses.replace(a1, expires_at=3000.75, cseq=2, reg_id=None)
    await store.save_binding(refreshed)  # same aor and contact: replaced
    assert await store.load_bindings() == [a2, refreshed, b1]

    await store.delete_binding("101", a2.contact)
    await store.delete_binding("101", "sip:nobody@10.9.9.9")  # absent: no error
    assert await store.load_bindings() == [refreshed, b1]

    assert await store.purge_expired_bindings(1500.0) == 1  # b1 expires exactly then
    assert await store.load_bindings() == [refreshed]
    assert await store.purge_expired_bindings(1500.0) == 0

    await store.save_binding(b1)
    await store.delete_bindings("101")
    assert await store.load_bindings() == [b1]


async def test_revision_moves_with_every_change_a_running_engine_must_see(
    store: Store, directory: Directory
) -> None:
    assert await store.revision() == 0
    await store.apply_directory(directory)
    first = await store.revision()
    assert first > 0
    await store.apply_directory(directory)  # nothing changed: nothing to reload
    assert await store.revision() == first
    await store.set_user_status("102", "away")
    second = await store.revision()
    assert second > first
    assert await store.load_status_overrides() == {"102": "away"}
    assert not await store.clear_user_status("101")  # none set: no change
    assert await store.revision() == second
    assert await store.clear_user_status("102")
    assert await store.revision() > second
    assert await store.load_status_overrides() == {}


async def test_write_bindings_is_one_atomic_batch(store: Store) -> None:
    keep = _binding("101", "10.0.0.1", 1000.0)
    gone = _binding("101", "10.0.0.2", 1000.0)
    await store.write_bindings([keep, gone])
    batch = [_binding("102", f"10.0.2.{i}", 2000.0 + i) for i in range(300)]
    await store.write_bindings(batch, [("101", gone.contact)])
    loaded = await store.load_bindings()
    assert loaded[0] == keep and len(loaded) == 301
    assert {b.contact for b in loaded[1:]} == {b.contact for b in batch}
    # one bad binding refuses the whole batch: nothing of it is written
    with pytest.raises(ValueError, match="aor and a contact"):
        await store.write_bindings([_binding("103", "10.0.3.1", 10.0),
                                    _binding("", "10.0.3.2", 10.0)], [("101", keep.contact)])
    assert len(await store.load_bindings()) == 301


async def test_a_binding_keeps_its_path(store: Store) -> None:
    # RFC 3327: the Path of a REGISTER through the edge survives a restart.
    path = ("<sip:127.0.0.1:5070;lr;received=sip:127.0.0.1:40000>", "<sip:edge2.test;lr>")
    through = _binding("101", "10.0.0.1", 2e9, path=path)
    direct = _binding("101", "10.0.0.2", 2e9)
    await store.write_bindings([through, direct])
    loaded = {b.contact: b for b in await store.load_bindings()}
    assert loaded[through.contact].path == path and loaded[direct.contact].path == ()


async def test_a_version_2_database_gains_binding_path_and_sync_columns(backend: Backend) -> None:
    # A database made before Path: its bindings get an empty Path on upgrade.
    async with backend.make() as first:
        await first.save_binding(_binding("101", "10.0.0.1", 2e9))
    await backend.sql("DROP INDEX bindings_rev; DROP TABLE nodes; "
                      "ALTER TABLE bindings DROP COLUMN path; "
                      "ALTER TABLE bindings DROP COLUMN node; "
                      "ALTER TABLE bindings DROP COLUMN rev; "
                      "ALTER TABLE bindings DROP COLUMN gone; "
                      "UPDATE meta SET value = '2' WHERE key = 'schema_version';")
    async with backend.make() as upgraded:
        [old] = await upgraded.load_bindings()
        assert old.path == ()
        await upgraded.save_binding(_binding("102", "10.0.0.2", 2e9, path=("<sip:e;lr>",)))
        assert [b.path for b in await upgraded.load_bindings()] == [(), ("<sip:e;lr>",)]
        # rows from before have revision 0: loaded at start, not reported as news
        assert [b.aor for b in (await upgraded.bindings_since(0, exclude_node="x")).saved] == [
            "102"]
        assert await upgraded.list_nodes() == []
    async with backend.make() as again:  # the upgrade is recorded: not run twice
        assert len(await again.load_bindings()) == 2


async def test_bindings_since_reports_other_nodes_saves_and_deletions(store: Store) -> None:
    # Nodes share registrations through the store: each reads what the others wrote.
    start = await store.bindings_since(0, exclude_node="b")
    assert start.saved == () and start.deleted == ()
    a1 = _binding("101", "10.0.0.1", 2e9, path=("<sip:edge;lr>",))
    a2 = _binding("102", "10.0.0.2", 2e9)
    await store.write_bindings([a1, a2], node="a")
    seen_by_b = await store.bindings_since(start.revision, exclude_node="b")
    assert sorted(seen_by_b.saved, key=lambda b: b.aor) == [a1, a2]
    assert seen_by_b.revision > start.revision
    # a node does not read back its own writes
    assert (await store.bindings_since(start.revision, exclude_node="a")).saved == ()
    # nothing new: nothing reported, same revision
    again = await store.bindings_since(seen_by_b.revision, exclude_node="b")
    assert again.saved == () and again.deleted == () and again.revision == seen_by_b.revision
    # a deletion is reported as one, and the binding no longer loads
    await store.write_bindings([], node="a", removed=[a2])
    gone = await store.bindings_since(seen_by_b.revision, exclude_node="b")
    assert gone.saved == () and gone.deleted == (("102", a2.contact),)
    assert await store.load_bindings() == [a1]
    # saved again after its deletion: live again
    await store.write_bindings([a2], node="b")
    assert len(await store.load_bindings()) == 2
    assert (await store.bindings_since(gone.revision, exclude_node="a")).saved == (a2,)


async def test_binding_writes_notify_the_listening_nodes(backend: Backend,
                                                         store: Store) -> None:
    # PostgreSQL: another node's store LISTENs and hears each binding write (the
    # writer's node id) at its commit; SQLite cannot (one process), and says so.
    heard: asyncio.Queue[str] = asyncio.Queue()
    lost: list[bool] = []
    async with backend.make() as other:
        listening = await other.listen_bindings(heard.put_nowait, lambda: lost.append(True))
        assert listening is (backend.name == "postgres")
        await store.write_bindings([_binding("101", "10.0.0.1", 2e9)], node="a")
        await store.delete_bindings("101")
        if not listening:
            assert heard.empty()
            return
        assert await asyncio.wait_for(heard.get(), 10) == "a"
        assert await asyncio.wait_for(heard.get(), 10) == ""  # removed with the user
        # another schema in the same database: a store of its own, not woken
        stranger = PostgresStore(PG_URL, schema=f"sb_other_{uuid.uuid4().hex[:12]}")
        await stranger.open()
        try:
            await stranger.write_bindings([_binding("102", "10.0.0.2", 2e9)], node="x")
            await store.write_bindings([_binding("103", "10.0.0.3", 2e9)], node="c")
            assert await asyncio.wait_for(heard.get(), 10) == "c"
            assert heard.empty()
        finally:
            await _pg_sql("public", f'DROP SCHEMA IF EXISTS "{stranger.schema}" CASCADE')
            await stranger.close()
        # the listening connection goes (the server ended it): lost() says so once
        assert isinstance(other, PostgresStore)
        pid = other._listener.get_server_pid()
        await _pg_sql("public", f"SELECT pg_terminate_backend({pid})")
        deadline = asyncio.get_running_loop().time() + 10
        while not lost and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        assert lost == [True]
        # listening again works, and hears the next write
        assert await other.listen_bindings(heard.put_nowait, lambda: lost.append(True))
        await store.write_bindings([_binding("104", "10.0.0.4", 2e9)], node="d")
        assert await asyncio.wait_for(heard.get(), 10) == "d"
    assert lost == [True]  # closing the store is not a loss


async def test_removing_a_binding_keeps_a_refresh_stored_meanwhile(store: Store) -> None:
    # Node b drops the registration it knew (expired there) after node a stored the
    # phone's refresh (same Call-ID, next CSeq): the refresh stays.
    first = _binding("101", "10.0.0.1", 1000.0, cseq=1)
    await store.write_bindings([first], node="a")
    refreshed = dataclasses.replace(first, expires_at=5000.0, cseq=2)
    await store.write_bindings([refreshed], node="a")
    await store.write_bindings([], node="b", removed=[first])
    assert await store.load_bindings() == [refreshed]
    await store.write_bindings([], node="b", removed=[refreshed])
    assert await store.load_bindings() == []


async def test_a_deleted_binding_is_kept_for_the_other_nodes_then_purged(
        store: Store) -> None:
    live = _binding("101", "10.0.0.1", 2e9)
    await store.write_bindings([live, _binding("102", "10.0.0.2", 2e9)], node="a")
    before = time.time()
    await store.write_bindings([], [("102", "sip:102@10.0.0.2:5062;transport=udp")], node="a")
    assert await store.purge_expired_bindings(before - 1) == 0  # deleted after: kept
    assert (await store.bindings_since(0, exclude_node="b")).deleted == (
        ("102", "sip:102@10.0.0.2:5062;transport=udp"),)
    assert await store.purge_expired_bindings(time.time() + 1) == 0  # not counted
    assert (await store.bindings_since(0, exclude_node="b")).deleted == ()
    assert await store.load_bindings() == [live]


async def test_nodes_heartbeat_list_and_remove(store: Store) -> None:
    assert await store.list_nodes() == []
    a = Node(id="host:5071", address="127.0.0.1:5071", started_at=100.0, last_seen=101.0,
             calls=0, registrations=0)
    await store.heartbeat(a)
    later = dataclasses.replace(a, last_seen=103.0, calls=2, registrations=7)
    await store.heartbeat(later)
    b = dataclasses.replace(a, id="host:5072", address="127.0.0.1:5072")
    await store.heartbeat(b)
    assert await store.list_nodes() == [later, b]
    assert await store.remove_node("host:5071") and not await store.remove_node("host:5071")
    assert await store.list_nodes() == [b]


async def test_binding_needs_aor_and_contact(store: Store) -> None:
    with pytest.raises(ValueError, match="aor and a contact"):
        await store.save_binding(_binding("", "10.0.0.1", 10.0))


async def test_concurrent_writes_on_one_store(store: Store, directory: Directory) -> None:
    saves = [store.save_binding(_binding("101", f"10.0.1.{i}", 2e9)) for i in range(20)]
    statuses = [store.set_user_status("101", s) for s in ("away", "dnd")]
    await asyncio.gather(store.apply_directory(directory), *saves)
    await asyncio.gather(*statuses, store.apply_directory(directory))
    assert len(await store.load_bindings()) == 20
    assert _user(await store.load_directory(), "101").status in ("away", "dnd")


# --------------------------------------------------------------------------- restarts


async def test_reopened_store_keeps_everything(backend: Backend, directory: Directory) -> None:
    bindings = [
        _binding("101", "10.0.0.1", 1e9 + 0.125, reg_id=2),
        _binding("201", "10.0.0.2", 1e9 + 60.0, user_agent="baresip"),
    ]
    async with backend.make() as first:
        await first.apply_directory(directory)
        await first.set_user_status("201", "lunch")
        for b in bindings:
            await first.save_binding(b)
        snapshot = await first.load_directory()

    async with backend.make() as second:
        assert await second.load_directory() == snapshot
        assert _user(snapshot, "201").status == "lunch"
        assert await second.load_bindings() == bindings
        assert not (await second.apply_directory(directory)).changed
        assert _user(await second.load_directory(), "201").status == "lunch"


async def test_newer_schema_version_is_refused(backend: Backend) -> None:
    async with backend.make():
        pass
    await backend.sql("UPDATE meta SET value = '99' WHERE key = 'schema_version';")
    with pytest.raises(StoreError, match="schema version 99"):
        await backend.make().open()


async def test_closed_store_refuses_work(backend: Backend) -> None:
    store = backend.make()
    with pytest.raises(StoreError, match="not open"):
        await store.load_directory()
    await store.open()
    await store.close()
    await store.close()  # twice is fine
    with pytest.raises(StoreError, match="not open"):
        await store.load_bindings()


# --------------------------------------------------------------------------- apply_file


async def test_apply_file(backend: Backend, tmp_path: Path) -> None:
    report = await apply_file(EXAMPLE, backend.url, backend.data_dir, schema=backend.schema)
    lines = format_report(report).splitlines()
    assert "+ users 101: added" in lines
    assert "+ ring_groups sales: added" in lines
    assert len(lines) == len(report.changes)
    again = await apply_file(EXAMPLE, backend.url, backend.data_dir, schema=backend.schema)
    assert format_report(again) == "no change"

    bad = tmp_path / "bad.toml"
    bad.write_text(EXAMPLE.read_text().replace('status = "dnd"', 'status = "asleep"'))
    with pytest.raises(DirectoryError, match=r"users\[4\]\.status: 'asleep'"):
        await apply_file(bad, backend.url, backend.data_dir, schema=backend.schema)
    async with backend.make() as store:
        assert await store.load_directory() == load_directory(EXAMPLE)


# --------------------------------------------------------------------------- URLs


def test_open_store_picks_the_backend(tmp_path: Path) -> None:
    default = open_store(None, tmp_path)
    assert isinstance(default, SQLiteStore)
    assert default.path == tmp_path / "switchboard.db"
    explicit = open_store(f"sqlite://{tmp_path}/other.db", tmp_path)
    assert isinstance(explicit, SQLiteStore) and explicit.path == tmp_path / "other.db"
    for url in ("postgresql://db.example/switchboard", "postgres://u:p@db.example/sb"):
        assert isinstance(open_store(url, tmp_path), PostgresStore)
    with pytest.raises(StoreError, match=r"unsupported database URL 'mysql://u:\*\*\*@h/db'"):
        open_store("mysql://u:secret@h/db", tmp_path)
    with pytest.raises(StoreError, match=r"sqlite:///absolute/path\.db"):
        open_store("sqlite://host/x.db", tmp_path)
    with pytest.raises(StoreError, match="invalid schema name"):
        open_store(PG_URL, tmp_path, schema="Robert'); DROP TABLE users;--")


async def test_unreachable_postgres_is_a_clear_error(tmp_path: Path) -> None:
    store = open_store("postgresql://nobody:secret@127.0.0.1:1/none", tmp_path)
    with pytest.raises(StoreError, match=r"cannot connect to PostgreSQL at .*nobody:\*\*\*@"):
        await store.open()


# --------------------------------------------------------------------------- voicemail


async def test_voicemail_save_list_read_delete_and_removed_user(
    store: Store, directory: Directory
) -> None:
    from provisioning.model import VoicemailMessage

    await store.apply_directory(directory)
    first = VoicemailMessage(id="m1", box="101", caller="+15145550199", time=1000.5,
                             duration=12.25, path="/data/voicemail/101/m1.wav")
    second = VoicemailMessage(id="m2", box="101", caller="102", time=2000.0, duration=3.0,
                              path="/data/voicemail/101/m2.wav")
    other = VoicemailMessage(id="m3", box="203", caller="101", time=1500.0, duration=1.0,
                             path="/data/voicemail/203/m3.wav")
    for m in (second, first, other):
        await store.save_voicemail(m)
    assert await store.list_voicemail("101") == [first, second]  # oldest first
    assert await store.mark_voicemail_read("101", "m1")
    assert not await store.mark_voicemail_read("203", "m1")  # another box's id: no
    assert (await store.list_voicemail("101"))[0].read
    assert await store.delete_voicemail("101", "m2") == second
    assert await store.delete_voicemail("101", "m2") is None
    # removing user 203 from the directory removes their messages too
    without_203 = dataclasses.replace(
        directory, users=tuple(u for u in directory.users if u.extension != "203"))
    await store.apply_directory(without_203)
    assert await store.list_voicemail("203") == []
    assert [m.id for m in await store.list_voicemail("101")] == ["m1"]


async def test_voicemail_counts_and_revision_for_message_waiting(store: Store,
                                                                 directory: Directory) -> None:
    from provisioning.model import VoicemailMessage

    await store.apply_directory(directory)
    assert await store.voicemail_counts() == {} and await store.voicemail_revision() == 0
    for i, box in enumerate(("101", "101", "102")):
        await store.save_voicemail(VoicemailMessage(id=f"c{i}", box=box, caller="x",
                                                    time=float(i), duration=1.0, path="/x"))
    first = await store.voicemail_revision()
    assert first == 3
    assert await store.mark_voicemail_read("101", "c0")
    assert await store.voicemail_counts() == {"101": (1, 1), "102": (1, 0)}
    assert await store.voicemail_revision() > first


# --------------------------------------------------------------------------- snapshot writes


async def _row_bodies(backend: Backend) -> dict[tuple[str, str], str]:
    async with backend.make() as other:  # a second process's view: the stored rows
        snapshot = await other.directory_snapshot()
    assert snapshot is not None
    return {key: body for key, (_, body) in snapshot.rows.items()}


async def test_a_write_on_the_snapshot_writes_only_its_rows_and_is_the_next_snapshot(
        backend: Backend, store: Store, directory: Directory) -> None:
    await store.apply_directory(directory)
    base = await store.directory_snapshot()
    assert base is not None and await store.directory_snapshot() is base  # kept, not re-read
    data = {table: list(rows) if isinstance(rows, list) else rows
            for table, rows in base.data.items()}
    index = next(i for i, u in enumerate(data["users"]) if u["extension"] == "102")
    data["users"][index] = {**data["users"][index], "name": "Bruno Renamed"}
    changed = parse_directory(data, "<test>", store.memo)
    # every other user is the snapshot's own object: only 102 is serialised and written
    assert sum(u is not b for u, b in zip(changed.users, base.directory.users,
                                          strict=True)) == 1
    report = await store.apply_directory(changed, expect_revision=base.revision, base=base)
    assert [(c.table, c.key, c.action, c.fields) for c in report.changes] == [
        ("users", "102", "changed", ("name",))]
    assert report.revision == base.revision + 1 == await store.directory_revision()
    after = await store.directory_snapshot()
    assert after is not None and after.revision == report.revision
    assert after.directory is changed and after.data["users"][index]["name"] == "Bruno Renamed"
    assert after.data["users"][0] is base.data["users"][0]
    # what another process reads back is exactly what this one believes is stored
    assert await _row_bodies(backend) == {k: b for k, (_, b) in after.rows.items()}
    loaded = await store.load_directory()
    assert loaded is not None and _user(loaded, "102").name == "Bruno Renamed"
    # a write on a snapshot someone else has moved past is refused, nothing written
    with pytest.raises(RevisionConflict):
        await store.apply_directory(changed, expect_revision=base.revision, base=base)
    assert await store.directory_revision() == report.revision


async def test_another_writer_moves_the_revision_and_the_snapshot_follows(
        backend: Backend, store: Store, directory: Directory) -> None:
    await store.apply_directory(directory)
    first = await store.directory_snapshot()
    assert first is not None
    async with backend.make() as other:  # the CLI or another node
        await other.apply_directory(_replace_user(directory, "102", name="From Elsewhere"))
    second = await store.directory_snapshot()
    assert second is not None and second.revision == first.revision + 1
    assert _user(second.directory, "102").name == "From Elsewhere"
    with pytest.raises(RevisionConflict) as refused:
        await store.apply_directory(first.directory, expect_revision=first.revision, base=first)
    assert refused.value.current == second.revision


async def test_a_stored_directory_the_validator_now_refuses_is_still_exported(
        backend: Backend, store: Store, directory: Directory) -> None:
    await store.apply_directory(directory)
    await backend.sql("UPDATE directory_rows SET body = REPLACE(body, '\"name\": \"Bruno', "
                      "'\"nom\": \"Bruno') WHERE tbl = 'users' AND key = '102'")
    async with backend.make() as other:  # a process that never read it valid
        with pytest.raises(DirectoryError):
            await other.load_directory()
        data, revision = await other.load_directory_data()
    assert data is not None and revision == await store.directory_revision()
    assert any(u.get("nom", "").startswith("Bruno") for u in data["users"])


async def test_a_users_srtp_is_stored_and_loaded(store: Store, directory: Directory) -> None:
    edited = _replace_user(directory, "101", srtp="required")
    await store.apply_directory(edited)
    assert _user(await store.load_directory(), "101").srtp == "required"
    assert _user(await store.load_directory(), "102").srtp == "off"
