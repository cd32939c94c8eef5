"""A real SRTP phone: pjsua2 101 over TLS with SRTP mandatory calls a plain pjsua2 102.

The phones are ``tests/phones/pjsua_pair.py`` (``--caller-tls``, ``--caller-srtp``):
101 registers and calls over the engine's TLS listener (an ``openssl``
certificate) and refuses any media but SDES-SRTP; 102 is plain RTP on UDP. Each
plays its tone (101: 700 Hz, 102: 1100 Hz) and records what it hears. Talk 2 s,
101 holds (its re-INVITE, SRTP, answered by the engine: 102 hears the playlist),
resumes, hangs up. 102 records all calls, so the engine's recorder hears 101's
leg decrypted.

Checked: 101's stream is RTP/SAVP (pjsua's own view), each phone hears the
other's tone before the hold and after the resume, 102 hears the playlist on
hold, and the call recording holds both tones.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from media.tones import dominant_frequency, goertzel, tone
from media.wav import load_wav, write_wav
from tests.conftest import EngineProcess, free_port
from tests.e2e_helpers import PHONE_SYSTEM, SALES, require_pjsua2, run_to_done, tail, user_toml
from tests.test_e2e_trunk_transports import make_certificate
from tests.test_phones_hold import (
    CALLEE_HZ,
    CALLER_HZ,
    DOMAIN,
    HELPER,
    RATE,
    chirp,
    correlation_peaks,
    wait_for_recordings,
)

# Run alone (make test's serial pass): pjsua2's tones and prompts are checked as heard,
# in windows timed by its events, and another worker's load on the other core makes the
# audio arrive late or stretched.
pytestmark = [pytest.mark.peers, pytest.mark.serial]

DIRECTORY = (PHONE_SYSTEM + 'hold_music = ["{playlist}"]\n' + SALES
             + user_toml("101", 'srtp = "required"\n')
             + user_toml("102", 'record_calls = "all"\n'))


def test_pjsua2_srtp_phone_over_tls_talks_with_a_plain_phone(tmp_path: Path) -> None:
    require_pjsua2()
    low = 40000 + (free_port() % 10000) // 2 * 2
    playlist = tmp_path / "music" / "sweep.wav"
    playlist.parent.mkdir()
    music = chirp()
    write_wav(playlist, music)
    (tmp_path / "directory.toml").write_text(
        DIRECTORY.format(low=low, high=low + 99, playlist=playlist))
    write_wav(tmp_path / "say-700.wav", tone(CALLER_HZ, 1000, level=0.4, ramp_ms=0))
    write_wav(tmp_path / "say-1100.wav", tone(CALLEE_HZ, 1000, level=0.4, ramp_ms=0))
    cert, key = make_certificate(tmp_path)
    tls_port = free_port()
    engine = EngineProcess(tmp_path, tmp_path / "directory.toml",
                           ["--tls", f"127.0.0.1:{tls_port}", "--tls-cert", str(cert),
                            "--tls-key", str(key)]).start()
    log = tmp_path / "pjsua.log"
    try:
        cmd = [sys.executable, str(HELPER), "--registrar", engine.target, "--domain", DOMAIN,
               "--caller", "101:pw101", "--callee", "102:pw102", "--transports", "two",
               "--caller-tls", f"127.0.0.1:{tls_port}", "--caller-srtp",
               "--caller-wav", str(tmp_path / "say-700.wav"),
               "--callee-wav", str(tmp_path / "say-1100.wav"),
               "--callee-record", str(tmp_path / "heard-by-102.wav"),
               "--caller-record", str(tmp_path / "heard-by-101.wav"),
               "--talk", "2", "--hold", "3", "--resume", "2",
               "--codecs", "PCMU", "--deadline", "25", "--log-level", "5"]
        events = run_to_done(cmd, log, engine, 35, "pjsua2 phones", tmp_path / "phones.jsonl")

        def why(*extra: object) -> str:
            return (f"{extra}\nevents {events}\n--- phone log ---\n{tail(log)}\n"
                    f"--- engine log ---\n{engine.log()[-4000:]}")

        [registered] = [e for e in events if e["event"] == "registered"]
        assert registered["ok"], why()
        [result] = [e for e in events if e["event"] == "result"]
        assert result["confirmed"] and result["media"], why()
        assert result["caller_proto"] == "RTP/SAVP", why()
        assert result["hold_status"] == "local_hold" and result["resume_status"] == "active", \
            why()
        assert result["callee_reoffers"] == 0, why()

        at = {e["event"]: e["t"] for e in events
              if e["event"] in {"talk", "hold", "held", "resume", "resumed", "hangup"}}
        start = {e["side"]: e["t"] for e in events if e["event"] == "recording"}

        def phase(heard: bytes, side: str, begin: float, end: float) -> bytes:
            a, b = round((begin - start[side]) * RATE), round((end - start[side]) * RATE)
            assert 0 <= a < b <= len(heard) // 2, why(side, begin, end, a, b, len(heard))
            return heard[2 * a: 2 * b]

        to_102 = load_wav(tmp_path / "heard-by-102.wav").pcm16
        to_101 = load_wav(tmp_path / "heard-by-101.wav").pcm16
        levels: dict[str, Any] = {}
        for side, heard, hz in (("callee", to_102, CALLER_HZ), ("caller", to_101, CALLEE_HZ)):
            for name, (begin, end) in {"talk": (at["talk"] + 0.4, at["hold"] - 0.1),
                                       "resumed": (at["resumed"] + 0.5,
                                                   at["hangup"] - 0.1)}.items():
                part = phase(heard, side, begin, end)
                levels[f"{side}:{name}"] = (round(dominant_frequency(part, RATE), 1),
                                            round(goertzel(part, RATE, hz), 4))
        hold_peaks = correlation_peaks(
            phase(to_102, "callee", at["held"] + 0.5, at["resume"] - 0.1), music)
        print(json.dumps({"levels": levels, "hold_ncc": hold_peaks}))
        for side, hz in (("callee", CALLER_HZ), ("caller", CALLEE_HZ)):
            for name in ("talk", "resumed"):
                got_hz, level = levels[f"{side}:{name}"]
                assert abs(got_hz - hz) < 15 and level > 0.2, why(levels)
        assert float(np.median(hold_peaks)) > 0.6, why(hold_peaks)

        [rec] = wait_for_recordings(engine)
        mixed = load_wav(rec["path"]).pcm16
        both = {hz: goertzel(mixed, RATE, hz) for hz in (CALLER_HZ, CALLEE_HZ)}
        assert both[CALLER_HZ] > 0.05 and both[CALLEE_HZ] > 0.05, why(both)
    finally:
        code = engine.stop()
    assert code == 0, engine.log()[-3000:]
