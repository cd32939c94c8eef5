"""The admin API of live queues: a wallboard's figures, who is logged in, and
logging an agent in or out (``/api/v1/queues/{name}/stats``, ``.../agents``,
``PUT .../agents/{ext}``).

The queues' live state is the engine's (``Live.queue_stats``, ``queue_agents``,
``queue_login``); this module decides who may see and change it:

* see: owners and managers; the queue's agents; the receptionists and admins of
  the queue's department (a queue is a department's when every agent is);
* log an agent in or out: the agent themself, the admin of the agent's
  department, owners.

A queue one may not see is not there (404), as for the directory's tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from provisioning.api.auth import Principal
from provisioning.api.errors import ApiError
from provisioning.api.live import Live
from provisioning.api.policy import at_least
from provisioning.model import Directory, Queue

__all__ = ["queue_agents", "queue_stats", "set_queue_agent"]


def _queue(d: Directory, name: str) -> Queue:
    found = next((q for q in d.queues if q.name == name), None)
    if found is None:
        raise ApiError(404, f"no queue '{name}'")
    return found


def _may_see(p: Principal, d: Directory, q: Queue) -> bool:
    if at_least(p, "manager") or p.extension in q.agents:
        return True
    departments = {u.department for ext in q.agents if (u := d.user(ext)) is not None}
    return at_least(p, "receptionist") and departments == {p.department} and bool(p.department)


def _visible(live: Live, p: Principal, name: str) -> Queue:
    d = live.directory()
    q = _queue(d, name)
    if not _may_see(p, d, q):
        raise ApiError(404, f"no queue '{name}'")
    return q


async def queue_stats(live: Live, p: Principal, name: str) -> dict[str, Any]:
    _visible(live, p, name)
    return live.queue_stats(name)


async def queue_agents(live: Live, p: Principal, name: str) -> dict[str, Any]:
    _visible(live, p, name)
    return live.queue_agents(name)


async def set_queue_agent(live: Live, p: Principal, name: str, extension: str,
                          body: object) -> dict[str, Any]:
    d = live.directory()
    q = _visible(live, p, name)
    if extension not in q.agents:
        raise ApiError(404, f"{extension} is not an agent of queue '{name}'")
    user = d.user(extension)
    department = user.department if user is not None else ""
    if not (p.role == "owner" or p.extension == extension
            or (p.role == "department_admin" and department and department == p.department)):
        raise ApiError(403, [("logged_in", "the agent themself, the admin of their department "
                                           "or an owner logs an agent in or out")])
    if not isinstance(body, Mapping) or "logged_in" not in body:
        raise ApiError(400, [("logged_in", "missing (true or false)")])
    unknown = sorted(str(k) for k in body if k != "logged_in")
    if unknown:
        raise ApiError(422, [(k, "unknown key (the body is {\"logged_in\": ...})")
                             for k in unknown])
    value = body["logged_in"]
    if not isinstance(value, bool):
        raise ApiError(422, [("logged_in", f"{value!r} is not true or false")])
    live.queue_login(name, extension, value)
    agent: dict[str, Any] = live.queue_agents(name)[extension]
    return agent
