"""The engine's side of the admin API: its live view for ``provisioning.api``.

``provisioning`` does not import ``engine``; this module gives the API what only
the running engine knows (its snapshot, registrations, calls, the routing
clock) and the reload that makes an API write reach the next call at once.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from engine.core import Engine, Outcome
from engine.shell.config import ServerConfig
from provisioning.api.http import setup as setup_api
from provisioning.model import STATUSES, Directory, binding_json
from provisioning.store import Store

__all__ = ["Server", "setup"]


class Server(Protocol):
    """What the API needs of the running process (:class:`engine.shell.app.Server`),
    named here so that the process imports this module and not the other way round."""

    @property
    def engine(self) -> Engine: ...
    @property
    def store(self) -> Store: ...
    @property
    def config(self) -> ServerConfig: ...
    async def reload(self) -> None: ...
    def apply(self, outcome: Outcome) -> None: ...


class EngineView:
    """:class:`provisioning.api.live.Live` over a running :class:`engine.shell.app.Server`."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.data_dir: Path = server.config.data_dir

    def directory(self) -> Directory:
        return self.server.engine.directory

    def registrations(self) -> list[dict[str, Any]]:
        now = time.time()
        return [binding_json(b, now) for b in self.server.engine.registrar.all()
                if b.expires_at > now]

    def calls(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [{"call_id": c.call_id, "caller": c.caller, "callee": c.callee,
                 "state": c.state, "step": c.step, "seconds": round(now - c.started, 1),
                 "members": list(c.members)}
                for c in self.server.engine.calls.calls_in_progress()]

    def explain(self, caller: str, callee: str, at: str | None, status: str | None,
                preferred_identity: str) -> dict[str, Any]:
        from routing import explain, parse_when, plan_to_json

        engine = self.server.engine
        when = parse_when(at) if at else dt.datetime.fromtimestamp(
            time.time() + engine.route_clock_offset, dt.UTC)
        forced = STATUSES[STATUSES.index(status)] if status in STATUSES else None
        state = engine.calls.live_state(engine.directory, time.time())
        plan = explain(engine.directory, caller, callee, when, status=forced,
                       registered=state.registered, preferred_identity=preferred_identity)
        return plan_to_json(plan)

    def queue_stats(self, name: str) -> dict[str, Any]:
        figures = self.server.engine.calls.queue_figures(name, time.monotonic())
        return figures.to_json() if figures is not None else {}

    def queue_agents(self, name: str) -> dict[str, Any]:
        return self.server.engine.calls.queues.agent_states(name)

    def queue_login(self, name: str, extension: str, logged_in: bool) -> None:
        server = self.server
        server.apply(server.engine.queue_login(extension, (name,), logged_in,
                                               time.monotonic()))

    async def reload(self) -> None:
        await self.server.reload()


def setup(app: web.Application, server: Server) -> None:
    """Mount ``/api/v1`` on the admin listener of ``server``."""
    setup_api(app, server.store, EngineView(server))
