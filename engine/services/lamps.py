"""Busy lamps and presence across the nodes sharing one store, sans-I/O.

A node's subscriptions see its own calls (``dialoginfo.DialogBook``); a call to a
watched extension may be carried by another node. :class:`ClusterLamps` keeps what
crosses between nodes, and nothing else:

* **watched here**: the resources (extensions, park orbits) this node's dialog and
  presence subscriptions watch. Each change of that set (a first subscription to a
  resource, the last one gone) is written behind to the store (``watches``).
* **watched elsewhere**: the resources the other nodes' subscriptions watch, read
  from the store. For those, and only those, this node publishes its dialogs
  (``lamps``) when they change: a call's path costs no store write while nobody
  in the cluster watches its extension, and a node alone on its store (SQLite)
  never publishes at all.
* **published elsewhere**: the other nodes' dialogs of the resources watched here;
  :meth:`ClusterLamps.merge` puts them beside this node's own in each document.

Decisions:

* A node publishes its whole list of dialogs of a resource (the view its own
  watchers would get), not changes: the reader replaces the node's row, so a lost
  or repeated write leaves nothing stale, and the document stays full state
  (RFC 4235 s4.1).
* Ended dialogs are published as ``terminated`` (the lamp says the call ended);
  the reader shows another node's ended dialogs for ``ENDED_LINGER`` seconds after
  it read them, as the book does its own, then leaves them out. An idle resource's
  row is deleted, not written empty.
* A resource that stops being watched elsewhere gets its row deleted, so the
  table holds only what somebody looks at.
* Merged documents list this node's dialogs and the others' by the same rank
  (ringing, connected, being set up, ended) and bound (``MAX_DIALOGS``).
"""

from __future__ import annotations

from collections.abc import Mapping

from engine.services.dialoginfo import ENDED_LINGER, ENDED_SHOWN, MAX_DIALOGS, RANK
from provisioning.model import DialogView

__all__ = ["ClusterLamps"]


class ClusterLamps:
    """What this node shares with the others about busy lamps (see the module)."""

    def __init__(self) -> None:
        self.watched_elsewhere: frozenset[str] = frozenset()
        # resource -> node -> (its dialogs, when this node read them)
        self._remote: dict[str, dict[str, tuple[tuple[DialogView, ...], float]]] = {}
        self._watched_here: set[str] = set()  # as last written to the store
        self._published: dict[str, tuple[DialogView, ...]] = {}  # as last written
        # Not written yet (the shell drains them into the write-behind queue).
        self.watch_writes: dict[str, bool] = {}  # resource -> watched
        self.dialog_writes: dict[str, tuple[DialogView, ...]] = {}  # () -> row deleted

    # -- this node's side --------------------------------------------------------------
    def watch(self, watched: set[str]) -> None:
        """The resources this node's subscriptions watch now: what changed is queued."""
        if watched == self._watched_here:
            return
        for resource in watched - self._watched_here:
            self.watch_writes[resource] = True
        for resource in self._watched_here - watched:
            self.watch_writes[resource] = False
        self._watched_here = set(watched)

    def publish(self, resource: str, views: tuple[DialogView, ...]) -> None:
        """This node's dialogs of ``resource`` now (call only for resources watched
        elsewhere): queued when they differ from what was written last."""
        if self._published.get(resource, ()) == views:
            return
        if views:
            self._published[resource] = views
        else:
            self._published.pop(resource, None)
        self.dialog_writes[resource] = views

    def unpublish_unwatched(self) -> None:
        """Rows of resources nobody elsewhere watches any more are deleted."""
        for resource in [r for r in self._published if r not in self.watched_elsewhere]:
            self.publish(resource, ())

    def take(self) -> tuple[dict[str, bool], dict[str, tuple[DialogView, ...]]]:
        """The queued watch and dialog writes, emptied."""
        watches, dialogs = self.watch_writes, self.dialog_writes
        self.watch_writes, self.dialog_writes = {}, {}
        return watches, dialogs

    # -- the other nodes' side -----------------------------------------------------------
    def read(self, watched: frozenset[str],
             dialogs: Mapping[str, Mapping[str, tuple[DialogView, ...]]],
             now: float) -> tuple[set[str], set[str]]:
        """The other nodes' state as read from the store. Returns the resources whose
        merged documents may have changed, and the ones newly watched elsewhere (this
        node publishes their state now)."""
        newly = set(watched - self.watched_elsewhere)
        self.watched_elsewhere = watched
        changed: set[str] = set()
        for resource in self._remote.keys() | dialogs.keys():
            before = self._remote.get(resource, {})
            after = dialogs.get(resource, {})
            kept: dict[str, tuple[tuple[DialogView, ...], float]] = {}
            for node, views in after.items():
                old = before.get(node)
                if old is not None and old[0] == views:
                    kept[node] = old  # unchanged: its dialogs keep the time first read
                else:
                    kept[node] = (views, now)
                    changed.add(resource)
            if before.keys() - after.keys():
                changed.add(resource)  # a node's row went: its dialogs are over
            if kept:
                self._remote[resource] = kept
            else:
                self._remote.pop(resource, None)
        return changed, newly

    def merge(self, resource: str, own: tuple[DialogView, ...],
              now: float) -> tuple[DialogView, ...]:
        """``own`` (this node's dialogs of ``resource``) with the other nodes', in the
        book's order and bound. Without anything from elsewhere: ``own`` itself."""
        remote = self._remote.get(resource)
        if not remote:
            return own
        merged = list(own)
        for _node, (views, read_at) in sorted(remote.items()):
            expired = read_at + ENDED_LINGER <= now
            merged += [v for v in views if not (expired and v.state == "terminated")]
        merged.sort(key=lambda v: RANK[v.state])  # stable: this node's first within a rank
        live = [v for v in merged if v.state != "terminated"]
        ended = [v for v in merged if v.state == "terminated"][:ENDED_SHOWN]
        return tuple(live + ended)[:MAX_DIALOGS]

    def on_call(self, resource: str, own: tuple[DialogView, ...], now: float) -> bool:
        """``resource`` has a connected call here or on another node (presence)."""
        return any(v.state == "confirmed" for v in self.merge(resource, own, now))

    def holder(self, kind: str, resource: str) -> str:
        """The other node holding a call of ``resource`` as its lamps say (``kind``
        "parked": a call waiting on the orbit; "ringing": a call ringing the
        extension's phone), ``""`` when none is known."""
        for node, (views, _read_at) in sorted(self._remote.get(resource, {}).items()):
            for v in views:
                if kind == "parked" and v.state == "confirmed":
                    return node
                if kind == "ringing" and v.direction == "recipient" \
                        and v.state in ("trying", "proceeding", "early"):
                    return node
        return ""
