"""Bindings between the engine and the store, off the hot path.

Registrations change in memory at once (the registrar); this module writes
those changes through to the store in the background, in batches, and reads
back what the other nodes sharing the store registered, with a heartbeat row
per node (``switchboard nodes``) and a periodic purge of expired bindings.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

import structlog

from engine.core import Engine
from provisioning.model import Binding, Node
from provisioning.store import Store

__all__ = ["StoreSync"]

log = structlog.get_logger("switchboard.app")

WRITE_BATCH = 500  # binding changes per store transaction
# Nodes sharing a store: how often each reads the bindings the others wrote (a
# phone registered through one node is reachable through the others after
# about this long) and refreshes its heartbeat row (see `switchboard nodes`).
BINDING_SYNC_SECONDS = 1.0
HEARTBEAT_SECONDS = 2.0
# Expired and deleted bindings leave the store this long after their time (every
# node has read a deletion by then), checked every BINDING_PURGE_PERIOD.
BINDING_PURGE_GRACE = 300.0
BINDING_PURGE_PERIOD = 60.0


class StoreSync:
    """This node's binding writes, the other nodes' bindings read, its heartbeat."""

    def __init__(self, engine: Engine, store: Store, node_id: str) -> None:
        self.engine = engine
        self.store = store
        self.node_id = node_id
        self._writes: asyncio.Queue[tuple[str, Binding]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._binding_revision = 0  # the first sync reads every other node's binding
        self._started_wall = time.time()
        self._heartbeat_at = 0.0
        self._purged_at = time.monotonic()

    def save(self, binding: Binding) -> None:
        self._writes.put_nowait(("save", binding))

    def delete(self, binding: Binding) -> None:
        self._writes.put_nowait(("delete", binding))

    async def start(self, port: int) -> None:
        """Read the other nodes' bindings, heartbeat, then keep doing so in the
        background; this node is named host:``port`` unless configured."""
        if not self.node_id:
            self.node_id = f"{socket.gethostname()}:{port}"
        await self._sync_bindings()
        await self._heartbeat(time.monotonic())
        self._tasks.append(asyncio.create_task(self._writer()))
        self._tasks.append(asyncio.create_task(self._share_bindings()))

    async def flush(self) -> None:
        """Every queued change written."""
        await self._writes.join()

    async def stop(self) -> None:
        """The background work ends and this node's heartbeat row goes."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            await self.store.remove_node(self.node_id)
        except Exception:
            log.exception("node row not removed", node=self.node_id)

    async def _writer(self) -> None:
        """Write binding changes through to the store, in order, off the hot path.

        Whatever piled up while the previous batch was written goes in one
        transaction; for one (aor, contact) only the last change counts.
        """
        while True:
            batch = [await self._writes.get()]
            while not self._writes.empty() and len(batch) < WRITE_BATCH:
                batch.append(self._writes.get_nowait())
            latest: dict[tuple[str, str], tuple[str, Binding]] = {}
            for op, b in batch:
                latest[(b.aor, b.contact)] = (op, b)
            saved = [b for op, b in latest.values() if op == "save"]
            removed = [b for op, b in latest.values() if op == "delete"]
            try:
                await self.store.write_bindings(saved, node=self.node_id, removed=removed)
            except Exception:
                log.exception("store write failed", saved=len(saved), deleted=len(removed))
            finally:
                for _ in batch:
                    self._writes.task_done()

    async def _share_bindings(self) -> None:
        """Read what the other nodes registered, and heartbeat; off the hot path."""
        while True:
            await asyncio.sleep(BINDING_SYNC_SECONDS)
            try:
                await self._sync_bindings()
                now = time.monotonic()
                await self._heartbeat(now)
                if now - self._purged_at >= BINDING_PURGE_PERIOD:
                    self._purged_at = now
                    await self.store.purge_expired_bindings(time.time() - BINDING_PURGE_GRACE)
            except Exception:
                log.exception("binding sync failed; keeping the bindings held")

    async def _sync_bindings(self) -> None:
        """Bindings other nodes saved or deleted since the last look, into the registrar:
        the next call to one of those phones goes where it registered last."""
        changes = await self.store.bindings_since(self._binding_revision,
                                                  exclude_node=self.node_id)
        self._binding_revision = changes.revision
        if changes.saved or changes.deleted:
            self.engine.registrar.merge(changes.saved, changes.deleted, time.time())
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
