"""Queue strategies, wrap-up and an IVR into a queue, with real peers: pjsua2.

Each test starts its own engine (the agents' idle times and the round-robin
position are the engine's memory, so tests must not share one) with agents 102,
103 and 104 logged in from the start, and runs ``tests/phones/pjsua_queue.py``
(the agents, and a pjsua2 caller 101) once, its calls one after the other
(``--then``: the agents register once per test, not once per call), in order:

* ``round_robin``: the first call rings 102 (unanswered for ring_seconds), then
  103, who answers; the next call starts after 103: 104 rings first (hunt or
  longest_idle would ring 102 again);
* ``longest_idle``: 102 answers the first call; the second rings 103 (idle
  since log-in, longer than 102) which does not answer, then 104, who answers;
  the third rings 103 first (still idle since log-in: ringing does not count
  as work; round robin would ring 102, after 104);
* ``fewest_answered``: 102 answers the first call; the second rings 103 and 104
  (no call answered yet), neither answers, and 102 answers it too; 103 answers
  the third, rung first; the fourth rings 104 (none answered; ringing does not
  count), then 103 (one answered) before 102 (two), though 102 is idle longer
  and comes next in round-robin order;
* ``least_talk_time``: 102 answers the first call and talks 6 s; the second
  rings 103 (no talk yet), who talks 1 s; the third rings 104 (no talk yet),
  unanswered, then 103 (1 s) before 102 (6 s), though both answered one call,
  102 is idle longer and comes first in the queue's order;
* wrap-up: 102 answers a call of a ``hunt`` queue with 30 s of wrap-up; right
  after it, the API shows 102 in wrap_up and the next caller rings 103 only;
* an IVR key into a queue: the pjsua2 caller dials the menu, presses 1
  (RFC 4733) and reaches the queue, where 102 answers and hears it.

Every run is bounded by the helper's deadline. A missing pjsua2 fails (never skips).
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from media.tones import tone
from media.wav import write_wav
from tests.conftest import EngineProcess, free_port
from tests.e2e_helpers import PHONE_SYSTEM, SALES, require_pjsua2, run_to_done, tail, user_toml

pytestmark = pytest.mark.peers

HELPER = Path(__file__).resolve().parent / "phones" / "pjsua_queue.py"
DOMAIN = "pbx.test"
AGENTS = "102:pw102,103:pw103,104:pw104"


def queue_toml(name: str, extension: str, strategy: str, *, wrap_up: int = 0,
               ring: int = 3) -> str:
    return f"""
[[queues]]
name = "{name}"
extension = "{extension}"
strategy = "{strategy}"
agents = ["102", "103", "104"]
agents_start_logged_in = true
ring_seconds = {ring}
wrap_up_seconds = {wrap_up}
max_wait_seconds = 60
"""


@contextmanager
def office(tmp_path: Path, extra: str) -> Iterator[EngineProcess]:
    require_pjsua2()
    low = 40000 + (free_port() % 10000) // 2 * 2
    directory = (PHONE_SYSTEM.format(low=low, high=low + 99) + SALES + user_toml("101")
                 + user_toml("102") + user_toml("103") + user_toml("104") + extra)
    (tmp_path / "directory.toml").write_text(directory)
    write_wav(tmp_path / "agent.wav", tone(700, 3000, level=0.3))
    write_wav(tmp_path / "menu.wav", tone(440, 1500, level=0.3))
    engine = EngineProcess(tmp_path, tmp_path / "directory.toml").start()
    try:
        yield engine
    finally:
        code = engine.stop()
    assert code == 0, f"engine did not shut down cleanly ({code}):\n{engine.log()[-3000:]}"


Call = tuple[str, str, tuple[str, ...]]  # dial, the agent who answers, more options


def calls(engine: EngineProcess, name: str, *sequence: Call) -> list[dict[str, Any]]:
    """pjsua2 calls from 101, one after the other, in one run of the phones (the
    agents register once): each dials, its agent answers after 0.5 s of ringing, the
    other agents never do. Their results, in order."""
    folder = engine.data_dir
    log = folder / f"pjsua-{name}.log"
    (dial, answer, extra), *more = sequence
    cmd = [sys.executable, str(HELPER), "--registrar", engine.target, "--domain", DOMAIN,
           "--agents", AGENTS, "--agent-wav", str(folder / "agent.wav"), "--dial", dial,
           "--answer", answer, "--answer-after", "0.5", "--stay", "2",
           "--deadline", str(20 + 20 * len(sequence)), "--log-level", "5", *extra]
    for dial, answer, extra in more:  # each --then changes what it names only
        cmd += ["--then", shlex.join(["--dial", dial, "--answer", answer, "--stay", "2",
                                      *extra])]
    events = run_to_done(cmd, log, engine, 40 + 20 * len(sequence), "pjsua2 queue agents")
    results = [e for e in events if e["event"] == "result"]
    why = (f"events {events}\n--- phone log ---\n{tail(log)}\n"
           f"--- engine log ---\n{engine.log()[-5000:]}")
    assert [r["call"] for r in results] == list(range(len(sequence))), why
    for result, (_, answer, _) in zip(results, sequence, strict=True):
        result["why"] = why
        assert result["caller_answered"], why
        assert result["answered_by"] == answer and result["agent_connected"], why
    return results


def call(engine: EngineProcess, name: str, dial: str, answer: str, *args: str) -> dict[str, Any]:
    """One pjsua2 call from 101 to ``dial`` (see :func:`calls`)."""
    return calls(engine, name, (dial, answer, args))[0]


def test_round_robin_starts_after_the_last_agent_rung(tmp_path: Path) -> None:
    with office(tmp_path, queue_toml("rr", "862", "round_robin")) as engine:
        first, second = calls(engine, "rr", ("862", "103", ()), ("862", "104", ()))
        assert first["rung"] == ["102", "103"], first["why"]  # 102 unanswered, then 103
        gap = first["rung_at"]["103"] - first["rung_at"]["102"]
        assert gap >= 2.5, first["why"]  # 103 only after 102's ring_seconds (3 s)
        assert second["rung"] == ["104"], second["why"]  # the next after 103


def test_longest_idle_rings_the_agent_idle_longest(tmp_path: Path) -> None:
    with office(tmp_path, queue_toml("idle", "863", "longest_idle")) as engine:
        first, second, third = calls(engine, "idle", ("863", "102", ()), ("863", "104", ()),
                                     ("863", "103", ()))
        assert first["rung"] == ["102"], first["why"]  # all idle since log-in: the order
        # 102 just worked: 103 (idle since log-in) first, unanswered, then 104
        assert second["rung"] == ["103", "104"], second["why"]
        assert third["rung"][0] == "103", third["why"]  # ringing is not work: idle longest
        agents = engine.api_get("/queues/idle/agents")
        assert {ext: a["state"] for ext, a in agents.items()} == {
            "102": "idle", "103": "idle", "104": "idle"}, agents


def test_fewest_answered_rings_the_agent_with_the_fewest_calls(tmp_path: Path) -> None:
    with office(tmp_path, queue_toml("few", "866", "fewest_answered")) as engine:
        first, second, third, fourth = calls(engine, "few", ("866", "102", ()),
                                             ("866", "102", ()), ("866", "103", ()),
                                             ("866", "103", ()))
        assert first["rung"] == ["102"], first["why"]  # none answered yet: the order
        # 102 answered one: 103 and 104 (none) first, both unanswered, then 102
        assert second["rung"] == ["103", "104", "102"], second["why"]
        assert third["rung"] == ["103"], third["why"]  # 103 and 104 answered none: order
        # 104 (none answered), then 103 (one) before 102 (two): longest_idle would
        # ring 102 second (idle since the second call), round_robin 102 too (after 104)
        assert fourth["rung"] == ["104", "103"], fourth["why"]
        stats = engine.api_get("/queues/few/stats")
        assert stats["answered"] == 4 and stats["callers_waiting"] == 0, stats


def test_least_talk_time_rings_the_agent_who_talked_least(tmp_path: Path) -> None:
    with office(tmp_path, queue_toml("talk", "867", "least_talk_time")) as engine:
        first, second, third = calls(engine, "talk", ("867", "102", ("--stay", "6")),
                                     ("867", "103", ("--stay", "1")),
                                     ("867", "103", ("--stay", "1")))
        assert first["rung"] == ["102"], first["why"]  # nobody talked yet: the order
        assert second["rung"] == ["103"], second["why"]  # 102 talked 6 s, 103 none
        # 104 (no talk) unanswered, then 103 (1 s) before 102 (6 s): fewest_answered,
        # longest_idle and hunt would ring 102 second, round_robin 104 then 102
        assert third["rung"] == ["104", "103"], third["why"]
        stats = engine.api_get("/queues/talk/stats")
        assert stats["answered"] == 3 and stats["callers_waiting"] == 0, stats


def test_an_agent_in_wrap_up_is_not_rung(tmp_path: Path) -> None:
    with office(tmp_path, queue_toml("wrap", "864", "hunt", wrap_up=30)) as engine:
        first = call(engine, "wrap1", "864", "102")
        assert first["rung"] == ["102"] and first["agent_ended"], first["why"]
        ended = time.monotonic()
        agents = engine.api_get("/queues/wrap/agents")
        assert agents["102"]["state"] == "wrap_up", agents
        second = call(engine, "wrap2", "864", "103")
        # hunt would ring 102 first: it is within its 30 s of wrap-up
        assert second["rung"] == ["103"], second["why"]
        assert second["rung_at"]["103"] - ended < 30, second["why"]


def test_an_ivr_key_reaches_a_queue(tmp_path: Path) -> None:
    menu = """
[[ivrs]]
name = "front"
extension = "850"
prompt = "menu.wav"
keys = { "1" = "queue:help", "2" = "busy" }
timeout_seconds = 10
"""
    with office(tmp_path, menu + queue_toml("help", "865", "hunt")) as engine:
        result = call(engine, "ivr", "850", "102", "--keys", "1", "--key-wait", "0.5")
        why = result["why"]
        assert result["keys_sent"] == "1", why
        assert result["rung"] == ["102"] and result["agent_media"], why
        stats = engine.api_get("/queues/help/stats")
        assert stats["answered"] == 1 and stats["callers_waiting"] == 0, stats
        metrics = engine.metrics()
        assert metrics['switchboard_ivr_outcomes_total{outcome="key"}'] == 1.0, why
