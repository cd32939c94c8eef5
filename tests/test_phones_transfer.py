"""Transfer between real phones: pjsua2 (pjsip 2.15) 101 calls 102, 102 transfers
101 to 103 through ``switchboard serve``: blind (REFER, ``Call.xfer``) and
attended (102 holds 101, calls 103, then REFER with Replaces,
``Call.xferReplaces``); and 101, the calling party, transfers 102 to 103, blind
and attended.

The phones are ``tests/phones/pjsua_transfer.py`` (one process, three accounts,
each playing its own tone: 101 700 Hz, 102 1100 Hz, 103 1500 Hz, and recording
what it hears). Checked: 102's phone sees its transfer succeed (NOTIFY 200) and
its calls ended by the engine; 101's call is never re-offered (same RTP port and
codec on the engine, so no re-INVITE) and goes on with 103 (which, attended, is
re-INVITEd once: moved to 101's call); by the recordings,
101 hears 102 before the transfer and 103 after, and 103 hears 101; the engine
counts the transfer in ``switchboard_transfers_total``. A missing pjsua2 fails
the test (it never skips).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from media.tones import dominant_frequency, tone
from media.wav import load_wav, write_wav
from tests.conftest import EngineProcess, free_port
from tests.e2e_helpers import (
    PHONE_SYSTEM,
    SALES,
    require_pjsua2,
    run_to_done,
    tail,
    user_toml,
)

# Run alone (make test's serial pass): pjsua2's tones and prompts are checked as heard,
# in windows timed by its events, and another worker's load on the other core makes the
# audio arrive late or stretched.
pytestmark = [pytest.mark.peers, pytest.mark.serial]

HELPER = Path(__file__).resolve().parent / "phones" / "pjsua_transfer.py"
RATE = 8000
HZ = {"101": 700.0, "102": 1100.0, "103": 1500.0}

DIRECTORY = PHONE_SYSTEM + SALES + user_toml("101") + user_toml("102") + user_toml("103")
# 103 lets a call ring 3 s, then its voicemail answers: only the silent-target test
# lets it ring; in the others 103 answers at once.
VOICEMAIL_103 = """
[users.forwarding.available]
no_answer_seconds = 3
no_answer = { external = "voicemail", internal = "voicemail" }
busy = { external = "voicemail", internal = "voicemail" }
"""


@pytest.fixture(scope="module")
def office(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    """One engine for the module: each run's phones register, then unregister before
    they exit, so a run finds only its own bindings; counters are read as deltas."""
    require_pjsua2()
    folder = tmp_path_factory.mktemp("transfer")
    low = 40000 + (free_port() % 10000) // 2 * 2
    (folder / "directory.toml").write_text(DIRECTORY.format(low=low, high=low + 99)
                                           + VOICEMAIL_103)
    engine = EngineProcess(folder, folder / "directory.toml").start()
    yield engine
    code = engine.stop()
    assert code == 0, f"engine did not shut down cleanly ({code}):\n{engine.log()[-3000:]}"


def transfers_connected(engine: EngineProcess) -> float:
    return engine.metrics().get('switchboard_transfers_total{outcome="connected"}', 0.0)


def run_phones(engine: EngineProcess, tmp_path: Path, *args: str,
               timeout: int = 40) -> tuple[list[dict[str, Any]], Path]:
    """The three phones (``tests/phones/pjsua_transfer.py``) run to the end in
    ``tmp_path`` (their tones and recordings there); their events and log."""
    for user, hz in HZ.items():  # whole periods in 1 s: looped without a seam
        write_wav(tmp_path / f"say-{user}.wav", tone(hz, 1000, level=0.4, ramp_ms=0))
    log = tmp_path / "pjsua.log"
    cmd = [sys.executable, str(HELPER), "--registrar", engine.target, "--domain",
           "pbx.test", "--folder", str(tmp_path), "--log-level", "5", *args]
    return run_to_done(cmd, log, engine, timeout, "pjsua2 phones",
                       tmp_path / "phones.jsonl"), log


@pytest.mark.parametrize("mode", ["blind", "attended", "caller", "caller-attended"])
def test_pjsua2_transfer_connects_the_caller_to_the_target(office: EngineProcess,
                                                          tmp_path: Path, mode: str) -> None:
    engine = office
    log_start = len(engine.log())
    connected_before = transfers_connected(engine)
    events, log = run_phones(engine, tmp_path, "--mode", mode, "--deadline", "30")

    def why(*extra: object) -> str:
        return (f"{extra}\nevents {events}\n--- phone log ---\n{tail(log)}\n"
                f"--- engine log ---\n{engine.log()[-5000:]}")

    [registered] = [e for e in events if e["event"] == "registered"]
    assert registered["ok"], why()
    [result] = [e for e in events if e["event"] == "result"]
    calls: dict[str, dict[str, Any]] = result["calls"]
    assert set(calls) == {"101", "102", "103"} | (
        {"102y"} if mode.endswith("attended") else set()), why()
    assert all(c["confirmed"] and c["disconnected"] for c in calls.values()), why()
    assert 200 in result["xfer_codes"], why()  # the transferor was told it succeeded
    transferee, transferor = ("102", "101") if mode.startswith("caller") else ("101", "102")
    assert calls[transferee]["reoffers"] == 0, why()  # never re-INVITEd
    assert calls["103"]["reoffers"] == (1 if mode.endswith("attended") else 0), why()
    assert calls[transferee]["code"] == 200, why()  # it hung up itself, at the end
    at = {e["event"]: e["t"] for e in events
          if e["event"] in {"talk", "xfer", "transferred", "hangup"}}
    assert {"talk", "xfer", "transferred", "hangup"} <= set(at), why()
    start = {e["side"]: e["t"] for e in events if e["event"] == "recording"}

    def heard(user: str, begin: float, end: float) -> float:
        pcm = load_wav(tmp_path / f"heard-by-{user}.wav").pcm16
        a = round((begin - start[user]) * RATE)
        b = round((end - start[user]) * RATE)
        assert 0 <= a < b <= len(pcm) // 2, why(user, begin, end, a, b, len(pcm))
        return round(dominant_frequency(pcm[2 * a: 2 * b], RATE), 1)

    before = heard(transferee, at["talk"] + 0.4, at["xfer"] - 0.1)
    after = heard(transferee, at["transferred"] + 0.5, at["hangup"] - 0.1)
    target = heard("103", at["transferred"] + 0.5, at["hangup"] - 0.1)
    assert abs(before - HZ[transferor]) < 15, why(transferee, "before", before)
    assert abs(after - HZ["103"]) < 15, why(transferee, "after", after)
    assert abs(target - HZ[transferee]) < 15, why("103", target)

    assert "transfer connected" in engine.log()[log_start:], why()
    # exactly this run's transfer counted (the engine is the module's)
    connected = transfers_connected(engine) - connected_before
    assert connected == 1.0, why(connected)


def test_pjsua2_callers_transfer_to_an_unanswered_target_leaves_a_message(
        office: EngineProcess, tmp_path: Path) -> None:
    """101 calls 102 and transfers it to 103, which lets it ring: 102 hears 103's
    greeting and speaks (1100 Hz) into 103's mailbox, from the engine's endpoint
    that faced it all along."""
    engine = office
    log_start = len(engine.log())
    events, log = run_phones(engine, tmp_path, "--mode", "caller", "--silent-target",
                             "--after", "6", "--deadline", "35", timeout=45)

    def why(*extra: object) -> str:
        return (f"{extra}\nevents {events}\n--- phone log ---\n{tail(log)}\n"
                f"--- engine log ---\n{engine.log()[-5000:]}")

    [result] = [e for e in events if e["event"] == "result"]
    assert 200 in result["xfer_codes"], why()
    assert result["calls"]["102"]["reoffers"] == 0, why()
    assert "transfer to voicemail" in engine.log()[log_start:], why()
    listed = engine.cli("voicemail", "list", "103", "--json")
    assert listed.returncode == 0, why(listed.stderr)
    [message] = json.loads(listed.stdout)  # the only test that leaves 103 a message
    assert message["caller"] == "102", why(message)
    audio = load_wav(message["path"])
    assert audio.duration > 2.0, why(message)
    assert abs(dominant_frequency(audio.pcm16, RATE) - HZ["102"]) < 15, why(message)
