"""Two real SIP phones, hold music and call recording: pjsua2 (pjsip 2.15) 101 calls 102.

The phones are ``tests/phones/pjsua_pair.py``: one pjsua2 process with two
accounts (null audio device), each playing its own tone into the call (101:
700 Hz, 102: 1100 Hz) and recording what it receives. The engine anchors the
media (``--media relay``, the default). Sequence: talk 2 s, 101 holds (re-INVITE
a=sendonly, answered by the engine itself), 3 s on hold, 101 resumes, 2 s, 101
hangs up. 102 has ``record_calls = "all"``.

Checked by numbers on 102's recording, cut into phases by the phones' event
times: before the hold 102 hears 700 Hz (101, relayed); on hold it hears the
system playlist (a chirp made here; normalized cross-correlation) and not
101; after the resume 700 Hz again. 101 hears 1100 Hz except while it holds.
The engine's log says hold and resume, 102 saw no re-INVITE, and the call
recording (CLI and admin API) is one 8 kHz mono WAV of 101 -> 102 with both
tones in it, which ``switchboard recordings delete`` removes.

A missing pjsua2 fails the test (it never skips).
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from media.codecs import array_to_pcm, pcm_to_array
from media.tones import dominant_frequency, goertzel, tone
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

HELPER = Path(__file__).resolve().parent / "phones" / "pjsua_pair.py"
DOMAIN = "pbx.test"
RATE = 8000
CALLER_HZ, CALLEE_HZ = 700.0, 1100.0
TALK, HOLD, RESUME = 2.0, 3.0, 2.0

DIRECTORY = (PHONE_SYSTEM + 'hold_music = ["{playlist}"]\n' + SALES + user_toml("101")
             + user_toml("102", 'record_calls = "all"\n'))


def chirp(seconds: float = 2.0, f0: float = 300.0, f1: float = 3000.0,
          level: float = 0.4) -> bytes:
    """A linear sweep ``f0`` -> ``f1``: nothing like the phones' steady tones, and
    sharp under cross-correlation (one narrow peak per loop)."""
    t = np.arange(round(seconds * RATE)) / RATE
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t * t / (2 * seconds))
    return array_to_pcm(level * 32767.0 * np.sin(phase))


def samples(pcm16: bytes) -> np.ndarray[Any, np.dtype[np.float64]]:
    return pcm_to_array(pcm16).astype(np.float64)


def correlation_peaks(heard: bytes, playlist: bytes, window: float = 0.5) -> list[float]:
    """For each ``window`` s of ``heard``: the peak normalized cross-correlation with
    the looped ``playlist`` over every lag (1.0: an exact copy, up to gain)."""
    x = samples(heard)
    ref = samples(playlist)
    n = round(window * RATE)
    looped = np.tile(ref, 2 + n // len(ref))[: len(ref) + n]  # every lag of the loop
    energy = np.concatenate(([0.0], np.cumsum(looped * looped)))
    peaks: list[float] = []
    for start in range(0, len(x) - n + 1, n):
        seg = x[start:start + n] - x[start:start + n].mean()
        size = 1 << (len(looped) + n).bit_length()
        corr = np.fft.irfft(np.fft.rfft(looped, size) * np.conj(np.fft.rfft(seg, size)),
                            size)[: len(ref) + 1]
        window_energy = energy[n:n + len(ref) + 1] - energy[: len(ref) + 1]
        norm = np.sqrt(np.maximum(window_energy, 1e-9) * float(np.dot(seg, seg)) + 1e-9)
        peaks.append(float(np.max(corr / norm)))
    return peaks


def run_phones(engine: EngineProcess, tmp_path: Path, log: Path) -> list[dict[str, Any]]:
    """Run both phones to the end (bounded); their JSON events."""
    cmd = [sys.executable, str(HELPER), "--registrar", engine.target, "--domain", DOMAIN,
           "--caller", "101:pw101", "--callee", "102:pw102",
           "--caller-wav", str(tmp_path / "say-700.wav"),
           "--callee-wav", str(tmp_path / "say-1100.wav"),
           "--callee-record", str(tmp_path / "heard-by-102.wav"),
           "--caller-record", str(tmp_path / "heard-by-101.wav"),
           "--talk", str(TALK), "--hold", str(HOLD), "--resume", str(RESUME),
           "--codecs", "PCMU", "--deadline", "25", "--log-level", "5"]
    # the JSON lines are kept with the recordings, for a look
    return run_to_done(cmd, log, engine, 35, "pjsua2 phones", tmp_path / "phones.jsonl")


def engine_events(engine: EngineProcess) -> list[dict[str, Any]]:
    out = []
    for line in engine.log().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            out.append(row)
    return out


def wait_for_recordings(engine: EngineProcess, limit: float = 5.0) -> list[dict[str, Any]]:
    """``switchboard recordings list --json``, polled until the call's is written."""
    stop = time.monotonic() + limit
    while True:
        listed = engine.cli("recordings", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        rows: list[dict[str, Any]] = json.loads(listed.stdout)
        if rows or time.monotonic() >= stop:
            return rows
        time.sleep(0.2)


def test_pjsua2_hold_plays_the_playlist_and_the_call_is_recorded(tmp_path: Path) -> None:
    require_pjsua2()
    low = 40000 + (free_port() % 10000) // 2 * 2
    playlist = tmp_path / "music" / "sweep.wav"
    playlist.parent.mkdir()
    music = chirp()
    write_wav(playlist, music)
    (tmp_path / "directory.toml").write_text(
        DIRECTORY.format(low=low, high=low + 99, playlist=playlist))
    # whole periods in 1 s, no fades: the players loop them without a seam
    write_wav(tmp_path / "say-700.wav", tone(CALLER_HZ, 1000, level=0.4, ramp_ms=0))
    write_wav(tmp_path / "say-1100.wav", tone(CALLEE_HZ, 1000, level=0.4, ramp_ms=0))
    log = tmp_path / "pjsua.log"
    engine = EngineProcess(tmp_path, tmp_path / "directory.toml").start()
    try:
        events = run_phones(engine, tmp_path, log)

        def why(*extra: object) -> str:
            return (f"{extra}\nevents {events}\n--- phone log ---\n{tail(log)}\n"
                    f"--- engine log ---\n{engine.log()[-4000:]}")

        [registered] = [e for e in events if e["event"] == "registered"]
        assert registered["ok"], why()
        [result] = [e for e in events if e["event"] == "result"]
        assert result["confirmed"] and result["media"], why()
        assert result["callee_account"] == "102", why()  # pjsua routed by the URI's user
        assert result["codec"] == "PCMU/8000", why()
        # the engine answered the hold and the resume itself: 102 saw no re-INVITE
        assert result["hold_status"] == "local_hold", why()
        assert result["resume_status"] == "active", why()
        assert result["callee_reoffers"] == 0, why()
        assert result["callee_disconnected"] and result["caller_code"] == 200, why()

        at = {e["event"]: e["t"] for e in events
              if e["event"] in {"talk", "hold", "held", "resume", "resumed", "hangup"}}
        start = {e["side"]: e["t"] for e in events if e["event"] == "recording"}

        def phase(heard: bytes, side: str, begin: float, end: float) -> bytes:
            a = round((begin - start[side]) * RATE)
            b = round((end - start[side]) * RATE)
            assert 0 <= a < b <= len(heard) // 2, why(side, begin, end, a, b, len(heard))
            return heard[2 * a: 2 * b]

        to_102 = load_wav(tmp_path / "heard-by-102.wav").pcm16
        to_101 = load_wav(tmp_path / "heard-by-101.wav").pcm16
        cuts = {"talk": (at["talk"] + 0.4, at["hold"] - 0.1),
                "hold": (at["held"] + 0.5, at["resume"] - 0.1),
                "resumed": (at["resumed"] + 0.5, at["hangup"] - 0.1)}
        levels: dict[str, dict[str, float]] = {}
        for side, heard in (("callee", to_102), ("caller", to_101)):
            for name, (begin, end) in cuts.items():
                part = phase(heard, side, begin, end)
                levels[f"{side}:{name}"] = {
                    "hz": round(dominant_frequency(part, RATE), 1),
                    "700": round(goertzel(part, RATE, CALLER_HZ), 4),
                    "1100": round(goertzel(part, RATE, CALLEE_HZ), 4)}
        hold_peaks = correlation_peaks(phase(to_102, "callee", *cuts["hold"]), music)
        talk_peaks = correlation_peaks(phase(to_102, "callee", *cuts["talk"]), music)
        measured = {"levels": levels, "hold_ncc": [round(p, 4) for p in hold_peaks],
                    "talk_ncc": [round(p, 4) for p in talk_peaks]}
        print(json.dumps(measured))

        # (a) before the hold 102 hears 101's 700 Hz, relayed by the engine
        talk = levels["callee:talk"]
        assert abs(talk["hz"] - CALLER_HZ) < 15 and talk["700"] > 0.2, why(measured)
        # (b) on hold: the playlist (looped), not 101
        assert float(np.median(hold_peaks)) > 0.6, why(measured)
        assert max(talk_peaks) < 0.3, why(measured)  # the chirp is not just any audio
        on_hold = levels["callee:hold"]
        assert on_hold["700"] < 0.05 * talk["700"], why(measured)
        # (c) after the resume, 700 Hz again
        resumed = levels["callee:resumed"]
        assert abs(resumed["hz"] - CALLER_HZ) < 15 and resumed["700"] > 0.2, why(measured)
        # the holder hears 102 before and after, not while it holds
        for name in ("talk", "resumed"):
            got = levels[f"caller:{name}"]
            assert abs(got["hz"] - CALLEE_HZ) < 15 and got["1100"] > 0.2, why(measured)
        assert levels["caller:hold"]["1100"] < 0.05 * levels["caller:talk"]["1100"], \
            why(measured)

        # (d) the engine logged the hold, the music and the resume, in that order
        said = [e["event"] for e in engine_events(engine)
                if e.get("event") in {"hold", "hold music", "resume"}]
        assert said == ["hold", "hold music", "resume"], why(said)

        # (e) the call recording: CLI, admin API, delete
        rows = wait_for_recordings(engine)
        assert len(rows) == 1, why(rows)
        [rec] = rows
        call_seconds = at["hangup"] - at["talk"]
        assert (rec["caller"], rec["callee"]) == ("101", "102"), rec
        assert rec["reason"] and rec["call_id"] and rec["time"], rec
        assert call_seconds - 0.5 <= rec["duration"] <= call_seconds + 1.5, \
            (rec, call_seconds)
        info = wav_info(rec["path"])
        assert (info.rate, info.bits, info.channels) == (8000, 16, 1), info
        mixed = load_wav(rec["path"]).pcm16
        both = {hz: round(goertzel(mixed, RATE, hz), 4) for hz in (CALLER_HZ, CALLEE_HZ)}
        print(json.dumps({"recording": rec, "tones": both, "call_seconds": call_seconds}))
        assert both[CALLER_HZ] > 0.05 and both[CALLEE_HZ] > 0.05, (both, rec)

        # The API lists the same recordings, without the server's paths.
        api: list[dict[str, Any]] = engine.api_get("/recordings")
        assert api == [{k: v for k, v in r.items() if k != "path"} for r in rows], (api, rows)
        assert engine.api(f"/recordings/{rec['id']}") == Path(rec["path"]).read_bytes()

        gone = engine.cli("recordings", "delete", rec["id"])
        assert gone.returncode == 0, gone.stderr
        assert not Path(rec["path"]).exists()
        assert json.loads(engine.cli("recordings", "list", "--json").stdout) == []
        assert engine.api_get("/recordings") == []
        with pytest.raises(urllib.error.HTTPError) as missing:
            engine.api(f"/recordings/{rec['id']}")
        assert missing.value.code == 404
    finally:
        code = engine.stop()
    assert code == 0, f"engine did not shut down cleanly ({code}):\n{engine.log()[-3000:]}"
