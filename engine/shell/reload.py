"""The reload poller: what changed in the store reaches the engine.

A directory apply or a status change (the admin API, the CLI, another node)
bumps the store's revision; a message left, read or deleted bumps its voicemail
revision. Polled once a second (and at once after an admin API write), each
change is read whole and handed to the engine: a new snapshot for the next
call, new message counts for the phones' lamps (RFC 3842).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from engine.core import Engine, Outcome
from provisioning.store import Store

__all__ = ["Reloader"]

log = structlog.get_logger("switchboard.app")


class Reloader:
    """The store revisions this engine has applied, and the poll that moves them."""

    def __init__(self, engine: Engine, store: Store, apply: Callable[[Outcome], None],
                 rearm: Callable[[], None]) -> None:
        self.engine = engine
        self.store = store
        self.apply = apply  # carries out what the engine returns (MWI NOTIFYs)
        self.rearm = rearm  # a new snapshot may bring new deadlines (trunks registering)
        self._revision = 0
        self._vm_revision = 0

    async def load(self) -> None:
        """At start: the revisions the engine's snapshot was loaded at, the live
        statuses, and every mailbox's message counts."""
        store = self.store
        self._revision = await store.revision()
        self.engine.set_statuses(await store.load_status_overrides())
        self._vm_revision = await store.voicemail_revision()
        self.apply(self.engine.set_mwi_counts(await store.voicemail_counts(),
                                              time.monotonic()))

    async def reload(self) -> None:
        """A directory apply or a status change (another process) reaches the next call;
        a message left, read or deleted (here or by the CLI) reaches the phones' lamps."""
        vm_revision = await self.store.voicemail_revision()
        if vm_revision != self._vm_revision:
            self._vm_revision = vm_revision
            self.apply(self.engine.set_mwi_counts(await self.store.voicemail_counts(),
                                                  time.monotonic()))
        revision = await self.store.revision()
        if revision == self._revision:
            return
        directory = await self.store.load_directory()
        statuses = await self.store.load_status_overrides()
        self._revision = revision
        if directory is None:
            return
        self.engine.set_directory(directory)
        self.engine.set_statuses(statuses)
        self.rearm()
        log.info("directory reloaded", revision=revision, users=len(directory.users),
                 live_statuses=len(statuses))
