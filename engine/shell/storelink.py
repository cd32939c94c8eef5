"""The engine's link to its store: changes written behind, the store going away and
coming back.

The call path never waits on the store. A registration's binding (and a voicemail
message's row, when the store cannot take it at once) goes into
:class:`PendingWrites`, which the writer task empties in order, in batches. When
the store cannot be reached (refused, reset, shutting down: see
:func:`provisioning.store.connection_lost`), the link goes *down*: one log line,
``switchboard_store_up`` 0, the periodic readers (bindings of other nodes,
heartbeat, directory reload) skip their turn, the engine serves from what it holds
in memory, and changes keep queuing. A reconnect task pings the store with
exponential backoff and jitter; at the first answer the link is *up* again (one
log line) and the writer replays the queue in the order of the changes.

The queue is bounded (``MAX_QUEUED_WRITES`` distinct keys). It holds one entry per
key (a binding's aor and contact, a message's id): a phone that refreshes its
registration ten times during an outage takes one entry, not ten, so the bound is
on phones and messages, not on time. At the bound a change to a key not queued
yet is dropped, counted (``switchboard_store_writes_dropped_total{reason="full"}``)
and logged once per outage; it is never waited for. What that loses: the binding
is still in this node's memory (its calls work) but not in the store until the
phone's next refresh, which queues it again once there is room.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import structlog

from engine.metrics import Metrics
from provisioning.model import Binding, DialogRecord, DialogView, VoicemailMessage
from provisioning.store import Store, connection_lost

log = structlog.get_logger("switchboard.store")

WRITE_BATCH = 500  # binding and dialog changes per store transaction
# The writer's pause once woken by a change. Without it each answered call cost two
# store transactions of its own (its dialog record, then its end), a third of the
# engine's CPU at a few hundred short calls a second; with it the changes of a
# quarter second share one transaction. A dead node's calls are found that much
# later (bound: 30 s), and other nodes read a binding that much later.
COALESCE_SECONDS = 0.25
# Distinct keys queued at most. A binding takes about 1 KiB here: 50,000 is about
# 50 MiB, and covers an outage during which every phone of a large office
# registers (a refresh of a queued binding takes no new room).
MAX_QUEUED_WRITES = 50_000
# Reconnect: the first try after about BACKOFF_FIRST, doubling to BACKOFF_MAX; each
# wait is drawn from half to one and a half times the step, so that nodes that lost
# the store together do not all knock at the same instant when it restarts.
BACKOFF_FIRST = 0.25
BACKOFF_MAX = 8.0
PING_SECONDS = 5.0  # one reconnect try (connect + SELECT 1)
# A batch not written within this long counts as the store gone (a server that
# stopped answering without closing its connections): the batch stays queued and is
# written again once a ping gets through. Bindings are upserts and a message's row
# has its own id, so a batch that did commit after all is harmless to write again.
WRITE_SECONDS = 30.0

Key = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class BindingWrite:
    op: Literal["save", "delete"]
    binding: Binding

    @property
    def key(self) -> Key:
        return ("binding", self.binding.aor, self.binding.contact)


@dataclass(frozen=True, slots=True)
class VoicemailWrite:
    message: VoicemailMessage

    @property
    def key(self) -> Key:
        return ("voicemail", self.message.id)


@dataclass(frozen=True, slots=True)
class DialogWrite:
    """A call's dialog record (``record`` set) or its end (``record`` None): the record
    lets another node end the call if this one dies."""
    id: str
    record: DialogRecord | None

    @property
    def key(self) -> Key:
        return ("dialog", self.id)


@dataclass(frozen=True, slots=True)
class WatchWrite:
    """This node's subscriptions began (or stopped) watching ``resource``."""
    resource: str
    watched: bool

    @property
    def key(self) -> Key:
        return ("watch", self.resource)


@dataclass(frozen=True, slots=True)
class LampWrite:
    """This node's dialogs of ``resource`` (another node watches it); none: idle."""
    resource: str
    dialogs: tuple[DialogView, ...]

    @property
    def key(self) -> Key:
        return ("lamp", self.resource)


Write = BindingWrite | DialogWrite | LampWrite | VoicemailWrite | WatchWrite


class PendingWrites:
    """Changes not in the store yet: one per key, in the order of each key's last
    change (a new change to a queued key replaces it and moves it last), at most
    ``limit`` keys.

    The writer takes a batch with :meth:`head` and, once the store has it, removes
    it with :meth:`done`: an entry changed again while its batch was being written
    is kept (its newer change is written next), so nothing acknowledged is lost.
    """

    def __init__(self, limit: int = MAX_QUEUED_WRITES) -> None:
        if limit < 1:
            raise ValueError("limit: at least 1")
        self.limit = limit
        self._entries: dict[Key, Write] = {}
        self.dropped = 0  # changes refused at the bound, since the start
        self._taken: set[Key] = set()  # the batch being written
        self._dialogs_stored: set[str] = set()  # dialog records known to be in the store

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, write: Write) -> bool:
        """Queue ``write``; False (and counted in ``dropped``) when the queue is at its
        bound and ``write`` would take a new key."""
        key = write.key
        if isinstance(write, DialogWrite) and write.record is None \
                and write.id not in self._dialogs_stored and key not in self._taken:
            # A call that ended before its record reached the store: the record and
            # its end cancel out, and neither is written (most calls of a busy
            # minute, with the writer's coalescing pause).
            self._entries.pop(key, None)
            return True
        if key in self._entries:
            del self._entries[key]  # re-inserted last: written after the changes before it
        elif len(self._entries) >= self.limit:
            self.dropped += 1
            return False
        self._entries[key] = write
        return True

    def head(self, limit: int = WRITE_BATCH) -> list[Write]:
        """The oldest changes that go in one store call: up to ``limit`` binding and
        dialog changes in a row, or one voicemail message."""
        taken: list[Write] = []
        for write in self._entries.values():
            if isinstance(write, VoicemailWrite):
                if not taken:
                    taken.append(write)
                break
            taken.append(write)
            if len(taken) >= limit:
                break
        self._taken = {write.key for write in taken}
        return taken

    def done(self, taken: list[Write]) -> None:
        """``taken`` is in the store: forget each entry unless it changed meanwhile."""
        entries = self._entries
        stored = self._dialogs_stored
        for write in taken:
            key = write.key
            if entries.get(key) is write:
                del entries[key]
            if isinstance(write, DialogWrite):
                if write.record is None:
                    stored.discard(write.id)
                else:
                    stored.add(write.id)
        self._taken = set()


class StoreLink:
    """Writes behind to ``store``, knows whether it is reachable, reconnects."""

    def __init__(self, store: Store, metrics: Metrics, *, limit: int = MAX_QUEUED_WRITES,
                 rng: Callable[[], float] = random.random) -> None:
        self.store = store
        self.metrics = metrics
        self.pending = PendingWrites(limit)
        self.node_id = ""  # stamped on binding rows; set by the server before run()
        self.up = True
        self._rng = rng
        self._queued = asyncio.Event()
        self._back = asyncio.Event()
        self._back.set()
        self._down_at = 0.0
        self._dropped_at_loss = 0
        self._full_logged = False
        self._reconnecting: asyncio.Task[None] | None = None
        metrics.store_up.set(1)
        metrics.store_queued_writes.set(0)

    # -- the call path: never waits ------------------------------------------------------
    def save_binding(self, binding: Binding) -> None:
        self._put(BindingWrite("save", binding))

    def delete_binding(self, binding: Binding) -> None:
        self._put(BindingWrite("delete", binding))

    def save_dialog(self, record: DialogRecord) -> None:
        self._put(DialogWrite(record.id, record))

    def end_dialog(self, record_id: str) -> None:
        self._put(DialogWrite(record_id, None))

    def save_watch(self, resource: str, watched: bool) -> None:
        self._put(WatchWrite(resource, watched))

    def save_lamp(self, resource: str, dialogs: tuple[DialogView, ...]) -> None:
        self._put(LampWrite(resource, dialogs))

    def _put(self, write: Write) -> None:
        if not self.pending.put(write):
            self.metrics.store_writes_dropped.labels("full").inc()
            if not self._full_logged:
                self._full_logged = True
                log.error("store write queue full: new changes are dropped until it drains",
                          limit=self.pending.limit, store_up=self.up)
            return
        self.metrics.store_queued_writes.set(len(self.pending))
        self._queued.set()

    async def save_voicemail(self, message: VoicemailMessage) -> None:
        """The message's row now when the store answers, else queued: the caller has
        left it, and the WAV is on disk already."""
        if self.up:
            try:
                await asyncio.wait_for(self.store.save_voicemail(message), WRITE_SECONDS)
                return
            except Exception as exc:
                if not connection_lost(exc):
                    raise
                self.lost(exc, "voicemail")
        self._put(VoicemailWrite(message))

    # -- readers ---------------------------------------------------------------------------
    async def attempt(self, what: str, work: Callable[[], Awaitable[None]]) -> bool:
        """``work()`` against the store unless it is away; True when it ran. Losing the
        store on the way marks it down (False); any other error is raised."""
        if not self.up:
            return False
        try:
            await work()
        except Exception as exc:
            if not connection_lost(exc):
                raise
            self.lost(exc, what)
            return False
        return True

    # -- up and down -----------------------------------------------------------------------
    def lost(self, exc: BaseException, what: str) -> None:
        """The store did not answer ``what``: down until a ping gets through."""
        if not self.up:
            return
        self.up = False
        self._back.clear()
        self._down_at = time.monotonic()
        self._dropped_at_loss = self.pending.dropped
        self.metrics.store_up.set(0)
        log.warning("store unreachable: serving from memory, queuing changes", during=what,
                    error=f"{type(exc).__name__}: {exc}"[:300], queued=len(self.pending))
        self._reconnecting = asyncio.create_task(self._reconnect())

    async def _reconnect(self) -> None:
        step = BACKOFF_FIRST
        tries = 0
        while True:
            await asyncio.sleep(step * (0.5 + self._rng()))
            tries += 1
            self.metrics.store_reconnect_attempts.inc()
            await self.store.reset_connections()
            try:
                await asyncio.wait_for(self.store.ping(), PING_SECONDS)
            except Exception as exc:
                if not connection_lost(exc):
                    log.debug("store ping failed", error=f"{type(exc).__name__}: {exc}"[:300])
                step = min(step * 2, BACKOFF_MAX)
                continue
            break
        self.up = True
        self._full_logged = False
        self.metrics.store_up.set(1)
        self.metrics.store_reconnects.inc()
        log.info("store back: writing the queued changes",
                 down_seconds=round(time.monotonic() - self._down_at, 1), tries=tries,
                 queued=len(self.pending), dropped=self.pending.dropped - self._dropped_at_loss)
        self._back.set()

    # -- the writer ------------------------------------------------------------------------
    async def run(self) -> None:
        """The writer task: the queue into the store, oldest first, batch by batch."""
        pending = self.pending
        while True:
            if not pending:
                self._full_logged = False  # drained: a next overflow is news again
                self._queued.clear()
                await self._queued.wait()
            if len(pending) < WRITE_BATCH:
                # A short pause before a batch that is not full: what arrives
                # meanwhile goes in the same transaction, and a call's record and
                # its end cancel out when the call is shorter than the pause
                # (PendingWrites.put). A full batch is written at once.
                await asyncio.sleep(COALESCE_SECONDS)
            await self._back.wait()
            taken = pending.head(WRITE_BATCH)
            if not taken:  # what was queued cancelled out during the pause
                continue
            try:
                await asyncio.wait_for(self._write(taken), WRITE_SECONDS)
            except Exception as exc:
                if connection_lost(exc):
                    self.lost(exc, "write")
                    continue  # kept, replayed once the store is back
                # The store refused the statement itself: retrying cannot help, and
                # would hold back every change queued behind it.
                self.metrics.store_writes_dropped.labels("refused").inc(len(taken))
                log.exception("store write refused; the changes are dropped", count=len(taken))
            pending.done(taken)
            self.metrics.store_queued_writes.set(len(pending))

    async def _write(self, taken: list[Write]) -> None:
        first = taken[0]
        if isinstance(first, VoicemailWrite):
            await self.store.save_voicemail(first.message)
            return
        saved: list[Binding] = []
        removed: list[Binding] = []
        records: list[DialogRecord] = []
        ended: list[str] = []
        watched: list[str] = []
        unwatched: list[str] = []
        lamps: dict[str, tuple[DialogView, ...]] = {}
        for write in taken:
            if isinstance(write, BindingWrite):
                (saved if write.op == "save" else removed).append(write.binding)
            elif isinstance(write, DialogWrite):
                if write.record is None:
                    ended.append(write.id)
                else:
                    records.append(write.record)
            elif isinstance(write, WatchWrite):
                (watched if write.watched else unwatched).append(write.resource)
            elif isinstance(write, LampWrite):
                lamps[write.resource] = write.dialogs
        if saved or removed:
            await self.store.write_bindings(saved, node=self.node_id, removed=removed)
        # Records are upserts and deletions by id: a batch written twice (a store that
        # committed but did not answer in time) leaves the same rows.
        if records or ended:
            await self.store.write_dialogs(records, ended)
        # Lamps are upserts and deletions by (node, resource) too: a replay is harmless.
        if watched or unwatched or lamps:
            await self.store.write_lamps(self.node_id, watched=watched, unwatched=unwatched,
                                         dialogs=lamps)

    async def flush(self, seconds: float) -> int:
        """Wait up to ``seconds`` for the queue to empty (a clean stop); how many
        changes are still queued."""
        deadline = time.monotonic() + seconds
        while self.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return len(self.pending)

    async def close(self) -> None:
        task, self._reconnecting = self._reconnecting, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
