"""What the admin API needs from the running engine, as a protocol.

``provisioning`` sits below ``engine`` (the engine imports it, never the other
way), so the engine hands the API this view of itself (``engine/shell/admin_api.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from provisioning.model import Directory

__all__ = ["Live"]


class Live(Protocol):
    data_dir: Path

    def directory(self) -> Directory:
        """The snapshot the engine routes with (live statuses applied)."""

    def registrations(self) -> list[dict[str, Any]]:
        """Live bindings: extension, contact, expires_in, q, source, user_agent."""

    def calls(self) -> list[dict[str, Any]]:
        """Calls in progress: call_id, caller, callee, state, step, seconds, members."""

    def explain(self, caller: str, callee: str, at: str | None, status: str | None,
                preferred_identity: str) -> dict[str, Any]:
        """The plan of a call that has not happened (ValueError for a bad input)."""

    def queue_stats(self, name: str) -> dict[str, Any]:
        """A queue's figures now (callers waiting, longest wait, agents, answered...)."""

    def queue_agents(self, name: str) -> dict[str, Any]:
        """Each agent of a queue: ``{"logged_in": bool, "state": str}``."""

    def queue_login(self, name: str, extension: str, logged_in: bool) -> None:
        """Log an agent of a queue in or out (a log-in may ring it at once)."""

    async def reload(self) -> None:
        """Take the store's directory and statuses now (after an API write)."""
