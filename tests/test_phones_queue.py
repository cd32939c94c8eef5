"""Call queues with real peers: SIPp and pjsua2 callers, pjsua2 agents.

One engine serves an office with two queues over agents 102 and 103 (logged in
from the start): ``hunt`` (860, 3 s a try) and ``ring_all`` (861). Each test runs
``tests/phones/pjsua_queue.py`` (the agents, and a pjsua2 caller unless SIPp
calls):

* a SIPp caller into the hunt queue: 102 rings first, alone, is cancelled after
  ring_seconds, then 103 rings, answers and is relayed to the caller, who hangs
  up later (the agent gets the BYE);
* a pjsua2 caller into the ring_all queue: both agents ring at once, 103 answers;
* 102 dials ``*63``: the engine answers, confirms and hangs up; a caller into the
  ring_all queue then rings 103 only; ``*62861`` logs 102 back in to that queue
  only, and the next caller rings both;

then the queue's figures, in the stats API and the metrics. A missing pjsua2 or
SIPp fails the test (it never skips).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from media.tones import tone
from media.wav import write_wav
from tests.conftest import EngineProcess, free_port
from tests.e2e_helpers import PHONE_SYSTEM, SALES, require_pjsua2, run_to_done, tail, user_toml

sys.path.insert(0, str(Path(__file__).resolve().parent / "sipp"))
from calls import in_background, run_uac

pytestmark = pytest.mark.peers

HELPER = Path(__file__).resolve().parent / "phones" / "pjsua_queue.py"
DOMAIN = "pbx.test"

QUEUES = """
[[queues]]
name = "support"
extension = "860"
strategy = "hunt"
agents = ["102", "103"]
agents_start_logged_in = true
ring_seconds = 3
wrap_up_seconds = 1
max_wait_seconds = 40

[[queues]]
name = "sales"
extension = "861"
strategy = "ring_all"
agents = ["102", "103"]
agents_start_logged_in = true
ring_seconds = 5
wrap_up_seconds = 1
max_wait_seconds = 40
"""


@pytest.fixture(scope="module")
def office(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    require_pjsua2()
    folder = tmp_path_factory.mktemp("queue")
    low = 40000 + (free_port() % 10000) // 2 * 2
    directory = (PHONE_SYSTEM.format(low=low, high=low + 99) + SALES + user_toml("101")
                 + user_toml("102") + user_toml("103") + QUEUES)
    (folder / "directory.toml").write_text(directory)
    write_wav(folder / "agent.wav", tone(700, 3000, level=0.3))
    # MD5 challenges: SIPp 3.6 computes no other digest
    engine = EngineProcess(folder, folder / "directory.toml",
                           ["--digest-algorithms", "MD5"]).start()
    yield engine
    code = engine.stop()
    assert code == 0, f"engine did not shut down cleanly ({code}):\n{engine.log()[-3000:]}"


def agents(engine: EngineProcess, name: str, *args: str) -> dict[str, Any]:
    folder = engine.data_dir
    log = folder / f"pjsua-{name}.log"
    cmd = [sys.executable, str(HELPER), "--registrar", engine.target, "--domain", DOMAIN,
           "--agents", "102:pw102,103:pw103", "--agent-wav", str(folder / "agent.wav"),
           "--log-level", "5", *args]
    events = run_to_done(cmd, log, engine, 70, "pjsua2 queue agents")
    results = [e for e in events if e["event"] == "result"]
    assert results, f"events {events}\n{tail(log)}\n{engine.log()[-3000:]}"
    result: dict[str, Any] = results[0]
    result["why"] = (f"events {events}\n--- phone log ---\n{tail(log)}\n"
                     f"--- engine log ---\n{engine.log()[-5000:]}")
    return result


def test_a_sipp_caller_into_a_hunt_queue_rings_agents_in_order(office: EngineProcess,
                                                                tmp_path: Path) -> None:
    # SIPp calls as 101 once the agents are registered; the queue answers at once
    # and SIPp stays 9 s on the call, then hangs up.
    sipp = in_background(lambda: run_uac(
        tmp_path, office.target, caller="101", dialled="860", expect=200,
        auth=("101", "pw101"), port=free_port(), hold_ms=9000, timeout=40))
    result = agents(office, "hunt", "--no-caller", "--answer", "103", "--stay", "12")
    why = result["why"]
    sipp_result = sipp.result(60)
    assert sipp_result.ok, sipp_result.describe()
    assert result["rung"] == ["102", "103"], why  # hunt: 102 alone first, then 103
    gap = result["rung_at"]["103"] - result["rung_at"]["102"]
    assert gap >= 2.5, why  # 103 only after 102's ring_seconds (3 s)
    assert result["answered_by"] == "103" and result["agent_connected"], why
    assert result["agent_media"], why
    assert result["agent_ended"], why  # the caller's BYE reached the agent


def test_a_caller_into_a_ring_all_queue_rings_every_agent(office: EngineProcess) -> None:
    result = agents(office, "all", "--dial", "861", "--answer", "103", "--answer-after", "1",
                    "--stay", "2")
    why = result["why"]
    assert result["caller_answered"], why
    assert sorted(result["rung"]) == ["102", "103"], why
    assert abs(result["rung_at"]["103"] - result["rung_at"]["102"]) < 1.0, why
    assert result["answered_by"] == "103" and result["agent_connected"], why


def test_an_agent_logged_out_by_star_63_is_not_rung(office: EngineProcess) -> None:
    result = agents(office, "logout", "--code-by", "102", "--code", "*63", "--dial", "861",
                    "--answer", "103", "--stay", "2")
    why = result["why"]
    assert result["code_answered"] and result["code_ended_by_engine"], why
    assert result["caller_answered"], why
    assert result["rung"] == ["103"], why  # 102 logged out of every queue
    assert result["answered_by"] == "103" and result["agent_connected"], why
    agents_now = office.api_get("/queues/sales/agents")
    assert agents_now["102"]["logged_in"] is False, agents_now


def test_star_62_with_a_queue_extension_logs_in_to_that_queue(office: EngineProcess) -> None:
    result = agents(office, "login", "--code-by", "102", "--code", "*62861", "--dial", "861",
                    "--answer", "102", "--stay", "2")
    why = result["why"]
    assert result["code_answered"] and result["code_ended_by_engine"], why
    assert sorted(result["rung"]) == ["102", "103"], why  # ring_all: 102 is back
    assert result["answered_by"] == "102" and result["agent_connected"], why
    assert office.api_get("/queues/sales/agents")["102"]["logged_in"] is True
    assert office.api_get("/queues/support/agents")["102"]["logged_in"] is False


def test_the_wallboard_figures(office: EngineProcess) -> None:
    stats = office.api_get("/queues/sales/stats")
    assert stats["queue"] == "sales"
    assert stats["answered"] == 3 and stats["callers_waiting"] == 0, stats
    assert stats["answered_within_service_level"] == 3, stats
    assert stats["agents_logged_in"] == 2 and stats["average_talk_seconds"] > 0, stats
    metrics = office.metrics()
    assert metrics['switchboard_queue_answered_total{queue="sales"}'] == 3.0, \
        json.dumps(metrics, indent=1)
    assert metrics['switchboard_queue_answered_total{queue="support"}'] == 1.0
    assert metrics['switchboard_queue_callers_waiting{queue="support"}'] == 0.0
