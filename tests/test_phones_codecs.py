"""Codec priority with a real SIP phone: the engine answers voicemail in the caller's order.

Codec priority picks G.722 when both sides allow it and PCMU when the user's
list says so. Where the engine itself answers (voicemail) it lists, in
its 200, the codecs of the *calling user's* ``codecs`` (directory order, default
G722, PCMU, PCMA, G729) that the phone offered and that it can decode, and the
first of them is the call's codec, whatever order the phone offered them in.

The phone is pjsua2 (pjsip 2.15), ``tests/phones/pjsua_voicemail.py`` in a
subprocess, as in ``tests/test_phones_voicemail.py``: it registers the case's
caller with digest and calls 104, who has no registered device (the busy rule sends the call
to 104's voicemail); it plays 2 s of 1 kHz after the beep and presses '#'.
``--report-sdp`` makes it report every SIP message with SDP it sends (its offers)
or receives (the engine's 200 answers: first to the INVITE, then to the
re-INVITE with which pjsip locks the codec when the answer lists several).

pjsua2's own codec priorities (2.15.1): speex/16000 130, speex/8000 129,
speex/32000, iLBC, GSM, PCMU, PCMA and G722 128 each, so by default it offers
G722 *last* of the three the engine decodes (``9`` after ``0 8``). Cases:

1. user 101 ``codecs = ["G722", "PCMU", "PCMA"]``, the phone's default offer:
   G722, although the phone listed PCMU first;
2. user 102 ``["PCMU", "G722"]``, the phone offering exactly G722, PCMU, PCMA (G722
   first): PCMU, although the phone prefers G722; PCMA (not in the user's list)
   is left out of the answer;
3. user 103 ``["PCMA"]``, the same phone: PCMA;
4. user 105 ``["G729"]`` (nothing in common with pjsua2): 488, no message.

Checked per case, on the phone: the codec of the call's audio stream (pjsua2
``getStreamInfo``) right after the media came up and again after playing (the
codec-lock re-INVITE is over by then); the payload types of the 200's ``m=``
line in order, and that every later answer keeps the same codec first. On the
engine: its log line ``voicemail answered`` names the codec, and the stored WAV
(8 kHz, 16-bit, mono) holds the 1 kHz tone for about the time played, which it
can only do if the engine decoded the codec the phone sent (PCMA read as PCMU,
or G.722 as either, is noise).

A missing pjsua2 fails the test (it never skips).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
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
PLAY_SECONDS = 2.0
STATIC_PT = {"0": "PCMU", "8": "PCMA", "9": "G722", "18": "G729"}
CLOCK = {"G722": 16000, "PCMU": 8000, "PCMA": 8000}

# One engine for the module: each case calls from its own user, whose codecs are the
# case's (101, 102 and 103; 105 allows only G729), into 104's voicemail; a case reads
# only its own caller's messages and the engine's log since it began.
CODECS = {"101": ["G722", "PCMU", "PCMA"], "102": ["PCMU", "G722"], "103": ["PCMA"],
          "105": ["G729"]}
DIRECTORY = (PHONE_SYSTEM + SALES
             + "".join(user_toml(ext, f"codecs = {json.dumps(CODECS[ext])}\n")
                       for ext in ("101", "102", "103"))
             + user_toml("104", "[users.voicemail]\nmax_seconds = 20\n")
             + '\n[[users]]\nextension = "105"\nname = "Eve Gagnon"\npassword = "pw105"\n'
             f'department = "Sales"\ncodecs = {json.dumps(CODECS["105"])}\n')


@pytest.fixture(scope="module")
def office(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    require_pjsua2()
    folder = tmp_path_factory.mktemp("codecs")
    low = 40000 + (free_port() % 10000) // 2 * 2
    (folder / "directory.toml").write_text(DIRECTORY.format(low=low, high=low + 99))
    engine = EngineProcess(folder, folder / "directory.toml").start()
    yield engine
    code = engine.stop()
    assert code == 0, f"engine did not shut down cleanly ({code}):\n{engine.log()[-3000:]}"


def messages_from(engine: EngineProcess, caller: str) -> list[dict[str, Any]]:
    """104's voicemail messages left by ``caller``."""
    listed = engine.cli("voicemail", "list", "104", "--json")
    assert listed.returncode == 0, listed.stderr
    return [m for m in json.loads(listed.stdout) if m["caller"] == caller]


def audio_formats(text: str) -> list[str]:
    """The codec names of the first audio ``m=`` line of an SDP, in order (rtpmap, else
    the static payload type's name)."""
    lines = [line.strip() for line in text.splitlines()]
    m_lines = [line for line in lines if line.startswith("m=audio ")]
    assert m_lines, text
    pts = m_lines[0].split()[3:]
    names: dict[str, str] = {}
    for line in lines:
        if line.startswith("a=rtpmap:"):
            pt, _, rest = line[len("a=rtpmap:"):].partition(" ")
            names[pt] = rest.split("/", 1)[0]
    return [names.get(pt, STATIC_PT.get(pt, f"pt{pt}")) for pt in pts]


def voice(formats: list[str]) -> list[str]:
    """Without telephone-event (and comfort noise)."""
    return [f for f in formats if f.casefold() not in ("telephone-event", "cn")]


def run_phone(engine: EngineProcess, caller: str, wav: Path, log: Path,
              codecs: str | None) -> list[dict[str, Any]]:
    """Run the phone of ``caller`` to the end (bounded); its JSON events."""
    cmd = [sys.executable, str(HELPER), "--registrar", engine.target,
           "--user", caller, "--password", f"pw{caller}", "--domain", DOMAIN, "--dial", "104",
           "--wav", str(wav), "--beep-wait", "0.6", "--play", str(PLAY_SECONDS),
           "--end", "hash", "--deadline", "30", "--log-level", "5", "--report-sdp"]
    if codecs:
        cmd += ["--codecs", codecs]
    return run_to_done(cmd, log, engine, 40, "pjsua2 phone")


def engine_events(engine: EngineProcess, name: str, since: int = 0) -> list[dict[str, Any]]:
    """The engine's JSON log lines whose event is ``name``, from character ``since`` of
    its log on."""
    out = []
    for line in engine.log()[since:].splitlines():
        if line.startswith("{"):
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("event") == name:
                out.append(entry)
    return out


@pytest.mark.parametrize(("caller", "phone_codecs", "offered", "expected", "answered"), [
    pytest.param("101", None, ["PCMU", "PCMA", "G722"], "G722",
                 ["G722", "PCMU", "PCMA"], id="user-G722-first_pjsua-default-offer"),
    pytest.param("102", "G722,PCMU,PCMA", ["G722", "PCMU", "PCMA"], "PCMU",
                 ["PCMU", "G722"], id="user-PCMU-first_phone-G722-first"),
    pytest.param("103", "G722,PCMU,PCMA", ["G722", "PCMU", "PCMA"], "PCMA",
                 ["PCMA"], id="user-PCMA-only"),
])
def test_pjsua2_voicemail_takes_the_callers_codec_priority(
        office: EngineProcess, tmp_path: Path, caller: str, phone_codecs: str | None,
        offered: list[str], expected: str, answered: list[str]) -> None:
    engine = office
    since = len(engine.log())
    said = tmp_path / "say-1khz.wav"
    write_wav(said, tone(1000, PLAY_SECONDS * 1000 + 500, level=0.4))  # longer than played
    log = tmp_path / "pjsua.log"
    events = run_phone(engine, caller, said, log, phone_codecs)

    def why() -> str:
        return (f"events {events}\n--- phone log ---\n{tail(log)}\n"
                f"--- engine log ---\n{engine.log()[-3000:]}")

    [registered] = [e for e in events if e["event"] == "registered"]
    assert registered["ok"] and registered["codes"][-1] == 200, why()
    [result] = [e for e in events if e["event"] == "result"]
    assert result["confirmed"] and result["media"], why()

    # what the phone offered: the three the engine decodes, in the phone's order
    sent = [e for e in events if e["event"] == "sdp_tx"]
    offers = [e["sdp"] for e in sent if e["start_line"].startswith("INVITE sip:104@")]
    reoffers = [e["sdp"] for e in sent if e not in sent[:len(offers)]]
    assert offers, why()  # the INVITE, and again with credentials after the 407
    mine = [f for f in voice(audio_formats(offers[-1])) if f in ("G722", "PCMU", "PCMA")]
    assert mine == offered, (mine, offers[-1])

    # the engine's 200 to the INVITE: the user's order, only what both sides allow
    answers = [e for e in events if e["event"] == "sdp_rx"]
    assert answers and answers[0]["start_line"].startswith("SIP/2.0 200"), why()
    assert answers[0]["method"] == "INVITE", why()
    first = audio_formats(answers[0]["sdp"])
    assert voice(first) == answered, (first, answers[0]["sdp"])
    assert all(f.casefold() == "telephone-event" for f in first[len(answered):]), first
    assert "telephone-event" in [f.casefold() for f in first], first  # '#' can be sent
    # pjsip re-INVITEs with the codec it took when the answer listed several: the
    # engine's answer to that keeps it
    if len(answered) > 1:
        assert len(answers) >= 2 and reoffers, why()
        assert voice(audio_formats(reoffers[0])) == [expected], reoffers[0]
    for later in answers[1:]:
        assert later["start_line"].startswith("SIP/2.0 200"), later
        assert voice(audio_formats(later["sdp"])) == [expected], later["sdp"]

    # the phone's audio stream, when the media came up and after playing
    want = f"{expected}/{CLOCK[expected]}"
    assert result["codec"] == want, why()
    assert result["codec_final"] == want, why()
    assert result["played"] >= PLAY_SECONDS - 0.1, why()
    assert result["dtmf"] is True and result["ended_by"] == "engine", why()

    # the engine: its log, and the message it stored
    vm = engine_events(engine, "voicemail answered", since)
    assert [e.get("codec") for e in vm] == [expected], (vm, why())
    messages = messages_from(engine, caller)
    assert len(messages) == 1, (messages, why())
    [message] = messages
    assert message["caller"] == caller, message
    assert PLAY_SECONDS - 0.5 <= message["duration"] <= PLAY_SECONDS + 1.5, message
    info = wav_info(message["path"])
    assert (info.rate, info.bits, info.channels) == (8000, 16, 1), info
    heard = dominant_frequency(load_wav(message["path"]).pcm16, 8000)
    assert abs(heard - 1000) < 15, (heard, expected, message)


def test_pjsua2_voicemail_refused_488_when_nothing_in_common(office: EngineProcess,
                                                             tmp_path: Path) -> None:
    """The user (105) allows only G729, which pjsua2 does not offer: 488 naming both
    lists."""
    engine = office
    since = len(engine.log())
    said = tmp_path / "say-1khz.wav"
    write_wav(said, tone(1000, 1000, level=0.4))
    log = tmp_path / "pjsua.log"
    events = run_phone(engine, "105", said, log, "G722,PCMU,PCMA")

    def why() -> str:
        return (f"events {events}\n--- phone log ---\n{tail(log)}\n"
                f"--- engine log ---\n{engine.log()[-3000:]}")

    [result] = [e for e in events if e["event"] == "result"]
    assert not result["confirmed"] and not result["media"], why()
    assert result["last_code"] == 488, why()
    assert not [e for e in events if e["event"] == "sdp_rx"], why()
    # the Warning says why (the phone's log holds the whole response)
    assert "no common codec" in log.read_text(errors="replace"), why()
    assert not engine_events(engine, "voicemail answered", since), why()
    assert messages_from(engine, "105") == [], why()
    assert engine.alive(), why()
