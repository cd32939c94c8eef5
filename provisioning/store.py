"""The store: one async interface, two backends (SQLite and PostgreSQL).

Storage design (identical in both databases)::

    meta             (key PRIMARY KEY, value)           schema_version = 1
    directory_rows   (tbl, key, position, body)         PRIMARY KEY (tbl, key)
    status_overrides (extension PRIMARY KEY, status, set_at)
    bindings         (aor, contact, expires_at, q, call_id, cseq, source,
                      user_agent, instance, reg_id, path)
                                                        PRIMARY KEY (aor, contact)

A binding's ``path`` is its REGISTER's Path header values (RFC 3327) as a JSON
array of strings, ``[]`` when the phone registered directly.

Several engine processes (nodes) share bindings through the store. Each write
stamps the rows it touches with ``rev`` (the next ``bindings_revision``, a meta
row every binding write locks, so revisions commit in order) and the writing
``node``; a deleted binding stays as a row with ``gone`` set until purged, so
:meth:`Store.bindings_since` reports deletions as well as saves. ``nodes`` holds
each running node's heartbeat (id, address, started, last seen, load).
``dialogs`` holds a record per answered call (its dialogs as JSON) under the node
that holds it; :meth:`Store.take_over` lets one survivor claim a dead node's.
Busy lamps across nodes: ``watches`` (node, resource) says which resources
(extensions, park orbits) a node's dialog and presence subscriptions watch;
``lamps`` (node, resource, dialogs as JSON) holds the dialogs a node published for
a resource some other node watches. Every write of either moves ``lamps_revision``
(a meta row), so a reader asks :meth:`Store.lamps_state` for everything only when
it moved; a dead node's rows go with its ``nodes`` row in :meth:`Store.take_over`.

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
import logging
import re
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol

import aiosqlite
import asyncpg

from provisioning.directory import (
    ROW_WRITERS,
    TABLE_KEYS,
    TABLES,
    DirectoryError,
    ParseMemo,
    directory_to_dict,
    parse_directory,
    system_to_dict,
    table_rows,
    with_statuses,
)
from provisioning.model import (
    DIALOG_DIRECTIONS,
    DIALOG_STATES,
    ROLES,
    STATUSES,
    ApiKey,
    AuditEntry,
    Binding,
    DialogLeg,
    DialogRecord,
    DialogView,
    Directory,
    LampSnapshot,
    Node,
    Session,
    Status,
    TotpRecord,
    VoicemailMessage,
)

__all__ = [
    "SCHEMA_VERSION",
    "ApplyReport",
    "BindingChanges",
    "Change",
    "DirectorySnapshot",
    "PostgresStore",
    "RevisionConflict",
    "SQLiteStore",
    "Store",
    "StoreError",
    "Takeover",
    "UnknownExtensionError",
    "connection_lost",
    "open_store",
]

SCHEMA_VERSION = 3
DEFAULT_SQLITE_NAME = "switchboard.db"
CONNECT_SECONDS = 10.0  # opening one PostgreSQL connection
# PostgreSQL: binding writes NOTIFY this channel (suffixed with the schema) in their
# transaction, so the other nodes read them at once instead of at their next poll.
BINDINGS_CHANNEL = "switchboard_bindings"
# ... and lamp writes (watches, published dialogs) this one, read the same way.
LAMPS_CHANNEL = "switchboard_lamps"

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
        path TEXT NOT NULL DEFAULT '[]',
        node TEXT NOT NULL DEFAULT '',
        rev BIGINT NOT NULL DEFAULT 0,
        gone BOOLEAN NOT NULL DEFAULT FALSE,
        PRIMARY KEY (aor, contact))""",
    """CREATE TABLE IF NOT EXISTS nodes (
        id TEXT PRIMARY KEY,
        address TEXT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        last_seen DOUBLE PRECISION NOT NULL,
        calls INTEGER NOT NULL,
        registrations INTEGER NOT NULL)""",
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
    # Accounts of the admin API (schema 2). Web passwords are argon2 hashes and
    # separate from SIP digest secrets; tokens and API keys are kept as SHA-256.
    """CREATE TABLE IF NOT EXISTS web_credentials (
        extension TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        changed_at DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS sessions (
        token_hash TEXT PRIMARY KEY,
        extension TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        source TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS sessions_extension ON sessions (extension)",
    """CREATE TABLE IF NOT EXISTS api_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        department TEXT NOT NULL,
        secret_hash TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        revoked_at DOUBLE PRECISION)""",
    """CREATE TABLE IF NOT EXISTS totp (
        extension TEXT PRIMARY KEY,
        secret TEXT NOT NULL,
        recovery TEXT NOT NULL,
        last_counter BIGINT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL)""",
    # One-time links to set a web password (welcome and reset emails): only the SHA-256
    # of the token is kept, taken (deleted) by its one use, and dropped by any new
    # password, a newer link or the user's removal.
    """CREATE TABLE IF NOT EXISTS reset_tokens (
        token_hash TEXT PRIMARY KEY,
        extension TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL)""",
    # An enrolment begun and not yet confirmed with a code (the seed sealed, as in
    # totp): it signs nobody in; confirming moves it to totp.
    """CREATE TABLE IF NOT EXISTS totp_pending (
        extension TEXT PRIMARY KEY,
        secret TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL)""",
    # Failed sign-ins and reset requests, counted in the store so every node sharing
    # it counts the same attempts (a guesser cannot spread them over the nodes).
    # key: a SHA-256 (of "user:101", "name:<as typed>", "source:<address>"), so no
    # identifier typed by a stranger is kept.
    """CREATE TABLE IF NOT EXISTS rate_limits (
        scope TEXT NOT NULL,
        key TEXT NOT NULL,
        window_start DOUBLE PRECISION NOT NULL,
        failures INTEGER NOT NULL,
        locked_until DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (scope, key))""",
    "CREATE INDEX IF NOT EXISTS rate_limits_expires_at ON rate_limits (expires_at)",
    """CREATE TABLE IF NOT EXISTS audit (
        id TEXT PRIMARY KEY,
        at DOUBLE PRECISION NOT NULL,
        actor TEXT NOT NULL,
        source TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        before TEXT,
        after TEXT)""",
    "CREATE INDEX IF NOT EXISTS audit_at ON audit (at)",
    # Answered calls by the node holding them (DialogRecord as JSON in ``legs``):
    # when a node dies, a survivor claims its rows (claimed_by) and ends the calls.
    """CREATE TABLE IF NOT EXISTS dialogs (
        id TEXT PRIMARY KEY,
        node TEXT NOT NULL,
        legs TEXT NOT NULL,
        answered_at DOUBLE PRECISION NOT NULL,
        claimed_by TEXT NOT NULL DEFAULT '',
        claimed_at DOUBLE PRECISION NOT NULL DEFAULT 0)""",
    "CREATE INDEX IF NOT EXISTS dialogs_node ON dialogs (node)",
    # Busy lamps across nodes (see the module doc): what each node's subscriptions
    # watch, and the dialogs a node holds of a resource another node watches.
    """CREATE TABLE IF NOT EXISTS watches (
        node TEXT NOT NULL,
        resource TEXT NOT NULL,
        PRIMARY KEY (node, resource))""",
    """CREATE TABLE IF NOT EXISTS lamps (
        node TEXT NOT NULL,
        resource TEXT NOT NULL,
        dialogs TEXT NOT NULL,
        PRIMARY KEY (node, resource))""",
)

_BINDING_COLUMNS = (
    "aor, contact, expires_at, q, call_id, cseq, source, user_agent, instance, reg_id, path"
)
# Columns new in an existing table, by the schema version that added them (tables
# new in a version are made by _SCHEMA's CREATE ... IF NOT EXISTS). Each is added
# when missing, whatever version the database claims.
_NEW_COLUMNS: tuple[tuple[int, str, str, str], ...] = (
    (3, "bindings", "path", "TEXT NOT NULL DEFAULT '[]'"),
    (3, "bindings", "node", "TEXT NOT NULL DEFAULT ''"),
    (3, "bindings", "rev", "BIGINT NOT NULL DEFAULT 0"),
    (3, "bindings", "gone", "BOOLEAN NOT NULL DEFAULT FALSE"),
)
_UPSERT_BINDING = (
    f"INSERT INTO bindings ({_BINDING_COLUMNS}, node, rev, gone) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, FALSE) "
    "ON CONFLICT (aor, contact) DO UPDATE SET expires_at = excluded.expires_at, "
    "q = excluded.q, call_id = excluded.call_id, cseq = excluded.cseq, "
    "source = excluded.source, user_agent = excluded.user_agent, "
    "instance = excluded.instance, reg_id = excluded.reg_id, path = excluded.path, "
    "node = excluded.node, rev = excluded.rev, gone = FALSE"
)


async def _meta_int(tx: _Tx, key: str) -> int:
    found = await tx.fetch("SELECT value FROM meta WHERE key = $1", key)
    return int(found[0][0]) if found else 0


async def _insert_audit(tx: _Tx, entry: AuditEntry) -> None:
    await tx.execute(
        "INSERT INTO audit (id, at, actor, source, action, target, before, after) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        entry.id, float(entry.at), entry.actor, entry.source, entry.action, entry.target,
        None if entry.before is None else json.dumps(entry.before, sort_keys=True),
        None if entry.after is None else json.dumps(entry.after, sort_keys=True))


async def _drop_orphan_statuses(tx: _Tx) -> None:
    await tx.execute(
        "DELETE FROM status_overrides WHERE extension NOT IN "
        "(SELECT key FROM directory_rows WHERE tbl = 'users')"
    )


async def _bump_revision(tx: _Tx, key: str = "revision") -> None:
    await tx.execute(
        "INSERT INTO meta (key, value) VALUES ($1, '1') ON CONFLICT (key) DO UPDATE "
        "SET value = CAST(CAST(meta.value AS BIGINT) + 1 AS TEXT)", key
    )


def _binding_row(b: Binding) -> tuple[object, ...]:
    return (b.aor, b.contact, float(b.expires_at), float(b.q), b.call_id, b.cseq, b.source,
            b.user_agent, b.instance, b.reg_id, json.dumps(list(b.path)))


class StoreError(Exception):
    """The store cannot do what was asked (connection, schema, bad URL...)."""


class RevisionConflict(StoreError):
    """An apply expected another directory revision: someone changed it meanwhile."""

    def __init__(self, expected: int, current: int) -> None:
        super().__init__(f"the directory is at revision {current}, not {expected}")
        self.expected = expected
        self.current = current


def connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` means the database cannot be reached right now (refused, reset,
    shutting down or starting up, timed out), as opposed to a statement that failed:
    the first is worth retrying the same write later, the second is not."""
    if isinstance(exc, StoreError) and exc.__cause__ is not None:
        return connection_lost(exc.__cause__)
    return isinstance(exc, (OSError, TimeoutError, asyncpg.PostgresConnectionError,
                            asyncpg.InterfaceError, asyncpg.CannotConnectNowError,
                            asyncpg.AdminShutdownError, asyncpg.CrashShutdownError,
                            asyncpg.exceptions.ConnectionDoesNotExistError))


class UnknownExtensionError(StoreError, LookupError):
    """No user has this extension in the stored directory."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown extension"


# --------------------------------------------------------------------------- reports


@dataclass(frozen=True, slots=True)
class BindingChanges:
    """What :meth:`Store.bindings_since` found: the revision to ask from next, the
    bindings saved and the (aor, contact) pairs deleted since the one asked."""

    revision: int
    saved: tuple[Binding, ...] = ()
    deleted: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Takeover:
    """What one survivor claimed (:meth:`Store.take_over`): the dead nodes whose rows
    it removed, and the dialog records of calls nobody holds any more."""

    dead: tuple[str, ...]
    records: tuple[DialogRecord, ...]


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
    """What an apply changed, in table order (system, trunks, ..., users), and the
    directory revision after it (:meth:`Store.directory_revision`)."""

    changes: tuple[Change, ...] = ()
    revision: int = 0

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


@dataclass(frozen=True, slots=True)
class DirectorySnapshot:
    """The stored directory at one revision, read and validated once per process.

    ``data`` is the file's form (each row as stored: every value explicit), shared by
    every reader: copy a list before changing it and never change a row in place
    (:func:`provisioning.api.resources.merge_patch` makes new rows). ``directory`` is
    ``data`` validated, live statuses not applied. ``rows`` are the stored rows
    themselves, so a write based on this snapshot compares with them instead of
    reading the table again.
    """

    revision: int
    data: Mapping[str, Any]
    directory: Directory
    rows: Mapping[tuple[str, str], tuple[int, str]]


# --------------------------------------------------------------------------- interface


class Store(abc.ABC):
    """The async store interface.  Use ``async with store:`` or ``open()``/``close()``."""

    #: Every validation of this process's directory goes through it (the snapshot's,
    #: the admin API's writes): a write reads again only the rows it changed.
    memo: ParseMemo

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and create the schema if it is missing."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the connection(s); safe to call twice."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """One round trip to the database (``SELECT 1``): raises when it is unreachable
        (:func:`connection_lost` tells that from other errors)."""

    async def reset_connections(self) -> None:  # noqa: B027 (a no-op unless pooled)
        """Drop the connections held, so that the next statement opens new ones: after
        the database was restarted, each pooled connection would fail once first."""

    async def listen_bindings(self, notified: Callable[[str], None],
                              lost: Callable[[], None],
                              lamps: Callable[[str], None] | None = None) -> bool:
        """Be told at once when any node writes bindings: ``notified(node)`` (the
        writer's node id) after each such commit, on a connection of its own, until
        ``lost()`` says that connection went (listen again once the store is back);
        ``lamps(node)`` likewise for lamp writes (:meth:`write_lamps`, a takeover that
        dropped a dead node's lamps: node ``""``). False when the backend cannot
        (SQLite: one process; readers poll :meth:`bindings_since`,
        :meth:`lamps_state`). Raises like a statement when the store is away."""
        return False

    async def unlisten_bindings(self) -> None:  # noqa: B027 (a no-op unless listening)
        """Stop what :meth:`listen_bindings` started."""

    @abc.abstractmethod
    async def apply_directory(self, directory: Directory, *, expect_revision: int | None = None,
                              audit: AuditEntry | Sequence[AuditEntry] | None = None,
                              base: DirectorySnapshot | None = None) -> ApplyReport:
        """Make the stored directory equal ``directory``, in one transaction.

        ``directory`` is validated again first (``DirectoryError`` when it is
        invalid); on any error nothing is changed.  ``expect_revision``: refuse
        (:class:`RevisionConflict`) unless the directory revision is still that
        one, checked inside the transaction.  ``audit`` is written in the same
        transaction when something changed (several: a bulk write audits each row).

        ``base``: ``directory`` is what :func:`parse_directory` returned for
        ``base.data`` with some rows changed (the admin API's writes). It is not
        validated again, the stored rows are not read again (``base.rows`` are
        them, since the revision is checked to be ``base.revision``: a mismatch is a
        :class:`RevisionConflict`), only the rows that differ are written, and the
        result becomes the snapshot of the new revision.
        """

    @abc.abstractmethod
    async def directory_snapshot(self, at: int | None = None) -> DirectorySnapshot | None:
        """The stored directory, validated, and its revision (``None`` if never applied).

        Kept in memory and read again only when the revision moved (another process,
        or a write not made through ``base``): one revision query when it has not.
        ``at``: the revision the caller wants (the one its own write made): the kept
        snapshot at that revision is returned without asking the database.
        """

    @abc.abstractmethod
    async def load_directory(self) -> Directory | None:
        """The stored directory with live statuses applied; ``None`` if never applied."""

    @abc.abstractmethod
    async def load_directory_data(self) -> tuple[dict[str, Any] | None, int]:
        """The stored directory as a directory-file dict, as configured (live statuses
        not applied), and its revision, read together; ``(None, 0)`` if never applied."""

    @abc.abstractmethod
    async def directory_revision(self) -> int:
        """Moves when the directory itself changes (not on a live status): the
        admin API's ETag."""

    # ------------------------------------------------------------------ accounts

    @abc.abstractmethod
    async def set_web_password(self, extension: str, password_hash: str) -> None:
        """Set a user's web password hash and end every session of that user."""

    @abc.abstractmethod
    async def web_password_hash(self, extension: str) -> str | None: ...

    @abc.abstractmethod
    async def web_password_extensions(self) -> set[str]:
        """The extensions that have a web password."""

    @abc.abstractmethod
    async def create_session(self, session: Session) -> None: ...

    @abc.abstractmethod
    async def session(self, token_hash: str, now: float) -> Session | None:
        """The session of this token hash, unless expired (expired ones are dropped)."""

    @abc.abstractmethod
    async def delete_session(self, token_hash: str) -> bool: ...

    @abc.abstractmethod
    async def create_reset_token(self, extension: str, token_hash: str, now: float,
                                 expires_at: float) -> None:
        """Keep a one-time password link (its hash); an older one of the user ends."""

    @abc.abstractmethod
    async def take_reset_token(self, token_hash: str, now: float) -> str | None:
        """The extension of a live link, which is used up by this call; else None."""

    @abc.abstractmethod
    async def delete_sessions(self, extension: str) -> int:
        """End every session of a user; how many there were."""

    @abc.abstractmethod
    async def create_api_key(self, key: ApiKey) -> None: ...

    @abc.abstractmethod
    async def api_key(self, key_id: str) -> ApiKey | None: ...

    @abc.abstractmethod
    async def list_api_keys(self) -> list[ApiKey]:
        """Every key, revoked ones too, oldest first."""

    @abc.abstractmethod
    async def revoke_api_key(self, key_id: str, now: float) -> bool:
        """Revoke a live key; False when there is none by that id (or it was revoked)."""

    @abc.abstractmethod
    async def set_totp(self, record: TotpRecord) -> None:
        """Enrol (or re-enrol) a user in TOTP, replacing any previous secret."""

    @abc.abstractmethod
    async def totp(self, extension: str) -> TotpRecord | None: ...

    @abc.abstractmethod
    async def delete_totp(self, extension: str) -> bool: ...

    @abc.abstractmethod
    async def use_totp_counter(self, extension: str, counter: int) -> bool:
        """Record that the code of time step ``counter`` was used; False when that
        step (or a later one) was already used: a code is accepted once."""

    @abc.abstractmethod
    async def use_recovery_code(self, extension: str, code_hash: str) -> bool:
        """Spend one recovery code; False when it is not (or no longer) there."""

    @abc.abstractmethod
    async def all_totp(self) -> list[TotpRecord]:
        """Every enrolment (to seal seeds stored before they were sealed)."""

    @abc.abstractmethod
    async def set_totp_secret(self, extension: str, old: str, new: str) -> bool:
        """Replace the stored form of a seed (the same seed, sealed), unless it changed
        since it was read as ``old`` (a new enrolment meanwhile)."""

    @abc.abstractmethod
    async def set_totp_pending(self, extension: str, secret: str, now: float) -> None:
        """Begin (or begin again) an enrolment: the seed waits for a first code."""

    @abc.abstractmethod
    async def totp_pending(self, extension: str) -> tuple[str, float] | None:
        """``(seed as stored, created_at)`` of an enrolment begun, if any."""

    @abc.abstractmethod
    async def delete_totp_pending(self, extension: str) -> bool: ...

    @abc.abstractmethod
    async def confirm_totp(self, record: TotpRecord) -> bool:
        """Make a begun enrolment the user's TOTP (replacing any earlier one) and drop
        the pending one, in one transaction; False when nothing was pending."""

    # ------------------------------------------------------------------ attempt limits

    @abc.abstractmethod
    async def attempts_locked(self, scope: str, keys: Sequence[str],
                              now: float) -> dict[str, float]:
        """``key -> locked_until`` for each of ``keys`` locked at ``now``."""

    @abc.abstractmethod
    async def attempt_failed(self, scope: str, key: str, *, limit: int, window: float,
                             lock_seconds: float, now: float) -> bool:
        """Count a failure of ``key``: ``limit`` failures within ``window`` seconds of the
        first lock it for ``lock_seconds``. True when this failure locked it. One
        transaction, so nodes counting at once lose no failure."""

    @abc.abstractmethod
    async def attempts_cleared(self, scope: str, key: str) -> None:
        """Forget the failures of ``key`` (a success)."""

    @abc.abstractmethod
    async def write_audit(self, entry: AuditEntry) -> None: ...

    @abc.abstractmethod
    async def list_audit(self, *, limit: int = 100, before: float | None = None,
                         target: str | None = None) -> list[AuditEntry]:
        """The newest entries first (``before``: older than that time)."""

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
        self, saved: Sequence[Binding], deleted: Sequence[tuple[str, str]] = (),
        *, node: str = "", removed: Sequence[Binding] = (),
    ) -> None:
        """Upsert ``saved`` and delete the (aor, contact) pairs ``deleted``, atomically;
        ``node`` names the engine process that wrote them. ``removed``: bindings a
        node dropped (expired, unregistered), deleted only while the stored row is
        still that registration (same Call-ID and CSeq): a refresh another node
        stored meanwhile is kept."""

    @abc.abstractmethod
    async def bindings_since(self, revision: int, *, exclude_node: str = "") -> BindingChanges:
        """Bindings saved or deleted after ``revision`` by nodes other than
        ``exclude_node``, and the revision to ask from next time. Expired ones are
        reported as saved (their reader drops them)."""

    @abc.abstractmethod
    async def heartbeat(self, node: Node) -> None:
        """Insert or refresh ``node``'s row."""

    @abc.abstractmethod
    async def list_nodes(self) -> list[Node]:
        """Every node that has heartbeat, by id (stale ones included: see last_seen)."""

    @abc.abstractmethod
    async def remove_node(self, node_id: str) -> bool:
        """Drop a node's row (it stopped); True if there was one."""

    @abc.abstractmethod
    async def write_dialogs(self, saved: Sequence[DialogRecord],
                            ended: Sequence[str] = ()) -> None:
        """Upsert ``saved`` and delete the records whose id is in ``ended``, in one
        transaction (the engine's write-behind batches them)."""

    @abc.abstractmethod
    async def load_dialogs(self, node: str | None = None) -> list[DialogRecord]:
        """The dialog records (of ``node`` only, when given), by id."""

    @abc.abstractmethod
    async def take_over(self, claimer: str, stale_before: float, now: float,
                        reclaim_before: float) -> Takeover:
        """One atomic claim by the node ``claimer``: remove the rows of nodes whose
        heartbeat is older than ``stale_before`` (those are dead), then claim the
        dialog records of every node that has no row (UPDATE ... SET claimed_by):
        unclaimed ones, and ones claimed before ``reclaim_before`` (their claimer
        died before ending them). Two survivors running this at once split nothing:
        each record, and each dead node, goes to one of them."""

    @abc.abstractmethod
    async def claim_own_dialogs(self, node: str, now: float) -> list[DialogRecord]:
        """At a node's start: the unclaimed records it left in a previous run (it
        died and came back before anyone noticed), claimed by itself."""

    @abc.abstractmethod
    async def write_lamps(self, node: str, *, watched: Sequence[str] = (),
                          unwatched: Sequence[str] = (),
                          dialogs: Mapping[str, Sequence[DialogView]] | None = None) -> None:
        """In one transaction, for the node ``node``: it now watches ``watched`` and no
        longer ``unwatched`` (resources: extensions, park orbits), and its dialogs of
        each resource in ``dialogs`` are these (none: its row goes). Moves the lamps
        revision (and, on PostgreSQL, notifies the listening nodes). A bad dialog
        (state, direction, empty resource) refuses the whole write."""

    @abc.abstractmethod
    async def lamps_state(self, revision: int, *, exclude_node: str) -> LampSnapshot | None:
        """What the nodes other than ``exclude_node`` watch and published, when the
        lamps revision is no longer ``revision`` (None: nothing moved)."""

    @abc.abstractmethod
    async def clear_lamps(self, node: str) -> None:
        """Drop every watch and published dialog of ``node`` (it starts, or stops)."""

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
        """Delete bindings with ``expires_at <= now``, and deleted ones (kept for the
        other nodes to read) deleted at or before ``now``; return how many of the
        former."""

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


def _canonical_rows(directory: Directory, base: DirectorySnapshot | None = None) -> Rows:
    """The stored form of each row. With ``base``: a row whose model is the very object
    of ``base.directory`` (the parse memo gives it back for an unchanged row) keeps its
    stored body, so only the rows a write changed are serialised again."""
    if base is None:
        rows: Rows = {}
        for table, items in table_rows(directory).items():
            for position, item in enumerate(items):
                key = "system" if table == "system" else str(item[TABLE_KEYS[table]])
                rows[(table, key)] = (position, json.dumps(item, sort_keys=True))
        return rows
    rows = {("system", "system"): (0, json.dumps(system_to_dict(directory.system),
                                                 sort_keys=True))}
    for table, write in ROW_WRITERS.items():
        natural = TABLE_KEYS[table]
        before = {id(item): str(getattr(item, natural))
                  for item in getattr(base.directory, table)}
        for position, item in enumerate(getattr(directory, table)):
            same = before.get(id(item))
            if same is not None and (table, same) in base.rows:
                rows[(table, same)] = (position, base.rows[(table, same)][1])
            else:
                row = write(item)
                rows[(table, str(row[natural]))] = (position, json.dumps(row, sort_keys=True))
    return rows


def _data_of(rows: Rows, base: DirectorySnapshot) -> dict[str, Any]:
    """``rows`` in the file's form, sharing ``base.data``'s row for every unchanged body."""
    old: dict[tuple[str, str], Any] = {("system", "system"): base.data["system"]}
    for table, natural in TABLE_KEYS.items():
        for item in base.data.get(table, ()):
            old[(table, str(item.get(natural)))] = item
    data: dict[str, Any] = {table: [] for table in TABLES}
    for (table, key), (_, body) in sorted(rows.items(), key=lambda kv: kv[1][0]):
        same = base.rows.get((table, key))
        item = old[(table, key)] if same is not None and same[1] == body else json.loads(body)
        if table == "system":
            data["system"] = item
        else:
            data[table].append(item)
    return data


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


def _plan(old: Mapping[tuple[str, str], tuple[int, str]], new: Rows) -> list[Change]:
    def in_order(rows: Mapping[tuple[str, str], tuple[int, str]]) -> dict[str, list[str]]:
        ordered: dict[str, list[tuple[int, str]]] = {table: [] for table in TABLES}
        for (table, key), (position, _) in rows.items():
            ordered.setdefault(table, []).append((position, key))
        return {table: [key for _, key in sorted(keys)] for table, keys in ordered.items()}

    old_order, new_order = in_order(old), in_order(new)
    changes: list[Change] = []
    for table in TABLES:
        old_keys, new_keys = old_order[table], new_order[table]
        for key in new_keys:
            before = old.get((table, key))
            if before is None:
                changes.append(Change(table, key, "added"))
            elif before[1] != new[(table, key)][1]:
                fields = _diff_fields(json.loads(before[1]), json.loads(new[(table, key)][1]))
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
    _for_update = ""  # row-lock suffix for a read-modify-write of one row

    @abc.abstractmethod
    def _transaction(self) -> AbstractAsyncContextManager[_Tx]:
        """A transaction; commits on normal exit, rolls back on an exception."""

    async def _notify_bindings(self, tx: _Tx, node: str) -> None:
        """Tell the listening nodes, in the transaction that wrote (it reaches them at
        its commit, not before; nothing if it rolls back). A no-op without LISTEN."""

    async def _notify_lamps(self, tx: _Tx, node: str) -> None:
        """As :meth:`_notify_bindings`, for lamp writes."""

    async def ping(self) -> None:
        async with self._transaction() as tx:
            await tx.fetch("SELECT 1")

    async def _lock_for_apply(self, tx: _Tx) -> None:
        """Serialise concurrent applies (no-op where the transaction already does)."""

    @abc.abstractmethod
    async def _columns(self, tx: _Tx, table: str) -> set[str]:
        """The column names of ``table``."""

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
            elif int(found[0][0]) < SCHEMA_VERSION:
                for version, table, column, declaration in _NEW_COLUMNS:
                    if version > int(found[0][0]) and column not in await self._columns(
                            tx, table):
                        await tx.execute(
                            f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
                await tx.execute("UPDATE meta SET value = $1 WHERE key = 'schema_version'",
                                 str(SCHEMA_VERSION))
            # on columns a migration may just have added
            await tx.execute("CREATE INDEX IF NOT EXISTS bindings_rev ON bindings (rev)")

    # ------------------------------------------------------------------ directory

    def __init__(self) -> None:
        self._snapshot: DirectorySnapshot | None = None
        self._snapshot_lock = asyncio.Lock()
        # shared by every validation of this process's directory: a write reads
        # again only the rows it changed (provisioning.directory.ParseMemo)
        self.memo = ParseMemo()

    async def apply_directory(self, directory: Directory, *, expect_revision: int | None = None,
                              audit: AuditEntry | Sequence[AuditEntry] | None = None,
                              base: DirectorySnapshot | None = None) -> ApplyReport:
        if base is not None:
            return await self._apply_on(base, directory, expect_revision, audit)
        canonical = parse_directory(directory_to_dict(directory), "<apply_directory>")
        new = _canonical_rows(canonical)
        async with self._transaction() as tx:
            await self._lock_for_apply(tx)
            revision = await _meta_int(tx, "directory_revision")
            if expect_revision is not None and expect_revision != revision:
                raise RevisionConflict(expect_revision, revision)
            old: Rows = {
                (str(t), str(k)): (int(p), str(b))
                for t, k, p, b in await tx.fetch(
                    "SELECT tbl, key, position, body FROM directory_rows"
                )
            }
            changes = _plan(old, new)
            if changes:
                await self._write_rows(tx, old, new, audit, full=True)
                revision = await _meta_int(tx, "directory_revision")
            else:
                await _drop_orphan_statuses(tx)
        return ApplyReport(tuple(changes), revision)

    async def _apply_on(self, base: DirectorySnapshot, directory: Directory,
                        expect_revision: int | None,
                        audit: AuditEntry | Sequence[AuditEntry] | None) -> ApplyReport:
        if expect_revision is not None and expect_revision != base.revision:
            raise RevisionConflict(expect_revision, base.revision)
        new = _canonical_rows(directory, base)
        changes = _plan(base.rows, new)
        if not changes:  # nothing to write, but the revision is still checked
            current = await self.directory_revision()
            if current != base.revision:
                raise RevisionConflict(base.revision, current)
            return ApplyReport((), base.revision)
        async with self._transaction() as tx:
            await self._lock_for_apply(tx)
            revision = await _meta_int(tx, "directory_revision")
            if revision != base.revision:
                raise RevisionConflict(base.revision, revision)
            await self._write_rows(tx, base.rows, new, audit, full=False)
            revision += 1  # checked to be base.revision under the apply lock
        snapshot = DirectorySnapshot(revision, _data_of(new, base), directory, new)
        if self._snapshot is None or self._snapshot.revision < revision:
            self._snapshot = snapshot
        return ApplyReport(tuple(changes), revision)

    async def _write_rows(self, tx: _Tx, old: Mapping[tuple[str, str], tuple[int, str]],
                          new: Rows, audit: AuditEntry | Sequence[AuditEntry] | None, *,
                          full: bool) -> None:
        """Write the rows of ``new`` that differ from ``old`` (the stored rows), delete
        those gone, with what follows (live statuses, bindings, mailboxes, accounts of
        removed users), the audit and the revisions. ``full``: a whole apply also drops
        statuses left without a user; a write on a snapshot only does when it removes
        users."""
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
                # an extension created again later must not inherit the old
                # person's web password, second factor or open sessions
                for account_table in ("web_credentials", "sessions", "totp",
                                      "totp_pending", "reset_tokens"):
                    await tx.execute(
                        f"DELETE FROM {account_table} WHERE extension = $1", key)
        if full or any(table == "users" for table, _ in old.keys() - new.keys()):
            await _drop_orphan_statuses(tx)
        await _bump_revision(tx)
        await _bump_revision(tx, "directory_revision")
        entries = (audit,) if isinstance(audit, AuditEntry) else audit or ()
        for entry in entries:
            await _insert_audit(tx, entry)


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
        async with self._transaction() as tx:  # the revision and the statuses together
            revision = await _meta_int(tx, "directory_revision")
            rows = await tx.fetch("SELECT extension, status FROM status_overrides")
        cached = self._snapshot
        snapshot = (cached if cached is not None and cached.revision == revision
                    else await self.directory_snapshot())
        if snapshot is None:
            return None
        return with_statuses(snapshot.directory, {
            str(ext): STATUSES[STATUSES.index(status)] for ext, status in rows
            if status in STATUSES})

    async def load_directory_data(self) -> tuple[dict[str, Any] | None, int]:
        try:
            snapshot = await self.directory_snapshot()
        except DirectoryError:
            # stored before a stricter validator: still exported as stored, to be fixed
            data, _, revision = await self._read_rows()
            return (data if isinstance(data["system"], dict) else None), revision
        if snapshot is None:
            return None, await self.directory_revision()
        return {table: list(rows) if isinstance(rows, list) else rows
                for table, rows in snapshot.data.items()}, snapshot.revision

    async def _read_rows(self) -> tuple[dict[str, Any], Rows, int]:
        """The stored rows in the file's form (``system`` is ``[]`` when there is none),
        as stored, and the revision, read together."""
        async with self._transaction() as tx:
            found = await tx.fetch(
                "SELECT tbl, key, position, body FROM directory_rows ORDER BY tbl, position")
            revision = await _meta_int(tx, "directory_revision")
        rows: Rows = {(str(t), str(k)): (int(p), str(b)) for t, k, p, b in found}
        data: dict[str, Any] = {table: [] for table in TABLES}
        for table, _, _, body in found:
            if table == "system":
                data["system"] = json.loads(body)
            else:
                data.setdefault(str(table), []).append(json.loads(body))
        return data, rows, revision

    async def directory_snapshot(self, at: int | None = None) -> DirectorySnapshot | None:
        cached = self._snapshot
        if at is not None and cached is not None and cached.revision == at:
            return cached
        revision = await self.directory_revision()
        if cached is not None and cached.revision == revision:
            return cached
        async with self._snapshot_lock:  # one read of a new revision, not one per caller
            cached = self._snapshot
            if cached is not None and cached.revision >= revision:
                return cached
            data, rows, revision = await self._read_rows()
            if not isinstance(data["system"], dict):
                return None
            directory = parse_directory(data, "<store>", self.memo)
            snapshot = DirectorySnapshot(revision, data, directory, rows)
            if self._snapshot is None or self._snapshot.revision < revision:
                self._snapshot = snapshot
            return snapshot

    async def directory_revision(self) -> int:
        async with self._transaction() as tx:
            return await _meta_int(tx, "directory_revision")

    # ------------------------------------------------------------------ accounts

    async def set_web_password(self, extension: str, password_hash: str) -> None:
        async with self._transaction() as tx:
            await tx.execute(
                "INSERT INTO web_credentials (extension, password_hash, changed_at) "
                "VALUES ($1, $2, $3) ON CONFLICT (extension) DO UPDATE SET "
                "password_hash = excluded.password_hash, changed_at = excluded.changed_at",
                extension, password_hash, time.time())
            # a new password ends every session opened with the old one
            await tx.execute("DELETE FROM sessions WHERE extension = $1", extension)
            await tx.execute("DELETE FROM reset_tokens WHERE extension = $1", extension)

    async def create_reset_token(self, extension: str, token_hash: str, now: float,
                                 expires_at: float) -> None:
        async with self._transaction() as tx:
            await tx.execute("DELETE FROM reset_tokens WHERE extension = $1 OR expires_at <= $2",
                             extension, now)
            await tx.execute(
                "INSERT INTO reset_tokens (token_hash, extension, created_at, expires_at) "
                "VALUES ($1, $2, $3, $4)", token_hash, extension, now, expires_at)

    async def take_reset_token(self, token_hash: str, now: float) -> str | None:
        async with self._transaction() as tx:
            rows = await tx.fetch("DELETE FROM reset_tokens WHERE token_hash = $1 "
                                  "RETURNING extension, expires_at", token_hash)
        if not rows or float(rows[0][1]) <= now:
            return None
        return str(rows[0][0])

    async def web_password_hash(self, extension: str) -> str | None:
        async with self._transaction() as tx:
            rows = await tx.fetch(
                "SELECT password_hash FROM web_credentials WHERE extension = $1", extension)
        return str(rows[0][0]) if rows else None

    async def web_password_extensions(self) -> set[str]:
        async with self._transaction() as tx:
            rows = await tx.fetch("SELECT extension FROM web_credentials")
        return {str(row[0]) for row in rows}

    async def create_session(self, session: Session) -> None:
        async with self._transaction() as tx:
            await tx.execute("DELETE FROM sessions WHERE expires_at <= $1", time.time())
            await tx.execute(
                "INSERT INTO sessions (token_hash, extension, created_at, expires_at, source) "
                "VALUES ($1, $2, $3, $4, $5)", session.token_hash, session.extension,
                float(session.created_at), float(session.expires_at), session.source)

    async def session(self, token_hash: str, now: float) -> Session | None:
        async with self._transaction() as tx:
            rows = await tx.fetch(
                "SELECT token_hash, extension, created_at, expires_at, source FROM sessions "
                "WHERE token_hash = $1", token_hash)
            if rows and float(rows[0][3]) <= now:
                await tx.execute("DELETE FROM sessions WHERE token_hash = $1", token_hash)
                return None
        if not rows:
            return None
        token, ext, created, expires, source = rows[0]
        return Session(token_hash=str(token), extension=str(ext), created_at=float(created),
                       expires_at=float(expires), source=str(source))

    async def delete_session(self, token_hash: str) -> bool:
        async with self._transaction() as tx:
            gone = await tx.fetch(
                "DELETE FROM sessions WHERE token_hash = $1 RETURNING token_hash", token_hash)
        return bool(gone)

    async def delete_sessions(self, extension: str) -> int:
        async with self._transaction() as tx:
            gone = await tx.fetch(
                "DELETE FROM sessions WHERE extension = $1 RETURNING token_hash", extension)
        return len(gone)

    async def create_api_key(self, key: ApiKey) -> None:
        async with self._transaction() as tx:
            await tx.execute(
                "INSERT INTO api_keys (id, name, role, department, secret_hash, created_at, "
                "revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7)", key.id, key.name, key.role,
                key.department, key.secret_hash, float(key.created_at), key.revoked_at)

    async def api_key(self, key_id: str) -> ApiKey | None:
        async with self._transaction() as tx:
            rows = await tx.fetch(f"SELECT {_API_KEY_COLUMNS} FROM api_keys WHERE id = $1",
                                  key_id)
        return _api_key(rows[0]) if rows else None

    async def list_api_keys(self) -> list[ApiKey]:
        async with self._transaction() as tx:
            rows = await tx.fetch(f"SELECT {_API_KEY_COLUMNS} FROM api_keys "
                                  "ORDER BY created_at, id")
        return [_api_key(row) for row in rows]

    async def revoke_api_key(self, key_id: str, now: float) -> bool:
        async with self._transaction() as tx:
            gone = await tx.fetch(
                "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL "
                "RETURNING id", key_id, float(now))
        return bool(gone)

    async def set_totp(self, record: TotpRecord) -> None:
        async with self._transaction() as tx:
            await tx.execute(
                "INSERT INTO totp (extension, secret, recovery, last_counter, created_at) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (extension) DO UPDATE SET "
                "secret = excluded.secret, recovery = excluded.recovery, "
                "last_counter = excluded.last_counter, created_at = excluded.created_at",
                record.extension, record.secret, json.dumps(list(record.recovery_hashes)),
                record.last_counter, float(record.created_at))

    async def totp(self, extension: str) -> TotpRecord | None:
        async with self._transaction() as tx:
            rows = await tx.fetch(
                "SELECT extension, secret, recovery, last_counter, created_at FROM totp "
                "WHERE extension = $1", extension)
        if not rows:
            return None
        ext, secret, recovery, counter, created = rows[0]
        return TotpRecord(extension=str(ext), secret=str(secret),
                          recovery_hashes=tuple(json.loads(recovery)),
                          last_counter=int(counter), created_at=float(created))

    async def delete_totp(self, extension: str) -> bool:
        async with self._transaction() as tx:
            gone = await tx.fetch("DELETE FROM totp WHERE extension = $1 RETURNING extension",
                                  extension)
        return bool(gone)

    async def use_totp_counter(self, extension: str, counter: int) -> bool:
        async with self._transaction() as tx:
            done = await tx.fetch(
                "UPDATE totp SET last_counter = $2 WHERE extension = $1 AND last_counter < $2 "
                "RETURNING extension", extension, counter)
        return bool(done)

    async def use_recovery_code(self, extension: str, code_hash: str) -> bool:
        async with self._transaction() as tx:
            rows = await tx.fetch(
                "SELECT recovery FROM totp WHERE extension = $1" + self._for_update, extension)
            if not rows:
                return False
            codes: list[str] = json.loads(rows[0][0])
            if code_hash not in codes:
                return False
            codes.remove(code_hash)
            await tx.execute("UPDATE totp SET recovery = $2 WHERE extension = $1",
                             extension, json.dumps(codes))
        return True

    async def all_totp(self) -> list[TotpRecord]:
        async with self._transaction() as tx:
            rows = await tx.fetch("SELECT extension FROM totp ORDER BY extension")
        found = [await self.totp(str(row[0])) for row in rows]
        return [r for r in found if r is not None]

    async def set_totp_secret(self, extension: str, old: str, new: str) -> bool:
        async with self._transaction() as tx:
            done = await tx.fetch("UPDATE totp SET secret = $3 WHERE extension = $1 "
                                  "AND secret = $2 RETURNING extension", extension, old, new)
        return bool(done)

    async def set_totp_pending(self, extension: str, secret: str, now: float) -> None:
        async with self._transaction() as tx:
            await tx.execute(
                "INSERT INTO totp_pending (extension, secret, created_at) VALUES ($1, $2, $3) "
                "ON CONFLICT (extension) DO UPDATE SET secret = excluded.secret, "
                "created_at = excluded.created_at", extension, secret, float(now))

    async def totp_pending(self, extension: str) -> tuple[str, float] | None:
        async with self._transaction() as tx:
            rows = await tx.fetch("SELECT secret, created_at FROM totp_pending "
                                  "WHERE extension = $1", extension)
        return (str(rows[0][0]), float(rows[0][1])) if rows else None

    async def delete_totp_pending(self, extension: str) -> bool:
        async with self._transaction() as tx:
            gone = await tx.fetch("DELETE FROM totp_pending WHERE extension = $1 "
                                  "RETURNING extension", extension)
        return bool(gone)

    async def confirm_totp(self, record: TotpRecord) -> bool:
        async with self._transaction() as tx:
            gone = await tx.fetch("DELETE FROM totp_pending WHERE extension = $1 "
                                  "RETURNING extension", record.extension)
            if not gone:
                return False
            await tx.execute(
                "INSERT INTO totp (extension, secret, recovery, last_counter, created_at) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (extension) DO UPDATE SET "
                "secret = excluded.secret, recovery = excluded.recovery, "
                "last_counter = excluded.last_counter, created_at = excluded.created_at",
                record.extension, record.secret, json.dumps(list(record.recovery_hashes)),
                record.last_counter, float(record.created_at))
        return True

    async def attempts_locked(self, scope: str, keys: Sequence[str],
                              now: float) -> dict[str, float]:
        out: dict[str, float] = {}
        async with self._transaction() as tx:
            for key in keys:
                rows = await tx.fetch("SELECT locked_until FROM rate_limits WHERE scope = $1 "
                                      "AND key = $2 AND locked_until > $3", scope, key,
                                      float(now))
                if rows:
                    out[key] = float(rows[0][0])
        return out

    async def attempt_failed(self, scope: str, key: str, *, limit: int, window: float,
                             lock_seconds: float, now: float) -> bool:
        now = float(now)
        async with self._transaction() as tx:
            await tx.execute("DELETE FROM rate_limits WHERE expires_at <= $1", now)
            await tx.execute(
                "INSERT INTO rate_limits (scope, key, window_start, failures, locked_until, "
                "expires_at) VALUES ($1, $2, $3, 0, 0, $4) ON CONFLICT (scope, key) DO NOTHING",
                scope, key, now, now + window)
            # the row is locked until the end of the transaction (SQLite: the whole
            # database is, from BEGIN IMMEDIATE): concurrent failures count one by one
            rows = await tx.fetch("SELECT window_start, failures, locked_until FROM rate_limits "
                                  "WHERE scope = $1 AND key = $2" + self._for_update,
                                  scope, key)
            start, failures, locked_until = float(rows[0][0]), int(rows[0][1]), \
                float(rows[0][2])
            if locked_until > now:
                return False  # already locked: the lock is not stretched
            if now - start >= window:
                start, failures = now, 0
            failures += 1
            locked = failures >= limit
            if locked:
                start, failures, locked_until = now, 0, now + lock_seconds
            await tx.execute(
                "UPDATE rate_limits SET window_start = $3, failures = $4, locked_until = $5, "
                "expires_at = $6 WHERE scope = $1 AND key = $2", scope, key, start, failures,
                locked_until, max(start + window, locked_until))
        return locked

    async def attempts_cleared(self, scope: str, key: str) -> None:
        async with self._transaction() as tx:
            await tx.execute("DELETE FROM rate_limits WHERE scope = $1 AND key = $2",
                             scope, key)

    async def write_audit(self, entry: AuditEntry) -> None:
        async with self._transaction() as tx:
            await _insert_audit(tx, entry)

    async def list_audit(self, *, limit: int = 100, before: float | None = None,
                         target: str | None = None) -> list[AuditEntry]:
        where: list[str] = []
        args: list[object] = []
        if before is not None:
            args.append(float(before))
            where.append(f"at < ${len(args)}")
        if target is not None:
            args.append(target)
            where.append(f"target = ${len(args)}")
        args.append(int(limit))
        sql = ("SELECT id, at, actor, source, action, target, before, after FROM audit"
               + (" WHERE " + " AND ".join(where) if where else "")
               + f" ORDER BY at DESC, id DESC LIMIT ${len(args)}")
        async with self._transaction() as tx:
            rows = await tx.fetch(sql, *args)
        return [AuditEntry(id=str(i), at=float(at), actor=str(actor), source=str(source),
                           action=str(action), target=str(tgt),
                           before=None if b is None else json.loads(b),
                           after=None if a is None else json.loads(a))
                for i, at, actor, source, action, tgt, b, a in rows]

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
        self, saved: Sequence[Binding], deleted: Sequence[tuple[str, str]] = (),
        *, node: str = "", removed: Sequence[Binding] = (),
    ) -> None:
        """Upsert ``saved`` and delete ``deleted`` (aor, contact) pairs in one transaction.

        The registrar's write-through batches what piled up while the last
        batch was written: one commit per batch, not per REGISTER. The rows are
        stamped with ``node`` and the next bindings revision (see the module doc).
        """
        for binding in saved:
            if not binding.aor or not binding.contact:
                raise ValueError("a binding needs an aor and a contact")
        if not saved and not deleted and not removed:
            return
        async with self._transaction() as tx:
            await _bump_revision(tx, "bindings_revision")
            rev = await _meta_int(tx, "bindings_revision")
            # A deleted row keeps the time of its deletion as expires_at: purged
            # once every node has had time to read it (see purge_expired_bindings).
            now = time.time()
            if removed:
                await tx.executemany(
                    "UPDATE bindings SET gone = TRUE, node = $5, rev = $6, expires_at = $7 "
                    "WHERE aor = $1 AND contact = $2 AND call_id = $3 AND cseq = $4",
                    [(b.aor, b.contact, b.call_id, b.cseq, node, rev, now) for b in removed],
                )
            if deleted:
                await tx.executemany(
                    "UPDATE bindings SET gone = TRUE, node = $3, rev = $4, expires_at = $5 "
                    "WHERE aor = $1 AND contact = $2",
                    [(aor, contact, node, rev, now) for aor, contact in deleted],
                )
            if saved:
                await tx.executemany(_UPSERT_BINDING,
                                     [(*_binding_row(b), node, rev) for b in saved])
            await self._notify_bindings(tx, node)

    async def delete_bindings(self, aor: str) -> None:
        async with self._transaction() as tx:
            await _bump_revision(tx, "bindings_revision")
            rev = await _meta_int(tx, "bindings_revision")
            await tx.execute("UPDATE bindings SET gone = TRUE, node = '', rev = $2, "
                             "expires_at = $3 WHERE aor = $1", aor, rev, time.time())
            await self._notify_bindings(tx, "")

    async def load_bindings(self) -> list[Binding]:
        async with self._transaction() as tx:
            rows = await tx.fetch(
                f"SELECT {_BINDING_COLUMNS} FROM bindings WHERE NOT gone "
                "ORDER BY aor, q DESC, contact"
            )
        return [_binding(row) for row in rows]

    async def bindings_since(self, revision: int, *, exclude_node: str = "") -> BindingChanges:
        async with self._transaction() as tx:
            current = await _meta_int(tx, "bindings_revision")
            rows = await tx.fetch(
                f"SELECT {_BINDING_COLUMNS}, gone, rev FROM bindings "
                "WHERE rev > $1 AND node <> $2 ORDER BY rev",
                int(revision), exclude_node,
            )
        saved: list[Binding] = []
        deleted: list[tuple[str, str]] = []
        for row in rows:
            current = max(current, int(row[-1]))
            if row[-2]:
                deleted.append((str(row[0]), str(row[1])))
            else:
                saved.append(_binding(row[:-2]))
        return BindingChanges(current, tuple(saved), tuple(deleted))

    async def purge_expired_bindings(self, now: float) -> int:
        async with self._transaction() as tx:
            gone = await tx.fetch(
                "DELETE FROM bindings WHERE expires_at <= $1 RETURNING gone", float(now)
            )
        return sum(1 for (was_gone,) in gone if not was_gone)

    # ------------------------------------------------------------------ nodes

    async def heartbeat(self, node: Node) -> None:
        async with self._transaction() as tx:
            await tx.execute(
                "INSERT INTO nodes (id, address, started_at, last_seen, calls, registrations) "
                "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO UPDATE SET "
                "address = excluded.address, started_at = excluded.started_at, "
                "last_seen = excluded.last_seen, calls = excluded.calls, "
                "registrations = excluded.registrations",
                node.id, node.address, float(node.started_at), float(node.last_seen),
                node.calls, node.registrations)

    async def list_nodes(self) -> list[Node]:
        async with self._transaction() as tx:
            rows = await tx.fetch("SELECT id, address, started_at, last_seen, calls, "
                                  "registrations FROM nodes ORDER BY id")
        return [Node(id=str(i), address=str(a), started_at=float(s), last_seen=float(seen),
                     calls=int(c), registrations=int(r)) for i, a, s, seen, c, r in rows]

    async def remove_node(self, node_id: str) -> bool:
        async with self._transaction() as tx:
            gone = await tx.fetch("DELETE FROM nodes WHERE id = $1 RETURNING id", node_id)
        return bool(gone)

    # ------------------------------------------------------------------ dialogs

    async def write_dialogs(self, saved: Sequence[DialogRecord],
                            ended: Sequence[str] = ()) -> None:
        for record in saved:
            if not record.id or not record.node:
                raise ValueError("a dialog record needs an id and a node")
        if not saved and not ended:
            return
        async with self._transaction() as tx:
            if ended:
                await tx.executemany("DELETE FROM dialogs WHERE id = $1",
                                     [(i,) for i in ended])
            if saved:
                await tx.executemany(
                    "INSERT INTO dialogs (id, node, legs, answered_at, claimed_by, claimed_at) "
                    "VALUES ($1, $2, $3, $4, '', 0) ON CONFLICT (id) DO UPDATE SET "
                    "node = excluded.node, legs = excluded.legs, "
                    "answered_at = excluded.answered_at, claimed_by = '', claimed_at = 0",
                    [(r.id, r.node, _legs_json(r.legs), float(r.answered_at)) for r in saved])

    async def load_dialogs(self, node: str | None = None) -> list[DialogRecord]:
        async with self._transaction() as tx:
            if node is None:
                rows = await tx.fetch(f"SELECT {_DIALOG_COLUMNS} FROM dialogs ORDER BY id")
            else:
                rows = await tx.fetch(f"SELECT {_DIALOG_COLUMNS} FROM dialogs WHERE node = $1 "
                                      "ORDER BY id", node)
        return [_dialog_record(row) for row in rows]

    async def take_over(self, claimer: str, stale_before: float, now: float,
                        reclaim_before: float) -> Takeover:
        async with self._transaction() as tx:
            # The DELETE locks each stale row: a second survivor's DELETE waits, then
            # finds it gone. The UPDATE then re-checks claimed_by row by row.
            dead = await tx.fetch("DELETE FROM nodes WHERE last_seen < $1 AND id <> $2 "
                                  "RETURNING id", float(stale_before), claimer)
            rows = await tx.fetch(
                "UPDATE dialogs SET claimed_by = $1, claimed_at = $2 "
                "WHERE node <> $1 AND node NOT IN (SELECT id FROM nodes) "
                "AND (claimed_by = '' OR claimed_at < $3) "
                f"RETURNING {_DIALOG_COLUMNS}", claimer, float(now), float(reclaim_before))
            # A dead node's lamps go with it: its calls are ended, and its watchers'
            # phones subscribe again elsewhere. Orphans of any node without a row,
            # not only the ones just found dead (a claimer that died midway).
            # The lamps revision is locked before their rows, as write_lamps does:
            # the other order could deadlock with a node's write.
            orphans = await tx.fetch(
                "SELECT 1 FROM watches WHERE node NOT IN (SELECT id FROM nodes) UNION ALL "
                "SELECT 1 FROM lamps WHERE node NOT IN (SELECT id FROM nodes) LIMIT 1")
            if orphans:
                await _bump_revision(tx, "lamps_revision")
                await tx.execute("DELETE FROM watches WHERE node NOT IN (SELECT id FROM nodes)")
                await tx.execute("DELETE FROM lamps WHERE node NOT IN (SELECT id FROM nodes)")
                await self._notify_lamps(tx, "")
        return Takeover(tuple(sorted(str(d[0]) for d in dead)),
                        tuple(sorted((_dialog_record(r) for r in rows), key=lambda r: r.id)))

    async def claim_own_dialogs(self, node: str, now: float) -> list[DialogRecord]:
        async with self._transaction() as tx:
            rows = await tx.fetch(
                "UPDATE dialogs SET claimed_by = $1, claimed_at = $2 "
                f"WHERE node = $1 AND claimed_by = '' RETURNING {_DIALOG_COLUMNS}",
                node, float(now))
        return sorted((_dialog_record(r) for r in rows), key=lambda r: r.id)

    # ------------------------------------------------------------------ lamps

    async def write_lamps(self, node: str, *, watched: Sequence[str] = (),
                          unwatched: Sequence[str] = (),
                          dialogs: Mapping[str, Sequence[DialogView]] | None = None) -> None:
        if not node:
            raise ValueError("write_lamps: node is empty")
        published = dialogs or {}
        rows = [(resource, _dialogs_json(resource, views))
                for resource, views in published.items() if views]
        for resource in (*watched, *unwatched, *published):
            if not resource:
                raise ValueError("write_lamps: a resource is empty")
        if not watched and not unwatched and not published:
            return
        async with self._transaction() as tx:
            await _bump_revision(tx, "lamps_revision")
            if unwatched:
                await tx.executemany("DELETE FROM watches WHERE node = $1 AND resource = $2",
                                     [(node, r) for r in unwatched])
            if watched:
                await tx.executemany(
                    "INSERT INTO watches (node, resource) VALUES ($1, $2) "
                    "ON CONFLICT (node, resource) DO NOTHING", [(node, r) for r in watched])
            idle = [(node, r) for r, views in published.items() if not views]
            if idle:
                await tx.executemany("DELETE FROM lamps WHERE node = $1 AND resource = $2",
                                     idle)
            if rows:
                await tx.executemany(
                    "INSERT INTO lamps (node, resource, dialogs) VALUES ($1, $2, $3) "
                    "ON CONFLICT (node, resource) DO UPDATE SET dialogs = excluded.dialogs",
                    [(node, r, text) for r, text in rows])
            await self._notify_lamps(tx, node)

    async def lamps_state(self, revision: int, *, exclude_node: str) -> LampSnapshot | None:
        async with self._transaction() as tx:
            current = await _meta_int(tx, "lamps_revision")
            if current == revision:
                return None
            watches = await tx.fetch("SELECT DISTINCT resource FROM watches WHERE node <> $1",
                                     exclude_node)
            rows = await tx.fetch("SELECT resource, node, dialogs FROM lamps WHERE node <> $1 "
                                  "ORDER BY resource, node", exclude_node)
        dialogs: dict[str, dict[str, tuple[DialogView, ...]]] = {}
        for resource, node, text in rows:
            dialogs.setdefault(str(resource), {})[str(node)] = _dialog_views(str(text))
        return LampSnapshot(current, frozenset(str(r[0]) for r in watches), dialogs)

    async def clear_lamps(self, node: str) -> None:
        async with self._transaction() as tx:
            # The revision first (the order write_lamps locks in), moved only when
            # there are rows to drop.
            mine = await tx.fetch("SELECT 1 FROM watches WHERE node = $1 UNION ALL "
                                  "SELECT 1 FROM lamps WHERE node = $1 LIMIT 1", node)
            if mine:
                await _bump_revision(tx, "lamps_revision")
                await tx.execute("DELETE FROM watches WHERE node = $1", node)
                await tx.execute("DELETE FROM lamps WHERE node = $1", node)
                await self._notify_lamps(tx, node)


def _dialogs_json(resource: str, views: Sequence[DialogView]) -> str:
    """A resource's published dialogs as the ``lamps.dialogs`` JSON; a bad one is
    refused, named by its place (the whole write with it)."""
    out = []
    for i, v in enumerate(views):
        where = f"lamps[{resource!r}].dialogs[{i}]"
        if v.state not in DIALOG_STATES:
            raise ValueError(f"{where}.state: {v.state!r} is not one of "
                             f"{', '.join(DIALOG_STATES)}")
        if v.direction not in DIALOG_DIRECTIONS:
            raise ValueError(f"{where}.direction: {v.direction!r} is not one of "
                             f"{', '.join(DIALOG_DIRECTIONS)}")
        if not v.id:
            raise ValueError(f"{where}.id: empty")
        out.append([v.id, v.call_id, v.local_tag, v.remote_tag, v.direction, v.state,
                    list(v.local), list(v.remote)])
    return json.dumps(out, separators=(",", ":"))


def _dialog_views(text: str) -> tuple[DialogView, ...]:
    return tuple(DialogView(str(i), str(c), str(lt), str(rt), str(d), str(st),
                            (str(local[0]), str(local[1])), (str(remote[0]), str(remote[1])))
                 for i, c, lt, rt, d, st, local, remote in json.loads(text))


_API_KEY_COLUMNS = "id, name, role, department, secret_hash, created_at, revoked_at"


def _api_key(row: tuple[Any, ...]) -> ApiKey:
    key_id, name, role, department, secret_hash, created, revoked = row
    return ApiKey(id=str(key_id), name=str(name), role=ROLES[ROLES.index(role)],
                  department=str(department), secret_hash=str(secret_hash),
                  created_at=float(created),
                  revoked_at=None if revoked is None else float(revoked))


def _voicemail(row: tuple[Any, ...]) -> VoicemailMessage:
    id_, box, caller, when, duration, path, is_read = row
    return VoicemailMessage(id=str(id_), box=str(box), caller=str(caller), time=float(when),
                            duration=float(duration), path=str(path), read=bool(is_read))


_DIALOG_COLUMNS = "id, node, legs, answered_at"


def _legs_json(legs: Sequence[DialogLeg]) -> str:
    return json.dumps([{
        "call_id": g.call_id, "local_tag": g.local_tag, "remote_tag": g.remote_tag,
        "local_uri": g.local_uri, "remote_uri": g.remote_uri,
        "remote_target": g.remote_target, "route_set": list(g.route_set),
        "local_cseq": g.local_cseq, "local_contact": g.local_contact,
        "transport": g.transport, "peer_host": g.peer_host, "peer_port": g.peer_port,
    } for g in legs], sort_keys=True)


def _dialog_record(row: tuple[Any, ...]) -> DialogRecord:
    record_id, node, legs, answered_at = row
    return DialogRecord(id=str(record_id), node=str(node), answered_at=float(answered_at),
                        legs=tuple(DialogLeg(
                            call_id=str(g["call_id"]), local_tag=str(g["local_tag"]),
                            remote_tag=str(g["remote_tag"]), local_uri=str(g["local_uri"]),
                            remote_uri=str(g["remote_uri"]),
                            remote_target=str(g["remote_target"]),
                            route_set=tuple(str(r) for r in g["route_set"]),
                            local_cseq=int(g["local_cseq"]),
                            local_contact=str(g["local_contact"]),
                            transport=str(g["transport"]), peer_host=str(g["peer_host"]),
                            peer_port=int(g["peer_port"]))
                            for g in json.loads(str(legs))))


def _binding(row: tuple[Any, ...]) -> Binding:
    aor, contact, expires_at, q, call_id, cseq, source, user_agent, instance, reg_id, path = row
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
        path=_path_values(path),
    )


def _path_values(text: object) -> tuple[str, ...]:
    """A stored Path: a JSON array of strings (anything else reads as no Path)."""
    try:
        values = json.loads(str(text))
    except ValueError:
        return ()
    if not isinstance(values, list):
        return ()
    return tuple(str(v) for v in values)


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
        super().__init__()
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

    async def _columns(self, tx: _Tx, table: str) -> set[str]:
        return {str(row[1]) for row in await tx.fetch(f"PRAGMA table_info({table})")}


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


# asyncpg's pool keeps its minimum size by reconnecting on its own, and warns with a
# traceback at every failed try: while the database is away that is a traceback
# every few seconds. The engine says once that the store went and once that it is
# back (engine/shell/storelink.py); the pool's errors proper still show.
logging.getLogger("asyncpg.pool").setLevel(logging.ERROR)


class PostgresStore(_SQLStore):
    """PostgreSQL through an asyncpg pool.

    ``schema`` (lower-case letters, digits, ``_``) is created if missing and
    used as the ``search_path``, so several stores can share one database.
    """

    _for_share = " FOR SHARE"
    _for_update = " FOR UPDATE"

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
        super().__init__()
        self.url = url
        self.schema = schema
        self.min_connections = min_connections
        self.max_connections = max_connections
        self._pool: Any = None
        self._settings: dict[str, str] = {}
        # The channel binding writes NOTIFY on: one per schema, so stores sharing a
        # database (tests, two offices) do not wake each other. Set at open.
        self._channel = BINDINGS_CHANNEL
        self._lamps_channel = LAMPS_CHANNEL
        self._listener: Any = None  # the connection that LISTENs (not the pool's)

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
                # A new connection (the pool's, or one replacing a dead one) gives up
                # after this long rather than asyncpg's 60 s: a node whose store went
                # away learns it, and retries, on its own schedule.
                timeout=CONNECT_SECONDS,
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"cannot connect to PostgreSQL at {_redact(self.url)}: {exc}") from exc
        self._pool = pool
        self._settings = dict(settings)
        try:
            await self._create_schema()
            async with pool.acquire() as conn:
                schema = await conn.fetchval("SELECT current_schema()")
            self._channel = f"{BINDINGS_CHANNEL}_{schema or 'public'}"[:63]
            self._lamps_channel = f"{LAMPS_CHANNEL}_{schema or 'public'}"[:63]
        except BaseException:
            self._pool = None
            await pool.close()
            raise

    async def close(self) -> None:
        await self.unlisten_bindings()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def listen_bindings(self, notified: Callable[[str], None],
                              lost: Callable[[], None],
                              lamps: Callable[[str], None] | None = None) -> bool:
        # A connection of its own: LISTEN belongs to a session, and a pooled one would
        # go back to the pool (and its notifications with it). When it goes (the
        # server restarted, the network cut), ``lost`` says so; the caller listens
        # again once the store answers.
        await self.unlisten_bindings()
        conn = await asyncpg.connect(self.url, server_settings=self._settings,
                                     timeout=CONNECT_SECONDS)

        def on_notify(_conn: object, _pid: int, _channel: str, payload: str) -> None:
            notified(payload)

        def on_close(_conn: object) -> None:
            if self._listener is conn:
                self._listener = None
                lost()

        def on_lamps(_conn: object, _pid: int, _channel: str, payload: str) -> None:
            if lamps is not None:
                lamps(payload)

        try:
            await conn.add_listener(self._channel, on_notify)
            if lamps is not None:  # the same connection: one LISTEN session per node
                await conn.add_listener(self._lamps_channel, on_lamps)
        except BaseException:
            await conn.close()
            raise
        conn.add_termination_listener(on_close)
        self._listener = conn
        return True

    async def unlisten_bindings(self) -> None:
        conn, self._listener = self._listener, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), CONNECT_SECONDS)
            except Exception:
                conn.terminate()

    async def _notify_bindings(self, tx: _Tx, node: str) -> None:
        await tx.execute("SELECT pg_notify($1, $2)", self._channel, node)

    async def _notify_lamps(self, tx: _Tx, node: str) -> None:
        await tx.execute("SELECT pg_notify($1, $2)", self._lamps_channel, node)

    async def reset_connections(self) -> None:
        # Each pooled connection is replaced at its next use: after a restart of the
        # server they are all dead, and each would otherwise fail one statement first.
        if self._pool is not None:
            await self._pool.expire_connections()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[_Tx]:
        pool = self._pool
        if pool is None:
            raise StoreError(f"{self!r} is not open")
        async with pool.acquire() as conn, conn.transaction():
            yield _PostgresTx(conn)

    async def _columns(self, tx: _Tx, table: str) -> set[str]:
        rows = await tx.fetch("SELECT column_name FROM information_schema.columns "
                              "WHERE table_schema = current_schema() AND table_name = $1",
                              table)
        return {str(row[0]) for row in rows}

    async def _lock_for_apply(self, tx: _Tx) -> None:
        # A transaction-scoped advisory lock: schema creation and applies from
        # several processes run one at a time.  Table creation races otherwise.
        await tx.execute("SELECT pg_advisory_xact_lock(hashtext('switchboard.directory'))")
