"""Who may see a queue's figures and log its agents in or out
(``provisioning/api/queues.py``), over a real sans-I/O engine's queues: the agent
themself, the admin of their department and owners change; others are refused
403 with the field named; bad bodies 400/422; unknown queues and agents 404."""

from __future__ import annotations

import asyncio
import tomllib
from pathlib import Path
from typing import Any

import pytest

from engine.calls.states import AgentState
from engine.core import Engine
from provisioning.api.auth import Principal
from provisioning.api.errors import ApiError
from provisioning.api.queues import queue_agents, queue_stats, set_queue_agent
from provisioning.directory import parse_directory
from provisioning.model import Directory
from tests.test_calls_queue import queue_directory

OTHER = """
[[departments]]
name = "Support"
caller_id = "+15145550100"

[[users]]
extension = "105"
name = "Eve Other"
password = "pw105"
department = "Support"
"""


class EngineLive:
    """The queue part of :class:`provisioning.api.live.Live` over an engine object."""

    data_dir = Path(".")

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.now = 1000.0

    def directory(self) -> Directory:
        return self.engine.directory

    def queue_stats(self, name: str) -> dict[str, Any]:
        fig = self.engine.calls.queue_figures(name, self.now)
        return fig.to_json() if fig is not None else {}

    def queue_agents(self, name: str) -> dict[str, Any]:
        return self.engine.calls.queues.agent_states(name)

    def queue_login(self, name: str, extension: str, logged_in: bool) -> None:
        self.engine.queue_login(extension, (name,), logged_in, self.now)


@pytest.fixture
def live() -> EngineLive:
    d = parse_directory(tomllib.loads(queue_directory("hunt", logged_in=False) + OTHER),
                        "<test>")
    return EngineLive(Engine(d, {"127.0.0.1"}, 5060, wall_clock=lambda: 1_790_000_000.0))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_the_agent_logs_itself_in_and_out(live: EngineLive) -> None:
    me = Principal("user:102", "user", "102", "Sales")
    assert run(set_queue_agent(live, me, "support", "102", {"logged_in": True})) == \
        {"logged_in": True, "state": str(AgentState.IDLE)}
    assert run(queue_agents(live, me, "support"))["102"]["logged_in"] is True
    assert run(queue_stats(live, me, "support"))["agents_logged_in"] == 1
    run(set_queue_agent(live, me, "support", "102", {"logged_in": False}))
    assert run(queue_stats(live, me, "support"))["agents_logged_in"] == 0


@pytest.mark.parametrize(("who", "status"), [
    (Principal("owner", "owner", "", ""), 200),
    (Principal("user:101", "department_admin", "101", "Sales"), 200),
    (Principal("user:105", "department_admin", "105", "Support"), 404),  # not theirs to see
    (Principal("user:101", "manager", "101", "Sales"), 403),
    (Principal("user:103", "user", "103", "Sales"), 403),  # another agent of the queue
])
def test_who_logs_another_agent_in(live: EngineLive, who: Principal, status: int) -> None:
    if status == 200:
        assert run(set_queue_agent(live, who, "support", "102", {"logged_in": True}))[
            "logged_in"] is True
        return
    with pytest.raises(ApiError) as refused:
        run(set_queue_agent(live, who, "support", "102", {"logged_in": True}))
    assert refused.value.status == status
    assert "102" not in live.engine.calls.queues.rooms["support"].logged_in


def test_who_sees_the_figures(live: EngineLive) -> None:
    assert run(queue_stats(live, Principal("r", "receptionist", "101", "Sales"), "support"))[
        "queue"] == "support"
    assert run(queue_stats(live, Principal("m", "manager", "", ""), "support"))["answered"] == 0
    for outsider in (Principal("u", "user", "101", "Sales"),
                     Principal("r", "receptionist", "105", "Support")):
        with pytest.raises(ApiError) as refused:
            run(queue_stats(live, outsider, "support"))
        assert refused.value.status == 404  # what one may not see is not there


@pytest.mark.parametrize(("queue", "ext", "body", "status"), [
    ("nope", "102", {"logged_in": True}, 404),
    ("support", "101", {"logged_in": True}, 404),
    ("support", "102", {}, 400),
    ("support", "102", {"logged_in": "yes"}, 422),
    ("support", "102", {"logged_in": True, "queue": "x"}, 422),
])
def test_bad_requests_are_refused_and_named(live: EngineLive, queue: str, ext: str,
                                            body: object, status: int) -> None:
    with pytest.raises(ApiError) as refused:
        run(set_queue_agent(live, Principal("owner", "owner"), queue, ext, body))
    assert refused.value.status == status
