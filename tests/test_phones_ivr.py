"""The digital receptionist with real phones: pjsua2 (pjsip 2.15) calls IVR menus.

One engine serves an office with three menus; each test runs
``tests/phones/pjsua_ivr.py`` (a caller 101 and a callee 102 that answers at once,
in one subprocess) against it:

* a key (RFC 4733) reaches an extension: 102 rings and answers, and the caller
  hears 102 (its tone) through the engine;
* a key sent as SIP INFO application/dtmf-relay reaches a voicemail: the message
  is in 103's mailbox, from 101;
* dial by extension: 1, 0, 2 reach 102 (1 alone is a key of that menu too: the
  engine waits for the next digit);
* no key: after the prompt and its timeout, ``on_timeout`` rings 102.

The metrics count the menus entered and how they ended, without callers.
A missing pjsua2 fails the test (it never skips).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from media.tones import dominant_frequency, tone
from media.wav import load_wav, write_wav
from tests.conftest import EngineProcess, free_port
from tests.e2e_helpers import PHONE_SYSTEM, SALES, require_pjsua2, run_to_done, tail, user_toml

# Run alone (make test's serial pass): pjsua2's tones and prompts are checked as heard,
# in windows timed by its events, and another worker's load on the other core makes the
# audio arrive late or stretched.
pytestmark = [pytest.mark.peers, pytest.mark.serial]

HELPER = Path(__file__).resolve().parent / "phones" / "pjsua_ivr.py"
DOMAIN = "pbx.test"
CALLEE_HZ = 600

MENUS = """
[[ivrs]]
name = "main"
extension = "850"
text = "Bonjour. Pour les ventes, faites le 1. Pour laisser un message, faites le 9."
language = "fr"
keys = { "1" = "extension:102", "9" = "voicemail:103" }
dial_by_extension = true
timeout_seconds = 5
repeat = 1
on_timeout = "voicemail:103"
on_invalid = "ivr:main"
department = "Sales"

[[ivrs]]
name = "quick"
extension = "851"
prompt = "quick.wav"
keys = { "1" = "extension:102", "2" = "busy" }
timeout_seconds = 5

[[ivrs]]
name = "night"
extension = "852"
prompt = "quick.wav"
keys = { "1" = "busy" }
timeout_seconds = 1
repeat = 0
on_timeout = "extension:102"
"""


@pytest.fixture(scope="module")
def office(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    require_pjsua2()
    folder = tmp_path_factory.mktemp("ivr")
    low = 40000 + (free_port() % 10000) // 2 * 2
    directory = (PHONE_SYSTEM.format(low=low, high=low + 99) + SALES + user_toml("101")
                 + user_toml("102") + user_toml("103") + MENUS)
    (folder / "directory.toml").write_text(directory)
    write_wav(folder / "quick.wav", tone(440, 1200, level=0.3))  # the menu's prompt
    write_wav(folder / "callee.wav", tone(CALLEE_HZ, 4000, level=0.4))
    engine = EngineProcess(folder, folder / "directory.toml").start()
    yield engine
    code = engine.stop()
    assert code == 0, f"engine did not shut down cleanly ({code}):\n{engine.log()[-3000:]}"


def call_menu(engine: EngineProcess, name: str, dial: str, keys: str, *, method: str = "rfc4733",
              wait: float = 1.0, stay: float = 3.0,
              record: bool = False) -> tuple[dict[str, Any], Path]:
    folder = engine.data_dir
    log = folder / f"pjsua-{name}.log"
    heard = folder / f"heard-{name}.wav"
    cmd = [sys.executable, str(HELPER), "--registrar", engine.target, "--domain", DOMAIN,
           "--dial", dial, "--keys", keys, "--method", method, "--wait", str(wait),
           "--stay", str(stay), "--callee-wav", str(folder / "callee.wav"),
           "--deadline", "40", "--log-level", "5"]
    if record:
        cmd += ["--caller-record", str(heard)]
    events = run_to_done(cmd, log, engine, 50, "pjsua2 IVR phones")
    results = [e for e in events if e["event"] == "result"]
    assert results, f"events {events}\n{tail(log)}\n{engine.log()[-3000:]}"
    result = results[0]
    result["why"] = (f"events {events}\n--- phone log ---\n{tail(log)}\n"
                     f"--- engine log ---\n{engine.log()[-4000:]}")
    return result, heard


def ivr_metrics(engine: EngineProcess) -> dict[str, float]:
    return {k: v for k, v in engine.metrics().items()
            if k.startswith("switchboard_ivr") and "_created" not in k}


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}


def test_a_key_by_rfc4733_reaches_an_extension(office: EngineProcess) -> None:
    before = ivr_metrics(office)
    result, heard = call_menu(office, "key", "851", "1", wait=0.5, stay=3.0, record=True)
    why = result["why"]
    assert result["answered"], why
    assert result["callee_rang"] and result["callee_answered"] and result["callee_media"], why
    assert not result["caller_disconnected_by_engine"], why  # the caller hung up itself
    # 102's tone came back to the caller through the engine's relay
    pcm = load_wav(heard, 8000).pcm16
    last_second = pcm[-2 * 8000 * 2: -8000 * 2 // 2]
    assert abs(dominant_frequency(last_second, 8000) - CALLEE_HZ) < 15, why
    assert delta(before, ivr_metrics(office)) == {
        "switchboard_ivr_calls_total": 1.0,
        'switchboard_ivr_outcomes_total{outcome="key"}': 1.0,
    }, why


def test_a_key_by_sip_info_leaves_a_voicemail(office: EngineProcess) -> None:
    result, _ = call_menu(office, "info", "850", "9", method="info", wait=1.0, stay=4.0)
    why = result["why"]
    assert result["answered"] and not result["callee_rang"], why
    listed = office.cli("voicemail", "list", "103", "--json")
    assert listed.returncode == 0, listed.stderr
    assert '"caller": "101"' in listed.stdout, (listed.stdout, why)


def test_dial_by_extension_reaches_the_extension(office: EngineProcess) -> None:
    before = ivr_metrics(office)
    result, _ = call_menu(office, "dial", "850", "102", wait=1.0, stay=3.0)
    why = result["why"]
    assert result["callee_rang"] and result["callee_answered"], why
    assert delta(before, ivr_metrics(office)) == {
        "switchboard_ivr_calls_total": 1.0,
        'switchboard_ivr_outcomes_total{outcome="extension"}': 1.0,
    }, why


def test_no_key_goes_to_on_timeout(office: EngineProcess) -> None:
    before = ivr_metrics(office)
    result, _ = call_menu(office, "timeout", "852", "", wait=0.0, stay=6.0)
    why = result["why"]
    assert result["answered"] and result["callee_rang"] and result["callee_answered"], why
    assert delta(before, ivr_metrics(office)) == {
        "switchboard_ivr_calls_total": 1.0,
        'switchboard_ivr_outcomes_total{outcome="timeout"}': 1.0,
    }, why
