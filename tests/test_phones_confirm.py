"""Answer confirmation with a real SIP stack: pjsua2 (pjsip 2.15) is the carrier and
104's desk phone.

The phones are ``tests/phones/pjsua_confirm.py``: one pjsua2 process, the
carrier's UDP transport on port P (the directory's trunk; it places the caller's
call and receives the engine's leg to the mobile) and the desk phone's, which
registers as 104 (null audio device). 104 rings its desk phone and its mobile at
the same time (``ring_mobile_simultaneously``) for 14 s, then voicemail, with
``confirm_external_answer = true`` and French prompts; the engine relays media
(the default).

The caller dials +15145550104 and plays 700 Hz; the desk phone (1500 Hz) and the
mobile (1100 Hz) ring; the mobile answers after 0.5 s and hears "Appuyez sur 1
pour prendre l'appel." Then:

- ``1``: it presses 1 (RFC 4733) 1.5 s into the prompt: the caller gets its 200,
  the desk phone is cancelled, caller and mobile hear each other;
- ``none``: it says nothing (as a voicemail greeting would not): the engine
  hangs it up (BYE) after 10 s while the desk phone rings on, then at 14 s the
  desk phone is cancelled and 104's voicemail answers: the beep, and the
  caller's 700 Hz is kept as a message;
- ``hangup``: it hangs up 1.5 s into the prompt; the desk phone, still ringing,
  answers a second later and talks with the caller.

Before any of that the caller is not answered and hears nothing from the
engine: no early media, no hold music (its own phone plays the ringback of the
180). Checked on the recordings, cut into phases by the phones' event times, by
the engine's log (the key, the release and the trunk channels then) and by its
metrics at the end (no call, no channel left). A missing pjsua2 fails the test
(it never skips).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from media.codecs import codec_for
from media.prompts import prompt_path
from media.tones import dominant_frequency, goertzel, rms_dbfs, sinusoid_snr_db, tone
from media.wav import load_wav, write_wav
from tests.e2e_helpers import SALES_104, CarrierOffice, CarrierRun, best_match, shared_office

# Run alone (make test's serial pass): pjsua2's tones and prompts are checked as heard,
# in windows timed by its events, and another worker's load on the other core makes the
# audio arrive late or stretched.
pytestmark = [pytest.mark.peers, pytest.mark.serial]

HELPER = Path(__file__).resolve().parent / "phones" / "pjsua_confirm.py"
RATE = 8000
HZ = {"caller": 700.0, "mobile": 1100.0, "desk": 1500.0}
BEEP_HZ = 1000.0
CALLER_NUMBER, DID, MOBILE = "+15145550199", "+15145550104", "+15145550444"
NO_ANSWER, CONFIRM = 14, 10
PRESS_AFTER, TALK = 1.5, 2.0

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
confirm_external_answer = true
[users.voicemail]
language = "fr"
max_seconds = 20
[users.forwarding.available]
no_answer_seconds = {no_answer}
no_answer = {{ external = "voicemail", internal = "voicemail" }}
busy = {{ external = "voicemail", internal = "voicemail" }}
ring_mobile_simultaneously = true
"""


class Run(CarrierRun):
    """One run of the phones against the module's engine: events, recordings, logs."""

    def __init__(self, tmp_path: Path, mode: str, office: CarrierOffice) -> None:
        super().__init__(tmp_path, office)
        self.mode = mode
        for side, hz in HZ.items():  # whole periods in 1 s: looped without a seam
            write_wav(tmp_path / f"say-{side}.wav", tone(hz, 1000, level=0.4, ramp_ms=0))

    def phones(self) -> None:
        """Run the phones to the end (bounded: 40 s inside, 55 s from here)."""
        self.run([sys.executable, str(HELPER), "--engine", self.engine.target,
                  "--port", str(self.carrier), "--mode", self.mode, "--folder", str(self.tmp),
                  "--press-after", str(PRESS_AFTER), "--talk", str(TALK),
                  "--confirm-seconds", str(CONFIRM), "--no-answer", str(NO_ANSWER),
                  "--deadline", "40", "--log-level", "5"], 55, "pjsua2 phones")

    def left_over(self) -> tuple[list[Any], float]:
        """Calls and carrier channels the engine still holds (its gauges are refreshed
        every second: waited for, 5 s at most)."""
        key = 'switchboard_trunk_channels_in_use{trunk="carrier"}'
        deadline = time.monotonic() + 5
        while True:
            calls = self.engine.api_get("/calls")
            channels = self.engine.metrics().get(key, -1.0)
            if (calls == [] and channels == 0) or time.monotonic() > deadline:
                return calls, channels
            time.sleep(0.2)


def levels(pcm: bytes) -> dict[str, float]:
    hz = dominant_frequency(pcm, RATE)
    return {"dbfs": round(rms_dbfs(pcm), 1), "hz": round(hz, 1),
            **{side: round(goertzel(pcm, RATE, f), 4) for side, f in HZ.items()},
            "snr_db": round(sinusoid_snr_db(pcm, RATE, hz), 1)}


@pytest.fixture(scope="module")
def office(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CarrierOffice]:
    """One engine for the module: the desk phone unregisters 104 as its run ends, each
    run reads the engine's log from its own start, and only the run without a key
    leaves 104 a message."""
    yield from shared_office(tmp_path_factory.mktemp("confirm"), DIRECTORY,
                             no_answer=NO_ANSWER)


@pytest.fixture
def phones(tmp_path: Path, request: pytest.FixtureRequest, office: CarrierOffice) -> Run:
    return Run(tmp_path, request.param, office)


def asked(run: Run) -> tuple[dict[str, Any], float]:
    """Both rang, the mobile answered and heard the French prompt while the caller
    heard nothing from the engine. The result and the mobile's first media time."""
    run.phones()
    result = run.one("result")
    incoming = {e["side"]: e for e in run.events if e["event"] == "incoming"}
    assert set(incoming) == {"mobile", "desk"}, run.why(incoming)
    assert incoming["mobile"]["request_user"] == MOBILE, run.why(incoming)
    assert result["asked"] and result["mobile_codec"] == "PCMU/8000", run.why()
    # the caller was not answered while the mobile was asked: ringing (180), no media
    assert result["caller_media_while_asked"] is False, run.why()
    caller = result["caller"]
    assert "EARLY" in caller["states"], run.why(caller)
    early = [e for e in run.events if e["event"] == "call" and e["side"] == "caller"
             and e["state"] == "EARLY"]
    assert {e["code"] for e in early} == {180}, run.why(early)  # never a 183
    mobile_media = result["mobile"]["media_at"]
    said = run.heard("mobile", mobile_media + 0.1, mobile_media + PRESS_AFTER)
    prompt = load_wav(prompt_path("fr", "confirm_answer")).pcm16
    pcmu = codec_for("PCMU")
    # 0.3 s to 0.8 s into the prompt: well inside the cut, whatever the start's jitter
    expected = pcmu.decode(pcmu.encode(prompt[round(0.3 * RATE) * 2: round(0.8 * RATE) * 2]))
    heard, match = levels(said), round(best_match(said, expected), 3)
    print(json.dumps({"mobile:asked": heard, "prompt_match": match}))
    assert heard["dbfs"] > -35, run.why(heard)
    assert heard["snr_db"] < 6, run.why(heard)  # speech, not a tone
    assert heard["caller"] < 0.05, run.why(heard)  # not the caller
    assert match > 0.9, run.why(heard, match)
    return result, mobile_media


def nothing_left(run: Run) -> None:
    calls, channels = run.left_over()
    assert calls == [] and channels == 0, run.why(calls, channels)


@pytest.mark.parametrize("phones", ["1"], indirect=True)
def test_pjsua2_mobile_takes_the_call_with_1_and_the_desk_stops(phones: Run) -> None:
    run = phones
    result, _ = asked(run)
    assert result["dtmf"] is True, run.why()
    pressed = run.one("press")
    assert pressed["caller_state"] == "EARLY", run.why(pressed)
    answered = run.one("answered")["t"]
    hangup = run.one("hangup")["t"]
    assert pressed["t"] < answered, run.why()
    desk = result["desk"]
    # the desk phone was cancelled (487) once the mobile took the call
    assert "CONFIRMED" not in desk["states"] and desk["code"] == 487, run.why(desk)
    assert answered - 0.5 < desk["at"]["DISCONNECTED"] < hangup, run.why(desk)
    assert result["caller_codec"] == "PCMU/8000", run.why()
    assert result["mobile"]["rx_requests"] == ["BYE"], run.why()  # after the caller's BYE
    assert result["mobile"]["at"]["DISCONNECTED"] >= hangup, run.why()
    talk = {side: levels(run.heard(side, answered + 0.5, hangup - 0.1))
            for side in ("caller", "mobile")}
    print(json.dumps({"talk": talk}))
    assert abs(talk["caller"]["hz"] - HZ["mobile"]) < 15 and talk["caller"]["mobile"] > 0.2, \
        run.why(talk)
    assert abs(talk["mobile"]["hz"] - HZ["caller"]) < 15 and talk["mobile"]["caller"] > 0.2, \
        run.why(talk)
    said = run.engine_said("confirm")
    assert [r["event"] for r in said] == [
        "confirm asking", "confirm screened", "confirm accepted"], run.why(said)
    assert (said[1]["key"], said[1]["accepted"]) == ("1", True), run.why(said)
    nothing_left(run)


@pytest.mark.parametrize("phones", ["none"], indirect=True)
def test_pjsua2_mobile_without_a_key_is_released_and_voicemail_follows(phones: Run) -> None:
    run = phones
    result, mobile_media = asked(run)
    mobile, desk = result["mobile"], result["desk"]
    gone = mobile["at"]["DISCONNECTED"]
    # the engine hung the mobile up (its BYE) once its seconds were over ...
    assert mobile["rx_requests"] == ["BYE"] and not mobile["hung_up"], run.why(mobile)
    assert gone - mobile_media > CONFIRM - 1, run.why(gone - mobile_media)
    # ... while the desk phone rang on; the step's timer then cancelled it
    assert result["desk_ringing_when_mobile_gone"], run.why()
    assert "CONFIRMED" not in desk["states"] and desk["code"] == 487, run.why(desk)
    answered = run.one("answered")["t"]
    assert gone < desk["at"]["DISCONNECTED"] <= answered + 0.5, run.why(desk, answered)
    # 104's voicemail answered the caller: the beep, then the caller's 700 Hz is kept
    # (the caller's recorder starts with its first media: the 200, not before)
    after = run.heard("caller", answered + 0.05, answered + 1.5)
    assert goertzel(after, RATE, BEEP_HZ) > 0.1, run.why(levels(after))
    said = run.engine_said("confirm")
    events = [r["event"] for r in said]
    assert events[:2] == ["confirm asking", "confirm: no key in time"], run.why(said)
    [released] = [r for r in said if r["event"] == "confirm: leg released"]
    assert released["channels_in_use"] == {"carrier": 1}, run.why(said)  # the caller's only
    assert released["ringing"] == 1, run.why(said)  # the desk phone
    assert "voicemail answered" in run.engine_log(), run.why()
    listed = run.engine.cli("voicemail", "list", "104", "--json")
    assert listed.returncode == 0, listed.stderr
    [message] = json.loads(listed.stdout)
    recorded = load_wav(message["path"]).pcm16
    print(json.dumps({"message": message, "released_after": round(gone - mobile_media, 2),
                      "message_hz": round(dominant_frequency(recorded, RATE), 1)}))
    assert message["caller"] == CALLER_NUMBER, message
    assert abs(dominant_frequency(recorded, RATE) - HZ["caller"]) < 15, message
    nothing_left(run)


@pytest.mark.parametrize("phones", ["hangup"], indirect=True)
def test_pjsua2_mobile_hanging_up_is_released_and_the_desk_still_takes_the_call(
        phones: Run) -> None:
    run = phones
    result, _ = asked(run)
    mobile, desk = result["mobile"], result["desk"]
    hung_up = run.one("mobile_hangup")["t"]
    assert mobile["hung_up"] and mobile["rx_requests"] == [], run.why(mobile)
    assert result["desk_ringing_when_mobile_gone"], run.why()
    desk_answer = run.one("desk_answer")["t"]
    answered = run.one("answered")["t"]
    hangup = run.one("hangup")["t"]
    assert hung_up < desk_answer <= answered, run.why()
    assert "CONFIRMED" in desk["states"], run.why(desk)
    talk = {side: levels(run.heard(side, answered + 0.5, hangup - 0.1))
            for side in ("caller", "desk")}
    print(json.dumps({"talk": talk}))
    assert abs(talk["caller"]["hz"] - HZ["desk"]) < 15 and talk["caller"]["desk"] > 0.2, \
        run.why(talk)
    assert abs(talk["desk"]["hz"] - HZ["caller"]) < 15 and talk["desk"]["caller"] > 0.2, \
        run.why(talk)
    said = run.engine_said("confirm")
    assert [r["event"] for r in said] == [
        "confirm asking", "confirm refused: the far end hung up", "confirm: leg released"], \
        run.why(said)
    assert said[2]["channels_in_use"] == {"carrier": 1}, run.why(said)
    nothing_left(run)
