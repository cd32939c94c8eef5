"""A real SIP phone leaves a voicemail: pjsua2 (pjsip 2.15) calls 104, speaks a 1 kHz tone,
presses '#'; the message is checked by numbers through the CLI a user runs.

The phone is ``tests/phones/pjsua_voicemail.py`` in a subprocess (pjsip's threads
and any crash stay out of pytest), with the null audio device: it plays a WAV made
here into the call through pjsip's conference bridge. It registers 101 with
digest, calls 104 (no registered device: the busy rule sends the call to
voicemail), waits for CONFIRMED with active audio, lets the beep pass, plays
3 s of 1 kHz and sends '#' as an RFC 4733 event; '#' ends the message and the
engine hangs up.

A missing pjsua2 fails the test (it never skips): this is how the engine is
known to take a voicemail from a real phone.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from media.tones import dominant_frequency, tone
from media.wav import load_wav, wav_info, write_wav
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

HELPER = Path(__file__).resolve().parent / "phones" / "pjsua_voicemail.py"
DOMAIN = "pbx.test"
CALLER = ("101", "pw101")
PLAY_SECONDS = 3.0

DIRECTORY = PHONE_SYSTEM + SALES + user_toml("101") + user_toml(
    "104", "[users.voicemail]\nmax_seconds = 20\n")


def run_phone(engine: EngineProcess, wav: Path, log: Path) -> list[dict[str, Any]]:
    """Run the phone to the end (bounded); its JSON events."""
    cmd = [sys.executable, str(HELPER), "--registrar", engine.target,
           "--user", CALLER[0], "--password", CALLER[1], "--domain", DOMAIN, "--dial", "104",
           "--wav", str(wav), "--beep-wait", "0.6", "--play", str(PLAY_SECONDS),
           "--end", "hash", "--deadline", "35", "--log-level", "5"]
    return run_to_done(cmd, log, engine, 45, "pjsua2 phone")


def test_pjsua2_leaves_a_voicemail_with_a_1khz_tone_then_hash(tmp_path: Path) -> None:
    require_pjsua2()
    low = 40000 + (free_port() % 10000) // 2 * 2
    (tmp_path / "directory.toml").write_text(DIRECTORY.format(low=low, high=low + 99))
    said = tmp_path / "say-1khz.wav"
    write_wav(said, tone(1000, PLAY_SECONDS * 1000 + 500, level=0.4))  # longer than played
    log = tmp_path / "pjsua.log"
    engine = EngineProcess(tmp_path, tmp_path / "directory.toml").start()
    try:
        events = run_phone(engine, said, log)

        def why() -> str:
            return (f"events {events}\n--- phone log ---\n{tail(log)}\n"
                    f"--- engine log ---\n{engine.log()[-3000:]}")

        [registered] = [e for e in events if e["event"] == "registered"]
        assert registered["ok"] and registered["codes"][-1] == 200, why()
        [result] = [e for e in events if e["event"] == "result"]
        # the engine answered (200 with SDP) and audio flowed both ways
        assert result["confirmed"] and "CONFIRMED" in result["states"], why()
        assert result["media"], why()
        assert str(result["codec"]).split("/")[0] in {"G722", "PCMU", "PCMA"}, why()
        assert result["played"] >= PLAY_SECONDS - 0.1, why()
        # '#' went out as RFC 4733 and ended the message: the engine hung up
        assert result["dtmf"] is True, why()
        assert result["ended_by"] == "engine" and result["last_code"] == 200, why()

        listed = engine.cli("voicemail", "list", "104", "--json")
        assert listed.returncode == 0, listed.stderr
        messages = json.loads(listed.stdout)
        assert len(messages) == 1, (messages, why())
        [message] = messages
        assert message["caller"] == "101", message
        # the tone (3 s) and what followed until '#' (~0.2 s + the event's length)
        assert PLAY_SECONDS - 0.5 <= message["duration"] <= PLAY_SECONDS + 1.5, message
        info = wav_info(message["path"])
        assert (info.rate, info.bits, info.channels) == (8000, 16, 1), info
        recorded = load_wav(message["path"]).pcm16
        heard = dominant_frequency(recorded, 8000)
        assert abs(heard - 1000) < 15, (heard, message)
    finally:
        code = engine.stop()
    assert code == 0, f"engine did not shut down cleanly ({code}):\n{engine.log()[-3000:]}"
