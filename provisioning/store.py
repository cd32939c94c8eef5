"""The store: one async interface, two backends (SQLite and PostgreSQL).

Storage design (identical in both databases)::

    meta             (key PRIMARY KEY, value)           schema_version = 1
    directory_rows   (tbl, key, position, body)         PRIMARY KEY (tbl, key)
    status_overrides (extension PRIMARY KEY, status, set_at)
    bindings         (aor, contact, expires_at, q, call_id, cseq, source,
                      user_agent, instance, reg_id)     PRIMARY KEY (aor, contact)

``directory_rows`` holds each directory table as rows keyed by their natural
key (``system``; trunks, departments and ring groups by name; numbers by
number; users by extension).  ``body`` is the canonical JSON of the row as
written by :func:`provisioning.directory.directory_to_dict` (every value
explicit, keys sorted), and ``position`` its index in the file.

Idempotency: :meth:`Store.apply_directory` builds the canonical rows of the
new directory and compares them with the stored ones inside one transaction;
only rows whose body differs are written.  Applying the same directory twice
therefore writes nothing and reports nothing.  Position alone is never
reported per row (removing the first user shifts the others); a table is
reported as ``reordered`` only when the relative order of the rows it keeps
has changed.

Live status: ``set_user_status`` writes ``status_overrides``, never the
directory rows.  :meth:`Store.load_directory` returns users with their
override applied.  Re-applying a file keeps an override, unless the file
changes that user's configured ``status`` (the admin's newer intent wins) or
removes the user; both drop the override in the same transaction.  Removing
a user also drops its bindings.

The hot path never reads the store: the engine keeps an in-memory snapshot.
"""

from __future__ import annotations

import abc
import asyncio
import json
import re
import time
import urllib.parse
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol

import aiosqlite
import asyncpg

from provisioning.directory import (
    TABLE_KEYS,
    TABLES,
    directory_to_dict,
    parse_directory,
    table_rows,
    with_statuses,
)
from provisioning.model import STATUSES, Binding, Directory, Status, VoicemailMessage

__all__ = [
    "SCHEMA_VERSION",
    "ApplyReport",
    "Change",
    "PostgresStore",
    "SQLiteStore",
    "Store",
    "StoreError",
    "UnknownExtensionError",
    "open_store",
]

SCHEMA_VERSION = 1
DEFAULT_SQLITE_NAME = "switchboard.db"

Action = Literal["added", "changed", "removed", "reordered"]

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS directory_rows (
        tbl TEXT NOT NULL,
        key TEXT NOT NULL,
        position INTEGER NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (tbl, key))""",
    """CREATE TABLE IF NOT EXISTS status_overrides (
        extension TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        set_at DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS bindings (
        aor TEXT NOT NULL,
        contact TEXT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        q DOUBLE PRECISION NOT NULL,
        call_id TEXT NOT NULL,
        cseq BIGINT NOT NULL,
        source TEXT NOT NULL,
        user_agent TEXT NOT NULL,
        instance TEXT NOT NULL,
        reg_id INTEGER,
        PRIMARY KEY (aor, contact))""",
    "CREATE INDEX IF NOT EXISTS bindings_expires_at ON bindings (expires_at)",
    """CREATE TABLE IF NOT EXISTS voicemail (
        id TEXT PRIMARY KEY,
        box TEXT NOT NULL,
        caller TEXT NOT NULL,
        time DOUBLE PRECISION NOT NULL,
        duration DOUBLE PRECISION NOT NULL,
        path TEXT NOT NULL,
        is_read BOOLEAN NOT NULL DEFAULT FALSE)""",
    "CREATE INDEX IF NOT EXISTS voicemail_box ON voicemail (box, time)",
)

_BINDING_COLUMNS = (
    "aor, contact, expires_at, q, call_id, cseq, source, user_agent, instance, reg_id"
)
_UPSERT_BINDING = (
    f"INSERT INTO bindings ({_BINDING_COLUMNS}) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) "
    "ON CONFLICT (aor, contact) DO UPDATE SET expires_at = excluded.expires_at, "
    "q = excluded.q, call_id = excluded.call_id, cseq = excluded.cseq, "
    "source = excluded.source, user_agent = excluded.user_agent, "
    "instance = excluded.instance, reg_id = excluded.reg_id"
)


async def _bump_revision(tx: _Tx, key: str = "revision") -> None:
    await tx.execute(
        "INSERT INTO meta (key, value) VALUES ($1, '1') ON CONFLICT (key) DO UPDATE "
        "SET value = CAST(CAST(meta.value AS BIGINT) + 1 AS TEXT)", key
    )


def _binding_row(b: Binding) -> tuple[object, ...]:
    return (b.aor, b.contact, float(b.expires_at), float(b.q), b.call_id, b.cseq, b.source,
            b.user_agent, b.instance, b.reg_id)


class StoreError(Exception):
    """The store cannot do what was asked (connection, schema, bad URL...)."""


class UnknownExtensionError(StoreError, LookupError):
    """No user has this extension in the stored directory."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown extension"


# --------------------------------------------------------------------------- reports


@dataclass(frozen=True, slots=True)
class Change:
    """One difference applied to the store.

    ``key`` is the row's natural key (``"system"`` for the system table, ``""``
    for ``reordered``); ``fields`` lists the dotted keys that differ for
    ``changed`` (e.g. ``forwarding.away.no_answer_seconds``).
    """

    table: str
    key: str
    action: Action
    fields: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ApplyReport:
    """What an apply changed, in table order (system, trunks, ..., users)."""

    changes: tuple[Change, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    def _keys(self, action: Action, table: str) -> tuple[str, ...]:
        return tuple(c.key for c in self.changes if c.action == action and c.table == table)

    def added(self, table: str) -> tuple[str, ...]:
        return self._keys("added", table)

    def updated(self, table: str) -> tuple[str, ...]:
        """Keys of the rows of ``table`` whose content changed."""
        return self._keys("changed", table)

    def removed(self, table: str) -> tuple[str, ...]:
        return self._keys("removed", table)

    def reordered(self, table: str) -> bool:
        return any(c.action == "reordered" and c.table == table for c in self.changes)


# --------------------------------------------------------------------------- interface


class Store(abc.ABC):
    """The async store interface.  Use ``async with store:`` or ``open()``/``close()``."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and create the schema if it is missing."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the connection(s); safe to call twice."""

    @abc.abstractmethod
    async def apply_directory(self, directory: Directory) -> ApplyReport:
        """Make the stored directory equal ``directory``, in one transaction.

        ``directory`` is validated again first (``DirectoryError`` when it is
        invalid); on any error nothing is changed.
        """

    @abc.abstractmethod
    async def load_directory(self) -> Directory | None:
        """The stored directory with live statuses applied; ``None`` if never applied."""

    @abc.abstractmethod
    async def set_user_status(self, extension: str, status: str) -> None:
        """Set a user's live status.

        Raises ``ValueError`` for an unknown status and
        :class:`UnknownExtensionError` for an extension that is not a user.
        """

    @abc.abstractmethod
    async def clear_user_status(self, extension: str) -> bool:
        """Drop a live status (the directory's applies again); True if one was set."""

    @abc.abstractmethod
    async def revision(self) -> int:
        """A number that changes whenever the directory or a live status changes.

        A running engine polls it (cheap) and reloads its snapshot when it moved,
        so ``provision apply`` and ``status set`` take effect without a restart.
        """

    @abc.abstractmethod
    async def load_status_overrides(self) -> dict[str, Status]:
        """The live statuses set by ``status set`` (extension -> status)."""

    @abc.abstractmethod
    async def save_voicemail(self, message: VoicemailMessage) -> None:
        """Store a new message (its WAV is already written)."""

    @abc.abstractmethod
    async def list_voicemail(self, box: str) -> list[VoicemailMessage]:
        """The messages of ``box``, oldest first."""

    @abc.abstractmethod
    async def delete_voicemail(self, box: str, message_id: str) -> VoicemailMessage | None:
        """Remove one message; returns it (to delete its file), None if absent."""

    @abc.abstractmethod
    async def mark_voicemail_read(self, box: str, message_id: str) -> bool: ...

    @abc.abstractmethod
    async def voicemail_counts(self) -> dict[str, tuple[int, int]]:
        """(new, old) messages per mailbox that has any (RFC 3842 message-summary)."""

    @abc.abstractmethod
    async def voicemail_revision(self) -> int:
        """Moves whenever a message is left, read or deleted (message waiting lamps)."""

    @abc.abstractmethod
    async def write_bindings(
        self, saved: Sequence[Binding], deleted: Sequence[tuple[str, str]] = ()
    ) -> None:
        """Upsert ``saved`` and delete the (aor, contact) pairs ``deleted``, atomically."""

    async def save_binding(self, binding: Binding) -> None:
        """Insert or replace the binding of (``aor``, ``contact``)."""
        await self.write_bindings([binding])

    async def delete_binding(self, aor: str, contact: str) -> None:
        await self.write_bindings([], [(aor, contact)])

    @abc.abstractmethod
    async def delete_bindings(self, aor: str) -> None: ...

    @abc.abstractmethod
    async def load_bindings(self) -> list[Binding]:
        """All bindings, expired or not, by aor then q (highest first)."""

    @abc.abstractmethod
    async def purge_expired_bindings(self, now: float) -> int:
        """Delete bindings with ``expires_at <= now``; return how many."""

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def open_store(url: str | None, data_dir: Path, *, schema: str | None = None) -> Store:
    """Pick the backend for ``url`` (the store is returned unopened).

    - ``None`` or ``"sqlite://"``: SQLite at ``<data_dir>/switchboard.db``
    - ``"sqlite:///abs/path.db"``: SQLite at that absolute path (URL form, like ``file://``)
    - ``"postgresql://..."`` or ``"postgres://..."``: PostgreSQL; ``schema`` isolates it
    """
    if url is None or url in ("sqlite://", "sqlite:"):
        return SQLiteStore(Path(data_dir) / DEFAULT_SQLITE_NAME)
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        parsed = urllib.parse.urlsplit(url)
        if parsed.netloc or not parsed.path:
            raise StoreError(f"unsupported SQLite URL '{url}': use sqlite:///absolute/path.db")
        return SQLiteStore(Path(urllib.parse.unquote(parsed.path)))
    if scheme in ("postgresql", "postgres"):
        return PostgresStore(url, schema=schema)
    raise StoreError(
        f"unsupported database URL '{_redact(url)}' "
        "(expected sqlite:///path or postgresql://host/db)"
    )


def _redact(url: str) -> str:
    """``url`` with any password replaced, for messages."""
    return re.sub(r"(//[^/@:]*):[^/@]*@", r"\1:***@", url)


# --------------------------------------------------------------------------- shared SQL logic


class _Tx(Protocol):
    """One transaction's statements.  SQL uses ``$1``-style parameters."""

    async def execute(self, sql: str, *args: object) -> None: ...

    async def executemany(self, sql: str, rows: Sequence[tuple[object, ...]]) -> None: ...

    async def fetch(self, sql: str, *args: object) -> list[tuple[Any, ...]]: ...


Rows = dict[tuple[str, str], tuple[int, str]]  # (tbl, key) -> (position, body)


def _canonical_rows(directory: Directory) -> Rows:
    rows: Rows = {}
    for table, items in table_rows(directory).items():
        for position, item in enumerate(items):
            key = "system" if table == "system" else str(item[TABLE_KEYS[table]])
            rows[(table, key)] = (position, json.dumps(item, sort_keys=True))
    return rows


def _diff_fields(old: object, new: object, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        fields: list[str] = []
        for key in sorted(old.keys() | new.keys()):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in old or key not in new:
                fields.append(path)
            else:
                fields.extend(_diff_fields(old[key], new[key], path))
        return fields
    return [] if old == new else [prefix or "(value)"]


def _plan(old: Rows, new: Rows) -> list[Change]:
    changes: list[Change] = []
    for table in TABLES:
        old_keys = sorted((k for t, k in old if t == table), key=lambda k: old[(table, k)][0])
        new_keys = sorted((k for t, k in new if t == table), key=lambda k: new[(table, k)][0])
        for key in new_keys:
            if (table, key) not in old:
                changes.append(Change(table, key, "added"))
            elif old[(table, key)][1] != new[(table, key)][1]:
                fields = _diff_fields(
                    json.loads(old[(table, key)][1]), json.loads(new[(table, key)][1])
                )
                changes.append(Change(table, key, "changed", tuple(fields)))
        changes.extend(Change(table, key, "removed") for key in old_keys if (table, key) not in new)
        kept_old = [k for k in old_keys if (table, k) in new]
        kept_new = [k for k in new_keys if (table, k) in old]
        if kept_old != kept_new:
            changes.append(Change(table, "", "reordered"))
    return changes


def _status_of(body: str) -> object:
    data = json.loads(body)
    return data.get("status") if isinstance(data, dict) else None


class _SQLStore(Store):
    """Everything but the connection handling, written once for both databases."""

    _for_share = ""  # row-lock suffix for reads that must not race an apply

    @abc.abstractmethod
    def _transaction(self) -> AbstractAsyncContextManager[_Tx]:
        """A transaction; commits on normal exit, rolls back on an exception."""

    async def _lock_for_apply(self, tx: _Tx) -> None:
        """Serialise concurrent applies (no-op where the transaction already does)."""

    async def _create_schema(self) -> None:
        async with self._transaction() as tx:
            await self._lock_for_apply(tx)
            for statement in _SCHEMA:
                await tx.execute(statement)
            found = await tx.fetch("SELECT value FROM meta WHERE key = 'schema_version'")
            if not found:
                await tx.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', $1)",
                    str(SCHEMA_VERSION),
                )
            elif int(found[0][0]) > SCHEMA_VERSION:
                raise StoreError(
                    f"the database has schema version {found[0][0]}, newer than this "
                    f"Switchboard supports ({SCHEMA_VERSION}); upgrade Switchboard"
                )

    # ------------------------------------------------------------------ directory

    async def apply_directory(self, directory: Directory) -> ApplyReport:
        canonical = parse_directory(directory_to_dict(directory), "<apply_directory>")
        new = _canonical_rows(canonical)
        async with self._transaction() as tx:
            await self._lock_for_apply(tx)
            old: Rows = {
                (str(t), str(k)): (int(p), str(b))
                for t, k, p, b in await tx.fetch(
                    "SELECT tbl, key, position, body FROM directory_rows"
                )
            }
            changes = _plan(old, new)
            for (table, key), (position, body) in new.items():
                before = old.get((table, key))
                if before is None:
                    await tx.execute(
                        "INSERT INTO directory_rows (tbl, key, position, body) "
                        "VALUES ($1, $2, $3, $4)",
                        table,
                        key,
                        position,
                        body,
                    )
                elif before != (position, body):
                    await tx.execute(
                        "UPDATE directory_rows SET position = $3, body = $4 "
                        "WHERE tbl = $1 AND key = $2",
                        table,
                        key,
                        position,
                        body,
                    )
                    if table == "users" and _status_of(before[1]) != _status_of(body):
                        await tx.execute("DELETE FROM status_overrides WHERE extension = $1", key)
            for table, key in old.keys() - new.keys():
                await tx.execute(
                    "DELETE FROM directory_rows WHERE tbl = $1 AND key = $2", table, key
                )
                if table == "users":
                    await tx.execute("DELETE FROM bindings WHERE aor = $1", key)
                    # the admin guide's warning: deleting a user deletes their voicemail
                    await tx.execute("DELETE FROM voicemail WHERE box = $1", key)
                    await _bump_revision(tx, "voicemail_revision")
            await tx.execute(
                "DELETE FROM status_overrides WHERE extension NOT IN "
                "(SELECT key FROM directory_rows WHERE tbl = 'users')"
            )
            if changes:
                await _bump_revision(tx)
        return ApplyReport(tuple(changes))

    async def save_voicemail(self, message: VoicemailMessage) -> None:
        async with self._transaction() as tx:
            await tx.execute(
                "INSERT INTO voicemail (id, box, caller, time, duration, path, is_read) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7)",
                message.id, message.box, message.caller, float(message.time),
                float(message.duration), message.path, message.read)
            await _bump_revision(tx, "voicemail_revision")

    async def list_voicemail(self, box: str) -> list[VoicemailMessage]:
        async with self._transaction() as tx:
            rows = await tx.fetch(
                "SELECT id, box, caller, time, duration, path, is_read FROM voicemail "
                "WHERE box = $1 ORDER BY time, id", box)
        return [_voicemail(row) for row in rows]

    async def delete_voicemail(self, box: str, message_id: str) -> VoicemailMessage | None:
        async with self._transaction() as tx:
            rows = await tx.fetch(
                "DELETE FROM voicemail WHERE box = $1 AND id = $2 "
                "RETURNING id, box, caller, time, duration, path, is_read", box, message_id)
            if rows:
                await _bump_revision(tx, "voicemail_revision")
        return _voicemail(rows[0]) if rows else None

    async def mark_voicemail_read(self, box: str, message_id: str) -> bool:
        async with self._transaction() as tx:
            rows = await tx.fetch(
                "UPDATE voicemail SET is_read = TRUE WHERE box = $1 AND id = $2 RETURNING id",
                box, message_id)
            if rows:
                await _bump_revision(tx, "voicemail_revision")
        return bool(rows)

    async def voicemail_counts(self) -> dict[str, tuple[int, int]]:
        async with self._transaction() as tx:
            rows = await tx.fetch(
                "SELECT box, SUM(CASE WHEN is_read THEN 0 ELSE 1 END), "
                "SUM(CASE WHEN is_read THEN 1 ELSE 0 END) FROM voicemail GROUP BY box")
        return {str(box): (int(new), int(old)) for box, new, old in rows}

    async def voicemail_revision(self) -> int:
        async with self._transaction() as tx:
            found = await tx.fetch("SELECT value FROM meta WHERE key = 'voicemail_revision'")
        return int(found[0][0]) if found else 0

    async def revision(self) -> int:
        async with self._transaction() as tx:
            found = await tx.fetch("SELECT value FROM meta WHERE key = 'revision'")
        return int(found[0][0]) if found else 0

    async def load_status_overrides(self) -> dict[str, Status]:
        async with self._transaction() as tx:
            rows = await tx.fetch("SELECT extension, status FROM status_overrides")
        return {str(ext): STATUSES[STATUSES.index(status)] for ext, status in rows
                if status in STATUSES}

    async def load_directory(self) -> Directory | None:
        async with self._transaction() as tx:
            rows = await tx.fetch("SELECT tbl, body FROM directory_rows ORDER BY tbl, position")
            overrides = await tx.fetch("SELECT extension, status FROM status_overrides")
        data: dict[str, Any] = {}
        for table, body in rows:
            if table == "system":
                data["system"] = json.loads(body)
            else:
                data.setdefault(str(table), []).append(json.loads(body))
        if "system" not in data:
            return None
        directory = parse_directory(data, "<store>")
        statuses: dict[str, Status] = {
            str(ext): STATUSES[STATUSES.index(status)]
            for ext, status in overrides
            if status in STATUSES
        }
        return with_statuses(directory, statuses)

    async def set_user_status(self, extension: str, status: str) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown status '{status}' (expected one of: {', '.join(STATUSES)})")
        async with self._transaction() as tx:
            found = await tx.fetch(
                "SELECT 1 FROM directory_rows WHERE tbl = 'users' AND key = $1" + self._for_share,
                extension,
            )
            if not found:
                raise UnknownExtensionError(f"unknown extension '{extension}' (no such user)")
            await tx.execute(
                "INSERT INTO status_overrides (extension, status, set_at) VALUES ($1, $2, $3) "
                "ON CONFLICT (extension) DO UPDATE SET status = excluded.status, "
                "set_at = excluded.set_at",
                extension,
                status,
                time.time(),
            )
            await _bump_revision(tx)

    async def clear_user_status(self, extension: str) -> bool:
        async with self._transaction() as tx:
            gone = await tx.fetch(
                "DELETE FROM status_overrides WHERE extension = $1 RETURNING extension", extension
            )
            if gone:
                await _bump_revision(tx)
        return bool(gone)

    # ------------------------------------------------------------------ bindings

    async def write_bindings(
        self, saved: Sequence[Binding], deleted: Sequence[tuple[str, str]] = ()
    ) -> None:
        """Upsert ``saved`` and delete ``deleted`` (aor, contact) pairs in one transaction.

        The registrar's write-through batches what piled up while the last
        batch was written: one commit per batch, not per REGISTER.
        """
        for binding in saved:
            if not binding.aor or not binding.contact:
                raise ValueError("a binding needs an aor and a contact")
        if not saved and not deleted:
            return
        async with self._transaction() as tx:
            if deleted:
                await tx.executemany(
                    "DELETE FROM bindings WHERE aor = $1 AND contact = $2",
                    [(aor, contact) for aor, contact in deleted],
                )
            if saved:
                await tx.executemany(_UPSERT_BINDING, [_binding_row(b) for b in saved])

    async def delete_bindings(self, aor: str) -> None:
        async with self._transaction() as tx:
            await tx.execute("DELETE FROM bindings WHERE aor = $1", aor)

    async def load_bindings(self) -> list[Binding]:
        async with self._transaction() as tx:
            rows = await tx.fetch(
                f"SELECT {_BINDING_COLUMNS} FROM bindings ORDER BY aor, q DESC, contact"
            )
        return [_binding(row) for row in rows]

    async def purge_expired_bindings(self, now: float) -> int:
        async with self._transaction() as tx:
            gone = await tx.fetch(
                "DELETE FROM bindings WHERE expires_at <= $1 RETURNING aor", float(now)
            )
        return len(gone)


def _voicemail(row: tuple[Any, ...]) -> VoicemailMessage:
    id_, box, caller, when, duration, path, is_read = row
    return VoicemailMessage(id=str(id_), box=str(box), caller=str(caller), time=float(when),
                            duration=float(duration), path=str(path), read=bool(is_read))


def _binding(row: tuple[Any, ...]) -> Binding:
    aor, contact, expires_at, q, call_id, cseq, source, user_agent, instance, reg_id = row
    return Binding(
        aor=str(aor),
        contact=str(contact),
        expires_at=float(expires_at),
        q=float(q),
        call_id=str(call_id),
        cseq=int(cseq),
        source=str(source),
        user_agent=str(user_agent),
        instance=str(instance),
        reg_id=None if reg_id is None else int(reg_id),
    )


# --------------------------------------------------------------------------- SQLite


_DOLLAR_PARAM = re.compile(r"\$(\d+)")


class _SQLiteTx:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn

    async def execute(self, sql: str, *args: object) -> None:
        await self.conn.execute(_DOLLAR_PARAM.sub(r"?\1", sql), args)

    async def executemany(self, sql: str, rows: Sequence[tuple[object, ...]]) -> None:
        await self.conn.executemany(_DOLLAR_PARAM.sub(r"?\1", sql), rows)

    async def fetch(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        rows = await self.conn.execute_fetchall(_DOLLAR_PARAM.sub(r"?\1", sql), args)
        return [tuple(row) for row in rows]


class SQLiteStore(_SQLStore):
    """SQLite through aiosqlite: one file, one connection, WAL journal.

    Statements of one store are serialised by a lock (one connection carries
    one transaction at a time); other processes wait on the file lock
    (``BEGIN IMMEDIATE`` with a busy timeout).
    """

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 5000) -> None:
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    async def open(self) -> None:
        if self._conn is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = await aiosqlite.connect(self.path, isolation_level=None)
        except (OSError, aiosqlite.Error) as exc:
            raise StoreError(f"cannot open the SQLite database {self.path}: {exc}") from exc
        try:
            await conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            await conn.execute("PRAGMA journal_mode = WAL")
            await conn.execute("PRAGMA synchronous = NORMAL")
            self._conn = conn
            await self._create_schema()
        except BaseException:
            self._conn = None
            await conn.close()
            raise

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[_Tx]:
        conn = self._conn
        if conn is None:
            raise StoreError(f"{self!r} is not open")
        async with self._lock:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                yield _SQLiteTx(conn)
            except BaseException:
                await conn.execute("ROLLBACK")
                raise
            await conn.execute("COMMIT")


# --------------------------------------------------------------------------- PostgreSQL


_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class _PostgresTx:
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def execute(self, sql: str, *args: object) -> None:
        await self.conn.execute(sql, *args)

    async def executemany(self, sql: str, rows: Sequence[tuple[object, ...]]) -> None:
        await self.conn.executemany(sql, rows)

    async def fetch(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        rows: Sequence[Any] = await self.conn.fetch(sql, *args)
        return [tuple(row.values()) for row in rows]


class PostgresStore(_SQLStore):
    """PostgreSQL through an asyncpg pool.

    ``schema`` (lower-case letters, digits, ``_``) is created if missing and
    used as the ``search_path``, so several stores can share one database.
    """

    _for_share = " FOR SHARE"

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        min_connections: int = 1,
        max_connections: int = 4,
    ) -> None:
        if schema is not None and not _SCHEMA_NAME.fullmatch(schema):
            raise StoreError(
                f"invalid schema name '{schema}' (lower-case letters, digits and _, "
                "not starting with a digit)"
            )
        self.url = url
        self.schema = schema
        self.min_connections = min_connections
        self.max_connections = max_connections
        self._pool: Any = None

    def __repr__(self) -> str:
        return f"PostgresStore({_redact(self.url)!r}, schema={self.schema!r})"

    async def open(self) -> None:
        if self._pool is not None:
            return
        settings: Mapping[str, str] = {}
        try:
            if self.schema is not None:
                conn = await asyncpg.connect(self.url)
                try:
                    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                except (asyncpg.UniqueViolationError, asyncpg.DuplicateSchemaError):
                    pass  # created by another process at the same moment
                finally:
                    await conn.close()
                settings = {"search_path": self.schema}
            pool = await asyncpg.create_pool(
                self.url,
                min_size=self.min_connections,
                max_size=self.max_connections,
                server_settings=dict(settings),
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"cannot connect to PostgreSQL at {_redact(self.url)}: {exc}") from exc
        self._pool = pool
        try:
            await self._create_schema()
        except BaseException:
            self._pool = None
            await pool.close()
            raise

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[_Tx]:
        pool = self._pool
        if pool is None:
            raise StoreError(f"{self!r} is not open")
        async with pool.acquire() as conn, conn.transaction():
            yield _PostgresTx(conn)

    async def _lock_for_apply(self, tx: _Tx) -> None:
        # A transaction-scoped advisory lock: schema creation and applies from
        # several processes run one at a time.  Table creation races otherwise.
        await tx.execute("SELECT pg_advisory_xact_lock(hashtext('switchboard.directory'))")
