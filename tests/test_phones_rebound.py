"""Rebound screening with a real SIP stack: pjsua2 (pjsip 2.15) is the carrier.

The carrier is ``tests/phones/pjsua_rebound.py``: one pjsua2 process, one UDP
transport on port P, playing both the caller and the mobile (null audio
device). The directory's trunk is 127.0.0.1:P (``inbound_from`` and
``inbound_port`` make the caller's INVITE a trunk call; the forward to 104's
mobile goes out to P). 104 forwards at once (``no_answer_seconds = 0``) to its
mobile with ``rebound = true``; the engine relays media (the default).

The caller dials +15145550104 and plays 700 Hz; the mobile rings, answers,
plays 1100 Hz and, 1.5 s into the announcement, presses a key (RFC 4733).

- ``1``: the caller's call goes 183 (early media) then CONFIRMED. Before the
  key the caller hears the hold tune (not silence, not the mobile) and the
  mobile hears speech (the English "You have a call from", by correlation with
  the prompt; not a tone, not the caller); after it each hears the other's tone.
- ``2``: the engine BYEs the mobile, voicemail answers the caller (200 on the
  same early-media session): the 1 kHz beep, then the 700 Hz is recorded as a
  message from +15145550199.

Checked by numbers on the recordings, cut into phases by the phone's event
times (its ``time.monotonic()``), and by the engine's log. A missing pjsua2
fails the test (it never skips).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from media.codecs import codec_for
from media.prompts import prompt_path
from media.tones import dominant_frequency, goertzel, rms_dbfs, sinusoid_snr_db, tone
from media.wav import load_wav, write_wav
from tests.e2e_helpers import SALES_104, CarrierOffice, CarrierRun, best_match, shared_office

# Run alone (make test's serial pass): the intro prompt heard by the mobile is matched
# sample by sample, and another worker's load on the other core makes pjsua's jitter
# buffer stretch it below the match.
pytestmark = [pytest.mark.peers, pytest.mark.serial]

HELPER = Path(__file__).resolve().parent / "phones" / "pjsua_rebound.py"
RATE = 8000
CALLER_HZ, MOBILE_HZ, BEEP_HZ = 700.0, 1100.0, 1000.0
CALLER_NUMBER, DID, MOBILE = "+15145550199", "+15145550104", "+15145550444"
PRESS_AFTER, TALK = 1.5, 2.0
# the notes of the built-in hold tune (media.tones.hold_tune)
TUNE_HZ = (174.61, 196.00, 220.00, 246.94, 261.63, 293.66, 329.63, 392.00)

DIRECTORY = """
[system]
domain = "pbx.test"
rtp_ports = "{low}-{high}"

[[trunks]]
name = "carrier"
host = "127.0.0.1"
port = {carrier}
inbound_from = ["127.0.0.1/32"]
inbound_port = {carrier}
""" + SALES_104 + """mobile = "+15145550444"
[users.voicemail]
language = "en"
max_seconds = 20
[users.forwarding.available]
no_answer_seconds = 0
no_answer = {{ external = {{ to = "mobile", rebound = true }}, internal = "voicemail" }}
busy = {{ external = "voicemail", internal = "voicemail" }}
"""


class Run(CarrierRun):
    """One run of the carrier against the module's engine: events, recordings, logs."""

    def __init__(self, tmp_path: Path, key: str, office: CarrierOffice) -> None:
        super().__init__(tmp_path, office)
        self.key = key
        # whole periods in 1 s, no fades: the players loop them without a seam
        write_wav(tmp_path / "say-700.wav", tone(CALLER_HZ, 1000, level=0.4, ramp_ms=0))
        write_wav(tmp_path / "say-1100.wav", tone(MOBILE_HZ, 1000, level=0.4, ramp_ms=0))

    def phones(self) -> None:
        """Run the carrier to the end (bounded: 25 s inside, 35 s from here)."""
        cmd = [sys.executable, str(HELPER), "--engine", self.engine.target,
               "--port", str(self.carrier), "--key", self.key,
               "--caller-wav", str(self.tmp / "say-700.wav"),
               "--mobile-wav", str(self.tmp / "say-1100.wav"),
               "--caller-record", str(self.tmp / "heard-by-caller.wav"),
               "--mobile-record", str(self.tmp / "heard-by-mobile.wav"),
               "--press-after", str(PRESS_AFTER), "--talk", str(TALK),
               "--codecs", "PCMU", "--deadline", "25", "--log-level", "5"]
        self.run(cmd, 35, "pjsua2 carrier")


def levels(pcm: bytes) -> dict[str, float]:
    return {"dbfs": round(rms_dbfs(pcm), 1), "hz": round(dominant_frequency(pcm, RATE), 1),
            "700": round(goertzel(pcm, RATE, CALLER_HZ), 4),
            "1100": round(goertzel(pcm, RATE, MOBILE_HZ), 4),
            "snr_db": round(sinusoid_snr_db(pcm, RATE, dominant_frequency(pcm, RATE)), 1)}


def beep_windows(pcm: bytes, ms: int = 100) -> list[float]:
    """Goertzel amplitude at 1 kHz of each ``ms`` window where 1 kHz dominates."""
    size = RATE * ms // 1000 * 2
    out = []
    for i in range(0, len(pcm) - size + 1, size):
        w = pcm[i:i + size]
        if abs(dominant_frequency(w, RATE) - BEEP_HZ) < 30:
            out.append(round(goertzel(w, RATE, BEEP_HZ), 4))
    return out


def common_checks(run: Run) -> tuple[dict[str, Any], float, float]:
    """The call reached the mobile on this transport and was screened: the result,
    the time the mobile's media started and the time of the key."""
    result = run.one("result")
    incoming = run.one("incoming")
    assert incoming["request_user"] == MOBILE, run.why(incoming)
    assert CALLER_NUMBER in incoming["remote"], run.why(incoming)
    assert result["screening"] and result["caller_early_media"], run.why()
    assert result["mobile_codec"] == "PCMU/8000", run.why()
    assert result["caller_codec_early"] == "PCMU/8000", run.why()
    assert result["dtmf"] is True, run.why()
    # the caller got 183 with early media first, then its 200 (CONFIRMED)
    states = result["caller_states"]
    assert "EARLY" in states and "CONFIRMED" in states, run.why(states)
    assert states.index("EARLY") < states.index("CONFIRMED"), run.why(states)
    early = [e for e in run.events if e["event"] == "call" and e["side"] == "caller"
             and e["state"] == "EARLY"]
    assert any(e["code"] == 183 for e in early), run.why(early)
    press = run.one("press")
    assert press["caller_state"] == "EARLY", run.why(press)  # not answered before the key
    return result, result["mobile_media_at"], press["t"]


@pytest.fixture(scope="module")
def office(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CarrierOffice]:
    """One engine for the module: the carrier registers nothing, each run reads the
    engine's log from its own start, and only the refusal leaves 104 a message."""
    yield from shared_office(tmp_path_factory.mktemp("rebound"), DIRECTORY)


@pytest.fixture
def carrier(tmp_path: Path, request: pytest.FixtureRequest, office: CarrierOffice) -> Run:
    return Run(tmp_path, request.param, office)


@pytest.mark.parametrize("carrier", ["1"], indirect=True)
def test_pjsua2_mobile_accepts_the_rebound_with_1(carrier: Run) -> None:
    run = carrier
    run.phones()
    result, announced, pressed = common_checks(run)
    answered = run.one("answered")["t"]
    hangup = run.one("hangup")["t"]
    assert answered - pressed < 2.0, run.why(answered - pressed)
    assert result["caller_codec"] == "PCMU/8000", run.why()
    # the engine hung up the mobile after the caller's BYE, not before
    assert result["mobile_rx_requests"] == ["BYE"], run.why()
    assert result["mobile_at"]["DISCONNECTED"] >= hangup, run.why()

    caller_early = result["caller_media_at"]
    cuts = {"caller:screening": ("caller", caller_early + 0.3, pressed),
            "caller:talk": ("caller", answered + 0.5, hangup - 0.1),
            "mobile:screening": ("mobile", announced + 0.1, pressed),
            "mobile:talk": ("mobile", answered + 0.5, hangup - 0.1)}
    parts = {name: run.heard(*cut) for name, cut in cuts.items()}
    measured: dict[str, Any] = {name: levels(pcm) for name, pcm in parts.items()}
    intro = load_wav(prompt_path("en", "rebound_intro")).pcm16
    pcmu = codec_for("PCMU")
    # 0.3 s to 0.8 s into the prompt: well inside the cut, whatever the start's jitter
    expected = pcmu.decode(pcmu.encode(intro[round(0.3 * RATE) * 2: round(0.8 * RATE) * 2]))
    measured["intro_match"] = round(best_match(parts["mobile:screening"], expected), 3)
    measured["times"] = {"announced": round(announced - caller_early, 3),
                         "pressed": round(pressed - announced, 3),
                         "answered": round(answered - pressed, 3),
                         "hangup": round(hangup - answered, 3)}
    print(json.dumps(measured))

    # the caller, while the mobile decides: the hold tune, not silence, not the mobile
    held = measured["caller:screening"]
    assert held["dbfs"] > -35, run.why(measured)
    assert min(abs(held["hz"] - f) for f in TUNE_HZ) < 10, run.why(measured)
    assert held["1100"] < 0.05 and held["700"] < 0.05, run.why(measured)  # a tone: ~0.39
    # the mobile, before its key: speech (the intro prompt), not a tone, not the caller
    said = measured["mobile:screening"]
    assert said["dbfs"] > -35, run.why(measured)
    assert said["snr_db"] < 6, run.why(measured)  # a tone would be > 30 dB
    assert said["700"] < 0.05, run.why(measured)
    assert measured["intro_match"] > 0.9, run.why(measured)
    # after '1': each hears the other, relayed
    for side, hz, key in (("caller", MOBILE_HZ, "1100"), ("mobile", CALLER_HZ, "700")):
        got = measured[f"{side}:talk"]
        assert abs(got["hz"] - hz) < 15 and got[key] > 0.2, run.why(measured)

    # the key reached the engine as an RFC 4733 event (it reads no in-band DTMF)
    said_log = run.engine_said("rebound")
    assert [r["event"] for r in said_log] == [
        "rebound screening", "rebound screened", "rebound accepted"], run.why(said_log)
    assert (said_log[1]["key"], said_log[1]["accepted"]) == ("1", True), run.why(said_log)


@pytest.mark.parametrize("carrier", ["2"], indirect=True)
def test_pjsua2_mobile_refuses_the_rebound_with_2(carrier: Run) -> None:
    run = carrier
    run.phones()
    result, announced, pressed = common_checks(run)
    answered = run.one("answered")["t"]
    hangup = run.one("hangup")["t"]
    # the engine hung the mobile up (BYE) on the key; voicemail answered the caller
    assert result["mobile_rx_requests"] == ["BYE"], run.why()
    assert "CONFIRMED" in result["mobile_states"], run.why()
    mobile_gone = result["mobile_at"]["DISCONNECTED"]
    assert pressed < mobile_gone < pressed + 2.0, run.why(mobile_gone - pressed)
    assert mobile_gone < hangup, run.why()
    assert pressed < answered < pressed + 3.0, run.why(answered - pressed)
    assert result["caller_codec"] == "PCMU/8000", run.why()

    caller_early = result["caller_media_at"]
    after = run.heard("caller", answered, min(answered + 1.5, hangup - 0.1))
    beeps = beep_windows(after)
    held = levels(run.heard("caller", caller_early + 0.3, pressed))
    said = levels(run.heard("mobile", announced + 0.1, pressed))
    measured = {"caller:screening": held, "mobile:screening": said, "beep_windows": beeps,
                "beep_1khz": round(goertzel(after, RATE, BEEP_HZ), 4),
                "times": {"pressed": round(pressed - announced, 3),
                          "mobile_bye": round(mobile_gone - pressed, 3),
                          "answered": round(answered - pressed, 3)}}
    print(json.dumps(measured))
    assert held["dbfs"] > -35 and held["1100"] < 0.05, run.why(measured)
    assert said["dbfs"] > -35 and said["snr_db"] < 6, run.why(measured)
    # the 1 kHz beep (400 ms): at least three 100 ms windows dominated by it
    assert len(beeps) >= 3 and max(beeps) > 0.2, run.why(measured)

    said_log = run.engine_said("rebound")
    assert [r["event"] for r in said_log] == [
        "rebound screening", "rebound screened", "rebound refused"], run.why(said_log)
    assert (said_log[1]["key"], said_log[1]["accepted"]) == ("2", False), run.why(said_log)
    assert "voicemail answered" in run.engine_log(), run.why()

    # the caller's 700 Hz after the beep is the message left for 104
    listed = run.engine.cli("voicemail", "list", "104", "--json")
    assert listed.returncode == 0, listed.stderr
    messages = json.loads(listed.stdout)
    assert len(messages) == 1, run.why(messages)
    [message] = messages
    recorded = load_wav(message["path"]).pcm16
    print(json.dumps({"message": message,
                      "message_hz": round(dominant_frequency(recorded, RATE), 1)}))
    assert message["caller"] == CALLER_NUMBER, message
    assert abs(dominant_frequency(recorded, RATE) - CALLER_HZ) < 15, message
