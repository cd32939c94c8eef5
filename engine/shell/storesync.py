"""The engine and the store, off the hot path: writes behind, the other nodes, takeover.

Registrations change in memory at once (the registrar), and the call layer keeps
a dialog record per answered call (``engine.calls.records``); this module hands
those changes to the :class:`~engine.shell.storelink.StoreLink`, which writes
them behind in batches and rides out the store going away. In the background it
reads back what the other nodes sharing the store registered (at once when
PostgreSQL notifies a write, and every ``poll_seconds`` anyway), keeps a heartbeat
row per node (``switchboard nodes``), purges expired bindings, and, when another
node's heartbeat has stopped, claims that node's dialog records and ends its
calls with a BYE to each party (the takeover).

Busy lamps cross the nodes the same way (``engine.services.lamps``): the resources
this node's subscriptions watch, and its dialogs of the resources another node
watches, go behind through the link; the others' are read when PostgreSQL notifies
a lamp write (on the bindings' listening connection) and every ``poll_seconds``
anyway (one read of the lamps revision when nothing moved), and handed to the
engine, whose watchers get the merged state.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import structlog

from engine.core import Engine, Outcome
from engine.shell.config import default_node_id
from engine.shell.storelink import StoreLink
from provisioning.model import Binding, Node
from provisioning.store import Store, Takeover, connection_lost

__all__ = ["DEAD_AFTER_SECONDS", "StoreSync"]

log = structlog.get_logger("switchboard.app")

# At a clean stop, changes still queued for the store get this long to be written
# (the store may be away: the stop must end anyway, and says how many were lost).
STOP_FLUSH_SECONDS = 5.0
# Nodes sharing a store: how often each reads the bindings the others wrote when
# nothing told it sooner. On PostgreSQL every binding write NOTIFYs and the others
# read it at once (milliseconds); this poll is the fallback (a notification lost
# with its connection, until the node listens again) and the only way on SQLite.
BINDING_SYNC_SECONDS = 1.0
# The background loop's tick: heartbeat, takeover, purge, listening again.
TICK_SECONDS = 1.0
HEARTBEAT_SECONDS = 2.0
# Expired and deleted bindings leave the store this long after their time (every
# node has read a deletion by then), checked every BINDING_PURGE_PERIOD.
BINDING_PURGE_GRACE = 300.0
BINDING_PURGE_PERIOD = 60.0
# A node whose heartbeat is older than this is dead (three heartbeats missed, plus
# the sync tick): one survivor claims its calls' dialog records and ends the calls
# with a BYE to each party. Checked every TAKEOVER_SECONDS, so a dead node's calls
# end within about DEAD_AFTER_SECONDS + TAKEOVER_SECONDS + one BYE round trip. A
# claim whose claimer died before ending the calls is taken again after
# RECLAIM_SECONDS. Heartbeat times are each node's wall clock: keep them in sync (NTP).
DEAD_AFTER_SECONDS = 4 * HEARTBEAT_SECONDS
TAKEOVER_SECONDS = 2.0
RECLAIM_SECONDS = 60.0


class StoreSync:
    """This node's store writes (behind, through the link), the other nodes' bindings
    read, its heartbeat, and the takeover of dead nodes' calls."""

    def __init__(self, engine: Engine, store: Store, node_id: str,
                 apply: Callable[[Outcome], None],
                 poll_seconds: float = BINDING_SYNC_SECONDS) -> None:
        self.engine = engine
        self.store = store
        self.node_id = node_id
        self.apply = apply  # carries out the BYEs of a takeover, the rings a merged binding brings
        self.link = StoreLink(store, engine.metrics)  # writes behind; the store's ups and downs
        self._tasks: list[asyncio.Task[None]] = []
        self._binding_revision = 0  # the first sync reads every other node's binding
        self.poll_seconds = poll_seconds  # reading the others' bindings unasked
        self._synced_at = 0.0
        # Another node wrote bindings (PostgreSQL NOTIFY): read them now.
        self._notified = asyncio.Event()
        self._bindings_due = False  # what the notification was about
        self._lamps_due = False
        self._lamps_revision = -1  # the first read takes every other node's lamps
        self._lamps_read_at = 0.0
        self._listening = False
        self._listen_supported = True  # until the store says it cannot (SQLite)
        self._started_wall = time.time()
        self._heartbeat_at = 0.0
        self._purged_at = time.monotonic()
        self._takeover_at = 0.0
        # Since when the store has answered every sync and heartbeat (None: it failed
        # last time): a node judges others dead only after DEAD_AFTER_SECONDS of that.
        self._store_ok_since: float | None = None

    # -- the call path: never waits --------------------------------------------------------
    def save(self, binding: Binding) -> None:
        self.link.save_binding(binding)

    def delete(self, binding: Binding) -> None:
        self.link.delete_binding(binding)

    def take_records(self) -> None:
        """The dialog records the call layer wrote or ended since the last input, into
        the write queue."""
        saved, ended = self.engine.calls.take_records()
        for record in saved:
            self.link.save_dialog(record)
        for record_id in ended:
            self.link.end_dialog(record_id)
        lamps = self.engine.lamps
        if lamps.watch_writes or lamps.dialog_writes:  # else: nothing to do, no call
            watches, dialogs = self.engine.take_lamps()
            metrics = self.engine.metrics
            for resource, watched in watches.items():
                self.link.save_watch(resource, watched)
            for resource, views in dialogs.items():
                self.link.save_lamp(resource, views)
            if watches:
                metrics.lamp_writes.labels("watch").inc(len(watches))
            if dialogs:
                metrics.lamp_writes.labels("dialogs").inc(len(dialogs))

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self, port: int) -> None:
        """Name this node (host:``port`` unless configured), read the other nodes'
        bindings, heartbeat, end the calls a previous run of this node left, then keep
        writing and sharing in the background."""
        if not self.node_id:
            self.node_id = default_node_id(port)
        self.engine.node_id = self.node_id
        self.link.node_id = self.node_id
        await self._listen()  # first: a write between the sync and the LISTEN is not missed
        await self._sync_bindings()
        await self._heartbeat(time.monotonic())
        # Watches and dialogs a previous run of this node left: its subscriptions and
        # calls are gone with it.
        await self.store.clear_lamps(self.node_id)
        await self._sync_lamps()
        # Calls this node held when it last died (killed, and back before another node
        # noticed): nobody holds them now; their parties get a BYE.
        left = await self.store.claim_own_dialogs(self.node_id, time.time())
        if left:
            self._end_dialogs(Takeover((), tuple(left)), previous_run=True)
            await self.store.write_dialogs([], [r.id for r in left])
        self._tasks.append(asyncio.create_task(self.link.run()))
        self._tasks.append(asyncio.create_task(self._share_bindings()))

    async def flush(self) -> None:
        """Queued changes written, waiting at most STOP_FLUSH_SECONDS (the store may be
        away); what is left is logged."""
        left = await self.link.flush(STOP_FLUSH_SECONDS)
        if left:
            log.error("store changes not written at stop", count=left, store_up=self.link.up)

    async def stop(self) -> None:
        """The background work ends and this node's heartbeat row goes (when the store
        is there to take the deletion)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._listening = False
        with contextlib.suppress(Exception):
            await self.store.unlisten_bindings()
        await self.link.close()
        try:
            if self.link.up:
                await self.store.clear_lamps(self.node_id)
                await self.store.remove_node(self.node_id)
        except Exception as exc:
            if not connection_lost(exc):
                log.exception("node row not removed", node=self.node_id)

    # -- background work -------------------------------------------------------------------
    async def _share_bindings(self) -> None:
        """Read what the other nodes registered (when told, else every poll_seconds),
        heartbeat, take over, listen again; off the hot path."""
        tick_at = time.monotonic() + TICK_SECONDS
        while True:
            left = tick_at - time.monotonic()
            if left > 0 and not self._notified.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._notified.wait(), left)
            now = time.monotonic()
            # Not woken by a notification: the tick (the loop's timer may fire a
            # hair before tick_at by this clock).
            tick = now >= tick_at or not self._notified.is_set()
            if tick:
                tick_at = now + TICK_SECONDS
            # Cleared before reading: a write committed while the read runs sets it
            # again, and is read next round.
            self._notified.clear()
            try:
                if tick:
                    ok = await self.link.attempt("binding sync", self._share_once)
                else:
                    ok = await self.link.attempt("binding sync", self._sync_notified)
                if not ok:
                    self._store_ok_since = None
            except Exception:
                self._store_ok_since = None
                log.exception("binding sync failed; keeping the bindings held")

    def _on_notify(self, node: str) -> None:
        if node != self.node_id:  # our own writes: nothing to read
            self._bindings_due = True
            self._notified.set()

    def _on_lamps(self, node: str) -> None:
        if node != self.node_id:
            self._lamps_due = True
            self._notified.set()

    async def _sync_notified(self) -> None:
        """What a notification asked for: the bindings, the lamps, or both."""
        bindings, lamps = self._bindings_due, self._lamps_due
        if lamps:
            await self._sync_lamps()
        if bindings or not lamps:
            await self._sync_bindings()

    def _on_listen_lost(self) -> None:
        # The listening connection went (its notifications with it): the poll covers
        # until the next tick listens again, once the store answers.
        if self._listening:
            self._listening = False
            log.info("binding notifications lost: polling until listening again",
                     poll_seconds=self.poll_seconds)

    async def _listen(self) -> None:
        """LISTEN for other nodes' binding writes, when the store can; read once after
        (what was written while nobody listened)."""
        if not self._listen_supported or self._listening:
            return
        try:
            listening = await self.store.listen_bindings(self._on_notify, self._on_listen_lost,
                                                         self._on_lamps)
        except Exception as exc:
            if not connection_lost(exc):
                raise
            return  # the store is away: the link notices on its next statement
        if not listening:
            self._listen_supported = False
            return
        self._listening = True
        self._bindings_due = self._lamps_due = True
        self._notified.set()
        log.info("listening for binding changes", poll_seconds=self.poll_seconds)

    async def _share_once(self) -> None:
        await self._listen()
        now = time.monotonic()
        if self._notified.is_set() or now - self._synced_at >= self.poll_seconds:
            self._notified.clear()
            await self._sync_bindings()
        if self._lamps_due or now - self._lamps_read_at >= self.poll_seconds:
            await self._sync_lamps()
        await self._heartbeat(now)
        if self._store_ok_since is None:
            self._store_ok_since = now
        # Judge the others only after DEAD_AFTER_SECONDS of store access without a
        # break: back from a store outage, every other node's heartbeat looks old
        # until it has beaten again, and none of them is dead for that.
        if now - self._takeover_at >= TAKEOVER_SECONDS \
                and now - self._store_ok_since >= DEAD_AFTER_SECONDS:
            self._takeover_at = now
            wall = time.time()
            took = await self.store.take_over(
                self.node_id, wall - DEAD_AFTER_SECONDS, wall, wall - RECLAIM_SECONDS)
            if took.dead or took.records:
                self._end_dialogs(took)
                await self.store.write_dialogs([], [r.id for r in took.records])
            if took.dead:  # their lamps went with them: our watchers see them idle now
                await self._sync_lamps()
        if now - self._purged_at >= BINDING_PURGE_PERIOD:
            self._purged_at = now
            await self.store.purge_expired_bindings(time.time() - BINDING_PURGE_GRACE)

    def _end_dialogs(self, took: Takeover, previous_run: bool = False) -> None:
        """BYE both parties of each call in ``took`` (engine.calls.records), and say so
        once per node whose calls they were."""
        self.apply(self.engine.end_dialogs(took.records, time.monotonic()))
        per_node: dict[str, int] = dict.fromkeys(took.dead, 0)
        for record in took.records:
            per_node[record.node] = per_node.get(record.node, 0) + 1
        for node, calls in sorted(per_node.items()):
            if previous_run:
                log.warning("calls of this node's previous run ended", node=node, calls=calls)
            else:
                log.warning("node dead: its calls ended", node=node, calls=calls,
                            by=self.node_id, heartbeat_missing=node in took.dead,
                            dead_after_seconds=DEAD_AFTER_SECONDS)

    async def _sync_lamps(self) -> None:
        """The other nodes' watches and dialogs, when the lamps revision moved, into the
        engine: its watchers' NOTIFYs, and what it must publish for the others."""
        self._lamps_due = False
        self._lamps_read_at = time.monotonic()
        snapshot = await self.store.lamps_state(self._lamps_revision,
                                                exclude_node=self.node_id)
        if snapshot is None:
            return
        self._lamps_revision = snapshot.revision
        self.apply(self.engine.cluster_lamps(snapshot.watched, snapshot.dialogs,
                                             time.monotonic()))

    async def _sync_bindings(self) -> None:
        """Bindings other nodes saved or deleted since the last look, into the registrar:
        the next call to one of those phones goes where it registered last."""
        self._bindings_due = False
        self._synced_at = time.monotonic()
        changes = await self.store.bindings_since(self._binding_revision,
                                                  exclude_node=self.node_id)
        self._binding_revision = changes.revision
        if changes.saved or changes.deleted:
            self.apply(self.engine.merge_bindings(changes.saved, changes.deleted, time.time(),
                                                  time.monotonic()))
            log.debug("bindings from other nodes", saved=len(changes.saved),
                      deleted=len(changes.deleted), revision=changes.revision)

    async def _heartbeat(self, now: float) -> None:
        if now - self._heartbeat_at < HEARTBEAT_SECONDS and self._heartbeat_at:
            return
        self._heartbeat_at = now
        engine = self.engine
        await self.store.heartbeat(Node(
            id=self.node_id, address=f"{engine.advertise}:{engine.port}",
            started_at=self._started_wall, last_seen=time.time(),
            calls=engine.calls.active_count, registrations=engine.registrar.count()))
