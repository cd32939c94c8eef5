"""The admin API's store parts on SQLite AND PostgreSQL (the same tests): revisions
checked in the apply's transaction, web credentials, sessions, API keys, TOTP,
the audit log, and what removing a user takes with it."""

# ruff: noqa: F811  (the store fixtures, imported, are parameters here)
from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from provisioning.api.auth import new_audit, sha256
from provisioning.directory import directory_to_dict
from provisioning.model import ApiKey, Directory, Session, TotpRecord
from provisioning.store import RevisionConflict, Store
from tests.test_provisioning_store import (  # noqa: F401  (fixtures)
    Backend,
    backend,
    directory,
    store,
)


async def test_directory_revision_moves_on_changes_only(store: Store,
                                                        directory: Directory) -> None:
    assert await store.directory_revision() == 0
    report = await store.apply_directory(directory)
    assert report.revision == 1 and await store.directory_revision() == 1
    again = await store.apply_directory(directory)
    assert not again.changed and again.revision == 1
    await store.set_user_status("101", "away")  # live state: not a directory change
    assert await store.directory_revision() == 1
    data, revision = await store.load_directory_data()
    assert revision == 1 and data is not None
    assert data == directory_to_dict(directory)  # as configured, not with the live status
    assert data["users"][0]["status"] == "available"


async def test_expected_revision_is_checked_in_the_transaction(store: Store,
                                                               directory: Directory) -> None:
    await store.apply_directory(directory)
    users = tuple(dataclasses.replace(u, name="Renamed") if u.extension == "101" else u
                  for u in directory.users)
    changed = dataclasses.replace(directory, users=users)
    with pytest.raises(RevisionConflict) as caught:
        await store.apply_directory(changed, expect_revision=0)
    assert caught.value.current == 1
    loaded = await store.load_directory()
    assert loaded is not None and loaded.user("101").name == "Alice Martin"  # type: ignore[union-attr]
    entry = new_audit("user:101", "127.0.0.1", "users.update", "users/101",
                      {"name": "Alice Martin"}, {"name": "Renamed"})
    report = await store.apply_directory(changed, expect_revision=1, audit=entry)
    assert report.revision == 2
    [logged] = await store.list_audit()
    assert logged == entry


async def test_web_password_ends_sessions(store: Store) -> None:
    now = time.time()
    assert await store.web_password_hash("101") is None
    await store.set_web_password("101", "hash-1")
    await store.create_session(Session(token_hash="t1", extension="101", created_at=now,
                                       expires_at=now + 60, source="127.0.0.1"))
    found = await store.session("t1", now)
    assert found is not None and found.extension == "101" and found.source == "127.0.0.1"
    assert await store.session("t1", now + 61) is None  # expired: gone
    await store.create_session(Session(token_hash="t2", extension="101", created_at=now,
                                       expires_at=now + 60))
    await store.set_web_password("101", "hash-2")
    assert await store.web_password_hash("101") == "hash-2"
    assert await store.session("t2", now) is None
    assert await store.web_password_extensions() == {"101"}


async def test_api_keys_are_revocable(store: Store) -> None:
    key = ApiKey(id="abc123", name="hr-sync", role="manager", secret_hash=sha256("s"),
                 created_at=time.time())
    await store.create_api_key(key)
    assert await store.api_key("abc123") == key
    assert await store.revoke_api_key("abc123", time.time())
    assert not await store.revoke_api_key("abc123", time.time())  # once
    revoked = await store.api_key("abc123")
    assert revoked is not None and revoked.revoked_at is not None
    assert [k.id for k in await store.list_api_keys()] == ["abc123"]


async def test_totp_steps_and_recovery_codes_are_used_once(store: Store) -> None:
    await store.set_totp(TotpRecord(extension="101", secret="JBSWY3DPEHPK3PXP",
                                    recovery_hashes=(sha256("a"), sha256("b"))))
    assert await store.use_totp_counter("101", 100)
    assert not await store.use_totp_counter("101", 100)  # replay
    assert not await store.use_totp_counter("101", 99)  # older
    assert await store.use_totp_counter("101", 101)
    assert await store.use_recovery_code("101", sha256("a"))
    assert not await store.use_recovery_code("101", sha256("a"))
    record = await store.totp("101")
    assert record is not None and record.recovery_hashes == (sha256("b"),)
    assert await store.delete_totp("101") and await store.totp("101") is None


async def test_removing_a_user_removes_their_accounts(store: Store,
                                                      directory: Directory) -> None:
    await store.apply_directory(directory)
    now = time.time()
    await store.set_web_password("203", "h")
    await store.set_totp(TotpRecord(extension="203", secret="JBSWY3DPEHPK3PXP"))
    await store.create_session(Session(token_hash="t", extension="203", created_at=now,
                                       expires_at=now + 60))
    users = tuple(u for u in directory.users if u.extension != "203")
    await store.apply_directory(dataclasses.replace(directory, users=users))
    assert await store.web_password_hash("203") is None
    assert await store.totp("203") is None
    assert await store.session("t", now) is None


async def test_audit_lists_newest_first_and_by_target(store: Store) -> None:
    for i in range(3):
        entry = dataclasses.replace(new_audit("cli", "cli", "status.set", f"users/10{i}"),
                                    at=1000.0 + i)
        await store.write_audit(entry)
    entries = await store.list_audit()
    assert [e.target for e in entries] == ["users/102", "users/101", "users/100"]
    assert [e.target for e in await store.list_audit(target="users/101")] == ["users/101"]
    assert [e.target for e in await store.list_audit(before=1001.5)] == ["users/101",
                                                                         "users/100"]
    assert len(await store.list_audit(limit=1)) == 1


async def test_schema_1_database_is_upgraded(backend: Backend) -> None:
    async with backend.make():
        pass
    await backend.sql("UPDATE meta SET value = '1' WHERE key = 'schema_version';"
                      "DROP TABLE audit;")
    async with backend.make() as reopened:
        await reopened.write_audit(new_audit("cli", "cli", "x", "y"))
        assert len(await reopened.list_audit()) == 1


async def test_reset_tokens_are_one_time_short_lived_and_ended_by_a_new_password(
        store: Store, directory: Directory) -> None:
    await store.apply_directory(directory)
    now = time.time()
    await store.create_reset_token("101", sha256("first"), now, now + 60)
    await store.create_reset_token("101", sha256("second"), now, now + 60)
    assert await store.take_reset_token(sha256("first"), now) is None  # a newer link ends it
    assert await store.take_reset_token(sha256("second"), now) == "101"
    assert await store.take_reset_token(sha256("second"), now) is None  # used up
    await store.create_reset_token("102", sha256("late"), now, now + 60)
    assert await store.take_reset_token(sha256("late"), now + 61) is None  # expired
    await store.create_reset_token("102", sha256("third"), now, now + 60)
    await store.set_web_password("102", "$argon2id$v=19$m=1,t=1,p=1$c2FsdA$aGFzaA")
    assert await store.take_reset_token(sha256("third"), now) is None  # a new password


async def test_a_begun_enrolment_is_confirmed_once_and_goes_with_its_user(
        store: Store, directory: Directory) -> None:
    await store.apply_directory(directory)
    await store.set_totp_pending("102", "sealed-one", 10.0)
    await store.set_totp_pending("102", "sealed-two", 20.0)  # begun again: replaces
    assert await store.totp_pending("102") == ("sealed-two", 20.0)
    assert await store.totp("102") is None  # begun is not on
    record = TotpRecord(extension="102", secret="sealed-two", recovery_hashes=("h1",),
                        last_counter=7, created_at=30.0)
    assert await store.confirm_totp(record)
    assert not await store.confirm_totp(record)  # once
    assert await store.totp_pending("102") is None
    assert await store.totp("102") == record
    assert [r.extension for r in await store.all_totp()] == ["102"]
    assert not await store.set_totp_secret("102", "not-what-is-stored", "x")
    assert await store.set_totp_secret("102", "sealed-two", "sealed-three")
    assert (await store.totp("102")).secret == "sealed-three"  # type: ignore[union-attr]
    await store.set_totp_pending("203", "pending", 40.0)
    gone = dataclasses.replace(directory, users=tuple(u for u in directory.users
                                                      if u.extension != "203"))
    await store.apply_directory(gone)
    assert await store.totp_pending("203") is None  # a new 203 starts afresh
    assert await store.delete_totp_pending("102") is False


async def test_failures_counted_at_once_by_two_nodes_are_all_counted(
        backend: Backend) -> None:
    async with backend.make() as one, backend.make() as two:
        now = time.time()
        locks = await asyncio.gather(*(
            (one, two)[i % 2].attempt_failed("sign_in", "k", limit=12, window=60,
                                             lock_seconds=30, now=now) for i in range(12)))
        assert sum(locks) == 1  # exactly the twelfth locked it, whichever node counted it
        assert await two.attempts_locked("sign_in", ["k", "other"], now + 1) == {
            "k": now + 30}
        assert await one.attempts_locked("sign_in", ["k"], now + 31) == {}
        await one.attempts_cleared("sign_in", "k")
        assert not await two.attempt_failed("sign_in", "k", limit=12, window=60,
                                            lock_seconds=30, now=now + 32)
